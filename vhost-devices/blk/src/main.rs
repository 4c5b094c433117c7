//! `vhost-user-blk`: serves an image file or block device as a virtio-blk device over
//! vhost-user.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use vhost_backend::runtime::cli::{self, BackendArgs, QEMU_USAGE};
use vhost_backend::runtime::daemon::{install_signal_handlers, Daemon};
use vhost_backend::runtime::DeviceBackend;
use vhost_device_blk::image::{TempImage, TEMP_IMAGE_SIZE};
use vhost_device_blk::{Aio, BlkConfig, BlkDevice, DEFAULT_SERIAL, MAX_QUEUE_SIZE};

/// `--aio` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum AioMode {
    Sync,
    Threads,
    #[value(name = "io_uring")]
    IoUring,
}

/// Socket the daemon listens on when neither `--socket-path` nor `--fd` is given.
const DEFAULT_SOCKET: &str = "/tmp/vhost-user-blk.sock";

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

    /// Logical block size in bytes (a power of two, 512 to 65536) [default: 512, or with
    /// --direct the host's direct I/O alignment when larger]. With --direct, a size below
    /// that alignment is refused.
    #[arg(long)]
    logical_block_size: Option<u32>,
}

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    if cli.backend.print_capabilities {
        cli::print_capabilities("block", &["read-only", "blk-file"]);
        return ExitCode::SUCCESS;
    }
    cli::init_logging();
    match run(&mut cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => cli::report_error("vhost-user-blk", e.as_ref()),
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

fn run(cli: &mut Cli) -> Result<(), Box<dyn std::error::Error>> {
    install_signal_handlers()?;
    cli.backend.default_socket_path(DEFAULT_SOCKET);
    // Lives until the daemon returns; dropping it removes the scratch image.
    let mut scratch = None;
    let path = match &cli.blk_file {
        Some(p) => p.clone(),
        None => {
            let img = TempImage::create(TEMP_IMAGE_SIZE)?;
            log::info!(
                "no --blk-file: serving a sparse 1 GiB scratch image at {} (removed on exit)",
                img.path().display()
            );
            scratch.insert(img).path().to_path_buf()
        }
    };
    let mut config = BlkConfig {
        path,
        read_only: cli.read_only,
        num_queues: cli.num_queues,
        queue_size: cli.queue_size,
        direct: cli.direct,
        serial: cli.serial.clone(),
        logical_block_size: cli.logical_block_size,
        aio: match choose_aio(cli.aio, cli.direct)? {
            AioMode::Sync => Aio::Sync,
            AioMode::Threads => Aio::Threads(cli.aio_threads),
            AioMode::IoUring => Aio::IoUring,
        },
    };
    let device = match BlkDevice::new(&config) {
        // The probe's ring worked but the queues' did not (locked-memory limits of older
        // kernels, many queues, ...): the default falls back too.
        Err(vhost_device_blk::Error::Uring(e)) if cli.aio.is_none() => {
            log::warn!("io_uring: {e}; requests run on I/O threads instead");
            config.aio = Aio::Threads(cli.aio_threads);
            BlkDevice::new(&config)?
        }
        r => r?,
    };
    let (size, block_size) = (device.size_bytes(), device.block_size());
    let backend = DeviceBackend::new(device)?.with_memory_policy(cli.backend.memory_policy());
    let mut daemon = Daemon::from_args(&cli.backend, backend)?;
    log::info!(
        "serving {} ({} bytes, {}-byte blocks, {}, {} queue(s) of up to {}, {})",
        config.path.display(),
        size,
        block_size,
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
    );
    if let Some(sock) = &cli.backend.socket_path {
        log::info!(
            "point QEMU at it with:\n  \
             -object memory-backend-memfd,id=mem,size=1G,share=on \
             -machine q35,memory-backend=mem -m 1G \\\n  \
             -chardev socket,id=blk0,path={}{} \\\n  \
             -device vhost-user-blk-pci,chardev=blk0,num-queues={}",
            sock.display(),
            if cli.backend.client { ",server=on" } else { "" },
            config.num_queues
        );
    }
    let result = daemon.run();
    drop(daemon);
    drop(scratch);
    result.map_err(Into::into)
}
