//! Reading a filesystem's metadata ahead of a walk, wide.
//!
//! On a cold lazy volume, walking a tree is a chain of fetches: a
//! directory's inode, then its blocks, then its children's inodes, each
//! waiting for the one before and, once data reads are queued, each waiting
//! behind them for a fetch slot (benches/PROFILE.md, section 4: the walk of
//! a big tree ended 5 ms before its last read, the reads starved
//! meanwhile). Most of that chain is known without walking: on ext4 the
//! group descriptors say where the used inodes are (`ext4`), on XFS each
//! allocation group's inode B+tree does (`xfs`), and the inodes of the
//! directories say where their blocks are. So when a run is about to walk
//! a directory, this module asks for every used inode table (or chunk) at
//! once, reads each as it arrives, and asks for the blocks and tree nodes of
//! every directory it names: the walk that follows finds them hydrated.
//!
//! The requests are `POSIX_FADV_WILLNEED` on the block device (for a
//! buffered loop device, on its backing file: see `loop_backing`),
//! buffered, on purpose (unlike the engine's reads): the kernel starts each fetch
//! without a thread per read or a copy (at most the queue depth of them on
//! their way, so the device's queue is never filled by hints), and ext4
//! reads its metadata
//! through that same page cache of the device, so what arrives is exactly
//! what the walk then finds cached (design fact 1: for ext4's metadata the
//! device's cache *is* the filesystem's). XFS keeps its metadata in a
//! buffer cache of its own, so there the read-ahead hydrates (the slow
//! part on a lazy volume) and the walk still reads each block once more,
//! at the device's speed. Only the inode tables (and XFS's AGIs and inode
//! B+tree) are read back, to find the directories; `POSIX_FADV_RANDOM`
//! keeps the kernel from reading around those reads.
//!
//! When to start: the collector starts it when it queues a walk, but a walk
//! in a later class is queued only once the earlier classes are mapped and
//! their data queued ahead of everything; so a scout also `lstat`s the
//! first entries of every class, as wide as the reads, and starts it at the
//! first directory it meets. A list of files has no directory to meet, but
//! its lookups are the same chain, once per directory on the way (the
//! directory's inode, then its block, then the next one down); where the
//! lookups of the first entries go through at least [`LIST_DIRECTORIES`]
//! directories of one filesystem, the scout starts it at once, at the root
//! of the mount they are under (found in the mount table, without a
//! lookup): on the node fixture that moved the first data fetch of a cold
//! run from about 30 ms to 5 ms (benches/PROFILE.md, section 2), and on the
//! big tree, whose list names its snapshots' trees deep under the mount,
//! the read-ahead's start from 16 ms (the scout's `lstat`s' chains) to
//! under 1 ms (section 8). A list of a few files starts nothing: its chains
//! are short and would cost less than the tables read whole. Nor does
//! anything start on a filesystem whose lookups the scout finds in the
//! kernel's cache before the run makes any ([`cached_filesystems`]: a
//! sample of the entries, and of what is under the directories among them):
//! its metadata is in memory, and a read-ahead would fetch only what no
//! lookup or walk needs, in the fetch slots the first data reads want.
//!
//! It is a hint, bounded every way: a budget of bytes per filesystem
//! (charged by the chunks its requests touch, so a volume fetches at most
//! that much for it), the run's stop signal, and an end: when the run's
//! own reads are done it is told to stop, and the run does not wait for
//! it. It never writes, and a failure (a device it cannot open, a layout it
//! does not follow, a read error) only ends it, reported, never the run.
//! ext4 (and ext2/3) and XFS are read ahead; other filesystems are
//! reported skipped.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fs::File;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

use super::device::{self, DeviceId};
use super::ext4::Ext4Layout;
use super::loop_backing::{self, Backing};
use super::xfs::{InobtNode, XfsLayout};
use crate::engine::StopSignal;

/// Blocks a directory walk reads, as a filesystem's layout (`ext4`, `xfs`)
/// finds them in an inode or a tree node: linear block numbers (the byte
/// offset over the block size).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MetadataBlocks {
    /// A run of a directory's blocks.
    Directory(Range<u64>),
    /// A tree node (index or leaf) of a directory whose extents did not fit
    /// in its inode (ext4's extent tree, XFS's block-map B+tree), and how
    /// many levels it may (ext4) or must (XFS) have below it.
    ExtentNode {
        /// Its block.
        block: u64,
        /// Levels allowed below it (the parent's depth minus one).
        depth: u16,
    },
}

/// How one filesystem's metadata read-ahead went (in [`crate::Report`]).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MetadataReadaheadReport {
    /// The device, `major:minor`.
    pub device: String,
    /// Its `/dev` node, once found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<PathBuf>,
    /// How it ended.
    pub state: ReadaheadState,
    /// Why it read nothing or ended early (a layout it does not follow, a
    /// device it could not open, a read error).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Bytes of used inode tables (ext4) or allocated inode chunks (XFS)
    /// read.
    pub inode_table_bytes: u64,
    /// Bytes of directory blocks asked for (per chunk, the span from its
    /// first directory block to its last).
    pub directory_bytes: u64,
    /// Tree nodes of directories read: ext4's extent tree blocks, XFS's
    /// block-map B+tree blocks.
    pub extent_blocks: u64,
    /// Blocks read to find the inodes, beyond the superblock and ext4's
    /// group descriptors: on XFS, each group's AGI and its inode B+tree
    /// nodes.
    pub index_blocks: u64,
    /// Ranges asked of the kernel.
    pub reads: u64,
    /// Distinct chunks the reads fell in: what they cost the volume.
    pub chunks: u64,
    /// Requests and reads that failed.
    pub errors: u64,
    /// Stopped adding reads at the budget.
    pub budget_reached: bool,
    /// When it started, from the start of the run.
    pub started_ms: f64,
    /// From its start until the last range arrived (or the run's end, if
    /// it was still reading).
    pub elapsed_ms: f64,
}

/// How a read-ahead ended.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ReadaheadState {
    /// Everything found (within the budget) was read.
    Done,
    /// Still reading when the run's own reads were done: told to stop.
    Unfinished,
    /// The run was stopped (deadline, signal).
    Stopped,
    /// Nothing read: see `reason`.
    Skipped,
}

/// What a run's read-aheads share: the settings, and one entry per
/// filesystem started.
struct Shared {
    budget: u64,
    /// XFS is read ahead too.
    xfs: bool,
    chunk: u64,
    width: usize,
    stop: StopSignal,
    /// Set when the run is done with them.
    done: AtomicBool,
    /// When the run started.
    created: Instant,
    started: Mutex<BTreeMap<u64, Arc<Progress>>>,
    /// Filesystems whose metadata the scout found in memory: not read
    /// ahead ([`cached_filesystems`]).
    cached: Mutex<HashSet<u64>>,
}

impl Shared {
    fn stopping(&self) -> bool {
        self.done.load(Ordering::Relaxed) || self.stop.check().is_some()
    }
}

/// One filesystem's read-ahead as it goes: counters the workers bump, and
/// the end state once there is one.
struct Progress {
    device: DeviceId,
    start: Instant,
    inode_table_bytes: AtomicU64,
    directory_bytes: AtomicU64,
    extent_blocks: AtomicU64,
    index_blocks: AtomicU64,
    reads: AtomicU64,
    chunks: AtomicU64,
    errors: AtomicU64,
    budget_reached: AtomicBool,
    /// Set once, at the end.
    end: Mutex<Option<(ReadaheadState, Option<String>, f64)>>,
    node: Mutex<Option<PathBuf>>,
}

impl Progress {
    fn report(&self, run_start: Instant) -> MetadataReadaheadReport {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let end = self.end.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let (state, reason, elapsed_ms) = end.unwrap_or((
            ReadaheadState::Unfinished,
            None,
            self.start.elapsed().as_secs_f64() * 1e3,
        ));
        MetadataReadaheadReport {
            device: self.device.to_string(),
            node: self.node.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            state,
            reason,
            inode_table_bytes: load(&self.inode_table_bytes),
            directory_bytes: load(&self.directory_bytes),
            extent_blocks: load(&self.extent_blocks),
            index_blocks: load(&self.index_blocks),
            reads: load(&self.reads),
            chunks: load(&self.chunks),
            errors: load(&self.errors),
            budget_reached: self.budget_reached.load(Ordering::Relaxed),
            started_ms: self.start.duration_since(run_start).as_secs_f64() * 1e3,
            elapsed_ms,
        }
    }

    fn end(&self, state: ReadaheadState, reason: Option<String>) {
        let elapsed = self.start.elapsed().as_secs_f64() * 1e3;
        self.end
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert((state, reason, elapsed));
    }
}

/// Directories of one filesystem that lookups of the entries the scout
/// looks at go through (their parents, and every directory from there up
/// to the mount point), from which a list has that filesystem's metadata
/// read ahead. Each directory costs a cold lookup up to two dependent
/// fetches (its inode's table chunk, then its block); from 32 on, that is
/// up to 64 fetches waited for one after another in each chain, against a
/// read-ahead that asks for the tables and directories all at once and is
/// charged at most its budget (128 chunks by default). The directories
/// above the parents count: a list naming a few directories deep in a
/// tree (walks to come, such as an image's snapshots) goes through many,
/// one dependent round after another, before it meets the first of them.
pub const LIST_DIRECTORIES: usize = 32;

/// A run's metadata read-aheads: started per filesystem the first time a
/// walk (or a look ahead at the entries) meets a directory on it.
#[derive(Clone)]
pub struct MetadataReadahead {
    shared: Arc<Shared>,
}

impl MetadataReadahead {
    /// Read-aheads of at most `budget` bytes each (charged by the chunks of
    /// `chunk` bytes they touch), of XFS too if `xfs`, the scout `lstat`ing
    /// `width` entries at a time, until `stop`.
    pub fn new(budget: u64, xfs: bool, chunk: u64, width: usize, stop: StopSignal) -> Self {
        MetadataReadahead {
            shared: Arc::new(Shared {
                budget,
                xfs,
                chunk: chunk.max(4096),
                width: width.clamp(1, super::pool::MAX_WIDTH),
                stop,
                done: AtomicBool::new(false),
                created: Instant::now(),
                started: Mutex::new(BTreeMap::new()),
                cached: Mutex::new(HashSet::new()),
            }),
        }
    }

    /// A directory `(dev, ino)` is about to be walked: read its
    /// filesystem's metadata ahead, unless that has started already or the
    /// scout found it in memory. Returns at once; the reads run on their
    /// own threads.
    pub fn walk_on(&self, dev: u64, ino: u64) {
        let cached = || {
            self.shared
                .cached
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&dev)
        };
        if self.shared.stopping() || cached() {
            return;
        }
        let progress = {
            let mut started = self
                .shared
                .started
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if started.contains_key(&dev) {
                return;
            }
            let p = Arc::new(Progress {
                device: DeviceId::from_dev(dev),
                start: Instant::now(),
                inode_table_bytes: AtomicU64::new(0),
                directory_bytes: AtomicU64::new(0),
                extent_blocks: AtomicU64::new(0),
                index_blocks: AtomicU64::new(0),
                reads: AtomicU64::new(0),
                chunks: AtomicU64::new(0),
                errors: AtomicU64::new(0),
                budget_reached: AtomicBool::new(false),
                end: Mutex::new(None),
                node: Mutex::new(None),
            });
            started.insert(dev, p.clone());
            p
        };
        let shared = self.shared.clone();
        let mine = progress.clone();
        let spawned = std::thread::Builder::new()
            .name("prewarm-readahead".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                let (state, reason) = match read_ahead(&shared, &progress, ino) {
                    Ok(()) if shared.stop.check().is_some() => (ReadaheadState::Stopped, None),
                    Ok(()) if shared.done.load(Ordering::Relaxed) => {
                        (ReadaheadState::Unfinished, None)
                    }
                    Ok(()) => (ReadaheadState::Done, None),
                    Err(reason) => (ReadaheadState::Skipped, Some(reason)),
                };
                progress.end(state, reason);
            });
        if let Err(e) = spawned {
            mine.end(ReadaheadState::Skipped, Some(format!("no thread: {e}")));
        }
    }

    /// Look at `paths` (most urgent first), on threads of their own, and
    /// start the read-ahead of each filesystem where one is a directory: a
    /// walk in a later class then finds its metadata read while the first
    /// classes are mapped, instead of starting it only when its class comes.
    /// The `lstat`s run as wide as the reads (each may wait for a fetch),
    /// so the first directory is met within a fetch or two. First, without
    /// a lookup, each filesystem whose many directories the paths' lookups
    /// go through is read ahead at once ([`LIST_DIRECTORIES`]), and its
    /// paths are not looked at: there is nothing left to find on it, and on a
    /// 2-CPU node a thousand `lstat`s held the mapping back by 2-4 ms once
    /// the metadata arrived. Before all that, and before anything looks
    /// them up, a sample of the paths (and of what is under the
    /// directories among them) is tried in the kernel's lookup cache
    /// ([`cached_filesystems`]): the filesystems found there have nothing
    /// to read, and are not read ahead for the rest of the run, from a
    /// list or a walk. When every one tried is cached, no scout is sent
    /// at all: it would find only those filesystems, and its thread, the
    /// mount table it reads and the `lstat`s it makes took the CPU the
    /// first reads wanted (1.5 ms of a 97 ms run at 32 fetches on a 2-CPU
    /// node, benches/PROFILE.md section 8). A filesystem none of the sample
    /// is on is then not read ahead from the list; a walk on it still is,
    /// when its class is mapped. Whether a scout was sent.
    pub fn scout(&self, paths: Vec<PathBuf>) -> bool {
        let cached = cached_filesystems(&paths);
        if !cached.is_empty() {
            tracing::debug!(
                "the lookups of the first entries are cached: the metadata of {cached:?} is not read ahead, and no scout is sent"
            );
            *self.shared.cached.lock().unwrap_or_else(|e| e.into_inner()) = cached;
            return false;
        }
        let this = self.clone();
        let spawned = std::thread::Builder::new()
            .name("prewarm-scout".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                let listed = listed_filesystems(paths, &device::mounts());
                for &(dev, ino) in &listed.read_ahead {
                    this.walk_on(dev, ino);
                }
                let paths = listed.to_look_at;
                let next = AtomicUsize::new(0);
                let look = || {
                    use std::os::unix::fs::MetadataExt;
                    while let Some(path) = paths.get(next.fetch_add(1, Ordering::Relaxed)) {
                        if this.shared.stopping() {
                            return;
                        }
                        if let Ok(meta) = std::fs::symlink_metadata(path) {
                            if meta.is_dir() {
                                this.walk_on(meta.dev(), meta.ino());
                            }
                        }
                    }
                };
                std::thread::scope(|s| {
                    for _ in 1..this.shared.width.min(paths.len()) {
                        let spawned = std::thread::Builder::new()
                            .stack_size(256 * 1024)
                            .spawn_scoped(s, look);
                        if spawned.is_err() {
                            break;
                        }
                    }
                    look();
                });
            });
        if let Err(e) = spawned {
            tracing::debug!("metadata read-ahead scout not started: {e}");
            return false;
        }
        true
    }

    /// The run's own reads are done: tell every read-ahead to stop, and
    /// report each as it stands (one still reading is `unfinished`; the run
    /// does not wait for it).
    pub fn finish(&self) -> Vec<MetadataReadaheadReport> {
        self.shared.done.store(true, Ordering::Relaxed);
        let started = self
            .shared
            .started
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        started
            .values()
            .map(|p| p.report(self.shared.created))
            .collect()
    }
}

/// What the read-ahead of one filesystem has asked for, charged against the
/// budget by the chunks it touches.
struct Asked<'a> {
    shared: &'a Shared,
    progress: &'a Progress,
    file: &'a File,
    /// Where the device's byte 0 is in `file` (a buffered loop device's
    /// backing file; 0 for the device itself).
    base: u64,
    /// Per chunk touched, the hull of the bytes asked for in it: a later
    /// directory in the same chunk is asked for only if it adds to it.
    covered: HashMap<u64, Range<u64>>,
    spent: u64,
    /// Where each request still on its way starts, oldest first: at most
    /// `shared.width` are, so the read-ahead never holds more of the
    /// device's queue than the run's own reads do.
    on_the_way: VecDeque<u64>,
    /// Where each tree node asked for starts: a node is read once, however
    /// many parents name it (a damaged tree naming one block from every
    /// entry of every level would otherwise be read exponentially often,
    /// and nodes within chunks already charged cost no budget).
    nodes_asked: HashSet<u64>,
}

impl Asked<'_> {
    /// Charge the chunks of `r` not charged yet; false (nothing charged, the
    /// budget reached) if they do not fit.
    fn charge(&mut self, r: &Range<u64>) -> bool {
        let chunk = self.shared.chunk;
        let new = by_chunk(r, chunk)
            .filter(|(c, _)| !self.covered.contains_key(c))
            .count() as u64;
        if self.spent + new * chunk > self.shared.budget {
            self.progress.budget_reached.store(true, Ordering::Relaxed);
            return false;
        }
        self.spent += new * chunk;
        self.progress.chunks.fetch_add(new, Ordering::Relaxed);
        for (c, piece) in by_chunk(r, chunk) {
            widen(self.covered.entry(c).or_insert(piece.clone()), piece);
        }
        true
    }

    /// Ask the kernel to read `r` into the device's page cache, without
    /// waiting: the fetch runs beside everything else, and a read of it
    /// later waits only for what is still on its way.
    fn ask(&mut self, r: &Range<u64>) {
        while self.on_the_way.len() >= self.shared.width {
            self.wait_oldest();
        }
        self.on_the_way.push_back(r.start);
        self.progress.reads.fetch_add(1, Ordering::Relaxed);
        let asked = nix::fcntl::posix_fadvise(
            self.file.as_raw_fd(),
            (self.base + r.start) as libc::off_t,
            (r.end - r.start) as libc::off_t,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_WILLNEED,
        );
        if let Err(e) = asked {
            self.progress.errors.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("metadata read-ahead at {}: {e}", r.start);
        }
    }

    /// Wait until the oldest request has arrived, by reading its first byte
    /// (a read of a page under way waits for it).
    fn wait_oldest(&mut self) {
        if let Some(at) = self.on_the_way.pop_front() {
            let mut byte = [0u8; 1];
            if let Err(e) = self.file.read_exact_at(&mut byte, self.base + at) {
                self.progress.errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("metadata read-ahead at {at}: {e}");
            }
        }
    }

    /// Read `r` (asked for already) into `buf`; a failure is counted.
    fn read(&self, r: &Range<u64>, buf: &mut Vec<u8>) -> std::io::Result<()> {
        buf.resize((r.end - r.start) as usize, 0);
        let read = self.file.read_exact_at(buf, self.base + r.start);
        if let Err(e) = &read {
            self.progress.errors.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("metadata read-ahead at {}: {e}", r.start);
        }
        read
    }

    /// Ask for tree node `r` unless it was asked for already or does not
    /// fit the budget; whether it was.
    fn ask_node(&mut self, r: &Range<u64>) -> bool {
        if self.nodes_asked.contains(&r.start) || !self.charge(r) {
            return false;
        }
        self.nodes_asked.insert(r.start);
        self.ask(r);
        true
    }

    /// Ask for `pieces` in turn until one does not fit the budget; those
    /// asked for, to be read back.
    fn ask_pieces(&mut self, pieces: impl IntoIterator<Item = InodePiece>) -> Vec<InodePiece> {
        let mut asked = Vec::new();
        for p in pieces {
            if !self.charge(&p.read) {
                break;
            }
            self.ask(&p.read);
            asked.push(p);
        }
        asked
    }

    /// Ask for what an inode table or tree node named: directory blocks as
    /// one range per chunk (the hull of its blocks), and tree nodes, which
    /// are returned to be read in turn.
    fn ask_found(&mut self, bs: u64, found: &[MetadataBlocks], nodes: &mut Vec<(Range<u64>, u16)>) {
        let chunk = self.shared.chunk;
        let mut hulls: BTreeMap<u64, Range<u64>> = BTreeMap::new();
        for m in found {
            match m {
                MetadataBlocks::Directory(blocks) => {
                    for (c, piece) in by_chunk(&(blocks.start * bs..blocks.end * bs), chunk) {
                        widen(hulls.entry(c).or_insert(piece.clone()), piece);
                    }
                }
                &MetadataBlocks::ExtentNode { block, depth } => {
                    let r = block * bs..(block + 1) * bs;
                    if self.ask_node(&r) {
                        nodes.push((r, depth));
                    }
                }
            }
        }
        for (c, r) in hulls {
            let known = self.covered.get(&c);
            if known.is_some_and(|h| h.start <= r.start && r.end <= h.end) {
                continue;
            }
            if self.charge(&r) {
                self.progress
                    .directory_bytes
                    .fetch_add(r.end - r.start, Ordering::Relaxed);
                self.ask(&r);
            }
        }
    }
}

/// `r` cut at chunk boundaries: each non-empty piece, with its chunk.
fn by_chunk(r: &Range<u64>, chunk: u64) -> impl Iterator<Item = (u64, Range<u64>)> {
    let r = r.clone();
    (r.start / chunk..r.end.div_ceil(chunk))
        .map(move |c| (c, r.start.max(c * chunk)..r.end.min((c + 1) * chunk)))
        .filter(|(_, piece)| !piece.is_empty())
}

/// Widen `hull` to cover `piece` too.
fn widen(hull: &mut Range<u64>, piece: Range<u64>) {
    *hull = hull.start.min(piece.start)..hull.end.max(piece.end);
}

/// Inodes asked for in one request: the bytes read, and the inodes in
/// them (the whole of it for an ext4 table; on XFS the chunks in one chunk
/// of the volume, with whatever lies between them).
struct InodePiece {
    read: Range<u64>,
    inodes: Vec<Range<u64>>,
}

/// A filesystem whose metadata is read ahead, as its superblock says.
enum Layout {
    Ext4(Ext4Layout),
    Xfs(XfsLayout),
}

impl Layout {
    /// The first 4 KiB of a device hold both superblocks: XFS's at 0,
    /// ext4's at 1024.
    const HEAD: Range<u64> = 0..4096;

    fn from_head(head: &[u8]) -> Result<Layout, String> {
        let xfs = match XfsLayout::from_superblock(head) {
            Ok(xfs) => return Ok(Layout::Xfs(xfs)),
            Err(refusal) => refusal,
        };
        let sb = head
            .get(Ext4Layout::SUPERBLOCK.start as usize..)
            .unwrap_or_default();
        match (Ext4Layout::from_superblock(sb), xfs) {
            (Ok(ext4), _) => Ok(Layout::Ext4(ext4)),
            (Err(super::ext4::Ext4Refusal::NotExt4), super::xfs::XfsRefusal::NotXfs) => {
                Err("neither ext4 nor XFS".to_string())
            }
            // XFS's magic but a field out of range: say which.
            (Err(super::ext4::Ext4Refusal::NotExt4), xfs) => Err(xfs.to_string()),
            (Err(ext4), _) => Err(ext4.to_string()),
        }
    }

    fn block_size(&self) -> u64 {
        match self {
            Layout::Ext4(l) => l.block_size,
            Layout::Xfs(l) => l.block_size,
        }
    }

    /// The directories among whole inodes read from a table or chunk.
    fn directory_blocks(&self, inodes: &[u8], out: &mut Vec<MetadataBlocks>) {
        match self {
            Layout::Ext4(l) => l.directory_blocks(inodes, out),
            Layout::Xfs(l) => l.directory_blocks(inodes, out),
        }
    }

    /// What a directory's tree node, read for `depth`, names.
    fn tree_node(&self, node: &[u8], depth: u16, out: &mut Vec<MetadataBlocks>) {
        match self {
            Layout::Ext4(l) => l.extent_node(node, depth, out),
            Layout::Xfs(l) => l.bmbt_node(node, depth, out),
        }
    }
}

/// What the scout does with a list's first entries: the filesystems to
/// read ahead at once, and the entries still worth an `lstat`.
#[derive(Debug, PartialEq)]
struct ListedFilesystems {
    /// `(dev, ino)` of the mount point of each filesystem whose
    /// [`LIST_DIRECTORIES`] directories the entries' lookups go through.
    read_ahead: Vec<(u64, u64)>,
    /// The entries on none of those filesystems, where an `lstat` may still
    /// find a directory (on those, the read-ahead has started already, and
    /// an `lstat` would only cost a lookup).
    to_look_at: Vec<PathBuf>,
}

/// Lookups tried from the cache, at most, to tell whether the metadata a
/// run is about to look up is in memory already ([`cached_filesystems`]).
const CACHE_PROBES: usize = 32;

/// Directories listed, at most, to try lookups under the directories the
/// entries name (the walks to come).
const CACHE_PROBE_DIRECTORIES: usize = 8;

/// Directories in each directory listed whose lookups are tried, spread
/// over those among its first [`CACHE_PROBE_LISTING`] entries.
const CACHE_PROBES_PER_DIRECTORY: usize = 4;

/// Entries read, at most, of each directory listed.
const CACHE_PROBE_LISTING: usize = 256;

/// Lookups tried from the cache, and what they found.
#[derive(Default)]
struct CacheProbe {
    /// Lookups tried.
    tried: usize,
    /// The filesystem (`st_dev`) of every lookup found.
    devices: HashSet<u64>,
    /// Directories found, to try lookups under.
    directories: VecDeque<PathBuf>,
    /// Directories queued so far.
    queued: usize,
}

/// A lookup would need the filesystem: its metadata is not all in memory.
struct NotCached;

impl CacheProbe {
    /// Look `path` up in the cache alone (`openat2` with `RESOLVE_CACHED`,
    /// Linux 5.12, which fails with `EAGAIN` rather than read); a directory
    /// found is queued to look under. A path already known to be gone, or
    /// a kernel without `RESOLVE_CACHED` (`EINVAL`) or `openat2`
    /// (`ENOSYS`), gives no answer.
    fn look_up(&mut self, path: &Path) -> Result<(), NotCached> {
        use nix::errno::Errno;
        use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::from_bits_retain(libc::RESOLVE_CACHED));
        self.tried += 1;
        let fd = match openat2(libc::AT_FDCWD, path, how) {
            Ok(fd) => fd,
            Err(Errno::EAGAIN) => return Err(NotCached),
            Err(_) => return Ok(()),
        };
        let stat = nix::sys::stat::fstat(fd);
        let _ = nix::unistd::close(fd);
        if let Ok(st) = stat {
            self.devices.insert(st.st_dev);
            let dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
            if dir && self.queued < CACHE_PROBE_DIRECTORIES {
                self.queued += 1;
                self.directories.push_back(path.to_path_buf());
            }
        }
        Ok(())
    }

    /// Look up a few of the directories in directory `dir`, spread over
    /// those among its first entries. Only directories: a walk opens each
    /// (a lookup, cached from then on) but maps the files it lists from
    /// their inodes, never looking them up, so a file's lookup says nothing
    /// of a walk's metadata. `dir`'s own lookup was found cached; its
    /// blocks need not be, and listing it may then wait for the one fetch a
    /// walk of it makes first.
    fn look_under(&mut self, dir: &Path) -> Result<(), NotCached> {
        let Ok(listing) = std::fs::read_dir(dir) else {
            return Ok(());
        };
        // The entry's type as the directory gives it (no lookup where the
        // filesystem keeps it, as ext4 and XFS do).
        let names: Vec<PathBuf> = listing
            .take(CACHE_PROBE_LISTING)
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect();
        let every = names.len().div_ceil(CACHE_PROBES_PER_DIRECTORY).max(1);
        for name in names.iter().step_by(every) {
            self.look_up(name)?;
        }
        Ok(())
    }
}

/// The filesystems (`st_dev`) whose metadata a run looking up `paths` (and
/// walking the directories among them) finds in memory: up to
/// [`CACHE_PROBES`] of `paths`, spread over them, and a few directories
/// under up to [`CACHE_PROBE_DIRECTORIES`] of the directories found, each found
/// in the kernel's lookup cache. Then the files' metadata is there already
/// (a second run, or a walk before it: one that opened those directories
/// read their blocks and inodes too), and reading it ahead would fetch
/// only what no lookup needs, in the slots the data reads want. A single
/// lookup that would need a filesystem (a path never looked up, even one
/// that turns out not to exist) says none is: every filesystem is read
/// ahead as before. A directory found cached with entries that are not
/// (looked up, never walked) says so too. It costs a few dozen cached
/// lookups, or one that fails at once.
fn cached_filesystems(paths: &[PathBuf]) -> HashSet<u64> {
    let mut probe = CacheProbe::default();
    let every = paths.len().div_ceil(CACHE_PROBES).max(1);
    let found = paths
        .iter()
        .step_by(every)
        .try_for_each(|path| probe.look_up(path))
        .and_then(|()| {
            while let Some(dir) = probe.directories.pop_front() {
                if probe.tried >= 2 * CACHE_PROBES {
                    break;
                }
                probe.look_under(&dir)?;
            }
            Ok(())
        });
    match found {
        Ok(()) => probe.devices,
        Err(NotCached) => HashSet::new(),
    }
}

/// Sorts `paths` by the deepest mount each is under (`mounts`: mount point
/// and device, from the mount table) and counts the distinct directories
/// their lookups go through on each mount (see [`LIST_DIRECTORIES`]). The
/// mount points are stat'ed, not the paths: a mount point is in memory
/// while it is mounted, so this waits for no fetch. The mount table is
/// searched once per directory, not per path (a node running containers
/// has hundreds of mounts). A path that reaches its file through a symlink
/// to another filesystem is counted on the one its text is under: the
/// read-ahead is a hint, and a wrong one costs at most its budget.
fn listed_filesystems(paths: Vec<PathBuf>, mounts: &[(PathBuf, DeviceId)]) -> ListedFilesystems {
    use std::os::unix::fs::MetadataExt;
    // The deepest mount `path` is under, if it is a block device's.
    let deepest = |path: &Path| -> Option<&Path> {
        mounts
            .iter()
            .filter(|(point, _)| path.starts_with(point))
            .max_by_key(|(point, _)| point.components().count())
            .filter(|(_, id)| id.major != 0)
            .map(|(point, _)| point.as_path())
    };
    let points: HashSet<&Path> = mounts.iter().map(|(point, _)| point.as_path()).collect();
    let cwd = std::env::current_dir().ok();
    // Each directory named, with the mount it is under.
    let mut directories: HashMap<PathBuf, Option<&Path>> = HashMap::new();
    // Each path with the mount it is under (None: a relative path with no
    // working directory, or under no mount of a block device).
    let mut placed = Vec::with_capacity(paths.len());
    for path in paths {
        let absolute = match (&cwd, path.is_absolute()) {
            (_, true) => Some(path.clone()),
            (Some(cwd), false) => Some(cwd.join(&path)),
            (None, false) => None,
        };
        let under = match absolute.as_deref() {
            // A mount point is on its own filesystem, not its parent's.
            Some(a) if points.contains(a) => deepest(a),
            Some(a) => a.parent().and_then(|parent| {
                *directories
                    .entry(parent.to_path_buf())
                    .or_insert_with(|| deepest(parent))
            }),
            None => None,
        };
        placed.push((path, under));
    }
    // Each directory a lookup of the entries goes through, per mount: the
    // parents, and every directory between them and the mount point. A
    // parent's ancestors are inserted upwards until one is in already
    // (those above it are, then), so each is inserted once.
    let mut on_the_way: HashMap<&Path, HashSet<&Path>> = HashMap::new();
    for (parent, point) in &directories {
        let Some(point) = point else { continue };
        let seen = on_the_way.entry(point).or_default();
        for dir in parent.ancestors().take_while(|dir| dir != point) {
            if !seen.insert(dir) {
                break;
            }
        }
    }
    let mut roots = BTreeMap::new();
    for (point, dirs) in on_the_way {
        if dirs.len() < LIST_DIRECTORIES {
            continue;
        }
        if let Some(meta) = std::fs::metadata(point).ok().filter(|m| m.is_dir()) {
            roots.insert(point, (meta.dev(), meta.ino()));
        }
    }
    // Two mounts of one filesystem (bind mounts): read it once.
    let mut read_ahead: Vec<(u64, u64)> = roots.values().copied().collect();
    read_ahead.sort_unstable();
    read_ahead.dedup_by_key(|root| root.0);
    let to_look_at = placed
        .into_iter()
        .filter(|(_, under)| !under.is_some_and(|point| roots.contains_key(point)))
        .map(|(path, _)| path)
        .collect();
    ListedFilesystems {
        read_ahead,
        to_look_at,
    }
}

/// Read `progress.device`'s metadata ahead: the superblock, then what
/// finds the inodes (ext4: the group descriptors; XFS: every group's AGI and
/// inode B+tree, level by level), then ask for every used inode table or
/// chunk and read them in turn (each waits only for its own fetch, already
/// under way), asking for the directory blocks each names as it comes;
/// then the tree nodes of directories whose extents did not fit in their
/// inodes, level by level; then wait for what is still on its way. One
/// thread: the kernel keeps the fetches in flight. An error says why
/// nothing (more) was read.
fn read_ahead(shared: &Shared, progress: &Progress, ino: u64) -> Result<(), String> {
    let node = device::resolve_node(progress.device).map_err(|e| e.to_string())?;
    *progress.node.lock().unwrap_or_else(|e| e.into_inner()) = Some(node.clone());
    let (device, _) = device::open_read_only(&node, false, 0)
        .map_err(|e| format!("opening {}: {e}", node.display()))?;
    // A buffered loop device would pass the requests on one at a time,
    // behind the walk's own: they go to its backing file, whose cache is
    // where the device's reads then find them (`loop_backing`).
    let (file, base) = match loop_backing::backing(&device, progress.device, None) {
        Backing::File(b) => (b.file, b.offset),
        Backing::Device | Backing::Unusable(_) => (device, 0),
    };
    // No read-ahead around each read: the reads name exactly what is needed.
    let _ = nix::fcntl::posix_fadvise(
        file.as_raw_fd(),
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_RANDOM,
    );
    let mut asked = Asked {
        shared,
        progress,
        file: &file,
        base,
        covered: HashMap::new(),
        spent: 0,
        on_the_way: VecDeque::new(),
        nodes_asked: HashSet::new(),
    };
    let mut buf = Vec::new();
    let fail = |what: &str, e| format!("reading the {what} of {}: {e}", node.display());
    asked
        .read(&Layout::HEAD, &mut buf)
        .map_err(|e| fail("superblock", e))?;
    asked.charge(&Layout::HEAD);
    let layout = Layout::from_head(&buf)?;
    if matches!(layout, Layout::Xfs(_)) && !shared.xfs {
        return Err("XFS is read ahead only when asked (--metadata-readahead SIZE)".into());
    }
    let pieces = match &layout {
        Layout::Ext4(ext4) => {
            let descriptors = ext4.descriptors();
            asked
                .read(&descriptors, &mut buf)
                .map_err(|e| fail("group descriptors", e))?;
            asked.charge(&descriptors);
            ext4_table_pieces(&mut asked, ext4, &buf, ino)?
        }
        Layout::Xfs(xfs) => xfs_chunk_pieces(&mut asked, xfs, ino, &mut buf),
    };
    let bs = layout.block_size();
    let mut found = Vec::new();
    let mut nodes = Vec::new();
    for piece in &pieces {
        if shared.stopping() {
            return Ok(());
        }
        if asked.read(&piece.read, &mut buf).is_ok() {
            found.clear();
            for inodes in &piece.inodes {
                let at = (inodes.start - piece.read.start) as usize;
                let len = (inodes.end - inodes.start) as usize;
                if let Some(inodes) = buf.get(at..at + len) {
                    layout.directory_blocks(inodes, &mut found);
                }
                progress
                    .inode_table_bytes
                    .fetch_add(len as u64, Ordering::Relaxed);
            }
            asked.ask_found(bs, &found, &mut nodes);
        }
    }
    while !nodes.is_empty() {
        for (r, depth) in std::mem::take(&mut nodes) {
            if shared.stopping() {
                return Ok(());
            }
            if asked.read(&r, &mut buf).is_ok() {
                progress.extent_blocks.fetch_add(1, Ordering::Relaxed);
                found.clear();
                layout.tree_node(&buf, depth, &mut found);
                asked.ask_found(bs, &found, &mut nodes);
            }
        }
    }
    // Done means arrived: the last requests are waited for too.
    while !asked.on_the_way.is_empty() && !shared.stopping() {
        asked.wait_oldest();
    }
    Ok(())
}

/// ext4: ask for the used part of every inode table the descriptors `gdt`
/// name, the walked directory's group (`ino`'s) first and then the ones
/// after it, since its subdirectories are allocated near it (the Orlov
/// allocator); returns the pieces asked for, cut at chunk boundaries.
fn ext4_table_pieces(
    asked: &mut Asked<'_>,
    layout: &Ext4Layout,
    gdt: &[u8],
    ino: u64,
) -> Result<Vec<InodePiece>, String> {
    let mut tables = layout.inode_tables(gdt).map_err(|e| e.to_string())?;
    let first = layout.group_of(ino);
    tables.sort_by_key(|t| (u64::from(t.group) < first, t.group));
    let chunk = asked.shared.chunk;
    let pieces = tables.iter().flat_map(|t| {
        by_chunk(&(t.offset..t.offset + t.len), chunk).map(|(_, piece)| InodePiece {
            read: piece.clone(),
            inodes: vec![piece],
        })
    });
    Ok(asked.ask_pieces(pieces))
}

/// XFS: find the allocated inode chunks of every allocation group and ask
/// for them; returns the pieces asked for (one per chunk of the volume),
/// the walked directory's group (`ino`'s) and the ones after it first.
/// Each level is asked for whole before any of it is read: every group's
/// AGI, then every inode B+tree root, then the level below.
fn xfs_chunk_pieces(
    asked: &mut Asked<'_>,
    layout: &XfsLayout,
    ino: u64,
    buf: &mut Vec<u8>,
) -> Vec<InodePiece> {
    let first = layout.ag_of(ino);
    let groups: Vec<u32> = (first..layout.ag_count()).chain(0..first).collect();
    let agis: Vec<u32> = groups
        .into_iter()
        .take_while(|&ag| asked.charge(&layout.agi(ag)))
        .collect();
    for &ag in &agis {
        asked.ask(&layout.agi(ag));
    }
    let mut level: Vec<InobtNode> = Vec::new();
    for &ag in &agis {
        if asked.shared.stopping() {
            return Vec::new();
        }
        if asked.read(&layout.agi(ag), buf).is_ok() {
            asked.progress.index_blocks.fetch_add(1, Ordering::Relaxed);
            level.extend(layout.inobt_root(ag, buf));
        }
    }
    let mut chunks = Vec::new();
    while !level.is_empty() {
        let wanted: Vec<InobtNode> = level
            .drain(..)
            .filter(|n| asked.ask_node(&layout.block(n.block)))
            .collect();
        for n in wanted {
            if asked.shared.stopping() {
                return Vec::new();
            }
            if asked.read(&layout.block(n.block), buf).is_ok() {
                asked.progress.index_blocks.fetch_add(1, Ordering::Relaxed);
                layout.inobt_node(n, buf, &mut level, &mut chunks);
            }
        }
    }
    // One request per chunk of the volume, for the hull of the inodes in
    // it: XFS puts inode chunks between other blocks, and separate
    // requests in one chunk would each hold a place on the way for the
    // same fetch. Only the inodes are parsed once read.
    let mut by_volume_chunk: BTreeMap<u64, InodePiece> = BTreeMap::new();
    for c in chunks {
        for (n, piece) in by_chunk(&c, asked.shared.chunk) {
            let p = by_volume_chunk.entry(n).or_insert(InodePiece {
                read: piece.clone(),
                inodes: Vec::new(),
            });
            widen(&mut p.read, piece.clone());
            p.inodes.push(piece);
        }
    }
    let first_byte = layout.agi(first).start;
    let mut pieces: Vec<InodePiece> = by_volume_chunk.into_values().collect();
    pieces.sort_by_key(|p| (p.read.start < first_byte, p.read.start));
    asked.ask_pieces(pieces)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn dev(major: u32, minor: u32) -> DeviceId {
        DeviceId { major, minor }
    }

    /// `n` paths, one file in each of `n` directories under `root`.
    fn spread(root: &Path, n: usize) -> Vec<PathBuf> {
        (0..n).map(|i| root.join(format!("d{i}/f"))).collect()
    }

    #[test]
    fn a_list_in_many_directories_reads_its_mounts_filesystem_ahead() {
        let tmp = tempfile::tempdir().unwrap();
        let meta = std::fs::metadata(tmp.path()).unwrap();
        let mounts = [
            (PathBuf::from("/"), dev(8, 1)),
            (tmp.path().to_path_buf(), dev(7, 0)),
        ];
        let mut paths = spread(tmp.path(), LIST_DIRECTORIES);
        // Files under `/` only: the deepest mount decides, and `/` is in
        // too few directories to be read ahead; its paths are looked at.
        let elsewhere = spread(Path::new("/elsewhere"), 3);
        paths.extend(elsewhere.iter().cloned());
        let listed = listed_filesystems(paths.clone(), &mounts);
        assert_eq!(listed.to_look_at, elsewhere);
        assert_eq!(listed.read_ahead, [(meta.dev(), meta.ino())]);
        // Two mounts of one filesystem (a bind mount), each with files
        // in many directories: it is read once.
        let bound = tmp.path().join("bound");
        std::fs::create_dir(&bound).unwrap();
        let mounts = [mounts[1].clone(), (bound.clone(), dev(7, 0))];
        let both = [
            spread(tmp.path(), LIST_DIRECTORIES),
            spread(&bound, LIST_DIRECTORIES),
        ];
        let listed = listed_filesystems(both.concat(), &mounts);
        let [(read, _)] = listed.read_ahead[..] else {
            panic!("{listed:?}")
        };
        assert_eq!(read, meta.dev());
    }

    #[test]
    fn lookups_in_the_cache_say_so_and_gone_paths_say_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let here = std::fs::metadata(tmp.path()).unwrap().dev();
        let paths = spread(tmp.path(), 4);
        for p in &paths {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"x").unwrap();
            // Looked up just now: in the cache.
            std::fs::symlink_metadata(p).unwrap();
        }
        assert_eq!(cached_filesystems(&paths), HashSet::from([here]));
        let gone = spread(&tmp.path().join("gone"), 4);
        // Never looked up: finding out that they are not there takes a
        // lookup by the filesystem.
        assert!(cached_filesystems(&gone).is_empty());
        assert!(cached_filesystems(&[paths.clone(), gone.clone()].concat()).is_empty());
        for p in &gone {
            assert!(std::fs::symlink_metadata(p).is_err());
        }
        // Known to be gone now: they say nothing, either way.
        assert!(cached_filesystems(&gone).is_empty());
        assert_eq!(
            cached_filesystems(&[gone, paths].concat()),
            HashSet::from([here])
        );
        assert!(cached_filesystems(&[]).is_empty());
    }

    /// Paths whose lookups are all cached send no scout; one never looked
    /// up sends one. Either way a run over them would map them the same.
    #[test]
    fn a_scout_is_sent_only_where_a_lookup_is_not_cached() {
        let tmp = tempfile::tempdir().unwrap();
        let readahead =
            || MetadataReadahead::new(1 << 20, false, 512 * 1024, 4, StopSignal::default());
        let paths = spread(tmp.path(), 4);
        for p in &paths {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"x").unwrap();
        }
        let cached = readahead();
        assert!(!cached.scout(paths.clone()));
        assert!(cached.finish().is_empty());
        let gone = spread(&tmp.path().join("gone"), 4);
        assert!(readahead().scout([paths, gone].concat()));
    }

    /// A directory named (a walk to come) is looked under too: its
    /// entries, and the directories among them, a few levels down.
    #[test]
    fn a_directory_is_looked_under() {
        let tmp = tempfile::tempdir().unwrap();
        let here = std::fs::metadata(tmp.path()).unwrap().dev();
        let tree = tmp.path().join("tree");
        for i in 0..10 {
            let d = tree.join(format!("a{i}/b"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("f"), b"x").unwrap();
        }
        // Files beside them are not tried: a walk never looks them up.
        for i in 0..20 {
            std::fs::write(tree.join(format!("file{i}")), b"x").unwrap();
        }
        // Created just now: every lookup under it is cached.
        assert_eq!(
            cached_filesystems(std::slice::from_ref(&tree)),
            HashSet::from([here])
        );
        let mut probe = CacheProbe::default();
        assert!(probe.look_up(&tree).is_ok());
        assert_eq!(probe.directories, std::slice::from_ref(&tree));
        assert!(probe.look_under(&tree).is_ok());
        // Four of its ten directories, queued in turn.
        assert_eq!(probe.tried, 1 + CACHE_PROBES_PER_DIRECTORY);
        assert_eq!(probe.directories.len(), 1 + CACHE_PROBES_PER_DIRECTORY);
        // At most so many directories are queued, however many are found.
        let many: Vec<PathBuf> = (0..10).map(|i| tree.join(format!("a{i}"))).collect();
        let mut probe = CacheProbe::default();
        for d in &many {
            assert!(probe.look_up(d).is_ok());
        }
        assert_eq!(probe.directories.len(), CACHE_PROBE_DIRECTORIES);
    }

    /// The directories above the entries' parents count too: a few entries
    /// deep in a tree go through many directories, one lookup after
    /// another; shared ones count once.
    #[test]
    fn a_list_deep_in_a_tree_reads_its_mounts_filesystem_ahead() {
        let tmp = tempfile::tempdir().unwrap();
        let meta = std::fs::metadata(tmp.path()).unwrap();
        let block = [(tmp.path().to_path_buf(), dev(7, 0))];
        let deep = |levels: usize| -> PathBuf {
            (0..levels).fold(tmp.path().join("trunk"), |p, i| p.join(format!("l{i}")))
        };
        // `trunk` and `levels` directories under it, the parent of `f`.
        let entry = |levels: usize| deep(levels).join("f");
        let listed = listed_filesystems(vec![entry(LIST_DIRECTORIES - 1)], &block);
        assert_eq!(listed.read_ahead, [(meta.dev(), meta.ino())]);
        assert!(listed.to_look_at.is_empty());
        nothing(vec![entry(LIST_DIRECTORIES - 2)], &block);
        // Two entries on one branch: its directories count once.
        nothing(
            vec![entry(LIST_DIRECTORIES - 2), entry(LIST_DIRECTORIES / 2)],
            &block,
        );
    }

    /// Nothing read ahead: every path is still looked at.
    fn nothing(paths: Vec<PathBuf>, mounts: &[(PathBuf, DeviceId)]) {
        assert_eq!(
            listed_filesystems(paths.clone(), mounts),
            ListedFilesystems {
                read_ahead: vec![],
                to_look_at: paths,
            }
        );
    }

    #[test]
    fn a_list_in_few_directories_or_on_no_block_device_reads_nothing_ahead() {
        let tmp = tempfile::tempdir().unwrap();
        let block = [(tmp.path().to_path_buf(), dev(7, 0))];
        // Many files, few directories.
        let few: Vec<PathBuf> = (0..100)
            .map(|i| tmp.path().join(format!("d{}/f{i}", i % 3)))
            .collect();
        nothing(few, &block);
        // One short of the threshold.
        nothing(spread(tmp.path(), LIST_DIRECTORIES - 1), &block);
        // A tmpfs or an overlay: major 0, nothing to read ahead.
        let virt = [(tmp.path().to_path_buf(), dev(0, 42))];
        nothing(spread(tmp.path(), 64), &virt);
        // A mount point that is gone: nothing, and no error.
        let gone = [(tmp.path().join("gone"), dev(7, 0))];
        nothing(spread(&tmp.path().join("gone"), 64), &gone);
    }

    /// An entry that is itself a mount point (a directory to walk on a
    /// volume of its own) is still looked at when its parent's
    /// filesystem is read ahead.
    #[test]
    fn a_mount_point_in_the_list_is_on_its_own_filesystem() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let mounts = [
            (tmp.path().to_path_buf(), dev(7, 0)),
            (data.clone(), dev(7, 1)),
        ];
        let mut paths = spread(tmp.path(), LIST_DIRECTORIES);
        paths.push(data.clone());
        let listed = listed_filesystems(paths, &mounts);
        assert_eq!(listed.read_ahead.len(), 1, "{listed:?}");
        assert_eq!(listed.to_look_at, [data]);
    }

    #[test]
    fn relative_paths_count_from_the_working_directory() {
        let cwd = std::env::current_dir().unwrap();
        let meta = std::fs::metadata(&cwd).unwrap();
        let mounts = [(cwd.clone(), dev(7, 0))];
        let relative: Vec<PathBuf> = (0..LIST_DIRECTORIES)
            .map(|i| PathBuf::from(format!("d{i}/f")))
            .collect();
        let listed = listed_filesystems(relative, &mounts);
        assert!(listed.to_look_at.is_empty(), "{listed:?}");
        assert_eq!(listed.read_ahead, [(meta.dev(), meta.ino())]);
    }
}
