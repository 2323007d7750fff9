//! pread backend: `queue_depth` threads, each with its own buffer, taking the
//! next read of the queue from a shared cursor. Used when io_uring is unavailable, or when
//! asked for; it keeps the same number of reads in flight, at the cost of a
//! thread per read.
//!
//! A thread blocked in `pread` on a hung device cannot be interrupted; the
//! CLI's watchdog covers that case by exiting after the deadline's grace.

use std::sync::atomic::{AtomicUsize, Ordering};

use nix::sys::uio::pread;

use super::{
    account, issuable, Backend, EngineConfig, EngineStats, IoBuffers, Next, OpQueue, ReadTarget,
    Take, QUEUE_POLL,
};

pub(super) fn run(
    targets: &[ReadTarget<'_>],
    queue: &OpQueue,
    cfg: &EngineConfig,
    buffers: &mut IoBuffers,
) -> EngineStats {
    let cursor = AtomicUsize::new(0);
    let mut total = EngineStats::new(Backend::Pread, 0);
    let per_thread: Vec<EngineStats> = std::thread::scope(|scope| {
        let workers: Vec<_> = buffers
            .slot_buffers()
            .into_iter()
            .map(|buf| scope.spawn(|| worker(targets, queue, cfg, &cursor, buf)))
            .collect();
        workers.into_iter().filter_map(|w| w.join().ok()).collect()
    });
    for s in per_thread {
        total.merge(s);
    }
    total.ios_planned = queue.len() as u64;
    total.not_issued = total.ios_planned.saturating_sub(total.ios_done);
    total
}

fn worker(
    targets: &[ReadTarget<'_>],
    queue: &OpQueue,
    cfg: &EngineConfig,
    cursor: &AtomicUsize,
    buf: &mut [u8],
) -> EngineStats {
    let mut stats = EngineStats::new(Backend::Pread, 0);
    'ops: loop {
        if let Some(reason) = cfg.stop.check() {
            stats.stopped = Some(reason);
            break;
        }
        // Claim the next op, and wait for it to be pushed if need be; a stop
        // between check and claim costs one read.
        let idx = cursor.fetch_add(1, Ordering::Relaxed);
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
        let ok = if issuable(&op, targets, buf.len()) {
            let target = &targets[op.target];
            let mut done = 0u32;
            loop {
                let piece = &mut buf[done as usize..op.len as usize];
                let offset = (op.offset + u64::from(done)) as i64;
                let res = match pread(target.fd, piece, offset) {
                    Ok(n) => n as i64,
                    Err(errno) => -(errno as i64),
                };
                match account(&mut stats, target, &op, op.len - done, res) {
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
        if let Some(p) = &cfg.progress {
            p.complete(op.priority);
        }
    }
    stats
}
