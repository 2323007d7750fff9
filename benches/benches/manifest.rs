//! Criterion bench of the manifest decoder on a boot manifest shaped like
//! unpacked container layers: 10,000 files in 1,000 directories ten levels
//! deep, one or two extents each.
//!
//! It owns the synthetic manifest (seeded, so every run decodes the same
//! bytes) and one measurement: `Manifest::decode`, every bound checked.
//! A replay makes the same pass (with the same checks) before its first
//! read, so its cost is start-up time at boot; the deep paths are what
//! makes checking them whole, entry by entry, expensive.

use std::path::PathBuf;
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use prewarm_core::manifest::{DeviceHeader, Manifest, ManifestDevice, ManifestFile};
use prewarm_core::map::Extent;
use prewarm_core::plan::PlanConfig;

/// Entries per manifest.
const FILES: usize = 10_000;
/// Files per directory.
const PER_DIRECTORY: usize = 10;
/// Directories from the layer's root to its files.
const DEPTH: usize = 10;
/// Size of the synthetic device.
const DEVICE: u64 = 64 << 30;

fn manifest() -> Manifest {
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let files = (0..FILES)
        .map(|i| {
            let dir = i / PER_DIRECTORY;
            let mut path = PathBuf::from(format!(
                "var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/{}/fs",
                dir % 6
            ));
            for level in 0..DEPTH {
                path.push(format!("dir-{level}-{}", dir >> level));
            }
            path.push(format!("file-{i}.so"));
            let size = rng.u64(1..=64) * 4096;
            let extents = (0..rng.u64(1..=2))
                .map(|k| Extent {
                    logical: k * size / 2,
                    physical: rng.u64(..DEVICE / 4096 - 64) * 4096,
                    length: size / 2,
                })
                .collect();
            ManifestFile {
                path,
                ino: i as u64 + 12,
                size,
                mtime_sec: 1_700_000_000,
                priority: if i < FILES / 10 { 10 } else { 50 },
                extents,
                ..ManifestFile::default()
            }
        })
        .collect();
    Manifest {
        created_unix: 1_700_000_000,
        tool: "prewarm bench".into(),
        plan: PlanConfig::default(),
        devices: vec![ManifestDevice {
            header: DeviceHeader {
                fs_type: "ext4".into(),
                uuid: [7; 16],
                size: DEVICE,
                logical_block_size: 512,
                node_hint: "/dev/nvme0n1p1".into(),
            },
            files,
        }],
        images: Vec::new(),
    }
}

fn bench_decode(c: &mut Criterion) {
    let bytes = manifest().encode();
    let mut group = c.benchmark_group("manifest");
    group.sample_size(20);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    group.throughput(Throughput::Elements(FILES as u64));
    group.bench_function("decode 10k deep entries", |b| {
        b.iter(|| Manifest::decode(black_box(&bytes)).map(|m| m.devices.len()))
    });
    group.finish();
}

criterion_group!(benches, bench_decode);
criterion_main!(benches);
