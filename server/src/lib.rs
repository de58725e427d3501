//! # toolwire-server
//!
//! The tool-server side of toolwire: a thin tokio + tokio-tungstenite driver around
//! the sans-IO [`toolwire_protocol::Connection`], a registry of tools with JSON
//! Schemas, and the per-request authorization pipeline of the protocol crate.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use toolwire_server::{Server, Tool, protocol::Identity};
//! let identity = Identity::generate(&mut rand_core::OsRng);
//! let agent_key = "CpeWKVTQpomJ2y54KVBYPNcgXQV4JKSsWPa2ZQ6Ghe0".parse()?;
//! let server = Server::builder(identity, "ws://127.0.0.1:7700/toolwire")
//!     .allow_client(agent_key)
//!     .tool(Tool::new(
//!         "echo",
//!         "Returns its arguments.",
//!         serde_json::json!({"type": "object"}),
//!         |args, _context| async move { Ok(args) },
//!     ))
//!     .build()?;
//! server.serve("127.0.0.1:7700").await?;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

mod admission;
mod alerts;
mod amo;
mod audit;
mod builder;
#[cfg(feature = "cedar")]
pub mod cedar;
mod connection;
mod events;
mod fault;
mod metrics;
mod serve;
mod shutdown;
mod tls;
mod tool;

pub use admission::{AdmissionRefusal, AdmissionRequest};
pub use alerts::{Alert, AlertSink, AlertThresholds, LogAlertSink};
pub use amo::{AmoStoreError, StoreWriteFault};
pub use audit::{AuditLogError, AuditOptions, AuditStats, FsyncPolicy};
pub use builder::{
    BuildError, DangerousServerBuilder, Limits, RateBudgetEntries, ReplaceToolError, Server,
    ServerBuilder,
};
pub use shutdown::ShutdownReport;
pub use tls::{TlsConfig, TlsConfigError};
pub use tool::{
    CallContext, CallEnded, HandlerFuture, SchemaError, Tool, ToolError, ToolResult,
    TrySendItemError, STREAM_QUEUE_PER_CALL,
};
pub use toolwire_protocol as protocol;

#[cfg(feature = "__fault_injection")]
pub use fault::Fault;
