//! Report assembly: what was planned (from the [`Prepared`] plan) and what
//! each engine did (found by device identity), folded into one [`Report`].

use std::collections::BTreeMap;
use std::sync::Arc;

use super::execute::DeviceRun;
use super::file_reads::FileReads;
use super::{cache, Config, Prepared};
use crate::engine::{EngineStats, OpQueue};
use crate::error::Error;
use crate::map::loop_backing::Backing;
use crate::map::DeviceId;
use crate::plan::spans::{self, Span};
use crate::plan::PlanStats;
use crate::report::{
    ClassReport, DeviceReport, FailureReport, Fallback, FileLevelReport, FileMapReport, ReadStats,
    ReadThrough, Report,
};

impl Prepared {
    /// The report of the plan alone (a dry run), with per-file mappings.
    pub(crate) fn dry_run_report(self, cfg: &Config) -> Report {
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

    /// The report of a run: the plan's sizes plus what each device's engine
    /// and the file-level reads did; the cache warmed when asked. Only
    /// io_uring being required and unavailable fails the whole run; any
    /// other engine failure is reported for its device.
    pub(crate) fn report_run(
        self,
        cfg: &Config,
        mut devices: BTreeMap<DeviceId, DeviceRun>,
        file_result: Result<FileReads, Error>,
    ) -> Result<Report, Error> {
        let mut report = self.base_report(cfg, false);
        for d in &mut report.devices {
            let Some(run) = devices.remove(&d.id) else {
                continue;
            };
            match run.result {
                Ok(stats) => {
                    let node = d.node.clone();
                    note_engine(
                        &stats,
                        |_| node.clone(),
                        &mut report.fallbacks,
                        &mut report.failures,
                        &mut report.stopped,
                    );
                    d.read = read_stats(&stats);
                    d.chunks_read =
                        chunks_read(&run.queue, &stats.completed, report.plan_config.chunk_size);
                }
                Err(e @ Error::UringUnavailable(_)) => return Err(e),
                Err(e) => {
                    tracing::error!("{}: {e}", d.node);
                    d.error = Some(e.to_string());
                }
            }
        }
        match file_result {
            Ok(FileReads {
                stats,
                direct_files,
                warnings,
            }) => {
                if let Some(stats) = &stats {
                    let files = &self.files;
                    note_engine(
                        stats,
                        |i| files[i].file.path.display().to_string(),
                        &mut report.fallbacks,
                        &mut report.failures,
                        &mut report.stopped,
                    );
                    report.file_level.read = read_stats(stats);
                }
                report.file_level.direct_files = direct_files;
                report.warnings.extend(warnings);
            }
            Err(e @ Error::UringUnavailable(_)) => return Err(e),
            Err(e) => {
                tracing::error!("reads through files: {e}");
                report.file_level.error = Some(e.to_string());
            }
        }
        report.fallbacks.sort();
        report.fallbacks.dedup();
        if cfg.cache && cfg.stop.check().is_none() {
            let warmed = cache::warm(
                self.files
                    .iter()
                    .map(|f| (f.file.path.as_path(), f.file.size)),
                &cfg.stop,
            );
            if warmed.not_warmed > 0 {
                report.stopped = report.stopped.or(cfg.stop.check());
            }
            report.cache = Some(warmed);
        }
        Ok(report)
    }

    fn base_report(&self, cfg: &Config, dry_run: bool) -> Report {
        let mut totals = PlanStats::default();
        let mut devices = Vec::new();
        let mut ios_planned = 0u64;
        let mut ios_per_class: BTreeMap<u32, u64> = BTreeMap::new();
        for d in &self.devices {
            let stats = d.plan.stats();
            totals += stats;
            let planned = d.plan.ios(cfg.mode, d.device.logical_block_size);
            for io in &planned {
                *ios_per_class.entry(io.priority).or_default() += 1;
            }
            let ios = planned.len() as u64;
            ios_planned = ios_planned.saturating_add(ios);
            devices.push(DeviceReport {
                node: d.device.node.display().to_string(),
                id: d.device.id,
                uuid: d.uuid.clone(),
                chunks_read: Vec::new(),
                fs_type: d.device.fs_type.clone(),
                size: d.device.size,
                logical_block_size: d.device.logical_block_size,
                direct: d.device.read_target().1,
                read_through: read_through(&d.device.backing),
                files: d.files,
                swept: d.swept,
                plan: stats,
                read: ReadStats {
                    ios_planned: ios,
                    ..Default::default()
                },
                error: None,
            });
        }
        let tally = &self.tally;
        // Sizes and ranges may come from an untrusted manifest: every total
        // saturates rather than wraps (or panics).
        let file_level_planned = saturating_sum(self.file_ios.iter().map(|io| u64::from(io.len)));
        ios_planned = ios_planned.saturating_add(self.file_ios.len() as u64);
        Report {
            dry_run,
            mode: cfg.mode,
            queue_depth: cfg.queue_depth,
            rate_limit: cfg.rate_limit.is_limited().then_some(cfg.rate_limit),
            plan_config: cfg.plan,
            files: tally.files,
            files_mapped_from_inodes: tally.files_from_inodes,
            skipped_non_regular: self.skipped_non_regular,
            file_bytes: tally.file_bytes,
            mapped_bytes: tally.mapped_bytes,
            file_level_bytes: tally.file_level_bytes,
            unwritten_bytes: tally.unwritten_bytes,
            extents: totals.extents,
            ranges: totals.ranges,
            chunks: totals.chunks,
            planned_bytes: totals.bytes.saturating_add(file_level_planned),
            ios_planned,
            entries_not_reached: self.entries_not_reached,
            files_not_mapped: self.files_not_mapped,
            stopped: self.stopped,
            fallbacks: self.fallbacks().collect(),
            warnings: self.warnings.clone(),
            warnings_omitted: self.warnings_omitted.clone(),
            devices,
            file_level: FileLevelReport {
                files: tally.file_level_files,
                bytes: tally.file_level_bytes,
                read: ReadStats {
                    ios_planned: self.file_ios.len() as u64,
                    ..Default::default()
                },
                ..Default::default()
            },
            manifest: self.manifest.clone(),
            images: self.images.clone(),
            classes: self.class_reports(&ios_per_class),
            ..Report::new()
        }
    }

    /// Per priority class: what it plans (device chunks and bytes, reads,
    /// bytes through files); when it was hydrated is filled in by the run.
    fn class_reports(&self, device_ios: &BTreeMap<u32, u64>) -> Vec<ClassReport> {
        fn entry(classes: &mut BTreeMap<u32, ClassReport>, priority: u32) -> &mut ClassReport {
            classes.entry(priority).or_insert_with(|| ClassReport {
                priority,
                ..Default::default()
            })
        }
        let mut classes: BTreeMap<u32, ClassReport> = BTreeMap::new();
        for d in &self.devices {
            let chunk = d.plan.config.chunk_size.max(1);
            for c in &d.plan.classes {
                let r = entry(&mut classes, c.priority);
                for range in &c.ranges {
                    r.chunks += range.end().div_ceil(chunk) - range.offset / chunk;
                    r.bytes = r.bytes.saturating_add(range.len);
                }
            }
        }
        for (&priority, &ios) in device_ios {
            entry(&mut classes, priority).ios += ios;
        }
        for io in &self.file_ios {
            let r = entry(&mut classes, io.priority);
            r.ios += 1;
            r.bytes = r.bytes.saturating_add(u64::from(io.len));
        }
        classes.into_values().collect()
    }

    /// The plan's fallbacks: devices read buffered, and one line per reason
    /// some files are read through the files, with how many.
    fn fallbacks(&self) -> impl Iterator<Item = Fallback> + '_ {
        let reasons = self.tally.fallbacks.iter();
        self.fallbacks
            .iter()
            .cloned()
            .chain(reasons.map(|(reason, &files)| Fallback::FileReads {
                files,
                reason: reason.clone(),
            }))
    }
}

/// Fold one engine's stats into the report's fallbacks, failures and stop;
/// `name` turns a failure's target index into what the report calls it.
fn note_engine(
    stats: &EngineStats,
    name: impl Fn(usize) -> String,
    fallbacks: &mut Vec<Fallback>,
    failures: &mut Vec<FailureReport>,
    stopped: &mut Option<crate::engine::StopReason>,
) {
    if let Some(why) = &stats.fallback {
        fallbacks.push(Fallback::Pread {
            reason: why.clone(),
        });
    }
    failures.extend(stats.failures.iter().map(|f| FailureReport {
        target: name(f.target),
        offset: f.offset,
        len: f.len,
        error: f.error.clone(),
    }));
    *stopped = stopped.or(stats.stopped);
}

/// Merged chunk spans touched by the completed reads of `queue`. A
/// completed read of any part of a chunk counts the chunk: the plan only
/// reads whole chunks, or one block of a chunk in touch mode, where
/// touching is hydrating.
fn chunks_read(queue: &Arc<OpQueue>, completed: &[usize], chunk: u64) -> Vec<Span> {
    let chunk = chunk.max(1);
    let ops = queue.ops();
    spans::merge(
        completed.iter().filter_map(|&i| ops.get(i)).map(|op| {
            (
                op.offset / chunk,
                (op.offset + u64::from(op.len)).div_ceil(chunk),
            )
        }),
        0,
    )
}

/// The sum of `values`, stopping at `u64::MAX` instead of wrapping.
fn saturating_sum(values: impl IntoIterator<Item = u64>) -> u64 {
    values.into_iter().fold(0, u64::saturating_add)
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

/// What the report says of how a device was reached: a buffered loop
/// device's backing file, or why it was not used (nothing for the others).
fn read_through(backing: &Backing) -> Option<ReadThrough> {
    match backing {
        Backing::Device => None,
        Backing::File(b) => Some(ReadThrough::BackingFile {
            path: b.path.display().to_string(),
            offset: b.offset,
        }),
        Backing::Unusable(reason) => Some(ReadThrough::Device {
            reason: reason.clone(),
        }),
    }
}
