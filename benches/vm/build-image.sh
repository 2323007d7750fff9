#!/bin/sh
# build-image.sh ROOT_TREE OUT_DIR PREWARM_DEB
# Makes OUT_DIR/{disk.img,vmlinuz,initrd-plain.img,layout.env,big.chunks} from
# a copy of ROOT_TREE (see build-root.sh) plus prewarm, its units, the
# hand-written list, and the stand-in kubelet. disk.img is a bare ext4 image
# (no partition table), so a file's physical offset in the filesystem is its
# offset in the image. It has no manifest yet, so initrd-plain.img has no
# prewarm: the image as a recording boot sees it. plan-image.sh plans the
# manifests into it and builds initrd.img.
set -eu
. "$(dirname -- "$0")/lib.sh"
[ $# -eq 3 ] || die "usage: $0 ROOT_TREE OUT_DIR PREWARM_DEB"
ROOT=$1 OUT=$2 DEB=$3
: "${VM_IMAGE_SIZE:=1G}" "${VM_BIG_MIB:=40}" "${VM_CHUNK:=524288}"
TREE=$OUT/tree MNT=$OUT/mnt IMG=$OUT/disk.img

# Undo mounts on every exit path (each umount only if still mounted).
cleanup() {
    chroot_umount "$MNT"
    if mountpoint -q "$MNT" 2>/dev/null; then umount "$MNT"; fi
    rm -rf "$TREE"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
rm -rf "$TREE" "$IMG"; mkdir -p "$OUT" "$MNT"
t=$(date +%s)

# --- the root tree: Debian + prewarm + the stand-in kubelet -----------------
cp -a "$ROOT" "$TREE"; rm -f "$TREE/.complete"
# prewarm from its package, as an image build installs it: dpkg runs the
# maintainer scripts chrooted into the tree; then the image build's own
# steps: enable the units (the package enables nothing) and write the list;
# plan-image.sh then plans the manifests and rebuilds the initrd.
dpkg --root="$TREE" -i "$DEB" >/dev/null
mkdir -p "$TREE/etc/systemd/system/multi-user.target.wants" \
    "$TREE/etc/systemd/system/sysinit.target.wants"
ln -sf /usr/lib/systemd/system/prewarm.service \
    "$TREE/etc/systemd/system/multi-user.target.wants/prewarm.service"
# The recorder too: it runs only on a boot with prewarm.record=1.
ln -sf /usr/lib/systemd/system/prewarm-record.service \
    "$TREE/etc/systemd/system/sysinit.target.wants/prewarm-record.service"
mkdir -p "$TREE/etc/prewarm"
# A recording ends when the stand-in kubelet is active, plus a short settle
# covering the stand-in's reading (it then waits for the recording).
printf 'PREWARM_RECORD_UNTIL=kubelet.service\nPREWARM_RECORD_SETTLE=10s\n' \
    >"$TREE/etc/prewarm/record.env"
# The same binary plans the manifests on the build host (plan-image.sh).
cp "$TREE/usr/bin/prewarm" "$OUT/prewarm"
echo 5f1b7a3c9d2e4f60718293a4b5c6d7e8 >"$TREE/etc/machine-id"   # no first boot
echo prewarm-vm >"$TREE/etc/hostname"
install -m755 "$VM_DIR/guest/kubelet-standin.sh" "$TREE/usr/local/bin/"
install -m644 "$VM_DIR/guest/kubelet.service" "$TREE/etc/systemd/system/"
ln -sf ../kubelet.service "$TREE/etc/systemd/system/multi-user.target.wants/"
# Units that would only add noise (timers, scrubs) are masked.
for u in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer \
    e2scrub_reap.service dpkg-db-backup.timer fstrim.timer; do
    ln -sf /dev/null "$TREE/etc/systemd/system/$u"
done
# The big "binary" and the marker: incompressible data.
head -c "${VM_BIG_MIB}M" /dev/urandom >"$TREE/usr/bin/kubelet-standin"
mkdir -p "$TREE/var/lib/kubelet-standin"
head -c 2M /dev/urandom >"$TREE/var/lib/kubelet-standin/marker"
# What prewarm hydrates: the stand-in first, then the libraries of early boot.
cat >"$TREE/etc/prewarm/boot.list" <<'LIST'
# prewarm itself, with the most urgent class: the root phase runs it from this disk
10 /usr/bin/prewarm
10 /usr/bin/kubelet-standin
20 /usr/lib/x86_64-linux-gnu/libc.so.6
20 /usr/lib/x86_64-linux-gnu/systemd/libsystemd-shared-*.so
20 /usr/bin/systemctl
50 /usr/lib/x86_64-linux-gnu/libcrypto.so.*
LIST

# --- the image ---------------------------------------------------------------
# Eager inode-table/journal init: no ext4lazyinit writes/reads at boot.
mkfs.ext4 -q -F -L prewarm-vm -E lazy_itable_init=0,lazy_journal_init=0 \
    -d "$TREE" "$IMG" "$VM_IMAGE_SIZE"
rm -rf "$TREE"
UUID=$(blkid -o value -s UUID "$IMG")

# Chunks (VM_CHUNK bytes) of a file, from its 4 KiB blocks in logical order.
blocks() { debugfs -R "blocks $1" "$IMG" 2>/dev/null | tr ' ' '\n' | grep .; }
per=$((VM_CHUNK / 4096))
blocks /usr/bin/kubelet-standin | awk -v p="$per" '{print int($1/p)}' | uniq \
    | sort -nu >"$OUT/big.chunks"
# Marker: the first chunk whose every block belongs to the marker file;
# MARKER_SKIP = logical block index of that chunk's first block.
set -- $(blocks /var/lib/kubelet-standin/marker | awk -v p="$per" '
    { c = int($1/p); n[c]++; if (!(c in first)) { first[c] = NR - 1; blk[c] = $1 } }
    END { for (c in n) if (n[c] == p && blk[c] % p == 0 && (best == "" || c < best)) best = c
          if (best != "") print best, first[best] }')
[ $# -eq 2 ] || die "no whole chunk inside the marker file"
MARKER_CHUNK=$1 MARKER_SKIP=$2

# --- the stand-in's settings and a plain initrd -------------------------------
mount -o loop "$IMG" "$MNT"
printf 'MARKER=/var/lib/kubelet-standin/marker\nMARKER_SKIP=%s\nBIG=/usr/bin/kubelet-standin\n' \
    "$MARKER_SKIP" >"$MNT/etc/kubelet-standin.conf"
KVER=$(ls "$MNT/lib/modules" | head -n1)
make_initrd "$MNT" "$OUT/initrd-plain.img"
cp "$MNT/boot/vmlinuz-$KVER" "$OUT/vmlinuz"
grep -q prewarm "$OUT/initrd-plain.img.list" && die "prewarm in the initrd, but no manifest is installed"
cleanup; trap - EXIT
e2fsck -fn "$IMG" >/dev/null 2>&1 || die "e2fsck found errors in $IMG"

cat >"$OUT/layout.env" <<ENV
UUID=$UUID
CHUNK_SIZE=$VM_CHUNK
IMAGE_BYTES=$(stat -c %s "$IMG")
MARKER_CHUNK=$MARKER_CHUNK
MARKER_SKIP=$MARKER_SKIP
BIG_CHUNKS=$(wc -l <"$OUT/big.chunks")
KVER=$KVER
ENV
log "image built in $(( $(date +%s) - t )) s: $(cat "$OUT/layout.env" | tr '\n' ' ')"
