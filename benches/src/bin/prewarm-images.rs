//! `prewarm-images`: how long hydrating one container image takes on the
//! lazy-volume testbed, against hydrating the whole snapshots directory and
//! against `xargs -P 32 cat` of the image's layer directories.
//!
//! The volume is the image-store fixture of `prewarm_benches::images` (a
//! real containerd store with one big and two small images), served by the
//! testbed from a private tmpfs and mounted read-only from a direct-I/O
//! loop device. Every run starts all cold (sync, drop caches, testbed
//! reset); methods take turns, round after round, and medians are
//! reported. Each run's numbers come from the testbed's counters: chunks
//! fetched, when the last chunk of the image's own set (FIEMAP of its
//! files, see `images::chunk_sets`) was hydrated, and whether any chunk
//! holding only the other images' data was. Markdown to `--out FILE`
//! (written once everything is measured) or stdout, progress on stderr.
//! Needs root; takes `/tmp/prewarm-bench.lock`.

#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use prewarm_benches::e2e::analysis::median;
use prewarm_benches::e2e::sys::{self, first_missing, prewarm_and_testbed, Mount};
use prewarm_benches::e2e::{loadavg, measured_commit};
use prewarm_benches::images::{self, ChunkSets, LazyStore, StoreSpec, StoredImage, SNAPSHOTS};

const CHUNK: u64 = 512 * 1024;
const MIB: f64 = 1048576.0;

#[derive(Parser, Debug)]
#[command(about = "Hydrating one container image vs its whole snapshots directory vs xargs cat")]
struct Cli {
    /// prewarm binary [default: `prewarm` next to this binary].
    #[arg(long)]
    prewarm: Option<PathBuf>,
    /// Work directory (created; removed at the end).
    #[arg(long, default_value = "/var/tmp/prewarm-images")]
    work: PathBuf,
    /// Testbed fetch latency, ms.
    #[arg(long, default_value_t = 4.0)]
    latency_ms: f64,
    /// Testbed fetches in flight.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Store size: the big image ~53 MiB × this, each small one ~15 MiB ×
    /// this (the privileged test uses 1).
    #[arg(long, default_value_t = 4)]
    scale: usize,
    /// Write the markdown here once measured (e.g. benches/IMAGES.md)
    /// instead of stdout.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Rounds (each runs every method once, from cold).
    #[arg(long, default_value_t = 5)]
    runs: usize,
}

/// The methods compared.
#[derive(Debug, Clone, Copy)]
enum Method {
    PrewarmImage,
    PrewarmSnapshots,
    XargsCat,
}

const METHODS: [Method; 3] = [
    Method::PrewarmImage,
    Method::PrewarmSnapshots,
    Method::XargsCat,
];

impl Method {
    fn label(self) -> &'static str {
        match self {
            Method::PrewarmImage => "`prewarm --image BIG`",
            Method::PrewarmSnapshots => "`prewarm …/overlayfs/snapshots` (every image)",
            Method::XargsCat => {
                "`find BIG's layer dirs -type f -print0 \\| xargs -0 -P 32 -n 8 cat`"
            }
        }
    }

    fn command(self, prewarm: &Path, root: &Path, big: &StoredImage) -> Command {
        match self {
            Method::PrewarmImage => images::prewarm_image_cmd(prewarm, root, &big.name),
            Method::PrewarmSnapshots => {
                let mut c = Command::new(prewarm);
                c.arg("--json")
                    .arg(root.join(SNAPSHOTS))
                    .env("RUST_LOG", "warn");
                c
            }
            Method::XargsCat => {
                // find hands the paths to xargs NUL-separated; 32 cats at
                // once, 8 files each.
                let mut c = Command::new("sh");
                c.args([
                    "-c",
                    "find \"$@\" -type f -print0 | xargs -0 -P 32 -n 8 cat > /dev/null",
                    "sh",
                ]);
                c.args(big.layer_dirs.iter().map(|d| root.join(d)));
                c
            }
        }
    }
}

/// One run of a method.
#[derive(Debug, Clone)]
struct Sample {
    wall_ms: f64,
    /// Method start → the last chunk of the image's layers hydrated (None:
    /// a chunk of them stayed cold).
    image_ms: Option<f64>,
    /// Method start → the first fetch starting.
    first_fetch_ms: Option<f64>,
    fetches: u64,
    fetched_bytes: u64,
    /// Chunks of the image's layers left cold.
    missed: usize,
    others: usize,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    sys::install_interrupt_handler()?;
    let mut tools = images::TOOLS.to_vec();
    tools.extend(["find", "xargs", "cat"]);
    if let Some(missing) = first_missing(true, &tools) {
        bail!("needs root, FUSE and the tools: {missing}");
    }
    let (prewarm, testbed) = prewarm_and_testbed(cli.prewarm.as_deref())?;
    let lock = File::create("/tmp/prewarm-bench.lock")?;
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .context("locking /tmp/prewarm-bench.lock")?;
    std::fs::create_dir_all(&cli.work).with_context(|| format!("mkdir {}", cli.work.display()))?;
    // Before anything is written: the tree measured.
    let commit = measured_commit();
    let load_start = loadavg();
    let result = measure_all(&cli, &prewarm, &testbed);
    let load = (load_start, loadavg());
    let _ = std::fs::remove_dir_all(&cli.work);
    let (spec, store, sets, samples) = result?;
    let text = render(&cli, &spec, &store, &sets, &samples, commit, load);
    match &cli.out {
        Some(path) => {
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?
        }
        None => print!("{text}"),
    }
    Ok(())
}

type Measured = (StoreSpec, images::ImageStore, ChunkSets, Vec<Vec<Sample>>);

fn measure_all(cli: &Cli, prewarm: &Path, testbed: &Path) -> Result<Measured> {
    let spec = StoreSpec::scaled(cli.scale);
    let backing = Mount::tmpfs(&cli.work.join("backing"), (spec.image_mib + 16) << 20)?;
    eprintln!("prewarm-images: building the image store");
    let store = images::build_store(&cli.work, &backing.dir.join("store.img"), &spec)?;
    let args: Vec<String> = [
        "--chunk-size".to_string(),
        CHUNK.to_string(),
        "--latency-ms".into(),
        cli.latency_ms.to_string(),
        "--concurrency".into(),
        cli.concurrency.to_string(),
    ]
    .into();
    let lazy = LazyStore::open(testbed, &store.image, &cli.work, &args)?;
    let root = lazy.containerd_root();
    let big = &store.images[0];
    let sets = images::chunk_sets(&root, big, CHUNK)?;
    let mut samples = vec![Vec::new(); METHODS.len()];
    for run in 0..cli.runs {
        for (i, method) in METHODS.iter().enumerate() {
            sys::check_interrupt()?;
            let s = measure(&lazy, *method, prewarm, &root, big, &sets)?;
            eprintln!("run {run} {method:?}: {s:?}");
            samples[i].push(s);
        }
    }
    drop(lazy);
    drop(backing);
    Ok((spec, store, sets, samples))
}

fn measure(
    lazy: &LazyStore,
    method: Method,
    prewarm: &Path,
    root: &Path,
    big: &StoredImage,
    sets: &ChunkSets,
) -> Result<Sample> {
    let reset_at = lazy.cold()?;
    let start = Instant::now();
    let f = sys::run_timed(
        &mut method.command(prewarm, root, big),
        Duration::from_secs(300),
        true,
    )?;
    if !f.status.success() {
        bail!("{}", f.failure(&format!("{method:?}")));
    }
    lazy.testbed.wait_idle(Duration::from_secs(5))?;
    let stats = lazy.testbed.stats(true)?;
    let hydrated: BTreeSet<u64> = stats.hydrated.unwrap_or_default().into_iter().collect();
    let missed = sets.layers.difference(&hydrated).count();
    let others = sets.others_only.intersection(&hydrated).count();
    let offset_ms = start.duration_since(reset_at).as_secs_f64() * 1e3;
    let order = stats.hydration_order.unwrap_or_default();
    let first_us = order.iter().map(|e| e.start_us).min();
    let last_us = order
        .iter()
        .filter(|e| sets.layers.contains(&e.chunk))
        .map(|e| e.end_us)
        .max();
    Ok(Sample {
        wall_ms: f.elapsed.as_secs_f64() * 1e3,
        image_ms: last_us
            .filter(|_| missed == 0)
            .map(|us| us as f64 / 1e3 - offset_ms),
        first_fetch_ms: first_us.map(|us| us as f64 / 1e3 - offset_ms),
        fetches: stats.fetches,
        fetched_bytes: stats.fetched_bytes,
        missed,
        others,
    })
}

fn med(v: &[Sample], f: impl Fn(&Sample) -> f64) -> f64 {
    median(v.iter().map(|s| Some(f(s)))).unwrap_or(f64::NAN)
}

fn render(
    cli: &Cli,
    spec: &StoreSpec,
    store: &images::ImageStore,
    sets: &ChunkSets,
    samples: &[Vec<Sample>],
    (commit, dirty): (String, bool),
    (load_start, load_end): (String, String),
) -> String {
    let mut out = String::new();
    let limit_ms = (sets.planned.len() as f64 / cli.concurrency as f64).ceil() * cli.latency_ms;
    out.push_str("# Hydrating one container image (`--image`)\n\n");
    out.push_str(
        "Generated by `prewarm-images` (`cargo build --release -p prewarm-cli -p \
         prewarm-benches && target/release/prewarm-images --out benches/IMAGES.md`, as root, \
         ~25 s).\n\n",
    );
    out.push_str(&format!(
        "Measured at commit `{}`{}. Testbed: {} KiB chunks, {} ms per fetch, {} in flight; \
         the store (ext4, {} MiB image on a tmpfs) mounted `ro,noload` from a direct-I/O \
         loop device. Every run starts all cold (sync, drop caches, testbed reset); \
         medians of {} runs per method, each value in brackets. Load average `{load_start}` \
         at the start, `{load_end}` at the end (2 CPUs shared with other work: \
         compare methods within one run).\n\n",
        if commit.is_empty() {
            "unknown"
        } else {
            &commit
        },
        if dirty {
            " with uncommitted changes"
        } else {
            ""
        },
        CHUNK >> 10,
        cli.latency_ms,
        cli.concurrency,
        spec.image_mib,
        cli.runs
    ));
    out.push_str("| image (containerd store, imported by containerd) | layers | files | MiB |\n| --- | --- | --- | --- |\n");
    for (i, image) in store.images.iter().enumerate() {
        out.push_str(&format!(
            "| `{}`{} | {} | {} | {:.1} |\n",
            image.name,
            if i == 0 { " (BIG)" } else { "" },
            image.layer_dirs.len(),
            image.files,
            image.bytes as f64 / MIB
        ));
    }
    out.push_str(&format!(
        "\nAll three share one base layer ({} files). BIG's own chunk set (FIEMAP of its \
         layers' files, both databases, its manifest and config): **{} chunks** \
         ({} files, {:.1} MiB); {} more chunks hold only other files' data (the small \
         images' layers, every layer blob). Physical limit for BIG: ceil({} / {}) × {} ms \
         = **{:.0} ms**.\n\n",
        spec.base_files,
        sets.planned.len(),
        sets.planned_files,
        sets.planned_bytes as f64 / MIB,
        sets.others_only.len(),
        sets.planned.len(),
        cli.concurrency,
        cli.latency_ms,
        limit_ms
    ));
    out.push_str(
        "| method | wall ms | BIG's layers hydrated after ms | wall / limit | first fetch after ms | \
         chunks fetched | fetched MiB | BIG's layer chunks left cold | others-only chunks fetched |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for (method, ss) in METHODS.iter().zip(samples) {
        let walls: Vec<String> = ss.iter().map(|s| format!("{:.0}", s.wall_ms)).collect();
        let wall = med(ss, |s| s.wall_ms);
        let image = median(ss.iter().map(|s| s.image_ms));
        out.push_str(&format!(
            "| {} | {wall:.0} [{}] | {} | {:.2} | {:.0} | {:.0} | {:.1} | {:.0} | {:.0} |\n",
            method.label(),
            walls.join(", "),
            image.map_or("– (not all)".into(), |ms| format!("{ms:.0}")),
            wall / limit_ms,
            median(ss.iter().map(|s| s.first_fetch_ms)).unwrap_or(f64::NAN),
            med(ss, |s| s.fetches as f64),
            med(ss, |s| s.fetched_bytes as f64) / MIB,
            med(ss, |s| s.missed as f64),
            med(ss, |s| s.others as f64),
        ));
    }
    out.push_str(&format!(
        "\n*wall ms*: the method's process, start to exit (prewarm's includes reading \
         containerd's databases and mapping every file cold). *BIG's layers hydrated after*: \
         method start → the testbed hydrating the last chunk holding data of BIG's layer \
         files ({} chunks; the databases and blobs only `--image` reads are left out, \
         as the other methods do not read them). *wall / limit*: wall \
         time over the physical limit above. *first fetch after*: method start → the \
         first fetch; the cache drop before every run also evicts the programs \
         themselves, which load again from the host's disk, and the path down to the \
         store is looked up cold (a few serial fetches). Chunk and byte counts are the testbed's \
         (`fetches`, `fetched_bytes`); fetched beyond BIG's set are the filesystem \
         metadata the walk reads and, for the whole directory, the other images' layers.\n",
        sets.layers.len()
    ));
    out
}
