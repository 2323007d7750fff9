//! `--with-libs`: each ELF file's interpreter and shared libraries join the
//! plan at its priority. Checked against the loader itself (`ldd`) on the
//! machine's own binaries, and under `plan --root` on an image whose
//! libraries live elsewhere than the host's.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::Value;

/// The real paths of a dry run's files, but `exclude`.
fn planned(report: &Value, exclude: &Path) -> BTreeSet<PathBuf> {
    report["file_maps"]
        .as_array()
        .map(|maps| {
            maps.iter()
                .map(|f| fs::canonicalize(f["path"].as_str().unwrap()).unwrap())
                .filter(|p| p != exclude)
                .collect()
        })
        .unwrap_or_default()
}

/// What `ldd` says `path` loads: real paths, the vDSO (no file) left out.
/// `None` when ldd cannot run or found a library missing.
fn ldd(path: &Path) -> Option<BTreeSet<PathBuf>> {
    let out = Command::new("ldd")
        .arg(path)
        .env_remove("LD_LIBRARY_PATH")
        .env_remove("LD_PRELOAD")
        .output()
        .ok()?;
    let mut found = BTreeSet::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let line = line.trim();
        let target = match line.split_once(" => ") {
            Some((_, rest)) if rest.starts_with("not found") => return None,
            Some((_, rest)) => rest,
            None => line,
        };
        let target = target.split(" (").next().unwrap_or_default();
        if target.starts_with('/') {
            found.insert(fs::canonicalize(target).ok()?);
        }
    }
    // "not a dynamic executable", "statically linked": nothing, as ours.
    Some(found)
}

#[test]
fn a_dry_run_lists_the_libraries_at_the_files_priority() {
    let ls = fs::canonicalize("/usr/bin/ls").unwrap();
    let (report, out) = prewarm_json(&[
        "--dry-run",
        "--with-libs",
        "--priority",
        "7",
        ls.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let maps = report["file_maps"].as_array().unwrap();
    let libc = maps
        .iter()
        .find(|f| f["path"].as_str().unwrap().ends_with("/libc.so.6"))
        .unwrap_or_else(|| panic!("no libc in {maps:?}"));
    assert_eq!(u(&libc["priority"]), 7);
    assert!(
        report["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w["kind"] != "library"),
        "{}",
        report["warnings"]
    );
    if let Some(expected) = ldd(&ls) {
        assert_eq!(planned(&report, &ls), expected);
    }
    // Without the option, only the file named.
    let (report, _) = prewarm_json(&["--dry-run", ls.to_str().unwrap()]);
    assert_eq!(u(&report["files"]), 1);
}

/// At most this many binaries of /usr/bin are compared (evenly spread
/// over the sorted directory), at least [`AT_LEAST`].
const AT_MOST: usize = 150;
const AT_LEAST: usize = 50;

#[test]
fn closures_match_ldd_on_the_machines_binaries() {
    if !tool_exists("ldd") {
        skip(
            "closures_match_ldd_on_the_machines_binaries",
            "ldd is not installed",
        );
        return;
    }
    let mut elf: Vec<PathBuf> = fs::read_dir("/usr/bin")
        .unwrap()
        .filter_map(|e| fs::canonicalize(e.ok()?.path()).ok())
        // Names with glob characters (`[`) would be patterns to prewarm.
        .filter(|p| !p.to_string_lossy().contains(['[', '*', '?']))
        .filter(|p| {
            let mut magic = [0u8; 4];
            fs::File::open(p)
                .and_then(|f| std::io::Read::read_exact(&mut &f, &mut magic))
                .is_ok()
                && magic == *b"\x7fELF"
        })
        .collect();
    elf.sort();
    elf.dedup();
    assert!(
        elf.len() >= AT_LEAST,
        "only {} ELF files in /usr/bin",
        elf.len()
    );
    let step = elf.len().div_ceil(AT_MOST);
    let (mut compared, mut differ) = (0, Vec::new());
    for bin in elf.iter().step_by(step) {
        // Run on the real path: ldd runs the loader on the path it is
        // given, whose $ORIGIN is then a symlink's directory; the kernel
        // would give the real one.
        let Some(expected) = ldd(bin) else {
            continue; // ldd says a library is missing: nothing to compare
        };
        let (report, out) = prewarm_json(&["--dry-run", "--with-libs", bin.to_str().unwrap()]);
        assert!(out.status.code().is_some(), "{}", stderr(&out));
        compared += 1;
        let got = planned(&report, bin);
        if got != expected {
            differ.push(format!(
                "{}: ldd only {:?}, prewarm only {:?}",
                bin.display(),
                expected.difference(&got).collect::<Vec<_>>(),
                got.difference(&expected).collect::<Vec<_>>()
            ));
        }
    }
    eprintln!("{compared} binaries compared with ldd");
    assert!(compared >= AT_LEAST, "only {compared} compared");
    assert!(differ.is_empty(), "{}", differ.join("\n"));
}

#[test]
fn plan_resolves_the_libraries_inside_the_image_root() {
    if !privileged(
        "plan_resolves_the_libraries_inside_the_image_root",
        &["mkfs.ext4", "losetup", "ldd"],
    ) {
        return;
    }
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let image = dir.join("root.img");
    make_fs_image(&image, "ext4", 128);
    let lo = LoopDev::attach(&image, false);
    let mnt = dir.join("mnt");
    let m = Mounted::mount(lo.path(), &mnt, "ext4", "rw");
    // An image laid out as Fedora and Amazon Linux are: libraries in
    // /usr/lib64 and an absolute /lib64 link to it (which on the host
    // would lead out of the image), and no loader cache.
    let ls = fs::canonicalize("/usr/bin/ls").unwrap();
    fs::create_dir_all(mnt.join("usr/bin")).unwrap();
    fs::create_dir_all(mnt.join("usr/lib64")).unwrap();
    std::os::unix::fs::symlink("/usr/lib64", mnt.join("lib64")).unwrap();
    fs::copy(&ls, mnt.join("usr/bin/ls")).unwrap();
    let ldd_out = cmd("ldd", &[ls.to_str().unwrap()]);
    let mut names = BTreeSet::new();
    for line in ldd_out.lines() {
        let line = line.trim();
        let (name, path) = match line.split_once(" => ") {
            Some((name, rest)) => (name, rest.split(" (").next().unwrap()),
            None => {
                let path = line.split(" (").next().unwrap();
                (path.rsplit('/').next().unwrap(), path)
            }
        };
        if path.starts_with('/') {
            fs::copy(path, mnt.join("usr/lib64").join(name)).unwrap();
            names.insert(name.to_string());
        }
    }
    cmd("sync", &[]);
    let manifest = dir.join("boot.manifest");
    let out = prewarm(&[
        "plan",
        "--root",
        mnt.to_str().unwrap(),
        "--with-libs",
        "--priority",
        "5",
        "/usr/bin/ls",
        "-o",
        manifest.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "plan: {}", stderr(&out));
    assert!(!stderr(&out).contains("WARN"), "{}", stderr(&out));
    drop(m);
    drop(lo);
    let shown = cmd(
        "sh",
        &[
            "-c",
            &format!(
                "{} show --files {}",
                env!("CARGO_BIN_EXE_prewarm"),
                manifest.display()
            ),
        ],
    );
    for name in &names {
        assert!(
            shown.contains(&format!("/usr/lib64/{name}")),
            "{name} not in the manifest:\n{shown}"
        );
    }
    assert!(!shown.contains("x86_64-linux-gnu"), "a host path:\n{shown}");
}
