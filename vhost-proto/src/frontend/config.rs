//! GET_CONFIG and SET_CONFIG: `offset u32 | size u32 | flags u32 | payload[size]`.
//! The payload is at most 256 bytes (`VHOST_USER_MAX_CONFIG_SIZE`) and must end within the
//! configuration space (offset 0x1000).

use super::{Body, Input};
use crate::codec::{put, read_prefix};
use crate::wire::*;
use crate::{Error, MessageKind};

/// GET_CONFIG / SET_CONFIG body: where, how much, and the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config<'a> {
    /// Offset in the configuration space.
    pub offset: u32,
    /// Flags ([`CONFIG_FLAG_WRITABLE`], [`CONFIG_FLAG_LIVE_MIGRATION`]).
    pub flags: u32,
    /// The bytes (for GET_CONFIG requests, `size` placeholder bytes).
    pub payload: &'a [u8],
}

impl<'a> Config<'a> {
    /// Decodes a request body, or a reply body when `reply` (see [`Config::check`]).
    pub(super) fn decode(body: &'a [u8], kind: MessageKind, reply: bool) -> Result<Self, Error> {
        let (h, payload) = read_prefix::<ConfigHeader>(body, kind)?;
        if h.size as usize != payload.len() {
            return Err(Error::SizeMismatch {
                request: kind,
                expected: 12 + h.size as usize,
                got: body.len(),
            });
        }
        let config = Config {
            offset: h.offset,
            flags: h.flags,
            payload,
        };
        config.check(kind, reply)?;
        Ok(config)
    }

    /// The limits both the decoder and the encoder enforce: at most [`MAX_CONFIG_SIZE`]
    /// bytes, ending within the configuration space ([`CONFIG_SPACE_END`]). A reply with
    /// no bytes is the failure form, which echoes the offset asked for whatever it was.
    pub(super) fn check(&self, kind: MessageKind, reply: bool) -> Result<(), Error> {
        if reply && self.payload.is_empty() {
            return Ok(());
        }
        if self.payload.len() > MAX_CONFIG_SIZE {
            return Err(Error::InvalidField {
                request: kind,
                field: "size",
                why: "larger than the 256-byte configuration space",
            });
        }
        if u64::from(self.offset) + self.payload.len() as u64 > CONFIG_SPACE_END {
            return Err(Error::InvalidField {
                request: kind,
                field: "offset",
                why: "offset + size beyond the configuration space",
            });
        }
        Ok(())
    }

    pub(super) fn header(&self) -> ConfigHeader {
        ConfigHeader {
            offset: self.offset,
            size: self.payload.len() as u32,
            flags: self.flags,
        }
    }
}

impl<'a> Body<'a> for Config<'a> {
    fn decode(input: Input<'a>) -> Result<Self, Error> {
        Config::decode(input.body, input.kind, false)
    }

    fn encode(&self, kind: MessageKind, body: &mut [u8]) -> Result<(usize, &'a [u8]), Error> {
        self.check(kind, false)?;
        Ok((put(body, &self.header())?, self.payload))
    }
}

#[cfg(test)]
mod tests {
    use super::super::golden::check;
    use super::*;
    use crate::{FrontendReq as Q, FrontendRequest as R};

    #[test]
    fn golden_vectors() {
        // offset 0x10, size 4, flags 1 (live migration), then the bytes.
        let body = [
            0x10, 0, 0, 0, 4, 0, 0, 0, 1, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef,
        ];
        let payload = &body[12..];
        let config = Config {
            offset: 0x10,
            flags: CONFIG_FLAG_LIVE_MIGRATION,
            payload,
        };
        check(Q::SetConfig, &body, 0, R::SetConfig(config));
    }

    #[test]
    fn beyond_the_configuration_space_is_refused() {
        let ctx = crate::DecodeContext::default();
        // offset 0xfff + 4 bytes ends past 0x1000.
        let body = [0xff, 0x0f, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4];
        let e = R::decode(Q::SetConfig, &body, 0, ctx).unwrap_err();
        assert!(
            matches!(
                e,
                Error::InvalidField {
                    field: "offset",
                    ..
                }
            ),
            "{e:?}"
        );
    }
}
