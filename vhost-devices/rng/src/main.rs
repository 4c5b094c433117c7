//! `vhost-user-rng`: serves a virtio-rng (entropy) device over vhost-user.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use vhost_backend::runtime::cli::{
    self, BackendArgs, DaemonInfo, DeviceCli, Devices, DevicesResult, Export, QemuHint, QEMU_USAGE,
};
use vhost_backend::runtime::multi::numbered_paths;
use vhost_device_rng::{RateLimit, RngConfig, RngDevice, MAX_QUEUE_SIZE};

fn main() -> ExitCode {
    cli::main::<Cli>()
}

/// Period of the rate limit when only `--max-bytes` is given, in milliseconds.
const DEFAULT_PERIOD_MS: u64 = 1000;

/// vhost-user virtio-rng back-end.
///
/// Fills the guest's entropy requests from getrandom(2), or from --source. Without
/// --socket-path or --fd it listens on /tmp/vhost-user-rng.sock.
#[derive(Debug, Parser)]
#[command(name = "vhost-user-rng", version, after_long_help = QEMU_USAGE)]
struct Cli {
    #[command(flatten)]
    backend: BackendArgs,

    /// File to read random bytes from (e.g. /dev/urandom, /dev/hwrng); default: the
    /// getrandom(2) system call.
    #[arg(long, value_name = "PATH")]
    source: Option<PathBuf>,

    /// Rate-limit period in milliseconds, 1 to 3600000 (needs --max-bytes; default 1000).
    #[arg(long, value_name = "MS", requires = "max_bytes",
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    period: Option<u64>,

    /// At most this many bytes per period (1 or more); requests over the budget wait for the
    /// next period. Default: unlimited.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_bytes: Option<u64>,

    /// Serve N devices from this process, each with its own entropy budget, on the sockets
    /// --socket-path with 0 to N-1 appended (PATH0, PATH1, …), as rust-vmm's
    /// vhost-device-rng names them.
    #[arg(long, value_name = "N", requires = "socket_path", conflicts_with = "client",
          value_parser = clap::value_parser!(u16).range(1..=4096))]
    socket_count: Option<u16>,

    /// Largest queue size (a power of two, 1 to 32768).
    #[arg(long, default_value_t = MAX_QUEUE_SIZE,
          value_parser = clap::value_parser!(u16)
              .range(1..=i64::from(vhost_backend::runtime::MAX_VIRTIO_QUEUE_SIZE)))]
    queue_size: u16,
}

impl Cli {
    fn config(&self) -> RngConfig {
        RngConfig {
            source: self.source.clone(),
            rate_limit: self.max_bytes.map(|max_bytes| RateLimit {
                period: Duration::from_millis(self.period.unwrap_or(DEFAULT_PERIOD_MS)),
                max_bytes,
            }),
            queue_size: self.queue_size,
        }
    }
}

impl DeviceCli for Cli {
    type Device = RngDevice;
    const DAEMON: DaemonInfo = DaemonInfo::new("vhost-user-rng", "rng");

    fn backend_args(&mut self) -> &mut BackendArgs {
        &mut self.backend
    }

    /// One device, or with `--socket-count N` N devices, one per socket, each with its own
    /// entropy budget.
    fn devices(&mut self) -> DevicesResult<RngDevice> {
        let config = self.config();
        let (Some(n), Some(path)) = (self.socket_count, &self.backend.socket_path) else {
            let device = RngDevice::new(&config)?;
            let serving = source(&config, &device);
            let qemu = QemuHint::new("rng0", "vhost-user-rng-pci");
            return Ok(Devices::one(device, serving, qemu));
        };
        let exports = numbered_paths(path, n.into())
            .into_iter()
            .map(|socket| {
                let device = RngDevice::new(&config)?;
                let serving = String::new();
                Ok(Export {
                    socket,
                    device,
                    serving,
                })
            })
            .collect::<Result<Vec<_>, vhost_device_rng::RngError>>()?;
        let mut ready: Vec<String> = exports
            .first()
            .map(|e| source(&config, &e.device))
            .into_iter()
            .collect();
        ready.push(format!(
            "{n} devices on {}0 to {}{}, each with its own entropy budget",
            path.display(),
            path.display(),
            n - 1
        ));
        Ok(Devices::Many { exports, ready })
    }
}

/// The line saying where `device`'s entropy comes from, and at what rate.
fn source(config: &RngConfig, device: &RngDevice) -> String {
    let description = device.source().describe();
    match config.rate_limit {
        Some(l) => format!(
            "entropy from {}, at most {} bytes every {} ms",
            description,
            l.max_bytes,
            l.period.as_millis()
        ),
        None => format!("entropy from {description}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_from(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(args)
    }

    #[test]
    fn no_socket_option_is_accepted_for_the_default_socket() {
        let c = parse_from(&["vhost-user-rng"]).unwrap();
        assert_eq!(c.backend.socket_path, None);
        assert_eq!(c.config(), RngConfig::default());
    }

    #[test]
    fn max_bytes_alone_gets_the_default_period() {
        let c = parse_from(&["x", "--max-bytes", "4096"]).unwrap();
        let l = c.config().rate_limit.unwrap();
        assert_eq!((l.period, l.max_bytes), (Duration::from_secs(1), 4096));
        let c = parse_from(&["x", "--max-bytes", "10", "--period", "100"]).unwrap();
        assert_eq!(
            c.config().rate_limit.unwrap().period,
            Duration::from_millis(100)
        );
    }

    #[test]
    fn period_without_max_bytes_or_zero_values_are_rejected() {
        assert!(parse_from(&["x", "--period", "100"]).is_err());
        assert!(parse_from(&["x", "--max-bytes", "0"]).is_err());
        assert!(parse_from(&["x", "--max-bytes", "1", "--period", "0"]).is_err());
    }

    #[test]
    fn socket_count_needs_a_socket_path_and_is_at_least_one() {
        let c = parse_from(&["x", "--socket-path", "/s", "--socket-count", "3"]).unwrap();
        assert_eq!(c.socket_count, Some(3));
        assert!(parse_from(&["x", "--socket-count", "3"]).is_err());
        assert!(parse_from(&["x", "--socket-path", "/s", "--socket-count", "0"]).is_err());
        assert!(parse_from(&[
            "x",
            "--socket-path",
            "/s",
            "--socket-count",
            "2",
            "--client"
        ])
        .is_err());
    }

    #[test]
    fn socket_path_and_fd_stay_mutually_exclusive() {
        assert!(parse_from(&["x", "--socket-path", "/s", "--fd", "3"]).is_err());
        let c = parse_from(&["x", "--source", "/dev/urandom", "--fd", "3"]).unwrap();
        assert_eq!(c.source, Some(PathBuf::from("/dev/urandom")));
    }
}
