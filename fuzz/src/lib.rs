//! What several fuzz targets share.

use vhost_proto::{Error, Header, HEADER_SIZE, MAX_BODY_SIZE};

/// Splits the input of the `proto_*` targets: a control byte, a message header, and the
/// body (the rest). `None` when the input is too short for the first two.
pub fn framed(data: &[u8]) -> Option<(u8, Header, &[u8])> {
    let (&control, rest) = data.split_first()?;
    let (hdr, rest) = rest.split_first_chunk::<HEADER_SIZE>()?;
    Some((control, Header::from_wire(hdr), rest))
}

/// A request's body once its header was checked (`checked`, the header's own check): `None`
/// when the check failed (whose error must be a framing error) or `rest` holds less than
/// the header's size. A header that passed bounds its size before any body exists.
pub fn request_body<'a, R>(
    header: &Header,
    checked: Result<R, Error>,
    rest: &'a [u8],
) -> Option<(R, &'a [u8])> {
    let req = match checked {
        Ok(r) => r,
        Err(e) => {
            assert!(e.is_framing(), "{e:?}");
            return None;
        }
    };
    assert!(header.size as usize <= MAX_BODY_SIZE);
    Some((req, rest.get(..header.size as usize)?))
}

/// A body decoded after its header passed: `None` when the decode failed, whose error must
/// not be a framing error.
pub fn decoded<M>(decoded: Result<M, Error>) -> Option<M> {
    match decoded {
        Ok(m) => Some(m),
        Err(e) => {
            assert!(!e.is_framing(), "{e:?}");
            None
        }
    }
}
