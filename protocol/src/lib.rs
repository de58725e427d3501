//! # toolwire-protocol
//!
//! The sans-IO core of toolwire, a secure RPC protocol that lets AI agents call tools
//! on tool servers over WebSockets. It knows nothing of sockets, tokio or clocks:
//! bytes and `now` go in; bytes, events and deadlines come out. The `toolwire-client`
//! and `toolwire-server` crates are thin drivers around [`Connection`].
//!
//! ```text
//!            agent (client)                                   tool server
//!   ┌──────────────────────────────┐                ┌──────────────────────────────┐
//!   │ Connection::client           │  record 1: e   │ Connection::server           │
//!   │   handshake (Noise XX)       │ ─────────────▶ │   handshake (Noise XX)       │
//!   │                              │ ◀───────────── │   + server identity proof    │
//!   │   + client identity proof,   │  record 3      │                              │
//!   │     capability request       │ ─────────────▶ │ Event::Established           │
//!   │ Event::Established           │                │                              │
//!   │ send(REQUEST) ── seal ──────▶│ sealed records │──▶ open ─▶ Event::Message    │
//!   │ Event::Message ◀── open ─────│◀───────────────│◀── seal ◀─ send(RESPONSE)    │
//!   └──────────────────────────────┘                └──────────────────────────────┘
//! ```
//!
//! Each module implements one section of `spec/PROTOCOL.md` and lists its clause ids.
//!
//! ## Example: an in-memory handshake and one signed call
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Instant;
//! use toolwire_protocol::{
//!     envelope::RequestFields, ClientConfig, Connection, Event, Identity, Message,
//!     ServerConfig, message::Request,
//! };
//!
//! let mut rng = rand_core::OsRng;
//! let server_identity = Identity::generate(&mut rng);
//! let client_identity = Identity::generate(&mut rng);
//! let endpoint = "ws://127.0.0.1:7700/toolwire";
//! let server_config = Arc::new(
//!     ServerConfig::new(server_identity.clone(), endpoint, &mut rng)
//!         .allow_clients([client_identity.public_key()]),
//! );
//! let client_config = Arc::new(ClientConfig::new(
//!     client_identity.clone(),
//!     vec![server_identity.public_key()],
//!     endpoint,
//!     &mut rng,
//! ));
//!
//! let now = Instant::now();
//! let mut client = Connection::client(client_config, now, &mut rng);
//! let mut server = Connection::server(server_config, now, 1_700_000_000, &mut rng);
//!
//! // Move records until both sides are established.
//! for _ in 0..2 {
//!     while let Some(record) = client.poll_transmit() {
//!         server.handle_record(now, &record)?;
//!     }
//!     while let Some(record) = server.poll_transmit() {
//!         client.handle_record(now, &record)?;
//!     }
//! }
//! assert!(client.is_established() && server.is_established());
//!
//! // A signed REQUEST.
//! let session_id = client.session().unwrap().session_id;
//! let args = rmp_serde::to_vec(&("hello",)).unwrap();
//! let fields = RequestFields { session_id: &session_id, request_id: 1, tool: "echo", args: &args, grant_id: "" };
//! let signature = fields.sign(&client_identity);
//! client.send(now, Message::Request(Request {
//!     id: 1, tool: "echo".into(), args: args.clone().into(), grant_id: None,
//!     deadline_ms: None, signature: Some(signature.to_vec().into()),
//!     retry: false,
//! }))?;
//! while let Some(record) = client.poll_transmit() {
//!     server.handle_record(now, &record)?;
//! }
//! let mut received = None;
//! while let Some(event) = server.poll_event() {
//!     if let Event::Message(Message::Request(request)) = event {
//!         received = Some(request);
//!     }
//! }
//! let request = received.unwrap();
//! assert_eq!(request.args.as_ref(), args.as_slice());
//! fields.verify(&client_identity.public_key(), request.signature.as_deref().unwrap()).unwrap();
//! # Ok::<(), toolwire_protocol::Error>(())
//! ```

#![forbid(unsafe_code)]

pub mod amo;
pub mod audit;
pub mod authz;
pub mod certificate;
pub mod codes;
pub mod config;
pub mod connection;
pub mod envelope;
pub mod error;
pub mod events;
pub mod grant;
pub mod handshake;
pub mod identity;
pub mod manifest;
pub mod message;
pub mod noise;
pub mod paseto;
pub mod record;
pub mod replay;
pub mod transport;
pub mod upgrade;

#[cfg(feature = "__testing")]
#[doc(hidden)]
pub mod testing;

#[cfg(feature = "__testing")]
#[doc(hidden)]
pub mod fuzzing;

pub use codes::{CloseCode, ErrorCode};
pub use config::{ClientConfig, ConnectionLimits, ServerConfig, SUBPROTOCOL};
pub use connection::{Connection, Event, Role};
pub use error::{Error, Side};
pub use handshake::SessionInfo;
pub use identity::{Identity, IdentityKey};
pub use message::Message;
