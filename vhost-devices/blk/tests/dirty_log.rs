//! The dirty-page log checked against what the driver knows: the back-end must mark every
//! page it wrote and nothing else.
//!
//! Logging is turned on as QEMU does it for a migration (SET_LOG_BASE, SET_FEATURES with
//! VHOST_F_LOG_ALL, SET_VRING_ADDR with VHOST_VRING_F_LOG on the running ring), then random
//! reads and writes run at queue depth 16 for a few seconds. Every buffer sits on pages of
//! its own, so the driver knows which pages the device wrote (read data, status bytes, the
//! used ring) and which it only read (headers, write data, descriptor table, available
//! ring). Then logging goes off, the log is cleared, and more I/O must leave it clear.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use vhost_device_blk::engine::Aio;
use vhost_device_blk::BlkConfig;
use vhost_frontend::devices::blk::{RequestHeader, S_OK, T_IN, T_OUT};
use vhost_frontend::{DirtyLogArea, Session, SessionOptions, LOG_PAGE};
use vhost_test_support::Rng;
use vm_memory::{Bytes, GuestAddress};
use zerocopy::little_endian::{U32, U64};
use zerocopy::IntoBytes;

const IMAGE: usize = 8 << 20;
const MEMORY: u64 = 16 << 20;
const DEPTH: usize = 16;
const MAX_DATA: u32 = 16 * 1024;
/// A used ring of three pages: entries on the last two are marked by nothing else.
const QUEUE_SIZE: u16 = 1024;

#[derive(Clone, Copy)]
struct Slot {
    header: GuestAddress,
    data: GuestAddress,
    status: GuestAddress,
}

#[derive(Clone, Copy)]
struct InFlight {
    slot: usize,
    kind: u32,
    len: u32,
}

fn pages(addr: u64, len: u64) -> impl Iterator<Item = u64> {
    let first = addr / LOG_PAGE;
    let last = (addr + len.max(1) - 1) / LOG_PAGE;
    first..=last
}

/// What the driver saw the device write and read.
#[derive(Default)]
struct Seen {
    written: BTreeSet<u64>,
    read_only: BTreeSet<u64>,
    reads: u64,
    writes: u64,
}

/// The log's marks once they stop changing (unchanged for 100 ms, at most 5 s): the worker
/// marks the used ring's entries and, when it re-arms notifications, `avail_event` just
/// after it publishes, so a front-end that has its completion can see marks still coming.
fn settled(log: &DirtyLogArea) -> Vec<u64> {
    let end = Instant::now() + Duration::from_secs(5);
    let mut last = log.dirty_pages().unwrap();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = log.dirty_pages().unwrap();
        if now == last || Instant::now() > end {
            return now;
        }
        last = now;
    }
}

/// Random reads and writes at depth [`DEPTH`] for `run`. With `log` (logging on), each
/// request's written pages must be marked by the time its used entry is visible.
fn random_io(
    s: &mut Session,
    slots: &[Slot],
    rng: &mut Rng,
    run: Duration,
    seen: &mut Seen,
    log: Option<&DirtyLogArea>,
) {
    let mut by_head: Vec<Option<InFlight>> = vec![None; usize::from(QUEUE_SIZE)];
    let mut free: Vec<usize> = (0..slots.len()).collect();
    let end = Instant::now() + run;
    let mut in_flight = 0usize;
    loop {
        let mut added = false;
        while Instant::now() < end {
            let Some(slot) = free.pop() else { break };
            let sl = slots[slot];
            let kind = if rng.next() % 2 == 0 { T_IN } else { T_OUT };
            let sectors = 1 + rng.next() % u64::from(MAX_DATA / 512);
            let len = (sectors * 512) as u32;
            let sector = rng.next() % (IMAGE as u64 / 512 - sectors);
            let header = RequestHeader {
                request_type: U32::new(kind),
                reserved: U32::new(0),
                sector: U64::new(sector),
            };
            let mem = s.memory().mem();
            mem.write_slice(header.as_bytes(), sl.header).unwrap();
            mem.write_obj(0xffu8, sl.status).unwrap();
            if kind == T_OUT {
                let fill = vec![(rng.next() & 0xff) as u8; len as usize];
                mem.write_slice(&fill, sl.data).unwrap();
            }
            let head = s
                .add_chain(
                    0,
                    &[
                        (sl.header, 16, false),
                        (sl.data, len, kind == T_IN),
                        (sl.status, 1, true),
                    ],
                )
                .unwrap();
            by_head[usize::from(head)] = Some(InFlight { slot, kind, len });
            in_flight += 1;
            added = true;
        }
        if added {
            s.publish(0).unwrap();
            s.kick(0).unwrap();
        }
        if in_flight == 0 {
            return;
        }
        let used = s.wait_used(0, TIMEOUT).unwrap();
        let r = by_head[usize::from(used.id)]
            .take()
            .expect("a head in flight");
        in_flight -= 1;
        let sl = slots[r.slot];
        let status: u8 = s.memory().mem().read_obj(sl.status).unwrap();
        assert_eq!(status, S_OK);
        if let Some(log) = log {
            // The marks come before the used entry: a front-end that sees the entry and
            // then syncs the log must find the pages.
            let marked: BTreeSet<u64> = log.dirty_pages().unwrap().into_iter().collect();
            let mut want: Vec<u64> = pages(sl.status.0, 1).collect();
            if r.kind == T_IN {
                want.extend(pages(sl.data.0, u64::from(r.len)));
            }
            let late: Vec<_> = want.iter().filter(|p| !marked.contains(p)).collect();
            assert!(
                late.is_empty(),
                "pages not marked when the used entry was seen: {late:?}"
            );
        }
        seen.written.extend(pages(sl.status.0, 1));
        seen.read_only.extend(pages(sl.header.0, 16));
        if r.kind == T_IN {
            assert_eq!(used.len, r.len + 1);
            seen.written.extend(pages(sl.data.0, u64::from(r.len)));
            seen.reads += 1;
        } else {
            seen.read_only.extend(pages(sl.data.0, u64::from(r.len)));
            seen.writes += 1;
        }
        free.push(r.slot);
    }
}

/// `misalign`: the data buffers start this many bytes into their first page (with
/// `direct`, anything not a multiple of the block size goes through the bounce path).
fn oracle(tag: &str, aio: Aio, direct: bool, misalign: u64) {
    oracle_on(tag, aio, direct, misalign, false);
}

/// The oracle on a ring of either layout. Packed: the device writes its used descriptors
/// into the descriptor ring and its notification flags into the device event area (in the
/// used ring's place); it only reads the driver event area (in the available ring's).
fn oracle_on(tag: &str, aio: Aio, direct: bool, misalign: u64, packed: bool) {
    let scratch = Scratch::new(tag);
    let mut cfg = BlkConfig::new(scratch.image(IMAGE));
    cfg.aio = aio;
    cfg.direct = direct;
    cfg.queue_size = QUEUE_SIZE;
    let _daemon = InProcess::start(&cfg, &scratch.socket());
    let mut s = connect(&scratch.socket(), || {
        let mut o = SessionOptions {
            memory_size: MEMORY,
            queue_size: QUEUE_SIZE,
            ..options(1)
        };
        if packed {
            o.mask_features &= !vhost_proto::virtio::bit(vhost_proto::virtio::RING_PACKED);
        }
        o
    });
    assert_eq!(s.driver(0).unwrap().is_packed(), packed);
    let mem = s.memory();
    // Every buffer on pages of its own.
    let slots: Vec<Slot> = (0..DEPTH)
        .map(|_| Slot {
            header: mem.alloc(LOG_PAGE, LOG_PAGE).unwrap(),
            data: GuestAddress(
                mem.alloc(u64::from(MAX_DATA) + LOG_PAGE, LOG_PAGE)
                    .unwrap()
                    .0
                    + misalign,
            ),
            status: mem.alloc(LOG_PAGE, LOG_PAGE).unwrap(),
        })
        .collect();
    let d = s.driver(0).unwrap();
    let size = u64::from(d.size());
    let (desc, avail, used): (Vec<u64>, Vec<u64>, BTreeSet<u64>) = if packed {
        (
            Vec::new(),
            pages(d.avail_ring().0, 4).collect(),
            pages(d.desc_table().0, 16 * size)
                .chain(pages(d.used_ring().0, 4))
                .collect(),
        )
    } else {
        let used: BTreeSet<u64> = pages(d.used_ring().0, 6 + 8 * size).collect();
        assert_eq!(used.len(), 3);
        (
            pages(d.desc_table().0, 16 * size).collect(),
            pages(d.avail_ring().0, 6 + 2 * size).collect(),
            used,
        )
    };

    // A log a little larger than memory: bits past it must stay clear.
    let log = DirtyLogArea::new(MEMORY + 64 * LOG_PAGE).unwrap();
    s.start_logging(&log).unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut seen = Seen::default();
    random_io(
        &mut s,
        &slots,
        &mut rng,
        Duration::from_secs(3),
        &mut seen,
        Some(&log),
    );
    assert!(
        seen.reads > 100 && seen.writes > 100,
        "{} reads, {} writes",
        seen.reads,
        seen.writes
    );

    let mut want = seen.written.clone();
    want.extend(used.iter().copied());
    let mut read_only = seen.read_only.clone();
    read_only.extend(desc);
    read_only.extend(avail);
    let read_only: BTreeSet<u64> = read_only.difference(&want).copied().collect();
    assert!(
        // (Packed: the two 4-byte event areas may share a page, which the device writes.)
        read_only.len() > DEPTH - usize::from(packed),
        "headers, descriptor table and available ring are pages of their own"
    );
    let marked: BTreeSet<u64> = log.dirty_pages().unwrap().into_iter().collect();
    let missing: Vec<_> = want.difference(&marked).collect();
    assert!(missing.is_empty(), "written pages not marked: {missing:?}");
    let wrong: Vec<_> = marked.intersection(&read_only).collect();
    assert!(wrong.is_empty(), "pages only read were marked: {wrong:?}");
    let extra: Vec<_> = marked.difference(&want).collect();
    assert!(
        extra.is_empty(),
        "pages marked that nothing wrote: {extra:?}"
    );
    assert!(marked.iter().all(|&p| p < MEMORY / LOG_PAGE));

    // Off: the log stays clear.
    s.stop_logging().unwrap();
    settled(&log);
    log.clear().unwrap();
    let mut after = Seen::default();
    random_io(
        &mut s,
        &slots,
        &mut rng,
        Duration::from_secs(1),
        &mut after,
        None,
    );
    assert!(after.reads > 10);
    assert_eq!(log.dirty_pages().unwrap(), Vec::<u64>::new());

    // On again with a new (remapped) log: marks land there.
    let log2 = DirtyLogArea::new(MEMORY).unwrap();
    s.start_logging(&log2).unwrap();
    let mut again = Seen::default();
    random_io(
        &mut s,
        &slots,
        &mut rng,
        Duration::from_millis(300),
        &mut again,
        Some(&log2),
    );
    let marked2: BTreeSet<u64> = log2.dirty_pages().unwrap().into_iter().collect();
    assert!(again.written.is_subset(&marked2));
    assert!(used.is_subset(&marked2));
    assert_eq!(log.dirty_pages().unwrap(), Vec::<u64>::new());
}

#[test]
fn log_marks_exactly_the_pages_written_sync_engine() {
    oracle("log-sync", Aio::Sync, false, 0);
}

#[test]
fn log_marks_exactly_the_pages_written_thread_pool() {
    oracle("log-threads", Aio::Threads(4), false, 0);
}

#[test]
fn log_marks_exactly_the_pages_written_io_uring() {
    if let Err(e) = vhost_device_blk::engine::io_uring_available() {
        eprintln!("skipped: io_uring is not available here: {e}");
        return;
    }
    oracle("log-uring", Aio::IoUring, true, 0);
}

/// `--direct` with data buffers 8 bytes into their page: the bounce path's copies into
/// guest memory are marked as well.
#[test]
fn log_marks_exactly_the_pages_written_direct_unaligned_buffers() {
    oracle("log-direct-bounce", Aio::Threads(4), true, 8);
}

#[test]
fn log_marks_exactly_the_pages_written_packed_ring() {
    oracle_on("log-packed", Aio::Threads(4), false, 0, true);
}

/// Hostile SET_LOG_BASE: too small for the memory table, offset past the file, no
/// descriptor. QEMU checks only the reply's request code, so a refusal it would not see
/// must not leave it believing in a log the back-end does not mark: each refused base
/// closes the connection (the next request fails), and the daemon serves the next one.
#[test]
fn hostile_log_bases_close_the_session_and_the_daemon_serves_the_next() {
    use std::os::fd::AsFd;
    use vhost_proto::{FrontendReq, Header, HeaderFlags, LogBase};

    let scratch = Scratch::new("log-hostile");
    let cfg = BlkConfig::new(scratch.image(IMAGE));
    let _daemon = InProcess::start(&cfg, &scratch.socket());
    let session = || {
        let s = connect(&scratch.socket(), || SessionOptions {
            memory_size: MEMORY,
            ..options(1)
        });
        let buf = s.memory().alloc(4096, 4096).unwrap();
        let status = s.memory().alloc(1, 1).unwrap();
        let hdr = s.memory().alloc(16, 16).unwrap();
        let h = RequestHeader {
            request_type: U32::new(T_IN),
            reserved: U32::new(0),
            sector: U64::new(8),
        };
        s.memory().mem().write_slice(h.as_bytes(), hdr).unwrap();
        (s, [(hdr, 16, false), (buf, 4096, true), (status, 1, true)])
    };
    let read_ok = |s: &mut Session, chain: &[(GuestAddress, u32, bool)]| {
        let used = s.round_trip(0, chain, TIMEOUT).unwrap();
        assert_eq!(used.len, 4097);
        let mut got = vec![0u8; 4096];
        s.memory().mem().read_slice(&mut got, chain[1].0).unwrap();
        assert_eq!(got, (4096..8192).map(pattern).collect::<Vec<_>>());
    };
    let closed = |s: &mut Session, what: &str| {
        assert!(
            s.frontend().get_features().is_err(),
            "{what}: the session goes on after a refused log base"
        );
    };

    // While logging: a refused replacement (too small: 16 MiB of memory needs 512 bytes of
    // log) ends the session, and I/O kicked after it marks nothing in the old log.
    let (mut s, chain) = session();
    let log = DirtyLogArea::new(MEMORY).unwrap();
    s.start_logging(&log).unwrap();
    read_ok(&mut s, &chain);
    assert!(!settled(&log).is_empty());
    log.clear().unwrap();
    let small = DirtyLogArea::with_size(511).unwrap();
    // As QEMU does: send, read whatever comes back, ignore its status.
    let _ = s.frontend().set_log_base(
        &LogBase {
            mmap_size: 511,
            mmap_offset: 0,
        },
        small.file().as_fd(),
    );
    s.add_chain(0, &chain).unwrap();
    s.publish(0).unwrap();
    s.kick(0).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        log.dirty_pages().unwrap(),
        Vec::<u64>::new(),
        "I/O after a refused log base marked the old log"
    );
    closed(&mut s, "too small");
    drop(s);

    for (size, offset) in [(512, 4096), (512, u64::MAX - 4095), (u64::MAX, 0), (512, 7)] {
        let (mut s, chain) = session();
        read_ok(&mut s, &chain);
        let e = s.frontend().set_log_base(
            &LogBase {
                mmap_size: size,
                mmap_offset: offset,
            },
            log.file().as_fd(),
        );
        assert!(e.is_err(), "size {size:#x} offset {offset:#x} was accepted");
        closed(&mut s, &format!("size {size:#x} offset {offset:#x}"));
    }

    // No descriptor at all (refused by the server before the back-end sees it, as any
    // request missing its descriptor): the refused status, and the session goes on.
    let (mut s, chain) = session();
    read_ok(&mut s, &chain);
    let body = LogBase {
        mmap_size: 512,
        mmap_offset: 0,
    };
    let fe = s.frontend();
    let h = Header::new(
        FrontendReq::SetLogBase as u32,
        HeaderFlags::empty(),
        body.as_bytes().len() as u32,
    );
    fe.send_raw(&h, body.as_bytes(), &[]).unwrap();
    let (reply, payload, fds) = fe.recv_raw().unwrap();
    assert_eq!(reply.request, FrontendReq::SetLogBase as u32);
    assert!(fds.is_empty());
    assert_ne!(
        u64::from_le_bytes(payload[..8].try_into().unwrap()),
        0,
        "refused"
    );
    read_ok(&mut s, &chain);
    drop(s);

    // And a good log on the next session is taken.
    let (mut s, chain) = session();
    s.start_logging(&log).unwrap();
    read_ok(&mut s, &chain);
    let marked = log.dirty_pages().unwrap();
    assert!(marked.contains(&(chain[1].0 .0 / LOG_PAGE)));
    assert!(marked.contains(&(chain[2].0 .0 / LOG_PAGE)));
}

/// QEMU turns logging on and off by sending a running ring's addresses again with
/// VHOST_VRING_F_LOG changed: that is accepted, other address changes on a running ring are
/// not. SET_LOG_FD takes an eventfd (signalled after logged batches), nothing else.
#[test]
fn running_ring_takes_only_a_log_flag_change_and_the_log_fd_is_signalled() {
    use nix::sys::eventfd::{EfdFlags, EventFd};
    use std::os::fd::AsFd;
    use vhost_proto::wire::VRING_F_LOG;
    use vhost_proto::VringAddr;

    let scratch = Scratch::new("log-addr");
    let cfg = BlkConfig::new(scratch.image(IMAGE));
    let _daemon = InProcess::start(&cfg, &scratch.socket());
    let mut s = connect(&scratch.socket(), || SessionOptions {
        memory_size: MEMORY,
        ..options(1)
    });
    let d = s.driver(0).unwrap();
    let a = d.vring_user_addrs(s.memory()).unwrap();
    let used_gpa = d.used_ring().0;
    let addr = |flags, desc| VringAddr {
        index: 0,
        flags,
        desc,
        used: a.used,
        avail: a.avail,
        log: used_gpa,
    };
    // Another descriptor table while the ring runs: refused.
    assert!(s
        .frontend()
        .set_vring_addr(&addr(0, a.desc + 4096))
        .is_err());

    let (r, w) = nix::unistd::pipe().unwrap();
    assert!(s.frontend().set_log_fd(r.as_fd()).is_err(), "a pipe");
    drop(w);
    let log_fd = EventFd::from_flags(EfdFlags::EFD_NONBLOCK).unwrap();
    s.frontend().set_log_fd(log_fd.as_fd()).unwrap();

    let log = DirtyLogArea::new(MEMORY).unwrap();
    s.start_logging(&log).unwrap();
    // The same addresses with the flag, and without it: both accepted on the running ring.
    s.frontend()
        .set_vring_addr(&addr(VRING_F_LOG, a.desc))
        .unwrap();
    let slots = [Slot {
        header: s.memory().alloc(LOG_PAGE, LOG_PAGE).unwrap(),
        data: s.memory().alloc(u64::from(MAX_DATA), LOG_PAGE).unwrap(),
        status: s.memory().alloc(LOG_PAGE, LOG_PAGE).unwrap(),
    }];
    let mut seen = Seen::default();
    random_io(
        &mut s,
        &slots,
        &mut Rng(7),
        Duration::from_millis(200),
        &mut seen,
        Some(&log),
    );
    assert!(log_fd.read().unwrap() > 0, "the log eventfd was signalled");
    let marked: BTreeSet<u64> = log.dirty_pages().unwrap().into_iter().collect();
    assert!(marked.contains(&(used_gpa / LOG_PAGE)));
    assert!(seen.written.is_subset(&marked));
    s.frontend().set_vring_addr(&addr(0, a.desc)).unwrap();
}

/// With VHOST_VRING_F_LOG the used ring's writes are logged at the ring's `log` address,
/// not where the used ring is.
#[test]
fn used_ring_writes_are_logged_at_the_rings_log_address() {
    use vhost_proto::wire::VRING_F_LOG;
    use vhost_proto::VringAddr;

    let scratch = Scratch::new("log-at");
    let cfg = BlkConfig::new(scratch.image(IMAGE));
    let _daemon = InProcess::start(&cfg, &scratch.socket());
    let mut s = connect(&scratch.socket(), || SessionOptions {
        memory_size: MEMORY,
        ..options(1)
    });
    let log = DirtyLogArea::new(MEMORY).unwrap();
    s.start_logging(&log).unwrap();
    let d = s.driver(0).unwrap();
    let a = d.vring_user_addrs(s.memory()).unwrap();
    let used_page = d.used_ring().0 / LOG_PAGE;
    // Somewhere else, page-aligned: 8 MiB into guest memory.
    let elsewhere = 8 << 20;
    s.frontend()
        .set_vring_addr(&VringAddr {
            index: 0,
            flags: VRING_F_LOG,
            desc: a.desc,
            used: a.used,
            avail: a.avail,
            log: elsewhere,
        })
        .unwrap();
    let slots = [Slot {
        header: s.memory().alloc(LOG_PAGE, LOG_PAGE).unwrap(),
        data: s.memory().alloc(u64::from(MAX_DATA), LOG_PAGE).unwrap(),
        status: s.memory().alloc(LOG_PAGE, LOG_PAGE).unwrap(),
    }];
    let mut seen = Seen::default();
    random_io(
        &mut s,
        &slots,
        &mut Rng(11),
        Duration::from_millis(200),
        &mut seen,
        Some(&log),
    );
    let marked: BTreeSet<u64> = log.dirty_pages().unwrap().into_iter().collect();
    assert!(marked.contains(&(elsewhere / LOG_PAGE)), "{marked:?}");
    assert!(!marked.contains(&used_page), "the used ring's own page");
    assert!(seen.written.is_subset(&marked));
}
