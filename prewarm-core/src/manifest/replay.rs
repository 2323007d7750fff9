//! Replaying a manifest at boot: a manifest becomes a prepared plan again,
//! without walking or mapping files.
//!
//! The device is found by filesystem UUID (waiting for it to appear) and
//! refused if its size or block size differ from what was planned. The
//! recorded extents are the plan, read at once ([`prepare_manifest`], from
//! a [`ManifestScan`]: the entries are counted, not built). When the
//! filesystem is mounted (the root phase), the entries are decoded again
//! and every file is checked against the inode, size and mtime recorded at
//! planning time while that plan is read ([`complete`]): unchanged files
//! are as recorded, changed files
//! are re-mapped live and their new extents added, missing files are
//! dropped; the classes are complete only once their checks are. The old
//! extents of a changed file are read all the same: reading a stale range
//! costs a read, never harm. In the initrd nothing is mounted yet, so the
//! recorded extents are all there is, and reads that need the files
//! themselves wait for the root phase.
//!
//! A manifest is untrusted: its paths are checked by the decoder (relative,
//! no `..`), and again here, after joining, against the filesystem itself:
//! a path is resolved beneath the mount with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_MAGICLINKS)`, and where that refuses (an absolute symlink, or
//! a kernel without openat2) it is resolved in full and kept only if it
//! lands under the mount. A file that would lead outside is never opened:
//! it is counted (`outside_mount`) and warned about by path.
//!
//! The manifest's container images go into the report as a run with
//! `--image` reports them, their directories shown where their filesystem
//! is mounted (from `/` when it is not: the initrd).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::codec::{DeviceHeader, Manifest, ManifestFile, ManifestImage};
use super::handover::HandoverState;
use super::scan::{at_priority, ClassCount, ManifestScan};
use crate::engine::StopSignal;
use crate::error::{Error, Origin, Warning, WarningKind};
use crate::map::device::BlockDevice;
use crate::map::extent::{map_file, open_file};
use crate::map::fsid::{self, format_uuid};
use crate::map::pool::MetadataPool;
use crate::map::{device, DeviceId, ExtentMap, FileReadReason};
use crate::plan::{PrioritizedExtent, ReadPlan};
use crate::report::{ImageReport, ManifestReport, RefusedFilesystem};
use crate::run::{Added, DevicePlan, FileRetention, MappedFile, Planner, Prepared};
use crate::source::TargetFile;

/// How to replay a manifest.
#[derive(Debug, Clone)]
pub(crate) struct ReplayOptions {
    /// For error messages.
    pub manifest_path: PathBuf,
    /// The manifest's checksum (reported; keys the handover state).
    pub manifest_crc: u32,
    /// How long to wait for each filesystem's device to appear.
    pub wait_device: Duration,
    /// Only files of at most this priority (the initrd takes the top
    /// classes and leaves the rest to the root phase).
    pub max_priority: Option<u32>,
    /// Check files against the manifest where their filesystem is mounted.
    pub verify: bool,
    /// Accept a device larger than the one planned on (the filesystem was
    /// grown in place); a smaller or differently blocked one is still
    /// refused.
    pub allow_grown: bool,
    /// Ends the wait for devices early.
    pub stop: StopSignal,
    /// Which files the plan keeps: a run that reads only the recorded
    /// extents needs a file's counts, not the file (see [`FileRetention`]).
    pub retention: FileRetention,
}

/// What became of one manifest file.
enum FileStatus {
    Unchanged,
    Changed,
    Missing,
    Unverified,
    /// Its path leads outside the filesystem's mount (the path shown, and
    /// why): refused, never opened.
    OutsideMount(PathBuf, String),
}

/// A filesystem whose files are checked while its recorded plan is read.
pub(crate) struct PendingCheck<'m> {
    id: DeviceId,
    /// `st_dev` of its files.
    dev_num: u64,
    mount: Arc<MountDir>,
    files: Vec<&'m ManifestFile>,
}

/// A filesystem of the manifest whose entries a run needs after its
/// first read: to check them (it is mounted), or to list them (every file
/// is kept: a dry run, `--cache`).
pub(crate) struct DeferredDevice {
    /// Its index among the manifest's devices.
    index: usize,
    id: DeviceId,
    /// `st_dev` of its files.
    dev_num: u64,
    /// Where its files are checked; `None`: only listed, as recorded.
    mount: Option<Arc<MountDir>>,
}

/// What a replay does once its recorded plan is being read.
pub(crate) struct Deferred {
    devices: Vec<DeferredDevice>,
    max_priority: Option<u32>,
}

/// Turn a scanned manifest into a prepared plan (see the module doc): for
/// every filesystem found, the extents the manifest recorded (of the files
/// and directories of the classes this run takes), less the chunks
/// `handover` records as read already, and the entries counted. Where the
/// filesystem is mounted its files are checked too, but not here:
/// [`complete`] does it while the plan is read, and the classes stay
/// incomplete until it is done. `cfg.plan` is ignored: the manifest's own
/// plan configuration is used.
pub(crate) fn prepare_manifest(
    scan: &ManifestScan,
    opts: &ReplayOptions,
    handover: Option<&HandoverState>,
) -> Result<(Prepared, Deferred), Error> {
    scan.plan.validate(512)?;
    let start = Instant::now();
    let refuse = |reason: String| Error::ManifestRefused {
        path: opts.manifest_path.clone(),
        reason,
    };
    let mut report = ManifestReport {
        checksum: format!("{:08x}", opts.manifest_crc),
        ..Default::default()
    };
    let mut prepared = Prepared::empty(Vec::new());
    prepared.retention = opts.retention;
    let mut deferred = Vec::new();
    let mut devices = Vec::new();
    // Where each filesystem read is mounted (checked files only).
    let mut mounts: Vec<([u8; 16], PathBuf)> = Vec::new();
    let wanted = |priority: u32| opts.max_priority.is_none_or(|max| priority <= max);
    // Every filesystem is looked for at once, and each stands on its own: one
    // that is absent or changed is reported and the others are still read.
    let uuids: Vec<[u8; 16]> = scan.devices.iter().map(|d| d.header.uuid).collect();
    let found = fsid::find_by_uuids(&uuids, opts.wait_device, &opts.stop);
    // A stop during the search leaves filesystems not found: not refused,
    // only not reached (the run reports itself stopped).
    let stopped = opts.stop.check();
    let mut not_reached = 0u64;
    for (index, (sd, found)) in scan.devices.iter().zip(found).enumerate() {
        let md = &sd.header;
        let uuid = format_uuid(&md.uuid);
        let total: u64 = sd.classes.values().map(|c| c.files).sum();
        if found.is_none() && stopped.is_some() {
            not_reached += total;
            continue;
        }
        let dev = match usable_device(md, found, opts) {
            Ok(dev) => dev,
            Err(reason) => {
                tracing::warn!("{}: {reason}", opts.manifest_path.display());
                report.refused.push(RefusedFilesystem {
                    uuid,
                    fs_type: md.fs_type.clone(),
                    reason,
                });
                continue;
            }
        };
        let id = dev.id;
        let mount = if opts.verify {
            dev.mount_point.clone()
        } else {
            None
        };
        if let Some(mount) = &mount {
            mounts.push((md.uuid, mount.clone()));
        }
        // Opened once for every file's check; a mount that cannot be opened
        // leaves its files unverified (their recorded blocks still read).
        let mount_dir = mount.and_then(|m| match MountDir::open(m.clone()) {
            Ok(dir) => Some(dir),
            Err(e) => {
                tracing::warn!("opening {}: {e}: its files are not checked", m.display());
                None
            }
        });
        let dev_num = libc::makedev(id.major, id.minor);
        let classes: Vec<(u32, ClassCount)> = sd
            .classes
            .iter()
            .filter(|(p, _)| wanted(**p))
            .map(|(p, c)| (*p, *c))
            .collect();
        report.files += total;
        report.deferred += total - classes.iter().map(|(_, c)| c.files).sum::<u64>();
        // The recorded plan, read at once: a file found changed later adds
        // its new extents, and its old ones cost a read, never harm.
        let extents: Vec<PrioritizedExtent> = sd
            .extents
            .iter()
            .filter(|e| wanted(e.priority))
            .copied()
            .collect();
        let mut plan = ReadPlan::build(&extents, dev.size, &scan.plan);
        if let Some(h) = handover {
            report.handover_chunks += plan.subtract_done(h.done(&uuid));
        }
        let mut on_device = 0u64;
        match mount_dir {
            Some(mount) => {
                prepared
                    .held_classes
                    .extend(classes.iter().map(|(p, _)| *p));
                deferred.push(DeferredDevice {
                    index,
                    id,
                    dev_num,
                    mount: Some(Arc::new(mount)),
                });
            }
            // Nothing to check against (the initrd): the files are as
            // recorded, and their reads through the file wait for a run
            // that can check them. They are counted, not built, unless
            // every file is kept.
            None => {
                for (_, c) in &classes {
                    report.directories += c.directories;
                    report.unverified += c.files;
                    report.file_ranges_deferred += c.file_ranges;
                    on_device += c.on_device;
                    prepared
                        .tally
                        .add_counts(c.files, c.file_bytes, c.mapped_bytes);
                }
                if prepared.retention == FileRetention::All {
                    deferred.push(DeferredDevice {
                        index,
                        id,
                        dev_num,
                        mount: None,
                    });
                }
            }
        }
        devices.push(DevicePlan {
            device: dev,
            plan,
            files: on_device,
            swept: false,
            uuid: Some(uuid),
        });
    }
    if devices.is_empty() && !report.refused.is_empty() {
        // Nothing of the manifest can be read here.
        let reasons: Vec<String> = report.refused.iter().map(|r| r.reason.clone()).collect();
        return Err(refuse(reasons.join("; ")));
    }
    prepared.held_classes.sort_unstable();
    prepared.held_classes.dedup();
    let images = scan
        .images
        .iter()
        .filter(|i| wanted(i.priority))
        .map(|i| image_report(i, &mounts))
        .collect();
    let prepared = Prepared {
        manifest: Some(report),
        devices,
        prepare_time: start.elapsed(),
        images,
        stopped,
        entries_not_reached: not_reached,
        ..prepared
    };
    let deferred = Deferred {
        devices: deferred,
        max_priority: opts.max_priority,
    };
    Ok((prepared, deferred))
}

/// Finish a replay while its recorded plan is read (see the module doc):
/// decode the manifest's entries again (`bytes`, scanned already) if some
/// filesystem's files are to be checked or listed, list those, and check
/// those ([`check_files`]).
pub(crate) fn complete(
    planner: &mut Planner<'_>,
    sink: &mut dyn FnMut(&Planner<'_>, &Added),
    bytes: &[u8],
    deferred: Deferred,
    queue_depth: u32,
) {
    if deferred.devices.is_empty() {
        return;
    }
    let wanted = |f: &&ManifestFile| deferred.max_priority.is_none_or(|max| f.priority <= max);
    let manifest = match Manifest::decode(bytes) {
        Ok(m) => m,
        Err(e) => {
            // The scan accepted these very bytes: not expected. The files
            // stay unchecked; the held classes are released.
            tracing::error!("decoding the manifest again: {e}: its files are not checked");
            let checks = deferred.devices.iter().filter(|d| d.mount.is_some());
            let count = checks.clone().count();
            for (i, d) in checks.enumerate() {
                let added = planner.add_checked(d.id, d.dev_num, Vec::new(), &[], i + 1 == count);
                sink(planner, &added);
            }
            return;
        }
    };
    let mut checks = Vec::new();
    for d in deferred.devices {
        let Some(md) = manifest.devices.get(d.index) else {
            continue;
        };
        let files = md.files.iter().filter(wanted);
        match d.mount {
            Some(mount) => checks.push(PendingCheck {
                id: d.id,
                dev_num: d.dev_num,
                mount,
                files: files.collect(),
            }),
            // Counted when the plan was prepared: only kept now.
            None => {
                for f in files.filter(|f| !f.directory) {
                    let path = Path::new("/").join(&f.path);
                    planner
                        .prepared
                        .keep_file(recorded(f, path, d.dev_num, false));
                }
            }
        }
    }
    check_files(planner, sink, checks, queue_depth);
}

/// Manifest entries copied for the metadata pool at a time.
const CHECK_BATCH: usize = 4096;

/// Check the files of `checks` against the filesystem (see the module
/// doc), in parallel on `queue_depth` threads (each check may wait for a
/// cold inode or directory block), while the engines read the recorded
/// plan: what changed is mapped again and its new extents handed to `sink`
/// with the file-level reads; the counts go into the plan's manifest
/// report. The last addition completes the classes held meanwhile. After a
/// stop, files not checked yet are not reached.
fn check_files(
    planner: &mut Planner<'_>,
    sink: &mut dyn FnMut(&Planner<'_>, &Added),
    checks: Vec<PendingCheck<'_>>,
    queue_depth: u32,
) {
    let stop = planner.cfg.stop.clone();
    let count = checks.len();
    let pool = MetadataPool::new(queue_depth as usize);
    for (i, check) in checks.into_iter().enumerate() {
        // The pool's threads outlive a call, so they get their own copies
        // of the entries: a batch at a time, not the whole manifest twice.
        let mut replayed: Vec<Option<(FileStatus, Option<MappedFile>)>> = Vec::new();
        for batch in check.files.chunks(CHECK_BATCH) {
            let (stop, mount, dev_num) = (stop.clone(), Arc::clone(&check.mount), check.dev_num);
            let batch: Vec<ManifestFile> = batch.iter().map(|&f| f.clone()).collect();
            replayed.extend(pool.map(batch, move |f| {
                stop.check()
                    .is_none()
                    .then(|| replay_file(&f, Some(&mount), dev_num))
            }));
        }
        let mut files = Vec::new();
        let mut extents = Vec::new();
        let mut warnings = Vec::new();
        let mut not_reached = 0u64;
        let prepared = &mut planner.prepared;
        let Some(report) = prepared.manifest.as_mut() else {
            return;
        };
        for (replayed, f) in replayed.into_iter().zip(&check.files) {
            let Some((status, mapped)) = replayed else {
                not_reached += u64::from(!f.directory);
                continue;
            };
            let changed = matches!(status, FileStatus::Changed);
            // A directory's blocks are in the plan (again, when it changed);
            // it is no file to count, check or warn about (a directory gone
            // or changed in kind is simply not read again).
            if f.directory {
                if let Some(mapped) = mapped.filter(|m| m.file.dev == check.dev_num) {
                    report.directories += 1;
                    if changed {
                        extents.extend(device_extents_of(&mapped));
                    }
                }
                continue;
            }
            match status {
                FileStatus::Unchanged => report.unchanged += 1,
                FileStatus::Changed => report.changed += 1,
                FileStatus::Unverified => report.unverified += 1,
                FileStatus::Missing => {
                    report.missing += 1;
                    let shown = check.mount.path.join(&f.path);
                    warnings.push(Warning::new(
                        WarningKind::Missing,
                        Some(&shown),
                        Some(&Origin::Manifest),
                        "in the manifest but gone: skipped",
                    ));
                }
                FileStatus::OutsideMount(shown, why) => {
                    report.outside_mount += 1;
                    tracing::warn!("{}: {why}: refused", shown.display());
                    warnings.push(Warning::new(
                        WarningKind::Unreadable,
                        Some(&shown),
                        Some(&Origin::Manifest),
                        format!("{why}: refused, not read"),
                    ));
                }
            }
            let Some(mapped) = mapped else { continue };
            if changed && mapped.file.dev == check.dev_num {
                extents.extend(device_extents_of(&mapped));
            }
            files.push(mapped);
        }
        prepared.warnings.extend(warnings);
        prepared.entries_not_reached += not_reached;
        let last = i + 1 == count;
        let added = planner.add_checked(check.id, check.dev_num, files, &extents, last);
        sink(planner, &added);
    }
}

/// The device extents of `m`, at its priority.
fn device_extents_of(m: &MappedFile) -> impl Iterator<Item = PrioritizedExtent> + '_ {
    at_priority(m.file.priority, &m.map.device_extents)
}

/// A manifest image as the report names images (see the module doc);
/// those of a class the run defers are left to the run that reads them.
fn image_report(image: &ManifestImage, mounts: &[([u8; 16], PathBuf)]) -> ImageReport {
    let directories = image
        .directories
        .iter()
        .map(|d| {
            let mount = mounts
                .iter()
                .find(|(uuid, _)| *uuid == d.uuid)
                .map_or(Path::new("/"), |(_, m)| m.as_path());
            mount.join(&d.path).display().to_string()
        })
        .collect();
    ImageReport {
        reference: image.reference.clone(),
        image: Some(image.image.clone()),
        digest: Some(image.digest.clone()),
        priority: image.priority,
        directories,
        warnings: Vec::new(),
    }
}

/// The open device of the manifest filesystem `md` (found at `found`), or
/// why it cannot be read: absent, unopenable, or of another size or block
/// size than planned.
fn usable_device(
    md: &DeviceHeader,
    found: Option<(DeviceId, PathBuf)>,
    opts: &ReplayOptions,
) -> Result<BlockDevice, String> {
    let uuid = format_uuid(&md.uuid);
    let Some((id, node)) = found else {
        return Err(format!(
            "no block device holds the {} filesystem {uuid} (waited {:?})",
            md.fs_type, opts.wait_device
        ));
    };
    let dev =
        device::open(id).map_err(|e| format!("filesystem {uuid} on {}: {e}", node.display()))?;
    // A filesystem grown in place (a root volume resized at launch, then
    // growpart and resize2fs / xfs_growfs) keeps every block where it was:
    // with `allow_grown`, a larger device is accepted.
    let grown = opts.allow_grown && dev.size > md.size;
    if (dev.size != md.size && !grown) || dev.logical_block_size != md.logical_block_size {
        return Err(format!(
            "planned for a {}-byte device with {}-byte blocks, but {} (filesystem {uuid}) has {} bytes with {}-byte blocks",
            md.size,
            md.logical_block_size,
            dev.node.display(),
            dev.size,
            dev.logical_block_size
        ));
    }
    Ok(dev)
}

/// One manifest file: as recorded, re-mapped, or gone. Files on another
/// device than the manifest's (a changed file now elsewhere) are returned
/// demoted to reads through the file.
fn replay_file(
    f: &ManifestFile,
    mount: Option<&MountDir>,
    dev_num: u64,
) -> (FileStatus, Option<MappedFile>) {
    let Some(mount) = mount else {
        let path = Path::new("/").join(&f.path);
        return (
            FileStatus::Unverified,
            Some(recorded(f, path, dev_num, false)),
        );
    };
    let (path, stat) = match resolve_beneath(mount, &f.path) {
        Ok(Some(found)) => found,
        Ok(None) => return (FileStatus::Missing, None),
        Err(why) => {
            // Shown under the mount even when absolute (joining would drop
            // the mount).
            let shown = mount.path.join(f.path.strip_prefix("/").unwrap_or(&f.path));
            return (FileStatus::OutsideMount(shown, why), None);
        }
    };
    let Ok(seen) = stat.map_or_else(|| std::fs::metadata(&path).map(|m| Seen::of(&m)), Ok) else {
        return (FileStatus::Missing, None);
    };
    // A directory entry must still be a directory, a file a file.
    let same_kind = if f.directory {
        seen.is_dir
    } else {
        seen.is_file
    };
    let unchanged = same_kind
        && seen.dev == dev_num
        && seen.ino == f.ino
        && seen.size == f.size
        && seen.mtime == (f.mtime_sec, i64::from(f.mtime_nsec));
    if unchanged {
        return (
            FileStatus::Unchanged,
            Some(recorded(f, path, dev_num, true)),
        );
    }
    let meta = match std::fs::metadata(&path) {
        Ok(meta) if same_kind => meta,
        _ => return (FileStatus::Missing, None),
    };
    // Changed: map it again, now (a directory: its blocks, or nothing).
    if f.directory {
        let Ok((dir, _)) = open_file(&path, false) else {
            return (FileStatus::Missing, None);
        };
        let map = ExtentMap {
            device_extents: crate::map::extent::map_directory(&dir),
            file_ranges: Vec::new(),
            unwritten_bytes: 0,
            fallback: None,
            from_inode: false,
        };
        let file = TargetFile::from_metadata(path, &meta, f.priority, Origin::Manifest);
        return (FileStatus::Changed, Some(MappedFile { file, map }));
    }
    let map = match open_file(&path, false) {
        Ok((file, _)) => {
            let mut map = map_file(&file, meta.len(), f.ranges.as_deref());
            if meta.dev() != dev_num {
                map.demote_to_file_reads(FileReadReason::Moved);
            }
            map
        }
        Err(e) => ExtentMap::through_file(
            meta.len(),
            f.ranges.as_deref(),
            FileReadReason::RemapFailed {
                error: e.to_string(),
            },
        ),
    };
    let mut file = TargetFile::from_metadata(path, &meta, f.priority, Origin::Manifest);
    file.ranges = f.ranges.clone();
    (FileStatus::Changed, Some(MappedFile { file, map }))
}

/// The directory a manifest filesystem is mounted at, opened once: every
/// manifest path of it is resolved beneath this descriptor.
pub(super) struct MountDir {
    path: PathBuf,
    dir: std::fs::File,
}

impl MountDir {
    /// Open the mount directory `path`.
    pub fn open(path: PathBuf) -> std::io::Result<Self> {
        let dir = std::fs::File::open(&path)?;
        Ok(MountDir { path, dir })
    }
}

/// What a replay compares of a file with what the manifest recorded.
#[derive(Debug, Clone, Copy)]
struct Seen {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    is_dir: bool,
    is_file: bool,
}

impl Seen {
    fn of(m: &std::fs::Metadata) -> Self {
        Seen {
            dev: m.dev(),
            ino: m.ino(),
            size: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            is_dir: m.is_dir(),
            is_file: m.is_file(),
        }
    }

    fn of_stat(st: &nix::sys::stat::FileStat) -> Self {
        let kind = st.st_mode & libc::S_IFMT;
        Seen {
            dev: st.st_dev,
            ino: st.st_ino,
            size: u64::try_from(st.st_size).unwrap_or(0),
            mtime: (st.st_mtime, st.st_mtime_nsec),
            is_dir: kind == libc::S_IFDIR,
            is_file: kind == libc::S_IFREG,
        }
    }
}

/// Manifest file `f` as it was recorded, at `path` on device `dev_num`;
/// its reads through the file only `with_file_ranges` (they need it
/// checked first).
fn recorded(f: &ManifestFile, path: PathBuf, dev_num: u64, with_file_ranges: bool) -> MappedFile {
    MappedFile {
        file: TargetFile {
            path,
            priority: f.priority,
            origin: Origin::Manifest,
            dev: dev_num,
            ino: f.ino,
            size: f.size,
            mtime: (f.mtime_sec, i64::from(f.mtime_nsec)),
            ranges: f.ranges.clone(),
            mapped: None,
        },
        map: ExtentMap {
            device_extents: f.extents.clone(),
            file_ranges: if with_file_ranges {
                f.file_ranges.clone()
            } else {
                Vec::new()
            },
            unwritten_bytes: 0,
            fallback: None,
            from_inode: false,
        },
    }
}

/// The path to open for the manifest path `rel` of the filesystem mounted at
/// `mount`, with what the file is when resolving it told it already:
/// `Ok(None)` when nothing is there, `Err(why)` when the path leads outside
/// the mount (see the module doc). The path returned resolves, with the
/// host's rules, to a file under the mount. One `openat2` beneath the
/// mount's descriptor and an `fstat` of what it found do for a file that is
/// where it was: that is every file of a replay, made before the first read.
fn resolve_beneath(
    mount: &MountDir,
    rel: &Path,
) -> Result<Option<(PathBuf, Option<Seen>)>, String> {
    use nix::errno::Errno;
    use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
    use std::os::fd::AsRawFd;
    use std::path::Component;

    // The decoder refuses these; a manifest built in memory is checked too.
    if rel.as_os_str().is_empty()
        || rel
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(format!(
            "the manifest path {:?} is not relative to the filesystem's root",
            rel
        ));
    }
    let joined = mount.path.join(rel);
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    match openat2(mount.dir.as_raw_fd(), rel, how) {
        Ok(fd) => {
            let stat = nix::sys::stat::fstat(fd).ok().map(|st| Seen::of_stat(&st));
            let _ = nix::unistd::close(fd);
            return Ok(Some((joined, stat)));
        }
        Err(Errno::ENOENT | Errno::ENOTDIR | Errno::EACCES) => return Ok(None),
        // EXDEV: the resolution left the mount's directory (an absolute
        // symlink may still land inside it); ELOOP: a magic link or a loop;
        // others: no openat2 here. Resolve in full and check where it lands.
        Err(_) => {}
    }
    let Ok(resolved) = std::fs::canonicalize(&joined) else {
        return Ok(None);
    };
    let root = std::fs::canonicalize(&mount.path).unwrap_or_else(|_| mount.path.clone());
    if resolved.starts_with(&root) {
        Ok(Some((resolved, None)))
    } else {
        Err(format!(
            "resolves to {}, outside the filesystem mounted at {}",
            resolved.display(),
            mount.path.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A mount directory holding `a/b`, a directory symlink `lib -> a`,
    /// symlinks leaving it (absolute and by `..`) and an absolute symlink
    /// that lands back inside it.
    fn mount_with_symlinks() -> (tempfile::TempDir, PathBuf) {
        let top = tempfile::tempdir().unwrap();
        let mount = top.path().join("mnt");
        std::fs::create_dir_all(mount.join("a")).unwrap();
        std::fs::write(mount.join("a/b"), b"inside").unwrap();
        std::fs::write(top.path().join("secret"), b"outside").unwrap();
        let link = |target: &Path, name: &str| {
            std::os::unix::fs::symlink(target, mount.join(name)).unwrap()
        };
        link(Path::new("a"), "lib");
        link(&top.path().join("secret"), "abs-out");
        link(Path::new("../secret"), "rel-out");
        let magic = format!("/proc/self/root{}", top.path().join("secret").display());
        link(Path::new(&magic), "magic-out");
        link(&mount.join("a/b"), "abs-in");
        (top, mount)
    }

    #[test]
    fn images_are_reported_where_their_filesystem_is_mounted() {
        use super::super::codec::ManifestDirectory;
        let dir = |uuid: u8, path: &str| ManifestDirectory {
            uuid: [uuid; 16],
            path: PathBuf::from(path),
        };
        let image = ManifestImage {
            reference: "small:1".into(),
            image: "docker.io/library/small:1".into(),
            digest: format!("sha256:{}", "c3".repeat(32)),
            priority: 60,
            directories: vec![dir(1, "snapshots/2/fs"), dir(2, "lib/snapshots/1/fs")],
        };
        let mounts = [([1; 16], PathBuf::from("/var/lib/containerd"))];
        let r = image_report(&image, &mounts);
        assert_eq!(r.reference, "small:1");
        assert_eq!(r.image.as_deref(), Some("docker.io/library/small:1"));
        assert_eq!(r.digest.as_deref(), Some(image.digest.as_str()));
        assert_eq!(r.priority, 60);
        // Filesystem 2 is not mounted (the initrd): from `/`.
        assert_eq!(
            r.directories,
            ["/var/lib/containerd/snapshots/2/fs", "/lib/snapshots/1/fs"]
        );
        assert!(r.warnings.is_empty());
    }

    #[test]
    fn paths_resolve_beneath_the_mount_or_are_refused() {
        let (_top, mount) = mount_with_symlinks();
        let dir = MountDir::open(mount.clone()).unwrap();
        let ok = |rel: &str| {
            resolve_beneath(&dir, Path::new(rel)).map(|found| found.map(|(path, _)| path))
        };
        assert_eq!(ok("a/b"), Ok(Some(mount.join("a/b"))));
        assert_eq!(ok("lib/b"), Ok(Some(mount.join("lib/b"))));
        assert_eq!(ok("a/none"), Ok(None));
        // An absolute symlink landing inside the mount is followed.
        let inside = std::fs::canonicalize(mount.join("a/b")).unwrap();
        assert_eq!(ok("abs-in"), Ok(Some(inside)));
        // What resolving found is the file, seen through its descriptor.
        let (_, seen) = resolve_beneath(&dir, Path::new("lib/b")).unwrap().unwrap();
        let meta = std::fs::metadata(mount.join("a/b")).unwrap();
        let seen = seen.expect("openat2 found it");
        assert_eq!((seen.ino, seen.size, seen.is_file), (meta.ino(), 6, true));
        for rel in [
            "abs-out",
            "rel-out",
            "magic-out",
            "../secret",
            "a/../../secret",
            "/etc/passwd",
            "",
        ] {
            let err = ok(rel).expect_err(rel);
            assert!(
                err.contains("outside") || err.contains("not relative"),
                "{rel}: {err}"
            );
        }
    }

    #[test]
    fn a_manifest_file_leading_outside_the_mount_is_never_opened() {
        let (_top, mount) = mount_with_symlinks();
        let dir = MountDir::open(mount.clone()).unwrap();
        for rel in ["abs-out", "rel-out", "../secret", "/etc/hostname"] {
            let f = ManifestFile {
                path: PathBuf::from(rel),
                ino: 1,
                size: 7,
                mtime_sec: 0,
                mtime_nsec: 0,
                priority: 10,
                extents: Vec::new(),
                file_ranges: vec![crate::map::ByteRange { offset: 0, len: 7 }],
                ranges: None,
                directory: false,
            };
            let (status, mapped) = replay_file(&f, Some(&dir), 0);
            assert!(mapped.is_none(), "{rel}: nothing to read");
            match status {
                FileStatus::OutsideMount(shown, why) => {
                    assert!(shown.starts_with(&mount), "{rel}: {}", shown.display());
                    assert!(!why.is_empty());
                }
                _ => panic!("{rel}: not refused"),
            }
        }
        // A file inside is replayed (changed: the recorded inode differs).
        let f = ManifestFile {
            path: PathBuf::from("lib/b"),
            ino: 1,
            size: 6,
            mtime_sec: 0,
            mtime_nsec: 0,
            priority: 10,
            extents: Vec::new(),
            file_ranges: Vec::new(),
            ranges: None,
            directory: false,
        };
        let (status, mapped) = replay_file(&f, Some(&dir), 0);
        assert!(matches!(status, FileStatus::Changed));
        assert_eq!(mapped.unwrap().file.path, mount.join("lib/b"));
    }
}
