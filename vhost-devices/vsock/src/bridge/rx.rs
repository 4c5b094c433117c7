//! The rx queue: what the guest is owed, written into its buffers.

use vhost_backend::runtime::{LogLimiter, Processed, QueueContext, Request};
use zerocopy::IntoBytes;

use super::{next_work, Bridge, Key, Work};
use crate::conn::Conn;
use crate::packet::{op, Header, HEADER_LEN, MAX_PAYLOAD, SHUTDOWN_SEND};

impl Bridge {
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
    pub(super) fn serve(&mut self, key: Key, work: Work, req: Request) -> Option<Request> {
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
                        if n < room && !conn.host_hup && conn.host_drained() {
                            // The stream is drained; new bytes raise a new edge (the end of
                            // the stream raised its own already, if it came).
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
