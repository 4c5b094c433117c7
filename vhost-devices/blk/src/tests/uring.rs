//! The io_uring engine on a disk (`O_DIRECT`, so requests really wait for the device), and
//! a host error on every engine: a write that finds the file system full fails with IOERR,
//! and the requests after it are served.

use super::*;

fn direct_uring() -> Harness {
    Harness::with(|c| {
        c.aio = Aio::IoUring;
        c.direct = true;
    })
}

#[test]
fn direct_reads_many_in_flight_complete_each_once_with_their_data() {
    let mut h = direct_uring();
    // Page-aligned 4 KiB reads, so they go to the kernel as they are (no bounce).
    let mut heads = Vec::new();
    for i in 0..12u64 {
        let hdr = DATA + 0x8000 + i * 32;
        h.header(hdr, VIRTIO_BLK_T_IN, i * 8);
        heads.push(h.submit(&[
            (hdr, 16, false),
            (DATA + 0x10000 + i * 4096, 4096, true),
            (hdr + 16, 1, true),
        ]));
    }
    let used = h.run();
    assert_eq!(used.len(), 12);
    let mut seen = std::collections::HashSet::new();
    for (head, len) in used {
        assert!(seen.insert(head), "head {head} twice");
        assert_eq!(len, 4097);
        let i = heads.iter().position(|&x| x == head).unwrap() as u64;
        assert_eq!(
            h.guest(DATA + 0x10000 + i * 4096, 4096),
            expected(i * 8, 4096)
        );
        assert_eq!(h.guest(DATA + 0x8000 + i * 32 + 16, 1), [VIRTIO_BLK_S_OK]);
    }
}

#[test]
fn direct_writes_then_a_flush_land_and_the_flush_completes_last() {
    let mut h = direct_uring();
    let mut writes = Vec::new();
    for i in 0..8u64 {
        let hdr = DATA + 0x8000 + i * 32;
        let data = DATA + 0x10000 + i * 4096;
        h.mem
            .write_slice(&[i as u8 + 1; 4096], GuestAddress(data))
            .unwrap();
        h.header(hdr, VIRTIO_BLK_T_OUT, i * 8);
        writes.push(h.submit(&[(hdr, 16, false), (data, 4096, false), (hdr + 16, 1, true)]));
    }
    let fhdr = DATA + 0x8000 + 8 * 32;
    h.header(fhdr, VIRTIO_BLK_T_FLUSH, 0);
    let flush = h.submit(&[(fhdr, 16, false), (fhdr + 16, 1, true)]);
    let used = h.run();
    assert_eq!(used.len(), 9);
    assert_eq!(
        used[8],
        (flush, 1),
        "the flush completes after the writes: {used:?}"
    );
    let file = h.file();
    for i in 0..8usize {
        assert!(file[i * 4096..(i + 1) * 4096]
            .iter()
            .all(|&b| b == i as u8 + 1));
    }
}

#[test]
fn direct_unaligned_buffers_go_through_the_bounce_buffer() {
    let mut h = direct_uring();
    h.header(HDR, VIRTIO_BLK_T_IN, 3);
    let r = h.one(
        &[(HDR, 16, false), (BUF + 1, 1024, true), (ST, 1, true)],
        ST,
    );
    assert_eq!(r, (1025, VIRTIO_BLK_S_OK));
    assert_eq!(h.guest(BUF + 1, 1024), expected(3, 1024));
}

#[test]
fn direct_stop_with_reads_in_flight_waits_for_them_and_answers_the_base() {
    let mut h = direct_uring();
    h.submit_reads(30);
    h.queue.process(&h.dev).unwrap();
    let base = h.stop_while_reaping();
    assert_eq!(base, 30);
    let used_idx: u16 = h.mem.read_obj(GuestAddress(USED + 2)).unwrap();
    assert_eq!(
        used_idx, 30,
        "every request completed before the stop answered"
    );
    let q = h.dev.urings[0].lock().unwrap();
    assert_eq!(q.in_flight(), 0);
}

/// A small tmpfs mounted for one test (root only); unmounted when dropped.
struct SmallTmpfs(std::path::PathBuf);

impl SmallTmpfs {
    fn mount(bytes: u64) -> Option<SmallTmpfs> {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("vhost-blk-tmpfs-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(&dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            Some(SmallTmpfs(dir))
        } else {
            let _ = std::fs::remove_dir(&dir);
            None
        }
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn a_write_that_finds_the_file_system_full_is_ioerr_and_the_next_requests_are_served() {
    let Some(fs) = SmallTmpfs::mount(256 * 1024) else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    for aio in [Aio::Sync, Aio::Threads(2), Aio::IoUring] {
        let mut h = Harness::try_in(&fs.0, |c| c.aio = aio, None).unwrap();
        // The second half of the image becomes a hole, then the file system is filled up.
        let img = std::fs::OpenOptions::new()
            .write(true)
            .open(&h.path)
            .unwrap();
        crate::file_ops::punch_hole(&img, 32 * 1024, 32 * 1024).unwrap();
        let filler = fs.0.join(format!("filler-{aio:?}"));
        let mut f = File::create(&filler).unwrap();
        let chunk = [0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        drop(f);

        // A write into the hole and a flush behind it, in one batch: the write fails, the
        // flush still completes, after it.
        h.mem
            .write_slice(&[0x5au8; 512], GuestAddress(BUF))
            .unwrap();
        h.mem.write_obj(0xffu8, GuestAddress(ST)).unwrap();
        h.mem.write_obj(0xffu8, GuestAddress(ST + 1)).unwrap();
        h.header(HDR, VIRTIO_BLK_T_OUT, 64 + 8);
        let write = h.submit(&[(HDR, 16, false), (BUF, 512, false), (ST, 1, true)]);
        let fhdr = HDR + 0x100;
        h.header(fhdr, VIRTIO_BLK_T_FLUSH, 0);
        let flush = h.submit(&[(fhdr, 16, false), (ST + 1, 1, true)]);
        let used = h.run();
        assert_eq!(used, vec![(write, 1), (flush, 1)], "{aio:?}");
        assert_eq!(
            h.guest(ST, 2),
            [VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK],
            "{aio:?}: the write into the hole fails, the flush does not"
        );

        h.header(HDR, VIRTIO_BLK_T_IN, 2);
        let r = h.one(&[(HDR, 16, false), (BUF, 512, true), (ST, 1, true)], ST);
        assert_eq!(r, (513, VIRTIO_BLK_S_OK), "{aio:?}: the next read");
        assert_eq!(h.guest(BUF, 512), expected(2, 512));

        h.mem
            .write_slice(&[0x6bu8; 512], GuestAddress(BUF))
            .unwrap();
        h.header(HDR, VIRTIO_BLK_T_OUT, 3);
        let r = h.one(&[(HDR, 16, false), (BUF, 512, false), (ST, 1, true)], ST);
        assert_eq!(
            r,
            (1, VIRTIO_BLK_S_OK),
            "{aio:?}: a write to allocated blocks"
        );
        assert_eq!(&h.file()[3 * 512..4 * 512], &[0x6bu8; 512][..]);
        drop(h);
        std::fs::remove_file(&filler).unwrap();
    }
}
