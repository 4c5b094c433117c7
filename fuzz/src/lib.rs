//! What several fuzz targets share.

use vhost_proto::{Header, HEADER_SIZE};

/// Splits the input of the `proto_*` targets: a control byte, a message header, and the
/// body (the rest). `None` when the input is too short for the first two.
pub fn framed(data: &[u8]) -> Option<(u8, Header, &[u8])> {
    let (&control, rest) = data.split_first()?;
    let (hdr, rest) = rest.split_first_chunk::<HEADER_SIZE>()?;
    Some((control, Header::from_wire(hdr), rest))
}
