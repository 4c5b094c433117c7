//! What the configuration space promises holds over the wire: a request as large as
//! `seg_max` × `size_max` is served, `--direct` serves guest buffers wherever they lie, and
//! `writeback` reports the cache mode in force.

mod common;

use common::*;
use vhost_device_blk::config::{features, MAX_DATA_BYTES, WRITEBACK_OFFSET};
use vhost_device_blk::BlkConfig;
use vhost_frontend::devices::blk::{BlkConfig as ConfigView, S_OK, S_UNWRITTEN, T_IN, T_OUT};
use vhost_frontend::{Session, SessionOptions};
use vm_memory::{Bytes, GuestAddress};

fn serve(
    tag: &str,
    image: usize,
    tweak: impl FnOnce(&mut BlkConfig),
) -> (Scratch, InProcess, BlkConfig) {
    let scratch = Scratch::new(tag);
    let mut cfg = BlkConfig::new(scratch.image(image));
    tweak(&mut cfg);
    let daemon = InProcess::start(&cfg, &scratch.socket());
    (scratch, daemon, cfg)
}

fn expected(offset: usize, len: usize) -> Vec<u8> {
    (offset..offset + len).map(pattern).collect()
}

/// Sends `ty` at `sector` with `data` buffers; returns (status, used length).
fn request(s: &mut Session, ty: u32, sector: u64, data: &[(GuestAddress, u32)]) -> (u8, u32) {
    let m = s.memory();
    let hdr = m.alloc(16, 16).unwrap();
    let status = m.alloc(1, 1).unwrap();
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&ty.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    m.mem().write_slice(&h, hdr).unwrap();
    m.mem().write_obj(S_UNWRITTEN, status).unwrap();
    let mut chain = vec![(hdr, 16, false)];
    chain.extend(data.iter().map(|&(a, l)| (a, l, ty == T_IN)));
    chain.push((status, 1, true));
    let used = s.round_trip(0, &chain, TIMEOUT).unwrap();
    (s.memory().mem().read_obj(status).unwrap(), used.len)
}

fn read_guest(s: &Session, at: GuestAddress, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    s.memory().mem().read_slice(&mut v, at).unwrap();
    v
}

#[test]
fn request_of_seg_max_full_segments_is_served_buffered_and_direct() {
    for direct in [false, true] {
        let (scratch, _d, _cfg) = serve("limits", MAX_DATA_BYTES as usize, |c| {
            c.queue_size = 1024;
            c.direct = direct;
        });
        let mut s = connect(&scratch.socket(), || SessionOptions {
            queue_size: 1024,
            memory_size: 2 * MAX_DATA_BYTES + (16 << 20),
            ..options(1)
        });
        let cfg = ConfigView::parse(s.config().unwrap()).unwrap();
        assert_eq!(cfg.seg_max, 1022);
        let total = u64::from(cfg.seg_max) * u64::from(cfg.size_max);
        assert!(
            total <= MAX_DATA_BYTES,
            "{} x {}",
            cfg.seg_max,
            cfg.size_max
        );
        assert!(total > MAX_DATA_BYTES / 2);
        // Every segment full and one byte off alignment: direct I/O copies it all.
        let segs: Vec<(GuestAddress, u32)> = (0..cfg.seg_max)
            .map(|_| {
                let at = s.memory().alloc(u64::from(cfg.size_max) + 1, 4096).unwrap();
                (GuestAddress(at.0 + 1), cfg.size_max)
            })
            .collect();
        let (status, len) = request(&mut s, T_IN, 0, &segs);
        assert_eq!(
            (status, u64::from(len)),
            (S_OK, total + 1),
            "direct {direct}"
        );
        let want = expected(0, total as usize);
        for (i, &(at, l)) in segs.iter().enumerate().step_by(97) {
            let off = i * l as usize;
            let got = read_guest(&s, at, l as usize);
            assert!(
                got == want[off..off + l as usize],
                "segment {i}, direct {direct}"
            );
        }
        let (last, l) = segs[segs.len() - 1];
        let got = read_guest(&s, last, l as usize);
        assert!(
            got == want[want.len() - l as usize..],
            "last segment, direct {direct}"
        );
    }
}

#[test]
fn direct_io_serves_blocks_split_over_descriptors_at_any_address() {
    let (scratch, _d, cfg) = serve("direct-split", 1 << 20, |c| c.direct = true);
    let mut s = connect(&scratch.socket(), || options(1));
    let m = s.memory();
    let a = m.alloc(4096, 4096).unwrap();
    let b = m.alloc(4096, 4096).unwrap();
    // One 512-byte block in two 256-byte halves; then one at an odd address.
    let (status, len) = request(&mut s, T_IN, 3, &[(a, 256), (b, 256)]);
    assert_eq!((status, len), (S_OK, 513));
    assert_eq!(read_guest(&s, a, 256), expected(3 * 512, 256));
    assert_eq!(read_guest(&s, b, 256), expected(3 * 512 + 256, 256));
    let odd = GuestAddress(a.0 + 7);
    let (status, len) = request(&mut s, T_IN, 5, &[(odd, 1024)]);
    assert_eq!((status, len), (S_OK, 1025));
    assert_eq!(read_guest(&s, odd, 1024), expected(5 * 512, 1024));
    // A write from the same kinds of buffers lands in the image.
    let data: Vec<u8> = (0..1024u32).map(|i| (i % 199) as u8).collect();
    s.memory().mem().write_slice(&data[..256], a).unwrap();
    s.memory().mem().write_slice(&data[256..], b).unwrap();
    let (status, _) = request(&mut s, T_OUT, 10, &[(a, 256), (b, 768)]);
    assert_eq!(status, S_OK);
    let file = std::fs::read(&cfg.path).unwrap();
    assert_eq!(&file[10 * 512..12 * 512], &data[..]);
}

fn writeback_field(s: &mut Session) -> u8 {
    let off = WRITEBACK_OFFSET as u32;
    s.frontend().get_config(off, 1, 0).unwrap()[0]
}

/// Writes `value` to the writeback field with SET_CONFIG.
fn set_writeback(s: &mut Session, value: u8) {
    let off = WRITEBACK_OFFSET as u32;
    s.frontend().set_config(off, &[value], 0).unwrap();
}

#[test]
fn writeback_field_reads_zero_without_flush_and_follows_set_config_with_it() {
    let (scratch, _d, _cfg) = serve("wce", 1 << 20, |_| {});
    let mut s = connect(&scratch.socket(), || SessionOptions {
        mask_features: options(1).mask_features | 1 << features::FLUSH,
        ..options(1)
    });
    assert_eq!(s.features() & 1 << features::FLUSH, 0);
    assert_eq!(writeback_field(&mut s), 0);
    set_writeback(&mut s, 1);
    assert_eq!(writeback_field(&mut s), 0);
    drop(s);
    let mut s = connect(&scratch.socket(), || options(1));
    assert_ne!(s.features() & 1 << features::FLUSH, 0);
    assert_eq!(writeback_field(&mut s), 1);
    set_writeback(&mut s, 0);
    assert_eq!(writeback_field(&mut s), 0);
    set_writeback(&mut s, 1);
    assert_eq!(writeback_field(&mut s), 1);
}
