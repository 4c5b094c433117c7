//! The VMM side of vhost-user: test guest memory shared through a memfd, and a guest-side
//! split-virtqueue driver that runs requests against a back-end.

pub mod guest_memory;
pub mod virtqueue;

pub use guest_memory::{GuestMemory, RegionInfo, RegionSpec};
pub use virtqueue::{Buffer, UsedElem, VirtqueueDriver, VringUserAddrs};
