//! Bounds-checked helpers shared by both directions' decoders and encoders.

use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::table::FdPolicy;
use crate::{Error, MessageKind};

/// Reads a whole body of exactly `size_of::<T>()` bytes.
pub(crate) fn read_exact<T: FromBytes>(body: &[u8], request: MessageKind) -> Result<T, Error> {
    T::read_from_bytes(body).map_err(|_| Error::SizeMismatch {
        request,
        expected: core::mem::size_of::<T>(),
        got: body.len(),
    })
}

/// Reads a `T` from the start of `body`, returning it and the rest.
pub(crate) fn read_prefix<T: FromBytes>(
    body: &[u8],
    request: MessageKind,
) -> Result<(T, &[u8]), Error> {
    T::read_from_prefix(body).map_err(|_| Error::SizeMismatch {
        request,
        expected: core::mem::size_of::<T>(),
        got: body.len(),
    })
}

/// Checks that the body is empty.
pub(crate) fn expect_empty(body: &[u8], request: MessageKind) -> Result<(), Error> {
    if body.is_empty() {
        Ok(())
    } else {
        Err(Error::SizeMismatch {
            request,
            expected: 0,
            got: body.len(),
        })
    }
}

/// Checks a descriptor count against a policy. `nofd` is the NOFD bit where it applies and
/// `regions` the region count of a memory table.
pub(crate) fn check_fds(
    policy: FdPolicy,
    nfds: usize,
    request: MessageKind,
    nofd: bool,
    regions: usize,
) -> Result<(), Error> {
    let (ok, expected) = match policy {
        FdPolicy::None => (nfds == 0, "none"),
        FdPolicy::One => (nfds == 1, "exactly one"),
        FdPolicy::NoneOrOne => (nfds <= 1, "none or one"),
        FdPolicy::OneUnlessNofd if nofd => (nfds == 0, "none (NOFD set)"),
        FdPolicy::OneUnlessNofd => (nfds == 1, "exactly one (NOFD clear)"),
        FdPolicy::PerRegion => (nfds == regions, "one per memory region"),
    };
    if ok {
        Ok(())
    } else {
        Err(Error::UnexpectedFds {
            request,
            expected,
            got: nfds,
        })
    }
}

/// Writes `value`'s bytes at the start of `buf`.
pub(crate) fn put<T: IntoBytes + Immutable + ?Sized>(
    buf: &mut [u8],
    value: &T,
) -> Result<usize, Error> {
    let bytes = value.as_bytes();
    let have = buf.len();
    let dst = buf.get_mut(..bytes.len()).ok_or(Error::BufferTooSmall {
        need: bytes.len(),
        have,
    })?;
    dst.copy_from_slice(bytes);
    Ok(bytes.len())
}
