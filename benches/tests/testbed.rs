//! End-to-end tests of the `prewarm-testbed` binary: real FUSE mounts, real
//! loop devices, checked through the testbed's own counters (never wall-clock).
//!
//! They need root and /dev/fuse. Without them each test prints
//! `SKIP: <reason>` to stderr and returns, unless PREWARM_REQUIRE_PRIVILEGED=1,
//! in which case it panics.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use prewarm_benches::fixture::parse_filefrag;
use prewarm_benches::lazy::Stats;

mod common;
use common::run;

const BIN: &str = env!("CARGO_BIN_EXE_prewarm-testbed");
const CHUNK: u64 = 512 * 1024;
const IMAGE_SIZE: u64 = 64 << 20;

/// True when the test may run (root, /dev/fuse, `needs`); otherwise SKIP
/// (see `common::or_skip`).
fn privileged(needs: &[&str]) -> bool {
    common::privileged_with(true, needs)
}

/// Deterministic pseudo-random bytes.
fn random_bytes(len: u64, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut v = vec![0u8; len as usize];
    rng.fill(&mut v);
    v
}

/// A running testbed on a temp image; unmounts everything and kills the server on drop.
struct Testbed {
    dir: tempfile::TempDir,
    image: PathBuf,
    mount: PathBuf,
    child: Option<Child>,
    /// Loop devices to detach and filesystems to unmount, undone in reverse.
    loops: Vec<String>,
    inner_mounts: Vec<PathBuf>,
}

impl Testbed {
    /// Serves a fresh 64 MiB random image.
    fn start(extra: &[&str]) -> Testbed {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = dir.path().join("backing.img");
        std::fs::write(&image, random_bytes(IMAGE_SIZE, 42)).expect("write image");
        Self::serve(dir, image, extra)
    }

    fn serve(dir: tempfile::TempDir, image: PathBuf, extra: &[&str]) -> Testbed {
        let mount = dir.path().join("mnt");
        std::fs::create_dir(&mount).expect("mkdir mnt");
        let ready = dir.path().join("ready");
        let log = File::create(dir.path().join("serve.log")).expect("log");
        let child = Command::new(BIN)
            .arg("serve")
            .arg("--image")
            .arg(&image)
            .arg("--mount")
            .arg(&mount)
            .arg("--ready-file")
            .arg(&ready)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn prewarm-testbed");
        let mut tb = Testbed {
            dir,
            image,
            mount,
            child: Some(child),
            loops: Vec::new(),
            inner_mounts: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ready.exists() {
            if let Some(child) = tb.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    tb.child = None;
                    panic!("testbed exited early ({status}): {}", tb.log());
                }
            }
            assert!(Instant::now() < deadline, "testbed not ready: {}", tb.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        tb
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }

    fn disk(&self) -> PathBuf {
        self.mount.join("disk.img")
    }

    fn open(&self) -> File {
        File::open(self.disk()).expect("open disk.img")
    }

    fn cli(&self, args: &[&str]) -> String {
        run(Command::new(BIN).args(args).arg("--mount").arg(&self.mount))
    }

    fn stats(&self) -> Stats {
        let text = self.cli(&["stats"]);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad stats JSON {e}: {text}"))
    }

    fn reset(&self) {
        self.cli(&["reset"]);
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        for m in self.inner_mounts.drain(..).rev() {
            let _ = Command::new("umount").arg(&m).status();
        }
        for l in self.loops.drain(..).rev() {
            let _ = Command::new("losetup").arg("-d").arg(&l).status();
        }
        if let Some(mut child) = self.child.take() {
            let unmounted = Command::new("fusermount3")
                .arg("-u")
                .arg(&self.mount)
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if !unmounted {
                let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
    }
}

fn chunk_of(off: u64) -> u64 {
    off / CHUNK
}

#[test]
fn one_byte_read_hydrates_exactly_that_chunk_once() {
    if !privileged(&[]) {
        return;
    }
    let tb = Testbed::start(&[]);
    let want = random_bytes(IMAGE_SIZE, 42);
    let off = 37 * CHUNK + 12345;
    let f = tb.open();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, off).expect("read");
    assert_eq!(b[0], want[off as usize]);
    let s = tb.stats();
    assert_eq!(s.hydrated, Some(vec![chunk_of(off)]));
    assert_eq!(
        (s.fetches, s.hydrated_chunks, s.reads, s.bytes_read),
        (1, 1, 1, 1)
    );
    let order = s.hydration_order.expect("order");
    assert_eq!(order.len(), 1);
    assert_eq!(order[0].chunk, 37);

    // Second read of the same chunk: served, not fetched again.
    f.read_exact_at(&mut b, off + 1000).expect("read again");
    let s = tb.stats();
    assert_eq!((s.fetches, s.reads, s.hydrated_chunks), (1, 2, 1));

    // The in-mount stats file agrees.
    let text = std::fs::read_to_string(tb.mount.join(".control/stats")).expect("stats file");
    let fs_stats: Stats = serde_json::from_str(&text).expect("stats file JSON");
    assert_eq!(fs_stats.hydrated, Some(vec![37]));
    assert_eq!(fs_stats.fetches, 1);
}

#[test]
fn bytes_through_the_mount_equal_the_backing_image() {
    if !privileged(&[]) {
        return;
    }
    let tb = Testbed::start(&["--latency-ms", "0.2"]);
    let want = std::fs::read(&tb.image).expect("read backing");
    let mut got = Vec::with_capacity(want.len());
    tb.open().read_to_end(&mut got).expect("read through mount");
    assert_eq!(got.len(), want.len());
    assert!(got == want, "content differs");
    // Odd, chunk-straddling reads too.
    let f = tb.open();
    for &(off, len) in &[
        (CHUNK - 7, 100usize),
        (5 * CHUNK + 1, 3 * CHUNK as usize),
        (IMAGE_SIZE - 3, 3),
    ] {
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, off).expect("pread");
        assert!(
            buf == want[off as usize..off as usize + len],
            "mismatch at {off}"
        );
    }
    let s = tb.stats();
    assert_eq!(s.hydrated_chunks, IMAGE_SIZE / CHUNK);
    assert_eq!(s.fetches, IMAGE_SIZE / CHUNK);
    assert_eq!(s.failed_reads, 0);
}

#[test]
fn sixteen_parallel_cold_reads_are_capped_at_eight_fetches() {
    if !privileged(&[]) {
        return;
    }
    let latency_ms = 100u64;
    let tb = Testbed::start(&[
        "--concurrency",
        "8",
        "--latency-ms",
        &latency_ms.to_string(),
    ]);
    let barrier = Arc::new(Barrier::new(16));
    let t0 = Instant::now();
    let handles: Vec<_> = (0..16u64)
        .map(|i| {
            let f = tb.open();
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                let mut b = [0u8; 1];
                f.read_exact_at(&mut b, (i * 3 + 1) * CHUNK + 17)
            })
        })
        .collect();
    for h in handles {
        h.join().expect("join").expect("parallel read");
    }
    let elapsed = t0.elapsed();
    let s = tb.stats();
    eprintln!(
        "info: 16 cold reads, cap 8, latency {latency_ms} ms: {:.1} ms ({:.2} latencies), peak {}",
        elapsed.as_secs_f64() * 1e3,
        elapsed.as_secs_f64() * 1e3 / latency_ms as f64,
        s.peak_concurrent_fetches
    );
    assert_eq!(s.fetches, 16);
    assert_eq!(s.peak_concurrent_fetches, 8);
    assert_eq!(s.slot_waits, 8);
    let mut want: Vec<u64> = (0..16u64).map(|i| i * 3 + 1).collect();
    want.sort_unstable();
    assert_eq!(s.hydrated, Some(want));

    // From the testbed's own clock: every fetch held its slot for the
    // latency and was readable no sooner, the second wave of 8 started only
    // as slots of the first freed, and the whole took about two latencies
    // (two rounds, not one, not 16).
    let lat_us = latency_ms * 1000;
    let mut order = s.hydration_order.expect("hydration order");
    order.sort_by_key(|e| e.start_us);
    for e in &order {
        assert!(e.slot_us() >= lat_us, "fetch too fast: {e:?}");
        assert!(
            e.end_us - e.start_us >= lat_us,
            "chunk readable too soon: {e:?}"
        );
    }
    let mut first_wave_ends: Vec<u64> = order[..8]
        .iter()
        .map(|e| e.start_us + e.slot_us())
        .collect();
    first_wave_ends.sort_unstable();
    for (k, e) in order[8..].iter().enumerate() {
        assert!(
            e.start_us >= first_wave_ends[k],
            "fetch {k} of the second wave started before a slot was free: {e:?}"
        );
    }
    let span = order.iter().map(|e| e.end_us).max().unwrap() - order[0].start_us;
    assert!(
        (2 * lat_us..3 * lat_us).contains(&span),
        "16 fetches, 8 at a time, took {span} µs: not about two latencies of {lat_us} µs"
    );
}

#[test]
fn concurrent_readers_of_one_cold_chunk_share_one_fetch() {
    if !privileged(&[]) {
        return;
    }
    let tb = Testbed::start(&["--latency-ms", "50"]);
    let barrier = Arc::new(Barrier::new(8));
    let handles: Vec<_> = (0..8u64)
        .map(|i| {
            let f = tb.open();
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                let mut b = [0u8; 64];
                f.read_exact_at(&mut b, 9 * CHUNK + i * 4096)
            })
        })
        .collect();
    for h in handles {
        h.join().expect("join").expect("read");
    }
    let s = tb.stats();
    assert_eq!(s.reads, 8);
    assert_eq!(s.fetches, 1);
    assert_eq!(s.hydrated, Some(vec![9]));
}

#[test]
fn injected_failures_return_eio_and_neighbours_succeed() {
    if !privileged(&[]) {
        return;
    }
    let tb = Testbed::start(&["--fail-chunks", "5,20-22"]);
    let f = tb.open();
    let mut b = [0u8; 16];
    let eio = |r: std::io::Result<()>| {
        let e = r.expect_err("read must fail");
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    };
    eio(f.read_exact_at(&mut b, 5 * CHUNK + 100));
    eio(f.read_exact_at(&mut b, 21 * CHUNK));
    eio(f.read_exact_at(&mut b, 5 * CHUNK - 8)); // straddles 4|5
    f.read_exact_at(&mut b, 4 * CHUNK).expect("chunk 4");
    f.read_exact_at(&mut b, 6 * CHUNK).expect("chunk 6");
    f.read_exact_at(&mut b, 23 * CHUNK).expect("chunk 23");
    let s = tb.stats();
    assert_eq!(s.failed_reads, 3);
    assert_eq!(s.hydrated, Some(vec![4, 6, 23]));
    assert_eq!(s.fail_chunks, "5,20-22");

    // Runtime changes through the control interface.
    tb.cli(&["set-fail", "--chunks", ""]);
    f.read_exact_at(&mut b, 5 * CHUNK)
        .expect("chunk 5 after clearing");
    tb.cli(&["set-fail", "--chunks", "6"]);
    eio(f.read_exact_at(&mut b, 6 * CHUNK)); // even though hydrated
    assert_eq!(tb.stats().fail_chunks, "6");
}

#[test]
fn reset_makes_every_chunk_cold_again() {
    if !privileged(&[]) {
        return;
    }
    let tb = Testbed::start(&["--latency-ms", "1"]);
    let f = tb.open();
    let mut b = [0u8; 4096];
    for c in [0u64, 3, 100] {
        f.read_exact_at(&mut b, c * CHUNK).expect("read");
    }
    assert_eq!(tb.stats().hydrated_chunks, 3);
    tb.reset();
    let s = tb.stats();
    assert_eq!(
        (
            s.fetches,
            s.hydrated_chunks,
            s.reads,
            s.bytes_read,
            s.peak_concurrent_fetches
        ),
        (0, 0, 0, 0, 0)
    );
    assert_eq!(s.hydrated, Some(vec![]));
    assert_eq!(s.hydration_order, Some(vec![]));
    f.read_exact_at(&mut b, 3 * CHUNK)
        .expect("read after reset");
    let s = tb.stats();
    assert_eq!(s.fetches, 1);
    assert_eq!(s.hydrated, Some(vec![3]));
}

#[test]
fn backing_image_is_never_modified_and_writes_fail() {
    if !privileged(&[]) {
        return;
    }
    let tb = Testbed::start(&["--latency-ms", "0.5"]);
    let before = std::fs::read(&tb.image).expect("read backing");
    let mtime = std::fs::metadata(&tb.image)
        .expect("meta")
        .modified()
        .expect("mtime");

    let meta = std::fs::metadata(tb.disk()).expect("stat disk.img");
    assert_eq!(meta.mode() & 0o7777, 0o444);
    assert_eq!(meta.len(), IMAGE_SIZE);
    for opts in [
        OpenOptions::new().write(true).clone(),
        OpenOptions::new().read(true).write(true).clone(),
        OpenOptions::new().append(true).clone(),
    ] {
        let e = opts.open(tb.disk()).expect_err("open for write must fail");
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    }
    assert!(File::create(tb.mount.join("new-file")).is_err());
    assert!(std::fs::remove_file(tb.disk()).is_err());
    let mut buf = Vec::new();
    tb.open().read_to_end(&mut buf).expect("read all");

    let after = std::fs::read(&tb.image).expect("read backing again");
    assert!(before == after, "backing image changed");
    let mtime_after = std::fs::metadata(&tb.image)
        .expect("meta")
        .modified()
        .expect("mtime");
    assert_eq!(mtime, mtime_after);
}

#[test]
fn sigterm_unmounts_cleanly() {
    if !privileged(&[]) {
        return;
    }
    let mut tb = Testbed::start(&[]);
    let mut child = tb.child.take().expect("child");
    run(Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string()));
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        assert!(Instant::now() < deadline, "testbed did not exit on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status}: {}", tb.log());
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("mounts");
    let mnt = tb.mount.canonicalize().expect("canon");
    assert!(
        !mounts.lines().any(|l| l.split(' ').nth(1) == mnt.to_str()),
        "still mounted"
    );
    assert!(
        !tb.dir.path().join("ready").exists(),
        "ready file left behind"
    );
}

/// Chunks covered by a file's physical extents, from `filefrag -v` (4 KiB blocks).
fn file_chunks(path: &Path) -> Vec<u64> {
    let out = run(Command::new("filefrag").arg("-v").arg("-b4096").arg(path));
    let mut chunks: Vec<u64> = parse_filefrag(&out, 4096)
        .iter()
        .flat_map(|f| &f.extents)
        .flat_map(|&(off, len)| off / CHUNK..=(off + len - 1) / CHUNK)
        .collect();
    chunks.sort_unstable();
    chunks.dedup();
    chunks
}

#[test]
fn loop_device_over_the_fuse_file_is_a_lazy_ext4_volume() {
    if !privileged(&["mkfs.ext4", "losetup", "filefrag"]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("usr/bin")).expect("mkdir");
    let payload = random_bytes(3 << 20, 7);
    std::fs::write(src.join("usr/bin/kubelet"), &payload).expect("write kubelet");
    for i in 0..20u64 {
        std::fs::write(
            src.join(format!("filler-{i}")),
            random_bytes(1 << 20, 100 + i),
        )
        .expect("filler");
    }
    let image = dir.path().join("backing.img");
    File::create(&image)
        .and_then(|f| f.set_len(IMAGE_SIZE))
        .expect("create image");
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "4096", "-d"])
        .arg(&src)
        .arg(&image));
    let before = std::fs::read(&image).expect("read backing");

    let mut tb = Testbed::serve(dir, image, &["--latency-ms", "1"]);
    let lo = run(Command::new("losetup")
        .args(["-r", "--direct-io=on", "-f", "--show"])
        .arg(tb.disk()))
    .trim()
    .to_string();
    tb.loops.push(lo.clone());
    let dio_flag = Path::new("/sys/block")
        .join(lo.trim_start_matches("/dev/"))
        .join("loop/dio");
    let dio = std::fs::read_to_string(&dio_flag).unwrap_or_default();
    assert_eq!(dio.trim(), "1", "loop device is not using direct I/O");

    let fsmnt = tb.dir.path().join("fs");
    std::fs::create_dir(&fsmnt).expect("mkdir fs");
    run(Command::new("mount")
        .args(["-t", "ext4", "-o", "ro,noload"])
        .arg(&lo)
        .arg(&fsmnt));
    tb.inner_mounts.push(fsmnt.clone());
    let mounted = tb.stats();
    assert!(
        mounted.fetches > 0,
        "mounting ext4 read nothing through FUSE"
    );

    tb.reset();
    let kubelet = fsmnt.join("usr/bin/kubelet");
    let expected = file_chunks(&kubelet); // FIEMAP reads metadata only
    assert!(!expected.is_empty());
    let got = std::fs::read(&kubelet).expect("read kubelet through the loop device");
    assert!(got == payload, "kubelet content differs");

    let s = tb.stats();
    let hydrated = s.hydrated.clone().expect("hydrated");
    eprintln!(
        "info: reading a 3 MiB file through ext4/loop hydrated {} chunks ({} fetches, {} reads); file covers {:?}",
        s.hydrated_chunks, s.fetches, s.reads, expected
    );
    assert!(s.fetches > 0 && s.reads > 0);
    for c in &expected {
        assert!(
            hydrated.contains(c),
            "chunk {c} of kubelet not hydrated: {hydrated:?}"
        );
    }
    let after = std::fs::read(&tb.image).expect("read backing again");
    assert!(before == after, "backing image changed");
}
