#!/usr/bin/env bash
# Build the end-to-end test guest: Debian's cloud kernel plus a busybox initramfs
# whose /init is tests/e2e/guest-init.sh.
#
# Output (in $WORK_DIR/guest): vmlinuz, initramfs.cpio.gz, stamp (hash of the inputs).
# A guest whose stamp matches the current inputs is reused as is.
#
# Environment:
#   WORK_DIR      work directory (default: tests/e2e/work next to this script)
#   KERNEL_META   meta package to resolve (default: linux-image-cloud-amd64)
#   KERNEL_PKG    pin the versioned kernel package (default: what KERNEL_META depends on)
#   GUEST_MODULES modules to pack, dependencies are added (default: virtio_pci virtio_blk virtio_rng)
#   BUSYBOX       static busybox binary (default: /bin/busybox)
#   FORCE=1       rebuild even if the stamp matches
set -euo pipefail

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WORK_DIR=${WORK_DIR:-$E2E_DIR/work}
KERNEL_META=${KERNEL_META:-linux-image-cloud-amd64}
GUEST_MODULES=${GUEST_MODULES:-virtio_pci virtio_blk virtio_rng}
BUSYBOX=${BUSYBOX:-/bin/busybox}
GUEST_DIR=$WORK_DIR/guest
DL_DIR=$WORK_DIR/downloads

log() { echo "build-guest: $*" >&2; }
die() { echo "build-guest: error: $*" >&2; exit 1; }

mkdir -p "$GUEST_DIR" "$DL_DIR"
WORK_DIR=$(cd "$WORK_DIR" && pwd)
GUEST_DIR=$WORK_DIR/guest
DL_DIR=$WORK_DIR/downloads

[ -x "$BUSYBOX" ] || die "no busybox at $BUSYBOX (apt-get install busybox-static)"
# A dynamically linked busybox cannot run in the initramfs.
if command -v ldd >/dev/null && ldd "$BUSYBOX" >/dev/null 2>&1; then
    die "$BUSYBOX is dynamically linked; install busybox-static"
fi

# --- resolve the versioned kernel package -----------------------------------------
if [ -z "${KERNEL_PKG:-}" ]; then
    if ! apt-cache show "$KERNEL_META" >/dev/null 2>&1; then
        log "apt-get update (no $KERNEL_META in the apt cache)"
        apt-get update -qq
    fi
    KERNEL_PKG=$(apt-cache depends "$KERNEL_META" | awk '/Depends: linux-image-/ { print $2; exit }')
    [ -n "$KERNEL_PKG" ] || die "cannot resolve the kernel package $KERNEL_META depends on"
fi
KERNEL_VER=$(apt-cache show "$KERNEL_PKG" 2>/dev/null | awk '/^Version:/ { print $2; exit }')
[ -n "$KERNEL_VER" ] || die "apt does not know $KERNEL_PKG"

sha() { sha256sum "$@" | awk '{ print $1 }'; }
STAMP=$(printf '%s\n' "kernel=$KERNEL_PKG=$KERNEL_VER" "modules=$GUEST_MODULES" \
    "init=$(sha "$E2E_DIR/guest-init.sh")" "builder=$(sha "$E2E_DIR/build-guest.sh")" \
    "busybox=$(sha "$BUSYBOX")")

if [ "${FORCE:-0}" != 1 ] && [ -f "$GUEST_DIR/stamp" ] && [ -f "$GUEST_DIR/vmlinuz" ] &&
    [ -f "$GUEST_DIR/initramfs.cpio.gz" ] && [ "$(cat "$GUEST_DIR/stamp")" = "$STAMP" ]; then
    log "guest is up to date ($KERNEL_PKG $KERNEL_VER)"
    exit 0
fi

# --- download and unpack the kernel (never installed) ------------------------------
deb=$(ls "$DL_DIR/${KERNEL_PKG}_${KERNEL_VER//:/%3a}_"*.deb 2>/dev/null | head -n1 || true)
if [ -z "$deb" ]; then
    log "downloading $KERNEL_PKG $KERNEL_VER"
    (cd "$DL_DIR" && apt-get download -q "$KERNEL_PKG=$KERNEL_VER" 2>&1 | grep -v 'unsandboxed as root' >&2 || true)
    deb=$(ls "$DL_DIR/${KERNEL_PKG}_"*.deb 2>/dev/null | head -n1 || true)
    [ -n "$deb" ] || die "download of $KERNEL_PKG failed"
fi

SCRATCH=$(mktemp -d "$WORK_DIR/guest-build.XXXXXX")
trap 'rm -rf "$SCRATCH"' EXIT
log "unpacking $(basename "$deb")"
dpkg -x "$deb" "$SCRATCH/kernel"

vmlinuz=$(ls "$SCRATCH"/kernel/boot/vmlinuz-* 2>/dev/null | head -n1 || true)
[ -n "$vmlinuz" ] || die "no /boot/vmlinuz-* in $deb"
kver=${vmlinuz##*/vmlinuz-}
moddir=
for d in "$SCRATCH/kernel/lib/modules/$kver" "$SCRATCH/kernel/usr/lib/modules/$kver"; do
    [ -d "$d" ] && moddir=$d
done
[ -n "$moddir" ] || die "no modules directory for $kver"

# --- resolve module dependencies from each module's .modinfo ------------------------
declare -A modfile=()
while IFS= read -r f; do
    b=${f##*/}
    b=${b%%.ko*}
    modfile[${b//-/_}]=$f
done < <(find "$moddir" -name '*.ko' -o -name '*.ko.xz' -o -name '*.ko.zst' -o -name '*.ko.gz')

ROOT=$SCRATCH/root
mkdir -p "$ROOT"/{bin,dev,proc,sys,tmp,etc,lib/modules}

# Decompress a module into the initramfs, print its name.
unpack_module() { # name -> $ROOT/lib/modules/name.ko
    local name=$1 src=${modfile[$1]} dst=$ROOT/lib/modules/$1.ko
    case $src in
        *.ko) cp "$src" "$dst" ;;
        *.ko.xz) xz -dc "$src" >"$dst" ;;
        *.ko.gz) gzip -dc "$src" >"$dst" ;;
        *.ko.zst)
            command -v zstd >/dev/null || die "zstd needed for $src (apt-get install zstd)"
            zstd -qdc "$src" >"$dst" ;;
    esac
}

modinfo_depends() { # module file (uncompressed) -> space separated names
    tr '\0' '\n' <"$1" | sed -n 's/^depends=//p' | head -n1 | tr ',' ' '
}

declare -A state=()   # name -> visiting|done
ORDER=()
visit() {
    local m=${1//-/_} d
    case ${state[$m]:-} in
        done) return ;;
        visiting) die "module dependency cycle at $m" ;;
    esac
    [ -n "${modfile[$m]:-}" ] || die "module $m not found in $kver"
    state[$m]=visiting
    unpack_module "$m"
    for d in $(modinfo_depends "$ROOT/lib/modules/$m.ko"); do
        visit "$d"
    done
    state[$m]=done
    ORDER+=("$m")
}
for m in $GUEST_MODULES; do visit "$m"; done
printf '%s\n' "${ORDER[@]}" >"$ROOT/etc/e2e-modules"
log "modules (load order): ${ORDER[*]}"

# --- busybox, init, device nodes ----------------------------------------------------
cp "$BUSYBOX" "$ROOT/bin/busybox"
for applet in $("$BUSYBOX" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$ROOT/bin/$applet"
done
ln -s bin "$ROOT/sbin"
install -m 0755 "$E2E_DIR/guest-init.sh" "$ROOT/init"
echo "$kver" >"$ROOT/etc/e2e-kernel"
mknod -m 600 "$ROOT/dev/console" c 5 1 2>/dev/null || log "warning: cannot mknod /dev/console (not root?)"
mknod -m 666 "$ROOT/dev/null" c 1 3 2>/dev/null || true

(cd "$ROOT" && find . -mindepth 1 | LC_ALL=C sort | "$BUSYBOX" cpio -o -H newc 2>/dev/null) |
    gzip -9n >"$SCRATCH/initramfs.cpio.gz"

cp "$vmlinuz" "$GUEST_DIR/vmlinuz.new"
mv "$GUEST_DIR/vmlinuz.new" "$GUEST_DIR/vmlinuz"
mv "$SCRATCH/initramfs.cpio.gz" "$GUEST_DIR/initramfs.cpio.gz"
echo "$STAMP" >"$GUEST_DIR/stamp"
log "built $GUEST_DIR (kernel $kver, initramfs $(du -k "$GUEST_DIR/initramfs.cpio.gz" | cut -f1) KiB)"
