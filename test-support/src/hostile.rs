//! The hostile front-end suite: one misbehaving front-end per case against a device's
//! daemon, run for every device by [`hostile_suite!`](crate::hostile_suite).
//!
//! Each case starts a [`Target`], plays its front-end, and checks the answer the server's
//! error policy gives (an ack of 1 or the request's failure form and the session goes on,
//! or the connection closed), then [`Target::assert_serves_again`] (the daemon still runs
//! and a new front-end completes the handshake and a request) and [`Target::finish`] (what
//! the target checks once the daemon stops, e.g. that no descriptor leaked).

use std::ffi::OsString;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::eventfd::EventFd;
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use vhost_frontend::{Frontend, GuestMemory};
use vhost_proto::{FrontendReq, FrontendRequest, Header, HeaderFlags, ProtocolFeatures, VringAddr};

use crate::wire::*;
use crate::{retry, Scratch, Spawned};

/// How long a hostile exchange waits for the daemon's answer.
pub const REPLY_WAIT: Duration = Duration::from_secs(5);

/// A daemon serving one device with one queue, as the suite sees it.
pub trait Target: Sized {
    /// Starts a daemon for the case named `tag`.
    fn start(tag: &str) -> Self;
    /// The daemon's socket.
    fn socket(&self) -> &Path;
    /// The largest queue size the device takes.
    fn max_queue_size(&self) -> u32;
    /// The size of the device's configuration space (0: none, CONFIG not offered).
    fn config_size(&self) -> u32;
    /// Checks the whole configuration space as GET_CONFIG read it (default: its length
    /// only, checked by the case).
    fn check_config(&self, _config: &[u8]) {}
    /// The daemon still runs, and a new front-end completes the handshake and a request.
    fn assert_serves_again(&mut self);
    /// Stops the daemon and checks what it leaves behind (default: nothing more).
    fn finish(self) {}
}

/// A daemon binary spawned for one case on the socket of its own scratch directory: what a
/// [`Target`] over a daemon binary holds. Killed on drop.
pub struct SpawnedTarget {
    /// The daemon process (no log, standard streams null).
    pub process: Spawned,
    /// Its socket.
    pub socket: PathBuf,
    /// Its directory (socket, images…).
    pub scratch: Scratch,
}

impl SpawnedTarget {
    /// Spawns `program --socket-path <socket>` followed by what `args` gives for the
    /// scratch directory of case `tag`.
    pub fn start(program: &str, tag: &str, args: impl FnOnce(&Scratch) -> Vec<OsString>) -> Self {
        let scratch = Scratch::new(&format!("hostile-{tag}"));
        let socket = scratch.socket();
        let mut all: Vec<OsString> = vec!["--socket-path".into(), socket.clone().into()];
        all.extend(args(&scratch));
        let refs: Vec<&std::ffi::OsStr> = all.iter().map(|a| a.as_os_str()).collect();
        let process = Spawned::quiet(program, &refs);
        SpawnedTarget {
            process,
            socket,
            scratch,
        }
    }

    /// The daemon process is still running.
    pub fn assert_running(&mut self) {
        assert!(self.process.running(), "the daemon exited");
    }
}

/// A raw stream to the target (retrying while the socket appears).
pub fn stream<T: Target>(d: &T) -> UnixStream {
    let s = retry(d.socket(), || UnixStream::connect(d.socket()));
    s.set_read_timeout(Some(REPLY_WAIT)).expect("timeout");
    s
}

/// A front-end client that has not sent anything yet.
pub fn frontend<T: Target>(d: &T) -> Frontend {
    let fe = retry(d.socket(), || Frontend::connect(d.socket()));
    fe.set_read_timeout(Some(REPLY_WAIT)).expect("timeout");
    fe
}

/// A front-end that negotiated every offered protocol feature (REPLY_ACK included) and
/// took ownership, as QEMU does before anything else.
pub fn negotiated<T: Target>(d: &T) -> Frontend {
    let mut fe = frontend(d);
    fe.get_features().expect("GET_FEATURES");
    let p = fe.get_protocol_features().expect("GET_PROTOCOL_FEATURES");
    fe.set_protocol_features(p).expect("SET_PROTOCOL_FEATURES");
    assert!(fe.reply_ack(), "REPLY_ACK not negotiated");
    fe.set_owner().expect("SET_OWNER");
    fe
}

fn bfd(e: &EventFd) -> BorrowedFd<'_> {
    e.as_fd()
}

/// SET_VRING_ADDR of ring 0 with these addresses is refused with an ack of 1.
fn assert_ring_refused(fe: &Frontend, desc: u64, avail: u64, used: u64) {
    let addr = VringAddr {
        index: 0,
        flags: 0,
        desc,
        used,
        avail,
        log: 0,
    };
    send_req(fe, &FrontendRequest::SetVringAddr(addr), &[]);
    assert_nack(fe, FrontendReq::SetVringAddr);
}

/// After a refusal: the session goes on, then the daemon serves a new front-end and stops
/// clean.
fn goes_on_then_serves<T: Target>(d: T, mut fe: Frontend) {
    assert_session_goes_on(&mut fe);
    drop(fe);
    serves_and_finishes(d);
}

/// The daemon serves a new front-end, then stops clean.
fn serves_and_finishes<T: Target>(mut d: T) {
    d.assert_serves_again();
    d.finish();
}

/// Request codes 0, 45, 1006 and 0xffffffff get the connection closed, unanswered.
pub fn unknown_request_codes_close_the_connection<T: Target>() {
    let d = T::start("codes");
    // The first code past the last request is unknown, whatever the rows' count.
    let past_last = vhost_proto::FRONTEND_REQUESTS.len() as u32 + 1;
    for code in [0, past_last, 1006, u32::MAX] {
        let fe = negotiated(&d);
        send(&fe, code, &[], &[]);
        assert_closed(&fe);
    }
    serves_and_finishes(d);
}

/// A header announcing a 4 GiB body is a framing error: closed before any body is read.
pub fn header_claiming_a_4_gib_body_closes_the_connection<T: Target>() {
    let d = T::start("4gib");
    let fe = negotiated(&d);
    let h = Header::new(
        FrontendReq::SetMemTable as u32,
        HeaderFlags::NEED_REPLY,
        u32::MAX,
    );
    fe.send_raw(&h, &[0; 64], &[]).expect("send");
    assert_closed(&fe);
    drop(fe);
    serves_and_finishes(d);
}

/// A body cut short by the front-end going away ends that session only (the descriptors
/// that rode with its header are closed): a SET_MEM_TABLE with its memfd, then a
/// SET_VRING_NUM, each half sent.
pub fn truncated_body_then_close_ends_the_session_only<T: Target>() {
    let mut d = T::start("truncated");
    let fe = negotiated(&d);
    let mem = GuestMemory::single(1 << 20).expect("memory");
    let h = Header::new(FrontendReq::SetMemTable as u32, HeaderFlags::NEED_REPLY, 40);
    fe.send_raw(&h, &[1, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[mem.fd()])
        .expect("send");
    drop(fe);
    drop(mem);
    d.assert_serves_again();
    let fe = negotiated(&d);
    let h = Header::new(FrontendReq::SetVringNum as u32, HeaderFlags::NEED_REPLY, 8);
    fe.send_raw(&h, &[0; 4], &[]).expect("send");
    drop(fe);
    serves_and_finishes(d);
}

/// SET_VRING_KICK with two descriptors is refused with an ack of 1; both are closed.
pub fn vring_kick_with_two_descriptors_is_refused<T: Target>() {
    let d = T::start("kick2");
    let fe = negotiated(&d);
    let (a, b) = (eventfd(), eventfd());
    assert_refused(
        &fe,
        FrontendReq::SetVringKick,
        &u64_body(0),
        &[bfd(&a), bfd(&b)],
    );
    drop((a, b));
    goes_on_then_serves(d, fe);
}

/// SET_MEM_TABLE naming two regions with one descriptor is refused with an ack of 1.
pub fn mem_table_with_fewer_descriptors_than_regions_is_refused<T: Target>() {
    let d = T::start("memfds");
    let fe = negotiated(&d);
    let mem = GuestMemory::single(2 << 20).expect("memory");
    let r = region_of(&mem);
    let half = r.memory_size / 2;
    let body = mem_table_body(&[
        [r.guest_phys_addr, half, r.user_addr, 0],
        [r.guest_phys_addr + half, half, r.user_addr + half, half],
    ]);
    assert_refused(&fe, FrontendReq::SetMemTable, &body, &[mem.fd()]);
    drop(mem);
    goes_on_then_serves(d, fe);
}

/// Nine descriptors on one message break the transport's limit: the connection is closed
/// and all nine are closed in the daemon (whatever the request: GET_FEATURES, SET_OWNER).
pub fn nine_descriptors_on_a_message_close_the_connection<T: Target>() {
    let d = T::start("fds9");
    for code in [FrontendReq::GetFeatures, FrontendReq::SetOwner] {
        let s = stream(&d);
        let fds: Vec<EventFd> = (0..9).map(|_| eventfd()).collect();
        let raw: Vec<i32> = fds.iter().map(|f| f.as_fd().as_raw_fd()).collect();
        let h = Header::new(code as u32, HeaderFlags::empty(), 0).to_wire();
        sendmsg::<()>(
            s.as_raw_fd(),
            &[std::io::IoSlice::new(&h)],
            &[ControlMessage::ScmRights(&raw)],
            MsgFlags::empty(),
            None,
        )
        .expect("sendmsg");
        assert_stream_closed(s);
    }
    serves_and_finishes(d);
}

/// SET_MEM_TABLE with overlapping regions is refused with an ack of 1.
pub fn mem_table_with_overlapping_regions_is_refused<T: Target>() {
    let d = T::start("overlap");
    let fe = negotiated(&d);
    let mem = GuestMemory::single(2 << 20).expect("memory");
    let size = region_of(&mem).memory_size;
    let half = size / 2;
    let body = mem_table_body(&[
        [0, size, 0x7000_0000_0000, 0],
        [half, half, 0x7100_0000_0000, half],
    ]);
    assert_refused(&fe, FrontendReq::SetMemTable, &body, &[mem.fd(), mem.fd()]);
    drop(mem);
    goes_on_then_serves(d, fe);
}

/// Regions whose address + size overflows (guest-physical, user or mmap offset) are
/// refused with an ack of 1.
pub fn mem_table_with_address_overflow_is_refused<T: Target>() {
    let d = T::start("overflow");
    let fe = negotiated(&d);
    let mem = GuestMemory::single(1 << 20).expect("memory");
    for r in [
        [u64::MAX - 0xfff, 0x10_0000, 0x7000_0000_0000, 0],
        [0, 0x10_0000, u64::MAX - 0xfff, 0],
        [0, 0x10_0000, 0x7000_0000_0000, u64::MAX - 0xfff],
    ] {
        assert_refused(
            &fe,
            FrontendReq::SetMemTable,
            &mem_table_body(&[r]),
            &[mem.fd()],
        );
    }
    drop(mem);
    goes_on_then_serves(d, fe);
}

/// A region running past the end of its memfd is refused with an ack of 1 (never mapped,
/// so no SIGBUS later): SET_MEM_TABLE and ADD_MEM_REG alike; SET_VRING_NUM is still acked
/// with 0, and a ring placed in the region is refused.
pub fn mem_table_region_past_end_of_memfd_is_refused<T: Target>() {
    let d = T::start("pastend");
    let fe = negotiated(&d);
    let mem = GuestMemory::single(1 << 20).expect("memory");
    let r = region_of(&mem);
    let past = [
        r.guest_phys_addr,
        r.memory_size,
        r.user_addr,
        r.mmap_offset + 0x1000,
    ];
    assert_refused(
        &fe,
        FrontendReq::SetMemTable,
        &mem_table_body(&[past]),
        &[mem.fd()],
    );
    assert_refused(&fe, FrontendReq::AddMemReg, &region_body(past), &[mem.fd()]);
    send(
        &fe,
        FrontendReq::SetVringNum as u32,
        &state_body(0, 16),
        &[],
    );
    assert_eq!(ack(&fe, FrontendReq::SetVringNum), 0, "SET_VRING_NUM 16");
    assert_ring_refused(&fe, r.user_addr, r.user_addr + 0x2000, r.user_addr + 0x1000);
    drop(mem);
    goes_on_then_serves(d, fe);
}

/// SET_VRING_NUM of 0, 3 (not a power of two), twice the device's maximum and 2^32-1 are
/// each refused with an ack of 1.
pub fn vring_num_zero_odd_or_over_maximum_is_refused<T: Target>() {
    let d = T::start("num");
    let fe = negotiated(&d);
    for num in [0, 3, 2 * d.max_queue_size(), u32::MAX] {
        assert_refused(&fe, FrontendReq::SetVringNum, &state_body(0, num), &[]);
    }
    goes_on_then_serves(d, fe);
}

/// Vring index 7 on a one-queue device (SET_VRING_NUM) and 255 (SET_VRING_CALL, with its
/// eventfd closed) are refused with an ack of 1; GET_VRING_BASE of ring 1, which has no
/// failure form, closes the connection.
pub fn vring_index_out_of_range_is_refused<T: Target>() {
    let d = T::start("index");
    let fe = negotiated(&d);
    assert_refused(&fe, FrontendReq::SetVringNum, &state_body(7, 16), &[]);
    let call = eventfd();
    assert_refused(
        &fe,
        FrontendReq::SetVringCall,
        &u64_body(255),
        &[bfd(&call)],
    );
    send(
        &fe,
        FrontendReq::GetVringBase as u32,
        &state_body(1, 0),
        &[],
    );
    assert_closed(&fe);
    drop(fe);
    drop(call);
    serves_and_finishes(d);
}

/// SET_VRING_ADDR with any of its three addresses outside every region (or running past
/// the end of one) is refused with an ack of 1.
pub fn vring_addr_outside_every_region_is_refused<T: Target>() {
    let d = T::start("addr");
    let mut fe = negotiated(&d);
    let mem = GuestMemory::single(1 << 20).expect("memory");
    let r = region_of(&mem);
    fe.set_mem_table(&[r], &[mem.fd()]).expect("SET_MEM_TABLE");
    fe.set_vring_num(0, 16).expect("SET_VRING_NUM");
    let (lo, end) = (r.user_addr, r.user_addr + r.memory_size);
    for (desc, avail, used) in [
        (r.guest_phys_addr + 0x1000, lo, lo + 0x1000),
        (lo, end, lo + 0x1000),
        (lo, lo + 0x1000, end - 8),
        (u64::MAX - 8, lo, lo + 0x1000),
    ] {
        assert_ring_refused(&fe, desc, avail, used);
    }
    drop(mem);
    goes_on_then_serves(d, fe);
}

/// SET_VRING_KICK before any memory table is refused with an ack of 1 (the ring has no
/// addresses; no worker is left behind), NOFD (polling) too; signalling the eventfd
/// afterwards does nothing and the ring reports base 0.
pub fn kick_before_any_memory_table_is_refused_and_signals_are_harmless<T: Target>() {
    let d = T::start("kick");
    let mut fe = negotiated(&d);
    let kick = eventfd();
    assert_refused(&fe, FrontendReq::SetVringKick, &u64_body(0), &[bfd(&kick)]);
    assert_refused(&fe, FrontendReq::SetVringKick, &u64_body(1 << 8), &[]);
    for _ in 0..3 {
        kick.write(1).expect("kick");
    }
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(fe.get_vring_base(0).expect("GET_VRING_BASE"), 0);
    drop(kick);
    goes_on_then_serves(d, fe);
}

/// GET_VRING_BASE on a ring never started answers its base: index 0, num 0.
pub fn get_vring_base_on_a_ring_never_started_answers_zero<T: Target>() {
    let d = T::start("base");
    let fe = negotiated(&d);
    send(
        &fe,
        FrontendReq::GetVringBase as u32,
        &state_body(0, 0),
        &[],
    );
    assert_eq!(reply(&fe, FrontendReq::GetVringBase), state_body(0, 0));
    goes_on_then_serves(d, fe);
}

/// A second SET_OWNER is refused with an ack of 1.
pub fn second_set_owner_is_refused<T: Target>() {
    let d = T::start("owner");
    let fe = negotiated(&d);
    assert_refused(&fe, FrontendReq::SetOwner, &[], &[]);
    goes_on_then_serves(d, fe);
}

/// SET_FEATURES acking a bit never offered is refused with an ack of 1.
pub fn set_features_with_bits_never_offered_is_refused<T: Target>() {
    let d = T::start("features");
    let mut fe = negotiated(&d);
    let offered = fe.get_features().expect("GET_FEATURES");
    let never = !offered;
    assert_ne!(never, 0);
    let bit = 1u64 << (63 - never.leading_zeros());
    assert_refused(&fe, FrontendReq::SetFeatures, &u64_body(offered | bit), &[]);
    goes_on_then_serves(d, fe);
}

/// GET_CONFIG reaching past the configuration space gets the zero-size failure reply
/// (offset and flags echoed, no payload); the whole space still reads. A device without
/// one does not offer CONFIG.
pub fn get_config_beyond_the_config_space_gets_a_zero_size_reply<T: Target>() {
    let d = T::start("config");
    let mut fe = negotiated(&d);
    let size = d.config_size();
    if size == 0 {
        assert!(!fe.acked_protocol().contains(ProtocolFeatures::CONFIG));
        return goes_on_then_serves(d, fe);
    }
    assert!(fe.acked_protocol().contains(ProtocolFeatures::CONFIG));
    for (offset, len) in [
        (size / 2, size),
        (size * 2 / 3, size * 2 / 3),
        (size, 1),
        (0xffff_fff0, 32),
    ] {
        send(
            &fe,
            FrontendReq::GetConfig as u32,
            &config_body(offset, len, 0, len as usize),
            &[],
        );
        assert_eq!(
            reply(&fe, FrontendReq::GetConfig),
            config_body(offset, 0, 0, 0),
            "GET_CONFIG {offset:#x}+{len}"
        );
    }
    let config = fe.get_config(0, size, 0).expect("GET_CONFIG");
    assert_eq!(config.len(), size as usize);
    d.check_config(&config);
    goes_on_then_serves(d, fe);
}

/// REM_MEM_REG of a region never added is refused with an ack of 1.
pub fn rem_mem_reg_of_a_region_never_added_is_refused<T: Target>() {
    let d = T::start("remreg");
    let fe = negotiated(&d);
    assert!(fe
        .acked_protocol()
        .contains(ProtocolFeatures::CONFIGURE_MEM_SLOTS));
    let body = region_body([0, 0x10_0000, 0x7000_0000_0000, 0]);
    assert_refused(&fe, FrontendReq::RemMemReg, &body, &[]);
    goes_on_then_serves(d, fe);
}

/// Bytes that are no vhost-user header get the connection closed, unanswered.
pub fn garbage_bytes_close_the_connection<T: Target>() {
    let d = T::start("garbage");
    for garbage in [
        &[0xde_u8; 64][..],
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        &[0xff; 12],
    ] {
        let mut s = stream(&d);
        s.write_all(garbage).expect("write");
        assert_stream_closed(s);
    }
    serves_and_finishes(d);
}

/// The suite's cases as `#[test]` functions of the calling module, each run against
/// `$target` (a [`Target`]).
#[macro_export]
macro_rules! hostile_suite {
    ($target:ty) => {
        $crate::hostile_suite!(@cases $target;
            unknown_request_codes_close_the_connection,
            header_claiming_a_4_gib_body_closes_the_connection,
            truncated_body_then_close_ends_the_session_only,
            vring_kick_with_two_descriptors_is_refused,
            mem_table_with_fewer_descriptors_than_regions_is_refused,
            nine_descriptors_on_a_message_close_the_connection,
            mem_table_with_overlapping_regions_is_refused,
            mem_table_with_address_overflow_is_refused,
            mem_table_region_past_end_of_memfd_is_refused,
            vring_num_zero_odd_or_over_maximum_is_refused,
            vring_index_out_of_range_is_refused,
            vring_addr_outside_every_region_is_refused,
            kick_before_any_memory_table_is_refused_and_signals_are_harmless,
            get_vring_base_on_a_ring_never_started_answers_zero,
            second_set_owner_is_refused,
            set_features_with_bits_never_offered_is_refused,
            get_config_beyond_the_config_space_gets_a_zero_size_reply,
            rem_mem_reg_of_a_region_never_added_is_refused,
            garbage_bytes_close_the_connection,
        );
    };
    (@cases $target:ty; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                $crate::hostile::$case::<$target>()
            }
        )*
    };
}
