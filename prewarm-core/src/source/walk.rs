//! Directory walks, breadth first, a level's directories read in parallel.
//!
//! On a cold volume every directory block and inode table block a walk
//! needs is a fetch, and a depth-first walk (`walkdir`) makes them one after
//! another: reading an unpacked container image of a thousand directories
//! that way costs a thousand round trips before the first byte of data is
//! known. Here the walk keeps a queue of directories still to read; the
//! collector takes a group of them at a time and reads them (and looks at
//! their children) on the metadata pool ([`crate::map::pool`]), so as many
//! metadata fetches are in flight as the pool has threads, beside the data
//! reads of what was found already. A regular file is opened in its
//! directory and mapped then ([`crate::map::extent::map_file`]): its one
//! lookup serves both.
//!
//! This module only reads: what a child is (file and its extents,
//! directory, other, or why it could not be looked at). The collector
//! ([`super::Collector`]) decides what to do with it: dedupe files, queue directories (staying on the
//! walk's filesystem and never descending into an ancestor, so a symlink
//! loop ends), resolve symlinks inside an image root, and warn.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;

use super::SourceEntry;
use crate::engine::StopSignal;
use crate::map::extent::{map_file, open_file_in};
use crate::map::pool::MetadataPool;
use crate::map::ExtentMap;

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
    /// A regular file (through a symlink, when links are followed), and
    /// its extents when the walk mapped it: a regular file met by name in
    /// its directory is opened there, and mapped while it is open.
    File {
        meta: std::fs::Metadata,
        map: Option<ExtentMap>,
    },
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

/// Read `dirs` in parallel on `pool`, each one's children sorted by name
/// and looked at (`lstat`, or `stat` through a symlink when
/// `follow_links`); each directory with its listing, in order. After a stop
/// no more directories are read (their listing is empty).
pub(super) fn read_dirs(
    pool: &MetadataPool,
    dirs: Vec<PendingDir>,
    follow_links: bool,
    stop: &StopSignal,
) -> Vec<(PendingDir, Listing)> {
    let stop = stop.clone();
    pool.map(dirs, move |dir| {
        let listing = match stop.check() {
            Some(_) => Ok(Vec::new()),
            None => read_dir(&dir, follow_links, &stop),
        };
        (dir, listing)
    })
}

/// One directory's children, looked at one after another: a directory's
/// inodes mostly share an inode table block, so the first look waits for
/// its fetch and the rest find it cached. Each look is relative to the
/// open directory, not a walk of the whole path again: `fstatat` for what
/// is not a regular file, and for a regular file an `openat` (which looks
/// it up as `fstatat` would), `fstat` and FIEMAP, so that it is looked up
/// once, and mapped without a second lookup by its whole path (a third of
/// a cold walk's CPU went to those lookups, on a two-CPU node where the
/// lazy volume's data path needs that CPU).
fn read_dir(dir: &PendingDir, follow_links: bool, stop: &StopSignal) -> Listing {
    let mut entries: Vec<std::fs::DirEntry> =
        std::fs::read_dir(&dir.path)?.collect::<std::io::Result<_>>()?;
    entries.sort_by_cached_key(std::fs::DirEntry::file_name);
    let mut handle = DirHandle {
        path: &dir.path,
        opened: None,
    };
    let mut children = Vec::with_capacity(entries.len());
    for e in entries {
        let kind = match stop.check() {
            Some(_) => ChildKind::Error(std::io::Error::from(std::io::ErrorKind::Interrupted)),
            None => look(&e, follow_links, &mut handle),
        };
        children.push(Child {
            path: e.path(),
            kind,
        });
    }
    Ok(children)
}

/// The directory being read, opened at its first regular file (a directory
/// of subdirectories alone is never opened twice).
struct DirHandle<'p> {
    path: &'p Path,
    /// `Some(None)`: it could not be opened (it went, or lost its
    /// permissions since it was listed); its files are then looked at, and
    /// later mapped, by path.
    opened: Option<Option<File>>,
}

impl DirHandle<'_> {
    fn get(&mut self) -> Option<&File> {
        let path = self.path;
        self.opened
            .get_or_insert_with(|| {
                std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_DIRECTORY)
                    .open(path)
                    .ok()
            })
            .as_ref()
    }
}

/// What the child `e` of `dir` is.
fn look(e: &std::fs::DirEntry, follow_links: bool, dir: &mut DirHandle<'_>) -> ChildKind {
    // The directory entry's type when it has one, else `lstat` says.
    let (is_link, is_file) = match e.file_type() {
        Ok(t) => (t.is_symlink(), t.is_file()),
        Err(_) => match e.metadata() {
            Ok(m) if m.file_type().is_symlink() => (true, false),
            meta => return kind_of(meta),
        },
    };
    if is_file {
        if let Some(kind) = dir.get().and_then(|d| open_and_map(d, e)) {
            return kind;
        }
    }
    match (is_link, follow_links) {
        (true, false) => ChildKind::Symlink,
        (true, true) => kind_of(std::fs::metadata(e.path())),
        // `DirEntry::metadata` does not follow a symlink (an `lstat`
        // relative to the directory).
        (false, _) => kind_of(e.metadata()),
    }
}

/// The regular file `e`, opened in `dir` and mapped; `None` when it cannot
/// be opened so (it went, it is a symlink now, or opening is refused): the
/// caller looks at it the usual way. Whatever it is by the time it is open
/// is what counts: a file is mapped only if `fstat` says regular.
fn open_and_map(dir: &File, e: &std::fs::DirEntry) -> Option<ChildKind> {
    let file = open_file_in(dir, &e.file_name()).ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() {
        return Some(kind_of(Ok(meta)));
    }
    let map = map_file(&file, meta.len(), None);
    Some(ChildKind::File {
        meta,
        map: Some(map),
    })
}

fn kind_of(meta: std::io::Result<std::fs::Metadata>) -> ChildKind {
    match meta {
        Ok(m) if m.is_file() => ChildKind::File { meta: m, map: None },
        Ok(m) if m.is_dir() => ChildKind::Dir(m),
        Ok(m) if m.file_type().is_symlink() => ChildKind::Symlink,
        Ok(m) => ChildKind::Other(m.file_type()),
        Err(e) => ChildKind::Error(e),
    }
}
