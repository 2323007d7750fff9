//! Reading an input file that prewarm does not trust: lists, manifests and
//! handover state, even when root reads them.
//!
//! prewarm runs as root at boot. A list or manifest that someone else can
//! rewrite would let them choose what root reads (and, through a planted
//! FIFO or `/dev/zero`, hang the boot or exhaust its memory). So an input
//! file is:
//!
//! * opened without blocking (a FIFO does not wait for a writer) and must be
//!   a regular file;
//! * read up to a cap, past which it is refused rather than read on;
//! * when read as root, refused if group or others may write it, or if it
//!   sits in a directory they may write without the sticky bit (where they
//!   could replace it).
//!
//! Every refusal says which file and why.

use std::fs::File;
use std::io::{Read, Take};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use crate::source::describe_type;

/// Why an input file was refused or could not be read.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// Opening or reading failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Not a regular file (a FIFO, a device, a directory).
    #[error("not a regular file (a {0})")]
    NotRegular(&'static str),
    /// Larger than the cap.
    #[error("larger than {cap} bytes: refused")]
    TooLarge {
        /// The cap.
        cap: u64,
    },
    /// Writable by others than its owner, as root reads it.
    #[error("{0}: refused as input to root")]
    Unsafe(String),
}

/// Read the regular file `path`, at most `cap` bytes (see the module doc).
pub(crate) fn read_untrusted(path: &Path, cap: u64) -> Result<Vec<u8>, InputError> {
    let (file, len) = open_checked(path, cap)?;
    // Room for the whole file at once (and the byte that would say it
    // grew): no buffer doubled and copied, page by page, as it fills.
    let room = usize::try_from(len).unwrap_or(0).saturating_add(1);
    read_capped_into(file, cap, Vec::with_capacity(room))
}

/// Open the regular file `path` for streaming, with the checks of
/// [`read_untrusted`]: not a FIFO or device, not larger than `cap`, safe
/// to read as root. The reader stops one byte past `cap`, so a file that
/// grows after the check still cannot feed more than that; the caller
/// refuses it if it reads more than `cap` bytes (as [`read_untrusted`] does).
pub(crate) fn open_untrusted(path: &Path, cap: u64) -> Result<Take<File>, InputError> {
    let (file, _) = open_checked(path, cap)?;
    Ok(file.take(cap.saturating_add(1)))
}

/// Open `path` with the checks of [`open_untrusted`]; the file and its
/// length when opened.
fn open_checked(path: &Path, cap: u64) -> Result<(File, u64), InputError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(InputError::NotRegular(describe_type(&meta.file_type())));
    }
    if nix::unistd::geteuid().is_root() {
        check_ownership(path, &meta)?;
    }
    if meta.len() > cap {
        return Err(InputError::TooLarge { cap });
    }
    Ok((file, meta.len()))
}

/// Read from `reader` into `bytes` up to `cap` bytes; more is an error.
fn read_capped_into(
    reader: impl Read,
    cap: u64,
    mut bytes: Vec<u8>,
) -> Result<Vec<u8>, InputError> {
    reader.take(cap.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > cap {
        return Err(InputError::TooLarge { cap });
    }
    Ok(bytes)
}

/// As root: the file and its directory must not be writable by group or
/// others (a directory with the sticky bit, like /tmp, is fine: others
/// cannot replace a file they do not own there).
fn check_ownership(path: &Path, meta: &std::fs::Metadata) -> Result<(), InputError> {
    if meta.mode() & 0o022 != 0 {
        return Err(InputError::Unsafe(format!(
            "writable by {} (mode {:04o})",
            who(meta.mode()),
            meta.mode() & 0o7777
        )));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let dmeta = std::fs::metadata(dir)?;
    let dmode = dmeta.mode();
    if dmode & 0o022 != 0 && dmode & libc::S_ISVTX == 0 {
        return Err(InputError::Unsafe(format!(
            "its directory {} is writable by {} without the sticky bit (mode {:04o})",
            dir.display(),
            who(dmode),
            dmode & 0o7777
        )));
    }
    Ok(())
}

fn who(mode: u32) -> &'static str {
    match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (true, true) => "group and others",
        (true, false) => "its group",
        _ => "others",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn refuses_fifos_devices_and_oversized_files_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let err = read_untrusted(&fifo, 1 << 20).unwrap_err();
        assert!(err.to_string().contains("FIFO"), "{err}");
        let err = read_untrusted(Path::new("/dev/zero"), 1 << 20).unwrap_err();
        assert!(err.to_string().contains("character device"), "{err}");
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; 100]).unwrap();
        assert!(matches!(
            read_untrusted(&big, 99),
            Err(InputError::TooLarge { cap: 99 })
        ));
        assert_eq!(read_untrusted(&big, 100).unwrap().len(), 100);
        let mut streamed = Vec::new();
        open_untrusted(&big, 100)
            .unwrap()
            .read_to_end(&mut streamed)
            .unwrap();
        assert_eq!(streamed.len(), 100);
        assert!(matches!(
            open_untrusted(&big, 99),
            Err(InputError::TooLarge { cap: 99 })
        ));
        let err = open_untrusted(&fifo, 1 << 20).unwrap_err();
        assert!(err.to_string().contains("FIFO"), "{err}");
        assert!(matches!(
            read_capped_into(std::io::repeat(0), 1000, Vec::new()),
            Err(InputError::TooLarge { .. })
        ));
    }

    #[test]
    fn as_root_refuses_files_others_can_change() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("list");
        std::fs::write(&f, b"/bin/sh\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(read_untrusted(&f, 1000).is_ok());
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o666)).unwrap();
        let err = read_untrusted(&f, 1000).unwrap_err();
        assert!(
            err.to_string().contains("writable by group and others"),
            "{err}"
        );
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = read_untrusted(&f, 1000).unwrap_err();
        assert!(err.to_string().contains("without the sticky bit"), "{err}");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(read_untrusted(&f, 1000).is_ok());
    }
}
