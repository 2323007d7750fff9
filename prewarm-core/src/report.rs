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

use crate::engine::RateLimit;
use crate::engine::{Backend, StopReason};
use crate::error::{Warning, WarningKind};
use crate::map::{DeviceId, ExtentMap, FileReadReason};
pub use crate::map::{MetadataReadaheadReport, ReadaheadState};
use crate::plan::{PlanConfig, PlanStats, ReadMode};
pub use crate::run::cache::CacheStats;
pub use crate::run::ready::ReadyReport;
use crate::size::format_bytes as mib;
pub use crate::source::containerd::ImageReport;

/// Version of the JSON layout.
///
/// * 2: `fallbacks` are objects (`kind`, their fields, and `message`, the
///   text version 1 had); `devices[].swept` and `devices[].error`,
///   `file_level.error` and `ready` are new; `warnings` holds at most
///   [`WARNINGS_KEPT_PER_KIND`] of each kind and `warnings_omitted` counts
///   the rest; `max_rss_kib` and `cpu_ms` say what the run cost;
///   `rate_limit` (when one was asked for); `devices[].read_through` (a
///   buffered loop device).
/// * 1: the first layout.
pub const REPORT_VERSION: u32 = 2;

/// Warnings of one kind a report keeps (the first ones met); the rest are
/// only counted, in [`Report::warnings_omitted`]. A list of a million
/// missing files must not make a report of a million lines, nor hold a
/// million warnings in memory.
pub const WARNINGS_KEPT_PER_KIND: usize = 20;

/// How many warnings of one kind were counted but not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct WarningsOmitted {
    /// Their kind.
    pub kind: WarningKind,
    /// How many.
    pub count: u64,
}

impl std::fmt::Display for WarningsOmitted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} more {} warning(s) not shown",
            self.count,
            warning_kind_name(self.kind)
        )
    }
}

/// The name of a warning kind, as the JSON spells it.
pub fn warning_kind_name(kind: WarningKind) -> &'static str {
    match kind {
        WarningKind::BadLine => "bad_line",
        WarningKind::Missing => "missing",
        WarningKind::NoMatch => "no_match",
        WarningKind::SymlinkLoop => "symlink_loop",
        WarningKind::DirectoryLoop => "directory_loop",
        WarningKind::Duplicate => "duplicate",
        WarningKind::NotRegular => "not_regular",
        WarningKind::Unreadable => "unreadable",
        WarningKind::WalkError => "walk_error",
        WarningKind::Image => "image",
        WarningKind::Library => "library",
    }
}

/// Counts warnings by kind and admits the first [`WARNINGS_KEPT_PER_KIND`]
/// of each: what keeps warnings bounded wherever they are gathered (a
/// collector, a report).
#[derive(Debug, Clone, Default)]
pub struct WarningCap {
    /// (kind, warnings of that kind seen), in order of first sight.
    seen: Vec<(WarningKind, u64)>,
}

impl WarningCap {
    /// Count one warning of `kind`; true when it is to be kept.
    pub fn admit(&mut self, kind: WarningKind) -> bool {
        let count = match self.seen.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, count)) => count,
            None => {
                self.seen.push((kind, 0));
                &mut self.seen.last_mut().expect("just pushed").1
            }
        };
        *count += 1;
        *count <= WARNINGS_KEPT_PER_KIND as u64
    }

    /// Warnings counted but not kept, by kind.
    pub fn omitted(&self) -> Vec<WarningsOmitted> {
        self.seen
            .iter()
            .filter(|(_, seen)| *seen > WARNINGS_KEPT_PER_KIND as u64)
            .map(|&(kind, seen)| WarningsOmitted {
                kind,
                count: seen - WARNINGS_KEPT_PER_KIND as u64,
            })
            .collect()
    }
}

/// The first [`WARNINGS_KEPT_PER_KIND`] warnings of each kind of
/// `warnings`, in order: what a report keeps and the CLI prints.
pub fn cap_warnings(warnings: &[Warning]) -> Vec<&Warning> {
    let mut cap = WarningCap::default();
    warnings.iter().filter(|w| cap.admit(w.kind)).collect()
}

/// A way the run had to degrade, and why. Each is still a complete read of
/// what was planned, only slower or through another path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fallback {
    /// The device refused O_DIRECT: read buffered (its page cache fills).
    Buffered {
        /// The device node.
        device: String,
    },
    /// `files` files are read, in part or whole, through the file.
    FileReads {
        /// How many files.
        files: u64,
        /// Why.
        reason: FileReadReason,
    },
    /// io_uring could not be used: the pread thread pool read instead.
    Pread {
        /// Why io_uring could not be used.
        reason: String,
    },
}

impl std::fmt::Display for Fallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fallback::Buffered { device } => {
                write!(f, "{device}: O_DIRECT refused, reading buffered")
            }
            Fallback::FileReads { files, reason } => {
                write!(f, "{files} file(s) read through the file: {reason}")
            }
            Fallback::Pread { reason } => f.write_str(reason),
        }
    }
}

/// Serialize fallbacks as their fields plus the human `message`.
fn serialize_fallbacks<S: serde::Serializer>(v: &[Fallback], s: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct WithMessage<'a> {
        #[serde(flatten)]
        fallback: &'a Fallback,
        message: String,
    }
    s.collect_seq(v.iter().map(|fallback| WithMessage {
        fallback,
        message: fallback.to_string(),
    }))
}

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
    /// The CLI's exit code for this outcome.
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
    /// The backend that ran (none: nothing ran).
    pub backend: Option<Backend>,
    /// Reads planned.
    pub ios_planned: u64,
    /// Reads completed, successfully or not.
    pub ios_done: u64,
    /// Bytes read.
    pub bytes_read: u64,
    /// Reads that failed.
    pub errors: u64,
    /// Short reads resubmitted for the rest.
    pub short_reads: u64,
    /// Reads that met the end of the file or device.
    pub eof: u64,
    /// Reads never issued (a stop).
    pub not_issued: u64,
    /// How long the engine ran.
    pub elapsed_ms: f64,
}

/// What replaying a manifest found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ManifestReport {
    /// CRC-32 of the manifest, hex.
    pub checksum: String,
    /// Files in the manifest.
    pub files: u64,
    /// Directories on the way to them whose blocks were planned (not
    /// counted as files, nor below).
    pub directories: u64,
    /// Checked against the filesystem and unchanged.
    pub unchanged: u64,
    /// Changed since planning: re-mapped live.
    pub changed: u64,
    /// Gone since planning: skipped.
    pub missing: u64,
    /// Not checkable (filesystem not mounted, e.g. in the initrd): replayed
    /// as recorded.
    pub unverified: u64,
    /// Refused: the path leads outside the filesystem's mount (a symlink
    /// out of it); never opened.
    pub outside_mount: u64,
    /// Above `--max-priority`: left for a later run.
    pub deferred: u64,
    /// File-level ranges that need the files visible (left for the root
    /// phase).
    pub file_ranges_deferred: u64,
    /// Chunks skipped because an earlier run (the initrd) read them.
    pub handover_chunks: u64,
    /// Filesystems of the manifest that could not be read here (the others
    /// were).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<RefusedFilesystem>,
}

/// One priority class: what it planned, and when it was hydrated.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClassReport {
    /// The class's priority.
    pub priority: u32,
    /// Device chunks planned.
    pub chunks: u64,
    /// Bytes planned (device ranges and reads through files).
    pub bytes: u64,
    /// Reads planned.
    pub ios: u64,
    /// When every read of this class and of the more urgent ones had
    /// completed, from the start of the reads (none: never, or a dry run).
    pub hydrated_ms: Option<f64>,
}

/// A manifest filesystem that could not be read on this machine.
#[derive(Debug, Clone, Serialize)]
pub struct RefusedFilesystem {
    /// Its UUID.
    pub uuid: String,
    /// Its type.
    pub fs_type: String,
    /// Why: absent, or of another size or block size than planned.
    pub reason: String,
}

/// One block device's plan and reads.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceReport {
    /// The device node.
    pub node: String,
    /// Its device number.
    pub id: DeviceId,
    /// Filesystem UUID (manifest runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// The filesystem mounted from it, if any.
    pub fs_type: Option<String>,
    /// Its size in bytes.
    pub size: u64,
    /// Its logical block size (the alignment of direct reads).
    pub logical_block_size: u32,
    /// Read with O_DIRECT.
    pub direct: bool,
    /// A buffered loop device: how its blocks were reached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_through: Option<ReadThrough>,
    /// Files with extents on it.
    pub files: u64,
    /// Also read whole (`--device`).
    pub swept: bool,
    /// Its plan's sizes.
    pub plan: PlanStats,
    /// Its reads.
    pub read: ReadStats,
    /// Chunk spans `[start, end)` read successfully in this run (chunk =
    /// `plan_config.chunk_size`).
    pub chunks_read: Vec<(u64, u64)>,
    /// Why its engine could not run (the other devices still ran).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// How a buffered loop device's blocks were reached. Its driver passes the
/// reads of a buffered device on to the backing file one at a time, so
/// they go to that file directly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadThrough {
    /// Through its backing file, the device's byte 0 at `offset` in it.
    BackingFile {
        /// The file, as the kernel names it.
        path: String,
        /// The device's offset in it (`losetup -o`, plus a partition's
        /// start).
        offset: u64,
    },
    /// Through the device (one read at a time): the backing file could
    /// not be used, for this reason.
    Device {
        /// Why.
        reason: String,
    },
}

impl std::fmt::Display for ReadThrough {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadThrough::BackingFile { path, offset: 0 } => {
                write!(f, "read through its backing file {path}")
            }
            ReadThrough::BackingFile { path, offset } => {
                write!(f, "read through its backing file {path} from byte {offset}")
            }
            ReadThrough::Device { reason } => {
                write!(
                    f,
                    "a buffered loop device read one request at a time: {reason}"
                )
            }
        }
    }
}

/// Reads made through files rather than a device.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FileLevelReport {
    /// Files with ranges read through the file.
    pub files: u64,
    /// Bytes of the files' ranges (before alignment).
    pub bytes: u64,
    /// Files opened with O_DIRECT (the rest read buffered).
    pub direct_files: u64,
    /// The reads.
    pub read: ReadStats,
    /// Why the file-level reads could not run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A failed read, named.
#[derive(Debug, Clone, Serialize)]
pub struct FailureReport {
    /// The device node or file.
    pub target: String,
    /// Offset of the read.
    pub offset: u64,
    /// Its length.
    pub len: u32,
    /// The error.
    pub error: String,
}

/// One file's mapping (in dry runs).
#[derive(Debug, Clone, Serialize)]
pub struct FileMapReport {
    /// The file.
    pub path: String,
    /// Its filesystem's device number.
    pub device: DeviceId,
    /// Its size.
    pub size: u64,
    /// Its priority class.
    pub priority: u32,
    /// Where its bytes are.
    #[serde(flatten)]
    pub map: ExtentMap,
}

/// Everything about a run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// [`REPORT_VERSION`].
    pub version: u32,
    /// Planned only, nothing read.
    pub dry_run: bool,
    /// Full reads or touches.
    pub mode: ReadMode,
    /// Reads kept in flight.
    pub queue_depth: u32,
    /// The rate limit asked for (`--max-rate`, `--max-iops`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// The plan's knobs.
    pub plan_config: PlanConfig,
    /// Regular files selected.
    pub files: u64,
    /// Of them, files a walk mapped from their inodes in ext4's inode
    /// tables without opening them (the others were opened and mapped by
    /// FIEMAP, or replayed from a manifest).
    pub files_mapped_from_inodes: u64,
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
    /// Extents planned, over all devices.
    pub extents: u64,
    /// Merged ranges planned.
    pub ranges: u64,
    /// Chunks planned.
    pub chunks: u64,
    /// Bytes planned (devices and files).
    pub planned_bytes: u64,
    /// Reads planned (devices and files).
    pub ios_planned: u64,
    /// Reads completed, over devices and files.
    pub ios_done: u64,
    /// Bytes read.
    pub bytes_read: u64,
    /// Reads failed.
    pub errors: u64,
    /// Reads never issued (a stop).
    pub not_issued: u64,
    /// List entries and arguments never collected, hence never planned: the
    /// run was stopped (deadline, SIGTERM) before it came to them.
    pub entries_not_reached: u64,
    /// Files found but never mapped, hence never read: a stop came while
    /// their class was being mapped.
    pub files_not_mapped: u64,
    /// Wall time of the run (of the planning, in a dry run).
    pub elapsed_ms: f64,
    /// Read throughput.
    pub mib_per_s: f64,
    /// Reads per second.
    pub iops: f64,
    /// Why the run stopped early, if it did.
    pub stopped: Option<StopReason>,
    /// How the run degraded.
    #[serde(serialize_with = "serialize_fallbacks")]
    pub fallbacks: Vec<Fallback>,
    /// Bad inputs, named; the rest ran. At most [`WARNINGS_KEPT_PER_KIND`]
    /// of each kind, the first met.
    pub warnings: Vec<Warning>,
    /// Warnings counted but not kept, by kind.
    pub warnings_omitted: Vec<WarningsOmitted>,
    /// Peak resident memory of the process so far (`getrusage`
    /// `ru_maxrss`), KiB.
    pub max_rss_kib: u64,
    /// CPU time of the process so far, user plus system, ms.
    pub cpu_ms: f64,
    /// Failed reads (a sample).
    pub failures: Vec<FailureReport>,
    /// Per priority class, most urgent first.
    pub classes: Vec<ClassReport>,
    /// Per device.
    pub devices: Vec<DeviceReport>,
    /// Reads through files.
    pub file_level: FileLevelReport,
    /// What cache-warming did (`--cache`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheStats>,
    /// What replaying a manifest found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest: Option<ManifestReport>,
    /// When and why readiness was signalled (`run --notify`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready: Option<ReadyReport>,
    /// Per-file mappings; filled in dry runs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub file_maps: Vec<FileMapReport>,
    /// Per container image asked for (`--image`): its digest and layer
    /// directories.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<ImageReport>,
    /// Per filesystem walked, the metadata read ahead of the walk (not
    /// counted in `bytes_read`, which is the plan's).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub metadata_readahead: Vec<MetadataReadaheadReport>,
    /// How the run ended.
    pub outcome: Outcome,
}

impl Report {
    /// An empty report of the current version.
    pub(crate) fn new() -> Self {
        Report {
            version: REPORT_VERSION,
            dry_run: false,
            mode: ReadMode::Full,
            queue_depth: 0,
            rate_limit: None,
            plan_config: PlanConfig::default(),
            files: 0,
            files_mapped_from_inodes: 0,
            skipped_non_regular: 0,
            file_bytes: 0,
            mapped_bytes: 0,
            file_level_bytes: 0,
            unwritten_bytes: 0,
            extents: 0,
            ranges: 0,
            chunks: 0,
            planned_bytes: 0,
            ios_planned: 0,
            ios_done: 0,
            bytes_read: 0,
            errors: 0,
            not_issued: 0,
            entries_not_reached: 0,
            files_not_mapped: 0,
            elapsed_ms: 0.0,
            mib_per_s: 0.0,
            iops: 0.0,
            stopped: None,
            fallbacks: Vec::new(),
            warnings: Vec::new(),
            warnings_omitted: Vec::new(),
            max_rss_kib: 0,
            cpu_ms: 0.0,
            failures: Vec::new(),
            classes: Vec::new(),
            devices: Vec::new(),
            file_level: FileLevelReport::default(),
            cache: None,
            manifest: None,
            ready: None,
            file_maps: Vec::new(),
            images: Vec::new(),
            metadata_readahead: Vec::new(),
            outcome: Outcome::Success,
        }
    }

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
        self.cap_warnings();
        (self.max_rss_kib, self.cpu_ms) = resource_usage();
        let unreadable = self.warnings.iter().any(|w| w.kind.is_read_failure())
            || self
                .warnings_omitted
                .iter()
                .any(|o| o.kind.is_read_failure());
        let engine_failed = self.file_level.error.is_some()
            || self.devices.iter().any(|d| d.error.is_some())
            || self
                .manifest
                .as_ref()
                .is_some_and(|m| !m.refused.is_empty());
        // Devices planned with no file on them: swept whole, or a manifest's
        // filesystem whose files were all deferred to a later run.
        let whole_devices = self.devices.iter().any(|d| d.swept || d.files == 0);
        self.outcome = if self.files == 0 && self.entries_not_reached == 0 && !whole_devices {
            Outcome::NothingReadable
        } else if errors > 0
            || unreadable
            || engine_failed
            || not_issued > 0
            || self.entries_not_reached > 0
            || self.files_not_mapped > 0
            || self.stopped.is_some()
        {
            Outcome::Partial
        } else {
            Outcome::Success
        };
    }

    /// Count warnings omitted before they reached the report (by a
    /// collector that kept only the first of each kind).
    pub fn count_omitted(&mut self, omitted: &[WarningsOmitted]) {
        for o in omitted {
            match self.warnings_omitted.iter_mut().find(|w| w.kind == o.kind) {
                Some(w) => w.count += o.count,
                None => self.warnings_omitted.push(*o),
            }
        }
    }

    /// Keep the first [`WARNINGS_KEPT_PER_KIND`] warnings of each kind and
    /// count the rest in `warnings_omitted` (which may already count some).
    pub fn cap_warnings(&mut self) {
        let mut cap = WarningCap::default();
        self.warnings.retain(|w| cap.admit(w.kind));
        self.count_omitted(&cap.omitted());
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
        if self.files_mapped_from_inodes > 0 {
            let _ = writeln!(
                s,
                "  {} mapped from ext4's inode tables, not opened",
                plural(self.files_mapped_from_inodes, "file"),
            );
        }
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
            if let Some(how) = &d.read_through {
                let _ = writeln!(s, "    {how}");
            }
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
        for m in &self.metadata_readahead {
            let node = m
                .node
                .as_ref()
                .map_or(m.device.clone(), |n| n.display().to_string());
            if m.state == ReadaheadState::Skipped {
                let reason = m.reason.as_deref().unwrap_or("?");
                let _ = writeln!(s, "  metadata not read ahead on {node}: {reason}");
                continue;
            }
            let _ = write!(
                s,
                "  metadata read ahead on {node}: {} of inode tables, {} of directories, {} in {} chunks, {:.0} ms{}",
                mib(m.inode_table_bytes),
                mib(m.directory_bytes),
                plural(m.reads, "request"),
                m.chunks,
                m.elapsed_ms,
                match m.state {
                    ReadaheadState::Unfinished => ", cut short at the run's end",
                    ReadaheadState::Stopped => ", stopped",
                    _ => "",
                },
            );
            if m.budget_reached {
                s.push_str(", budget reached");
            }
            if m.errors > 0 {
                let _ = write!(s, ", {} failed", m.errors);
            }
            s.push('\n');
        }
        if let Some(m) = &self.manifest {
            let _ = writeln!(
                s,
                "manifest {}: {} files: {} unchanged, {} changed (re-mapped), {} missing, {} unverified, {} deferred; {} directories on their way; {} chunks already read by an earlier run",
                m.checksum, m.files, m.unchanged, m.changed, m.missing, m.unverified, m.deferred, m.directories, m.handover_chunks
            );
        }
        for r in self.manifest.iter().flat_map(|m| &m.refused) {
            let _ = writeln!(
                s,
                "not read: {} filesystem {}: {}",
                r.fs_type, r.uuid, r.reason
            );
        }
        if !self.dry_run {
            for c in self.classes.iter().filter(|c| c.hydrated_ms.is_some()) {
                let _ = writeln!(
                    s,
                    "  class {}: {} chunks, {} hydrated after {:.0} ms",
                    c.priority,
                    c.chunks,
                    mib(c.bytes),
                    c.hydrated_ms.unwrap_or_default()
                );
            }
        }
        for i in &self.images {
            let _ = writeln!(
                s,
                "image {} ({}): {} layer director{}{}",
                i.image.as_deref().unwrap_or(&i.reference),
                i.digest.as_deref().unwrap_or("not found"),
                i.directories.len(),
                if i.directories.len() == 1 { "y" } else { "ies" },
                if i.warnings.is_empty() {
                    ""
                } else {
                    ", incomplete"
                },
            );
        }
        if let Some(r) = &self.ready {
            let _ = writeln!(s, "ready after {:.0} ms: {}", r.at_ms, r.reason);
        }
        if let Some(c) = &self.cache {
            let _ = writeln!(
                s,
                "cache-warmed {} files ({}), {} errors, {} not warmed (stopped)",
                c.files,
                mib(c.bytes),
                c.errors,
                c.not_warmed
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
                "stopped early ({reason:?}): {} reads not issued, list entries not reached: {}, files not mapped: {}",
                self.not_issued, self.entries_not_reached, self.files_not_mapped
            );
        }
        for f in &self.fallbacks {
            let _ = writeln!(s, "fallback: {f}");
        }
        for d in self.devices.iter().filter(|d| d.error.is_some()) {
            let _ = writeln!(
                s,
                "{}: not read: {}",
                d.node,
                d.error.as_deref().unwrap_or("")
            );
        }
        if let Some(e) = &self.file_level.error {
            let _ = writeln!(s, "reads through files not made: {e}");
        }
        for f in &self.failures {
            let _ = writeln!(
                s,
                "read failed: {} at {} (+{}): {}",
                f.target, f.offset, f.len, f.error
            );
        }
        let omitted: u64 = self.warnings_omitted.iter().map(|o| o.count).sum();
        if omitted > 0 {
            let _ = writeln!(
                s,
                "{} (see above; {omitted} not shown: {})",
                plural(self.warnings.len() as u64 + omitted, "warning"),
                self.warnings_omitted
                    .iter()
                    .map(|o| format!("{} {}", o.count, warning_kind_name(o.kind)))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        } else if !self.warnings.is_empty() {
            let _ = writeln!(
                s,
                "{} (see above)",
                plural(self.warnings.len() as u64, "warning")
            );
        }
        let _ = writeln!(
            s,
            "cost: peak RSS {:.1} MiB, CPU {:.0} ms",
            self.max_rss_kib as f64 / 1024.0,
            self.cpu_ms
        );
        s
    }
}

/// Peak resident memory (KiB) and CPU time (user + system, ms) of the
/// process so far; zeros if `getrusage` fails (it does not on Linux).
pub(crate) fn resource_usage() -> (u64, f64) {
    use nix::sys::resource::{getrusage, UsageWho};
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(usage) => {
            let ms =
                |t: nix::sys::time::TimeVal| t.tv_sec() as f64 * 1e3 + t.tv_usec() as f64 / 1e3;
            (
                u64::try_from(usage.max_rss()).unwrap_or(0),
                ms(usage.user_time()) + ms(usage.system_time()),
            )
        }
        Err(_) => (0, 0.0),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::WarningKind;
    use std::path::Path;

    fn device(node: &str, files: u64) -> DeviceReport {
        DeviceReport {
            node: node.into(),
            id: DeviceId { major: 7, minor: 0 },
            uuid: None,
            fs_type: Some("ext4".into()),
            size: 1 << 30,
            logical_block_size: 512,
            direct: true,
            read_through: None,
            files,
            swept: false,
            plan: PlanStats::default(),
            read: ReadStats {
                ios_done: 4,
                bytes_read: 4 << 20,
                ..Default::default()
            },
            chunks_read: vec![(0, 8)],
            error: None,
        }
    }

    fn report(devices: Vec<DeviceReport>) -> Report {
        Report {
            files: 3,
            devices,
            ..Report::new()
        }
    }

    #[test]
    fn totals_and_outcomes() {
        let mut r = report(vec![device("/dev/loop0", 2), device("/dev/loop1", 1)]);
        r.finish(Duration::from_secs(1));
        assert_eq!((r.ios_done, r.bytes_read), (8, 8 << 20));
        assert_eq!(r.mib_per_s, 8.0);
        assert_eq!(r.outcome, Outcome::Success);

        // One device that could not be read makes the run partial, and the
        // other device's figures stay.
        let mut failed = device("/dev/loop1", 1);
        failed.error = Some("duplicating the descriptor: EMFILE".into());
        failed.read = ReadStats::default();
        let mut r = report(vec![device("/dev/loop0", 2), failed]);
        r.finish(Duration::from_secs(1));
        assert_eq!(r.outcome, Outcome::Partial);
        assert_eq!(r.bytes_read, 4 << 20);
        assert!(
            r.summary().contains("/dev/loop1: not read: duplicating"),
            "{}",
            r.summary()
        );

        // Warnings about input alone do not; an unreadable file does.
        let mut r = report(vec![device("/dev/loop0", 3)]);
        r.warnings.push(Warning::new(
            WarningKind::Missing,
            Some(Path::new("/x")),
            None,
            "gone",
        ));
        r.finish(Duration::from_secs(1));
        assert_eq!(r.outcome, Outcome::Success);
        r.warnings.push(Warning::new(
            WarningKind::Unreadable,
            Some(Path::new("/y")),
            None,
            "EIO",
        ));
        r.finish(Duration::from_secs(1));
        assert_eq!(r.outcome, Outcome::Partial);

        // No file and no device: nothing readable; a sweep alone is work.
        let mut r = Report {
            files: 0,
            ..report(Vec::new())
        };
        r.finish(Duration::ZERO);
        assert_eq!(r.outcome, Outcome::NothingReadable);
        let mut swept = device("/dev/loop0", 0);
        swept.swept = true;
        let mut r = Report {
            files: 0,
            ..report(vec![swept])
        };
        r.finish(Duration::ZERO);
        assert_eq!(r.outcome, Outcome::Success);

        // A stop is partial, and says what was not reached.
        let mut r = report(vec![device("/dev/loop0", 3)]);
        r.stopped = Some(StopReason::Deadline);
        r.entries_not_reached = 5;
        r.finish(Duration::ZERO);
        assert_eq!(r.outcome, Outcome::Partial);
        assert!(r.summary().contains("list entries not reached: 5"));
    }

    #[test]
    fn json_fallbacks_carry_kind_fields_and_message() {
        let mut r = report(Vec::new());
        r.fallbacks = vec![
            Fallback::FileReads {
                files: 2,
                reason: FileReadReason::NoFiemap {
                    errno: libc::EOPNOTSUPP,
                },
            },
            Fallback::Buffered {
                device: "/dev/loop3".into(),
            },
        ];
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["version"], REPORT_VERSION);
        let f = &v["fallbacks"][0];
        assert_eq!(f["kind"], "file_reads");
        assert_eq!(f["files"], 2);
        assert_eq!(f["reason"]["kind"], "no_fiemap");
        assert!(f["message"]
            .as_str()
            .unwrap()
            .starts_with("2 file(s) read through the file: FIEMAP unavailable"));
        assert_eq!(
            v["fallbacks"][1]["message"],
            "/dev/loop3: O_DIRECT refused, reading buffered"
        );
        let text = r.summary();
        assert!(
            text.contains("fallback: 2 file(s) read through the file"),
            "{text}"
        );
    }

    #[test]
    fn warnings_are_capped_per_kind_and_the_rest_counted() {
        let mut r = report(vec![device("/dev/loop0", 3)]);
        let warn =
            |kind, i: usize| Warning::new(kind, Some(Path::new(&format!("/f{i}"))), None, "x");
        for i in 0..50 {
            r.warnings.push(warn(WarningKind::Missing, i));
        }
        r.warnings.push(warn(WarningKind::NoMatch, 0));
        // Upstream (a collector) already dropped 1000 missing ones.
        r.count_omitted(&[WarningsOmitted {
            kind: WarningKind::Missing,
            count: 1000,
        }]);
        r.finish(Duration::from_secs(1));
        r.finish(Duration::from_secs(1)); // twice: the same
        assert_eq!(r.warnings.len(), WARNINGS_KEPT_PER_KIND + 1);
        assert_eq!(r.warnings[0].path.as_deref(), Some(Path::new("/f0")));
        assert_eq!(
            r.warnings_omitted,
            [WarningsOmitted {
                kind: WarningKind::Missing,
                count: 1030,
            }]
        );
        let text = r.summary();
        assert!(
            text.contains("1051 warnings (see above; 1030 not shown: 1030 missing)"),
            "{text}"
        );
        assert!(r.max_rss_kib > 0);
        assert!(text.contains("cost: peak RSS"), "{text}");
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["warnings_omitted"][0]["kind"], "missing");
        assert_eq!(v["warnings_omitted"][0]["count"], 1030);
        assert!(v["max_rss_kib"].as_u64().unwrap() > 0);
        assert!(v["cpu_ms"].as_f64().is_some());
        // An unreadable file counted but not kept still makes the run partial.
        let mut r = report(vec![device("/dev/loop0", 3)]);
        r.count_omitted(&[WarningsOmitted {
            kind: WarningKind::Unreadable,
            count: 1,
        }]);
        r.finish(Duration::ZERO);
        assert_eq!(r.outcome, Outcome::Partial);
    }
}
