//! The data plane in one process: the guest-side driver (`vhost-frontend` session) and a
//! device served by the runtime's daemon on a thread, over a socket pair.
//!
//! - blk: 4 KiB random reads of a page-cached pattern image at queue depth 1 and 16;
//! - rng: 4 KiB fills at queue depth 1 and 16;
//!
//! each next to the machine's limit for the same work:
//!
//! - QD1: an eventfd ping-pong between two threads (kick, call) with the far thread doing
//!   the device's work (`pread` of 4 KiB from the same image, or `getrandom` of 4 KiB);
//! - QD16: the device's work alone on one thread (the `pread` or `getrandom` rate), which
//!   is what one device thread cannot beat however well notifications are batched.
//!
//! Throughput is in elements, so criterion prints requests per second. Every completion is
//! checked by the engine (status, length, data), and the limits check what they read.

use std::fs::File;
use std::time::{Duration, Instant};

use benches::image::TempImage;
use benches::inproc::InProcess;
use benches::load::{memory_size, Engine, Workload};
use benches::raw::{getrandom, pread_block, EventfdPingPong, FarWork};
use benches::{pattern, XorShift, BLOCK};
use criterion::measurement::WallTime;
use criterion::{criterion_group, BenchmarkGroup, Criterion, Throughput};
use vhost_device_blk::{BlkConfig, BlkDevice};
use vhost_device_rng::{RngConfig, RngDevice};
use vhost_frontend::SessionOptions;

const IMAGE_SIZE: u64 = 256 << 20;
const BLOCKS: u64 = IMAGE_SIZE / BLOCK as u64;
const QUEUE_SIZE: u16 = 256;

fn options(depth: usize, config: bool) -> SessionOptions {
    SessionOptions {
        queue_size: QUEUE_SIZE,
        memory_size: memory_size(depth, QUEUE_SIZE),
        config_size: config.then_some(60),
        ..SessionOptions::default()
    }
}

/// Runs `iters` requests through `engine` (keeping it full) and returns the time scaled to
/// exactly `iters` requests.
fn timed(engine: &mut Engine, iters: u64) -> Duration {
    let start = Instant::now();
    let done = engine.run_count(iters).expect("requests failed");
    let elapsed = start.elapsed();
    elapsed.mul_f64(iters as f64 / done as f64)
}

fn bench_device(g: &mut BenchmarkGroup<'_, WallTime>, mut engine: Engine) {
    engine.fill().expect("fill");
    g.bench_function("device", |b| {
        b.iter_custom(|iters| timed(&mut engine, iters))
    });
    engine.drain().expect("drain");
}

fn blk_engine(image: &TempImage, depth: usize) -> (InProcess, Engine) {
    let device = BlkDevice::new(&BlkConfig::new(image.path())).expect("blk device");
    let (daemon, session) = InProcess::start(device, options(depth, true)).expect("start");
    let engine = Engine::new(session, Workload::RandRead, depth, BLOCKS, 7).expect("engine");
    (daemon, engine)
}

fn rng_engine(depth: usize) -> (InProcess, Engine) {
    let device = RngDevice::new(&RngConfig::default()).expect("rng device");
    let (daemon, session) = InProcess::start(device, options(depth, false)).expect("start");
    let engine = Engine::new(session, Workload::Rng, depth, 0, 7).expect("engine");
    (daemon, engine)
}

fn bench_blk(c: &mut Criterion) {
    let image = TempImage::new("dataplane", IMAGE_SIZE).expect("image");
    for depth in [1usize, 16] {
        let mut g = c.benchmark_group(format!("dataplane/blk_randread_4k_qd{depth}"));
        g.throughput(Throughput::Elements(1));
        let (daemon, engine) = blk_engine(&image, depth);
        bench_device(&mut g, engine);
        drop(daemon);

        let mut rng = XorShift::new(11);
        if depth == 1 {
            let file = File::open(image.path()).expect("image");
            let pp = EventfdPingPong::new(FarWork::Pread(file)).expect("ping-pong");
            g.bench_function("limit_eventfd_pread", |b| {
                b.iter(|| {
                    let offset = rng.below(BLOCKS) * BLOCK as u64;
                    assert_eq!(pp.round_trip(offset).expect("round trip"), pattern(offset));
                })
            });
        } else {
            let file = File::open(image.path()).expect("image");
            let mut buf = Box::new([0u8; BLOCK]);
            g.bench_function("limit_pread", |b| {
                b.iter(|| {
                    let offset = rng.below(BLOCKS) * BLOCK as u64;
                    let first = pread_block(&file, &mut buf, offset).expect("pread");
                    assert_eq!(first, pattern(offset));
                })
            });
        }
        g.finish();
    }
}

fn bench_rng(c: &mut Criterion) {
    for depth in [1usize, 16] {
        let mut g = c.benchmark_group(format!("dataplane/rng_4k_qd{depth}"));
        g.throughput(Throughput::Elements(1));
        let (daemon, engine) = rng_engine(depth);
        bench_device(&mut g, engine);
        drop(daemon);
        if depth == 1 {
            let pp = EventfdPingPong::new(FarWork::Getrandom).expect("ping-pong");
            g.bench_function("limit_eventfd_getrandom", |b| {
                b.iter(|| assert_ne!(pp.round_trip(0).expect("round trip"), 0))
            });
        } else {
            let mut buf = Box::new([0u8; BLOCK]);
            g.bench_function("limit_getrandom", |b| {
                b.iter(|| {
                    buf[..8].fill(0);
                    getrandom(&mut buf[..]).expect("getrandom");
                    assert_ne!(buf[..8], [0; 8]);
                })
            });
        }
        g.finish();
    }
}

fn bench_notify(c: &mut Criterion) {
    let mut g = c.benchmark_group("dataplane/notify");
    g.throughput(Throughput::Elements(1));
    let pp = EventfdPingPong::new(FarWork::Nothing).expect("ping-pong");
    g.bench_function("eventfd_round_trip", |b| {
        b.iter(|| pp.round_trip(0).expect("round trip"))
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .sample_size(50)
}

criterion_group! {
    name = dataplane;
    config = config();
    targets = bench_notify, bench_blk, bench_rng
}

/// Each device next to its limit in alternating rounds (see `benches::report::paired`).
fn paired() {
    use benches::report::paired;
    let image = TempImage::new("dataplane-paired", IMAGE_SIZE).expect("image");
    let mut rng = XorShift::new(13);
    for depth in [1usize, 16] {
        let (daemon, mut engine) = blk_engine(&image, depth);
        engine.fill().expect("fill");
        let file = File::open(image.path()).expect("image");
        let name = format!("dataplane/blk_randread_4k_qd{depth} device vs limit");
        let device = || engine.step(true).expect("requests failed");
        if depth == 1 {
            let pp = EventfdPingPong::new(FarWork::Pread(file)).expect("ping-pong");
            let p = paired(&name, 21, 20_000, device, || {
                let offset = rng.below(BLOCKS) * BLOCK as u64;
                assert_eq!(pp.round_trip(offset).expect("round trip"), pattern(offset));
                1
            });
            println!("{p}");
        } else {
            let mut buf = Box::new([0u8; BLOCK]);
            let p = paired(&name, 21, 50_000, device, || {
                let offset = rng.below(BLOCKS) * BLOCK as u64;
                assert_eq!(
                    pread_block(&file, &mut buf, offset).expect("pread"),
                    pattern(offset)
                );
                1
            });
            println!("{p}");
        }
        engine.drain().expect("drain");
        drop(engine);
        drop(daemon);
    }
    for depth in [1usize, 16] {
        let (daemon, mut engine) = rng_engine(depth);
        engine.fill().expect("fill");
        let name = format!("dataplane/rng_4k_qd{depth} device vs limit");
        let device = || engine.step(true).expect("requests failed");
        if depth == 1 {
            let pp = EventfdPingPong::new(FarWork::Getrandom).expect("ping-pong");
            let p = paired(&name, 21, 2_000, device, || {
                assert_ne!(pp.round_trip(0).expect("round trip"), 0);
                1
            });
            println!("{p}");
        } else {
            let mut buf = Box::new([0u8; BLOCK]);
            let p = paired(&name, 21, 2_000, device, || {
                buf[..8].fill(0);
                getrandom(&mut buf[..]).expect("getrandom");
                assert_ne!(buf[..8], [0; 8]);
                1
            });
            println!("{p}");
        }
        engine.drain().expect("drain");
        drop(engine);
        drop(daemon);
    }
}

fn main() {
    dataplane();
    Criterion::default().configure_from_args().final_summary();
    let pairs: [(&str, &str); 4] = [
        ("dataplane/blk_randread_4k_qd1", "limit_eventfd_pread"),
        ("dataplane/blk_randread_4k_qd16", "limit_pread"),
        ("dataplane/rng_4k_qd1", "limit_eventfd_getrandom"),
        ("dataplane/rng_4k_qd16", "limit_getrandom"),
    ];
    for (group, limit) in pairs {
        println!("{}", benches::report::ratios(group, &[("device", limit)]));
    }
    if !std::env::args().any(|a| ["--list", "--test", "--profile-time"].contains(&a.as_str())) {
        paired();
    }
}
