//! VM boot test: a real Debian guest (systemd, dracut initrd with `50prewarm`)
//! boots under qemu (KVM when it works, TCG otherwise) from a root disk served by `prewarm-testbed`, i.e. a
//! lazily hydrated, snapshot-restored volume. `benches/vm/run.sh` builds and
//! boots: first once on a warm disk with `prewarm.record=1` and no manifest
//! (the recording, planned into a second manifest), then twice each,
//! alternating: with prewarm and the hand-written list's manifest, with the
//! recorded one, and with `prewarm=0 rd.prewarm=0`; this test checks, from
//! the serial logs and the testbed's counters, that
//!
//! 1. the initrd unit ran before switch-root;
//! 2. `prewarm.service` was READY before the stand-in kubelet started;
//! 3. with the hand-written manifest, the stand-in's big file was hydrated
//!    by prewarm, not by the stand-in (every chunk of it hydrated before the
//!    stand-in's marker chunk was fetched, and named in prewarm's reports);
//!    with the recorded one, prewarm read all of it and the initrd's part
//!    was hydrated before that fetch (a recording may put the file one
//!    class past the initrd's, in the root phase's background, read beside
//!    the stand-in: see `check_read_by_prewarm`); the boot without prewarm
//!    is the control: there the stand-in hydrates them itself;
//! 4. no chunk was read twice by prewarm (initrd and root phase reports name
//!    disjoint chunk sets);
//! 5. the recording names the stand-in kubelet and the files systemd runs
//!    before it, in first-access order; the recorded manifest covers at
//!    least 90 % of the file-data chunks the boot without prewarm fetched
//!    before the stand-in finished reading; with it the stand-in finishes
//!    reading earlier than without, in the median;
//!
//! and records kernel start → "kubelet finished reading" for every kind of boot in a
//! `vm-boot` section for `benches/RESULTS.md`, written outside the source
//! tree: `$PREWARM_VM_RESULTS`, else `vm-boot-results.md` in cargo's
//! `CARGO_TARGET_TMPDIR` (the path is printed). `prewarm-e2e --render
//! benches/results.json --vm-boot-section FILE` merges it into RESULTS.md.
//!
//! This file is the harness only (prerequisites, run.sh, cleanup, the
//! assertions); parsing the boots, the checks and the section are
//! `prewarm_benches::vm_boot`, unit-tested on recorded boots.
//!
//! Needs root, /dev/fuse, qemu-system-x86_64, mmdebstrap, e2fsprogs (as root
//! with apt-get, missing packages are installed, like `scripts/test` does) and
//! prewarm's .deb (`target/packages/prewarm_*.deb` from `scripts/package`,
//! which `scripts/test` runs as root, or `PREWARM_DEB`): the guest gets
//! prewarm from the package, so the package is what is proven to boot.
//! Otherwise prints `SKIP: <reason>` and passes, unless
//! PREWARM_REQUIRE_PRIVILEGED=1. Runs in ~7 min on 2 cores under TCG; the Debian
//! root tree is cached in /var/tmp/prewarm-vm-cache.
//!
//! Environment: PREWARM_VM_WORK (work dir, default
//! /var/tmp/prewarm-vm-cache/work), PREWARM_DEB, and run.sh's VM_* knobs
//! (latency, repeat, timeout).

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use prewarm_benches::e2e::sys;
use prewarm_benches::vm_boot::boot::read_env;
use prewarm_benches::vm_boot::recording::write_chunk_files;
use prewarm_benches::vm_boot::{
    measured, results_path, results_section, Boot, Checks, Layout, RecordedRun,
};

mod common;

const TESTBED: &str = env!("CARGO_BIN_EXE_prewarm-testbed");
const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");
/// Whole harness (image build + boots); each boot also has its own timeout.
const HARNESS_TIMEOUT: Duration = Duration::from_secs(40 * 60);

#[test]
fn vm_boot_on_lazy_disk() {
    let Some(inputs) = prerequisites() else {
        return;
    };
    let work = std::env::var_os("PREWARM_VM_WORK")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/prewarm-vm-cache/work"));
    std::fs::create_dir_all(&work).expect("create work dir");
    let started = Instant::now();
    let mut harness = Harness::spawn(&work, &inputs);
    let status = harness.wait(HARNESS_TIMEOUT);
    let log = work.join("run.log");
    assert!(
        status == Some(0),
        "benches/vm/run.sh failed ({status:?}); last lines of {}:\n{}",
        log.display(),
        tail(&log, 40)
    );
    drop(harness);
    let elapsed = started.elapsed();

    let layout = Layout::load(&work);
    let boots = Boot::load_all(&work);
    let chunk_size = layout.env["CHUNK_SIZE"].parse().expect("CHUNK_SIZE");
    if let Err(e) = write_chunk_files(&work, chunk_size) {
        panic!("the manifests in {}: {e}", work.display());
    }
    let recorded = RecordedRun::load(&work);
    let checks = Checks::run(&layout, &boots, Some(&recorded));
    let timings = read_env(&work.join("timings.env"));
    let measured = measured(&inputs.deb);
    let section = results_section(
        &layout,
        &boots,
        Some(&recorded),
        &checks,
        &timings,
        elapsed,
        &measured,
    );
    eprintln!("{section}");
    // Outside the source tree: no test rewrites a tracked file.
    let out = results_path(Path::new(env!("CARGO_TARGET_TMPDIR")));
    match std::fs::write(&out, &section) {
        Ok(()) => eprintln!(
            "vm-boot section written to {0}; to put it into benches/RESULTS.md: \
prewarm-e2e --render benches/results.json --vm-boot-section {0}",
            out.display()
        ),
        Err(e) => eprintln!("cannot write {}: {e}", out.display()),
    }
    let failed: Vec<&String> = checks.failed().collect();
    assert!(
        failed.is_empty(),
        "VM boot checks failed (artifacts in {}):\n{}",
        work.display(),
        failed
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Success: drop the 1 GiB image, keep the logs.
    let _ = std::fs::remove_file(work.join("disk.img"));
}

// ---------------------------------------------------------------------------
// Prerequisites

struct Inputs {
    /// prewarm's package.
    deb: PathBuf,
}

/// The inputs, or None after printing SKIP (panics instead when
/// PREWARM_REQUIRE_PRIVILEGED=1).
fn prerequisites() -> Option<Inputs> {
    common::or_skip("VM boot test", find_inputs())
}

fn find_inputs() -> Result<Inputs, String> {
    if let Some(why) = sys::first_missing(true, &[]) {
        return Err(why);
    }
    // command → Debian package
    let tools = [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("mmdebstrap", "mmdebstrap"),
        ("mkfs.ext4", "e2fsprogs"),
        ("debugfs", "e2fsprogs"),
        ("fusermount3", "fuse3"),
        ("flock", "util-linux"),
        ("blkid", "util-linux"),
        ("setpriv", "util-linux"),
    ];
    let missing = |tools: &[(&str, &'static str)]| -> Vec<&'static str> {
        let mut v: Vec<&str> = tools
            .iter()
            .filter(|(t, _)| sys::which(t).is_none())
            .map(|(_, p)| *p)
            .collect();
        v.dedup();
        v
    };
    let need = missing(&tools);
    if !need.is_empty() && sys::which("apt-get").is_some() {
        eprintln!("installing {need:?} for the VM boot test");
        let _ = Command::new("apt-get").args(["update", "-qq"]).status();
        let _ = Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&need)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status();
    }
    let need = missing(&tools);
    if !need.is_empty() {
        return Err(format!("missing packages: {}", need.join(" ")));
    }
    // The package is what is proven to boot: the guest gets prewarm from
    // the .deb that scripts/package built (CI builds it before the tests).
    let deb = match std::env::var_os("PREWARM_DEB") {
        Some(p) => PathBuf::from(p),
        None => {
            let dir = Path::new(MANIFEST_DIR).join("../target/packages");
            std::fs::read_dir(&dir)
                .ok()
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .find(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("prewarm_") && n.ends_with(".deb"))
                })
                .ok_or_else(|| {
                    format!(
                        "no prewarm .deb in {} (run scripts/package, or set PREWARM_DEB)",
                        dir.display()
                    )
                })?
        }
    };
    if !deb.is_file() {
        return Err(format!("{} not found", deb.display()));
    }
    Ok(Inputs { deb })
}

// ---------------------------------------------------------------------------
// The harness process and its cleanup

/// run.sh in its own process group; on drop (any path, including panics and
/// the timeout) the group is killed and whatever it left under the work dir
/// (FUSE mount, image mounts, loop devices) is undone. Should this process die
/// instead (Ctrl-C, kill), run.sh gets SIGTERM (parent-death signal) and its
/// trap stops qemu and the testbed.
struct Harness {
    child: Option<Child>,
    work: PathBuf,
}

impl Harness {
    fn spawn(work: &Path, inputs: &Inputs) -> Harness {
        let log = std::fs::File::create(work.join("run.log")).expect("run.log");
        // setpriv --pdeathsig: run.sh gets SIGTERM if this test dies.
        let child = Command::new("setpriv")
            .args(["--pdeathsig", "TERM", "sh"])
            .arg(Path::new(MANIFEST_DIR).join("vm/run.sh"))
            .arg(work)
            .env("PREWARM_DEB", &inputs.deb)
            .env("PREWARM_TESTBED", TESTBED)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("spawn benches/vm/run.sh");
        Harness {
            child: Some(child),
            work: work.to_path_buf(),
        }
    }

    /// Exit code, or None on timeout / signal.
    fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = child.try_wait().expect("wait run.sh") {
                self.child = None;
                return st.code();
            }
            if Instant::now() > deadline {
                eprintln!("run.sh timed out after {timeout:?}");
                return None;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pg = nix::unistd::Pid::from_raw(child.id() as i32);
            // SIGTERM first: run.sh's traps stop qemu and the testbed cleanly.
            let _ = nix::sys::signal::killpg(pg, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(200));
            }
            let _ = nix::sys::signal::killpg(pg, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait();
        }
        // Mounts left below the work dir, deepest first.
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut ours: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| Path::new(m).starts_with(&self.work))
            .collect();
        ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in ours {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
        // Loop devices still backed by the image.
        if let Ok(out) = Command::new("losetup")
            .arg("-j")
            .arg(self.work.join("disk.img"))
            .output()
        {
            for l in String::from_utf8_lossy(&out.stdout).lines() {
                if let Some(dev) = l.split(':').next() {
                    let _ = Command::new("losetup").arg("-d").arg(dev).status();
                }
            }
        }
    }
}

fn tail(path: &Path, n: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
