//! Which parts of a file are in the page cache: `mincore(2)` on a
//! read-only mapping of it.
//!
//! The recorder learns from fanotify *which* files were opened and in what
//! order, but not which bytes were read (read events carry no offsets, and
//! page faults of mapped files none at all). What the page cache holds of
//! each file once the boot is done answers that: a page is there because
//! something read it, or readahead did on its behalf. So a resident page
//! counts as read.
//!
//! This is one of the crate's small `unsafe` modules (with `map::fiemap`,
//! `engine::uring` and `run::cpu_priority`): mapping a file and asking `mincore` about the
//! mapping. The mapping is never read (no page is touched, so nothing is
//! faulted in and nothing is fetched from a lazy volume), which is what
//! makes a file changing under it harmless. Large files are mapped in
//! windows of [`WINDOW`], so the residency vector of one call stays small.

use std::fs::File;

use memmap2::MmapOptions;

use crate::map::ByteRange;

/// Bytes mapped (and asked about) at a time: 256 MiB, a 64 KiB vector of
/// 4 KiB pages.
const WINDOW: u64 = 256 << 20;

/// The system's page size.
fn page_size() -> u64 {
    // Safety: sysconf has no memory effects; a failure (-1) is handled.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|&s| s > 0).unwrap_or(4096)
}

/// The byte ranges of the first `size` bytes of `file` whose pages are in
/// the page cache, page-aligned (the last one cut at `size`), sorted and
/// merged. An empty file has none.
pub(crate) fn resident_ranges(file: &File, size: u64) -> std::io::Result<Vec<ByteRange>> {
    let page = page_size();
    let window = WINDOW - WINDOW % page;
    let mut ranges: Vec<ByteRange> = Vec::new();
    let mut offset = 0u64;
    while offset < size {
        let len = window.min(size - offset);
        let len_usize = usize::try_from(len).map_err(|_| std::io::ErrorKind::InvalidInput)?;
        // Safety: memmap2's `map` is unsafe because another process may
        // change the file under the mapping, making reads of it racy. This
        // mapping is never read: only its address range is handed to
        // mincore, which looks at page tables and the page cache, not at
        // the bytes. It is read-only and unmapped when `map` drops.
        let map = unsafe { MmapOptions::new().offset(offset).len(len_usize).map(file)? };
        let pages = len.div_ceil(page) as usize;
        let mut vec = vec![0u8; pages];
        // Safety: `map` is a live mapping of `len` bytes starting at a
        // page-aligned address (mmap returns one), and `vec` holds one byte
        // for each of its `ceil(len / page)` pages, as mincore requires.
        let rc = unsafe {
            libc::mincore(
                map.as_ptr() as *mut libc::c_void,
                len_usize,
                vec.as_mut_ptr(),
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        for (i, state) in vec.iter().enumerate() {
            if state & 1 == 0 {
                continue;
            }
            let start = offset + i as u64 * page;
            let end = (start + page).min(size);
            match ranges.last_mut() {
                Some(last) if last.end() == start => last.len += end - start,
                _ => ranges.push(ByteRange {
                    offset: start,
                    len: end - start,
                }),
            }
        }
        offset += len;
    }
    Ok(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
    use std::io::{Read, Seek, SeekFrom, Write};
    use std::os::fd::AsRawFd;

    #[test]
    fn resident_pages_are_ranges_and_dropped_pages_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut f = File::create(&path).unwrap();
        f.write_all(&vec![7u8; 4 << 20]).unwrap();
        f.sync_all().unwrap();
        drop(f);
        let mut f = File::open(&path).unwrap();
        // Drop the whole file from the cache (tmpfs ignores it: skip then).
        posix_fadvise(f.as_raw_fd(), 0, 0, PosixFadviseAdvice::POSIX_FADV_DONTNEED).unwrap();
        let before = resident_ranges(&f, 4 << 20).unwrap();
        if !before.is_empty() {
            eprintln!(
                "skipped: the page cache of {} cannot be dropped here",
                path.display()
            );
            return;
        }
        f.seek(SeekFrom::Start(2 << 20)).unwrap();
        let mut buf = vec![0u8; 8192];
        f.read_exact(&mut buf).unwrap();
        let after = resident_ranges(&f, 4 << 20).unwrap();
        assert_eq!(after.len(), 1, "{after:?}");
        assert!(after[0].offset <= 2 << 20 && after[0].end() >= (2 << 20) + 8192);
        // Readahead may add some, never the whole file.
        assert!(after[0].len < 4 << 20, "{after:?}");
        assert!(resident_ranges(&File::open(dir.path()).unwrap(), 0)
            .unwrap()
            .is_empty());
    }
}
