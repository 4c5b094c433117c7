//! Errors of a session.

use std::time::Duration;

use crate::client::FrontendError;
use crate::{guest_memory, virtqueue};

/// Why a session step failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// A control-plane request failed.
    #[error(transparent)]
    Frontend(#[from] FrontendError),
    /// Building or allocating guest memory failed.
    #[error("guest memory: {0}")]
    Memory(#[from] guest_memory::Error),
    /// The virtqueue driver failed (including device misbehaviour in the used ring).
    #[error("virtqueue: {0}")]
    Queue(#[from] virtqueue::Error),
    /// Creating an eventfd failed.
    #[error("eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    /// The options cannot work with this back-end.
    #[error("unusable options: {0}")]
    Options(String),
    /// A queue index the session does not have.
    #[error("no queue {index} (the session has {queues})")]
    NoSuchQueue {
        /// The index asked for.
        index: usize,
        /// Queues in the session.
        queues: usize,
    },
    /// No completion arrived in time.
    #[error("queue {queue}: no completion within {timeout:?}")]
    Timeout {
        /// The queue.
        queue: usize,
        /// How long the session waited.
        timeout: Duration,
    },
    /// A completion for another chain than the one just submitted.
    #[error("queue {queue}: completion for head {got}, expected {expected}")]
    UnexpectedCompletion {
        /// The queue.
        queue: usize,
        /// The head just submitted.
        expected: u16,
        /// The head the device returned.
        got: u16,
    },
}

/// Result of a session step.
pub type Result<T> = std::result::Result<T, SessionError>;
