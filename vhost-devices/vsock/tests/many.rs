//! 100 connections at once: 50 from the guest to a host echo server, 50 from host processes
//! to a guest echo, each moving 32 KiB both ways, interleaved.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::time::Instant;

use common::*;
use vhost_frontend::devices::vsock::op;

const PER_SIDE: u32 = 50;
const BYTES: usize = 32 * 1024;
const GUEST_BUF: u32 = 1 << 20;

#[test]
fn a_hundred_concurrent_connections_both_ways_carry_their_bytes_intact() {
    let scratch = Scratch::new("many");
    let _d = InProcess::start(&scratch);
    let mut g = Guest::new(&scratch.socket());

    // Host echo server for guest-initiated connections.
    let listener = scratch.listen(6000);
    let echo = std::thread::spawn(move || {
        let mut threads = Vec::new();
        for _ in 0..PER_SIDE {
            let (mut s, _) = listener.accept().unwrap();
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                let mut total = 0;
                loop {
                    match s.read(&mut buf).unwrap() {
                        0 => return total,
                        n => {
                            s.write_all(&buf[..n]).unwrap();
                            total += n;
                        }
                    }
                }
            }));
        }
        threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect::<Vec<_>>()
    });

    let mut outgoing = Vec::new();
    for i in 0..PER_SIDE {
        let key = (10_000 + i, 6000);
        assert_eq!(
            g.connect(key.0, key.1, GUEST_BUF).hdr.op.get(),
            op::RESPONSE
        );
        outgoing.push(key);
    }

    // Host processes connecting into the guest, each checking its echo.
    let hosts: Vec<_> = (0..PER_SIDE)
        .map(|i| {
            let mut s = scratch.host_connect(7000 + i);
            std::thread::spawn(move || {
                read_ok(&mut s);
                let data = pattern(1000 + i, BYTES);
                s.write_all(&data).unwrap();
                let mut back = vec![0u8; BYTES];
                s.read_exact(&mut back).unwrap();
                assert!(back == data, "host connection {i}: echo differs");
            })
        })
        .collect();

    // Interleave the guest's sends over its 50 connections, 4 KiB at a time.
    let sent: HashMap<(u32, u32), Vec<u8>> =
        outgoing.iter().map(|&k| (k, pattern(k.0, BYTES))).collect();
    for off in (0..BYTES).step_by(4096) {
        for k in &outgoing {
            g.write(*k, &sent[k][off..off + 4096], 4096);
        }
    }

    // Serve everything: echoes coming back to the guest, host connections to accept and
    // echo, ends and resets.
    let mut received: HashMap<(u32, u32), Vec<u8>> = HashMap::new();
    let mut incoming = HashSet::new();
    let mut closed = 0;
    let deadline = Instant::now() + TIMEOUT * 6;
    while closed < 2 * PER_SIDE {
        assert!(
            Instant::now() < deadline,
            "{closed} connections closed so far"
        );
        let p = g.recv();
        let key = key_of(&p);
        match p.hdr.op.get() {
            op::REQUEST => {
                g.accept(&p, GUEST_BUF);
                incoming.insert(key);
            }
            op::RW if incoming.contains(&key) => {
                let c = g.conns.get_mut(&key).unwrap();
                c.fwd_cnt += p.data.len() as u32;
                g.write(key, &p.data, 65536);
            }
            op::RW => {
                let c = g.conns.get_mut(&key).unwrap();
                c.fwd_cnt += p.data.len() as u32;
                let r = received.entry(key).or_default();
                r.extend_from_slice(&p.data);
                if r.len() == BYTES {
                    assert!(*r == sent[&key], "guest connection {key:?}: echo differs");
                    g.control(key, op::SHUTDOWN, 3);
                }
            }
            // A host process finished: close our end too.
            op::SHUTDOWN => g.control(key, op::SHUTDOWN, 3),
            op::RST => closed += 1,
            op::CREDIT_UPDATE => {}
            other => panic!("op {other} on {key:?}"),
        }
    }
    for h in hosts {
        h.join().unwrap();
    }
    let totals = echo.join().unwrap();
    assert_eq!(totals, vec![BYTES; PER_SIDE as usize]);
    assert_eq!(incoming.len(), PER_SIDE as usize);
}
