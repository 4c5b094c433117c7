//! The tx queue: one packet from the guest at a time.

use vhost_backend::runtime::Request;

use super::{Bridge, Key};
use crate::conn::Phase;
use crate::packet::{
    op, Header, HEADER_LEN, HOST_CID, MAX_PAYLOAD, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};

impl Bridge {
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
        if opcode == op::RST && self.conns.contains_key(&key) {
            // Whatever its credit says, a reset ends the connection and is never answered
            // (virtio 1.2, 5.10.6.3).
            self.remove_conn(key);
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
            op::SHUTDOWN => {
                let flags = hdr.flags.get();
                if flags & SHUTDOWN_RCV != 0 && !conn.guest_shut_rcv {
                    // The host peer hears that its bytes are no longer taken (its writes
                    // fail with EPIPE) instead of filling its stream for nobody.
                    let _ = conn.stream.shutdown(std::net::Shutdown::Read);
                }
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
                // Sent with send(2) and MSG_NOSIGNAL as far as the stream takes it (a host
                // peer gone is EPIPE, never a SIGPIPE at the program embedding the device);
                // the rest (a full stream) waits in the connection.
                let data = &mut self.scratch[..len as usize];
                if req.read_readable(HEADER_LEN as u64, data).is_err() {
                    self.reset_conn(key);
                    return;
                }
                if let Err(e) = conn.push_guest_bytes(data) {
                    log::debug!("vsock: connection {key:?}: writing to the host: {e}");
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
    pub(super) fn after_change(&mut self, key: Key) {
        let Some(c) = self.conns.get(&key) else {
            return;
        };
        if c.finished() {
            self.reset_conn(key);
        } else {
            self.mark_ready(key);
        }
    }
}
