//! Body layouts exactly as they travel on the wire: `#[repr(C)]`, native byte order, each
//! pinned to the specification's size by a compile-time assertion.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

macro_rules! wire {
    ($(#[$m:meta])* $name:ident, $size:expr, { $($(#[$fm:meta])* pub $f:ident : $t:ty),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
        #[repr(C)]
        pub struct $name { $($(#[$fm])* pub $f: $t),* }
        const _: () = assert!(core::mem::size_of::<$name>() == $size);
        impl Default for $name {
            fn default() -> Self {
                <Self as zerocopy::FromZeros>::new_zeroed()
            }
        }
    };
}

wire!(
    /// A plain 64-bit payload (features, status, acks, MTU, ...).
    U64Body, 8, {
        /// The value.
        pub value: u64,
    }
);

wire!(
    /// Vring state: an index and a number (SET_VRING_NUM/BASE, GET_VRING_BASE, SET_VRING_ENABLE,
    /// SET_VRING_ENDIAN, VRING_KICK, BACKEND_VRING_CALL/ERR).
    VringState, 8, {
        /// The vring index.
        pub index: u32,
        /// Size, base index, enable flag or endianness, depending on the message.
        pub num: u32,
    }
);

/// `flags` bit of [`VringAddr`]: log used-ring writes.
pub const VRING_F_LOG: u32 = 1 << 0;

wire!(
    /// Vring address description (SET_VRING_ADDR). Ring addresses are front-end virtual
    /// addresses (guest-physical with GPA_ADDRESSES); `log` is guest-physical.
    VringAddr, 40, {
        /// The vring index.
        pub index: u32,
        /// Bit 0: VHOST_VRING_F_LOG.
        pub flags: u32,
        /// Descriptor table address.
        pub desc: u64,
        /// Used ring address.
        pub used: u64,
        /// Available ring address.
        pub avail: u64,
        /// Guest-physical address of the used ring for dirty logging.
        pub log: u64,
    }
);

wire!(
    /// One memory region: guest-physical address, size, front-end virtual address, and the
    /// offset of the region inside its file descriptor.
    MemoryRegion, 32, {
        /// Guest-physical address.
        pub guest_phys_addr: u64,
        /// Size in bytes.
        pub memory_size: u64,
        /// Front-end virtual address.
        pub user_addr: u64,
        /// Offset of the region in the descriptor that comes with it.
        pub mmap_offset: u64,
    }
);

wire!(
    /// A memory region with the Xen mapping fields (XEN_MMAP negotiated).
    XenMemoryRegion, 40, {
        /// The region.
        pub region: MemoryRegion,
        /// Xen mapping flags.
        pub xen_mmap_flags: u32,
        /// Xen domain id.
        pub domid: u32,
    }
);

wire!(
    /// The fixed part of SET_MEM_TABLE: region count and padding.
    MemTableHeader, 8, {
        /// Number of regions that follow (at most 8).
        pub num_regions: u32,
        /// Padding, zero.
        pub padding: u32,
    }
);

wire!(
    /// ADD_MEM_REG / REM_MEM_REG body: padding then one region.
    SingleRegion, 40, {
        /// Padding, zero.
        pub padding: u64,
        /// The region.
        pub region: MemoryRegion,
    }
);

wire!(
    /// ADD_MEM_REG / REM_MEM_REG body with XEN_MMAP.
    XenSingleRegion, 48, {
        /// Padding, zero.
        pub padding: u64,
        /// The region.
        pub region: XenMemoryRegion,
    }
);

wire!(
    /// Log description (SET_LOG_BASE).
    LogBase, 16, {
        /// Size of the log area.
        pub mmap_size: u64,
        /// Offset of the log in its descriptor.
        pub mmap_offset: u64,
    }
);

/// IOTLB message types.
pub mod iotlb {
    /// A miss reported by the back-end.
    pub const MISS: u8 = 1;
    /// A mapping update from the front-end.
    pub const UPDATE: u8 = 2;
    /// A mapping invalidation from the front-end.
    pub const INVALIDATE: u8 = 3;
    /// An access failure reported by the back-end.
    pub const ACCESS_FAIL: u8 = 4;
    /// Start of a batch of updates.
    pub const BATCH_BEGIN: u8 = 5;
    /// End of a batch of updates.
    pub const BATCH_END: u8 = 6;
    /// Read permission.
    pub const PERM_RO: u8 = 1;
    /// Write permission.
    pub const PERM_WO: u8 = 2;
    /// Read and write.
    pub const PERM_RW: u8 = 3;
}

wire!(
    /// IOTLB message (IOTLB_MSG, BACKEND_IOTLB_MSG).
    IotlbMsg, 32, {
        /// I/O virtual address.
        pub iova: u64,
        /// Size of the range.
        pub size: u64,
        /// Front-end virtual address.
        pub uaddr: u64,
        /// Permissions (see [`iotlb`]).
        pub perm: u8,
        /// Message type (see [`iotlb`]).
        pub msg_type: u8,
        /// Padding, zero.
        pub padding: [u8; 6],
    }
);

/// SET_CONFIG flag: a write by the front-end's driver.
pub const CONFIG_FLAG_WRITABLE: u32 = 0;
/// SET_CONFIG flag: the write is part of live migration.
pub const CONFIG_FLAG_LIVE_MIGRATION: u32 = 1;
/// Largest device configuration space a GET/SET_CONFIG may carry.
pub const MAX_CONFIG_SIZE: usize = 256;
/// Configuration offsets end here.
pub const CONFIG_SPACE_END: u64 = 0x1000;

wire!(
    /// The fixed part of GET_CONFIG / SET_CONFIG; `size` bytes of payload follow.
    ConfigHeader, 12, {
        /// Offset in the device configuration space.
        pub offset: u32,
        /// Payload size.
        pub size: u32,
        /// [`CONFIG_FLAG_WRITABLE`] or [`CONFIG_FLAG_LIVE_MIGRATION`].
        pub flags: u32,
    }
);

wire!(
    /// The fixed part of CREATE_CRYPTO_SESSION: the session id; the session's setup data
    /// (virtio-crypto session parameters and keys) follows as an opaque payload.
    CryptoSessionHeader, 8, {
        /// Session id; negative in a reply means failure.
        pub session_id: i64,
    }
);

/// Largest crypto-session setup payload accepted.
pub const MAX_CRYPTO_PAYLOAD: usize = 1024;

wire!(
    /// Inflight description (GET/SET_INFLIGHT_FD).
    Inflight, 24, {
        /// Size of the inflight area; 0 in a reply means "no inflight tracking".
        pub mmap_size: u64,
        /// Offset of the area in its descriptor.
        pub mmap_offset: u64,
        /// Number of queues.
        pub num_queues: u16,
        /// Size of each queue.
        pub queue_size: u16,
        /// Padding, zero.
        pub padding: [u8; 4],
    }
);

/// Bit of a vring fd message (SET_VRING_KICK/CALL/ERR) saying no descriptor is attached.
pub const VRING_NOFD: u64 = 1 << 8;
/// Mask of the vring index in a vring fd message.
pub const VRING_INDEX_MASK: u64 = 0xff;

wire!(
    /// Vring area description (BACKEND_VRING_HOST_NOTIFIER_MSG).
    VringArea, 24, {
        /// Bits 0–7 vring index, bit 8 NOFD.
        pub u64_index_flags: u64,
        /// Size of the area.
        pub size: u64,
        /// Offset in the descriptor.
        pub offset: u64,
    }
);

wire!(
    /// A shared object's UUID (GET_SHARED_OBJECT, BACKEND_SHARED_OBJECT_*).
    SharedObject, 16, {
        /// The UUID bytes.
        pub uuid: [u8; 16],
    }
);

/// Device-state transfer direction: the back-end saves its state into the fd.
pub const TRANSFER_SAVE: u32 = 0;
/// Device-state transfer direction: the back-end loads its state from the fd.
pub const TRANSFER_LOAD: u32 = 1;
/// Device-state transfer phase: the device is stopped.
pub const TRANSFER_PHASE_STOPPED: u32 = 0;
/// SET_DEVICE_STATE_FD reply bit: no descriptor comes back.
pub const DEVICE_STATE_NOFD: u64 = 1 << 8;

wire!(
    /// SET_DEVICE_STATE_FD body.
    DeviceStateTransfer, 8, {
        /// [`TRANSFER_SAVE`] or [`TRANSFER_LOAD`].
        pub direction: u32,
        /// [`TRANSFER_PHASE_STOPPED`].
        pub phase: u32,
    }
);

/// Number of shared memory regions a GET_SHMEM_CONFIG reply describes.
pub const MAX_SHMEM_REGIONS: usize = 256;

wire!(
    /// GET_SHMEM_CONFIG reply.
    ShmemConfig, 2056, {
        /// Number of regions in use.
        pub nregions: u32,
        /// Padding, zero.
        pub padding: u32,
        /// Size of each region.
        pub memory_sizes: [u64; MAX_SHMEM_REGIONS],
    }
);

/// BACKEND_SHMEM_MAP flag: the mapping is writable.
pub const SHMEM_MAP_WRITABLE: u64 = 1 << 0;

wire!(
    /// BACKEND_SHMEM_MAP / BACKEND_SHMEM_UNMAP body.
    ShmemMap, 40, {
        /// Shared memory region id.
        pub shmid: u8,
        /// Padding, zero.
        pub padding: [u8; 7],
        /// Offset in the descriptor.
        pub fd_offset: u64,
        /// Offset in the shared memory region.
        pub shm_offset: u64,
        /// Length of the mapping.
        pub len: u64,
        /// [`SHMEM_MAP_WRITABLE`].
        pub flags: u64,
    }
);
