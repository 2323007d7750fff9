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
    if !privileged("falls_back_to_pread_when_io_uring_is_disabled", &[]) {
        return;
    }
    let Ok(old) = fs::read_to_string(SYSCTL) else {
        // Kernels before 6.6 have no such switch; nothing to test.
        eprintln!("SKIP: {SYSCTL} does not exist on this kernel");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("data");
    fs::write(&file, vec![7u8; 3_000_000]).unwrap();
    let f = file.to_str().unwrap();

    let (normal, out) = prewarm_json(&[f]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(normal["file_level"]["read"]["backend"], "uring");

    let _restore = Restore(old.trim().to_string());
    fs::write(SYSCTL, "2").unwrap();
    let (fallback, out) = prewarm_json(&[f]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(fallback["file_level"]["read"]["backend"], "pread");
    assert_eq!(fallback["bytes_read"], normal["bytes_read"]);
    assert!(fallback["fallbacks"]
        .to_string()
        .contains("io_uring unavailable"));
    let logged = stderr(&out).matches("io_uring unavailable").count();
    assert_eq!(
        logged,
        1,
        "one log line for the fallback:\n{}",
        stderr(&out)
    );

    // Asking for io_uring explicitly is an error, not a silent fallback.
    let out = prewarm(&["--engine", "uring", f]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("io_uring unavailable"),
        "{}",
        stderr(&out)
    );
}
