//! Terminating TLS in the server: [`TlsConfig`], [`Server::serve_tls`],
//! [`Server::serve_tls_listener`] and [`Server::accept_tls`].
//!
//! rustls with its ring provider, TLS 1.3 and 1.2 with rustls' safe defaults, ALPN
//! `http/1.1` (the WebSocket upgrade is HTTP/1.1). A connection counts as
//! unauthenticated (per-IP and total caps) from the moment it is accepted, and the TLS
//! handshake and the HTTP upgrade together must finish within
//! [`Limits::upgrade_timeout`](crate::Limits::upgrade_timeout), so a slow-loris client
//! holds a slot for at most that long whether it stalls TLS or HTTP.
//!
//! The URL bound into the toolwire handshake is the one configured in
//! [`Server::builder`]; TLS only keeps the path and upgrade headers confidential
//! (TRN-004). A server behind a TLS-terminating proxy uses plain
//! [`Server::serve`] and is configured with the proxy's public `wss://` URL.

use crate::builder::Server;
use crate::serve::take_slot;
use rustls::ServerConfig;
use rustls_pki_types::pem::{self, PemObject as _};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, ToSocketAddrs};
use tokio_rustls::TlsAcceptor;

/// A server certificate chain and its private key, ready to terminate TLS.
///
/// Cheap to clone; clones share the configuration.
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use toolwire_server::{protocol::Identity, Server, TlsConfig};
/// # let identity = Identity::generate(&mut rand_core::OsRng);
/// # let agent_key = "CpeWKVTQpomJ2y54KVBYPNcgXQV4JKSsWPa2ZQ6Ghe0".parse()?;
/// // The URL clients dial, exactly: it is bound into the handshake.
/// let server = Server::builder(identity, "wss://tools.example/toolwire")
///     .allow_client(agent_key)
///     .build()?;
/// let tls = TlsConfig::from_pem_files("/etc/toolwire/chain.pem", "/etc/toolwire/key.pem")?;
/// server.serve_tls("0.0.0.0:443", tls).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct TlsConfig {
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig").finish_non_exhaustive()
    }
}

/// Why a [`TlsConfig`] could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsConfigError {
    /// A PEM file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The certificate chain is not valid PEM.
    #[error("invalid certificate PEM: {0}")]
    CertificatePem(String),
    /// The certificate chain PEM holds no `CERTIFICATE` block.
    #[error("no CERTIFICATE block in the certificate chain PEM")]
    NoCertificate,
    /// The key PEM holds no private key (`PRIVATE KEY`, `RSA PRIVATE KEY` or
    /// `EC PRIVATE KEY`), or is not valid PEM.
    #[error("no usable private key in the key PEM: {0}")]
    PrivateKey(String),
    /// rustls refused the pair: an unsupported key type, or a key that does not
    /// match the leaf certificate.
    #[error("the certificate chain and key are not usable: {0}")]
    Invalid(String),
}

impl TlsConfig {
    /// A configuration from a PEM certificate chain (leaf first, then
    /// intermediates) and a PEM private key (PKCS#8, PKCS#1 or SEC1) for the leaf.
    ///
    /// # Errors
    /// [`TlsConfigError::CertificatePem`] or [`TlsConfigError::NoCertificate`] for an
    /// unusable chain, [`TlsConfigError::PrivateKey`] when no private key is found,
    /// and [`TlsConfigError::Invalid`] when rustls refuses the pair (unsupported key,
    /// key not matching the leaf certificate).
    pub fn from_pem(cert_chain_pem: &[u8], key_pem: &[u8]) -> Result<Self, TlsConfigError> {
        let chain = CertificateDer::pem_slice_iter(cert_chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| TlsConfigError::CertificatePem(error.to_string()))?;
        if chain.is_empty() {
            return Err(TlsConfigError::NoCertificate);
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|error| match error {
            pem::Error::NoItemsFound => TlsConfigError::PrivateKey("none found".into()),
            other => TlsConfigError::PrivateKey(other.to_string()),
        })?;
        Self::from_der(chain, key)
    }

    /// [`from_pem`](Self::from_pem) with the chain and the key read from files.
    ///
    /// # Errors
    /// [`TlsConfigError::Read`] when a file cannot be read, otherwise as
    /// [`from_pem`](Self::from_pem).
    pub fn from_pem_files(
        cert_chain_path: impl AsRef<Path>,
        key_path: impl AsRef<Path>,
    ) -> Result<Self, TlsConfigError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| TlsConfigError::Read {
                path: path.to_owned(),
                source,
            })
        };
        let chain = read(cert_chain_path.as_ref())?;
        // The key file's bytes are wiped once parsed (rustls keeps its own copy).
        let key = zeroize::Zeroizing::new(read(key_path.as_ref())?);
        Self::from_pem(&chain, &key)
    }

    fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, TlsConfigError> {
        // The ring provider explicitly: no process-wide default provider is needed,
        // and no other provider compiled into the application changes the choice.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| TlsConfigError::Invalid(error.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|error| TlsConfigError::Invalid(error.to_string()))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }
}

impl Server {
    /// Binds `addr` and serves `wss://` until the task is dropped or
    /// [`shutdown`](Self::shutdown) completes: TLS with `tls`, then everything
    /// [`serve`](Self::serve) does.
    ///
    /// # Errors
    /// The bind error.
    pub async fn serve_tls(&self, addr: impl ToSocketAddrs, tls: TlsConfig) -> std::io::Result<()> {
        let listener = TcpListener::bind(addr).await?;
        self.serve_tls_listener(listener, tls).await
    }

    /// Serves `wss://` connections from an already bound listener, until
    /// [`shutdown`](Self::shutdown) completes (then returns `Ok(())`).
    ///
    /// # Errors
    /// Only if accepting fails persistently; single failed connections (including
    /// failed TLS handshakes) are logged.
    pub async fn serve_tls_listener(
        &self,
        listener: TcpListener,
        tls: TlsConfig,
    ) -> std::io::Result<()> {
        loop {
            let Some(accepted) = self.inner.shutdown.unless_stopping(listener.accept()).await
            else {
                drop(listener);
                self.inner.shutdown.finished().await;
                return Ok(());
            };
            match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let server = self.clone();
                    let tls = tls.clone();
                    tokio::spawn(async move { server.accept_tls(stream, peer, &tls).await });
                }
                Err(error) => {
                    tracing::warn!(%error, "toolwire accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Serves one accepted byte stream over TLS: the TLS handshake, then as
    /// [`accept`](Self::accept). The TLS handshake and the HTTP upgrade share
    /// [`Limits::upgrade_timeout`](crate::Limits::upgrade_timeout), and the
    /// connection counts as unauthenticated from the start.
    pub async fn accept_tls<S>(&self, stream: S, peer: SocketAddr, tls: &TlsConfig)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let admission = take_slot(&self.inner, peer.ip());
        let deadline = tokio::time::Instant::now() + self.inner.limits.upgrade_timeout;
        let handshake = tokio::time::timeout_at(deadline, tls.acceptor.accept(stream));
        // A TLS handshake in progress is dropped when shutdown begins, like an upgrade.
        let Some(handshake) = self.inner.shutdown.unless_stopping(handshake).await else {
            return;
        };
        match handshake {
            Ok(Ok(stream)) => {
                self.accept_admitted(stream, peer, admission, deadline)
                    .await;
            }
            Ok(Err(error)) => tracing::debug!(%peer, %error, "toolwire TLS handshake failed"),
            Err(_) => crate::events::report(
                &self.inner,
                toolwire_protocol::events::EventContext::new(toolwire_protocol::Role::Server),
                Some(peer),
                toolwire_protocol::events::SecurityEvent::Timeout {
                    kind: toolwire_protocol::events::DeadlineKind::Upgrade,
                },
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed() -> rcgen::CertifiedKey<rcgen::KeyPair> {
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate")
    }

    #[test]
    fn a_matching_pair_is_accepted() {
        let pair = self_signed();
        let config = TlsConfig::from_pem(
            pair.cert.pem().as_bytes(),
            pair.signing_key.serialize_pem().as_bytes(),
        );
        assert!(config.is_ok(), "{config:?}");
    }

    #[test]
    fn unusable_pem_is_refused() {
        let pair = self_signed();
        let cert = pair.cert.pem();
        let key = pair.signing_key.serialize_pem();
        assert!(matches!(
            TlsConfig::from_pem(b"", key.as_bytes()),
            Err(TlsConfigError::NoCertificate)
        ));
        assert!(matches!(
            TlsConfig::from_pem(key.as_bytes(), key.as_bytes()),
            Err(TlsConfigError::NoCertificate)
        ));
        assert!(matches!(
            TlsConfig::from_pem(cert.as_bytes(), cert.as_bytes()),
            Err(TlsConfigError::PrivateKey(_))
        ));
        assert!(matches!(
            TlsConfig::from_pem(cert.as_bytes(), b""),
            Err(TlsConfigError::PrivateKey(_))
        ));
        let other_key = self_signed().signing_key.serialize_pem();
        assert!(matches!(
            TlsConfig::from_pem(cert.as_bytes(), other_key.as_bytes()),
            Err(TlsConfigError::Invalid(_))
        ));
    }

    #[test]
    fn missing_files_are_named() {
        let missing = std::env::temp_dir().join("toolwire-no-such-file.pem");
        match TlsConfig::from_pem_files(&missing, &missing) {
            Err(TlsConfigError::Read { path, .. }) => assert_eq!(path, missing),
            other => panic!("expected a read error, got {other:?}"),
        }
    }
}
