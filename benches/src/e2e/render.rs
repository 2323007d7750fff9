//! Rendering of an end-to-end run: RESULTS.md (setup, targets, per-scenario
//! tables, sweeps, micro-benchmarks, definitions), the plot-friendly CSV
//! (one row per run), the short CI table, and the `vm-boot` section of
//! RESULTS.md, which the VM boot test produces and this module keeps or
//! merges in.
//!
//! Only presentation lives here: every median and verdict comes from
//! [`super::summary`], so the tables never compute a number of their own
//! that the target checks could disagree with.

use std::fmt::Write as _;

use super::analysis::median;
use super::methods::Method;
use super::records::{Results, ScenarioResult, SweepRecord};
use super::summary::{summarise, sweep_medians, MethodSummary};
use crate::fixture::Shape;

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
        "- measured commit {}",
        super::describe_commit(&m.commit, m.dirty)
    );
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
    // The critical set of each fixture, from its first scenario.
    let mut shapes = Vec::new();
    for s in &r.scenarios {
        if shapes.contains(&s.scenario.shape) {
            continue;
        }
        shapes.push(s.scenario.shape);
        let _ = writeln!(
            out,
            "- critical set{}: {} files, {:.1} MiB of file data, {} chunks ({}), {} ranges, {:.1} MiB planned (whole chunks)",
            if s.scenario.shape == Shape::Node {
                String::new()
            } else {
                format!(" of the {} fixture", s.scenario.shape)
            },
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
at 32 fetches in flight a full read with no walk (planned ahead, or its metadata cached) takes what touch \
mode (the same fetches without the bytes) takes, and both sit at the floor of the process's start, the directories a manifest replays and the hand-over of each \
freed fetch slot; a cold run first walks a chain of cold metadata reads, which planning at image build time \
(`prewarm run --manifest`) removes."
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
        if !sc.fixture.is_empty() {
            let _ = writeln!(out, "Fixture: {}.\n", sc.fixture);
        }
        let _ = writeln!(out, "Targets: {}.\n", s.targets.describe());
        if !s.direct_io {
            let _ = writeln!(
                out,
                "A buffered loop device passes its requests on to its backing file one at a time (fio at iodepth 32 on it: one fetch in flight), so every method reading through the device or its files waits for one fetch after another; prewarm reads such a device through its backing file, at its offset (`devices[].read_through`), as many fetches in flight as the testbed serves.\n"
            );
        }
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
- **All-cold start** for every run: `sync; echo 3 > /proc/sys/vm/drop_caches`, then the method's own programs (prewarm, cat and xargs, vmtouch, fio) read back into the page cache, as they load from the host's disk and not from the volume under test, *then* a testbed reset (every chunk cold, counters zeroed), then the method.
- **Time to critical set**: from the method's start (just before it is spawned, or the in-process reader starts) to the hydration (testbed `end_us`) of the last chunk of the critical set; the testbed's timestamps are relative to its reset, whose local instant is the midpoint of the reset request's round trip (< 1 ms).
- **Critical set**: the chunks of prewarm's plan for the critical list (`prewarm --dry-run --json --paths LIST`: file extents → `ReadPlan::build` → chunk indexes; checked against the dry run's own chunk count). The loop device has no partition offset and testbed chunks equal plan chunks.
- **Physical limit**: `ceil(critical chunks / concurrency) × latency` (+ transfer time under a throughput cap): no reader can hydrate the set sooner (the latency bound). **Transfer bound**: `prewarm run --manifest` run again straight after its measured run, caches dropped and every chunk hydrated: the plan's chunks moved with no fetch to wait for and no mapping, in the same repetition; where a scenario's targets say so, a full read is judged against the larger of the two (touch mode always against the latency bound). Each scenario states its targets above its table.
- **Big tree** (`big-tree-c*`): `prewarm-fixture --shape big-tree`, a critical set of unpacked container layers (six deep trees of mostly few-KiB files and a few MiB-sized ones, each written in one go as an unpack writes it) besides the node's own files; the critical list names each layer by its directory, as a user of `prewarm --paths` would, and the methods that take file names (cat, xargs, vmtouch, the application, the physical-order reader) get every file of it, in path order, without having to walk the tree.
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
/// The short CI table.
pub fn ci_table(scenarios: &[ScenarioResult]) -> String {
    let mut s = String::from(
        "method                                         critical ms  x limit  chunks  outside  exact  warm fetches\n",
    );
    for sc in scenarios {
        for r in &sc.runs {
            let h = &r.hydration;
            s.push_str(&format!(
                "{:<46} {:>11} {:>8} {:>7} {:>8} {:>6} {:>13}\n",
                r.label,
                h.time_to_critical_ms
                    .map_or("-".into(), |t| format!("{t:.1}")),
                r.ratio.map_or("-".into(), |x| format!("{x:.2}")),
                h.chunks_hydrated,
                h.outside_critical,
                r.exact
                    .as_ref()
                    .map_or("", |x| if x.exact() { "yes" } else { "NO" }),
                r.warm
                    .as_ref()
                    .map_or("-".into(), |w| w.fetches.to_string()),
            ));
        }
        s.push_str(&format!(
            "({}: critical set {} files, {} chunks, limit {:.1} ms at concurrency {}, {} ms latency)\n",
            sc.scenario.id,
            sc.critical_files,
            sc.critical_chunks,
            sc.limit_ms,
            sc.scenario.concurrency,
            sc.scenario.latency_ms
        ));
    }
    s
}

/// Markers around the `vm-boot` section of RESULTS.md, which the VM boot
/// test (tests/vm_boot.rs) writes to a file of its own and `prewarm-e2e`
/// keeps, or replaces with `--vm-boot-section FILE`.
pub const VM_BOOT_START: &str = "<!-- vm-boot:start -->";
pub const VM_BOOT_END: &str = "<!-- vm-boot:end -->";

/// The `vm-boot` section of a text, markers included.
pub fn vm_boot_section(text: &str) -> Option<&str> {
    let a = text.find(VM_BOOT_START)?;
    let b = text[a..].find(VM_BOOT_END)? + a;
    Some(&text[a..b + VM_BOOT_END.len()])
}

/// `text` with its `vm-boot` section replaced by `section` (markers
/// included), the rest left alone; appended when `text` has none.
pub fn with_vm_boot_section(text: &str, section: &str) -> String {
    let section = section.trim_end();
    match vm_boot_section(text) {
        Some(old) => {
            let a = text.find(old).unwrap_or(0);
            format!("{}{section}{}", &text[..a], &text[a + old.len()..])
        }
        None if text.is_empty() => format!("# Results\n\n{section}\n"),
        None => format!("{}\n\n{section}\n", text.trim_end()),
    }
}

/// The whole RESULTS.md: the end-to-end part rendered from `r`, then the
/// `vm-boot` section: `vm_boot` when given, else the one the file's
/// current text `old` has (if any).
pub fn results_md(r: &Results, old: &str, vm_boot: Option<&str>) -> String {
    let text = markdown(r);
    match vm_boot.or_else(|| vm_boot_section(old)) {
        Some(section) => with_vm_boot_section(&text, section),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::e2e::criterion::CriterionRow;
    use crate::e2e::records::{fixtures::sample_scenario, Meta};
    use crate::e2e::summary::check_targets;

    fn sample() -> Results {
        let sc = sample_scenario();
        Results {
            meta: Meta::default(),
            targets: check_targets(std::slice::from_ref(&sc)),
            scenarios: vec![sc],
            criterion: vec![CriterionRow {
                id: "engine/uring qd32".into(),
                median_ns: 16384.0 * 5000.0,
                mean_ns: 0.0,
                elements: Some(16384),
            }],
        }
    }

    #[test]
    fn markdown_and_csv() {
        let res = sample();
        let md = markdown(&res);
        assert!(md.contains("5.00 µs per I/O"), "{md}");
        assert!(md.contains("107.0 (105–109)"), "{md}");
        assert!(
            md.contains("Targets: prewarm default [cold] within 1.1×"),
            "{md}"
        );
        let c = csv(&res);
        assert_eq!(c.lines().count(), 1 + 4 + 2);
        let cols = c.lines().next().map_or(0, |l| l.split(',').count());
        assert!(c.lines().all(|l| l.split(',').count() == cols), "{c}");
    }

    #[test]
    fn vm_boot_section_is_kept_or_replaced() {
        let res = sample();
        let one = format!("{VM_BOOT_START}\n## VM boot\n\nold\n{VM_BOOT_END}\n");
        let two = format!("{VM_BOOT_START}\n## VM boot\n\nnew\n{VM_BOOT_END}\n");
        let md = markdown(&res);
        // Nothing to keep: the e2e part only.
        assert_eq!(results_md(&res, "", None), md);
        // Re-rendering keeps the section the file has.
        let kept = results_md(&res, &format!("# x\n\n{one}"), None);
        assert!(kept.starts_with(md.trim_end()), "{kept}");
        assert!(kept.ends_with(&one), "{kept}");
        // A given section replaces it.
        let merged = results_md(&res, &kept, Some(&two));
        assert!(merged.contains("\nnew\n") && !merged.contains("\nold\n"));
        assert_eq!(vm_boot_section(&merged), Some(two.trim_end()));
        // Replacing leaves what follows the section alone.
        let text = format!("a\n\n{one}\nafter\n");
        assert_eq!(
            with_vm_boot_section(&text, &two),
            format!("a\n\n{}\n\nafter\n", two.trim_end())
        );
        assert_eq!(
            with_vm_boot_section("", &two),
            format!("# Results\n\n{two}")
        );
    }
}
