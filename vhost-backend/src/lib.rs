//! vhost-user back-end: the [`Backend`] trait, the server that drives it, and the
//! back-end → front-end channel.
//!
//! The trait, the server and the channel build on every platform the transport supports
//! (descriptors are fds on Unix, handles on Windows). The device [`runtime`] (guest
//! memory, eventfds, epoll) is Unix-only.
#![warn(missing_docs)]

mod backend;
mod backend_client;
#[cfg(unix)]
pub mod runtime;
pub mod server;
#[cfg(feature = "test-utils")]
pub mod test_utils;

pub use backend::{Backend, BackendError, BackendResult};
pub use backend_client::{BackendClient, ClientError, SharedNegotiation};
pub use server::{BackendServer, ServerError};
