#!/bin/sh
# run.sh WORK_DIR: the whole VM boot test up to the evidence; the Rust test
# benches/tests/vm_boot.rs asserts on it. Steps:
#  1. a cached minimal Debian root tree (build-root.sh);
#  2. the disk image (no manifest yet), kernel and a plain initrd
#     (build-image.sh);
#  3. a recording boot: a copy of the image booted directly (a warm disk)
#     with prewarm.record=1; its /var/lib/prewarm/boot.rec is taken out
#     after poweroff -> WORK_DIR/boot.rec, the boot's logs in WORK_DIR/record/;
#  4. the manifests (hand-written list, recording) and the initrd with
#     prewarm (plan-image.sh);
#  5. the image served by prewarm-testbed (a lazy, snapshot-restored disk);
#  6. boots under qemu (KVM if it works, else TCG) from that disk, writes
#     going to an overlay, counters reset before each, in rounds of
#     "with" (the hand-written list's manifest), "recorded" (the recording's,
#     prewarm.manifest=/etc/prewarm/recorded.manifest) and "without"
#     (prewarm=0 rd.prewarm=0); then "warmwith" and "warmwithout", the same
#     image booted directly (a warm disk: no testbed, no fetch to wait for),
#     which show what prewarm itself costs a boot.
# Per boot, WORK_DIR/boot-NAME-N/ (N = 1..VM_REPEAT) gets console.log
# (ttyS0), data.log (ttyS1: the stand-in's results and the boot journal),
# stats.json (testbed counters) and boot.env (qemu exit status, wall time).
# Environment: PREWARM_DEB (prewarm's .deb, scripts/package), PREWARM_TESTBED
# (prewarm-testbed), VM_LATENCY_MS (50), VM_CONCURRENCY (8),
# VM_TIMEOUT (s per boot, 180), VM_SILENT_S (s without console output before
# a boot is made again, 60; lib.sh boot_vm), VM_BOOTS ("with recorded without warmwith
# warmwithout"), VM_REPEAT (3), VM_WARM_REPEAT (rounds of the warm kinds, 5:
# their difference is a fraction of a second under TCG's noise, and a boot
# on a warm disk is quick), VM_ACCEL (kvm or tcg; default: probe).
set -eu
. "$(dirname -- "$0")/lib.sh"
[ $# -eq 1 ] || die "usage: $0 WORK_DIR"
WORK=$1
: "${PREWARM_DEB:?}" "${PREWARM_TESTBED:?}"
: "${VM_LATENCY_MS:=50}" "${VM_CONCURRENCY:=8}" "${VM_TIMEOUT:=180}" "${VM_BOOTS:=with recorded without warmwith warmwithout}" "${VM_REPEAT:=3}" "${VM_WARM_REPEAT:=5}"
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
mkdir -p "$WORK"; rm -rf "$WORK"/boot-* "$WORK/record" "$WORK/boot.rec"

t=$(date +%s)
ROOT=$("$VM_DIR/build-root.sh")
echo "root_s=$(( $(date +%s) - t ))" >"$WORK/timings.env"
t=$(date +%s)
"$VM_DIR/build-image.sh" "$ROOT" "$WORK" "$PREWARM_DEB"
echo "image_s=$(( $(date +%s) - t ))" >>"$WORK/timings.env"
. "$WORK/layout.env"

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
# The recording boot, on a warm disk: a private copy of the image (it gets
# written: rw, the recording) booted directly, no testbed. The image has no
# manifest yet, so prewarm does not run; prewarm-record.service does
# (prewarm.record=1), until the stand-in is active plus the settle time of
# /etc/prewarm/record.env, and the stand-in waits for its boot.rec.
t=$(date +%s)
exec 9>>"$PREWARM_HEAVY_LOCK"; flock 9
cp --sparse=always "$WORK/disk.img" "$WORK/record.img"
boot_vm "$WORK/record" "$WORK/vmlinuz" "$WORK/initrd-plain.img" \
    "$BASE rw prewarm.record=1" "file=$WORK/record.img,format=raw,if=virtio"
exec 9>&-
# Replay the journal should the guest have left one, then read the file.
e2fsck -y -E journal_only "$WORK/record.img" >/dev/null 2>&1 || true
debugfs -R 'cat /var/lib/prewarm/boot.rec' "$WORK/record.img" >"$WORK/boot.rec" 2>/dev/null
rm -f "$WORK/record.img"
head -n1 "$WORK/boot.rec" | grep -q '^# prewarm recording' \
    || die "no recording in the guest (see $WORK/record/console.log)"
log "recording: $(grep -vc '^#' "$WORK/boot.rec") files"
echo "record_s=$(( $(date +%s) - t ))" >>"$WORK/timings.env"
t=$(date +%s)
"$VM_DIR/plan-image.sh" "$WORK" "$WORK/boot.rec"
echo "plan_s=$(( $(date +%s) - t ))" >>"$WORK/timings.env"

# The lazy disk. Latency 50 ms (the testbed's default is 4): the stand-in's
# 81 chunks, read serially by cat, then take ~4 s, against ~1 s once
# hydrated. At 20 ms the 1.5 s difference was within TCG's run-to-run
# noise (a second or two between boots of one kind).
mkdir -p "$TB"; rm -f "$WORK/tb.ready"
"$PREWARM_TESTBED" serve --image "$WORK/disk.img" --mount "$TB" \
    --ready-file "$WORK/tb.ready" --chunk-size "$CHUNK_SIZE" \
    --latency-ms "$VM_LATENCY_MS" --concurrency "$VM_CONCURRENCY" \
    >"$WORK/testbed.log" 2>&1 &
TBPID=$!
i=0; while [ ! -e "$WORK/tb.ready" ]; do
    i=$((i + 1)); [ $i -lt 200 ] || die "testbed not ready"; sleep 0.05
done

rounds=$VM_REPEAT; [ "$VM_WARM_REPEAT" -gt "$rounds" ] && rounds=$VM_WARM_REPEAT
r=0; while [ $r -lt "$rounds" ]; do r=$((r + 1)); for name in $VM_BOOTS; do
    case $name in                # the warm kinds may run more rounds
    warm*) [ $r -le "$VM_WARM_REPEAT" ] || continue ;;
    *) [ $r -le "$VM_REPEAT" ] || continue ;;
    esac
    d=$WORK/boot-$name-$r; mkdir -p "$d"
    case $name in                # kernel switches per kind of boot
    without | warmwithout) extra="prewarm=0 rd.prewarm=0" ;;
    recorded) extra="prewarm.manifest=/etc/prewarm/recorded.manifest" ;;
    rootonly) extra="rd.prewarm=0" ;;       # for experiments: one phase only
    initrdonly) extra="prewarm=0" ;;
    *) extra= ;;
    esac
    # The testbed's file is 0444 and never written, nor is disk.img:
    # snapshot=on sends the guest's writes to a temporary overlay.
    case $name in
    warm*) disk=$WORK/disk.img ;;
    *) disk=$TB/disk.img ;;
    esac
    exec 9>>"$PREWARM_HEAVY_LOCK"; flock 9        # no other heavy job meanwhile
    "$PREWARM_TESTBED" reset --mount "$TB" >/dev/null
    log "boot $name ($extra)"
    boot_vm "$d" "$WORK/vmlinuz" "$WORK/initrd.img" "$BASE $extra" \
        "file=$disk,format=raw,if=virtio,cache=none,snapshot=on"
    exec 9>&-
    case $name in
    warm*) ;;
    *) "$PREWARM_TESTBED" stats --mount "$TB" >"$d/stats.json" ;;
    esac
done; done
