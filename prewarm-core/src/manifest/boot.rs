//! The boot policy: what the kernel command line says about a run.
//!
//! `rd.prewarm=0` disables the initrd run and `prewarm=0` the root-phase
//! run (an operator's way out, from the boot loader, if prewarm ever
//! misbehaves); `prewarm.manifest=PATH` selects another manifest for both.

use std::path::PathBuf;

/// Which run of a boot this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// In the initrd: the root is not mounted, files are not checked.
    Initrd,
    /// In the real root: files are checked against the manifest.
    Root,
}

impl Phase {
    /// The kernel command line word that disables this phase's run.
    pub fn disable_switch(self) -> &'static str {
        match self {
            Phase::Initrd => "rd.prewarm=0",
            Phase::Root => "prewarm=0",
        }
    }
}

/// What the command line decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootDecision {
    /// Do not run: the word that said so.
    Disabled(&'static str),
    /// Run, with this manifest instead of the configured one (if given).
    Run(Option<PathBuf>),
}

/// The decision of the kernel command line `cmdline` for `phase`.
pub fn decide(cmdline: &str, phase: Phase) -> BootDecision {
    let switch = phase.disable_switch();
    let words = || cmdline.split_whitespace();
    if words().any(|w| w == switch) {
        return BootDecision::Disabled(switch);
    }
    BootDecision::Run(
        words()
            .find_map(|w| w.strip_prefix("prewarm.manifest="))
            .map(PathBuf::from),
    )
}

/// The kernel command line: `PREWARM_CMDLINE` if set (tests stand it in
/// for `/proc/cmdline`), else `/proc/cmdline`, else empty.
pub fn kernel_cmdline() -> String {
    std::env::var("PREWARM_CMDLINE")
        .or_else(|_| std::fs::read_to_string("/proc/cmdline"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switches_per_phase_and_manifest_override() {
        let line = "root=UUID=x ro rd.prewarm=0 prewarm.manifest=/etc/other quiet";
        assert_eq!(
            decide(line, Phase::Initrd),
            BootDecision::Disabled("rd.prewarm=0")
        );
        assert_eq!(
            decide(line, Phase::Root),
            BootDecision::Run(Some(PathBuf::from("/etc/other")))
        );
        assert_eq!(decide("ro quiet", Phase::Root), BootDecision::Run(None));
        // Only whole words count.
        assert_eq!(
            decide("xprewarm=0 prewarm=01", Phase::Root),
            BootDecision::Run(None)
        );
    }
}
