//! The criterion micro-benchmark results `prewarm-e2e` copies into
//! RESULTS.md: reading criterion's output directory, and the headline
//! figure of each benchmark (files/s, µs per I/O, ...).
//!
//! Apart from the end-to-end records because it reads another tool's
//! output format and measures nothing itself.

use std::path::Path;

use serde::{Deserialize, Serialize};

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
