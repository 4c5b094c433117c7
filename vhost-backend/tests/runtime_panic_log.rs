//! A daemon's panics are logged through a rate limit (`cli::rate_limit_panics`). Alone in
//! its test binary: the panic hook and the logger are process-wide.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use vhost_backend::runtime::cli::rate_limit_panics;
use vhost_backend::runtime::log_limit::BURST;

static ERRORS: AtomicUsize = AtomicUsize::new(0);
static FIRST: Mutex<String> = Mutex::new(String::new());

struct Counter;

impl log::Log for Counter {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        if record.level() == log::Level::Error && ERRORS.fetch_add(1, Ordering::SeqCst) == 0 {
            *FIRST.lock().unwrap() = record.args().to_string();
        }
    }
    fn flush(&self) {}
}

/// Fifty panics in a row (as a guest could cause, one request after another) give the
/// burst in full and one line saying the rest are counted, not fifty reports.
#[test]
fn panics_are_logged_through_a_rate_limit() {
    log::set_logger(&Counter).unwrap();
    log::set_max_level(log::LevelFilter::Trace);
    rate_limit_panics();
    for i in 0..50 {
        let r = std::thread::Builder::new()
            .name("vhost-worker-0".into())
            .spawn(move || panic!("request {i} went wrong"))
            .unwrap()
            .join();
        assert!(r.is_err());
    }
    let _ = std::panic::take_hook();
    assert_eq!(ERRORS.load(Ordering::SeqCst), BURST as usize + 1);
    let first = FIRST.lock().unwrap().clone();
    assert!(first.contains("'vhost-worker-0'"), "{first}");
    assert!(first.contains("runtime_panic_log.rs"), "{first}");
    assert!(first.contains("request 0 went wrong"), "{first}");
}
