//! `raw::ProcessPingPong` with its far side in a real child process: `vhost-user-load` run
//! again with `raw::FAR_SIDE_ARG` (the binary cargo builds for these tests).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use benches::raw::{FarWait, ProcessPingPong, FAR_SIDE_ARG};
use benches::{pattern, XorShift, BLOCK};

const LOAD: &str = env!("CARGO_BIN_EXE_vhost-user-load");

/// A pattern image of `blocks` blocks in the temporary directory, removed on drop.
struct Image(PathBuf);

impl Image {
    fn new(name: &str, blocks: u64) -> Self {
        let path = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        benches::image::create(&path, blocks * BLOCK as u64).unwrap();
        Image(path)
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Whether process `pid` is gone: no such process, or a zombie nobody reaped yet.
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the command name, which is in parentheses.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The children of `parent` (from every process's `/proc/PID/stat`).
fn children_of(parent: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split(' ').nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            found.push(pid);
        }
    }
    found
}

#[test]
fn process_ping_pong_reads_the_blocks_drawn() {
    let image = Image::new("raw-pp", 64);
    // Block 5 no longer holds its pattern: the near side must see the word there.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&image.0)
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &7u64.to_le_bytes(), 5 * BLOCK as u64).unwrap();
    for wait in [FarWait::Read, FarWait::Epoll] {
        let mut pp = ProcessPingPong::new(Path::new(LOAD), &image.0, wait, 3).unwrap();
        let far = pp.far_pid().unwrap();
        assert_ne!(far, std::process::id());
        let mut offsets = XorShift::new(3);
        let (mut good, mut bad) = (0, 0);
        for _ in 0..200 {
            let (offset, first) = pp.round_trip().unwrap();
            assert_eq!(offset, offsets.below(64) * BLOCK as u64, "{wait:?}");
            if offset == 5 * BLOCK as u64 {
                assert_eq!(first, 7, "{wait:?}");
                bad += 1;
            } else {
                assert_eq!(first, pattern(offset), "{wait:?}");
                good += 1;
            }
        }
        assert!(bad > 0 && good > 0, "{wait:?}: {bad} {good}");
        assert!(!gone(far), "{wait:?}");
        drop(pp);
        // The far process is gone (killed and reaped by the drop).
        assert!(
            std::fs::metadata(format!("/proc/{far}")).is_err(),
            "{wait:?}"
        );
    }
}

#[test]
fn a_far_side_that_cannot_start_is_an_error_not_a_hang() {
    let missing = std::env::temp_dir().join(format!("raw-pp-missing-{}", std::process::id()));
    let e = ProcessPingPong::new(Path::new(LOAD), &missing, FarWait::Read, 1).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}");
    // A program that exits without answering: the parent sees the exit instead of waiting.
    let image = Image::new("raw-pp-start", 4);
    let started = Instant::now();
    let e = ProcessPingPong::new(Path::new("/bin/true"), &image.0, FarWait::Epoll, 1).unwrap_err();
    assert!(e.to_string().contains("exited before it was ready"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn the_far_side_refuses_a_parent_that_is_not_its_own() {
    let image = Image::new("raw-pp-parent", 4);
    // PID 1 is never this test's process: the far side must exit at once, saying so.
    let out = far_side(&image, ["4", "1", "1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the parent is gone"), "{err}");
}

#[test]
fn the_far_process_dies_with_the_load_generator() {
    let image = Image::new("raw-pp-orphan", 64);
    let mut load = Command::new(LOAD)
        .args([
            "--limit",
            "pingpong-procs",
            "--duration",
            "60",
            "--warmup",
            "0",
        ])
        .arg("--image")
        .arg(&image.0)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut far = Vec::new();
    wait_until("the far process runs", || {
        far = children_of(load.id());
        !far.is_empty()
    });
    assert_eq!(far.len(), 1, "{far:?}");
    // Most likely serving kicks by now (the parent-death signal then kills it); if not, it
    // finds at its start that its parent is gone.
    std::thread::sleep(Duration::from_millis(300));
    assert!(!gone(far[0]));
    load.kill().unwrap();
    load.wait().unwrap();
    wait_until("the far process is gone", || gone(far[0]));
}

/// A far process killed without answering: the round trip waiting for its answer fails
/// instead of hanging.
#[test]
fn a_round_trip_to_a_far_process_that_died_is_an_error_not_a_hang() {
    let image = Image::new("raw-pp-killed", 16);
    for wait in [FarWait::Read, FarWait::Epoll] {
        let mut pp = ProcessPingPong::new(Path::new(LOAD), &image.0, wait, 5).unwrap();
        pp.round_trip().unwrap();
        let far = pp.far_pid().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(far as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            // The first round trip may still find the far side alive; one after it cannot.
            let r = pp.round_trip().and_then(|_| pp.round_trip());
            tx.send(r.is_err()).unwrap();
            pp
        });
        let failed = rx
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|_| panic!("{wait:?}: the round trip hangs"));
        assert!(failed, "{wait:?}");
        // Later round trips fail too, at once.
        let mut pp = t.join().unwrap();
        assert!(pp.round_trip().is_err(), "{wait:?}");
    }
}

/// The far side fails while it starts (here: a block count it refuses) and answers
/// `FAILED`: the parent gets that error, not a wait until the start timeout.
#[test]
fn a_far_side_that_fails_while_it_starts_answers_failed() {
    let image = Image::new("raw-pp-startfail", 4);
    let script = Path::new(env!("CARGO_TARGET_TMPDIR")).join("far-side-bad-blocks.sh");
    // The same process (exec) with the arguments it was given, but BLOCKS 0.
    std::fs::write(
        &script,
        format!("#!/bin/sh\nexec '{LOAD}' \"$1\" \"$2\" \"$3\" 0 \"$5\" \"$6\"\n"),
    )
    .unwrap();
    let mut perms = std::fs::metadata(&script).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&script, perms).unwrap();
    let started = Instant::now();
    let e = ProcessPingPong::new(&script, &image.0, FarWait::Read, 1).unwrap_err();
    assert!(
        e.to_string()
            .contains("failed to start (answered 0xfffffffffffffffe)"),
        "{e}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // Run directly: it answers FAILED on its stdout and exits with a failure.
    let out = far_side(&image, ["0", "1", &std::process::id().to_string()]);
    assert!(!out.status.success());
    assert_eq!(out.stdout, 0xffff_ffff_ffff_fffeu64.to_ne_bytes());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("BLOCKS"), "{err}");
}

/// The far side run on its own (reading `image`; `args`: block count, seed, parent pid),
/// its stdin closed; its output.
fn far_side(image: &Image, args: [&str; 3]) -> std::process::Output {
    Command::new(LOAD)
        .arg(FAR_SIDE_ARG)
        .args(["read"])
        .arg(&image.0)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}
