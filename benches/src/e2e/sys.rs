//! System plumbing for the end-to-end harness and the loop-device bench:
//! running commands with a timeout, dropping the page cache, and RAII guards
//! for everything privileged that must be undone on every exit path.
//!
//! Guards: [`TestbedProcess`] (the `prewarm-testbed serve` child: SIGTERM,
//! wait, then lazy unmount + kill), [`LoopDevice`] (`losetup -d`) and
//! [`Mount`] (`umount`, then `umount -l`). Declare them in that order so they
//! drop in reverse: filesystem, loop device, testbed. [`interrupted`] turns
//! SIGINT/SIGTERM/SIGHUP into a flag the harness checks between steps, so a
//! Ctrl-C unwinds through the guards instead of killing the process with
//! mounts and loop devices left behind.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::control::{self, Endpoint, Request};
use crate::lazy::Stats;

/// True when running as root (uid 0).
pub fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// The path of `tool` on PATH (plus /sbin and /usr/sbin), if any.
pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/sbin", "/usr/sbin"].iter().map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// `name` in the directory of the running binary (where cargo puts the
/// workspace's other binaries).
pub fn sibling(name: &str) -> Option<PathBuf> {
    Some(std::env::current_exe().ok()?.parent()?.join(name))
}

/// The prewarm binary to measure (`given`, else `prewarm` beside this
/// one) and the `prewarm-testbed` beside this one.
pub fn prewarm_and_testbed(given: Option<&Path>) -> Result<(PathBuf, PathBuf)> {
    let prewarm = given
        .map(Path::to_path_buf)
        .or_else(|| sibling("prewarm"))
        .context("no prewarm binary")?;
    let testbed = sibling("prewarm-testbed").context("no prewarm-testbed binary")?;
    Ok((prewarm, testbed))
}

/// The first thing a privileged test or run lacks, if any: root, then
/// `/dev/fuse` (when `fuse`), then each of `tools` on PATH.
pub fn first_missing(fuse: bool, tools: &[&str]) -> Option<String> {
    if !is_root() {
        return Some("not running as root".into());
    }
    if fuse && !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse is missing".into());
    }
    tools
        .iter()
        .find(|t| which(t).is_none())
        .map(|t| format!("{t} not found"))
}

static INTERRUPT: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// The process-wide interrupt flag, set by SIGINT/SIGTERM/SIGHUP once
/// [`install_interrupt_handler`] has run.
pub fn interrupted() -> bool {
    INTERRUPT.get().is_some_and(|f| f.load(Ordering::Relaxed))
}

/// Route SIGINT/SIGTERM/SIGHUP to the interrupt flag instead of killing the
/// process, so guards get to run.
pub fn install_interrupt_handler() -> Result<()> {
    let flag = INTERRUPT.get_or_init(|| Arc::new(AtomicBool::new(false)));
    for sig in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register(sig, Arc::clone(flag)).context("installing signal handler")?;
    }
    Ok(())
}

/// Fail if an interrupt arrived.
pub fn check_interrupt() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

/// What a finished command produced.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Finished {
    /// One line saying how it failed, with the end of its stderr.
    pub fn failure(&self, what: &str) -> String {
        let tail: String = self
            .stderr
            .lines()
            .rev()
            .take(3)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join(" | ");
        format!("{what} exited with {}: {tail}", self.status)
    }
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut s);
        }
        String::from_utf8_lossy(&s).into_owned()
    })
}

/// Kill a child we started (by its pid) and reap it.
fn kill_child(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Run `cmd` to completion, capturing stdout (unless `stdout_null`) and
/// stderr, killing it after `timeout` or on interrupt. `elapsed` runs from
/// just before spawn to the moment the exit was seen (polled every 0.5 ms).
pub fn run_timed(cmd: &mut Command, timeout: Duration, stdout_null: bool) -> Result<Finished> {
    run_inner(cmd, timeout, stdout_null, false)
}

/// Like [`run_timed`], for a command that must not be cut short because it
/// cleans up after itself only when it finishes (e.g. `prewarm-fixture`,
/// which loop-mounts the image): it runs in its own process group, so a
/// terminal's Ctrl-C does not reach it, and an interrupt waits for it
/// (then fails) instead of killing it.
pub fn run_to_completion(cmd: &mut Command, timeout: Duration) -> Result<Finished> {
    cmd.process_group(0);
    let f = run_inner(cmd, timeout, false, true)?;
    check_interrupt()?;
    Ok(f)
}

fn run_inner(
    cmd: &mut Command,
    timeout: Duration,
    stdout_null: bool,
    finish_on_interrupt: bool,
) -> Result<Finished> {
    cmd.stdin(Stdio::null()).stderr(Stdio::piped());
    if stdout_null {
        cmd.stdout(Stdio::null());
    } else {
        cmd.stdout(Stdio::piped());
    }
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("spawning {cmd:?} (is it installed?)"))?;
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => {
                kill_child(&mut child);
                return Err(e).with_context(|| format!("waiting for {cmd:?}"));
            }
        }
        if start.elapsed() > timeout {
            kill_child(&mut child);
            bail!("{cmd:?} timed out after {timeout:?}");
        }
        if interrupted() && !finish_on_interrupt {
            kill_child(&mut child);
            bail!("interrupted while running {cmd:?}");
        }
        std::thread::sleep(Duration::from_micros(500));
    };
    let elapsed = start.elapsed();
    Ok(Finished {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        elapsed,
    })
}

/// Run a short administrative command; its stdout, or an error naming it.
pub fn run_ok(cmd: &mut Command) -> Result<String> {
    let f = run_timed(cmd, Duration::from_secs(120), false)?;
    if !f.status.success() {
        bail!("{}", f.failure(&format!("{cmd:?}")));
    }
    Ok(f.stdout)
}

/// First line of a tool's version output (stdout or stderr) that holds a
/// digit, or "unknown".
pub fn tool_version(tool: &str, args: &[&str]) -> String {
    let out = Command::new(tool).args(args).stdin(Stdio::null()).output();
    match out {
        Ok(o) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            text.lines()
                .map(str::trim)
                .find(|l| l.contains(|c: char| c.is_ascii_digit()))
                .unwrap_or("unknown")
                .to_string()
        }
        Err(_) => "not found".into(),
    }
}

/// `sync`, then drop the page cache, dentries and inodes.
pub fn drop_caches() -> Result<()> {
    nix::unistd::sync();
    std::fs::write("/proc/sys/vm/drop_caches", "3\n").context("writing /proc/sys/vm/drop_caches")
}

/// Read each of `files` whole, so that its pages are in the page cache (a
/// file that cannot be read is left as it is: its program then fails or
/// loads slowly, which the run shows).
pub fn cache_files(files: &[PathBuf]) {
    for f in files {
        if let Ok(mut file) = std::fs::File::open(f) {
            let _ = std::io::copy(&mut file, &mut std::io::sink());
        }
    }
}

/// A read-only loop device over a file; detached on drop.
#[derive(Debug)]
pub struct LoopDevice {
    pub path: PathBuf,
    /// The loop device reads its backing file with O_DIRECT (`dio` = 1).
    pub direct_io: bool,
}

impl LoopDevice {
    /// `losetup -r --direct-io=on|off -f --show FILE`; fails if the kernel
    /// did not give the requested direct-I/O mode.
    pub fn attach(file: &Path, direct_io: bool) -> Result<Self> {
        Self::attach_at(file, direct_io, 0)
    }

    /// [`LoopDevice::attach`] with the device starting `offset` bytes into
    /// `file` (`losetup -o`).
    pub fn attach_at(file: &Path, direct_io: bool, offset: u64) -> Result<Self> {
        let mode = if direct_io { "on" } else { "off" };
        let out = run_ok(
            Command::new("losetup")
                .arg("-r")
                .arg(format!("--direct-io={mode}"))
                .arg(format!("--offset={offset}"))
                .args(["-f", "--show"])
                .arg(file),
        )?;
        let dev = LoopDevice {
            path: PathBuf::from(out.trim()),
            direct_io,
        };
        let dio = std::fs::read_to_string(format!("/sys/block/{}/loop/dio", dev.name()))
            .map(|s| s.trim() == "1")
            .unwrap_or(false);
        if dio != direct_io {
            bail!(
                "{} came up with dio={} (asked for {mode})",
                dev.path.display(),
                u8::from(dio)
            );
        }
        Ok(dev)
    }

    /// The device's name under /sys/block (`loopN`).
    fn name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// The device's size in bytes (from sysfs, 512-byte sectors).
    pub fn size(&self) -> Result<u64> {
        let text = std::fs::read_to_string(format!("/sys/block/{}/size", self.name()))
            .with_context(|| format!("size of {}", self.path.display()))?;
        let sectors: u64 = text
            .trim()
            .parse()
            .with_context(|| format!("parsing /sys/block/{}/size", self.name()))?;
        Ok(sectors * 512)
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup")
            .arg("-d")
            .arg(&self.path)
            .stderr(Stdio::null())
            .status();
    }
}

/// A mounted filesystem; unmounted on drop (lazily if busy).
#[derive(Debug)]
pub struct Mount {
    pub dir: PathBuf,
}

impl Mount {
    /// `mount -o OPTIONS DEV DIR`.
    pub fn new(dev: &Path, dir: &Path, options: &str) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("mkdir {}", dir.display()))?;
        run_ok(
            Command::new("mount")
                .args(["-o", options])
                .arg(dev)
                .arg(dir),
        )?;
        Ok(Mount {
            dir: dir.to_path_buf(),
        })
    }
}

impl Mount {
    /// A private tmpfs of `size` bytes at `dir`.
    pub fn tmpfs(dir: &Path, size: u64) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("mkdir {}", dir.display()))?;
        run_ok(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o"])
                .arg(format!("size={size},mode=0700"))
                .arg("prewarm-e2e")
                .arg(dir),
        )?;
        Ok(Mount {
            dir: dir.to_path_buf(),
        })
    }
}

impl Mount {
    /// Unmount now, failing if it is busy (then the drop still tries,
    /// lazily at last).
    pub fn unmount(mut self) -> Result<()> {
        run_ok(Command::new("umount").arg(&self.dir))?;
        self.dir = PathBuf::new();
        Ok(())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.dir.as_os_str().is_empty() {
            return;
        }
        let ok = Command::new("umount")
            .arg(&self.dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// A `prewarm-testbed serve` child and its control endpoint; stopped on drop.
pub struct TestbedProcess {
    child: Option<Child>,
    pub mount: PathBuf,
    pub endpoint: Endpoint,
    pub log: PathBuf,
}

impl TestbedProcess {
    /// Start `bin serve --image IMAGE --mount MOUNT ARGS...` and wait until it
    /// is mounted (its ready file appears). Its stderr goes to `log`.
    pub fn start(
        bin: &Path,
        image: &Path,
        mount: &Path,
        args: &[String],
        log: &Path,
    ) -> Result<Self> {
        std::fs::create_dir_all(mount).with_context(|| format!("mkdir {}", mount.display()))?;
        let ready = mount.with_extension("ready");
        let _ = std::fs::remove_file(&ready);
        let logf = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(bin)
            .arg("serve")
            .arg("--image")
            .arg(image)
            .arg("--mount")
            .arg(mount)
            .arg("--ready-file")
            .arg(&ready)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logf)
            // Its own process group: a terminal's Ctrl-C must not stop it
            // before the loop device and mount on it are gone (the guard
            // stops it last).
            .process_group(0)
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let mut tb = TestbedProcess {
            child: Some(child),
            mount: mount.to_path_buf(),
            endpoint: Endpoint::Abstract(String::new()),
            log: log.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ready.exists() {
            if let Some(c) = tb.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    tb.child = None;
                    bail!("testbed exited early ({status}): {}", tb.log_tail());
                }
            }
            if Instant::now() > deadline {
                bail!("testbed not ready after 20 s: {}", tb.log_tail());
            }
            check_interrupt()?;
            std::thread::sleep(Duration::from_millis(20));
        }
        tb.endpoint = Endpoint::for_mount(mount)?;
        Ok(tb)
    }

    /// The child's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The last lines of the testbed's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }

    /// The image file served.
    pub fn disk(&self) -> PathBuf {
        self.mount.join("disk.img")
    }

    /// Counters; `detailed` includes the hydrated list and hydration order.
    pub fn stats(&self, detailed: bool) -> Result<Stats> {
        control::call(&self.endpoint, &Request::Stats { brief: !detailed })?
            .stats
            .ok_or_else(|| anyhow!("testbed sent no stats"))
    }

    /// Reset (all chunks cold, counters zeroed). Returns the local instant
    /// the reset happened at: the midpoint of the request's round trip.
    pub fn reset(&self) -> Result<Instant> {
        let before = Instant::now();
        control::call(&self.endpoint, &Request::Reset)?;
        let after = Instant::now();
        Ok(before + (after - before) / 2)
    }

    /// Wait until no fetch is in flight (at most `limit`).
    pub fn wait_idle(&self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if self.stats(false)?.inflight_fetches == 0 || Instant::now() > deadline {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// CPU time (user + system, all threads) the testbed has used, in ms.
    pub fn cpu_ms(&self) -> Option<f64> {
        process_cpu_ms(self.pid()?)
    }
}

impl Drop for TestbedProcess {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            // Our own child, not reaped yet: the pid cannot have been reused.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => break,
            }
        }
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        kill_child(&mut child);
    }
}

/// CPU time (ms) of every user process that is neither this process nor a
/// descendant of it, by pid: sample before and after a stretch of work and
/// pass both to [`foreign_cpu_delta_ms`] to see how much CPU other work on
/// the host took meanwhile. Kernel threads (children of kthreadd) are left
/// out: the loop and FUSE work of our own runs shows up there.
pub fn foreign_cpu_sample() -> std::collections::HashMap<u32, f64> {
    use std::collections::HashMap;
    let me = std::process::id();
    let mut info: HashMap<u32, (u32, f64)> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let Some(close) = text.rfind(')') else {
                continue;
            };
            let f: Vec<&str> = text[close + 2..].split_whitespace().collect();
            let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
            if let (Some(ppid), Some(u), Some(s)) = (num(1), num(11), num(12)) {
                info.insert(pid, (ppid as u32, (u + s) * 1000.0 / clock_ticks()));
            }
        }
    }
    let ours = |mut pid: u32| {
        for _ in 0..64 {
            if pid == me {
                return true;
            }
            match info.get(&pid) {
                Some(&(ppid, _)) if ppid > 1 => pid = ppid,
                _ => return false,
            }
        }
        false
    };
    info.iter()
        .filter(|(&pid, &(ppid, _))| pid != 2 && ppid != 2 && !ours(pid))
        .map(|(&pid, &(_, ms))| (pid, ms))
        .collect()
}

/// CPU ms other processes used between two [`foreign_cpu_sample`]s
/// (processes that started and ended in between are missed).
pub fn foreign_cpu_delta_ms(
    before: &std::collections::HashMap<u32, f64>,
    after: &std::collections::HashMap<u32, f64>,
) -> f64 {
    after
        .iter()
        .map(|(pid, ms)| (ms - before.get(pid).copied().unwrap_or(0.0)).max(0.0))
        .sum()
}

/// Clock ticks per second for /proc times.
fn clock_ticks() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as f64,
        _ => 100.0,
    }
}

/// utime + stime of process `pid` (all its threads), in ms.
pub fn process_cpu_ms(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) in parens.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime field 15.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) * 1000.0 / clock_ticks())
}

/// Whole-machine CPU counters from /proc/stat: (busy, total) in ticks.
pub fn cpu_counters() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?;
    let vals: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let total: u64 = vals.iter().take(8).sum();
    let idle = vals.get(3).copied().unwrap_or(0) + vals.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// Fraction of all CPUs busy between two [`cpu_counters`] samples.
pub fn cpu_busy(before: Option<(u64, u64)>, after: Option<(u64, u64)>) -> Option<f64> {
    let (b0, t0) = before?;
    let (b1, t1) = after?;
    let dt = t1.checked_sub(t0)?;
    (dt > 0).then(|| (b1.saturating_sub(b0)) as f64 / dt as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_cpu_excludes_ourselves() {
        let a = foreign_cpu_sample();
        assert!(!a.contains_key(&std::process::id()));
        let b = foreign_cpu_sample();
        assert!(foreign_cpu_delta_ms(&a, &b) >= 0.0);
    }

    #[test]
    fn own_cpu_time_is_readable() {
        assert!(process_cpu_ms(std::process::id()).is_some());
        let a = cpu_counters();
        let b = cpu_counters();
        assert!(a.is_some());
        assert!(cpu_busy(a, b).is_none_or(|f| (0.0..=1.0).contains(&f)));
    }

    #[test]
    fn run_timed_captures_output_and_times_out() {
        let f = run_timed(
            Command::new("sh").args(["-c", "echo hi; echo err >&2"]),
            Duration::from_secs(10),
            false,
        )
        .expect("sh runs");
        assert!(f.status.success());
        assert_eq!(f.stdout.trim(), "hi");
        assert_eq!(f.stderr.trim(), "err");
        let slow = run_timed(
            Command::new("sleep").arg("5"),
            Duration::from_millis(100),
            true,
        );
        assert!(slow.is_err());
    }
}
