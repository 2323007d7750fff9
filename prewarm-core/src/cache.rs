//! Cache-warming: putting files in their own page cache.
//!
//! Hydration reads the raw block device, which makes the volume fetch its
//! blocks but leaves the data in the *device's* page cache (or, with
//! O_DIRECT, in no cache at all). A later `read()` of the file still goes to
//! the disk, now fast because the blocks are hydrated. When the caller also
//! wants the first read of each file to be a page-cache hit, this module asks
//! the kernel to read the files ahead (`posix_fadvise(POSIX_FADV_WILLNEED)`),
//! which is cheap once the blocks are hydrated.

use std::os::fd::AsRawFd;
use std::path::Path;

use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
use serde::Serialize;

use crate::extent::open_file;

/// What cache-warming did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CacheStats {
    pub files: u64,
    pub bytes: u64,
    pub errors: u64,
}

/// Ask the kernel to read each `(path, size)` into its page cache.
pub fn warm<'a>(files: impl IntoIterator<Item = (&'a Path, u64)>) -> CacheStats {
    let mut stats = CacheStats::default();
    for (path, size) in files {
        let res = open_file(path, false).and_then(|(f, _)| {
            posix_fadvise(f.as_raw_fd(), 0, 0, PosixFadviseAdvice::POSIX_FADV_WILLNEED)
                .map_err(std::io::Error::from)
        });
        match res {
            Ok(()) => {
                stats.files += 1;
                stats.bytes += size;
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), "cache-warming failed: {e}");
                stats.errors += 1;
            }
        }
    }
    stats
}
