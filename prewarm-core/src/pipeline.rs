//! The pipeline: sources → extent mapping → plan → engine → report, as two
//! calls: [`prepare`] (everything up to the plan, no data read) and
//! [`Prepared::execute`] (the reads).
//!
//! Files are mapped in parallel (FIEMAP on a lazy volume reads the extent
//! tree, itself lazily loaded). Files on several block devices give one plan
//! per device, and the devices are read concurrently, each by its own engine;
//! reads that must go through files (no FIEMAP, odd extents, no usable
//! device) run beside them.

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU16;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rayon::prelude::*;

use crate::blocking::MetadataPool;
use crate::cache::{self, CacheStats};
use crate::device::{self, BlockDevice, DeviceError, DeviceId};
use crate::engine::{
    self, BackendChoice, ClassProgress, EngineConfig, EngineStats, OpQueue, ReadOp, ReadTarget,
    StopSignal,
};
use crate::error::{Error, Origin, Warning, WarningKind};
use crate::extent::{self, ExtentMap};
use crate::plan::{self, FileIo, PlanConfig, PlanStats, PrioritizedExtent, ReadMode, ReadPlan};
use crate::report::{
    DeviceReport, FailureReport, FileLevelReport, FileMapReport, ManifestReport, Outcome,
    ReadStats, Report, REPORT_VERSION,
};
use crate::source::{self, CollectOptions, SourceEntry, TargetFile};

/// Alignment of file-level reads: safe for O_DIRECT on 4 KiB filesystems.
const FILE_ALIGN: u64 = 4096;
/// Files opened at once for file-level reads.
const FILE_BATCH: usize = 256;

/// Everything a run needs to know.
#[derive(Clone)]
pub struct Config {
    pub plan: PlanConfig,
    pub mode: ReadMode,
    pub queue_depth: u32,
    pub backend: BackendChoice,
    pub collect: CollectOptions,
    /// Also warm the files' page cache after hydrating.
    pub cache: bool,
    pub stop: StopSignal,
    /// Called once per priority class, in order, when it is fully read.
    pub on_class_done: Option<Arc<dyn Fn(u32) + Send + Sync>>,
    /// I/O priority of reads issued from now on; may be lowered mid-run.
    pub ioprio: Arc<AtomicU16>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            plan: PlanConfig::default(),
            mode: ReadMode::Full,
            queue_depth: engine::DEFAULT_QUEUE_DEPTH,
            backend: BackendChoice::Auto,
            collect: CollectOptions::default(),
            cache: false,
            stop: StopSignal::default(),
            on_class_done: None,
            ioprio: Arc::new(AtomicU16::new(0)),
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
pub struct MappedFile {
    pub file: TargetFile,
    pub map: ExtentMap,
}

/// One device's plan.
#[derive(Debug)]
pub struct DevicePlan {
    pub device: BlockDevice,
    pub plan: ReadPlan,
    pub files: u64,
    /// Filesystem UUID, when planned from a manifest (handover key).
    pub uuid: Option<String>,
}

/// The result of [`prepare`]: the plan, nothing read yet.
#[derive(Debug)]
pub struct Prepared {
    /// Set when planned from a manifest.
    pub manifest: Option<ManifestReport>,
    pub files: Vec<MappedFile>,
    pub devices: Vec<DevicePlan>,
    pub file_ios: Vec<FileIo>,
    pub warnings: Vec<Warning>,
    pub fallbacks: Vec<String>,
    pub skipped_non_regular: u64,
    pub prepare_time: Duration,
}

/// Collect, map and plan. `warnings` carries what was already wrong with the
/// input (bad list lines).
pub fn prepare(
    entries: &[SourceEntry],
    warnings: Vec<Warning>,
    cfg: &Config,
) -> Result<Prepared, Error> {
    cfg.validate()?;
    let start = Instant::now();
    // Collect and map as many files at once as reads will be in flight:
    // cold metadata waits for fetches just as data does.
    let pool = MetadataPool::new(cfg.queue_depth as usize);
    let mut planner = Planner::new(Prepared::empty(warnings), cfg);
    let files = planner.collect(entries, &pool);
    pool.install(|| planner.add_batch(files));
    let mut prepared = planner.finish();
    prepared.prepare_time = start.elapsed();
    Ok(prepared)
}

/// Collect, map, plan and read, overlapped: the entries are collected and
/// mapped one priority class at a time, and each class is read as soon as
/// it is planned, while the next is being collected and mapped. The
/// engines' queues never drain between classes, and on a cold volume the
/// first data reads start after the most urgent class's metadata, not
/// everyone's. `sweeps` are whole block devices to read too (at
/// `sweep_priority`). The plan is the one [`prepare`] makes.
pub fn hydrate(
    entries: &[SourceEntry],
    warnings: Vec<Warning>,
    sweeps: &[PathBuf],
    sweep_priority: u32,
    cfg: &Config,
) -> Result<Report, Error> {
    cfg.validate()?;
    let start = Instant::now();
    let mut seed = Prepared::empty(warnings);
    for node in sweeps {
        seed.add_whole_device(node, sweep_priority, cfg)?;
    }
    let pool = MetadataPool::new(cfg.queue_depth as usize);
    let mut collector = source::Collector::new(&cfg.collect);
    let mut classes: BTreeMap<u32, Vec<SourceEntry>> = BTreeMap::new();
    for e in entries {
        classes.entry(e.priority).or_default().push(e.clone());
    }
    let mut stopped = None;
    let mut not_reached = 0u64;
    let mut report = run_engines(Planner::new(seed, cfg), cfg, |planner, feed| {
        for (priority, entries) in classes {
            if let Some(reason) = stopped.or_else(|| cfg.stop.check()) {
                if stopped.is_none() {
                    tracing::warn!(?reason, "stopped before mapping priority class {priority}");
                }
                stopped = Some(reason);
                not_reached += entries.len() as u64;
                continue;
            }
            let files = pool.install(|| collector.add(&entries).to_vec());
            planner.prepared.warnings.extend(collector.take_warnings());
            let added = pool.install(|| planner.add_batch(files));
            feed.push(planner, &added);
        }
        planner.prepared.skipped_non_regular += collector.skipped_non_regular();
        planner.note_file_fallbacks();
    })?;
    report.stopped = report.stopped.or(stopped);
    report.entries_not_reached = not_reached;
    report.finish(start.elapsed());
    Ok(report)
}

/// What one [`Planner::add_batch`] added: per device (index into
/// `Prepared::devices`) the classes added to its plan, the devices opened
/// for it, and the file-level reads.
struct Added {
    classes: Vec<(usize, std::ops::Range<usize>)>,
    new_devices: std::ops::Range<usize>,
    file_ios: std::ops::Range<usize>,
}

impl Added {
    /// The paths of the files the added file-level reads name.
    fn file_names(&self, prepared: &Prepared) -> FileNames {
        prepared.file_ios[self.file_ios.clone()]
            .iter()
            .map(|io| {
                let f = &prepared.files[io.file].file;
                (io.file, (f.path.clone(), f.origin.clone()))
            })
            .collect()
    }
}

/// Builds a [`Prepared`] from batches of files: maps them, opens their
/// devices the first time each is met, and extends the devices' plans.
struct Planner<'c> {
    cfg: &'c Config,
    prepared: Prepared,
    /// Device → its index in `prepared.devices`, or why it cannot be used.
    devices: BTreeMap<DeviceId, Result<usize, String>>,
}

impl<'c> Planner<'c> {
    fn new(prepared: Prepared, cfg: &'c Config) -> Self {
        Planner {
            cfg,
            prepared,
            devices: BTreeMap::new(),
        }
    }

    /// The regular files the entries name (on `pool`); warnings are kept.
    fn collect(&mut self, entries: &[SourceEntry], pool: &MetadataPool) -> Vec<TargetFile> {
        let set = pool.install(|| source::collect(entries, &self.cfg.collect));
        self.prepared.warnings.extend(set.warnings);
        self.prepared.skipped_non_regular += set.skipped_non_regular;
        set.files
    }

    /// Map `files` (on the current rayon pool) and plan them. Every class
    /// of the batch must be less urgent than those of earlier batches.
    fn add_batch(&mut self, files: Vec<TargetFile>) -> Added {
        let cfg = self.cfg;
        // A file that cannot be opened is named and dropped.
        let mapped: Vec<Result<MappedFile, Warning>> = files
            .into_par_iter()
            .map(|file| match extent::open_file(&file.path, false) {
                Ok((f, _)) => Ok(MappedFile {
                    map: extent::map_file(&f, file.size),
                    file,
                }),
                Err(e) => Err(Warning::new(
                    WarningKind::Unreadable,
                    Some(&file.path),
                    Some(&file.origin),
                    format!("opening: {e}"),
                )),
            })
            .collect();
        let first_file = self.prepared.files.len();
        let first_device = self.prepared.devices.len();
        let mut extents: BTreeMap<usize, Vec<PrioritizedExtent>> = BTreeMap::new();
        for m in mapped {
            let mut m = match m {
                Ok(m) => m,
                Err(w) => {
                    self.prepared.warnings.push(w);
                    continue;
                }
            };
            if !m.map.device_extents.is_empty() {
                match self.device_for(DeviceId::from_dev(m.file.dev)) {
                    Ok(d) => {
                        self.prepared.devices[d].files += 1;
                        extents
                            .entry(d)
                            .or_default()
                            .extend(m.map.device_extents.iter().map(|e| PrioritizedExtent {
                                priority: m.file.priority,
                                offset: e.physical,
                                len: e.length,
                            }));
                    }
                    // Files on a device that cannot be used are read
                    // through the file instead.
                    Err(why) => m.map.demote_to_file_reads(why),
                }
            }
            self.prepared.files.push(m);
        }
        let classes = extents
            .into_iter()
            .map(|(d, ext)| (d, self.prepared.devices[d].plan.extend(&ext)))
            .collect();
        let first_io = self.prepared.file_ios.len();
        let new_ios = plan_file_ios(
            &self.prepared.files[first_file..],
            first_file,
            cfg.plan.max_io,
        );
        self.prepared.file_ios.extend(new_ios);
        Added {
            classes,
            new_devices: first_device..self.prepared.devices.len(),
            file_ios: first_io..self.prepared.file_ios.len(),
        }
    }

    /// The index of device `id` in the plan, opening it when first met; or
    /// why its files must be read through the files.
    fn device_for(&mut self, id: DeviceId) -> Result<usize, String> {
        if let Some(known) = self.devices.get(&id) {
            return known.clone();
        }
        let cfg = self.cfg;
        let opened = device::open(id).and_then(|d| {
            match cfg.plan.validate(u64::from(d.logical_block_size)) {
                Ok(()) => Ok(d),
                Err(e) => Err(DeviceError::Unusable {
                    node: d.node.clone(),
                    reason: e.to_string(),
                }),
            }
        });
        let known = match opened {
            Ok(dev) => {
                if !dev.direct {
                    self.prepared.fallbacks.push(format!(
                        "{}: O_DIRECT refused, reading buffered",
                        dev.node.display()
                    ));
                }
                let plan = ReadPlan::new(dev.size, &cfg.plan);
                self.prepared.devices.push(DevicePlan {
                    device: dev,
                    plan,
                    files: 0,
                    uuid: None,
                });
                Ok(self.prepared.devices.len() - 1)
            }
            Err(e) => {
                let why = e.to_string();
                if !matches!(e, DeviceError::Virtual(_)) {
                    tracing::warn!("{why}: reading its files through the files");
                }
                Err(why)
            }
        };
        self.devices.insert(id, known.clone());
        known
    }

    /// The plan, with one line per reason some files are read through the
    /// files.
    fn finish(mut self) -> Prepared {
        self.note_file_fallbacks();
        self.prepared
    }

    /// Add one fallback line per reason some files are read through the
    /// files; once, after the last batch.
    fn note_file_fallbacks(&mut self) {
        let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
        for f in &self.prepared.files {
            if let Some(why) = &f.map.fallback {
                *reasons.entry(why.as_str()).or_default() += 1;
            }
        }
        let lines: Vec<String> = reasons
            .into_iter()
            .map(|(why, n)| format!("{n} file(s) read through the file: {why}"))
            .collect();
        self.prepared.fallbacks.extend(lines);
    }
}

/// Feeds the running engines: the reads of each batch as it is planned.
struct EngineFeed<'s, 'scope, 'env> {
    scope: &'scope std::thread::Scope<'scope, 'env>,
    ecfg: &'env EngineConfig,
    mode: ReadMode,
    progress: Option<Arc<ClassProgress>>,
    /// Per device of the plan, in order: its queue, and the engine reading
    /// it (none when its descriptor could not be duplicated).
    engines: &'s mut Vec<DeviceEngine<'scope>>,
    /// To the thread making the file-level reads, batch by batch.
    file_reads: std::sync::mpsc::Sender<(FileNames, Vec<FileIo>)>,
}

struct DeviceEngine<'scope> {
    queue: Arc<OpQueue>,
    handle: Option<std::thread::ScopedJoinHandle<'scope, Result<EngineStats, Error>>>,
}

impl<'scope> EngineFeed<'_, 'scope, '_> {
    /// Start engines for the devices `added` opened, then hand every
    /// engine its new reads. Progress learns of a class's reads (device and
    /// file-level) before any of them is issued.
    fn push(&mut self, planner: &Planner<'_>, added: &Added) {
        let devices = &planner.prepared.devices;
        for d in &devices[added.new_devices.clone()] {
            self.spawn(d);
        }
        let ops: Vec<(usize, Vec<ReadOp>)> = added
            .classes
            .iter()
            .map(|(d, which)| {
                let dev = &devices[*d];
                let ops = dev
                    .plan
                    .class_ios(which.clone(), self.mode, dev.device.logical_block_size)
                    .into_iter()
                    .map(|io| ReadOp {
                        target: 0,
                        offset: io.offset,
                        len: io.len,
                        priority: io.priority,
                    })
                    .collect();
                (*d, ops)
            })
            .collect();
        if let Some(p) = &self.progress {
            for op in ops.iter().flat_map(|(_, ops)| ops) {
                p.add(op.priority, 1);
            }
            for io in &planner.prepared.file_ios[added.file_ios.clone()] {
                p.add(io.priority, 1);
            }
        }
        for (d, ops) in ops {
            self.engines[d].queue.push(ops);
        }
        if !added.file_ios.is_empty() {
            let ios = planner.prepared.file_ios[added.file_ios.clone()].to_vec();
            // The receiver lives until every batch is sent.
            let _ = self
                .file_reads
                .send((added.file_names(&planner.prepared), ios));
        }
    }

    /// Start the engine of `d`, on a duplicate of its descriptor (the plan
    /// keeps growing while the engine runs).
    fn spawn(&mut self, d: &DevicePlan) {
        let max_len = match self.mode {
            ReadMode::Full => u32::try_from(d.plan.config.max_io).unwrap_or(u32::MAX),
            ReadMode::Touch => d.device.logical_block_size,
        };
        let queue = Arc::new(OpQueue::new(max_len));
        let direct = d.device.direct;
        let align = d.device.logical_block_size;
        let handle = match d.device.file.try_clone() {
            Ok(file) => {
                let (ecfg, q) = (self.ecfg, queue.clone());
                Some(self.scope.spawn(move || {
                    let target = ReadTarget {
                        fd: file.as_fd(),
                        direct,
                        align,
                    };
                    engine::run_queue(&[target], &q, ecfg)
                }))
            }
            Err(e) => {
                tracing::error!(
                    "{}: duplicating its descriptor: {e}",
                    d.device.node.display()
                );
                None
            }
        };
        self.engines.push(DeviceEngine { queue, handle });
    }
}

/// Run the engines for `planner`'s devices and its file-level reads (a
/// thread taking them batch by batch, beside the device engines), let
/// `feed_more` plan and push further batches while they run, and report.
/// The report is not finished (`Report::finish`) yet.
fn run_engines(
    mut planner: Planner<'_>,
    cfg: &Config,
    feed_more: impl FnOnce(&mut Planner<'_>, &mut EngineFeed<'_, '_, '_>),
) -> Result<Report, Error> {
    let progress = cfg
        .on_class_done
        .clone()
        .map(|cb| Arc::new(ClassProgress::new(move |prio| cb(prio))));
    let ecfg = EngineConfig {
        queue_depth: cfg.queue_depth,
        backend: cfg.backend,
        stop: cfg.stop.clone(),
        progress: progress.clone(),
        ioprio: cfg.ioprio.clone(),
    };
    let (queues, device_results, file_result) = std::thread::scope(|scope| {
        let (file_reads, batches) = std::sync::mpsc::channel::<(FileNames, Vec<FileIo>)>();
        let ecfg = &ecfg;
        let file_thread = scope.spawn(move || -> Result<FileReads, Error> {
            let mut all = FileReads::default();
            for (names, ios) in batches {
                all.merge(read_files(&names, &ios, ecfg)?);
            }
            Ok(all)
        });
        let mut engines: Vec<DeviceEngine<'_>> = Vec::new();
        let mut feed = EngineFeed {
            scope,
            ecfg,
            mode: cfg.mode,
            progress: progress.clone(),
            engines: &mut engines,
            file_reads,
        };
        // What is planned already (a manifest, a prepared plan, sweeps).
        let planned = Added {
            classes: planner
                .prepared
                .devices
                .iter()
                .enumerate()
                .map(|(i, d)| (i, 0..d.plan.classes.len()))
                .collect(),
            new_devices: 0..planner.prepared.devices.len(),
            file_ios: 0..planner.prepared.file_ios.len(),
        };
        feed.push(&planner, &planned);
        feed_more(&mut planner, &mut feed);
        // Closing: the engines drain their queues, the file thread its
        // channel, and all of them end.
        drop(feed);
        for e in &engines {
            e.queue.close();
        }
        if let Some(p) = &progress {
            // Classes with nothing left to read are done before it.
            p.announce_ready();
        }
        let file_result = file_thread.join().unwrap_or_else(|_| {
            Err(Error::NothingToRead(
                "file-level read thread panicked".into(),
            ))
        });
        let device_results: Vec<Result<EngineStats, Error>> = engines
            .iter_mut()
            .map(|e| match e.handle.take() {
                Some(h) => h
                    .join()
                    .unwrap_or_else(|_| Err(Error::NothingToRead("engine thread panicked".into()))),
                None => Err(Error::NothingToRead("device descriptor unavailable".into())),
            })
            .collect();
        let queues: Vec<Arc<OpQueue>> = engines.into_iter().map(|e| e.queue).collect();
        (queues, device_results, file_result)
    });
    // `prepared` is complete: planned before (`execute`), or noted by the
    // feed once its last batch was in (`hydrate`).
    planner
        .prepared
        .report_run(cfg, &queues, device_results, file_result)
}

impl Prepared {
    /// Whether any read of priority at most `priority` is planned.
    pub fn has_work_up_to(&self, priority: u32) -> bool {
        self.devices
            .iter()
            .flat_map(|d| &d.plan.classes)
            .any(|c| c.priority <= priority && !c.ranges.is_empty())
            || self.file_ios.iter().any(|io| io.priority <= priority)
    }

    /// Add a plan that hydrates the whole block device `node` (a full-volume
    /// sweep, as `fio --rw=read` would do, but through the same engine).
    pub fn add_whole_device(
        &mut self,
        node: &Path,
        priority: u32,
        cfg: &Config,
    ) -> Result<(), Error> {
        let dev = device::open_node(node).map_err(|e| Error::Device(e.to_string()))?;
        cfg.plan.validate(u64::from(dev.logical_block_size))?;
        let whole = PrioritizedExtent {
            priority,
            offset: 0,
            len: dev.size,
        };
        let plan = ReadPlan::build(&[whole], dev.size, &cfg.plan);
        self.devices.push(DevicePlan {
            device: dev,
            plan,
            files: 0,
            uuid: None,
        });
        Ok(())
    }

    /// The report of the plan alone (a dry run), with per-file mappings.
    pub fn dry_run_report(&self, cfg: &Config) -> Report {
        let mut report = self.base_report(cfg, true);
        report.file_maps = self
            .files
            .iter()
            .map(|f| FileMapReport {
                path: f.file.path.to_string_lossy().into_owned(),
                device: DeviceId::from_dev(f.file.dev),
                size: f.file.size,
                priority: f.file.priority,
                map: f.map.clone(),
            })
            .collect();
        report.finish(self.prepare_time);
        report
    }

    /// Issue every planned read and report.
    pub fn execute(self, cfg: &Config) -> Result<Report, Error> {
        let start = Instant::now();
        let mut report = run_engines(Planner::new(self, cfg), cfg, |_, _| {})?;
        report.finish(start.elapsed());
        Ok(report)
    }

    /// A plan with nothing in it yet.
    fn empty(warnings: Vec<Warning>) -> Self {
        Prepared {
            manifest: None,
            files: Vec::new(),
            devices: Vec::new(),
            file_ios: Vec::new(),
            warnings,
            fallbacks: Vec::new(),
            skipped_non_regular: 0,
            prepare_time: Duration::ZERO,
        }
    }

    /// The report of a run: the plan's sizes plus what the engines (one per
    /// device, reading `queues`) and the file-level reads did; the cache
    /// warmed when asked.
    fn report_run(
        self,
        cfg: &Config,
        queues: &[Arc<OpQueue>],
        device_results: Vec<Result<EngineStats, Error>>,
        file_result: Result<FileReads, Error>,
    ) -> Result<Report, Error> {
        let mut report = self.base_report(cfg, false);
        let mut fallbacks = Vec::new();
        for (i, result) in device_results.into_iter().enumerate() {
            let stats = result?;
            let node = report.devices[i].node.clone();
            note_engine(&stats, |_| node.clone(), &mut fallbacks, &mut report);
            report.devices[i].read = read_stats(&stats);
            let chunk = self.devices[i].plan.config.chunk_size;
            report.devices[i].chunks_read = chunks_read(&queues[i].ops(), &stats.completed, chunk);
        }
        let FileReads {
            stats: fstats,
            direct_files,
            warnings: open_warnings,
        } = file_result?;
        if let Some(stats) = &fstats {
            let files = &self.files;
            note_engine(
                stats,
                |i| files[i].file.path.display().to_string(),
                &mut fallbacks,
                &mut report,
            );
            report.file_level.read = read_stats(stats);
        }
        report.file_level.direct_files = direct_files;
        report.warnings.extend(open_warnings);
        fallbacks.sort();
        fallbacks.dedup();
        report.fallbacks.extend(fallbacks);
        if cfg.cache && cfg.stop.check().is_none() {
            report.cache = Some(self.warm_cache());
        }
        Ok(report)
    }

    fn warm_cache(&self) -> CacheStats {
        cache::warm(
            self.files
                .iter()
                .map(|f| (f.file.path.as_path(), f.file.size)),
        )
    }

    fn base_report(&self, cfg: &Config, dry_run: bool) -> Report {
        let mut totals = PlanStats::default();
        let mut devices = Vec::new();
        let mut ios_planned = 0u64;
        for d in &self.devices {
            let stats = d.plan.stats();
            totals += stats;
            let ios = d.plan.ios(cfg.mode, d.device.logical_block_size).len() as u64;
            ios_planned += ios;
            devices.push(DeviceReport {
                node: d.device.node.display().to_string(),
                id: d.device.id,
                uuid: d.uuid.clone(),
                chunks_read: Vec::new(),
                fs_type: d.device.fs_type.clone(),
                size: d.device.size,
                logical_block_size: d.device.logical_block_size,
                direct: d.device.direct,
                files: d.files,
                plan: stats,
                read: ReadStats {
                    ios_planned: ios,
                    ..Default::default()
                },
            });
        }
        let file_level_files = self
            .files
            .iter()
            .filter(|f| !f.map.file_ranges.is_empty())
            .count() as u64;
        let file_level_planned: u64 = self.file_ios.iter().map(|io| u64::from(io.len)).sum();
        ios_planned += self.file_ios.len() as u64;
        Report {
            version: REPORT_VERSION,
            dry_run,
            mode: cfg.mode,
            queue_depth: cfg.queue_depth,
            plan_config: cfg.plan,
            files: self.files.len() as u64,
            skipped_non_regular: self.skipped_non_regular,
            file_bytes: self.files.iter().map(|f| f.file.size).sum(),
            mapped_bytes: self.files.iter().map(|f| f.map.device_bytes()).sum(),
            file_level_bytes: self.files.iter().map(|f| f.map.file_bytes()).sum(),
            unwritten_bytes: self.files.iter().map(|f| f.map.unwritten_bytes).sum(),
            extents: totals.extents,
            ranges: totals.ranges,
            chunks: totals.chunks,
            planned_bytes: totals.bytes + file_level_planned,
            ios_planned,
            ios_done: 0,
            bytes_read: 0,
            errors: 0,
            not_issued: 0,
            entries_not_reached: 0,
            elapsed_ms: 0.0,
            mib_per_s: 0.0,
            iops: 0.0,
            stopped: None,
            fallbacks: self.fallbacks.clone(),
            warnings: self.warnings.clone(),
            failures: Vec::new(),
            devices,
            file_level: FileLevelReport {
                files: file_level_files,
                bytes: self.files.iter().map(|f| f.map.file_bytes()).sum(),
                direct_files: 0,
                read: ReadStats {
                    ios_planned: self.file_ios.len() as u64,
                    ..Default::default()
                },
            },
            cache: None,
            manifest: self.manifest.clone(),
            file_maps: Vec::new(),
            outcome: Outcome::Success,
        }
    }
}

/// The reads to make through files, for every file with file ranges.
/// `files[i]` is file `first + i` of the plan.
pub(crate) fn plan_file_ios(files: &[MappedFile], first: usize, max_io: u64) -> Vec<FileIo> {
    plan::file_ios(
        files
            .iter()
            .enumerate()
            .filter(|(_, f)| !f.map.file_ranges.is_empty())
            .map(|(i, f)| (first + i, f.file.priority, &f.map.file_ranges[..])),
        FILE_ALIGN,
        max_io,
    )
}

/// Fold one engine's stats into the report's fallbacks, failures and stop;
/// `name` turns a failure's target index into what the report calls it.
fn note_engine(
    stats: &EngineStats,
    name: impl Fn(usize) -> String,
    fallbacks: &mut Vec<String>,
    report: &mut Report,
) {
    if let Some(why) = &stats.fallback {
        fallbacks.push(why.clone());
    }
    report
        .failures
        .extend(stats.failures.iter().map(|f| FailureReport {
            target: name(f.target),
            offset: f.offset,
            len: f.len,
            error: f.error.clone(),
        }));
    report.stopped = report.stopped.or(stats.stopped);
}

/// Merged chunk spans touched by the completed ops. A completed read of any
/// part of a chunk counts the chunk: the plan only reads whole chunks, or one
/// block of a chunk in touch mode, where touching is hydrating.
fn chunks_read(ops: &[ReadOp], completed: &[usize], chunk: u64) -> Vec<(u64, u64)> {
    let chunk = chunk.max(1);
    let mut spans: Vec<(u64, u64)> = completed
        .iter()
        .filter_map(|&i| ops.get(i))
        .map(|op| {
            (
                op.offset / chunk,
                (op.offset + u64::from(op.len)).div_ceil(chunk),
            )
        })
        .collect();
    spans.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(spans.len());
    for (s, e) in spans {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

fn read_stats(s: &EngineStats) -> ReadStats {
    ReadStats {
        backend: Some(s.backend),
        ios_planned: s.ios_planned,
        ios_done: s.ios_done,
        bytes_read: s.bytes_read,
        errors: s.errors,
        short_reads: s.short_reads,
        eof: s.eof,
        not_issued: s.not_issued,
        elapsed_ms: s.elapsed.as_secs_f64() * 1e3,
    }
}

/// The path and origin of the files a batch of file-level reads names, by
/// their index in the plan.
type FileNames = BTreeMap<usize, (PathBuf, Origin)>;

/// What the file-level reads did: their engines' stats (merged), how many
/// files took O_DIRECT, and the files that could not be opened.
#[derive(Default)]
struct FileReads {
    stats: Option<EngineStats>,
    direct_files: u64,
    warnings: Vec<Warning>,
}

impl FileReads {
    fn merge(&mut self, o: FileReads) {
        match (&mut self.stats, o.stats) {
            (Some(a), Some(b)) => a.merge(b),
            (None, b) => self.stats = b,
            (Some(_), None) => {}
        }
        self.direct_files += o.direct_files;
        self.warnings.extend(o.warnings);
    }
}

/// Read the file-level I/Os in batches of at most [`FILE_BATCH`] open files.
/// Failure targets are indexes into the plan's files.
fn read_files(files: &FileNames, ios: &[FileIo], ecfg: &EngineConfig) -> Result<FileReads, Error> {
    if ios.is_empty() {
        return Ok(FileReads::default());
    }
    let mut total: Option<EngineStats> = None;
    let mut direct_files = 0u64;
    let mut warnings = Vec::new();
    let mut rest = ios;
    while !rest.is_empty() {
        // Take ios until FILE_BATCH distinct files (ios of a file are
        // contiguous: one priority per file, sorted by file within it).
        let mut batch_files: Vec<usize> = Vec::new();
        let mut n = 0;
        while n < rest.len() {
            let f = rest[n].file;
            if batch_files.last() != Some(&f) {
                if batch_files.len() == FILE_BATCH {
                    break;
                }
                batch_files.push(f);
            }
            n += 1;
        }
        let (batch, tail) = rest.split_at(n);
        rest = tail;

        let mut opened = Vec::new();
        let mut local: Vec<Option<usize>> = Vec::new();
        for &fi in &batch_files {
            let Some((path, origin)) = files.get(&fi) else {
                local.push(None);
                continue;
            };
            match extent::open_file(path, true) {
                Ok((file, direct)) => {
                    direct_files += u64::from(direct);
                    local.push(Some(opened.len()));
                    opened.push((fi, file, direct));
                }
                Err(e) => {
                    warnings.push(Warning::new(
                        WarningKind::Unreadable,
                        Some(path),
                        Some(origin),
                        format!("opening for reading: {e}"),
                    ));
                    local.push(None);
                }
            }
        }
        let targets: Vec<ReadTarget<'_>> = opened
            .iter()
            .map(|(_, f, direct)| ReadTarget {
                fd: f.as_fd(),
                direct: *direct,
                align: FILE_ALIGN as u32,
            })
            .collect();
        let mut slot = 0;
        let mut last = usize::MAX;
        let ops: Vec<ReadOp> = batch
            .iter()
            .filter_map(|io| {
                if io.file != last {
                    last = io.file;
                    slot = batch_files.iter().position(|&f| f == io.file).unwrap_or(0);
                }
                local[slot].map(|t| ReadOp {
                    target: t,
                    offset: io.offset,
                    len: io.len,
                    priority: io.priority,
                })
            })
            .collect();
        let mut stats = engine::run(&targets, &ops, ecfg)?;
        for f in &mut stats.failures {
            f.target = opened[f.target].0;
        }
        match &mut total {
            None => total = Some(stats),
            Some(t) => t.merge(stats),
        }
        if ecfg.stop.check().is_some() {
            if let Some(t) = &mut total {
                t.not_issued += rest.len() as u64;
            }
            break;
        }
    }
    Ok(FileReads {
        stats: total,
        direct_files,
        warnings,
    })
}
