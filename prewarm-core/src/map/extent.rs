//! Extent mapping: where on its block device each byte of a file lives, and
//! which bytes must instead be read through the file.
//!
//! [`map_file`] asks FIEMAP for the file's extents and sorts them three ways:
//!
//! * plain extents become device [`Extent`]s, read later from the raw device;
//! * `UNWRITTEN` extents and holes need no read at all (the filesystem returns
//!   zeroes without touching the disk);
//! * extents whose device location is not a plain byte range (`UNKNOWN`,
//!   `DELALLOC`, `ENCODED`, `DATA_ENCRYPTED`, `DATA_INLINE`, `DATA_TAIL`,
//!   `NOT_ALIGNED`) become file ranges, read through the file.
//!
//! A filesystem without FIEMAP makes the whole file one file range. Either
//! way, once the plan has run, every byte of the file has been read. Why
//! bytes go through the file is a typed [`FileReadReason`], so that the
//! report can count files per reason.

use std::fmt;
use std::fs::File;
use std::path::Path;

use serde::Serialize;

use super::device::{open_read_only, DeviceId};
use super::fiemap::{self, FlaggedExtent};

/// Flags whose extents have no plain device byte range.
const NEEDS_FILE_READ: u32 = fiemap::FIEMAP_EXTENT_UNKNOWN
    | fiemap::FIEMAP_EXTENT_DELALLOC
    | fiemap::FIEMAP_EXTENT_ENCODED
    | fiemap::FIEMAP_EXTENT_DATA_ENCRYPTED
    | fiemap::FIEMAP_EXTENT_NOT_ALIGNED
    | fiemap::FIEMAP_EXTENT_DATA_INLINE
    | fiemap::FIEMAP_EXTENT_DATA_TAIL;

/// A half-open byte range `[offset, offset + len)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct ByteRange {
    /// First byte.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

impl ByteRange {
    /// One past the last byte (saturating: a range is never allowed to wrap).
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.len)
    }
}

/// `length` bytes of a file at file offset `logical` live on its device at
/// byte offset `physical`. The one extent type of the crate: FIEMAP yields
/// it, the plan reads it, a manifest stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Extent {
    /// Offset in the file.
    pub logical: u64,
    /// Offset on the block device.
    pub physical: u64,
    /// Length in bytes.
    pub length: u64,
}

/// Why some bytes of a file are read through the file rather than from its
/// block device.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FileReadReason {
    /// The filesystem has no FIEMAP (tmpfs, FUSE, overlayfs, ...).
    NoFiemap {
        /// The ioctl's errno.
        errno: i32,
    },
    /// Some extents have no plain device location (inline, delayed,
    /// encoded, ...); `flags` are the first such extent's.
    ExtentFlags {
        /// `FIEMAP_EXTENT_*` flags.
        flags: u32,
    },
    /// The file's block device cannot be used for device reads.
    DeviceUnusable {
        /// The device.
        device: DeviceId,
        /// Why.
        reason: String,
    },
    /// The file moved to another filesystem since its manifest was planned.
    Moved,
    /// The file changed since planning and could not be mapped again.
    RemapFailed {
        /// The error.
        error: String,
    },
}

impl fmt::Display for FileReadReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileReadReason::NoFiemap { errno } => write!(
                f,
                "FIEMAP unavailable ({})",
                nix::errno::Errno::from_raw(*errno)
            ),
            FileReadReason::ExtentFlags { flags } => write!(f, "extent flags {flags:#x}"),
            FileReadReason::DeviceUnusable { reason, .. } => f.write_str(reason),
            FileReadReason::Moved => f.write_str("moved to another filesystem since planning"),
            FileReadReason::RemapFailed { error } => write!(f, "re-mapping failed: {error}"),
        }
    }
}

/// How a file's bytes will be read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ExtentMap {
    /// Extents read from the raw block device.
    pub device_extents: Vec<Extent>,
    /// Byte ranges of the file read through the file itself.
    pub file_ranges: Vec<ByteRange>,
    /// Bytes in unwritten (preallocated) extents: nothing to read.
    pub unwritten_bytes: u64,
    /// Why some or all bytes are read through the file, if they are.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback: Option<FileReadReason>,
    /// Mapped from the file's inode in ext4's inode tables, without opening
    /// the file (a walked file unchanged since mount), not by FIEMAP.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub from_inode: bool,
}

impl ExtentMap {
    /// Bytes read from the device.
    pub fn device_bytes(&self) -> u64 {
        self.device_extents.iter().map(|e| e.length).sum()
    }

    /// Bytes read through the file.
    pub fn file_bytes(&self) -> u64 {
        self.file_ranges.iter().map(|r| r.len).sum()
    }

    /// The whole file is read through the file (no usable FIEMAP, or the
    /// device cannot be opened).
    pub fn whole_file(size: u64, reason: FileReadReason) -> Self {
        ExtentMap {
            file_ranges: if size > 0 {
                vec![ByteRange {
                    offset: 0,
                    len: size,
                }]
            } else {
                Vec::new()
            },
            fallback: Some(reason),
            ..Default::default()
        }
    }

    /// `ranges` (`None`: all) of a file of `size` bytes are read through
    /// the file.
    pub fn through_file(size: u64, ranges: Option<&[ByteRange]>, reason: FileReadReason) -> Self {
        match ranges {
            None => ExtentMap::whole_file(size, reason),
            Some(ranges) => ExtentMap {
                file_ranges: clip_ranges(ranges, size),
                fallback: Some(reason),
                ..Default::default()
            },
        }
    }

    /// Turn the device extents into file ranges: used when the file's block
    /// device cannot be resolved or opened.
    pub fn demote_to_file_reads(&mut self, reason: FileReadReason) {
        if self.device_extents.is_empty() {
            return;
        }
        self.file_ranges
            .extend(self.device_extents.drain(..).map(|e| ByteRange {
                offset: e.logical,
                len: e.length,
            }));
        self.file_ranges.sort();
        self.fallback = Some(reason);
    }
}

/// Open a file read-only for mapping and reading, without updating its
/// access time where the kernel lets us (an atime update is a write), and
/// with O_DIRECT when `direct` and the filesystem accepts it. Returns the file
/// and whether O_DIRECT is in effect.
pub fn open_file(path: &Path, direct: bool) -> std::io::Result<(File, bool)> {
    match open_read_only(path, direct, libc::O_NOATIME) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => open_read_only(path, direct, 0),
        other => other,
    }
}

/// Open the regular file `name` of the open directory `dir` for mapping,
/// as [`open_file`] does, but by that one name: the directory's path is not
/// looked up again, and a symlink at `name` is not followed (`ELOOP`). A
/// walk opens what it lists this way. `O_NONBLOCK`: should `name` have
/// become a FIFO since it was listed, opening it does not wait for a
/// writer.
pub(crate) fn open_file_in(dir: &File, name: &std::ffi::OsStr) -> std::io::Result<File> {
    use nix::fcntl::OFlag;
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY;
    match fiemap::open_in_dir(dir, name, flags | OFlag::O_NOATIME) {
        Err(nix::errno::Errno::EPERM) => fiemap::open_in_dir(dir, name, flags),
        other => other,
    }
    .map_err(std::io::Error::from)
}

/// The device extents of the open directory `dir`: its blocks, which a
/// path lookup through it reads. FIEMAP where the filesystem answers it for
/// directories (ext4), else XFS's own block map; none when neither does, or
/// when the entries live in the inode (inline or short-form directories):
/// a directory is read from the device or not at all.
pub(crate) fn map_directory(dir: &File) -> Vec<Extent> {
    match fiemap::file_extents(dir) {
        Ok(raw) => raw
            .iter()
            .filter(|e| e.flags & NEEDS_FILE_READ == 0)
            .map(|e| e.extent)
            .collect(),
        Err(_) => fiemap::xfs_block_map(dir).unwrap_or_default(),
    }
}

/// Map the open file `file` of `size` bytes, or only its byte `ranges`
/// (sorted, disjoint; `None`: the whole file): the extents are cut to the
/// ranges. Never fails: a filesystem without FIEMAP yields a fallback that
/// reads the file (the ranges) through the file.
pub fn map_file(file: &File, size: u64, ranges: Option<&[ByteRange]>) -> ExtentMap {
    match (fiemap::file_extents(file), ranges) {
        (Ok(raw), None) => classify(&raw, size),
        (Ok(raw), Some(ranges)) => classify(&clip_to_ranges(&raw, ranges), size),
        (Err(errno), ranges) => ExtentMap::through_file(
            size,
            ranges,
            FileReadReason::NoFiemap {
                errno: errno as i32,
            },
        ),
    }
}

/// `ranges` (sorted, disjoint) cut at `size`, empty ones dropped.
pub(crate) fn clip_ranges(ranges: &[ByteRange], size: u64) -> Vec<ByteRange> {
    ranges
        .iter()
        .filter(|r| r.offset < size)
        .map(|r| ByteRange {
            offset: r.offset,
            len: r.len.min(size - r.offset),
        })
        .filter(|r| r.len > 0)
        .collect()
}

/// The parts of the extents `raw` (in logical order) that lie in `ranges`
/// (sorted, disjoint), each keeping its flags and its physical offset moved
/// along with the logical one.
fn clip_to_ranges(raw: &[FlaggedExtent], ranges: &[ByteRange]) -> Vec<FlaggedExtent> {
    let mut out = Vec::new();
    for fe in raw {
        let (start, end) = (
            fe.extent.logical,
            fe.extent.logical.saturating_add(fe.extent.length),
        );
        // The first range that ends after the extent starts.
        let first = ranges.partition_point(|r| r.end() <= start);
        for r in ranges[first..].iter().take_while(|r| r.offset < end) {
            let (s, e) = (start.max(r.offset), end.min(r.end()));
            if s < e {
                out.push(FlaggedExtent {
                    extent: Extent {
                        logical: s,
                        physical: fe.extent.physical.saturating_add(s - start),
                        length: e - s,
                    },
                    flags: fe.flags,
                });
            }
        }
    }
    out
}

/// Sort raw extents into device extents, file ranges and unwritten bytes,
/// clipped to the file's size.
pub(crate) fn classify(raw: &[FlaggedExtent], size: u64) -> ExtentMap {
    let mut map = ExtentMap::default();
    for &FlaggedExtent { extent: e, flags } in raw {
        if e.logical >= size || e.length == 0 {
            continue;
        }
        let length = e.length.min(size - e.logical);
        if flags & fiemap::FIEMAP_EXTENT_UNWRITTEN != 0 {
            map.unwritten_bytes += length;
        } else if flags & NEEDS_FILE_READ != 0 {
            map.file_ranges.push(ByteRange {
                offset: e.logical,
                len: length,
            });
            map.fallback
                .get_or_insert(FileReadReason::ExtentFlags { flags });
        } else {
            map.device_extents.push(Extent { length, ..e });
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::map::fiemap::*;

    fn raw(logical: u64, physical: u64, length: u64, flags: u32) -> FlaggedExtent {
        FlaggedExtent {
            extent: Extent {
                logical,
                physical,
                length,
            },
            flags,
        }
    }

    #[test]
    fn classify_sorts_by_flags_and_clips() {
        let map = classify(
            &[
                raw(0, 1 << 20, 8192, 0),
                // hole at 8192..16384
                raw(16384, 0, 4096, FIEMAP_EXTENT_UNWRITTEN),
                raw(20480, 0, 4096, FIEMAP_EXTENT_DELALLOC),
                raw(
                    24576,
                    0,
                    100,
                    FIEMAP_EXTENT_DATA_INLINE | FIEMAP_EXTENT_NOT_ALIGNED,
                ),
                raw(28672, 4 << 20, 8192, FIEMAP_EXTENT_LAST),
                raw(1 << 30, 8 << 20, 4096, 0), // beyond EOF: preallocated tail
            ],
            30000,
        );
        assert_eq!(map.device_extents.len(), 2);
        assert_eq!(map.device_extents[1].length, 30000 - 28672);
        assert_eq!(map.unwritten_bytes, 4096);
        assert_eq!(
            map.file_ranges,
            [
                ByteRange {
                    offset: 20480,
                    len: 4096
                },
                ByteRange {
                    offset: 24576,
                    len: 100
                }
            ]
        );
        assert_eq!(
            map.fallback,
            Some(FileReadReason::ExtentFlags {
                flags: FIEMAP_EXTENT_DELALLOC
            })
        );
    }

    #[test]
    fn ranges_cut_extents_and_keep_physical_offsets() {
        let r = |offset, len| ByteRange { offset, len };
        let clipped = clip_to_ranges(
            &[
                raw(0, 1 << 20, 16384, 0),
                raw(16384, 0, 8192, FIEMAP_EXTENT_UNWRITTEN),
            ],
            &[r(4096, 4096), r(12288, 8192), r(1 << 30, 10)],
        );
        let map = classify(&clipped, 24576);
        assert_eq!(
            map.device_extents,
            [
                Extent {
                    logical: 4096,
                    physical: (1 << 20) + 4096,
                    length: 4096
                },
                Extent {
                    logical: 12288,
                    physical: (1 << 20) + 12288,
                    length: 4096
                },
            ]
        );
        assert_eq!(map.unwritten_bytes, 4096, "only the part inside a range");
        assert_eq!(
            clip_ranges(&[r(0, 10), r(20, 100), r(500, 1)], 50),
            [r(0, 10), r(20, 30)]
        );
    }

    #[test]
    fn demote_keeps_every_byte() {
        let mut map = classify(&[raw(0, 4096, 4096, 0), raw(8192, 0, 10, 0)], 8202);
        let before = map.device_bytes();
        map.demote_to_file_reads(FileReadReason::Moved);
        assert_eq!(map.file_bytes(), before);
        assert!(map.device_extents.is_empty());
    }

    #[test]
    fn reasons_read_as_before() {
        let r = FileReadReason::NoFiemap {
            errno: libc::EOPNOTSUPP,
        };
        assert!(
            r.to_string().starts_with("FIEMAP unavailable (EOPNOTSUPP"),
            "{r}"
        );
    }
}
