//! FUSE adapter: exposes a [`LazyVolume`] as one read-only file (`disk.img`)
//! plus a read-only `.control/stats` JSON file, using the `fuser` crate.
//!
//! It owns only the translation between kernel requests and the lazy-volume
//! model. Reads that can be served at once (every chunk hydrated, or a failed
//! chunk) are answered on the FUSE dispatcher thread; reads that need a fetch
//! are handed, with their `ReplyData`, to a pool of worker threads so dozens of
//! requests overlap. Files are opened with `FOPEN_DIRECT_IO`: the kernel page
//! cache never sits in front of the image (every read reaches the testbed and
//! is counted), and `O_DIRECT` opens — which `losetup --direct-io=on` needs —
//! are accepted. `FUSE_ASYNC_DIO` plus a raised `max_background` let the kernel
//! keep many asynchronous direct reads (loop device, io_uring) in flight.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, WriteFlags,
};

use crate::lazy::{LazyVolume, ReadError};

/// Inode of the image file.
const INO_IMAGE: INodeNo = INodeNo(2);
/// Inode of the `.control` directory.
const INO_CTL_DIR: INodeNo = INodeNo(3);
/// Inode of `.control/stats`.
const INO_CTL_STATS: INodeNo = INodeNo(4);
/// Name of the control directory in the mount root.
pub const CONTROL_DIR: &str = ".control";
/// Name of the stats file in the control directory.
pub const STATS_FILE: &str = "stats";
/// Attribute / entry cache lifetime: the tree never changes.
const TTL: Duration = Duration::from_secs(3600);

/// Options of the FUSE adapter.
#[derive(Clone, Debug)]
pub struct FsOptions {
    /// Name of the image file in the mount root.
    pub file_name: String,
    /// Worker threads serving reads that need a fetch.
    pub workers: usize,
    /// Kernel `max_background` (asynchronous requests in flight); the
    /// congestion threshold is set to 3/4 of it.
    pub max_background: u16,
}

impl Default for FsOptions {
    fn default() -> Self {
        Self {
            file_name: "disk.img".into(),
            workers: 64,
            max_background: 256,
        }
    }
}

type Job = Box<dyn FnOnce() + Send + 'static>;

/// A fixed pool of threads running queued jobs (blocking reads).
#[derive(Debug)]
struct WorkerPool {
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    handles: Mutex<Vec<JoinHandle<()>>>,
}

impl WorkerPool {
    fn new(n: usize) -> io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let mut handles = Vec::with_capacity(n);
        for i in 0..n.max(1) {
            let rx = Arc::clone(&rx);
            let h = std::thread::Builder::new()
                .name(format!("testbed-io-{i}"))
                .stack_size(256 * 1024)
                .spawn(move || loop {
                    let job = {
                        let guard = rx.lock().unwrap_or_else(|p| p.into_inner());
                        guard.recv()
                    };
                    match job {
                        Ok(job) => job(),
                        Err(mpsc::RecvError) => return,
                    }
                })?;
            handles.push(h);
        }
        Ok(Self {
            tx: Mutex::new(Some(tx)),
            handles: Mutex::new(handles),
        })
    }

    /// Queues a job; gives it back if the pool is shut down.
    fn submit(&self, job: Job) -> Result<(), Job> {
        let guard = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_ref() {
            Some(tx) => tx.send(job).map_err(|mpsc::SendError(job)| job),
            None => Err(job),
        }
    }

    fn shutdown(&self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        let handles = std::mem::take(&mut *self.handles.lock().unwrap_or_else(|p| p.into_inner()));
        for h in handles {
            // A worker that panicked has nothing left to clean up.
            let _ = h.join();
        }
    }
}

/// The FUSE filesystem serving a [`LazyVolume`].
#[derive(Debug)]
pub struct TestbedFs {
    volume: Arc<LazyVolume>,
    pool: WorkerPool,
    opts: FsOptions,
    file_name: OsString,
    uid: u32,
    gid: u32,
    mtime: SystemTime,
    /// Rendered stats per open handle of `.control/stats`.
    stats_bufs: Mutex<HashMap<u64, Arc<Vec<u8>>>>,
    next_fh: AtomicU64,
}

fn errno_of(e: &ReadError) -> Errno {
    Errno::from_i32(e.errno())
}

impl TestbedFs {
    /// Builds the filesystem; `image` is only used for ownership and times.
    pub fn new(volume: Arc<LazyVolume>, image: &Path, opts: FsOptions) -> io::Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(image)?;
        Ok(Self {
            pool: WorkerPool::new(opts.workers.max(volume.config().concurrency))?,
            volume,
            file_name: OsString::from(&opts.file_name),
            opts,
            uid: meta.uid(),
            gid: meta.gid(),
            mtime: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            stats_bufs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
        })
    }

    fn attr(&self, ino: INodeNo) -> Option<FileAttr> {
        let (kind, perm, size, nlink) = match ino {
            INodeNo::ROOT => (FileType::Directory, 0o555, 0, 3),
            INO_CTL_DIR => (FileType::Directory, 0o555, 0, 2),
            INO_IMAGE => (FileType::RegularFile, 0o444, self.volume.size(), 1),
            // Size 0: the content is generated at open and read with direct I/O,
            // which is not limited by i_size.
            INO_CTL_STATS => (FileType::RegularFile, 0o444, 0, 1),
            _ => return None,
        };
        Some(FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: self.mtime,
            mtime: self.mtime,
            ctime: self.mtime,
            crtime: self.mtime,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    fn render_stats(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(&self.volume.stats(true))
            .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}").into_bytes());
        out.push(b'\n');
        out
    }
}

fn slice_at(buf: &[u8], offset: u64, size: u32) -> &[u8] {
    let start = usize::try_from(offset).unwrap_or(usize::MAX).min(buf.len());
    let end = start.saturating_add(size as usize).min(buf.len());
    &buf[start..end]
}

impl Filesystem for TestbedFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        if let Err(missing) = config.add_capabilities(InitFlags::FUSE_ASYNC_DIO) {
            eprintln!("prewarm-testbed: kernel lacks {missing:?}; async direct I/O disabled");
        }
        let bg = self.opts.max_background.max(1);
        // Both setters only fail for 0, which `max(1)` rules out.
        let _ = config.set_max_background(bg);
        let _ = config.set_congestion_threshold((u32::from(bg) * 3 / 4).max(1) as u16);
        Ok(())
    }

    fn destroy(&mut self) {
        self.pool.shutdown();
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let ino = match parent {
            INodeNo::ROOT if name == self.file_name.as_os_str() => Some(INO_IMAGE),
            INodeNo::ROOT if name == CONTROL_DIR => Some(INO_CTL_DIR),
            INO_CTL_DIR if name == STATS_FILE => Some(INO_CTL_STATS),
            _ => None,
        };
        match ino.and_then(|i| self.attr(i)) {
            Some(attr) => reply.entry(&TTL, &attr, Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(Errno::EROFS);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & libc::O_TRUNC != 0 {
            reply.error(Errno::EROFS);
            return;
        }
        match ino {
            INO_IMAGE => reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO),
            INO_CTL_STATS => {
                let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
                let buf = Arc::new(self.render_stats());
                self.stats_bufs
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(fh, buf);
                reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO);
            }
            INodeNo::ROOT | INO_CTL_DIR => reply.error(Errno::EISDIR),
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match ino {
            INO_IMAGE => {
                let len = size as usize;
                // Replies are written straight from the volume's read buffer.
                let mut slot = Some(reply);
                let send = |d: &[u8]| slot.take().map(|r| r.data(d));
                match self.volume.try_read_hot_with(offset, len, send) {
                    Ok(Ok(_)) => return,
                    Ok(Err(e)) => {
                        if let Some(r) = slot.take() {
                            r.error(errno_of(&e));
                        }
                        return;
                    }
                    Err(_) => {}
                }
                let Some(reply) = slot else { return };
                let volume = Arc::clone(&self.volume);
                let job: Job = Box::new(move || {
                    let mut slot = Some(reply);
                    let send = |d: &[u8]| slot.take().map(|r| r.data(d));
                    if let Err(e) = volume.read_with(offset, len, send) {
                        if let Some(r) = slot.take() {
                            r.error(errno_of(&e));
                        }
                    }
                });
                if let Err(job) = self.pool.submit(job) {
                    // Shutting down: serve on this thread rather than drop the reply.
                    job();
                }
            }
            INO_CTL_STATS => {
                let buf = self
                    .stats_bufs
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&fh.0)
                    .cloned();
                match buf {
                    Some(buf) => reply.data(slice_at(&buf, offset, size)),
                    None => reply.error(Errno::EBADF),
                }
            }
            INodeNo::ROOT | INO_CTL_DIR => reply.error(Errno::EISDIR),
            _ => reply.error(Errno::ENOENT),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if ino == INO_CTL_STATS {
            self.stats_bufs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&fh.0);
        }
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let entries: Vec<(INodeNo, FileType, &OsStr)> = match ino {
            INodeNo::ROOT => vec![
                (INodeNo::ROOT, FileType::Directory, OsStr::new(".")),
                (INodeNo::ROOT, FileType::Directory, OsStr::new("..")),
                (INO_IMAGE, FileType::RegularFile, self.file_name.as_os_str()),
                (INO_CTL_DIR, FileType::Directory, OsStr::new(CONTROL_DIR)),
            ],
            INO_CTL_DIR => vec![
                (INO_CTL_DIR, FileType::Directory, OsStr::new(".")),
                (INodeNo::ROOT, FileType::Directory, OsStr::new("..")),
                (INO_CTL_STATS, FileType::RegularFile, OsStr::new(STATS_FILE)),
            ],
            _ => {
                reply.error(Errno::ENOTDIR);
                return;
            }
        };
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(skip) {
            if reply.add(ino, (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let blocks = self.volume.size().div_ceil(4096);
        reply.statfs(blocks, 0, 0, 4, 0, 4096, 255, 4096);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, mask: fuser::AccessFlags, reply: ReplyEmpty) {
        if mask.contains(fuser::AccessFlags::W_OK) {
            reply.error(Errno::EROFS);
        } else {
            reply.ok();
        }
    }
}
