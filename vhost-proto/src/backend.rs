//! Back-end → front-end requests (the back-end channel) and their replies.

use crate::codec::{check_fds, expect_empty, put, read_exact};
use crate::frontend::Encoded;
use crate::table::FdPolicy;
use crate::wire::*;
use crate::{BackendReq, Error, HeaderFlags, MessageKind};

/// A decoded back-end request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum BackendRequest {
    IotlbMsg(IotlbMsg),
    ConfigChangeMsg,
    VringHostNotifierMsg(VringArea),
    VringCall(VringState),
    VringErr(VringState),
    SharedObjectAdd(SharedObject),
    SharedObjectRemove(SharedObject),
    SharedObjectLookup(SharedObject),
    ShmemMap(ShmemMap),
    ShmemUnmap(ShmemMap),
}

impl BackendRequest {
    /// Decodes a body whose header passed [`crate::Header::check_backend_request`].
    pub fn decode(req: BackendReq, body: &[u8], nfds: usize) -> Result<Self, Error> {
        use BackendReq as Q;
        use BackendRequest as R;
        let kind = MessageKind::Backend(req);
        let mut nofd = false;
        let r = match req {
            Q::IotlbMsg => R::IotlbMsg(read_exact(body, kind)?),
            Q::ConfigChangeMsg => expect_empty(body, kind).map(|_| R::ConfigChangeMsg)?,
            Q::VringHostNotifierMsg => {
                let a: VringArea = read_exact(body, kind)?;
                if a.u64_index_flags & !(VRING_INDEX_MASK | VRING_NOFD) != 0 {
                    return Err(Error::InvalidField {
                        request: kind,
                        field: "u64",
                        why: "bits above NOFD (8) are reserved",
                    });
                }
                nofd = a.u64_index_flags & VRING_NOFD != 0;
                R::VringHostNotifierMsg(a)
            }
            Q::VringCall => R::VringCall(read_exact(body, kind)?),
            Q::VringErr => R::VringErr(read_exact(body, kind)?),
            Q::SharedObjectAdd => R::SharedObjectAdd(read_exact(body, kind)?),
            Q::SharedObjectRemove => R::SharedObjectRemove(read_exact(body, kind)?),
            Q::SharedObjectLookup => R::SharedObjectLookup(read_exact(body, kind)?),
            Q::ShmemMap | Q::ShmemUnmap => {
                let m: ShmemMap = read_exact(body, kind)?;
                if m.len == 0 || m.shm_offset.checked_add(m.len).is_none() {
                    return Err(Error::InvalidField {
                        request: kind,
                        field: "len",
                        why: "zero, or shm_offset + len overflows",
                    });
                }
                if req == Q::ShmemMap {
                    if m.fd_offset.checked_add(m.len).is_none() {
                        return Err(Error::InvalidField {
                            request: kind,
                            field: "fd_offset",
                            why: "fd_offset + len overflows",
                        });
                    }
                    R::ShmemMap(m)
                } else {
                    R::ShmemUnmap(m)
                }
            }
        };
        check_fds(req.spec().fds, nfds, kind, nofd, 0)?;
        Ok(r)
    }

    /// Which request this is.
    pub fn code(&self) -> BackendReq {
        use BackendReq as Q;
        use BackendRequest as R;
        match self {
            R::IotlbMsg(_) => Q::IotlbMsg,
            R::ConfigChangeMsg => Q::ConfigChangeMsg,
            R::VringHostNotifierMsg(_) => Q::VringHostNotifierMsg,
            R::VringCall(_) => Q::VringCall,
            R::VringErr(_) => Q::VringErr,
            R::SharedObjectAdd(_) => Q::SharedObjectAdd,
            R::SharedObjectRemove(_) => Q::SharedObjectRemove,
            R::SharedObjectLookup(_) => Q::SharedObjectLookup,
            R::ShmemMap(_) => Q::ShmemMap,
            R::ShmemUnmap(_) => Q::ShmemUnmap,
        }
    }

    /// How many descriptors must accompany this request when sent.
    pub fn fd_count(&self) -> usize {
        match self {
            BackendRequest::VringHostNotifierMsg(a) => {
                usize::from(a.u64_index_flags & VRING_NOFD == 0)
            }
            _ => match self.code().spec().fds {
                FdPolicy::One => 1,
                _ => 0,
            },
        }
    }

    /// Encodes this request into `body`.
    pub fn encode(&self, flags: HeaderFlags, body: &mut [u8]) -> Result<Encoded<'static>, Error> {
        use BackendRequest as R;
        let n = match self {
            R::IotlbMsg(m) => put(body, m)?,
            R::ConfigChangeMsg => 0,
            R::VringHostNotifierMsg(a) => put(body, a)?,
            R::VringCall(s) | R::VringErr(s) => put(body, s)?,
            R::SharedObjectAdd(o) | R::SharedObjectRemove(o) | R::SharedObjectLookup(o) => {
                put(body, o)?
            }
            R::ShmemMap(m) | R::ShmemUnmap(m) => put(body, m)?,
        };
        Ok(Encoded {
            header: crate::Header::new(self.code() as u32, flags, n as u32),
            body_len: n,
            payload: &[],
        })
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
    Ok(Encoded {
        header: crate::Header::new(req as u32, HeaderFlags::REPLY, n as u32),
        body_len: n,
        payload: &[],
    })
}
