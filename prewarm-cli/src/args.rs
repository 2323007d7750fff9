//! The command line: clap's types, and nothing else. Every option's help
//! text is the user's documentation; `commands` turns them into library
//! calls.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use prewarm_core::{parse_size, DEFAULT_PRIORITY};

/// Hydrate the file extents that matter first on a lazily loaded
/// (snapshot-restored) block device, with many reads in flight.
#[derive(Parser, Debug)]
#[command(
    name = "prewarm",
    version = VERSION,
    about,
    long_about = None,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub sources: SourceArgs,

    #[command(flatten)]
    pub plan: PlanArgs,

    #[command(flatten)]
    pub engine: EngineArgs,

    #[command(flatten)]
    pub output: OutputArgs,

    /// More logging (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// Only errors on standard error.
    #[arg(long, conflicts_with = "verbose", global = true)]
    pub quiet: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Map files once (at image build time) and write a boot manifest.
    Plan(PlanCmd),
    /// Replay a boot manifest: find the filesystem by UUID and hydrate its
    /// planned chunks without mapping any file.
    Run(RunCmd),
    /// Print a boot manifest.
    Show(ShowCmd),
    /// Print a shell completion script (e.g. `prewarm completions bash >
    /// /usr/share/bash-completion/completions/prewarm`).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page, prewarm(1), generated from these options (roff).
    Manpage,
}

/// `0.1.0 (commit abcdef012345)`: the version, and the commit it was built
/// from (`unknown` outside a git checkout), so a report or a bug names the
/// exact build.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("PREWARM_COMMIT"),
    ")"
);

/// What to hydrate.
#[derive(Args, Debug, Default)]
pub struct SourceArgs {
    /// Files or directories to hydrate (a directory means every regular file
    /// under it). Glob patterns are expanded.
    #[arg(value_name = "PATH")]
    pub paths: Vec<PathBuf>,

    /// Read paths from a list file: one `[PRIORITY] /absolute/path` per line,
    /// `#` comments; `-` reads standard input. May be repeated.
    #[arg(short = 'p', long = "paths", value_name = "LIST")]
    pub lists: Vec<PathBuf>,

    /// Hydrate a whole block device (a full-volume sweep). May be repeated.
    #[arg(long, value_name = "DEV")]
    pub device: Vec<PathBuf>,

    /// Priority of PATH arguments (lower runs first).
    #[arg(long, default_value_t = DEFAULT_PRIORITY)]
    pub priority: u32,

    /// Let directory walks cross into other mounted filesystems.
    #[arg(long)]
    pub cross_mounts: bool,

    /// Also hydrate what each ELF file needs to start: its interpreter and
    /// shared libraries, as the dynamic loader finds them (RPATH, RUNPATH,
    /// /etc/ld.so.cache, default directories; not LD_LIBRARY_PATH, nor
    /// dlopen'ed ones), and a #! script's interpreter; at the file's
    /// priority.
    #[arg(long)]
    pub with_libs: bool,
}

/// How reads are planned.
#[derive(Args, Debug)]
pub struct PlanArgs {
    /// Hydration chunk: extents are widened to it (EBS fetches 512 KiB).
    #[arg(long, value_parser = parse_size, default_value = "512K")]
    pub chunk_size: u64,

    /// Largest single read.
    #[arg(long, value_parser = parse_size, default_value = "1M")]
    pub max_io: u64,

    /// Join ranges whose gap is smaller than this (0: only adjacent chunks).
    #[arg(long, value_parser = parse_size, default_value = "0")]
    pub coalesce_gap: u64,
}

/// How reads are issued.
#[derive(Args, Debug)]
pub struct EngineArgs {
    /// Reads kept in flight.
    #[arg(short = 'q', long, default_value_t = prewarm_core::DEFAULT_QUEUE_DEPTH)]
    pub queue_depth: u32,

    /// `full` reads every planned byte; `touch` reads one block per chunk.
    #[arg(long, value_enum, default_value_t = ModeArg::Full)]
    pub mode: ModeArg,

    /// I/O engine: io_uring with pread fallback, or one of them.
    #[arg(long, value_enum, env = "PREWARM_ENGINE", default_value_t = EngineArg::Auto)]
    pub engine: EngineArg,

    /// Also warm the files' own page cache after hydrating (device reads do
    /// not fill it): the files are read through the page cache.
    #[arg(long)]
    pub cache: bool,

    /// Stop issuing reads after this long (e.g. `30s`, `2m`); the process
    /// exits at most a few seconds later whatever the device does.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub deadline: Option<Duration>,
}

/// What is printed.
#[derive(Args, Debug)]
pub struct OutputArgs {
    /// Plan and print, read nothing.
    #[arg(short = 'n', long)]
    pub dry_run: bool,

    /// Print the report as JSON on standard output (one line unless stdout
    /// is a terminal).
    #[arg(long)]
    pub json: bool,

    /// Also write the report's figures as Prometheus metrics to this file
    /// (node_exporter's textfile collector format, written atomically).
    #[arg(long, value_name = "PATH")]
    pub metrics_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct PlanCmd {
    #[command(flatten)]
    pub sources: SourceArgs,

    #[command(flatten)]
    pub plan: PlanArgs,

    /// Resolve the list's absolute paths under this directory (the image's
    /// root filesystem, mounted here at build time).
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,

    /// Where to write the manifest.
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,

    /// Print the manifest's summary as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Phase {
    /// In the initrd: the root is not mounted, files are not checked.
    Initrd,
    /// In the real root: files are checked against the manifest.
    Root,
}

#[derive(Args, Debug)]
pub struct RunCmd {
    /// The manifest written by `prewarm plan`.
    #[arg(
        short,
        long,
        value_name = "FILE",
        default_value = "/etc/prewarm/boot.manifest"
    )]
    pub manifest: PathBuf,

    /// Boot phase: decides whether files are checked and which kernel
    /// command line switch (`rd.prewarm=0` / `prewarm=0`) disables the run.
    #[arg(long, value_enum, default_value_t = Phase::Root)]
    pub phase: Phase,

    /// Handover state: chunks recorded there are skipped, chunks read are
    /// added (keep it under /run, which survives switch-root).
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,

    /// Only hydrate classes of at most this priority.
    #[arg(long, value_name = "N", env = "PREWARM_MAX_PRIORITY")]
    pub max_priority: Option<u32>,

    /// With --notify: READY once every class up to this priority is
    /// hydrated (default: the manifest's most urgent class).
    #[arg(long, value_name = "N")]
    pub ready_priority: Option<u32>,

    /// How long to wait for the filesystem's device to appear.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    pub wait_device: Duration,

    /// Tell systemd READY=1 once the most urgent class is hydrated (or at
    /// `--ready-timeout`), then carry on with the rest at idle I/O priority.
    #[arg(long)]
    pub notify: bool,

    /// With --notify: say READY after this long even if the most urgent
    /// class is not done, so dependent services never wait longer.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub ready_timeout: Duration,

    /// Honour `prewarm=0` / `rd.prewarm=0` and `prewarm.manifest=PATH` on the
    /// kernel command line.
    #[arg(long)]
    pub kernel_cmdline: bool,

    /// Do not check files against the manifest (replay it as recorded).
    #[arg(long)]
    pub no_verify: bool,

    /// Accept a device larger than the manifest's (a volume resized at
    /// launch whose filesystem was grown in place keeps its blocks where
    /// they were). Without it any size difference is refused (exit 3).
    #[arg(long)]
    pub allow_grown: bool,

    #[command(flatten)]
    pub engine: EngineArgs,

    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Args, Debug)]
pub struct ShowCmd {
    /// The manifest.
    #[arg(value_name = "FILE")]
    pub manifest: PathBuf,

    /// Print the whole manifest as JSON.
    #[arg(long)]
    pub json: bool,

    /// Also list every file.
    #[arg(long)]
    pub files: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ModeArg {
    Full,
    Touch,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum EngineArg {
    Auto,
    Uring,
    Pread,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prewarm_core::{DEFAULT_CHUNK_SIZE, DEFAULT_MAX_IO};

    #[test]
    fn defaults_match_the_library() {
        let cli = Cli::parse_from(["prewarm", "/bin/sh"]);
        assert_eq!(cli.plan.chunk_size, DEFAULT_CHUNK_SIZE);
        assert_eq!(cli.plan.max_io, DEFAULT_MAX_IO);
        assert!(cli.command.is_none());
    }

    #[test]
    fn subcommands_parse() {
        let cli = Cli::parse_from([
            "prewarm",
            "run",
            "--manifest",
            "m",
            "--phase",
            "initrd",
            "--max-priority",
            "20",
        ]);
        assert!(matches!(
            cli.command,
            Some(Command::Run(RunCmd {
                phase: Phase::Initrd,
                max_priority: Some(20),
                ..
            }))
        ));
        let cli = Cli::parse_from(["prewarm", "plan", "--root", "/mnt", "-p", "l", "-o", "out"]);
        assert!(matches!(cli.command, Some(Command::Plan(_))));
        assert!(Cli::try_parse_from(["prewarm", "--json", "plan", "-o", "x"]).is_err());
    }
}
