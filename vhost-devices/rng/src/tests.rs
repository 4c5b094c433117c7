//! Unit tests of the device: configuration checks and filling guest memory.

use std::time::Duration;

use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::*;

fn limit(ms: u64, max_bytes: u64) -> Option<RateLimit> {
    Some(RateLimit {
        period: Duration::from_millis(ms),
        max_bytes,
    })
}

#[test]
fn default_config_builds_an_entropy_device_with_one_queue() {
    let d = RngDevice::new(&RngConfig::default()).unwrap();
    assert_eq!(d.device_type(), VIRTIO_ID_RNG);
    assert_eq!(d.num_queues(), 1);
    assert_eq!(d.max_queue_size(), MAX_QUEUE_SIZE);
    assert_eq!(d.features(), 0);
    assert_eq!(d.config_size(), 0);
    assert!(d.worker_fds(0).is_empty(), "no timer without a rate limit");
}

#[test]
fn zero_period_or_zero_budget_is_refused() {
    for rate_limit in [limit(0, 10), limit(10, 0)] {
        let cfg = RngConfig {
            rate_limit,
            ..RngConfig::default()
        };
        let e = RngDevice::new(&cfg).unwrap_err();
        assert!(matches!(e, RngError::InvalidRateLimit(_)), "{e}");
    }
}

#[test]
fn period_over_one_hour_is_refused_and_one_hour_is_accepted() {
    for (period, accepted) in [
        (MAX_PERIOD, true),
        (MAX_PERIOD + Duration::from_nanos(1), false),
        (Duration::MAX, false),
    ] {
        let cfg = RngConfig {
            rate_limit: Some(RateLimit {
                period,
                max_bytes: 1,
            }),
            ..RngConfig::default()
        };
        match RngDevice::new(&cfg) {
            Ok(_) => assert!(accepted, "period {period:?} accepted"),
            Err(e) => {
                assert!(!accepted, "period {period:?} refused: {e}");
                assert!(matches!(e, RngError::InvalidRateLimit(_)), "{e}");
            }
        }
    }
}

#[test]
fn queue_size_not_a_power_of_two_is_refused() {
    let cfg = RngConfig {
        queue_size: 100,
        ..RngConfig::default()
    };
    assert!(matches!(
        RngDevice::new(&cfg),
        Err(RngError::InvalidQueueSize(100))
    ));
}

#[test]
fn missing_source_file_is_refused_with_its_path() {
    let cfg = RngConfig {
        source: Some("/nonexistent/entropy".into()),
        ..RngConfig::default()
    };
    let e = RngDevice::new(&cfg).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/entropy"), "{e}");
}

#[test]
fn rate_limited_device_gives_its_timer_to_the_worker() {
    let cfg = RngConfig {
        rate_limit: limit(100, 4096),
        ..RngConfig::default()
    };
    let d = RngDevice::new(&cfg).unwrap();
    let fds = d.worker_fds(0);
    assert_eq!(fds.len(), 1);
    assert_eq!(fds[0].token, TIMER_TOKEN);
    assert!(!d.handle_event(0, TIMER_TOKEN + 1).unwrap());
}

/// Rings live in a region of their own at RINGS.
const RINGS: u64 = 0x10_0000;

/// Serves one chain of device-writable buffers through the runtime's test queue; returns
/// the used length.
fn serve(regions: &[(GuestAddress, usize)], bufs: &[(u64, u32)]) -> (GuestMemoryMmap, u32) {
    let d = RngDevice::new(&RngConfig::default()).unwrap();
    let (mem, len) = serve_on(&d, regions, bufs);
    (mem, len.expect("the chain was served"))
}

/// A 16-entry split queue with its rings at `RINGS` of `mem`, and one chain made available
/// in it: the device-writable buffers `bufs` (address, length), in order.
fn queue_with_one_chain(
    mem: &GuestMemoryMmap,
    bufs: &[(u64, u32)],
) -> vhost_backend::runtime::testing::TestQueue {
    for (i, &(addr, len)) in bufs.iter().enumerate() {
        let at = GuestAddress(RINGS + 16 * i as u64);
        let last = i + 1 == bufs.len();
        let flags: u16 = 2 | if last { 0 } else { 1 };
        mem.write_obj(addr, at).unwrap();
        mem.write_obj(len, at.unchecked_add(8)).unwrap();
        mem.write_obj(flags, at.unchecked_add(12)).unwrap();
        mem.write_obj(i as u16 + 1, at.unchecked_add(14)).unwrap();
    }
    mem.write_obj(0u16, GuestAddress(RINGS + 0x204)).unwrap();
    mem.write_obj(1u16, GuestAddress(RINGS + 0x202)).unwrap();
    vhost_backend::runtime::testing::TestQueue::new(
        mem.clone(),
        vhost_backend::runtime::testing::RingSpec::split(
            0,
            16,
            [RINGS, RINGS + 0x200, RINGS + 0x400],
        ),
    )
    .unwrap()
}

/// [`serve`] on device `d`; `None` when the device left the chain in the ring (paused).
fn serve_on(
    d: &RngDevice,
    regions: &[(GuestAddress, usize)],
    bufs: &[(u64, u32)],
) -> (GuestMemoryMmap, Option<u32>) {
    let mut all = regions.to_vec();
    all.push((GuestAddress(RINGS), 0x1000));
    let mem = GuestMemoryMmap::from_ranges(&all).unwrap();
    let q = queue_with_one_chain(&mem, bufs);
    q.process(d).unwrap();
    let used = mem.read_obj::<u16>(GuestAddress(RINGS + 0x402)).unwrap();
    let len = mem.read_obj::<u32>(GuestAddress(RINGS + 0x408)).unwrap();
    (mem, (used == 1).then_some(len))
}

/// With logging on, the pages the device filled and the used ring's page are marked in the
/// dirty log, and nothing else.
#[test]
fn fill_marks_the_pages_written_in_the_dirty_log() {
    use std::os::fd::AsFd;
    let d = RngDevice::new(&RngConfig::default()).unwrap();
    let mem =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000), (GuestAddress(RINGS), 0x1000)])
            .unwrap();
    // Two descriptors: 0x1800 bytes from 0x3800 (pages 3 to 4) and 1 byte at 0x9fff (page 9).
    let q = queue_with_one_chain(&mem, &[(0x3800, 0x1800), (0x9fff, 1)]);
    let end = RINGS + 0x1000;
    let log = vhost_frontend::DirtyLogArea::new(end).unwrap();
    let fd = log.file().as_fd().try_clone_to_owned().unwrap();
    q.dirty_log().set_base(fd, log.size(), 0, end).unwrap();
    q.dirty_log().set_enabled(true);
    q.process(&d).unwrap();
    assert_eq!(mem.read_obj::<u16>(GuestAddress(RINGS + 0x402)).unwrap(), 1);
    assert_eq!(
        mem.read_obj::<u32>(GuestAddress(RINGS + 0x408)).unwrap(),
        0x1801
    );
    let used_page = (RINGS + 0x400) / 4096;
    assert_eq!(log.dirty_pages().unwrap(), vec![3, 4, 9, used_page]);
}

#[test]
fn state_carries_the_spent_budget_to_another_device() {
    let cfg = RngConfig {
        rate_limit: limit(60_000, 100),
        ..RngConfig::default()
    };
    let regions = [(GuestAddress(0), 0x1000)];
    let a = RngDevice::new(&cfg).unwrap();
    assert!(a.supports_state_transfer());
    let (_, len) = serve_on(&a, &regions, &[(0, 0x80)]);
    assert_eq!(len, Some(100), "the whole budget");
    let state = a.snapshot().unwrap();
    let saved = RngState::decode(&state).unwrap();
    assert!(saved.limited);
    assert_eq!(saved.used, 100);

    // A fresh device would serve at once; one restored from `a` has nothing left.
    let fresh = RngDevice::new(&cfg).unwrap();
    assert_eq!(serve_on(&fresh, &regions, &[(0, 0x10)]).1, Some(16));
    let b = RngDevice::new(&cfg).unwrap();
    b.restore(&state).unwrap();
    assert_eq!(serve_on(&b, &regions, &[(0, 0x10)]).1, None, "paused");

    // Malformed state is refused; a device without a limit takes any valid state.
    for bad in [
        &state[..21],
        &b"VRNG\x02\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0"[..],
    ] {
        assert!(b.restore(bad).is_err());
    }
    let mut flag = state.clone();
    flag[5] = 2;
    assert!(b.restore(&flag).is_err());
    let unlimited = RngDevice::new(&RngConfig::default()).unwrap();
    unlimited.restore(&state).unwrap();
    assert!(
        !RngState::decode(&unlimited.snapshot().unwrap())
            .unwrap()
            .limited
    );
}

#[test]
fn buffer_across_two_adjacent_regions_is_filled_completely() {
    let regions = [(GuestAddress(0), 0x1000), (GuestAddress(0x1000), 0x1000)];
    let (mem, len) = serve(&regions, &[(0x800, 0x1000)]);
    assert_eq!(len, 0x1000);
    let mut got = vec![0u8; 0x1000];
    mem.read_slice(&mut got, GuestAddress(0x800)).unwrap();
    assert!(got[..0x800].iter().any(|&b| b != 0));
    assert!(got[0x800..].iter().any(|&b| b != 0));
}

#[test]
fn buffer_running_past_guest_memory_ends_the_chain_with_what_was_written() {
    let regions = [(GuestAddress(0), 0x1000)];
    let (_, len) = serve(&regions, &[(0, 0x100), (0xf00, 0x200)]);
    assert_eq!(len, 0x100, "the first buffer only");
    let (_, len) = serve(&regions, &[(0x5000, 0x10)]);
    assert_eq!(len, 0);
    let (_, len) = serve(&regions, &[(u64::MAX - 4, 0x10)]);
    assert_eq!(len, 0);
}

#[test]
fn chain_longer_than_the_runtime_records_reports_only_bytes_it_filled_in_order() {
    // An indirect table of 2100 one-byte writable buffers at guest 0..2100.
    const N: u64 = 2100;
    const TABLE: u64 = 0x2_0000;
    let mem = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), 0x1_0000),
        (GuestAddress(TABLE), 0x1_0000),
        (GuestAddress(RINGS), 0x1000),
    ])
    .unwrap();
    for i in 0..N {
        let at = GuestAddress(TABLE + 16 * i);
        let last = i + 1 == N;
        mem.write_obj(i, at).unwrap();
        mem.write_obj(1u32, at.unchecked_add(8)).unwrap();
        mem.write_obj(2u16 | if last { 0 } else { 1 }, at.unchecked_add(12))
            .unwrap();
        mem.write_obj(i as u16 + 1, at.unchecked_add(14)).unwrap();
    }
    mem.write_obj(TABLE, GuestAddress(RINGS)).unwrap();
    mem.write_obj((N * 16) as u32, GuestAddress(RINGS + 8))
        .unwrap();
    mem.write_obj(4u16, GuestAddress(RINGS + 12)).unwrap();
    mem.write_obj(0u16, GuestAddress(RINGS + 0x204)).unwrap();
    mem.write_obj(1u16, GuestAddress(RINGS + 0x202)).unwrap();
    let q = vhost_backend::runtime::testing::TestQueue::new(
        mem.clone(),
        vhost_backend::runtime::testing::RingSpec::split(
            0,
            16,
            [RINGS, RINGS + 0x200, RINGS + 0x400],
        ),
    )
    .unwrap();
    let d = RngDevice::new(&RngConfig::default()).unwrap();
    q.process(&d).unwrap();
    let len = mem.read_obj::<u32>(GuestAddress(RINGS + 0x408)).unwrap();
    // The bytes reported are the first ones of the chain, each filled; none past them.
    assert_eq!(
        len as usize,
        vhost_backend::runtime::MAX_REQUEST_BUFFERS,
        "used length"
    );
}
