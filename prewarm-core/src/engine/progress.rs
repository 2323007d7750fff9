//! Live counters of a run: what is planned so far and what has been read,
//! for a caller that shows progress (the CLI's bar on a terminal).
//!
//! The planner adds to the planned side as each class is planned (the
//! total grows while the first classes are read), the engines add each
//! completed read. Plain relaxed atomics: a reader sees a recent, not an
//! exact, picture, which is all a progress display needs.

use std::sync::atomic::{AtomicU64, Ordering};

/// A run's progress counters, shared with the caller.
#[derive(Debug, Default)]
pub struct Progress {
    planned_bytes: AtomicU64,
    planned_reads: AtomicU64,
    planned_chunks: AtomicU64,
    read_bytes: AtomicU64,
    reads_done: AtomicU64,
    chunks_done: AtomicU64,
}

/// A copy of [`Progress`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProgressSnapshot {
    /// Bytes planned so far (grows while classes are planned).
    pub planned_bytes: u64,
    /// Reads (chunks or runs of chunks) planned so far.
    pub planned_reads: u64,
    /// Device chunks those reads cover (reads through files cover none).
    pub planned_chunks: u64,
    /// Bytes read.
    pub read_bytes: u64,
    /// Reads finished (successfully or not).
    pub reads_done: u64,
    /// Device chunks of the reads finished.
    pub chunks_done: u64,
}

impl Progress {
    /// The counters now.
    pub fn snapshot(&self) -> ProgressSnapshot {
        ProgressSnapshot {
            planned_bytes: self.planned_bytes.load(Ordering::Relaxed),
            planned_reads: self.planned_reads.load(Ordering::Relaxed),
            planned_chunks: self.planned_chunks.load(Ordering::Relaxed),
            read_bytes: self.read_bytes.load(Ordering::Relaxed),
            reads_done: self.reads_done.load(Ordering::Relaxed),
            chunks_done: self.chunks_done.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn planned(&self, reads: u64, chunks: u64, bytes: u64) {
        self.planned_reads.fetch_add(reads, Ordering::Relaxed);
        self.planned_chunks.fetch_add(chunks, Ordering::Relaxed);
        self.planned_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn read(&self, bytes: u64) {
        self.read_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn read_done(&self, chunks: u64) {
        self.reads_done.fetch_add(1, Ordering::Relaxed);
        self.chunks_done.fetch_add(chunks, Ordering::Relaxed);
    }
}
