//! A virtio-blk request as a descriptor chain (virtio 1.2, 5.2.6): what it asks for and where
//! its parts live in guest memory.
//!
//! The chain is read as a byte stream, without assumptions about how the driver cut it into
//! descriptors ("the device MUST NOT make assumptions about the particular arrangement of
//! descriptors", 2.6.4): the device-readable bytes come first, then the device-writable
//! ones. The 16-byte header is the start of the readable bytes — it may be split over several
//! descriptors — and the status is the last writable byte. What lies between is data.
//!
//! Nothing here trusts the chain: the runtime walked it and checked each buffer against guest
//! memory when it popped the request ([`RequestOf::fault`]); descriptor count and total length
//! are capped here, and every violation is a [`RequestError`] that names the check.

use std::io;

use vhost_backend::runtime::{ChainFault, GuestIoError, RequestOf};

use crate::config::MAX_DATA_BYTES;

pub use virtio_defs::blk::{
    RangeSegment, RequestHeader, HEADER_SIZE, ID_BYTES, SEGMENT_SIZE, VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
    WRITE_ZEROES_FLAG_UNMAP,
};

/// Most descriptors one chain may have (a 1024-entry ring plus room for header and status
/// buffers of an indirect table).
pub const MAX_DESCRIPTORS: usize = 1026;
/// Most bytes one chain may describe: [`MAX_DATA_BYTES`] (32 MiB) of data plus room for the
/// header and status.
pub const MAX_CHAIN_BYTES: u64 = MAX_DATA_BYTES + 4096;

/// Why a request failed. [`RequestError::status`] says what the driver is told.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The chain has no device-writable byte for the status.
    #[error("chain has no device-writable status byte")]
    NoStatus,
    /// More descriptors than [`MAX_DESCRIPTORS`].
    #[error("chain has more than {MAX_DESCRIPTORS} descriptors")]
    TooManyDescriptors,
    /// The buffers add up to more than [`MAX_CHAIN_BYTES`].
    #[error("chain is longer than {MAX_CHAIN_BYTES} bytes")]
    TooLong,
    /// A device-readable descriptor follows a device-writable one.
    #[error("device-readable descriptor after a device-writable one")]
    ReadableAfterWritable,
    /// A descriptor's `addr + len` overflows.
    #[error("descriptor at {addr:#x} len {len} overflows the address space")]
    AddressOverflow {
        /// Guest address.
        addr: u64,
        /// Length.
        len: u32,
    },
    /// The readable bytes are too few for the header.
    #[error("header needs {HEADER_SIZE} device-readable bytes, chain has {got}")]
    ShortHeader {
        /// Readable bytes in the chain.
        got: u64,
    },
    /// A buffer is outside guest memory.
    #[error("buffer at {addr:#x} len {len} is outside guest memory")]
    GuestMemory {
        /// Guest address.
        addr: u64,
        /// Length.
        len: u64,
    },
    /// Data buffers of the wrong direction for the request type.
    #[error("request type {request_type} has {got} bytes of {which} buffers, expected {expected}")]
    WrongDirection {
        /// Request type.
        request_type: u32,
        /// "device-readable" or "device-writable".
        which: &'static str,
        /// Bytes found.
        got: u64,
        /// Bytes allowed.
        expected: u64,
    },
    /// A read or write of more than [`MAX_DATA_BYTES`].
    #[error("data length {len} exceeds the limit of {MAX_DATA_BYTES} bytes")]
    DataTooLong {
        /// Data length.
        len: u64,
    },
    /// With `O_DIRECT`, a transfer that does not start and end on the host's direct I/O
    /// alignment (the advertised `blk_size` is at least that alignment).
    #[error("sector {sector} + {len} bytes is not aligned to the {align}-byte direct I/O block")]
    Misaligned {
        /// First sector.
        sector: u64,
        /// Length in bytes.
        len: u64,
        /// Required alignment in bytes.
        align: u32,
    },
    /// The data length is not a whole number of sectors.
    #[error("data length {len} is not a multiple of 512")]
    UnalignedLength {
        /// Data length.
        len: u64,
    },
    /// The range runs past the disk's end (or the arithmetic overflows).
    #[error("sector {sector} + {len} bytes is beyond the capacity of {capacity} sectors")]
    OutOfRange {
        /// First sector.
        sector: u64,
        /// Length in bytes.
        len: u64,
        /// Capacity in sectors.
        capacity: u64,
    },
    /// A write-type request on a read-only disk.
    #[error("request type {request_type} on a read-only disk")]
    ReadOnly {
        /// Request type.
        request_type: u32,
    },
    /// A discard / write-zeroes payload that is empty, not whole segments, or too many.
    #[error("range payload of {len} bytes is not 1 to {max} segments of 16 bytes")]
    BadSegments {
        /// Payload length.
        len: u64,
        /// Most segments allowed.
        max: u32,
    },
    /// A discard / write-zeroes segment covering too many sectors.
    #[error("segment of {num_sectors} sectors exceeds the limit of {max}")]
    SegmentTooLarge {
        /// Sectors in the segment.
        num_sectors: u32,
        /// The advertised limit.
        max: u32,
    },
    /// A discard / write-zeroes segment with flags this command does not know.
    #[error("segment flags {flags:#x} not supported for request type {request_type}")]
    UnsupportedFlags {
        /// Request type.
        request_type: u32,
        /// Flags.
        flags: u32,
    },
    /// A request type this device does not implement.
    #[error("unsupported request type {request_type}")]
    Unsupported {
        /// Request type.
        request_type: u32,
    },
    /// The file operation failed.
    #[error("I/O on the image failed: {0}")]
    Io(#[from] io::Error),
}

impl RequestError {
    /// The status byte the driver gets for this error.
    pub fn status(&self) -> u8 {
        match self {
            RequestError::Unsupported { .. } | RequestError::UnsupportedFlags { .. } => {
                VIRTIO_BLK_S_UNSUPP
            }
            _ => VIRTIO_BLK_S_IOERR,
        }
    }
}

/// A parsed request header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// `VIRTIO_BLK_T_*`.
    pub request_type: u32,
    /// First 512-byte sector.
    pub sector: u64,
}

impl From<ChainFault> for RequestError {
    fn from(f: ChainFault) -> Self {
        match f {
            ChainFault::AddressOverflow { addr, len } => {
                RequestError::AddressOverflow { addr, len }
            }
            ChainFault::OutsideMemory { addr, len } => RequestError::GuestMemory {
                addr,
                len: u64::from(len),
            },
            ChainFault::ReadableAfterWritable => RequestError::ReadableAfterWritable,
            _ => RequestError::TooManyDescriptors,
        }
    }
}

impl From<GuestIoError> for RequestError {
    fn from(e: GuestIoError) -> Self {
        match e {
            GuestIoError::Io(e) => RequestError::Io(e),
            GuestIoError::OutsideMemory { addr, len } => RequestError::GuestMemory { addr, len },
            GuestIoError::Short { wanted, got } => RequestError::GuestMemory {
                addr: 0,
                len: wanted - got.min(wanted),
            },
            e => RequestError::Io(io::Error::other(e)),
        }
    }
}

/// Checks what the runtime found wrong with the chain, the descriptor cap and the total
/// length.
pub fn check_shape(req: &RequestOf<'_>) -> Result<(), RequestError> {
    match req.fault() {
        // A buffer outside guest memory fails when it is used, as every access does: a
        // request that does not use it is still answered by its type (UNSUPP, FLUSH, ...).
        None | Some(ChainFault::OutsideMemory { .. }) => {}
        Some(fault) => return Err(fault.into()),
    }
    if req.readable().len() + req.writable().len() > MAX_DESCRIPTORS {
        return Err(RequestError::TooManyDescriptors);
    }
    if req.readable_len() + req.writable_len() > MAX_CHAIN_BYTES {
        return Err(RequestError::TooLong);
    }
    Ok(())
}

/// Reads and decodes the header from the first 16 readable bytes.
pub fn read_header(req: &RequestOf<'_>) -> Result<Header, RequestError> {
    if req.readable_len() < HEADER_SIZE {
        return Err(RequestError::ShortHeader {
            got: req.readable_len(),
        });
    }
    // One load when the header lies in one buffer (the common layout). The layout is
    // `RequestHeader`'s: type (le32), reserved (le32), sector (le64).
    let b = req.read_array::<{ HEADER_SIZE as usize }>(0)?;
    let [t0, t1, t2, t3, _, _, _, _, s @ ..] = b;
    Ok(Header {
        request_type: u32::from_le_bytes([t0, t1, t2, t3]),
        sector: u64::from_le_bytes(s),
    })
}

/// Reads range segment `index` of a DISCARD / WRITE_ZEROES payload (after the header).
pub fn range_segment(req: &RequestOf<'_>, index: u64) -> Result<RangeSegment, RequestError> {
    Ok(req.read_obj(HEADER_SIZE + index * SEGMENT_SIZE)?)
}
