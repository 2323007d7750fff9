//! Where ext4 keeps the metadata a walk fetches: the used part of each
//! group's inode table (from the group descriptors) and the blocks of every
//! directory (from the directories' inodes and extent trees).
//!
//! This is what `readahead` needs to read a cold filesystem's metadata
//! wide instead of one dependent fetch at a time: the tables are known from
//! the superblock and descriptors alone, and the directory blocks from the
//! tables, so two rounds of parallel reads find what a walk would reach
//! through a chain of lookups (inode → directory block → child inode → ...).
//!
//! Parsing only: the bytes come from the caller. They are untrusted (a
//! device can hold anything), so every field is range-checked, every slice
//! is taken with `get`, and what does not add up is refused or skipped,
//! never trusted to size an allocation or a read.

use std::ops::Range;

use super::extent::Extent;
use super::fiemap::{FlaggedExtent, FIEMAP_EXTENT_UNWRITTEN};
use super::readahead::MetadataBlocks;

/// Why a superblock or descriptor table is not read ahead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Ext4Refusal {
    /// No ext4 magic (another filesystem, or none).
    #[error("not ext4")]
    NotExt4,
    /// A superblock field out of the range the kernel itself accepts.
    #[error("superblock field {field} = {value} is out of range")]
    Field {
        /// The field, as ext4 names it.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// A layout this reader does not follow (named).
    #[error("{0} is not supported")]
    Unsupported(&'static str),
    /// The descriptor table is shorter than the superblock says.
    #[error("group descriptor table truncated: {have} of {need} bytes")]
    Truncated {
        /// Bytes given.
        have: usize,
        /// Bytes the groups need.
        need: u64,
    },
}

const MAGIC: u16 = 0xEF53;
const INCOMPAT_META_BG: u32 = 0x10;
const INCOMPAT_64BIT: u32 = 0x80;
const RO_COMPAT_GDT_CSUM: u32 = 0x10;
const RO_COMPAT_METADATA_CSUM: u32 = 0x400;
/// `bg_flags`: the group's inode table was never used.
const BG_INODE_UNINIT: u16 = 0x1;
const S_IFMT: u16 = 0o170000;
const S_IFDIR: u16 = 0o040000;
const S_IFREG: u16 = 0o100000;
const ENCRYPT_FL: u32 = 0x800;
const EXTENTS_FL: u32 = 0x0008_0000;
const INLINE_DATA_FL: u32 = 0x1000_0000;
const EXTENT_MAGIC: u16 = 0xF30A;
/// ext4's extent trees are at most this deep (`EXT4_MAX_EXTENT_DEPTH`).
pub const MAX_EXTENT_DEPTH: u16 = 5;
/// An extent longer than this is unwritten (`EXT_INIT_MAX_LEN`).
const INIT_MAX_LEN: u16 = 32768;
/// The largest descriptor table read ahead (512 Ki groups of 64 bytes: a
/// 64 TiB filesystem at 4 KiB blocks); beyond it, nothing is read ahead.
pub const MAX_DESCRIPTOR_BYTES: u64 = 32 << 20;

/// The superblock's geometry: enough to find the group descriptors, the
/// inode tables and any block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ext4Layout {
    /// Bytes per block.
    pub block_size: u64,
    /// Blocks in the filesystem.
    pub blocks: u64,
    /// Bytes per inode in the tables.
    pub inode_size: u64,
    inodes_per_group: u64,
    groups: u64,
    desc_size: u64,
    first_data_block: u64,
    /// `bg_itable_unused` is kept up to date (checksummed descriptors), so
    /// the used part of each table is known.
    unused_known: bool,
    /// When the filesystem was last mounted writable (`s_mtime`, seconds
    /// since the epoch): an inode changed no later than this is, on the
    /// device, as the kernel has it.
    pub last_mounted: i64,
}

/// A regular file as its inode describes it: enough to plan its reads
/// without opening it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegularInode {
    /// `i_size` (as written to the inode).
    pub size: u64,
    /// `i_mtime`, seconds and nanoseconds, as `stat` gives it.
    pub mtime: (i64, i64),
    /// `i_ctime`, seconds: when the inode last changed.
    pub changed: i64,
    /// Its extents in logical order, in bytes; unwritten ones flagged
    /// `FIEMAP_EXTENT_UNWRITTEN`, as FIEMAP reports them.
    pub extents: Vec<FlaggedExtent>,
}

/// The used part of one group's inode table, in device bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InodeTable {
    /// The group.
    pub group: u32,
    /// Its bytes on the device: from the table's start, as many inodes as
    /// the group has used.
    pub offset: u64,
    /// Length in bytes (whole inodes).
    pub len: u64,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    b.get(at..at + 2)
        .map_or(0, |s| u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

impl Ext4Layout {
    /// Where the superblock is: bytes 1024 to 2048 of the device.
    pub const SUPERBLOCK: Range<u64> = 1024..2048;

    /// Read the geometry from the 1024 bytes of a superblock, checked as
    /// the kernel checks it at mount.
    pub fn from_superblock(sb: &[u8]) -> Result<Self, Ext4Refusal> {
        if sb.len() < 1024 || u16_at(sb, 0x38) != MAGIC {
            return Err(Ext4Refusal::NotExt4);
        }
        let field = |field, value: u64| Ext4Refusal::Field { field, value };
        let log_block = u32_at(sb, 0x18);
        if log_block > 6 {
            return Err(field("s_log_block_size", log_block.into()));
        }
        let block_size = 1024u64 << log_block;
        let incompat = u32_at(sb, 0x60);
        let ro_compat = u32_at(sb, 0x64);
        if incompat & INCOMPAT_META_BG != 0 {
            // Descriptors are spread over the groups instead of following
            // the superblock.
            return Err(Ext4Refusal::Unsupported("meta_bg"));
        }
        let is64 = incompat & INCOMPAT_64BIT != 0;
        let mut blocks = u64::from(u32_at(sb, 0x04));
        if is64 {
            blocks |= u64::from(u32_at(sb, 0x150)) << 32;
        }
        if blocks.checked_mul(block_size).is_none() {
            return Err(field("s_blocks_count", blocks));
        }
        let first_data_block = u64::from(u32_at(sb, 0x14));
        if first_data_block >= blocks || first_data_block > 1 {
            return Err(field("s_first_data_block", first_data_block));
        }
        let blocks_per_group = u64::from(u32_at(sb, 0x20));
        if blocks_per_group == 0 || blocks_per_group > 8 * block_size {
            return Err(field("s_blocks_per_group", blocks_per_group));
        }
        let inodes_per_group = u64::from(u32_at(sb, 0x28));
        if inodes_per_group == 0 || inodes_per_group > 8 * block_size {
            return Err(field("s_inodes_per_group", inodes_per_group));
        }
        let inode_size = match u32_at(sb, 0x4C) {
            0 => 128,
            _ => u64::from(u16_at(sb, 0x58)),
        };
        if !(128..=block_size).contains(&inode_size) || !inode_size.is_power_of_two() {
            return Err(field("s_inode_size", inode_size));
        }
        let desc_size = if is64 {
            u64::from(u16_at(sb, 0xFE))
        } else {
            32
        };
        let least = if is64 { 64 } else { 32 };
        if !(least..=1024).contains(&desc_size) || !desc_size.is_power_of_two() {
            return Err(field("s_desc_size", desc_size));
        }
        let groups = (blocks - first_data_block).div_ceil(blocks_per_group);
        let inodes = u64::from(u32_at(sb, 0x00));
        if groups.checked_mul(inodes_per_group) != Some(inodes) {
            return Err(field("s_inodes_count", inodes));
        }
        if groups * desc_size > MAX_DESCRIPTOR_BYTES {
            return Err(Ext4Refusal::Unsupported("a descriptor table over 32 MiB"));
        }
        Ok(Ext4Layout {
            block_size,
            blocks,
            inode_size,
            inodes_per_group,
            groups,
            desc_size,
            first_data_block,
            unused_known: ro_compat & (RO_COMPAT_GDT_CSUM | RO_COMPAT_METADATA_CSUM) != 0,
            last_mounted: i64::from(u32_at(sb, 0x2C)) | i64::from(sb[0x275]) << 32,
        })
    }

    /// Where the group descriptor table is, in device bytes: the block
    /// after the superblock's, one descriptor per group.
    pub fn descriptors(&self) -> Range<u64> {
        let start = (self.first_data_block + 1) * self.block_size;
        start..start + self.groups * self.desc_size
    }

    /// The group that holds inode `ino` (inodes count from 1).
    pub fn group_of(&self, ino: u64) -> u64 {
        ino.saturating_sub(1) / self.inodes_per_group
    }

    /// [`Ext4Layout::inode_tables`] indexed by group (`None`: a group
    /// left out), for [`Ext4Layout::inode_offset`].
    pub fn inode_tables_by_group(
        &self,
        gdt: &[u8],
    ) -> Result<Vec<Option<InodeTable>>, Ext4Refusal> {
        let mut by_group = vec![None; self.groups as usize];
        for t in self.inode_tables(gdt)? {
            by_group[t.group as usize] = Some(t);
        }
        Ok(by_group)
    }

    /// Where inode `ino`'s bytes are on the device, given the used tables
    /// (from [`Ext4Layout::inode_tables_by_group`]): `None` for an inode
    /// outside them (never used, or in a group whose table is out of range).
    pub fn inode_offset(&self, tables: &[Option<InodeTable>], ino: u64) -> Option<u64> {
        let index = ino.checked_sub(1)?;
        let table = tables.get(usize::try_from(self.group_of(ino)).ok()?)?;
        let at = (index % self.inodes_per_group) * self.inode_size;
        let table = table.as_ref()?;
        (at < table.len).then_some(table.offset + at)
    }

    /// The regular file `inode` (the bytes of one inode) describes, if it is
    /// a live regular file whose extents all fit in the inode and lie inside
    /// the filesystem. Anything else (inline data, encryption, the ext2/3
    /// block map, an extent tree with blocks of its own, a field out of
    /// range) is `None`: FIEMAP, through the open file, maps those.
    pub fn regular_file(&self, inode: &[u8]) -> Option<RegularInode> {
        if inode.len() < 128 || u16_at(inode, 0x00) & S_IFMT != S_IFREG {
            return None;
        }
        if u16_at(inode, 0x1A) == 0 || u32_at(inode, 0x14) != 0 {
            return None;
        }
        let flags = u32_at(inode, 0x20);
        if flags & EXTENTS_FL == 0 || flags & (INLINE_DATA_FL | ENCRYPT_FL) != 0 {
            return None;
        }
        let root = inode.get(0x28..0x28 + 60)?;
        let entries = u16_at(root, 2);
        if u16_at(root, 0) != EXTENT_MAGIC || entries > 4 || u16_at(root, 6) != 0 {
            return None;
        }
        let bs = self.block_size;
        let mut extents = Vec::with_capacity(usize::from(entries));
        for e in 0..usize::from(entries) {
            let entry = root.get(12 + 12 * e..24 + 12 * e)?;
            let (len, flags) = match u16_at(entry, 4) {
                len if len > INIT_MAX_LEN => (len - INIT_MAX_LEN, FIEMAP_EXTENT_UNWRITTEN),
                len => (len, 0),
            };
            let start = u64::from(u32_at(entry, 8)) | (u64::from(u16_at(entry, 6)) << 32);
            if len == 0 || start == 0 || start + u64::from(len) > self.blocks {
                return None;
            }
            extents.push(FlaggedExtent {
                extent: Extent {
                    logical: u64::from(u32_at(entry, 0)) * bs,
                    physical: start * bs,
                    length: u64::from(len) * bs,
                },
                flags,
            });
        }
        // Seconds are signed; the extra field, when the inode is big enough
        // to hold it (`i_extra_isize` counts from byte 0x80), adds two bits
        // of epoch and the nanoseconds.
        let extra_end = 0x80 + usize::from(u16_at(inode, 0x80));
        let time = |at: usize, extra_at: usize| {
            let secs = i64::from(u32_at(inode, at) as i32);
            if inode.len() > 0x80 && extra_end >= extra_at + 4 {
                let x = u32_at(inode, extra_at);
                (secs + (i64::from(x & 3) << 32), i64::from(x >> 2))
            } else {
                (secs, 0)
            }
        };
        Some(RegularInode {
            size: u64::from(u32_at(inode, 0x04)) | u64::from(u32_at(inode, 0x6C)) << 32,
            mtime: time(0x10, 0x88),
            changed: time(0x0C, 0x84).0,
            extents,
        })
    }

    /// The used part of each group's inode table, from the descriptor
    /// table's bytes (see [`Ext4Layout::descriptors`]). Groups whose table
    /// was never used are left out; a table outside the filesystem is left
    /// out too (the rest are still read).
    pub fn inode_tables(&self, gdt: &[u8]) -> Result<Vec<InodeTable>, Ext4Refusal> {
        let need = self.groups * self.desc_size;
        if (gdt.len() as u64) < need {
            return Err(Ext4Refusal::Truncated {
                have: gdt.len(),
                need,
            });
        }
        let table_blocks = (self.inodes_per_group * self.inode_size).div_ceil(self.block_size);
        let mut tables = Vec::new();
        for (group, d) in gdt
            .chunks_exact(self.desc_size as usize)
            .take(self.groups as usize)
            .enumerate()
        {
            let mut start = u64::from(u32_at(d, 0x08));
            let mut unused = u64::from(u16_at(d, 0x1C));
            if self.desc_size >= 64 {
                start |= u64::from(u32_at(d, 0x28)) << 32;
                unused |= u64::from(u16_at(d, 0x32)) << 16;
            }
            let flags = u16_at(d, 0x12);
            if self.unused_known && flags & BG_INODE_UNINIT != 0 {
                continue;
            }
            let used = if self.unused_known {
                self.inodes_per_group.saturating_sub(unused)
            } else {
                self.inodes_per_group
            };
            if used == 0 || start == 0 || start.saturating_add(table_blocks) > self.blocks {
                continue;
            }
            tables.push(InodeTable {
                group: group as u32,
                offset: start * self.block_size,
                len: used * self.inode_size,
            });
        }
        Ok(tables)
    }

    /// The directory blocks and extent tree nodes named by the inodes in
    /// `table` (whole inodes of an inode table), appended to `out`.
    /// Inodes that are not live directories are skipped, as are
    /// directories kept inline in their inode (nothing to read) and block
    /// numbers outside the filesystem.
    pub fn directory_blocks(&self, table: &[u8], out: &mut Vec<MetadataBlocks>) {
        for inode in table.chunks_exact(self.inode_size as usize) {
            let mode = u16_at(inode, 0x00);
            if mode & S_IFMT != S_IFDIR || u16_at(inode, 0x1A) == 0 || u32_at(inode, 0x14) != 0 {
                continue;
            }
            let flags = u32_at(inode, 0x20);
            let Some(i_block) = inode.get(0x28..0x28 + 60) else {
                continue;
            };
            if flags & INLINE_DATA_FL != 0 {
                continue;
            }
            if flags & EXTENTS_FL != 0 {
                self.extent_node(i_block, MAX_EXTENT_DEPTH, out);
            } else {
                // The block map of ext2/3: the twelve direct blocks (the
                // indirect ones are left to the walk).
                for b in 0..12 {
                    let block = u64::from(u32_at(i_block, 4 * b));
                    self.push_run(block, 1, out);
                }
            }
        }
    }

    /// The entries of an extent tree node (the 60 bytes in an inode, or a
    /// tree block read from the device) whose depth may be at most
    /// `max_depth`: leaves give directory blocks, index entries the nodes
    /// below.
    pub fn extent_node(&self, node: &[u8], max_depth: u16, out: &mut Vec<MetadataBlocks>) {
        if u16_at(node, 0) != EXTENT_MAGIC {
            return;
        }
        let entries = usize::from(u16_at(node, 2));
        let depth = u16_at(node, 6);
        if depth > max_depth {
            return;
        }
        for e in 0..entries {
            let at = 12 + 12 * e;
            let Some(entry) = node.get(at..at + 12) else {
                break;
            };
            if depth == 0 {
                let len = u16_at(entry, 4);
                if len > INIT_MAX_LEN {
                    // Unwritten: nothing on the device yet.
                    continue;
                }
                let start = u64::from(u32_at(entry, 8)) | (u64::from(u16_at(entry, 6)) << 32);
                self.push_run(start, u64::from(len), out);
            } else {
                let block = u64::from(u32_at(entry, 4)) | (u64::from(u16_at(entry, 8)) << 32);
                if block != 0 && block < self.blocks {
                    out.push(MetadataBlocks::ExtentNode {
                        block,
                        depth: depth - 1,
                    });
                }
            }
        }
    }

    fn push_run(&self, start: u64, len: u64, out: &mut Vec<MetadataBlocks>) {
        if start == 0 || len == 0 || start.saturating_add(len) > self.blocks {
            return;
        }
        match out.last_mut() {
            Some(MetadataBlocks::Directory(r)) if r.end == start => r.end = start + len,
            _ => out.push(MetadataBlocks::Directory(start..start + len)),
        }
    }
}

#[cfg(test)]
mod tests {
    //! On filesystems made by `mkfs.ext4 -d` (no root needed), checked
    //! against `debugfs`, which reads the same structures its own way.

    use super::*;
    use crate::map::test_images::{follow, read, run, tool};
    use std::collections::BTreeSet;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// A tree of `dirs` nested and side-by-side directories, one big
    /// directory (an htree of several blocks) and a few files.
    fn tree(root: &Path) -> Vec<PathBuf> {
        let mut dirs = vec![root.to_path_buf()];
        for a in 0..20 {
            let mut d = root.join(format!("layer{a}"));
            for depth in 0..6 {
                d = d.join(format!("d{depth}"));
                std::fs::create_dir_all(&d).unwrap();
                dirs.push(d.clone());
                std::fs::write(d.join("f"), b"x").unwrap();
            }
        }
        let big = root.join("big");
        std::fs::create_dir(&big).unwrap();
        dirs.push(big.clone());
        for i in 0..600 {
            std::fs::write(big.join(format!("a-rather-long-file-name-{i:05}")), b"y").unwrap();
        }
        dirs
    }

    fn mkfs(image: &Path, src: &Path, extra: &[&str]) {
        std::fs::File::create(image)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-d"])
            .arg(src)
            .args(extra)
            .arg(image));
    }

    /// Every directory block and directory extent tree block of the image,
    /// as this module finds them.
    fn found_blocks(image: &Path) -> (Ext4Layout, Vec<InodeTable>, BTreeSet<u64>, usize) {
        let f = std::fs::File::open(image).unwrap();
        let layout = Ext4Layout::from_superblock(&read(&f, Ext4Layout::SUPERBLOCK)).unwrap();
        let tables = layout
            .inode_tables(&read(&f, layout.descriptors()))
            .unwrap();
        let mut todo = Vec::new();
        for t in &tables {
            layout.directory_blocks(&read(&f, t.offset..t.offset + t.len), &mut todo);
        }
        let bs = layout.block_size;
        let (blocks, nodes) = follow(todo, |block, depth, todo| {
            layout.extent_node(&read(&f, block * bs..(block + 1) * bs), depth, todo)
        });
        (layout, tables, blocks, nodes)
    }

    /// What `debugfs ARGS IMAGE` prints (`-R REQUEST`, or `-f FILE` of
    /// requests).
    fn debugfs<A: AsRef<std::ffi::OsStr>>(image: &Path, args: [A; 2]) -> String {
        let out = Command::new("debugfs")
            .args(args)
            .arg(image)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Build an image with `extra` mkfs options and check that every
    /// directory's blocks and inode are found; returns the extent tree
    /// blocks followed.
    fn check_image(extra: &[&str]) -> usize {
        if !tool("mkfs.ext4") || !tool("debugfs") {
            return 1;
        }
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir(&src).unwrap();
        let dirs = tree(&src);
        let image = tmp.path().join("fs.img");
        mkfs(&image, &src, extra);
        let (layout, tables, blocks, nodes) = found_blocks(&image);
        assert!(!tables.is_empty());
        for dir in &dirs {
            let name = format!("/{}", dir.strip_prefix(&src).unwrap().display());
            // `blocks` lists a directory's blocks (its extent tree's too);
            // `imap` says where its inode is.
            let listed: Vec<u64> = debugfs(&image, ["-R", &format!("blocks {name}")])
                .split_whitespace()
                .map(|b| b.parse().unwrap())
                .collect();
            assert!(!listed.is_empty(), "debugfs lists no blocks for {name}");
            for b in listed {
                assert!(blocks.contains(&b), "block {b} of {name} not found");
            }
            let imap = debugfs(&image, ["-R", &format!("imap {name}")]);
            let block: u64 = imap
                .split("located at block ")
                .nth(1)
                .and_then(|s| s.split(',').next())
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or_else(|| panic!("imap {name}: {imap}"));
            let at = block * layout.block_size;
            assert!(
                tables
                    .iter()
                    .any(|t| t.offset <= at && at < t.offset + t.len),
                "the inode of {name} (block {block}) is outside the used tables"
            );
        }
        nodes
    }

    #[test]
    fn finds_every_directory_block_and_inode_of_a_real_filesystem() {
        // The big directory's extents do not fit in its inode.
        assert!(check_image(&[]) > 0);
    }

    #[test]
    fn reads_whole_tables_when_the_unused_counts_are_not_kept() {
        check_image(&["-O", "^metadata_csum,^uninit_bg"]);
    }

    #[test]
    fn follows_deep_extent_trees_and_32_byte_descriptors() {
        // No 64bit: 32-byte descriptors. Small blocks make the big
        // directory's extents spill out of the inode into tree blocks.
        assert!(check_image(&["-O", "^64bit", "-b", "1024"]) > 0);
    }

    #[test]
    fn refuses_what_is_not_a_sane_ext4_superblock() {
        assert_eq!(
            Ext4Layout::from_superblock(&[0; 1024]),
            Err(Ext4Refusal::NotExt4)
        );
        assert_eq!(
            Ext4Layout::from_superblock(&[0; 10]),
            Err(Ext4Refusal::NotExt4)
        );
        let mut sb = vec![0u8; 1024];
        sb[0x38..0x3A].copy_from_slice(&MAGIC.to_le_bytes());
        sb[0x18] = 9;
        assert!(matches!(
            Ext4Layout::from_superblock(&sb),
            Err(Ext4Refusal::Field {
                field: "s_log_block_size",
                ..
            })
        ));
    }

    /// A superblock of a small, sane filesystem: 4 KiB blocks, one group
    /// of 16,384 blocks and 4,096 inodes of 256 bytes, 32-byte descriptors.
    fn sane_superblock() -> Vec<u8> {
        let mut sb = vec![0u8; 1024];
        let mut put =
            |at: usize, v: u32, n: usize| sb[at..at + n].copy_from_slice(&v.to_le_bytes()[..n]);
        put(0x00, 4096, 4);
        put(0x04, 16384, 4);
        put(0x18, 2, 4);
        put(0x20, 32768, 4);
        put(0x28, 4096, 4);
        put(0x38, u32::from(MAGIC), 2);
        put(0x4C, 1, 4);
        put(0x58, 256, 2);
        put(0x64, RO_COMPAT_METADATA_CSUM, 4);
        sb
    }

    #[test]
    fn a_sane_superblock_gives_its_geometry() {
        let layout = Ext4Layout::from_superblock(&sane_superblock()).unwrap();
        assert_eq!(
            (layout.block_size, layout.blocks, layout.inode_size),
            (4096, 16384, 256)
        );
        assert_eq!(layout.descriptors(), 4096..4096 + 32);
        // One descriptor: the table at block 40, 4,000 of its inodes unused.
        let mut gdt = vec![0u8; 32];
        gdt[0x08..0x0C].copy_from_slice(&40u32.to_le_bytes());
        gdt[0x1C..0x1E].copy_from_slice(&4000u16.to_le_bytes());
        let tables = layout.inode_tables(&gdt).unwrap();
        assert_eq!(
            tables,
            [InodeTable {
                group: 0,
                offset: 40 * 4096,
                len: 96 * 256
            }]
        );
        // Never used: left out.
        gdt[0x12] = 1;
        assert_eq!(layout.inode_tables(&gdt).unwrap(), []);
        assert!(matches!(
            layout.inode_tables(&gdt[..16]),
            Err(Ext4Refusal::Truncated { .. })
        ));
    }

    /// Every regular file of a real image whose extents fit in its inode
    /// is mapped from it as debugfs maps it, with its size; the one whose
    /// extents do not is refused (FIEMAP maps it).
    #[test]
    fn maps_regular_files_from_their_inodes_as_debugfs_does() {
        if !tool("mkfs.ext4") || !tool("debugfs") {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir(&src).unwrap();
        tree(&src);
        let data = src.join("data");
        std::fs::create_dir(&data).unwrap();
        for i in 0..20 {
            std::fs::write(data.join(format!("f{i}")), vec![i as u8 | 1; i * 5000]).unwrap();
        }
        // Data in 3 and in 6 places, holes between: 3 extents fit in the
        // inode, 6 do not.
        for islands in [3u64, 6] {
            let f = std::fs::File::create(data.join(format!("islands{islands}"))).unwrap();
            for i in 0..islands {
                std::os::unix::fs::FileExt::write_all_at(&f, &[7; 4096], i * 65536).unwrap();
            }
        }
        let files = 20 * 6 + 600 + 20 + 2;
        let image = tmp.path().join("fs.img");
        mkfs(&image, &src, &[]);
        let f = std::fs::File::open(&image).unwrap();
        let layout = Ext4Layout::from_superblock(&read(&f, Ext4Layout::SUPERBLOCK)).unwrap();
        let tables = layout
            .inode_tables_by_group(&read(&f, layout.descriptors()))
            .unwrap();
        let mut mapped = Vec::new();
        for t in tables.iter().flatten() {
            for index in 0..t.len / layout.inode_size {
                let ino = u64::from(t.group) * layout.inodes_per_group + index + 1;
                // The reserved inodes (the journal is a regular file) are
                // in no directory.
                if ino < 11 {
                    continue;
                }
                let at = layout.inode_offset(&tables, ino).unwrap();
                if let Some(file) = layout.regular_file(&read(&f, at..at + layout.inode_size)) {
                    mapped.push((ino, file));
                }
            }
        }
        assert_eq!(mapped.len(), files - 1);
        let requests: String = mapped
            .iter()
            .map(|(ino, _)| format!("stat <{ino}>\n"))
            .collect();
        let cmds = tmp.path().join("cmds");
        std::fs::write(&cmds, requests + "stat /data/islands6\n").unwrap();
        let out = debugfs(&image, [std::ffi::OsStr::new("-f"), cmds.as_os_str()]);
        let stats: Vec<&str> = out.split("debugfs: stat ").skip(1).collect();
        assert_eq!(stats.len(), mapped.len() + 1);
        let bs = layout.block_size;
        for ((ino, file), stat) in mapped.iter().zip(&stats) {
            let size: u64 = stat
                .split("Size: ")
                .nth(1)
                .and_then(|s| s.split_whitespace().next())
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("<{ino}>: {stat}"));
            assert_eq!(file.size, size, "<{ino}>");
            // `(0-3):4386-4389, (64):4390`: logical blocks, then physical.
            let listed = stat.split("EXTENTS:").nth(1).unwrap_or("").trim();
            let want: Vec<FlaggedExtent> = listed
                .split(", ")
                .filter(|e| !e.is_empty())
                .map(|e| {
                    let (l, p) = e.trim_start_matches('(').split_once("):").unwrap();
                    let first = |r: &str| r.split('-').next().unwrap().parse::<u64>().unwrap();
                    let last = |r: &str| r.split('-').next_back().unwrap().parse::<u64>().unwrap();
                    FlaggedExtent {
                        extent: Extent {
                            logical: first(l) * bs,
                            physical: first(p) * bs,
                            length: (last(l) - first(l) + 1) * bs,
                        },
                        flags: 0,
                    }
                })
                .collect();
            assert_eq!(file.extents, want, "<{ino}>: {listed}");
        }
        let refused: u64 = stats[mapped.len()]
            .split("Inode: ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap();
        let at = layout.inode_offset(&tables, refused).unwrap();
        assert!(mapped.iter().all(|(ino, _)| *ino != refused));
        assert_eq!(
            layout.regular_file(&read(&f, at..at + layout.inode_size)),
            None
        );
        assert_eq!(layout.inode_offset(&tables, 0), None);
        assert_eq!(
            layout.inode_offset(&tables, layout.inodes_per_group * layout.groups + 1),
            None
        );
    }

    /// An inode of a regular file of 10,000 bytes: two blocks at block 100,
    /// then one unwritten block at 200; its times in the extra fields.
    fn regular_inode() -> Vec<u8> {
        let mut inode = vec![0u8; 256];
        let mut put = |at: usize, v: u32, n: usize| {
            inode[at..at + n].copy_from_slice(&v.to_le_bytes()[..n]);
        };
        put(0x00, 0o100644, 2);
        put(0x04, 10_000, 4);
        put(0x0C, 1_000, 4);
        put(0x10, 0x6093_95d9, 4);
        put(0x1A, 1, 2);
        put(0x20, EXTENTS_FL, 4);
        put(0x28, u32::from(EXTENT_MAGIC), 2);
        put(0x2A, 2, 2);
        put(0x2C, 4, 2);
        put(0x34, 0, 4);
        put(0x38, 2, 2);
        put(0x3C, 100, 4);
        put(0x40, 2, 4);
        put(0x44, u32::from(INIT_MAX_LEN) + 1, 2);
        put(0x48, 200, 4);
        put(0x80, 32, 2);
        put(0x88, (123_456_789 << 2) | 1, 4);
        inode
    }

    #[test]
    fn a_regular_inode_gives_its_extents_size_and_times() {
        let layout = Ext4Layout::from_superblock(&sane_superblock()).unwrap();
        let file = layout.regular_file(&regular_inode()).unwrap();
        let extent = |logical, physical, length, flags| FlaggedExtent {
            extent: Extent {
                logical,
                physical,
                length,
            },
            flags,
        };
        assert_eq!(
            file,
            RegularInode {
                size: 10_000,
                mtime: (0x6093_95d9 + (1 << 32), 123_456_789),
                changed: 1_000,
                extents: vec![
                    extent(0, 100 * 4096, 2 * 4096, 0),
                    extent(2 * 4096, 200 * 4096, 4096, FIEMAP_EXTENT_UNWRITTEN),
                ],
            }
        );
        // A 128-byte inode has no extra fields.
        let small = layout.regular_file(&regular_inode()[..128]).unwrap();
        assert_eq!(small.mtime, (0x6093_95d9, 0));
        // Anything but a live regular file with its extents in the inode,
        // all inside the filesystem, is refused.
        let refused = |at: usize, v: u32, n: usize| {
            let mut inode = regular_inode();
            inode[at..at + n].copy_from_slice(&v.to_le_bytes()[..n]);
            layout.regular_file(&inode)
        };
        for (what, at, v, n) in [
            ("a directory", 0x00, 0o040755, 2),
            ("deleted", 0x14, 5, 4),
            ("no links", 0x1A, 0, 2),
            ("inline data", 0x20, EXTENTS_FL | INLINE_DATA_FL, 4),
            ("encrypted", 0x20, EXTENTS_FL | ENCRYPT_FL, 4),
            ("a block map", 0x20, 0, 4),
            ("a deeper tree", 0x2E, 1, 2),
            ("five entries", 0x2A, 5, 2),
            ("past the end", 0x48, 16_384, 4),
            ("at block 0", 0x3C, 0, 4),
        ] {
            assert_eq!(refused(at, v, n), None, "{what}");
        }
    }

    proptest::proptest! {
        /// A sane superblock with a few bytes changed, and any descriptors
        /// and inodes: a refusal or a layout, never a panic, and never a
        /// table or block outside the filesystem.
        #[test]
        fn damaged_metadata_never_panics_nor_points_outside(
            changes in proptest::collection::vec((0..1024usize, proptest::prelude::any::<u8>()), 0..6),
            gdt in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4096),
            table in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..8192),
            inode_changes in proptest::collection::vec((0..256usize, proptest::prelude::any::<u8>()), 0..8),
        ) {
            let mut sb = sane_superblock();
            for (at, v) in changes {
                sb[at] = v;
            }
            if let Ok(layout) = Ext4Layout::from_superblock(&sb) {
                let end = layout.blocks * layout.block_size;
                if let Ok(tables) = layout.inode_tables(&gdt) {
                    for t in tables {
                        proptest::prop_assert!(t.offset + t.len <= end);
                    }
                }
                let mut out = Vec::new();
                layout.directory_blocks(&table, &mut out);
                layout.extent_node(&table, MAX_EXTENT_DEPTH, &mut out);
                let mut inode = regular_inode();
                for (at, v) in inode_changes {
                    inode[at] = v;
                }
                if let Some(file) = layout.regular_file(&inode) {
                    for e in file.extents {
                        proptest::prop_assert!(e.extent.physical + e.extent.length <= end);
                    }
                }
                for m in out {
                    match m {
                        MetadataBlocks::Directory(r) => proptest::prop_assert!(r.end <= layout.blocks),
                        MetadataBlocks::ExtentNode { block, .. } => {
                            proptest::prop_assert!(block < layout.blocks)
                        }
                    }
                }
            }
        }
    }
}
