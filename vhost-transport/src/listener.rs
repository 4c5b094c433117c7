//! Accepting front-end connections.

use std::path::Path;

use crate::sys;
use crate::{Connection, Result};

/// A listening socket, bound to a path by [`Listener::bind`] or inherited
/// from a parent process.
///
/// The listening socket stays open across clients: after a front-end
/// disconnects, [`Listener::accept`] waits for the next one on the same
/// socket. Dropping a listener that bound a path removes the socket file,
/// unless something else has replaced it in the meantime.
#[derive(Debug)]
pub struct Listener {
    pub(crate) inner: sys::SocketListener,
}

/// What an inherited descriptor (`--fd N`) turned out to be.
#[derive(Debug)]
pub enum Inherited<D> {
    /// A listening socket: accept front-ends on it.
    Listener(Listener),
    /// A socket already connected to a front-end.
    Connected(Connection<D>),
}

impl Listener {
    /// Listens at `path`, with permission bits `mode` on the socket file if
    /// given.
    ///
    /// A socket file nobody accepts on (left behind by a process that died)
    /// is replaced. A socket file with a live listener is refused with
    /// [`crate::Error::AddressInUse`], and so is any file that is not a
    /// socket.
    pub fn bind(path: impl AsRef<Path>, mode: Option<u32>) -> Result<Self> {
        sys::SocketListener::bind(path.as_ref(), mode).map(|inner| Listener { inner })
    }

    /// Waits for the next front-end. The new connection blocks and is not
    /// inherited by child processes.
    pub fn accept<D>(&self) -> Result<Connection<D>> {
        self.inner.accept().map(Connection::from_sys)
    }

    /// The socket path this listener bound, if it bound one.
    pub fn path(&self) -> Option<&Path> {
        self.inner.path()
    }

    /// Switches non-blocking mode: [`Listener::accept`] then returns
    /// [`crate::Error::WouldBlock`] when no front-end is waiting.
    pub fn set_nonblocking(&self, on: bool) -> Result<()> {
        self.inner.set_nonblocking(on)
    }
}
