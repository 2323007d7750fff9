//! `--image` against a real containerd (Debian's package), offline: the
//! test writes OCI archives itself, a private containerd (own root, state
//! and socket under a tempdir) imports and unpacks them, and prewarm must
//! resolve exactly the snapshot directories containerd itself mounts for
//! each image (the `lowerdir` of a snapshot prepared on its top layer): by
//! tag, by digest and with `--all-images`, while containerd runs (holding
//! its databases open and locked) and after it stopped.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use sha2::{Digest, Sha256};

fn sha256(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// An image written as an OCI archive.
struct Image {
    name: String,
    manifest_digest: String,
    chain_ids: Vec<String>,
    archive: PathBuf,
}

/// Write an OCI image-layout archive of `name` whose layers hold `layers`
/// (each a list of file name and contents), sharing blobs in `dir`.
fn oci_archive(dir: &Path, name: &str, layers: &[&[(&str, Vec<u8>)]]) -> Image {
    let tag = name.replace(['/', ':'], "_");
    let layout = dir.join(format!("layout-{tag}"));
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let blob = |bytes: &[u8]| {
        let hex = sha256(bytes);
        std::fs::write(blobs.join(&hex), bytes).unwrap();
        (format!("sha256:{hex}"), bytes.len())
    };
    let mut diff_ids = Vec::new();
    let mut layer_descs = Vec::new();
    for (i, files) in layers.iter().enumerate() {
        let tree = dir.join(format!("tree-{tag}-{i}"));
        std::fs::create_dir_all(tree.join("data")).unwrap();
        for (file, contents) in files.iter() {
            std::fs::write(tree.join("data").join(file), contents).unwrap();
        }
        let tar = dir.join(format!("layer-{tag}-{i}.tar"));
        cmd(
            "tar",
            &[
                "--sort=name",
                "--mtime=@0",
                "-C",
                tree.to_str().unwrap(),
                "-cf",
                tar.to_str().unwrap(),
                ".",
            ],
        );
        let (digest, size) = blob(&std::fs::read(&tar).unwrap());
        diff_ids.push(digest.clone());
        layer_descs.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest, "size": size
        }));
    }
    let config = serde_json::json!({
        "architecture": arch(), "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let (config_digest, config_size) = blob(config.to_string().as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": layer_descs,
    });
    let (manifest_digest, manifest_size) = blob(manifest.to_string().as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": manifest_size,
            "annotations": {"io.containerd.image.name": name}}],
    });
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let archive = dir.join(format!("{tag}.tar"));
    cmd(
        "tar",
        &[
            "-C",
            layout.to_str().unwrap(),
            "-cf",
            archive.to_str().unwrap(),
            ".",
        ],
    );
    let mut chain_ids: Vec<String> = Vec::new();
    for d in &diff_ids {
        let next = match chain_ids.last() {
            None => d.clone(),
            Some(prev) => format!("sha256:{}", sha256(format!("{prev} {d}").as_bytes())),
        };
        chain_ids.push(next);
    }
    Image {
        name: name.into(),
        manifest_digest,
        chain_ids,
        archive,
    }
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "arm64",
        _ => "amd64",
    }
}

/// A private containerd, killed on drop.
struct Containerd {
    child: Option<Child>,
    config: PathBuf,
    socket: PathBuf,
    root: PathBuf,
}

impl Containerd {
    fn start(dir: &Path, root: &Path) -> Containerd {
        let (state, socket) = (dir.join("state"), dir.join("containerd.sock"));
        let config = dir.join("config.toml");
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
        .unwrap();
        let mut c = Containerd {
            child: None,
            config,
            socket,
            root: root.to_path_buf(),
        };
        c.restart(dir);
        c
    }

    fn restart(&mut self, dir: &Path) {
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        self.child = Some(
            Command::new("containerd")
                .arg("--config")
                .arg(&self.config)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("starting containerd"),
        );
        let start = Instant::now();
        while !self.socket.exists() || !self.ctr_ok(&["version"]) {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "containerd did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn ctr_ok(&self, args: &[&str]) -> bool {
        Command::new("ctr")
            .arg("-a")
            .arg(&self.socket)
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    }

    fn ctr(&self, args: &[&str]) -> String {
        let mut all = vec!["-a", self.socket.to_str().unwrap(), "-n", "k8s.io"];
        all.extend_from_slice(args);
        cmd("ctr", &all)
    }

    /// The snapshot directories containerd mounts for an image whose top
    /// layer has chain ID `top`, top layer first.
    fn lowerdirs(&self, top: &str) -> Vec<String> {
        let key = format!("prewarm-test-{}", &top[7..19]);
        let out = self.ctr(&[
            "snapshots",
            "--snapshotter",
            "overlayfs",
            "prepare",
            "--mounts",
            &key,
            top,
        ]);
        self.ctr(&["snapshots", "--snapshotter", "overlayfs", "rm", &key]);
        let mounts: Value = serde_json::from_str(&out).expect("mounts as JSON");
        let options = mounts[0]["Options"].as_array().expect("mount options");
        let lower = options
            .iter()
            .filter_map(Value::as_str)
            .find_map(|o| o.strip_prefix("lowerdir="))
            .expect("a lowerdir");
        lower.split(':').map(str::to_string).collect()
    }

    fn stop(&mut self) {
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
        let _ = &self.root;
    }
}

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
    if !privileged(
        "images_resolve_to_the_directories_containerd_mounts",
        &["containerd", "ctr", "runc", "tar"],
    ) {
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
    );
    let other = oci_archive(
        dir,
        "registry.example.com/team/other:v2",
        &[
            base,
            &[("mid", b"mid".to_vec())],
            &[("top", b"other top".to_vec())],
        ],
    );
    let mut containerd = Containerd::start(dir, &root);
    for image in [&small, &other] {
        containerd.ctr(&[
            "images",
            "import",
            "--snapshotter",
            "overlayfs",
            image.archive.to_str().unwrap(),
        ]);
    }
    let expected_small = containerd.lowerdirs(small.chain_ids.last().unwrap());
    let expected_other = containerd.lowerdirs(other.chain_ids.last().unwrap());
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
    );
    let mut containerd = Containerd::start(dir, &root);
    containerd.ctr(&[
        "images",
        "import",
        "--snapshotter",
        "overlayfs",
        small.archive.to_str().unwrap(),
    ]);
    let expected = containerd.lowerdirs(small.chain_ids.last().unwrap());
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
}
