//! End-to-end tests of `prewarm` on real ext4 and xfs filesystems on loop
//! devices: the mapping is checked byte for byte against the device, the
//! reads are checked against the device's own counters, and the image is
//! checked to be unchanged.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use common::*;
use nix::fcntl::{fallocate, FallocateFlags};
use serde_json::Value;

const K: u64 = 1024;

/// Deterministic, incompressible bytes.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Write the test files: fragmented, sparse, preallocated, many-extent,
/// inline-sized, empty, a tree, a hard link, a symlink and a FIFO.
fn populate(root: &Path) {
    // Two files grown in turns with an fsync each time: their blocks are
    // allocated interleaved, so both are fragmented.
    let mut a = File::create(root.join("frag_a")).unwrap();
    let mut b = File::create(root.join("frag_b")).unwrap();
    for i in 0..40 {
        a.write_all(&pattern(i, 64 * K as usize)).unwrap();
        a.sync_all().unwrap();
        b.write_all(&pattern(1000 + i, 64 * K as usize)).unwrap();
        b.sync_all().unwrap();
    }

    // Holes, and a tail that ends mid-block.
    let s = File::create(root.join("sparse")).unwrap();
    s.set_len(6 * K * K).unwrap();
    s.write_all_at(&pattern(2, 8192), 0).unwrap();
    s.write_all_at(&pattern(3, 4096), K * K).unwrap();
    s.write_all_at(&pattern(4, 100), 5 * K * K + 123).unwrap();
    s.sync_all().unwrap();

    // Preallocated (unwritten) space with some data written into it, and
    // preallocation past the end of the file.
    let p = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(root.join("prealloc"))
        .unwrap();
    fallocate(
        p.as_raw_fd(),
        FallocateFlags::empty(),
        0,
        4 * (K * K) as i64,
    )
    .unwrap();
    fallocate(
        p.as_raw_fd(),
        FallocateFlags::FALLOC_FL_KEEP_SIZE,
        4 * (K * K) as i64,
        (K * K) as i64,
    )
    .unwrap();
    p.write_all_at(&pattern(5, 8192), K * K).unwrap();
    p.sync_all().unwrap();

    // Over a thousand extents: write 2400 blocks, then punch out every
    // other one.
    let m = File::create(root.join("many")).unwrap();
    let blocks = 2400u64;
    m.write_all_at(&pattern(7, (blocks * 4096) as usize), 0)
        .unwrap();
    m.sync_all().unwrap();
    let punch = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
    for blk in (1..blocks).step_by(2) {
        fallocate(m.as_raw_fd(), punch, (blk * 4096) as i64, 4096).unwrap();
    }
    m.sync_all().unwrap();

    fs::write(root.join("tiny"), pattern(6, 60)).unwrap();
    File::create(root.join("empty")).unwrap();
    fs::create_dir(root.join("tree")).unwrap();
    for i in 0..40u64 {
        let len = ((i * 37) % 200 + 1) * K;
        fs::write(
            root.join(format!("tree/f{i:02}")),
            pattern(100 + i, len as usize),
        )
        .unwrap();
    }
    fs::hard_link(root.join("frag_a"), root.join("tree/hardlink")).unwrap();
    std::os::unix::fs::symlink(root.join("sparse"), root.join("link_to_sparse")).unwrap();
    nix::unistd::mkfifo(
        &root.join("tree/fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    cmd("sync", &[]);
}

fn list_text(root: &Path) -> String {
    let r = root.display();
    format!(
        "# critical first\n10 {r}/frag_a\n10 {r}/frag_b\n20 {r}/sparse\n20 {r}/prealloc\n\
         30 {r}/many\n30 {r}/tiny\n30 {r}/empty\n40 {r}/tree\n40 {r}/link_to_sparse\n"
    )
}

/// Files the list resolves to: 7 named + 40 in tree (the hard link and the
/// symlink are duplicates, the FIFO is skipped).
const EXPECTED_FILES: u64 = 47;

/// For every file of a dry-run report: the device bytes at each extent equal
/// the file's bytes, and every byte not mapped (holes, unwritten) is zero.
fn check_extents(report: &Value, dev: &File) {
    for m in report["file_maps"].as_array().unwrap() {
        let path = Path::new(m["path"].as_str().unwrap());
        let content = read_file(path);
        assert_eq!(content.len() as u64, u(&m["size"]), "{}", path.display());
        let mut covered = vec![false; content.len()];
        for e in m["device_extents"].as_array().unwrap() {
            let (logical, physical, length) =
                (u(&e["logical"]), u(&e["physical"]), u(&e["length"]));
            let got = read_at(dev, physical, length as usize);
            let want = &content[logical as usize..(logical + length) as usize];
            assert!(
                got == want,
                "{}: device bytes at {physical} differ from file bytes at {logical}",
                path.display()
            );
            covered[logical as usize..(logical + length) as usize].fill(true);
        }
        for r in m["file_ranges"].as_array().unwrap() {
            let (off, len) = (u(&r["offset"]) as usize, u(&r["len"]) as usize);
            covered[off..(off + len).min(content.len())].fill(true);
        }
        let stray = content
            .iter()
            .zip(&covered)
            .position(|(&byte, &c)| !c && byte != 0);
        assert_eq!(stray, None, "{}: unmapped non-zero byte", path.display());
    }
}

/// [`check_extents`] of the populated tree, and the shapes `populate` made.
fn check_mapping(report: &Value, dev: &File, fs_name: &str) {
    let maps = report["file_maps"].as_array().unwrap();
    assert_eq!(maps.len() as u64, EXPECTED_FILES);
    check_extents(report, dev);
    let by_name = |name: &str| {
        maps.iter()
            .find(|m| m["path"].as_str().unwrap().ends_with(name))
            .unwrap_or_else(|| panic!("{name} not mapped"))
    };
    let extents = |name: &str| by_name(name)["device_extents"].as_array().unwrap().len();
    assert!(
        extents("/many") >= 1000,
        "many has only {} extents",
        extents("/many")
    );
    assert!(extents("/frag_a") > 1, "frag_a is not fragmented");
    assert!(u(&by_name("/prealloc")["unwritten_bytes"]) >= 3 * K * K);
    if fs_name == "ext4" {
        // inline_data: the 60-byte file lives in its inode.
        assert_eq!(extents("/tiny"), 0);
        assert!(!by_name("/tiny")["file_ranges"]
            .as_array()
            .unwrap()
            .is_empty());
    }
}

fn device_plan_bytes(report: &Value) -> u64 {
    report["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| u(&d["plan"]["bytes"]))
        .sum()
}

fn filesystem_end_to_end(fs_name: &str) {
    // One loop-device test at a time: parallel `losetup -f` races.
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let image = tmp.path().join(format!("{fs_name}.img"));
    make_fs_image(&image, fs_name, 512);
    let mnt = tmp.path().join("mnt");
    {
        let rw = LoopDev::attach(&image, false);
        let _m = Mounted::mount(rw.path(), &mnt, fs_name, "rw");
        populate(&mnt);
    }
    let before = checksum(&image);

    let lo = LoopDev::attach_direct(&image);
    let mounted = Mounted::mount(lo.path(), &mnt, fs_name, ro_options(fs_name));
    let list = tmp.path().join("list.txt");
    fs::write(&list, list_text(&mounted.dir)).unwrap();
    let list = list.to_str().unwrap();

    // Dry run: the plan, and the mapping checked against the device.
    let (plan, out) = prewarm_json(&["--dry-run", "--paths", list]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(u(&plan["files"]), EXPECTED_FILES);
    assert_eq!(plan["devices"].as_array().unwrap().len(), 1);
    assert_eq!(plan["devices"][0]["node"], lo.path());
    let dev = File::open(&lo.node).unwrap();
    check_mapping(&plan, &dev, fs_name);
    let warnings = plan["warnings"].as_array().unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w["kind"] == "duplicate"
                && w["path"].as_str().unwrap().ends_with("link_to_sparse")),
        "{warnings:?}"
    );
    assert_eq!(u(&plan["bytes_read"]), 0);

    // The real run: every planned byte read, counted by the device itself.
    let sectors = lo.sectors_read();
    let (run, out) = prewarm_json(&["--paths", list]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(run["outcome"], "success");
    for key in [
        "files",
        "extents",
        "ranges",
        "chunks",
        "planned_bytes",
        "ios_planned",
        "mapped_bytes",
    ] {
        assert_eq!(run[key], plan[key], "{key} differs between plan and run");
    }
    let d = &run["devices"][0];
    assert_eq!(d["direct"], true);
    assert_eq!(d["read"]["backend"], "uring");
    assert_eq!(u(&d["read"]["bytes_read"]), u(&d["plan"]["bytes"]));
    assert_eq!(u(&run["ios_done"]), u(&run["ios_planned"]));
    assert_eq!(u(&run["errors"]), 0);
    let device_read = (lo.sectors_read() - sectors) * 512;
    assert!(
        device_read >= device_plan_bytes(&run),
        "the device saw {device_read} bytes read, the plan has {}",
        device_plan_bytes(&run)
    );
    if fs_name == "ext4" {
        assert!(
            u(&run["file_level"]["read"]["bytes_read"]) >= 60,
            "inline file read through the file"
        );
    }

    // The pread fallback reads the same bytes.
    let (pread, out) = prewarm_json(&["--engine", "pread", "--paths", list]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(pread["devices"][0]["read"]["backend"], "pread");
    assert_eq!(pread["bytes_read"], run["bytes_read"]);

    // Touch mode: one logical block per chunk.
    let (touch, out) = prewarm_json(&["--mode", "touch", "--paths", list]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let td = &touch["devices"][0];
    assert_eq!(
        u(&td["read"]["bytes_read"]),
        u(&td["plan"]["chunks"]) * u(&td["logical_block_size"])
    );

    drop(dev);
    drop(mounted);
    drop(lo);

    // A buffered loop device (losetup's default) passes reads on one at a
    // time: its backing file, the image, is read instead, and the device
    // sees none of the run's data reads.
    let lo = LoopDev::attach(&image, true);
    let mounted = Mounted::mount(lo.path(), &mnt, fs_name, ro_options(fs_name));
    let sectors = lo.sectors_read();
    let (buffered, out) = prewarm_json(&["--paths", list]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let d = &buffered["devices"][0];
    assert_eq!(
        d["read_through"]["backing_file"]["path"],
        image.to_str().unwrap(),
        "{d}"
    );
    assert_eq!(d["read_through"]["backing_file"]["offset"], 0);
    assert_eq!(d["direct"], true, "the image's filesystem takes O_DIRECT");
    assert_eq!(buffered["bytes_read"], run["bytes_read"]);
    assert_eq!(u(&buffered["errors"]), 0);
    // Through the device only metadata (the inode tables a walk maps from
    // are read through its cache, as the filesystem reads them), never the
    // plan's data.
    let device_read = (lo.sectors_read() - sectors) * 512;
    assert!(
        device_read * 10 < device_plan_bytes(&buffered),
        "the device saw {device_read} bytes read, the plan has {}",
        device_plan_bytes(&buffered)
    );
    drop(mounted);
    drop(lo);
    assert_eq!(checksum(&image), before, "the image changed");
}

#[test]
fn ext4_on_a_read_only_loop_device() {
    if privileged(
        "ext4_on_a_read_only_loop_device",
        &["losetup", "mkfs.ext4", "sha256sum"],
    ) {
        filesystem_end_to_end("ext4");
    }
}

#[test]
fn xfs_on_a_read_only_loop_device() {
    if privileged(
        "xfs_on_a_read_only_loop_device",
        &["losetup", "mkfs.xfs", "sha256sum"],
    ) {
        filesystem_end_to_end("xfs");
    }
}

#[test]
fn tmpfs_files_are_read_through_the_file() {
    if !privileged("tmpfs_files_are_read_through_the_file", &["mount"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let m = Mounted::mount("tmpfs", &tmp.path().join("t"), "tmpfs", "size=64m");
    let path = m.dir.join("data");
    let size = 3 * K * K + 100;
    fs::write(&path, pattern(9, size as usize)).unwrap();
    let (r, out) = prewarm_json(&[path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(u(&r["files"]), 1);
    assert_eq!(r["devices"].as_array().unwrap().len(), 0);
    assert_eq!(u(&r["file_level"]["files"]), 1);
    assert_eq!(u(&r["file_level"]["read"]["bytes_read"]), size);
    assert_eq!(u(&r["bytes_read"]), size);
    let fallbacks = r["fallbacks"].to_string();
    assert!(fallbacks.contains("FIEMAP unavailable"), "{fallbacks}");
    assert_eq!(
        fallbacks.matches("read through the file").count(),
        1,
        "{fallbacks}"
    );
}

/// Fact 1 of the design: hydrating through the device does not put the
/// file in its page cache; `--cache` does.
#[test]
fn hydrating_is_not_cache_warming() {
    if !privileged(
        "hydrating_is_not_cache_warming",
        &["losetup", "mkfs.ext4", "vmtouch"],
    ) {
        return;
    }
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let image = tmp.path().join("c.img");
    make_fs_image(&image, "ext4", 128);
    let lo = LoopDev::attach(&image, false);
    let m = Mounted::mount(lo.path(), &tmp.path().join("mnt"), "ext4", "rw");
    let file = m.dir.join("big");
    fs::write(&file, pattern(1, 8 << 20)).unwrap();
    cmd("sync", &[]);
    let f = file.to_str().unwrap();
    let resident = || -> String {
        let out = cmd("vmtouch", &[f]);
        out.lines()
            .find(|l| l.contains("Resident Pages"))
            .unwrap_or_default()
            .to_string()
    };
    let drop_caches = || fs::write("/proc/sys/vm/drop_caches", "3").unwrap();

    drop_caches();
    let (r, out) = prewarm_json(&[f]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(r["devices"][0]["direct"], true);
    assert!(
        resident().contains("0/2048"),
        "device reads filled the file's cache: {}",
        resident()
    );

    drop_caches();
    let (r, out) = prewarm_json(&["--cache", f]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(u(&r["cache"]["files"]), 1);
    // The reads are done when prewarm exits; poll briefly all the same.
    let mut seen = String::new();
    for _ in 0..50 {
        seen = resident();
        if seen.contains("2048/2048") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        seen.contains("2048/2048"),
        "--cache did not warm the file: {seen}"
    );
}

/// Files on two filesystems: one plan per device, both read.
#[test]
fn two_devices_two_plans() {
    if !privileged(
        "two_devices_two_plans",
        &["losetup", "mkfs.ext4", "mkfs.xfs"],
    ) {
        return;
    }
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let mut guards = Vec::new();
    let mut paths = Vec::new();
    for (i, fs_name) in ["ext4", "xfs"].into_iter().enumerate() {
        let image = tmp.path().join(format!("{fs_name}.img"));
        make_fs_image(&image, fs_name, 512);
        let lo = LoopDev::attach(&image, false);
        let m = Mounted::mount(lo.path(), &tmp.path().join(fs_name), fs_name, "rw");
        let file = m.dir.join("data");
        fs::write(&file, pattern(50 + i as u64, (3 << 20) + 17)).unwrap();
        paths.push(file.to_str().unwrap().to_string());
        guards.push((lo, m));
    }
    cmd("sync", &[]);
    let args: Vec<&str> = paths.iter().map(String::as_str).collect();
    let (r, out) = prewarm_json(&args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let devices = r["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 2);
    let fs_types: Vec<_> = devices
        .iter()
        .map(|d| d["fs_type"].as_str().unwrap_or("?"))
        .collect();
    assert!(
        fs_types.contains(&"ext4") && fs_types.contains(&"xfs"),
        "{fs_types:?}"
    );
    for d in devices {
        assert_eq!(u(&d["files"]), 1);
        assert_eq!(u(&d["read"]["bytes_read"]), u(&d["plan"]["bytes"]));
        assert!(u(&d["plan"]["bytes"]) >= (3 << 20) + 17);
    }
    drop(guards);
}

/// A loop device with one partition, detached on drop. The partition is
/// added with BLKPG (`addpart`), not read from a partition table: some
/// kernels (this VM's) have no partition table parsers, and the point is the
/// partition device, not the table.
struct PartitionedLoop(String);

impl PartitionedLoop {
    /// Attach `image` with partition `1` at sector 2048 (1 MiB), 64 MiB long.
    fn attach(image: &Path, read_only: bool) -> Self {
        let mut args = vec!["-f", "--show", "-P"];
        if read_only {
            args.push("-r");
        }
        args.push(image.to_str().unwrap());
        let lo = PartitionedLoop(cmd("losetup", &args).trim().to_string());
        cmd("addpart", &[&lo.0, "1", "2048", &(64 * 2048).to_string()]);
        for _ in 0..50 {
            if Path::new(&lo.partition()).exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert!(
            Path::new(&lo.partition()).exists(),
            "{} did not appear",
            lo.partition()
        );
        lo
    }
    fn partition(&self) -> String {
        format!("{}p1", self.0)
    }
}

impl Drop for PartitionedLoop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.0])
            .status();
    }
}

#[test]
fn files_on_a_partition_map_to_the_partition_device_or_are_read_through_the_files() {
    if !privileged(
        "files_on_a_partition_map_to_the_partition_device_or_are_read_through_the_files",
        &["losetup", "mkfs.ext4", "addpart"],
    ) {
        return;
    }
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let image = tmp.path().join("disk.img");
    File::create(&image).unwrap().set_len(80 * K * K).unwrap();
    // The partition starts 1 MiB in: FIEMAP offsets are relative to it.
    let mnt = tmp.path().join("mnt");
    {
        let rw = PartitionedLoop::attach(&image, false);
        cmd("mkfs.ext4", &["-q", "-F", &rw.partition()]);
        let m = Mounted::mount(&rw.partition(), &mnt, "ext4", "rw");
        fs::write(m.dir.join("a"), pattern(41, 3 * (K * K) as usize + 5)).unwrap();
        fs::write(m.dir.join("b"), pattern(42, 200 * K as usize)).unwrap();
        cmd("sync", &[]);
    }
    let before = checksum(&image);
    let lo = PartitionedLoop::attach(&image, true);
    let m = Mounted::mount(&lo.partition(), &mnt, "ext4", ro_options("ext4"));
    let (a, b) = (m.dir.join("a"), m.dir.join("b"));
    let args = [a.to_str().unwrap(), b.to_str().unwrap()];

    let (plan, out) = prewarm_json(&[&["--dry-run"], &args[..]].concat());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(plan["devices"][0]["node"], lo.partition().as_str());
    check_extents(&plan, &File::open(lo.partition()).unwrap());

    let (run, out) = prewarm_json(&args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(run["devices"][0]["node"], lo.partition().as_str());
    assert_eq!(u(&run["bytes_read"]), u(&run["planned_bytes"]));
    assert_eq!(u(&run["file_level"]["read"]["bytes_read"]), 0);
    // The loop device is buffered: the partition is read through the
    // image, from the partition's start in it.
    let through = &run["devices"][0]["read_through"]["backing_file"];
    assert_eq!(through["path"], image.to_str().unwrap(), "{run}");
    assert_eq!(through["offset"], K * K);

    // Without its device node the device cannot be opened: the same files
    // are read through the files instead, every byte of them.
    fs::remove_file(lo.partition()).unwrap();
    let (fallback, out) = prewarm_json(&args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(fallback["devices"].as_array().unwrap().is_empty());
    let sizes = u(&plan["file_bytes"]);
    assert_eq!(u(&fallback["file_level_bytes"]), sizes);
    assert!(u(&fallback["file_level"]["read"]["bytes_read"]) >= sizes);
    assert!(
        fallback["fallbacks"]
            .to_string()
            .contains("read through the file"),
        "{}",
        fallback["fallbacks"]
    );
    drop(m);
    drop(lo);
    assert_eq!(checksum(&image), before, "the image changed");
}

/// A new 64 MiB ext4 image in a scratch directory, on a writable loop
/// device.
fn scratch_ext4() -> (tempfile::TempDir, LoopDev) {
    let tmp = tempfile::tempdir().unwrap();
    let image = tmp.path().join("fs.img");
    make_fs_image(&image, "ext4", 64);
    let lo = LoopDev::attach(&image, false);
    (tmp, lo)
}

#[test]
fn unsynced_delalloc_extents_are_read_through_the_file() {
    if !privileged(
        "unsynced_delalloc_extents_are_read_through_the_file",
        &["losetup", "mkfs.ext4"],
    ) {
        return;
    }
    let _serial = serial();
    let (tmp, lo) = scratch_ext4();
    let m = Mounted::mount(lo.path(), &tmp.path().join("mnt"), "ext4", "rw");
    // Written, not synced: ext4 has not allocated its blocks yet (delayed
    // allocation), so FIEMAP reports DELALLOC extents with no address.
    // prewarm must not sync (that would be a write); it reads the file.
    let path = m.dir.join("fresh");
    let size = 2 * K * K + 10;
    fs::write(&path, pattern(43, size as usize)).unwrap();
    let p = path.to_str().unwrap();
    let (plan, out) = prewarm_json(&["--dry-run", p]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let map = &plan["file_maps"][0];
    assert!(
        map["device_extents"].as_array().unwrap().is_empty(),
        "delalloc extents have no device address: {map}"
    );
    assert_eq!(u(&plan["file_level_bytes"]), size);
    let (run, out) = prewarm_json(&[p]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(u(&run["file_level"]["read"]["bytes_read"]) >= size);
    assert!(
        run["fallbacks"]
            .to_string()
            .contains("file(s) read through the file"),
        "{}",
        run["fallbacks"]
    );
}

/// The file maps of a dry-run report, by path.
fn maps_by_path(report: &Value) -> std::collections::BTreeMap<String, Value> {
    report["file_maps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let mut m = m.clone();
            m.as_object_mut().unwrap().remove("from_inode");
            (m["path"].as_str().unwrap().to_string(), m)
        })
        .collect()
}

/// On ext4 a walk maps a file from its inode in the inode tables, without
/// opening it, only when the inode has not changed since the filesystem
/// was mounted writable; those maps are FIEMAP's, byte for byte, and a
/// manifest records the same sizes and times either way.
#[test]
fn walked_ext4_files_are_mapped_from_their_inodes_once_unchanged_since_mount() {
    if !privileged(
        "walked_ext4_files_are_mapped_from_their_inodes_once_unchanged_since_mount",
        &["losetup", "mkfs.ext4"],
    ) {
        return;
    }
    let _serial = serial();
    let (tmp, lo) = scratch_ext4();
    let mnt = tmp.path().join("mnt");
    let tree = mnt.join("tree");
    let t = tree.to_str().unwrap();
    let m = Mounted::mount(lo.path(), &mnt, "ext4", "rw");
    fs::create_dir_all(tree.join("sub")).unwrap();
    for i in 0..30u64 {
        let len = ((i * 53) % 300 + 1) * K + i;
        let dir = if i % 3 == 0 {
            tree.join("sub")
        } else {
            tree.clone()
        };
        fs::write(dir.join(format!("f{i:02}")), pattern(200 + i, len as usize)).unwrap();
    }
    // Six extents: more than the inode holds, so FIEMAP maps it.
    let frag = File::create(tree.join("fragmented")).unwrap();
    for i in 0..6u64 {
        frag.write_all_at(&pattern(300 + i, 4096), i * 2 * 4096 * 16)
            .unwrap();
    }
    frag.sync_all().unwrap();
    drop(frag);
    // Kept inline in its inode: read through the file.
    fs::write(tree.join("tiny"), pattern(400, 40)).unwrap();
    cmd("sync", &[]);

    // Written since this mount: every file is opened and mapped by FIEMAP.
    let (plan, out) = prewarm_json(&["--dry-run", t]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(u(&plan["files"]), 32);
    assert_eq!(u(&plan["files_mapped_from_inodes"]), 0);

    // Mounted again, a second later than every change.
    drop(m);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let m = Mounted::mount(lo.path(), &mnt, "ext4", "rw");
    let (plan, out) = prewarm_json(&["--dry-run", t]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let (fiemap, out) = prewarm_json(&["--dry-run", "--fiemap-only", t]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(u(&plan["files_mapped_from_inodes"]), 30, "{plan}");
    assert_eq!(u(&fiemap["files_mapped_from_inodes"]), 0);
    assert_eq!(maps_by_path(&plan), maps_by_path(&fiemap));
    let dev = File::open(&lo.node).unwrap();
    check_extents(&plan, &dev);
    for key in ["chunks", "extents", "mapped_bytes", "file_level_bytes"] {
        assert_eq!(plan[key], fiemap[key], "{key}");
    }

    // A manifest records the same files, sizes and times either way.
    let manifest = |name: &str, extra: &[&str]| {
        let path = tmp.path().join(name);
        let mut args = vec!["plan", t, "-o", path.to_str().unwrap()];
        args.extend_from_slice(extra);
        let out = prewarm(&args);
        assert_eq!(out.status.code(), Some(0), "plan: {}", stderr(&out));
        let (shown, out) = prewarm_json(&["show", path.to_str().unwrap(), "--files"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let files = shown["devices"][0]["files"].as_array().unwrap().clone();
        files
            .into_iter()
            .filter(|f| f["directory"] != true)
            .collect::<Vec<Value>>()
    };
    let from_inodes = manifest("a.manifest", &[]);
    assert_eq!(from_inodes.len(), 32);
    assert!(from_inodes
        .iter()
        .all(|f| f["mtime_sec"].as_i64() > Some(0)));
    assert_eq!(from_inodes, manifest("b.manifest", &["--fiemap-only"]));

    // Changed since this mount: that one is opened again.
    fs::OpenOptions::new()
        .append(true)
        .open(tree.join("f01"))
        .unwrap()
        .write_all(b"more")
        .unwrap();
    let (plan, _) = prewarm_json(&["--dry-run", t]);
    assert_eq!(u(&plan["files_mapped_from_inodes"]), 29);
    drop(m);
}
