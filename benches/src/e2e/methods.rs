//! The methods being compared: the [`Method`] catalogue (every way of getting
//! the critical files hydrated, with its stable key and label), the method
//! lists of a full run and of CI mode, and how each method is invoked (the
//! commands, the in-process readers, prewarm's dry run and `plan`).
//!
//! Kept apart from the harness so that adding or changing a method touches
//! this file only; the harness decides *when* a method runs and measures it,
//! this module decides *what* runs.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::harness::Harness;
use super::sys;

/// A way of getting the critical files hydrated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Method {
    /// The application reading the critical files cold, in list order.
    AppCold,
    /// One `cat` of all files.
    Cat,
    /// `xargs -P 32 -n N cat`.
    Xargs { n: usize },
    /// `vmtouch -t` of all files.
    Vmtouch,
    /// AWS's documented fio initialisation of the whole device.
    Fio,
    /// Files sorted by first physical offset (FIEMAP), each read in turn.
    PhysicalOrder,
    /// The prewarm CLI on the critical list.
    Prewarm { touch: bool, qd: u32, cached: bool },
    /// `prewarm run --manifest`: the plan made ahead by `prewarm plan` (as at
    /// image build time), replayed without mapping anything.
    PrewarmManifest { touch: bool },
    /// The prewarm CLI cold at the defaults but with
    /// `--metadata-readahead 0`: what reading the metadata ahead of the walk
    /// is worth, measured beside the default in the same run.
    PrewarmNoReadahead,
}

impl Method {
    /// prewarm at the default queue depth (32).
    pub const fn prewarm_q32(touch: bool, cached: bool) -> Method {
        Method::Prewarm {
            touch,
            qd: 32,
            cached,
        }
    }

    /// Stable identifier (JSON, CSV).
    pub fn key(&self) -> String {
        match self {
            Method::AppCold => "no-prewarm".into(),
            Method::Cat => "cat".into(),
            Method::Xargs { n } => format!("xargs-p32-n{n}-cat"),
            Method::Vmtouch => "vmtouch".into(),
            Method::Fio => "fio".into(),
            Method::PhysicalOrder => "physical-order".into(),
            Method::Prewarm { touch, qd, cached } => format!(
                "prewarm-{}-q{qd}-{}",
                if *touch { "touch" } else { "full" },
                if *cached { "cached" } else { "cold" }
            ),
            Method::PrewarmManifest { touch } => {
                format!("prewarm-manifest-{}", if *touch { "touch" } else { "full" })
            }
            Method::PrewarmNoReadahead => "prewarm-full-q32-cold-no-readahead".into(),
        }
    }

    /// Human label.
    pub fn label(&self) -> String {
        match self {
            Method::AppCold => "no prewarm (app reads cold, list order)".into(),
            Method::Cat => "cat (serial)".into(),
            Method::Xargs { n } => format!("xargs -P 32 -n {n} cat"),
            Method::Vmtouch => "vmtouch -t".into(),
            Method::Fio => "fio volume-initialize (whole device)".into(),
            Method::PhysicalOrder => "physical-order reader (FIEMAP sort)".into(),
            Method::Prewarm { touch, qd, cached } => {
                let mut s = String::from("prewarm");
                match (touch, qd) {
                    (false, 32) => s.push_str(" (default)"),
                    (true, 32) => s.push_str(" --mode touch"),
                    (true, q) => s.push_str(&format!(" --mode touch -Q {q}")),
                    (false, q) => s.push_str(&format!(" -Q {q}")),
                }
                s.push_str(if *cached {
                    " [metadata cached]"
                } else {
                    " [cold]"
                });
                s
            }
            Method::PrewarmManifest { touch: false } => {
                "prewarm run --manifest [planned ahead]".into()
            }
            Method::PrewarmManifest { touch: true } => {
                "prewarm run --manifest --mode touch [planned ahead]".into()
            }
            Method::PrewarmNoReadahead => "prewarm --metadata-readahead 0 [cold]".into(),
        }
    }

    pub fn is_prewarm(&self) -> bool {
        matches!(
            self,
            Method::Prewarm { .. } | Method::PrewarmManifest { .. } | Method::PrewarmNoReadahead
        )
    }

    /// A prewarm run in touch mode (one block per chunk).
    pub fn is_touch(&self) -> bool {
        matches!(
            self,
            Method::Prewarm { touch: true, .. } | Method::PrewarmManifest { touch: true }
        )
    }

    /// The plan exists before the run (metadata cached or a manifest): the
    /// run must hydrate exactly its plan.
    pub fn plans_ahead(&self) -> bool {
        matches!(
            self,
            Method::Prewarm { cached: true, .. } | Method::PrewarmManifest { .. }
        )
    }

    /// prewarm at default settings (full mode, queue depth 32).
    pub fn is_prewarm_default(&self) -> bool {
        matches!(
            self,
            Method::Prewarm {
                touch: false,
                qd: 32,
                ..
            }
        )
    }
}

/// The methods of a full run, in run order.
pub fn all_methods() -> Vec<Method> {
    let mut m = vec![
        Method::AppCold,
        Method::Cat,
        Method::Xargs { n: 1 },
        Method::Xargs { n: 8 },
        Method::Vmtouch,
        Method::Fio,
        Method::PhysicalOrder,
    ];
    for cached in [false, true] {
        m.push(Method::prewarm_q32(false, cached));
        if !cached {
            m.push(Method::PrewarmNoReadahead);
        }
        m.push(Method::prewarm_q32(true, cached));
        for qd in [1, 8, 128] {
            m.push(Method::Prewarm {
                touch: false,
                qd,
                cached,
            });
        }
    }
    m.push(Method::PrewarmManifest { touch: false });
    m.push(Method::PrewarmManifest { touch: true });
    m
}

/// The methods of CI mode.
pub fn ci_methods() -> Vec<Method> {
    vec![
        Method::AppCold,
        Method::prewarm_q32(false, false),
        Method::prewarm_q32(false, true),
        Method::prewarm_q32(true, true),
        Method::PrewarmManifest { touch: false },
    ]
}
/// Read every file in order, as an application would (1 MiB reads).
/// Returns (bytes, errors).
pub(super) fn read_files<'a>(files: impl IntoIterator<Item = &'a PathBuf>) -> (u64, u64) {
    let mut buf = vec![0u8; 1 << 20];
    let (mut bytes, mut errors) = (0u64, 0u64);
    for p in files {
        match File::open(p) {
            Ok(mut f) => loop {
                match f.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => bytes += n as u64,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        errors += 1;
                        break;
                    }
                }
            },
            Err(_) => errors += 1,
        }
    }
    (bytes, errors)
}

/// The physical-order reader (in the style of wish / warmer): FIEMAP every
/// file, sort by the physical offset of its first extent, read each file
/// sequentially in that order. Returns (bytes, errors).
fn physical_order_read(files: &[PathBuf]) -> (u64, u64) {
    let mut keyed: Vec<(u64, &PathBuf)> = Vec::with_capacity(files.len());
    let mut errors = 0;
    for p in files {
        match File::open(p) {
            Ok(f) => {
                let first = prewarm_core::internals::file_extents(&f)
                    .ok()
                    .and_then(|e| e.first().map(|x| x.extent.physical))
                    .unwrap_or(u64::MAX);
                keyed.push((first, p));
            }
            Err(_) => errors += 1,
        }
    }
    keyed.sort();
    let (bytes, e) = read_files(keyed.into_iter().map(|(_, p)| p));
    (bytes, errors + e)
}
/// How each method is invoked.
impl Harness {
    pub(super) fn prewarm_cmd(&self) -> Command {
        let mut c = Command::new(&self.opts.prewarm);
        c.arg("--quiet");
        c
    }

    /// `prewarm --dry-run --json` of the critical list.
    pub(super) fn dry_run(&self) -> Result<String> {
        let mut c = self.prewarm_cmd();
        c.args(["--dry-run", "--json", "--paths"]).arg(&self.list);
        let f = sys::run_timed(&mut c, self.opts.timeout, false)?;
        if !f.status.success() {
            bail!("{}", f.failure("prewarm --dry-run"));
        }
        Ok(f.stdout)
    }

    /// `prewarm --dry-run --json` of every file of the mounted volume: where
    /// file data lies, so that the chunks holding none are known.
    pub(super) fn dry_run_of_volume(&self) -> Result<String> {
        let mut c = self.prewarm_cmd();
        c.args(["--dry-run", "--json"]).arg(&self.vol);
        let f = sys::run_timed(&mut c, self.opts.timeout, false)?;
        if !f.status.success() {
            bail!("{}", f.failure("prewarm --dry-run of the volume"));
        }
        Ok(f.stdout)
    }

    /// The programs `m` runs (none for the in-process readers), to be read
    /// into the page cache after each cache drop: the drop is there to
    /// make the testbed's volume cold, and a program loaded from the
    /// host's own disk would add that disk's time, which no node has, to
    /// the method's.
    pub(super) fn programs(&self, m: Method) -> Vec<PathBuf> {
        let named = |names: &[&str]| names.iter().filter_map(|n| sys::which(n)).collect();
        match m {
            Method::AppCold | Method::PhysicalOrder => Vec::new(),
            Method::Cat => named(&["cat"]),
            Method::Xargs { .. } => named(&["xargs", "cat"]),
            Method::Vmtouch => named(&["vmtouch"]),
            Method::Fio => named(&["fio"]),
            Method::Prewarm { .. }
            | Method::PrewarmNoReadahead
            | Method::PrewarmManifest { .. } => {
                vec![self.opts.prewarm.clone()]
            }
        }
    }

    /// Where `prewarm plan` writes the manifest of the critical list.
    pub(super) fn manifest_path(&self) -> PathBuf {
        self.list.with_extension("manifest")
    }

    /// `prewarm plan` of the critical list (mapping reads the metadata, as
    /// the dry run does; the image build would have done it long before).
    pub(super) fn plan_manifest(&self) -> Result<()> {
        // Subcommand options follow the subcommand (`prewarm --quiet plan`
        // is a usage error).
        let mut c = Command::new(&self.opts.prewarm);
        c.args(["plan", "--quiet", "--paths"])
            .arg(&self.list)
            .arg("-o")
            .arg(self.manifest_path());
        let f = sys::run_timed(&mut c, self.opts.timeout, false)?;
        if !f.status.success() {
            bail!("{}", f.failure("prewarm plan"));
        }
        Ok(())
    }

    pub(super) fn fio_cmd(dev: &Path) -> Command {
        let mut c = Command::new("fio");
        c.arg(format!("--filename={}", dev.display())).args([
            "--rw=read",
            "--bs=1M",
            "--iodepth=32",
            "--ioengine=libaio",
            "--direct=1",
            "--name=volume-initialize",
            // Not part of AWS's command: open read-only (the loop device
            // is read-only) and report in JSON. Neither changes the I/O.
            "--readonly",
            "--output-format=json",
        ]);
        c
    }
    /// Run the method itself. Returns the bytes the tool reports reading
    /// (prewarm only).
    pub(super) fn execute(&self, m: Method, dev: &Path) -> Result<Option<u64>> {
        let timeout = self.opts.timeout;
        let external = |mut cmd: Command, what: &str| -> Result<sys::Finished> {
            let f = sys::run_timed(&mut cmd, timeout, !what.starts_with("prewarm"))?;
            if !f.status.success() {
                bail!("{}", f.failure(what));
            }
            Ok(f)
        };
        match m {
            Method::AppCold => {
                let (_, errors) = read_files(&self.files);
                if errors > 0 {
                    bail!("{errors} files could not be read");
                }
            }
            Method::PhysicalOrder => {
                let (_, errors) = physical_order_read(&self.files);
                if errors > 0 {
                    bail!("{errors} files could not be read");
                }
            }
            Method::Cat => {
                let mut c = Command::new("cat");
                c.arg("--").args(&self.files);
                external(c, "cat")?;
            }
            Method::Xargs { n } => {
                let mut c = Command::new("xargs");
                c.arg("-a")
                    .arg(&self.paths_file)
                    .args(["-d", "\n", "-P", "32", "-n"])
                    .arg(n.to_string())
                    .arg("cat");
                external(c, "xargs cat")?;
            }
            Method::Vmtouch => {
                let mut c = Command::new("vmtouch");
                c.args(["-t", "-q"]).args(&self.files);
                external(c, "vmtouch")?;
            }
            Method::Fio => {
                external(Self::fio_cmd(dev), "fio")?;
            }
            Method::Prewarm { .. } | Method::PrewarmNoReadahead => {
                let (touch, qd) = match m {
                    Method::Prewarm { touch, qd, .. } => (touch, qd),
                    _ => (false, 32),
                };
                let mut c = self.prewarm_cmd();
                c.args(["--json", "--queue-depth"]).arg(qd.to_string());
                if touch {
                    c.args(["--mode", "touch"]);
                }
                if m == Method::PrewarmNoReadahead {
                    c.args(["--metadata-readahead", "0"]);
                }
                c.arg("--paths").arg(&self.list);
                let f = external(c, "prewarm")?;
                let v: serde_json::Value =
                    serde_json::from_str(&f.stdout).context("parsing prewarm's JSON report")?;
                return Ok(v.get("bytes_read").and_then(serde_json::Value::as_u64));
            }
            Method::PrewarmManifest { touch } => {
                let mut c = Command::new(&self.opts.prewarm);
                c.args(["run", "--quiet", "--manifest"])
                    .arg(self.manifest_path());
                c.args(["--no-verify", "--json"]);
                if touch {
                    c.args(["--mode", "touch"]);
                }
                let f = external(c, "prewarm run")?;
                let v: serde_json::Value =
                    serde_json::from_str(&f.stdout).context("parsing prewarm's JSON report")?;
                return Ok(v.get("bytes_read").and_then(serde_json::Value::as_u64));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_keys_are_unique() {
        let mut keys: Vec<String> = all_methods().iter().map(Method::key).collect();
        let n = keys.len();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), n);
        assert!(all_methods().iter().any(Method::is_prewarm_default));
    }
}
