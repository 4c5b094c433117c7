//! The `vhost-user-vsock` binary, spawned as QEMU or a user would.

mod common;

use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};

use common::*;
use vhost_frontend::devices::vsock::op;
use vhost_test_support::Spawned;

const BIN: &str = env!("CARGO_BIN_EXE_vhost-user-vsock");

#[test]
fn print_capabilities_names_the_vsock_type() {
    let doc = vhost_test_support::capabilities(BIN);
    assert_eq!(doc["type"], "vsock");
    assert!(doc["features"].is_array());
}

#[test]
fn missing_cid_or_a_regular_file_at_the_uds_path_is_refused() {
    let scratch = Scratch::new("bin-refuse");
    let out = Command::new(BIN)
        .args(["--socket-path", "/nonexistent/x.sock"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let file = scratch.dir.join("file");
    std::fs::write(&file, b"keep me").unwrap();
    let out = Command::new(BIN)
        .arg("--socket-path")
        .arg(scratch.socket())
        .args(["--guest-cid", "3", "--uds-path"])
        .arg(&file)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a socket"));
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
}

#[test]
fn daemon_serves_a_guest_connection_and_replaces_a_stale_uds_socket() {
    let scratch = Scratch::new("bin-serve");
    // A stale socket file from an earlier run.
    drop(std::os::unix::net::UnixListener::bind(scratch.uds()).unwrap());
    let d = Spawned::quiet(
        BIN,
        &[
            "--socket-path".into(),
            scratch.socket().into_os_string(),
            "--guest-cid".into(),
            "3".into(),
            "--uds-path".into(),
            scratch.uds().into_os_string(),
        ],
    );
    vhost_test_support::wait_for("the uds socket never listened", || {
        UnixStream::connect(scratch.uds()).is_ok()
    });
    let mut g = Guest::new(&scratch.socket());
    let _l = scratch.listen(4000);
    assert_eq!(g.connect(50, 4000, 65536).hdr.op.get(), op::RESPONSE);
    drop(d);
}
