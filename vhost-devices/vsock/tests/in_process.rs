//! The device behind the in-process daemon, driven by the front-end's session and vsock
//! driver playing the guest, with host processes as Unix streams: connection set-up both
//! ways, data both ways under flow control, shutdown and reset paths, the event queue; each
//! test on both ring layouts (split, then packed).

mod common;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::time::Duration;

use common::*;
use vhost_device_vsock::BUF_ALLOC;
use vhost_frontend::devices::vsock::op;

fn setup(tag: &str) -> (Scratch, InProcess, Guest) {
    let scratch = Scratch::new(tag);
    let d = InProcess::start(&scratch);
    let g = Guest::new(&scratch.socket());
    (scratch, d, g)
}

#[test]
fn config_space_holds_the_guest_cid_and_the_event_queue_reports_a_transport_reset() {
    on_both_layouts(|| {
        let (_scratch, _d, mut g) = setup("config");
        assert_eq!(g.s.config().unwrap(), &CID.to_le_bytes());
        // A fresh device tells the driver its transport was reset (harmless at first boot,
        // what a driver needs after a back-end restart), once.
        assert_eq!(g.d.wait_event(&mut g.s, TIMEOUT).unwrap(), 0);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(g.d.try_event(&mut g.s).unwrap(), None);
    });
}

#[test]
fn guest_connects_to_a_host_listener_and_bytes_flow_both_ways_then_close_cleanly() {
    on_both_layouts(|| {
        let (scratch, _d, mut g) = setup("g2h");
        let listener = scratch.listen(1234);
        let resp = g.connect(40000, 1234, 256 * 1024);
        assert_eq!(resp.hdr.op.get(), op::RESPONSE);
        assert_eq!(
            (resp.hdr.src_port.get(), resp.hdr.dst_port.get()),
            (1234, 40000)
        );
        assert_eq!(resp.hdr.buf_alloc.get(), BUF_ALLOC);
        let (mut host, _) = listener.accept().unwrap();
        host.set_read_timeout(Some(TIMEOUT)).unwrap();
        let key = (40000, 1234);

        g.write(key, b"hello host", 4096);
        let mut buf = [0u8; 10];
        host.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello host");

        host.write_all(b"hello guest").unwrap();
        assert_eq!(g.read(key, 11), b"hello guest");

        // The guest closes: SHUTDOWN with both flags; the host sees the end, the guest gets
        // the reset that ends the connection.
        g.control(key, op::SHUTDOWN, 3);
        assert_eq!(read_to_end(&mut host), b"");
        let rst = g.recv_for(key);
        assert_eq!(rst.hdr.op.get(), op::RST);
    });
}

#[test]
fn guest_connection_to_a_port_nobody_listens_on_is_reset() {
    on_both_layouts(|| {
        let (_scratch, _d, mut g) = setup("refused");
        let p = g.connect(40001, 9999, 65536);
        assert_eq!(p.hdr.op.get(), op::RST);
        assert_eq!((p.hdr.src_port.get(), p.hdr.dst_port.get()), (9999, 40001));
    });
}

#[test]
fn host_connect_line_reaches_the_guest_port_and_gets_ok_with_the_local_port() {
    on_both_layouts(|| {
        let (scratch, _d, mut g) = setup("h2g");
        let mut host = scratch.host_connect(5000);
        let req = g.recv();
        assert_eq!(req.hdr.op.get(), op::REQUEST);
        assert_eq!(req.hdr.dst_port.get(), 5000);
        let local = req.hdr.src_port.get();
        assert!(local >= 1 << 30, "local port {local}");
        let key = g.accept(&req, 256 * 1024);
        assert_eq!(read_ok(&mut host), local);

        host.write_all(b"ping").unwrap();
        assert_eq!(g.read(key, 4), b"ping");
        g.write(key, b"pong", 4096);
        let mut buf = [0u8; 4];
        host.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"pong");

        // The host closes: the guest hears SHUTDOWN (the host sends no more); the guest closes
        // in turn and gets the final reset.
        drop(host);
        let p = g.recv_for(key);
        assert_eq!(p.hdr.op.get(), op::SHUTDOWN);
        assert_eq!(p.hdr.flags.get() & 2, 2, "SEND flag");
        g.control(key, op::SHUTDOWN, 3);
        assert_eq!(g.recv_for(key).hdr.op.get(), op::RST);
    });
}

#[test]
fn host_half_close_still_lets_the_guest_answer() {
    on_both_layouts(|| {
        let (scratch, _d, mut g) = setup("halfclose");
        let mut host = scratch.host_connect(5001);
        let req = g.recv();
        let key = g.accept(&req, 65536);
        read_ok(&mut host);
        host.write_all(b"question").unwrap();
        host.shutdown(Shutdown::Write).unwrap();
        assert_eq!(g.read(key, 8), b"question");
        let p = g.recv_for(key);
        assert_eq!((p.hdr.op.get(), p.hdr.flags.get()), (op::SHUTDOWN, 2));
        g.write(key, b"answer", 4096);
        g.control(key, op::SHUTDOWN, 3);
        assert_eq!(read_to_end(&mut host), b"answer");
        assert_eq!(g.recv_for(key).hdr.op.get(), op::RST);
    });
}

#[test]
fn guest_refusing_a_host_connection_closes_the_stream_without_ok() {
    on_both_layouts(|| {
        let (scratch, _d, mut g) = setup("h2g-refused");
        let mut host = scratch.host_connect(5002);
        let req = g.recv();
        let mut rst = vhost_frontend::devices::vsock::VsockHeader::to_host(
            CID,
            req.hdr.dst_port.get(),
            req.hdr.src_port.get(),
            op::RST,
        );
        rst.len = 0.into();
        g.send(&rst, &[]);
        assert_eq!(
            read_to_end(&mut host),
            b"",
            "no OK line for a refused connection"
        );
    });
}

#[test]
fn malformed_connect_lines_close_the_host_stream_and_the_next_one_works() {
    on_both_layouts(|| {
        let (scratch, _d, mut g) = setup("badline");
        for line in [&b"HELLO 5\n"[..], b"CONNECT five\n", &[b'x'; 100]] {
            let mut s = std::os::unix::net::UnixStream::connect(scratch.uds()).unwrap();
            s.set_read_timeout(Some(TIMEOUT)).unwrap();
            s.write_all(line).unwrap();
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
            assert_eq!(rest, b"", "{line:?}");
        }
        assert!(g.recv_within(Duration::from_millis(100)).is_none());
        let mut host = scratch.host_connect(5003);
        let req = g.recv();
        g.accept(&req, 65536);
        assert_eq!(read_ok(&mut host), req.hdr.src_port.get());
    });
}

#[test]
fn guest_to_slow_host_reader_stops_at_the_credit_and_resumes_on_credit_updates() {
    on_both_layouts(|| {
        let (scratch, _d, mut g) = setup("slowhost");
        let listener = scratch.listen(1235);
        g.connect(40002, 1235, 65536);
        let (mut host, _) = listener.accept().unwrap();
        let key = (40002, 1235);
        let total = 4 << 20;
        let data = pattern(7, total);
        // The host reads nothing yet: the guest can send exactly the device's buffer.
        let credit = g.conns[&key].credit();
        assert_eq!(credit, BUF_ALLOC);
        let first = BUF_ALLOC as usize;
        g.write(key, &data[..first], 65536);
        assert_eq!(g.conns[&key].credit(), 0);
        // The host starts reading slowly in a thread; the guest sends the rest as credit
        // comes back in CREDIT_UPDATEs.
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = vec![0u8; 8192];
            loop {
                std::thread::sleep(Duration::from_micros(200));
                match host.read(&mut buf) {
                    Ok(0) => return got,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) => panic!("host read: {e}"),
                }
            }
        });
        g.write(key, &data[first..], 65536);
        g.control(key, op::SHUTDOWN, 3);
        let got = reader.join().unwrap();
        assert_eq!(got.len(), total);
        assert!(got == data, "bytes differ");
        // Credit updates sent before the shutdown arrived may come first.
        let mut p = g.recv_for(key);
        while p.hdr.op.get() == op::CREDIT_UPDATE {
            p = g.recv_for(key);
        }
        assert_eq!(p.hdr.op.get(), op::RST);
    });
}

#[test]
fn host_to_slow_guest_reader_never_gets_more_than_the_guest_credit() {
    on_both_layouts(|| {
        let (scratch, _d, mut g) = setup("slowguest");
        let mut host = scratch.host_connect(5004);
        let req = g.recv();
        let guest_buf = 16 * 1024u32;
        let key = g.accept(&req, guest_buf);
        read_ok(&mut host);
        let total = 256 << 10;
        let data = pattern(3, total);
        let writer = {
            let data = data.clone();
            std::thread::spawn(move || {
                host.write_all(&data).unwrap();
                host
            })
        };
        let mut got = Vec::new();
        while got.len() < total {
            // Take what the device sends without consuming: it must stop at the credit. The
            // first packet is waited for; the window ends after 100 ms without one.
            let mut window = 0usize;
            let mut next = Some(g.recv_for(key));
            while let Some(p) = next {
                if p.hdr.op.get() == op::RW {
                    window += p.data.len();
                    got.extend_from_slice(&p.data);
                } else {
                    assert_eq!(p.hdr.op.get(), op::CREDIT_REQUEST);
                }
                next = g.recv_within(Duration::from_millis(100));
            }
            assert!(
                window <= guest_buf as usize,
                "{window} bytes past a credit of {guest_buf}"
            );
            // Now consume it all and say so.
            let c = g.conns.get_mut(&key).unwrap();
            c.fwd_cnt = c.fwd_cnt.wrapping_add(window as u32);
            g.control(key, op::CREDIT_UPDATE, 0);
        }
        assert!(got == data, "bytes differ");
        drop(writer.join().unwrap());
    });
}

#[test]
fn a_host_that_never_reads_does_not_hold_up_another_connection() {
    on_both_layouts(|| {
        let (scratch, _d, mut g) = setup("stall");
        let stuck_listener = scratch.listen(1300);
        let live_listener = scratch.listen(1301);
        g.connect(41000, 1300, 65536);
        let (_stuck, _) = stuck_listener.accept().unwrap();
        g.connect(41001, 1301, 65536);
        let (mut live, _) = live_listener.accept().unwrap();
        live.set_read_timeout(Some(TIMEOUT)).unwrap();
        // Fill the stuck connection's whole credit (the device buffers it).
        let filler = pattern(1, BUF_ALLOC as usize);
        g.write((41000, 1300), &filler, 65536);
        assert_eq!(g.conns[&(41000, 1300)].credit(), 0);
        for round in 0..20u8 {
            g.write((41001, 1301), &[round; 1000], 4096);
            let mut buf = [0u8; 1000];
            live.read_exact(&mut buf).unwrap();
            assert!(buf.iter().all(|&b| b == round));
            live.write_all(&[round; 10]).unwrap();
            assert_eq!(g.read((41001, 1301), 10), vec![round; 10]);
        }
    });
}

#[test]
fn host_peer_gone_resets_the_guest_connection() {
    on_both_layouts(|| {
        let (scratch, _d, mut g) = setup("gone");
        let listener = scratch.listen(1236);
        g.connect(40003, 1236, 65536);
        let (host, _) = listener.accept().unwrap();
        drop(host);
        // The host's end reaches the guest as SHUTDOWN; data written after is refused with
        // a reset.
        let key = (40003, 1236);
        let p = g.recv_for(key);
        assert_eq!(p.hdr.op.get(), op::SHUTDOWN);
        g.write(key, b"anyone?", 4096);
        assert_eq!(g.recv_for(key).hdr.op.get(), op::RST);
    });
}

#[test]
fn guest_reset_closes_the_host_stream() {
    on_both_layouts(|| {
        let (scratch, _d, mut g) = setup("guestrst");
        let listener = scratch.listen(1237);
        g.connect(40004, 1237, 65536);
        let (mut host, _) = listener.accept().unwrap();
        host.set_read_timeout(Some(TIMEOUT)).unwrap();
        g.control((40004, 1237), op::RST, 0);
        assert_eq!(read_to_end(&mut host), b"");
        // No reset answers a reset.
        assert!(g.recv_within(Duration::from_millis(100)).is_none());
    });
}

#[test]
fn credit_request_is_answered_with_a_credit_update() {
    on_both_layouts(|| {
        let (scratch, _d, mut g) = setup("creditreq");
        let listener = scratch.listen(1238);
        g.connect(40005, 1238, 65536);
        let (_host, _) = listener.accept().unwrap();
        g.control((40005, 1238), op::CREDIT_REQUEST, 0);
        let p = g.recv_for((40005, 1238));
        assert_eq!(p.hdr.op.get(), op::CREDIT_UPDATE);
        assert_eq!(p.hdr.buf_alloc.get(), BUF_ALLOC);
        assert_eq!(p.hdr.fwd_cnt.get(), 0);
    });
}

#[test]
fn front_end_reconnect_closes_host_streams_and_reports_a_transport_reset() {
    on_both_layouts(|| {
        let scratch = Scratch::new("reconnect");
        let _d = InProcess::start(&scratch);
        let listener = scratch.listen(1239);
        let mut host = {
            let mut g = Guest::new(&scratch.socket());
            assert_eq!(g.d.wait_event(&mut g.s, TIMEOUT).unwrap(), 0);
            g.connect(40006, 1239, 65536);
            let (host, _) = listener.accept().unwrap();
            host
            // The session (the front-end) goes away here.
        };
        host.set_read_timeout(Some(TIMEOUT)).unwrap();
        assert_eq!(
            read_to_end(&mut host),
            b"",
            "the host stream outlived the session"
        );
        let mut g = Guest::new(&scratch.socket());
        assert_eq!(g.d.wait_event(&mut g.s, TIMEOUT).unwrap(), 0);
        // Packets of the old connection get a reset; a new one works.
        g.conns.insert(
            (40006, 1239),
            GuestConn {
                guest_port: 40006,
                host_port: 1239,
                buf_alloc: 65536,
                ..GuestConn::default()
            },
        );
        g.control((40006, 1239), op::RW, 0);
        assert_eq!(g.recv_for((40006, 1239)).hdr.op.get(), op::RST);
        assert_eq!(g.connect(40007, 1239, 65536).hdr.op.get(), op::RESPONSE);
    });
}

/// A host listener with a backlog of one, which accepts nothing by itself.
fn small_backlog_listener(scratch: &Scratch, port: u32) -> std::os::unix::net::UnixListener {
    use nix::sys::socket::{bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType};
    let mut path = scratch.uds().into_os_string();
    path.push(format!("_{port}"));
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::empty(),
        None,
    )
    .unwrap();
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &nix::sys::socket::UnixAddr::new(std::path::Path::new(&path)).unwrap(),
    )
    .unwrap();
    listen(&fd, Backlog::new(1).unwrap()).unwrap();
    std::os::unix::net::UnixListener::from(fd)
}

fn request(g: &mut Guest, key: (u32, u32)) {
    g.conns.insert(
        key,
        GuestConn {
            guest_port: key.0,
            host_port: key.1,
            buf_alloc: 65536,
            ..GuestConn::default()
        },
    );
    g.control(key, op::REQUEST, 0);
}

#[test]
fn guest_connections_wait_for_room_in_a_full_backlog_and_are_reset_after_the_wait() {
    on_both_layouts(|| {
        let (scratch, _d, mut g) = setup("backlog");
        let listener = small_backlog_listener(&scratch, 5100);
        // Nobody accepts: the backlog takes two, the others wait and are reset after ~2 s.
        let keys: Vec<_> = (0..4).map(|i| (42_000 + i, 5100)).collect();
        let t0 = std::time::Instant::now();
        for &k in &keys {
            request(&mut g, k);
        }
        let mut answers = Vec::new();
        for &k in &keys {
            answers.push((g.recv_for(k).hdr.op.get(), t0.elapsed()));
        }
        let responses = answers.iter().filter(|a| a.0 == op::RESPONSE).count();
        let resets: Vec<_> = answers.iter().filter(|a| a.0 == op::RST).collect();
        assert_eq!((responses, resets.len()), (2, 2), "{answers:?}");
        assert!(
            resets.iter().all(|a| a.1 >= Duration::from_millis(1500)),
            "refused before waiting: {answers:?}"
        );
        // Drain the backlog; now connections beyond it are served as the host accepts them.
        let accepted: Vec<_> = (0..2).map(|_| listener.accept().unwrap()).collect();
        drop(accepted);
        let acceptor = std::thread::spawn(move || {
            let mut streams = Vec::new();
            for _ in 0..8 {
                std::thread::sleep(Duration::from_millis(20));
                streams.push(listener.accept().unwrap());
            }
            streams
        });
        let keys: Vec<_> = (0..8).map(|i| (43_000 + i, 5100)).collect();
        for &k in &keys {
            request(&mut g, k);
        }
        for &k in &keys {
            assert_eq!(g.recv_for(k).hdr.op.get(), op::RESPONSE, "{k:?}");
        }
        assert_eq!(acceptor.join().unwrap().len(), 8);
    });
}

#[test]
fn host_connection_the_guest_never_answers_is_closed_after_the_wait_and_reset() {
    on_both_layouts(|| {
        let (scratch, _d, mut g) = setup("noanswer");
        let t0 = std::time::Instant::now();
        let mut host = scratch.host_connect(5200);
        let req = g.recv();
        assert_eq!(req.hdr.op.get(), op::REQUEST);
        // The guest says nothing: the host's stream ends without an OK, and the guest's end
        // of the request is reset.
        assert_eq!(read_to_end(&mut host), b"");
        let waited = t0.elapsed();
        assert!(
            waited >= vhost_device_vsock::HOST_CONNECT_WAIT - Duration::from_millis(200),
            "closed after {waited:?}"
        );
        let rst = g.recv_for(key_of(&req));
        assert_eq!(rst.hdr.op.get(), op::RST);
        // An answer that comes too late is reset too.
        let late = g.accept(&req, 65536);
        assert_eq!(g.recv_for(late).hdr.op.get(), op::RST);
    });
}
