//! A virtio-blk request as a descriptor chain (virtio 1.2, 5.2.6): what it asks for and where
//! its parts live in guest memory.
//!
//! The chain is read as a byte stream, without assumptions about how the driver cut it into
//! descriptors ("the device MUST NOT make assumptions about the particular arrangement of
//! descriptors", 2.6.4): the device-readable bytes come first, then the device-writable
//! ones. The 16-byte header is the start of the readable bytes — it may be split over several
//! descriptors — and the status is the last writable byte. What lies between is data.
//!
//! Nothing here trusts the chain: descriptor count and total length are capped, every address
//! is checked against guest memory before use, and every violation is a [`RequestError`] that
//! names the check.

use std::io;

use virtio_queue::desc::split::Descriptor;
use vm_memory::bitmap::Bitmap;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryRegion};
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

use crate::config::MAX_DATA_BYTES;
use crate::io::IoVecs;

/// `VIRTIO_BLK_T_IN`: read sectors.
pub const VIRTIO_BLK_T_IN: u32 = 0;
/// `VIRTIO_BLK_T_OUT`: write sectors.
pub const VIRTIO_BLK_T_OUT: u32 = 1;
/// `VIRTIO_BLK_T_FLUSH`: make earlier completed writes durable.
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
/// `VIRTIO_BLK_T_GET_ID`: read the device serial (20 bytes).
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
/// `VIRTIO_BLK_T_DISCARD`: deallocate ranges.
pub const VIRTIO_BLK_T_DISCARD: u32 = 11;
/// `VIRTIO_BLK_T_WRITE_ZEROES`: zero ranges.
pub const VIRTIO_BLK_T_WRITE_ZEROES: u32 = 13;

/// `VIRTIO_BLK_S_OK`.
pub const VIRTIO_BLK_S_OK: u8 = 0;
/// `VIRTIO_BLK_S_IOERR`.
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
/// `VIRTIO_BLK_S_UNSUPP`.
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// Size of the request header `{type: u32, reserved: u32, sector: u64}`.
pub const HEADER_SIZE: u64 = 16;
/// Size of a discard / write-zeroes segment `{sector: u64, num_sectors: u32, flags: u32}`.
pub const SEGMENT_SIZE: u64 = 16;
/// `VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP`, bit 0 of a segment's flags.
pub const WRITE_ZEROES_FLAG_UNMAP: u32 = 1;
/// Length of the GET_ID answer.
pub const ID_BYTES: usize = 20;
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

/// One non-empty buffer of a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest-physical address.
    pub addr: GuestAddress,
    /// Length in bytes (never 0).
    pub len: u32,
}

/// The shape of one chain: its readable and writable buffers, collected into reusable
/// vectors (no allocation once they reached their working size).
#[derive(Debug, Default)]
pub struct ChainLayout {
    readable: Vec<Segment>,
    writable: Vec<Segment>,
    readable_len: u64,
    writable_len: u64,
    /// The last writable buffer seen, even past the descriptor cap: the status byte is its
    /// last byte.
    last_writable: Option<Segment>,
    /// The first violation found while walking.
    fault: Option<RequestError>,
}

/// `struct virtio_blk_req` header as the driver lays it out.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct RequestHeader {
    /// `VIRTIO_BLK_T_*`.
    pub request_type: U32,
    /// Reserved.
    pub reserved: U32,
    /// First 512-byte sector.
    pub sector: U64,
}

/// `struct virtio_blk_discard_write_zeroes`: one range of a DISCARD or WRITE_ZEROES request.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct RangeSegment {
    /// First 512-byte sector.
    pub sector: U64,
    /// Number of sectors.
    pub num_sectors: U32,
    /// `WRITE_ZEROES_FLAG_UNMAP` or 0.
    pub flags: U32,
}

const _: () = assert!(size_of::<RequestHeader>() == HEADER_SIZE as usize);
const _: () = assert!(size_of::<RangeSegment>() == SEGMENT_SIZE as usize);

/// A parsed request header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// `VIRTIO_BLK_T_*`.
    pub request_type: u32,
    /// First 512-byte sector.
    pub sector: u64,
}

impl ChainLayout {
    /// An empty layout with room for `descriptors` buffers of each direction.
    pub fn with_capacity(descriptors: usize) -> Self {
        ChainLayout {
            readable: Vec::with_capacity(descriptors),
            writable: Vec::with_capacity(descriptors),
            ..ChainLayout::default()
        }
    }

    /// Forgets the previous chain and records `descs`. Never fails: a violation is kept and
    /// reported by [`ChainLayout::check`], after the status byte has been located.
    pub fn walk(&mut self, descs: impl Iterator<Item = Descriptor>) {
        self.readable.clear();
        self.writable.clear();
        self.readable_len = 0;
        self.writable_len = 0;
        self.last_writable = None;
        self.fault = None;
        let mut count = 0usize;
        let mut total = 0u64;
        for desc in descs {
            let len = desc.len();
            if len == 0 {
                continue;
            }
            let seg = Segment {
                addr: desc.addr(),
                len,
            };
            if desc.addr().checked_add(u64::from(len)).is_none() {
                self.fail(RequestError::AddressOverflow {
                    addr: desc.addr().raw_value(),
                    len,
                });
                continue;
            }
            if desc.is_write_only() {
                self.last_writable = Some(seg);
            } else if self.last_writable.is_some() {
                self.fail(RequestError::ReadableAfterWritable);
            }
            count += 1;
            total += u64::from(len);
            if count > MAX_DESCRIPTORS {
                self.fail(RequestError::TooManyDescriptors);
            } else if total > MAX_CHAIN_BYTES {
                self.fail(RequestError::TooLong);
            }
            if self.fault.is_some() {
                continue;
            }
            if desc.is_write_only() {
                self.writable.push(seg);
                self.writable_len += u64::from(len);
            } else {
                self.readable.push(seg);
                self.readable_len += u64::from(len);
            }
        }
    }

    fn fail(&mut self, err: RequestError) {
        if self.fault.is_none() {
            self.fault = Some(err);
        }
    }

    /// Where the status byte goes: the last byte of the last writable buffer.
    pub fn status_addr(&self) -> Option<GuestAddress> {
        let seg = self.last_writable?;
        // `addr + len` was checked not to overflow, and `len >= 1`.
        Some(seg.addr.unchecked_add(u64::from(seg.len) - 1))
    }

    /// The first violation found by [`ChainLayout::walk`], if any.
    pub fn check(&mut self) -> Result<(), RequestError> {
        match self.fault.take() {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    /// Total device-readable bytes (header included).
    pub fn readable_len(&self) -> u64 {
        self.readable_len
    }

    /// Total device-writable bytes (status included).
    pub fn writable_len(&self) -> u64 {
        self.writable_len
    }

    /// Reads and decodes the header from the first 16 readable bytes.
    pub fn header<M: GuestMemory>(&self, mem: &M) -> Result<Header, RequestError> {
        if self.readable_len < HEADER_SIZE {
            return Err(RequestError::ShortHeader {
                got: self.readable_len,
            });
        }
        let mut raw = RequestHeader::new_zeroed();
        copy_from_guest(mem, &self.readable, 0, raw.as_mut_bytes())?;
        Ok(Header {
            request_type: raw.request_type.get(),
            sector: raw.sector.get(),
        })
    }

    /// Copies readable bytes `[skip, skip + out.len())` into `out` (data of a write).
    pub fn read_readable<M: GuestMemory>(
        &self,
        mem: &M,
        skip: u64,
        out: &mut [u8],
    ) -> Result<(), RequestError> {
        copy_from_guest(mem, &self.readable, skip, out)
    }

    /// Reads range segment `index` of a DISCARD / WRITE_ZEROES payload (after the header).
    pub fn range_segment<M: GuestMemory>(
        &self,
        mem: &M,
        index: u64,
    ) -> Result<RangeSegment, RequestError> {
        let mut seg = RangeSegment::new_zeroed();
        let offset = HEADER_SIZE + index * SEGMENT_SIZE;
        copy_from_guest(mem, &self.readable, offset, seg.as_mut_bytes())?;
        Ok(seg)
    }

    /// Writes `data` into the writable bytes from their start. The caller keeps `data` short
    /// enough to leave the status byte alone.
    pub fn write_writable<M: GuestMemory>(&self, mem: &M, data: &[u8]) -> Result<(), RequestError> {
        let mut done = 0usize;
        for seg in &self.writable {
            if done == data.len() {
                break;
            }
            let n = (data.len() - done).min(seg.len as usize);
            mem.write_slice(&data[done..done + n], seg.addr)
                .map_err(|_| RequestError::GuestMemory {
                    addr: seg.addr.raw_value(),
                    len: n as u64,
                })?;
            done += n;
        }
        Ok(())
    }

    /// Appends host iovecs for readable bytes `[skip, skip + len)` (data of a write).
    pub fn map_readable<M: GuestMemory>(
        &self,
        mem: &M,
        skip: u64,
        len: u64,
        iov: &mut IoVecs,
    ) -> Result<(), RequestError> {
        map_range(mem, &self.readable, skip, len, iov, false)
    }

    /// Appends host iovecs for writable bytes `[0, len)` (data of a read), marking them dirty.
    pub fn map_writable<M: GuestMemory>(
        &self,
        mem: &M,
        len: u64,
        iov: &mut IoVecs,
    ) -> Result<(), RequestError> {
        map_range(mem, &self.writable, 0, len, iov, true)
    }
}

/// Copies `out.len()` bytes that start `offset` bytes into `segs`.
fn copy_from_guest<M: GuestMemory>(
    mem: &M,
    segs: &[Segment],
    offset: u64,
    out: &mut [u8],
) -> Result<(), RequestError> {
    let mut skip = offset;
    let mut done = 0usize;
    for seg in segs {
        if done == out.len() {
            break;
        }
        let seg_len = u64::from(seg.len);
        if skip >= seg_len {
            skip -= seg_len;
            continue;
        }
        let n = (out.len() - done).min((seg_len - skip) as usize);
        // `skip < len` and `addr + len` does not overflow.
        let addr = seg.addr.unchecked_add(skip);
        mem.read_slice(&mut out[done..done + n], addr)
            .map_err(|_| RequestError::GuestMemory {
                addr: addr.raw_value(),
                len: n as u64,
            })?;
        done += n;
        skip = 0;
    }
    if done == out.len() {
        Ok(())
    } else {
        Err(RequestError::ShortHeader { got: done as u64 })
    }
}

/// Appends iovecs for bytes `[skip, skip + len)` of `segs`, one per guest memory region
/// crossed, after checking each piece lies inside guest memory.
fn map_range<M: GuestMemory>(
    mem: &M,
    segs: &[Segment],
    mut skip: u64,
    len: u64,
    iov: &mut IoVecs,
    dirty: bool,
) -> Result<(), RequestError> {
    let mut left = len;
    for seg in segs {
        if left == 0 {
            break;
        }
        let seg_len = u64::from(seg.len);
        if skip >= seg_len {
            skip -= seg_len;
            continue;
        }
        let mut addr = seg.addr.unchecked_add(skip);
        let mut part = (seg_len - skip).min(left);
        skip = 0;
        left -= part;
        while part > 0 {
            let bad = || RequestError::GuestMemory {
                addr: addr.raw_value(),
                len: part,
            };
            let (region, region_addr) = mem.to_region_addr(addr).ok_or_else(bad)?;
            let room = region.len() - region_addr.raw_value();
            let take = part.min(room);
            let take_usize = usize::try_from(take).map_err(|_| bad())?;
            let slice = region
                .get_slice(region_addr, take_usize)
                .map_err(|_| bad())?;
            if dirty {
                slice.bitmap().mark_dirty(0, take_usize);
            }
            iov.push(slice.ptr_guard_mut().as_ptr(), take_usize);
            addr = addr.unchecked_add(take);
            part -= take;
        }
    }
    if left == 0 {
        Ok(())
    } else {
        Err(RequestError::GuestMemory { addr: 0, len: left })
    }
}
