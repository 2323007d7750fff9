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

    fn debugfs(image: &Path, request: &str) -> String {
        let out = Command::new("debugfs")
            .args(["-R", request])
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
            let listed: Vec<u64> = debugfs(&image, &format!("blocks {name}"))
                .split_whitespace()
                .map(|b| b.parse().unwrap())
                .collect();
            assert!(!listed.is_empty(), "debugfs lists no blocks for {name}");
            for b in listed {
                assert!(blocks.contains(&b), "block {b} of {name} not found");
            }
            let imap = debugfs(&image, &format!("imap {name}"));
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

    proptest::proptest! {
        /// A sane superblock with a few bytes changed, and any descriptors
        /// and inodes: a refusal or a layout, never a panic, and never a
        /// table or block outside the filesystem.
        #[test]
        fn damaged_metadata_never_panics_nor_points_outside(
            changes in proptest::collection::vec((0..1024usize, proptest::prelude::any::<u8>()), 0..6),
            gdt in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4096),
            table in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..8192),
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
