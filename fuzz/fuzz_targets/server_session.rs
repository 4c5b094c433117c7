//! A whole server session of arbitrary front-end messages.
//!
//! Input (read with `arbitrary::Unstructured`): what the recording back-end offers, then up
//! to 48 messages. Each message has a request code (mostly a known one), flags (mostly version 1,
//! NEED_REPLY at random), a body of up to 4160 bytes, a `size` field equal to the body
//! length or larger, and 0–9 real descriptors (memfds, eventfds, sockets, /dev/null).
//!
//! A writer thread sends every message into one end of `Connection::pair()` and shuts the
//! write side down; `BackendServer::serve` runs over the other end with a
//! `RecordingBackend` until the session ends; a reader thread drains the replies.
//!
//! Properties: nothing panics or hangs; at most one reply per request sent; once the
//! session is over and everything is dropped, the process has exactly the descriptors and
//! threads it had before.
#![no_main]

use std::fs::File;
use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::socket::{sendmsg, shutdown, ControlMessage, MsgFlags, Shutdown};
use vhost_backend::test_utils::RecordingBackend;
use vhost_backend::BackendServer;
use vhost_proto::{Header, ProtocolFeatures, MAX_BODY_SIZE};
use vhost_transport::{Connection, FrontendChannel};

const MAX_MESSAGES: usize = 48;

struct Message {
    header: Header,
    body: Vec<u8>,
    fds: Vec<OwnedFd>,
}

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

fn descriptor(u: &mut Unstructured<'_>) -> Result<OwnedFd> {
    Ok(match u.int_in_range(0..=3u8)? {
        0 => {
            let fd = memfd_create(c"fuzz-region", MFdFlags::MFD_CLOEXEC).expect("memfd");
            let file = File::from(fd);
            file.set_len(u64::from(u.int_in_range(0..=4u8)?) * 4096)
                .expect("set_len");
            OwnedFd::from(file)
        }
        1 => OwnedFd::from(
            EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
                .expect("eventfd"),
        ),
        2 => {
            let (a, _b) = std::os::unix::net::UnixStream::pair().expect("socketpair");
            OwnedFd::from(a)
        }
        _ => OwnedFd::from(File::open("/dev/null").expect("/dev/null")),
    })
}

fn message(u: &mut Unstructured<'_>) -> Result<Message> {
    let request = if u.ratio(15, 16)? {
        u.int_in_range(1..=vhost_proto::FRONTEND_REQUESTS.len() as u32)?
    } else {
        u.arbitrary()?
    };
    let flags = if u.ratio(31, 32)? {
        1 | if u.arbitrary()? { 1 << 3 } else { 0 }
    } else {
        u.arbitrary()?
    };
    let len = match u.int_in_range(0..=3u8)? {
        0 => 0,
        1 => usize::from(u.int_in_range(0..=64u8)?),
        _ => usize::from(u.arbitrary::<u16>()?) % (MAX_BODY_SIZE + 64),
    };
    let len = len.min(u.len());
    let body = u.bytes(len)?.to_vec();
    // Never smaller than the body, so the server never sees more messages than were sent.
    let size = if u.ratio(1, 32)? {
        (body.len() as u32).saturating_add(u.arbitrary()?)
    } else {
        body.len() as u32
    };
    let nfds = match u.int_in_range(0..=15u8)? {
        0..=8 => 0,
        9..=12 => 1,
        13 => 2,
        14 => usize::from(u.int_in_range(3..=8u8)?),
        _ => 9,
    };
    let fds = (0..nfds).map(|_| descriptor(u)).collect::<Result<_>>()?;
    Ok(Message {
        header: Header {
            request,
            flags,
            size,
        },
        body,
        fds,
    })
}

fn backend(u: &mut Unstructured<'_>) -> Result<RecordingBackend> {
    let mut b = RecordingBackend::new();
    if u.arbitrary()? {
        b = b.with_features(u.arbitrary()?);
    }
    if u.arbitrary()? {
        b = b.with_protocol(ProtocolFeatures::from_bits_truncate(u.arbitrary()?));
    }
    if u.arbitrary()? {
        b = b.with_queues(u64::from(u.int_in_range(0..=300u16)?));
    }
    b.device_state_fd = u.arbitrary()?;
    Ok(b)
}

fn write_all(fd: RawFd, msgs: Vec<Message>) {
    for m in msgs {
        let wire = m.header.to_wire();
        let raw: Vec<RawFd> = m.fds.iter().map(|f| f.as_raw_fd()).collect();
        let mut data = wire.to_vec();
        data.extend_from_slice(&m.body);
        let mut sent = 0;
        while sent < data.len() {
            let iov = [IoSlice::new(&data[sent..])];
            let rights = [ControlMessage::ScmRights(&raw)];
            let cmsgs: &[ControlMessage<'_>] = if sent == 0 && !raw.is_empty() {
                &rights
            } else {
                &[]
            };
            match sendmsg::<()>(fd, &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
                Ok(n) => sent += n,
                Err(nix::errno::Errno::EINTR) => {}
                // The server closed the connection: the rest cannot be delivered.
                Err(_) => return,
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let fds_before = count("/proc/self/fd");
    let threads_before = count("/proc/self/task");
    let mut u = Unstructured::new(data);
    let Ok(backend) = backend(&mut u) else {
        return;
    };
    let mut msgs = Vec::new();
    while msgs.len() < MAX_MESSAGES && !u.is_empty() {
        match message(&mut u) {
            Ok(m) => msgs.push(m),
            Err(_) => break,
        }
    }
    let requests = msgs.len();
    {
        let (back, front) = Connection::<FrontendChannel>::pair().expect("socket pair");
        let writer_fd = front.as_fd().try_clone_to_owned().expect("dup");
        let writer = std::thread::spawn(move || {
            write_all(writer_fd.as_raw_fd(), msgs);
            let _ = shutdown(writer_fd.as_raw_fd(), Shutdown::Write);
        });
        let reader = std::thread::spawn(move || {
            let mut replies = 0usize;
            while let Ok((wire, _fds)) = front.recv_header() {
                let h = Header::from_wire(&wire);
                if front.recv_body(h.size as usize).is_err() {
                    break;
                }
                replies += 1;
            }
            replies
        });
        let recording = backend.recording();
        let mut server = BackendServer::new(back, backend).expect("server");
        let _ = server.serve();
        drop(server);
        writer.join().expect("writer");
        let replies = reader.join().expect("reader");
        assert!(
            replies <= requests,
            "{replies} replies to {requests} requests"
        );
        drop(recording.take_fds());
        drop(recording);
    }
    assert_eq!(count("/proc/self/fd"), fds_before, "descriptors leaked");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while count("/proc/self/task") != threads_before && std::time::Instant::now() < deadline {
        std::thread::yield_now();
    }
    assert_eq!(
        count("/proc/self/task"),
        threads_before,
        "threads left running"
    );
});
