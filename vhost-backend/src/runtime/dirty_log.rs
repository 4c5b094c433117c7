//! The dirty-page log for live migration (VHOST_F_LOG_ALL, VHOST_USER_PROTOCOL_F_LOG_SHMFD).
//!
//! While a VM migrates, its front-end copies guest memory to the destination and copies again
//! every page written since. Pages the back-end writes are invisible to it, so the back-end
//! records them in a bitmap the front-end shares (spec "Migration"): one bit per 4 KiB page of
//! guest-physical address space, bit `p % 8` of byte `p / 8` for page `p`, set with an
//! atomic OR *after* the data is in guest memory.
//!
//! - **SET_LOG_BASE** ([`DirtyLog::set_base`]) maps the front-end's log: its descriptor (a
//!   memfd), `mmap_size` and `mmap_offset`. The area must lie inside the file (checked with
//!   `fstat` after sealing it against shrinking, which is required whatever the memory
//!   policy: a log that can shrink would SIGBUS a mark), its offset must be
//!   page-aligned, and it must have a bit for every page of the memory table in force; anything
//!   else is refused with a [`LogError`] and the previous log, if any, stays here; the
//!   runtime's handler then drops the log and closes the connection, since QEMU looks only
//!   at the reply's request code and would otherwise believe its new log is marked. A later
//!   SET_LOG_BASE replaces the mapping (QEMU sends a larger log when memory grows) and returns
//!   (so replies) only once no writer is marking the old one: markers hold a read guard for
//!   their whole loop, the swap takes the write lock.
//! - **The reply** LOG_SHMFD makes owed is a u64, 0 for success and non-zero for failure, as
//!   REPLY_ACK's. Peers disagree on its payload (libvhost-user sends the size it was given,
//!   DPDK an empty body, rust-vmm's front-end expects the 16-byte log struct back); QEMU reads
//!   whatever comes and checks only the request code. A u64 status is what the other always-
//!   reply requests of our table carry, and says "refused" to a front-end that looks.
//! - **Logging** is on while VHOST_F_LOG_ALL is acked and a log is mapped
//!   ([`DirtyLog::set_enabled`], from SET_FEATURES, which may toggle it while rings run).
//!   Every guest write of the back-end is then marked: data written into a request's
//!   device-writable buffers, through [`Request::mark_written`](super::Request::mark_written)
//!   (the *one* call for "these guest bytes were written"; the runtime's own write helpers
//!   and [`FileIo`](super::FileIo) call it, and so must any other completion path, such as an
//!   asynchronous engine's, once its data has landed), and the ring's own writes: used
//!   entries, the used index, the used flags and `avail_event`. A ring whose SET_VRING_ADDR
//!   carried VHOST_VRING_F_LOG has its used-ring writes marked at the `log` address it gave
//!   (the used ring's guest-physical address); without the flag they are marked at the used
//!   ring's own address.
//! - **Off costs a SeqCst fence and one relaxed load** ([`DirtyLog::active_after_writes`],
//!   the check every mark makes after the writes it follows): checked before anything
//!   else, once per request (at its completion, for all it wrote) and per batch of used
//!   entries.
//! - **SET_LOG_FD**: the spec gives the descriptor no more meaning than "the logging file
//!   descriptor"; like libvhost-user, the runtime takes it as an eventfd and signals it after
//!   each batch of marks, when one was given.
//!
//! Marks past the end of the log (memory added after the last SET_LOG_BASE, a buffer outside
//! the table) are dropped and counted: the mapping is never written past its end.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use vm_memory::mmap::MmapRegion;
use vm_memory::FileOffset;

use super::log_limit::LogLimiter;
use super::mem_table::{sealed_file_len, SharedFileError};
use super::notifier;

#[cfg(test)]
thread_local! {
    /// Fenced checks ([`DirtyLog::active_after_writes`]) made on this thread (tests).
    pub(crate) static FENCED_CHECKS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Bytes of guest memory one bit of the log stands for.
pub const LOG_PAGE_SIZE: u64 = 4096;

/// Why SET_LOG_BASE or SET_LOG_FD was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// `mmap_size` is zero.
    #[error("SET_LOG_BASE: the log size is zero")]
    Empty,
    /// The log has fewer bits than the memory table has pages.
    #[error(
        "SET_LOG_BASE: a log of {size} bytes covers {covers:#x} bytes of guest memory, the \
         memory table reaches {needed:#x}"
    )]
    TooSmall {
        /// `mmap_size`.
        size: u64,
        /// Guest-physical bytes the log has bits for.
        covers: u64,
        /// End of the highest memory region.
        needed: u64,
    },
    /// `mmap_offset` is not a multiple of the page size.
    #[error("SET_LOG_BASE: offset {offset:#x} is not page-aligned")]
    UnalignedOffset {
        /// `mmap_offset`.
        offset: u64,
    },
    /// `mmap_offset + mmap_size` overflows or runs past the end of the descriptor's file.
    #[error(
        "SET_LOG_BASE: offset {offset:#x} + size {size:#x} runs past the end of the log file \
         ({file_size:#x} bytes)"
    )]
    PastEndOfFile {
        /// `mmap_offset`.
        offset: u64,
        /// `mmap_size`.
        size: u64,
        /// The file's size.
        file_size: u64,
    },
    /// The descriptor is not a regular file or memfd (its size bounds nothing).
    #[error("SET_LOG_BASE: the log descriptor is not a regular file or memfd")]
    NotAFile,
    /// The file could not be kept from shrinking (refused whatever the memory policy).
    #[error("SET_LOG_BASE: the log file cannot be kept from shrinking: {0}")]
    Unprotected(String),
    /// `fstat` failed.
    #[error("SET_LOG_BASE: fstat of the log descriptor: {0}")]
    Stat(#[source] std::io::Error),
    /// Mapping the log failed.
    #[error("SET_LOG_BASE: mapping the log: {0}")]
    Mmap(#[source] vm_memory::mmap::MmapRegionError),
    /// SET_LOG_FD with a descriptor that is not an eventfd.
    #[error("SET_LOG_FD: {0}")]
    LogFd(#[source] super::VringError),
}

/// One mapped log.
struct LogArea {
    map: MmapRegion,
}

impl LogArea {
    /// The log as bytes that may be OR-ed atomically.
    fn bytes(&self) -> &[AtomicU8] {
        // Every access through the slice is atomic, and so are the front-end's (an atomic
        // exchange when it reads and clears the log). The file cannot shrink under the
        // mapping: it is sealed with F_SEAL_SHRINK or refused (`DirtyLog::set_base`).
        // SAFETY: `map.size()` bytes of shared read-write memory, mapped while `self` (which
        // the slice borrows) lives; `AtomicU8` has the size and alignment of `u8`.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().cast::<AtomicU8>(), self.map.size()) }
    }
}

/// The dirty-page log of one back-end. See the [module docs](self).
///
/// Shared by the control thread (which maps, enables and drops it) and every ring and
/// request (which mark through it).
#[derive(Default)]
pub struct DirtyLog {
    /// VHOST_F_LOG_ALL acked and a log mapped: the one thing the data path reads when
    /// logging is off.
    active: AtomicBool,
    /// VHOST_F_LOG_ALL acked.
    enabled: AtomicBool,
    area: RwLock<Option<Arc<LogArea>>>,
    log_fd: Mutex<Option<File>>,
    /// Marks dropped because they fell past the end of the log.
    dropped: AtomicU64,
    warn: LogLimiter,
}

impl std::fmt::Debug for DirtyLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirtyLog")
            .field("active", &self.active())
            .field("size", &self.size())
            .field("dropped", &self.dropped.load(Ordering::Relaxed))
            .finish()
    }
}

impl DirtyLog {
    /// No log, logging off.
    pub fn new() -> Self {
        DirtyLog {
            warn: LogLimiter::new("dirty-log marks past the end of the log"),
            ..Default::default()
        }
    }

    /// Whether writes are being logged now (one relaxed load).
    #[inline]
    pub fn active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// [`active`](Self::active) for a writer that has just written guest memory: a SeqCst
    /// fence orders those writes before the load. Without it the load may be satisfied
    /// before the writes are visible (store-load reordering): the writer could read "off"
    /// while the control thread's SeqCst store turning logging on, its reply, and the
    /// front-end's first copy of the page all happen before the data lands, and the page
    /// would never be marked nor copied again. With it, either the writer sees "on" and
    /// marks, or its data was visible before logging went on (so before the front-end's
    /// first full copy).
    #[inline]
    pub fn active_after_writes(&self) -> bool {
        std::sync::atomic::fence(Ordering::SeqCst);
        #[cfg(test)]
        FENCED_CHECKS.with(|c| c.set(c.get() + 1));
        self.active()
    }

    /// Size in bytes of the mapped log (0 without one).
    pub fn size(&self) -> u64 {
        self.area().map_or(0, |a| a.map.size() as u64)
    }

    /// Marks dropped so far because they fell past the end of the log.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn area(&self) -> Option<Arc<LogArea>> {
        self.area
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn update_active(&self) {
        let on = self.enabled.load(Ordering::SeqCst)
            && self
                .area
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .is_some();
        self.active.store(on, Ordering::SeqCst);
    }

    /// SET_LOG_BASE: maps `size` bytes of `fd` at `offset` as the log, after sealing the
    /// file against shrinking (required whatever the memory policy) and checking them against the
    /// file and against `memory_end` (the end of the highest guest-physical region in the
    /// memory table). Replaces the previous log, returning only once no writer is marking
    /// the old one any more; on failure the previous log stays.
    pub fn set_base(
        &self,
        fd: OwnedFd,
        size: u64,
        offset: u64,
        memory_end: u64,
    ) -> Result<(), LogError> {
        if size == 0 {
            return Err(LogError::Empty);
        }
        let covers = size.saturating_mul(8).saturating_mul(LOG_PAGE_SIZE);
        if covers < memory_end {
            return Err(LogError::TooSmall {
                size,
                covers,
                needed: memory_end,
            });
        }
        if offset % LOG_PAGE_SIZE != 0 {
            return Err(LogError::UnalignedOffset { offset });
        }
        let file = File::from(fd);
        // Whatever the memory policy: a log that can shrink under the mapping would let the
        // front-end kill this process (SIGBUS on a mark). QEMU's log memfd is always
        // sealable, so only a hostile or broken front-end is refused here.
        let file_size = sealed_file_len(&file).map_err(|e| match e {
            SharedFileError::Stat(e) => LogError::Stat(e),
            SharedFileError::NotAFile => LogError::NotAFile,
            SharedFileError::Unprotected(why) => LogError::Unprotected(why),
        })?;
        let past = LogError::PastEndOfFile {
            offset,
            size,
            file_size,
        };
        match offset.checked_add(size) {
            Some(end) if end <= file_size => {}
            _ => return Err(past),
        }
        let len = usize::try_from(size).map_err(|_| LogError::PastEndOfFile {
            offset,
            size,
            file_size,
        })?;
        let map =
            MmapRegion::from_file(FileOffset::new(file, offset), len).map_err(LogError::Mmap)?;
        *self.area.write().unwrap_or_else(PoisonError::into_inner) =
            Some(Arc::new(LogArea { map }));
        self.update_active();
        log::info!("dirty log: {size} bytes mapped (covers {covers:#x} bytes of guest memory)");
        Ok(())
    }

    /// SET_LOG_FD: the eventfd to signal after marking (`None`: none).
    pub fn set_log_fd(&self, fd: Option<OwnedFd>) -> Result<(), LogError> {
        let fd = fd
            .map(|fd| notifier::accept(0, notifier::Notifier::Log, fd))
            .transpose()
            .map_err(LogError::LogFd)?;
        *self.log_fd.lock().unwrap_or_else(PoisonError::into_inner) = fd;
        Ok(())
    }

    /// Turns logging on or off (SET_FEATURES with or without VHOST_F_LOG_ALL). On takes effect
    /// once a log is mapped.
    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::SeqCst);
        self.update_active();
    }

    /// Drops the log and its eventfd and turns logging off (disconnect).
    pub fn clear(&self) {
        self.enabled.store(false, Ordering::SeqCst);
        *self.area.write().unwrap_or_else(PoisonError::into_inner) = None;
        *self.log_fd.lock().unwrap_or_else(PoisonError::into_inner) = None;
        self.update_active();
        self.warn.reset();
    }

    /// Marks the pages of guest-physical `[gpa, gpa + len)` dirty, if logging is on. Call it
    /// after the bytes were written. The check is the fenced one
    /// ([`active_after_writes`](Self::active_after_writes)): the writes just made cannot be
    /// reordered after it. The tests' single mark: requests record their writes with
    /// [`Request::mark_written`](super::Request::mark_written) and mark them at completion,
    /// and code that made the fenced check already uses [`mark_all`](Self::mark_all).
    #[cfg(test)]
    pub(crate) fn mark(&self, gpa: u64, len: u64) {
        if len == 0 || !self.active_after_writes() {
            return;
        }
        // The read guard is held while marking: see `mark_all`.
        let area = self.area.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(area) = area.as_deref() {
            self.mark_in(area, gpa, len);
        }
    }

    /// Marks several ranges under one look-up of the log (if logging is on). Its check is
    /// the unfenced one: callers make the fenced check first.
    pub(crate) fn mark_all(&self, ranges: impl IntoIterator<Item = (u64, u64)>) {
        if !self.active() {
            return;
        }
        // The read guard is held for the whole loop: SET_LOG_BASE's swap (the write lock)
        // waits for it, so no mark lands in a log the front-end was already told is
        // replaced (QEMU reads the old log once after the reply, then frees it).
        let area = self.area.read().unwrap_or_else(PoisonError::into_inner);
        let Some(area) = area.as_deref() else {
            return;
        };
        for (gpa, len) in ranges {
            if len > 0 {
                self.mark_in(area, gpa, len);
            }
        }
    }

    /// Signals the SET_LOG_FD eventfd, if any (once per batch of used entries logged).
    pub(crate) fn signal(&self) {
        let fd = self.log_fd.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(f) = fd.as_ref() {
            notifier::signal(f);
        }
    }

    fn mark_in(&self, area: &LogArea, gpa: u64, len: u64) {
        let bytes = area.bytes();
        let first = gpa / LOG_PAGE_SIZE;
        let last = gpa.saturating_add(len - 1) / LOG_PAGE_SIZE;
        let bits = bytes.len() as u64 * 8;
        if last >= bits {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            self.warn.warn(format_args!(
                "dirty log: guest-physical {gpa:#x} + {len:#x} lies past the end of the log \
                 ({} bytes); not marked there",
                bytes.len()
            ));
            if first >= bits {
                return;
            }
        }
        let last = last.min(bits - 1);
        // Whole bytes at once: [first, last] → bytes first/8 ..= last/8 with edge masks.
        let (b0, b1) = ((first / 8) as usize, (last / 8) as usize);
        for (i, byte) in bytes[b0..=b1].iter().enumerate() {
            let i = b0 + i;
            let lo = if i == b0 { first % 8 } else { 0 };
            let hi = if i == b1 { last % 8 } else { 7 };
            let mask = (0xffu16 << lo) as u8 & (0xffu16 >> (7 - hi)) as u8;
            // Release: the data written before this mark is visible to whoever sees the bit.
            byte.fetch_or(mask, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn memfd(size: u64) -> File {
        let fd = nix::sys::memfd::memfd_create(
            c"log-test",
            nix::sys::memfd::MFdFlags::MFD_ALLOW_SEALING,
        )
        .unwrap();
        let f = File::from(fd);
        f.set_len(size).unwrap();
        f
    }

    fn read_log(f: &File, size: usize) -> Vec<u8> {
        use std::os::unix::fs::FileExt;
        let mut v = vec![0; size];
        f.read_exact_at(&mut v, 0).unwrap();
        v
    }

    fn dup(f: &File) -> OwnedFd {
        f.as_fd().try_clone_to_owned().unwrap()
    }

    #[test]
    fn marks_every_page_of_a_range_and_nothing_else() {
        let f = memfd(4096);
        let log = DirtyLog::new();
        log.set_base(dup(&f), 64, 0, 0x10_0000).unwrap();
        log.mark(0x1000, 1);
        assert_eq!(read_log(&f, 64), vec![0; 64], "off: nothing is marked");
        log.set_enabled(true);
        // Pages 1, 3..=20 (0x3fff + 0x11001 ends in page 20), 511 (last).
        log.mark(0x1000, 1);
        log.mark(0x3fff, 0x11001);
        log.mark(511 * 4096 + 4095, 1);
        let got = read_log(&f, 64);
        let mut want = vec![0u8; 64];
        for p in [1usize].into_iter().chain(3..=20).chain([511]) {
            want[p / 8] |= 1 << (p % 8);
        }
        assert_eq!(got, want);
        // Past the end: dropped, counted, never written.
        log.mark(512 * 4096, 4096);
        assert_eq!(log.dropped(), 1);
        assert_eq!(read_log(&f, 64), want);
        assert_eq!(read_log(&f, 4096)[64..], vec![0; 4096 - 64]);
        log.set_enabled(false);
        log.mark(0, 4096);
        assert_eq!(read_log(&f, 1)[0] & 1, 0);
    }

    #[test]
    fn hostile_bases_are_refused_and_the_previous_log_stays() {
        let f = memfd(8192);
        let log = DirtyLog::new();
        let mem_end = 256 << 20; // 256 MiB: 65536 pages, 8192 bytes of log.
        assert!(matches!(
            log.set_base(dup(&f), 0, 0, mem_end),
            Err(LogError::Empty)
        ));
        assert!(matches!(
            log.set_base(dup(&f), 8191, 0, mem_end),
            Err(LogError::TooSmall { .. })
        ));
        assert!(matches!(
            log.set_base(dup(&f), 8192, 4096, mem_end),
            Err(LogError::PastEndOfFile { .. })
        ));
        assert!(matches!(
            log.set_base(dup(&f), 8192, u64::MAX - 4095, mem_end),
            Err(LogError::PastEndOfFile { .. })
        ));
        assert!(matches!(
            log.set_base(dup(&f), u64::MAX, 0, mem_end),
            Err(LogError::PastEndOfFile { .. })
        ));
        assert!(matches!(
            log.set_base(dup(&f), 8192, 12, mem_end),
            Err(LogError::UnalignedOffset { .. })
        ));
        let (r, w) = nix::unistd::pipe().unwrap();
        drop(w);
        assert!(matches!(
            log.set_base(r, 8192, 0, mem_end),
            Err(LogError::NotAFile)
        ));
        assert_eq!(log.size(), 0);
        log.set_base(dup(&f), 8192, 0, mem_end).unwrap();
        assert_eq!(log.size(), 8192);
        // A refused replacement keeps the log in force.
        assert!(log.set_base(dup(&f), 1, 0, mem_end).is_err());
        assert_eq!(log.size(), 8192);
        // The file is sealed against shrinking now.
        assert!(f.set_len(0).is_err());
    }

    /// A replaced log is not given back to the front-end (SET_LOG_BASE's reply) while a
    /// writer is still marking it: QEMU reads the old log once after that reply and frees it.
    #[test]
    fn set_base_waits_for_writers_of_the_old_log() {
        use std::sync::mpsc;
        use std::time::Duration;
        let old = memfd(4096);
        let new = memfd(4096);
        let log = Arc::new(DirtyLog::new());
        log.set_base(dup(&old), 16, 0, 0).unwrap();
        log.set_enabled(true);
        let (started_tx, started_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let marker = {
            let log = log.clone();
            std::thread::spawn(move || {
                let ranges = std::iter::once(()).flat_map(move |()| {
                    started_tx.send(()).unwrap();
                    go_rx.recv().unwrap();
                    [(0x5000u64, 1u64)]
                });
                log.mark_all(ranges);
            })
        };
        started_rx.recv().unwrap();
        let (done_tx, done_rx) = mpsc::channel();
        let replacer = {
            let log = log.clone();
            let fd = dup(&new);
            std::thread::spawn(move || {
                log.set_base(fd, 16, 0, 0).unwrap();
                done_tx.send(()).unwrap();
            })
        };
        assert!(
            done_rx.recv_timeout(Duration::from_millis(100)).is_err(),
            "SET_LOG_BASE returned while a writer was still marking the old log"
        );
        go_tx.send(()).unwrap();
        marker.join().unwrap();
        done_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        replacer.join().unwrap();
        assert_eq!(
            read_log(&old, 1)[0],
            1 << 5,
            "the mark landed in the old log"
        );
        assert_eq!(read_log(&new, 16), vec![0; 16]);
    }

    /// A log that cannot be sealed against shrinking is refused whatever the policy: a
    /// front-end that truncates it would otherwise kill the daemon with SIGBUS.
    #[test]
    fn an_unsealable_log_is_refused_even_when_lenient() {
        let fd =
            nix::sys::memfd::memfd_create(c"log-nosealing", nix::sys::memfd::MFdFlags::empty())
                .unwrap();
        let f = File::from(fd);
        f.set_len(4096).unwrap();
        let log = DirtyLog::new();
        assert!(matches!(
            log.set_base(dup(&f), 16, 0, 0),
            Err(LogError::Unprotected(_))
        ));
        assert_eq!(log.size(), 0);
    }

    #[test]
    fn a_later_base_remaps_and_logging_follows_it() {
        let small = memfd(4096);
        let big = memfd(8192);
        let log = DirtyLog::new();
        log.set_enabled(true);
        assert!(!log.active(), "on without a log is not active");
        log.set_base(dup(&small), 16, 0, 0).unwrap();
        assert!(log.active());
        log.set_base(dup(&big), 32, 4096, 0).unwrap();
        log.mark(200 * 4096, 1);
        use std::os::unix::fs::FileExt;
        let mut b = [0u8; 1];
        big.read_exact_at(&mut b, 4096 + 25).unwrap();
        assert_eq!(b[0], 1);
        assert_eq!(read_log(&small, 32), vec![0; 32]);
        log.clear();
        assert!(!log.active());
        assert_eq!(log.size(), 0);
    }
}
