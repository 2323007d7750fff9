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
use crate::fixture::Shape;

/// Ratio to the physical limit prewarm must stay within (default settings),
/// unless a scenario's [`LimitTargets`] say otherwise.
pub const LIMIT_TARGET: f64 = 1.1;

/// What a scenario's prewarm variants are judged against: the ratio to the
/// limit each must stay within, and which limit a full read gets. A
/// property of the scenario ([`super::records::Scenario::targets`]), chosen
/// by [`LimitTargets::for_scenario`] and shown with the scenario's table.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LimitTargets {
    /// `prewarm --paths` as a user runs it, mapping cold metadata.
    pub cold: f64,
    /// `prewarm --paths` after a dry run cached the metadata.
    pub cached: f64,
    /// `prewarm run --manifest`, planned ahead.
    pub manifest: f64,
    /// A full read's limit is the larger of the latency bound and its
    /// transfer bound measured in the same run ([`limit_for`]); otherwise
    /// the latency bound.
    pub transfer_bound: bool,
}

impl Default for LimitTargets {
    /// Every variant within [`LIMIT_TARGET`] of the larger bound (what
    /// results.json files written before per-scenario targets were judged by).
    fn default() -> Self {
        Self {
            cold: LIMIT_TARGET,
            cached: LIMIT_TARGET,
            manifest: LIMIT_TARGET,
            transfer_bound: true,
        }
    }
}

impl LimitTargets {
    /// The targets of a scenario on the fixture of `shape` at `concurrency`
    /// fetches in flight.
    ///
    /// The node volume: the default. The big tree (issue 12): at 8 fetches
    /// in flight or fewer, the latency bound, `run --manifest` within 1.1×
    /// and `prewarm --paths` within 1.2× (cold, and with the metadata
    /// cached, which maps its 10,000 files at run time all the same); above
    /// 8, where the testbed's own transfer capacity bounds full reads on
    /// two CPUs (PROFILE.md), every variant within 1.1× of the larger of
    /// the latency and the transfer bound.
    pub fn for_scenario(shape: Shape, concurrency: usize) -> Self {
        match shape {
            Shape::Node => Self::default(),
            Shape::BigTree if concurrency <= 8 => Self {
                cold: 1.2,
                cached: 1.2,
                manifest: 1.1,
                transfer_bound: false,
            },
            Shape::BigTree => Self::default(),
        }
    }

    /// The ratio `method` must stay within, if it is a judged variant.
    pub fn ratio_for(&self, method: Method) -> Option<f64> {
        match method {
            m if m == Method::prewarm_q32(false, false) => Some(self.cold),
            m if m == Method::prewarm_q32(false, true) => Some(self.cached),
            Method::PrewarmManifest { touch: false } => Some(self.manifest),
            _ => None,
        }
    }

    /// One line for the rendered scenario: the targets and the limit.
    pub fn describe(&self) -> String {
        format!(
            "prewarm default [cold] within {}×, [metadata cached] within {}×, `run --manifest` [planned ahead] within {}× of {}; touch mode is shown against the latency bound",
            self.cold,
            self.cached,
            self.manifest,
            if self.transfer_bound {
                "the limit: the latency bound, or for a full read the larger of it and the transfer bound (`run --manifest` re-run on the hydrated volume in the same repetition)"
            } else {
                "the latency bound"
            }
        )
    }
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

/// The transfer bound of repetition `rep` of a scenario: the warm re-read
/// of the plan's chunks, i.e. `prewarm run --manifest` (full mode) run
/// again straight after its measured run, caches dropped and every chunk
/// hydrated ([`RunRecord::warm_self_ms`]). Every full variant reads those
/// same chunks (the exactness check holds them to it), so this is what
/// moving their bytes costs on this host with no fetch to wait for and no
/// mapping (a planning variant's own re-run would also time its mapping,
/// with the metadata no longer cached). `None` without that run (results
/// of `--only`, or older ones).
pub fn transfer_bound_ms(sc: &ScenarioResult, rep: usize) -> Option<f64> {
    sc.runs
        .iter()
        .find(|r| {
            r.rep == rep
                && r.method == Method::PrewarmManifest { touch: false }
                && r.error.is_none()
        })
        .and_then(|r| r.warm_self_ms)
}

/// The limit a run is judged against: the latency bound (fetch rounds, or
/// the throughput cap's transfer time), or, where the scenario's targets
/// allow it ([`LimitTargets::transfer_bound`]), for a full read the larger
/// of that and the transfer bound measured in the same repetition
/// ([`transfer_bound_ms`]; at high concurrency the testbed's own transfer
/// capacity on two CPUs bounds a full read, see PROFILE.md). Touch reads
/// move one block per chunk: the latency bound. Without a transfer bound
/// measured, the latency bound.
pub fn limit_for(sc: &ScenarioResult, r: &RunRecord) -> f64 {
    if r.method.is_touch() || !sc.scenario.targets.transfer_bound {
        return sc.limit_ms;
    }
    transfer_bound_ms(sc, r.rep).map_or(sc.limit_ms, |t| sc.limit_ms.max(t))
}

/// Runs out of `n` that must meet a target besides the median: 4 of 5.
pub fn runs_needed(n: usize) -> usize {
    (n * 4).div_ceil(5)
}

/// Evaluate the targets on every scenario: per scenario and prewarm
/// variant (cold, metadata cached, planned ahead), the critical set within
/// the scenario's ratio ([`LimitTargets`]) of the limit ([`limit_for`]) and
/// ahead of every other method. A target is met only if the median and at
/// least 4 of 5 runs ([`runs_needed`]) meet it.
pub fn check_targets(scenarios: &[ScenarioResult]) -> Vec<TargetCheck> {
    let mut out = Vec::new();
    let variants = [
        ("cold", Method::prewarm_q32(false, false)),
        ("metadata cached", Method::prewarm_q32(false, true)),
        (
            "planned ahead: run --manifest",
            Method::PrewarmManifest { touch: false },
        ),
    ];
    for sc in scenarios {
        let sums = summarise(&sc.runs);
        for (variant, method) in variants {
            let Some(pw) = sums.iter().find(|s| s.method == method) else {
                continue;
            };
            let runs: Vec<&RunRecord> = sc.runs.iter().filter(|r| r.key == pw.key).collect();
            let ratio = sc
                .scenario
                .targets
                .ratio_for(method)
                .unwrap_or(LIMIT_TARGET);
            out.push(limit_check(sc, variant, ratio, pw, &runs));
            out.push(rivals_check(sc, variant, pw, &sums, &runs));
        }
    }
    out.extend(check_sweeps(scenarios));
    out
}

/// The critical set within `target` × the limit.
fn limit_check(
    sc: &ScenarioResult,
    variant: &str,
    target: f64,
    pw: &MethodSummary,
    runs: &[&RunRecord],
) -> TargetCheck {
    let ratios: Vec<Option<f64>> = runs
        .iter()
        .map(|r| match &r.error {
            Some(_) => None,
            None => r
                .hydration
                .time_to_critical_ms
                .map(|t| t / limit_for(sc, r)),
        })
        .collect();
    let limits: Vec<f64> = runs.iter().map(|r| limit_for(sc, r)).collect();
    let limit = median(limits.iter().map(|&l| Some(l))).unwrap_or(sc.limit_ms);
    let med = if ratios.iter().all(Option::is_some) {
        median(ratios.iter().copied())
    } else {
        None
    };
    let within = ratios.iter().flatten().filter(|&&r| r <= target).count();
    let need = runs_needed(runs.len());
    let transfer_bound = limit > sc.limit_ms;
    TargetCheck {
        target: format!(
            "[{}] prewarm default [{variant}]: critical set within {target}× of the limit",
            sc.scenario.id
        ),
        met: med.map(|m| m <= target && within >= need),
        detail: match (pw.ttc_ms, med) {
            (Some(t), Some(m)) => format!(
                "median {t:.1} ms vs limit {limit:.1} ms ({}) = {m:.2}×; {within} of {} runs within (need {need}); per run: {}",
                if transfer_bound {
                    format!(
                        "the transfer bound: `run --manifest` re-run on the hydrated volume, above the {:.1} ms latency bound",
                        sc.limit_ms
                    )
                } else {
                    "the latency bound".to_string()
                },
                runs.len(),
                ratios
                    .iter()
                    .map(|r| r.map_or("failed".into(), |r| format!("{r:.2}×")))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            _ => format!("not measured ({} of {} runs failed or missed chunks)", pw.errors, pw.reps),
        },
    }
}

/// The critical set sooner than with every other method.
fn rivals_check(
    sc: &ScenarioResult,
    variant: &str,
    pw: &MethodSummary,
    sums: &[MethodSummary],
    runs: &[&RunRecord],
) -> TargetCheck {
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
    let ahead = runs
        .iter()
        .filter(|r| r.error.is_none())
        .filter_map(|r| r.hydration.time_to_critical_ms)
        .filter(|&t| best.is_none_or(|(b, _)| t < b))
        .count();
    let need = runs_needed(runs.len());
    TargetCheck {
        target: format!(
            "[{}] prewarm default [{variant}]: faster to the critical set than every other method",
            sc.scenario.id
        ),
        met: pw.ttc_ms.map(|_| slower.is_empty() && ahead >= need),
        detail: match (pw.ttc_ms, best) {
            (Some(p), Some((t, s))) if slower.is_empty() => format!(
                "median {p:.1} ms; fastest other: {} {t:.1} ms ({:.2}× prewarm); {ahead} of {} runs ahead of it (need {need})",
                s.label,
                t / p,
                runs.len()
            ),
            (Some(p), _) => format!("median {p:.1} ms; as fast or faster: {}", slower.join("; ")),
            _ => "not measured".into(),
        },
    }
}

/// The full-volume sweep against fio in every scenario, judged twice: on
/// the wall clock (each tool's whole run, start-up included, timed by the
/// harness) and on the tools' own throughput figures (fio's excludes its
/// start-up; prewarm's is its report's `mib_per_s`).
pub fn check_sweeps(scenarios: &[ScenarioResult]) -> Vec<TargetCheck> {
    let mut out = Vec::new();
    for sc in scenarios {
        let wall = sweep_medians(&sc.sweeps);
        let wall = |t: &str| wall.iter().find(|m| m.0 == t).and_then(|m| m.1);
        let own = |t: &str| {
            median(
                sc.sweeps
                    .iter()
                    .filter(|x| x.tool == t && x.error.is_none())
                    .map(|x| x.tool_mib_per_s),
            )
        };
        let judged = [
            ("wall clock", wall("prewarm --device"), wall("fio")),
            (
                "the tools' own figures",
                own("prewarm --device"),
                own("fio"),
            ),
        ];
        for (basis, p, f) in judged {
            if p.is_none() && f.is_none() {
                continue;
            }
            out.push(TargetCheck {
                target: format!(
                    "[{}] full-volume sweep (prewarm --device) at least as fast as fio, on {basis}",
                    sc.scenario.id
                ),
                met: p.zip(f).map(|(p, f)| p >= f),
                detail: format!(
                    "prewarm {:.0} MiB/s vs fio {:.0} MiB/s ({:+.0}%)",
                    p.unwrap_or(f64::NAN),
                    f.unwrap_or(f64::NAN),
                    p.zip(f).map_or(f64::NAN, |(p, f)| (p / f - 1.0) * 100.0),
                ),
            });
        }
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
    use crate::e2e::records::fixtures::{run, sample_scenario, scenario};

    #[test]
    fn targets_are_judged_on_medians_and_on_most_runs() {
        let sc = sample_scenario();
        let t = check_targets(std::slice::from_ref(&sc));
        assert_eq!(t.len(), 3, "{t:?}");
        assert_eq!(t[0].met, Some(true), "{}", t[0].detail);
        assert_eq!(t[1].met, Some(false), "{}", t[1].detail);
        assert!(t[1].detail.contains("xargs"));
        assert_eq!(t[2].met, Some(true));
        assert!(t[2].target.contains("wall clock"));

        // Five runs, median within 1.1× but only three of them: missed.
        let pw = Method::prewarm_q32(false, false);
        let runs = [100.0, 105.0, 108.0, 130.0, 140.0]
            .iter()
            .enumerate()
            .map(|(i, &t)| run(pw, t, i))
            .collect();
        let t = check_targets(&[scenario(runs, vec![])]);
        assert_eq!(t[0].met, Some(false), "{}", t[0].detail);
        assert!(
            t[0].detail.contains("3 of 5 runs within (need 4)"),
            "{}",
            t[0].detail
        );
        assert_eq!(runs_needed(5), 4);
        assert_eq!(runs_needed(2), 2);
    }

    #[test]
    fn a_full_read_is_judged_against_the_warm_transfer_when_that_is_longer() {
        let pw = Method::prewarm_q32(false, false);
        let manifest = Method::PrewarmManifest { touch: false };
        let mut runs: Vec<RunRecord> = (0..5).map(|i| run(pw, 160.0, i)).collect();
        for r in &mut runs {
            // The cold run's own re-run times its mapping too: not used.
            r.warm_self_ms = Some(400.0);
        }
        runs.extend((0..5).map(|i| {
            let mut r = run(manifest, 120.0, i);
            r.warm_self_ms = Some(150.0 + i as f64);
            r
        }));
        let sc = scenario(runs, vec![]);
        // 160 ms against the latency bound (100 ms) would be 1.6×; against
        // the 150 ms warm re-read of the same chunks it is 1.07×.
        assert_eq!(transfer_bound_ms(&sc, 0), Some(150.0));
        assert_eq!(limit_for(&sc, &sc.runs[0]), 150.0);
        // Each repetition gets its own.
        assert_eq!(limit_for(&sc, &sc.runs[3]), 153.0);
        let t = check_targets(std::slice::from_ref(&sc));
        assert_eq!(t[0].met, Some(true), "{}", t[0].detail);
        assert!(t[0].detail.contains("transfer bound"), "{}", t[0].detail);

        // Without the manifest run: the latency bound.
        let alone = scenario(sc.runs[..5].to_vec(), vec![]);
        assert_eq!(transfer_bound_ms(&alone, 0), None);
        assert_eq!(limit_for(&alone, &alone.runs[0]), 100.0);
    }

    #[test]
    fn targets_are_chosen_per_fixture_and_concurrency() {
        for c in [8, 32] {
            assert_eq!(
                LimitTargets::for_scenario(Shape::Node, c),
                LimitTargets::default()
            );
        }
        let c8 = LimitTargets::for_scenario(Shape::BigTree, 8);
        assert_eq!((c8.cold, c8.cached, c8.manifest), (1.2, 1.2, 1.1));
        assert!(!c8.transfer_bound);
        let c32 = LimitTargets::for_scenario(Shape::BigTree, 32);
        assert_eq!((c32.cold, c32.cached, c32.manifest), (1.1, 1.1, 1.1));
        assert!(c32.transfer_bound);
        assert_eq!(c8.ratio_for(Method::prewarm_q32(false, false)), Some(1.2));
        assert_eq!(
            c8.ratio_for(Method::PrewarmManifest { touch: false }),
            Some(1.1)
        );
        assert_eq!(c8.ratio_for(Method::prewarm_q32(true, true)), None);
        assert!(c8.describe().contains("within 1.2×"), "{}", c8.describe());
        assert!(
            c32.describe().contains("transfer bound"),
            "{}",
            c32.describe()
        );
    }

    /// A big-tree scenario at `concurrency`: cold and manifest full reads
    /// at 115 ms (latency bound 100 ms), a touch run at 115 ms, each with a
    /// 110 ms re-run on the hydrated volume.
    fn big_tree(concurrency: usize) -> ScenarioResult {
        let methods = [
            Method::prewarm_q32(false, false),
            Method::PrewarmManifest { touch: false },
            Method::PrewarmManifest { touch: true },
        ];
        let runs = methods
            .iter()
            .flat_map(|&m| {
                (0..5).map(move |i| {
                    let mut r = run(m, 115.0, i);
                    r.warm_self_ms = Some(110.0);
                    r
                })
            })
            .collect();
        let mut sc = scenario(runs, vec![]);
        sc.scenario.id = format!("big-tree-c{concurrency}");
        sc.scenario.concurrency = concurrency;
        sc.scenario.shape = Shape::BigTree;
        sc.scenario.targets = LimitTargets::for_scenario(Shape::BigTree, concurrency);
        sc
    }

    #[test]
    fn big_tree_targets_judge_cold_within_1_2_and_the_manifest_within_1_1_at_c8() {
        let sc = big_tree(8);
        // At 8 fetches in flight the latency bound, however long the re-run.
        assert_eq!(limit_for(&sc, &sc.runs[0]), 100.0);
        let t = check_targets(std::slice::from_ref(&sc));
        let cold = t.iter().find(|t| t.target.contains("[cold]: critical set"));
        let cold = cold.expect("cold target");
        assert!(cold.target.contains("within 1.2×"), "{}", cold.target);
        assert_eq!(cold.met, Some(true), "{}", cold.detail);
        let manifest = t
            .iter()
            .find(|t| t.target.contains("run --manifest]: critical set"))
            .expect("manifest target");
        assert!(
            manifest.target.contains("within 1.1×"),
            "{}",
            manifest.target
        );
        assert_eq!(manifest.met, Some(false), "{}", manifest.detail);
        assert!(manifest.detail.contains("the latency bound"));
    }

    #[test]
    fn big_tree_targets_take_the_transfer_bound_at_c32_but_not_for_touch() {
        let sc = big_tree(32);
        let touch = sc
            .runs
            .iter()
            .find(|r| r.method.is_touch())
            .expect("touch run");
        assert_eq!(limit_for(&sc, &sc.runs[0]), 110.0);
        assert_eq!(limit_for(&sc, touch), 100.0);
        let t = check_targets(std::slice::from_ref(&sc));
        let limits: Vec<&TargetCheck> = t
            .iter()
            .filter(|t| t.target.contains("critical set within"))
            .collect();
        assert_eq!(limits.len(), 2, "{t:?}");
        // 115 / 110 = 1.05×.
        assert!(limits.iter().all(|t| t.met == Some(true)), "{limits:?}");
        assert!(limits.iter().all(|t| t.target.contains("within 1.1×")));
    }
}
