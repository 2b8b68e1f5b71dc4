#!/bin/sh
# Builds a busybox initramfs (cpio newc, gzip) for the end-to-end Linux guest from
# Debian's busybox-static:arm64 and prints its path.
#
#   tests/make-initramfs.sh           # .cache/guest/initramfs-ok.cpio.gz
#   tests/make-initramfs.sh ok        # the same
#   tests/make-initramfs.sh idle      # init prints the marker, then sleeps forever
#   tests/make-initramfs.sh broken    # /init is not executable: the kernel panics
#   tests/make-initramfs.sh root      # .cache/guest/initramfs-root-<kernel version>.cpio.gz:
#                                     # loads the virtio modules, boots root= from a disk
#   tests/make-initramfs.sh hvc       # .cache/guest/initramfs-hvc-<kernel version>.cpio.gz:
#                                     # like ok, on a virtio console (console=hvc0)
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
#   root    an initramfs for a root file system on a virtio disk (see
#           tests/make-rootdisk.sh), for the kernel of `tests/fetch-guest.sh` only: its
#           modules come from that kernel's tree (`tests/fetch-guest.sh --modules`) and
#           the file name carries its version. /init (busybox sh) mounts proc, sys and
#           devtmpfs; insmods virtio_mmio, virtio_blk, virtio_net, virtio_rng,
#           virtio_console and ext4, each after what it needs per modules.dep (resolved
#           here, on the host; the modules.builtin ones are built in and skipped: for
#           Debian's cloud kernel, ext4); reads root= (a /dev path, required),
#           rootfstype= (default ext4), rootflags=, ro/rw (default ro, as the kernel's
#           own root mount) and init= (default /sbin/init) from /proc/cmdline; waits up
#           to 10 s for the root device node; mounts it on /newroot; moves /dev, /proc
#           and /sys there (or unmounts them when the root has no such directory); and
#           runs `exec switch_root /newroot $init`. Any failure before that prints one
#           line "VMM-E2E: initramfs: <reason>" and powers off (`poweroff -f`).
#   hvc     the ok guest on a virtio console, for the same kernel as root: /init loads
#           virtio_mmio and virtio_console as root's does (and waits for hvc0 when the
#           command line says console=hvc0), prints the kernel's log (`dmesg`: on hvc0
#           the kernel printed nothing of it itself; its console had no device until
#           the module loaded), prints the ok marker, writes
#           "VMM-E2E: powering off" to /dev/kmsg (the kernel prints it on its console
#           with its timestamp: on hvc0, Linux's own "reboot: Power down" comes too late
#           to be seen) and powers off.
#
# Cache: $GUEST_CACHE, default <repo>/.cache/guest (as tests/fetch-guest.sh). The
# busybox .deb is downloaded once (tests/lib/busybox.sh); an initramfs is rebuilt only
# when this script is newer than it (for root, also when the kernel version, and so
# the file name, changes). Built in a temporary directory inside the cache and
# published by rename. Any failure exits non-zero with the reason on stderr.
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

# The modules the root and hvc variants load, in this order (after what each needs).
case "$variant" in
root) modules="virtio_mmio virtio_blk virtio_net virtio_rng virtio_console ext4" ;;
hvc) modules="virtio_mmio virtio_console" ;;
esac

case "$variant" in
ok | idle | broken)
	out="$cache/initramfs-$variant.cpio.gz"
	;;
root | hvc)
	# fetch-guest.sh prints its own reason when it fails.
	mods=$("$here/fetch-guest.sh" --modules) || exit 1
	[ -s "$mods/modules.dep" ] || die "$mods has no modules.dep"
	version=${mods##*/modules-}
	out="$cache/initramfs-$variant-$version.cpio.gz"
	;;
*) die "unknown variant '$variant' (ok, idle, broken, root or hvc)" ;;
esac

if [ -s "$out" ] && [ "$out" -nt "$self" ]; then
	echo "$out"
	exit 0
fi

for tool in cpio gzip dpkg-deb; do
	command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed"
done

# The busybox binary: cached, else from apt.
. "$here/lib/busybox.sh"
bb=$(busybox_arm64 "$cache") || exit 1

root=$(mktemp -d "$cache/initramfs.XXXXXX")
trap 'rm -rf "$root" "$root.cpio" "$root.cpio.gz"' EXIT
mkdir -p "$root/bin" "$root/dev" "$root/proc" "$root/sys"
cp "$bb" "$root/bin/busybox"
chmod 755 "$root/bin/busybox"

# resolve_modules MODDIR NAME...: one line per module to load, in load order, each
# after the modules it needs ("load <path relative to MODDIR>"), and one per NAME that
# is built into the kernel ("builtin <name>"); dies naming a NAME that is neither. Names
# compare as the kernel compares them: '-' and '_' alike. A modules.dep line lists a
# module's whole closure, each module before the ones it needs, so the list read from
# its end is a load order (as modprobe reads it).
resolve_modules() {
	moddir=$1
	shift
	awk -v want="$*" '
		function modname(p, n) {
			n = p; sub(/.*\//, "", n); sub(/\.ko(\.(xz|gz|zst))?$/, "", n); gsub(/-/, "_", n)
			return n
		}
		FNR == 1 { file++ }
		file == 1 {
			p = $1; sub(/:$/, "", p)
			line[modname(p)] = $0
			next
		}
		file == 2 { builtin[modname($1)] = 1 }
		END {
			n = split(want, w, " ")
			for (i = 1; i <= n; i++) {
				m = w[i]; gsub(/-/, "_", m)
				if (m in line) {
					k = split(line[m], f, " ")
					sub(/:$/, "", f[1])
					for (j = k; j >= 2; j--)
						if (!(f[j] in done)) { done[f[j]] = 1; print "load " f[j] }
					if (!(f[1] in done)) { done[f[1]] = 1; print "load " f[1] }
				} else if (m in builtin) {
					print "builtin " m
				} else {
					print "missing " m
				}
			}
		}' "$moddir/modules.dep" "$moddir/modules.builtin"
}

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
root | hvc)
	for a in sh mount umount insmod switch_root poweroff usleep cat ls echo uname dmesg; do
		ln -s busybox "$root/bin/$a"
	done
	mkdir -p "$root/newroot" "$root/lib/modules"
	# shellcheck disable=SC2086 # a list of names
	resolve_modules "$mods" $modules >"$root/resolved" || die "resolving modules under $mods failed"
	: >"$root/lib/modules/load-order"
	while read -r kind what; do
		case "$kind" in
		missing) die "module $what is neither in $mods/modules.dep nor in modules.builtin" ;;
		builtin) continue ;;
		esac
		# Uncompressed, so that insmod needs no decompressor of its own.
		name=$(basename "$what")
		case "$name" in
		*.ko.xz) dec="xz -dc" name=${name%.xz} ;;
		*.ko.gz) dec="gzip -dc" name=${name%.gz} ;;
		*.ko.zst) dec="zstd -qdc" name=${name%.zst} ;;
		*.ko) dec=cat ;;
		*) die "$what in $mods/modules.dep is not a .ko file" ;;
		esac
		# shellcheck disable=SC2086 # the command and its options
		$dec <"$mods/$what" >"$root/lib/modules/$name" || die "cannot copy $mods/$what ($dec)"
		echo "$name" >>"$root/lib/modules/load-order"
	done <"$root/resolved"
	rm -f "$root/resolved"
	cat >"$root/init" <<'INIT'
#!/bin/sh
# The /init of tests/make-initramfs.sh root or hvc: load the virtio modules, then (root)
# mount root= and switch_root to init=, or (hvc) print the marker and power off.
# Failures: one "VMM-E2E: initramfs:" line and a power-off.
fail() {
	echo "VMM-E2E: initramfs: $*"
	poweroff -f
	exit 1
}
mount -t proc proc /proc || fail "cannot mount proc on /proc"
mount -t sysfs sysfs /sys || fail "cannot mount sysfs on /sys"
mount -t devtmpfs devtmpfs /dev || fail "cannot mount devtmpfs on /dev"
while read -r m; do
	insmod "/lib/modules/$m" || fail "insmod $m failed"
done </lib/modules/load-order
# With console=hvc0 the kernel had no console when it started this script (hvc0 comes
# with virtio_console, just loaded): open /dev/console again so that this script and
# the init it starts write to the console. A multiport console adds its ports after
# insmod returns (the control queue's handshake), and hvc0's tty can exist a moment
# before the kernel takes it as its console: wait until /dev/console opens, up to 5 s.
# A failed redirection would end this shell (and so the kernel), so try it in a
# subshell first.
if [ ! -t 1 ]; then
	case " $(cat /proc/cmdline) " in
	*" console=hvc0 "*)
		n=0
		until (exec 0<>/dev/console) 2>/dev/null || [ "$n" -ge 500 ]; do
			usleep 10000
			n=$((n + 1))
		done
		;;
	esac
	if (exec 0<>/dev/console) 2>/dev/null; then
		exec 0<>/dev/console 1>&0 2>&0
	fi
fi
INIT
	if [ "$variant" = hvc ]; then
		cat >>"$root/init" <<'INIT'
dmesg
echo "VMM-E2E: init reached userspace on $(uname -m)"
echo "VMM-E2E: powering off" >/dev/kmsg
poweroff -f
INIT
	else
		cat >>"$root/init" <<'INIT'
root= fstype=ext4 flags= mode=ro init=/sbin/init
set -f
for arg in $(cat /proc/cmdline); do
	case "$arg" in
	root=*) root=${arg#root=} ;;
	rootfstype=*) fstype=${arg#rootfstype=} ;;
	rootflags=*) flags=${arg#rootflags=} ;;
	init=*) init=${arg#init=} ;;
	ro | rw) mode=$arg ;;
	esac
done
set +f
[ -n "$root" ] || fail "no root= on the kernel command line"
case "$root" in
/dev/*) ;;
*) fail "root=$root is not a /dev path" ;;
esac
n=0
until [ -b "$root" ]; do
	n=$((n + 1))
	[ "$n" -le 100 ] || fail "$root did not appear within 10 s (block devices: $(ls /sys/block))"
	usleep 100000
done
mount -t "$fstype" -o "$mode${flags:+,$flags}" "$root" /newroot ||
	fail "cannot mount $root on /newroot (type $fstype, options $mode${flags:+,$flags})"
[ -e "/newroot$init" ] || [ -L "/newroot$init" ] || fail "$root has no $init"
for d in dev proc sys; do
	if [ -d "/newroot/$d" ]; then
		mount -o move "/$d" "/newroot/$d" || fail "cannot move /$d to /newroot/$d"
	else
		umount "/$d" || fail "cannot unmount /$d ($root has no /$d)"
	fi
done
exec switch_root /newroot "$init"
INIT
	fi
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
