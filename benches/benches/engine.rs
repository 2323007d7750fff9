//! Criterion bench of the read engine's overhead per I/O: 4 KiB reads
//! through `prewarm_core`'s engine (`internals::run`), io_uring against the pread pool, at
//! queue depths 1 and 32, on data that is already in the host page cache.
//!
//! It owns a 64 MiB random image under /var/tmp and, as root, a read-only
//! buffered loop device on it (detached on exit by the `LoopDevice` guard).
//! The device is opened with O_DIRECT as prewarm opens devices, so each read
//! goes through the block layer and the loop driver, which serves it from
//! the backing file's page cache (warmed by one pass before measuring): the
//! time is the engine plus the kernel's per-I/O path, with no media. The
//! same reads on the image file itself (buffered, page cache) isolate the
//! engine and syscall cost. Without root the loop-device part is skipped
//! with a printed reason.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use prewarm_benches::e2e::sys::{self, LoopDevice};
use prewarm_core::internals::{self as engine, open_read_only};
use prewarm_core::internals::{BackendChoice, EngineConfig, ReadOp, ReadTarget};

const IMAGE: u64 = 64 << 20;
const IO: u32 = 4096;
/// Reads per iteration: every 4 KiB block of the image once.
const OPS: u64 = IMAGE / IO as u64;

/// Every block once, in a scrambled (but fixed) order.
fn ops() -> Vec<ReadOp> {
    let mut idx: Vec<u64> = (0..OPS).collect();
    fastrand::Rng::with_seed(3).shuffle(&mut idx);
    idx.into_iter()
        .map(|i| ReadOp {
            target: 0,
            offset: i * u64::from(IO),
            len: IO,
            priority: 0,
        })
        .collect()
}

fn make_image() -> Result<tempfile::NamedTempFile, String> {
    let mut f = tempfile::Builder::new()
        .prefix("prewarm-bench-engine-")
        .suffix(".img")
        .tempfile_in("/var/tmp")
        .map_err(|e| format!("creating the image in /var/tmp: {e}"))?;
    let mut data = vec![0u8; IMAGE as usize];
    fastrand::Rng::with_seed(9).fill(&mut data);
    std::io::Write::write_all(&mut f, &data).map_err(|e| format!("writing the image: {e}"))?;
    f.as_file()
        .sync_all()
        .map_err(|e| format!("syncing the image: {e}"))?;
    Ok(f)
}

fn bench_target(
    group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    file: &File,
    direct: bool,
    ops: &[ReadOp],
) {
    let targets = [ReadTarget {
        fd: file.as_fd(),
        direct,
        align: 512,
        base: 0,
    }];
    for (backend, label) in [
        (BackendChoice::Uring, "uring"),
        (BackendChoice::Pread, "pread"),
    ] {
        for qd in [1u32, 32] {
            let cfg = EngineConfig {
                queue_depth: qd,
                backend,
                ..EngineConfig::default()
            };
            // The warm-up pass: afterwards every block is in the page cache.
            match engine::run(&targets, ops, &cfg) {
                Ok(s) if s.errors == 0 && s.bytes_read == IMAGE => {}
                Ok(s) => {
                    eprintln!(
                        "SKIP engine {name} {label}: warm-up read {} bytes with {} errors",
                        s.bytes_read, s.errors
                    );
                    continue;
                }
                Err(e) => {
                    eprintln!("SKIP engine {name} {label}: {e}");
                    continue;
                }
            }
            group.bench_function(format!("{name} {label} qd{qd}"), |b| {
                b.iter(|| engine::run(&targets, ops, &cfg).map(|s| s.ios_done))
            });
        }
    }
}

fn bench_engine(c: &mut Criterion) {
    let image = match make_image() {
        Ok(i) => i,
        Err(e) => {
            eprintln!("SKIP engine bench: {e}");
            return;
        }
    };
    let ops = ops();
    let mut group = c.benchmark_group("engine");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    group.throughput(Throughput::Elements(OPS));

    if let Ok(file) = File::open(image.path()) {
        bench_target(&mut group, "page-cached file", &file, false, &ops);
    }

    if !sys::is_root() {
        eprintln!("SKIP engine loop-device bench: needs root (losetup)");
    } else if sys::which("losetup").is_none() {
        eprintln!("SKIP engine loop-device bench: losetup not found");
    } else {
        match LoopDevice::attach(image.path(), false) {
            Err(e) => eprintln!("SKIP engine loop-device bench: {e:#}"),
            Ok(dev) => match open_read_only(Path::new(&dev.path), true, 0) {
                Ok((file, direct)) => {
                    bench_target(&mut group, "warm loop device", &file, direct, &ops)
                }
                Err(e) => eprintln!("SKIP engine loop-device bench: opening {e}"),
            },
        }
    }
    group.finish();
}

criterion_group!(benches, bench_engine);
criterion_main!(benches);
