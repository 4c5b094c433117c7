//! A recording [`Backend`] double for tests (feature `test-utils`).
//!
//! [`RecordingBackend`] implements every request: it records each call as a [`Call`],
//! keeps the descriptors it receives, answers with configurable values, and fails the
//! requests it is told to fail. `Call` and the methods are generated from the request rows
//! of [`vhost_proto::for_each_frontend_request!`]: one variant per request, with a field
//! per argument of its `Backend` method that is kept by value (a descriptor or the
//! back-end channel has no field and is kept in the [`Recording`]; an optional descriptor
//! or a list of them has a field saying whether or how many came; a buffer to fill has
//! its `size`; see `recording_rows!` in this file). The [`Recording`] handle is shared, so a
//! test can read the calls while a server owns the back-end (in another thread, too).
//!
//! ```
//! use vhost_backend::test_utils::{Call, RecordingBackend};
//! use vhost_backend::{Backend, BackendServer};
//! use vhost_proto::FrontendReq;
//! use vhost_transport::Connection;
//!
//! let backend = RecordingBackend::new().with_queues(2);
//! let recording = backend.recording();
//! recording.fail_on(FrontendReq::SetVringNum);
//! let (server_end, _frontend_end) = Connection::pair().unwrap();
//! let server = BackendServer::new(server_end, backend).unwrap();
//! // The server read the offer when it was built.
//! assert_eq!(
//!     recording.take_calls(),
//!     [Call::GetFeatures, Call::GetProtocolFeatures, Call::GetQueueNum]
//! );
//! # drop(server);
//! ```

use std::collections::BTreeSet;
use std::fs::File;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use vhost_proto::features::virtio;
use vhost_proto::{
    CryptoSession, FrontendReq, Inflight, IotlbMsg, LogBase, MemTable, MemoryRegion,
    ProtocolFeatures, RegionMsg, SharedObject, ShmemConfig, VringAddr,
};

use vhost_transport::OwnedDescriptor;

use crate::{Backend, BackendClient, BackendError, BackendResult, SharedNegotiation};

/// A CREATE_CRYPTO_SESSION body as a [`Call`] keeps it: the payload copied out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CryptoSessionCall {
    /// The session id the front-end sent.
    pub session_id: i64,
    /// The session's setup payload.
    pub payload: Vec<u8>,
}

/// Generates [`Call`] and `impl Backend for RecordingBackend` from the `=> backend(...)`
/// clause of each row of [`vhost_proto::for_each_frontend_request!`].
///
/// Each request is a variant named after it; its fields are the `Backend` method's
/// arguments, by name (but a buffer's), each kept by its type:
///
/// | argument type | in the [`Call`] | in the [`Recording`] |
/// | --- | --- | --- |
/// | `OwnedDescriptor` | (no field) | the descriptor |
/// | `Option<OwnedDescriptor>` | `bool`: whether one came | the descriptor, if any |
/// | `Vec<OwnedDescriptor>` | `usize`: how many came | the descriptors |
/// | `BackendClient` | (no field) | the client ([`Recording::backend_client`]) |
/// | `&mut [u8]` (a buffer to fill) | `size: usize`: its length (one such per method) | |
/// | `&[u8]` | `Vec<u8>` | |
/// | `&MemTable` | `Vec<MemoryRegion>`: its regions | |
/// | `&CryptoSession<'_>` | [`CryptoSessionCall`] | |
/// | `&T`, another body | `T`, copied | |
/// | a value | the value | |
///
/// A variant without fields is a unit variant. The method records its call (failing if
/// told to: [`Recording::fail_on`]), keeps the descriptors and client that came, then
/// answers: `Ok(())` for a method whose success is `()`; otherwise `answer::<method>`, the
/// function of the `answer` module named after the method (reading the back-end's public
/// answer fields); for a row whose dispatch goes `via helper`, `answer::<helper>` with every
/// argument (GET_CONFIG fills its buffer from `config`). A request whose method answers
/// something and has no answer function does not compile.
///
/// The macro munches the rows one at a time, then each row's arguments one at a time,
/// accumulating the variants, the methods and the variant names; the last step writes the
/// enum and the impl. That is deeper than the default recursion limit, hence the crate's
/// `recursion_limit` with the `test-utils` feature. The entry arm matches only the start
/// of a row, so a row or step no arm matches fails with "no rules expected" (checked by
/// invoking the macro on a row without its `backend` clause: before the guard, that
/// re-entered the entry arm until "recursion limit reached").
macro_rules! recording_rows {
    // Every row done: write the enum, `Call::request` and the impl.
    (@rows [$($variants:tt)*] [$($methods:tt)*] [$($names:ident)*]) => {
        /// One call a [`RecordingBackend`] received, with its arguments (descriptors as
        /// whether or how many came): one variant per front-end request, generated from
        /// the rows of [`vhost_proto::for_each_frontend_request!`] (see the module docs).
        #[derive(Debug, Clone, PartialEq, Eq)]
        #[allow(missing_docs)]
        pub enum Call {
            $($variants)*
            /// Not a request: [`Backend::disconnected`].
            Disconnected,
        }

        impl Call {
            /// The request this call answered; `None` for [`Call::Disconnected`].
            pub fn request(&self) -> Option<FrontendReq> {
                match self {
                    $(Call::$names { .. } => Some(FrontendReq::$names),)*
                    Call::Disconnected => None,
                }
            }
        }

        impl Backend for RecordingBackend {
            $($methods)*

            fn bind_negotiation(&mut self, negotiation: SharedNegotiation) {
                self.recording.state().negotiation = Some(negotiation);
            }

            /// Records the call and drops the descriptors and back-end channel it kept.
            fn disconnected(&mut self) -> BackendResult<()> {
                let mut state = self.recording.state();
                state.calls.push(Call::Disconnected);
                state.fds.clear();
                state.client = None;
                Ok(())
            }
        }
    };
    // One row: how it answers, then its arguments.
    (@rows $vs:tt $ms:tt $ns:tt $(#[$m:meta])* $v:ident $(($($body:tt)*))? = $code:literal => $spec:expr
        => backend($(#[$d:meta])* $(|$b:tt|)? fn $name:ident($($args:tt)*) -> $ret:ty $(= $default:block)? => via $helper:ident)
        $(=> $other:ident($($o:tt)*))*; $($rest:tt)*) => {
        recording_rows!(@args [$vs $ms $ns [$(#[$m])*] $v $name [via $helper] [$ret]] [] [] [] [] [$($args)*] $($rest)*);
    };
    (@rows $vs:tt $ms:tt $ns:tt $(#[$m:meta])* $v:ident $(($($body:tt)*))? = $code:literal => $spec:expr
        => backend($(#[$d:meta])* $(|$b:tt|)? fn $name:ident($($args:tt)*) -> () $(= $default:block)? => $($shape:tt)*)
        $(=> $other:ident($($o:tt)*))*; $($rest:tt)*) => {
        recording_rows!(@args [$vs $ms $ns [$(#[$m])*] $v $name [unit] [()]] [] [] [] [] [$($args)*] $($rest)*);
    };
    (@rows $vs:tt $ms:tt $ns:tt $(#[$m:meta])* $v:ident $(($($body:tt)*))? = $code:literal => $spec:expr
        => backend($(#[$d:meta])* $(|$b:tt|)? fn $name:ident($($args:tt)*) -> $ret:ty $(= $default:block)? => $($shape:tt)*)
        $(=> $other:ident($($o:tt)*))*; $($rest:tt)*) => {
        recording_rows!(@args [$vs $ms $ns [$(#[$m])*] $v $name [answer] [$ret]] [] [] [] [] [$($args)*] $($rest)*);
    };
    // One argument: its parameter, its field (if any), what is kept, its name.
    (@args $row:tt [$($sig:tt)*] [$($f:tt)*] [$($k:tt)*] [$($n:tt)*]
        [$a:ident : OwnedDescriptor = $s:tt $(, $($more:tt)*)?] $($rest:tt)*) => {
        recording_rows!(@args $row [$($sig)* $a: OwnedDescriptor,] [$($f)*] [$($k)* (fds [$a])] [$($n)* $a]
            [$($($more)*)?] $($rest)*);
    };
    (@args $row:tt [$($sig:tt)*] [$($f:tt)*] [$($k:tt)*] [$($n:tt)*]
        [$a:ident : Option<OwnedDescriptor> = $s:tt $(, $($more:tt)*)?] $($rest:tt)*) => {
        recording_rows!(@args $row [$($sig)* $a: Option<OwnedDescriptor>,] [$($f)* {$a: bool = $a.is_some()}]
            [$($k)* (fds $a)] [$($n)* $a] [$($($more)*)?] $($rest)*);
    };
    (@args $row:tt [$($sig:tt)*] [$($f:tt)*] [$($k:tt)*] [$($n:tt)*]
        [$a:ident : Vec<OwnedDescriptor> = $s:tt $(, $($more:tt)*)?] $($rest:tt)*) => {
        recording_rows!(@args $row [$($sig)* $a: Vec<OwnedDescriptor>,] [$($f)* {$a: usize = $a.len()}]
            [$($k)* (fds $a)] [$($n)* $a] [$($($more)*)?] $($rest)*);
    };
    (@args $row:tt [$($sig:tt)*] [$($f:tt)*] [$($k:tt)*] [$($n:tt)*]
        [$a:ident : BackendClient = $s:tt $(, $($more:tt)*)?] $($rest:tt)*) => {
        recording_rows!(@args $row [$($sig)* $a: BackendClient,] [$($f)*] [$($k)* (client $a)] [$($n)* $a]
            [$($($more)*)?] $($rest)*);
    };
    (@args $row:tt [$($sig:tt)*] [$($f:tt)*] [$($k:tt)*] [$($n:tt)*]
        [$a:ident : &mut [u8] = $s:tt $(, $($more:tt)*)?] $($rest:tt)*) => {
        recording_rows!(@args $row [$($sig)* $a: &mut [u8],] [$($f)* {size: usize = $a.len()}] [$($k)*] [$($n)* $a]
            [$($($more)*)?] $($rest)*);
    };
    (@args $row:tt [$($sig:tt)*] [$($f:tt)*] [$($k:tt)*] [$($n:tt)*]
        [$a:ident : &[u8] = $s:tt $(, $($more:tt)*)?] $($rest:tt)*) => {
        recording_rows!(@args $row [$($sig)* $a: &[u8],] [$($f)* {$a: Vec<u8> = $a.to_vec()}] [$($k)*] [$($n)* $a]
            [$($($more)*)?] $($rest)*);
    };
    (@args $row:tt [$($sig:tt)*] [$($f:tt)*] [$($k:tt)*] [$($n:tt)*]
        [$a:ident : &MemTable = $s:tt $(, $($more:tt)*)?] $($rest:tt)*) => {
        recording_rows!(@args $row [$($sig)* $a: &MemTable,] [$($f)* {$a: Vec<MemoryRegion> = $a.regions().to_vec()}]
            [$($k)*] [$($n)* $a] [$($($more)*)?] $($rest)*);
    };
    (@args $row:tt [$($sig:tt)*] [$($f:tt)*] [$($k:tt)*] [$($n:tt)*]
        [$a:ident : &CryptoSession<'_> = $s:tt $(, $($more:tt)*)?] $($rest:tt)*) => {
        recording_rows!(@args $row [$($sig)* $a: &CryptoSession<'_>,]
            [$($f)* {$a: CryptoSessionCall = CryptoSessionCall { session_id: $a.session_id, payload: $a.payload.to_vec() }}]
            [$($k)*] [$($n)* $a] [$($($more)*)?] $($rest)*);
    };
    (@args $row:tt [$($sig:tt)*] [$($f:tt)*] [$($k:tt)*] [$($n:tt)*]
        [$a:ident : & $t:ident = $s:tt $(, $($more:tt)*)?] $($rest:tt)*) => {
        recording_rows!(@args $row [$($sig)* $a: &$t,] [$($f)* {$a: $t = *$a}] [$($k)*] [$($n)* $a]
            [$($($more)*)?] $($rest)*);
    };
    (@args $row:tt [$($sig:tt)*] [$($f:tt)*] [$($k:tt)*] [$($n:tt)*]
        [$a:ident : $t:ty = $s:tt $(, $($more:tt)*)?] $($rest:tt)*) => {
        recording_rows!(@args $row [$($sig)* $a: $t,] [$($f)* {$a: $t = $a}] [$($k)*] [$($n)* $a]
            [$($($more)*)?] $($rest)*);
    };
    // Every argument done: the variant and the method, then the next row.
    (@args [[$($vs:tt)*] $ms:tt [$($ns:tt)*] [$($doc:tt)*] $v:ident $name:ident $answer:tt $ret:tt]
        $sig:tt [] $k:tt $n:tt [] $($rest:tt)*) => {
        recording_rows!(@method [[$($vs)* $($doc)* $v,] $ms [$($ns)* $v]] $v $name $answer $ret $sig
            (Call::$v) $k $n $($rest)*);
    };
    (@args [[$($vs:tt)*] $ms:tt [$($ns:tt)*] [$($doc:tt)*] $v:ident $name:ident $answer:tt $ret:tt]
        $sig:tt [$({$fa:ident : $fty:ty = $fv:expr})+] $k:tt $n:tt [] $($rest:tt)*) => {
        recording_rows!(@method [[$($vs)* $($doc)* $v { $($fa: $fty,)* },] $ms [$($ns)* $v]] $v $name $answer $ret $sig
            (Call::$v { $($fa: $fv,)* }) $k $n $($rest)*);
    };
    (@method [$vs:tt [$($ms:tt)*] $ns:tt] $v:ident $name:ident [$($answer:tt)*] [$ret:ty] [$($sig:tt)*]
        ($call:expr) [$(($($k:tt)*))*] [$($n:ident)*] $($rest:tt)*) => {
        recording_rows!(@rows $vs
            [$($ms)*
                fn $name(&mut self, $($sig)*) -> BackendResult<$ret> {
                    self.record($call)?;
                    $(recording_rows!(@keep self, $v, $($k)*);)*
                    recording_rows!(@answer self, $name [$($answer)*] $($n)*)
                }
            ]
            $ns
            $($rest)*
        );
    };
    (@keep $self:ident, $v:ident, fds $e:expr) => { $self.keep(FrontendReq::$v, $e) };
    (@keep $self:ident, $v:ident, client $a:ident) => { $self.recording.state().client = Some($a) };
    (@answer $self:ident, $name:ident [unit] $($n:ident)*) => { Ok(()) };
    (@answer $self:ident, $name:ident [answer] $($n:ident)*) => { answer::$name($self) };
    (@answer $self:ident, $name:ident [via $helper:ident] $($n:ident)*) => { answer::$helper($self, $($n),*) };
    // Entry: the rows of `for_each_frontend_request!`. The pattern starts like a row (its
    // attributes, then its variant name), so an internal step (`@...`) that no arm above
    // matches fails with "no rules expected" instead of re-entering here until the
    // recursion limit.
    ($(#[$m:meta])* $v:ident $($rows:tt)*) => {
        recording_rows!(@rows [] [] [] $(#[$m])* $v $($rows)*);
    };
}

vhost_proto::for_each_frontend_request!(recording_rows);

#[derive(Debug, Default)]
struct State {
    calls: Vec<Call>,
    fds: Vec<(FrontendReq, OwnedDescriptor)>,
    failing: BTreeSet<FrontendReq>,
    client: Option<BackendClient>,
    negotiation: Option<SharedNegotiation>,
    /// What the bound negotiation said was acked when each SET_FEATURES came.
    acked_seen: Vec<u64>,
}

/// A shared view of what a [`RecordingBackend`] received; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Recording(Arc<Mutex<State>>);

impl Recording {
    fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The calls so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.state().calls.clone()
    }

    /// The calls so far, forgetting them.
    pub fn take_calls(&self) -> Vec<Call> {
        std::mem::take(&mut self.state().calls)
    }

    /// The descriptors received since the last disconnect, with the request each came
    /// with, forgetting them.
    pub fn take_fds(&self) -> Vec<(FrontendReq, OwnedDescriptor)> {
        std::mem::take(&mut self.state().fds)
    }

    /// How many descriptors are kept.
    pub fn fd_count(&self) -> usize {
        self.state().fds.len()
    }

    /// The acked features in the negotiation the server bound
    /// ([`Backend::bind_negotiation`]), if one is bound.
    pub fn acked_in_negotiation(&self) -> Option<u64> {
        let negotiation = self.state().negotiation.clone()?;
        let acked = negotiation
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .acked_features();
        Some(acked)
    }

    /// For each SET_FEATURES so far, the acked features the bound negotiation showed while
    /// the method ran.
    pub fn acked_seen_by_set_features(&self) -> Vec<u64> {
        self.state().acked_seen.clone()
    }

    /// Makes the method for `request` fail from now on, with [`BackendError::Refused`]
    /// holding an [`InjectedFailure`].
    pub fn fail_on(&self, request: FrontendReq) {
        self.state().failing.insert(request);
    }

    /// Makes the method for `request` succeed again.
    pub fn succeed_on(&self, request: FrontendReq) {
        self.state().failing.remove(&request);
    }

    /// The back-end channel handed over with SET_BACKEND_REQ_FD, if any.
    pub fn backend_client(&self) -> Option<BackendClient> {
        self.state().client.clone()
    }
}

/// The failure a [`RecordingBackend`] was told to produce ([`Recording::fail_on`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{} set to fail", .request.name())]
pub struct InjectedFailure {
    /// The request told to fail.
    pub request: FrontendReq,
}

/// A [`Backend`] that records every call. Answers are the public fields; the defaults
/// offer VERSION_1 and PROTOCOL_FEATURES, every protocol feature, two queues and 32 bytes
/// of configuration space holding `0, 1, 2, ...`.
#[derive(Debug, Clone)]
pub struct RecordingBackend {
    /// GET_FEATURES answer.
    pub features: u64,
    /// GET_PROTOCOL_FEATURES answer.
    pub protocol: ProtocolFeatures,
    /// GET_QUEUE_NUM answer (`None`: not supported).
    pub queues: Option<u64>,
    /// The configuration space GET_CONFIG reads (zeros past its end).
    pub config: Vec<u8>,
    /// GET_VRING_BASE answer.
    pub vring_base: u32,
    /// GET_STATUS answer.
    pub status: u64,
    /// GET_MAX_MEM_SLOTS answer.
    pub max_mem_slots: u64,
    /// CREATE_CRYPTO_SESSION answer.
    pub crypto_session_id: i64,
    /// GET_INFLIGHT_FD answer (a descriptor of the null device rides with it).
    pub inflight: Inflight,
    /// GET_SHMEM_CONFIG answer.
    pub shmem: ShmemConfig,
    /// SET_DEVICE_STATE_FD hands a descriptor back.
    pub device_state_fd: bool,
    recording: Recording,
}

impl Default for RecordingBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl RecordingBackend {
    /// A back-end with the default answers.
    pub fn new() -> Self {
        RecordingBackend {
            features: virtio::bit(virtio::VERSION_1) | virtio::bit(virtio::PROTOCOL_FEATURES),
            protocol: ProtocolFeatures::all(),
            queues: Some(2),
            config: (0..32).collect(),
            vring_base: 0,
            status: 0,
            max_mem_slots: 32,
            crypto_session_id: 1,
            inflight: Inflight::default(),
            shmem: ShmemConfig::default(),
            device_state_fd: false,
            recording: Recording::default(),
        }
    }

    /// With these virtio features offered.
    pub fn with_features(mut self, features: u64) -> Self {
        self.features = features;
        self
    }

    /// With these protocol features offered.
    pub fn with_protocol(mut self, protocol: ProtocolFeatures) -> Self {
        self.protocol = protocol;
        self
    }

    /// With this many queues (GET_QUEUE_NUM).
    pub fn with_queues(mut self, queues: u64) -> Self {
        self.queues = Some(queues);
        self
    }

    /// With this configuration space.
    pub fn with_config(mut self, config: Vec<u8>) -> Self {
        self.config = config;
        self
    }

    /// The shared record of calls and descriptors.
    pub fn recording(&self) -> Recording {
        self.recording.clone()
    }

    /// Records `call`, then fails if told to fail its request. For SET_FEATURES, also
    /// records what the bound negotiation shows acked while the method runs.
    fn record(&self, call: Call) -> BackendResult<()> {
        let acked = match call {
            Call::SetFeatures { .. } => self.recording.acked_in_negotiation(),
            _ => None,
        };
        let mut state = self.recording.state();
        state.acked_seen.extend(acked);
        let request = call.request();
        state.calls.push(call);
        if let Some(request) = request.filter(|r| state.failing.contains(r)) {
            return Err(BackendError::Refused(Box::new(InjectedFailure { request })));
        }
        Ok(())
    }

    /// Keeps the descriptors that came with `request`.
    fn keep(&self, request: FrontendReq, fds: impl IntoIterator<Item = OwnedDescriptor>) {
        let mut state = self.recording.state();
        state.fds.extend(fds.into_iter().map(|fd| (request, fd)));
    }
}

/// A descriptor to hand back to the front-end: the null device.
fn fresh_fd() -> BackendResult<OwnedDescriptor> {
    let null = if cfg!(windows) { "NUL" } else { "/dev/null" };
    Ok(File::open(null)?.into())
}

/// The answers of the requests whose method answers something (see `recording_rows!`):
/// one function per method, named after it.
mod answer {
    use super::*;

    pub(super) fn get_features(b: &RecordingBackend) -> BackendResult<u64> {
        Ok(b.features)
    }
    pub(super) fn get_vring_base(b: &RecordingBackend) -> BackendResult<u32> {
        Ok(b.vring_base)
    }
    pub(super) fn get_protocol_features(b: &RecordingBackend) -> BackendResult<ProtocolFeatures> {
        Ok(b.protocol)
    }
    pub(super) fn get_queue_num(b: &RecordingBackend) -> BackendResult<u64> {
        b.queues.ok_or(BackendError::NotSupported)
    }
    /// GET_CONFIG (its dispatch goes `via get_config`): `buf` from `config` at `offset`,
    /// zeros past its end.
    pub(super) fn get_config(
        b: &RecordingBackend,
        offset: u32,
        buf: &mut [u8],
        _flags: u32,
    ) -> BackendResult<()> {
        for (i, byte) in buf.iter_mut().enumerate() {
            let at = (offset as usize).saturating_add(i);
            *byte = b.config.get(at).copied().unwrap_or(0);
        }
        Ok(())
    }
    pub(super) fn create_crypto_session(b: &RecordingBackend) -> BackendResult<i64> {
        Ok(b.crypto_session_id)
    }
    pub(super) fn postcopy_advise(_: &RecordingBackend) -> BackendResult<OwnedDescriptor> {
        fresh_fd()
    }
    pub(super) fn get_inflight_fd(
        b: &RecordingBackend,
    ) -> BackendResult<(Inflight, OwnedDescriptor)> {
        Ok((b.inflight, fresh_fd()?))
    }
    pub(super) fn get_max_mem_slots(b: &RecordingBackend) -> BackendResult<u64> {
        Ok(b.max_mem_slots)
    }
    pub(super) fn get_status(b: &RecordingBackend) -> BackendResult<u64> {
        Ok(b.status)
    }
    pub(super) fn get_shared_object(_: &RecordingBackend) -> BackendResult<OwnedDescriptor> {
        fresh_fd()
    }
    pub(super) fn set_device_state_fd(
        b: &RecordingBackend,
    ) -> BackendResult<Option<OwnedDescriptor>> {
        b.device_state_fd.then(fresh_fd).transpose()
    }
    pub(super) fn get_shmem_config(b: &RecordingBackend) -> BackendResult<ShmemConfig> {
        Ok(b.shmem)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_names_its_request_and_fails_when_told() {
        use FrontendReq as Q;
        assert_eq!(Call::GetFeatures.request(), Some(Q::GetFeatures));
        let kick = Call::SetVringKick {
            index: 1,
            fd: false,
        };
        assert_eq!(kick.request(), Some(Q::SetVringKick));
        assert_eq!(Call::Disconnected.request(), None);
        let mut backend = RecordingBackend::new();
        backend.recording().fail_on(Q::SetVringNum);
        let e = backend.set_vring_num(0, 8).unwrap_err();
        assert!(matches!(&e, BackendError::Refused(inner)
            if inner.downcast_ref::<InjectedFailure>() == Some(&InjectedFailure { request: Q::SetVringNum })));
        assert!(backend.set_vring_base(0, 0).is_ok());
        assert_eq!(
            backend.recording().calls().len(),
            2,
            "a failed call is recorded too"
        );
    }

    /// The generated methods keep each argument by its type: descriptors in the recording
    /// (only when the call succeeds), their presence or count in the call, buffers by
    /// length and filled by the answer.
    #[test]
    fn generated_methods_keep_descriptors_by_type_and_answer() {
        let mut backend = RecordingBackend::new();
        let rec = backend.recording();
        let region = MemoryRegion {
            guest_phys_addr: 0,
            memory_size: 0x1000,
            user_addr: 0x7000_0000,
            mmap_offset: 0,
        };
        let table = MemTable::new(&[region, region]).unwrap();
        let fds = vec![fresh_fd().unwrap(), fresh_fd().unwrap()];
        backend.set_mem_table(&table, fds).unwrap();
        backend.set_vring_kick(1, None).unwrap();
        backend
            .set_vring_call(1, Some(fresh_fd().unwrap()))
            .unwrap();
        rec.fail_on(FrontendReq::SetLogFd);
        assert!(backend.set_log_fd(fresh_fd().unwrap()).is_err());
        let mut buf = [0u8; 4];
        backend.get_config(30, &mut buf, 0).unwrap();
        assert_eq!(buf, [30, 31, 0, 0], "config bytes, zeros past its end");
        backend.queues = None;
        assert!(matches!(
            backend.get_queue_num(),
            Err(BackendError::NotSupported)
        ));
        assert_eq!(
            rec.take_calls(),
            [
                Call::SetMemTable {
                    table: vec![region, region],
                    fds: 2,
                },
                Call::SetVringKick {
                    index: 1,
                    fd: false,
                },
                Call::SetVringCall { index: 1, fd: true },
                Call::SetLogFd,
                Call::GetConfig {
                    offset: 30,
                    size: 4,
                    flags: 0,
                },
                Call::GetQueueNum,
            ]
        );
        let kept: Vec<FrontendReq> = rec.take_fds().into_iter().map(|(r, _)| r).collect();
        assert_eq!(
            kept,
            [
                FrontendReq::SetMemTable,
                FrontendReq::SetMemTable,
                FrontendReq::SetVringCall,
            ],
            "the failed SET_LOG_FD's descriptor is not kept"
        );
        backend.set_vring_err(0, Some(fresh_fd().unwrap())).unwrap();
        assert_eq!(rec.fd_count(), 1);
        backend.disconnected().unwrap();
        assert_eq!(rec.fd_count(), 0, "a disconnect drops what was kept");
    }
}
