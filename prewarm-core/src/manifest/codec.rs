//! The manifest format: encoding and decoding, nothing else.
//!
//! A manifest records, per filesystem, its identity (type, UUID from the
//! superblock, device size, logical block size) and, per file, the path
//! relative to the filesystem root, what detects staleness (inode, size,
//! mtime), the priority, the device extents and the byte ranges that must be
//! read through the file.
//!
//! # Format (version 1)
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

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use serde::Serialize;

use crate::map::fsid::format_uuid;
use crate::map::{ByteRange, Extent};
use crate::plan::PlanConfig;

/// The first eight bytes of every manifest.
pub const MAGIC: &[u8; 8] = b"PRWMNFST";
/// The format version this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;
const HEADER: usize = 20;

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
    #[error("manifest format version {found} (offset 8) is not supported; this prewarm reads version {FORMAT_VERSION}")]
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
            other => other,
        }
    }
}

/// One file of a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
}

/// One filesystem of a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ManifestDevice {
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
    /// Its files.
    pub files: Vec<ManifestFile>,
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
            s.files += 1;
            s.extents += f.extents.len() as u64;
            s.file_ranges += f.file_ranges.len() as u64;
            s.mapped_bytes += f.extents.iter().map(|e| e.length).sum::<u64>();
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
            put_bytes(&mut p, d.fs_type.as_bytes());
            p.extend_from_slice(&d.uuid);
            put(&mut p, d.size);
            put(&mut p, u64::from(d.logical_block_size));
            put_bytes(&mut p, d.node_hint.as_bytes());
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
                put(&mut p, f.extents.len() as u64);
                let (mut lend, mut pend) = (0u64, 0u64);
                for e in &f.extents {
                    put(&mut p, e.logical.wrapping_sub(lend));
                    put(&mut p, zigzag(e.physical.wrapping_sub(pend) as i64));
                    put(&mut p, e.length);
                    lend = e.logical + e.length;
                    pend = e.physical + e.length;
                }
                put(&mut p, f.file_ranges.len() as u64);
                for r in &f.file_ranges {
                    put(&mut p, r.offset);
                    put(&mut p, r.len);
                }
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

    /// The CRC-32 stored in an encoded manifest (its identity for handover).
    pub fn checksum_of(bytes: &[u8]) -> Option<u32> {
        let tail = bytes.len().checked_sub(4)?;
        Some(u32::from_le_bytes(bytes[tail..].try_into().ok()?))
    }

    /// Parse and verify an encoded manifest.
    pub fn decode(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let len = bytes.len();
        let magic = bytes.get(..8).unwrap_or(bytes);
        if magic != MAGIC {
            return Err(ManifestError::BadMagic {
                found: magic.to_vec(),
            });
        }
        let mut r = Reader { buf: bytes, pos: 8 };
        let version = u32::from_le_bytes(r.fixed::<4>("version")?);
        if version != FORMAT_VERSION {
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
        let mut r = Reader {
            buf: &bytes[..end],
            pos: HEADER,
        };
        let m = decode_payload(&mut r)?;
        if r.pos != end {
            return Err(ManifestError::Invalid {
                field: "payload".into(),
                offset: r.pos,
                reason: format!("{} bytes left over", end - r.pos),
            });
        }
        Ok(m)
    }
}

fn decode_payload(r: &mut Reader<'_>) -> Result<Manifest, ManifestError> {
    let created_unix = r.varint("created_unix")?;
    let tool = r.string("tool")?;
    let plan = PlanConfig {
        chunk_size: r.varint("plan.chunk_size")?,
        coalesce_gap: r.varint("plan.coalesce_gap")?,
        max_io: r.varint("plan.max_io")?,
    };
    if plan.validate(512).is_err() {
        return Err(r.invalid(
            "plan",
            format!("{plan:?} is not a valid plan configuration"),
        ));
    }
    let ndev = r.count("devices")?;
    let mut devices = Vec::with_capacity(ndev);
    for d in 0..ndev {
        devices.push(decode_device(r).map_err(|e| e.within(format_args!("devices[{d}]")))?);
    }
    Ok(Manifest {
        created_unix,
        tool,
        plan,
        devices,
    })
}

fn decode_device(r: &mut Reader<'_>) -> Result<ManifestDevice, ManifestError> {
    let fs_type = r.string("fs_type")?;
    let uuid = r.fixed::<16>("uuid")?;
    let size = r.varint("size")?;
    let lbs = r.varint("logical_block_size")?;
    let logical_block_size = u32::try_from(lbs)
        .ok()
        .filter(|b| b.is_power_of_two() && *b >= 512)
        .ok_or_else(|| r.invalid("logical_block_size", format!("{lbs} is not a block size")))?;
    let node_hint = r.string("node_hint")?;
    let nfiles = r.count("files")?;
    let mut files = Vec::with_capacity(nfiles);
    let mut prev: Vec<u8> = Vec::new();
    for i in 0..nfiles {
        let f =
            decode_file(r, &mut prev, size).map_err(|e| e.within(format_args!("files[{i}]")))?;
        files.push(f);
    }
    Ok(ManifestDevice {
        fs_type,
        uuid,
        size,
        logical_block_size,
        node_hint,
        files,
    })
}

fn decode_file(
    r: &mut Reader<'_>,
    prev: &mut Vec<u8>,
    dev_size: u64,
) -> Result<ManifestFile, ManifestError> {
    let shared = r.varint("path.shared_prefix")?;
    if shared > prev.len() as u64 {
        return Err(r.invalid(
            "path.shared_prefix",
            format!("{shared} exceeds the previous path"),
        ));
    }
    prev.truncate(shared as usize);
    prev.extend_from_slice(r.bytes("path.suffix")?);
    let path = PathBuf::from(OsStr::from_bytes(prev));
    let ino = r.varint("ino")?;
    let size = r.varint("size")?;
    let mtime_sec = unzigzag(r.varint("mtime_sec")?);
    let mtime_nsec = r.u32("mtime_nsec")?;
    let priority = r.u32("priority")?;
    let next = r.count("extents")?;
    let mut extents = Vec::with_capacity(next);
    let (mut lend, mut pend) = (0u64, 0u64);
    for k in 0..next {
        let e = (|| {
            let logical = lend.wrapping_add(r.varint("logical")?);
            let physical = pend.wrapping_add(unzigzag(r.varint("physical")?) as u64);
            let length = r.varint("length")?;
            let (Some(le), Some(pe)) = (logical.checked_add(length), physical.checked_add(length))
            else {
                return Err(r.invalid("length", "extent overflows".into()));
            };
            if pe > dev_size {
                return Err(r.invalid(
                    "physical",
                    format!("extent ends at {pe}, past the device's {dev_size} bytes"),
                ));
            }
            lend = le;
            pend = pe;
            Ok(Extent {
                logical,
                physical,
                length,
            })
        })()
        .map_err(|e| e.within(format_args!("extents[{k}]")))?;
        extents.push(e);
    }
    let nranges = r.count("file_ranges")?;
    let mut file_ranges = Vec::with_capacity(nranges);
    for k in 0..nranges {
        let range = (|| {
            Ok(ByteRange {
                offset: r.varint("offset")?,
                len: r.varint("len")?,
            })
        })()
        .map_err(|e: ManifestError| e.within(format_args!("file_ranges[{k}]")))?;
        file_ranges.push(range);
    }
    Ok(ManifestFile {
        path,
        ino,
        size,
        mtime_sec,
        mtime_nsec,
        priority,
        extents,
        file_ranges,
    })
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
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
            .get(self.pos..self.pos + N)
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
    /// least one), so a corrupt count cannot make us allocate gigabytes.
    fn count(&mut self, field: &str) -> Result<usize, ManifestError> {
        let n = self.varint(field)?;
        let left = (self.buf.len() - self.pos) as u64;
        if n > left {
            return Err(self.invalid(field, format!("count {n} exceeds the {left} bytes left")));
        }
        Ok(n as usize)
    }

    fn bytes(&mut self, field: &str) -> Result<&[u8], ManifestError> {
        let n = self.count(field)?;
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn string(&mut self, field: &str) -> Result<String, ManifestError> {
        let at = self.pos;
        let b = self.bytes(field)?;
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
                    file_ranges: vec![ByteRange { offset: 0, len: 60 }],
                }
            })
            .collect();
        Manifest {
            created_unix: 1_763_000_000,
            tool: "prewarm 0.1.0".into(),
            plan: PlanConfig::default(),
            devices: vec![ManifestDevice {
                fs_type: "ext4".into(),
                uuid: [0xab; 16],
                size: 64 << 30,
                logical_block_size: 512,
                node_hint: "/dev/nvme0n1p1".into(),
                files,
            }],
        }
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
        bytes[payload_end - 1] = 0x7f; // files count
        let crc = crc32fast::hash(&bytes[..payload_end]);
        bytes[payload_end..].copy_from_slice(&crc.to_le_bytes());
        let msg = Manifest::decode(&bytes).unwrap_err().to_string();
        assert!(msg.contains("devices[0].files"), "{msg}");
        let msg = Manifest::decode(b"ELF\x7fjunkjunkjunkjunkjunkjunk")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("not a prewarm manifest"), "{msg}");
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = Manifest::decode(&bytes);
            let mut framed = MAGIC.to_vec();
            framed.extend_from_slice(&1u32.to_le_bytes());
            framed.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            framed.extend_from_slice(&bytes);
            let crc = crc32fast::hash(&framed);
            framed.extend_from_slice(&crc.to_le_bytes());
            let _ = Manifest::decode(&framed);
        }

        #[test]
        fn zigzag_roundtrips(v in any::<i64>()) {
            prop_assert_eq!(unzigzag(zigzag(v)), v);
        }
    }
}
