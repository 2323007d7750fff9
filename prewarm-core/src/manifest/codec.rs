//! The manifest format: encoding and decoding, nothing else.
//!
//! A manifest records, per filesystem, its identity (type, UUID from the
//! superblock, device size, logical block size) and, per file, the path
//! relative to the filesystem root, what detects staleness (inode, size,
//! mtime), the priority, the device extents and the byte ranges that must be
//! read through the file, and, when the file was named for some byte
//! ranges only (a recording's lines), those ranges, which a changed file is
//! mapped again for; and, per container image planned by reference
//! (`--image`), the reference, the record it matched, its digest, its
//! priority and its layers' snapshot directories, each named by its
//! filesystem's UUID and its path relative to that filesystem's root.
//! An entry may also be a directory on the way to the files: looking a
//! path up reads its directories' blocks, each a fetch on a cold volume,
//! so their blocks are read with the files'.
//!
//! # Format (version 4)
//!
//! ```text
//! offset 0   magic "PRWMNFST"
//!        8   u32 LE  format version
//!        12  u64 LE  payload length N
//!        20  payload (N bytes, LEB128 varints, see `encode`)
//!        20+N u32 LE CRC-32 of bytes [0, 20+N)
//! ```
//!
//! Paths are front-coded (length of the prefix shared with the previous path,
//! then the rest) and extents delta-coded (logical from the previous logical
//! end, physical zigzag from the previous physical end), so 100,000 extents
//! take well under 1 MB. Decoding never panics: a short, corrupt or foreign
//! file is an error that names the offset and the field.
//!
//! Version 2 adds one field per file, after its file ranges: the byte
//! ranges it was named for, as a count plus one (0: the whole file), then
//! each range as its offset's distance from the previous range's end and
//! its length. Version 1 manifests, which lack the field, still decode
//! (every file whole).
//!
//! Version 3 adds a section after the last device: the images, as a count,
//! then per image its reference as asked for, the image record's name, its
//! target digest (length-prefixed strings), its priority and its
//! directories, as a count, then per directory its filesystem's UUID (16
//! bytes, one of the manifest's devices) and its path (length-prefixed,
//! not front-coded: an image has a handful). Version 1 and 2 manifests,
//! which lack the section, decode with no images; a version newer than
//! [`FORMAT_VERSION`] is refused, naming both versions.
//!
//! Version 4 adds one field per entry, after its priority: its kind, 0
//! for a file, 1 for a directory (which has no file ranges and no named
//! ranges: its blocks are read from the device or not at all; its extents
//! may reach [`DIRECTORY_SPAN`], past its size, where XFS keeps a
//! directory's leaf blocks). Older manifests decode with files only.
//!
//! # Bounds
//!
//! A manifest is untrusted input even when its checksum is right (anyone
//! who can write it can recompute a CRC), and it is replayed as root at
//! boot. So every field is bounded by what it describes, and a manifest
//! that breaks a bound is refused ([`ManifestError::Invalid`], naming the
//! field as `devices[0].files[3].file_ranges[1].len`):
//!
//! * paths are relative, non-empty, at most [`MAX_PATH_BYTES`] with
//!   components of at most [`MAX_NAME_BYTES`], with no NUL, no leading `/`
//!   and no `..` component;
//! * a file's size fits `off_t`; its extents, file ranges and named ranges
//!   are non-empty, do not overflow, and end within the file (its size rounded up to
//!   [`FILE_END_ALIGN`], the largest filesystem block: FIEMAP reports whole
//!   blocks; a directory's extents within [`DIRECTORY_SPAN`]); extents also
//!   end within the device;
//! * a device has a non-nil UUID, a power-of-two block size of 512 B to
//!   64 KiB, and a non-zero size that is a multiple of it and fits `off_t`;
//! * the plan passes [`PlanConfig::validate`] (so `max_io` is at most
//!   [`crate::plan::MAX_IO_LIMIT`], the same bound as on the command line);
//! * counts are bounded by the bytes left (each element takes a minimum
//!   number of bytes) and by [`MAX_DEVICES`], [`MAX_FILES`], [`MAX_EXTENTS`]
//!   [`MAX_FILE_RANGES`] and [`MAX_NAMED_RANGES`] for the whole manifest;
//!   named ranges are sorted and disjoint; and vectors grow with
//!   the elements actually decoded, never with a count;
//! * strings are short (`tool`, `fs_type`, `node_hint`) and NUL-free;
//! * an image's reference and record name are non-empty, at most
//!   [`MAX_REFERENCE_BYTES`], with no control character or space; its
//!   digest is `algorithm:hex`; at most [`MAX_IMAGES`] images and
//!   [`MAX_IMAGE_DIRECTORIES`] directories (all images together); a
//!   directory's UUID names one of the manifest's filesystems and its path
//!   is bounded like a file's.
//!
//! [`Manifest::check_bounds`] checks the same bounds on a manifest in
//! memory (what the fuzz tests assert of everything that decodes).

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

use serde::Serialize;

use crate::map::fsid::format_uuid;
use crate::map::{ByteRange, Extent};
use crate::plan::PlanConfig;

/// The first eight bytes of every manifest.
pub const MAGIC: &[u8; 8] = b"PRWMNFST";
/// The format version this code writes (and the newest it reads).
pub const FORMAT_VERSION: u32 = 4;
/// The oldest format version this code reads.
pub const OLDEST_FORMAT_VERSION: u32 = 1;
const HEADER: usize = 20;

/// Most filesystems in one manifest.
pub const MAX_DEVICES: usize = 64;
/// Most files in one manifest (all filesystems together).
pub const MAX_FILES: usize = 1 << 20;
/// Most device extents in one manifest (100,000 is a large boot).
pub const MAX_EXTENTS: usize = 1 << 22;
/// Most file ranges in one manifest.
pub const MAX_FILE_RANGES: usize = 1 << 22;
/// Most named byte ranges ([`ManifestFile::ranges`]) in one manifest.
pub const MAX_NAMED_RANGES: usize = 1 << 22;
/// Most container images in one manifest.
pub const MAX_IMAGES: usize = 4096;
/// Most image directories in one manifest (all images together).
pub const MAX_IMAGE_DIRECTORIES: usize = 1 << 16;
/// Longest image reference or image record name.
pub const MAX_REFERENCE_BYTES: usize = 1024;
/// Longest image digest (`sha512:` and 128 hex digits take 135).
pub const MAX_DIGEST_BYTES: usize = 256;
/// Longest path (`PATH_MAX`).
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest path component (`NAME_MAX`).
pub const MAX_NAME_BYTES: usize = 255;
/// Longest `tool` string.
pub const MAX_TOOL_BYTES: usize = 256;
/// Longest `fs_type` string.
pub const MAX_FS_TYPE_BYTES: usize = 16;
/// Longest `node_hint` string.
pub const MAX_NODE_HINT_BYTES: usize = 4096;
/// Largest file or device size: what `off_t` holds.
pub const MAX_SIZE: u64 = i64::MAX as u64;
/// Largest logical block size.
pub const MAX_BLOCK_SIZE: u32 = 64 * 1024;
/// Extents and file ranges may end past a file's size, up to the next
/// multiple of this (the largest ext4/xfs block; FIEMAP reports whole
/// blocks), and no further.
pub const FILE_END_ALIGN: u64 = 64 * 1024;

/// Why a manifest cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    /// Not a manifest at all.
    #[error("not a prewarm manifest (magic at offset 0 is {found:?})")]
    BadMagic {
        /// The first bytes found.
        found: Vec<u8>,
    },
    /// A format version this build cannot read.
    #[error("manifest format version {found} (offset 8) is not supported; this prewarm reads versions {OLDEST_FORMAT_VERSION} to {FORMAT_VERSION}")]
    Version {
        /// The version found.
        found: u32,
    },
    /// The file ends inside a field.
    #[error("truncated manifest: {field} at offset {offset} runs past the end ({len} bytes)")]
    Truncated {
        /// The field, with where it sits (`devices[0].files[3].ino`).
        field: String,
        /// Where it starts.
        offset: usize,
        /// The file's length.
        len: usize,
    },
    /// The checksum does not match the contents.
    #[error("corrupt manifest: the CRC-32 at offset {offset} is {stored:#010x} but the contents hash to {computed:#010x}")]
    Checksum {
        /// Where the checksum sits.
        offset: usize,
        /// The checksum stored.
        stored: u32,
        /// The checksum of the contents.
        computed: u32,
    },
    /// A field holds a value that cannot be right.
    #[error("invalid manifest: {field} at offset {offset}: {reason}")]
    Invalid {
        /// The field, with where it sits.
        field: String,
        /// Where it starts.
        offset: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A manifest in memory breaks a bound ([`Manifest::check_bounds`]).
    #[error("manifest out of bounds: {field}: {reason}")]
    OutOfBounds {
        /// The field, with where it sits.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl ManifestError {
    /// Prefix the field name with where it sits (`devices[0].files[3].`).
    fn within(self, place: impl std::fmt::Display) -> Self {
        match self {
            ManifestError::Truncated { field, offset, len } => ManifestError::Truncated {
                field: format!("{place}.{field}"),
                offset,
                len,
            },
            ManifestError::Invalid {
                field,
                offset,
                reason,
            } => ManifestError::Invalid {
                field: format!("{place}.{field}"),
                offset,
                reason,
            },
            ManifestError::OutOfBounds { field, reason } => ManifestError::OutOfBounds {
                field: format!("{place}.{field}"),
                reason,
            },
            other => other,
        }
    }
}

/// One file of a manifest.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct ManifestFile {
    /// Relative to the filesystem's root (no leading `/`).
    #[serde(serialize_with = "crate::error::serialize_path")]
    pub path: PathBuf,
    /// Inode number at planning time (staleness check).
    pub ino: u64,
    /// Size at planning time.
    pub size: u64,
    /// Modification time at planning time: seconds.
    pub mtime_sec: i64,
    /// Modification time at planning time: nanoseconds.
    pub mtime_nsec: u32,
    /// Its priority class.
    pub priority: u32,
    /// Where its bytes are on the device.
    pub extents: Vec<Extent>,
    /// Ranges read through the file (inline data, odd extents).
    pub file_ranges: Vec<ByteRange>,
    /// The byte ranges the file was named for (sorted, disjoint), which
    /// `extents` and `file_ranges` cover and a changed file is mapped again
    /// for; `None`: the whole file (and always in version 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ranges: Option<Vec<ByteRange>>,
    /// A directory on the way to the manifest's files, not a file: only
    /// its device extents are read (version 4).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub directory: bool,
}

/// One filesystem of a manifest: how its device is found, and its files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ManifestDevice {
    /// What finds and checks the device at boot.
    #[serde(flatten)]
    pub header: DeviceHeader,
    /// Its files.
    pub files: Vec<ManifestFile>,
}

/// A filesystem of a manifest without its files: what a replay finds the
/// device by and checks it against, before any entry is looked at (a
/// [`Manifest::visit`] yields these and streams the files).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceHeader {
    /// `ext4` or `xfs`.
    pub fs_type: String,
    /// The filesystem UUID, how the device is found at boot.
    #[serde(serialize_with = "serialize_uuid")]
    pub uuid: [u8; 16],
    /// The device's size at planning time.
    pub size: u64,
    /// The device's logical block size at planning time.
    pub logical_block_size: u32,
    /// The device node at planning time (informative only).
    pub node_hint: String,
}

/// A container image planned by reference (`--image`; format version 3):
/// what names it, and where its layers are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ManifestImage {
    /// The reference as asked for (`small:1`; with `--all-images`, the
    /// record's name).
    pub reference: String,
    /// The image record it matched: the normalised reference
    /// (`docker.io/library/small:1`).
    pub image: String,
    /// The record's target digest (its manifest or index).
    pub digest: String,
    /// Its priority class.
    pub priority: u32,
    /// Its layers' snapshot directories, top layer first.
    pub directories: Vec<ManifestDirectory>,
}

/// A directory on one of the manifest's filesystems.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ManifestDirectory {
    /// The UUID of the filesystem holding it (one of the manifest's
    /// devices).
    #[serde(rename = "filesystem", serialize_with = "serialize_uuid")]
    pub uuid: [u8; 16],
    /// Relative to that filesystem's root, like a file's path.
    #[serde(serialize_with = "crate::error::serialize_path")]
    pub path: PathBuf,
}

/// A boot manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Manifest {
    /// When it was planned (Unix time).
    pub created_unix: u64,
    /// `prewarm <version>` that planned it.
    pub tool: String,
    /// The plan's knobs (a replay uses them, not the command line's).
    pub plan: PlanConfig,
    /// Its filesystems.
    pub devices: Vec<ManifestDevice>,
    /// The container images planned into it (version 3; none before).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<ManifestImage>,
}

fn serialize_uuid<S: serde::Serializer>(u: &[u8; 16], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_uuid(u))
}

/// Sizes of a manifest, for `show` and the docs.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ManifestStats {
    /// Filesystems.
    pub devices: u64,
    /// Files.
    pub files: u64,
    /// Directories on the way to them.
    pub directories: u64,
    /// Device extents.
    pub extents: u64,
    /// Ranges read through files.
    pub file_ranges: u64,
    /// Bytes in device extents.
    pub mapped_bytes: u64,
}

impl Manifest {
    /// Its sizes.
    pub fn stats(&self) -> ManifestStats {
        let mut s = ManifestStats {
            devices: self.devices.len() as u64,
            ..Default::default()
        };
        for f in self.devices.iter().flat_map(|d| &d.files) {
            if f.directory {
                s.directories += 1;
            } else {
                s.files += 1;
            }
            s.extents += f.extents.len() as u64;
            s.file_ranges += f.file_ranges.len() as u64;
            s.mapped_bytes = f
                .extents
                .iter()
                .fold(s.mapped_bytes, |sum, e| sum.saturating_add(e.length));
        }
        s
    }

    /// Serialize (files are sorted by path for front coding).
    pub fn encode(&self) -> Vec<u8> {
        let mut p = Vec::new();
        put(&mut p, self.created_unix);
        put_bytes(&mut p, self.tool.as_bytes());
        put(&mut p, self.plan.chunk_size);
        put(&mut p, self.plan.coalesce_gap);
        put(&mut p, self.plan.max_io);
        put(&mut p, self.devices.len() as u64);
        for d in &self.devices {
            let h = &d.header;
            put_bytes(&mut p, h.fs_type.as_bytes());
            p.extend_from_slice(&h.uuid);
            put(&mut p, h.size);
            put(&mut p, u64::from(h.logical_block_size));
            put_bytes(&mut p, h.node_hint.as_bytes());
            let mut files: Vec<&ManifestFile> = d.files.iter().collect();
            files.sort_by(|a, b| a.path.cmp(&b.path));
            put(&mut p, files.len() as u64);
            let mut prev: &[u8] = &[];
            for f in files {
                let path = f.path.as_os_str().as_bytes();
                let shared = prev.iter().zip(path).take_while(|(a, b)| a == b).count();
                put(&mut p, shared as u64);
                put_bytes(&mut p, &path[shared..]);
                prev = path;
                put(&mut p, f.ino);
                put(&mut p, f.size);
                put(&mut p, zigzag(f.mtime_sec));
                put(&mut p, u64::from(f.mtime_nsec));
                put(&mut p, u64::from(f.priority));
                // Version 4: the entry's kind.
                put(&mut p, u64::from(f.directory));
                put(&mut p, f.extents.len() as u64);
                let (mut lend, mut pend) = (0u64, 0u64);
                for e in &f.extents {
                    put(&mut p, e.logical.wrapping_sub(lend));
                    put(&mut p, zigzag(e.physical.wrapping_sub(pend) as i64));
                    put(&mut p, e.length);
                    // Wrapping, like the deltas: the decoder range-checks.
                    lend = e.logical.wrapping_add(e.length);
                    pend = e.physical.wrapping_add(e.length);
                }
                put(&mut p, f.file_ranges.len() as u64);
                for r in &f.file_ranges {
                    put(&mut p, r.offset);
                    put(&mut p, r.len);
                }
                // Version 2: the named ranges, count + 1 (0: whole file).
                put(&mut p, f.ranges.as_ref().map_or(0, |r| r.len() as u64 + 1));
                let mut end = 0u64;
                for r in f.ranges.iter().flatten() {
                    put(&mut p, r.offset.wrapping_sub(end));
                    put(&mut p, r.len);
                    end = r.offset.wrapping_add(r.len);
                }
            }
        }
        // Version 3: the images.
        put(&mut p, self.images.len() as u64);
        for image in &self.images {
            put_bytes(&mut p, image.reference.as_bytes());
            put_bytes(&mut p, image.image.as_bytes());
            put_bytes(&mut p, image.digest.as_bytes());
            put(&mut p, u64::from(image.priority));
            put(&mut p, image.directories.len() as u64);
            for dir in &image.directories {
                p.extend_from_slice(&dir.uuid);
                put_bytes(&mut p, dir.path.as_os_str().as_bytes());
            }
        }
        let mut out = Vec::with_capacity(HEADER + p.len() + 4);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(p.len() as u64).to_le_bytes());
        out.extend_from_slice(&p);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Check the bounds every decoded manifest satisfies (see the module
    /// doc) on a manifest in memory; the error names the field.
    pub fn check_bounds(&self) -> Result<(), ManifestError> {
        let oob = |field: &str, reason: String| ManifestError::OutOfBounds {
            field: field.to_string(),
            reason,
        };
        check_created(self.created_unix).map_err(|r| oob("created_unix", r))?;
        check_text(&self.tool, MAX_TOOL_BYTES).map_err(|r| oob("tool", r))?;
        check_plan(&self.plan).map_err(|(f, r)| oob(&format!("plan.{f}"), r))?;
        if self.devices.len() > MAX_DEVICES {
            return Err(oob("devices", too_many(self.devices.len(), MAX_DEVICES)));
        }
        let (mut files, mut extents, mut ranges, mut named) = (0usize, 0usize, 0usize, 0usize);
        for (d, md) in self.devices.iter().enumerate() {
            let within = |e: ManifestError| e.within(format_args!("devices[{d}]"));
            let h = &md.header;
            check_fs_type(&h.fs_type).map_err(|r| within(oob("fs_type", r)))?;
            check_uuid(&h.uuid).map_err(|r| within(oob("uuid", r)))?;
            check_block_size(u64::from(h.logical_block_size))
                .map_err(|r| within(oob("logical_block_size", r)))?;
            check_device_size(h.size, h.logical_block_size).map_err(|r| within(oob("size", r)))?;
            check_text(&h.node_hint, MAX_NODE_HINT_BYTES)
                .map_err(|r| within(oob("node_hint", r)))?;
            for (i, f) in md.files.iter().enumerate() {
                let within = |e: ManifestError| within(e.within(format_args!("files[{i}]")));
                files += 1;
                extents = extents.saturating_add(f.extents.len());
                ranges = ranges.saturating_add(f.file_ranges.len());
                if files > MAX_FILES {
                    return Err(within(oob("path", too_many(files, MAX_FILES))));
                }
                if extents > MAX_EXTENTS {
                    return Err(within(oob("extents", too_many(extents, MAX_EXTENTS))));
                }
                if ranges > MAX_FILE_RANGES {
                    return Err(within(oob(
                        "file_ranges",
                        too_many(ranges, MAX_FILE_RANGES),
                    )));
                }
                check_path(f.path.as_os_str().as_bytes()).map_err(|r| within(oob("path", r)))?;
                check_file_size(f.size).map_err(|r| within(oob("size", r)))?;
                check_mtime_nsec(f.mtime_nsec).map_err(|r| within(oob("mtime_nsec", r)))?;
                if f.directory && (!f.file_ranges.is_empty() || f.ranges.is_some()) {
                    return Err(within(oob(
                        "kind",
                        "a directory with file ranges or named ranges".into(),
                    )));
                }
                let mut lend = 0u64;
                for (k, e) in f.extents.iter().enumerate() {
                    if e.logical < lend {
                        return Err(within(oob(
                            &format!("extents[{k}].logical"),
                            format!("{} overlaps the previous extent", e.logical),
                        )));
                    }
                    check_extent(
                        e,
                        logical_limit(f.directory, f.size),
                        f.size,
                        md.header.size,
                    )
                    .map_err(|(field, r)| within(oob(&format!("extents[{k}].{field}"), r)))?;
                    lend = e.logical.saturating_add(e.length);
                }
                for (k, range) in f.file_ranges.iter().enumerate() {
                    check_file_range(range, f.size).map_err(|(field, r)| {
                        within(oob(&format!("file_ranges[{k}].{field}"), r))
                    })?;
                }
                named = named.saturating_add(f.ranges.as_ref().map_or(0, Vec::len));
                if named > MAX_NAMED_RANGES {
                    return Err(within(oob("ranges", too_many(named, MAX_NAMED_RANGES))));
                }
                let mut end = 0u64;
                for (k, range) in f.ranges.iter().flatten().enumerate() {
                    if k > 0 && range.offset <= end {
                        return Err(within(oob(
                            &format!("ranges[{k}].offset"),
                            format!("{} does not follow the previous range's end", range.offset),
                        )));
                    }
                    check_file_range(range, f.size)
                        .map_err(|(field, r)| within(oob(&format!("ranges[{k}].{field}"), r)))?;
                    end = range.end();
                }
            }
        }
        if self.images.len() > MAX_IMAGES {
            return Err(oob("images", too_many(self.images.len(), MAX_IMAGES)));
        }
        let mut directories = 0usize;
        for (i, image) in self.images.iter().enumerate() {
            directories = directories.saturating_add(image.directories.len());
            if directories > MAX_IMAGE_DIRECTORIES {
                return Err(oob(
                    &format!("images[{i}].directories"),
                    too_many(directories, MAX_IMAGE_DIRECTORIES),
                ));
            }
            image
                .check(&self.devices)
                .map_err(|e| e.within(format_args!("images[{i}]")))?;
        }
        Ok(())
    }

    /// The CRC-32 stored in an encoded manifest (its identity for handover).
    pub fn checksum_of(bytes: &[u8]) -> Option<u32> {
        let tail = bytes.len().checked_sub(4)?;
        Some(u32::from_le_bytes(bytes[tail..].try_into().ok()?))
    }

    /// Parse and verify an encoded manifest.
    pub fn decode(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let (outline, files) = Manifest::visit(bytes, |files: &mut Vec<ManifestFile>, f| {
            files.push(f.clone())
        })?;
        let devices = outline
            .devices
            .into_iter()
            .zip(files)
            .map(|(header, files)| ManifestDevice { header, files })
            .collect();
        Ok(Manifest {
            created_unix: outline.created_unix,
            tool: outline.tool,
            plan: outline.plan,
            devices,
            images: outline.images,
        })
    }

    /// Parse and verify an encoded manifest as [`Manifest::decode`] does
    /// (the same checks, the same errors), handing each entry to `on_file`
    /// with what its device has gathered so far instead of keeping it (the
    /// entry is one value reused from entry to entry, its path front-coded
    /// on the previous one's, so a pass that keeps only some of it
    /// allocates nothing per entry):
    /// the outline, and per device (in order) what `on_file` gathered. A
    /// replay keeps of twelve thousand files only their extents, and starts
    /// reading sooner for not building them.
    pub(crate) fn visit<T: Default>(
        bytes: &[u8],
        mut on_file: impl FnMut(&mut T, &ManifestFile),
    ) -> Result<(ManifestOutline, Vec<T>), ManifestError> {
        let len = bytes.len();
        let magic = bytes.get(..8).unwrap_or(bytes);
        if magic != MAGIC {
            return Err(ManifestError::BadMagic {
                found: magic.to_vec(),
            });
        }
        let mut r = Reader::new(bytes, 8);
        let version = u32::from_le_bytes(r.fixed::<4>("version")?);
        if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(ManifestError::Version { found: version });
        }
        let payload_len = u64::from_le_bytes(r.fixed::<8>("payload_length")?);
        let end = usize::try_from(payload_len)
            .ok()
            .and_then(|n| n.checked_add(HEADER))
            .filter(|&e| e.checked_add(4).is_some_and(|t| t <= len))
            .ok_or(ManifestError::Truncated {
                field: format!("payload ({payload_len} bytes) and checksum"),
                offset: HEADER,
                len,
            })?;
        let stored = u32::from_le_bytes(bytes[end..end + 4].try_into().unwrap_or_default());
        let computed = crc32fast::hash(&bytes[..end]);
        if stored != computed {
            return Err(ManifestError::Checksum {
                offset: end,
                stored,
                computed,
            });
        }
        if end + 4 != len {
            return Err(ManifestError::Invalid {
                field: "end".into(),
                offset: end + 4,
                reason: format!("{} bytes after the checksum", len - end - 4),
            });
        }
        let mut r = Reader::new(&bytes[..end], HEADER);
        r.version = version;
        let mut gathered: Vec<T> = Vec::new();
        let outline = decode_payload(&mut r, &mut |device, f| {
            if gathered.len() <= device {
                gathered.resize_with(device + 1, T::default);
            }
            on_file(&mut gathered[device], f);
        })?;
        if r.pos != end {
            return Err(ManifestError::Invalid {
                field: "payload".into(),
                offset: r.pos,
                reason: format!("{} bytes left over", end - r.pos),
            });
        }
        // Devices without entries gathered nothing.
        gathered.resize_with(outline.devices.len(), T::default);
        Ok((outline, gathered))
    }
}

/// A manifest without its files ([`Manifest::visit`]).
#[derive(Debug)]
pub(crate) struct ManifestOutline {
    pub created_unix: u64,
    pub tool: String,
    pub plan: PlanConfig,
    pub devices: Vec<DeviceHeader>,
    pub images: Vec<ManifestImage>,
}

fn decode_payload(
    r: &mut Reader<'_>,
    on_file: &mut dyn FnMut(usize, &ManifestFile),
) -> Result<ManifestOutline, ManifestError> {
    let at = r.pos;
    let created_unix = r.varint("created_unix")?;
    check_created(created_unix).map_err(|reason| r.invalid_at("created_unix", at, reason))?;
    let at = r.pos;
    let tool = r.string("tool", MAX_TOOL_BYTES)?;
    check_text(&tool, MAX_TOOL_BYTES).map_err(|reason| r.invalid_at("tool", at, reason))?;
    let at = r.pos;
    let plan = PlanConfig {
        chunk_size: r.varint("plan.chunk_size")?,
        coalesce_gap: r.varint("plan.coalesce_gap")?,
        max_io: r.varint("plan.max_io")?,
    };
    check_plan(&plan)
        .map_err(|(field, reason)| r.invalid_at(&format!("plan.{field}"), at, reason))?;
    // A device takes at least 21 bytes: five one-byte fields and the UUID.
    let ndev = r.count("devices", 21, MAX_DEVICES)?;
    let mut devices = Vec::with_capacity(ndev);
    let mut record = ManifestFile::default();
    for d in 0..ndev {
        let device = decode_device(r, &mut record, &mut |f| on_file(d, f))
            .map_err(|e| e.within(format_args!("devices[{d}]")))?;
        devices.push(device);
    }
    let uuids: Vec<[u8; 16]> = devices.iter().map(|d| d.uuid).collect();
    let images = if r.version >= 3 {
        decode_images(r, &uuids)?
    } else {
        Vec::new()
    };
    Ok(ManifestOutline {
        created_unix,
        tool,
        plan,
        devices,
        images,
    })
}

/// The images section (version 3), after the devices it refers to.
fn decode_images(
    r: &mut Reader<'_>,
    devices: &[[u8; 16]],
) -> Result<Vec<ManifestImage>, ManifestError> {
    // An image takes at least 41 bytes: two one-byte strings (two bytes
    // each), a digest (its length and at least `a:` and 32 hex digits), a
    // priority and a count.
    let n = r.count("images", 41, MAX_IMAGES)?;
    let mut images = Vec::with_capacity(n.min(PREALLOCATE));
    for i in 0..n {
        let image = decode_image(r, devices).map_err(|e| e.within(format_args!("images[{i}]")))?;
        images.push(image);
    }
    Ok(images)
}

fn decode_image(r: &mut Reader<'_>, devices: &[[u8; 16]]) -> Result<ManifestImage, ManifestError> {
    let at = r.pos;
    let reference = r.string("reference", MAX_REFERENCE_BYTES)?;
    check_reference(&reference).map_err(|reason| r.invalid_at("reference", at, reason))?;
    let at = r.pos;
    let image = r.string("image", MAX_REFERENCE_BYTES)?;
    check_reference(&image).map_err(|reason| r.invalid_at("image", at, reason))?;
    let at = r.pos;
    let digest = r.string("digest", MAX_DIGEST_BYTES)?;
    check_digest(&digest).map_err(|reason| r.invalid_at("digest", at, reason))?;
    let priority = r.u32("priority")?;
    // A directory takes at least 18 bytes: the UUID and a one-byte path.
    let n = r.count(
        "directories",
        18,
        MAX_IMAGE_DIRECTORIES - r.image_directories,
    )?;
    let mut directories = Vec::with_capacity(n.min(PREALLOCATE));
    for k in 0..n {
        let dir = (|| {
            let at = r.pos;
            let uuid = r.fixed::<16>("filesystem")?;
            check_filesystem(&uuid, devices)
                .map_err(|reason| r.invalid_at("filesystem", at, reason))?;
            let at = r.pos;
            let path = r.bytes("path", MAX_PATH_BYTES)?;
            check_path(path).map_err(|reason| r.invalid_at("path", at, reason))?;
            Ok(ManifestDirectory {
                uuid,
                path: PathBuf::from(OsStr::from_bytes(path)),
            })
        })()
        .map_err(|e: ManifestError| e.within(format_args!("directories[{k}]")))?;
        directories.push(dir);
    }
    r.image_directories += n;
    Ok(ManifestImage {
        reference,
        image,
        digest,
        priority,
        directories,
    })
}

impl ManifestImage {
    /// Check the bounds the decoder checks (see the module doc) on an image
    /// in memory whose directories must lie on `devices`; the error names
    /// the field (`directories[1].path`).
    pub fn check(&self, devices: &[ManifestDevice]) -> Result<(), ManifestError> {
        let oob = |field: &str, reason: String| ManifestError::OutOfBounds {
            field: field.to_string(),
            reason,
        };
        check_reference(&self.reference).map_err(|r| oob("reference", r))?;
        check_reference(&self.image).map_err(|r| oob("image", r))?;
        check_digest(&self.digest).map_err(|r| oob("digest", r))?;
        if self.directories.len() > MAX_IMAGE_DIRECTORIES {
            return Err(oob(
                "directories",
                too_many(self.directories.len(), MAX_IMAGE_DIRECTORIES),
            ));
        }
        let uuids: Vec<[u8; 16]> = devices.iter().map(|d| d.header.uuid).collect();
        for (k, dir) in self.directories.iter().enumerate() {
            check_filesystem(&dir.uuid, &uuids)
                .map_err(|r| oob(&format!("directories[{k}].filesystem"), r))?;
            check_path(dir.path.as_os_str().as_bytes())
                .map_err(|r| oob(&format!("directories[{k}].path"), r))?;
        }
        Ok(())
    }
}

/// A device's header, then each of its entries read into `record` and
/// handed to `on_file`.
fn decode_device(
    r: &mut Reader<'_>,
    record: &mut ManifestFile,
    on_file: &mut dyn FnMut(&ManifestFile),
) -> Result<DeviceHeader, ManifestError> {
    let at = r.pos;
    let fs_type = r.string("fs_type", MAX_FS_TYPE_BYTES)?;
    check_fs_type(&fs_type).map_err(|reason| r.invalid_at("fs_type", at, reason))?;
    let at = r.pos;
    let uuid = r.fixed::<16>("uuid")?;
    check_uuid(&uuid).map_err(|reason| r.invalid_at("uuid", at, reason))?;
    let size_at = r.pos;
    let size = r.varint("size")?;
    let at = r.pos;
    let lbs = r.varint("logical_block_size")?;
    let logical_block_size =
        check_block_size(lbs).map_err(|reason| r.invalid_at("logical_block_size", at, reason))?;
    check_device_size(size, logical_block_size)
        .map_err(|reason| r.invalid_at("size", size_at, reason))?;
    let at = r.pos;
    let node_hint = r.string("node_hint", MAX_NODE_HINT_BYTES)?;
    check_text(&node_hint, MAX_NODE_HINT_BYTES)
        .map_err(|reason| r.invalid_at("node_hint", at, reason))?;
    // A file takes at least 9 bytes: nine one-byte fields.
    let nfiles = r.count("files", 9, MAX_FILES - r.files)?;
    // Front coding starts afresh on each device.
    record.path.clear();
    for i in 0..nfiles {
        decode_file(r, record, size).map_err(|e| e.within(format_args!("files[{i}]")))?;
        r.files += 1;
        on_file(record);
    }
    Ok(DeviceHeader {
        fs_type,
        uuid,
        size,
        logical_block_size,
        node_hint,
    })
}

/// Most elements reserved ahead of decoding them: beyond it, vectors grow
/// with what is actually decoded.
const PREALLOCATE: usize = 4096;

/// Read one entry into `f`, over the previous one (whose path the new one
/// is front-coded on).
fn decode_file(
    r: &mut Reader<'_>,
    f: &mut ManifestFile,
    dev_size: u64,
) -> Result<(), ManifestError> {
    // The previous path's buffer, taken to be edited in place (an error
    // ends the decode, so it need not be put back then).
    let mut prev = std::mem::take(&mut f.path).into_os_string().into_vec();
    let at = r.pos;
    let shared = r.varint("path.shared_prefix")?;
    let Some(shared) = usize::try_from(shared).ok().filter(|&n| n <= prev.len()) else {
        return Err(r.invalid_at(
            "path.shared_prefix",
            at,
            format!("{shared} exceeds the previous path"),
        ));
    };
    prev.truncate(shared);
    let at = r.pos;
    prev.extend_from_slice(r.bytes("path.suffix", MAX_PATH_BYTES)?);
    check_path_after(&prev, shared).map_err(|reason| r.invalid_at("path", at, reason))?;
    f.path = PathBuf::from(OsString::from_vec(prev));
    let ino = r.varint("ino")?;
    let at = r.pos;
    let size = r.varint("size")?;
    check_file_size(size).map_err(|reason| r.invalid_at("size", at, reason))?;
    let mtime_sec = unzigzag(r.varint("mtime_sec")?);
    let at = r.pos;
    let mtime_nsec = r.u32("mtime_nsec")?;
    check_mtime_nsec(mtime_nsec).map_err(|reason| r.invalid_at("mtime_nsec", at, reason))?;
    let priority = r.u32("priority")?;
    let directory = if r.version >= 4 {
        let at = r.pos;
        match r.varint("kind")? {
            0 => false,
            1 => true,
            k => {
                return Err(r.invalid_at(
                    "kind",
                    at,
                    format!("{k} is neither 0 (file) nor 1 (directory)"),
                ))
            }
        }
    } else {
        false
    };
    let logical_limit = logical_limit(directory, size);
    // An extent takes at least 3 bytes, a file range 2.
    let next = r.count("extents", 3, MAX_EXTENTS - r.extents)?;
    let extents = &mut f.extents;
    extents.clear();
    let (mut lend, mut pend) = (0u64, 0u64);
    for k in 0..next {
        let e = (|| {
            let at = r.pos;
            let delta = r.varint("logical")?;
            let logical = lend.checked_add(delta).ok_or_else(|| {
                r.invalid_at("logical", at, format!("{lend} + {delta} overflows"))
            })?;
            let at = r.pos;
            let delta = unzigzag(r.varint("physical")?);
            let physical = pend.checked_add_signed(delta).ok_or_else(|| {
                r.invalid_at(
                    "physical",
                    at,
                    format!("{pend} + {delta} is outside 0..2^64"),
                )
            })?;
            let at = r.pos;
            let length = r.varint("length")?;
            let e = Extent {
                logical,
                physical,
                length,
            };
            check_extent(&e, logical_limit, size, dev_size).map_err(|(field, reason)| {
                r.invalid_at(field, if field == "length" { at } else { r.pos }, reason)
            })?;
            // check_extent proved both ends fit.
            lend = logical.saturating_add(length);
            pend = physical.saturating_add(length);
            Ok(e)
        })()
        .map_err(|e: ManifestError| e.within(format_args!("extents[{k}]")))?;
        extents.push(e);
    }
    r.extents += next;
    let nranges = r.count("file_ranges", 2, MAX_FILE_RANGES - r.ranges)?;
    let file_ranges = &mut f.file_ranges;
    file_ranges.clear();
    for k in 0..nranges {
        let range = (|| {
            let at = r.pos;
            let range = ByteRange {
                offset: r.varint("offset")?,
                len: r.varint("len")?,
            };
            check_file_range(&range, size)
                .map_err(|(field, reason)| r.invalid_at(field, at, reason))?;
            Ok(range)
        })()
        .map_err(|e: ManifestError| e.within(format_args!("file_ranges[{k}]")))?;
        file_ranges.push(range);
    }
    r.ranges += nranges;
    let ranges = if r.version >= 2 {
        decode_named_ranges(r, size)?
    } else {
        None
    };
    if directory && (!file_ranges.is_empty() || ranges.is_some()) {
        return Err(r.invalid_at(
            "kind",
            r.pos,
            "a directory with file ranges or named ranges".into(),
        ));
    }
    f.ino = ino;
    f.size = size;
    f.mtime_sec = mtime_sec;
    f.mtime_nsec = mtime_nsec;
    f.priority = priority;
    f.directory = directory;
    f.ranges = ranges;
    Ok(())
}

/// A file's named ranges (version 2): `None` for the whole file.
fn decode_named_ranges(
    r: &mut Reader<'_>,
    size: u64,
) -> Result<Option<Vec<ByteRange>>, ManifestError> {
    // A range takes at least 2 bytes; the count is stored plus one.
    let at = r.pos;
    let stored = r.varint("ranges")?;
    let Some(n) = stored.checked_sub(1) else {
        return Ok(None);
    };
    let left = r.buf.len().saturating_sub(r.pos) as u64 / 2;
    let room = (MAX_NAMED_RANGES - r.named) as u64;
    if n > left || n > room {
        return Err(r.invalid_at(
            "ranges",
            at,
            format!(
                "{n} ranges: more than the {} the bytes left or the limit allow",
                left.min(room)
            ),
        ));
    }
    let mut ranges = Vec::with_capacity((n as usize).min(PREALLOCATE));
    let mut end = 0u64;
    for k in 0..n {
        let range = (|| {
            let at = r.pos;
            let gap = r.varint("offset")?;
            if k > 0 && gap == 0 {
                return Err(r.invalid_at("offset", at, "touches the previous range".into()));
            }
            let offset = end
                .checked_add(gap)
                .ok_or_else(|| r.invalid_at("offset", at, format!("{end} + {gap} overflows")))?;
            let range = ByteRange {
                offset,
                len: r.varint("len")?,
            };
            check_file_range(&range, size)
                .map_err(|(field, reason)| r.invalid_at(field, at, reason))?;
            Ok(range)
        })()
        .map_err(|e: ManifestError| e.within(format_args!("ranges[{k}]")))?;
        end = range.end();
        ranges.push(range);
    }
    r.named += n as usize;
    Ok(Some(ranges))
}

fn too_many(n: usize, max: usize) -> String {
    format!("{n} exceeds the limit of {max}")
}

fn check_created(t: u64) -> Result<(), String> {
    if t > MAX_SIZE {
        return Err(format!("{t} is not a Unix time"));
    }
    Ok(())
}

fn check_plan(plan: &PlanConfig) -> Result<(), (&'static str, String)> {
    match plan.validate(512) {
        Ok(()) => Ok(()),
        Err(crate::error::Error::Config { field, reason }) => Err((field, reason)),
        Err(e) => Err(("plan", e.to_string())),
    }
}

/// A short string with no NUL or other control character.
fn check_text(s: &str, max: usize) -> Result<(), String> {
    if s.len() > max {
        return Err(format!("{} bytes, more than {max}", s.len()));
    }
    if s.chars().any(char::is_control) {
        return Err(format!("{s:?} holds a control character"));
    }
    Ok(())
}

/// An image reference or record name: a non-empty word of at most
/// [`MAX_REFERENCE_BYTES`] with no control character or space (`show`
/// prints it to a terminal).
fn check_reference(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("empty".into());
    }
    check_text(s, MAX_REFERENCE_BYTES)?;
    if s.chars().any(char::is_whitespace) {
        return Err(format!("{s:?} holds a space"));
    }
    Ok(())
}

/// A content digest, `algorithm:hex`, of at most [`MAX_DIGEST_BYTES`].
fn check_digest(s: &str) -> Result<(), String> {
    if s.len() > MAX_DIGEST_BYTES || !crate::source::containerd::is_digest(s) {
        return Err(format!(
            "{:?} is not a digest (algorithm:hex)",
            s.get(..80).unwrap_or(s)
        ));
    }
    Ok(())
}

/// A directory's filesystem: one of the manifest's devices.
fn check_filesystem(uuid: &[u8; 16], devices: &[[u8; 16]]) -> Result<(), String> {
    if devices.contains(uuid) {
        return Ok(());
    }
    Err(format!(
        "{} is none of the manifest's filesystems",
        format_uuid(uuid)
    ))
}

/// A filesystem type name: a short word of lowercase letters and digits.
fn check_fs_type(s: &str) -> Result<(), String> {
    let word = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    if s.is_empty() || s.len() > MAX_FS_TYPE_BYTES || !s.chars().all(word) {
        return Err(format!(
            "{s:?} is not a filesystem type (1 to {MAX_FS_TYPE_BYTES} lowercase letters and digits)"
        ));
    }
    Ok(())
}

fn check_uuid(uuid: &[u8; 16]) -> Result<(), String> {
    if uuid.iter().all(|&b| b == 0) {
        return Err("the nil UUID names no filesystem".into());
    }
    Ok(())
}

fn check_block_size(lbs: u64) -> Result<u32, String> {
    u32::try_from(lbs)
        .ok()
        .filter(|b| b.is_power_of_two() && (512..=MAX_BLOCK_SIZE).contains(b))
        .ok_or_else(|| {
            format!("{lbs} is not a block size (a power of two from 512 to {MAX_BLOCK_SIZE})")
        })
}

fn check_device_size(size: u64, logical_block_size: u32) -> Result<(), String> {
    let bs = u64::from(logical_block_size.max(1));
    if size == 0 || size > MAX_SIZE || size % bs != 0 {
        return Err(format!(
            "{size} is not a device size (a non-zero multiple of the {bs}-byte block up to {MAX_SIZE})"
        ));
    }
    Ok(())
}

fn check_file_size(size: u64) -> Result<(), String> {
    if size > MAX_SIZE {
        return Err(format!("{size} exceeds the largest file size, {MAX_SIZE}"));
    }
    Ok(())
}

fn check_mtime_nsec(nsec: u32) -> Result<(), String> {
    if nsec >= 1_000_000_000 {
        return Err(format!("{nsec} is not below one second"));
    }
    Ok(())
}

/// A relative path that stays below the directory it is joined to.
fn check_path(path: &[u8]) -> Result<(), String> {
    check_path_after(path, 0)
}

/// [`check_path`] of `path` whose first `checked` bytes begin a path that
/// passed it: front coding shares most of each path with the one before,
/// and a deep tree's paths are long, so only what is new is looked at (the
/// component the shared prefix ends in, and what follows). Refuses exactly
/// what [`check_path`] refuses, with the same reasons.
fn check_path_after(path: &[u8], checked: usize) -> Result<(), String> {
    let shown = || String::from_utf8_lossy(path).into_owned();
    if path.is_empty() {
        return Err("empty path".into());
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(format!("{} bytes, more than {MAX_PATH_BYTES}", path.len()));
    }
    // The prefix that passed holds no NUL and is not absolute.
    let checked = checked.min(path.len());
    if path[checked..].contains(&0) {
        return Err(format!("{:?} holds a NUL byte", shown()));
    }
    if checked == 0 && path[0] == b'/' {
        return Err(format!(
            "{:?} is absolute; paths are relative to the filesystem's root",
            shown()
        ));
    }
    // The prefix's components that a `/` ends are whole in the path that
    // passed, so they passed; its last one may go on here.
    let from = path[..checked]
        .iter()
        .rposition(|&b| b == b'/')
        .map_or(0, |slash| slash + 1);
    for component in path[from..].split(|&b| b == b'/') {
        if component == b".." {
            return Err(format!(
                "{:?} has a `..` component: it could leave the filesystem",
                shown()
            ));
        }
        if component.len() > MAX_NAME_BYTES {
            return Err(format!(
                "{:?} has a component of {} bytes, more than {MAX_NAME_BYTES}",
                shown(),
                component.len()
            ));
        }
    }
    Ok(())
}

/// Where a file's extents and ranges may end: its size rounded up to
/// [`FILE_END_ALIGN`].
fn file_end_limit(size: u64) -> u64 {
    size.div_ceil(FILE_END_ALIGN).saturating_mul(FILE_END_ALIGN)
}

/// How far into an entry its extents may reach: a file's size (rounded up
/// to [`FILE_END_ALIGN`]); a directory's address space, which on XFS puts
/// its leaf and free-space blocks at 32 and 64 GiB, past its size.
fn logical_limit(directory: bool, size: u64) -> u64 {
    if directory {
        DIRECTORY_SPAN
    } else {
        file_end_limit(size)
    }
}

/// The logical span of a directory's blocks: XFS's three 32 GiB spaces
/// (data, leaf, free index).
pub const DIRECTORY_SPAN: u64 = 3 << 35;

fn check_extent(
    e: &Extent,
    limit: u64,
    file_size: u64,
    dev_size: u64,
) -> Result<(), (&'static str, String)> {
    if e.length == 0 {
        return Err(("length", "an empty extent".into()));
    }
    match e.logical.checked_add(e.length) {
        Some(end) if end <= limit => {}
        Some(end) => {
            return Err((
                "length",
                format!("extent ends at file byte {end}, past the file's {file_size} bytes"),
            ))
        }
        None => return Err(("length", "extent overflows".into())),
    }
    match e.physical.checked_add(e.length) {
        Some(end) if end <= dev_size => Ok(()),
        Some(end) => Err((
            "physical",
            format!("extent ends at {end}, past the device's {dev_size} bytes"),
        )),
        None => Err(("length", "extent overflows".into())),
    }
}

fn check_file_range(range: &ByteRange, file_size: u64) -> Result<(), (&'static str, String)> {
    if range.len == 0 {
        return Err(("len", "an empty range".into()));
    }
    match range.offset.checked_add(range.len) {
        Some(end) if end <= file_end_limit(file_size) => Ok(()),
        Some(end) => Err((
            "len",
            format!(
                "range {}+{} ends at {end}, past the file's {file_size} bytes",
                range.offset, range.len
            ),
        )),
        None => Err((
            "len",
            format!("range {}+{} overflows", range.offset, range.len),
        )),
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Files, extents and file ranges decoded so far (all devices): the
    /// manifest-wide limits apply to them.
    files: usize,
    extents: usize,
    ranges: usize,
    named: usize,
    image_directories: usize,
    /// The format version being decoded.
    version: u32,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], pos: usize) -> Self {
        Reader {
            buf,
            pos,
            files: 0,
            extents: 0,
            ranges: 0,
            named: 0,
            image_directories: 0,
            version: FORMAT_VERSION,
        }
    }

    fn invalid_at(&self, field: &str, offset: usize, reason: String) -> ManifestError {
        ManifestError::Invalid {
            field: field.to_string(),
            offset,
            reason,
        }
    }

    fn truncated(&self, field: &str) -> ManifestError {
        ManifestError::Truncated {
            field: field.to_string(),
            offset: self.pos,
            len: self.buf.len(),
        }
    }

    fn invalid(&self, field: &str, reason: String) -> ManifestError {
        ManifestError::Invalid {
            field: field.to_string(),
            offset: self.pos,
            reason,
        }
    }

    fn fixed<const N: usize>(&mut self, field: &str) -> Result<[u8; N], ManifestError> {
        let bytes = self
            .buf
            .get(self.pos..self.pos.saturating_add(N))
            .ok_or_else(|| self.truncated(field))?;
        self.pos += N;
        Ok(bytes.try_into().unwrap_or([0; N]))
    }

    fn varint(&mut self, field: &str) -> Result<u64, ManifestError> {
        let start = self.pos;
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let Some(&b) = self.buf.get(self.pos) else {
                self.pos = start;
                return Err(self.truncated(field));
            };
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        self.pos = start;
        Err(self.invalid(field, "varint longer than 10 bytes".into()))
    }

    fn u32(&mut self, field: &str) -> Result<u32, ManifestError> {
        let v = self.varint(field)?;
        u32::try_from(v).map_err(|_| self.invalid(field, format!("{v} does not fit 32 bits")))
    }

    /// An element count, bounded by the bytes left (each element takes at
    /// least `min_bytes`), so a corrupt count cannot make us allocate
    /// gigabytes, and by `max`.
    fn count(&mut self, field: &str, min_bytes: u64, max: usize) -> Result<usize, ManifestError> {
        let at = self.pos;
        let n = self.varint(field)?;
        let left = self.buf.len().saturating_sub(self.pos) as u64;
        if n.saturating_mul(min_bytes.max(1)) > left {
            return Err(self.invalid_at(
                field,
                at,
                format!("count {n} exceeds the {left} bytes left"),
            ));
        }
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= max)
            .ok_or_else(|| {
                self.invalid_at(field, at, format!("count {n} exceeds the limit of {max}"))
            })
    }

    /// A length-prefixed byte string of at most `max` bytes.
    fn bytes(&mut self, field: &str, max: usize) -> Result<&'a [u8], ManifestError> {
        let n = self.count(field, 1, max)?;
        let buf: &'a [u8] = self.buf;
        let s = buf
            .get(self.pos..self.pos.saturating_add(n))
            .ok_or_else(|| self.truncated(field))?;
        self.pos += n;
        Ok(s)
    }

    fn string(&mut self, field: &str, max: usize) -> Result<String, ManifestError> {
        let at = self.pos;
        let b = self.bytes(field, max)?;
        String::from_utf8(b.to_vec()).map_err(|_| ManifestError::Invalid {
            field: field.to_string(),
            offset: at,
            reason: "not UTF-8".into(),
        })
    }
}

fn put(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(files: usize, extents_per_file: usize) -> Manifest {
        let mut phys = 1u64 << 20;
        let files = (0..files)
            .map(|i| {
                let extents = (0..extents_per_file as u64)
                    .map(|k| {
                        phys += 4096 * (1 + (k * 7919 + i as u64) % 64);
                        Extent {
                            logical: k * 8192,
                            physical: phys,
                            length: 4096,
                        }
                    })
                    .collect();
                ManifestFile {
                    path: PathBuf::from(format!(
                        "var/lib/containerd/snapshots/{}/fs/usr/lib/file{i:05}",
                        i / 100
                    )),
                    ino: 1000 + i as u64,
                    size: extents_per_file as u64 * 8192,
                    mtime_sec: 1_700_000_000 + i as i64,
                    mtime_nsec: 123_456_789,
                    priority: (i % 3) as u32 * 10,
                    extents,
                    // Every seventh entry a directory (no file ranges).
                    file_ranges: if i % 7 == 6 {
                        Vec::new()
                    } else {
                        vec![ByteRange { offset: 0, len: 60 }]
                    },
                    ranges: None,
                    directory: i % 7 == 6,
                }
            })
            .collect();
        Manifest {
            created_unix: 1_763_000_000,
            tool: "prewarm 0.1.0".into(),
            plan: PlanConfig::default(),
            devices: vec![ManifestDevice {
                header: DeviceHeader {
                    fs_type: "ext4".into(),
                    uuid: [0xab; 16],
                    size: 64 << 30,
                    logical_block_size: 512,
                    node_hint: "/dev/nvme0n1p1".into(),
                },
                files,
            }],
            images: Vec::new(),
        }
    }

    /// `sample(3, 2)` with a second filesystem and two images sharing a
    /// base layer, one on each filesystem.
    fn sample_with_images() -> Manifest {
        let mut m = sample(3, 2);
        let mut other = m.devices[0].clone();
        other.header.uuid = [0xcd; 16];
        other.header.node_hint = "/dev/nvme1n1".into();
        m.devices.push(other);
        let dir = |uuid: u8, id: u32| ManifestDirectory {
            uuid: [uuid; 16],
            path: PathBuf::from(format!(
                "var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/{id}/fs"
            )),
        };
        m.images = vec![
            ManifestImage {
                reference: "small:1".into(),
                image: "docker.io/library/small:1".into(),
                digest: format!("sha256:{}", "a1".repeat(32)),
                priority: 60,
                directories: vec![dir(0xab, 3), dir(0xab, 1)],
            },
            ManifestImage {
                reference: "registry.example.com/team/other:v2".into(),
                image: "registry.example.com/team/other:v2".into(),
                digest: format!("sha256:{}", "b2".repeat(32)),
                priority: 100,
                directories: vec![dir(0xcd, 9), dir(0xab, 1)],
            },
        ];
        m
    }

    #[test]
    fn roundtrip() {
        let m = sample(50, 7);
        let bytes = m.encode();
        let back = Manifest::decode(&bytes).unwrap();
        let mut sorted = m.clone();
        sorted.devices[0].files.sort_by(|a, b| a.path.cmp(&b.path));
        assert_eq!(back, sorted);
        assert_eq!(
            Manifest::checksum_of(&bytes),
            Some(crc32fast::hash(&bytes[..bytes.len() - 4]))
        );
    }

    #[test]
    fn named_ranges_roundtrip_in_version_2() {
        let mut m = sample(8, 2);
        m.devices[0].files[1].ranges = Some(vec![
            ByteRange {
                offset: 0,
                len: 4096,
            },
            ByteRange {
                offset: 8192,
                len: 100,
            },
        ]);
        m.devices[0].files[2].ranges = Some(Vec::new());
        let bytes = m.encode();
        assert_eq!(bytes[8..12], FORMAT_VERSION.to_le_bytes());
        let back = Manifest::decode(&bytes).unwrap();
        assert_eq!(back, m);
        back.check_bounds().unwrap();
        assert!(back.devices[0].files.iter().any(|f| f.directory));
        // A directory is read from the device or not at all: one with
        // ranges to read through it is refused, naming the field.
        let mut odd = m.clone();
        let d = odd.devices[0]
            .files
            .iter_mut()
            .find(|f| f.directory)
            .unwrap();
        d.file_ranges = vec![ByteRange { offset: 0, len: 1 }];
        assert!(odd.check_bounds().unwrap_err().to_string().contains("kind"));
        let err = Manifest::decode(&odd.encode()).unwrap_err().to_string();
        assert!(err.contains(".kind"), "{err}");
        // Touching or overlapping ranges are refused, naming the range.
        m.devices[0].files[1].ranges = Some(vec![
            ByteRange {
                offset: 0,
                len: 4096,
            },
            ByteRange {
                offset: 4096,
                len: 100,
            },
        ]);
        let err = Manifest::decode(&m.encode()).unwrap_err().to_string();
        assert!(
            err.contains("devices[0].files[1].ranges[1].offset"),
            "{err}"
        );
        assert!(m.check_bounds().is_err());
    }

    #[test]
    fn version_1_still_decodes_and_newer_is_refused() {
        // Written by the version-1 encoder from `sample(3, 2)`.
        let v1 = include_bytes!("../../tests/data/v1-sample.manifest");
        assert_eq!(v1[8..12], 1u32.to_le_bytes());
        let back = Manifest::decode(v1).unwrap();
        assert_eq!(back, sample(3, 2), "every file whole (ranges None)");
        let mut v5 = back.encode();
        v5[8..12].copy_from_slice(&5u32.to_le_bytes());
        let err = Manifest::decode(&v5).unwrap_err();
        assert_eq!(err, ManifestError::Version { found: 5 });
        let msg = err.to_string();
        assert!(
            msg.contains("version 5") && msg.contains("versions 1 to 4"),
            "{msg}"
        );
    }

    #[test]
    fn version_2_still_decodes_with_its_ranges_and_no_images() {
        // Written by the version-2 encoder from `sample(3, 2)` with the
        // named ranges below.
        let v2 = include_bytes!("../../tests/data/v2-sample.manifest");
        assert_eq!(v2[8..12], 2u32.to_le_bytes());
        let mut want = sample(3, 2);
        want.devices[0].files[1].ranges = Some(vec![
            ByteRange {
                offset: 0,
                len: 4096,
            },
            ByteRange {
                offset: 8192,
                len: 100,
            },
        ]);
        want.devices[0].files[2].ranges = Some(Vec::new());
        let back = Manifest::decode(v2).unwrap();
        assert_eq!(back, want);
        assert!(back.images.is_empty());
        // Re-encoded, it is the current version and decodes the same.
        let now = back.encode();
        assert_eq!(now[8..12], FORMAT_VERSION.to_le_bytes());
        assert_eq!(Manifest::decode(&now).unwrap(), want);
    }

    #[test]
    fn images_roundtrip_in_version_3() {
        let m = sample_with_images();
        m.check_bounds().unwrap();
        let bytes = m.encode();
        assert_eq!(bytes[8..12], FORMAT_VERSION.to_le_bytes());
        let back = Manifest::decode(&bytes).unwrap();
        assert_eq!(
            back, m,
            "images, their order and their directories' order kept"
        );
        assert_eq!(back.images[1].directories[0].uuid, [0xcd; 16]);
        // Shown: one block per image, each directory naming its
        // filesystem (the manifest holds two).
        let text = back.render_text(false);
        for want in [
            "image docker.io/library/small:1 (asked as small:1), priority 60: 2 layer directories",
            &format!("digest sha256:{}", "a1".repeat(32)),
            "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/3/fs (filesystem abababab-",
            "image registry.example.com/team/other:v2, priority 100",
            "snapshots/9/fs (filesystem cdcdcdcd-",
        ] {
            assert!(text.contains(want), "{want:?} not in\n{text}");
        }
        // And as JSON: the fields, each directory by filesystem and path.
        let json = serde_json::to_value(&back).unwrap();
        let first = &json["images"][0];
        assert_eq!(first["reference"], "small:1");
        assert_eq!(first["image"], "docker.io/library/small:1");
        assert_eq!(first["priority"], 60);
        assert_eq!(
            first["directories"][0]["path"],
            "var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/3/fs"
        );
        assert_eq!(
            first["directories"][0]["filesystem"],
            crate::map::fsid::format_uuid(&[0xab; 16])
        );
        // A manifest without images has no `images` key at all.
        assert!(serde_json::to_value(sample(1, 1))
            .unwrap()
            .get("images")
            .is_none());
    }

    /// Encode `m` with its image checks bypassed: what an attacker writes.
    fn refusal(change: impl FnOnce(&mut ManifestImage)) -> (ManifestError, ManifestError) {
        let mut m = sample_with_images();
        change(&mut m.images[1]);
        let decoded = Manifest::decode(&m.encode()).unwrap_err();
        let in_memory = m.check_bounds().unwrap_err();
        (decoded, in_memory)
    }

    #[test]
    fn a_bad_image_record_is_refused_naming_the_field() {
        type Change = Box<dyn FnOnce(&mut ManifestImage)>;
        let cases: Vec<(&str, Change)> = vec![
            (
                "images[1].directories[1].path",
                Box::new(|i| i.directories[1].path = "../../etc".into()),
            ),
            (
                "images[1].directories[0].path",
                Box::new(|i| i.directories[0].path = "/var/lib/containerd".into()),
            ),
            (
                "images[1].directories[0].path",
                Box::new(|i| i.directories[0].path = PathBuf::new()),
            ),
            (
                "images[1].directories[0].filesystem",
                Box::new(|i| i.directories[0].uuid = [0x11; 16]),
            ),
            (
                "images[1].digest",
                Box::new(|i| i.digest = "sha256:../../etc/passwd".into()),
            ),
            (
                "images[1].reference",
                Box::new(|i| i.reference = "other\x1b]0;owned\x07".into()),
            ),
            ("images[1].image", Box::new(|i| i.image = String::new())),
            (
                "images[1].image",
                Box::new(|i| i.image = "x".repeat(MAX_REFERENCE_BYTES + 1)),
            ),
        ];
        for (field, change) in cases {
            let (decoded, in_memory) = refusal(change);
            assert!(
                matches!(&decoded, ManifestError::Invalid { field: f, .. } if f == field),
                "{field}: {decoded}"
            );
            assert!(decoded.to_string().contains("offset"), "{decoded}");
            assert!(
                matches!(&in_memory, ManifestError::OutOfBounds { field: f, .. } if f == field),
                "{field}: {in_memory}"
            );
        }
        // A count claiming more images than the bytes left is refused, not
        // allocated: the count sits right after the devices.
        let mut m = sample(1, 1);
        let mut bytes = m.encode();
        let payload_end = bytes.len() - 4;
        assert_eq!(bytes[payload_end - 1], 0, "no images");
        bytes[payload_end - 1] = 0x7f;
        let crc = crc32fast::hash(&bytes[..payload_end]);
        bytes[payload_end..].copy_from_slice(&crc.to_le_bytes());
        let msg = Manifest::decode(&bytes).unwrap_err().to_string();
        assert!(
            msg.contains("images") && msg.contains("bytes left"),
            "{msg}"
        );
        // Too many directories in all, in memory.
        m.images = sample_with_images().images;
        m.images[0].directories =
            vec![m.images[0].directories[0].clone(); MAX_IMAGE_DIRECTORIES + 1];
        let err = m.check_bounds().unwrap_err().to_string();
        assert!(err.contains("images[0].directories"), "{err}");
    }

    #[test]
    fn hundred_thousand_extents_are_compact() {
        let m = sample(10_000, 10);
        assert_eq!(m.stats().extents, 100_000);
        let bytes = m.encode();
        eprintln!("100,000 extents in 10,000 files: {} bytes", bytes.len());
        assert!(bytes.len() < 1_000_000, "{} bytes", bytes.len());
    }

    #[test]
    fn every_truncation_is_an_error_naming_an_offset() {
        let bytes = sample(3, 4).encode();
        for cut in 0..bytes.len() {
            let err = Manifest::decode(&bytes[..cut]).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains("offset") || matches!(err, ManifestError::BadMagic { .. }),
                "cut {cut}: {msg}"
            );
        }
    }

    #[test]
    fn corruption_is_caught_by_the_checksum() {
        let mut bytes = sample(3, 4).encode();
        bytes[40] ^= 0x10;
        assert!(matches!(
            Manifest::decode(&bytes),
            Err(ManifestError::Checksum { .. })
        ));
    }

    #[test]
    fn errors_name_the_field() {
        // A payload whose file count claims more files than there are bytes,
        // with a valid checksum: the decoder names the field.
        let mut m = sample(1, 1);
        m.devices[0].files.clear();
        let mut bytes = m.encode();
        let payload_end = bytes.len() - 4;
        // The files count, before the (empty) images count.
        bytes[payload_end - 2] = 0x7f;
        let crc = crc32fast::hash(&bytes[..payload_end]);
        bytes[payload_end..].copy_from_slice(&crc.to_le_bytes());
        let msg = Manifest::decode(&bytes).unwrap_err().to_string();
        assert!(msg.contains("devices[0].files"), "{msg}");
        let msg = Manifest::decode(b"ELF\x7fjunkjunkjunkjunkjunkjunk")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("not a prewarm manifest"), "{msg}");
    }

    /// Paths of up to twelve of `pieces`, in any order.
    fn paths_of(pieces: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(prop::sample::select(pieces), 0..12).prop_map(|p| p.concat())
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = Manifest::decode(&bytes);
            for version in OLDEST_FORMAT_VERSION..=FORMAT_VERSION {
                let mut framed = MAGIC.to_vec();
                framed.extend_from_slice(&version.to_le_bytes());
                framed.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
                framed.extend_from_slice(&bytes);
                let crc = crc32fast::hash(&framed);
                framed.extend_from_slice(&crc.to_le_bytes());
                let _ = Manifest::decode(&framed);
            }
        }

        /// A path checked from where it leaves a path that passed is
        /// refused exactly when, and as, a path checked whole is. Built
        /// from a few bytes that matter (`/`, `.`, NUL, long names) so
        /// that both sides refuse often.
        #[test]
        fn a_path_checked_after_a_shared_prefix_is_judged_as_a_whole(
            // Paths that mostly pass: relative, with 200-byte names (which
            // a suffix can take past the limit).
            passed in paths_of(vec![b"/".to_vec(), b".".to_vec(), b"a".to_vec(), vec![b'n'; 200]])
                .prop_map(|p| [b"a".to_vec(), p].concat()),
            suffix in paths_of(vec![b"/".to_vec(), b".".to_vec(), b"a".to_vec(), vec![0], vec![b'n'; 300]]),
            cut in any::<prop::sample::Index>(),
        ) {
            prop_assume!(check_path(&passed).is_ok());
            let shared = cut.index(passed.len() + 1);
            let mut path = passed[..shared].to_vec();
            path.extend_from_slice(&suffix);
            prop_assert_eq!(check_path_after(&path, shared), check_path(&path));
        }

        #[test]
        fn zigzag_roundtrips(v in any::<i64>()) {
            prop_assert_eq!(unzigzag(zigzag(v)), v);
        }
    }
}
