//! The recorded boot of the VM boot test: the recording the guest wrote
//! (`boot.rec`, a list with byte ranges in class order, first access within
//! a class), the chunks of the manifest planned from it, and which chunks
//! of the image hold file data at all; then how much of what a boot
//! without prewarm fetched the recorded manifest covers ([`Coverage`]).
//!
//! `run.sh` leaves, in its work directory: `boot.rec`, the recording boot's
//! logs in `record/`, and the manifests `recorded.manifest` (planned from
//! the recording), `hand.manifest` (from the hand-written list) and
//! `files.manifest` (every regular file of the image).
//! [`write_chunk_files`] turns them and the hand-written list's manifest
//! into chunk sets (`recorded.chunks`, `files.chunks`, `hand.chunks`:
//! `N-M,...` text) with the planner
//! prewarm itself uses; [`RecordedRun::load`] reads them back with the
//! recording. The unit tests run on such a run kept in `vm/testdata/`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use prewarm_core::manifest::Manifest;
use prewarm_core::plan::PrioritizedExtent;

use super::boot::{Boot, Layout};
use crate::e2e::analysis::{chunk_ranges, planned_chunks};
use crate::lazy::ChunkSet;

/// One file of a recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedFile {
    pub path: PathBuf,
    pub priority: u32,
    /// Bytes in its ranges (the whole file's size is unknown here: 0 when it
    /// was named without ranges).
    pub bytes: u64,
}

/// A recording (`prewarm record`'s list), in its order: by class, first
/// access within a class.
#[derive(Debug, Clone, Default)]
pub struct Recording {
    pub files: Vec<RecordedFile>,
}

impl Recording {
    /// Parse a recording with prewarm's own list parser; any warning (a
    /// malformed line) is an error naming it.
    pub fn parse(text: &[u8]) -> Result<Recording, String> {
        let (entries, warnings) = prewarm_core::parse_list(text, Path::new("boot.rec"));
        if let Some(w) = warnings.first() {
            return Err(format!("{} warnings, the first: {w}", warnings.len()));
        }
        let files = entries
            .into_iter()
            .map(|e| RecordedFile {
                bytes: e.ranges.iter().flatten().map(|r| r.len).sum(),
                path: e.path,
                priority: e.priority,
            })
            .collect();
        Ok(Recording { files })
    }

    /// Bytes in every file's ranges.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }

    /// Index of `path` in the recording's order.
    pub fn position(&self, path: &str) -> Option<usize> {
        self.files.iter().position(|f| f.path == Path::new(path))
    }
}

/// The chunks (of `chunk_size` bytes, the testbed's) a replay of
/// `manifest` reads, planned as prewarm plans them (its own plan knobs),
/// over every device of the manifest: the VM's disk is its only one.
pub fn manifest_chunks(manifest: &Manifest, chunk_size: u64) -> BTreeSet<u64> {
    let mut all = BTreeSet::new();
    for dev in &manifest.devices {
        let extents: Vec<PrioritizedExtent> = dev
            .files
            .iter()
            .flat_map(|f| {
                f.extents.iter().map(|e| PrioritizedExtent {
                    priority: f.priority,
                    offset: e.physical,
                    len: e.length,
                })
            })
            .collect();
        all.extend(planned_chunks(&extents, dev.header.size, &manifest.plan, chunk_size).0);
    }
    all
}

/// `WORK/NAME.manifest` → `WORK/NAME.chunks` for the recorded manifest, the
/// hand-written list's and the one of every file; fails naming the file.
pub fn write_chunk_files(work: &Path, chunk_size: u64) -> Result<(), String> {
    for name in ["recorded", "hand", "files"] {
        let path = work.join(format!("{name}.manifest"));
        let loaded = prewarm_core::manifest::load(&path).map_err(|e| e.to_string())?;
        let chunks: Vec<u64> = manifest_chunks(&loaded.manifest, chunk_size)
            .into_iter()
            .collect();
        let out = work.join(format!("{name}.chunks"));
        std::fs::write(&out, chunk_ranges(&chunks) + "\n")
            .map_err(|e| format!("write {}: {e}", out.display()))?;
    }
    Ok(())
}

/// A chunk set written by [`write_chunk_files`].
pub fn parse_chunks(text: &str) -> Result<BTreeSet<u64>, String> {
    let set: ChunkSet = text.parse().map_err(|e| format!("{e}"))?;
    Ok(set.ranges().iter().flat_map(|&(s, e)| s..=e).collect())
}

/// What the recording step left behind.
#[derive(Debug, Clone)]
pub struct RecordedRun {
    pub recording: Recording,
    /// Bytes of `boot.rec`.
    pub list_bytes: u64,
    /// The chunks the recorded manifest reads.
    pub chunks: BTreeSet<u64>,
    /// The chunks the hand-written list's manifest reads.
    pub hand_chunks: BTreeSet<u64>,
    /// The chunks holding data of any regular file of the image.
    pub file_chunks: BTreeSet<u64>,
    /// The recording boot (`record/`), if its logs are there.
    pub boot: Option<Boot>,
}

impl RecordedRun {
    /// From a work (or testdata) directory; panics naming a missing or
    /// malformed file (test support, like [`Layout::load`]).
    pub fn load(work: &Path) -> RecordedRun {
        let read = |name: &str| {
            let p = work.join(name);
            std::fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
        };
        let list = read("boot.rec");
        let recording = Recording::parse(&list).unwrap_or_else(|e| panic!("boot.rec: {e}"));
        let chunks = |name: &str| {
            parse_chunks(&String::from_utf8_lossy(&read(name)))
                .unwrap_or_else(|e| panic!("{name}: {e}"))
        };
        let dir = work.join("record");
        RecordedRun {
            recording,
            list_bytes: list.len() as u64,
            chunks: chunks("recorded.chunks"),
            hand_chunks: chunks("hand.chunks"),
            file_chunks: chunks("files.chunks"),
            boot: dir.join("boot.env").is_file().then(|| Boot::load(&dir)),
        }
    }
}

/// How much of a boot's fetches a manifest covers: the chunks the boot
/// fetched before the stand-in finished reading (the hydration of the big
/// file's last chunk, testbed clock), less the stand-in's marker chunk
/// (read O_DIRECT on purpose, so no page cache and no list has it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coverage {
    /// The boot's chunks, as defined above.
    pub boot: BTreeSet<u64>,
    /// Those the manifest reads.
    pub covered: BTreeSet<u64>,
    /// Those holding no byte of any file: filesystem metadata only (inode
    /// tables, directories, bitmaps, the journal), which no list of files
    /// can name.
    pub metadata_only: BTreeSet<u64>,
}

impl Coverage {
    /// The boot's chunks that hold file data.
    pub fn file_data(&self) -> usize {
        self.boot.len() - self.metadata_only.len()
    }

    /// The covered chunks among them (a metadata-only chunk the manifest
    /// reads, because a file's extent shares it, is not counted).
    pub fn file_data_covered(&self) -> usize {
        self.covered.difference(&self.metadata_only).count()
    }

    /// Covered share of all the boot's chunks.
    pub fn share(&self) -> f64 {
        self.covered.len() as f64 / self.boot.len().max(1) as f64
    }

    /// Covered share of the boot's file-data chunks.
    pub fn file_data_share(&self) -> f64 {
        self.file_data_covered() as f64 / self.file_data().max(1) as f64
    }

    /// File-data chunks the manifest does not read.
    pub fn missed_file_data(&self) -> Vec<u64> {
        self.boot
            .difference(&self.covered)
            .filter(|c| !self.metadata_only.contains(c))
            .copied()
            .collect()
    }
}

/// The [`Coverage`] of `run`'s manifest over boot `b` (one without prewarm).
pub fn coverage(layout: &Layout, b: &Boot, run: &RecordedRun) -> Result<Coverage, String> {
    let (_, ends) = b.hydration(layout)?;
    let done = layout
        .big_chunks
        .iter()
        .map(|c| {
            ends.get(c)
                .copied()
                .ok_or(format!("chunk {c} of the big file never hydrated"))
        })
        .collect::<Result<Vec<u64>, String>>()?
        .into_iter()
        .max()
        .ok_or("no chunk in the big file")?;
    let boot: BTreeSet<u64> = ends
        .iter()
        .filter(|&(&c, &end)| end <= done && c != layout.marker_chunk)
        .map(|(&c, _)| c)
        .collect();
    let covered = boot.intersection(&run.chunks).copied().collect();
    let metadata_only = boot.difference(&run.file_chunks).copied().collect();
    Ok(Coverage {
        boot,
        covered,
        metadata_only,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prewarm_core::manifest::{DeviceHeader, ManifestDevice, ManifestFile};
    use prewarm_core::map::Extent;
    use prewarm_core::plan::PlanConfig;

    fn file(path: &str, priority: u32, extents: &[(u64, u64)]) -> ManifestFile {
        ManifestFile {
            path: path.into(),
            ino: 12,
            size: extents.iter().map(|e| e.1).sum(),
            mtime_sec: 0,
            mtime_nsec: 0,
            priority,
            extents: extents
                .iter()
                .map(|&(physical, length)| Extent {
                    logical: 0,
                    physical,
                    length,
                })
                .collect(),
            file_ranges: Vec::new(),
            ranges: None,
            directory: false,
        }
    }

    #[test]
    fn chunks_of_a_manifest() {
        const K: u64 = 1024;
        let manifest = Manifest {
            created_unix: 0,
            tool: "test".into(),
            plan: PlanConfig::default(),
            devices: vec![ManifestDevice {
                header: DeviceHeader {
                    fs_type: "ext4".into(),
                    uuid: [1; 16],
                    size: 1 << 30,
                    logical_block_size: 512,
                    node_hint: "/dev/loop0".into(),
                },
                files: vec![
                    // 4 KiB at the very start of chunk 3, and a run
                    // straddling chunks 5 and 6.
                    file(
                        "a",
                        10,
                        &[(3 * 512 * K, 4 * K), (6 * 512 * K - 8 * K, 16 * K)],
                    ),
                    file(
                        "b",
                        20,
                        &[(5 * 512 * K + 4 * K, 4 * K), (100 * 512 * K, 512 * K)],
                    ),
                ],
            }],
            images: Vec::new(),
        };
        let chunks = manifest_chunks(&manifest, 512 * K);
        assert_eq!(chunks, BTreeSet::from([3, 5, 6, 100]));
        // Counted in smaller units: the replay still reads the manifest's
        // whole 512 KiB chunks, 8 of 64 KiB each.
        let small = manifest_chunks(&manifest, 64 * K);
        assert_eq!(small.len(), 4 * 8);
        assert!((24..32).all(|c| small.contains(&c)));
    }

    #[test]
    fn chunk_files_read_back() {
        let set = parse_chunks("1-3,7,9-10\n").unwrap();
        assert_eq!(set, BTreeSet::from([1, 2, 3, 7, 9, 10]));
        let v: Vec<u64> = set.into_iter().collect();
        assert_eq!(parse_chunks(&chunk_ranges(&v)).unwrap().len(), 6);
        assert!(parse_chunks("3-1").is_err());
    }

    #[test]
    fn a_recording_in_first_access_order() {
        let text = b"# prewarm recording: 3 files\n\
            10 @0+4096,8192+4096 /usr/lib/systemd/systemd-udevd\n\
            12 @0+100 /etc/kubelet-standin.conf\n\
            12 /usr/bin/kubelet-standin\n";
        let rec = Recording::parse(text).unwrap();
        assert_eq!(rec.files.len(), 3);
        assert_eq!(rec.files[0].bytes, 8192);
        assert_eq!(rec.bytes(), 8292);
        assert_eq!(rec.position("/etc/kubelet-standin.conf"), Some(1));
        assert_eq!(rec.position("/nope"), None);
        let bad = Recording::parse(b"10 @x+1 /a\n").unwrap_err();
        assert!(bad.contains("warnings"), "{bad}");
    }
}
