#!/usr/bin/env python3
"""Writes the seed corpora of the server_session, device_runtime, blk_chains and packed_ring
targets.

Each target reads its input with `arbitrary::Unstructured`; the `In` class below emits the
bytes that make those reads return chosen values (int_in_range: big-endian offset from the
start over as many bytes as the range needs; ratio(n, d): int_in_range(1..=d) <= n;
bool: low bit of one byte; integers: little-endian). Run from anywhere:
`python3 fuzz/seeds.py`; files go to fuzz/corpus/<target>/seed-*.
"""

import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


class In:
    def __init__(self):
        self.b = bytearray()

    def range(self, start, end, value, size):
        """int_in_range(start..=end) of an integer type of `size` bytes returns `value`."""
        delta, off, n = end - start, value - start, 0
        assert 0 <= off <= delta
        while n < size and delta >> (8 * n) > 0:
            n += 1
        self.b += off.to_bytes(n, "big") if n else b""
        return self

    def ratio(self, num, den, want):
        return self.range(1, den, 1 if want else den, 4)

    def flag(self, v):
        self.b.append(1 if v else 0)
        return self

    def int(self, v, size):
        self.b += (v % (1 << (8 * size))).to_bytes(size, "little")
        return self

    def raw(self, data):
        self.b += data
        return self


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(bytes(data))


# ---------------------------------------------------------------- server_session
MEMFD, EVENTFD, SOCKET, DEVNULL = range(4)
NEED_REPLY = 1 << 3


def ss_message(u, code, body=b"", fds=(), need_reply=True, flags=None, size=None):
    if 1 <= code <= 44:
        u.ratio(15, 16, True).range(1, 44, code, 4)
    else:
        u.ratio(15, 16, False).int(code, 4)
    if flags is None:
        u.ratio(31, 32, True).flag(need_reply)
    else:
        u.ratio(31, 32, False).int(flags, 4)
    if len(body) == 0:
        u.range(0, 3, 0, 1)
    elif len(body) <= 64:
        u.range(0, 3, 1, 1).range(0, 64, len(body), 1)
    else:
        u.range(0, 3, 2, 1).int(len(body), 2)
    u.raw(body)
    if size is None:
        u.ratio(1, 32, False)
    else:
        u.ratio(1, 32, True).int(size - len(body), 4)
    n = len(fds)
    if n == 0:
        u.range(0, 15, 0, 1)
    elif n == 1:
        u.range(0, 15, 9, 1)
    elif n == 2:
        u.range(0, 15, 13, 1)
    elif n <= 8:
        u.range(0, 15, 14, 1).range(3, 8, n, 1)
    else:
        assert n == 9
        u.range(0, 15, 15, 1)
    for kind in fds:
        u.range(0, 3, kind, 1)
        if kind == MEMFD:
            u.range(0, 4, 4, 1)


def ss_backend(u):
    # Default answers: VERSION_1 | PROTOCOL_FEATURES, every protocol feature, two queues.
    return u.flag(False).flag(False).flag(False).flag(True)


def u64(v):
    return struct.pack("<Q", v)


def state(i, n):
    return struct.pack("<II", i, n)


def region(gpa, size, uva, off):
    return struct.pack("<QQQQ", gpa, size, uva, off)


def handshake(u):
    ss_message(u, 1, need_reply=False)  # GET_FEATURES
    ss_message(u, 15, need_reply=False)  # GET_PROTOCOL_FEATURES
    ss_message(u, 16, u64(((1 << 23) - 1) & ~(1 << 17)), need_reply=False)  # SET_PROTOCOL_FEATURES
    ss_message(u, 17)  # GET_QUEUE_NUM
    ss_message(u, 36)  # GET_MAX_MEM_SLOTS
    ss_message(u, 21, fds=[SOCKET])  # SET_BACKEND_REQ_FD
    ss_message(u, 3)  # SET_OWNER
    ss_message(u, 2, u64(1 << 32 | 1 << 30))  # SET_FEATURES


def server_session():
    t = "server_session"
    u = ss_backend(In())
    handshake(u)
    for q in range(2):
        ss_message(u, 13, u64(q), fds=[EVENTFD])  # SET_VRING_CALL
        ss_message(u, 14, u64(q), fds=[EVENTFD])  # SET_VRING_ERR
    ss_message(u, 5, struct.pack("<II", 1, 0) + region(0, 0x4000, 0x7f0000000000, 0), fds=[MEMFD])
    ss_message(u, 8, state(0, 256))
    ss_message(u, 10, state(0, 0))
    addr = struct.pack("<IIQQQQ", 0, 0, 0x7f0000000000, 0x7f0000002000, 0x7f0000001000, 0)
    ss_message(u, 9, addr)
    ss_message(u, 12, u64(0), fds=[EVENTFD])  # SET_VRING_KICK
    ss_message(u, 18, state(0, 1))  # SET_VRING_ENABLE
    ss_message(u, 24, struct.pack("<III", 0, 16, 0) + bytes(16))  # GET_CONFIG
    ss_message(u, 25, struct.pack("<III", 4, 4, 0) + b"abcd")  # SET_CONFIG
    ss_message(u, 39, u64(15))  # SET_STATUS
    ss_message(u, 40)  # GET_STATUS
    ss_message(u, 11, state(0, 0))  # GET_VRING_BASE
    write(t, "qemu-start-stop", u.b)

    u = ss_backend(In())
    handshake(u)
    ss_message(u, 37, u64(0) + region(0, 0x4000, 0x7f0000000000, 0), fds=[MEMFD])
    ss_message(u, 38, u64(0) + region(0, 0x4000, 0x7f0000000000, 0))
    ss_message(u, 31, struct.pack("<QQHH", 0, 0, 2, 256) + bytes(4))  # GET_INFLIGHT_FD
    ss_message(u, 32, struct.pack("<QQHH", 0x1000, 0, 2, 256) + bytes(4), fds=[MEMFD])
    ss_message(u, 42, struct.pack("<II", 0, 0), fds=[SOCKET])  # SET_DEVICE_STATE_FD
    ss_message(u, 43)  # CHECK_DEVICE_STATE
    ss_message(u, 44)  # GET_SHMEM_CONFIG
    ss_message(u, 34)  # RESET_DEVICE
    ss_message(u, 4)  # RESET_OWNER
    write(t, "mem-slots-inflight-state", u.b)

    # Hostile sequences: each ends in a refusal or a close.
    hostile = {
        "unknown-codes": lambda u: [ss_message(u, c) for c in (0, 45, 1006, 0xFFFFFFFF)],
        "4gib-body": lambda u: ss_message(u, 5, b"", size=0xFFFFFFFF),
        "truncated-body": lambda u: ss_message(u, 8, b"\0" * 4, size=8),
        "kick-two-fds": lambda u: ss_message(u, 12, u64(0), fds=[EVENTFD, EVENTFD]),
        "mem-table-fewer-fds": lambda u: ss_message(
            u, 5, struct.pack("<II", 2, 0) + region(0, 0x1000, 0, 0)
            + region(0x1000, 0x1000, 0x1000, 0), fds=[MEMFD]),
        "nine-fds": lambda u: ss_message(u, 3, fds=[EVENTFD] * 9),
        "mem-table-overlap": lambda u: ss_message(
            u, 5, struct.pack("<II", 2, 0) + region(0, 0x2000, 0, 0)
            + region(0x1000, 0x1000, 0x10000, 0), fds=[MEMFD, MEMFD]),
        "mem-table-overflow": lambda u: ss_message(
            u, 5, struct.pack("<II", 1, 0) + region(2**64 - 0x1000, 0x2000, 0, 0), fds=[MEMFD]),
        "vring-num-bad": lambda u: [ss_message(u, 8, state(0, n)) for n in (0, 3, 0x10000)],
        "vring-index-bad": lambda u: [ss_message(u, 8, state(7, 16)),
                                      ss_message(u, 13, u64(255), fds=[EVENTFD])],
        "second-owner": lambda u: [ss_message(u, 3), ss_message(u, 3)],
        "features-never-offered": lambda u: ss_message(u, 2, u64(2**64 - 1)),
        "config-beyond": lambda u: ss_message(u, 24, struct.pack("<III", 30, 16, 0) + bytes(16)),
        "rem-never-added": lambda u: ss_message(u, 38, u64(0) + region(0, 0x1000, 0, 0)),
        "bad-flags": lambda u: ss_message(u, 1, flags=0x10 | 1),
    }
    for name, build in hostile.items():
        u = ss_backend(In())
        handshake(u)
        build(u)
        write(t, "hostile-" + name, u.b)


# ---------------------------------------------------------------- device_runtime
UVA = [0x7F0000000000, 0x550000000000]
GPA = [0, 0x100000]


def dr_index(u, i):
    return u.ratio(15, 16, True).range(0, 2, i, 4)


def dr(u, kind, nr=True):
    return u.flag(nr).range(0, 20, kind, 1)


def dr_region(u, which):
    return u.range(0, 1, which, 8).ratio(1, 4, False)


def dr_ring_addr(u, which, off):
    return u.ratio(15, 16, True).range(0, 1, which, 8).int(off, 2)


def dr_write_guest(u, which, off, data):
    assert 1 <= len(data) <= 64
    return dr(u, 17).range(0, 1, which, 8).range(1, 64, len(data), 1).int(off, 2).raw(data)


def dr_start_ring(u, q, which, base_off):
    dr(u, 5).ratio(7, 8, True).range(0, 5, 4, 4)  # SET_VRING_NUM 16
    dr_index(u, q)
    dr(u, 6)  # SET_VRING_ADDR: index, desc, used, avail
    dr_index(u, q)
    dr_ring_addr(u, which, base_off)
    dr_ring_addr(u, which, base_off + 0x400)
    dr_ring_addr(u, which, base_off + 0x200)
    dr(u, 7).int(0, 2)  # SET_VRING_BASE 0
    dr_index(u, q)
    dr(u, 9).range(0, 2, q, 8).ratio(1, 8, False).flag(False)  # SET_VRING_CALL
    dr(u, 9).range(0, 2, q, 8).ratio(1, 8, False).flag(True)  # SET_VRING_KICK
    dr(u, 11).ratio(3, 4, True)  # SET_VRING_ENABLE 1
    dr_index(u, q)


def dr_chain(u, which, base_off, slot, head, bufs, avail_idx):
    """Writes descriptors `bufs` [(gpa offset, len, flags, next)] from `head` and publishes."""
    for k, (off, length, flags, nxt) in enumerate(bufs):
        d = struct.pack("<QIHH", GPA[which] + off, length, flags, nxt)
        dr_write_guest(u, which, base_off + 16 * (head + k), d)
    dr_write_guest(u, which, base_off + 0x200 + 4 + 2 * slot, struct.pack("<H", head))
    dr_write_guest(u, which, base_off + 0x200, struct.pack("<HH", 0, avail_idx))


def device_runtime():
    t = "device_runtime"
    features = 1 << 32 | 1 << 30 | 1 << 29 | 1 << 28
    protocol = (1 << 0) | (1 << 3) | (1 << 9) | (1 << 13) | (1 << 15) | (1 << 16)
    for name, table in (("mem-table", True), ("add-mem-reg", False)):
        u = In()
        dr(u, 1).int(protocol, 8)
        dr(u, 0).int(features, 8)
        if table:
            dr(u, 2).range(0, 3, 2, 8)
            dr_region(u, 0)
            dr_region(u, 1)
        else:
            dr(u, 3)
            dr_region(u, 0)
        dr_start_ring(u, 0, 0, 0)
        if table:
            dr_start_ring(u, 1, 1, 0x800)
        # Queue 0: a readable then a writable buffer; queue 1: an indirect chain.
        dr_chain(u, 0, 0, 0, 0, [(0x2000, 64, 1, 1), (0x3000, 512, 2, 0)], 1)
        dr(u, 19).range(0, 1, 0, 8)
        if table:
            dr_chain(u, 1, 0x800, 0, 0, [(0x4000, 32, 4, 0)], 1)
            table_entries = struct.pack("<QIHH", 0x105000, 64, 3, 1) + struct.pack(
                "<QIHH", 0x106000, 64, 2, 0)
            dr_write_guest(u, 1, 0x4000, table_entries)
            dr(u, 19).range(0, 1, 1, 8)
        dr(u, 14).range(0, 12, 0, 4).range(0, 16, 8, 8).flag(True)  # GET_CONFIG
        dr(u, 15).int(15, 8)  # SET_STATUS
        dr(u, 8)  # GET_VRING_BASE 0
        dr_index(u, 0)
        dr(u, 12)  # RESET_DEVICE
        write(t, name, u.b)

    # Hostile: ring started, its memory removed, then kicked.
    u = In()
    dr(u, 1).int(protocol, 8)
    dr(u, 0).int(features, 8)
    dr(u, 3)
    dr_region(u, 0)
    dr_start_ring(u, 0, 0, 0)
    dr_chain(u, 0, 0, 0, 0, [(0x3000, 512, 2, 0)], 1)
    dr(u, 4)
    dr_region(u, 0)
    dr(u, 19).range(0, 1, 0, 8)
    dr(u, 8)
    dr_index(u, 0)
    write(t, "hostile-memory-removed-then-kick", u.b)

    # Hostile: kick before any memory table.
    u = In()
    dr(u, 0).int(features, 8)
    dr(u, 9).range(0, 2, 0, 8).ratio(1, 8, False).flag(True)
    dr(u, 19).range(0, 1, 0, 8)
    dr(u, 8)
    dr_index(u, 0)
    write(t, "hostile-kick-before-memory", u.b)


# ---------------------------------------------------------------- blk_chains
DATA = 0x1000
NEXT, WRITE, INDIRECT = 1, 2, 4


def blk_seed(size_exp, descs, avail, data, avail_idx=None):
    size = 1 << size_exp
    u = In().range(0, 4, size_exp, 2).flag(True)
    u.ratio(7, 8, True).range(0, size, len(avail) if avail_idx is None else avail_idx, 2)
    descs = descs + [(DATA, 0, 0, 0)] * (size - len(descs))
    for addr, length, flags, nxt in descs:
        u.int(addr - DATA, 8).range(0, 15, 2, 1)
        u.int(length, 4).range(0, 15, 5, 1)
        u.int(flags, 2).range(0, size, nxt, 2)
    avail = avail + [0] * (size - len(avail))
    for head in avail:
        u.range(0, size, head, 2)
    return u.raw(data).b


def blk_request(kind, sector):
    return struct.pack("<IIQ", kind, 0, sector)


def blk_chains():
    t = "blk_chains"
    data = bytearray(0x3000)

    def put(off, b):
        data[off - DATA:off - DATA + len(b)] = b

    # Read, write, flush, get-id chains side by side.
    put(0x1000, blk_request(0, 2))
    put(0x1010, blk_request(1, 5))
    put(0x1020, blk_request(4, 0))
    put(0x1030, blk_request(8, 0))
    descs = [
        (0x1000, 16, NEXT, 1), (0x2000, 1024, WRITE | NEXT, 2), (0x3000, 1, WRITE, 0),
        (0x1010, 16, NEXT, 4), (0x2400, 512, NEXT, 5), (0x3001, 1, WRITE, 0),
        (0x1020, 16, NEXT, 7), (0x3002, 1, WRITE, 0),
    ]
    descs += [(0x1030, 16, NEXT, 9), (0x2800, 20, WRITE | NEXT, 10), (0x3003, 1, WRITE, 0)]
    write(t, "read-write-flush-get-id", blk_seed(4, descs, [0, 3, 6, 8], data))

    # Discard and write-zeroes with one range each, then an unknown type.
    data = bytearray(0x100)
    put(0x1000, blk_request(11, 0) + struct.pack("<QII", 8, 8, 0))
    put(0x1020, blk_request(13, 0) + struct.pack("<QII", 16, 8, 1))
    put(0x1040, blk_request(99, 0))
    descs = [
        (0x1000, 32, NEXT, 1), (0x1080, 1, WRITE, 0),
        (0x1020, 32, NEXT, 3), (0x1081, 1, WRITE, 0),
        (0x1040, 16, NEXT, 5), (0x1082, 1, WRITE, 0),
    ]
    write(t, "discard-zeroes-unsupported", blk_seed(3, descs, [0, 2, 4], data))

    # An indirect table of three descriptors.
    data = bytearray(0x200)
    put(0x1000, blk_request(0, 1))
    table = struct.pack("<QIHH", 0x1000, 16, NEXT, 1) + struct.pack(
        "<QIHH", 0x1800, 512, WRITE | NEXT, 2) + struct.pack("<QIHH", 0x11FF, 1, WRITE, 0)
    put(0x1100, table)
    data += bytearray(0x800)
    write(t, "indirect", blk_seed(2, [(0x1100, 48, INDIRECT, 0)], [0], data))

    # Hostile: a loop, a sector past the end, a status byte that is readable, no header.
    data = bytearray(0x100)
    put(0x1000, blk_request(0, 1 << 40))
    descs = [
        (0x1000, 16, NEXT, 1), (0x1080, 512, WRITE | NEXT, 0),
        (0x1000, 16, NEXT, 3), (0x1090, 1, 0, 0),
        (0x1000, 16, NEXT, 5), (0x1800, 512, WRITE | NEXT, 6), (0x10A0, 1, WRITE, 0),
        (0x10B0, 1, WRITE, 0),
    ]
    write(t, "hostile-loop-readonly-status-past-end", blk_seed(3, descs, [0, 2, 4, 7], data))


# ---------------------------------------------------------------- packed_ring
# Steps of fuzz_targets/packed_ring.rs (MEM 0x10000, TABLES 0x2000).
PR_RING, PR_DESC, PR_TABLE, PR_EVENTS, PR_ROUND, PR_COMPLETE = range(6)
PR_NEXT, PR_WRITE, PR_INDIRECT = 1, 2, 4
PR_MEM, PR_TABLES = 0x10000, 0x2000


class PackedDriver:
    """A driver laying buffers into a packed ring as the target's step 1 writes them."""

    def __init__(self, size_exp, event_idx=False):
        self.u = In().range(0, 5, size_exp, 1).flag(event_idx)
        self.size, self.pos, self.wrap, self.held = 1 << size_exp, 0, True, 0

    def step(self, kind):
        self.u.range(0, 5, kind, 1)
        return self.u

    def desc(self, pos, wrap, addr, length, buf_id, flags, id_in_ring=True):
        u = self.step(PR_DESC).range(0, self.size - 1, pos, 2).flag(wrap)
        u.range(0, PR_MEM + 0x100, addr, 8).range(0, 0x2000, length, 4)
        if id_in_ring:
            u.flag(True).range(0, self.size - 1, buf_id, 2)
        else:
            u.flag(False).int(buf_id, 2)
        u.int(flags, 2)

    def buffer(self, buf_id, bufs):
        """One buffer of (len, flags) descriptors at the next positions (NEXT added)."""
        for i, (length, flags) in enumerate(bufs):
            more = PR_NEXT if i + 1 < len(bufs) else 0
            self.desc(self.pos, self.wrap, 0x4000 + 0x100 * self.pos, length, buf_id, flags | more)
            self.pos += 1
            if self.pos == self.size:
                self.pos, self.wrap = 0, not self.wrap

    def table(self, off, entries):
        """An indirect table at TABLES + off: (addr, len, flags) entries."""
        data = b"".join(struct.pack("<QIHH", a, n, 0, f) for a, n, f in entries)
        self.step(PR_TABLE).range(0, 0xFFF, off, 8).range(1, 64, len(data), 8).raw(data)

    def events(self, driver_off_wrap, driver_flags, device_off_wrap=0, device_flags=0):
        self.step(PR_EVENTS)
        for v in (driver_off_wrap, driver_flags, device_off_wrap, device_flags):
            self.u.int(v, 2)

    def round(self, popped):
        self.step(PR_ROUND)
        self.held += popped

    def complete(self, picks):
        """Completes held requests: each pick (index into what is still held, in the
        target's swap_remove order; that request's writable bytes; the used length)."""
        u = self.step(PR_COMPLETE).range(0, self.held, len(picks), 8)
        for i, writable, used in picks:
            u.range(0, self.held - 1, i, 8).range(0, writable, used, 4)
            self.held -= 1


def packed_ring():
    t = "packed_ring"
    # In order, single descriptors, four rounds of three in a ring of 8: both sides wrap.
    d = PackedDriver(3)
    for _ in range(4):
        for buf_id in range(3):
            d.buffer(buf_id, [(64, PR_WRITE)])
        d.round(3)
        d.complete([(0, 64, 64)] * 3)
    write(t, "in-order-wrap", d.u.b)

    # Chains of two and three completed out of order, with EVENT_IDX asking for a call at
    # position 4.
    d = PackedDriver(3, event_idx=True)
    d.events(4 | 0x8000, 2)
    d.buffer(0, [(16, 0), (64, PR_WRITE)])
    d.buffer(1, [(16, 0), (32, 0), (64, PR_WRITE)])
    d.buffer(2, [(8, PR_WRITE)])
    d.round(3)
    d.complete([(2, 8, 8), (0, 64, 64), (0, 64, 0)])
    d.buffer(0, [(16, 0), (64, PR_WRITE)])
    d.round(1)
    d.complete([(0, 64, 64)])
    write(t, "chains-out-of-order-event-idx", d.u.b)

    # An indirect table of three entries, and one with an indirect entry inside it.
    d = PackedDriver(2)
    d.table(0, [(0x5000, 16, 0), (0x5100, 512, PR_WRITE), (0x5400, 1, PR_WRITE)])
    d.table(0x100, [(0x5000, 16, 0), (PR_TABLES, 32, PR_INDIRECT)])
    d.desc(0, True, PR_TABLES, 48, 0, PR_INDIRECT)
    d.desc(1, True, PR_TABLES + 0x100, 32, 1, PR_INDIRECT)
    d.round(2)
    d.complete([(1, 0, 0), (0, 513, 513)])
    write(t, "indirect-and-nested", d.u.b)

    # Hostile: one ID made available twice, an ID out of range, a chain whose next
    # descriptor is not available (the ring wrapped), then that descriptor written for the
    # new lap.
    d = PackedDriver(2)
    d.desc(0, True, 0x4000, 16, 1, PR_WRITE)
    d.desc(1, True, 0x4100, 16, 1, PR_WRITE)
    d.desc(2, True, 0x4200, 16, 0x7777, PR_WRITE, id_in_ring=False)
    d.desc(3, True, 0x4300, 16, 2, PR_NEXT)
    d.round(2)
    d.desc(0, False, 0x4000, 16, 3, PR_WRITE)
    d.round(1)
    d.complete([(0, 16, 16), (0, 16, 0)])
    write(t, "hostile-ids-and-wrap", d.u.b)


if __name__ == "__main__":
    server_session()
    device_runtime()
    blk_chains()
    packed_ring()
