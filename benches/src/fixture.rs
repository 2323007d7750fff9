//! The node-volume fixture model: what files a realistic EKS node root volume
//! holds, which of them are critical (and at what priority), in what order they
//! are written so the critical ones end up physically scattered, their
//! (incompressible) content, and how scattered they ended up (from `filefrag`).
//!
//! Two shapes ([`Shape`]): the node volume (binaries, libraries, configs
//! and image snapshots whose files are scattered one by one), and the big
//! tree, whose critical set is unpacked container layers: deep directory
//! trees of mostly small files, each layer written in one go as an unpack
//! writes it, named in the critical list by directory as a user of
//! `prewarm --paths` would name them.
//!
//! It owns the deterministic, testable part of building the fixture; the
//! privileged part (mkfs, loop mount, writing, unmount) is in the
//! `prewarm-fixture` binary.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Write};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

/// Priority of node-agent binaries, their libraries and configs.
pub const PRIO_NODE: u32 = 10;
/// Priority of container-image snapshot files and containerd metadata.
pub const PRIO_IMAGES: u32 = 50;

/// Root of containerd's overlayfs snapshots on the volume.
pub const SNAPSHOT_ROOT: &str =
    "var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots";

/// Errors of the fixture model.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    /// The spec cannot be satisfied.
    #[error("invalid fixture spec: {0}")]
    Spec(String),
    /// Unknown filesystem type.
    #[error("unknown filesystem type {0:?} (expected ext4 or xfs)")]
    FsType(String),
    /// Unknown fixture shape.
    #[error("unknown fixture shape {0:?} (expected node or big-tree)")]
    Shape(String),
}

/// Filesystem of the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsType {
    /// ext4 (mounted read-only later with `-o ro,noload`).
    Ext4,
    /// XFS (mounted read-only later with `-o ro,norecovery`); needs ≥ 300 MiB.
    Xfs,
}

impl FromStr for FsType {
    type Err = FixtureError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "ext4" => Ok(FsType::Ext4),
            "xfs" => Ok(FsType::Xfs),
            _ => Err(FixtureError::FsType(s.to_string())),
        }
    }
}

impl fmt::Display for FsType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FsType::Ext4 => "ext4",
            FsType::Xfs => "xfs",
        })
    }
}

/// How the container-image snapshots are laid out and listed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Shape {
    /// A node volume: snapshot files in a few flat directories, written
    /// interleaved with everything else, each critical file listed.
    #[default]
    Node,
    /// Unpacked container layers: each snapshot a deep tree (see
    /// [`BIG_TREE_FILES_PER_DIR`]) of mostly few-KiB files and a few
    /// MiB-sized ones, written whole in path order (as an unpack writes a
    /// layer); the critical list names each critical layer's directory.
    BigTree,
}

impl FromStr for Shape {
    type Err = FixtureError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "node" => Ok(Shape::Node),
            "big-tree" => Ok(Shape::BigTree),
            _ => Err(FixtureError::Shape(s.to_string())),
        }
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Shape::Node => "node",
            Shape::BigTree => "big-tree",
        })
    }
}

/// What to build.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FixtureSpec {
    /// How snapshots are laid out and listed (older manifests: node).
    #[serde(default)]
    pub shape: Shape,
    /// Filesystem type.
    pub fs: FsType,
    /// Image size in bytes.
    pub image_size: u64,
    /// Size of each of the three big binaries (kubelet, containerd, nodeadm).
    pub big_bytes: u64,
    /// Shared libraries in usr/lib64.
    pub libs: usize,
    /// How many of them are critical.
    pub critical_libs: usize,
    /// Config files under etc/ (besides the fixed well-known ones).
    pub configs: usize,
    /// How many of them are critical.
    pub critical_configs: usize,
    /// containerd snapshots (image layers).
    pub snapshots: usize,
    /// How many snapshots belong to images needed at boot (critical).
    pub critical_snapshots: usize,
    /// Files across all snapshots.
    pub snapshot_files: usize,
    /// Fill the filesystem with bulk (non-critical) files up to this percentage of the image.
    pub fill_percent: u32,
    /// Seed of sizes, write order and content.
    pub seed: u64,
    /// Where the volume will be mounted when prewarm reads the critical list.
    pub mount_prefix: String,
}

impl Default for FixtureSpec {
    /// ~1 GiB image, ~200 MiB critical set.
    fn default() -> Self {
        Self {
            shape: Shape::Node,
            fs: FsType::Ext4,
            image_size: 1024 * MIB,
            big_bytes: 40 * MIB,
            libs: 300,
            critical_libs: 60,
            configs: 200,
            critical_configs: 40,
            snapshots: 12,
            critical_snapshots: 4,
            snapshot_files: 3000,
            fill_percent: 75,
            seed: 1,
            mount_prefix: "/mnt/vol".into(),
        }
    }
}

impl FixtureSpec {
    /// The CI preset: 256 MiB image, ~70 MiB critical (the binary uses 384 MiB for XFS).
    pub fn small() -> Self {
        Self {
            image_size: 256 * MIB,
            big_bytes: 12 * MIB,
            libs: 120,
            critical_libs: 24,
            configs: 80,
            critical_configs: 20,
            snapshots: 6,
            critical_snapshots: 2,
            snapshot_files: 1200,
            ..Self::default()
        }
    }

    /// The big-tree preset: a 1 GiB image whose critical set is six
    /// unpacked layers of 1,750 files each (10,500 files in about 1,300
    /// directories, ~230 MiB) besides the small preset's node files
    /// (~42 MiB); eight more layers of other images are not critical.
    pub fn big_tree() -> Self {
        Self {
            shape: Shape::BigTree,
            image_size: 1024 * MIB,
            snapshots: 14,
            critical_snapshots: 6,
            snapshot_files: 14 * 1750,
            ..Self::small()
        }
    }
}

/// Kind of a planned file (for the summary).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// kubelet, containerd, nodeadm.
    BigBinary,
    /// usr/lib64/*.so*.
    Library,
    /// etc/*.
    Config,
    /// Files inside containerd snapshots.
    SnapshotFile,
    /// containerd metadata databases.
    ContainerdMeta,
    /// Non-critical bulk data written between the others.
    Bulk,
}

/// One file to write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedFile {
    /// Path relative to the volume root.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Priority when critical.
    pub priority: Option<u32>,
    /// Kind of file.
    pub category: Category,
    /// Whether to mark it executable.
    pub executable: bool,
}

/// The files in write order.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The spec the plan was made from.
    pub spec: FixtureSpec,
    /// Files in the order they are to be written.
    pub files: Vec<PlannedFile>,
}

fn log_uniform(rng: &mut fastrand::Rng, min: u64, max: u64) -> u64 {
    if max <= min {
        return min;
    }
    let (lo, hi) = ((min as f64).ln(), (max as f64).ln());
    let v = (lo + rng.f64() * (hi - lo)).exp();
    (v as u64).clamp(min, max)
}

const WELL_KNOWN_LIBS: &[&str] = &[
    "libc.so.6",
    "libm.so.6",
    "libpthread.so.0",
    "libdl.so.2",
    "librt.so.1",
    "libresolv.so.2",
    "libnss_files.so.2",
    "libgcc_s.so.1",
    "libseccomp.so.2",
    "libselinux.so.1",
    "libpcre2-8.so.0",
    "libsystemd.so.0",
    "libcap.so.2",
    "libz.so.1",
    "liblzma.so.5",
    "libzstd.so.1",
    "libcrypto.so.3",
    "libssl.so.3",
    "libblkid.so.1",
    "libmount.so.1",
];

const WELL_KNOWN_CONFIGS: &[(&str, u64)] = &[
    ("etc/kubernetes/kubelet/config.json", 2 * KIB),
    ("etc/kubernetes/kubelet/kubeconfig", 3 * KIB),
    ("etc/kubernetes/pki/ca.crt", 2 * KIB),
    ("etc/containerd/config.toml", 4 * KIB),
    ("etc/eks/nodeadm/config.yaml", 2 * KIB),
    ("etc/systemd/system/kubelet.service", KIB),
    ("etc/systemd/system/containerd.service", KIB),
    ("etc/ld.so.cache", 96 * KIB),
    ("etc/nsswitch.conf", KIB),
    ("etc/hosts", 512),
    ("etc/resolv.conf", 512),
    ("etc/passwd", 2 * KIB),
    ("etc/group", KIB),
];

const CONFIG_DIRS: &[&str] = &[
    "etc/sysconfig",
    "etc/security",
    "etc/pki/tls",
    "etc/sysctl.d",
    "etc/modprobe.d",
    "etc/udev/rules.d",
    "etc/ssh",
    "etc/default",
];

const LAYER_DIRS: &[&str] = &[
    "usr/bin",
    "usr/lib",
    "usr/lib/python3/site-packages/pkg",
    "etc",
    "app",
    "app/node_modules/mod",
    "usr/share/zoneinfo",
    "lib/x86_64-linux-gnu",
    "opt/cni/bin",
];

const LAYER_EXTS: &[&str] = &["so", "py", "js", "json", "conf", "bin", "txt", "pyc"];

/// Where the trees of a big-tree layer start (an unpacked image's usual
/// top directories).
const TREE_ROOTS: &[&str] = &[
    "usr/lib/python3.11/site-packages",
    "usr/lib/x86_64-linux-gnu",
    "usr/share",
    "usr/include",
    "app/node_modules",
    "opt/app/lib",
    "etc",
    "var/lib",
];

/// Names of the directories grown under [`TREE_ROOTS`] (with a counter).
const TREE_NAMES: &[&str] = &[
    "lib", "src", "dist", "core", "utils", "tests", "data", "locale", "plugins", "modules",
    "include", "internal", "pkg", "cmd", "api", "v1",
];

/// Mean files per directory of a big-tree layer: a layer of N files has
/// N / this many directories (the roots included).
pub const BIG_TREE_FILES_PER_DIR: usize = 8;

/// The directory of snapshot `id`'s layer, relative to the volume root.
pub fn layer_dir(id: usize) -> String {
    format!("{SNAPSHOT_ROOT}/{id}/fs")
}

/// The size of a file of a big-tree layer: 86.5% 256 B–16 KiB, 13%
/// 16–128 KiB, 0.5% 1–4 MiB (log-uniform within each band).
fn big_tree_file_size(rng: &mut fastrand::Rng) -> u64 {
    match rng.u32(0..1000) {
        0..5 => log_uniform(rng, MIB, 4 * MIB),
        5..135 => log_uniform(rng, 16 * KIB, 128 * KIB),
        _ => log_uniform(rng, 256, 16 * KIB),
    }
}

/// The files of one big-tree layer (`files` of them, numbered from
/// `first`) in the order an unpack writes them (path order): a random
/// tree grown from [`TREE_ROOTS`], each new directory under a directory
/// picked at random among those made so far, so it gets deep; each file
/// in a random directory.
fn big_tree_layer(
    rng: &mut fastrand::Rng,
    id: usize,
    first: usize,
    files: usize,
    critical: bool,
) -> Vec<PlannedFile> {
    let root = layer_dir(id);
    let mut dirs: Vec<String> = TREE_ROOTS.iter().map(|r| format!("{root}/{r}")).collect();
    let wanted = (files / BIG_TREE_FILES_PER_DIR).max(dirs.len());
    while dirs.len() < wanted {
        let parent = &dirs[rng.usize(0..dirs.len())];
        let name = TREE_NAMES[rng.usize(0..TREE_NAMES.len())];
        let dir = format!("{parent}/{name}{}", dirs.len());
        dirs.push(dir);
    }
    let mut out: Vec<PlannedFile> = (first..first + files)
        .map(|f| {
            let dir = &dirs[rng.usize(0..dirs.len())];
            let ext = LAYER_EXTS[f % LAYER_EXTS.len()];
            PlannedFile {
                path: format!("{dir}/f{f:05}.{ext}"),
                size: big_tree_file_size(rng),
                priority: critical.then_some(PRIO_IMAGES),
                category: Category::SnapshotFile,
                executable: ext == "so" || ext == "bin",
            }
        })
        .collect();
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

const BULK_DIRS: &[&str] = &[
    "usr/bin",
    "usr/lib64",
    "usr/share/doc",
    "var/cache/dnf",
    "var/log/journal/3f6c",
    "opt/data",
    "usr/libexec",
];

/// Builds the deterministic plan for `spec`.
pub fn plan(spec: &FixtureSpec) -> Result<Plan, FixtureError> {
    let bad = |m: String| Err(FixtureError::Spec(m));
    if spec.critical_libs > spec.libs {
        return bad(format!(
            "critical libs {} > libs {}",
            spec.critical_libs, spec.libs
        ));
    }
    if spec.critical_configs > spec.configs {
        return bad(format!(
            "critical configs {} > configs {}",
            spec.critical_configs, spec.configs
        ));
    }
    if spec.critical_snapshots > spec.snapshots {
        return bad(format!(
            "critical snapshots {} > snapshots {}",
            spec.critical_snapshots, spec.snapshots
        ));
    }
    if spec.fill_percent == 0 || spec.fill_percent > 90 {
        return bad(format!(
            "fill percent must be 1..=90, got {}",
            spec.fill_percent
        ));
    }
    if !spec.mount_prefix.starts_with('/') {
        return bad(format!(
            "mount prefix must be absolute: {:?}",
            spec.mount_prefix
        ));
    }
    if spec.fs == FsType::Xfs && spec.image_size < 300 * MIB {
        return bad("XFS needs an image of at least 300 MiB".into());
    }

    let mut rng = fastrand::Rng::with_seed(spec.seed);
    let mut files = Vec::new();
    let mut push = |path: String, size: u64, priority: Option<u32>, category, executable| {
        files.push(PlannedFile {
            path,
            size,
            priority,
            category,
            executable,
        })
    };

    for name in ["kubelet", "containerd", "nodeadm"] {
        push(
            format!("usr/bin/{name}"),
            spec.big_bytes,
            Some(PRIO_NODE),
            Category::BigBinary,
            true,
        );
    }
    for i in 0..spec.libs {
        let critical = i < spec.critical_libs;
        let name = match (critical, WELL_KNOWN_LIBS.get(i)) {
            (true, Some(n)) => (*n).to_string(),
            (true, None) => format!("libnode-dep{i:03}.so.1"),
            (false, _) => format!("libextra{i:03}.so.{}", 1 + i % 4),
        };
        let size = log_uniform(&mut rng, 16 * KIB, MIB);
        push(
            format!("usr/lib64/{name}"),
            size,
            critical.then_some(PRIO_NODE),
            Category::Library,
            true,
        );
    }
    for (i, &(path, size)) in WELL_KNOWN_CONFIGS.iter().enumerate() {
        let critical = i < spec.critical_configs;
        push(
            path.to_string(),
            size,
            critical.then_some(PRIO_NODE),
            Category::Config,
            false,
        );
    }
    for i in WELL_KNOWN_CONFIGS.len()..spec.configs.max(WELL_KNOWN_CONFIGS.len()) {
        let critical = i < spec.critical_configs;
        let dir = CONFIG_DIRS[i % CONFIG_DIRS.len()];
        let size = log_uniform(&mut rng, 200, 16 * KIB);
        push(
            format!("{dir}/conf{i:03}.conf"),
            size,
            critical.then_some(PRIO_NODE),
            Category::Config,
            false,
        );
    }
    push(
        "var/lib/containerd/io.containerd.metadata.v1.bolt/meta.db".into(),
        4 * MIB,
        Some(PRIO_IMAGES),
        Category::ContainerdMeta,
        false,
    );
    push(
        "var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/metadata.db".into(),
        256 * KIB,
        Some(PRIO_IMAGES),
        Category::ContainerdMeta,
        false,
    );

    // Critical snapshots spread over the id range (images pulled at different times).
    let critical_ids = critical_snapshot_ids(spec);
    let mut layers: Vec<Vec<PlannedFile>> = Vec::new();
    for s in 0..spec.snapshots {
        let id = s + 1;
        let critical = critical_ids.contains(&id);
        let lo = spec.snapshot_files * s / spec.snapshots;
        let hi = spec.snapshot_files * (s + 1) / spec.snapshots;
        match spec.shape {
            // Each layer is written whole, as one unit among the others.
            Shape::BigTree => layers.push(big_tree_layer(&mut rng, id, lo, hi - lo, critical)),
            Shape::Node => {
                for f in lo..hi {
                    let dir = LAYER_DIRS[f % LAYER_DIRS.len()];
                    let dir = if dir.ends_with("pkg") || dir.ends_with("mod") {
                        format!("{dir}{}", f % 7)
                    } else {
                        dir.to_string()
                    };
                    let ext = LAYER_EXTS[f % LAYER_EXTS.len()];
                    let size = if rng.u32(0..10) < 8 {
                        log_uniform(&mut rng, 512, 16 * KIB)
                    } else {
                        log_uniform(&mut rng, 64 * KIB, MIB)
                    };
                    push(
                        format!("{}/{dir}/f{f:05}.{ext}", layer_dir(id)),
                        size,
                        critical.then_some(PRIO_IMAGES),
                        Category::SnapshotFile,
                        ext == "so" || ext == "bin",
                    );
                }
            }
        }
    }

    let planned: u64 = files
        .iter()
        .chain(layers.iter().flatten())
        .map(|f| f.size)
        .sum();
    let target = spec.image_size / 100 * u64::from(spec.fill_percent);
    if planned > target {
        return bad(format!(
            "the files need {} MiB but {}% of a {} MiB image is {} MiB: raise --image-size or --fill-percent, or lower sizes",
            planned / MIB,
            spec.fill_percent,
            spec.image_size / MIB,
            target / MIB
        ));
    }
    let mut bulk_left = target - planned;
    let mut n = 0usize;
    while bulk_left >= 64 * KIB {
        let size = log_uniform(&mut rng, 256 * KIB, 8 * MIB).min(bulk_left);
        let dir = BULK_DIRS[rng.usize(0..BULK_DIRS.len())];
        let name = match dir {
            "usr/bin" | "usr/libexec" => format!("tool{n:04}"),
            "usr/lib64" => format!("libbulk{n:04}.so"),
            "var/log/journal/3f6c" => format!("system@{n:04}.journal"),
            _ => format!("blob{n:04}.dat"),
        };
        files.push(PlannedFile {
            path: format!("{dir}/{name}"),
            size,
            priority: None,
            category: Category::Bulk,
            executable: false,
        });
        bulk_left -= size;
        n += 1;
    }

    // Interleave everything so critical files land between non-critical ones
    // (a big-tree layer moves as one unit).
    let files = match spec.shape {
        Shape::Node => {
            rng.shuffle(&mut files);
            files
        }
        Shape::BigTree => {
            let mut units: Vec<Vec<PlannedFile>> = files.into_iter().map(|f| vec![f]).collect();
            units.extend(layers);
            rng.shuffle(&mut units);
            units.into_iter().flatten().collect()
        }
    };
    Ok(Plan {
        spec: spec.clone(),
        files,
    })
}

/// The ids of the critical snapshots, spread over the id range.
fn critical_snapshot_ids(spec: &FixtureSpec) -> Vec<usize> {
    (0..spec.critical_snapshots)
        .map(|i| 1 + i * spec.snapshots / spec.critical_snapshots.max(1))
        .collect()
}

/// Count and bytes of a group of files.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// Number of files.
    pub files: u64,
    /// Total bytes.
    pub bytes: u64,
}

impl Tally {
    fn add(&mut self, size: u64) {
        self.files += 1;
        self.bytes += size;
    }
}

/// What the plan contains.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanSummary {
    /// All files.
    pub all: Tally,
    /// Critical files.
    pub critical: Tally,
    /// Critical files by priority.
    pub by_priority: BTreeMap<u32, Tally>,
    /// All files by category.
    pub by_category: BTreeMap<String, Tally>,
    /// Directories holding critical files.
    #[serde(default)]
    pub critical_dirs: u64,
    /// Entries of the critical list (files, or for a big tree also
    /// directories).
    #[serde(default)]
    pub list_entries: u64,
}

impl Plan {
    /// Totals by priority and category.
    pub fn summary(&self) -> PlanSummary {
        let mut s = PlanSummary {
            all: Tally::default(),
            critical: Tally::default(),
            by_priority: BTreeMap::new(),
            by_category: BTreeMap::new(),
            critical_dirs: 0,
            list_entries: self.list_entries().len() as u64,
        };
        let mut dirs = std::collections::BTreeSet::new();
        for f in &self.files {
            s.all.add(f.size);
            let cat = serde_json::to_value(f.category)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            s.by_category.entry(cat).or_default().add(f.size);
            if let Some(p) = f.priority {
                s.critical.add(f.size);
                s.by_priority.entry(p).or_default().add(f.size);
                dirs.insert(f.path.rsplit_once('/').map_or("", |(d, _)| d));
            }
        }
        s.critical_dirs = dirs.len() as u64;
        s
    }

    /// Critical files ordered by priority (stable within a priority).
    pub fn critical_files(&self) -> Vec<&PlannedFile> {
        let mut v: Vec<&PlannedFile> = self.files.iter().filter(|f| f.priority.is_some()).collect();
        v.sort_by_key(|f| (f.priority, f.category, f.path.clone()));
        v
    }

    /// The directories the critical list names instead of their files
    /// (a big tree's critical layers), with their priority.
    pub fn critical_dirs(&self) -> Vec<(u32, String)> {
        match self.spec.shape {
            Shape::Node => Vec::new(),
            Shape::BigTree => critical_snapshot_ids(&self.spec)
                .into_iter()
                .map(|id| (PRIO_IMAGES, layer_dir(id)))
                .collect(),
        }
    }

    /// The critical list's entries (priority, path relative to the volume
    /// root), lower priority first: each critical file, except that those
    /// under a directory of [`Plan::critical_dirs`] are named by it.
    pub fn list_entries(&self) -> Vec<(u32, String)> {
        let dirs = self.critical_dirs();
        let mut out: Vec<(u32, String)> = self
            .critical_files()
            .into_iter()
            .filter(|f| {
                !dirs.iter().any(|(_, d)| {
                    f.path
                        .strip_prefix(d.as_str())
                        .is_some_and(|r| r.starts_with('/'))
                })
            })
            .map(|f| (f.priority.unwrap_or(PRIO_IMAGES), f.path.clone()))
            .collect();
        out.extend(dirs);
        out.sort_by_key(|e| e.0);
        out
    }

    /// The critical list as a user writes it: `PRIORITY /mount/prefix/path`
    /// per line ([`Plan::list_entries`]), lower priority first.
    pub fn critical_list(&self) -> String {
        self.render_list(self.list_entries().into_iter())
    }

    /// The critical list with every file named (directories expanded):
    /// what the methods that take file names read, in this order.
    pub fn critical_files_list(&self) -> String {
        self.render_list(
            self.critical_files()
                .into_iter()
                .map(|f| (f.priority.unwrap_or(PRIO_IMAGES), f.path.clone())),
        )
    }

    fn render_list(&self, entries: impl Iterator<Item = (u32, String)>) -> String {
        let prefix = self.spec.mount_prefix.trim_end_matches('/');
        let mut out = String::from(
            "# prewarm critical list: <priority> <absolute path>; lower priority is read first\n",
        );
        for (p, path) in entries {
            out.push_str(&format!("{p} {prefix}/{path}\n"));
        }
        out
    }
}

/// Incompressible file content: slices of a seeded random pool at random offsets.
#[derive(Debug)]
pub struct ContentPool {
    pool: Vec<u8>,
    rng: fastrand::Rng,
}

const POOL_SIZE: usize = 8 << 20;
const PIECE: usize = 64 << 10;

impl ContentPool {
    /// A pool seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed ^ 0x5eed_f00d);
        let mut pool = vec![0u8; POOL_SIZE];
        rng.fill(&mut pool);
        Self { pool, rng }
    }

    /// Writes `size` bytes of content to `w`.
    pub fn write(&mut self, w: &mut impl Write, size: u64) -> io::Result<()> {
        let mut left = size;
        while left > 0 {
            let n = usize::try_from(left).unwrap_or(PIECE).min(PIECE);
            let off = self.rng.usize(0..=POOL_SIZE - n);
            w.write_all(&self.pool[off..off + n])?;
            left -= n as u64;
        }
        Ok(())
    }
}

/// Physical extents of one file, in bytes from the start of the device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileExtents {
    /// The path as filefrag printed it.
    pub path: String,
    /// (device offset, length) in bytes.
    pub extents: Vec<(u64, u64)>,
}

/// Parses `filefrag -v -b<block_size>` output for one or more files.
pub fn parse_filefrag(output: &str, block_size: u64) -> Vec<FileExtents> {
    let mut files: Vec<FileExtents> = Vec::new();
    for line in output.lines() {
        if let Some(rest) = line.strip_prefix("File size of ") {
            let path = rest
                .rsplit_once(" is ")
                .map(|(p, _)| p)
                .unwrap_or(rest)
                .to_string();
            files.push(FileExtents {
                path,
                extents: Vec::new(),
            });
            continue;
        }
        // "   0:        0..     767:      34816..     35583:    768:             last,eof"
        let fields: Vec<&str> = line.split(':').map(str::trim).collect();
        if fields.len() < 4 || fields[0].parse::<u64>().is_err() {
            continue;
        }
        let Some((a, b)) = fields[2].split_once("..") else {
            continue;
        };
        let (Ok(a), Ok(b)) = (a.trim().parse::<u64>(), b.trim().parse::<u64>()) else {
            continue;
        };
        if let Some(cur) = files.last_mut() {
            cur.extents
                .push((a * block_size, (b.saturating_sub(a) + 1) * block_size));
        }
    }
    files
}

/// How scattered a set of extents is over the device, at chunk granularity.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayoutStats {
    /// Chunk size used.
    pub chunk_size: u64,
    /// Total extent bytes.
    pub bytes: u64,
    /// Number of extents.
    pub extents: u64,
    /// Distinct chunks the extents touch.
    pub chunks: u64,
    /// The fewest chunks that many bytes could occupy.
    pub min_chunks: u64,
    /// Maximal runs of consecutive touched chunks.
    pub runs: u64,
    /// First touched chunk.
    pub first_chunk: u64,
    /// Last touched chunk.
    pub last_chunk: u64,
}

/// Computes [`LayoutStats`] for `extents` (device offset, length in bytes).
pub fn layout_stats(extents: &[(u64, u64)], chunk_size: u64) -> LayoutStats {
    let chunk_size = chunk_size.max(1);
    let mut chunks: Vec<u64> = Vec::new();
    let mut bytes = 0;
    for &(off, len) in extents {
        if len == 0 {
            continue;
        }
        bytes += len;
        chunks.extend(off / chunk_size..=(off + len - 1) / chunk_size);
    }
    chunks.sort_unstable();
    chunks.dedup();
    let runs = chunks
        .iter()
        .enumerate()
        .filter(|&(i, &c)| i == 0 || chunks[i - 1] + 1 != c)
        .count() as u64;
    LayoutStats {
        chunk_size,
        bytes,
        extents: extents.len() as u64,
        chunks: chunks.len() as u64,
        min_chunks: bytes.div_ceil(chunk_size),
        runs,
        first_chunk: chunks.first().copied().unwrap_or(0),
        last_chunk: chunks.last().copied().unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_plan_matches_the_brief() {
        let p = plan(&FixtureSpec::default()).expect("plan");
        let s = p.summary();
        let crit_mib = s.critical.bytes / MIB;
        assert!((150..=250).contains(&crit_mib), "critical {crit_mib} MiB");
        assert!(s.all.bytes <= 1024 * MIB * 75 / 100);
        assert!(s.all.files > 3000);
        assert_eq!(s.by_priority.len(), 2);
        let snaps = s.by_category.get("snapshot_file").expect("snapshots");
        assert_eq!(snaps.files, 3000);
    }

    #[test]
    fn small_plan_fits() {
        let s = plan(&FixtureSpec::small()).expect("plan").summary();
        assert!(s.all.bytes <= 256 * MIB * 75 / 100);
        assert!(s.critical.bytes > 40 * MIB);
    }

    #[test]
    fn plan_is_deterministic_and_interleaved() {
        let spec = FixtureSpec::small();
        let a = plan(&spec).expect("a");
        let b = plan(&spec).expect("b");
        assert_eq!(a.files, b.files);
        let c = plan(&FixtureSpec { seed: 2, ..spec }).expect("c");
        assert_ne!(a.files, c.files);
        // Critical files are not all written first or last.
        let first_crit = a
            .files
            .iter()
            .position(|f| f.priority.is_some())
            .expect("crit");
        let last_crit = a
            .files
            .iter()
            .rposition(|f| f.priority.is_some())
            .expect("crit");
        assert!(first_crit < a.files.len() / 10 && last_crit > a.files.len() * 9 / 10);
    }

    #[test]
    fn critical_list_format() {
        let p = plan(&FixtureSpec {
            mount_prefix: "/mnt/vol/".into(),
            ..FixtureSpec::small()
        })
        .expect("plan");
        let list = p.critical_list();
        let lines: Vec<&str> = list.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(lines.len() as u64, p.summary().critical.files);
        assert!(lines.contains(&"10 /mnt/vol/usr/bin/kubelet"));
        assert!(lines.contains(&"10 /mnt/vol/usr/lib64/libc.so.6"));
        assert!(lines
            .iter()
            .any(|l| l.starts_with("50 /mnt/vol/var/lib/containerd/")));
        let prios: Vec<u32> = lines
            .iter()
            .map(|l| {
                l.split(' ')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .expect("prio")
            })
            .collect();
        assert!(prios.windows(2).all(|w| w[0] <= w[1]), "sorted by priority");
    }

    #[test]
    fn node_list_names_every_critical_file() {
        let p = plan(&FixtureSpec::default()).expect("plan");
        let s = p.summary();
        assert!(p.critical_dirs().is_empty());
        assert_eq!(s.list_entries, s.critical.files);
        assert_eq!(p.critical_list(), p.critical_files_list());
    }

    #[test]
    fn big_tree_critical_set_is_unpacked_layers() {
        let p = plan(&FixtureSpec::big_tree()).expect("plan");
        let s = p.summary();
        // The size: at least 10,000 files in at least 1,000 directories.
        assert!(
            s.critical.files >= 10_000,
            "{} critical files",
            s.critical.files
        );
        assert!(s.critical_dirs >= 1_000, "{} directories", s.critical_dirs);
        let crit_mib = s.critical.bytes / MIB;
        assert!((150..=320).contains(&crit_mib), "critical {crit_mib} MiB");
        assert!(s.all.bytes <= 1024 * MIB * 75 / 100);

        // Mostly few-KiB files, a few MiB-sized ones.
        let layer: Vec<&PlannedFile> = p
            .critical_files()
            .into_iter()
            .filter(|f| f.category == Category::SnapshotFile)
            .collect();
        let small = layer.iter().filter(|f| f.size <= 16 * KIB).count();
        let mib_sized = layer.iter().filter(|f| f.size >= MIB).count();
        assert!(
            small * 100 >= layer.len() * 80,
            "{small} of {}",
            layer.len()
        );
        assert!(
            (20..=150).contains(&mib_sized),
            "{mib_sized} MiB-sized files"
        );
        // Deep trees.
        let depth = layer
            .iter()
            .map(|f| f.path.matches('/').count() - layer_dir(1).matches('/').count())
            .max()
            .unwrap_or(0);
        assert!(depth >= 8, "deepest file {depth} levels below its layer");

        // The list names the critical layers by directory, the node files
        // one by one, and covers every critical file exactly once.
        let entries = p.list_entries();
        let dirs = p.critical_dirs();
        assert_eq!(dirs.len(), 6);
        assert_eq!(s.list_entries as usize, entries.len());
        assert!(dirs.iter().all(|d| entries.contains(d)));
        for f in p.critical_files() {
            let covering = entries
                .iter()
                .filter(|(_, e)| {
                    *e == f.path
                        || f.path
                            .strip_prefix(e.as_str())
                            .is_some_and(|r| r.starts_with('/'))
                })
                .count();
            assert_eq!(covering, 1, "{}", f.path);
        }
        assert!(entries.len() < 200, "{} entries", entries.len());
        let files_list = p.critical_files_list();
        let lines = files_list.lines().filter(|l| !l.starts_with('#')).count();
        assert_eq!(lines as u64, s.critical.files);
        let prios: Vec<u32> = entries.iter().map(|e| e.0).collect();
        assert!(prios.windows(2).all(|w| w[0] <= w[1]), "sorted by priority");

        // Each layer is written in one go, in path order.
        for id in 1..=p.spec.snapshots {
            let root = format!("{}/", layer_dir(id));
            let at: Vec<usize> = p
                .files
                .iter()
                .enumerate()
                .filter(|(_, f)| f.path.starts_with(&root))
                .map(|(i, _)| i)
                .collect();
            assert!(!at.is_empty(), "layer {id}");
            assert_eq!(
                at[at.len() - 1] - at[0] + 1,
                at.len(),
                "layer {id} interleaved"
            );
            let paths: Vec<&str> = at.iter().map(|&i| p.files[i].path.as_str()).collect();
            assert!(paths.windows(2).all(|w| w[0] < w[1]), "layer {id} order");
        }
        // Deterministic.
        assert_eq!(
            plan(&FixtureSpec::big_tree()).expect("again").files,
            p.files
        );
    }

    #[test]
    fn rejects_impossible_specs() {
        let too_small = FixtureSpec {
            image_size: 64 * MIB,
            ..FixtureSpec::default()
        };
        assert!(plan(&too_small).is_err());
        let xfs_small = FixtureSpec {
            fs: FsType::Xfs,
            ..FixtureSpec::small()
        };
        assert!(plan(&xfs_small).is_err());
        assert!(plan(&FixtureSpec {
            critical_libs: 1000,
            ..FixtureSpec::default()
        })
        .is_err());
        assert!("btrfs".parse::<FsType>().is_err());
        assert_eq!("big-tree".parse::<Shape>().expect("shape"), Shape::BigTree);
        assert_eq!(Shape::BigTree.to_string(), "big-tree");
        assert!("tree".parse::<Shape>().is_err());
        assert_eq!("XFS".parse::<FsType>().expect("xfs"), FsType::Xfs);
    }

    #[test]
    fn content_has_exact_size() {
        let mut pool = ContentPool::new(1);
        let mut out = Vec::new();
        pool.write(&mut out, 3 * PIECE as u64 + 5).expect("write");
        assert_eq!(out.len(), 3 * PIECE + 5);
        assert!(out.iter().any(|&b| b != out[0]));
    }

    #[test]
    fn parses_filefrag_and_measures_layout() {
        let out = "Filesystem type is: ef53\n\
File size of /m/usr/bin/kubelet is 8192 (2 blocks of 4096 bytes)\n \
ext:     logical_offset:        physical_offset: length:   expected: flags:\n   \
0:        0..       0:      34816..     34816:      1:            \n   \
1:        1..       1:      40000..     40000:      1:      34817: last,eof\n\
/m/usr/bin/kubelet: 2 extents found\n\
File size of /m/etc/hosts is 512 (1 block of 4096 bytes)\n   \
0:        0..       0:        128..       128:      1:             last,eof\n\
/m/etc/hosts: 1 extent found\n";
        let files = parse_filefrag(out, 4096);
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].path, "/m/usr/bin/kubelet");
        assert_eq!(
            files[0].extents,
            vec![(34816 * 4096, 4096), (40000 * 4096, 4096)]
        );
        assert_eq!(files[1].extents, vec![(128 * 4096, 4096)]);
        let all: Vec<(u64, u64)> = files.iter().flat_map(|f| f.extents.clone()).collect();
        let l = layout_stats(&all, 512 * KIB);
        assert_eq!(l.chunks, 3);
        assert_eq!(l.runs, 3);
        assert_eq!(l.min_chunks, 1);
        assert_eq!(l.first_chunk, 1);
        assert_eq!(l.last_chunk, 40000 * 4096 / (512 * KIB));
        let contiguous = layout_stats(&[(0, 2 * MIB)], 512 * KIB);
        assert_eq!((contiguous.chunks, contiguous.runs), (4, 1));
    }
}
