//! Bad input: every bad entry is named (path and list line), the good ones
//! are still read, and the exit code says how it went (0 warnings only,
//! 1 partial, 2 nothing readable or usage).

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::*;
use predicates::str::contains;

/// Run prewarm; as root, without the capabilities that let root read any
/// file, so that a mode-000 file is unreadable as it is for a normal user.
fn prewarm_unprivileged_reads(args: &[&str]) -> std::process::Output {
    let bin = env!("CARGO_BIN_EXE_prewarm");
    let mut cmd = if nix::unistd::Uid::effective().is_root() && tool_exists("setpriv") {
        let mut c = Command::new("setpriv");
        c.args([
            "--bounding-set=-dac_override,-dac_read_search",
            "--inh-caps=-all",
            bin,
        ]);
        c
    } else {
        Command::new(bin)
    };
    cmd.args(args).env("RUST_LOG", "warn").output().unwrap()
}

struct BadList {
    _tmp: tempfile::TempDir,
    dir: std::path::PathBuf,
}

impl BadList {
    fn new() -> BadList {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        write_synced(&dir.join("good1"), &[1u8; 100_000]);
        write_synced(&dir.join("good2"), &[2u8; 5_000]);
        fs::create_dir(dir.join("loopdir")).unwrap();
        write_synced(&dir.join("loopdir/inner"), &[3u8; 7_000]);
        std::os::unix::fs::symlink(dir.join("loopdir"), dir.join("loopdir/self")).unwrap();
        fs::write(dir.join("secret"), b"top secret").unwrap();
        fs::set_permissions(dir.join("secret"), fs::Permissions::from_mode(0o000)).unwrap();
        BadList { _tmp: tmp, dir }
    }

    fn write(&self, name: &str, lines: &[&str]) -> String {
        let d = self.dir.display().to_string();
        let text: Vec<String> = lines.iter().map(|l| l.replace("{d}", &d)).collect();
        let path = self.dir.join(name);
        fs::write(&path, text.join("\n")).unwrap();
        path.to_str().unwrap().to_string()
    }
}

#[test]
fn bad_entries_are_named_and_the_rest_is_read() {
    let t = BadList::new();
    let list = t.write(
        "list.txt",
        &[
            "# a list with every kind of trouble",
            "10 {d}/good1",
            "this is garbage",
            "20 {d}/missing",
            "20 {d}/loopdir",
            "20 {d}/secret",
            "30 {d}/good2",
            "30 {d}/good2",
        ],
    );
    let out = prewarm_unprivileged_reads(&["--json", "--paths", &list]);
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "an unreadable file makes the run partial\n{err}"
    );
    assert!(
        err.contains(&format!("{list}:3: expected `[PRIORITY] /absolute/path`")),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{list}:4: {}/missing: no such file",
            t.dir.display()
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("{list}:5: ")) && err.contains("directory loop"),
        "{err}"
    );
    assert!(
        err.contains(&format!("{list}:6: {}/secret", t.dir.display())),
        "{err}"
    );
    assert!(err.contains("Permission denied"), "{err}");
    assert!(
        err.contains(&format!("{list}:8: ")) && err.contains("duplicate"),
        "{err}"
    );

    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["outcome"], "partial");
    assert_eq!(u(&r["files"]), 3, "good1, good2 and loopdir/inner");
    assert!(u(&r["bytes_read"]) >= 112_000, "{}", r["bytes_read"]);
    assert_eq!(u(&r["errors"]), 0);
}

#[test]
fn warnings_alone_exit_zero() {
    let t = BadList::new();
    let list = t.write(
        "list.txt",
        &[
            "10 {d}/good1",
            "garbage line",
            "{d}/missing",
            "/nope*/x?",
            "20 {d}/loopdir",
        ],
    );
    let out = prewarm(&["--paths", &list]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains(&format!("{list}:2:")), "{err}");
    assert!(err.contains("glob matched nothing"), "{err}");
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("prewarm: 2 files"), "{summary}");
}

#[test]
fn nothing_readable_or_no_input_exits_two() {
    let t = BadList::new();
    let list = t.write("list.txt", &["{d}/missing", "not a path"]);
    let out = prewarm(&["--paths", &list]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));

    prewarm_cmd()
        .assert()
        .code(2)
        .stderr(contains("nothing to do"));
    prewarm_cmd()
        .args(["--queue-depth", "0", "/bin/sh"])
        .assert()
        .code(2)
        .stderr(contains("queue_depth"));
    prewarm_cmd()
        .args(["--paths", "/nonexistent/list.txt"])
        .assert()
        .code(2)
        .stderr(contains("/nonexistent/list.txt"));
}

#[test]
fn dry_run_reads_nothing_and_lists_the_plan() {
    let t = BadList::new();
    let (r, out) = prewarm_json(&["--dry-run", t.dir.join("good1").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(r["dry_run"], true);
    assert_eq!(u(&r["bytes_read"]), 0);
    assert_eq!(u(&r["files"]), 1);
    assert_eq!(r["file_maps"][0]["size"], 100_000);
}

#[test]
fn example_list_runs() {
    let list = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/boot.list");
    let out = prewarm(&["--paths", list]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn a_passed_deadline_stops_issuing_and_reports_partial() {
    let t = BadList::new();
    let (r, out) = prewarm_json(&["--deadline", "0s", t.dir.join("good1").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(r["stopped"], "deadline");
    assert_eq!(r["outcome"], "partial");
    assert_eq!(u(&r["bytes_read"]), 0);
    // Stopped before its class was even collected: counted, not planned.
    assert_eq!(u(&r["entries_not_reached"]), 1);
    assert_eq!(u(&r["ios_done"]), 0);
}

#[test]
fn walks_stay_on_one_filesystem_unless_asked_and_skip_special_files() {
    if !privileged(
        "walks_stay_on_one_filesystem_unless_asked",
        &["mount", "mkfifo"],
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let top = tmp.path().join("top");
    fs::create_dir(&top).unwrap();
    fs::write(top.join("here"), vec![1u8; 10_000]).unwrap();
    cmd("mkfifo", &[top.join("fifo").to_str().unwrap()]);
    let sub = Mounted::mount("tmpfs", &top.join("other-fs"), "tmpfs", "size=1m");
    fs::write(sub.dir.join("there"), vec![2u8; 10_000]).unwrap();
    let topdir = top.to_str().unwrap();

    let (r, out) = prewarm_json(&["--dry-run", topdir]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(u(&r["files"]), 1, "the walk crossed into the tmpfs: {r}");
    assert_eq!(
        u(&r["skipped_non_regular"]),
        1,
        "the FIFO is skipped and counted"
    );
    let text = String::from_utf8_lossy(&prewarm(&[topdir]).stdout).into_owned();
    assert!(text.contains("skipped 1 non-regular file"), "{text}");

    for args in [
        vec!["--dry-run", "--cross-mounts", topdir],
        vec!["--cross-mounts", topdir],
    ] {
        let (r, out) = prewarm_json(&args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        assert_eq!(
            u(&r["files"]),
            2,
            "{args:?}: --cross-mounts enters the tmpfs"
        );
    }
}
