//! The records of an end-to-end run: what one scenario, one method run and
//! one sweep produced, the exactness and warm-read checks, and the whole
//! run ([`Results`], i.e. `results.json`).
//!
//! These are plain serialisable data shared by the harness (which fills
//! them), the summary (which reduces them to medians and target verdicts)
//! and the rendering (which turns them into RESULTS.md and CSV); `--render`
//! reads them back from an earlier run's JSON, so their shape is the file
//! format.

use serde::{Deserialize, Serialize};

use super::analysis::Hydration;
use super::criterion::CriterionRow;
use super::methods::Method;
use super::summary::{LimitTargets, TargetCheck};
use crate::fixture::Shape;

/// One testbed + loop configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Scenario {
    pub id: String,
    pub title: String,
    pub direct_io: bool,
    pub concurrency: usize,
    pub latency_ms: f64,
    pub chunk_size: u64,
    pub max_mibps: Option<f64>,
    pub repeat: usize,
    pub headline: bool,
    /// The fixture the scenario ran on (older results: the node volume).
    #[serde(default)]
    pub shape: Shape,
    /// What its prewarm variants are judged against (older results: the
    /// default every scenario had then).
    #[serde(default)]
    pub targets: LimitTargets,
}
/// The application reading the critical files again after caches were
/// dropped, with the testbed not reset.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WarmCheck {
    pub read_ms: f64,
    pub bytes: u64,
    pub errors: u64,
    /// Fetches the read caused (0 if everything it needed was hydrated).
    pub fetches: u64,
    pub fetched_bytes: u64,
}

/// The exact-set comparison of a prewarm run with its plan (for a cold
/// run: with its plan plus the metadata chunks its mapping reads).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExactCheck {
    /// Chunks hydrated that are not in the plan.
    pub outside: Vec<u64>,
    /// Chunks of the plan not hydrated.
    pub missing: Vec<u64>,
}

impl ExactCheck {
    pub fn exact(&self) -> bool {
        self.outside.is_empty() && self.missing.is_empty()
    }
}

/// One method run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub scenario: String,
    pub method: Method,
    pub key: String,
    pub label: String,
    pub rep: usize,
    pub error: Option<String>,
    /// Wall time of the method (spawn to exit, or the in-process work).
    pub wall_ms: f64,
    pub hydration: Hydration,
    /// Physical limit of the scenario's critical set.
    pub limit_ms: f64,
    /// time to critical / limit.
    pub ratio: Option<f64>,
    /// Fraction of all CPUs busy during the method.
    pub cpu_busy: Option<f64>,
    /// CPU time the testbed process used during the method.
    pub testbed_cpu_ms: Option<f64>,
    /// Bytes the tool says it read (prewarm's report).
    pub tool_bytes_read: Option<u64>,
    pub warm: Option<WarmCheck>,
    /// `prewarm run --manifest` in full mode: the same command again
    /// straight after, caches dropped and every chunk hydrated: the plan's
    /// chunks moved with no fetch to wait for and no mapping (the transfer
    /// bound, [`super::summary::transfer_bound_ms`]). Results written
    /// before have it for every full prewarm read; only this one is used.
    #[serde(default)]
    pub warm_self_ms: Option<f64>,
    pub exact: Option<ExactCheck>,
}

/// One full-volume sweep.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepRecord {
    pub scenario: String,
    pub tool: String,
    pub rep: usize,
    pub error: Option<String>,
    pub wall_ms: f64,
    /// Device size / wall time.
    pub mib_per_s: f64,
    /// The tool's own figure (prewarm mib_per_s, fio bw).
    pub tool_mib_per_s: Option<f64>,
    pub fetches: u64,
    pub hydrated_chunks: u64,
    /// Read requests the testbed received, and the most fetches in flight.
    pub reads: u64,
    pub peak_concurrent_fetches: usize,
    pub cpu_busy: Option<f64>,
    pub testbed_cpu_ms: Option<f64>,
}

/// What one scenario produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScenarioResult {
    pub scenario: Scenario,
    /// The fixture it ran on, in words (older results: see [`Meta::fixture`]).
    #[serde(default)]
    pub fixture: String,
    pub loop_device: String,
    pub device_size: u64,
    pub critical_chunks: u64,
    pub critical_by_priority: Vec<(u32, u64)>,
    pub critical_files: u64,
    pub critical_file_bytes: u64,
    pub planned_bytes: u64,
    pub planned_ranges: u64,
    pub limit_ms: f64,
    /// prewarm's own planning time (dry-run `elapsed_ms`: collect, FIEMAP,
    /// plan) with cold metadata (straight after a cache drop, fetching
    /// metadata through the testbed) and with the metadata cached.
    pub prepare_cold_ms: Option<f64>,
    pub prepare_warm_ms: Option<f64>,
    /// /proc/loadavg when the scenario started and ended (other work on
    /// the host skews its timings).
    pub loadavg_start: String,
    pub loadavg_end: String,
    /// CPU seconds used by processes other than the harness and its
    /// children during the scenario, and the scenario's wall time: other
    /// work on the host competes with the testbed and the methods.
    pub other_cpu_s: f64,
    pub wall_s: f64,
    pub runs: Vec<RunRecord>,
    pub sweeps: Vec<SweepRecord>,
}
/// Machine, tools and parameters of a run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Meta {
    pub date: String,
    pub kernel: String,
    pub cpus: usize,
    pub mem_mib: u64,
    pub cpu_model: String,
    pub prewarm_version: String,
    pub fio_version: String,
    pub vmtouch_version: String,
    pub coreutils_version: String,
    pub command: String,
    pub ci: bool,
    pub fixture: String,
    /// The first fixture's manifest (`prewarm-fixture`'s JSON).
    pub fixture_manifest: serde_json::Value,
    /// Every fixture's manifest, in run order (older results: none).
    #[serde(default)]
    pub fixture_manifests: Vec<serde_json::Value>,
    pub chunk_size: u64,
    pub latency_ms: f64,
    pub max_mibps: Option<f64>,
    pub duration_s: f64,
    /// /proc/loadavg at the start and the end of the run (other work on the
    /// host skews timings).
    pub loadavg_start: String,
    pub loadavg_end: String,
    /// The git commit of the tree that was measured, and whether it had
    /// uncommitted changes to tracked files (results of a dirty tree do not
    /// belong to any commit).
    #[serde(default)]
    pub commit: String,
    #[serde(default)]
    pub dirty: bool,
}
/// Everything a run produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    pub meta: Meta,
    pub scenarios: Vec<ScenarioResult>,
    pub targets: Vec<TargetCheck>,
    pub criterion: Vec<CriterionRow>,
}
/// One progress line for stderr.
pub fn progress_line(r: &RunRecord) -> String {
    let h = &r.hydration;
    let ttc = h
        .time_to_critical_ms
        .map_or("not reached".into(), |t| format!("{t:.1} ms"));
    let warm = r
        .warm
        .as_ref()
        .map(|w| format!("warm read {:.0} ms/{} fetches", w.read_ms, w.fetches))
        .unwrap_or_default();
    format!(
        "{:<48} rep {} critical {:>12} ({:.2}x) wall {:>8.1} ms, {} chunks, {warm}{}",
        r.label,
        r.rep,
        ttc,
        r.ratio.unwrap_or(f64::NAN),
        r.wall_ms,
        h.chunks_hydrated,
        r.error
            .as_deref()
            .map(|e| format!("  ERROR {e}"))
            .unwrap_or_default()
    )
}

/// Records for the unit tests of the summary and the rendering.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    pub(crate) fn run(method: Method, ttc: f64, rep: usize) -> RunRecord {
        RunRecord {
            scenario: "dio-c8".into(),
            method,
            key: method.key(),
            label: method.label(),
            rep,
            error: None,
            wall_ms: ttc + 5.0,
            hydration: Hydration {
                time_to_critical_ms: Some(ttc),
                chunks_hydrated: 10,
                ..Hydration::default()
            },
            limit_ms: 100.0,
            ratio: Some(ttc / 100.0),
            cpu_busy: None,
            testbed_cpu_ms: None,
            tool_bytes_read: None,
            warm: None,
            warm_self_ms: None,
            exact: None,
        }
    }

    pub(crate) fn scenario(runs: Vec<RunRecord>, sweeps: Vec<(f64, &str)>) -> ScenarioResult {
        ScenarioResult {
            scenario: Scenario {
                id: "dio-c8".into(),
                title: "t".into(),
                direct_io: true,
                concurrency: 8,
                latency_ms: 4.0,
                chunk_size: 512 * 1024,
                max_mibps: None,
                repeat: 2,
                headline: true,
                shape: Shape::Node,
                targets: LimitTargets::default(),
            },
            fixture: String::new(),
            loop_device: "/dev/loop0".into(),
            device_size: 1 << 30,
            critical_chunks: 100,
            critical_by_priority: vec![(10, 100)],
            critical_files: 3,
            critical_file_bytes: 1,
            planned_bytes: 1,
            planned_ranges: 1,
            limit_ms: 100.0,
            prepare_cold_ms: None,
            prepare_warm_ms: None,
            loadavg_start: String::new(),
            loadavg_end: String::new(),
            other_cpu_s: 0.0,
            wall_s: 0.0,
            runs,
            sweeps: sweeps
                .into_iter()
                .map(|(mib, tool)| SweepRecord {
                    scenario: "dio-c8".into(),
                    tool: tool.into(),
                    rep: 0,
                    error: None,
                    wall_ms: 1.0,
                    mib_per_s: mib,
                    tool_mib_per_s: None,
                    fetches: 0,
                    hydrated_chunks: 0,
                    reads: 0,
                    peak_concurrent_fetches: 0,
                    cpu_busy: None,
                    testbed_cpu_ms: None,
                })
                .collect(),
        }
    }

    /// A headline scenario: prewarm default at 105 and 109 ms (limit 100
    /// ms), cat at 300 ms, `xargs -n 8` at 107 ms; sweeps prewarm 900 MiB/s
    /// against fio 800 MiB/s.
    pub(crate) fn sample_scenario() -> ScenarioResult {
        let pw = Method::prewarm_q32(false, false);
        scenario(
            vec![
                run(pw, 105.0, 0),
                run(pw, 109.0, 1),
                run(Method::Cat, 300.0, 0),
                run(Method::Xargs { n: 8 }, 107.0, 0),
            ],
            vec![(900.0, "prewarm --device"), (800.0, "fio")],
        )
    }
}
