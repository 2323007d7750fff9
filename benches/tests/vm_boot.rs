//! VM boot test: a real Debian guest (systemd, dracut initrd with `50prewarm`)
//! boots under qemu (KVM when it works, TCG otherwise) from a root disk served by `prewarm-testbed`, i.e. a
//! lazily hydrated, snapshot-restored volume. `benches/vm/run.sh` builds and
//! boots (twice each, alternating: with prewarm, and with `prewarm=0
//! rd.prewarm=0`); this test checks, from the serial logs and the testbed's
//! counters, that
//!
//! 1. the initrd unit ran before switch-root;
//! 2. `prewarm.service` was READY before the stand-in kubelet started;
//! 3. the stand-in's big file was hydrated by prewarm, not by the stand-in
//!    (every chunk of it hydrated before the stand-in's marker chunk was
//!    fetched, and named in prewarm's reports); the boot without prewarm is
//!    the control: there the stand-in hydrates them itself;
//! 4. no chunk was read twice by prewarm (initrd and root phase reports name
//!    disjoint chunk sets);
//!
//! and records kernel start → "kubelet finished reading" for both boots in the
//! `vm-boot` section of `benches/RESULTS.md`.
//!
//! Needs root, /dev/fuse, qemu-system-x86_64, mmdebstrap, e2fsprogs (as root
//! with apt-get, missing packages are installed, like `scripts/test` does) and
//! the `prewarm` binary of this workspace (next to this test's target dir, or
//! `PREWARM_BIN`). Otherwise prints `SKIP: <reason>` and passes, unless
//! PREWARM_REQUIRE_PRIVILEGED=1. Runs in ~3 min on 2 cores under TCG; the Debian
//! root tree is cached in /var/tmp/prewarm-vm-cache.
//!
//! Environment: PREWARM_VM_WORK (work dir, default
//! /var/tmp/prewarm-vm-cache/work), PREWARM_INSTALL (default
//! `initrd/install.sh`), and run.sh's VM_* knobs (latency, repeat, timeout).

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use prewarm_benches::lazy::Stats;
use serde_json::Value;

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
    let mut checks = Checks::default();
    for b in &boots {
        checks.check(&b.name, "powered off by itself", b.check_poweroff());
        if b.kind == "with" {
            checks.check(
                &b.name,
                "initrd unit ran before switch-root",
                b.check_initrd(),
            );
            checks.check(
                &b.name,
                "prewarm.service READY before kubelet started",
                b.check_ready(),
            );
            checks.check(
                &b.name,
                "kubelet's file hydrated by prewarm",
                b.check_hydrated_by_prewarm(&layout),
            );
            checks.check(
                &b.name,
                "no chunk read twice by prewarm",
                b.check_disjoint(),
            );
        } else if b.kind == "without" {
            checks.check(&b.name, "prewarm disabled", b.check_disabled());
            checks.check(
                &b.name,
                "control: kubelet hydrated its own file",
                b.check_self_hydrated(&layout),
            );
        }
    }
    let section = results_section(&layout, &boots, &checks, &work, elapsed);
    eprintln!("{section}");
    write_results(&section);
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
    prewarm: PathBuf,
    install: PathBuf,
}

/// The inputs, or None after printing SKIP (panics instead when
/// PREWARM_REQUIRE_PRIVILEGED=1).
fn prerequisites() -> Option<Inputs> {
    match find_inputs() {
        Ok(i) => Some(i),
        Err(r) if std::env::var("PREWARM_REQUIRE_PRIVILEGED").as_deref() == Ok("1") => {
            panic!("VM boot test cannot run: {r} (PREWARM_REQUIRE_PRIVILEGED=1)")
        }
        Err(r) => {
            eprintln!("SKIP: {r}");
            None
        }
    }
}

fn find_inputs() -> Result<Inputs, String> {
    let root = std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false);
    if !root {
        return Err("not running as root".into());
    }
    if !Path::new("/dev/fuse").exists() {
        return Err("/dev/fuse is missing".into());
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
            .filter(|(t, _)| !tool_exists(t))
            .map(|(_, p)| *p)
            .collect();
        v.dedup();
        v
    };
    let need = missing(&tools);
    if !need.is_empty() && tool_exists("apt-get") {
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
    let prewarm = match std::env::var_os("PREWARM_BIN") {
        Some(p) => PathBuf::from(p),
        // target/<profile>/deps/vm_boot-HASH → target/<profile>/prewarm
        None => std::env::current_exe()
            .ok()
            .and_then(|e| Some(e.parent()?.parent()?.join("prewarm")))
            .ok_or("cannot locate the target directory")?,
    };
    if !prewarm.is_file() {
        return Err(format!(
            "prewarm binary {} not found (build prewarm-cli, or set PREWARM_BIN)",
            prewarm.display()
        ));
    }
    let install = std::env::var_os("PREWARM_INSTALL")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(MANIFEST_DIR).join("../initrd/install.sh"));
    if !install.is_file() {
        return Err(format!("{} not found", install.display()));
    }
    Ok(Inputs { prewarm, install })
}

fn tool_exists(name: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/sbin", "/usr/sbin"].iter().map(PathBuf::from))
        .any(|d| d.join(name).is_file())
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
            .env("PREWARM_BIN", &inputs.prewarm)
            .env("PREWARM_INSTALL", &inputs.install)
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

// ---------------------------------------------------------------------------
// Evidence

fn read_env(path: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// What build-image.sh recorded about the image.
struct Layout {
    env: BTreeMap<String, String>,
    marker_chunk: u64,
    big_chunks: BTreeSet<u64>,
}

impl Layout {
    fn load(work: &Path) -> Layout {
        let env = read_env(&work.join("layout.env"));
        let marker_chunk = env["MARKER_CHUNK"].parse().expect("MARKER_CHUNK");
        let big_chunks = std::fs::read_to_string(work.join("big.chunks"))
            .expect("big.chunks")
            .split_whitespace()
            .map(|c| c.parse().expect("chunk index"))
            .collect();
        Layout {
            env,
            marker_chunk,
            big_chunks,
        }
    }
}

/// One boot's evidence.
struct Boot {
    name: String,
    /// "with", "without", or an experiment of run.sh ("rootonly", ...).
    kind: String,
    env: BTreeMap<String, String>,
    /// ttyS0, without ANSI sequences and CRs.
    console: Vec<String>,
    /// ttyS1 sections ("=== NAME rest"): lines per section name.
    data: BTreeMap<String, Vec<String>>,
    /// The stand-in's /proc/uptime readings: start, marker read, done.
    standin: Option<(f64, f64, f64)>,
    units: BTreeMap<String, BTreeMap<String, String>>,
    stats: Option<Stats>,
}

impl Boot {
    fn load_all(work: &Path) -> Vec<Boot> {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(work)
            .expect("read work dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("boot-"))
            })
            .collect();
        dirs.sort();
        assert!(
            dirs.iter().any(|d| d.ends_with("boot-with-1")),
            "no boot-with-1 in {}",
            work.display()
        );
        dirs.iter().map(|d| Boot::load(d)).collect()
    }

    fn load(dir: &Path) -> Boot {
        let name = dir
            .file_name()
            .unwrap()
            .to_string_lossy()
            .trim_start_matches("boot-")
            .to_string();
        let text = |f: &str| {
            clean(&String::from_utf8_lossy(
                &std::fs::read(dir.join(f)).unwrap_or_default(),
            ))
        };
        let console: Vec<String> = text("console.log").lines().map(str::to_string).collect();
        let mut data: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut standin = None;
        let mut section = String::new();
        for line in text("data.log").lines() {
            if let Some(rest) = line.strip_prefix("=== ") {
                let (head, args) = rest.split_once(' ').unwrap_or((rest, ""));
                section = match head {
                    "output" => format!("output {args}"),
                    h => h.to_string(),
                };
                if head == "standin" {
                    let kv: BTreeMap<&str, f64> = args
                        .split_whitespace()
                        .filter_map(|w| w.split_once('='))
                        .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
                        .collect();
                    if let (Some(a), Some(b), Some(c)) =
                        (kv.get("start"), kv.get("marker"), kv.get("done"))
                    {
                        standin = Some((*a, *b, *c));
                    }
                }
                data.entry(section.clone()).or_default();
            } else if !section.is_empty() {
                data.get_mut(&section).unwrap().push(line.to_string());
            }
        }
        let mut units = BTreeMap::new();
        let mut cur: BTreeMap<String, String> = BTreeMap::new();
        for line in data
            .get("units")
            .cloned()
            .unwrap_or_default()
            .iter()
            .chain([&String::new()])
        {
            match line.split_once('=') {
                Some((k, v)) => {
                    cur.insert(k.to_string(), v.to_string());
                }
                None if !cur.is_empty() => {
                    let c = std::mem::take(&mut cur);
                    units.insert(c.get("Id").cloned().unwrap_or_default(), c);
                }
                None => {}
            }
        }
        let stats = std::fs::read(dir.join("stats.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        Boot {
            kind: name
                .rsplit_once('-')
                .map_or(name.as_str(), |(k, _)| k)
                .to_string(),
            env: read_env(&dir.join("boot.env")),
            name,
            console,
            data,
            standin,
            units,
            stats,
        }
    }

    fn unit(&self, id: &str, key: &str) -> Option<&str> {
        self.units.get(id)?.get(key).map(String::as_str)
    }

    fn unit_us(&self, id: &str, key: &str) -> u64 {
        self.unit(id, key).and_then(|v| v.parse().ok()).unwrap_or(0)
    }

    /// JSON reports (objects with a "version" key) printed by a unit.
    fn reports(&self, unit: &str) -> Vec<Value> {
        self.data
            .get(&format!("output {unit}"))
            .into_iter()
            .flatten()
            .filter_map(|l| json_in(l))
            .filter(|v| v.get("version").is_some())
            .collect()
    }

    /// Journal lines: (monotonic seconds, message part).
    fn journal(&self) -> Vec<(f64, &str)> {
        self.data
            .get("journal")
            .into_iter()
            .flatten()
            .filter_map(|l| {
                let rest = l.strip_prefix('[')?;
                let (ts, msg) = rest.split_once(']')?;
                Some((ts.trim().parse().ok()?, msg))
            })
            .collect()
    }

    fn console_index(&self, pred: impl Fn(&str) -> bool) -> Option<usize> {
        self.console.iter().position(|l| pred(l))
    }

    /// Index of the second "Welcome to" line: the first one after switch-root.
    fn console_switch_root(&self) -> Option<usize> {
        self.console
            .iter()
            .enumerate()
            .filter(|(_, l)| l.starts_with("Welcome to "))
            .nth(1)
            .map(|(i, _)| i)
    }

    fn check_poweroff(&self) -> Result<String, String> {
        let rc = self.env.get("qemu_rc").map(String::as_str).unwrap_or("?");
        if rc != "0" {
            return Err(format!("qemu exit status {rc} (124 = timed out)"));
        }
        if !self
            .console
            .iter()
            .any(|l| l.contains("reboot: Power down"))
        {
            return Err("no 'reboot: Power down' on the console".into());
        }
        match self.standin {
            Some(_) => Ok(format!(
                "in {} s",
                self.env.get("wall_s").map(String::as_str).unwrap_or("?")
            )),
            None => Err("the stand-in reported nothing on ttyS1".into()),
        }
    }

    fn check_initrd(&self) -> Result<String, String> {
        // Console: the unit started in the initrd, before the real root's "Welcome".
        let welcome = self
            .console_switch_root()
            .ok_or("no second 'Welcome to' on the console")?;
        let started = self
            .console_index(|l| {
                l.contains("prewarm-initrd.service")
                    && (l.contains("Started") || l.contains("Starting"))
            })
            .ok_or("prewarm-initrd.service never started (console)")?;
        if started > welcome {
            return Err(format!("prewarm-initrd.service started at console line {started}, after switch-root (line {welcome})"));
        }
        // Journal: its report came out before "Switching root."
        let journal = self.journal();
        let switch = journal
            .iter()
            .find(|(_, m)| m.contains("Switching root."))
            .map(|(t, _)| *t)
            .ok_or("no 'Switching root.' in the journal")?;
        let reports = self.reports("prewarm-initrd.service");
        let report = reports
            .last()
            .ok_or("prewarm-initrd.service printed no JSON report")?;
        let report_t = journal
            .iter()
            .find(|(_, m)| json_in(m).as_ref() == Some(report))
            .map(|(t, _)| *t)
            .ok_or("the initrd report is not in the journal")?;
        if report_t > switch {
            return Err(format!(
                "initrd report at {report_t} s, switch-root at {switch} s"
            ));
        }
        let chunks = chunk_set(report).map_err(|e| format!("initrd report: {e}"))?;
        if chunks.is_empty() {
            return Err("the initrd phase read no chunk".into());
        }
        Ok(format!(
            "started at console line {started} < switch-root line {welcome}; report at {report_t:.2} s < 'Switching root.' at {switch:.2} s; {} chunks read",
            chunks.len()
        ))
    }

    fn check_ready(&self) -> Result<String, String> {
        // systemd's own timestamps (CLOCK_MONOTONIC µs): for Type=notify,
        // ActiveEnter is when READY=1 arrived.
        let ready = self.unit_us("prewarm.service", "ActiveEnterTimestampMonotonic");
        let kubelet = self.unit_us("kubelet.service", "ExecMainStartTimestampMonotonic");
        if ready == 0 {
            return Err(format!(
                "prewarm.service never became active: {:?}",
                self.units.get("prewarm.service")
            ));
        }
        if kubelet == 0 {
            return Err("kubelet.service never started".into());
        }
        if ready > kubelet {
            return Err(format!(
                "READY at {ready} µs, kubelet started at {kubelet} µs"
            ));
        }
        let result = self.unit("prewarm.service", "Result").unwrap_or("?");
        if result != "success" {
            return Err(format!("prewarm.service Result={result}"));
        }
        // Console: "Started prewarm.service" (printed on READY for Type=notify)
        // before "Starting kubelet.service".
        let started = self
            .console_index(|l| l.contains("Started prewarm.service"))
            .ok_or("no 'Started prewarm.service' on the console")?;
        let kube = self
            .console_index(|l| l.contains("kubelet.service") && l.contains("Starting"))
            .ok_or("no 'Starting kubelet.service' on the console")?;
        if started > kube {
            return Err(format!(
                "console: Started prewarm line {started} after Starting kubelet line {kube}"
            ));
        }
        let exec = self.unit_us("prewarm.service", "ExecMainStartTimestampMonotonic");
        Ok(format!(
            "prewarm exec {:.2} s, READY {:.2} s, kubelet start {:.2} s (console lines {started} < {kube})",
            exec as f64 / 1e6,
            ready as f64 / 1e6,
            kubelet as f64 / 1e6
        ))
    }

    /// (hydration start of the marker chunk, chunk → hydration end) from the testbed.
    fn hydration(&self, layout: &Layout) -> Result<(u64, BTreeMap<u64, u64>), String> {
        let stats = self.stats.as_ref().ok_or("no testbed stats")?;
        let order = stats
            .hydration_order
            .as_ref()
            .ok_or("stats without hydration_order")?;
        let marker = order
            .iter()
            .find(|e| e.chunk == layout.marker_chunk)
            .ok_or(format!(
                "marker chunk {} never hydrated",
                layout.marker_chunk
            ))?;
        let ends: BTreeMap<u64, u64> = order.iter().map(|e| (e.chunk, e.end_us)).collect();
        Ok((marker.start_us, ends))
    }

    fn check_hydrated_by_prewarm(&self, layout: &Layout) -> Result<String, String> {
        let (marker_start, ends) = self.hydration(layout)?;
        let late: Vec<u64> = layout
            .big_chunks
            .iter()
            .filter(|c| !matches!(ends.get(c), Some(&e) if e <= marker_start))
            .copied()
            .collect();
        if !late.is_empty() {
            return Err(format!(
                "{} of {} chunks of the big file hydrated after the stand-in started reading (marker fetch at {} µs): {late:?}",
                late.len(),
                layout.big_chunks.len(),
                marker_start
            ));
        }
        let mut read = BTreeSet::new();
        for unit in ["prewarm-initrd.service", "prewarm.service"] {
            for r in self.reports(unit) {
                read.extend(chunk_set(&r).map_err(|e| format!("{unit} report: {e}"))?);
            }
        }
        let unread: Vec<u64> = layout.big_chunks.difference(&read).copied().collect();
        if !unread.is_empty() {
            return Err(format!(
                "chunks of the big file in no prewarm report: {unread:?}"
            ));
        }
        let last = layout.big_chunks.iter().map(|c| ends[c]).max().unwrap_or(0);
        Ok(format!(
            "all {} chunks hydrated by {:.3} s (testbed clock), the stand-in's first read at {:.3} s; all in prewarm's reports",
            layout.big_chunks.len(),
            last as f64 / 1e6,
            marker_start as f64 / 1e6
        ))
    }

    fn check_self_hydrated(&self, layout: &Layout) -> Result<String, String> {
        let (marker_start, ends) = self.hydration(layout)?;
        let after = layout
            .big_chunks
            .iter()
            .filter(|c| ends.get(c).is_some_and(|&e| e > marker_start))
            .count();
        if after == 0 {
            return Err("every chunk of the big file was hydrated before the stand-in read it, without prewarm".into());
        }
        Ok(format!(
            "{after} of {} chunks hydrated after the stand-in started reading",
            layout.big_chunks.len()
        ))
    }

    fn check_disabled(&self) -> Result<String, String> {
        let n =
            self.reports("prewarm-initrd.service").len() + self.reports("prewarm.service").len();
        let ran = self.unit_us("prewarm.service", "ExecMainStartTimestampMonotonic");
        if n > 0 || ran != 0 {
            return Err(format!(
                "prewarm ran although disabled ({n} reports, exec at {ran} µs)"
            ));
        }
        Ok("no prewarm report, prewarm.service not run".into())
    }

    fn check_disjoint(&self) -> Result<String, String> {
        let initrd = self.reports("prewarm-initrd.service");
        let root = self.reports("prewarm.service");
        if initrd.len() != 1 || root.len() != 1 {
            return Err(format!(
                "expected one report per phase, got initrd {} root {}",
                initrd.len(),
                root.len()
            ));
        }
        let a = chunk_set(&initrd[0]).map_err(|e| format!("initrd report: {e}"))?;
        let b = chunk_set(&root[0]).map_err(|e| format!("root report: {e}"))?;
        let both: Vec<u64> = a.intersection(&b).copied().collect();
        if !both.is_empty() {
            return Err(format!(
                "{} chunks read by both phases: {both:?}",
                both.len()
            ));
        }
        // The root phase got the initrd's chunks through the state in /run.
        let handed = root[0]
            .pointer("/manifest/handover_chunks")
            .and_then(Value::as_u64)
            .ok_or("root report has no manifest.handover_chunks")?;
        if handed != a.len() as u64 {
            return Err(format!(
                "root phase was handed {handed} chunks, the initrd read {}",
                a.len()
            ));
        }
        Ok(format!(
            "initrd read {} chunks, root {} chunks, none by both; {handed} handed over in /run",
            a.len(),
            b.len()
        ))
    }

    fn hydrated_before(&self, layout: &Layout) -> Option<(usize, usize)> {
        let (marker_start, ends) = self.hydration(layout).ok()?;
        let before = layout
            .big_chunks
            .iter()
            .filter(|c| ends.get(c).is_some_and(|&e| e <= marker_start))
            .count();
        Some((before, layout.big_chunks.len()))
    }
}

/// Strips CRs and ANSI escape sequences.
fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {}
            '\x1b' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for d in chars.by_ref() {
                        if d.is_ascii_alphabetic() {
                            break;
                        }
                    }
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// The JSON object starting at the first '{' of a line, if it parses.
fn json_in(line: &str) -> Option<Value> {
    let i = line.find('{')?;
    serde_json::from_str(line[i..].trim_end()).ok()
}

/// Every chunk named by the "chunks_read" ranges ([start, end) pairs) anywhere
/// in a report; fails when ranges of one device overlap (a chunk read twice).
fn chunk_set(report: &Value) -> Result<BTreeSet<u64>, String> {
    fn ranges(v: &Value, out: &mut Vec<Vec<(u64, u64)>>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    if k == "chunks_read" {
                        collect(x, out);
                    } else {
                        ranges(x, out);
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| ranges(x, out)),
            _ => {}
        }
    }
    // A list of pairs, or an object {device: list of pairs}.
    fn collect(v: &Value, out: &mut Vec<Vec<(u64, u64)>>) {
        match v {
            Value::Object(m) => m.values().for_each(|x| collect(x, out)),
            Value::Array(a) => out.push(
                a.iter()
                    .filter_map(|p| Some((p.get(0)?.as_u64()?, p.get(1)?.as_u64()?)))
                    .collect(),
            ),
            _ => {}
        }
    }
    let mut per_device = Vec::new();
    ranges(report, &mut per_device);
    if per_device.is_empty() {
        return Err("no chunks_read in the report".into());
    }
    let mut all = BTreeSet::new();
    for dev in per_device {
        let mut seen = BTreeSet::new();
        for (s, e) in dev {
            for c in s..e {
                if !seen.insert(c) {
                    return Err(format!("chunk {c} appears twice in one report"));
                }
            }
        }
        all.extend(seen);
    }
    Ok(all)
}

#[derive(Default)]
struct Checks {
    lines: Vec<(bool, String)>,
}

impl Checks {
    fn check(&mut self, boot: &str, what: &str, r: Result<String, String>) {
        let (ok, detail) = match r {
            Ok(d) => (true, d),
            Err(d) => (false, d),
        };
        let line = format!(
            "{} [{boot}] {what}: {detail}",
            if ok { "PASS" } else { "FAIL" }
        );
        eprintln!("{line}");
        self.lines.push((ok, line));
    }

    fn failed(&self) -> impl Iterator<Item = &String> {
        self.lines.iter().filter(|(ok, _)| !ok).map(|(_, l)| l)
    }
}

// ---------------------------------------------------------------------------
// benches/RESULTS.md

use prewarm_benches::e2e::{VM_BOOT_END as END, VM_BOOT_START as START};

fn results_section(
    layout: &Layout,
    boots: &[Boot],
    checks: &Checks,
    work: &Path,
    elapsed: Duration,
) -> String {
    let timings = read_env(&work.join("timings.env"));
    let stats = boots.iter().find_map(|b| b.stats.as_ref());
    let (lat, conc) = stats
        .map(|s| (s.latency_us as f64 / 1000.0, s.concurrency))
        .unwrap_or((0.0, 0));
    let mut s = format!("{START}\n## VM boot on the lazy disk\n\n");
    s.push_str(&format!(
        "`benches/tests/vm_boot.rs` (root; `cargo test --release -p prewarm-benches --test vm_boot -- --nocapture`): \
a Debian 12 guest (systemd 252, dracut initrd with `50prewarm`) boots under qemu {} (2 vCPUs, 1 GiB) \
from its root disk served by `prewarm-testbed` ({lat} ms per cold 512 KiB chunk, {conc} fetches in \
flight); a stand-in `kubelet.service` reads a {} MiB binary, then powers the VM off. Times are the \
guest's `/proc/uptime` (seconds since kernel start) when the stand-in started and finished reading.\n\n",
        match timings.get("accel").map(String::as_str) {
            Some("kvm") => "KVM",
            _ => "TCG (KVM probed: it does not boot a stock kernel on this host)",
        },
        layout.big_chunks.len() / 2
    ));
    // Mean and range per kind of boot.
    s.push_str("| boot | runs | kubelet started | kubelet finished reading | reading took |\n");
    s.push_str("| --- | --- | --- | --- | --- |\n");
    let mut kinds: Vec<&str> = boots.iter().map(|b| b.kind.as_str()).collect();
    kinds.dedup();
    kinds.sort();
    kinds.dedup();
    for kind in kinds {
        let runs: Vec<(f64, f64, f64)> = boots
            .iter()
            .filter(|b| b.kind == kind)
            .filter_map(|b| b.standin)
            .collect();
        let col =
            |f: &dyn Fn(&(f64, f64, f64)) -> f64| summary(&runs.iter().map(f).collect::<Vec<_>>());
        s.push_str(&format!(
            "| {} | {} | {} | **{}** | {} |\n",
            kind_label(kind),
            runs.len(),
            col(&|r| r.0),
            col(&|r| r.2),
            col(&|r| r.2 - r.0),
        ));
    }
    s.push_str(
        "\nEach boot, seconds since kernel start (\"hydrated first\": chunks of the binary hydrated \
before the stand-in's first read, testbed clock; READY: `prewarm.service` became active):\n\n",
    );
    s.push_str("| boot | root device found | switch-root | READY | kubelet started | finished reading | reading took | hydrated first | qemu wall |\n");
    s.push_str("| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    for b in boots {
        let (st, done, took) = match b.standin {
            Some((a, _, c)) => (
                format!("{a:.2}"),
                format!("{c:.2}"),
                format!("{:.2}", c - a),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        let hyd = b
            .hydrated_before(layout)
            .map(|(x, n)| format!("{x}/{n}"))
            .unwrap_or("-".into());
        let ready = match b.unit_us("prewarm.service", "ActiveEnterTimestampMonotonic") {
            0 => "-".to_string(),
            us => format!("{:.2}", us as f64 / 1e6),
        };
        let wall = b.env.get("wall_s").cloned().unwrap_or_default();
        let at = |what: &str| {
            b.journal()
                .iter()
                .find(|(_, m)| m.contains(what))
                .map_or("-".to_string(), |(t, _)| format!("{t:.2}"))
        };
        let (dev, switch) = (at("Found device dev-disk-by"), at("Switching root."));
        s.push_str(&format!(
            "| {} | {dev} | {switch} | {ready} | {st} | {done} | {took} | {hyd} | {wall} |\n",
            b.name
        ));
    }
    s.push_str(
        "\nUnder TCG on this 2-core host the boot up to the stand-in varies by seconds between runs \
(host load, emulation), while the stand-in's own reading time depends on the disk only. prewarm's \
own work (starting, reading the manifest, checking files) is emulated too, so it costs more time \
here than on a real node.\n\nChecks:\n\n",
    );
    for (_, l) in &checks.lines {
        s.push_str(&format!("- {l}\n"));
    }
    let root_s = timings.get("root_s").map(String::as_str).unwrap_or("?");
    s.push_str(&format!(
        "\nRun: Debian root tree {root_s} s ({}), image + initrd {} s, whole test {} s; guest kernel {}; {} build.\n{END}\n",
        if root_s.parse::<u64>().unwrap_or(0) > 5 { "mmdebstrap" } else { "cached" },
        timings.get("image_s").map(String::as_str).unwrap_or("?"),
        elapsed.as_secs(),
        layout.env.get("KVER").map(String::as_str).unwrap_or("?"),
        if cfg!(debug_assertions) { "debug" } else { "release" },
    ));
    s
}

fn kind_label(kind: &str) -> &str {
    match kind {
        "with" => "prewarm on",
        "without" => "prewarm off (`prewarm=0 rd.prewarm=0`)",
        "rootonly" => "root phase only (`rd.prewarm=0`)",
        "initrdonly" => "initrd phase only (`prewarm=0`)",
        k => k,
    }
}

/// "mean s (min–max)" of some seconds.
fn summary(v: &[f64]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let (lo, hi) = v
        .iter()
        .fold((f64::MAX, f64::MIN), |(l, h), &x| (l.min(x), h.max(x)));
    if v.len() == 1 {
        format!("{mean:.2} s")
    } else {
        format!("{mean:.2} s ({lo:.2}–{hi:.2})")
    }
}

/// Replaces (or appends) the vm-boot section of benches/RESULTS.md, leaving
/// the rest of the file alone.
fn write_results(section: &str) {
    let path = Path::new(MANIFEST_DIR).join("RESULTS.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let new = match (old.find(START), old.find(END)) {
        (Some(a), Some(b)) if b > a => format!(
            "{}{}{}",
            &old[..a],
            section.trim_end(),
            &old[b + END.len()..]
        ),
        _ if old.is_empty() => format!("# Results\n\n{section}"),
        _ => format!("{}\n\n{section}", old.trim_end()),
    };
    if let Err(e) = std::fs::write(&path, new) {
        eprintln!("cannot write {}: {e}", path.display());
    }
}
