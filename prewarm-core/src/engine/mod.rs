//! The read engine: issues a list of reads at a fixed queue depth and
//! counts what came back.
//!
//! A lazily loaded volume serves a handful of chunk fetches in parallel, each
//! taking milliseconds; a reader with one request in flight (cat, dd) uses one
//! of them. The engine keeps `queue_depth` reads in flight from the first to
//! the last, across priority classes, so the volume's whole fetch concurrency
//! works on the plan in the order the plan gives. The data itself is thrown
//! away: reading it is the point.
//!
//! Two backends, same contract:
//! * [`uring`]: one io_uring with `queue_depth` reads in flight into one shared,
//!   registered sink buffer (the data is discarded), short reads
//!   resubmitted; the default.
//! * [`pread`]: `queue_depth` threads doing `pread`; used when io_uring is
//!   unavailable (`ENOSYS`, `EPERM` from `kernel.io_uring_disabled` or a
//!   seccomp filter) or when asked for.
//!
//! Per-read errors (EIO, EINVAL, ...) are counted and sampled; they never stop
//! the other reads. A [`StopSignal`] (SIGTERM, deadline) stops new reads from
//! being issued; reads already in flight are waited for briefly.

mod pread;
mod progress;
mod throttle;
#[allow(unsafe_code)]
mod uring;

pub use progress::{Progress, ProgressSnapshot};
pub use throttle::{RateLimit, Throttle};

use std::collections::BTreeMap;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::Error;

/// Default number of reads in flight.
pub const DEFAULT_QUEUE_DEPTH: u32 = 32;

/// I/O priority value (`ioprio`) of the idle class: reads that only run when
/// the disk is otherwise idle (honoured by the BFQ and mq-deadline
/// schedulers; `none` ignores priorities).
pub const IOPRIO_IDLE: u16 = 3 << 13;

/// The longest that reads already in flight are waited for after a stop.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

/// The shortest: a stop is honoured within this plus one round of fetches.
pub const MIN_STOP_GRACE: Duration = Duration::from_millis(200);

/// How long to wait, after a stop, for the reads in flight: one more round
/// of fetches as slow as the slowest seen so far (twice it, for jitter), at
/// least [`MIN_STOP_GRACE`] and at most [`STOP_GRACE`]. A device that never
/// answered gets the minimum: waiting longer would not make it answer.
pub(crate) fn stop_grace(slowest_read: Duration) -> Duration {
    (slowest_read * 2).clamp(MIN_STOP_GRACE, STOP_GRACE)
}

/// Something to read from: a block device or a file.
#[derive(Debug, Clone, Copy)]
pub struct ReadTarget<'a> {
    /// The open device or file.
    pub fd: BorrowedFd<'a>,
    /// Opened with O_DIRECT: offsets and lengths are aligned to `align`, and
    /// a short read ending off that alignment means end of file.
    pub direct: bool,
    /// The alignment direct reads need (the logical block size).
    pub align: u32,
    /// Where offset 0 of the reads is in `fd`: 0 for a device or file read
    /// as it is, the device's offset in its backing file for a buffered loop
    /// device read through that file. Reads and reports keep the device's
    /// offsets; only the system call adds this.
    pub base: u64,
}

/// One read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadOp {
    /// Index into the targets slice.
    pub target: usize,
    /// Byte offset.
    pub offset: u64,
    /// Length in bytes.
    pub len: u32,
    /// Its class (for progress).
    pub priority: u32,
}

/// Which backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendChoice {
    /// io_uring, falling back to the pread pool when it is unavailable.
    #[default]
    Auto,
    /// io_uring only (an error if unavailable).
    Uring,
    /// The pread thread pool.
    Pread,
}

/// The backend that actually ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// One io_uring.
    Uring,
    /// The pread thread pool.
    Pread,
}

/// Why issuing stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// SIGTERM / SIGINT or the caller's cancel flag.
    Cancelled,
    /// The deadline passed.
    Deadline,
}

/// Cancellation flag plus optional deadline, shared by every engine of a run.
#[derive(Debug, Clone, Default)]
pub struct StopSignal {
    cancel: Arc<AtomicBool>,
    deadline: Option<Instant>,
}

impl StopSignal {
    /// Stop when `cancel` becomes true or at `deadline`.
    pub fn new(cancel: Arc<AtomicBool>, deadline: Option<Instant>) -> Self {
        StopSignal { cancel, deadline }
    }

    /// Ask every engine using this signal to stop issuing reads.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    /// Whether to stop now, and why.
    pub fn check(&self) -> Option<StopReason> {
        if self.cancel.load(Ordering::Relaxed) {
            Some(StopReason::Cancelled)
        } else if self.deadline.is_some_and(|d| Instant::now() >= d) {
            Some(StopReason::Deadline)
        } else {
            None
        }
    }
}

/// Tracks, across all engines of a run, when each priority class is fully
/// read, and calls back in priority order (used for progress, and for
/// telling systemd that the most urgent class is done).
pub struct ClassProgress {
    remaining: Mutex<BTreeMap<u32, u64>>,
    on_done: Box<dyn Fn(u32) + Send + Sync>,
}

impl ClassProgress {
    /// `on_done(priority)` is called once per class, in priority order, when
    /// it and every more urgent class are complete.
    pub fn new(on_done: impl Fn(u32) + Send + Sync + 'static) -> Self {
        ClassProgress {
            remaining: Mutex::new(BTreeMap::new()),
            on_done: Box::new(on_done),
        }
    }

    /// Register `count` reads of class `priority` (before running).
    pub fn add(&self, priority: u32, count: u64) {
        let mut m = self.remaining.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry(priority).or_default() += count;
    }

    /// Keep class `priority` from being announced, however many of its
    /// reads are done, until [`ClassProgress::release`]: it is still being
    /// planned (a class reaches the engines in pieces).
    pub fn hold(&self, priority: u32) {
        self.add(priority, 1);
    }

    /// Class `priority` is wholly planned: it is done once its reads are.
    pub fn release(&self, priority: u32) {
        self.complete(priority);
    }

    /// Announce every class whose reads, and all more urgent ones, are done.
    pub fn announce_ready(&self) {
        let mut done = Vec::new();
        {
            let mut m = self.remaining.lock().unwrap_or_else(|e| e.into_inner());
            while let Some(entry) = m.first_entry() {
                if *entry.get() != 0 {
                    break;
                }
                done.push(entry.remove_entry().0);
            }
        }
        for p in done {
            (self.on_done)(p);
        }
    }

    fn complete(&self, priority: u32) {
        let first_done = {
            let mut m = self.remaining.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = m.get_mut(&priority) {
                *n = n.saturating_sub(1);
            }
            m.first_key_value().is_some_and(|(_, &n)| n == 0)
        };
        if first_done {
            self.announce_ready();
        }
    }
}

/// Engine settings.
#[derive(Clone)]
pub struct EngineConfig {
    /// Reads kept in flight.
    pub queue_depth: u32,
    /// Which backend.
    pub backend: BackendChoice,
    /// Stops issuing.
    pub stop: StopSignal,
    /// Learns when each class is done.
    pub progress: Option<Arc<ClassProgress>>,
    /// I/O priority for reads issued from now on (0: the process's own).
    /// Applied per read by the io_uring backend; the pread backend ignores
    /// it. Shared, so that a caller can lower it mid-run (e.g. to
    /// [`IOPRIO_IDLE`] once the boot-critical class is done).
    pub ioprio: Arc<AtomicU16>,
    /// The run's rate budget, asked before each read (none: unlimited).
    pub throttle: Option<Arc<Throttle>>,
    /// Live counters for a progress display.
    pub counters: Option<Arc<Progress>>,
}

impl EngineConfig {
    /// How long to wait before issuing a read of `len` bytes (zero: now,
    /// and the budget is spent).
    fn admit(&self, len: u32) -> Duration {
        self.throttle
            .as_ref()
            .map_or(Duration::ZERO, |t| t.admit(len))
    }

    /// `op` of `queue` is finished (read, failed or at end of file).
    fn finished(&self, queue: &OpQueue, op: &ReadOp) {
        if let Some(p) = &self.progress {
            p.complete(op.priority);
        }
        if let Some(c) = &self.counters {
            c.read_done(queue.chunks_of(op));
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            queue_depth: DEFAULT_QUEUE_DEPTH,
            backend: BackendChoice::Auto,
            stop: StopSignal::default(),
            progress: None,
            ioprio: Arc::new(AtomicU16::new(0)),
            throttle: None,
            counters: None,
        }
    }
}

/// One failed read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReadFailure {
    pub target: usize,
    pub offset: u64,
    pub len: u32,
    pub errno: i32,
    pub error: String,
}

/// At most this many failures are kept with their details.
pub const FAILURE_SAMPLES: usize = 32;

/// What one engine run did.
#[derive(Debug, Clone, Serialize)]
pub struct EngineStats {
    pub backend: Backend,
    /// Why io_uring was not used, when it was not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    pub ios_planned: u64,
    /// Reads that completed (successfully or not).
    pub ios_done: u64,
    pub bytes_read: u64,
    pub errors: u64,
    pub failures: Vec<ReadFailure>,
    /// Short reads that were resubmitted for the rest.
    pub short_reads: u64,
    /// Reads that hit end of file / device before their length.
    pub eof: u64,
    /// Reads never issued because of a stop.
    pub not_issued: u64,
    pub stopped: Option<StopReason>,
    pub elapsed: Duration,
    /// Indexes of the ops that completed without error, in completion order.
    #[serde(skip)]
    pub completed: Vec<usize>,
}

impl EngineStats {
    fn new(backend: Backend, planned: usize) -> Self {
        EngineStats {
            backend,
            fallback: None,
            ios_planned: planned as u64,
            ios_done: 0,
            bytes_read: 0,
            errors: 0,
            failures: Vec::new(),
            short_reads: 0,
            eof: 0,
            not_issued: 0,
            stopped: None,
            elapsed: Duration::ZERO,
            completed: Vec::new(),
        }
    }

    fn fail(&mut self, op: &ReadOp, errno: i32) {
        self.errors += 1;
        if self.failures.len() < FAILURE_SAMPLES {
            self.failures.push(ReadFailure {
                target: op.target,
                offset: op.offset,
                len: op.len,
                errno,
                error: std::io::Error::from_raw_os_error(errno).to_string(),
            });
        }
    }

    /// Add another run's counts to these.
    pub fn merge(&mut self, o: EngineStats) {
        self.fallback = self.fallback.take().or(o.fallback);
        self.ios_planned += o.ios_planned;
        self.not_issued += o.not_issued;
        self.elapsed += o.elapsed;
        self.ios_done += o.ios_done;
        self.bytes_read += o.bytes_read;
        self.errors += o.errors;
        let room = FAILURE_SAMPLES.saturating_sub(self.failures.len());
        self.failures.extend(o.failures.into_iter().take(room));
        self.short_reads += o.short_reads;
        self.eof += o.eof;
        self.stopped = self.stopped.or(o.stopped);
        self.completed.extend(o.completed);
    }
}

/// A page-aligned I/O buffer: each pread thread's own, or the io_uring
/// backend's single sink. Page alignment satisfies O_DIRECT for every
/// logical block size up to the page size.
struct IoBuffers {
    /// `None` once leaked.
    map: Option<memmap2::MmapMut>,
    len: usize,
}

impl IoBuffers {
    /// A buffer for reads of at most `max_len` bytes (rounded up to pages).
    fn new(max_len: u32) -> Result<Self, Error> {
        let page = 4096usize;
        let len = (max_len as usize).div_ceil(page).max(1) * page;
        let map = memmap2::MmapMut::map_anon(len)
            .map_err(|source| Error::Buffers { bytes: len, source })?;
        Ok(IoBuffers {
            map: Some(map),
            len,
        })
    }

    /// The buffer (`None` once leaked).
    fn buffer(&mut self) -> Option<&mut [u8]> {
        self.map.as_deref_mut()
    }

    /// Never unmap: reads the kernel may still complete into these buffers
    /// must land in memory nobody else will be given.
    fn leak(&mut self) {
        std::mem::forget(self.map.take());
    }
}

/// How long an engine with nothing in flight waits for more reads before it
/// looks at the stop signal again.
const QUEUE_POLL: Duration = Duration::from_millis(100);

/// The reads of one engine run, in issue order. A queue can be filled while
/// the engine runs: the pipeline pushes each priority class as soon as it is
/// mapped and planned, so the most urgent class is being read while the
/// later ones are still being mapped, and the ring never drains between
/// classes. The engine ends once the queue is closed and empty.
pub struct OpQueue {
    state: Mutex<QueuedOps>,
    more: Condvar,
    max_len: u32,
    /// Each read covers `len.div_ceil(chunk_len)` chunks (for progress;
    /// 0: reads through files, which count no device chunks).
    chunk_len: u32,
}

struct QueuedOps {
    ops: Vec<ReadOp>,
    closed: bool,
}

/// What [`OpQueue::take`] found at an index.
enum Take {
    Op(ReadOp),
    /// Not pushed yet (the queue is open).
    Pending,
    /// Past the end of a closed queue.
    Ended,
}

impl OpQueue {
    /// An open, empty queue whose reads will be at most `max_len` bytes (the
    /// engine's buffers are sized by it; a longer read fails with EINVAL).
    pub fn new(max_len: u32) -> Self {
        OpQueue {
            state: Mutex::new(QueuedOps {
                ops: Vec::new(),
                closed: false,
            }),
            more: Condvar::new(),
            max_len: max_len.max(1),
            chunk_len: 0,
        }
    }

    /// Count each read as covering `len.div_ceil(chunk_len)` hydration
    /// chunks in the progress counters (a touch read, one block long,
    /// counts as one with `chunk_len` the block size).
    pub fn counting_chunks(mut self, chunk_len: u32) -> Self {
        self.chunk_len = chunk_len;
        self
    }

    /// How many chunks `op` covers (see [`OpQueue::counting_chunks`]).
    pub fn chunks_of(&self, op: &ReadOp) -> u64 {
        match self.chunk_len {
            0 => 0,
            c => u64::from(op.len.div_ceil(c)),
        }
    }

    /// A closed queue holding `ops`.
    pub fn of(ops: &[ReadOp]) -> Self {
        let q = OpQueue::new(ops.iter().map(|op| op.len).max().unwrap_or(4096));
        q.push(ops.iter().copied());
        q.close();
        q
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueuedOps> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Append reads (after every read pushed so far).
    pub fn push(&self, ops: impl IntoIterator<Item = ReadOp>) {
        self.lock().ops.extend(ops);
        self.more.notify_all();
    }

    /// No more reads will come.
    pub fn close(&self) {
        self.lock().closed = true;
        self.more.notify_all();
    }

    /// Reads pushed so far.
    pub fn len(&self) -> usize {
        self.lock().ops.len()
    }

    /// How many reads the queue will ever hold, once it is closed.
    fn final_len(&self) -> Option<usize> {
        let state = self.lock();
        state.closed.then_some(state.ops.len())
    }

    /// A copy of the reads pushed so far.
    pub fn ops(&self) -> Vec<ReadOp> {
        self.lock().ops.clone()
    }

    /// The read at `index`, waiting up to `wait` for it to be pushed.
    fn take(&self, index: usize, wait: Duration) -> Take {
        let mut state = self.lock();
        let give_up = Instant::now() + wait;
        loop {
            if let Some(op) = state.ops.get(index) {
                return Take::Op(*op);
            }
            if state.closed {
                return Take::Ended;
            }
            let left = give_up.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Take::Pending;
            }
            state = match self.more.wait_timeout(state, left) {
                Ok((s, _)) => s,
                Err(e) => e.into_inner().0,
            };
        }
    }
}

/// Run `ops` against `targets`, in order, `cfg.queue_depth` at a time.
pub fn run(
    targets: &[ReadTarget<'_>],
    ops: &[ReadOp],
    cfg: &EngineConfig,
) -> Result<EngineStats, Error> {
    run_queue(targets, &Arc::new(OpQueue::of(ops)), cfg)
}

/// Run the reads of `queue` against `targets`, in order, `cfg.queue_depth`
/// at a time, until the queue is closed and drained (or a stop).
pub fn run_queue(
    targets: &[ReadTarget<'_>],
    queue: &Arc<OpQueue>,
    cfg: &EngineConfig,
) -> Result<EngineStats, Error> {
    let start = Instant::now();
    // No more slots (pread threads, ring entries) than reads, when the
    // queue is known to hold only a few.
    let depth = match queue.final_len() {
        Some(n) => (cfg.queue_depth as usize).min(n).max(1),
        None => cfg.queue_depth.max(1) as usize,
    };
    let max_len = queue.max_len;
    let mut fallback = None;
    if cfg.backend != BackendChoice::Pread {
        let mut sink = IoBuffers::new(max_len)?;
        match uring::run(targets, queue, cfg, depth, &mut sink) {
            Ok(mut stats) => {
                stats.elapsed = start.elapsed();
                return Ok(stats);
            }
            Err(uring::SetupError(e)) if cfg.backend == BackendChoice::Auto => {
                let why = format!("io_uring unavailable ({e}); using the pread pool");
                // Every engine of a run (one per device, and the file-level
                // reads) meets the same refusal: one log line is enough.
                static LOGGED: AtomicBool = AtomicBool::new(false);
                if !LOGGED.swap(true, Ordering::Relaxed) {
                    tracing::warn!("{why}");
                }
                fallback = Some(why);
            }
            Err(uring::SetupError(e)) => return Err(Error::UringUnavailable(e)),
        }
    }
    // Each thread maps its own buffer and faults its pages in as it starts,
    // in parallel.
    let mut stats = pread::run(targets, queue, cfg, depth)?;
    stats.fallback = fallback;
    stats.elapsed = start.elapsed();
    Ok(stats)
}

/// What a completed read leaves to do.
enum Next {
    /// The op is finished; `ok` unless it failed.
    Done { ok: bool },
    /// Resubmit for the remaining bytes, `advanced` bytes further on.
    Resubmit { advanced: u32 },
}

/// Whether `op` can be issued: its target exists and it fits a buffer of
/// `buf_len` bytes. Both backends fail one that cannot with EINVAL.
fn issuable(op: &ReadOp, targets: &[ReadTarget<'_>], buf_len: usize) -> bool {
    op.target < targets.len() && op.len as usize <= buf_len
}

/// Account for one read result of `res` bytes (or `-errno`) for `op` whose
/// current piece is `remaining` bytes long; shared by both backends so short
/// reads, EOF and errors mean the same everywhere.
fn account(
    stats: &mut EngineStats,
    counters: Option<&Progress>,
    target: &ReadTarget<'_>,
    op: &ReadOp,
    remaining: u32,
    res: i64,
) -> Next {
    if res < 0 {
        let errno = (-res) as i32;
        if errno == libc::EINTR || errno == libc::EAGAIN {
            return Next::Resubmit { advanced: 0 };
        }
        stats.fail(op, errno);
        return Next::Done { ok: false };
    }
    let got = res as u32;
    stats.bytes_read += u64::from(got);
    if let Some(c) = counters {
        c.read(u64::from(got));
    }
    if got == 0 {
        stats.eof += 1;
        return Next::Done { ok: true };
    }
    if got >= remaining {
        return Next::Done { ok: true };
    }
    // Short read. On a direct target a piece that ends off the alignment
    // can only be end of file: reading on from there would be EINVAL.
    if target.direct && got % target.align.max(1) != 0 {
        stats.eof += 1;
        return Next::Done { ok: true };
    }
    stats.short_reads += 1;
    Next::Resubmit { advanced: got }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;

    /// A held class is not announced while its reads are done, nor is any
    /// class after it; released, it and the ones waiting behind it are.
    #[test]
    fn a_held_class_waits_for_its_release() {
        let done = Arc::new(Mutex::new(Vec::new()));
        let log = done.clone();
        let p = ClassProgress::new(move |c| log.lock().unwrap().push(c));
        p.hold(10);
        p.add(10, 1);
        p.add(20, 1);
        p.complete(10);
        p.complete(20);
        assert!(done.lock().unwrap().is_empty());
        p.release(10);
        assert_eq!(*done.lock().unwrap(), [10, 20]);
    }

    fn fixture(len: usize) -> std::fs::File {
        let mut f = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        f.write_all(&data).unwrap();
        f
    }

    fn ops(len: u64, io: u32) -> Vec<ReadOp> {
        (0..len.div_ceil(u64::from(io)))
            .map(|i| ReadOp {
                target: 0,
                offset: i * u64::from(io),
                len: io,
                priority: (i % 3) as u32,
            })
            .collect()
    }

    fn run_with(backend: BackendChoice, depth: u32) -> EngineStats {
        let f = fixture(1_000_000);
        let targets = [ReadTarget {
            fd: f.as_fd(),
            direct: false,
            align: 512,
            base: 0,
        }];
        let cfg = EngineConfig {
            queue_depth: depth,
            backend,
            ..Default::default()
        };
        run(&targets, &ops(1_000_000, 65536), &cfg).unwrap()
    }

    #[test]
    fn both_backends_read_every_byte() {
        for backend in [BackendChoice::Auto, BackendChoice::Pread] {
            for depth in [1, 4, 64] {
                let s = run_with(backend, depth);
                assert_eq!(s.bytes_read, 1_000_000, "{backend:?} depth {depth}");
                assert_eq!(s.ios_done, s.ios_planned);
                assert_eq!(s.errors, 0);
                assert_eq!(s.eof, 1, "last read is short at EOF");
                let mut done = s.completed.clone();
                done.sort_unstable();
                assert_eq!(done, (0..s.ios_planned as usize).collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn errors_are_counted_not_fatal() {
        let f = fixture(8192);
        let targets = [ReadTarget {
            fd: f.as_fd(),
            direct: false,
            align: 512,
            base: 0,
        }];
        let mut bad = ops(8192, 4096);
        bad.push(ReadOp {
            target: 0,
            offset: u64::MAX - 10, // EINVAL: offset out of range
            len: 4096,
            priority: 0,
        });
        for backend in [BackendChoice::Auto, BackendChoice::Pread] {
            let cfg = EngineConfig {
                backend,
                ..Default::default()
            };
            let s = run(&targets, &bad, &cfg).unwrap();
            assert_eq!(s.bytes_read, 8192);
            assert_eq!(s.errors, 1, "{backend:?}");
            assert_eq!(s.failures[0].errno, libc::EINVAL);
        }
    }

    #[test]
    fn stop_signal_stops_issuing() {
        let f = fixture(65536);
        let targets = [ReadTarget {
            fd: f.as_fd(),
            direct: false,
            align: 512,
            base: 0,
        }];
        let stop = StopSignal::default();
        stop.cancel();
        for backend in [BackendChoice::Auto, BackendChoice::Pread] {
            let cfg = EngineConfig {
                backend,
                stop: stop.clone(),
                ..Default::default()
            };
            let s = run(&targets, &ops(65536, 4096), &cfg).unwrap();
            assert_eq!(s.stopped, Some(StopReason::Cancelled));
            assert_eq!(s.not_issued, 16);
            assert_eq!(s.bytes_read, 0);
        }
    }

    #[test]
    fn classes_are_announced_in_order() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let progress = Arc::new(ClassProgress::new(move |p| s2.lock().unwrap().push(p)));
        let all = ops(1_000_000, 65536);
        for p in 0..3 {
            progress.add(p, all.iter().filter(|o| o.priority == p).count() as u64);
        }
        let f = fixture(1_000_000);
        let targets = [ReadTarget {
            fd: f.as_fd(),
            direct: false,
            align: 512,
            base: 0,
        }];
        let mut sorted = all.clone();
        sorted.sort_by_key(|o| (o.priority, o.offset));
        let cfg = EngineConfig {
            progress: Some(progress),
            ..Default::default()
        };
        run(&targets, &sorted, &cfg).unwrap();
        assert_eq!(*seen.lock().unwrap(), [0, 1, 2]);
    }
}
