//! virtio wire definitions shared by the device back-ends and the front-end, so that both
//! sides read and write the same layouts: [`blk`] (virtio 1.2, 5.2) and [`vsock`] (virtio
//! 1.2, 5.10).
//!
//! Layouts are `#[repr(C)]` zerocopy structs of little-endian fields, pinned by compile-time
//! size and offset assertions. Pure definitions: no I/O, no `unsafe`, no policy (what a
//! device offers or accepts stays with the device).

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

pub mod blk;
pub mod vsock;

/// Device ids (virtio 1.2, 5 "Device Types").
pub mod device_id {
    /// Block device.
    pub const BLOCK: u32 = 2;
    /// Entropy source.
    pub const RNG: u32 = 4;
    /// Socket device.
    pub const VSOCK: u32 = 19;
}
