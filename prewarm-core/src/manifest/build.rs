//! Building a manifest at image build time: a prepared plan (files mapped
//! on the image's mounted filesystems) becomes, per filesystem, its
//! identity and its files' extents relative to the filesystem root.

use std::time::SystemTime;

use super::codec::{Manifest, ManifestDevice, ManifestFile};
use crate::error::{Warning, WarningKind};
use crate::map::{device, fsid, DeviceId};
use crate::plan::PlanConfig;
use crate::run::Prepared;

/// Turn a prepared plan into a manifest. Files that cannot be replayed from
/// a manifest (not on an ext4/xfs block device, not under its mount point)
/// are left out with a warning.
pub(crate) fn build_manifest(
    prepared: &Prepared,
    plan: PlanConfig,
    tool: &str,
) -> (Manifest, Vec<Warning>) {
    let mut warnings = Vec::new();
    let mut devices = Vec::new();
    let mut included = vec![false; prepared.files.len()];
    for d in prepared.devices.iter().filter(|d| d.files > 0) {
        let id = d.device.id;
        let node = d.device.node.display().to_string();
        let identity = match fsid::read_identity(&d.device.node) {
            Ok(Some(identity)) => identity,
            Ok(None) => {
                warnings.push(Warning::new(
                    WarningKind::Unreadable,
                    Some(&d.device.node),
                    None,
                    "no ext4 or xfs superblock: its files are not in the manifest",
                ));
                continue;
            }
            Err(e) => {
                warnings.push(Warning::new(
                    WarningKind::Unreadable,
                    Some(&d.device.node),
                    None,
                    format!("reading the superblock: {e}"),
                ));
                continue;
            }
        };
        let Some(mount) = device::mount_point(id) else {
            warnings.push(Warning::new(
                WarningKind::Unreadable,
                Some(&d.device.node),
                None,
                "not mounted at a filesystem root: its files are not in the manifest",
            ));
            continue;
        };
        let mut files = Vec::new();
        for (i, f) in prepared.files.iter().enumerate() {
            if DeviceId::from_dev(f.file.dev) != id {
                continue;
            }
            let Ok(rel) = f.file.path.strip_prefix(&mount) else {
                warnings.push(Warning::new(
                    WarningKind::Unreadable,
                    Some(&f.file.path),
                    Some(&f.file.origin),
                    format!("not under {}: not in the manifest", mount.display()),
                ));
                continue;
            };
            included[i] = true;
            files.push(ManifestFile {
                path: rel.to_path_buf(),
                ino: f.file.ino,
                size: f.file.size,
                mtime_sec: f.file.mtime.0,
                mtime_nsec: f.file.mtime.1 as u32,
                priority: f.file.priority,
                extents: f.map.device_extents.clone(),
                file_ranges: f.map.file_ranges.clone(),
                ranges: f
                    .file
                    .ranges
                    .as_deref()
                    .map(|r| crate::map::extent::clip_ranges(r, f.file.size)),
            });
        }
        // A filesystem none of whose files made it in has nothing to
        // replay: an entry for it would only make a boot look for its disk.
        if files.is_empty() {
            continue;
        }
        devices.push(ManifestDevice {
            fs_type: identity.fs_type.name().to_string(),
            uuid: identity.uuid,
            size: d.device.size,
            logical_block_size: d.device.logical_block_size,
            node_hint: node,
            files,
        });
    }
    for (f, _) in prepared
        .files
        .iter()
        .zip(&included)
        .filter(|(_, &inc)| !inc)
    {
        if f.map.device_extents.is_empty() {
            warnings.push(Warning::new(
                WarningKind::Unreadable,
                Some(&f.file.path),
                Some(&f.file.origin),
                "not on a block device prewarm can map: not in the manifest",
            ));
        }
    }
    let created_unix = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let manifest = Manifest {
        created_unix,
        tool: tool.to_string(),
        plan,
        devices,
    };
    (manifest, warnings)
}
