//! The metadata read-ahead on the lazy-volume testbed: walking one
//! directory of a cold ext4 volume reads the filesystem's metadata ahead,
//! by the testbed's own counters.
//!
//! The volume holds `walked/` (a 16 MiB file and a few directories) and
//! `elsewhere/` (600 directories the walk never enters). From all cold,
//! `prewarm walked/` with `--metadata-readahead 0` must leave the chunks
//! of `elsewhere/`'s directory blocks cold; with the read-ahead (the
//! default) it must hydrate every one of them, read exactly the same plan,
//! and report the read-ahead as done. With a budget of one chunk it must
//! stop at the budget and say so. Directory blocks come from `debugfs`, not
//! from prewarm's own reading of the filesystem.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{prewarm_bin, privileged_with, run};
use prewarm_benches::e2e::analysis::chunk_ranges;
use prewarm_benches::e2e::sys::Mount;
use prewarm_benches::images::LazyStore;
use serde_json::Value;

const TESTBED: &str = env!("CARGO_BIN_EXE_prewarm-testbed");
const CHUNK: u64 = 512 * 1024;

fn ranges(set: &BTreeSet<u64>) -> String {
    chunk_ranges(&set.iter().copied().collect::<Vec<_>>())
}

/// The chunks holding the blocks `debugfs` lists for `path` in `image`.
fn chunks_of(image: &Path, path: &str, block_size: u64) -> BTreeSet<u64> {
    run(Command::new("debugfs")
        .args(["-R", &format!("blocks {path}")])
        .arg(image))
    .split_whitespace()
    .map(|b| b.parse::<u64>().unwrap() * block_size / CHUNK)
    .collect()
}

/// Run prewarm on `dir` from all cold with `args`: its report, and the
/// chunks the testbed hydrated.
fn cold_run(lazy: &LazyStore, dir: &Path, args: &[&str]) -> (Value, BTreeSet<u64>) {
    lazy.cold().unwrap();
    let out = Command::new(prewarm_bin())
        .args(["--json", "--queue-depth", "4"])
        .args(args)
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "prewarm failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    // Reads the kernel was asked for may still be on their way.
    lazy.testbed.wait_idle(Duration::from_secs(5)).unwrap();
    let stats = lazy.testbed.stats(true).unwrap();
    (
        report,
        stats.hydrated.unwrap_or_default().into_iter().collect(),
    )
}

#[test]
fn a_walk_reads_its_filesystems_metadata_ahead() {
    if !privileged_with(true, &["mkfs.ext4", "debugfs"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let src = work.join("src");
    let walked = src.join("walked");
    for d in ["a/b", "c"] {
        std::fs::create_dir_all(walked.join(d)).unwrap();
    }
    let data: Vec<u8> = (0..16u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(walked.join("a/b/big"), data).unwrap();
    std::fs::write(walked.join("c/small"), b"small").unwrap();
    for i in 0..300 {
        std::fs::create_dir_all(src.join(format!("elsewhere/d{i:03}/inner"))).unwrap();
    }
    // The image on a tmpfs: dropping caches must not evict it.
    let backing = Mount::tmpfs(&work.join("backing"), 128 << 20).unwrap();
    let image = backing.dir.join("volume.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(96 << 20)
        .unwrap();
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "4096", "-d"])
        .arg(&src)
        .arg(&image));
    let mut elsewhere = BTreeSet::new();
    for i in 0..300 {
        for d in [
            format!("/elsewhere/d{i:03}"),
            format!("/elsewhere/d{i:03}/inner"),
        ] {
            elsewhere.extend(chunks_of(&image, &d, 4096));
        }
    }

    let lazy = LazyStore::open(
        Path::new(TESTBED),
        &image,
        work,
        &[
            "--chunk-size".into(),
            CHUNK.to_string(),
            "--latency-ms".into(),
            "10".into(),
        ],
    )
    .unwrap();
    let dir = lazy.mount.dir.join("walked");

    let (without, cold_without) = cold_run(&lazy, &dir, &["--metadata-readahead", "0"]);
    assert!(without.get("metadata_readahead").is_none(), "{without}");
    let untouched: BTreeSet<u64> = elsewhere.difference(&cold_without).copied().collect();
    // Not vacuous: the walk alone leaves most of them cold.
    assert!(
        untouched.len() >= 4,
        "elsewhere/ in chunks {}, the walk alone hydrated {}",
        ranges(&elsewhere),
        ranges(&cold_without)
    );

    let (with, cold_with) = cold_run(&lazy, &dir, &[]);
    let ra = &with["metadata_readahead"][0];
    assert_eq!(ra["state"], "done", "{with}");
    assert!(ra["inode_table_bytes"].as_u64().unwrap() > 0, "{ra}");
    assert!(ra["directory_bytes"].as_u64().unwrap() > 0, "{ra}");
    assert_eq!(ra["budget_reached"], false, "{ra}");
    assert_eq!(ra["errors"], 0, "{ra}");
    println!(
        "elsewhere/: {} chunks, {} left cold by the walk alone; hydrated {} without, {} with the read-ahead: {ra}",
        elsewhere.len(),
        untouched.len(),
        cold_without.len(),
        cold_with.len()
    );
    let missed: BTreeSet<u64> = untouched.difference(&cold_with).copied().collect();
    assert!(
        missed.is_empty(),
        "directory chunks of elsewhere/ left cold by the read-ahead: {}",
        ranges(&missed)
    );
    // The plan is the walk's either way; the read-ahead is counted apart.
    for field in ["files", "chunks", "bytes_read", "errors"] {
        assert_eq!(with[field], without[field], "{field}: {with} / {without}");
    }

    let (small, _) = cold_run(&lazy, &dir, &["--metadata-readahead", "512K"]);
    let ra = &small["metadata_readahead"][0];
    assert_eq!(ra["budget_reached"], true, "{ra}");
    assert_eq!(ra["chunks"], 1, "{ra}");
    assert_eq!(small["bytes_read"], without["bytes_read"], "{small}");
}
