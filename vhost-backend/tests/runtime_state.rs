//! Device state transfer through the real server and `DeviceBackend`: SET_DEVICE_STATE_FD
//! saves into and loads from a pipe, CHECK_DEVICE_STATE reports the outcome.

#![cfg(unix)]

mod runtime_support;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use runtime_support::*;
use vhost_backend::runtime::{DeviceBackend, DeviceError, Processed, QueueContext, VirtioDevice};
use vhost_frontend::{Frontend, FrontendError};
use vhost_proto::wire::{TRANSFER_LOAD, TRANSFER_SAVE};
use vhost_proto::ProtocolFeatures;

const DATA: u64 = 0x4000_0000;
const MAGIC: &[u8; 4] = b"CNT1";
/// Filler in every snapshot, larger than a pipe's buffer: the save must not wait for the
/// reply to be read before writing.
const FILLER: usize = 200 * 1024;

/// A device whose state is the number of chains it served, shown in its configuration
/// space (8 bytes, little-endian).
struct CountingDevice {
    served: AtomicU64,
    supported: bool,
}

impl CountingDevice {
    fn new(supported: bool) -> Self {
        CountingDevice {
            served: AtomicU64::new(0),
            supported,
        }
    }
}

fn snapshot_bytes(served: u64) -> Vec<u8> {
    let mut v = MAGIC.to_vec();
    v.extend_from_slice(&served.to_le_bytes());
    v.extend((0..FILLER).map(|i| i as u8));
    v
}

impl VirtioDevice for CountingDevice {
    vhost_test_support::device_basics!(self; device_type: 4, queues: 1, max_queue_size: 256);
    fn config_size(&self) -> usize {
        8
    }
    fn read_config(&self, offset: u32, data: &mut [u8]) -> Result<(), DeviceError> {
        let bytes = self.served.load(Ordering::SeqCst).to_le_bytes();
        vhost_backend::runtime::read_config_bytes(&bytes, offset, data)
    }
    fn process_queue(&self, ctx: &mut QueueContext<'_>) -> Result<Processed, DeviceError> {
        while let Some(req) = ctx.pop() {
            req.complete(0);
            self.served.fetch_add(1, Ordering::SeqCst);
        }
        Ok(Processed::Drained)
    }
    fn reset(&self) {
        self.served.store(0, Ordering::SeqCst);
    }
    fn supports_state_transfer(&self) -> bool {
        self.supported
    }
    fn snapshot(&self) -> Result<Vec<u8>, DeviceError> {
        Ok(snapshot_bytes(self.served.load(Ordering::SeqCst)))
    }
    fn restore(&self, state: &[u8]) -> Result<(), DeviceError> {
        let bad = || DeviceError::Other("malformed counter state".into());
        if state.len() != 12 + FILLER || &state[..4] != MAGIC {
            return Err(bad());
        }
        if state[12..].iter().enumerate().any(|(i, &b)| b != i as u8) {
            return Err(bad());
        }
        let served = u64::from_le_bytes(state[4..12].try_into().map_err(|_| bad())?);
        self.served.store(served, Ordering::SeqCst);
        Ok(())
    }
}

fn serve(supported: bool) -> (Frontend, JoinHandle<DeviceBackend<CountingDevice>>) {
    serve_in_thread(DeviceBackend::new(CountingDevice::new(supported)).expect("backend"))
}

/// SET_DEVICE_STATE_FD for a save is refused (the status carries a failure in its low byte)
/// and nothing is written to the pipe.
fn assert_save_refused(fe: &mut Frontend) {
    let (mut r, w) = pipe();
    let e = fe
        .set_device_state_fd(TRANSFER_SAVE, 0, w.as_fd())
        .unwrap_err();
    assert_ne!(nack(e) & 0xff, 0);
    drop(w);
    let mut got = Vec::new();
    r.read_to_end(&mut got).unwrap();
    assert!(got.is_empty(), "nothing written for a refused save");
}

fn served(fe: &mut Frontend) -> u64 {
    let bytes = fe.get_config(0, 8, 0).expect("GET_CONFIG");
    u64::from_le_bytes(bytes.try_into().expect("8 bytes"))
}

fn pipe() -> (File, File) {
    let (r, w): (OwnedFd, OwnedFd) = nix::unistd::pipe().expect("pipe");
    (File::from(r), File::from(w))
}

/// The front-end's status for a refused request (its error byte), failing otherwise.
fn nack(e: FrontendError) -> u64 {
    e.nack_status().unwrap_or_else(|| panic!("not a nack: {e}"))
}

/// Serves `n` chains on a ring started at `base` and stops it again.
fn serve_chains(fe: &mut Frontend, n: u32, base: u32) -> u32 {
    let mem = two_region_memory();
    send_mem_table(fe, &mem);
    let mut q = GuestQueue::new(&mem, 0, true);
    q.start(fe, &mem, base, true);
    for i in 0..n {
        let head = q.submit((DATA, 16), (DATA + 0x1000 + u64::from(i) * 0x100, 0x100));
        assert_eq!(q.wait_used().id, head);
    }
    fe.get_vring_base(0).expect("GET_VRING_BASE")
}

/// SAVE into a pipe read only after the reply: the whole snapshot, then end-of-file.
fn save(fe: &mut Frontend) -> Vec<u8> {
    let (mut r, w) = pipe();
    let back = fe
        .set_device_state_fd(TRANSFER_SAVE, 0, w.as_fd())
        .expect("SET_DEVICE_STATE_FD save");
    assert!(
        back.is_none(),
        "the back-end uses the front-end's descriptor"
    );
    drop(w);
    let mut state = Vec::new();
    r.read_to_end(&mut state).expect("read state");
    fe.check_device_state()
        .expect("CHECK_DEVICE_STATE after save");
    state
}

/// Starts a LOAD; the returned write end is the test's to fill and close.
fn start_load(fe: &mut Frontend) -> File {
    let (r, w) = pipe();
    let back = fe
        .set_device_state_fd(TRANSFER_LOAD, 0, r.as_fd())
        .expect("SET_DEVICE_STATE_FD load");
    assert!(back.is_none());
    w
}

#[test]
fn saved_state_of_stopped_device_loads_into_fresh_session_and_restores_counter() {
    let (mut fe, _t) = serve(true);
    handshake(&mut fe, true, true);
    assert!(fe.acked_protocol().contains(ProtocolFeatures::DEVICE_STATE));
    assert_eq!(serve_chains(&mut fe, 3, 0), 3);
    assert_eq!(served(&mut fe), 3);
    let state = save(&mut fe);
    assert_eq!(state, snapshot_bytes(3));

    // Another back-end process in spirit: a fresh device.
    let (mut fe2, _t2) = serve(true);
    handshake(&mut fe2, true, true);
    assert_eq!(served(&mut fe2), 0);
    let mut w = start_load(&mut fe2);
    w.write_all(&state).expect("write state");
    drop(w);
    fe2.check_device_state()
        .expect("CHECK_DEVICE_STATE after load");
    assert_eq!(served(&mut fe2), 3, "counter restored");
    // The restored device goes on counting from there (on a new guest ring).
    assert_eq!(serve_chains(&mut fe2, 2, 0), 2);
    assert_eq!(served(&mut fe2), 5);
}

#[test]
fn transfer_while_a_ring_is_started_is_refused_and_closes_the_descriptor() {
    let (mut fe, _t) = serve(true);
    let (_mem, _q) = start_queue0(&mut fe, true);
    assert_save_refused(&mut fe);
    // Stopped: now it works, and the session is intact.
    fe.get_vring_base(0).expect("GET_VRING_BASE");
    assert_eq!(save(&mut fe), snapshot_bytes(0));
}

#[test]
fn transfer_phase_other_than_stopped_is_refused() {
    let (mut fe, _t) = serve(true);
    handshake(&mut fe, true, true);
    let (_r, w) = pipe();
    let e = fe
        .set_device_state_fd(TRANSFER_SAVE, 1, w.as_fd())
        .unwrap_err();
    assert_ne!(nack(e) & 0xff, 0);
    assert!(
        fe.check_device_state().is_err(),
        "no transfer was started, so none can be checked"
    );
    assert_eq!(save(&mut fe), snapshot_bytes(0));
}

#[test]
fn load_of_garbage_reports_failure_at_check_and_leaves_state_alone() {
    let (mut fe, _t) = serve(true);
    handshake(&mut fe, true, true);
    assert_eq!(serve_chains(&mut fe, 2, 0), 2);
    let mut w = start_load(&mut fe);
    w.write_all(b"this is not a counter snapshot").unwrap();
    drop(w);
    let status = nack(fe.check_device_state().unwrap_err());
    assert_ne!(status, 0);
    assert_eq!(served(&mut fe), 2, "state unchanged by a refused load");
    // A second check has no transfer left to report on.
    assert!(fe.check_device_state().is_err());
}

#[test]
fn second_transfer_and_ring_start_while_load_awaits_eof_are_refused() {
    let (mut fe, _t) = serve(true);
    handshake(&mut fe, true, true);
    let mut w = start_load(&mut fe);
    let (_r2, w2) = pipe();
    let e = fe
        .set_device_state_fd(TRANSFER_SAVE, 0, w2.as_fd())
        .unwrap_err();
    assert_ne!(nack(e) & 0xff, 0);
    // No ring starts while the device may be restoring.
    let mem = two_region_memory();
    send_mem_table(&mut fe, &mem);
    let q = GuestQueue::new(&mem, 0, true);
    fe.set_vring_num(0, u32::from(QUEUE_SIZE)).unwrap();
    let kick = fe.set_vring_kick(0, Some(bfd(&q.kick))).unwrap_err();
    assert!(kick.is_refusal(), "{kick}");
    // The first transfer is unharmed.
    w.write_all(&snapshot_bytes(41)).unwrap();
    drop(w);
    fe.check_device_state().expect("CHECK_DEVICE_STATE");
    assert_eq!(served(&mut fe), 41);
}

#[test]
fn disconnect_during_load_cancels_transfer_and_closes_its_descriptor() {
    let (mut fe, t) = serve(true);
    handshake(&mut fe, true, true);
    let mut w = start_load(&mut fe);
    w.write_all(b"partial").unwrap();
    drop(fe);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !t.is_finished() {
        assert!(Instant::now() < deadline, "server did not finish");
        std::thread::sleep(Duration::from_millis(10));
    }
    let backend = t.join().expect("server thread");
    // The read end was closed: the write end now fails with EPIPE.
    let e = w.write_all(b"more").unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe);
    assert_eq!(backend.device().served.load(Ordering::SeqCst), 0);
}

#[test]
fn reset_device_during_load_cancels_transfer_and_check_then_fails() {
    let (mut fe, _t) = serve(true);
    handshake(&mut fe, true, true);
    let mut w = start_load(&mut fe);
    fe.reset_device().expect("RESET_DEVICE");
    let e = w.write_all(&snapshot_bytes(9)).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe);
    assert_ne!(nack(fe.check_device_state().unwrap_err()), 0);
}

#[test]
fn check_without_any_transfer_reports_failure() {
    let (mut fe, _t) = serve(true);
    handshake(&mut fe, true, true);
    assert_ne!(nack(fe.check_device_state().unwrap_err()), 0);
    assert_eq!(fe.get_queue_num().unwrap(), 1, "session goes on");
}

#[test]
fn device_without_state_support_does_not_offer_device_state_and_refuses_transfer() {
    let (mut fe, _t) = serve(false);
    handshake(&mut fe, true, true);
    let offered = fe.offered_protocol().expect("protocol features asked");
    assert!(!offered.contains(ProtocolFeatures::DEVICE_STATE));
    assert_save_refused(&mut fe);
    assert_ne!(nack(fe.check_device_state().unwrap_err()), 0);
    assert_eq!(fe.get_queue_num().unwrap(), 1, "session goes on");
}
