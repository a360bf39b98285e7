#!/usr/bin/env bash
# make check-aarch64: the project installed and run on arm64 Linux (Debian 12, Python 3.11) under
# qemu user-mode emulation, on an x86-64 Debian/Ubuntu host, as root.
#
#   1. host tools: qemu-user-static, debootstrap, binfmt-support (apt-get), binfmt_misc mounted
#   2. an arm64 Debian 12 root in $AARCH64_ROOT, built once (debootstrap, then python3, venv, pip,
#      make, g++ inside) and reused
#   3. this tree (tracked and untracked files git does not ignore) copied into it
#   4. `make setup` inside: requirements.txt unmodified, the kernel library skipped off x86-64
#   5. scripts/check_aarch64.py inside: import, processor, config, data check, MindRecord,
#      network, forward and backward (PyNative), export; with AARCH64_TRAIN_STEP=1 also one
#      graph-mode training step (about 20 minutes under emulation)
#
# Emulation proves the install and every stage, never speed. Variables: AARCH64_ROOT (default
# /var/cache/ssd-resnet34/debian12-arm64), DEBIAN_MIRROR, AARCH64_TRAIN_STEP=1.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
tree="$(cd "$here/.." && pwd)"
ROOTFS=${AARCH64_ROOT:-/var/cache/ssd-resnet34/debian12-arm64}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
TRAIN_STEP=${AARCH64_TRAIN_STEP:-0}
QEMU_INTERPRETER=/usr/libexec/qemu-binfmt/aarch64-binfmt-P
die() { echo "error: $*" >&2; exit 2; }
start=$SECONDS
stage() { printf '\n== [%4ds] %s\n' $((SECONDS - start)) "$*"; }

[ "$(id -u)" = 0 ] || die "make check-aarch64 needs root (debootstrap, chroot, binfmt_misc)"
[ "$(uname -m)" = x86_64 ] || die "make check-aarch64 emulates arm64 on an x86-64 host; this host is $(uname -m)"
case "$TRAIN_STEP" in 0|1) ;; *) die "AARCH64_TRAIN_STEP must be 0 or 1, got '$TRAIN_STEP'" ;; esac

stage "host tools (qemu-user-static, debootstrap, binfmt-support)"
if ! command -v debootstrap >/dev/null || [ ! -x /usr/bin/qemu-aarch64-static ] \
        || ! command -v update-binfmts >/dev/null; then
    command -v apt-get >/dev/null || die "apt-get not found: install qemu-user-static, debootstrap and binfmt-support"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        qemu-user-static debootstrap binfmt-support >/dev/null
fi
[ -e /proc/sys/fs/binfmt_misc/status ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc \
    || die "cannot mount binfmt_misc (a container needs --privileged or the host's binfmt_misc)"
[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64 \
    || die "cannot register qemu-aarch64 with binfmt_misc"
interpreter=$(sed -n 's/^interpreter //p' /proc/sys/fs/binfmt_misc/qemu-aarch64)
[ -n "$interpreter" ] || die "binfmt_misc's qemu-aarch64 entry names no interpreter"

mounted=()
unmount_all() {
    local i
    for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -l "${mounted[$i]}" 2>/dev/null || true; done
    mounted=()
}
trap unmount_all EXIT
# The host's /proc, /sys, /dev, /dev/pts and /dev/shm inside a root (undone on exit), its name
# servers, and the certificates it trusts (a proxy's own authority included: pip then reaches
# PyPI from the root as from the host).
mount_into() {
    local root=$1 path
    for path in proc sys dev dev/pts dev/shm; do
        [ -d "/$path" ] || continue
        mkdir -p "$root/$path"
        mountpoint -q "$root/$path" || { mount --bind "/$path" "$root/$path"; mounted+=("$root/$path"); }
    done
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
        mkdir -p "$root/etc/ssl/certs"
        cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
    fi
}
# The interpreter binfmt_misc names is opened inside the root at each exec (no F flag).
install_interpreter() {
    mkdir -p "$1$(dirname "$interpreter")" "$1/usr/bin"
    cp /usr/bin/qemu-aarch64-static "$1/usr/bin/qemu-aarch64-static"
    [ "$interpreter" = /usr/bin/qemu-aarch64-static ] || ln -sf /usr/bin/qemu-aarch64-static "$1$interpreter"
}
in_root() {
    chroot "$ROOTFS" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@"
}

if [ ! -f "$ROOTFS/.ssd-root-ready" ]; then
    stage "arm64 Debian 12 root in $ROOTFS (built once: about 10 minutes)"
    partial="$ROOTFS.partial"
    rm -rf "$partial"
    mkdir -p "$partial"
    debootstrap --foreign --arch=arm64 --variant=minbase bookworm "$partial" "$MIRROR" >/dev/null
    install_interpreter "$partial"
    chroot "$partial" /debootstrap/debootstrap --second-stage >/dev/null
    mount_into "$partial"
    chroot "$partial" /usr/bin/env -i HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive \
        PATH=/usr/sbin:/usr/bin:/sbin:/bin sh -c \
        "apt-get update -qq && apt-get install -y -qq --no-install-recommends python3 python3-venv python3-pip make g++ ca-certificates >/dev/null"
    unmount_all
    touch "$partial/.ssd-root-ready"
    rm -rf "$ROOTFS"
    mv "$partial" "$ROOTFS"
fi
install_interpreter "$ROOTFS"
mount_into "$ROOTFS"
in_root uname -m | grep -qx aarch64 || die "$ROOTFS does not run as aarch64"

stage "this tree copied into $ROOTFS/work/ssd-resnet34 (its .venv kept between runs)"
work="$ROOTFS/work/ssd-resnet34"
mkdir -p "$work"
find "$work" -mindepth 1 -maxdepth 1 ! -name .venv -exec rm -rf {} +
(cd "$tree" && git ls-files -z --cached --others --exclude-standard |
    while IFS= read -r -d '' path; do [ -e "$path" ] && printf '%s\0' "$path"; done |
    tar --null -T - -cf -) | tar -C "$work" -xf -

stage "make setup (requirements.txt as it is; Python $(in_root python3 -c 'import sys; print(sys.version.split()[0])'))"
in_root sh -c "cd /work/ssd-resnet34 && make setup PYTHON=python3"
in_root sh -c "cd /work/ssd-resnet34 && .venv/bin/python -m pip check"

stage "the stages (scripts/check_aarch64.py)"
steps=()
[ "$TRAIN_STEP" = 1 ] && steps=(--train_step)
in_root sh -c "cd /work/ssd-resnet34 && .venv/bin/python scripts/check_aarch64.py ${steps[*]:-}"
stage "check-aarch64 passed"
