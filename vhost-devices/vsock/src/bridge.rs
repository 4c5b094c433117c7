//! The bridge between the guest's packets and the host's Unix streams: the connection
//! table, the tx queue's packets, what the rx queue owes the guest, and the host
//! descriptors' events.
//!
//! Every host descriptor (the listening socket, each handshake, each connection's stream,
//! the device's own wake-up eventfd) sits in one epoll set of the device's, whose descriptor
//! is the single extra descriptor the worker watches: connections come and go without the
//! worker's set changing. Streams are registered edge-triggered; the bridge remembers that
//! a stream is readable until a read says it is drained, so a stream the guest has no
//! credit for does not keep the worker awake.
//!
//! Nothing here blocks: host streams are non-blocking, bytes a host stream does not take
//! wait in the connection (bounded by the credit the device gave), and the rx queue serves
//! connections round-robin, one packet each per turn, so a slow or vanished host peer never
//! holds up the others.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::AsFd;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};

use vhost_backend::runtime::vm_memory::volatile_memory::Error as VolatileMemoryError;
use vhost_backend::runtime::vm_memory::{GuestAddress, GuestMemory, WriteVolatile};
use vhost_backend::runtime::{LogLimiter, Processed, QueueContext, Request};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use zerocopy::IntoBytes;

use crate::conn::{Conn, Phase};
use crate::host::{self, Handshake};
use crate::packet::{
    op, Header, HEADER_LEN, HOST_CID, MAX_PAYLOAD, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};

/// Most connections (and host handshakes in progress) at once; past it, guest requests are
/// reset and host connections closed.
pub const MAX_CONNECTIONS: usize = 1024;

/// Most connectionless replies (resets to stray packets) waiting for rx buffers; past it
/// they are dropped.
const MAX_CONTROL: usize = 1024;

/// First local port of host-initiated connections (as Firecracker numbers them).
const FIRST_LOCAL_PORT: u32 = 1 << 30;

/// How long a guest connection waits for a host listener whose backlog is full (the
/// connection is retried every [`CONNECT_RETRY`] meanwhile; the worker never blocks on it).
const CONNECT_WAIT: Duration = Duration::from_secs(2);
const CONNECT_RETRY: Duration = Duration::from_millis(1);

/// How long a host process's `CONNECT` waits for the guest's answer before its stream is
/// closed (and the guest's end, if the request reached it, reset).
pub const HOST_CONNECT_WAIT: Duration = Duration::from_secs(2);
/// How often connections waiting for the guest are checked.
const HOST_CONNECT_CHECK: Duration = Duration::from_millis(100);

const TOKEN_LISTENER: u64 = 0;
const TOKEN_NOTIFY: u64 = 1;
const TOKEN_RETRY: u64 = 2;
const FIRST_TOKEN: u64 = 3;

/// A connection's key: (guest port, host port).
type Key = (u32, u32);

/// A guest REQUEST whose host listener had a full backlog: tried again until `deadline`.
#[derive(Debug)]
struct PendingConnect {
    key: Key,
    hdr: Header,
    deadline: Instant,
}

/// What an epoll token stands for.
#[derive(Debug)]
enum Slot {
    /// A host process connected to the listening socket and has not sent its
    /// `CONNECT <port>` line yet.
    Handshake(UnixStream),
    /// A connection's stream.
    Conn(Key),
}

/// The next packet the rx queue owes a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Work {
    Request,
    Response,
    Data,
    CreditRequest,
    CreditUpdate,
    Shutdown,
}

fn next_work(c: &Conn) -> Option<Work> {
    if c.send_request {
        return Some(Work::Request);
    }
    if c.send_response {
        return Some(Work::Response);
    }
    let wants_data =
        c.phase == Phase::Established && c.host_readable && !c.host_eof && !c.guest_shut_rcv;
    if wants_data && c.credit() > 0 {
        return Some(Work::Data);
    }
    if wants_data && !c.credit_requested {
        return Some(Work::CreditRequest);
    }
    if c.credit_update && !c.guest_shut_send {
        return Some(Work::CreditUpdate);
    }
    if c.eof_to_send {
        return Some(Work::Shutdown);
    }
    None
}

/// See the [module docs](self).
pub(crate) struct Bridge {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    notify: EventFd,
    retry_timer: TimerFd,
    /// Guest connections waiting for a host listener's backlog to have room.
    connecting: Vec<PendingConnect>,
    /// Host connections waiting for the guest's answer (an upper bound: answered ones are
    /// counted off at the next timer tick).
    host_waiting: usize,
    conns: HashMap<Key, Conn>,
    slots: HashMap<u64, Slot>,
    /// Connections that may owe the guest a packet, in turn order.
    ready: VecDeque<Key>,
    /// Connectionless packets for the guest (resets), served before connections.
    control: VecDeque<Header>,
    next_token: u64,
    next_port: u32,
    /// Something was queued for the rx queue since it was last served.
    rx_new: bool,
    /// The event queue owes the guest a transport reset.
    pub event_reset: bool,
    scratch: Vec<u8>,
    log: LogLimiter,
}

impl Bridge {
    /// A bridge for guest `guest_cid` whose host side listens on `listener` (made
    /// non-blocking here) and connects out to `<uds_path>_<port>`.
    pub fn new(guest_cid: u64, uds_path: PathBuf, listener: UnixListener) -> io::Result<Bridge> {
        listener.set_nonblocking(true)?;
        let epoll = Epoll::new()?;
        let notify = EventFd::new(EFD_NONBLOCK)?;
        let retry_timer = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )?;
        epoll.ctl(
            ControlOperation::Add,
            retry_timer.as_fd().as_raw_fd(),
            EpollEvent::new(EventSet::IN, TOKEN_RETRY),
        )?;
        epoll.ctl(
            ControlOperation::Add,
            listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TOKEN_LISTENER),
        )?;
        epoll.ctl(
            ControlOperation::Add,
            notify.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TOKEN_NOTIFY),
        )?;
        Ok(Bridge {
            guest_cid,
            uds_path,
            listener,
            epoll,
            notify,
            retry_timer,
            connecting: Vec::new(),
            host_waiting: 0,
            conns: HashMap::new(),
            slots: HashMap::new(),
            ready: VecDeque::new(),
            control: VecDeque::new(),
            next_token: FIRST_TOKEN,
            next_port: FIRST_LOCAL_PORT,
            rx_new: false,
            event_reset: true,
            scratch: vec![0; MAX_PAYLOAD as usize],
            log: LogLimiter::new("vsock packets dropped"),
        })
    }

    /// The epoll set the worker watches.
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Number of live connections.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Back to the power-on state: every connection and handshake is closed, and the guest
    /// is told of the transport reset when its event queue is next served.
    pub fn reset(&mut self) {
        self.conns.clear();
        self.slots.clear();
        self.connecting.clear();
        self.host_waiting = 0;
        let _ = self.retry_timer.unset();
        self.ready.clear();
        self.control.clear();
        self.rx_new = false;
        self.event_reset = true;
        let _ = self.notify.read();
    }

    /// Whether packets were queued for the guest since the rx queue was last served (and
    /// forgets it).
    pub fn take_rx_new(&mut self) -> bool {
        std::mem::take(&mut self.rx_new)
    }

    /// Wakes the worker through the device's epoll set (rx work was queued outside an
    /// event of its own).
    pub fn wake(&self) {
        if let Err(e) = self.notify.write(1) {
            log::warn!("vsock: waking the worker: {e}");
        }
    }

    fn drop_packet(&self, why: std::fmt::Arguments<'_>) {
        self.log.log(log::Level::Debug, why);
    }

    fn queue_control(&mut self, hdr: Header) {
        if self.control.len() >= MAX_CONTROL {
            self.drop_packet(format_args!(
                "vsock: control queue full, a reset is dropped"
            ));
            return;
        }
        self.control.push_back(hdr);
        self.rx_new = true;
    }

    fn reply_rst(&mut self, to: &Header) {
        if let Some(r) = to.reset_reply() {
            self.queue_control(r);
        }
    }

    /// Closes a connection and tells the guest with a reset.
    fn reset_conn(&mut self, key: Key) {
        if self.remove_conn(key) {
            let hdr = Header::to_guest(self.guest_cid, key.1, key.0, op::RST);
            self.queue_control(hdr);
        }
    }

    /// Closes a connection without telling the guest. Whether it existed.
    fn remove_conn(&mut self, key: Key) -> bool {
        match self.conns.remove(&key) {
            Some(c) => {
                self.slots
                    .retain(|_, s| !matches!(s, Slot::Conn(k) if *k == key));
                drop(c);
                true
            }
            None => false,
        }
    }

    /// Queues a connection for the rx queue if it owes the guest a packet.
    fn mark_ready(&mut self, key: Key) {
        if let Some(c) = self.conns.get_mut(&key) {
            if !c.queued && next_work(c).is_some() {
                c.queued = true;
                self.ready.push_back(key);
                self.rx_new = true;
            }
        }
    }

    fn register(&mut self, fd: RawFd, events: EventSet) -> io::Result<u64> {
        let token = self.next_token;
        self.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(events | EventSet::EDGE_TRIGGERED, token),
        )?;
        self.next_token += 1;
        Ok(token)
    }

    fn stream_events() -> EventSet {
        EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP
    }

    // ---- tx queue -------------------------------------------------------------------------

    /// One packet the guest sent. The caller completes the request.
    pub fn handle_tx(&mut self, req: &Request) {
        if req.readable_len() < HEADER_LEN as u64 {
            self.drop_packet(format_args!(
                "vsock: tx chain of {} readable bytes, shorter than a header",
                req.readable_len()
            ));
            return;
        }
        let hdr: Header = match req.read_obj(0) {
            Ok(h) => h,
            Err(e) => {
                self.drop_packet(format_args!("vsock: reading a tx header: {e}"));
                return;
            }
        };
        let opcode = hdr.op.get();
        if hdr.src_cid.get() != self.guest_cid {
            // Not from this guest: nobody to answer.
            self.drop_packet(format_args!(
                "vsock: packet from CID {} (the guest is {})",
                hdr.src_cid.get(),
                self.guest_cid
            ));
            return;
        }
        if hdr.dst_cid.get() != HOST_CID || hdr.type_.get() != TYPE_STREAM {
            self.reply_rst(&hdr);
            return;
        }
        let key = (hdr.src_port.get(), hdr.dst_port.get());
        let len = hdr.len.get();
        if opcode == op::RW
            && (len > MAX_PAYLOAD || u64::from(len) > req.readable_len() - HEADER_LEN as u64)
        {
            self.drop_packet(format_args!(
                "vsock: RW of {len} bytes in a chain of {} readable bytes",
                req.readable_len()
            ));
            if self.conns.contains_key(&key) {
                self.reset_conn(key);
            } else {
                self.reply_rst(&hdr);
            }
            return;
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            let waiting = self.connecting.iter().position(|p| p.key == key);
            match (opcode, waiting) {
                (op::REQUEST, _) => self.connect_to_host(key, &hdr),
                (op::RST, Some(i)) => {
                    self.connecting.swap_remove(i);
                }
                (op::RST, None) => {}
                (_, Some(i)) => {
                    self.connecting.swap_remove(i);
                    self.reply_rst(&hdr);
                }
                (_, None) => self.reply_rst(&hdr),
            }
            return;
        };
        if conn
            .update_peer(hdr.buf_alloc.get(), hdr.fwd_cnt.get())
            .is_err()
        {
            self.drop_packet(format_args!(
                "vsock: connection {key:?}: the guest claims to have consumed bytes never sent"
            ));
            self.reset_conn(key);
            return;
        }
        match opcode {
            op::RESPONSE if conn.phase == Phase::Connecting && !conn.send_request => {
                conn.phase = Phase::Established;
                let line = format!("OK {}\n", conn.host_port);
                if conn.preamble(line.as_bytes()).is_err() {
                    self.reset_conn(key);
                    return;
                }
            }
            op::RST => {
                self.remove_conn(key);
                return;
            }
            op::SHUTDOWN => {
                let flags = hdr.flags.get();
                conn.guest_shut_rcv |= flags & SHUTDOWN_RCV != 0;
                conn.guest_shut_send |= flags & SHUTDOWN_SEND != 0;
                if conn.flush().is_err() {
                    self.reset_conn(key);
                    return;
                }
            }
            op::RW if conn.phase == Phase::Established && !conn.guest_shut_send => {
                if !conn.has_room(len) {
                    self.drop_packet(format_args!(
                        "vsock: connection {key:?}: {len} bytes beyond the credit given"
                    ));
                    self.reset_conn(key);
                    return;
                }
                // Straight from guest memory while the stream takes it; the rest (a full
                // stream) is copied and waits in the connection.
                let sent = if conn.has_pending() {
                    Ok(0)
                } else {
                    send_direct(req, &mut conn.stream, len)
                };
                let direct = match sent {
                    Ok(n) => n,
                    Err(e) => {
                        log::debug!("vsock: connection {key:?}: writing to the host: {e}");
                        self.reset_conn(key);
                        return;
                    }
                };
                let data = &mut self.scratch[..(len - direct) as usize];
                let copied = req.read_readable(HEADER_LEN as u64 + u64::from(direct), data);
                if copied.is_err() || conn.push_guest_bytes(direct, data).is_err() {
                    self.reset_conn(key);
                    return;
                }
                if conn.credit_update_due() {
                    conn.credit_update = true;
                }
            }
            op::CREDIT_UPDATE => {}
            op::CREDIT_REQUEST => conn.credit_update = true,
            // A second REQUEST for a live connection, a RESPONSE nobody asked for, data
            // before the connection is up or after the guest said it sends no more, an
            // unknown operation: the connection is reset (virtio 1.2, 5.10.6.3).
            _ => {
                self.drop_packet(format_args!(
                    "vsock: connection {key:?}: unexpected op {opcode}"
                ));
                self.reset_conn(key);
                return;
            }
        }
        self.after_change(key);
    }

    /// Ends a connection whose both directions are done, or queues what it owes the guest.
    fn after_change(&mut self, key: Key) {
        let Some(c) = self.conns.get(&key) else {
            return;
        };
        if c.finished() {
            self.reset_conn(key);
        } else {
            self.mark_ready(key);
        }
    }

    /// A guest REQUEST to host port `key.1`: connects to `<uds-path>_<port>`. A listener
    /// whose backlog is full is tried again for up to [`CONNECT_WAIT`].
    fn connect_to_host(&mut self, key: Key, hdr: &Header) {
        // `slots` holds every connection and every handshake in progress.
        if self.slots.len() + self.connecting.len() >= MAX_CONNECTIONS {
            self.reply_rst(hdr);
            return;
        }
        if let Some(i) = self.connecting.iter().position(|p| p.key == key) {
            // A second REQUEST while the first waits: both are refused.
            self.connecting.swap_remove(i);
            self.reply_rst(hdr);
            return;
        }
        let path = host::port_path(&self.uds_path, key.1);
        match host::connect_nonblocking(&path) {
            Ok(stream) => self.establish(key, hdr, stream),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.connecting.push(PendingConnect {
                    key,
                    hdr: *hdr,
                    deadline: Instant::now() + CONNECT_WAIT,
                });
                self.arm_retry();
            }
            Err(e) => {
                log::debug!("vsock: guest port {} to {}: {e}", key.0, path.display());
                self.reply_rst(hdr);
            }
        }
    }

    /// Arms the timer for the next look at waiting connections: soon while guest
    /// connections wait for a host backlog, less often while host ones wait for the guest.
    fn arm_retry(&self) {
        let wait = if !self.connecting.is_empty() {
            CONNECT_RETRY
        } else if self.host_waiting > 0 {
            HOST_CONNECT_CHECK
        } else {
            return;
        };
        let when = Expiration::OneShot(TimeSpec::from_duration(wait));
        if let Err(e) = self.retry_timer.set(when, TimerSetTimeFlags::empty()) {
            log::warn!("vsock: arming the connect retry timer: {e}");
        }
    }

    /// Tries the waiting guest connections again, and gives up on host connections the
    /// guest has not answered in time.
    fn on_timer(&mut self) {
        let mut count = [0u8; 8];
        let _ = nix::unistd::read(&self.retry_timer, &mut count);
        let now = Instant::now();
        if self.host_waiting > 0 {
            let late: Vec<Key> = self
                .conns
                .iter()
                .filter(|(_, c)| c.phase == Phase::Connecting && c.deadline <= now)
                .map(|(k, _)| *k)
                .collect();
            for key in late {
                log::debug!(
                    "vsock: guest port {} did not answer a host connection",
                    key.0
                );
                self.reset_conn(key);
            }
            self.host_waiting = self
                .conns
                .values()
                .filter(|c| c.phase == Phase::Connecting)
                .count();
        }
        for p in std::mem::take(&mut self.connecting) {
            let path = host::port_path(&self.uds_path, p.key.1);
            match host::connect_nonblocking(&path) {
                Ok(stream) => self.establish(p.key, &p.hdr, stream),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && now < p.deadline => {
                    self.connecting.push(p)
                }
                Err(e) => {
                    log::debug!("vsock: guest port {} to {}: {e}", p.key.0, path.display());
                    self.reply_rst(&p.hdr);
                }
            }
        }
        self.arm_retry();
    }

    /// A guest connection whose host stream is connected: answered with RESPONSE.
    fn establish(&mut self, key: Key, hdr: &Header, stream: UnixStream) {
        let mut conn = Conn::new(stream, Phase::Established, key.1);
        if conn
            .update_peer(hdr.buf_alloc.get(), hdr.fwd_cnt.get())
            .is_err()
        {
            self.reply_rst(hdr);
            return;
        }
        let token = match self.register(conn.stream.as_raw_fd(), Self::stream_events()) {
            Ok(t) => t,
            Err(e) => {
                log::warn!("vsock: watching a host stream: {e}");
                self.reply_rst(hdr);
                return;
            }
        };
        conn.send_response = true;
        self.slots.insert(token, Slot::Conn(key));
        self.conns.insert(key, conn);
        self.mark_ready(key);
    }

    // ---- rx queue -------------------------------------------------------------------------

    /// Serves what the guest is owed into the rx queue's buffers. `Paused` when nothing is
    /// owed (buffers stay in the ring), `Drained` when the ring ran out first.
    pub fn fill_rx(&mut self, ctx: &mut QueueContext<'_>) -> Processed {
        let mut spare: Option<Request> = None;
        let outcome = loop {
            if !self.control.is_empty() {
                let Some(req) = take_buffer(&mut spare, ctx, &self.log) else {
                    break Processed::Drained;
                };
                if let Some(hdr) = self.control.pop_front() {
                    write_packet(req, &hdr, &[]);
                }
                continue;
            }
            let Some(key) = self.ready.pop_front() else {
                break Processed::Paused;
            };
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            conn.queued = false;
            let Some(work) = next_work(conn) else {
                continue;
            };
            let Some(req) = take_buffer(&mut spare, ctx, &self.log) else {
                conn.queued = true;
                self.ready.push_front(key);
                break Processed::Drained;
            };
            spare = self.serve(key, work, req);
            if self.conns.contains_key(&key) {
                self.after_change(key);
            }
        };
        if let Some(req) = spare {
            // A buffer taken for data that was gone by the time it was read (rare: the
            // previous read filled its buffer exactly). The driver gets it back empty.
            req.complete(0);
        }
        self.rx_new = false;
        outcome
    }

    /// Writes one packet of `work` for connection `key` into `req`. Returns the request
    /// when nothing was written into it.
    fn serve(&mut self, key: Key, work: Work, req: Request) -> Option<Request> {
        let cid = self.guest_cid;
        let conn = self.conns.get_mut(&key)?;
        let packet = |conn: &mut Conn, op: u16| {
            let mut h = Header::to_guest(cid, key.1, key.0, op);
            conn.stamp(&mut h);
            h
        };
        match work {
            Work::Request => {
                conn.send_request = false;
                write_packet(req, &packet(conn, op::REQUEST), &[]);
            }
            Work::Response => {
                conn.send_response = false;
                write_packet(req, &packet(conn, op::RESPONSE), &[]);
            }
            Work::CreditRequest => {
                conn.credit_requested = true;
                write_packet(req, &packet(conn, op::CREDIT_REQUEST), &[]);
            }
            Work::CreditUpdate => {
                conn.credit_update = false;
                write_packet(req, &packet(conn, op::CREDIT_UPDATE), &[]);
            }
            Work::Shutdown => {
                conn.eof_to_send = false;
                let mut h = packet(conn, op::SHUTDOWN);
                h.flags = SHUTDOWN_SEND.into();
                write_packet(req, &h, &[]);
            }
            Work::Data => {
                let room = (req.writable_len() - HEADER_LEN as u64)
                    .min(u64::from(MAX_PAYLOAD))
                    .min(u64::from(conn.credit())) as usize;
                let buf = &mut self.scratch[..room];
                match conn.read_host(buf) {
                    Ok(None) => {
                        conn.host_readable = false;
                        return Some(req);
                    }
                    Ok(Some(0)) => {
                        conn.host_eof = true;
                        conn.eof_to_send = true;
                        return Some(req);
                    }
                    Ok(Some(n)) => {
                        if n < room && !conn.host_hup {
                            // A short read drained the stream; new bytes raise a new edge
                            // (the end of the stream raised its own already, if it came).
                            conn.host_readable = false;
                        }
                        let mut h = packet(conn, op::RW);
                        h.len = (n as u32).into();
                        conn.sent_to_guest(n as u32);
                        if !write_packet(req, &h, &self.scratch[..n]) {
                            // The bytes are lost: the stream cannot go on.
                            self.reset_conn(key);
                        }
                    }
                    Err(e) => {
                        log::debug!("vsock: connection {key:?}: reading the host: {e}");
                        self.reset_conn(key);
                        return Some(req);
                    }
                }
            }
        }
        None
    }

    // ---- host events ----------------------------------------------------------------------

    /// Handles what the device's epoll set reports. Returns whether the rx queue has new
    /// packets to serve.
    pub fn handle_events(&mut self) -> io::Result<bool> {
        let mut events = [EpollEvent::default(); 64];
        let n = loop {
            match self.epoll.wait(0, &mut events) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        };
        for ev in &events[..n] {
            match ev.data() {
                TOKEN_LISTENER => self.accept_all(),
                TOKEN_RETRY => self.on_timer(),
                TOKEN_NOTIFY => {
                    let _ = self.notify.read();
                    self.rx_new = true;
                }
                token => match self.slots.get(&token) {
                    Some(Slot::Handshake(_)) => self.handshake(token),
                    Some(Slot::Conn(key)) => {
                        let key = *key;
                        self.stream_event(key, ev.event_set());
                    }
                    // Closed since the event was queued.
                    None => {}
                },
            }
        }
        Ok(self.rx_new)
    }

    fn accept_all(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and the like: the connection stays in the backlog.
                    log::warn!("vsock: accepting a host connection: {e}");
                    return;
                }
            };
            if self.slots.len() >= MAX_CONNECTIONS {
                log::warn!("vsock: {MAX_CONNECTIONS} connections open, a host one is refused");
                continue;
            }
            if let Err(e) = stream.set_nonblocking(true) {
                log::warn!("vsock: host connection: {e}");
                continue;
            }
            match self.register(stream.as_raw_fd(), EventSet::IN | EventSet::READ_HANG_UP) {
                Ok(token) => {
                    self.slots.insert(token, Slot::Handshake(stream));
                }
                Err(e) => log::warn!("vsock: watching a host connection: {e}"),
            }
        }
    }

    /// A host process on the listening socket sent something: its `CONNECT <port>` line.
    fn handshake(&mut self, token: u64) {
        let Some(Slot::Handshake(stream)) = self.slots.get(&token) else {
            return;
        };
        let bytes = match host::peek_line(stream) {
            Ok(None) => return,
            Ok(Some(b)) if b.is_empty() => {
                self.slots.remove(&token);
                return;
            }
            Ok(Some(b)) => b,
            Err(e) => {
                log::debug!("vsock: host handshake: {e}");
                self.slots.remove(&token);
                return;
            }
        };
        let (port, consumed) = match host::parse_handshake(&bytes) {
            Handshake::Incomplete => return,
            Handshake::Invalid => {
                log::debug!(
                    "vsock: host handshake {:?} refused",
                    String::from_utf8_lossy(&bytes)
                );
                self.slots.remove(&token);
                return;
            }
            Handshake::Connect { port, consumed } => (port, consumed),
        };
        let Some(Slot::Handshake(mut stream)) = self.slots.remove(&token) else {
            return;
        };
        // The line was peeked: it is there to be read whole.
        let mut line = vec![0u8; consumed];
        if io::Read::read_exact(&mut stream, &mut line).is_err() {
            return;
        }
        let Some(local) = self.local_port(port) else {
            log::warn!("vsock: no free local port for a host connection to guest port {port}");
            return;
        };
        let key = (port, local);
        let mut conn = Conn::new(stream, Phase::Connecting, local);
        conn.deadline = Instant::now() + HOST_CONNECT_WAIT;
        conn.send_request = true;
        // Bytes sent after the line are read once the guest accepts.
        conn.host_readable = true;
        self.slots.insert(token, Slot::Conn(key));
        self.conns.insert(key, conn);
        // The stream is registered for reading only; writes need to hear of room too.
        let fd = self.conns[&key].stream.as_raw_fd();
        if let Err(e) = self.epoll.ctl(
            ControlOperation::Modify,
            fd,
            EpollEvent::new(Self::stream_events() | EventSet::EDGE_TRIGGERED, token),
        ) {
            log::warn!("vsock: watching a host stream: {e}");
            self.remove_conn(key);
            return;
        }
        self.mark_ready(key);
        self.host_waiting += 1;
        if self.host_waiting == 1 && self.connecting.is_empty() {
            self.arm_retry();
        }
    }

    /// A local port for a host-initiated connection to guest port `guest_port`.
    fn local_port(&mut self, guest_port: u32) -> Option<u32> {
        for _ in 0..=MAX_CONNECTIONS {
            let p = self.next_port;
            self.next_port = self
                .next_port
                .checked_add(1)
                .filter(|&p| p != u32::MAX)
                .unwrap_or(FIRST_LOCAL_PORT);
            if !self.conns.contains_key(&(guest_port, p)) {
                return Some(p);
            }
        }
        None
    }

    fn stream_event(&mut self, key: Key, set: EventSet) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let broken = set.intersects(EventSet::HANG_UP | EventSet::ERROR);
        if broken || set.contains(EventSet::READ_HANG_UP) {
            conn.host_hup = true;
        }
        if broken || set.intersects(EventSet::IN | EventSet::READ_HANG_UP) {
            conn.host_readable = true;
        }
        let writable = broken || set.contains(EventSet::OUT);
        if writable && (conn.has_pending() || conn.guest_shut_send) {
            if let Err(e) = conn.flush() {
                log::debug!("vsock: connection {key:?}: writing to the host: {e}");
                self.reset_conn(key);
                return;
            }
            if conn.credit_update_due() {
                conn.credit_update = true;
            }
        }
        self.after_change(key);
    }
}

/// Writes the `len` payload bytes of a tx packet from guest memory to `stream` (whose
/// pending bytes, if any, went first), as far as it takes them now. Returns how many it took.
/// Nothing is written from a connection with pending bytes: the caller checks.
fn send_direct(req: &Request, stream: &mut UnixStream, len: u32) -> io::Result<u32> {
    let mut skip = HEADER_LEN as u64;
    let mut left = u64::from(len);
    let mut taken = 0u32;
    for b in req.readable() {
        if left == 0 {
            break;
        }
        let blen = u64::from(b.len);
        if skip >= blen {
            skip -= blen;
            continue;
        }
        let n = (blen - skip).min(left);
        let Some(addr) = b.addr.0.checked_add(skip) else {
            break;
        };
        skip = 0;
        // A buffer across memory regions, or outside guest memory, goes the copying way
        // (which reports the latter).
        let Ok(slice) = req.memory().get_slice(GuestAddress(addr), n as usize) else {
            break;
        };
        // write(2): a host peer gone gives EPIPE (Rust programs ignore SIGPIPE).
        let w = loop {
            match stream.write_volatile(&slice) {
                Ok(w) => break w,
                Err(VolatileMemoryError::IOError(e)) => match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => return Ok(taken),
                    _ => return Err(e),
                },
                Err(e) => return Err(io::Error::other(e)),
            }
        };
        taken += w as u32;
        left -= w as u64;
        if (w as u64) < n {
            break;
        }
    }
    Ok(taken)
}

/// The next rx buffer: the spare one if there is one, else one popped; buffers too small
/// for a header go back empty.
fn take_buffer(
    spare: &mut Option<Request>,
    ctx: &mut QueueContext<'_>,
    log: &LogLimiter,
) -> Option<Request> {
    if let Some(r) = spare.take() {
        return Some(r);
    }
    loop {
        let req = ctx.pop()?;
        // A packet needs its header and, for data, at least one byte more.
        if req.writable_len() > HEADER_LEN as u64 && req.fault().is_none() {
            return Some(req);
        }
        log.log(
            log::Level::Debug,
            format_args!(
                "vsock: rx buffer of {} writable bytes{} returned empty",
                req.writable_len(),
                req.fault().map(|f| format!(" ({f})")).unwrap_or_default()
            ),
        );
        req.complete(0);
    }
}

/// Writes a packet into an rx buffer and completes it. Whether it got there.
fn write_packet(req: Request, hdr: &Header, payload: &[u8]) -> bool {
    let ok = req.write_writable(0, hdr.as_bytes()).is_ok()
        && req.write_writable(HEADER_LEN as u64, payload).is_ok();
    if ok {
        req.complete((HEADER_LEN + payload.len()) as u32);
    } else {
        req.complete(0);
    }
    ok
}
