//! With io_uring disabled system-wide (`kernel.io_uring_disabled=2`, as some
//! hardened hosts do), prewarm falls back to its pread pool, says so once,
//! and reads the same bytes. In its own test binary because it flips a
//! global sysctl.

mod common;

use std::fs;

use common::*;

const SYSCTL: &str = "/proc/sys/kernel/io_uring_disabled";

/// Restores the sysctl on drop, even if the test fails.
struct Restore(String);

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = fs::write(SYSCTL, &self.0);
    }
}

#[test]
fn falls_back_to_pread_when_io_uring_is_disabled() {
    const TEST: &str = "falls_back_to_pread_when_io_uring_is_disabled";
    if !privileged(TEST, &["losetup", "mkfs.ext4"]) {
        return;
    }
    let Ok(old) = fs::read_to_string(SYSCTL) else {
        // Kernels before 6.6 have no such switch.
        skip(TEST, &format!("{SYSCTL} does not exist on this kernel"));
        return;
    };
    let _serial = serial();
    // A file on a loop device (device-level reads) and one on tmpfs
    // (file-level reads): both engines of a run fall back.
    let tmp = tempfile::tempdir().unwrap();
    let image = tmp.path().join("fs.img");
    make_fs_image(&image, "ext4", 64);
    {
        let lo = LoopDev::attach(&image, false);
        let m = Mounted::mount(lo.path(), &tmp.path().join("rw"), "ext4", "rw");
        fs::write(m.dir.join("data"), vec![7u8; 3_000_000]).unwrap();
        cmd("sync", &[]);
    }
    // Direct I/O: the device itself is read, and its counters show it.
    let lo = LoopDev::attach_direct(&image);
    let m = Mounted::mount(
        lo.path(),
        &tmp.path().join("ro"),
        "ext4",
        ro_options("ext4"),
    );
    let on_disk = m.dir.join("data");
    let t = Mounted::mount("tmpfs", &tmp.path().join("t"), "tmpfs", "size=16m");
    let on_tmpfs = t.dir.join("data");
    fs::write(&on_tmpfs, vec![9u8; 1_000_000]).unwrap();
    let args = [on_disk.to_str().unwrap(), on_tmpfs.to_str().unwrap()];

    let (normal, out) = prewarm_json(&args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(normal["devices"][0]["read"]["backend"], "uring");
    assert_eq!(normal["file_level"]["read"]["backend"], "uring");

    let _restore = Restore(old.trim().to_string());
    fs::write(SYSCTL, "2").unwrap();
    let sectors = lo.sectors_read();
    let (fallback, out) = prewarm_json(&args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(fallback["devices"][0]["read"]["backend"], "pread");
    assert_eq!(fallback["file_level"]["read"]["backend"], "pread");
    // The same device chunks and the same bytes, and the device saw them.
    assert_eq!(
        fallback["devices"][0]["chunks_read"],
        normal["devices"][0]["chunks_read"]
    );
    assert_eq!(fallback["bytes_read"], normal["bytes_read"]);
    let device_bytes = u(&fallback["devices"][0]["read"]["bytes_read"]);
    assert!((lo.sectors_read() - sectors) * 512 >= device_bytes);
    assert!(fallback["fallbacks"]
        .to_string()
        .contains("io_uring unavailable"));
    // Two engines fell back; the log says it once.
    let logged = stderr(&out).matches("io_uring unavailable").count();
    assert_eq!(
        logged,
        1,
        "one log line for the fallback:\n{}",
        stderr(&out)
    );

    // Asking for io_uring explicitly is an error, not a silent fallback.
    let out = prewarm(&["--engine", "uring", args[1]]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("io_uring unavailable"),
        "{}",
        stderr(&out)
    );
}
