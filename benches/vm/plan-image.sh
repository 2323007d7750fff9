#!/bin/sh
# plan-image.sh WORK_DIR RECORDING
# The image build's last steps, on WORK_DIR/disk.img (from build-image.sh):
#  1. the hand-written list -> /etc/prewarm/boot.manifest (the default one);
#  2. RECORDING (a boot recorded by prewarm record, on a copy of this image)
#     -> /etc/prewarm/recorded.manifest, which a boot selects with
#     prewarm.manifest=/etc/prewarm/recorded.manifest;
#  3. the initrd again: 50prewarm includes itself (a manifest is installed),
#     and the recorded manifest goes in too (dracut --install) -> initrd.img.
# Both manifests are copied to WORK_DIR (hand.manifest, recorded.manifest) for
# the test's analysis, with files.manifest: every file of the image, which is
# not installed (it tells file-data chunks from metadata-only chunks).
# Planning only adds files: nothing already in the image moves.
set -eu
. "$(dirname -- "$0")/lib.sh"
[ $# -eq 2 ] || die "usage: $0 WORK_DIR RECORDING"
WORK=$1 REC=$2
MNT=$WORK/mnt IMG=$WORK/disk.img PREWARM=$WORK/prewarm
cleanup() {
    chroot_umount "$MNT"
    if mountpoint -q "$MNT" 2>/dev/null; then umount "$MNT"; fi
    return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir -p "$MNT"
mount -o loop "$IMG" "$MNT"

# As an image build runs them (--root: the lists name the image's paths).
"$PREWARM" plan --root "$MNT" --paths "$MNT/etc/prewarm/boot.list" \
    -m "$MNT/etc/prewarm/boot.manifest"
"$PREWARM" plan --root "$MNT" --paths "$REC" -m "$MNT/etc/prewarm/recorded.manifest"
cp "$MNT/etc/prewarm/boot.manifest" "$WORK/hand.manifest"
cp "$MNT/etc/prewarm/recorded.manifest" "$WORK/recorded.manifest"
# Every regular file of the image, outside it (-q: no per-file warnings).
"$PREWARM" -q plan --root "$MNT" -m "$WORK/files.manifest" /

make_initrd "$MNT" "$WORK/initrd.img" /etc/prewarm/recorded.manifest
for want in prewarm-initrd.service etc/prewarm/boot.manifest etc/prewarm/recorded.manifest; do
    grep -q "$want" "$WORK/initrd.img.list" || die "$want is not in the initrd"
done
cleanup; trap - EXIT
e2fsck -fn "$IMG" >/dev/null 2>&1 || die "e2fsck found errors in $IMG"
log "manifests planned: $(ls -l "$WORK"/*.manifest | awk '{print $NF": "$5" bytes"}' | tr '\n' ' ')"
