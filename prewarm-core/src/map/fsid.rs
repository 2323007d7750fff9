//! Filesystem identity: the type and UUID in a block device's superblock,
//! and finding a device by that UUID.
//!
//! A manifest planned at image build time names its device by filesystem
//! UUID, not by path: `/dev/nvme0n1p1` at build time may be `/dev/xvda1` at
//! boot, and in the initrd the udev symlinks may not exist yet. The
//! superblock is read directly (ext2/3/4: magic 0xEF53 at 1024+56, UUID at
//! 1024+104; XFS: magic "XFSB" at 0, UUID at 32), so no `blkid` is needed in
//! the initrd.
//!
//! A filesystem already mounted (the root phase) is found without reading
//! its device: the kernel says each mounted filesystem's UUID
//! (`FS_IOC_GETFSUUID`, Linux 6.5). A mounted ext4 keeps its superblock's
//! block in the device's page cache, but XFS keeps its own copy: probing a
//! mounted XFS root (Amazon Linux's) reads the device, on a lazy volume a
//! fetch the whole run would wait for before its first planned read.

use std::fs::File;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::device::{self, open_read_only, DeviceId};
use super::fiemap;
use crate::engine::StopSignal;

/// Filesystem types whose superblock we can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsType {
    Ext4,
    Xfs,
}

impl FsType {
    pub fn name(self) -> &'static str {
        match self {
            FsType::Ext4 => "ext4",
            FsType::Xfs => "xfs",
        }
    }
}

/// A filesystem's type and UUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsIdentity {
    pub fs_type: FsType,
    pub uuid: [u8; 16],
}

/// Format a UUID the way blkid prints it.
pub fn format_uuid(u: &[u8; 16]) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Identify the filesystem from its first 4 KiB.
pub fn identify(head: &[u8]) -> Option<FsIdentity> {
    let uuid_at = |off: usize| -> Option<[u8; 16]> { head.get(off..off + 16)?.try_into().ok() };
    if head.get(0..4) == Some(b"XFSB") {
        return Some(FsIdentity {
            fs_type: FsType::Xfs,
            uuid: uuid_at(32)?,
        });
    }
    if head.get(1024 + 56..1024 + 58) == Some(&[0x53, 0xEF]) {
        return Some(FsIdentity {
            fs_type: FsType::Ext4,
            uuid: uuid_at(1024 + 104)?,
        });
    }
    None
}

/// Read the identity of the filesystem on the block device `node`.
pub fn read_identity(node: &Path) -> std::io::Result<Option<FsIdentity>> {
    // A separate buffered descriptor: one small unaligned read.
    let (f, _) = open_read_only(node, false, 0)?;
    read_identity_of(&f)
}

fn read_identity_of(f: &File) -> std::io::Result<Option<FsIdentity>> {
    let mut head = vec![0u8; 4096];
    let mut got = 0;
    while got < head.len() {
        match f.read_at(&mut head[got..], got as u64)? {
            0 => break,
            n => got += n,
        }
    }
    head.truncate(got);
    Ok(identify(&head))
}

/// How long a scan waits for the devices' answers when no wait for devices
/// to appear was asked for: a healthy device answers a 4 KiB read in
/// milliseconds (a lazy volume in one fetch); a hung or slow disk must not
/// hold the run.
pub const PROBE_WINDOW: Duration = Duration::from_secs(1);

/// How often the search wakes while waiting for a device: to look at the
/// stop signal (an atomic, no descriptor to wait on) and for new device
/// nodes. A wake that finds no new node costs a `poll`, nothing more.
const WAKE_INTERVAL: Duration = Duration::from_millis(50);

/// How often sysfs is looked at again when no device node appeared
/// meanwhile ([`DeviceArrivals`]): a device that gets its size without a
/// node of its own (a loop device attached to a node that was there) is
/// noticed this late at most. Without the watch (no inotify, no `/dev`)
/// every wake looks, as every [`WAKE_INTERVAL`]. Each look is a directory
/// read and a few `stat`s; under an emulator in an initrd, with the kernel
/// probing the very disk waited for, 20 of them a second cost the boot
/// CPU it wanted.
const IDLE_RESCAN: Duration = Duration::from_millis(250);

/// Find the block devices holding the filesystems `uuids` (one answer per
/// UUID, in order), polling up to `wait` for them to appear (in the initrd
/// the disk driver may still be probing).
///
/// Every candidate (the `/dev/disk/by-uuid` link, then every block device
/// in sysfs) has its superblock read on a thread of its own, all at once,
/// so one hung or slow disk delays nothing: the search ends as soon as every
/// UUID is found, when `wait` (at least [`PROBE_WINDOW`]) has passed, or
/// when `stop` says so. A read that never returns is left behind.
pub fn find_by_uuids(
    uuids: &[[u8; 16]],
    wait: Duration,
    stop: &StopSignal,
) -> Vec<Option<(DeviceId, PathBuf)>> {
    let deadline = Instant::now() + wait.max(PROBE_WINDOW);
    let mut found = find_mounted(uuids);
    if found.iter().all(Option::is_some) {
        return found;
    }
    let mut prober = Prober::default();
    // Watching before the first look: a node made between the look and
    // the watch would otherwise wait for the next idle rescan.
    let arrivals = DeviceArrivals::watch();
    let rescan = if arrivals.is_some() {
        IDLE_RESCAN
    } else {
        WAKE_INTERVAL
    };
    let mut looked: Option<Instant> = None;
    let mut arrived = false;
    loop {
        if arrived || looked.is_none_or(|t| t.elapsed() >= rescan) {
            prober.probe_new_candidates(uuids);
            looked = Some(Instant::now());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if prober.pending > 0 {
            prober.collect(left.min(WAKE_INTERVAL));
        }
        for (slot, uuid) in found.iter_mut().zip(uuids) {
            if slot.is_none() {
                *slot = prober.holder_of(uuid);
            }
        }
        let all_found = found.iter().all(Option::is_some);
        // Without a wait for devices to appear, one scan is enough once
        // every candidate has answered.
        let scanned = wait.is_zero() && prober.pending == 0;
        if all_found || scanned || Instant::now() >= deadline || stop.check().is_some() {
            return found;
        }
        // Answers still due were waited for above; otherwise sleep until
        // a node appears or the next wake.
        let wait = if prober.pending > 0 {
            Duration::ZERO
        } else {
            deadline
                .saturating_duration_since(Instant::now())
                .min(WAKE_INTERVAL)
        };
        arrived = match &arrivals {
            Some(a) => a.wait(wait),
            None => {
                std::thread::sleep(wait);
                false
            }
        };
    }
}

/// Block device nodes appearing, watched with inotify: devtmpfs makes a
/// node in `/dev` as the kernel adds a disk or a partition (before udev
/// has run), and udev links `/dev/disk/by-uuid` once it has read the
/// filesystem. A wait on it costs no CPU until something appears.
struct DeviceArrivals {
    inotify: nix::sys::inotify::Inotify,
}

impl DeviceArrivals {
    /// The watch, or none where inotify or `/dev` is not there (the search
    /// then looks at every wake).
    fn watch() -> Option<DeviceArrivals> {
        use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).ok()?;
        let made = AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO;
        inotify.add_watch("/dev", made).ok()?;
        // Present once udev has run; the node in /dev comes first anyway.
        let _ = inotify.add_watch("/dev/disk/by-uuid", made);
        Some(DeviceArrivals { inotify })
    }

    /// Wait up to `wait` for a node to appear; whether one did (the events
    /// are taken: the caller looks at every device anyway).
    fn wait(&self, wait: Duration) -> bool {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let ms = u16::try_from(wait.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(self.inotify.as_fd(), PollFlags::POLLIN)];
        let ready = poll(&mut fds, PollTimeout::from(ms)).unwrap_or(0) > 0;
        let mut arrived = false;
        if ready {
            // Non-blocking: read until empty (EAGAIN).
            while let Ok(events) = self.inotify.read_events() {
                if events.is_empty() {
                    break;
                }
                arrived = true;
            }
        }
        arrived
    }
}

/// The filesystems `uuids` (one answer per UUID, in order) that are
/// mounted, by the UUID the kernel holds for each mounted filesystem: no
/// device is read. A mount point that cannot be opened, is covered by
/// another mount, or whose kernel does not say its UUID, is left to the
/// superblock probe.
fn find_mounted(uuids: &[[u8; 16]]) -> Vec<Option<(DeviceId, PathBuf)>> {
    let mut found: Vec<Option<(DeviceId, PathBuf)>> = vec![None; uuids.len()];
    for (id, mount_point) in device::mounted_filesystems() {
        if found.iter().all(Option::is_some) {
            break;
        }
        let Ok(dir) = File::open(&mount_point) else {
            continue;
        };
        // Another filesystem mounted over this mount point hides it.
        if !dir
            .metadata()
            .is_ok_and(|m| DeviceId::from_dev(m.dev()) == id)
        {
            continue;
        }
        let Ok(Some(uuid)) = fiemap::mounted_fs_uuid(&dir) else {
            continue;
        };
        for (slot, wanted) in found.iter_mut().zip(uuids) {
            if slot.is_none() && *wanted == uuid {
                *slot = device::resolve_node(id).ok().map(|node| (id, node));
            }
        }
    }
    found
}

/// Superblock reads of candidate devices, each on its own thread.
struct Prober {
    /// Device number → (node, identity or none), for devices that answered.
    answered: std::collections::HashMap<u64, (PathBuf, Option<FsIdentity>)>,
    /// Device numbers asked (answered or not).
    asked: std::collections::HashSet<u64>,
    /// Reads not answered yet.
    pending: usize,
    tx: std::sync::mpsc::Sender<(u64, PathBuf, Option<FsIdentity>)>,
    rx: std::sync::mpsc::Receiver<(u64, PathBuf, Option<FsIdentity>)>,
}

impl Default for Prober {
    fn default() -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        Prober {
            answered: Default::default(),
            asked: Default::default(),
            pending: 0,
            tx,
            rx,
        }
    }
}

impl Prober {
    /// Start a read of every candidate not asked yet.
    fn probe_new_candidates(&mut self, uuids: &[[u8; 16]]) {
        let mut candidates: Vec<PathBuf> = uuids
            .iter()
            .map(|u| PathBuf::from(format!("/dev/disk/by-uuid/{}", format_uuid(u))))
            .collect();
        if let Ok(dir) = std::fs::read_dir("/sys/class/block") {
            for entry in dir.flatten() {
                let size: u64 = std::fs::read_to_string(entry.path().join("size"))
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .unwrap_or(0);
                if size > 0 {
                    candidates.push(Path::new("/dev").join(entry.file_name()));
                }
            }
        }
        for node in candidates {
            let Ok(meta) = std::fs::metadata(&node) else {
                continue;
            };
            if !meta.file_type().is_block_device() || !self.asked.insert(meta.rdev()) {
                continue;
            }
            let (tx, rdev) = (self.tx.clone(), meta.rdev());
            let spawned = std::thread::Builder::new()
                .name("prewarm-probe".into())
                .spawn(move || {
                    let id = read_identity(&node).ok().flatten();
                    let _ = tx.send((rdev, node, id));
                });
            if spawned.is_ok() {
                self.pending += 1;
            }
        }
    }

    /// Take the answers that come within `wait`, returning early once
    /// every read asked has answered (with none outstanding it would sleep
    /// the whole `wait`: the sender kept in `self` holds the channel open).
    fn collect(&mut self, wait: Duration) {
        let until = Instant::now() + wait;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            match self.rx.recv_timeout(left) {
                Ok((rdev, node, id)) => {
                    self.pending -= 1;
                    self.answered.insert(rdev, (node, id));
                    if self.pending == 0 {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    }

    /// The device that answered with filesystem `uuid`.
    fn holder_of(&self, uuid: &[u8; 16]) -> Option<(DeviceId, PathBuf)> {
        self.answered.iter().find_map(|(&rdev, (node, id))| {
            id.filter(|id| id.uuid == *uuid).map(|_| {
                (
                    DeviceId::from_dev(rdev),
                    std::fs::canonicalize(node).unwrap_or_else(|_| node.clone()),
                )
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_formats_as_blkid_prints_it() {
        let u = [
            0x0f, 0x1e, 0x2d, 0x3c, 0x4b, 0x5a, 0x69, 0x78, 0x87, 0x96, 0xa5, 0xb4, 0xc3, 0xd2,
            0xe1, 0xf0,
        ];
        assert_eq!(format_uuid(&u), "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0");
    }

    /// Waiting for a device that never appears is a paced rescan, not a
    /// spin: a second of waiting costs the thread a small part of a second
    /// of CPU (a spin costs all of it). In an initrd the wait competes with
    /// the kernel's probing of the very disk it waits for.
    #[test]
    fn waiting_for_an_absent_device_does_not_spin() {
        use nix::sys::resource::{getrusage, UsageWho};
        use nix::sys::time::TimeValLike;
        let cpu = || {
            let u = getrusage(UsageWho::RUSAGE_THREAD).unwrap();
            Duration::from_micros(
                (u.user_time().num_microseconds() + u.system_time().num_microseconds()) as u64,
            )
        };
        let (before, t) = (cpu(), Instant::now());
        let found = find_by_uuids(
            &[[0xa5; 16]],
            Duration::from_secs(1),
            &StopSignal::default(),
        );
        let (spent, waited) = (cpu() - before, t.elapsed());
        assert_eq!(found, vec![None]);
        assert!(waited >= Duration::from_secs(1), "{waited:?}");
        assert!(spent < waited / 4, "{spent:?} of CPU in {waited:?}");
    }

    /// A node made in /dev wakes a waiting search at once (as root: only
    /// root makes nodes there; a skip elsewhere, a failure in CI).
    #[test]
    fn a_node_made_in_dev_ends_the_wait() {
        if !nix::unistd::geteuid().is_root() {
            assert!(
                std::env::var_os("PREWARM_REQUIRE_PRIVILEGED").is_none(),
                "needs root"
            );
            eprintln!("SKIP: a_node_made_in_dev_ends_the_wait needs root");
            return;
        }
        let arrivals = DeviceArrivals::watch().expect("inotify on /dev");
        // Whatever else appeared meanwhile is taken first.
        while arrivals.wait(Duration::ZERO) {}
        let node = PathBuf::from(format!("/dev/prewarm-test-{}", std::process::id()));
        std::fs::write(&node, b"").unwrap();
        let arrived = arrivals.wait(Duration::from_secs(10));
        std::fs::remove_file(&node).unwrap();
        assert!(arrived);
    }

    #[test]
    fn identifies_superblocks() {
        let mut ext = vec![0u8; 4096];
        ext[1024 + 56] = 0x53;
        ext[1024 + 57] = 0xEF;
        ext[1024 + 104..1024 + 120].copy_from_slice(&[7; 16]);
        assert_eq!(
            identify(&ext),
            Some(FsIdentity {
                fs_type: FsType::Ext4,
                uuid: [7; 16]
            })
        );
        let mut xfs = vec![0u8; 4096];
        xfs[..4].copy_from_slice(b"XFSB");
        xfs[32..48].copy_from_slice(&[9; 16]);
        assert_eq!(identify(&xfs).unwrap().fs_type, FsType::Xfs);
        assert_eq!(identify(&[0u8; 4096]), None);
        assert_eq!(identify(&[0u8; 10]), None);
    }
}
