//! Output and memory: a reader that closes early ends the output, not the
//! command (no panic, the run's own exit code, the handover state still
//! saved); a list of a million lines is streamed, its warnings capped, and
//! the run stays under 128 MiB of peak RSS by its own report, whether the
//! million files are missing or exist (then listed, or walked).

mod common;

use std::fs::{self, File};
use std::io::{Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// Wait for `child`, killing it (and failing) after `limit`: a bound to
/// catch a hang, not a speed target.
fn wait_bounded(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn prewarm_child(args: &[&str]) -> Child {
    Command::new(assert_cmd::cargo::cargo_bin("prewarm"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn stderr_of(child: &mut Child) -> String {
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    err
}

#[test]
fn a_reader_that_closes_early_ends_the_output_not_the_command() {
    let _serial = serial();
    if !privileged(
        "a_reader_that_closes_early_ends_the_output_not_the_command",
        &["mkfs.ext4", "losetup", "mount"],
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let image = dir.join("root.img");
    make_fs_image(&image, "ext4", 128);
    let manifest = dir.join("boot.manifest");
    {
        let lo = LoopDev::attach(&image, false);
        let mnt = dir.join("mnt");
        let m = Mounted::mount(lo.path(), &mnt, "ext4", "rw");
        let files = mnt.join("var/lib/many-files");
        fs::create_dir_all(&files).unwrap();
        // Enough files that `show --files` prints far more than a pipe holds.
        for i in 0..2000 {
            fs::write(
                files.join(format!("a-file-with-a-long-enough-name-{i:05}")),
                vec![i as u8; 8192],
            )
            .unwrap();
        }
        cmd("sync", &[]);
        let list = dir.join("boot.list");
        fs::write(&list, "10 /var/lib/many-files\n").unwrap();
        let out = prewarm(&[
            "plan",
            "--root",
            mnt.to_str().unwrap(),
            "--paths",
            list.to_str().unwrap(),
            "-o",
            manifest.to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(0), "plan: {}", stderr(&out));
        drop(m);
        drop(lo);
    }
    let manifest = manifest.to_str().unwrap();

    // `prewarm show --files M | head -c 100`.
    let full = prewarm(&["show", "--files", manifest]);
    assert_eq!(full.status.code(), Some(0), "{}", stderr(&full));
    assert!(
        full.stdout.len() > 128 << 10,
        "the listing ({} bytes) must overflow a pipe for the test to mean anything",
        full.stdout.len()
    );
    let mut show = prewarm_child(&["show", "--files", manifest]);
    let mut head = [0u8; 100];
    show.stdout.as_mut().unwrap().read_exact(&mut head).unwrap();
    drop(show.stdout.take());
    let status = wait_bounded(&mut show, Duration::from_secs(60), "show | head");
    let err = stderr_of(&mut show);
    assert_eq!(status.code(), Some(0), "show into a closed pipe: {err}");
    assert!(!err.contains("panicked"), "{err}");

    // `prewarm run --state S --json` into a reader that is already gone:
    // the run's own exit code, and the state saved.
    let lo = LoopDev::attach(&image, true);
    let state = dir.join("state");
    let state = state.to_str().unwrap();
    let mut run = prewarm_child(&[
        "run", "--phase", "initrd", "-m", manifest, "--state", state, "--json",
    ]);
    drop(run.stdout.take());
    let status = wait_bounded(&mut run, Duration::from_secs(120), "run --json");
    let err = stderr_of(&mut run);
    assert_eq!(status.code(), Some(0), "run into a closed pipe: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        fs::metadata(state).is_ok_and(|m| m.len() > 0),
        "the state is saved before the report is printed"
    );
    // The same run again, read normally, finds it all done by the first.
    let (again, out) =
        prewarm_json(&["run", "--phase", "initrd", "-m", manifest, "--state", state]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(u(&again["manifest"]["handover_chunks"]) > 0, "{again}");
    assert_eq!(u(&again["bytes_read"]), 0, "{again}");
    drop(lo);
}

#[test]
fn a_text_summary_into_a_closed_pipe_keeps_the_exit_code() {
    // Unprivileged: a run of a path that exists, summary into a closed
    // pipe; and `--json` likewise.
    for json in [false, true] {
        let mut args = vec!["--quiet", "/proc/self/exe", "/nonexistent/x"];
        if json {
            args.push("--json");
        }
        let mut child = prewarm_child(&args);
        drop(child.stdout.take());
        let status = wait_bounded(&mut child, Duration::from_secs(60), "run");
        let err = stderr_of(&mut child);
        assert_ne!(status.code(), Some(101), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        let reference = prewarm(&args);
        assert_eq!(status.code(), reference.status.code(), "{err}");
    }
}

/// The most a run may hold at its peak, by its own report.
const RSS_LIMIT_KIB: u64 = 128 << 10;

#[test]
fn a_million_line_list_stays_under_128_mib() {
    let tmp = tempfile::tempdir().unwrap();
    let list = tmp.path().join("million.list");
    let mut text = Vec::with_capacity(60 << 20);
    text.extend_from_slice(b"# a million lines, most of them missing files\n");
    for i in 0..1_000_000u32 {
        let _ = writeln!(
            text,
            "{} /nonexistent/dir{}/some/longer/path/file{i}.so",
            10 + i % 3,
            i % 1000
        );
    }
    text.extend_from_slice(b"5 \"/proc/self/exe\"\n");
    fs::write(&list, &text).unwrap();
    drop(text);
    let (report, err) = run_bounded(&["--paths", list.to_str().unwrap()], "a million lines");
    assert_eq!(u(&report["files"]), 1, "{report}");
    let omitted = &report["warnings_omitted"];
    assert_eq!(omitted[0]["kind"], "missing", "{omitted}");
    assert_eq!(
        u(&omitted[0]["count"]) + report["warnings"].as_array().unwrap().len() as u64,
        1_000_000
    );
    // The warnings printed on stderr are capped too.
    assert!(err.lines().count() < 200, "{} lines", err.lines().count());
}

/// A million files that exist, on a filesystem with extents (a loop
/// device): once a file's extents are in the device's plan the run keeps
/// nothing of it but a bit of an inode bitmap, so a million listed files
/// (and the same million found by walking their directories) stay under
/// the bound too. One file in a hundred holds a block of data; the rest
/// are empty, which costs the same to collect and map and keeps the image
/// small.
#[test]
fn a_million_existing_files_stay_under_128_mib() {
    const DIRS: u32 = 1000;
    const PER_DIR: u32 = 1000;
    if !privileged(
        "a_million_existing_files",
        &["mkfs.ext4", "losetup", "mount"],
    ) {
        return;
    }
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let image = tmp.path().join("million.img");
    File::create(&image).unwrap().set_len(3 << 30).unwrap();
    let (img, inodes) = (
        image.to_str().unwrap(),
        (DIRS * PER_DIR + DIRS + 1000).to_string(),
    );
    cmd("mkfs.ext4", &["-q", "-F", "-N", &inodes, img]);
    let lo = LoopDev::attach(&image, false);
    let mounted = Mounted::mount(lo.path(), &tmp.path().join("mnt"), "ext4", "rw");
    let tree = mounted.dir.join("tree");
    let list = tmp.path().join("files.list");
    let mut text = Vec::with_capacity(64 << 20);
    let block = [0x5au8; 4096];
    for d in 0..DIRS {
        let dir = tree.join(format!("layer{:02}/d{d:04}", d % 50));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..PER_DIR {
            let path = dir.join(format!("file{f:04}.so"));
            let mut file = File::create(&path).unwrap();
            if f % 100 == 0 {
                file.write_all(&block).unwrap();
            }
            let _ = writeln!(text, "10 {}", path.display());
        }
    }
    fs::write(&list, &text).unwrap();
    drop(text);
    let with_data = u64::from(DIRS * PER_DIR / 100);
    for (args, what) in [
        (
            vec!["--paths", list.to_str().unwrap()],
            "a million listed files",
        ),
        (vec![tree.to_str().unwrap()], "a million files walked"),
    ] {
        let (report, err) = run_bounded(&args, what);
        assert_eq!(report["outcome"], "success", "{what}: {err}");
        assert_eq!(u(&report["files"]), u64::from(DIRS * PER_DIR), "{what}");
        assert_eq!(u(&report["file_bytes"]), with_data * 4096, "{what}");
        assert_eq!(report["devices"][0]["node"], lo.path(), "{what}");
        assert!(
            u(&report["bytes_read"]) >= with_data * 4096,
            "{what}: {report}"
        );
    }
}

/// Run prewarm `--quiet --json` with `args`, bounded; check the run's own
/// peak RSS and the size of its report; return the report and stderr.
fn run_bounded(args: &[&str], what: &str) -> (Value, String) {
    let mut all = vec!["--quiet", "--json"];
    all.extend_from_slice(args);
    let mut child = prewarm_child(&all);
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        stdout.read_to_end(&mut out).map(|_| out)
    });
    let mut stderr = child.stderr.take().unwrap();
    let err_reader = std::thread::spawn(move || {
        let mut err = String::new();
        stderr.read_to_string(&mut err).map(|_| err)
    });
    let status = wait_bounded(&mut child, Duration::from_secs(600), what);
    let out = reader.join().unwrap().unwrap();
    let err = err_reader.join().unwrap().unwrap();
    assert_eq!(status.code(), Some(0), "{what}: {err}");
    assert!(
        out.len() < 1 << 20,
        "{what}: report of {} bytes: warnings are not capped",
        out.len()
    );
    let report: Value = serde_json::from_slice(&out).unwrap();
    let rss = u(&report["max_rss_kib"]);
    eprintln!("{what}: max_rss_kib {rss}, cpu_ms {}", report["cpu_ms"]);
    assert!(rss > 0 && rss < RSS_LIMIT_KIB, "{what}: peak RSS {rss} KiB");
    (report, err)
}
