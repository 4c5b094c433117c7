//! One vring's state, shared between the control thread and the worker that serves it.
//!
//! A ring has two independent states (spec "Ring states"): *started* (from SET_VRING_KICK
//! to GET_VRING_BASE) and *enabled* (SET_VRING_ENABLE, or at once when
//! VHOST_USER_F_PROTOCOL_FEATURES is not negotiated). The worker processes the ring only
//! when both hold. Everything the worker touches per wake-up sits behind one mutex that is
//! taken once per wake-up, so GET_VRING_BASE, which takes it too, waits for the chain in
//! hand; the call and error eventfds have their own small locks so they can be replaced
//! while the ring runs.

use std::fs::File;
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::notifier::{self, Notifier};

/// Which address of a ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingPart {
    /// The descriptor table.
    Desc,
    /// The available ring.
    Avail,
    /// The used ring.
    Used,
}

/// Why a vring request was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VringError {
    /// SET_VRING_NUM with 0, a size that is not a power of two, or over the maximum.
    #[error("vring {index}: size {num} is not a power of two in 1..={max}")]
    InvalidSize {
        /// The ring.
        index: u16,
        /// The size asked for.
        num: u32,
        /// The device's maximum.
        max: u16,
    },
    /// SET_VRING_ADDR with an address no memory region holds.
    #[error("vring {index}: {part:?} address {addr:#x} is outside every memory region")]
    AddressNotMapped {
        /// The ring.
        index: u16,
        /// Which address.
        part: RingPart,
        /// The front-end virtual address.
        addr: u64,
    },
    /// The ring cannot start before it has this setting.
    #[error("vring {index}: cannot start without {missing}")]
    NotConfigured {
        /// The ring.
        index: u16,
        /// What is missing.
        missing: &'static str,
    },
    /// The request would change a started ring.
    #[error("vring {index}: not allowed while the ring is started")]
    Started {
        /// The ring.
        index: u16,
    },
    /// The queue refused its settings (alignment) or its rings lie outside guest memory.
    #[error("vring {index}: {why}")]
    InvalidQueue {
        /// The ring.
        index: u16,
        /// What is wrong.
        why: String,
    },
    /// A kick, call or error descriptor that is not an eventfd (a pipe, a socket, a file):
    /// writing it could block the worker, or it could be readable forever.
    #[error("vring {index}: the {which} descriptor is {kind}, not an eventfd")]
    NotEventFd {
        /// The ring.
        index: u16,
        /// Which descriptor.
        which: Notifier,
        /// What it is instead (its `/proc/self/fd` link or its file type).
        kind: String,
    },
    /// Inspecting an eventfd or making it non-blocking failed.
    #[error("vring {index}: the {which} eventfd: {source}")]
    EventFd {
        /// The ring.
        index: u16,
        /// Which descriptor.
        which: Notifier,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Where the worker learns that the driver made buffers available.
#[derive(Debug, Default)]
pub(crate) enum Kick {
    /// No kick source: the ring is not started.
    #[default]
    None,
    /// The kick eventfd.
    Fd(File),
    /// SET_VRING_KICK with NOFD: the worker polls the ring on a timer.
    Poll,
}

/// Ring state behind the per-wake-up lock.
#[derive(Debug)]
pub(crate) struct VringInner {
    pub(crate) queue: Queue,
    pub(crate) max_size: u16,
    pub(crate) size: u16,
    pub(crate) base: u16,
    pub(crate) addrs: Option<[GuestAddress; 3]>,
    pub(crate) kick: Kick,
    /// Bumped at each kick fd change so the worker can drop events of a replaced fd.
    pub(crate) kick_gen: u16,
    pub(crate) started: bool,
    pub(crate) enabled: bool,
    /// `enabled` holds only because VHOST_USER_F_PROTOCOL_FEATURES was not acked, not
    /// because of a SET_VRING_ENABLE: a later SET_FEATURES acking that bit withdraws it
    /// from a ring not started.
    pub(crate) enabled_without_protocol: bool,
    pub(crate) event_idx: bool,
}

/// One vring. See the [module docs](self).
#[derive(Debug)]
pub(crate) struct Vring {
    pub(crate) index: u16,
    inner: Mutex<VringInner>,
    call: Mutex<Option<File>>,
    err: Mutex<Option<File>>,
    /// Set while GET_VRING_BASE waits: `pop_chain` returns `None`.
    pub(crate) stopping: AtomicBool,
    /// Process at the next worker wake-up even without a kick (ring just enabled, device
    /// event).
    pub(crate) pending: AtomicBool,
}

/// Signals the eventfd in `fd`, if any. The eventfd is non-blocking
/// ([`notifier::accept`]), so this never waits.
fn signal(fd: &Mutex<Option<File>>) {
    let guard = fd.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(f) = guard.as_ref() {
        notifier::signal(f);
    }
}

impl Vring {
    pub(crate) fn new(index: u16, max_size: u16) -> Self {
        Vring {
            index,
            inner: Mutex::new(VringInner {
                queue: Queue::new(max_size).unwrap_or_default(),
                max_size,
                size: max_size,
                base: 0,
                addrs: None,
                kick: Kick::None,
                kick_gen: 0,
                started: false,
                enabled: false,
                enabled_without_protocol: false,
                event_idx: false,
            }),
            call: Mutex::new(None),
            err: Mutex::new(None),
            stopping: AtomicBool::new(false),
            pending: AtomicBool::new(false),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, VringInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// SET_VRING_CALL: replaces the call eventfd (`None`: do not signal).
    pub(crate) fn set_call(&self, fd: Option<File>) {
        *self.call.lock().unwrap_or_else(PoisonError::into_inner) = fd;
    }

    /// SET_VRING_ERR: replaces the error eventfd.
    pub(crate) fn set_err(&self, fd: Option<File>) {
        *self.err.lock().unwrap_or_else(PoisonError::into_inner) = fd;
    }

    /// Signals the used-buffer notification.
    pub(crate) fn signal_call(&self) {
        signal(&self.call);
    }

    /// Signals the error eventfd.
    pub(crate) fn signal_err(&self) {
        signal(&self.err);
    }

    /// Back to the just-created state; drops every descriptor. The ring must have no worker.
    pub(crate) fn reset(&self) {
        let mut inner = self.lock();
        let max = inner.max_size;
        inner.queue = Queue::new(max).unwrap_or_default();
        inner.size = max;
        inner.base = 0;
        inner.addrs = None;
        inner.kick = Kick::None;
        inner.started = false;
        inner.enabled = false;
        inner.enabled_without_protocol = false;
        inner.event_idx = false;
        drop(inner);
        self.set_call(None);
        self.set_err(None);
        self.stopping.store(false, Ordering::Relaxed);
        self.pending.store(false, Ordering::Relaxed);
    }
}

impl VringInner {
    /// SET_VRING_NUM.
    pub(crate) fn set_size(&mut self, index: u16, num: u32) -> Result<(), VringError> {
        if self.started {
            return Err(VringError::Started { index });
        }
        match u16::try_from(num) {
            Ok(n) if n != 0 && n.is_power_of_two() && n <= self.max_size => {
                self.size = n;
                Ok(())
            }
            _ => Err(VringError::InvalidSize {
                index,
                num,
                max: self.max_size,
            }),
        }
    }

    /// SET_VRING_BASE (split rings: the next available index in the low 16 bits).
    pub(crate) fn set_base(&mut self, index: u16, base: u32) -> Result<(), VringError> {
        if self.started {
            return Err(VringError::Started { index });
        }
        self.base = base as u16;
        Ok(())
    }

    /// Builds the queue from the stored settings and marks the ring started. The used index
    /// is read from guest memory: after a guest reboot or a back-end restart it need not
    /// equal the base.
    pub(crate) fn start(&mut self, index: u16, mem: &GuestMemoryMmap) -> Result<(), VringError> {
        let [desc, avail, used] = self.addrs.ok_or(VringError::NotConfigured {
            index,
            missing: "SET_VRING_ADDR",
        })?;
        let invalid = |why: String| VringError::InvalidQueue { index, why };
        let mut q = Queue::new(self.max_size).map_err(|e| invalid(e.to_string()))?;
        q.try_set_size(self.size)
            .map_err(|e| invalid(e.to_string()))?;
        q.try_set_desc_table_address(desc)
            .map_err(|e| invalid(e.to_string()))?;
        q.try_set_avail_ring_address(avail)
            .map_err(|e| invalid(e.to_string()))?;
        q.try_set_used_ring_address(used)
            .map_err(|e| invalid(e.to_string()))?;
        q.set_event_idx(self.event_idx);
        q.set_ready(true);
        if !q.is_valid(mem) {
            return Err(invalid("rings lie outside guest memory".into()));
        }
        let used_idx = q
            .used_idx(mem, Ordering::Acquire)
            .map_err(|e| invalid(e.to_string()))?;
        q.set_next_avail(self.base);
        q.set_next_used(used_idx.0);
        self.queue = q;
        self.started = true;
        Ok(())
    }

    /// Stops the ring and returns the next available index (what GET_VRING_BASE answers
    /// and the next start resumes from).
    pub(crate) fn stop(&mut self) -> u16 {
        if self.started {
            self.base = self.queue.next_avail();
        }
        self.started = false;
        self.queue.set_ready(false);
        self.kick = Kick::None;
        self.kick_gen = self.kick_gen.wrapping_add(1);
        self.base
    }

    /// The enabled state SET_FEATURES gives: without VHOST_USER_F_PROTOCOL_FEATURES every
    /// ring is enabled; with it a ring not started is disabled unless SET_VRING_ENABLE
    /// enabled it. Returns whether the ring just became enabled.
    pub(crate) fn follow_features(&mut self, protocol_features: bool) -> bool {
        if !protocol_features {
            let became = !self.enabled;
            if became {
                self.enabled = true;
                self.enabled_without_protocol = true;
            }
            became
        } else {
            if !self.started && self.enabled_without_protocol {
                self.enabled = false;
                self.enabled_without_protocol = false;
            }
            false
        }
    }

    /// SET_VRING_ENABLE. Returns whether the ring just became enabled.
    pub(crate) fn set_enabled(&mut self, enable: bool) -> bool {
        let became = enable && !self.enabled;
        self.enabled = enable;
        self.enabled_without_protocol = false;
        became
    }

    /// Sets EVENT_IDX, also on a running queue.
    pub(crate) fn set_event_idx(&mut self, on: bool) {
        self.event_idx = on;
        self.queue.set_event_idx(on);
    }

    /// Reads the kick eventfd to clear it (the worker calls this for an event of the
    /// current kick generation only, so the fd is readable and the read does not block).
    pub(crate) fn consume_kick(&mut self) {
        if let Kick::Fd(f) = &mut self.kick {
            let mut buf = [0u8; 8];
            if let Err(e) = f.read(&mut buf) {
                if e.kind() != std::io::ErrorKind::WouldBlock {
                    log::warn!("reading a kick eventfd failed: {e}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    #[test]
    fn set_size_rejects_zero_non_power_of_two_and_over_max() {
        let r = Vring::new(0, 256);
        let mut i = r.lock();
        for bad in [0, 3, 512, 0x1_0000 + 64] {
            assert!(
                matches!(i.set_size(0, bad), Err(VringError::InvalidSize { .. })),
                "{bad}"
            );
        }
        i.set_size(0, 128).unwrap();
        assert_eq!(i.size, 128);
        i.set_size(0, 256).unwrap();
    }

    #[test]
    fn start_reads_used_index_from_guest_memory_not_base() {
        let m = mem();
        // Used ring at 0x3000: idx field at +2.
        m.write_obj(7u16.to_le(), GuestAddress(0x3002)).unwrap();
        let r = Vring::new(0, 256);
        let mut i = r.lock();
        i.set_size(0, 16).unwrap();
        i.set_base(0, 9).unwrap();
        i.addrs = Some([
            GuestAddress(0x1000),
            GuestAddress(0x2000),
            GuestAddress(0x3000),
        ]);
        i.start(0, &m).unwrap();
        assert!(i.started);
        assert_eq!(i.queue.next_avail(), 9);
        assert_eq!(i.queue.next_used(), 7);
        assert!(matches!(i.set_base(0, 1), Err(VringError::Started { .. })));
        assert!(matches!(i.set_size(0, 32), Err(VringError::Started { .. })));
        assert_eq!(i.stop(), 9);
        assert!(!i.started);
        // Stopping again answers the same base.
        assert_eq!(i.stop(), 9);
    }

    #[test]
    fn start_without_addresses_or_outside_memory_fails() {
        let m = mem();
        let r = Vring::new(0, 256);
        let mut i = r.lock();
        assert!(matches!(
            i.start(0, &m),
            Err(VringError::NotConfigured { .. })
        ));
        i.addrs = Some([
            GuestAddress(0xf000),
            GuestAddress(0x2000),
            GuestAddress(0x3000),
        ]);
        // 256 descriptors * 16 bytes from 0xf000 runs past 0x10000.
        assert!(matches!(
            i.start(0, &m),
            Err(VringError::InvalidQueue { .. })
        ));
        i.addrs = Some([
            GuestAddress(0x1001),
            GuestAddress(0x2000),
            GuestAddress(0x3000),
        ]);
        assert!(matches!(
            i.start(0, &m),
            Err(VringError::InvalidQueue { .. })
        ));
        assert!(!i.started);
    }

    #[test]
    fn reset_returns_ring_to_initial_state() {
        let m = mem();
        let r = Vring::new(1, 64);
        {
            let mut i = r.lock();
            i.set_size(1, 16).unwrap();
            i.addrs = Some([
                GuestAddress(0x1000),
                GuestAddress(0x2000),
                GuestAddress(0x3000),
            ]);
            i.enabled = true;
            i.start(1, &m).unwrap();
        }
        r.reset();
        let i = r.lock();
        assert!(!i.started && !i.enabled && i.addrs.is_none());
        assert_eq!(i.size, 64);
        assert_eq!(i.base, 0);
    }
}
