//! What the VM boot test asserts about a boot, each check a function of the
//! parsed evidence ([`Boot`], [`Layout`]) returning `Ok(detail)` or
//! `Err(why)`:
//!
//! - every boot powered off by itself;
//! - with prewarm: the initrd unit ran before switch-root
//!   ([`Boot::check_initrd`]), `prewarm.service` was READY before the
//!   stand-in kubelet started ([`Boot::check_ready`]), the stand-in's big
//!   file was hydrated by prewarm ([`Boot::check_hydrated_by_prewarm`]), and
//!   no chunk was read by both phases ([`Boot::check_disjoint`]);
//! - without prewarm (the control): prewarm did not run, and the stand-in
//!   hydrated its file itself.
//!
//! Kept apart from the parsing and from the test harness so that the
//! verdicts can be unit-tested on recorded good boots and doctored bad ones.

use std::collections::BTreeSet;

use serde_json::Value;

use super::boot::{chunk_set, hydrated_by, json_in, Boot, Layout};

/// The verdicts of a set of boots, one line each, in check order.
#[derive(Debug, Default)]
pub struct Checks {
    /// (passed, "PASS|FAIL [boot] what: detail").
    pub lines: Vec<(bool, String)>,
}

impl Checks {
    /// Every check that applies to each boot's kind (printed on stderr as
    /// they are made).
    pub fn run(layout: &Layout, boots: &[Boot]) -> Checks {
        let mut checks = Checks::default();
        for b in boots {
            checks.check(&b.name, "powered off by itself", b.check_poweroff());
            if b.kind == "with" {
                checks.check(
                    &b.name,
                    "initrd unit ran before switch-root",
                    b.check_initrd(),
                );
                checks.check(
                    &b.name,
                    "prewarm.service READY before kubelet started",
                    b.check_ready(),
                );
                checks.check(
                    &b.name,
                    "kubelet's file hydrated by prewarm",
                    b.check_hydrated_by_prewarm(layout),
                );
                checks.check(
                    &b.name,
                    "no chunk read twice by prewarm",
                    b.check_disjoint(),
                );
            } else if b.kind == "without" {
                checks.check(&b.name, "prewarm disabled", b.check_disabled());
                checks.check(
                    &b.name,
                    "control: kubelet hydrated its own file",
                    b.check_self_hydrated(layout),
                );
            }
        }
        checks
    }

    pub fn check(&mut self, boot: &str, what: &str, r: Result<String, String>) {
        let (ok, detail) = match r {
            Ok(d) => (true, d),
            Err(d) => (false, d),
        };
        let line = format!(
            "{} [{boot}] {what}: {detail}",
            if ok { "PASS" } else { "FAIL" }
        );
        eprintln!("{line}");
        self.lines.push((ok, line));
    }

    pub fn failed(&self) -> impl Iterator<Item = &String> {
        self.lines.iter().filter(|(ok, _)| !ok).map(|(_, l)| l)
    }
}

impl Boot {
    pub fn check_poweroff(&self) -> Result<String, String> {
        let rc = self.env.get("qemu_rc").map(String::as_str).unwrap_or("?");
        if rc != "0" {
            return Err(format!("qemu exit status {rc} (124 = timed out)"));
        }
        if !self
            .console
            .iter()
            .any(|l| l.contains("reboot: Power down"))
        {
            return Err("no 'reboot: Power down' on the console".into());
        }
        match self.standin {
            Some(_) => Ok(format!(
                "in {} s",
                self.env.get("wall_s").map(String::as_str).unwrap_or("?")
            )),
            None => Err("the stand-in reported nothing on ttyS1".into()),
        }
    }

    pub fn check_initrd(&self) -> Result<String, String> {
        // Console: the unit started in the initrd, before the real root's "Welcome".
        let welcome = self
            .console_switch_root()
            .ok_or("no second 'Welcome to' on the console")?;
        let started = self
            .console_index(|l| {
                l.contains("prewarm-initrd.service")
                    && (l.contains("Started") || l.contains("Starting"))
            })
            .ok_or("prewarm-initrd.service never started (console)")?;
        if started > welcome {
            return Err(format!("prewarm-initrd.service started at console line {started}, after switch-root (line {welcome})"));
        }
        // Journal: its report came out before "Switching root."
        let switch = self
            .journal_time("Switching root.")
            .ok_or("no 'Switching root.' in the journal")?;
        let reports = self.reports("prewarm-initrd.service");
        let report = reports
            .last()
            .ok_or("prewarm-initrd.service printed no JSON report")?;
        let report_t = self
            .journal()
            .iter()
            .find(|(_, m)| json_in(m).as_ref() == Some(report))
            .map(|(t, _)| *t)
            .ok_or("the initrd report is not in the journal")?;
        if report_t > switch {
            return Err(format!(
                "initrd report at {report_t} s, switch-root at {switch} s"
            ));
        }
        let chunks = chunk_set(report).map_err(|e| format!("initrd report: {e}"))?;
        if chunks.is_empty() {
            return Err("the initrd phase read no chunk".into());
        }
        Ok(format!(
            "started at console line {started} < switch-root line {welcome}; report at {report_t:.2} s < 'Switching root.' at {switch:.2} s; {} chunks read",
            chunks.len()
        ))
    }

    pub fn check_ready(&self) -> Result<String, String> {
        // systemd's own timestamps (CLOCK_MONOTONIC µs): for Type=notify,
        // ActiveEnter is when READY=1 arrived.
        let ready = self.unit_us("prewarm.service", "ActiveEnterTimestampMonotonic");
        let kubelet = self.unit_us("kubelet.service", "ExecMainStartTimestampMonotonic");
        if ready == 0 {
            return Err(format!(
                "prewarm.service never became active: {:?}",
                self.units.get("prewarm.service")
            ));
        }
        if kubelet == 0 {
            return Err("kubelet.service never started".into());
        }
        if ready > kubelet {
            return Err(format!(
                "READY at {ready} µs, kubelet started at {kubelet} µs"
            ));
        }
        let result = self.unit("prewarm.service", "Result").unwrap_or("?");
        if result != "success" {
            return Err(format!("prewarm.service Result={result}"));
        }
        // Console: "Started prewarm.service" (printed on READY for Type=notify)
        // before "Starting kubelet.service".
        let started = self
            .console_index(|l| l.contains("Started prewarm.service"))
            .ok_or("no 'Started prewarm.service' on the console")?;
        let kube = self
            .console_index(|l| l.contains("kubelet.service") && l.contains("Starting"))
            .ok_or("no 'Starting kubelet.service' on the console")?;
        if started > kube {
            return Err(format!(
                "console: Started prewarm line {started} after Starting kubelet line {kube}"
            ));
        }
        let exec = self.unit_us("prewarm.service", "ExecMainStartTimestampMonotonic");
        Ok(format!(
            "prewarm exec {:.2} s, READY {:.2} s, kubelet start {:.2} s (console lines {started} < {kube})",
            exec as f64 / 1e6,
            ready as f64 / 1e6,
            kubelet as f64 / 1e6
        ))
    }

    pub fn check_hydrated_by_prewarm(&self, layout: &Layout) -> Result<String, String> {
        let (marker_start, ends) = self.hydration(layout)?;
        let early = hydrated_by(layout, &ends, marker_start);
        let late: Vec<u64> = layout.big_chunks.difference(&early).copied().collect();
        if !late.is_empty() {
            return Err(format!(
                "{} of {} chunks of the big file hydrated after the stand-in started reading (marker fetch at {} µs): {late:?}",
                late.len(),
                layout.big_chunks.len(),
                marker_start
            ));
        }
        let mut read = BTreeSet::new();
        for unit in ["prewarm-initrd.service", "prewarm.service"] {
            for r in self.reports(unit) {
                read.extend(chunk_set(&r).map_err(|e| format!("{unit} report: {e}"))?);
            }
        }
        let unread: Vec<u64> = layout.big_chunks.difference(&read).copied().collect();
        if !unread.is_empty() {
            return Err(format!(
                "chunks of the big file in no prewarm report: {unread:?}"
            ));
        }
        let last = layout.big_chunks.iter().map(|c| ends[c]).max().unwrap_or(0);
        Ok(format!(
            "all {} chunks hydrated by {:.3} s (testbed clock), the stand-in's first read at {:.3} s; all in prewarm's reports",
            layout.big_chunks.len(),
            last as f64 / 1e6,
            marker_start as f64 / 1e6
        ))
    }

    pub fn check_self_hydrated(&self, layout: &Layout) -> Result<String, String> {
        let (marker_start, ends) = self.hydration(layout)?;
        let after = layout
            .big_chunks
            .iter()
            .filter(|c| ends.get(c).is_some_and(|&e| e > marker_start))
            .count();
        if after == 0 {
            return Err("every chunk of the big file was hydrated before the stand-in read it, without prewarm".into());
        }
        Ok(format!(
            "{after} of {} chunks hydrated after the stand-in started reading",
            layout.big_chunks.len()
        ))
    }

    pub fn check_disabled(&self) -> Result<String, String> {
        let n =
            self.reports("prewarm-initrd.service").len() + self.reports("prewarm.service").len();
        let ran = self.unit_us("prewarm.service", "ExecMainStartTimestampMonotonic");
        if n > 0 || ran != 0 {
            return Err(format!(
                "prewarm ran although disabled ({n} reports, exec at {ran} µs)"
            ));
        }
        Ok("no prewarm report, prewarm.service not run".into())
    }

    pub fn check_disjoint(&self) -> Result<String, String> {
        let initrd = self.reports("prewarm-initrd.service");
        let root = self.reports("prewarm.service");
        if initrd.len() != 1 || root.len() != 1 {
            return Err(format!(
                "expected one report per phase, got initrd {} root {}",
                initrd.len(),
                root.len()
            ));
        }
        let a = chunk_set(&initrd[0]).map_err(|e| format!("initrd report: {e}"))?;
        let b = chunk_set(&root[0]).map_err(|e| format!("root report: {e}"))?;
        let both: Vec<u64> = a.intersection(&b).copied().collect();
        if !both.is_empty() {
            return Err(format!(
                "{} chunks read by both phases: {both:?}",
                both.len()
            ));
        }
        // The root phase got the initrd's chunks through the state in /run.
        let handed = root[0]
            .pointer("/manifest/handover_chunks")
            .and_then(Value::as_u64)
            .ok_or("root report has no manifest.handover_chunks")?;
        if handed != a.len() as u64 {
            return Err(format!(
                "root phase was handed {handed} chunks, the initrd read {}",
                a.len()
            ));
        }
        Ok(format!(
            "initrd read {} chunks, root {} chunks, none by both; {handed} handed over in /run",
            a.len(),
            b.len()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm_boot::testdata;

    #[test]
    fn a_good_run_passes_every_check() {
        let layout = testdata::layout();
        let boots = testdata::boots();
        let checks = Checks::run(&layout, &boots);
        // with: poweroff, initrd, READY, hydrated, disjoint; without:
        // poweroff, disabled, self-hydrated.
        assert_eq!(checks.lines.len(), 5 + 3);
        let failed: Vec<&String> = checks.failed().collect();
        assert!(failed.is_empty(), "{failed:#?}");
        let with = &boots[0];
        assert!(with.check_initrd().unwrap().contains("< switch-root line"));
        assert!(with.check_disjoint().unwrap().contains("none by both"));
        // The control's verdicts do not hold for the boot with prewarm, and
        // the other way round.
        assert!(with.check_self_hydrated(&layout).is_err());
        assert!(with.check_disabled().is_err());
        let without = &boots[1];
        assert!(without.check_hydrated_by_prewarm(&layout).is_err());
        assert!(without.check_ready().is_err());
    }

    #[test]
    fn ready_after_kubelet_started_fails() {
        let good = &testdata::boots()[0];
        let ready = good.unit_us("prewarm.service", "ActiveEnterTimestampMonotonic");
        let kubelet = good.unit_us("kubelet.service", "ExecMainStartTimestampMonotonic");
        let bad = testdata::doctored("with-1", |data, stats| {
            let from = format!("ActiveEnterTimestampMonotonic={ready}\n");
            assert!(data.contains(&from));
            let to = format!("ActiveEnterTimestampMonotonic={}\n", kubelet + 1);
            (data.replace(&from, &to), stats)
        });
        let e = bad.check_ready().unwrap_err();
        assert!(
            e.contains("READY at") && e.contains("kubelet started at"),
            "{e}"
        );
        let checks = Checks::run(&testdata::layout(), &[bad]);
        assert_eq!(checks.failed().count(), 1, "{:#?}", checks.lines);
    }

    #[test]
    fn a_chunk_read_by_both_phases_fails() {
        let good = &testdata::boots()[0];
        let initrd = chunk_set(&good.reports("prewarm-initrd.service")[0]).unwrap();
        let first = *initrd.first().unwrap();
        let bad = testdata::doctored("with-1", |data, stats| {
            // The root phase's report (its unit's output section) also
            // names the initrd's first chunk.
            let mut section = "";
            let data = data
                .lines()
                .map(|l| {
                    if l.starts_with("=== ") {
                        section = l.trim_end();
                    }
                    match json_in(l) {
                        Some(mut v) if section == "=== output prewarm.service" => {
                            let ranges = v["devices"][0]["chunks_read"].as_array_mut().unwrap();
                            ranges.insert(0, serde_json::json!([first, first + 1]));
                            format!("{}{v}", &l[..l.find('{').unwrap()])
                        }
                        _ => l.to_string(),
                    }
                })
                .collect::<Vec<_>>()
                .join("\n");
            (data, stats)
        });
        let e = bad.check_disjoint().unwrap_err();
        assert_eq!(e, format!("1 chunks read by both phases: [{first}]"));
    }

    #[test]
    fn a_chunk_hydrated_after_the_first_read_fails() {
        let layout = testdata::layout();
        let late = *layout.big_chunks.last().unwrap();
        let bad = testdata::doctored("with-1", |data, stats| {
            // The big file's last chunk hydrated 1 s after the marker's fetch.
            let mut s: serde_json::Value = serde_json::from_str(&stats).unwrap();
            let order = s["hydration_order"].as_array_mut().unwrap();
            let marker = order
                .iter()
                .find(|e| e["chunk"] == layout.marker_chunk)
                .unwrap()["start_us"]
                .as_u64()
                .unwrap();
            for e in order.iter_mut().filter(|e| e["chunk"] == late) {
                e["end_us"] = (marker + 1_000_000).into();
            }
            (data, s.to_string())
        });
        let e = bad.check_hydrated_by_prewarm(&layout).unwrap_err();
        assert!(e.starts_with("1 of 81 chunks"), "{e}");
        assert!(e.ends_with(&format!("[{late}]")), "{e}");
    }

    #[test]
    fn an_initrd_report_after_switch_root_fails() {
        let good = &testdata::boots()[0];
        let switch = good.journal_time("Switching root.").unwrap();
        let bad = testdata::doctored("with-1", |data, stats| {
            // "Switching root." logged before anything else in the journal.
            let data = data
                .lines()
                .map(|l| {
                    if l.contains("Switching root.") {
                        let msg = &l[l.find(']').unwrap()..];
                        format!("[    0.000001{msg}")
                    } else {
                        l.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n");
            (data, stats)
        });
        assert!(bad.journal_time("Switching root.").unwrap() < switch);
        let e = bad.check_initrd().unwrap_err();
        assert!(e.contains("switch-root at 0.000001 s"), "{e}");
    }
}
