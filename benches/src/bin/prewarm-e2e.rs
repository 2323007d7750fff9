//! `prewarm-e2e`: the end-to-end comparison of prewarm against cat, xargs
//! cat, vmtouch, fio, a physical-order reader and doing nothing, on fixture
//! volumes (a node volume, and a big tree of unpacked container layers)
//! served by the lazy-volume testbed (needs root).
//!
//! The binary owns argument parsing, locating the sibling binaries and the
//! work directory; everything else is `prewarm_benches::e2e`. A full run
//! writes `benches/RESULTS.md` and `benches/results.json` and prints a CSV
//! on stdout; `--ci` runs the small node fixture and the big tree at
//! concurrency 8 and fails (exit 1) unless
//! prewarm hydrates exactly the chunks of its plan. `--render RESULTS_JSON
//! --vm-boot-section FILE` measures nothing and rewrites RESULTS.md with
//! the VM boot test's section (which that test writes outside the source
//! tree) merged in.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use prewarm_benches::e2e::sys::sibling;
use prewarm_benches::e2e::{self, harness::Options, Outputs, WorkDir};
use prewarm_benches::fixture::Shape;
use prewarm_core::parse_size;

#[derive(Parser, Debug)]
#[command(
    name = "prewarm-e2e",
    about = "End-to-end comparison of prewarm with other warming methods on the lazy-volume testbed (needs root)"
)]
struct Cli {
    /// CI mode: the small node fixture and the big tree, concurrency 8 only,
    /// prewarm exactness check (exit 1 if prewarm hydrates a chunk outside
    /// its plan or misses one).
    #[arg(long)]
    ci: bool,
    /// Use the small preset of the node fixture (implied by --ci).
    #[arg(long)]
    small: bool,
    /// The fixtures to run scenarios on (comma-separated): node (dio-c8,
    /// dio-c32, buffered-c8) and big-tree (big-tree-c8, big-tree-c32: a
    /// critical set of 10,500 files in ~1,300 directories, listed by layer
    /// directory) [default: both; --ci runs the small node preset].
    #[arg(long, value_delimiter = ',')]
    shapes: Vec<Shape>,
    /// prewarm binary [default: $PREWARM_BIN, else `prewarm` next to this binary].
    #[arg(long)]
    prewarm: Option<PathBuf>,
    /// Work directory (kept) [default: a fresh /var/tmp/prewarm-e2e-PID, removed at exit].
    #[arg(long)]
    work: Option<PathBuf>,
    /// Keep the default work directory.
    #[arg(long)]
    keep: bool,
    /// Where RESULTS.md and results.json go [default: the benches/ source dir;
    /// with --ci: nowhere].
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// Do not write RESULTS.md / results.json.
    #[arg(long)]
    no_write: bool,
    /// Criterion output directory to take the micro-benchmark numbers from.
    #[arg(long)]
    criterion_dir: Option<PathBuf>,
    /// Testbed chunk size.
    #[arg(long, default_value = "512K", value_parser = parse_size)]
    chunk_size: u64,
    /// Testbed fetch latency, ms.
    #[arg(long, default_value_t = 4.0)]
    latency_ms: f64,
    /// Testbed concurrencies of the direct-I/O scenarios; the first is the headline.
    #[arg(long, value_delimiter = ',', default_value = "8,32")]
    concurrency: Vec<usize>,
    /// Skip the buffered-loop scenario.
    #[arg(long)]
    no_buffered: bool,
    /// Testbed throughput cap, MiB/s (added to the physical limit).
    #[arg(long)]
    max_mibps: Option<f64>,
    /// Repetitions of every method in every scenario (medians reported; a
    /// target is met when the median and all but one of the runs meet it).
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    /// Run only methods whose key contains one of these (comma-separated;
    /// keys: no-prewarm, cat, xargs-p32-n1-cat, xargs-p32-n8-cat, vmtouch, fio,
    /// physical-order, prewarm-{full,touch}-q{1,8,32,128}-{cold,cached}).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Skip the full-volume sweeps.
    #[arg(long)]
    no_sweep: bool,
    /// Measure nothing: re-render RESULTS.md (and results.json's target
    /// checks, and the CSV) from this results.json of an earlier run.
    #[arg(long, value_name = "RESULTS_JSON")]
    render: Option<PathBuf>,
    /// Put the `vm-boot` section in FILE (the VM boot test writes one, see
    /// README.md) into RESULTS.md instead of the one RESULTS.md has.
    #[arg(long, value_name = "FILE")]
    vm_boot_section: Option<PathBuf>,
    /// Kill a method after this many seconds.
    #[arg(long, default_value_t = 120)]
    timeout_s: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    if let Some(json) = &cli.render {
        let out = Outputs {
            dir: if cli.no_write {
                None
            } else {
                Some(cli.out_dir.clone().unwrap_or_else(|| manifest_dir.clone()))
            },
            criterion_dir: PathBuf::new(),
            vm_boot_section: cli.vm_boot_section.clone(),
        };
        return match e2e::render(json, &out) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("prewarm-e2e: error: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    let prewarm = cli
        .prewarm
        .clone()
        .or_else(|| std::env::var_os("PREWARM_BIN").map(PathBuf::from))
        .or_else(|| sibling("prewarm"))
        .unwrap_or_else(|| PathBuf::from("prewarm"));
    let work = match WorkDir::new(cli.work.clone(), cli.keep) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("prewarm-e2e: error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let opts = Options {
        ci: cli.ci,
        small: cli.small || cli.ci,
        shapes: match &cli.shapes[..] {
            [] => vec![Shape::Node, Shape::BigTree],
            given => given.iter().fold(Vec::new(), |mut v, s| {
                if !v.contains(s) {
                    v.push(*s);
                }
                v
            }),
        },
        work: work.path.clone(),
        prewarm,
        testbed: sibling("prewarm-testbed").unwrap_or_default(),
        fixture: sibling("prewarm-fixture").unwrap_or_default(),
        chunk_size: cli.chunk_size,
        latency_ms: cli.latency_ms,
        concurrencies: if cli.ci {
            cli.concurrency.iter().take(1).copied().collect()
        } else {
            cli.concurrency.clone()
        },
        buffered: !cli.no_buffered && !cli.ci,
        max_mibps: cli.max_mibps,
        repeat: if cli.ci { 1 } else { cli.repeat.max(1) },
        timeout: Duration::from_secs(cli.timeout_s),
        only: cli.only.clone(),
        sweep: !cli.no_sweep,
    };
    let out = Outputs {
        dir: if cli.no_write {
            None
        } else {
            cli.out_dir
                .clone()
                .or_else(|| (!cli.ci).then(|| manifest_dir.clone()))
        },
        criterion_dir: cli
            .criterion_dir
            .clone()
            .unwrap_or_else(|| manifest_dir.join("../target/criterion")),
        vm_boot_section: cli.vm_boot_section.clone(),
    };
    let code = match e2e::run(opts, &out) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("prewarm-e2e: error: {e:#}");
            2
        }
    };
    drop(work);
    ExitCode::from(u8::try_from(code).unwrap_or(2))
}
