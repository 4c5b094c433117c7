//! The negotiation state of one session as a pure value: what was offered and acked, which
//! requests are allowed now, and what each request owes.
//!
//! The server asks this value instead of re-implementing the rules:
//! 1. [`Negotiation::check`] before dispatching a decoded request (gates, vring indices,
//!    features acked that were never offered, a second SET_OWNER);
//! 2. [`Negotiation::apply`] after the back-end handled it successfully;
//! 3. [`Negotiation::owes`] to learn whether a reply, an ack or nothing goes back.

use crate::features::{virtio, ProtocolFeatures};
use crate::table::{Gate, Owes, ReplyShape};
use crate::{
    BackendReq, DecodeContext, Error, FrontendReq, FrontendRequest, MessageKind, Requirement,
};

/// What a request owes its sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owed {
    /// Nothing goes back.
    Nothing,
    /// A u64 ack: 0 on success, non-zero on failure.
    Ack,
    /// A reply message of this shape.
    Reply(ReplyShape),
}

/// One session's negotiation state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiation {
    offered_features: u64,
    offered_protocol: ProtocolFeatures,
    num_queues: u32,
    acked_features: u64,
    acked_protocol: ProtocolFeatures,
    features_set: bool,
    protocol_set: bool,
    owner: bool,
    postcopy_listening: bool,
}

impl Negotiation {
    /// A fresh session with what the back-end offers. `num_queues` bounds vring indices.
    /// Protocol features are only offered when virtio bit 30 is offered.
    pub fn new(offered_features: u64, offered_protocol: ProtocolFeatures, num_queues: u32) -> Self {
        Negotiation {
            offered_features,
            offered_protocol,
            num_queues,
            acked_features: 0,
            acked_protocol: ProtocolFeatures::empty(),
            features_set: false,
            protocol_set: false,
            owner: false,
            postcopy_listening: false,
        }
    }

    /// Back to the state of a new connection (same offer).
    pub fn reset(&mut self) {
        *self = Self::new(
            self.offered_features,
            self.offered_protocol,
            self.num_queues,
        );
    }

    /// Virtio features the back-end offers.
    pub fn offered_features(&self) -> u64 {
        self.offered_features
    }

    /// Protocol features the back-end offers.
    pub fn offered_protocol(&self) -> ProtocolFeatures {
        self.offered_protocol
    }

    /// Number of queues (bound on vring indices).
    pub fn num_queues(&self) -> u32 {
        self.num_queues
    }

    /// Virtio features acked by the last SET_FEATURES.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// Protocol features acked by SET_PROTOCOL_FEATURES.
    pub fn acked_protocol(&self) -> ProtocolFeatures {
        self.acked_protocol
    }

    /// True once SET_FEATURES was received.
    pub fn features_set(&self) -> bool {
        self.features_set
    }

    /// True when a virtio feature bit is acked.
    pub fn has_feature(&self, bit: u32) -> bool {
        bit < 64 && self.acked_features & (1 << bit) != 0
    }

    /// True when a protocol feature is acked.
    pub fn has_protocol(&self, f: ProtocolFeatures) -> bool {
        self.acked_protocol.contains(f)
    }

    /// REPLY_ACK is in force. A restored front-end may send SET_PROTOCOL_FEATURES without
    /// ever asking GET_PROTOCOL_FEATURES; the ack still applies.
    pub fn reply_ack(&self) -> bool {
        self.has_protocol(ProtocolFeatures::REPLY_ACK)
    }

    /// `VHOST_USER_F_PROTOCOL_FEATURES` negotiated: acked in SET_FEATURES, or protocol
    /// features set (the front-end sends SET_PROTOCOL_FEATURES before SET_FEATURES).
    pub fn protocol_features_negotiated(&self) -> bool {
        self.has_feature(virtio::PROTOCOL_FEATURES) || self.protocol_set
    }

    /// Rings are enabled as soon as they start when bit 30 is not acked ("If
    /// VHOST_USER_F_PROTOCOL_FEATURES has not been negotiated, the ring starts directly in
    /// the enabled state"). Decided by the last SET_FEATURES.
    pub fn rings_start_enabled(&self) -> bool {
        !self.has_feature(virtio::PROTOCOL_FEATURES)
    }

    /// Postcopy is listening (between POSTCOPY_LISTEN and POSTCOPY_END).
    pub fn postcopy_listening(&self) -> bool {
        self.postcopy_listening
    }

    /// Layout settings for the decoder.
    pub fn decode_context(&self) -> DecodeContext {
        DecodeContext {
            xen_mmap: self.has_protocol(ProtocolFeatures::XEN_MMAP),
        }
    }

    fn gate_ok(&self, gate: Gate) -> Result<(), Requirement> {
        match gate {
            Gate::None => Ok(()),
            Gate::ProtocolFeaturesOffered => {
                if self.offered_features & virtio::bit(virtio::PROTOCOL_FEATURES) != 0 {
                    Ok(())
                } else {
                    Err(Requirement::ProtocolFeaturesOffered)
                }
            }
            Gate::ProtocolFeaturesNegotiated => {
                if self.protocol_features_negotiated() {
                    Ok(())
                } else {
                    Err(Requirement::ProtocolFeaturesNegotiated)
                }
            }
            Gate::Protocol(f) => {
                if self.has_protocol(f) {
                    Ok(())
                } else {
                    Err(Requirement::Protocol(f))
                }
            }
            Gate::Virtio(bit) => {
                if self.has_feature(bit) {
                    Ok(())
                } else {
                    Err(Requirement::Virtio(bit))
                }
            }
        }
    }

    /// Is this front-end request allowed by what was negotiated?
    pub fn allows(&self, req: FrontendReq) -> Result<(), Error> {
        self.gate_ok(req.spec().gate)
            .map_err(|feature| Error::NotNegotiated {
                request: MessageKind::Frontend(req),
                feature,
            })
    }

    /// May the back-end send this request on its channel? (BACKEND_REQ and the request's
    /// own gate.)
    pub fn allows_backend(&self, req: BackendReq) -> Result<(), Error> {
        let kind = MessageKind::Backend(req);
        if !self.has_protocol(ProtocolFeatures::BACKEND_REQ) {
            return Err(Error::NotNegotiated {
                request: kind,
                feature: Requirement::Protocol(ProtocolFeatures::BACKEND_REQ),
            });
        }
        self.gate_ok(req.spec().gate)
            .map_err(|feature| Error::NotNegotiated {
                request: kind,
                feature,
            })
    }

    /// All checks that depend on the session: the gate, the vring index against the queue
    /// count, acked bits that were never offered, a second SET_OWNER.
    pub fn check(&self, req: &FrontendRequest<'_>) -> Result<(), Error> {
        let code = req.code();
        let kind = MessageKind::Frontend(code);
        self.allows(code)?;
        if let Some(index) = req.vring_index() {
            if index >= self.num_queues {
                return Err(Error::VringIndex {
                    request: kind,
                    index,
                    queues: self.num_queues,
                });
            }
        }
        match *req {
            FrontendRequest::SetFeatures(v) => {
                let extra = v & !self.offered_features;
                if extra != 0 {
                    return Err(Error::UnofferedFeatures {
                        request: kind,
                        bits: extra,
                    });
                }
            }
            FrontendRequest::SetProtocolFeatures(v) => {
                let extra = v & !self.offered_protocol.bits();
                if extra != 0 {
                    return Err(Error::UnofferedFeatures {
                        request: kind,
                        bits: extra,
                    });
                }
            }
            FrontendRequest::SetOwner if self.owner => return Err(Error::AlreadyOwned),
            _ => {}
        }
        Ok(())
    }

    /// Records the effect of a request the back-end handled successfully.
    pub fn apply(&mut self, req: &FrontendRequest<'_>) {
        match *req {
            FrontendRequest::SetFeatures(v) => {
                self.acked_features = v;
                self.features_set = true;
            }
            FrontendRequest::SetProtocolFeatures(v) => {
                self.acked_protocol = ProtocolFeatures::from_bits_truncate(v);
                self.protocol_set = true;
            }
            FrontendRequest::SetOwner => self.owner = true,
            FrontendRequest::ResetOwner => {
                self.owner = false;
                self.acked_features = 0;
                self.features_set = false;
            }
            FrontendRequest::ResetDevice => {
                self.acked_features = 0;
                self.features_set = false;
            }
            FrontendRequest::PostcopyListen => self.postcopy_listening = true,
            FrontendRequest::PostcopyEnd => self.postcopy_listening = false,
            _ => {}
        }
    }

    /// What a front-end request owes, given its NEED_REPLY flag. A request that always
    /// replies sends only its reply, NEED_REPLY or not.
    pub fn owes(&self, req: FrontendReq, need_reply: bool) -> Owed {
        let spec = req.spec();
        match spec.owes {
            Owes::Reply => Owed::Reply(spec.reply),
            Owes::ReplyInPostcopy if self.postcopy_listening => Owed::Reply(spec.reply),
            Owes::AckWhenAsked | Owes::ReplyInPostcopy => {
                if need_reply && self.reply_ack() {
                    Owed::Ack
                } else {
                    Owed::Nothing
                }
            }
        }
    }

    /// What a back-end request owes, given its NEED_REPLY flag.
    pub fn backend_owes(&self, req: BackendReq, need_reply: bool) -> Owed {
        match req.spec().owes {
            Owes::Reply => Owed::Reply(ReplyShape::U64),
            _ if need_reply && self.reply_ack() => Owed::Ack,
            _ => Owed::Nothing,
        }
    }
}
