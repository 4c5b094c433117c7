//! The [`Backend`] trait: one method per front-end request.
//!
//! Arguments are typed values from `vhost-proto`, already decoded, validated and gated by the
//! server; descriptors arrive as owned values ([`OwnedDescriptor`]: an fd on Unix, a handle
//! on Windows). Optional requests have defaults that answer "not
//! supported", which the server turns into the specification's failure form (a non-zero ack,
//! a zero-size config, no descriptor, or a closed connection where no failure form exists).
//!
//! The trait's request methods are declared in `vhost-proto`, in the `=> backend(...)`
//! clause of each row of [`vhost_proto::for_each_frontend_request!`] (documentation, name,
//! arguments, success type, default body); the same clause gives the server's dispatch.
//! A macro here turns the clauses into the trait and also derives the wrapper impls
//! (`Box<T>`, `Mutex<T>`, `Arc<Mutex<T>>`), so no method is forwarded by hand. Each method
//! is tagged with its request, and the macro checks with an exhaustive match over
//! [`FrontendRequest`] that every request declared in `vhost-proto` has exactly one method.

use std::sync::{Arc, Mutex, PoisonError};

use vhost_proto::{
    CryptoSession, FrontendRequest, Inflight, IotlbMsg, LogBase, MemTable, ProtocolFeatures,
    RegionMsg, SharedObject, ShmemConfig, VringAddr,
};

use vhost_transport::OwnedDescriptor;

use crate::backend_client::{BackendClient, SharedNegotiation};

/// Why a [`Backend`] method failed.
///
/// The variants fall in four kinds ([`BackendError::fault`]), kept apart up to the server's
/// error policy, which decides on the kind alone:
///
/// | kind | variants | what the server does |
/// | --- | --- | --- |
/// | [`Fault::Unsupported`] | [`NotSupported`](BackendError::NotSupported) | the failure form (ack 1, ...), keep serving |
/// | [`Fault::Peer`]: the front-end asked for something this back-end refuses | [`Refused`](BackendError::Refused), [`NoSuchVring`](BackendError::NoSuchVring) | the failure form, logged as the peer's fault, keep serving |
/// | [`Fault::Local`]: this side failed (system call, device, a defect) | [`Io`](BackendError::Io), [`Device`](BackendError::Device), [`Internal`](BackendError::Internal) | the failure form, logged as a local error, keep serving |
/// | [`Fault::Broken`] | [`Broken`](BackendError::Broken) | close the connection |
///
/// Where a failure owes nothing and the request changes ring or memory state, the server
/// closes the connection whatever the kind (see the server's policy module).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The back-end does not implement this request.
    #[error("not supported by this back-end")]
    NotSupported,
    /// The request is valid protocol-wise but this back-end refuses it, for its arguments or
    /// for the state it came in (a region past the end of its file, a ring that is started,
    /// ...): the front-end's fault.
    #[error("refused: {0}")]
    Refused(Box<dyn std::error::Error + Send + Sync>),
    /// The request names a vring the back-end does not have: the front-end's fault.
    #[error("no vring {index}")]
    NoSuchVring {
        /// The index asked for.
        index: u32,
    },
    /// A system call failed: a local fault.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A device-specific failure: a local fault.
    #[error("device error: {0}")]
    Device(Box<dyn std::error::Error + Send + Sync>),
    /// The back-end found its own state inconsistent (a defect, not the front-end's doing).
    #[error("internal error: {0}")]
    Internal(&'static str),
    /// The back-end can no longer keep its state in step with the front-end's (a ring
    /// stopped without its outstanding requests, ...): the server closes the connection
    /// whatever the request owes, and the front-end's reconnection sets everything up again.
    #[error("the back-end cannot go on with this front-end: {0}")]
    Broken(Box<dyn std::error::Error + Send + Sync>),
}

/// Whose fault a [`BackendError`] is, which is all the server's error policy looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// The request is not implemented.
    Unsupported,
    /// The front-end's request was refused.
    Peer,
    /// This side failed.
    Local,
    /// The two sides no longer agree: the connection must close.
    Broken,
}

impl BackendError {
    /// Whose fault this is.
    pub fn fault(&self) -> Fault {
        match self {
            BackendError::NotSupported => Fault::Unsupported,
            BackendError::Refused(_) | BackendError::NoSuchVring { .. } => Fault::Peer,
            BackendError::Io(_) | BackendError::Device(_) | BackendError::Internal(_) => {
                Fault::Local
            }
            BackendError::Broken(_) => Fault::Broken,
        }
    }
}

/// Result of a [`Backend`] method.
pub type BackendResult<T> = Result<T, BackendError>;

/// Declares [`Backend`] from its rows: `[Request] fn method(...) -> T (= { default })?;`.
///
/// What the `[Request]` tags prove, and what they do not:
/// - every front-end request is tagged on some row: the tags make the arms of one `match`
///   over [`FrontendRequest`], which the compiler requires to be exhaustive;
/// - no request is tagged twice: a repeated arm is an unreachable pattern, denied on that
///   `match` (`#[deny(unreachable_patterns)]`, an error even in a plain build);
/// - the tag is not tied to its method by the compiler (a row could carry the wrong tag):
///   the unit test `tagged_methods_are_named_after_their_request` checks each tag against
///   its method's name (the snake case of the request, with the listed exceptions).
///
/// Rows without a tag are methods that are not requests.
macro_rules! declare_backend {
    ($($(#[$m:meta])* $([$req:ident])? fn $name:ident(&mut self $(, $arg:ident : $ty:ty)* $(,)?) -> $ret:ty $(= $default:block)? ;)*) => {
        /// Every front-end request is tagged on a row: one arm per tag, exhaustive (checked
        /// by the compiler) and without repeats (an unreachable pattern, denied here).
        #[allow(dead_code)]
        #[deny(unreachable_patterns)]
        fn every_request_has_a_method(request: &FrontendRequest<'_>) {
            match request {
                $($(FrontendRequest::$req { .. } => {})?)*
            }
        }

        /// Each tag with the method of its row, for the test that the two agree.
        #[cfg(test)]
        const TAGGED_METHODS: &[(&str, &str)] = &[$($((stringify!($req), stringify!($name)),)?)*];

        /// A vhost-user back-end: one method per front-end request (codes 1–44).
        ///
        /// Methods without a default must be implemented; the others answer
        /// [`BackendError::NotSupported`] unless overridden (or, where noted, accept and
        /// ignore the request as the specification allows).
        pub trait Backend: Send {
            $(declare_backend!(@method $(#[$m])* fn $name(&mut self $(, $arg: $ty)*) -> $ret $(= $default)?);)*

            /// Not a request: [`BackendServer::new`](crate::BackendServer::new) hands the
            /// back-end the session's negotiation, the one record of what is acked. The server
            /// updates it before it dispatches a request that changes it (and restores it if
            /// the back-end fails the request), so a back-end reads acked features there
            /// instead of keeping a copy. Ignored by default.
            #[allow(unused_variables)]
            fn bind_negotiation(&mut self, negotiation: SharedNegotiation) {}
        }

        impl<T: Backend + ?Sized> Backend for Box<T> {
            fn bind_negotiation(&mut self, negotiation: SharedNegotiation) {
                (**self).bind_negotiation(negotiation)
            }

            $(fn $name(&mut self $(, $arg: $ty)*) -> $ret { (**self).$name($($arg),*) })*
        }

        impl<T: Backend> Backend for Mutex<T> {
            fn bind_negotiation(&mut self, negotiation: SharedNegotiation) {
                self.get_mut().unwrap_or_else(PoisonError::into_inner).bind_negotiation(negotiation)
            }

            $(fn $name(&mut self $(, $arg: $ty)*) -> $ret {
                self.get_mut().unwrap_or_else(PoisonError::into_inner).$name($($arg),*)
            })*
        }

        impl<T: Backend> Backend for Arc<Mutex<T>> {
            fn bind_negotiation(&mut self, negotiation: SharedNegotiation) {
                self.lock().unwrap_or_else(PoisonError::into_inner).bind_negotiation(negotiation)
            }

            $(fn $name(&mut self $(, $arg: $ty)*) -> $ret {
                self.lock().unwrap_or_else(PoisonError::into_inner).$name($($arg),*)
            })*
        }
    };
    (@method $(#[$m:meta])* fn $name:ident(&mut self $(, $arg:ident : $ty:ty)*) -> $ret:ty = $default:block) => {
        $(#[$m])*
        #[allow(unused_variables)]
        fn $name(&mut self $(, $arg: $ty)*) -> $ret $default
    };
    (@method $(#[$m:meta])* fn $name:ident(&mut self $(, $arg:ident : $ty:ty)*) -> $ret:ty) => {
        $(#[$m])*
        fn $name(&mut self $(, $arg: $ty)*) -> $ret;
    };
}

/// Declares [`Backend`] from the `=> backend(...)` clause of each row of
/// [`vhost_proto::for_each_frontend_request!`]: the method's documentation, name,
/// arguments and their types, success type and default body (the server's dispatch reads
/// the same clauses, in `server/dispatch.rs`). Methods that are not requests follow the rows.
macro_rules! backend_trait_rows {
    ($($(#[$m:meta])* $v:ident $(($($body:tt)*))? = $code:literal => $spec:expr => backend(
        $(#[$d:meta])* $(|$b:tt|)? fn $name:ident($($arg:ident : $aty:ty = $src:tt),*) -> $ret:ty $(= $default:block)?
        => $($shape:tt)*
    ) $(=> $other:ident($($o:tt)*))*;)*) => {
        declare_backend! {
            $($(#[$d])* [$v] fn $name(&mut self $(, $arg: $aty)*) -> BackendResult<$ret> $(= $default)?;)*
            /// Not a request: the front-end went away. Stop the rings, drop mappings and
            /// descriptors, and return to the just-started state for the next front-end.
            fn disconnected(&mut self) -> BackendResult<()> = { Ok(()) };
        }
    };
}

vhost_proto::for_each_frontend_request!(backend_trait_rows);

#[cfg(test)]
mod tag_tests {
    use super::TAGGED_METHODS;

    /// `SetVringNum` → `set_vring_num`.
    fn snake_case(camel: &str) -> String {
        let mut out = String::new();
        for (i, c) in camel.chars().enumerate() {
            if c.is_ascii_uppercase() && i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        }
        out
    }

    #[test]
    fn tagged_methods_are_named_after_their_request() {
        // Methods named more fully than the specification's abbreviation.
        const EXCEPTIONS: [(&str, &str); 2] = [
            ("AddMemReg", "add_mem_region"),
            ("RemMemReg", "remove_mem_region"),
        ];
        for &(tag, method) in TAGGED_METHODS {
            assert!(
                snake_case(tag) == method || EXCEPTIONS.contains(&(tag, method)),
                "[{tag}] tags fn {method}"
            );
        }
        assert_eq!(
            TAGGED_METHODS.len(),
            vhost_proto::FrontendReq::all().count()
        );
        assert_eq!(snake_case("SetBackendReqFd"), "set_backend_req_fd");
    }
}
