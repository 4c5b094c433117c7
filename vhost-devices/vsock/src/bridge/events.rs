//! The host side: the device's epoll set (listening socket, handshakes, streams, the
//! wake-up eventfd, the timer) and connections made or waited for.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{Expiration, TimerSetTimeFlags};
use vmm_sys_util::epoll::{ControlOperation, EpollEvent, EventSet};

use super::{
    Bridge, Key, PendingConnect, Slot, ACCEPT_RETRY, CONNECT_RETRY, CONNECT_WAIT, FIRST_LOCAL_PORT,
    HOST_CONNECT_CHECK, HOST_CONNECT_WAIT, HOST_HANDSHAKE_WAIT, MAX_CONNECTIONS, MAX_HANDSHAKES,
    TOKEN_LISTENER, TOKEN_NOTIFY, TOKEN_RETRY,
};
use crate::conn::{Conn, Phase};
use crate::host::{self, Handshake};
use crate::packet::Header;

impl Bridge {
    /// A guest REQUEST to host port `key.1`: connects to `<uds-path>_<port>`. A listener
    /// whose backlog is full is tried again for up to [`CONNECT_WAIT`].
    pub(super) fn connect_to_host(&mut self, key: Key, hdr: &Header) {
        if self.conns.len() + self.connecting.len() >= MAX_CONNECTIONS {
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
    /// connections wait for a host backlog, less often while host ones wait for the guest
    /// or for their handshake, or the listening socket rests.
    pub(super) fn arm_retry(&self) {
        let wait = if !self.connecting.is_empty() {
            CONNECT_RETRY
        } else if self.host_waiting > 0 || self.handshakes > 0 {
            HOST_CONNECT_CHECK
        } else if self.listener_paused {
            ACCEPT_RETRY
        } else {
            return;
        };
        let when = Expiration::OneShot(TimeSpec::from_duration(wait));
        if let Err(e) = self.retry_timer.set(when, TimerSetTimeFlags::empty()) {
            log::warn!("vsock: arming the connect retry timer: {e}");
        }
    }

    /// Tries the waiting guest connections again, gives up on host connections the guest
    /// has not answered in time and on host handshakes not sent in time, and puts a resting
    /// listening socket back.
    pub(super) fn on_timer(&mut self) {
        let mut count = [0u8; 8];
        let _ = nix::unistd::read(&self.retry_timer, &mut count);
        let now = Instant::now();
        self.resume_listener();
        if self.handshakes > 0 {
            let before = self.slots.len();
            self.slots
                .retain(|_, s| !matches!(s, Slot::Handshake(_, deadline) if *deadline <= now));
            let late = before - self.slots.len();
            if late > 0 {
                log::debug!("vsock: {late} host handshakes not sent in time, closed");
                self.handshakes -= late;
            }
        }
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
    pub(super) fn establish(&mut self, key: Key, hdr: &Header, stream: UnixStream) {
        if self.conns.contains_key(&key) {
            // A host-initiated connection took the key while this one waited.
            self.reply_rst(hdr);
            return;
        }
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
                    Some(Slot::Handshake(..)) => self.handshake(token, ev.event_set()),
                    Some(Slot::Conn(key)) => {
                        let key = *key;
                        self.stream_event(key, ev.event_set());
                    }
                    // Closed since the event was queued.
                    None => {}
                },
            }
        }
        // Taken: the worker serves the rx queue now if it runs, and a queue that does not
        // run is served when it starts, so nothing is owed to a later wake-up.
        Ok(std::mem::take(&mut self.rx_new))
    }

    /// Takes the listening socket out of the epoll set until the next timer tick (its
    /// connections stay in the backlog).
    fn pause_listener(&mut self) {
        if self.listener_paused {
            return;
        }
        match self.epoll.ctl(
            ControlOperation::Delete,
            self.listener.as_raw_fd(),
            EpollEvent::default(),
        ) {
            Ok(()) => {
                self.listener_paused = true;
                self.arm_retry();
            }
            Err(e) => log::warn!("vsock: pausing the listening socket: {e}"),
        }
    }

    /// Puts a paused listening socket back into the epoll set.
    pub(super) fn resume_listener(&mut self) {
        if !self.listener_paused {
            return;
        }
        match self.epoll.ctl(
            ControlOperation::Add,
            self.listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TOKEN_LISTENER),
        ) {
            Ok(()) => self.listener_paused = false,
            Err(e) => {
                log::warn!("vsock: watching the listening socket again: {e}");
                self.arm_retry();
            }
        }
    }

    pub(super) fn accept_all(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and the like: the connection stays in the backlog, and the
                    // level-triggered listener would report it again at once; it rests.
                    self.accept_log.log(
                        log::Level::Warn,
                        format_args!("vsock: accepting a host connection: {e}"),
                    );
                    self.pause_listener();
                    return;
                }
            };
            if self.handshakes >= MAX_HANDSHAKES {
                self.accept_log.log(
                    log::Level::Warn,
                    format_args!(
                        "vsock: {MAX_HANDSHAKES} host handshakes in progress, a host connection is refused"
                    ),
                );
                continue;
            }
            if let Err(e) = stream.set_nonblocking(true) {
                log::warn!("vsock: host connection: {e}");
                continue;
            }
            match self.register(stream.as_raw_fd(), EventSet::IN | EventSet::READ_HANG_UP) {
                Ok(token) => {
                    let deadline = Instant::now() + HOST_HANDSHAKE_WAIT;
                    self.slots.insert(token, Slot::Handshake(stream, deadline));
                    self.handshakes += 1;
                    if self.handshakes == 1 {
                        self.arm_retry();
                    }
                }
                Err(e) => log::warn!("vsock: watching a host connection: {e}"),
            }
        }
    }

    /// Closes the handshake of `token`.
    fn drop_handshake(&mut self, token: u64) -> Option<UnixStream> {
        match self.slots.remove(&token) {
            Some(Slot::Handshake(stream, _)) => {
                self.handshakes -= 1;
                Some(stream)
            }
            Some(other) => {
                self.slots.insert(token, other);
                None
            }
            None => None,
        }
    }

    /// A host process on the listening socket sent something (its `CONNECT <port>` line)
    /// or went away (`set`).
    pub(super) fn handshake(&mut self, token: u64, set: EventSet) {
        let Some(Slot::Handshake(stream, _)) = self.slots.get(&token) else {
            return;
        };
        let bytes = match host::peek_line(stream) {
            Ok(None) => return,
            Ok(Some(b)) if b.is_empty() => {
                self.drop_handshake(token);
                return;
            }
            Ok(Some(b)) => b,
            Err(e) => {
                log::debug!("vsock: host handshake: {e}");
                self.drop_handshake(token);
                return;
            }
        };
        let (port, consumed) = match host::parse_handshake(&bytes) {
            Handshake::Incomplete => {
                // The rest of the line can no longer come.
                let gone = EventSet::READ_HANG_UP | EventSet::HANG_UP | EventSet::ERROR;
                if set.intersects(gone) {
                    log::debug!("vsock: host stream ended within its handshake");
                    self.drop_handshake(token);
                }
                return;
            }
            Handshake::Invalid => {
                log::debug!(
                    "vsock: host handshake {:?} refused",
                    String::from_utf8_lossy(&bytes)
                );
                self.drop_handshake(token);
                return;
            }
            Handshake::Connect { port, consumed } => (port, consumed),
        };
        let Some(mut stream) = self.drop_handshake(token) else {
            return;
        };
        // The line was peeked: it is there to be read whole.
        let mut line = vec![0u8; consumed];
        if io::Read::read_exact(&mut stream, &mut line).is_err() {
            return;
        }
        if self.conns.len() + self.connecting.len() >= MAX_CONNECTIONS {
            self.accept_log.log(
                log::Level::Warn,
                format_args!("vsock: {MAX_CONNECTIONS} connections open, a host one is refused"),
            );
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
    pub(super) fn local_port(&mut self, guest_port: u32) -> Option<u32> {
        for _ in 0..=MAX_CONNECTIONS {
            let p = self.next_port;
            self.next_port = self
                .next_port
                .checked_add(1)
                .filter(|&p| p != u32::MAX)
                .unwrap_or(FIRST_LOCAL_PORT);
            let key = (guest_port, p);
            if !self.conns.contains_key(&key) && !self.connecting.iter().any(|c| c.key == key) {
                return Some(p);
            }
        }
        None
    }

    pub(super) fn stream_event(&mut self, key: Key, set: EventSet) {
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
