#!/bin/sh
# Install prewarm into a root filesystem tree: an image being built (--root)
# or this machine (default /). Then write /etc/prewarm/boot.list, run
# `prewarm plan`, and rebuild the initrd (dracut -f); see docs/eks.md.
#
# Usage: initrd/install.sh [--root DIR] [--bin PATH/TO/prewarm]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=/
bin=$here/../target/release/prewarm
while [ $# -gt 0 ]; do
    case $1 in
        --root) root=$2; shift 2 ;;
        --bin) bin=$2; shift 2 ;;
        *) echo "usage: $0 [--root DIR] [--bin PATH]" >&2; exit 2 ;;
    esac
done
[ -x "$bin" ] || { echo "$0: no prewarm binary at $bin (cargo build --release?)" >&2; exit 2; }

install -D -m 0755 "$bin" "$root/usr/bin/prewarm"
install -D -m 0644 "$here/systemd/prewarm.service" \
    "$root/usr/lib/systemd/system/prewarm.service"
install -D -m 0644 "$here/systemd/prewarm-record.service" \
    "$root/usr/lib/systemd/system/prewarm-record.service"
mod=$root/usr/lib/dracut/modules.d/50prewarm
install -D -m 0755 "$here/dracut/50prewarm/module-setup.sh" "$mod/module-setup.sh"
install -D -m 0644 "$here/dracut/50prewarm/prewarm-initrd.service" \
    "$mod/prewarm-initrd.service"
install -d -m 0755 "$root/etc/prewarm"

# Enable the root-phase unit (WantedBy=multi-user.target) without systemctl,
# which may not run against a foreign root.
wants=$root/etc/systemd/system/multi-user.target.wants
mkdir -p "$wants"
ln -sf /usr/lib/systemd/system/prewarm.service "$wants/prewarm.service"
# The recording unit is enabled too, but runs only on a boot with
# prewarm.record=1 or /etc/prewarm/record (its conditions).
mkdir -p "$root/etc/systemd/system/sysinit.target.wants"
ln -sf /usr/lib/systemd/system/prewarm-record.service \
    "$root/etc/systemd/system/sysinit.target.wants/prewarm-record.service"
echo "installed prewarm into $root"
