//! Guest I/O between a request's buffers and a file: vectored `preadv`/`pwritev` straight
//! into and out of guest memory, with no copy.
//!
//! This is the one module that hands guest memory to the kernel as raw iovecs. It is sound
//! because every iovec is built from a bounds-checked slice of the memory map the request
//! ([`RequestOf`]) holds or borrows from its worker (so the mapping cannot
//! go away during the call: a new memory table only unmaps the old one when the last
//! reference to it is gone), and because no iovec is read outside the call that built it.
//! Pages written by a read from the file are marked in the dirty log after the data has
//! landed ([`RequestOf::mark_written`](super::RequestOf::mark_written)).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use vm_memory::{GuestAddress, GuestMemory, GuestMemoryMmap, GuestMemoryRegion};

use super::request::RequestOf;

/// Most iovecs one `preadv`/`pwritev` accepts (Linux `UIO_MAXIOV`).
pub const IOV_MAX: usize = 1024;

/// Why a guest I/O helper failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GuestIoError {
    /// Part of the range is outside guest memory.
    #[error("buffer at {addr:#x} len {len} is outside guest memory")]
    OutsideMemory {
        /// Guest address.
        addr: u64,
        /// Length.
        len: u64,
    },
    /// The request's buffers hold fewer bytes than asked for.
    #[error("wanted {wanted} bytes, the buffers hold {got}")]
    Short {
        /// Bytes asked for.
        wanted: u64,
        /// Bytes the buffers hold.
        got: u64,
    },
    /// The buffers do not meet the alignment the caller required (for `O_DIRECT`); nothing
    /// was transferred.
    #[error("guest buffers are not aligned for direct I/O")]
    Unaligned,
    /// The ring the request came from stopped without it (a stop that gave up waiting for
    /// it, or a reset): its buffers are no longer the device's to touch.
    #[error("the request's ring stopped without it; its buffers are not touched")]
    Stale,
    /// The file operation failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Alignment asked of every iovec for `O_DIRECT`: address a multiple of `memory`, length a
/// multiple of `length` (both powers of two).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoAlign {
    /// Alignment of each iovec's address.
    pub memory: u32,
    /// Alignment of each iovec's length.
    pub length: u32,
}

/// Reusable scratch space for file I/O on requests' buffers: one per worker or queue, so a
/// request allocates nothing. It never holds an iovec between calls.
#[derive(Debug, Default)]
pub struct FileIo {
    iov: Vec<libc::iovec>,
}

// SAFETY: the iovec list is only read during a call, after that call cleared it and filled
// it from the request it was given; during a call it is used only by the thread that
// borrowed `self` mutably, while that request (and so its memory) is borrowed too. Between
// calls it is empty (every method clears it before returning) or, after a panic unwound out
// of a call, holds stale entries that nothing reads before the next call clears them: moving
// the list between threads moves no access to guest memory.
unsafe impl Send for FileIo {}
// SAFETY: no method reads the list through a shared reference.
unsafe impl Sync for FileIo {}

/// Where a transfer goes: `len` bytes of the file at `offset`, and of the request's
/// buffers (of the transfer's direction) from `skip` on.
#[derive(Clone, Copy)]
struct Span {
    offset: u64,
    skip: u64,
    len: u64,
    align: Option<IoAlign>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// File → guest (`preadv`).
    Read,
    /// Guest → file (`pwritev`).
    Write,
}

impl FileIo {
    /// Empty scratch space with room for `capacity` iovecs.
    pub fn with_capacity(capacity: usize) -> Self {
        FileIo {
            iov: Vec::with_capacity(capacity),
        }
    }

    /// Reads `len` bytes of `file` at `offset` into the request's writable bytes from their
    /// start, completely. With `align`, fails with [`GuestIoError::Unaligned`] before any I/O
    /// when the buffers (host-adjacent ones merged) do not meet it.
    pub fn read_to_writable(
        &mut self,
        req: &RequestOf<'_>,
        file: &File,
        offset: u64,
        len: u64,
        align: Option<IoAlign>,
    ) -> Result<(), GuestIoError> {
        let span = Span {
            offset,
            skip: 0,
            len,
            align,
        };
        let r = self.transfer(req, file, span, Direction::Read);
        self.iov.clear();
        // Also after a failure: part of the data may have landed.
        if !matches!(r, Err(GuestIoError::Stale | GuestIoError::Unaligned)) {
            req.mark_written(0, len);
        }
        r
    }

    /// Writes `len` readable bytes of the request, from `skip` on, to `file` at `offset`,
    /// completely. `align` as for [`read_to_writable`](Self::read_to_writable).
    pub fn write_from_readable(
        &mut self,
        req: &RequestOf<'_>,
        file: &File,
        offset: u64,
        skip: u64,
        len: u64,
        align: Option<IoAlign>,
    ) -> Result<(), GuestIoError> {
        let span = Span {
            offset,
            skip,
            len,
            align,
        };
        let r = self.transfer(req, file, span, Direction::Write);
        self.iov.clear();
        r
    }

    fn transfer(
        &mut self,
        req: &RequestOf<'_>,
        file: &File,
        span: Span,
        dir: Direction,
    ) -> Result<(), GuestIoError> {
        let Span {
            offset,
            skip,
            len,
            align,
        } = span;
        self.iov.clear();
        req.check_current()?;
        let mem = req.memory();
        let mut total = 0u64;
        let pieces: &mut dyn Iterator<Item = (GuestAddress, u64)> = match dir {
            Direction::Read => &mut req.writable_pieces(skip, len),
            Direction::Write => &mut req.readable_pieces(skip, len),
        };
        for (addr, n) in pieces {
            push_range(mem, &mut self.iov, addr, n)?;
            total += n;
        }
        if total != len {
            return Err(GuestIoError::Short {
                wanted: len,
                got: total,
            });
        }
        if let Some(a) = align {
            merge_contiguous(&mut self.iov);
            if !is_aligned(&self.iov, a) {
                return Err(GuestIoError::Unaligned);
            }
        }
        // SAFETY: every entry is a bounds-checked slice of `mem` (merged only with adjacent
        // ones), which `req` keeps mapped for this whole call; reads only write those slices.
        unsafe { rw_exact(file, &mut self.iov, offset, dir) }?;
        Ok(())
    }
}

/// Appends the host ranges of guest `[addr, addr + len)`, one per memory region crossed.
pub(super) fn push_range(
    mem: &GuestMemoryMmap,
    iov: &mut Vec<libc::iovec>,
    mut addr: GuestAddress,
    mut len: u64,
) -> Result<(), GuestIoError> {
    while len > 0 {
        let bad = || GuestIoError::OutsideMemory { addr: addr.0, len };
        let (region, at) = mem.to_region_addr(addr).ok_or_else(bad)?;
        let room = region.len() - at.0;
        let take = len.min(room);
        let take_usize = usize::try_from(take).map_err(|_| bad())?;
        let slice = region.get_slice(at, take_usize).map_err(|_| bad())?;
        // The guard is dropped at once: for mmap-backed memory (vm-memory without its `xen`
        // feature, which this workspace does not enable) the pointer stays valid for as long
        // as the mapping, which the request holds.
        iov.push(libc::iovec {
            iov_base: slice.ptr_guard_mut().as_ptr().cast(),
            iov_len: take_usize,
        });
        addr = GuestAddress(addr.0 + take);
        len -= take;
    }
    Ok(())
}

/// Joins each entry that starts where the previous one ends in host memory into it.
pub(super) fn merge_contiguous(v: &mut Vec<libc::iovec>) {
    let mut kept = 0usize;
    for i in 0..v.len() {
        let cur = v[i];
        if kept > 0 {
            let prev = &mut v[kept - 1];
            if (prev.iov_base as usize).checked_add(prev.iov_len) == Some(cur.iov_base as usize) {
                prev.iov_len += cur.iov_len;
                continue;
            }
        }
        v[kept] = cur;
        kept += 1;
    }
    v.truncate(kept);
}

pub(super) fn is_aligned(v: &[libc::iovec], a: IoAlign) -> bool {
    let mem_mask = a.memory as usize - 1;
    let len_mask = a.length as usize - 1;
    v.iter()
        .all(|e| e.iov_base as usize & mem_mask == 0 && e.iov_len & len_mask == 0)
}

/// The `preadv`/`pwritev` loop (`pread`/`pwrite` while one buffer is left): short transfers
/// continue, `EINTR` is retried, a transfer that makes no progress (end of file) is an
/// error. Consumes (rewrites) the iovecs.
///
/// # Safety
/// Every entry of `iov` must be valid for the access `dir` implies, for its whole length,
/// for the whole call.
unsafe fn rw_exact(
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
        // One buffer (a 4 KiB read into one page, the common case) goes through `pread` /
        // `pwrite`: the same transfer without the kernel copying and checking an iovec
        // array first.
        let done = match (dir, &iov[..count]) {
            // SAFETY: `one` is an entry of `iov`: writable memory of `iov_len` bytes (this
            // function's contract); the kernel writes nothing else.
            (Direction::Read, [one]) => unsafe { sys::pread(fd, one.iov_base, one.iov_len, off) },
            // SAFETY: as above, `one` is readable memory of `iov_len` bytes.
            (Direction::Write, [one]) => unsafe {
                sys::pwrite(fd, one.iov_base.cast_const(), one.iov_len, off)
            },
            // SAFETY: `iov[..count]` is a valid iovec array; each entry is writable memory of
            // its length (this function's contract); the kernel writes nothing else.
            (Direction::Read, _) => unsafe { sys::preadv(fd, iov.as_ptr(), cnt, off) },
            // SAFETY: as above, each entry is readable memory of its length.
            (Direction::Write, _) => unsafe { sys::pwritev(fd, iov.as_ptr(), cnt, off) },
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

/// The request path's file system calls, made straight through `syscall(2)` on 64-bit Linux.
///
/// glibc's `pread`/`pwrite`/`preadv`/`pwritev` are POSIX cancellation points: each call
/// switches asynchronous cancellation on and off around the system call (two atomic
/// read-modify-writes of the thread's cancellation state), which shows in the profile of a
/// 4 KiB read served from the page cache. The runtime never cancels threads, so the raw
/// system call does the same transfer for less. glibc's `syscall()` has no cancellation
/// handling, returns -1 with `errno` set on failure, like the wrappers, so the caller's
/// `EINTR`/short-transfer handling is unchanged. Elsewhere (other C libraries, 32-bit
/// targets, whose offset arguments are split differently) the C library's functions.
///
/// Every function has the contract of the C function of its name: `buf`/`iov` must be valid
/// for the access (writes for the reads, reads for the writes) over their whole length for
/// the whole call.
mod sys {
    #[cfg(all(target_os = "linux", target_env = "gnu", target_pointer_width = "64"))]
    mod imp {
        use libc::{c_int, c_long, c_void, iovec, off_t, size_t, ssize_t};

        /// `pread64(fd, buf, count, offset)`.
        ///
        /// # Safety
        /// `buf` is writable memory of `count` bytes for the whole call.
        #[inline]
        pub(in super::super) unsafe fn pread(
            fd: c_int,
            buf: *mut c_void,
            count: size_t,
            off: off_t,
        ) -> ssize_t {
            // SAFETY: the arguments are those of `pread64` on a 64-bit kernel (the offset in
            // one register); the caller guarantees `buf` (this function's contract).
            unsafe {
                libc::syscall(libc::SYS_pread64, c_long::from(fd), buf, count, off) as ssize_t
            }
        }

        /// `pwrite64(fd, buf, count, offset)`.
        ///
        /// # Safety
        /// `buf` is readable memory of `count` bytes for the whole call.
        #[inline]
        pub(in super::super) unsafe fn pwrite(
            fd: c_int,
            buf: *const c_void,
            count: size_t,
            off: off_t,
        ) -> ssize_t {
            // SAFETY: as for `pread`; the kernel only reads `buf`.
            unsafe {
                libc::syscall(libc::SYS_pwrite64, c_long::from(fd), buf, count, off) as ssize_t
            }
        }

        /// The offset as the kernel's `preadv`/`pwritev` take it: low and high halves of an
        /// unsigned long each (the high half is 0 on 64-bit kernels, which ignore it).
        ///
        /// Every argument passed to `syscall` is register-wide (`c_long`, a pointer, `size_t`,
        /// `off_t`): an `int` passed through the variadic call would leave the register's
        /// upper half unspecified, and the kernel reads whole registers.
        fn lo_hi(off: off_t) -> (c_long, c_long) {
            (off as c_long, ((off as u64) >> 32) as c_long)
        }

        /// System call `nr`, `preadv` or `pwritev`, with the kernel's arguments.
        ///
        /// # Safety
        /// `nr` is `SYS_preadv`, with every iovec writable memory of its length, or
        /// `SYS_pwritev`, with every iovec readable memory of its length; `iov` points to
        /// `count` iovecs for the whole call.
        #[inline]
        unsafe fn vectored(
            nr: c_long,
            fd: c_int,
            iov: *const iovec,
            count: c_int,
            off: off_t,
        ) -> ssize_t {
            let (lo, hi) = lo_hi(off);
            let (fd, count) = (c_long::from(fd), c_long::from(count));
            // SAFETY: the arguments of the kernel's `preadv`/`pwritev` (offset as low and
            // high halves); the caller guarantees the iovecs (this function's contract).
            unsafe { libc::syscall(nr, fd, iov, count, lo, hi) as ssize_t }
        }

        /// `preadv(fd, iov, count, offset)`.
        ///
        /// # Safety
        /// `iov` points to `count` iovecs, each writable memory of its length, for the whole
        /// call.
        #[inline]
        pub(in super::super) unsafe fn preadv(
            fd: c_int,
            iov: *const iovec,
            count: c_int,
            off: off_t,
        ) -> ssize_t {
            // SAFETY: this function's contract is `vectored`'s for a read.
            unsafe { vectored(libc::SYS_preadv, fd, iov, count, off) }
        }

        /// `pwritev(fd, iov, count, offset)`.
        ///
        /// # Safety
        /// `iov` points to `count` iovecs, each readable memory of its length, for the whole
        /// call.
        #[inline]
        pub(in super::super) unsafe fn pwritev(
            fd: c_int,
            iov: *const iovec,
            count: c_int,
            off: off_t,
        ) -> ssize_t {
            // SAFETY: this function's contract is `vectored`'s for a write; the kernel only
            // reads the iovecs' memory.
            unsafe { vectored(libc::SYS_pwritev, fd, iov, count, off) }
        }
    }

    #[cfg(not(all(target_os = "linux", target_env = "gnu", target_pointer_width = "64")))]
    mod imp {
        pub(in super::super) use libc::{pread, preadv, pwrite, pwritev};
    }

    pub(super) use imp::{pread, preadv, pwrite, pwritev};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_contiguous_joins_adjacent_entries_only() {
        let base = 0x10_0000usize;
        let e = |off: usize, len: usize| libc::iovec {
            iov_base: (base + off) as *mut libc::c_void,
            iov_len: len,
        };
        let mut v = vec![
            e(0, 256),
            e(256, 256),
            e(1024, 512),
            e(1536, 512),
            e(512, 512),
        ];
        merge_contiguous(&mut v);
        let got: Vec<(usize, usize)> = v
            .iter()
            .map(|x| (x.iov_base as usize - base, x.iov_len))
            .collect();
        assert_eq!(got, vec![(0, 512), (1024, 1024), (512, 512)]);
    }

    /// `rw_exact` over local buffers: one iovec (`pread`/`pwrite`) and several
    /// (`preadv`/`pwritev`) move the same bytes, and a read past the end of the file fails.
    #[test]
    fn rw_exact_moves_the_same_bytes_with_one_buffer_or_several() {
        use std::io::{Seek, Write};
        let mut file = tempfile_in_target();
        let content: Vec<u8> = (0..8192u32).map(|i| (i * 7 + 3) as u8).collect();
        file.write_all(&content).unwrap();
        file.rewind().unwrap();
        let iov = |b: &mut [u8]| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        };
        let mut one = vec![0u8; 4096];
        let mut list = [iov(&mut one)];
        // SAFETY: the iovec covers `one`, alive and not otherwise touched during the call.
        unsafe { rw_exact(&file, &mut list, 1000, Direction::Read) }.unwrap();
        assert_eq!(one, content[1000..5096]);
        let (mut a, mut b) = (vec![0u8; 100], vec![0u8; 3996]);
        let mut list = [iov(&mut a), iov(&mut b)];
        // SAFETY: the iovecs cover `a` and `b`, alive and not otherwise touched.
        unsafe { rw_exact(&file, &mut list, 1000, Direction::Read) }.unwrap();
        assert_eq!([a, b].concat(), content[1000..5096]);
        // Past the end of the file: 4096 bytes asked at 6000, 2192 there.
        let mut list = [iov(&mut one)];
        // SAFETY: as above.
        let e = unsafe { rw_exact(&file, &mut list, 6000, Direction::Read) }.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        // A write of one buffer lands where it was asked to.
        let mut data = vec![0xabu8; 4096];
        let mut list = [iov(&mut data)];
        // SAFETY: the iovec covers `data`, only read by the call.
        unsafe { rw_exact(&file, &mut list, 512, Direction::Write) }.unwrap();
        let mut back = vec![0u8; 4096 + 1024];
        let mut list = [iov(&mut back)];
        // SAFETY: the iovec covers `back`.
        unsafe { rw_exact(&file, &mut list, 0, Direction::Read) }.unwrap();
        assert_eq!(back[..512], content[..512]);
        assert!(back[512..4608].iter().all(|&x| x == 0xab));
        assert_eq!(back[4608..], content[4608..5120]);
        // Several buffers (`pwritev`/`preadv`) past 4 GiB in a sparse file: the whole 64-bit
        // offset reaches the kernel (the raw calls pass it as low and high halves).
        let far = (5u64 << 30) + 512;
        let (mut x, mut y) = (vec![0x11u8; 1000], vec![0x22u8; 3096]);
        let mut list = [iov(&mut x), iov(&mut y)];
        // SAFETY: the iovecs cover `x` and `y`, only read by the call.
        unsafe { rw_exact(&file, &mut list, far, Direction::Write) }.unwrap();
        assert_eq!(file.metadata().unwrap().len(), far + 4096);
        let (mut p, mut q) = (vec![0u8; 2048], vec![0u8; 2048]);
        let mut list = [iov(&mut p), iov(&mut q)];
        // SAFETY: the iovecs cover `p` and `q`.
        unsafe { rw_exact(&file, &mut list, far, Direction::Read) }.unwrap();
        let got = [p, q].concat();
        assert!(got[..1000].iter().all(|&b| b == 0x11));
        assert!(got[1000..].iter().all(|&b| b == 0x22));
        // Nothing landed at the offset's low 32 bits.
        let mut low = vec![0u8; 4096];
        let mut list = [iov(&mut low)];
        // SAFETY: the iovec covers `low`.
        unsafe { rw_exact(&file, &mut list, far & 0xffff_ffff, Direction::Read) }.unwrap();
        assert!(low.iter().all(|&b| b == 0));
    }

    /// An unlinked scratch file.
    fn tempfile_in_target() -> File {
        let path = std::env::temp_dir().join(format!(
            "guest-io-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        f
    }

    #[test]
    fn is_aligned_checks_every_address_and_length() {
        let e = |addr: usize, len: usize| libc::iovec {
            iov_base: addr as *mut libc::c_void,
            iov_len: len,
        };
        let a = |memory, length| IoAlign { memory, length };
        let v = [e(0x1000, 512), e(0x2000, 1024)];
        assert!(is_aligned(&v, a(4096, 512)));
        assert!(!is_aligned(&v, a(4096, 1024)));
        let v = [e(0x1000, 512), e(0x2200, 512)];
        assert!(is_aligned(&v, a(512, 512)));
        assert!(!is_aligned(&v, a(4096, 512)));
        assert!(is_aligned(&[], a(4096, 4096)));
    }
}
