//! The files a [`super::Collector`] has handed out already, by inode, in
//! as little memory as a million of them allow.
//!
//! A class reaches the planner in pieces, and a file met again in a later
//! piece (a hard link, a second name, an overlapping walk, a library of
//! another file) must still be recognised. The collector keeps the files of
//! the current piece whole; once handed out a file is only an inode number
//! in a compressed bitmap per filesystem (inode numbers are dense on ext4
//! and clustered on XFS, so a million cost well under a megabyte), unless
//! it was named with byte ranges. Those few keep the ranges they cover, so
//! that a later name asking for more adds only what is missing.

use std::collections::{BTreeMap, HashMap, HashSet};

use roaring::RoaringTreemap;

use crate::map::ByteRange;

/// `(st_dev, st_ino)`.
pub(super) type InodeKey = (u64, u64);

/// How a handed-out file was planned.
pub(super) enum Planned<'a> {
    /// Whole (`library`: as a library of another file).
    Whole { library: bool },
    /// Only these byte ranges (sorted, disjoint).
    Ranges(&'a mut Vec<ByteRange>),
}

/// Every file handed out, by inode.
#[derive(Default)]
pub(super) struct HandedOut {
    /// Inode numbers of the files planned whole, per filesystem.
    whole: BTreeMap<u64, RoaringTreemap>,
    /// Of those, the ones planned as a library of another file.
    libraries: HashSet<InodeKey>,
    /// Files planned for some byte ranges only, with those ranges.
    ranged: HashMap<InodeKey, Vec<ByteRange>>,
}

impl HandedOut {
    /// Remember a file handed out: whole (`ranges` none), or for `ranges`.
    pub fn insert(&mut self, key: InodeKey, ranges: Option<&[ByteRange]>, library: bool) {
        match ranges {
            Some(r) => {
                self.ranged.insert(key, r.to_vec());
            }
            None => {
                self.whole.entry(key.0).or_default().insert(key.1);
                if library {
                    self.libraries.insert(key);
                }
            }
        }
    }

    /// How the file `key` was planned, if it was handed out.
    pub fn get(&mut self, key: InodeKey) -> Option<Planned<'_>> {
        if let Some(r) = self.ranged.get_mut(&key) {
            return Some(Planned::Ranges(r));
        }
        self.whole
            .get(&key.0)
            .is_some_and(|inodes| inodes.contains(key.1))
            .then(|| Planned::Whole {
                library: self.libraries.contains(&key),
            })
    }

    /// The file `key`, handed out for some ranges, is now planned whole.
    pub fn widen(&mut self, key: InodeKey, library: bool) {
        self.ranged.remove(&key);
        self.insert(key, None, library);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_found_by_inode_with_how_they_were_planned() {
        let mut out = HandedOut::default();
        out.insert((1, 10), None, false);
        out.insert((1, 11), None, true);
        let r = [ByteRange { offset: 0, len: 5 }];
        out.insert((2, 10), Some(&r), false);
        assert!(matches!(
            out.get((1, 10)),
            Some(Planned::Whole { library: false })
        ));
        assert!(matches!(
            out.get((1, 11)),
            Some(Planned::Whole { library: true })
        ));
        assert!(matches!(out.get((2, 10)), Some(Planned::Ranges(v)) if v[..] == r));
        assert!(out.get((2, 11)).is_none());
        assert!(out.get((3, 10)).is_none());
        out.widen((2, 10), false);
        assert!(matches!(
            out.get((2, 10)),
            Some(Planned::Whole { library: false })
        ));
    }

    /// A million inodes handed out cost a bitmap, not a map entry each.
    #[test]
    fn a_million_dense_inodes_take_little_memory() {
        let mut out = HandedOut::default();
        for ino in 12..1_000_012u64 {
            out.insert((7, ino), None, false);
        }
        let bitmap = &out.whole[&7];
        assert_eq!(bitmap.len(), 1_000_000);
        assert!(bitmap.serialized_size() < 1 << 20);
    }
}
