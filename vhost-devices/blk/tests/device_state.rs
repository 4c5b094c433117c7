//! Device state over SET_DEVICE_STATE_FD between two daemons, as a migration moves it: the
//! cache mode the driver chose comes over; a daemon serving another disk refuses the state.

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};

use common::*;
use vhost_device_blk::config::WRITEBACK_OFFSET;
use vhost_device_blk::BlkConfig;
use vhost_frontend::Session;
use vhost_proto::wire::{TRANSFER_LOAD, TRANSFER_SAVE};
use vhost_proto::ProtocolFeatures;

const IMAGE: usize = 1 << 20;

fn pipe() -> (File, File) {
    let (r, w): (OwnedFd, OwnedFd) = nix::unistd::pipe().unwrap();
    (File::from(r), File::from(w))
}

fn writeback(s: &mut Session) -> u8 {
    s.frontend().get_config(0, 60, 0).unwrap()[WRITEBACK_OFFSET]
}

/// Starts a transfer in `direction` over `fd`; the back-end gives no descriptor back.
fn start_transfer(s: &mut Session, direction: u32, fd: &File) {
    let back = s
        .frontend()
        .set_device_state_fd(direction, 0, fd.as_fd())
        .unwrap();
    assert!(back.is_none());
}

fn save(s: &mut Session) -> Vec<u8> {
    let (mut r, w) = pipe();
    start_transfer(s, TRANSFER_SAVE, &w);
    drop(w);
    let mut state = Vec::new();
    r.read_to_end(&mut state).unwrap();
    s.frontend().check_device_state().unwrap();
    state
}

/// Loads `state`; the outcome CHECK_DEVICE_STATE reports.
fn load(s: &mut Session, state: &[u8]) -> bool {
    let (r, mut w) = pipe();
    start_transfer(s, TRANSFER_LOAD, &r);
    drop(r);
    w.write_all(state).unwrap();
    drop(w);
    s.frontend().check_device_state().is_ok()
}

#[test]
fn the_drivers_cache_mode_moves_to_the_destination_and_another_disk_refuses_it() {
    let src = Scratch::new("state-src");
    let img = src.image(IMAGE);
    let _a = InProcess::start(&BlkConfig::new(&img), &src.socket());
    let mut a = connect(&src.socket(), || options(1));
    assert!(a.acked_protocol().contains(ProtocolFeatures::DEVICE_STATE));
    assert_eq!(writeback(&mut a), 1, "writeback by default");
    a.frontend()
        .set_config(WRITEBACK_OFFSET as u32, &[0], 0)
        .unwrap();
    assert_eq!(writeback(&mut a), 0);
    a.stop().unwrap();
    let state = save(&mut a);

    // The destination: another daemon on the same image.
    let dst = Scratch::new("state-dst");
    let _b = InProcess::start(&BlkConfig::new(&img), &dst.socket());
    let mut b = connect(&dst.socket(), || options(1));
    b.stop().unwrap();
    assert_eq!(writeback(&mut b), 1);
    assert!(load(&mut b, &state));
    assert_eq!(
        writeback(&mut b),
        0,
        "the driver's writethrough choice came over"
    );
    b.start().unwrap();
    assert_eq!(writeback(&mut b), 0);

    // A daemon serving a disk of another size refuses it, and keeps its own mode.
    let other = Scratch::new("state-other");
    let _c = InProcess::start(&BlkConfig::new(other.image(2 * IMAGE)), &other.socket());
    let mut c = connect(&other.socket(), || options(1));
    c.stop().unwrap();
    assert!(!load(&mut c, &state), "state of another disk was taken");
    assert!(!load(&mut c, b"garbage"));
    assert_eq!(writeback(&mut c), 1);

    // So does a daemon on the same image with two queues, or another block size.
    for (tag, set) in [
        (
            "state-queues",
            (|c: &mut BlkConfig| c.num_queues = 2) as fn(&mut BlkConfig),
        ),
        ("state-bs", |c: &mut BlkConfig| {
            c.logical_block_size = Some(4096)
        }),
    ] {
        let d = Scratch::new(tag);
        let mut cfg = BlkConfig::new(&img);
        set(&mut cfg);
        let _daemon = InProcess::start(&cfg, &d.socket());
        let mut s = connect(&d.socket(), || options(cfg.num_queues));
        s.stop().unwrap();
        assert!(
            !load(&mut s, &state),
            "{tag}: state of another geometry was taken"
        );
        assert_eq!(writeback(&mut s), 1);
    }
}
