//! The session and the virtio-blk helpers against QEMU's own back-end, qemu-storage-daemon
//! (skipped when it is not installed): reads match the image, writes land in it, a queue
//! survives stop and restart, and 16 requests in flight complete correctly.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vhost_frontend::devices::blk::{self, BlkConfig, BlkRequest, BlkRequests};
use vhost_frontend::{Session, SessionOptions, VirtqueueDriver};
use vhost_proto::ProtocolFeatures;

const TIMEOUT: Duration = Duration::from_secs(10);

struct Daemon {
    child: Child,
    dir: PathBuf,
}

impl Daemon {
    /// Starts qemu-storage-daemon exporting a fresh 16 MiB image; `None` when the binary is
    /// missing.
    fn start(tag: &str) -> Option<Daemon> {
        let dir =
            std::env::temp_dir().join(format!("vhost-frontend-qsd-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let img = dir.join("disk.img");
        let mut data = vec![0u8; 16 << 20];
        for (i, b) in data.iter_mut().enumerate().take(1 << 20) {
            *b = (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3];
        }
        std::fs::write(&img, &data).unwrap();
        let sock = dir.join("vub.sock");
        let child = Command::new("qemu-storage-daemon")
            .arg("--blockdev")
            .arg(format!(
                "driver=file,node-name=file,filename={}",
                img.display()
            ))
            .arg("--blockdev")
            .arg("driver=raw,node-name=disk,file=file")
            .arg("--export")
            .arg(format!(
                "type=vhost-user-blk,id=exp,node-name=disk,addr.type=unix,addr.path={},writable=on",
                sock.display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                eprintln!("qemu-storage-daemon not available ({e}): skipped");
                return None;
            }
        };
        let d = Daemon { child, dir };
        let deadline = Instant::now() + TIMEOUT;
        while !d.sock().exists() {
            assert!(
                Instant::now() < deadline,
                "qemu-storage-daemon did not listen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(d)
    }

    fn sock(&self) -> PathBuf {
        self.dir.join("vub.sock")
    }

    fn image(&self) -> Vec<u8> {
        std::fs::read(self.dir.join("disk.img")).unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn session(d: &Daemon, opts: SessionOptions) -> Session {
    let mut s = Session::connect(d.sock(), opts).unwrap();
    s.start().unwrap();
    s
}

#[test]
fn blk_reads_match_the_image_and_writes_land_in_it() {
    let Some(d) = Daemon::start("rw") else { return };
    let opts = SessionOptions {
        queue_size: 128,
        config_size: Some(57),
        ..SessionOptions::default()
    };
    let mut s = session(&d, opts);
    let cfg = BlkConfig::parse(s.config().unwrap()).unwrap();
    assert_eq!(cfg.capacity, (16 << 20) / 512);
    let mut req = BlkRequests::new(&s, 0, 1, 8192).unwrap();

    let image = d.image();
    let mut buf = vec![0u8; 8192];
    req.read(&mut s, 3, &mut buf, TIMEOUT).unwrap();
    assert_eq!(buf, image[3 * 512..3 * 512 + 8192]);

    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 1) as u8).collect();
    req.write(&mut s, 4096, &pattern, TIMEOUT).unwrap();
    req.flush(&mut s, TIMEOUT).unwrap();
    let mut back = vec![0u8; 4096];
    req.read(&mut s, 4096, &mut back, TIMEOUT).unwrap();
    assert_eq!(back, pattern);
    assert_eq!(d.image()[4096 * 512..4096 * 512 + 4096], pattern[..]);

    let id = req.get_id(&mut s, TIMEOUT).unwrap();
    assert!(id.iter().any(|&b| b != 0));

    let err = req
        .read(&mut s, cfg.capacity, &mut back[..512], TIMEOUT)
        .unwrap_err();
    assert!(
        matches!(
            err,
            vhost_frontend::devices::DeviceError::Status {
                kind: blk::T_IN,
                status: blk::S_IOERR
            }
        ),
        "{err:?}"
    );
}

#[test]
fn blk_queue_survives_stop_and_restart_at_the_returned_base() {
    let Some(d) = Daemon::start("restart") else {
        return;
    };
    let mut s = session(&d, SessionOptions::default());
    let mut req = BlkRequests::new(&s, 0, 1, 4096).unwrap();
    let mut buf = vec![0u8; 512];
    for _ in 0..5 {
        req.read(&mut s, 0, &mut buf, TIMEOUT).unwrap();
    }
    let base = s.stop_queue(0).unwrap();
    assert_eq!(base, 5, "next avail index after five requests");
    s.restart_queue(0, base).unwrap();
    // The back-end closed its call fd when the ring stopped: the restart must give it one
    // again, or this completion would come without a call.
    req.add(&mut s, BlkRequest::read(1, 512)).unwrap();
    s.publish(0).unwrap();
    let (_, call, _) = s.eventfds(0).unwrap();
    assert!(
        VirtqueueDriver::wait_call(call, TIMEOUT).unwrap(),
        "call after restart"
    );
    let c = req.complete(&mut s, TIMEOUT).unwrap();
    assert_eq!(c.status, blk::S_OK);
    req.read_data(&s, c.slot, &mut buf).unwrap();
    assert_eq!(buf, d.image()[512..1024]);
}

#[test]
fn blk_sixteen_requests_in_flight_complete_with_their_data() {
    let Some(d) = Daemon::start("qd16") else {
        return;
    };
    let opts = SessionOptions {
        // Memory slots hidden: SET_MEM_TABLE instead of ADD_MEM_REG.
        mask_protocol: vhost_frontend::session::DEFAULT_PROTOCOL_MASK
            | ProtocolFeatures::CONFIGURE_MEM_SLOTS,
        ..SessionOptions::default()
    };
    let mut s = session(&d, opts);
    let mut req = BlkRequests::new(&s, 0, 16, 4096).unwrap();
    // Fill each slot with its own pattern and write all sixteen at once.
    for i in 0..16u64 {
        let slot = req.free_slot().unwrap();
        let data = vec![0x40 + i as u8; 4096];
        req.write_data(&s, slot, &data).unwrap();
        req.submit_prepared(&mut s, slot, BlkRequest::write(8192 + i * 8, 4096))
            .unwrap();
    }
    for _ in 0..16 {
        let c = req.complete(&mut s, TIMEOUT).unwrap();
        assert_eq!(c.status, blk::S_OK);
    }
    // Read them back sixteen at a time, published together.
    let mut sector_of = [0u64; 16];
    for i in 0..16u64 {
        let slot = req
            .add(&mut s, BlkRequest::read(8192 + i * 8, 4096))
            .unwrap();
        sector_of[slot] = 8192 + i * 8;
    }
    s.publish(0).unwrap();
    for _ in 0..16 {
        let c = req.complete(&mut s, TIMEOUT).unwrap();
        assert_eq!(c.status, blk::S_OK);
        assert_eq!(c.len, 4097, "data and status byte written");
        let mut out = vec![0u8; 4096];
        req.read_data(&s, c.slot, &mut out).unwrap();
        let i = (sector_of[c.slot] - 8192) / 8;
        assert!(out.iter().all(|&b| b == 0x40 + i as u8), "slot {}", c.slot);
    }
}
