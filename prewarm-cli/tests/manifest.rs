//! Boot manifests end to end, on real ext4 and xfs loop devices: `plan`
//! writes a manifest, `run` replays it without mapping (finding the device
//! by filesystem UUID), the initrd/root handover never reads a chunk twice,
//! stale files are re-mapped, foreign or corrupt manifests are refused with
//! exit code 3, and `--notify` says READY to systemd.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::Command;

use common::*;
use serde_json::Value;

struct Image {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    image: PathBuf,
}

/// An image with a 12 MiB "kubelet" (priority 10), a 6 MiB "containerd"
/// (20), a tree of "image layers" (50) and a file that will go stale (30),
/// and a manifest planned from it at `dir/boot.manifest`.
fn planned_image(fs_name: &'static str) -> Image {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let image = dir.join("root.img");
    make_fs_image(&image, fs_name, 512);
    let lo = LoopDev::attach(&image, false);
    let mnt = dir.join("mnt");
    let m = Mounted::mount(lo.path(), &mnt, fs_name, "rw");
    fs::create_dir_all(mnt.join("usr/bin")).unwrap();
    fs::create_dir_all(mnt.join("var/lib/layers")).unwrap();
    fs::create_dir_all(mnt.join("etc/prewarm")).unwrap();
    let noise = |n: usize, seed: u8| -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(seed) ^ seed)
            .collect()
    };
    fs::write(mnt.join("usr/bin/kubelet"), noise(12 << 20, 7)).unwrap();
    fs::write(mnt.join("usr/bin/containerd"), noise(6 << 20, 11)).unwrap();
    fs::write(mnt.join("usr/bin/stale"), noise(3 << 20, 13)).unwrap();
    fs::write(mnt.join("usr/bin/gone"), noise(1 << 20, 17)).unwrap();
    for i in 0..30 {
        fs::write(
            // Long names: the directory outgrows its inode (inline_data
            // on ext4, shortform on xfs) and gets blocks of its own.
            mnt.join(format!(
                "var/lib/layers/sha256-layer-blob-{i:04}-of-an-unpacked-image"
            )),
            noise(100_000 + i * 5000, 19),
        )
        .unwrap();
    }
    fs::write(
        mnt.join("etc/prewarm/boot.list"),
        "10 /usr/bin/kubelet\n20 /usr/bin/containerd\n30 /usr/bin/stale\n30 /usr/bin/gone\n50 /var/lib/layers\n",
    )
    .unwrap();
    cmd("sync", &[]);
    let manifest = dir.join("boot.manifest");
    let out = prewarm(&[
        "plan",
        "--root",
        mnt.to_str().unwrap(),
        "--paths",
        mnt.join("etc/prewarm/boot.list").to_str().unwrap(),
        "-o",
        manifest.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "plan: {}", stderr(&out));
    drop(m);
    drop(lo);
    Image {
        _tmp: tmp,
        dir,
        image,
    }
}

impl Image {
    fn manifest(&self) -> String {
        self.dir.join("boot.manifest").to_str().unwrap().to_string()
    }
    fn state(&self) -> String {
        self.dir.join("run/state").to_str().unwrap().to_string()
    }
    /// A copy of the image as `name`, grown or cut to `len` bytes (the same
    /// filesystem on a device of another size).
    fn resized_copy(&self, name: &str, len: u64) -> PathBuf {
        let copy = self.dir.join(name);
        fs::copy(&self.image, &copy).unwrap();
        fs::OpenOptions::new()
            .write(true)
            .open(&copy)
            .unwrap()
            .set_len(len)
            .unwrap();
        copy
    }
}

fn chunk_set(report: &Value) -> BTreeSet<u64> {
    let mut set = BTreeSet::new();
    for d in report["devices"].as_array().unwrap() {
        for span in d["chunks_read"].as_array().unwrap() {
            let (s, e) = (u(&span[0]), u(&span[1]));
            for c in s..e {
                assert!(set.insert(c), "chunk {c} listed twice");
            }
        }
    }
    set
}

fn run_json(args: &[&str]) -> Value {
    let mut all = vec!["run"];
    all.extend_from_slice(args);
    let (report, out) = prewarm_json(&all);
    assert_eq!(
        out.status.code(),
        Some(0),
        "prewarm {all:?}: {}",
        stderr(&out)
    );
    report
}

fn manifest_end_to_end(fs_name: &'static str) {
    let _serial = serial();
    let img = planned_image(fs_name);
    let before = checksum(&img.image);

    // show: text and JSON.
    let out = prewarm(&["show", &img.manifest(), "--files"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("/usr/bin/kubelet") && text.contains(fs_name),
        "{text}"
    );
    let (shown, out) = prewarm_json(&["show", &img.manifest()]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(u(&shown["stats"]["files"]), 34);
    let uuid = shown["devices"][0]["uuid"].as_str().unwrap().to_string();
    let blkid = cmd(
        "blkid",
        &["-o", "value", "-s", "UUID", img.image.to_str().unwrap()],
    );
    assert_eq!(
        uuid,
        blkid.trim(),
        "the manifest names the filesystem by its UUID"
    );

    // The full plan, read in one go (not mounted: nothing is verified).
    let lo = LoopDev::attach(&img.image, true);
    let full = run_json(&["--phase", "initrd", "-m", &img.manifest()]);
    let all_chunks = chunk_set(&full);
    assert_eq!(all_chunks.len() as u64, u(&full["chunks"]));
    // A run only counts the files it reads by their recorded extents; a
    // dry run keeps (and lists) every one: the same totals.
    let dry = run_json(&["--phase", "initrd", "-m", &img.manifest(), "--dry-run"]);
    assert_eq!(u(&full["files"]), 34);
    for field in ["files", "file_bytes", "mapped_bytes", "chunks"] {
        assert_eq!(full[field], dry[field], "{field}");
    }
    assert_eq!(dry["file_maps"].as_array().unwrap().len(), 34);
    // The directories on the way to the files are in the manifest (not
    // counted as files) and their blocks are read with the files'.
    let (listed, _) = prewarm_json(&["show", &img.manifest(), "--files"]);
    let dirs: Vec<&Value> = listed["devices"][0]["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["directory"] == true)
        .collect();
    let names: Vec<&str> = dirs.iter().map(|d| d["path"].as_str().unwrap()).collect();
    // Small directories keep their entries in the inode (ext4 inline_data,
    // XFS short form): nothing to read but the inode. The layers' one has
    // blocks (on XFS found by its block map: its FIEMAP refuses
    // directories).
    assert!(names.contains(&"var/lib/layers"), "{names:?}");
    assert_eq!(u(&shown["stats"]["directories"]), dirs.len() as u64);
    assert_eq!(u(&full["manifest"]["directories"]), dirs.len() as u64);
    for d in dirs {
        for e in d["extents"].as_array().unwrap() {
            let c = u(&e["physical"]) / (512 * 1024);
            assert!(
                all_chunks.contains(&c),
                "chunk {c} of {} not read",
                d["path"]
            );
        }
    }
    assert_eq!(u(&full["manifest"]["unverified"]), 34);
    assert_eq!(u(&full["bytes_read"]), u(&full["planned_bytes"]));

    // The initrd phase takes the top classes, the root phase the rest: no
    // chunk read twice, nothing missed.
    let initrd = run_json(&[
        "--phase",
        "initrd",
        "-m",
        &img.manifest(),
        "--state",
        &img.state(),
        "--max-priority",
        "20",
    ]);
    let first = chunk_set(&initrd);
    assert!(!first.is_empty());
    assert_eq!(u(&initrd["manifest"]["deferred"]), 32);
    let root = run_json(&[
        "--phase",
        "initrd",
        "-m",
        &img.manifest(),
        "--state",
        &img.state(),
    ]);
    let second = chunk_set(&root);
    assert!(
        first.is_disjoint(&second),
        "a chunk was read twice: {:?}",
        first.intersection(&second).collect::<Vec<_>>()
    );
    assert_eq!(
        first.union(&second).copied().collect::<BTreeSet<_>>(),
        all_chunks
    );
    assert_eq!(u(&root["manifest"]["handover_chunks"]), first.len() as u64);
    // A third run finds nothing left to do.
    let third = run_json(&[
        "--phase",
        "initrd",
        "-m",
        &img.manifest(),
        "--state",
        &img.state(),
    ]);
    assert_eq!(u(&third["bytes_read"]), 0);
    drop(lo);
    // None of those runs wrote to the image.
    assert_eq!(checksum(&img.image), before, "a run changed the image");

    // Root phase with the filesystem mounted: files are checked; a changed
    // file is re-mapped live, a deleted one skipped.
    {
        let rw = LoopDev::attach(&img.image, false);
        let m = Mounted::mount(rw.path(), &img.dir.join("mnt"), fs_name, "rw");
        fs::remove_file(m.dir.join("usr/bin/gone")).unwrap();
        fs::remove_file(m.dir.join("usr/bin/stale")).unwrap();
        fs::write(m.dir.join("usr/bin/stale"), vec![42u8; 5 << 20]).unwrap();
        cmd("sync", &[]);
        let root = run_json(&["--phase", "root", "-m", &img.manifest()]);
        let mr = &root["manifest"];
        assert_eq!(
            (u(&mr["unchanged"]), u(&mr["changed"]), u(&mr["missing"])),
            (32, 1, 1),
            "{mr}"
        );
        let warnings = root["warnings"].to_string();
        assert!(warnings.contains("usr/bin/gone"), "{warnings}");
        // The new extents of the changed file are in what was read.
        let (plan, _) = prewarm_json(&["--dry-run", m.dir.join("usr/bin/stale").to_str().unwrap()]);
        let read = chunk_set(&root);
        for e in plan["file_maps"][0]["device_extents"].as_array().unwrap() {
            let c = u(&e["physical"]) / (512 * 1024);
            assert!(
                read.contains(&c),
                "chunk {c} of the re-mapped file was not read"
            );
        }
    }
}

#[test]
fn ext4_manifest_plan_run_handover() {
    if privileged(
        "ext4_manifest_plan_run_handover",
        &["losetup", "mkfs.ext4", "blkid"],
    ) {
        manifest_end_to_end("ext4");
    }
}

#[test]
fn xfs_manifest_plan_run_handover() {
    if privileged(
        "xfs_manifest_plan_run_handover",
        &["losetup", "mkfs.xfs", "blkid"],
    ) {
        manifest_end_to_end("xfs");
    }
}

#[test]
fn foreign_resized_and_corrupt_manifests_are_refused() {
    if !privileged(
        "foreign_resized_and_corrupt_manifests_are_refused",
        &["losetup", "mkfs.ext4"],
    ) {
        return;
    }
    let _serial = serial();
    let img = planned_image("ext4");
    let manifest = img.manifest();

    // No device holds the filesystem.
    let out = prewarm(&["run", "-m", &manifest, "--wait-device", "300ms"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no block device holds the ext4 filesystem"),
        "{}",
        stderr(&out)
    );

    // The same filesystem on a device of another size.
    let bigger = img.resized_copy("bigger.img", 600 << 20);
    {
        let _lo = LoopDev::attach(&bigger, true);
        let out = prewarm(&["run", "-m", &manifest]);
        assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("planned for a 536870912-byte device"),
            "{}",
            stderr(&out)
        );
    }

    // ... unless it grew, and --allow-grown says a grown filesystem is fine.
    {
        let _lo = LoopDev::attach(&bigger, true);
        let out = prewarm(&["run", "-m", &manifest, "--allow-grown", "--json"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    }
    // A smaller device is refused even then.
    let smaller = img.resized_copy("smaller.img", 400 << 20);
    {
        let _lo = LoopDev::attach(&smaller, true);
        let out = prewarm(&["run", "-m", &manifest, "--allow-grown"]);
        assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    }

    // Truncated and corrupted manifests: an error naming the offset.
    let bytes = fs::read(&manifest).unwrap();
    let cut = img.dir.join("cut.manifest");
    fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let flipped = img.dir.join("flipped.manifest");
    let mut f = bytes.clone();
    f[bytes.len() / 2] ^= 1;
    fs::write(&flipped, &f).unwrap();
    for (bad, needle) in [(&cut, "truncated manifest"), (&flipped, "corrupt manifest")] {
        for args in [
            vec!["run", "-m", bad.to_str().unwrap()],
            vec!["show", bad.to_str().unwrap()],
        ] {
            let out = prewarm(&args);
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(3), "{args:?}: {err}");
            assert!(
                err.contains(needle) && err.contains("offset"),
                "{args:?}: {err}"
            );
            assert!(!err.contains("panicked"), "{err}");
        }
    }
}

#[test]
fn notify_says_ready_after_the_urgent_class_and_cmdline_switches_work() {
    if !privileged(
        "notify_says_ready_after_the_urgent_class",
        &["losetup", "mkfs.ext4"],
    ) {
        return;
    }
    let _serial = serial();
    let img = planned_image("ext4");
    let _lo = LoopDev::attach(&img.image, true);
    let sock_path = img.dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();

    let out = Command::new(env!("CARGO_BIN_EXE_prewarm"))
        .args([
            "run",
            "--notify",
            "--phase",
            "initrd",
            "-m",
            &img.manifest(),
            "--json",
        ])
        .env("NOTIFY_SOCKET", &sock_path)
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // After READY the process yields the CPU to the services, once.
    assert_eq!(
        stderr(&out).matches("threads at nice 19").count(),
        1,
        "{}",
        stderr(&out)
    );
    let mut messages = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = sock.recv(&mut buf) {
        messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        if messages.last().is_some_and(|m| m.contains("finished")) {
            break;
        }
    }
    let ready: Vec<_> = messages.iter().filter(|m| m.contains("READY=1")).collect();
    assert_eq!(ready.len(), 1, "exactly one READY: {messages:?}");
    assert!(
        ready[0].contains("classes up to 10 hydrated"),
        "READY after the most urgent class: {messages:?}"
    );
    let ready_at = messages.iter().position(|m| m.contains("READY=1")).unwrap();
    assert!(
        messages[ready_at..]
            .iter()
            .any(|m| m.contains("priority class 50 hydrated")),
        "the background classes go on after READY: {messages:?}"
    );

    // prewarm=0 on the kernel command line: nothing read, READY still sent.
    let out = Command::new(env!("CARGO_BIN_EXE_prewarm"))
        .args(["run", "--notify", "--kernel-cmdline", "-m", &img.manifest()])
        .env("NOTIFY_SOCKET", &sock_path)
        .env("PREWARM_CMDLINE", "quiet prewarm=0 root=/dev/vda")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("disabled by `prewarm=0`"),
        "{}",
        stderr(&out)
    );
    let n = sock.recv(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("READY=1"));

    // rd.prewarm=0 disables the initrd phase only.
    let cmdline = [
        ("PREWARM_CMDLINE", "quiet rd.prewarm=0"),
        ("RUST_LOG", "info"),
    ];
    let run = ["run", "--kernel-cmdline", "-m", &img.manifest(), "--phase"];
    let out = prewarm_env(&[&run[..], &["initrd"]].concat(), &cmdline);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("disabled by `rd.prewarm=0`"),
        "{}",
        stderr(&out)
    );
    let (r, out) = prewarm_json_env(&[&run[..], &["root"]].concat(), &cmdline);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(u(&r["bytes_read"]) > 0, "the root phase still runs: {r}");

    // prewarm.manifest= selects another manifest.
    let elsewhere = img.dir.join("elsewhere.manifest");
    fs::copy(img.manifest(), &elsewhere).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_prewarm"))
        .args([
            "run",
            "--kernel-cmdline",
            "--phase",
            "initrd",
            "-m",
            "/nonexistent",
        ])
        .env(
            "PREWARM_CMDLINE",
            format!("prewarm.manifest={}", elsewhere.display()),
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

/// The root phase after an initrd run that read the urgent classes says
/// READY from the handover state, before it looks for the device or checks
/// a file; it then reads the rest as usual. A state whose initrd run was
/// cut short says nothing of the kind, and READY waits for the reads.
#[test]
fn ready_comes_from_the_handover_when_the_initrd_read_the_urgent_classes() {
    if !privileged("ready_comes_from_the_handover", &["losetup", "mkfs.ext4"]) {
        return;
    }
    let _serial = serial();
    let img = planned_image("ext4");
    let _lo = LoopDev::attach(&img.image, true);
    let sock_path = img.dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let root_run = |state: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_prewarm"))
            .args(["run", "--notify", "--phase", "root", "-m", &img.manifest()])
            .args(["--state", state, "--json"])
            .env("NOTIFY_SOCKET", &sock_path)
            .env("RUST_LOG", "debug")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        // Whether READY came from the handover or after the reads, the
        // process then yields the CPU to the services, once.
        assert_eq!(
            stderr(&out).matches("threads at nice 19").count(),
            1,
            "{}",
            stderr(&out)
        );
        let mut buf = [0u8; 4096];
        let mut ready = None;
        while let Ok(n) = sock.recv(&mut buf) {
            let m = String::from_utf8_lossy(&buf[..n]).into_owned();
            if m.contains("READY=1") {
                ready = Some(m.clone());
            }
            if m.contains("finished") {
                break;
            }
        }
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        (ready.expect("READY sent"), report)
    };

    let initrd = run_json(&[
        "--phase",
        "initrd",
        "-m",
        &img.manifest(),
        "--state",
        &img.state(),
        "--max-priority",
        "20",
    ]);
    assert!(u(&initrd["bytes_read"]) > 0);
    let (message, report) = root_run(&img.state());
    assert!(message.contains("handover"), "{message}");
    assert_eq!(report["ready"]["reason"], "handover", "{report}");
    assert_eq!(report["ready"]["priority"], 10);
    // The background classes were still read, and nothing twice.
    assert!(chunk_set(&initrd).is_disjoint(&chunk_set(&report)));
    assert!(u(&report["bytes_read"]) > 0, "{report}");

    // An initrd run stopped before it read anything leaves no such claim.
    let cut = img.dir.join("run/cut-state");
    let out = Command::new(env!("CARGO_BIN_EXE_prewarm"))
        .args(["run", "--phase", "initrd", "-m", &img.manifest(), "--json"])
        .args(["--state", cut.to_str().unwrap(), "--deadline", "1ms"])
        .output()
        .unwrap();
    assert!(out.status.code().is_some(), "{}", stderr(&out));
    let state: Value = serde_json::from_slice(&fs::read(&cut).unwrap()).unwrap();
    assert!(state["hydrated_through"].is_null(), "{state}");
    let (message, report) = root_run(cut.to_str().unwrap());
    assert!(!message.contains("handover"), "{message}");
    assert_ne!(report["ready"]["reason"], "handover", "{report}");
}

#[test]
fn run_waits_for_a_device_that_appears_late() {
    if !privileged(
        "run_waits_for_a_device_that_appears_late",
        &["losetup", "mkfs.ext4", "blkid"],
    ) {
        return;
    }
    let _serial = serial();
    let img = planned_image("ext4");
    // The device appears 1.5 s after prewarm started looking for it, as a
    // disk does while udev is still probing in the initrd.
    let child = Command::new(env!("CARGO_BIN_EXE_prewarm"))
        .args(["run", "--phase", "initrd", "-m", &img.manifest()])
        .args(["--wait-device", "20s", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let _lo = LoopDev::attach(&img.image, true);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(u(&report["bytes_read"]), u(&report["planned_bytes"]));
    assert!(u(&report["bytes_read"]) > 0);
}

/// Whether the running kernel is at least `major.minor`.
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = cmd("uname", &["-r"]);
    let mut parts = release.trim().split(['.', '-']);
    let mut next = || {
        parts
            .next()
            .and_then(|p| p.parse::<u32>().ok())
            .unwrap_or(0)
    };
    (next(), next()) >= (major, minor)
}

#[test]
fn a_mounted_filesystem_is_found_without_reading_its_device() {
    if !privileged(
        "a_mounted_filesystem_is_found_without_reading_its_device",
        &["losetup", "mkfs.ext4", "mkfs.xfs"],
    ) {
        return;
    }
    if !kernel_at_least(6, 5) {
        skip(
            "a_mounted_filesystem_is_found_without_reading_its_device",
            "FS_IOC_GETFSUUID needs Linux 6.5",
        );
        return;
    }
    let _serial = serial();
    for fs_name in ["ext4", "xfs"] {
        let img = planned_image(fs_name);
        // Direct I/O: a read would go to the device itself (a buffered
        // loop device's would go to its backing file).
        let lo = LoopDev::attach_direct(&img.image);
        let mnt = img.dir.join("mnt");
        let _m = Mounted::mount(lo.path(), &mnt, fs_name, ro_options(fs_name));
        // Nothing of the device cached: a superblock probe would read it
        // (on xfs; ext4 keeps its superblock's block cached while mounted).
        cmd("sync", &[]);
        fs::write("/proc/sys/vm/drop_caches", "3\n").unwrap();
        let before = lo.sectors_read();
        // No class is taken (all are above priority 5), so the run only
        // finds the filesystem: the kernel says the mounted one's UUID.
        let report = run_json(&["-m", &img.manifest(), "--max-priority", "5"]);
        assert_eq!(lo.sectors_read(), before, "{fs_name}: the device was read");
        let manifest = &report["manifest"];
        assert!(
            manifest["refused"].as_array().is_none_or(|r| r.is_empty()),
            "{fs_name}: {manifest}"
        );
        assert!(u(&manifest["deferred"]) > 0, "{fs_name}: {manifest}");
    }
}
