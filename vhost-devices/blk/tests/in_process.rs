//! The device behind the runtime's daemon in this process, driven by the vhost-frontend
//! session and guest-side virtqueue driver.

mod common;

use common::*;
use vhost_device_blk::config::features;
use vhost_device_blk::BlkConfig;
use vhost_frontend::devices::blk::{
    BlkConfig as ConfigView, BlkRequest, BlkRequests, S_IOERR, S_OK, S_UNSUPP, S_UNWRITTEN, T_IN,
    T_OUT,
};
use vhost_frontend::Session;
use vm_memory::{Bytes, GuestAddress};

const IMAGE: usize = 1 << 20;

fn serve(tag: &str, tweak: impl FnOnce(&mut BlkConfig)) -> (Scratch, InProcess, BlkConfig) {
    let scratch = Scratch::new(tag);
    let mut cfg = BlkConfig::new(scratch.image(IMAGE));
    cfg.serial = "it-serial".into();
    cfg.num_queues = 4;
    tweak(&mut cfg);
    let daemon = InProcess::start(&cfg, &scratch.socket());
    (scratch, daemon, cfg)
}

fn expected(offset: usize, len: usize) -> Vec<u8> {
    (offset..offset + len).map(pattern).collect()
}

#[test]
fn read_returns_image_bytes_and_write_lands_in_image() {
    for_each_layout(|| {
        let (scratch, _d, cfg) = serve("rw", |_| {});
        let mut s = connect(&scratch.socket(), || options(1));
        let mut reqs = BlkRequests::new(&s, 0, 4, 64 * 1024).unwrap();
        let mut buf = vec![0u8; 8192];
        reqs.read(&mut s, 10, &mut buf, TIMEOUT).unwrap();
        assert_eq!(buf, expected(10 * 512, 8192));

        let data: Vec<u8> = (0..4096).map(|i| (i % 251) as u8 ^ 0x5a).collect();
        reqs.write(&mut s, 100, &data, TIMEOUT).unwrap();
        reqs.flush(&mut s, TIMEOUT).unwrap();
        let file = std::fs::read(&cfg.path).unwrap();
        assert_eq!(&file[100 * 512..100 * 512 + 4096], &data[..]);
        reqs.read(&mut s, 100, &mut buf[..4096], TIMEOUT).unwrap();
        assert_eq!(&buf[..4096], &data[..]);
    });
}

#[test]
fn get_id_discard_and_write_zeroes_work() {
    for_each_layout(|| {
        let (scratch, _d, cfg) = serve("misc", |_| {});
        let mut s = connect(&scratch.socket(), || options(1));
        let mut reqs = BlkRequests::new(&s, 0, 2, 4096).unwrap();
        let id = reqs.get_id(&mut s, TIMEOUT).unwrap();
        assert_eq!(&id[..9], b"it-serial");
        assert!(id[9..].iter().all(|&b| b == 0));
        reqs.discard(&mut s, 16, 8, false, TIMEOUT).unwrap();
        reqs.discard(&mut s, 64, 3, true, TIMEOUT).unwrap();
        let file = std::fs::read(&cfg.path).unwrap();
        let mut want = expected(0, IMAGE);
        want[16 * 512..24 * 512].fill(0);
        want[64 * 512..67 * 512].fill(0);
        assert_eq!(file, want);
        // Past the end of the disk.
        let err = reqs.discard(&mut s, (IMAGE / 512) as u64, 1, true, TIMEOUT);
        assert!(err.is_err(), "range past capacity accepted");
    });
}

#[test]
fn config_space_reports_capacity_block_size_and_queues() {
    for_each_layout(|| {
        let (scratch, _d, _cfg) = serve("config", |c| c.logical_block_size = Some(4096));
        let s = connect(&scratch.socket(), || options(1));
        let cfg = ConfigView::parse(s.config().unwrap()).unwrap();
        assert_eq!(cfg.capacity, (IMAGE / 512) as u64);
        assert_eq!(cfg.blk_size, 4096);
        assert_eq!(cfg.num_queues, Some(4));
        assert_eq!(cfg.seg_max, 254);
        let offered = s.offered_features();
        for bit in [
            features::FLUSH,
            features::MQ,
            features::DISCARD,
            features::CONFIG_WCE,
        ] {
            assert_ne!(offered & 1 << bit, 0, "feature {bit} not offered");
        }
        assert_eq!(offered & 1 << features::RO, 0);
    });
}

#[test]
fn multiqueue_every_queue_serves_its_requests() {
    for_each_layout(|| {
        let (scratch, _d, _cfg) = serve("mq", |_| {});
        let mut s = connect(&scratch.socket(), || options(4));
        let mut per_queue: Vec<BlkRequests> = (0..4)
            .map(|q| BlkRequests::new(&s, q, 8, 4096).unwrap())
            .collect();
        for round in 0..3u64 {
            for (q, reqs) in per_queue.iter_mut().enumerate() {
                for k in 0..8u64 {
                    let sector = (q as u64 * 64 + k * 8 + round) % (IMAGE as u64 / 512 - 8);
                    reqs.submit(&mut s, BlkRequest::read(sector, 4096)).unwrap();
                }
            }
            for (q, reqs) in per_queue.iter_mut().enumerate() {
                for _ in 0..8 {
                    let c = reqs.complete(&mut s, TIMEOUT).unwrap();
                    assert_eq!((c.status, c.len), (S_OK, 4097), "queue {q}");
                }
            }
        }
    });
}

#[test]
fn queue_depth_16_batches_return_the_right_data() {
    for_each_layout(|| {
        let (scratch, _d, _cfg) = serve("qd16", |_| {});
        let mut s = connect(&scratch.socket(), || options(1));
        let mut reqs = BlkRequests::new(&s, 0, 16, 4096).unwrap();
        let mut sectors = [0u64; 16];
        for round in 0..20u64 {
            for k in 0..16u64 {
                let sector = (round * 131 + k * 17) * 8 % (IMAGE as u64 / 512 - 8);
                let slot = reqs.submit(&mut s, BlkRequest::read(sector, 4096)).unwrap();
                sectors[slot] = sector;
            }
            for _ in 0..16 {
                let c = reqs.complete(&mut s, TIMEOUT).unwrap();
                assert_eq!(c.status, S_OK);
                let mut got = vec![0u8; 4096];
                reqs.read_data(&s, c.slot, &mut got).unwrap();
                assert_eq!(got, expected(sectors[c.slot] as usize * 512, 4096));
            }
        }
    });
}

/// Buffers for hand-made chains: a header, a data buffer and a status byte.
struct Raw {
    hdr: GuestAddress,
    data: GuestAddress,
    status: GuestAddress,
}

impl Raw {
    fn new(s: &Session) -> Raw {
        let m = s.memory();
        Raw {
            hdr: m.alloc(16, 16).unwrap(),
            data: m.alloc(4096, 4096).unwrap(),
            status: m.alloc(1, 1).unwrap(),
        }
    }

    fn header(&self, s: &Session, ty: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&ty.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        s.memory().mem().write_slice(&h, self.hdr).unwrap();
        s.memory()
            .mem()
            .write_obj(S_UNWRITTEN, self.status)
            .unwrap();
    }

    fn status(&self, s: &Session) -> u8 {
        s.memory().mem().read_obj(self.status).unwrap()
    }
}

#[test]
fn hostile_chains_get_their_status_and_the_queue_keeps_serving() {
    hostile_chains_on("hostile", vhost_device_blk::Aio::Sync);
}

#[test]
fn hostile_chains_get_their_status_and_the_queue_keeps_serving_on_io_uring() {
    hostile_chains_on("hostile-uring", vhost_device_blk::Aio::IoUring);
}

fn hostile_chains_on(tag: &str, aio: vhost_device_blk::Aio) {
    let (scratch, _d, cfg) = serve(tag, |c| c.aio = aio);
    let mut s = connect(&scratch.socket(), || options(1));
    let r = Raw::new(&s);
    let capacity = (IMAGE / 512) as u64;
    // (what, type, sector, chain, expected status, expected used len)
    type Case = (
        &'static str,
        u32,
        u64,
        Vec<(GuestAddress, u32, bool)>,
        u8,
        u32,
    );
    let cases: Vec<Case> = vec![
        (
            "short header",
            T_IN,
            0,
            vec![(r.hdr, 8, false), (r.status, 1, true)],
            S_IOERR,
            1,
        ),
        (
            "read into a device-readable buffer",
            T_IN,
            0,
            vec![
                (r.hdr, 16, false),
                (r.data, 512, false),
                (r.status, 1, true),
            ],
            S_IOERR,
            1,
        ),
        (
            "write from a device-writable buffer",
            T_OUT,
            0,
            vec![(r.hdr, 16, false), (r.data, 512, true), (r.status, 1, true)],
            S_IOERR,
            1,
        ),
        (
            "sector past capacity",
            T_IN,
            capacity,
            vec![(r.hdr, 16, false), (r.data, 512, true), (r.status, 1, true)],
            S_IOERR,
            1,
        ),
        (
            "overflowing sector",
            T_IN,
            u64::MAX - 1,
            vec![(r.hdr, 16, false), (r.data, 512, true), (r.status, 1, true)],
            S_IOERR,
            1,
        ),
        (
            "length not a multiple of 512",
            T_IN,
            0,
            vec![(r.hdr, 16, false), (r.data, 100, true), (r.status, 1, true)],
            S_IOERR,
            1,
        ),
        (
            "data outside guest memory",
            T_IN,
            0,
            vec![
                (r.hdr, 16, false),
                (GuestAddress(1 << 40), 512, true),
                (r.status, 1, true),
            ],
            S_IOERR,
            1,
        ),
        (
            "unknown type",
            77,
            0,
            vec![(r.hdr, 16, false), (r.status, 1, true)],
            S_UNSUPP,
            1,
        ),
        (
            "read-only status byte",
            T_IN,
            0,
            vec![
                (r.hdr, 16, false),
                (r.data, 512, false),
                (r.status, 1, false),
            ],
            S_UNWRITTEN,
            0,
        ),
    ];
    let mut reqs = BlkRequests::new(&s, 0, 1, 4096).unwrap();
    for (what, ty, sector, chain, status, len) in cases {
        r.header(&s, ty, sector);
        let used = s.round_trip(0, &chain, TIMEOUT).unwrap();
        assert_eq!((r.status(&s), used.len), (status, len), "{what}");
        let mut buf = [0u8; 512];
        reqs.read(&mut s, 1, &mut buf, TIMEOUT)
            .unwrap_or_else(|e| panic!("good read after {what}: {e}"));
        assert_eq!(&buf[..], &expected(512, 512)[..], "after {what}");
    }
    assert_eq!(std::fs::read(&cfg.path).unwrap(), expected(0, IMAGE));
}

#[test]
fn read_only_device_offers_ro_and_refuses_writes() {
    for_each_layout(|| {
        let (scratch, _d, cfg) = serve("ro", |c| c.read_only = true);
        let mut s = connect(&scratch.socket(), || options(1));
        assert_ne!(s.offered_features() & 1 << features::RO, 0);
        let mut reqs = BlkRequests::new(&s, 0, 1, 4096).unwrap();
        let err = reqs.write(&mut s, 0, &[1u8; 512], TIMEOUT).unwrap_err();
        assert!(err.to_string().contains("status 1"), "{err}");
        let mut buf = [0u8; 512];
        reqs.read(&mut s, 0, &mut buf, TIMEOUT).unwrap();
        assert_eq!(std::fs::read(&cfg.path).unwrap(), expected(0, IMAGE));
    });
}

#[test]
fn frontend_disconnecting_mid_io_leaves_the_daemon_serving_the_next_one() {
    for_each_layout(|| {
        let (scratch, _d, _cfg) = serve("disconnect", |_| {});
        for _ in 0..3 {
            let mut s = connect(&scratch.socket(), || options(2));
            let mut reqs = BlkRequests::new(&s, 0, 64, 64 * 1024).unwrap();
            for k in 0..64u64 {
                reqs.submit(&mut s, BlkRequest::read(k * 16, 64 * 1024))
                    .unwrap();
            }
            drop(s);
        }
        let mut s = connect(&scratch.socket(), || options(1));
        let mut reqs = BlkRequests::new(&s, 0, 1, 4096).unwrap();
        let mut buf = vec![0u8; 4096];
        reqs.read(&mut s, 8, &mut buf, TIMEOUT).unwrap();
        assert_eq!(buf, expected(8 * 512, 4096));
    });
}

#[test]
fn direct_io_reads_and_writes_page_aligned_buffers() {
    for_each_layout(|| {
        let (scratch, _d, cfg) = serve("direct", |c| c.direct = true);
        let mut s = connect(&scratch.socket(), || options(1));
        let mut reqs = BlkRequests::new(&s, 0, 1, 8192).unwrap();
        let mut buf = vec![0u8; 8192];
        reqs.read(&mut s, 16, &mut buf, TIMEOUT).unwrap();
        assert_eq!(buf, expected(16 * 512, 8192));
        let data = [0x3cu8; 4096];
        reqs.write(&mut s, 24, &data, TIMEOUT).unwrap();
        reqs.discard(&mut s, 40, 8, true, TIMEOUT).unwrap();
        let file = std::fs::read(&cfg.path).unwrap();
        assert_eq!(&file[24 * 512..24 * 512 + 4096], &data[..]);
        assert!(file[40 * 512..48 * 512].iter().all(|&b| b == 0));
    });
}

#[test]
fn io_uring_direct_two_queues_serve_and_get_vring_base_answers_after_every_popped_request() {
    for_each_layout(|| {
        let (scratch, _d, cfg) = serve("uring", |c| {
            c.aio = vhost_device_blk::Aio::IoUring;
            c.direct = true;
            c.num_queues = 2;
        });
        let mut s = connect(&scratch.socket(), || options(2));
        let mut q: Vec<BlkRequests> = (0..2)
            .map(|i| BlkRequests::new(&s, i, 16, 4096).unwrap())
            .collect();
        // Writes on queue 1, then a flush behind them, then reads of them on queue 0.
        let data: Vec<u8> = (0..4096).map(|i| (i % 241) as u8 ^ 0xa5).collect();
        for k in 0..8u64 {
            q[1].write(&mut s, 64 + k * 8, &data, TIMEOUT).unwrap();
        }
        q[1].flush(&mut s, TIMEOUT).unwrap();
        let mut buf = vec![0u8; 4096];
        for k in 0..8u64 {
            q[0].read(&mut s, 64 + k * 8, &mut buf, TIMEOUT).unwrap();
            assert_eq!(buf, data, "block {k}");
        }
        let file = std::fs::read(&cfg.path).unwrap();
        assert_eq!(&file[64 * 512..64 * 512 + 4096], &data[..]);
        // 16 reads in flight, then GET_VRING_BASE: every request popped before it answers is on
        // the used ring by then, none after.
        for k in 0..16u64 {
            q[0].submit(&mut s, BlkRequest::read(k * 8, 4096)).unwrap();
        }
        let base = s.frontend().get_vring_base(0).unwrap();
        let mut used = 0u32;
        while let Ok(c) = q[0].complete(&mut s, std::time::Duration::from_millis(300)) {
            assert_eq!((c.status, c.len), (S_OK, 4097));
            used += 1;
        }
        // The first 16 requests on this ring were the 8 reads above. Packed rings: three
        // descriptors a request, both positions equal, both wrap counters still 1.
        let want = match s.driver(0).unwrap().is_packed() {
            false => 8 + used,
            true => {
                let half = (3 * (8 + used)) | 0x8000;
                half | (half << 16)
            }
        };
        assert_eq!(base, want, "the base counts exactly the requests returned");
    });
}
