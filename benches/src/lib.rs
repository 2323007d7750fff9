//! prewarm-benches: the lazy-volume testbed and the node-volume fixture used to
//! test and benchmark prewarm against snapshot-restored (lazily hydrated) volumes.
//!
//! - [`lazy`]: the volume model (chunks, fetch scheduler, caps, counters, error
//!   injection), independent of FUSE so it can be unit-tested.
//! - [`control`]: the JSON-over-unix-socket control protocol.
//! - [`fuse`]: the FUSE adapter exposing the model as a read-only `disk.img`.
//! - [`fixture`]: building a realistic node volume image and its critical list.
//! - [`containerd`]: OCI archives and a private containerd that imports them.
//! - [`images`]: a containerd image store on the lazy-volume testbed, and the
//!   chunks hydrating one image must (and must not) fetch.
//! - [`e2e`]: the end-to-end comparison behind `prewarm-e2e` (and the
//!   cleanup guards the loop-device benchmark shares).
//! - [`vm_boot`]: parsing and checking the boots of the VM boot test, and
//!   its section of RESULTS.md.

#![deny(unsafe_code)]

// The one `unsafe` of this crate: mapping the backing image.
#[allow(unsafe_code)]
mod backing;
pub mod containerd;
pub mod control;
pub mod e2e;
pub mod fixture;
pub mod fuse;
pub mod images;
pub mod lazy;
pub mod vm_boot;
