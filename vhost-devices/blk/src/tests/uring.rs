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

/// Where request `i` of a batch has its header (status byte after it) and its 4 KiB page.
fn slot(i: u64) -> (u64, u64) {
    (DATA + 0x8000 + i * 32, DATA + 0x10000 + i * 4096)
}

#[test]
fn direct_reads_many_in_flight_complete_each_once_with_their_data() {
    let mut h = direct_uring();
    // Page-aligned 4 KiB reads, so they go to the kernel as they are (no bounce).
    let heads: Vec<u16> = (0..12u64)
        .map(|i| {
            let (hdr, data) = slot(i);
            h.header(hdr, VIRTIO_BLK_T_IN, i * 8);
            h.submit(&[(hdr, 16, false), (data, 4096, true), (hdr + 16, 1, true)])
        })
        .collect();
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
        let (hdr, data) = slot(i);
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
    h.stop_with_30_reads_in_flight();
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
        // CI runs as root: there the test must run, not pass by skipping.
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but a tmpfs cannot be mounted: the ENOSPC test did not run"
        );
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

/// A pipe whose buffer is full: a write to its write end stays in flight until the read end
/// is drained. (read end, write end), both blocking.
fn full_pipe() -> (File, File) {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let (r, w) = nix::unistd::pipe().unwrap();
    let (r, mut w) = (File::from(r), File::from(w));
    fcntl(&w, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).unwrap();
    let chunk = [0u8; 4096];
    while w.write(&chunk).is_ok() {}
    fcntl(&w, FcntlArg::F_SETFL(OFlag::empty())).unwrap();
    (r, w)
}

/// Empties the pipe (its write end is blocking, the read end set non-blocking here).
fn drain(r: &File) {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    fcntl(r, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).unwrap();
    let mut buf = [0u8; 4096];
    let mut r = r;
    while r.read(&mut buf).is_ok_and(|n| n > 0) {}
}

/// An io_uring harness whose queue 0 reads and writes the pipe `to` instead of the image
/// (the rest, and what the ring refuses, is served on the image).
fn uring_on(to: &File, depth: u16) -> Harness {
    let h = Harness::with(|c| c.aio = Aio::IoUring);
    *h.dev.urings[0].lock().unwrap() =
        crate::uring::UringQueue::on_file(to, depth, Scratch::new(None)).unwrap();
    h
}

/// The used entries published so far (after `h.used_seen`), without waiting.
fn used_now(h: &mut Harness) -> Vec<(u16, u32)> {
    h.reap();
    h.queue.publish();
    h.take_used()
}

/// Reaps for `ms` milliseconds, as the worker would; what was published meanwhile.
fn used_after(h: &mut Harness, ms: u64) -> Vec<(u16, u32)> {
    let mut out = Vec::new();
    for _ in 0..ms / 5 {
        out.extend(used_now(h));
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    out
}

/// A flush popped after a write that is still in flight (the "disk" is a full pipe) waits
/// for it, and completes after it; in writeback and in writethrough mode.
#[test]
fn a_flush_waits_for_a_write_in_flight_and_completes_after_it() {
    for writethrough in [false, true] {
        let (r, w) = full_pipe();
        let mut h = uring_on(&w, QSIZE);
        if writethrough {
            h.dev
                .writeback
                .store(0, std::sync::atomic::Ordering::Relaxed);
        }
        h.header(HDR, VIRTIO_BLK_T_OUT, 0);
        let write = h.submit(&[(HDR, 16, false), (BUF, 512, false), (ST, 1, true)]);
        let fhdr = HDR + 0x100;
        h.header(fhdr, VIRTIO_BLK_T_FLUSH, 0);
        let flush = h.submit(&[(fhdr, 16, false), (ST + 1, 1, true)]);
        h.queue.process(&h.dev).unwrap();
        assert_eq!(
            used_after(&mut h, 200),
            vec![],
            "writethrough {writethrough}: the write is in flight, the flush must wait"
        );
        drain(&r);
        let mut used = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while used.len() < 2 {
            assert!(std::time::Instant::now() < deadline, "never completed");
            used.extend(used_after(&mut h, 10));
        }
        let heads: Vec<u16> = used.iter().map(|&(h, _)| h).collect();
        assert_eq!(
            heads,
            vec![write, flush],
            "writethrough {writethrough}: the flush completed before the write"
        );
    }
}

/// When the ring has no room (every slot taken by writes that do not complete), a request
/// is served at once on the image rather than failed.
#[test]
fn a_request_the_ring_has_no_room_for_is_served_on_the_image() {
    let (r, w) = full_pipe();
    // Depth 1: the ring holds two operations (its completion queue's size).
    let mut h = uring_on(&w, 1);
    for i in 0..3u64 {
        let hdr = HDR + i * 0x100;
        let data = BUF + i * 0x1000;
        h.mem
            .write_slice(&[0x40 + i as u8; 512], GuestAddress(data))
            .unwrap();
        h.header(hdr, VIRTIO_BLK_T_OUT, 8 + i);
        h.mem.write_obj(0xffu8, GuestAddress(hdr + 16)).unwrap();
        h.submit(&[(hdr, 16, false), (data, 512, false), (hdr + 16, 1, true)]);
    }
    h.queue.process(&h.dev).unwrap();
    let used = used_now(&mut h);
    assert_eq!(used.len(), 1, "{used:?}");
    assert_eq!(
        h.guest(HDR + 0x200 + 16, 1),
        [VIRTIO_BLK_S_OK],
        "the third write was refused"
    );
    assert_eq!(&h.file()[10 * 512..11 * 512], &[0x42u8; 512][..]);
    drain(&r);
}

/// A device reset forgets the writes in flight of the generation before: a flush after it
/// does not wait for them.
#[test]
fn after_a_reset_a_flush_does_not_wait_for_a_write_of_the_previous_generation() {
    let (r, w) = full_pipe();
    let mut h = uring_on(&w, QSIZE);
    h.header(HDR, VIRTIO_BLK_T_OUT, 0);
    h.submit(&[(HDR, 16, false), (BUF, 512, false), (ST, 1, true)]);
    h.queue.process(&h.dev).unwrap();
    assert_eq!(used_now(&mut h), vec![]);
    h.dev.reset();
    let fhdr = HDR + 0x100;
    h.header(fhdr, VIRTIO_BLK_T_FLUSH, 0);
    let flush = h.submit(&[(fhdr, 16, false), (ST + 1, 1, true)]);
    h.queue.process(&h.dev).unwrap();
    let used = used_after(&mut h, 200);
    assert_eq!(used.len(), 1, "the flush waits for the old write: {used:?}");
    assert_eq!(used[0].0, flush);
    drain(&r);
}

/// The io_uring twin of the I/O threads' panic test: a panic serving a request on the queue's
/// worker answers it VIRTIO_BLK_S_IOERR and the next request is served.
#[test]
fn a_panic_serving_a_request_on_the_uring_worker_leaves_the_queue_working() {
    let mut h = Harness::with(|c| c.aio = Aio::IoUring);
    h.panic_on_next_request();
    h.header(HDR, VIRTIO_BLK_T_GET_ID, 0);
    h.mem.write_obj(VIRTIO_BLK_S_OK, GuestAddress(ST)).unwrap();
    let get_id = h.submit(&[(HDR, 16, false), (BUF, 20, true), (ST, 1, true)]);
    assert_eq!(h.run(), vec![(get_id, 1)]);
    h.answered_ioerr_and_the_queue_still_serves();
    assert_eq!(h.guest(BUF, 512), expected(0, 512));
}

/// A panic starting a request on the io_uring engine (outside `serve`) mid-batch: the
/// requests queued before it are still submitted and complete, the one it hit comes back
/// with length 0, and the queue goes on.
#[test]
fn a_panic_starting_a_request_still_submits_those_queued_before_it() {
    let mut h = Harness::with(|c| c.aio = Aio::IoUring);
    h.dev
        .core
        .panic_starting
        .store(2, std::sync::atomic::Ordering::Relaxed);
    let first_hdr = HDR + 0x100;
    h.header(first_hdr, VIRTIO_BLK_T_IN, 0);
    let first = h.submit(&[(first_hdr, 16, false), (BUF, 512, true), (ST, 1, true)]);
    h.header(HDR, VIRTIO_BLK_T_IN, 1);
    let second = h.submit(&[(HDR, 16, false), (BUF + 512, 512, true), (ST + 1, 1, true)]);
    h.queue.process(&h.dev).unwrap();
    // No kick and no completion event comes to make the worker submit later: what was
    // queued before the panic must be with the kernel now. Only what it posted is taken
    // (`reap_ready` submits nothing).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while h.queue.outstanding() > 0 && std::time::Instant::now() < deadline {
        h.dev.urings[0]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .reap_ready(&h.dev.core);
        h.queue.publish();
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let mut used = h.take_used();
    used.sort_unstable();
    assert_eq!(used, vec![(first, 513), (second, 0)]);
    assert_eq!(h.guest(BUF, 512), expected(0, 512));
    h.header(HDR, VIRTIO_BLK_T_IN, 0);
    let r = h.one(&[(HDR, 16, false), (BUF, 512, true), (ST, 1, true)], ST);
    assert_eq!(r, (513, VIRTIO_BLK_S_OK), "the queue still serves");
}

/// A panic starting requests that comes back batch after batch (a guest repeating what
/// causes it) is logged through the failed requests' rate limit, not once per batch.
#[test]
fn panics_starting_requests_batch_after_batch_are_rate_limited() {
    let mut h = Harness::with(|c| c.aio = Aio::IoUring);
    for i in 0..20u64 {
        h.dev
            .core
            .panic_starting
            .store(1, std::sync::atomic::Ordering::Relaxed);
        h.header(HDR, VIRTIO_BLK_T_IN, i);
        let head = h.submit(&[(HDR, 16, false), (BUF, 512, true), (ST, 1, true)]);
        assert_eq!(h.run(), vec![(head, 0)], "batch {i}");
    }
    // The first BURST in full, the rest counted.
    let burst = u64::from(vhost_backend::runtime::log_limit::BURST);
    assert_eq!(h.dev.core.errors.suppressed(), 20 - burst);
}

/// A submission the kernel refuses for good (not a transient EAGAIN/ENOMEM/EBUSY) fails the
/// requests it carried with IOERR, each returned once; the queue goes on with a new ring.
#[test]
fn a_submission_refused_for_good_fails_its_requests_with_ioerr_and_the_queue_goes_on() {
    let mut h = Harness::with(|c| c.aio = Aio::IoUring);
    let heads: Vec<u16> = (0..3u64)
        .map(|i| {
            let hdr = HDR + i * 0x100;
            h.mem.write_obj(0xffu8, GuestAddress(hdr + 16)).unwrap();
            h.header(hdr, VIRTIO_BLK_T_IN, i);
            h.submit(&[
                (hdr, 16, false),
                (BUF + i * 512, 512, true),
                (hdr + 16, 1, true),
            ])
        })
        .collect();
    h.dev.urings[0]
        .lock()
        .unwrap()
        .fail_next_submit(libc::EINVAL);
    let mut used = h.run();
    used.sort_unstable();
    assert_eq!(used, heads.iter().map(|&x| (x, 1)).collect::<Vec<_>>());
    for i in 0..3u64 {
        assert_eq!(
            h.guest(HDR + i * 0x100 + 16, 1),
            [VIRTIO_BLK_S_IOERR],
            "request {i}"
        );
    }
    assert_eq!(h.dev.urings[0].lock().unwrap().in_flight(), 0);
    // The next requests are served, through a new ring.
    for i in 0..2u64 {
        h.header(HDR, VIRTIO_BLK_T_IN, 5 + i);
        let r = h.one(&[(HDR, 16, false), (BUF, 512, true), (ST, 1, true)], ST);
        assert_eq!(r, (513, VIRTIO_BLK_S_OK), "read {i} after the failure");
        assert_eq!(h.guest(BUF, 512), expected(5 + i, 512));
    }
}

/// DISCARD and WRITE_ZEROES are `fallocate` operations on the ring: an error injected into
/// the ring's next completion fails a write-zeroes with IOERR (served at once it would have
/// succeeded); EOPNOTSUPP (a file system without the mode) is a success for a discard and a
/// fallback to the synchronous zeroing for a write-zeroes.
#[test]
fn discard_and_write_zeroes_are_fallocate_operations_on_the_ring() {
    let mut h = Harness::with(|c| c.aio = Aio::IoUring);
    let bufs = [(HDR, 32, false), (ST, 1, true)];
    let mut want = expected(0, DISK_BYTES);

    h.header(HDR, VIRTIO_BLK_T_WRITE_ZEROES, 0);
    h.segment(HDR + 16, 2, 2, 0);
    assert_eq!(h.one(&bufs, ST), (1, VIRTIO_BLK_S_OK));
    want[2 * 512..4 * 512].fill(0);
    assert_eq!(h.file(), want, "sectors 2 and 3 zeroed");

    fail_next_completion(&h, libc::EIO);
    h.header(HDR, VIRTIO_BLK_T_WRITE_ZEROES, 0);
    h.segment(HDR + 16, 6, 2, 0);
    assert_eq!(
        h.one(&bufs, ST),
        (1, VIRTIO_BLK_S_IOERR),
        "the write-zeroes did not go through the ring"
    );
    // The injected failure rewrites the completion only: the kernel did zero the range.
    want[6 * 512..8 * 512].fill(0);

    fail_next_completion(&h, libc::EOPNOTSUPP);
    h.header(HDR, VIRTIO_BLK_T_WRITE_ZEROES, 0);
    h.segment(HDR + 16, 8, 2, 0);
    assert_eq!(h.one(&bufs, ST), (1, VIRTIO_BLK_S_OK));
    want[8 * 512..10 * 512].fill(0);
    assert_eq!(h.file(), want, "zeroed by the fallback");

    fail_next_completion(&h, libc::EOPNOTSUPP);
    h.header(HDR, VIRTIO_BLK_T_DISCARD, 0);
    h.segment(HDR + 16, 16, 8, 0);
    assert_eq!(h.one(&bufs, ST), (1, VIRTIO_BLK_S_OK), "discard is a hint");
    want[16 * 512..24 * 512].fill(0);

    h.header(HDR, VIRTIO_BLK_T_DISCARD, 0);
    h.segment(HDR + 16, 40, 8, 0);
    assert_eq!(h.one(&bufs, ST), (1, VIRTIO_BLK_S_OK));
    want[40 * 512..48 * 512].fill(0);
    assert_eq!(h.file(), want, "the punched holes read zeros");
    assert_eq!(h.dev.urings[0].lock().unwrap().in_flight(), 0);
}

/// A flush popped after four write-zeroes waits for them (they run in the kernel's workers)
/// and completes after them, in both cache modes. The requests are started by hand and not
/// reaped before the check, so the flush is seen waiting whatever the kernel's timing.
#[test]
fn a_flush_after_a_write_zeroes_completes_after_it() {
    for writethrough in [false, true] {
        let mut h = Harness::with(|c| c.aio = Aio::IoUring);
        let mut wz = Vec::new();
        for i in 0..4u64 {
            let hdr = HDR + i * 0x100;
            h.header(hdr, VIRTIO_BLK_T_WRITE_ZEROES, 0);
            h.segment(hdr + 16, 8 * i, 8, 0);
            wz.push(h.submit(&[(hdr, 32, false), (hdr + 0x40, 1, true)]));
        }
        let fhdr = HDR + 0x800;
        h.header(fhdr, VIRTIO_BLK_T_FLUSH, 0);
        let flush = h.submit(&[(fhdr, 16, false), (fhdr + 16, 1, true)]);
        let keep = vhost_backend::runtime::testing::KeepDevice::new(QSIZE);
        h.queue.process(&keep).unwrap();
        let reqs = keep.take();
        assert_eq!(reqs.len(), 5);
        {
            let mut q = h.dev.urings[0].lock().unwrap();
            for req in reqs {
                q.start(&h.dev.core, req, writethrough);
            }
            assert_eq!(
                q.waiting_flushes(),
                1,
                "writethrough {writethrough}: the flush went before the write-zeroes completed"
            );
            q.submit();
        }
        let mut used = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while used.len() < 5 {
            assert!(std::time::Instant::now() < deadline, "never completed");
            used.extend(used_after(&mut h, 10));
        }
        assert_eq!(used.len(), 5);
        assert_eq!(used[4], (flush, 1), "writethrough {writethrough}: {used:?}");
        let mut heads: Vec<u16> = used[..4].iter().map(|&(h, _)| h).collect();
        heads.sort_unstable();
        assert_eq!(heads, wz);
        for i in 0..4u64 {
            assert_eq!(h.guest(HDR + i * 0x100 + 0x40, 1), [VIRTIO_BLK_S_OK]);
        }
        let mut want = expected(0, DISK_BYTES);
        want[..32 * 512].fill(0);
        assert_eq!(h.file(), want);
    }
}

/// A DISCARD or WRITE_ZEROES whose submission the kernel refuses for good fails with IOERR
/// and leaves the image as it was, whatever the errno (one a failed `fallocate` could also
/// return, for a file system without the mode, must not make it fall back nor succeed).
#[test]
fn a_discard_or_write_zeroes_whose_submission_fails_for_good_is_ioerr() {
    for ty in [VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_T_DISCARD] {
        for errno in [libc::EINVAL, libc::EOPNOTSUPP, libc::ENOSYS] {
            let mut h = Harness::with(|c| c.aio = Aio::IoUring);
            h.dev.urings[0].lock().unwrap().fail_next_submit(errno);
            h.header(HDR, ty, 0);
            h.segment(HDR + 16, 2, 4, 0);
            assert_eq!(
                h.one(&[(HDR, 32, false), (ST, 1, true)], ST),
                (1, VIRTIO_BLK_S_IOERR),
                "type {ty}, errno {errno}"
            );
            assert_eq!(
                h.file(),
                expected(0, DISK_BYTES),
                "type {ty}, errno {errno}: the image changed"
            );
        }
    }
}

/// A write-zeroes the file system cannot zero with `fallocate` is served again at once with
/// the header parsed when it was started: a guest that rewrote the chain meanwhile does not
/// get another request served.
#[test]
fn a_write_zeroes_served_again_keeps_the_header_it_was_started_with() {
    let mut h = Harness::with(|c| c.aio = Aio::IoUring);
    h.header(HDR, VIRTIO_BLK_T_WRITE_ZEROES, 0);
    h.segment(HDR + 16, 2, 2, 0);
    let head = h.submit(&[(HDR, 32, false), (ST, 1, true)]);
    let keep = vhost_backend::runtime::testing::KeepDevice::new(QSIZE);
    h.queue.process(&keep).unwrap();
    let mut reqs = keep.take();
    {
        let mut q = h.dev.urings[0].lock().unwrap();
        q.fail_next_completions(libc::EOPNOTSUPP, 1);
        q.start(&h.dev.core, reqs.pop().unwrap(), false);
        q.submit();
    }
    // The guest turns the request into a GET_ID while it is in flight.
    h.header(HDR, VIRTIO_BLK_T_GET_ID, 0);
    let mut used = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while used.is_empty() {
        assert!(std::time::Instant::now() < deadline, "never completed");
        used.extend(used_after(&mut h, 10));
    }
    assert_eq!(used, vec![(head, 1)]);
    assert_eq!(h.guest(ST, 1), [VIRTIO_BLK_S_OK]);
    let mut want = expected(0, DISK_BYTES);
    want[2 * 512..4 * 512].fill(0);
    assert_eq!(h.file(), want, "sectors 2 and 3 zeroed by the fallback");
}

/// When the ring that would replace a failed one cannot be set up, the ring is retired at
/// once: the next requests are served without trying again for each.
#[test]
fn a_failed_renewal_retires_the_ring_and_requests_are_served_at_once() {
    let mut h = Harness::with(|c| c.aio = Aio::IoUring);
    {
        let mut q = h.dev.urings[0].lock().unwrap();
        q.fail_next_submit(libc::EINVAL);
        q.fail_next_renewals(u32::MAX);
    }
    h.header(HDR, VIRTIO_BLK_T_IN, 1);
    let r = h.one(&[(HDR, 16, false), (BUF, 512, true), (ST, 1, true)], ST);
    assert_eq!(r, (1, VIRTIO_BLK_S_IOERR));
    for i in 0..3u64 {
        h.header(HDR, VIRTIO_BLK_T_IN, i);
        let r = h.one(&[(HDR, 16, false), (BUF, 512, true), (ST, 1, true)], ST);
        assert_eq!(r, (513, VIRTIO_BLK_S_OK), "read {i}");
        assert_eq!(h.guest(BUF, 512), expected(i, 512));
    }
    assert_eq!(
        h.dev.urings[0].lock().unwrap().renewals_tried(),
        1,
        "a new ring was tried for every request"
    );
}

/// Dropping a device whose queues each have a write that never completes waits one drop
/// timeout in all, not one per queue.
#[test]
fn dropping_a_device_waits_one_timeout_for_all_its_rings() {
    let timeout = std::time::Duration::from_millis(400);
    let mut h = Harness::with(|c| {
        c.aio = Aio::IoUring;
        c.num_queues = 3;
    });
    let mut pipes = Vec::new();
    for q in 0..3usize {
        let (r, w) = full_pipe();
        let mut uq = crate::uring::UringQueue::on_file(&w, QSIZE, Scratch::new(None)).unwrap();
        uq.set_drop_timeout(timeout);
        *h.dev.urings[q].lock().unwrap() = uq;
        pipes.push((r, w));
    }
    // A write in flight on each ring: queue 0 through the harness's queue, the others
    // through queues of their own over the same memory.
    h.header(HDR, VIRTIO_BLK_T_OUT, 0);
    h.submit(&[(HDR, 16, false), (BUF, 512, false), (ST, 1, true)]);
    h.queue.process(&h.dev).unwrap();
    let mut others = Vec::new();
    for q in 1..3u16 {
        let base = 0x4_0000 * u64::from(q);
        let tq = TestQueue::new(
            h.mem.clone(),
            RingSpec::split(q, 16, [base, base + 0x1000, base + 0x2000]),
        )
        .unwrap();
        let hdr = base + 0x3000;
        h.header(hdr, VIRTIO_BLK_T_OUT, 0);
        let descs = [
            (hdr, 16u32, 0u16),
            (hdr + 0x100, 512, 0),
            (hdr + 0x80, 1, F_WRITE),
        ];
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let next = if i + 1 < descs.len() { F_NEXT } else { 0 };
            h.write_desc(
                base,
                i as u16,
                SplitDescriptor::new(addr, len, flags | next, i as u16 + 1),
            );
        }
        h.mem
            .write_obj(0u16, GuestAddress(base + 0x1000 + 4))
            .unwrap();
        h.mem
            .write_obj(1u16, GuestAddress(base + 0x1000 + 2))
            .unwrap();
        tq.process(&h.dev).unwrap();
        assert_eq!(
            tq.outstanding(),
            1,
            "queue {q}: the write waits for the pipe"
        );
        others.push(tq);
    }
    for q in 0..3 {
        assert_eq!(h.dev.urings[q].lock().unwrap().in_flight(), 1, "queue {q}");
    }
    let dev = std::mem::replace(
        &mut h.dev,
        BlkDevice::new(&BlkConfig::new(&h.path)).unwrap(),
    );
    let t = std::time::Instant::now();
    drop(dev);
    let took = t.elapsed();
    assert!(took >= timeout, "the drop did not wait ({took:?})");
    assert!(
        took < timeout * 2,
        "three rings waited {took:?}, more than one timeout ({timeout:?}) in all"
    );
    // The writes stay in flight in the leaked rings: the pipes must outlive them.
    std::mem::forget(pipes);
    std::mem::forget(others);
}

/// When the ring that replaced a failed one fails too before serving anything, its
/// requests fail with IOERR and the queue serves every later request at once.
#[test]
fn when_the_new_ring_fails_too_requests_are_served_at_once() {
    let mut h = Harness::with(|c| c.aio = Aio::IoUring);
    for round in 0..2 {
        h.dev.urings[0]
            .lock()
            .unwrap()
            .fail_next_submit(libc::EINVAL);
        h.header(HDR, VIRTIO_BLK_T_IN, 1);
        let r = h.one(&[(HDR, 16, false), (BUF, 512, true), (ST, 1, true)], ST);
        assert_eq!(r, (1, VIRTIO_BLK_S_IOERR), "round {round}");
    }
    for i in 0..3u64 {
        // A failure injected into the ring's completions would reach a read on the ring.
        h.dev.urings[0]
            .lock()
            .unwrap()
            .fail_next_completions(libc::EIO, 1);
        h.header(HDR, VIRTIO_BLK_T_IN, i);
        let r = h.one(&[(HDR, 16, false), (BUF, 512, true), (ST, 1, true)], ST);
        assert_eq!(r, (513, VIRTIO_BLK_S_OK), "read {i} went to the ring");
        assert_eq!(h.guest(BUF, 512), expected(i, 512));
    }
}

/// Makes the first queue's ring report `errno` for its next completion.
fn fail_next_completion(h: &Harness, errno: i32) {
    h.dev.urings[0]
        .lock()
        .unwrap()
        .fail_next_completions(errno, 1);
}
