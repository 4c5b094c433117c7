//! Queue limits shared by the protocol, the runtime and the front-end.

/// Largest queue size, for both ring layouts (virtio 1.2, 2.7 "Split Virtqueues": "The
/// maximum Queue Size value is 32768"; 2.8 "Packed Virtqueues": "Packed virtqueues support
/// up to 2^15 entries each"). A split ring's size is also a power of two
/// ([`valid_queue_size`]); a packed ring's may be any size from 1 to this.
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// Most queues a device may have: the vring descriptor messages (SET_VRING_KICK, CALL,
/// ERR) carry the index in 8 bits. Devices choose fewer; the runtime refuses a device with
/// more.
pub const MAX_QUEUES: usize = 256;

/// True when `size` is a valid split-ring size (virtio 1.2, 2.7 "Split Virtqueues": "Queue
/// Size value is always a power of 2"): a power of two from 1 to [`MAX_QUEUE_SIZE`].
///
/// This is the split rule only: a packed ring may have any size from 1 to
/// [`MAX_QUEUE_SIZE`] (2.8). It is also what a device's maximum queue size and queue-size
/// options are held to, since that maximum must suit either layout the driver picks.
pub const fn valid_queue_size(size: u16) -> bool {
    size.is_power_of_two() && size <= MAX_QUEUE_SIZE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_sizes_are_powers_of_two_up_to_32768() {
        assert!(valid_queue_size(1) && valid_queue_size(256) && valid_queue_size(32768));
        assert!(!valid_queue_size(0) && !valid_queue_size(3) && !valid_queue_size(384));
    }
}
