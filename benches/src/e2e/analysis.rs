//! Turning raw observations into the numbers the comparison reports: the
//! critical set's chunks (from prewarm's dry-run JSON), the physical limit,
//! and per-run hydration metrics from the testbed's counters.
//!
//! Kept free of any I/O so it can be unit-tested: the harness feeds it the
//! dry-run text, the testbed [`Stats`] and the offset between the testbed's
//! reset and the method's start.

use std::collections::{BTreeSet, HashMap};

use anyhow::{bail, Context, Result};
use prewarm_core::plan::{PlanConfig, PrioritizedExtent, ReadPlan};
use serde::{Deserialize, Serialize};

use crate::lazy::Stats;

/// The parts of `prewarm --dry-run --json` the harness uses.
#[derive(Debug, Deserialize)]
pub struct DryRun {
    pub files: u64,
    pub file_bytes: u64,
    pub file_level_bytes: u64,
    pub chunks: u64,
    pub ranges: u64,
    pub planned_bytes: u64,
    pub devices: Vec<DryRunDevice>,
    #[serde(default)]
    pub file_maps: Vec<FileMap>,
}

/// One device of the dry run.
#[derive(Debug, Deserialize)]
pub struct DryRunDevice {
    pub node: String,
    pub size: u64,
    pub plan: DryRunPlan,
}

/// A device plan's sizes.
#[derive(Debug, Deserialize)]
pub struct DryRunPlan {
    pub ranges: u64,
    pub chunks: u64,
    pub bytes: u64,
}

/// One file's mapping.
#[derive(Debug, Deserialize)]
pub struct FileMap {
    pub path: String,
    pub priority: u32,
    #[serde(default)]
    pub device_extents: Vec<Extent>,
}

/// A device extent of a file.
#[derive(Debug, Deserialize)]
pub struct Extent {
    pub logical: u64,
    pub physical: u64,
    pub length: u64,
}

/// The chunks the critical files occupy on the device.
#[derive(Debug, Clone, Serialize)]
pub struct CriticalSet {
    /// Chunk indexes, ascending.
    pub chunks: Vec<u64>,
    /// Chunks of the most urgent class (priority, count).
    pub by_priority: Vec<(u32, u64)>,
    pub files: u64,
    pub file_bytes: u64,
    /// Bytes prewarm plans to read (whole chunks).
    pub planned_bytes: u64,
    pub ranges: u64,
    /// Chunks outside the set that a run may read beside its plan: those
    /// a cold dry run hydrated (filesystem metadata: inode tables,
    /// directories, extent trees) and those holding no byte of any file
    /// of the volume; filled in by the harness.
    pub metadata: Vec<u64>,
}

impl CriticalSet {
    /// Derive the critical chunk set from a dry run of the critical list on
    /// the device `node`: the file extents go through the same planner
    /// prewarm uses (`ReadPlan::build`, default settings but `chunk_size`),
    /// and the result must agree with the plan size the dry run reports.
    pub fn from_dry_run(text: &str, node: &str, chunk_size: u64) -> Result<Self> {
        let dry: DryRun = serde_json::from_str(text).context("parsing prewarm's dry-run JSON")?;
        if dry.file_level_bytes != 0 {
            bail!(
                "{} bytes of the critical files would be read through files, not the device",
                dry.file_level_bytes
            );
        }
        let [dev] = &dry.devices[..] else {
            bail!(
                "expected one device in the dry run, found {}",
                dry.devices.len()
            );
        };
        if dev.node != node {
            bail!("dry run planned {} instead of {node}", dev.node);
        }
        let extents: Vec<PrioritizedExtent> = dry
            .file_maps
            .iter()
            .flat_map(|f| {
                f.device_extents.iter().map(|e| PrioritizedExtent {
                    priority: f.priority,
                    offset: e.physical,
                    len: e.length,
                })
            })
            .collect();
        let cfg = PlanConfig {
            chunk_size,
            ..PlanConfig::default()
        };
        let (chunks, by_priority) = planned_chunks(&extents, dev.size, &cfg, chunk_size);
        if chunks.len() as u64 != dev.plan.chunks {
            bail!(
                "critical set has {} chunks but prewarm's dry run plans {}",
                chunks.len(),
                dev.plan.chunks
            );
        }
        Ok(CriticalSet {
            chunks: chunks.into_iter().collect(),
            by_priority,
            files: dry.files,
            file_bytes: dry.file_bytes,
            planned_bytes: dry.planned_bytes,
            ranges: dry.ranges,
            metadata: Vec::new(),
        })
    }
}

/// The chunks (of `chunk_size` bytes) prewarm reads for `extents` on a
/// device of `device_size` bytes, planned as prewarm plans them
/// (`ReadPlan::build` with `cfg`), and how many each priority class adds, in
/// priority order.
pub fn planned_chunks(
    extents: &[PrioritizedExtent],
    device_size: u64,
    cfg: &PlanConfig,
    chunk_size: u64,
) -> (BTreeSet<u64>, Vec<(u32, u64)>) {
    let plan = ReadPlan::build(extents, device_size, cfg);
    let mut chunks = BTreeSet::new();
    let mut by_priority = Vec::new();
    for class in &plan.classes {
        let before = chunks.len();
        for r in &class.ranges {
            chunks.extend(r.offset / chunk_size..r.end().div_ceil(chunk_size));
        }
        by_priority.push((class.priority, (chunks.len() - before) as u64));
    }
    (chunks, by_priority)
}

/// Lower bound on hydrating `chunks` chunks with `concurrency` fetches of
/// `latency_ms` in flight, or on moving their bytes under a throughput
/// cap, whichever is longer: fetches overlap the transfer, so the two
/// bounds do not add.
pub fn physical_limit_ms(
    chunks: u64,
    concurrency: u64,
    latency_ms: f64,
    chunk_size: u64,
    max_mibps: Option<f64>,
) -> f64 {
    let rounds = chunks.div_ceil(concurrency.max(1));
    let transfer = max_mibps.filter(|m| *m > 0.0).map_or(0.0, |m| {
        (chunks * chunk_size) as f64 / (m * 1048576.0) * 1e3
    });
    (rounds as f64 * latency_ms).max(transfer)
}

/// What the testbed saw during one method run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Hydration {
    /// From method start until the last critical chunk was hydrated; `None`
    /// if some critical chunk never was.
    pub time_to_critical_ms: Option<f64>,
    /// Critical chunks not hydrated by the end of the method.
    pub critical_missing: u64,
    /// Chunks hydrated by the end of the method.
    pub chunks_hydrated: u64,
    /// Hydrated chunks outside the critical set.
    pub outside_critical: u64,
    pub fetches: u64,
    pub fetched_bytes: u64,
    /// Read requests the testbed received, and the bytes it returned.
    pub reads: u64,
    pub bytes_served: u64,
    pub peak_concurrent_fetches: usize,
    /// From method start until the first fetch took a slot.
    pub first_fetch_ms: Option<f64>,
    /// From method start until the first fetch of a critical chunk took a
    /// slot (start-up and mapping time of the method).
    pub first_critical_fetch_ms: Option<f64>,
    /// Mean time a fetch held its slot (the configured latency, plus any
    /// jitter and rate-cap wait; the slots keep the volume's clock).
    pub mean_fetch_ms: Option<f64>,
    /// Fraction of the `concurrency` slots busy between method start and
    /// the critical set's completion.
    pub slot_utilisation: Option<f64>,
}

/// Analyse the detailed stats taken after a method, whose start was
/// `start_us` µs after the testbed's reset. `critical` must be ascending.
pub fn analyse(stats: &Stats, critical: &[u64], start_us: f64) -> Hydration {
    let events = stats.hydration_order.as_deref().unwrap_or(&[]);
    let hydrated: BTreeSet<u64> = match &stats.hydrated {
        Some(h) => h.iter().copied().collect(),
        None => events.iter().map(|e| e.chunk).collect(),
    };
    let end_of: HashMap<u64, u64> = events.iter().map(|e| (e.chunk, e.end_us)).collect();
    let mut missing = 0;
    let mut last_end = 0u64;
    for c in critical {
        match end_of.get(c) {
            Some(&end) if hydrated.contains(c) => last_end = last_end.max(end),
            _ => missing += 1,
        }
    }
    let critical_set: BTreeSet<u64> = critical.iter().copied().collect();
    let outside = hydrated.difference(&critical_set).count() as u64;
    let ttc = (missing == 0 && !critical.is_empty()).then(|| (last_end as f64 - start_us) / 1e3);
    let first_fetch = events
        .iter()
        .map(|e| e.start_us)
        .min()
        .map(|s| (s as f64 - start_us) / 1e3);
    let first_critical_fetch = events
        .iter()
        .filter(|e| critical.binary_search(&e.chunk).is_ok())
        .map(|e| e.start_us)
        .min()
        .map(|s| (s as f64 - start_us) / 1e3);
    let mean = (!events.is_empty()).then(|| {
        events.iter().map(|e| e.slot_us() as f64).sum::<f64>() / events.len() as f64 / 1e3
    });
    let utilisation = ttc.filter(|t| *t > 0.0).map(|t| {
        let window_end = start_us + t * 1e3;
        let busy: f64 = events
            .iter()
            .map(|e| {
                let s = (e.start_us as f64).max(start_us);
                let end = ((e.start_us + e.slot_us()) as f64).min(window_end);
                (end - s).max(0.0)
            })
            .sum();
        busy / (stats.concurrency.max(1) as f64 * t * 1e3)
    });
    Hydration {
        time_to_critical_ms: ttc,
        critical_missing: missing,
        chunks_hydrated: stats.hydrated_chunks,
        outside_critical: outside,
        fetches: stats.fetches,
        fetched_bytes: stats.fetched_bytes,
        reads: stats.reads,
        bytes_served: stats.bytes_read,
        peak_concurrent_fetches: stats.peak_concurrent_fetches,
        first_fetch_ms: first_fetch,
        first_critical_fetch_ms: first_critical_fetch,
        mean_fetch_ms: mean,
        slot_utilisation: utilisation,
    }
}

/// The exact-set check: chunks hydrated outside `plan`, and chunks of `plan`
/// never hydrated (both ascending).
pub fn compare_sets(hydrated: &[u64], plan: &[u64]) -> (Vec<u64>, Vec<u64>) {
    let h: BTreeSet<u64> = hydrated.iter().copied().collect();
    let p: BTreeSet<u64> = plan.iter().copied().collect();
    (
        h.difference(&p).copied().collect(),
        p.difference(&h).copied().collect(),
    )
}

/// Median of the values present (`None` when there are none).
pub fn median(values: impl IntoIterator<Item = Option<f64>>) -> Option<f64> {
    let mut v: Vec<f64> = values.into_iter().flatten().collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Compress ascending chunk indexes into `a-b,c` form (for messages).
pub fn chunk_ranges(chunks: &[u64]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < chunks.len() {
        let start = chunks[i];
        let mut end = start;
        while i + 1 < chunks.len() && chunks[i + 1] == end + 1 {
            i += 1;
            end = chunks[i];
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    out.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lazy::HydrationEvent;

    fn stats(events: &[(u64, u64, u64)], concurrency: usize) -> Stats {
        let mut hydrated: Vec<u64> = events.iter().map(|e| e.0).collect();
        hydrated.sort_unstable();
        Stats {
            image_size: 1 << 30,
            chunk_size: 512 * 1024,
            chunks: 2048,
            latency_us: 4000,
            jitter_us: 0,
            concurrency,
            max_bytes_per_sec: None,
            max_fetches_per_sec: None,
            fail_chunks: String::new(),
            hang_chunks: String::new(),
            hanging_reads: 0,
            since_reset_us: 0,
            reads: events.len() as u64,
            failed_reads: 0,
            bytes_read: 0,
            fetches: events.len() as u64,
            fetched_bytes: events.len() as u64 * 512 * 1024,
            hydrated_chunks: events.len() as u64,
            inflight_fetches: 0,
            peak_concurrent_fetches: concurrency,
            slot_waits: 0,
            hydrated: Some(hydrated),
            hydration_order: Some(
                events
                    .iter()
                    .map(|&(chunk, start_us, end_us)| HydrationEvent {
                        chunk,
                        start_us,
                        end_us,
                        slot_end_us: None,
                    })
                    .collect(),
            ),
        }
    }

    #[test]
    fn limit_rounds_up_and_takes_the_longer_bound() {
        assert_eq!(physical_limit_ms(695, 8, 4.0, 512 * 1024, None), 87.0 * 4.0);
        assert_eq!(physical_limit_ms(8, 8, 4.0, 512 * 1024, None), 4.0);
        // 8 MiB at 8 MiB/s: the transfer (1 s) bounds, not the one round.
        let capped = physical_limit_ms(8, 8, 4.0, 1 << 20, Some(8.0));
        assert!((capped - 1000.0).abs() < 1e-9);
        // A generous cap: the round trips bound.
        let loose = physical_limit_ms(695, 8, 4.0, 512 * 1024, Some(1e6));
        assert_eq!(loose, 87.0 * 4.0);
    }

    #[test]
    fn time_to_critical_counts_from_method_start() {
        // Chunk 9 is metadata (outside), 1 and 2 are critical.
        let s = stats(&[(9, 1000, 5000), (1, 6000, 10000), (2, 6000, 12000)], 2);
        let h = analyse(&s, &[1, 2], 2000.0);
        assert_eq!(h.time_to_critical_ms, Some(10.0));
        assert_eq!(h.outside_critical, 1);
        assert_eq!(h.critical_missing, 0);
        assert_eq!(h.first_fetch_ms, Some(-1.0));
        assert_eq!(h.first_critical_fetch_ms, Some(4.0));
        assert_eq!(h.mean_fetch_ms, Some(14000.0 / 3.0 / 1e3));
        // Busy inside [2000, 12000]: 3000 + 4000 + 6000 over 2 slots × 10 ms.
        let u = h.slot_utilisation.expect("utilisation");
        assert!((u - 13000.0 / 20000.0).abs() < 1e-9, "{u}");

        let h = analyse(&s, &[1, 2, 3], 0.0);
        assert_eq!(h.time_to_critical_ms, None);
        assert_eq!(h.critical_missing, 1);
    }

    #[test]
    fn set_comparison_and_helpers() {
        let (extra, missing) = compare_sets(&[1, 2, 5], &[2, 3, 5]);
        assert_eq!((extra, missing), (vec![1], vec![3]));
        assert_eq!(chunk_ranges(&[1, 2, 3, 7, 9, 10]), "1-3,7,9-10");
        assert_eq!(median([Some(3.0), None, Some(1.0), Some(2.0)]), Some(2.0));
        assert_eq!(median([Some(1.0), Some(2.0)]), Some(1.5));
        assert_eq!(median([None]), None);
    }

    #[test]
    fn critical_set_from_dry_run() {
        let k = 512 * 1024u64;
        let text = serde_json::json!({
            "files": 2, "file_bytes": 10, "file_level_bytes": 0, "chunks": 3,
            "ranges": 2, "planned_bytes": 3 * k,
            "devices": [{"node": "/dev/loop9", "size": 100 * k,
                          "plan": {"ranges": 2, "chunks": 3, "bytes": 3 * k}}],
            "file_maps": [
                {"path": "/a", "priority": 10, "size": 5,
                 "device_extents": [{"logical": 0, "physical": 4 * k + 10, "length": k}]},
                {"path": "/b", "priority": 50, "size": 5,
                 "device_extents": [{"logical": 0, "physical": 10 * k, "length": 4096},
                                    {"logical": 4096, "physical": 4 * k, "length": 4096}]}
            ]
        })
        .to_string();
        let set = CriticalSet::from_dry_run(&text, "/dev/loop9", k).expect("parses");
        assert_eq!(set.chunks, vec![4, 5, 10]);
        assert_eq!(set.by_priority, vec![(10, 2), (50, 1)]);
        assert!(CriticalSet::from_dry_run(&text, "/dev/loop1", k).is_err());
        assert!(CriticalSet::from_dry_run(&text, "/dev/loop9", 2 * k).is_err());
    }
}
