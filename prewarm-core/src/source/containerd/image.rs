//! From an image record to its layers: the target (an index, for which
//! this machine's platform is picked, or a manifest), the config's layer
//! diff IDs, and their chain IDs, all read from containerd's content store
//! (`io.containerd.content.v1.content/blobs/<algorithm>/<hex>`), each blob
//! checked against its digest.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::reference::is_digest;
use crate::input_file::read_untrusted;

/// Largest manifest, index or config blob read (registries refuse
/// manifests over 4 MiB; configs are a few KiB).
pub const MAX_BLOB_BYTES: u64 = 16 << 20;

/// Indexes nested deeper than this are refused.
const MAX_INDEX_DEPTH: usize = 4;

/// The content store under containerd's root.
pub const CONTENT_DIR: &str = "io.containerd.content.v1.content";

#[derive(Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
}

/// An index or a manifest: whichever fields it has.
#[derive(Deserialize)]
struct IndexOrManifest {
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
}

#[derive(Deserialize)]
struct Config {
    rootfs: RootFs,
}

#[derive(Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
}

/// An image's content, as far as it was found.
#[derive(Debug, Default)]
pub struct ImageContent {
    /// The blobs read (index, manifest, config), as paths on this host.
    pub blobs: Vec<PathBuf>,
    /// The layers' chain IDs, bottom layer first.
    pub chain_ids: Vec<String>,
}

/// The platform an index entry must name: `linux` and this machine's
/// architecture in OCI's words.
pub fn this_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// The path of blob `digest` under containerd's root `root`, if the
/// digest is well formed (it comes from a database: never a path of its
/// own).
pub fn blob_path(root: &Path, digest: &str) -> Option<PathBuf> {
    let (alg, hex) = digest.split_once(':').filter(|_| is_digest(digest))?;
    Some(root.join(CONTENT_DIR).join("blobs").join(alg).join(hex))
}

fn read_blob(root: &Path, digest: &str) -> Result<(PathBuf, Vec<u8>), String> {
    let path = blob_path(root, digest).ok_or_else(|| format!("bad digest {digest:?}"))?;
    let bytes = read_untrusted(&path, MAX_BLOB_BYTES)
        .map_err(|e| format!("blob {digest} ({}): {e}", path.display()))?;
    if let Some(hex) = digest.strip_prefix("sha256:") {
        let actual = format!("{:x}", Sha256::digest(&bytes));
        if actual != hex {
            return Err(format!(
                "blob {digest} ({}) does not match its digest",
                path.display()
            ));
        }
    }
    Ok((path, bytes))
}

fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8], digest: &str) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("blob {digest}: {e}"))
}

/// The content of the image whose target is `digest`, read from the
/// content store under `root`. Errors say what is missing; `blobs` holds
/// what was read before.
pub fn read_image(root: &Path, digest: &str) -> Result<ImageContent, (ImageContent, String)> {
    let mut content = ImageContent::default();
    let mut digest = digest.to_string();
    for _ in 0..=MAX_INDEX_DEPTH {
        let (path, bytes) = match read_blob(root, &digest) {
            Ok(b) => b,
            Err(e) => return Err((content, e)),
        };
        content.blobs.push(path);
        let doc: IndexOrManifest = match parse(&bytes, &digest) {
            Ok(d) => d,
            Err(e) => return Err((content, e)),
        };
        if let Some(manifests) = doc.manifests {
            match pick_platform(root, &manifests) {
                Some(d) => digest = d,
                None => {
                    let msg = format!(
                        "index {digest} has no manifest for linux/{} in the content store",
                        this_architecture()
                    );
                    return Err((content, msg));
                }
            }
            continue;
        }
        let Some(config) = doc.config else {
            return Err((
                content,
                format!("blob {digest}: neither an index nor a manifest"),
            ));
        };
        let (path, bytes) = match read_blob(root, &config.digest) {
            Ok(b) => b,
            Err(e) => return Err((content, e)),
        };
        content.blobs.push(path);
        let config: Config = match parse(&bytes, &config.digest) {
            Ok(c) => c,
            Err(e) => return Err((content, e)),
        };
        if let Some(bad) = config.rootfs.diff_ids.iter().find(|d| !is_digest(d)) {
            return Err((content, format!("config: bad diff ID {bad:?}")));
        }
        content.chain_ids = chain_ids(&config.rootfs.diff_ids);
        return Ok(content);
    }
    Err((
        content,
        format!("indexes nested deeper than {MAX_INDEX_DEPTH}"),
    ))
}

/// The entry of an index for this machine (`linux` and its architecture)
/// whose blob is present (containerd fetches only the platforms it
/// unpacks); an entry without a platform counts when no entry names one.
fn pick_platform(root: &Path, manifests: &[Descriptor]) -> Option<String> {
    let present = |d: &&Descriptor| blob_path(root, &d.digest).is_some_and(|p| p.is_file());
    let arch = this_architecture();
    let named = |d: &&Descriptor| {
        d.platform
            .as_ref()
            .is_some_and(|p| p.os == "linux" && p.architecture == arch)
    };
    let anonymous = |d: &&Descriptor| d.platform.is_none() && !d.media_type.contains("attestation");
    manifests
        .iter()
        .filter(named)
        .find(present)
        .or_else(|| manifests.iter().filter(anonymous).find(present))
        .map(|d| d.digest.clone())
}

/// Chain IDs of layers with these diff IDs: the first is its diff ID, each
/// next is `sha256(previous + " " + diff ID)`.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff in diff_ids {
        let next = match out.last() {
            None => diff.clone(),
            Some(prev) => format!("sha256:{:x}", Sha256::digest(format!("{prev} {diff}"))),
        };
        out.push(next);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_oci_rule() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let ids = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(ids[0], a);
        let want = format!("sha256:{:x}", Sha256::digest(format!("{a} {b}")));
        assert_eq!(ids[1], want);
        assert!(blob_path(Path::new("/r"), "sha256:../../etc/passwd").is_none());
    }
}
