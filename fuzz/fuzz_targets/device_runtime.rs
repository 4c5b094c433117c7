//! The device runtime (`DeviceBackend`) under an arbitrary control sequence, with real
//! guest memory, kicks and eventfds, run threadless: after every operation the workers'
//! state machines run once on this thread (`DeviceBackend::run_workers`), so a run is
//! deterministic and no thread is spawned.
//!
//! Input (read with `arbitrary::Unstructured`): up to 64 operations. Each is a front-end
//! request encoded by `vhost-proto` (features, memory tables and regions built from two
//! memfd-backed regions, possibly bent out of shape; vring size, base, addresses near or
//! inside those regions, with or without VHOST_VRING_F_LOG, kick and call eventfds or NOFD,
//! enable, reset, config, status, dirty-log bases of any size and offset over a small memfd,
//! SET_LOG_FD),
//! a raw message, a write of arbitrary bytes into guest memory (descriptor tables, avail
//! rings), a kick of a ring's eventfd, or the release of the requests the device holds.
//! The device opts in to inflight tracking: GET_INFLIGHT_FD with any shape, and
//! SET_INFLIGHT_FD handing the guest memory's own memfd as the area (so the guest-memory
//! writes scribble over the area too), with any shape, size and offset.
//! The server handles each message at once over a connection pair; the device is a small
//! two-queue device that fills writable buffers and reads readable ones, as bounded by the
//! chain, and either completes each request at once or, while the input says so, holds up
//! to four and completes them later in reverse order (a stop of the ring then meets
//! outstanding requests: the quiesce bound is 0, so it closes the connection).
//!
//! One back-end serves every run, one front-end connection per run, as a daemon serves one
//! front-end after another. A crash input replayed on its own runs against a fresh
//! back-end: one that crashes only after other inputs points at state a session left
//! behind for the next (a reset that forgot something).
//!
//! Properties: nothing panics, nothing touches memory outside the mappings, and once the
//! session is over the workers are gone, no mapping and no held request is left, and the
//! process has exactly the descriptors it had before (counted around windows of runs, the
//! leaking input then found by replaying the window: see `FD_CHECK_EVERY`).
//!
//! Speed (`fuzz/speed.sh device_runtime`): what every run would redo is kept — the back-end,
//! guest memory, eventfds, message buffers — and what a run dirtied is reset only when it
//! did (guest memory zeroed, eventfds drained); answers are read in batches.
#![no_main]

use std::os::fd::{AsFd, BorrowedFd};

use arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use nix::sys::eventfd::{EfdFlags, EventFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use vhost_backend::runtime::{
    DeviceBackend, DeviceError, Processed, QueueContext, Request, VirtioDevice,
};
use vhost_backend::BackendServer;
use vhost_frontend::{GuestMemory, RegionSpec};
use vhost_proto::wire::VRING_F_LOG;
use vhost_proto::{
    Config, FrontendRequest, Header, HeaderFlags, Inflight, LogBase, MemTable, MemoryRegion,
    RegionMsg, VringAddr, VringFd, VringState, MAX_BODY_SIZE,
};
use vhost_transport::{Connection, FrontendChannel};
use vm_memory::{Bytes, GuestAddress};

const QUEUES: usize = 2;
const MAX_OPS: usize = 64;
const REGION_SIZE: u64 = 0x1_0000;
/// Size of the dirty-log memfd (the two regions need 34 bytes of log).
const LOG_FILE_SIZE: u64 = 0x2000;
const SPECS: [RegionSpec; 2] = [
    RegionSpec {
        guest_phys_addr: 0,
        size: REGION_SIZE,
        user_addr: 0x7f00_0000_0000,
    },
    RegionSpec {
        guest_phys_addr: 0x10_0000,
        size: REGION_SIZE,
        user_addr: 0x5500_0000_0000,
    },
];

/// Fills device-writable buffers with a byte and reads readable ones; holds requests
/// while `hold` is set.
#[derive(Default)]
struct FillDevice {
    hold: AtomicBool,
    held: Mutex<Vec<(Request, u32)>>,
}

impl FillDevice {
    fn release(&self) {
        let held = std::mem::take(&mut *self.held.lock().expect("lock"));
        for (req, len) in held.into_iter().rev() {
            req.complete(len);
        }
    }
}

impl VirtioDevice for FillDevice {
    fn device_type(&self) -> u32 {
        4
    }
    fn num_queues(&self) -> usize {
        QUEUES
    }
    fn max_queue_size(&self) -> u16 {
        16
    }
    fn features(&self) -> u64 {
        0
    }
    fn config_size(&self) -> usize {
        8
    }
    fn read_config(&self, offset: u32, data: &mut [u8]) -> std::result::Result<(), DeviceError> {
        vhost_backend::runtime::read_config_bytes(&[7; 8], offset, data)
    }
    fn process_queue(
        &self,
        ctx: &mut QueueContext<'_>,
    ) -> std::result::Result<Processed, DeviceError> {
        let mut buf = [0x5au8; 256];
        while let Some(req) = ctx.pop() {
            let r = (req.readable_len() as usize).min(buf.len());
            let _ = req.read_readable(0, &mut buf[..r]);
            let w = (req.writable_len() as usize).min(buf.len());
            let written = match req.write_writable(0, &buf[..w]) {
                Ok(()) => w as u32,
                Err(_) => 0,
            };
            let mut held = self.held.lock().expect("lock");
            if self.hold.load(Ordering::Relaxed) && held.len() < 4 {
                held.push((req, written));
            } else {
                drop(held);
                req.complete(written);
            }
        }
        Ok(Processed::Drained)
    }
    fn reset(&self) {
        self.held.lock().expect("lock").clear();
    }
    fn supports_inflight_tracking(&self) -> bool {
        true
    }
}

/// Open descriptors of the process, read from `/proc/self/fd` without an allocation per
/// entry (the directory's own descriptor is not counted).
fn open_fds() -> usize {
    let mut dir = nix::dir::Dir::open(
        "/proc/self/fd",
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .expect("/proc/self/fd");
    let entries = dir
        .iter()
        .filter_map(|e| e.ok())
        .filter(|e| !matches!(e.file_name().to_bytes(), b"." | b".."))
        .count();
    entries - 1
}

fn region(u: &mut Unstructured<'_>, mem: &GuestMemory) -> Result<MemoryRegion> {
    let i = u.int_in_range(0..=1usize)?;
    let r = mem.regions().nth(i).expect("two regions");
    let mut m = MemoryRegion {
        guest_phys_addr: r.guest_phys_addr,
        memory_size: r.memory_size,
        user_addr: r.user_addr,
        mmap_offset: r.mmap_offset,
    };
    if u.ratio(1, 4)? {
        match u.int_in_range(0..=3u8)? {
            0 => m.guest_phys_addr = u.arbitrary()?,
            1 => m.memory_size = u.arbitrary::<u64>()? % (4 * REGION_SIZE),
            2 => m.user_addr = u.arbitrary()?,
            _ => m.mmap_offset = u.arbitrary::<u64>()? % (4 * REGION_SIZE),
        }
    }
    Ok(m)
}

/// A ring address: usually inside one region's front-end virtual range.
fn ring_addr(u: &mut Unstructured<'_>) -> Result<u64> {
    Ok(if u.ratio(15, 16)? {
        let spec = &SPECS[u.int_in_range(0..=1usize)?];
        spec.user_addr + u64::from(u.arbitrary::<u16>()? & !0xf)
    } else {
        u.arbitrary()?
    })
}

fn index(u: &mut Unstructured<'_>) -> Result<u32> {
    Ok(if u.ratio(15, 16)? {
        u.int_in_range(0..=QUEUES as u32)?
    } else {
        u.arbitrary()?
    })
}

/// One operation of a run. A message for the server is its header and which descriptors
/// go with it; its body is in the buffer `op` was given.
enum Op<'a> {
    Send { header: Header, fds: Fds },
    WriteGuest { gpa: u64, bytes: &'a [u8] },
    Kick(usize),
    Hold(bool),
    Release,
}

#[derive(Clone, Copy)]
enum Fd {
    Memory,
    Kick(usize),
    Call(usize),
    Log,
}

/// The descriptors of a message (at most three), without an allocation.
#[derive(Clone, Copy)]
struct Fds {
    list: [Fd; 3],
    len: usize,
}

impl Fds {
    const NONE: Fds = Fds::repeat(Fd::Memory, 0);

    /// `fd`, `n` times (`n <= 3`).
    const fn repeat(fd: Fd, n: usize) -> Fds {
        Fds {
            list: [fd; 3],
            len: n,
        }
    }

    const fn one(fd: Fd) -> Fds {
        Fds::repeat(fd, 1)
    }

    fn as_slice(&self) -> &[Fd] {
        &self.list[..self.len]
    }
}

/// Encodes `req` into `body`.
fn encoded<'a>(req: FrontendRequest<'_>, need_reply: bool, fds: Fds, body: &mut Vec<u8>) -> Op<'a> {
    let flags = if need_reply {
        HeaderFlags::NEED_REPLY
    } else {
        HeaderFlags::empty()
    };
    // One buffer for the whole process: a fresh one per message costs more than the rest
    // of the encoding under the sanitizer.
    thread_local! {
        static BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; MAX_BODY_SIZE]);
    }
    let header = BUF.with_borrow_mut(|buf| {
        let enc = req.encode(flags, buf).expect("encodable request");
        body.clear();
        body.extend_from_slice(&buf[..enc.body_len]);
        body.extend_from_slice(enc.payload);
        enc.header
    });
    Op::Send { header, fds }
}

/// The next operation; the body of a message goes to `body`.
fn op<'a>(u: &mut Unstructured<'a>, mem: &GuestMemory, body: &mut Vec<u8>) -> Result<Op<'a>> {
    use FrontendRequest as R;
    let nr = u.arbitrary()?;
    let state = |u: &mut Unstructured<'_>, num: u32| -> Result<VringState> {
        Ok(VringState {
            index: index(u)?,
            num,
        })
    };
    Ok(match u.int_in_range(0..=26u8)? {
        0 => encoded(R::SetFeatures(u.arbitrary()?), nr, Fds::NONE, body),
        1 => encoded(R::SetProtocolFeatures(u.arbitrary()?), nr, Fds::NONE, body),
        2 => {
            let n = u.int_in_range(0..=3usize)?;
            let regions = (0..n).map(|_| region(u, mem)).collect::<Result<Vec<_>>>()?;
            let table = MemTable::new(&regions).expect("at most 8 regions");
            encoded(R::SetMemTable(table), nr, Fds::repeat(Fd::Memory, n), body)
        }
        3 => encoded(
            R::AddMemReg(RegionMsg::new(region(u, mem)?)),
            nr,
            Fds::one(Fd::Memory),
            body,
        ),
        4 => encoded(
            R::RemMemReg(RegionMsg::new(region(u, mem)?)),
            nr,
            Fds::NONE,
            body,
        ),
        5 => {
            let num = if u.ratio(7, 8)? {
                1 << u.int_in_range(0..=5u32)?
            } else {
                u.arbitrary()?
            };
            encoded(R::SetVringNum(state(u, num)?), nr, Fds::NONE, body)
        }
        6 => encoded(
            R::SetVringAddr(VringAddr {
                index: index(u)?,
                flags: if u.ratio(1, 4)? { VRING_F_LOG } else { 0 },
                desc: ring_addr(u)?,
                used: ring_addr(u)?,
                avail: ring_addr(u)?,
                log: if u.ratio(3, 4)? {
                    SPECS[u.int_in_range(0..=1usize)?].guest_phys_addr
                        + u64::from(u.arbitrary::<u16>()?)
                } else {
                    u.arbitrary()?
                },
            }),
            nr,
            Fds::NONE,
            body,
        ),
        7 => {
            let base = u.arbitrary::<u16>()?.into();
            encoded(R::SetVringBase(state(u, base)?), nr, Fds::NONE, body)
        }
        8 => encoded(R::GetVringBase(state(u, 0)?), false, Fds::NONE, body),
        9 | 10 => {
            let i = u.int_in_range(0..=QUEUES)?;
            let nofd = u.ratio(1, 8)?;
            let f = VringFd {
                index: i as u8,
                nofd,
            };
            let n = usize::from(!nofd);
            if u.arbitrary()? {
                let fds = Fds::repeat(Fd::Kick(if i < QUEUES { i } else { 0 }), n);
                encoded(R::SetVringKick(f), nr, fds, body)
            } else {
                let fds = Fds::repeat(Fd::Call(i.min(QUEUES - 1)), n);
                encoded(R::SetVringCall(f), nr, fds, body)
            }
        }
        11 => {
            let on = u.ratio(3, 4)?.into();
            encoded(R::SetVringEnable(state(u, on)?), nr, Fds::NONE, body)
        }
        12 => encoded(R::ResetDevice, nr, Fds::NONE, body),
        13 => encoded(R::ResetOwner, nr, Fds::NONE, body),
        14 => {
            let offset = u.int_in_range(0..=12u32)?;
            let payload = [0u8; 16];
            let len = u.int_in_range(0..=16usize)?;
            let c = Config {
                offset,
                flags: 0,
                payload: &payload[..len],
            };
            if u.arbitrary()? {
                encoded(R::GetConfig(c), false, Fds::NONE, body)
            } else {
                encoded(R::SetConfig(c), nr, Fds::NONE, body)
            }
        }
        15 => encoded(R::SetStatus(u.arbitrary()?), nr, Fds::NONE, body),
        16 => {
            let len = usize::from(u.int_in_range(0..=64u8)?).min(u.len());
            let header = Header {
                request: u.int_in_range(1..=44u32)?,
                flags: 1 | if nr { 1 << 3 } else { 0 },
                size: len as u32,
            };
            body.clear();
            body.extend_from_slice(u.bytes(len)?);
            Op::Send {
                header,
                fds: Fds::NONE,
            }
        }
        17 | 18 => {
            let spec = &SPECS[u.int_in_range(0..=1usize)?];
            let len = usize::from(u.int_in_range(1..=64u8)?).min(u.len());
            Op::WriteGuest {
                gpa: spec.guest_phys_addr + u64::from(u.arbitrary::<u16>()?),
                bytes: u.bytes(len)?,
            }
        }
        21 | 22 => {
            // Usually a shape the device has (2 queues of up to 16), sized to fit.
            let num_queues = if u.ratio(7, 8)? {
                u.int_in_range(1..=2u16)?
            } else {
                u.arbitrary()?
            };
            let queue_size = if u.ratio(7, 8)? {
                1 << u.int_in_range(0..=4u16)?
            } else {
                u.arbitrary()?
            };
            let fit = vhost_proto::inflight::split_area_size(num_queues, queue_size);
            let mut info = Inflight {
                mmap_size: if u.ratio(7, 8)? { fit } else { u.arbitrary()? },
                mmap_offset: if u.ratio(7, 8)? {
                    u64::from(u.int_in_range(0..=15u8)?) * 4096
                } else {
                    u.arbitrary()?
                },
                num_queues,
                queue_size,
                padding: [0; 4],
            };
            if u.arbitrary()? {
                info.mmap_size = 0;
                info.mmap_offset = 0;
                encoded(R::GetInflightFd(info), true, Fds::NONE, body)
            } else {
                let fds = Fds::repeat(Fd::Memory, usize::from(u.ratio(15, 16)?));
                encoded(R::SetInflightFd(info), nr, fds, body)
            }
        }
        23 => {
            let small = |u: &mut Unstructured<'_>| -> Result<u64> {
                Ok(if u.ratio(3, 4)? {
                    u64::from(u.arbitrary::<u16>()?) % (LOG_FILE_SIZE + 0x100)
                } else {
                    u.arbitrary()?
                })
            };
            let log = LogBase {
                mmap_size: small(u)?,
                mmap_offset: if u.ratio(3, 4)? { 0 } else { small(u)? },
            };
            let fds = Fds::repeat(Fd::Log, usize::from(u.ratio(7, 8)?));
            encoded(R::SetLogBase(log), nr, fds, body)
        }
        24 => {
            let fd = if u.arbitrary()? { Fd::Call(0) } else { Fd::Log };
            encoded(R::SetLogFd, nr, Fds::one(fd), body)
        }
        19 => Op::Hold(u.arbitrary()?),
        20 => Op::Release,
        _ => Op::Kick(u.int_in_range(0..=QUEUES - 1)?),
    })
}

/// The server's answers are read after this many messages (and at the end of the run)
/// rather than after each: a read that finds nothing costs a system call. Sixteen answers
/// (GET_CONFIG's, the largest, are at most 268 bytes) fit in the socket's buffer, so the
/// server never waits to send one.
const DRAIN_EVERY: usize = 16;

/// Reads and drops whatever the server answered (into `buf`, of `MAX_BODY_SIZE` bytes: a
/// larger body ends the draining as it ended `recv_body`).
fn drain(front: &Connection<FrontendChannel>, buf: &mut [u8]) {
    while let Ok((wire, _fds)) = front.recv_header() {
        let len = Header::from_wire(&wire).size as usize;
        if len > buf.len() || front.recv_body_into(&mut buf[..len]).is_err() {
            break;
        }
    }
}

/// What every run shares, set up once: guest memory (zero at the start of each run) and
/// the ring eventfds (drained at the start of each run).
struct Fixture {
    mem: GuestMemory,
    /// Guest memory may hold something else than zeros: a run wrote it or handed its memfd
    /// to the server (which maps it: rings, buffers, the inflight area). Only then is it
    /// zeroed at the start of the next run; otherwise it is still all zeros.
    mem_touched: AtomicBool,
    /// The eventfds may count something: a run kicked or handed one to the server. Only
    /// then are they drained at the start of the next run.
    fds_touched: AtomicBool,
    kicks: Vec<EventFd>,
    calls: Vec<EventFd>,
    /// The back-end, kept from one run to the next as a daemon keeps it from one front-end
    /// to the next: what a session leaves behind must not reach the next one.
    backend: Mutex<Option<DeviceBackend<FillDevice>>>,
    log: std::fs::File,
}

fn eventfds() -> Vec<EventFd> {
    (0..QUEUES)
        .map(|_| {
            EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
                .expect("eventfd")
        })
        .collect()
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let fd = nix::sys::memfd::memfd_create(
            c"fuzz-log",
            nix::sys::memfd::MFdFlags::MFD_CLOEXEC | nix::sys::memfd::MFdFlags::MFD_ALLOW_SEALING,
        )
        .expect("memfd");
        let log = std::fs::File::from(fd);
        log.set_len(LOG_FILE_SIZE).expect("sizing the log");
        Fixture {
            mem: GuestMemory::new(&SPECS).expect("guest memory"),
            mem_touched: AtomicBool::new(false),
            fds_touched: AtomicBool::new(false),
            kicks: eventfds(),
            calls: eventfds(),
            backend: Mutex::new(None),
            log,
        }
    })
}

fn run(u: &mut Unstructured<'_>) {
    let Fixture {
        mem,
        mem_touched,
        fds_touched,
        kicks,
        calls,
        backend,
        log,
    } = fixture();
    static ZEROS: [u8; REGION_SIZE as usize] = [0; REGION_SIZE as usize];
    if mem_touched.swap(false, Ordering::Relaxed) {
        for spec in &SPECS {
            mem.mem()
                .write_slice(&ZEROS, GuestAddress(spec.guest_phys_addr))
                .expect("zeroing guest memory");
        }
    }
    if fds_touched.swap(false, Ordering::Relaxed) {
        for e in kicks.iter().chain(calls) {
            let _ = e.read();
        }
    }
    let (back, front) = Connection::<FrontendChannel>::pair().expect("socket pair");
    front.set_nonblocking(true).expect("non-blocking");
    let mut slot = backend.lock().expect("lock");
    let backend = slot.take().unwrap_or_else(|| {
        DeviceBackend::threadless(FillDevice::default())
            .expect("backend")
            .with_quiesce_timeout(std::time::Duration::ZERO)
    });
    backend.device().hold.store(false, Ordering::Relaxed);
    let mut server = BackendServer::new(back, backend).expect("server");
    // Message bodies, the server's answers: one buffer each for the whole process.
    thread_local! {
        static BUFS: std::cell::RefCell<(Vec<u8>, Vec<u8>)> =
            std::cell::RefCell::new((Vec::with_capacity(2 * MAX_BODY_SIZE), vec![0; MAX_BODY_SIZE]));
    }
    BUFS.with_borrow_mut(|(body, answer)| {
        // Messages sent since the answers were last read.
        let mut unread = 0;
        for _ in 0..MAX_OPS {
            if u.is_empty() {
                break;
            }
            let Ok(op) = op(u, mem, body) else {
                break;
            };
            match op {
                Op::Send { header, fds } => {
                    let mut borrowed: [BorrowedFd<'_>; 3] = [mem.fd(); 3];
                    for (b, f) in borrowed.iter_mut().zip(fds.as_slice()) {
                        *b = match *f {
                            Fd::Memory => {
                                mem_touched.store(true, Ordering::Relaxed);
                                mem.fd()
                            }
                            Fd::Kick(i) => {
                                fds_touched.store(true, Ordering::Relaxed);
                                kicks[i].as_fd()
                            }
                            Fd::Call(i) => {
                                fds_touched.store(true, Ordering::Relaxed);
                                calls[i].as_fd()
                            }
                            Fd::Log => log.as_fd(),
                        };
                    }
                    if front
                        .send(&header.to_wire(), body, &[], &borrowed[..fds.len])
                        .is_err()
                    {
                        break;
                    }
                    let ended = server.handle_one().is_err();
                    unread += 1;
                    if unread == DRAIN_EVERY {
                        drain(&front, answer);
                        unread = 0;
                    }
                    if ended {
                        break;
                    }
                }
                Op::WriteGuest { gpa, bytes } => {
                    mem_touched.store(true, Ordering::Relaxed);
                    let _ = mem.mem().write_slice(bytes, GuestAddress(gpa));
                }
                Op::Kick(i) => {
                    fds_touched.store(true, Ordering::Relaxed);
                    let _ = kicks[i].write(1);
                }
                Op::Hold(on) => server.backend().device().hold.store(on, Ordering::Relaxed),
                Op::Release => server.backend().device().release(),
            }
            server.backend().run_workers();
        }
        drain(&front, answer);
    });
    // The front-end goes away: the workers stop and the mappings go.
    server.finish().expect("reset");
    assert_eq!(server.backend().running_workers(), 0);
    assert!(server.backend().memory().is_empty(), "mappings left");
    assert!(
        server
            .backend()
            .device()
            .held
            .lock()
            .expect("lock")
            .is_empty(),
        "requests left"
    );
    *slot = Some(server.into_backend());
    drop(front);
}

/// Descriptors are counted (a scan of `/proc/self/fd`, as costly as a short run) before
/// and after windows of `FD_CHECK_EVERY` runs (the first window: one run) instead of around
/// each run. The window's inputs are kept; a count that differs replays them one by one,
/// counting around each, to name the input that leaks. Counts differ without a leak when
/// libFuzzer opens descriptors of its own between two runs (it starts a symbolizer, with
/// pipes, the first time it prints a new function): when no input of the window leaks on
/// its own, the window is let go, with a line on stderr.
const FD_CHECK_EVERY: usize = 32;

struct FdCheck {
    /// Descriptors open before the window's first run (the fixture's included).
    before: usize,
    /// The inputs of the window, their buffers reused.
    recent: Vec<Vec<u8>>,
    /// Runs in the window so far.
    runs: usize,
    /// Windows checked.
    windows: usize,
}

static FD_CHECK: Mutex<FdCheck> = Mutex::new(FdCheck {
    before: 0,
    recent: Vec::new(),
    runs: 0,
    windows: 0,
});

/// Replays `inputs`, counting descriptors around each, and panics naming the one that
/// leaks (written to `fd-leak-input` in the current directory as well).
fn find_leak(inputs: &[Vec<u8>], leaked: usize) {
    for input in inputs {
        let before = open_fds();
        run(&mut Unstructured::new(input));
        if open_fds() != before {
            let _ = std::fs::write("fd-leak-input", input);
            panic!("descriptors leaked by the input (written to fd-leak-input): {input:02x?}");
        }
    }
    eprintln!(
        "device_runtime: {leaked} descriptors opened or closed over the last {} runs, by none of \
         them alone (libFuzzer's own?): counting again",
        inputs.len()
    );
}

fuzz_target!(|data: &[u8]| {
    // The fixture's descriptors live for the whole process.
    fixture();
    let mut check = FD_CHECK.lock().unwrap_or_else(|e| e.into_inner());
    let FdCheck {
        before,
        recent,
        runs,
        windows,
    } = &mut *check;
    if *runs == 0 {
        *before = open_fds();
    }
    run(&mut Unstructured::new(data));
    // Every descriptor a run opened is closed when it returns. (Threadless: a run starts no
    // thread; `run` checks no worker is left.)
    if recent.len() <= *runs {
        recent.push(Vec::new());
    }
    recent[*runs].clear();
    recent[*runs].extend_from_slice(data);
    *runs += 1;
    if *runs == FD_CHECK_EVERY || *windows == 0 {
        let n = std::mem::take(runs);
        *windows += 1;
        let now = open_fds();
        if now != *before {
            find_leak(&recent[..n], now.abs_diff(*before));
        }
    }
});

/// ASan's defaults for this target: no fake stack frames for detecting stack use after
/// return (the sanitizer's costliest option here, ~10% of a run in libFuzzer's own
/// per-input bookkeeping; safe Rust cannot return a reference to a dead frame). An
/// `ASAN_OPTIONS` environment variable still overrides it.
#[no_mangle]
pub extern "C" fn __asan_default_options() -> *const std::ffi::c_char {
    c"detect_stack_use_after_return=0".as_ptr()
}
