//! The `vhost-user-blk` binary, spawned as QEMU would spawn it.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;
use vhost_frontend::devices::blk::{BlkConfig as ConfigView, BlkRequests};
use vhost_test_support::Spawned;

const BIN: &str = env!("CARGO_BIN_EXE_vhost-user-blk");

/// Waits for the line naming the scratch image the daemon serves; returns its path.
fn scratch_image(d: &Spawned) -> PathBuf {
    let line = d.wait_line("scratch image at ");
    line.split("scratch image at ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .into()
}

#[test]
fn print_capabilities_prints_json_with_type_block() {
    let v = vhost_test_support::capabilities(BIN);
    assert_eq!(v["type"], "block");
    let features = v["features"].as_array().unwrap();
    assert!(features.contains(&serde_json::json!("read-only")));
    assert!(features.contains(&serde_json::json!("blk-file")));
}

#[test]
fn invalid_queue_size_fails_early_with_nonzero_status() {
    let out = Command::new(BIN)
        .args([
            "--socket-path",
            "/nonexistent/x.sock",
            "--queue-size",
            "2048",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn spawned_daemon_serves_io_across_reconnects_and_exits_on_sigterm() {
    let scratch = Scratch::new("bin");
    let image = scratch.image(1 << 20);
    let sock = scratch.socket();
    let mut d = Spawned::serving(
        BIN,
        &sock,
        &[
            "--blk-file",
            image.to_str().unwrap(),
            "--num-queues",
            "2",
            "--serial",
            "spawned",
        ],
    );
    d.wait_line("vhost-user-blk-pci");
    for round in 0..2u64 {
        let mut s = connect(&sock, || options(2));
        let mut reqs = BlkRequests::new(&s, 1, 2, 4096).unwrap();
        let mut buf = vec![0u8; 4096];
        reqs.read(&mut s, 8 + round, &mut buf, TIMEOUT).unwrap();
        let start = (8 + round as usize) * 512;
        let want: Vec<u8> = (start..start + 4096).map(pattern).collect();
        assert_eq!(buf, want);
        assert_eq!(&reqs.get_id(&mut s, TIMEOUT).unwrap()[..7], b"spawned");
    }
    d.signal(Signal::SIGTERM);
    let status = d.wait_exit();
    assert!(status.success(), "{status:?}");
    assert!(!sock.exists(), "socket file left behind");
}

#[test]
fn flushed_write_survives_the_daemon_being_killed() {
    let scratch = Scratch::new("flush");
    let image = scratch.image(1 << 20);
    let sock = scratch.socket();
    let d = Spawned::serving(BIN, &sock, &["--blk-file", image.to_str().unwrap()]);
    let mut s = connect(&sock, || options(1));
    let mut reqs = BlkRequests::new(&s, 0, 1, 4096).unwrap();
    let data = [0xc3u8; 4096];
    reqs.write(&mut s, 40, &data, TIMEOUT).unwrap();
    reqs.flush(&mut s, TIMEOUT).unwrap();
    d.signal(Signal::SIGKILL);
    drop(d);
    let file = std::fs::read(&image).unwrap();
    assert_eq!(&file[40 * 512..40 * 512 + 4096], &data[..]);
}

#[test]
fn without_blk_file_serves_a_scratch_gib_and_removes_it_on_exit() {
    let scratch = Scratch::new("noimage");
    let sock = scratch.socket();
    let mut d = Spawned::serving(BIN, &sock, &[]);
    let path = scratch_image(&d);
    assert!(path.exists(), "{} missing", path.display());
    let s = connect(&sock, || options(1));
    let cfg = ConfigView::parse(s.config().unwrap()).unwrap();
    assert_eq!(cfg.capacity, (1u64 << 30) / 512);
    drop(s);
    d.signal(Signal::SIGTERM);
    assert!(d.wait_exit().success());
    assert!(!path.exists(), "{} not removed", path.display());
}

#[test]
fn sighup_and_sigquit_exit_cleanly_removing_the_socket_and_the_scratch_image() {
    for sig in [Signal::SIGHUP, Signal::SIGQUIT] {
        let scratch = Scratch::new("hup");
        let sock = scratch.socket();
        // Started with both signals at their default action, whatever this test inherited
        // (under `nohup` SIGHUP arrives ignored, and the daemon keeps it so: see below).
        let sock_arg = sock.to_str().unwrap();
        let mut d = Spawned::start(
            "env",
            &["--default-signal=HUP,QUIT", BIN, "--socket-path", sock_arg],
        );
        let path = scratch_image(&d);
        d.wait_line("vhost-user-blk-pci");
        d.signal(sig);
        let status = d.wait_exit();
        assert!(status.success(), "{sig:?}: {status:?}");
        assert!(!sock.exists(), "{sig:?}: socket file left behind");
        assert!(!path.exists(), "{sig:?}: {} not removed", path.display());
    }
}

#[test]
fn a_second_front_end_waiting_on_the_busy_socket_is_logged() {
    let scratch = Scratch::new("second");
    let image = scratch.image(1 << 20);
    let sock = scratch.socket();
    let d = Spawned::serving(BIN, &sock, &["--blk-file", image.to_str().unwrap()]);
    d.wait_line("vhost-user-blk-pci");
    let first = connect(&sock, || options(1));
    let _second = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    d.wait_line("another front-end is waiting");
    drop(first);
}

#[test]
fn failing_requests_are_logged_a_few_times_then_summarised_not_one_line_each() {
    let scratch = Scratch::new("flood");
    let image = scratch.image(1 << 20);
    let sock = scratch.socket();
    let mut d = Spawned::serving(BIN, &sock, &["--blk-file", image.to_str().unwrap()]);
    d.wait_line("vhost-user-blk-pci");
    let mut s = connect(&sock, || options(1));
    let mut reqs = BlkRequests::new(&s, 0, 1, 4096).unwrap();
    // The image shrinks under the daemon: every read past the new end fails on the host.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap()
        .set_len(0)
        .unwrap();
    let mut buf = vec![0u8; 4096];
    for _ in 0..50 {
        assert!(reqs.read(&mut s, 8, &mut buf, TIMEOUT).is_err());
    }
    // The session's end resets the device, which summarises what it did not log.
    drop(s);
    let mut full = 0;
    let deadline = Instant::now() + TIMEOUT;
    let summary = loop {
        let left = deadline
            .checked_duration_since(Instant::now())
            .expect("no summary line");
        let line = d.next_line(left).expect("no summary line");
        if line.contains("request failed on the image") {
            full += 1;
        }
        if line.contains("more failed requests") {
            break line;
        }
    };
    assert!(full <= 5, "{full} failure lines for 50 failed requests");
    let counted: usize = summary
        .split(" more failed requests")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {summary:?}"));
    // Periods of 10 s may split them, but every failure is logged or counted.
    assert!(
        full + counted <= 50 && counted >= 45 - 5,
        "{full} + {counted}"
    );
    d.signal(Signal::SIGTERM);
    assert!(d.wait_exit().success());
}

/// Runs the daemon with `args` and returns its stderr, after checking it failed.
fn start_error(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "{args:?} started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn startup_errors_name_the_path_or_descriptor_and_the_reason() {
    let scratch = Scratch::new("starterr");
    let image = scratch.image(1 << 20);
    let img = image.to_str().unwrap();
    // A socket in a directory that does not exist.
    let err = start_error(&[
        "--socket-path",
        "/nonexistent/dir/x.sock",
        "--blk-file",
        img,
    ]);
    assert!(err.contains("/nonexistent/dir/x.sock"), "{err}");
    assert!(err.contains("does the directory exist"), "{err}");
    assert!(
        !err.contains("serving"),
        "no success line before the failure: {err}"
    );
    // A regular file as the socket path: kept, and said so.
    let err = start_error(&["--socket-path", img, "--blk-file", img]);
    assert!(err.contains("exists and is not a socket"), "{err}");
    assert!(image.exists());
    // Standard error as --fd: refused before it is taken over, so the message is seen.
    let err = start_error(&["--fd", "2", "--blk-file", img]);
    assert!(err.contains("--fd 2 is standard error"), "{err}");
    // An empty image.
    let empty = scratch.image(0);
    let err = start_error(&[
        "--socket-path",
        scratch.socket().to_str().unwrap(),
        "--blk-file",
        empty.to_str().unwrap(),
    ]);
    assert!(err.contains("no whole 512-byte sector"), "{err}");
    assert!(err.contains(empty.to_str().unwrap()), "{err}");
}

#[test]
fn help_shows_the_ranges_of_numeric_options() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("1 to 256"), "{help}");
    assert!(help.contains("1 to 1024"), "{help}");
    assert!(help.contains("512 to 65536"), "{help}");
}

#[test]
fn sighup_stays_ignored_when_the_daemon_was_started_with_it_ignored() {
    let scratch = Scratch::new("nohup");
    let image = scratch.image(1 << 20);
    let sock = scratch.socket();
    // As `nohup` starts it: SIGHUP ignored, inherited across exec.
    let mut d = Spawned::quiet(
        "sh",
        &[
            "-c",
            "trap '' HUP; exec \"$0\" \"$@\"",
            BIN,
            "--socket-path",
            sock.to_str().unwrap(),
            "--blk-file",
            image.to_str().unwrap(),
        ],
    );
    vhost_test_support::wait_for("daemon did not start", || sock.exists());
    d.signal(Signal::SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    assert!(d.running(), "SIGHUP stopped it");
    let s = connect(&sock, || options(1));
    drop(s);
    d.signal(Signal::SIGTERM);
    assert!(d.wait_exit().success());
}

#[test]
fn an_inherited_descriptor_that_is_not_a_socket_is_named_in_the_error() {
    let scratch = Scratch::new("fdfile");
    let image = scratch.image(1 << 20);
    let out = Command::new("sh")
        .args([
            "-c",
            "exec 9<\"$1\"; exec \"$0\" --fd 9 --blk-file \"$1\"",
            BIN,
        ])
        .arg(&image)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--fd 9: not a socket"), "{err}");
}

#[test]
fn an_image_that_is_not_a_whole_number_of_sectors_is_served_with_a_warning() {
    let scratch = Scratch::new("partial");
    let image = scratch.image(1000);
    let sock = scratch.socket();
    let d = Spawned::serving(BIN, &sock, &["--blk-file", image.to_str().unwrap()]);
    let line = d.wait_line("not a whole number of 512-byte sectors");
    assert!(line.contains("the last 488 bytes are not served"), "{line}");
    let s = connect(&sock, || options(1));
    let cfg = ConfigView::parse(s.config().unwrap()).unwrap();
    assert_eq!(cfg.capacity, 1);
}

/// Starts `BIN ARGS` the way systemd socket activation does: a listening socket at `sock`
/// on descriptor 3, `LISTEN_FDS=1`, `LISTEN_PID` the daemon's pid (python3 binds, then
/// execs the daemon in the same process).
fn socket_activated(sock: &std::path::Path, args: &[&str]) -> Spawned {
    const ACTIVATE: &str = "import os, socket, sys\n\
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n\
        s.bind(sys.argv[1]); s.listen(8)\n\
        os.dup2(s.fileno(), 3); os.set_inheritable(3, True)\n\
        os.environ['LISTEN_FDS'] = '1'; os.environ['LISTEN_PID'] = str(os.getpid())\n\
        os.execv(sys.argv[2], sys.argv[2:])\n";
    let mut full = vec!["-c", ACTIVATE, sock.to_str().unwrap(), BIN];
    full.extend_from_slice(args);
    Spawned::start("python3", &full)
}

#[test]
fn socket_activation_serves_the_listening_socket_systemd_passes() {
    let scratch = Scratch::new("sdactivate");
    let image = scratch.image(1 << 20);
    let sock = scratch.socket();
    let mut d = socket_activated(&sock, &["--blk-file", image.to_str().unwrap()]);
    d.wait_line("serving the socket passed by systemd (descriptor 3)");
    for round in 0..2u64 {
        let mut s = connect(&sock, || options(1));
        let mut reqs = BlkRequests::new(&s, 0, 1, 4096).unwrap();
        let mut buf = vec![0u8; 4096];
        reqs.read(&mut s, 8 + round, &mut buf, TIMEOUT).unwrap();
        let start = (8 + round as usize) * 512;
        let want: Vec<u8> = (start..start + 4096).map(pattern).collect();
        assert_eq!(buf, want);
    }
    d.signal(Signal::SIGTERM);
    assert!(d.wait_exit().success());
}

/// `--export` twice: one process serves two disks, each on its own socket with its own
/// options, both front-ends connected at once; SIGTERM removes both sockets.
#[test]
fn two_exports_serve_their_own_images_at_once() {
    let a = Scratch::new("export-a");
    let b = Scratch::new("export-b");
    let (img_a, img_b) = (a.image(1 << 20), b.image(2 << 20));
    let (sock_a, sock_b) = (a.socket(), b.socket());
    let mut d = Spawned::start(
        BIN,
        &[
            "--export",
            &format!(
                "socket={},file={},serial=disk-a",
                sock_a.display(),
                img_a.display()
            ),
            "--export",
            &format!(
                "socket={},file={},read-only=on,num-queues=2,serial=disk-b",
                sock_b.display(),
                img_b.display()
            ),
        ],
    );
    d.wait_line("2 exports from this process");
    let mut sa = connect(&sock_a, || options(1));
    let mut sb = connect(&sock_b, || options(2));
    let capacity =
        |s: &vhost_frontend::Session| ConfigView::parse(s.config().unwrap()).unwrap().capacity;
    assert_eq!(capacity(&sa), 2048, "export a: its 1 MiB image");
    assert_eq!(capacity(&sb), 4096, "export b: its 2 MiB image");
    let mut ra = BlkRequests::new(&sa, 0, 2, 4096).unwrap();
    let mut rb = BlkRequests::new(&sb, 1, 2, 4096).unwrap();
    assert_eq!(&ra.get_id(&mut sa, TIMEOUT).unwrap()[..6], b"disk-a");
    assert_eq!(&rb.get_id(&mut sb, TIMEOUT).unwrap()[..6], b"disk-b");
    let mut buf = vec![0u8; 4096];
    rb.read(&mut sb, 3000, &mut buf, TIMEOUT).unwrap();
    let want: Vec<u8> = (3000 * 512..3000 * 512 + 4096).map(pattern).collect();
    assert_eq!(buf, want);
    // Read-only is export b's alone.
    assert!(
        rb.write(&mut sb, 0, &buf, TIMEOUT).is_err(),
        "export b is read-only"
    );
    ra.write(&mut sa, 0, &buf, TIMEOUT).unwrap();
    drop((sa, sb));
    d.signal(Signal::SIGTERM);
    assert!(d.wait_exit().success());
    assert!(
        !sock_a.exists() && !sock_b.exists(),
        "socket files left behind"
    );
}

/// The startup lines are logged under the program's own target, so
/// `RUST_LOG=warn,vhost_user_blk=info` shows them.
#[test]
fn startup_lines_are_logged_under_the_programs_target() {
    use std::io::{BufRead, BufReader};
    let scratch = Scratch::new("log-target");
    let image = scratch.image(1 << 20);
    let sock = scratch.socket();
    let mut child = Command::new(BIN)
        .args(["--socket-path", sock.to_str().unwrap()])
        .args(["--blk-file", image.to_str().unwrap()])
        .env("RUST_LOG", "warn,vhost_user_blk=info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut serving, mut hint) = (false, false);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => {
                serving |= line.contains("serving ") && line.contains("vhost_user_blk");
                hint |= line.contains("point QEMU at it with");
                if serving && hint {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(serving, "no \"serving\" line under target vhost_user_blk");
    assert!(hint, "no QEMU hint under target vhost_user_blk");
}
