//! Which systemd unit a process runs in, from its cgroup.
//!
//! The recorder ends its urgent classes when the `--until` units are
//! active, but a unit's own start-up reads come just after that: the
//! service's binary and its libraries, read once systemd has started it,
//! and the recorder only sees the unit active at its next look (every
//! 500 ms). Whether those reads land in the last urgent class (read by the
//! initrd run) or after it (read in the background, beside the service
//! that needs them) was a race. The recorder settles it by asking, for the
//! first read of each file after the units were active, whether the
//! reading process runs in one of their cgroups: systemd runs each service
//! in a cgroup named after it (`/system.slice/kubelet.service`, or below
//! it for a unit that delegates), in the unified hierarchy (`0::PATH`) and,
//! on hybrid and legacy hosts, in its named hierarchy
//! (`1:name=systemd:PATH`) and the controllers'.
//!
//! `/proc/PID/cgroup` is read at most [`MAX_CGROUP_FILE`] bytes; a process
//! already gone is in no unit (its file keeps its time's class).

use std::io::Read as _;

/// Most bytes of `/proc/PID/cgroup` read: a line per hierarchy, a dozen
/// on a legacy host.
const MAX_CGROUP_FILE: u64 = 16 << 10;

/// The units as systemd names them: a name without a type suffix is a
/// service, as `systemctl` takes it (`kubelet` is `kubelet.service`).
pub(super) fn unit_names(units: &[String]) -> Vec<String> {
    units
        .iter()
        .map(|u| {
            if u.contains('.') {
                u.clone()
            } else {
                format!("{u}.service")
            }
        })
        .collect()
}

/// Whether process `pid` runs in the cgroup of one of `units` (as
/// [`unit_names`] gives them); false when it is gone or unreadable.
pub(super) fn process_in_units(pid: i32, units: &[String]) -> bool {
    if units.is_empty() || pid <= 0 {
        return false;
    }
    let mut text = String::new();
    let read = std::fs::File::open(format!("/proc/{pid}/cgroup"))
        .and_then(|f| f.take(MAX_CGROUP_FILE).read_to_string(&mut text));
    read.is_ok() && cgroup_in_units(&text, units)
}

/// Whether a `/proc/PID/cgroup` text places the process in (or below) the
/// cgroup of one of `units`, in any hierarchy.
fn cgroup_in_units(text: &str, units: &[String]) -> bool {
    text.lines()
        .filter_map(|line| line.splitn(3, ':').nth(2))
        .any(|path| path.split('/').any(|part| units.iter().any(|u| u == part)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn units(names: &[&str]) -> Vec<String> {
        unit_names(&names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn a_service_is_found_in_any_hierarchy_and_below_its_cgroup() {
        let kubelet = units(&["kubelet"]);
        assert_eq!(kubelet, ["kubelet.service"]);
        // Unified (cgroup v2), hybrid (systemd's named hierarchy), a
        // controller's hierarchy, and a delegated sub-cgroup.
        for text in [
            "0::/system.slice/kubelet.service\n",
            "1:name=systemd:/system.slice/kubelet.service\n0::/\n",
            "8:pids:/system.slice/kubelet.service\n",
            "0::/system.slice/kubelet.service/kubepods\n",
        ] {
            assert!(cgroup_in_units(text, &kubelet), "{text}");
        }
        // Another unit, a name that only starts the same, the root, junk.
        for text in [
            "0::/system.slice/containerd.service\n",
            "0::/system.slice/kubelet.service-helper.scope\n",
            "0::/\n",
            "",
            "no colons here\n",
        ] {
            assert!(!cgroup_in_units(text, &kubelet), "{text}");
        }
        let both = units(&["containerd.service", "kubelet.service"]);
        assert!(cgroup_in_units(
            "0::/system.slice/containerd.service\n",
            &both
        ));
    }

    #[test]
    fn a_process_gone_or_no_unit_asked_is_in_none() {
        let me = std::process::id() as i32;
        assert!(!process_in_units(me, &[]));
        assert!(!process_in_units(-1, &units(&["kubelet"])));
        // This process runs in no unit of that name.
        assert!(!process_in_units(me, &units(&["prewarm-no-such-unit"])));
    }
}
