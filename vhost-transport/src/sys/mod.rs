//! Platform implementations behind the public types.
//!
//! Each platform module provides `Socket` (a connected stream with message
//! framing), `SocketListener`, and the descriptor types `OwnedDescriptor` and
//! `BorrowedDescriptor` that ride along with messages.

#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub use unix::{BorrowedDescriptor, OwnedDescriptor};
#[cfg(unix)]
pub(crate) use unix::{Socket, SocketListener};

#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub use windows::{BorrowedDescriptor, OwnedDescriptor};
#[cfg(windows)]
pub(crate) use windows::{Socket, SocketListener};

#[cfg(not(any(unix, windows)))]
compile_error!("vhost-transport has no implementation for this platform yet");
