//! Device resolution: from a file's `st_dev` to the block device node whose
//! byte offsets FIEMAP reports, opened for reading only.
//!
//! FIEMAP's `fe_physical` is relative to the block device the filesystem sits
//! on: a partition (`/dev/nvme0n1p1`), a loop device, a dm target. The kernel
//! names that device in `/sys/dev/block/MAJ:MIN/uevent` (`DEVNAME=`), which
//! works the same for partitions, NVMe, loop and dm. Filesystems without a
//! backing block device (tmpfs, overlayfs, FUSE, NFS, btrfs's anonymous
//! device numbers) have major number 0 or no sysfs entry: their files are read
//! through the file instead.
//!
//! The device is opened `O_RDONLY | O_DIRECT`: read-only because prewarm
//! never writes to a device, and direct because reading the device through
//! the page cache would fill it with blocks nobody reads through the device
//! node (see `docs/design.md`: hydrating is not cache-warming). If the device
//! refuses O_DIRECT it is opened buffered, and the report says so. A
//! buffered loop device is read through its backing file instead
//! (`loop_backing`: the driver would pass prewarm's reads on one at a time).

use std::fs::File;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::fiemap;
use super::loop_backing::{self, Backing};

/// A block device number, `MAJ:MIN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct DeviceId {
    /// Major number.
    pub major: u32,
    /// Minor number.
    pub minor: u32,
}

impl DeviceId {
    /// Split an `st_dev` / `st_rdev` value.
    pub fn from_dev(dev: u64) -> Self {
        DeviceId {
            major: libc::major(dev),
            minor: libc::minor(dev),
        }
    }
}

impl std::fmt::Display for DeviceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

/// Why a device could not be used for device-level reads.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The filesystem has no block device (tmpfs, overlayfs, FUSE, NFS).
    #[error("{0} is not backed by a block device (tmpfs, overlayfs, FUSE, ...)")]
    Virtual(DeviceId),
    /// sysfs could not be read.
    #[error("reading {path}: {source}")]
    Sysfs {
        /// The sysfs file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// No node in `/dev` has this device number.
    #[error("no device node for block device {0} in /dev")]
    NoNode(DeviceId),
    /// The node could not be opened for reading.
    #[error("opening {path}: {source}")]
    Open {
        /// The device node.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The node is not a block device, or its geometry does not suit the
    /// plan.
    #[error("{node}: {reason}")]
    Unusable {
        /// The device node.
        node: PathBuf,
        /// Why.
        reason: String,
    },
    /// A geometry ioctl (`BLKSSZGET`, `BLKGETSIZE64`) failed.
    #[error("querying {path}: {source}")]
    Ioctl {
        /// The device node.
        path: PathBuf,
        /// The errno.
        #[source]
        source: nix::Error,
    },
}

/// An open block device, ready for aligned reads.
#[derive(Debug)]
pub struct BlockDevice {
    pub id: DeviceId,
    pub node: PathBuf,
    pub file: File,
    /// Opened with O_DIRECT (false when the device refused it).
    pub direct: bool,
    /// `BLKSSZGET`: the alignment of direct reads.
    pub logical_block_size: u32,
    /// `BLKGETSIZE64`.
    pub size: u64,
    /// Filesystem type mounted from it, when /proc/self/mountinfo says.
    pub fs_type: Option<String>,
    /// Where its filesystem is mounted (its root, not a bind mount of a
    /// subdirectory), if it is, when the device was opened.
    pub mount_point: Option<PathBuf>,
    /// A buffered loop device's backing file, read in its place.
    pub backing: Backing,
}

impl BlockDevice {
    /// What its reads go to: the descriptor, whether it is O_DIRECT, and
    /// where the device's first byte is in it (the device itself, or a
    /// buffered loop device's backing file).
    pub fn read_target(&self) -> (&File, bool, u64) {
        match &self.backing {
            Backing::File(b) => (&b.file, b.direct, b.offset),
            Backing::Device | Backing::Unusable(_) => (&self.file, self.direct, 0),
        }
    }
}

/// Find the `/dev` node of block device `id`.
pub fn resolve_node(id: DeviceId) -> Result<PathBuf, DeviceError> {
    if id.major == 0 {
        return Err(DeviceError::Virtual(id));
    }
    let uevent = PathBuf::from(format!("/sys/dev/block/{id}/uevent"));
    let text = match std::fs::read_to_string(&uevent) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(DeviceError::Virtual(id)),
        Err(source) => {
            return Err(DeviceError::Sysfs {
                path: uevent,
                source,
            })
        }
    };
    let mut candidates = Vec::new();
    if let Some(name) = text.lines().find_map(|l| l.strip_prefix("DEVNAME=")) {
        candidates.push(Path::new("/dev").join(name));
    }
    candidates.push(PathBuf::from(format!("/dev/block/{id}")));
    candidates
        .into_iter()
        .find(|p| is_block_device(p, id))
        .ok_or(DeviceError::NoNode(id))
}

fn is_block_device(path: &Path, id: DeviceId) -> bool {
    std::fs::metadata(path)
        .map(|m| m.file_type().is_block_device() && DeviceId::from_dev(m.rdev()) == id)
        .unwrap_or(false)
}

/// Resolve and open block device `id` read-only, preferring O_DIRECT.
pub fn open(id: DeviceId) -> Result<BlockDevice, DeviceError> {
    let node = resolve_node(id)?;
    let (file, direct) = open_read_only(&node, true, 0).map_err(|source| DeviceError::Open {
        path: node.clone(),
        source,
    })?;
    let ioctl_err = |source| DeviceError::Ioctl {
        path: node.clone(),
        source,
    };
    let logical_block_size = fiemap::logical_block_size(&file).map_err(ioctl_err)?;
    let size = fiemap::device_size(&file).map_err(ioctl_err)?;
    // One read of the mount table serves both.
    let mounts = mounts_of(id);
    let backing = loop_backing::backing(&file, id, Some(logical_block_size));
    Ok(BlockDevice {
        id,
        fs_type: mounts.first().map(|m| m.fs_type.clone()),
        mount_point: mounts
            .into_iter()
            .find(|m| m.root == "/")
            .map(|m| m.mount_point),
        node,
        file,
        direct,
        logical_block_size,
        size,
        backing,
    })
}

/// Open the block device node `path` (e.g. `/dev/nvme1n1`) read-only.
pub fn open_node(path: &Path) -> Result<BlockDevice, DeviceError> {
    let meta = std::fs::metadata(path).map_err(|source| DeviceError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.file_type().is_block_device() {
        return Err(DeviceError::Unusable {
            node: path.to_path_buf(),
            reason: "not a block device".into(),
        });
    }
    open(DeviceId::from_dev(meta.rdev()))
}

/// Open `path` read-only (never writable: this is the one place prewarm
/// opens anything), with O_DIRECT when `direct` and the filesystem or driver
/// accepts it (EINVAL means it does not), else buffered; `extra` flags are
/// added. Returns the file and whether O_DIRECT is in effect.
pub fn open_read_only(path: &Path, direct: bool, extra: i32) -> std::io::Result<(File, bool)> {
    let open = |flags| {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(flags | extra | libc::O_CLOEXEC)
            .open(path)
    };
    if direct {
        match open(libc::O_DIRECT) {
            Ok(f) => return Ok((f, true)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::debug!(path = %path.display(), "O_DIRECT refused, reading buffered")
            }
            Err(e) => return Err(e),
        }
    }
    open(0).map(|f| (f, false))
}

/// The mounts of the filesystem on `id`.
fn mounts_of(id: DeviceId) -> Vec<procfs::process::MountInfo> {
    let majmin = id.to_string();
    mountinfo()
        .into_iter()
        .filter(|m| m.majmin == majmin)
        .collect()
}

/// Whether the filesystem on `id` is mounted read-only as a whole (its
/// superblock's options, not one mount's: a read-only bind of a writable
/// filesystem does not count); false when it is not mounted.
pub fn mounted_read_only(id: DeviceId) -> bool {
    mounts_of(id)
        .first()
        .is_some_and(|m| m.super_options.contains_key("ro"))
}

/// Every filesystem on a block device mounted at its root directory, once
/// each: its device and a mount point.
pub fn mounted_filesystems() -> Vec<(DeviceId, PathBuf)> {
    let mut seen = std::collections::HashSet::new();
    mountinfo()
        .into_iter()
        .filter(|m| m.root == "/")
        .filter_map(|m| {
            let id = device_of(&m)?;
            (id.major != 0 && seen.insert(id)).then_some((id, m.mount_point))
        })
        .collect()
}

/// Every mount: its mount point and the device of its filesystem (major 0
/// for a filesystem on no block device: tmpfs, overlay, proc).
pub fn mounts() -> Vec<(PathBuf, DeviceId)> {
    mountinfo()
        .into_iter()
        .filter_map(|m| {
            let id = device_of(&m)?;
            Some((m.mount_point, id))
        })
        .collect()
}

/// The device of a mount, from its `major:minor`.
fn device_of(m: &procfs::process::MountInfo) -> Option<DeviceId> {
    let (major, minor) = m.majmin.split_once(':')?;
    Some(DeviceId {
        major: major.parse().ok()?,
        minor: minor.parse().ok()?,
    })
}

/// `/proc/self/mountinfo` (the one place that file is read).
fn mountinfo() -> Vec<procfs::process::MountInfo> {
    procfs::process::Process::myself()
        .and_then(|p| p.mountinfo())
        .map(|infos| infos.into_iter().collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_devices_are_refused() {
        let err = resolve_node(DeviceId {
            major: 0,
            minor: 42,
        })
        .unwrap_err();
        assert!(matches!(err, DeviceError::Virtual(_)), "{err}");
    }

    #[test]
    fn devid_roundtrip() {
        let id = DeviceId::from_dev(libc::makedev(259, 3));
        assert_eq!(
            id,
            DeviceId {
                major: 259,
                minor: 3
            }
        );
        assert_eq!(id.to_string(), "259:3");
    }
}
