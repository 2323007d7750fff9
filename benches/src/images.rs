//! The image-store fixture for `--image` on the lazy-volume testbed: an
//! ext4 image holding a real containerd root with three images (one big,
//! two small, all sharing one small base layer), served lazily, and the
//! chunk sets that say what hydrating one image must and must not fetch.
//!
//! [`build_store`] makes the filesystem image: mkfs, loop-mount it
//! read-write, start a private containerd ([`crate::containerd`]) whose
//! root is `var/lib/containerd` on it, import three OCI archives written
//! from seeded random contents, ask containerd which snapshot directories
//! it mounts for each image, stop it and unmount. [`LazyStore`] serves that
//! image through `prewarm-testbed` and mounts it read-only (`ro,noload`)
//! from a read-only direct-I/O loop device. [`chunk_sets`] maps every
//! regular file of the store with FIEMAP and splits the testbed chunks into
//! those holding data prewarm must read for an image and those holding only
//! data it must not read. Used by `tests/images_on_testbed.rs` and the
//! `prewarm-images` benchmark.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::containerd::{self, Containerd, LayerFile, OciImage};
use crate::e2e::sys::{self, run_ok, LoopDevice, Mount, TestbedProcess};

/// containerd's root inside the filesystem image.
pub const ROOT_IN_FS: &str = "var/lib/containerd";
/// The overlayfs snapshotter's snapshot directories, under the root.
pub const SNAPSHOTS: &str = "io.containerd.snapshotter.v1.overlayfs/snapshots";
/// The tools [`build_store`] and [`LazyStore`] need besides root and FUSE.
pub const TOOLS: &[&str] = &["containerd", "ctr", "runc", "tar", "mkfs.ext4", "losetup"];

/// What the store holds.
#[derive(Debug, Clone)]
pub struct StoreSpec {
    /// Files of the big image's own two layers (split evenly).
    pub big_files: usize,
    /// Files of each small image's own layer.
    pub small_files: usize,
    /// Files of the base layer all three share.
    pub base_files: usize,
    /// Seed of the contents and sizes.
    pub seed: u64,
    /// Size of the filesystem image, MiB (sparse).
    pub image_mib: u64,
}

impl Default for StoreSpec {
    /// ~50 MiB in 400 files for the big image, ~7 MiB in 60 files for each
    /// small one, 30 shared base files: about 15 s to build here.
    fn default() -> Self {
        StoreSpec {
            big_files: 400,
            small_files: 60,
            base_files: 30,
            seed: 11,
            image_mib: 320,
        }
    }
}

impl StoreSpec {
    /// The default with `factor` times the files of each image's own
    /// layers (and the image size to hold them).
    pub fn scaled(factor: usize) -> Self {
        let d = StoreSpec::default();
        StoreSpec {
            big_files: d.big_files * factor,
            small_files: d.small_files * factor,
            image_mib: d.image_mib * factor as u64,
            ..d
        }
    }
}

/// One image of the store.
#[derive(Debug, Clone)]
pub struct StoredImage {
    /// Its full reference, as `--image` takes it.
    pub name: String,
    /// `sha256:<hex>` of its manifest and configuration blobs.
    pub manifest_digest: String,
    pub config_digest: String,
    /// Its snapshot directories as containerd mounts them, top layer first,
    /// relative to containerd's root.
    pub layer_dirs: Vec<PathBuf>,
    /// Files and bytes of its layers (the shared base included).
    pub files: usize,
    pub bytes: u64,
}

/// A built store: the filesystem image and its images, the big one first.
#[derive(Debug, Clone)]
pub struct ImageStore {
    pub image: PathBuf,
    pub images: Vec<StoredImage>,
}

/// `count` files of seeded random sizes (80% 1–32 KiB, 20% 128 KiB–1 MiB)
/// and contents, under `dir/`.
fn layer_files(rng: &mut fastrand::Rng, dir: &str, count: usize) -> Vec<LayerFile<String>> {
    (0..count)
        .map(|i| {
            let size = if rng.u8(0..10) < 8 {
                rng.usize(1 << 10..32 << 10)
            } else {
                rng.usize(128 << 10..1 << 20)
            };
            let mut contents = vec![0u8; size];
            rng.fill(&mut contents);
            (format!("{dir}/d{}/f{i:04}.bin", i % 10), contents)
        })
        .collect()
}

fn layer_bytes(layers: &[&[LayerFile<String>]]) -> (usize, u64) {
    let files = layers.iter().map(|l| l.len()).sum();
    let bytes = layers
        .iter()
        .flat_map(|l| l.iter())
        .map(|(_, c)| c.len() as u64)
        .sum();
    (files, bytes)
}

/// Build the store's filesystem image at `image` (best on a tmpfs: see
/// [`LazyStore`]); `work` holds the archives, containerd's state and the
/// read-write mount while building.
pub fn build_store(work: &Path, image: &Path, spec: &StoreSpec) -> Result<ImageStore> {
    let file =
        std::fs::File::create(image).with_context(|| format!("creating {}", image.display()))?;
    file.set_len(spec.image_mib << 20)
        .with_context(|| format!("sizing {}", image.display()))?;
    drop(file);
    run_ok(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(image))?;
    let mnt = Mount::new(image, &work.join("build"), "loop,rw")?;
    let root = mnt.dir.join(ROOT_IN_FS);
    let archives = work.join("archives");
    std::fs::create_dir_all(&archives).with_context(|| format!("mkdir {}", archives.display()))?;

    let mut rng = fastrand::Rng::with_seed(spec.seed);
    let base = layer_files(&mut rng, "usr/lib/base", spec.base_files);
    let big_a = layer_files(&mut rng, "opt/big/a", spec.big_files / 2);
    let big_b = layer_files(&mut rng, "opt/big/b", spec.big_files - spec.big_files / 2);
    let small_a = layer_files(&mut rng, "opt/small-a", spec.small_files);
    let small_b = layer_files(&mut rng, "opt/small-b", spec.small_files);
    let wanted: [(&str, Vec<&[LayerFile<String>]>); 3] = [
        (
            "registry.example.com/team/big:1",
            vec![&base, &big_a, &big_b],
        ),
        ("registry.example.com/team/small-a:1", vec![&base, &small_a]),
        ("docker.io/library/small-b:1", vec![&base, &small_b]),
    ];
    let oci: Vec<(OciImage, (usize, u64))> = wanted
        .iter()
        .map(|(name, layers)| {
            Ok((
                containerd::oci_archive(&archives, name, layers)?,
                layer_bytes(layers),
            ))
        })
        .collect::<Result<_>>()?;

    let mut daemon = Containerd::start(&work.join("containerd"), &root)?;
    let mut images = Vec::new();
    for (image, (files, bytes)) in &oci {
        daemon.import(image)?;
        let top = image.chain_ids.last().context("an image without layers")?;
        let layer_dirs = daemon
            .lowerdirs(top)?
            .iter()
            .map(|d| {
                Path::new(d)
                    .strip_prefix(&root)
                    .map(Path::to_path_buf)
                    .with_context(|| format!("{d} is not under {}", root.display()))
            })
            .collect::<Result<Vec<_>>>()?;
        images.push(StoredImage {
            name: image.name.clone(),
            manifest_digest: image.manifest_digest.clone(),
            config_digest: image.config_digest.clone(),
            layer_dirs,
            files: *files,
            bytes: *bytes,
        });
        std::fs::remove_file(&image.archive).ok();
    }
    daemon.stop();
    drop(daemon);
    nix::unistd::sync();
    // Unmounted for real (not lazily) before anyone serves the image.
    mnt.unmount()?;
    Ok(ImageStore {
        image: image.to_path_buf(),
        images,
    })
}

/// A store served by the testbed and mounted read-only at `mount.dir`;
/// unmounted, detached and stopped on drop (fields drop in that order).
pub struct LazyStore {
    pub mount: Mount,
    pub loop_device: LoopDevice,
    pub testbed: TestbedProcess,
}

impl LazyStore {
    /// Serve `image` with `testbed_bin serve ... ARGS` (its mount and log
    /// under `work`), attach a read-only direct-I/O loop device and mount
    /// it `ro,noload` at `work/vol`.
    ///
    /// Keep `image` on a tmpfs: every measurement drops the page cache,
    /// which would evict an image on a disk filesystem, and the testbed
    /// would then read every hydrated chunk from the host's disk.
    pub fn open(testbed_bin: &Path, image: &Path, work: &Path, args: &[String]) -> Result<Self> {
        Self::open_with(testbed_bin, image, work, args, "ro,noload", true)
    }

    /// As [`LazyStore::open`], mounted with `options` (XFS wants
    /// `ro,norecovery`, not ext4's `noload`), on a direct-I/O loop device
    /// or (`direct_io` false) a buffered one.
    pub fn open_with(
        testbed_bin: &Path,
        image: &Path,
        work: &Path,
        args: &[String],
        options: &str,
        direct_io: bool,
    ) -> Result<Self> {
        let testbed = TestbedProcess::start(
            testbed_bin,
            image,
            &work.join("tb"),
            args,
            &work.join("testbed.log"),
        )?;
        let loop_device = LoopDevice::attach(&testbed.disk(), direct_io)?;
        let mount = Mount::new(&loop_device.path, &work.join("vol"), options)?;
        Ok(LazyStore {
            mount,
            loop_device,
            testbed,
        })
    }

    /// containerd's root on the mounted store.
    pub fn containerd_root(&self) -> PathBuf {
        self.mount.dir.join(ROOT_IN_FS)
    }

    /// Make everything cold: sync and drop the page cache (inodes and
    /// dentries too), then reset the testbed and wait until no fetch is in
    /// flight. Returns the reset's instant.
    pub fn cold(&self) -> Result<Instant> {
        sys::drop_caches()?;
        let at = self.testbed.reset()?;
        self.testbed.wait_idle(Duration::from_secs(5))?;
        Ok(at)
    }
}

/// What hydrating one image of a store should fetch, in testbed chunks.
#[derive(Debug, Clone, Default)]
pub struct ChunkSets {
    /// Chunks holding data of a file prewarm plans for the image: every
    /// regular file under its snapshot directories, both databases
    /// (`meta.db`, the snapshotter's `metadata.db`), its manifest and
    /// configuration blobs.
    pub planned: BTreeSet<u64>,
    /// The part of `planned` holding data of the image's layer files (what
    /// reading its snapshot directories must fetch).
    pub layers: BTreeSet<u64>,
    /// Chunks holding data of other regular files of the store (the other
    /// images' own layers, every layer blob, the other images' manifests
    /// and configurations) and of none of those.
    pub others_only: BTreeSet<u64>,
    /// Files and bytes behind `planned`.
    pub planned_files: usize,
    pub planned_bytes: u64,
}

/// FIEMAP flags whose `physical` is not where the file's data blocks are.
const FIEMAP_EXTENT_UNKNOWN: u32 = 0x2;
const FIEMAP_EXTENT_DATA_INLINE: u32 = 0x200;

/// Split the chunks (of `chunk_size` bytes) of the store mounted with its
/// containerd root at `root` between what hydrating `image` must and must
/// not read (see [`ChunkSets`]), from FIEMAP of every regular file under
/// `root`. Reads metadata through the mount: call it before making the
/// volume cold.
pub fn chunk_sets(root: &Path, image: &StoredImage, chunk_size: u64) -> Result<ChunkSets> {
    let blob = |digest: &str| {
        PathBuf::from("io.containerd.content.v1.content/blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };
    let planned_files: Vec<PathBuf> = vec![
        PathBuf::from("io.containerd.metadata.v1.bolt/meta.db"),
        PathBuf::from("io.containerd.snapshotter.v1.overlayfs/metadata.db"),
        blob(&image.manifest_digest),
        blob(&image.config_digest),
    ];
    let in_layers = |rel: &Path| image.layer_dirs.iter().any(|d| rel.starts_with(d));
    let mut sets = ChunkSets::default();
    let mut others = BTreeSet::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?
        {
            let path = entry?.path();
            let meta = std::fs::symlink_metadata(&path)
                .with_context(|| format!("stat {}", path.display()))?;
            if meta.is_dir() {
                pending.push(path);
                continue;
            }
            if !meta.is_file() {
                continue;
            }
            let file = std::fs::File::open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            let extents = prewarm_core::internals::file_extents(&file)
                .with_context(|| format!("FIEMAP of {}", path.display()))?;
            let rel = path.strip_prefix(root).unwrap_or(&path);
            let layer = in_layers(rel);
            let planned = layer || planned_files.iter().any(|p| p == rel);
            let set = if planned {
                sets.planned_files += 1;
                sets.planned_bytes += meta.len();
                &mut sets.planned
            } else {
                &mut others
            };
            for e in extents {
                if e.flags & (FIEMAP_EXTENT_UNKNOWN | FIEMAP_EXTENT_DATA_INLINE) != 0
                    || e.extent.length == 0
                {
                    continue;
                }
                let first = e.extent.physical / chunk_size;
                let last = (e.extent.physical + e.extent.length - 1) / chunk_size;
                set.extend(first..=last);
                if layer {
                    sets.layers.extend(first..=last);
                }
            }
        }
    }
    if sets.planned.is_empty() {
        bail!("no data of {} found under {}", image.name, root.display());
    }
    sets.others_only = others.difference(&sets.planned).copied().collect();
    Ok(sets)
}

/// `prewarm --json --image NAME --containerd-root ROOT`.
pub fn prewarm_image_cmd(prewarm: &Path, root: &Path, image: &str) -> Command {
    let mut c = Command::new(prewarm);
    c.args(["--json", "--image", image, "--containerd-root"])
        .arg(root)
        .env("RUST_LOG", "warn");
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_files_are_seeded() {
        let a = layer_files(&mut fastrand::Rng::with_seed(1), "x", 5);
        let b = layer_files(&mut fastrand::Rng::with_seed(1), "x", 5);
        assert_eq!(a, b);
        assert!(a.iter().all(|(p, c)| p.starts_with("x/d") && !c.is_empty()));
    }
}
