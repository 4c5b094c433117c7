//! `vhost-user-load`: drives a vhost-user blk or rng back-end from the guest side and
//! prints requests per second.
//!
//! It connects to the back-end's socket, runs the handshake QEMU runs (with a
//! `vhost-frontend` session and guest memory sized for the queue depth), and keeps
//! `--qd` requests in flight on each of queues `0..--queues` (default: queue 0 only) for
//! `--duration` seconds after a `--warmup`: 4 KiB random reads or writes (blk) or 4 KiB
//! fills (rng). One thread drives every queue. The last line of output is machine-readable:
//! `RESULT key=value ...`.
//!
//! `--make-image PATH --size BYTES` writes a pattern image (every 8-byte word holds its
//! offset, so reads can be checked) and exits.
//!
//! `--limit pingpong|pingpong-procs|pingpong-epoll|pread --image PATH` measures the machine's
//! limit for 4 KiB random reads of that image instead, with no back-end: `pingpong` is an
//! eventfd round trip between two threads with a `pread` on the far side (queue depth 1:
//! what any back-end needs at least), `pingpong-procs` the same round trip between two
//! processes (a front-end and a back-end are two: on one CPU each round trip also switches
//! address spaces; the far process is this binary run again with a hidden first argument,
//! the eventfds its stdin and stdout), `pingpong-epoll` that with the far process sleeping in
//! `epoll_wait` on a non-blocking kick eventfd (as a back-end must: the front-end made the
//! eventfd non-blocking, and a back-end thread also watches other descriptors), `pread` the
//! bare `pread` rate of one thread (the deeper queues' limit on one CPU).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use benches::load::{memory_size_queues, Engine, Workload, MAX_QUEUES};
use clap::{Parser, ValueEnum};
use vhost_frontend::devices::blk::BlkConfig;
use vhost_frontend::session::DEFAULT_FEATURE_MASK;
use vhost_frontend::{DirtyLogArea, Session, SessionOptions};
use vhost_proto::virtio;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Device {
    Blk,
    Rng,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Limit {
    Pingpong,
    PingpongProcs,
    PingpongEpoll,
    Pread,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Rw {
    Randread,
    Randwrite,
}

/// Load generator for vhost-user blk and rng back-ends.
#[derive(Debug, Parser)]
#[command(name = "vhost-user-load", version)]
struct Cli {
    /// The back-end's socket.
    #[arg(long, required_unless_present_any = ["make_image", "limit"])]
    socket: Option<PathBuf>,

    /// Device type behind the socket.
    #[arg(long, value_enum, default_value = "blk")]
    device: Device,

    /// blk access pattern (4 KiB requests at random 4 KiB-aligned offsets).
    #[arg(long, value_enum, default_value = "randread")]
    rw: Rw,

    /// Requests kept in flight on EACH queue (total depth: --queues × --qd).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    qd: u16,

    /// Queues driven (0..N, one thread for all; the back-end must offer that many). Each
    /// keeps --qd requests in flight, so the total depth is N × --qd.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=MAX_QUEUES as i64))]
    queues: u16,

    /// Queue size (a power of two; blk needs 3 descriptors per request).
    #[arg(long, default_value_t = 256)]
    queue_size: u16,

    /// Measured seconds.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,

    /// Seconds run before measuring.
    #[arg(long, default_value_t = 0.5)]
    warmup: f64,

    /// Drive packed virtqueues (ack VIRTIO_F_RING_PACKED when the back-end offers it).
    #[arg(long)]
    packed: bool,

    /// Seed of the offset generator.
    #[arg(long, default_value_t = 1)]
    seed: u64,

    /// A name echoed in the RESULT line.
    #[arg(long, default_value = "-")]
    label: String,

    /// Seconds to wait for the socket to appear.
    #[arg(long, default_value_t = 10.0)]
    connect_timeout: f64,

    /// Turn dirty-page logging on (as QEMU does for a migration: SET_LOG_BASE, SET_FEATURES
    /// with VHOST_F_LOG_ALL, SET_VRING_ADDR with the log flag) before the run, to measure
    /// what logging costs; the RESULT line then also gives the pages marked.
    #[arg(long)]
    dirty_log: bool,

    /// Write a pattern image at PATH (with --size) and exit.
    #[arg(long, value_name = "PATH")]
    make_image: Option<PathBuf>,

    /// Measure the machine's limit on --image instead of a back-end (see the top).
    #[arg(long, value_enum, requires = "image")]
    limit: Option<Limit>,

    /// The pattern image --limit reads.
    #[arg(long, value_name = "PATH")]
    image: Option<PathBuf>,

    /// Image size in bytes (suffixes K, M, G) for --make-image.
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    size: u64,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let (num, shift) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 10),
        Some((i, 'M' | 'm')) => (&s[..i], 20),
        Some((i, 'G' | 'g')) => (&s[..i], 30),
        _ => (s, 0),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("not a size: {s}"))
}

type Error = Box<dyn std::error::Error>;

fn connect(cli: &Cli, socket: &PathBuf) -> Result<Session, Error> {
    let opts = || SessionOptions {
        num_queues: cli.queues,
        queue_size: cli.queue_size,
        memory_size: memory_size_queues(
            usize::from(cli.queues),
            usize::from(cli.qd),
            cli.queue_size,
        ),
        config_size: (cli.device == Device::Blk).then_some(60),
        mask_features: if cli.packed {
            DEFAULT_FEATURE_MASK & !virtio::bit(virtio::RING_PACKED)
        } else {
            DEFAULT_FEATURE_MASK
        },
        ..SessionOptions::default()
    };
    let deadline = Instant::now() + Duration::from_secs_f64(cli.connect_timeout);
    let mut session = loop {
        match Session::connect(socket, opts()) {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(format!("connecting to {}: {e}", socket.display()).into()),
        }
    };
    if cli.packed && session.features() & virtio::bit(virtio::RING_PACKED) == 0 {
        return Err("--packed: the back-end does not offer VIRTIO_F_RING_PACKED".into());
    }
    session.start()?;
    Ok(session)
}

fn run(cli: &Cli) -> Result<(), Error> {
    if let Some(path) = &cli.make_image {
        benches::image::create(path, cli.size)?;
        println!(
            "wrote a {}-byte pattern image at {}",
            cli.size,
            path.display()
        );
        return Ok(());
    }
    if let (Some(limit), Some(image)) = (cli.limit, &cli.image) {
        return measure_limit(cli, limit, image);
    }
    let socket = cli.socket.as_ref().ok_or("--socket is required")?;
    let mut session = connect(cli, socket)?;
    let log = match cli.dirty_log {
        true => {
            let end = session
                .memory()
                .regions()
                .map(|r| r.guest_phys_addr + r.memory_size)
                .max()
                .unwrap_or(0);
            let log = DirtyLogArea::new(end)?;
            session.start_logging(&log)?;
            Some(log)
        }
        false => None,
    };
    let (workload, blocks) = match cli.device {
        Device::Rng => (Workload::Rng, 0),
        Device::Blk => {
            let config = session
                .config()
                .and_then(BlkConfig::parse)
                .ok_or("the blk back-end gave no configuration space (CONFIG)")?;
            let blocks = config.capacity * 512 / benches::BLOCK as u64;
            let w = match cli.rw {
                Rw::Randread => Workload::RandRead,
                Rw::Randwrite => Workload::RandWrite,
            };
            (w, blocks)
        }
    };
    let mut engine = Engine::with_queues(
        session,
        workload,
        usize::from(cli.queues),
        usize::from(cli.qd),
        blocks,
        cli.seed,
    )?;
    engine.fill()?;
    if cli.warmup > 0.0 {
        engine.run_for(Duration::from_secs_f64(cli.warmup))?;
    }
    engine.reset_stats();
    let (done, elapsed) = engine.run_for(Duration::from_secs_f64(cli.duration))?;
    let stats = engine.stats();
    let per_queue: Vec<String> = (0..engine.queues())
        .map(|q| engine.completed_on(q).to_string())
        .collect();
    let per_queue = per_queue.join("/");
    engine.drain()?;
    let secs = elapsed.as_secs_f64();
    let rate = done as f64 / secs;
    let name = workload.name();
    println!(
        "{name} qd={} queues={} {:.0} requests/s ({done} in {secs:.3} s; {:.2} completions per \
         wake-up, {} kicks; per queue {per_queue})",
        cli.qd,
        cli.queues,
        rate,
        done as f64 / stats.waits.max(1) as f64,
        stats.kicks,
    );
    let marked = match &log {
        Some(log) => format!(" dirty_pages={}", log.dirty_pages()?.len()),
        None => String::new(),
    };
    println!(
        "RESULT label={} device={:?} workload={name} qd={} ring={} seconds={secs:.3} \
         requests={done} rate={rate:.0} waits={} kicks={} publishes={} queues={} \
         per_queue={per_queue}{marked}",
        cli.label,
        cli.device,
        cli.qd,
        if cli.packed { "packed" } else { "split" },
        stats.waits,
        stats.kicks,
        stats.publishes,
        cli.queues,
    );
    Ok(())
}

/// `--limit`: random 4 KiB reads of `image` the `limit` way, for the warm-up then the
/// measured time; prints the RESULT line.
fn measure_limit(cli: &Cli, limit: Limit, image: &std::path::Path) -> Result<(), Error> {
    use benches::raw::{pread_block, EventfdPingPong, FarWait, FarWork, ProcessPingPong};
    let file = std::fs::File::open(image)?;
    let blocks = file.metadata()?.len() / benches::BLOCK as u64;
    if blocks == 0 {
        return Err("the image holds no 4 KiB block".into());
    }
    let mut rng = benches::XorShift::new(cli.seed);
    let pp = match limit {
        Limit::Pingpong => Some(EventfdPingPong::new(FarWork::Pread(file.try_clone()?))?),
        _ => None,
    };
    let mut procs = match limit {
        Limit::PingpongProcs | Limit::PingpongEpoll => {
            let wait = match limit {
                Limit::PingpongEpoll => FarWait::Epoll,
                _ => FarWait::Read,
            };
            let exe = std::env::current_exe()?;
            Some(ProcessPingPong::new(&exe, image, wait, cli.seed)?)
        }
        Limit::Pread | Limit::Pingpong => None,
    };
    let mut buf = Box::new([0u8; benches::BLOCK]);
    let mut run_for = |d: Duration| -> Result<(u64, Duration), Error> {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < d {
            for _ in 0..64 {
                let (offset, first) = match (&pp, &mut procs) {
                    (_, Some(procs)) => procs.round_trip()?,
                    (Some(pp), None) => {
                        let offset = rng.next_u64() % blocks * benches::BLOCK as u64;
                        (offset, pp.round_trip(offset)?)
                    }
                    (None, None) => {
                        let offset = rng.next_u64() % blocks * benches::BLOCK as u64;
                        (offset, pread_block(&file, &mut buf, offset)?)
                    }
                };
                if first != benches::pattern(offset) {
                    return Err(
                        format!("block at {offset} reads {first}: not a pattern image").into(),
                    );
                }
            }
            n += 64;
        }
        Ok((n, start.elapsed()))
    };
    run_for(Duration::from_secs_f64(cli.warmup))?;
    let (done, elapsed) = run_for(Duration::from_secs_f64(cli.duration))?;
    let secs = elapsed.as_secs_f64();
    let rate = done as f64 / secs;
    let name = match limit {
        Limit::Pingpong => "pingpong",
        Limit::PingpongProcs => "pingpong-procs",
        Limit::PingpongEpoll => "pingpong-epoll",
        Limit::Pread => "pread",
    };
    println!(
        "RESULT label={} device=limit workload={name} qd=1 seconds={secs:.3} requests={done} \
         rate={rate:.0}",
        cli.label
    );
    Ok(())
}

fn main() -> ExitCode {
    // The far process of `--limit pingpong-procs|pingpong-epoll` is this binary again.
    let mut args = std::env::args_os().skip(1);
    if args.next().is_some_and(|a| a == benches::raw::FAR_SIDE_ARG) {
        return benches::raw::far_side_main(args);
    }
    benches::tool_main("vhost-user-load", run)
}
