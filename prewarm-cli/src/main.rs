//! `prewarm`: hydrate the blocks a node needs first on a volume restored
//! from a snapshot.
//!
//! The binary only parses arguments, installs signal handling and the
//! deadline watchdog, and calls `prewarm_core::pipeline`. Exit codes:
//! 0 success (warnings allowed), 1 partial (some reads failed, a listed file
//! was unreadable, or the deadline / SIGTERM stopped the run), 2 usage error
//! or nothing readable.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use prewarm_core::engine::{BackendChoice, StopSignal, STOP_GRACE};
use prewarm_core::pipeline::{self, Config};
use prewarm_core::plan::{PlanConfig, ReadMode};
use prewarm_core::source::{self, SourceEntry, DEFAULT_PRIORITY};
use prewarm_core::{Warning, WarningKind};

/// Hydrate the file extents that matter first on a lazily loaded
/// (snapshot-restored) block device, with many reads in flight.
#[derive(Parser, Debug)]
#[command(name = "prewarm", version, about, long_about = None)]
struct Cli {
    /// Files or directories to hydrate (a directory means every regular file
    /// under it). Glob patterns are expanded.
    #[arg(value_name = "PATH")]
    paths: Vec<PathBuf>,

    /// Read paths from a list file: one `[PRIORITY] /absolute/path` per line,
    /// `#` comments; `-` reads standard input. May be repeated.
    #[arg(short = 'p', long = "paths", value_name = "LIST")]
    lists: Vec<PathBuf>,

    /// Hydrate a whole block device (a full-volume sweep). May be repeated.
    #[arg(long, value_name = "DEV")]
    device: Vec<PathBuf>,

    /// Priority of PATH arguments (lower runs first).
    #[arg(long, default_value_t = DEFAULT_PRIORITY)]
    priority: u32,

    /// Reads kept in flight.
    #[arg(short = 'q', long, default_value_t = prewarm_core::engine::DEFAULT_QUEUE_DEPTH)]
    queue_depth: u32,

    /// Hydration chunk: extents are widened to it (EBS fetches 512 KiB).
    #[arg(long, value_parser = parse_size, default_value = "512K")]
    chunk_size: u64,

    /// Largest single read.
    #[arg(long, value_parser = parse_size, default_value = "1M")]
    max_io: u64,

    /// Join ranges whose gap is smaller than this (0: only adjacent chunks).
    #[arg(long, value_parser = parse_size, default_value = "0")]
    coalesce_gap: u64,

    /// `full` reads every planned byte; `touch` reads one block per chunk.
    #[arg(long, value_enum, default_value_t = ModeArg::Full)]
    mode: ModeArg,

    /// I/O engine: io_uring with pread fallback, or one of them.
    #[arg(long, value_enum, env = "PREWARM_ENGINE", default_value_t = EngineArg::Auto)]
    engine: EngineArg,

    /// Also warm the files' page cache (fadvise WILLNEED) after hydrating.
    #[arg(long)]
    cache: bool,

    /// Stop issuing reads after this long (e.g. `30s`, `2m`); the process
    /// exits at most a few seconds later whatever the device does.
    #[arg(long, value_parser = humantime::parse_duration)]
    deadline: Option<Duration>,

    /// Let directory walks cross into other mounted filesystems.
    #[arg(long)]
    cross_mounts: bool,

    /// Plan and print, read nothing.
    #[arg(short = 'n', long)]
    dry_run: bool,

    /// Print the report as JSON on standard output.
    #[arg(long)]
    json: bool,

    /// More logging (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,

    /// Only errors on standard error.
    #[arg(long, conflicts_with = "verbose")]
    quiet: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ModeArg {
    Full,
    Touch,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum EngineArg {
    Auto,
    Uring,
    Pread,
}

/// `4096`, `512K`, `1M`, `1MiB`, `2G`.
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 4096, 512K, 1M"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => return Err(format!("unknown size unit {other:?} in {s:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

fn init_logging(cli: &Cli) {
    let default = if cli.quiet {
        "error"
    } else {
        match cli.verbose {
            0 => "warn,prewarm=info,prewarm_core=info",
            1 => "debug",
            _ => "trace",
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .with_target(false)
        .init();
}

/// SIGTERM/SIGINT stop issuing reads; a second one exits at once.
fn install_signals() -> Result<Arc<AtomicBool>> {
    let cancel = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register_conditional_shutdown(sig, 1, cancel.clone())
            .context("installing signal handlers")?;
        signal_hook::flag::register(sig, cancel.clone()).context("installing signal handlers")?;
    }
    Ok(cancel)
}

/// A read blocked in a hung device cannot be interrupted; past the deadline
/// and the grace for reads in flight, exit rather than hold up the boot.
fn spawn_watchdog(deadline: Instant) {
    std::thread::spawn(move || {
        let hard = deadline + STOP_GRACE + Duration::from_secs(3);
        std::thread::sleep(hard.saturating_duration_since(Instant::now()));
        eprintln!("prewarm: reads still blocked past the deadline; exiting");
        std::process::exit(1);
    });
}

fn run(cli: &Cli) -> Result<i32> {
    if cli.paths.is_empty() && cli.lists.is_empty() && cli.device.is_empty() {
        bail!("nothing to do: give PATHs, --paths LIST or --device DEV (see --help)");
    }
    let start = Instant::now();
    let deadline = cli.deadline.map(|d| start + d);
    let cancel = install_signals()?;
    if let Some(d) = deadline {
        spawn_watchdog(d);
    }

    let mut entries = Vec::new();
    let mut warnings: Vec<Warning> = Vec::new();
    for list in &cli.lists {
        match source::read_list(list) {
            Ok((e, w)) => {
                entries.extend(e);
                warnings.extend(w);
            }
            Err(e) => warnings.push(Warning::new(
                WarningKind::Unreadable,
                Some(list),
                None,
                format!(
                    "list file: {}",
                    std::error::Error::source(&e).map_or(e.to_string(), |s| s.to_string())
                ),
            )),
        }
    }
    entries.extend(
        cli.paths
            .iter()
            .map(|p| SourceEntry::argument(p, cli.priority)),
    );

    let cfg = Config {
        plan: PlanConfig {
            chunk_size: cli.chunk_size,
            coalesce_gap: cli.coalesce_gap,
            max_io: cli.max_io,
        },
        mode: match cli.mode {
            ModeArg::Full => ReadMode::Full,
            ModeArg::Touch => ReadMode::Touch,
        },
        queue_depth: cli.queue_depth,
        backend: match cli.engine {
            EngineArg::Auto => BackendChoice::Auto,
            EngineArg::Uring => BackendChoice::Uring,
            EngineArg::Pread => BackendChoice::Pread,
        },
        collect: source::CollectOptions {
            cross_mounts: cli.cross_mounts,
        },
        cache: cli.cache,
        stop: StopSignal::new(cancel, deadline),
        on_class_done: Some(Arc::new(|prio| {
            tracing::info!("priority class {prio} hydrated")
        })),
    };

    let mut prepared = pipeline::prepare(&entries, warnings, &cfg).context("planning")?;
    for dev in &cli.device {
        prepared
            .add_whole_device(dev, cli.priority, &cfg)
            .with_context(|| format!("whole-device sweep of {}", dev.display()))?;
    }
    for w in &prepared.warnings {
        eprintln!("prewarm: warning: {w}");
    }
    let printed = prepared.warnings.len();
    let report = if cli.dry_run {
        prepared.dry_run_report(&cfg)
    } else {
        prepared.execute(&cfg).context("reading")?
    };
    // Warnings found while reading (a file that could not be opened again).
    for w in report.warnings.iter().skip(printed) {
        eprintln!("prewarm: warning: {w}");
    }
    if cli.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("writing JSON")?
        );
    } else {
        print!("{}", report.summary());
    }
    Ok(report.outcome.exit_code())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli);
    match run(&cli) {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("prewarm: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prewarm_core::plan::{DEFAULT_CHUNK_SIZE, DEFAULT_MAX_IO};

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512K"), Ok(512 * 1024));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("x").is_err());
    }

    #[test]
    fn defaults_match_the_library() {
        let cli = Cli::parse_from(["prewarm", "/bin/sh"]);
        assert_eq!(cli.chunk_size, DEFAULT_CHUNK_SIZE);
        assert_eq!(cli.max_io, DEFAULT_MAX_IO);
    }
}
