//! Directory walks, breadth first, a level's directories read in parallel.
//!
//! On a cold volume every directory block and inode table block a walk
//! needs is a fetch, and a depth-first walk (`walkdir`) makes them one after
//! another: reading an unpacked container image of a thousand directories
//! that way costs a thousand round trips before the first byte of data is
//! known. Here the walk keeps a queue of directories still to read; the
//! collector takes a group of them at a time and lists them, then looks at
//! all their children, on the metadata pool ([`crate::map::pool`]), so as many
//! metadata fetches are in flight as the pool has threads, beside the data
//! reads of what was found already. A regular file on ext4 is mapped from
//! its inode, by the number its directory entry gives, without opening it
//! ([`crate::map::inode_tables`]); any other, or one that is refused there,
//! is opened in its directory and mapped then
//! ([`crate::map::extent::map_file`]): its one lookup serves both.
//!
//! This module only reads: what a child is (file and its extents,
//! directory, other, or why it could not be looked at). The collector
//! ([`super::Collector`]) decides what to do with it: dedupe files, queue directories (staying on the
//! walk's filesystem and never descending into an ancestor, so a symlink
//! loop ends), resolve symlinks inside an image root, and warn.

use std::fs::File;
use std::os::unix::fs::{DirEntryExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use super::{FileStat, SourceEntry};
use crate::engine::StopSignal;
use crate::map::extent::{map_file, open_file_in};
use crate::map::inode_tables::InodeTables;
use crate::map::pool::MetadataPool;
use crate::map::ExtentMap;

/// A directory queued for reading.
#[derive(Clone)]
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
    /// The inode tables of the directory's filesystem, when its files can
    /// be mapped from them (ext4).
    pub inodes: Option<Arc<InodeTables>>,
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
    /// its directory is mapped from its inode, or opened there and mapped
    /// while it is open.
    File {
        stat: FileStat,
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

/// Looks at children handed to the pool at once, at most: a slice ends at
/// its slowest look (one fetch), and bounds what is held besides the
/// listings and their results. Looks in one call for the whole group held
/// every child twice over, and a walk of a million files peaked at 141
/// MiB against 78 MiB.
const LOOK_SLICE: usize = 2048;

/// Read `dirs` on `pool`: each one's children sorted by name and looked at
/// (`lstat`, or `stat` through a symlink when `follow_links`; a regular
/// file opened in its directory and mapped); each directory with its
/// listing, in order. After a stop no more directories are read (their
/// listing is empty) and no more children looked at.
///
/// In two rounds as wide as the pool: every directory is listed, then the
/// children of all of them are looked at, [`LOOK_SLICE`] at a time. Each
/// look may wait for a fetch of the inode it names (on XFS, for a read of
/// the inode's cluster even when that is hydrated: XFS caches its metadata
/// apart from the device's cache), so one thread per directory left the
/// others idle at the end of a group while one read its biggest directory
/// (on XFS, 1 to 4 of 32 threads were reading).
pub(super) fn read_dirs(
    pool: &MetadataPool,
    dirs: Vec<PendingDir>,
    follow_links: bool,
    stop: &StopSignal,
) -> Vec<(PendingDir, Listing)> {
    let halt = stop.clone();
    let listed = pool.map(dirs, move |dir| {
        let listed = match halt.check() {
            Some(_) => Ok(Vec::new()),
            None => list(&dir.path),
        };
        (dir, listed)
    });
    let mut out = Vec::with_capacity(listed.len());
    let mut unlooked = Vec::with_capacity(listed.len());
    for (index, (dir, listed)) in listed.into_iter().enumerate() {
        match listed {
            Ok(entries) => {
                let opened = Arc::new(OpenedDir {
                    path: dir.path.clone(),
                    file: OnceLock::new(),
                    inodes: dir.inodes.clone(),
                });
                out.push((dir, Ok(Vec::with_capacity(entries.len()))));
                unlooked.push((index, entries.into_iter(), opened));
            }
            Err(e) => out.push((dir, Err(e))),
        }
    }
    // Each slice takes the next children in listing order, so each
    // directory's children come back by name; a directory's listing is
    // freed once its last child is taken. After a stop the children not
    // looked at yet are left out (the collector drops those a stop cut
    // short anyway), so at most one slice is looked at after it.
    let mut unlooked = unlooked.into_iter().peekable();
    while stop.check().is_none() {
        let mut slice = Vec::with_capacity(LOOK_SLICE);
        while slice.len() < LOOK_SLICE {
            let Some((index, entries, opened)) = unlooked.peek_mut() else {
                break;
            };
            match entries.next() {
                Some(e) => slice.push((*index, e, opened.clone())),
                None => {
                    unlooked.next();
                }
            }
        }
        if slice.is_empty() {
            break;
        }
        let halt = stop.clone();
        let looked = pool.map(slice, move |(index, e, opened)| {
            let kind = match halt.check() {
                Some(_) => ChildKind::Error(std::io::Error::from(std::io::ErrorKind::Interrupted)),
                None => look(&e, follow_links, &opened),
            };
            let child = Child {
                path: e.path(),
                kind,
            };
            (index, child)
        });
        for (index, child) in looked {
            if let Some((_, Ok(children))) = out.get_mut(index) {
                children.push(child);
            }
        }
    }
    out
}

/// A listed directory, as its children are looked at: its path, the
/// directory opened for looking its regular files up by name (once, by the
/// first look that needs it; `None` when it could not be opened: it went,
/// or lost its permissions since it was listed, and its files are then
/// looked at, and later mapped, by path), and its filesystem's inode tables.
struct OpenedDir {
    path: PathBuf,
    file: OnceLock<Option<File>>,
    inodes: Option<Arc<InodeTables>>,
}

impl OpenedDir {
    fn file(&self) -> Option<&File> {
        self.file
            .get_or_init(|| {
                std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_DIRECTORY)
                    .open(&self.path)
                    .ok()
            })
            .as_ref()
    }
}

/// The entries of the directory at `path`, sorted by name. Each look at a
/// child is then relative to the open directory, not a walk of the whole
/// path again: `fstatat` for what is not a regular file, and for a regular
/// file its inode, or an `openat` (which looks it up as `fstatat` would),
/// `fstat` and FIEMAP, so that it is looked up once, and mapped without a
/// second lookup by its whole path (a third of a cold walk's CPU went to
/// those lookups, on a two-CPU node where the lazy volume's data path needs
/// that CPU).
fn list(path: &Path) -> std::io::Result<Vec<std::fs::DirEntry>> {
    let mut entries: Vec<std::fs::DirEntry> =
        std::fs::read_dir(path)?.collect::<std::io::Result<_>>()?;
    entries.sort_by_cached_key(std::fs::DirEntry::file_name);
    Ok(entries)
}

/// What the child `e` of the directory `dir` is.
fn look(e: &std::fs::DirEntry, follow_links: bool, dir: &OpenedDir) -> ChildKind {
    // The directory entry's type when it has one, else `lstat` says.
    let (is_link, is_file) = match e.file_type() {
        Ok(t) => (t.is_symlink(), t.is_file()),
        Err(_) => match e.metadata() {
            Ok(m) if m.file_type().is_symlink() => (true, false),
            meta => return kind_of(meta),
        },
    };
    if is_file {
        if let Some(kind) = dir.inodes.as_deref().and_then(|t| from_inode(t, e)) {
            return kind;
        }
        if let Some(kind) = dir.file().and_then(|d| open_and_map(d, e)) {
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

/// The regular file `e` mapped from its inode in `tables`, when they have
/// it as it is now (see [`crate::map::inode_tables`]).
fn from_inode(tables: &InodeTables, e: &std::fs::DirEntry) -> Option<ChildKind> {
    let found = tables.map(e.ino())?;
    Some(ChildKind::File {
        stat: FileStat {
            dev: tables.dev(),
            ino: e.ino(),
            size: found.size,
            mtime: found.mtime,
        },
        map: Some(found.map),
    })
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
        stat: FileStat::from(&meta),
        map: Some(map),
    })
}

fn kind_of(meta: std::io::Result<std::fs::Metadata>) -> ChildKind {
    match meta {
        Ok(m) if m.is_file() => ChildKind::File {
            stat: FileStat::from(&m),
            map: None,
        },
        Ok(m) if m.is_dir() => ChildKind::Dir(m),
        Ok(m) if m.file_type().is_symlink() => ChildKind::Symlink,
        Ok(m) => ChildKind::Other(m.file_type()),
        Err(e) => ChildKind::Error(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Directories whose children span several look slices (and one with
    /// none) each get every child back, by name, with its kind.
    #[test]
    fn listings_span_look_slices_whole_and_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let sizes = [LOOK_SLICE + 3, 0, 7, LOOK_SLICE - 1];
        let mut dirs = Vec::new();
        for (d, &n) in sizes.iter().enumerate() {
            let path = tmp.path().join(format!("d{d}"));
            std::fs::create_dir(&path).unwrap();
            for f in 0..n {
                std::fs::write(path.join(format!("f{f:05}")), [d as u8; 3]).unwrap();
            }
            std::fs::create_dir(path.join("sub")).unwrap();
            dirs.push(PendingDir {
                ancestry: Arc::new(Ancestor {
                    id: (0, d as u64),
                    path: path.clone(),
                    parent: None,
                }),
                path,
                entry: Arc::new(SourceEntry::argument(tmp.path(), 10)),
                root_dev: 0,
                inodes: None,
            });
        }
        // The last one went after it was queued.
        let last = dirs.pop().unwrap();
        dirs.push(PendingDir {
            path: tmp.path().join("gone"),
            ..last
        });
        let pool = MetadataPool::new(4);
        // Stopped before: every directory is left unread.
        let stop = StopSignal::default();
        stop.cancel();
        for (_, listing) in read_dirs(&pool, dirs.clone(), false, &stop) {
            assert!(listing.unwrap().is_empty());
        }
        let read = read_dirs(&pool, dirs, false, &StopSignal::default());
        assert_eq!(read.len(), sizes.len());
        for ((dir, listing), &n) in read.iter().zip(&sizes) {
            if dir.path.ends_with("gone") {
                assert!(listing.is_err());
                continue;
            }
            let children = listing.as_ref().unwrap();
            let mut want: Vec<String> = (0..n).map(|f| format!("f{f:05}")).collect();
            want.push("sub".into());
            let names: Vec<String> = children
                .iter()
                .map(|c| c.path.file_name().unwrap().to_string_lossy().into_owned())
                .collect();
            assert_eq!(names, want, "{}", dir.path.display());
            for c in children {
                assert!(c.path.starts_with(&dir.path));
                match &c.kind {
                    ChildKind::File { stat, map } => {
                        assert_eq!(stat.size, 3);
                        assert!(map.is_some(), "{}", c.path.display());
                    }
                    ChildKind::Dir(_) => assert!(c.path.ends_with("sub")),
                    _ => panic!("{}: unexpected kind", c.path.display()),
                }
            }
        }
    }
}
