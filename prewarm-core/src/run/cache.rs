//! Cache-warming: putting files in their own page cache.
//!
//! Hydration reads the raw block device, which makes the volume fetch its
//! blocks but leaves the data in the *device's* page cache (or, with
//! O_DIRECT, in no cache at all). A later `read()` of the file still goes to
//! the disk, now fast because the blocks are hydrated. When the caller also
//! wants the first read of each file to be a page-cache hit, this module
//! reads the files through the page cache.
//!
//! `posix_fadvise(WILLNEED)` and `readahead(2)` alone are not enough: the
//! kernel caps each call at the device's readahead window (measured here:
//! 640 of 2048 pages of an 8 MiB file), so the files are read with buffered
//! `pread`s after a `POSIX_FADV_SEQUENTIAL` hint, several files at a time.

use std::os::fd::AsRawFd;
use std::path::Path;

use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
use nix::sys::uio::pread;
use rayon::prelude::*;
use serde::Serialize;

use crate::engine::StopSignal;
use crate::map::extent::open_file;

/// Buffer per file being read.
const READ_CHUNK: usize = 1 << 20;

/// What cache-warming did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CacheStats {
    /// Files read through the page cache.
    pub files: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Files that could not be read.
    pub errors: u64,
    /// Files not (completely) read because a stop came first.
    pub not_warmed: u64,
}

/// Read each `(path, size)` through the page cache, until `stop` says so
/// (it is looked at before each file and each 1 MiB read).
pub fn warm<'a>(files: impl IntoIterator<Item = (&'a Path, u64)>, stop: &StopSignal) -> CacheStats {
    let files: Vec<(&Path, u64)> = files.into_iter().collect();
    files
        .par_iter()
        .map(|&(path, _)| match read_through_cache(path, stop) {
            Ok((bytes, true)) => CacheStats {
                files: 1,
                bytes,
                ..Default::default()
            },
            Ok((bytes, false)) => CacheStats {
                bytes,
                not_warmed: 1,
                ..Default::default()
            },
            Err(e) => {
                tracing::warn!(path = %path.display(), "cache-warming failed: {e}");
                CacheStats {
                    errors: 1,
                    ..Default::default()
                }
            }
        })
        .reduce(CacheStats::default, |a, b| CacheStats {
            files: a.files + b.files,
            bytes: a.bytes + b.bytes,
            errors: a.errors + b.errors,
            not_warmed: a.not_warmed + b.not_warmed,
        })
}

/// Bytes read, and whether the file was read to its end.
fn read_through_cache(path: &Path, stop: &StopSignal) -> std::io::Result<(u64, bool)> {
    if stop.check().is_some() {
        return Ok((0, false));
    }
    let (file, _) = open_file(path, false)?;
    // Only a hint: a filesystem that ignores it is still read.
    let _ = posix_fadvise(
        file.as_raw_fd(),
        0,
        0,
        PosixFadviseAdvice::POSIX_FADV_SEQUENTIAL,
    );
    let mut buf = vec![0u8; READ_CHUNK];
    let mut offset = 0u64;
    loop {
        if stop.check().is_some() {
            return Ok((offset, false));
        }
        match pread(&file, &mut buf, offset as i64) {
            Ok(0) => return Ok((offset, true)),
            Ok(n) => offset += n as u64,
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warms_every_file_and_stops_when_told() {
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<(std::path::PathBuf, u64)> = (0..4)
            .map(|i| {
                let p = dir.path().join(format!("f{i}"));
                std::fs::write(&p, vec![i as u8; 3 << 20]).unwrap();
                (p, 3 << 20)
            })
            .collect();
        let all = || files.iter().map(|(p, s)| (p.as_path(), *s));
        let done = warm(all(), &StopSignal::default());
        assert_eq!((done.files, done.bytes, done.errors), (4, 12 << 20, 0));
        let stop = StopSignal::default();
        stop.cancel();
        let stopped = warm(all(), &stop);
        assert_eq!(
            (stopped.files, stopped.not_warmed, stopped.bytes),
            (0, 4, 0)
        );
    }
}
