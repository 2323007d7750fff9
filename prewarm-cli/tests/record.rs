//! `prewarm record` on a real ext4 loop device: a child process reads a
//! small file whole and 64 KiB in the middle of a 32 MiB file; the
//! recording names both in first-access order, the big one with the range
//! around what was read (not the whole file), and not the file nobody
//! touched. The recording plans and replays only those ranges, and
//! SIGTERM ends a recording with it written; an `--until` unit's first
//! reads once it is active stay in the urgent classes.

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
use prewarm_core::map::ByteRange;

const BIG: usize = 32 << 20;
const AT: u64 = 8 << 20;

/// A fresh ext4 image mounted under `dir/mnt` with `small` (10 KiB), `big`
/// (32 MiB) and `untouched` (1 MiB), none of them in the page cache.
fn image(dir: &Path) -> (LoopDev, Mounted) {
    let image = dir.join("fs.img");
    make_fs_image(&image, "ext4", 128);
    let lo = LoopDev::attach(&image, false);
    let m = Mounted::mount(lo.path(), &dir.join("mnt"), "ext4", "rw");
    fs::write(m.dir.join("small"), vec![1u8; 10 << 10]).unwrap();
    fs::write(m.dir.join("big"), vec![2u8; BIG]).unwrap();
    fs::write(m.dir.join("untouched"), vec![3u8; 1 << 20]).unwrap();
    cmd("sync", &[]);
    for name in ["small", "big", "untouched"] {
        drop_cached(&m.dir.join(name));
    }
    (lo, m)
}

/// Evict the clean pages of `path` from the page cache, as reclaim would.
fn drop_cached(path: &Path) {
    let f = fs::File::open(path).unwrap();
    posix_fadvise(f.as_raw_fd(), 0, 0, PosixFadviseAdvice::POSIX_FADV_DONTNEED).unwrap();
}

/// Everything the recorder printed on standard output, once it has ended.
fn stdout_of(child: &mut Child) -> String {
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    out
}

/// `prewarm record ARGS`, returned once it says it is watching.
fn start_recording(args: &[&str]) -> Child {
    start_recording_with_path(args, None)
}

/// [`start_recording`] with `PATH` set to `path` (a fake `systemctl`).
fn start_recording_with_path(args: &[&str], path: Option<&str>) -> Child {
    let mut command = Command::new(assert_cmd::cargo::cargo_bin("prewarm"));
    if let Some(path) = path {
        command.env("PATH", path);
    }
    let mut child = command
        .arg("record")
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "prewarm record ended before watching"
        );
        if line.contains("watching the filesystems") {
            break;
        }
    }
    // Keep draining standard error so the recorder never blocks on it.
    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    child
}

/// Wait at most `limit` for `child`; its exit code.
fn wait(child: &mut Child, limit: Duration) -> i32 {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        assert!(
            start.elapsed() < limit,
            "prewarm record still running after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Read `small` whole, then 64 KiB of `big` at 8 MiB, from another process.
fn workload(mnt: &Path) {
    let script = format!(
        "cat {0}/small >/dev/null && sleep 0.2 && dd if={0}/big of=/dev/null bs=65536 skip={1} count=1 2>/dev/null",
        mnt.display(),
        AT / 65536
    );
    cmd("sh", &["-c", &script]);
}

/// Holds `len` bytes of `path` from `offset` in memory until dropped. The
/// recorder takes what the page cache holds (every second and at the end)
/// for what was read, and these machines run proactive reclaim (a DAMON
/// `pageout` scheme), which can evict a clean page within a second of its
/// read: so the workload holds what it read, as a service holds its mapped
/// binary. The mapping is `MADV_RANDOM`, so locking it reads nothing
/// around the range.
fn hold(path: &Path, offset: u64, len: usize) -> memmap2::Mmap {
    let file = fs::File::open(path).unwrap();
    // Safety: the mapping is never read by this process (only locked);
    // nothing writes the file while it is mapped.
    let map = unsafe {
        memmap2::MmapOptions::new()
            .offset(offset)
            .len(len)
            .map(&file)
    }
    .unwrap();
    map.advise(memmap2::Advice::Random).unwrap();
    map.lock().unwrap();
    map
}

/// The recording's entries: (path, priority, ranges).
fn entries(rec: &Path) -> Vec<(PathBuf, u32, Option<Vec<ByteRange>>)> {
    let (entries, warnings) = prewarm_core::read_list(rec).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    entries
        .into_iter()
        .map(|e| (e.path, e.priority, e.ranges))
        .collect()
}

/// A recording of a fresh [`image`]: the recorder, started with the
/// arguments asked for and `-o REC MNT`, and what it watches. Fields drop
/// in order: the mount before its loop device, the directory after both,
/// the lock last.
struct Session {
    child: Child,
    rec: PathBuf,
    m: Mounted,
    _lo: LoopDev,
    _tmp: tempfile::TempDir,
    _serial: std::sync::MutexGuard<'static, ()>,
}

/// A [`Session`], or none when privileged tests are skipped.
fn session(test: &str, tools: &[&str], args: &[&str]) -> Option<Session> {
    session_with_path(test, tools, args, None)
}

/// [`session`] with the recorder's `PATH` set to `path`.
fn session_with_path(
    test: &str,
    tools: &[&str],
    args: &[&str],
    path: Option<&str>,
) -> Option<Session> {
    if !privileged(test, tools) {
        return None;
    }
    let serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let (lo, m) = image(tmp.path());
    let rec = tmp.path().join("boot.rec");
    let (out, dir) = (rec.to_str().unwrap(), m.dir.to_str().unwrap());
    let mut all = args.to_vec();
    all.extend(["-o", out, dir]);
    let child = start_recording_with_path(&all, path);
    Some(Session {
        child,
        rec,
        m,
        _lo: lo,
        _tmp: tmp,
        _serial: serial,
    })
}

#[test]
fn record_names_what_was_read_in_order_and_plans_only_that() {
    let Some(mut s) = session(
        "record_names_what_was_read",
        &["mkfs.ext4", "losetup", "dd"],
        &["--duration", "3s"],
    ) else {
        return;
    };
    let (m, rec) = (&s.m, &s.rec);
    workload(&m.dir);
    let _held = [
        hold(&m.dir.join("small"), 0, 10 << 10),
        hold(&m.dir.join("big"), AT, 65536),
    ];
    assert_eq!(wait(&mut s.child, Duration::from_secs(20)), 0);
    let summary = stdout_of(&mut s.child);
    assert!(summary.contains("ended by the duration"), "{summary}");

    let got = entries(rec);
    let names: Vec<_> = got.iter().map(|(p, _, _)| p.clone()).collect();
    assert_eq!(
        names,
        [m.dir.join("small"), m.dir.join("big")],
        "first-access order, nothing untouched"
    );
    assert!(
        got.iter().all(|(_, prio, _)| (10..=20).contains(prio)) && got[0].1 <= got[1].1,
        "{got:?}"
    );
    let small = got[0].2.clone().unwrap();
    assert_eq!(
        small,
        [ByteRange {
            offset: 0,
            len: 10 << 10
        }]
    );
    let big = got[1].2.clone().unwrap();
    let covered: u64 = big.iter().map(|r| r.len).sum();
    assert!(
        big.iter().any(|r| r.offset <= AT && r.end() >= AT + 65536),
        "the range read is recorded: {big:?}"
    );
    assert!(
        covered < 4 << 20,
        "not the whole file, only around the read: {big:?}"
    );

    // The plan of the recording reads only those ranges' chunks.
    let (dry, out) = prewarm_json(&["--dry-run", "--paths", rec.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(u(&dry["files"]), 2);
    assert!(u(&dry["mapped_bytes"]) <= covered + (10 << 10), "{dry}");
    assert!(u(&dry["planned_bytes"]) <= covered + (4 << 20), "{dry}");

    // A manifest carries the ranges; a changed file is mapped again for
    // them only.
    let manifest = rec.with_file_name("boot.manifest");
    let out = prewarm(&[
        "plan",
        "--paths",
        rec.to_str().unwrap(),
        "-o",
        manifest.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let (shown, _) = prewarm_json(&["show", manifest.to_str().unwrap()]);
    let files = shown["devices"][0]["files"].as_array().unwrap();
    let big_entry = files.iter().find(|f| f["path"] == "big").unwrap();
    assert!(big_entry["ranges"].is_array(), "{big_entry}");
    cmd("touch", &[m.dir.join("big").to_str().unwrap()]);
    let (run, out) = prewarm_json(&["run", "--phase", "root", "-m", manifest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(u(&run["manifest"]["changed"]), 1, "{}", run["manifest"]);
    assert!(u(&run["planned_bytes"]) <= covered + (4 << 20), "{run}");
}

#[test]
fn sigterm_ends_a_recording_with_it_written() {
    let Some(mut s) = session("sigterm_ends_a_recording", &["mkfs.ext4", "losetup"], &[]) else {
        return;
    };
    let m = &s.m;
    let mut f = fs::File::open(m.dir.join("big")).unwrap();
    f.seek(SeekFrom::Start(AT)).unwrap();
    let mut buf = vec![0u8; 4096];
    f.read_exact(&mut buf).unwrap();
    let _held = hold(&m.dir.join("big"), AT, 4096);
    std::thread::sleep(Duration::from_millis(300));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(s.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(wait(&mut s.child, Duration::from_secs(10)), 0);
    let got = entries(&s.rec);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, m.dir.join("big"));
    drop(f);
}

#[test]
fn files_read_before_the_recorder_started_join_an_earlier_class() {
    if !privileged("files_read_before_the_recorder", &["mkfs.ext4", "losetup"]) {
        return;
    }
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let (lo, m) = image(tmp.path());
    // Read before the recording starts: no event will name it.
    let mut early = vec![0u8; 4096];
    fs::File::open(m.dir.join("small"))
        .unwrap()
        .read_exact(&mut early)
        .unwrap();
    let _held = hold(&m.dir.join("small"), 0, 4096);
    for (flag, expect) in [(None, true), (Some("--only-events"), false)] {
        let rec = tmp.path().join(format!("{flag:?}.rec"));
        let mut args = vec!["--duration", "1s", "-o", rec.to_str().unwrap()];
        args.extend(flag);
        args.push(m.dir.to_str().unwrap());
        let mut child = start_recording(&args);
        assert_eq!(wait(&mut child, Duration::from_secs(10)), 0);
        let got = entries(&rec);
        let small = got.iter().find(|e| e.0 == m.dir.join("small"));
        assert_eq!(small.is_some(), expect, "{flag:?}: {got:?}");
        if let Some(e) = small {
            assert_eq!(e.1, prewarm_core::record::EARLIER_CLASS, "{got:?}");
        }
        // Never the files nobody read.
        assert!(
            !got.iter().any(|e| e.0 == m.dir.join("untouched")),
            "{got:?}"
        );
    }
    drop(m);
    drop(lo);
}

/// A page read and then evicted before the recording ends (here by
/// `POSIX_FADV_DONTNEED`, as reclaim would) is still recorded: a look at
/// the page cache while watching saw it, and the summary counts it.
#[test]
fn pages_evicted_before_the_end_are_still_recorded() {
    let Some(mut s) = session(
        "pages_evicted_before_the_end",
        &["mkfs.ext4", "losetup", "dd"],
        &["--json", "--duration", "4s"],
    ) else {
        return;
    };
    let big = s.m.dir.join("big");
    let script = format!(
        "dd if={} of=/dev/null bs=65536 skip={} count=1 2>/dev/null",
        big.display(),
        AT / 65536
    );
    cmd("sh", &["-c", &script]);
    let held = hold(&big, AT, 65536);
    // The recorder looks every second: two looks see the range held.
    std::thread::sleep(Duration::from_millis(2500));
    drop(held);
    drop_cached(&big);
    assert_eq!(wait(&mut s.child, Duration::from_secs(20)), 0);
    let summary: serde_json::Value = serde_json::from_str(&stdout_of(&mut s.child)).unwrap();
    assert!(u(&summary["looks"]) >= 2, "{summary}");
    assert!(u(&summary["bytes_evicted"]) >= 65536, "{summary}");

    let got = entries(&s.rec);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, big);
    let ranges = got[0].2.clone().unwrap();
    assert!(
        ranges
            .iter()
            .any(|r| r.offset <= AT && r.end() >= AT + 65536),
        "the range read, then evicted, is recorded: {ranges:?}"
    );
}

/// A cgroup named like a systemd service, made in the first hierarchy
/// that takes one (the unified one, else a controller's), removed on drop.
struct UnitCgroup {
    dir: PathBuf,
}

impl UnitCgroup {
    fn make(unit: &str) -> Option<UnitCgroup> {
        let root = Path::new("/sys/fs/cgroup");
        let mut bases = vec![root.to_path_buf()];
        if let Ok(dirs) = fs::read_dir(root) {
            let mut v1: Vec<PathBuf> = dirs.filter_map(|e| e.ok().map(|e| e.path())).collect();
            v1.sort();
            bases.extend(v1);
        }
        bases
            .into_iter()
            .filter(|b| b.join("cgroup.procs").exists())
            .find_map(|b| {
                let dir = b.join(unit);
                fs::create_dir(&dir).ok()?;
                Some(UnitCgroup { dir })
            })
    }
}

impl Drop for UnitCgroup {
    fn drop(&mut self) {
        // Its processes are gone by now (waited for); a cgroup with none
        // is removed with rmdir.
        let _ = fs::remove_dir(&self.dir);
    }
}

/// The `--until` unit's own first reads once it is active (a service's
/// start-up, just after systemd started it) stay in the last urgent class,
/// and come before what other processes read then. The unit is a cgroup
/// named like one; a fake `systemctl` on the recorder's PATH says it is
/// active once a flag file exists.
#[test]
fn an_until_units_reads_once_it_is_active_stay_urgent() {
    let test = "an_until_units_reads_once_it_is_active_stay_urgent";
    if !privileged(test, &["mkfs.ext4", "losetup", "dd"]) {
        return;
    }
    let unit = format!("prewarm-test-{}.service", std::process::id());
    let Some(cgroup) = UnitCgroup::make(&unit) else {
        skip(test, "no cgroup hierarchy takes a new cgroup here");
        return;
    };
    let fake = tempfile::tempdir().unwrap();
    let flag = fake.path().join("active");
    let systemctl = fake.path().join("systemctl");
    fs::write(
        &systemctl,
        format!("#!/bin/sh\nexec test -e {}\n", flag.display()),
    )
    .unwrap();
    cmd("chmod", &["+x", systemctl.to_str().unwrap()]);
    let path = format!(
        "{}:{}",
        fake.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let Some(mut s) = session_with_path(
        test,
        &[],
        &["--json", "--until", &unit, "--settle", "3s"],
        Some(&path),
    ) else {
        return;
    };
    let m = s.m.dir.clone();
    // Before the unit is active: `big`, by this test's dd.
    let dd = |name: &str, skip: u64| {
        let input = format!("if={}", m.join(name).display());
        let skip = format!("skip={skip}");
        cmd(
            "dd",
            &[&input, "of=/dev/null", "bs=65536", "count=1", &skip],
        );
    };
    dd("big", AT / 65536);
    let _big = hold(&m.join("big"), AT, 65536);
    std::thread::sleep(Duration::from_millis(300));
    fs::write(&flag, b"").unwrap();
    // The recorder asks every 500 ms: it has seen the unit active by now.
    std::thread::sleep(Duration::from_millis(1500));
    // Once it is active: `small`, read whole by a shell in the unit's
    // cgroup (which stays alive for the recorder to ask about it), and
    // `untouched`'s first 64 KiB by this test, in no unit.
    let procs = cgroup.dir.join("cgroup.procs");
    let script = format!(
        "echo $$ > {} && read -r line < {} ; sleep 2",
        procs.display(),
        m.join("small").display()
    );
    let mut in_unit = Command::new("sh").args(["-c", &script]).spawn().unwrap();
    dd("untouched", 0);
    std::thread::sleep(Duration::from_millis(300));
    let _held = [
        hold(&m.join("small"), 0, 10 << 10),
        hold(&m.join("untouched"), 0, 65536),
    ];
    assert_eq!(wait(&mut s.child, Duration::from_secs(20)), 0);
    assert!(in_unit.wait().unwrap().success());
    let summary: serde_json::Value = serde_json::from_str(&stdout_of(&mut s.child)).unwrap();
    assert_eq!(summary["ended"], "units_settled", "{summary}");
    assert_eq!(summary["until_unit_files"], 1, "{summary}");
    let got: Vec<(PathBuf, u32)> = entries(&s.rec).into_iter().map(|e| (e.0, e.1)).collect();
    let last_urgent = prewarm_core::record::FIRST_CLASS + prewarm_core::record::URGENT_CLASSES - 1;
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[0].0, m.join("big"), "{got:?}");
    assert!(got[0].1 <= last_urgent, "{got:?}");
    assert_eq!(got[1], (m.join("small"), last_urgent), "{got:?}");
    assert_eq!(got[2].0, m.join("untouched"), "{got:?}");
    assert!(got[2].1 > last_urgent, "{got:?}");
}
