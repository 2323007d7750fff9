//! Handover between runs of the same manifest: the initrd run records which
//! device byte ranges it has read in a small state file under `/run` (a
//! tmpfs, which survives switch-root), and the root run skips them, so no
//! chunk is read twice even when the initrd run was stopped half-way.
//!
//! The state names the manifest by its checksum: a state left by another
//! manifest is ignored. Writes are atomic (a new file, then a rename).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::input_file::{read_untrusted, InputError};
use crate::plan::spans;
use crate::report::Report;

/// Largest state file read (a state lists merged ranges: kilobytes).
pub const MAX_STATE_BYTES: u64 = 16 << 20;

/// Version of the state file layout.
pub const STATE_VERSION: u32 = 1;

/// Ranges already read, per filesystem.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoverState {
    /// [`STATE_VERSION`].
    pub version: u32,
    /// CRC-32 of the manifest these ranges belong to.
    pub manifest_crc: u32,
    /// Per filesystem.
    pub devices: Vec<DeviceDone>,
    /// Every class of the manifest up to this priority was read completely
    /// (on every filesystem, without errors) by a run that recorded here:
    /// the root phase may send READY before it checks a single file.
    #[serde(default)]
    pub hydrated_through: Option<u32>,
}

/// Byte ranges `[start, end)` of one filesystem's device already read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceDone {
    /// The filesystem's UUID.
    pub uuid: String,
    /// Byte ranges read, sorted and merged.
    pub done: Vec<(u64, u64)>,
}

impl HandoverState {
    /// An empty state for the manifest with checksum `manifest_crc`.
    pub fn new(manifest_crc: u32) -> Self {
        HandoverState {
            version: STATE_VERSION,
            manifest_crc,
            devices: Vec::new(),
            hydrated_through: None,
        }
    }

    /// The state at `path` if it exists, parses and belongs to the manifest
    /// with checksum `manifest_crc`; otherwise a fresh state (with a log line
    /// saying why an existing file was ignored).
    pub fn load_or_new(path: &Path, manifest_crc: u32) -> Self {
        let text = match read_untrusted(path, MAX_STATE_BYTES) {
            Ok(t) => t,
            Err(InputError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                return Self::new(manifest_crc)
            }
            Err(e) => {
                tracing::warn!("ignoring handover state {}: {e}", path.display());
                return Self::new(manifest_crc);
            }
        };
        match serde_json::from_slice::<HandoverState>(&text) {
            Ok(s) if s.version == STATE_VERSION && s.manifest_crc == manifest_crc => s,
            Ok(_) => {
                tracing::info!(
                    "handover state {} is for another manifest; ignoring it",
                    path.display()
                );
                Self::new(manifest_crc)
            }
            Err(e) => {
                tracing::warn!("ignoring unreadable handover state {}: {e}", path.display());
                Self::new(manifest_crc)
            }
        }
    }

    /// Ranges already read on the filesystem `uuid`.
    pub fn done(&self, uuid: &str) -> &[(u64, u64)] {
        self.devices
            .iter()
            .find(|d| d.uuid == uuid)
            .map_or(&[], |d| &d.done)
    }

    /// Add ranges read on `uuid`, keeping the list sorted and merged.
    pub fn record(&mut self, uuid: &str, ranges: impl IntoIterator<Item = (u64, u64)>) {
        let idx = match self.devices.iter().position(|d| d.uuid == uuid) {
            Some(i) => i,
            None => {
                self.devices.push(DeviceDone {
                    uuid: uuid.to_string(),
                    done: Vec::new(),
                });
                self.devices.len() - 1
            }
        };
        let done = &mut self.devices[idx].done;
        *done = spans::merge(done.iter().copied().chain(ranges), 0);
    }

    /// Add the chunks a run's report says it read, per filesystem UUID
    /// (devices found by UUID: a manifest's).
    pub fn record_report(&mut self, report: &Report) {
        self.hydrated_through = self.hydrated_through.max(hydrated_through(report));
        let chunk = report.plan_config.chunk_size;
        for d in &report.devices {
            let Some(uuid) = &d.uuid else { continue };
            self.record(
                uuid,
                d.chunks_read
                    .iter()
                    .map(|&(s, e)| (s * chunk, (e * chunk).min(d.size))),
            );
        }
    }

    /// Write atomically, creating the directory.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        crate::atomic_write::write_atomically(path, &json)
    }
}

/// The most urgent classes a run read completely: up to the last class
/// whose reads, and those of every more urgent class, all completed. None
/// when any part of the manifest was not read as planned (a filesystem
/// refused, a read failed, ranges left for a run with the files mounted),
/// since the report cannot say which classes those belonged to.
fn hydrated_through(report: &Report) -> Option<u32> {
    let incomplete = report.errors > 0
        || report.not_issued > 0
        || report
            .manifest
            .as_ref()
            .is_none_or(|m| !m.refused.is_empty() || m.file_ranges_deferred > 0 || m.missing > 0);
    if incomplete || report.dry_run {
        return None;
    }
    report
        .classes
        .iter()
        .take_while(|c| c.hydrated_ms.is_some())
        .map(|c| c.priority)
        .last()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_merges_and_roundtrips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state");
        let mut s = HandoverState::new(42);
        s.record("u", [(10, 20), (0, 5), (5, 10), (30, 40)]);
        s.record("u", [(15, 31)]);
        assert_eq!(s.done("u"), [(0, 40)]);
        assert_eq!(s.done("other"), []);
        s.save(&path).unwrap();
        assert_eq!(HandoverState::load_or_new(&path, 42), s);
        assert_eq!(
            HandoverState::load_or_new(&path, 43),
            HandoverState::new(43)
        );
        std::fs::write(&path, "garbage").unwrap();
        assert_eq!(
            HandoverState::load_or_new(&path, 42),
            HandoverState::new(42)
        );
    }
}
