//! prewarm against the lazy-volume testbed, where reads are slow enough to
//! observe what unit tests cannot: SIGTERM stops a run promptly (even with
//! reads stuck in flight) and reports it as partial; a chunk that fails with
//! EIO is counted and the rest of the device is still hydrated; a buffered
//! loop device (whose driver passes reads on one at a time) is read through
//! its backing file, at its offset, as many fetches at once as the volume
//! serves.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{prewarm_bin, privileged};
use prewarm_benches::e2e::sys::{LoopDevice, TestbedProcess};

const TESTBED: &str = env!("CARGO_BIN_EXE_prewarm-testbed");
const CHUNK: u64 = 512 * 1024;

/// A 32 MiB image served by the testbed with `args`, and a read-only
/// direct-I/O loop device over it.
fn lazy_device(dir: &Path, args: &[&str]) -> (TestbedProcess, LoopDevice) {
    lazy_device_at(dir, args, true, 0)
}

/// [`lazy_device`] with the loop device's direct-I/O mode and its offset
/// in the image.
fn lazy_device_at(
    dir: &Path,
    args: &[&str],
    direct_io: bool,
    offset: u64,
) -> (TestbedProcess, LoopDevice) {
    let image = dir.join("image");
    let data: Vec<u8> = (0..32u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&image, data).unwrap();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let tb = TestbedProcess::start(
        Path::new(TESTBED),
        &image,
        &dir.join("mnt"),
        &args,
        &dir.join("tb.log"),
    )
    .unwrap();
    let lo = LoopDevice::attach_at(&tb.disk(), direct_io, offset).unwrap();
    tb.reset().unwrap();
    (tb, lo)
}

/// `prewarm --json ARGS --device LOOP`: its exit code and its report.
fn sweep(lo: &LoopDevice, args: &[&str]) -> (Option<i32>, serde_json::Value) {
    let out = Command::new(prewarm_bin())
        .arg("--json")
        .args(args)
        .arg("--device")
        .arg(&lo.path)
        .output()
        .unwrap();
    let report = serde_json::from_slice(&out.stdout).unwrap();
    (out.status.code(), report)
}

#[test]
fn sigterm_stops_a_slow_run_promptly() {
    if !privileged() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // 64 chunks at 150 ms, one at a time: ~10 s for the whole device.
    let (tb, lo) = lazy_device(tmp.path(), &["--latency-ms", "150", "--concurrency", "1"]);
    // Resolve (and maybe build) the binary before the clock starts.
    let bin = prewarm_bin();
    let start = Instant::now();
    let child = Command::new(bin)
        .args(["--json", "--queue-depth", "4", "--device"])
        .arg(&lo.path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let took = start.elapsed();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    println!(
        "stopped after {took:?}: {} of 32 MiB read",
        report["bytes_read"]
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "partial: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(report["stopped"], "cancelled");
    assert!(report["not_issued"].as_u64().unwrap() > 0);
    // The whole run would take ~10 s; the stop waits at most the 2 s grace
    // for reads in flight (here queued behind one slow fetch slot).
    assert!(took < Duration::from_secs(6), "took {took:?}");
    let hydrated = tb.stats(false).unwrap().hydrated_chunks;
    assert!(
        hydrated < 64,
        "the stop did not stop: {hydrated} chunks hydrated"
    );
}

#[test]
fn an_eio_chunk_is_counted_and_the_rest_is_hydrated() {
    if !privileged() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (tb, lo) = lazy_device(tmp.path(), &["--latency-ms", "1", "--fail-chunks", "5"]);
    let (code, report) = sweep(&lo, &[]);
    assert_eq!(code, Some(1), "a failed read makes the run partial");
    assert_eq!(report["errors"], 1, "{}", report["failures"]);
    let failure = &report["failures"][0];
    assert!(
        failure["error"]
            .as_str()
            .unwrap()
            .contains("Input/output error"),
        "{failure}"
    );
    // The failed 1 MiB read covered chunks 4 and 5 (the kernel may split it,
    // so chunk 4 can still be fetched); every other chunk was hydrated.
    assert_eq!(failure["offset"], 4 * CHUNK);
    let hydrated = tb.stats(true).unwrap().hydrated.unwrap_or_default();
    let missing: Vec<u64> = (0..64).filter(|c| !hydrated.contains(c)).collect();
    assert!(
        missing == [5] || missing == [4, 5],
        "cold chunks: {missing:?}"
    );
    assert_eq!(report["bytes_read"], (32 << 20) - 2 * CHUNK);
}

#[test]
fn a_buffered_loop_device_is_read_through_its_backing_file() {
    if !privileged() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // The device starts two chunks into the image; 8 fetches at a time.
    let (tb, lo) = lazy_device_at(
        tmp.path(),
        &["--latency-ms", "20", "--concurrency", "8"],
        false,
        2 * CHUNK,
    );
    // Both engines: the offset is added where each makes its system call.
    for engine in ["uring", "pread"] {
        tb.reset().unwrap();
        let (code, report) = sweep(&lo, &["--engine", engine]);
        assert_eq!(code, Some(0), "{report}");
        let device = &report["devices"][0];
        assert_eq!(device["read"]["backend"], engine, "{device}");
        assert_eq!(
            device["read_through"]["backing_file"]["path"],
            tb.disk().display().to_string(),
            "{device}"
        );
        assert_eq!(device["read_through"]["backing_file"]["offset"], 2 * CHUNK);
        assert_eq!(report["bytes_read"], (32 << 20) - 2 * CHUNK);
        // Exactly the device's chunks of the image, at its offset, each
        // once, and many at a time: through the device they come one by one.
        let stats = tb.stats(true).unwrap();
        let hydrated = stats.hydrated.unwrap_or_default();
        assert_eq!(hydrated, (2..64).collect::<Vec<u64>>(), "{engine}");
        assert_eq!(stats.fetches, 62, "{engine}");
        assert!(
            stats.peak_concurrent_fetches >= 4,
            "{engine}: at most {} fetches at once",
            stats.peak_concurrent_fetches
        );
    }
}

#[test]
fn a_direct_io_loop_device_is_read_as_it_is() {
    if !privileged() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (_tb, lo) = lazy_device(tmp.path(), &["--latency-ms", "1"]);
    let (code, report) = sweep(&lo, &[]);
    assert_eq!(code, Some(0), "{report}");
    assert!(
        report["devices"][0].get("read_through").is_none(),
        "{report}"
    );
    assert_eq!(report["bytes_read"], 32 << 20);
}
