//! Writes the fuzz targets' seed corpora from the golden vectors:
//! `cargo test -p vhost-proto --test fuzz_corpus -- --ignored`.
//!
//! Seed layout (see fuzz/fuzz_targets/*.rs): control byte, then the message as on the wire.
//! Control bits 0–3: descriptors; bit 4: XEN_MMAP; bit 5: a reply; bit 6: postcopy.

mod common;

use common::golden;
use std::path::{Path, PathBuf};
use vhost_proto::ReplyShape;

const XEN: u8 = 0x10;
const REPLY: u8 = 0x20;
const POSTCOPY: u8 = 0x40;

fn corpus_dir(target: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn file_name(name: &str) -> String {
    let slug: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let words: Vec<&str> = slug.split('-').filter(|w| !w.is_empty()).collect();
    format!("seed-{}", words.join("-"))
}

fn write(dir: &Path, name: &str, control: u8, bytes: &[u8]) {
    assert!(usize::from(control & 0x0f) <= 8);
    let mut data = vec![control];
    data.extend_from_slice(bytes);
    std::fs::write(dir.join(file_name(name)), data).unwrap();
}

#[test]
#[ignore = "writes files under fuzz/corpus; run on demand"]
fn write_fuzz_seed_corpora() {
    let dir = corpus_dir("proto_frontend");
    let mut n = 0;
    for g in golden::frontend() {
        let xen = if g.ctx.xen_mmap { XEN } else { 0 };
        write(&dir, g.name, g.nfds as u8 | xen, &g.bytes);
        n += 1;
    }
    for g in golden::replies() {
        let postcopy = match g.shape {
            ReplyShape::MemTable | ReplyShape::SingleRegion => POSTCOPY,
            _ => 0,
        };
        write(&dir, g.name, g.nfds as u8 | REPLY | postcopy, &g.bytes);
        n += 1;
    }
    let dir = corpus_dir("proto_backend");
    for g in golden::backend() {
        write(&dir, g.name, g.nfds as u8, &g.bytes);
        n += 1;
    }
    for g in golden::backend_replies() {
        write(&dir, g.name, g.nfds as u8 | REPLY, &g.bytes);
        n += 1;
    }
    assert_eq!(n, 46 + 11 + 11 + 2);
}
