//! Reads through files: the bytes FIEMAP could not place on a device
//! (inline data, delayed allocation, no FIEMAP, no usable device) are read
//! with the same engine, on the files themselves, opened a batch at a time.

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::path::PathBuf;

use super::MappedFile;
use crate::engine::{self, EngineConfig, EngineStats, ReadOp, ReadTarget};
use crate::error::{Error, Origin, Warning, WarningKind};
use crate::map::extent::open_file;
use crate::plan::{self, FileIo};

/// Alignment of file-level reads: safe for O_DIRECT on 4 KiB filesystems.
pub(crate) const FILE_ALIGN: u64 = 4096;
/// Files opened at once for file-level reads.
const FILE_BATCH: usize = 256;

/// The reads to make through files, for every file with file ranges.
/// `files[i]` is file `first + i` of the plan. Ranges are cut at the file's
/// size (they may come from an untrusted manifest: see [`plan::file_ios`]),
/// so what is planned is bounded by the files, not by what a range claims.
pub(crate) fn plan_file_ios(files: &[MappedFile], first: usize, max_io: u64) -> Vec<FileIo> {
    plan::file_ios(
        files
            .iter()
            .enumerate()
            .filter(|(_, f)| !f.map.file_ranges.is_empty())
            .map(|(i, f)| {
                (
                    first + i,
                    f.file.priority,
                    f.file.size,
                    &f.map.file_ranges[..],
                )
            }),
        FILE_ALIGN,
        max_io,
    )
}

/// The path and origin of the files a batch of file-level reads names, by
/// their index in the plan.
pub(crate) type FileNames = BTreeMap<usize, (PathBuf, Origin)>;

/// The names of the files `ios` read.
pub(crate) fn names_of(files: &[MappedFile], ios: &[FileIo]) -> FileNames {
    ios.iter()
        .map(|io| {
            let f = &files[io.file].file;
            (io.file, (f.path.clone(), f.origin.clone()))
        })
        .collect()
}

/// What the file-level reads did: their engines' stats (merged), how many
/// files took O_DIRECT, and the files that could not be opened.
#[derive(Default)]
pub(crate) struct FileReads {
    pub stats: Option<EngineStats>,
    pub direct_files: u64,
    pub warnings: Vec<Warning>,
}

impl FileReads {
    pub fn merge(&mut self, o: FileReads) {
        match (&mut self.stats, o.stats) {
            (Some(a), Some(b)) => a.merge(b),
            (None, b) => self.stats = b,
            (Some(_), None) => {}
        }
        self.direct_files += o.direct_files;
        self.warnings.extend(o.warnings);
    }
}

/// Read the file-level I/Os in batches of at most [`FILE_BATCH`] open files.
/// Failure targets are indexes into the plan's files.
pub(crate) fn read_files(
    files: &FileNames,
    ios: &[FileIo],
    ecfg: &EngineConfig,
) -> Result<FileReads, Error> {
    let mut out = FileReads::default();
    let mut rest = ios;
    while !rest.is_empty() {
        // Take ios until FILE_BATCH distinct files (ios of a file are
        // contiguous: one priority per file, sorted by file within it).
        let mut batch_files: Vec<usize> = Vec::new();
        let mut n = 0;
        while n < rest.len() {
            let f = rest[n].file;
            if batch_files.last() != Some(&f) {
                if batch_files.len() == FILE_BATCH {
                    break;
                }
                batch_files.push(f);
            }
            n += 1;
        }
        let (batch, tail) = rest.split_at(n);
        rest = tail;
        out.merge(read_batch(files, &batch_files, batch, ecfg)?);
        if ecfg.stop.check().is_some() {
            if let Some(t) = &mut out.stats {
                t.not_issued += rest.len() as u64;
            }
            break;
        }
    }
    Ok(out)
}

/// Open the files of one batch and read their I/Os.
fn read_batch(
    files: &FileNames,
    batch_files: &[usize],
    batch: &[FileIo],
    ecfg: &EngineConfig,
) -> Result<FileReads, Error> {
    let mut out = FileReads::default();
    // The open files, each with its plan index: a read's target is its
    // position here.
    let mut opened: Vec<(usize, std::fs::File, bool)> = Vec::new();
    let mut target_of: BTreeMap<usize, usize> = BTreeMap::new();
    for &fi in batch_files {
        let Some((path, origin)) = files.get(&fi) else {
            continue;
        };
        match open_file(path, true) {
            Ok((file, direct)) => {
                out.direct_files += u64::from(direct);
                target_of.insert(fi, opened.len());
                opened.push((fi, file, direct));
            }
            Err(e) => out.warnings.push(Warning::new(
                WarningKind::Unreadable,
                Some(path),
                Some(origin),
                format!("opening for reading: {e}"),
            )),
        }
    }
    let targets: Vec<ReadTarget<'_>> = opened
        .iter()
        .map(|(_, f, direct)| ReadTarget {
            fd: f.as_fd(),
            direct: *direct,
            align: FILE_ALIGN as u32,
            base: 0,
        })
        .collect();
    // Reads of files that could not be opened are dropped (the warning
    // says so).
    let ops: Vec<ReadOp> = batch
        .iter()
        .filter_map(|io| {
            target_of.get(&io.file).map(|&target| ReadOp {
                target,
                offset: io.offset,
                len: io.len,
                priority: io.priority,
            })
        })
        .collect();
    let mut stats = engine::run(&targets, &ops, ecfg)?;
    for f in &mut stats.failures {
        f.target = opened[f.target].0;
    }
    out.stats = Some(stats);
    Ok(out)
}
