//! Queue limits shared by the protocol, the runtime and the front-end.

/// Largest queue size (virtio 1.2, 2.6 "Split Virtqueues": "Queue Size ... The maximum
/// Queue Size value is 32768"; a packed ring's size is bounded the same way, 2.7). Sizes
/// are powers of two ([`valid_queue_size`]).
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// Most queues a device may have: the vring descriptor messages (SET_VRING_KICK, CALL,
/// ERR) carry the index in 8 bits. Devices choose fewer; the runtime refuses a device with
/// more.
pub const MAX_QUEUES: usize = 256;

/// True when `size` is a queue size the virtio spec allows: a power of two from 1 to
/// [`MAX_QUEUE_SIZE`].
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
