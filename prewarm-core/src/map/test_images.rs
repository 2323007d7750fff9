//! What the layout tests (`ext4`, `xfs`) share: whether the tools that
//! make and read their images are here (a skip, unless CI requires them),
//! running them, reading a range of an image, and following directories'
//! trees.

use std::collections::BTreeSet;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::process::Command;

use super::readahead::MetadataBlocks;

/// Whether `name` is on the path; without it the caller skips, but under
/// `PREWARM_REQUIRE_PRIVILEGED` (CI) a missing tool fails.
pub fn tool(name: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("PREWARM_REQUIRE_PRIVILEGED").is_none(),
            "{name} is required"
        );
        eprintln!("SKIP: {name} not found");
    }
    found
}

/// Run `cmd` (an image maker) to its end; a failure fails the test with
/// what it printed.
pub fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{:?}: {}",
        cmd,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The bytes `r` of `f`.
pub fn read(f: &std::fs::File, r: Range<u64>) -> Vec<u8> {
    let mut b = vec![0; (r.end - r.start) as usize];
    f.read_exact_at(&mut b, r.start).unwrap();
    b
}

/// Follow `todo` to the end, `node` reading the tree node `block` found at
/// `depth` and adding what it names: every block found (directory runs and
/// tree nodes), and how many tree nodes were read.
pub fn follow(
    mut todo: Vec<MetadataBlocks>,
    mut node: impl FnMut(u64, u16, &mut Vec<MetadataBlocks>),
) -> (BTreeSet<u64>, usize) {
    let mut blocks = BTreeSet::new();
    let mut nodes = 0;
    while let Some(m) = todo.pop() {
        match m {
            MetadataBlocks::Directory(r) => blocks.extend(r),
            MetadataBlocks::ExtentNode { block, depth } => {
                blocks.insert(block);
                nodes += 1;
                node(block, depth, &mut todo);
            }
        }
    }
    (blocks, nodes)
}
