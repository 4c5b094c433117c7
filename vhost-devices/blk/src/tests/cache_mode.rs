//! The `writeback` configuration field reports the cache mode in force: writeback only while
//! FLUSH is negotiated (or features are not yet acked) and the driver has not chosen
//! writethrough.

use super::*;
use config::features::{CONFIG_WCE, FLUSH};

const VERSION_1: u64 = 1 << 32;

fn writeback_field(h: &Harness) -> u8 {
    let mut wb = [0xeeu8];
    assert!(h.dev.read_config_space(WRITEBACK_OFFSET as u32, &mut wb));
    assert_eq!(wb[0], h.dev.config_space().writeback);
    wb[0]
}

#[test]
fn writeback_reads_one_before_negotiation_and_with_flush_acked() {
    let h = Harness::new(false);
    assert_eq!(writeback_field(&h), 1);
    h.dev.ack_features(VERSION_1 | 1 << FLUSH | 1 << CONFIG_WCE);
    assert_eq!(writeback_field(&h), 1);
    assert!(!h.dev.writethrough());
}

#[test]
fn writeback_reads_zero_when_flush_not_acked_even_after_writing_one() {
    let h = Harness::new(false);
    h.dev.ack_features(VERSION_1 | 1 << CONFIG_WCE);
    assert_eq!(writeback_field(&h), 0);
    h.dev.write_config_space(32, &[1]).unwrap();
    assert_eq!(writeback_field(&h), 0);
    assert!(h.dev.writethrough());
}

#[test]
fn writeback_follows_set_config_when_flush_acked() {
    let h = Harness::new(false);
    h.dev.ack_features(VERSION_1 | 1 << FLUSH | 1 << CONFIG_WCE);
    h.dev.write_config_space(32, &[0]).unwrap();
    assert_eq!(writeback_field(&h), 0);
    assert!(h.dev.writethrough());
    h.dev.write_config_space(32, &[1]).unwrap();
    assert_eq!(writeback_field(&h), 1);
    assert!(!h.dev.writethrough());
}

#[test]
fn reset_restores_writeback_after_writethrough_was_chosen() {
    let h = Harness::new(false);
    h.dev.ack_features(VERSION_1 | 1 << FLUSH | 1 << CONFIG_WCE);
    h.dev.write_config_space(32, &[0]).unwrap();
    VirtioDevice::reset(&h.dev);
    assert_eq!(writeback_field(&h), 1);
    h.dev.ack_features(VERSION_1);
    assert_eq!(writeback_field(&h), 0);
}
