//! Mapping a walked file on ext4 from its inode, read from the inode table
//! on the device, without opening the file.
//!
//! A walk meets most of its files by name in a directory it has just
//! listed, and the directory entry already says the file's inode number.
//! Opening each file to ask FIEMAP (`openat`, `fstat`, the ioctl, `close`)
//! makes the kernel build an inode and a dentry for it: on a big tree that
//! was about half of the cold walk's CPU (docs/design.md), CPU the lazy
//! volume's own data path needs on a two-CPU node. The inode's 256 bytes
//! are in the inode table, which the metadata read-ahead has just read
//! into the device's page cache; one `pread` of them gives the size and,
//! for a file whose extents fit in the inode (most files of an unpacked
//! image), every extent.
//!
//! The device's page cache is where ext4 itself keeps its inode table
//! blocks, and it copies an inode there whenever it changes one, so what
//! is read is current, except what the kernel holds back: blocks not
//! allocated yet (delayed allocation) and a size still growing. Both are
//! writes since mount. So an inode is used only when it last changed
//! before the filesystem was mounted writable (`ctime` before the
//! superblock's `s_mtime`), or the filesystem is mounted read-only; any
//! other file, and any the parser refuses (inline data, extent trees with
//! blocks of their own, encryption, anything out of range), is opened and
//! mapped by FIEMAP as before. A file something is mounted over is seen as
//! the directory holds it (the file beneath).

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::device::{self, DeviceId};
use super::ext4::{Ext4Layout, InodeTable};
use super::extent::{classify, ExtentMap};

/// The inode tables of one mounted ext4 filesystem, for mapping its files.
#[derive(Debug)]
pub(crate) struct InodeTables {
    /// The filesystem's `st_dev`.
    dev: u64,
    /// The filesystem's block device, opened read-only and buffered: the
    /// reads go through the page cache ext4 keeps its inodes in.
    device: File,
    layout: Ext4Layout,
    /// The used part of each group's table, by group.
    tables: Vec<Option<InodeTable>>,
    /// The filesystem is mounted read-only: no inode changes under it.
    read_only: bool,
}

/// A file mapped from its inode.
#[derive(Debug)]
pub(crate) struct MappedInode {
    pub size: u64,
    pub mtime: (i64, i64),
    pub map: ExtentMap,
}

impl InodeTables {
    /// The tables of the ext4 filesystem on device `dev` (`st_dev`), or why
    /// its files are mapped the usual way.
    pub fn open(dev: u64) -> Result<Self, String> {
        let id = DeviceId::from_dev(dev);
        let node = device::resolve_node(id).map_err(|e| e.to_string())?;
        let (device, _) = device::open_read_only(&node, false, 0)
            .map_err(|e| format!("opening {}: {e}", node.display()))?;
        let read = |range: std::ops::Range<u64>, what: &str| {
            let mut buf = vec![0; (range.end - range.start) as usize];
            device
                .read_exact_at(&mut buf, range.start)
                .map(|()| buf)
                .map_err(|e| format!("reading the {what} of {}: {e}", node.display()))
        };
        let layout = Ext4Layout::from_superblock(&read(Ext4Layout::SUPERBLOCK, "superblock")?)
            .map_err(|e| e.to_string())?;
        let tables = layout
            .inode_tables_by_group(&read(layout.descriptors(), "group descriptors")?)
            .map_err(|e| e.to_string())?;
        Ok(InodeTables {
            dev,
            read_only: device::mounted_read_only(id),
            device,
            layout,
            tables,
        })
    }

    /// The filesystem's `st_dev`.
    pub fn dev(&self) -> u64 {
        self.dev
    }

    /// Regular file `ino` mapped from its inode, or `None` when it must be
    /// opened and mapped by FIEMAP (see the module's doc).
    pub fn map(&self, ino: u64) -> Option<MappedInode> {
        let at = self.layout.inode_offset(&self.tables, ino)?;
        let mut buf = [0u8; 1024];
        let inode = buf.get_mut(..self.layout.inode_size as usize)?;
        self.device.read_exact_at(inode, at).ok()?;
        let file = self.layout.regular_file(inode)?;
        if !self.read_only && file.changed >= self.layout.last_mounted {
            return None;
        }
        Some(MappedInode {
            size: file.size,
            mtime: file.mtime,
            map: ExtentMap {
                from_inode: true,
                ..classify(&file.extents, file.size)
            },
        })
    }
}
