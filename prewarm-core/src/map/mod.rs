//! Where the bytes live: the map stage.
//!
//! From a file to the byte ranges of a block device that hold it, and from
//! a filesystem UUID to the device that holds it:
//!
//! * `extent`: FIEMAP's answer sorted into device [`Extent`]s, ranges that
//!   must be read through the file, and unwritten bytes that need no read;
//! * `fiemap` (private): the ioctls, the only `unsafe` of this stage;
//! * `device`: from `st_dev` to the `/dev` node FIEMAP's offsets refer to,
//!   opened read-only;
//! * `loop_backing`: a buffered loop device's backing file, read in its
//!   place (the driver passes its requests on one at a time);
//! * `fsid`: the filesystem type and UUID in a superblock, and finding the
//!   device that holds a UUID (how a manifest names its device);
//! * `pool`: the thread pool that makes metadata calls as wide as the
//!   reads, since on a lazy volume a cold `stat` or FIEMAP waits for fetches
//!   too;
//! * `ext4` and `readahead`: a filesystem's metadata (inode tables,
//!   directory blocks) found from its superblock and read many at a time
//!   before a walk needs it, instead of one dependent fetch after another;
//! * `inode_tables`: a walked ext4 file mapped from its inode in those
//!   tables, without opening it (half of a cold walk's CPU was opening).
//!
//! Everything here only reads. Nothing in this stage decides which data to
//! read or in which order (that is [`crate::plan`]); the read-ahead reads
//! only the metadata this stage's own walk and lookups are about to fetch.

pub(crate) mod device;
pub(crate) mod ext4;
pub(crate) mod extent;
// `unsafe` is denied everywhere but here, `engine::uring`,
// `record::residency` and `run::cpu_priority`.
#[allow(unsafe_code)]
mod fiemap;
pub(crate) mod fsid;
pub(crate) mod inode_tables;
pub(crate) mod loop_backing;
pub(crate) mod pool;
pub(crate) mod readahead;
#[cfg(test)]
mod test_images;
pub(crate) mod xfs;

pub use device::{DeviceError, DeviceId};
pub use extent::{ByteRange, Extent, ExtentMap, FileReadReason};
pub use readahead::{MetadataReadaheadReport, ReadaheadState};

#[cfg(feature = "internals")]
pub use fiemap::{file_extents, FlaggedExtent};
