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
//! 10 @0+4096,8388608+65536 /usr/bin/kubelet
//!                                only these byte ranges of the file
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
//! Byte ranges: between the priority and the path, a word starting with
//! `@` restricts the entry to those bytes of each file it names (a
//! recording, see `prewarm record`, writes them): `@OFFSET+LENGTH`, in
//! decimal bytes, several joined by `,` (no blanks). A range may run past
//! the end of the file (it is clipped to the file's size when mapped), but
//! is never empty and never overflows 2^64; overlapping ranges are merged,
//! and at most [`MAX_RANGES_PER_LINE`] are taken. A line with a bad range is
//! a warning and is skipped (never read whole instead). The word is
//! unambiguous: a path is absolute, so it starts with `/` or `"`, never
//! `@`, and lists written before ranges existed, where a word starting with
//! `@` was an error, parse as they did. A file named with ranges and also
//! named whole (or with other ranges) is read for the union of them.
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
use crate::map::ByteRange;
use crate::plan::spans;
use crate::report::{WarningCap, WarningsOmitted};

/// Priority of entries that do not give one.
pub const DEFAULT_PRIORITY: u32 = 100;

/// Largest list file read (a million lines of long paths fit).
pub const MAX_LIST_BYTES: u64 = 256 << 20;

/// Longest line: a path of `PATH_MAX` (4096) bytes, every byte escaped,
/// with a priority, fits with room to spare.
pub const MAX_LINE_BYTES: usize = 16 << 10;

/// Most byte ranges on one line (more than this is a bad line).
pub const MAX_RANGES_PER_LINE: usize = 1024;

/// One entry of a [`ListEntries`]: where its path lies in the shared
/// buffer, its priority and its line.
#[derive(Debug, Clone, Copy)]
struct PackedEntry {
    start: u32,
    len: u32,
    priority: u32,
    line: u32,
}

/// The byte ranges of one entry that has them: `ranges[start..start + len]`
/// of its [`ListEntries`].
#[derive(Debug, Clone, Copy)]
struct PackedRanges {
    entry: u32,
    start: u32,
    len: u32,
}

/// The entries of one list file, packed: every path's bytes in one buffer
/// and 16 bytes per entry, rather than a [`SourceEntry`] (two allocations
/// and about 130 bytes) per line. [`ListEntries::entry`] makes the
/// `SourceEntry` when it is needed. Byte ranges, where a line has them,
/// sit in one more buffer, indexed by entry (entries without ranges cost
/// nothing more).
#[derive(Debug, Clone, Default)]
pub struct ListEntries {
    list: PathBuf,
    paths: Vec<u8>,
    entries: Vec<PackedEntry>,
    ranges: Vec<ByteRange>,
    /// Sorted by `entry`.
    ranged: Vec<PackedRanges>,
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
            ranges: self.ranges_of(idx).map(<[ByteRange]>::to_vec),
        })
    }

    /// The byte ranges of entry `idx`, if it names some (`None`: whole files).
    fn ranges_of(&self, idx: usize) -> Option<&[ByteRange]> {
        let at = self
            .ranged
            .binary_search_by_key(&idx, |r| r.entry as usize)
            .ok()?;
        let r = self.ranged[at];
        self.ranges
            .get(r.start as usize..r.start as usize + r.len as usize)
    }

    /// Every entry, unpacked, in list order.
    pub fn iter(&self) -> impl Iterator<Item = SourceEntry> + '_ {
        (0..self.len()).filter_map(|i| self.entry(i))
    }

    fn push(&mut self, path: &[u8], priority: u32, line: usize, ranges: Option<&[ByteRange]>) {
        // The offsets fit: a list is at most MAX_LIST_BYTES (< 4 GiB), and
        // a range takes at least 4 bytes of it.
        let (Ok(start), Ok(len), Ok(line), Ok(entry), Ok(ranges_start)) = (
            u32::try_from(self.paths.len()),
            u32::try_from(path.len()),
            u32::try_from(line),
            u32::try_from(self.entries.len()),
            u32::try_from(self.ranges.len()),
        ) else {
            return;
        };
        if let Some(ranges) = ranges {
            self.ranged.push(PackedRanges {
                entry,
                start: ranges_start,
                len: ranges.len() as u32,
            });
            self.ranges.extend_from_slice(ranges);
        }
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
        self.ranges.shrink_to_fit();
        self.ranged.shrink_to_fit();
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
            Ok(Some(LineEntry {
                priority,
                path,
                ranges,
            })) => match path.strip_prefix(IMAGE_PREFIX) {
                Some(reference) => parsed.images.push(ImageSource {
                    request: image_request(reference),
                    priority,
                    origin: Origin::List {
                        list: list.to_path_buf(),
                        line: number,
                    },
                }),
                None => parsed
                    .entries
                    .push(&path, priority, number, ranges.as_deref()),
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

/// What one line names: its priority, path (unquoted) and byte ranges.
struct LineEntry<'a> {
    priority: u32,
    path: Cow<'a, [u8]>,
    ranges: Option<Vec<ByteRange>>,
}

/// `Ok(None)` for blank and comment lines; the priority, path and ranges
/// otherwise.
fn parse_line(raw: &[u8]) -> Result<Option<LineEntry<'_>>, String> {
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
    let (ranges, rest) = match rest.strip_prefix(b"@") {
        Some(word) => {
            let end = word
                .iter()
                .position(u8::is_ascii_whitespace)
                .unwrap_or(word.len());
            (
                Some(parse_ranges(&word[..end])?),
                word[end..].trim_ascii_start(),
            )
        }
        None => (None, rest),
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
        if ranges.is_some() {
            return Err("byte ranges name parts of a file, not of an image".into());
        }
        return Ok(Some(LineEntry {
            priority,
            path,
            ranges,
        }));
    }
    if !path.starts_with(b"/") {
        return Err(format!(
            "expected `[PRIORITY] /absolute/path` or `[PRIORITY] \"/absolute/path\"`, got {:?}",
            String::from_utf8_lossy(line)
        ));
    }
    Ok(Some(LineEntry {
        priority,
        path,
        ranges,
    }))
}

/// The ranges of an `@` word (without the `@`): `OFFSET+LENGTH[,...]`,
/// sorted, with overlapping and touching ones merged.
fn parse_ranges(word: &[u8]) -> Result<Vec<ByteRange>, String> {
    let text = String::from_utf8_lossy(word);
    let mut spans = Vec::new();
    for (i, part) in text.split(',').enumerate() {
        if i >= MAX_RANGES_PER_LINE {
            return Err(format!(
                "more than {MAX_RANGES_PER_LINE} byte ranges on one line"
            ));
        }
        let number = |s: &str| -> Option<u64> {
            (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse().ok())
                .flatten()
        };
        let parsed = part
            .split_once('+')
            .and_then(|(o, l)| Some((number(o)?, number(l)?)));
        let Some((offset, len)) = parsed else {
            return Err(format!(
                "bad byte range {part:?}: expected @OFFSET+LENGTH[,OFFSET+LENGTH...] in decimal bytes"
            ));
        };
        if len == 0 {
            return Err(format!("empty byte range {part:?}"));
        }
        let Some(end) = offset.checked_add(len) else {
            return Err(format!("byte range {part:?} runs past 2^64"));
        };
        spans.push((offset, end));
    }
    Ok(spans::merge(spans, 0)
        .into_iter()
        .map(|(s, e)| ByteRange {
            offset: s,
            len: e - s,
        })
        .collect())
}

/// One list line naming `path` at `priority`, restricted to `ranges` if
/// given, without its newline: what writers of lists (a recording) emit,
/// and what [`parse_list`] reads back as the same entry. The path is bare
/// when that reads back the same, quoted otherwise. `None` when no line can
/// name it: the path holds a newline or a NUL, or is not absolute.
pub fn format_line(priority: u32, ranges: Option<&[ByteRange]>, path: &Path) -> Option<Vec<u8>> {
    let bytes = path.as_os_str().as_bytes();
    if !bytes.starts_with(b"/") || bytes.iter().any(|&b| b == b'\n' || b == 0) {
        return None;
    }
    let mut out = format!("{priority} ").into_bytes();
    if let Some(ranges) = ranges {
        out.push(b'@');
        for (i, r) in ranges.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(format!("{}+{}", r.offset, r.len).as_bytes());
        }
        out.push(b' ');
    }
    if bytes.trim_ascii() == bytes {
        out.extend_from_slice(bytes);
    } else {
        out.push(b'"');
        for &b in bytes {
            if matches!(b, b'"' | b'\\') {
                out.push(b'\\');
            }
            out.push(b);
        }
        out.push(b'"');
    }
    Some(out)
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
    fn byte_ranges() {
        let r = |offset, len| ByteRange { offset, len };
        let (entries, warnings) = parse(concat!(
            "10 @0+4096,8388608+65536 /usr/bin/kubelet\n",
            "@100+10,0+50,40+20 \"/q/a b \"\n",
            "20 /plain/@not-ranges\n",
            "5 @0+0 /empty\n",
            "5 @10 /no-length\n",
            "5 @1+18446744073709551615 /overflow\n",
            "5 @0+1, /trailing-comma\n",
            "5 @0+1\n",
            "5 @-1+4 /negative\n",
        ));
        let got: Vec<_> = entries
            .iter()
            .map(|e| (e.priority, e.path.to_str().unwrap(), e.ranges.clone()))
            .collect();
        assert_eq!(
            got,
            [
                (
                    10,
                    "/usr/bin/kubelet",
                    Some(vec![r(0, 4096), r(8 << 20, 65536)])
                ),
                (100, "/q/a b ", Some(vec![r(0, 60), r(100, 10)])),
                (20, "/plain/@not-ranges", None),
            ]
        );
        let msgs: Vec<_> = warnings.iter().map(ToString::to_string).collect();
        assert_eq!(msgs.len(), 6, "{msgs:?}");
        assert!(
            msgs[0].starts_with("list.txt:4: empty byte range \"0+0\""),
            "{}",
            msgs[0]
        );
        assert!(
            msgs[1].starts_with("list.txt:5: bad byte range \"10\""),
            "{}",
            msgs[1]
        );
        assert!(msgs[2].starts_with("list.txt:6: byte range"), "{}", msgs[2]);
        assert!(
            msgs[3].starts_with("list.txt:7: bad byte range \"\""),
            "{}",
            msgs[3]
        );
        assert!(msgs[4].starts_with("list.txt:8: expected"), "{}", msgs[4]);
        assert!(
            msgs[5].starts_with("list.txt:9: bad byte range"),
            "{}",
            msgs[5]
        );
    }

    #[test]
    fn lines_written_read_back() {
        let r = |offset, len| ByteRange { offset, len };
        let cases: [(&str, Option<Vec<ByteRange>>); 4] = [
            ("/usr/bin/kubelet", Some(vec![r(0, 4096), r(65536, 1)])),
            ("/a \"quoted\" \\ name ", None),
            (" /x", Some(vec![r(5, 5)])),
            ("/tab\tinside", None),
        ];
        let mut text = Vec::new();
        let mut want = Vec::new();
        for (path, ranges) in cases {
            let path = Path::new(path);
            match format_line(7, ranges.as_deref(), path) {
                Some(line) => {
                    text.extend_from_slice(&line);
                    text.push(b'\n');
                    want.push((path.to_path_buf(), ranges));
                }
                None => assert!(!path.is_absolute(), "{path:?}"),
            }
        }
        assert!(format_line(1, None, Path::new("/new\nline")).is_none());
        let (entries, warnings) = parse_list(&text, Path::new("l"));
        assert!(warnings.is_empty(), "{warnings:?}");
        let got: Vec<_> = entries.into_iter().map(|e| (e.path, e.ranges)).collect();
        assert_eq!(got, want);
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
