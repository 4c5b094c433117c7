//! Feature bits: the vhost-user protocol features (bits 0–22) and the virtio bits the protocol
//! itself depends on. One table; a test pins every bit to the specification.

use bitflags::bitflags;

bitflags! {
    /// vhost-user protocol features, negotiated with GET/SET_PROTOCOL_FEATURES.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct ProtocolFeatures: u64 {
        /// Multiple queues (GET_QUEUE_NUM).
        const MQ = 1 << 0;
        /// Dirty log in shared memory (SET_LOG_BASE carries an fd).
        const LOG_SHMFD = 1 << 1;
        /// SEND_RARP.
        const RARP = 1 << 2;
        /// NEED_REPLY is honoured with a u64 ack.
        const REPLY_ACK = 1 << 3;
        /// NET_SET_MTU.
        const NET_MTU = 1 << 4;
        /// The back-end channel (SET_BACKEND_REQ_FD).
        const BACKEND_REQ = 1 << 5;
        /// SET_VRING_ENDIAN.
        const CROSS_ENDIAN = 1 << 6;
        /// CREATE/CLOSE_CRYPTO_SESSION.
        const CRYPTO_SESSION = 1 << 7;
        /// Postcopy migration (POSTCOPY_*).
        const PAGEFAULT = 1 << 8;
        /// GET/SET_CONFIG and BACKEND_CONFIG_CHANGE_MSG.
        const CONFIG = 1 << 9;
        /// The back-end may send descriptors on its channel.
        const BACKEND_SEND_FD = 1 << 10;
        /// BACKEND_VRING_HOST_NOTIFIER_MSG.
        const HOST_NOTIFIER = 1 << 11;
        /// GET/SET_INFLIGHT_FD.
        const INFLIGHT_SHMFD = 1 << 12;
        /// RESET_DEVICE.
        const RESET_DEVICE = 1 << 13;
        /// In-band notifications (VRING_KICK, BACKEND_VRING_CALL/ERR).
        const INBAND_NOTIFICATIONS = 1 << 14;
        /// GET_MAX_MEM_SLOTS, ADD_MEM_REG, REM_MEM_REG.
        const CONFIGURE_MEM_SLOTS = 1 << 15;
        /// SET/GET_STATUS.
        const STATUS = 1 << 16;
        /// Xen foreign/grant mappings (memory regions carry flags and a domain id).
        const XEN_MMAP = 1 << 17;
        /// Shared objects (GET_SHARED_OBJECT, BACKEND_SHARED_OBJECT_*).
        const SHARED_OBJECT = 1 << 18;
        /// Device state transfer (SET_DEVICE_STATE_FD, CHECK_DEVICE_STATE).
        const DEVICE_STATE = 1 << 19;
        /// GET_VRING_BASE may leave requests in flight, recorded in the inflight region.
        const GET_VRING_BASE_INFLIGHT = 1 << 20;
        /// The front-end sends guest-physical addresses instead of its own virtual ones.
        const GPA_ADDRESSES = 1 << 21;
        /// Shared memory regions (GET_SHMEM_CONFIG, BACKEND_SHMEM_MAP/UNMAP).
        const SHMEM = 1 << 22;
    }
}

/// Virtio feature bits the vhost-user protocol itself refers to.
pub mod virtio {
    /// `VIRTIO_RING_F_INDIRECT_DESC`.
    pub const RING_INDIRECT_DESC: u32 = 28;
    /// `VIRTIO_RING_F_EVENT_IDX`.
    pub const RING_EVENT_IDX: u32 = 29;
    /// `VHOST_USER_F_PROTOCOL_FEATURES`: GET/SET_PROTOCOL_FEATURES exist, rings start disabled.
    pub const PROTOCOL_FEATURES: u32 = 30;
    /// `VHOST_F_LOG_ALL`: log every write to guest memory.
    pub const LOG_ALL: u32 = 26;
    /// `VIRTIO_F_VERSION_1`.
    pub const VERSION_1: u32 = 32;
    /// `VIRTIO_F_ACCESS_PLATFORM` (formerly IOMMU_PLATFORM): IOTLB messages.
    pub const ACCESS_PLATFORM: u32 = 33;
    /// `VIRTIO_F_RING_PACKED`.
    pub const RING_PACKED: u32 = 34;
    /// `VIRTIO_F_IN_ORDER`.
    pub const IN_ORDER: u32 = 35;

    /// The mask of one bit.
    pub const fn bit(n: u32) -> u64 {
        1u64 << n
    }
}

/// Every protocol feature with its spec name and bit, in bit order (for tables and logs).
pub const PROTOCOL_FEATURE_TABLE: [(&str, u32); 23] = [
    ("MQ", 0),
    ("LOG_SHMFD", 1),
    ("RARP", 2),
    ("REPLY_ACK", 3),
    ("NET_MTU", 4),
    ("BACKEND_REQ", 5),
    ("CROSS_ENDIAN", 6),
    ("CRYPTO_SESSION", 7),
    ("PAGEFAULT", 8),
    ("CONFIG", 9),
    ("BACKEND_SEND_FD", 10),
    ("HOST_NOTIFIER", 11),
    ("INFLIGHT_SHMFD", 12),
    ("RESET_DEVICE", 13),
    ("INBAND_NOTIFICATIONS", 14),
    ("CONFIGURE_MEM_SLOTS", 15),
    ("STATUS", 16),
    ("XEN_MMAP", 17),
    ("SHARED_OBJECT", 18),
    ("DEVICE_STATE", 19),
    ("GET_VRING_BASE_INFLIGHT", 20),
    ("GPA_ADDRESSES", 21),
    ("SHMEM", 22),
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Bit numbers as the vhost-user specification assigns them ("Protocol features").
    #[test]
    fn protocol_bits_match_the_spec() {
        for (name, bit) in PROTOCOL_FEATURE_TABLE {
            let flag = ProtocolFeatures::from_name(name).expect(name);
            assert_eq!(flag.bits(), 1 << bit, "{name}");
        }
        assert_eq!(ProtocolFeatures::all().bits(), (1 << 23) - 1);
        assert_eq!(ProtocolFeatures::MQ.bits(), 1);
        assert_eq!(ProtocolFeatures::REPLY_ACK.bits(), 8);
        assert_eq!(ProtocolFeatures::BACKEND_REQ.bits(), 0x20);
        assert_eq!(ProtocolFeatures::CONFIG.bits(), 0x200);
        assert_eq!(ProtocolFeatures::CONFIGURE_MEM_SLOTS.bits(), 0x8000);
        assert_eq!(ProtocolFeatures::GET_VRING_BASE_INFLIGHT.bits(), 1 << 20);
        assert_eq!(ProtocolFeatures::GPA_ADDRESSES.bits(), 1 << 21);
        assert_eq!(ProtocolFeatures::SHMEM.bits(), 1 << 22);
        // What qemu-storage-daemon 7.2 offers, as captured: MQ LOG_SHMFD REPLY_ACK BACKEND_REQ
        // PAGEFAULT CONFIG BACKEND_SEND_FD HOST_NOTIFIER CONFIGURE_MEM_SLOTS.
        let qsd = ProtocolFeatures::MQ
            | ProtocolFeatures::LOG_SHMFD
            | ProtocolFeatures::REPLY_ACK
            | ProtocolFeatures::BACKEND_REQ
            | ProtocolFeatures::PAGEFAULT
            | ProtocolFeatures::CONFIG
            | ProtocolFeatures::BACKEND_SEND_FD
            | ProtocolFeatures::HOST_NOTIFIER
            | ProtocolFeatures::CONFIGURE_MEM_SLOTS;
        assert_eq!(qsd.bits(), 0x8f2b);
    }

    #[test]
    fn virtio_bits_match_the_spec() {
        assert_eq!(virtio::PROTOCOL_FEATURES, 30);
        assert_eq!(virtio::LOG_ALL, 26);
        assert_eq!(virtio::ACCESS_PLATFORM, 33);
        assert_eq!(virtio::RING_PACKED, 34);
        assert_eq!(virtio::IN_ORDER, 35);
        assert_eq!(virtio::bit(virtio::PROTOCOL_FEATURES), 0x4000_0000);
    }
}
