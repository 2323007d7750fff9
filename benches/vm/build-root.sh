#!/bin/sh
# build-root.sh: print the path of a cached minimal Debian root tree (systemd,
# udev, kmod, dracut, a kernel, e2fsprogs), building it with mmdebstrap if the
# cache has none for the current inputs. The tree is never modified afterwards:
# build-image.sh copies it.
set -eu
. "$(dirname -- "$0")/lib.sh"

MIRROR=$(debian_mirror)
SUITE=$(debian_suite)
PKGS=systemd,systemd-sysv,udev,kmod,dracut,linux-image-amd64,e2fsprogs
# The cache key covers everything that shapes the tree.
KEY=$(printf '%s\n' "$MIRROR" "$SUITE" "$PKGS" "$(cat "$0")" | sha256sum | cut -c1-16)
OUT=$PREWARM_VM_CACHE/root-$KEY
if [ -f "$OUT/.complete" ]; then echo "$OUT"; exit 0; fi

command -v mmdebstrap >/dev/null || die "mmdebstrap not installed"
mkdir -p "$PREWARM_VM_CACHE"
rm -rf "$PREWARM_VM_CACHE"/root-*          # trees of older inputs
log "mmdebstrap $SUITE from $MIRROR -> $OUT"
SRC="deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb ${MIRROR%/debian}/debian-security $SUITE-security main"
# The kernel's postinst would run dracut's kernel hook (a generic 39 MB
# initrd, ~45 s): divert the hook and leave a no-op stub in its place
# (dracut's own trigger calls the path directly; without a stub it exits 127).
HOOK=/etc/kernel/postinst.d/dracut
# Drop docs, man pages, locales and the kernel's big driver trees (keep
# block, virtio, char, tty: enough for a virtio disk and a serial console).
M=/lib/modules/*/kernel
start=$(date +%s)
# One retry: a transient mirror error should not fail CI.
build() {
    rm -rf "$OUT.tmp"
    heavy mmdebstrap --variant=minbase --include="$PKGS" \
        --aptopt='APT::Install-Recommends "false"' \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/info/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt="path-exclude=$M/drivers/*" \
        --dpkgopt="path-include=$M/drivers/block/*" \
        --dpkgopt="path-include=$M/drivers/virtio/*" \
        --dpkgopt="path-include=$M/drivers/char/*" \
        --dpkgopt="path-include=$M/drivers/tty/*" \
        --dpkgopt="path-exclude=$M/sound/*" \
        --dpkgopt="path-exclude=$M/net/*" \
        --essential-hook="mkdir -p \"\$1/etc/kernel/postinst.d\"" \
        --essential-hook="chroot \"\$1\" dpkg-divert --local --rename --divert $HOOK.diverted --add $HOOK" \
        --essential-hook="printf '#!/bin/sh\nexit 0\n' > \"\$1$HOOK\" && chmod 755 \"\$1$HOOK\"" \
        "$SUITE" "$OUT.tmp" "$SRC" >&2
}
build || { log "mmdebstrap failed; retrying once"; sleep 10; build; }
ls "$OUT.tmp"/lib/modules/*/kernel/fs/ext4 >/dev/null || die "no ext4 module in the tree"
touch "$OUT.tmp/.complete"
mv "$OUT.tmp" "$OUT"
log "root tree built in $(( $(date +%s) - start )) s ($(du -sm "$OUT" | cut -f1) MiB)"
echo "$OUT"
