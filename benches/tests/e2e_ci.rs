//! Runs `prewarm-e2e --ci` for real: the small fixture on the lazy-volume
//! testbed, prewarm (built here from prewarm-cli unless PREWARM_BIN is set)
//! with its metadata cached by a dry run, and the exact check that it
//! hydrates every chunk of its plan and nothing else.
//!
//! Privileged (root, /dev/fuse, losetup, mkfs.ext4, ...): without that it
//! prints `SKIP: <reason>` and passes, unless PREWARM_REQUIRE_PRIVILEGED=1,
//! in which case it panics.

use std::path::{Path, PathBuf};
use std::process::Command;

const E2E: &str = env!("CARGO_BIN_EXE_prewarm-e2e");

fn privileged() -> bool {
    match prewarm_benches::e2e::missing_requirement(true) {
        None => true,
        Some(r) if std::env::var("PREWARM_REQUIRE_PRIVILEGED").as_deref() == Ok("1") => {
            panic!("privileged test cannot run: {r} (PREWARM_REQUIRE_PRIVILEGED=1)")
        }
        Some(r) => {
            eprintln!("SKIP: {r}");
            false
        }
    }
}

/// The prewarm binary: $PREWARM_BIN, or prewarm-cli built into the same
/// target directory and profile as this test's binaries.
fn prewarm_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PREWARM_BIN") {
        return PathBuf::from(p);
    }
    let bin = Path::new(E2E).with_file_name("prewarm");
    let release = Path::new(E2E)
        .parent()
        .and_then(Path::file_name)
        .is_some_and(|n| n == "release");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .args(["build", "-p", "prewarm-cli"]);
    if release {
        cmd.arg("--release");
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?} failed: {status}");
    assert!(bin.is_file(), "{} missing after the build", bin.display());
    bin
}

#[test]
fn ci_mode_hydrates_exactly_the_plan() {
    if !privileged() {
        return;
    }
    let prewarm = prewarm_bin();
    let out = Command::new(E2E)
        .arg("--ci")
        .arg("--prewarm")
        .arg(&prewarm)
        .output()
        .unwrap_or_else(|e| panic!("running {E2E}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "prewarm-e2e --ci failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("PASS"), "{stdout}");
    assert!(stdout.contains("[metadata cached]"), "{stdout}");
}
