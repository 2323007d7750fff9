//! Recording what a boot reads (`prewarm record`): which files, in which
//! order, and which parts of them, written as a list that `prewarm` and
//! `prewarm plan --paths` take as it is.
//!
//! Two steps:
//!
//! 1. **Watching.** A fanotify group marks each filesystem asked for
//!    (`FAN_MARK_FILESYSTEM`, falling back to a mount mark on kernels
//!    before 4.20) for open, exec-open and read events of every process.
//!    Each event's file is keyed by device and inode; the first event of a
//!    file records its path (from the event's descriptor, through
//!    `/proc/self/fd`) and the time since the start, and puts an ignore mark
//!    on the file, so the kernel stops reporting it: the cost is one event
//!    per file, not one per read. The recorder's own accesses are ignored.
//!    At most [`MAX_RECORDED_FILES`] files are recorded (the rest are
//!    counted), which bounds the memory at about 200 bytes a file.
//! 2. **Asking the page cache.** [`residency`] says which pages of a file
//!    are cached: those were read (readahead included); pages nobody
//!    touched are not. It is asked while watching, a few files at a time
//!    ([`ResidencyLooks`]: every [`LOOK_EVERY`], at most [`LOOK_BUDGET`] of
//!    work, so at most 5 % of a CPU), and once more for every file when
//!    the watch ends (the `--until` units are active and the settle time
//!    has passed, the `--duration` is over, or SIGTERM/SIGINT). A file's
//!    ranges are the union of what every look found. A file with none
//!    (opened, never read) is left out.
//!
//!    The looks while watching are there because a page can be evicted
//!    between its read and the end: under memory pressure, and on
//!    machines that reclaim cold pages proactively. A DAMON `pageout`
//!    scheme (these test machines run one) pages out clean page cache that
//!    was read seconds before. What an earlier look saw and the end no
//!    longer had is counted ([`RecordStats::bytes_evicted`]); what was
//!    read and evicted between two looks of its file is still missed, so
//!    the recorder warns when a DAMON `pageout` scheme is on
//!    ([`proactive_reclaim`]).
//!
//! The recording is a list ([`crate::source::list`]) with byte ranges, one
//! line per file, and its priority class says when
//! the file was first accessed: `10 + floor(ms since the start / class
//! width)`, so the plan reads what the boot needed first, first. By default
//! the width is chosen at the end so that everything read before the
//! `--until` units were active (or, without them, before the end) falls in
//! the classes 10 to 20 ([`URGENT_CLASSES`]): the classes the initrd run
//! reads. What only the settle time saw gets 21 and later, but for what
//! the `--until` units themselves first read then: their start-up reads
//! (a service's binary and libraries, read just after systemd started it,
//! and seen active only at the next look) stay in the last urgent class
//! ([`unit_cgroup`]). So the list is in class order, first-access order
//! within a class: first-access order throughout, but for those.
//!
//! Every wait is bounded: the event loop polls with a 100 ms timeout and
//! looks at the stop signal each time; the units are asked about with
//! `systemctl is-active --quiet` every 500 ms on a thread of their own,
//! each call given 2 s; without systemctl `--until` never fires (a warning
//! says so) and the recording ends by duration or signal.

#[allow(unsafe_code)]
mod residency;
mod unit_cgroup;

use std::collections::HashSet;
use std::io::{Read as _, Write as _};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::fanotify::{EventFFlags, Fanotify, InitFlags, MarkFlags, MaskFlags};
use serde::Serialize;

use crate::engine::{StopReason, StopSignal};
use crate::error::Error;
use crate::map::extent::open_file;
use crate::map::ByteRange;
use crate::source::list::format_line;
use crate::source::union_within;

/// Most files one recording holds.
pub const MAX_RECORDED_FILES: usize = 1 << 20;
/// The priority class of what is accessed in the first class width.
pub const FIRST_CLASS: u32 = 10;
/// How often the `--until` units are asked about.
const UNIT_POLL: Duration = Duration::from_millis(500);
/// Longest a `systemctl is-active` call may take.
const UNIT_CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait for events before the stop conditions are looked at again.
const EVENT_POLL_MS: u16 = 100;
/// How often the page cache is asked about recorded files while watching.
const LOOK_EVERY: Duration = Duration::from_secs(1);
/// Most time one round of those looks takes; the next round goes on from
/// the file this one stopped at.
const LOOK_BUDGET: Duration = Duration::from_millis(50);

/// What to record, and when to stop.
#[derive(Debug, Clone)]
pub struct RecordOptions {
    /// Paths on the filesystems to watch (each whole filesystem is
    /// watched); empty: the root filesystem.
    pub mounts: Vec<PathBuf>,
    /// Stop once all these systemd units are active, plus `settle`.
    pub until: Vec<String>,
    /// How long to keep recording after the units are active.
    pub settle: Duration,
    /// Stop after this long in any case.
    pub duration: Option<Duration>,
    /// Width of a priority class; `None`: chosen at the end so that what
    /// was read before the units were active spans [`URGENT_CLASSES`]
    /// (see the module doc).
    pub class_width: Option<Duration>,
    /// SIGTERM/SIGINT (and a deadline) end the recording, which is still
    /// written.
    pub stop: StopSignal,
    /// At the end, also record the files of the watched filesystems that
    /// the page cache holds but no event named: read before the recorder
    /// started (on a boot, systemd's own start after switch-root). They go
    /// in a class of their own before the first ([`EARLIER_CLASS`]).
    pub resident_before: bool,
}

/// How many classes, from [`FIRST_CLASS`], an automatic class width gives
/// the time up to the `--until` units (10 to 20: the initrd unit's
/// `PREWARM_MAX_PRIORITY`).
pub const URGENT_CLASSES: u32 = 11;

/// An automatic class width is never narrower than this.
const MIN_CLASS_WIDTH: Duration = Duration::from_millis(100);

/// The class of files found cached at the end that no event named.
pub const EARLIER_CLASS: u32 = FIRST_CLASS - 1;

/// The walk for [`RecordOptions::resident_before`] ends after this long
/// (a canary node's root filesystem takes seconds).
const RESIDENT_WALK_LIMIT: Duration = Duration::from_secs(60);

impl Default for RecordOptions {
    fn default() -> Self {
        RecordOptions {
            mounts: Vec::new(),
            until: Vec::new(),
            settle: Duration::from_secs(10),
            duration: None,
            class_width: None,
            stop: StopSignal::default(),
            resident_before: true,
        }
    }
}

/// Why the recording ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordEnd {
    /// The `--until` units were active and the settle time passed.
    UnitsSettled,
    /// `--duration` passed.
    Duration,
    /// SIGTERM / SIGINT.
    Cancelled,
    /// The stop signal's deadline.
    Deadline,
}

impl std::fmt::Display for RecordEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RecordEnd::UnitsSettled => "the units being active and settled",
            RecordEnd::Duration => "the duration",
            RecordEnd::Cancelled => "a signal",
            RecordEnd::Deadline => "the deadline",
        })
    }
}

/// One file of a recording.
#[derive(Debug, Clone, Serialize)]
pub struct RecordedFile {
    /// The path it was opened by.
    #[serde(serialize_with = "crate::error::serialize_path")]
    pub path: PathBuf,
    /// When it was first accessed, since the start.
    pub first_access_ms: u64,
    /// Its priority class.
    pub priority: u32,
    /// What of it the page cache held, at any look (see the module doc).
    pub ranges: Vec<ByteRange>,
}

/// What a recording saw and what it cost.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RecordStats {
    /// fanotify events handled.
    pub events: u64,
    /// Distinct files met.
    pub files_seen: u64,
    /// Files in the recording.
    pub files_recorded: u64,
    /// Bytes in their ranges.
    pub bytes_recorded: u64,
    /// Files met with nothing in the page cache at any look: left out.
    pub not_resident: u64,
    /// Files gone or replaced (another inode) by the end: left out.
    pub changed: u64,
    /// Files met past [`MAX_RECORDED_FILES`]: left out.
    pub over_cap: u64,
    /// Paths a list line cannot hold (a newline in them): left out.
    pub unlistable: u64,
    /// Times the kernel's event queue overflowed (events were lost).
    pub overflows: u64,
    /// How long the watch ran, ms.
    pub elapsed_ms: u64,
    /// Events handled per second of watching.
    pub events_per_s: f64,
    /// CPU time of the process (user + system), ms.
    pub cpu_ms: f64,
    /// Peak resident memory of the process, KiB.
    pub max_rss_kib: u64,
    /// Files found cached at the end that no event named
    /// ([`RecordOptions::resident_before`]).
    pub resident_before: u64,
    /// Files the page cache was asked about while watching (one file can
    /// count many times).
    pub looks: u64,
    /// Bytes an earlier look found cached that the end no longer had:
    /// read, then evicted (they are in the recording).
    pub bytes_evicted: u64,
    /// Files in the recording first read by a process of an `--until` unit
    /// after the units were active: in the last urgent class at most (see
    /// the module doc).
    pub until_unit_files: u64,
}

/// A finished recording.
#[derive(Debug, Clone, Serialize)]
pub struct Recording {
    /// Files in class order, first access within a class (see the module
    /// doc).
    pub files: Vec<RecordedFile>,
    /// Why it ended.
    pub ended: RecordEnd,
    /// Counts and cost.
    pub stats: RecordStats,
    /// When it started (Unix time, s).
    pub started_unix: u64,
    /// The class width used, ms.
    pub class_width_ms: u64,
}

impl Recording {
    /// The recording as a list file: a comment header, then one line per
    /// file, `PRIORITY @RANGES PATH`, in [`Recording::files`]' order.
    pub fn to_list(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.files.len() * 96 + 256);
        let _ = writeln!(
            out,
            "# prewarm recording: {} files by class, in first-access order within one, started at Unix time {}, ended by {}",
            self.files.len(),
            self.started_unix,
            self.ended
        );
        let _ = writeln!(
            out,
            "# priority = {FIRST_CLASS} + ms since the start / {}; @ranges: what the page cache held of it, at any look",
            self.class_width_ms
        );
        for f in &self.files {
            if let Some(line) = format_line(f.priority, Some(&f.ranges), &f.path) {
                out.extend_from_slice(&line);
                out.push(b'\n');
            }
        }
        out
    }

    /// Write [`Recording::to_list`] to `path`, atomically.
    pub fn write(&self, path: &Path) -> Result<(), Error> {
        crate::atomic_write::write_atomically(path, &self.to_list()).map_err(|source| {
            Error::Write {
                path: path.to_path_buf(),
                source,
            }
        })
    }
}

/// A file met while watching.
struct Seen {
    path: PathBuf,
    dev: u64,
    ino: u64,
    at: Duration,
    /// First read by a process of an `--until` unit after the units were
    /// active: kept in the last urgent class.
    by_until_unit: bool,
    /// What earlier looks found cached, sorted and merged.
    cached: Vec<ByteRange>,
}

impl Seen {
    /// What of this file the page cache holds now, and its size; `None`
    /// when the path no longer names this file (gone or replaced).
    fn look(&self) -> Option<(Vec<ByteRange>, u64)> {
        let (file, _) = open_file(&self.path, false).ok()?;
        let meta = file.metadata().ok()?;
        if meta.dev() != self.dev || meta.ino() != self.ino {
            return None;
        }
        let cached = residency::resident_ranges(&file, meta.len()).unwrap_or_else(|e| {
            tracing::debug!(path = %self.path.display(), "mincore: {e}");
            Vec::new()
        });
        Some((cached, meta.len()))
    }

    /// Add `found` to what was found cached before.
    fn remember(&mut self, found: &[ByteRange]) {
        self.cached = union_within(&self.cached, found, u64::MAX);
    }
}

/// The looks at the page cache while watching: every [`LOOK_EVERY`], the
/// recorded files in turn for at most [`LOOK_BUDGET`], going on next time
/// from where the last round stopped.
struct ResidencyLooks {
    next_round: Instant,
    cursor: usize,
}

impl ResidencyLooks {
    fn new(start: Instant) -> Self {
        ResidencyLooks {
            next_round: start + LOOK_EVERY,
            cursor: 0,
        }
    }

    /// One round, if one is due.
    fn run_if_due(&mut self, files: &mut [Seen], stats: &mut RecordStats) {
        let round = Instant::now();
        if round < self.next_round || files.is_empty() {
            return;
        }
        for _ in 0..files.len() {
            if round.elapsed() >= LOOK_BUDGET {
                break;
            }
            self.cursor %= files.len();
            let seen = &mut files[self.cursor];
            if let Some((found, _)) = seen.look() {
                seen.remember(&found);
            }
            stats.looks += 1;
            self.cursor += 1;
        }
        self.next_round = Instant::now() + LOOK_EVERY;
    }
}

/// Record until a stop condition of `opts` (see the module doc). Fails only
/// when nothing can be watched (no fanotify: not root, or a kernel without
/// it); once watching, every later problem is counted in the stats.
pub fn record(opts: &RecordOptions) -> Result<Recording, Error> {
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let fan = watch(opts)?;
    let start = Instant::now();
    for kdamond in proactive_reclaim(Path::new(DAMON_KDAMONDS)) {
        tracing::warn!(
            "DAMON kdamond {kdamond} pages out cold memory: pages read during the recording \
             may be evicted before it ends and be missing from it"
        );
    }
    let units = UnitWatch::spawn(&opts.until, opts.stop.clone());
    // With an automatic class width: the units whose own reads after they
    // were active stay urgent (a fixed width is time alone).
    let urgent_units = if opts.class_width.is_none() {
        unit_cgroup::unit_names(&opts.until)
    } else {
        Vec::new()
    };
    let mut stats = RecordStats::default();
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    let mut files: Vec<Seen> = Vec::new();
    let own_pid = std::process::id() as i32;
    let mut settled_at: Option<Instant> = None;
    let mut looks = ResidencyLooks::new(start);
    let ended = loop {
        match opts.stop.check() {
            Some(StopReason::Cancelled) => break RecordEnd::Cancelled,
            Some(StopReason::Deadline) => break RecordEnd::Deadline,
            None => {}
        }
        if opts.duration.is_some_and(|d| start.elapsed() >= d) {
            break RecordEnd::Duration;
        }
        if settled_at.is_none() && units.as_ref().is_some_and(UnitWatch::active) {
            tracing::info!(
                "units {} are active: recording {:?} more",
                opts.until.join(","),
                opts.settle
            );
            settled_at = Some(Instant::now());
        }
        if settled_at.is_some_and(|t| t.elapsed() >= opts.settle) {
            break RecordEnd::UnitsSettled;
        }
        looks.run_if_due(&mut files, &mut stats);
        let mut fds = [PollFd::new(fan.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(EVENT_POLL_MS)) {
            Ok(0) | Err(Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!("waiting for fanotify events: {e}; ending the recording");
                break RecordEnd::Cancelled;
            }
        }
        // Drain what is queued, a 4 KiB read at a time, until EAGAIN.
        loop {
            let events = match fan.read_events() {
                Ok(events) if !events.is_empty() => events,
                Ok(_) | Err(Errno::EAGAIN) => break,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::warn!("reading fanotify events: {e}");
                    break;
                }
            };
            let ctx = EventContext {
                own_pid,
                start,
                urgent_units: if settled_at.is_some() {
                    &urgent_units
                } else {
                    &[]
                },
            };
            for event in &events {
                handle_event(&fan, event, &ctx, &mut seen, &mut files, &mut stats);
            }
            if opts.stop.check().is_some() {
                break;
            }
        }
    };
    // Closing the group removes every mark: nothing more is reported.
    drop(fan);
    stats.elapsed_ms = start.elapsed().as_millis() as u64;
    stats.files_seen = seen.len() as u64;
    let urgent_span = settled_at.map_or(start.elapsed(), |t| t - start);
    let class_ms = class_width_ms(opts.class_width, urgent_span);
    let mut recorded = Vec::new();
    if opts.resident_before {
        recorded = resident_unseen(opts, &seen, files.len());
        stats.resident_before = recorded.len() as u64;
    }
    drop(seen);
    recorded.extend(resolve_ranges(files, class_ms, &mut stats));
    stats.files_recorded = recorded.len() as u64;
    stats.bytes_recorded = recorded.iter().flat_map(|f| &f.ranges).map(|r| r.len).sum();
    stats.events_per_s = stats.events as f64 / (stats.elapsed_ms.max(1) as f64 / 1e3);
    let (rss, cpu) = crate::report::resource_usage();
    stats.max_rss_kib = rss;
    stats.cpu_ms = cpu;
    Ok(Recording {
        files: recorded,
        ended,
        stats,
        started_unix,
        class_width_ms: class_ms,
    })
}

/// The class width: the one asked for, else the one that puts
/// `urgent_span` (the time until the units were active) in
/// [`URGENT_CLASSES`] classes (rounded up, so the last millisecond of the
/// span is still in the last of them), in ms.
fn class_width_ms(asked: Option<Duration>, urgent_span: Duration) -> u64 {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    match asked {
        Some(w) => ms(w).max(1),
        None => ms(urgent_span)
            .saturating_add(1)
            .div_ceil(u64::from(URGENT_CLASSES))
            .max(ms(MIN_CLASS_WIDTH)),
    }
}

/// DAMON's sysfs interface: one directory per kdamond (monitoring thread).
const DAMON_KDAMONDS: &str = "/sys/kernel/mm/damon/admin/kdamonds";

/// Most kdamonds, contexts of one and schemes of one looked at.
const DAMON_MAX_ENTRIES: usize = 64;

/// The kdamonds under `kdamonds` (DAMON's sysfs directory) that are on and
/// have a `pageout` scheme: proactive reclaim, which evicts page cache
/// that is not used again within its age limit. Empty without DAMON. Only
/// small sysfs files are read, and at most [`DAMON_MAX_ENTRIES`] entries of
/// each directory.
fn proactive_reclaim(kdamonds: &Path) -> Vec<String> {
    // The numbered entries of `dir` (kdamonds, contexts, schemes).
    let numbered = |dir: &Path| -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .take(DAMON_MAX_ENTRIES)
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.parse::<u32>().is_ok())
            })
            .map(|e| e.path())
            .collect()
    };
    let word = |path: PathBuf| -> Option<String> {
        let mut text = String::new();
        std::fs::File::open(path)
            .ok()?
            .take(64)
            .read_to_string(&mut text)
            .ok()?;
        Some(text.trim().to_owned())
    };
    let mut on = Vec::new();
    for kdamond in numbered(kdamonds) {
        if word(kdamond.join("state")).as_deref() != Some("on") {
            continue;
        }
        let pages_out = numbered(&kdamond.join("contexts")).iter().any(|context| {
            numbered(&context.join("schemes"))
                .into_iter()
                .any(|scheme| word(scheme.join("action")).as_deref() == Some("pageout"))
        });
        if pages_out {
            if let Some(name) = kdamond.file_name() {
                on.push(name.to_string_lossy().into_owned());
            }
        }
    }
    on.sort();
    on
}

/// A fanotify group watching every filesystem of `opts.mounts`.
fn watch(opts: &RecordOptions) -> Result<Fanotify, Error> {
    let err = |what: String| {
        move |e: Errno| Error::Record {
            what,
            source: std::io::Error::from(e),
        }
    };
    let init = InitFlags::FAN_CLASS_NOTIF
        | InitFlags::FAN_CLOEXEC
        | InitFlags::FAN_NONBLOCK
        | InitFlags::FAN_UNLIMITED_MARKS;
    let event_flags = EventFFlags::O_RDONLY | EventFFlags::O_LARGEFILE;
    // O_NOATIME on the event descriptors where the kernel takes it: an atime
    // update is a write.
    let fan = Fanotify::init(init, event_flags | EventFFlags::O_NOATIME)
        .or_else(|_| Fanotify::init(init, event_flags))
        .map_err(err(
            "fanotify_init (needs root and a kernel with fanotify)".into()
        ))?;
    let mask = MaskFlags::FAN_OPEN | MaskFlags::FAN_OPEN_EXEC | MaskFlags::FAN_ACCESS;
    let default_mounts = [PathBuf::from("/")];
    let mounts = if opts.mounts.is_empty() {
        &default_mounts[..]
    } else {
        &opts.mounts[..]
    };
    for mount in mounts {
        let whole = fan.mark(
            MarkFlags::FAN_MARK_ADD | MarkFlags::FAN_MARK_FILESYSTEM,
            mask,
            None,
            Some(mount.as_path()),
        );
        match whole {
            Ok(()) => {}
            // Before Linux 4.20 there are no filesystem marks.
            Err(Errno::EINVAL) => {
                tracing::warn!(
                    "{}: no filesystem marks on this kernel; watching its mount only",
                    mount.display()
                );
                fan.mark(
                    MarkFlags::FAN_MARK_ADD | MarkFlags::FAN_MARK_MOUNT,
                    mask,
                    None,
                    Some(mount.as_path()),
                )
                .map_err(err(format!("marking {}", mount.display())))?;
            }
            Err(e) => return Err(err(format!("marking {}", mount.display()))(e)),
        }
    }
    let shown: Vec<String> = mounts.iter().map(|m| m.display().to_string()).collect();
    tracing::info!("watching the filesystems of {}", shown.join(", "));
    Ok(fan)
}

/// What handling an event needs to know besides the event.
struct EventContext<'a> {
    /// The recorder's own accesses are not recorded.
    own_pid: i32,
    start: Instant,
    /// The `--until` units whose processes' first reads stay urgent: empty
    /// until the units are active, and with a fixed class width.
    urgent_units: &'a [String],
}

/// Record the file of one event if it is new, and stop the kernel from
/// reporting it again.
fn handle_event(
    fan: &Fanotify,
    event: &nix::sys::fanotify::FanotifyEvent,
    ctx: &EventContext<'_>,
    seen: &mut HashSet<(u64, u64)>,
    files: &mut Vec<Seen>,
    stats: &mut RecordStats,
) {
    let Some(fd) = event.fd() else {
        stats.overflows += 1;
        return;
    };
    stats.events += 1;
    if event.pid() == ctx.own_pid {
        return;
    }
    let Ok(st) = nix::sys::stat::fstat(fd.as_raw_fd()) else {
        return;
    };
    let key = (st.st_dev, st.st_ino);
    if !seen.insert(key) {
        return;
    }
    // Later events of this file are of no use: ignore them in the kernel
    // (surviving writes, so a file being written does not come back). If
    // the mark cannot be added the file's events keep coming, and `seen`
    // drops them.
    let ignore = MarkFlags::FAN_MARK_ADD
        | MarkFlags::FAN_MARK_IGNORED_MASK
        | MarkFlags::FAN_MARK_IGNORED_SURV_MODIFY;
    let mask = MaskFlags::FAN_OPEN | MaskFlags::FAN_OPEN_EXEC | MaskFlags::FAN_ACCESS;
    if let Err(e) = fan.mark::<Path>(ignore, mask, Some(fd.as_raw_fd()), None) {
        tracing::debug!("ignore mark: {e}");
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return;
    }
    if files.len() >= MAX_RECORDED_FILES {
        stats.over_cap += 1;
        return;
    }
    let link = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let Ok(path) = std::fs::read_link(&link) else {
        return;
    };
    // Asked at once: the reading process may not live long.
    let by_until_unit = unit_cgroup::process_in_units(event.pid(), ctx.urgent_units);
    files.push(Seen {
        path,
        dev: st.st_dev,
        ino: st.st_ino,
        at: ctx.start.elapsed(),
        by_until_unit,
        cached: Vec::new(),
    });
}

/// The regular files of the watched filesystems that the page cache holds
/// (in part) and that are not in `seen`, in the walk's order, at
/// [`EARLIER_CLASS`]. The walk stays on each filesystem, stops at
/// [`MAX_RECORDED_FILES`] files in all (with the `already` recorded) and
/// after [`RESIDENT_WALK_LIMIT`].
fn resident_unseen(
    opts: &RecordOptions,
    seen: &HashSet<(u64, u64)>,
    already: usize,
) -> Vec<RecordedFile> {
    let started = Instant::now();
    let roots: Vec<PathBuf> = if opts.mounts.is_empty() {
        vec![PathBuf::from("/")]
    } else {
        opts.mounts.clone()
    };
    let mut out = Vec::new();
    let mut visited: HashSet<(u64, u64)> = HashSet::new();
    'roots: for root in roots {
        for entry in walkdir::WalkDir::new(&root).same_file_system(true) {
            if started.elapsed() > RESIDENT_WALK_LIMIT || already + out.len() >= MAX_RECORDED_FILES
            {
                tracing::warn!(
                    "looking for cached files: stopped after {:?}",
                    started.elapsed()
                );
                break 'roots;
            }
            let Ok(entry) = entry else { continue };
            if !entry.file_type().is_file() {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            let key = (meta.dev(), meta.ino());
            if meta.len() == 0 || seen.contains(&key) || !visited.insert(key) {
                continue;
            }
            let path = entry.into_path();
            if path.as_os_str().as_encoded_bytes().contains(&b'\n') {
                continue;
            }
            let Ok((file, _)) = open_file(&path, false) else {
                continue;
            };
            match residency::resident_ranges(&file, meta.len()) {
                Ok(ranges) if !ranges.is_empty() => out.push(RecordedFile {
                    path,
                    first_access_ms: 0,
                    priority: EARLIER_CLASS,
                    ranges,
                }),
                _ => {}
            }
        }
    }
    out
}

/// Each file met, with what of it is cached now or was at an earlier
/// look, and its class (the last urgent one at most for a file an
/// `--until` unit read first), in class order; files with nothing cached at
/// any look, or gone or replaced by the end, are left out (and counted).
fn resolve_ranges(files: Vec<Seen>, class_ms: u64, stats: &mut RecordStats) -> Vec<RecordedFile> {
    let mut out = Vec::with_capacity(files.len());
    for seen in files {
        if !seen.path.is_absolute() || seen.path.as_os_str().as_encoded_bytes().contains(&b'\n') {
            stats.unlistable += 1;
            continue;
        }
        let Some((now, size)) = seen.look() else {
            stats.changed += 1;
            continue;
        };
        let before: u64 = now.iter().map(|r| r.len).sum();
        // Cut at the end's size: a file cut short since an earlier look
        // has nothing past its end.
        let ranges = union_within(&seen.cached, &now, size);
        let total: u64 = ranges.iter().map(|r| r.len).sum();
        stats.bytes_evicted += total - before;
        if ranges.is_empty() {
            stats.not_resident += 1;
            continue;
        }
        let ms = seen.at.as_millis() as u64;
        let mut class = u32::try_from(ms / class_ms).unwrap_or(u32::MAX - FIRST_CLASS);
        if seen.by_until_unit {
            class = class.min(URGENT_CLASSES - 1);
            stats.until_unit_files += 1;
        }
        out.push(RecordedFile {
            path: seen.path,
            first_access_ms: ms,
            priority: FIRST_CLASS.saturating_add(class),
            ranges,
        });
    }
    // Class order; stable, so first-access order within a class (`files`
    // is in first-access order, and so is `out` but for the --until
    // units' files kept urgent).
    out.sort_by_key(|f| f.priority);
    out
}

/// Watches systemd units on a thread of its own: `active` once all of them
/// were reported active.
struct UnitWatch {
    active: Arc<AtomicBool>,
}

impl UnitWatch {
    /// Start watching `units` (none: no watch) until they are active or
    /// `stop` says so.
    fn spawn(units: &[String], stop: StopSignal) -> Option<UnitWatch> {
        if units.is_empty() {
            return None;
        }
        let active = Arc::new(AtomicBool::new(false));
        let flag = active.clone();
        let units = units.to_vec();
        let spawned = std::thread::Builder::new()
            .name("prewarm-units".into())
            .spawn(move || loop {
                if stop.check().is_some() {
                    return;
                }
                match units.iter().try_fold(true, |all, u| {
                    Ok::<_, std::io::Error>(all && unit_active(u)?)
                }) {
                    Ok(true) => {
                        flag.store(true, Ordering::Relaxed);
                        return;
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(
                            "cannot ask systemd about {} ({e}): --until will not end the recording",
                            units.join(",")
                        );
                        return;
                    }
                }
                std::thread::sleep(UNIT_POLL);
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot watch the units ({e}): --until will not end the recording");
        }
        Some(UnitWatch { active })
    }

    fn active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }
}

/// Whether `systemctl is-active --quiet UNIT` says the unit is active; an
/// error when systemctl cannot be run. A call that takes longer than
/// [`UNIT_CALL_TIMEOUT`] is killed and counts as not active.
fn unit_active(unit: &str) -> std::io::Result<bool> {
    let mut child = std::process::Command::new("systemctl")
        .args(["is-active", "--quiet", "--", unit])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let called = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status.success());
        }
        if called.elapsed() >= UNIT_CALL_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::parse_list;

    #[test]
    fn an_until_units_first_read_while_settling_stays_in_the_last_urgent_class() {
        let dir = tempfile::tempdir().unwrap();
        let seen_at = |name: &str, ms: u64, by_until_unit: bool| {
            let path = dir.path().join(name);
            std::fs::write(&path, vec![1u8; 4096]).unwrap();
            let meta = std::fs::metadata(&path).unwrap();
            let mut seen = Seen {
                path,
                dev: meta.dev(),
                ino: meta.ino(),
                at: Duration::from_millis(ms),
                by_until_unit,
                cached: Vec::new(),
            };
            seen.remember(&[ByteRange {
                offset: 0,
                len: 4096,
            }]);
            seen
        };
        // In first-access order, with 100 ms classes: the unit's file read
        // at 0.5 s keeps its class, 15; another process's at 2.5 s gets
        // 35; the unit's at 2.6 s (it was active by then) stays at 20,
        // and so comes before the other.
        let files = vec![
            seen_at("early", 500, true),
            seen_at("other", 2500, false),
            seen_at("unit", 2600, true),
        ];
        let mut stats = RecordStats::default();
        let got: Vec<(String, u32)> = resolve_ranges(files, 100, &mut stats)
            .into_iter()
            .map(|f| {
                (
                    f.path.file_name().unwrap().to_string_lossy().into_owned(),
                    f.priority,
                )
            })
            .collect();
        let last_urgent = FIRST_CLASS + URGENT_CLASSES - 1;
        assert_eq!(last_urgent, 20);
        assert_eq!(
            got,
            [
                ("early".to_string(), 15),
                ("unit".to_string(), last_urgent),
                ("other".to_string(), 35)
            ]
        );
        assert_eq!(stats.until_unit_files, 2);
    }

    #[test]
    fn what_an_earlier_look_saw_stays_in_the_recording_cut_at_the_end() {
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![7u8; 1 << 20]).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        file.sync_all().unwrap();
        nix::fcntl::posix_fadvise(
            file.as_raw_fd(),
            0,
            0,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        )
        .unwrap();
        let meta = file.metadata().unwrap();
        let mut seen = Seen {
            path: path.clone(),
            dev: meta.dev(),
            ino: meta.ino(),
            at: Duration::from_millis(250),
            by_until_unit: false,
            cached: Vec::new(),
        };
        let (now, size) = seen.look().unwrap();
        assert_eq!(size, 1 << 20);
        if !now.is_empty() {
            eprintln!(
                "skipped: the page cache of {} cannot be dropped here",
                path.display()
            );
            return;
        }
        // An earlier look saw 64 KiB at 256 KiB and 4 MiB from 768 KiB
        // (the file was longer then); both are gone from the cache now.
        let r = |offset, len| ByteRange { offset, len };
        seen.remember(&[r(768 << 10, 4 << 20)]);
        seen.remember(&[r(256 << 10, 64 << 10)]);
        let mut stats = RecordStats::default();
        let got = resolve_ranges(vec![seen], 100, &mut stats);
        assert_eq!(got.len(), 1);
        assert_eq!(
            got[0].ranges,
            [r(256 << 10, 64 << 10), r(768 << 10, 256 << 10)]
        );
        assert_eq!(got[0].priority, FIRST_CLASS + 2);
        assert_eq!(stats.bytes_evicted, 320 << 10);
        assert_eq!(stats.not_resident, 0);

        // Replaced by another file: left out, whatever was seen before.
        let mut gone = Seen {
            path: path.clone(),
            dev: meta.dev(),
            ino: meta.ino(),
            at: Duration::ZERO,
            by_until_unit: false,
            cached: vec![r(0, 4096)],
        };
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"new").unwrap();
        gone.remember(&[]);
        let got = resolve_ranges(vec![gone], 100, &mut stats);
        assert!(got.is_empty());
        assert_eq!(stats.changed, 1);
    }

    #[test]
    fn proactive_reclaim_is_an_on_kdamond_with_a_pageout_scheme() {
        let dir = tempfile::tempdir().unwrap();
        let put = |rel: &str, text: &str| {
            let path = dir.path().join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        };
        // 0: on, its second context pages out; 1: on, only statistics;
        // 2: pages out but off; a stray file is no kdamond.
        put("0/state", "on\n");
        put("0/contexts/0/schemes/0/action", "stat\n");
        put("0/contexts/1/schemes/0/action", "pageout\n");
        put("1/state", "on\n");
        put("1/contexts/0/schemes/0/action", "stat\n");
        put("2/state", "off\n");
        put("2/contexts/0/schemes/0/action", "pageout\n");
        put("nr_kdamonds", "3\n");
        assert_eq!(proactive_reclaim(dir.path()), ["0"]);
        assert!(proactive_reclaim(&dir.path().join("absent")).is_empty());
    }

    #[test]
    fn a_recording_reads_back_as_its_list() {
        let r = |offset, len| ByteRange { offset, len };
        let rec = Recording {
            files: vec![
                RecordedFile {
                    path: "/usr/bin/kubelet".into(),
                    first_access_ms: 5,
                    priority: 10,
                    ranges: vec![r(0, 4096), r(8 << 20, 65536)],
                },
                RecordedFile {
                    path: "/opt/a name ".into(),
                    first_access_ms: 2500,
                    priority: 12,
                    ranges: vec![r(0, 100)],
                },
            ],
            ended: RecordEnd::Duration,
            stats: RecordStats::default(),
            started_unix: 1_763_000_000,
            class_width_ms: 1000,
        };
        let (entries, warnings) = parse_list(&rec.to_list(), Path::new("boot.rec"));
        assert!(warnings.is_empty(), "{warnings:?}");
        let got: Vec<_> = entries
            .iter()
            .map(|e| (e.priority, e.path.clone(), e.ranges.clone()))
            .collect();
        let want: Vec<_> = rec
            .files
            .iter()
            .map(|f| (f.priority, f.path.clone(), Some(f.ranges.clone())))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn the_automatic_width_puts_the_time_until_the_units_in_the_urgent_classes() {
        let class = |ms: u64, width: u64| FIRST_CLASS as u64 + ms / width;
        for span_ms in [1_100u64, 9_999, 10_999, 11_000, 47_321, 600_000] {
            let w = class_width_ms(None, Duration::from_millis(span_ms));
            let last = FIRST_CLASS + URGENT_CLASSES - 1;
            assert_eq!(class(span_ms, w), u64::from(last), "span {span_ms} ms");
            assert_eq!(class(0, w), u64::from(FIRST_CLASS));
            // What only the settle time saw comes after.
            assert!(class(span_ms + w, w) > u64::from(last));
        }
        // A short recording is not split into slivers; an asked width holds.
        assert_eq!(class_width_ms(None, Duration::from_millis(50)), 100);
        assert_eq!(
            class_width_ms(Some(Duration::from_secs(1)), Duration::from_secs(99)),
            1000
        );
    }

    #[test]
    fn units_are_not_active_without_systemctl_or_when_unknown() {
        // Either systemctl is missing (an error) or the unit is unknown
        // (not active): never active.
        assert!(!unit_active("prewarm-no-such-unit.service").unwrap_or(false));
    }
}
