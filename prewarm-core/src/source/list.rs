//! The list format: what a path list file (`--paths LIST`) holds, and its
//! one parser, which streams the file.
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
//! 30 "/opt/app/name ending in a space "
//!                                a quoted path: \" and \\ are the escapes
//! ```
//!
//! A line `[PRIORITY] image:REF` names a container image of containerd's
//! store by reference (`image:*`: every image), as `--image` does (see
//! [`super::containerd`]).
//!
//! Precisely: a line is `[PRIORITY] PATH`, with blanks (spaces, tabs, a
//! `\r` of a CRLF line end) ignored around it and between the two.
//! PRIORITY is decimal digits (0 to 4294967295). A line whose first
//! non-blank character is `#` is a comment; a `#` anywhere else is part
//! of the path (file names may contain it), so there are no trailing
//! comments. PATH is absolute, either bare, running to the end of the line
//! (blanks at its end are dropped, blanks inside kept), or in double quotes,
//! where `\"` stands for `"` and `\\` for `\`, any other backslash is an
//! error, and nothing but blanks may follow the closing quote: a quoted path
//! can end in a blank or start with `"`. A NUL byte is an error anywhere.
//! Lists written before quoting existed parse as they did: a bare path
//! never started with `"`.
//!
//! The file is read line by line (at most [`MAX_LIST_BYTES`] in all, a line
//! at most [`MAX_LINE_BYTES`]), and the entries are held packed
//! ([`ListEntries`]: the paths' bytes in one buffer, 16 bytes per entry), so
//! a list of a million lines costs about its own size in memory, not
//! several times it.
//!
//! Each bad line becomes a [`Warning`] naming the list and line (the first
//! [`crate::report::WARNINGS_KEPT_PER_KIND`] of them; the rest are counted); the other
//! lines still count. This is the one parser of the format: the CLI, the
//! manifest planner and the benchmarks all call it.

use std::borrow::Cow;
use std::io::BufRead;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::containerd::{ImageRequest, ImageSource};
use super::SourceEntry;
use crate::error::{Error, InputError, Origin, Warning, WarningKind};
use crate::input_file::open_untrusted;
use crate::report::{WarningCap, WarningsOmitted};

/// Priority of entries that do not give one.
pub const DEFAULT_PRIORITY: u32 = 100;

/// Largest list file read (a million lines of long paths fit).
pub const MAX_LIST_BYTES: u64 = 256 << 20;

/// Longest line: a path of `PATH_MAX` (4096) bytes, every byte escaped,
/// with a priority, fits with room to spare.
pub const MAX_LINE_BYTES: usize = 16 << 10;

/// One entry of a [`ListEntries`]: where its path lies in the shared
/// buffer, its priority and its line.
#[derive(Debug, Clone, Copy)]
struct PackedEntry {
    start: u32,
    len: u32,
    priority: u32,
    line: u32,
}

/// The entries of one list file, packed: every path's bytes in one buffer
/// and 16 bytes per entry, rather than a [`SourceEntry`] (two allocations
/// and about 130 bytes) per line. [`ListEntries::entry`] makes the
/// `SourceEntry` when it is needed.
#[derive(Debug, Clone, Default)]
pub struct ListEntries {
    list: PathBuf,
    paths: Vec<u8>,
    entries: Vec<PackedEntry>,
}

impl ListEntries {
    /// How many entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The priority of entry `idx`.
    pub fn priority(&self, idx: usize) -> Option<u32> {
        self.entries.get(idx).map(|e| e.priority)
    }

    /// Entry `idx`, unpacked.
    pub fn entry(&self, idx: usize) -> Option<SourceEntry> {
        let e = self.entries.get(idx)?;
        let start = e.start as usize;
        let bytes = self.paths.get(start..start + e.len as usize)?;
        Some(SourceEntry {
            path: PathBuf::from(std::ffi::OsStr::from_bytes(bytes)),
            priority: e.priority,
            origin: Origin::List {
                list: self.list.clone(),
                line: e.line as usize,
            },
        })
    }

    /// Every entry, unpacked, in list order.
    pub fn iter(&self) -> impl Iterator<Item = SourceEntry> + '_ {
        (0..self.len()).filter_map(|i| self.entry(i))
    }

    fn push(&mut self, path: &[u8], priority: u32, line: usize) {
        // The offsets fit: a list is at most MAX_LIST_BYTES (< 4 GiB).
        let (Ok(start), Ok(len), Ok(line)) = (
            u32::try_from(self.paths.len()),
            u32::try_from(path.len()),
            u32::try_from(line),
        ) else {
            return;
        };
        self.paths.extend_from_slice(path);
        self.entries.push(PackedEntry {
            start,
            len,
            priority,
            line,
        });
    }

    fn shrink_to_fit(&mut self) {
        self.paths.shrink_to_fit();
        self.entries.shrink_to_fit();
    }
}

/// A parsed list: its entries, the first bad lines' warnings, and how many
/// more bad lines there were.
#[derive(Debug, Clone, Default)]
pub struct ParsedList {
    /// The entries, packed.
    pub entries: ListEntries,
    /// Bad lines, the first [`crate::report::WARNINGS_KEPT_PER_KIND`].
    pub warnings: Vec<Warning>,
    /// Bad lines beyond those.
    pub warnings_omitted: Vec<WarningsOmitted>,
    /// `image:REF` lines.
    pub images: Vec<ImageSource>,
}

/// What starts a list line's container image reference.
pub const IMAGE_PREFIX: &[u8] = b"image:";

/// The image request of an `image:REF` line's `REF`.
fn image_request(reference: &[u8]) -> ImageRequest {
    match reference.trim_ascii() {
        b"*" => ImageRequest::All,
        r => ImageRequest::Reference(String::from_utf8_lossy(r).into_owned()),
    }
}

/// Read a list file (`-` is standard input) into entries. The file is
/// untrusted input: it must be a regular file (a FIFO is refused, not
/// waited on), at most [`MAX_LIST_BYTES`], and, read as root, writable by
/// its owner only. It is streamed, never held whole.
pub fn read_list_packed(path: &Path) -> Result<ParsedList, Error> {
    let list_error = |source| Error::ListRead {
        path: path.to_path_buf(),
        source,
    };
    let parsed = if path == Path::new("-") {
        let stdin = std::io::stdin().lock();
        parse_stream(std::io::Read::take(stdin, MAX_LIST_BYTES + 1), path)
    } else {
        let file = open_untrusted(path, MAX_LIST_BYTES).map_err(list_error)?;
        parse_stream(std::io::BufReader::with_capacity(64 << 10, file), path)
    };
    parsed.map_err(list_error)
}

/// [`read_list_packed`], unpacked into one [`SourceEntry`] per entry, with
/// every bad line's warning.
pub fn read_list(path: &Path) -> Result<(Vec<SourceEntry>, Vec<Warning>), Error> {
    let parsed = read_list_packed(path)?;
    Ok((parsed.entries.iter().collect(), parsed.warnings))
}

/// Parse the text of a list file. Bad lines become warnings (the first
/// [`crate::report::WARNINGS_KEPT_PER_KIND`]).
pub fn parse_list(text: &[u8], list: &Path) -> (Vec<SourceEntry>, Vec<Warning>) {
    match parse_stream(text, list) {
        Ok(parsed) => (parsed.entries.iter().collect(), parsed.warnings),
        // Reading a slice cannot fail, and a slice has no size cap.
        Err(_) => (Vec::new(), Vec::new()),
    }
}

/// Parse a list line by line from `reader`; more than [`MAX_LIST_BYTES`]
/// is refused.
fn parse_stream(mut reader: impl BufRead, list: &Path) -> Result<ParsedList, InputError> {
    let mut parsed = ParsedList {
        entries: ListEntries {
            list: list.to_path_buf(),
            ..ListEntries::default()
        },
        ..ParsedList::default()
    };
    let mut cap = WarningCap::default();
    let mut line = Vec::with_capacity(256);
    let mut total: u64 = 0;
    let mut number = 0usize;
    let limit = MAX_LINE_BYTES as u64 + 1;
    loop {
        line.clear();
        let read = std::io::Read::take(&mut reader, limit).read_until(b'\n', &mut line)?;
        if read == 0 {
            break;
        }
        number += 1;
        total += read as u64;
        let result = if line.len() > MAX_LINE_BYTES && line.last() != Some(&b'\n') {
            total += reader.skip_until(b'\n')? as u64;
            Err(format!("line longer than {MAX_LINE_BYTES} bytes: skipped"))
        } else {
            parse_line(line.strip_suffix(b"\n").unwrap_or(&line))
        };
        if total > MAX_LIST_BYTES {
            return Err(InputError::TooLarge {
                cap: MAX_LIST_BYTES,
            });
        }
        match result {
            Ok(None) => {}
            Ok(Some((priority, path))) => match path.strip_prefix(IMAGE_PREFIX) {
                Some(reference) => parsed.images.push(ImageSource {
                    request: image_request(reference),
                    priority,
                    origin: Origin::List {
                        list: list.to_path_buf(),
                        line: number,
                    },
                }),
                None => parsed.entries.push(&path, priority, number),
            },
            Err(msg) => {
                if cap.admit(WarningKind::BadLine) {
                    let origin = Origin::List {
                        list: list.to_path_buf(),
                        line: number,
                    };
                    parsed.warnings.push(Warning::new(
                        WarningKind::BadLine,
                        None,
                        Some(&origin),
                        msg,
                    ));
                }
            }
        }
    }
    parsed.entries.shrink_to_fit();
    parsed.warnings_omitted = cap.omitted();
    Ok(parsed)
}

/// A line's priority and path (unquoted), if it names one.
type LineEntry<'a> = Option<(u32, Cow<'a, [u8]>)>;

/// `Ok(None)` for blank and comment lines; the priority and path otherwise.
fn parse_line(raw: &[u8]) -> Result<LineEntry<'_>, String> {
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
    let path = if rest.starts_with(b"\"") {
        Cow::Owned(unquote(rest)?)
    } else {
        Cow::Borrowed(rest)
    };
    if path
        .strip_prefix(IMAGE_PREFIX)
        .is_some_and(|r| !r.trim_ascii().is_empty())
    {
        return Ok(Some((priority, path)));
    }
    if !path.starts_with(b"/") {
        return Err(format!(
            "expected `[PRIORITY] /absolute/path` or `[PRIORITY] \"/absolute/path\"`, got {:?}",
            String::from_utf8_lossy(line)
        ));
    }
    Ok(Some((priority, path)))
}

/// The path inside the double quotes that `quoted` starts with.
fn unquote(quoted: &[u8]) -> Result<Vec<u8>, String> {
    let mut path = Vec::with_capacity(quoted.len());
    let mut bytes = quoted.iter().enumerate().skip(1);
    while let Some((_, &b)) = bytes.next() {
        match b {
            b'"' => {
                let after = bytes.next().map_or(quoted.len(), |(i, _)| i);
                let trailing = quoted[after..].trim_ascii();
                if !trailing.is_empty() {
                    return Err(format!(
                        "text after the closing quote: {:?} (a comment must be a line of its own)",
                        String::from_utf8_lossy(trailing)
                    ));
                }
                return Ok(path);
            }
            b'\\' => match bytes.next() {
                Some((_, &c @ (b'"' | b'\\'))) => path.push(c),
                Some((_, &c)) => {
                    return Err(format!(
                        "unknown escape \\{} in a quoted path (only \\\" and \\\\ are escapes)",
                        String::from_utf8_lossy(&[c])
                    ))
                }
                None => break,
            },
            _ => path.push(b),
        }
    }
    Err("quoted path without its closing quote".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (Vec<SourceEntry>, Vec<Warning>) {
        parse_list(text.as_bytes(), Path::new("list.txt"))
    }

    #[test]
    fn image_lines_name_container_images() {
        let text = "10 image:busybox\nimage:*\n5 /etc/hosts\n7 image:\n";
        let parsed = parse_stream(text.as_bytes(), Path::new("l")).unwrap();
        let images: Vec<_> = parsed
            .images
            .iter()
            .map(|i| (i.request.clone(), i.priority))
            .collect();
        assert_eq!(
            images,
            [
                (ImageRequest::Reference("busybox".into()), 10),
                (ImageRequest::All, DEFAULT_PRIORITY)
            ]
        );
        assert_eq!(
            parsed.images[0].origin,
            Origin::List {
                list: "l".into(),
                line: 1
            }
        );
        assert_eq!(parsed.entries.len(), 1);
        assert_eq!(parsed.warnings.len(), 1, "`image:` without a reference");
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

    #[test]
    fn quoted_paths_and_comments() {
        let (entries, warnings) = parse(concat!(
            "10 \"/a/file with trailing space \"\n",
            "\"/q/\\\"in quotes\\\" and \\\\ back\"   \n",
            "  # an indented comment\n",
            "20 /x/name#with-hash # not a comment\n",
            "/plain/\"inner\"\n",
            "5 \"/unterminated\n",
            "5 \"/bad\\n-escape\"\n",
            "5 \"/ok\" trailing\n",
            "5 \"relative\"\n",
        ));
        let got: Vec<_> = entries
            .iter()
            .map(|e| (e.priority, e.path.to_str().unwrap(), e.origin.to_string()))
            .collect();
        assert_eq!(
            got,
            [
                (10, "/a/file with trailing space ", "list.txt:1".to_string()),
                (100, "/q/\"in quotes\" and \\ back", "list.txt:2".into()),
                (20, "/x/name#with-hash # not a comment", "list.txt:4".into()),
                (100, "/plain/\"inner\"", "list.txt:5".into()),
            ]
        );
        let msgs: Vec<_> = warnings.iter().map(ToString::to_string).collect();
        assert_eq!(msgs.len(), 4, "{msgs:?}");
        assert!(msgs[0].starts_with("list.txt:6: quoted path without its closing quote"));
        assert!(
            msgs[1].starts_with("list.txt:7: unknown escape \\n"),
            "{}",
            msgs[1]
        );
        assert!(msgs[2].starts_with("list.txt:8: text after the closing quote"));
        assert!(msgs[3].starts_with("list.txt:9: expected"));
    }

    #[test]
    fn long_lines_are_skipped_and_bad_lines_capped() {
        let mut text = format!("/{}\n/after\n", "x".repeat(MAX_LINE_BYTES + 10));
        for _ in 0..100 {
            text.push_str("garbage\n");
        }
        let parsed = parse_stream(text.as_bytes(), Path::new("l")).unwrap();
        let paths: Vec<_> = parsed.entries.iter().map(|e| e.path).collect();
        assert_eq!(paths, [PathBuf::from("/after")]);
        assert_eq!(parsed.entries.entry(0).unwrap().origin.to_string(), "l:2");
        assert!(parsed.warnings[0].message.starts_with("line longer than"));
        assert_eq!(parsed.warnings.len(), crate::report::WARNINGS_KEPT_PER_KIND);
        assert_eq!(
            parsed.warnings_omitted,
            [WarningsOmitted {
                kind: WarningKind::BadLine,
                count: 101 - crate::report::WARNINGS_KEPT_PER_KIND as u64
            }]
        );
    }

    #[test]
    fn read_list_streams_a_file_and_refuses_fifos() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("boot.list");
        std::fs::write(&list, "# c\n10 /bin/sh\n\"/tmp/a b \"\n").unwrap();
        let (entries, warnings) = read_list(&list).unwrap();
        assert!(warnings.is_empty());
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].path, Path::new("/tmp/a b "));
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let err = read_list(&fifo).unwrap_err().to_string();
        assert!(err.contains("fifo") && err.contains("FIFO"), "{err}");
    }
}
