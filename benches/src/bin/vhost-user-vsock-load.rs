//! `vhost-user-vsock-load`: drives a vhost-user vsock back-end (hybrid-vsock Unix sockets,
//! as ours and rust-vmm's vhost-device-vsock serve them) from the guest side and prints a
//! rate.
//!
//! The guest is a `vhost-frontend` session with the vsock driver (rx buffers of 4 KiB and a
//! header, as Linux posts them); the host side is threads of this process on the daemon's
//! Unix sockets. Workloads, each for `--duration` seconds after a `--warmup`:
//!
//! - `g2h`: one guest connection to host port 5000 sends 64 KiB packets within the
//!   device's credit; a host thread reads and checks them. Rate: MiB/s delivered to the host.
//! - `h2g`: a host process connects (`CONNECT 5000`) and writes as fast as it can; the guest
//!   consumes, checks and returns credit (256 KiB buffer). Rate: MiB/s delivered to the guest.
//! - `connect`: connection set-up and teardown, one at a time: the guest sends REQUEST to
//!   host port 5001, waits for RESPONSE (a host thread accepts each stream and drops it),
//!   then resets it. Rate: connections per second.
//!
//! Bytes follow a 256-byte ramp (byte at stream offset `o` is `o as u8`) and are checked
//! on arrival, so a fast wrong answer fails instead of counting. The last line of output is
//! machine-readable: `RESULT key=value ...`.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use vhost_frontend::devices::vsock::{op, Packet, VsockDriver, VsockHeader, MAX_PAYLOAD};
use vhost_frontend::{Session, SessionOptions};

type Error = Box<dyn std::error::Error + Send + Sync>;

const CID: u64 = 3;
const TIMEOUT: Duration = Duration::from_secs(10);
const GUEST_BUF: u32 = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Workload {
    G2h,
    H2g,
    Connect,
}

/// Load generator for vhost-user vsock back-ends.
#[derive(Debug, Parser)]
#[command(name = "vhost-user-vsock-load", version)]
struct Cli {
    /// The back-end's vhost-user socket.
    #[arg(long)]
    socket: PathBuf,
    /// The back-end's hybrid-vsock Unix socket (its --uds-path); guest CID 3.
    #[arg(long)]
    uds: PathBuf,
    /// What to measure.
    #[arg(long, value_enum)]
    workload: Workload,
    /// Queue size of the three queues.
    #[arg(long, default_value_t = 128)]
    queue_size: u16,
    /// Measured seconds.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Seconds run before measuring.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Seconds to wait for the back-end's sockets.
    #[arg(long, default_value_t = 10.0)]
    connect_timeout: f64,
    /// A name echoed in the RESULT line.
    #[arg(long, default_value = "-")]
    label: String,
}

fn ramp(len: usize) -> Vec<u8> {
    (0..len).map(|i| i as u8).collect()
}

/// Checks that `data` continues the ramp at stream offset `off`.
fn check(data: &[u8], off: u64, ramp: &[u8]) -> Result<(), Error> {
    let start = (off % 256) as usize;
    if data != &ramp[start..start + data.len()] {
        return Err(format!("wrong bytes at stream offset {off}").into());
    }
    Ok(())
}

fn port_path(uds: &Path, port: u32) -> PathBuf {
    let mut p = uds.as_os_str().to_owned();
    p.push(format!("_{port}"));
    PathBuf::from(p)
}

struct Guest {
    s: Session,
    d: VsockDriver,
}

impl Guest {
    fn connect(cli: &Cli) -> Result<Guest, Error> {
        let opts = || SessionOptions {
            num_queues: 3,
            queue_size: cli.queue_size,
            memory_size: 64 << 20,
            config_size: Some(8),
            ..SessionOptions::default()
        };
        let deadline = Instant::now() + Duration::from_secs_f64(cli.connect_timeout);
        let mut s = loop {
            match Session::connect(&cli.socket, opts()) {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => return Err(format!("connecting to {}: {e}", cli.socket.display()).into()),
            }
        };
        s.start()?;
        let d = VsockDriver::new(&mut s, usize::from(cli.queue_size), 4096 + 44, 64)?;
        Ok(Guest { s, d })
    }

    fn send(&mut self, h: &VsockHeader, payload: &[u8]) -> Result<(), Error> {
        Ok(self.d.send(&mut self.s, h, payload, TIMEOUT)?)
    }

    fn recv(&mut self) -> Result<Packet, Error> {
        Ok(self.d.recv(&mut self.s, TIMEOUT)?)
    }
}

fn header(guest_port: u32, host_port: u32, op: u16, fwd_cnt: u32) -> VsockHeader {
    let mut h = VsockHeader::to_host(CID, guest_port, host_port, op);
    h.buf_alloc = GUEST_BUF.into();
    h.fwd_cnt = fwd_cnt.into();
    h
}

/// Runs `step` until `warmup`, then for `duration`; `count` is read at both ends.
fn measure(
    cli: &Cli,
    count: &AtomicU64,
    mut step: impl FnMut() -> Result<(), Error>,
) -> Result<(u64, f64), Error> {
    let warm_end = Instant::now() + Duration::from_secs_f64(cli.warmup);
    while Instant::now() < warm_end {
        step()?;
    }
    let c0 = count.load(Ordering::Acquire);
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(cli.duration);
    while Instant::now() < end {
        step()?;
    }
    let secs = t0.elapsed().as_secs_f64();
    Ok((count.load(Ordering::Acquire) - c0, secs))
}

fn g2h(cli: &Cli, g: &mut Guest) -> Result<(u64, f64), Error> {
    let listener = UnixListener::bind(port_path(&cli.uds, 5000))?;
    let delivered = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let reader = {
        let delivered = Arc::clone(&delivered);
        let failed = Arc::clone(&failed);
        std::thread::spawn(move || -> Result<(), Error> {
            let (mut s, _) = listener.accept()?;
            let r = ramp(256 + 65536);
            let mut buf = vec![0u8; 65536];
            let mut off = 0u64;
            loop {
                let n = s.read(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                if let Err(e) = check(&buf[..n], off, &r) {
                    failed.store(true, Ordering::Release);
                    return Err(e);
                }
                off += n as u64;
                delivered.fetch_add(n as u64, Ordering::AcqRel);
            }
        })
    };
    let (gp, hp) = (1000, 5000);
    g.send(&header(gp, hp, op::REQUEST, 0), &[])?;
    let p = g.recv()?;
    if p.hdr.op.get() != op::RESPONSE {
        return Err(format!("connection refused (op {})", p.hdr.op.get()).into());
    }
    let mut peer_alloc = p.hdr.buf_alloc.get();
    let mut peer_fwd = p.hdr.fwd_cnt.get();
    let r = ramp(256 + MAX_PAYLOAD);
    let mut sent = 0u64;
    let result = measure(cli, &delivered, || {
        if failed.load(Ordering::Acquire) {
            return Err("the host saw wrong bytes".into());
        }
        while let Some(p) = g.d.try_recv(&mut g.s)? {
            peer_alloc = p.hdr.buf_alloc.get();
            peer_fwd = p.hdr.fwd_cnt.get();
        }
        let credit = peer_alloc.saturating_sub((sent as u32).wrapping_sub(peer_fwd)) as usize;
        if credit == 0 {
            let p = g.recv()?;
            if p.hdr.op.get() == op::RST {
                return Err("connection reset".into());
            }
            peer_alloc = p.hdr.buf_alloc.get();
            peer_fwd = p.hdr.fwd_cnt.get();
            return Ok(());
        }
        let n = credit.min(MAX_PAYLOAD);
        let start = (sent % 256) as usize;
        let mut h = header(gp, hp, op::RW, 0);
        h.len = (n as u32).into();
        g.send(&h, &r[start..start + n])?;
        sent += n as u64;
        Ok(())
    });
    g.send(&header(gp, hp, op::RST, 0), &[])?;
    let _ = reader.join();
    result
}

fn h2g(cli: &Cli, g: &mut Guest) -> Result<(u64, f64), Error> {
    let stop = Arc::new(AtomicBool::new(false));
    let uds = cli.uds.clone();
    let writer = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || -> Result<(), Error> {
            let mut s = UnixStream::connect(&uds)?;
            s.write_all(b"CONNECT 5000\n")?;
            let mut line = Vec::new();
            let mut b = [0u8; 1];
            while !line.ends_with(b"\n") {
                if s.read(&mut b)? == 0 {
                    return Err("no OK line".into());
                }
                line.push(b[0]);
            }
            let r = ramp(256 + 65536);
            let mut off = 0u64;
            while !stop.load(Ordering::Acquire) {
                let start = (off % 256) as usize;
                match s.write(&r[start..start + 65536]) {
                    Ok(n) => off += n as u64,
                    Err(_) => return Ok(()),
                }
            }
            Ok(())
        })
    };
    let req = g.recv()?;
    if req.hdr.op.get() != op::REQUEST {
        return Err(format!("expected a REQUEST, got op {}", req.hdr.op.get()).into());
    }
    let (gp, hp) = (req.hdr.dst_port.get(), req.hdr.src_port.get());
    g.send(&header(gp, hp, op::RESPONSE, 0), &[])?;
    let received = AtomicU64::new(0);
    let r = ramp(256 + MAX_PAYLOAD);
    let mut fwd = 0u32;
    let mut last_update = 0u32;
    let result = measure(cli, &received, || {
        let p = g.recv()?;
        match p.hdr.op.get() {
            op::RW => {
                let off = received.load(Ordering::Relaxed);
                check(&p.data, off, &r)?;
                received.fetch_add(p.data.len() as u64, Ordering::AcqRel);
                fwd = fwd.wrapping_add(p.data.len() as u32);
                if fwd.wrapping_sub(last_update) >= GUEST_BUF / 2 {
                    last_update = fwd;
                    g.send(&header(gp, hp, op::CREDIT_UPDATE, fwd), &[])?;
                }
                Ok(())
            }
            op::CREDIT_REQUEST => {
                last_update = fwd;
                g.send(&header(gp, hp, op::CREDIT_UPDATE, fwd), &[])
            }
            op::CREDIT_UPDATE => Ok(()),
            other => Err(format!("op {other} on the data connection").into()),
        }
    });
    stop.store(true, Ordering::Release);
    g.send(&header(gp, hp, op::RST, fwd), &[])?;
    let _ = writer.join();
    result
}

fn connect_rate(cli: &Cli, g: &mut Guest) -> Result<(u64, f64), Error> {
    let listener = UnixListener::bind(port_path(&cli.uds, 5001))?;
    std::thread::spawn(move || {
        for s in listener.incoming() {
            drop(s);
        }
    });
    let done = AtomicU64::new(0);
    let mut port = 10_000u32;
    measure(cli, &done, || {
        port += 1;
        g.send(&header(port, 5001, op::REQUEST, 0), &[])?;
        loop {
            let p = g.recv()?;
            if p.hdr.dst_port.get() != port {
                // The end of an earlier connection (its host stream was dropped).
                continue;
            }
            match p.hdr.op.get() {
                op::RESPONSE => break,
                op::SHUTDOWN | op::CREDIT_UPDATE => continue,
                other => return Err(format!("connection {port}: op {other}").into()),
            }
        }
        g.send(&header(port, 5001, op::RST, 0), &[])?;
        done.fetch_add(1, Ordering::AcqRel);
        Ok(())
    })
}

fn run(cli: &Cli) -> Result<(), Error> {
    let mut g = Guest::connect(cli)?;
    let (count, secs) = match cli.workload {
        Workload::G2h => g2h(cli, &mut g)?,
        Workload::H2g => h2g(cli, &mut g)?,
        Workload::Connect => connect_rate(cli, &mut g)?,
    };
    let (rate, unit) = match cli.workload {
        Workload::Connect => (count as f64 / secs, "connections/s"),
        _ => (count as f64 / secs / (1 << 20) as f64, "MiB/s"),
    };
    let name = format!("{:?}", cli.workload).to_lowercase();
    println!("{name}: {rate:.1} {unit} ({count} in {secs:.3} s)");
    println!(
        "RESULT label={} device=vsock workload={name} seconds={secs:.3} count={count} \
         rate={rate:.1} unit={unit}",
        cli.label
    );
    Ok(())
}

fn main() -> ExitCode {
    benches::tool_main("vhost-user-vsock-load", run)
}
