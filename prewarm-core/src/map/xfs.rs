//! Where XFS keeps the metadata a walk fetches: the inode chunks of each
//! allocation group (found through the group's inode B+tree) and the
//! blocks of every directory (from the directories' inodes and block-map
//! B+trees).
//!
//! Amazon Linux 2023's root filesystem is XFS, so this is the read-ahead
//! (`readahead`) of the EKS root volume. XFS differs from ext4 in the one
//! way that matters here: its inodes are not in tables at fixed places but
//! in chunks of 64 allocated where there was room, listed by a B+tree per
//! allocation group whose root the group's AGI names. So the chain is one
//! level longer (superblock → AGIs → inode B+tree levels → inode chunks →
//! directory blocks), and each level is still read wide: every group's AGI
//! at once, then every root, and so on, instead of one lookup's fetches
//! after another.
//!
//! Parsing only: the bytes come from the caller. They are untrusted (a
//! device can hold anything), so every field is range-checked, every slice
//! is taken with `get`, every block named is checked to lie inside the
//! filesystem, and a tree is followed only downwards (each child one level
//! below its parent), so a loop cannot make it go round. Blocks are named
//! by their *linear* number, `ag × agblocks + agbno` (the byte offset over
//! the block size), not by XFS's own `ag << agblklog | agbno`.

use std::ops::Range;

use super::readahead::MetadataBlocks;

/// Why a superblock is not read ahead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XfsRefusal {
    /// No XFS magic (another filesystem, or none).
    #[error("not XFS")]
    NotXfs,
    /// A superblock field out of the range the kernel itself accepts.
    #[error("superblock field {field} = {value} is out of range")]
    Field {
        /// The field, as XFS names it.
        field: &'static str,
        /// Its value.
        value: u64,
    },
}

const SB_MAGIC: u32 = 0x5846_5342; // "XFSB"
const AGI_MAGIC: u32 = 0x5841_4749; // "XAGI"
const INOBT_MAGIC: u32 = 0x4941_4254; // "IABT"
const INOBT_CRC_MAGIC: u32 = 0x4941_4233; // "IAB3"
const BMAP_MAGIC: u32 = 0x424d_4150; // "BMAP"
const BMAP_CRC_MAGIC: u32 = 0x424d_4133; // "BMA3"
const DINODE_MAGIC: u16 = 0x494e; // "IN"
/// `sb_features_incompat`: inode chunks may have holes (`holemask`).
const INCOMPAT_SPINODES: u32 = 0x2;
const S_IFMT: u16 = 0o170000;
const S_IFDIR: u16 = 0o040000;
/// `di_format` of a data fork held as extent records in the inode, and as
/// the root of a block-map B+tree.
const FORMAT_EXTENTS: u8 = 2;
const FORMAT_BTREE: u8 = 3;
/// `di_flags2`: the extent counters are 64 bits wide (`nrext64`), and
/// `di_nextents` moved.
const DIFLAG2_NREXT64: u64 = 1 << 4;
/// Inodes per bit of a sparse chunk's 16-bit `holemask` (a chunk holds
/// 64).
const INODES_PER_HOLEMASK_BIT: u64 = 4;
/// The deepest B+trees followed (XFS's own limits are lower for any
/// filesystem that fits a device).
pub const MAX_TREE_LEVEL: u16 = 9;

/// The superblock's geometry: enough to find every allocation group's
/// headers, any block and any inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XfsLayout {
    /// Bytes per block.
    pub block_size: u64,
    /// Bytes per inode.
    pub inode_size: u64,
    sector_size: u64,
    /// Blocks of the filesystem (`sb_dblocks`): the last group may be
    /// shorter than the others.
    blocks: u64,
    ag_blocks: u64,
    ag_count: u64,
    ag_blk_log: u32,
    inopb_log: u32,
    /// Version 5: checksummed metadata, longer B+tree block headers and
    /// inode cores.
    crc: bool,
    /// Inode chunks may be partly unallocated.
    sparse: bool,
}

/// An inode B+tree block still to read: the block, and its level (0: a
/// leaf, whose records name inode chunks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InobtNode {
    /// Its allocation group.
    pub ag: u32,
    /// Its linear block number.
    pub block: u64,
    /// Its level, as its parent (or the AGI) says.
    pub level: u16,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    b.get(at..at + 2).map(|s| u16::from_be_bytes([s[0], s[1]]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn be64(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at + 8).map(|s| {
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        u64::from_be_bytes(a)
    })
}

/// `value` if it is a power of two within `range`, else the refusal.
fn power_of_two(field: &'static str, value: u64, range: Range<u64>) -> Result<u64, XfsRefusal> {
    if value.is_power_of_two() && range.contains(&value) {
        Ok(value)
    } else {
        Err(XfsRefusal::Field { field, value })
    }
}

impl XfsLayout {
    /// Read the geometry from the primary superblock (the first 512 bytes
    /// of the device, at least), checked as the kernel checks it at mount.
    pub fn from_superblock(sb: &[u8]) -> Result<Self, XfsRefusal> {
        if be32(sb, 0) != Some(SB_MAGIC) || sb.len() < 512 {
            return Err(XfsRefusal::NotXfs);
        }
        let field = |field: &'static str, value: u64| XfsRefusal::Field { field, value };
        let u32f = |at| u64::from(be32(sb, at).unwrap_or(0));
        let block_size = power_of_two("sb_blocksize", u32f(4), 512..65537)?;
        let sector_size = power_of_two(
            "sb_sectsize",
            u64::from(be16(sb, 102).unwrap_or(0)),
            512..32769,
        )?;
        let inode_size = power_of_two(
            "sb_inodesize",
            u64::from(be16(sb, 104).unwrap_or(0)),
            256..2049,
        )?;
        let ag_blocks = u32f(84);
        let ag_count = u32f(88);
        let ag_blk_log = u32::from(sb[124]);
        let inopb_log = u32::from(sb[123]);
        let version = be16(sb, 100).unwrap_or(0) & 0xf;
        if !(4..=5).contains(&version) {
            return Err(field("sb_versionnum", u64::from(version)));
        }
        if ag_blocks < 64 || ag_blk_log >= 32 || (1u64 << ag_blk_log) < ag_blocks {
            return Err(field("sb_agblocks", ag_blocks));
        }
        if ag_count == 0 {
            return Err(field("sb_agcount", ag_count));
        }
        if inode_size > block_size
            || inopb_log >= 16
            || (1u64 << inopb_log) != block_size / inode_size
        {
            return Err(field("sb_inopblog", u64::from(inopb_log)));
        }
        if sector_size > block_size {
            return Err(field("sb_sectsize", sector_size));
        }
        let blocks = ag_blocks
            .checked_mul(ag_count)
            .filter(|b| b.checked_mul(block_size).is_some())
            .ok_or(field("sb_agcount", ag_count))?;
        let dblocks = be64(sb, 8).unwrap_or(0);
        if dblocks > blocks || dblocks <= ag_blocks.saturating_mul(ag_count - 1) {
            return Err(field("sb_dblocks", dblocks));
        }
        let incompat = if version == 5 {
            be32(sb, 216).unwrap_or(0)
        } else {
            0
        };
        Ok(XfsLayout {
            block_size,
            inode_size,
            sector_size,
            blocks: dblocks,
            ag_blocks,
            ag_count,
            ag_blk_log,
            inopb_log,
            crc: version == 5,
            sparse: incompat & INCOMPAT_SPINODES != 0,
        })
    }

    /// Blocks of the filesystem: every linear block number found is below
    /// this.
    #[cfg(test)]
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// How many allocation groups there are.
    pub fn ag_count(&self) -> u32 {
        self.ag_count as u32
    }

    /// The allocation group holding inode `ino` (past the last one for a
    /// number no inode can have).
    pub fn ag_of(&self, ino: u64) -> u32 {
        let ag = ino >> (self.ag_blk_log + self.inopb_log);
        ag.min(self.ag_count) as u32
    }

    /// Device bytes of allocation group `ag`'s AGI (its third sector).
    pub fn agi(&self, ag: u32) -> Range<u64> {
        let start = u64::from(ag) * self.ag_blocks * self.block_size + 2 * self.sector_size;
        start..start + self.sector_size
    }

    /// Device bytes of linear block `block`.
    pub fn block(&self, block: u64) -> Range<u64> {
        block * self.block_size..(block + 1) * self.block_size
    }

    /// The root of group `ag`'s inode B+tree, from its AGI; `None` when the
    /// AGI is not that group's or names no sane root.
    pub fn inobt_root(&self, ag: u32, agi: &[u8]) -> Option<InobtNode> {
        if be32(agi, 0)? != AGI_MAGIC || be32(agi, 8)? != ag {
            return None;
        }
        let root = u64::from(be32(agi, 20)?);
        let level = be32(agi, 24)?;
        let block = u64::from(ag) * self.ag_blocks + root;
        if root >= self.ag_blocks
            || block >= self.blocks
            || !(1..=u32::from(MAX_TREE_LEVEL) + 1).contains(&level)
        {
            return None;
        }
        Some(InobtNode {
            ag,
            block,
            level: (level - 1) as u16,
        })
    }

    /// Length of a short-form B+tree block's header (inode B+tree).
    fn short_header(&self) -> usize {
        if self.crc {
            56
        } else {
            16
        }
    }

    /// Length of a long-form B+tree block's header (block-map B+tree).
    fn long_header(&self) -> usize {
        if self.crc {
            72
        } else {
            24
        }
    }

    /// Length of an inode's core, before its data fork.
    fn core_size(&self, version: u8) -> usize {
        if version >= 3 {
            176
        } else {
            100
        }
    }

    /// What inode B+tree block `node` holds: the blocks of the level below
    /// (into `children`), or, for a leaf, the device bytes of the allocated
    /// parts of its inode chunks (into `chunks`). A block that is not the
    /// node it should be (magic, level) adds nothing.
    pub fn inobt_node(
        &self,
        node: InobtNode,
        buf: &[u8],
        children: &mut Vec<InobtNode>,
        chunks: &mut Vec<Range<u64>>,
    ) {
        let magic = if self.crc {
            INOBT_CRC_MAGIC
        } else {
            INOBT_MAGIC
        };
        let (Some(m), Some(level), Some(numrecs)) = (be32(buf, 0), be16(buf, 4), be16(buf, 6))
        else {
            return;
        };
        if m != magic || level != node.level {
            return;
        }
        let hdr = self.short_header();
        let ag_base = u64::from(node.ag) * self.ag_blocks;
        let numrecs = usize::from(numrecs);
        if level > 0 {
            // Keys (4 bytes each) fill the first half of the room; the
            // pointers start after as many keys as could fit.
            let maxrecs = (buf.len().saturating_sub(hdr)) / 8;
            for i in 0..numrecs.min(maxrecs) {
                let Some(ptr) = be32(buf, hdr + maxrecs * 4 + i * 4).map(u64::from) else {
                    break;
                };
                if ptr < self.ag_blocks && ag_base + ptr < self.blocks {
                    children.push(InobtNode {
                        ag: node.ag,
                        block: ag_base + ptr,
                        level: level - 1,
                    });
                }
            }
            return;
        }
        let fs_bytes = self.blocks * self.block_size;
        let ag_bytes = self.ag_blocks * self.block_size;
        for i in 0..numrecs {
            let at = hdr + i * 16;
            let (Some(startino), Some(holemask)) = (be32(buf, at), be16(buf, at + 4)) else {
                break;
            };
            let startino = u64::from(startino);
            let holemask = if self.sparse { holemask } else { 0 };
            // An inode's byte offset in its group is its group-relative
            // number times the inode size (a block holds 2^inopblog).
            let mut bit = 0;
            while bit < 16 {
                if holemask & (1 << bit) != 0 {
                    bit += 1;
                    continue;
                }
                let first = bit;
                while bit < 16 && holemask & (1 << bit) == 0 {
                    bit += 1;
                }
                let from = startino + first * INODES_PER_HOLEMASK_BIT;
                let to = startino + bit * INODES_PER_HOLEMASK_BIT;
                let (start, end) = (from * self.inode_size, to * self.inode_size);
                let base = ag_base * self.block_size;
                if end <= ag_bytes && base + end <= fs_bytes {
                    chunks.push(base + start..base + end);
                }
            }
        }
    }

    /// The blocks of every directory among the inodes in `inodes` (whole
    /// inodes, as read from a chunk): runs of blocks for inodes holding
    /// their extents, block-map B+tree blocks to read in turn for those
    /// whose extents did not fit. Anything that is not a directory's sane
    /// inode is skipped.
    pub fn directory_blocks(&self, inodes: &[u8], out: &mut Vec<MetadataBlocks>) {
        let size = self.inode_size as usize;
        for inode in inodes.chunks_exact(size) {
            if be16(inode, 0) != Some(DINODE_MAGIC)
                || be16(inode, 2).is_none_or(|mode| mode & S_IFMT != S_IFDIR)
            {
                continue;
            }
            let version = inode[4];
            let format = inode[5];
            let core = self.core_size(version);
            // Version 3 inodes are exactly those of a version 5 filesystem.
            if (version >= 3) != self.crc || core >= size {
                continue;
            }
            // The data fork runs from the core to the attribute fork (its
            // offset in 8-byte units), or to the inode's end.
            let fork_end = match inode[82] {
                0 => size,
                off => (core + usize::from(off) * 8).min(size),
            };
            let Some(fork) = inode.get(core..fork_end) else {
                continue;
            };
            match format {
                FORMAT_EXTENTS => {
                    let big =
                        version >= 3 && be64(inode, 120).is_some_and(|f| f & DIFLAG2_NREXT64 != 0);
                    let n = if big {
                        be64(inode, 24).unwrap_or(0)
                    } else {
                        u64::from(be32(inode, 76).unwrap_or(0))
                    };
                    let fits = (fork.len() / 16) as u64;
                    self.extent_records(fork, n.min(fits) as usize, out);
                }
                FORMAT_BTREE => {
                    // The root in the inode: level, count, then keys and
                    // pointers (8 bytes each), the pointers after as many
                    // keys as the fork has room for.
                    let (Some(level), Some(numrecs)) = (be16(fork, 0), be16(fork, 2)) else {
                        continue;
                    };
                    if level == 0 || level > MAX_TREE_LEVEL {
                        continue;
                    }
                    let maxrecs = fork.len().saturating_sub(4) / 16;
                    self.tree_pointers(fork, 4 + maxrecs * 8, numrecs, maxrecs, level, out);
                }
                _ => {}
            }
        }
    }

    /// What block-map B+tree block `node` holds, read because its parent
    /// named it at `level`: the blocks of the level below, or (a leaf) the
    /// runs of the directory's blocks. A block that is not the node it
    /// should be adds nothing.
    pub fn bmbt_node(&self, node: &[u8], level: u16, out: &mut Vec<MetadataBlocks>) {
        let magic = if self.crc { BMAP_CRC_MAGIC } else { BMAP_MAGIC };
        let (Some(m), Some(l), Some(numrecs)) = (be32(node, 0), be16(node, 4), be16(node, 6))
        else {
            return;
        };
        if m != magic || l != level {
            return;
        }
        let hdr = self.long_header();
        let Some(body) = node.get(hdr..) else {
            return;
        };
        if level == 0 {
            let fits = body.len() / 16;
            self.extent_records(body, usize::from(numrecs).min(fits), out);
        } else {
            let maxrecs = body.len() / 16;
            self.tree_pointers(body, maxrecs * 8, numrecs, maxrecs, level, out);
        }
    }

    /// The first `n` packed extent records of `recs` as runs of blocks
    /// (unwritten extents, which hold nothing, left out).
    fn extent_records(&self, recs: &[u8], n: usize, out: &mut Vec<MetadataBlocks>) {
        for i in 0..n {
            let (Some(l0), Some(l1)) = (be64(recs, i * 16), be64(recs, i * 16 + 8)) else {
                break;
            };
            if l0 >> 63 != 0 {
                continue;
            }
            let start = ((l0 & 0x1ff) << 43) | (l1 >> 21);
            let count = l1 & ((1 << 21) - 1);
            // An extent never crosses from one group into the next.
            if let Some(first) = self.linear(start) {
                let group_end = (first / self.ag_blocks + 1) * self.ag_blocks;
                if count > 0 && first + count <= group_end.min(self.blocks) {
                    out.push(MetadataBlocks::Directory(first..first + count));
                }
            }
        }
    }

    /// The `numrecs` pointers (8-byte filesystem block numbers) at `at` in
    /// `node`, a node at `level` with room for `maxrecs`: each child is a
    /// block to read at `level - 1`.
    fn tree_pointers(
        &self,
        node: &[u8],
        at: usize,
        numrecs: u16,
        maxrecs: usize,
        level: u16,
        out: &mut Vec<MetadataBlocks>,
    ) {
        for i in 0..usize::from(numrecs).min(maxrecs) {
            let Some(fsb) = be64(node, at + i * 8) else {
                break;
            };
            if let Some(block) = self.linear(fsb) {
                out.push(MetadataBlocks::ExtentNode {
                    block,
                    depth: level - 1,
                });
            }
        }
    }

    /// XFS's block number (`ag << agblklog | agbno`) as a linear one, if it
    /// names a block inside the filesystem.
    fn linear(&self, fsb: u64) -> Option<u64> {
        let ag = fsb >> self.ag_blk_log;
        let agbno = fsb & ((1u64 << self.ag_blk_log) - 1);
        let block = ag * self.ag_blocks + agbno;
        (ag < self.ag_count && agbno < self.ag_blocks && block < self.blocks).then_some(block)
    }
}

#[cfg(test)]
mod tests {
    //! On filesystems made by `mkfs.xfs -p` from a prototype file (no root
    //! needed), checked against `xfs_db`, which reads the same structures
    //! its own way.

    use super::*;
    use crate::map::test_images::{follow, read, run, tool};
    use std::collections::BTreeSet;
    use std::path::Path;
    use std::process::Command;

    /// A prototype of nested and side-by-side directories, a few of some
    /// dozens of entries (held in blocks), and one big directory whose
    /// blocks, allocated between its files' data, are too many extents for
    /// its inode (a block-map B+tree). Returns it and its directories.
    fn prototype(content: &Path) -> (String, Vec<String>) {
        let file = |name: &str| format!("{name} ---644 0 0 {}", content.display());
        let mut lines = vec!["prewarm".to_string(), "0 0".into(), "d--755 0 0".into()];
        let mut dirs = vec!["/".to_string()];
        for a in 0..12 {
            lines.push(format!("layer{a} d--755 0 0"));
            let mut path = format!("/layer{a}");
            dirs.push(path.clone());
            for depth in 0..5 {
                lines.push(format!("d{depth} d--755 0 0"));
                path = format!("{path}/d{depth}");
                dirs.push(path.clone());
                lines.push(file("f"));
            }
            for _ in 0..6 {
                lines.push("$".into());
            }
        }
        for m in 0..8 {
            lines.push(format!("mid{m} d--755 0 0"));
            dirs.push(format!("/mid{m}"));
            for i in 0..60 {
                lines.push(file(&format!("entry-{i:03}")));
            }
            lines.push("$".into());
        }
        lines.push("big d--755 0 0".into());
        dirs.push("/big".into());
        for i in 0..3000 {
            lines.push(file(&format!("a-rather-long-file-name-{i:05}")));
        }
        lines.push("$".into());
        lines.push("$".into());
        (lines.join("\n") + "\n", dirs)
    }

    /// Everything this module finds in the image: the layout, the inode
    /// chunks, every directory block and block-map B+tree block (linear),
    /// and how many tree blocks were followed.
    fn found(image: &Path) -> (XfsLayout, Vec<Range<u64>>, BTreeSet<u64>, usize) {
        let f = std::fs::File::open(image).unwrap();
        let layout = XfsLayout::from_superblock(&read(&f, 0..4096)).unwrap();
        let mut level: Vec<InobtNode> = (0..layout.ag_count())
            .filter_map(|ag| layout.inobt_root(ag, &read(&f, layout.agi(ag))))
            .collect();
        assert_eq!(level.len(), layout.ag_count() as usize);
        let mut chunks = Vec::new();
        while !level.is_empty() {
            let mut next = Vec::new();
            for n in level {
                layout.inobt_node(n, &read(&f, layout.block(n.block)), &mut next, &mut chunks);
            }
            level = next;
        }
        let mut todo = Vec::new();
        for c in &chunks {
            layout.directory_blocks(&read(&f, c.clone()), &mut todo);
        }
        let (blocks, nodes) = follow(todo, |block, depth, todo| {
            layout.bmbt_node(&read(&f, layout.block(block)), depth, todo)
        });
        (layout, chunks, blocks, nodes)
    }

    /// `xfs_db`'s answers to `commands`, run read-only on `image`.
    fn xfs_db(image: &Path, commands: &[String]) -> String {
        let mut cmd = Command::new("xfs_db");
        cmd.arg("-r");
        for c in commands {
            cmd.args(["-c", c]);
        }
        let out = cmd.arg(image).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Build an image with `extra` mkfs options and check that every
    /// directory's blocks and inode are found; returns the layout and the
    /// block-map tree blocks followed.
    fn check_image(extra: &[&str]) -> Option<(XfsLayout, usize)> {
        if !tool("mkfs.xfs") || !tool("xfs_db") {
            return None;
        }
        let tmp = tempfile::tempdir().unwrap();
        let content = tmp.path().join("content");
        std::fs::write(&content, b"some bytes").unwrap();
        let (proto, dirs) = prototype(&content);
        std::fs::write(tmp.path().join("proto"), proto).unwrap();
        let image = tmp.path().join("fs.img");
        // mkfs.xfs wants 300 MB at least; the file stays sparse.
        std::fs::File::create(&image)
            .unwrap()
            .set_len(320 << 20)
            .unwrap();
        run(Command::new("mkfs.xfs")
            .args(["-q", "-f"])
            .args(extra)
            .arg("-p")
            .arg(tmp.path().join("proto"))
            .arg(&image));
        let (layout, chunks, blocks, nodes) = found(&image);
        assert!(layout.ag_count() > 1, "{layout:?}");
        for dir in &dirs {
            // `inode` names the directory's inode, `bmap` its extents as
            // "(ag/agbno) count N".
            let said = xfs_db(
                &image,
                &[format!("path {dir}"), "inode".into(), "bmap".into()],
            );
            let ino: u64 = said
                .split("current inode number is ")
                .nth(1)
                .and_then(|s| s.split_whitespace().next())
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("{dir}: {said}"));
            let byte: u64 = xfs_db(&image, &[format!("convert ino {ino} byte")])
                .split(['(', ')'])
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("the byte of inode {ino}"));
            assert!(
                chunks.iter().any(|c| c.start <= byte && byte < c.end),
                "the inode of {dir} ({ino}, byte {byte}) is in no chunk found"
            );
            for line in said.lines().filter(|l| l.contains(" count ")) {
                let (ag, agbno) = line
                    .split(['(', ')'])
                    .nth(1)
                    .and_then(|s| s.split_once('/'))
                    .map(|(a, b)| (a.parse::<u64>().unwrap(), b.parse::<u64>().unwrap()))
                    .unwrap_or_else(|| panic!("{dir}: {line}"));
                let count: u64 = line
                    .split(" count ")
                    .nth(1)
                    .and_then(|s| s.split_whitespace().next())
                    .and_then(|s| s.parse().ok())
                    .unwrap();
                let first = ag * layout.ag_blocks + agbno;
                for b in first..first + count {
                    assert!(blocks.contains(&b), "block {b} of {dir} not found ({line})");
                }
            }
        }
        Some((layout, nodes))
    }

    #[test]
    fn finds_every_directory_block_and_inode_of_a_real_filesystem() {
        // Version 5, sparse inode chunks, 4 KiB blocks.
        if let Some((layout, nodes)) = check_image(&[]) {
            assert!(layout.crc && layout.sparse, "{layout:?}");
            // The big directory's extents do not fit in its inode.
            assert!(nodes > 0);
        }
    }

    #[test]
    fn follows_block_map_trees_of_small_blocks() {
        if let Some((layout, nodes)) = check_image(&["-b", "size=1024"]) {
            assert_eq!(layout.block_size, 1024);
            assert!(nodes > 0);
        }
    }

    #[test]
    fn reads_version_4_headers_and_inodes() {
        if let Some((layout, nodes)) = check_image(&["-m", "crc=0"]) {
            assert!(!layout.crc && !layout.sparse, "{layout:?}");
            assert!(nodes > 0);
        }
    }

    /// A version 5 superblock: 4 KiB blocks, 4 groups of 16384 blocks,
    /// 512-byte inodes, sparse inode chunks.
    fn sane_superblock() -> Vec<u8> {
        let mut sb = vec![0u8; 512];
        sb[0..4].copy_from_slice(&SB_MAGIC.to_be_bytes());
        sb[4..8].copy_from_slice(&4096u32.to_be_bytes());
        sb[8..16].copy_from_slice(&65536u64.to_be_bytes());
        sb[84..88].copy_from_slice(&16384u32.to_be_bytes());
        sb[88..92].copy_from_slice(&4u32.to_be_bytes());
        sb[100..102].copy_from_slice(&0xb4a5u16.to_be_bytes());
        sb[102..104].copy_from_slice(&512u16.to_be_bytes());
        sb[104..106].copy_from_slice(&512u16.to_be_bytes());
        sb[123] = 3;
        sb[124] = 14;
        sb[216..220].copy_from_slice(&INCOMPAT_SPINODES.to_be_bytes());
        sb
    }

    #[test]
    fn a_sane_superblock_gives_its_geometry() {
        let l = XfsLayout::from_superblock(&sane_superblock()).unwrap();
        assert_eq!((l.block_size, l.inode_size, l.blocks()), (4096, 512, 65536));
        assert_eq!(l.ag_count(), 4);
        assert!(l.crc && l.sparse);
        assert_eq!(l.agi(1), 16384 * 4096 + 1024..16384 * 4096 + 1536);
        // Inode 2^17 + 5 (inopblog 3 + agblklog 14 bits of group-relative
        // number) is in group 1.
        assert_eq!(l.ag_of((1 << 17) + 5), 1);
        // XFS's block numbers put the group above agblklog bits.
        assert_eq!(l.linear((2 << 14) | 7), Some(2 * 16384 + 7));
        assert_eq!(l.linear((4 << 14) | 7), None);
        assert_eq!(l.linear(1 << 14), Some(16384), "group 1, block 0");
    }

    #[test]
    fn refuses_what_is_not_a_sane_xfs_superblock() {
        assert_eq!(
            XfsLayout::from_superblock(&[0u8; 512]),
            Err(XfsRefusal::NotXfs)
        );
        let mut sb = sane_superblock();
        sb[4..8].copy_from_slice(&4095u32.to_be_bytes());
        assert!(matches!(
            XfsLayout::from_superblock(&sb),
            Err(XfsRefusal::Field {
                field: "sb_blocksize",
                ..
            })
        ));
        let mut sb = sane_superblock();
        sb[8..16].copy_from_slice(&(u64::MAX / 2).to_be_bytes());
        assert!(XfsLayout::from_superblock(&sb).is_err());
        let mut sb = sane_superblock();
        sb[124] = 13;
        assert!(
            XfsLayout::from_superblock(&sb).is_err(),
            "agblklog too small"
        );
    }

    proptest::proptest! {
        /// A sane superblock with a few bytes changed, and any AGI, tree
        /// blocks and inodes: a refusal or a layout, never a panic, and
        /// never a chunk, block or node outside the filesystem, nor a tree
        /// node that is not below its parent.
        #[test]
        fn damaged_metadata_never_panics_nor_points_outside(
            changes in proptest::collection::vec((0..512usize, proptest::prelude::any::<u8>()), 0..6),
            block in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4096),
            level in 0u16..4,
        ) {
            let mut sb = sane_superblock();
            for (at, v) in changes {
                sb[at] = v;
            }
            if let Ok(layout) = XfsLayout::from_superblock(&sb) {
                let end = layout.blocks() * layout.block_size;
                let _ = layout.inobt_root(0, &block);
                // The same bytes behind the headers each parser looks for,
                // so that they get past the magic to the records.
                let mut node = block.clone();
                node.resize(4096, 0);
                let header = |magic: u32, node: &mut Vec<u8>| {
                    node[0..4].copy_from_slice(&magic.to_be_bytes());
                    node[4..6].copy_from_slice(&level.to_be_bytes());
                };
                let mut inobt = node.clone();
                header(if layout.crc { INOBT_CRC_MAGIC } else { INOBT_MAGIC }, &mut inobt);
                let mut bmbt = node.clone();
                header(if layout.crc { BMAP_CRC_MAGIC } else { BMAP_MAGIC }, &mut bmbt);
                let mut inodes = node.clone();
                for (i, inode) in inodes.chunks_exact_mut(layout.inode_size as usize).enumerate() {
                    inode[0..2].copy_from_slice(&DINODE_MAGIC.to_be_bytes());
                    inode[2..4].copy_from_slice(&0o40755u16.to_be_bytes());
                    inode[4] = if layout.crc { 3 } else { 2 };
                    inode[5] = if i % 2 == 0 { FORMAT_EXTENTS } else { FORMAT_BTREE };
                }
                let mut children = Vec::new();
                let mut chunks = Vec::new();
                let parent = InobtNode { ag: 1, block: layout.ag_blocks, level };
                layout.inobt_node(parent, &inobt, &mut children, &mut chunks);
                for c in chunks {
                    proptest::prop_assert!(c.start < c.end && c.end <= end);
                }
                for n in children {
                    proptest::prop_assert!(n.block < layout.blocks() && n.level < level);
                }
                let mut out = Vec::new();
                layout.directory_blocks(&inodes, &mut out);
                layout.bmbt_node(&bmbt, level, &mut out);
                for m in out {
                    match m {
                        MetadataBlocks::Directory(r) => proptest::prop_assert!(r.end <= layout.blocks()),
                        MetadataBlocks::ExtentNode { block, depth } => {
                            proptest::prop_assert!(block < layout.blocks() && depth < MAX_TREE_LEVEL)
                        }
                    }
                }
            }
        }
    }
}
