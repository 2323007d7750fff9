//! The commands: each turns parsed arguments into one library call and
//! prints the outcome. Errors carry context naming the file involved; the
//! exit code comes from the report's outcome, or from [`exit_code_of`] for
//! errors.

use std::io::{IsTerminal, Write as _};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::CommandFactory;
use prewarm_core::manifest::{self, ManifestOutcome, ManifestRun, ManifestStats};
use prewarm_core::{
    format_bytes, hydrate as hydrate_sources, BackendChoice, CollectOptions, Config,
    ContainerdStore, ImageRequest, PlanConfig, RateLimit, ReadMode, ReadyPolicy, Report, Sources,
    StopSignal, Warning, STOP_GRACE,
};
use serde::Serialize;

use crate::args::{
    Cli, EngineArg, EngineArgs, ModeArg, OutputArgs, Phase, PlanArgs, PlanCmd, RecordCmd, RunCmd,
    ShowCmd, SourceArgs,
};
use crate::notify::Readiness;
use crate::progress::ProgressDisplay;

/// Exit code of a manifest that cannot be used here.
pub const EXIT_REFUSED: u8 = 3;

/// An error and its causes on one line, `context: cause: cause`. The
/// library's errors already name their cause in their message (for callers
/// that print only the top), so a cause already said is not said again.
pub fn render_error(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// Exit code for an error that ended a command.
pub fn exit_code_of(e: &anyhow::Error) -> u8 {
    match e.downcast_ref::<prewarm_core::Error>() {
        Some(e) if e.is_manifest_refusal() => EXIT_REFUSED,
        _ => 2,
    }
}

/// How the user asked output to look (the global flags).
#[derive(Debug, Clone, Copy)]
pub struct Ui {
    /// `--json`.
    pub json: bool,
    /// `-q/--quiet`.
    pub quiet: bool,
}

/// `prewarm [PATH]...`: map and hydrate now (or, with `--dry-run`, plan).
pub fn hydrate(cli: &Cli, ui: Ui) -> Result<u8> {
    let (sources, output) = (&cli.sources, &cli.output);
    let mut src = read_sources(sources);
    for dev in &cli.device {
        src.add_device(dev, sources.priority);
    }
    if src.is_empty() && sources.lists.is_empty() {
        bail!("nothing to do: give PATHs, --paths LIST, --image REF or --device DEV (see --help)");
    }
    let mut cfg = config(plan_config(&cli.plan), &cli.engine)?;
    cfg.collect.cross_mounts = sources.cross_mounts;
    cfg.collect.fiemap_only = sources.fiemap_only;
    cfg.collect.with_libs = sources.with_libs;
    cfg.dry_run = output.dry_run;
    // Input warnings are known before any mapping: say them now.
    let printed = print_warnings(&src.warnings);
    let bar = ProgressDisplay::start(&mut cfg, ui);
    let report = hydrate_sources(&src, &cfg).context("hydrating");
    bar.finish();
    let report = report?;
    write_metrics(&report, output);
    print_report(&report, printed, ui)
}

/// `prewarm plan`: map once and write a manifest.
pub fn plan(cmd: &PlanCmd, ui: Ui) -> Result<u8> {
    if cmd.sources.paths.is_empty()
        && cmd.sources.lists.is_empty()
        && cmd.sources.images.is_empty()
        && !cmd.sources.all_images
    {
        bail!("nothing to plan: give PATHs, --paths LIST or --image REF (see --help)");
    }
    let cfg = Config {
        plan: plan_config(&cmd.plan),
        collect: CollectOptions {
            cross_mounts: cmd.sources.cross_mounts,
            root: cmd.root.clone(),
            with_libs: cmd.sources.with_libs,
            fiemap_only: cmd.sources.fiemap_only,
        },
        dry_run: true,
        ..Config::default()
    };
    let tool = format!("prewarm {}", crate::args::VERSION);
    let planned =
        manifest::plan_manifest(&read_sources(&cmd.sources), &cfg, &tool).context("mapping")?;
    print_warnings(&planned.warnings);
    planned.write(&cmd.manifest)?;

    #[derive(Serialize)]
    struct Summary<'a> {
        manifest: &'a Path,
        bytes: usize,
        checksum: String,
        #[serde(flatten)]
        stats: ManifestStats,
        warnings: usize,
        #[serde(skip_serializing_if = "<[_]>::is_empty")]
        images: &'a [prewarm_core::ImageReport],
    }
    let summary = Summary {
        manifest: &cmd.manifest,
        bytes: planned.encoded.len(),
        checksum: format!("{:08x}", planned.checksum()),
        stats: planned.manifest.stats(),
        warnings: planned.warnings.len(),
        images: &planned.images,
    };
    // The manifest is written: a closed standard output changes nothing.
    let printed = if ui.json {
        print_json(&summary)
    } else {
        write_stdout(|out| {
            writeln!(
                out,
                "wrote {} ({} bytes, checksum {}): {} files, {} extents, {} mapped on {} filesystem(s)",
                cmd.manifest.display(),
                summary.bytes,
                summary.checksum,
                summary.stats.files,
                summary.stats.extents,
                format_bytes(summary.stats.mapped_bytes),
                summary.stats.devices
            )?;
            // The images resolved are in the manifest, shown with it; the
            // others were warnings.
            out.write_all(planned.manifest.render_text(false).as_bytes())
        })
    };
    if let Err(e) = printed {
        tracing::warn!("{}", render_error(&e));
    }
    Ok(0)
}

/// `prewarm run`: replay a manifest.
pub fn run(cmd: &RunCmd, ui: Ui) -> Result<u8> {
    let readiness = Readiness::new(cmd.notify);
    let result = run_manifest(cmd, &readiness, ui);
    // Whatever happened, never leave services ordered after us waiting.
    let status = match &result {
        Ok(code) => format!("finished (exit {code})"),
        Err(e) => format!("failed: {}", render_error(e)),
    };
    readiness.ready(&status);
    readiness.status(&status);
    result
}

fn run_manifest(cmd: &RunCmd, readiness: &Readiness, ui: Ui) -> Result<u8> {
    let mut cfg = config(PlanConfig::default(), &cmd.engine)?;
    cfg.dry_run = cmd.output.dry_run;
    if cmd.notify {
        let r = readiness.clone();
        cfg.on_class_done = Some(Arc::new(move |prio| {
            tracing::info!("priority class {prio} hydrated");
            r.status(&format!("priority class {prio} hydrated"));
        }));
        let r = readiness.clone();
        cfg.ready = Some(ReadyPolicy::new(
            cmd.ready_priority,
            cmd.ready_timeout,
            move |reason| r.ready(&reason.to_string()),
        ));
    }
    let req = ManifestRun {
        path: cmd.manifest.path(),
        phase: match cmd.phase {
            Phase::Initrd => manifest::Phase::Initrd,
            Phase::Root => manifest::Phase::Root,
        },
        kernel_cmdline: cmd.kernel_cmdline.then(manifest::boot::kernel_cmdline),
        state: cmd.state.clone(),
        max_priority: cmd.max_priority,
        wait_device: cmd.wait_device,
        verify: cmd.phase == Phase::Root && !cmd.no_verify,
        allow_grown: cmd.allow_grown,
    };
    let bar = ProgressDisplay::start(&mut cfg, ui);
    let outcome = manifest::run_manifest(&req, cfg);
    bar.finish();
    match outcome? {
        ManifestOutcome::Disabled(_) => Ok(0),
        ManifestOutcome::Ran(report) => {
            write_metrics(&report, &cmd.output);
            print_report(&report, 0, ui)
        }
    }
}

/// `prewarm show`: print a manifest. A reader that closes early (`| head`)
/// ends the output, not the command.
pub fn show(cmd: &ShowCmd, ui: Ui) -> Result<u8> {
    let path = cmd.manifest.path();
    let loaded = manifest::load(&path)?;
    let checksum = format!("{:08x}", loaded.checksum);
    if ui.json {
        #[derive(Serialize)]
        struct Shown<'a> {
            bytes: usize,
            checksum: String,
            stats: ManifestStats,
            #[serde(flatten)]
            manifest: &'a manifest::Manifest,
        }
        print_json(&Shown {
            bytes: loaded.bytes,
            checksum,
            stats: loaded.manifest.stats(),
            manifest: &loaded.manifest,
        })?;
    } else {
        write_stdout(|out| {
            writeln!(
                out,
                "{}: {} bytes, checksum {checksum}, planned by {} at {} (unix time)",
                path.display(),
                loaded.bytes,
                loaded.manifest.tool,
                loaded.manifest.created_unix
            )?;
            out.write_all(loaded.manifest.render_text(cmd.files).as_bytes())
        })?;
    }
    Ok(0)
}

/// `prewarm record`: watch until a stop condition, then write the
/// recording. SIGTERM/SIGINT end the watch (a second one exits at once).
pub fn record(cmd: &RecordCmd, ui: Ui) -> Result<u8> {
    let opts = prewarm_core::record::RecordOptions {
        mounts: cmd.mounts.clone(),
        until: cmd.until.clone(),
        settle: cmd.settle,
        duration: cmd.duration,
        class_width: cmd.class_width,
        stop: StopSignal::new(install_signals()?, None),
        resident_before: !cmd.only_events,
    };
    let recording = prewarm_core::record::record(&opts)?;
    recording.write(&cmd.output)?;
    let s = &recording.stats;
    let printed = if ui.json {
        #[derive(Serialize)]
        struct Summary<'a> {
            recording: &'a Path,
            ended: prewarm_core::record::RecordEnd,
            #[serde(flatten)]
            stats: &'a prewarm_core::record::RecordStats,
        }
        print_json(&Summary {
            recording: &cmd.output,
            ended: recording.ended,
            stats: s,
        })
    } else {
        write_stdout(|out| {
            writeln!(
                out,
                "wrote {}: {} files, {} in their read ranges, in {} ms (ended by {}); {} events ({:.0}/s), {} files seen, {} with nothing cached, {} changed, {} over the cap, {} queue overflows, {} read and evicted before the end (kept from earlier looks), {} files first read by the --until units once active (kept urgent); recorder: {:.0} ms CPU, {} KiB peak RSS",
                cmd.output.display(),
                s.files_recorded,
                format_bytes(s.bytes_recorded),
                s.elapsed_ms,
                recording.ended,
                s.events,
                s.events_per_s,
                s.files_seen,
                s.not_resident,
                s.changed,
                s.over_cap,
                s.overflows,
                format_bytes(s.bytes_evicted),
                s.until_unit_files,
                s.cpu_ms,
                s.max_rss_kib
            )
        })
    };
    if let Err(e) = printed {
        tracing::warn!("{e:#}");
    }
    if s.overflows > 0 {
        tracing::warn!(
            "the kernel's event queue overflowed {} times: some first accesses were lost",
            s.overflows
        );
    }
    Ok(0)
}

/// `prewarm completions SHELL`: the completion script, from the clap
/// definitions.
pub fn completions(shell: clap_complete::Shell) -> Result<u8> {
    let mut cmd = crate::args::Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "prewarm", &mut script);
    write_generated(&script, "the completion script")
}

/// `prewarm manpage`: prewarm(1), from the clap definitions.
pub fn manpage() -> Result<u8> {
    let mut page = Vec::new();
    clap_mangen::Man::new(crate::args::Cli::command())
        .render(&mut page)
        .context("rendering the man page")?;
    write_generated(&page, "the man page")
}

/// Write generated text to standard output (a reader that closed early
/// ends the output).
fn write_generated(bytes: &[u8], what: &str) -> Result<u8> {
    write_stdout(|out| out.write_all(bytes)).with_context(|| format!("writing {what}"))?;
    Ok(0)
}

/// `--metrics-file`: a failure to write it is logged, never the run's
/// failure.
fn write_metrics(report: &Report, output: &OutputArgs) {
    if let Some(path) = &output.metrics_file {
        if let Err(e) = prewarm_core::metrics::write_metrics(report, path) {
            tracing::error!("{e}");
        }
    }
}

fn plan_config(p: &PlanArgs) -> PlanConfig {
    PlanConfig {
        chunk_size: p.chunk_size,
        coalesce_gap: p.coalesce_gap,
        max_io: p.max_io,
    }
}

/// The run configuration, with SIGTERM/SIGINT and the deadline wired to the
/// stop signal.
fn config(plan: PlanConfig, engine: &EngineArgs) -> Result<Config> {
    let deadline = engine.deadline.map(|d| Instant::now() + d);
    let cancel = install_signals()?;
    spawn_watchdog(cancel.clone(), deadline);
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
        rate_limit: RateLimit {
            bytes_per_sec: engine.max_rate,
            reads_per_sec: engine.max_iops,
        },
        metadata_readahead: engine
            .metadata_readahead
            .unwrap_or(prewarm_core::DEFAULT_METADATA_READAHEAD),
        metadata_readahead_xfs: engine.metadata_readahead.is_some(),
        stop: StopSignal::new(cancel, deadline),
        on_class_done: Some(Arc::new(|prio| {
            tracing::info!("priority class {prio} hydrated")
        })),
        ..Config::default()
    })
}

/// The lists and arguments as sources (an unreadable list is a warning).
fn read_sources(args: &SourceArgs) -> Sources {
    let mut sources = Sources::default();
    for list in &args.lists {
        sources.add_list(list);
    }
    for path in &args.paths {
        sources.add_path(path, args.priority);
    }
    for reference in &args.images {
        sources.add_image(ImageRequest::Reference(reference.clone()), args.priority);
    }
    if args.all_images {
        sources.add_image(ImageRequest::All, args.priority);
    }
    sources.containerd = ContainerdStore {
        root: args.containerd.containerd_root.clone(),
        namespace: args.containerd.namespace.clone(),
        snapshotter: args.containerd.snapshotter.clone(),
    };
    sources
}

/// Print warnings on standard error, at most
/// [`prewarm_core::report::WARNINGS_KEPT_PER_KIND`] of
/// each kind (the report keeps as many); returns how many were printed. A
/// closed standard error is ignored: the warnings are in the report too.
/// Warnings go through `tracing`, at WARN: one line each, a journald
/// priority under systemd, no colour outside a terminal.
fn print_warnings(warnings: &[Warning]) -> usize {
    let kept = prewarm_core::report::cap_warnings(warnings);
    for w in &kept {
        tracing::warn!("{w}");
    }
    kept.len()
}

/// Print the report's warnings after the first `printed` (those printed
/// before the run), then the report; returns the run's exit code, which a
/// closed or failing standard output does not change (a manifest run has
/// saved its state before this).
fn print_report(report: &Report, printed: usize, ui: Ui) -> Result<u8> {
    for w in report.warnings.get(printed..).unwrap_or_default() {
        tracing::warn!("{w}");
    }
    for omitted in &report.warnings_omitted {
        tracing::warn!("{omitted}");
    }
    let printed = if ui.json {
        print_json(report)
    } else {
        write_stdout(|out| out.write_all(report.summary().as_bytes()))
    };
    if let Err(e) = printed {
        tracing::warn!("{}", render_error(&e));
    }
    Ok(report.outcome.exit_code() as u8)
}

/// Pretty JSON on a terminal, one line otherwise (for logs and consoles),
/// streamed to standard output.
fn print_json<T: Serialize>(value: &T) -> Result<()> {
    let pretty = std::io::stdout().is_terminal();
    write_stdout(|out| {
        if pretty {
            serde_json::to_writer_pretty(&mut *out, value)?;
        } else {
            serde_json::to_writer(&mut *out, value)?;
        }
        writeln!(out)
    })
    .context("writing JSON")
}

/// Write to standard output through `write` and flush. A reader that has
/// gone away (EPIPE: `prewarm show --files | head`) is the end of the
/// output, not an error; any other failure is one.
fn write_stdout(
    write: impl FnOnce(&mut std::io::BufWriter<std::io::StdoutLock<'static>>) -> std::io::Result<()>,
) -> Result<()> {
    let mut out = std::io::BufWriter::with_capacity(64 << 10, std::io::stdout().lock());
    let result = write(&mut out).and_then(|()| out.flush());
    match result {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            // Drop what is buffered: writing it again would fail the same way.
            let _ = out.into_parts();
            Ok(())
        }
        other => other.context("writing to standard output"),
    }
}

/// The flag SIGTERM and SIGINT set, for the run's stop signal; a second
/// signal exits at once.
///
/// One thread of its own takes them, waiting in `sigwait`, and every
/// thread started after this call has them blocked. Otherwise the kernel
/// hands a process-wide signal to any thread that does not block it, and
/// if that thread is asleep in a read of the lazy volume it is taken only
/// when the read returns, while the engine goes on issuing: runs stopped
/// while the lazy volume held every read did up to 94 reads more than the
/// 32 then in flight, and a stop sent while that thread waited on a device
/// that never answers would never have been seen. The handlers stay
/// installed for threads started before this call.
fn install_signals() -> Result<Arc<AtomicBool>> {
    use nix::sys::signal::{SigSet, Signal};
    static CANCEL: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();
    if let Some(cancel) = CANCEL.get() {
        return Ok(cancel.clone());
    }
    let cancel = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register_conditional_shutdown(sig, 1, cancel.clone())
            .context("installing signal handlers")?;
        signal_hook::flag::register(sig, cancel.clone()).context("installing signal handlers")?;
    }
    let mut stops = SigSet::empty();
    stops.add(Signal::SIGTERM);
    stops.add(Signal::SIGINT);
    // Blocked in this thread first, so that the waiting thread starts with
    // them blocked too, as `sigwait` wants.
    if stops.thread_block().is_ok() {
        let flag = cancel.clone();
        let waiter = std::thread::Builder::new()
            .name("prewarm-signals".into())
            .spawn(move || loop {
                if stops.wait().is_ok() && flag.swap(true, Ordering::SeqCst) {
                    std::process::exit(1);
                }
            });
        // Without the thread, the handlers take them, as before.
        if let Err(e) = waiter {
            tracing::warn!("no thread for signals ({e}): a stop may wait for a read to return");
            let _ = stops.thread_unblock();
        }
    }
    Ok(CANCEL.get_or_init(|| cancel).clone())
}

/// The last resort. Every phase looks at the stop signal and ends within
/// the grace for reads in flight; should something still block (a read in a
/// hung device cannot be interrupted), exit this long after the stop rather
/// than hold up the boot.
const HARD_STOP: Duration = Duration::from_secs(1);

/// Watch for a stop (SIGTERM/SIGINT or the deadline); once it came, give
/// the run [`STOP_GRACE`] and [`HARD_STOP`] more, then exit.
fn spawn_watchdog(cancel: Arc<AtomicBool>, deadline: Option<Instant>) {
    std::thread::spawn(move || {
        while !cancel.load(Ordering::Relaxed) && deadline.is_none_or(|d| Instant::now() < d) {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(STOP_GRACE + HARD_STOP);
        tracing::error!(
            "still blocked {:?} after the stop; exiting",
            STOP_GRACE + HARD_STOP
        );
        std::process::exit(1);
    });
}
