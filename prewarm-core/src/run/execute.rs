//! Running the engines: one per device (each on its own thread, reading a
//! queue that grows as classes are planned) and one thread for the reads
//! through files, fed batch by batch; then the report.

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;
use std::thread::{Scope, ScopedJoinHandle};

use super::file_reads::{names_of, read_files, FileNames, FileReads};
use super::planner::{Added, Planner};
use super::ready::Ready;
use super::{Config, DevicePlan};
use crate::engine::{self, ClassProgress, EngineConfig, EngineStats, OpQueue, ReadOp, ReadTarget};
use crate::error::Error;
use crate::map::DeviceId;
use crate::plan::{FileIo, ReadMode};
use crate::report::Report;

/// What one device's engine did: its queue (the reads it was given) and
/// its stats, or why it could not read.
pub(crate) struct DeviceRun {
    pub queue: Arc<OpQueue>,
    pub result: Result<EngineStats, Error>,
}

/// One device's engine while it runs.
struct DeviceEngine<'scope> {
    queue: Arc<OpQueue>,
    handle: Result<ScopedJoinHandle<'scope, Result<EngineStats, Error>>, Error>,
}

/// Feeds the running engines: the reads of each class as it is planned.
pub(crate) struct EngineFeed<'scope, 'env> {
    scope: &'scope Scope<'scope, 'env>,
    ecfg: &'env EngineConfig,
    mode: ReadMode,
    progress: Option<Arc<ClassProgress>>,
    engines: BTreeMap<DeviceId, DeviceEngine<'scope>>,
    /// To the thread making the file-level reads, batch by batch.
    file_reads: Sender<(FileNames, Vec<FileIo>)>,
}

impl<'scope> EngineFeed<'scope, '_> {
    /// Start engines for the devices `added` opened, then hand every
    /// engine its new reads. Progress learns of a class's reads (device and
    /// file-level) before any of them is issued.
    pub fn push(&mut self, planner: &Planner<'_>, added: &Added) {
        let prepared = &planner.prepared;
        for &id in &added.new_devices {
            if let Some(d) = prepared.device(id) {
                self.spawn(d);
            }
        }
        let ops: Vec<(DeviceId, Vec<ReadOp>)> = added
            .classes
            .iter()
            .filter_map(|(id, which)| {
                let dev = prepared.device(*id)?;
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
                Some((*id, ops))
            })
            .collect();
        let file_ios = &prepared.file_ios[added.file_ios.clone()];
        if let Some(p) = &self.progress {
            for piece in added.pieces.iter().filter(|p| p.first) {
                p.hold(piece.priority);
            }
            for op in ops.iter().flat_map(|(_, ops)| ops) {
                p.add(op.priority, 1);
            }
            for io in file_ios {
                p.add(io.priority, 1);
            }
        }
        if let Some(c) = &self.ecfg.counters {
            let (mut reads, mut chunks, mut bytes) = (0, 0, 0);
            for (id, ops) in &ops {
                let Some(e) = self.engines.get(id) else {
                    continue;
                };
                for op in ops {
                    (reads, chunks) = (reads + 1, chunks + e.queue.chunks_of(op));
                    bytes += u64::from(op.len);
                }
            }
            for io in file_ios {
                (reads, bytes) = (reads + 1, bytes + u64::from(io.len));
            }
            c.planned(reads, chunks, bytes);
        }
        for (id, ops) in ops {
            if let Some(e) = self.engines.get(&id) {
                e.queue.push(ops);
            }
        }
        if !file_ios.is_empty() {
            // The receiver lives until every batch is sent.
            let _ = self
                .file_reads
                .send((names_of(&prepared.files, file_ios), file_ios.to_vec()));
        }
        // Its reads are all queued: the class may now be announced once
        // they are done (at once if it has none left).
        if let Some(p) = &self.progress {
            for piece in added.pieces.iter().filter(|p| p.last) {
                p.release(piece.priority);
            }
        }
    }

    /// Start the engine of `d`, on a duplicate of its descriptor (the plan
    /// keeps growing while the engine runs).
    fn spawn(&mut self, d: &DevicePlan) {
        let max_len = match self.mode {
            ReadMode::Full => u32::try_from(d.plan.config.max_io).unwrap_or(u32::MAX),
            ReadMode::Touch => d.device.logical_block_size,
        };
        let chunk_len = match self.mode {
            ReadMode::Full => u32::try_from(d.plan.config.chunk_size).unwrap_or(u32::MAX),
            ReadMode::Touch => d.device.logical_block_size,
        };
        let queue = Arc::new(OpQueue::new(max_len).counting_chunks(chunk_len));
        // The device, or a buffered loop device's backing file.
        let (file, direct, base) = d.device.read_target();
        let align = d.device.logical_block_size;
        let handle = match file.try_clone() {
            Ok(file) => {
                let (ecfg, q) = (self.ecfg, queue.clone());
                Ok(self.scope.spawn(move || {
                    let target = ReadTarget {
                        fd: file.as_fd(),
                        direct,
                        align,
                        base,
                    };
                    engine::run_queue(&[target], &q, ecfg)
                }))
            }
            Err(source) => Err(Error::Engine {
                what: format!("duplicating the descriptor of {}", d.device.node.display()),
                source,
            }),
        };
        self.engines.insert(d.id(), DeviceEngine { queue, handle });
    }
}

/// Run the engines for `planner`'s devices and its file-level reads (a
/// thread taking them batch by batch, beside the device engines), let
/// `feed_more` plan and push further classes while they run, and report.
/// The report is not finished (`Report::finish`) yet.
pub(crate) fn run_engines(
    mut planner: Planner<'_>,
    cfg: &Config,
    feed_more: impl FnOnce(&mut Planner<'_>, &mut EngineFeed<'_, '_>),
) -> Result<Report, Error> {
    let ready = Ready::new(cfg);
    // When each class was hydrated, from the start of the engines.
    let start = std::time::Instant::now();
    let hydrated: Arc<std::sync::Mutex<BTreeMap<u32, f64>>> = Arc::default();
    let progress = Arc::new(ClassProgress::new({
        let (ready, on_done) = (ready.clone(), cfg.on_class_done.clone());
        let hydrated = hydrated.clone();
        move |priority| {
            hydrated
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(priority, start.elapsed().as_secs_f64() * 1e3);
            if let Some(cb) = &on_done {
                cb(priority);
            }
            ready.class_done(priority);
        }
    }));
    let ecfg = EngineConfig {
        queue_depth: cfg.queue_depth,
        backend: cfg.backend,
        stop: cfg.stop.clone(),
        progress: Some(progress.clone()),
        ioprio: ready.ioprio(),
        throttle: Some(ready.throttle()),
        counters: cfg.progress.clone(),
    };
    let (devices, file_result) = std::thread::scope(|scope| {
        let (file_reads, batches) = channel::<(FileNames, Vec<FileIo>)>();
        let ecfg = &ecfg;
        let file_thread = scope.spawn(move || -> Result<FileReads, Error> {
            let mut all = FileReads::default();
            for (names, ios) in batches {
                all.merge(read_files(&names, &ios, ecfg)?);
            }
            Ok(all)
        });
        let mut feed = EngineFeed {
            scope,
            ecfg,
            mode: cfg.mode,
            progress: Some(progress.clone()),
            engines: BTreeMap::new(),
            file_reads,
        };
        // What is planned already (a manifest, a prepared plan, sweeps).
        let seeded = planner.seeded();
        feed.push(&planner, &seeded);
        feed_more(&mut planner, &mut feed);
        // Everything is planned: if nothing urgent was, say so now.
        ready.check_planned(&planner.prepared);
        // Closing: the engines drain their queues, the file thread its
        // channel, and all of them end.
        let EngineFeed {
            engines,
            file_reads,
            ..
        } = feed;
        drop(file_reads);
        for e in engines.values() {
            e.queue.close();
        }
        // Classes with nothing left to read are done before it.
        progress.announce_ready();
        let file_result = file_thread
            .join()
            .unwrap_or_else(|_| Err(Error::panicked("file-level read thread")));
        let devices: BTreeMap<DeviceId, DeviceRun> = engines
            .into_iter()
            .map(|(id, e)| {
                let result = e.handle.and_then(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(Error::panicked("device engine thread")))
                });
                (
                    id,
                    DeviceRun {
                        queue: e.queue,
                        result,
                    },
                )
            })
            .collect();
        (devices, file_result)
    });
    let mut report = planner
        .into_prepared()
        .report_run(cfg, devices, file_result)?;
    report.ready = ready.finish();
    let hydrated = hydrated.lock().unwrap_or_else(|e| e.into_inner());
    for class in &mut report.classes {
        class.hydrated_ms = hydrated.get(&class.priority).copied();
    }
    Ok(report)
}
