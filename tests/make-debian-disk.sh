#!/bin/sh
# Builds a Debian bookworm arm64 root disk for the guest: a raw ext4 image (2 GiB,
# sparse) holding a minimal Debian system that boots with systemd to multi-user.target
# and a login prompt on the console (root, empty password), and prints its path.
#
#   tests/make-debian-disk.sh        # e.g. .cache/guest/debian-bookworm-6.1.0-57-cloud-arm64.img
#   GUEST_CACHE=/tmp/g tests/make-debian-disk.sh
#   DEBIAN_MIRROR=http://ftp.de.debian.org/debian tests/make-debian-disk.sh
#
# Boot it with the kernel of tests/fetch-guest.sh and the root initramfs
# (`tests/make-initramfs.sh root`), root=/dev/vda rw, 512 MiB and up:
#
#   bhyveload -k .cache/guest/vmlinuz-<version> -m 512M -c 2 \
#       -i .cache/guest/initramfs-root-<version>.cpio.gz \
#       -e console=hvc0 -e root=/dev/vda -e rw debian
#   bhyve -b -s 0,virtio-blk,COPY.img -s 1,virtio-rnd -s 2,virtio-console debian
#
# The image in the cache is a pristine template: the guest writes to its disk, so copy
# it first (cp --sparse=always IMG COPY) and boot the copy (`cargo xtask demo --disk`
# keeps its own copy, .cache/guest/debian-demo.img).
#
# How it is built (docs/e2e.md, "A Debian disk"):
#   1. mmdebstrap --arch=arm64 --variant=minbase bookworm into a directory, with
#      systemd-sysv, udev, kmod, dbus, libpam-systemd, iproute2, iputils-ping, procps
#      and less, from $DEBIAN_MIRROR (default http://deb.debian.org/debian: bookworm,
#      bookworm-updates; plus bookworm-security from debian-security). Its maintainer
#      scripts run arm64 binaries through qemu-user-static and binfmt_misc. The .debs
#      are kept in $GUEST_CACHE/debian-debs (mmdebstrap's sync-in/sync-out hooks), so
#      a rebuild downloads only what changed.
#   2. Then, on the directory: the kernel's module tree (`tests/fetch-guest.sh
#      --modules`) in /usr/lib/modules/<version> with the guest's own `depmod` run in
#      it (chroot, through qemu-user) so that udev and systemd's modprobe@ units find
#      modules.alias and the rest; root's password emptied (`passwd -d root`: the
#      console login asks for no password); hostname "debian"; /etc/hosts;
#      /etc/fstab with / on /dev/vda (ext4, fsck pass 1); LANG=C.UTF-8 in
#      /etc/default/locale; no getty@tty1 (no display); /etc/machine-id left empty
#      (mmdebstrap empties it: systemd makes one up at the first boot and writes it to
#      the writable root, so each copy gets its own, without "first boot" prompts);
#      no /etc/resolv.conf; and vmm-e2e-marker.service, ordered after
#      multi-user.target and wanted by it, which prints to /dev/console, once that
#      target is reached,
#        VMM-E2E: multi-user.target reached (uptime <seconds of /proc/uptime> s)
#      The login prompt needs nothing of ours: systemd's getty generator starts
#      serial-getty@ on the kernel's console (console=hvc0 or console=ttyAMA0), whose
#      agetty prints "debian login: ".
#   3. mkfs.ext4 -d of the directory into a 2 GiB sparse file (label debian-root,
#      a fixed UUID and hash seed; two builds from the same packages hold the same
#      files, their times differ), published by rename.
# The same package versions give the same system; the mirror moves on (point releases,
# security updates), so a later build may hold newer packages.
#
# Needs root (mmdebstrap's root mode chroots; mkfs.ext4 -d must read root-only files):
# run as another user it re-runs itself with sudo and gives the image to that user.
# Installs mmdebstrap, qemu-user-static and binfmt-support with apt-get when they are
# missing, mounts binfmt_misc on /proc/sys/fs/binfmt_misc when it is not, and enables
# the qemu-aarch64 handler (`update-binfmts --enable qemu-aarch64`) when it is off.
#
# Cache: $GUEST_CACHE, default <repo>/.cache/guest (as tests/fetch-guest.sh). The image
# is rebuilt only when this script is newer than it (or the kernel version, and with it
# the file name, changes). Built in a temporary directory inside the cache: 2 min 40 s
# here the first time (2 cores; with the download of 49 MB of .debs), 2 min 8 s with
# the .debs cached, nearly all of it dpkg under qemu-user. Any failure exits non-zero
# with the reason on stderr.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
self="$here/$(basename "$0")"
cache=${GUEST_CACHE:-$(dirname "$here")/.cache/guest}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
security=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
suite=bookworm
packages=systemd-sysv,udev,kmod,dbus,libpam-systemd,iproute2,iputils-ping,procps,less
size=2G
# Fixed, so that the image's identity does not change from build to build.
uuid=5d0b7d1e-9c1f-4b7a-8f4e-6e0c2a1b3d40
mkdir -p "$cache"

die() {
	echo "make-debian-disk: $*" >&2
	exit 1
}

[ $# -eq 0 ] || die "no arguments expected"

# The kernel's modules, fetched first (as the invoking user, who owns the cache).
mods=$("$here/fetch-guest.sh" --modules) || exit 1
[ -s "$mods/modules.dep" ] || die "$mods has no modules.dep"
version=${mods##*/modules-}
out="$cache/debian-$suite-$version.img"

if [ -s "$out" ] && [ "$out" -nt "$self" ]; then
	echo "$out"
	exit 0
fi

# Root from here on (see the header).
if [ "$(id -u)" != 0 ]; then
	command -v sudo >/dev/null 2>&1 || die "not root and no sudo (mmdebstrap needs root)"
	sudo env GUEST_CACHE="$cache" DEBIAN_MIRROR="$mirror" \
		DEBIAN_SECURITY_MIRROR="$security" VMM_DISK_OWNER="$(id -u):$(id -g)" \
		PATH="$PATH" "$self" >/dev/null || exit 1
	[ -s "$out" ] || die "sudo $self made no $out"
	echo "$out"
	exit 0
fi

# mkfs.ext4, chroot and update-binfmts live in /sbin, which a user's PATH may leave out.
PATH=$PATH:/usr/sbin:/sbin
export PATH

need=
command -v mmdebstrap >/dev/null 2>&1 || need="$need mmdebstrap"
[ -x /usr/bin/qemu-aarch64-static ] || need="$need qemu-user-static"
command -v update-binfmts >/dev/null 2>&1 || need="$need binfmt-support"
if [ -n "$need" ]; then
	echo "make-debian-disk: installing$need" >&2
	# shellcheck disable=SC2086 # a list of names
	if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q $need >&2; then
		# Lists too old, or none yet: update them and try once more.
		apt-get -q update >&2 || die "apt-get update failed"
		# shellcheck disable=SC2086 # a list of names
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q $need >&2 ||
			die "apt-get install$need failed"
	fi
fi
for tool in mmdebstrap mkfs.ext4 truncate chroot update-binfmts; do
	command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed"
done

# arm64 binaries must run here: binfmt_misc with qemu-aarch64 (F flag: the interpreter
# is opened once, so it also works inside the chroot).
bf=/proc/sys/fs/binfmt_misc
if [ ! -e "$bf/register" ]; then
	mount -t binfmt_misc binfmt_misc "$bf" ||
		die "cannot mount binfmt_misc on $bf (a container without the privilege?)"
fi
if [ "$(head -n 1 "$bf/qemu-aarch64" 2>/dev/null)" != enabled ]; then
	update-binfmts --enable qemu-aarch64 >&2 || die "update-binfmts --enable qemu-aarch64 failed"
fi
[ "$(head -n 1 "$bf/qemu-aarch64" 2>/dev/null)" = enabled ] ||
	die "the binfmt_misc handler qemu-aarch64 is not enabled"

debs="$cache/debian-debs"
mkdir -p "$debs"
work=$(mktemp -d "$cache/debian.XXXXXX") || die "mktemp -d in $cache failed"
trap 'rm -rf "$work"' EXIT
root=$work/root

echo "make-debian-disk: mmdebstrap $suite arm64 into $root (a few minutes)" >&2
mmdebstrap --quiet --mode=root --format=directory --arch=arm64 --variant=minbase \
	--include="$packages" \
	--skip=essential/unlink \
	--setup-hook="mkdir -p \"\$1\"/var/cache/apt/archives/" \
	--setup-hook="sync-in '$debs' /var/cache/apt/archives/" \
	--customize-hook="sync-out /var/cache/apt/archives '$debs'" \
	"$suite" "$root" \
	"deb $mirror $suite main" \
	"deb $mirror $suite-updates main" \
	"deb $security $suite-security main" >&2 ||
	die "mmdebstrap failed"
# The cache keeps the newest version of each package only.
for f in "$debs"/*.deb; do
	[ -e "$f" ] || continue
	n=${f##*/}
	n=${n%%_*}
	# shellcheck disable=SC2012 # .deb names have no blanks
	newest=$(ls "$debs/${n}_"*.deb | sort -V | tail -n 1)
	[ "$f" = "$newest" ] || rm -f "$f"
done
rm -rf "$debs/lock" "$debs/partial"

# The kernel's modules, and depmod's indexes made by the guest's own depmod.
moddir=$root/usr/lib/modules/$version
mkdir -p "$moddir"
cp -a "$mods/." "$moddir/" || die "cannot copy $mods into the image"
chroot "$root" /sbin/depmod -a "$version" || die "depmod -a $version in the image failed"
[ -s "$moddir/modules.alias" ] || die "depmod made no modules.alias"

chroot "$root" /usr/bin/passwd -d root >/dev/null || die "passwd -d root in the image failed"
echo debian >"$root/etc/hostname"
cat >"$root/etc/hosts" <<'EOF'
127.0.0.1	localhost
127.0.1.1	debian
::1		localhost ip6-localhost ip6-loopback
ff02::1		ip6-allnodes
ff02::2		ip6-allrouters
EOF
cat >"$root/etc/fstab" <<'EOF'
# <file system>	<mount point>	<type>	<options>		<dump>	<pass>
/dev/vda	/		ext4	rw,errors=remount-ro	0	1
EOF
# The host's resolver is no use in the guest (mmdebstrap copies it in).
rm -f "$root/etc/resolv.conf"
# minbase has no locales package: C.UTF-8 is in libc; pam_env warns at each login
# when this file is missing.
echo LANG=C.UTF-8 >"$root/etc/default/locale"
# No display, so no getty on tty1 (the console's getty comes from the generator).
rm -f "$root/etc/systemd/system/getty.target.wants/getty@tty1.service"
[ -f "$root/etc/machine-id" ] && [ ! -s "$root/etc/machine-id" ] ||
	die "mmdebstrap left /etc/machine-id missing or not empty"

cat >"$root/etc/systemd/system/vmm-e2e-marker.service" <<'EOF'
# tests/make-debian-disk.sh: tells the console when multi-user.target is reached
# (ordered after it, and wanted by it, so it starts once the target is active).
[Unit]
Description=VMM-E2E marker on the console
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'read -r up _ </proc/uptime; echo "VMM-E2E: multi-user.target reached (uptime $up s)" >/dev/console'

[Install]
WantedBy=multi-user.target
EOF
mkdir -p "$root/etc/systemd/system/multi-user.target.wants"
ln -sf ../vmm-e2e-marker.service \
	"$root/etc/systemd/system/multi-user.target.wants/vmm-e2e-marker.service"

truncate -s "$size" "$work/disk.img" || die "truncate -s $size $work/disk.img failed"
mkfs.ext4 -q -F -L debian-root -U "$uuid" -E "hash_seed=$uuid" -d "$root" "$work/disk.img" >&2 ||
	die "mkfs.ext4 -d $root failed"
if [ -n "${VMM_DISK_OWNER:-}" ]; then
	chown "$VMM_DISK_OWNER" "$work/disk.img" "$debs" "$debs"/* 2>/dev/null || true
fi
mv "$work/disk.img" "$out" || die "cannot publish $out"
echo "$out"
