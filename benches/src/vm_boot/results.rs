//! The `vm-boot` section of `benches/RESULTS.md`: the boot times with and
//! without prewarm, per boot and per kind of boot, and the checks' verdicts,
//! between the markers `prewarm-e2e` keeps.
//!
//! The VM boot test writes the section to a file outside the source tree
//! ([`results_path`]); `prewarm-e2e --render benches/results.json
//! --vm-boot-section FILE` merges it into RESULTS.md. No test rewrites a
//! tracked file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::boot::{Boot, Layout};
use super::checks::{median, pairs, Checks};
use super::recording::{coverage, RecordedRun};
use crate::e2e::{VM_BOOT_END as END, VM_BOOT_START as START};

/// Where the test writes the section: `$PREWARM_VM_RESULTS` if set, else
/// `vm-boot-results.md` in `default_dir` (the test passes its
/// `CARGO_TARGET_TMPDIR`).
pub fn results_path(default_dir: &Path) -> PathBuf {
    std::env::var_os("PREWARM_VM_RESULTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| default_dir.join("vm-boot-results.md"))
}

/// What a run measured: the guest's prewarm (`prewarm --version` of the
/// binary in the package `deb`, which says its commit) and the workspace's
/// commit and state when the section was made, so that a section is never
/// taken for a later tree's.
pub fn measured(deb: &Path) -> String {
    let version = package_version(deb).unwrap_or_else(|| "prewarm of unknown version".to_string());
    let (commit, dirty) = crate::e2e::measured_commit();
    format!(
        "{version} from `{}`; workspace at commit {}",
        deb.file_name().map_or_else(
            || deb.display().to_string(),
            |n| n.to_string_lossy().into_owned()
        ),
        crate::e2e::describe_commit(&commit, dirty)
    )
}

/// `prewarm --version` of the binary in `deb` (unpacked to a temporary
/// directory with `dpkg-deb`).
fn package_version(deb: &Path) -> Option<String> {
    let dir = tempfile::tempdir().ok()?;
    let unpacked = std::process::Command::new("dpkg-deb")
        .arg("-x")
        .arg(deb)
        .arg(dir.path())
        .status()
        .ok()?;
    if !unpacked.success() {
        return None;
    }
    let out = std::process::Command::new(dir.path().join("usr/bin/prewarm"))
        .arg("--version")
        .output()
        .ok()?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !version.is_empty()).then_some(version)
}

/// The section, markers included. `timings` is run.sh's `timings.env`
/// (`root_s`, `image_s`, `record_s`, `plan_s`, `accel`); `elapsed` the whole
/// test's time; `measured` what the guest ran and which tree it came from
/// ([`measured`]).
pub fn results_section(
    layout: &Layout,
    boots: &[Boot],
    recorded: Option<&RecordedRun>,
    checks: &Checks,
    timings: &BTreeMap<String, String>,
    elapsed: Duration,
    measured: &str,
) -> String {
    let stats = boots.iter().find_map(|b| b.stats.as_ref());
    let (lat, conc) = stats
        .map(|s| (s.latency_us as f64 / 1000.0, s.concurrency))
        .unwrap_or((0.0, 0));
    let mut s = format!("{START}\n## VM boot on the lazy disk\n\n");
    s.push_str(&format!(
        "`benches/tests/vm_boot.rs` (root; `cargo test --release -p prewarm-benches --test vm_boot -- --nocapture`): \
a Debian 12 guest (systemd 252, dracut initrd with `50prewarm`) boots under qemu {} (2 vCPUs, 1 GiB) \
from its root disk served by `prewarm-testbed` ({lat} ms per cold 512 KiB chunk, {conc} fetches in \
flight); a stand-in `kubelet.service` reads a {} MiB binary, then powers the VM off. Times are the \
guest's `/proc/uptime` (seconds since kernel start) when the stand-in started and finished reading. \
Five kinds of boot, in rounds: on the lazy disk, prewarm with the manifest of a hand-written list (6 \
lines: prewarm, the stand-in's binary, libc, libsystemd-shared, systemctl, libcrypto), prewarm with \
the manifest planned from a recorded boot (`prewarm.manifest=/etc/prewarm/recorded.manifest`, both \
manifests in the image and the initrd), and no prewarm; on a warm disk (the same image booted \
directly, nothing to fetch), prewarm with the hand-written list's manifest and no prewarm, which \
shows what prewarm itself costs a boot (more rounds of those, as their difference is small against the emulator's noise; \"initrd started\": the \
initrd's systemd, before which no prewarm code runs, the origin of the warm-disk target).\n\n",
        match timings.get("accel").map(String::as_str) {
            Some("kvm") => "KVM",
            _ => "TCG (KVM probed: it does not boot a stock kernel on this host)",
        },
        layout.big_chunks.len() / 2
    ));
    // Median and range per kind of boot.
    s.push_str("Median (min–max) per kind of boot:\n\n");
    s.push_str("| boot | runs | kubelet started | kubelet finished reading | reading took |\n");
    s.push_str("| --- | --- | --- | --- | --- |\n");
    let mut kinds: Vec<&str> = boots.iter().map(|b| b.kind.as_str()).collect();
    kinds.sort();
    kinds.dedup();
    for kind in kinds {
        let runs: Vec<(f64, f64, f64)> = boots
            .iter()
            .filter(|b| b.kind == kind)
            .filter_map(|b| b.standin)
            .collect();
        let col =
            |f: &dyn Fn(&(f64, f64, f64)) -> f64| summary(&runs.iter().map(f).collect::<Vec<_>>());
        s.push_str(&format!(
            "| {} | {} | {} | **{}** | {} |\n",
            kind_label(kind),
            runs.len(),
            col(&|r| r.0),
            col(&|r| r.2),
            col(&|r| r.2 - r.0),
        ));
    }
    if let Some(run) = recorded {
        s.push_str(&recording_part(layout, boots, run));
    }
    s.push_str(
        "\nEach boot, seconds since kernel start (\"hydrated first\": chunks of the binary hydrated \
before the stand-in's first read, testbed clock; READY: `prewarm.service` became active):\n\n",
    );
    s.push_str("| boot | initrd started | disk seen | root device found | switch-root | READY | kubelet started | finished reading | reading took | hydrated first | prewarm CPU initrd / root | qemu wall |\n");
    s.push_str("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    for b in boots {
        let (st, done, took) = match b.standin {
            Some((a, _, c)) => (
                format!("{a:.2}"),
                format!("{c:.2}"),
                format!("{:.2}", c - a),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        let hyd = b
            .hydrated_before(layout)
            .map(|(x, n)| format!("{x}/{n}"))
            .unwrap_or("-".into());
        let ready = match b.unit_us("prewarm.service", "ActiveEnterTimestampMonotonic") {
            0 => "-".to_string(),
            us => format!("{:.2}", us as f64 / 1e6),
        };
        let wall = b.env.get("wall_s").cloned().unwrap_or_default();
        let at = |what: &str| {
            b.journal_time(what)
                .map_or("-".to_string(), |t| format!("{t:.2}"))
        };
        let (dev, switch) = (at("Found device dev-disk-by"), at("Switching root."));
        let disk = at("virtio_blk virtio0: [vda]");
        let initrd = b
            .initrd_started()
            .map_or("-".to_string(), |t| format!("{t:.2}"));
        // The JSON reports' cpu_ms: what each phase's process cost.
        let cpu = |unit: &str| {
            b.reports(unit)
                .first()
                .and_then(|r| r["cpu_ms"].as_f64())
                .map_or("-".to_string(), |ms| format!("{ms:.0}"))
        };
        let cpu = format!(
            "{} / {} ms",
            cpu("prewarm-initrd.service"),
            cpu("prewarm.service")
        );
        s.push_str(&format!(
            "| {} | {initrd} | {disk} | {dev} | {switch} | {ready} | {st} | {done} | {took} | {hyd} | {cpu} | {wall} |\n",
            b.name
        ));
    }
    s.push_str(
        "\nUnder TCG on this 2-core host the boot up to the stand-in varies by seconds between runs \
(host load, emulation), while the stand-in's own reading time depends on the disk only. prewarm's \
own work (starting, reading the manifest, checking files) is emulated too, so it costs more time \
here than on a real node.\n\nChecks:\n\n",
    );
    for (_, l) in &checks.lines {
        s.push_str(&format!("- {l}\n"));
    }
    let root_s = timings.get("root_s").map(String::as_str).unwrap_or("?");
    let t = |k: &str| timings.get(k).map(String::as_str).unwrap_or("?");
    s.push_str(&format!(
        "\nRun: Debian root tree {root_s} s ({}), image + plain initrd {} s, recording boot {} s, manifests + initrd {} s, whole test {} s; guest kernel {}; {} build.\n\nMeasured: {measured}.\n{END}\n",
        if root_s.parse::<u64>().unwrap_or(0) > 5 { "mmdebstrap" } else { "cached" },
        t("image_s"),
        t("record_s"),
        t("plan_s"),
        elapsed.as_secs(),
        layout.env.get("KVER").map(String::as_str).unwrap_or("?"),
        if cfg!(debug_assertions) { "debug" } else { "release" },
    ));
    s
}

/// The recording: its size, its coverage of each boot without prewarm, and
/// the recorded boots against those of the same round.
fn recording_part(layout: &Layout, boots: &[Boot], run: &RecordedRun) -> String {
    let chunk_mib = layout
        .env
        .get("CHUNK_SIZE")
        .and_then(|c| c.parse::<u64>().ok())
        .unwrap_or(524288) as f64
        / 1048576.0;
    let rec = &run.recording;
    let mut s = format!(
        "\nThe recording: one boot of the same image on a warm disk (a copy booted directly, no \
testbed; no manifest, so no prewarm; `prewarm.record=1`), recording until `kubelet.service` was \
active plus 10 s{}: **{} files, {:.1} MiB** in their read ranges (list {:.0} KiB), which \
`prewarm plan` maps to **{} chunks ({:.1} MiB)**; the hand-written list's manifest has {} chunks.\n\n",
        run.boot
            .as_ref()
            .and_then(|b| b.standin)
            .map(|(_, _, done)| format!(" (the stand-in finished reading {done:.2} s after kernel start there)"))
            .unwrap_or_default(),
        rec.files.len(),
        rec.bytes() as f64 / 1048576.0,
        run.list_bytes as f64 / 1024.0,
        run.chunks.len(),
        run.chunks.len() as f64 * chunk_mib,
        run.hand_chunks.len(),
    );
    s.push_str(
        "Coverage: of the chunks a boot without prewarm fetched before the stand-in finished \
reading (testbed clock, its marker chunk left out), those the recorded manifest reads. Chunks \
holding no byte of any file (inode tables, directory blocks: what resolving paths reads) cannot \
be named by a list of files; the check (at least 90 %) counts the file-data chunks.\n\n",
    );
    s.push_str("| boot without prewarm | chunks fetched | metadata only | file data | covered (file data) | covered (all) |\n");
    s.push_str("| --- | --- | --- | --- | --- | --- |\n");
    for b in boots.iter().filter(|b| b.kind == "without") {
        match coverage(layout, b, run) {
            Ok(c) => s.push_str(&format!(
                "| {} | {} | {} | {} | **{} ({:.1} %)** | {} ({:.1} %) |\n",
                b.name,
                c.boot.len(),
                c.metadata_only.len(),
                c.file_data(),
                c.file_data_covered(),
                c.file_data_share() * 100.0,
                c.covered.len(),
                c.share() * 100.0
            )),
            Err(e) => s.push_str(&format!("| {} | {e} | | | | |\n", b.name)),
        }
    }
    s.push_str("\nKubelet finished reading, per round (seconds since kernel start):\n\n");
    s.push_str("| round | hand-written list | recording | no prewarm | recording − no prewarm |\n");
    s.push_str("| --- | --- | --- | --- | --- |\n");
    for (rec_boot, without) in pairs(boots, "recorded", "without") {
        let round = rec_boot.name.rsplit_once('-').map_or("?", |(_, n)| n);
        let done = |b: Option<&Boot>| b.and_then(|b| b.standin).map(|s| s.2);
        let hand = boots
            .iter()
            .find(|b| b.kind == "with" && b.name.ends_with(&format!("-{round}")));
        let cell = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
        let (r, w) = (done(Some(rec_boot)), done(Some(without)));
        s.push_str(&format!(
            "| {round} | {} | {} | {} | {} |\n",
            cell(done(hand)),
            cell(r),
            cell(w),
            match (r, w) {
                (Some(r), Some(w)) => format!("{:+.2} s", r - w),
                _ => "-".into(),
            }
        ));
    }
    s
}

fn kind_label(kind: &str) -> &str {
    match kind {
        "with" => "prewarm, hand-written list",
        "recorded" => "prewarm, recorded manifest",
        "without" => "prewarm off (`prewarm=0 rd.prewarm=0`)",
        "warmwith" => "warm disk, prewarm (hand-written list)",
        "warmwithout" => "warm disk, prewarm off",
        "initrdonly" => "initrd phase only (`prewarm=0`)",
        k => k,
    }
}

/// "median s (min–max)" of some seconds.
fn summary(v: &[f64]) -> String {
    let Some(median) = median(v) else {
        return "-".into();
    };
    let (lo, hi) = v
        .iter()
        .fold((f64::MAX, f64::MIN), |(l, h), &x| (l.min(x), h.max(x)));
    if v.len() == 1 {
        format!("{median:.2} s")
    } else {
        format!("{median:.2} s ({lo:.2}–{hi:.2})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::e2e::render::vm_boot_section;
    use crate::vm_boot::boot::read_env;
    use crate::vm_boot::testdata;

    #[test]
    fn section_of_a_recorded_run() {
        let layout = testdata::layout();
        let boots = testdata::boots();
        let checks = Checks::run(&layout, &boots, None);
        let timings = read_env(&testdata::dir().join("timings.env"));
        let s = results_section(
            &layout,
            &boots,
            None,
            &checks,
            &timings,
            Duration::from_secs(200),
            "prewarm 0.1.0 (commit 0123456789ab) from `prewarm.deb`; workspace at commit `0123456789ab` (clean tree)",
        );
        assert_eq!(vm_boot_section(&s), Some(s.trim_end()));
        assert!(s.contains("| prewarm, hand-written list | 1 | "), "{s}");
        assert!(s.contains("| prewarm, recorded manifest | 1 | "), "{s}");
        assert!(
            s.contains("| prewarm off (`prewarm=0 rd.prewarm=0`) | 1 | "),
            "{s}"
        );
        assert!(s.contains("| with-1 | ") && s.contains("| 81/81 |"), "{s}");
        assert!(s.contains("reads a 40 MiB binary"), "{s}");
        assert_eq!(s.matches("\n- PASS [").count(), 13, "{s}");
        assert!(s.contains("whole test 200 s"), "{s}");
        assert!(
            s.contains("Measured: prewarm 0.1.0 (commit 0123456789ab) from `prewarm.deb`;"),
            "{s}"
        );
        // With the recording: its size, its coverage, the rounds.
        let recorded = testdata::recorded();
        let s = results_section(
            &layout,
            &boots,
            Some(&recorded),
            &checks,
            &timings,
            Duration::from_secs(200),
            "prewarm 0.1.0 (commit 0123456789ab) from `prewarm.deb`; workspace at commit `0123456789ab` (clean tree)",
        );
        let files = format!("**{} files, ", recorded.recording.files.len());
        assert!(s.contains(&files), "{s}");
        assert!(
            s.contains(&format!("**{} chunks (", recorded.chunks.len())),
            "{s}"
        );
        assert!(
            s.contains("| without-1 | ") && s.contains(" %)** | "),
            "{s}"
        );
        assert!(s.contains("| 1 | ") && s.contains(" s |\n"), "{s}");
    }

    #[test]
    fn summary_of_seconds() {
        assert_eq!(summary(&[]), "-");
        assert_eq!(summary(&[1.0]), "1.00 s");
        assert_eq!(summary(&[6.0, 1.0, 2.0]), "2.00 s (1.00–6.00)");
        assert_eq!(summary(&[4.0, 1.0]), "2.50 s (1.00–4.00)");
    }
}
