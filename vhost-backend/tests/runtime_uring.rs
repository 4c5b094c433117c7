//! The runtime's io_uring guest I/O (`runtime::uring`) over a pipe, whose reads stay in
//! flight until the test writes: a request stays outstanding after `process_queue` returns,
//! the ring's eventfd says when it completed, a short read goes on for the rest, a stop
//! (GET_VRING_BASE) waits for the read in flight, and dropping the ring waits for it too.
#![cfg(target_os = "linux")]

use std::fs::File;
use std::io::Write;
use std::os::fd::BorrowedFd;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use vhost_backend::runtime::testing::{RingSpec, TestQueue};
use vhost_backend::runtime::{
    DeviceError, GuestUring, Processed, QueueContext, Reaped, Refused, VirtioDevice,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Reads each request's writable bytes from the pipe.
struct PipeReader(Mutex<GuestUring<()>>);

impl PipeReader {
    /// Completes what the ring finished: the writable length, or 0 on an error.
    fn reap(&self) -> usize {
        let mut out = Vec::new();
        self.0.lock().unwrap().reap(&mut out);
        let n = out.len();
        for Reaped { req, result, .. } in out {
            let len = if result.is_ok() {
                req.writable_len() as u32
            } else {
                0
            };
            req.complete(len);
        }
        n
    }

    fn eventfd_readable(&self, timeout_ms: u16) -> bool {
        let fd = self.0.lock().unwrap().eventfd();
        // SAFETY: the ring's eventfd stays open while the ring lives, which is longer than
        // this borrow.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::from(timeout_ms)).unwrap() == 1
    }
}

/// Queues on `ring` a read into the whole device-writable part of each request popped,
/// hands what the ring refuses to `refused`, and submits.
fn read_into_each(
    ring: &Mutex<GuestUring<()>>,
    ctx: &mut QueueContext<'_>,
    mut refused: impl FnMut(Refused<()>),
) -> Result<Processed, DeviceError> {
    let mut u = ring.lock().unwrap();
    while let Some(req) = ctx.pop() {
        let len = req.writable_len();
        if let Err(r) = u.read_to_writable(req, 0, len, None, ()) {
            refused(r);
        }
    }
    u.submit()?;
    Ok(Processed::Drained)
}

impl VirtioDevice for PipeReader {
    vhost_test_support::device_basics!(self; device_type: 4, queues: 1, max_queue_size: 16);
    fn process_queue(&self, ctx: &mut QueueContext<'_>) -> Result<Processed, DeviceError> {
        read_into_each(&self.0, ctx, |r| panic!("refused: {}", r.error))
    }
}

const LEN: usize = 64;
const BUF: u64 = 0x8000;

/// The buffer at `BUF` holds [`data`].
fn assert_data_in_buffer(mem: &GuestMemoryMmap) {
    let mut got = vec![0u8; LEN];
    mem.read_slice(&mut got, GuestAddress(BUF)).unwrap();
    assert_eq!(got, data());
}

/// Guest memory with one writable 64-byte descriptor available as head 0, its queue, the
/// device over a fresh pipe, and the pipe's write end.
fn setup() -> (GuestMemoryMmap, TestQueue, PipeReader, File) {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
    mem.write_obj(BUF, GuestAddress(0x1000)).unwrap();
    mem.write_obj(LEN as u32, GuestAddress(0x1008)).unwrap();
    mem.write_obj(2u16, GuestAddress(0x100c)).unwrap(); // VRING_DESC_F_WRITE
    mem.write_obj(0u16, GuestAddress(0x2004)).unwrap();
    mem.write_obj(1u16, GuestAddress(0x2002)).unwrap();
    let q = TestQueue::new(
        mem.clone(),
        RingSpec::split(0, 16, [0x1000, 0x2000, 0x3000]),
    )
    .unwrap();
    let (r, w) = nix::unistd::pipe().unwrap();
    let dev = PipeReader(Mutex::new(GuestUring::new(&File::from(r), 16).unwrap()));
    (mem, q, dev, File::from(w))
}

fn data() -> Vec<u8> {
    (0..LEN as u8).map(|i| i.wrapping_mul(13) ^ 0x5a).collect()
}

#[test]
fn a_stop_waits_for_a_read_in_flight_and_a_short_read_goes_on_for_the_rest() {
    let (mem, q, dev, mut w) = setup();
    q.process(&dev).unwrap();
    assert_eq!(q.outstanding(), 1, "the read waits for the pipe");
    assert_eq!(dev.reap(), 0);
    let want = data();
    // Part of the data: the kernel completes the read short, the ring asks for the rest.
    w.write_all(&want[..20]).unwrap();
    assert!(
        dev.eventfd_readable(5000),
        "the eventfd announces the completion"
    );
    assert_eq!(dev.reap(), 0, "a short read is not finished");
    assert_eq!(q.outstanding(), 1);
    std::thread::scope(|s| {
        let stop = s.spawn(|| q.stop(Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(100));
        assert!(!stop.is_finished(), "the stop waits for the read in flight");
        w.write_all(&want[20..]).unwrap();
        // What the queue's worker does meanwhile: reap when the eventfd says so.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !stop.is_finished() {
            assert!(Instant::now() < deadline, "the stop never returned");
            if dev.eventfd_readable(10) {
                dev.reap();
            }
        }
        assert_eq!(
            stop.join().unwrap().unwrap(),
            1,
            "the base after the one request"
        );
    });
    assert_eq!(mem.read_obj::<u16>(GuestAddress(0x3002)).unwrap(), 1);
    assert_eq!(
        mem.read_obj::<u32>(GuestAddress(0x3008)).unwrap(),
        LEN as u32
    );
    let mut got = vec![0u8; LEN];
    mem.read_slice(&mut got, GuestAddress(BUF)).unwrap();
    assert_eq!(got, want, "both parts landed in guest memory, in order");
}

#[test]
fn dropping_the_ring_waits_for_the_read_in_flight() {
    let (mem, q, dev, mut w) = setup();
    q.process(&dev).unwrap();
    assert_eq!(q.outstanding(), 1);
    std::thread::scope(|s| {
        let dropped = s.spawn(move || drop(dev));
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            !dropped.is_finished(),
            "the ring went away with the kernel still holding guest buffers"
        );
        w.write_all(&data()).unwrap();
        dropped.join().unwrap();
    });
    // Returned at shutdown with length 0, its data in place.
    q.publish();
    assert_eq!(mem.read_obj::<u16>(GuestAddress(0x3002)).unwrap(), 1);
    assert_eq!(mem.read_obj::<u32>(GuestAddress(0x3008)).unwrap(), 0);
    assert_data_in_buffer(&mem);
}

/// A read that lands in part, then fails (the pipe closes before the rest), still marks the
/// pages it wrote in the dirty log.
#[test]
fn a_read_that_lands_in_part_then_fails_marks_its_pages() {
    use std::os::fd::AsFd;
    let (_mem, q, dev, mut w) = setup();
    let log = File::from(
        nix::sys::memfd::memfd_create(c"uring-log", nix::sys::memfd::MFdFlags::MFD_ALLOW_SEALING)
            .unwrap(),
    );
    log.set_len(4096).unwrap();
    q.dirty_log()
        .set_base(log.as_fd().try_clone_to_owned().unwrap(), 4096, 0, 0x10000)
        .unwrap();
    q.dirty_log().set_enabled(true);
    q.process(&dev).unwrap();
    w.write_all(&data()[..20]).unwrap();
    assert!(dev.eventfd_readable(5000));
    assert_eq!(dev.reap(), 0, "a short read is not finished");
    drop(w);
    let deadline = Instant::now() + Duration::from_secs(10);
    while dev.reap() == 0 {
        assert!(Instant::now() < deadline, "the read never failed");
        dev.eventfd_readable(100);
    }
    q.publish();
    use std::os::unix::fs::FileExt;
    let mut b = [0u8; 2];
    log.read_exact_at(&mut b, 0).unwrap();
    let page = BUF / 4096;
    assert_ne!(
        b[(page / 8) as usize] & (1 << (page % 8)),
        0,
        "the 20 bytes that landed were not marked"
    );
}

/// Polls `dev`'s eventfd and reaps until a request comes back or `timeout` passes, like the
/// queue's worker does; nothing else submits or kicks meanwhile. The requests reaped.
fn reap_within(dev: &PipeReader, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        if dev.eventfd_readable(10) {
            let n = dev.reap();
            if n > 0 {
                return n;
            }
        }
        if Instant::now() >= deadline {
            return 0;
        }
    }
}

/// A submission that fails (EAGAIN) is tried again by the ring itself: its eventfd fires
/// and the read completes without another kick or submission.
#[test]
fn a_failed_submission_is_retried_without_a_kick() {
    let (mem, q, dev, mut w) = setup();
    w.write_all(&data()).unwrap();
    dev.0.lock().unwrap().fail_next_submit(libc::EAGAIN);
    q.process(&dev).unwrap();
    assert_eq!(q.outstanding(), 1);
    assert_eq!(
        reap_within(&dev, Duration::from_secs(1)),
        1,
        "the read queued before the failed submission never completed"
    );
    q.publish();
    assert_eq!(
        mem.read_obj::<u32>(GuestAddress(0x3008)).unwrap(),
        LEN as u32
    );
    assert_data_in_buffer(&mem);
}

/// An operation that keeps completing with EAGAIN is not queued again for ever: it fails
/// after a bounded number of tries.
#[test]
fn an_operation_that_keeps_failing_with_eagain_fails_after_a_few_tries() {
    let (mem, q, dev, mut w) = setup();
    // Enough data for 40 tries; each try consumes LEN bytes.
    for _ in 0..40 {
        w.write_all(&data()).unwrap();
    }
    dev.0
        .lock()
        .unwrap()
        .fail_next_completions(libc::EAGAIN, 1000);
    q.process(&dev).unwrap();
    assert_eq!(
        reap_within(&dev, Duration::from_secs(2)),
        1,
        "the operation was retried without limit"
    );
    q.publish();
    assert_eq!(mem.read_obj::<u16>(GuestAddress(0x3002)).unwrap(), 1);
    assert_eq!(
        mem.read_obj::<u32>(GuestAddress(0x3008)).unwrap(),
        0,
        "failed"
    );
}

/// Dropping the ring waits for what is in flight only up to its bound, then leaks it (a
/// read that never completes must not hang the process's exit).
#[test]
fn dropping_the_ring_gives_up_on_a_read_that_never_completes() {
    let (_mem, q, dev, w) = setup();
    q.process(&dev).unwrap();
    assert_eq!(q.outstanding(), 1);
    let bound = Duration::from_millis(300);
    dev.0.lock().unwrap().set_drop_timeout(bound);
    let t = Instant::now();
    drop(dev);
    let took = t.elapsed();
    assert!(took >= bound, "the drop did not wait ({took:?})");
    assert!(
        took < bound * 2 + Duration::from_millis(200),
        "took {took:?}"
    );
    // The read stays in flight in the leaked ring; the pipe must outlive it.
    std::mem::forget(w);
}

/// Records what the ring refused instead of panicking.
struct Recorder(Mutex<GuestUring<()>>, Mutex<Vec<String>>);

impl VirtioDevice for Recorder {
    vhost_test_support::device_basics!(self; device_type: 4, queues: 1, max_queue_size: 16);
    fn process_queue(&self, ctx: &mut QueueContext<'_>) -> Result<Processed, DeviceError> {
        read_into_each(&self.0, ctx, |r| {
            self.1.lock().unwrap().push(r.error.to_string());
            r.req.complete(0);
        })
    }
}

/// A ring at `base` (descriptors, then avail and used rings a page apart) with `n` 64-byte
/// writable chains available.
fn ring_with_chains(mem: &GuestMemoryMmap, base: u64, n: u16) -> TestQueue {
    let (desc, avail, used) = (base, base + 0x1000, base + 0x2000);
    for i in 0..n {
        let d = desc + u64::from(i) * 16;
        mem.write_obj(0x8000u64 + u64::from(i) * 64, GuestAddress(d))
            .unwrap();
        mem.write_obj(64u32, GuestAddress(d + 8)).unwrap();
        mem.write_obj(2u16, GuestAddress(d + 12)).unwrap();
        mem.write_obj(i, GuestAddress(avail + 4 + u64::from(i) * 2))
            .unwrap();
    }
    mem.write_obj(n, GuestAddress(avail + 2)).unwrap();
    TestQueue::new(mem.clone(), RingSpec::split(0, 16, [desc, avail, used])).unwrap()
}

/// A stop that gave up on a full queue of reads in flight leaves their slots taken; the next
/// generation of the queue (up to a queue's size of requests) still gets slots.
#[test]
fn slots_of_a_timed_out_stop_do_not_starve_the_next_generation() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
    let (r, w) = nix::unistd::pipe().unwrap();
    let dev = Recorder(
        Mutex::new(GuestUring::new(&File::from(r), 16).unwrap()),
        Mutex::new(vec![]),
    );
    let a = ring_with_chains(&mem, 0x1000, 16);
    a.process(&dev).unwrap();
    assert_eq!(a.outstanding(), 16);
    assert!(
        a.stop(Duration::from_millis(50)).is_err(),
        "the stop times out"
    );
    let b = ring_with_chains(&mem, 0x4000, 16);
    b.process(&dev).unwrap();
    let refused = dev.1.lock().unwrap().clone();
    drop(w); // the reads in flight end (EOF) so the ring can be dropped
    assert!(
        refused.is_empty(),
        "the new generation's requests were refused: {refused:?}"
    );
    assert_eq!(b.outstanding(), 16);
}

/// A read into more than IOV_MAX (1024) buffers that are not adjacent goes to the kernel in
/// pieces of at most 1024 iovecs, each piece going on where the last stopped: every buffer
/// gets its byte, in order.
#[test]
fn a_read_into_more_than_iov_max_separate_buffers_is_split_and_lands_whole() {
    const N: u16 = 1100;
    const QSIZE: u16 = 2048;
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40000)]).unwrap();
    let (desc, avail, used, bufs) = (0x1000u64, 0x9000u64, 0xb000u64, 0x10000u64);
    for i in 0..N {
        let d = desc + u64::from(i) * 16;
        // One byte every two: no two buffers can be merged into one iovec.
        mem.write_obj(bufs + u64::from(i) * 2, GuestAddress(d))
            .unwrap();
        mem.write_obj(1u32, GuestAddress(d + 8)).unwrap();
        let next = i + 1 < N;
        // VRING_DESC_F_WRITE, and VRING_DESC_F_NEXT but on the last.
        mem.write_obj(2u16 | u16::from(next), GuestAddress(d + 12))
            .unwrap();
        mem.write_obj(if next { i + 1 } else { 0 }, GuestAddress(d + 14))
            .unwrap();
    }
    mem.write_obj(0u16, GuestAddress(avail + 4)).unwrap();
    mem.write_obj(1u16, GuestAddress(avail + 2)).unwrap();
    let q = TestQueue::new(mem.clone(), RingSpec::split(0, QSIZE, [desc, avail, used])).unwrap();
    let (r, w) = nix::unistd::pipe().unwrap();
    let dev = PipeReader(Mutex::new(GuestUring::new(&File::from(r), 16).unwrap()));
    let want: Vec<u8> = (0..N).map(|i| (i as u8).wrapping_mul(31) ^ 0x3c).collect();
    File::from(w).write_all(&want).unwrap();
    q.process(&dev).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while dev.reap() == 0 {
        assert!(Instant::now() < deadline, "the read never completed");
        dev.eventfd_readable(100);
    }
    q.publish();
    assert_eq!(mem.read_obj::<u16>(GuestAddress(used + 2)).unwrap(), 1);
    assert_eq!(
        mem.read_obj::<u32>(GuestAddress(used + 8)).unwrap(),
        u32::from(N),
        "the whole read succeeded"
    );
    let got: Vec<u8> = (0..N)
        .map(|i| {
            mem.read_obj::<u8>(GuestAddress(bufs + u64::from(i) * 2))
                .unwrap()
        })
        .collect();
    assert_eq!(got, want);
}

/// A submission the kernel refuses for good (not EAGAIN, ENOMEM or EBUSY) is not retried:
/// the operation it carried comes back failed from the next reap, once, and the next
/// operation goes through a new ring.
#[test]
fn a_submission_refused_for_good_fails_its_operation_and_a_new_ring_takes_over() {
    let (mem, q, dev, mut w) = setup();
    w.write_all(&data()).unwrap();
    dev.0.lock().unwrap().fail_next_submit(libc::EINVAL);
    assert!(
        q.process(&dev).is_err(),
        "the submission error is reported to the queue"
    );
    assert_eq!(reap_within(&dev, Duration::from_secs(5)), 1);
    assert_eq!(dev.0.lock().unwrap().in_flight(), 0);
    q.publish();
    assert_eq!(mem.read_obj::<u16>(GuestAddress(0x3002)).unwrap(), 1);
    assert_eq!(
        mem.read_obj::<u32>(GuestAddress(0x3008)).unwrap(),
        0,
        "the read failed"
    );
    assert_eq!(dev.reap(), 0, "given back once");
    // Head 0 again: the data still waits in the pipe, read through a new ring.
    mem.write_obj(0u16, GuestAddress(0x2006)).unwrap();
    mem.write_obj(2u16, GuestAddress(0x2002)).unwrap();
    q.process(&dev).unwrap();
    assert_eq!(reap_within(&dev, Duration::from_secs(5)), 1);
    q.publish();
    assert_eq!(mem.read_obj::<u16>(GuestAddress(0x3002)).unwrap(), 2);
    assert_eq!(
        mem.read_obj::<u32>(GuestAddress(0x3010)).unwrap(),
        LEN as u32
    );
    assert_data_in_buffer(&mem);
}

/// Rings given one drop deadline and dropped one after the other wait for their reads in
/// flight until that deadline only: one timeout in all, not one each.
#[test]
fn rings_dropped_in_turn_with_one_deadline_wait_it_once() {
    let bound = Duration::from_millis(400);
    let mut kept = Vec::new();
    let mut devs = Vec::new();
    for _ in 0..3 {
        let (mem, q, dev, w) = setup();
        q.process(&dev).unwrap();
        assert_eq!(q.outstanding(), 1);
        devs.push(dev);
        kept.push((mem, q, w));
    }
    let deadline = Instant::now() + bound;
    for d in &devs {
        d.0.lock().unwrap().set_drop_deadline(deadline);
    }
    let t = Instant::now();
    drop(devs);
    let took = t.elapsed();
    assert!(
        took + Duration::from_millis(50) >= bound,
        "did not wait ({took:?})"
    );
    assert!(
        took < bound * 2,
        "three rings waited {took:?}, more than one deadline ({bound:?})"
    );
    // The reads stay in flight in the leaked rings: the pipes must outlive them.
    std::mem::forget(kept);
}

/// Takes the requests a queue pops and keeps them, for tests that start them on a ring
/// themselves.
fn pop_all(q: &TestQueue, n: usize) -> Vec<vhost_backend::runtime::Request> {
    let keep = vhost_backend::runtime::testing::KeepDevice::new(16);
    q.process(&keep).unwrap();
    let reqs = keep.take();
    assert_eq!(reqs.len(), n);
    reqs
}

/// Reaps `ring` until `n` operations came back (5 s at most).
fn reap_n(ring: &mut GuestUring<()>, n: usize) -> Vec<Reaped<()>> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut out = Vec::new();
    while out.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} came back",
            out.len()
        );
        std::thread::sleep(Duration::from_millis(2));
        ring.reap(&mut out);
    }
    std::thread::sleep(Duration::from_millis(20));
    ring.reap(&mut out);
    assert_eq!(out.len(), n, "an operation came back twice");
    out
}

/// `fallocate` ranges run one after the other: allocating a range then punching a hole in
/// it leaves a hole (the other way round, or both at once, could leave blocks allocated).
/// A failing range ends the operation: the ranges after it do not run, the request comes
/// back failed once.
#[test]
fn fallocate_ranges_run_in_turn() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
    let q = ring_with_chains(&mem, 0x1000, 2);
    let file = vmm_sys_util::tempfile::TempFile::new().unwrap().into_file();
    let mut ring = GuestUring::new(&file, 16).unwrap();
    assert!(ring.supports_fallocate());
    let r = |offset, len, mode| vhost_backend::runtime::FallocRange { offset, len, mode };
    let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    let mut reqs = pop_all(&q, 2).into_iter();
    let req = reqs.next().unwrap();
    if let Err(e) = ring.fallocate(req, &[r(0, 65536, 0), r(0, 65536, punch)], ()) {
        panic!("refused: {}", e.error);
    }
    ring.submit().unwrap();
    for o in reap_n(&mut ring, 1) {
        assert!(o.result.is_ok(), "{:?}", o.result);
        o.req.complete(0);
    }
    let meta = file.metadata().unwrap();
    assert_eq!(meta.len(), 65536, "the allocation ran");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        meta.blocks(),
        0,
        "the hole was punched after the allocation"
    );

    // The first range's completion fails: the second (which would extend the file) never runs.
    ring.fail_next_completions(libc::EIO, 1);
    let req = reqs.next().unwrap();
    if let Err(e) = ring.fallocate(req, &[r(0, 4096, 0), r(65536, 8192, 0)], ()) {
        panic!("refused: {}", e.error);
    }
    ring.submit().unwrap();
    let out = reap_n(&mut ring, 1);
    assert_eq!(
        out[0].result.as_ref().err().map(|e| e.to_string()),
        Some(std::io::Error::from_raw_os_error(libc::EIO).to_string())
    );
    for o in out {
        o.req.complete(0);
    }
    assert_eq!(
        file.metadata().unwrap().len(),
        65536,
        "the second range ran"
    );
    assert_eq!(ring.in_flight(), 0);
}

/// Eight requests in flight as two-range fallocates (8 KiB each, 64 KiB in all) on a ring
/// of depth 4: a submission queue of 4 and a completion queue (and so slots) of 8. The first
/// four were submitted to make room for the last four, which stay queued, so the first
/// ranges' completions find the submission queue full.
fn eight_two_range_fallocates() -> (GuestMemoryMmap, TestQueue, std::fs::File, GuestUring<()>) {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
    let q = ring_with_chains(&mem, 0x1000, 8);
    let file = vmm_sys_util::tempfile::TempFile::new().unwrap().into_file();
    let mut ring = GuestUring::new(&file, 4).unwrap();
    let r = |offset, len| vhost_backend::runtime::FallocRange {
        offset,
        len,
        mode: 0,
    };
    for (i, req) in pop_all(&q, 8).into_iter().enumerate() {
        let at = i as u64 * 8192;
        if let Err(e) = ring.fallocate(req, &[r(at, 4096), r(at + 4096, 4096)], ()) {
            panic!("refused {i}: {}", e.error);
        }
    }
    assert_eq!(ring.in_flight(), 8);
    (mem, q, file, ring)
}

/// Operations that go on (the next range of a fallocate) while the submission queue is full
/// (more slots than its size, after a stop that timed out) are submitted, not failed.
#[test]
fn operations_requeued_into_a_full_submission_queue_go_on() {
    let (_mem, _q, file, mut ring) = eight_two_range_fallocates();
    // The first four were submitted to make room for the last four, which stay queued: the
    // first ranges' completions find the submission queue full.
    std::thread::sleep(Duration::from_millis(200));
    let out = reap_n(&mut ring, 8);
    for o in out {
        assert!(o.result.is_ok(), "{:?}", o.result);
        o.req.complete(0);
    }
    assert_eq!(file.metadata().unwrap().len(), 8 * 8192);
}

#[test]
fn operations_requeued_while_submission_is_refused_for_now_go_on() {
    let (_mem, _q, file, mut ring) = eight_two_range_fallocates();
    // The submission that should make room for the second ranges is refused for now: they
    // wait and go on with the next submission.
    ring.fail_next_submit(libc::EAGAIN);
    std::thread::sleep(Duration::from_millis(200));
    let out = reap_n(&mut ring, 8);
    for o in out {
        assert!(o.result.is_ok(), "{:?}", o.result);
        assert!(!o.not_submitted);
        o.req.complete(0);
    }
    assert_eq!(file.metadata().unwrap().len(), 8 * 8192);
}

#[test]
fn dropping_a_ring_whose_submissions_are_always_refused_for_now_ends_early() {
    let (mem, q, _file, mut ring) = eight_two_range_fallocates();
    ring.set_drop_timeout(Duration::from_secs(20));
    // Four operations wait in the submission queue, and the kernel never takes them.
    ring.fail_next_submits(libc::EAGAIN, u32::MAX);
    std::thread::sleep(Duration::from_millis(200));
    let start = Instant::now();
    drop(ring);
    let took = start.elapsed();
    assert!(took < Duration::from_secs(5), "dropping took {took:?}");
    // Every request came back (completed at shutdown), none leaked with the ring.
    q.publish();
    assert_eq!(mem.read_obj::<u16>(GuestAddress(0x3000 + 2)).unwrap(), 8);
}

/// A capture of the warnings and errors logged on each thread.
struct Capture(Mutex<Vec<(std::thread::ThreadId, String)>>);

impl log::Log for Capture {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Warn
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            let me = std::thread::current().id();
            self.0.lock().unwrap().push((me, r.args().to_string()));
        }
    }
    fn flush(&self) {}
}

static CAPTURE: Capture = Capture(Mutex::new(Vec::new()));

/// What this thread logged at warning level or above since the capture was installed.
fn logged_here() -> Vec<String> {
    let _ = log::set_logger(&CAPTURE);
    log::set_max_level(log::LevelFilter::Warn);
    let me = std::thread::current().id();
    CAPTURE
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, _)| *t == me)
        .map(|(_, m)| m.clone())
        .collect()
}

/// Dropping the ring while a short read goes on, whose next submission is refused for good:
/// the read comes back failed from drop's own reaping and its request is completed, not
/// dropped without completion.
#[test]
fn dropping_the_ring_completes_a_read_whose_resubmission_fails() {
    assert!(logged_here().is_empty());
    let (mem, q, dev, mut w) = setup();
    q.process(&dev).unwrap();
    assert_eq!(q.outstanding(), 1);
    dev.0.lock().unwrap().fail_next_submit(libc::EINVAL);
    // Part of the read: the rest is queued again and its submission fails.
    w.write_all(&data()[..10]).unwrap();
    drop(dev);
    q.publish();
    assert_eq!(mem.read_obj::<u16>(GuestAddress(0x3002)).unwrap(), 1);
    let logged = logged_here();
    assert!(
        !logged.iter().any(|m| m.contains("without completion")),
        "{logged:?}"
    );
    assert!(
        logged.iter().any(|m| m.contains("submission failed")),
        "the injected failure was not hit: {logged:?}"
    );
}
