//! The list format: what a path list file (`--paths LIST`) holds.
//!
//! A list file holds one entry per line:
//!
//! ```text
//! # comment                      (ignored, as are blank lines)
//! 10 /usr/bin/kubelet            priority 10: lower numbers run first
//! /usr/lib64/libc.so.6           no number: priority 100 (DEFAULT_PRIORITY)
//! 20 /usr/lib64/libsystemd*.so*  glob patterns (*, ?, [...]) are expanded
//! 50 /var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots
//!                                a directory: every regular file under it
//! ```
//!
//! Each bad line becomes a [`Warning`] naming the list and line; the other
//! lines still count. This is the one parser of the format: the CLI, the
//! manifest planner and the benchmarks all call it.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::SourceEntry;
use crate::error::{Error, Origin, Warning, WarningKind};
use crate::input_file::{read_capped, read_untrusted};

/// Priority of entries that do not give one.
pub const DEFAULT_PRIORITY: u32 = 100;

/// Largest list file read (a million lines of long paths fit).
pub const MAX_LIST_BYTES: u64 = 256 << 20;

/// Read a list file (`-` is standard input) into entries. The file is
/// untrusted input: it must be a regular file (a FIFO is refused, not
/// waited on), at most [`MAX_LIST_BYTES`], and, read as root, writable by
/// its owner only.
pub fn read_list(path: &Path) -> Result<(Vec<SourceEntry>, Vec<Warning>), Error> {
    let bytes = if path == Path::new("-") {
        read_capped(std::io::stdin().lock(), MAX_LIST_BYTES)
    } else {
        read_untrusted(path, MAX_LIST_BYTES)
    }
    .map_err(|source| Error::ListRead {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(parse_list(&bytes, path))
}

/// Parse the text of a list file. Bad lines become warnings.
pub fn parse_list(text: &[u8], list: &Path) -> (Vec<SourceEntry>, Vec<Warning>) {
    let mut entries = Vec::new();
    let mut warnings = Vec::new();
    for (idx, raw) in text.split(|&b| b == b'\n').enumerate() {
        let origin = Origin::List {
            list: list.to_path_buf(),
            line: idx + 1,
        };
        match parse_line(raw) {
            Ok(None) => {}
            Ok(Some((priority, path))) => entries.push(SourceEntry {
                path,
                priority,
                origin,
            }),
            Err(msg) => warnings.push(Warning::new(WarningKind::BadLine, None, Some(&origin), msg)),
        }
    }
    (entries, warnings)
}

/// `Ok(None)` for blank and comment lines.
fn parse_line(raw: &[u8]) -> Result<Option<(u32, PathBuf)>, String> {
    let line = raw.trim_ascii();
    if line.is_empty() || line.starts_with(b"#") {
        return Ok(None);
    }
    if line.contains(&0) {
        return Err("line contains a NUL byte".into());
    }
    let (priority, rest) = match line.iter().position(|b| b.is_ascii_whitespace()) {
        Some(sp) if line[..sp].iter().all(u8::is_ascii_digit) => {
            let digits = std::str::from_utf8(&line[..sp]).unwrap_or_default();
            let priority = digits
                .parse::<u32>()
                .map_err(|_| format!("priority {digits:?} is out of range (0..={})", u32::MAX))?;
            (priority, line[sp..].trim_ascii_start())
        }
        None if line.iter().all(u8::is_ascii_digit) => {
            return Err(format!(
                "priority {:?} without a path",
                String::from_utf8_lossy(line)
            ))
        }
        _ => (DEFAULT_PRIORITY, line),
    };
    if !rest.starts_with(b"/") {
        return Err(format!(
            "expected `[PRIORITY] /absolute/path`, got {:?}",
            String::from_utf8_lossy(line)
        ));
    }
    Ok(Some((
        priority,
        PathBuf::from(std::ffi::OsStr::from_bytes(rest)),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (Vec<SourceEntry>, Vec<Warning>) {
        parse_list(text.as_bytes(), Path::new("list.txt"))
    }

    #[test]
    fn list_syntax() {
        let (entries, warnings) = parse(
            "# comment\n\n  10 /usr/bin/kubelet\n/etc/hosts\r\n7\t/a b/c\n-5 /x\nrelative/path\n42\n99999999999 /y\n",
        );
        let got: Vec<_> = entries
            .iter()
            .map(|e| (e.priority, e.path.to_str().unwrap()))
            .collect();
        assert_eq!(
            got,
            [(10, "/usr/bin/kubelet"), (100, "/etc/hosts"), (7, "/a b/c")]
        );
        let lines: Vec<_> = warnings
            .iter()
            .map(|w| match &w.origin {
                Some(Origin::List { line, .. }) => *line,
                _ => 0,
            })
            .collect();
        assert_eq!(lines, [6, 7, 8, 9]);
        assert!(warnings.iter().all(|w| w.kind == WarningKind::BadLine));
        assert!(warnings[3].to_string().starts_with("list.txt:9: priority"));
    }
}
