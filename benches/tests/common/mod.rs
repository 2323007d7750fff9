//! Helpers shared by the privileged tests of this crate.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// True when the test may run; otherwise prints `SKIP: reason`, or panics
/// when `PREWARM_REQUIRE_PRIVILEGED=1` (CI).
pub fn privileged() -> bool {
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
pub fn prewarm_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PREWARM_BIN") {
        return PathBuf::from(p);
    }
    let bin = Path::new(env!("CARGO_BIN_EXE_prewarm-e2e")).with_file_name("prewarm");
    let release = Path::new(env!("CARGO_BIN_EXE_prewarm-e2e"))
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
