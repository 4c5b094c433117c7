//! The VMM side of vhost-user: test guest memory shared through a memfd, and a guest-side
//! split-virtqueue driver that runs requests against a back-end.

pub mod backend_channel;
pub mod client;
pub mod devices;
pub mod guest_memory;
pub mod session;
pub mod virtqueue;

pub use backend_channel::{
    BackendChannelHandle, BackendRequestHandler, HandlerError, HandlerResult, UnsupportedHandler,
};
pub use client::{Frontend, FrontendError, PostcopyReply};
pub use guest_memory::{GuestMemory, RegionInfo, RegionSpec};
pub use session::{Sequence, Session, SessionError, SessionOptions};
pub use virtqueue::{Buffer, UsedElem, VirtqueueDriver, VringUserAddrs};
