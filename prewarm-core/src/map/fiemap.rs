//! Kernel ioctl FFI: `FS_IOC_FIEMAP`, XFS's `XFS_IOC_GETBMAPX` (the block
//! map of a directory, which XFS's FIEMAP does not answer), the two
//! block-device geometry queries (`BLKSSZGET`, `BLKGETSIZE64`), a mounted
//! filesystem's UUID (`FS_IOC_GETFSUUID`), a loop device's backing file
//! (`LOOP_GET_STATUS64`) and a file's direct-I/O alignment (`statx` with
//! `STATX_DIOALIGN`); and `openat`, whose descriptor
//! (a bare integer in nix 0.29) is taken into ownership here, so that a walk
//! opens each file by its name in the open directory rather than by its
//! whole path again.
//!
//! This is one of the few modules of the crate allowed to hold `unsafe`,
//! and it is private to [`crate::map`]: every raw ioctl the pipeline needs
//! lives here, behind safe functions that take a borrowed file descriptor
//! and return plain Rust values. The `unsafe fn`s nix's macros generate
//! stay inside the private `ioctl` module below and are called only from
//! the one function of this file that wraps each, each call with its
//! `# Safety` reasoning. Everything above this module reasons about extents
//! and never about kernel structure layouts.
//!
//! FIEMAP returns at most `fm_extent_count` extents per call, so
//! [`file_extents`] pages through the file: it restarts each call at the end
//! of the last extent returned and stops at the extent flagged
//! `FIEMAP_EXTENT_LAST` (or when the kernel returns none).

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, FromRawFd};

use super::Extent;

/// The last extent of the file.
pub(crate) const FIEMAP_EXTENT_LAST: u32 = 0x0000_0001;
/// The location of the data is not known (yet).
pub(crate) const FIEMAP_EXTENT_UNKNOWN: u32 = 0x0000_0002;
/// Delayed allocation: data is in the page cache, not yet on disk.
pub(crate) const FIEMAP_EXTENT_DELALLOC: u32 = 0x0000_0004;
/// The data is encoded (compressed) on disk.
pub(crate) const FIEMAP_EXTENT_ENCODED: u32 = 0x0000_0008;
/// The data is encrypted by the filesystem.
pub(crate) const FIEMAP_EXTENT_DATA_ENCRYPTED: u32 = 0x0000_0080;
/// The extent's offsets are not block aligned.
pub(crate) const FIEMAP_EXTENT_NOT_ALIGNED: u32 = 0x0000_0100;
/// The data lives inside a metadata block (inline data).
pub(crate) const FIEMAP_EXTENT_DATA_INLINE: u32 = 0x0000_0200;
/// Several files' tails packed into one block.
pub(crate) const FIEMAP_EXTENT_DATA_TAIL: u32 = 0x0000_0400;
/// Space is allocated but not written: reads return zeroes without I/O.
pub(crate) const FIEMAP_EXTENT_UNWRITTEN: u32 = 0x0000_0800;

/// Extents requested per FIEMAP call. 256 × 56 bytes = 14 KiB per call; a
/// file with more extents is paged through.
const EXTENTS_PER_CALL: usize = 256;

/// `struct fiemap_extent` from `<linux/fiemap.h>`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct RawExtent {
    fe_logical: u64,
    fe_physical: u64,
    fe_length: u64,
    fe_reserved64: [u64; 2],
    fe_flags: u32,
    fe_reserved: [u32; 3],
}

/// `struct fiemap` from `<linux/fiemap.h>`, without its flexible array. Its
/// size (32 bytes) is what the ioctl number encodes.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct RawFiemap {
    fm_start: u64,
    fm_length: u64,
    fm_flags: u32,
    fm_mapped_extents: u32,
    fm_extent_count: u32,
    fm_reserved: u32,
}

/// The header followed by its extent array, laid out as the kernel expects.
#[repr(C)]
struct FiemapRequest {
    header: RawFiemap,
    extents: [RawExtent; EXTENTS_PER_CALL],
}

/// `struct getbmapx` from `<xfs/xfs_fs.h>`: the first element of the array
/// is the request, the others receive the mappings. Offsets, blocks and
/// lengths are in 512-byte units.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct RawBmapx {
    bmv_offset: i64,
    bmv_block: i64,
    bmv_length: i64,
    bmv_count: i32,
    bmv_entries: i32,
    bmv_iflags: i32,
    bmv_oflags: i32,
    bmv_unused1: i32,
    bmv_unused2: i32,
}

/// `struct getbmap`: its size (32 bytes) is what `XFS_IOC_GETBMAPX`'s
/// number encodes, although the call takes `getbmapx`es.
#[repr(C)]
struct RawBmap {
    bmv_offset: i64,
    bmv_block: i64,
    bmv_length: i64,
    bmv_count: i32,
    bmv_entries: i32,
}

/// Mappings requested per `XFS_IOC_GETBMAPX` call (the request is one
/// more element).
const BMAPS_PER_CALL: usize = 128;
/// `BMV_IF_NO_HOLES`: report only mapped ranges.
const BMV_IF_NO_HOLES: i32 = 0x10;
/// How far a block map is asked for, in 512-byte units (512 TiB).
const MAP_END_BB: i64 = 1 << 40;

/// The raw ioctl wrappers. nix's macros make them `pub unsafe fn`; this
/// module keeps them private to the file.
mod ioctl {
    use super::{RawBmap, RawFiemap, RawFsUuid, RawLoopInfo64};

    // # Safety (for all six): the caller passes a valid open descriptor
    // and a pointer to a live, writable value of the type the request
    // encodes (see the call sites).
    nix::ioctl_readwrite!(fs_ioc_fiemap, b'f', 11, RawFiemap);
    nix::ioctl_readwrite!(xfs_ioc_getbmapx, b'X', 56, RawBmap);
    nix::ioctl_read_bad!(blksszget, nix::request_code_none!(0x12, 104), libc::c_int);
    nix::ioctl_read!(blkgetsize64, 0x12, 114, u64);
    nix::ioctl_read!(fs_ioc_getfsuuid, 0x15, 0, RawFsUuid);
    // LOOP_GET_STATUS64 (0x4C05) predates the ioctl number encoding.
    nix::ioctl_read_bad!(loop_get_status64, 0x4C05, RawLoopInfo64);
}

/// `struct loop_info64` from `<linux/loop.h>` (232 bytes).
#[repr(C)]
struct RawLoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `LO_FLAGS_DIRECT_IO`: the loop driver reads its backing file with
/// direct, asynchronous I/O.
const LO_FLAGS_DIRECT_IO: u32 = 16;

/// What a loop device says of its backing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LoopStatus {
    /// The backing file's `st_dev` and `st_ino`: its identity.
    pub backing_dev: u64,
    pub backing_ino: u64,
    /// Where the device's first byte is in the file.
    pub offset: u64,
    /// The driver reads the file with direct I/O.
    pub direct_io: bool,
}

/// The status of the loop device `fd` (`LOOP_GET_STATUS64`); `ENXIO` when
/// no file is attached, `ENOTTY` when `fd` is not a loop device.
pub(crate) fn loop_status<F: AsFd>(fd: F) -> nix::Result<LoopStatus> {
    let mut raw = RawLoopInfo64 {
        lo_device: 0,
        lo_inode: 0,
        lo_rdevice: 0,
        lo_offset: 0,
        lo_sizelimit: 0,
        lo_number: 0,
        lo_encrypt_type: 0,
        lo_encrypt_key_size: 0,
        lo_flags: 0,
        lo_file_name: [0; 64],
        lo_crypt_name: [0; 64],
        lo_encrypt_key: [0; 32],
        lo_init: [0; 2],
    };
    // Safety: LOOP_GET_STATUS64 writes one `struct loop_info64` through the
    // pointer, which points at a live local of that layout (its size is
    // checked in the tests); `fd` is a valid descriptor borrowed for the
    // call.
    unsafe {
        ioctl::loop_get_status64(fd.as_fd().as_raw_fd(), &mut raw)?;
    }
    Ok(LoopStatus {
        backing_dev: raw.lo_device,
        backing_ino: raw.lo_inode,
        offset: raw.lo_offset,
        direct_io: raw.lo_flags & LO_FLAGS_DIRECT_IO != 0,
    })
}

/// The offset alignment direct reads of the open file `fd` need, as the
/// filesystem states it (`statx` `STATX_DIOALIGN`, Linux 6.1): `Some(0)`
/// when it does not support direct I/O on the file, `None` when it does not
/// say (FUSE, NFS, kernels before 6.1).
pub(crate) fn dio_offset_align<F: AsFd>(fd: F) -> nix::Result<Option<u32>> {
    let mut out = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // Safety: `statx` with `AT_EMPTY_PATH` and an empty, NUL-terminated
    // path describes `fd` itself, a valid descriptor borrowed for the call,
    // and writes at most one `struct statx` into `out`, a live local of that
    // type; all-zero bytes are a valid `statx` (plain integers).
    let rc = unsafe {
        libc::statx(
            fd.as_fd().as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            out.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(nix::errno::Errno::last());
    }
    // Safety: zero-initialised above and written by the kernel: every bit
    // pattern of its integer fields is valid.
    let stx = unsafe { out.assume_init() };
    Ok((stx.stx_mask & libc::STATX_DIOALIGN != 0).then_some(stx.stx_dio_offset_align))
}

/// `struct fsuuid2` of `FS_IOC_GETFSUUID` (Linux 6.5): the UUID's length
/// and up to 16 bytes of it. 17 bytes, the size the request encodes.
#[repr(C)]
#[derive(Default)]
struct RawFsUuid {
    len: u8,
    uuid: [u8; 16],
}

/// The UUID of the filesystem `fd` is on, as the kernel holds it in the
/// mounted superblock (`FS_IOC_GETFSUUID`): no read of the device. `None`
/// when the filesystem has no 16-byte UUID; an error (`ENOTTY`) on kernels
/// before 6.5 or filesystems that do not say.
pub(crate) fn mounted_fs_uuid<F: AsFd>(fd: F) -> nix::Result<Option<[u8; 16]>> {
    let mut raw = RawFsUuid::default();
    // Safety: FS_IOC_GETFSUUID writes one `struct fsuuid2` (17 bytes)
    // through the pointer, which points at a live local of that layout;
    // `fd` is a valid descriptor borrowed for the call.
    unsafe {
        ioctl::fs_ioc_getfsuuid(fd.as_fd().as_raw_fd(), &mut raw)?;
    }
    Ok((usize::from(raw.len) == raw.uuid.len()).then_some(raw.uuid))
}

/// One extent as FIEMAP reports it, with its flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlaggedExtent {
    /// Where the bytes are.
    pub extent: Extent,
    /// `FIEMAP_EXTENT_*` flags.
    pub flags: u32,
}

/// All extents of the file behind `fd`, in logical order.
///
/// Errors are the ioctl's errno: `EOPNOTSUPP`/`ENOTTY` mean the filesystem
/// has no FIEMAP (tmpfs, FUSE, overlayfs on some kernels, ...).
pub fn file_extents<F: AsFd>(fd: F) -> nix::Result<Vec<FlaggedExtent>> {
    let raw = fd.as_fd().as_raw_fd();
    let mut out = Vec::new();
    let mut request = Box::new(FiemapRequest {
        header: RawFiemap::default(),
        extents: [RawExtent::default(); EXTENTS_PER_CALL],
    });
    let mut start = 0u64;
    loop {
        request.header = RawFiemap {
            fm_start: start,
            fm_length: u64::MAX - start,
            fm_flags: 0,
            fm_mapped_extents: 0,
            fm_extent_count: EXTENTS_PER_CALL as u32,
            fm_reserved: 0,
        };
        // Safety: `request` is a live, exclusively borrowed `repr(C)` struct
        // whose first field is the `struct fiemap` header and whose trailing
        // array holds exactly `fm_extent_count` `struct fiemap_extent`s, so
        // the kernel writes only inside it. `raw` is a valid open descriptor
        // borrowed for the duration of the call.
        unsafe {
            ioctl::fs_ioc_fiemap(raw, std::ptr::addr_of_mut!(request.header))?;
        }
        let mapped = (request.header.fm_mapped_extents as usize).min(EXTENTS_PER_CALL);
        if mapped == 0 {
            break;
        }
        let mut last = false;
        for e in &request.extents[..mapped] {
            out.push(FlaggedExtent {
                extent: Extent {
                    logical: e.fe_logical,
                    physical: e.fe_physical,
                    length: e.fe_length,
                },
                flags: e.fe_flags,
            });
            last |= e.fe_flags & FIEMAP_EXTENT_LAST != 0;
        }
        let tail = &request.extents[mapped - 1];
        let next = tail.fe_logical.saturating_add(tail.fe_length);
        if last || next <= start {
            break;
        }
        start = next;
    }
    Ok(out)
}

/// The data-fork block map of the file behind `fd` on XFS
/// (`XFS_IOC_GETBMAPX`): what FIEMAP tells of a regular file, for the
/// directories XFS's FIEMAP refuses. Holes and delayed allocations (no
/// block yet) are left out. Any other filesystem answers `ENOTTY`.
pub(crate) fn xfs_block_map<F: AsFd>(fd: F) -> nix::Result<Vec<Extent>> {
    const BB: u64 = 512;
    let raw = fd.as_fd().as_raw_fd();
    let mut out = Vec::new();
    let mut request = vec![RawBmapx::default(); BMAPS_PER_CALL + 1];
    let mut offset = 0i64;
    loop {
        request[0] = RawBmapx {
            bmv_offset: offset,
            // Not -1, which stops at the size: a directory's leaf and
            // free-space blocks live far beyond it (from 32 GiB on).
            bmv_length: MAP_END_BB - offset,
            bmv_count: (BMAPS_PER_CALL + 1) as i32,
            bmv_iflags: BMV_IF_NO_HOLES,
            ..RawBmapx::default()
        };
        // Safety: `request` is a live, exclusively borrowed array of
        // `bmv_count` `repr(C)` `struct getbmapx`es (the header first),
        // so the kernel writes only inside it; the ioctl's size field
        // names `struct getbmap`, the prefix the kernel copies in first.
        // `raw` is a valid open descriptor borrowed for the duration of
        // the call.
        unsafe {
            ioctl::xfs_ioc_getbmapx(raw, request.as_mut_ptr().cast::<RawBmap>())?;
        }
        let n = usize::try_from(request[0].bmv_entries)
            .unwrap_or(0)
            .min(BMAPS_PER_CALL);
        for m in &request[1..=n] {
            if m.bmv_block >= 0 && m.bmv_length > 0 {
                out.push(Extent {
                    logical: m.bmv_offset as u64 * BB,
                    physical: m.bmv_block as u64 * BB,
                    length: m.bmv_length as u64 * BB,
                });
            }
        }
        let Some(last) = request[1..=n].last() else {
            break;
        };
        let next = last.bmv_offset.saturating_add(last.bmv_length);
        if n < BMAPS_PER_CALL || next <= offset || next >= MAP_END_BB {
            break;
        }
        offset = next;
    }
    Ok(out)
}

/// The logical block size of the block device behind `fd` (`BLKSSZGET`):
/// the alignment O_DIRECT reads on it need.
pub(crate) fn logical_block_size<F: AsFd>(fd: F) -> nix::Result<u32> {
    let mut size: libc::c_int = 0;
    // Safety: BLKSSZGET writes one `int` through the pointer, which points at
    // a live local; `fd` is a valid descriptor borrowed for the call.
    unsafe {
        ioctl::blksszget(fd.as_fd().as_raw_fd(), &mut size)?;
    }
    u32::try_from(size).map_err(|_| nix::errno::Errno::EINVAL)
}

/// The size in bytes of the block device behind `fd` (`BLKGETSIZE64`).
pub(crate) fn device_size<F: AsFd>(fd: F) -> nix::Result<u64> {
    let mut size: u64 = 0;
    // Safety: BLKGETSIZE64 writes one `u64` through the pointer, which points
    // at a live local; `fd` is a valid descriptor borrowed for the call.
    unsafe {
        ioctl::blkgetsize64(fd.as_fd().as_raw_fd(), &mut size)?;
    }
    Ok(size)
}

/// Open `name` in the open directory `dir` with `flags` (`O_CLOEXEC` is
/// added): one lookup of one name, not a walk of a whole path.
pub(crate) fn open_in_dir(dir: &File, name: &OsStr, flags: nix::fcntl::OFlag) -> nix::Result<File> {
    let fd = nix::fcntl::openat(
        Some(dir.as_raw_fd()),
        name,
        flags | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    // Safety: `openat` succeeded, so `fd` is a descriptor it has just
    // opened for this call; nothing else holds or will close it, and the
    // `File` becomes its only owner.
    Ok(unsafe { File::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_layout_matches_the_kernel() {
        assert_eq!(std::mem::size_of::<RawBmap>(), 32);
        assert_eq!(std::mem::size_of::<RawBmapx>(), 48);
        assert_eq!(std::mem::size_of::<RawFiemap>(), 32);
        assert_eq!(std::mem::size_of::<RawLoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<RawExtent>(), 56);
        assert_eq!(
            std::mem::size_of::<FiemapRequest>(),
            32 + 56 * EXTENTS_PER_CALL
        );
    }

    #[test]
    fn regular_file_or_unsupported() {
        // Whatever filesystem the temp dir is on, FIEMAP either works or
        // says it is unsupported; it never panics.
        let mut f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut f, &[7u8; 8192]).unwrap();
        f.sync_all().unwrap();
        match file_extents(&f) {
            Ok(extents) => assert!(extents.iter().map(|e| e.extent.length).sum::<u64>() >= 8192),
            Err(e) => assert!(
                matches!(e, nix::errno::Errno::EOPNOTSUPP | nix::errno::Errno::ENOTTY),
                "{e}"
            ),
        }
    }
}
