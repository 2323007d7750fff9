//! Sources: turning path lists, arguments, globs and directories into the set
//! of regular files to hydrate, each once, with its priority.
//!
//! The list format is [`list`]'s.
//!
//! Paths must be absolute. Symlinks are followed to their target once (a loop
//! is reported); a file reached twice (duplicate line, hard link, symlink to a
//! listed file, overlapping directories) is kept once, at the most urgent
//! priority it was given. Directory walks do not cross mount points unless
//! asked to. Every bad entry becomes a [`Warning`] naming the path and the
//! list line, and collection carries on with the rest.
//!
//! An entry may name only some byte ranges of its files (a recording's
//! lines do); a file named twice is then read for the union of what its
//! names ask, whole if any of them names it whole.
//!
//! With [`CollectOptions::with_libs`], each file's shared-library closure
//! ([`elf`], [`ld_cache`]) joins at the file's priority.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::ErrorKind;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::engine::StopSignal;
use crate::error::{Origin, Warning, WarningKind};
use crate::map::inode_tables::InodeTables;
use crate::map::pool::MetadataPool;
use crate::map::{ByteRange, ExtentMap};
use crate::plan::spans::{self, Span};
use crate::report::{WarningCap, WarningsOmitted};
use handed_out::{HandedOut, InodeKey, Planned};

pub mod containerd;
mod elf;
mod handed_out;
mod ld_cache;
pub mod list;
mod walk;
pub use list::{
    format_line, parse_list, read_list, read_list_packed, ListEntries, ParsedList, DEFAULT_PRIORITY,
};

/// One entry of the input: a path (maybe a glob), its priority and origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceEntry {
    /// A path, a glob pattern or a directory.
    pub path: PathBuf,
    /// Its priority class (lower is read first).
    pub priority: u32,
    /// Where it was named.
    pub origin: Origin,
    /// Only these byte ranges of each file (sorted, disjoint); `None`: whole
    /// files.
    pub ranges: Option<Vec<ByteRange>>,
}

impl SourceEntry {
    /// An entry named on the command line.
    pub fn argument(path: impl Into<PathBuf>, priority: u32) -> Self {
        SourceEntry {
            path: path.into(),
            priority,
            origin: Origin::Argument,
            ranges: None,
        }
    }
}

/// A regular file selected for hydration.
#[derive(Debug, Clone)]
pub struct TargetFile {
    /// The path the file was reached by (symlinks resolved).
    pub path: PathBuf,
    pub priority: u32,
    pub origin: Origin,
    /// `st_dev` of the filesystem holding the file.
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    /// Modification time (seconds, nanoseconds), for staleness checks.
    pub mtime: (i64, i64),
    /// Only these byte ranges (sorted, disjoint; they may run past the
    /// end); `None`: the whole file.
    pub ranges: Option<Vec<ByteRange>>,
    /// Where the whole file lies, when whoever found it mapped it then (a
    /// walk maps each regular file it opens in its directory). The planner
    /// uses it for a file collected whole (`ranges` is `None`); otherwise,
    /// and when it is `None`, it opens the file by its path and maps it.
    pub mapped: Option<ExtentMap>,
}

impl TargetFile {
    /// The file at `path` as `meta` (its `stat`) describes it.
    pub fn from_metadata(
        path: PathBuf,
        meta: &std::fs::Metadata,
        priority: u32,
        origin: Origin,
    ) -> Self {
        TargetFile::new(path, &FileStat::from(meta), priority, origin)
    }

    fn new(path: PathBuf, stat: &FileStat, priority: u32, origin: Origin) -> Self {
        TargetFile {
            path,
            priority,
            origin,
            dev: stat.dev,
            ino: stat.ino,
            size: stat.size,
            mtime: stat.mtime,
            ranges: None,
            mapped: None,
        }
    }
}

/// What collecting a regular file needs to know of it: its identity, size
/// and modification time, from `stat` or, for a file a walk mapped from its
/// inode, from the inode itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileStat {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime: (i64, i64),
}

impl From<&std::fs::Metadata> for FileStat {
    fn from(meta: &std::fs::Metadata) -> Self {
        FileStat {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
        }
    }
}

/// `ranges` as spans, cut at `size`; `None` (whole) is `[0, size)`.
fn spans_of(ranges: Option<&[ByteRange]>, size: u64) -> Vec<Span> {
    match ranges {
        None => spans::merge([(0, size)], 0),
        Some(ranges) => spans::merge(ranges.iter().map(|r| (r.offset, r.end().min(size))), 0),
    }
}

fn ranges_of(spans: &[Span]) -> Vec<ByteRange> {
    spans
        .iter()
        .map(|&(s, e)| ByteRange {
            offset: s,
            len: e - s,
        })
        .collect()
}

/// The union of the byte ranges `a` and `b` of a file, cut at `size`:
/// sorted and merged.
pub(crate) fn union_within(a: &[ByteRange], b: &[ByteRange], size: u64) -> Vec<ByteRange> {
    ranges_of(&spans::union(
        &spans_of(Some(a), size),
        &spans_of(Some(b), size),
    ))
}

/// A whole block device to read (a full-volume sweep, like `fio
/// --rw=read`, through the same engine and merged with any file plan on
/// the same device).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSweep {
    /// The device node.
    pub node: PathBuf,
    /// Its priority class.
    pub priority: u32,
}

/// Everything a run is asked to read: entries from lists and arguments,
/// what was already wrong with the input (bad list lines, unreadable
/// lists), and whole devices to sweep.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// Paths, globs and directories, with priorities and origins (named
    /// on the command line; those of list files are in `lists`).
    pub entries: Vec<SourceEntry>,
    /// The entries of list files, packed (a million lines must not cost
    /// a million `SourceEntry`s). They come before `entries`: a file named
    /// in both is first met in the list.
    pub lists: Vec<ListEntries>,
    /// Problems met reading the input so far.
    pub warnings: Vec<Warning>,
    /// Bad list lines counted but not kept in `warnings`.
    pub warnings_omitted: Vec<WarningsOmitted>,
    /// Whole devices to read.
    pub devices: Vec<DeviceSweep>,
    /// Container images to read (`--image`, `image:` list lines), resolved
    /// when collection starts.
    pub images: Vec<containerd::ImageSource>,
    /// The containerd store the images are read from.
    pub containerd: containerd::ContainerdStore,
}

impl Sources {
    /// Add the entries of the list file `path` (`-`: standard input). A list
    /// that cannot be read is a warning naming it; the rest still runs.
    pub fn add_list(&mut self, path: &Path) {
        match list::read_list_packed(path) {
            Ok(parsed) => {
                self.lists.push(parsed.entries);
                self.images.extend(parsed.images);
                self.warnings.extend(parsed.warnings);
                for o in parsed.warnings_omitted {
                    match self.warnings_omitted.iter_mut().find(|w| w.kind == o.kind) {
                        Some(w) => w.count += o.count,
                        None => self.warnings_omitted.push(o),
                    }
                }
            }
            Err(crate::Error::ListRead { path, source }) => self.warnings.push(Warning::new(
                WarningKind::Unreadable,
                Some(&path),
                None,
                format!("list file: {source}"),
            )),
            Err(e) => self.warnings.push(Warning::new(
                WarningKind::Unreadable,
                Some(path),
                None,
                e.to_string(),
            )),
        }
    }

    /// Add a path named on the command line.
    pub fn add_path(&mut self, path: impl Into<PathBuf>, priority: u32) {
        self.entries.push(SourceEntry::argument(path, priority));
    }

    /// Add a container image of the containerd store (see
    /// [`containerd`]), or every image with [`containerd::ImageRequest::All`].
    pub fn add_image(&mut self, request: containerd::ImageRequest, priority: u32) {
        self.images.push(containerd::ImageSource {
            request,
            priority,
            origin: Origin::Argument,
        });
    }

    /// Add a whole block device to read.
    pub fn add_device(&mut self, node: impl Into<PathBuf>, priority: u32) {
        self.devices.push(DeviceSweep {
            node: node.into(),
            priority,
        });
    }

    /// Whether nothing at all was named (warnings aside).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
            && self.lists.iter().all(ListEntries::is_empty)
            && self.devices.is_empty()
            && self.images.is_empty()
    }

    /// Every entry's place, grouped by priority class (most urgent
    /// first), in the order named: 8 bytes an entry, not a copy of it.
    pub fn classes(&self) -> std::collections::BTreeMap<u32, Vec<EntryIndex>> {
        self.classes_with(&[])
    }

    /// [`Sources::classes`], with `extra` entries (images resolved into
    /// directories and files) after the arguments; [`Sources::entry_with`]
    /// finds them.
    pub fn classes_with(
        &self,
        extra: &[SourceEntry],
    ) -> std::collections::BTreeMap<u32, Vec<EntryIndex>> {
        let mut classes: std::collections::BTreeMap<u32, Vec<EntryIndex>> = Default::default();
        for (part, list) in self.lists.iter().enumerate() {
            for idx in 0..list.len() {
                if let Some(priority) = list.priority(idx) {
                    classes.entry(priority).or_default().push(EntryIndex {
                        part: part as u32,
                        idx: idx as u32,
                    });
                }
            }
        }
        let args = self.lists.len() as u32;
        for (idx, e) in self.entries.iter().enumerate() {
            classes.entry(e.priority).or_default().push(EntryIndex {
                part: args,
                idx: idx as u32,
            });
        }
        for (idx, e) in extra.iter().enumerate() {
            classes.entry(e.priority).or_default().push(EntryIndex {
                part: args + 1,
                idx: idx as u32,
            });
        }
        classes
    }

    /// The entry at `at` (from [`Sources::classes`]).
    pub fn entry(&self, at: EntryIndex) -> Option<SourceEntry> {
        self.entry_with(at, &[])
    }

    /// The paths of the first `limit` entries of `classes` (from
    /// [`Sources::classes_with`] and `extra`), most urgent class first,
    /// globs left out: what a look ahead (the metadata read-ahead's scout)
    /// may `lstat` before the collector comes to them.
    pub fn first_paths(
        &self,
        classes: &std::collections::BTreeMap<u32, Vec<EntryIndex>>,
        extra: &[SourceEntry],
        limit: usize,
    ) -> Vec<PathBuf> {
        let mut paths = Vec::new();
        for &at in classes.values().flatten() {
            if paths.len() >= limit {
                break;
            }
            if let Some(e) = self.entry_with(at, extra).filter(|e| !is_glob(&e.path)) {
                paths.push(e.path);
            }
        }
        paths
    }

    /// The entry at `at` (from [`Sources::classes_with`] and `extra`).
    pub fn entry_with(&self, at: EntryIndex, extra: &[SourceEntry]) -> Option<SourceEntry> {
        let args = self.lists.len();
        match self.lists.get(at.part as usize) {
            Some(list) => list.entry(at.idx as usize),
            None if at.part as usize == args => self.entries.get(at.idx as usize).cloned(),
            None => extra.get(at.idx as usize).cloned(),
        }
    }
}

/// Where an entry of [`Sources`] is: a list (by position) or the
/// arguments, and its index there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryIndex {
    part: u32,
    idx: u32,
}

/// Options for turning entries into files.
#[derive(Debug, Clone, Default)]
pub struct CollectOptions {
    /// Let directory walks descend into other filesystems.
    pub cross_mounts: bool,
    /// The paths are those of an image's root filesystem mounted here
    /// (`prewarm plan --root`): entries name the image's paths, and
    /// symlinks resolve inside it, as they will on the booted node, so an absolute link like `/usr/lib64/libfoo.so ->
    /// /usr/lib64/libfoo.so.1` names the image's file, not the host's.
    pub root: Option<PathBuf>,
    /// Also collect each file's shared-library closure (`--with-libs`):
    /// its ELF interpreter and libraries, as the dynamic loader finds them
    /// (inside `root` when there is one), or a script's interpreter; at the
    /// file's priority (see `source/elf.rs`).
    pub with_libs: bool,
    /// Map every walked file by FIEMAP through the open file, never from
    /// its inode in ext4's inode tables (`map/inode_tables.rs`).
    pub fiemap_only: bool,
}

/// The files to hydrate, plus everything that was wrong with the input.
#[derive(Debug, Default)]
pub struct FileSet {
    pub files: Vec<TargetFile>,
    pub warnings: Vec<Warning>,
    /// Non-regular files met inside walked directories (skipped quietly:
    /// sockets and device nodes under a directory are not worth a warning).
    pub skipped_non_regular: u64,
}

/// `pattern` (under `root`) with its literal leading directories resolved
/// inside `root`.
fn glob_in_root(pattern: &Path, root: &Path) -> PathBuf {
    let mut literal = PathBuf::new();
    let mut rest = PathBuf::new();
    for c in pattern.components() {
        if rest.as_os_str().is_empty() && !is_glob(Path::new(c.as_os_str())) {
            literal.push(c);
        } else {
            rest.push(c);
        }
    }
    match resolve_in_root(&literal, root) {
        Ok(dir) => dir.join(rest),
        Err(_) => pattern.to_path_buf(),
    }
}

fn is_glob(path: &Path) -> bool {
    path.as_os_str()
        .as_bytes()
        .iter()
        .any(|b| matches!(b, b'*' | b'?' | b'['))
}

/// Resolve entries to the set of regular files they name.
#[cfg(test)]
fn collect(entries: &[SourceEntry], opts: &CollectOptions) -> FileSet {
    let pool = MetadataPool::new(4);
    let mut c = Collector::new(opts, StopSignal::default(), &pool);
    let files = c.add(entries);
    FileSet {
        files,
        warnings: c.take_warnings(),
        skipped_non_regular: c.skipped_non_regular(),
    }
}

/// Collects files from entries in batches (the pipeline collects one
/// priority class at a time, most urgent first, and hands a class out in
/// pieces), remembering every file it has met, so that a file named again
/// in a later batch is still a duplicate of the first. The files of the
/// current batch are kept whole; those handed out are remembered only by
/// inode ([`handed_out`]), so that a million files do not stay in memory.
pub struct Collector<'a> {
    opts: &'a CollectOptions,
    /// The current batch: its files, and the warnings not yet taken.
    set: FileSet,
    /// (dev, ino) → index in `set.files`, for the current batch.
    by_inode: HashMap<InodeKey, usize>,
    /// The files of earlier batches.
    handed_out: HandedOut,
    stop: StopSignal,
    not_reached: u64,
    /// Keeps the first warnings of each kind; the rest are only counted.
    warning_cap: WarningCap,
    /// Finds shared-library closures (`opts.with_libs`).
    libs: Option<Arc<elf::LibraryResolver>>,
    /// Directories queued by walks, read a group at a time
    /// ([`Collector::walk_some`]).
    pending: VecDeque<walk::PendingDir>,
    /// Directories queued once already, by `(dev, ino)`: each is read once
    /// however many walks reach it.
    walked: HashSet<(u64, u64)>,
    /// Runs the `lstat`s, directory reads and library lookups, many at
    /// once.
    pool: &'a MetadataPool,
    /// Told of each filesystem a walk starts on, to read its metadata ahead.
    readahead: Option<crate::map::readahead::MetadataReadahead>,
    /// The inode tables of each filesystem walked, by `st_dev`, opened
    /// once (`None`: its files are mapped through the open file).
    inode_tables: HashMap<u64, Option<Arc<InodeTables>>>,
}

impl<'a> Collector<'a> {
    /// A collector that looks at files on `pool` and stops taking entries
    /// (and walking) once `stop` says so.
    pub fn new(opts: &'a CollectOptions, stop: StopSignal, pool: &'a MetadataPool) -> Self {
        Collector {
            opts,
            set: FileSet::default(),
            by_inode: HashMap::new(),
            handed_out: HandedOut::default(),
            stop,
            not_reached: 0,
            warning_cap: WarningCap::default(),
            libs: opts
                .with_libs
                .then(|| Arc::new(elf::LibraryResolver::new(opts.root.clone()))),
            pending: VecDeque::new(),
            walked: HashSet::new(),
            pool,
            readahead: None,
            inode_tables: HashMap::new(),
        }
    }

    /// The inode tables of the filesystem `dev`, for a walk's directory on
    /// it: opened at its first directory; `None` when its files are mapped
    /// through the open file instead (not ext4, or `opts.fiemap_only`).
    fn inode_tables(&mut self, dev: u64) -> Option<Arc<InodeTables>> {
        if self.opts.fiemap_only {
            return None;
        }
        self.inode_tables
            .entry(dev)
            .or_insert_with(|| match InodeTables::open(dev) {
                Ok(t) => Some(Arc::new(t)),
                Err(reason) => {
                    tracing::debug!(dev, %reason, "walked files are mapped through the open file");
                    None
                }
            })
            .clone()
    }

    /// Start `readahead` on the filesystem of each walk, as it is queued.
    pub fn set_readahead(&mut self, readahead: Option<crate::map::readahead::MetadataReadahead>) {
        self.readahead = readahead;
    }

    /// Entries given to [`Collector::add`] but never looked at: a stop came
    /// first.
    pub fn not_reached(&self) -> u64 {
        self.not_reached
    }

    /// Add the files `entries` name, walking their directories to the end;
    /// returns those not met before ([`Collector::push_entries`], then
    /// [`Collector::walk_some`] until nothing is queued, then
    /// [`Collector::take_new`]).
    #[cfg(test)]
    pub fn add(&mut self, entries: &[SourceEntry]) -> Vec<TargetFile> {
        self.push_entries(entries);
        while self.walk_some(usize::MAX) {}
        self.take_new()
    }

    /// The files collected since the last call, with their shared-library
    /// closures (`opts.with_libs`): handed out, so a file named again later
    /// with more byte ranges adds only what it did not cover yet.
    pub fn take_new(&mut self) -> Vec<TargetFile> {
        self.add_libraries();
        let files = std::mem::take(&mut self.set.files);
        for f in &files {
            let key = (f.dev, f.ino);
            // A file adding ranges to one handed out earlier is already
            // remembered, for the union of both.
            if self.handed_out.get(key).is_none() {
                let library = matches!(f.origin, Origin::LibraryOf { .. });
                self.handed_out.insert(key, f.ranges.as_deref(), library);
            }
        }
        self.by_inode.clear();
        files
    }

    /// Walk queued directories, a group at a time, until at least `want`
    /// files were collected since the last [`Collector::take_new`] or none
    /// is queued; returns whether some still are. A group is as many
    /// directories as the pool has threads, read at once
    /// (`walk.rs`). A stop drops what is queued.
    pub fn walk_some(&mut self, want: usize) -> bool {
        let follow_links = self.opts.root.is_none();
        while self.set.files.len() < want && !self.pending.is_empty() {
            if self.stop.check().is_some() {
                self.pending.clear();
                break;
            }
            let n = self.pool.width().min(self.pending.len());
            let group: Vec<walk::PendingDir> = self.pending.drain(..n).collect();
            for (dir, listing) in walk::read_dirs(self.pool, group, follow_links, &self.stop) {
                self.take_listing(&dir, listing);
            }
        }
        !self.pending.is_empty()
    }

    /// Take in the files named by `entries`; their directories are queued
    /// for [`Collector::walk_some`]. Under an image root (`opts.root`) the
    /// entries' absolute paths are the image's, and are looked up under the
    /// root: every component, `..` and symlink (directory symlinks included)
    /// resolves inside it, so nothing of the build host is ever planned.
    pub fn push_entries(&mut self, entries: &[SourceEntry]) {
        let rebased: Vec<SourceEntry>;
        let entries = match &self.opts.root {
            Some(root) => {
                rebased = entries
                    .iter()
                    .map(|e| SourceEntry {
                        path: root.join(e.path.strip_prefix("/").unwrap_or(&e.path)),
                        ..e.clone()
                    })
                    .collect();
                &rebased[..]
            }
            None => entries,
        };
        // lstat every named path in parallel first: on a cold volume each
        // waits for a metadata fetch (directory and inode table blocks), and
        // the pool keeps many of them in flight.
        // The serial pass below, which dedupes in list order, uses the
        // results.
        // Under an image root the host's lstat could pass through a
        // directory symlink out of the image: every path is resolved inside
        // the root instead (`resolve`).
        let in_root = self.opts.root.is_some();
        let stop = self.stop.clone();
        let paths: Vec<PathBuf> = entries.iter().map(|e| e.path.clone()).collect();
        let lstats: Vec<Option<std::fs::Metadata>> = self.pool.map(paths, move |path| {
            if is_glob(&path) || in_root || stop.check().is_some() {
                None
            } else {
                std::fs::symlink_metadata(&path).ok()
            }
        });
        for (i, (entry, lstat)) in entries.iter().zip(lstats).enumerate() {
            if self.stop.check().is_some() {
                self.not_reached += (entries.len() - i) as u64;
                break;
            }
            if is_glob(&entry.path) {
                self.expand_glob(entry);
            } else {
                self.add_path(&entry.path, lstat, entry);
            }
        }
    }

    /// With `opts.with_libs`: add the shared-library closure of every file
    /// of the current batch, at that file's priority. The closures are found
    /// in parallel (each reads a few headers, on a cold volume a fetch
    /// each), then added in order.
    fn add_libraries(&mut self) {
        let Some(resolver) = &self.libs else {
            return;
        };
        let named: Vec<SourceEntry> = self
            .set
            .files
            .iter()
            .map(|f| SourceEntry {
                path: f.path.clone(),
                priority: f.priority,
                origin: f.origin.clone(),
                ranges: None,
            })
            .collect();
        let stop = self.stop.clone();
        let resolver = Arc::clone(resolver);
        let paths: Vec<PathBuf> = named.iter().map(|e| e.path.clone()).collect();
        let closures: Vec<elf::Closure> = self.pool.map(paths, move |path| match stop.check() {
            Some(_) => elf::Closure::default(),
            None => resolver.closure(&path),
        });
        for (named, closure) in named.into_iter().zip(closures) {
            for p in closure.problems {
                self.warn(WarningKind::Library, &p.path, &named, p.message);
            }
            // A library is needed whole, whatever ranges its user was
            // named with (the loader maps all of it).
            let library = SourceEntry {
                origin: Origin::LibraryOf {
                    path: named.path.clone(),
                },
                ranges: None,
                ..named
            };
            for needed in closure.files {
                let key = (needed.meta.dev(), needed.meta.ino());
                match self.by_inode.get(&key) {
                    // Met before (named, or another file's library): kept
                    // once, at the most urgent priority, without a warning.
                    Some(&idx) if self.set.files[idx].ranges.is_some() => {
                        self.widen_in_batch(idx, &library);
                    }
                    Some(&idx) => {
                        let f = &mut self.set.files[idx];
                        f.priority = f.priority.min(library.priority);
                    }
                    None => match self.handed_out.get(key) {
                        Some(Planned::Ranges(_)) => {
                            self.add_missing_ranges(
                                key,
                                needed.path,
                                &FileStat::from(&needed.meta),
                                &library,
                            );
                        }
                        Some(Planned::Whole { .. }) => {}
                        None => {
                            self.add_file(
                                needed.path,
                                &FileStat::from(&needed.meta),
                                &library,
                                None,
                            );
                        }
                    },
                }
            }
        }
    }

    /// Warnings so far, taken out.
    pub fn take_warnings(&mut self) -> Vec<Warning> {
        std::mem::take(&mut self.set.warnings)
    }

    /// Warnings counted but not kept (beyond the first of their kind).
    pub fn warnings_omitted(&self) -> Vec<WarningsOmitted> {
        self.warning_cap.omitted()
    }

    /// Non-regular files met inside walked directories so far.
    pub fn skipped_non_regular(&self) -> u64 {
        self.set.skipped_non_regular
    }

    fn warn(
        &mut self,
        kind: WarningKind,
        path: &Path,
        entry: &SourceEntry,
        msg: impl Into<String>,
    ) {
        // A million missing files must not hold a million warnings.
        if !self.warning_cap.admit(kind) {
            return;
        }
        self.set
            .warnings
            .push(Warning::new(kind, Some(path), Some(&entry.origin), msg));
    }

    fn expand_glob(&mut self, entry: &SourceEntry) {
        let pattern = match &self.opts.root {
            // The literal directories before the first wildcard resolve
            // inside the image, so the walk starts where the image's links
            // lead, not the host's.
            Some(root) => glob_in_root(&entry.path, root),
            None => entry.path.clone(),
        };
        let pattern = pattern.to_string_lossy().into_owned();
        let paths = match glob::glob(&pattern) {
            Ok(paths) => paths,
            Err(e) => {
                self.warn(
                    WarningKind::BadLine,
                    &entry.path,
                    entry,
                    format!("bad glob pattern: {e}"),
                );
                return;
            }
        };
        let mut matched = false;
        for p in paths {
            matched = true;
            match p {
                Ok(p) => {
                    // Under an image root every match is resolved inside
                    // it (a wildcard may have matched a host-side link).
                    let lstat = match self.opts.root {
                        Some(_) => None,
                        None => std::fs::symlink_metadata(&p).ok(),
                    };
                    self.add_path(&p, lstat, entry);
                }
                Err(e) => {
                    let path = e.path().to_path_buf();
                    self.warn(WarningKind::Unreadable, &path, entry, e.error().to_string());
                }
            }
        }
        if !matched {
            self.warn(
                WarningKind::NoMatch,
                &entry.path,
                entry,
                "glob matched nothing",
            );
        }
    }

    /// Add one named path (`lstat`: its `symlink_metadata`, if that
    /// succeeded): follow symlinks, walk directories.
    fn add_path(&mut self, path: &Path, lstat: Option<std::fs::Metadata>, entry: &SourceEntry) {
        // A regular file that is not a symlink is used by the name given:
        // canonicalising costs a readlink per path component, which was 60%
        // of planning 1,100 listed files with their metadata cached. Symlinked
        // directories on the way resolve when the file is opened, and the
        // inode key still finds every other name of the same file.
        if let Some(meta) = lstat.filter(std::fs::Metadata::is_file) {
            self.add_file(
                path.to_path_buf(),
                &FileStat::from(&meta),
                entry,
                Some(path),
            );
            return;
        }
        let resolved = match self.resolve(path) {
            Ok(p) => p,
            Err(e) => {
                let (kind, msg) = match (e.kind(), e.raw_os_error()) {
                    (_, Some(libc::ELOOP)) => (WarningKind::SymlinkLoop, "symlink loop".into()),
                    (ErrorKind::NotFound, _) if path.symlink_metadata().is_ok() => (
                        WarningKind::Missing,
                        "symlink points to a missing file".into(),
                    ),
                    (ErrorKind::NotFound, _) => (WarningKind::Missing, "no such file".into()),
                    _ => (WarningKind::Unreadable, e.to_string()),
                };
                self.warn(kind, path, entry, msg);
                return;
            }
        };
        let meta = match std::fs::metadata(&resolved) {
            Ok(m) => m,
            Err(e) => {
                self.warn(WarningKind::Unreadable, path, entry, e.to_string());
                return;
            }
        };
        if meta.is_dir() {
            self.walk(&resolved, entry);
        } else if meta.is_file() {
            self.add_file(resolved, &FileStat::from(&meta), entry, Some(path));
        } else {
            let what = describe_type(&meta.file_type());
            self.warn(
                WarningKind::NotRegular,
                path,
                entry,
                format!("not a regular file ({what}): skipped"),
            );
        }
    }

    /// `path` with every symlink resolved: by the host's rules, or inside
    /// `opts.root` when planning an image.
    fn resolve(&self, path: &Path) -> std::io::Result<PathBuf> {
        match &self.opts.root {
            Some(root) if path.starts_with(root) => resolve_in_root(path, root),
            _ => std::fs::canonicalize(path),
        }
    }

    /// Queue the walk of directory `dir` (resolved) for `entry`.
    fn walk(&mut self, dir: &Path, entry: &SourceEntry) {
        let meta = match std::fs::metadata(dir) {
            Ok(m) => m,
            Err(e) => {
                self.warn(WarningKind::WalkError, dir, entry, e.to_string());
                return;
            }
        };
        let id = (meta.dev(), meta.ino());
        if !self.walked.insert(id) {
            return;
        }
        if let Some(readahead) = &self.readahead {
            readahead.walk_on(meta.dev(), meta.ino());
        }
        let inodes = self.inode_tables(meta.dev());
        self.pending.push_back(walk::PendingDir {
            path: dir.to_path_buf(),
            entry: Arc::new(entry.clone()),
            root_dev: meta.dev(),
            inodes,
            ancestry: Arc::new(walk::Ancestor {
                id,
                path: dir.to_path_buf(),
                parent: None,
            }),
        });
    }

    /// What one directory of a walk holds: files are collected, directories
    /// queued (on the walk's filesystem unless `cross_mounts`, never an
    /// ancestor: a symlink loop), the rest counted or named in a warning.
    fn take_listing(&mut self, dir: &walk::PendingDir, listing: walk::Listing) {
        let entry = &*dir.entry;
        let children = match listing {
            Ok(children) => children,
            Err(e) => {
                self.walk_warning(&dir.path, entry, &e);
                return;
            }
        };
        for child in children {
            match child.kind {
                walk::ChildKind::File { stat, map } => {
                    // The walk's map is of the whole file; the planner
                    // uses it only for a file collected whole.
                    if let Some(file) = self.add_file(child.path, &stat, entry, None) {
                        file.mapped = map;
                    }
                }
                walk::ChildKind::Dir(meta) => {
                    let id = (meta.dev(), meta.ino());
                    if let Some(ancestor) = dir.ancestry.find(id) {
                        let msg = format!(
                            "directory loop back to {}: not followed",
                            ancestor.path.display()
                        );
                        self.warn(WarningKind::DirectoryLoop, &child.path, entry, msg);
                        continue;
                    }
                    if (!self.opts.cross_mounts && meta.dev() != dir.root_dev)
                        || !self.walked.insert(id)
                    {
                        continue;
                    }
                    let inodes = self.inode_tables(meta.dev());
                    self.pending.push_back(walk::PendingDir {
                        inodes,
                        ancestry: Arc::new(walk::Ancestor {
                            id,
                            path: child.path.clone(),
                            parent: Some(dir.ancestry.clone()),
                        }),
                        path: child.path,
                        entry: dir.entry.clone(),
                        root_dev: dir.root_dev,
                    });
                }
                // Only inside an image root, where links are not followed
                // by the walk but resolved by the image's rules.
                walk::ChildKind::Symlink => match self
                    .resolve(&child.path)
                    .and_then(|p| Ok((std::fs::metadata(&p)?, p)))
                {
                    Ok((meta, target)) if meta.is_file() => {
                        self.add_file(target, &FileStat::from(&meta), entry, None);
                    }
                    Ok(_) => tracing::debug!(
                        path = %child.path.display(),
                        "symlink to a directory or special file inside the image: not followed"
                    ),
                    Err(e) => self.warn(
                        WarningKind::Missing,
                        &child.path,
                        entry,
                        format!("symlink inside the image root does not resolve: {e}"),
                    ),
                },
                walk::ChildKind::Other(ft) => {
                    tracing::debug!(path = %child.path.display(), "skipping a {}: not a regular file", describe_type(&ft));
                    self.set.skipped_non_regular += 1;
                }
                // A stop came while the directory was read.
                walk::ChildKind::Error(e) if e.kind() == ErrorKind::Interrupted => {}
                walk::ChildKind::Error(e) => self.walk_warning(&child.path, entry, &e),
            }
        }
    }

    /// The warning for what a walk could not read at `at`.
    fn walk_warning(&mut self, at: &Path, entry: &SourceEntry, e: &std::io::Error) {
        if e.raw_os_error() == Some(libc::ELOOP) {
            self.warn(WarningKind::SymlinkLoop, at, entry, "symlink loop");
        } else if e.kind() == ErrorKind::NotFound {
            self.warn(
                WarningKind::Missing,
                at,
                entry,
                "vanished or dangling symlink",
            );
        } else {
            self.warn(WarningKind::WalkError, at, entry, e.to_string());
        }
    }

    /// Add a regular file reached at `path`; `named` is the path as the
    /// entry wrote it when the file was named directly (not found by a walk).
    /// Returns the file when it is new to this batch.
    fn add_file(
        &mut self,
        path: PathBuf,
        stat: &FileStat,
        entry: &SourceEntry,
        named: Option<&Path>,
    ) -> Option<&mut TargetFile> {
        let key = (stat.dev, stat.ino);
        match self.handed_out.get(key) {
            Some(Planned::Ranges(_)) if !self.by_inode.contains_key(&key) => {
                self.add_missing_ranges(key, path, stat, entry);
                return None;
            }
            Some(Planned::Whole { library }) => {
                // Planned whole in an earlier batch (a more urgent class,
                // or an earlier piece of this one), by a name no longer
                // kept: named again, that is worth a warning; met again by
                // a walk (a hard link in the tree), as a library, or for
                // some of its bytes (a recording's line), it is expected.
                if named.is_some() && !library && entry.ranges.is_none() {
                    let shown = named.unwrap_or(&path);
                    let msg = if shown != path {
                        format!(
                            "symlink to {}, a file planned already: counted once",
                            path.display()
                        )
                    } else {
                        "planned already (named before, or the same file by another name): counted once".to_string()
                    };
                    self.warn(WarningKind::Duplicate, shown, entry, msg);
                }
                return None;
            }
            _ => {}
        }
        if let Some(&idx) = self.by_inode.get(&key) {
            if self.set.files[idx].ranges.is_some() || entry.ranges.is_some() {
                self.widen_in_batch(idx, entry);
                return None;
            }
            let first = &mut self.set.files[idx];
            first.priority = first.priority.min(entry.priority);
            // A file reached again through a walk of an overlapping directory
            // is expected; one named again, or another name for it, is worth
            // a warning.
            let shown = named.unwrap_or(&path).to_path_buf();
            let msg = if first.path != path {
                format!(
                    "same file as {} (a hard link, or a path through a symlinked directory): counted once",
                    first.path.display()
                )
            } else if shown != path {
                format!(
                    "symlink to {}, already listed at {}: counted once",
                    path.display(),
                    first.origin
                )
            } else {
                format!("duplicate of the entry at {}: counted once", first.origin)
            };
            // A library of an earlier file named again is expected too.
            let was_library = matches!(first.origin, Origin::LibraryOf { .. });
            if (named.is_some() || first.path != path) && !was_library {
                self.warn(WarningKind::Duplicate, &shown, entry, msg);
            }
            return None;
        }
        self.by_inode.insert(key, self.set.files.len());
        let mut file = TargetFile::new(path, stat, entry.priority, entry.origin.clone());
        file.ranges = entry.ranges.clone();
        self.set.files.push(file);
        self.set.files.last_mut()
    }

    /// File `idx` of the current batch named again by `entry`, one of them
    /// with byte ranges: it is widened in place to the union (whole if
    /// either is), at the more urgent priority.
    fn widen_in_batch(&mut self, idx: usize, entry: &SourceEntry) {
        let first = &mut self.set.files[idx];
        first.ranges = match (&first.ranges, &entry.ranges) {
            (Some(had), Some(asked)) => Some(union_within(had, asked, first.size)),
            _ => None,
        };
        first.priority = first.priority.min(entry.priority);
    }

    /// File `key`, handed out earlier for some byte ranges, reached again at
    /// `path` by `entry`: only the bytes it did not cover yet are added, as
    /// a file of their own at `entry`'s priority, and what is covered grows
    /// to the union.
    fn add_missing_ranges(
        &mut self,
        key: InodeKey,
        path: PathBuf,
        stat: &FileStat,
        entry: &SourceEntry,
    ) {
        let Some(Planned::Ranges(covered)) = self.handed_out.get(key) else {
            return;
        };
        let size = stat.size;
        let had = spans_of(Some(covered), size);
        let asked = spans_of(entry.ranges.as_deref(), size);
        let extra = spans::subtract(&asked, &had);
        if extra.is_empty() {
            return;
        }
        match &entry.ranges {
            Some(_) => *covered = ranges_of(&spans::union(&had, &asked)),
            None => {
                let library = matches!(entry.origin, Origin::LibraryOf { .. });
                self.handed_out.widen(key, library);
            }
        }
        let mut more = TargetFile::new(path, stat, entry.priority, entry.origin.clone());
        more.ranges = Some(ranges_of(&extra));
        self.set.files.push(more);
    }
}

/// Resolve every symlink of `path` (which lies under `root`) as if `root`
/// were `/`: absolute link targets restart at `root`, and `..` never climbs
/// above it. ELOOP after 40 links, as the kernel does.
pub(crate) fn resolve_in_root(path: &Path, root: &Path) -> std::io::Result<PathBuf> {
    use std::path::Component;
    let rel = path.strip_prefix(root).unwrap_or(path);
    let mut todo: std::collections::VecDeque<PathBuf> = rel
        .components()
        .map(|c| PathBuf::from(c.as_os_str()))
        .collect();
    let mut done = root.to_path_buf();
    let mut links = 0;
    while let Some(part) = todo.pop_front() {
        match part.components().next() {
            Some(Component::Normal(name)) => {
                let next = done.join(name);
                if !std::fs::symlink_metadata(&next)?.file_type().is_symlink() {
                    done = next;
                    continue;
                }
                links += 1;
                if links > 40 {
                    return Err(std::io::Error::from_raw_os_error(libc::ELOOP));
                }
                let target = std::fs::read_link(&next)?;
                if target.is_absolute() {
                    done = root.to_path_buf();
                }
                for c in target.components().rev() {
                    todo.push_front(PathBuf::from(c.as_os_str()));
                }
            }
            Some(Component::ParentDir) if done != root => {
                done.pop();
            }
            _ => {} // `/` and `.`
        }
    }
    Ok(done)
}

/// What kind of file `ft` is, in words (`FIFO`, `character device`, ...).
pub(crate) fn describe_type(ft: &std::fs::FileType) -> &'static str {
    if ft.is_block_device() {
        "block device"
    } else if ft.is_char_device() {
        "character device"
    } else if ft.is_fifo() {
        "FIFO"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_dir() {
        "directory"
    } else {
        "special file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_resolve_inside_an_image_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("image");
        std::fs::create_dir_all(root.join("usr/lib64")).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("usr/lib64/libfoo.so.1"), b"image").unwrap();
        // Absolute links, as images have them: they must not reach the host.
        std::os::unix::fs::symlink("/usr/lib64/libfoo.so.1", root.join("usr/lib64/libfoo.so"))
            .unwrap();
        std::os::unix::fs::symlink("/usr/lib64", root.join("lib64")).unwrap();
        std::os::unix::fs::symlink("../../../../../etc/hostname", root.join("etc/up")).unwrap();
        let opts = CollectOptions {
            root: Some(root.clone()),
            ..Default::default()
        };
        let e = |p: &str| SourceEntry::argument(Path::new("/").join(p), 10);
        let set = collect(&[e("usr/lib64/libfoo.so"), e("lib64/libfoo.so.1")], &opts);
        assert_eq!(set.files.len(), 1, "{:?}", set.warnings);
        assert_eq!(set.files[0].path, root.join("usr/lib64/libfoo.so.1"));
        assert_eq!(
            resolve_in_root(&root.join("etc/up"), &root).map_err(|e| e.kind()),
            Err(ErrorKind::NotFound),
            "`..` stops at the root: /etc/hostname of the image, which is missing"
        );
        // A walk of the image resolves the links it meets the same way.
        let set = collect(&[e("lib64")], &opts);
        assert_eq!(set.files.len(), 1, "{:?}", set.warnings);
    }

    #[test]
    fn ranges_of_a_file_named_twice_unite() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, vec![0u8; 100_000]).unwrap();
        std::fs::write(&b, vec![0u8; 100_000]).unwrap();
        let r = |offset, len| ByteRange { offset, len };
        let ranged = |p: &Path, prio, ranges: Vec<ByteRange>| SourceEntry {
            ranges: Some(ranges),
            ..SourceEntry::argument(p, prio)
        };
        let opts = CollectOptions::default();
        let pool = MetadataPool::new(4);
        let mut c = Collector::new(&opts, StopSignal::default(), &pool);
        // One batch: ranges unite in place, and whole wins.
        let first: Vec<_> = c
            .add(&[
                ranged(&a, 10, vec![r(0, 10)]),
                ranged(&a, 20, vec![r(5, 10), r(50, 5)]),
                ranged(&b, 10, vec![r(0, 10)]),
                SourceEntry::argument(&b, 30),
            ])
            .iter()
            .map(|f| (f.priority, f.ranges.clone()))
            .collect();
        assert_eq!(first, [(10, Some(vec![r(0, 15), r(50, 5)])), (10, None)]);
        // A later batch (a less urgent class): only what is new is added.
        let later: Vec<_> = c
            .add(&[SourceEntry::argument(&a, 40), ranged(&b, 50, vec![r(0, 4)])])
            .iter()
            .map(|f| (f.path.clone(), f.priority, f.ranges.clone()))
            .collect();
        assert_eq!(
            later,
            [(a.clone(), 40, Some(vec![r(15, 35), r(55, 100_000 - 55)]))]
        );
        assert!(c.take_warnings().is_empty());
    }

    #[test]
    fn collects_dedupes_and_warns() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("a"), b"aaaa").unwrap();
        std::fs::hard_link(d.join("a"), d.join("a-link")).unwrap();
        std::os::unix::fs::symlink(d.join("a"), d.join("a-sym")).unwrap();
        std::os::unix::fs::symlink(d.join("loop1"), d.join("loop2")).unwrap();
        std::os::unix::fs::symlink(d.join("loop2"), d.join("loop1")).unwrap();
        std::fs::create_dir(d.join("sub")).unwrap();
        std::fs::write(d.join("sub/b"), b"bb").unwrap();
        std::os::unix::fs::symlink(d.join("sub"), d.join("sub/up")).unwrap();
        let e = |p: &str, prio| SourceEntry::argument(d.join(p), prio);
        let set = collect(
            &[
                e("a", 50),
                e("a-link", 10),
                e("a-sym", 60),
                e("missing", 1),
                e("loop1", 1),
                e("sub", 5),
                e("su?", 5),
                e("nomatch*", 5),
            ],
            &CollectOptions::default(),
        );
        let names: Vec<_> = set
            .files
            .iter()
            .map(|f| (f.path.file_name().unwrap().to_str().unwrap(), f.priority))
            .collect();
        assert_eq!(names, [("a", 10), ("b", 5)]);
        let kinds: Vec<_> = set.warnings.iter().map(|w| w.kind).collect();
        assert!(kinds.contains(&WarningKind::Missing), "{kinds:?}");
        assert!(kinds.contains(&WarningKind::SymlinkLoop), "{kinds:?}");
        assert!(kinds.contains(&WarningKind::DirectoryLoop), "{kinds:?}");
        assert!(kinds.contains(&WarningKind::NoMatch), "{kinds:?}");
        assert!(kinds.contains(&WarningKind::Duplicate), "{kinds:?}");
    }

    /// The breadth-first walk finds what a depth-first one does (every
    /// regular file under the directory, through symlinked directories),
    /// reads a directory reached twice once, and a walk handed out in small
    /// pieces adds up to the same files.
    #[test]
    fn the_parallel_walk_finds_what_walkdir_finds() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("top");
        for (i, d) in ["a/b/c", "a/d", "e", "f/g/h/i"].iter().enumerate() {
            std::fs::create_dir_all(top.join(d)).unwrap();
            for f in 0..=i {
                std::fs::write(top.join(d).join(format!("f{f}")), [i as u8; 10]).unwrap();
            }
        }
        std::fs::write(top.join("a/b/big"), vec![1u8; 1 << 20]).unwrap();
        std::os::unix::fs::symlink(top.join("f/g"), top.join("e/to-g")).unwrap();
        std::os::unix::fs::symlink(top.join("a"), top.join("a/d/up")).unwrap();
        std::fs::write(dir.path().join("outside"), b"linked to").unwrap();
        std::os::unix::fs::symlink(dir.path().join("outside"), top.join("e/outside")).unwrap();
        let want: std::collections::BTreeSet<(u64, u64)> = walkdir::WalkDir::new(&top)
            .follow_links(true)
            .into_iter()
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_file())
            .map(|e| {
                let m = e.metadata().unwrap();
                (m.dev(), m.ino())
            })
            .collect();
        let opts = CollectOptions::default();
        let pool = MetadataPool::new(4);
        let mut c = Collector::new(&opts, StopSignal::default(), &pool);
        c.push_entries(&[SourceEntry::argument(&top, 10)]);
        let mut got = Vec::new();
        loop {
            let more = c.walk_some(2);
            for f in c.take_new() {
                // Each file is mapped by the walk, in its directory, as
                // opening it by path would map it; but for e/outside, met
                // as a symlink, which is looked at (and later opened) by
                // path.
                let by_path = crate::map::extent::open_file(&f.path, false).unwrap();
                let by_path = crate::map::extent::map_file(&by_path.0, f.size, None);
                if f.path == top.join("e/outside") {
                    assert_eq!(f.mapped, None, "{}", f.path.display());
                } else {
                    assert_eq!(f.mapped.as_ref(), Some(&by_path), "{}", f.path.display());
                }
                got.push((f.dev, f.ino));
            }
            if !more {
                break;
            }
        }
        assert_eq!(got.len(), want.len(), "each file once: {got:?}");
        assert_eq!(
            got.into_iter().collect::<std::collections::BTreeSet<_>>(),
            want
        );
        let kinds: Vec<_> = c.take_warnings().iter().map(|w| w.kind).collect();
        assert_eq!(
            kinds,
            [WarningKind::DirectoryLoop],
            "a/d/up leads back to a"
        );
    }
}
