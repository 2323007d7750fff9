//! The report as Prometheus metrics, in the text format node_exporter's
//! textfile collector reads (`# HELP`, `# TYPE`, `prewarm_` names, base
//! units: bytes and seconds), so that a fleet can alert on slow or partial
//! hydration. Every metric is a gauge describing the last run; the file is
//! written atomically, so the collector never reads half of it.

use std::fmt::Write as _;
use std::path::Path;

use crate::error::Error;
use crate::report::{ClassReport, Outcome, Report};

/// `report` in the Prometheus text exposition format.
pub fn prometheus_text(report: &Report) -> String {
    let mut out = Metrics::default();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let flag = |b: bool| f64::from(u8::from(b));
    out.gauge(
        "last_run_timestamp_seconds",
        "When the last run ended (Unix time).",
        now,
    );
    out.gauge(
        "run_duration_seconds",
        "Wall time of the last run.",
        report.elapsed_ms / 1e3,
    );
    out.labelled(
        "outcome",
        "1 for how the last run ended (success, partial, nothing_readable).",
        "outcome",
        [
            (Outcome::Success, "success"),
            (Outcome::Partial, "partial"),
            (Outcome::NothingReadable, "nothing_readable"),
        ]
        .map(|(o, name)| (name.to_string(), flag(report.outcome == o))),
    );
    out.gauge(
        "stopped",
        "1 if the last run was stopped early (SIGTERM or the deadline).",
        flag(report.stopped.is_some()),
    );
    let refused = report.manifest.as_ref().map_or(0, |m| m.refused.len());
    let counts: [(&str, &str, u64); 10] = [
        ("files", "Regular files selected.", report.files),
        (
            "planned_bytes",
            "Bytes planned (whole chunks and reads through files).",
            report.planned_bytes,
        ),
        ("read_bytes", "Bytes read.", report.bytes_read),
        ("planned_chunks", "Device chunks planned.", report.chunks),
        ("planned_reads", "Reads planned.", report.ios_planned),
        (
            "completed_reads",
            "Reads completed, successfully or not.",
            report.ios_done,
        ),
        ("read_errors", "Reads that failed.", report.errors),
        (
            "reads_not_issued",
            "Reads never issued (a stop).",
            report.not_issued,
        ),
        (
            "warnings",
            "Bad inputs named in the report.",
            report.warnings.len() as u64,
        ),
        (
            "refused_filesystems",
            "Filesystems of the manifest not readable here.",
            refused as u64,
        ),
    ];
    for (name, help, value) in counts {
        out.gauge(name, help, value as f64);
    }
    let per_class = |f: fn(&ClassReport) -> Option<f64>| {
        report
            .classes
            .iter()
            .filter_map(move |c| Some((c.priority.to_string(), f(c)?)))
    };
    out.labelled(
        "class_planned_bytes",
        "Bytes planned, per priority class.",
        "priority",
        per_class(|c| Some(c.bytes as f64)),
    );
    out.labelled(
        "class_planned_chunks",
        "Device chunks planned, per priority class.",
        "priority",
        per_class(|c| Some(c.chunks as f64)),
    );
    out.labelled(
        "class_hydrated_seconds",
        "When the class and every more urgent one were read, from the start of the reads.",
        "priority",
        per_class(|c| c.hydrated_ms.map(|ms| ms / 1e3)),
    );
    if let Some(r) = &report.ready {
        out.gauge(
            "ready_seconds",
            "When readiness was signalled, from the start of the reads.",
            r.at_ms / 1e3,
        );
        let reason = serde_json::to_value(&r.reason)
            .ok()
            .and_then(|v| Some(v.get("reason")?.as_str()?.to_string()));
        out.labelled(
            "ready_reason",
            "1 for why readiness was signalled (class_done, already_hydrated, handover, timeout, finished).",
            "reason",
            ["class_done", "already_hydrated", "handover", "timeout", "finished"]
                .map(|name| (name.to_string(), flag(reason.as_deref() == Some(name)))),
        );
    }
    out.labelled(
        "metadata_readahead_chunks",
        "Chunks the metadata read-ahead made the volume fetch, per device walked (major:minor).",
        "device",
        report
            .metadata_readahead
            .iter()
            .map(|m| (m.device.clone(), m.chunks as f64)),
    );
    out.gauge(
        "max_rss_bytes",
        "Peak resident memory of the process.",
        (report.max_rss_kib * 1024) as f64,
    );
    out.gauge(
        "cpu_seconds",
        "CPU time (user and system) of the process.",
        report.cpu_ms / 1e3,
    );
    out.text
}

/// Write [`prometheus_text`] of `report` to `path`, atomically.
pub fn write_metrics(report: &Report, path: &Path) -> Result<(), Error> {
    crate::atomic_write::write_atomically(path, prometheus_text(report).as_bytes()).map_err(
        |source| Error::Write {
            path: path.to_path_buf(),
            source,
        },
    )
}

#[derive(Default)]
struct Metrics {
    text: String,
}

impl Metrics {
    fn header(&mut self, name: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP prewarm_{name} {help}");
        let _ = writeln!(self.text, "# TYPE prewarm_{name} gauge");
    }

    /// A gauge without labels.
    fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.header(name, help);
        let _ = writeln!(self.text, "prewarm_{name} {value}");
    }

    /// A gauge with one label, one sample per value of it (none: no
    /// metric at all).
    fn labelled(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        rows: impl IntoIterator<Item = (String, f64)>,
    ) {
        let mut rows = rows.into_iter().peekable();
        if rows.peek().is_none() {
            return;
        }
        self.header(name, help);
        for (key, value) in rows {
            let key = key.replace('\\', "\\\\").replace('"', "\\\"");
            let _ = writeln!(self.text, "prewarm_{name}{{{label}=\"{key}\"}} {value}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_has_help_type_and_base_units() {
        let mut r = Report::new();
        r.elapsed_ms = 1500.0;
        r.bytes_read = 4096;
        r.outcome = Outcome::Partial;
        r.classes = vec![
            ClassReport {
                priority: 10,
                chunks: 3,
                bytes: 3 << 19,
                ios: 2,
                hydrated_ms: Some(250.0),
            },
            ClassReport {
                priority: 50,
                chunks: 1,
                bytes: 1 << 19,
                ios: 1,
                hydrated_ms: None,
            },
        ];
        let text = prometheus_text(&r);
        assert!(
            text.contains("prewarm_run_duration_seconds 1.5\n"),
            "{text}"
        );
        assert!(text.contains("prewarm_read_bytes 4096\n"));
        assert!(text.contains("prewarm_outcome{outcome=\"partial\"} 1\n"));
        assert!(text.contains("prewarm_outcome{outcome=\"success\"} 0\n"));
        assert!(text.contains("prewarm_class_hydrated_seconds{priority=\"10\"} 0.25\n"));
        assert!(!text.contains("prewarm_class_hydrated_seconds{priority=\"50\"}"));
        r.max_rss_kib = 2048;
        r.ready = Some(crate::report::ReadyReport {
            reason: crate::ReadyReason::Timeout { after_ms: 30_000 },
            at_ms: 30_000.0,
        });
        r.metadata_readahead = vec![crate::report::MetadataReadaheadReport {
            device: "259:1".into(),
            node: None,
            state: crate::report::ReadaheadState::Done,
            reason: None,
            inode_table_bytes: 1 << 20,
            directory_bytes: 1 << 19,
            extent_blocks: 0,
            index_blocks: 0,
            reads: 3,
            chunks: 3,
            errors: 0,
            budget_reached: false,
            started_ms: 2.0,
            elapsed_ms: 9.0,
        }];
        let text = prometheus_text(&r);
        assert!(text.contains("prewarm_max_rss_bytes 2097152\n"), "{text}");
        assert!(text.contains("prewarm_metadata_readahead_chunks{device=\"259:1\"} 3\n"));
        assert!(text.contains("prewarm_ready_reason{reason=\"timeout\"} 1\n"));
        assert!(text.contains("prewarm_ready_reason{reason=\"class_done\"} 0\n"));
        // Every sample's metric was introduced by HELP and TYPE lines.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(text.contains(&format!("# TYPE {name} gauge")), "{name}");
            assert!(text.contains(&format!("# HELP {name} ")), "{name}");
            assert!(name.starts_with("prewarm_"));
        }
    }

    #[test]
    fn written_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prewarm.prom");
        write_metrics(&Report::new(), &path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# HELP prewarm_"));
    }
}
