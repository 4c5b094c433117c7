//! The device as a process sees it: no CPU burnt while nothing can progress (an rx queue
//! that is not running, a listening socket whose connections cannot be accepted), and no
//! SIGPIPE raised at a program that embeds the device when a host peer goes away.

mod common;

use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{SigSet, Signal};
use vhost_device_vsock::MAX_HANDSHAKES;
use vhost_frontend::devices::vsock::{op, VsockHeader};

const BIN: &str = env!("CARGO_BIN_EXE_vhost-user-vsock");

/// The CPU measurements run one at a time (each has the machine to itself as far as this
/// binary goes).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The daemon binary, under a shell that sets its descriptor limit when `nofile` is given.
fn spawn_daemon(scratch: &Scratch, nofile: Option<u32>) -> Child {
    spawn_daemon_to(scratch, nofile, Stdio::null())
}

/// [`spawn_daemon`], its log (warnings and up) going to `stderr`.
fn spawn_daemon_to(scratch: &Scratch, nofile: Option<u32>, stderr: Stdio) -> Child {
    let limit = nofile
        .map(|n| format!("ulimit -n {n}; "))
        .unwrap_or_default();
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{limit}exec \"$0\" --socket-path \"$1\" --guest-cid 3 --uds-path \"$2\""
        ))
        .arg(BIN)
        .arg(scratch.socket())
        .arg(scratch.uds())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    let deadline = Instant::now() + TIMEOUT;
    while !scratch.uds().exists() {
        assert!(Instant::now() < deadline, "the uds socket never appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// User + system CPU ticks of process `pid`.
fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// CPU ticks `pid` uses in one second (100 ticks = one core busy).
fn ticks_per_second(pid: u32) -> u64 {
    let t0 = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(1));
    cpu_ticks(pid) - t0
}

#[test]
fn a_reply_owed_to_an_rx_queue_that_is_not_running_does_not_spin_the_worker() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let scratch = Scratch::new("rxoff");
    let mut child = spawn_daemon(&scratch, None);
    let mut g = Guest::new(&scratch.socket());
    g.s.frontend().set_vring_enable(0, false).unwrap();
    // A REQUEST to a port nobody listens on: a reset is owed to the disabled rx queue.
    g.send(&VsockHeader::to_host(CID, 7, 9999, op::REQUEST), &[]);
    std::thread::sleep(Duration::from_millis(200));
    let busy = ticks_per_second(child.id());
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(busy < 20, "the worker spins: {busy} ticks in 1 s");
}

#[test]
fn host_connections_the_daemon_has_no_descriptors_to_accept_do_not_spin_the_worker() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let scratch = Scratch::new("emfile");
    let mut child = spawn_daemon(&scratch, Some(64));
    let _g = Guest::new(&scratch.socket());
    // More host connections than the daemon has descriptors left: the rest wait in the
    // listening socket's backlog.
    let conns: Vec<UnixStream> = (0..100)
        .map(|_| UnixStream::connect(scratch.uds()).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let busy = ticks_per_second(child.id());
    child.kill().unwrap();
    child.wait().unwrap();
    drop(conns);
    assert!(busy < 20, "the worker spins at EMFILE: {busy} ticks in 1 s");
}

#[test]
fn host_connections_refused_past_the_handshake_cap_do_not_flood_the_log() {
    let scratch = Scratch::new("refusedlog");
    let log_path = scratch.dir.join("daemon.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = spawn_daemon_to(&scratch, None, Stdio::from(log));
    let _g = Guest::new(&scratch.socket());
    // Idle host processes: the first MAX_HANDSHAKES wait for their line, the rest are
    // refused one by one.
    let conns: Vec<UnixStream> = (0..MAX_HANDSHAKES + 200)
        .map(|_| UnixStream::connect(scratch.uds()).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    child.kill().unwrap();
    child.wait().unwrap();
    drop(conns);
    let text = std::fs::read_to_string(&log_path).unwrap();
    let refused = text.lines().filter(|l| l.contains("refused")).count();
    assert!(refused >= 1, "no refusal logged at all:\n{text}");
    assert!(
        refused <= 10,
        "{refused} log lines for 200 refused host connections"
    );
}

/// Whether some thread of this process has SIGPIPE pending.
fn sigpipe_pending() -> bool {
    let bit = 1u64 << (Signal::SIGPIPE as i32 - 1);
    std::fs::read_dir("/proc/self/task").unwrap().any(|t| {
        let status = std::fs::read_to_string(t.unwrap().path().join("status")).unwrap_or_default();
        status.lines().any(|l| {
            (l.starts_with("SigPnd:") || l.starts_with("ShdPnd:"))
                && u64::from_str_radix(l[7..].trim(), 16).unwrap_or(0) & bit != 0
        })
    })
}

#[test]
fn writing_to_a_host_peer_that_went_away_raises_no_sigpipe() {
    // Blocked rather than ignored (as Rust programs do), a SIGPIPE stays pending where it
    // can be seen; the daemon's threads inherit the mask.
    let mut set = SigSet::empty();
    set.add(Signal::SIGPIPE);
    std::thread::spawn(move || {
        set.thread_block().unwrap();
        let scratch = Scratch::new("sigpipe");
        let _d = InProcess::start(&scratch);
        let mut g = Guest::new(&scratch.socket());
        let l = scratch.listen(2000);
        assert_eq!(g.connect(100, 2000, 65536).hdr.op.get(), op::RESPONSE);
        let (h, _) = l.accept().unwrap();
        drop(h);
        std::thread::sleep(Duration::from_millis(100));
        // The device writes to a stream whose peer is gone: EPIPE, and a reset.
        g.write((100, 2000), b"to nobody", 4096);
        let mut reset = false;
        while let Some(p) = g.recv_within(Duration::from_secs(2)) {
            if p.hdr.op.get() == op::RST {
                reset = true;
                break;
            }
        }
        assert!(reset, "no reset after writing to a closed host stream");
        assert!(!sigpipe_pending(), "the device raised SIGPIPE");
    })
    .join()
    .unwrap();
}
