//! Planning: from mapped extents with priorities to the ordered list of reads
//! that hydrates them.
//!
//! A lazily loaded volume fetches whole chunks (EBS: the 512 KiB snapshot
//! block) on first touch, so the plan works in chunks, not bytes:
//!
//! 1. every extent is widened outward to chunk boundaries;
//! 2. classes are taken in priority order (lower first); within a class the
//!    chunk intervals are merged, intervals separated by less than the
//!    coalescing gap (strictly) are joined, and chunks already claimed by a more urgent
//!    class are cut out, so no chunk is read twice;
//! 3. ranges are clamped to the device size and sorted by physical offset;
//! 4. [`ReadPlan::ios`] splits them into I/Os of at most `max_io` bytes (or,
//!    in touch mode, one logical block per chunk).
//!
//! The default coalescing gap is zero: on a lazy volume every chunk in a gap
//! is a fetch of data nobody asked for, which costs the same latency as a
//! wanted one. Adjacent chunks still merge, and large reads are split only at
//! `max_io`.
//!
//! `spans` is the interval algebra the plan (and the rest of the crate)
//! is built on.

pub(crate) mod spans;

use serde::Serialize;

use self::spans::{merge, subtract, union, Span};
use crate::error::Error;
use crate::map::ByteRange;

/// EBS snapshot block size: the unit a lazily loaded volume fetches.
pub const DEFAULT_CHUNK_SIZE: u64 = 512 * 1024;
/// Largest single read.
pub const DEFAULT_MAX_IO: u64 = 1024 * 1024;
/// Upper bound of `max_io`, wherever it comes from (command line or
/// manifest): every in-flight read holds a buffer this large, so a larger
/// value costs memory, not speed (64 reads in flight hold 4 GiB at 64 MiB).
pub const MAX_IO_LIMIT: u64 = 64 * 1024 * 1024;
/// Upper bound of `chunk_size`: a chunk is what the volume fetches at once
/// (EBS: 512 KiB); larger ones only widen every read.
pub const MAX_CHUNK_SIZE: u64 = 64 * 1024 * 1024;

/// Knobs of the planner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PlanConfig {
    /// Hydration chunk: extents are widened to multiples of it.
    pub chunk_size: u64,
    /// Ranges whose gap is smaller than this many bytes are joined.
    pub coalesce_gap: u64,
    /// Largest single I/O.
    pub max_io: u64,
}

impl Default for PlanConfig {
    fn default() -> Self {
        PlanConfig {
            chunk_size: DEFAULT_CHUNK_SIZE,
            coalesce_gap: 0,
            max_io: DEFAULT_MAX_IO,
        }
    }
}

impl PlanConfig {
    /// Check the values against a device's logical block size.
    pub fn validate(&self, logical_block_size: u64) -> Result<(), Error> {
        let bs = logical_block_size.max(1);
        let bad = |field, reason: String| Err(Error::Config { field, reason });
        if self.chunk_size == 0 || self.chunk_size % bs != 0 || self.chunk_size > MAX_CHUNK_SIZE {
            return bad(
                "chunk_size",
                format!(
                    "{} is not a multiple of the {bs}-byte block up to {} MiB",
                    self.chunk_size,
                    MAX_CHUNK_SIZE >> 20
                ),
            );
        }
        if self.max_io == 0 || self.max_io % bs != 0 || self.max_io > MAX_IO_LIMIT {
            return bad(
                "max_io",
                format!(
                    "{} is not a multiple of the {bs}-byte block up to {} MiB",
                    self.max_io,
                    MAX_IO_LIMIT >> 20
                ),
            );
        }
        Ok(())
    }
}

/// How each chunk is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum ReadMode {
    /// Read every byte of every planned range.
    #[default]
    Full,
    /// Read one logical block per chunk: enough for storage that fetches a
    /// whole chunk on first access, at a fraction of the bandwidth.
    Touch,
}

/// A device byte range to hydrate, with the priority of the file it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrioritizedExtent {
    /// Priority class (lower is read first).
    pub priority: u32,
    /// Device byte offset.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

/// All ranges of one priority class, in physical order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanClass {
    /// The class's priority.
    pub priority: u32,
    /// Its chunk-aligned device ranges, in physical order.
    pub ranges: Vec<ByteRange>,
}

/// One I/O of the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PlannedIo {
    /// Device byte offset.
    pub offset: u64,
    /// Length in bytes.
    pub len: u32,
    /// Its class.
    pub priority: u32,
}

/// Sizes of a plan.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PlanStats {
    /// Extents the plan was built from.
    pub extents: u64,
    /// Merged ranges.
    pub ranges: u64,
    /// Chunks to read.
    pub chunks: u64,
    /// Bytes to read.
    pub bytes: u64,
    /// Priority classes.
    pub classes: u64,
}

impl std::ops::AddAssign for PlanStats {
    fn add_assign(&mut self, o: Self) {
        // Saturating: report totals must not wrap, whatever the input.
        self.extents = self.extents.saturating_add(o.extents);
        self.ranges = self.ranges.saturating_add(o.ranges);
        self.chunks = self.chunks.saturating_add(o.chunks);
        self.bytes = self.bytes.saturating_add(o.bytes);
        self.classes = self.classes.max(o.classes);
    }
}

/// The ordered reads of one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReadPlan {
    /// The knobs it was built with.
    pub config: PlanConfig,
    /// Device size the ranges are clamped to (0: unknown, no clamp).
    pub device_size: u64,
    /// Extents the plan was built from.
    pub extents: u64,
    /// Classes in the order added (priority order, but for what a manifest
    /// replay adds late: see [`ReadPlan::extend`]); no chunk appears in two
    /// ranges.
    pub classes: Vec<PlanClass>,
    /// Chunks claimed by a class or dropped as already read: never planned
    /// again.
    #[serde(skip)]
    claimed: Vec<Span>,
}

impl ReadPlan {
    /// An empty plan for one device. `cfg` must have been validated.
    pub fn new(device_size: u64, cfg: &PlanConfig) -> Self {
        ReadPlan {
            config: *cfg,
            device_size,
            extents: 0,
            classes: Vec::new(),
            claimed: Vec::new(),
        }
    }

    /// Build the plan for one device. `cfg` must have been validated.
    pub fn build(extents: &[PrioritizedExtent], device_size: u64, cfg: &PlanConfig) -> Self {
        let mut plan = ReadPlan::new(device_size, cfg);
        plan.extend(extents);
        plan
    }

    /// Add the classes of `extents`. The pipeline adds classes in priority
    /// order, each in pieces as its files are mapped, so a class may come in
    /// several [`PlanClass`]es of the same priority; a manifest replay adds
    /// what it found changed after the whole recorded plan, so a class added
    /// late may be more urgent than earlier ones (it is read after them:
    /// the engines take classes in the order they are added). Chunks
    /// already claimed are cut out. Returns the indexes of the classes
    /// added.
    pub fn extend(&mut self, extents: &[PrioritizedExtent]) -> std::ops::Range<usize> {
        let chunk = self.config.chunk_size.max(1);
        let limit_chunks = if self.device_size == 0 {
            u64::MAX
        } else {
            self.device_size.div_ceil(chunk)
        };
        // Gaps strictly shorter than `coalesce_gap` are filled: the longest
        // gap of whole chunks that is.
        let gap_chunks = self.config.coalesce_gap.saturating_sub(1) / chunk;
        let mut spans: Vec<(u32, Span)> = extents
            .iter()
            .filter(|e| e.len > 0)
            .filter_map(|e| {
                let start = e.offset / chunk;
                let end = e
                    .offset
                    .saturating_add(e.len)
                    .div_ceil(chunk)
                    .min(limit_chunks);
                (start < end).then_some((e.priority, (start, end)))
            })
            .collect();
        spans.sort_unstable();

        let first_new = self.classes.len();
        self.extents += extents.len() as u64;
        for group in spans.chunk_by(|a, b| a.0 == b.0) {
            let priority = group[0].0;
            let merged = merge(group.iter().map(|&(_, s)| s), gap_chunks);
            let fresh = subtract(&merged, &self.claimed);
            if fresh.is_empty() {
                continue;
            }
            self.claimed = union(&self.claimed, &fresh);
            let ranges = fresh
                .iter()
                .map(|&s| span_to_range(s, chunk, self.device_size))
                .collect();
            self.classes.push(PlanClass { priority, ranges });
        }
        first_new..self.classes.len()
    }

    /// Drop every chunk lying wholly inside the byte ranges `done` (already
    /// read, e.g. by the initrd run). Returns how many chunks were dropped.
    pub fn subtract_done(&mut self, done: &[(u64, u64)]) -> u64 {
        let chunk = self.config.chunk_size.max(1);
        let size = self.device_size;
        let done_spans = merge(
            done.iter()
                .map(|&(s, e)| {
                    // The device's last chunk may be short: reading to the
                    // end of the device completes it.
                    let end = if size != 0 && e >= size {
                        e.div_ceil(chunk)
                    } else {
                        e / chunk
                    };
                    (s.div_ceil(chunk), end)
                })
                .filter(|(s, e)| s < e),
            0,
        );
        let before = self.stats().chunks;
        self.claimed = union(&self.claimed, &done_spans);
        for class in &mut self.classes {
            let spans: Vec<Span> = class
                .ranges
                .iter()
                .map(|r| (r.offset / chunk, r.end().div_ceil(chunk)))
                .collect();
            class.ranges = subtract(&spans, &done_spans)
                .into_iter()
                .map(|s| span_to_range(s, chunk, size))
                .collect();
        }
        self.classes.retain(|c| !c.ranges.is_empty());
        before - self.stats().chunks
    }

    /// Sizes of the plan.
    pub fn stats(&self) -> PlanStats {
        let chunk = self.config.chunk_size.max(1);
        let mut stats = PlanStats {
            extents: self.extents,
            // Pieces of one class count once.
            classes: self
                .classes
                .chunk_by(|a, b| a.priority == b.priority)
                .count() as u64,
            ..Default::default()
        };
        for r in self.classes.iter().flat_map(|c| &c.ranges) {
            stats.ranges += 1;
            stats.bytes += r.len;
            stats.chunks += r.end().div_ceil(chunk) - r.offset / chunk;
        }
        stats
    }

    /// The I/Os to issue, in order: by class, then physical offset.
    /// `block` is the device's logical block size (the touch-read length).
    pub fn ios(&self, mode: ReadMode, block: u32) -> Vec<PlannedIo> {
        self.class_ios(0..self.classes.len(), mode, block)
    }

    /// The I/Os of the classes `which` (e.g. those one [`ReadPlan::extend`]
    /// added), in order.
    pub fn class_ios(
        &self,
        which: std::ops::Range<usize>,
        mode: ReadMode,
        block: u32,
    ) -> Vec<PlannedIo> {
        let chunk = self.config.chunk_size.max(1);
        let max_io = self.config.max_io.max(1);
        let mut out = Vec::new();
        for class in self.classes.get(which).unwrap_or_default() {
            for r in &class.ranges {
                let (step, len_at): (u64, &dyn Fn(u64) -> u64) = match mode {
                    ReadMode::Full => (max_io, &|off| max_io.min(r.end() - off)),
                    ReadMode::Touch => (chunk, &|off| u64::from(block).min(r.end() - off)),
                };
                let mut off = r.offset;
                while off < r.end() {
                    out.push(PlannedIo {
                        offset: off,
                        len: len_at(off) as u32,
                        priority: class.priority,
                    });
                    off += step;
                }
            }
        }
        out
    }
}

/// Chunk span to byte range, clamped to the device size (0: unknown).
fn span_to_range((s, e): Span, chunk: u64, device_size: u64) -> ByteRange {
    let offset = s * chunk;
    let mut end = e * chunk;
    if device_size != 0 {
        end = end.min(device_size);
    }
    ByteRange {
        offset,
        len: end - offset,
    }
}

/// One read through a file (the fallback path).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FileIo {
    /// Index of the file in the caller's file table.
    pub file: usize,
    /// File byte offset.
    pub offset: u64,
    /// Length in bytes.
    pub len: u32,
    /// Its class.
    pub priority: u32,
}

/// Plan reads through files: ranges clamped to the file's size, widened to
/// `align` (so they work with O_DIRECT), merged per file, split at `max_io`
/// (itself at most [`MAX_IO_LIMIT`]), ordered by priority, file, offset.
/// Each item is (file index, priority, file size, ranges).
///
/// The ranges may come from an untrusted manifest: the arithmetic saturates
/// and a range is cut at the file's size (its last `align` block), so the
/// reads planned never exceed the file, however long a range claims to be.
/// Reads past the end of a file just come back short.
pub fn file_ios<'a>(
    files: impl IntoIterator<Item = (usize, u32, u64, &'a [ByteRange])>,
    align: u64,
    max_io: u64,
) -> Vec<FileIo> {
    let align = align.clamp(1, MAX_IO_LIMIT);
    let max_io = max_io.clamp(align, MAX_IO_LIMIT);
    let round_up = |v: u64| v.div_ceil(align).saturating_mul(align);
    let mut out = Vec::new();
    for (file, priority, size, ranges) in files {
        let file_end = round_up(size);
        let spans = merge(
            ranges
                .iter()
                .map(|r| (r.offset / align * align, round_up(r.end()).min(file_end)))
                .filter(|(s, e)| s < e),
            0,
        );
        for (s, e) in spans {
            let mut off = s;
            while off < e {
                let len = max_io.min(e - off);
                out.push(FileIo {
                    file,
                    offset: off,
                    len: u32::try_from(len).unwrap_or(u32::MAX),
                    priority,
                });
                off += len;
            }
        }
    }
    out.sort_by_key(|io| (io.priority, io.file, io.offset));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const K: u64 = 1024;

    fn ext(priority: u32, offset: u64, len: u64) -> PrioritizedExtent {
        PrioritizedExtent {
            priority,
            offset,
            len,
        }
    }

    #[test]
    fn aligns_merges_and_orders() {
        let cfg = PlanConfig::default();
        let plan = ReadPlan::build(
            &[
                ext(50, 10 * 512 * K + 5, 10),
                ext(10, 3 * 512 * K, 512 * K + 1), // chunks 3..5
                ext(50, 4 * 512 * K, 100),         // chunk 4: claimed by class 10
                ext(50, 0, 4096),
            ],
            0,
            &cfg,
        );
        assert_eq!(plan.classes.len(), 2);
        assert_eq!(plan.classes[0].priority, 10);
        assert_eq!(
            plan.classes[0].ranges,
            [ByteRange {
                offset: 3 * 512 * K,
                len: 1024 * K
            }]
        );
        assert_eq!(
            plan.classes[1].ranges,
            [
                ByteRange {
                    offset: 0,
                    len: 512 * K
                },
                ByteRange {
                    offset: 10 * 512 * K,
                    len: 512 * K
                }
            ]
        );
        let s = plan.stats();
        assert_eq!((s.ranges, s.chunks, s.bytes), (3, 4, 2048 * K));
        let touch = plan.ios(ReadMode::Touch, 4096);
        assert_eq!(touch.len(), 4);
        assert!(touch.iter().all(|io| io.len == 4096));
    }

    #[test]
    fn clamps_to_device_size() {
        let cfg = PlanConfig::default();
        let plan = ReadPlan::build(&[ext(1, 1000 * K, 8 * K)], 1004 * K, &cfg);
        let r = plan.classes[0].ranges[0];
        assert_eq!((r.offset, r.end()), (512 * K, 1004 * K));
    }

    #[test]
    fn coalesces_small_gaps() {
        let cfg = PlanConfig {
            coalesce_gap: 1024 * K,
            ..Default::default()
        };
        // A 512 KiB gap is below the 1 MiB threshold: filled.
        let plan = ReadPlan::build(&[ext(1, 0, 1), ext(1, 2 * 512 * K, 1)], 0, &cfg);
        assert_eq!(plan.classes[0].ranges.len(), 1);
        assert_eq!(plan.stats().chunks, 3);
        // A gap of exactly the threshold is not.
        let plan = ReadPlan::build(&[ext(1, 0, 1), ext(1, 3 * 512 * K, 1)], 0, &cfg);
        assert_eq!(plan.classes[0].ranges.len(), 2);
        assert_eq!(plan.stats().chunks, 2);
    }

    #[test]
    fn file_ios_align_and_split() {
        let r = [
            ByteRange {
                offset: 100,
                len: 10,
            },
            ByteRange {
                offset: 5000,
                len: 3 * 1024 * K,
            },
        ];
        let ios = file_ios([(7, 3, 8 * 1024 * K, &r[..])], 4096, 1024 * K);
        assert_eq!(ios[0].offset, 0);
        assert!(ios
            .iter()
            .all(|io| io.offset % 4096 == 0 && io.len % 4096 == 0));
        let total: u64 = ios.iter().map(|io| u64::from(io.len)).sum();
        assert!(total >= 3 * 1024 * K + 4096);
    }

    #[test]
    fn subtract_done_drops_whole_chunks_only() {
        let cfg = PlanConfig::default();
        let mut plan = ReadPlan::build(
            &[ext(1, 0, 4 * 512 * K), ext(2, 10 * 512 * K, 10)],
            10 * 512 * K + 100,
            &cfg,
        );
        // Chunk 0 done, chunk 1 half done, and the short last chunk done.
        let dropped = plan.subtract_done(&[(0, 512 * K + 100), (10 * 512 * K, 10 * 512 * K + 100)]);
        assert_eq!(dropped, 2);
        assert_eq!(plan.classes.len(), 1);
        assert_eq!(
            plan.classes[0].ranges,
            [ByteRange {
                offset: 512 * K,
                len: 3 * 512 * K
            }]
        );
    }

    #[test]
    fn validate_rejects_misaligned() {
        let cfg = PlanConfig {
            chunk_size: 1000,
            ..Default::default()
        };
        assert!(cfg.validate(512).is_err());
        assert!(PlanConfig::default().validate(4096).is_ok());
    }

    fn arb_extents() -> impl Strategy<Value = Vec<PrioritizedExtent>> {
        prop::collection::vec(
            (0u32..4, 0u64..64 * 1024 * K, 1u64..3 * 1024 * K)
                .prop_map(|(p, o, l)| ext(p * 10, o, l)),
            0..200,
        )
    }

    fn arb_config() -> impl Strategy<Value = PlanConfig> {
        (0u32..3, 0u64..4, 1u64..5).prop_map(|(c, g, m)| {
            let chunk_size = (64 * K) << (c * 2);
            PlanConfig {
                chunk_size,
                coalesce_gap: g * chunk_size,
                max_io: m * 256 * K,
            }
        })
    }

    proptest! {
        #[test]
        fn plan_covers_reads_once_and_respects_priority(
            extents in arb_extents(),
            cfg in arb_config(),
            dev_chunks in prop::option::of(1u64..400),
        ) {
            let device_size = dev_chunks.map_or(0, |c| c * 64 * K);
            let plan = ReadPlan::build(&extents, device_size, &cfg);
            let chunk = cfg.chunk_size;
            let ios = plan.ios(ReadMode::Full, 4096);

            // No chunk is read twice: I/O byte ranges are disjoint, and so
            // are the chunks of the ranges.
            let mut spans: Vec<(u64, u64)> = ios.iter().map(|io| (io.offset, io.offset + u64::from(io.len))).collect();
            spans.sort_unstable();
            for w in spans.windows(2) {
                prop_assert!(w[0].1 <= w[1].0, "overlap {:?}", w);
            }
            let mut chunk_owner = std::collections::HashMap::new();
            for class in &plan.classes {
                for r in &class.ranges {
                    prop_assert_eq!(r.offset % chunk, 0);
                    for c in r.offset / chunk..r.end().div_ceil(chunk) {
                        prop_assert!(chunk_owner.insert(c, class.priority).is_none(), "chunk {} twice", c);
                    }
                }
            }

            // Every mapped byte (inside the device) is covered, no later than
            // the class of the most urgent extent touching its chunk.
            for e in &extents {
                let end = if device_size == 0 { e.offset + e.len } else { (e.offset + e.len).min(device_size) };
                if e.offset >= end { continue; }
                for c in e.offset / chunk..end.div_ceil(chunk) {
                    let most_urgent = extents.iter()
                        .filter(|o| o.offset / chunk <= c && c < (o.offset + o.len).div_ceil(chunk))
                        .map(|o| o.priority).min().unwrap();
                    let owner = chunk_owner.get(&c).copied();
                    prop_assert!(owner.is_some(), "chunk {} not read", c);
                    // A gap filled by coalescing may pull a chunk into a more
                    // urgent class; without coalescing the class is exact.
                    if cfg.coalesce_gap < chunk {
                        prop_assert_eq!(owner, Some(most_urgent), "chunk {}", c);
                    } else {
                        prop_assert!(owner <= Some(most_urgent), "chunk {}", c);
                    }
                }
                let (s, t) = (e.offset, end);
                let covered: u64 = spans.iter().map(|&(a, b)| b.min(t).saturating_sub(a.max(s))).sum();
                prop_assert_eq!(covered, t - s);
            }

            // I/Os come in priority order, physical order inside a class,
            // and none is larger than max_io or reaches past the device.
            for w in ios.windows(2) {
                prop_assert!((w[0].priority, w[0].offset) < (w[1].priority, w[1].offset));
            }
            for io in &ios {
                prop_assert!(u64::from(io.len) <= cfg.max_io && io.len > 0);
                if device_size != 0 {
                    prop_assert!(io.offset + u64::from(io.len) <= device_size);
                }
            }
        }

        #[test]
        fn extending_class_by_class_plans_what_build_plans(
            extents in arb_extents(),
            cfg in arb_config(),
        ) {
            // The streaming pipeline adds one class at a time, in order; the
            // plan and its I/Os must be the ones planning everything at once
            // gives.
            let whole = ReadPlan::build(&extents, 0, &cfg);
            let mut sorted = extents.clone();
            sorted.sort_by_key(|e| e.priority);
            let mut streamed = ReadPlan::new(0, &cfg);
            let mut ios = Vec::new();
            for class in sorted.chunk_by(|a, b| a.priority == b.priority) {
                let added = streamed.extend(class);
                ios.extend(streamed.class_ios(added, ReadMode::Full, 4096));
            }
            prop_assert_eq!(&streamed, &whole);
            prop_assert_eq!(ios, whole.ios(ReadMode::Full, 4096));
        }

        #[test]
        fn touch_reads_one_block_per_chunk(extents in arb_extents(), cfg in arb_config()) {
            let plan = ReadPlan::build(&extents, 0, &cfg);
            let touch = plan.ios(ReadMode::Touch, 4096);
            prop_assert_eq!(touch.len() as u64, plan.stats().chunks);
            prop_assert!(touch.iter().all(|io| io.offset % cfg.chunk_size == 0 && io.len == 4096));
        }
    }
}
