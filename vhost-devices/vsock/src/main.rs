//! `vhost-user-vsock`: serves a virtio-vsock device over vhost-user, bridging guest sockets
//! to host Unix sockets.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use vhost_backend::runtime::cli::{
    self, BackendArgs, DaemonInfo, DeviceCli, Devices, DevicesResult, QemuHint, QEMU_USAGE,
};
use vhost_device_vsock::{VsockConfig, VsockDevice, MAX_QUEUE_SIZE};

fn main() -> ExitCode {
    cli::main::<Cli>()
}

/// vhost-user virtio-vsock back-end.
///
/// Bridges the guest's AF_VSOCK stream sockets to host Unix sockets: a host process
/// connects to --uds-path and writes "CONNECT PORT" and a newline to reach guest port PORT
/// (answered "OK HOST_PORT" and a newline); a guest connection to CID 2 port P reaches the
/// Unix socket UDS_PATH_P (the --uds-path, an underscore, P). Without --socket-path or --fd
/// the daemon listens on /tmp/vhost-user-vsock.sock.
#[derive(Debug, Parser)]
#[command(name = "vhost-user-vsock", version, after_long_help = QEMU_USAGE)]
struct Cli {
    #[command(flatten)]
    backend: BackendArgs,

    /// The guest's CID (3 to 4294967294).
    #[arg(long, value_name = "N", required_unless_present = "print_capabilities",
          value_parser = clap::value_parser!(u64).range(3..u64::from(u32::MAX)))]
    guest_cid: Option<u64>,

    /// Unix socket host processes connect to; guest connections to host port P go to
    /// PATH_P.
    #[arg(
        long,
        value_name = "PATH",
        required_unless_present = "print_capabilities"
    )]
    uds_path: Option<PathBuf>,

    /// Largest queue size (a power of two, 1 to 32768).
    #[arg(long, default_value_t = MAX_QUEUE_SIZE,
          value_parser = clap::value_parser!(u16)
              .range(1..=i64::from(vhost_backend::runtime::MAX_VIRTIO_QUEUE_SIZE)))]
    queue_size: u16,
}

impl Cli {
    fn config(&self) -> Option<VsockConfig> {
        Some(VsockConfig {
            guest_cid: self.guest_cid?,
            uds_path: self.uds_path.clone()?,
            queue_size: self.queue_size,
        })
    }
}

impl DeviceCli for Cli {
    type Device = VsockDevice;
    const DAEMON: DaemonInfo = DaemonInfo::new("vhost-user-vsock", "vsock");

    fn backend_args(&mut self) -> &mut BackendArgs {
        &mut self.backend
    }

    fn devices(&mut self) -> DevicesResult<VsockDevice> {
        let config = self
            .config()
            .ok_or("--guest-cid and --uds-path are required")?;
        let device = VsockDevice::new(&config)?;
        let serving = format!(
            "guest CID {}; host processes connect to {} (CONNECT <port>), guest connections \
             to host port P go to {}_P",
            config.guest_cid,
            config.uds_path.display(),
            config.uds_path.display()
        );
        let qemu = QemuHint::new("vsock0", "vhost-user-vsock-pci");
        Ok(Devices::one(device, serving, qemu))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_from(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(args)
    }

    #[test]
    fn cid_and_uds_path_are_required_except_for_capabilities() {
        assert!(parse_from(&["x"]).is_err());
        assert!(parse_from(&["x", "--guest-cid", "3"]).is_err());
        assert!(parse_from(&["x", "--print-capabilities"]).is_ok());
        let c = parse_from(&["x", "--guest-cid", "3", "--uds-path", "/tmp/v"]).unwrap();
        assert_eq!(c.config(), Some(VsockConfig::new(3, "/tmp/v")));
    }

    #[test]
    fn reserved_cids_are_rejected() {
        for cid in ["0", "1", "2", "4294967295", "-1"] {
            assert!(
                parse_from(&["x", "--guest-cid", cid, "--uds-path", "/v"]).is_err(),
                "{cid}"
            );
        }
    }
}
