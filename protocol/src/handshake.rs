//! The toolwire handshake: Noise XX with Ed25519 identities bound to the Noise static
//! keys, as a typestate that moves each side from its first message to a
//! [`Transport`].
//!
//! Implements spec sections "Handshake" (HS-001..HS-035) and "Key schedule" (KS-001..KS-002):
//!
//! ```text
//! client                                             server
//! ClientHandshake::start ── record 1: e ───────────▶ ServerHandshake::read_client_init
//!                         ◀─ record 2: e,ee,s,es + ServerHello ──
//! read_server_hello ──── record 3: s,se + ClientHello ─▶ ServerAwaitingFinish::read_client_finish
//! ⇒ Transport                                          ⇒ Transport
//! ```
//!
//! The prologue is `PAE("toolwire/1", endpoint URL, subprotocol)`. Each side proves
//! its identity by signing `PAE(domain, noise static public key)` with its Ed25519
//! identity key; the Noise `es`/`se` DH proves possession of that static key. The
//! session id is the final handshake hash. Each `read_*` consumes the state, so a
//! failed handshake cannot be continued and handshake and transport calls cannot be
//! mixed.

use crate::certificate::{verify_server_certificate, CertificateCheck};
use crate::config::{ClientConfig, ServerConfig};
use crate::error::{AuthFailure, Error, Malformed};
use crate::grant::{verify_grant, Grant, GrantError, VerifyContext};
use crate::identity::{IdentityKey, SIGNATURE_LEN};
use crate::message::CapRequest;
use crate::noise::{self, HandshakeState, KeyPair, NoiseError, Role};
use crate::paseto::pae;
use crate::record::{self, RecordType};
use crate::transport::Transport;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use std::sync::Arc;

/// Version string bound into the prologue.
pub const PROLOGUE_LABEL: &[u8] = b"toolwire/1";
/// Domain of the server's signature over its Noise static key.
pub const SERVER_STATIC_DOMAIN: &[u8] = b"toolwire/1 server static";
/// Domain of the client's signature over its Noise static key.
pub const CLIENT_STATIC_DOMAIN: &[u8] = b"toolwire/1 client static";
/// Most grants a client may present in one handshake or CAP_REQUEST (each costs up to
/// four signature verifications).
pub const MAX_PRESENTED_GRANTS: usize = 8;
/// Length of a lineage id.
pub const LINEAGE_LEN: usize = 16;

/// The handshake prologue for an endpoint: `PAE("toolwire/1", endpoint, subprotocol)`.
pub fn prologue(endpoint: &str, subprotocol: &str) -> Vec<u8> {
    pae(&[PROLOGUE_LABEL, endpoint.as_bytes(), subprotocol.as_bytes()])
}

/// The bytes an identity signs to bind a Noise static key: `PAE(domain, static)`.
pub fn static_binding_message(domain: &[u8], static_public: &[u8; 32]) -> Vec<u8> {
    pae(&[domain, static_public])
}

/// Session parameters the server announces in message 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionParams {
    /// Largest record body the server accepts.
    pub max_record_body: u32,
    /// Maximum session age in milliseconds; the client should re-handshake before.
    pub session_lifetime_ms: u64,
    /// Idle timeout in milliseconds.
    pub idle_timeout_ms: u64,
}

/// Payload of handshake message 2 (encrypted under the handshake keys).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerHello {
    /// Server Ed25519 identity key (32 bytes).
    pub identity: ByteBuf,
    /// Signature over `PAE(SERVER_STATIC_DOMAIN, server noise static key)`.
    pub signature: ByteBuf,
    /// Session parameters.
    pub params: SessionParams,
    /// An operator's certificate for `identity` (ID-010), for clients that trust the
    /// operator instead of pinning this server's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
}

/// Resumption request in message 3.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    /// The at-most-once lineage the client continues (16 bytes).
    pub lineage: ByteBuf,
}

/// Payload of handshake message 3 (encrypted, forward secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientHello {
    /// Client Ed25519 identity key (32 bytes).
    pub identity: ByteBuf,
    /// Signature over `PAE(CLIENT_STATIC_DOMAIN, client noise static key)`.
    pub signature: ByteBuf,
    /// Tools wanted and grants presented.
    #[serde(default)]
    pub cap_request: CapRequest,
    /// Lineage to resume, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<Resume>,
}

/// What a completed handshake established, as seen by one side.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionInfo {
    /// The session id: the final Noise handshake hash.
    pub session_id: [u8; 32],
    /// The peer's authenticated identity key.
    pub peer: IdentityKey,
    /// The client's capability request (on the client, what it sent).
    pub cap_request: CapRequest,
    /// Server side: the presented grants that verified.
    pub grants: Vec<Grant>,
    /// Server side: presented grants that did not verify, by position, and why.
    pub rejected_grants: Vec<(usize, GrantError)>,
    /// Server side: the lineage the client resumes.
    pub lineage: Option<[u8; LINEAGE_LEN]>,
    /// Client side: parameters the server announced (server side: its own).
    pub params: SessionParams,
}

fn noise_error(error: NoiseError) -> Error {
    match error {
        NoiseError::Malformed => Error::Malformed(Malformed::HandshakeMessage),
        _ => Error::HandshakeFailed,
    }
}

fn decode_payload<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, Error> {
    let mut deserializer = rmp_serde::Deserializer::new(bytes);
    deserializer.set_max_depth(crate::message::MAX_DECODE_DEPTH);
    let value = T::deserialize(&mut deserializer)
        .map_err(|_| Error::Malformed(Malformed::HandshakePayload))?;
    if !deserializer.get_ref().is_empty() {
        return Err(Error::Malformed(Malformed::HandshakePayload));
    }
    Ok(value)
}

fn encode_payload<T: Serialize>(value: &T) -> Vec<u8> {
    rmp_serde::to_vec_named(value).unwrap_or_default()
}

/// Checks an identity key and its signature over the peer's Noise static key.
fn verify_static_binding(
    identity: &[u8],
    signature: &[u8],
    domain: &[u8],
    remote_static: &[u8; 32],
) -> Result<IdentityKey, Error> {
    let key = IdentityKey::from_slice(identity)
        .map_err(|_| Error::AuthFailed(AuthFailure::InvalidIdentityKey))?;
    if signature.len() != SIGNATURE_LEN {
        return Err(Error::AuthFailed(AuthFailure::BadIdentitySignature));
    }
    key.verify(&static_binding_message(domain, remote_static), signature)
        .map_err(|_| Error::AuthFailed(AuthFailure::BadIdentitySignature))?;
    Ok(key)
}

fn ephemeral(rng: &mut impl rand_core::CryptoRngCore) -> KeyPair {
    KeyPair::generate(rng)
}

/// Client, after sending message 1 and waiting for message 2.
pub struct ClientHandshake {
    noise: HandshakeState,
    config: Arc<ClientConfig>,
}

impl std::fmt::Debug for ClientHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientHandshake").finish_non_exhaustive()
    }
}

/// The client's result of a completed handshake.
#[derive(Debug)]
pub struct ClientFinished {
    /// The transport keys.
    pub transport: Transport,
    /// Record 3, to send to the server.
    pub record: Vec<u8>,
    /// What was established.
    pub session: SessionInfo,
}

impl ClientHandshake {
    /// Starts a handshake: returns the state and record 1 to send.
    pub fn start(
        config: Arc<ClientConfig>,
        rng: &mut impl rand_core::CryptoRngCore,
    ) -> (Self, Vec<u8>) {
        Self::start_with_ephemeral(config, ephemeral(rng))
    }

    /// HS-015 / ID-003 / ID-011: a pinned key, or a key certified by a trusted operator.
    fn server_is_trusted(
        &self,
        server: IdentityKey,
        certificate: Option<&str>,
        unix_now: i64,
    ) -> bool {
        if self.config.trusted_servers.contains(&server) {
            return true;
        }
        // Without a trusted operator, a certificate, or a wall clock to check its
        // validity period against, only pins count (ID-013).
        let Some(token) = certificate else {
            return false;
        };
        if self.config.trusted_operators.is_empty() || unix_now <= 0 {
            return false;
        }
        let check = CertificateCheck {
            trusted_operators: &self.config.trusted_operators,
            server,
            endpoint: &self.config.endpoint,
            now_unix: unix_now,
            max_clock_skew_secs: self.config.max_clock_skew_secs,
        };
        verify_server_certificate(token, &check).is_ok()
    }

    pub(crate) fn start_with_ephemeral(
        config: Arc<ClientConfig>,
        ephemeral: KeyPair,
    ) -> (Self, Vec<u8>) {
        let prologue = prologue(&config.endpoint, crate::config::SUBPROTOCOL);
        let mut noise = HandshakeState::new(
            Role::Initiator,
            &prologue,
            config.static_binding.key_pair(),
            ephemeral,
        );
        let mut message = Vec::with_capacity(noise::DH_LEN);
        // Writing message 1 of a fresh initiator with an empty payload cannot fail;
        // if it ever did, the empty record is refused by the server as malformed.
        let _ = noise.write_message(&[], &mut message);
        let record = record::handshake_record(RecordType::HANDSHAKE_1, &message);
        (Self { noise, config }, record)
    }

    /// Reads record 2, authenticates the server and produces record 3.
    ///
    /// # Errors
    /// [`Error::HandshakeFailed`] when record 2 does not decrypt (wrong prologue or
    /// endpoint, tampering) or carries a non-contributory key;
    /// [`Error::AuthFailed`] when the server identity's signature is bad or the
    /// identity is not pinned; [`Error::Malformed`] for bad lengths or payloads;
    /// header errors as in [`record::RecordHeader::parse`].
    pub fn read_server_hello(self, record: &[u8]) -> Result<ClientFinished, Error> {
        self.read_server_hello_at(record, 0)
    }

    /// [`read_server_hello`](Self::read_server_hello) with the wall-clock time
    /// (`unix_now`, Unix seconds), which checking an operator's server certificate
    /// needs (ID-013). With `unix_now <= 0` (no clock) only pinned keys are trusted.
    ///
    /// # Errors
    /// As [`read_server_hello`](Self::read_server_hello).
    pub fn read_server_hello_at(
        mut self,
        record: &[u8],
        unix_now: i64,
    ) -> Result<ClientFinished, Error> {
        let body = record::open_handshake_record(
            record,
            RecordType::HANDSHAKE_2,
            self.config.limits.max_record_body,
        )?;
        let mut payload = Vec::new();
        self.noise
            .read_message(body, &mut payload)
            .map_err(noise_error)?;
        let hello: ServerHello = decode_payload(&payload)?;
        let remote_static = self.noise.remote_static().ok_or(Error::HandshakeFailed)?;
        let server = verify_static_binding(
            &hello.identity,
            &hello.signature,
            SERVER_STATIC_DOMAIN,
            &remote_static,
        )?;
        if !self.server_is_trusted(server, hello.certificate.as_deref(), unix_now) {
            return Err(Error::AuthFailed(AuthFailure::UntrustedServer));
        }
        let client_hello = ClientHello {
            identity: ByteBuf::from(self.config.identity.public_key().to_bytes().to_vec()),
            signature: ByteBuf::from(self.config.static_binding.signature.to_vec()),
            cap_request: self.config.cap_request.clone(),
            resume: self.config.lineage.map(|lineage| Resume {
                lineage: ByteBuf::from(lineage.to_vec()),
            }),
        };
        let mut message = Vec::new();
        self.noise
            .write_message(&encode_payload(&client_hello), &mut message)
            .map_err(noise_error)?;
        let session_id = self.noise.handshake_hash();
        let (client_to_server, server_to_client) = self.noise.split().map_err(noise_error)?;
        let transport = Transport::new(
            client_to_server,
            server_to_client,
            session_id,
            &self.config.limits,
        );
        Ok(ClientFinished {
            transport,
            record: record::handshake_record(RecordType::HANDSHAKE_3, &message),
            session: SessionInfo {
                session_id,
                peer: server,
                cap_request: self.config.cap_request.clone(),
                grants: Vec::new(),
                rejected_grants: Vec::new(),
                lineage: self.config.lineage,
                params: hello.params,
            },
        })
    }
}

/// Server, waiting for message 1.
pub struct ServerHandshake {
    noise: HandshakeState,
    config: Arc<ServerConfig>,
}

impl std::fmt::Debug for ServerHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandshake").finish_non_exhaustive()
    }
}

/// Server, after sending message 2 and waiting for message 3.
pub struct ServerAwaitingFinish {
    noise: HandshakeState,
    config: Arc<ServerConfig>,
}

impl std::fmt::Debug for ServerAwaitingFinish {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerAwaitingFinish")
            .finish_non_exhaustive()
    }
}

impl ServerHandshake {
    /// A server side handshake, with a fresh ephemeral key from `rng`.
    pub fn new(config: Arc<ServerConfig>, rng: &mut impl rand_core::CryptoRngCore) -> Self {
        Self::with_ephemeral(config, ephemeral(rng))
    }

    pub(crate) fn with_ephemeral(config: Arc<ServerConfig>, ephemeral: KeyPair) -> Self {
        let prologue = prologue(&config.endpoint, crate::config::SUBPROTOCOL);
        let noise = HandshakeState::new(
            Role::Responder,
            &prologue,
            config.static_binding.key_pair(),
            ephemeral,
        );
        Self { noise, config }
    }

    /// Reads record 1 and produces record 2.
    ///
    /// # Errors
    /// [`Error::Malformed`] when message 1 is not exactly a 32-byte key with an empty
    /// payload; [`Error::HandshakeFailed`] for a non-contributory ephemeral key;
    /// header errors as in [`record::RecordHeader::parse`].
    pub fn read_client_init(
        mut self,
        record: &[u8],
    ) -> Result<(ServerAwaitingFinish, Vec<u8>), Error> {
        let body = record::open_handshake_record(
            record,
            RecordType::HANDSHAKE_1,
            self.config.limits.max_record_body,
        )?;
        if body.len() != noise::DH_LEN {
            return Err(Error::Malformed(Malformed::HandshakeMessage));
        }
        let mut payload = Vec::new();
        self.noise
            .read_message(body, &mut payload)
            .map_err(noise_error)?;
        let limits = &self.config.limits;
        let hello = ServerHello {
            identity: ByteBuf::from(self.config.identity.public_key().to_bytes().to_vec()),
            signature: ByteBuf::from(self.config.static_binding.signature.to_vec()),
            params: SessionParams {
                max_record_body: u32::try_from(limits.max_record_body).unwrap_or(u32::MAX),
                session_lifetime_ms: millis(limits.session_lifetime),
                idle_timeout_ms: millis(limits.idle_timeout),
            },
            certificate: self.config.certificate.clone(),
        };
        let mut message = Vec::new();
        self.noise
            .write_message(&encode_payload(&hello), &mut message)
            .map_err(noise_error)?;
        Ok((
            ServerAwaitingFinish {
                noise: self.noise,
                config: self.config,
            },
            record::handshake_record(RecordType::HANDSHAKE_2, &message),
        ))
    }
}

fn millis(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl ServerAwaitingFinish {
    /// Reads record 3, authenticates the client and returns the transport.
    /// `unix_now` (seconds) is used to check grant validity.
    ///
    /// # Errors
    /// [`Error::HandshakeFailed`] when record 3 does not decrypt;
    /// [`Error::AuthFailed`] when the identity signature is bad, or the client is
    /// neither allowed by key nor holds a valid grant from a trusted issuer;
    /// [`Error::Malformed`] for bad payloads (including more than
    /// [`MAX_PRESENTED_GRANTS`] grants or a lineage that is not 16 bytes).
    pub fn read_client_finish(
        mut self,
        record: &[u8],
        unix_now: i64,
    ) -> Result<(Transport, SessionInfo), Error> {
        let body = record::open_handshake_record(
            record,
            RecordType::HANDSHAKE_3,
            self.config.limits.max_record_body,
        )?;
        let mut payload = Vec::new();
        self.noise
            .read_message(body, &mut payload)
            .map_err(noise_error)?;
        let hello: ClientHello = decode_payload(&payload)?;
        if hello.cap_request.grants.len() > MAX_PRESENTED_GRANTS {
            return Err(Error::Malformed(Malformed::HandshakePayload));
        }
        let lineage = match &hello.resume {
            None => None,
            Some(resume) => Some(
                <[u8; LINEAGE_LEN]>::try_from(resume.lineage.as_ref())
                    .map_err(|_| Error::Malformed(Malformed::HandshakePayload))?,
            ),
        };
        let remote_static = self.noise.remote_static().ok_or(Error::HandshakeFailed)?;
        let client = verify_static_binding(
            &hello.identity,
            &hello.signature,
            CLIENT_STATIC_DOMAIN,
            &remote_static,
        )?;
        let session_id = self.noise.handshake_hash();
        let (grants, rejected_grants) = verify_presented_grants(
            &self.config,
            &hello.cap_request.grants,
            client,
            session_id,
            unix_now,
        );
        let allowed = self.config.allow_any_client
            || self.config.allowed_clients.contains(&client)
            || !grants.is_empty();
        if !allowed {
            return Err(Error::AuthFailed(AuthFailure::UnknownClient));
        }
        let (client_to_server, server_to_client) = self.noise.split().map_err(noise_error)?;
        let limits = &self.config.limits;
        let transport = Transport::new(server_to_client, client_to_server, session_id, limits);
        Ok((
            transport,
            SessionInfo {
                session_id,
                peer: client,
                cap_request: hello.cap_request,
                grants,
                rejected_grants,
                lineage,
                params: SessionParams {
                    max_record_body: u32::try_from(limits.max_record_body).unwrap_or(u32::MAX),
                    session_lifetime_ms: millis(limits.session_lifetime),
                    idle_timeout_ms: millis(limits.idle_timeout),
                },
            },
        ))
    }
}

/// Verifies presented grants for `holder` against the server's trusted issuers
/// (GRT-*): returns those that verify and the reasons the others did not.
pub fn verify_presented_grants(
    config: &ServerConfig,
    tokens: &[String],
    holder: IdentityKey,
    session_id: [u8; 32],
    unix_now: i64,
) -> (Vec<Grant>, Vec<(usize, GrantError)>) {
    let issuers: Vec<[u8; 32]> = config
        .grant_issuers
        .iter()
        .map(IdentityKey::to_bytes)
        .collect();
    let context = VerifyContext {
        trusted_issuers: &issuers,
        audience: config.identity.public_key().to_bytes(),
        holder: holder.to_bytes(),
        now_unix: unix_now,
        session_id: Some(session_id),
        max_clock_skew_secs: config.max_clock_skew_secs,
    };
    let mut grants = Vec::new();
    let mut rejected = Vec::new();
    for (position, token) in tokens.iter().enumerate().take(MAX_PRESENTED_GRANTS) {
        match verify_grant(token, &context) {
            Ok(grant) => grants.push(grant),
            Err(error) => rejected.push((position, error)),
        }
    }
    (grants, rejected)
}
