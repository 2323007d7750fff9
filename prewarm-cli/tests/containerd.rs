//! `--image` against a real containerd (Debian's package), offline: the
//! test writes OCI archives itself, a private containerd (own root, state
//! and socket under a tempdir) imports and unpacks them, and prewarm must
//! resolve exactly the snapshot directories containerd itself mounts for
//! each image (the `lowerdir` of a snapshot prepared on its top layer): by
//! tag, by digest and with `--all-images`, while containerd runs (holding
//! its databases open and locked) and after it stopped; and a manifest
//! planned with `--image` names them too, in `show` and in a replay's
//! report.

mod common;

use std::path::Path;

use common::*;
use prewarm_benches::containerd::{oci_archive, Containerd, TOOLS};
use prewarm_core::DEFAULT_PRIORITY;
use serde_json::Value;

fn directories(report: &Value, image: &str) -> Vec<String> {
    let images = report["images"].as_array().expect("images in the report");
    let entry = images
        .iter()
        .find(|i| i["image"] == image)
        .unwrap_or_else(|| panic!("{image} not in {images:?}"));
    entry["directories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect()
}

fn resolve(root: &Path, args: &[&str]) -> Value {
    let mut all = vec!["-n", "--containerd-root", root.to_str().unwrap()];
    all.extend_from_slice(args);
    let (report, out) = prewarm_json(&all);
    assert!(out.status.success(), "{}", stderr(&out));
    report
}

#[test]
fn images_resolve_to_the_directories_containerd_mounts() {
    if !privileged("images_resolve_to_the_directories_containerd_mounts", TOOLS) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let root = dir.join("root/var/lib/containerd");
    let big = vec![7u8; 300_000];
    let base: &[(&str, Vec<u8>)] = &[("base", b"base layer".to_vec()), ("big", big)];
    let small = oci_archive(
        dir,
        "docker.io/library/small:1",
        &[base, &[("top", b"small top".to_vec())]],
    )
    .unwrap();
    let other = oci_archive(
        dir,
        "registry.example.com/team/other:v2",
        &[
            base,
            &[("mid", b"mid".to_vec())],
            &[("top", b"other top".to_vec())],
        ],
    )
    .unwrap();
    let mut containerd = Containerd::start(dir, &root).unwrap();
    for image in [&small, &other] {
        containerd.import(image).unwrap();
    }
    let expected_small = containerd
        .lowerdirs(small.chain_ids.last().unwrap())
        .unwrap();
    let expected_other = containerd
        .lowerdirs(other.chain_ids.last().unwrap())
        .unwrap();
    assert_eq!(expected_small.len(), 2);
    assert_eq!(expected_other.len(), 3);
    assert_eq!(
        expected_small[1], expected_other[2],
        "the shared base layer"
    );

    let digest_ref = format!("small@{}", small.manifest_digest);
    let check = |phase: &str| {
        // By tag, short name.
        let r = resolve(&root, &["--image", "small:1"]);
        assert_eq!(directories(&r, &small.name), expected_small, "{phase}: tag");
        assert_eq!(r["images"][0]["digest"], small.manifest_digest.as_str());
        // The files containerd reads to start it are planned too.
        let files: Vec<&str> = r["file_maps"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|f| f["path"].as_str())
            .collect();
        let manifest_blob = root
            .join("io.containerd.content.v1.content/blobs/sha256")
            .join(&small.manifest_digest[7..]);
        for want in [
            root.join("io.containerd.metadata.v1.bolt/meta.db"),
            root.join("io.containerd.snapshotter.v1.overlayfs/metadata.db"),
            manifest_blob,
            Path::new(&expected_small[0]).join("data/top"),
            Path::new(&expected_small[1]).join("data/big"),
        ] {
            assert!(
                files.contains(&want.to_str().unwrap()),
                "{phase}: {} not in {files:?}",
                want.display()
            );
        }
        // By digest.
        let r = resolve(&root, &["--image", &digest_ref]);
        assert_eq!(
            directories(&r, &small.name),
            expected_small,
            "{phase}: digest"
        );
        // Every image.
        let r = resolve(&root, &["--all-images"]);
        assert_eq!(
            r["images"].as_array().unwrap().len(),
            2,
            "{phase}: {}",
            r["images"]
        );
        assert_eq!(directories(&r, &small.name), expected_small, "{phase}: all");
        assert_eq!(directories(&r, &other.name), expected_other, "{phase}: all");
        // Unknown references and another snapshotter are warnings naming
        // the reference; the rest still runs.
        let r = resolve(
            &root,
            &[
                "--image",
                "nothere",
                "--image",
                "small:1",
                "--snapshotter",
                "native",
            ],
        );
        let warnings = r["warnings"].to_string();
        assert!(
            warnings.contains("image nothere: no image record docker.io/library/nothere:latest"),
            "{warnings}"
        );
        assert!(
            warnings.contains("not unpacked for snapshotter \\\"native\\\""),
            "{warnings}"
        );
    };
    // containerd running: it holds both databases open (and locked).
    check("containerd running");
    containerd.stop();
    check("containerd stopped");
}

#[test]
fn plan_root_reads_the_store_inside_the_image() {
    if !privileged(
        "plan_root_reads_the_store_inside_the_image",
        &["containerd", "ctr", "runc", "tar", "losetup", "mkfs.ext4"],
    ) {
        return;
    }
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // The image's root filesystem: a manifest maps files on a block device.
    let fs_image = dir.join("root.ext4");
    make_fs_image(&fs_image, "ext4", 256);
    let lo = LoopDev::attach(&fs_image, false);
    let image_root = dir.join("image");
    let _mounted = Mounted::mount(lo.path(), &image_root, "ext4", "rw");
    let root = image_root.join("var/lib/containerd");
    let small = oci_archive(
        dir,
        "docker.io/library/small:1",
        &[&[("a", b"a".to_vec())], &[("b", b"b".to_vec())]],
    )
    .unwrap();
    let mut containerd = Containerd::start(dir, &root).unwrap();
    containerd.import(&small).unwrap();
    let expected = containerd
        .lowerdirs(small.chain_ids.last().unwrap())
        .unwrap();
    containerd.stop();
    drop(containerd);
    let manifest = dir.join("boot.manifest");
    let (report, out) = prewarm_json(&[
        "plan",
        "--root",
        image_root.to_str().unwrap(),
        "--image",
        "small:1",
        "-o",
        manifest.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The directories are named as the booted node will see them.
    let inside: Vec<String> = expected
        .iter()
        .map(|d| {
            d.strip_prefix(image_root.to_str().unwrap())
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(inside[0]
        .starts_with("/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/"));
    assert_eq!(directories(&report, &small.name), inside);
    assert!(report["files"].as_u64().unwrap() >= 5, "{report}");
    let digest = small.manifest_digest.as_str();
    let m = manifest.to_str().unwrap();

    // `show`: the image's block names the reference, the digest and
    // exactly containerd's directories, top layer first.
    let out = prewarm_cmd().args(["show", m]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let header = format!(
        "  image {} (asked as small:1), priority {}: 2 layer directories",
        small.name, DEFAULT_PRIORITY
    );
    let mut block = text
        .lines()
        .skip_while(|l| *l != header)
        .skip(1)
        .take_while(|l| l.starts_with("    "));
    assert_eq!(
        block.next(),
        Some(format!("    digest {digest}").as_str()),
        "{text}"
    );
    let shown: Vec<&str> = block.map(str::trim_start).collect();
    assert_eq!(shown, inside, "{text}");

    // `show --json`: the same, each directory by its filesystem (the
    // image's, which holds the files) and its path from that root.
    let (shown, out) = prewarm_json(&["show", m]);
    assert!(out.status.success(), "{}", stderr(&out));
    let images = shown["images"].as_array().expect("images in show --json");
    assert_eq!(images.len(), 1, "{shown}");
    let image = &images[0];
    assert_eq!(image["reference"], "small:1");
    assert_eq!(image["image"], small.name.as_str());
    assert_eq!(image["digest"], digest);
    assert_eq!(image["priority"], DEFAULT_PRIORITY);
    let fs_uuid = &shown["devices"][0]["uuid"];
    let dirs: Vec<String> = image["directories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            assert_eq!(&d["filesystem"], fs_uuid, "{d}");
            format!("/{}", d["path"].as_str().unwrap())
        })
        .collect();
    assert_eq!(dirs, inside);

    // A replay reports the image as a run with `--image` does: in the root
    // phase where the filesystem is mounted (here, containerd's own
    // paths), in the initrd from `/`.
    for (phase, want) in [("root", &expected), ("initrd", &inside)] {
        let (report, out) = prewarm_json(&["run", m, "-n", "--phase", phase]);
        assert!(out.status.success(), "{phase}: {}", stderr(&out));
        assert_eq!(directories(&report, &small.name), *want, "{phase}");
        assert_eq!(report["images"][0]["digest"], digest, "{phase}");
        assert_eq!(report["images"][0]["reference"], "small:1", "{phase}");
    }
    // A run that defers the image's class does not name it.
    let (report, out) = prewarm_json(&["run", m, "-n", "--max-priority", "10"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(report.get("images").is_none(), "{report}");
}
