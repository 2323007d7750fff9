//! The report: what was planned, what was read, what went wrong, as a human
//! summary and as JSON with the same fields.
//!
//! The report also decides the run's [`Outcome`] (and so the CLI's exit
//! code): success when everything planned was read (warnings about bad input
//! allowed), partial when some reads failed, a listed file could not be read,
//! or a stop cut the run short, and nothing-readable when no file was found.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::cache::CacheStats;
use crate::device::DeviceId;
use crate::engine::{Backend, StopReason};
use crate::error::Warning;
use crate::extent::ExtentMap;
use crate::plan::{PlanConfig, PlanStats, ReadMode};

/// Version of the JSON layout.
pub const REPORT_VERSION: u32 = 1;

/// How the run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Everything planned was read. Exit code 0.
    Success,
    /// Some reads failed, a file was unreadable, or the run was stopped.
    /// Exit code 1.
    Partial,
    /// No file could be found or planned. Exit code 2.
    NothingReadable,
}

impl Outcome {
    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Success => 0,
            Outcome::Partial => 1,
            Outcome::NothingReadable => 2,
        }
    }
}

/// Reads against one target (a device, or all file-level reads).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReadStats {
    pub backend: Option<Backend>,
    pub ios_planned: u64,
    pub ios_done: u64,
    pub bytes_read: u64,
    pub errors: u64,
    pub short_reads: u64,
    pub eof: u64,
    pub not_issued: u64,
    pub elapsed_ms: f64,
}

/// What replaying a manifest found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ManifestReport {
    /// CRC-32 of the manifest, hex.
    pub checksum: String,
    /// Files in the manifest.
    pub files: u64,
    /// Checked against the filesystem and unchanged.
    pub unchanged: u64,
    /// Changed since planning: re-mapped live.
    pub changed: u64,
    /// Gone since planning: skipped.
    pub missing: u64,
    /// Not checkable (filesystem not mounted, e.g. in the initrd): replayed
    /// as recorded.
    pub unverified: u64,
    /// Above `--max-priority`: left for a later run.
    pub deferred: u64,
    /// File-level ranges that need the files visible (left for the root
    /// phase).
    pub file_ranges_deferred: u64,
    /// Chunks skipped because an earlier run (the initrd) read them.
    pub handover_chunks: u64,
}

/// One block device's plan and reads.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceReport {
    pub node: String,
    pub id: DeviceId,
    /// Filesystem UUID (manifest runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    pub fs_type: Option<String>,
    pub size: u64,
    pub logical_block_size: u32,
    pub direct: bool,
    pub files: u64,
    pub plan: PlanStats,
    pub read: ReadStats,
    /// Chunk spans `[start, end)` read successfully in this run (chunk =
    /// `plan_config.chunk_size`).
    pub chunks_read: Vec<(u64, u64)>,
}

/// Reads made through files rather than a device.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FileLevelReport {
    pub files: u64,
    /// Bytes of the files' ranges (before alignment).
    pub bytes: u64,
    /// Files opened with O_DIRECT (the rest read buffered).
    pub direct_files: u64,
    pub read: ReadStats,
}

/// A failed read, named.
#[derive(Debug, Clone, Serialize)]
pub struct FailureReport {
    pub target: String,
    pub offset: u64,
    pub len: u32,
    pub error: String,
}

/// One file's mapping (in dry runs).
#[derive(Debug, Clone, Serialize)]
pub struct FileMapReport {
    pub path: String,
    pub device: DeviceId,
    pub size: u64,
    pub priority: u32,
    #[serde(flatten)]
    pub map: ExtentMap,
}

/// Everything about a run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub version: u32,
    pub dry_run: bool,
    pub mode: ReadMode,
    pub queue_depth: u32,
    pub plan_config: PlanConfig,
    /// Regular files selected.
    pub files: u64,
    /// Non-regular files (FIFOs, sockets, device nodes) met inside walked
    /// directories: skipped, as there is nothing to hydrate (`-v` names
    /// them).
    pub skipped_non_regular: u64,
    /// Their total size.
    pub file_bytes: u64,
    /// Bytes mapped to device extents.
    pub mapped_bytes: u64,
    /// Bytes to be read through files (no FIEMAP, odd extents, no device).
    pub file_level_bytes: u64,
    /// Bytes in unwritten extents (nothing to read).
    pub unwritten_bytes: u64,
    /// Plan totals over all devices.
    pub extents: u64,
    pub ranges: u64,
    pub chunks: u64,
    pub planned_bytes: u64,
    pub ios_planned: u64,
    /// Read totals over devices and files.
    pub ios_done: u64,
    pub bytes_read: u64,
    pub errors: u64,
    pub not_issued: u64,
    /// List entries and arguments never collected, hence never planned: the
    /// run was stopped (deadline, SIGTERM) before their priority class came
    /// up.
    pub entries_not_reached: u64,
    pub elapsed_ms: f64,
    pub mib_per_s: f64,
    pub iops: f64,
    pub stopped: Option<StopReason>,
    pub fallbacks: Vec<String>,
    pub warnings: Vec<Warning>,
    pub failures: Vec<FailureReport>,
    pub devices: Vec<DeviceReport>,
    pub file_level: FileLevelReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest: Option<ManifestReport>,
    /// Per-file mappings; filled in dry runs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub file_maps: Vec<FileMapReport>,
    pub outcome: Outcome,
}

impl Report {
    /// Fill the totals from the per-device and file-level parts, and decide
    /// the outcome.
    pub fn finish(&mut self, elapsed: Duration) {
        let reads = self
            .devices
            .iter()
            .map(|d| &d.read)
            .chain([&self.file_level.read]);
        let (mut ios, mut bytes, mut errors, mut not_issued) = (0, 0, 0, 0);
        for r in reads {
            ios += r.ios_done;
            bytes += r.bytes_read;
            errors += r.errors;
            not_issued += r.not_issued;
        }
        self.ios_done = ios;
        self.bytes_read = bytes;
        self.errors = errors;
        self.not_issued = not_issued;
        let secs = elapsed.as_secs_f64();
        self.elapsed_ms = secs * 1e3;
        if secs > 0.0 && !self.dry_run {
            self.mib_per_s = bytes as f64 / (1024.0 * 1024.0) / secs;
            self.iops = ios as f64 / secs;
        }
        let unreadable = self.warnings.iter().any(|w| w.kind.is_read_failure());
        let whole_devices = self.devices.iter().any(|d| d.files == 0);
        self.outcome = if self.files == 0 && self.entries_not_reached == 0 && !whole_devices {
            Outcome::NothingReadable
        } else if errors > 0
            || unreadable
            || not_issued > 0
            || self.entries_not_reached > 0
            || self.stopped.is_some()
        {
            Outcome::Partial
        } else {
            Outcome::Success
        };
    }

    /// The human summary.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let verb = if self.dry_run { "plan" } else { "prewarm" };
        let _ = writeln!(
            s,
            "{verb}: {}, {} ({} mapped in {} extents, {} through files, {} unwritten)",
            plural(self.files, "file"),
            mib(self.file_bytes),
            mib(self.mapped_bytes),
            self.extents,
            mib(self.file_level_bytes),
            mib(self.unwritten_bytes),
        );
        let _ = writeln!(
            s,
            "  plan: {} ranges, {} chunks of {}, {} planned, {} I/Os (mode {:?}, queue depth {})",
            self.ranges,
            self.chunks,
            mib(self.plan_config.chunk_size),
            mib(self.planned_bytes),
            self.ios_planned,
            self.mode,
            self.queue_depth,
        );
        for d in &self.devices {
            let _ = writeln!(
                s,
                "  {} ({}, {}): {}, {} classes, {} ranges, {} chunks, {}{}",
                d.node,
                d.id,
                d.fs_type.as_deref().unwrap_or("?"),
                plural(d.files, "file"),
                d.plan.classes,
                d.plan.ranges,
                d.plan.chunks,
                mib(d.plan.bytes),
                read_line(&d.read, self.dry_run, d.direct),
            );
        }
        if self.file_level.files > 0 {
            let _ = writeln!(
                s,
                "  file-level reads: {}, {}{}",
                plural(self.file_level.files, "file"),
                mib(self.file_level.bytes),
                read_line(
                    &self.file_level.read,
                    self.dry_run,
                    self.file_level.direct_files == self.file_level.files
                ),
            );
        }
        if !self.dry_run {
            let _ = writeln!(
                s,
                "read {} in {:.2} s: {:.1} MiB/s, {:.0} IOPS, {} errors",
                mib(self.bytes_read),
                self.elapsed_ms / 1e3,
                self.mib_per_s,
                self.iops,
                self.errors,
            );
        }
        if let Some(m) = &self.manifest {
            let _ = writeln!(
                s,
                "manifest {}: {} files: {} unchanged, {} changed (re-mapped), {} missing, {} unverified, {} deferred; {} chunks already read by an earlier run",
                m.checksum, m.files, m.unchanged, m.changed, m.missing, m.unverified, m.deferred, m.handover_chunks
            );
        }
        if let Some(c) = &self.cache {
            let _ = writeln!(
                s,
                "cache-warmed {} files ({}), {} errors",
                c.files,
                mib(c.bytes),
                c.errors
            );
        }
        if self.skipped_non_regular > 0 {
            let _ = writeln!(
                s,
                "skipped {} under walked directories (FIFOs, sockets, device nodes: nothing to hydrate)",
                plural(self.skipped_non_regular, "non-regular file")
            );
        }
        if let Some(reason) = self.stopped {
            let _ = writeln!(
                s,
                "stopped early ({reason:?}): {} reads not issued, list entries not reached: {}",
                self.not_issued, self.entries_not_reached
            );
        }
        for f in &self.fallbacks {
            let _ = writeln!(s, "fallback: {f}");
        }
        for f in &self.failures {
            let _ = writeln!(
                s,
                "read failed: {} at {} (+{}): {}",
                f.target, f.offset, f.len, f.error
            );
        }
        if !self.warnings.is_empty() {
            let _ = writeln!(
                s,
                "{} (see above)",
                plural(self.warnings.len() as u64, "warning")
            );
        }
        s
    }
}

fn read_line(r: &ReadStats, dry_run: bool, direct: bool) -> String {
    if dry_run {
        return String::new();
    }
    let backend = match r.backend {
        Some(Backend::Uring) => "io_uring",
        Some(Backend::Pread) => "pread",
        None => "-",
    };
    format!(
        "; read {} in {:.0} ms via {backend}{}, {} errors",
        mib(r.bytes_read),
        r.elapsed_ms,
        if direct { " (O_DIRECT)" } else { " (buffered)" },
        r.errors
    )
}

/// `1 file`, `2 files`.
fn plural(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// Bytes as a short human string.
pub fn mib(bytes: u64) -> String {
    const K: f64 = 1024.0;
    let b = bytes as f64;
    if b >= K * K * K {
        format!("{:.2} GiB", b / (K * K * K))
    } else if b >= K * K {
        format!("{:.1} MiB", b / (K * K))
    } else if b >= K {
        format!("{:.1} KiB", b / K)
    } else {
        format!("{bytes} B")
    }
}
