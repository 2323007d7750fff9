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
