#!/bin/sh
# build-image.sh ROOT_TREE OUT_DIR PREWARM_DEB
# Makes OUT_DIR/{disk.img,vmlinuz,initrd.img,layout.env,big.chunks} from a copy
# of ROOT_TREE (see build-root.sh) plus prewarm, its units, and the stand-in
# kubelet. disk.img is a bare ext4 image (no partition table), so a file's
# physical offset in the filesystem is its offset in the image.
set -eu
. "$(dirname -- "$0")/lib.sh"
[ $# -eq 3 ] || die "usage: $0 ROOT_TREE OUT_DIR PREWARM_DEB"
ROOT=$1 OUT=$2 DEB=$3
: "${VM_IMAGE_SIZE:=1G}" "${VM_BIG_MIB:=40}" "${VM_CHUNK:=524288}"
TREE=$OUT/tree MNT=$OUT/mnt IMG=$OUT/disk.img

# Undo mounts on every exit path (each umount only if still mounted).
cleanup() {
    for m in "$MNT/tmp" "$MNT/dev" "$MNT/sys" "$MNT/proc" "$MNT"; do
        mountpoint -q "$m" 2>/dev/null && umount "$m"
    done
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
# steps: enable the root-phase unit (the package enables nothing), and (below)
# write the list, plan the manifest, rebuild the initrd.
dpkg --root="$TREE" -i "$DEB" >/dev/null
mkdir -p "$TREE/etc/systemd/system/multi-user.target.wants"
ln -sf /usr/lib/systemd/system/prewarm.service \
    "$TREE/etc/systemd/system/multi-user.target.wants/prewarm.service"
mkdir -p "$TREE/etc/prewarm"
# The same binary plans the manifest on the build host.
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

# --- manifest and initrd, inside the final image ------------------------------
mount -o loop "$IMG" "$MNT"
printf 'MARKER=/var/lib/kubelet-standin/marker\nMARKER_SKIP=%s\nBIG=/usr/bin/kubelet-standin\n' \
    "$MARKER_SKIP" >"$MNT/etc/kubelet-standin.conf"
"$OUT/prewarm" plan --root "$MNT" --paths "$MNT/etc/prewarm/boot.list" -o "$MNT/etc/prewarm/boot.manifest"
"$OUT/prewarm" show --json "$MNT/etc/prewarm/boot.manifest" >"$OUT/manifest.json" 2>/dev/null || true
# Fresh (non-recursive) proc/sys/dev mounts: nothing to propagate to the host;
# dracut's temporary files go to a tmpfs, not into the image.
mount -t proc proc "$MNT/proc"
mount -t sysfs sys "$MNT/sys"
mount -t devtmpfs dev "$MNT/dev"
mount -t tmpfs tmp "$MNT/tmp"
KVER=$(ls "$MNT/lib/modules" | head -n1)
log "dracut for $KVER"
# No --add prewarm: 50prewarm's check() includes it because a manifest is
# installed, which is how an image build gets it too.
heavy chroot "$MNT" dracut -q --force --no-hostonly --kver "$KVER" --tmpdir /tmp \
    --drivers "virtio_blk virtio_pci ext4 crc32c_generic" /tmp/initrd.img
cp "$MNT/tmp/initrd.img" "$OUT/initrd.img"
cp "$MNT/boot/vmlinuz-$KVER" "$OUT/vmlinuz"
lsinitrd_out=$(chroot "$MNT" lsinitrd /tmp/initrd.img 2>/dev/null || true)
echo "$lsinitrd_out" >"$OUT/initrd.list"
case $lsinitrd_out in
*prewarm-initrd.service*) ;;
*) die "dracut did not include 50prewarm although a manifest is installed" ;;
esac
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
