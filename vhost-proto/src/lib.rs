//! The vhost-user protocol as pure data: no I/O, no `unsafe`.
//!
//! This crate knows every message of the vhost-user specification in both directions —
//! 44 front-end requests and 10 back-end requests — with their header, body layouts,
//! descriptor rules, the protocol features that gate them and what they owe (nothing, an
//! ack when asked, or a reply). It never sees a socket or a descriptor: it is told how many
//! descriptors arrived with a message and answers whether that is right.
//!
//! # Receiving a request
//! ```
//! use vhost_proto::*;
//! let mut neg = Negotiation::new(1 << 30 | 1 << 32, ProtocolFeatures::REPLY_ACK, 1);
//! // Bytes as they came off the socket: header, then body (no descriptors).
//! let header = Header::new(FrontendReq::GetFeatures as u32, HeaderFlags::empty(), 0);
//! let req = header.check_frontend_request().unwrap(); // framing: close on error
//! let msg = FrontendRequest::decode(req, &[], 0, neg.decode_context()).unwrap();
//! neg.check(&msg).unwrap(); // gates and indices: reply with the failure form on error
//! assert_eq!(neg.owes(req, header.need_reply()), Owed::Reply(ReplyShape::U64));
//! let mut body = [0u8; MAX_BODY_SIZE];
//! let enc = FrontendReply::U64(neg.offered_features()).encode(req, &mut body).unwrap();
//! assert_eq!(enc.header.size, 8);
//! neg.apply(&msg);
//! ```
//!
//! # Adding a request
//! Every front-end request is declared once, as one row of
//! [`for_each_frontend_request!`] (in `src/requests.rs`):
//!
//! ```text
//! /// Set a vring's size.
//! SetVringNum(VringState) = 8 => spec("SET_VRING_NUM", fixed::<wire::VringState>(), F::None,
//!     Gate::None, AckWhenAsked, R::U64).changes()
//!     => backend(
//!         /// SET_VRING_NUM: the ring's size.
//!         |s| fn set_vring_num(index: u32 = (s.index), num: u32 = (s.num)) -> ()
//!         => done
//!     )
//!     => client(
//!         /// SET_VRING_NUM (8): the ring's size.
//!         fn set_vring_num(index: u32, num: u32) -> () = simple(state(index, num))
//!     );
//! ```
//!
//! From that row follow, with no other edit in this crate: the [`FrontendReq`] code and name,
//! its [`RequestSpec`] in [`FRONTEND_REQUESTS`] (body shape and size limit, descriptor policy,
//! the feature gate, what it owes and the reply shape, and the policy columns: whether it
//! changes state, its failure form, whether its reply may carry a descriptor), the
//! [`FrontendRequest`] variant, and its `decode`, `encode`, `code`, `fd_count` and
//! `vring_index`. The header checks, [`Negotiation`], [`FrontendReply::decode`] and
//! [`FrontendReply::failure`], and the server's error policy read the table.
//!
//! The back-end's requests are declared the same way, in [`for_each_backend_request!`],
//! from which [`BackendReq`], [`BACKEND_REQUESTS`] and [`BackendRequest`] follow; both
//! request enums come from one generator over the rows. Their `handler` clause gives the
//! front-end's handler trait and its dispatch (vhost-frontend), their `client` clause the
//! back-end's `BackendClient` methods (vhost-backend). Adding a back-end request is its row,
//! its body type if new, and the front-end's handling of it; an argument source the
//! `handler` clause has not used yet needs an `@arg` arm in vhost-frontend's `handler_rows!`
//! (`backend_channel.rs`), a handler output other than `()` and `Option<OwnedFd>` an impl
//! of its `ReplyFd`; and, demanded by `cargo test`, its call in vhost-backend's
//! `tests/server_backend_channel.rs` (the test checks that every back-end request is sent)
//! and this crate's spec oracles, as listed below for front-end requests
//! (`spec_rows::BACKEND`, a golden vector, the count `10` and `from_code(11)` in
//! `table.rs`'s unit tests, `11` as an unknown code in `tests/table.rs`, an arm in
//! `tests/roundtrip.rs`).
//!
//! The row's `=> backend(...)` clause declares the request's `Backend` method (its
//! documentation, name, arguments, success type and default body) and the server's
//! dispatch to it: the arguments' sources in the decoded body and the descriptors, and the
//! function that shapes the method's success as the reply (`done`, `status`, `value`, or a
//! reply of the request's own). From it vhost-backend generates the trait, the dispatch's
//! `match`, and the recording test back-end (`test_utils`: the `Call` variant, with a field
//! per argument kept by value — a descriptor or the back-end channel has none, an optional
//! descriptor or a list of them has its presence or count, a buffer to fill its `size` —
//! and the `RecordingBackend` method that records it, keeps the descriptors and answers).
//! The `=> client(...)` clause declares the front-end client's method (its
//! documentation, public signature, the body and descriptors it sends and how it reads the
//! reply, or `via` a helper of the request's own), which vhost-frontend generates. The
//! syntax of both is documented on [`for_each_frontend_request!`]. This crate only carries
//! the clauses; the names in them are resolved in the crates that generate from them.
//!
//! Adding a front-end request is therefore:
//! 1. the row, with its `backend` and `client` clauses;
//! 2. its body type, if no existing one fits: layout in [`wire`] and an `impl Body` (decode,
//!    encode, and the rules of the type) in its family's file under `src/frontend/`; a rule
//!    of this request only is a `where` function named in the row;
//! 3. its runtime semantics: the back-end's implementation of its `Backend` method (in the
//!    runtime's `DeviceBackend`, unless the default body fits).
//!
//! Besides, only where the request has behaviour of its own, a function the row or its
//! success type names, each one the compiler points to when missing: a reply of a new shape
//! needs its shaping function in vhost-backend's dispatch (the name in the `backend`
//! clause); a method that answers something other than `()` needs its answer in the
//! recording back-end (`answer::<method>` in `test_utils`, reading the back-end's public
//! answer fields); a client method with building or reply checks of its own is `via` a
//! helper the `client` clause names.
//!
//! Only where the row uses a kind of clause no row used before, a generator arm, each one
//! the compiler points to when missing ("no rules expected", or a type error in the
//! generated code): an argument source other than `fd`, `fd_or_nofd`, `fds`, `channel`, the
//! body or an expression needs an `@arg` arm in vhost-backend's `dispatch_rows!`
//! (`server/dispatch.rs`); an argument type the recording back-end cannot keep as it keeps
//! the others (a new descriptor-like type, or a `&T` that is not `Copy`) needs an `@args`
//! arm in `recording_rows!` (`test_utils.rs`); a reply reader other than `simple`,
//! `u64_status` and `value` needs an `@read` arm in vhost-frontend's `client_rows!`
//! (`client/requests.rs`). A row without its `backend` or `client` clause does not compile
//! (no rule of the generators matches it).
//!
//! Then the tests that `cargo test` (not the compiler) demands:
//! - vhost-backend `tests/common/cases.rs`: a sample of the request (its message, the
//!   `Call` it causes, its reply), which `cases_cover_every_frontend_request`
//!   (`tests/server_requests.rs`) demands;
//! - vhost-frontend `tests/client.rs`: a call of the client method and the `Call` it
//!   causes, which its test of every request demands
//!   (`every_frontend_request_reaches_the_backend_with_its_arguments_and_typed_replies`
//!   checks that the calls cover [`FrontendReq::all`]);
//! - this crate's spec oracles, hard-coded on purpose (they are the specification's
//!   text, independent of the rows): the row in `tests/common/spec_rows.rs` (and its
//!   array's length); a golden vector in `tests/common/golden.rs` (`tests/golden.rs`
//!   checks that every request has one); the count `44` and `from_code(45)` in
//!   `src/table.rs`'s unit tests and, for a request with a policy column set, its pinned
//!   columns there; `45` as an unknown code in `tests/table.rs` and in
//!   `tests/invalid_header.rs`; `44 * 4` and, for a gated request, the count of gated
//!   requests (`29`) in `tests/negotiation.rs`; and an arm building a sample in
//!   `tests/roundtrip.rs` (a compile error in that test until added; its code range
//!   follows [`FRONTEND_REQUESTS`]). The server's and the daemons' unknown-code tests
//!   (vhost-backend `tests/server_policy.rs`, vhost-test-support `hostile.rs`) and the
//!   fuzz target `server_session` take their codes from [`FRONTEND_REQUESTS`].
//!
//! The prose that says "44" or "1–44" is not checked: 8 places to update by hand (this
//! page, [`for_each_frontend_request!`], [`FrontendReq`]; vhost-backend's crate docs, its
//! `Backend` trait and `tests/server_requests.rs`; vhost-frontend's `client` module and
//! `client/requests.rs`).
//!
//! Counted: one row and, when new, one body type here; the method's implementation
//! (demanded by the compiler when the method has no default); 0 to 3 named helpers
//! (dispatch shaping, recording answer, client helper) and 0 to 3 generator arms (dispatch
//! source, recording argument kind, client reply reader), each demanded by the compiler;
//! 2 test samples in the other crates (vhost-backend's cases, vhost-frontend's client
//! test) and 8 edits of the spec oracles in this crate (up to 10: a policy column, a
//! gate), each demanded by a failing test or, for `roundtrip.rs`, the compiler; and the
//! 8 unchecked counts in prose. Before the first rows, a dozen places in the code were
//! kept in step by hand: the enum, decode, `code`, encode, `FrontendReply::failure`, the
//! reply-descriptor special case, the policy's `changes_state` and `blank`, the trait
//! method, the dispatch arm, `Call` and the recording method, and the client method, of
//! which only the dispatch arm was checked.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[macro_use]
mod requests;
mod backend;
mod codec;
mod error;
pub mod features;
mod frontend;
mod header;
pub mod inflight;
pub mod limits;
mod negotiation;
pub mod region;
pub mod table;
pub mod wire;

pub use backend::{decode_backend_reply, encode_backend_reply, BackendRequest};
pub use error::{Error, MessageKind, Requirement};
pub use features::{virtio, ProtocolFeatures};
pub use frontend::{
    encode_u64_reply, validate_regions, Config, CryptoSession, DecodeContext, Encoded,
    FrontendReply, FrontendRequest, MemTable, RegionMsg, VringFd, XenMapping,
    MAX_MEM_TABLE_REGIONS,
};
pub use header::{Header, HeaderFlags, VERSION, VERSION_MASK};
pub use limits::{MAX_QUEUES, MAX_QUEUE_SIZE};
pub use negotiation::{Negotiation, Owed};
pub use region::RegionFault;
pub use table::{
    BackendReq, BodyShape, FdPolicy, FrontendReq, Gate, Owes, ReplyShape, RequestSpec, ACK_FAILURE,
    BACKEND_REQUESTS, FRONTEND_REQUESTS,
};
pub use wire::{
    ConfigHeader, DeviceStateTransfer, Inflight, IotlbMsg, LogBase, MemoryRegion, SharedObject,
    ShmemConfig, ShmemMap, VringAddr, VringArea, VringState,
};

/// Size of the message header on the wire: `request: u32`, `flags: u32`, `size: u32`.
pub const HEADER_SIZE: usize = 12;
/// Largest body any message of the protocol may carry. Checked before anything allocates.
pub const MAX_BODY_SIZE: usize = 4096;
/// Most descriptors the protocol allows in one message (SET_MEM_TABLE: one per region, 8 regions).
pub const MAX_FDS: usize = 8;
