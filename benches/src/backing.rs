//! The testbed's backing image, mapped read-only into the testbed's memory.
//!
//! A hydrated chunk is served by handing FUSE a slice of this mapping, so the
//! kernel copies the bytes once, into the reader's pages. Reading them with
//! `pread` into a buffer first copied every byte twice on the same two CPUs
//! the measured reader runs on: that first copy was about a quarter of the
//! CPU of a full read at 32 fetches in flight (PROFILE.md, section 1), time
//! an EBS volume spends in its own hardware, not on the instance.
//!
//! This is the benchmark crate's only `unsafe`: one `mmap` call.

use std::fs::File;
use std::io;

use memmap2::{Mmap, MmapOptions};

/// A read-only mapping of the whole backing image (none for an empty one).
#[derive(Debug)]
pub(crate) struct BackingImage {
    map: Option<Mmap>,
}

impl BackingImage {
    /// Maps `len` bytes of `file`, page tables filled in at once
    /// (`MAP_POPULATE`) so that no read pays a page fault.
    pub(crate) fn map(file: &File, len: u64) -> io::Result<Self> {
        if len == 0 {
            return Ok(Self { map: None });
        }
        let len = usize::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
        // # Safety: the mapping is read-only and lives as long as `self`. Its
        // bytes could change under a `&[u8]` only if another process wrote
        // to or truncated the image while the testbed serves it; the image
        // is the testbed's own (the harness copies the fixture to a private
        // tmpfs, and the testbed never writes to it), and a truncation would
        // end the testbed with SIGBUS, not hand out wrong bytes.
        let map = unsafe { MmapOptions::new().len(len).populate().map(file)? };
        Ok(Self { map: Some(map) })
    }

    /// The bytes `offset..end` of the image; the caller has clamped both to
    /// the image's length.
    pub(crate) fn bytes(&self, offset: u64, end: u64) -> &[u8] {
        let Some(map) = &self.map else { return &[] };
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(map.len());
        let end = usize::try_from(end)
            .unwrap_or(usize::MAX)
            .clamp(start, map.len());
        &map[start..end]
    }
}
