//! The end-to-end comparison itself: build the fixture, serve it through the
//! testbed, put a loop device and a read-only mount on it, and run every
//! method from an all-cold volume, measuring each from the testbed's own
//! hydration record.
//!
//! One method run ("measure"):
//! 1. wait until no fetch is in flight; `sync` + drop caches (first, so
//!    nothing the drop might read is counted); for the "metadata cached"
//!    prewarm variant, a `prewarm --dry-run` now, so its FIEMAP mapping finds
//!    the filesystem metadata in the page cache;
//! 2. reset the testbed (every chunk cold, counters zeroed) and note the
//!    local instant of the reset;
//! 3. run the method, timing it; wait for in-flight fetches;
//! 4. take the testbed's detailed stats and [`analyse`] them against the
//!    critical chunk set;
//! 5. the warm check: drop caches again (no reset) and time the application
//!    reading the critical files, counting the fetches that causes.
//!
//! The critical chunk set comes from `prewarm --dry-run --json` of the
//! critical list on the mounted loop device ([`CriticalSet::from_dry_run`]);
//! the loop device has no partition offset and testbed chunks equal plan
//! chunks, so device chunk N is testbed chunk N.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::analysis::{self, analyse, compare_sets, CriticalSet, Hydration};
use super::sys::{self, check_interrupt, LoopDevice, Mount, TestbedProcess};

const MIB: f64 = 1048576.0;

/// How the harness runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// CI mode: small fixture, one scenario, exactness check.
    pub ci: bool,
    /// Use the small fixture preset.
    pub small: bool,
    /// Working directory (fixture, mounts); must not be on tmpfs.
    pub work: PathBuf,
    pub prewarm: PathBuf,
    pub testbed: PathBuf,
    pub fixture: PathBuf,
    pub chunk_size: u64,
    pub latency_ms: f64,
    /// Testbed concurrencies of the direct-I/O scenarios (first = headline).
    pub concurrencies: Vec<usize>,
    /// Also run the buffered-loop scenario (at the first concurrency).
    pub buffered: bool,
    /// Testbed throughput cap, MiB/s.
    pub max_mibps: Option<f64>,
    /// Repetitions of every method in the direct-I/O scenarios.
    pub repeat: usize,
    /// Repetitions in the buffered-loop scenario.
    pub repeat_buffered: usize,
    /// Kill any single method after this long.
    pub timeout: Duration,
    /// Run only the methods whose key contains one of these (empty: all).
    pub only: Vec<String>,
    /// Run the full-volume sweeps.
    pub sweep: bool,
}

/// One testbed + loop configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Scenario {
    pub id: String,
    pub title: String,
    pub direct_io: bool,
    pub concurrency: usize,
    pub latency_ms: f64,
    pub chunk_size: u64,
    pub max_mibps: Option<f64>,
    pub repeat: usize,
    pub headline: bool,
}

/// A way of getting the critical files hydrated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Method {
    /// The application reading the critical files cold, in list order.
    AppCold,
    /// One `cat` of all files.
    Cat,
    /// `xargs -P 32 -n N cat`.
    Xargs { n: usize },
    /// `vmtouch -t` of all files.
    Vmtouch,
    /// AWS's documented fio initialisation of the whole device.
    Fio,
    /// Files sorted by first physical offset (FIEMAP), each read in turn.
    PhysicalOrder,
    /// The prewarm CLI on the critical list.
    Prewarm { touch: bool, qd: u32, cached: bool },
    /// `prewarm run --manifest`: the plan made ahead by `prewarm plan` (as at
    /// image build time), replayed without mapping anything.
    PrewarmManifest { touch: bool },
}

impl Method {
    /// prewarm at the default queue depth (32).
    pub const fn prewarm_q32(touch: bool, cached: bool) -> Method {
        Method::Prewarm {
            touch,
            qd: 32,
            cached,
        }
    }

    /// Stable identifier (JSON, CSV).
    pub fn key(&self) -> String {
        match self {
            Method::AppCold => "no-prewarm".into(),
            Method::Cat => "cat".into(),
            Method::Xargs { n } => format!("xargs-p32-n{n}-cat"),
            Method::Vmtouch => "vmtouch".into(),
            Method::Fio => "fio".into(),
            Method::PhysicalOrder => "physical-order".into(),
            Method::Prewarm { touch, qd, cached } => format!(
                "prewarm-{}-q{qd}-{}",
                if *touch { "touch" } else { "full" },
                if *cached { "cached" } else { "cold" }
            ),
            Method::PrewarmManifest { touch } => {
                format!("prewarm-manifest-{}", if *touch { "touch" } else { "full" })
            }
        }
    }

    /// Human label.
    pub fn label(&self) -> String {
        match self {
            Method::AppCold => "no prewarm (app reads cold, list order)".into(),
            Method::Cat => "cat (serial)".into(),
            Method::Xargs { n } => format!("xargs -P 32 -n {n} cat"),
            Method::Vmtouch => "vmtouch -t".into(),
            Method::Fio => "fio volume-initialize (whole device)".into(),
            Method::PhysicalOrder => "physical-order reader (FIEMAP sort)".into(),
            Method::Prewarm { touch, qd, cached } => {
                let mut s = String::from("prewarm");
                match (touch, qd) {
                    (false, 32) => s.push_str(" (default)"),
                    (true, 32) => s.push_str(" --mode touch"),
                    (true, q) => s.push_str(&format!(" --mode touch -q {q}")),
                    (false, q) => s.push_str(&format!(" -q {q}")),
                }
                s.push_str(if *cached {
                    " [metadata cached]"
                } else {
                    " [cold]"
                });
                s
            }
            Method::PrewarmManifest { touch: false } => {
                "prewarm run --manifest [planned ahead]".into()
            }
            Method::PrewarmManifest { touch: true } => {
                "prewarm run --manifest --mode touch [planned ahead]".into()
            }
        }
    }

    pub fn is_prewarm(&self) -> bool {
        matches!(
            self,
            Method::Prewarm { .. } | Method::PrewarmManifest { .. }
        )
    }

    /// The plan exists before the run (metadata cached or a manifest): the
    /// run must hydrate exactly its plan.
    pub fn plans_ahead(&self) -> bool {
        matches!(
            self,
            Method::Prewarm { cached: true, .. } | Method::PrewarmManifest { .. }
        )
    }

    /// prewarm at default settings (full mode, queue depth 32).
    pub fn is_prewarm_default(&self) -> bool {
        matches!(
            self,
            Method::Prewarm {
                touch: false,
                qd: 32,
                ..
            }
        )
    }
}

/// The methods of a full run, in run order.
pub fn all_methods() -> Vec<Method> {
    let mut m = vec![
        Method::AppCold,
        Method::Cat,
        Method::Xargs { n: 1 },
        Method::Xargs { n: 8 },
        Method::Vmtouch,
        Method::Fio,
        Method::PhysicalOrder,
    ];
    for cached in [false, true] {
        m.push(Method::prewarm_q32(false, cached));
        m.push(Method::prewarm_q32(true, cached));
        for qd in [1, 8, 128] {
            m.push(Method::Prewarm {
                touch: false,
                qd,
                cached,
            });
        }
    }
    m.push(Method::PrewarmManifest { touch: false });
    m.push(Method::PrewarmManifest { touch: true });
    m
}

/// The methods of CI mode.
pub fn ci_methods() -> Vec<Method> {
    vec![
        Method::AppCold,
        Method::prewarm_q32(false, false),
        Method::prewarm_q32(false, true),
        Method::prewarm_q32(true, true),
        Method::PrewarmManifest { touch: false },
    ]
}

/// The application reading the critical files again after caches were
/// dropped, with the testbed not reset.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WarmCheck {
    pub read_ms: f64,
    pub bytes: u64,
    pub errors: u64,
    /// Fetches the read caused (0 if everything it needed was hydrated).
    pub fetches: u64,
    pub fetched_bytes: u64,
}

/// The exact-set comparison of a prewarm run with its plan (for a cold
/// run: with its plan plus the metadata chunks its mapping reads).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExactCheck {
    /// Chunks hydrated that are not in the plan.
    pub outside: Vec<u64>,
    /// Chunks of the plan not hydrated.
    pub missing: Vec<u64>,
}

impl ExactCheck {
    pub fn exact(&self) -> bool {
        self.outside.is_empty() && self.missing.is_empty()
    }
}

/// One method run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub scenario: String,
    pub method: Method,
    pub key: String,
    pub label: String,
    pub rep: usize,
    pub error: Option<String>,
    /// Wall time of the method (spawn to exit, or the in-process work).
    pub wall_ms: f64,
    pub hydration: Hydration,
    /// Physical limit of the scenario's critical set.
    pub limit_ms: f64,
    /// time to critical / limit.
    pub ratio: Option<f64>,
    /// Fraction of all CPUs busy during the method.
    pub cpu_busy: Option<f64>,
    /// CPU time the testbed process used during the method.
    pub testbed_cpu_ms: Option<f64>,
    /// Bytes the tool says it read (prewarm's report).
    pub tool_bytes_read: Option<u64>,
    pub warm: Option<WarmCheck>,
    pub exact: Option<ExactCheck>,
}

/// One full-volume sweep.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepRecord {
    pub scenario: String,
    pub tool: String,
    pub rep: usize,
    pub error: Option<String>,
    pub wall_ms: f64,
    /// Device size / wall time.
    pub mib_per_s: f64,
    /// The tool's own figure (prewarm mib_per_s, fio bw).
    pub tool_mib_per_s: Option<f64>,
    pub fetches: u64,
    pub hydrated_chunks: u64,
    /// Read requests the testbed received, and the most fetches in flight.
    pub reads: u64,
    pub peak_concurrent_fetches: usize,
    pub cpu_busy: Option<f64>,
    pub testbed_cpu_ms: Option<f64>,
}

/// What one scenario produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScenarioResult {
    pub scenario: Scenario,
    pub loop_device: String,
    pub device_size: u64,
    pub critical_chunks: u64,
    pub critical_by_priority: Vec<(u32, u64)>,
    pub critical_files: u64,
    pub critical_file_bytes: u64,
    pub planned_bytes: u64,
    pub planned_ranges: u64,
    pub limit_ms: f64,
    /// prewarm's own planning time (dry-run `elapsed_ms`: collect, FIEMAP,
    /// plan) with cold metadata (straight after a cache drop, fetching
    /// metadata through the testbed) and with the metadata cached.
    pub prepare_cold_ms: Option<f64>,
    pub prepare_warm_ms: Option<f64>,
    /// /proc/loadavg when the scenario started and ended (other work on
    /// the host skews its timings).
    pub loadavg_start: String,
    pub loadavg_end: String,
    /// CPU seconds used by processes other than the harness and its
    /// children during the scenario, and the scenario's wall time: other
    /// work on the host competes with the testbed and the methods.
    pub other_cpu_s: f64,
    pub wall_s: f64,
    pub runs: Vec<RunRecord>,
    pub sweeps: Vec<SweepRecord>,
}

/// Shared state of a run.
pub struct Harness {
    pub opts: Options,
    /// The testbed's backing image: a copy of the fixture on a private
    /// tmpfs (see [`Harness::prepare`]).
    pub image: PathBuf,
    pub list: PathBuf,
    pub paths_file: PathBuf,
    pub files: Vec<PathBuf>,
    pub vol: PathBuf,
    /// Fixture manifest (`prewarm-fixture`'s JSON), for the report.
    pub manifest: serde_json::Value,
    /// The tmpfs holding `image`; unmounted when the harness is dropped,
    /// after every scenario's guards.
    _backing: Mount,
}

/// Parse a critical list: `PRIORITY PATH` or `PATH` per line, `#` comments.
pub fn parse_list(text: &str) -> Vec<(u32, PathBuf)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| match l.split_once(char::is_whitespace) {
            Some((p, rest)) if p.parse::<u32>().is_ok() => {
                (p.parse().unwrap_or(100), PathBuf::from(rest.trim()))
            }
            _ => (100, PathBuf::from(l)),
        })
        .collect()
}

/// Read every file in order, as an application would (1 MiB reads).
/// Returns (bytes, errors).
fn read_files<'a>(files: impl IntoIterator<Item = &'a PathBuf>) -> (u64, u64) {
    let mut buf = vec![0u8; 1 << 20];
    let (mut bytes, mut errors) = (0u64, 0u64);
    for p in files {
        match File::open(p) {
            Ok(mut f) => loop {
                match f.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => bytes += n as u64,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        errors += 1;
                        break;
                    }
                }
            },
            Err(_) => errors += 1,
        }
    }
    (bytes, errors)
}

/// The physical-order reader (in the style of wish / warmer): FIEMAP every
/// file, sort by the physical offset of its first extent, read each file
/// sequentially in that order. Returns (bytes, errors).
fn physical_order_read(files: &[PathBuf]) -> (u64, u64) {
    let mut keyed: Vec<(u64, &PathBuf)> = Vec::with_capacity(files.len());
    let mut errors = 0;
    for p in files {
        match File::open(p) {
            Ok(f) => {
                let first = prewarm_core::fiemap::file_extents(&f)
                    .ok()
                    .and_then(|e| e.first().map(|x| x.physical))
                    .unwrap_or(u64::MAX);
                keyed.push((first, p));
            }
            Err(_) => errors += 1,
        }
    }
    keyed.sort();
    let (bytes, e) = read_files(keyed.into_iter().map(|(_, p)| p));
    (bytes, errors + e)
}

impl Harness {
    /// Build the fixture under `opts.work`, copy its image to a private
    /// tmpfs and load its critical list.
    ///
    /// The copy matters: every method starts with a cache drop, which would
    /// also evict the testbed's backing image from the page cache if it
    /// lived on a disk filesystem, and the testbed would then serve every
    /// hydrated byte from the host's disk (the default fixture's full-mode
    /// prewarm run read ~440 MiB from the host disk, and at concurrency 32
    /// kept ~8 fetches in flight instead of ~25). tmpfs pages are not
    /// dropped, so serving a hydrated chunk costs memory copies only, as
    /// the model intends.
    pub fn prepare(opts: Options) -> Result<Self> {
        let fx = opts.work.join("fixture");
        let vol = opts.work.join("vol");
        std::fs::create_dir_all(&vol).with_context(|| format!("mkdir {}", vol.display()))?;
        let mut cmd = Command::new(&opts.fixture);
        cmd.arg("--out")
            .arg(&fx)
            .arg("--mount-prefix")
            .arg(&vol)
            .arg("--chunk-size")
            .arg(opts.chunk_size.to_string())
            .arg("--force");
        if opts.small {
            cmd.arg("--small");
        }
        eprintln!("prewarm-e2e: building the fixture ({cmd:?})");
        let f = sys::run_to_completion(&mut cmd, Duration::from_secs(600))?;
        if !f.status.success() {
            bail!("{}", f.failure("prewarm-fixture"));
        }
        let built = fx.join("volume.img");
        let size = std::fs::metadata(&built)
            .with_context(|| format!("stat {}", built.display()))?
            .len();
        let backing = Mount::tmpfs(&opts.work.join("backing"), size + (16 << 20))?;
        let image = backing.dir.join("volume.img");
        std::fs::copy(&built, &image)
            .with_context(|| format!("copying {} to {}", built.display(), image.display()))?;
        let _ = std::fs::remove_file(&built);
        let list = fx.join("critical.list");
        let text = std::fs::read_to_string(&list)
            .with_context(|| format!("reading {}", list.display()))?;
        let files: Vec<PathBuf> = parse_list(&text).into_iter().map(|(_, p)| p).collect();
        if files.is_empty() {
            bail!("{} lists no files", list.display());
        }
        let paths_file = opts.work.join("paths.txt");
        let mut plain = String::new();
        for p in &files {
            plain.push_str(&p.to_string_lossy());
            plain.push('\n');
        }
        std::fs::write(&paths_file, plain)
            .with_context(|| format!("writing {}", paths_file.display()))?;
        let manifest = std::fs::read_to_string(fx.join("manifest.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(serde_json::Value::Null);
        Ok(Harness {
            image,
            _backing: backing,
            list,
            paths_file,
            files,
            vol,
            manifest,
            opts,
        })
    }

    /// The scenarios of this run, headline first.
    pub fn scenarios(&self) -> Vec<Scenario> {
        let o = &self.opts;
        let mk = |direct_io: bool, concurrency: usize, repeat: usize, headline: bool| Scenario {
            id: format!(
                "{}-c{concurrency}",
                if direct_io { "dio" } else { "buffered" }
            ),
            title: format!(
                "{} loop device, testbed concurrency {concurrency}",
                if direct_io {
                    "direct-I/O (--direct-io=on)"
                } else {
                    "buffered (--direct-io=off)"
                }
            ),
            direct_io,
            concurrency,
            latency_ms: o.latency_ms,
            chunk_size: o.chunk_size,
            max_mibps: o.max_mibps,
            repeat,
            headline,
        };
        let mut out: Vec<Scenario> = o
            .concurrencies
            .iter()
            .enumerate()
            .map(|(i, &c)| mk(true, c, o.repeat, i == 0))
            .collect();
        if o.buffered && !o.ci {
            if let Some(&c) = o.concurrencies.first() {
                out.push(mk(false, c, o.repeat_buffered, false));
            }
        }
        out
    }

    fn prewarm_cmd(&self) -> Command {
        let mut c = Command::new(&self.opts.prewarm);
        c.arg("--quiet");
        c
    }

    /// `prewarm --dry-run --json` of the critical list.
    fn dry_run(&self) -> Result<String> {
        let mut c = self.prewarm_cmd();
        c.args(["--dry-run", "--json", "--paths"]).arg(&self.list);
        let f = sys::run_timed(&mut c, self.opts.timeout, false)?;
        if !f.status.success() {
            bail!("{}", f.failure("prewarm --dry-run"));
        }
        Ok(f.stdout)
    }

    /// Where `prewarm plan` writes the manifest of the critical list.
    fn manifest_path(&self) -> PathBuf {
        self.list.with_extension("manifest")
    }

    /// `prewarm plan` of the critical list (mapping reads the metadata, as
    /// the dry run does; the image build would have done it long before).
    fn plan_manifest(&self) -> Result<()> {
        // Subcommand options follow the subcommand (`prewarm --quiet plan`
        // is a usage error).
        let mut c = Command::new(&self.opts.prewarm);
        c.args(["plan", "--quiet", "--paths"])
            .arg(&self.list)
            .arg("-o")
            .arg(self.manifest_path());
        let f = sys::run_timed(&mut c, self.opts.timeout, false)?;
        if !f.status.success() {
            bail!("{}", f.failure("prewarm plan"));
        }
        Ok(())
    }

    fn fio_cmd(dev: &Path) -> Command {
        let mut c = Command::new("fio");
        c.arg(format!("--filename={}", dev.display())).args([
            "--rw=read",
            "--bs=1M",
            "--iodepth=32",
            "--ioengine=libaio",
            "--direct=1",
            "--name=volume-initialize",
            // Not part of AWS's command: open read-only (the loop device
            // is read-only) and report in JSON. Neither changes the I/O.
            "--readonly",
            "--output-format=json",
        ]);
        c
    }

    /// Run one scenario end to end.
    pub fn run_scenario(&self, sc: &Scenario, methods: &[Method]) -> Result<ScenarioResult> {
        let o = &self.opts;
        let tb_dir = o.work.join(format!("tb-{}", sc.id));
        let mut args = vec![
            "--chunk-size".to_string(),
            o.chunk_size.to_string(),
            "--latency-ms".into(),
            o.latency_ms.to_string(),
            "--concurrency".into(),
            sc.concurrency.to_string(),
        ];
        if let Some(m) = o.max_mibps {
            args.push("--max-mibps".into());
            args.push(m.to_string());
        }
        eprintln!("prewarm-e2e: scenario {}: {}", sc.id, sc.title);
        let loadavg_start = super::loadavg();
        let foreign0 = sys::foreign_cpu_sample();
        let started = Instant::now();
        // Declared in this order so they drop in reverse: mount, loop, testbed.
        let tb = TestbedProcess::start(
            &o.testbed,
            &self.image,
            &tb_dir,
            &args,
            &o.work.join(format!("testbed-{}.log", sc.id)),
        )?;
        let lo = LoopDevice::attach(&tb.disk(), sc.direct_io)?;
        let _mnt = Mount::new(&lo.path, &self.vol, "ro,noload")?;
        let device_size = lo.size()?;

        sys::drop_caches()?;
        tb.reset()?;
        let dry = self.dry_run()?;
        // What mapping alone hydrated: the filesystem metadata a cold run
        // may read beside its plan.
        let metadata = tb.stats(true)?.hydrated.unwrap_or_default();
        let prepare_cold_ms = elapsed_ms(&dry);
        let prepare_warm_ms = elapsed_ms(&self.dry_run()?);
        let node = lo.path.to_string_lossy().into_owned();
        let mut critical = CriticalSet::from_dry_run(&dry, &node, o.chunk_size)?;
        critical.metadata = metadata;
        let limit_ms = analysis::physical_limit_ms(
            critical.chunks.len() as u64,
            sc.concurrency as u64,
            o.latency_ms,
            o.chunk_size,
            o.max_mibps,
        );
        eprintln!(
            "prewarm-e2e:   {} critical files, {} chunks {:?}; limit {:.1} ms",
            critical.files,
            critical.chunks.len(),
            critical.by_priority,
            limit_ms
        );

        let methods: Vec<Method> = methods
            .iter()
            .copied()
            .filter(|m| o.only.is_empty() || o.only.iter().any(|k| m.key().contains(k.as_str())))
            .collect();
        let mut runs = Vec::new();
        let mut sweeps = Vec::new();
        for rep in 0..sc.repeat.max(1) {
            for &m in &methods {
                check_interrupt()?;
                let rec = self.measure(sc, &tb, &lo, &critical, limit_ms, m, rep)?;
                eprintln!("prewarm-e2e:   {}", progress_line(&rec));
                runs.push(rec);
            }
            if o.sweep && !o.ci {
                let tools = if rep % 2 == 0 {
                    ["prewarm", "fio"]
                } else {
                    ["fio", "prewarm"]
                };
                for tool in tools {
                    check_interrupt()?;
                    let s = self.sweep(sc, &tb, &lo, device_size, tool, rep)?;
                    eprintln!(
                        "prewarm-e2e:   sweep {:<8} {:>8.1} ms {:>7.1} MiB/s{}",
                        s.tool,
                        s.wall_ms,
                        s.mib_per_s,
                        s.error
                            .as_deref()
                            .map(|e| format!("  ERROR {e}"))
                            .unwrap_or_default()
                    );
                    sweeps.push(s);
                }
            }
        }
        Ok(ScenarioResult {
            scenario: sc.clone(),
            loop_device: node,
            device_size,
            critical_chunks: critical.chunks.len() as u64,
            critical_by_priority: critical.by_priority.clone(),
            critical_files: critical.files,
            critical_file_bytes: critical.file_bytes,
            planned_bytes: critical.planned_bytes,
            planned_ranges: critical.ranges,
            limit_ms,
            prepare_cold_ms,
            prepare_warm_ms,
            loadavg_start,
            loadavg_end: super::loadavg(),
            other_cpu_s: sys::foreign_cpu_delta_ms(&foreign0, &sys::foreign_cpu_sample()) / 1e3,
            wall_s: started.elapsed().as_secs_f64(),
            runs,
            sweeps,
        })
    }

    /// Run the method itself. Returns the bytes the tool reports reading
    /// (prewarm only).
    fn execute(&self, m: Method, dev: &Path) -> Result<Option<u64>> {
        let timeout = self.opts.timeout;
        let external = |mut cmd: Command, what: &str| -> Result<sys::Finished> {
            let f = sys::run_timed(&mut cmd, timeout, !what.starts_with("prewarm"))?;
            if !f.status.success() {
                bail!("{}", f.failure(what));
            }
            Ok(f)
        };
        match m {
            Method::AppCold => {
                let (_, errors) = read_files(&self.files);
                if errors > 0 {
                    bail!("{errors} files could not be read");
                }
            }
            Method::PhysicalOrder => {
                let (_, errors) = physical_order_read(&self.files);
                if errors > 0 {
                    bail!("{errors} files could not be read");
                }
            }
            Method::Cat => {
                let mut c = Command::new("cat");
                c.arg("--").args(&self.files);
                external(c, "cat")?;
            }
            Method::Xargs { n } => {
                let mut c = Command::new("xargs");
                c.arg("-a")
                    .arg(&self.paths_file)
                    .args(["-d", "\n", "-P", "32", "-n"])
                    .arg(n.to_string())
                    .arg("cat");
                external(c, "xargs cat")?;
            }
            Method::Vmtouch => {
                let mut c = Command::new("vmtouch");
                c.args(["-t", "-q"]).args(&self.files);
                external(c, "vmtouch")?;
            }
            Method::Fio => {
                external(Self::fio_cmd(dev), "fio")?;
            }
            Method::Prewarm { touch, qd, .. } => {
                let mut c = self.prewarm_cmd();
                c.args(["--json", "-q"]).arg(qd.to_string());
                if touch {
                    c.args(["--mode", "touch"]);
                }
                c.arg("--paths").arg(&self.list);
                let f = external(c, "prewarm")?;
                let v: serde_json::Value =
                    serde_json::from_str(&f.stdout).context("parsing prewarm's JSON report")?;
                return Ok(v.get("bytes_read").and_then(serde_json::Value::as_u64));
            }
            Method::PrewarmManifest { touch } => {
                let mut c = Command::new(&self.opts.prewarm);
                c.args(["run", "--quiet", "--manifest"])
                    .arg(self.manifest_path());
                c.args(["--no-verify", "--json"]);
                if touch {
                    c.args(["--mode", "touch"]);
                }
                let f = external(c, "prewarm run")?;
                let v: serde_json::Value =
                    serde_json::from_str(&f.stdout).context("parsing prewarm's JSON report")?;
                return Ok(v.get("bytes_read").and_then(serde_json::Value::as_u64));
            }
        }
        Ok(None)
    }

    #[allow(clippy::too_many_arguments)]
    fn measure(
        &self,
        sc: &Scenario,
        tb: &TestbedProcess,
        lo: &LoopDevice,
        critical: &CriticalSet,
        limit_ms: f64,
        m: Method,
        rep: usize,
    ) -> Result<RunRecord> {
        let mut rec = RunRecord {
            scenario: sc.id.clone(),
            method: m,
            key: m.key(),
            label: m.label(),
            rep,
            error: None,
            wall_ms: 0.0,
            hydration: Hydration::default(),
            limit_ms,
            ratio: None,
            cpu_busy: None,
            testbed_cpu_ms: None,
            tool_bytes_read: None,
            warm: None,
            exact: None,
        };
        tb.wait_idle(Duration::from_secs(10))?;
        sys::drop_caches()?;
        let ahead = match m {
            Method::Prewarm { cached: true, .. } => self.dry_run().map(drop),
            Method::PrewarmManifest { .. } => self.plan_manifest(),
            _ => Ok(()),
        };
        if let Err(e) = ahead {
            rec.error = Some(format!("{e:#}"));
            return Ok(rec);
        }
        let reset_at = tb.reset()?;
        let cpu0 = sys::cpu_counters();
        let tcpu0 = tb.cpu_ms();
        let t0 = Instant::now();
        let outcome = self.execute(m, &lo.path);
        let wall = t0.elapsed();
        let cpu1 = sys::cpu_counters();
        let tcpu1 = tb.cpu_ms();
        check_interrupt()?;
        tb.wait_idle(Duration::from_secs(10))?;
        let stats = tb.stats(true)?;
        let start_us = t0.saturating_duration_since(reset_at).as_secs_f64() * 1e6;

        rec.wall_ms = wall.as_secs_f64() * 1e3;
        match outcome {
            Ok(bytes) => rec.tool_bytes_read = bytes,
            Err(e) => rec.error = Some(format!("{e:#}")),
        }
        rec.hydration = analyse(&stats, &critical.chunks, start_us);
        rec.ratio = rec.hydration.time_to_critical_ms.map(|t| t / limit_ms);
        rec.cpu_busy = sys::cpu_busy(cpu0, cpu1);
        rec.testbed_cpu_ms = tcpu0.zip(tcpu1).map(|(a, b)| b - a);
        if m.is_prewarm() {
            let hydrated = stats.hydrated.clone().unwrap_or_default();
            let (mut outside, missing) = compare_sets(&hydrated, &critical.chunks);
            if !m.plans_ahead() {
                // A cold run maps first: the metadata it reads is expected.
                outside.retain(|c| critical.metadata.binary_search(c).is_err());
            }
            rec.exact = Some(ExactCheck { outside, missing });
        }

        // The warm check: caches dropped, testbed not reset.
        sys::drop_caches()?;
        let before = tb.stats(false)?;
        let t = Instant::now();
        let (bytes, errors) = read_files(&self.files);
        let read_ms = t.elapsed().as_secs_f64() * 1e3;
        tb.wait_idle(Duration::from_secs(10))?;
        let after = tb.stats(false)?;
        rec.warm = Some(WarmCheck {
            read_ms,
            bytes,
            errors,
            fetches: after.fetches.saturating_sub(before.fetches),
            fetched_bytes: after.fetched_bytes.saturating_sub(before.fetched_bytes),
        });
        Ok(rec)
    }

    fn sweep(
        &self,
        sc: &Scenario,
        tb: &TestbedProcess,
        lo: &LoopDevice,
        device_size: u64,
        tool: &str,
        rep: usize,
    ) -> Result<SweepRecord> {
        tb.wait_idle(Duration::from_secs(10))?;
        sys::drop_caches()?;
        tb.reset()?;
        let mut cmd = if tool == "fio" {
            Self::fio_cmd(&lo.path)
        } else {
            let mut c = self.prewarm_cmd();
            c.arg("--json").arg("--device").arg(&lo.path);
            c
        };
        let cpu0 = sys::cpu_counters();
        let tcpu0 = tb.cpu_ms();
        let t0 = Instant::now();
        let f = sys::run_timed(&mut cmd, self.opts.timeout, false);
        let wall = t0.elapsed();
        let cpu1 = sys::cpu_counters();
        let tcpu1 = tb.cpu_ms();
        tb.wait_idle(Duration::from_secs(10))?;
        let stats = tb.stats(false)?;
        let mut error = None;
        let mut tool_mib = None;
        match f {
            Ok(f) if f.status.success() => {
                let v: serde_json::Value = serde_json::from_str(&f.stdout).unwrap_or_default();
                tool_mib = if tool == "fio" {
                    v.pointer("/jobs/0/read/bw_bytes")
                        .and_then(serde_json::Value::as_f64)
                        .map(|b| b / MIB)
                } else {
                    v.get("mib_per_s").and_then(serde_json::Value::as_f64)
                };
            }
            Ok(f) => error = Some(f.failure(tool)),
            Err(e) => error = Some(format!("{e:#}")),
        }
        let secs = wall.as_secs_f64();
        Ok(SweepRecord {
            scenario: sc.id.clone(),
            tool: if tool == "fio" {
                "fio".into()
            } else {
                "prewarm --device".into()
            },
            rep,
            error,
            wall_ms: secs * 1e3,
            mib_per_s: if secs > 0.0 {
                device_size as f64 / MIB / secs
            } else {
                0.0
            },
            tool_mib_per_s: tool_mib,
            fetches: stats.fetches,
            hydrated_chunks: stats.hydrated_chunks,
            reads: stats.reads,
            peak_concurrent_fetches: stats.peak_concurrent_fetches,
            cpu_busy: sys::cpu_busy(cpu0, cpu1),
            testbed_cpu_ms: tcpu0.zip(tcpu1).map(|(a, b)| b - a),
        })
    }
}

/// `elapsed_ms` of a prewarm JSON report.
fn elapsed_ms(report: &str) -> Option<f64> {
    serde_json::from_str::<serde_json::Value>(report)
        .ok()?
        .get("elapsed_ms")?
        .as_f64()
}

/// One progress line for stderr.
pub fn progress_line(r: &RunRecord) -> String {
    let h = &r.hydration;
    let ttc = h
        .time_to_critical_ms
        .map_or("not reached".into(), |t| format!("{t:.1} ms"));
    let warm = r
        .warm
        .as_ref()
        .map(|w| format!("warm read {:.0} ms/{} fetches", w.read_ms, w.fetches))
        .unwrap_or_default();
    format!(
        "{:<48} rep {} critical {:>12} ({:.2}x) wall {:>8.1} ms, {} chunks, {warm}{}",
        r.label,
        r.rep,
        ttc,
        r.ratio.unwrap_or(f64::NAN),
        r.wall_ms,
        h.chunks_hydrated,
        r.error
            .as_deref()
            .map(|e| format!("  ERROR {e}"))
            .unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_parsing() {
        let l = parse_list("# c\n10 /a b\n\n/x\n50\t/y\n");
        assert_eq!(
            l,
            vec![
                (10, PathBuf::from("/a b")),
                (100, PathBuf::from("/x")),
                (50, PathBuf::from("/y"))
            ]
        );
    }

    #[test]
    fn method_keys_are_unique() {
        let mut keys: Vec<String> = all_methods().iter().map(Method::key).collect();
        let n = keys.len();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), n);
        assert!(all_methods().iter().any(Method::is_prewarm_default));
    }
}
