//! The shared-library closure (`--with-libs`): for an ELF executable or
//! library, the files the dynamic loader maps before its first instruction
//! runs: its interpreter (`PT_INTERP`) and its `DT_NEEDED` libraries,
//! recursively, found as glibc's loader finds them; for a `#!` script, its
//! interpreter and the interpreter's closure.
//!
//! What a node reads at boot is mostly this: kubelet, containerd and the CNI
//! plugins are a few files, their libraries many more, and nobody lists
//! those by hand. The search follows glibc's `_dl_map_object`:
//!
//! 1. a name already loaded (requested earlier under that name, or the
//!    `DT_SONAME` of a loaded object, the interpreter's included) is not
//!    searched again; a name with a `/` is a path;
//! 2. when the requesting object has no `DT_RUNPATH`: the `DT_RPATH` of the
//!    requesting object, then of the object that loaded it, and so on up to
//!    the executable (an object with a `DT_RUNPATH` has no `DT_RPATH`
//!    for this, as in glibc);
//! 3. the requesting object's own `DT_RUNPATH` (it applies to its direct
//!    `DT_NEEDED` only);
//! 4. `/etc/ld.so.cache` ([`super::ld_cache`]), the entries of the
//!    requester's ABI;
//! 5. the built-in directories: the union of Debian's (the multiarch
//!    `/lib/<triplet>`, `/usr/lib/<triplet>`, then `/lib`, `/usr/lib`) and
//!    Fedora's and Amazon Linux's (`/lib64`, `/usr/lib64` for 64-bit), since
//!    an image's loader cannot be asked. Steps 4 and 5 are skipped (4 for
//!    the built-in directories only) for a requester flagged
//!    `DF_1_NODEFLIB`.
//!
//! In every directory a candidate of another ELF class, byte order or
//! machine is skipped, as the loader skips it. `$ORIGIN` (and `${ORIGIN}`)
//! expands to the directory of the object: the executable's real path, a
//! library's path as found. Breadth-first order and the "already loaded"
//! rule make the answer the loader's when two objects' search paths
//! disagree.
//!
//! Not followed, by design or because they cannot be known at image
//! build time: `LD_LIBRARY_PATH` and `LD_PRELOAD` (the boot environment
//! sets neither), `/etc/ld.so.preload`, libraries opened later with
//! `dlopen` (NSS modules, plugins: list them), `$LIB` and `$PLATFORM` in
//! search paths (a path element using them is skipped), relative and empty
//! search path elements (relative to the working directory at run time),
//! and the CPU-dependent `glibc-hwcaps/` subdirectories and legacy hwcap
//! subdirectories (`tls/`, `x86_64/`), which no mainstream distribution
//! ships libraries in. A `#!` line's interpreter is taken as written:
//! `#!/usr/bin/env python3` adds `env`, not `python3`.
//!
//! Under an image root (`plan --root`), every path (the cache, `$ORIGIN`
//! expansions, symlinks met on the way) resolves inside the root with the
//! collector's `resolve_in_root`: nothing of the build host is read.
//!
//! Files are untrusted: only the ELF header, program headers, dynamic
//! segment and the few strings it names are read (with `pread`, through
//! the `object` crate, sizes checked before each read and at most
//! [`MAX_ELF_READ`] bytes a file), so a 2 GB binary costs a few KiB; a file
//! that is not ELF (nor `#!`) is simply not expanded, a malformed one is a
//! problem naming it, and the closure is bounded ([`MAX_OBJECTS`],
//! [`MAX_SCRIPT_DEPTH`]).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use object::elf;
use object::read::elf::{Dyn as _, FileHeader, ProgramHeader as _};
use object::read::{ReadCache, ReadCacheOps, ReadRef};
use object::Endianness;

use super::ld_cache::{self, CacheAbi, LdCache};
use super::resolve_in_root;
use crate::input_file::InputError;

/// Most bytes read from one file to parse it.
pub(crate) const MAX_ELF_READ: u64 = 4 << 20;
/// Largest program header table read (real ones are under 1 KiB).
const MAX_PROGRAM_HEADERS_BYTES: u64 = 64 << 10;
/// Largest dynamic segment read (real ones are a few KiB).
const MAX_DYNAMIC_BYTES: u64 = 1 << 20;
/// Longest interpreter path (`PATH_MAX`).
const MAX_INTERP_BYTES: u64 = 4096;
/// Most objects in one closure (the largest real ones have a few hundred).
pub(crate) const MAX_OBJECTS: usize = 1024;
/// Most `#!` interpreters followed in a chain (the kernel's limit).
pub(crate) const MAX_SCRIPT_DEPTH: usize = 4;
/// The kernel reads this much of a script for its `#!` line.
const SHEBANG_BYTES: usize = 256;

/// An ELF object's ABI: what a library must match to be loaded with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Abi {
    class64: bool,
    big_endian: bool,
    machine: u16,
}

/// What the loader needs to know of one ELF object.
#[derive(Debug, Default)]
pub(crate) struct ElfObject {
    abi: Option<Abi>,
    interpreter: Option<PathBuf>,
    needed: Vec<Vec<u8>>,
    soname: Option<Vec<u8>>,
    rpath: Option<Vec<u8>>,
    runpath: Option<Vec<u8>>,
    nodeflib: bool,
}

/// What a file is to the loader and the kernel.
#[derive(Debug)]
enum Parsed {
    /// A loadable ELF object (`ET_EXEC` or `ET_DYN`).
    Elf(Arc<ElfObject>),
    /// A `#!` script and its interpreter.
    Script(PathBuf),
    /// Anything else (data, an ELF relocatable or core file): nothing to
    /// add.
    Other,
    /// ELF, but broken: why.
    Malformed(String),
}

/// A file the closure adds: its real path (on the host: under the root
/// when there is one) and its `stat`.
#[derive(Debug)]
pub(crate) struct Needed {
    pub path: PathBuf,
    pub meta: std::fs::Metadata,
}

/// Something the closure could not complete: the file concerned (a real
/// path) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    pub path: PathBuf,
    pub message: String,
}

/// The closure of one file.
#[derive(Debug, Default)]
pub(crate) struct Closure {
    /// What it needs, each file once, the file itself excluded.
    pub files: Vec<Needed>,
    pub problems: Vec<Problem>,
}

/// A file opened for the closure: the path the loader would know it by
/// (the image's path under a root) and its real host path.
struct Opened {
    image: PathBuf,
    host: PathBuf,
    file: File,
    meta: std::fs::Metadata,
}

impl Opened {
    fn id(&self) -> (u64, u64) {
        (self.meta.dev(), self.meta.ino())
    }
}

/// One object of a closure being built, as the loader's link map holds it.
struct Loaded {
    image: PathBuf,
    host: PathBuf,
    meta: std::fs::Metadata,
    object: Arc<ElfObject>,
    /// The object whose `DT_NEEDED` brought it in (none: the executable,
    /// the interpreter).
    loader: Option<usize>,
    /// Names it answers to: those it was requested by, and its soname.
    names: Vec<Vec<u8>>,
}

impl Loaded {
    fn id(&self) -> (u64, u64) {
        (self.meta.dev(), self.meta.ino())
    }
}

/// Finds shared-library closures, as glibc's loader would on the host or,
/// with a root, on the image mounted there. Shared by the collector's
/// threads: parsed objects and the loader cache are read once.
pub(crate) struct LibraryResolver {
    root: Option<PathBuf>,
    /// The loader cache, read on first need (absent: `None`).
    ld_cache: OnceLock<Result<Option<LdCache>, String>>,
    ld_cache_reported: AtomicBool,
    /// Parsed files by (device, inode).
    parsed: Mutex<HashMap<(u64, u64), Arc<Parsed>>>,
}

impl LibraryResolver {
    /// A resolver for the host, or for the image whose root is `root`.
    pub(crate) fn new(root: Option<PathBuf>) -> Self {
        LibraryResolver {
            root,
            ld_cache: OnceLock::new(),
            ld_cache_reported: AtomicBool::new(false),
            parsed: Mutex::new(HashMap::new()),
        }
    }

    /// The closure of the regular file at `path` (a host path, under the
    /// root when there is one): empty for a file that is neither ELF nor a
    /// script.
    pub(crate) fn closure(&self, path: &Path) -> Closure {
        let mut out = Closure::default();
        self.closure_at_depth(path, 0, &mut out);
        out
    }

    fn closure_at_depth(&self, path: &Path, depth: usize, out: &mut Closure) {
        // The executable's $ORIGIN is its real directory (the kernel's
        // /proc/self/exe), so it is opened by its resolved path.
        let opened = match self.open_image(&self.image_of(path)) {
            Ok(mut o) => {
                o.image = self.image_of(&o.host);
                o
            }
            Err(e) => {
                out.problem(path, format!("cannot open for its libraries: {e}"));
                return;
            }
        };
        match &*self.parse(&opened) {
            Parsed::Elf(object) => self.load(opened, object.clone(), out),
            Parsed::Script(interpreter) => {
                if depth >= MAX_SCRIPT_DEPTH {
                    out.problem(
                        &opened.host,
                        format!(
                            "more than {MAX_SCRIPT_DEPTH} nested #! interpreters: not followed"
                        ),
                    );
                    return;
                }
                if !interpreter.is_absolute() {
                    out.problem(
                        &opened.host,
                        format!(
                            "#! interpreter {} is relative (to the working directory at run time): not followed",
                            interpreter.display()
                        ),
                    );
                    return;
                }
                match self.open_image(interpreter) {
                    Ok(interp) => {
                        let host = interp.host.clone();
                        out.add(interp);
                        self.closure_at_depth(&host, depth + 1, out);
                    }
                    Err(e) => out.problem(
                        &opened.host,
                        format!("#! interpreter {}: {e}", interpreter.display()),
                    ),
                }
            }
            Parsed::Other => {}
            Parsed::Malformed(why) => out.problem(&opened.host, format!("malformed ELF: {why}")),
        }
    }

    /// Load `main` and everything it needs, breadth first, as the loader
    /// does; every object but `main` goes to `out`.
    fn load(&self, main: Opened, object: Arc<ElfObject>, out: &mut Closure) {
        let main_host = main.host.clone();
        let mut loaded = vec![Loaded {
            names: object.soname.iter().cloned().collect(),
            image: main.image,
            host: main.host,
            meta: main.meta,
            object: object.clone(),
            loader: None,
        }];
        // A relative PT_INTERP is opened from the working directory at run
        // time: unknown here.
        let interp = object.interpreter.as_ref().filter(|i| {
            if !i.is_absolute() {
                out.problem(
                    &loaded[0].host,
                    format!("relative interpreter {}: not followed", i.display()),
                );
            }
            i.is_absolute()
        });
        if let Some(interp) = interp {
            match self.open_image(interp) {
                Ok(o) => match &*self.parse(&o) {
                    Parsed::Elf(interp_object) => {
                        if o.id() != loaded[0].id() {
                            let mut names = vec![interp.as_os_str().as_bytes().to_vec()];
                            names.extend(interp_object.soname.iter().cloned());
                            loaded.push(Loaded {
                                image: o.image,
                                host: o.host,
                                meta: o.meta,
                                object: interp_object.clone(),
                                loader: None,
                                names,
                            });
                        }
                    }
                    Parsed::Malformed(why) => {
                        out.problem(&o.host, format!("malformed ELF interpreter: {why}"))
                    }
                    _ => out.problem(&o.host, "interpreter is not an ELF object"),
                },
                Err(e) => out.problem(&main_host, format!("interpreter {}: {e}", interp.display())),
            }
        }
        let mut next = 0;
        while next < loaded.len() {
            let requester = loaded[next].object.clone();
            for name in &requester.needed {
                if loaded.iter().any(|l| l.names.contains(name)) {
                    continue;
                }
                if loaded.len() >= MAX_OBJECTS {
                    out.problem(
                        &main_host,
                        format!("more than {MAX_OBJECTS} libraries: the rest are not followed"),
                    );
                    out.add_loaded(loaded);
                    return;
                }
                let Some((found, object)) = self.search(name, next, &loaded, out) else {
                    let shown = String::from_utf8_lossy(name);
                    let message = if next == 0 {
                        format!("needs {shown}: not found")
                    } else {
                        format!(
                            "needs {shown} (for {}): not found",
                            loaded[next].host.display()
                        )
                    };
                    out.problem(&main_host, message);
                    continue;
                };
                let id = found.id();
                match loaded.iter_mut().find(|l| l.id() == id) {
                    // Another name for a file already loaded.
                    Some(l) => l.names.push(name.clone()),
                    None => {
                        let mut names = vec![name.clone()];
                        names.extend(object.soname.iter().cloned());
                        loaded.push(Loaded {
                            image: found.image,
                            host: found.host,
                            meta: found.meta,
                            object,
                            loader: Some(next),
                            names,
                        });
                    }
                }
            }
            next += 1;
        }
        out.add_loaded(loaded);
    }

    /// Find the library `name` needed by `loaded[requester]` (steps 1 to 5
    /// of the module doc).
    fn search(
        &self,
        name: &[u8],
        requester: usize,
        loaded: &[Loaded],
        out: &mut Closure,
    ) -> Option<(Opened, Arc<ElfObject>)> {
        let req = &loaded[requester];
        let abi = req.object.abi;
        let origin = req.image.parent().unwrap_or(Path::new("/"));
        if name.contains(&b'/') {
            let path = PathBuf::from(OsStr::from_bytes(&expand_origin(name, origin)?));
            return path
                .is_absolute()
                .then(|| self.candidate(&path, abi, out))
                .flatten();
        }
        if req.object.runpath.is_none() {
            let mut at = Some(requester);
            while let Some(i) = at {
                let l = &loaded[i];
                if let Some(rpath) = &l.object.rpath {
                    let origin = l.image.parent().unwrap_or(Path::new("/"));
                    if let Some(found) =
                        self.search_dirs(search_path(rpath, origin), name, abi, out)
                    {
                        return Some(found);
                    }
                }
                at = l.loader;
            }
        }
        if let Some(runpath) = &req.object.runpath {
            if let Some(found) = self.search_dirs(search_path(runpath, origin), name, abi, out) {
                return Some(found);
            }
        }
        let defaults = default_dirs(abi);
        if let (Some(cache), Some(abi)) = (self.ld_cache(out), abi) {
            let cache_abi = CacheAbi {
                class64: abi.class64,
                machine: abi.machine,
            };
            for path in cache.lookup(name, cache_abi) {
                // DF_1_NODEFLIB refuses the built-in directories, even
                // through the cache.
                if req.object.nodeflib
                    && path
                        .parent()
                        .is_some_and(|dir| defaults.iter().any(|d| Path::new(d) == dir))
                {
                    continue;
                }
                if let Some(found) = self.candidate(path, Some(abi), out) {
                    return Some(found);
                }
            }
        }
        if req.object.nodeflib {
            return None;
        }
        let dirs = defaults.iter().map(PathBuf::from).collect();
        self.search_dirs(dirs, name, abi, out)
    }

    /// The first of `dir/name` for `dir` in `dirs` that is a library of
    /// `abi`.
    fn search_dirs(
        &self,
        dirs: Vec<PathBuf>,
        name: &[u8],
        abi: Option<Abi>,
        out: &mut Closure,
    ) -> Option<(Opened, Arc<ElfObject>)> {
        dirs.into_iter()
            .find_map(|dir| self.candidate(&dir.join(OsStr::from_bytes(name)), abi, out))
    }

    /// The library at `path` (an image path), if it exists and matches
    /// `abi`; a malformed one is a problem, and skipped.
    fn candidate(
        &self,
        path: &Path,
        abi: Option<Abi>,
        out: &mut Closure,
    ) -> Option<(Opened, Arc<ElfObject>)> {
        let opened = self.open_image(path).ok()?;
        match &*self.parse(&opened) {
            Parsed::Elf(object) if object.abi.is_some() && object.abi == abi => {
                let object = object.clone();
                Some((opened, object))
            }
            Parsed::Malformed(why) => {
                out.problem(&opened.host, format!("malformed ELF: {why}"));
                None
            }
            _ => None,
        }
    }

    /// The loader cache (read on first need); a cache that cannot be read
    /// is a problem once.
    fn ld_cache(&self, out: &mut Closure) -> Option<&LdCache> {
        let path = self.host_path(Path::new("/etc/ld.so.cache"));
        let cache = self.ld_cache.get_or_init(|| {
            let real = match &self.root {
                Some(root) => resolve_in_root(&path, root),
                None => Ok(path.clone()),
            };
            let bytes = match real.map_err(InputError::Io).and_then(|real| {
                crate::input_file::read_untrusted(&real, ld_cache::MAX_LD_CACHE_BYTES)
            }) {
                Ok(bytes) => bytes,
                // No cache: the loader searches its directories.
                Err(InputError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Ok(None)
                }
                Err(e) => return Err(e.to_string()),
            };
            ld_cache::parse(&bytes).map(Some).map_err(|e| e.to_string())
        });
        match cache {
            Ok(cache) => cache.as_ref(),
            Err(e) => {
                if !self.ld_cache_reported.swap(true, Ordering::Relaxed) {
                    out.problem(&path, format!("loader cache not used: {e}"));
                }
                None
            }
        }
    }

    /// `path` (an image path) on the host: under the root when there is
    /// one, symlinks not resolved.
    fn host_path(&self, path: &Path) -> PathBuf {
        match &self.root {
            Some(root) => root.join(path.strip_prefix("/").unwrap_or(path)),
            None => path.to_path_buf(),
        }
    }

    /// The image's path for the host path `path`.
    fn image_of(&self, path: &Path) -> PathBuf {
        match &self.root {
            Some(root) => match path.strip_prefix(root) {
                Ok(rel) => Path::new("/").join(rel),
                Err(_) => path.to_path_buf(),
            },
            None => path.to_path_buf(),
        }
    }

    /// Open the regular file the image path `path` names, symlinks resolved
    /// (inside the root when there is one), without blocking on a FIFO.
    fn open_image(&self, path: &Path) -> std::io::Result<Opened> {
        let host = match &self.root {
            Some(root) => resolve_in_root(&self.host_path(path), root)?,
            None => std::fs::canonicalize(path)?,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
            .open(&host)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(std::io::Error::other(format!(
                "not a regular file (a {})",
                super::describe_type(&meta.file_type())
            )));
        }
        Ok(Opened {
            image: path.to_path_buf(),
            host,
            file,
            meta,
        })
    }

    /// What `opened` is, parsed once per file.
    fn parse(&self, opened: &Opened) -> Arc<Parsed> {
        let id = opened.id();
        if let Some(p) = self.lock_parsed().get(&id) {
            return p.clone();
        }
        let parsed = Arc::new(parse_file(&opened.file, opened.meta.len()));
        self.lock_parsed().insert(id, parsed.clone());
        parsed
    }

    fn lock_parsed(&self) -> std::sync::MutexGuard<'_, HashMap<(u64, u64), Arc<Parsed>>> {
        // A panic elsewhere cannot leave the map half-written: use it.
        self.parsed.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Closure {
    fn problem(&mut self, path: &Path, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.to_path_buf(),
            message: message.into(),
        });
    }

    fn add(&mut self, opened: Opened) {
        self.files.push(Needed {
            path: opened.host,
            meta: opened.meta,
        });
    }

    /// Everything loaded but the executable (the first).
    fn add_loaded(&mut self, loaded: Vec<Loaded>) {
        self.files
            .extend(loaded.into_iter().skip(1).map(|l| Needed {
                path: l.host,
                meta: l.meta,
            }));
    }
}

/// The built-in search directories for `abi` (see the module doc).
fn default_dirs(abi: Option<Abi>) -> &'static [&'static str] {
    const EM_386: u16 = 3;
    const EM_X86_64: u16 = 62;
    const EM_AARCH64: u16 = 183;
    match abi.map(|a| (a.class64, a.machine)) {
        Some((true, EM_X86_64)) => &[
            "/lib/x86_64-linux-gnu",
            "/usr/lib/x86_64-linux-gnu",
            "/lib64",
            "/usr/lib64",
            "/lib",
            "/usr/lib",
        ],
        Some((true, EM_AARCH64)) => &[
            "/lib/aarch64-linux-gnu",
            "/usr/lib/aarch64-linux-gnu",
            "/lib64",
            "/usr/lib64",
            "/lib",
            "/usr/lib",
        ],
        Some((false, EM_386)) => &[
            "/lib/i386-linux-gnu",
            "/usr/lib/i386-linux-gnu",
            "/lib",
            "/usr/lib",
        ],
        Some((false, EM_X86_64)) => &[
            "/lib/x86_64-linux-gnux32",
            "/usr/lib/x86_64-linux-gnux32",
            "/libx32",
            "/usr/libx32",
        ],
        Some((true, _)) => &["/lib64", "/usr/lib64", "/lib", "/usr/lib"],
        _ => &["/lib", "/usr/lib"],
    }
}

/// The directories of a `DT_RPATH`/`DT_RUNPATH` value, `$ORIGIN` expanded;
/// elements naming `$LIB` or `$PLATFORM`, relative and empty ones are
/// dropped (see the module doc).
fn search_path(value: &[u8], origin: &Path) -> Vec<PathBuf> {
    value
        .split(|&b| b == b':')
        .filter_map(|element| expand_origin(element, origin))
        .map(|e| PathBuf::from(OsStr::from_bytes(&e)))
        .filter(|p| p.is_absolute())
        .collect()
}

/// `text` with `$ORIGIN` and `${ORIGIN}` replaced by `origin`; `None` when
/// it uses another dynamic string token (`$LIB`, `$PLATFORM`). Like glibc,
/// a name followed by an identifier character (`$ORIGINAL`) is no token and
/// stays as written.
fn expand_origin(text: &[u8], origin: &Path) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.iter().position(|&b| b == b'$') {
        out.extend_from_slice(&rest[..at]);
        let after = &rest[at + 1..];
        match token(after) {
            Some((b"ORIGIN", len)) => {
                out.extend_from_slice(origin.as_os_str().as_bytes());
                rest = &after[len..];
            }
            Some(_) => return None,
            None => {
                out.push(b'$');
                rest = after;
            }
        }
    }
    out.extend_from_slice(rest);
    Some(out)
}

/// The dynamic string token at the start of `text` (just after a `$`) and
/// the bytes it spans.
fn token(text: &[u8]) -> Option<(&'static [u8], usize)> {
    let (curly, body) = match text.strip_prefix(b"{") {
        Some(body) => (true, body),
        None => (false, text),
    };
    let names: [&'static [u8]; 3] = [b"ORIGIN", b"LIB", b"PLATFORM"];
    names.into_iter().find_map(|name| {
        let after = body.strip_prefix(name)?;
        if curly {
            after.starts_with(b"}").then_some((name, name.len() + 2))
        } else {
            let ident = after
                .first()
                .is_some_and(|&b| b.is_ascii_alphanumeric() || b == b'_');
            (!ident).then_some((name, name.len()))
        }
    })
}

/// A file read with `pread`, at most [`MAX_ELF_READ`] bytes in all: the
/// `object` crate's window on it.
struct BoundedReader<'a> {
    file: &'a File,
    len: u64,
    pos: u64,
    budget: u64,
}

impl ReadCacheOps for BoundedReader<'_> {
    fn len(&mut self) -> Result<u64, ()> {
        Ok(self.len)
    }

    fn seek(&mut self, pos: u64) -> Result<u64, ()> {
        self.pos = pos;
        Ok(pos)
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<usize, ()> {
        let want = buf
            .len()
            .min(usize::try_from(self.budget).unwrap_or(usize::MAX));
        if want == 0 && !buf.is_empty() {
            return Err(());
        }
        let n = self
            .file
            .read_at(&mut buf[..want], self.pos)
            .map_err(|_| ())?;
        self.pos += n as u64;
        self.budget -= n as u64;
        Ok(n)
    }

    fn read_exact(&mut self, mut buf: &mut [u8]) -> Result<(), ()> {
        while !buf.is_empty() {
            let n = self.read(buf)?;
            if n == 0 {
                return Err(());
            }
            buf = &mut buf[n..];
        }
        Ok(())
    }
}

/// Read what the closure needs of `file` (`len` bytes long).
fn parse_file(file: &File, len: u64) -> Parsed {
    let mut head = [0u8; SHEBANG_BYTES];
    let mut got = 0;
    while got < head.len() {
        match file.read_at(&mut head[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Parsed::Malformed(format!("reading its header: {e}")),
        }
    }
    let head = &head[..got];
    if let Some(line) = head.strip_prefix(b"#!") {
        return parse_shebang(line);
    }
    if !head.starts_with(&elf::ELFMAG) {
        return Parsed::Other;
    }
    let data = ReadCache::new(BoundedReader {
        file,
        len,
        pos: 0,
        budget: MAX_ELF_READ,
    });
    let class = head.get(4).copied();
    let parsed = if class == Some(elf::ELFCLASS32.0) {
        parse_elf::<elf::FileHeader32<Endianness>>(&data)
    } else if class == Some(elf::ELFCLASS64.0) {
        parse_elf::<elf::FileHeader64<Endianness>>(&data)
    } else {
        Err("unknown ELF class".to_string())
    };
    match parsed {
        Ok(Some(object)) => Parsed::Elf(Arc::new(object)),
        Ok(None) => Parsed::Other,
        Err(why) => Parsed::Malformed(why),
    }
}

/// The interpreter of a `#!` line (`line`: what follows `#!`), as the
/// kernel reads it: blanks skipped, then up to a blank or the line's end.
fn parse_shebang(line: &[u8]) -> Parsed {
    let line = line.split(|&b| b == b'\n').next().unwrap_or_default();
    let start = line.iter().position(|&b| b != b' ' && b != b'\t');
    let Some(start) = start else {
        return Parsed::Other;
    };
    let interp = &line[start..];
    let end = interp
        .iter()
        .position(|&b| matches!(b, b' ' | b'\t' | b'\0' | b'\r'))
        .unwrap_or(interp.len());
    Parsed::Script(PathBuf::from(OsStr::from_bytes(&interp[..end])))
}

/// Parse an ELF file's loader information; `None` for an ELF file the
/// loader does not load (relocatable, core).
fn parse_elf<Elf>(data: &ReadCache<BoundedReader<'_>>) -> Result<Option<ElfObject>, String>
where
    Elf: FileHeader<Endian = Endianness>,
{
    let e = |what: &str, err: object::read::Error| format!("{what}: {err}");
    let header = Elf::parse(data).map_err(|err| e("header", err))?;
    let endian = header.endian().map_err(|err| e("header", err))?;
    let e_type = header.e_type(endian);
    if e_type != elf::ET_EXEC && e_type != elf::ET_DYN {
        return Ok(None);
    }
    let mut object = ElfObject {
        abi: Some(Abi {
            class64: header.is_class_64(),
            big_endian: header.is_big_endian(),
            machine: header.e_machine(endian).0,
        }),
        ..ElfObject::default()
    };
    // Sizes are checked before anything is read: a forged count must not
    // make a large read (or allocation).
    let phnum = header
        .phnum(endian, data)
        .map_err(|err| e("program headers", err))?;
    let table = u64::from(phnum) * u64::from(header.e_phentsize(endian));
    if table > MAX_PROGRAM_HEADERS_BYTES {
        return Err(format!("program header table of {table} bytes"));
    }
    let segments = header
        .program_headers(endian, data)
        .map_err(|err| e("program headers", err))?;
    let mut dynamic = None;
    for segment in segments {
        let p_type = segment.p_type(endian);
        let size: u64 = segment.p_filesz(endian).into();
        if p_type == elf::PT_INTERP {
            if size > MAX_INTERP_BYTES {
                return Err(format!("PT_INTERP of {size} bytes"));
            }
            let path = segment
                .interpreter(endian, data)
                .map_err(|err| e("PT_INTERP", err))?
                .unwrap_or_default();
            object.interpreter = Some(PathBuf::from(OsStr::from_bytes(path)));
        } else if p_type == elf::PT_DYNAMIC && dynamic.is_none() {
            if size > MAX_DYNAMIC_BYTES {
                return Err(format!("PT_DYNAMIC of {size} bytes"));
            }
            dynamic = segment
                .dynamic(endian, data)
                .map_err(|err| e("PT_DYNAMIC", err))?;
        }
    }
    let Some(dynamic) = dynamic else {
        // Statically linked: nothing to load (but maybe an interpreter).
        return Ok(Some(object));
    };
    let (mut strtab, mut strsz) = (None, None);
    let mut strings = Vec::new();
    for d in dynamic {
        let tag = d.tag(endian);
        let val = d.val(endian);
        match tag {
            elf::DT_NULL => break,
            elf::DT_STRTAB => strtab = Some(val),
            elf::DT_STRSZ => strsz = Some(val),
            elf::DT_FLAGS_1 => {
                object.nodeflib = val & elf::DF_1_NODEFLIB.0 != 0;
            }
            elf::DT_NEEDED | elf::DT_SONAME | elf::DT_RPATH | elf::DT_RUNPATH => {
                strings.push((tag, val))
            }
            _ => {}
        }
    }
    if strings.is_empty() {
        return Ok(Some(object));
    }
    let (Some(strtab), Some(strsz)) = (strtab, strsz) else {
        return Err("DT_NEEDED without DT_STRTAB and DT_STRSZ".into());
    };
    // DT_STRTAB is an address: the file offset is where a PT_LOAD
    // segment maps it.
    let table = segments
        .iter()
        .filter(|s| s.p_type(endian) == elf::PT_LOAD)
        .find_map(|s| {
            let vaddr: u64 = s.p_vaddr(endian).into();
            let filesz: u64 = s.p_filesz(endian).into();
            let offset: u64 = s.p_offset(endian).into();
            let within = strtab.checked_sub(vaddr)?;
            (within < filesz && strsz <= filesz - within).then_some(offset.checked_add(within)?)
        })
        .ok_or_else(|| "DT_STRTAB outside every PT_LOAD segment".to_string())?;
    let end = table
        .checked_add(strsz)
        .ok_or_else(|| "DT_STRSZ overflows".to_string())?;
    for (tag, at) in strings {
        let start = table
            .checked_add(at)
            .filter(|&s| s < end)
            .ok_or_else(|| format!("dynamic string at {at} outside its table of {strsz} bytes"))?;
        let s = data
            .read_bytes_at_until(start..end, 0)
            .map_err(|_| format!("dynamic string at {at}: unterminated or unreadable"))?
            .to_vec();
        match tag {
            elf::DT_NEEDED => object.needed.push(s),
            elf::DT_SONAME => object.soname = Some(s),
            elf::DT_RPATH => object.rpath = Some(s),
            _ => object.runpath = Some(s),
        }
    }
    // As glibc: an object with DT_RUNPATH has no DT_RPATH.
    if object.runpath.is_some() {
        object.rpath = None;
    }
    Ok(Some(object))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::process::Command;

    use super::*;
    use crate::engine::StopSignal;
    use crate::error::Origin;
    use crate::map::pool::MetadataPool;
    use crate::source::{collect, CollectOptions, Collector, SourceEntry};

    /// What `ldd` says `path` loads (real paths; the vDSO, which has no
    /// file, left out), and the names it could not find. Run on the real
    /// path: `ldd` runs the loader on the path given, whose `$ORIGIN` is
    /// then the symlink's directory, where the kernel would use the real
    /// one.
    pub(crate) fn ldd(path: &Path) -> Option<(BTreeSet<PathBuf>, BTreeSet<String>)> {
        let out = Command::new("ldd")
            .arg(std::fs::canonicalize(path).ok()?)
            .env_remove("LD_LIBRARY_PATH")
            .env_remove("LD_PRELOAD")
            .output()
            .ok()?;
        let (mut found, mut missing) = (BTreeSet::new(), BTreeSet::new());
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let line = line.trim();
            let target = match line.split_once(" => ") {
                Some((name, rest)) if rest.starts_with("not found") => {
                    missing.insert(name.to_string());
                    continue;
                }
                Some((_, rest)) => rest,
                None => line,
            };
            let target = target.split(" (").next().unwrap_or_default();
            if target.starts_with('/') {
                found.insert(std::fs::canonicalize(target).ok()?);
            }
        }
        Some((found, missing))
    }

    fn paths(closure: &Closure) -> BTreeSet<PathBuf> {
        closure.files.iter().map(|n| n.path.clone()).collect()
    }

    fn file_names(closure: &Closure) -> BTreeSet<String> {
        closure
            .files
            .iter()
            .map(|n| n.path.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    }

    fn cc(args: &[&str]) {
        let out = Command::new("cc").args(args).output().expect("cc runs");
        assert!(out.status.success(), "cc {args:?}: {out:?}");
    }

    /// In `dir`: `b/libb.so`; `a/liba.so`, which needs libb.so and has no
    /// search path; `wrong/liba.so`, liba.so marked for another machine;
    /// and three executables needing liba.so: `rpath` (DT_RPATH
    /// `$ORIGIN/a:$ORIGIN/b`), `runpath` (the same as DT_RUNPATH) and
    /// `mismatch` (DT_RPATH `$ORIGIN/wrong:$ORIGIN/a:$ORIGIN/b`).
    fn build_test_objects(dir: &Path) {
        let d = |p: &str| dir.join(p).to_str().unwrap().to_string();
        for sub in ["a", "b", "wrong"] {
            std::fs::create_dir(dir.join(sub)).unwrap();
        }
        std::fs::write(dir.join("b.c"), "int b(void) { return 2; }\n").unwrap();
        std::fs::write(
            dir.join("a.c"),
            "int b(void);\nint a(void) { return b(); }\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("main.c"),
            "int a(void);\nint main(void) { return a(); }\n",
        )
        .unwrap();
        cc(&[
            "-shared",
            "-fPIC",
            "-Wl,-soname,libb.so",
            "-o",
            &d("b/libb.so"),
            &d("b.c"),
        ]);
        cc(&[
            "-shared",
            "-fPIC",
            "-Wl,-soname,liba.so",
            "-o",
            &d("a/liba.so"),
            &d("a.c"),
            &format!("-L{}", d("b")),
            "-lb",
        ]);
        let mut wrong = std::fs::read(dir.join("a/liba.so")).unwrap();
        wrong[18..20].copy_from_slice(&183u16.to_le_bytes()); // EM_AARCH64
        std::fs::write(dir.join("wrong/liba.so"), wrong).unwrap();
        for (exe, dtags, path) in [
            ("rpath", "--disable-new-dtags", "$ORIGIN/a:$ORIGIN/b"),
            ("runpath", "--enable-new-dtags", "$ORIGIN/a:$ORIGIN/b"),
            (
                "mismatch",
                "--disable-new-dtags",
                "$ORIGIN/wrong:$ORIGIN/a:$ORIGIN/b",
            ),
        ] {
            cc(&[
                "-o",
                &d(exe),
                &d("main.c"),
                &format!("-L{}", d("a")),
                "-la",
                &format!("-Wl,-rpath-link,{}", d("b")),
                &format!("-Wl,{dtags},-rpath,{path}"),
            ]);
        }
    }

    #[test]
    fn rpath_chains_runpath_stays_direct_and_mismatches_are_skipped_as_ldd_says() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = std::fs::canonicalize(tmp.path()).unwrap();
        build_test_objects(&dir);
        let resolver = LibraryResolver::new(None);
        let libc_and_loader = |c: &Closure| {
            let names = file_names(c);
            names.contains("libc.so.6") && names.iter().any(|n| n.starts_with("ld-linux"))
        };

        // DT_RPATH: the executable's applies to liba's needs too.
        let rpath = resolver.closure(&dir.join("rpath"));
        assert!(rpath.problems.is_empty(), "{:?}", rpath.problems);
        assert!(paths(&rpath).contains(&dir.join("a/liba.so")));
        assert!(paths(&rpath).contains(&dir.join("b/libb.so")));
        assert!(libc_and_loader(&rpath), "{:?}", paths(&rpath));

        // DT_RUNPATH: only for the executable's own DT_NEEDED.
        let runpath = resolver.closure(&dir.join("runpath"));
        assert!(paths(&runpath).contains(&dir.join("a/liba.so")));
        assert!(!paths(&runpath).contains(&dir.join("b/libb.so")));
        assert_eq!(runpath.problems.len(), 1, "{:?}", runpath.problems);
        let problem = &runpath.problems[0];
        assert_eq!(problem.path, dir.join("runpath"));
        assert!(
            problem.message.contains("libb.so") && problem.message.contains("liba.so"),
            "{problem:?}"
        );

        // A library of another machine first in the path: skipped.
        let mismatch = resolver.closure(&dir.join("mismatch"));
        assert!(mismatch.problems.is_empty(), "{:?}", mismatch.problems);
        assert!(paths(&mismatch).contains(&dir.join("a/liba.so")));
        assert!(!paths(&mismatch).contains(&dir.join("wrong/liba.so")));

        // And the loader itself agrees on all three.
        for (exe, closure) in [
            ("rpath", &rpath),
            ("runpath", &runpath),
            ("mismatch", &mismatch),
        ] {
            let Some((found, missing)) = ldd(&dir.join(exe)) else {
                eprintln!("no ldd: the comparison is skipped");
                return;
            };
            assert_eq!(paths(closure), found, "{exe}");
            let expected_missing: BTreeSet<String> = match exe {
                "runpath" => ["libb.so".to_string()].into(),
                _ => BTreeSet::new(),
            };
            assert_eq!(missing, expected_missing, "{exe}");
        }
    }

    /// A copy of `/usr/bin/ls` in an image at `root`, laid out as Fedora
    /// and Amazon Linux do: its libraries in /usr/lib64 under their
    /// sonames, `/lib64 -> /usr/lib64` (absolute), no loader cache.
    /// Returns the sonames of its libraries.
    fn image_with_ls(root: &Path) -> Vec<String> {
        let ls = std::fs::canonicalize("/usr/bin/ls").unwrap();
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::fs::create_dir_all(root.join("usr/lib64")).unwrap();
        std::os::unix::fs::symlink("/usr/lib64", root.join("lib64")).unwrap();
        std::fs::copy(&ls, root.join("usr/bin/ls")).unwrap();
        let host = LibraryResolver::new(None).closure(&ls);
        assert!(host.problems.is_empty(), "{:?}", host.problems);
        let mut sonames = Vec::new();
        for lib in &host.files {
            let file = File::open(&lib.path).unwrap();
            let Parsed::Elf(object) = parse_file(&file, lib.meta.len()) else {
                panic!("{} is not ELF", lib.path.display());
            };
            let soname = String::from_utf8(object.soname.clone().unwrap()).unwrap();
            std::fs::copy(&lib.path, root.join("usr/lib64").join(&soname)).unwrap();
            sonames.push(soname);
        }
        sonames
    }

    #[test]
    fn an_image_root_resolves_everything_inside_it() {
        if !cfg!(target_arch = "x86_64") || !Path::new("/usr/bin/ls").exists() {
            eprintln!("skipped: needs an x86-64 /usr/bin/ls");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(tmp.path()).unwrap().join("image");
        let sonames = image_with_ls(&root);
        let resolver = LibraryResolver::new(Some(root.clone()));
        let closure = resolver.closure(&root.join("usr/bin/ls"));
        assert!(closure.problems.is_empty(), "{:?}", closure.problems);
        let expected: BTreeSet<PathBuf> = sonames
            .iter()
            .map(|s| root.join("usr/lib64").join(s))
            .collect();
        assert_eq!(paths(&closure), expected);

        // A loader cache in the image is used, and its paths resolve in the
        // image too: `..` stops at the root, so the first entry names a file
        // the image lacks and the loader's directories answer instead.
        let selinux = sonames.iter().find(|s| s.starts_with("libselinux"));
        let libc = "libc.so.6";
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("opt/sel")).unwrap();
        let mut entries = vec![(
            0x0303,
            libc,
            "/../../../../../usr/lib/x86_64-linux-gnu/libc.so.6",
            0,
        )];
        if let Some(selinux) = selinux {
            std::fs::copy(
                root.join("usr/lib64").join(selinux),
                root.join("opt/sel").join(selinux),
            )
            .unwrap();
            entries.push((0x0303, selinux, "/opt/sel/LINK", 0));
            std::os::unix::fs::symlink(format!("/opt/sel/{selinux}"), root.join("opt/sel/LINK"))
                .unwrap();
        }
        // Entries are looked up by soname, not by order.
        let cache = crate::source::ld_cache::tests::new_cache(&entries);
        std::fs::write(root.join("etc/ld.so.cache"), cache).unwrap();
        // A library symlinked to an absolute host path is the image's
        // path, which does not exist: not found, never the host's file.
        let pcre = sonames.iter().find(|s| s.starts_with("libpcre"));
        if let Some(pcre) = pcre {
            let lib = root.join("usr/lib64").join(pcre);
            let host_lib = ldd_path_of(pcre);
            std::fs::remove_file(&lib).unwrap();
            std::os::unix::fs::symlink(&host_lib, &lib).unwrap();
        }
        let resolver = LibraryResolver::new(Some(root.clone()));
        let closure = resolver.closure(&root.join("usr/bin/ls"));
        for f in &closure.files {
            assert!(f.path.starts_with(&root), "{} escaped", f.path.display());
        }
        assert!(paths(&closure).contains(&root.join("usr/lib64").join(libc)));
        if let Some(selinux) = selinux {
            assert!(paths(&closure).contains(&root.join("opt/sel").join(selinux)));
        }
        if let Some(pcre) = pcre {
            assert_eq!(closure.problems.len(), 1, "{:?}", closure.problems);
            assert!(closure.problems[0].message.contains(pcre.as_str()));
        }
    }

    /// The host path of the library `soname` (what a symlink in an image
    /// might wrongly point to).
    fn ldd_path_of(soname: &str) -> PathBuf {
        for dir in default_dirs(Some(Abi {
            class64: true,
            big_endian: false,
            machine: 62,
        })) {
            let p = Path::new(dir).join(soname);
            if p.exists() {
                return p;
            }
        }
        PathBuf::from("/usr/lib/x86_64-linux-gnu").join(soname)
    }

    #[test]
    fn a_relative_interpreter_is_a_problem_not_a_lookup() {
        let tmp = tempfile::tempdir().unwrap();
        let d = std::fs::canonicalize(tmp.path()).unwrap();
        std::fs::write(d.join("m.c"), "int main(void) { return 0; }\n").unwrap();
        let exe = d.join("rel");
        cc(&[
            "-o",
            exe.to_str().unwrap(),
            d.join("m.c").to_str().unwrap(),
            "-Wl,--dynamic-linker=lib/ld.so",
        ]);
        let closure = LibraryResolver::new(None).closure(&exe);
        assert_eq!(closure.problems.len(), 1, "{:?}", closure.problems);
        assert!(closure.problems[0]
            .message
            .contains("relative interpreter lib/ld.so"));
        // Its libraries are still found.
        assert!(file_names(&closure).contains("libc.so.6"));
    }

    #[test]
    fn scripts_bring_their_interpreter_and_other_files_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let resolver = LibraryResolver::new(None);
        std::fs::write(d.join("script"), "#! /bin/sh -e\necho hi\n").unwrap();
        let closure = resolver.closure(&d.join("script"));
        assert!(closure.problems.is_empty(), "{:?}", closure.problems);
        let sh = std::fs::canonicalize("/bin/sh").unwrap();
        assert!(paths(&closure).contains(&sh), "{:?}", paths(&closure));
        assert!(file_names(&closure).contains("libc.so.6"));

        std::fs::write(d.join("lost"), "#!/nonexistent/interp\n").unwrap();
        let closure = resolver.closure(&d.join("lost"));
        assert!(closure.files.is_empty());
        assert!(closure.problems[0].message.contains("/nonexistent/interp"));

        // A script whose interpreter is itself: the chain is bounded.
        let looping = d.join("loop");
        std::fs::write(&looping, format!("#!{}\n", looping.display())).unwrap();
        let closure = resolver.closure(&looping);
        assert!(closure.problems[0].message.contains("nested"));

        for (name, bytes) in [
            ("text", &b"just text\n"[..]),
            ("empty", b""),
            ("shebang-only", b"#!   \n"),
            ("elf-magic-only", b"\x7fEL"),
        ] {
            std::fs::write(d.join(name), bytes).unwrap();
            let closure = resolver.closure(&d.join(name));
            assert!(closure.files.is_empty(), "{name}");
            assert!(
                closure.problems.is_empty(),
                "{name}: {:?}",
                closure.problems
            );
        }
    }

    #[test]
    fn malformed_elf_is_a_problem_naming_the_file_never_a_panic() {
        let tmp = tempfile::tempdir().unwrap();
        let d = std::fs::canonicalize(tmp.path()).unwrap();
        let real = std::fs::read(std::fs::canonicalize("/bin/true").unwrap()).unwrap();
        let resolver = LibraryResolver::new(None);
        let bad = d.join("bad");
        std::fs::write(&bad, &real[..100]).unwrap();
        let closure = resolver.closure(&bad);
        assert_eq!(closure.problems.len(), 1);
        assert_eq!(closure.problems[0].path, bad);
        assert!(closure.problems[0].message.contains("malformed ELF"));

        // A forged program header count.
        let mut forged = real.clone();
        forged[56..58].copy_from_slice(&0xfffe_u16.to_le_bytes()); // e_phnum
        let file = d.join("forged");
        std::fs::write(&file, &forged).unwrap();
        let Parsed::Malformed(why) = parse_file(&File::open(&file).unwrap(), forged.len() as u64)
        else {
            panic!("a forged e_phnum parsed");
        };
        assert!(why.contains("program header"), "{why}");

        // Every corruption of one byte of the headers parses or is
        // malformed; none panics or reads past its bound.
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(d.join("fuzzed"))
            .unwrap();
        file.write_all_at(&real, 0).unwrap();
        let span = real.len().min(1024);
        for i in 0..span {
            for v in [0u8, 0x41, 0xff] {
                file.write_all_at(&[v], i as u64).unwrap();
                let _ = parse_file(&file, real.len() as u64);
            }
            file.write_all_at(&real[i..=i], i as u64).unwrap();
        }
    }

    #[test]
    fn origin_tokens_expand_and_others_drop_the_element() {
        let origin = Path::new("/opt/app/bin");
        let x =
            |s: &str| expand_origin(s.as_bytes(), origin).map(|v| String::from_utf8(v).unwrap());
        assert_eq!(x("$ORIGIN/../lib").as_deref(), Some("/opt/app/bin/../lib"));
        assert_eq!(x("${ORIGIN}/lib").as_deref(), Some("/opt/app/bin/lib"));
        assert_eq!(x("/a/$ORIGINAL").as_deref(), Some("/a/$ORIGINAL"));
        assert_eq!(x("/a/${ORIGIN").as_deref(), Some("/a/${ORIGIN"));
        assert_eq!(x("/cost$").as_deref(), Some("/cost$"));
        assert_eq!(x("/usr/$LIB/x"), None);
        assert_eq!(x("/usr/${PLATFORM}"), None);
        assert_eq!(
            search_path(b"$ORIGIN/a::relative:/usr/$LIB:/abs", origin),
            [PathBuf::from("/opt/app/bin/a"), PathBuf::from("/abs")]
        );
        let shebang = |s: &[u8]| match parse_shebang(s) {
            Parsed::Script(p) => Some(p),
            _ => None,
        };
        assert_eq!(shebang(b" /bin/sh -e\n"), Some(PathBuf::from("/bin/sh")));
        assert_eq!(
            shebang(b"/usr/bin/env\tpython3"),
            Some(PathBuf::from("/usr/bin/env"))
        );
        assert_eq!(shebang(b"/bin/bash\r\n"), Some(PathBuf::from("/bin/bash")));
        assert_eq!(shebang(b"  \n/bin/sh"), None);
    }

    #[test]
    fn the_collector_adds_libraries_at_the_files_priority_once() {
        let ls = std::fs::canonicalize("/usr/bin/ls").unwrap();
        let libc_host = LibraryResolver::new(None)
            .closure(&ls)
            .files
            .into_iter()
            .find(|n| n.path.file_name() == Some(OsStr::new("libc.so.6")))
            .expect("ls needs libc")
            .path;
        let opts = CollectOptions {
            with_libs: true,
            ..Default::default()
        };
        // As the planner does, one priority class after the other.
        let pool = MetadataPool::new(4);
        let mut collector = Collector::new(&opts, StopSignal::default(), &pool);
        let first = collector.add(&[SourceEntry::argument(&ls, 10)]);
        let libc: Vec<_> = first.iter().filter(|f| f.path == libc_host).collect();
        assert_eq!(libc.len(), 1, "{first:?}");
        assert_eq!(libc[0].priority, 10);
        assert_eq!(libc[0].origin, Origin::LibraryOf { path: ls.clone() });
        // Named again in a later, less urgent class: kept once, quietly.
        assert!(collector
            .add(&[SourceEntry::argument(&libc_host, 50)])
            .is_empty());
        let warnings = collector.take_warnings();
        assert!(warnings.is_empty(), "{warnings:?}");

        // Both in one batch: the library takes the file's priority.
        let set = collect(
            &[
                SourceEntry::argument(&libc_host, 50),
                SourceEntry::argument(&ls, 10),
            ],
            &opts,
        );
        let libc: Vec<_> = set.files.iter().filter(|f| f.path == libc_host).collect();
        assert_eq!((libc.len(), libc[0].priority), (1, 10));
        assert!(set.warnings.is_empty(), "{:?}", set.warnings);
        // Without the option, only what was named.
        let set = collect(
            &[SourceEntry::argument(&ls, 10)],
            &CollectOptions::default(),
        );
        assert_eq!(set.files.len(), 1);

        // A file named for some byte ranges (a recording's line) still
        // needs its libraries whole; a library named earlier for a range is
        // widened to the whole file.
        let ranged = |path: &PathBuf, prio| SourceEntry {
            ranges: Some(vec![crate::map::ByteRange {
                offset: 0,
                len: 4096,
            }]),
            ..SourceEntry::argument(path, prio)
        };
        let pool = MetadataPool::new(4);
        let mut collector = Collector::new(&opts, StopSignal::default(), &pool);
        let first = collector.add(&[ranged(&libc_host, 5)]);
        assert!(first
            .iter()
            .any(|f| f.path == libc_host && f.ranges.is_some()));
        let second = collector.add(&[ranged(&ls, 10)]);
        let ls_file = second.iter().find(|f| f.path == ls).unwrap();
        assert!(ls_file.ranges.is_some(), "the executable keeps its ranges");
        let libs: Vec<_> = second.iter().filter(|f| f.path != ls).collect();
        assert!(libs.iter().any(|l| l.path == libc_host), "{libs:?}");
        for lib in &libs {
            if lib.path == libc_host {
                // The rest of libc, beyond the range read in class 5.
                let rest = lib.ranges.as_ref().expect("the rest of libc");
                assert_eq!(rest[0].offset, 4096, "{rest:?}");
            } else {
                assert_eq!(lib.ranges, None, "{} whole", lib.path.display());
            }
        }
    }
}
