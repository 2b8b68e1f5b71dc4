#!/bin/sh
# Builds a busybox initramfs (cpio newc, gzip) for the end-to-end Linux guest from
# Debian's busybox-static:arm64 and prints its path.
#
#   tests/make-initramfs.sh           # .cache/guest/initramfs-ok.cpio.gz
#   tests/make-initramfs.sh ok        # the same
#   tests/make-initramfs.sh idle      # init prints the marker, then sleeps forever
#   tests/make-initramfs.sh broken    # /init is not executable: the kernel panics
#   GUEST_CACHE=/tmp/g tests/make-initramfs.sh
#
# Variants:
#   ok      /init (a busybox sh script) mounts proc and sys, prints
#           "VMM-E2E: init reached userspace on <uname -m>" and powers off with
#           `poweroff -f` (reboot(2) RB_POWER_OFF, which Linux turns into PSCI SYSTEM_OFF).
#   idle    like ok, but prints "VMM-E2E: idle" and then sleeps (the guest sits in WFI)
#           until someone destroys the VM.
#   broken  /init exists but has no interpreter (a script whose #! names a missing
#           file) and there is no /sbin/init, /etc/init, /bin/init or /bin/sh: the
#           kernel panics with "No working init found"; with panic=-1 on the command
#           line it reboots at once through PSCI SYSTEM_RESET.
#
# Cache: $GUEST_CACHE, default <repo>/.cache/guest (as tests/fetch-guest.sh). The
# busybox .deb is downloaded once; an initramfs is rebuilt only when this script is
# newer than it. Any failure exits non-zero with the reason on stderr.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
self="$here/$(basename "$0")"
cache=${GUEST_CACHE:-$(dirname "$here")/.cache/guest}
variant=${1:-ok}
mkdir -p "$cache"

die() {
	echo "make-initramfs: $*" >&2
	exit 1
}

case "$variant" in
ok | idle | broken) ;;
*) die "unknown variant '$variant' (ok, idle or broken)" ;;
esac

out="$cache/initramfs-$variant.cpio.gz"
if [ -s "$out" ] && [ "$out" -nt "$self" ]; then
	echo "$out"
	exit 0
fi

for tool in cpio gzip dpkg-deb; do
	command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed"
done

# The busybox binary: cached, else from apt (tests/lib/apt-download.sh, as
# tests/fetch-guest.sh).
bb="$cache/busybox-arm64"
if [ ! -s "$bb" ]; then
	. "$here/lib/apt-download.sh"
	apt_setup
	if ! apt-cache show busybox-static:arm64 >/dev/null 2>&1; then
		apt_update
	fi
	work=$(apt_workdir "$cache" busybox)
	trap 'rm -rf "$work"' EXIT
	if ! apt_download "$work" busybox-static; then
		# Lists older than the mirror name a version it no longer has: update, retry.
		apt_update
		apt_download "$work" busybox-static || die "apt-get download busybox-static:arm64 failed (after apt-get update)"
	fi
	apt_extract "$work" busybox-static
	[ -s "$work/root/bin/busybox" ] || die "busybox-static has no /bin/busybox"
	cp "$work/root/bin/busybox" "$work/busybox" && mv "$work/busybox" "$bb"
	rm -rf "$work"
	trap - EXIT
fi

root=$(mktemp -d "$cache/initramfs.XXXXXX")
trap 'rm -rf "$root" "$root.cpio" "$root.cpio.gz"' EXIT
mkdir -p "$root/bin" "$root/dev" "$root/proc" "$root/sys"
cp "$bb" "$root/bin/busybox"
chmod 755 "$root/bin/busybox"

case "$variant" in
ok | idle)
	# The applets init uses, as links, so the script runs without an installer step.
	for a in sh mount uname echo poweroff sleep cat; do
		ln -s busybox "$root/bin/$a"
	done
	{
		echo '#!/bin/sh'
		echo 'mount -t proc proc /proc'
		echo 'mount -t sysfs sysfs /sys'
		if [ "$variant" = ok ]; then
			echo 'echo "VMM-E2E: init reached userspace on $(uname -m)"'
			echo 'poweroff -f'
		else
			echo 'echo "VMM-E2E: idle"'
			echo 'while :; do sleep 3600; done'
		fi
	} >"$root/init"
	;;
broken)
	# An interpreter that does not exist: execve fails with ENOENT and, with no
	# fallback init and no /bin/sh, the kernel panics.
	printf '#!/bin/missing-shell\n' >"$root/init"
	;;
esac
chmod 755 "$root/init"

# No /dev/console here: it needs mknod (root). Linux's built-in initramfs
# (usr/default_cpio_list) already holds /dev/console, and ours is unpacked over it.
(cd "$root" && find . | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) >"$root.cpio" ||
	die "cpio failed"
gzip -9n <"$root.cpio" >"$root.cpio.gz" || die "gzip failed"
rm -f "$root.cpio"
mv "$root.cpio.gz" "$out"
echo "$out"
