//! `--image` on the lazy-volume testbed hydrates exactly that image.
//!
//! The volume is an ext4 filesystem holding a real containerd store (built
//! by a private containerd, see `prewarm_benches::images`) with three
//! images: a big one (~50 MiB in 430 files over three layers) and two small
//! ones (~7 MiB each), all three sharing one small base layer. It is served
//! by the testbed (512 KiB chunks) and mounted read-only from a direct-I/O
//! loop device. From all cold (page cache dropped, testbed reset),
//! `prewarm --image BIG` must hydrate, by the testbed's own counters:
//!
//! - **every** chunk holding data of a file it plans for the image: each
//!   regular file under the snapshot directories containerd mounts for it
//!   (asked of containerd itself while building), `meta.db`, the
//!   snapshotter's `metadata.db`, and the image's manifest and config blobs;
//! - **no** chunk whose file data is only other files': the small images'
//!   own layers, every layer blob of the content store, the small images'
//!   manifests and configs.
//!
//! "Exactly" means those two; chunks holding no file data at all (inode
//! tables, directories, extent and bitmap blocks: what walking the image's
//! directories and mapping its files reads) may go either way. Chunk sets
//! come from FIEMAP of every regular file of the store, independently of
//! prewarm's plan.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::{prewarm_bin, privileged_with};
use prewarm_benches::e2e::analysis::chunk_ranges;
use prewarm_benches::e2e::sys::Mount;
use prewarm_benches::images::{self, LazyStore, StoreSpec};

const TESTBED: &str = env!("CARGO_BIN_EXE_prewarm-testbed");
const CHUNK: u64 = 512 * 1024;

fn ranges(set: &BTreeSet<u64>) -> String {
    chunk_ranges(&set.iter().copied().collect::<Vec<_>>())
}

#[test]
fn image_hydrates_exactly_its_chunks() {
    if !privileged_with(true, images::TOOLS) {
        return;
    }
    let prewarm = prewarm_bin();
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    // The image on a tmpfs: dropping caches must not evict the testbed's
    // backing file.
    let backing = Mount::tmpfs(&work.join("backing"), 400 << 20).unwrap();
    let store =
        images::build_store(work, &backing.dir.join("store.img"), &StoreSpec::default()).unwrap();
    let big = &store.images[0];
    assert_eq!(big.layer_dirs.len(), 3, "{big:?}");
    let lazy = LazyStore::open(
        Path::new(TESTBED),
        &store.image,
        work,
        &[
            "--chunk-size".into(),
            CHUNK.to_string(),
            "--latency-ms".into(),
            "1".into(),
        ],
    )
    .unwrap();
    let root = lazy.containerd_root();
    let sets = images::chunk_sets(&root, big, CHUNK).unwrap();
    // Not vacuous: both sides are substantial.
    assert!(
        sets.planned.len() > 80,
        "planned: {}",
        ranges(&sets.planned)
    );
    assert!(
        sets.others_only.len() > 40,
        "others only: {}",
        ranges(&sets.others_only)
    );

    lazy.cold().unwrap();
    let out = images::prewarm_image_cmd(&prewarm, &root, &big.name)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "prewarm failed: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["images"][0]["image"], big.name.as_str(), "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    let stats = lazy.testbed.stats(true).unwrap();
    let hydrated: BTreeSet<u64> = stats.hydrated.unwrap_or_default().into_iter().collect();
    let missed: BTreeSet<u64> = sets.planned.difference(&hydrated).copied().collect();
    let stray: BTreeSet<u64> = sets.others_only.intersection(&hydrated).copied().collect();
    let metadata = hydrated.difference(&sets.planned).count();
    println!(
        "{} planned chunks ({} files, {} bytes), {} others-only; hydrated {} ({} metadata-only)",
        sets.planned.len(),
        sets.planned_files,
        sets.planned_bytes,
        sets.others_only.len(),
        hydrated.len(),
        metadata
    );
    assert!(
        missed.is_empty(),
        "planned chunks left cold: {}",
        ranges(&missed)
    );
    assert!(
        stray.is_empty(),
        "chunks of other images' data hydrated: {}",
        ranges(&stray)
    );
}
