//! Manifests are untrusted input even with a valid checksum: each crafted
//! attack (a file range of 2^50 bytes, ranges near `u64::MAX`, `../` and
//! absolute paths, `max_io` of 1 GiB) is refused by `prewarm run` and
//! `prewarm show` with exit 3 and a message naming the field, before
//! anything is opened or allocated; `--max-io 1G` on the command line is
//! refused with exit 2, naming the option's field. An image record is
//! shown when sound and refused likewise when it is not.

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::prewarm_cmd;
use prewarm_core::manifest::{
    DeviceHeader, Manifest, ManifestDevice, ManifestDirectory, ManifestFile, ManifestImage,
};
use prewarm_core::map::ByteRange;
use prewarm_core::PlanConfig;

/// A manifest of one file, otherwise valid.
fn manifest_with(path: &str, size: u64, file_ranges: Vec<ByteRange>) -> Manifest {
    Manifest {
        created_unix: 1_763_000_000,
        tool: "prewarm test".into(),
        plan: PlanConfig::default(),
        devices: vec![ManifestDevice {
            header: DeviceHeader {
                fs_type: "ext4".into(),
                uuid: *b"prewarm-untrust!",
                size: 1 << 30,
                logical_block_size: 512,
                node_hint: "/dev/none".into(),
            },
            files: vec![ManifestFile {
                path: PathBuf::from(OsStr::from_bytes(path.as_bytes())),
                ino: 12,
                size,
                mtime_sec: 1_700_000_000,
                mtime_nsec: 0,
                priority: 10,
                extents: Vec::new(),
                file_ranges,
                ranges: None,
                directory: false,
            }],
        }],
        images: Vec::new(),
    }
}

fn write(dir: &Path, name: &str, m: &Manifest) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, m.encode()).expect("writing the manifest");
    path
}

/// `run` and `show` both refuse `manifest` with exit 3, naming `field`.
fn assert_refused(name: &str, m: &Manifest, field: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(dir.path(), name, m);
    for args in [
        vec!["run", "--manifest", path.to_str().expect("utf-8 path")],
        vec!["show", path.to_str().expect("utf-8 path")],
    ] {
        let out = prewarm_cmd()
            .args(&args)
            .timeout(Duration::from_secs(60))
            .output()
            .expect("running prewarm");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{name}: {args:?}: {stderr}");
        assert!(stderr.contains(field), "{name}: {args:?}: {stderr}");
        assert!(stderr.contains(name), "{name}: the file is named: {stderr}");
    }
}

#[test]
fn a_file_range_longer_than_its_file_is_refused() {
    let m = manifest_with(
        "usr/bin/kubelet",
        4096,
        vec![ByteRange {
            offset: 0,
            len: 1 << 50,
        }],
    );
    assert_refused(
        "range-2p50.manifest",
        &m,
        "devices[0].files[0].file_ranges[0].len",
    );
}

#[test]
fn ranges_near_u64_max_are_refused() {
    for (i, (offset, len)) in [
        (u64::MAX - 10, u64::MAX - 10),
        (u64::MAX - 4, 100),
        (0, u64::MAX),
    ]
    .into_iter()
    .enumerate()
    {
        let m = manifest_with("usr/bin/kubelet", 4096, vec![ByteRange { offset, len }]);
        assert_refused(
            &format!("range-u64max-{i}.manifest"),
            &m,
            "devices[0].files[0].file_ranges[0].len",
        );
    }
}

#[test]
fn paths_leaving_the_filesystem_are_refused() {
    let range = vec![ByteRange { offset: 0, len: 10 }];
    assert_refused(
        "dotdot.manifest",
        &manifest_with("../../../../etc/hostname", 10, range.clone()),
        "devices[0].files[0].path",
    );
    assert_refused(
        "inner-dotdot.manifest",
        &manifest_with("usr/../../etc/hostname", 10, range.clone()),
        "devices[0].files[0].path",
    );
    assert_refused(
        "absolute.manifest",
        &manifest_with("/etc/passwd", 10, range),
        "devices[0].files[0].path",
    );
}

#[test]
fn a_max_io_of_1_gib_in_a_manifest_is_refused() {
    let mut m = manifest_with("usr/bin/kubelet", 4096, Vec::new());
    m.plan.max_io = 1 << 30;
    assert_refused("max-io-1g.manifest", &m, "plan.max_io");
}

#[test]
fn max_io_1g_on_the_command_line_is_a_usage_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("data");
    std::fs::write(&file, b"some bytes").expect("writing");
    let out = prewarm_cmd()
        .args(["--dry-run", "--max-io", "1G"])
        .arg(&file)
        .timeout(Duration::from_secs(60))
        .output()
        .expect("running prewarm");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("max_io"), "{stderr}");
    assert!(stderr.contains("64 MiB"), "the limit is given: {stderr}");
    // The limit itself is accepted.
    let out = prewarm_cmd()
        .args(["--dry-run", "--max-io", "64M"])
        .arg(&file)
        .timeout(Duration::from_secs(60))
        .output()
        .expect("running prewarm");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_valid_manifest_of_the_same_shape_is_not_refused_for_its_fields() {
    // The control: the same manifest with sane fields decodes, so the
    // refusals above are about the fields they name.
    let m = manifest_with(
        "usr/bin/kubelet",
        4096,
        vec![ByteRange {
            offset: 0,
            len: 4096,
        }],
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(dir.path(), "good.manifest", &m);
    let out = prewarm_cmd()
        .arg("show")
        .arg(&path)
        .timeout(Duration::from_secs(60))
        .output()
        .expect("running prewarm");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `manifest_with` one file and an image of two layer directories.
fn manifest_with_image() -> Manifest {
    let mut m = manifest_with(
        "usr/bin/kubelet",
        10,
        vec![ByteRange { offset: 0, len: 10 }],
    );
    let dir = |id: u32| ManifestDirectory {
        uuid: *b"prewarm-untrust!",
        path: PathBuf::from(format!(
            "var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/{id}/fs"
        )),
    };
    m.images.push(ManifestImage {
        reference: "small:1".into(),
        image: "docker.io/library/small:1".into(),
        digest: format!("sha256:{}", "5e".repeat(32)),
        priority: 60,
        directories: vec![dir(2), dir(1)],
    });
    m
}

#[test]
fn show_lists_the_images_of_a_manifest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(dir.path(), "images.manifest", &manifest_with_image());
    let path = path.to_str().expect("utf-8 path");
    let want_dirs = [
        "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/2/fs",
        "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/1/fs",
    ];
    let out = prewarm_cmd()
        .args(["show", path])
        .output()
        .expect("running prewarm");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let block: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("  image "))
        .collect();
    let digest = format!("    digest sha256:{}", "5e".repeat(32));
    let mut want = vec![
        "  image docker.io/library/small:1 (asked as small:1), priority 60: 2 layer directories",
        digest.as_str(),
    ];
    let shown: Vec<String> = want_dirs.iter().map(|d| format!("    {d}")).collect();
    want.extend(shown.iter().map(String::as_str));
    assert_eq!(block, want, "{text}");

    let out = prewarm_cmd()
        .args(["show", "--json", path])
        .output()
        .expect("running prewarm");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let image = &json["images"][0];
    assert_eq!(image["reference"], "small:1");
    assert_eq!(image["image"], "docker.io/library/small:1");
    assert_eq!(image["digest"], format!("sha256:{}", "5e".repeat(32)));
    assert_eq!(image["priority"], 60);
    let dirs: Vec<String> = image["directories"]
        .as_array()
        .expect("directories")
        .iter()
        .map(|d| {
            assert_eq!(d["filesystem"], json["devices"][0]["uuid"], "{d}");
            format!("/{}", d["path"].as_str().expect("a path"))
        })
        .collect();
    assert_eq!(dirs, want_dirs);
}

#[test]
fn an_image_directory_leaving_its_filesystem_is_refused() {
    let mut m = manifest_with_image();
    m.images[0].directories[1].path = PathBuf::from("../../etc");
    assert_refused("image-dotdot.manifest", &m, "images[0].directories[1].path");
    let mut m = manifest_with_image();
    m.images[0].directories[0].uuid = [7; 16];
    assert_refused(
        "image-other-fs.manifest",
        &m,
        "images[0].directories[0].filesystem",
    );
}
