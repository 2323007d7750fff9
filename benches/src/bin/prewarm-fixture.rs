//! `prewarm-fixture`: builds a realistic node-volume image (ext4 or XFS) with
//! scattered critical files, plus its critical list and a manifest.
//!
//! The binary owns the privileged steps — mkfs, loop-mounting the image
//! read-write, writing the planned files in their interleaved order, measuring
//! the critical files' physical layout with `filefrag`, unmounting — while the
//! plan itself (files, sizes, priorities, order, content) comes from
//! `prewarm_benches::fixture`.

#![forbid(unsafe_code)]

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde::Serialize;

use prewarm_benches::fixture::{
    self, layout_stats, parse_filefrag, ContentPool, FixtureSpec, FsType, LayoutStats, PlanSummary,
    Shape,
};
use prewarm_core::parse_size;

const MIB: u64 = 1024 * 1024;

#[derive(Parser, Debug)]
#[command(
    name = "prewarm-fixture",
    about = "Build a node-volume image with scattered critical files and its critical list (needs root)"
)]
struct Cli {
    /// Output directory: volume.img, critical.list and manifest.json go there.
    #[arg(long)]
    out: PathBuf,
    /// Filesystem: ext4 or xfs.
    #[arg(long, default_value = "ext4")]
    fs: FsType,
    /// CI preset: 256 MiB image (384 MiB for xfs), 12 MiB binaries, fewer files.
    #[arg(long)]
    small: bool,
    /// node: snapshot files scattered one by one, each listed; big-tree:
    /// the critical set is unpacked container layers (deep trees, 10,500
    /// files in ~1,300 directories), listed by layer directory (its own
    /// preset; not with --small).
    #[arg(long, default_value = "node")]
    shape: Shape,
    /// Image size (default 1G, or the preset's).
    #[arg(long, value_parser = parse_size)]
    image_size: Option<u64>,
    /// Size of each of kubelet, containerd and nodeadm, MiB.
    #[arg(long)]
    big_mib: Option<u64>,
    /// Shared libraries in usr/lib64.
    #[arg(long)]
    libs: Option<usize>,
    /// Critical libraries among them.
    #[arg(long)]
    critical_libs: Option<usize>,
    /// Config files under etc/.
    #[arg(long)]
    configs: Option<usize>,
    /// Critical configs among them.
    #[arg(long)]
    critical_configs: Option<usize>,
    /// containerd snapshots.
    #[arg(long)]
    snapshots: Option<usize>,
    /// Critical snapshots among them.
    #[arg(long)]
    critical_snapshots: Option<usize>,
    /// Files across all snapshots.
    #[arg(long)]
    snapshot_files: Option<usize>,
    /// Fill the filesystem with bulk files up to this % of the image.
    #[arg(long)]
    fill_percent: Option<u32>,
    /// Seed for sizes, order and content.
    #[arg(long)]
    seed: Option<u64>,
    /// Mount point the critical list's paths assume.
    #[arg(long, default_value = "/mnt/vol")]
    mount_prefix: String,
    /// Chunk size for the layout report (the testbed's chunk size).
    #[arg(long, default_value = "512K", value_parser = parse_size)]
    chunk_size: u64,
    /// Overwrite an existing volume.img.
    #[arg(long)]
    force: bool,
    /// Only print the plan summary; build nothing (no root needed).
    #[arg(long)]
    plan_only: bool,
}

impl Cli {
    fn spec(&self) -> Result<FixtureSpec> {
        let mut s = match (self.shape, self.small) {
            (Shape::BigTree, true) => bail!("--small has no big-tree preset"),
            (Shape::BigTree, false) => FixtureSpec::big_tree(),
            (Shape::Node, true) => FixtureSpec::small(),
            (Shape::Node, false) => FixtureSpec::default(),
        };
        s.fs = self.fs;
        if self.small && self.fs == FsType::Xfs {
            // mkfs.xfs reserves a 64 MiB log; 320 MiB would leave too little room.
            s.image_size = 384 * MIB;
        }
        s.image_size = self.image_size.unwrap_or(s.image_size);
        s.big_bytes = self.big_mib.map(|m| m * MIB).unwrap_or(s.big_bytes);
        s.libs = self.libs.unwrap_or(s.libs);
        s.critical_libs = self.critical_libs.unwrap_or(s.critical_libs.min(s.libs));
        s.configs = self.configs.unwrap_or(s.configs);
        s.critical_configs = self
            .critical_configs
            .unwrap_or(s.critical_configs.min(s.configs));
        s.snapshots = self.snapshots.unwrap_or(s.snapshots);
        s.critical_snapshots = self
            .critical_snapshots
            .unwrap_or(s.critical_snapshots.min(s.snapshots));
        s.snapshot_files = self.snapshot_files.unwrap_or(s.snapshot_files);
        s.fill_percent = self.fill_percent.unwrap_or(s.fill_percent);
        s.seed = self.seed.unwrap_or(s.seed);
        s.mount_prefix = self.mount_prefix.clone();
        Ok(s)
    }
}

#[derive(Serialize)]
struct Manifest<'a> {
    image: PathBuf,
    critical_list: PathBuf,
    /// The critical list with every file named (directories expanded).
    critical_files_list: PathBuf,
    spec: &'a FixtureSpec,
    summary: &'a PlanSummary,
    /// Physical layout of all critical files.
    critical_layout: LayoutStats,
    /// Physical layout per priority.
    layout_by_priority: Vec<(u32, LayoutStats)>,
    build_seconds: f64,
}

fn run_cmd(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("running {cmd:?} (is it installed?)"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Unmounts and removes the temporary mount point on drop.
struct MountGuard {
    dir: PathBuf,
    mounted: bool,
}

impl MountGuard {
    fn unmount(&mut self) -> Result<()> {
        if self.mounted {
            run_cmd(Command::new("umount").arg(&self.dir))?;
            self.mounted = false;
        }
        Ok(())
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(&self.dir).status();
        }
        let _ = fs::remove_dir(&self.dir);
    }
}

fn mkfs(fs_type: FsType, image: &Path) -> Result<()> {
    let mut cmd = match fs_type {
        FsType::Ext4 => {
            let mut c = Command::new("mkfs.ext4");
            c.args([
                "-q",
                "-F",
                "-b",
                "4096",
                "-L",
                "prewarmvol",
                "-E",
                "lazy_itable_init=0,lazy_journal_init=0",
            ]);
            c
        }
        FsType::Xfs => {
            let mut c = Command::new("mkfs.xfs");
            c.args(["-q", "-f", "-L", "prewarmvol"]);
            c
        }
    };
    run_cmd(cmd.arg(image)).map(|_| ())
}

/// Free bytes of the filesystem mounted at `dir`, from `df`.
fn free_bytes(dir: &Path) -> Result<u64> {
    let text = run_cmd(Command::new("df").args(["-B1", "--output=avail"]).arg(dir))?;
    text.lines()
        .filter_map(|l| l.trim().parse::<u64>().ok())
        .next()
        .with_context(|| format!("parsing df output {text:?}"))
}

fn mib(b: u64) -> f64 {
    b as f64 / MIB as f64
}

fn build(cli: &Cli) -> Result<()> {
    let spec = cli.spec()?;
    let plan = fixture::plan(&spec)?;
    let summary = plan.summary();
    if cli.plan_only {
        println!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(());
    }

    let t0 = Instant::now();
    fs::create_dir_all(&cli.out).with_context(|| format!("creating {}", cli.out.display()))?;
    let out = cli.out.canonicalize()?;
    let image = out.join("volume.img");
    if image.exists() && !cli.force {
        bail!("{} exists (use --force to overwrite)", image.display());
    }
    File::create(&image)
        .and_then(|f| f.set_len(spec.image_size))
        .with_context(|| format!("creating {}", image.display()))?;
    let res = populate(cli, &spec, &plan, &summary, &out, &image, t0);
    if res.is_err() {
        // Never leave a half-built image that looks usable.
        let _ = fs::remove_file(&image);
    }
    res
}

fn populate(
    cli: &Cli,
    spec: &FixtureSpec,
    plan: &fixture::Plan,
    summary: &PlanSummary,
    out: &Path,
    image: &Path,
    t0: Instant,
) -> Result<()> {
    mkfs(spec.fs, image)?;

    let mnt = out.join(format!(".fixture-mnt-{}", std::process::id()));
    fs::create_dir_all(&mnt)?;
    let mut guard = MountGuard {
        dir: mnt.clone(),
        mounted: false,
    };
    // ext4: allocate at write time (nodelalloc) so the interleaved write order
    // becomes the physical order; XFS always delays, so we fdatasync per file.
    let opts = match spec.fs {
        FsType::Ext4 => "loop,nodelalloc",
        FsType::Xfs => "loop",
    };
    run_cmd(
        Command::new("mount")
            .args(["-t", &spec.fs.to_string(), "-o", opts])
            .arg(image)
            .arg(&mnt),
    )
    .context("loop-mounting the new image read-write (needs root)")?;
    guard.mounted = true;
    let avail = free_bytes(&mnt)?;
    if summary.all.bytes > avail / 100 * 97 {
        bail!(
            "the plan needs {:.0} MiB but the new {} filesystem has {:.0} MiB free: \
             raise --image-size or lower --fill-percent",
            mib(summary.all.bytes),
            spec.fs,
            mib(avail)
        );
    }

    let mut pool = ContentPool::new(spec.seed);
    let total = summary.all.bytes.max(1);
    let mut written = 0u64;
    let mut next_report = 0u64;
    for f in &plan.files {
        let path = mnt.join(&f.path);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        let mut file =
            File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        pool.write(&mut file, f.size)
            .and_then(|()| file.flush())
            .with_context(|| format!("writing {}", path.display()))?;
        if spec.fs == FsType::Xfs {
            file.sync_data()
                .with_context(|| format!("syncing {}", path.display()))?;
        }
        if f.executable {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
        }
        written += f.size;
        if written * 10 / total >= next_report {
            eprintln!(
                "prewarm-fixture: {:3}% written ({:.0} MiB)",
                written * 100 / total,
                mib(written)
            );
            next_report = written * 10 / total + 1;
        }
    }
    run_cmd(&mut Command::new("sync"))?;

    // Physical layout of the critical files.
    let critical = plan.critical_files();
    let mut extents_by_prio: std::collections::BTreeMap<u32, Vec<(u64, u64)>> = Default::default();
    let mut mapped = 0usize;
    for batch in critical.chunks(200) {
        let mut cmd = Command::new("filefrag");
        cmd.args(["-v", "-b4096"]);
        for f in batch {
            cmd.arg(mnt.join(&f.path));
        }
        let text = run_cmd(&mut cmd)?;
        let files = parse_filefrag(&text, 4096);
        mapped += files.len();
        for (f, ext) in batch.iter().zip(files) {
            let prio = f.priority.unwrap_or(fixture::PRIO_IMAGES);
            extents_by_prio.entry(prio).or_default().extend(ext.extents);
        }
    }
    if mapped != critical.len() {
        eprintln!(
            "prewarm-fixture: warning: filefrag mapped {mapped} of {} critical files",
            critical.len()
        );
    }
    let all_extents: Vec<(u64, u64)> = extents_by_prio.values().flatten().copied().collect();
    let critical_layout = layout_stats(&all_extents, cli.chunk_size);
    let layout_by_priority: Vec<(u32, LayoutStats)> = extents_by_prio
        .iter()
        .map(|(p, e)| (*p, layout_stats(e, cli.chunk_size)))
        .collect();

    guard.unmount().context("unmounting the fixture image")?;
    drop(guard);

    let list_path = out.join("critical.list");
    fs::write(&list_path, plan.critical_list())
        .with_context(|| format!("writing {}", list_path.display()))?;
    let files_path = out.join("critical-files.list");
    fs::write(&files_path, plan.critical_files_list())
        .with_context(|| format!("writing {}", files_path.display()))?;
    let manifest = Manifest {
        image: image.to_path_buf(),
        critical_list: list_path.clone(),
        critical_files_list: files_path.clone(),
        spec,
        summary,
        critical_layout: critical_layout.clone(),
        layout_by_priority: layout_by_priority.clone(),
        build_seconds: t0.elapsed().as_secs_f64(),
    };
    let manifest_path = out.join("manifest.json");
    fs::write(&manifest_path, serde_json::to_string_pretty(&manifest)?)
        .with_context(|| format!("writing {}", manifest_path.display()))?;

    println!(
        "image:          {} ({}, {:.0} MiB)",
        image.display(),
        spec.fs,
        mib(spec.image_size)
    );
    println!(
        "critical list:  {} (paths under {})",
        list_path.display(),
        spec.mount_prefix
    );
    println!("manifest:       {}", manifest_path.display());
    println!(
        "files:          {} ({:.1} MiB)",
        summary.all.files,
        mib(summary.all.bytes)
    );
    println!(
        "critical:       {} files ({:.1} MiB) in {} directories, {} list entries",
        summary.critical.files,
        mib(summary.critical.bytes),
        summary.critical_dirs,
        summary.list_entries
    );
    for (p, t) in &summary.by_priority {
        println!(
            "  priority {p:>3}: {} files ({:.1} MiB)",
            t.files,
            mib(t.bytes)
        );
    }
    let l = &critical_layout;
    println!(
        "layout:         critical files touch {} chunks of {} KiB (minimum {}), in {} runs, chunks {}..{} of {}",
        l.chunks,
        l.chunk_size / 1024,
        l.min_chunks,
        l.runs,
        l.first_chunk,
        l.last_chunk,
        spec.image_size.div_ceil(l.chunk_size)
    );
    println!("built in:       {:.1} s", t0.elapsed().as_secs_f64());
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match build(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("prewarm-fixture: {e:#}");
            ExitCode::FAILURE
        }
    }
}
