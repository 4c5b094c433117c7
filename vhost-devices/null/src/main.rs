//! `vhost-user-null`: serves a null virtio-blk disk (zeros in, writes dropped) over
//! vhost-user. The whole daemon: the runtime's command line plus one option of its own.

use std::process::ExitCode;

use clap::Parser;
use vhost_backend::runtime::cli::{
    self, BackendArgs, DaemonInfo, DeviceCli, Devices, DevicesResult, QemuHint, QEMU_USAGE,
};
use vhost_device_null::NullBlk;

fn main() -> ExitCode {
    cli::main::<Cli>()
}

/// vhost-user null block device: reads return zeros, writes are discarded.
///
/// Without --socket-path or --fd it listens on /tmp/vhost-user-null.sock. QEMU needs
/// `num-queues=1` on `-device vhost-user-blk-pci` (the device has one queue).
#[derive(Debug, Parser)]
#[command(name = "vhost-user-null", version, after_long_help = QEMU_USAGE)]
struct Cli {
    #[command(flatten)]
    backend: BackendArgs,

    /// Disk size in MiB (1 to 1048576).
    #[arg(long, value_name = "MIB", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    size_mib: u64,
}

impl DeviceCli for Cli {
    type Device = NullBlk;
    const DAEMON: DaemonInfo = DaemonInfo::new("vhost-user-null", "block");

    fn backend_args(&mut self) -> &mut BackendArgs {
        &mut self.backend
    }

    fn devices(&mut self) -> DevicesResult<NullBlk> {
        let mut qemu = QemuHint::new("null0", "vhost-user-blk-pci");
        qemu.properties = ",num-queues=1".into();
        let device = NullBlk::new(self.size_mib << 20);
        let serving = format!("serving a null disk of {} MiB", self.size_mib);
        Ok(Devices::one(device, serving, qemu))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_is_checked_and_defaults_to_one_gib() {
        let c = Cli::try_parse_from(["vhost-user-null"]).unwrap();
        assert_eq!(c.size_mib, 1024);
        assert!(Cli::try_parse_from(["x", "--size-mib", "0"]).is_err());
        assert!(Cli::try_parse_from(["x", "--socket-path", "/s", "--fd", "3"]).is_err());
    }
}
