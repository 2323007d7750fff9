//! Container images by reference: resolve an image of containerd's store
//! to the files starting it reads, without a running containerd.
//!
//! ```text
//! reference ──(meta.db: v1/<ns>/images/<name>/target)──► target digest
//!   ──(content store: index → manifest for linux/<arch> → config)──► diff IDs
//!   ──► chain IDs ──(meta.db: v1/<ns>/snapshots/<snapshotter>/<chain ID>/name)──► key
//!   ──(<snapshotter>/metadata.db: v1/snapshots/<key>/id)──► snapshots/<id>/fs
//! ```
//!
//! An image plans, at its priority: both databases and its index,
//! manifest and config blobs (containerd reads them when it creates the
//! container), then its layers' snapshot directories, top layer first (a
//! file in an upper layer hides the same path below). Whatever cannot be
//! resolved (an unknown reference, an image not unpacked for the
//! snapshotter, a missing snapshot or blob, a database of a layout this
//! reader does not know) is a [`Warning`] naming the reference and what is
//! missing; everything else still runs.
//!
//! Under `prewarm plan --root DIR` containerd's root is found inside the
//! image (symlinks resolved there) and the entries name the image's paths,
//! which the collector rebases like any other.

mod bolt;
mod image;
mod reference;
mod store;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

pub(crate) use self::reference::is_digest;
use self::reference::normalize;
use self::store::{ImageRecord, MetaFacts, SnapshotRecord};
use super::SourceEntry;
use crate::error::{Origin, Warning, WarningKind};

/// Where containerd keeps its metadata database, under its root.
pub const META_DB: &str = "io.containerd.metadata.v1.bolt/meta.db";

/// Which containerd store, namespace and snapshotter images are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerdStore {
    /// containerd's root directory (`/var/lib/containerd`).
    pub root: PathBuf,
    /// The namespace (`k8s.io`, the kubelet's).
    pub namespace: String,
    /// The snapshotter that unpacked the images (`overlayfs`).
    pub snapshotter: String,
}

impl Default for ContainerdStore {
    fn default() -> Self {
        ContainerdStore {
            root: PathBuf::from("/var/lib/containerd"),
            namespace: "k8s.io".into(),
            snapshotter: "overlayfs".into(),
        }
    }
}

/// Which images a request names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRequest {
    /// One image, by reference (short, tagged or by digest).
    Reference(String),
    /// Every image of the namespace.
    All,
}

/// An image request, with its priority and where it was named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSource {
    /// The image(s).
    pub request: ImageRequest,
    /// Its priority class.
    pub priority: u32,
    /// Where it was named.
    pub origin: Origin,
}

/// What one image resolved to, for the report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImageReport {
    /// The reference as asked for (`*` for `--all-images`, then each image's
    /// name).
    pub reference: String,
    /// The image record it matched.
    pub image: Option<String>,
    /// The image's target digest (its manifest or index).
    pub digest: Option<String>,
    /// Its priority class.
    pub priority: u32,
    /// Its layers' snapshot directories, top layer first.
    pub directories: Vec<String>,
    /// What could not be resolved.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Images resolved into entries.
#[derive(Debug, Default)]
pub(crate) struct Resolved {
    /// Directories and files to collect (the image's paths, under an
    /// image root), each once.
    pub entries: Vec<SourceEntry>,
    /// Per image.
    pub images: Vec<ImageReport>,
    /// What could not be resolved.
    pub warnings: Vec<Warning>,
}

/// The snapshotter's directory under containerd's root.
fn snapshotter_dir(store: &ContainerdStore) -> String {
    format!("io.containerd.snapshotter.v1.{}", store.snapshotter)
}

/// Resolve `requests` against `store`; `root` is the image root of
/// `prewarm plan --root` (see the module doc).
pub(crate) fn resolve(
    requests: &[ImageSource],
    store: &ContainerdStore,
    root: Option<&Path>,
) -> Resolved {
    let mut r = Resolver {
        out: Resolved::default(),
        seen: HashMap::new(),
        store,
        host_root: PathBuf::new(),
        entry_root: PathBuf::new(),
    };
    if requests.is_empty() {
        return r.out;
    }
    // containerd's root on this host, and as the entries name it.
    let located = match root {
        Some(image) => {
            let inside = image.join(store.root.strip_prefix("/").unwrap_or(&store.root));
            super::resolve_in_root(&inside, image).map(|host| {
                let rel = host.strip_prefix(image).unwrap_or(Path::new(""));
                (host.clone(), Path::new("/").join(rel))
            })
        }
        None => Ok((store.root.clone(), store.root.clone())),
    };
    match located {
        Ok((host, entry)) => (r.host_root, r.entry_root) = (host, entry),
        Err(e) => {
            for req in requests {
                r.fail(
                    req,
                    None,
                    format!("containerd root {}: {e}", store.root.display()),
                );
            }
            return r.out;
        }
    }
    let meta_path = r.host_root.join(META_DB);
    let facts = match store::read_db(&meta_path, |b| {
        store::parse_meta(b, &store.namespace, &store.snapshotter)
    }) {
        Ok(f) => f,
        Err(e) => {
            for req in requests {
                r.fail(
                    req,
                    Some(&meta_path),
                    format!("{}: {e}", meta_path.display()),
                );
            }
            return r.out;
        }
    };
    let snap_db = r.host_root.join(snapshotter_dir(store)).join("metadata.db");
    let snapshots = store::read_db(&snap_db, store::parse_snapshots)
        .map_err(|e| format!("{}: {e}", snap_db.display()));
    for req in requests {
        r.request(req, &facts, &snapshots, &meta_path, &snap_db);
    }
    r.out
}

struct Resolver<'a> {
    out: Resolved,
    /// Entry path → its index in `out.entries`.
    seen: HashMap<PathBuf, usize>,
    store: &'a ContainerdStore,
    host_root: PathBuf,
    entry_root: PathBuf,
}

impl Resolver<'_> {
    /// A request that resolved to nothing at all.
    fn fail(&mut self, req: &ImageSource, path: Option<&Path>, msg: String) {
        let reference = match &req.request {
            ImageRequest::Reference(r) => r.clone(),
            ImageRequest::All => "*".into(),
        };
        self.warn(req, &reference, path, &msg);
        self.out.images.push(ImageReport {
            reference,
            priority: req.priority,
            warnings: vec![msg],
            ..Default::default()
        });
    }

    fn warn(&mut self, req: &ImageSource, reference: &str, path: Option<&Path>, msg: &str) {
        self.out.warnings.push(Warning::new(
            WarningKind::Image,
            path,
            Some(&req.origin),
            format!("image {reference}: {msg}"),
        ));
    }

    /// The path an entry names for `host` (the image's, under a root).
    fn entry_path(&self, host: &Path) -> PathBuf {
        match host.strip_prefix(&self.host_root) {
            Ok(rel) => self.entry_root.join(rel),
            Err(_) => host.to_path_buf(),
        }
    }

    /// Add an entry (once; a path named again keeps its most urgent
    /// priority).
    fn add(&mut self, host: &Path, priority: u32, image: &str) {
        let path = self.entry_path(host);
        if let Some(&i) = self.seen.get(&path) {
            let e = &mut self.out.entries[i];
            e.priority = e.priority.min(priority);
            return;
        }
        self.seen.insert(path.clone(), self.out.entries.len());
        self.out.entries.push(SourceEntry {
            path,
            priority,
            origin: Origin::Image {
                reference: image.to_string(),
            },
            ranges: None,
        });
    }

    fn request(
        &mut self,
        req: &ImageSource,
        facts: &MetaFacts,
        snapshots: &Result<HashMap<String, SnapshotRecord>, String>,
        meta_path: &Path,
        snap_db: &Path,
    ) {
        let found: Vec<(String, &ImageRecord)> = match &req.request {
            ImageRequest::All => {
                let all = all_images(&facts.images);
                if all.is_empty() {
                    let msg = format!("no images in namespace {:?}", self.store.namespace);
                    self.fail(req, Some(meta_path), msg);
                }
                all.into_iter().map(|i| (i.name.clone(), i)).collect()
            }
            ImageRequest::Reference(asked) => match find_image(&facts.images, asked) {
                Ok(record) => vec![(asked.clone(), record)],
                Err(msg) => {
                    let msg = format!("{msg} in namespace {:?}", self.store.namespace);
                    self.fail(req, Some(meta_path), msg);
                    return;
                }
            },
        };
        for (reference, record) in found {
            let report = self.image(req, reference, record, facts, snapshots, meta_path, snap_db);
            self.out.images.push(report);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn image(
        &mut self,
        req: &ImageSource,
        reference: String,
        record: &ImageRecord,
        facts: &MetaFacts,
        snapshots: &Result<HashMap<String, SnapshotRecord>, String>,
        meta_path: &Path,
        snap_db: &Path,
    ) -> ImageReport {
        let mut report = ImageReport {
            reference,
            image: Some(record.name.clone()),
            digest: Some(record.digest.clone()),
            priority: req.priority,
            ..Default::default()
        };
        let mut problems: Vec<(Option<PathBuf>, String)> = Vec::new();
        let name = record.name.as_str();
        self.add(meta_path, req.priority, name);
        let content = match image::read_image(&self.host_root, &record.digest) {
            Ok(c) => c,
            Err((c, e)) => {
                problems.push((None, e));
                c
            }
        };
        match snapshots {
            Ok(_) => self.add(snap_db, req.priority, name),
            Err(e) if !content.chain_ids.is_empty() => problems.push((None, e.clone())),
            Err(_) => {}
        }
        for blob in &content.blobs {
            self.add(blob, req.priority, name);
        }
        let snap_root = self.host_root.join(snapshotter_dir(self.store));
        let mut dirs = Vec::new();
        for (layer, chain) in content.chain_ids.iter().enumerate() {
            let Some(key) = facts.snapshot_keys.get(chain) else {
                problems.push((
                    None,
                    format!(
                        "layer {layer} ({chain}) is not unpacked for snapshotter {:?}",
                        self.store.snapshotter
                    ),
                ));
                continue;
            };
            let Ok(snaps) = snapshots else { continue };
            let Some(snap) = snaps.get(key) else {
                problems.push((
                    Some(snap_db.to_path_buf()),
                    format!("layer {layer}: snapshot {key:?} is not in the snapshotter's database"),
                ));
                continue;
            };
            let mut dir = snap_root.join("snapshots").join(snap.id.to_string());
            if self.store.snapshotter != "native" {
                dir.push("fs");
            }
            if snap.kind != store::KIND_COMMITTED {
                tracing::debug!(key, kind = snap.kind, "layer snapshot is not committed");
            }
            if dir.is_dir() {
                dirs.push(dir);
            } else {
                problems.push((
                    Some(dir.clone()),
                    format!("layer {layer}: snapshot directory is missing"),
                ));
            }
        }
        // Top layer first.
        for dir in dirs.iter().rev() {
            self.add(dir, req.priority, name);
            report
                .directories
                .push(self.entry_path(dir).display().to_string());
        }
        for (path, msg) in problems {
            self.warn(req, name, path.as_deref(), &msg);
            report.warnings.push(msg);
        }
        report
    }
}

/// The record `asked` names: by its exact name, by its normalised
/// reference, or, for a digest reference, by target digest.
fn find_image<'a>(images: &'a [ImageRecord], asked: &str) -> Result<&'a ImageRecord, String> {
    if let Some(exact) = images.iter().find(|i| i.name == asked) {
        return Ok(exact);
    }
    let r = normalize(asked)?;
    let full = r.to_string();
    if let Some(named) = images.iter().find(|i| i.name == full) {
        return Ok(named);
    }
    if let Some(digest) = &r.digest {
        let same_repo = |i: &&ImageRecord| {
            i.name
                .strip_prefix(&r.name)
                .is_some_and(|rest| rest.starts_with([':', '@']))
        };
        let by_digest: Vec<&ImageRecord> = images.iter().filter(|i| &i.digest == digest).collect();
        if let Some(i) = by_digest
            .iter()
            .copied()
            .find(same_repo)
            .or(by_digest.first().copied())
        {
            return Ok(i);
        }
    }
    Err(format!("no image record {full}"))
}

/// One record per target digest, preferring a tagged name over a digest
/// one or a CRI config id (`sha256:...`).
fn all_images(images: &[ImageRecord]) -> Vec<&ImageRecord> {
    let rank = |i: &ImageRecord| (i.name.starts_with("sha256:"), i.name.contains('@'));
    let mut best: Vec<&ImageRecord> = Vec::new();
    for i in images {
        match best.iter_mut().find(|b| b.digest == i.digest) {
            Some(b) if rank(i) < rank(b) => *b = i,
            Some(_) => {}
            None => best.push(i),
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &str, digest: char) -> ImageRecord {
        ImageRecord {
            name: name.into(),
            digest: format!("sha256:{}", digest.to_string().repeat(64)),
            media_type: String::new(),
        }
    }

    #[test]
    fn references_find_records_by_name_or_digest() {
        let images = [
            rec("docker.io/library/busybox:latest", 'a'),
            rec(&format!("sha256:{}", "c".repeat(64)), 'a'),
            rec("registry.example.com/app:v1", 'b'),
        ];
        let find = |s: &str| find_image(&images, s).map(|i| i.name.clone());
        assert_eq!(find("busybox").unwrap(), "docker.io/library/busybox:latest");
        let by_digest = format!("busybox@sha256:{}", "a".repeat(64));
        assert_eq!(
            find(&by_digest).unwrap(),
            "docker.io/library/busybox:latest"
        );
        let other = format!("registry.example.com/app@sha256:{}", "b".repeat(64));
        assert_eq!(find(&other).unwrap(), "registry.example.com/app:v1");
        assert!(find("busybox:1").unwrap_err().contains("busybox:1"));
        assert!(find("Bad").is_err());
        let all: Vec<_> = all_images(&images).iter().map(|i| &i.name).collect();
        assert_eq!(
            all,
            [
                "docker.io/library/busybox:latest",
                "registry.example.com/app:v1"
            ]
        );
    }
}
