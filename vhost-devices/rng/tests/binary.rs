//! The `vhost-user-rng` binary, spawned as QEMU would spawn it.

mod common;

use common::*;
use nix::sys::signal::Signal;
use vhost_test_support::Spawned;

const BIN: &str = env!("CARGO_BIN_EXE_vhost-user-rng");

#[test]
fn print_capabilities_is_json_of_type_rng() {
    let v = vhost_test_support::capabilities(BIN);
    assert_eq!(v["type"], "rng");
    assert!(v["features"].is_array(), "{v}");
}

#[test]
fn spawned_daemon_serves_entropy_logs_the_qemu_command_and_exits_on_sigterm() {
    let scratch = Scratch::new("bin");
    let sock = scratch.socket();
    let mut d = Spawned::serving(BIN, &sock, &[]);
    d.wait_line("-device vhost-user-rng-pci,chardev=rng0");
    let mut s = connect(&sock, options);
    let buf = s.memory().alloc(4096, 8).unwrap();
    let used = s.round_trip(0, &[(buf, 4096, true)], TIMEOUT).unwrap();
    assert_eq!(used.len, 4096);
    assert!(read_guest(&s, buf, 4096).iter().any(|&b| b != 0));
    drop(s);
    d.signal(Signal::SIGTERM);
    assert!(d.wait_exit().success());
}

#[test]
fn spawned_daemon_with_a_missing_source_fails_at_start() {
    let scratch = Scratch::new("badsrc");
    let sock = scratch.socket();
    let mut d = Spawned::serving(BIN, &sock, &["--source", "/nonexistent/entropy"]);
    let status = d.wait_exit();
    assert!(!status.success());
    assert!(!sock.exists(), "no socket for a daemon that failed");
}

#[test]
fn a_directory_or_an_empty_file_as_source_is_refused_at_start_with_the_reason() {
    let scratch = Scratch::new("dirsrc");
    let sock = scratch.socket();
    let empty = sock.with_file_name("empty-source");
    std::fs::write(&empty, b"").unwrap();
    let dir = sock.parent().unwrap().to_path_buf();
    for (source, why) in [(&dir, "is a directory"), (&empty, "is an empty file")] {
        let out = std::process::Command::new(BIN)
            .args(["--socket-path", sock.to_str().unwrap(), "--source"])
            .arg(source)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(why), "{err}");
        assert!(err.contains(source.to_str().unwrap()), "{err}");
        assert!(!sock.exists(), "no socket for a daemon that failed");
    }
}

/// `--socket-count 3`: three devices on PATH0, PATH1, PATH2, all served at once; SIGTERM
/// removes every socket.
#[test]
fn socket_count_serves_a_device_on_each_numbered_socket_at_once() {
    let scratch = Scratch::new("count");
    let sock = scratch.socket();
    let mut d = Spawned::serving(BIN, &sock, &["--socket-count", "3"]);
    d.wait_line("3 devices on");
    let paths: Vec<_> = (0..3)
        .map(|i| std::path::PathBuf::from(format!("{}{i}", sock.display())))
        .collect();
    assert!(!sock.exists(), "no socket at the bare path");
    let mut sessions: Vec<_> = paths.iter().map(|p| connect(p, options)).collect();
    for s in &mut sessions {
        let buf = s.memory().alloc(4096, 8).unwrap();
        let used = s.round_trip(0, &[(buf, 4096, true)], TIMEOUT).unwrap();
        assert_eq!(used.len, 4096);
        assert!(read_guest(s, buf, 4096).iter().any(|&b| b != 0));
    }
    drop(sessions);
    d.signal(Signal::SIGTERM);
    assert!(d.wait_exit().success());
    assert!(
        paths.iter().all(|p| !p.exists()),
        "socket files left behind"
    );
}
