//! A device served in this process: the runtime's daemon on a thread, over one end of a
//! connected socket pair, and a started [`Session`] on the other end.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::thread::JoinHandle;

use nix::sys::socket::Shutdown;

use vhost_backend::runtime::{Daemon, DaemonError, DeviceBackend, RuntimeError, VirtioDevice};
use vhost_frontend::{Frontend, Session, SessionError, SessionOptions};
use vhost_transport::Connection;

/// Why the in-process device could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InProcessError {
    /// The socket pair could not be made.
    #[error(transparent)]
    Transport(#[from] vhost_transport::Error),
    /// The device runtime refused the device.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The daemon could not be built.
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    /// The handshake or the start failed.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The daemon thread (or a descriptor for it) could not be made.
    #[error("starting the daemon thread: {0}")]
    Spawn(std::io::Error),
}

/// The daemon thread serving one front-end. On drop the connection is shut down (the
/// session, wherever it is, sees a closed peer) and the thread is joined.
#[derive(Debug)]
pub struct InProcess {
    /// A second descriptor of the front-end's end, to shut the connection down.
    frontend_fd: Option<OwnedFd>,
    thread: Option<JoinHandle<Result<(), DaemonError>>>,
}

impl InProcess {
    /// Serves `device` on a thread and returns the started session connected to it.
    pub fn start<D: VirtioDevice>(
        device: D,
        options: SessionOptions,
    ) -> Result<(InProcess, Session), InProcessError> {
        let (frontend_end, backend_end) = Connection::pair()?;
        let frontend_fd = frontend_end
            .as_fd()
            .try_clone_to_owned()
            .map_err(InProcessError::Spawn)?;
        let backend = DeviceBackend::new(device)?;
        let mut daemon = Daemon::with_connection(backend_end, backend)?;
        let thread = std::thread::Builder::new()
            .name("vhost-daemon".into())
            .spawn(move || daemon.run())
            .map_err(InProcessError::Spawn)?;
        let daemon = InProcess {
            frontend_fd: Some(frontend_fd),
            thread: Some(thread),
        };
        let mut session = Session::new(Frontend::new(frontend_end), options)?;
        session.start()?;
        Ok((daemon, session))
    }

    /// Shuts the connection down and waits for the daemon to finish.
    pub fn stop(mut self) -> Result<(), DaemonError> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<(), DaemonError> {
        if let Some(fd) = self.frontend_fd.take() {
            // Already shut down or closed by the peer: the daemon is ending anyway.
            let _ = nix::sys::socket::shutdown(fd.as_raw_fd(), Shutdown::Both);
        }
        match self.thread.take() {
            Some(t) => t.join().unwrap_or(Ok(())),
            None => Ok(()),
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        // A daemon that failed has already made the session fail, which reports it.
        let _ = self.stop_inner();
    }
}
