//! Fixed bodies moved as their wire layout: IOTLB_MSG (`iova u64 | size u64 | uaddr u64 |
//! perm u8 | type u8`), GET/SET_INFLIGHT_FD (`mmap_size u64 | mmap_offset u64 | num_queues
//! u16 | queue_size u16`), GET_SHARED_OBJECT (a 16-byte UUID) and SET_DEVICE_STATE_FD
//! (`direction u32 | phase u32`).

use super::bool_field;
use super::Body;
use crate::codec::plain_body;
use crate::codec::{put, read_exact};
use crate::wire::*;
use crate::{Error, MessageKind};

plain_body!(IotlbMsg, Inflight, SharedObject, DeviceStateTransfer);

/// SET_DEVICE_STATE_FD: `direction` 0 is save, 1 load; `phase` 0 (stopped) is the only
/// phase the specification defines.
pub(super) fn stopped_phase(t: &DeviceStateTransfer, kind: MessageKind) -> Result<(), Error> {
    bool_field(t.direction, kind, "direction")?;
    if t.phase != TRANSFER_PHASE_STOPPED {
        return Err(Error::InvalidField {
            request: kind,
            field: "phase",
            why: "only phase 0 (stopped) is defined",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::golden::check;
    use super::*;
    use crate::{FrontendReq as Q, FrontendRequest as R};

    #[test]
    fn golden_vectors() {
        let load = DeviceStateTransfer {
            direction: TRANSFER_LOAD,
            phase: TRANSFER_PHASE_STOPPED,
        };
        check(
            Q::SetDeviceStateFd,
            &[1, 0, 0, 0, 0, 0, 0, 0],
            1,
            R::SetDeviceStateFd(load),
        );
        let uuid = [7u8; 16];
        check(
            Q::GetSharedObject,
            &uuid,
            0,
            R::GetSharedObject(SharedObject { uuid }),
        );
    }

    #[test]
    fn only_the_stopped_phase_is_defined() {
        let ctx = crate::DecodeContext::default();
        let body = [0, 0, 0, 0, 1, 0, 0, 0];
        let e = R::decode(Q::SetDeviceStateFd, &body, 1, ctx).unwrap_err();
        assert!(
            matches!(e, Error::InvalidField { field: "phase", .. }),
            "{e:?}"
        );
    }
}
