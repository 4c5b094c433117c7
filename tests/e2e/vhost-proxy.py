#!/usr/bin/env python3
"""Logging vhost-user proxy for the end-to-end test.

    vhost-proxy.py --listen FRONT.sock --connect BACK.sock --log messages.log

QEMU connects to FRONT.sock; for each front-end connection the proxy connects to the
back-end at BACK.sock and forwards whole messages both ways, descriptors included
(SCM_RIGHTS), logging one line per message:

    <seconds> F>B SET_VRING_ENABLE flags=0x1 size=8 fds=0 index=0 num=1

One front-end at a time, like the back-ends. Descriptors are passed through as they
are (the back-end request channel of SET_BACKEND_REQ_FD is not itself logged).
"""
import argparse
import os
import socket
import struct
import sys
import threading
import time

REQUESTS = {
    1: "GET_FEATURES", 2: "SET_FEATURES", 3: "SET_OWNER", 4: "RESET_OWNER",
    5: "SET_MEM_TABLE", 6: "SET_LOG_BASE", 7: "SET_LOG_FD", 8: "SET_VRING_NUM",
    9: "SET_VRING_ADDR", 10: "SET_VRING_BASE", 11: "GET_VRING_BASE",
    12: "SET_VRING_KICK", 13: "SET_VRING_CALL", 14: "SET_VRING_ERR",
    15: "GET_PROTOCOL_FEATURES", 16: "SET_PROTOCOL_FEATURES", 17: "GET_QUEUE_NUM",
    18: "SET_VRING_ENABLE", 19: "SEND_RARP", 20: "NET_SET_MTU",
    21: "SET_BACKEND_REQ_FD", 22: "IOTLB_MSG", 23: "SET_VRING_ENDIAN",
    24: "GET_CONFIG", 25: "SET_CONFIG", 26: "CREATE_CRYPTO_SESSION",
    27: "CLOSE_CRYPTO_SESSION", 28: "POSTCOPY_ADVISE", 29: "POSTCOPY_LISTEN",
    30: "POSTCOPY_END", 31: "GET_INFLIGHT_FD", 32: "SET_INFLIGHT_FD",
    33: "GPU_SET_SOCKET", 34: "RESET_DEVICE", 35: "VRING_KICK",
    36: "GET_MAX_MEM_SLOTS", 37: "ADD_MEM_REG", 38: "REM_MEM_REG",
    39: "SET_STATUS", 40: "GET_STATUS", 41: "GET_SHARED_OBJECT",
    42: "SET_DEVICE_STATE_FD", 43: "CHECK_DEVICE_STATE",
}
VRING_STATE = {8, 10, 11, 18}  # bodies that are struct vhost_vring_state
U64_BODY = {1, 2, 15, 16, 17, 36, 39, 40}
MAX_FDS = 16
HEADER = struct.Struct("<III")


class Closed(Exception):
    pass


def recv_exact(sock, n, fds):
    """Read exactly n bytes, collecting any descriptors that arrive with them."""
    buf = b""
    while len(buf) < n:
        data, got, _flags, _addr = socket.recv_fds(sock, n - len(buf), MAX_FDS)
        fds.extend(got)
        if not data:
            raise Closed()
        buf += data
    return buf


def describe(direction, hdr, body, nfds):
    req, flags, size = HEADER.unpack(hdr)
    name = REQUESTS.get(req, f"REQ_{req}")
    reply = " reply" if flags & 0x4 else ""
    text = f"{direction} {name}{reply} flags={flags:#x} size={size} fds={nfds}"
    if req in VRING_STATE and len(body) == 8:
        index, num = struct.unpack("<II", body)
        text += f" index={index} num={num}"
    elif req in U64_BODY and len(body) == 8:
        text += f" value={struct.unpack('<Q', body)[0]:#x}"
    elif req in (12, 13, 14) and len(body) == 8:
        value = struct.unpack("<Q", body)[0]
        text += f" index={value & 0xff}{' nofd' if value & 0x100 else ''}"
    elif req == 24 and len(body) >= 12:
        offset, csize, cflags = struct.unpack("<III", body[:12])
        text += f" offset={offset} config_size={csize} config_flags={cflags:#x}"
    return text


class Session:
    def __init__(self, front, back, log):
        self.front, self.back, self.log = front, back, log
        self.t0 = time.monotonic()

    def emit(self, line):
        with self.log["lock"]:
            self.log["file"].write(f"{time.monotonic() - self.t0:9.4f} {line}\n")
            self.log["file"].flush()

    def pump(self, src, dst, direction):
        try:
            while True:
                fds = []
                try:
                    hdr = recv_exact(src, HEADER.size, fds)
                    size = HEADER.unpack(hdr)[2]
                    body = recv_exact(src, size, fds) if size else b""
                    self.emit(describe(direction, hdr, body, len(fds)))
                    data = hdr + body
                    sent = socket.send_fds(dst, [data], fds)
                    if sent < len(data):
                        dst.sendall(data[sent:])
                finally:
                    for fd in fds:
                        os.close(fd)
        except (Closed, OSError) as e:
            self.emit(f"{direction} closed ({e.__class__.__name__})")
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", required=True)
    ap.add_argument("--connect", required=True)
    ap.add_argument("--log", required=True)
    args = ap.parse_args()

    log = {"lock": threading.Lock(), "file": open(args.log, "a", buffering=1)}
    try:
        os.unlink(args.listen)
    except FileNotFoundError:
        pass
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(args.listen)
    lsock.listen(1)
    conn_no = 0
    while True:
        front, _ = lsock.accept()
        conn_no += 1
        back = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            back.connect(args.connect)
        except OSError as e:
            print(f"vhost-proxy: cannot connect to {args.connect}: {e}", file=sys.stderr)
            front.close()
            continue
        session = Session(front, back, log)
        session.emit(f"--- connection {conn_no}")
        threads = [
            threading.Thread(target=session.pump, args=(front, back, "F>B"), daemon=True),
            threading.Thread(target=session.pump, args=(back, front, "B>F"), daemon=True),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        front.close()
        back.close()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
