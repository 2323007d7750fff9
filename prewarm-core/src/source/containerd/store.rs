//! What containerd's two databases say, read without the daemon: from
//! `meta.db` the image records of a namespace and, for a snapshotter, each
//! committed layer's backend key (by chain ID); from the snapshotter's own
//! `metadata.db` each key's numeric id, which names its directory.
//!
//! The layouts (containerd 1.6 to 2.x, schema `v1`):
//!
//! ```text
//! meta.db      v1/<namespace>/images/<name>/target/{digest, mediatype, size}
//!              v1/<namespace>/snapshots/<snapshotter>/<chain ID>/name = <backend key>
//! metadata.db  v1/snapshots/<backend key>/{id (uvarint), kind (1 byte), parent, ...}
//! ```
//!
//! A database is read whole (at most [`MAX_DB_BYTES`], through the
//! untrusted-input checks) and parsed from memory; containerd may be
//! writing it meanwhile, so a parse error is retried on a fresh read
//! ([`READ_ATTEMPTS`] in all) before it is reported.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use super::bolt::{BoltError, Bucket, Db, Value};
use crate::input_file::{read_untrusted, InputError};

/// Largest database read: containerd's `meta.db` of a node with a few
/// hundred images is a few MiB; 1 GiB bounds a hostile or runaway file.
pub const MAX_DB_BYTES: u64 = 1 << 30;

/// Reads of a database before a parse error is final (a file read while
/// containerd commits may be torn).
pub const READ_ATTEMPTS: usize = 3;

/// Snapshot kind `committed` in a snapshotter's `metadata.db`.
pub const KIND_COMMITTED: u8 = 3;

/// Why a database could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file could not be read, or was refused.
    #[error("{0}")]
    Input(#[from] InputError),
    /// Not a bolt file this reader understands, or corrupt.
    #[error("{0}")]
    Bolt(#[from] BoltError),
    /// A bolt file, but not of the layout expected.
    #[error("{0}")]
    Layout(String),
}

/// An image record of `meta.db`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRecord {
    /// Its name (a normalised reference, or a CRI `sha256:` config id).
    pub name: String,
    /// The target descriptor's digest.
    pub digest: String,
    /// The target descriptor's media type.
    pub media_type: String,
}

/// What `meta.db` says about one namespace and snapshotter.
#[derive(Debug, Default)]
pub struct MetaFacts {
    /// The image records, in name order.
    pub images: Vec<ImageRecord>,
    /// Chain ID (the snapshot's name for unpacked layers) → the
    /// snapshotter's key.
    pub snapshot_keys: HashMap<String, String>,
}

/// A snapshot of the snapshotter's `metadata.db`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotRecord {
    /// Its id: the name of its directory.
    pub id: u64,
    /// Its kind (3: committed).
    pub kind: u8,
}

/// Read `path` whole and extract with `parse`, retrying on a parse error.
pub fn read_db<T>(
    path: &Path,
    parse: impl Fn(&[u8]) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let mut attempt = 1;
    loop {
        let bytes = read_untrusted(path, MAX_DB_BYTES)?;
        match parse(&bytes) {
            Err(StoreError::Bolt(e)) if attempt < READ_ATTEMPTS => {
                tracing::debug!(path = %path.display(), "{e}: reading it again");
                attempt += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

fn text(v: &[u8]) -> String {
    String::from_utf8_lossy(v).into_owned()
}

fn buckets<'a>(b: &Bucket<'a>) -> Result<Vec<(&'a [u8], Bucket<'a>)>, BoltError> {
    Ok(b.entries()?
        .into_iter()
        .filter_map(|(k, v)| match v {
            Value::Bucket(b) => Some((k, b)),
            Value::Bytes(_) => None,
        })
        .collect())
}

/// The image records of `namespace` and the snapshot keys of `snapshotter`
/// in the bytes of a `meta.db`.
pub fn parse_meta(
    data: &[u8],
    namespace: &str,
    snapshotter: &str,
) -> Result<MetaFacts, StoreError> {
    let db = Db::open(data)?;
    let v1 = db.root().bucket(b"v1")?.ok_or_else(|| {
        StoreError::Layout("no `v1` bucket: not a containerd metadata database of schema v1".into())
    })?;
    let Some(ns) = v1.bucket(namespace.as_bytes())? else {
        return Err(StoreError::Layout(format!(
            "no namespace {namespace:?} in the database"
        )));
    };
    let mut facts = MetaFacts::default();
    if let Some(images) = ns.bucket(b"images")? {
        for (name, image) in buckets(&images)? {
            let Some(target) = image.bucket(b"target")? else {
                continue;
            };
            let (Some(digest), media_type) =
                (target.value(b"digest")?, target.value(b"mediatype")?)
            else {
                continue;
            };
            facts.images.push(ImageRecord {
                name: text(name),
                digest: text(digest),
                media_type: media_type.map(text).unwrap_or_default(),
            });
        }
    }
    if let Some(snaps) = ns.path(&[b"snapshots", snapshotter.as_bytes()])? {
        for (name, snap) in buckets(&snaps)? {
            if let Some(key) = snap.value(b"name")? {
                facts.snapshot_keys.insert(text(name), text(key));
            }
        }
    }
    Ok(facts)
}

/// Every snapshot of a snapshotter's `metadata.db`, by key.
pub fn parse_snapshots(data: &[u8]) -> Result<HashMap<String, SnapshotRecord>, StoreError> {
    let db = Db::open(data)?;
    let Some(snaps) = db.root().path(&[b"v1", b"snapshots"])? else {
        return Err(StoreError::Layout(
            "no `v1/snapshots` bucket: not a snapshotter database this reader knows".into(),
        ));
    };
    let mut out = HashMap::new();
    for (key, snap) in buckets(&snaps)? {
        let Some(id) = snap.value(b"id")?.and_then(uvarint) else {
            continue;
        };
        let kind = snap.value(b"kind")?.and_then(|k| k.first().copied());
        out.insert(
            text(key),
            SnapshotRecord {
                id,
                kind: kind.unwrap_or(0),
            },
        );
    }
    Ok(out)
}

/// Go's `binary.Uvarint`: `None` if truncated or longer than 64 bits.
fn uvarint(bytes: &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        if i == 9 && b > 1 {
            return None;
        }
        value |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uvarint_reads_go_encodings() {
        assert_eq!(uvarint(&[0x05]), Some(5));
        assert_eq!(uvarint(&[0xac, 0x02]), Some(300));
        assert_eq!(uvarint(&[0x80]), None);
        assert_eq!(uvarint(&[]), None);
        assert_eq!(uvarint(&[0xff; 10]), None);
    }
}

#[cfg(test)]
mod fixture_tests {
    //! On the databases of a real containerd 1.6.20 (testdata/: one image
    //! of two layers imported, then tagged 30 more times; free pages
    //! zeroed), and on mutations of them.
    use super::*;
    use proptest::prelude::*;

    const META: &[u8] = include_bytes!("testdata/meta.db");
    const SNAPSHOTS: &[u8] = include_bytes!("testdata/metadata.db");

    #[test]
    fn reads_a_real_containerd_store() {
        let facts = parse_meta(META, "k8s.io", "overlayfs").unwrap();
        assert_eq!(facts.images.len(), 31);
        assert!(facts
            .images
            .iter()
            .any(|i| i.name == "docker.io/library/test:1"
                && i.media_type == "application/vnd.oci.image.manifest.v1+json"));
        assert_eq!(facts.snapshot_keys.len(), 2);
        let snaps = parse_snapshots(SNAPSHOTS).unwrap();
        let mut ids: Vec<_> = facts
            .snapshot_keys
            .values()
            .map(|k| snaps[k])
            .map(|s| (s.id, s.kind))
            .collect();
        ids.sort();
        assert_eq!(ids, [(1, KIND_COMMITTED), (2, KIND_COMMITTED)]);
        assert!(matches!(
            parse_meta(META, "default", "overlayfs"),
            Err(StoreError::Layout(_))
        ));
        assert!(matches!(
            parse_meta(SNAPSHOTS, "k8s.io", "overlayfs"),
            Err(StoreError::Layout(_))
        ));
    }

    fn walk_all(data: &[u8]) {
        let _ = parse_meta(data, "k8s.io", "overlayfs");
        let _ = parse_snapshots(data);
        if let Ok(db) = Db::open(data) {
            fn walk(b: &Bucket<'_>, depth: usize) {
                if depth > 8 {
                    return;
                }
                if let Ok(entries) = b.entries() {
                    for (k, v) in entries {
                        let _ = b.get(k);
                        if let Value::Bucket(inner) = v {
                            walk(&inner, depth + 1);
                        }
                    }
                }
            }
            walk(&db.root(), 0);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Corrupt databases (bytes flipped, runs overwritten, truncated)
        /// are errors or wrong answers, never a panic or a hang.
        #[test]
        fn mutated_databases_never_panic(
            which in 0..3usize,
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..64),
            run in proptest::option::of((any::<prop::sample::Index>(), proptest::collection::vec(any::<u8>(), 1..64))),
            cut in proptest::option::of(any::<prop::sample::Index>()),
            resign in any::<bool>(),
        ) {
            let sample = crate::source::containerd::bolt::tests::sample();
            let mut data = [META, SNAPSHOTS, &sample][which].to_vec();
            // Mutations aimed at the pages that matter: the metas and the
            // first pages hold the roots and most of the tree.
            for (at, byte) in flips {
                let i = at.index(data.len().min(64 << 10));
                data[i] ^= byte | 1;
            }
            if let Some((at, bytes)) = run {
                let i = at.index(data.len());
                let end = (i + bytes.len()).min(data.len());
                data[i..end].copy_from_slice(&bytes[..end - i]);
            }
            if resign {
                // Whoever can write the file can fix the checksums: the
                // walk below the meta pages must hold on its own.
                for meta in [16, 4096 + 16] {
                    if let Some(m) = data.get_mut(meta..meta + 64) {
                        let sum = crate::source::containerd::bolt::fnv1a64(&m[..56]);
                        m[56..].copy_from_slice(&sum.to_le_bytes());
                    }
                }
            }
            if let Some(at) = cut {
                data.truncate(at.index(data.len()));
            }
            walk_all(&data);
        }
    }
}
