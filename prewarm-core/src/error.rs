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

pub use crate::input_file::InputError;
use crate::manifest::ManifestError;
use crate::map::DeviceError;

/// Errors that stop an operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A path list could not be read at all.
    #[error("reading path list {path}: {source}")]
    ListRead {
        /// The list.
        path: PathBuf,
        /// The error.
        #[source]
        source: InputError,
    },
    /// `prewarm record` could not watch the filesystems.
    #[error("recording: {what}: {source}")]
    Record {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A configuration value is out of range or inconsistent.
    #[error("invalid configuration: {field}: {reason}")]
    Config {
        /// The setting.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A block device named explicitly cannot be used.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// A manifest file could not be read.
    #[error("reading manifest {path}: {source}")]
    ManifestRead {
        /// The manifest.
        path: PathBuf,
        /// The error.
        #[source]
        source: InputError,
    },
    /// A manifest file is not a valid manifest (corrupt, truncated, of
    /// another version).
    #[error("manifest {path}: {source}")]
    ManifestDecode {
        /// The manifest.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: ManifestError,
    },
    /// A manifest cannot be used on this machine (another filesystem, a
    /// device of another size).
    #[error("manifest {path}: {reason}")]
    ManifestRefused {
        /// The manifest.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A file prewarm writes (manifest, handover state) could not be
    /// written; the old one, if any, is left as it was.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Nothing at all could be planned or read.
    #[error("nothing to read: {0}")]
    NothingToRead(String),
    /// io_uring was required but cannot be used here.
    #[error("io_uring unavailable: {0}")]
    UringUnavailable(#[source] std::io::Error),
    /// An I/O buffer could not be allocated.
    #[error("allocating {bytes} bytes of I/O buffers: {source}")]
    Buffers {
        /// How much was asked for.
        bytes: usize,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// An engine could not be started.
    #[error("{what}: {source}")]
    Engine {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A worker thread panicked (a bug); its part of the run is lost.
    #[error("{0} panicked")]
    Panicked(&'static str),
}

impl Error {
    pub(crate) fn panicked(what: &'static str) -> Self {
        Error::Panicked(what)
    }

    /// Whether the error refuses a manifest (corrupt, of another version,
    /// for another filesystem or device size): the CLI's exit code 3.
    pub fn is_manifest_refusal(&self) -> bool {
        matches!(
            self,
            Error::ManifestDecode { .. } | Error::ManifestRefused { .. }
        )
    }
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
        /// The list file.
        #[serde(serialize_with = "serialize_path")]
        list: PathBuf,
        /// The line, from 1.
        line: usize,
    },
    /// A container image's files (`--image`).
    Image {
        /// The image record's name.
        reference: String,
    },
    /// A shared library (or interpreter) of this file (`--with-libs`).
    LibraryOf {
        /// The executable, library or script that needs it.
        #[serde(serialize_with = "serialize_path")]
        path: PathBuf,
    },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Argument => write!(f, "argument"),
            Origin::Manifest => write!(f, "manifest"),
            Origin::List { list, line } => write!(f, "{}:{}", list.display(), line),
            Origin::Image { reference } => write!(f, "image {reference}"),
            Origin::LibraryOf { path } => write!(f, "library of {}", path.display()),
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
    /// A container image (`--image`) could not be resolved, or only in
    /// part.
    Image,
    /// A shared-library closure (`--with-libs`) is incomplete: a needed
    /// library or interpreter not found, a malformed ELF file or loader
    /// cache.
    Library,
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
    /// What kind of problem.
    pub kind: WarningKind,
    /// The path concerned, if any.
    #[serde(serialize_with = "serialize_opt_path")]
    pub path: Option<PathBuf>,
    /// Where the input came from (list and line).
    pub origin: Option<Origin>,
    /// What happened.
    pub message: String,
}

impl Warning {
    /// A warning about `path` (from `origin`).
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
        if let Some(origin @ (Origin::List { .. } | Origin::Image { .. })) = &self.origin {
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
