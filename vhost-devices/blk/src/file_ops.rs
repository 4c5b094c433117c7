//! Range deallocation and zeroing on the image: `fallocate(2)` where the file system
//! supports it, written zeros where it does not.
//!
//! Every call retries `EINTR`.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use rustix::fs::FallocateFlags;
use rustix::io::Errno;

/// `fallocate(mode, offset, len)` with `EINTR` retried. An offset or length beyond `i64::MAX`
/// is `EOVERFLOW`.
fn fallocate(file: &File, mode: FallocateFlags, offset: u64, len: u64) -> io::Result<()> {
    if i64::try_from(offset).is_err() || i64::try_from(len).is_err() {
        return Err(Errno::OVERFLOW.into());
    }
    loop {
        match rustix::fs::fallocate(file, mode, offset, len) {
            Ok(()) => return Ok(()),
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Whether `e` says the file system (or file) does not support the `fallocate` mode asked.
fn unsupported(e: &io::Error) -> bool {
    [Errno::OPNOTSUPP, Errno::NOSYS, Errno::INVAL, Errno::NODEV]
        .iter()
        .any(|errno| e.raw_os_error() == Some(errno.raw_os_error()))
}

/// Deallocates `[offset, offset + len)`, keeping the file size; the range then reads zeros.
pub fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    fallocate(
        file,
        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
        offset,
        len,
    )
}

/// Zeroes `[offset, offset + len)`: `FALLOC_FL_ZERO_RANGE`; where the file system lacks it,
/// a punched hole when `may_unmap`, else (or when that fails too) written zeros.
pub fn write_zeroes(file: &File, offset: u64, len: u64, may_unmap: bool) -> io::Result<()> {
    match fallocate(
        file,
        FallocateFlags::ZERO_RANGE | FallocateFlags::KEEP_SIZE,
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

/// Size of the zero buffer [`write_zero_bytes`] writes from.
const ZERO_CHUNK: usize = 64 * 1024;

/// Zero bytes to write from: page aligned, so `O_DIRECT` files accept it.
#[repr(C, align(4096))]
struct ZeroPage([u8; ZERO_CHUNK]);

static ZEROS: ZeroPage = ZeroPage([0; ZERO_CHUNK]);

/// Writes `len` zero bytes at `offset`, at most [`ZERO_CHUNK`] bytes a call.
fn write_zero_bytes(file: &File, mut offset: u64, len: u64) -> io::Result<()> {
    let mut left = len;
    while left > 0 {
        let n = left.min(ZERO_CHUNK as u64) as usize;
        file.write_all_at(&ZEROS.0[..n], offset)?;
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
        let mut f = vmm_sys_util::tempfile::TempFile::new().unwrap().into_file();
        f.write_all(bytes).unwrap();
        f
    }

    #[test]
    fn zero_buffer_is_page_aligned() {
        assert_eq!(ZEROS.0.as_ptr() as usize % 4096, 0);
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

    #[test]
    fn write_zero_bytes_spans_several_chunks() {
        let len = 2 * ZERO_CHUNK + 300;
        let mut f = temp_file(&vec![0xaau8; len + 200]);
        write_zero_bytes(&f, 100, len as u64).unwrap();
        let mut back = vec![0u8; len + 200];
        f.seek(SeekFrom::Start(0)).unwrap();
        f.read_exact(&mut back).unwrap();
        assert!(back[..100].iter().all(|&b| b == 0xaa));
        assert!(back[100..100 + len].iter().all(|&b| b == 0));
        assert!(back[100 + len..].iter().all(|&b| b == 0xaa));
    }

    #[test]
    fn offsets_beyond_i64_are_eoverflow() {
        let f = temp_file(&[0u8; 512]);
        let err = punch_hole(&f, u64::MAX, 512).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(Errno::OVERFLOW.raw_os_error()));
        let err = write_zeroes(&f, 0, u64::MAX, true).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(Errno::OVERFLOW.raw_os_error()));
    }
}
