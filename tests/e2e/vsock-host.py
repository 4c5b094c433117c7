#!/usr/bin/env python3
"""Host side of the vsock end-to-end test, over the daemon's hybrid-vsock Unix sockets.

    vsock-host.py UDS BYTES CONC CONC_BYTES RESULTS TIMEOUT

Serves, while the guest runs tests/e2e/vsock-guest.c's steps:
  UDS_5000  one guest connection: read to the end, answer BYTES of pattern 2
  UDS_5001  CONC guest connections: echo each
  UDS       CONNECT 6000 (retried until the guest listens): send BYTES of pattern 3,
            shut down writing, read the answer to its end
  UDS       CONC concurrent CONNECT 6001: send CONC_BYTES of pattern 300+k, check the echo
Writes key=value lines to RESULTS (CRC-32 as zlib computes it, expected values included),
rewritten whole (atomically) as each value is produced: a run cut short (a guest that
failed, then SIGTERM from vsock.sh) leaves every result it got so far.
"""
import os
import socket
import sys
import threading
import time
import zlib

P = 65521
BASE = bytes(((j * 131 + (j >> 8) * 7 + 1) & 0xFF) for j in range(P))


def pattern(seed, n):
    off = (seed * 4099) % P
    rot = BASE[off:] + BASE[:off]
    reps = rot * (n // P + 1)
    x = seed & 0xFF
    return reps[:n].translate(bytes((b ^ x) for b in range(256)))


def read_to_end(s):
    chunks = []
    while True:
        b = s.recv(1 << 16)
        if not b:
            return b"".join(chunks)
        chunks.append(b)


def main():
    uds, nbytes, conc, conc_bytes, results_path, timeout = sys.argv[1:7]
    nbytes, conc, conc_bytes, timeout = int(nbytes), int(conc), int(conc_bytes), float(timeout)
    deadline = time.time() + timeout
    res = {}
    lock = threading.Lock()

    def put(k, v):
        with lock:
            res[k] = v
            tmp = results_path + ".tmp"
            with open(tmp, "w") as f:
                for key, val in sorted(res.items()):
                    f.write("%s=%s\n" % (key, val))
            os.replace(tmp, results_path)

    put("expect_g2h_crc", "%08x" % zlib.crc32(pattern(1, nbytes)))
    put("expect_g2h_reply_crc", "%08x" % zlib.crc32(pattern(2, nbytes)))
    put("expect_h2g_crc", "%08x" % zlib.crc32(pattern(3, nbytes)))
    put("expect_h2g_reply_crc", "%08x" % zlib.crc32(pattern(4, nbytes)))

    def listener(port):
        path = "%s_%d" % (uds, port)
        l = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        l.bind(path)
        l.listen(64)
        l.settimeout(max(1.0, deadline - time.time()))
        return l

    l5000 = listener(5000)
    l5001 = listener(5001)

    def serve_pattern():
        try:
            s, _ = l5000.accept()
            s.settimeout(max(1.0, deadline - time.time()))
            got = read_to_end(s)
            put("g2h_recv_bytes", len(got))
            put("g2h_recv_crc", "%08x" % zlib.crc32(got))
            s.sendall(pattern(2, nbytes))
            s.close()
        except OSError as e:
            put("g2h_error", repr(e))

    echoed = []

    def echo_one(s):
        try:
            s.settimeout(max(1.0, deadline - time.time()))
            got = read_to_end(s)
            s.sendall(got)
            s.close()
            with lock:
                echoed.append(len(got))
        except OSError as e:
            put("g2h_conc_error", repr(e))

    def serve_echo():
        threads = []
        try:
            for _ in range(conc):
                s, _ = l5001.accept()
                t = threading.Thread(target=echo_one, args=(s,))
                t.start()
                threads.append(t)
        except OSError as e:
            put("g2h_conc_accept_error", repr(e))
        for t in threads:
            t.join()
        put("g2h_conc_echoed", sum(1 for n in echoed if n == conc_bytes))

    def connect(port):
        """CONNECT until the guest accepts; returns the stream after OK."""
        while time.time() < deadline:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(max(1.0, deadline - time.time()))
            try:
                s.connect(uds)
                s.sendall(b"CONNECT %d\n" % port)
                line = b""
                while not line.endswith(b"\n"):
                    b = s.recv(1)
                    if not b:
                        break
                    line += b
                if line.startswith(b"OK "):
                    return s
            except OSError:
                pass
            s.close()
            time.sleep(0.5)
        raise TimeoutError("guest port %d never accepted" % port)

    def host_pattern():
        try:
            s = connect(6000)
            s.sendall(pattern(3, nbytes))
            s.shutdown(socket.SHUT_WR)
            got = read_to_end(s)
            put("h2g_reply_bytes", len(got))
            put("h2g_reply_crc", "%08x" % zlib.crc32(got))
            s.close()
        except (OSError, TimeoutError) as e:
            put("h2g_error", repr(e))

    ok = []

    def host_echo_one(k):
        try:
            s = connect(6001)
            data = pattern(300 + k, conc_bytes)
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            got = read_to_end(s)
            s.close()
            if got == data:
                with lock:
                    ok.append(k)
        except (OSError, TimeoutError) as e:
            put("h2g_conc_error", repr(e))

    def host_echo():
        threads = [threading.Thread(target=host_echo_one, args=(k,)) for k in range(conc)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        put("h2g_conc_ok", len(ok))

    threads = [threading.Thread(target=f) for f in (serve_pattern, serve_echo, host_pattern)]
    for t in threads:
        t.start()
    threads[2].join()
    # The guest listens on 6001 only after its earlier steps.
    host_echo()
    for t in threads:
        t.join()


if __name__ == "__main__":
    main()
