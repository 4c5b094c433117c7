//! The vring requests: SET_VRING_NUM, SET_VRING_BASE, GET_VRING_BASE, SET_VRING_ENABLE,
//! SET_VRING_ENDIAN and VRING_KICK (a vring state: `index u32 | num u32`), SET_VRING_ADDR
//! (`index u32 | flags u32 | size u64 | descriptor u64 | used u64 | available u64 | log u64`)
//! and SET_VRING_KICK / CALL / ERR (a u64: "Bits (0-7) of the payload contain the vring
//! index. Bit 8 is the invalid FD flag").

use super::{bool_field, Body, Input};
use crate::codec::plain_body;
use crate::codec::{check_fds, put, read_exact};
use crate::table::FdPolicy;
use crate::wire::*;
use crate::{Error, MessageKind};

/// SET_VRING_KICK / CALL / ERR body: a vring index and whether a descriptor comes with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VringFd {
    /// The vring index (8 bits on the wire).
    pub index: u8,
    /// NOFD: no descriptor; the back-end polls (kick) or does not signal (call, err).
    pub nofd: bool,
}

impl VringFd {
    fn decode(v: u64, kind: MessageKind) -> Result<Self, Error> {
        if v & !(VRING_INDEX_MASK | VRING_NOFD) != 0 {
            return Err(Error::InvalidField {
                request: kind,
                field: "u64",
                why: "bits above NOFD (8) are reserved",
            });
        }
        Ok(VringFd {
            index: (v & VRING_INDEX_MASK) as u8,
            nofd: v & VRING_NOFD != 0,
        })
    }

    fn to_u64(self) -> u64 {
        u64::from(self.index) | if self.nofd { VRING_NOFD } else { 0 }
    }
}

impl<'a> Body<'a> for VringFd {
    fn decode(input: Input<'a>) -> Result<Self, Error> {
        let kind = input.kind;
        VringFd::decode(read_exact::<U64Body>(input.body, kind)?.value, kind)
    }

    fn encode(&self, _: MessageKind, body: &mut [u8]) -> Result<(usize, &'a [u8]), Error> {
        Ok((
            put(
                body,
                &U64Body {
                    value: self.to_u64(),
                },
            )?,
            &[],
        ))
    }

    /// "This flag is set when there is no file descriptor in the ancillary data."
    fn check_fds(&self, policy: FdPolicy, nfds: usize, kind: MessageKind) -> Result<(), Error> {
        check_fds(policy, nfds, kind, self.nofd, 0)
    }

    fn fd_count(&self, _: FdPolicy) -> usize {
        usize::from(!self.nofd)
    }

    fn vring_index(&self) -> Option<u32> {
        Some(self.index.into())
    }
}

plain_body!(VringState => index, VringAddr => index);

/// SET_VRING_ADDR: the specification defines one flag, bit 0 (VHOST_VRING_F_LOG).
pub(super) fn addr_flags(a: &VringAddr, kind: MessageKind) -> Result<(), Error> {
    if a.flags & !VRING_F_LOG != 0 {
        return Err(Error::InvalidField {
            request: kind,
            field: "flags",
            why: "only bit 0 (VHOST_VRING_F_LOG) is defined",
        });
    }
    Ok(())
}

/// SET_VRING_ENABLE (`num` 0 disables, 1 enables) and SET_VRING_ENDIAN (`num` 0 little-,
/// 1 big-endian): `num` is a flag.
pub(super) fn flag(s: &VringState, kind: MessageKind) -> Result<(), Error> {
    bool_field(s.num, kind, "num")
}

#[cfg(test)]
mod tests {
    use super::super::golden::check;
    use super::*;
    use crate::{FrontendReq as Q, FrontendRequest as R};

    #[test]
    fn golden_vectors() {
        let state = [1, 0, 0, 0, 0x00, 0x01, 0, 0];
        check(
            Q::SetVringNum,
            &state,
            0,
            R::SetVringNum(VringState { index: 1, num: 256 }),
        );
        // Index 1, with its descriptor, then with NOFD and none.
        for (nofd, nfds) in [(false, 1), (true, 0)] {
            let body = [1, u8::from(nofd), 0, 0, 0, 0, 0, 0];
            let fd = VringFd { index: 1, nofd };
            check(Q::SetVringKick, &body, nfds, R::SetVringKick(fd));
        }
        let enable = VringState { index: 0, num: 1 };
        check(
            Q::SetVringEnable,
            &[0, 0, 0, 0, 1, 0, 0, 0],
            0,
            R::SetVringEnable(enable),
        );
    }

    #[test]
    fn field_rules() {
        let ctx = crate::DecodeContext::default();
        let refused = |q, body: [u8; 8], nfds| R::decode(q, &body, nfds, ctx).unwrap_err();
        // Bits above NOFD are reserved.
        let e = refused(Q::SetVringCall, [1, 2, 0, 0, 0, 0, 0, 0], 0);
        assert!(
            matches!(e, Error::InvalidField { field: "u64", .. }),
            "{e:?}"
        );
        // NOFD set with a descriptor attached.
        let e = refused(Q::SetVringCall, [1, 1, 0, 0, 0, 0, 0, 0], 1);
        assert!(matches!(e, Error::UnexpectedFds { got: 1, .. }), "{e:?}");
        // SET_VRING_ENABLE's num is a flag.
        let e = refused(Q::SetVringEnable, [0, 0, 0, 0, 2, 0, 0, 0], 0);
        assert!(
            matches!(e, Error::InvalidField { field: "num", .. }),
            "{e:?}"
        );
    }
}
