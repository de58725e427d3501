//! The tool registry: named tools with JSON Schemas and async handlers.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::mpsc;
use toolwire_protocol::authz::ToolDigests;
use toolwire_protocol::manifest::{Manifest, ToolDescriptor};
use toolwire_protocol::message::SignedManifest;
use toolwire_protocol::{ErrorCode, Identity, IdentityKey};

/// What a handler returns: a JSON result or a typed error.
pub type ToolResult = Result<serde_json::Value, ToolError>;

/// The boxed future a handler produces.
pub type HandlerFuture = Pin<Box<dyn Future<Output = ToolResult> + Send>>;

type Handler = Arc<dyn Fn(serde_json::Value, CallContext) -> HandlerFuture + Send + Sync>;

/// A handler's failure, mapped to an RPC error code on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ToolError {
    /// The RPC error code sent to the caller.
    pub code: ErrorCode,
    /// A message for the caller. Never put secrets here: it travels to the agent.
    pub message: String,
}

impl ToolError {
    /// An error with an explicit code.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// INVALID_ARGUMENT: the arguments are wrong in a way the schema did not catch.
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::INVALID_ARGUMENT, message)
    }

    /// NOT_FOUND: the thing the call names does not exist.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NOT_FOUND, message)
    }

    /// PERMISSION_DENIED: the tool refuses this caller or target.
    pub fn permission_denied(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::PERMISSION_DENIED, message)
    }

    /// INTERNAL: the tool failed.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::INTERNAL, message)
    }
}

/// What a handler knows about the call it serves.
#[derive(Debug, Clone)]
pub struct CallContext {
    /// The caller's authenticated identity.
    pub client: IdentityKey,
    /// The session id.
    pub session_id: [u8; 32],
    /// The request id.
    pub request_id: u64,
    pub(crate) stream: mpsc::Sender<(u64, serde_json::Value)>,
}

/// Items one call may have queued, not yet handed to its connection, before
/// [`CallContext::send_item`] waits.
pub const STREAM_QUEUE_PER_CALL: usize = 16;

/// The call has ended (its connection is gone): the item was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the call has ended; the item was not sent")]
pub struct CallEnded;

/// Why [`CallContext::try_send_item`] did not queue an item.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TrySendItemError {
    /// The caller reads more slowly than the tool produces: the call's queue is full.
    /// The item is handed back; try again later, or use [`CallContext::send_item`],
    /// which waits.
    #[error("the call's stream queue is full")]
    Full(serde_json::Value),
    /// The call has ended.
    #[error("the call has ended; the item was not sent")]
    Ended,
}

impl CallContext {
    /// Sends a partial result or progress report to the caller (STREAM_ITEM), in
    /// order, before the call's result.
    ///
    /// Waits while the caller is not keeping up: at most [`STREAM_QUEUE_PER_CALL`]
    /// items per call, and a bounded number per connection, wait to be written, and
    /// a connection whose peer stops reading is closed after
    /// [`Limits::write_stall_timeout`](crate::Limits::write_stall_timeout) — so a
    /// fast producer cannot fill the server's memory behind a slow client.
    ///
    /// # Errors
    /// [`CallEnded`] when the call can no longer send (its connection is gone).
    pub async fn send_item(&self, item: serde_json::Value) -> Result<(), CallEnded> {
        self.stream
            .send((self.request_id, item))
            .await
            .map_err(|_| CallEnded)
    }

    /// Like [`send_item`](Self::send_item) without waiting, for code that cannot
    /// await (a synchronous handler, a foreign-language callback).
    ///
    /// # Errors
    /// [`TrySendItemError::Full`] (with the item) while the call's queue is full,
    /// [`TrySendItemError::Ended`] when the call can no longer send.
    pub fn try_send_item(&self, item: serde_json::Value) -> Result<(), TrySendItemError> {
        self.stream
            .try_send((self.request_id, item))
            .map_err(|error| match error {
                mpsc::error::TrySendError::Full((_, item)) => TrySendItemError::Full(item),
                mpsc::error::TrySendError::Closed(_) => TrySendItemError::Ended,
            })
    }
}

/// One tool: its manifest entry and its handler.
#[derive(Clone)]
pub struct Tool {
    pub(crate) descriptor: ToolDescriptor,
    pub(crate) schema: serde_json::Value,
    pub(crate) handler: Handler,
}

impl std::fmt::Debug for Tool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tool")
            .field("name", &self.descriptor.name)
            .finish_non_exhaustive()
    }
}

impl Tool {
    /// A tool named `name`, described by `description` (shown to the agent), whose
    /// arguments must match the JSON Schema `input_schema`, served by `handler`.
    pub fn new<F, Fut>(
        name: impl Into<String>,
        description: impl Into<String>,
        input_schema: serde_json::Value,
        handler: F,
    ) -> Self
    where
        F: Fn(serde_json::Value, CallContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ToolResult> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |args, context| Box::pin(handler(args, context)));
        Self {
            descriptor: ToolDescriptor {
                name: name.into(),
                description: description.into(),
                input_schema: input_schema.to_string(),
                output_schema: String::new(),
            },
            schema: input_schema,
            handler,
        }
    }

    /// Declares the JSON Schema of the result (published in the manifest).
    pub fn output_schema(mut self, schema: &serde_json::Value) -> Self {
        self.descriptor.output_schema = schema.to_string();
        self
    }

    /// The tool's manifest entry.
    pub fn descriptor(&self) -> &ToolDescriptor {
        &self.descriptor
    }
}

/// Registered tools by name, with compiled argument validators.
pub(crate) struct Registry {
    pub(crate) tools: BTreeMap<String, RegisteredTool>,
}

pub(crate) struct RegisteredTool {
    pub(crate) tool: Tool,
    pub(crate) digest: [u8; 32],
    validator: jsonschema::Validator,
}

/// A tool whose schema is not a valid JSON Schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tool `{tool}` has an invalid input schema: {reason}")]
pub struct SchemaError {
    /// The tool.
    pub tool: String,
    /// Why the schema was refused.
    pub reason: String,
}

impl Registry {
    pub(crate) fn new(tools: Vec<Tool>) -> Result<Self, SchemaError> {
        let mut registered = BTreeMap::new();
        for tool in tools {
            let validator =
                jsonschema::validator_for(&tool.schema).map_err(|error| SchemaError {
                    tool: tool.descriptor.name.clone(),
                    reason: error.to_string(),
                })?;
            let digest = tool.descriptor.digest();
            registered.insert(
                tool.descriptor.name.clone(),
                RegisteredTool {
                    tool,
                    digest,
                    validator,
                },
            );
        }
        Ok(Self { tools: registered })
    }

    pub(crate) fn descriptors(&self) -> Vec<ToolDescriptor> {
        self.tools
            .values()
            .map(|entry| entry.tool.descriptor.clone())
            .collect()
    }
}

/// Everything a connection needs to know about the tools at one moment: the
/// registry, the manifest signed by the server identity, and each tool's digest.
/// Replaced as a whole when a tool changes, so a connection always sees one
/// consistent version.
pub(crate) struct Catalog {
    pub(crate) registry: Registry,
    pub(crate) manifest: SignedManifest,
    pub(crate) digests: ToolDigests,
}

impl Catalog {
    /// Compiles the schemas of `tools` and signs their manifest with `identity`.
    pub(crate) fn new(tools: Vec<Tool>, identity: &Identity) -> Result<Self, SchemaError> {
        let registry = Registry::new(tools)?;
        let manifest = Manifest {
            server: identity.public_key().to_bytes().to_vec().into(),
            tools: registry.descriptors(),
        }
        .sign(identity);
        let mut digests = ToolDigests::new();
        for (name, entry) in &registry.tools {
            digests.insert(name.clone(), entry.digest);
        }
        Ok(Self {
            registry,
            manifest,
            digests,
        })
    }

    /// The registered tools, for building the next catalog.
    pub(crate) fn tools(&self) -> Vec<Tool> {
        self.registry
            .tools
            .values()
            .map(|entry| entry.tool.clone())
            .collect()
    }
}

impl RegisteredTool {
    /// Validates arguments; the error text names the first violation and where it
    /// is, with the offending value masked (it may be a secret, and the reason
    /// travels to the peer and into the decision record).
    pub(crate) fn validate(&self, args: &serde_json::Value) -> Result<(), String> {
        match self.validator.iter_errors(args).next() {
            None => Ok(()),
            Some(error) => Err(format!(
                "arguments do not match the tool's input schema at `{}`: {}",
                error.instance_path().as_str(),
                error.masked()
            )),
        }
    }
}

/// Decodes a call's argument bytes: exactly one msgpack value and nothing after it,
/// so that the handler sees exactly the bytes the envelope signature covers (a
/// trailing suffix would be signed and logged but never validated or seen).
pub(crate) fn decode_args(bytes: &[u8]) -> Result<serde_json::Value, String> {
    use serde::Deserialize as _;
    let mut deserializer = rmp_serde::Deserializer::new(bytes);
    let value = serde_json::Value::deserialize(&mut deserializer)
        .map_err(|_| "arguments are not valid msgpack".to_owned())?;
    if !deserializer.get_ref().is_empty() {
        return Err("arguments have bytes after the msgpack value".to_owned());
    }
    Ok(value)
}
