//! The evidence side of the VM boot test (`tests/vm_boot.rs`): a real
//! Debian guest boots under qemu from a disk served by `prewarm-testbed`,
//! with and without prewarm (`benches/vm/run.sh` does that); this module
//! reads what the boots left behind and judges it.
//!
//! - [`boot`]: parsing one boot's outputs (serial console, ttyS1 data log
//!   with the journal, unit properties and prewarm's reports, testbed
//!   stats, env files) into a [`Boot`], and the image [`Layout`];
//! - [`checks`]: the checks (initrd ran before switch-root, READY before
//!   kubelet, hydrated by prewarm, disjoint phases, the control boot);
//! - [`recording`]: the recorded boot (`prewarm record` in the guest): the
//!   recording, its manifest's chunks, their coverage of a boot's fetches;
//! - [`results`]: the `vm-boot` section of RESULTS.md.
//!
//! The test itself only spawns run.sh and asserts on [`Checks`]; everything
//! here runs without root, and is unit-tested on recorded boots in
//! `benches/vm/testdata/`.

pub mod boot;
pub mod checks;
pub mod recording;
pub mod results;

pub use boot::{Boot, Layout};
pub use checks::Checks;
pub use recording::RecordedRun;
pub use results::{measured, results_path, results_section};

/// The recorded run in `benches/vm/testdata/`, for the unit tests.
#[cfg(test)]
pub(crate) mod testdata {
    use std::path::{Path, PathBuf};

    use super::{Boot, Layout, RecordedRun};

    pub fn dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("vm/testdata")
    }

    pub fn layout() -> Layout {
        Layout::load(&dir())
    }

    pub fn boots() -> Vec<Boot> {
        Boot::load_all(&dir())
    }

    /// Boot `KIND-N`.
    pub fn boot(name: &str) -> Boot {
        Boot::load(&dir().join(format!("boot-{name}")))
    }

    /// The recording, its chunk sets and the recording boot.
    pub fn recorded() -> RecordedRun {
        RecordedRun::load(&dir())
    }

    /// A recorded file of boot `name`, as text.
    pub fn read(name: &str, file: &str) -> String {
        let p = dir().join(format!("boot-{name}")).join(file);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
    }

    /// Boot `name` parsed again after `doctor` edited its data.log and
    /// stats.json (in that order of arguments).
    pub fn doctored(name: &str, doctor: impl Fn(String, String) -> (String, String)) -> Boot {
        let (data, stats) = doctor(read(name, "data.log"), read(name, "stats.json"));
        Boot::parse(
            name,
            &read(name, "console.log"),
            &data,
            Some(&stats),
            &read(name, "boot.env"),
        )
    }
}
