//! Where the random bytes come from: the kernel's generator through getrandom(2), or a file
//! (a character device such as `/dev/urandom`, a FIFO, or a regular file read once from
//! start to end). Either fills a caller's byte buffer.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use rustix::io::Errno;
use rustix::rand::GetRandomFlags;

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
        let source = EntropySource::Os;
        source.fill_buf(&mut [0u8; 1])?;
        Ok(source)
    }

    /// Opens `path` for reading (once; every request reads on from the current offset).
    /// A directory or an empty regular file is refused: it would give no bytes.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        let meta = file.metadata()?;
        if meta.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "it is a directory, not a source of bytes",
            ));
        }
        if meta.is_file() && meta.len() == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "it is an empty file: every request would get 0 bytes",
            ));
        }
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

    /// Fills `buf` with random bytes. Returns how many bytes were written: all of them, or
    /// fewer when a file source reached its end (or, non-blocking, had nothing more to give
    /// after some bytes).
    pub fn fill_buf(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            EntropySource::Os => getrandom_fill(buf),
            EntropySource::File { file, .. } => read_fill(file, buf),
        }
    }
}

/// getrandom(2) until `buf` is full (the kernel may return fewer bytes for large requests or
/// when a signal arrives).
fn getrandom_fill(buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match rustix::rand::getrandom(&mut buf[done..], GetRandomFlags::empty()) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(done)
}

/// Reads `file` until `buf` is full, end of file, or (non-blocking file) no more data for
/// now once some bytes were read.
fn read_fill(mut file: &File, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) => match e.kind() {
                io::ErrorKind::Interrupted => {}
                io::ErrorKind::WouldBlock if done > 0 => break,
                _ => return Err(e),
            },
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn os_source_fills_the_whole_buffer_with_non_zero_data() {
        let src = EntropySource::os().unwrap();
        let mut got = vec![0u8; 4096];
        assert_eq!(src.fill_buf(&mut got).unwrap(), 4096);
        assert!(got.iter().any(|&b| b != 0));
    }

    #[test]
    fn os_source_fills_an_empty_buffer_with_nothing() {
        let src = EntropySource::os().unwrap();
        assert_eq!(src.fill_buf(&mut []).unwrap(), 0);
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
        let mut got = [0u8; 120];
        assert_eq!(src.fill_buf(&mut got[..60]).unwrap(), 60);
        assert_eq!(
            src.fill_buf(&mut got[60..]).unwrap(),
            40,
            "only 40 bytes were left"
        );
        assert_eq!(&got[..100], &bytes[..]);
        assert!(got[100..].iter().all(|&b| b == 0));
        assert_eq!(src.fill_buf(&mut got[60..]).unwrap(), 0, "at end of file");
    }

    #[test]
    fn non_blocking_fifo_source_gives_what_is_there_then_would_block() {
        use std::os::unix::fs::OpenOptionsExt;
        let path = std::env::temp_dir().join(format!("rng-src-fifo-{}", std::process::id()));
        nix::unistd::mkfifo(
            &path,
            nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
        )
        .unwrap();
        let file = File::options()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .unwrap();
        let mut writer = File::options().write(true).open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let src = EntropySource::File { file, path };
        writer.write_all(&[7u8; 10]).unwrap();
        let mut got = [0u8; 64];
        assert_eq!(src.fill_buf(&mut got).unwrap(), 10);
        assert!(got[..10].iter().all(|&b| b == 7));
        let err = src.fill_buf(&mut got).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn opening_a_missing_file_fails() {
        assert!(EntropySource::open(Path::new("/nonexistent/rng-source")).is_err());
    }
}
