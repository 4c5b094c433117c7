//! The disk behind the device: an image file or block device, and how each request type
//! acts on it (virtio 1.2, 5.2.6.1–5.2.6.2).

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use vhost_backend::runtime::{FileIo, GuestIoError, IoAlign, RequestOf};

use crate::config::{MAX_DATA_BYTES, MAX_RANGE_SECTORS, MAX_RANGE_SEGMENTS, SECTOR_SIZE};
use crate::direct::{AlignSource, Bounce, DirectAlign};
use crate::file_ops;
use crate::request::{
    check_shape, range_segment, read_header, Header, RequestError, HEADER_SIZE, ID_BYTES,
    SEGMENT_SIZE, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES, WRITE_ZEROES_FLAG_UNMAP,
};

/// An open image.
#[derive(Debug)]
pub struct Disk {
    file: File,
    capacity: u64,
    bytes: u64,
    read_only: bool,
    serial: [u8; ID_BYTES],
    /// Set when the image is open with `O_DIRECT`.
    direct: Option<DirectAlign>,
}

impl Disk {
    /// Opens `path` (read-only or read-write, with `O_DIRECT` when `direct`) and sizes it;
    /// with `O_DIRECT`, learns the host's alignment requirements ([`DirectAlign::probe`]).
    pub fn open(path: &Path, read_only: bool, direct: bool, serial: &str) -> std::io::Result<Disk> {
        let mut opts = File::options();
        opts.read(true).write(!read_only);
        if direct {
            opts.custom_flags(libc::O_DIRECT);
        }
        let mut file = opts.open(path)?;
        // Seeking to the end sizes regular files and block devices alike.
        let bytes = file.seek(SeekFrom::End(0))?;
        let direct = if direct {
            let (align, source) = DirectAlign::probe(&file)?;
            let from = match source {
                AlignSource::Statx => "statx",
                AlignSource::BlockDevice => "the block device's logical block size",
                AlignSource::Blksize => "the file system's block size (assumed)",
            };
            log::info!(
                "O_DIRECT on {}: {}-byte offset and {}-byte memory alignment (from {from})",
                path.display(),
                align.offset,
                align.memory
            );
            Some(align)
        } else {
            None
        };
        let mut id = [0u8; ID_BYTES];
        let src = serial.as_bytes();
        let n = src.len().min(ID_BYTES);
        id[..n].copy_from_slice(&src[..n]);
        Ok(Disk {
            file,
            capacity: bytes / SECTOR_SIZE,
            bytes,
            read_only,
            serial: id,
            direct,
        })
    }

    /// The direct I/O alignment, when the image is open with `O_DIRECT`.
    pub fn direct_align(&self) -> Option<DirectAlign> {
        self.direct
    }

    /// Replaces the probed direct I/O alignment (to act as a stricter host).
    pub(crate) fn set_direct_align(&mut self, align: DirectAlign) {
        self.direct = Some(align);
    }

    /// Size of the image in bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Capacity in 512-byte sectors (a partial last sector is not exposed).
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Whether writes are refused.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The GET_ID answer: the serial, zero padded to 20 bytes.
    pub fn serial(&self) -> &[u8; ID_BYTES] {
        &self.serial
    }

    /// Checks `[sector * 512, + len)` lies inside the disk; returns the byte offset.
    fn range(&self, sector: u64, len: u64) -> Result<u64, RequestError> {
        let out = || RequestError::OutOfRange {
            sector,
            len,
            capacity: self.capacity,
        };
        let offset = sector.checked_mul(SECTOR_SIZE).ok_or_else(out)?;
        let end = offset.checked_add(len).ok_or_else(out)?;
        if end > self.capacity.saturating_mul(SECTOR_SIZE) {
            return Err(out());
        }
        Ok(offset)
    }

    fn writable(&self, request_type: u32) -> Result<(), RequestError> {
        if self.read_only {
            Err(RequestError::ReadOnly { request_type })
        } else {
            Ok(())
        }
    }

    /// Checks a read or write of `len` bytes from `sector`; returns the byte offset.
    fn data_range(&self, sector: u64, len: u64) -> Result<u64, RequestError> {
        if len > MAX_DATA_BYTES {
            return Err(RequestError::DataTooLong { len });
        }
        let offset = self.range(sector, len)?;
        match self.direct {
            Some(align) if len > 0 && !align.range_aligned(offset, len) => {
                Err(RequestError::Misaligned {
                    sector,
                    len,
                    align: align.offset,
                })
            }
            _ => Ok(offset),
        }
    }

    /// What direct I/O asks of guest buffers handed to the kernel as they are: `None`
    /// without `O_DIRECT`.
    pub(crate) fn io_align(&self) -> Option<IoAlign> {
        self.direct.map(|a| IoAlign {
            memory: a.memory,
            length: a.offset.max(a.memory),
        })
    }

    /// Runs `req`. Returns the data bytes written into guest memory (not counting the status
    /// byte). `header`: the request's header when the caller read it already (it is not read
    /// again). `writethrough` makes every write durable before it completes. `io` is the
    /// queue's scratch space; `bounce` its aligned copy buffer, needed only with `O_DIRECT`
    /// for guest buffers the host cannot take as they are.
    pub fn execute(
        &self,
        req: &RequestOf<'_>,
        header: Option<Header>,
        io: &mut FileIo,
        bounce: Option<&mut Bounce>,
        writethrough: bool,
    ) -> Result<u32, RequestError> {
        check_shape(req)?;
        let hdr = match header {
            Some(h) => h,
            None => read_header(req)?,
        };
        self.dispatch(req, hdr, io, bounce, writethrough)
    }

    fn dispatch(
        &self,
        req: &RequestOf<'_>,
        hdr: Header,
        io: &mut FileIo,
        bounce: Option<&mut Bounce>,
        writethrough: bool,
    ) -> Result<u32, RequestError> {
        let ty = hdr.request_type;
        // Bytes after the header that the device reads, and writable bytes before the status.
        let readable_data = req.readable_len() - HEADER_SIZE;
        let writable_data = req.writable_len().saturating_sub(1);
        let expect_no = |which, got| {
            if got == 0 {
                Ok(())
            } else {
                Err(RequestError::WrongDirection {
                    request_type: ty,
                    which,
                    got,
                    expected: 0,
                })
            }
        };
        match ty {
            VIRTIO_BLK_T_IN => {
                let (offset, len) = self.check_transfer(req, hdr, false)?;
                match io.read_to_writable(req, &self.file, offset, len, self.io_align()) {
                    Err(GuestIoError::Unaligned) => {
                        self.bounced(req, offset, len, bounce, false)?
                    }
                    r => r?,
                }
                // `len` is at most MAX_CHAIN_BYTES, far below u32::MAX.
                Ok(len as u32)
            }
            VIRTIO_BLK_T_OUT => {
                let (offset, len) = self.check_transfer(req, hdr, true)?;
                let align = self.io_align();
                match io.write_from_readable(req, &self.file, offset, HEADER_SIZE, len, align) {
                    Err(GuestIoError::Unaligned) => {
                        self.bounced(req, offset, len, bounce, true)?;
                    }
                    r => r?,
                }
                if writethrough {
                    self.file.sync_data()?;
                }
                Ok(0)
            }
            VIRTIO_BLK_T_FLUSH => {
                if !self.read_only {
                    self.file.sync_data()?;
                }
                Ok(0)
            }
            VIRTIO_BLK_T_GET_ID => {
                expect_no("device-readable", readable_data)?;
                let n = writable_data.min(ID_BYTES as u64) as usize;
                req.write_writable(0, &self.serial[..n])?;
                Ok(n as u32)
            }
            VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
                expect_no("device-writable", writable_data)?;
                self.writable(ty)?;
                self.ranges(req, ty, readable_data, writethrough)?;
                Ok(0)
            }
            request_type => Err(RequestError::Unsupported { request_type }),
        }
    }

    /// Checks a read (`VIRTIO_BLK_T_IN`, `write` false) or a write (`VIRTIO_BLK_T_OUT`): data
    /// only in the direction of the transfer (a read has none to read from the driver, a
    /// write none to write back), a whole number of sectors inside the disk (aligned for
    /// direct I/O), and for a write a writable disk. Returns the byte offset and length.
    pub(crate) fn check_transfer(
        &self,
        req: &RequestOf<'_>,
        hdr: Header,
        write: bool,
    ) -> Result<(u64, u64), RequestError> {
        let readable_data = req.readable_len() - HEADER_SIZE;
        let writable_data = req.writable_len().saturating_sub(1);
        let (data, (stray, stray_len)) = if write {
            (readable_data, ("device-writable", writable_data))
        } else {
            (writable_data, ("device-readable", readable_data))
        };
        expect_none(hdr.request_type, stray, stray_len)?;
        if write {
            self.writable(hdr.request_type)?;
        }
        let len = sector_multiple(data)?;
        Ok((self.data_range(hdr.sector, len)?, len))
    }

    /// What an asynchronous engine submits for `req`: a checked read or write, a flush, or
    /// `None` for everything served at once (other types, and requests that fail a check).
    pub(crate) fn plan(&self, req: &RequestOf<'_>, hdr: Header) -> Option<Plan> {
        check_shape(req).ok()?;
        match hdr.request_type {
            VIRTIO_BLK_T_IN => {
                let (offset, len) = self.check_transfer(req, hdr, false).ok()?;
                Some(Plan::Read { offset, len })
            }
            VIRTIO_BLK_T_OUT => {
                let (offset, len) = self.check_transfer(req, hdr, true).ok()?;
                Some(Plan::Write { offset, len })
            }
            VIRTIO_BLK_T_FLUSH if !self.read_only => Some(Plan::Flush),
            _ => None,
        }
    }

    /// A read (`write` false) or a write through the aligned bounce buffer (guest buffers
    /// direct I/O cannot take).
    pub(crate) fn bounced(
        &self,
        req: &RequestOf<'_>,
        offset: u64,
        len: u64,
        bounce: Option<&mut Bounce>,
        write: bool,
    ) -> Result<(), RequestError> {
        let buf = bounce_slice(bounce, len)?;
        if write {
            req.read_readable(HEADER_SIZE, buf)?;
            self.file.write_all_at(buf, offset)?;
        } else {
            self.file.read_exact_at(buf, offset)?;
            req.write_writable(0, buf)?;
        }
        Ok(())
    }

    /// `fdatasync` of the image.
    pub(crate) fn sync_data(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    /// The open image.
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// What an asynchronous engine submits for a DISCARD or WRITE_ZEROES: its checked
    /// segments ([`check_ranges`](Self::check_ranges)). `None` for other requests and for
    /// those that fail a check (served at once, which reports why).
    pub(crate) fn range_plan(&self, req: &RequestOf<'_>, hdr: Header) -> Option<RangeSegments> {
        let ty = hdr.request_type;
        if ty != VIRTIO_BLK_T_DISCARD && ty != VIRTIO_BLK_T_WRITE_ZEROES {
            return None;
        }
        check_shape(req).ok()?;
        if req.writable_len() != 1 {
            return None;
        }
        self.writable(ty).ok()?;
        self.check_ranges(req, ty, req.readable_len() - HEADER_SIZE)
            .ok()
    }

    /// DISCARD and WRITE_ZEROES: `len` bytes of 16-byte segments after the header. Every
    /// segment is checked before any is applied.
    fn ranges(
        &self,
        req: &RequestOf<'_>,
        ty: u32,
        len: u64,
        writethrough: bool,
    ) -> Result<(), RequestError> {
        let segs = self.check_ranges(req, ty, len)?;
        for &(offset, bytes, flags) in segs.segments() {
            if ty == VIRTIO_BLK_T_DISCARD {
                // Discard is a hint: a file system that cannot deallocate still succeeds.
                if let Err(e) = file_ops::punch_hole(&self.file, offset, bytes) {
                    if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
                        return Err(e.into());
                    }
                    log::debug!("discard not supported by the image's file system");
                }
            } else {
                let unmap = flags & WRITE_ZEROES_FLAG_UNMAP != 0;
                file_ops::write_zeroes(&self.file, offset, bytes, unmap)?;
            }
        }
        if writethrough {
            self.file.sync_data()?;
        }
        Ok(())
    }

    /// Checks the `len` bytes of 16-byte segments of a DISCARD or WRITE_ZEROES (type `ty`)
    /// after the header; gives their byte ranges and flags, empty ones left out.
    fn check_ranges(
        &self,
        req: &RequestOf<'_>,
        ty: u32,
        len: u64,
    ) -> Result<RangeSegments, RequestError> {
        let count = len / SEGMENT_SIZE;
        if len == 0 || len % SEGMENT_SIZE != 0 || count > u64::from(MAX_RANGE_SEGMENTS) {
            return Err(RequestError::BadSegments {
                len,
                max: MAX_RANGE_SEGMENTS,
            });
        }
        let mut segs = [(0u64, 0u64, 0u32); MAX_RANGE_SEGMENTS as usize];
        for (i, slot) in segs.iter_mut().take(count as usize).enumerate() {
            let seg = range_segment(req, i as u64)?;
            let (sector, num, flags) = (seg.sector.get(), seg.num_sectors.get(), seg.flags.get());
            let allowed = if ty == VIRTIO_BLK_T_WRITE_ZEROES {
                WRITE_ZEROES_FLAG_UNMAP
            } else {
                0
            };
            if flags & !allowed != 0 {
                return Err(RequestError::UnsupportedFlags {
                    request_type: ty,
                    flags,
                });
            }
            if num > MAX_RANGE_SECTORS {
                return Err(RequestError::SegmentTooLarge {
                    num_sectors: num,
                    max: MAX_RANGE_SECTORS,
                });
            }
            let bytes = u64::from(num) * SECTOR_SIZE;
            let offset = self.range(sector, bytes)?;
            *slot = (offset, bytes, flags);
        }
        let mut out = RangeSegments { segs, count: 0 };
        for i in 0..count as usize {
            if out.segs[i].1 != 0 {
                out.segs[out.count] = out.segs[i];
                out.count += 1;
            }
        }
        Ok(out)
    }
}

/// The checked segments of a DISCARD or WRITE_ZEROES: (byte offset, bytes, flags), none
/// empty.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RangeSegments {
    segs: [(u64, u64, u32); MAX_RANGE_SEGMENTS as usize],
    count: usize,
}

impl RangeSegments {
    /// The segments, in the request's order.
    pub(crate) fn segments(&self) -> &[(u64, u64, u32)] {
        &self.segs[..self.count]
    }
}

/// A checked read or write, or a flush: what an asynchronous engine submits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Read `len` bytes at `offset` into the writable buffers.
    Read {
        /// Byte offset in the image.
        offset: u64,
        /// Bytes.
        len: u64,
    },
    /// Write `len` bytes of the readable buffers after the header at `offset`.
    Write {
        /// Byte offset in the image.
        offset: u64,
        /// Bytes.
        len: u64,
    },
    /// `fdatasync`.
    Flush,
}

/// `Ok` when a request of type `request_type` has no `which` data bytes.
fn expect_none(request_type: u32, which: &'static str, got: u64) -> Result<(), RequestError> {
    if got == 0 {
        Ok(())
    } else {
        Err(RequestError::WrongDirection {
            request_type,
            which,
            got,
            expected: 0,
        })
    }
}

/// The first `len` bytes of the worker's bounce buffer (`len` was checked against
/// [`MAX_DATA_BYTES`]).
fn bounce_slice(bounce: Option<&mut Bounce>, len: u64) -> Result<&mut [u8], RequestError> {
    let len_usize = usize::try_from(len).map_err(|_| RequestError::DataTooLong { len })?;
    match bounce {
        Some(b) => b
            .get_mut(len_usize)
            .ok_or(RequestError::DataTooLong { len }),
        None => Err(RequestError::Io(std::io::Error::other(
            "direct I/O on an unaligned buffer without a bounce buffer",
        ))),
    }
}

/// `len` when it is a whole number of sectors.
fn sector_multiple(len: u64) -> Result<u64, RequestError> {
    if len % SECTOR_SIZE == 0 {
        Ok(len)
    } else {
        Err(RequestError::UnalignedLength { len })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_range_over_the_request_cap_is_refused_before_the_capacity_check() {
        let path = std::env::temp_dir().join(format!("vhost-blk-disk-{}", std::process::id()));
        File::create(&path)
            .and_then(|f| f.set_len(2 * MAX_DATA_BYTES))
            .unwrap();
        let disk = Disk::open(&path, true, false, "s");
        std::fs::remove_file(&path).unwrap();
        let disk = disk.unwrap();
        assert_eq!(disk.data_range(8, MAX_DATA_BYTES).unwrap(), 4096);
        assert!(matches!(
            disk.data_range(0, MAX_DATA_BYTES + 512),
            Err(RequestError::DataTooLong { len }) if len == MAX_DATA_BYTES + 512
        ));
    }
}
