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

mod events;
mod rx;
mod tx;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::timerfd::{ClockId, TimerFd, TimerFlags};
use vhost_backend::runtime::LogLimiter;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::conn::{Conn, Phase};
use crate::packet::{op, Header, MAX_PAYLOAD};

/// Most connections at once; past it, guest requests are reset and host connections
/// closed.
pub const MAX_CONNECTIONS: usize = 1024;

/// Most host handshakes in progress at once (host processes connected to the listening
/// socket that have not sent their whole `CONNECT` line); past it, new host connections are
/// closed at once. Kept apart from [`MAX_CONNECTIONS`], so host processes that connect and
/// say nothing never lock the guest out.
pub const MAX_HANDSHAKES: usize = 64;

/// How long a host process has to send its `CONNECT <port>` line before its stream is
/// closed.
pub const HOST_HANDSHAKE_WAIT: Duration = Duration::from_secs(2);

/// How long the listening socket rests after an accept failed for want of descriptors or
/// memory (the connection stays in the backlog) before it is tried again.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

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
    /// `CONNECT <port>` line yet; it has until the instant given.
    Handshake(UnixStream, Instant),
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
    /// `Slot::Handshake` entries in `slots`.
    handshakes: usize,
    /// The listening socket is out of the epoll set after an accept failed (EMFILE and the
    /// like) and goes back in at the next timer tick.
    listener_paused: bool,
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
    /// Host connections refused or failed on the listening socket.
    accept_log: LogLimiter,
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
            handshakes: 0,
            listener_paused: false,
            ready: VecDeque::new(),
            control: VecDeque::new(),
            next_token: FIRST_TOKEN,
            next_port: FIRST_LOCAL_PORT,
            rx_new: false,
            event_reset: true,
            scratch: vec![0; MAX_PAYLOAD as usize],
            log: LogLimiter::new("vsock packets dropped"),
            accept_log: LogLimiter::new("vsock host connections refused"),
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

    /// Entries in the ready list.
    pub fn ready_len(&self) -> usize {
        self.ready.len()
    }

    /// Host handshakes in progress.
    pub fn handshakes(&self) -> usize {
        self.handshakes
    }

    /// Back to the power-on state: every connection and handshake is closed, and the guest
    /// is told of the transport reset when its event queue is next served.
    pub fn reset(&mut self) {
        self.conns.clear();
        self.slots.clear();
        self.handshakes = 0;
        self.resume_listener();
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
                // A connection opened later under the same key starts outside the list.
                if c.queued {
                    self.ready.retain(|k| *k != key);
                }
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
}
