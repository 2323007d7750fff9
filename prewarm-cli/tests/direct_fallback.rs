//! The fallback to buffered reads when O_DIRECT is refused, on a real
//! filesystem that refuses it: ramfs (kernel 6.18 here: `open(O_DIRECT)` on a
//! ramfs file fails with EINVAL; it has no FIEMAP either, so its files are
//! read through the file). prewarm must still read every byte, buffered,
//! and say so (`file_level.direct_files` = 0 of 2). tmpfs, which accepts
//! O_DIRECT, is the control: the same files there are read direct.

mod common;

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use common::*;

fn read_two_files(dir: &Path) -> serde_json::Value {
    std::fs::write(dir.join("big"), vec![0x5a; 3_000_000]).unwrap();
    std::fs::write(dir.join("small"), vec![0xa5; 5000]).unwrap();
    let (report, out) = prewarm_json(&[
        dir.join("big").to_str().unwrap(),
        dir.join("small").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(u(&report["bytes_read"]), 3_005_000, "{report}");
    assert_eq!(u(&report["file_level"]["files"]), 2, "{report}");
    report
}

#[test]
fn refused_o_direct_falls_back_to_buffered_file_reads() {
    if !privileged(
        "refused_o_direct_falls_back_to_buffered_file_reads",
        &["mount"],
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let ramfs = Mounted::mount("none", &tmp.path().join("ramfs"), "ramfs", "mode=0755");
    let refused = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_DIRECT)
        .open({
            std::fs::write(ramfs.dir.join("probe"), b"x").unwrap();
            ramfs.dir.join("probe")
        });
    assert!(
        refused.is_err(),
        "ramfs accepted O_DIRECT: the premise is gone"
    );
    std::fs::remove_file(ramfs.dir.join("probe")).unwrap();
    let report = read_two_files(&ramfs.dir);
    assert_eq!(
        u(&report["file_level"]["direct_files"]),
        0,
        "ramfs refuses O_DIRECT: {report}"
    );
    assert_eq!(u(&report["file_level"]["read"]["errors"]), 0, "{report}");

    let tmpfs = Mounted::mount("none", &tmp.path().join("tmpfs"), "tmpfs", "size=16m");
    let control = read_two_files(&tmpfs.dir);
    assert_eq!(
        u(&control["file_level"]["direct_files"]),
        2,
        "tmpfs accepts O_DIRECT: {control}"
    );
}
