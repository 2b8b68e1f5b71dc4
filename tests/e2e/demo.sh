#!/usr/bin/env bash
# The README's one command: on a fresh Debian/Ubuntu x86-64 machine, installs what the
# demo needs (QEMU, aarch64 binutils, cpio, rustup and its pieces), then runs
# `cargo xtask demo`: Debian's arm64 Linux boots under our hypervisor on the QEMU
# testbed, its console on this terminal (docs/e2e.md). Idempotent: what is installed
# stays as it is; the guest files are cached in .cache/guest.
#
#   tests/e2e/demo.sh          # the kernel and a busybox initramfs: a marker, power-off
#   tests/e2e/demo.sh --disk   # Debian bookworm with systemd from a virtio-blk disk, to a
#                              # login prompt (also installs mmdebstrap, qemu-user-static,
#                              # binfmt-support and e2fsprogs to build the disk)
set -euo pipefail
cd "$(dirname "$0")/../.."

sudo_cmd=""
[ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"

need_apt=()
command -v qemu-system-aarch64 >/dev/null || need_apt+=(qemu-system-arm)
command -v aarch64-linux-gnu-objcopy >/dev/null || need_apt+=(binutils-aarch64-linux-gnu)
command -v cpio >/dev/null || need_apt+=(cpio)
command -v cc >/dev/null || need_apt+=(build-essential)
command -v curl >/dev/null || need_apt+=(curl ca-certificates)
if [ "${1:-}" = --disk ]; then
    command -v mmdebstrap >/dev/null || need_apt+=(mmdebstrap)
    [ -x /usr/bin/qemu-aarch64-static ] || need_apt+=(qemu-user-static)
    [ -x /usr/sbin/update-binfmts ] || need_apt+=(binfmt-support)
    [ -x /usr/sbin/mkfs.ext4 ] || [ -x /sbin/mkfs.ext4 ] || need_apt+=(e2fsprogs)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need_apt[@]}"
fi

if ! command -v cargo >/dev/null; then
    if [ ! -x "$HOME/.cargo/bin/cargo" ]; then
        curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    fi
    export PATH="$HOME/.cargo/bin:$PATH"
fi
if command -v rustup >/dev/null; then
    rustup target add aarch64-unknown-none-softfloat >/dev/null
    rustup component add rust-src >/dev/null
fi

exec cargo xtask demo "$@"
