//! `vhost-user-blk`: serves an image file or block device as a virtio-blk device over
//! vhost-user.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use vhost_backend::runtime::cli::{
    self, BackendArgs, DaemonInfo, DeviceCli, Devices, DevicesResult, Export, QemuHint, QEMU_USAGE,
};
use vhost_device_blk::export::ExportSpec;
use vhost_device_blk::image::{TempImage, TEMP_IMAGE_SIZE};
use vhost_device_blk::{Aio, BlkConfig, BlkDevice, DEFAULT_SERIAL, MAX_QUEUE_SIZE};

fn main() -> ExitCode {
    cli::main::<Cli>()
}

/// `--aio` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum AioMode {
    Sync,
    Threads,
    #[value(name = "io_uring")]
    IoUring,
}

/// vhost-user virtio-blk back-end.
///
/// Serves a raw image file or block device. Without --blk-file it serves a fresh sparse
/// 1 GiB scratch image, removed on exit; without --socket-path or --fd it listens on
/// /tmp/vhost-user-blk.sock.
#[derive(Debug, Parser)]
#[command(name = "vhost-user-blk", version, after_long_help = QEMU_USAGE)]
struct Cli {
    #[command(flatten)]
    backend: BackendArgs,

    /// Raw image file or block device to serve.
    #[arg(long, value_name = "PATH")]
    blk_file: Option<PathBuf>,

    /// Serve the image read-only (VIRTIO_BLK_F_RO).
    #[arg(long)]
    read_only: bool,

    /// Number of request queues (1 to 256).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    num_queues: u16,

    /// Largest queue size (a power of two, 1 to 1024).
    #[arg(long, default_value_t = 256,
          value_parser = clap::value_parser!(u16).range(1..=i64::from(MAX_QUEUE_SIZE)))]
    queue_size: u16,

    /// Open the image with O_DIRECT (bypass the host page cache). Guest buffers that do not
    /// meet the host's alignment are copied through an aligned buffer.
    #[arg(long)]
    direct: bool,

    /// Device serial returned to GET_ID (at most 20 bytes are used).
    #[arg(long, default_value = DEFAULT_SERIAL)]
    serial: String,

    /// Where requests run: `sync` (on the queue's worker, one at a time: fastest on the page
    /// cache), `io_uring` (one io_uring per queue: many requests in flight, for disks) or
    /// `threads` (a pool of --aio-threads threads: the same where io_uring is unavailable)
    /// [default: with --direct io_uring where it works, else threads (the log says why);
    /// without --direct sync].
    #[arg(long, value_enum)]
    aio: Option<AioMode>,

    /// I/O threads of --aio threads (1 to 256).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
    aio_threads: u16,

    /// Serve one more disk from this process: `socket=PATH,file=IMG[,read-only=on]
    /// [,num-queues=N][,queue-size=N][,direct=on][,serial=S]` (repeat for each disk; the
    /// other options are the defaults of every export). Replaces --socket-path, --fd and
    /// --blk-file.
    #[arg(long, value_name = "KEY=VALUE,...",
          conflicts_with_all = ["socket_path", "fd", "blk_file", "client"])]
    export: Vec<ExportSpec>,

    /// Logical block size in bytes (a power of two, 512 to 65536) [default: 512, or with
    /// --direct the host's direct I/O alignment when larger]. With --direct, a size below
    /// that alignment is refused.
    #[arg(long)]
    logical_block_size: Option<u32>,

    /// The scratch image served without --blk-file, removed when the daemon returns.
    #[arg(skip)]
    scratch: Option<TempImage>,
}

impl DeviceCli for Cli {
    type Device = BlkDevice;
    const DAEMON: DaemonInfo =
        DaemonInfo::new("vhost-user-blk", "block").with_capabilities(&["read-only", "blk-file"]);

    fn backend_args(&mut self) -> &mut BackendArgs {
        &mut self.backend
    }

    fn devices(&mut self) -> DevicesResult<BlkDevice> {
        if !self.export.is_empty() {
            return self.exports();
        }
        let path = match &self.blk_file {
            Some(p) => p.clone(),
            None => {
                let img = TempImage::create(TEMP_IMAGE_SIZE)?;
                log::info!(
                    "no --blk-file: serving a sparse 1 GiB scratch image at {} (removed on exit)",
                    img.path().display()
                );
                // Kept in `self` until the daemon returns; dropping it removes the image.
                self.scratch.insert(img).path().to_path_buf()
            }
        };
        let mut config = base_config(self, path)?;
        let device = open_device(self, &mut config)?;
        let serving = serving(&config, &device);
        let mut qemu = QemuHint::new("blk0", "vhost-user-blk-pci");
        qemu.properties = format!(",num-queues={}", config.num_queues);
        Ok(Devices::one(device, serving, qemu))
    }
}

impl Cli {
    /// `--export ...`: every disk from this process, each on its own socket with its own
    /// device.
    fn exports(&self) -> DevicesResult<BlkDevice> {
        vhost_device_blk::export::check_distinct(&self.export, self.read_only)?;
        let mut exports = Vec::new();
        for (export, mut config) in export_configs(self)? {
            let device = open_device(self, &mut config)
                .map_err(|e| format!("export {}: {e}", export.socket.display()))?;
            exports.push(Export {
                socket: export.socket.clone(),
                serving: serving(&config, &device),
                device,
            });
        }
        let ready = vec![format!("{} exports from this process", exports.len())];
        Ok(Devices::Many { exports, ready })
    }
}

/// The engine asked for, or the default: with `--direct` io_uring where it works (else the
/// I/O threads, saying why), without it `sync` (the least work per request on the page
/// cache). An explicit `io_uring` that does not work here is an error.
fn choose_aio(asked: Option<AioMode>, direct: bool) -> Result<AioMode, String> {
    match asked {
        Some(AioMode::IoUring) => match vhost_device_blk::engine::io_uring_available() {
            Ok(()) => Ok(AioMode::IoUring),
            Err(e) => Err(format!(
                "--aio io_uring: io_uring does not work here ({e}); use --aio threads"
            )),
        },
        Some(mode) => Ok(mode),
        None if direct => match vhost_device_blk::engine::io_uring_available() {
            Ok(()) => {
                log::info!("--direct: requests run on io_uring (the default where it works)");
                Ok(AioMode::IoUring)
            }
            Err(e) => {
                log::warn!(
                    "--direct: io_uring does not work here ({e}); requests run on I/O threads \
                     instead"
                );
                Ok(AioMode::Threads)
            }
        },
        None => Ok(AioMode::Sync),
    }
}

/// Each `--export` with the configuration of its disk: the command line's options with
/// what the export says, the default engine following the export's own `direct`.
fn export_configs(cli: &Cli) -> Result<Vec<(&ExportSpec, BlkConfig)>, String> {
    let base = base_config(cli, PathBuf::new())?;
    cli.export
        .iter()
        .map(|export| {
            let mut config = export.config(&base);
            config.aio = aio(cli, config.direct)?;
            Ok((export, config))
        })
        .collect()
}

/// The configuration the command line gives a disk at `path`.
fn base_config(cli: &Cli, path: PathBuf) -> Result<BlkConfig, String> {
    Ok(BlkConfig {
        path,
        read_only: cli.read_only,
        num_queues: cli.num_queues,
        queue_size: cli.queue_size,
        direct: cli.direct,
        serial: cli.serial.clone(),
        logical_block_size: cli.logical_block_size,
        aio: aio(cli, cli.direct)?,
    })
}

/// The engine `--aio` names, or the default for a disk opened with `direct` or not.
fn aio(cli: &Cli, direct: bool) -> Result<Aio, String> {
    Ok(match choose_aio(cli.aio, direct)? {
        AioMode::Sync => Aio::Sync,
        AioMode::Threads => Aio::Threads(cli.aio_threads),
        AioMode::IoUring => Aio::IoUring,
    })
}

/// Opens the disk `config` describes. When the default engine is io_uring and the probe's
/// ring worked but the queues' did not (locked-memory limits of older kernels, many
/// queues, ...), the default falls back to the I/O threads too.
fn open_device(cli: &Cli, config: &mut BlkConfig) -> Result<BlkDevice, vhost_device_blk::Error> {
    match BlkDevice::new(config) {
        Err(vhost_device_blk::Error::Uring(e)) if cli.aio.is_none() => {
            log::warn!("io_uring: {e}; requests run on I/O threads instead");
            config.aio = Aio::Threads(cli.aio_threads);
            BlkDevice::new(config)
        }
        r => r,
    }
}

/// The line saying what `device` serves.
fn serving(config: &BlkConfig, device: &BlkDevice) -> String {
    format!(
        "serving {} ({} bytes, {}-byte blocks, {}, {} queue(s) of up to {}, {})",
        config.path.display(),
        device.size_bytes(),
        device.block_size(),
        if config.read_only {
            "read-only"
        } else {
            "read-write"
        },
        config.num_queues,
        config.queue_size,
        match config.aio {
            Aio::Sync => "requests run on the queue workers".to_owned(),
            Aio::Threads(n) => format!("requests run on {n} I/O threads"),
            Aio::IoUring => "requests run on one io_uring per queue".to_owned(),
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_export_gets_the_default_engine_of_its_own_direct() {
        let cli = Cli::try_parse_from([
            "x",
            "--export",
            "socket=/a,file=/i,direct=on",
            "--export",
            "socket=/b,file=/j",
        ])
        .unwrap();
        let configs = export_configs(&cli).unwrap();
        assert!(
            matches!(configs[0].1.aio, Aio::IoUring | Aio::Threads(16)),
            "direct=on: the O_DIRECT default (io_uring where it works, else I/O threads)"
        );
        assert_eq!(configs[1].1.aio, Aio::Sync, "page cache: the queue workers");
        let cli =
            Cli::try_parse_from(["x", "--direct", "--export", "socket=/a,file=/i,direct=off"])
                .unwrap();
        assert_eq!(export_configs(&cli).unwrap()[0].1.aio, Aio::Sync);
        let cli = Cli::try_parse_from(["x", "--aio", "threads", "--export", "socket=/a,file=/i"])
            .unwrap();
        assert_eq!(
            export_configs(&cli).unwrap()[0].1.aio,
            Aio::Threads(16),
            "--aio wins"
        );
    }

    #[test]
    fn export_replaces_the_single_disk_options() {
        for other in [["--blk-file", "/i"], ["--socket-path", "/s"], ["--fd", "3"]] {
            let mut args = vec!["x", "--export", "socket=/a,file=/i"];
            args.extend(other);
            assert!(Cli::try_parse_from(args).is_err(), "{other:?}");
        }
    }
}
