//! Configuration of the protocol core: identities, trust, endpoint binding and the
//! limits that bound each attack.
//!
//! Implements the defaults of spec section "Default limits" (LIM-001, LIM-005..LIM-009, LIM-014).

use crate::identity::{Identity, IdentityKey};
use crate::message::CapRequest;
use crate::noise::KeyPair;
use std::time::Duration;
use zeroize::Zeroizing;

/// The WebSocket subprotocol every toolwire connection negotiates (TRN-014, TRN-017, TRN-018).
pub const SUBPROTOCOL: &str = "toolwire.v1";

/// Limits of one connection. Each field's doc gives its default and the attack it
/// bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionLimits {
    /// Largest record body (ciphertext with tag) accepted. Default 64 KiB. Bounds
    /// memory per record; larger payloads stream as STREAM_ITEM chunks.
    pub max_record_body: usize,
    /// Time from connection start to handshake completion. Default 5 s. Bounds
    /// connections that hold a slot without authenticating.
    pub handshake_timeout: Duration,
    /// Time without any record from the peer before closing. Default 90 s. Bounds
    /// abandoned connections.
    pub idle_timeout: Duration,
    /// Interval after which the client sends a PING when it has sent nothing. Default
    /// 30 s. Keeps idle connections alive through proxies; WebSocket pings are not
    /// authenticated, these are.
    pub keepalive_interval: Duration,
    /// Records per epoch before the sender rekeys. Default 2^20. Limits what one key
    /// ever protects.
    pub rekey_after_records: u64,
    /// Time per epoch before the sender rekeys. Default 5 min. Limits how far back a
    /// stolen key reaches.
    pub rekey_after: Duration,
    /// Maximum age of a session; the server closes it with SESSION_EXPIRED after this.
    /// Default 62 min (clients re-handshake at 60). Bounds session riding after a
    /// revocation that a client never sees.
    pub session_lifetime: Duration,
    /// Require sequence numbers in strict order (any gap or reordering closes with
    /// REPLAY_DETECTED). Default true: WebSocket runs over TCP. A multi-path or relay
    /// transport may turn it off and rely on the replay window alone.
    pub strict_order: bool,
    /// FAULT INJECTION, for the conformance suite's own tests only: the record
    /// receiver skips its replay and order checks (REC-025, REC-026, REC-030).
    /// Exists only with the `__fault_injection` feature; never enable it.
    #[cfg(feature = "__fault_injection")]
    #[doc(hidden)]
    pub fault_skip_replay_check_for_conformance_testing_only: bool,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_record_body: crate::record::DEFAULT_MAX_BODY_LEN,
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(90),
            keepalive_interval: Duration::from_secs(30),
            rekey_after_records: 1 << 20,
            rekey_after: Duration::from_secs(5 * 60),
            session_lifetime: Duration::from_secs(62 * 60),
            strict_order: true,
            #[cfg(feature = "__fault_injection")]
            fault_skip_replay_check_for_conformance_testing_only: false,
        }
    }
}

/// A Noise static key pair and the identity's signature binding it (HS-009, HS-019).
pub(crate) struct StaticBinding {
    secret: Zeroizing<[u8; 32]>,
    pub(crate) public: [u8; 32],
    pub(crate) signature: [u8; 64],
}

impl StaticBinding {
    fn new(identity: &Identity, domain: &[u8], rng: &mut impl rand_core::CryptoRngCore) -> Self {
        let mut secret = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(secret.as_mut());
        let public = KeyPair::from_secret_bytes(*secret).public_key();
        let signature = identity.sign(&crate::handshake::static_binding_message(domain, &public));
        Self {
            secret,
            public,
            signature,
        }
    }

    pub(crate) fn key_pair(&self) -> KeyPair {
        KeyPair::from_secret_bytes(*self.secret)
    }

    #[cfg(feature = "__testing")]
    pub(crate) fn secret_bytes(&self) -> [u8; 32] {
        *self.secret
    }
}

impl std::fmt::Debug for StaticBinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticBinding")
            .field("public", &hex::encode(self.public))
            .finish_non_exhaustive()
    }
}

/// Everything a client needs to open sessions.
#[derive(Debug)]
pub struct ClientConfig {
    pub(crate) identity: Identity,
    pub(crate) static_binding: StaticBinding,
    pub(crate) trusted_servers: Vec<IdentityKey>,
    pub(crate) trusted_operators: Vec<IdentityKey>,
    pub(crate) max_clock_skew_secs: i64,
    pub(crate) endpoint: String,
    pub(crate) cap_request: CapRequest,
    pub(crate) lineage: Option<[u8; 16]>,
    pub(crate) limits: ConnectionLimits,
}

impl ClientConfig {
    /// A client with `identity` that trusts only the servers whose identity keys are in
    /// `trusted_servers` (pinning, ID-003), dialing `endpoint` (the URL bound into the
    /// prologue, HS-003). `rng` creates the Noise static key.
    pub fn new(
        identity: Identity,
        trusted_servers: Vec<IdentityKey>,
        endpoint: impl Into<String>,
        rng: &mut impl rand_core::CryptoRngCore,
    ) -> Self {
        let static_binding =
            StaticBinding::new(&identity, crate::handshake::CLIENT_STATIC_DOMAIN, rng);
        Self {
            identity,
            static_binding,
            trusted_servers,
            trusted_operators: Vec::new(),
            max_clock_skew_secs: 30,
            endpoint: endpoint.into(),
            cap_request: CapRequest::default(),
            lineage: None,
            limits: ConnectionLimits::default(),
        }
    }

    /// The capability request sent in handshake message 3: tools wanted and grants
    /// presented.
    pub fn with_cap_request(mut self, cap_request: CapRequest) -> Self {
        self.cap_request = cap_request;
        self
    }

    /// Also trust every server whose identity key one of these operator keys certified
    /// (ID-011): the server presents the certificate in its ServerHello. Checking it
    /// needs the wall-clock time, so the connection must be created with
    /// [`Connection::client_at`](crate::Connection::client_at).
    pub fn with_trusted_operators(mut self, operators: Vec<IdentityKey>) -> Self {
        self.trusted_operators = operators;
        self
    }

    /// Tolerance for clock differences when checking a server certificate's validity
    /// period. Default 30 s, as the server's for grants.
    pub fn with_max_clock_skew_secs(mut self, seconds: i64) -> Self {
        self.max_clock_skew_secs = seconds.max(0);
        self
    }

    /// Resume this at-most-once lineage (AMO-003).
    pub fn with_lineage(mut self, lineage: [u8; 16]) -> Self {
        self.lineage = Some(lineage);
        self
    }

    /// Replaces the limits.
    pub fn with_limits(mut self, limits: ConnectionLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The client identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The endpoint URL bound into the handshake.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The limits in force.
    pub fn limits(&self) -> &ConnectionLimits {
        &self.limits
    }
}

/// Everything a server needs to accept sessions.
#[derive(Debug)]
pub struct ServerConfig {
    pub(crate) identity: Identity,
    pub(crate) static_binding: StaticBinding,
    pub(crate) allowed_clients: Vec<IdentityKey>,
    pub(crate) grant_issuers: Vec<IdentityKey>,
    pub(crate) allow_any_client: bool,
    pub(crate) endpoint: String,
    pub(crate) limits: ConnectionLimits,
    pub(crate) max_clock_skew_secs: i64,
    pub(crate) certificate: Option<String>,
    /// Where every session's sending direction starts (sequence number, epoch):
    /// (0, 0) unless a conformance run moved it (see [`DangerousServerConfig`]).
    pub(crate) first_send: (u64, u32),
}

impl ServerConfig {
    /// A server with `identity`, reachable by clients at `endpoint` (the public URL
    /// they dial, bound into the prologue). With no allowed clients and no grant
    /// issuers, no client authenticates: add at least one.
    pub fn new(
        identity: Identity,
        endpoint: impl Into<String>,
        rng: &mut impl rand_core::CryptoRngCore,
    ) -> Self {
        let static_binding =
            StaticBinding::new(&identity, crate::handshake::SERVER_STATIC_DOMAIN, rng);
        Self {
            identity,
            static_binding,
            allowed_clients: Vec::new(),
            grant_issuers: Vec::new(),
            allow_any_client: false,
            endpoint: endpoint.into(),
            limits: ConnectionLimits::default(),
            max_clock_skew_secs: 30,
            certificate: None,
            first_send: (0, 0),
        }
    }

    /// Presents this operator certificate for the server's identity key in every
    /// ServerHello (ID-010), so clients that trust the operator accept the server
    /// without pinning its key.
    ///
    /// # Errors
    /// [`CertificateError`](crate::certificate::CertificateError) when the token is
    /// not a well-formed certificate, or certifies another identity key
    /// ([`WrongServer`](crate::certificate::CertificateError::WrongServer)): a
    /// misconfiguration found at startup rather than by every client.
    pub fn with_certificate(
        mut self,
        token: impl Into<String>,
    ) -> Result<Self, crate::certificate::CertificateError> {
        let token = token.into();
        let certificate = crate::certificate::decode_unverified(&token)?;
        if certificate.server != self.identity.public_key() {
            return Err(crate::certificate::CertificateError::WrongServer);
        }
        self.certificate = Some(token);
        Ok(self)
    }

    /// Allows these client identities (HS-028).
    pub fn allow_clients(mut self, keys: impl IntoIterator<Item = IdentityKey>) -> Self {
        self.allowed_clients.extend(keys);
        self
    }

    /// Trusts grants issued by these keys: a client presenting a valid grant from one
    /// of them authenticates even if it is not allowed by key (HS-026, HS-028).
    pub fn trust_grant_issuers(mut self, keys: impl IntoIterator<Item = IdentityKey>) -> Self {
        self.grant_issuers.extend(keys);
        self
    }

    /// Replaces the limits.
    pub fn with_limits(mut self, limits: ConnectionLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Tolerated clock difference when checking grant `exp`/`nbf`. Default 30 s.
    pub fn with_max_clock_skew(mut self, seconds: i64) -> Self {
        self.max_clock_skew_secs = seconds;
        self
    }

    /// Options that weaken security. Each is explicit and named for what it gives up.
    pub fn dangerous(&mut self) -> DangerousServerConfig<'_> {
        DangerousServerConfig { config: self }
    }

    /// The server identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The endpoint URL bound into the handshake.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The limits in force.
    pub fn limits(&self) -> &ConnectionLimits {
        &self.limits
    }

    /// Trusted grant issuers.
    pub fn grant_issuers(&self) -> &[IdentityKey] {
        &self.grant_issuers
    }
}

/// Security-weakening switches of a [`ServerConfig`].
#[derive(Debug)]
pub struct DangerousServerConfig<'a> {
    config: &'a mut ServerConfig,
}

impl DangerousServerConfig<'_> {
    /// Accept any client that proves possession of *some* identity key. The session
    /// still authenticates that key; authorization must then come from elsewhere.
    pub fn allow_any_client(&mut self) -> &mut Self {
        self.config.allow_any_client = true;
        self
    }

    /// CONFORMANCE TESTING ONLY: every session's server→client direction starts at
    /// sequence number `seq` (capped at the reserved last one, `2^62 − 1`) instead of
    /// 0, right after the handshake.
    ///
    /// It exists so that a conformance run can reach the end of the sequence space
    /// (REC-011..REC-013, SEQUENCE_EXHAUSTED) in a few records instead of `2^62`
    /// (spec LIM-017). It gives up interoperability, not secrecy: numbers still
    /// only grow from `seq`, so no (key, nonce) pair repeats, but it breaks REC-010,
    /// and a client that checks strict order (every conforming one) closes the
    /// session on the first record. Never set it on a server real clients use.
    pub fn start_send_sequence_for_testing(&mut self, seq: u64) -> &mut Self {
        self.config.first_send.0 = seq;
        self
    }

    /// CONFORMANCE TESTING ONLY: every session's server→client direction starts in
    /// epoch `epoch` instead of 0, right after the handshake, still under the
    /// handshake's key (the key of epoch `epoch` would take `epoch` applications of
    /// REKEY).
    ///
    /// It exists so that a conformance run can reach the last epoch, `2^32 − 1`, and
    /// check that the server closes with SEQUENCE_EXHAUSTED instead of rekeying
    /// (KEY-006), without `2^32` rekeys (spec LIM-017). Keys stay per-connection and
    /// nonces unique, but the labels break the key schedule (KS-003), so a conforming
    /// client closes the session on the first record. Never set it on a server real
    /// clients use.
    pub fn start_send_epoch_for_testing(&mut self, epoch: u32) -> &mut Self {
        self.config.first_send.1 = epoch;
        self
    }
}
