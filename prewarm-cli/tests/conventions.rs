//! What operators check with the usual tools: `--version` names the build,
//! the completion scripts and the man page come from the same clap
//! definitions the binary parses with.

mod common;

use common::*;
use predicates::prelude::PredicateBooleanExt;
use predicates::str::{contains, starts_with};

#[test]
fn version_names_the_commit() {
    prewarm_cmd()
        .arg("--version")
        .assert()
        .success()
        .stdout(starts_with(concat!(
            "prewarm ",
            env!("CARGO_PKG_VERSION"),
            " (commit "
        )));
}

#[test]
fn completions_and_man_page_cover_the_commands() {
    prewarm_cmd()
        .args(["completions", "bash"])
        .assert()
        .success()
        .stdout(contains("complete -F _prewarm").and(contains("--queue-depth")));
    prewarm_cmd()
        .args(["completions", "zsh"])
        .assert()
        .success()
        .stdout(starts_with("#compdef prewarm"));
    prewarm_cmd()
        .args(["completions", "fish"])
        .assert()
        .success()
        .stdout(contains("complete -c prewarm"));
    prewarm_cmd().arg("manpage").assert().success().stdout(
        contains(".TH prewarm 1")
            .and(contains("paths"))
            .and(contains("run")),
    );
    prewarm_cmd()
        .args(["completions", "nosuchshell"])
        .assert()
        .code(2);
}

/// A 4 MiB file on a real filesystem (the target directory, not a tmpfs),
/// so that it can be mapped and planned.
fn data_file(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("data");
    write_synced(&path, &vec![7u8; 4 << 20]);
    path
}

fn target_tempdir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

#[test]
fn dash_q_is_quiet_and_the_queue_depth_is_spelled_out() {
    // `-q` silences warnings as in grep or systemctl (RUST_LOG, which
    // overrides it, unset) ...
    let out = prewarm_cmd()
        .env_remove("RUST_LOG")
        .args(["-q", "-n", "/nonexistent/prewarm-test"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(stderr(&out), "", "-q prints nothing but errors");
    let out = prewarm(&["-n", "/nonexistent/prewarm-test"]);
    assert!(stderr(&out).contains("no such file"), "{}", stderr(&out));
    // ... and the queue depth is `--queue-depth`, `-Q` or fio's `--iodepth`.
    for flag in ["--queue-depth", "-Q", "--iodepth"] {
        let (r, _) = prewarm_json(&["-n", flag, "7", "/nonexistent/prewarm-test"]);
        assert_eq!(r["queue_depth"], 7, "{flag}");
    }
}

#[test]
fn json_goes_before_or_after_the_subcommand() {
    // Planning needs a block device to map on: an ext4 image.
    if !privileged(
        "json_goes_before_or_after_the_subcommand",
        &["losetup", "mkfs.ext4"],
    ) {
        return;
    }
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let (_img, _lo, mnt) = image_with(tmp.path(), "conv", &[("data", 4 << 20)]);
    let file = mnt.dir.join("data");
    let manifest = tmp.path().join("m");
    let (m, f) = (manifest.to_str().unwrap(), file.to_str().unwrap());
    for args in [
        vec!["--json", "plan", f, "-m", m],
        vec!["plan", "--json", f, "-o", m],
        vec!["plan", f, "--output", m, "--json"],
    ] {
        let out = prewarm(&args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["files"], 1, "{args:?}");
    }
    // The manifest is named the same three ways by `show` and `run`.
    for args in [
        vec!["--json", "show", m],
        vec!["show", "--json", "-m", m],
        vec!["show", "--manifest", m, "--json"],
    ] {
        let out = prewarm(&args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["stats"]["files"], 1, "{args:?}");
    }
    for args in [
        vec!["--json", "run", "-n", m],
        vec!["run", "-n", "--manifest", m, "--json"],
    ] {
        let out = prewarm(&args);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", stderr(&out)));
        assert_eq!(v["dry_run"], true, "{args:?}");
    }
    prewarm_cmd()
        .args(["show", m, "-m", m])
        .assert()
        .code(2)
        .stderr(contains("cannot be used with"));
}

#[test]
fn a_path_named_like_a_command_is_given_after_dashes() {
    let tmp = target_tempdir();
    std::fs::write(tmp.path().join("run"), b"x").unwrap();
    for args in [
        &["-n", "--json", "--", "run"][..],
        &["-n", "--json", "./run"],
    ] {
        let out = prewarm_cmd()
            .current_dir(tmp.path())
            .args(args)
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", stderr(&out)));
        assert_eq!(v["files"], 1, "{args:?}");
    }
    // The main command's options beside a subcommand are refused, not
    // dropped.
    prewarm_cmd()
        .args(["--paths", "/dev/null", "run"])
        .assert()
        .code(2)
        .stderr(contains("--paths cannot be used with the `run` command"));
}

#[test]
fn plan_offers_only_what_it_accepts() {
    prewarm_cmd()
        .args(["plan", "--help"])
        .assert()
        .success()
        .stdout(contains("--manifest").and(contains("--device").not()));
    prewarm_cmd()
        .args(["plan", "--device", "/dev/null", "-o", "/dev/null"])
        .assert()
        .code(2);
}

#[test]
fn max_rate_holds_the_reads_back() {
    let tmp = target_tempdir();
    let file = data_file(tmp.path());
    // 4 MiB at 2 MiB/s: about 2 s (less the first read's burst). Only a
    // lower bound is asserted: a slow machine can only make it longer.
    let start = std::time::Instant::now();
    let (r, out) = prewarm_json(&["--max-rate", "2", file.to_str().unwrap()]);
    let took = start.elapsed();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(u(&r["bytes_read"]), 4 << 20, "{r}");
    assert!(took.as_secs_f64() >= 1.4, "4 MiB at 2 MiB/s took {took:?}");
    // 4 reads of 1 MiB at 2 per second: at least 1.4 s too.
    let start = std::time::Instant::now();
    let (r, _) = prewarm_json(&["--max-iops", "2", file.to_str().unwrap()]);
    assert_eq!(u(&r["bytes_read"]), 4 << 20, "{r}");
    assert!(
        start.elapsed().as_secs_f64() >= 1.4,
        "{:?}",
        start.elapsed()
    );
    prewarm_cmd()
        .args(["--max-rate", "0", "/bin/sh"])
        .assert()
        .code(2)
        .stderr(contains("--max-rate"));
}

/// Run `prewarm ARGS` under a pseudo-terminal (util-linux `script`), as an
/// operator at a shell would, and return what the terminal showed.
fn on_a_terminal(args: &str) -> String {
    let bin = assert_cmd::cargo::cargo_bin("prewarm");
    let out = std::process::Command::new("script")
        .args(["-qec", &format!("{} {args}", bin.display()), "/dev/null"])
        .env("RUST_LOG", "warn")
        .output()
        .expect("script (util-linux)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_progress_bar_is_for_terminals_only() {
    if !tool_exists("script") {
        return skip("the_progress_bar_is_for_terminals_only", "no `script`");
    }
    let tmp = target_tempdir();
    let file = data_file(tmp.path());
    let f = file.to_str().unwrap();
    // Slow enough (4 MiB at 4 MiB/s) for the bar to be drawn.
    let shown = on_a_terminal(&format!("--max-rate 4 {f}"));
    assert!(
        shown.contains("chunks") && shown.contains("ETA"),
        "{shown:?}"
    );
    // Never with --json or -q, even on a terminal ...
    for quiet in ["--json", "-q"] {
        let shown = on_a_terminal(&format!("--max-rate 4 {quiet} {f}"));
        assert!(!shown.contains("ETA"), "{quiet}: {shown:?}");
    }
    // ... nor into a pipe (a unit's journal is one).
    let out = prewarm(&["--max-rate", "4", f]);
    assert!(!stderr(&out).contains("ETA"), "{}", stderr(&out));
}
