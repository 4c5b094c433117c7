//! A scratch image for a daemon started without `--blk-file`: a sparse file in a fresh
//! temporary directory, removed with the directory when the [`TempImage`] drops.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// Size of the scratch image: 1 GiB.
pub const TEMP_IMAGE_SIZE: u64 = 1 << 30;

/// A sparse image in its own temporary directory. Dropping it removes both.
#[derive(Debug)]
pub struct TempImage {
    dir: PathBuf,
    path: PathBuf,
}

impl TempImage {
    /// Creates `disk.img` of `size` bytes (sparse) in a new directory under the system's
    /// temporary directory.
    pub fn create(size: u64) -> io::Result<TempImage> {
        let template = std::env::temp_dir().join("vhost-user-blk.XXXXXX");
        let dir = nix::unistd::mkdtemp(&template).map_err(io::Error::from)?;
        let path = dir.join("disk.img");
        let made = File::options()
            .write(true)
            .create_new(true)
            .open(&path)
            .and_then(|f| f.set_len(size));
        if let Err(e) = made {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        Ok(TempImage { dir, path })
    }

    /// The image file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempImage {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            log::warn!("removing {}: {e}", self.dir.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_image_is_sparse_and_removed_on_drop() {
        let img = TempImage::create(TEMP_IMAGE_SIZE).unwrap();
        let path = img.path().to_path_buf();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), TEMP_IMAGE_SIZE);
        use std::os::unix::fs::MetadataExt;
        assert!(
            meta.blocks() * 512 < TEMP_IMAGE_SIZE / 16,
            "image is not sparse"
        );
        drop(img);
        assert!(!path.exists());
        assert!(!path.parent().unwrap().exists());
    }
}
