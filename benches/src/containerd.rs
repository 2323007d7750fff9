//! A private containerd and the OCI archives it imports, for the tests and
//! benchmarks of `--image` (the CLI's `tests/containerd.rs`, the image-store
//! fixture of [`crate::images`]).
//!
//! Everything is offline: [`oci_archive`] writes an OCI image-layout archive
//! from file contents given in memory, and [`Containerd`] runs Debian's
//! `containerd` with its own root, state, socket and configuration (no CRI
//! plugin), so `ctr images import` unpacks the archive into a store laid
//! out exactly as on a node. [`Containerd::lowerdirs`] asks containerd
//! itself which snapshot directories it mounts for an image: the truth
//! prewarm's own resolution is checked against.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::e2e::sys::run_ok;

/// The tools a private containerd needs.
pub const TOOLS: &[&str] = &["containerd", "ctr", "runc", "tar"];

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// An image written as an OCI archive.
#[derive(Debug, Clone)]
pub struct OciImage {
    /// The full reference the archive names it by (`io.containerd.image.name`).
    pub name: String,
    /// `sha256:<hex>` of the manifest (the image record's target).
    pub manifest_digest: String,
    /// `sha256:<hex>` of the image configuration.
    pub config_digest: String,
    /// The layers' chain IDs, bottom layer first.
    pub chain_ids: Vec<String>,
    /// The archive, ready for `ctr images import`.
    pub archive: PathBuf,
}

/// One file of a layer: its path under the layer's `data/` directory
/// (`/`-separated, parents created) and its contents.
pub type LayerFile<P> = (P, Vec<u8>);

/// Write an OCI image-layout archive of `name` under `dir`, whose layers
/// (bottom first) hold `layers` (uncompressed tars, reproducible: sorted,
/// mtime 0). Scratch trees and tars are removed once archived.
pub fn oci_archive<P: AsRef<str>>(
    dir: &Path,
    name: &str,
    layers: &[&[LayerFile<P>]],
) -> Result<OciImage> {
    let tag = name.replace(['/', ':', '@'], "_");
    let layout = dir.join(format!("layout-{tag}"));
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).with_context(|| format!("mkdir {}", blobs.display()))?;
    let blob = |bytes: &[u8]| -> Result<(String, usize)> {
        let hex = sha256_hex(bytes);
        std::fs::write(blobs.join(&hex), bytes).context("writing a blob")?;
        Ok((format!("sha256:{hex}"), bytes.len()))
    };
    let mut diff_ids = Vec::new();
    let mut layer_descs = Vec::new();
    for (i, files) in layers.iter().enumerate() {
        let tree = dir.join(format!("tree-{tag}-{i}"));
        for (file, contents) in files.iter() {
            let path = tree.join("data").join(file.as_ref());
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("mkdir {}", parent.display()))?;
            }
            std::fs::write(&path, contents)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        let tar = dir.join(format!("layer-{tag}-{i}.tar"));
        run_ok(
            Command::new("tar")
                .args(["--sort=name", "--mtime=@0", "--owner=0", "--group=0", "-C"])
                .arg(&tree)
                .arg("-cf")
                .arg(&tar)
                .arg("."),
        )?;
        let bytes = std::fs::read(&tar).with_context(|| format!("reading {}", tar.display()))?;
        let (digest, size) = blob(&bytes)?;
        std::fs::remove_file(&tar).ok();
        std::fs::remove_dir_all(&tree).ok();
        diff_ids.push(digest.clone());
        layer_descs.push(json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest, "size": size
        }));
    }
    let config = json!({
        "architecture": oci_arch(), "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let (config_digest, config_size) = blob(config.to_string().as_bytes())?;
    let manifest = json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest, "size": config_size},
        "layers": layer_descs,
    });
    let (manifest_digest, manifest_size) = blob(manifest.to_string().as_bytes())?;
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": manifest_size,
            "annotations": {"io.containerd.image.name": name}}],
    });
    std::fs::write(layout.join("index.json"), index.to_string()).context("writing index.json")?;
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .context("writing oci-layout")?;
    let archive = dir.join(format!("{tag}.tar"));
    run_ok(
        Command::new("tar")
            .arg("-C")
            .arg(&layout)
            .arg("-cf")
            .arg(&archive)
            .arg("."),
    )?;
    std::fs::remove_dir_all(&layout).ok();
    Ok(OciImage {
        name: name.into(),
        manifest_digest,
        config_digest,
        chain_ids: chain_ids(&diff_ids),
        archive,
    })
}

/// Chain IDs of layers with these diff IDs: `C0 = D0`,
/// `Cn = sha256(Cn-1 + " " + Dn)`.
fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => format!("sha256:{}", sha256_hex(format!("{prev} {d}").as_bytes())),
        };
        out.push(next);
    }
    out
}

/// The OCI name of this machine's architecture.
fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "arm64",
        _ => "amd64",
    }
}

/// A private containerd (root `root`; state, socket, configuration and log
/// under its work directory), killed on drop.
pub struct Containerd {
    child: Option<Child>,
    dir: PathBuf,
    config: PathBuf,
    socket: PathBuf,
}

impl Containerd {
    /// Start one and wait (at most 20 s) until `ctr version` answers.
    pub fn start(dir: &Path, root: &Path) -> Result<Containerd> {
        let (state, socket) = (dir.join("state"), dir.join("containerd.sock"));
        let config = dir.join("config.toml");
        std::fs::create_dir_all(dir).with_context(|| format!("mkdir {}", dir.display()))?;
        // CRI (not needed, adds its own image records), opt (Debian points
        // it at the system's directory) and the snapshotters that need
        // their own filesystems are off.
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = {root:?}\nstate = {state:?}\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\", \"io.containerd.internal.v1.opt\", \
                 \"io.containerd.snapshotter.v1.aufs\", \"io.containerd.snapshotter.v1.btrfs\", \
                 \"io.containerd.snapshotter.v1.zfs\", \"io.containerd.snapshotter.v1.devmapper\"]\n\
                 [grpc]\n  address = {socket:?}\n"
            ),
        )
        .with_context(|| format!("writing {}", config.display()))?;
        let mut c = Containerd {
            child: None,
            dir: dir.to_path_buf(),
            config,
            socket,
        };
        c.restart()?;
        Ok(c)
    }

    /// Start it again after [`Containerd::stop`].
    pub fn restart(&mut self) -> Result<()> {
        let log_path = self.dir.join("containerd.log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        self.child = Some(
            Command::new("containerd")
                .arg("--config")
                .arg(&self.config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .context("starting containerd")?,
        );
        let start = Instant::now();
        while !self.socket.exists() || !self.ctr_ok(&["version"]) {
            if start.elapsed() > Duration::from_secs(20) {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                bail!("containerd did not start in 20 s; its log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn ctr_ok(&self, args: &[&str]) -> bool {
        Command::new("ctr")
            .arg("-a")
            .arg(&self.socket)
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// `ctr -n k8s.io ARGS`; its stdout.
    pub fn ctr(&self, args: &[&str]) -> Result<String> {
        run_ok(
            Command::new("ctr")
                .arg("-a")
                .arg(&self.socket)
                .args(["-n", "k8s.io"])
                .args(args),
        )
    }

    /// Import (and unpack for the overlayfs snapshotter) an archive.
    pub fn import(&self, image: &OciImage) -> Result<()> {
        let archive = image.archive.to_str().context("a non-UTF-8 archive path")?;
        self.ctr(&["images", "import", "--snapshotter", "overlayfs", archive])
            .map(drop)
    }

    /// The snapshot directories containerd mounts for an image whose top
    /// layer has chain ID `top`, top layer first: the `lowerdir` of a
    /// snapshot prepared on it (and removed again).
    pub fn lowerdirs(&self, top: &str) -> Result<Vec<String>> {
        let short = top.get(7..19).context("a chain ID too short")?;
        let key = format!("prewarm-test-{short}");
        let out = self.ctr(&[
            "snapshots",
            "--snapshotter",
            "overlayfs",
            "prepare",
            "--mounts",
            &key,
            top,
        ])?;
        self.ctr(&["snapshots", "--snapshotter", "overlayfs", "rm", &key])?;
        let mounts: Value = serde_json::from_str(&out).context("ctr's mounts as JSON")?;
        let options = mounts[0]["Options"]
            .as_array()
            .ok_or_else(|| anyhow!("no mount options in {mounts}"))?;
        let lower = options
            .iter()
            .filter_map(Value::as_str)
            .find_map(|o| o.strip_prefix("lowerdir="))
            .ok_or_else(|| anyhow!("no lowerdir in {mounts}"))?;
        Ok(lower.split(':').map(str::to_string).collect())
    }

    /// SIGTERM, and wait for it to exit (it closes its databases).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_oci_rule() {
        let d = ["sha256:aa".to_string(), "sha256:bb".to_string()];
        let c = chain_ids(&d);
        assert_eq!(c[0], "sha256:aa");
        assert_eq!(
            c[1],
            format!("sha256:{}", sha256_hex(b"sha256:aa sha256:bb"))
        );
    }
}
