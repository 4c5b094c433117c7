//! Where the random bytes come from: the kernel's generator through getrandom(2), or a file
//! (a character device such as `/dev/urandom`, a FIFO, or a regular file read once from
//! start to end). Both write straight into guest memory: no intermediate buffer.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use vm_memory::bitmap::BitmapSlice;
use vm_memory::VolatileSlice;

/// The entropy source of a device.
#[derive(Debug)]
pub enum EntropySource {
    /// The kernel's random number generator, through the getrandom(2) system call.
    Os,
    /// A file opened once and read sequentially (`read(2)` at its current offset).
    File {
        /// The open file.
        file: File,
        /// Its path, for messages.
        path: PathBuf,
    },
}

impl EntropySource {
    /// The kernel's generator. Fails when getrandom(2) is not available (ENOSYS), so that a
    /// daemon stops at start rather than at the first request.
    pub fn os() -> io::Result<Self> {
        let mut probe = 0u8;
        // SAFETY: `probe` is a valid, writable one-byte buffer for the whole call.
        unsafe { getrandom_into(&mut probe, 1) }?;
        Ok(EntropySource::Os)
    }

    /// Opens `path` for reading (once; every request reads on from the current offset).
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        Ok(EntropySource::File {
            file,
            path: path.to_path_buf(),
        })
    }

    /// A short description for logs: `getrandom(2)` or the file's path.
    pub fn describe(&self) -> String {
        match self {
            EntropySource::Os => "getrandom(2)".to_owned(),
            EntropySource::File { path, .. } => path.display().to_string(),
        }
    }

    /// Fills `slice` (guest memory) with random bytes. Returns how many bytes were written:
    /// all of them, or fewer when a file source reached its end (or, non-blocking, had
    /// nothing to give).
    pub fn fill<B: BitmapSlice>(&self, slice: &VolatileSlice<'_, B>) -> io::Result<usize> {
        let len = slice.len();
        let guard = slice.ptr_guard_mut();
        let ptr = guard.as_ptr();
        // SAFETY: `ptr` points at `len` bytes of mapped guest memory, writable while `guard` (and
        // the snapshot behind `slice`) lives, which covers the call; concurrent guest access is
        // like any DMA target's, and nothing here reads the bytes back.
        let n = unsafe { self.fill_raw(ptr, len) }?;
        slice.bitmap().mark_dirty(0, n);
        Ok(n)
    }

    /// # Safety
    /// `ptr` must be valid for writes of `len` bytes for the whole call.
    unsafe fn fill_raw(&self, ptr: *mut u8, len: usize) -> io::Result<usize> {
        match self {
            // SAFETY: forwarded from this function's contract.
            EntropySource::Os => unsafe { getrandom_into(ptr, len) },
            // SAFETY: forwarded from this function's contract.
            EntropySource::File { file, .. } => unsafe { read_into(file, ptr, len) },
        }
    }
}

/// getrandom(2) until `len` bytes are written (the kernel may return fewer for large
/// requests or when a signal arrives).
///
/// # Safety
/// `ptr` must be valid for writes of `len` bytes for the whole call.
unsafe fn getrandom_into(ptr: *mut u8, len: usize) -> io::Result<usize> {
    let mut done = 0;
    while done < len {
        // SAFETY: `done < len`, so `ptr + done` and the `len - done` bytes after it lie inside
        // the caller's writable range.
        let r = unsafe { libc::getrandom(ptr.add(done).cast(), len - done, 0) };
        match r {
            n if n > 0 => done += n as usize,
            0 => break,
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(done)
}

/// read(2) from `file` until `len` bytes are written, end of file, or (non-blocking file)
/// no more data for now.
///
/// # Safety
/// `ptr` must be valid for writes of `len` bytes for the whole call.
unsafe fn read_into(file: &File, ptr: *mut u8, len: usize) -> io::Result<usize> {
    let fd = file.as_raw_fd();
    let mut done = 0;
    while done < len {
        // SAFETY: `fd` is open for as long as `file` is borrowed; `ptr + done` and the
        // `len - done` bytes after it lie inside the caller's writable range.
        let r = unsafe { libc::read(fd, ptr.add(done).cast(), len - done) };
        match r {
            n if n > 0 => done += n as usize,
            0 => break,
            _ => {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => {}
                    io::ErrorKind::WouldBlock if done > 0 => break,
                    _ => return Err(e),
                }
            }
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap};

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1_0000)]).unwrap()
    }

    #[test]
    fn os_source_fills_the_whole_slice_with_non_zero_data() {
        let mem = memory();
        let src = EntropySource::os().unwrap();
        let slice = mem.get_slice(GuestAddress(0x100), 4096).unwrap();
        assert_eq!(src.fill(&slice).unwrap(), 4096);
        let mut got = vec![0u8; 4096];
        mem.read_slice(&mut got, GuestAddress(0x100)).unwrap();
        assert!(got.iter().any(|&b| b != 0));
    }

    #[test]
    fn file_source_gives_the_file_bytes_then_stops_at_end_of_file() {
        let path = std::env::temp_dir().join(format!("rng-src-unit-{}", std::process::id()));
        let bytes: Vec<u8> = (0..100u8).collect();
        std::fs::File::create(&path)
            .unwrap()
            .write_all(&bytes)
            .unwrap();
        let src = EntropySource::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let mem = memory();
        let slice = mem.get_slice(GuestAddress(0), 60).unwrap();
        assert_eq!(src.fill(&slice).unwrap(), 60);
        let slice = mem.get_slice(GuestAddress(60), 60).unwrap();
        assert_eq!(src.fill(&slice).unwrap(), 40, "only 40 bytes were left");
        let mut got = vec![0u8; 100];
        mem.read_slice(&mut got, GuestAddress(0)).unwrap();
        assert_eq!(got, bytes);
        assert_eq!(src.fill(&slice).unwrap(), 0, "at end of file");
    }

    #[test]
    fn opening_a_missing_file_fails() {
        assert!(EntropySource::open(Path::new("/nonexistent/rng-source")).is_err());
    }
}
