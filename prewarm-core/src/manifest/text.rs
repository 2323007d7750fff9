//! A manifest as text: what `prewarm plan` and `prewarm show` print.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::codec::Manifest;
use crate::map::fsid::format_uuid;
use crate::size::format_bytes;

impl Manifest {
    /// The plan's knobs, then per filesystem its identity and, per priority
    /// class, how many files, extents and bytes; with `files`, every file;
    /// then one block per container image: its record and the reference
    /// asked for, its priority, its digest and its layer directories, top
    /// layer first (shown from the filesystem's root like files, and, when
    /// the manifest holds more than one filesystem, naming it).
    pub fn render_text(&self, files: bool) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "  plan: chunk {}, max I/O {}, coalesce gap {}",
            format_bytes(self.plan.chunk_size),
            format_bytes(self.plan.max_io),
            format_bytes(self.plan.coalesce_gap)
        );
        // Directories (on the way to the files) are counted apart.
        let dirs_note = |n: u64| match n {
            0 => String::new(),
            1 => " and 1 directory".to_string(),
            n => format!(" and {n} directories"),
        };
        for d in &self.devices {
            let ndirs = d.files.iter().filter(|f| f.directory).count() as u64;
            let _ = writeln!(
                s,
                "  {} {} ({} bytes, {}-byte blocks, planned on {}): {} files{}",
                d.header.fs_type,
                format_uuid(&d.header.uuid),
                d.header.size,
                d.header.logical_block_size,
                d.header.node_hint,
                d.files.len() as u64 - ndirs,
                dirs_note(ndirs)
            );
            let mut classes: BTreeMap<u32, (u64, u64, u64, u64)> = BTreeMap::new();
            for f in &d.files {
                let c = classes.entry(f.priority).or_default();
                if f.directory {
                    c.3 += 1;
                } else {
                    c.0 += 1;
                }
                c.1 += f.extents.len() as u64;
                c.2 += f.extents.iter().map(|e| e.length).sum::<u64>();
            }
            for (prio, (n, ext, bytes, dirs)) in classes {
                let _ = writeln!(
                    s,
                    "    priority {prio}: {n} files{}, {ext} extents, {}",
                    dirs_note(dirs),
                    format_bytes(bytes)
                );
            }
            if files {
                for f in &d.files {
                    let _ = writeln!(
                        s,
                        "    {:>5} /{}{} ({} bytes, {} extents, {} file ranges)",
                        f.priority,
                        f.path.display(),
                        if f.directory { "/" } else { "" },
                        f.size,
                        f.extents.len(),
                        f.file_ranges.len()
                    );
                }
            }
        }
        for i in &self.images {
            let asked = if i.reference == i.image {
                String::new()
            } else {
                format!(" (asked as {})", i.reference)
            };
            let n = i.directories.len();
            let _ = writeln!(
                s,
                "  image {}{asked}, priority {}: {n} layer director{}",
                i.image,
                i.priority,
                if n == 1 { "y" } else { "ies" }
            );
            let _ = writeln!(s, "    digest {}", i.digest);
            for d in &i.directories {
                let _ = write!(s, "    /{}", d.path.display());
                if self.devices.len() > 1 {
                    let _ = write!(s, " (filesystem {})", format_uuid(&d.uuid));
                }
                s.push('\n');
            }
        }
        s
    }
}
