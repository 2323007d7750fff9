//! The commands: each turns parsed arguments into library calls and prints
//! the outcome. Errors carry context naming the file involved; the exit code
//! comes from the report's outcome, or from [`exit_code_of`] for errors.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use prewarm_core::engine::{BackendChoice, StopSignal, STOP_GRACE};
use prewarm_core::handover::HandoverState;
use prewarm_core::manifest::{Manifest, ManifestError};
use prewarm_core::pipeline::{self, Config, Prepared};
use prewarm_core::plan::{PlanConfig, ReadMode};
use prewarm_core::replay::{self, ReplayOptions};
use prewarm_core::report::{mib, Report};
use prewarm_core::source::{self, SourceEntry};
use prewarm_core::{Warning, WarningKind};
use serde::Serialize;

use crate::notify::Readiness;
use crate::{
    EngineArg, EngineArgs, ModeArg, OutputArgs, Phase, PlanArgs, PlanCmd, RunCmd, ShowCmd,
    SourceArgs,
};

/// Exit code of a manifest that cannot be used here.
pub const EXIT_REFUSED: u8 = 3;

/// Exit code for an error that ended a command.
pub fn exit_code_of(e: &anyhow::Error) -> u8 {
    let refused = e.downcast_ref::<ManifestError>().is_some()
        || matches!(
            e.downcast_ref::<prewarm_core::Error>(),
            Some(prewarm_core::Error::ManifestRefused { .. })
        );
    if refused {
        EXIT_REFUSED
    } else {
        2
    }
}

/// `prewarm [PATH]...`: map and hydrate now.
pub fn hydrate(
    sources: &SourceArgs,
    plan: &PlanArgs,
    engine: &EngineArgs,
    output: &OutputArgs,
) -> Result<u8> {
    if sources.paths.is_empty() && sources.lists.is_empty() && sources.device.is_empty() {
        bail!("nothing to do: give PATHs, --paths LIST or --device DEV (see --help)");
    }
    let mut cfg = config(plan_config(plan), engine)?;
    cfg.collect.cross_mounts = sources.cross_mounts;
    let (entries, warnings) = read_sources(sources, None);
    if !output.dry_run {
        // Map and read overlapped: each priority class is read as soon as it
        // is mapped. Input warnings are known before any mapping.
        print_warnings(&warnings);
        let printed = warnings.len();
        let report = pipeline::hydrate(&entries, warnings, &sources.device, sources.priority, &cfg)
            .context("hydrating")?;
        return print_report(&report, printed, output);
    }
    let mut prepared = pipeline::prepare(&entries, warnings, &cfg).context("planning")?;
    for dev in &sources.device {
        prepared
            .add_whole_device(dev, sources.priority, &cfg)
            .with_context(|| format!("whole-device sweep of {}", dev.display()))?;
    }
    finish(prepared, &cfg, output)
}

/// `prewarm plan`: map once and write a manifest.
pub fn plan(cmd: &PlanCmd) -> Result<u8> {
    if cmd.sources.paths.is_empty() && cmd.sources.lists.is_empty() {
        bail!("nothing to plan: give PATHs or --paths LIST (see --help)");
    }
    if !cmd.sources.device.is_empty() {
        bail!("--device cannot be planned into a manifest; name files or directories");
    }
    let cfg = Config {
        plan: plan_config(&cmd.plan),
        collect: source::CollectOptions {
            cross_mounts: cmd.sources.cross_mounts,
            root: cmd.root.clone(),
        },
        ..Config::default()
    };
    let (entries, warnings) = read_sources(&cmd.sources, cmd.root.as_deref());
    let prepared = pipeline::prepare(&entries, warnings, &cfg).context("mapping")?;
    print_warnings(&prepared.warnings);
    let tool = format!("prewarm {}", env!("CARGO_PKG_VERSION"));
    let (manifest, warnings) = replay::build_manifest(&prepared, &cfg, &tool);
    print_warnings(&warnings);
    let bytes = manifest.encode();
    write_atomically(&cmd.output, &bytes)
        .with_context(|| format!("writing {}", cmd.output.display()))?;

    #[derive(Serialize)]
    struct Summary<'a> {
        manifest: &'a Path,
        bytes: usize,
        checksum: String,
        #[serde(flatten)]
        stats: prewarm_core::manifest::ManifestStats,
        warnings: usize,
    }
    let summary = Summary {
        manifest: &cmd.output,
        bytes: bytes.len(),
        checksum: format!("{:08x}", Manifest::checksum_of(&bytes).unwrap_or(0)),
        stats: manifest.stats(),
        warnings: prepared.warnings.len() + warnings.len(),
    };
    if cmd.json {
        print_json(&summary)?;
    } else {
        println!(
            "wrote {} ({} bytes, checksum {}): {} files, {} extents, {} mapped on {} filesystem(s)",
            cmd.output.display(),
            summary.bytes,
            summary.checksum,
            summary.stats.files,
            summary.stats.extents,
            mib(summary.stats.mapped_bytes),
            summary.stats.devices
        );
        print!("{}", show_text(&manifest, false));
    }
    Ok(if summary.stats.files == 0 { 2 } else { 0 })
}

/// `prewarm run`: replay a manifest.
pub fn run(cmd: &RunCmd) -> Result<u8> {
    let readiness = Readiness::new(cmd.notify);
    let result = run_manifest(cmd, &readiness);
    // Whatever happened, never leave services ordered after us waiting.
    let status = match &result {
        Ok(code) => format!("finished (exit {code})"),
        Err(e) => format!("failed: {e:#}"),
    };
    readiness.ready(&status);
    readiness.status(&status);
    result
}

fn run_manifest(cmd: &RunCmd, readiness: &Readiness) -> Result<u8> {
    let mut manifest_path = cmd.manifest.clone();
    if cmd.kernel_cmdline {
        // PREWARM_CMDLINE stands in for /proc/cmdline (tests).
        let cmdline = std::env::var("PREWARM_CMDLINE")
            .or_else(|_| std::fs::read_to_string("/proc/cmdline"))
            .unwrap_or_default();
        let switch = match cmd.phase {
            Phase::Initrd => "rd.prewarm=0",
            Phase::Root => "prewarm=0",
        };
        if cmdline.split_whitespace().any(|w| w == switch) {
            tracing::info!("disabled by `{switch}` on the kernel command line");
            return Ok(0);
        }
        if let Some(p) = cmdline
            .split_whitespace()
            .find_map(|w| w.strip_prefix("prewarm.manifest="))
        {
            tracing::info!("manifest {p} selected by the kernel command line");
            manifest_path = PathBuf::from(p);
        }
    }
    let bytes = std::fs::read(&manifest_path)
        .with_context(|| format!("reading manifest {}", manifest_path.display()))?;
    let manifest = Manifest::decode(&bytes)
        .with_context(|| format!("manifest {}", manifest_path.display()))?;
    let crc = Manifest::checksum_of(&bytes).unwrap_or(0);
    let mut handover = cmd
        .state
        .as_ref()
        .map(|p| HandoverState::load_or_new(p, crc));

    let mut cfg = config(manifest.plan, &cmd.engine)?;
    let most_urgent = manifest
        .devices
        .iter()
        .flat_map(|d| &d.files)
        .map(|f| f.priority)
        .min();
    let ready_priority = cmd.ready_priority.or(most_urgent).unwrap_or(0);
    if cmd.notify {
        cfg.on_class_done = Some(readiness.on_class_done(ready_priority, cfg.ioprio.clone()));
        readiness.ready_at_the_latest(cmd.ready_timeout);
    }
    readiness.status("finding the filesystems of the manifest");
    let opts = ReplayOptions {
        manifest_path: manifest_path.clone(),
        manifest_crc: crc,
        wait_device: cmd.wait_device,
        max_priority: cmd.max_priority,
        verify: cmd.phase == Phase::Root && !cmd.no_verify,
        allow_grown: cmd.allow_grown,
    };
    let prepared = replay::prepare_manifest(&manifest, &opts, handover.as_ref(), &cfg)?;
    if !prepared.has_work_up_to(ready_priority) {
        // The initrd (or an earlier run) already read the urgent classes.
        if readiness.ready(&format!("classes up to {ready_priority} already hydrated")) {
            cfg.ioprio.store(
                prewarm_core::engine::IOPRIO_IDLE,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
    }
    readiness.status("hydrating");
    let uuids: Vec<Option<String>> = prepared.devices.iter().map(|d| d.uuid.clone()).collect();
    let (code, report) = finish_with_report(prepared, &cfg, &cmd.output)?;
    if let (Some(state), Some(path), Some(report)) = (handover.as_mut(), &cmd.state, &report) {
        for (d, uuid) in report.devices.iter().zip(&uuids) {
            let Some(uuid) = uuid else { continue };
            let chunk = report.plan_config.chunk_size;
            state.record(
                uuid,
                d.chunks_read
                    .iter()
                    .map(|&(s, e)| (s * chunk, (e * chunk).min(d.size))),
            );
        }
        state
            .save(path)
            .with_context(|| format!("writing handover state {}", path.display()))?;
    }
    Ok(code)
}

/// `prewarm show`: print a manifest.
pub fn show(cmd: &ShowCmd) -> Result<u8> {
    let bytes = std::fs::read(&cmd.manifest)
        .with_context(|| format!("reading {}", cmd.manifest.display()))?;
    let manifest =
        Manifest::decode(&bytes).with_context(|| format!("manifest {}", cmd.manifest.display()))?;
    if cmd.json {
        #[derive(Serialize)]
        struct Shown<'a> {
            bytes: usize,
            checksum: String,
            stats: prewarm_core::manifest::ManifestStats,
            #[serde(flatten)]
            manifest: &'a Manifest,
        }
        print_json(&Shown {
            bytes: bytes.len(),
            checksum: format!("{:08x}", Manifest::checksum_of(&bytes).unwrap_or(0)),
            stats: manifest.stats(),
            manifest: &manifest,
        })?;
    } else {
        println!(
            "{}: {} bytes, checksum {:08x}, planned by {} at {} (unix time)",
            cmd.manifest.display(),
            bytes.len(),
            Manifest::checksum_of(&bytes).unwrap_or(0),
            manifest.tool,
            manifest.created_unix
        );
        print!("{}", show_text(&manifest, cmd.files));
    }
    Ok(0)
}

fn show_text(m: &Manifest, files: bool) -> String {
    use std::collections::BTreeMap;
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "  plan: chunk {}, max I/O {}, coalesce gap {}",
        mib(m.plan.chunk_size),
        mib(m.plan.max_io),
        mib(m.plan.coalesce_gap)
    );
    for d in &m.devices {
        let _ = writeln!(
            s,
            "  {} {} ({} bytes, {}-byte blocks, planned on {}): {} files",
            d.fs_type,
            prewarm_core::fsid::format_uuid(&d.uuid),
            d.size,
            d.logical_block_size,
            d.node_hint,
            d.files.len()
        );
        let mut classes: BTreeMap<u32, (u64, u64, u64)> = BTreeMap::new();
        for f in &d.files {
            let c = classes.entry(f.priority).or_default();
            c.0 += 1;
            c.1 += f.extents.len() as u64;
            c.2 += f.extents.iter().map(|e| e.length).sum::<u64>();
        }
        for (prio, (n, ext, bytes)) in classes {
            let _ = writeln!(
                s,
                "    priority {prio}: {n} files, {ext} extents, {}",
                mib(bytes)
            );
        }
        if files {
            for f in &d.files {
                let _ = writeln!(
                    s,
                    "    {:>5} /{} ({} bytes, {} extents, {} file ranges)",
                    f.priority,
                    f.path.display(),
                    f.size,
                    f.extents.len(),
                    f.file_ranges.len()
                );
            }
        }
    }
    s
}

fn plan_config(p: &PlanArgs) -> PlanConfig {
    PlanConfig {
        chunk_size: p.chunk_size,
        coalesce_gap: p.coalesce_gap,
        max_io: p.max_io,
    }
}

/// The pipeline configuration, with SIGTERM/SIGINT and the deadline wired
/// to the stop signal.
fn config(plan: PlanConfig, engine: &EngineArgs) -> Result<Config> {
    let deadline = engine.deadline.map(|d| Instant::now() + d);
    let cancel = install_signals()?;
    if let Some(d) = deadline {
        spawn_watchdog(d);
    }
    Ok(Config {
        plan,
        mode: match engine.mode {
            ModeArg::Full => ReadMode::Full,
            ModeArg::Touch => ReadMode::Touch,
        },
        queue_depth: engine.queue_depth,
        backend: match engine.engine {
            EngineArg::Auto => BackendChoice::Auto,
            EngineArg::Uring => BackendChoice::Uring,
            EngineArg::Pread => BackendChoice::Pread,
        },
        cache: engine.cache,
        stop: StopSignal::new(cancel, deadline),
        on_class_done: Some(Arc::new(|prio| {
            tracing::info!("priority class {prio} hydrated")
        })),
        ..Config::default()
    })
}

/// List files and arguments as entries (paths rebased under `root` when
/// planning an image mounted elsewhere); an unreadable list is a warning.
fn read_sources(sources: &SourceArgs, root: Option<&Path>) -> (Vec<SourceEntry>, Vec<Warning>) {
    let mut entries = Vec::new();
    let mut warnings = Vec::new();
    for list in &sources.lists {
        match source::read_list(list) {
            Ok((e, w)) => {
                entries.extend(e);
                warnings.extend(w);
            }
            Err(e) => warnings.push(Warning::new(
                WarningKind::Unreadable,
                Some(list),
                None,
                format!(
                    "list file: {}",
                    std::error::Error::source(&e).map_or(e.to_string(), |s| s.to_string())
                ),
            )),
        }
    }
    entries.extend(
        sources
            .paths
            .iter()
            .map(|p| SourceEntry::argument(p, sources.priority)),
    );
    if let Some(root) = root {
        for e in &mut entries {
            let rel = e.path.strip_prefix("/").unwrap_or(&e.path).to_path_buf();
            e.path = root.join(rel);
        }
    }
    (entries, warnings)
}

fn print_warnings(warnings: &[Warning]) {
    for w in warnings {
        eprintln!("prewarm: warning: {w}");
    }
}

/// Read (or, in a dry run, just report) and print; returns the exit code.
fn finish(prepared: Prepared, cfg: &Config, output: &OutputArgs) -> Result<u8> {
    finish_with_report(prepared, cfg, output).map(|(code, _)| code)
}

fn finish_with_report(
    prepared: Prepared,
    cfg: &Config,
    output: &OutputArgs,
) -> Result<(u8, Option<Report>)> {
    print_warnings(&prepared.warnings);
    let printed = prepared.warnings.len();
    let report = if output.dry_run {
        prepared.dry_run_report(cfg)
    } else {
        prepared.execute(cfg).context("reading")?
    };
    let code = print_report(&report, printed, output)?;
    Ok((code, (!output.dry_run).then_some(report)))
}

/// Print the warnings after the first `printed`, then the report; returns
/// the exit code.
fn print_report(report: &Report, printed: usize, output: &OutputArgs) -> Result<u8> {
    // Warnings found while mapping or reading (a file that could not be
    // opened again).
    print_warnings(report.warnings.get(printed..).unwrap_or_default());
    if output.json {
        print_json(report)?;
    } else {
        print!("{}", report.summary());
    }
    Ok(report.outcome.exit_code() as u8)
}

/// Pretty JSON on a terminal, one line otherwise (for logs and consoles).
fn print_json<T: Serialize>(value: &T) -> Result<()> {
    let text = if std::io::stdout().is_terminal() {
        serde_json::to_string_pretty(value)
    } else {
        serde_json::to_string(value)
    }
    .context("writing JSON")?;
    println!("{text}");
    Ok(())
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// SIGTERM/SIGINT stop issuing reads; a second one exits at once.
fn install_signals() -> Result<Arc<AtomicBool>> {
    let cancel = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register_conditional_shutdown(sig, 1, cancel.clone())
            .context("installing signal handlers")?;
        signal_hook::flag::register(sig, cancel.clone()).context("installing signal handlers")?;
    }
    Ok(cancel)
}

/// A read blocked in a hung device cannot be interrupted; past the deadline
/// and the grace for reads in flight, exit rather than hold up the boot.
fn spawn_watchdog(deadline: Instant) {
    std::thread::spawn(move || {
        let hard = deadline + STOP_GRACE + Duration::from_secs(3);
        std::thread::sleep(hard.saturating_duration_since(Instant::now()));
        eprintln!("prewarm: reads still blocked past the deadline; exiting");
        std::process::exit(1);
    });
}
