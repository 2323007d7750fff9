//! Runs `prewarm-e2e --ci` for real: the small node fixture and the big tree
//! on the lazy-volume testbed, prewarm (built here from prewarm-cli unless
//! PREWARM_BIN is set) cold, with its metadata cached by a dry run and from
//! a manifest, and the exact check that it hydrates every chunk of its plan
//! and nothing else.
//!
//! Privileged (root, /dev/fuse, losetup, mkfs.ext4, ...): without that it
//! prints `SKIP: <reason>` and passes, unless PREWARM_REQUIRE_PRIVILEGED=1,
//! in which case it panics.

use std::process::Command;

mod common;
use common::{prewarm_bin, privileged};

const E2E: &str = env!("CARGO_BIN_EXE_prewarm-e2e");

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
    // Both fixtures: the small node volume and the big tree.
    assert!(stdout.contains("(dio-c8: critical set"), "{stdout}");
    assert!(stdout.contains("(big-tree-c8: critical set"), "{stdout}");
}
