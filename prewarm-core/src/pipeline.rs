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
use std::path::Path;
use std::sync::atomic::AtomicU16;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rayon::prelude::*;

use crate::blocking;
use crate::cache::{self, CacheStats};
use crate::device::{self, BlockDevice, DeviceError, DeviceId};
use crate::engine::{
    self, BackendChoice, ClassProgress, EngineConfig, EngineStats, ReadOp, ReadTarget, StopSignal,
};
use crate::error::{Error, Warning, WarningKind};
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
    mut warnings: Vec<Warning>,
    cfg: &Config,
) -> Result<Prepared, Error> {
    cfg.validate()?;
    let start = Instant::now();
    // Collect and map as many files at once as reads will be in flight:
    // cold metadata waits for fetches just as data does.
    let (set, mapped) = blocking::with_width(cfg.queue_depth as usize, || {
        let mut set = source::collect(entries, &cfg.collect);
        // Map every file; a file that cannot be opened is named and dropped.
        let mapped: Vec<Result<MappedFile, Warning>> = std::mem::take(&mut set.files)
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
        (set, mapped)
    });
    warnings.extend(set.warnings);
    let mut files = Vec::with_capacity(mapped.len());
    for m in mapped {
        match m {
            Ok(m) => files.push(m),
            Err(w) => warnings.push(w),
        }
    }

    // Open each device once; files on a device that cannot be used are read
    // through the file instead.
    let mut fallbacks = Vec::new();
    let mut by_dev: BTreeMap<DeviceId, Vec<usize>> = BTreeMap::new();
    for (i, f) in files.iter().enumerate() {
        if !f.map.device_extents.is_empty() {
            by_dev
                .entry(DeviceId::from_dev(f.file.dev))
                .or_default()
                .push(i);
        }
    }
    let mut devices = Vec::new();
    for (id, members) in by_dev {
        let opened = device::open(id).and_then(|d| {
            match cfg.plan.validate(u64::from(d.logical_block_size)) {
                Ok(()) => Ok(d),
                Err(e) => Err(DeviceError::Unusable {
                    node: d.node.clone(),
                    reason: e.to_string(),
                }),
            }
        });
        match opened {
            Ok(dev) => {
                let extents: Vec<PrioritizedExtent> = members
                    .iter()
                    .flat_map(|&i| {
                        let f = &files[i];
                        f.map.device_extents.iter().map(move |e| PrioritizedExtent {
                            priority: f.file.priority,
                            offset: e.physical,
                            len: e.length,
                        })
                    })
                    .collect();
                let plan = ReadPlan::build(&extents, dev.size, &cfg.plan);
                if !dev.direct {
                    fallbacks.push(format!(
                        "{}: O_DIRECT refused, reading buffered",
                        dev.node.display()
                    ));
                }
                devices.push(DevicePlan {
                    device: dev,
                    plan,
                    files: members.len() as u64,
                    uuid: None,
                });
            }
            Err(e) => {
                let why = e.to_string();
                if !matches!(e, DeviceError::Virtual(_)) {
                    tracing::warn!(
                        "{why}: reading its {} files through the files",
                        members.len()
                    );
                }
                for i in members {
                    files[i].map.demote_to_file_reads(why.clone());
                }
            }
        }
    }
    // One line per reason some files are read through the files.
    let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
    for f in &files {
        if let Some(why) = &f.map.fallback {
            *reasons.entry(why.as_str()).or_default() += 1;
        }
    }
    fallbacks.extend(
        reasons
            .into_iter()
            .map(|(why, n)| format!("{n} file(s) read through the file: {why}")),
    );

    let file_ios = plan_file_ios(&files, cfg.plan.max_io);

    Ok(Prepared {
        manifest: None,
        files,
        devices,
        file_ios,
        warnings,
        fallbacks,
        skipped_non_regular: set.skipped_non_regular,
        prepare_time: start.elapsed(),
    })
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
        let mut report = self.base_report(cfg, false);
        let start = Instant::now();
        let device_ios: Vec<Vec<ReadOp>> = self
            .devices
            .iter()
            .map(|d| {
                d.plan
                    .ios(cfg.mode, d.device.logical_block_size)
                    .into_iter()
                    .map(|io| ReadOp {
                        target: 0,
                        offset: io.offset,
                        len: io.len,
                        priority: io.priority,
                    })
                    .collect()
            })
            .collect();

        let progress = cfg.on_class_done.clone().map(|cb| {
            let p = ClassProgress::new(move |prio| cb(prio));
            for ops in &device_ios {
                for op in ops {
                    p.add(op.priority, 1);
                }
            }
            for io in &self.file_ios {
                p.add(io.priority, 1);
            }
            Arc::new(p)
        });
        let ecfg = EngineConfig {
            queue_depth: cfg.queue_depth,
            backend: cfg.backend,
            stop: cfg.stop.clone(),
            progress: progress.clone(),
            ioprio: cfg.ioprio.clone(),
        };
        if let Some(p) = &progress {
            // Classes with nothing to read (everything already claimed by a
            // more urgent class) are done before the first read.
            p.announce_ready();
        }

        let (device_results, file_result) = std::thread::scope(|scope| {
            let handles: Vec<_> = self
                .devices
                .iter()
                .zip(&device_ios)
                .map(|(d, ops)| {
                    let ecfg = &ecfg;
                    scope.spawn(move || {
                        let target = ReadTarget {
                            fd: d.device.file.as_fd(),
                            direct: d.device.direct,
                            align: d.device.logical_block_size,
                        };
                        engine::run(&[target], ops, ecfg)
                    })
                })
                .collect();
            let file_result = read_files(&self.files, &self.file_ios, &ecfg);
            let device_results: Vec<_> = handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(Error::NothingToRead("engine thread panicked".into()))
                    })
                })
                .collect();
            (device_results, file_result)
        });

        let mut fallbacks = Vec::new();
        for (i, result) in device_results.into_iter().enumerate() {
            let stats = result?;
            let node = report.devices[i].node.clone();
            note_engine(&stats, |_| node.clone(), &mut fallbacks, &mut report);
            report.devices[i].read = read_stats(&stats);
            let chunk = self.devices[i].plan.config.chunk_size;
            report.devices[i].chunks_read = chunks_read(&device_ios[i], &stats.completed, chunk);
        }
        let (fstats, direct_files, open_warnings) = file_result?;
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
        report.finish(start.elapsed());
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
pub(crate) fn plan_file_ios(files: &[MappedFile], max_io: u64) -> Vec<FileIo> {
    plan::file_ios(
        files
            .iter()
            .enumerate()
            .filter(|(_, f)| !f.map.file_ranges.is_empty())
            .map(|(i, f)| (i, f.file.priority, &f.map.file_ranges[..])),
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

/// Read the file-level I/Os in batches of at most [`FILE_BATCH`] open files.
/// Failure targets are indexes into `files`.
#[allow(clippy::type_complexity)]
fn read_files(
    files: &[MappedFile],
    ios: &[FileIo],
    ecfg: &EngineConfig,
) -> Result<(Option<EngineStats>, u64, Vec<Warning>), Error> {
    if ios.is_empty() {
        return Ok((None, 0, Vec::new()));
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
            let path = &files[fi].file.path;
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
                        Some(&files[fi].file.origin),
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
    Ok((total, direct_files, warnings))
}
