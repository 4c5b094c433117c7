//! Command-line conventions shared by every device daemon, as QEMU expects of vhost-user
//! back-end programs (docs/interop/vhost-user.rst "Backend program conventions"):
//! `--socket-path PATH` or `--fd N` (mutually exclusive) and `--print-capabilities`.
//!
//! A device binary flattens [`BackendArgs`] into its own parser and adds its options:
//!
//! ```no_run
//! use clap::Parser;
//! use vhost_backend::runtime::cli::{BackendArgs, QEMU_USAGE};
//!
//! #[derive(Parser)]
//! #[command(about = "vhost-user entropy device", after_long_help = QEMU_USAGE)]
//! struct Cli {
//!     #[command(flatten)]
//!     backend: BackendArgs,
//! }
//!
//! let cli = Cli::parse();
//! if cli.backend.print_capabilities {
//!     vhost_backend::runtime::cli::print_capabilities("rng", &[]);
//!     return;
//! }
//! ```

use std::os::fd::RawFd;
use std::path::PathBuf;

/// How QEMU is pointed at a back-end; device binaries show it in `--help`.
pub const QEMU_USAGE: &str = "\
Connecting QEMU:
  Start this back-end first (QEMU is the socket client), then QEMU with its guest RAM
  shared with the back-end and a vhost-user device on the same socket:

    qemu-system-x86_64 ... \\
      -object memory-backend-memfd,id=mem,size=1G,share=on \\
      -machine q35,memory-backend=mem -m 1G \\
      -chardev socket,id=vhost0,path=PATH \\
      -device vhost-user-<type>-pci,chardev=vhost0   (e.g. vhost-user-blk-pci, vhost-user-rng-pci)

  Guest RAM must be shared (share=on), or the back-end cannot see the rings and the
  guest hangs. Add reconnect=1 to -chardev to survive a back-end restart.
  One front-end is served at a time; when it disconnects the back-end resets and waits
  for the next one on the same socket. SIGTERM, SIGINT, SIGHUP or SIGQUIT stops it.
  RUST_LOG sets the log level (error, warn, info, debug, trace).";

/// The options every device daemon takes. Flatten into the device's parser with
/// `#[command(flatten)]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct BackendArgs {
    /// Listen for the front-end on this UNIX socket path.
    #[arg(long, value_name = "PATH", conflicts_with = "fd")]
    pub socket_path: Option<PathBuf>,

    /// Serve on this inherited descriptor: a listening UNIX socket, or one already
    /// connected to the front-end.
    #[arg(long, value_name = "N")]
    pub fd: Option<RawFd>,

    /// Print the back-end's capabilities as JSON on stdout and exit.
    #[arg(long)]
    pub print_capabilities: bool,

    /// Permission bits of the socket file created by --socket-path (octal, e.g. 600).
    #[arg(long, value_name = "MODE", value_parser = parse_octal)]
    pub socket_mode: Option<u32>,

    /// Connect to the front-end listening at --socket-path (QEMU with `server=on`) instead of
    /// listening there; after a disconnect, connect again (with back-off).
    #[arg(long, requires = "socket_path")]
    pub client: bool,

    /// Refuse guest memory the front-end could shrink under the mapping (a memfd that
    /// forbids sealing, a regular or hugetlbfs file) instead of serving it with a warning.
    #[arg(long)]
    pub strict_memory: bool,

    /// When this process serves several sockets: at most N front-ends connected at once; one
    /// beyond is accepted and closed at once, with a warning [default: 1024].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: Option<u32>,
}

impl BackendArgs {
    /// The memory policy `--strict-memory` asks for.
    pub fn memory_policy(&self) -> super::mem_table::MemoryPolicy {
        if self.strict_memory {
            super::mem_table::MemoryPolicy::Strict
        } else {
            super::mem_table::MemoryPolicy::Lenient
        }
    }

    /// A [`MultiDaemon`](super::MultiDaemon) with the bounds these options set, for a
    /// daemon that serves several sockets; add its exports with
    /// [`MultiDaemon::bind`](super::MultiDaemon::bind) (`--socket-mode` applies to each).
    pub fn multi_daemon<B: crate::Backend + 'static>(
        &self,
    ) -> Result<super::MultiDaemon<B>, super::DaemonError> {
        let max = self
            .max_connections
            .map_or(super::multi::DEFAULT_MAX_CONNECTIONS, |n| n as usize);
        Ok(super::MultiDaemon::new()?.with_max_connections(max))
    }

    /// Listens on `path` when neither `--socket-path` nor `--fd` was given. A device that
    /// has no default leaves both unset, and the daemon then refuses to start
    /// ([`DaemonError::NoSocket`](super::DaemonError::NoSocket)).
    ///
    /// A socket passed by systemd socket activation ([`socket_activation`]) takes the
    /// place of the default.
    pub fn default_socket_path(&mut self, path: impl Into<PathBuf>) {
        if self.socket_path.is_none() && self.fd.is_none() && socket_activation().is_none() {
            self.socket_path = Some(path.into());
        }
    }
}

/// The first descriptor systemd socket activation passes.
pub const SD_LISTEN_FDS_START: RawFd = 3;

/// The listening socket systemd passed to this process (`LISTEN_PID` is this process and
/// `LISTEN_FDS` is at least 1): descriptor [`SD_LISTEN_FDS_START`]. Used when neither
/// `--socket-path` nor `--fd` is given.
pub fn socket_activation() -> Option<RawFd> {
    let pid: u32 = std::env::var("LISTEN_PID").ok()?.parse().ok()?;
    let fds: u32 = std::env::var("LISTEN_FDS").ok()?.parse().ok()?;
    (pid == std::process::id() && fds >= 1).then_some(SD_LISTEN_FDS_START)
}

fn parse_octal(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .map_err(|e| format!("not an octal mode: {e}"))
}

/// The `--print-capabilities` document: `{"type": ..., "features": [...]}`, the shape of
/// QEMU's docs/interop/vhost-user.json.
pub fn capabilities_json(device_type: &str, features: &[&str]) -> String {
    serde_json::json!({ "type": device_type, "features": features }).to_string()
}

/// Writes [`capabilities_json`] and a newline to stdout.
pub fn print_capabilities(device_type: &str, features: &[&str]) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let doc = capabilities_json(device_type, features);
    if let Err(e) = writeln!(out, "{doc}").and_then(|()| out.flush()) {
        log::error!("writing capabilities: {e}");
    }
}

/// Prints `program: error: ...` with every cause of `e` on stderr (directly, so it shows even
/// when no logger is set up) and returns the failure exit code: what a daemon's `main` does
/// when it cannot start.
pub fn report_error(program: &str, e: &dyn std::error::Error) -> std::process::ExitCode {
    let mut msg = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let s = c.to_string();
        // Some errors repeat their source in their own message.
        if !msg.contains(&s) {
            msg.push_str(": ");
            msg.push_str(&s);
        }
        cause = c.source();
    }
    eprintln!("{program}: error: {msg}");
    std::process::ExitCode::FAILURE
}

/// Initialises logging from `RUST_LOG` (default: `info`) to stderr.
pub fn init_logging() {
    let env = env_logger::Env::default().default_filter_or("info");
    // A second initialisation (tests, embedding) keeps the first logger.
    let _ = env_logger::Builder::from_env(env).try_init();
}

/// What the entry point [`main`] says of a device daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DaemonInfo {
    /// The program's name (`vhost-user-blk`): it prefixes the error report, and the socket
    /// listened on when neither `--socket-path` nor `--fd` (nor systemd) gives one is
    /// `/tmp/PROGRAM.sock`.
    pub program: &'static str,
    /// The `type` of the `--print-capabilities` document (`block`, `rng`, ...).
    pub device_type: &'static str,
    /// The `features` of the `--print-capabilities` document.
    pub capabilities: &'static [&'static str],
}

impl DaemonInfo {
    /// `program` serving a device of `device_type`, with no capability features.
    pub const fn new(program: &'static str, device_type: &'static str) -> DaemonInfo {
        DaemonInfo {
            program,
            device_type,
            capabilities: &[],
        }
    }

    /// The same with these capability features.
    pub const fn with_capabilities(mut self, features: &'static [&'static str]) -> DaemonInfo {
        self.capabilities = features;
        self
    }

    /// The socket listened on by default: `/tmp/PROGRAM.sock`.
    pub fn default_socket(&self) -> PathBuf {
        PathBuf::from(format!("/tmp/{}.sock", self.program))
    }

    /// The log target of the daemon's startup lines: the program's name as a crate-style
    /// target (`vhost-user-blk` → `vhost_user_blk`), the target of the binary's own log
    /// lines, so `RUST_LOG=warn,vhost_user_blk=info` shows them.
    pub fn log_target(&self) -> String {
        self.program.replace('-', "_")
    }
}

/// A device daemon's command line, run by the runtime's entry point [`main`]: the device
/// crate's parser (with [`BackendArgs`] flattened in) says what to serve, the entry point does
/// the rest the same way for every device — `--print-capabilities`, logging from
/// `RUST_LOG`, the stop signals, the default socket, the back-end's construction with the
/// memory policy, the daemon (or a [`MultiDaemon`](super::MultiDaemon) for several sockets),
/// the QEMU hint and the error report.
pub trait DeviceCli: clap::Parser {
    /// The device served.
    type Device: super::VirtioDevice;
    /// The program, its capabilities and its default socket.
    const DAEMON: DaemonInfo;

    /// The runtime's options flattened into the device's parser (`&mut self.backend`): the
    /// one copy of them, which the entry point completes (the default socket) before
    /// [`DeviceCli::devices`] and the daemon read it.
    fn backend_args(&mut self) -> &mut BackendArgs;

    /// The devices to serve, called once logging and the signal handlers are set up, with
    /// the default socket applied to [`DeviceCli::backend_args`]. What it leaves in `self`
    /// lives until the daemon has returned.
    fn devices(&mut self) -> DevicesResult<Self::Device>;
}

/// What [`DeviceCli::devices`] returns: the devices, or why they cannot be set up.
pub type DevicesResult<D> = Result<Devices<D>, Box<dyn std::error::Error>>;

/// What a [`DeviceCli`] serves. The `serving` and `ready` lines are logged once the sockets
/// are bound (a daemon that cannot bind says nothing of what it would have served).
#[derive(Debug)]
pub enum Devices<D> {
    /// One device, on the socket of `--socket-path`, `--fd`, `--client` or systemd.
    One {
        /// The device.
        device: D,
        /// What it serves, logged once the socket is bound (nothing when empty).
        serving: String,
        /// How QEMU is pointed at it, logged after `serving`.
        qemu: QemuHint,
    },
    /// Several devices from this process, each on its own socket (`--socket-mode` and
    /// `--max-connections` apply).
    Many {
        /// Each socket with its device.
        exports: Vec<Export<D>>,
        /// Lines logged once every socket is bound.
        ready: Vec<String>,
    },
}

impl<D> Devices<D> {
    /// [`Devices::One`].
    pub fn one(device: D, serving: String, qemu: QemuHint) -> Devices<D> {
        Devices::One {
            device,
            serving,
            qemu,
        }
    }
}

/// One socket of [`Devices::Many`].
#[derive(Debug)]
pub struct Export<D> {
    /// The socket path, bound with `--socket-mode`.
    pub socket: PathBuf,
    /// The device served there.
    pub device: D,
    /// What it serves, logged once it is bound (nothing when empty).
    pub serving: String,
}

fn log_nonempty(target: &str, line: &str) {
    if !line.is_empty() {
        log::info!(target: target, "{line}");
    }
}

/// The QEMU command line a daemon serving one device logs: `-chardev socket,id=ID,path=...`
/// and `-device DEVICE,chardev=ID` followed by the device's own properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuHint {
    /// The chardev id (`blk0`).
    pub chardev_id: &'static str,
    /// The QEMU device (`vhost-user-blk-pci`).
    pub device: &'static str,
    /// Properties after `chardev=ID`, each with its leading comma (`,num-queues=4`).
    pub properties: String,
}

impl QemuHint {
    /// A hint for `device` on chardev `chardev_id`, with no more properties.
    pub fn new(chardev_id: &'static str, device: &'static str) -> QemuHint {
        QemuHint {
            chardev_id,
            device,
            properties: String::new(),
        }
    }

    /// The logged text for the socket `path` (`client`: QEMU is the server).
    pub fn render(&self, path: &std::path::Path, client: bool) -> String {
        format!(
            "point QEMU at it with:\n  \
             -object memory-backend-memfd,id=mem,size=1G,share=on \
             -machine q35,memory-backend=mem -m 1G \\\n  \
             -chardev socket,id={id},path={}{} \\\n  \
             -device {},chardev={id}{}",
            path.display(),
            if client { ",server=on" } else { "" },
            self.device,
            self.properties,
            id = self.chardev_id,
        )
    }
}

/// The `main` of a device daemon: parses `C` (and the [`BackendArgs`] flattened into it,
/// parsed once), then answers `--print-capabilities` or serves ([`serve`]) and reports a
/// failure on stderr with the failure exit code.
pub fn main<C: DeviceCli>() -> std::process::ExitCode {
    let mut cli = C::parse();
    if cli.backend_args().print_capabilities {
        print_capabilities(C::DAEMON.device_type, C::DAEMON.capabilities);
        return std::process::ExitCode::SUCCESS;
    }
    init_logging();
    match serve(&mut cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => report_error(C::DAEMON.program, e.as_ref()),
    }
}

/// Serves what `cli` asks until a stop signal (or, with a connected `--fd`, the end of its
/// session): installs the signal handlers, applies the default socket to
/// [`DeviceCli::backend_args`], builds each device's back-end with the memory policy and
/// runs a [`Daemon`](super::Daemon) for one device or a [`MultiDaemon`](super::MultiDaemon)
/// for several, all from those options.
pub fn serve<C: DeviceCli>(cli: &mut C) -> Result<(), Box<dyn std::error::Error>> {
    super::daemon::install_signal_handlers()?;
    cli.backend_args()
        .default_socket_path(C::DAEMON.default_socket());
    let devices = cli.devices()?;
    // What the device read, as it left it.
    let args = &cli.backend_args().clone();
    // The startup lines go under the program's target, not this module's.
    let target = &C::DAEMON.log_target();
    let backend = |device| {
        super::DeviceBackend::new(device).map(|b| b.with_memory_policy(args.memory_policy()))
    };
    match devices {
        Devices::One {
            device,
            serving,
            qemu,
        } => {
            let mut daemon = super::Daemon::from_args(args, backend(device)?)?;
            log_nonempty(target, &serving);
            if let Some(path) = &args.socket_path {
                log::info!(target: target, "{}", qemu.render(path, args.client));
            }
            daemon.run()?;
        }
        Devices::Many { exports, ready } => {
            let mut daemon = args.multi_daemon()?;
            for export in exports {
                daemon.bind(&export.socket, args.socket_mode, backend(export.device)?)?;
                log_nonempty(target, &export.serving);
            }
            ready.iter().for_each(|line| log_nonempty(target, line));
            daemon.run()?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Debug, Parser)]
    #[command(name = "vhost-device-test", after_long_help = QEMU_USAGE)]
    struct Cli {
        #[command(flatten)]
        backend: BackendArgs,
    }

    #[test]
    fn socket_path_and_fd_are_mutually_exclusive() {
        assert!(Cli::try_parse_from(["x", "--socket-path", "/s", "--fd", "3"]).is_err());
        let c = Cli::try_parse_from(["x", "--socket-path", "/s"]).unwrap();
        assert_eq!(c.backend.socket_path, Some(PathBuf::from("/s")));
        let c = Cli::try_parse_from(["x", "--fd", "3"]).unwrap();
        assert_eq!(c.backend.fd, Some(3));
    }

    #[test]
    fn default_socket_path_applies_only_without_socket_path_or_fd() {
        let mut c = Cli::try_parse_from(["x"]).unwrap();
        assert_eq!(c.backend.socket_path, None);
        c.backend.default_socket_path("/d");
        assert_eq!(c.backend.socket_path, Some(PathBuf::from("/d")));
        let mut c = Cli::try_parse_from(["x", "--socket-path", "/s"]).unwrap();
        c.backend.default_socket_path("/d");
        assert_eq!(c.backend.socket_path, Some(PathBuf::from("/s")));
        let mut c = Cli::try_parse_from(["x", "--fd", "3"]).unwrap();
        c.backend.default_socket_path("/d");
        assert_eq!(c.backend.socket_path, None);
        let c = Cli::try_parse_from(["x", "--print-capabilities"]).unwrap();
        assert!(c.backend.print_capabilities);
    }

    #[test]
    fn socket_mode_is_octal() {
        let c = Cli::try_parse_from(["x", "--socket-path", "/s", "--socket-mode", "660"]).unwrap();
        assert_eq!(c.backend.socket_mode, Some(0o660));
        assert!(Cli::try_parse_from(["x", "--socket-path", "/s", "--socket-mode", "9"]).is_err());
    }

    #[test]
    fn long_help_shows_the_qemu_command_line() {
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("--socket-path"), "{help}");
        assert!(help.contains("--print-capabilities"));
        assert!(help.contains("memory-backend-memfd,id=mem,size=1G,share=on"));
        assert!(help.contains("-chardev socket,id=vhost0,path=PATH"));
    }

    #[test]
    fn qemu_hint_names_the_socket_the_chardev_and_the_device() {
        let mut hint = QemuHint::new("blk0", "vhost-user-blk-pci");
        hint.properties = ",num-queues=2".into();
        let text = hint.render(std::path::Path::new("/s.sock"), false);
        assert!(
            text.contains("-chardev socket,id=blk0,path=/s.sock \\\n"),
            "{text}"
        );
        assert!(text.ends_with("-device vhost-user-blk-pci,chardev=blk0,num-queues=2"));
        assert!(text.contains("share=on"));
        let text = hint.render(std::path::Path::new("/s.sock"), true);
        assert!(text.contains("path=/s.sock,server=on"), "{text}");
    }

    #[test]
    fn the_default_socket_is_named_after_the_program() {
        let info = DaemonInfo::new("vhost-user-blk", "block").with_capabilities(&["read-only"]);
        assert_eq!(
            info.default_socket(),
            PathBuf::from("/tmp/vhost-user-blk.sock")
        );
        assert_eq!(info.capabilities, ["read-only"]);
        assert!(DaemonInfo::new("x", "rng").capabilities.is_empty());
        assert_eq!(info.log_target(), "vhost_user_blk");
    }

    /// A device whose `devices` records the flattened options it sees, then refuses.
    #[derive(Debug, Parser)]
    #[command(name = "vhost-device-test")]
    struct Recording {
        #[command(flatten)]
        backend: BackendArgs,
        #[arg(skip)]
        seen: Option<BackendArgs>,
    }

    impl DeviceCli for Recording {
        type Device = NoDevice;
        const DAEMON: DaemonInfo = DaemonInfo::new("vhost-device-test", "test");
        fn backend_args(&mut self) -> &mut BackendArgs {
            &mut self.backend
        }
        fn devices(&mut self) -> DevicesResult<NoDevice> {
            self.seen = Some(self.backend.clone());
            Err("refused by the test".into())
        }
    }

    #[derive(Debug)]
    struct NoDevice;
    impl crate::runtime::VirtioDevice for NoDevice {
        fn device_type(&self) -> u32 {
            0
        }
        fn num_queues(&self) -> usize {
            1
        }
        fn max_queue_size(&self) -> u16 {
            1
        }
        fn features(&self) -> u64 {
            0
        }
        fn process_queue(
            &self,
            _: &mut crate::runtime::QueueContext<'_>,
        ) -> Result<crate::runtime::Processed, crate::runtime::DeviceError> {
            Ok(crate::runtime::Processed::Drained)
        }
    }

    #[test]
    fn the_device_sees_the_options_the_daemon_uses() {
        let mut cli = Recording::try_parse_from(["x"]).unwrap();
        let e = serve(&mut cli).unwrap_err();
        assert_eq!(e.to_string(), "refused by the test");
        let seen = cli.seen.expect("devices was called");
        assert_eq!(
            seen.socket_path,
            Some(Recording::DAEMON.default_socket()),
            "the default socket applies to the options the device reads"
        );
    }

    #[test]
    fn capabilities_are_valid_json_of_the_documented_shape() {
        let doc = capabilities_json("block", &["read-only", "blk-file"]);
        let v: serde_json::Value = serde_json::from_str(&doc).unwrap();
        assert_eq!(v["type"], "block");
        assert_eq!(v["features"], serde_json::json!(["read-only", "blk-file"]));
        let v: serde_json::Value = serde_json::from_str(&capabilities_json("rng", &[])).unwrap();
        assert_eq!(v["features"].as_array().map(Vec::len), Some(0));
    }
}
