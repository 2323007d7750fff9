//! Boot manifests: everything mapped once at image build time, so that a
//! boot can replay the plan without walking or mapping a single file (the
//! initrd runs it before the root filesystem is even mounted).
//!
//! * [`codec`]: the versioned, checksummed binary format;
//! * `build`: a prepared plan → a manifest ([`plan_manifest`]);
//! * `replay`: a manifest → a prepared plan again ([`run_manifest`]);
//! * [`handover`]: what the initrd run read, kept under `/run` for the root
//!   phase so no chunk is read twice;
//! * [`boot`]: what the kernel command line says about a run;
//! * `text`: a manifest as text ([`Manifest::render_text`]).

pub mod boot;
mod build;
pub mod codec;
pub mod handover;
mod replay;
mod scan;
mod text;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use self::boot::{BootDecision, Phase};
pub use self::codec::{
    DeviceHeader, Manifest, ManifestDevice, ManifestDirectory, ManifestError, ManifestFile,
    ManifestImage, ManifestStats,
};
pub use self::handover::HandoverState;
use self::replay::ReplayOptions;
use self::scan::ManifestScan;
use crate::error::{Error, Warning};
use crate::input_file::read_untrusted;
use crate::report::Report;
use crate::run::{self, Config, FileRetention};
use crate::source::Sources;

/// Largest manifest file read (100,000 extents take under 1 MB).
pub const MAX_MANIFEST_BYTES: u64 = 256 << 20;

/// A manifest read from a file, with what identifies the file.
#[derive(Debug, Clone)]
pub struct LoadedManifest {
    /// Where it was read from.
    pub path: PathBuf,
    /// The manifest.
    pub manifest: Manifest,
    /// Its encoded size.
    pub bytes: usize,
    /// Its CRC-32 (the handover state's key).
    pub checksum: u32,
}

/// Read and decode the manifest at `path`: untrusted input, so a regular
/// file of at most [`MAX_MANIFEST_BYTES`] that, read as root, only its
/// owner can write (a FIFO is refused at once, never waited on).
pub fn load(path: &Path) -> Result<LoadedManifest, Error> {
    let bytes = read_manifest(path)?;
    let manifest = Manifest::decode(&bytes).map_err(|source| Error::ManifestDecode {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(LoadedManifest {
        path: path.to_path_buf(),
        manifest,
        bytes: bytes.len(),
        checksum: Manifest::checksum_of(&bytes).unwrap_or(0),
    })
}

/// The bytes of the manifest file at `path`, read as [`load`] reads them.
fn read_manifest(path: &Path) -> Result<Vec<u8>, Error> {
    read_untrusted(path, MAX_MANIFEST_BYTES).map_err(|source| Error::ManifestRead {
        path: path.to_path_buf(),
        source,
    })
}

/// A manifest planned from sources, not written yet.
#[derive(Debug)]
pub struct PlannedManifest {
    /// The manifest.
    pub manifest: Manifest,
    /// Its encoding.
    pub encoded: Vec<u8>,
    /// Everything wrong with the input, the mapping and the files left out.
    pub warnings: Vec<Warning>,
    /// The container images asked for (`--image`), as resolved: the
    /// manifest holds their files and records those resolved
    /// ([`Manifest::images`]); this adds what could not be resolved.
    pub images: Vec<crate::report::ImageReport>,
}

impl PlannedManifest {
    /// Its CRC-32.
    pub fn checksum(&self) -> u32 {
        Manifest::checksum_of(&self.encoded).unwrap_or(0)
    }

    /// Write it to `path`, atomically and without following a planted
    /// symlink; a manifest with no file is refused (nothing is written, so a
    /// failed plan never replaces a good manifest).
    pub fn write(&self, path: &Path) -> Result<(), Error> {
        if self.manifest.stats().files == 0 {
            return Err(Error::NothingToRead(format!(
                "no file could be planned; {} left as it was",
                path.display()
            )));
        }
        crate::atomic_write::write_atomically(path, &self.encoded).map_err(|source| Error::Write {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// Map `sources` (on the mounted image, under `cfg.collect.root` when it is
/// mounted elsewhere) and build the manifest a boot replays. `tool` names
/// the planner in the manifest (`prewarm 0.1.0`).
pub fn plan_manifest(
    sources: &Sources,
    cfg: &Config,
    tool: &str,
) -> Result<PlannedManifest, Error> {
    if !sources.devices.is_empty() {
        return Err(Error::Config {
            field: "devices",
            reason:
                "a whole-device sweep cannot be planned into a manifest; name files or directories"
                    .into(),
        });
    }
    let prepared = run::prepare(sources, cfg)?;
    let (manifest, mut warnings) =
        build::build_manifest(&prepared, cfg.plan, tool, cfg.collect.root.as_deref());
    warnings.splice(0..0, prepared.warnings);
    // What a boot will decode is checked now: a manifest the decoder would
    // refuse is never written.
    let encoded = manifest.encode();
    Manifest::decode(&encoded).map_err(|source| Error::ManifestDecode {
        path: PathBuf::from("(the manifest just planned)"),
        source,
    })?;
    Ok(PlannedManifest {
        encoded,
        manifest,
        warnings,
        images: prepared.images,
    })
}

/// How to replay a manifest at boot.
#[derive(Debug, Clone)]
pub struct ManifestRun {
    /// The manifest (the kernel command line may name another).
    pub path: PathBuf,
    /// Which run of the boot this is.
    pub phase: Phase,
    /// The kernel command line to honour (`None`: ignore it).
    pub kernel_cmdline: Option<String>,
    /// Handover state: chunks recorded there are skipped, chunks read are
    /// added.
    pub state: Option<PathBuf>,
    /// Only classes of at most this priority.
    pub max_priority: Option<u32>,
    /// How long to wait for each filesystem's device to appear.
    pub wait_device: Duration,
    /// Check files against the manifest where their filesystem is mounted.
    pub verify: bool,
    /// Accept a device larger than the one planned on.
    pub allow_grown: bool,
}

/// What a manifest run came to.
#[derive(Debug)]
pub enum ManifestOutcome {
    /// The kernel command line disabled it (the word that did).
    Disabled(&'static str),
    /// It ran (or, with `cfg.dry_run`, planned).
    Ran(Box<Report>),
}

/// Replay a manifest: honour the kernel command line, load the manifest and
/// the handover state, find each filesystem by UUID, plan (skipping what the
/// state says was read), read, and save the state. `cfg.plan` is replaced
/// by the manifest's own; a ready policy without a priority gets the
/// manifest's most urgent class.
pub fn run_manifest(req: &ManifestRun, mut cfg: Config) -> Result<ManifestOutcome, Error> {
    let mut path = req.path.clone();
    if let Some(cmdline) = &req.kernel_cmdline {
        match boot::decide(cmdline, req.phase) {
            BootDecision::Disabled(switch) => {
                tracing::info!("disabled by `{switch}` on the kernel command line");
                return Ok(ManifestOutcome::Disabled(switch));
            }
            BootDecision::Run(Some(p)) => {
                tracing::info!(
                    "manifest {} selected by the kernel command line",
                    p.display()
                );
                path = p;
            }
            BootDecision::Run(None) => {}
        }
    }
    // The manifest is scanned, not decoded: its entries are built again
    // only if they are checked or listed, once the first reads are out.
    let bytes = read_manifest(&path)?;
    let scan = ManifestScan::of(&bytes).map_err(|source| Error::ManifestDecode {
        path: path.clone(),
        source,
    })?;
    let checksum = Manifest::checksum_of(&bytes).unwrap_or(0);
    cfg.plan = scan.plan;
    cfg.validate()?;
    if let Some(ready) = &mut cfg.ready {
        ready.priority = ready.priority.or(scan.most_urgent()).or(Some(0));
    }
    let mut handover = req
        .state
        .as_ref()
        .map(|p| HandoverState::load_or_new(p, checksum));
    // The initrd's run read the urgent classes of this very manifest: the
    // services need not wait for this run to find the devices and check
    // the files (it still does both, and re-reads what changed, after).
    if let (Some(ready), Some(state)) = (&mut cfg.ready, &handover) {
        if let (Some(priority), Some(through)) = (ready.priority, state.hydrated_through) {
            if priority <= through && !cfg.dry_run {
                ready.send_now(crate::run::ReadyReason::Handover { priority });
            }
        }
    }
    let opts = ReplayOptions {
        manifest_path: path.clone(),
        manifest_crc: checksum,
        wait_device: req.wait_device,
        max_priority: req.max_priority,
        verify: req.verify,
        allow_grown: req.allow_grown,
        stop: cfg.stop.clone(),
        retention: if cfg.dry_run || cfg.cache {
            FileRetention::All
        } else {
            FileRetention::FileReadsOnly
        },
    };
    let (prepared, deferred) = replay::prepare_manifest(&scan, &opts, handover.as_ref())?;
    drop(scan);
    let queue_depth = cfg.queue_depth;
    let report = prepared.execute_with(&cfg, |planner, sink| {
        replay::complete(planner, sink, &bytes, deferred, queue_depth)
    })?;
    if let (Some(state), Some(state_path)) = (handover.as_mut(), &req.state) {
        if !cfg.dry_run {
            state.record_report(&report);
            state.save(state_path).map_err(|source| Error::Write {
                path: state_path.clone(),
                source,
            })?;
        }
    }
    Ok(ManifestOutcome::Ran(Box::new(report)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{DeviceReport, ReadStats};

    #[test]
    fn load_tells_a_refusal_from_an_unreadable_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = load(&dir.path().join("none")).unwrap_err();
        assert!(matches!(missing, Error::ManifestRead { .. }), "{missing}");
        assert!(!missing.is_manifest_refusal());
        let junk = dir.path().join("junk");
        std::fs::write(&junk, b"ELF\x7fnot a manifest at all").unwrap();
        let err = load(&junk).unwrap_err();
        assert!(err.is_manifest_refusal(), "{err}");
        assert!(err.to_string().contains("not a prewarm manifest"), "{err}");
        assert!(err.to_string().contains("junk"), "{err}");
    }

    #[test]
    fn a_plan_with_no_file_never_replaces_a_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("boot.manifest");
        std::fs::write(&out, b"the good one").unwrap();
        let mut sources = Sources::default();
        sources.add_path(dir.path().join("absent"), 10);
        let planned = plan_manifest(&sources, &Config::default(), "test").unwrap();
        assert_eq!(planned.manifest.stats().files, 0);
        assert!(planned
            .warnings
            .iter()
            .any(|w| w.kind == crate::WarningKind::Missing));
        assert!(matches!(planned.write(&out), Err(Error::NothingToRead(_))));
        assert_eq!(std::fs::read(&out).unwrap(), b"the good one");
    }

    #[test]
    fn the_kernel_command_line_can_disable_a_run_before_anything_is_read() {
        let req = ManifestRun {
            path: "/nonexistent/boot.manifest".into(),
            phase: Phase::Initrd,
            kernel_cmdline: Some("ro rd.prewarm=0".into()),
            state: None,
            max_priority: None,
            wait_device: Duration::ZERO,
            verify: false,
            allow_grown: false,
        };
        assert!(matches!(
            run_manifest(&req, Config::default()),
            Ok(ManifestOutcome::Disabled("rd.prewarm=0"))
        ));
        // Another manifest named on the command line is the one read.
        let req = ManifestRun {
            kernel_cmdline: Some("prewarm.manifest=/nonexistent/other".into()),
            ..req
        };
        match run_manifest(&req, Config::default()) {
            Err(Error::ManifestRead { path, .. }) => {
                assert_eq!(path, PathBuf::from("/nonexistent/other"))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_manifest_for_an_absent_filesystem_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m");
        let m = Manifest {
            created_unix: 0,
            tool: "test".into(),
            plan: crate::PlanConfig::default(),
            devices: vec![ManifestDevice {
                header: DeviceHeader {
                    fs_type: "ext4".into(),
                    // No filesystem has this UUID.
                    uuid: *b"prewarm-no-such!",
                    size: 1 << 30,
                    logical_block_size: 512,
                    node_hint: "/dev/none".into(),
                },
                files: Vec::new(),
            }],
            images: Vec::new(),
        };
        std::fs::write(&path, m.encode()).unwrap();
        let req = ManifestRun {
            path,
            phase: Phase::Root,
            kernel_cmdline: None,
            state: None,
            max_priority: None,
            wait_device: Duration::ZERO,
            verify: true,
            allow_grown: false,
        };
        let err = run_manifest(&req, Config::default()).unwrap_err();
        assert!(matches!(err, Error::ManifestRefused { .. }), "{err}");
        assert!(err.to_string().contains("no block device holds"), "{err}");
    }

    #[test]
    fn handover_records_the_chunks_a_report_read_by_uuid() {
        let mut report = Report::new();
        report.plan_config.chunk_size = 1000;
        report.devices.push(DeviceReport {
            node: "/dev/loop0".into(),
            id: crate::map::DeviceId { major: 7, minor: 0 },
            uuid: Some("u".into()),
            fs_type: None,
            size: 2500,
            logical_block_size: 512,
            direct: true,
            read_through: None,
            files: 1,
            swept: false,
            plan: Default::default(),
            read: ReadStats::default(),
            chunks_read: vec![(0, 1), (2, 3)],
            error: None,
        });
        let mut state = HandoverState::new(7);
        state.record_report(&report);
        // The last chunk is short: the range stops at the device's end.
        assert_eq!(state.done("u"), [(0, 1000), (2000, 2500)]);
    }
}
