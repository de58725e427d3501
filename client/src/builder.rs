//! Building a client and connecting.

use crate::error::ConnectError;
use crate::reconnect::ReconnectPolicy;
use crate::session::{self, DialTemplate, Session};
use std::net::IpAddr;
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::{HeaderValue, Uri};
use tokio_tungstenite::Connector;
use toolwire_protocol::message::CapRequest;
use toolwire_protocol::{ConnectionLimits, Identity, IdentityKey};

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
    trusted_operators: Vec<IdentityKey>,
    cap_request: CapRequest,
    limits: ConnectionLimits,
    sign_requests: bool,
    allow_plaintext: bool,
    origin: Option<String>,
    tls_roots: crate::tls::TlsRoots,
    reconnect: ReconnectPolicy,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        Self {
            identity: None,
            trusted_servers: Vec::new(),
            trusted_operators: Vec::new(),
            cap_request: CapRequest {
                tools: vec!["*".into()],
                grants: Vec::new(),
            },
            limits: ConnectionLimits::default(),
            sign_requests: true,
            allow_plaintext: false,
            origin: None,
            tls_roots: crate::tls::TlsRoots::default(),
            reconnect: ReconnectPolicy::default(),
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

    /// Trusts every server whose identity key this operator key certified (spec
    /// section 3.1): the server presents the certificate in its handshake, and this
    /// client checks its signature, subject, validity period (against the system
    /// clock) and endpoint. A server neither pinned nor certified is refused with
    /// AUTH_FAILED.
    pub fn trust_operator(mut self, key: IdentityKey) -> Self {
        self.trusted_operators.push(key);
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

    /// How the session reconnects after a lost connection and renews a connection
    /// before its lifetime ends, resuming its at-most-once lineage. Default:
    /// [`ReconnectPolicy::default()`] (on, 5 attempts, backoff from 100 ms to 5 s,
    /// renewal 2 minutes before the lifetime ends);
    /// [`ReconnectPolicy::disabled()`] turns both off.
    ///
    /// ```no_run
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use toolwire_client::{Client, ReconnectPolicy, protocol::Identity};
    /// # let identity = Identity::generate(&mut rand_core::OsRng);
    /// # let server_key = "CpeWKVTQpomJ2y54KVBYPNcgXQV4JKSsWPa2ZQ6Ghe0".parse()?;
    /// let session = Client::builder()
    ///     .identity(identity)
    ///     .pin_server(server_key)
    ///     .reconnect(
    ///         ReconnectPolicy::default()
    ///             .with_max_attempts(3)
    ///             .with_backoff(Duration::from_millis(200), Duration::from_secs(2)),
    ///     )
    ///     .connect("ws://127.0.0.1:7700/toolwire")
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn reconnect(mut self, policy: ReconnectPolicy) -> Self {
        self.reconnect = policy;
        self
    }

    /// Sends an `Origin` header in the upgrade request (browsers always do; native
    /// agents normally do not).
    pub fn origin(mut self, origin: impl Into<String>) -> Self {
        self.origin = Some(origin.into());
        self
    }

    /// Trusts an extra TLS root certificate (DER-encoded X.509) for `wss://`, for
    /// a server whose certificate a private CA issued (or a self-signed one). The
    /// certificate is checked when connecting: an invalid one fails
    /// [`connect`](Self::connect) with [`ConnectError::Tls`].
    ///
    /// TLS protects the URL path and upgrade headers; the server itself is
    /// authenticated by its pinned identity key ([`pin_server`](Self::pin_server)),
    /// whatever its certificate.
    pub fn add_root_certificate(mut self, der: impl Into<Vec<u8>>) -> Self {
        self.tls_roots.added.push(der.into());
        self
    }

    /// Trusts every `CERTIFICATE` of `pem` as a TLS root for `wss://`, as
    /// [`add_root_certificate`](Self::add_root_certificate) does for one.
    ///
    /// ```no_run
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// use toolwire_client::{Client, protocol::Identity};
    /// # let identity = Identity::generate(&mut rand_core::OsRng);
    /// # let server_key = "CpeWKVTQpomJ2y54KVBYPNcgXQV4JKSsWPa2ZQ6Ghe0".parse()?;
    /// let session = Client::builder()
    ///     .identity(identity)
    ///     .pin_server(server_key)
    ///     .root_certificates_pem(&std::fs::read("private-ca.pem")?)?
    ///     .builtin_root_certificates(false)
    ///     .connect("wss://tools.internal.example/toolwire")
    ///     .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`ConnectError::Tls`] when `pem` is not PEM or holds no `CERTIFICATE` block.
    pub fn root_certificates_pem(mut self, pem: &[u8]) -> Result<Self, ConnectError> {
        self.tls_roots
            .added
            .extend(crate::tls::pem_certificates(pem)?);
        Ok(self)
    }

    /// Whether `wss://` trusts the built-in roots: Mozilla's root store, compiled in
    /// (the `webpki-roots` crate). Default `true`. Turn them off to trust only the
    /// roots added with [`add_root_certificate`](Self::add_root_certificate) or
    /// [`root_certificates_pem`](Self::root_certificates_pem), for a server that
    /// only a private CA vouches for.
    pub fn builtin_root_certificates(mut self, enabled: bool) -> Self {
        self.tls_roots.builtin = enabled;
        self
    }

    /// Options that weaken security.
    pub fn dangerous(self) -> DangerousClientBuilder {
        DangerousClientBuilder { builder: self }
    }

    /// Dials `url`, runs the handshake and waits for the capability grant. A failure
    /// of this first connection is returned as is, never retried; later losses are
    /// handled by the [`reconnect`](Self::reconnect) policy.
    ///
    /// `url` is bound into the handshake: it must be exactly the public URL the
    /// server is configured with, or the handshake fails (HANDSHAKE_FAILED).
    ///
    /// A `wss://` URL runs TLS first, verifying the server's certificate for the
    /// URL's host against the built-in roots and the added ones (TRN-004). Plain
    /// `ws://` is accepted only to loopback hosts unless
    /// [`dangerous().allow_plaintext()`](DangerousClientBuilder::allow_plaintext)
    /// (TRN-001..TRN-003); any other URL is refused before a TCP connection opens.
    ///
    /// # Errors
    /// [`ConnectError`] for an insecure or invalid URL, a missing identity or pinned
    /// key, a failed TLS handshake ([`ConnectError::Tls`]), a refused upgrade, a
    /// failed handshake (with its close code), or a timeout.
    pub async fn connect(self, url: &str) -> Result<Session, ConnectError> {
        let identity = self
            .identity
            .ok_or(ConnectError::Config("an identity is required"))?;
        if self.trusted_servers.is_empty() && self.trusted_operators.is_empty() {
            return Err(ConnectError::Config(
                "pin at least one server identity key or trust an operator key",
            ));
        }
        let tls = check_url(url, self.allow_plaintext)?;
        url.into_client_request()
            .map_err(|error| ConnectError::InsecureOrInvalidUrl(error.to_string()))?;
        let origin = self
            .origin
            .as_deref()
            .map(HeaderValue::from_str)
            .transpose()
            .map_err(|_| ConnectError::Config("invalid Origin value"))?;
        let connector = if tls {
            Connector::Rustls(self.tls_roots.client_config()?)
        } else {
            Connector::Plain
        };
        let template = DialTemplate {
            identity,
            trusted_servers: self.trusted_servers,
            trusted_operators: self.trusted_operators,
            url: url.to_owned(),
            origin,
            connector,
            cap_request: self.cap_request,
            limits: self.limits,
            sign_requests: self.sign_requests,
        };
        session::open(template, self.reconnect).await
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

/// TRN-001..TRN-003: `wss://` anywhere, `ws://` only to loopback unless explicitly
/// allowed. `Ok(true)` when the URL needs TLS.
fn check_url(url: &str, allow_plaintext: bool) -> Result<bool, ConnectError> {
    let uri: Uri = url
        .parse()
        .map_err(|_| ConnectError::InsecureOrInvalidUrl(format!("`{url}` is not a URL")))?;
    let host = uri
        .host()
        .ok_or_else(|| ConnectError::InsecureOrInvalidUrl(format!("`{url}` has no host")))?;
    match uri.scheme_str() {
        Some("wss") => Ok(true),
        Some("ws") if allow_plaintext || is_loopback(host) => Ok(false),
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
        assert!(matches!(check_url("ws://127.0.0.1:1/x", false), Ok(false)));
        assert!(matches!(check_url("ws://127.1.2.3:1/x", false), Ok(false)));
        assert!(matches!(check_url("ws://[::1]:1/x", false), Ok(false)));
        assert!(matches!(check_url("ws://localhost:1/x", false), Ok(false)));
        assert!(matches!(check_url("ws://LocalHost:1/x", false), Ok(false)));
        for url in [
            "ws://tools.example/x",
            "ws://10.0.0.1/x",
            "ws://[::2]/x",
            "ws://localhost.example/x",
            "ws://127.0.0.1.nip.io/x",
        ] {
            assert!(
                matches!(
                    check_url(url, false),
                    Err(ConnectError::InsecureOrInvalidUrl(_))
                ),
                "{url}"
            );
        }
        assert!(matches!(check_url("ws://tools.example/x", true), Ok(false)));
        assert!(matches!(
            check_url("http://127.0.0.1/x", false),
            Err(ConnectError::InsecureOrInvalidUrl(_))
        ));
    }

    #[test]
    fn tls_is_used_for_wss_anywhere() {
        assert!(matches!(
            check_url("wss://tools.example/x", false),
            Ok(true)
        ));
        assert!(matches!(
            check_url("wss://127.0.0.1:8443/x", false),
            Ok(true)
        ));
        for url in ["https://tools.example/x", "wss:///x", "tools.example/x"] {
            assert!(
                matches!(
                    check_url(url, false),
                    Err(ConnectError::InsecureOrInvalidUrl(_))
                ),
                "{url}"
            );
        }
    }

    #[test]
    fn root_certificates_pem_refuses_what_is_not_a_certificate() {
        assert!(matches!(
            Client::builder().root_certificates_pem(b"-----BEGIN NOTHING"),
            Err(ConnectError::Tls(_))
        ));
        assert!(matches!(
            Client::builder().root_certificates_pem(b""),
            Err(ConnectError::Tls(_))
        ));
    }
}
