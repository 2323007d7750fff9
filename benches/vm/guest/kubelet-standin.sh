#!/bin/sh
# Stand-in for kubelet (runs as kubelet.service): reads a big binary the way a
# starting service does, measures it, reports, and powers the VM off.
#  1. /proc/uptime at start;
#  2. one O_DIRECT 4 KiB read of the MARKER file, at a block whose whole 512 KiB
#     chunk belongs to the marker and is in no prewarm list: the testbed's
#     hydration time of that chunk marks "kubelet started reading";
#  3. cat of the big file; /proc/uptime again;
#  4. on a recording boot (prewarm.record=1), a wait (at most 60 s) for the
#     recorder's list, so that neither the report's tools below nor the
#     poweroff end up in it.
# Results and the boot journal go to the second serial port (/dev/ttyS1, the
# host's data log), which nothing else writes to; a summary goes to stdout
# (journal+console).
. /etc/kubelet-standin.conf          # MARKER, MARKER_SKIP, BIG
up() { cut -d' ' -f1 /proc/uptime; }
t0=$(up)
dd if="$MARKER" of=/dev/null bs=4096 skip="$MARKER_SKIP" count=1 iflag=direct status=none
t1=$(up)
cat "$BIG" >/dev/null
t2=$(up)
echo "KUBELET-STANDIN start=$t0 marker=$t1 done=$t2"
read -r cmdline </proc/cmdline       # a builtin: nothing read from the disk
case " $cmdline " in
*" prewarm.record=1 "*)
    i=0
    while [ ! -e /var/lib/prewarm/boot.rec ] && [ $i -lt 300 ]; do
        sleep 0.2; i=$((i + 1))
    done ;;
esac
stty -F /dev/ttyS1 raw -echo 2>/dev/null
{
    echo "=== standin start=$t0 marker=$t1 done=$t2"
    echo "=== cmdline $(cat /proc/cmdline)"
    echo "=== units"
    systemctl show -p Id,ActiveState,SubState,Result,ExecMainStatus \
        -p InactiveExitTimestampMonotonic,ActiveEnterTimestampMonotonic \
        -p ExecMainStartTimestampMonotonic,ExecMainExitTimestampMonotonic \
        prewarm.service kubelet.service prewarm-record.service
    for u in prewarm-initrd.service prewarm.service prewarm-record.service; do
        echo "=== output $u"         # the unit's stdout: its --json report
        journalctl -b -o cat --no-pager _SYSTEMD_UNIT="$u"
    done
    echo "=== run-prewarm"
    ls -la /run/prewarm/ 2>&1
    echo "=== journal"
    journalctl -b -o short-monotonic --no-pager
    echo "=== end"
} 2>&1 | cat >/dev/ttyS1                # through a pipe: no colours, no pager
systemctl poweroff --no-block
