//! prewarm-core: hydrate the blocks a node needs first on a volume restored
//! from a snapshot.
//!
//! A volume created from a snapshot (an EBS root volume from an AMI) is
//! loaded lazily: the first read of each 512 KiB block is fetched from object
//! storage, milliseconds each, a few at a time. This crate reads exactly the
//! blocks that matter, first, with many reads in flight:
//!
//! ```text
//! source ──► extent ──► plan ──► engine ──► report
//! paths,     FIEMAP,    dedupe,   io_uring    summary,
//! lists,     device     align,    (pread      JSON
//! dirs       resolution order     fallback)
//! ```
//!
//! [`pipeline`] glues the stages together; each stage is usable on its own.
//! [`manifest`] stores a mapped plan at image build time so that a boot can
//! replay it without mapping anything, and [`handover`] lets the root-phase
//! run skip what the initrd run already read.
//! Reading the raw device *hydrates* the volume but does not put the files in
//! the page cache; [`cache`] does that separate job when asked.

#![deny(unsafe_code)]

pub mod blocking;
pub mod cache;
pub mod device;
pub mod engine;
pub mod error;
pub mod extent;
// `unsafe` is denied everywhere but here and in `engine::uring`.
#[allow(unsafe_code)]
pub mod fiemap;
pub mod fsid;
pub mod handover;
pub mod manifest;
pub mod pipeline;
pub mod plan;
pub mod replay;
pub mod report;
pub mod source;

pub use error::{Error, Origin, Warning, WarningKind};
