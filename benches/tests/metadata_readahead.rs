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
//! stop at the budget and say so. A list naming files in 40 directories
//! must have it read ahead too (`elsewhere/` hydrated), unless its lookups
//! are cached already (then nothing is, and only the files' own chunks
//! are hydrated; so for the walk after a dry run of it); a list of two files
//! must not. The same on a buffered loop device, whose
//! read-ahead goes to its backing file. Directory blocks come from `debugfs`, not
//! from prewarm's own reading of the filesystem.
//!
//! The same on XFS, where `elsewhere/`'s directories and their inodes are
//! found through each allocation group's inode B+tree: every chunk holding
//! one of their inodes or directory blocks (as `xfs_db` says) is hydrated
//! with the read-ahead (asked for: XFS is not read ahead by default), and
//! some are not without it.

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

/// An empty image of `size` bytes on a tmpfs mounted under `work` (kept
/// mounted while the `Mount` lives): dropping caches must not evict it.
fn image_on_tmpfs(work: &Path, size: u64) -> (Mount, std::path::PathBuf) {
    let backing = Mount::tmpfs(&work.join("backing"), size + (32 << 20)).unwrap();
    let image = backing.dir.join("volume.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(size)
        .unwrap();
    (backing, image)
}

/// The testbed's settings: chunks of [`CHUNK`], 10 ms fetches.
fn testbed_args() -> Vec<String> {
    ["--chunk-size", &CHUNK.to_string(), "--latency-ms", "10"]
        .map(String::from)
        .to_vec()
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

/// The chunks holding the inodes and directory blocks of `dirs` in the XFS
/// `image`, as `xfs_db` finds them (one run for all of them).
fn xfs_chunks_of(image: &Path, dirs: &[String]) -> BTreeSet<u64> {
    let xfs_db = |commands: Vec<String>| {
        let mut cmd = Command::new("xfs_db");
        cmd.arg("-r");
        for c in commands {
            cmd.args(["-c", &c]);
        }
        run(cmd.arg(image))
    };
    let said = xfs_db(
        dirs.iter()
            .flat_map(|d| [format!("path {d}"), "inode".into(), "bmap".into()])
            .collect(),
    );
    let geometry = xfs_db(vec!["sb 0".into(), "print agblocks blocksize".into()]);
    let field = |name: &str| -> u64 {
        geometry
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} = ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in {geometry}"))
    };
    let (ag_blocks, block_size) = (field("agblocks"), field("blocksize"));
    let mut chunks = BTreeSet::new();
    let mut inodes = Vec::new();
    for line in said.lines() {
        if let Some(ino) = line.strip_prefix("current inode number is ") {
            inodes.push(ino.trim().to_string());
        } else if let Some((place, count)) = line.split_once(" count ") {
            // "data offset 0 startblock 24 (0/24) count 1 flag 0"
            let (ag, agbno) = place
                .split(['(', ')'])
                .nth(1)
                .and_then(|s| s.split_once('/'))
                .unwrap_or_else(|| panic!("{line}"));
            let first = ag.parse::<u64>().unwrap() * ag_blocks + agbno.parse::<u64>().unwrap();
            let count: u64 = count.split_whitespace().next().unwrap().parse().unwrap();
            chunks.extend(first * block_size / CHUNK..=((first + count) * block_size - 1) / CHUNK);
        }
    }
    assert_eq!(inodes.len(), dirs.len(), "{said}");
    let bytes = xfs_db(
        inodes
            .iter()
            .map(|ino| format!("convert ino {ino} byte"))
            .collect(),
    );
    for line in bytes.lines() {
        let byte: u64 = line
            .split(['(', ')'])
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{line}"));
        chunks.insert(byte / CHUNK);
    }
    chunks
}

/// Run prewarm on `dir` from all cold at `depth` reads in flight with
/// `args`: its report, and the chunks the testbed hydrated.
fn cold_run(lazy: &LazyStore, dir: &Path, depth: &str, args: &[&str]) -> (Value, BTreeSet<u64>) {
    lazy.cold().unwrap();
    run_on(lazy, dir, depth, args)
}

/// Run prewarm on `dir` as the caches and the testbed stand, at `depth`
/// reads in flight with `args`: its report, and the chunks the testbed
/// hydrated.
fn run_on(lazy: &LazyStore, dir: &Path, depth: &str, args: &[&str]) -> (Value, BTreeSet<u64>) {
    let out = Command::new(prewarm_bin())
        .args(["--json", "--queue-depth", depth])
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

/// Run prewarm on `target` with `args` after a dry run of the same (its
/// lookups and walks cached) and a reset of the testbed; assert that it
/// read nothing ahead and hydrated its files' own chunks and nothing else.
/// Its report.
fn cached_run(lazy: &LazyStore, target: &Path, depth: &str, args: &[&str]) -> Value {
    // `--dry-run` first: the target comes after `args` (`--paths`).
    cold_run(lazy, target, depth, &[&["--dry-run"], args].concat());
    lazy.testbed.reset().unwrap();
    let (cached, hydrated) = run_on(lazy, target, depth, args);
    let none = cached
        .get("metadata_readahead")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty);
    assert!(
        none,
        "read ahead although its metadata was cached: {cached}"
    );
    let read: BTreeSet<u64> = cached["devices"][0]["chunks_read"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r[0].as_u64().unwrap()..r[1].as_u64().unwrap())
        .collect();
    assert_eq!(
        hydrated, read,
        "chunks hydrated beside the files' own although their metadata was cached: {cached}"
    );
    cached
}

/// The chunks of `elsewhere` a walk left cold (`hydrated`: what it
/// hydrated); at least 4 of them, so that a test of reading them ahead is
/// not vacuous.
fn left_cold(elsewhere: &BTreeSet<u64>, hydrated: &BTreeSet<u64>) -> BTreeSet<u64> {
    let untouched: BTreeSet<u64> = elsewhere.difference(hydrated).copied().collect();
    assert!(
        untouched.len() >= 4,
        "elsewhere/ in chunks {}, the walk alone hydrated {}",
        ranges(elsewhere),
        ranges(hydrated)
    );
    untouched
}

/// Assert that the run `with` the read-ahead (its report, and the chunks
/// hydrated) read ahead all of `untouched` (the chunks of `what` the walk
/// alone left cold), reported it done with `fields` non-zero and no error,
/// and planned what the run `without` it did; its read-ahead report.
fn read_ahead_all<'a>(
    what: &str,
    (with, cold_with): (&'a Value, &BTreeSet<u64>),
    (without, cold_without): (&Value, &BTreeSet<u64>),
    untouched: &BTreeSet<u64>,
    fields: &[&str],
) -> &'a Value {
    let ra = &with["metadata_readahead"][0];
    assert_eq!(ra["state"], "done", "{with}");
    for field in fields {
        assert!(ra[field].as_u64().unwrap() > 0, "{field}: {ra}");
    }
    assert_eq!(ra["errors"], 0, "{ra}");
    println!(
        "{what}: {} chunks left cold by the walk alone; hydrated {} without, {} with the read-ahead: {ra}",
        untouched.len(),
        cold_without.len(),
        cold_with.len()
    );
    let missed: BTreeSet<u64> = untouched.difference(cold_with).copied().collect();
    assert!(
        missed.is_empty(),
        "chunks of {what} left cold by the read-ahead: {}",
        ranges(&missed)
    );
    // The plan is the walk's either way; the read-ahead is counted apart.
    for field in ["files", "chunks", "bytes_read", "errors"] {
        assert_eq!(with[field], without[field], "{field}: {with} / {without}");
    }
    ra
}

#[test]
fn a_walk_reads_its_filesystems_metadata_ahead() {
    if privileged_with(true, &["mkfs.ext4", "debugfs"]) {
        ext4_walk_reads_ahead(true);
    }
}

/// On a buffered loop device the read-ahead asks its backing file, at the
/// device's offset there (the device would pass the requests on one at a
/// time): the same chunks are hydrated.
#[test]
fn a_walk_on_a_buffered_loop_device_reads_ahead_through_its_backing_file() {
    if privileged_with(true, &["mkfs.ext4", "debugfs"]) {
        ext4_walk_reads_ahead(false);
    }
}

fn ext4_walk_reads_ahead(direct_io: bool) {
    const DEPTH: &str = "4";
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
    for i in 0..LISTED_DIRECTORIES {
        let d = src.join(format!("listed/d{i:02}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("f"), format!("file {i}")).unwrap();
    }
    let (_backing, image) = image_on_tmpfs(work, 96 << 20);
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

    let lazy = LazyStore::open_with(
        Path::new(TESTBED),
        &image,
        work,
        &testbed_args(),
        "ro,noload",
        direct_io,
    )
    .unwrap();
    let dir = lazy.mount.dir.join("walked");

    let (without, cold_without) = cold_run(&lazy, &dir, DEPTH, &["--metadata-readahead", "0"]);
    assert!(without.get("metadata_readahead").is_none(), "{without}");
    let untouched = left_cold(&elsewhere, &cold_without);

    let (with, cold_with) = cold_run(&lazy, &dir, DEPTH, &[]);
    let ra = read_ahead_all(
        "elsewhere/'s directories",
        (&with, &cold_with),
        (&without, &cold_without),
        &untouched,
        &["inode_table_bytes", "directory_bytes"],
    );
    assert_eq!(ra["budget_reached"], false, "{ra}");
    let through = &with["devices"][0]["read_through"];
    if direct_io {
        assert!(through.is_null(), "{through}");
    } else {
        let disk = lazy.testbed.disk();
        assert_eq!(through["backing_file"]["path"], disk.to_str().unwrap());
    }

    let (small, _) = cold_run(&lazy, &dir, DEPTH, &["--metadata-readahead", "512K"]);
    let ra = &small["metadata_readahead"][0];
    assert_eq!(ra["budget_reached"], true, "{ra}");
    assert_eq!(ra["chunks"], 1, "{ra}");
    assert_eq!(small["bytes_read"], without["bytes_read"], "{small}");

    // A list of files walks nothing; in enough directories it still has
    // the filesystem read ahead (elsewhere/ included), from the start.
    let list = |name: &str, files: Vec<String>| {
        let path = work.join(name);
        let text: String = files
            .iter()
            .map(|f| format!("{}\n", lazy.mount.dir.join(f).display()))
            .collect();
        std::fs::write(&path, text).unwrap();
        path
    };
    let many = list(
        "many.list",
        (0..LISTED_DIRECTORIES)
            .map(|i| format!("listed/d{i:02}/f"))
            .collect(),
    );
    // `--paths` last: cold_run puts the list after it.
    let (listed, cold_listed) = cold_run(&lazy, &many, DEPTH, &["--paths"]);
    assert_eq!(listed["files"], LISTED_DIRECTORIES, "{listed}");
    let ra = &listed["metadata_readahead"][0];
    assert_eq!(ra["state"], "done", "{listed}");
    let missed: BTreeSet<u64> = untouched.difference(&cold_listed).copied().collect();
    assert!(
        missed.is_empty(),
        "chunks of elsewhere/ left cold by a list's read-ahead: {}",
        ranges(&missed)
    );
    println!("a list in {LISTED_DIRECTORIES} directories: {ra}");
    // The same list with its lookups cached (a dry run has just mapped
    // it, then the volume went cold under the cache): the metadata the
    // list needs is in memory, and nothing is read ahead.
    let cached = cached_run(&lazy, &many, DEPTH, &["--paths"]);
    assert_eq!(cached["files"], LISTED_DIRECTORIES, "{cached}");
    // So with a walk whose tree a dry run has just walked.
    let walked = cached_run(&lazy, &dir, DEPTH, &[]);
    assert_eq!(walked["files"], without["files"], "{walked}");
    // Two files in two directories: their lookups are all there is.
    let few = list(
        "few.list",
        vec!["walked/a/b/big".into(), "walked/c/small".into()],
    );
    let (two, cold_two) = cold_run(&lazy, &few, DEPTH, &["--paths"]);
    assert_eq!(two["files"], 2, "{two}");
    let none = two
        .get("metadata_readahead")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty);
    assert!(none, "{two}");
    assert_eq!(
        untouched.difference(&cold_two).count(),
        untouched.len(),
        "{two}"
    );
}

/// Directories of `listed/`, one file in each: enough for a list of their
/// files to be read ahead (`LIST_DIRECTORIES` in prewarm-core's
/// `map/readahead.rs`).
const LISTED_DIRECTORIES: usize = 40;

#[test]
fn an_xfs_walk_reads_its_filesystems_metadata_ahead() {
    if !privileged_with(true, &["mkfs.xfs", "xfs_db"]) {
        return;
    }
    // XFS puts inode chunks near their directories' data, so the inodes
    // and blocks of `elsewhere/` are spread over some 70 chunks of the
    // volume: the run's own reads (48 MiB) are held to 64 MiB/s, for the
    // read-ahead to be done before they are.
    const DEPTH: &str = "16";
    const RATE: &str = "64";
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let big = work.join("big");
    let data: Vec<u8> = (0..48u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(&big, data).unwrap();
    let small = work.join("small");
    std::fs::write(&small, b"small").unwrap();
    // A prototype for mkfs.xfs: walked/ and elsewhere/, whose directories
    // hold enough entries to need a block of their own.
    let file = |name: &str, src: &Path| format!("{name} ---644 0 0 {}", src.display());
    let mut proto = vec![
        "prewarm".to_string(),
        "0 0".into(),
        "d--755 0 0".into(),
        "walked d--755 0 0".into(),
        "a d--755 0 0".into(),
        "b d--755 0 0".into(),
        file("big", &big),
        "$".into(),
        "$".into(),
        "c d--755 0 0".into(),
        file("small", &small),
        "$".into(),
        "$".into(),
        "elsewhere d--755 0 0".into(),
    ];
    let mut dirs = Vec::new();
    for i in 0..300 {
        proto.push(format!("d{i:03} d--755 0 0"));
        dirs.push(format!("/elsewhere/d{i:03}"));
        for f in 0..24 {
            proto.push(file(&format!("entry-with-a-longer-name-{f:02}"), &small));
        }
        proto.push("$".into());
    }
    proto.extend(["$".into(), "$".into()]);
    let proto_file = work.join("proto");
    std::fs::write(&proto_file, proto.join("\n") + "\n").unwrap();
    let (_backing, image) = image_on_tmpfs(work, 320 << 20);
    run(Command::new("mkfs.xfs")
        .args(["-q", "-f", "-p"])
        .arg(&proto_file)
        .arg(&image));
    let elsewhere = xfs_chunks_of(&image, &dirs);

    let lazy = LazyStore::open_with(
        Path::new(TESTBED),
        &image,
        work,
        &testbed_args(),
        "ro,norecovery",
        true,
    )
    .unwrap();
    let dir = lazy.mount.dir.join("walked");

    let (without, cold_without) = cold_run(
        &lazy,
        &dir,
        DEPTH,
        &["--max-rate", RATE, "--metadata-readahead", "0"],
    );
    let untouched = left_cold(&elsewhere, &cold_without);

    let (with, cold_with) = cold_run(
        &lazy,
        &dir,
        DEPTH,
        &["--max-rate", RATE, "--metadata-readahead", "64M"],
    );
    read_ahead_all(
        "elsewhere/'s inodes and directories (XFS)",
        (&with, &cold_with),
        (&without, &cold_without),
        &untouched,
        &["inode_table_bytes", "directory_bytes", "index_blocks"],
    );

    // Not asked for, XFS is not read ahead, and the report says why.
    let (default, _) = cold_run(&lazy, &dir, DEPTH, &["--max-rate", RATE]);
    let ra = &default["metadata_readahead"][0];
    assert_eq!(ra["state"], "skipped", "{default}");
    assert!(ra["reason"].as_str().unwrap().contains("XFS"), "{ra}");
    assert_eq!(ra["chunks"], 1, "only the superblock's: {ra}");
}
