//! The lazy-volume model: chunk hydration state, the fetch scheduler, rate caps,
//! counters and error injection of a snapshot-restored block volume.
//!
//! It owns everything that makes the testbed behave like an EBS volume restored
//! from a snapshot, and nothing FUSE-specific, so it can be unit-tested directly:
//! the image is split into fixed-size chunks; the first read touching a cold
//! chunk pays a fetch (latency, optional jitter, optional throughput / IOPS caps,
//! at most `concurrency` fetches in flight); concurrent first readers of a chunk
//! share one fetch; afterwards the chunk is served straight from the backing
//! image, mapped into memory (`crate::backing`).
//! Failures can be injected per chunk: reads that fail with EIO, or reads that
//! hang (a device that never answers) until the hang set is cleared.
//! The backing image is opened read-only and never written.

use std::fmt;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::backing::BackingImage;

/// Default chunk size: 512 KiB, the granularity EBS hydrates snapshot blocks at.
pub const DEFAULT_CHUNK_SIZE: u64 = 512 * 1024;
/// Default fetch latency for the first read of a chunk.
pub const DEFAULT_LATENCY: Duration = Duration::from_millis(4);
/// Default number of chunk fetches allowed in flight at once.
pub const DEFAULT_CONCURRENCY: usize = 8;

/// Errors in a chunk list such as `3,17,100-110`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChunkSetError {
    /// A list element was empty (e.g. `3,,4`).
    #[error("empty element in chunk list {0:?}")]
    Empty(String),
    /// A list element was not a non-negative integer.
    #[error("invalid chunk index {0:?} (expected N or N-M)")]
    BadNumber(String),
    /// A range whose start exceeds its end.
    #[error("inverted chunk range {start}-{end}")]
    Inverted {
        /// First chunk of the range as written.
        start: u64,
        /// Last chunk of the range as written.
        end: u64,
    },
}

/// A set of chunk indexes stored as sorted, merged, inclusive ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChunkSet {
    ranges: Vec<(u64, u64)>,
}

impl ChunkSet {
    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a set from inclusive ranges in any order; overlapping and adjacent
    /// ranges are merged.
    pub fn from_ranges(mut ranges: Vec<(u64, u64)>) -> Result<Self, ChunkSetError> {
        if let Some(&(start, end)) = ranges.iter().find(|(s, e)| s > e) {
            return Err(ChunkSetError::Inverted { start, end });
        }
        ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
        for (s, e) in ranges {
            match merged.last_mut() {
                Some(last) if s <= last.1.saturating_add(1) => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        Ok(Self { ranges: merged })
    }

    /// True when no chunk is in the set.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// True when `chunk` is in the set.
    pub fn contains(&self, chunk: u64) -> bool {
        self.first_in(chunk, chunk).is_some()
    }

    /// The smallest member of the set within `first..=last`, if any.
    pub fn first_in(&self, first: u64, last: u64) -> Option<u64> {
        // Ranges are sorted and disjoint: find the first range ending at or after `first`.
        let idx = self.ranges.partition_point(|&(_, e)| e < first);
        let &(s, _) = self.ranges.get(idx)?;
        let candidate = s.max(first);
        (candidate <= last).then_some(candidate)
    }

    /// The merged inclusive ranges.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }
}

impl FromStr for ChunkSet {
    type Err = ChunkSetError;

    /// Parses `""` (empty set) or a comma-separated list of `N` / `N-M` (inclusive).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(Self::new());
        }
        let num = |t: &str| -> Result<u64, ChunkSetError> {
            t.trim()
                .parse::<u64>()
                .map_err(|_| ChunkSetError::BadNumber(t.trim().to_string()))
        };
        let mut ranges = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            if part.is_empty() {
                return Err(ChunkSetError::Empty(s.to_string()));
            }
            match part.split_once('-') {
                Some((a, b)) => ranges.push((num(a)?, num(b)?)),
                None => {
                    let n = num(part)?;
                    ranges.push((n, n));
                }
            }
        }
        Self::from_ranges(ranges)
    }
}

impl fmt::Display for ChunkSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, &(s, e)) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if s == e {
                write!(f, "{s}")?;
            } else {
                write!(f, "{s}-{e}")?;
            }
        }
        Ok(())
    }
}

/// Parameters of the simulated volume.
#[derive(Clone, Debug)]
pub struct LazyConfig {
    /// Hydration granularity in bytes (a positive multiple of 512).
    pub chunk_size: u64,
    /// Time one chunk fetch takes once it has a slot and its rate tokens.
    pub latency: Duration,
    /// Upper bound of uniform random extra latency added to each fetch.
    pub jitter: Duration,
    /// Maximum number of fetches in flight at once.
    pub concurrency: usize,
    /// Optional cap on fetched bytes per second.
    pub max_bytes_per_sec: Option<u64>,
    /// Optional cap on fetches started per second.
    pub max_fetches_per_sec: Option<u64>,
    /// Chunks whose reads fail with EIO (every time; nothing is fetched).
    pub fail_chunks: ChunkSet,
    /// Chunks whose reads never answer (a hung device): they wait, fetching
    /// nothing, until the hang set no longer covers them.
    pub hang_chunks: ChunkSet,
}

impl Default for LazyConfig {
    fn default() -> Self {
        Self {
            chunk_size: DEFAULT_CHUNK_SIZE,
            latency: DEFAULT_LATENCY,
            jitter: Duration::ZERO,
            concurrency: DEFAULT_CONCURRENCY,
            max_bytes_per_sec: None,
            max_fetches_per_sec: None,
            fail_chunks: ChunkSet::new(),
            hang_chunks: ChunkSet::new(),
        }
    }
}

/// Errors building a [`LazyVolume`].
#[derive(Debug, thiserror::Error)]
pub enum LazyError {
    /// The chunk size is zero or not a multiple of 512.
    #[error("chunk size must be a positive multiple of 512 bytes, got {0}")]
    BadChunkSize(u64),
    /// The concurrency cap is zero.
    #[error("concurrency must be at least 1")]
    BadConcurrency,
    /// A rate cap of zero was given (use `None` for "no cap").
    #[error("rate caps must be positive when set")]
    BadRate,
    /// The backing image could not be opened, inspected or mapped.
    #[error("cannot open backing image {path}: {source}")]
    Open {
        /// The image path.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The read touched a chunk in the failure-injection set.
    #[error("injected failure on chunk {chunk}")]
    Injected {
        /// The first failed chunk the read touched.
        chunk: u64,
    },
}

impl ReadError {
    /// The errno to report to the reader (EIO for injected failures).
    pub fn errno(&self) -> i32 {
        match self {
            ReadError::Injected { .. } => libc::EIO,
        }
    }
}

/// One completed fetch, in the order fetches completed.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct HydrationEvent {
    /// Chunk index.
    pub chunk: u64,
    /// When the fetch took its concurrency slot, µs since the last reset.
    pub start_us: u64,
    /// When the chunk became hydrated (readable), µs since the last reset.
    pub end_us: u64,
    /// When the fetch ended and its slot freed, on the volume's clock
    /// ([`LazyVolume`]'s fetch doc): `end_us` less the testbed thread's
    /// wake-up delay. Absent from older results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot_end_us: Option<u64>,
}

impl HydrationEvent {
    /// How long the fetch held its slot, µs.
    pub fn slot_us(&self) -> u64 {
        self.slot_end_us
            .unwrap_or(self.end_us)
            .saturating_sub(self.start_us)
    }
}

/// A snapshot of the counters, as served by the control interface.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stats {
    /// Size of the exposed image in bytes.
    pub image_size: u64,
    /// Chunk size in bytes.
    pub chunk_size: u64,
    /// Number of chunks (the last may be partial).
    pub chunks: u64,
    /// Configured fetch latency, µs.
    pub latency_us: u64,
    /// Configured jitter bound, µs.
    pub jitter_us: u64,
    /// Configured cap on fetches in flight.
    pub concurrency: usize,
    /// Configured cap on fetched bytes per second, if any.
    pub max_bytes_per_sec: Option<u64>,
    /// Configured cap on fetches per second, if any.
    pub max_fetches_per_sec: Option<u64>,
    /// Current failure-injection set, e.g. `3,17,100-110`.
    pub fail_chunks: String,
    /// Current hang set: reads touching these chunks do not answer.
    #[serde(default)]
    pub hang_chunks: String,
    /// Reads waiting on a hung chunk right now.
    #[serde(default)]
    pub hanging_reads: usize,
    /// Time since the last reset (or start), µs.
    pub since_reset_us: u64,
    /// Read requests received (served or failed).
    pub reads: u64,
    /// Read requests that failed (injected failures).
    pub failed_reads: u64,
    /// Bytes returned to readers by successful reads.
    pub bytes_read: u64,
    /// Chunk fetches started.
    pub fetches: u64,
    /// Bytes covered by started fetches (chunk sizes; the last chunk may be short).
    pub fetched_bytes: u64,
    /// Chunks currently hydrated.
    pub hydrated_chunks: u64,
    /// Fetches in flight right now, with those waiting for a slot.
    pub inflight_fetches: usize,
    /// Largest number of fetches in flight at once since the last reset.
    pub peak_concurrent_fetches: usize,
    /// Fetches that had to wait for a concurrency slot.
    pub slot_waits: u64,
    /// Hydrated chunk indexes, ascending (omitted in brief stats).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hydrated: Option<Vec<u64>>,
    /// Completed fetches in completion order (omitted in brief stats).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hydration_order: Option<Vec<HydrationEvent>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChunkState {
    Cold,
    Fetching,
    Hydrated,
}

/// Pacing limiter for the optional rate caps: each fetch reserves the next free
/// start time, so fetches start at most at the configured rates (no burst).
#[derive(Debug)]
struct Pacer {
    bytes_per_sec: Option<u64>,
    fetches_per_sec: Option<u64>,
    next_bytes: Instant,
    next_fetch: Instant,
}

impl Pacer {
    fn new(bytes_per_sec: Option<u64>, fetches_per_sec: Option<u64>, now: Instant) -> Self {
        Self {
            bytes_per_sec,
            fetches_per_sec,
            next_bytes: now,
            next_fetch: now,
        }
    }

    /// Reserves capacity for one fetch of `bytes` and returns when it may start.
    fn reserve(&mut self, now: Instant, bytes: u64) -> Instant {
        let mut start = now;
        if self.bytes_per_sec.is_some() {
            start = start.max(self.next_bytes);
        }
        if self.fetches_per_sec.is_some() {
            start = start.max(self.next_fetch);
        }
        if let Some(rate) = self.bytes_per_sec {
            self.next_bytes = start + Duration::from_secs_f64(bytes as f64 / rate as f64);
        }
        if let Some(rate) = self.fetches_per_sec {
            self.next_fetch = start + Duration::from_secs_f64(1.0 / rate as f64);
        }
        start
    }
}

#[derive(Debug)]
struct State {
    chunks: Vec<ChunkState>,
    /// Bumped by every reset; fetches started in an older epoch do not hydrate.
    epoch: u64,
    reset_at: Instant,
    inflight: usize,
    peak_inflight: usize,
    fetches: u64,
    fetched_bytes: u64,
    hydrated: u64,
    reads: u64,
    failed_reads: u64,
    bytes_read: u64,
    slot_waits: u64,
    order: Vec<HydrationEvent>,
    fail: ChunkSet,
    hang: ChunkSet,
    hanging_reads: usize,
    pacer: Pacer,
    /// Each fetch slot's latest fetch: when it took the slot and when it
    /// ends. A slot is free again at the end, whenever the thread that
    /// sleeps through it is next scheduled.
    slots: Vec<(Instant, Instant)>,
}

impl State {
    /// Slots whose latest fetch runs at instant `t`.
    fn busy_at(&self, t: Instant) -> usize {
        self.slots
            .iter()
            .filter(|&&(from, to)| from <= t && t < to)
            .count()
    }
}

/// A lazily hydrated view of a backing image.
#[derive(Debug)]
pub struct LazyVolume {
    image: BackingImage,
    size: u64,
    cfg: LazyConfig,
    state: Mutex<State>,
    /// Signalled whenever a chunk changes state or a reset happens.
    chunk_cv: Condvar,
}

/// A configuration the model can run: chunks a positive multiple of 512,
/// at least one fetch slot, rate caps positive when set.
fn check_config(cfg: &LazyConfig) -> Result<(), LazyError> {
    if cfg.chunk_size == 0 || !cfg.chunk_size.is_multiple_of(512) {
        return Err(LazyError::BadChunkSize(cfg.chunk_size));
    }
    if cfg.concurrency == 0 {
        return Err(LazyError::BadConcurrency);
    }
    if cfg.max_bytes_per_sec == Some(0) || cfg.max_fetches_per_sec == Some(0) {
        return Err(LazyError::BadRate);
    }
    Ok(())
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl LazyVolume {
    /// Opens `path` read-only as the backing image.
    pub fn open(path: &Path, cfg: LazyConfig) -> Result<Self, LazyError> {
        let open_err = |source| LazyError::Open {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(open_err)?;
        let size = file.metadata().map_err(open_err)?.len();
        // Before the mapping: it reads the whole image in.
        check_config(&cfg)?;
        let image = BackingImage::map(&file, size).map_err(open_err)?;
        Ok(Self::with_image(image, size, cfg))
    }

    /// The volume over an image already mapped, of `size` bytes, with a
    /// checked configuration.
    fn with_image(image: BackingImage, size: u64, cfg: LazyConfig) -> Self {
        let nchunks = size.div_ceil(cfg.chunk_size);
        let now = Instant::now();
        let state = State {
            chunks: vec![ChunkState::Cold; usize::try_from(nchunks).unwrap_or(usize::MAX)],
            epoch: 0,
            reset_at: now,
            inflight: 0,
            peak_inflight: 0,
            fetches: 0,
            fetched_bytes: 0,
            hydrated: 0,
            reads: 0,
            failed_reads: 0,
            bytes_read: 0,
            slot_waits: 0,
            order: Vec::new(),
            fail: cfg.fail_chunks.clone(),
            hang: cfg.hang_chunks.clone(),
            hanging_reads: 0,
            pacer: Pacer::new(cfg.max_bytes_per_sec, cfg.max_fetches_per_sec, now),
            slots: vec![(now, now); cfg.concurrency],
        };
        Self {
            image,
            size,
            cfg,
            state: Mutex::new(state),
            chunk_cv: Condvar::new(),
        }
    }

    /// Size of the image in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The configuration the volume was built with (the failure set may have
    /// changed since; see [`LazyVolume::stats`]).
    pub fn config(&self) -> &LazyConfig {
        &self.cfg
    }

    /// Number of chunks.
    pub fn chunk_count(&self) -> u64 {
        self.size.div_ceil(self.cfg.chunk_size)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves counters merely stale, never
        // inconsistent enough to matter for a testbed: keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn chunk_len(&self, chunk: u64) -> u64 {
        let start = chunk * self.cfg.chunk_size;
        self.cfg.chunk_size.min(self.size.saturating_sub(start))
    }

    /// The chunk range `first..=last` touched by a read, or `None` for an empty
    /// read / a read at or past the end of the image. Also returns the clamped end.
    fn span(&self, offset: u64, len: usize) -> Option<(u64, u64, u64)> {
        if len == 0 || offset >= self.size {
            return None;
        }
        let end = offset.saturating_add(len as u64).min(self.size);
        Some((
            offset / self.cfg.chunk_size,
            (end - 1) / self.cfg.chunk_size,
            end,
        ))
    }

    fn idx(chunk: u64) -> usize {
        // Chunk indexes come from offsets below `size`, and `chunks` was
        // allocated with that many entries, so this always fits.
        usize::try_from(chunk).unwrap_or(usize::MAX)
    }

    /// Hands `offset..end` of the backing image to `f`, straight from its
    /// mapping.
    fn serve<R>(&self, offset: u64, end: u64, f: impl FnOnce(&[u8]) -> R) -> R {
        self.lock().bytes_read += end - offset;
        f(self.image.bytes(offset, end))
    }

    /// Serves the read at once if every chunk it touches is hydrated (or it
    /// touches a failed chunk, or nothing); returns `None` when it would have to
    /// wait for a fetch. Never blocks on a fetch, so a FUSE dispatcher thread can
    /// call it inline.
    pub fn try_read_hot(&self, offset: u64, len: usize) -> Option<Result<Vec<u8>, ReadError>> {
        self.try_read_hot_with(offset, len, <[u8]>::to_vec).ok()
    }

    /// [`LazyVolume::try_read_hot`], handing the bytes to `f` instead of
    /// copying them out; `Err(f)` when the read would wait for a fetch.
    pub fn try_read_hot_with<R, F: FnOnce(&[u8]) -> R>(
        &self,
        offset: u64,
        len: usize,
        f: F,
    ) -> Result<Result<R, ReadError>, F> {
        let mut st = self.lock();
        let Some((first, last, end)) = self.span(offset, len) else {
            st.reads += 1;
            return Ok(Ok(f(&[])));
        };
        if let Some(chunk) = st.fail.first_in(first, last) {
            st.reads += 1;
            st.failed_reads += 1;
            return Ok(Err(ReadError::Injected { chunk }));
        }
        let hot = (first..=last).all(|c| st.chunks[Self::idx(c)] == ChunkState::Hydrated);
        if !hot || st.hang.first_in(first, last).is_some() {
            return Err(f);
        }
        st.reads += 1;
        drop(st);
        Ok(Ok(self.serve(offset, end, f)))
    }

    /// Reads `len` bytes at `offset` (clamped to the image end), first fetching
    /// any cold chunk it touches. Blocks for the fetches.
    pub fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, ReadError> {
        self.read_with(offset, len, <[u8]>::to_vec)
    }

    /// [`LazyVolume::read`], handing the bytes to `f` instead of copying
    /// them out.
    pub fn read_with<R>(
        &self,
        offset: u64,
        len: usize,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, ReadError> {
        let f = match self.try_read_hot_with(offset, len, f) {
            Ok(res) => return res,
            Err(f) => f,
        };
        let mut st = self.lock();
        st.reads += 1;
        let Some((first, last, end)) = self.span(offset, len) else {
            return Ok(f(&[]));
        };
        if let Some(chunk) = st.fail.first_in(first, last) {
            st.failed_reads += 1;
            return Err(ReadError::Injected { chunk });
        }
        if st.hang.first_in(first, last).is_some() {
            st.hanging_reads += 1;
            while st.hang.first_in(first, last).is_some() {
                st = self.chunk_cv.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            st.hanging_reads -= 1;
        }
        loop {
            let epoch = st.epoch;
            let mut claims = Vec::new();
            let mut all_hot = true;
            for c in first..=last {
                let slot = &mut st.chunks[Self::idx(c)];
                match *slot {
                    ChunkState::Hydrated => {}
                    ChunkState::Fetching => all_hot = false,
                    ChunkState::Cold => {
                        *slot = ChunkState::Fetching;
                        claims.push(c);
                        all_hot = false;
                    }
                }
            }
            if all_hot {
                break;
            }
            if claims.is_empty() {
                // Someone else is fetching what we need: wait for them (a reset
                // turns their chunks cold again, and the next pass claims them).
                st = self.chunk_cv.wait(st).unwrap_or_else(|p| p.into_inner());
            } else {
                drop(st);
                self.fetch_all(&claims, epoch);
                st = self.lock();
            }
        }
        drop(st);
        Ok(self.serve(offset, end, f))
    }

    /// Fetches the claimed chunks, in parallel when there are several (a read
    /// spanning chunks should not pay their latencies one after another).
    fn fetch_all(&self, claims: &[u64], epoch: u64) {
        match claims {
            [] => {}
            [one] => self.fetch(*one, epoch),
            [head, rest @ ..] => std::thread::scope(|s| {
                for &c in rest {
                    s.spawn(move || self.fetch(c, epoch));
                }
                self.fetch(*head, epoch);
            }),
        }
    }

    /// One fetch: take the slot that frees first (waiting for it if none is
    /// free), wait for rate tokens, wait the latency, mark the chunk
    /// hydrated (unless a reset happened meanwhile).
    ///
    /// The slots keep the volume's own time. EBS fetches snapshot blocks on
    /// its own hardware: a fetch slot frees when the fetch ends, however
    /// busy the instance's CPUs are. So a fetch that has to wait takes its
    /// slot at the instant the previous fetch there ends, not when the
    /// thread that slept through that fetch is next scheduled; on two busy
    /// CPUs that wake-up came 0.1-0.2 ms late, and each late wake-up used
    /// to hold the slot and then delay the next fetch by as much (at 32
    /// slots the fetches averaged 4.15 ms against the 4 ms configured, and
    /// the slots idled 5% of the time with fetches waiting for them). A late
    /// wake-up now delays only its own chunk's delivery, as a slow network
    /// would.
    fn fetch(&self, chunk: u64, epoch: u64) {
        let bytes = self.chunk_len(chunk);
        let mut st = self.lock();
        let now = Instant::now();
        let (slot, free_at) = st
            .slots
            .iter()
            .enumerate()
            .map(|(i, &(_, end))| (i, end))
            .min_by_key(|&(_, end)| end)
            .unwrap_or((0, now));
        if free_at > now {
            st.slot_waits += 1;
        }
        let taken = now.max(free_at);
        let start_at = st.pacer.reserve(taken, bytes);
        let done_at = start_at + self.fetch_delay();
        if let Some(s) = st.slots.get_mut(slot) {
            *s = (taken, done_at);
        }
        st.inflight += 1;
        st.peak_inflight = st.peak_inflight.max(st.busy_at(taken).max(1));
        let counted = st.epoch == epoch;
        if counted {
            st.fetches += 1;
            st.fetched_bytes += bytes;
        }
        let start_us = micros(taken.saturating_duration_since(st.reset_at));
        let slot_end_us = micros(done_at.saturating_duration_since(st.reset_at));
        drop(st);

        let wait = done_at.saturating_duration_since(Instant::now());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }

        let mut st = self.lock();
        st.inflight -= 1;
        let i = Self::idx(chunk);
        if st.epoch == epoch && st.chunks[i] == ChunkState::Fetching {
            st.chunks[i] = ChunkState::Hydrated;
            st.hydrated += 1;
            let end_us = micros(Instant::now().saturating_duration_since(st.reset_at));
            st.order.push(HydrationEvent {
                chunk,
                start_us,
                end_us,
                slot_end_us: Some(slot_end_us),
            });
        }
        drop(st);
        self.chunk_cv.notify_all();
    }

    /// The latency of one fetch: the configured latency plus uniform jitter.
    fn fetch_delay(&self) -> Duration {
        if self.cfg.jitter.is_zero() {
            self.cfg.latency
        } else {
            self.cfg.latency + Duration::from_micros(fastrand::u64(0..=micros(self.cfg.jitter)))
        }
    }

    /// Makes every chunk cold again and zeroes the counters. Fetches in flight
    /// finish without hydrating anything; their readers fetch again.
    pub fn reset(&self) {
        let mut st = self.lock();
        st.epoch += 1;
        st.chunks.iter_mut().for_each(|c| *c = ChunkState::Cold);
        let now = Instant::now();
        st.reset_at = now;
        st.peak_inflight = st.busy_at(now);
        st.fetches = 0;
        st.fetched_bytes = 0;
        st.hydrated = 0;
        st.reads = 0;
        st.failed_reads = 0;
        st.bytes_read = 0;
        st.slot_waits = 0;
        st.order.clear();
        st.pacer = Pacer::new(
            self.cfg.max_bytes_per_sec,
            self.cfg.max_fetches_per_sec,
            now,
        );
        drop(st);
        self.chunk_cv.notify_all();
    }

    /// Replaces the failure-injection set.
    pub fn set_fail_chunks(&self, set: ChunkSet) {
        self.lock().fail = set;
    }

    /// Replaces the hang set; reads waiting on chunks it no longer covers go on
    /// (they fetch as usual).
    pub fn set_hang_chunks(&self, set: ChunkSet) {
        self.lock().hang = set;
        self.chunk_cv.notify_all();
    }

    /// A snapshot of the counters; `detailed` includes the hydrated-chunk list
    /// and the hydration order.
    pub fn stats(&self, detailed: bool) -> Stats {
        let st = self.lock();
        let (hydrated, order) = if detailed {
            let list = st
                .chunks
                .iter()
                .enumerate()
                .filter(|(_, s)| **s == ChunkState::Hydrated)
                .map(|(i, _)| i as u64)
                .collect();
            (Some(list), Some(st.order.clone()))
        } else {
            (None, None)
        };
        Stats {
            image_size: self.size,
            chunk_size: self.cfg.chunk_size,
            chunks: self.chunk_count(),
            latency_us: micros(self.cfg.latency),
            jitter_us: micros(self.cfg.jitter),
            concurrency: self.cfg.concurrency,
            max_bytes_per_sec: self.cfg.max_bytes_per_sec,
            max_fetches_per_sec: self.cfg.max_fetches_per_sec,
            fail_chunks: st.fail.to_string(),
            hang_chunks: st.hang.to_string(),
            hanging_reads: st.hanging_reads,
            since_reset_us: micros(st.reset_at.elapsed()),
            reads: st.reads,
            failed_reads: st.failed_reads,
            bytes_read: st.bytes_read,
            fetches: st.fetches,
            fetched_bytes: st.fetched_bytes,
            hydrated_chunks: st.hydrated,
            inflight_fetches: st.inflight,
            peak_concurrent_fetches: st.peak_inflight,
            slot_waits: st.slot_waits,
            hydrated,
            hydration_order: order,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::Arc;

    const CS: u64 = 4096;

    fn image(chunks: u64) -> (tempfile::NamedTempFile, Vec<u8>) {
        let mut f = tempfile::NamedTempFile::new().expect("tempfile");
        let data: Vec<u8> = (0..chunks * CS)
            .map(|i| (i.wrapping_mul(2654435761) >> 7) as u8)
            .collect();
        f.write_all(&data).expect("write image");
        (f, data)
    }

    fn vol(chunks: u64, cfg: LazyConfig) -> (Arc<LazyVolume>, Vec<u8>, tempfile::NamedTempFile) {
        let (f, data) = image(chunks);
        let v = LazyVolume::open(f.path(), cfg).expect("open");
        (Arc::new(v), data, f)
    }

    fn cfg(latency_ms: u64, concurrency: usize) -> LazyConfig {
        LazyConfig {
            chunk_size: CS,
            latency: Duration::from_millis(latency_ms),
            concurrency,
            ..LazyConfig::default()
        }
    }

    #[test]
    fn chunk_set_parses_and_merges() {
        let s: ChunkSet = "3,17,100-110, 4 ,111".parse().expect("parse");
        assert_eq!(s.ranges(), &[(3, 4), (17, 17), (100, 111)]);
        assert_eq!(s.to_string(), "3-4,17,100-111");
        assert!(s.contains(105) && s.contains(3) && !s.contains(5) && !s.contains(112));
        assert_eq!(s.first_in(5, 20), Some(17));
        assert_eq!(s.first_in(18, 99), None);
        assert_eq!(s.first_in(0, 3), Some(3));
        assert!("".parse::<ChunkSet>().expect("empty").is_empty());
        assert!(matches!(
            "3,,4".parse::<ChunkSet>(),
            Err(ChunkSetError::Empty(_))
        ));
        assert!(matches!(
            "x".parse::<ChunkSet>(),
            Err(ChunkSetError::BadNumber(_))
        ));
        assert!(matches!(
            "9-2".parse::<ChunkSet>(),
            Err(ChunkSetError::Inverted { .. })
        ));
        assert!(matches!(
            "-2".parse::<ChunkSet>(),
            Err(ChunkSetError::BadNumber(_))
        ));
    }

    #[test]
    fn rejects_bad_config() {
        let (f, _) = image(1);
        let bad = |cfg| LazyVolume::open(f.path(), cfg).expect_err("must fail");
        assert!(matches!(
            bad(LazyConfig {
                chunk_size: 1000,
                ..LazyConfig::default()
            }),
            LazyError::BadChunkSize(1000)
        ));
        assert!(matches!(
            bad(LazyConfig {
                concurrency: 0,
                ..LazyConfig::default()
            }),
            LazyError::BadConcurrency
        ));
        assert!(matches!(
            bad(LazyConfig {
                max_fetches_per_sec: Some(0),
                ..LazyConfig::default()
            }),
            LazyError::BadRate
        ));
        assert!(matches!(
            LazyVolume::open(Path::new("/nonexistent/img"), LazyConfig::default()),
            Err(LazyError::Open { .. })
        ));
    }

    #[test]
    fn first_read_fetches_once_and_data_matches() {
        let (v, data, _f) = vol(8, cfg(1, 8));
        assert!(
            v.try_read_hot(5 * CS + 10, 1).is_none(),
            "cold chunk is not hot"
        );
        let got = v.read(5 * CS + 10, 100).expect("read");
        assert_eq!(got, &data[(5 * CS + 10) as usize..(5 * CS + 110) as usize]);
        let got2 = v
            .try_read_hot(5 * CS, CS as usize)
            .expect("hot now")
            .expect("read");
        assert_eq!(got2, &data[(5 * CS) as usize..(6 * CS) as usize]);
        let s = v.stats(true);
        assert_eq!(s.fetches, 1);
        assert_eq!(s.hydrated_chunks, 1);
        assert_eq!(s.hydrated, Some(vec![5]));
        assert_eq!(s.reads, 2);
        assert_eq!(s.bytes_read, 100 + CS);
        let order = s.hydration_order.expect("order");
        assert_eq!(order.len(), 1);
        assert_eq!(order[0].chunk, 5);
        assert!(order[0].end_us >= order[0].start_us + 1000);
    }

    #[test]
    fn an_empty_image_maps_and_serves_empty_reads() {
        let f = tempfile::NamedTempFile::new().expect("tempfile");
        let v = LazyVolume::open(f.path(), cfg(1, 8)).expect("open");
        assert_eq!(v.chunk_count(), 0);
        assert!(v.read(0, 4096).expect("read").is_empty());
        assert_eq!(v.stats(false).fetches, 0);
    }

    #[test]
    fn read_spanning_chunks_fetches_each_and_clamps_at_end() {
        let (v, data, _f) = vol(4, cfg(1, 8));
        let got = v.read(CS - 1, (2 * CS + 2) as usize).expect("read");
        assert_eq!(got, &data[(CS - 1) as usize..(3 * CS + 1) as usize]);
        assert_eq!(v.stats(true).hydrated, Some(vec![0, 1, 2, 3]));
        // Past the end: empty, no fetch.
        assert!(v.read(4 * CS, 10).expect("eof").is_empty());
        let tail = v.read(4 * CS - 3, 100).expect("tail");
        assert_eq!(tail.len(), 3);
        assert_eq!(v.stats(false).fetches, 4);
    }

    /// `n` readers released at once, reader `i` reading the first byte of
    /// chunk `i`.
    fn first_bytes_at_once(v: &Arc<LazyVolume>, n: u64) {
        let barrier = Arc::new(std::sync::Barrier::new(n as usize));
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let v = Arc::clone(v);
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || {
                    barrier.wait();
                    v.read(i * CS, 1).map(|b| b.len())
                })
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().expect("join").expect("read"), 1);
        }
    }

    #[test]
    fn concurrency_cap_is_respected() {
        let (v, _, _f) = vol(32, cfg(100, 8));
        first_bytes_at_once(&v, 16);
        let s = v.stats(false);
        assert_eq!(s.fetches, 16);
        assert_eq!(s.peak_concurrent_fetches, 8);
        assert_eq!(s.slot_waits, 8);
        assert_eq!(s.inflight_fetches, 0);
    }

    #[test]
    fn a_waiting_fetch_takes_its_slot_when_the_last_one_ends() {
        // One slot, six readers at once: the fetches run back to back on the
        // volume's clock, each starting the microsecond the one before it
        // ends, however late the threads that slept through them woke.
        let (v, _, _f) = vol(8, cfg(10, 1));
        first_bytes_at_once(&v, 6);
        let s = v.stats(true);
        let mut starts: Vec<u64> = s
            .hydration_order
            .expect("order")
            .iter()
            .map(|e| e.start_us)
            .collect();
        starts.sort_unstable();
        for w in starts.windows(2) {
            assert!((9_999..=10_001).contains(&(w[1] - w[0])), "{starts:?}");
        }
        assert_eq!((s.peak_concurrent_fetches, s.slot_waits), (1, 5));
    }

    #[test]
    fn concurrent_readers_of_one_chunk_share_a_fetch() {
        let (v, _, _f) = vol(4, cfg(20, 8));
        let handles: Vec<_> = (0..8u64)
            .map(|i| {
                let v = Arc::clone(&v);
                std::thread::spawn(move || v.read(2 * CS + i * 100, 10).map(|b| b.len()))
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().expect("join").expect("read"), 10);
        }
        let s = v.stats(true);
        assert_eq!(s.fetches, 1);
        assert_eq!(s.reads, 8);
        assert_eq!(s.hydrated, Some(vec![2]));
    }

    #[test]
    fn injected_failures_and_runtime_update() {
        let mut c = cfg(0, 8);
        c.fail_chunks = "2".parse().expect("parse");
        let (v, _, _f) = vol(4, c);
        let err = v.read(2 * CS, 1).expect_err("fails");
        assert!(matches!(err, ReadError::Injected { chunk: 2 }));
        assert_eq!(err.errno(), libc::EIO);
        // A read spanning into the failed chunk fails too; neighbours work.
        assert!(v.read(2 * CS - 1, 2).is_err());
        assert!(v.read(CS, 1).is_ok());
        assert!(v.read(3 * CS, 1).is_ok());
        let s = v.stats(true);
        assert_eq!(s.failed_reads, 2);
        assert_eq!(s.fail_chunks, "2");
        assert_eq!(s.hydrated, Some(vec![1, 3]));
        v.set_fail_chunks(ChunkSet::new());
        assert!(v.read(2 * CS, 1).is_ok());
        v.set_fail_chunks("0-1".parse().expect("parse"));
        assert!(
            v.read(0, 1).is_err(),
            "failure applies to hydrated chunks too"
        );
    }

    #[test]
    fn hung_chunks_do_not_answer_until_cleared() {
        let mut c = cfg(0, 8);
        c.hang_chunks = "1".parse().expect("parse");
        let (v, data, _f) = vol(4, c);
        assert!(v.read(0, 1).is_ok(), "other chunks answer");
        let (tx, rx) = std::sync::mpsc::channel();
        let v2 = Arc::clone(&v);
        std::thread::spawn(move || {
            let _ = tx.send(v2.read(CS + 5, 10));
        });
        assert!(
            rx.recv_timeout(Duration::from_millis(300)).is_err(),
            "a read of a hung chunk answered"
        );
        let s = v.stats(false);
        assert_eq!(
            (s.hanging_reads, s.fetches),
            (1, 1),
            "waiting, nothing fetched"
        );
        assert_eq!(s.hang_chunks, "1");
        assert!(v.try_read_hot(CS, 1).is_none(), "a hung chunk is never hot");
        v.set_hang_chunks(ChunkSet::new());
        let got = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("answers once cleared")
            .expect("read");
        assert_eq!(got, &data[(CS + 5) as usize..(CS + 15) as usize]);
        let s = v.stats(true);
        assert_eq!(s.hanging_reads, 0);
        assert_eq!(s.hydrated, Some(vec![0, 1]));
    }

    #[test]
    fn reset_makes_everything_cold() {
        let (v, _, _f) = vol(4, cfg(0, 8));
        v.read(0, (4 * CS) as usize).expect("read");
        assert_eq!(v.stats(false).hydrated_chunks, 4);
        v.reset();
        let s = v.stats(true);
        assert_eq!(
            (s.fetches, s.hydrated_chunks, s.reads, s.bytes_read),
            (0, 0, 0, 0)
        );
        assert_eq!(s.hydrated, Some(vec![]));
        assert!(v.try_read_hot(0, 1).is_none());
        v.read(0, 1).expect("read");
        assert_eq!(v.stats(false).fetches, 1);
    }

    #[test]
    fn reset_during_fetch_does_not_hydrate_and_waiters_refetch() {
        let (v, _, _f) = vol(2, cfg(50, 8));
        let v2 = Arc::clone(&v);
        let h = std::thread::spawn(move || v2.read(0, 1).map(|b| b.len()));
        while v.stats(false).inflight_fetches == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        v.reset();
        assert_eq!(h.join().expect("join").expect("read"), 1);
        let s = v.stats(true);
        // The reader re-fetched chunk 0 in the new epoch.
        assert_eq!(s.fetches, 1);
        assert_eq!(s.hydrated, Some(vec![0]));
    }

    #[test]
    fn iops_cap_paces_fetches() {
        let mut c = cfg(0, 8);
        c.max_fetches_per_sec = Some(200); // one every 5 ms
        let (v, _, _f) = vol(8, c);
        let t = Instant::now();
        for i in 0..5 {
            v.read(i * CS, 1).expect("read");
        }
        // 5 fetches at 200/s: the 5th starts ≥ 20 ms after the first.
        assert!(t.elapsed() >= Duration::from_millis(20));
        let order = v.stats(true).hydration_order.expect("order");
        assert!(order[4].end_us - order[0].end_us >= 20_000);
    }

    #[test]
    fn pacer_reserves_at_byte_rate() {
        let now = Instant::now();
        let mut p = Pacer::new(Some(1_000_000), None, now);
        assert_eq!(p.reserve(now, 500_000), now);
        assert_eq!(p.reserve(now, 500_000), now + Duration::from_millis(500));
        assert_eq!(p.reserve(now, 1), now + Duration::from_millis(1000));
        let mut free = Pacer::new(None, None, now);
        assert_eq!(free.reserve(now, u64::MAX), now);
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let mut c = cfg(1, 8);
        c.jitter = Duration::from_millis(3);
        let (v, _, _f) = vol(4, c);
        for i in 0..4 {
            v.read(i * CS, 1).expect("read");
        }
        for ev in v.stats(true).hydration_order.expect("order") {
            let d = ev.end_us - ev.start_us;
            // Lower bound only: sleeps can overrun on a loaded machine.
            assert!(d >= 1000, "fetch took {d} µs");
        }
        let samples: Vec<Duration> = (0..200).map(|_| v.fetch_delay()).collect();
        let (lo, hi) = (Duration::from_millis(1), Duration::from_millis(4));
        assert!(samples.iter().all(|d| (lo..=hi).contains(d)));
        assert!(samples.iter().any(|d| *d != samples[0]), "no jitter drawn");
    }
}
