//! The end-to-end comparison itself: build the fixture, serve it through the
//! testbed, put a loop device and a read-only mount on it, and run every
//! method from an all-cold volume, measuring each from the testbed's own
//! hydration record.
//!
//! This module owns the set-up and tear-down (fixture, tmpfs backing copy,
//! testbed, loop device, mount: RAII guards from [`super::sys`]) and the
//! scenario loop; what each method runs is in [`super::methods`], what a
//! run records in [`super::records`].
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
//!    reading the critical files, counting the fetches that causes;
//! 6. for `prewarm run --manifest` (full mode), the transfer bound: caches
//!    dropped once more, the same command again on the hydrated volume.
//!
//! The critical chunk set comes from `prewarm --dry-run --json` of the
//! critical list on the mounted loop device ([`CriticalSet::from_dry_run`]);
//! the loop device has no partition offset and testbed chunks equal plan
//! chunks, so device chunk N is testbed chunk N.
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::analysis::{self, analyse, compare_sets, CriticalSet, Hydration};
use super::methods::{read_files, Method};
use super::records::{
    progress_line, ExactCheck, RunRecord, Scenario, ScenarioResult, SweepRecord, WarmCheck,
};
use super::summary::LimitTargets;
use super::sys::{self, check_interrupt, LoopDevice, Mount, TestbedProcess};
use crate::fixture::Shape;

const MIB: f64 = 1048576.0;

/// How the harness runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// CI mode: the small node fixture (and the big tree, as `shapes` say),
    /// the first concurrency only, exactness check.
    pub ci: bool,
    /// Use the small preset of the node fixture.
    pub small: bool,
    /// The fixtures to run scenarios on, in this order: the node volume
    /// (`dio-c8`, `dio-c32`, `buffered-c8`) and the big tree
    /// (`big-tree-c8`, `big-tree-c32`).
    pub shapes: Vec<Shape>,
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
    /// Repetitions of every method in every scenario.
    pub repeat: usize,
    /// Kill any single method after this long.
    pub timeout: Duration,
    /// Run only the methods whose key contains one of these (empty: all).
    pub only: Vec<String>,
    /// Run the full-volume sweeps.
    pub sweep: bool,
}

/// Shared state of the scenarios on one fixture.
pub struct Harness {
    pub opts: Options,
    /// The fixture's shape.
    pub shape: Shape,
    /// The fixture in words, for the report.
    pub fixture: String,
    /// The testbed's backing image: a copy of the fixture on a private
    /// tmpfs (see [`Harness::prepare`]).
    pub image: PathBuf,
    /// The critical list as a user writes it (prewarm reads it; for the
    /// big tree it names the layer directories).
    pub list: PathBuf,
    /// `files`, one per line, for `xargs`.
    pub paths_file: PathBuf,
    /// Every critical file, in the list's order (the fixture's
    /// `critical-files.list`): what the methods taking file names read,
    /// and the warm re-read.
    pub files: Vec<PathBuf>,
    pub vol: PathBuf,
    /// Fixture manifest (`prewarm-fixture`'s JSON), for the report.
    pub manifest: serde_json::Value,
    /// The tmpfs holding `image`; unmounted when the harness is dropped,
    /// after every scenario's guards.
    _backing: Mount,
}

impl Harness {
    /// Build the fixture of `shape` under `opts.work`, copy its image to a
    /// private tmpfs and load its critical list.
    ///
    /// The copy matters: every method starts with a cache drop, which would
    /// also evict the testbed's backing image from the page cache if it
    /// lived on a disk filesystem, and the testbed would then serve every
    /// hydrated byte from the host's disk (the default fixture's full-mode
    /// prewarm run read ~440 MiB from the host disk, and at concurrency 32
    /// kept ~8 fetches in flight instead of ~25). tmpfs pages are not
    /// dropped, so serving a hydrated chunk costs memory copies only, as
    /// the model intends.
    pub fn prepare(opts: Options, shape: Shape) -> Result<Self> {
        let fx = opts.work.join(format!("fixture-{shape}"));
        let vol = opts.work.join("vol");
        std::fs::create_dir_all(&vol).with_context(|| format!("mkdir {}", vol.display()))?;
        let mut cmd = Command::new(&opts.fixture);
        cmd.arg("--out")
            .arg(&fx)
            .arg("--mount-prefix")
            .arg(&vol)
            .arg("--chunk-size")
            .arg(opts.chunk_size.to_string())
            .arg("--force")
            .arg("--shape")
            .arg(shape.to_string());
        let small = opts.small && shape == Shape::Node;
        if small {
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
        let backing = Mount::tmpfs(
            &opts.work.join(format!("backing-{shape}")),
            size + (16 << 20),
        )?;
        let image = backing.dir.join("volume.img");
        std::fs::copy(&built, &image)
            .with_context(|| format!("copying {} to {}", built.display(), image.display()))?;
        let _ = std::fs::remove_file(&built);
        let list = fx.join("critical.list");
        let expanded = fx.join("critical-files.list");
        let text = std::fs::read_to_string(&expanded)
            .with_context(|| format!("reading {}", expanded.display()))?;
        let (entries, _) = prewarm_core::parse_list(text.as_bytes(), &expanded);
        let files: Vec<PathBuf> = entries.into_iter().map(|e| e.path).collect();
        if files.is_empty() {
            bail!("{} lists no files", expanded.display());
        }
        let paths_file = opts.work.join(format!("paths-{shape}.txt"));
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
            shape,
            fixture: fixture_description(shape, small, &manifest),
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

    /// The scenarios on this fixture, headline first: on the node volume
    /// the direct-I/O ones at each concurrency (the first is the headline)
    /// and the buffered one; on the big tree the direct-I/O ones.
    pub fn scenarios(&self) -> Vec<Scenario> {
        let o = &self.opts;
        let shape = self.shape;
        let mk = |direct_io: bool, concurrency: usize, repeat: usize, headline: bool| Scenario {
            id: match shape {
                Shape::Node => format!(
                    "{}-c{concurrency}",
                    if direct_io { "dio" } else { "buffered" }
                ),
                Shape::BigTree => format!("big-tree-c{concurrency}"),
            },
            title: format!(
                "{}{} loop device, testbed concurrency {concurrency}",
                match shape {
                    Shape::Node => "",
                    Shape::BigTree => "Big tree (unpacked container layers): ",
                },
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
            shape,
            targets: LimitTargets::for_scenario(shape, concurrency),
        };
        let mut out: Vec<Scenario> = o
            .concurrencies
            .iter()
            .enumerate()
            .map(|(i, &c)| mk(true, c, o.repeat, i == 0 && shape == Shape::Node))
            .collect();
        if o.buffered && !o.ci && shape == Shape::Node {
            if let Some(&c) = o.concurrencies.first() {
                out.push(mk(false, c, o.repeat, false));
            }
        }
        out
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
        // The chunks that hold no byte of any file: metadata only (inode
        // tables, bitmaps, the journal, directories). How much of it a run
        // reads varies with what is cached (ext4 reads inode tables ahead
        // of a miss), so a run may read any of them beside its plan.
        let node = lo.path.to_string_lossy().into_owned();
        let all_files = CriticalSet::from_dry_run(&self.dry_run_of_volume()?, &node, o.chunk_size)?;
        let all_files: std::collections::BTreeSet<u64> = all_files.chunks.into_iter().collect();
        let metadata_only =
            (0..device_size.div_ceil(o.chunk_size)).filter(|c| !all_files.contains(c));

        sys::drop_caches()?;
        tb.reset()?;
        let dry = self.dry_run()?;
        // What mapping alone hydrated: the filesystem metadata a cold run
        // may read beside its plan, and the chunks of metadata alone.
        let mut metadata = tb.stats(true)?.hydrated.unwrap_or_default();
        metadata.extend(metadata_only);
        metadata.sort_unstable();
        metadata.dedup();
        let prepare_cold_ms = elapsed_ms(&dry);
        let prepare_warm_ms = elapsed_ms(&self.dry_run()?);
        let mut critical = CriticalSet::from_dry_run(&dry, &node, o.chunk_size)?;
        critical.metadata = metadata;
        // prewarm (walking the list's directories) and the file-taking
        // methods (given every file) must read the same files.
        if critical.files != self.files.len() as u64 {
            bail!(
                "prewarm's dry run of {} found {} files, but the fixture names {}",
                self.list.display(),
                critical.files,
                self.files.len()
            );
        }
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
            // The sweep reads the whole device: the big tree adds nothing to it.
            if o.sweep && !o.ci && sc.shape == Shape::Node {
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
            fixture: self.fixture.clone(),
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
            warm_self_ms: None,
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
        let programs = self.programs(m);
        sys::cache_files(&programs);
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
            // A cold run maps first, and a manifest reads the directories
            // on the way to its files: the metadata they read is expected;
            // the data of a file outside the plan never is.
            outside.retain(|c| critical.metadata.binary_search(c).is_err());
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
        // The transfer bound of a full read (summary::transfer_bound_ms):
        // the plan's chunks read again from the manifest, every chunk
        // hydrated, caches dropped.
        if m == (Method::PrewarmManifest { touch: false }) && rec.error.is_none() {
            sys::drop_caches()?;
            sys::cache_files(&programs);
            let t = Instant::now();
            let again = self.execute(m, &lo.path);
            let ms = t.elapsed().as_secs_f64() * 1e3;
            tb.wait_idle(Duration::from_secs(10))?;
            rec.warm_self_ms = again.is_ok().then_some(ms);
        }
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
        sys::cache_files(&if tool == "fio" {
            self.programs(Method::Fio)
        } else {
            vec![self.opts.prewarm.clone()]
        });
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

/// The fixture in words, from its manifest (`prewarm-fixture`'s JSON).
pub fn fixture_description(shape: Shape, small: bool, manifest: &serde_json::Value) -> String {
    let g = |p: &str| manifest.pointer(p).and_then(serde_json::Value::as_u64);
    format!(
        "`prewarm-fixture{}{}`: {} {} MiB image, {} files ({} MiB); critical list {} entries naming {} files ({:.1} MiB) in {} directories",
        if small { " --small" } else { "" },
        match shape {
            Shape::Node => String::new(),
            s => format!(" --shape {s}"),
        },
        manifest
            .pointer("/spec/fs")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("?"),
        g("/spec/image_size").unwrap_or(0) >> 20,
        g("/summary/all/files").unwrap_or(0),
        g("/summary/all/bytes").unwrap_or(0) >> 20,
        g("/summary/list_entries").unwrap_or(0),
        g("/summary/critical/files").unwrap_or(0),
        g("/summary/critical/bytes").unwrap_or(0) as f64 / 1048576.0,
        g("/summary/critical_dirs").unwrap_or(0),
    )
}

/// `elapsed_ms` of a prewarm JSON report.
fn elapsed_ms(report: &str) -> Option<f64> {
    serde_json::from_str::<serde_json::Value>(report)
        .ok()?
        .get("elapsed_ms")?
        .as_f64()
}
