//! `O_DIRECT` support: what the host requires of direct I/O on the image, and the aligned
//! bounce buffer a worker copies through when a guest buffer does not meet it.
//!
//! Direct I/O wants the file offset and length of a transfer, and the length of every
//! iovec, to be multiples of the *offset alignment*, and every iovec's address to be a
//! multiple of the *memory alignment*. [`DirectAlign::probe`] learns both when the image is
//! opened: from `statx(STATX_DIOALIGN)` where the kernel reports it (Linux 6.1 and later);
//! otherwise from the logical block size of a block device (`BLKSSZGET`) or the
//! file system's preferred I/O size (`st_blksize`, kept between 512 and 4096) for a file,
//! with a 4096-byte memory alignment.
//!
//! The device advertises a `blk_size` of at least the offset alignment, so the driver's
//! requests start and end on aligned sectors. Guest buffers are another matter: a driver may
//! cut a block over several descriptors or place it anywhere in its memory. Requests whose
//! (merged) buffers are aligned go straight between the file and guest memory; the others go
//! through a [`Bounce`] buffer of [`MAX_DATA_BYTES`].

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use rustix::fs::{AtFlags, StatxFlags};

use crate::config::MAX_DATA_BYTES;

/// Memory alignment assumed when the kernel does not report one.
pub const FALLBACK_MEMORY_ALIGN: u32 = 4096;
/// Largest alignment accepted from the kernel or a heuristic (the largest block size).
const MAX_ALIGN: u32 = 65536;

/// Alignment direct I/O on one image requires. Both values are powers of two.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirectAlign {
    /// Alignment of every iovec's address.
    pub memory: u32,
    /// Alignment of the file offset and length, and of every iovec's length.
    pub offset: u32,
}

/// Where a [`DirectAlign`] came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlignSource {
    /// `statx(STATX_DIOALIGN)`.
    Statx,
    /// `BLKSSZGET` on a block device.
    BlockDevice,
    /// The file system's `st_blksize`.
    Blksize,
}

impl DirectAlign {
    /// Learns the direct I/O alignment of `file` (opened with `O_DIRECT`).
    pub fn probe(file: &File) -> io::Result<(DirectAlign, AlignSource)> {
        if let Some(align) = statx_dio_align(file) {
            return Ok((align, AlignSource::Statx));
        }
        let meta = file.metadata()?;
        if meta.file_type().is_block_device() {
            let size = rustix::fs::ioctl_blksszget(file)?;
            let offset = valid_align(size).unwrap_or(4096);
            let align = DirectAlign {
                memory: FALLBACK_MEMORY_ALIGN,
                offset,
            };
            return Ok((align, AlignSource::BlockDevice));
        }
        let blksize = u32::try_from(meta.blksize()).unwrap_or(4096);
        let offset = valid_align(blksize).map_or(4096, |b| b.min(4096));
        let align = DirectAlign {
            memory: FALLBACK_MEMORY_ALIGN,
            offset,
        };
        Ok((align, AlignSource::Blksize))
    }

    /// Whether a transfer of `len` bytes at file offset `offset` is aligned.
    pub fn range_aligned(&self, offset: u64, len: u64) -> bool {
        let mask = u64::from(self.offset) - 1;
        (offset | len) & mask == 0
    }
}

/// `align` when it is a power of two between 512 and [`MAX_ALIGN`]; 512 for smaller powers.
fn valid_align(align: u32) -> Option<u32> {
    (align.is_power_of_two() && align <= MAX_ALIGN).then_some(align.max(512))
}

/// `statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN)`; `None` when the kernel or file system does
/// not report direct I/O alignment.
fn statx_dio_align(file: &File) -> Option<DirectAlign> {
    let stx = rustix::fs::statx(file, c"", AtFlags::EMPTY_PATH, StatxFlags::DIOALIGN).ok()?;
    if !StatxFlags::from_bits_retain(stx.stx_mask).contains(StatxFlags::DIOALIGN) {
        return None;
    }
    // Zero means the file system does not support direct I/O on this file (or did not say).
    let memory = valid_align_any(stx.stx_dio_mem_align)?;
    let offset = valid_align(stx.stx_dio_offset_align)?;
    Some(DirectAlign { memory, offset })
}

/// A memory alignment: any power of two up to [`MAX_ALIGN`] (some file systems accept byte
/// or word alignment).
fn valid_align_any(align: u32) -> Option<u32> {
    (align.is_power_of_two() && align <= MAX_ALIGN).then_some(align)
}

/// A worker's aligned copy buffer of [`MAX_DATA_BYTES`] for direct I/O on guest buffers that
/// are not aligned.
///
/// Allocated once with the worker, zero-filled by the allocator: a buffer this large comes
/// straight from `mmap`, so it is address space until a request touches it, and at most
/// [`MAX_DATA_BYTES`] (32 MiB) resident per worker after the largest unaligned request.
pub struct Bounce {
    buf: Box<[u8]>,
    start: usize,
}

impl std::fmt::Debug for Bounce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bounce")
            .field("len", &(self.buf.len() - self.start))
            .finish()
    }
}

impl Bounce {
    /// A buffer of [`MAX_DATA_BYTES`] whose start is a multiple of `align` (a power of two).
    pub fn new(align: u32) -> Bounce {
        let align = align as usize;
        let buf = vec![0u8; MAX_DATA_BYTES as usize + align].into_boxed_slice();
        let misalign = buf.as_ptr() as usize & (align - 1);
        let start = if misalign == 0 { 0 } else { align - misalign };
        Bounce { buf, start }
    }

    /// The first `len` bytes; `None` when `len` exceeds [`MAX_DATA_BYTES`].
    pub fn get_mut(&mut self, len: usize) -> Option<&mut [u8]> {
        let end = self.start.checked_add(len)?;
        if len as u64 > MAX_DATA_BYTES {
            return None;
        }
        self.buf.get_mut(self.start..end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounce_start_is_aligned_and_holds_max_data_bytes() {
        for align in [1u32, 512, 4096, 65536] {
            let mut b = Bounce::new(align);
            let s = b.get_mut(MAX_DATA_BYTES as usize).unwrap();
            assert_eq!(s.as_ptr() as usize % align as usize, 0, "align {align}");
            assert_eq!(s.len() as u64, MAX_DATA_BYTES);
            assert!(b.get_mut(MAX_DATA_BYTES as usize + 1).is_none());
        }
    }

    #[test]
    fn probe_of_a_regular_file_gives_power_of_two_alignments() {
        let path = std::env::temp_dir().join(format!("vhost-blk-dio-{}", std::process::id()));
        std::fs::write(&path, [0u8; 4096]).unwrap();
        let file = File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let (align, _) = DirectAlign::probe(&file).unwrap();
        assert!(align.memory.is_power_of_two() && align.memory <= MAX_ALIGN);
        assert!(align.offset.is_power_of_two() && (512..=MAX_ALIGN).contains(&align.offset));
    }

    #[test]
    fn range_aligned_checks_offset_and_length() {
        let a = DirectAlign {
            memory: 512,
            offset: 4096,
        };
        assert!(a.range_aligned(8192, 4096));
        assert!(a.range_aligned(0, 0));
        assert!(!a.range_aligned(512, 4096));
        assert!(!a.range_aligned(4096, 512));
    }
}
