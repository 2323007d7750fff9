//! Summarising an end-to-end run: medians per method and per sweep tool,
//! the target checks (fixed thresholds, reported as met or missed with the
//! measured gap; nothing adjusts them to the results) and the CI verdict.
//!
//! Separate from the rendering so that every verdict is computed in one
//! place from the records, and RESULTS.md, the CSV and the exit status of
//! `--ci` only present it.

use serde::{Deserialize, Serialize};

use super::analysis::{self, median};
use super::methods::Method;
use super::records::{RunRecord, ScenarioResult, SweepRecord};

/// Ratio to the physical limit prewarm must stay within (default settings).
pub const LIMIT_TARGET: f64 = 1.1;

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
/// CI verdict: every prewarm run hydrated exactly its plan (a cold run: its
/// plan, and beyond it only filesystem metadata that mapping reads), and
/// none failed. Returns the failures.
pub fn ci_failures(scenarios: &[ScenarioResult]) -> Vec<String> {
    let mut out = Vec::new();
    for sc in scenarios {
        for r in sc.runs.iter().filter(|r| r.method.is_prewarm()) {
            if let Some(e) = &r.error {
                out.push(format!("{}: {e}", r.label));
            }
            if let Some(x) = &r.exact {
                if !x.outside.is_empty() {
                    out.push(format!(
                        "{}: hydrated {} chunks outside the plan: {}",
                        r.label,
                        x.outside.len(),
                        analysis::chunk_ranges(&x.outside)
                    ));
                }
                if !x.missing.is_empty() {
                    out.push(format!(
                        "{}: missed {} chunks of the plan: {}",
                        r.label,
                        x.missing.len(),
                        analysis::chunk_ranges(&x.missing)
                    ));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::e2e::records::fixtures::sample_scenario;

    #[test]
    fn targets_are_judged_on_medians() {
        let sc = sample_scenario();
        let t = check_targets(std::slice::from_ref(&sc));
        assert_eq!(t.len(), 3, "{t:?}");
        assert_eq!(t[0].met, Some(true), "{}", t[0].detail);
        assert_eq!(t[1].met, Some(false), "{}", t[1].detail);
        assert!(t[1].detail.contains("xargs"));
        assert_eq!(t[2].met, Some(true));
    }
}
