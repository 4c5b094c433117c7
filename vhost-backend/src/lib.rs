//! vhost-user back-end: the [`Backend`] trait, the server that drives it, and the
//! back-end → front-end channel.
#![warn(missing_docs)]

#[cfg(unix)]
mod backend;
#[cfg(unix)]
mod backend_client;
#[cfg(unix)]
pub mod runtime;
#[cfg(unix)]
pub mod server;
#[cfg(all(unix, feature = "test-utils"))]
pub mod test_utils;

#[cfg(unix)]
pub use backend::{Backend, BackendError, BackendResult};
#[cfg(unix)]
pub use backend_client::{BackendClient, ClientError, SharedNegotiation};
#[cfg(unix)]
pub use server::{BackendServer, ServerError};
