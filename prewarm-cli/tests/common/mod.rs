//! Shared helpers for the CLI's integration tests: privilege gating, loop
//! devices and mounts with cleanup guards, filesystem images, and running the
//! real `prewarm` binary.
//!
//! Tests that need root (loop devices, mounts) print `SKIP: <reason>` when
//! they cannot run; with `PREWARM_REQUIRE_PRIVILEGED=1` (set in CI) a skip is
//! a failure instead.
#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// True when privileged tests may run; otherwise prints why (or panics in CI).
pub fn privileged(test: &str, tools: &[&str]) -> bool {
    let mut reason = None;
    if !nix::unistd::Uid::effective().is_root() {
        reason = Some("not running as root".to_string());
    }
    for tool in tools {
        if reason.is_none() && !tool_exists(tool) {
            reason = Some(format!("{tool} is not installed"));
        }
    }
    let Some(reason) = reason else { return true };
    skip(test, &reason);
    false
}

/// Print `SKIP: test: reason`, or panic when PREWARM_REQUIRE_PRIVILEGED=1.
pub fn skip(test: &str, reason: &str) {
    if std::env::var_os("PREWARM_REQUIRE_PRIVILEGED").is_some_and(|v| v == "1") {
        panic!("{test}: privileged test cannot run ({reason}) but PREWARM_REQUIRE_PRIVILEGED=1");
    }
    eprintln!("SKIP: {test}: {reason}");
}

pub fn tool_exists(name: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Run a command, panicking with its output on failure; returns stdout.
pub fn sh(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn cmd(program: &str, args: &[&str]) -> String {
    sh(Command::new(program).args(args))
}

/// Serialises the tests of one binary that attach loop devices and mount.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A loop device, detached on drop.
pub struct LoopDev {
    pub node: PathBuf,
}

impl LoopDev {
    /// Attach `image`; `read_only` uses `losetup -r`. The loop device is
    /// buffered (`losetup`'s default): prewarm reads its backing file.
    pub fn attach(image: &Path, read_only: bool) -> LoopDev {
        Self::attach_with(image, read_only, false)
    }

    /// Attach `image` read-only with direct I/O (`--direct-io=on`): prewarm
    /// reads the device itself, and its counters show the reads.
    pub fn attach_direct(image: &Path) -> LoopDev {
        let lo = Self::attach_with(image, true, true);
        let name = lo.node.file_name().unwrap().to_str().unwrap();
        let dio = std::fs::read_to_string(format!("/sys/block/{name}/loop/dio")).unwrap();
        assert_eq!(dio.trim(), "1", "{} came up without direct I/O", lo.path());
        lo
    }

    fn attach_with(image: &Path, read_only: bool, direct_io: bool) -> LoopDev {
        let image = image.to_str().unwrap();
        let mut args = vec!["-f", "--show"];
        if read_only {
            args.push("-r");
        }
        if direct_io {
            args.push("--direct-io=on");
        }
        args.push(image);
        // Parallel tests race for free loop devices; retry.
        for _ in 0..20 {
            let out = Command::new("losetup").args(&args).output().unwrap();
            if out.status.success() {
                let node = String::from_utf8_lossy(&out.stdout).trim().to_string();
                return LoopDev { node: node.into() };
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("losetup {args:?} kept failing");
    }

    pub fn path(&self) -> &str {
        self.node.to_str().unwrap()
    }

    /// Sectors read so far (`/sys/block/loopN/stat`, field 3).
    pub fn sectors_read(&self) -> u64 {
        let name = self.node.file_name().unwrap().to_str().unwrap();
        let stat = std::fs::read_to_string(format!("/sys/block/{name}/stat")).unwrap();
        stat.split_whitespace().nth(2).unwrap().parse().unwrap()
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.node).status();
    }
}

/// A mount, unmounted on drop.
pub struct Mounted {
    pub dir: PathBuf,
}

impl Mounted {
    pub fn mount(source: &str, dir: &Path, fstype: &str, options: &str) -> Mounted {
        std::fs::create_dir_all(dir).unwrap();
        cmd(
            "mount",
            &["-t", fstype, "-o", options, source, dir.to_str().unwrap()],
        );
        Mounted {
            dir: dir.to_path_buf(),
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

/// Read-only mount options that never write (no journal replay).
pub fn ro_options(fs: &str) -> &'static str {
    match fs {
        "xfs" => "ro,norecovery",
        _ => "ro,noload",
    }
}

/// Make a sparse image of `mib` MiB with filesystem `fs` on it.
pub fn make_fs_image(path: &Path, fs: &str, mib: u64) {
    let f = File::create(path).unwrap();
    f.set_len(mib << 20).unwrap();
    drop(f);
    let p = path.to_str().unwrap();
    match fs {
        // inline_data: tiny files live in the inode, exercising the
        // DATA_INLINE fallback.
        "ext4" => cmd("mkfs.ext4", &["-q", "-F", "-O", "inline_data", p]),
        "xfs" => cmd("mkfs.xfs", &["-q", "-f", p]),
        other => panic!("unknown fs {other}"),
    };
}

/// Run the real binary.
pub fn prewarm(args: &[&str]) -> Output {
    prewarm_env(args, &[])
}

/// The real binary as an `assert_cmd` command, `RUST_LOG=warn`.
pub fn prewarm_cmd() -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::cargo_bin("prewarm").expect("the prewarm binary");
    cmd.env("RUST_LOG", "warn");
    cmd
}

/// Run the real binary with extra environment (`RUST_LOG` is `warn` unless
/// `env` sets it).
pub fn prewarm_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    prewarm_cmd()
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// Run the binary with `--json` (appended, so it lands in a subcommand's
/// options) and parse the report.
pub fn prewarm_json(args: &[&str]) -> (Value, Output) {
    prewarm_json_env(args, &[])
}

/// [`prewarm_json`] with extra environment.
pub fn prewarm_json_env(args: &[&str], env: &[(&str, &str)]) -> (Value, Output) {
    let mut all = args.to_vec();
    all.push("--json");
    let out = prewarm_env(&all, env);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "bad JSON ({e}) from prewarm {all:?}:\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (report, out)
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// sha256 of a file, via sha256sum.
pub fn checksum(path: &Path) -> String {
    cmd("sha256sum", &[path.to_str().unwrap()])
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Read `len` bytes of `dev` at `offset`.
pub fn read_at(dev: &File, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    dev.read_exact_at(&mut buf, offset).unwrap();
    buf
}

/// Write `bytes` to a new file at `path` and wait for them to reach the
/// disk. A file left to background writeback can be mapped while its
/// blocks are allocated but not yet written (UNWRITTEN extents, which
/// prewarm rightly does not read), so a test that counts the bytes read
/// must not race the flusher.
pub fn write_synced(path: &Path, bytes: &[u8]) {
    let mut f = File::create(path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
}

pub fn read_file(path: &Path) -> Vec<u8> {
    let mut v = Vec::new();
    File::open(path).unwrap().read_to_end(&mut v).unwrap();
    v
}

pub fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a u64: {v}"))
}

/// Make an ext4 image of `mib` MiB holding `files` (relative path, size),
/// mounted at `dir/mnt-NAME` while the returned guards live.
pub fn image_with(
    dir: &Path,
    name: &str,
    files: &[(&str, usize)],
) -> (std::path::PathBuf, LoopDev, Mounted) {
    let image = dir.join(format!("{name}.img"));
    make_fs_image(&image, "ext4", 64);
    let lo = LoopDev::attach(&image, false);
    let m = Mounted::mount(lo.path(), &dir.join(format!("mnt-{name}")), "ext4", "rw");
    for (rel, size) in files {
        let p = m.dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, vec![0x5a; *size]).unwrap();
    }
    cmd("sync", &[]);
    (image, lo, m)
}
