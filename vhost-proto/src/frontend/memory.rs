//! Guest memory: SET_MEM_TABLE (a table of up to 8 regions, one descriptor each), ADD_MEM_REG
//! and REM_MEM_REG (one region), SET_LOG_BASE (the dirty log area).
//!
//! Layouts (the specification's memory region descriptions): a table is `num_regions u32 |
//! padding u32 | regions[num_regions]`, each region `guest_phys_addr u64 | memory_size u64 |
//! userspace_addr u64 | mmap_offset u64`; a single region message is `padding u64 | region`.
//! With XEN_MMAP each region adds `xen_mmap_flags u32 | domid u32`.

use super::{Body, DecodeContext, Input};
use crate::codec::plain_body;
use crate::codec::{check_fds, put, read_exact, read_prefix};
use crate::table::FdPolicy;
use crate::wire::*;
use crate::{Error, FrontendReq, MessageKind};

/// Most regions a SET_MEM_TABLE may carry.
pub const MAX_MEM_TABLE_REGIONS: usize = 8;

/// The Xen fields of a memory region (XEN_MMAP).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XenMapping {
    /// Xen mapping flags.
    pub flags: u32,
    /// Xen domain id.
    pub domid: u32,
}

/// A decoded SET_MEM_TABLE: up to 8 regions, held inline (no allocation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemTable {
    len: usize,
    padding: u32,
    regions: [MemoryRegion; MAX_MEM_TABLE_REGIONS],
    xen: Option<[XenMapping; MAX_MEM_TABLE_REGIONS]>,
}

impl MemTable {
    /// A table of plain regions. Fails with more than 8 regions.
    pub fn new(regions: &[MemoryRegion]) -> Result<Self, Error> {
        Self::build(regions, None)
    }

    /// A table of regions with their Xen fields (XEN_MMAP).
    pub fn new_xen(regions: &[MemoryRegion], xen: &[XenMapping]) -> Result<Self, Error> {
        Self::build(regions, Some(xen))
    }

    fn build(regions: &[MemoryRegion], xen: Option<&[XenMapping]>) -> Result<Self, Error> {
        let kind = MessageKind::Frontend(FrontendReq::SetMemTable);
        if regions.len() > MAX_MEM_TABLE_REGIONS || xen.is_some_and(|x| x.len() != regions.len()) {
            return Err(Error::InvalidField {
                request: kind,
                field: "num_regions",
                why: "more than 8 regions, or Xen fields not one per region",
            });
        }
        let mut t = MemTable {
            len: regions.len(),
            padding: 0,
            regions: [MemoryRegion::default(); MAX_MEM_TABLE_REGIONS],
            xen: xen.map(|_| [XenMapping::default(); MAX_MEM_TABLE_REGIONS]),
        };
        t.regions[..regions.len()].copy_from_slice(regions);
        if let (Some(dst), Some(src)) = (t.xen.as_mut(), xen) {
            dst[..src.len()].copy_from_slice(src);
        }
        Ok(t)
    }

    /// The regions.
    pub fn regions(&self) -> &[MemoryRegion] {
        &self.regions[..self.len]
    }

    /// The regions' Xen fields, when XEN_MMAP is in use.
    pub fn xen(&self) -> Option<&[XenMapping]> {
        self.xen.as_ref().map(|x| &x[..self.len])
    }

    /// Decodes a table. `nfds` is the descriptor count of a request, checked against the
    /// region count (one per region); `None` for a postcopy reply, whose descriptor count
    /// (none) the reply decoder checks.
    pub(super) fn decode(
        body: &[u8],
        nfds: Option<usize>,
        ctx: DecodeContext,
    ) -> Result<Self, Error> {
        let kind = MessageKind::Frontend(FrontendReq::SetMemTable);
        let (hdr, rest) = read_prefix::<MemTableHeader>(body, kind)?;
        let n = hdr.num_regions as usize;
        if n > MAX_MEM_TABLE_REGIONS {
            return Err(Error::InvalidField {
                request: kind,
                field: "num_regions",
                why: "more than 8 regions",
            });
        }
        let rsz = if ctx.xen_mmap {
            core::mem::size_of::<XenMemoryRegion>()
        } else {
            core::mem::size_of::<MemoryRegion>()
        };
        if rest.len() != n * rsz {
            return Err(Error::SizeMismatch {
                request: kind,
                expected: core::mem::size_of::<MemTableHeader>() + n * rsz,
                got: body.len(),
            });
        }
        if let Some(nfds) = nfds {
            check_fds(FdPolicy::PerRegion, nfds, kind, false, n)?;
        }
        let mut t = MemTable {
            len: n,
            padding: hdr.padding,
            regions: [MemoryRegion::default(); MAX_MEM_TABLE_REGIONS],
            xen: ctx
                .xen_mmap
                .then_some([XenMapping::default(); MAX_MEM_TABLE_REGIONS]),
        };
        for (i, chunk) in rest.chunks_exact(rsz).enumerate() {
            if ctx.xen_mmap {
                let x = read_exact::<XenMemoryRegion>(chunk, kind)?;
                t.regions[i] = x.region;
                if let Some(xs) = t.xen.as_mut() {
                    xs[i] = XenMapping {
                        flags: x.xen_mmap_flags,
                        domid: x.domid,
                    };
                }
            } else {
                t.regions[i] = read_exact::<MemoryRegion>(chunk, kind)?;
            }
        }
        validate_regions(t.regions(), kind)?;
        Ok(t)
    }

    pub(super) fn encode(&self, buf: &mut [u8]) -> Result<usize, Error> {
        let mut n = put(
            buf,
            &MemTableHeader {
                num_regions: self.len as u32,
                padding: self.padding,
            },
        )?;
        for (i, r) in self.regions().iter().enumerate() {
            let have = buf.len();
            let dst = buf
                .get_mut(n..)
                .ok_or(Error::BufferTooSmall { need: n, have })?;
            n += match self.xen() {
                Some(x) => put(
                    dst,
                    &XenMemoryRegion {
                        region: *r,
                        xen_mmap_flags: x[i].flags,
                        domid: x[i].domid,
                    },
                )?,
                None => put(dst, r)?,
            };
        }
        Ok(n)
    }
}

/// Checks each region for emptiness and overflow, and the set for overlaps (guest-physical
/// and front-end virtual ranges): [`region::check_regions`](crate::region::check_regions).
pub fn validate_regions(regions: &[MemoryRegion], request: MessageKind) -> Result<(), Error> {
    crate::region::check_regions(regions).map_err(|(index, fault)| Error::RegionOverflow {
        request,
        index,
        why: fault.why(),
    })
}

/// ADD_MEM_REG / REM_MEM_REG body: one region (with Xen fields under XEN_MMAP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionMsg {
    /// Padding, as received.
    pub padding: u64,
    /// The region.
    pub region: MemoryRegion,
    /// Xen fields, when XEN_MMAP is in use.
    pub xen: Option<XenMapping>,
}

impl RegionMsg {
    /// A message for one plain region.
    pub fn new(region: MemoryRegion) -> Self {
        RegionMsg {
            padding: 0,
            region,
            xen: None,
        }
    }

    pub(super) fn decode(
        body: &[u8],
        kind: MessageKind,
        ctx: DecodeContext,
    ) -> Result<Self, Error> {
        let m = if ctx.xen_mmap {
            let x = read_exact::<XenSingleRegion>(body, kind)?;
            RegionMsg {
                padding: x.padding,
                region: x.region.region,
                xen: Some(XenMapping {
                    flags: x.region.xen_mmap_flags,
                    domid: x.region.domid,
                }),
            }
        } else {
            let s = read_exact::<SingleRegion>(body, kind)?;
            RegionMsg {
                padding: s.padding,
                region: s.region,
                xen: None,
            }
        };
        Ok(m)
    }

    pub(super) fn encode(&self, buf: &mut [u8]) -> Result<usize, Error> {
        match self.xen {
            Some(x) => put(
                buf,
                &XenSingleRegion {
                    padding: self.padding,
                    region: XenMemoryRegion {
                        region: self.region,
                        xen_mmap_flags: x.flags,
                        domid: x.domid,
                    },
                },
            ),
            None => put(
                buf,
                &SingleRegion {
                    padding: self.padding,
                    region: self.region,
                },
            ),
        }
    }
}

impl<'a> Body<'a> for MemTable {
    fn decode(input: Input<'a>) -> Result<Self, Error> {
        MemTable::decode(input.body, Some(input.nfds), input.ctx)
    }

    fn encode(&self, _: MessageKind, body: &mut [u8]) -> Result<(usize, &'a [u8]), Error> {
        Ok((MemTable::encode(self, body)?, &[]))
    }

    /// Checked by the decoder: one descriptor per memory region.
    fn check_fds(&self, _: FdPolicy, _: usize, _: MessageKind) -> Result<(), Error> {
        Ok(())
    }

    fn fd_count(&self, _: FdPolicy) -> usize {
        self.regions().len()
    }
}

impl<'a> Body<'a> for RegionMsg {
    fn decode(input: Input<'a>) -> Result<Self, Error> {
        RegionMsg::decode(input.body, input.kind, input.ctx)
    }

    fn encode(&self, _: MessageKind, body: &mut [u8]) -> Result<(usize, &'a [u8]), Error> {
        Ok((RegionMsg::encode(self, body)?, &[]))
    }
}

plain_body!(LogBase);

/// ADD_MEM_REG and REM_MEM_REG: the one region must be non-empty and not overflow.
pub(super) fn one_region(m: &RegionMsg, kind: MessageKind) -> Result<(), Error> {
    validate_regions(core::slice::from_ref(&m.region), kind)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FrontendReply, FrontendRequest, ReplyShape};

    fn table_body(regions: &[MemoryRegion]) -> ([u8; 512], usize) {
        let mut body = [0u8; 512];
        let n = MemTable::new(regions).unwrap().encode(&mut body).unwrap();
        (body, n)
    }

    #[test]
    fn golden_vectors() {
        use super::super::golden::check;
        use crate::FrontendReq as Q;
        // One region: gpa 0x1000, size 0x2000, user_addr 0x7f00_0000_0000, offset 0.
        #[rustfmt::skip]
        let region_bytes = [
            0x00, 0x10, 0, 0, 0, 0, 0, 0, 0x00, 0x20, 0, 0, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0x7f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        let region = MemoryRegion {
            guest_phys_addr: 0x1000,
            memory_size: 0x2000,
            user_addr: 0x7f00_0000_0000,
            mmap_offset: 0,
        };
        let table = [&[1u8, 0, 0, 0, 0, 0, 0, 0][..], &region_bytes].concat();
        let expected = FrontendRequest::SetMemTable(MemTable::new(&[region]).unwrap());
        check(Q::SetMemTable, &table, 1, expected);
        let single = [&[0u8; 8][..], &region_bytes].concat();
        check(
            Q::AddMemReg,
            &single,
            1,
            FrontendRequest::AddMemReg(RegionMsg::new(region)),
        );
        check(
            Q::RemMemReg,
            &single,
            0,
            FrontendRequest::RemMemReg(RegionMsg::new(region)),
        );
    }

    #[test]
    fn postcopy_table_reply_carries_no_descriptor() {
        let region = MemoryRegion {
            guest_phys_addr: 0,
            memory_size: 4096,
            user_addr: 0x10000,
            mmap_offset: 0,
        };
        let (body, n) = table_body(&[
            region,
            MemoryRegion {
                guest_phys_addr: 4096,
                user_addr: 0x20000,
                ..region
            },
        ]);
        let ctx = DecodeContext::default();
        let q = FrontendReq::SetMemTable;
        let reply = FrontendReply::decode(q, ReplyShape::MemTable, &body[..n], 0, ctx).unwrap();
        assert!(matches!(reply, FrontendReply::MemTable(t) if t.regions().len() == 2));
        // Whatever the region count, a descriptor with the reply is refused.
        for nfds in [1, 2] {
            let e = FrontendReply::decode(q, ReplyShape::MemTable, &body[..n], nfds, ctx);
            assert!(
                matches!(e, Err(Error::UnexpectedFds { got, .. }) if got == nfds),
                "{e:?}"
            );
        }
        // The request form wants one per region.
        assert!(FrontendRequest::decode(q, &body[..n], 2, ctx).is_ok());
        let e = FrontendRequest::decode(q, &body[..n], 0, ctx);
        assert!(
            matches!(e, Err(Error::UnexpectedFds { got: 0, .. })),
            "{e:?}"
        );
    }
}
