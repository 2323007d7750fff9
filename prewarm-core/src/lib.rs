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
//! Reading the raw device *hydrates* the volume but does not put the files in
//! the page cache; [`cache`] does that separate job when asked.

pub mod cache;
pub mod device;
pub mod engine;
pub mod error;
pub mod extent;
pub mod fiemap;
pub mod pipeline;
pub mod plan;
pub mod report;
pub mod source;

pub use error::{Error, Origin, Warning, WarningKind};
