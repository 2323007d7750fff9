//! A buffered loop device (or a partition of one) read through its
//! backing file.
//!
//! A loop device attached without direct I/O (`losetup` without
//! `--direct-io=on`, its default) serves its requests with synchronous,
//! buffered reads of its backing file, and they reach the file one at a
//! time: however many reads prewarm keeps in flight on the device, the
//! file beneath sees one. Measured on the testbed (4 ms fetches, 8
//! served at once), a cold `prewarm --paths` of the default fixture's
//! critical set (703 chunks): through the device one fetch at a time and
//! 3.07 s; through the file 8 at a time and 0.43 s (the latency bound is
//! 0.35 s). When that file is what is lazily loaded (a disk
//! image served by FUSE, or one on a volume restored from a snapshot),
//! hydrating is the file's business: so the reads of such a device go to
//! the backing file directly, at the device's offset in it, as many in
//! flight as for any device, and the device's own queue is left alone.
//! The ranges are the device's either way (the engine adds the offset).
//! A partition of such a device (`losetup -P`) is read the same way, from
//! the partition's start in the file.
//! With direct I/O the loop driver already hands its requests to the file
//! asynchronously, and the device is read as any other.
//!
//! The file is named by the kernel (`/sys/dev/block/MAJ:MIN/loop/backing_file`),
//! but a path is not an identity: it is opened without following a final
//! symlink and without waiting on a FIFO, and used only if its device and
//! inode are the ones `LOOP_GET_STATUS64` gives for the backing file.
//! Otherwise the device is read as it is, and the report says why.
//!
//! The engine reads the file with O_DIRECT where its filesystem takes it at
//! the device's alignment (design fact 1: hydrating is not cache-warming).
//! Where it does not, it is read buffered, which fills the page cache the
//! loop device itself reads through, and no other. The metadata read-ahead
//! (`readahead`) asks for its blocks on the file, buffered, on purpose: the
//! device's requests would wait in line behind each other and behind the
//! walk's own, and a read of the device then finds them in the file's
//! cache, which is where the loop driver looks.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{fcntl, FcntlArg, OFlag};

use super::device::{open_read_only, DeviceId};
use super::fiemap;

/// The major number of loop devices (`LOOP_MAJOR`).
const LOOP_MAJOR: u32 = 7;

/// How a device's blocks are reached, when it is a loop device.
#[derive(Debug, Default)]
pub(crate) enum Backing {
    /// Not a buffered loop device: its node is read.
    #[default]
    Device,
    /// A buffered loop device, read through its backing file.
    File(BackingFile),
    /// A buffered loop device whose backing file could not be used: its
    /// node is read (one request at a time), and this says why.
    Unusable(String),
}

/// The open backing file of a buffered loop device.
#[derive(Debug)]
pub(crate) struct BackingFile {
    /// Its path, as the kernel names it.
    pub path: PathBuf,
    pub file: File,
    /// Where the device's first byte is in the file (`losetup -o`, plus a
    /// partition's start).
    pub offset: u64,
    /// Opened with O_DIRECT.
    pub direct: bool,
}

/// How the device `device` (number `id`) is to be read: through its
/// loop device's backing file when it is a buffered loop device, or a
/// partition of one, whose file is still the one attached. With `direct`
/// (the device's logical block size), the file is opened O_DIRECT where its
/// filesystem takes reads at that alignment (the engine's reads); with
/// `None`, buffered (the metadata read-ahead, whose requests fill the very
/// cache the loop device reads through).
pub(crate) fn backing(device: &File, id: DeviceId, direct: Option<u32>) -> Backing {
    let Some((loop_dir, start)) = on_loop(id) else {
        return Backing::Device;
    };
    // A partition's descriptor answers for its whole loop device.
    let status = match fiemap::loop_status(device) {
        Ok(s) => s,
        // ENXIO: nothing attached (then there is nothing to read either).
        Err(_) => return Backing::Device,
    };
    if status.direct_io {
        return Backing::Device;
    }
    match open_backing(&loop_dir, status, start, direct) {
        Ok(file) => Backing::File(file),
        Err(reason) => Backing::Unusable(reason),
    }
}

/// Whether device `id` is a loop device or a partition of one: the loop
/// device's sysfs directory, and where the device starts on it (0, or the
/// partition's start).
fn on_loop(id: DeviceId) -> Option<(PathBuf, u64)> {
    let sys = PathBuf::from(format!("/sys/dev/block/{id}"));
    if !sys.join("partition").exists() {
        return (id.major == LOOP_MAJOR).then_some((sys, 0));
    }
    // A partition's sysfs directory sits in its disk's.
    let disk = sys.join("..");
    let number = std::fs::read_to_string(disk.join("dev")).ok()?;
    let major: u32 = number.trim().split(':').next()?.parse().ok()?;
    if major != LOOP_MAJOR {
        return None;
    }
    let sectors: u64 = std::fs::read_to_string(sys.join("start"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some((disk, sectors.checked_mul(512)?))
}

fn open_backing(
    loop_dir: &Path,
    status: fiemap::LoopStatus,
    start: u64,
    direct: Option<u32>,
) -> Result<BackingFile, String> {
    let sysfs = loop_dir.join("loop/backing_file");
    let named =
        std::fs::read_to_string(&sysfs).map_err(|e| format!("reading {}: {e}", sysfs.display()))?;
    let path = PathBuf::from(named.trim_end_matches('\n'));
    // O_NONBLOCK: a FIFO put at that path does not hold the open. It is
    // cleared below, once the file is known to be the backing file (io_uring
    // does not wait for a read on a non-blocking file; it fails it).
    let extra = libc::O_NOFOLLOW | libc::O_NONBLOCK;
    let opened = match open_read_only(&path, false, extra | libc::O_NOATIME) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => open_read_only(&path, false, extra),
        other => other,
    };
    let (file, _) =
        opened.map_err(|e| format!("opening its backing file {}: {e}", path.display()))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("stat of its backing file {}: {e}", path.display()))?;
    if !meta.is_file() || meta.dev() != status.backing_dev || meta.ino() != status.backing_ino {
        return Err(format!(
            "{} is no longer its backing file (replaced or deleted since it was attached)",
            path.display()
        ));
    }
    let offset = status
        .offset
        .checked_add(start)
        .ok_or_else(|| format!("the offset of {} overflows", path.display()))?;
    let direct = set_flags(&file, offset, direct).map_err(|e| {
        format!(
            "setting the flags of its backing file {}: {e}",
            path.display()
        )
    })?;
    Ok(BackingFile {
        path,
        file,
        offset,
        direct,
    })
}

/// Clear `O_NONBLOCK` and, with `direct` (the device's logical block
/// size), set `O_DIRECT` where the file's filesystem takes direct reads at
/// that alignment; returns whether it is set.
fn set_flags(file: &File, offset: u64, direct: Option<u32>) -> nix::Result<bool> {
    let fd = file.as_raw_fd();
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?)
        - OFlag::O_NONBLOCK
        - OFlag::O_DIRECT;
    let Some(logical_block_size) = direct else {
        fcntl(fd, FcntlArg::F_SETFL(flags))?;
        return Ok(false);
    };
    let block = u64::from(logical_block_size.max(1));
    let aligned = match fiemap::dio_offset_align(file) {
        // The filesystem states its alignment: 0 means no direct I/O.
        Ok(Some(align)) => {
            align != 0 && align <= logical_block_size && offset % u64::from(align) == 0
        }
        // It does not say (FUSE, NFS): it asks for none.
        Ok(None) => offset % block == 0,
        Err(_) => false,
    };
    if aligned && fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_DIRECT)).is_ok() {
        return Ok(true);
    }
    fcntl(fd, FcntlArg::F_SETFL(flags))?;
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_descriptor_that_is_no_loop_device_is_read_as_it_is() {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        // Another major is no loop device; the loop major with a descriptor
        // that is none fails the status ioctl (ENOTTY): nothing redirected.
        for major in [259, LOOP_MAJOR] {
            let id = DeviceId { major, minor: 0 };
            let got = backing(tmp.as_file(), id, Some(512));
            assert!(matches!(got, Backing::Device), "{id}: {got:?}");
        }
    }

    #[test]
    fn flags_clear_nonblock_and_set_direct_only_when_aligned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![0u8; 8192]).unwrap();
        let (file, _) = open_read_only(&path, false, libc::O_NONBLOCK).unwrap();
        let flags =
            |f: &File| OFlag::from_bits_truncate(fcntl(f.as_raw_fd(), FcntlArg::F_GETFL).unwrap());
        // An offset off every block: never direct.
        assert!(!set_flags(&file, 1, Some(512)).unwrap());
        assert!(!flags(&file).contains(OFlag::O_NONBLOCK));
        assert!(!flags(&file).contains(OFlag::O_DIRECT));
        // Aligned: direct where this filesystem takes it (tmpfs may not).
        let direct = set_flags(&file, 4096, Some(4096)).unwrap();
        assert_eq!(flags(&file).contains(OFlag::O_DIRECT), direct);
        // Asked for buffered: never direct.
        assert!(!set_flags(&file, 4096, None).unwrap());
        assert!(!flags(&file).contains(OFlag::O_DIRECT));
    }
}
