//! The read-only promise, proved where a write could happen: on WRITABLE
//! loop devices (ext4 and xfs images), the devices' write counters
//! (`/sys/block/loopN/stat` fields 5-8: writes completed, merged, sectors,
//! ticks) do not move across prewarm runs in every mode (`--paths`,
//! `--device`, `--cache`, `--mode touch`, `plan`, `run`), with both engines.
//!
//! The loop devices are attached read-write. The filesystems are built and
//! filled on another loop device first (its writes are its own), then the
//! writable device is mounted with options that write nothing themselves:
//! `ro,noload` (ext4: no journal replay) and `ro,norecovery` (xfs: no log
//! recovery). A read-only mount of a cleanly unmounted filesystem issues no
//! write; the counters are sampled after the mount (a loop device's counters
//! survive detach and re-attach, so they need not start at zero) and checked
//! not to move during a settling pause, so any write counted later is
//! prewarm's: a kernel-side write on prewarm's
//! behalf (an atime update, a superblock touch, a write through a writable
//! open of the device) would show there. The manifest `plan` writes goes to
//! a temporary directory on another filesystem.

mod common;

use std::path::Path;

use common::*;

/// Fields 5-8 of `/sys/block/NAME/stat`: writes completed, writes merged,
/// sectors written, ms spent writing.
fn write_counters(lo: &LoopDev) -> [u64; 4] {
    let name = lo.node.file_name().and_then(|n| n.to_str()).unwrap();
    let stat = std::fs::read_to_string(format!("/sys/block/{name}/stat")).unwrap();
    let fields: Vec<u64> = stat
        .split_whitespace()
        .map(|f| f.parse().unwrap())
        .collect();
    [fields[4], fields[5], fields[6], fields[7]]
}

/// Build a `fs` image of `mib` MiB holding a few files, written through a
/// loop device of its own that is gone when this returns.
fn filled_image(dir: &Path, fs: &str, mib: u64) -> std::path::PathBuf {
    let image = dir.join(format!("{fs}.img"));
    make_fs_image(&image, fs, mib);
    let lo = LoopDev::attach(&image, false);
    let m = Mounted::mount(lo.path(), &dir.join(format!("fill-{fs}")), fs, "rw");
    std::fs::create_dir_all(m.dir.join("bin")).unwrap();
    for (i, size) in [
        (0, 3 << 20),
        (1, 1 << 20),
        (2, 300_000),
        (3, 4096),
        (4, 100),
    ] {
        let bytes: Vec<u8> = (0..size).map(|j: usize| (j * 31 + i) as u8).collect();
        std::fs::write(m.dir.join(format!("bin/f{i}")), bytes).unwrap();
    }
    cmd("sync", &[]);
    drop(m);
    drop(lo);
    image
}

#[test]
fn no_mode_writes_to_a_writable_device() {
    if !privileged(
        "no_mode_writes_to_a_writable_device",
        &["losetup", "mkfs.ext4", "mkfs.xfs"],
    ) {
        return;
    }
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    for (fs, mib) in [("ext4", 64), ("xfs", 320)] {
        let image = filled_image(dir, fs, mib);
        let lo = LoopDev::attach(&image, false);
        let ro = std::fs::read_to_string(format!(
            "/sys/block/{}/ro",
            lo.node.file_name().unwrap().to_str().unwrap()
        ))
        .unwrap();
        assert_eq!(ro.trim(), "0", "{fs}: the loop device must be writable");
        let m = Mounted::mount(
            lo.path(),
            &dir.join(format!("mnt-{fs}")),
            fs,
            ro_options(fs),
        );
        // A loop device's counters survive detach and re-attach (the disk
        // lives on), and the number may be the one just used to fill the
        // image: take them after the mount, which writes nothing itself.
        let settled = write_counters(&lo);
        cmd("sync", &[]);
        std::thread::sleep(std::time::Duration::from_millis(200));
        let baseline = write_counters(&lo);
        println!(
            "{fs} on {}: write counters after the mount {baseline:?}",
            lo.path()
        );
        assert_eq!(baseline, settled, "{fs}: the read-only mount wrote");
        let list = dir.join(format!("{fs}.list"));
        std::fs::write(&list, format!("10 {}/bin\n", m.dir.display())).unwrap();
        let list = list.to_str().unwrap();
        let manifest = dir.join(format!("{fs}.manifest"));
        let manifest = manifest.to_str().unwrap();

        let out = prewarm(&["plan", "--paths", list, "-o", manifest]);
        assert_eq!(out.status.code(), Some(0), "{fs} plan: {}", stderr(&out));
        assert_eq!(
            write_counters(&lo),
            baseline,
            "{fs}: plan wrote to the device"
        );

        for engine in ["uring", "pread"] {
            let runs: [(&str, Vec<&str>); 5] = [
                ("--paths", vec!["--paths", list]),
                ("--device", vec!["--device", lo.path()]),
                ("--cache", vec!["--cache", "--paths", list]),
                ("--mode touch", vec!["--mode", "touch", "--paths", list]),
                ("run", vec!["run", "-m", manifest]),
            ];
            for (mode, mut args) in runs {
                args.extend(["--engine", engine]);
                cmd("sh", &["-c", "echo 3 > /proc/sys/vm/drop_caches"]);
                let (report, out) = prewarm_json(&args);
                assert_eq!(
                    out.status.code(),
                    Some(0),
                    "{fs} {mode} {engine}: {}",
                    stderr(&out)
                );
                assert!(
                    u(&report["bytes_read"]) > 0,
                    "{fs} {mode} {engine}: {report}"
                );
                // Writes (e.g. a deferred atime or superblock update) would
                // be queued by now; flush them so they are counted.
                cmd("sync", &[]);
                let counters = write_counters(&lo);
                println!(
                    "{fs} {mode:<13} {engine:<5}: {} bytes read, write counters {counters:?} (baseline {baseline:?})",
                    report["bytes_read"]
                );
                assert_eq!(
                    counters, baseline,
                    "{fs} {mode} {engine} wrote to the device"
                );
            }
        }
        drop(m);
        // The check can fail: one block rewritten in place (same bytes) is
        // counted.
        let dev = format!("if={0} of={0}", lo.path());
        cmd(
            "sh",
            &[
                "-c",
                &format!("dd {dev} bs=4096 count=1 iflag=direct oflag=direct,sync conv=notrunc 2>/dev/null"),
            ],
        );
        let written = write_counters(&lo);
        assert!(
            written[0] > baseline[0] && written[2] >= baseline[2] + 8,
            "{fs}: a real write was not counted: {written:?} vs {baseline:?}"
        );
    }
}
