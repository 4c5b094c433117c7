//! Pattern images: raw files whose every 8-byte word is [`pattern`](crate::pattern) of its
//! offset, so a read of any block can be checked, and page-cache warming.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;

use crate::{fill_pattern, BLOCK};

/// Writes a pattern image of `size` bytes (rounded down to whole 4 KiB blocks) at `path`,
/// replacing what was there.
pub fn create(path: &Path, size: u64) -> io::Result<()> {
    let size = size / BLOCK as u64 * BLOCK as u64;
    if size == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "an image needs at least one 4 KiB block",
        ));
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    const CHUNK: u64 = 1 << 20;
    let mut buf = vec![0u8; CHUNK as usize];
    let mut at = 0;
    while at < size {
        let n = CHUNK.min(size - at);
        let part = &mut buf[..n as usize];
        fill_pattern(part, at);
        f.write_all(part)?;
        at += n;
    }
    f.sync_all()
}

/// Reads the whole file once so that it sits in the page cache.
pub fn warm(path: &Path) -> io::Result<u64> {
    let mut f = File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0;
    loop {
        match f.read(&mut buf)? {
            0 => return Ok(total),
            n => total += n as u64,
        }
    }
}

/// A pattern image in a fresh temporary directory, removed on drop.
#[derive(Debug)]
pub struct TempImage {
    dir: std::path::PathBuf,
    path: std::path::PathBuf,
}

impl TempImage {
    /// Creates and warms an image of `size` bytes named after `tag`.
    pub fn new(tag: &str, size: u64) -> io::Result<Self> {
        let dir = std::env::temp_dir().join(format!("vhost-bench-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("disk.img");
        create(&path, size)?;
        warm(&path)?;
        Ok(TempImage { dir, path })
    }

    /// The image file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A socket path next to the image.
    pub fn socket(&self, name: &str) -> std::path::PathBuf {
        self.dir.join(name)
    }
}

impl Drop for TempImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
