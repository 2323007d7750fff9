#!/bin/sh
# dracut module: start prewarm in the initrd, before the root is mounted,
# from the manifest planned at image build time (prewarm plan).

# Include only when asked for (--add prewarm) or when a manifest is installed.
check() {
    [ -f "${dracutsysrootdir-}/etc/prewarm/boot.manifest" ] && return 0
    return 255
}

depends() {
    echo systemd
    return 0
}

install() {
    inst_binary /usr/bin/prewarm
    if [ -f "${dracutsysrootdir-}/etc/prewarm/boot.manifest" ]; then
        inst_simple /etc/prewarm/boot.manifest
    else
        dwarn "prewarm: /etc/prewarm/boot.manifest is missing; run 'prewarm plan' first"
    fi
    inst_simple "$moddir/prewarm-initrd.service" \
        "$systemdsystemunitdir/prewarm-initrd.service"
    $SYSTEMCTL -q --root "$initdir" add-wants initrd.target prewarm-initrd.service
}
