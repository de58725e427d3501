//! Building a client and connecting.

use crate::error::ConnectError;
use crate::session::{self, Session};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::{HeaderValue, Uri};
use toolwire_protocol::message::CapRequest;
use toolwire_protocol::{ClientConfig, ConnectionLimits, Identity, IdentityKey, SUBPROTOCOL};

/// Entry point: `Client::builder()`.
#[derive(Debug)]
pub struct Client;

impl Client {
    /// A builder with safe defaults: requests signed, `wss://` required off loopback.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }
}

/// Configures and opens client sessions.
#[derive(Debug)]
pub struct ClientBuilder {
    identity: Option<Identity>,
    trusted_servers: Vec<IdentityKey>,
    cap_request: CapRequest,
    limits: ConnectionLimits,
    sign_requests: bool,
    allow_plaintext: bool,
    origin: Option<String>,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        Self {
            identity: None,
            trusted_servers: Vec::new(),
            cap_request: CapRequest {
                tools: vec!["*".into()],
                grants: Vec::new(),
            },
            limits: ConnectionLimits::default(),
            sign_requests: true,
            allow_plaintext: false,
            origin: None,
        }
    }
}

impl ClientBuilder {
    /// The client's long-term identity (required).
    pub fn identity(mut self, identity: Identity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// Trusts a server identity key (pinning). At least one is required; a server
    /// proving any other identity is refused with AUTH_FAILED.
    pub fn pin_server(mut self, key: IdentityKey) -> Self {
        self.trusted_servers.push(key);
        self
    }

    /// The tools to ask for in the handshake. Default: `["*"]`, every tool the
    /// server's policy and presented grants allow.
    pub fn request_tools<I, S>(mut self, tools: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.cap_request.tools = tools.into_iter().map(Into::into).collect();
        self
    }

    /// Presents a capability grant (a PASETO v4.public token) in the handshake.
    pub fn present_grant(mut self, token: impl Into<String>) -> Self {
        self.cap_request.grants.push(token.into());
        self
    }

    /// Replaces the connection limits.
    pub fn limits(mut self, limits: ConnectionLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Sends an `Origin` header in the upgrade request (browsers always do; native
    /// agents normally do not).
    pub fn origin(mut self, origin: impl Into<String>) -> Self {
        self.origin = Some(origin.into());
        self
    }

    /// Options that weaken security.
    pub fn dangerous(self) -> DangerousClientBuilder {
        DangerousClientBuilder { builder: self }
    }

    /// Dials `url`, runs the handshake and waits for the capability grant.
    ///
    /// `url` is bound into the handshake: it must be exactly the public URL the
    /// server is configured with, or the handshake fails (HANDSHAKE_FAILED).
    ///
    /// # Errors
    /// [`ConnectError`] for an insecure or invalid URL, a missing identity or pinned
    /// key, a refused upgrade, a failed handshake (with its close code), or a timeout.
    pub async fn connect(self, url: &str) -> Result<Session, ConnectError> {
        let identity = self
            .identity
            .ok_or(ConnectError::Config("an identity is required"))?;
        if self.trusted_servers.is_empty() {
            return Err(ConnectError::Config("pin at least one server identity key"));
        }
        check_url(url, self.allow_plaintext)?;
        let mut request = url
            .into_client_request()
            .map_err(|error| ConnectError::InsecureOrInvalidUrl(error.to_string()))?;
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(SUBPROTOCOL),
        );
        if let Some(origin) = &self.origin {
            let value = HeaderValue::from_str(origin)
                .map_err(|_| ConnectError::Config("invalid Origin value"))?;
            request.headers_mut().insert("Origin", value);
        }
        let config = ClientConfig::new(identity, self.trusted_servers, url, &mut rand_core::OsRng)
            .with_cap_request(self.cap_request)
            .with_limits(self.limits.clone());
        session::open(request, Arc::new(config), self.sign_requests).await
    }
}

/// Security-weakening options of a [`ClientBuilder`].
#[derive(Debug)]
pub struct DangerousClientBuilder {
    builder: ClientBuilder,
}

impl DangerousClientBuilder {
    /// Allows plain `ws://` to hosts that are not loopback. Records are still
    /// encrypted and authenticated by toolwire, but the URL and upgrade headers travel
    /// in clear and an on-path attacker can block or observe traffic volume.
    pub fn allow_plaintext(mut self) -> Self {
        self.builder.allow_plaintext = true;
        self
    }

    /// Sends REQUESTs without envelope signatures (for high-rate internal links; the
    /// server must not require them). Records stay AEAD-authenticated, but the audit
    /// log can no longer prove who asked.
    pub fn disable_request_signatures(mut self) -> Self {
        self.builder.sign_requests = false;
        self
    }

    /// Back to the builder.
    pub fn done(self) -> ClientBuilder {
        self.builder
    }
}

/// TRN-00x: `wss://` anywhere, `ws://` only to loopback unless explicitly allowed.
fn check_url(url: &str, allow_plaintext: bool) -> Result<(), ConnectError> {
    let uri: Uri = url
        .parse()
        .map_err(|_| ConnectError::InsecureOrInvalidUrl(format!("`{url}` is not a URL")))?;
    let host = uri
        .host()
        .ok_or_else(|| ConnectError::InsecureOrInvalidUrl(format!("`{url}` has no host")))?;
    match uri.scheme_str() {
        Some("wss") => Err(ConnectError::InsecureOrInvalidUrl(
            "wss:// needs TLS support, which this build does not include yet".into(),
        )),
        Some("ws") if allow_plaintext || is_loopback(host) => Ok(()),
        Some("ws") => Err(ConnectError::InsecureOrInvalidUrl(format!(
            "plain ws:// to `{host}`, which is not loopback: use wss:// (or dangerous().allow_plaintext())"
        ))),
        _ => Err(ConnectError::InsecureOrInvalidUrl(format!("`{url}` is not a ws:// or wss:// URL"))),
    }
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Default time allowed for TCP connect + upgrade.
pub(crate) const UPGRADE_TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_is_refused_off_loopback() {
        assert!(check_url("ws://127.0.0.1:1/x", false).is_ok());
        assert!(check_url("ws://[::1]:1/x", false).is_ok());
        assert!(check_url("ws://localhost:1/x", false).is_ok());
        assert!(matches!(
            check_url("ws://tools.example/x", false),
            Err(ConnectError::InsecureOrInvalidUrl(_))
        ));
        assert!(check_url("ws://tools.example/x", true).is_ok());
        assert!(matches!(
            check_url("http://127.0.0.1/x", false),
            Err(ConnectError::InsecureOrInvalidUrl(_))
        ));
    }
}
