# Shared by tests/fetch-guest.sh and tests/lib/busybox.sh (sourced, POSIX sh): get an
# arm64 Debian package's files with `apt-get download` on an x86-64 Debian host. The
# caller defines die() (prints its own prefix and exits non-zero) before using these.
#
#   apt_setup              apt tools present; $sudo set; arm64 foreign architecture
#                          added (idempotent) with apt's lists updated when it was not
#   apt_update             apt-get update, retried while another apt run holds the lock
#   apt_workdir DIR PREFIX a fresh directory DIR/PREFIX.XXXXXX that apt can write to
#   apt_download DIR PKG   apt-get download PKG:arm64 into DIR (3 tries); non-zero on
#                          failure, so the caller can update the lists and try again
#   apt_extract DIR PKG    dpkg-deb -x of the .deb in DIR into DIR/root

# apt and dpkg take locks; another engineer's apt run should delay us, not fail us.
apt_retry() {
	n=0
	until "$@"; do
		n=$((n + 1))
		[ "$n" -lt 10 ] || return 1
		sleep 6
	done
}

apt_update() {
	apt_retry $sudo apt-get -q update >&2 || die "apt-get update failed"
}

apt_setup() {
	for tool in apt-get apt-cache dpkg dpkg-deb; do
		command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed (a Debian-based host is needed)"
	done
	sudo=
	if [ "$(id -u)" != 0 ]; then
		command -v sudo >/dev/null 2>&1 || die "not root and no sudo: cannot add the arm64 architecture"
		sudo=sudo
	fi
	if ! dpkg --print-foreign-architectures | grep -qx arm64; then
		$sudo dpkg --add-architecture arm64 || die "dpkg --add-architecture arm64 failed"
		apt_update
	fi
}

apt_workdir() {
	d=$(mktemp -d "$1/$2.XXXXXX") || die "mktemp -d in $1 failed"
	# apt-get download runs as _apt where it can: let it write here.
	chmod 755 "$d"
	echo "$d"
}

apt_download() {
	n=0
	until (cd "$1" && apt-get -q download "$2:arm64" >&2); do
		n=$((n + 1))
		[ "$n" -lt 3 ] || return 1
		sleep 5
	done
}

apt_extract() {
	deb=$(ls "$1"/*.deb 2>/dev/null | head -n 1)
	[ -n "$deb" ] || die "apt-get download $2:arm64 produced no .deb"
	dpkg-deb -x "$deb" "$1/root" || die "dpkg-deb -x $deb failed"
}
