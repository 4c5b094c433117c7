//! Bounds-checked helpers shared by both directions' decoders and encoders.

use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::table::FdPolicy;
use crate::{DecodeContext, Error, MessageKind};

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

/// What a body decoder is given.
pub(crate) struct Input<'a> {
    /// The body, exactly as long as the header said.
    pub body: &'a [u8],
    /// The request, for errors.
    pub kind: MessageKind,
    /// Layout settings from the negotiation.
    pub ctx: DecodeContext,
    /// The descriptor count, for a body whose count depends on its content (the memory table
    /// checks it itself).
    pub nfds: usize,
}

/// A request body type: its layout on the wire and the rules that belong to the type
/// itself. Rules of one request only are the `where` check of its row.
pub(crate) trait Body<'a> {
    /// Decodes a whole body.
    fn decode(input: Input<'a>) -> Result<Self, Error>
    where
        Self: Sized;

    /// Encodes the fixed part into `body`; returns its length and the borrowed payload.
    fn encode(&self, kind: MessageKind, body: &mut [u8]) -> Result<(usize, &'a [u8]), Error>;

    /// Checks the descriptor count against the request's policy.
    ///
    /// The default knows the policies whose count does not depend on the body (none, one,
    /// none or one). For [`FdPolicy::OneUnlessNofd`] and [`FdPolicy::PerRegion`] the count
    /// is in the body (its NOFD bit, its regions), so a body type used with them overrides
    /// this and [`fd_count`](Body::fd_count); left to the default, every count is refused.
    fn check_fds(&self, policy: FdPolicy, nfds: usize, kind: MessageKind) -> Result<(), Error> {
        match policy {
            FdPolicy::None | FdPolicy::One | FdPolicy::NoneOrOne => {
                check_fds(policy, nfds, kind, false, 0)
            }
            FdPolicy::OneUnlessNofd | FdPolicy::PerRegion => Err(Error::UnexpectedFds {
                request: kind,
                expected: "a count this body type does not define",
                got: nfds,
            }),
        }
    }

    /// How many descriptors go with this body when sent: what the default
    /// [`check_fds`](Body::check_fds) accepts (one for [`FdPolicy::One`], none for
    /// [`FdPolicy::None`] and [`FdPolicy::NoneOrOne`]). Zero for the policies whose count is
    /// in the body, which the default `check_fds` refuses whatever the count.
    fn fd_count(&self, policy: FdPolicy) -> usize {
        match policy {
            FdPolicy::One => 1,
            FdPolicy::None
            | FdPolicy::NoneOrOne
            | FdPolicy::OneUnlessNofd
            | FdPolicy::PerRegion => 0,
        }
    }

    /// The vring the body addresses, if it addresses one.
    fn vring_index(&self) -> Option<u32> {
        None
    }
}

/// A fixed-size body copied in and out as its wire layout, with no rule of its own.
macro_rules! plain_body {
    ($($ty:ty $(=> $index:ident)?),* $(,)?) => {$(
        impl<'a> Body<'a> for $ty {
            fn decode(input: $crate::codec::Input<'a>) -> Result<Self, Error> {
                read_exact(input.body, input.kind)
            }

            fn encode(&self, _: MessageKind, body: &mut [u8]) -> Result<(usize, &'a [u8]), Error> {
                Ok((put(body, self)?, &[]))
            }

            $(fn vring_index(&self) -> Option<u32> {
                Some(self.$index)
            })?
        }
    )*};
}

pub(crate) use plain_body;

/// Generates a request enum and its dispatch from the rows of
/// [`for_each_frontend_request!`](crate::for_each_frontend_request) or
/// [`for_each_backend_request!`](crate::for_each_backend_request): the enum (one variant per
/// row, holding its body type), `decode_with` (the body's decoder, the row's `where` check,
/// the descriptor count), `code` and `body`. Arguments: the enum's name, its lifetime
/// parameter (if any), `decode_with`'s own lifetime parameter (if any), the lifetime of the
/// bytes decoded, the lifetime of the bodies, the code enum and the [`MessageKind`] variant.
macro_rules! request_enum {
    (
        $(#[$doc:meta])* $name:ident [$($gen:lifetime)?] [$($mgen:lifetime)?] $dl:lifetime $bl:lifetime, $codes:ident, $dir:ident;
        $($(#[$m:meta])* $v:ident $(($ty:ty $(where $check:path)?))? = $code:literal => $spec:expr $(=> $clause:ident($($ct:tt)*))*;)*
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        // The memory table is held inline (8 regions, no allocation per message).
        #[allow(clippy::large_enum_variant)]
        pub enum $name<$($gen)?> {
            $($(#[$m])* $v $(($ty))?,)*
        }

        impl<$($gen)?> $name<$($gen)?> {
            /// Decodes the body of `req`: its layout, its rules and its descriptor count.
            fn decode_with<$($mgen)?>(req: $codes, body: &$dl [u8], nfds: usize, ctx: $crate::DecodeContext) -> Result<Self, Error> {
                let kind = MessageKind::$dir(req);
                let fds = req.spec().fds;
                match req {
                    $($codes::$v => request_enum!(@decode $name $v, body, kind, ctx, nfds, fds $(, $ty $(, $check)?)?),)*
                }
            }

            /// Which request this is.
            pub fn code(&self) -> $codes {
                match self {
                    $(request_enum!(@pattern $name $v $(, $ty)?) => $codes::$v,)*
                }
            }

            /// The body, for the requests that have one.
            fn body(&self) -> Option<&dyn $crate::codec::Body<$bl>> {
                match self {
                    $(request_enum!(@bind $name $v, b $(, $ty)?) => request_enum!(@some b $(, $ty)?),)*
                }
            }

            /// How many descriptors must accompany this request when sent.
            pub fn fd_count(&self) -> usize {
                let policy = self.code().spec().fds;
                match self.body() {
                    Some(b) => b.fd_count(policy),
                    None => usize::from(policy == $crate::FdPolicy::One),
                }
            }

            /// Encodes the body (nothing for a request without one) into `body`: its length,
            /// and the payload to send after it.
            fn encode_body(&self, body: &mut [u8]) -> Result<(usize, &$bl [u8]), Error> {
                match self.body() {
                    Some(b) => b.encode(MessageKind::$dir(self.code()), body),
                    None => Ok((0, &[])),
                }
            }
        }
    };
    (@decode $name:ident $v:ident, $body:ident, $kind:ident, $ctx:ident, $nfds:ident, $fds:ident) => {{
        $crate::codec::expect_empty($body, $kind)?;
        $crate::codec::check_fds($fds, $nfds, $kind, false, 0)?;
        Ok($name::$v)
    }};
    (@decode $name:ident $v:ident, $body:ident, $kind:ident, $ctx:ident, $nfds:ident, $fds:ident, $ty:ty $(, $check:path)?) => {{
        let input = $crate::codec::Input { body: $body, kind: $kind, ctx: $ctx, nfds: $nfds };
        let value = <$ty as $crate::codec::Body>::decode(input)?;
        $($check(&value, $kind)?;)?
        $crate::codec::Body::check_fds(&value, $fds, $nfds, $kind)?;
        Ok($name::$v(value))
    }};
    (@pattern $name:ident $v:ident) => { $name::$v };
    (@pattern $name:ident $v:ident, $ty:ty) => { $name::$v(_) };
    (@bind $name:ident $v:ident, $b:ident) => { $name::$v };
    (@bind $name:ident $v:ident, $b:ident, $ty:ty) => { $name::$v($b) };
    (@some $b:ident) => { None };
    (@some $b:ident, $ty:ty) => { Some($b) };
}

pub(crate) use request_enum;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frontend::{MemTable, VringFd};
    use crate::wire::{MemoryRegion, VringArea, VRING_NOFD};
    use crate::{BackendReq, BackendRequest, DecodeContext, FrontendReq, FrontendRequest};
    use crate::{HeaderFlags, MAX_BODY_SIZE};

    /// A body that keeps every default of [`Body`].
    struct Defaults;

    impl<'a> Body<'a> for Defaults {
        fn decode(_: Input<'a>) -> Result<Self, Error> {
            Ok(Defaults)
        }

        fn encode(&self, _: MessageKind, _: &mut [u8]) -> Result<(usize, &'a [u8]), Error> {
            Ok((0, &[]))
        }
    }

    const ALL_POLICIES: [FdPolicy; 5] = [
        FdPolicy::None,
        FdPolicy::One,
        FdPolicy::NoneOrOne,
        FdPolicy::OneUnlessNofd,
        FdPolicy::PerRegion,
    ];

    #[test]
    fn the_default_descriptor_rules_agree_or_refuse() {
        let kind = MessageKind::Frontend(FrontendReq::SetVringKick);
        for policy in ALL_POLICIES {
            let sent = Defaults.fd_count(policy);
            match policy {
                // A count that depends on the body: the body type must say it.
                FdPolicy::OneUnlessNofd | FdPolicy::PerRegion => {
                    for n in 0..4 {
                        assert!(
                            Defaults.check_fds(policy, n, kind).is_err(),
                            "{policy:?}: the default accepts {n} descriptors"
                        );
                    }
                }
                FdPolicy::None | FdPolicy::One | FdPolicy::NoneOrOne => {
                    assert!(
                        Defaults.check_fds(policy, sent, kind).is_ok(),
                        "{policy:?}: the default sends {sent} descriptors and refuses them"
                    );
                }
            }
        }
    }

    fn region(i: u64) -> MemoryRegion {
        MemoryRegion {
            guest_phys_addr: i << 30,
            memory_size: 1 << 20,
            user_addr: 0x7000_0000_0000 + (i << 30),
            mmap_offset: 0,
        }
    }

    /// Encodes with the request's own descriptor count, decodes with that count (equal) and
    /// with one more (refused).
    fn frontend_round_trip(req: FrontendRequest<'_>, want: usize) {
        let mut body = vec![0u8; MAX_BODY_SIZE];
        let enc = req.encode(HeaderFlags::empty(), &mut body).unwrap();
        let n = req.fd_count();
        assert_eq!(n, want, "{req:?}");
        let bytes = &body[..enc.body_len];
        let ctx = DecodeContext::default();
        assert_eq!(FrontendRequest::decode(req.code(), bytes, n, ctx), Ok(req));
        assert!(FrontendRequest::decode(req.code(), bytes, n + 1, ctx).is_err());
    }

    fn backend_round_trip(req: BackendRequest, want: usize) {
        let mut body = vec![0u8; MAX_BODY_SIZE];
        let enc = req.encode(HeaderFlags::empty(), &mut body).unwrap();
        let n = req.fd_count();
        assert_eq!(n, want, "{req:?}");
        let bytes = &body[..enc.body_len];
        assert_eq!(BackendRequest::decode(req.code(), bytes, n), Ok(req));
        assert!(BackendRequest::decode(req.code(), bytes, n + 1).is_err());
    }

    #[test]
    fn rows_whose_descriptor_count_depends_on_the_body_round_trip_with_it() {
        let mut seen = 0;
        for code in FrontendReq::all() {
            let policy = code.spec().fds;
            if !matches!(policy, FdPolicy::OneUnlessNofd | FdPolicy::PerRegion) {
                continue;
            }
            seen += 1;
            match code {
                FrontendReq::SetVringKick
                | FrontendReq::SetVringCall
                | FrontendReq::SetVringErr => {
                    for (nofd, want) in [(false, 1), (true, 0)] {
                        let fd = VringFd { index: 3, nofd };
                        let req = match code {
                            FrontendReq::SetVringKick => FrontendRequest::SetVringKick(fd),
                            FrontendReq::SetVringCall => FrontendRequest::SetVringCall(fd),
                            _ => FrontendRequest::SetVringErr(fd),
                        };
                        frontend_round_trip(req, want);
                    }
                }
                FrontendReq::SetMemTable => {
                    for n in [1, 3] {
                        let regions: Vec<_> = (0..n).map(region).collect();
                        let table = MemTable::new(&regions).unwrap();
                        frontend_round_trip(FrontendRequest::SetMemTable(table), n as usize);
                    }
                }
                other => panic!("{other:?} ({policy:?}): add a sample of its body here"),
            }
        }
        for code in BackendReq::all() {
            let policy = code.spec().fds;
            if !matches!(policy, FdPolicy::OneUnlessNofd | FdPolicy::PerRegion) {
                continue;
            }
            seen += 1;
            match code {
                BackendReq::VringHostNotifierMsg => {
                    for (flags, want) in [(0, 1), (VRING_NOFD, 0)] {
                        let area = VringArea {
                            u64_index_flags: 2 | flags,
                            size: 4096,
                            offset: 0,
                        };
                        backend_round_trip(BackendRequest::VringHostNotifierMsg(area), want);
                    }
                }
                other => panic!("{other:?} ({policy:?}): add a sample of its body here"),
            }
        }
        assert_eq!(seen, 5, "rows with a body-dependent descriptor count");
    }
}
