//! The command line: clap's types, and nothing else. Every option's help
//! text is the user's documentation; `commands` turns them into library
//! calls.
//!
//! Conventions, decided once (docs/design.md, "Command line"):
//! * `-q` is `--quiet`, as in grep, systemctl and vmtouch; the queue depth
//!   is `--queue-depth` (`-Q`, or fio's `--iodepth`).
//! * `--json`, `--quiet` and `-v` are global: before or after the
//!   subcommand.
//! * A manifest is named the same way everywhere: `-m/--manifest FILE`
//!   (`run` and `show` also take it as their one positional argument,
//!   `plan` also as `-o/--output`).
//! * Each command offers only the options it accepts (`plan` has no
//!   `--device`: a manifest holds files).
//! * A path that is also a command's name (`run`, `plan`, `show`, ...) is
//!   given after `--` or as `./run`; the main command's paths are files,
//!   and `prewarm --paths list.txt` stays as it is.

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
    // Not `args_conflicts_with_subcommands`: it would make `prewarm --json
    // show FILE` read `show` as a PATH. `Cli::parse_checked` rejects the
    // main command's options beside a subcommand instead.
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub sources: SourceArgs,

    /// Hydrate a whole block device (a full-volume sweep). May be repeated.
    #[arg(long, value_name = "DEV")]
    pub device: Vec<PathBuf>,

    #[command(flatten)]
    pub plan: PlanArgs,

    #[command(flatten)]
    pub engine: EngineArgs,

    #[command(flatten)]
    pub output: OutputArgs,

    /// Print the report (or the manifest, or the plan's summary) as JSON on
    /// standard output: one line, pretty on a terminal. Before or after the
    /// subcommand.
    #[arg(long, global = true)]
    pub json: bool,

    /// More logging (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// Only errors on standard error (no progress bar either).
    #[arg(short, long, conflicts_with = "verbose", global = true)]
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
    /// Record what every process reads on some filesystems (fanotify, then
    /// the page cache) and write it as a list with byte ranges, in
    /// first-access order, for `prewarm plan --paths`.
    Record(RecordCmd),
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

impl Cli {
    /// Parse the command line (exiting with a usage error as clap does),
    /// refusing the main command's own options beside a subcommand: `prewarm
    /// --paths l run` or `prewarm /a/run run` would otherwise drop them
    /// silently. The global options (`--json`, `-q`, `-v`) go anywhere.
    pub fn parse_checked() -> Self {
        Self::try_parse_checked_from(std::env::args_os()).unwrap_or_else(|e| e.exit())
    }

    /// [`Cli::parse_checked`], returning the error.
    pub fn try_parse_checked_from(
        args: impl IntoIterator<Item = impl Into<std::ffi::OsString> + Clone>,
    ) -> Result<Self, clap::Error> {
        use clap::parser::ValueSource;
        use clap::{CommandFactory, FromArgMatches};
        let mut cmd = Cli::command();
        let matches = cmd.try_get_matches_from_mut(args)?;
        if let Some((sub, _)) = matches.subcommand() {
            let misplaced: Vec<String> = cmd
                .get_arguments()
                .filter(|a| !a.is_global_set())
                .filter(|a| {
                    matches.value_source(a.get_id().as_str()) == Some(ValueSource::CommandLine)
                })
                .map(|a| match a.get_long() {
                    Some(long) => format!("--{long}"),
                    None => a.get_id().to_string().to_uppercase(),
                })
                .collect();
            if !misplaced.is_empty() {
                return Err(cmd.error(
                    clap::error::ErrorKind::ArgumentConflict,
                    format!(
                        "{} cannot be used with the `{sub}` command (options go after the \
                         command; a file named `{sub}` is given as `./{sub}` or after `--`)",
                        misplaced.join(", ")
                    ),
                ));
            }
        }
        Cli::from_arg_matches(&matches).map_err(|e| e.format(&mut cmd))
    }
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

    /// Priority of PATH arguments (lower runs first).
    #[arg(long, default_value_t = DEFAULT_PRIORITY)]
    pub priority: u32,

    /// Let directory walks cross into other mounted filesystems.
    #[arg(long)]
    pub cross_mounts: bool,

    /// Map every walked file by opening it and asking FIEMAP. By default
    /// a walk on ext4 maps a file unchanged since mount from its inode in
    /// the inode tables, without opening it (half the CPU of a cold walk).
    #[arg(long)]
    pub fiemap_only: bool,

    /// Hydrate a container image of containerd's store, by reference
    /// (`busybox`, `registry.example.com/app:v1`, `name@sha256:...`): its
    /// layers' snapshot directories (top layer first) and the database and
    /// content files containerd reads to start it, at --priority. Read
    /// from containerd's files; no daemon needed. May be repeated.
    #[arg(long = "image", value_name = "REF")]
    pub images: Vec<String>,

    /// Hydrate every image of the namespace, as --image does.
    #[arg(long)]
    pub all_images: bool,

    /// Also hydrate what each ELF file needs to start: its interpreter and
    /// shared libraries, as the dynamic loader finds them (RPATH, RUNPATH,
    /// /etc/ld.so.cache, default directories; not LD_LIBRARY_PATH, nor
    /// dlopen'ed ones), and a #! script's interpreter; at the file's
    /// priority.
    #[arg(long)]
    pub with_libs: bool,

    #[command(flatten)]
    pub containerd: ContainerdArgs,
}

/// Where container images (--image) are read from.
#[derive(Args, Debug, Default)]
pub struct ContainerdArgs {
    /// containerd's root directory (under `plan --root`, the image's).
    #[arg(long, value_name = "DIR", default_value = "/var/lib/containerd")]
    pub containerd_root: PathBuf,

    /// The containerd namespace of the images (the kubelet's is `k8s.io`).
    #[arg(long, value_name = "NS", default_value = "k8s.io")]
    pub namespace: String,

    /// The snapshotter that unpacked them.
    #[arg(long, value_name = "NAME", default_value = "overlayfs")]
    pub snapshotter: String,
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
    #[arg(
        short = 'Q',
        long,
        visible_alias = "iodepth",
        default_value_t = prewarm_core::DEFAULT_QUEUE_DEPTH
    )]
    pub queue_depth: u32,

    /// Read at most this many MiB per second (e.g. `50`, `2.5`). With
    /// `run --notify` only the background part after READY is limited:
    /// what the services wait on is never slowed.
    #[arg(
        long,
        value_name = "MIB_PER_SEC",
        env = "PREWARM_MAX_RATE",
        value_parser = parse_mib_per_sec
    )]
    pub max_rate: Option<u64>,

    /// Issue at most this many reads per second (same scope as
    /// `--max-rate`).
    #[arg(
        long,
        value_name = "N",
        env = "PREWARM_MAX_IOPS",
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub max_iops: Option<u64>,

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

    /// Before walking a directory (or looking up a list's files in 32
    /// directories or more), read up to this much of its filesystem's
    /// metadata (the used inode tables or chunks, then every directory's
    /// blocks) many at a time, so the lookups do not fetch it one after
    /// another; `0` turns it off. Counted by the chunks it
    /// touches. By default 64M on ext4 and none on XFS (measured no faster
    /// there); given, it applies to both. Manifest runs walk nothing and
    /// read none.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub metadata_readahead: Option<u64>,
}

/// What is printed.
#[derive(Args, Debug)]
pub struct OutputArgs {
    /// Plan and print, read nothing.
    #[arg(short = 'n', long)]
    pub dry_run: bool,

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

    /// Where to write the manifest (written only if planning succeeds).
    #[arg(
        short = 'm',
        long = "manifest",
        visible_alias = "output",
        visible_short_alias = 'o',
        value_name = "FILE"
    )]
    pub manifest: PathBuf,
}

#[derive(Args, Debug)]
pub struct RecordCmd {
    /// Filesystems to watch, by any path on them (each whole filesystem is
    /// watched); default: the root filesystem.
    #[arg(value_name = "MOUNT")]
    pub mounts: Vec<PathBuf>,

    /// Stop once these systemd units are active (comma-separated, or
    /// repeated), plus --settle. Without systemctl this never fires.
    #[arg(long, value_name = "UNIT", value_delimiter = ',')]
    pub until: Vec<String>,

    /// How long to keep recording once the --until units are active.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub settle: Duration,

    /// Stop after this long in any case (SIGTERM/SIGINT also stop; the
    /// recording is written either way).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,

    /// Width of a priority class: a file first read N widths after the
    /// start gets priority 10 + N. Default: what was read before the
    /// `--until` units were active (else before the end) spans classes 10
    /// to 20, the classes the initrd run reads, and what the units' own
    /// processes first read once they are active stays in 20.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub class_width: Option<Duration>,

    /// Record only what events named: do not add, at the end, the cached
    /// files of the watched filesystems that were read before the recorder
    /// started (on a boot, systemd's own start).
    #[arg(long)]
    pub only_events: bool,

    /// Where to write the recording (a list file).
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
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
    #[command(flatten)]
    pub manifest: ManifestArg,

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
    /// `--ready-timeout`), then carry on with the rest at idle I/O priority
    /// and nice 19.
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
    #[command(flatten)]
    pub manifest: ManifestArg,

    /// Also list every file.
    #[arg(long)]
    pub files: bool,
}

/// The manifest a command reads: `-m FILE`, `--manifest FILE` or the
/// command's one positional argument.
#[derive(Args, Debug)]
pub struct ManifestArg {
    /// The manifest written by `prewarm plan` [default:
    /// /etc/prewarm/boot.manifest].
    #[arg(value_name = "MANIFEST", conflicts_with = "manifest")]
    positional: Option<PathBuf>,

    /// The same, as an option.
    #[arg(short = 'm', long = "manifest", value_name = "FILE")]
    manifest: Option<PathBuf>,
}

/// Where images and units keep the boot manifest.
pub const DEFAULT_MANIFEST: &str = "/etc/prewarm/boot.manifest";

impl ManifestArg {
    /// The manifest named, or the default one.
    pub fn path(&self) -> PathBuf {
        self.manifest
            .clone()
            .or_else(|| self.positional.clone())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_MANIFEST))
    }
}

/// `--max-rate`: MiB per second, as a decimal number, in bytes per second.
fn parse_mib_per_sec(s: &str) -> Result<u64, String> {
    let mib: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of MiB per second"))?;
    let bytes = mib * f64::from(1u32 << 20);
    if !(4096.0..=1e15).contains(&bytes) {
        return Err(format!("{s:?}: give at least 0.004 MiB/s and at most 1e9"));
    }
    Ok(bytes as u64)
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
        let cli = Cli::parse_from(["prewarm", "--image", "busybox", "--image", "a/b:1"]);
        assert_eq!(cli.sources.images, ["busybox", "a/b:1"]);
        assert_eq!(cli.sources.containerd.namespace, "k8s.io");
        assert_eq!(cli.sources.containerd.snapshotter, "overlayfs");
        assert!(Cli::try_parse_checked_from(["prewarm", "--json", "plan", "-o", "x"]).is_ok());
    }
}
