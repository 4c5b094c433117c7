#!/usr/bin/env bash
# Installs the daemons where QEMU and systemd look for them:
#
#   $PREFIX/libexec/vhost-user-{blk,rng,null}                 the daemons
#   $PREFIX/share/qemu/vhost-user/50-vhost-user-{blk,rng}.json QEMU's discovery files
#                                                             (docs/interop/vhost-user.json;
#                                                             none for the null disk, which
#                                                             drops writes: nothing should
#                                                             pick it by type)
#   $PREFIX/lib/systemd/system/vhost-user-*.{socket,service}  socket-activated units
#
# Each discovery file is made from the daemon's own --print-capabilities, so its type and
# features always match the binary. Settings (environment):
#   PREFIX=/usr/local   installation prefix (QEMU's own files live under /usr)
#   DESTDIR=            staging root for packagers (files go to $DESTDIR$PREFIX/...)
#   BIN_DIR=            where the built daemons are (default: target/release, built with
#                       `cargo build --release` when missing)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PREFIX=${PREFIX:-/usr/local}
DESTDIR=${DESTDIR:-}
BIN_DIR=${BIN_DIR:-$ROOT/target/release}

# name|description; an empty description: installed without a discovery file
DAEMONS=(
    "vhost-user-blk|virtio-blk back-end serving a raw image file or block device"
    "vhost-user-rng|virtio-rng back-end serving the host's entropy"
    "vhost-user-null|"
)

missing=0
for d in "${DAEMONS[@]}"; do
    [ -x "$BIN_DIR/${d%%|*}" ] || missing=1
done
if [ $missing = 1 ]; then
    (cd "$ROOT" && cargo build --release -p vhost-device-blk -p vhost-device-rng \
        -p vhost-device-null --bins)
    BIN_DIR=$ROOT/target/release
fi

libexec=$PREFIX/libexec
json_dir=$PREFIX/share/qemu/vhost-user
unit_dir=$PREFIX/lib/systemd/system
install -d "$DESTDIR$libexec" "$DESTDIR$json_dir" "$DESTDIR$unit_dir"

for d in "${DAEMONS[@]}"; do
    name=${d%%|*}
    description=${d#*|}
    install -m 0755 "$BIN_DIR/$name" "$DESTDIR$libexec/$name"
    if [ -z "$description" ]; then
        echo "installed $DESTDIR$libexec/$name"
        continue
    fi
    caps=$("$BIN_DIR/$name" --print-capabilities)
    python3 - "$caps" "$description" "$libexec/$name" \
        >"$DESTDIR$json_dir/50-$name.json" <<'PY'
import json, sys
caps = json.loads(sys.argv[1])
doc = {
    "description": sys.argv[2],
    "type": caps["type"],
    "binary": sys.argv[3],
    "features": caps.get("features", []),
}
print(json.dumps(doc, indent=4))
PY
    echo "installed $DESTDIR$libexec/$name and $DESTDIR$json_dir/50-$name.json"
done

for unit in "$ROOT"/contrib/systemd/*; do
    sed "s|@LIBEXECDIR@|$libexec|g" "$unit" >"$DESTDIR$unit_dir/$(basename "$unit")"
    echo "installed $DESTDIR$unit_dir/$(basename "$unit")"
done
