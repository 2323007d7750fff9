//! prewarm-core: hydrate the blocks a node needs first on a volume restored
//! from a snapshot.
//!
//! A volume created from a snapshot (an EBS root volume from an AMI) is
//! loaded lazily: the first read of each 512 KiB block is fetched from object
//! storage, milliseconds each, a few at a time. This crate reads exactly the
//! blocks that matter, first, with many reads in flight. Data flows one way,
//! and each stage is a module:
//!
//! ```text
//! source ──► map ──────► plan ──────► engine ──────► report
//! lists,     FIEMAP,     dedupe,      io_uring,      what happened,
//! globs,     devices,    chunk-align, pread;         as data (text
//! walks      fs UUIDs    prioritise   device ranges  and JSON views)
//! ```
//!
//! `run` drives them as one road; `manifest` stores a plan at image build
//! time and replays it at boot; `record` watches a boot's reads and writes
//! them as a list with byte ranges.
//!
//! # Using it
//!
//! Hydrate what a list names, most urgent class first:
//!
//! ```no_run
//! use prewarm_core::{hydrate, Config, Sources};
//!
//! let mut sources = Sources::default();
//! sources.add_list("/etc/prewarm/boot.list".as_ref());
//! sources.add_path("/usr/bin/kubelet", 10);
//! let report = hydrate(&sources, &Config::default())?;
//! for w in &report.warnings {
//!     eprintln!("warning: {w}");
//! }
//! print!("{}", report.summary());
//! # Ok::<(), prewarm_core::Error>(())
//! ```
//!
//! At image build time, map once and write a manifest; at boot, replay it:
//!
//! ```no_run
//! use prewarm_core::manifest::{self, ManifestOutcome, ManifestRun, Phase};
//! use prewarm_core::{Config, Sources};
//!
//! let mut sources = Sources::default();
//! sources.add_list("/etc/prewarm/boot.list".as_ref());
//! let planned = manifest::plan_manifest(&sources, &Config::default(), "my-builder")?;
//! planned.write("/etc/prewarm/boot.manifest".as_ref())?;
//!
//! let run = ManifestRun {
//!     path: "/etc/prewarm/boot.manifest".into(),
//!     phase: Phase::Root,
//!     kernel_cmdline: Some(manifest::boot::kernel_cmdline()),
//!     state: Some("/run/prewarm/state.json".into()),
//!     max_priority: None,
//!     wait_device: std::time::Duration::from_secs(5),
//!     verify: true,
//!     allow_grown: true,
//! };
//! if let ManifestOutcome::Ran(report) = manifest::run_manifest(&run, Config::default())? {
//!     println!("{} bytes read", report.bytes_read);
//! }
//! # Ok::<(), prewarm_core::Error>(())
//! ```
//!
//! # Three facts the code keeps true
//!
//! 1. Reading the raw device *hydrates* the volume but fills the device's
//!    page cache (or none, with O_DIRECT), not the files': hydrating and
//!    cache-warming ([`Config::cache`]) are different jobs.
//! 2. It never makes a boot worse: it opens nothing writable on a device,
//!    stops on [`StopSignal`], and degrades instead of failing (pread when
//!    io_uring is refused, reads through files when FIEMAP or the device is
//!    unusable, buffered reads when O_DIRECT is refused).
//! 3. Reading earlier is not enough: the win is many reads in flight,
//!    ordered by need; metadata calls are made as wide as the reads.

#![deny(unsafe_code)]
#![warn(missing_docs)]

mod atomic_write;
mod engine;
mod error;
mod heap;
mod input_file;
pub mod manifest;
pub mod map;
pub mod metrics;
pub mod plan;
pub mod record;
pub mod report;
mod run;
mod size;
mod source;

pub use engine::{
    Backend, BackendChoice, Progress, ProgressSnapshot, RateLimit, StopReason, StopSignal,
    DEFAULT_QUEUE_DEPTH, STOP_GRACE,
};
pub use error::{Error, InputError, Origin, Warning, WarningKind};
pub use heap::limit_malloc_arenas;
pub use plan::{PlanConfig, ReadMode, DEFAULT_CHUNK_SIZE, DEFAULT_MAX_IO};
pub use report::{Outcome, Report};
pub use run::{hydrate, Config, ReadyPolicy, ReadyReason, DEFAULT_METADATA_READAHEAD};
pub use size::{format_bytes, parse_size};
pub use source::containerd::{ContainerdStore, ImageReport, ImageRequest, ImageSource};
pub use source::{
    format_line, parse_list, read_list, read_list_packed, CollectOptions, DeviceSweep, EntryIndex,
    ListEntries, ParsedList, SourceEntry, Sources, DEFAULT_PRIORITY,
};

/// Engine and mapping internals, for the benchmarks only (feature
/// `internals`): not part of the supported API.
#[cfg(feature = "internals")]
#[doc(hidden)]
pub mod internals {
    pub use crate::engine::{run, BackendChoice, EngineConfig, ReadOp, ReadTarget};
    pub use crate::map::device::open_read_only;
    pub use crate::map::extent::{map_file, open_file};
    pub use crate::map::{file_extents, FlaggedExtent};
}
