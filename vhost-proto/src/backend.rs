//! Back-end → front-end requests (the back-end channel) and their replies.

use crate::codec::{check_fds, plain_body, put, read_exact, request_enum, Body, Input};
use crate::frontend::Encoded;
use crate::table::FdPolicy;
use crate::wire::*;
use crate::{BackendReq, DecodeContext, Error, HeaderFlags, MessageKind};

/// Generates [`BackendRequest`] and its dispatch from the rows of
/// [`for_each_backend_request!`](crate::for_each_backend_request).
macro_rules! backend_requests {
    ($($rows:tt)*) => {
        request_enum! {
            /// A decoded back-end request.
            BackendRequest [] ['d] 'd 'static, BackendReq, Backend;
            $($rows)*
        }
    };
}

crate::for_each_backend_request!(backend_requests);

impl<'a> Body<'a> for VringArea {
    fn decode(input: Input<'a>) -> Result<Self, Error> {
        let a: VringArea = read_exact(input.body, input.kind)?;
        // "Bits (0-7) of the payload contain the vring index. Bit 8 is the invalid FD flag."
        if a.u64_index_flags & !(VRING_INDEX_MASK | VRING_NOFD) != 0 {
            return Err(Error::InvalidField {
                request: input.kind,
                field: "u64",
                why: "bits above NOFD (8) are reserved",
            });
        }
        Ok(a)
    }

    fn encode(&self, _: MessageKind, body: &mut [u8]) -> Result<(usize, &'a [u8]), Error> {
        Ok((put(body, self)?, &[]))
    }

    fn check_fds(&self, policy: FdPolicy, nfds: usize, kind: MessageKind) -> Result<(), Error> {
        check_fds(
            policy,
            nfds,
            kind,
            self.u64_index_flags & VRING_NOFD != 0,
            0,
        )
    }

    fn fd_count(&self, _: FdPolicy) -> usize {
        usize::from(self.u64_index_flags & VRING_NOFD == 0)
    }
}

plain_body!(ShmemMap);

/// BACKEND_SHMEM_UNMAP: a non-empty range of the shared memory region.
fn shmem_range(m: &ShmemMap, kind: MessageKind) -> Result<(), Error> {
    if m.len == 0 || m.shm_offset.checked_add(m.len).is_none() {
        return Err(Error::InvalidField {
            request: kind,
            field: "len",
            why: "zero, or shm_offset + len overflows",
        });
    }
    Ok(())
}

/// BACKEND_SHMEM_MAP: the range, and a file range that does not overflow either.
fn shmem_map(m: &ShmemMap, kind: MessageKind) -> Result<(), Error> {
    shmem_range(m, kind)?;
    if m.fd_offset.checked_add(m.len).is_none() {
        return Err(Error::InvalidField {
            request: kind,
            field: "fd_offset",
            why: "fd_offset + len overflows",
        });
    }
    Ok(())
}

impl BackendRequest {
    /// Decodes a body whose header passed [`crate::Header::check_backend_request`].
    pub fn decode(req: BackendReq, body: &[u8], nfds: usize) -> Result<Self, Error> {
        Self::decode_with(req, body, nfds, DecodeContext::default())
    }

    /// Encodes this request into `body`.
    pub fn encode(&self, flags: HeaderFlags, body: &mut [u8]) -> Result<Encoded<'static>, Error> {
        let (n, payload) = self.encode_body(body)?;
        Ok(Encoded::new(self.code() as u32, flags, n, payload))
    }
}

/// Decodes the u64 body of a reply (or ack) to a back-end request; `nfds` may be 1 only for
/// BACKEND_SHARED_OBJECT_LOOKUP.
pub fn decode_backend_reply(req: BackendReq, body: &[u8], nfds: usize) -> Result<u64, Error> {
    let kind = MessageKind::Backend(req);
    let policy = if req.spec().reply_fd {
        FdPolicy::NoneOrOne
    } else {
        FdPolicy::None
    };
    check_fds(policy, nfds, kind, false, 0)?;
    Ok(read_exact::<U64Body>(body, kind)?.value)
}

/// Encodes a u64 reply (or ack) to a back-end request.
pub fn encode_backend_reply(
    req: BackendReq,
    value: u64,
    body: &mut [u8],
) -> Result<Encoded<'static>, Error> {
    let n = put(body, &U64Body { value })?;
    Ok(Encoded::new(req as u32, HeaderFlags::REPLY, n, &[]))
}
