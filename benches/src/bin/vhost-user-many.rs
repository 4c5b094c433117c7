//! `vhost-user-many`: what devices cost when one process serves many of them.
//!
//! It starts a host process (this program with `--serve`) that serves `--rng` rng devices
//! and `--blk` blk exports (pattern images of `--image-mib` MiB) from one
//! [`MultiDaemon`], and reads that process's threads, resident memory and open descriptors
//! from `/proc` at four moments:
//!
//! 1. a host with no device (the process's own cost);
//! 2. every device exported, nothing connected;
//! 3. every device connected and negotiated, with its memory table, rings not started;
//! 4. `--active-rng` + `--active-blk` front-ends doing verified I/O at once (queue depth
//!    `--qd`: rng fills checked for length, blk random reads checked against the pattern).
//!
//! and prints the cost per device between the moments. Resident memory is split as `/proc`
//! splits it: anonymous (the daemon's own) and shared (guest memory the daemon maps and
//! touches, which belongs to the front-end's memfd).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode};
use std::time::{Duration, Instant};

use benches::load::{memory_size, Engine, Workload};
use clap::Parser;
use vhost_backend::runtime::daemon::install_signal_handlers;
use vhost_backend::runtime::{DeviceBackend, MultiDaemon};
use vhost_backend::Backend;
use vhost_device_blk::{BlkConfig, BlkDevice};
use vhost_device_rng::{RngConfig, RngDevice};
use vhost_frontend::devices::blk::BlkConfig as BlkSpace;
use vhost_frontend::{Session, SessionOptions};

/// Many devices from one process: threads, memory and descriptors per device.
#[derive(Debug, Parser)]
#[command(name = "vhost-user-many", version)]
struct Cli {
    /// rng devices.
    #[arg(long, default_value_t = 64)]
    rng: usize,
    /// blk exports.
    #[arg(long, default_value_t = 16)]
    blk: usize,
    /// rng devices doing I/O at moment 4.
    #[arg(long, default_value_t = 48)]
    active_rng: usize,
    /// blk exports doing I/O at moment 4.
    #[arg(long, default_value_t = 16)]
    active_blk: usize,
    /// Queue depth of each active front-end.
    #[arg(long, default_value_t = 4)]
    qd: u16,
    /// Seconds of I/O at moment 4.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Size of each blk image in MiB.
    #[arg(long, default_value_t = 16)]
    image_mib: u64,
    /// Work directory (sockets, images); a fresh one under the temporary directory by
    /// default.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Be the host process: serve the devices in --dir until SIGTERM.
    #[arg(long, hide = true)]
    serve: bool,
}

type Error = Box<dyn std::error::Error>;

fn rng_socket(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("rng{i}.sock"))
}

fn blk_socket(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("blk{i}.sock"))
}

fn blk_image(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("blk{i}.img"))
}

/// The host process.
fn serve(cli: &Cli, dir: &Path) -> Result<(), Error> {
    install_signal_handlers()?;
    let mut d: MultiDaemon<Box<dyn Backend>> = MultiDaemon::new()?;
    for i in 0..cli.rng {
        let dev = RngDevice::new(&RngConfig::default())?;
        d.bind(
            &rng_socket(dir, i),
            None,
            Box::new(DeviceBackend::new(dev)?),
        )?;
    }
    for i in 0..cli.blk {
        let dev = BlkDevice::new(&BlkConfig::new(blk_image(dir, i)))?;
        d.bind(
            &blk_socket(dir, i),
            None,
            Box::new(DeviceBackend::new(dev)?),
        )?;
    }
    d.run()?;
    Ok(())
}

/// What `/proc` says of a process.
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    threads: i64,
    rss_anon_kib: i64,
    rss_shared_kib: i64,
    fds: i64,
}

impl std::ops::Sub for Usage {
    type Output = Usage;
    fn sub(self, o: Usage) -> Usage {
        Usage {
            threads: self.threads - o.threads,
            rss_anon_kib: self.rss_anon_kib - o.rss_anon_kib,
            rss_shared_kib: self.rss_shared_kib - o.rss_shared_kib,
            fds: self.fds - o.fds,
        }
    }
}

fn usage(pid: u32) -> Result<Usage, Error> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> i64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as i64;
    Ok(Usage {
        threads: field("Threads:"),
        rss_anon_kib: field("RssAnon:"),
        rss_shared_kib: field("RssShmem:") + field("RssFile:"),
        fds,
    })
}

struct Host(Child);

impl Host {
    fn start(cli: &Cli, dir: &Path, rng: usize, blk: usize) -> Result<Self, Error> {
        let child = Command::new(std::env::current_exe()?)
            .args([
                "--serve",
                "--rng",
                &rng.to_string(),
                "--blk",
                &blk.to_string(),
            ])
            .arg("--dir")
            .arg(dir)
            .env("RUST_LOG", "warn")
            .spawn()?;
        let host = Host(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        let last = if blk > 0 {
            blk_socket(dir, blk - 1)
        } else if rng > 0 {
            rng_socket(dir, rng - 1)
        } else {
            PathBuf::new()
        };
        while !last.as_os_str().is_empty() && !last.exists() {
            if Instant::now() > deadline {
                return Err("the host process did not start listening".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Let it settle (the event loop registered every listener).
        std::thread::sleep(Duration::from_millis(300));
        let _ = cli;
        Ok(host)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.0.wait();
    }
}

fn options(qd: u16, blk: bool) -> SessionOptions {
    SessionOptions {
        queue_size: 256,
        memory_size: memory_size(usize::from(qd), 256),
        config_size: blk.then_some(60),
        ..SessionOptions::default()
    }
}

fn run(cli: &Cli) -> Result<(), Error> {
    let dir = match &cli.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("vhost-user-many-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir)?;
    if cli.serve {
        return serve(cli, &dir);
    }
    if cli.active_rng > cli.rng || cli.active_blk > cli.blk {
        return Err("more active devices than devices".into());
    }
    for i in 0..cli.blk {
        benches::image::create(&blk_image(&dir, i), cli.image_mib << 20)?;
    }
    let devices = (cli.rng + cli.blk) as i64;
    let active = (cli.active_rng + cli.active_blk) as i64;

    let empty = Host::start(cli, &dir, 0, 0)?;
    let base = usage(empty.pid())?;
    drop(empty);

    let host = Host::start(cli, &dir, cli.rng, cli.blk)?;
    let pid = host.pid();
    let exported = usage(pid)?;

    let mut sessions = Vec::new();
    for i in 0..cli.rng {
        sessions.push((
            false,
            Session::connect(rng_socket(&dir, i), options(cli.qd, false))?,
        ));
    }
    for i in 0..cli.blk {
        sessions.push((
            true,
            Session::connect(blk_socket(&dir, i), options(cli.qd, true))?,
        ));
    }
    std::thread::sleep(Duration::from_millis(300));
    let connected = usage(pid)?;

    // The active ones: the first active_rng rng sessions and the first active_blk blk ones.
    let (mut rng_left, mut blk_left) = (cli.active_rng, cli.active_blk);
    let mut idle = Vec::new();
    let mut workers = Vec::new();
    let run_for = Duration::from_secs_f64(cli.seconds);
    for (is_blk, mut s) in sessions {
        let left = if is_blk { &mut blk_left } else { &mut rng_left };
        if *left == 0 {
            idle.push(s);
            continue;
        }
        *left -= 1;
        let qd = usize::from(cli.qd);
        workers.push(std::thread::spawn(move || -> Result<u64, String> {
            s.start().map_err(|e| e.to_string())?;
            let (workload, blocks) = if is_blk {
                let space = s
                    .config()
                    .and_then(BlkSpace::parse)
                    .ok_or("no blk configuration space")?;
                (
                    Workload::RandRead,
                    space.capacity * 512 / benches::BLOCK as u64,
                )
            } else {
                (Workload::Rng, 0)
            };
            let mut e = Engine::new(s, workload, qd, blocks, 1).map_err(|e| e.to_string())?;
            e.fill().map_err(|e| e.to_string())?;
            let (done, _) = e.run_for(run_for).map_err(|e| e.to_string())?;
            e.drain().map_err(|e| e.to_string())?;
            Ok(done)
        }));
    }
    std::thread::sleep(run_for / 2);
    let busy = usage(pid)?;
    let mut total = 0;
    for w in workers {
        total += w.join().map_err(|_| "an I/O thread panicked")??;
    }
    drop(idle);

    let per = |u: Usage, n: i64| {
        format!(
            "{:>8.2} {:>12.1} {:>14.1} {:>6.2}",
            u.threads as f64 / n as f64,
            u.rss_anon_kib as f64 / n as f64,
            u.rss_shared_kib as f64 / n as f64,
            u.fds as f64 / n as f64
        )
    };
    println!(
        "one host process, {} rng + {} blk devices; {} of them doing verified I/O at queue \
         depth {} for {:.1} s ({total} requests, all checked)",
        cli.rng, cli.blk, active, cli.qd, cli.seconds
    );
    println!(
        "{:<44} {:>8} {:>12} {:>14} {:>6}",
        "moment (whole process)", "threads", "anon KiB", "shared KiB", "fds"
    );
    for (name, u) in [
        ("host with no device", base),
        ("devices exported, nothing connected", exported),
        ("every device connected, rings stopped", connected),
        ("active devices doing I/O", busy),
    ] {
        println!(
            "{name:<44} {:>8} {:>12} {:>14} {:>6}",
            u.threads, u.rss_anon_kib, u.rss_shared_kib, u.fds
        );
    }
    println!(
        "{:<44} {:>8} {:>12} {:>14} {:>6}",
        "cost per device", "threads", "anon KiB", "shared KiB", "fds"
    );
    println!(
        "{:<44} {}",
        "exported, not connected",
        per(exported - base, devices)
    );
    println!(
        "{:<44} {}",
        "connected, rings stopped (beyond exported)",
        per(connected - exported, devices)
    );
    println!(
        "{:<44} {}",
        "active (beyond connected)",
        per(busy - connected, active)
    );
    println!(
        "RESULT devices={devices} active={active} requests={total} idle_threads={} \
         idle_anon_kib={:.1} active_threads={:.2} active_anon_kib={:.1}",
        connected.threads - base.threads,
        (connected - base).rss_anon_kib as f64 / devices as f64,
        (busy - connected).threads as f64 / active as f64,
        (busy - connected).rss_anon_kib as f64 / active as f64,
    );
    drop(host);
    if cli.dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

fn main() -> ExitCode {
    benches::tool_main("vhost-user-many", run)
}
