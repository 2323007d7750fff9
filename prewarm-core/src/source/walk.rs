//! Directory walks, breadth first, a level's directories read in parallel.
//!
//! On a cold volume every directory block and inode table block a walk
//! needs is a fetch, and a depth-first walk (`walkdir`) makes them one after
//! another: reading an unpacked container image of a thousand directories
//! that way costs a thousand round trips before the first byte of data is
//! known. Here the walk keeps a queue of directories still to read; the
//! collector takes a group of them at a time and reads them (and `stat`s
//! their children) on the metadata pool ([`crate::map::pool`]), so as many
//! metadata fetches are in flight as the pool has threads, beside the data
//! reads of what was found already.
//!
//! This module only reads: what a child is (file, directory, other, or why
//! it could not be looked at). The collector ([`super::Collector`]) decides
//! what to do with it: dedupe files, queue directories (staying on the
//! walk's filesystem and never descending into an ancestor, so a symlink
//! loop ends), resolve symlinks inside an image root, and warn.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;

use super::SourceEntry;
use crate::engine::StopSignal;

/// A directory queued for reading.
pub(super) struct PendingDir {
    pub path: PathBuf,
    /// The entry whose walk reached it (priority, origin).
    pub entry: Arc<SourceEntry>,
    /// The device of the directory the walk started from: a walk stays on
    /// it unless asked to cross mounts.
    pub root_dev: u64,
    /// This directory and, through `parent`, each one above it in this
    /// walk: a symlink back to one of them is a loop.
    pub ancestry: Arc<Ancestor>,
}

/// A directory on the way down a walk.
pub(super) struct Ancestor {
    pub id: (u64, u64),
    pub path: PathBuf,
    pub parent: Option<Arc<Ancestor>>,
}

impl Ancestor {
    /// The directory `id` if it is this one or one above it.
    pub fn find(self: &Arc<Self>, id: (u64, u64)) -> Option<&Ancestor> {
        let mut at = Some(self.as_ref());
        while let Some(a) = at {
            if a.id == id {
                return Some(a);
            }
            at = a.parent.as_deref();
        }
        None
    }
}

/// One child of a directory read.
pub(super) struct Child {
    pub path: PathBuf,
    pub kind: ChildKind,
}

pub(super) enum ChildKind {
    /// A regular file (through a symlink, when links are followed).
    File(std::fs::Metadata),
    /// A directory (likewise).
    Dir(std::fs::Metadata),
    /// A symlink, not followed (inside an image root the collector
    /// resolves it by the image's rules).
    Symlink,
    /// Anything else.
    Other(std::fs::FileType),
    /// It could not be looked at (a dangling symlink is `NotFound`).
    Error(std::io::Error),
}

/// The children of a directory, by name, or why it could not be read.
pub(super) type Listing = std::io::Result<Vec<Child>>;

/// Read `dirs` in parallel on the current rayon pool, each one's children
/// sorted by name and looked at (`lstat`, or `stat` through a symlink when
/// `follow_links`). After a stop no more directories are read (their
/// listing is empty).
pub(super) fn read_dirs(
    dirs: &[PendingDir],
    follow_links: bool,
    stop: &StopSignal,
) -> Vec<Listing> {
    dirs.par_iter()
        .map(|dir| {
            if stop.check().is_some() {
                return Ok(Vec::new());
            }
            read_dir(dir, follow_links, stop)
        })
        .collect()
}

fn read_dir(dir: &PendingDir, follow_links: bool, stop: &StopSignal) -> Listing {
    let mut names: Vec<(PathBuf, Option<std::fs::FileType>)> = std::fs::read_dir(&dir.path)?
        .map(|e| e.map(|e| (e.path(), e.file_type().ok())))
        .collect::<std::io::Result<_>>()?;
    names.sort_unstable_by(|a, b| a.0.file_name().cmp(&b.0.file_name()));
    // Each look may wait for an inode table fetch: in parallel too.
    Ok(names
        .into_par_iter()
        .map(|(path, ft)| {
            if stop.check().is_some() {
                let kind = ChildKind::Error(std::io::Error::from(std::io::ErrorKind::Interrupted));
                return Child { path, kind };
            }
            let kind = look(&path, ft, follow_links);
            Child { path, kind }
        })
        .collect())
}

/// What `path` is; `ft` is its type from the directory entry, when known.
fn look(path: &Path, ft: Option<std::fs::FileType>, follow_links: bool) -> ChildKind {
    let is_link = match ft {
        Some(t) => t.is_symlink(),
        // No type in the directory entry: `lstat` says.
        None => match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_symlink() => true,
            meta => return kind_of(meta),
        },
    };
    match (is_link, follow_links) {
        (true, false) => ChildKind::Symlink,
        (true, true) => kind_of(std::fs::metadata(path)),
        (false, _) => kind_of(std::fs::symlink_metadata(path)),
    }
}

fn kind_of(meta: std::io::Result<std::fs::Metadata>) -> ChildKind {
    match meta {
        Ok(m) if m.is_file() => ChildKind::File(m),
        Ok(m) if m.is_dir() => ChildKind::Dir(m),
        Ok(m) if m.file_type().is_symlink() => ChildKind::Symlink,
        Ok(m) => ChildKind::Other(m.file_type()),
        Err(e) => ChildKind::Error(e),
    }
}
