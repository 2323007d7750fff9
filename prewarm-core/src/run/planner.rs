//! The planner: turns sources into a [`Prepared`] plan one priority class
//! at a time (collect the class's files, map them, open their devices the
//! first time each is met, extend each device's plan), so that a class can
//! be read while the next one is mapped.

use std::collections::BTreeMap;
use std::ops::Range;

use super::file_reads::plan_file_ios;
use super::{Config, DevicePlan, MappedFile, Prepared};
use crate::error::{Error, Warning, WarningKind};
use crate::map::device::{self, DeviceError};
use crate::map::extent::{map_file, open_file};
use crate::map::pool::MetadataPool;
use crate::map::readahead::MetadataReadahead;
use crate::map::{DeviceId, FileReadReason};
use crate::plan::{PrioritizedExtent, ReadPlan};
use crate::report::Fallback;
use crate::source::containerd::{self, Resolved};
use crate::source::{Collector, DeviceSweep, SourceEntry, Sources, TargetFile};

/// What one class added to the plan: per device the classes added to its
/// plan, the devices opened for it, and the file-level reads (a range of
/// `Prepared::file_ios`).
pub(crate) struct Added {
    pub classes: Vec<(DeviceId, Range<usize>)>,
    pub new_devices: Vec<DeviceId>,
    pub file_ios: Range<usize>,
    /// Which part of which classes this is (none: what was planned before
    /// the classes, e.g. a manifest's plan, or an addition to classes
    /// already complete).
    pub pieces: Vec<ClassPiece>,
}

/// A class reaches the engines in pieces; it is complete (and may be
/// announced hydrated) only once its last piece is in and read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClassPiece {
    pub priority: u32,
    pub first: bool,
    pub last: bool,
}

/// Entries the metadata read-ahead's scout looks at, at most: enough to
/// meet the directories of a list, few enough that a list of a million
/// files costs it nothing noticeable.
const SCOUT_ENTRIES: usize = 1024;

/// Entries of a class collected at once (each batch's `lstat`s run in
/// parallel; the batch bounds what is unpacked and held meanwhile).
const COLLECT_BATCH: usize = 4096;

/// Files found before a piece of a class goes to the engines: enough to
/// keep a queue of `queue_depth` reads busy while the next piece is mapped,
/// few enough that the first reads start after a handful of directories.
fn piece_size(queue_depth: u32) -> usize {
    (queue_depth as usize * 4).clamp(64, 1024)
}

/// The first piece of a class: small, so that its first data reads start
/// after the first directories of a walk (or the first files of a list)
/// rather than after a full piece's; each next piece doubles, up to
/// [`piece_size`].
fn first_piece_size(queue_depth: u32) -> usize {
    (queue_depth as usize / 4).clamp(4, piece_size(queue_depth))
}

/// `files`, collected in one step, cut into the pieces that go to the
/// engines one after another: `*next` files first, each next piece twice
/// as many (`*next` follows), and once that reaches `full`, the rest in
/// one, mapped in one call as wide as the pool. Always at least one piece
/// (empty if `files` is).
fn cut_pieces<T>(mut files: Vec<T>, next: &mut usize, full: usize) -> Vec<Vec<T>> {
    let mut pieces = Vec::new();
    loop {
        let cut = if *next < full { *next } else { files.len() };
        let rest = files.split_off(cut.min(files.len()));
        *next = (*next * 2).min(full);
        pieces.push(files);
        if rest.is_empty() {
            return pieces;
        }
        files = rest;
    }
}

/// Builds a [`Prepared`] class by class.
pub(crate) struct Planner<'c> {
    pub cfg: &'c Config,
    pub prepared: Prepared,
    /// Devices met so far: usable (in `prepared.devices`), or why their files
    /// are read through the files.
    devices: BTreeMap<DeviceId, Result<(), FileReadReason>>,
    /// Devices opened but not yet handed to the engines.
    unannounced: Vec<DeviceId>,
    /// Whole-device sweeps, by priority, added when their class comes up.
    sweeps: BTreeMap<u32, Vec<DeviceId>>,
    /// Reads each walked filesystem's metadata ahead (a reading run only).
    pub readahead: Option<MetadataReadahead>,
}

impl<'c> Planner<'c> {
    /// A planner that extends `prepared` (empty, or a manifest's plan).
    pub fn new(prepared: Prepared, cfg: &'c Config) -> Self {
        let devices = prepared.devices.iter().map(|d| (d.id(), Ok(()))).collect();
        Planner {
            cfg,
            unannounced: prepared.devices.iter().map(DevicePlan::id).collect(),
            prepared,
            devices,
            sweeps: BTreeMap::new(),
            readahead: None,
        }
    }

    /// Open the devices named for whole-device sweeps now, so that a bad one
    /// is an error before anything is read; their reads join the plan when
    /// their priority class comes up.
    pub fn open_sweeps(&mut self, sweeps: &[DeviceSweep]) -> Result<(), Error> {
        for sweep in sweeps {
            let dev = device::open_node(&sweep.node)?;
            self.cfg.plan.validate(u64::from(dev.logical_block_size))?;
            let id = dev.id;
            if !self.devices.contains_key(&id) {
                self.add_device(dev);
            }
            self.device_mut(id).swept = true;
            self.sweeps.entry(sweep.priority).or_default().push(id);
        }
        Ok(())
    }

    /// The one road: collect, map and plan the entries of `sources` one
    /// priority class at a time, most urgent first, handing each class to
    /// `sink` as soon as it is planned. A stop ends it between (and, for
    /// mapping, inside) classes; what was never reached is counted.
    pub fn plan_classes(
        &mut self,
        sources: &Sources,
        pool: &MetadataPool,
        sink: &mut dyn FnMut(&Planner<'_>, &Added),
    ) {
        // Images become directories and files first (reading containerd's
        // databases), so that they are collected, rebased under an image
        // root and stopped like any entry.
        let images = if self.cfg.stop.check().is_some() {
            self.prepared.entries_not_reached += sources.images.len() as u64;
            Resolved::default()
        } else {
            containerd::resolve(
                &sources.images,
                &sources.containerd,
                self.cfg.collect.root.as_deref(),
            )
        };
        self.prepared.warnings.extend(images.warnings);
        self.prepared.images.extend(images.images);
        let extra = images.entries;
        let mut classes = sources.classes_with(&extra);
        // The read-ahead's scout looks at the first entries of every class
        // (images' directories included) ahead of the collector, so that a
        // walk in a later class has its filesystem's metadata read while
        // the first classes are mapped.
        if let Some(readahead) = &self.readahead {
            if self.cfg.collect.root.is_none() {
                readahead.scout(sources.first_paths(&classes, &extra, SCOUT_ENTRIES));
            }
        }
        for &priority in self.sweeps.keys() {
            classes.entry(priority).or_default();
        }
        self.prepared
            .warnings_omitted
            .extend(sources.warnings_omitted.iter().copied());
        let mut collector = Collector::new(&self.cfg.collect, self.cfg.stop.clone(), pool);
        collector.set_readahead(self.readahead.clone());
        for (priority, entries) in classes {
            if let Some(reason) = self.prepared.stopped.or_else(|| self.cfg.stop.check()) {
                if self.prepared.stopped.is_none() {
                    tracing::warn!(?reason, "stopped before mapping priority class {priority}");
                }
                self.prepared.stopped = Some(reason);
                self.prepared.entries_not_reached += entries.len() as u64;
                continue;
            }
            // The class goes to the engines in pieces, each as soon as its
            // files are mapped: the first reads start while the rest of the
            // class is still being found (directories walked, files
            // mapped), so metadata and data fetches share the volume's
            // slots. Entries are unpacked a batch at a time: a class of a
            // million list lines is never a million `SourceEntry`s at once.
            let full_piece = piece_size(self.cfg.queue_depth);
            let mut piece_files = first_piece_size(self.cfg.queue_depth);
            let mut sweeps = self.sweeps.get(&priority).cloned().unwrap_or_default();
            let mut first = true;
            let mut batches = entries.chunks(COLLECT_BATCH).peekable();
            while let Some(batch) = batches.next() {
                let batch: Vec<SourceEntry> = batch
                    .iter()
                    .filter_map(|&at| sources.entry_with(at, &extra))
                    .collect();
                collector.push_entries(&batch);
                loop {
                    let more = collector.walk_some(piece_files);
                    let last = !more && batches.peek().is_none();
                    let files = collector.take_new();
                    if files.is_empty() && !first && !last {
                        break;
                    }
                    self.prepared.warnings.extend(collector.take_warnings());
                    if let Some(reason) = self.cfg.stop.check() {
                        // Stopped inside the class: what it collected is
                        // still mapped and read, but only until the stop
                        // bites there too.
                        self.prepared.stopped.get_or_insert(reason);
                    }
                    // What one step collected goes on in pieces too: a
                    // list's batch is collected at once, and its first
                    // reads start once a handful of its files are mapped.
                    let mut pieces = cut_pieces(files, &mut piece_files, full_piece)
                        .into_iter()
                        .peekable();
                    while let Some(files) = pieces.next() {
                        let piece = ClassPiece {
                            priority,
                            first: std::mem::take(&mut first),
                            last: last && pieces.peek().is_none(),
                        };
                        self.push_piece(pool, sink, files, &std::mem::take(&mut sweeps), piece);
                    }
                    if !more {
                        break;
                    }
                }
            }
            if first {
                // A class with no entries left to unpack (sweeps only).
                let piece = ClassPiece {
                    priority,
                    first: true,
                    last: true,
                };
                self.push_piece(pool, sink, Vec::new(), &sweeps, piece);
            }
        }
        self.prepared.skipped_non_regular += collector.skipped_non_regular();
        self.prepared
            .warnings_omitted
            .extend(collector.warnings_omitted());
        self.prepared.entries_not_reached += collector.not_reached();
    }

    /// Map and plan `files` (and `sweeps`) as `piece` of its class, on
    /// `pool`, and hand the result to `sink`.
    fn push_piece(
        &mut self,
        pool: &MetadataPool,
        sink: &mut dyn FnMut(&Planner<'_>, &Added),
        files: Vec<TargetFile>,
        sweeps: &[DeviceId],
        piece: ClassPiece,
    ) {
        let mut added = self.add_class(pool, files, sweeps, piece.priority);
        added.pieces = vec![piece];
        sink(self, &added);
    }

    /// Map `files` (on `pool`) and plan them, with the sweeps of `sweeps`
    /// at `priority`. Every class of the batch must be less urgent than
    /// those of earlier batches.
    fn add_class(
        &mut self,
        pool: &MetadataPool,
        files: Vec<TargetFile>,
        sweeps: &[DeviceId],
        priority: u32,
    ) -> Added {
        // A file that cannot be opened is named and dropped; after a stop
        // the rest is not mapped (each FIEMAP may wait for cold metadata).
        let stop = self.cfg.stop.clone();
        let mapped: Vec<Option<Result<MappedFile, Warning>>> = pool.map(files, move |mut file| {
            if stop.check().is_some() {
                return None;
            }
            // Mapped already by the walk that found it, in its directory.
            if let Some(map) = file.mapped.take().filter(|_| file.ranges.is_none()) {
                return Some(Ok(MappedFile { map, file }));
            }
            Some(match open_file(&file.path, false) {
                Ok((f, _)) => Ok(MappedFile {
                    map: map_file(&f, file.size, file.ranges.as_deref()),
                    file,
                }),
                Err(e) => Err(Warning::new(
                    WarningKind::Unreadable,
                    Some(&file.path),
                    Some(&file.origin),
                    format!("opening: {e}"),
                )),
            })
        });
        let not_mapped = mapped.iter().filter(|m| m.is_none()).count() as u64;
        self.prepared.files_not_mapped += not_mapped;
        let first_file = self.prepared.files.len();
        let mut extents: BTreeMap<DeviceId, Vec<PrioritizedExtent>> = BTreeMap::new();
        for &id in sweeps {
            if let Some(d) = self.prepared.device(id) {
                extents.entry(id).or_default().push(PrioritizedExtent {
                    priority,
                    offset: 0,
                    len: d.device.size,
                });
            }
        }
        for m in mapped.into_iter().flatten() {
            let mut m = match m {
                Ok(m) => m,
                Err(w) => {
                    self.prepared.warnings.push(w);
                    continue;
                }
            };
            if !m.map.device_extents.is_empty() {
                let id = DeviceId::from_dev(m.file.dev);
                match self.device_for(id) {
                    Ok(()) => {
                        self.device_mut(id).files += 1;
                        extents
                            .entry(id)
                            .or_default()
                            .extend(m.map.device_extents.iter().map(|e| PrioritizedExtent {
                                priority: m.file.priority,
                                offset: e.physical,
                                len: e.length,
                            }));
                    }
                    // Files on a device that cannot be used are read
                    // through the file instead.
                    Err(why) => m.map.demote_to_file_reads(why),
                }
            }
            self.prepared.add_file(m);
        }
        let classes = extents
            .into_iter()
            .map(|(id, ext)| (id, self.device_mut(id).plan.extend(&ext)))
            .collect();
        let file_ios = self.plan_file_ios_from(first_file);
        self.take_added(classes, file_ios)
    }

    /// Plan the reads through the file of the files kept since
    /// `prepared.files[first_file]`; returns them (a range of
    /// `prepared.file_ios`).
    fn plan_file_ios_from(&mut self, first_file: usize) -> Range<usize> {
        let first_io = self.prepared.file_ios.len();
        let new_ios = plan_file_ios(
            &self.prepared.files[first_file..],
            first_file,
            self.cfg.plan.max_io,
        );
        self.prepared.file_ios.extend(new_ios);
        first_io..self.prepared.file_ios.len()
    }

    /// The classes held for a manifest replay's checks, as the first
    /// (`first`) or the last pieces of their classes.
    fn held_pieces(&self, first: bool) -> Vec<ClassPiece> {
        let held = self.prepared.held_classes.iter();
        held.map(|&priority| ClassPiece {
            priority,
            first,
            last: !first,
        })
        .collect()
    }

    /// What is planned already (a manifest's plan, devices opened for
    /// sweeps), as one [`Added`]: the engines start with it.
    pub fn seeded(&mut self) -> Added {
        let classes = self
            .prepared
            .devices
            .iter()
            .filter(|d| !d.plan.classes.is_empty())
            .map(|d| (d.id(), 0..d.plan.classes.len()))
            .collect();
        let file_ios = 0..self.prepared.file_ios.len();
        let mut added = self.take_added(classes, file_ios);
        added.pieces = self.held_pieces(true);
        added
    }

    /// Files a manifest replay checked on device `id` (whose files have
    /// `st_dev` `dev_num`) while its recorded plan was being read: each is
    /// counted, and kept if read through the file; `extents` (of what was
    /// mapped again, having changed since the manifest was planned) join the
    /// device's plan, less the chunks it holds already. With `last`, the
    /// classes held since [`Planner::seeded`] are complete once their reads
    /// are.
    pub fn add_checked(
        &mut self,
        id: DeviceId,
        dev_num: u64,
        files: Vec<MappedFile>,
        extents: &[PrioritizedExtent],
        last: bool,
    ) -> Added {
        let first_file = self.prepared.files.len();
        let mut on_device = 0;
        for m in files {
            if m.file.dev == dev_num && !m.map.device_extents.is_empty() {
                on_device += 1;
            }
            self.prepared.add_file(m);
        }
        let mut classes = Vec::new();
        if let Some(d) = self.prepared.devices.iter_mut().find(|d| d.id() == id) {
            d.files += on_device;
            if !extents.is_empty() {
                classes.push((id, d.plan.extend(extents)));
            }
        }
        let file_ios = self.plan_file_ios_from(first_file);
        let mut added = self.take_added(classes, file_ios);
        if last {
            added.pieces = self.held_pieces(false);
        }
        added
    }

    /// An [`Added`] for `classes` and `file_ios`, announcing the devices
    /// opened since the last one.
    fn take_added(
        &mut self,
        classes: Vec<(DeviceId, Range<usize>)>,
        file_ios: Range<usize>,
    ) -> Added {
        Added {
            classes,
            new_devices: std::mem::take(&mut self.unannounced),
            file_ios,
            pieces: Vec::new(),
        }
    }

    fn device_mut(&mut self, id: DeviceId) -> &mut DevicePlan {
        self.prepared
            .devices
            .iter_mut()
            .find(|d| d.id() == id)
            .expect("device_for opened it")
    }

    /// Whether device `id` can be read, opening it when first met; or why
    /// its files must be read through the files.
    fn device_for(&mut self, id: DeviceId) -> Result<(), FileReadReason> {
        if let Some(known) = self.devices.get(&id) {
            return known.clone();
        }
        let cfg = self.cfg;
        let opened = device::open(id).and_then(|d| {
            match cfg.plan.validate(u64::from(d.logical_block_size)) {
                Ok(()) => Ok(d),
                Err(e) => Err(DeviceError::Unusable {
                    node: d.node.clone(),
                    reason: e.to_string(),
                }),
            }
        });
        match opened {
            Ok(dev) => {
                self.add_device(dev);
                Ok(())
            }
            Err(e) => {
                if !matches!(e, DeviceError::Virtual(_)) {
                    tracing::warn!("{e}: reading its files through the files");
                }
                let why = FileReadReason::DeviceUnusable {
                    device: id,
                    reason: e.to_string(),
                };
                self.devices.insert(id, Err(why.clone()));
                Err(why)
            }
        }
    }

    fn add_device(&mut self, dev: device::BlockDevice) {
        if !dev.direct {
            self.prepared.fallbacks.push(Fallback::Buffered {
                device: dev.node.display().to_string(),
            });
        }
        self.devices.insert(dev.id, Ok(()));
        self.unannounced.push(dev.id);
        self.prepared.devices.push(DevicePlan {
            plan: ReadPlan::new(dev.size, &self.cfg.plan),
            device: dev,
            files: 0,
            swept: false,
            uuid: None,
        });
    }

    /// The plan.
    pub fn into_prepared(self) -> Prepared {
        self.prepared
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A step's files go on in doubling pieces, and the rest at once from
    /// the full size on: every file once, in order.
    #[test]
    fn a_steps_files_go_on_in_doubling_pieces() {
        let sizes = |n: usize, next: &mut usize| -> Vec<usize> {
            let files: Vec<usize> = (0..n).collect();
            let pieces = cut_pieces(files.clone(), next, 128);
            assert_eq!(pieces.concat(), files);
            pieces.iter().map(Vec::len).collect()
        };
        let mut next = 8;
        assert_eq!(sizes(103, &mut next), [8, 16, 32, 47]);
        assert_eq!(next, 128);
        assert_eq!(sizes(1002, &mut next), [1002]);
        let mut next = 8;
        assert_eq!(sizes(1002, &mut next), [8, 16, 32, 64, 882]);
        let mut next = 8;
        assert_eq!(sizes(5, &mut next), [5]);
        assert_eq!(next, 16);
        assert_eq!(sizes(0, &mut next), [0]);
        assert_eq!(next, 32);
    }

    /// A device opened buffered (it refused O_DIRECT: `direct` false) is
    /// still read, every planned byte, and the report says it was read
    /// buffered. No block device here refuses O_DIRECT, so the device is
    /// a regular file standing in for one; the refusal itself is tested on
    /// ramfs, which does refuse it (`prewarm-cli/tests/direct_fallback.rs`).
    #[test]
    fn a_device_that_refused_o_direct_is_read_buffered_and_reported() {
        let mut image = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut image, &vec![7u8; 3 << 20]).unwrap();
        let (file, direct) = device::open_read_only(image.path(), false, 0).unwrap();
        assert!(!direct);
        let cfg = Config::default();
        let mut planner = Planner::new(Prepared::empty(Vec::new()), &cfg);
        let dev = device::BlockDevice {
            id: DeviceId {
                major: 7,
                minor: 99,
            },
            node: image.path().to_path_buf(),
            file,
            direct,
            logical_block_size: 512,
            size: 3 << 20,
            fs_type: None,
            mount_point: None,
            backing: Default::default(),
        };
        planner.add_device(dev);
        let id = DeviceId {
            major: 7,
            minor: 99,
        };
        planner.device_mut(id).plan.extend(&[PrioritizedExtent {
            priority: 10,
            offset: 4096,
            len: (2 << 20) + 5,
        }]);
        let report = planner.into_prepared().execute(&cfg).unwrap();
        assert_eq!(report.errors, 0, "{}", report.summary());
        // Chunks 0..=4 (512 KiB each) hold the extent: read whole.
        assert_eq!(report.bytes_read, 5 << 19, "{}", report.summary());
        assert_eq!(report.bytes_read, report.planned_bytes);
        let node = image.path().display().to_string();
        assert!(
            report
                .fallbacks
                .iter()
                .any(|f| matches!(f, Fallback::Buffered { device } if *device == node)),
            "{:?}",
            report.fallbacks
        );
        assert!(!report.devices[0].direct);
    }

    /// A manifest replay's classes are held from the seeded plan until the
    /// last addition of its checks: announced only once what the checks
    /// found changed is read too.
    #[test]
    fn held_classes_open_with_the_seeded_plan_and_close_with_the_last_check() {
        let cfg = Config::default();
        let mut prepared = Prepared::empty(Vec::new());
        prepared.held_classes = vec![10, 20];
        let mut planner = Planner::new(prepared, &cfg);
        let flags = |added: &Added| -> Vec<(u32, bool, bool)> {
            added
                .pieces
                .iter()
                .map(|p| (p.priority, p.first, p.last))
                .collect()
        };
        let seeded = planner.seeded();
        assert_eq!(flags(&seeded), [(10, true, false), (20, true, false)]);
        let id = DeviceId {
            major: 7,
            minor: 99,
        };
        let middle = planner.add_checked(id, 0, Vec::new(), &[], false);
        assert!(middle.pieces.is_empty());
        let last = planner.add_checked(id, 0, Vec::new(), &[], true);
        assert_eq!(flags(&last), [(10, false, true), (20, false, true)]);
    }

    /// A class of many files reaches the sink in pieces, the first marked
    /// first and only the last marked last, every file once; a small class
    /// is one piece.
    #[test]
    fn a_big_class_is_planned_in_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("layer");
        for d in 0..30 {
            let sub = tree.join(format!("d{d:02}/inner"));
            std::fs::create_dir_all(&sub).unwrap();
            for f in 0..10 {
                std::fs::write(sub.join(format!("f{f}")), [d as u8; 100]).unwrap();
            }
        }
        let lone = dir.path().join("lone");
        std::fs::write(&lone, b"x").unwrap();
        let mut sources = Sources::default();
        sources.add_path(&tree, 10);
        sources.add_path(&lone, 20);
        let cfg = Config {
            queue_depth: 16,
            ..Config::default()
        };
        let mut planner = Planner::new(Prepared::empty(Vec::new()), &cfg);
        let pool = MetadataPool::new(4);
        let mut pieces = Vec::new();
        planner.plan_classes(&sources, &pool, &mut |_, added| {
            pieces.extend(added.pieces.iter().copied());
        });
        let prepared = planner.into_prepared();
        assert_eq!(prepared.files.len(), 301);
        let mut paths: Vec<_> = prepared.files.iter().map(|f| &f.file.path).collect();
        paths.sort();
        paths.dedup();
        assert_eq!(paths.len(), 301, "every file once");
        let of = |p: u32| -> Vec<(bool, bool)> {
            pieces
                .iter()
                .filter(|x| x.priority == p)
                .map(|x| (x.first, x.last))
                .collect()
        };
        let big = of(10);
        assert!(big.len() >= 300 / piece_size(16), "{big:?}");
        assert_eq!(big.iter().filter(|x| x.0).count(), 1);
        assert_eq!(big.iter().filter(|x| x.1).count(), 1);
        assert!(big[0].0 && big[big.len() - 1].1, "{big:?}");
        assert_eq!(of(20), [(true, true)]);
    }
}
