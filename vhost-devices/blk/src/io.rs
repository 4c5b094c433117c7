//! File I/O for the disk: vectored reads and writes straight between the image and guest
//! memory, flush, and range deallocation/zeroing.
//!
//! Every call completes short transfers in a loop and retries `EINTR`; a transfer that makes
//! no progress (end of file) is an error rather than a spin.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Most iovecs one `preadv`/`pwritev` accepts (Linux `UIO_MAXIOV`).
pub const IOV_MAX: usize = 1024;

/// A reusable list of iovecs pointing into guest memory.
///
/// Entries are valid only while the guest memory they were built from is held (one
/// request); [`IoVecs::clear`] runs before the next request and the list never outlives the
/// worker that owns it.
#[derive(Debug, Default)]
pub struct IoVecs {
    v: Vec<libc::iovec>,
}

// SAFETY: an `IoVecs` only stores raw addresses; it never dereferences them itself. The
// addresses are used by the thread that currently owns the list, inside one request, while
// that thread holds the guest memory they point into; moving the list between threads moves no
// access to that memory.
unsafe impl Send for IoVecs {}

impl IoVecs {
    /// An empty list with room for `capacity` entries.
    pub fn with_capacity(capacity: usize) -> Self {
        IoVecs {
            v: Vec::with_capacity(capacity),
        }
    }

    /// Forgets every entry; keeps the allocation.
    pub fn clear(&mut self) {
        self.v.clear();
    }

    /// Appends `len` bytes at host address `base`.
    pub fn push(&mut self, base: *mut u8, len: usize) {
        self.v.push(libc::iovec {
            iov_base: base.cast(),
            iov_len: len,
        });
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.v.len()
    }

    /// Whether there is no entry.
    pub fn is_empty(&self) -> bool {
        self.v.is_empty()
    }

    /// Joins each entry that starts where the previous one ends in host memory into it, so a
    /// block cut over several descriptors of contiguous memory is one iovec again.
    pub fn merge_contiguous(&mut self) {
        let mut kept = 0usize;
        for i in 0..self.v.len() {
            let cur = self.v[i];
            if kept > 0 {
                let prev = &mut self.v[kept - 1];
                if (prev.iov_base as usize).checked_add(prev.iov_len) == Some(cur.iov_base as usize)
                {
                    prev.iov_len += cur.iov_len;
                    continue;
                }
            }
            self.v[kept] = cur;
            kept += 1;
        }
        self.v.truncate(kept);
    }

    /// Whether every entry's address is a multiple of `mem_align` and its length a multiple
    /// of `len_align` (both powers of two): what `O_DIRECT` asks of each buffer.
    pub fn is_aligned(&self, mem_align: u32, len_align: u32) -> bool {
        let mem_mask = mem_align as usize - 1;
        let len_mask = len_align as usize - 1;
        self.v
            .iter()
            .all(|e| e.iov_base as usize & mem_mask == 0 && e.iov_len & len_mask == 0)
    }

    /// Reads the file at `offset` into every buffer of the list, in order, completely.
    ///
    /// # Safety
    /// Every entry must describe memory that is valid for writes of its length for the whole
    /// call (mapped guest memory held by the caller).
    pub unsafe fn read_exact_at(&mut self, file: &File, offset: u64) -> io::Result<()> {
        // SAFETY: forwarded from this function's contract.
        unsafe { transfer(file, &mut self.v, offset, Direction::Read) }
    }

    /// Writes every buffer of the list, in order, to the file at `offset`, completely.
    ///
    /// # Safety
    /// Every entry must describe memory that is valid for reads of its length for the whole
    /// call (mapped guest memory held by the caller).
    pub unsafe fn write_all_at(&mut self, file: &File, offset: u64) -> io::Result<()> {
        // SAFETY: forwarded from this function's contract.
        unsafe { transfer(file, &mut self.v, offset, Direction::Write) }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Read,
    Write,
}

/// The `preadv`/`pwritev` loop. Consumes (rewrites) the iovecs as data moves.
///
/// # Safety
/// Every entry of `iov` must be valid for the access `dir` implies, for its whole length.
unsafe fn transfer(
    file: &File,
    iov: &mut [libc::iovec],
    mut offset: u64,
    dir: Direction,
) -> io::Result<()> {
    let fd = file.as_raw_fd();
    let mut iov = iov;
    loop {
        while iov.first().is_some_and(|v| v.iov_len == 0) {
            iov = &mut std::mem::take(&mut iov)[1..];
        }
        if iov.is_empty() {
            return Ok(());
        }
        let count = iov.len().min(IOV_MAX);
        let off = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
        // `count` is at most IOV_MAX, so it fits a c_int.
        let cnt = count as libc::c_int;
        let done = match dir {
            // SAFETY: `iov[..count]` is a valid iovec array; each entry is writable memory of
            // its length (this function's contract); the kernel writes nothing else.
            Direction::Read => unsafe { libc::preadv(fd, iov.as_ptr(), cnt, off) },
            // SAFETY: as above, each entry is readable memory of its length.
            Direction::Write => unsafe { libc::pwritev(fd, iov.as_ptr(), cnt, off) },
        };
        if done < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        let mut done = done as usize;
        if done == 0 {
            return Err(match dir {
                Direction::Read => io::ErrorKind::UnexpectedEof.into(),
                Direction::Write => io::ErrorKind::WriteZero.into(),
            });
        }
        offset += done as u64;
        while done > 0 {
            let Some(first) = iov.first_mut() else {
                return Ok(());
            };
            if done >= first.iov_len {
                done -= first.iov_len;
                iov = &mut std::mem::take(&mut iov)[1..];
            } else {
                first.iov_base = first.iov_base.cast::<u8>().wrapping_add(done).cast();
                first.iov_len -= done;
                done = 0;
            }
        }
    }
}

/// `fallocate(mode, offset, len)` with `EINTR` retried.
fn fallocate(file: &File, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
    let overflow = || io::Error::from_raw_os_error(libc::EOVERFLOW);
    let off = libc::off_t::try_from(offset).map_err(|_| overflow())?;
    let len = libc::off_t::try_from(len).map_err(|_| overflow())?;
    loop {
        // SAFETY: fallocate only takes integers; `file` owns a valid descriptor.
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), mode, off, len) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Deallocates `[offset, offset + len)`, keeping the file size; the range then reads zeros.
pub fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    fallocate(
        file,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        offset,
        len,
    )
}

/// Zeroes `[offset, offset + len)`: `FALLOC_FL_ZERO_RANGE`; where the file system lacks it,
/// a punched hole when `may_unmap`, else (or when that fails too) written zeros.
pub fn write_zeroes(file: &File, offset: u64, len: u64, may_unmap: bool) -> io::Result<()> {
    let unsupported = |e: &io::Error| {
        matches!(
            e.raw_os_error(),
            Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::EINVAL) | Some(libc::ENODEV)
        )
    };
    match fallocate(
        file,
        libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
        offset,
        len,
    ) {
        Ok(()) => return Ok(()),
        Err(e) if !unsupported(&e) => return Err(e),
        Err(_) => {}
    }
    if may_unmap {
        match punch_hole(file, offset, len) {
            Ok(()) => return Ok(()),
            Err(e) if !unsupported(&e) => return Err(e),
            Err(_) => {}
        }
    }
    write_zero_bytes(file, offset, len)
}

/// Zero bytes to write from: page aligned, so O_DIRECT files accept it.
#[repr(C, align(4096))]
struct ZeroPage([u8; ZERO_CHUNK]);
const ZERO_CHUNK: usize = 64 * 1024;
static ZEROS: ZeroPage = ZeroPage([0; ZERO_CHUNK]);

/// Writes `len` zero bytes at `offset`.
fn write_zero_bytes(file: &File, mut offset: u64, len: u64) -> io::Result<()> {
    let mut left = len;
    while left > 0 {
        let n = left.min(ZERO_CHUNK as u64) as usize;
        let mut one = [libc::iovec {
            iov_base: ZEROS.0.as_ptr().cast_mut().cast(),
            iov_len: n,
        }];
        // SAFETY: the entry points at `n <= ZERO_CHUNK` bytes of a static, which stays valid;
        // a write only reads from it.
        unsafe { transfer(file, &mut one, offset, Direction::Write)? };
        offset += n as u64;
        left -= n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom, Write};

    fn temp_file(bytes: &[u8]) -> File {
        let path = std::env::temp_dir().join(format!(
            "vhost-blk-io-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let mut f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    #[test]
    fn read_exact_at_fills_several_buffers_in_order() {
        let data: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
        let f = temp_file(&data);
        let mut a = [0u8; 100];
        let mut b = [0u8; 0];
        let mut c = [0u8; 412];
        let mut iov = IoVecs::with_capacity(3);
        iov.push(a.as_mut_ptr(), a.len());
        iov.push(b.as_mut_ptr(), b.len());
        iov.push(c.as_mut_ptr(), c.len());
        // SAFETY: the buffers are live locals for the whole call.
        unsafe { iov.read_exact_at(&f, 512).unwrap() };
        assert_eq!(&a[..], &data[512..612]);
        assert_eq!(&c[..], &data[612..1024]);
    }

    #[test]
    fn merge_contiguous_joins_adjacent_entries_only() {
        let mut buf = [0u8; 4096];
        let p = buf.as_mut_ptr();
        let mut iov = IoVecs::with_capacity(5);
        iov.push(p, 256);
        iov.push(p.wrapping_add(256), 256);
        iov.push(p.wrapping_add(1024), 512);
        iov.push(p.wrapping_add(1536), 512);
        iov.push(p.wrapping_add(512), 512);
        iov.merge_contiguous();
        let got: Vec<(usize, usize)> = iov
            .v
            .iter()
            .map(|e| (e.iov_base as usize - p as usize, e.iov_len))
            .collect();
        assert_eq!(got, vec![(0, 512), (1024, 1024), (512, 512)]);
    }

    #[test]
    fn is_aligned_checks_every_address_and_length() {
        #[repr(C, align(4096))]
        struct Page([u8; 8192]);
        let mut page = Page([0; 8192]);
        let p = page.0.as_mut_ptr();
        let mut iov = IoVecs::with_capacity(2);
        iov.push(p, 512);
        iov.push(p.wrapping_add(4096), 1024);
        assert!(iov.is_aligned(4096, 512));
        assert!(!iov.is_aligned(4096, 1024));
        iov.push(p.wrapping_add(512), 512);
        assert!(iov.is_aligned(512, 512));
        assert!(!iov.is_aligned(4096, 512));
        iov.clear();
        assert!(iov.is_aligned(4096, 4096));
    }

    #[test]
    fn read_past_end_of_file_is_unexpected_eof() {
        let f = temp_file(&[1u8; 1024]);
        let mut a = [0u8; 1024];
        let mut iov = IoVecs::with_capacity(1);
        iov.push(a.as_mut_ptr(), a.len());
        // SAFETY: the buffer is a live local for the whole call.
        let err = unsafe { iov.read_exact_at(&f, 512).unwrap_err() };
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn write_all_at_more_than_iov_max_buffers_lands_completely() {
        let mut f = temp_file(&[0u8; 8192]);
        let src: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        let mut iov = IoVecs::with_capacity(3000);
        for b in &src {
            iov.push((b as *const u8).cast_mut(), 1);
        }
        // SAFETY: every entry points at one byte of `src`, alive for the call; only read.
        unsafe { iov.write_all_at(&f, 100).unwrap() };
        let mut back = vec![0u8; 8192];
        f.seek(SeekFrom::Start(0)).unwrap();
        f.read_exact(&mut back).unwrap();
        assert_eq!(&back[100..3100], &src[..]);
        assert!(back[..100].iter().all(|&b| b == 0));
    }

    #[test]
    fn write_zeroes_and_punch_hole_zero_the_range_only() {
        let mut f = temp_file(&[0xffu8; 3 * 4096]);
        write_zeroes(&f, 4096, 4096, false).unwrap();
        punch_hole(&f, 8192, 512).unwrap();
        write_zero_bytes(&f, 0, 100).unwrap();
        let mut back = vec![0u8; 3 * 4096];
        f.seek(SeekFrom::Start(0)).unwrap();
        f.read_exact(&mut back).unwrap();
        assert!(back[..100].iter().all(|&b| b == 0));
        assert!(back[100..4096].iter().all(|&b| b == 0xff));
        assert!(back[4096..8704].iter().all(|&b| b == 0));
        assert!(back[8704..].iter().all(|&b| b == 0xff));
    }
}
