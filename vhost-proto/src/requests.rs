//! The one declaration of every front-end request (see the crate docs, "Adding a request").

/// Calls `$callback!` with one row per front-end request (codes 1–44), in code order:
///
/// ```text
/// /// doc
/// Variant(BodyType where check) = code => spec(NAME, body shape, fds, gate, owes, reply)
///     .changes().value().failure(status).reply_fd()
///     => backend(
///         /// the Backend method's doc
///         |body| fn method(name: Type = source, ...) -> Output (= { default body })?
///         => shape(extra, ...)
///     )
///     => client(
///         /// the client method's doc
///         |fe| fn method(name: Type, ...) -> Output = reader(body) with fds
///     );
/// ```
///
/// `(BodyType ...)` is absent for a request without a body; `where check` names a function
/// `fn(&BodyType, MessageKind) -> Result<(), Error>` for the request's own field rules. The
/// spec and check are expressions in this crate's scope: a callback outside it uses only the
/// variant names, codes and body types (and may ignore the rest as tokens).
///
/// The `=> backend(...)` clause declares the request's `Backend` method and the server's
/// dispatch to it, both generated in vhost-backend (`backend.rs`, `server/dispatch.rs`,
/// where its names resolve); this crate ignores it. The method returns
/// `BackendResult<Output>`; without a default body it must be implemented. `|body|` names
/// the decoded body for the sources (absent without a body); each argument's source is one
/// token: `fd` (the one descriptor), `fd_or_nofd` (`None` for NOFD), `fds` (every
/// descriptor), `channel` (the back-end channel over the one descriptor), the body's name,
/// or a parenthesised expression over it. `shape` names the function of the dispatch that
/// turns the method's success into the reply, called with the `extra` arguments and then
/// the method's output. `=> via helper` (sources `_`) hands the request to a dispatch helper
/// of its own (GET_CONFIG, whose reply borrows the buffer the method fills).
///
/// The `=> client(...)` clause declares the front-end client's method (`Frontend` in
/// vhost-frontend, where its names resolve; this crate ignores it): its documentation and
/// public signature, the request's body built from the arguments (an expression, absent
/// without a body; `|fe|` names the client for it), the descriptors sent (`with` an
/// expression giving a slice; none without), and how the reply is read: `simple` (nothing
/// owed or an ack), `u64_status` (a u64, zero for success) or `value` (a u64, returned).
/// `= via helper` hands the arguments to a private client method of its own (a body or
/// reply checks of the request's own: SET_MEM_TABLE's Xen layout, GET_VRING_BASE, ...).
///
/// From these rows follow [`FrontendReq`](crate::FrontendReq) and its table
/// ([`FRONTEND_REQUESTS`](crate::FRONTEND_REQUESTS): codes, names, body shapes, descriptor
/// rules, gates, what is owed, reply shapes, the policy columns), and
/// [`FrontendRequest`](crate::FrontendRequest) with its `decode`, `encode`, `code`,
/// `fd_count` and `vring_index`; in vhost-backend, the `Backend` trait, the server's
/// dispatch and the recording test back-end (`test_utils`: `Call` and its `Backend` impl);
/// in vhost-frontend, the client's methods.
#[macro_export]
macro_rules! for_each_frontend_request {
    ($callback:ident) => {
        $callback! {
            /// Read the back-end's virtio features.
            GetFeatures = 1 => spec("GET_FEATURES", Empty, F::None, Gate::None, Reply, R::U64).value()
                => backend(
                    /// GET_FEATURES: the virtio features offered (include bit 30 to speak protocol features).
                    fn get_features() -> u64
                    => value
                )
                => client(
                    /// GET_FEATURES (1): the virtio features the back-end offers.
                    fn get_features() -> u64 = via features_offered
                );
            /// Ack virtio features.
            SetFeatures(u64) = 2 => spec("SET_FEATURES", fixed::<wire::U64Body>(), F::None, Gate::None, AckWhenAsked, R::U64).changes()
                => backend(
                    /// SET_FEATURES: the features the driver acked (a subset of the offer; checked).
                    |v| fn set_features(features: u64 = (*v)) -> ()
                    => done
                )
                => client(
                    /// SET_FEATURES (2): ack virtio features.
                    fn set_features(features: u64) -> () = simple(features)
                );
            /// Claim the session.
            SetOwner = 3 => spec("SET_OWNER", Empty, F::None, Gate::None, AckWhenAsked, R::U64)
                => backend(
                    /// SET_OWNER: a front-end claims the session. Accepted by default.
                    fn set_owner() -> () = { Ok(()) }
                    => done
                )
                => client(
                    /// SET_OWNER (3): claim the session.
                    fn set_owner() -> () = simple
                );
            /// Deprecated: give up the session.
            ResetOwner = 4 => spec("RESET_OWNER", Empty, F::None, Gate::None, AckWhenAsked, R::U64).changes()
                => backend(
                    /// RESET_OWNER (deprecated): accepted and ignored by default, as the spec allows.
                    fn reset_owner() -> () = { Ok(()) }
                    => done
                )
                => client(
                    /// RESET_OWNER (4, deprecated).
                    fn reset_owner() -> () = simple
                );
            /// Replace the whole memory table.
            SetMemTable(MemTable) = 5 => spec("SET_MEM_TABLE", BodyShape::MemTable, F::PerRegion, Gate::None, ReplyInPostcopy, R::MemTable).changes()
                => backend(
                    /// SET_MEM_TABLE: replace the memory table; one descriptor per region, in order.
                    |table| fn set_mem_table(table: &MemTable = table, fds: Vec<OwnedDescriptor> = fds) -> ()
                    => done
                )
                => client(
                    /// SET_MEM_TABLE (5): replace the memory table; one descriptor per region, in order.
                    /// While postcopy listens, the back-end's reply is kept for
                    /// [`Frontend::take_postcopy_reply`].
                    fn set_mem_table(regions: &[MemoryRegion], fds: &[BorrowedFd<'_>]) -> () = via mem_table
                );
            /// Set the dirty log area.
            SetLogBase(LogBase) = 6 => spec("SET_LOG_BASE", fixed::<wire::LogBase>(), F::One, Gate::Protocol(P::LOG_SHMFD), Reply, R::U64).changes()
                => backend(
                    /// SET_LOG_BASE: the dirty-log area (LOG_SHMFD).
                    |log| fn set_log_base(log: &LogBase = log, fd: OwnedDescriptor = fd) -> () = { Err(BackendError::NotSupported) }
                    => status
                )
                => client(
                    /// SET_LOG_BASE (6, LOG_SHMFD): the dirty log area; the back-end replies with a status.
                    fn set_log_base(log: &LogBase, fd: BorrowedFd<'_>) -> () = u64_status(*log) with &[fd]
                );
            /// Set the eventfd signalled after log writes.
            SetLogFd = 7 => spec("SET_LOG_FD", Empty, F::One, Gate::None, AckWhenAsked, R::U64).changes()
                => backend(
                    /// SET_LOG_FD: the eventfd to signal after logging.
                    fn set_log_fd(fd: OwnedDescriptor = fd) -> () = { Err(BackendError::NotSupported) }
                    => done
                )
                => client(
                    /// SET_LOG_FD (7): the eventfd the back-end signals after logging.
                    fn set_log_fd(fd: BorrowedFd<'_>) -> () = simple with &[fd]
                );
            /// Set a vring's size.
            SetVringNum(VringState) = 8 => spec("SET_VRING_NUM", fixed::<wire::VringState>(), F::None, Gate::None, AckWhenAsked, R::U64).changes()
                => backend(
                    /// SET_VRING_NUM: the ring's size.
                    |s| fn set_vring_num(index: u32 = (s.index), num: u32 = (s.num)) -> ()
                    => done
                )
                => client(
                    /// SET_VRING_NUM (8): the ring's size.
                    fn set_vring_num(index: u32, num: u32) -> () = simple(state(index, num))
                );
            /// Set a vring's addresses.
            SetVringAddr(VringAddr where vring::addr_flags) = 9 => spec("SET_VRING_ADDR", fixed::<wire::VringAddr>(), F::None, Gate::None, AckWhenAsked, R::U64).changes()
                => backend(
                    /// SET_VRING_ADDR: the ring's addresses (front-end virtual unless GPA_ADDRESSES).
                    |addr| fn set_vring_addr(addr: &VringAddr = addr) -> ()
                    => done
                )
                => client(
                    /// SET_VRING_ADDR (9): the ring's addresses (front-end virtual unless GPA_ADDRESSES).
                    fn set_vring_addr(addr: &VringAddr) -> () = simple(*addr)
                );
            /// Set a vring's next available index.
            SetVringBase(VringState) = 10 => spec("SET_VRING_BASE", fixed::<wire::VringState>(), F::None, Gate::None, AckWhenAsked, R::U64).changes()
                => backend(
                    /// SET_VRING_BASE: the next available index (packed rings: the spec's bit encoding).
                    |s| fn set_vring_base(index: u32 = (s.index), base: u32 = (s.num)) -> ()
                    => done
                )
                => client(
                    /// SET_VRING_BASE (10): the next available index.
                    fn set_vring_base(index: u32, base: u32) -> () = simple(state(index, base))
                );
            /// Stop a vring and read its next available index.
            GetVringBase(VringState) = 11 => spec("GET_VRING_BASE", fixed::<wire::VringState>(), F::None, Gate::None, Reply, R::VringState)
                => backend(
                    /// GET_VRING_BASE: stop the ring and return its next available index.
                    |s| fn get_vring_base(index: u32 = (s.index)) -> u32
                    => vring_state(s)
                )
                => client(
                    /// GET_VRING_BASE (11): stop the ring; returns its next available index. Without
                    /// RING_PACKED acked the rings are split and the index is 16 bits: a larger value is
                    /// [`FrontendError::InvalidReply`]. (A packed ring's value carries wrap counters too.)
                    fn get_vring_base(index: u32) -> u32 = via vring_base
                );
            /// Set a vring's kick eventfd (starts the ring).
            SetVringKick(VringFd) = 12 => spec("SET_VRING_KICK", fixed::<wire::U64Body>(), F::OneUnlessNofd, Gate::None, AckWhenAsked, R::U64).changes()
                => backend(
                    /// SET_VRING_KICK: the kick eventfd (`None`: NOFD, poll the ring). Starts the ring.
                    |f| fn set_vring_kick(index: u8 = (f.index), fd: Option<OwnedDescriptor> = fd_or_nofd) -> ()
                    => done
                )
                => client(
                    /// SET_VRING_KICK (12): the kick eventfd, or `None` (NOFD: the back-end polls).
                    fn set_vring_kick(index: u32, fd: Option<BorrowedFd<'_>>) -> () = simple(vring_fd(FrontendReq::SetVringKick, index, fd)?) with fd.as_slice()
                );
            /// Set a vring's call eventfd.
            SetVringCall(VringFd) = 13 => spec("SET_VRING_CALL", fixed::<wire::U64Body>(), F::OneUnlessNofd, Gate::None, AckWhenAsked, R::U64).changes()
                => backend(
                    /// SET_VRING_CALL: the call eventfd (`None`: NOFD, do not signal).
                    |f| fn set_vring_call(index: u8 = (f.index), fd: Option<OwnedDescriptor> = fd_or_nofd) -> ()
                    => done
                )
                => client(
                    /// SET_VRING_CALL (13): the call eventfd, or `None` (NOFD: no signal).
                    fn set_vring_call(index: u32, fd: Option<BorrowedFd<'_>>) -> () = simple(vring_fd(FrontendReq::SetVringCall, index, fd)?) with fd.as_slice()
                );
            /// Set a vring's error eventfd.
            SetVringErr(VringFd) = 14 => spec("SET_VRING_ERR", fixed::<wire::U64Body>(), F::OneUnlessNofd, Gate::None, AckWhenAsked, R::U64).changes()
                => backend(
                    /// SET_VRING_ERR: the error eventfd (`None`: NOFD). Accepted and kept by nobody by default.
                    |f| fn set_vring_err(index: u8 = (f.index), fd: Option<OwnedDescriptor> = fd_or_nofd) -> () = { Ok(()) }
                    => done
                )
                => client(
                    /// SET_VRING_ERR (14): the error eventfd, or `None`.
                    fn set_vring_err(index: u32, fd: Option<BorrowedFd<'_>>) -> () = simple(vring_fd(FrontendReq::SetVringErr, index, fd)?) with fd.as_slice()
                );
            /// Read the back-end's protocol features.
            GetProtocolFeatures = 15 => spec("GET_PROTOCOL_FEATURES", Empty, F::None, Gate::ProtocolFeaturesOffered, Reply, R::U64).value()
                => backend(
                    /// GET_PROTOCOL_FEATURES: the protocol features offered.
                    fn get_protocol_features() -> ProtocolFeatures
                    => protocol_features
                )
                => client(
                    /// GET_PROTOCOL_FEATURES (15): the protocol features offered (unknown bits kept).
                    fn get_protocol_features() -> ProtocolFeatures = via protocol_offered
                );
            /// Ack protocol features.
            SetProtocolFeatures(u64) = 16 => spec("SET_PROTOCOL_FEATURES", fixed::<wire::U64Body>(), F::None, Gate::ProtocolFeaturesOffered, AckWhenAsked, R::U64).changes()
                => backend(
                    /// SET_PROTOCOL_FEATURES: the protocol features acked (a subset of the offer; checked).
                    |v| fn set_protocol_features(features: ProtocolFeatures = ($crate::ProtocolFeatures::from_bits_truncate(*v))) -> ()
                    => done
                )
                => client(
                    /// SET_PROTOCOL_FEATURES (16): ack protocol features. REPLY_ACK takes effect for the
                    /// requests after this one.
                    fn set_protocol_features(features: ProtocolFeatures) -> () = simple(features.bits())
                );
            /// Read the number of queues.
            GetQueueNum = 17 => spec("GET_QUEUE_NUM", Empty, F::None, Gate::Protocol(P::MQ), Reply, R::U64).value()
                => backend(
                    /// GET_QUEUE_NUM (MQ): the number of queues.
                    fn get_queue_num() -> u64 = { Err(BackendError::NotSupported) }
                    => value
                )
                => client(
                    /// GET_QUEUE_NUM (17, MQ): the number of queues.
                    fn get_queue_num() -> u64 = value
                );
            /// Enable or disable a vring.
            SetVringEnable(VringState where vring::flag) = 18 => spec("SET_VRING_ENABLE", fixed::<wire::VringState>(), F::None, Gate::ProtocolFeaturesNegotiated, AckWhenAsked, R::U64).changes()
                => backend(
                    /// SET_VRING_ENABLE: enable or disable a ring.
                    |s| fn set_vring_enable(index: u32 = (s.index), enable: bool = (s.num == 1)) -> ()
                    => done
                )
                => client(
                    /// SET_VRING_ENABLE (18): enable or disable a ring.
                    fn set_vring_enable(index: u32, enable: bool) -> () = simple(state(index, u32::from(enable)))
                );
            /// Send a RARP for a MAC address (after migration).
            SendRarp(u64) = 19 => spec("SEND_RARP", fixed::<wire::U64Body>(), F::None, Gate::Protocol(P::RARP), AckWhenAsked, R::U64)
                => backend(
                    /// SEND_RARP (RARP): announce a MAC address after migration.
                    |v| fn send_rarp(mac: [u8; 6] = ($crate::FrontendRequest::rarp_mac(*v))) -> () = { Err(BackendError::NotSupported) }
                    => done
                )
                => client(
                    /// SEND_RARP (19, RARP): announce a MAC address.
                    fn send_rarp(mac: [u8; 6]) -> () = simple(rarp_value(mac))
                );
            /// Set the network MTU.
            NetSetMtu(u64) = 20 => spec("NET_SET_MTU", fixed::<wire::U64Body>(), F::None, Gate::Protocol(P::NET_MTU), AckWhenAsked, R::U64)
                => backend(
                    /// NET_SET_MTU (NET_MTU).
                    |mtu| fn net_set_mtu(mtu: u64 = (*mtu)) -> () = { Err(BackendError::NotSupported) }
                    => done
                )
                => client(
                    /// NET_SET_MTU (20, NET_MTU).
                    fn net_set_mtu(mtu: u64) -> () = simple(mtu)
                );
            /// Hand over the back-end channel socket.
            SetBackendReqFd = 21 => spec("SET_BACKEND_REQ_FD", Empty, F::One, Gate::Protocol(P::BACKEND_REQ), AckWhenAsked, R::U64)
                => backend(
                    /// SET_BACKEND_REQ_FD (BACKEND_REQ): the back-end → front-end channel.
                    fn set_backend_req_fd(client: BackendClient = channel) -> () = { Err(BackendError::NotSupported) }
                    => done
                )
                => client(
                    /// SET_BACKEND_REQ_FD (21, BACKEND_REQ) with a socket the caller serves itself. See
                    /// [`Frontend::set_backend_req_fd`] for the version that serves it on a thread.
                    fn send_backend_req_fd(fd: BorrowedFd<'_>) -> () = simple with &[fd]
                );
            /// IOTLB update or invalidation. Always answered with a u64 (0 success): the front-end
            /// sets NEED_REPLY on it and waits, REPLY_ACK or not.
            IotlbMsg(IotlbMsg) = 22 => spec("IOTLB_MSG", fixed::<wire::IotlbMsg>(), F::None, Gate::Virtio(virtio::ACCESS_PLATFORM), Reply, R::U64)
                => backend(
                    /// IOTLB_MSG (ACCESS_PLATFORM): an IOTLB update or invalidation.
                    |msg| fn iotlb_msg(msg: &IotlbMsg = msg) -> () = { Err(BackendError::NotSupported) }
                    => status
                )
                => client(
                    /// IOTLB_MSG (22, ACCESS_PLATFORM): an IOTLB update or invalidation.
                    fn iotlb_msg(msg: &IotlbMsg) -> () = simple(*msg)
                );
            /// Set a vring's endianness (legacy devices).
            SetVringEndian(VringState where vring::flag) = 23 => spec("SET_VRING_ENDIAN", fixed::<wire::VringState>(), F::None, Gate::Protocol(P::CROSS_ENDIAN), AckWhenAsked, R::U64).changes()
                => backend(
                    /// SET_VRING_ENDIAN (CROSS_ENDIAN): `true` for big-endian.
                    |s| fn set_vring_endian(index: u32 = (s.index), big_endian: bool = (s.num == 1)) -> () = { Err(BackendError::NotSupported) }
                    => done
                )
                => client(
                    /// SET_VRING_ENDIAN (23, CROSS_ENDIAN): `true` for big-endian.
                    fn set_vring_endian(index: u32, big_endian: bool) -> () = simple(state(index, u32::from(big_endian)))
                );
            /// Read device configuration space.
            GetConfig(Config<'a>) = 24 => spec("GET_CONFIG", BodyShape::FixedPlusPayload { fixed: 12, max_payload: wire::MAX_CONFIG_SIZE }, F::None, Gate::Protocol(P::CONFIG), Reply, R::Config)
                => backend(
                    /// GET_CONFIG (CONFIG): fill `buf` from the configuration space at `offset`.
                    |c| fn get_config(offset: u32 = _, buf: &mut [u8] = _, flags: u32 = _) -> () = { Err(BackendError::NotSupported) }
                    => via get_config
                )
                => client(
                    /// GET_CONFIG (24, CONFIG): `size` bytes of configuration space at `offset`. A zero-size
                    /// reply (the back-end's failure form) is [`FrontendError::Refused`].
                    fn get_config(offset: u32, size: u32, flags: u32) -> Vec<u8> = via config
                );
            /// Write device configuration space.
            SetConfig(Config<'a>) = 25 => spec("SET_CONFIG", BodyShape::FixedPlusPayload { fixed: 12, max_payload: wire::MAX_CONFIG_SIZE }, F::None, Gate::Protocol(P::CONFIG), AckWhenAsked, R::U64)
                => backend(
                    /// SET_CONFIG (CONFIG): write `data` to the configuration space at `offset`.
                    |c| fn set_config(offset: u32 = (c.offset), data: &[u8] = (c.payload), flags: u32 = (c.flags)) -> () = { Err(BackendError::NotSupported) }
                    => done
                )
                => client(
                    /// SET_CONFIG (25, CONFIG): write `data` at `offset`.
                    fn set_config(offset: u32, data: &[u8], flags: u32) -> () = simple(Config { offset, flags, payload: data })
                );
            /// Create a crypto session.
            CreateCryptoSession(CryptoSession<'a>) = 26 => spec("CREATE_CRYPTO_SESSION", BodyShape::FixedPlusPayload { fixed: 8, max_payload: wire::MAX_CRYPTO_PAYLOAD }, F::None, Gate::Protocol(P::CRYPTO_SESSION), Reply, R::CryptoSession)
                => backend(
                    /// CREATE_CRYPTO_SESSION (CRYPTO_SESSION): returns the new session id.
                    |session| fn create_crypto_session(session: &CryptoSession<'_> = session) -> i64 = { Err(BackendError::NotSupported) }
                    => crypto_session(session)
                )
                => client(
                    /// CREATE_CRYPTO_SESSION (26, CRYPTO_SESSION): returns the new session id. A negative id
                    /// (the failure form) is [`FrontendError::Refused`].
                    fn create_crypto_session(session_id: i64, setup: &[u8]) -> i64 = via crypto_session
                );
            /// Close a crypto session.
            CloseCryptoSession(u64) = 27 => spec("CLOSE_CRYPTO_SESSION", fixed::<wire::U64Body>(), F::None, Gate::Protocol(P::CRYPTO_SESSION), AckWhenAsked, R::U64)
                => backend(
                    /// CLOSE_CRYPTO_SESSION (CRYPTO_SESSION).
                    |id| fn close_crypto_session(session_id: u64 = (*id)) -> () = { Err(BackendError::NotSupported) }
                    => done
                )
                => client(
                    /// CLOSE_CRYPTO_SESSION (27, CRYPTO_SESSION).
                    fn close_crypto_session(session_id: u64) -> () = simple(session_id)
                );
            /// Postcopy: ask for a userfaultfd.
            PostcopyAdvise = 28 => spec("POSTCOPY_ADVISE", Empty, F::None, Gate::Protocol(P::PAGEFAULT), Reply, R::EmptyWithFd).reply_fd()
                => backend(
                    /// POSTCOPY_ADVISE (PAGEFAULT): returns a userfaultfd.
                    fn postcopy_advise() -> OwnedDescriptor = { Err(BackendError::NotSupported) }
                    => empty_with_fd
                )
                => client(
                    /// POSTCOPY_ADVISE (28, PAGEFAULT): the back-end's userfaultfd.
                    fn postcopy_advise() -> OwnedFd = via userfaultfd
                );
            /// Postcopy: start listening for faults.
            PostcopyListen = 29 => spec("POSTCOPY_LISTEN", Empty, F::None, Gate::Protocol(P::PAGEFAULT), AckWhenAsked, R::U64).changes()
                => backend(
                    /// POSTCOPY_LISTEN (PAGEFAULT).
                    fn postcopy_listen() -> () = { Err(BackendError::NotSupported) }
                    => done
                )
                => client(
                    /// POSTCOPY_LISTEN (29, PAGEFAULT).
                    fn postcopy_listen() -> () = simple
                );
            /// Postcopy: migration finished.
            PostcopyEnd = 30 => spec("POSTCOPY_END", Empty, F::None, Gate::Protocol(P::PAGEFAULT), Reply, R::U64)
                => backend(
                    /// POSTCOPY_END (PAGEFAULT).
                    fn postcopy_end() -> () = { Err(BackendError::NotSupported) }
                    => status
                )
                => client(
                    /// POSTCOPY_END (30, PAGEFAULT): the back-end replies with a status.
                    fn postcopy_end() -> () = u64_status
                );
            /// Ask for an inflight area.
            GetInflightFd(Inflight) = 31 => spec("GET_INFLIGHT_FD", fixed::<wire::Inflight>(), F::None, Gate::Protocol(P::INFLIGHT_SHMFD), Reply, R::Inflight).reply_fd()
                => backend(
                    /// GET_INFLIGHT_FD (INFLIGHT_SHMFD): allocate the inflight area.
                    |info| fn get_inflight_fd(info: &Inflight = info) -> (Inflight, OwnedDescriptor) = { Err(BackendError::NotSupported) }
                    => inflight_with_fd
                )
                => client(
                    /// GET_INFLIGHT_FD (31, INFLIGHT_SHMFD): the inflight area and its descriptor. A reply
                    /// without a descriptor (the failure form) is [`FrontendError::Refused`].
                    fn get_inflight_fd(info: &Inflight) -> (Inflight, OwnedFd) = via inflight_area
                );
            /// Hand back the inflight area.
            SetInflightFd(Inflight) = 32 => spec("SET_INFLIGHT_FD", fixed::<wire::Inflight>(), F::One, Gate::Protocol(P::INFLIGHT_SHMFD), AckWhenAsked, R::U64).changes()
                => backend(
                    /// SET_INFLIGHT_FD (INFLIGHT_SHMFD): the inflight area handed back.
                    |info| fn set_inflight_fd(info: &Inflight = info, fd: OwnedDescriptor = fd) -> () = { Err(BackendError::NotSupported) }
                    => done
                )
                => client(
                    /// SET_INFLIGHT_FD (32, INFLIGHT_SHMFD): hand the inflight area back.
                    fn set_inflight_fd(info: &Inflight, fd: BorrowedFd<'_>) -> () = simple(*info) with &[fd]
                );
            /// Hand over a vhost-user-gpu socket.
            GpuSetSocket = 33 => spec("GPU_SET_SOCKET", Empty, F::One, Gate::None, AckWhenAsked, R::U64)
                => backend(
                    /// GPU_SET_SOCKET: the vhost-user-gpu socket.
                    fn gpu_set_socket(fd: OwnedDescriptor = fd) -> () = { Err(BackendError::NotSupported) }
                    => done
                )
                => client(
                    /// GPU_SET_SOCKET (33): the vhost-user-gpu socket.
                    fn gpu_set_socket(fd: BorrowedFd<'_>) -> () = simple with &[fd]
                );
            /// Reset the device.
            ResetDevice = 34 => spec("RESET_DEVICE", Empty, F::None, Gate::Protocol(P::RESET_DEVICE), AckWhenAsked, R::U64).changes()
                => backend(
                    /// RESET_DEVICE (RESET_DEVICE): disable all rings and reset device state.
                    fn reset_device() -> () = { Err(BackendError::NotSupported) }
                    => done
                )
                => client(
                    /// RESET_DEVICE (34, RESET_DEVICE).
                    fn reset_device() -> () = simple
                );
            /// In-band kick.
            VringKick(VringState) = 35 => spec("VRING_KICK", fixed::<wire::VringState>(), F::None, Gate::Protocol(P::INBAND_NOTIFICATIONS), AckWhenAsked, R::U64)
                => backend(
                    /// VRING_KICK (INBAND_NOTIFICATIONS): an in-band kick.
                    |s| fn vring_kick(index: u32 = (s.index)) -> () = { Err(BackendError::NotSupported) }
                    => done
                )
                => client(
                    /// VRING_KICK (35, INBAND_NOTIFICATIONS): an in-band kick.
                    fn vring_kick(index: u32) -> () = simple(state(index, 0))
                );
            /// Read how many memory slots the back-end supports.
            GetMaxMemSlots = 36 => spec("GET_MAX_MEM_SLOTS", Empty, F::None, Gate::Protocol(P::CONFIGURE_MEM_SLOTS), Reply, R::U64).value()
                => backend(
                    /// GET_MAX_MEM_SLOTS (CONFIGURE_MEM_SLOTS).
                    fn get_max_mem_slots() -> u64 = { Err(BackendError::NotSupported) }
                    => value
                )
                => client(
                    /// GET_MAX_MEM_SLOTS (36, CONFIGURE_MEM_SLOTS).
                    fn get_max_mem_slots() -> u64 = value
                );
            /// Add one memory region.
            AddMemReg(RegionMsg where memory::one_region) = 37 => spec("ADD_MEM_REG", BodyShape::SingleRegion, F::One, Gate::Protocol(P::CONFIGURE_MEM_SLOTS), ReplyInPostcopy, R::SingleRegion).changes()
                => backend(
                    /// ADD_MEM_REG (CONFIGURE_MEM_SLOTS).
                    |region| fn add_mem_region(region: &RegionMsg = region, fd: OwnedDescriptor = fd) -> () = { Err(BackendError::NotSupported) }
                    => done
                )
                => client(
                    /// ADD_MEM_REG (37, CONFIGURE_MEM_SLOTS): add one region with its descriptor.
                    |fe| fn add_mem_reg(region: &MemoryRegion, fd: BorrowedFd<'_>) -> () = simple(fe.region_msg(region)) with &[fd]
                );
            /// Remove one memory region.
            RemMemReg(RegionMsg where memory::one_region) = 38 => spec("REM_MEM_REG", BodyShape::SingleRegion, F::NoneOrOne, Gate::Protocol(P::CONFIGURE_MEM_SLOTS), AckWhenAsked, R::U64).changes()
                => backend(
                    /// REM_MEM_REG (CONFIGURE_MEM_SLOTS): regions are matched on address and size.
                    |region| fn remove_mem_region(region: &RegionMsg = region) -> () = { Err(BackendError::NotSupported) }
                    => done
                )
                => client(
                    /// REM_MEM_REG (38, CONFIGURE_MEM_SLOTS): remove the region with these addresses.
                    |fe| fn rem_mem_reg(region: &MemoryRegion) -> () = simple(fe.region_msg(region))
                );
            /// Set the virtio device status.
            SetStatus(u64) = 39 => spec("SET_STATUS", fixed::<wire::U64Body>(), F::None, Gate::Protocol(P::STATUS), AckWhenAsked, R::U64)
                => backend(
                    /// SET_STATUS (STATUS): the virtio device status byte.
                    |v| fn set_status(status: u64 = (*v)) -> () = { Err(BackendError::NotSupported) }
                    => done
                )
                => client(
                    /// SET_STATUS (39, STATUS): the virtio device status.
                    fn set_status(status: u64) -> () = simple(status)
                );
            /// Read the virtio device status.
            GetStatus = 40 => spec("GET_STATUS", Empty, F::None, Gate::Protocol(P::STATUS), Reply, R::U64).value()
                => backend(
                    /// GET_STATUS (STATUS).
                    fn get_status() -> u64 = { Err(BackendError::NotSupported) }
                    => value
                )
                => client(
                    /// GET_STATUS (40, STATUS).
                    fn get_status() -> u64 = value
                );
            /// Look up a shared object; the reply carries its dmabuf fd.
            GetSharedObject(SharedObject) = 41 => spec("GET_SHARED_OBJECT", fixed::<wire::SharedObject>(), F::None, Gate::Protocol(P::SHARED_OBJECT), Reply, R::U64).reply_fd()
                => backend(
                    /// GET_SHARED_OBJECT (SHARED_OBJECT): the dmabuf fd of an object.
                    |object| fn get_shared_object(object: &SharedObject = object) -> OwnedDescriptor = { Err(BackendError::NotSupported) }
                    => u64_with_fd
                )
                => client(
                    /// GET_SHARED_OBJECT (41, SHARED_OBJECT): the object's dmabuf fd, if the back-end sent
                    /// one. A non-zero status is a nack.
                    fn get_shared_object(uuid: [u8; 16]) -> Option<OwnedFd> = via shared_object
                );
            /// Start a device-state transfer through a pipe.
            SetDeviceStateFd(DeviceStateTransfer where transfer::stopped_phase) = 42 => spec("SET_DEVICE_STATE_FD", fixed::<wire::DeviceStateTransfer>(), F::One, Gate::Protocol(P::DEVICE_STATE), Reply, R::U64).changes().failure(ACK_FAILURE | wire::DEVICE_STATE_NOFD).reply_fd()
                => backend(
                    /// SET_DEVICE_STATE_FD (DEVICE_STATE): start a state transfer; optionally return an fd
                    /// the front-end should use instead.
                    |t| fn set_device_state_fd(direction: u32 = (t.direction), phase: u32 = (t.phase), fd: OwnedDescriptor = fd) -> Option<OwnedDescriptor> = { Err(BackendError::NotSupported) }
                    => device_state
                )
                => client(
                    /// SET_DEVICE_STATE_FD (42, DEVICE_STATE): start a state transfer over `fd`
                    /// (`direction` 0 save, 1 load; `phase` 0 stopped). Returns the descriptor the back-end
                    /// wants used instead, if any. An error code in bits 0–7 is a nack.
                    fn set_device_state_fd(direction: u32, phase: u32, fd: BorrowedFd<'_>) -> Option<OwnedFd> = via device_state_transfer
                );
            /// Ask whether the device-state transfer succeeded.
            CheckDeviceState = 43 => spec("CHECK_DEVICE_STATE", Empty, F::None, Gate::Protocol(P::DEVICE_STATE), Reply, R::U64)
                => backend(
                    /// CHECK_DEVICE_STATE (DEVICE_STATE): did the transfer succeed?
                    fn check_device_state() -> () = { Err(BackendError::NotSupported) }
                    => status
                )
                => client(
                    /// CHECK_DEVICE_STATE (43, DEVICE_STATE): a non-zero status is a nack.
                    fn check_device_state() -> () = u64_status
                );
            /// Read the shared memory regions' configuration.
            GetShmemConfig = 44 => spec("GET_SHMEM_CONFIG", Empty, F::None, Gate::Protocol(P::SHMEM), Reply, R::ShmemConfig)
                => backend(
                    /// GET_SHMEM_CONFIG (SHMEM).
                    fn get_shmem_config() -> ShmemConfig = { Err(BackendError::NotSupported) }
                    => shmem_config
                )
                => client(
                    /// GET_SHMEM_CONFIG (44, SHMEM): the shared memory regions' sizes.
                    fn get_shmem_config() -> ShmemConfig = via shmem_config
                );
        }
    };
}

/// Calls `$callback!` with one row per back-end request (codes 1–10), in code order, in the
/// form of [`for_each_frontend_request!`]. From these rows follow
/// [`BackendReq`](crate::BackendReq), [`BACKEND_REQUESTS`](crate::BACKEND_REQUESTS) and
/// [`BackendRequest`](crate::BackendRequest) with its `decode`, `code`, `fd_count` and
/// `encode`.
///
/// Each row carries two clauses this crate ignores. `=> handler(...)` declares the method
/// of the front-end's handler of back-end requests (vhost-frontend's
/// `BackendRequestHandler`, defaulting to "not supported") and its dispatch, in the form of
/// the `backend` clause: `|body| fn method(name: Type = source, ...) -> Output`, sources
/// `fd`, `fd_or_nofd`, the body's name or a parenthesised expression, output `()` or the
/// `Option<OwnedFd>` sent back. `=> client(...)` declares the method of vhost-backend's
/// `BackendClient` that sends the request, in the form of the front-end rows' `client`
/// clause (`simple(body) with fds`, or `via helper`).
#[macro_export]
macro_rules! for_each_backend_request {
    ($callback:ident) => {
        $callback! {
            /// IOTLB miss or access failure.
            IotlbMsg(IotlbMsg) = 1 => spec("BACKEND_IOTLB_MSG", fixed::<wire::IotlbMsg>(), F::None, Gate::Virtio(virtio::ACCESS_PLATFORM), AckWhenAsked, R::U64)
                => handler(
                    /// BACKEND_IOTLB_MSG (1): an IOTLB miss or access failure.
                    |m| fn iotlb_msg(msg: &IotlbMsg = m) -> ()
                )
                => client(
                    /// BACKEND_IOTLB_MSG: report an IOTLB miss or access failure.
                    fn iotlb_msg(msg: IotlbMsg) -> () = simple(msg)
                );
            /// The device configuration changed.
            ConfigChangeMsg = 2 => spec("BACKEND_CONFIG_CHANGE_MSG", Empty, F::None, Gate::Protocol(P::CONFIG), AckWhenAsked, R::U64)
                => handler(
                    /// BACKEND_CONFIG_CHANGE_MSG (2): the device configuration changed.
                    fn config_change() -> ()
                )
                => client(
                    /// BACKEND_CONFIG_CHANGE_MSG: the device configuration changed.
                    fn config_change() -> () = simple
                );
            /// Map (or unmap, with NOFD) a host notifier area for a vring.
            VringHostNotifierMsg(VringArea) = 3 => spec("BACKEND_VRING_HOST_NOTIFIER_MSG", fixed::<wire::VringArea>(), F::OneUnlessNofd, Gate::Protocol(P::HOST_NOTIFIER), AckWhenAsked, R::U64)
                => handler(
                    /// BACKEND_VRING_HOST_NOTIFIER_MSG (3): map `fd` as a ring's host notifier (`None`:
                    /// unmap).
                    |a| fn vring_host_notifier(area: &VringArea = a, fd: Option<OwnedFd> = fd_or_nofd) -> ()
                )
                => client(
                    /// BACKEND_VRING_HOST_NOTIFIER_MSG: map `fd` (or unmap, with `None`) as the host
                    /// notifier of a ring.
                    fn vring_host_notifier(index: u8, size: u64, offset: u64, fd: Option<BorrowedDescriptor<'_>>) -> () = simple(host_notifier_area(index, size, offset, fd.is_none())) with fd.as_slice()
                );
            /// In-band call.
            VringCall(VringState) = 4 => spec("BACKEND_VRING_CALL", fixed::<wire::VringState>(), F::None, Gate::Protocol(P::INBAND_NOTIFICATIONS), AckWhenAsked, R::U64)
                => handler(
                    /// BACKEND_VRING_CALL (4): an in-band call for ring `index`.
                    |s| fn vring_call(index: u32 = (s.index)) -> ()
                )
                => client(
                    /// BACKEND_VRING_CALL: an in-band call.
                    fn vring_call(index: u32) -> () = simple(VringState { index, num: 0 })
                );
            /// In-band error.
            VringErr(VringState) = 5 => spec("BACKEND_VRING_ERR", fixed::<wire::VringState>(), F::None, Gate::Protocol(P::INBAND_NOTIFICATIONS), AckWhenAsked, R::U64)
                => handler(
                    /// BACKEND_VRING_ERR (5): an in-band error for ring `index`.
                    |s| fn vring_err(index: u32 = (s.index)) -> ()
                )
                => client(
                    /// BACKEND_VRING_ERR: an in-band error notification.
                    fn vring_err(index: u32) -> () = simple(VringState { index, num: 0 })
                );
            /// Add a shared object.
            SharedObjectAdd(SharedObject) = 6 => spec("BACKEND_SHARED_OBJECT_ADD", fixed::<wire::SharedObject>(), F::None, Gate::Protocol(P::SHARED_OBJECT), AckWhenAsked, R::U64)
                => handler(
                    /// BACKEND_SHARED_OBJECT_ADD (6).
                    |o| fn shared_object_add(uuid: &[u8; 16] = (&o.uuid)) -> ()
                )
                => client(
                    /// BACKEND_SHARED_OBJECT_ADD.
                    fn shared_object_add(uuid: [u8; 16]) -> () = simple(SharedObject { uuid })
                );
            /// Remove a shared object.
            SharedObjectRemove(SharedObject) = 7 => spec("BACKEND_SHARED_OBJECT_REMOVE", fixed::<wire::SharedObject>(), F::None, Gate::Protocol(P::SHARED_OBJECT), AckWhenAsked, R::U64)
                => handler(
                    /// BACKEND_SHARED_OBJECT_REMOVE (7).
                    |o| fn shared_object_remove(uuid: &[u8; 16] = (&o.uuid)) -> ()
                )
                => client(
                    /// BACKEND_SHARED_OBJECT_REMOVE.
                    fn shared_object_remove(uuid: [u8; 16]) -> () = simple(SharedObject { uuid })
                );
            /// Look up a shared object; the reply carries a u64 status and its fd.
            SharedObjectLookup(SharedObject) = 8 => spec("BACKEND_SHARED_OBJECT_LOOKUP", fixed::<wire::SharedObject>(), F::None, Gate::Protocol(P::SHARED_OBJECT), Reply, R::U64).reply_fd()
                => handler(
                    /// BACKEND_SHARED_OBJECT_LOOKUP (8): the object's descriptor, if known. Always answered
                    /// with a u64 status and the descriptor.
                    |o| fn shared_object_lookup(uuid: &[u8; 16] = (&o.uuid)) -> Option<OwnedFd>
                )
                => client(
                    /// BACKEND_SHARED_OBJECT_LOOKUP: the object's fd, if the front-end knows it.
                    fn shared_object_lookup(uuid: [u8; 16]) -> Option<OwnedDescriptor> = via lookup
                );
            /// Map a file range into a shared memory region.
            ShmemMap(ShmemMap where shmem_map) = 9 => spec("BACKEND_SHMEM_MAP", fixed::<wire::ShmemMap>(), F::One, Gate::Protocol(P::SHMEM), AckWhenAsked, R::U64)
                => handler(
                    /// BACKEND_SHMEM_MAP (9): map a range of `fd` into a shared memory region.
                    |m| fn shmem_map(map: &ShmemMap = m, fd: OwnedFd = fd) -> ()
                )
                => client(
                    /// BACKEND_SHMEM_MAP: map a range of `fd` into a shared memory region.
                    fn shmem_map(map: ShmemMap, fd: BorrowedDescriptor<'_>) -> () = simple(map) with &[fd]
                );
            /// Unmap a range of a shared memory region.
            ShmemUnmap(ShmemMap where shmem_range) = 10 => spec("BACKEND_SHMEM_UNMAP", fixed::<wire::ShmemMap>(), F::None, Gate::Protocol(P::SHMEM), AckWhenAsked, R::U64)
                => handler(
                    /// BACKEND_SHMEM_UNMAP (10).
                    |m| fn shmem_unmap(map: &ShmemMap = m) -> ()
                )
                => client(
                    /// BACKEND_SHMEM_UNMAP.
                    fn shmem_unmap(map: ShmemMap) -> () = simple(map)
                );
        }
    };
}
