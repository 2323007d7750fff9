//! End-to-end tests of the `prewarm-fixture` binary: builds the small preset
//! for real (mkfs + loop mount, so root is needed), then mounts the result
//! read-only and checks the critical list against the files on it.
//!
//! Without root each test prints `SKIP: <reason>` and returns, unless
//! PREWARM_REQUIRE_PRIVILEGED=1, in which case it panics.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::run;

const BIN: &str = env!("CARGO_BIN_EXE_prewarm-fixture");

/// Root and `tools`; otherwise SKIP (see `common::or_skip`).
fn privileged(tools: &[&str]) -> bool {
    common::privileged_with(false, tools)
}

/// Unmounts on drop.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn build_and_check(fs: &str, ro_opts: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("fx");
    let summary = run(Command::new(BIN)
        .args(["--small", "--fs", fs, "--mount-prefix", "/mnt/vol", "--out"])
        .arg(&out));
    eprintln!("info: {fs} fixture:\n{summary}");
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("manifest.json")).expect("manifest"),
    )
    .expect("manifest JSON");
    let crit_files = manifest["summary"]["critical"]["files"]
        .as_u64()
        .expect("critical files");
    let runs = manifest["critical_layout"]["runs"].as_u64().expect("runs");
    assert!(runs > 10, "critical files are not scattered: {runs} runs");

    let list = std::fs::read_to_string(out.join("critical.list")).expect("list");
    let entries: Vec<(u32, &str)> = list
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (p, path) = l.split_once(' ').expect("priority and path");
            (p.parse().expect("numeric priority"), path)
        })
        .collect();
    assert_eq!(entries.len() as u64, crit_files);
    assert!(entries
        .iter()
        .any(|&(p, e)| p == 10 && e == "/mnt/vol/usr/bin/kubelet"));
    assert!(entries.iter().any(|&(p, _)| p == 50));

    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    run(Command::new("mount")
        .args(["-t", fs, "-o", &format!("loop,{ro_opts}")])
        .arg(out.join("volume.img"))
        .arg(&mnt));
    let _guard = Mounted(mnt.clone());
    for (_, path) in &entries {
        let rel = path.strip_prefix("/mnt/vol/").expect("prefix");
        let meta = std::fs::metadata(Path::new(&mnt).join(rel))
            .unwrap_or_else(|e| panic!("{path} missing on the volume: {e}"));
        assert!(meta.is_file());
    }
    let kubelet = std::fs::metadata(mnt.join("usr/bin/kubelet")).expect("kubelet");
    assert_eq!(kubelet.len(), 12 << 20);
    assert_eq!(kubelet.mode() & 0o111, 0o111, "kubelet is executable");
    let snaps = mnt.join("var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots");
    assert!(std::fs::read_dir(snaps).expect("snapshots").count() >= 6);
}

#[test]
fn small_ext4_fixture_builds_and_mounts() {
    if !privileged(&["mkfs.ext4", "filefrag", "losetup"]) {
        return;
    }
    build_and_check("ext4", "ro,noload");
}

#[test]
fn small_xfs_fixture_builds_and_mounts() {
    if !privileged(&["mkfs.xfs", "filefrag", "losetup"]) {
        return;
    }
    build_and_check("xfs", "ro,norecovery");
}
