//! Typed errors and warnings of the library.
//!
//! Two kinds of trouble exist in prewarm and they must not be confused:
//! an [`Error`] stops the operation that raised it (a list file that cannot be
//! read, an invalid configuration), while a [`Warning`] records one bad input
//! (a missing path, a garbage line, a symlink loop) and the rest of the work
//! carries on. Warnings name their culprit: the path and, when it came from a
//! list file, the file and line.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// Errors that stop an operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A path list could not be read at all.
    #[error("reading path list {path}: {source}")]
    ListRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A configuration value is out of range or inconsistent.
    #[error("invalid configuration: {field}: {reason}")]
    Config { field: &'static str, reason: String },
    /// A block device named explicitly cannot be used.
    #[error("{0}")]
    Device(String),
    /// A manifest cannot be used on this machine (corrupt, another
    /// filesystem, a device of another size).
    #[error("manifest {path}: {reason}")]
    ManifestRefused { path: PathBuf, reason: String },
    /// Nothing at all could be planned or read.
    #[error("nothing to read: {0}")]
    NothingToRead(String),
    /// io_uring was required but cannot be used here.
    #[error("io_uring unavailable: {0}")]
    UringUnavailable(#[source] std::io::Error),
    /// An I/O buffer could not be allocated.
    #[error("allocating {bytes} bytes of I/O buffers: {source}")]
    Buffers {
        bytes: usize,
        #[source]
        source: std::io::Error,
    },
}

/// Where an input came from, so that a warning can point at it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Origin {
    /// Named on the command line.
    Argument,
    /// A boot manifest.
    Manifest,
    /// Line `line` (1-based) of the list file `list`.
    List {
        #[serde(serialize_with = "serialize_path")]
        list: PathBuf,
        line: usize,
    },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Argument => write!(f, "argument"),
            Origin::Manifest => write!(f, "manifest"),
            Origin::List { list, line } => write!(f, "{}:{}", list.display(), line),
        }
    }
}

/// What went wrong with one input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WarningKind {
    /// A list line that is not `[PRIORITY] /absolute/path`.
    BadLine,
    /// The path does not exist (or a symlink points nowhere).
    Missing,
    /// A glob pattern matched nothing.
    NoMatch,
    /// A symlink chain loops.
    SymlinkLoop,
    /// A directory walk came back to one of its own ancestors.
    DirectoryLoop,
    /// The same file (same device and inode) was named again: a duplicate
    /// line, a hard link or a symlink to a file already listed.
    Duplicate,
    /// Not a regular file (device node, FIFO, socket, ...): skipped.
    NotRegular,
    /// The file exists but could not be opened or read.
    Unreadable,
    /// A directory could not be walked completely.
    WalkError,
}

impl WarningKind {
    /// True when the warning means bytes that were asked for were not read.
    /// Those make a run partial (exit code 1); the others are advisory.
    pub fn is_read_failure(self) -> bool {
        matches!(self, WarningKind::Unreadable | WarningKind::WalkError)
    }
}

/// One bad input, named, after which the rest of the work went on.
#[derive(Debug, Clone, Serialize)]
pub struct Warning {
    pub kind: WarningKind,
    #[serde(serialize_with = "serialize_opt_path")]
    pub path: Option<PathBuf>,
    pub origin: Option<Origin>,
    pub message: String,
}

impl Warning {
    pub fn new(
        kind: WarningKind,
        path: Option<&Path>,
        origin: Option<&Origin>,
        message: impl Into<String>,
    ) -> Self {
        Warning {
            kind,
            path: path.map(Path::to_path_buf),
            origin: origin.cloned(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(origin @ Origin::List { .. }) = &self.origin {
            write!(f, "{origin}: ")?;
        }
        if let Some(path) = &self.path {
            write!(f, "{}: ", path.display())?;
        }
        write!(f, "{}", self.message)
    }
}

pub(crate) fn serialize_path<S: serde::Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&p.to_string_lossy())
}

pub(crate) fn serialize_opt_path<S: serde::Serializer>(
    p: &Option<PathBuf>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match p {
        Some(p) => s.serialize_str(&p.to_string_lossy()),
        None => s.serialize_none(),
    }
}
