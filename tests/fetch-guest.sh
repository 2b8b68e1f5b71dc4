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
# runs `apt-get download` and `dpkg-deb -x`. Any failure exits non-zero with the reason
# on stderr: the tests that call this fail rather than skip.
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

for tool in apt-get apt-cache dpkg dpkg-deb; do
	command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed (a Debian-based host is needed)"
done
sudo=
if [ "$(id -u)" != 0 ]; then
	command -v sudo >/dev/null 2>&1 || die "not root and no sudo: cannot add the arm64 architecture"
	sudo=sudo
fi

# apt and dpkg take locks; another engineer's apt run should delay us, not fail us.
apt_retry() {
	n=0
	until "$@"; do
		n=$((n + 1))
		[ "$n" -lt 10 ] || return 1
		sleep 6
	done
}

find_pkg() {
	apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-cloud-arm64-unsigned$' 2>/dev/null |
		awk '{print $1}' | sed 's/:arm64$//' | sort -V | tail -n 1
}

if ! dpkg --print-foreign-architectures | grep -qx arm64; then
	$sudo dpkg --add-architecture arm64 || die "dpkg --add-architecture arm64 failed"
	apt_retry $sudo apt-get -q update >&2 || die "apt-get update failed"
fi
pkg=$(find_pkg)
if [ -z "$pkg" ]; then
	apt_retry $sudo apt-get -q update >&2 || die "apt-get update failed"
	pkg=$(find_pkg)
fi
[ -n "$pkg" ] || die "no linux-image-6.1.0-*-cloud-arm64-unsigned package for arm64 in apt's lists"

work=$(mktemp -d "$cache/fetch.XXXXXX")
# apt-get download runs as _apt where it can: let it write here.
chmod 755 "$work"
trap 'rm -rf "$work"' EXIT
download() {
	n=0
	until (cd "$work" && apt-get -q download "$1:arm64" >&2); do
		n=$((n + 1))
		[ "$n" -lt 3 ] || return 1
		sleep 5
	done
}
if ! download "$pkg"; then
	# Lists older than the mirror name a .deb it no longer has (a newer kernel ABI
	# replaced it): update them and take the newest package they name now.
	apt_retry $sudo apt-get -q update >&2 || die "apt-get update failed"
	pkg=$(find_pkg)
	[ -n "$pkg" ] || die "no linux-image-6.1.0-*-cloud-arm64-unsigned package for arm64 after apt-get update"
	download "$pkg" || die "apt-get download $pkg:arm64 failed (after apt-get update)"
fi
deb=$(ls "$work"/*.deb 2>/dev/null | head -n 1)
[ -n "$deb" ] || die "apt-get download $pkg:arm64 produced no .deb"
dpkg-deb -x "$deb" "$work/root" || die "dpkg-deb -x $deb failed"
src=$(ls "$work"/root/boot/vmlinuz-* 2>/dev/null | head -n 1)
[ -n "$src" ] || die "$pkg has no /boot/vmlinuz-*"
dst="$cache/$(basename "$src")"
cp "$src" "$work/kernel" && mv "$work/kernel" "$dst"
echo "$dst"
