//! Building a manifest at image build time: a prepared plan (files mapped
//! on the image's mounted filesystems) becomes, per filesystem, its
//! identity and its files' extents relative to the filesystem root, and
//! each container image resolved (`--image`) its reference, digest and
//! layer directories, relative to their filesystem's root likewise.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use std::time::SystemTime;

use super::codec::{
    DeviceHeader, Manifest, ManifestDevice, ManifestDirectory, ManifestFile, ManifestImage,
};
use crate::error::{Origin, Warning, WarningKind};
use crate::map::{fsid, DeviceId};
use crate::plan::PlanConfig;
use crate::report::ImageReport;
use crate::run::Prepared;

/// The directories on the way to `files` (paths relative to `mount`, the
/// root of the filesystem on `id`), each at the most urgent priority of
/// the files below it, mapped now: looking a path up reads each directory's
/// blocks, on a cold volume one fetch after another, so a boot replaying
/// the manifest hydrates them with the files. The root directory is left
/// out (mounting reads it), and so is a directory that is on another
/// filesystem, cannot be opened, or keeps its entries in its inode (no
/// extents): nothing to read from the device.
fn directories_of(files: &[ManifestFile], mount: &Path, id: DeviceId) -> Vec<ManifestFile> {
    let mut wanted: BTreeMap<&Path, u32> = BTreeMap::new();
    for f in files {
        let mut at = f.path.parent();
        while let Some(dir) = at.filter(|d| !d.as_os_str().is_empty()) {
            let priority = wanted.entry(dir).or_insert(u32::MAX);
            if *priority <= f.priority {
                break; // so are the directories above it
            }
            *priority = f.priority;
            at = dir.parent();
        }
    }
    let wanted: Vec<(&Path, u32)> = wanted.into_iter().collect();
    wanted
        .par_iter()
        .filter_map(|&(rel, priority)| {
            let (file, _) = crate::map::extent::open_file(&mount.join(rel), false).ok()?;
            let meta = file.metadata().ok()?;
            if !meta.is_dir() || DeviceId::from_dev(meta.dev()) != id {
                return None;
            }
            let extents = crate::map::extent::map_directory(&file);
            (!extents.is_empty()).then(|| ManifestFile {
                path: rel.to_path_buf(),
                ino: meta.ino(),
                size: meta.len(),
                mtime_sec: meta.mtime(),
                mtime_nsec: meta.mtime_nsec() as u32,
                priority,
                extents,
                file_ranges: Vec::new(),
                ranges: None,
                directory: true,
            })
        })
        .collect()
}

/// A filesystem the manifest holds: its device, UUID and mount point.
struct Recorded {
    id: DeviceId,
    uuid: [u8; 16],
    mount: PathBuf,
}

/// Turn a prepared plan into a manifest. Files that cannot be replayed from
/// a manifest (not on an ext4/xfs block device, not under its mount point)
/// are left out with a warning, and so are image directories on no
/// filesystem of the manifest. `root` is the image root the entries were
/// rebased under (`plan --root`), where the images' directories lie.
pub(crate) fn build_manifest(
    prepared: &Prepared,
    plan: PlanConfig,
    tool: &str,
    root: Option<&Path>,
) -> (Manifest, Vec<Warning>) {
    let mut warnings = Vec::new();
    let mut devices = Vec::new();
    let mut recorded = Vec::new();
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
        let Some(mount) = d.device.mount_point.clone() else {
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
                directory: false,
            });
        }
        // A filesystem none of whose files made it in has nothing to
        // replay: an entry for it would only make a boot look for its disk.
        if files.is_empty() {
            continue;
        }
        let dirs = directories_of(&files, &mount, id);
        files.extend(dirs);
        recorded.push(Recorded {
            id,
            uuid: identity.uuid,
            mount,
        });
        devices.push(ManifestDevice {
            header: DeviceHeader {
                fs_type: identity.fs_type.name().to_string(),
                uuid: identity.uuid,
                size: d.device.size,
                logical_block_size: d.device.logical_block_size,
                node_hint: node,
            },
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
    let images = prepared
        .images
        .iter()
        .filter_map(|i| manifest_image(i, root, &recorded, &devices, &mut warnings))
        .collect();
    let manifest = Manifest {
        created_unix,
        tool: tool.to_string(),
        plan,
        devices,
        images,
    };
    (manifest, warnings)
}

/// An image as the manifest records it: resolved images only (one with no
/// record was warned about when resolving), each directory by its
/// filesystem and its path there. An image the decoder would refuse (a
/// digest read from containerd's database that is not one) is left out
/// with a warning, so one bad record never costs the boot its manifest.
fn manifest_image(
    report: &ImageReport,
    root: Option<&Path>,
    recorded: &[Recorded],
    devices: &[ManifestDevice],
    warnings: &mut Vec<Warning>,
) -> Option<ManifestImage> {
    let (Some(name), Some(digest)) = (&report.image, &report.digest) else {
        return None;
    };
    let origin = Origin::Image {
        reference: name.clone(),
    };
    let mut directories = Vec::new();
    for dir in &report.directories {
        // The directory as this host sees it: under the image root, as the
        // collector rebases entries.
        let dir = Path::new(dir);
        let host = match root {
            Some(root) => root.join(dir.strip_prefix("/").unwrap_or(dir)),
            None => dir.to_path_buf(),
        };
        let on = std::fs::metadata(&host).ok().and_then(|meta| {
            let fs = recorded
                .iter()
                .find(|r| r.id == DeviceId::from_dev(meta.dev()))?;
            let rel = host.strip_prefix(&fs.mount).ok()?;
            (!rel.as_os_str().is_empty()).then(|| ManifestDirectory {
                uuid: fs.uuid,
                path: rel.to_path_buf(),
            })
        });
        match on {
            Some(d) => directories.push(d),
            None => warnings.push(Warning::new(
                WarningKind::Image,
                Some(&host),
                Some(&origin),
                format!(
                    "image {name}: layer directory on no filesystem of the manifest: not recorded in it"
                ),
            )),
        }
    }
    let image = ManifestImage {
        reference: report.reference.clone(),
        image: name.clone(),
        digest: digest.clone(),
        priority: report.priority,
        directories,
    };
    if let Err(e) = image.check(devices) {
        warnings.push(Warning::new(
            WarningKind::Image,
            None,
            Some(&origin),
            format!("image {name}: cannot be recorded in the manifest: {e}"),
        ));
        return None;
    }
    Some(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(uuid: [u8; 16]) -> ManifestDevice {
        ManifestDevice {
            header: DeviceHeader {
                fs_type: "ext4".into(),
                uuid,
                size: 1 << 30,
                logical_block_size: 512,
                node_hint: "/dev/test".into(),
            },
            files: Vec::new(),
        }
    }

    /// An image root in a tempdir (standing for the filesystem mounted
    /// there) with two layer directories.
    fn image_root() -> (tempfile::TempDir, Recorded) {
        let top = tempfile::tempdir().unwrap();
        for id in [1, 2] {
            let dir = format!("var/lib/containerd/snapshots/{id}/fs");
            std::fs::create_dir_all(top.path().join(dir)).unwrap();
        }
        let dev = std::fs::metadata(top.path()).unwrap().dev();
        let recorded = Recorded {
            id: DeviceId::from_dev(dev),
            uuid: [0xab; 16],
            mount: top.path().to_path_buf(),
        };
        (top, recorded)
    }

    fn report(directories: &[&str]) -> ImageReport {
        ImageReport {
            reference: "small:1".into(),
            image: Some("docker.io/library/small:1".into()),
            digest: Some(format!("sha256:{}", "c3".repeat(32))),
            priority: 60,
            directories: directories.iter().map(|d| d.to_string()).collect(),
            warnings: Vec::new(),
        }
    }

    #[test]
    fn image_directories_are_recorded_by_filesystem_and_relative_path() {
        let (top, recorded) = image_root();
        let devices = [device([0xab; 16])];
        let mut warnings = Vec::new();
        // As `plan --root` names them: the image's paths, rebased here.
        let named = report(&[
            "/var/lib/containerd/snapshots/2/fs",
            "/var/lib/containerd/snapshots/1/fs",
            "/var/lib/containerd/snapshots/9/fs",
        ]);
        let image = manifest_image(
            &named,
            Some(top.path()),
            std::slice::from_ref(&recorded),
            &devices,
            &mut warnings,
        )
        .unwrap();
        assert_eq!(image.reference, "small:1");
        assert_eq!(image.image, "docker.io/library/small:1");
        assert_eq!(image.digest, named.digest.clone().unwrap());
        assert_eq!(image.priority, 60);
        let dirs: Vec<_> = image
            .directories
            .iter()
            .map(|d| (d.uuid, d.path.clone()))
            .collect();
        assert_eq!(
            dirs,
            [
                (
                    [0xab; 16],
                    PathBuf::from("var/lib/containerd/snapshots/2/fs")
                ),
                (
                    [0xab; 16],
                    PathBuf::from("var/lib/containerd/snapshots/1/fs")
                ),
            ]
        );
        // The one that is not there is a warning naming it.
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert_eq!(warnings[0].kind, WarningKind::Image);
        assert!(
            warnings[0].to_string().contains("snapshots/9/fs"),
            "{}",
            warnings[0]
        );
        // Host paths (no image root) give the same record.
        let host = |id| {
            top.path()
                .join(format!("var/lib/containerd/snapshots/{id}/fs"))
        };
        let named = report(&[host(2).to_str().unwrap(), host(1).to_str().unwrap()]);
        let again = manifest_image(&named, None, &[recorded], &devices, &mut warnings).unwrap();
        assert_eq!(again.directories, image.directories);
    }

    #[test]
    fn an_image_the_decoder_would_refuse_is_left_out_with_a_warning() {
        let (top, recorded) = image_root();
        let devices = [device([0xab; 16])];
        let mut warnings = Vec::new();
        let mut bad = report(&["/var/lib/containerd/snapshots/1/fs"]);
        bad.digest = Some("sha256:../../etc/passwd".into());
        let got = manifest_image(&bad, Some(top.path()), &[recorded], &devices, &mut warnings);
        assert!(got.is_none());
        assert!(
            warnings[0].to_string().contains("digest"),
            "{}",
            warnings[0]
        );
        // One never resolved is not recorded (it was warned about then).
        let mut unresolved = report(&[]);
        unresolved.digest = None;
        unresolved.image = None;
        assert!(manifest_image(&unresolved, None, &[], &devices, &mut warnings).is_none());
        assert_eq!(warnings.len(), 1);
    }
}
