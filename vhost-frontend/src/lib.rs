//! The VMM side of vhost-user: test guest memory shared through a memfd, and a guest-side
//! split-virtqueue driver that runs requests against a back-end.
//!
//! [`Session`] does what QEMU does with a vhost-user device: the handshake, guest memory,
//! one ring per queue, start and stop, in QEMU 7.2's order. Reading four sectors from a
//! running `vhost-user-blk --socket-path /tmp/vub.sock --blk-file disk.img`:
//!
//! ```no_run
//! use std::time::Duration;
//! use vhost_frontend::devices::blk::BlkRequests;
//! use vhost_frontend::{Sequence, Session, SessionOptions};
//!
//! let opts = SessionOptions {
//!     sequence: Sequence::Blk, // QEMU's vhost-user-blk start and stop order
//!     config_size: Some(60),   // read struct virtio_blk_config at the end of the handshake
//!     ..SessionOptions::default()
//! };
//! let mut session = Session::connect("/tmp/vub.sock", opts)?;
//! println!("acked protocol features: {:?}", session.acked_protocol());
//! session.start()?;
//! // One request slot on queue 0, with room for 64 KiB of data.
//! let mut blk = BlkRequests::new(&session, 0, 1, 64 << 10)?;
//! let mut data = [0u8; 2048];
//! blk.read(&mut session, 0, &mut data, Duration::from_secs(5))?;
//! session.stop()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Lower down: [`Frontend`] sends any single front-end request and checks its reply,
//! [`GuestMemory`] is memfd-backed guest RAM, [`VirtqueueDriver`] a split ring as a guest
//! driver sees it, and [`backend_channel`] serves the back-end's requests. The
//! `vhost-user-probe` binary is a command-line front end to all of it (`--help`).

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
pub use session::{DirtyLogArea, Sequence, Session, SessionError, SessionOptions, LOG_PAGE};
pub use virtqueue::{Buffer, UsedElem, VirtqueueDriver, VringUserAddrs};
