//! One road from sources to a report: collect, map and plan each priority
//! class in turn, and hand its reads to the engines as soon as it is
//! planned.
//!
//! ```text
//!   Sources ──► Planner (per class: collect → map → plan) ──► engines ──► Report
//!                  │                                           ▲
//!                  └── dry run: no engines, the plan is the report
//! ```
//!
//! * [`hydrate`] is the whole road for paths, lists and device sweeps: the
//!   most urgent class is being read while the next is still being mapped,
//!   so on a cold volume the first data reads start after the first class's
//!   metadata, not everyone's. With [`Config::dry_run`] the same road stops
//!   before the engines and reports the plan.
//! * [`prepare`] is the road up to the plan (what `prewarm plan` stores in a
//!   manifest); [`Prepared::execute`] reads a prepared plan (what a manifest
//!   replay does).
//!
//! Devices are carried by identity: a [`DevicePlan`] holds the open device,
//! its plan and its filesystem UUID; the engine reading it and its part of
//! the report are found by its [`DeviceId`], never by position. A device
//! named for a whole-device sweep and the same device holding listed files
//! share one plan, so no chunk is read twice.

mod assemble;
pub(crate) mod cache;
mod execute;
mod file_reads;
mod planner;
pub(crate) mod ready;
// `unsafe` for one system call (setpriority), justified there.
#[allow(unsafe_code)]
pub(crate) mod cpu_priority;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) use self::planner::{Added, Planner};
pub use self::ready::{ReadyPolicy, ReadyReason};
use crate::engine::{self, BackendChoice, Progress, RateLimit, StopSignal};
use crate::error::{Error, Warning};
use crate::map::device::BlockDevice;
use crate::map::pool::MetadataPool;
use crate::map::readahead::MetadataReadahead;
use crate::map::{DeviceId, ExtentMap, FileReadReason};
use crate::plan::{FileIo, PlanConfig, ReadMode, ReadPlan};
use crate::report::{Fallback, ImageReport, ManifestReport, Report, WarningsOmitted};
use crate::source::{CollectOptions, Sources, TargetFile};

/// Everything a run needs to know besides what to read.
#[derive(Clone)]
pub struct Config {
    /// How reads are planned (chunk, largest read, coalescing gap).
    pub plan: PlanConfig,
    /// Read every planned byte, or one block per chunk.
    pub mode: ReadMode,
    /// Reads kept in flight (also the width of metadata calls).
    pub queue_depth: u32,
    /// io_uring, pread, or io_uring with a pread fallback.
    pub backend: BackendChoice,
    /// How entries become files (mount crossing, image root).
    pub collect: CollectOptions,
    /// Also warm the files' own page cache after hydrating (design fact 1:
    /// device reads do not fill it).
    pub cache: bool,
    /// Plan and report, read nothing.
    pub dry_run: bool,
    /// SIGTERM / deadline: stops issuing reads and planning classes.
    pub stop: StopSignal,
    /// Called once per priority class, in order, when it is fully read.
    pub on_class_done: Option<Arc<dyn Fn(u32) + Send + Sync>>,
    /// When to tell the services waiting on the run that they may start.
    pub ready: Option<ReadyPolicy>,
    /// Limits on the reads' rate: for the whole run, or, with a
    /// [`Config::ready`] policy, for the background part after READY (the
    /// classes the services wait on are never slowed).
    pub rate_limit: RateLimit,
    /// Live counters, for a progress display.
    pub progress: Option<Arc<Progress>>,
    /// Most bytes of filesystem metadata (inode tables or chunks, and
    /// directory blocks) read ahead of a walk, per filesystem walked,
    /// charged by the chunks the reads touch; 0: none (see
    /// `map/readahead.rs`). Only runs that walk directories and read (not
    /// dry runs) use it.
    pub metadata_readahead: u64,
    /// Read XFS's metadata ahead too. Off by default: XFS scatters its
    /// inode chunks over the volume and caches its metadata apart from the
    /// device's cache, and on the big-tree fixture the read-ahead cost 5%
    /// at 8 fetches in flight and gained nothing at 32.
    pub metadata_readahead_xfs: bool,
}

/// [`Config::metadata_readahead`] by default: the used inode tables and the
/// directories of a filesystem of a few hundred thousand files, 128 chunks
/// at most (at 4 ms a fetch and 8 at once, 64 ms of the volume's time).
pub const DEFAULT_METADATA_READAHEAD: u64 = 64 << 20;

impl Default for Config {
    fn default() -> Self {
        Config {
            plan: PlanConfig::default(),
            mode: ReadMode::Full,
            queue_depth: engine::DEFAULT_QUEUE_DEPTH,
            backend: BackendChoice::Auto,
            collect: CollectOptions::default(),
            cache: false,
            dry_run: false,
            stop: StopSignal::default(),
            on_class_done: None,
            ready: None,
            rate_limit: RateLimit::default(),
            progress: None,
            metadata_readahead: DEFAULT_METADATA_READAHEAD,
            metadata_readahead_xfs: false,
        }
    }
}

impl Config {
    /// Check values that do not depend on a device.
    pub fn validate(&self) -> Result<(), Error> {
        self.plan.validate(512)?;
        if self.queue_depth == 0 || self.queue_depth > 4096 {
            return Err(Error::Config {
                field: "queue_depth",
                reason: format!("{} is not in 1..=4096", self.queue_depth),
            });
        }
        Ok(())
    }
}

/// A file and how it will be read.
#[derive(Debug)]
pub(crate) struct MappedFile {
    pub file: TargetFile,
    pub map: ExtentMap,
}

/// One device, carried by identity: the open device, its plan, and what
/// the plan holds.
#[derive(Debug)]
pub(crate) struct DevicePlan {
    pub device: BlockDevice,
    pub plan: ReadPlan,
    /// Files with extents on it.
    pub files: u64,
    /// Also read whole (a `--device` sweep).
    pub swept: bool,
    /// Filesystem UUID, when planned from a manifest (the handover key).
    pub uuid: Option<String>,
}

impl DevicePlan {
    pub fn id(&self) -> DeviceId {
        self.device.id
    }
}

/// Which planned files a [`Prepared`] keeps once they are in the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileRetention {
    /// Every file: a dry run reports each, `--cache` reads each through the
    /// page cache, `plan` writes each into the manifest.
    All,
    /// Only files read through the file (their reads name them): a run
    /// needs nothing else of a file once its extents are in the device's
    /// plan, so a million files cost their counts, not their paths.
    FileReadsOnly,
}

/// What the planned files add up to, counted as each enters the plan
/// (whether it is kept or not): the report's file figures.
#[derive(Debug, Default)]
pub(crate) struct FileTally {
    pub files: u64,
    pub file_bytes: u64,
    pub mapped_bytes: u64,
    pub unwritten_bytes: u64,
    /// Files with bytes read through the file, and those bytes.
    pub file_level_files: u64,
    pub file_level_bytes: u64,
    /// Why files are read through the file, with how many.
    pub fallbacks: BTreeMap<FileReadReason, u64>,
    /// Files mapped from their inodes, not by FIEMAP.
    pub files_from_inodes: u64,
}

impl FileTally {
    /// Count `m`. Sizes and ranges may come from an untrusted manifest:
    /// every total saturates rather than wraps.
    fn add(&mut self, m: &MappedFile) {
        self.files += 1;
        self.files_from_inodes += u64::from(m.map.from_inode);
        self.file_bytes = self.file_bytes.saturating_add(m.file.size);
        let mapped = m.map.device_extents.iter().map(|e| e.length);
        self.mapped_bytes = mapped.fold(self.mapped_bytes, u64::saturating_add);
        self.unwritten_bytes = self.unwritten_bytes.saturating_add(m.map.unwritten_bytes);
        if !m.map.file_ranges.is_empty() {
            self.file_level_files += 1;
            let ranges = m.map.file_ranges.iter().map(|r| r.len);
            self.file_level_bytes = ranges.fold(self.file_level_bytes, u64::saturating_add);
        }
        if let Some(why) = &m.map.fallback {
            *self.fallbacks.entry(why.clone()).or_default() += 1;
        }
    }

    /// Count `files` files of `file_bytes` bytes in all, `mapped_bytes` of
    /// them in device extents and none read through the file: files
    /// counted by the class (a manifest's) rather than one by one.
    pub fn add_counts(&mut self, files: u64, file_bytes: u64, mapped_bytes: u64) {
        self.files += files;
        self.file_bytes = self.file_bytes.saturating_add(file_bytes);
        self.mapped_bytes = self.mapped_bytes.saturating_add(mapped_bytes);
    }
}

/// A plan, nothing read yet: what [`prepare`] and a manifest replay make.
#[derive(Debug)]
pub(crate) struct Prepared {
    /// Set when planned from a manifest.
    pub manifest: Option<ManifestReport>,
    /// The files kept ([`Prepared::retention`]); file-level reads index it.
    pub files: Vec<MappedFile>,
    pub retention: FileRetention,
    /// Every file planned, kept or not.
    pub tally: FileTally,
    /// Classes not complete with their planned reads: a manifest replay
    /// still checks their files while the recorded plan is read, and may
    /// add to them ([`Planner::add_checked`]).
    pub held_classes: Vec<u32>,
    pub devices: Vec<DevicePlan>,
    /// Reads through files; `FileIo::file` indexes `files`.
    pub file_ios: Vec<FileIo>,
    pub warnings: Vec<Warning>,
    /// Warnings counted but not kept (collection keeps the first of each
    /// kind).
    pub warnings_omitted: Vec<WarningsOmitted>,
    pub fallbacks: Vec<Fallback>,
    pub skipped_non_regular: u64,
    /// Entries never collected: a stop came before them.
    pub entries_not_reached: u64,
    /// Files collected but never mapped: a stop came first.
    pub files_not_mapped: u64,
    pub stopped: Option<engine::StopReason>,
    pub prepare_time: Duration,
    /// Container images resolved (`--image`).
    pub images: Vec<ImageReport>,
}

impl Prepared {
    /// A plan with nothing in it yet.
    pub fn empty(warnings: Vec<Warning>) -> Self {
        Prepared {
            manifest: None,
            files: Vec::new(),
            retention: FileRetention::All,
            tally: FileTally::default(),
            held_classes: Vec::new(),
            devices: Vec::new(),
            file_ios: Vec::new(),
            warnings,
            warnings_omitted: Vec::new(),
            fallbacks: Vec::new(),
            skipped_non_regular: 0,
            entries_not_reached: 0,
            files_not_mapped: 0,
            stopped: None,
            prepare_time: Duration::ZERO,
            images: Vec::new(),
        }
    }

    /// Keep `m`, counted already ([`FileTally::add_counts`]), where
    /// [`Prepared::retention`] keeps every file.
    pub fn keep_file(&mut self, m: MappedFile) {
        if self.retention == FileRetention::All {
            self.files.push(m);
        }
    }

    /// Count `m` into the plan, and keep it if it is read through the file
    /// or [`Prepared::retention`] keeps every file.
    pub fn add_file(&mut self, m: MappedFile) {
        self.tally.add(&m);
        if self.retention == FileRetention::All || !m.map.file_ranges.is_empty() {
            self.files.push(m);
        }
    }

    /// The plan of device `id`.
    pub fn device(&self, id: DeviceId) -> Option<&DevicePlan> {
        self.devices.iter().find(|d| d.id() == id)
    }

    /// Whether any read of priority at most `priority` is planned.
    pub fn has_work_up_to(&self, priority: u32) -> bool {
        self.devices
            .iter()
            .flat_map(|d| &d.plan.classes)
            .any(|c| c.priority <= priority && !c.ranges.is_empty())
            || self.file_ios.iter().any(|io| io.priority <= priority)
    }

    /// Issue every planned read and report (or, in a dry run, report the
    /// plan).
    #[cfg(test)]
    pub fn execute(self, cfg: &Config) -> Result<Report, Error> {
        self.execute_with(cfg, |_, _| {})
    }

    /// Read the plan, while `more` adds to it (handing each addition to
    /// its sink); in a dry run `more` runs before the report.
    pub fn execute_with(
        self,
        cfg: &Config,
        more: impl FnOnce(&mut Planner<'_>, &mut dyn FnMut(&Planner<'_>, &Added)),
    ) -> Result<Report, Error> {
        let start = Instant::now();
        let mut planner = Planner::new(self, cfg);
        if cfg.dry_run {
            more(&mut planner, &mut |_, _| {});
            return Ok(planner.into_prepared().dry_run_report(cfg));
        }
        let mut report = execute::run_engines(planner, cfg, |planner, feed| {
            more(planner, &mut |planner, added| feed.push(planner, added))
        })?;
        report.finish(start.elapsed());
        Ok(report)
    }
}

/// Collect, map and plan `sources`, reading nothing: the road up to the
/// plan, one class at a time as [`hydrate`] takes it.
pub(crate) fn prepare(sources: &Sources, cfg: &Config) -> Result<Prepared, Error> {
    cfg.validate()?;
    let start = Instant::now();
    let pool = MetadataPool::new(cfg.queue_depth as usize);
    let mut planner = Planner::new(Prepared::empty(sources.warnings.clone()), cfg);
    planner.open_sweeps(&sources.devices)?;
    planner.plan_classes(sources, &pool, &mut |_, _| {});
    let mut prepared = planner.into_prepared();
    prepared.prepare_time = start.elapsed();
    Ok(prepared)
}

/// Collect, map, plan and read `sources` (see the module doc); with
/// [`Config::dry_run`], only plan, and report the plan with each file's
/// mapping.
///
/// Errors are what makes the whole run impossible: an invalid
/// configuration, a device named for a sweep that cannot be opened, io_uring
/// required but unavailable. One device failing to read is reported for
/// that device while the others finish.
pub fn hydrate(sources: &Sources, cfg: &Config) -> Result<Report, Error> {
    if cfg.dry_run {
        return Ok(prepare(sources, cfg)?.dry_run_report(cfg));
    }
    cfg.validate()?;
    let start = Instant::now();
    let pool = MetadataPool::new(cfg.queue_depth as usize);
    let mut prepared = Prepared::empty(sources.warnings.clone());
    if !cfg.cache {
        prepared.retention = FileRetention::FileReadsOnly;
    }
    let mut planner = Planner::new(prepared, cfg);
    planner.open_sweeps(&sources.devices)?;
    // The metadata a walk is about to fetch, read wide beside the data
    // (map/readahead.rs; the planner starts its scout).
    if cfg.metadata_readahead > 0 {
        planner.readahead = Some(MetadataReadahead::new(
            cfg.metadata_readahead,
            cfg.metadata_readahead_xfs,
            cfg.plan.chunk_size,
            cfg.queue_depth as usize,
            cfg.stop.clone(),
        ));
    }
    let readahead = planner.readahead.clone();
    let mut report = execute::run_engines(planner, cfg, |planner, feed| {
        planner.plan_classes(sources, &pool, &mut |planner, added| {
            feed.push(planner, added)
        });
    })?;
    if let Some(readahead) = readahead {
        report.metadata_readahead = readahead.finish();
    }
    report.finish(start.elapsed());
    Ok(report)
}

#[cfg(test)]
mod tests {
    //! The road end to end on ordinary files. Without root the files'
    //! device cannot be opened and they are read through the files; as root
    //! their device is read: either way every planned byte must be read.

    use std::path::PathBuf;
    use std::sync::Mutex;

    use super::*;
    use crate::report::Outcome;

    /// A file on disk, not left to the flusher: mapped mid-writeback its
    /// blocks are UNWRITTEN extents, which a run rightly does not read.
    fn write_synced(path: &std::path::Path, bytes: &[u8]) {
        let mut f = std::fs::File::create(path).unwrap();
        std::io::Write::write_all(&mut f, bytes).unwrap();
        f.sync_all().unwrap();
    }

    fn tree(dir: &std::path::Path) -> Vec<(PathBuf, u32)> {
        let mut out = Vec::new();
        for (i, size) in [10_000usize, 300_000, 1, 2 << 20].iter().enumerate() {
            let sub = dir.join(format!("d{}", i % 2));
            std::fs::create_dir_all(&sub).unwrap();
            let p = sub.join(format!("f{i}"));
            write_synced(&p, &vec![i as u8; *size]);
            out.push((p, if i % 2 == 0 { 10 } else { 20 }));
        }
        out
    }

    fn sources_of(files: &[(PathBuf, u32)]) -> Sources {
        let mut s = Sources::default();
        for (p, prio) in files {
            s.add_path(p, *prio);
        }
        s
    }

    #[test]
    fn hydrate_reads_every_planned_byte_and_a_dry_run_plans_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let files = tree(dir.path());
        let sources = sources_of(&files);
        let real = hydrate(&sources, &Config::default()).unwrap();
        assert_eq!(real.outcome, Outcome::Success, "{}", real.summary());
        assert_eq!(real.files, 4);
        assert_eq!(real.file_bytes, 10_000 + 300_000 + 1 + (2 << 20));
        assert_eq!(real.errors, 0);
        assert_eq!(real.ios_done, real.ios_planned);
        // Device reads read whole chunks; reads through files stop at EOF.
        assert!(real.bytes_read >= real.file_bytes, "{}", real.summary());
        let dry = hydrate(
            &sources,
            &Config {
                dry_run: true,
                ..Config::default()
            },
        )
        .unwrap();
        assert!(dry.dry_run);
        assert_eq!(dry.bytes_read, 0);
        assert_eq!(
            (dry.chunks, dry.planned_bytes, dry.ios_planned),
            (real.chunks, real.planned_bytes, real.ios_planned)
        );
        assert_eq!(dry.file_maps.len(), 4);
    }

    #[test]
    fn a_stop_before_the_first_class_reads_nothing_and_counts_what_was_not_reached() {
        let dir = tempfile::tempdir().unwrap();
        let files = tree(dir.path());
        let cfg = Config::default();
        cfg.stop.cancel();
        let r = hydrate(&sources_of(&files), &cfg).unwrap();
        assert_eq!(r.entries_not_reached, 4);
        assert_eq!(r.bytes_read, 0);
        assert_eq!(r.stopped, Some(crate::StopReason::Cancelled));
        assert_eq!(r.outcome, Outcome::Partial);
    }

    #[test]
    fn ready_is_sent_once_when_the_ready_class_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let files = tree(dir.path());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let cfg = Config {
            ready: Some(
                ReadyPolicy::new(Some(10), Duration::from_secs(600), move |r| {
                    log.lock().unwrap().push(r.clone())
                })
                .keeping_cpu_priority(),
            ),
            ..Config::default()
        };
        let r = hydrate(&sources_of(&files), &cfg).unwrap();
        assert_eq!(
            *seen.lock().unwrap(),
            [ReadyReason::ClassDone { priority: 10 }]
        );
        assert_eq!(
            r.ready.map(|r| r.reason),
            Some(ReadyReason::ClassDone { priority: 10 })
        );
        // With nothing to read, READY still comes, when the run ends.
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let cfg = Config {
            ready: Some(
                ReadyPolicy::new(None, Duration::from_secs(600), move |r| {
                    log.lock().unwrap().push(r.clone())
                })
                .keeping_cpu_priority(),
            ),
            ..Config::default()
        };
        hydrate(&Sources::default(), &cfg).unwrap();
        assert_eq!(*seen.lock().unwrap(), [ReadyReason::Finished]);
    }

    #[test]
    fn the_rate_limit_holds_back_only_what_comes_after_ready() {
        let dir = tempfile::tempdir().unwrap();
        let urgent = dir.path().join("urgent");
        let background = dir.path().join("background");
        write_synced(&urgent, &vec![1u8; 4 << 20]);
        write_synced(&background, &vec![2u8; 4 << 20]);
        let mut sources = Sources::default();
        sources.add_path(&urgent, 10);
        sources.add_path(&background, 50);
        let progress = Arc::new(Progress::default());
        let cfg = Config {
            ready: Some(
                ReadyPolicy::new(Some(10), Duration::from_secs(600), |_| {}).keeping_cpu_priority(),
            ),
            rate_limit: RateLimit {
                bytes_per_sec: Some(8 << 20),
                reads_per_sec: None,
            },
            progress: Some(progress.clone()),
            ..Config::default()
        };
        let r = hydrate(&sources, &cfg).unwrap();
        assert_eq!(r.outcome, Outcome::Success, "{}", r.summary());
        let at = |p: u32| {
            r.classes
                .iter()
                .find(|c| c.priority == p)
                .and_then(|c| c.hydrated_ms)
                .unwrap()
        };
        // The background's four 1 MiB reads at 8 MiB/s: the first goes at
        // once, each next one 125 ms later less the 50 ms burst, so the
        // last starts at 325 ms at the earliest (a lower bound a slow
        // machine cannot break); the urgent class is not held back, so it
        // is done well before.
        assert!(at(50) >= 320.0, "background in {} ms", at(50));
        assert!(at(10) < at(50) / 2.0, "{} vs {} ms", at(10), at(50));
        // The live counters saw every byte planned and read.
        let seen = progress.snapshot();
        assert_eq!(seen.read_bytes, r.bytes_read);
        assert_eq!(seen.planned_bytes, r.planned_bytes);
        assert_eq!(seen.reads_done, r.ios_done);
    }
}
