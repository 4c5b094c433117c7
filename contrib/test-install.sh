#!/usr/bin/env bash
# Checks contrib/install.sh: installs into a scratch DESTDIR and validates every discovery
# file against QEMU's schema (docs/interop/vhost-user.json: description, type from the
# schema's list, an absolute binary path, known features) and against the installed
# binary's own --print-capabilities, and every systemd unit's ExecStart.
# BIN_DIR as for install.sh (default: target/debug, built when missing).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
export BIN_DIR=${BIN_DIR:-$ROOT/target/debug}
if [ ! -x "$BIN_DIR/vhost-user-null" ]; then
    (cd "$ROOT" && cargo build -p vhost-device-blk -p vhost-device-rng -p vhost-device-null --bins)
fi
DEST=$(mktemp -d /tmp/vhost-install.XXXXXX)
trap 'rm -rf "$DEST"' EXIT
PREFIX=/usr DESTDIR=$DEST "$ROOT/contrib/install.sh" >/dev/null

python3 - "$DEST" <<'PY'
import glob, json, os, re, subprocess, sys

dest = sys.argv[1]
# "type" values QEMU's vhost-user.json schema lists (VHostUserBackendType).
types = {"bridge", "9p", "audio", "block", "fs", "gpio", "gpu", "i2c", "input", "net",
         "rng", "scmi", "scsi", "sound", "video", "vsock"}
files = sorted(glob.glob(f"{dest}/usr/share/qemu/vhost-user/*.json"))
assert len(files) == 2, files  # blk and rng; the null disk gets none
for path in files:
    name = os.path.basename(path)
    assert re.fullmatch(r"\d\d-[a-z0-9-]+\.json", name), name
    doc = json.load(open(path))
    assert set(doc) == {"description", "type", "binary", "features"}, (name, doc)
    assert doc["type"] in types, (name, doc["type"])
    assert doc["description"], name
    binary = doc["binary"]
    assert os.path.isabs(binary) and binary.startswith("/usr/libexec/"), (name, binary)
    staged = dest + binary
    assert os.access(staged, os.X_OK), staged
    caps = json.loads(subprocess.check_output([staged, "--print-capabilities"]))
    assert caps["type"] == doc["type"], (name, caps, doc)
    assert caps.get("features", []) == doc["features"], (name, caps, doc)
    print(f"ok {name}: type {doc['type']}, binary {binary}, features {doc['features']}")
units = sorted(glob.glob(f"{dest}/usr/lib/systemd/system/*"))
assert len(units) == 4, units
for unit in units:
    text = open(unit).read()
    assert "@LIBEXECDIR@" not in text, unit
    for exe in re.findall(r"^ExecStart=(\S+)", text, re.M):
        assert os.access(dest + exe, os.X_OK), (unit, exe)
    print(f"ok {os.path.basename(unit)}")
assert os.access(f"{dest}/usr/libexec/vhost-user-null", os.X_OK)
print("3 passed, 0 failed")
PY
