# Shared by tests/make-initramfs.sh and tests/make-rootdisk.sh (sourced, POSIX sh): the
# static arm64 busybox from Debian's busybox-static:arm64, cached as
# CACHE/busybox-arm64. The caller defines die() (prints its own prefix and exits
# non-zero) and $here (the tests/ directory) before using it.
#
#   busybox_arm64 CACHE    prints CACHE/busybox-arm64, downloaded first when missing
#                          (tests/lib/apt-download.sh, in a temporary directory inside
#                          CACHE, published by rename); run it as
#                          bb=$(busybox_arm64 "$cache") || exit 1
#                          (a failure has already printed its reason on stderr)

# A subshell body: the EXIT trap and apt's variables stay inside it.
busybox_arm64() (
	bb="$1/busybox-arm64"
	if [ -s "$bb" ]; then
		echo "$bb"
		exit 0
	fi
	. "$here/lib/apt-download.sh"
	apt_setup
	if ! apt-cache show busybox-static:arm64 >/dev/null 2>&1; then
		apt_update
	fi
	work=$(apt_workdir "$1" busybox)
	trap 'rm -rf "$work"' EXIT
	if ! apt_download "$work" busybox-static; then
		# Lists older than the mirror name a version it no longer has: update, retry.
		apt_update
		apt_download "$work" busybox-static || die "apt-get download busybox-static:arm64 failed (after apt-get update)"
	fi
	apt_extract "$work" busybox-static
	[ -s "$work/root/bin/busybox" ] || die "busybox-static has no /bin/busybox"
	cp "$work/root/bin/busybox" "$work/busybox" && mv "$work/busybox" "$bb" ||
		die "cannot publish $bb"
	echo "$bb"
)
