# Shared helpers for the VM boot test scripts (sourced, POSIX sh).

VM_DIR=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)
: "${PREWARM_VM_CACHE:=/var/tmp/prewarm-vm-cache}"
# Heavy phases (mmdebstrap, dracut, qemu) take this lock so they never overlap
# with benchmark runs that use the same lock.
: "${PREWARM_HEAVY_LOCK:=/tmp/prewarm-heavy.lock}"

log() { printf '%s [vm] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# heavy CMD...: run CMD holding the heavy lock.
heavy() { flock "$PREWARM_HEAVY_LOCK" "$@"; }

# Debian mirror and suite: the ones this machine's apt uses (deb822 or
# one-line sources), so mmdebstrap reaches the same registry.
debian_mirror() {
    m=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' \
        | grep -v security | head -n1)
    [ -n "$m" ] || m=$(grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
        | awk '{print $2}' | grep -v security | grep -i debian | head -n1)
    echo "${m:-http://deb.debian.org/debian}"
}
debian_suite() {
    # shellcheck disable=SC1091
    s=$(. /etc/os-release 2>/dev/null; echo "${VERSION_CODENAME:-}")
    echo "${s:-bookworm}"
}

# make_initrd MNT OUT [FILE...]: dracut in a chroot of the image root mounted
# at MNT (no host-only, the virtio/ext4 drivers only; ~12 s) -> OUT, with the
# image's FILEs added (dracut --install). 50prewarm includes itself when
# MNT/etc/prewarm/boot.manifest exists (its check()), as on an image build.
# The list of OUT's contents goes to OUT.list. Fresh (non-recursive)
# proc/sys/dev mounts: nothing to propagate to the host; dracut's temporary
# files go to a tmpfs, not into the image. On failure the caller's trap
# undoes the mounts (chroot_umount).
make_initrd() {
    mnt=$1 out=$2; shift 2
    mount -t proc proc "$mnt/proc"
    mount -t sysfs sys "$mnt/sys"
    mount -t devtmpfs dev "$mnt/dev"
    mount -t tmpfs tmp "$mnt/tmp"
    kver=$(ls "$mnt/lib/modules" | head -n1)
    log "dracut for $kver -> $out${*:+ (+ $*)}"
    heavy chroot "$mnt" dracut -q --force --no-hostonly --kver "$kver" --tmpdir /tmp \
        --drivers "virtio_blk virtio_pci ext4 crc32c_generic" ${*:+--install "$*"} \
        /tmp/initrd.img
    cp "$mnt/tmp/initrd.img" "$out"
    chroot "$mnt" lsinitrd /tmp/initrd.img >"$out.list" 2>/dev/null || true
    chroot_umount "$mnt"
}

# chroot_umount MNT: undo make_initrd's mounts (each only if still mounted).
chroot_umount() {
    for m in "$1/tmp" "$1/dev" "$1/sys" "$1/proc"; do
        if mountpoint -q "$m" 2>/dev/null; then umount "$m"; fi
    done
    return 0
}

# boot_vm DIR KERNEL INITRD APPEND DRIVE: boot qemu ($ACCEL, 2 vCPUs, 1 GiB)
# until the guest powers off or VM_TIMEOUT passes. DIR gets console.log
# (ttyS0), data.log (ttyS1), qemu.log and boot.env (qemu_rc, wall_s,
# silent_retries). QPID is qemu's pid while it runs, for the caller's trap.
# A guest that prints nothing on its console for VM_SILENT_S (60) never got
# to the initrd's systemd (its "Welcome to" comes within seconds): the
# emulator or kernel hung before any of prewarm could run (seen once under
# TCG on a loaded host: a warm-disk boot with an empty console until its
# 180 s timeout). Such a boot is killed and made once more, and the retry
# is recorded (silent_retries=1); a second silent boot is a failure.
boot_vm() {
    vd=$1; mkdir -p "$vd"
    retries=0
    while :; do
        rm -f "$vd/silent"
        vt=$(date +%s.%N)
        # shellcheck disable=SC2086
        timeout -k 10 "$VM_TIMEOUT" qemu-system-x86_64 $ACCEL \
            -smp 2 -m 1024 -nodefaults -no-user-config -display none -no-reboot \
            -kernel "$2" -initrd "$3" -append "$4" -drive "$5" \
            -serial "file:$vd/console.log" -serial "file:$vd/data.log" \
            >"$vd/qemu.log" 2>&1 &
        QPID=$!
        # The watchdog (`timeout` passes its TERM on to qemu); its output
        # goes nowhere, so a sleep it leaves behind holds no pipe open.
        (sleep "${VM_SILENT_S:-60}"
         [ -s "$vd/console.log" ] || { : >"$vd/silent"; kill "$QPID"; }) >/dev/null 2>&1 &
        wpid=$!
        vrc=0; wait "$QPID" || vrc=$?
        QPID=
        kill "$wpid" 2>/dev/null; wait "$wpid" 2>/dev/null || true
        wall=$(awk -v a="$vt" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
        [ -e "$vd/silent" ] && [ "$retries" -eq 0 ] || break
        log "boot $(basename "$vd"): nothing on the console in ${VM_SILENT_S:-60}s (qemu exit $vrc): the guest never reached the initrd; booting it again"
        retries=1
    done
    rm -f "$vd/silent"
    printf 'qemu_rc=%s\nwall_s=%s\nsilent_retries=%s\n' "$vrc" "$wall" "$retries" >"$vd/boot.env"
    log "boot $(basename "$vd"): qemu exit $vrc in ${wall}s"
}
