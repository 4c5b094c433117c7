//! `vhost-user-probe`: connects to a vhost-user back-end socket, negotiates, prints what the
//! back-end offers, and optionally runs a virtio-blk or virtio-rng smoke test.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use vhost_frontend::devices::blk::{self, BlkConfig, BlkRequests};
use vhost_frontend::devices::rng::RngReader;
use vhost_frontend::{Sequence, Session, SessionOptions};
use vhost_proto::features::PROTOCOL_FEATURE_TABLE;
use vhost_proto::ProtocolFeatures;

/// Probe a vhost-user back-end: negotiate, print its offer, optionally run a smoke test.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The back-end's socket.
    #[arg(long, short = 's')]
    socket: std::path::PathBuf,
    /// Device type, for naming device-specific feature bits (blk, rng, net, ...).
    #[arg(long)]
    device: Option<String>,
    /// Bytes of configuration space to read (when CONFIG is offered).
    #[arg(long)]
    config_size: Option<u32>,
    /// Queue size.
    #[arg(long, default_value_t = 128)]
    queue_size: u16,
    /// Protocol features not to ack, by name (comma-separated, e.g. CONFIGURE_MEM_SLOTS).
    #[arg(long, value_delimiter = ',')]
    mask_protocol: Vec<String>,
    /// Do not ack VIRTIO_RING_F_EVENT_IDX.
    #[arg(long)]
    no_event_idx: bool,
    /// Run a virtio-blk smoke test: read sectors, write a pattern, read it back, flush,
    /// GET_ID.
    #[arg(long)]
    blk_smoke: bool,
    /// virtio-blk: sectors to read from sector 0.
    #[arg(long, default_value_t = 8)]
    sectors: u32,
    /// virtio-blk: sector the pattern is written to.
    #[arg(long, default_value_t = 2048)]
    write_sector: u64,
    /// virtio-blk: leave the pattern on the disk instead of restoring the sector.
    #[arg(long)]
    keep_pattern: bool,
    /// Run a virtio-rng smoke test: fill a few buffers, check they are not all zeros.
    #[arg(long)]
    rng_smoke: bool,
    /// Seconds to wait for any reply or completion.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
}

const VIRTIO_NAMES: &[(u32, &str)] = &[
    (24, "NOTIFY_ON_EMPTY"),
    (26, "LOG_ALL"),
    (27, "ANY_LAYOUT"),
    (28, "RING_INDIRECT_DESC"),
    (29, "RING_EVENT_IDX"),
    (30, "PROTOCOL_FEATURES"),
    (32, "VERSION_1"),
    (33, "ACCESS_PLATFORM"),
    (34, "RING_PACKED"),
    (35, "IN_ORDER"),
    (36, "ORDER_PLATFORM"),
    (37, "SR_IOV"),
    (38, "NOTIFICATION_DATA"),
    (39, "NOTIF_CONFIG_DATA"),
    (40, "RING_RESET"),
];

const BLK_NAMES: &[(u32, &str)] = &[
    (0, "BARRIER"),
    (1, "SIZE_MAX"),
    (2, "SEG_MAX"),
    (4, "GEOMETRY"),
    (5, "RO"),
    (6, "BLK_SIZE"),
    (7, "SCSI"),
    (9, "FLUSH"),
    (10, "TOPOLOGY"),
    (11, "CONFIG_WCE"),
    (12, "MQ"),
    (13, "DISCARD"),
    (14, "WRITE_ZEROES"),
    (15, "LIFETIME"),
    (16, "SECURE_ERASE"),
    (17, "ZONED"),
];

const NET_NAMES: &[(u32, &str)] = &[
    (0, "CSUM"),
    (1, "GUEST_CSUM"),
    (3, "MTU"),
    (5, "MAC"),
    (7, "GUEST_TSO4"),
    (8, "GUEST_TSO6"),
    (10, "GUEST_UFO"),
    (11, "HOST_TSO4"),
    (12, "HOST_TSO6"),
    (14, "HOST_UFO"),
    (15, "MRG_RXBUF"),
    (16, "STATUS"),
    (17, "CTRL_VQ"),
    (18, "CTRL_RX"),
    (19, "CTRL_VLAN"),
    (21, "GUEST_ANNOUNCE"),
    (22, "MQ"),
    (23, "CTRL_MAC_ADDR"),
];

fn feature_names(features: u64, device: Option<&str>) -> String {
    let device_names = match device {
        Some("blk") => BLK_NAMES,
        Some("net") => NET_NAMES,
        _ => &[],
    };
    (0..64)
        .filter(|b| features & (1u64 << b) != 0)
        .map(|b| {
            VIRTIO_NAMES
                .iter()
                .chain(device_names)
                .find(|(bit, _)| *bit == b)
                .map_or_else(|| format!("bit{b}"), |(_, n)| (*n).to_string())
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn protocol_names(p: ProtocolFeatures) -> String {
    let mut names: Vec<String> = PROTOCOL_FEATURE_TABLE
        .iter()
        .filter(|(_, bit)| p.bits() & (1 << bit) != 0)
        .map(|(n, _)| (*n).to_string())
        .collect();
    let unknown = p.bits() & !ProtocolFeatures::all().bits();
    if unknown != 0 {
        names.push(format!("unknown({unknown:#x})"));
    }
    names.join(" ")
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .chunks(16)
        .enumerate()
        .map(|(i, c)| {
            let h: Vec<String> = c.iter().map(|b| format!("{b:02x}")).collect();
            format!("  {:04x}: {}", i * 16, h.join(" "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

fn pattern(sector: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            let s = sector + (i / 512) as u64;
            (s as u8) ^ (i as u8).wrapping_mul(31) ^ 0xa5
        })
        .collect()
}

fn blk_smoke(s: &mut Session, args: &Args, timeout: Duration) -> AnyResult<()> {
    let capacity = s.config().and_then(BlkConfig::parse).map(|c| c.capacity);
    let read_len = args.sectors as usize * 512;
    let max = read_len.max(4096) as u32;
    let mut req = BlkRequests::new(s, 0, 1, max)?;

    let mut data = vec![0u8; read_len];
    req.read(s, 0, &mut data, timeout)?;
    let nonzero = data.iter().filter(|&&b| b != 0).count();
    println!(
        "blk: read sectors 0..{}: OK ({} bytes, {} non-zero)",
        args.sectors, read_len, nonzero
    );
    println!("{}", hex(&data[..data.len().min(64)]));

    let sector = args.write_sector;
    if let Some(cap) = capacity {
        if sector + 8 > cap {
            return Err(format!("write sector {sector} beyond capacity {cap}").into());
        }
    }
    let mut before = vec![0u8; 4096];
    req.read(s, sector, &mut before, timeout)?;
    let pat = pattern(sector, 4096);
    req.write(s, sector, &pat, timeout)?;
    println!("blk: wrote 4096-byte pattern at sector {sector}: OK");
    let mut back = vec![0u8; 4096];
    req.read(s, sector, &mut back, timeout)?;
    if back != pat {
        return Err("read-back differs from the pattern written".into());
    }
    println!("blk: read back sector {sector}: matches the pattern");
    match req.flush(s, timeout) {
        Ok(()) => println!("blk: FLUSH: OK"),
        Err(e) => println!("blk: FLUSH: {e}"),
    }
    match req.get_id(s, timeout) {
        Ok(id) => {
            let end = id.iter().position(|&b| b == 0).unwrap_or(id.len());
            println!("blk: GET_ID: {:?}", String::from_utf8_lossy(&id[..end]));
        }
        Err(e) => println!("blk: GET_ID: {e}"),
    }
    if args.keep_pattern {
        println!(
            "blk: pattern left at sector {sector}: byte i = (sector + i / 512) ^ (i * 31) ^ 0xa5"
        );
    } else {
        req.write(s, sector, &before, timeout)?;
        req.flush(s, timeout)?;
        println!("blk: restored sector {sector}");
    }
    let bad = req.read(s, u64::MAX / 512, &mut back[..512], timeout);
    println!(
        "blk: read beyond the end: {}",
        match bad {
            Err(vhost_frontend::devices::DeviceError::Status { status, .. }) =>
                format!("status {status} (expected IOERR {})", blk::S_IOERR),
            Err(e) => format!("error {e}"),
            Ok(()) => "OK?! (device accepted it)".into(),
        }
    );
    Ok(())
}

fn rng_smoke(s: &mut Session, timeout: Duration) -> AnyResult<()> {
    let reader = RngReader::new(s, 0, 64)?;
    let mut total = 0;
    for i in 0..4 {
        let mut buf = [0u8; 64];
        let n = reader.read(s, &mut buf, timeout)?;
        if n == 0 || buf[..n].iter().all(|&b| b == 0) {
            return Err(format!("buffer {i}: {n} bytes, all zero").into());
        }
        println!(
            "rng: buffer {i}: {n} bytes: {}",
            hex(&buf[..n.min(16)]).trim()
        );
        total += n;
    }
    println!("rng: {total} bytes, not all zero: OK");
    Ok(())
}

fn run(args: &Args) -> AnyResult<()> {
    let timeout = Duration::from_secs(args.timeout);
    let device = args
        .device
        .clone()
        .or_else(|| args.blk_smoke.then(|| "blk".to_string()))
        .or_else(|| args.rng_smoke.then(|| "rng".to_string()));
    let config_size = args
        .config_size
        .or(matches!(device.as_deref(), Some("blk")).then_some(57));
    let mut mask = ProtocolFeatures::empty() | vhost_frontend::session::DEFAULT_PROTOCOL_MASK;
    for name in &args.mask_protocol {
        mask |= ProtocolFeatures::from_name(name.trim())
            .ok_or_else(|| format!("unknown protocol feature {name}"))?;
    }
    let opts = SessionOptions {
        queue_size: args.queue_size,
        mask_protocol: mask,
        event_idx: !args.no_event_idx,
        config_size,
        read_timeout: Some(timeout),
        sequence: match device.as_deref() {
            Some("blk") => Sequence::Blk,
            _ => Sequence::Generic,
        },
        ..SessionOptions::default()
    };
    let mut s = Session::connect(&args.socket, opts)?;
    let dev = device.as_deref();
    let f = s.offered_features();
    println!("socket: {}", args.socket.display());
    println!("virtio features: {f:#x}");
    println!("  {}", feature_names(f, dev));
    let p = s.offered_protocol();
    println!("protocol features: {:#x}", p.bits());
    println!("  {}", protocol_names(p));
    println!("acked protocol features: {:#x}", s.acked_protocol().bits());
    match s.queue_num() {
        Some(n) => println!("queues: {n}"),
        None => println!("queues: (MQ not offered)"),
    }
    match s.max_mem_slots() {
        Some(n) => println!("max mem slots: {n}"),
        None => println!("max mem slots: (CONFIGURE_MEM_SLOTS not offered)"),
    }
    match s.config() {
        Some(c) => {
            println!("config ({} bytes):\n{}", c.len(), hex(c));
            if dev == Some("blk") {
                if let Some(bc) = BlkConfig::parse(c) {
                    println!(
                        "  blk: capacity {} sectors ({} MiB), size_max {}, seg_max {}",
                        bc.capacity,
                        bc.capacity / 2048,
                        bc.size_max,
                        bc.seg_max
                    );
                    println!(
                        "  blk: blk_size {}, num_queues {:?}",
                        bc.blk_size, bc.num_queues
                    );
                }
            }
        }
        None => println!("config: (not read)"),
    }
    if args.blk_smoke || args.rng_smoke {
        s.start()?;
        println!(
            "started: features acked {:#x} ({})",
            s.features(),
            feature_names(s.features(), dev)
        );
        if args.blk_smoke {
            blk_smoke(&mut s, args, timeout)?;
        }
        if args.rng_smoke {
            rng_smoke(&mut s, timeout)?;
        }
        let base = s.stop_queue(0)?;
        println!("stopped queue 0: next avail index {base}");
    }
    Ok(())
}

fn main() -> ExitCode {
    env_logger::init();
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vhost-user-probe: {e}");
            let mut src = e.source();
            while let Some(s) = src {
                eprintln!("  caused by: {s}");
                src = s.source();
            }
            ExitCode::FAILURE
        }
    }
}
