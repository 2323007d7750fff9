//! pread backend: `queue_depth` threads, each with its own buffer, taking the
//! next read of the queue from a shared cursor. Used when io_uring is
//! unavailable, or when asked for; it keeps the same number of reads in
//! flight, at the cost of a thread per read.
//!
//! A thread blocked in `pread` on a hung device cannot be interrupted. So
//! the threads are not joined: each sends its counts when it is done, and
//! after a stop the engine waits for them only one more round of the
//! slowest read seen ([`super::stop_grace`]), then reports what it has and
//! leaves the blocked ones behind (they own their descriptors and buffers).
//! The report and the handover state are then written; the process itself
//! cannot end before the kernel lets those threads go, which is why the
//! units bound their stop with `TimeoutStopSec`.

use std::os::fd::{AsFd, OwnedFd};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::uio::pread;

use super::{
    account, issuable, stop_grace, Backend, EngineConfig, EngineStats, IoBuffers, Next, OpQueue,
    ReadTarget, Take, QUEUE_POLL,
};
use crate::error::Error;

/// A target the threads own: a duplicate of the caller's descriptor.
struct OwnedTarget {
    fd: OwnedFd,
    direct: bool,
    align: u32,
    base: u64,
}

/// What the threads share.
struct Shared {
    targets: Vec<OwnedTarget>,
    queue: Arc<OpQueue>,
    cfg: EngineConfig,
    cursor: AtomicUsize,
    /// The slowest read so far, in nanoseconds.
    slowest_ns: AtomicU64,
    buf_len: u32,
}

pub(super) fn run(
    targets: &[ReadTarget<'_>],
    queue: &Arc<OpQueue>,
    cfg: &EngineConfig,
    depth: usize,
) -> Result<EngineStats, Error> {
    let owned = targets
        .iter()
        .map(|t| {
            Ok(OwnedTarget {
                fd: t.fd.try_clone_to_owned()?,
                direct: t.direct,
                align: t.align,
                base: t.base,
            })
        })
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|source| Error::Engine {
            what: "duplicating descriptors for the pread threads".into(),
            source,
        })?;
    let shared = Arc::new(Shared {
        targets: owned,
        queue: queue.clone(),
        cfg: cfg.clone(),
        cursor: AtomicUsize::new(0),
        slowest_ns: AtomicU64::new(0),
        buf_len: queue.max_len,
    });
    let (tx, rx) = channel::<Option<EngineStats>>();
    let mut workers = 0;
    for i in 0..depth.max(1) {
        let (shared, tx) = (shared.clone(), tx.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("prewarm-pread-{i}"))
            .spawn(move || run_worker(&shared, &tx));
        match spawned {
            Ok(_) => workers += 1,
            Err(e) if workers > 0 => {
                tracing::debug!("pread thread {i} refused ({e}); going on with {workers}");
                break;
            }
            Err(source) => {
                return Err(Error::Engine {
                    what: "starting a pread thread".into(),
                    source,
                })
            }
        }
    }
    drop(tx);

    let mut total = EngineStats::new(Backend::Pread, 0);
    let mut finished = 0;
    let mut stopped_at: Option<Instant> = None;
    while finished < workers {
        let wait = match stopped_at {
            None => QUEUE_POLL,
            Some(t) => {
                let grace = stop_grace(Duration::from_nanos(
                    shared.slowest_ns.load(Ordering::Relaxed),
                ));
                match grace.checked_sub(t.elapsed()) {
                    Some(left) if !left.is_zero() => left,
                    _ => break,
                }
            }
        };
        match rx.recv_timeout(wait) {
            Ok(stats) => {
                finished += 1;
                if let Some(s) = stats {
                    total.merge(s);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if stopped_at.is_none() && cfg.stop.check().is_some() {
            stopped_at = Some(Instant::now());
        }
    }
    if finished < workers {
        tracing::warn!(
            "{} pread thread(s) still blocked in a read after the stop; leaving them",
            workers - finished
        );
    }
    total.stopped = total.stopped.or(cfg.stop.check());
    total.ios_planned = queue.len() as u64;
    total.not_issued = total.ios_planned.saturating_sub(total.ios_done);
    Ok(total)
}

/// One thread: its own buffer, reads until the queue ends or a stop; sends
/// its counts (or `None` if it panicked, which must not hang the engine).
fn run_worker(shared: &Shared, tx: &Sender<Option<EngineStats>>) {
    let stats = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let mut buffers = IoBuffers::new(shared.buf_len).ok()?;
        let buf = buffers.buffer()?;
        Some(worker(shared, buf))
    }))
    .ok()
    .flatten();
    let _ = tx.send(stats);
}

fn worker(shared: &Shared, buf: &mut [u8]) -> EngineStats {
    let (queue, cfg) = (&shared.queue, &shared.cfg);
    let targets: Vec<ReadTarget<'_>> = shared
        .targets
        .iter()
        .map(|t| ReadTarget {
            fd: t.fd.as_fd(),
            direct: t.direct,
            align: t.align,
            base: t.base,
        })
        .collect();
    let mut stats = EngineStats::new(Backend::Pread, 0);
    'ops: loop {
        if let Some(reason) = cfg.stop.check() {
            stats.stopped = Some(reason);
            break;
        }
        // Claim the next op, and wait for it to be pushed if need be; a stop
        // between check and claim costs one read.
        let idx = shared.cursor.fetch_add(1, Ordering::Relaxed);
        let op = loop {
            match queue.take(idx, QUEUE_POLL) {
                Take::Op(op) => break op,
                Take::Ended => break 'ops,
                Take::Pending => {
                    if let Some(reason) = cfg.stop.check() {
                        stats.stopped = Some(reason);
                        break 'ops;
                    }
                }
            }
        };
        let ok = if issuable(&op, &targets, buf.len()) {
            // Within the rate budget: wait for it in short naps, so that a
            // stop is still seen at once.
            loop {
                let delay = cfg.admit(op.len);
                if delay.is_zero() {
                    break;
                }
                if let Some(reason) = cfg.stop.check() {
                    stats.stopped = Some(reason);
                    break 'ops;
                }
                std::thread::sleep(delay.min(QUEUE_POLL));
            }
            let target = &targets[op.target];
            let mut done = 0u32;
            loop {
                let piece = &mut buf[done as usize..op.len as usize];
                let offset = (target.base + op.offset + u64::from(done)) as i64;
                let issued = Instant::now();
                let res = match pread(target.fd, piece, offset) {
                    Ok(n) => n as i64,
                    Err(errno) => -(errno as i64),
                };
                let took = issued.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64;
                shared.slowest_ns.fetch_max(took, Ordering::Relaxed);
                match account(
                    &mut stats,
                    cfg.counters.as_deref(),
                    target,
                    &op,
                    op.len - done,
                    res,
                ) {
                    Next::Done { ok } => break ok,
                    Next::Resubmit { advanced } => done += advanced,
                }
            }
        } else {
            stats.fail(&op, libc::EINVAL);
            false
        };
        if ok {
            stats.completed.push(idx);
        }
        stats.ios_done += 1;
        cfg.finished(queue, &op);
    }
    stats
}
