//! vhost-user back-end: the [`Backend`] trait, the server that drives it, and the
//! back-end → front-end channel.
#![warn(missing_docs)]

mod backend;
mod backend_client;
#[cfg(unix)]
pub mod runtime;
pub mod server;
#[cfg(feature = "test-utils")]
pub mod test_utils;

pub use backend::{Backend, BackendError, BackendResult};
pub use backend_client::{BackendClient, ClientError};
pub use server::{BackendServer, ServerError};
