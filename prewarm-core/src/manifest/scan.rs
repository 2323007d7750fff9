//! What a replay needs of a manifest before its first read: per filesystem
//! its identity and the extents of its entries at their priorities, with
//! the entries counted per class; not the entries themselves.
//!
//! A boot manifest can hold tens of thousands of entries. Building each
//! (its path, its extents, each in its own allocation) before the first
//! read costs milliseconds on a fast CPU and far more in a slow initrd, and
//! a run that reads the recorded extents without checking the files
//! (the initrd, or `--no-verify`) never needs them. So a replay makes one
//! pass over the manifest ([`Manifest::visit`]: the decoder's own checks,
//! every one) keeping only this, starts reading, and decodes the entries
//! again only if it checks or lists them, while the plan is read.

use std::collections::BTreeMap;

use super::codec::{DeviceHeader, Manifest, ManifestError, ManifestFile, ManifestImage};
use crate::map::Extent;
use crate::plan::{PlanConfig, PrioritizedExtent};

/// A manifest as a replay first needs it (see the module doc).
#[derive(Debug)]
pub(crate) struct ManifestScan {
    /// The plan's knobs.
    pub plan: PlanConfig,
    /// Its filesystems, in the manifest's order (the index is the one
    /// [`Manifest::devices`] has).
    pub devices: Vec<ScannedDevice>,
    /// Its container images (a handful: kept whole).
    pub images: Vec<ManifestImage>,
}

/// One filesystem of a [`ManifestScan`].
#[derive(Debug)]
pub(crate) struct ScannedDevice {
    pub header: DeviceHeader,
    /// The device extents of every entry, files' and directories', each at
    /// its entry's priority.
    pub extents: Vec<PrioritizedExtent>,
    /// Its entries counted by priority class.
    pub classes: BTreeMap<u32, ClassCount>,
}

/// The entries of one priority class of one filesystem, counted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ClassCount {
    pub files: u64,
    pub directories: u64,
    /// Files with device extents.
    pub on_device: u64,
    /// The files' sizes, added up.
    pub file_bytes: u64,
    /// The bytes of the files' device extents.
    pub mapped_bytes: u64,
    /// The files' ranges read through the file.
    pub file_ranges: u64,
}

impl ClassCount {
    /// Count `f`. The sizes come from an untrusted manifest: the sums
    /// saturate.
    fn add(&mut self, f: &ManifestFile) {
        if f.directory {
            self.directories += 1;
            return;
        }
        self.files += 1;
        self.on_device += u64::from(!f.extents.is_empty());
        self.file_bytes = self.file_bytes.saturating_add(f.size);
        self.mapped_bytes = f
            .extents
            .iter()
            .fold(self.mapped_bytes, |sum, e| sum.saturating_add(e.length));
        self.file_ranges += f.file_ranges.len() as u64;
    }
}

impl ManifestScan {
    /// Scan the encoded manifest `bytes`: refused exactly when
    /// [`Manifest::decode`] refuses it.
    pub fn of(bytes: &[u8]) -> Result<ManifestScan, ManifestError> {
        type Gathered = (Vec<PrioritizedExtent>, BTreeMap<u32, ClassCount>);
        let (outline, scanned) = Manifest::visit(bytes, |(extents, classes): &mut Gathered, f| {
            extents.extend(at_priority(f.priority, &f.extents));
            classes.entry(f.priority).or_default().add(f);
        })?;
        let devices = outline
            .devices
            .into_iter()
            .zip(scanned)
            .map(|(header, (extents, classes))| ScannedDevice {
                header,
                extents,
                classes,
            })
            .collect();
        Ok(ManifestScan {
            plan: outline.plan,
            devices,
            images: outline.images,
        })
    }

    /// Its most urgent class.
    pub fn most_urgent(&self) -> Option<u32> {
        let classes = self.devices.iter().flat_map(|d| d.classes.keys());
        classes.copied().min()
    }
}

/// Device `extents` to read at `priority`.
pub(crate) fn at_priority(
    priority: u32,
    extents: &[Extent],
) -> impl Iterator<Item = PrioritizedExtent> + '_ {
    extents.iter().map(move |e| PrioritizedExtent {
        priority,
        offset: e.physical,
        len: e.length,
    })
}

#[cfg(test)]
mod tests {
    use super::super::codec::ManifestDevice;
    use super::*;

    fn file(path: &str, priority: u32, extents: &[(u64, u64)], directory: bool) -> ManifestFile {
        let mut logical = 0;
        let extents = extents
            .iter()
            .map(|&(physical, length)| {
                let e = Extent {
                    logical,
                    physical,
                    length,
                };
                logical += length;
                e
            })
            .collect();
        ManifestFile {
            path: path.into(),
            ino: 7,
            size: if directory { 4096 } else { logical },
            mtime_sec: 1,
            mtime_nsec: 2,
            priority,
            extents,
            file_ranges: Vec::new(),
            ranges: None,
            directory,
        }
    }

    #[test]
    fn a_scan_keeps_every_extent_at_its_priority_and_counts_what_decode_decodes() {
        let device = |uuid: u8, files: Vec<ManifestFile>| ManifestDevice {
            header: DeviceHeader {
                fs_type: "ext4".into(),
                uuid: [uuid; 16],
                size: 1 << 30,
                logical_block_size: 512,
                node_hint: "/dev/vda1".into(),
            },
            files,
        };
        let m = Manifest {
            created_unix: 1,
            tool: "test".into(),
            plan: PlanConfig::default(),
            devices: vec![
                device(
                    1,
                    vec![
                        file("usr/bin/a", 10, &[(1 << 20, 8192), (4 << 20, 4096)], false),
                        file("usr/bin", 10, &[(9 << 20, 4096)], true),
                        file("var/b", 50, &[(2 << 20, 65536)], false),
                        file("var/empty", 50, &[], false),
                    ],
                ),
                // A filesystem with no entries still has its place.
                device(2, Vec::new()),
                device(3, vec![file("c", 20, &[(8192, 4096)], false)]),
            ],
            images: Vec::new(),
        };
        let bytes = m.encode();
        let scan = ManifestScan::of(&bytes).unwrap();
        let decoded = Manifest::decode(&bytes).unwrap();
        assert_eq!(scan.devices.len(), 3);
        assert_eq!(scan.most_urgent(), Some(10));
        for (s, d) in scan.devices.iter().zip(&decoded.devices) {
            assert_eq!(s.header, d.header);
            let mut want: Vec<PrioritizedExtent> = d
                .files
                .iter()
                .flat_map(|f| at_priority(f.priority, &f.extents))
                .collect();
            let mut got = s.extents.clone();
            want.sort_by_key(|e| (e.priority, e.offset));
            got.sort_by_key(|e| (e.priority, e.offset));
            assert_eq!(got, want);
        }
        let first = &scan.devices[0].classes;
        assert_eq!(
            first[&10],
            ClassCount {
                files: 1,
                directories: 1,
                on_device: 1,
                file_bytes: 12288,
                mapped_bytes: 12288,
                file_ranges: 0,
            }
        );
        assert_eq!((first[&50].files, first[&50].on_device), (2, 1));
        assert!(scan.devices[1].classes.is_empty());
        // What decode refuses, a scan refuses the same way.
        let mut bad = bytes.clone();
        let n = bad.len();
        bad[n - 1] ^= 1;
        assert_eq!(
            ManifestScan::of(&bad).unwrap_err().to_string(),
            Manifest::decode(&bad).unwrap_err().to_string()
        );
    }
}
