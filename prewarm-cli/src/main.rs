//! `prewarm`: hydrate the blocks a node needs first on a volume restored
//! from a snapshot.
//!
//! The binary only parses arguments, installs signal handling, the deadline
//! watchdog and systemd readiness, and calls `prewarm_core`. Commands:
//!
//! * `prewarm [PATH]... [--paths LIST]`: map and hydrate now;
//! * `prewarm plan ... -o FILE`: map once (at image build time) and write a
//!   boot manifest;
//! * `prewarm run --manifest FILE`: replay a manifest (initrd or root phase);
//! * `prewarm show FILE`: print a manifest.
//!
//! Exit codes: 0 success (warnings allowed), 1 partial (some reads failed, a
//! listed file was unreadable, or the deadline / SIGTERM stopped the run),
//! 2 usage error or nothing readable, 3 manifest refused (corrupt, or for
//! another filesystem or device size).

#![forbid(unsafe_code)]

mod commands;
mod notify;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use prewarm_core::source::DEFAULT_PRIORITY;

/// Hydrate the file extents that matter first on a lazily loaded
/// (snapshot-restored) block device, with many reads in flight.
#[derive(Parser, Debug)]
#[command(name = "prewarm", version, about, long_about = None, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    sources: SourceArgs,

    #[command(flatten)]
    plan: PlanArgs,

    #[command(flatten)]
    engine: EngineArgs,

    #[command(flatten)]
    output: OutputArgs,

    /// More logging (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,

    /// Only errors on standard error.
    #[arg(long, conflicts_with = "verbose", global = true)]
    quiet: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Map files once (at image build time) and write a boot manifest.
    Plan(PlanCmd),
    /// Replay a boot manifest: find the filesystem by UUID and hydrate its
    /// planned chunks without mapping any file.
    Run(RunCmd),
    /// Print a boot manifest.
    Show(ShowCmd),
}

/// What to hydrate.
#[derive(Args, Debug, Default)]
pub struct SourceArgs {
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

    /// Let directory walks cross into other mounted filesystems.
    #[arg(long)]
    cross_mounts: bool,
}

/// How reads are planned.
#[derive(Args, Debug)]
pub struct PlanArgs {
    /// Hydration chunk: extents are widened to it (EBS fetches 512 KiB).
    #[arg(long, value_parser = parse_size, default_value = "512K")]
    chunk_size: u64,

    /// Largest single read.
    #[arg(long, value_parser = parse_size, default_value = "1M")]
    max_io: u64,

    /// Join ranges whose gap is smaller than this (0: only adjacent chunks).
    #[arg(long, value_parser = parse_size, default_value = "0")]
    coalesce_gap: u64,
}

/// How reads are issued.
#[derive(Args, Debug)]
pub struct EngineArgs {
    /// Reads kept in flight.
    #[arg(short = 'q', long, default_value_t = prewarm_core::engine::DEFAULT_QUEUE_DEPTH)]
    queue_depth: u32,

    /// `full` reads every planned byte; `touch` reads one block per chunk.
    #[arg(long, value_enum, default_value_t = ModeArg::Full)]
    mode: ModeArg,

    /// I/O engine: io_uring with pread fallback, or one of them.
    #[arg(long, value_enum, env = "PREWARM_ENGINE", default_value_t = EngineArg::Auto)]
    engine: EngineArg,

    /// Also warm the files' own page cache after hydrating (device reads do
    /// not fill it): the files are read through the page cache.
    #[arg(long)]
    cache: bool,

    /// Stop issuing reads after this long (e.g. `30s`, `2m`); the process
    /// exits at most a few seconds later whatever the device does.
    #[arg(long, value_parser = humantime::parse_duration)]
    deadline: Option<Duration>,
}

/// What is printed.
#[derive(Args, Debug)]
pub struct OutputArgs {
    /// Plan and print, read nothing.
    #[arg(short = 'n', long)]
    dry_run: bool,

    /// Print the report as JSON on standard output (one line unless stdout
    /// is a terminal).
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct PlanCmd {
    #[command(flatten)]
    sources: SourceArgs,

    #[command(flatten)]
    plan: PlanArgs,

    /// Resolve the list's absolute paths under this directory (the image's
    /// root filesystem, mounted here at build time).
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,

    /// Where to write the manifest.
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,

    /// Print the manifest's summary as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Phase {
    /// In the initrd: the root is not mounted, files are not checked.
    Initrd,
    /// In the real root: files are checked against the manifest.
    Root,
}

#[derive(Args, Debug)]
pub struct RunCmd {
    /// The manifest written by `prewarm plan`.
    #[arg(
        short,
        long,
        value_name = "FILE",
        default_value = "/etc/prewarm/boot.manifest"
    )]
    manifest: PathBuf,

    /// Boot phase: decides whether files are checked and which kernel
    /// command line switch (`rd.prewarm=0` / `prewarm=0`) disables the run.
    #[arg(long, value_enum, default_value_t = Phase::Root)]
    phase: Phase,

    /// Handover state: chunks recorded there are skipped, chunks read are
    /// added (keep it under /run, which survives switch-root).
    #[arg(long, value_name = "FILE")]
    state: Option<PathBuf>,

    /// Only hydrate classes of at most this priority.
    #[arg(long, value_name = "N", env = "PREWARM_MAX_PRIORITY")]
    max_priority: Option<u32>,

    /// With --notify: READY once every class up to this priority is
    /// hydrated (default: the manifest's most urgent class).
    #[arg(long, value_name = "N")]
    ready_priority: Option<u32>,

    /// How long to wait for the filesystem's device to appear.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    wait_device: Duration,

    /// Tell systemd READY=1 once the most urgent class is hydrated (or at
    /// `--ready-timeout`), then carry on with the rest at idle I/O priority.
    #[arg(long)]
    notify: bool,

    /// With --notify: say READY after this long even if the most urgent
    /// class is not done, so dependent services never wait longer.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    ready_timeout: Duration,

    /// Honour `prewarm=0` / `rd.prewarm=0` and `prewarm.manifest=PATH` on the
    /// kernel command line.
    #[arg(long)]
    kernel_cmdline: bool,

    /// Do not check files against the manifest (replay it as recorded).
    #[arg(long)]
    no_verify: bool,

    /// Accept a device larger than the manifest's (a volume resized at
    /// launch whose filesystem was grown in place keeps its blocks where
    /// they were). Without it any size difference is refused (exit 3).
    #[arg(long)]
    allow_grown: bool,

    #[command(flatten)]
    engine: EngineArgs,

    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Args, Debug)]
pub struct ShowCmd {
    /// The manifest.
    #[arg(value_name = "FILE")]
    manifest: PathBuf,

    /// Print the whole manifest as JSON.
    #[arg(long)]
    json: bool,

    /// Also list every file.
    #[arg(long)]
    files: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ModeArg {
    Full,
    Touch,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum EngineArg {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli);
    let result = match &cli.command {
        None => commands::hydrate(&cli.sources, &cli.plan, &cli.engine, &cli.output),
        Some(Command::Plan(cmd)) => commands::plan(cmd),
        Some(Command::Run(cmd)) => commands::run(cmd),
        Some(Command::Show(cmd)) => commands::show(cmd),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("prewarm: error: {e:#}");
            ExitCode::from(commands::exit_code_of(&e))
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
        assert_eq!(cli.plan.chunk_size, DEFAULT_CHUNK_SIZE);
        assert_eq!(cli.plan.max_io, DEFAULT_MAX_IO);
        assert!(cli.command.is_none());
    }

    #[test]
    fn subcommands_parse() {
        let cli = Cli::parse_from([
            "prewarm",
            "run",
            "--manifest",
            "m",
            "--phase",
            "initrd",
            "--max-priority",
            "20",
        ]);
        assert!(matches!(
            cli.command,
            Some(Command::Run(RunCmd {
                phase: Phase::Initrd,
                max_priority: Some(20),
                ..
            }))
        ));
        let cli = Cli::parse_from(["prewarm", "plan", "--root", "/mnt", "-p", "l", "-o", "out"]);
        assert!(matches!(cli.command, Some(Command::Plan(_))));
        assert!(Cli::try_parse_from(["prewarm", "--json", "plan", "-o", "x"]).is_err());
    }
}
