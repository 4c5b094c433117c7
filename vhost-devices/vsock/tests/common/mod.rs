//! Shared helpers of the integration tests: a scratch directory, an in-process daemon, and
//! a small guest vsock stack (credit accounting per connection) over the front-end's
//! session and vsock driver.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vhost_device_vsock::{VsockConfig, VsockDevice};
use vhost_frontend::devices::vsock::{op, Packet, VsockDriver, VsockHeader, HOST_CID};
use vhost_frontend::{Session, SessionOptions};

/// How long a test waits for one packet.
pub const TIMEOUT: Duration = vhost_test_support::TIMEOUT;
/// The guest CID the tests use.
pub const CID: u64 = 3;

pub use vhost_test_support::Scratch;

/// The host side of the daemon's hybrid vsock, in a scratch directory.
pub trait Uds {
    /// The hybrid-vsock socket (`--uds-path`).
    fn uds(&self) -> PathBuf;
    /// A host listener for guest connections to `port`.
    fn listen(&self, port: u32) -> UnixListener;
    /// A host process connecting to guest port `port`: sends the CONNECT line.
    fn host_connect(&self, port: u32) -> UnixStream;
}

impl Uds for Scratch {
    fn uds(&self) -> PathBuf {
        self.dir.join("vm.vsock")
    }

    fn listen(&self, port: u32) -> UnixListener {
        let mut p = self.uds().into_os_string();
        p.push(format!("_{port}"));
        UnixListener::bind(p).unwrap()
    }

    fn host_connect(&self, port: u32) -> UnixStream {
        let mut s = UnixStream::connect(self.uds()).unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        writeln!(s, "CONNECT {port}").unwrap();
        s
    }
}

/// Reads the `OK <port>\n` line of a host-initiated connection.
pub fn read_ok(s: &mut UnixStream) -> u32 {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.last() != Some(&b'\n') {
        assert_eq!(
            s.read(&mut b).unwrap(),
            1,
            "stream ended before OK: {line:?}"
        );
        line.push(b[0]);
    }
    let text = String::from_utf8(line).unwrap();
    let port = text.strip_prefix("OK ").expect("OK line").trim_end();
    port.parse().unwrap()
}

/// A daemon serving a vsock device in a thread of this process; stopped on drop.
pub struct InProcess(vhost_test_support::InProcess);

impl InProcess {
    pub fn start(scratch: &Scratch) -> InProcess {
        let device = VsockDevice::new(&VsockConfig::new(CID, scratch.uds())).unwrap();
        InProcess(vhost_test_support::InProcess::start(
            device,
            &scratch.socket(),
        ))
    }
}

/// VIRTIO_F_RING_PACKED.
const RING_PACKED: u64 = 1 << 34;

/// Runs `test` once per ring layout (split, then packed): the sessions [`options`] builds
/// on this thread ack RING_PACKED or not.
#[allow(unused_imports)] // Not every test file runs both layouts.
pub use vhost_test_support::for_each_layout as on_both_layouts;

/// Session options for vsock: three queues of 256, 32 MiB of guest memory, the config
/// space read; packed rings inside [`on_both_layouts`]'s second run.
pub fn options() -> SessionOptions {
    vhost_test_support::with_layout(SessionOptions {
        num_queues: 3,
        queue_size: 256,
        memory_size: 32 << 20,
        config_size: Some(8),
        ..SessionOptions::default()
    })
}

/// Connects (retrying while the socket appears) and starts the device.
pub fn connect(socket: &Path) -> Session {
    vhost_test_support::connect(socket, options)
}

/// The guest end of one connection: its credit both ways.
#[derive(Clone, Copy, Debug, Default)]
pub struct GuestConn {
    pub guest_port: u32,
    pub host_port: u32,
    /// What the guest announces.
    pub buf_alloc: u32,
    /// Bytes the guest consumed.
    pub fwd_cnt: u32,
    /// Bytes the guest sent.
    pub tx_cnt: u32,
    /// The device's credit as last announced.
    pub peer_buf_alloc: u32,
    pub peer_fwd_cnt: u32,
}

impl GuestConn {
    /// Bytes the guest may send now.
    pub fn credit(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub(self.tx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }

    fn header(&self, op: u16) -> VsockHeader {
        let mut h = VsockHeader::to_host(CID, self.guest_port, self.host_port, op);
        h.buf_alloc = self.buf_alloc.into();
        h.fwd_cnt = self.fwd_cnt.into();
        h
    }
}

/// A guest: the session, the vsock driver, and packets received but not yet asked for.
pub struct Guest {
    pub s: Session,
    pub d: VsockDriver,
    inbox: VecDeque<Packet>,
    pub conns: HashMap<(u32, u32), GuestConn>,
    /// Data that arrived while the guest waited for credit, per connection.
    unread: HashMap<(u32, u32), Vec<u8>>,
    /// `fwd_cnt` of the last CREDIT_UPDATE sent, per connection.
    last_update: HashMap<(u32, u32), u32>,
}

impl Guest {
    /// A guest on a fresh session with 64 rx buffers of 4 KiB + header (as Linux posts).
    pub fn new(socket: &Path) -> Guest {
        let mut s = connect(socket);
        assert_eq!(
            s.features() & RING_PACKED != 0,
            vhost_test_support::packed_layout(),
            "the ring layout asked for"
        );
        let d = VsockDriver::new(&mut s, 64, 4096 + 44, 32).unwrap();
        Guest {
            s,
            d,
            inbox: VecDeque::new(),
            conns: HashMap::new(),
            unread: HashMap::new(),
            last_update: HashMap::new(),
        }
    }

    pub fn send(&mut self, hdr: &VsockHeader, payload: &[u8]) {
        self.d.send(&mut self.s, hdr, payload, TIMEOUT).unwrap();
    }

    /// The next packet of any connection.
    pub fn recv(&mut self) -> Packet {
        if let Some(p) = self.inbox.pop_front() {
            return p;
        }
        let p = self.d.recv(&mut self.s, TIMEOUT).unwrap();
        self.note(&p);
        p
    }

    /// The next packet within `wait`, if any.
    pub fn recv_within(&mut self, wait: Duration) -> Option<Packet> {
        if let Some(p) = self.inbox.pop_front() {
            return Some(p);
        }
        let deadline = Instant::now() + wait;
        loop {
            if let Some(p) = self.d.try_recv(&mut self.s).unwrap() {
                self.note(&p);
                return Some(p);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The next packet of connection (guest port, host port); others wait in the inbox.
    pub fn recv_for(&mut self, key: (u32, u32)) -> Packet {
        if let Some(i) = self.inbox.iter().position(|p| key_of(p) == key) {
            return self.inbox.remove(i).unwrap();
        }
        let deadline = Instant::now() + TIMEOUT;
        loop {
            assert!(Instant::now() < deadline, "no packet for {key:?}");
            let p = self.d.recv(&mut self.s, TIMEOUT).unwrap();
            self.note(&p);
            if key_of(&p) == key {
                return p;
            }
            self.inbox.push_back(p);
        }
    }

    /// Updates the credit of the packet's connection.
    fn note(&mut self, p: &Packet) {
        if let Some(c) = self.conns.get_mut(&key_of(p)) {
            c.peer_buf_alloc = p.hdr.buf_alloc.get();
            c.peer_fwd_cnt = p.hdr.fwd_cnt.get();
        }
    }

    /// Connects guest port `guest_port` to host port `host_port`, announcing `buf_alloc`.
    /// Returns the device's answer (RESPONSE or RST).
    pub fn connect(&mut self, guest_port: u32, host_port: u32, buf_alloc: u32) -> Packet {
        let key = (guest_port, host_port);
        let c = GuestConn {
            guest_port,
            host_port,
            buf_alloc,
            ..GuestConn::default()
        };
        self.conns.insert(key, c);
        self.send(&c.header(op::REQUEST), &[]);
        let p = self.recv_for(key);
        assert_eq!(p.hdr.src_cid.get(), HOST_CID);
        assert_eq!(p.hdr.dst_cid.get(), CID);
        p
    }

    /// Accepts a host-initiated connection whose REQUEST is `req`.
    pub fn accept(&mut self, req: &Packet, buf_alloc: u32) -> (u32, u32) {
        assert_eq!(req.hdr.op.get(), op::REQUEST);
        let key = key_of(req);
        let c = GuestConn {
            guest_port: key.0,
            host_port: key.1,
            buf_alloc,
            peer_buf_alloc: req.hdr.buf_alloc.get(),
            peer_fwd_cnt: req.hdr.fwd_cnt.get(),
            ..GuestConn::default()
        };
        self.conns.insert(key, c);
        self.send(&c.header(op::RESPONSE), &[]);
        key
    }

    /// A control packet (no payload) on connection `key`.
    pub fn control(&mut self, key: (u32, u32), op: u16, flags: u32) {
        let c = self.conns[&key];
        let mut h = c.header(op);
        h.flags = flags.into();
        self.send(&h, &[]);
    }

    /// Sends `data` on `key` in packets of at most `chunk` bytes, each within the credit
    /// (waiting for CREDIT_UPDATEs when it runs out; other packets wait in the inbox).
    pub fn write(&mut self, key: (u32, u32), data: &[u8], chunk: usize) {
        let mut off = 0;
        while off < data.len() {
            let credit = self.conns[&key].credit() as usize;
            if credit == 0 {
                let p = self.recv_for(key);
                assert!(
                    matches!(p.hdr.op.get(), op::CREDIT_UPDATE | op::RW),
                    "waiting for credit, got op {}",
                    p.hdr.op.get()
                );
                if p.hdr.op.get() == op::RW {
                    self.consume(key, &p.data);
                    self.unread
                        .entry(key)
                        .or_default()
                        .extend_from_slice(&p.data);
                }
                continue;
            }
            let n = chunk.min(credit).min(data.len() - off);
            let c = self.conns[&key];
            let mut h = c.header(op::RW);
            h.len = (n as u32).into();
            self.send(&h, &data[off..off + n]);
            self.conns.get_mut(&key).unwrap().tx_cnt += n as u32;
            off += n;
        }
    }

    /// Reads data packets of `key` until `len` bytes came, consuming them at once (a
    /// CREDIT_UPDATE is sent whenever half the buffer was consumed since the last one).
    pub fn read(&mut self, key: (u32, u32), len: usize) -> Vec<u8> {
        let mut out = self.unread.remove(&key).unwrap_or_default();
        while out.len() < len {
            let p = self.recv_for(key);
            match p.hdr.op.get() {
                op::RW => {
                    out.extend_from_slice(&p.data);
                    self.consume(key, &p.data);
                }
                op::CREDIT_UPDATE => {}
                op::CREDIT_REQUEST => self.control(key, op::CREDIT_UPDATE, 0),
                other => panic!("reading {key:?}: op {other} after {} bytes", out.len()),
            }
        }
        out
    }
}

impl Guest {
    /// The guest consumed `data` of `key`: its `fwd_cnt` moves on, and a CREDIT_UPDATE goes
    /// out once half the buffer was consumed since the last one.
    fn consume(&mut self, key: (u32, u32), data: &[u8]) {
        let c = self.conns.get_mut(&key).unwrap();
        c.fwd_cnt = c.fwd_cnt.wrapping_add(data.len() as u32);
        let since = c
            .fwd_cnt
            .wrapping_sub(self.last_update.get(&key).copied().unwrap_or(0));
        if since >= c.buf_alloc / 2 {
            self.last_update.insert(key, c.fwd_cnt);
            self.control(key, op::CREDIT_UPDATE, 0);
        }
    }
}

/// (guest port, host port) of a packet from the device.
pub fn key_of(p: &Packet) -> (u32, u32) {
    (p.hdr.dst_port.get(), p.hdr.src_port.get())
}

/// A byte pattern that differs per stream and offset.
pub fn pattern(seed: u32, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8)
        .collect()
}

/// Reads everything until the stream's end.
pub fn read_to_end(s: &mut UnixStream) -> Vec<u8> {
    let mut v = Vec::new();
    s.read_to_end(&mut v).unwrap();
    v
}
