//! The glibc loader's cache, `/etc/ld.so.cache`: which file the dynamic
//! loader opens for a library named by its soname.
//!
//! `ldconfig` writes it; the loader consults it after `DT_RPATH` and
//! `DT_RUNPATH` and before its built-in directories (see [`super::elf`]).
//! No maintained crate reads it without pulling a command-line parser into
//! the library, so this is a small parser of the two layouts glibc has
//! used, every offset bounds-checked (the file is input: a crafted or torn
//! cache is an error or skipped entries, never a panic):
//!
//! * the current one, `glibc-ld.so.cache1.1`: a 48-byte header (entry
//!   count, string table size, an endianness byte, an extension offset),
//!   then 24-byte entries (flags, key, value, an unused OS version, a
//!   hardware-capability word), then the strings. Keys (sonames) and values
//!   (paths) are offsets from the start of this header;
//! * the old `ld.so-1.7.0` one: a 16-byte header, 12-byte entries (flags,
//!   key, value) and strings counted from the end of the entries. Since
//!   glibc 2.32 ldconfig writes only the current layout; an old cache may
//!   hold both, the current one after the old entries, and then the loader
//!   (and this parser) use the current one.
//!
//! Entries for a `glibc-hwcaps` subdirectory (the hardware-capability word
//! has bit 62 set) and legacy hardware-capability entries are chosen by the
//! loader from the CPU it runs on, which at image build time is unknown:
//! they are kept out of lookups, which answer the baseline library. Neither
//! kind exists in the caches of Debian 12, Amazon Linux 2023 or Ubuntu
//! 22.04 as installed.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Largest cache read (a cache of every library of a large distribution is
/// a few MiB).
pub(crate) const MAX_LD_CACHE_BYTES: u64 = 64 << 20;

const MAGIC_OLD: &[u8] = b"ld.so-1.7.0";
const MAGIC_NEW: &[u8] = b"glibc-ld.so.cache1.1";
const OLD_HEADER: usize = 16;
const OLD_ENTRY: usize = 12;
const NEW_HEADER: usize = 48;
const NEW_ENTRY: usize = 24;

/// Entry flags (`FLAG_*` of glibc's `ldconfig.h`): the low byte is the
/// kind of library, the next one the ABI variant.
const FLAG_ELF: i32 = 0x0001;
const FLAG_ELF_LIBC6: i32 = 0x0003;
const FLAG_X8664_LIB64: i32 = 0x0300;
const FLAG_X8664_LIBX32: i32 = 0x0800;
const FLAG_AARCH64_LIB64: i32 = 0x0a00;
const FLAG_ARM_LIBHF: i32 = 0x0900;
const FLAG_ARM_LIBSF: i32 = 0x0b00;

/// Why a cache could not be used at all.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum LdCacheError {
    /// Neither magic at the start.
    #[error("not an ld.so.cache (unknown header)")]
    BadMagic,
    /// The header or the entry table runs past the end of the file.
    #[error("truncated: {0}")]
    Truncated(&'static str),
    /// The endianness byte says the writer did not know its own.
    #[error("header marks the cache as of invalid endianness")]
    BadEndianness,
}

/// One library of the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CacheEntry {
    flags: i32,
    path: Box<[u8]>,
}

/// The loader's cache, by soname, entries in file order (the order in
/// which the loader prefers them).
#[derive(Debug, Default)]
pub(crate) struct LdCache {
    by_soname: HashMap<Box<[u8]>, Vec<CacheEntry>>,
    /// Entries skipped for a string outside the file or without its end.
    pub(crate) bad_entries: usize,
}

/// The library ABI of the object asking, as the cache's flags tell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CacheAbi {
    /// 64-bit (`ELFCLASS64`).
    pub class64: bool,
    /// `e_machine`.
    pub machine: u16,
}

impl CacheAbi {
    /// Whether an entry with `flags` is for this ABI, as glibc's
    /// `_dl_cache_check_flags` decides on each architecture; for
    /// architectures not listed any ELF libc6 entry is a candidate (the
    /// caller checks the file's class and machine anyway).
    fn accepts(self, flags: i32) -> bool {
        const EM_386: u16 = 3;
        const EM_ARM: u16 = 40;
        const EM_X86_64: u16 = 62;
        const EM_AARCH64: u16 = 183;
        match (self.class64, self.machine) {
            (true, EM_X86_64) => flags == FLAG_X8664_LIB64 | FLAG_ELF_LIBC6,
            (false, EM_X86_64) => flags == FLAG_X8664_LIBX32 | FLAG_ELF_LIBC6,
            (true, EM_AARCH64) => flags == FLAG_AARCH64_LIB64 | FLAG_ELF_LIBC6,
            (false, EM_386) => flags == FLAG_ELF || flags == FLAG_ELF_LIBC6,
            (false, EM_ARM) => {
                flags == FLAG_ARM_LIBHF | FLAG_ELF_LIBC6 || flags == FLAG_ARM_LIBSF | FLAG_ELF_LIBC6
            }
            _ => flags == FLAG_ELF || flags & 0xff == FLAG_ELF_LIBC6,
        }
    }
}

impl LdCache {
    /// The paths the cache gives for `soname` for `abi`, best first.
    pub(crate) fn lookup<'a>(
        &'a self,
        soname: &[u8],
        abi: CacheAbi,
    ) -> impl Iterator<Item = &'a Path> + 'a {
        self.by_soname
            .get(soname)
            .into_iter()
            .flatten()
            .filter(move |e| abi.accepts(e.flags))
            .map(|e| Path::new(OsStr::from_bytes(&e.path)))
    }

    /// How many sonames it knows.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_soname.len()
    }

    /// Add the entry for `soname` at `path` (both read from the cache's
    /// string table: `None` if out of bounds, a bad entry).
    fn push(&mut self, soname: Option<&[u8]>, path: Option<&[u8]>, flags: i32) {
        match (soname, path) {
            (Some(soname), Some(path)) => {
                self.by_soname
                    .entry(soname.into())
                    .or_default()
                    .push(CacheEntry {
                        flags,
                        path: path.into(),
                    })
            }
            _ => self.bad_entries += 1,
        }
    }
}

/// A reader of fixed-width fields in `bytes`, in the cache's byte order.
struct Fields<'a> {
    bytes: &'a [u8],
    big_endian: bool,
}

impl Fields<'_> {
    fn u32_at(&self, at: usize) -> Option<u32> {
        let b: [u8; 4] = self.bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
        Some(if self.big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    }

    fn u64_at(&self, at: usize) -> Option<u64> {
        let b: [u8; 8] = self.bytes.get(at..at.checked_add(8)?)?.try_into().ok()?;
        Some(if self.big_endian {
            u64::from_be_bytes(b)
        } else {
            u64::from_le_bytes(b)
        })
    }

    /// The NUL-terminated string at `base + offset`, if it lies, with its
    /// NUL, inside the file.
    fn string(&self, base: usize, offset: u32) -> Option<&[u8]> {
        let start = base.checked_add(usize::try_from(offset).ok()?)?;
        let rest = self.bytes.get(start..)?;
        let len = rest.iter().position(|&b| b == 0)?;
        (len > 0).then(|| &rest[..len])
    }
}

/// Parse a cache (the bytes of `/etc/ld.so.cache`).
pub(crate) fn parse(bytes: &[u8]) -> Result<LdCache, LdCacheError> {
    if bytes.starts_with(MAGIC_NEW) {
        return parse_new(bytes, 0);
    }
    if !bytes.starts_with(MAGIC_OLD) {
        return Err(LdCacheError::BadMagic);
    }
    let native = Fields {
        bytes,
        big_endian: cfg!(target_endian = "big"),
    };
    let count = native
        .u32_at(MAGIC_OLD.len() + 1)
        .ok_or(LdCacheError::Truncated("header"))? as usize;
    let entries_end = count
        .checked_mul(OLD_ENTRY)
        .and_then(|n| n.checked_add(OLD_HEADER))
        .filter(|&end| end <= bytes.len())
        .ok_or(LdCacheError::Truncated("entry table"))?;
    // The current layout follows, aligned as the writer's platform
    // aligns it (8 on 64-bit hosts, 4 on i386).
    for align in [8, 4] {
        let at = entries_end.next_multiple_of(align);
        if bytes.get(at..).is_some_and(|b| b.starts_with(MAGIC_NEW)) {
            return parse_new(bytes, at);
        }
    }
    let mut cache = LdCache::default();
    for i in 0..count {
        let at = OLD_HEADER + i * OLD_ENTRY;
        let (Some(flags), Some(key), Some(value)) = (
            native.u32_at(at),
            native.u32_at(at + 4),
            native.u32_at(at + 8),
        ) else {
            cache.bad_entries += 1;
            continue;
        };
        cache.push(
            native.string(entries_end, key),
            native.string(entries_end, value),
            flags as i32,
        );
    }
    Ok(cache)
}

/// Parse the current layout, whose header is at `base`.
fn parse_new(bytes: &[u8], base: usize) -> Result<LdCache, LdCacheError> {
    let header = bytes
        .get(base..base.saturating_add(NEW_HEADER))
        .ok_or(LdCacheError::Truncated("header"))?;
    let big_endian = match header[28] & 3 {
        0 => cfg!(target_endian = "big"),
        2 => false,
        3 => true,
        _ => return Err(LdCacheError::BadEndianness),
    };
    let fields = Fields { bytes, big_endian };
    let count = fields
        .u32_at(base + 20)
        .ok_or(LdCacheError::Truncated("header"))? as usize;
    count
        .checked_mul(NEW_ENTRY)
        .and_then(|n| n.checked_add(base + NEW_HEADER))
        .filter(|&end| end <= bytes.len())
        .ok_or(LdCacheError::Truncated("entry table"))?;
    let mut cache = LdCache::default();
    for i in 0..count {
        let at = base + NEW_HEADER + i * NEW_ENTRY;
        let (Some(flags), Some(key), Some(value), Some(hwcap)) = (
            fields.u32_at(at),
            fields.u32_at(at + 4),
            fields.u32_at(at + 8),
            fields.u64_at(at + 16),
        ) else {
            cache.bad_entries += 1;
            continue;
        };
        // Chosen by the CPU the loader runs on (see the module doc).
        // Any bit: for a glibc-hwcaps subdirectory (bit 62) or a legacy
        // hardware capability.
        if hwcap != 0 {
            continue;
        }
        cache.push(
            fields.string(base, key),
            fields.string(base, value),
            flags as i32,
        );
    }
    Ok(cache)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The hardware-capability word of an entry for a `glibc-hwcaps`
    /// subdirectory.
    const HWCAP_EXTENSION: u64 = 1 << 62;

    const X86_64: CacheAbi = CacheAbi {
        class64: true,
        machine: 62,
    };
    const I386: CacheAbi = CacheAbi {
        class64: false,
        machine: 3,
    };

    /// A current-layout cache of `(flags, soname, path, hwcap)` entries.
    pub(crate) fn new_cache(entries: &[(i32, &str, &str, u64)]) -> Vec<u8> {
        let mut strings = Vec::new();
        let strings_at = NEW_HEADER + entries.len() * NEW_ENTRY;
        let mut table = Vec::new();
        for &(flags, soname, path, hwcap) in entries {
            let key = (strings_at + strings.len()) as u32;
            strings.extend_from_slice(soname.as_bytes());
            strings.push(0);
            let value = (strings_at + strings.len()) as u32;
            strings.extend_from_slice(path.as_bytes());
            strings.push(0);
            table.extend_from_slice(&flags.to_le_bytes());
            table.extend_from_slice(&key.to_le_bytes());
            table.extend_from_slice(&value.to_le_bytes());
            table.extend_from_slice(&0u32.to_le_bytes());
            table.extend_from_slice(&hwcap.to_le_bytes());
        }
        let mut bytes = MAGIC_NEW.to_vec();
        bytes.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&(strings.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&[2, 0, 0, 0]);
        bytes.extend_from_slice(&[0; 16]);
        assert_eq!(bytes.len(), NEW_HEADER);
        bytes.extend(table);
        bytes.extend(strings);
        bytes
    }

    #[test]
    fn the_machines_cache_agrees_with_ldconfig() {
        let Ok(bytes) = std::fs::read("/etc/ld.so.cache") else {
            eprintln!("skipped: no /etc/ld.so.cache here");
            return;
        };
        let cache = parse(&bytes).unwrap();
        assert_eq!(cache.bad_entries, 0);
        assert!(cache.len() > 10, "{} sonames", cache.len());
        // Every `soname (libc6,x86-64) => path` line of `ldconfig -p` is
        // found; ldconfig also lists the hwcaps entries this skips, and
        // there are none on the machines this runs on.
        let Ok(out) = std::process::Command::new("ldconfig").arg("-p").output() else {
            return;
        };
        let text = String::from_utf8_lossy(&out.stdout);
        let mut checked = 0;
        for line in text.lines().skip(1) {
            let Some((left, path)) = line.trim().split_once(" => ") else {
                continue;
            };
            let Some((soname, abi)) = left.split_once(' ') else {
                continue;
            };
            if abi != "(libc6,x86-64)" || !cfg!(target_arch = "x86_64") {
                continue;
            }
            let found: Vec<_> = cache.lookup(soname.as_bytes(), X86_64).collect();
            assert!(found.contains(&Path::new(path)), "{soname}: {found:?}");
            checked += 1;
        }
        assert!(checked > 10 || !cfg!(target_arch = "x86_64"), "{checked}");
    }

    #[test]
    fn lookups_pick_the_abi_and_skip_hwcaps_entries() {
        let bytes = new_cache(&[
            (
                0x0303,
                "libz.so.1",
                "/glibc-hwcaps/x86-64-v3/libz.so.1",
                HWCAP_EXTENSION | 1,
            ),
            (0x0303, "libz.so.1", "/usr/lib64/libz.so.1", 0),
            (0x0003, "libz.so.1", "/usr/lib/libz.so.1", 0),
            (0x0303, "libc.so.6", "/usr/lib64/libc.so.6", 0),
        ]);
        let cache = parse(&bytes).unwrap();
        let at = |name: &str, abi| -> Vec<_> { cache.lookup(name.as_bytes(), abi).collect() };
        assert_eq!(at("libz.so.1", X86_64), [Path::new("/usr/lib64/libz.so.1")]);
        assert_eq!(at("libz.so.1", I386), [Path::new("/usr/lib/libz.so.1")]);
        assert!(at("libc.so.6", I386).is_empty());
        assert!(at("libm.so.6", X86_64).is_empty());
    }

    #[test]
    fn the_old_layout_alone_and_before_the_new_one() {
        let mut old = MAGIC_OLD.to_vec();
        old.push(0);
        old.extend_from_slice(&1u32.to_ne_bytes());
        old.extend_from_slice(&0x0303i32.to_ne_bytes());
        old.extend_from_slice(&0u32.to_ne_bytes());
        old.extend_from_slice(&6u32.to_ne_bytes());
        old.extend_from_slice(b"liba.\0/old/liba\0");
        let cache = parse(&old).unwrap();
        assert_eq!(
            cache.lookup(b"liba.", X86_64).collect::<Vec<_>>(),
            [Path::new("/old/liba")]
        );
        // The old part, then the new one at the next multiple of 8: the
        // new one is used.
        let mut both = old[..OLD_HEADER + OLD_ENTRY].to_vec();
        both.resize(both.len().next_multiple_of(8), 0);
        let new_at = both.len();
        let mut new = new_cache(&[(0x0303, "liba.", "/new/liba", 0)]);
        // Its string offsets count from its own header.
        both.append(&mut new);
        let cache = parse(&both).unwrap();
        assert_eq!(
            cache.lookup(b"liba.", X86_64).collect::<Vec<_>>(),
            [Path::new("/new/liba")],
            "new layout at {new_at}"
        );
    }

    #[test]
    fn malformed_caches_are_errors_or_skipped_entries_never_panics() {
        let good = new_cache(&[(0x0303, "libz.so.1", "/usr/lib64/libz.so.1", 0)]);
        assert_eq!(parse(b"").unwrap_err(), LdCacheError::BadMagic);
        assert_eq!(parse(b"garbage").unwrap_err(), LdCacheError::BadMagic);
        assert!(matches!(
            parse(&good[..30]).unwrap_err(),
            LdCacheError::Truncated(_)
        ));
        // An entry count far past the file.
        let mut huge = good.clone();
        huge[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            parse(&huge).unwrap_err(),
            LdCacheError::Truncated(_)
        ));
        // A string offset past the end, and a string without its NUL.
        let mut bad_key = good.clone();
        bad_key[NEW_HEADER + 4..NEW_HEADER + 8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(parse(&bad_key).unwrap().bad_entries, 1);
        let unterminated = &good[..good.len() - 1];
        assert_eq!(parse(unterminated).unwrap().bad_entries, 1);
        let mut invalid_endian = good.clone();
        invalid_endian[28] = 1;
        assert_eq!(
            parse(&invalid_endian).unwrap_err(),
            LdCacheError::BadEndianness
        );
        // Every prefix and every single-byte corruption parses or fails
        // cleanly.
        for len in 0..good.len() {
            let _ = parse(&good[..len]);
        }
        for i in 0..good.len() {
            for v in [0u8, 0x7f, 0xff] {
                let mut b = good.clone();
                b[i] = v;
                let _ = parse(&b);
            }
        }
    }
}
