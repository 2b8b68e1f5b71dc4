#!/bin/sh
# Fetches Debian's arm64 cloud kernel (linux-image-6.1.0-*-cloud-arm64-unsigned) into a
# cache and prints the path of its kernel: /boot/vmlinuz-*, a gzip-compressed arm64
# Image, which bhyveload reads as it is (it decompresses gzip itself).
#
#   tests/fetch-guest.sh            # prints e.g. .cache/guest/vmlinuz-6.1.0-35-cloud-arm64
#   GUEST_CACHE=/tmp/g tests/fetch-guest.sh
#
# Cache: $GUEST_CACHE, default <repo>/.cache/guest (.cache/ is gitignored). A cached
# kernel is reused without touching apt. Otherwise the script adds the arm64 foreign
# architecture and updates apt's lists when needed (both idempotent; root or sudo), then
# runs `apt-get download` and `dpkg-deb -x` (tests/lib/apt-download.sh). Any failure
# exits non-zero with the reason on stderr: the tests that call this fail rather than
# skip.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
cache=${GUEST_CACHE:-$(dirname "$here")/.cache/guest}
mkdir -p "$cache"

die() {
	echo "fetch-guest: $*" >&2
	exit 1
}

cached=$(ls "$cache"/vmlinuz-*-cloud-arm64 2>/dev/null | sort -V | tail -n 1 || true)
if [ -n "$cached" ] && [ -s "$cached" ]; then
	echo "$cached"
	exit 0
fi

. "$here/lib/apt-download.sh"
apt_setup

find_pkg() {
	apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-cloud-arm64-unsigned$' 2>/dev/null |
		awk '{print $1}' | sed 's/:arm64$//' | sort -V | tail -n 1
}

pkg=$(find_pkg)
if [ -z "$pkg" ]; then
	apt_update
	pkg=$(find_pkg)
fi
[ -n "$pkg" ] || die "no linux-image-6.1.0-*-cloud-arm64-unsigned package for arm64 in apt's lists"

work=$(apt_workdir "$cache" fetch)
trap 'rm -rf "$work"' EXIT
if ! apt_download "$work" "$pkg"; then
	# Lists older than the mirror name a .deb it no longer has (a newer kernel ABI
	# replaced it): update them and take the newest package they name now.
	apt_update
	pkg=$(find_pkg)
	[ -n "$pkg" ] || die "no linux-image-6.1.0-*-cloud-arm64-unsigned package for arm64 after apt-get update"
	apt_download "$work" "$pkg" || die "apt-get download $pkg:arm64 failed (after apt-get update)"
fi
apt_extract "$work" "$pkg"
src=$(ls "$work"/root/boot/vmlinuz-* 2>/dev/null | head -n 1)
[ -n "$src" ] || die "$pkg has no /boot/vmlinuz-*"
dst="$cache/$(basename "$src")"
cp "$src" "$work/kernel" && mv "$work/kernel" "$dst"
echo "$dst"
