#!/bin/sh
# Builds a root file system disk for the end-to-end Linux guest: a raw ext4 image
# (64 MiB, sparse) holding Debian's static arm64 busybox, /bin/stale-code and
# /bin/diskbench (built here from tests/guests/stale_code.c and diskbench.c with
# aarch64-linux-gnu-gcc -static) and an /sbin/init
# script, made with `mkfs.ext4 -d` (no root, no loop mount), and prints its path. Boot
# it with the root initramfs (`tests/make-initramfs.sh root`) and root=/dev/vda.
#
#   tests/make-rootdisk.sh           # .cache/guest/rootdisk-write.img
#   tests/make-rootdisk.sh write     # the same
#   GUEST_CACHE=/tmp/g tests/make-rootdisk.sh write
#
# The image in the cache is a pristine template, shared by every test: the guest
# writes to its disk, so copy the image first and boot the copy
# (cp --sparse=always IMG COPY), never the cached file itself.
#
# Variants:
#   write   /sbin/init (busybox sh) mounts proc and sys unless the initramfs moved
#           them there, then prints
#             VMM-E2E: rootfs init on <uname -m>
#             VMM-E2E: disks: <the names in /sys/block, space-separated>
#           and, when /dev/hwrng exists, 16 bytes read from it (dd, od), or that the
#           read failed within 10 s, and the kernel's current rng if it has one:
#             VMM-E2E: hwrng <32 hex digits>      | VMM-E2E: hwrng read failed
#             VMM-E2E: hwrng current: <rng_current>
#           Then, if / is mounted read-write and appending to /var/log/vmm-e2e-boots
#           works, it appends "boot <n>" (n: the lines already there + 1) and prints
#             VMM-E2E: root is writable
#             VMM-E2E: boots: boot 1
#             VMM-E2E: boots: boot 2            (one line per line of the file)
#           runs `sync` (the kernel sends the disk a FLUSH) and remounts / read-only (so
#           ext4 checkpoints its journal and the image is clean for host tools such as
#           `debugfs -R 'cat /var/log/vmm-e2e-boots' IMG`); otherwise it prints
#             VMM-E2E: root is read-only
#           then tries `mount -o remount,rw /` and prints
#             VMM-E2E: remount rw refused      | VMM-E2E: remount rw allowed
#           (a read-only virtio disk refuses; allowed, it remounts read-only again and
#           writes nothing), and the boots file's lines as above.
#           Before that, one line per virtio disk, in the kernel's order:
#             VMM-E2E: disk <name> <size in 512-byte sectors> <serial (GET_ID)>
#           With vmm_e2e=stale on the kernel command line it then runs
#           `/bin/stale-code /dev/vdb`, which needs /dev/vdb to start with the code
#           `mov w0, #2; ret` (bytes 40 00 80 52 c0 03 5f d6) and prints
#             VMM-E2E: stale-code first 1
#             VMM-E2E: stale-code then 2     (1: the guest ran stale code after a
#                                             virtio-blk read wrote the page)
#           or "VMM-E2E: stale-code error <what>"; either way init goes on as below.
#           With vmm_e2e=net it configures eth0 (10.0.2.15/24), pings 10.0.2.1 and
#           moves 16 MiB each way over TCP with busybox nc (to port 5001, from port
#           5002 of 10.0.2.1), printing
#             VMM-E2E: net eth0 <MAC>
#             VMM-E2E: net ping ok             | VMM-E2E: net ping failed
#             VMM-E2E: net sent <sha256 of the 16 MiB sent>
#             VMM-E2E: net received <sha256 of the 16 MiB received>
#           With vmm_e2e=port it finds the virtio-console port named org.vmm.e2e
#           (/sys/class/virtio-ports/*/name), writes "hello from the guest" to it, reads
#           a line back and prints
#             VMM-E2E: port org.vmm.e2e is /dev/vportNpM
#             VMM-E2E: port got: <the line>
#           With vmm_e2e=bench it runs /bin/diskbench (tests/guests/diskbench.c) on
#           /dev/vdb and, with eth0, sends 64 MiB to 10.0.2.1:5003 and takes 64 MiB
#           from 10.0.2.1:5004 (cargo xtask bench-devices times them).
#           With vmm_e2e=dmesg it prints the kernel's log (dmesg) to the console.
#           With vmm_e2e=console it prints "VMM-E2E: console ready", reads a line from
#           the console (what is typed into bhyve's) and prints
#             VMM-E2E: console got: <the line>
#           With vmm_e2e=hang on the kernel command line (a word of its own; it may
#           come with vmm_e2e=stale) it prints
#             VMM-E2E: flushed, hanging
#           after the sync instead of powering off, and sleeps until killed (a test
#           kills bhyve there to show that what the guest flushed is on the disk).
#           Otherwise it ends with `poweroff -f`. The template has no boots file: a
#           fresh copy's first boot writes "boot 1".
#
# Cache: $GUEST_CACHE, default <repo>/.cache/guest (as tests/fetch-guest.sh); busybox
# is tests/lib/busybox.sh's cached busybox-arm64. The image is rebuilt only when this
# script or tests/guests/stale_code.c is newer than it; it is made in a temporary
# directory inside the cache and published by rename. Any failure exits non-zero with
# the reason on stderr.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
self="$here/$(basename "$0")"
cache=${GUEST_CACHE:-$(dirname "$here")/.cache/guest}
variant=${1:-write}
mkdir -p "$cache"

die() {
	echo "make-rootdisk: $*" >&2
	exit 1
}

case "$variant" in
write) ;;
*) die "unknown variant '$variant' (write)" ;;
esac
[ $# -le 1 ] || die "too many arguments (one variant: write)"

out="$cache/rootdisk-$variant.img"
stale_src=$here/guests/stale_code.c
bench_src=$here/guests/diskbench.c
if [ -s "$out" ] && [ "$out" -nt "$self" ] && [ "$out" -nt "$stale_src" ] &&
	[ "$out" -nt "$bench_src" ]; then
	echo "$out"
	exit 0
fi

# mkfs.ext4 lives in /sbin, which a user's PATH may leave out.
PATH=$PATH:/usr/sbin:/sbin
for tool in mkfs.ext4 truncate; do
	command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed (mkfs.ext4: e2fsprogs)"
done
command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 ||
	die "aarch64-linux-gnu-gcc is not installed (Debian/Ubuntu: gcc-aarch64-linux-gnu)"

. "$here/lib/busybox.sh"
bb=$(busybox_arm64 "$cache") || exit 1

work=$(mktemp -d "$cache/rootdisk.XXXXXX") || die "mktemp -d in $cache failed"
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root/bin" "$root/sbin" "$root/dev" "$root/proc" "$root/sys" "$root/tmp" \
	"$root/var/log"
cp "$bb" "$root/bin/busybox"
chmod 755 "$root/bin/busybox"
# The applets init uses, as links (busybox cannot run here to list them all).
for a in sh mount umount cat echo uname ls dd od tr wc timeout sync poweroff sleep \
	ip ping nc sha256sum dmesg; do
	ln -s busybox "$root/bin/$a"
done
aarch64-linux-gnu-gcc -static -O2 -s -o "$root/bin/stale-code" "$stale_src" ||
	die "aarch64-linux-gnu-gcc -static could not build $stale_src"
aarch64-linux-gnu-gcc -static -O2 -s -o "$root/bin/diskbench" "$bench_src" ||
	die "aarch64-linux-gnu-gcc -static could not build $bench_src"

case "$variant" in
write)
	cat >"$root/sbin/init" <<'INIT'
#!/bin/sh
# /sbin/init of tests/make-rootdisk.sh's "write" disk: report, run /bin/stale-code on
# /dev/vdb with vmm_e2e=stale, count this boot in /var/log/vmm-e2e-boots when / is
# writable, power off (or hang with vmm_e2e=hang).
PATH=/bin:/sbin
export PATH
# Whether $1 is a mount point, from /proc/mounts (this busybox has no mountpoint).
mounted() {
	[ -r /proc/mounts ] || return 1
	while read -r _ dir _; do
		[ "$dir" = "$1" ] && return 0
	done </proc/mounts
	return 1
}
mounted /proc || mount -t proc proc /proc
mounted /sys || mount -t sysfs sysfs /sys

echo "VMM-E2E: rootfs init on $(uname -m)"
echo "VMM-E2E: disks:" $(ls /sys/block)
if [ -e /dev/hwrng ]; then
	hex=$(timeout 10 dd if=/dev/hwrng bs=1 count=16 2>/dev/null | od -An -tx1 | tr -d ' \n')
	if [ "${#hex}" -eq 32 ]; then
		echo "VMM-E2E: hwrng $hex"
	else
		echo "VMM-E2E: hwrng read failed"
	fi
fi
if [ -r /sys/class/misc/hw_random/rng_current ]; then
	echo "VMM-E2E: hwrng current: $(cat /sys/class/misc/hw_random/rng_current)"
fi
for b in /sys/block/vd*; do
	[ -e "$b" ] || continue
	echo "VMM-E2E: disk ${b#/sys/block/} $(cat "$b/size") $(cat "$b/serial" 2>/dev/null)"
done
# vmm_e2e=net: eth0 as 10.0.2.15/24, ping the host end 10.0.2.1, then 16 MiB to
# its port 5001 and 16 MiB from its port 5002, each with its sha256 (the host side
# closes each connection when its 16 MiB are through).
net_test() {
	mount -t tmpfs -o size=48m tmpfs /tmp
	ip link set eth0 up
	ip addr add 10.0.2.15/24 dev eth0
	echo "VMM-E2E: net eth0 $(cat /sys/class/net/eth0/address)"
	if ping -c 3 -W 5 10.0.2.1 >/dev/null 2>&1; then
		echo "VMM-E2E: net ping ok"
	else
		echo "VMM-E2E: net ping failed"
	fi
	dd if=/dev/urandom of=/tmp/up bs=1048576 count=16 2>/dev/null
	set -- $(sha256sum /tmp/up)
	echo "VMM-E2E: net sent $1"
	nc 10.0.2.1 5001 </tmp/up
	nc 10.0.2.1 5002 >/tmp/down
	set -- $(sha256sum /tmp/down)
	echo "VMM-E2E: net received $1"
	umount /tmp
}
# vmm_e2e=port: the virtio-console port named org.vmm.e2e: write a line to it, read
# one back.
port_test() {
	dev=
	for p in /sys/class/virtio-ports/*; do
		[ "$(cat "$p/name" 2>/dev/null)" = org.vmm.e2e ] && dev=/dev/${p##*/}
	done
	if [ -z "$dev" ]; then
		echo "VMM-E2E: port org.vmm.e2e not found"
		return
	fi
	echo "VMM-E2E: port org.vmm.e2e is $dev"
	# One open for both ways: Linux drops what a port received when it is closed.
	exec 3<>"$dev"
	echo "hello from the guest" >&3
	read -r line <&3
	exec 3>&-
	echo "VMM-E2E: port got: $line"
}
# vmm_e2e=bench (cargo xtask bench-devices): /bin/diskbench on /dev/vdb, then, with
# eth0, 64 MiB to 10.0.2.1:5003 and 64 MiB from 10.0.2.1:5004 (the host times both).
bench() {
	if [ -b /dev/vdb ]; then
		/bin/diskbench /dev/vdb 256 10
	fi
	if [ -e /sys/class/net/eth0 ]; then
		ip link set eth0 up
		ip addr add 10.0.2.15/24 dev eth0
		ping -c 1 -W 5 10.0.2.1 >/dev/null 2>&1
		dd if=/dev/zero bs=1048576 count=64 2>/dev/null | nc 10.0.2.1 5003
		nc 10.0.2.1 5004 >/dev/null
		echo "VMM-BENCH: net done"
	fi
}
# vmm_e2e=console: a line typed into the console, read back.
console_test() {
	echo "VMM-E2E: console ready"
	read -r line
	echo "VMM-E2E: console got: $line"
}
# vmm_e2e=hang, stale, net, port, bench, dmesg, console: separate words, any of them.
cmdline=" $(cat /proc/cmdline) "
asked() {
	case "$cmdline" in
	*" vmm_e2e=$1 "*) return 0 ;;
	esac
	return 1
}
hang=
asked hang && hang=1
asked stale && /bin/stale-code /dev/vdb
asked net && net_test
asked port && port_test
asked bench && bench
# dmesg: the kernel's log to the console (what a console costs per byte).
asked dmesg && dmesg
asked console && console_test

# / as mounted: the options of its last line in /proc/mounts.
opts=
while read -r _ dir _ o _; do
	[ "$dir" = / ] && opts=$o
done </proc/mounts
log=/var/log/vmm-e2e-boots
writable=
case ",$opts," in
*,ro,*) ;;
*)
	n=1
	[ -f "$log" ] && n=$(($(wc -l <"$log") + 1))
	if { echo "boot $n" >>"$log"; } 2>/dev/null; then
		writable=1
	fi
	;;
esac
if [ -n "$writable" ]; then
	echo "VMM-E2E: root is writable"
	while IFS= read -r line; do
		echo "VMM-E2E: boots: $line"
	done <"$log"
	sync
	if [ -n "$hang" ]; then
		echo "VMM-E2E: flushed, hanging"
		while :; do sleep 3600; done
	fi
	mount -o remount,ro /
else
	echo "VMM-E2E: root is read-only"
	if mount -o remount,rw / 2>/dev/null; then
		echo "VMM-E2E: remount rw allowed"
		mount -o remount,ro /
	else
		echo "VMM-E2E: remount rw refused"
	fi
	if [ -f "$log" ]; then
		while IFS= read -r line; do
			echo "VMM-E2E: boots: $line"
		done <"$log"
	fi
fi
poweroff -f
INIT
	chmod 755 "$root/sbin/init"
	;;
esac

truncate -s 64M "$work/disk.img" || die "truncate -s 64M $work/disk.img failed"
mkfs.ext4 -q -F -L vmm-e2e-root -E root_owner=0:0 -d "$root" "$work/disk.img" >&2 ||
	die "mkfs.ext4 -d $root failed"
mv "$work/disk.img" "$out" || die "cannot publish $out"
echo "$out"
