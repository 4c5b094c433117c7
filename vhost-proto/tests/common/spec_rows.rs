//! The request tables written out again, row by row, from the specification digest
//! (SPEC.md §2–§3) and what QEMU sends (QEMU.md, hw/virtio/vhost-user.c), independently of
//! `vhost_proto::table`.

use vhost_proto::features::virtio;
use vhost_proto::ProtocolFeatures as P;
use vhost_proto::{BodyShape as B, FdPolicy as F, Gate as G, Owes as O, ReplyShape as S};

/// One row: code, name, body, fds, gate, owes, reply shape.
pub type Row = (u32, &'static str, B, F, G, O, S);

const fn fx(n: usize) -> B {
    B::Fixed(n)
}

use O::{AckWhenAsked as ACK, Reply as REPLY, ReplyInPostcopy as POSTCOPY};

#[rustfmt::skip]
pub const FRONTEND: [Row; 44] = [
    (1, "GET_FEATURES", B::Empty, F::None, G::None, REPLY, S::U64),
    (2, "SET_FEATURES", fx(8), F::None, G::None, ACK, S::U64),
    (3, "SET_OWNER", B::Empty, F::None, G::None, ACK, S::U64),
    (4, "RESET_OWNER", B::Empty, F::None, G::None, ACK, S::U64),
    (5, "SET_MEM_TABLE", B::MemTable, F::PerRegion, G::None, POSTCOPY, S::MemTable),
    (6, "SET_LOG_BASE", fx(16), F::One, G::Protocol(P::LOG_SHMFD), REPLY, S::U64),
    (7, "SET_LOG_FD", B::Empty, F::One, G::None, ACK, S::U64),
    (8, "SET_VRING_NUM", fx(8), F::None, G::None, ACK, S::U64),
    (9, "SET_VRING_ADDR", fx(40), F::None, G::None, ACK, S::U64),
    (10, "SET_VRING_BASE", fx(8), F::None, G::None, ACK, S::U64),
    (11, "GET_VRING_BASE", fx(8), F::None, G::None, REPLY, S::VringState),
    (12, "SET_VRING_KICK", fx(8), F::OneUnlessNofd, G::None, ACK, S::U64),
    (13, "SET_VRING_CALL", fx(8), F::OneUnlessNofd, G::None, ACK, S::U64),
    (14, "SET_VRING_ERR", fx(8), F::OneUnlessNofd, G::None, ACK, S::U64),
    (15, "GET_PROTOCOL_FEATURES", B::Empty, F::None, G::ProtocolFeaturesOffered, REPLY, S::U64),
    (16, "SET_PROTOCOL_FEATURES", fx(8), F::None, G::ProtocolFeaturesOffered, ACK, S::U64),
    (17, "GET_QUEUE_NUM", B::Empty, F::None, G::Protocol(P::MQ), REPLY, S::U64),
    (18, "SET_VRING_ENABLE", fx(8), F::None, G::ProtocolFeaturesNegotiated, ACK, S::U64),
    (19, "SEND_RARP", fx(8), F::None, G::Protocol(P::RARP), ACK, S::U64),
    (20, "NET_SET_MTU", fx(8), F::None, G::Protocol(P::NET_MTU), ACK, S::U64),
    (21, "SET_BACKEND_REQ_FD", B::Empty, F::One, G::Protocol(P::BACKEND_REQ), ACK, S::U64),
    // QEMU sets NEED_REPLY on every IOTLB_MSG and waits for the u64, REPLY_ACK or not.
    (22, "IOTLB_MSG", fx(32), F::None, G::Virtio(virtio::ACCESS_PLATFORM), REPLY, S::U64),
    (23, "SET_VRING_ENDIAN", fx(8), F::None, G::Protocol(P::CROSS_ENDIAN), ACK, S::U64),
    (24, "GET_CONFIG", B::FixedPlusPayload { fixed: 12, max_payload: 256 }, F::None, G::Protocol(P::CONFIG), REPLY, S::Config),
    (25, "SET_CONFIG", B::FixedPlusPayload { fixed: 12, max_payload: 256 }, F::None, G::Protocol(P::CONFIG), ACK, S::U64),
    (26, "CREATE_CRYPTO_SESSION", B::FixedPlusPayload { fixed: 8, max_payload: 1024 }, F::None, G::Protocol(P::CRYPTO_SESSION), REPLY, S::CryptoSession),
    (27, "CLOSE_CRYPTO_SESSION", fx(8), F::None, G::Protocol(P::CRYPTO_SESSION), ACK, S::U64),
    (28, "POSTCOPY_ADVISE", B::Empty, F::None, G::Protocol(P::PAGEFAULT), REPLY, S::EmptyWithFd),
    (29, "POSTCOPY_LISTEN", B::Empty, F::None, G::Protocol(P::PAGEFAULT), ACK, S::U64),
    (30, "POSTCOPY_END", B::Empty, F::None, G::Protocol(P::PAGEFAULT), REPLY, S::U64),
    (31, "GET_INFLIGHT_FD", fx(24), F::None, G::Protocol(P::INFLIGHT_SHMFD), REPLY, S::Inflight),
    (32, "SET_INFLIGHT_FD", fx(24), F::One, G::Protocol(P::INFLIGHT_SHMFD), ACK, S::U64),
    (33, "GPU_SET_SOCKET", B::Empty, F::One, G::None, ACK, S::U64),
    (34, "RESET_DEVICE", B::Empty, F::None, G::Protocol(P::RESET_DEVICE), ACK, S::U64),
    (35, "VRING_KICK", fx(8), F::None, G::Protocol(P::INBAND_NOTIFICATIONS), ACK, S::U64),
    (36, "GET_MAX_MEM_SLOTS", B::Empty, F::None, G::Protocol(P::CONFIGURE_MEM_SLOTS), REPLY, S::U64),
    (37, "ADD_MEM_REG", B::SingleRegion, F::One, G::Protocol(P::CONFIGURE_MEM_SLOTS), POSTCOPY, S::SingleRegion),
    (38, "REM_MEM_REG", B::SingleRegion, F::NoneOrOne, G::Protocol(P::CONFIGURE_MEM_SLOTS), ACK, S::U64),
    (39, "SET_STATUS", fx(8), F::None, G::Protocol(P::STATUS), ACK, S::U64),
    (40, "GET_STATUS", B::Empty, F::None, G::Protocol(P::STATUS), REPLY, S::U64),
    (41, "GET_SHARED_OBJECT", fx(16), F::None, G::Protocol(P::SHARED_OBJECT), REPLY, S::U64),
    (42, "SET_DEVICE_STATE_FD", fx(8), F::One, G::Protocol(P::DEVICE_STATE), REPLY, S::U64),
    (43, "CHECK_DEVICE_STATE", B::Empty, F::None, G::Protocol(P::DEVICE_STATE), REPLY, S::U64),
    (44, "GET_SHMEM_CONFIG", B::Empty, F::None, G::Protocol(P::SHMEM), REPLY, S::ShmemConfig),
];

#[rustfmt::skip]
pub const BACKEND: [Row; 10] = [
    (1, "BACKEND_IOTLB_MSG", fx(32), F::None, G::Virtio(virtio::ACCESS_PLATFORM), ACK, S::U64),
    (2, "BACKEND_CONFIG_CHANGE_MSG", B::Empty, F::None, G::Protocol(P::CONFIG), ACK, S::U64),
    (3, "BACKEND_VRING_HOST_NOTIFIER_MSG", fx(24), F::OneUnlessNofd, G::Protocol(P::HOST_NOTIFIER), ACK, S::U64),
    (4, "BACKEND_VRING_CALL", fx(8), F::None, G::Protocol(P::INBAND_NOTIFICATIONS), ACK, S::U64),
    (5, "BACKEND_VRING_ERR", fx(8), F::None, G::Protocol(P::INBAND_NOTIFICATIONS), ACK, S::U64),
    (6, "BACKEND_SHARED_OBJECT_ADD", fx(16), F::None, G::Protocol(P::SHARED_OBJECT), ACK, S::U64),
    (7, "BACKEND_SHARED_OBJECT_REMOVE", fx(16), F::None, G::Protocol(P::SHARED_OBJECT), ACK, S::U64),
    (8, "BACKEND_SHARED_OBJECT_LOOKUP", fx(16), F::None, G::Protocol(P::SHARED_OBJECT), REPLY, S::U64),
    (9, "BACKEND_SHMEM_MAP", fx(40), F::One, G::Protocol(P::SHMEM), ACK, S::U64),
    (10, "BACKEND_SHMEM_UNMAP", fx(40), F::None, G::Protocol(P::SHMEM), ACK, S::U64),
];

/// The row of a front-end code.
pub fn frontend_row(code: u32) -> &'static Row {
    &FRONTEND[code as usize - 1]
}
