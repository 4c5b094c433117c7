#!/usr/bin/env python3
"""A minimal QMP client for the end-to-end scripts.

    qmp.py SOCKET COMMAND [JSON-ARGUMENTS]     run one command, print its "return" as JSON
    qmp.py SOCKET wait-migration TIMEOUT      poll query-migrate until it completes or fails;
                                              prints the final status (and error), exit 0
                                              only for "completed"

Events QEMU sends in between are skipped. Exit status 1 on an error reply.
"""
import json
import socket
import sys
import time


class Qmp:
    def __init__(self, path, timeout=30.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""
        self.recv()  # greeting
        self.cmd("qmp_capabilities")

    def recv(self):
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("QMP connection closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def cmd(self, name, args=None):
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            r = self.recv()
            if "event" in r:
                continue
            if "error" in r:
                raise RuntimeError(f"{name}: {r['error'].get('desc', r['error'])}")
            return r.get("return")


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    path, name = sys.argv[1], sys.argv[2]
    try:
        q = Qmp(path)
        if name == "wait-migration":
            deadline = time.time() + float(sys.argv[3])
            while True:
                r = q.cmd("query-migrate")
                status = r.get("status", "none")
                if status in ("completed", "failed", "cancelled") or time.time() > deadline:
                    extra = r.get("error-desc", "")
                    ram = r.get("ram", {})
                    print(f"{status} total-time={r.get('total-time', '-')}ms "
                          f"downtime={r.get('downtime', '-')}ms "
                          f"transferred={ram.get('transferred', '-')} "
                          f"dirty-sync-count={ram.get('dirty-sync-count', '-')} {extra}".strip())
                    return 0 if status == "completed" else 1
                time.sleep(0.2)
        args = json.loads(sys.argv[3]) if len(sys.argv) > 3 else None
        print(json.dumps(q.cmd(name, args)))
        return 0
    except (OSError, EOFError, RuntimeError, ValueError) as e:
        print(f"qmp.py: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
