//! One decoded, checked request to one [`Backend`] call: one line per request.
//!
//! Decoding, descriptor counts and gates were checked before this point
//! (`FrontendRequest::decode`, `Negotiation::check`), so nothing here validates; it only
//! hands arguments over and shapes the result as the request's reply.

use vhost_proto::wire::{DEVICE_STATE_NOFD, MAX_CONFIG_SIZE};
use vhost_proto::{
    Config, CryptoSession, Error, FrontendReply, FrontendRequest, MessageKind, VringState,
};
use vhost_transport::{BackendChannel, Connection, OwnedDescriptor};

use super::ServerError;
use crate::backend_client::SharedNegotiation;
use crate::{Backend, BackendClient, BackendError};

/// What a request produced when it succeeded.
// Built once per message and moved straight into the reply: no need to box it.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(super) enum Answer<'a> {
    /// Nothing beyond success: an ack of 0 if one is owed.
    Done,
    /// The reply, and the descriptor that rides with it.
    Reply(FrontendReply<'a>, Option<OwnedDescriptor>),
}

/// A failure inside a dispatch arm, before the request code is attached.
enum Failure {
    Backend(BackendError),
    Server(ServerError),
}

impl From<BackendError> for Failure {
    fn from(e: BackendError) -> Self {
        Failure::Backend(e)
    }
}

impl From<ServerError> for Failure {
    fn from(e: ServerError) -> Self {
        Failure::Server(e)
    }
}

/// Calls the back-end method for `req`, with the descriptors that came with it.
///
/// `config` holds the GET_CONFIG reply payload, so the reply can borrow it.
pub(super) fn dispatch<'a, B: Backend + ?Sized>(
    backend: &mut B,
    negotiation: &SharedNegotiation,
    req: &FrontendRequest<'a>,
    fds: Vec<OwnedDescriptor>,
    config: &'a mut [u8; MAX_CONFIG_SIZE],
) -> Result<Answer<'a>, ServerError> {
    call(backend, negotiation, req, fds, config).map_err(|f| match f {
        Failure::Backend(error) => ServerError::Backend {
            request: req.code(),
            error,
        },
        Failure::Server(e) => e,
    })
}

fn call<'a, B: Backend + ?Sized>(
    backend: &mut B,
    negotiation: &SharedNegotiation,
    req: &FrontendRequest<'a>,
    mut fds: Vec<OwnedDescriptor>,
    config: &'a mut [u8; MAX_CONFIG_SIZE],
) -> Result<Answer<'a>, Failure> {
    use FrontendReply as P;
    use FrontendRequest as R;
    let fd = |fds: &mut Vec<OwnedDescriptor>| one_fd(fds, req);
    Ok(match *req {
        R::GetFeatures => value(backend.get_features()?),
        R::SetFeatures(v) => done(backend.set_features(v)?),
        R::SetOwner => done(backend.set_owner()?),
        R::ResetOwner => done(backend.reset_owner()?),
        R::SetMemTable(ref table) => done(backend.set_mem_table(table, fds)?),
        R::SetLogBase(ref log) => status(backend.set_log_base(log, fd(&mut fds)?)?),
        R::SetLogFd => done(backend.set_log_fd(fd(&mut fds)?)?),
        R::SetVringNum(s) => done(backend.set_vring_num(s.index, s.num)?),
        R::SetVringAddr(ref addr) => done(backend.set_vring_addr(addr)?),
        R::SetVringBase(s) => done(backend.set_vring_base(s.index, s.num)?),
        R::GetVringBase(s) => reply(P::VringState(VringState {
            index: s.index,
            num: backend.get_vring_base(s.index)?,
        })),
        R::SetVringKick(f) => done(backend.set_vring_kick(f.index, fds.pop())?),
        R::SetVringCall(f) => done(backend.set_vring_call(f.index, fds.pop())?),
        R::SetVringErr(f) => done(backend.set_vring_err(f.index, fds.pop())?),
        R::GetProtocolFeatures => value(backend.get_protocol_features()?.bits()),
        R::SetProtocolFeatures(v) => done(
            backend.set_protocol_features(vhost_proto::ProtocolFeatures::from_bits_truncate(v))?,
        ),
        R::GetQueueNum => value(backend.get_queue_num()?),
        R::SetVringEnable(s) => done(backend.set_vring_enable(s.index, s.num == 1)?),
        R::SendRarp(v) => done(backend.send_rarp(FrontendRequest::rarp_mac(v))?),
        R::NetSetMtu(mtu) => done(backend.net_set_mtu(mtu)?),
        R::SetBackendReqFd => {
            done(backend.set_backend_req_fd(channel(fd(&mut fds)?, negotiation)?)?)
        }
        R::IotlbMsg(ref msg) => status(backend.iotlb_msg(msg)?),
        R::SetVringEndian(s) => done(backend.set_vring_endian(s.index, s.num == 1)?),
        R::GetConfig(c) => get_config(backend, c, config)?,
        R::SetConfig(c) => done(backend.set_config(c.offset, c.payload, c.flags)?),
        R::CreateCryptoSession(ref s) => reply(P::CryptoSession(CryptoSession {
            session_id: backend.create_crypto_session(s)?,
            payload: s.payload,
        })),
        R::CloseCryptoSession(id) => done(backend.close_crypto_session(id)?),
        R::PostcopyAdvise => Answer::Reply(P::Empty, Some(backend.postcopy_advise()?)),
        R::PostcopyListen => done(backend.postcopy_listen()?),
        R::PostcopyEnd => status(backend.postcopy_end()?),
        R::GetInflightFd(ref info) => {
            let (info, area) = backend.get_inflight_fd(info)?;
            Answer::Reply(P::Inflight(info), Some(area))
        }
        R::SetInflightFd(ref info) => done(backend.set_inflight_fd(info, fd(&mut fds)?)?),
        R::GpuSetSocket => done(backend.gpu_set_socket(fd(&mut fds)?)?),
        R::ResetDevice => done(backend.reset_device()?),
        R::VringKick(s) => done(backend.vring_kick(s.index)?),
        R::GetMaxMemSlots => value(backend.get_max_mem_slots()?),
        R::AddMemReg(ref region) => done(backend.add_mem_region(region, fd(&mut fds)?)?),
        // A descriptor sent with REM_MEM_REG is allowed and closed unused.
        R::RemMemReg(ref region) => done(backend.remove_mem_region(region)?),
        R::SetStatus(v) => done(backend.set_status(v)?),
        R::GetStatus => value(backend.get_status()?),
        R::GetSharedObject(ref object) => {
            Answer::Reply(P::U64(0), Some(backend.get_shared_object(object)?))
        }
        R::SetDeviceStateFd(t) => {
            match backend.set_device_state_fd(t.direction, t.phase, fd(&mut fds)?)? {
                Some(back) => Answer::Reply(P::U64(0), Some(back)),
                None => value(DEVICE_STATE_NOFD),
            }
        }
        R::CheckDeviceState => status(backend.check_device_state()?),
        R::GetShmemConfig => reply(P::ShmemConfig(Box::new(backend.get_shmem_config()?))),
    })
}

fn done(_: ()) -> Answer<'static> {
    Answer::Done
}

fn reply(r: FrontendReply<'_>) -> Answer<'_> {
    Answer::Reply(r, None)
}

fn value(v: u64) -> Answer<'static> {
    reply(FrontendReply::U64(v))
}

/// The u64 status reply of a request that always replies: 0 for success.
fn status(_: ()) -> Answer<'static> {
    value(0)
}

/// The one descriptor of a request that carries exactly one (counted by the decoder).
fn one_fd(
    fds: &mut Vec<OwnedDescriptor>,
    req: &FrontendRequest<'_>,
) -> Result<OwnedDescriptor, ServerError> {
    fds.pop().ok_or(ServerError::Refused(Error::UnexpectedFds {
        request: MessageKind::Frontend(req.code()),
        expected: "exactly one",
        got: 0,
    }))
}

/// The back-end channel over the socket (on Windows, the pipe) of SET_BACKEND_REQ_FD.
fn channel(
    fd: OwnedDescriptor,
    negotiation: &SharedNegotiation,
) -> Result<BackendClient, ServerError> {
    #[cfg(unix)]
    let conn = Connection::<BackendChannel>::from_fd(fd);
    #[cfg(windows)]
    let conn = Connection::<BackendChannel>::from_handle(fd);
    let conn = conn.map_err(ServerError::BackendChannel)?;
    Ok(BackendClient::new(conn, negotiation.clone()))
}

fn get_config<'a, B: Backend + ?Sized>(
    backend: &mut B,
    c: Config<'a>,
    buf: &'a mut [u8; MAX_CONFIG_SIZE],
) -> Result<Answer<'a>, Failure> {
    // The decoder bounds the size by the configuration space.
    let size = c.payload.len().min(MAX_CONFIG_SIZE);
    let (payload, _) = buf.split_at_mut(size);
    backend.get_config(c.offset, payload, c.flags)?;
    Ok(reply(FrontendReply::Config(Config { payload, ..c })))
}
