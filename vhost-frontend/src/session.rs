//! A whole front-end session: the handshake in the order QEMU 7.2 sends it, guest memory,
//! one split virtqueue per queue with its kick, call and error eventfds, and helpers to run
//! requests through the rings.
//!
//! [`Session::new`] does what QEMU does when it realizes a device: GET_FEATURES,
//! GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES, GET_QUEUE_NUM (MQ), GET_MAX_MEM_SLOTS
//! (CONFIGURE_MEM_SLOTS), SET_BACKEND_REQ_FD (BACKEND_REQ), SET_OWNER, GET_FEATURES,
//! SET_VRING_CALL and SET_VRING_ERR per queue, GET_CONFIG (CONFIG, when asked for).
//! [`Session::start`] and [`Session::stop`] do what it does when the driver sets DRIVER_OK
//! and when the device is reset; their order depends on the device, see [`Sequence`].
//!
//! ```no_run
//! # fn main() -> Result<(), vhost_frontend::SessionError> {
//! use std::time::Duration;
//! use vhost_frontend::{Session, SessionOptions};
//! let opts = SessionOptions { num_queues: 2, queue_size: 256, ..Default::default() };
//! let mut s = Session::connect("/tmp/vhost.sock", opts)?;
//! s.start()?;
//! let buf = s.memory().alloc(512, 8)?;
//! let used = s.round_trip(0, &[(buf, 512, true)], Duration::from_secs(1))?;
//! # let _ = used; Ok(()) }
//! ```
//!
//! The data path (`add_chain`, `publish`, `kick`, `pop_used`, `wait_used`, `round_trip`)
//! allocates nothing.

mod data_path;
mod dirty_log;
mod error;
mod lifecycle;
mod options;

use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;

use vhost_proto::{virtio, MemoryRegion, ProtocolFeatures, VringAddr};
use vmm_sys_util::eventfd::EventFd;

use crate::backend_channel::{BackendChannelHandle, UnsupportedHandler};
use crate::client::Frontend;
use crate::guest_memory::GuestMemory;
use crate::virtqueue::VirtqueueDriver;

pub use dirty_log::{DirtyLogArea, LOG_PAGE};
pub use error::{Result, SessionError};
pub use options::{Sequence, SessionOptions, DEFAULT_FEATURE_MASK, DEFAULT_PROTOCOL_MASK};

/// Virtio device status bits the session writes with SET_STATUS (STATUS negotiated).
pub mod status {
    /// ACKNOWLEDGE.
    pub const ACKNOWLEDGE: u64 = 1;
    /// DRIVER.
    pub const DRIVER: u64 = 2;
    /// DRIVER_OK.
    pub const DRIVER_OK: u64 = 4;
    /// FEATURES_OK.
    pub const FEATURES_OK: u64 = 8;
}

struct Queue {
    driver: VirtqueueDriver,
    kick: EventFd,
    call: EventFd,
    err: EventFd,
}

/// A front-end session over one back-end. See the [module docs](self).
pub struct Session {
    frontend: Frontend,
    memory: GuestMemory,
    queues: Vec<Queue>,
    offered_features: u64,
    offered_protocol: ProtocolFeatures,
    features: u64,
    queue_num: Option<u64>,
    max_mem_slots: Option<u64>,
    config: Option<Vec<u8>>,
    memory_sent: bool,
    backend_channel: Option<BackendChannelHandle>,
    sequence: Sequence,
    /// DRIVER_OK was written with SET_STATUS and not reset since.
    driver_ok: bool,
    /// Dirty logging is on: SET_VRING_ADDR carries VHOST_VRING_F_LOG.
    logging: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("frontend", &self.frontend)
            .field("queues", &self.queues.len())
            .field(
                "offered_features",
                &format_args!("{:#x}", self.offered_features),
            )
            .field("offered_protocol", &self.offered_protocol)
            .field("features", &format_args!("{:#x}", self.features))
            .finish_non_exhaustive()
    }
}

fn eventfd() -> Result<EventFd> {
    EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(SessionError::EventFd)
}

fn borrow(fd: &EventFd) -> BorrowedFd<'_> {
    // SAFETY: the EventFd owns this descriptor and outlives the borrow, which is tied to it.
    unsafe { BorrowedFd::borrow_raw(fd.as_raw_fd()) }
}

impl Session {
    /// Connects to the back-end at `path` and runs the handshake.
    pub fn connect(path: impl AsRef<Path>, options: SessionOptions) -> Result<Self> {
        Self::new(Frontend::connect(path)?, options)
    }

    /// Runs the handshake over `frontend` (see the [module docs](self)) and builds guest
    /// memory, the queues and their eventfds.
    pub fn new(mut frontend: Frontend, mut options: SessionOptions) -> Result<Self> {
        let opts = &options;
        if opts.num_queues == 0 {
            return Err(SessionError::Options("at least one queue is needed".into()));
        }
        frontend.set_read_timeout(opts.read_timeout)?;
        frontend.set_request_acks(opts.request_acks);

        let offered_features = frontend.get_features()?;
        let pf_bit = virtio::bit(virtio::PROTOCOL_FEATURES);
        let use_pf = opts.protocol_features && offered_features & pf_bit != 0;
        let mut offered_protocol = ProtocolFeatures::empty();
        if use_pf {
            offered_protocol = frontend.get_protocol_features()?;
            let ack = offered_protocol.intersection(ProtocolFeatures::all()) - opts.mask_protocol;
            frontend.set_protocol_features(ack)?;
        }
        let acked = frontend.acked_protocol();
        let queue_num = match acked.contains(ProtocolFeatures::MQ) {
            true => Some(frontend.get_queue_num()?),
            false => None,
        };
        if let Some(n) = queue_num.filter(|&n| u64::from(opts.num_queues) > n) {
            return Err(SessionError::Options(format!(
                "{} queues asked for, the back-end has {n}",
                opts.num_queues
            )));
        }
        let max_mem_slots = match acked.contains(ProtocolFeatures::CONFIGURE_MEM_SLOTS) {
            true => Some(frontend.get_max_mem_slots()?),
            false => None,
        };
        let backend_channel = match acked.contains(ProtocolFeatures::BACKEND_REQ) {
            true => {
                let handler = options
                    .backend_handler
                    .take()
                    .unwrap_or_else(|| Box::new(UnsupportedHandler));
                Some(frontend.set_backend_req_fd(handler)?)
            }
            false => None,
        };
        let opts = &options;
        frontend.set_owner()?;
        let offered_features = frontend.get_features()?;

        let mut features = offered_features & !opts.mask_features;
        if !opts.event_idx {
            features &= !virtio::bit(virtio::RING_EVENT_IDX);
        }
        if !use_pf {
            features &= !pf_bit;
        }
        let event_idx = features & virtio::bit(virtio::RING_EVENT_IDX) != 0;

        let memory = match opts.memory.is_empty() {
            true => GuestMemory::single(opts.memory_size)?,
            false => GuestMemory::new(&opts.memory)?,
        };
        let regions = memory.regions().len();
        let max_regions = max_mem_slots.unwrap_or(vhost_proto::MAX_MEM_TABLE_REGIONS as u64);
        if regions as u64 > max_regions {
            return Err(SessionError::Options(format!(
                "{regions} memory regions, the back-end takes at most {max_regions}"
            )));
        }

        let mut queues = Vec::with_capacity(usize::from(opts.num_queues));
        for i in 0..u32::from(opts.num_queues) {
            let driver = VirtqueueDriver::with_layout(
                &memory,
                opts.queue_size,
                event_idx,
                opts.max_indirect,
                features & virtio::bit(virtio::RING_PACKED) != 0,
            )?;
            let q = Queue {
                driver,
                kick: eventfd()?,
                call: eventfd()?,
                err: eventfd()?,
            };
            frontend.set_vring_call(i, Some(borrow(&q.call)))?;
            frontend.set_vring_err(i, Some(borrow(&q.err)))?;
            queues.push(q);
        }
        let config = match (acked.contains(ProtocolFeatures::CONFIG), opts.config_size) {
            (true, Some(size)) => Some(frontend.get_config(0, size, 0)?),
            _ => None,
        };
        Ok(Session {
            frontend,
            memory,
            queues,
            offered_features,
            offered_protocol,
            features,
            queue_num,
            max_mem_slots,
            config,
            memory_sent: false,
            backend_channel,
            sequence: opts.sequence,
            driver_ok: false,
            logging: false,
        })
    }

    fn send_memory(&mut self) -> Result<()> {
        let fd = self.memory.fd();
        let regions: Vec<MemoryRegion> = self
            .memory
            .regions()
            .map(|r| MemoryRegion {
                guest_phys_addr: r.guest_phys_addr,
                memory_size: r.memory_size,
                user_addr: r.user_addr,
                mmap_offset: r.mmap_offset,
            })
            .collect();
        let fe = &mut self.frontend;
        if fe
            .acked_protocol()
            .contains(ProtocolFeatures::CONFIGURE_MEM_SLOTS)
        {
            // With memory slots, only changes are sent: the regions go once.
            if !self.memory_sent {
                for r in &regions {
                    fe.add_mem_reg(r, fd)?;
                }
            }
        } else {
            let fds = vec![fd; regions.len()];
            fe.set_mem_table(&regions, &fds)?;
        }
        self.memory_sent = true;
        Ok(())
    }

    fn setup_queue(&mut self, i: usize, base: u32) -> Result<()> {
        let q = &mut self.queues[i];
        q.driver.start_at_base(base)?;
        let index = i as u32;
        let fe = &mut self.frontend;
        fe.set_vring_num(index, u32::from(q.driver.size()))?;
        fe.set_vring_base(index, base)?;
        self.send_vring_addr(i)?;
        let q = &self.queues[i];
        self.frontend.set_vring_kick(index, Some(borrow(&q.kick)))?;
        Ok(())
    }

    /// SET_VRING_ADDR for queue `i`, with VHOST_VRING_F_LOG while logging.
    fn send_vring_addr(&mut self, i: usize) -> Result<()> {
        let gpa = self
            .frontend
            .acked_protocol()
            .contains(ProtocolFeatures::GPA_ADDRESSES);
        let q = &self.queues[i];
        let (desc, avail, used) = match gpa {
            true => (
                q.driver.desc_table().0,
                q.driver.avail_ring().0,
                q.driver.used_ring().0,
            ),
            false => {
                let a = q.driver.vring_user_addrs(&self.memory).ok_or_else(|| {
                    SessionError::Options("rings outside the memory table".into())
                })?;
                (a.desc, a.avail, a.used)
            }
        };
        let flags = match self.logging {
            true => vhost_proto::wire::VRING_F_LOG,
            false => 0,
        };
        let log = q.driver.used_ring().0;
        self.frontend.set_vring_addr(&VringAddr {
            index: i as u32,
            flags,
            desc,
            used,
            avail,
            log,
        })?;
        Ok(())
    }

    /// The control-plane client (for requests the session does not send itself).
    pub fn frontend(&mut self) -> &mut Frontend {
        &mut self.frontend
    }

    /// Guest memory (allocate data buffers with [`GuestMemory::alloc`], access them through
    /// [`GuestMemory::mem`]).
    pub fn memory(&self) -> &GuestMemory {
        &self.memory
    }

    /// The driver of queue `i`.
    pub fn driver(&self, i: usize) -> Option<&VirtqueueDriver> {
        self.queues.get(i).map(|q| &q.driver)
    }

    /// The driver of queue `i`, mutably (for `enable_calls` and the like).
    pub fn driver_mut(&mut self, i: usize) -> Option<&mut VirtqueueDriver> {
        self.queues.get_mut(i).map(|q| &mut q.driver)
    }

    /// Queue `i`'s kick, call and error eventfds.
    pub fn eventfds(&self, i: usize) -> Option<(&EventFd, &EventFd, &EventFd)> {
        self.queues.get(i).map(|q| (&q.kick, &q.call, &q.err))
    }

    /// Number of queues set up.
    pub fn num_queues(&self) -> usize {
        self.queues.len()
    }

    /// Virtio features offered (second GET_FEATURES of the handshake).
    pub fn offered_features(&self) -> u64 {
        self.offered_features
    }

    /// Virtio features acked by [`Session::start`].
    pub fn features(&self) -> u64 {
        self.features
    }

    /// Protocol features offered (empty when not asked).
    pub fn offered_protocol(&self) -> ProtocolFeatures {
        self.offered_protocol
    }

    /// Protocol features acked.
    pub fn acked_protocol(&self) -> ProtocolFeatures {
        self.frontend.acked_protocol()
    }

    /// The back-end's GET_QUEUE_NUM answer (MQ negotiated).
    pub fn queue_num(&self) -> Option<u64> {
        self.queue_num
    }

    /// The back-end's GET_MAX_MEM_SLOTS answer (CONFIGURE_MEM_SLOTS negotiated).
    pub fn max_mem_slots(&self) -> Option<u64> {
        self.max_mem_slots
    }

    /// Configuration bytes read during the handshake.
    pub fn config(&self) -> Option<&[u8]> {
        self.config.as_deref()
    }

    /// The thread serving the back-end channel, when BACKEND_REQ was negotiated.
    pub fn backend_channel(&mut self) -> Option<&mut BackendChannelHandle> {
        self.backend_channel.as_mut()
    }
}
