//! `prewarm-testbed`: serves a backing image as a lazily hydrated, read-only
//! FUSE file that behaves like a snapshot-restored EBS volume, and talks to a
//! running instance (`stats`, `reset`, `set-fail`).
//!
//! The binary owns only command-line handling, mounting/unmounting and signal
//! handling; the model lives in `prewarm_benches::lazy`, the FUSE adapter in
//! `prewarm_benches::fuse`, the control protocol in `prewarm_benches::control`.

#![forbid(unsafe_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use fuser::MountOption;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use prewarm_benches::control::{self, Endpoint, Request};
use prewarm_benches::fuse::{FsOptions, TestbedFs};
use prewarm_benches::lazy::{ChunkSet, LazyConfig, LazyVolume};
use prewarm_core::parse_size;

#[derive(Parser, Debug)]
#[command(
    name = "prewarm-testbed",
    about = "Lazy-volume testbed: a FUSE file that hydrates chunk by chunk like a snapshot-restored EBS volume"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Mount the testbed and serve until unmounted or SIGTERM/SIGINT.
    Serve(ServeArgs),
    /// Print the counters as JSON.
    Stats {
        #[command(flatten)]
        target: Target,
        /// Omit the hydrated-chunk list and the hydration order.
        #[arg(long)]
        brief: bool,
    },
    /// Make every chunk cold again and zero the counters.
    Reset {
        #[command(flatten)]
        target: Target,
    },
    /// Replace the set of chunks whose reads fail with EIO ("" clears it).
    SetFail {
        #[command(flatten)]
        target: Target,
        /// Chunk list, e.g. 3,17,100-110.
        #[arg(long, allow_hyphen_values = true)]
        chunks: String,
    },
    /// Replace the set of chunks whose reads never answer ("" clears it and
    /// releases the reads waiting).
    SetHang {
        #[command(flatten)]
        target: Target,
        /// Chunk list, e.g. 3,17,100-110.
        #[arg(long, allow_hyphen_values = true)]
        chunks: String,
    },
}

#[derive(Args, Debug)]
struct Target {
    /// Mount point of the running testbed (its control socket is derived from it).
    #[arg(long, required_unless_present = "socket")]
    mount: Option<PathBuf>,
    /// Control socket file, when the testbed was started with --socket.
    #[arg(long)]
    socket: Option<PathBuf>,
}

impl Target {
    fn endpoint(&self) -> Result<Endpoint> {
        match (&self.socket, &self.mount) {
            (Some(s), _) => Ok(Endpoint::Path(s.clone())),
            (None, Some(m)) => Ok(Endpoint::for_mount(m)?),
            (None, None) => bail!("give --mount or --socket"),
        }
    }
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// Backing image (opened read-only, never written).
    #[arg(long)]
    image: PathBuf,
    /// Empty directory to mount on.
    #[arg(long)]
    mount: PathBuf,
    /// Name of the image file inside the mount.
    #[arg(long, default_value = "disk.img")]
    file_name: String,
    /// Hydration chunk size (bytes, or with K/M suffix).
    #[arg(long, default_value = "512K", value_parser = parse_size)]
    chunk_size: u64,
    /// Fetch latency of a cold chunk, milliseconds.
    #[arg(long, default_value_t = 4.0)]
    latency_ms: f64,
    /// Extra uniform random latency in [0, jitter], milliseconds.
    #[arg(long, default_value_t = 0.0)]
    jitter_ms: f64,
    /// Maximum chunk fetches in flight.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Cap on fetched MiB per second (default: none).
    #[arg(long)]
    max_mibps: Option<f64>,
    /// Cap on fetches per second (default: none).
    #[arg(long)]
    max_iops: Option<u64>,
    /// Chunks whose reads fail with EIO, e.g. 3,17,100-110.
    #[arg(long, default_value = "")]
    fail_chunks: String,
    /// Chunks whose reads never answer (until `set-hang --chunks ""`).
    #[arg(long, default_value = "")]
    hang_chunks: String,
    /// Worker threads serving reads that wait for fetches (at least --concurrency).
    #[arg(long, default_value_t = 64)]
    workers: usize,
    /// FUSE dispatcher threads (each gets its own cloned /dev/fuse fd).
    #[arg(long, default_value_t = 2)]
    fuse_threads: usize,
    /// Kernel max_background (async requests in flight); congestion threshold is 3/4 of it.
    #[arg(long, default_value_t = 256)]
    max_background: u16,
    /// Control socket file instead of the abstract socket derived from --mount.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// File to create once the mount is up (removed on exit).
    #[arg(long)]
    ready_file: Option<PathBuf>,
}

fn duration_ms(ms: f64, what: &str) -> Result<Duration> {
    if !ms.is_finite() || ms < 0.0 {
        bail!("--{what} must be a non-negative number of milliseconds, got {ms}");
    }
    Ok(Duration::from_secs_f64(ms / 1000.0))
}

fn lazy_config(a: &ServeArgs) -> Result<LazyConfig> {
    let max_bytes_per_sec = match a.max_mibps {
        None => None,
        Some(m) if m.is_finite() && m > 0.0 => Some((m * 1024.0 * 1024.0) as u64),
        Some(m) => bail!("--max-mibps must be positive, got {m}"),
    };
    Ok(LazyConfig {
        chunk_size: a.chunk_size,
        latency: duration_ms(a.latency_ms, "latency-ms")?,
        jitter: duration_ms(a.jitter_ms, "jitter-ms")?,
        concurrency: a.concurrency,
        max_bytes_per_sec,
        max_fetches_per_sec: a.max_iops,
        fail_chunks: a
            .fail_chunks
            .parse::<ChunkSet>()
            .context("parsing --fail-chunks")?,
        hang_chunks: a
            .hang_chunks
            .parse::<ChunkSet>()
            .context("parsing --hang-chunks")?,
    })
}

/// Unmounts `mount`, falling back to a lazy detach (e.g. while a loop device
/// still holds the file open) followed by exiting, which closes /dev/fuse and
/// aborts the connection.
fn shut_down(unmounter: &mut fuser::SessionUnmounter, mount: &Path, ready: Option<&Path>) {
    match unmounter.unmount() {
        Ok(()) => {}
        Err(e) => {
            eprintln!(
                "prewarm-testbed: unmount {} failed ({e}); detaching lazily and exiting",
                mount.display()
            );
            let status = std::process::Command::new("umount")
                .arg("-l")
                .arg(mount)
                .status();
            if let Err(e) = status {
                eprintln!("prewarm-testbed: umount -l: {e}");
            }
            if let Some(r) = ready {
                let _ = std::fs::remove_file(r);
            }
            std::process::exit(1);
        }
    }
}

fn serve(a: ServeArgs) -> Result<()> {
    let cfg = lazy_config(&a)?;
    // A fetch sleeps until its deadline; the kernel's default timer slack
    // (50 µs) would make every fetch that much longer than configured, 1.2 %
    // of 4 ms, for every reader alike. Threads inherit the slack of the
    // thread that creates them, so set it before any is started.
    if let Err(e) = nix::sys::prctl::set_timerslack(1) {
        eprintln!("prewarm-testbed: setting the timer slack: {e} (fetches may overrun)");
    }
    let volume = Arc::new(
        LazyVolume::open(&a.image, cfg)
            .with_context(|| format!("opening backing image {}", a.image.display()))?,
    );
    let mount = a
        .mount
        .canonicalize()
        .with_context(|| format!("mount point {}", a.mount.display()))?;
    let endpoint = match &a.socket {
        Some(p) => Endpoint::Path(p.clone()),
        None => Endpoint::for_mount(&mount)?,
    };
    let listener = endpoint
        .bind()
        .context("binding the control socket (is a testbed already serving this mount?)")?;
    {
        let volume = Arc::clone(&volume);
        std::thread::Builder::new()
            .name("testbed-control".into())
            .spawn(move || control::serve(listener, volume))
            .context("spawning the control thread")?;
    }

    let fs_opts = FsOptions {
        file_name: a.file_name.clone(),
        workers: a.workers,
        max_background: a.max_background,
    };
    let fs = TestbedFs::new(Arc::clone(&volume), &a.image, fs_opts)
        .context("starting the FUSE worker pool")?;
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::NoAtime,
        MountOption::FSName("prewarm-testbed".into()),
        MountOption::Subtype("prewarm-testbed".into()),
    ];
    config.n_threads = Some(a.fuse_threads.max(1));
    config.clone_fd = a.fuse_threads > 1;
    let mut session = fuser::Session::new(fs, &mount, &config)
        .with_context(|| format!("mounting FUSE at {}", mount.display()))?;

    let mut unmounter = session.unmount_callable();
    let mut signals =
        Signals::new([SIGTERM, SIGINT, SIGHUP]).context("installing signal handlers")?;
    {
        let mount = mount.clone();
        let ready = a.ready_file.clone();
        std::thread::Builder::new()
            .name("testbed-signals".into())
            .spawn(move || {
                if let Some(sig) = signals.forever().next() {
                    eprintln!("prewarm-testbed: signal {sig}, unmounting");
                    shut_down(&mut unmounter, &mount, ready.as_deref());
                }
            })
            .context("spawning the signal thread")?;
    }

    if let Some(r) = &a.ready_file {
        std::fs::write(r, format!("{}\n", std::process::id()))
            .with_context(|| format!("writing ready file {}", r.display()))?;
    }
    let image_path = mount.join(&a.file_name);
    {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "ready file={} size={} chunks={} control={}",
            image_path.display(),
            volume.size(),
            volume.chunk_count(),
            endpoint
        )
        .and_then(|()| out.flush())
        .context("writing to stdout")?;
    }

    let res = session.run();
    if let Some(r) = &a.ready_file {
        let _ = std::fs::remove_file(r);
    }
    if let Endpoint::Path(p) = &endpoint {
        let _ = std::fs::remove_file(p);
    }
    res.context("FUSE session failed")?;
    Ok(())
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(v).context("encoding JSON")?;
    println!("{text}");
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Serve(a) => serve(a),
        Cmd::Stats { target, brief } => {
            let resp = control::call(&target.endpoint()?, &Request::Stats { brief })?;
            print_json(&resp.stats)
        }
        Cmd::Reset { target } => {
            let resp = control::call(&target.endpoint()?, &Request::Reset)?;
            print_json(&resp.stats)
        }
        Cmd::SetFail { target, chunks } => {
            let resp = control::call(&target.endpoint()?, &Request::SetFailChunks { chunks })?;
            print_json(&resp.stats)
        }
        Cmd::SetHang { target, chunks } => {
            let resp = control::call(&target.endpoint()?, &Request::SetHangChunks { chunks })?;
            print_json(&resp.stats)
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("prewarm-testbed: {e:#}");
            ExitCode::FAILURE
        }
    }
}
