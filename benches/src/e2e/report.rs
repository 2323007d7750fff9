//! Reporting of an end-to-end run: per-method medians, the target checks,
//! the criterion numbers of the micro-benchmarks, and the three outputs —
//! `RESULTS.md` (tables and setup), `results.json` (everything, raw runs
//! included) and a plot-friendly CSV (one row per run) for stdout.
//!
//! The target thresholds are fixed here and reported as met or missed with
//! the measured gap; nothing adjusts them to the results.

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::analysis::median;
use super::harness::{Method, RunRecord, ScenarioResult, SweepRecord};

/// Ratio to the physical limit prewarm must stay within (default settings).
pub const LIMIT_TARGET: f64 = 1.1;

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
    pub fixture_manifest: serde_json::Value,
    pub chunk_size: u64,
    pub latency_ms: f64,
    pub max_mibps: Option<f64>,
    pub duration_s: f64,
    /// /proc/loadavg at the start and the end of the run (other work on the
    /// host skews timings).
    pub loadavg_start: String,
    pub loadavg_end: String,
}

/// One criterion benchmark's result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CriterionRow {
    pub id: String,
    pub median_ns: f64,
    pub mean_ns: f64,
    /// Elements per iteration, when the bench declared a throughput.
    pub elements: Option<u64>,
}

impl CriterionRow {
    /// The figure the brief asks for, by group.
    pub fn headline(&self) -> String {
        let per_iter_ms = self.median_ns / 1e6;
        match (self.id.split('/').next(), self.elements) {
            (Some("fiemap"), Some(n)) => format!(
                "{:.0} files/s ({per_iter_ms:.1} ms per {n} files)",
                n as f64 / (self.median_ns / 1e9)
            ),
            (Some("engine"), Some(n)) => format!(
                "{:.2} µs per I/O ({n} × 4 KiB reads in {per_iter_ms:.1} ms)",
                self.median_ns / 1e3 / n as f64
            ),
            (_, Some(n)) => format!(
                "{per_iter_ms:.2} ms per iteration ({:.0} ns per element of {n})",
                self.median_ns / n as f64
            ),
            (_, None) => format!("{per_iter_ms:.3} ms per iteration"),
        }
    }
}

#[derive(Deserialize)]
struct CritBenchmark {
    full_id: String,
    throughput: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct CritEstimate {
    point_estimate: f64,
}

#[derive(Deserialize)]
struct CritEstimates {
    mean: CritEstimate,
    median: CritEstimate,
}

/// Read every `*/new/benchmark.json` + `estimates.json` under criterion's
/// output directory (missing directory: no rows).
pub fn load_criterion(dir: &Path) -> Vec<CriterionRow> {
    let mut rows = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n == "new") {
                    if let Some(r) = read_criterion_bench(&p) {
                        rows.push(r);
                    }
                } else {
                    stack.push(p);
                }
            }
        }
    }
    rows.sort_by(|a, b| a.id.cmp(&b.id));
    rows
}

fn read_criterion_bench(new: &Path) -> Option<CriterionRow> {
    let b: CritBenchmark =
        serde_json::from_str(&std::fs::read_to_string(new.join("benchmark.json")).ok()?).ok()?;
    let e: CritEstimates =
        serde_json::from_str(&std::fs::read_to_string(new.join("estimates.json")).ok()?).ok()?;
    let elements = b
        .throughput
        .as_ref()
        .and_then(|t| t.get("Elements"))
        .and_then(serde_json::Value::as_u64);
    Some(CriterionRow {
        id: b.full_id,
        median_ns: e.median.point_estimate,
        mean_ns: e.mean.point_estimate,
        elements,
    })
}

/// A target and whether this run met it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetCheck {
    pub target: String,
    /// `None`: could not be evaluated (method failed or missing).
    pub met: Option<bool>,
    pub detail: String,
}

/// Medians over the repetitions of one method in one scenario.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MethodSummary {
    pub key: String,
    pub label: String,
    pub method: Method,
    pub reps: usize,
    pub errors: usize,
    pub ttc_ms: Option<f64>,
    pub ttc_min_ms: Option<f64>,
    pub ttc_max_ms: Option<f64>,
    pub ratio: Option<f64>,
    pub wall_ms: Option<f64>,
    pub chunks_hydrated: Option<f64>,
    pub outside_critical: Option<f64>,
    pub fetched_mib: Option<f64>,
    pub served_mib: Option<f64>,
    pub reads: Option<f64>,
    pub first_fetch_ms: Option<f64>,
    pub first_critical_fetch_ms: Option<f64>,
    pub mean_fetch_ms: Option<f64>,
    pub slot_utilisation: Option<f64>,
    pub cpu_busy: Option<f64>,
    pub testbed_cpu_ms: Option<f64>,
    pub warm_read_ms: Option<f64>,
    pub warm_fetches_max: Option<u64>,
    /// All repetitions hydrated exactly the plan (cached prewarm only).
    pub exact: Option<bool>,
}

/// Summaries per method, in first-run order.
pub fn summarise(runs: &[RunRecord]) -> Vec<MethodSummary> {
    let mut keys: Vec<&str> = Vec::new();
    for r in runs {
        if !keys.contains(&r.key.as_str()) {
            keys.push(&r.key);
        }
    }
    keys.into_iter()
        .filter_map(|k| {
            let rs: Vec<&RunRecord> = runs.iter().filter(|r| r.key == k).collect();
            let first = rs.first()?;
            let ok: Vec<&&RunRecord> = rs.iter().filter(|r| r.error.is_none()).collect();
            let med = |f: &dyn Fn(&RunRecord) -> Option<f64>| median(ok.iter().map(|r| f(r)));
            let ttcs: Vec<f64> = ok
                .iter()
                .filter_map(|r| r.hydration.time_to_critical_ms)
                .collect();
            let exact = rs
                .iter()
                .map(|r| r.exact.as_ref().map(|e| e.exact()))
                .collect::<Option<Vec<bool>>>()
                .map(|v| v.iter().all(|&b| b));
            Some(MethodSummary {
                key: k.to_string(),
                label: first.label.clone(),
                method: first.method,
                reps: rs.len(),
                errors: rs.len() - ok.len(),
                // A run that never hydrated the whole set makes the median
                // meaningless: report none.
                ttc_ms: if ttcs.len() == ok.len() && !ok.is_empty() {
                    med(&|r| r.hydration.time_to_critical_ms)
                } else {
                    None
                },
                ttc_min_ms: ttcs.iter().copied().reduce(f64::min),
                ttc_max_ms: ttcs.iter().copied().reduce(f64::max),
                ratio: med(&|r| r.ratio),
                wall_ms: med(&|r| Some(r.wall_ms)),
                chunks_hydrated: med(&|r| Some(r.hydration.chunks_hydrated as f64)),
                outside_critical: med(&|r| Some(r.hydration.outside_critical as f64)),
                fetched_mib: med(&|r| Some(r.hydration.fetched_bytes as f64 / 1048576.0)),
                served_mib: med(&|r| Some(r.hydration.bytes_served as f64 / 1048576.0)),
                reads: med(&|r| Some(r.hydration.reads as f64)),
                first_fetch_ms: med(&|r| r.hydration.first_fetch_ms),
                first_critical_fetch_ms: med(&|r| r.hydration.first_critical_fetch_ms),
                mean_fetch_ms: med(&|r| r.hydration.mean_fetch_ms),
                slot_utilisation: med(&|r| r.hydration.slot_utilisation),
                cpu_busy: med(&|r| r.cpu_busy),
                testbed_cpu_ms: med(&|r| r.testbed_cpu_ms),
                warm_read_ms: med(&|r| r.warm.as_ref().map(|w| w.read_ms)),
                warm_fetches_max: ok
                    .iter()
                    .filter_map(|r| r.warm.as_ref())
                    .map(|w| w.fetches)
                    .max(),
                exact,
            })
        })
        .collect()
}

/// Median sweep MiB/s per tool.
pub fn sweep_medians(sweeps: &[SweepRecord]) -> Vec<(String, Option<f64>, Option<f64>, usize)> {
    let mut tools: Vec<&str> = Vec::new();
    for s in sweeps {
        if !tools.contains(&s.tool.as_str()) {
            tools.push(&s.tool);
        }
    }
    tools
        .into_iter()
        .map(|t| {
            let ok: Vec<&SweepRecord> = sweeps
                .iter()
                .filter(|s| s.tool == t && s.error.is_none())
                .collect();
            (
                t.to_string(),
                median(ok.iter().map(|s| Some(s.mib_per_s))),
                median(ok.iter().map(|s| Some(s.wall_ms))),
                ok.len(),
            )
        })
        .collect()
}

/// Evaluate the targets on the headline scenario (others are reported in
/// the details).
pub fn check_targets(scenarios: &[ScenarioResult]) -> Vec<TargetCheck> {
    let mut out = Vec::new();
    let Some(head) = scenarios.iter().find(|s| s.scenario.headline) else {
        return out;
    };
    let sums = summarise(&head.runs);
    let variants = [
        ("cold", Method::prewarm_q32(false, false)),
        ("metadata cached", Method::prewarm_q32(false, true)),
        (
            "planned ahead: run --manifest",
            Method::PrewarmManifest { touch: false },
        ),
    ];
    for (variant, method) in variants {
        let Some(pw) = sums.iter().find(|s| s.method == method) else {
            continue;
        };
        let others_ratio: Vec<String> = scenarios
            .iter()
            .filter(|s| !s.scenario.headline)
            .filter_map(|s| {
                summarise(&s.runs)
                    .into_iter()
                    .find(|m| m.key == pw.key)
                    .and_then(|m| m.ratio.map(|r| format!("{}: {r:.2}×", s.scenario.id)))
            })
            .collect();
        out.push(TargetCheck {
            target: format!(
                "prewarm default [{variant}]: critical set within {LIMIT_TARGET}× of the physical limit"
            ),
            met: pw.ratio.map(|r| r <= LIMIT_TARGET),
            detail: match (pw.ttc_ms, pw.ratio) {
                (Some(t), Some(r)) => format!(
                    "{t:.1} ms vs limit {:.1} ms = {r:.2}× ({:.1} ms over the {LIMIT_TARGET}× budget; first critical fetch at {:.1} ms, mean fetch {:.2} ms vs {} ms configured, slot utilisation {:.0}%){}",
                    head.limit_ms,
                    t - head.limit_ms * LIMIT_TARGET,
                    pw.first_critical_fetch_ms.unwrap_or(f64::NAN),
                    pw.mean_fetch_ms.unwrap_or(f64::NAN),
                    head.scenario.latency_ms,
                    pw.slot_utilisation.unwrap_or(f64::NAN) * 100.0,
                    if others_ratio.is_empty() {
                        String::new()
                    } else {
                        format!("; other scenarios {}", others_ratio.join(", "))
                    }
                ),
                _ => format!("not measured ({} of {} runs failed)", pw.errors, pw.reps),
            },
        });
        let rivals: Vec<&MethodSummary> = sums.iter().filter(|s| !s.method.is_prewarm()).collect();
        let best = rivals
            .iter()
            .filter_map(|s| s.ttc_ms.map(|t| (t, s)))
            .min_by(|a, b| a.0.total_cmp(&b.0));
        let slower: Vec<String> = rivals
            .iter()
            .filter(|s| match (pw.ttc_ms, s.ttc_ms) {
                (Some(p), Some(o)) => o <= p,
                _ => false,
            })
            .map(|s| format!("{} {:.1} ms", s.label, s.ttc_ms.unwrap_or(f64::NAN)))
            .collect();
        out.push(TargetCheck {
            target: format!(
                "prewarm default [{variant}]: faster to the critical set than every other method"
            ),
            met: pw.ttc_ms.map(|_| slower.is_empty()),
            detail: match (pw.ttc_ms, best) {
                (Some(p), Some((t, s))) if slower.is_empty() => format!(
                    "{p:.1} ms; fastest other: {} {t:.1} ms ({:.2}× prewarm)",
                    s.label,
                    t / p
                ),
                (Some(p), _) => format!("{p:.1} ms; as fast or faster: {}", slower.join("; ")),
                _ => "not measured".into(),
            },
        });
    }
    for s in scenarios.iter().filter(|s| s.scenario.headline) {
        let med = sweep_medians(&s.sweeps);
        let get = |t: &str| med.iter().find(|m| m.0 == t).and_then(|m| m.1);
        let others: Vec<String> = scenarios
            .iter()
            .filter(|o| !o.scenario.headline)
            .map(|o| {
                let m = sweep_medians(&o.sweeps);
                let g = |t: &str| m.iter().find(|x| x.0 == t).and_then(|x| x.1);
                format!(
                    "{}: prewarm {:.0} vs fio {:.0} MiB/s",
                    o.scenario.id,
                    g("prewarm --device").unwrap_or(f64::NAN),
                    g("fio").unwrap_or(f64::NAN)
                )
            })
            .collect();
        let (p, f) = (get("prewarm --device"), get("fio"));
        let own = |t: &str| {
            median(
                s.sweeps
                    .iter()
                    .filter(|x| x.tool == t && x.error.is_none())
                    .map(|x| x.tool_mib_per_s),
            )
        };
        let (po, fo) = (own("prewarm --device"), own("fio"));
        out.push(TargetCheck {
            target: "full-volume sweep (prewarm --device) at least as fast as fio".into(),
            met: p.zip(f).map(|(p, f)| p >= f),
            detail: format!(
                "wall clock: prewarm {:.0} MiB/s vs fio {:.0} MiB/s ({:+.0}%); the tools' own figures (fio's excludes its start-up): prewarm {:.0} vs fio {:.0} MiB/s ({:+.0}%){}",
                p.unwrap_or(f64::NAN),
                f.unwrap_or(f64::NAN),
                p.zip(f).map_or(f64::NAN, |(p, f)| (p / f - 1.0) * 100.0),
                po.unwrap_or(f64::NAN),
                fo.unwrap_or(f64::NAN),
                po.zip(fo).map_or(f64::NAN, |(p, f)| (p / f - 1.0) * 100.0),
                if others.is_empty() {
                    String::new()
                } else {
                    format!("; {}", others.join("; "))
                }
            ),
        });
    }
    out
}

/// Everything a run produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    pub meta: Meta,
    pub scenarios: Vec<ScenarioResult>,
    pub targets: Vec<TargetCheck>,
    pub criterion: Vec<CriterionRow>,
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".into(), |x| format!("{x:.digits$}"))
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "**met**",
        Some(false) => "**missed**",
        None => "not evaluated",
    }
}

fn ttc_cell(s: &MethodSummary) -> String {
    match (s.ttc_ms, s.ttc_min_ms, s.ttc_max_ms) {
        (Some(t), Some(lo), Some(hi)) if s.reps > 1 => format!("{t:.1} ({lo:.0}–{hi:.0})"),
        (Some(t), _, _) => format!("{t:.1}"),
        (None, _, _) if s.errors > 0 => format!("failed ({} runs)", s.errors),
        (None, _, _) => "not reached".into(),
    }
}

/// The markdown method table of one scenario.
fn method_table(out: &mut String, sc: &ScenarioResult) {
    let sums = summarise(&sc.runs);
    let _ = writeln!(
        out,
        "| method | time to critical set, ms | × limit | chunks hydrated (outside set) | fetched MiB | wall, ms | warm re-read, ms (fetches) |\n|---|---:|---:|---:|---:|---:|---:|"
    );
    for s in &sums {
        let _ = writeln!(
            out,
            "| {}{} | {} | {} | {} ({}) | {} | {} | {} ({}) |",
            s.label,
            if s.errors > 0 {
                format!(" ⚠ {} failed", s.errors)
            } else {
                String::new()
            },
            ttc_cell(s),
            opt(s.ratio, 2),
            opt(s.chunks_hydrated, 0),
            opt(s.outside_critical, 0),
            opt(s.fetched_mib, 1),
            opt(s.wall_ms, 1),
            opt(s.warm_read_ms, 1),
            s.warm_fetches_max.map_or("–".into(), |f| f.to_string()),
        );
    }
}

/// The diagnostics table: where the time goes.
fn diag_table(out: &mut String, sc: &ScenarioResult) {
    let sums = summarise(&sc.runs);
    let rounds = sc
        .critical_chunks
        .div_ceil(sc.scenario.concurrency.max(1) as u64);
    let _ = writeln!(
        out,
        "| method | first fetch / first critical fetch at, ms | mean fetch, ms | rounds × mean fetch, ms | slot utilisation | testbed reads | MiB served to the reader | CPU busy (all CPUs) | testbed CPU, ms | exact plan |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|:---:|"
    );
    for s in &sums {
        let _ = writeln!(
            out,
            "| {} | {} / {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            s.label,
            opt(s.first_fetch_ms, 1),
            opt(s.first_critical_fetch_ms, 1),
            opt(s.mean_fetch_ms, 2),
            opt(s.mean_fetch_ms.map(|m| m * rounds as f64), 1),
            s.slot_utilisation
                .map_or("–".into(), |u| format!("{:.0}%", u * 100.0)),
            opt(s.reads, 0),
            opt(s.served_mib, 1),
            s.cpu_busy
                .map_or("–".into(), |u| format!("{:.0}%", u * 100.0)),
            opt(s.testbed_cpu_ms, 0),
            match s.exact {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "",
            }
        );
    }
}

/// Where prewarm's time to the critical set goes, in numbers, for one
/// scenario: start-up before the first critical fetch, then the fetch phase
/// against the rounds the limit assumes.
pub fn time_breakdown(sc: &ScenarioResult) -> String {
    let sums = summarise(&sc.runs);
    let rounds = sc
        .critical_chunks
        .div_ceil(sc.scenario.concurrency.max(1) as u64);
    let lat = sc.scenario.latency_ms;
    let mut out = String::new();
    let shown = [
        Method::prewarm_q32(false, false),
        Method::prewarm_q32(false, true),
        Method::prewarm_q32(true, true),
        Method::PrewarmManifest { touch: false },
        Method::PrewarmManifest { touch: true },
    ];
    for m in shown {
        let Some(s) = sums.iter().find(|s| s.method == m) else {
            continue;
        };
        let (Some(t), Some(f)) = (s.ttc_ms, s.first_critical_fetch_ms) else {
            continue;
        };
        let phase = t - f;
        let _ = writeln!(
            out,
            "- **{}**: {t:.1} ms ({:.2}× the limit). Before its first critical fetch: {f:.1} ms{}. Fetch phase: {phase:.1} ms for {rounds} rounds = {:.2} ms per round against {lat} ms latency ({:.2}× the limit's {:.1} ms); a fetch held its slot {} ms on average and the slots were busy {} of the time. It had {} MiB served to it; CPUs {} busy, the testbed used {} ms of CPU.",
            s.label,
            t / sc.limit_ms,
            match (m, sc.prepare_warm_ms, sc.prepare_cold_ms) {
                (Method::Prewarm { cached: true, .. }, Some(p), _) => format!(
                    " (prewarm's planning with cached metadata takes {p:.1} ms by itself)"
                ),
                (Method::Prewarm { cached: false, .. }, _, Some(p)) => format!(
                    " (prewarm's planning with cold metadata takes {p:.1} ms by itself; its metadata fetches are {} chunks outside the set)",
                    s.outside_critical.map_or("?".into(), |o| format!("{o:.0}"))
                ),
                (Method::PrewarmManifest { .. }, _, _) => {
                    " (no mapping: the manifest is read and the device found by UUID)".into()
                }
                _ => String::new(),
            },
            phase / rounds as f64,
            phase / sc.limit_ms,
            sc.limit_ms,
            opt(s.mean_fetch_ms, 2),
            s.slot_utilisation
                .map_or("–".into(), |u| format!("{:.0}%", u * 100.0)),
            opt(s.served_mib, 1),
            s.cpu_busy.map_or("–".into(), |u| format!("{:.0}%", u * 100.0)),
            opt(s.testbed_cpu_ms, 0),
        );
    }
    out
}

/// RESULTS.md.
pub fn markdown(r: &Results) -> String {
    let m = &r.meta;
    let mut out = String::new();
    let _ = writeln!(out, "# prewarm end-to-end results\n");
    let _ = writeln!(
        out,
        "Generated by `prewarm-e2e` on {} in {:.0} s; rerun to refresh (see README.md, \"End-to-end comparison\"). Command: `{}`.\n",
        m.date, m.duration_s, m.command
    );
    let _ = writeln!(out, "## Setup\n");
    let _ = writeln!(
        out,
        "- kernel `{}`, {} CPUs ({}), {} MiB RAM",
        m.kernel, m.cpus, m.cpu_model, m.mem_mib
    );
    let _ = writeln!(
        out,
        "- {}; {}; {}; {}",
        m.prewarm_version, m.fio_version, m.vmtouch_version, m.coreutils_version
    );
    let _ = writeln!(
        out,
        "- load average (1/5/15 min) at start `{}`, at end `{}`",
        m.loadavg_start, m.loadavg_end
    );
    let _ = writeln!(out, "- fixture: {}", m.fixture);
    let _ = writeln!(
        out,
        "- testbed: {} KiB chunks, {} ms fetch latency, no jitter, throughput cap {}",
        m.chunk_size / 1024,
        m.latency_ms,
        m.max_mibps.map_or("none".into(), |c| format!("{c} MiB/s"))
    );
    if let Some(s) = r.scenarios.first() {
        let _ = writeln!(
            out,
            "- critical set: {} files, {:.1} MiB of file data, {} chunks ({}), {} ranges, {:.1} MiB planned (whole chunks)",
            s.critical_files,
            s.critical_file_bytes as f64 / 1048576.0,
            s.critical_chunks,
            s.critical_by_priority
                .iter()
                .map(|(p, c)| format!("priority {p}: {c}"))
                .collect::<Vec<_>>()
                .join(", "),
            s.planned_ranges,
            s.planned_bytes as f64 / 1048576.0
        );
    }
    let _ = writeln!(out);

    let _ = writeln!(out, "## Targets\n");
    let _ = writeln!(out, "| target | result | measured |\n|---|---|---|");
    for t in &r.targets {
        let _ = writeln!(out, "| {} | {} | {} |", t.target, verdict(t.met), t.detail);
    }
    if r.targets.iter().any(|t| t.met == Some(false)) {
        let _ = writeln!(
            out,
            "\nWhere a target is missed, the cause found and its profile are in [PROFILE.md](PROFILE.md): \
at high concurrency full reads are bound by the testbed's FUSE data path on the host's CPUs (touch mode, the same \
fetches without the bytes, shows the engine's own overhead); a cold run first walks a chain of cold metadata \
reads, which planning at image build time (`prewarm run --manifest`) removes."
        );
    }
    let _ = writeln!(out);

    for sc in &r.scenarios {
        let s = &sc.scenario;
        let _ = writeln!(
            out,
            "## {}{}\n",
            if s.headline { "Headline: " } else { "" },
            s.title
        );
        let _ = writeln!(
            out,
            "Physical limit = ceil({} chunks / {}) × {} ms{} = **{:.1} ms**. Medians of {} run(s){}; `{}` on `{}`. Other processes on the host used {:.1} CPU-s during this scenario's {:.0} s (load average `{}` at its start, `{}` at its end; our own blocked readers count in it).\n",
            sc.critical_chunks,
            s.concurrency,
            s.latency_ms,
            s.max_mibps
                .map_or(String::new(), |c| format!(" + transfer at {c} MiB/s")),
            sc.limit_ms,
            s.repeat,
            if s.repeat > 1 {
                ", time to critical set shown as median (min–max)"
            } else {
                ""
            },
            s.id,
            sc.loop_device,
            sc.other_cpu_s,
            sc.wall_s,
            sc.loadavg_start,
            sc.loadavg_end
        );
        if let (Some(c), Some(w)) = (sc.prepare_cold_ms, sc.prepare_warm_ms) {
            let _ = writeln!(
                out,
                "prewarm's planning time (`--dry-run` `elapsed_ms`: collect, FIEMAP, plan): {c:.1} ms with cold metadata, {w:.1} ms with the metadata cached.\n"
            );
        }
        method_table(&mut out, sc);
        let _ = writeln!(out, "\nDiagnostics (medians):\n");
        diag_table(&mut out, sc);
        let breakdown = time_breakdown(sc);
        if !breakdown.is_empty() {
            let _ = writeln!(out, "\nWhere prewarm's time goes (medians):\n\n{breakdown}");
        } else {
            let _ = writeln!(out);
        }
    }

    let _ = writeln!(out, "## Full-volume sweep\n");
    let _ = writeln!(
        out,
        "`prewarm --device LOOP` vs `fio --filename=LOOP --rw=read --bs=1M --iodepth=32 --ioengine=libaio --direct=1 --name=volume-initialize`, same device, same run, from an all-cold volume.\n"
    );
    let _ = writeln!(
        out,
        "| scenario | tool | MiB/s (device size / wall) | wall, ms | tool's own MiB/s | fetches | testbed reads | peak fetches in flight | CPU busy |\n|---|---|---:|---:|---:|---:|---:|---:|---:|"
    );
    for sc in &r.scenarios {
        for (tool, mib, wall, n) in sweep_medians(&sc.sweeps) {
            let recs: Vec<&SweepRecord> = sc.sweeps.iter().filter(|s| s.tool == tool).collect();
            let _ = writeln!(
                out,
                "| {} | {tool}{} | {} | {} | {} | {} | {} | {} | {} |",
                sc.scenario.id,
                if n < recs.len() {
                    format!(" ⚠ {} failed", recs.len() - n)
                } else {
                    String::new()
                },
                opt(mib, 1),
                opt(wall, 1),
                opt(median(recs.iter().map(|s| s.tool_mib_per_s)), 1),
                opt(median(recs.iter().map(|s| Some(s.fetches as f64))), 0),
                opt(median(recs.iter().map(|s| Some(s.reads as f64))), 0),
                opt(
                    median(recs.iter().map(|s| Some(s.peak_concurrent_fetches as f64))),
                    0
                ),
                median(recs.iter().map(|s| s.cpu_busy))
                    .map_or("–".into(), |u| format!("{:.0}%", u * 100.0)),
            );
        }
    }
    let _ = writeln!(out);

    let _ = writeln!(
        out,
        "## Micro-benchmarks (criterion, `cargo bench -p prewarm-benches`)\n"
    );
    if r.criterion.is_empty() {
        let _ = writeln!(
            out,
            "No criterion results found: run `cargo bench -p prewarm-benches` before `prewarm-e2e`.\n"
        );
    } else {
        let _ = writeln!(out, "| benchmark | median | result |\n|---|---:|---|");
        for c in &r.criterion {
            let _ = writeln!(
                out,
                "| {} | {:.3} ms | {} |",
                c.id,
                c.median_ns / 1e6,
                c.headline()
            );
        }
        let _ = writeln!(out);
    }

    let _ = writeln!(out, "## Definitions\n");
    out.push_str(DEFINITIONS);
    out
}

const DEFINITIONS: &str = "\
- **All-cold start** for every run: `sync; echo 3 > /proc/sys/vm/drop_caches`, *then* a testbed reset (every chunk cold, counters zeroed), then the method.
- **Time to critical set**: from the method's start (just before it is spawned, or the in-process reader starts) to the hydration (testbed `end_us`) of the last chunk of the critical set; the testbed's timestamps are relative to its reset, whose local instant is the midpoint of the reset request's round trip (< 1 ms).
- **Critical set**: the chunks of prewarm's plan for the critical list (`prewarm --dry-run --json --paths LIST`: file extents → `ReadPlan::build` → chunk indexes; checked against the dry run's own chunk count). The loop device has no partition offset and testbed chunks equal plan chunks.
- **Physical limit**: `ceil(critical chunks / concurrency) × latency` (+ transfer time under a throughput cap): no reader can hydrate the set sooner.
- **Chunks hydrated / outside set / fetched MiB**: testbed counters after the method (outside = hydrated chunks not in the critical set: filesystem metadata, or everything for fio).
- **Testbed backing image**: a copy of the fixture on a private tmpfs, so the cache drops do not evict it and a hydrated chunk is served from memory (on a disk filesystem the testbed would read every hydrated byte back from the host's disk after each drop).
- **Warm re-read**: after the method, caches dropped again (testbed *not* reset), the application reads every critical file in list order; the fetches it causes are chunks the method left cold (for the *metadata cached* variant, the inode tables and directories its dry run read before the reset).
- **prewarm [cold]**: `prewarm --paths LIST` exactly as a user would run it, its FIEMAP mapping reading cold filesystem metadata through the testbed. **prewarm [metadata cached]**: a `prewarm --dry-run` first (after the cache drop), then the testbed reset, then the run: the plan is in effect pre-made; this is also the exactness check (hydrated chunks == plan chunks). **prewarm run --manifest [planned ahead]**: `prewarm plan --paths LIST -o M` after the cache drop (it maps the files as an image build would), then the reset, then `prewarm run --manifest M --no-verify`: no mapping during the run; exactness-checked too.
- **no prewarm**: the application itself reading the critical files cold, sequentially, in list order (1 MiB `read`s). **cat**: one `cat` of all files. **xargs -P 32 -n N cat**: `xargs -a PATHS -d '\\n' -P 32 -n N cat` (plain `xargs -P 32 cat` passes every path to a single `cat`, i.e. serial). **vmtouch -t**: `vmtouch -t -q FILES`. **physical-order reader**: FIEMAP every file (cold), sort by the physical offset of its first extent, read each file sequentially (in the style of wish / warmer). **fio**: AWS's `volume-initialize` command on the whole device, plus `--readonly --output-format=json` (no effect on the I/O).
- **Diagnostics**: *first fetch / first critical fetch at* = first testbed fetch (of any chunk / of a critical chunk) after the method started: start-up, and for mapping readers the FIEMAP and metadata time; *mean fetch* = mean slot-holding time of a fetch (configured latency + timer and scheduling overshoot on this host); *rounds × mean fetch* = the limit with the measured fetch time; *slot utilisation* = fetch-slot time used between method start and critical-set completion / (concurrency × that time); *testbed reads* = read requests that reached the testbed (a cold prewarm's extra reads over the cached variant's are its metadata lookups, each a synchronous round trip through the loop device and FUSE); *CPU busy* = /proc/stat over the method; *testbed CPU* = the FUSE server's CPU time over the method (it shares the host's CPUs with the reader).
";

/// One CSV row per run (kind `critical`) and per sweep (kind `sweep`).
pub fn csv(r: &Results) -> String {
    let mut out = String::from(
        "kind,scenario,loop,concurrency,method,rep,time_to_critical_ms,limit_ms,ratio,wall_ms,chunks_hydrated,outside_critical,fetched_mib,first_fetch_ms,mean_fetch_ms,slot_utilisation,cpu_busy,warm_read_ms,warm_fetches,mib_per_s,error\n",
    );
    let f = |v: Option<f64>| v.map_or(String::new(), |x| format!("{x:.3}"));
    for sc in &r.scenarios {
        let s = &sc.scenario;
        let lp = if s.direct_io { "dio" } else { "buffered" };
        for run in &sc.runs {
            let h = &run.hydration;
            let _ = writeln!(
                out,
                "critical,{},{lp},{},{},{},{},{:.3},{},{:.3},{},{},{:.3},{},{},{},{},{},{},,{}",
                s.id,
                s.concurrency,
                run.key,
                run.rep,
                f(h.time_to_critical_ms),
                run.limit_ms,
                f(run.ratio),
                run.wall_ms,
                h.chunks_hydrated,
                h.outside_critical,
                h.fetched_bytes as f64 / 1048576.0,
                f(h.first_fetch_ms),
                f(h.mean_fetch_ms),
                f(h.slot_utilisation),
                f(run.cpu_busy),
                f(run.warm.as_ref().map(|w| w.read_ms)),
                run.warm
                    .as_ref()
                    .map_or(String::new(), |w| w.fetches.to_string()),
                csv_text(run.error.as_deref().unwrap_or(""))
            );
        }
        for sw in &sc.sweeps {
            let _ = writeln!(
                out,
                "sweep,{},{lp},{},{},{},,,,{:.3},{},,{:.3},,,,{},,,{:.3},{}",
                s.id,
                s.concurrency,
                csv_text(&sw.tool),
                sw.rep,
                sw.wall_ms,
                sw.hydrated_chunks,
                sw.hydrated_chunks as f64 * s.chunk_size as f64 / 1048576.0,
                f(sw.cpu_busy),
                sw.mib_per_s,
                csv_text(sw.error.as_deref().unwrap_or(""))
            );
        }
    }
    out
}

fn csv_text(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\"").replace('\n', " "))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::e2e::analysis::Hydration;
    use crate::e2e::harness::Scenario;

    fn run(method: Method, ttc: f64, rep: usize) -> RunRecord {
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
            exact: None,
        }
    }

    fn scenario(runs: Vec<RunRecord>, sweeps: Vec<(f64, &str)>) -> ScenarioResult {
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
            },
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

    #[test]
    fn targets_are_judged_on_medians() {
        let pw = Method::prewarm_q32(false, false);
        let sc = scenario(
            vec![
                run(pw, 105.0, 0),
                run(pw, 109.0, 1),
                run(Method::Cat, 300.0, 0),
                run(Method::Xargs { n: 8 }, 107.0, 0),
            ],
            vec![(900.0, "prewarm --device"), (800.0, "fio")],
        );
        let t = check_targets(std::slice::from_ref(&sc));
        assert_eq!(t.len(), 3, "{t:?}");
        assert_eq!(t[0].met, Some(true), "{}", t[0].detail);
        assert_eq!(t[1].met, Some(false), "{}", t[1].detail);
        assert!(t[1].detail.contains("xargs"));
        assert_eq!(t[2].met, Some(true));

        let res = Results {
            meta: Meta::default(),
            scenarios: vec![sc],
            targets: t,
            criterion: vec![CriterionRow {
                id: "engine/uring qd32".into(),
                median_ns: 16384.0 * 5000.0,
                mean_ns: 0.0,
                elements: Some(16384),
            }],
        };
        let md = markdown(&res);
        assert!(md.contains("5.00 µs per I/O"), "{md}");
        assert!(md.contains("107.0 (105–109)"), "{md}");
        let c = csv(&res);
        assert_eq!(c.lines().count(), 1 + 4 + 2);
        let cols = c.lines().next().map_or(0, |l| l.split(',').count());
        assert!(c.lines().all(|l| l.split(',').count() == cols), "{c}");
    }
}
