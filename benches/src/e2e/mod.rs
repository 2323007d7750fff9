//! The end-to-end comparison behind `prewarm-e2e`: prewarm against the usual
//! ways of warming a snapshot-restored volume (cat, xargs cat, vmtouch, fio,
//! a physical-order reader, doing nothing), on the lazy-volume testbed, with
//! every number taken from the testbed's own hydration record.
//!
//! - [`sys`]: commands, cache dropping and the cleanup guards (testbed
//!   process, loop device, mount);
//! - [`analysis`]: critical chunk set, physical limit, per-run metrics;
//! - [`methods`]: the methods compared, and how each one is invoked;
//! - [`harness`]: set-up, tear-down and the scenario loop, measuring each
//!   method run;
//! - [`records`]: what a run produced (results.json);
//! - [`summary`]: medians, target checks, the CI verdict;
//! - [`render`]: RESULTS.md (and its `vm-boot` section), CSV, CI table;
//! - [`criterion`]: the micro-benchmark numbers copied into RESULTS.md.
//!
//! [`run`] is the whole program minus argument parsing.

pub mod analysis;
pub mod criterion;
pub mod harness;
pub mod methods;
pub mod records;
pub mod render;
pub mod summary;
pub mod sys;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use harness::{Harness, Options};
use records::{Meta, Results};

pub use render::{VM_BOOT_END, VM_BOOT_START};

/// Outputs of a full run.
#[derive(Debug, Clone)]
pub struct Outputs {
    /// Where RESULTS.md and results.json go (`None`: nowhere).
    pub dir: Option<PathBuf>,
    /// Criterion's output directory, read for the micro-benchmark table.
    pub criterion_dir: PathBuf,
    /// A file holding a `vm-boot` section (as the VM boot test writes it)
    /// to put into RESULTS.md instead of the one the file has.
    pub vm_boot_section: Option<PathBuf>,
}

/// What must be present for a real run; the first thing missing, if any.
pub fn missing_requirement(ci: bool) -> Option<String> {
    let mut tools = vec!["losetup", "mount", "umount", "mkfs.ext4", "filefrag"];
    if !ci {
        tools.extend(["fio", "vmtouch", "xargs", "cat"]);
    }
    sys::first_missing(true, &tools)
}

/// A work directory under /var/tmp removed on drop (unless kept). Declared
/// before any guard, so it is removed after every mount is gone.
pub struct WorkDir {
    pub path: PathBuf,
    keep: bool,
}

impl WorkDir {
    /// Use `path`, or create `/var/tmp/prewarm-e2e-<pid>`.
    pub fn new(path: Option<PathBuf>, keep: bool) -> Result<Self> {
        let (path, keep) = match path {
            Some(p) => (p, true),
            None => (
                PathBuf::from(format!("/var/tmp/prewarm-e2e-{}", std::process::id())),
                keep,
            ),
        };
        std::fs::create_dir_all(&path).with_context(|| format!("mkdir {}", path.display()))?;
        let path = path
            .canonicalize()
            .with_context(|| format!("resolving {}", path.display()))?;
        Ok(WorkDir { path, keep })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn first_line_of(path: &str, key: &str) -> String {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_once(':').map(|(_, v)| v.trim().to_string()))
        })
        .unwrap_or_default()
}

/// The first three fields of /proc/loadavg.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The output of `git ARGS` in the workspace (empty if git fails).
fn git(args: &[&str]) -> String {
    Command::new("git")
        .arg("-C")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// The commit of the workspace measured (`git rev-parse HEAD`, empty if
/// unknown) and whether tracked files had uncommitted changes.
pub fn measured_commit() -> (String, bool) {
    (
        git(&["rev-parse", "HEAD"]),
        !git(&["status", "--porcelain", "--untracked-files=no"]).is_empty(),
    )
}

/// A measured commit as results name it: `` `COMMIT` (clean tree) ``, or
/// with the warning that numbers from a dirty tree belong to no commit.
pub fn describe_commit(commit: &str, dirty: bool) -> String {
    format!(
        "`{}`{}",
        if commit.is_empty() { "unknown" } else { commit },
        if dirty {
            " with uncommitted changes (these numbers belong to no commit)"
        } else {
            " (clean tree)"
        }
    )
}

/// The run's setup; `fixtures` are the description and manifest of each
/// fixture used, in run order.
fn collect_meta(opts: &Options, fixtures: &[(String, serde_json::Value)]) -> Meta {
    let (commit, dirty) = measured_commit();
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M:%S UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let kernel = Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let mem_kib: u64 = first_line_of("/proc/meminfo", "MemTotal")
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap_or(0);
    let prewarm = opts.prewarm.to_string_lossy().into_owned();
    let fixture = fixtures
        .iter()
        .map(|(d, _)| d.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    Meta {
        date,
        kernel,
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        mem_mib: mem_kib / 1024,
        cpu_model: first_line_of("/proc/cpuinfo", "model name"),
        prewarm_version: sys::tool_version(&prewarm, &["--version"]),
        fio_version: sys::tool_version("fio", &["--version"]),
        vmtouch_version: sys::tool_version("vmtouch", &["-h"]),
        coreutils_version: sys::tool_version("cat", &["--version"]),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        ci: opts.ci,
        fixture,
        fixture_manifest: fixtures
            .first()
            .map_or(serde_json::Value::Null, |(_, m)| m.clone()),
        fixture_manifests: fixtures.iter().map(|(_, m)| m.clone()).collect(),
        chunk_size: opts.chunk_size,
        latency_ms: opts.latency_ms,
        max_mibps: opts.max_mibps,
        duration_s: 0.0,
        loadavg_start: String::new(),
        loadavg_end: loadavg(),
        commit,
        dirty,
    }
}

/// Re-render RESULTS.md (and the CSV on stdout) from a results.json of an
/// earlier run, recomputing the target checks; nothing is measured.
pub fn render(json: &Path, out: &Outputs) -> Result<i32> {
    let text =
        std::fs::read_to_string(json).with_context(|| format!("reading {}", json.display()))?;
    let mut results: Results =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", json.display()))?;
    results.targets = summary::check_targets(&results.scenarios);
    write_outputs(&results, out)?;
    print!("{}", render::csv(&results));
    Ok(0)
}

fn write_outputs(results: &Results, out: &Outputs) -> Result<()> {
    // The VM boot test (tests/vm_boot.rs) owns a section of the same file,
    // between its markers: keep it, or take the one given.
    let vm_boot = match &out.vm_boot_section {
        Some(f) => {
            let text =
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            match render::vm_boot_section(&text) {
                Some(s) => Some(s.to_string()),
                None => bail!(
                    "{} holds no vm-boot section (between {VM_BOOT_START} and {VM_BOOT_END})",
                    f.display()
                ),
            }
        }
        None => None,
    };
    if let Some(dir) = &out.dir {
        let md = dir.join("RESULTS.md");
        let old = std::fs::read_to_string(&md).unwrap_or_default();
        let text = render::results_md(results, &old, vm_boot.as_deref());
        std::fs::write(&md, text).with_context(|| format!("writing {}", md.display()))?;
        let js = dir.join("results.json");
        let text = serde_json::to_string_pretty(results).context("serialising results")?;
        std::fs::write(&js, text + "\n").with_context(|| format!("writing {}", js.display()))?;
        eprintln!("prewarm-e2e: wrote {} and {}", md.display(), js.display());
    } else if vm_boot.is_some() {
        bail!("--vm-boot-section needs somewhere to write RESULTS.md (not --no-write)");
    }
    Ok(())
}

/// Run everything; returns the process exit code.
pub fn run(opts: Options, out: &Outputs) -> Result<i32> {
    if let Some(why) = missing_requirement(opts.ci) {
        bail!("cannot run: {why}");
    }
    for (what, p) in [
        ("prewarm", &opts.prewarm),
        ("prewarm-testbed", &opts.testbed),
        ("prewarm-fixture", &opts.fixture),
    ] {
        if !p.is_file() {
            bail!(
                "{what} not found at {} (build it: cargo build --release -p prewarm-cli -p prewarm-benches)",
                p.display()
            );
        }
    }
    sys::install_interrupt_handler()?;
    let started = Instant::now();
    let load_start = loadavg();
    let methods = if opts.ci {
        methods::ci_methods()
    } else {
        methods::all_methods()
    };
    let mut scenarios = Vec::new();
    let mut fixtures = Vec::new();
    for &shape in &opts.shapes {
        sys::check_interrupt()?;
        // One fixture at a time: its tmpfs copy goes when the harness does.
        let h = Harness::prepare(opts.clone(), shape)?;
        for sc in h.scenarios() {
            sys::check_interrupt()?;
            scenarios.push(h.run_scenario(&sc, &methods)?);
        }
        fixtures.push((h.fixture.clone(), h.manifest.clone()));
    }
    let mut meta = collect_meta(&opts, &fixtures);
    meta.duration_s = started.elapsed().as_secs_f64();
    meta.loadavg_start = load_start;
    let targets = summary::check_targets(&scenarios);
    let results = Results {
        meta,
        scenarios,
        targets,
        criterion: if opts.ci {
            Vec::new()
        } else {
            criterion::load_criterion(&out.criterion_dir)
        },
    };

    write_outputs(&results, out)?;
    if opts.ci {
        print!("{}", render::ci_table(&results.scenarios));
        let failures = summary::ci_failures(&results.scenarios);
        if failures.is_empty() {
            println!("prewarm-e2e --ci: PASS (prewarm hydrated exactly its plan)");
            return Ok(0);
        }
        for f in &failures {
            println!("FAIL: {f}");
        }
        println!("prewarm-e2e --ci: FAIL ({} problems)", failures.len());
        return Ok(1);
    }
    print!("{}", render::csv(&results));
    for t in &results.targets {
        eprintln!(
            "prewarm-e2e: target {}: {} — {}",
            match t.met {
                Some(true) => "MET",
                Some(false) => "MISSED",
                None => "n/a",
            },
            t.target,
            t.detail
        );
    }
    Ok(0)
}
