//! # toolwire-client
//!
//! The agent side of toolwire: a thin tokio + tokio-tungstenite driver around the
//! sans-IO [`toolwire_protocol::Connection`]. It dials, runs the handshake, keeps the
//! connection alive and multiplexes many calls over it; every protocol decision is the
//! protocol crate's.
//!
//! A [`Session`] outlives its connections: when one is lost it reconnects, resumes
//! its at-most-once lineage and re-sends the calls in flight as retries, so that no
//! call runs twice and none is silently lost; it also renews a connection before its
//! lifetime ends. See [`ReconnectPolicy`].
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use toolwire_client::{Client, protocol::{Identity, IdentityKey}};
//! let identity = Identity::generate(&mut rand_core::OsRng);
//! let server_key: IdentityKey = "CpeWKVTQpomJ2y54KVBYPNcgXQV4JKSsWPa2ZQ6Ghe0".parse()?;
//! let session = Client::builder()
//!     .identity(identity)
//!     .pin_server(server_key)
//!     .connect("ws://127.0.0.1:7700/toolwire")
//!     .await?;
//! let result = session.call("echo", &serde_json::json!({"text": "hi"})).await?;
//! println!("{result}");
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

mod builder;
mod error;
mod events;
mod link;
mod reconnect;
mod session;
mod tls;

pub use builder::{Client, ClientBuilder, DangerousClientBuilder};
pub use error::{CallError, ConnectError};
pub use reconnect::ReconnectPolicy;
pub use session::{CallOptions, CallStream, Session, StreamEvent};
pub use toolwire_protocol as protocol;
