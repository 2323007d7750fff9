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
