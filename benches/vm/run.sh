#!/bin/sh
# run.sh WORK_DIR: the whole VM boot test up to the evidence; the Rust test
# benches/tests/vm_boot.rs asserts on it. Steps:
#  1. a cached minimal Debian root tree (build-root.sh);
#  2. the disk image, kernel and initrd with prewarm (build-image.sh);
#  3. the image served by prewarm-testbed (a lazy, snapshot-restored disk);
#  4. boots under qemu (KVM if it works, else TCG) from that disk, writes
#     going to an overlay, counters reset before each,
#     alternating "with" (prewarm on) and "without" (prewarm=0 rd.prewarm=0).
# Per boot, WORK_DIR/boot-NAME-N/ (N = 1..VM_REPEAT) gets console.log
# (ttyS0), data.log (ttyS1: the stand-in's results and the boot journal),
# stats.json (testbed counters) and boot.env (qemu exit status, wall time).
# Environment: PREWARM_DEB (prewarm's .deb, scripts/package), PREWARM_TESTBED
# (prewarm-testbed), VM_LATENCY_MS (20), VM_CONCURRENCY (8),
# VM_TIMEOUT (s per boot, 180), VM_BOOTS ("with without"), VM_REPEAT (2),
# VM_ACCEL (kvm or tcg; default: probe).
set -eu
. "$(dirname -- "$0")/lib.sh"
[ $# -eq 1 ] || die "usage: $0 WORK_DIR"
WORK=$1
: "${PREWARM_DEB:?}" "${PREWARM_TESTBED:?}"
: "${VM_LATENCY_MS:=20}" "${VM_CONCURRENCY:=8}" "${VM_TIMEOUT:=180}" "${VM_BOOTS:=with without}" "${VM_REPEAT:=2}"
TB=$WORK/tb TBPID= QPID=

cleanup() {
    [ -n "$QPID" ] && kill "$QPID" 2>/dev/null
    if [ -n "$TBPID" ]; then
        kill "$TBPID" 2>/dev/null; wait "$TBPID" 2>/dev/null || true
    fi
    mountpoint -q "$TB" 2>/dev/null && umount -l "$TB"
    return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir -p "$WORK"; rm -rf "$WORK"/boot-*

t=$(date +%s)
ROOT=$("$VM_DIR/build-root.sh")
echo "root_s=$(( $(date +%s) - t ))" >"$WORK/timings.env"
t=$(date +%s)
"$VM_DIR/build-image.sh" "$ROOT" "$WORK" "$PREWARM_DEB"
echo "image_s=$(( $(date +%s) - t ))" >>"$WORK/timings.env"
. "$WORK/layout.env"

# The lazy disk. Latency 20 ms (the testbed's default is 4): the stand-in's
# 81 chunks, read serially by cat, then take ~2.4 s, against ~0.6 s once
# hydrated: a difference well above TCG's run-to-run noise.
mkdir -p "$TB"; rm -f "$WORK/tb.ready"
"$PREWARM_TESTBED" serve --image "$WORK/disk.img" --mount "$TB" \
    --ready-file "$WORK/tb.ready" --chunk-size "$CHUNK_SIZE" \
    --latency-ms "$VM_LATENCY_MS" --concurrency "$VM_CONCURRENCY" \
    >"$WORK/testbed.log" 2>&1 &
TBPID=$!
i=0; while [ ! -e "$WORK/tb.ready" ]; do
    i=$((i + 1)); [ $i -lt 200 ] || die "testbed not ready"; sleep 0.05
done

# KVM when it works, TCG otherwise (VM_ACCEL=kvm|tcg skips the probe). On
# some hosts /dev/kvm exists but a stock kernel hangs in its decompressor
# (nested PVM), so the probe boots the kernel with no disk and waits, at
# most 20 s, for it to reach its "no root" panic on the serial console.
if [ -z "${VM_ACCEL:-}" ]; then
    VM_ACCEL=tcg
    if [ -w /dev/kvm ]; then
        timeout -k 5 20 qemu-system-x86_64 -accel kvm -m 256 -nodefaults \
            -no-user-config -display none -no-reboot -kernel "$WORK/vmlinuz" \
            -append "console=ttyS0 panic=-1" -serial "file:$WORK/kvm-probe.log" \
            >/dev/null 2>&1 || true
        grep -q "Kernel panic" "$WORK/kvm-probe.log" 2>/dev/null && VM_ACCEL=kvm
    fi
fi
case $VM_ACCEL in
kvm) ACCEL="-accel kvm" ;;
*) ACCEL="-accel tcg,thread=multi" ;;
esac
echo "accel=$VM_ACCEL" >>"$WORK/timings.env"
log "accelerator: $VM_ACCEL"

# Root read-only, no fsck, never wait at an emergency shell,
# plain wide status lines on the console (unit names not ellipsized), no
# probing of modules that cannot work under TCG.
BASE="root=UUID=$UUID ro console=ttyS0 loglevel=4 systemd.show_status=1 \
fsck.mode=skip rd.emergency=poweroff panic=-1 mitigations=off \
modprobe.blacklist=floppy,kvm,kvm_amd,kvm_intel COLUMNS=250 SYSTEMD_COLORS=0"
r=0; while [ $r -lt "$VM_REPEAT" ]; do r=$((r + 1)); for name in $VM_BOOTS; do
    d=$WORK/boot-$name-$r; mkdir -p "$d"
    case $name in                # kernel switches per kind of boot
    without) extra="prewarm=0 rd.prewarm=0" ;;
    rootonly) extra="rd.prewarm=0" ;;       # for experiments: one phase only
    initrdonly) extra="prewarm=0" ;;
    *) extra= ;;
    esac
    exec 9>>"$PREWARM_HEAVY_LOCK"; flock 9        # no other heavy job meanwhile
    "$PREWARM_TESTBED" reset --mount "$TB" >/dev/null
    log "boot $name ($extra)"
    t=$(date +%s.%N)
    # The testbed's file is 0444 and never written: snapshot=on sends the
    # guest's writes to a temporary overlay.
    # shellcheck disable=SC2086
    timeout -k 10 "$VM_TIMEOUT" qemu-system-x86_64 $ACCEL \
        -smp 2 -m 1024 -nodefaults -no-user-config -display none -no-reboot \
        -kernel "$WORK/vmlinuz" -initrd "$WORK/initrd.img" -append "$BASE $extra" \
        -drive "file=$TB/disk.img,format=raw,if=virtio,cache=none,snapshot=on" \
        -serial "file:$d/console.log" -serial "file:$d/data.log" \
        >"$d/qemu.log" 2>&1 &
    QPID=$!
    rc=0; wait "$QPID" || rc=$?
    QPID=
    exec 9>&-
    wall=$(awk -v a="$t" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    "$PREWARM_TESTBED" stats --mount "$TB" >"$d/stats.json"
    printf 'qemu_rc=%s\nwall_s=%s\n' "$rc" "$wall" >"$d/boot.env"
    log "boot $name-$r: qemu exit $rc in ${wall}s"
done; done
