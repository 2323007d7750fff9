//! io_uring backend: one ring, kept full from the first read to the last,
//! every read landing in one registered sink buffer.
//!
//! The engine discards what it reads, so the reads in flight share a single
//! buffer as long as the longest read: registering one buffer per slot
//! (32 × 1 MiB at the defaults) made the kernel fault in and pin 32 MiB
//! before the first read, 17 ms measured here, a tenth of a lazy volume's
//! whole critical-set time at high concurrency; the sink is pinned in well
//! under a millisecond and keeps the run's memory at one read's worth.
//!
//! This module, `fiemap`, `record::residency` and `run::cpu_priority` (and
//! one `mallopt` in `heap`) hold the only `unsafe`:
//! io_uring hands the kernel a raw buffer address that it writes into
//! later, which the borrow checker cannot follow. The invariants are simple and local:
//!
//! * the sink is written only by the kernel: this process never reads it or
//!   makes a Rust reference to it after taking its address, so reads in
//!   flight writing it at once race only with each other, over bytes nobody
//!   looks at;
//! * every read fits in it (`buf + done + len <= sink_len`: an op longer
//!   than the sink is failed before submission, and a resubmitted rest
//!   starts `done` bytes in);
//! * the mapping outlives every read: the function does not return while a
//!   read is in flight, except by leaking both the ring and the mapping
//!   (`abandon`), so a late completion can only write into memory that is
//!   never freed or reused.

use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use io_uring::{opcode, squeue, types, IoUring};

use super::{
    account, issuable, Backend, EngineConfig, EngineStats, IoBuffers, Next, OpQueue, ReadOp,
    ReadTarget, Take, QUEUE_POLL,
};

/// io_uring could not be set up (or refused the first submission): nothing
/// was read, the caller may fall back.
pub(super) struct SetupError(pub std::io::Error);

#[derive(Clone, Copy)]
struct InFlight {
    /// Index of the op in the queue, and the op.
    index: usize,
    op: ReadOp,
    /// Bytes of the op already read (short reads resubmit the rest).
    done: u32,
    /// When its current piece was submitted.
    issued: Instant,
}

/// Run the reads of `queue` with `depth` in flight, every one into `sink` (a
/// single slot as long as the queue's longest read).
pub(super) fn run(
    targets: &[ReadTarget<'_>],
    queue: &OpQueue,
    cfg: &EngineConfig,
    depth: usize,
    sink: &mut IoBuffers,
) -> Result<EngineStats, SetupError> {
    let sink_len = sink.len;
    let sink_ptr: *mut u8 = sink
        .buffer()
        .map_or(std::ptr::null_mut(), <[u8]>::as_mut_ptr);
    let mut ring = IoUring::new((depth as u32).next_power_of_two()).map_err(SetupError)?;
    let iovec = [libc::iovec {
        iov_base: sink_ptr.cast(),
        iov_len: sink_len,
    }];
    // Safety: the iovec points into `sink.map`, which outlives the ring (see
    // the module doc: the ring is dropped or leaked before we return, and on
    // leak the mapping is leaked too).
    let fixed = !sink_ptr.is_null() && unsafe { ring.submitter().register_buffers(&iovec) }.is_ok();
    if !fixed {
        tracing::debug!("io_uring buffer registration refused; using an unregistered buffer");
    }

    let entry = |op: &ReadOp, done: u32, slot: usize| -> squeue::Entry {
        let target = &targets[op.target];
        let fd = types::Fd(target.fd.as_raw_fd());
        let buf = sink_ptr.wrapping_add(done as usize);
        let len = op.len - done;
        let offset = target.base + op.offset + u64::from(done);
        let ioprio = cfg.ioprio.load(Ordering::Relaxed);
        let e = if fixed {
            opcode::ReadFixed::new(fd, buf, len, 0)
                .offset(offset)
                .ioprio(ioprio)
                .build()
        } else {
            opcode::Read::new(fd, buf, len)
                .offset(offset)
                .ioprio(ioprio)
                .build()
        };
        e.user_data(slot as u64)
    };

    let mut stats = EngineStats::new(Backend::Uring, 0);
    let mut slots: Vec<Option<InFlight>> = vec![None; depth];
    let mut free: Vec<usize> = (0..depth).rev().collect();
    let mut next = 0usize;
    let mut inflight = 0usize;
    let mut ended = false;
    let mut stopped_at: Option<Instant> = None;
    let mut first_submit = true;
    // The slowest read seen: after a stop, the reads in flight get about
    // one more such round before they are abandoned.
    let mut slowest = Duration::ZERO;
    let mut completed: Vec<(u64, i32)> = Vec::with_capacity(depth);

    loop {
        if stats.stopped.is_none() {
            if let Some(reason) = cfg.stop.check() {
                tracing::info!(?reason, "stopping: no new reads are issued");
                stats.stopped = Some(reason);
                stopped_at = Some(Instant::now());
            }
        }
        // Set when the rate budget holds the next read back: how long.
        let mut throttled: Option<Duration> = None;
        while stats.stopped.is_none() && !ended && !free.is_empty() {
            // With nothing in flight, wait a while for the queue to grow.
            let wait = if inflight == 0 {
                QUEUE_POLL
            } else {
                Duration::ZERO
            };
            let op = match queue.take(next, wait) {
                Take::Op(op) => op,
                Take::Pending => break,
                Take::Ended => {
                    ended = true;
                    break;
                }
            };
            if !issuable(&op, targets, sink_len) {
                stats.fail(&op, libc::EINVAL);
                stats.ios_done += 1;
                next += 1;
                cfg.finished(queue, &op);
                continue;
            }
            let delay = cfg.admit(op.len);
            if !delay.is_zero() {
                throttled = Some(delay);
                break;
            }
            let Some(slot) = free.pop() else { break };
            let e = entry(&op, 0, slot);
            // Safety: the entry's buffer is the sink, which fits the op
            // (checked just above) and lives as long as the ring (module doc).
            if unsafe { ring.submission().push(&e) }.is_err() {
                free.push(slot);
                break;
            }
            slots[slot] = Some(InFlight {
                index: next,
                op,
                done: 0,
                issued: Instant::now(),
            });
            next += 1;
            inflight += 1;
        }
        if inflight == 0 {
            if ended || stats.stopped.is_some() {
                break;
            }
            if let Some(delay) = throttled {
                std::thread::sleep(delay.min(QUEUE_POLL));
            }
            continue;
        }
        if stopped_at.is_some_and(|t| t.elapsed() > super::stop_grace(slowest)) {
            tracing::warn!(
                inflight,
                "reads still in flight after the stop grace period; abandoning them"
            );
            abandon(ring, sink);
            break;
        }
        // Wake for the next completion, or when the rate budget lets the
        // next read go, or to look at the stop signal.
        let wait = throttled.map_or(QUEUE_POLL, |d| {
            d.clamp(Duration::from_millis(1), QUEUE_POLL)
        });
        let timeout = types::Timespec::from(wait);
        let args = types::SubmitArgs::new().timespec(&timeout);
        match ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) => {}
            Err(e) if first_submit => return Err(SetupError(e)),
            Err(e) => {
                tracing::error!("io_uring submit failed: {e}; abandoning {inflight} reads");
                for f in slots.iter().flatten() {
                    stats.fail(&f.op, e.raw_os_error().unwrap_or(libc::EIO));
                }
                abandon(ring, sink);
                break;
            }
        }
        first_submit = false;

        completed.extend(ring.completion().map(|c| (c.user_data(), c.result())));
        for (user_data, res) in completed.drain(..) {
            let slot = user_data as usize;
            let Some(f) = slots.get_mut(slot).and_then(Option::take) else {
                continue;
            };
            let op = &f.op;
            slowest = slowest.max(f.issued.elapsed());
            match account(
                &mut stats,
                cfg.counters.as_deref(),
                &targets[op.target],
                op,
                op.len - f.done,
                i64::from(res),
            ) {
                Next::Done { ok } => {
                    if ok {
                        stats.completed.push(f.index);
                    }
                    stats.ios_done += 1;
                    inflight -= 1;
                    free.push(slot);
                    cfg.finished(queue, op);
                }
                Next::Resubmit { advanced } => {
                    let done = f.done + advanced;
                    let e = entry(op, done, slot);
                    // Safety: as above. The slot's previous read has completed
                    // and the SQ holds as many entries as there are slots, so
                    // there is room.
                    let _ = unsafe { ring.submission().push(&e) };
                    slots[slot] = Some(InFlight {
                        done,
                        issued: Instant::now(),
                        ..f
                    });
                }
            }
        }
    }
    stats.ios_planned = queue.len() as u64;
    stats.not_issued = stats.ios_planned.saturating_sub(next as u64);
    Ok(stats)
}

/// Give up on reads still in flight: leak the ring and the buffer mapping so
/// that a late completion writes into memory that stays allocated and unused.
fn abandon(ring: IoUring, sink: &mut IoBuffers) {
    std::mem::forget(ring);
    sink.leak();
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::AsFd;
    use std::sync::Arc;

    use super::super::{run_queue, BackendChoice, EngineConfig, OpQueue, ReadOp, ReadTarget};

    fn file(len: usize) -> std::fs::File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&vec![7u8; len]).unwrap();
        f
    }

    fn op(offset: u64, len: u32) -> ReadOp {
        ReadOp {
            target: 0,
            offset,
            len,
            priority: 0,
        }
    }

    fn uring() -> EngineConfig {
        EngineConfig {
            queue_depth: 4,
            backend: BackendChoice::Uring,
            ..Default::default()
        }
    }

    #[test]
    fn an_op_longer_than_the_sink_fails_alone() {
        let f = file(64 << 10);
        let targets = [ReadTarget {
            fd: f.as_fd(),
            direct: false,
            align: 512,
            base: 0,
        }];
        // The queue's reads are at most 4 KiB: the sink is one page.
        let queue = Arc::new(OpQueue::new(4096));
        queue.push([op(0, 4096), op(4096, 8192), op(12288, 4096)]);
        queue.close();
        let s = run_queue(&targets, &queue, &uring()).unwrap();
        assert_eq!(s.backend, crate::engine::Backend::Uring);
        assert_eq!(s.errors, 1);
        assert_eq!(s.failures[0].errno, libc::EINVAL);
        assert_eq!(s.failures[0].offset, 4096);
        assert_eq!(s.bytes_read, 8192);
        let mut done = s.completed.clone();
        done.sort_unstable();
        assert_eq!(done, [0, 2]);
    }

    #[test]
    fn reads_pushed_while_running_are_read_in_order_once() {
        let f = file(1 << 20);
        let queue = Arc::new(OpQueue::new(65536));
        let feeder = {
            let q = queue.clone();
            std::thread::spawn(move || {
                for batch in 0..4u64 {
                    q.push((0..4).map(|i| op((batch * 4 + i) * 65536, 65536)));
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                q.close();
            })
        };
        let targets = [ReadTarget {
            fd: f.as_fd(),
            direct: false,
            align: 512,
            base: 0,
        }];
        let s = run_queue(&targets, &queue, &uring()).unwrap();
        feeder.join().unwrap();
        assert_eq!((s.ios_planned, s.ios_done, s.errors), (16, 16, 0));
        assert_eq!(s.bytes_read, 1 << 20);
        let mut done = s.completed.clone();
        done.sort_unstable();
        assert_eq!(done, (0..16).collect::<Vec<_>>());
    }
}
