//! Helpers shared by the privileged tests of this crate.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use prewarm_benches::e2e::sys;

/// `Ok(v)`: `Some(v)`. `Err(reason)`: prints `SKIP: reason` and returns
/// `None`, or panics (`WHAT cannot run: reason`) when
/// `PREWARM_REQUIRE_PRIVILEGED=1` (CI).
pub fn or_skip<T>(what: &str, r: Result<T, String>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(r) if std::env::var("PREWARM_REQUIRE_PRIVILEGED").as_deref() == Ok("1") => {
            panic!("{what} cannot run: {r} (PREWARM_REQUIRE_PRIVILEGED=1)")
        }
        Err(r) => {
            eprintln!("SKIP: {r}");
            None
        }
    }
}

/// [`or_skip`] of a missing requirement (`None`: nothing missing).
pub fn unless_missing(missing: Option<String>) -> bool {
    or_skip("privileged test", missing.map_or(Ok(()), Err)).is_some()
}

/// True when the test may run (what `prewarm-e2e --ci` needs); otherwise
/// prints `SKIP: reason`, or panics when `PREWARM_REQUIRE_PRIVILEGED=1` (CI).
pub fn privileged() -> bool {
    unless_missing(prewarm_benches::e2e::missing_requirement(true))
}

/// Root, `/dev/fuse` when `fuse`, and `tools`; otherwise as [`privileged`].
pub fn privileged_with(fuse: bool, tools: &[&str]) -> bool {
    unless_missing(sys::first_missing(fuse, tools))
}

/// Runs `cmd`, panicking with its stderr unless it succeeds; its stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
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
