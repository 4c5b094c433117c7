//! Connections over real Windows named pipes: framing, the handle preamble,
//! peer misbehaviour and listener life cycle. The platform-neutral part is the shared
//! transport contract (`common/contract.rs`), run here for named pipes.
//!
//! Several tests check that handle values a receive was given are closed
//! afterwards, which only holds while no other test opens handles, so every
//! test in this binary takes `serial()` first.

#![cfg(windows)]

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::os::windows::io::{
    AsHandle, AsRawHandle, BorrowedHandle, FromRawHandle, IntoRawHandle, OwnedHandle,
};
use std::process::{Command, Stdio};
use std::ptr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::Duration;

use vhost_transport::{Connection, Error, FrontendChannel, Listener, HEADER_SIZE, MAX_FDS};
use windows_sys::Win32::Foundation::{
    GetHandleInformation, FALSE, GENERIC_READ, GENERIC_WRITE, HANDLE, INVALID_HANDLE_VALUE, TRUE,
    WAIT_OBJECT_0,
};
use windows_sys::Win32::Storage::FileSystem::{CreateFileW, OPEN_EXISTING};
use windows_sys::Win32::System::Threading::{CreateEventW, SetEvent, WaitForSingleObject};

use common::contract::Platform;
use common::{assert_nothing_waiting, assert_partial, assert_too_many_fds, header, serial, Conn};

// The transport contract, as Unix sockets keep it too.
transport_contract!(Pipes);

/// Named pipes: handles ride as values in a preamble before each message.
struct Pipes;

impl Platform for Pipes {
    type Raw = File;
    type Lent = OwnedHandle;
    const NONBLOCKING_SEND: bool = false;

    fn conn_and_raw() -> (Conn, File) {
        conn_and_raw()
    }
    fn plain(bytes: &[u8]) -> Vec<u8> {
        let mut msg = preamble(&[]);
        msg.extend_from_slice(bytes);
        msg
    }
    fn lend(n: usize) -> Vec<OwnedHandle> {
        events(n)
    }
    fn borrow(lent: &OwnedHandle) -> BorrowedHandle<'_> {
        lent.as_handle()
    }
    fn check(received: Vec<OwnedHandle>, originals: &[OwnedHandle]) {
        check_events(received, originals)
    }
}

/// The preamble of the Windows mapping: count, then the values.
fn preamble(values: &[u64]) -> Vec<u8> {
    let mut out = (values.len() as u32).to_le_bytes().to_vec();
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

fn pipe_name(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!(
        r"\\.\pipe\vhost-transport-test-{}-{tag}-{n}",
        std::process::id()
    )
}

fn wide(s: &str) -> Vec<u16> {
    s.encode_utf16().chain(std::iter::once(0)).collect()
}

/// A connection (server end) and a plain synchronous client handle on the
/// other end of its pipe.
fn conn_and_raw() -> (Conn, File) {
    let name = pipe_name("raw");
    let listener = Listener::bind(&name, None).unwrap();
    let w = wide(&name);
    // SAFETY: `w` is NUL-terminated UTF-16; no security attributes or template.
    let raw = unsafe {
        CreateFileW(
            w.as_ptr(),
            GENERIC_READ | GENERIC_WRITE,
            0,
            ptr::null(),
            OPEN_EXISTING,
            0,
            ptr::null_mut(),
        )
    };
    assert_ne!(
        raw,
        INVALID_HANDLE_VALUE,
        "{}",
        std::io::Error::last_os_error()
    );
    // SAFETY: CreateFileW just returned this handle.
    let raw = unsafe { File::from_raw_handle(raw) };
    let conn = listener.accept().unwrap();
    (conn, raw)
}

fn event() -> OwnedHandle {
    // SAFETY: creates an unnamed manual-reset event.
    let h = unsafe { CreateEventW(ptr::null(), TRUE, FALSE, ptr::null()) };
    assert!(!h.is_null());
    // SAFETY: CreateEventW just returned this handle.
    unsafe { OwnedHandle::from_raw_handle(h) }
}

fn events(n: usize) -> Vec<OwnedHandle> {
    (0..n).map(|_| event()).collect()
}

fn is_set(h: BorrowedHandle<'_>) -> bool {
    // SAFETY: polls an open event.
    unsafe { WaitForSingleObject(h.as_raw_handle(), 0) == WAIT_OBJECT_0 }
}

fn set(h: BorrowedHandle<'_>) {
    // SAFETY: signals an open event.
    assert_ne!(unsafe { SetEvent(h.as_raw_handle()) }, FALSE);
}

fn is_open(value: u64) -> bool {
    let mut flags = 0;
    // SAFETY: only queries the handle table.
    unsafe { GetHandleInformation(value as usize as HANDLE, &mut flags) != FALSE }
}

/// Open handles of this process, counted by probing every value up to a
/// bound no test gets near (GetProcessHandleCount is a stub in wine).
fn handle_count() -> usize {
    (1..0x1000u64).filter(|i| is_open(i * 4)).count()
}

/// Setting each received event sets the original it came from, and only
/// that one: the handles are live, distinct and in order.
fn check_events(received: Vec<OwnedHandle>, originals: &[OwnedHandle]) {
    assert_eq!(received.len(), originals.len());
    for (i, h) in received.iter().enumerate() {
        assert!(!is_set(originals[i].as_handle()), "event {i} set early");
        set(h.as_handle());
        for (j, orig) in originals.iter().enumerate() {
            assert_eq!(
                is_set(orig.as_handle()),
                j <= i,
                "event {j} after setting {i}"
            );
        }
    }
}

/// Handle values this process owns and hands to a peer that takes them.
fn given_values(n: usize) -> Vec<u64> {
    (0..n)
        .map(|_| event().into_raw_handle() as usize as u64)
        .collect()
}

#[test]
fn sent_bytes_follow_the_documented_preamble() {
    let _g = serial();
    let (conn, mut raw) = conn_and_raw();
    conn.send(&header(7, 2), b"ab", b"c", &[]).unwrap();
    let mut got = [0u8; 4 + HEADER_SIZE + 3];
    raw.read_exact(&mut got).unwrap();
    let mut expected = preamble(&[]);
    expected.extend_from_slice(&header(7, 2));
    expected.extend_from_slice(b"abc");
    assert_eq!(&got[..], &expected[..]);

    let e = event();
    conn.send(&header(8, 0), &[], &[], &[e.as_handle()])
        .unwrap();
    let mut got = [0u8; 4 + 8 + HEADER_SIZE];
    raw.read_exact(&mut got).unwrap();
    assert_eq!(&got[..4], &1u32.to_le_bytes());
    let value = u64::from_le_bytes(got[4..12].try_into().unwrap());
    assert_eq!(&got[12..], &header(8, 0));
    // Both ends are in this process: the value is a new handle to the event.
    // SAFETY: the sender duplicated it for the receiver, which is this test.
    let dup = unsafe { OwnedHandle::from_raw_handle(value as usize as HANDLE) };
    assert_ne!(dup.as_raw_handle(), e.as_raw_handle());
    set(dup.as_handle());
    assert!(is_set(e.as_handle()));
}

#[test]
fn sending_nine_handles_is_refused_before_writing() {
    let _g = serial();
    let (a, b) = Conn::pair().unwrap();
    let ev = events(MAX_FDS + 1);
    let lent: Vec<BorrowedHandle<'_>> = ev.iter().map(|e| e.as_handle()).collect();
    // The handle count around one refused send. Wine sometimes opens a handle of its own
    // (once) during a call, so a mismatch is measured again: a leak of the send itself
    // shows in every attempt, a one-off handle of the platform's in one.
    let mut counts = Vec::new();
    for _ in 0..3 {
        let before = handle_count();
        let err = a.send(&header(5, 0), &[], &[], &lent).unwrap_err();
        assert_too_many_fds(&err);
        let after = handle_count();
        counts.push((before, after));
        if before == after {
            break;
        }
    }
    let (before, after) = *counts.last().unwrap();
    assert_eq!(
        after, before,
        "handles before and after each refused send: {counts:?}"
    );
    assert_nothing_waiting(&b);
}

#[test]
fn receiving_nine_handles_is_too_many_and_closes_them() {
    let _g = serial();
    let (conn, mut raw) = conn_and_raw();
    let values = given_values(MAX_FDS + 1);
    let mut msg = preamble(&values);
    msg.extend_from_slice(&header(5, 0));
    raw.write_all(&msg).unwrap();
    let err = conn.recv_header().unwrap_err();
    assert_too_many_fds(&err);
    for v in values {
        assert!(!is_open(v), "handle {v:#x} left open");
    }
}

#[test]
fn handle_flood_is_truncated_and_what_was_read_is_closed() {
    let _g = serial();
    let (conn, mut raw) = conn_and_raw();
    let values = given_values(2 * MAX_FDS);
    let mut msg = 40u32.to_le_bytes().to_vec();
    msg.extend_from_slice(&preamble(&values)[4..]);
    msg.extend_from_slice(&[0u8; 24 * 8]);
    raw.write_all(&msg).unwrap();
    let err = conn.recv_header().unwrap_err();
    assert!(matches!(err, Error::ControlTruncated), "{err:?}");
    for v in values {
        assert!(!is_open(v), "handle {v:#x} left open");
    }
}

#[test]
fn bad_handle_values_are_refused_and_the_good_ones_closed() {
    let _g = serial();
    for bad in [Some(0u64), Some(3), Some(u64::MAX), Some(0x7fff_fff0), None] {
        // The refused message's header stays unread: a new pipe each time.
        let (conn, mut raw) = conn_and_raw();
        let good = given_values(2);
        // None: the first value named twice.
        let bad = bad.unwrap_or(good[0]);
        let mut msg = preamble(&[good[0], bad, good[1]]);
        msg.extend_from_slice(&header(5, 0));
        raw.write_all(&msg).unwrap();
        let err = conn.recv_header().unwrap_err();
        assert!(
            matches!(err, Error::InvalidHandle { value } if value == bad),
            "{bad:#x}: {err:?}"
        );
        assert!(!is_open(good[0]) && !is_open(good[1]), "{bad:#x}");
    }
}

#[test]
fn peer_closing_inside_the_preamble_is_partial_and_closes_whole_values() {
    let _g = serial();
    let (conn, mut raw) = conn_and_raw();
    let values = given_values(1);
    let mut msg = preamble(&[values[0], 0x1234]);
    msg.truncate(4 + 8 + 3);
    raw.write_all(&msg).unwrap();
    drop(raw);
    let err = conn.recv_header().unwrap_err();
    assert_partial(&err, 20, 15);
    assert!(!is_open(values[0]));
}

#[test]
fn peer_closing_inside_a_header_is_partial_and_closes_the_handles() {
    let _g = serial();
    let (conn, mut raw) = conn_and_raw();
    let values = given_values(2);
    let mut msg = preamble(&values);
    msg.extend_from_slice(&header(1, 0)[..5]);
    raw.write_all(&msg).unwrap();
    drop(raw);
    let err = conn.recv_header().unwrap_err();
    assert_partial(&err, 12, 5);
    assert!(err.is_disconnect());
    assert!(!is_open(values[0]) && !is_open(values[1]));
}

#[test]
fn sending_to_a_closed_peer_is_disconnected_and_closes_the_duplicates() {
    let _g = serial();
    let (a, b) = Conn::pair().unwrap();
    let ev = events(3);
    let lent: Vec<BorrowedHandle<'_>> = ev.iter().map(|e| e.as_handle()).collect();
    // A first message opens the peer process; its handles are delivered.
    a.send(&header(1, 0), &[], &[], &lent[..1]).unwrap();
    let (_, delivered) = b.recv_header().unwrap();
    drop(delivered);
    drop(b);
    let before = handle_count();
    let probe = event();
    assert_eq!(handle_count(), before + 1, "handle count does not count");
    drop(probe);
    let err = a.send(&header(1, 0), &[], &[], &lent).unwrap_err();
    assert!(matches!(err, Error::Disconnected), "{err:?}");
    assert_eq!(handle_count(), before, "undelivered duplicates left open");
}

#[test]
fn message_dribbled_byte_by_byte_is_reassembled() {
    let _g = serial();
    let (conn, raw) = conn_and_raw();
    let values = given_values(1);
    let h = header(9, 16);
    let mut msg = preamble(&values);
    msg.extend_from_slice(&h);
    msg.extend(0..16u8);
    let writer = thread::spawn(move || {
        let mut raw = raw;
        for byte in msg {
            thread::sleep(Duration::from_millis(1));
            raw.write_all(&[byte]).unwrap();
        }
        raw
    });
    let (got, handles) = conn.recv_header().unwrap();
    assert_eq!(got, h);
    assert_eq!(conn.recv_body(16).unwrap(), (0..16u8).collect::<Vec<_>>());
    writer.join().unwrap();
    assert_eq!(handles.len(), 1);
    assert_eq!(handles[0].as_raw_handle() as usize as u64, values[0]);
}

#[test]
fn listener_serves_clients_one_after_another() {
    let _g = serial();
    let name = pipe_name("serve");
    let listener = Listener::bind(&name, Some(0o600)).unwrap();
    assert_eq!(
        listener.path().and_then(|p| p.to_str()),
        Some(name.as_str())
    );
    for round in 0..3u32 {
        let client: Conn = Connection::connect(&name).unwrap();
        let server: Conn = listener.accept().unwrap();
        client.send(&header(round, 0), &[], &[], &[]).unwrap();
        assert_eq!(server.recv_header().unwrap().0, header(round, 0));
        let ev = events(1);
        server
            .send(&header(round, 0), &[], &[], &[ev[0].as_handle()])
            .unwrap();
        let (_, handles) = client.recv_header().unwrap();
        check_events(handles, &ev);
        drop(client);
        assert!(matches!(server.recv_header(), Err(Error::Disconnected)));
    }
    listener.set_nonblocking(true).unwrap();
    assert!(matches!(
        listener.accept::<FrontendChannel>(),
        Err(Error::WouldBlock)
    ));
    // A client arriving while no accept runs is picked up by the next one.
    let client: Conn = Connection::connect(&name).unwrap();
    let server: Conn = listener.accept().unwrap();
    server.send(&header(9, 0), &[], &[], &[]).unwrap();
    assert_eq!(client.recv_header().unwrap().0, header(9, 0));
    // The name lives as long as any instance: connected ones included.
    drop((client, server, listener));
    assert!(Conn::connect(&name).is_err(), "pipe outlived its listener");
}

#[test]
fn dropping_a_listener_with_a_pending_accept_cancels_it() {
    let _g = serial();
    let name = pipe_name("pending");
    let listener = Listener::bind(&name, None).unwrap();
    listener.set_nonblocking(true).unwrap();
    assert!(matches!(
        listener.accept::<FrontendChannel>(),
        Err(Error::WouldBlock)
    ));
    drop(listener);
    assert!(Conn::connect(&name).is_err(), "pipe outlived its listener");
    // The name is free again.
    let again = Listener::bind(&name, None).unwrap();
    let _client: Conn = Connection::connect(&name).unwrap();
    let _server: Conn = again.accept().unwrap();
}

#[test]
fn binding_a_live_pipe_name_is_address_in_use() {
    let _g = serial();
    let name = pipe_name("twice");
    let listener = Listener::bind(&name, None).unwrap();
    let err = Listener::bind(&name, None).unwrap_err();
    assert!(
        matches!(&err, Error::AddressInUse(p) if p.to_str() == Some(name.as_str())),
        "{err:?}"
    );
    let _client: Conn = Connection::connect(&name).unwrap();
    let _server: Conn = listener.accept().unwrap();
}

#[test]
fn connecting_to_a_missing_pipe_fails() {
    let _g = serial();
    let err = Conn::connect(pipe_name("missing")).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
}

#[test]
fn from_handle_takes_a_pipe_end_and_refuses_a_file() {
    let _g = serial();
    let (a, b) = Conn::pair().unwrap();
    let b: Conn = Connection::from_handle(OwnedHandle::from(b)).unwrap();
    a.send(&header(2, 0), &[], &[], &[]).unwrap();
    assert_eq!(b.recv_header().unwrap().0, header(2, 0));

    let path = std::env::temp_dir().join(format!("vhost-transport-{}", std::process::id()));
    let file = File::create(&path).unwrap();
    let err = Conn::from_handle(OwnedHandle::from(file)).unwrap_err();
    assert!(matches!(err, Error::NotAPipe), "{err:?}");
    std::fs::remove_file(path).unwrap();
}

const CHILD_PIPE: &str = "VHOST_TRANSPORT_TEST_CHILD_PIPE";

/// The other process of `handles_cross_into_another_process_both_ways`: run
/// only by it, with the pipe name in the environment.
#[test]
#[ignore = "run as a child process by another test"]
fn child_echoes_a_handle() {
    let Ok(name) = std::env::var(CHILD_PIPE) else {
        return;
    };
    let conn: Conn = Connection::connect(&name).unwrap();
    let (h, handles) = conn.recv_header().unwrap();
    assert_eq!((h, handles.len()), (header(1, 0), 1));
    set(handles[0].as_handle());
    let mine = event();
    conn.send(&header(2, 0), &[], &[], &[mine.as_handle()])
        .unwrap();
    // SAFETY: waits on an event this process owns.
    let waited = unsafe { WaitForSingleObject(mine.as_raw_handle(), 10_000) };
    let ok = u8::from(waited == WAIT_OBJECT_0);
    conn.send(&header(3, 1), &[ok], &[], &[]).unwrap();
    assert!(matches!(conn.recv_header(), Err(Error::Disconnected)));
}

#[test]
fn handles_cross_into_another_process_both_ways() {
    let _g = serial();
    let name = pipe_name("child");
    let listener = Listener::bind(&name, None).unwrap();
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_echoes_a_handle", "--ignored", "--quiet"])
        .env(CHILD_PIPE, &name)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let conn: Conn = listener.accept().unwrap();
    let ev = events(1);
    conn.send(&header(1, 0), &[], &[], &[ev[0].as_handle()])
        .unwrap();
    let (h, handles) = conn.recv_header().unwrap();
    assert_eq!((h, handles.len()), (header(2, 0), 1));
    // The child set our event through its copy, and sets of its event
    // through ours reach it.
    assert!(is_set(ev[0].as_handle()));
    set(handles[0].as_handle());
    assert_eq!(conn.recv_header().unwrap().0, header(3, 1));
    assert_eq!(conn.recv_body(1).unwrap(), [1]);
    drop(conn);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "child failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
