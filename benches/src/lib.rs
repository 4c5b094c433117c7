//! Shared pieces of the benchmarks and of the `vhost-user-load` load generator.
//!
//! - [`pattern`]: the image contents every reader can check (each 8-byte word holds its own
//!   byte offset, mixed with a key), written by [`image::create`] and by random writes.
//! - [`load`]: a queue-depth-N request engine over a [`vhost_frontend::Session`] for blk
//!   random reads and writes and rng fills; allocation-free once built.
//! - [`inproc`]: a device served by the runtime's daemon on a thread of this process, over
//!   a connected socket pair.
//! - [`raw`]: the machine's limits measured without any of the workspace's code: a raw
//!   socketpair ping-pong of the same bytes as a vhost-user request and reply, an eventfd
//!   ping-pong between two threads with a `pread` (or `getrandom`) on the far side, the same
//!   between two processes, and the bare `pread` rate.

pub mod image;
pub mod inproc;
pub mod load;
pub mod raw;
pub mod report;

/// The `main` of a load tool: parses `C`, runs `run` and reports its failure as
/// `program: error` on stderr with the failure exit code.
pub fn tool_main<C: clap::Parser, E: std::fmt::Display>(
    program: &str,
    run: impl FnOnce(&C) -> Result<(), E>,
) -> std::process::ExitCode {
    let cli = C::parse();
    match run(&cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{program}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Size of one request's data buffer and of one image block.
pub const BLOCK: usize = 4096;

/// Key mixed into every word of a pattern image.
pub const PATTERN_KEY: u64 = 0xa5c3_96e1_0f5e_ed11;

/// The 8-byte word at byte `offset` (a multiple of 8) of a pattern image.
#[inline]
pub fn pattern(offset: u64) -> u64 {
    offset ^ PATTERN_KEY
}

/// Fills `buf` with the pattern of the image bytes starting at `offset` (a multiple of 8).
pub fn fill_pattern(buf: &mut [u8], offset: u64) {
    for (i, word) in buf.chunks_exact_mut(8).enumerate() {
        word.copy_from_slice(&pattern(offset + 8 * i as u64).to_le_bytes());
    }
}

/// Whether `buf` holds the pattern of the image bytes starting at `offset`.
pub fn check_pattern(buf: &[u8], offset: u64) -> bool {
    buf.chunks_exact(8).enumerate().all(|(i, word)| {
        let want = pattern(offset + 8 * i as u64).to_le_bytes();
        word == want
    })
}

/// A xorshift64 generator: cheap, deterministic, never zero for a non-zero seed.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator from `seed` (0 is replaced by a fixed odd constant).
    pub fn new(seed: u64) -> Self {
        XorShift(if seed == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            seed
        })
    }

    /// The next value.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A value below `n` (`n > 0`; the tiny modulo bias does not matter here).
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}
