//! Never make a boot worse: each filesystem of a manifest stands on its own,
//! `plan --root` never leaves the image, untrusted inputs (FIFOs, devices,
//! files others can write) are refused at once instead of hanging or
//! exhausting memory.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::*;
use predicates::prelude::PredicateBooleanExt;
use predicates::str::contains;

#[test]
fn one_missing_filesystem_does_not_cost_the_others() {
    if !privileged(
        "one_missing_filesystem_does_not_cost_the_others",
        &["losetup", "mkfs.ext4"],
    ) {
        return;
    }
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (img_a, lo_a, m_a) = image_with(dir, "a", &[("bin/a", 3 << 20)]);
    let (_img_b, lo_b, m_b) = image_with(dir, "b", &[("bin/b", 2 << 20)]);
    let manifest = dir.join("two.manifest");
    let out = prewarm(&[
        "plan",
        m_a.dir.join("bin/a").to_str().unwrap(),
        m_b.dir.join("bin/b").to_str().unwrap(),
        "-o",
        manifest.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let (shown, _) = prewarm_json(&["show", manifest.to_str().unwrap()]);
    assert_eq!(shown["devices"].as_array().unwrap().len(), 2);
    drop((m_a, m_b));
    drop((lo_a, lo_b));

    // Only A's disk is present at boot: A is read, B is reported.
    let _lo = LoopDev::attach(&img_a, true);
    let (r, out) = prewarm_json(&["run", "-m", manifest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "partial: {}", stderr(&out));
    assert_eq!(r["devices"].as_array().unwrap().len(), 1);
    assert!(u(&r["bytes_read"]) >= 3 << 20, "{r}");
    let refused = r["manifest"]["refused"].as_array().unwrap();
    assert_eq!(refused.len(), 1, "{r}");
    assert!(refused[0]["reason"]
        .as_str()
        .unwrap()
        .contains("no block device holds"));
    assert!(String::from_utf8_lossy(&out.stdout).contains("refused"));
}

#[test]
fn plan_root_never_leaves_the_image_and_writes_no_empty_entry() {
    if !privileged(
        "plan_root_never_leaves_the_image",
        &["losetup", "mkfs.ext4"],
    ) {
        return;
    }
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_img, _lo, m) = image_with(
        dir,
        "root",
        &[("usr/lib64/libx.so.1", 100_000), ("etc/inside", 10)],
    );
    // Links as images have them: absolute, and pointing up.
    std::os::unix::fs::symlink("/usr/lib64", m.dir.join("lib64")).unwrap();
    std::os::unix::fs::symlink("../../../../../../..", m.dir.join("etc/up")).unwrap();
    let list = dir.join("list");
    fs::write(
        &list,
        "10 /lib64/libx.so.1\n10 /../../../../etc/hostname\n10 /etc/up/etc/passwd\n10 /lib64/*.so.1\n20 /etc/inside\n",
    )
    .unwrap();
    let manifest = dir.join("m");
    let out = prewarm(&[
        "plan",
        "--root",
        m.dir.to_str().unwrap(),
        "--paths",
        list.to_str().unwrap(),
        "-o",
        manifest.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let (shown, _) = prewarm_json(&["show", manifest.to_str().unwrap()]);
    let devices = shown["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 1, "only the image's filesystem: {shown}");
    let mut paths: Vec<&str> = devices[0]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    paths.sort_unstable();
    assert_eq!(paths, ["etc/inside", "usr/lib64/libx.so.1"]);
    // The host's /etc/hostname and /etc/passwd were looked for in the image.
    let err = stderr(&out);
    assert!(err.contains("etc/hostname"), "{err}");
}

#[test]
fn untrusted_inputs_are_refused_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let fifo = tmp.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let fifo = fifo.to_str().unwrap();
    let start = Instant::now();
    // A FIFO as manifest: refused, not waited on (the deadline is a
    // second bound).
    prewarm_cmd()
        .args(["run", "-m", fifo, "--deadline", "2s"])
        .timeout(Duration::from_secs(10))
        .assert()
        .code(2)
        .stderr(contains("not a regular file (a FIFO)"));
    prewarm_cmd()
        .args(["show", "/dev/zero"])
        .timeout(Duration::from_secs(10))
        .assert()
        .code(2)
        .stderr(contains("character device"));
    // A list that never ends or never comes is refused with a warning
    // (an unreadable list: partial, exit 1); the rest runs.
    prewarm_cmd()
        .args(["--paths", "/dev/zero", "--paths", fifo, "/bin/sh"])
        .timeout(Duration::from_secs(10))
        .assert()
        .code(1)
        .stdout(contains("prewarm: 1 file"))
        .stderr(contains("/dev/zero").and(contains("FIFO")));
    assert!(start.elapsed() < Duration::from_secs(10));

    if nix::unistd::geteuid().is_root() {
        // As root, a list others can write is refused, saying why.
        let list = tmp.path().join("list");
        fs::write(&list, "/bin/sh\n").unwrap();
        fs::set_permissions(&list, fs::Permissions::from_mode(0o666)).unwrap();
        prewarm_cmd()
            .args(["--paths", list.to_str().unwrap(), "/bin/true"])
            .assert()
            .code(1)
            .stderr(contains("writable by group and others"));
    }
}
