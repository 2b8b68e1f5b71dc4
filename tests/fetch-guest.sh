#!/bin/sh
# Fetches Debian's arm64 cloud kernel (linux-image-6.1.0-*-cloud-arm64-unsigned) into a
# cache and prints the path of its kernel: /boot/vmlinuz-*, a gzip-compressed arm64
# Image, which bhyveload reads as it is (it decompresses gzip itself). The same
# package's module tree, /lib/modules/<version>/ (the .ko files with modules.dep,
# modules.builtin, modules.order, ...), is kept beside it as modules-<version>/.
#
#   tests/fetch-guest.sh            # prints e.g. .cache/guest/vmlinuz-6.1.0-35-cloud-arm64
#   tests/fetch-guest.sh --modules  # prints e.g. .cache/guest/modules-6.1.0-35-cloud-arm64
#   GUEST_CACHE=/tmp/g tests/fetch-guest.sh
#
# Cache: $GUEST_CACHE, default <repo>/.cache/guest (.cache/ is gitignored). A cached
# kernel whose modules-<version>/ is there too is reused without touching apt (a cache
# from before the modules were kept has the kernel only: it is fetched again).
# Otherwise the script adds the arm64 foreign architecture and updates apt's lists when
# needed (both idempotent; root or sudo), then runs `apt-get download` and `dpkg-deb -x`
# (tests/lib/apt-download.sh) in a temporary directory inside the cache, and publishes
# by rename: the module tree first, then the kernel, so a kernel in the cache always has
# its modules. Any failure exits non-zero with the reason on stderr: the tests that call
# this fail rather than skip.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
cache=${GUEST_CACHE:-$(dirname "$here")/.cache/guest}

die() {
	echo "fetch-guest: $*" >&2
	exit 1
}

what=kernel
case "${1:-}" in
"") ;;
--modules) what=modules ;;
*) die "unknown argument '$1' (none, or --modules)" ;;
esac
[ $# -le 1 ] || die "too many arguments (none, or --modules)"
mkdir -p "$cache" || die "cannot create the cache $cache"

# Prints the kernel's or its module tree's path, per the argument.
result() {
	if [ "$what" = modules ]; then
		echo "$cache/modules-${1#"$cache"/vmlinuz-}"
	else
		echo "$1"
	fi
}

cached=$(ls "$cache"/vmlinuz-*-cloud-arm64 2>/dev/null | sort -V | tail -n 1 || true)
if [ -n "$cached" ] && [ -s "$cached" ] &&
	[ -s "$cache/modules-${cached#"$cache"/vmlinuz-}/modules.dep" ]; then
	result "$cached"
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
version=${src#"$work"/root/boot/vmlinuz-}
mods=
for d in "$work/root/lib/modules/$version" "$work/root/usr/lib/modules/$version"; do
	if [ -d "$d" ]; then
		mods=$d
		break
	fi
done
[ -n "$mods" ] || die "$pkg has no /lib/modules/$version/"
for f in modules.dep modules.builtin modules.order; do
	[ -s "$mods/$f" ] || die "$pkg has no /lib/modules/$version/$f"
done

# The module tree: renamed into place whole. If another run published it meanwhile,
# rename(2) onto that non-empty directory fails and theirs stays (the same package).
mdst="$cache/modules-$version"
mv "$mods" "$work/modules" || die "cannot move the module tree within $work"
if ! mv -T "$work/modules" "$mdst" 2>/dev/null; then
	[ -s "$mdst/modules.dep" ] || die "cannot publish the module tree as $mdst"
fi
dst="$cache/vmlinuz-$version"
cp "$src" "$work/kernel" && mv "$work/kernel" "$dst" || die "cannot publish the kernel as $dst"
result "$dst"
