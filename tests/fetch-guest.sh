#!/bin/sh
# Fetches Debian's arm64 cloud kernel (linux-image-6.1.0-*-cloud-arm64-unsigned) into a
# cache and prints the path of its kernel: /boot/vmlinuz-*, an arm64 Image (gzip-compressed
# in some package versions), which bhyveload reads as it is (it decompresses gzip). The same
# package's module tree, /lib/modules/<version>/ (kernel/**/*.ko, modules.builtin,
# modules.builtin.modinfo, modules.order), is kept beside it as modules-<version>/,
# with a modules.dep and a modules.softdep made here: the package ships neither
# (Debian's postinst runs depmod) and the host may have no depmod, so they come from
# the modules' own .modinfo (`readelf -p .modinfo`, binutils), in depmod's formats.
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

# make_modules_dep DIR: writes DIR/modules.dep and DIR/modules.softdep for the .ko files
# under DIR, in depmod's formats, from the modules' .modinfo sections (readelf reads
# arm64 ELF on any host): each .ko's `depends=` names the modules it needs symbols
# from (modpost found them the way depmod would), its `softdep=` the modules to load
# around it. A modules.dep line holds a module's whole dependency closure ordered as
# depmod orders it, each module before the ones it needs, so loading the list from the
# end, then the module itself, loads every module after what it needs.
make_modules_dep() {
	readelf=
	for r in readelf aarch64-linux-gnu-readelf; do
		if command -v "$r" >/dev/null 2>&1; then
			readelf=$r
			break
		fi
	done
	[ -n "$readelf" ] || die "readelf is not installed (binutils)"
	# More than one file, so readelf names each one ("File: ...") before its strings.
	kos=$(cd "$1" && find kernel -name '*.ko' | LC_ALL=C sort)
	[ "$(echo "$kos" | wc -l)" -gt 1 ] || die "fewer than two .ko files under $1"
	# shellcheck disable=SC2086 # the paths have no blanks
	(cd "$1" && "$readelf" -W -p .modinfo $kos) >"$1/modinfo.tmp" ||
		die "$readelf -p .modinfo failed under $1"
	awk -v dep="$1/modules.dep.tmp" -v soft="$1/modules.softdep.tmp" '
		# name[path], path_of[name], deps[name] (comma-separated), softdep[name]
		function modname(p, n) {
			n = p; sub(/.*\//, "", n); sub(/\.ko$/, "", n); gsub(/-/, "_", n)
			return n
		}
		# Post-order walk: what m needs, transitively, each after what it needs.
		function walk(m, i, n, d) {
			if (m in seen) return
			seen[m] = 1
			n = split(deps[m], d, ",")
			for (i = 1; i <= n; i++)
				if (d[i] in path_of) walk(d[i])
			order[++norder] = m
		}
		/^File: / { cur = $2; name[cur] = modname(cur); path_of[name[cur]] = cur; next }
		cur != "" && /^ *\[ *[0-9a-f]+\]  / {
			s = $0; sub(/^ *\[ *[0-9a-f]+\]  /, "", s)
			if (s ~ /^depends=/) { sub(/^depends=/, "", s); deps[name[cur]] = s }
			else if (s ~ /^softdep=/) { sub(/^softdep=/, "", s); softdep[name[cur]] = s }
		}
		END {
			for (m in path_of) {
				split("", seen); norder = 0
				walk(m)
				line = path_of[m] ":"
				# order[norder] is m itself; the rest reversed: users before needs.
				for (i = norder - 1; i >= 1; i--) line = line " " path_of[order[i]]
				print line > dep
			}
			for (m in softdep) print "softdep " m " " softdep[m] > soft
		}' "$1/modinfo.tmp" || die "making modules.dep under $1 failed"
	rm -f "$1/modinfo.tmp"
	LC_ALL=C sort "$1/modules.dep.tmp" >"$1/modules.dep" &&
		LC_ALL=C sort "$1/modules.softdep.tmp" >"$1/modules.softdep" ||
		die "sort failed under $1"
	rm -f "$1/modules.dep.tmp" "$1/modules.softdep.tmp"
	[ -s "$1/modules.dep" ] || die "empty modules.dep under $1"
}

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
for f in modules.builtin modules.order; do
	[ -s "$mods/$f" ] || die "$pkg has no /lib/modules/$version/$f"
done
# The package has no modules.dep: Debian's postinst makes it with depmod, which this
# host may lack. Make it here from each module's .modinfo instead.
make_modules_dep "$mods" || die "cannot make modules.dep for $pkg"

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
