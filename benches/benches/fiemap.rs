//! Criterion bench of extent mapping: FIEMAP over a 10,000-file tree on a
//! real filesystem, reported in files/s.
//!
//! It owns the tree: created once per run under /var/tmp (tmpfs has no
//! FIEMAP), 100 directories of 100 files of 1–64 KiB, synced so every extent
//! is allocated (no delalloc), and removed at the end. Two measurements:
//! `open+map`, what prewarm does per file once it has the list (open with
//! O_NOATIME, FIEMAP, classify); and `prepare`, the whole library front end
//! on the directory (walk, stat, map in parallel, resolve the device, plan).
//! The metadata is in the page cache, so this is the CPU and syscall cost,
//! not the cost of reading a cold extent tree.

use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use prewarm_core::internals::{map_file, open_file};
use prewarm_core::{hydrate, Config, Sources};

const DIRS: usize = 100;
const FILES_PER_DIR: usize = 100;
const FILES: usize = DIRS * FILES_PER_DIR;
/// Where the tree goes: a disk filesystem, unlike /tmp on many systems.
const PARENT: &str = "/var/tmp";

struct Tree {
    dir: tempfile::TempDir,
    files: Vec<(PathBuf, u64)>,
}

fn build_tree() -> Result<Tree, String> {
    let dir = tempfile::Builder::new()
        .prefix("prewarm-bench-fiemap-")
        .tempdir_in(PARENT)
        .map_err(|e| format!("creating a temp dir in {PARENT}: {e}"))?;
    let mut rng = fastrand::Rng::with_seed(42);
    let mut pool = vec![0u8; 64 * 1024];
    rng.fill(&mut pool);
    let mut files = Vec::with_capacity(FILES);
    for d in 0..DIRS {
        let sub = dir.path().join(format!("d{d:03}"));
        std::fs::create_dir(&sub).map_err(|e| format!("mkdir {}: {e}", sub.display()))?;
        for f in 0..FILES_PER_DIR {
            let path = sub.join(format!("f{f:03}"));
            let size = rng.usize(1024..=pool.len());
            std::fs::write(&path, &pool[..size])
                .map_err(|e| format!("writing {}: {e}", path.display()))?;
            files.push((path, size as u64));
        }
    }
    // Allocate every delayed extent, so FIEMAP sees real block addresses.
    nix::unistd::sync();
    Ok(Tree { dir, files })
}

/// Open and map one file; the number of device extents found.
fn map_one(path: &Path, size: u64) -> usize {
    match open_file(path, false) {
        Ok((file, _)) => map_file(&file, size, None).device_extents.len(),
        Err(_) => 0,
    }
}

fn bench_fiemap(c: &mut Criterion) {
    let tree = match build_tree() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("SKIP fiemap bench: {e}");
            return;
        }
    };
    let (first, size) = &tree.files[0];
    match open_file(first, false).map(|(f, _)| map_file(&f, *size, None)) {
        Ok(m) if m.fallback.is_none() => {}
        Ok(m) => {
            eprintln!(
                "SKIP fiemap bench: no usable FIEMAP under {PARENT} ({})",
                m.fallback.map(|r| r.to_string()).unwrap_or_default()
            );
            return;
        }
        Err(e) => {
            eprintln!("SKIP fiemap bench: opening {}: {e}", first.display());
            return;
        }
    }

    let mut group = c.benchmark_group("fiemap");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    group.throughput(Throughput::Elements(FILES as u64));
    group.bench_function("open+map 10k files", |b| {
        b.iter(|| {
            tree.files
                .iter()
                .map(|(p, s)| map_one(p, *s))
                .sum::<usize>()
        })
    });
    let mut sources = Sources::default();
    sources.add_path(tree.dir.path(), 10);
    // A dry run: the road up to the plan (collect, map, plan), no reads.
    let cfg = Config {
        dry_run: true,
        ..Config::default()
    };
    group.bench_function("prepare 10k files", |b| {
        b.iter(|| match hydrate(black_box(&sources), &cfg) {
            Ok(r) => r.files,
            Err(e) => panic!("planning failed on the bench tree: {e}"),
        })
    });
    group.finish();
}

criterion_group!(benches, bench_fiemap);
criterion_main!(benches);
