//! Criterion bench of the planner: `ReadPlan::build` plus `ios()` over 100,000
//! random extents in several priority classes (target: under 50 ms).
//!
//! It owns the synthetic extent set (seeded, so every run plans the same
//! input) and the two measurements: the plan alone, and the plan plus the
//! full-mode I/O list the engine would be given. The extents are scattered
//! over a 256 GiB device with lengths of 4 KiB to 1 MiB, which is harsher
//! than a real root volume (few merges, many ranges).

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use prewarm_core::plan::{PlanConfig, PrioritizedExtent, ReadMode, ReadPlan};

/// Extents planned per iteration.
const EXTENTS: usize = 100_000;
/// Size of the synthetic device.
const DEVICE: u64 = 256 << 30;
/// Priority classes the extents are spread over.
const PRIORITIES: [u32; 5] = [0, 10, 20, 50, 100];

fn extents() -> Vec<PrioritizedExtent> {
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    (0..EXTENTS)
        .map(|_| PrioritizedExtent {
            priority: PRIORITIES[rng.usize(..PRIORITIES.len())],
            offset: rng.u64(..DEVICE / 4096) * 4096,
            len: rng.u64(1..=256) * 4096,
        })
        .collect()
}

fn bench_plan(c: &mut Criterion) {
    let input = extents();
    let cfg = PlanConfig::default();
    let mut group = c.benchmark_group("plan");
    group.sample_size(20);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    group.throughput(Throughput::Elements(EXTENTS as u64));
    group.bench_function("build 100k extents", |b| {
        b.iter(|| ReadPlan::build(black_box(&input), DEVICE, &cfg))
    });
    group.bench_function("build+ios 100k extents", |b| {
        b.iter(|| {
            let plan = ReadPlan::build(black_box(&input), DEVICE, &cfg);
            black_box(plan.ios(ReadMode::Full, 4096).len())
        })
    });
    group.finish();
}

criterion_group!(benches, bench_plan);
criterion_main!(benches);
