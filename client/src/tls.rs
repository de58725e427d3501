//! TLS for `wss://` URLs (TRN-001, TRN-004): rustls on its ring provider, verifying
//! the server's certificate for the URL's host against Mozilla's root store (the
//! `webpki-roots` crate, compiled in) plus any roots the builder adds.
//!
//! Why compiled-in roots rather than the platform's store: the same binary behaves the
//! same on every machine (minimal containers often have no CA bundle at all), and a
//! deployment with a private CA names it explicitly
//! ([`ClientBuilder::add_root_certificate`](crate::ClientBuilder::add_root_certificate),
//! [`ClientBuilder::root_certificates_pem`](crate::ClientBuilder::root_certificates_pem)),
//! optionally without the built-in roots
//! ([`ClientBuilder::builtin_root_certificates`](crate::ClientBuilder::builtin_root_certificates)).
//! TLS only keeps the URL path and upgrade headers confidential: the server is
//! authenticated by its pinned toolwire identity key (ID-003) whatever the certificate.

use crate::error::ConnectError;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::CertificateDer;
use std::sync::Arc;
use tokio_tungstenite::tungstenite::Error as WsError;

/// The roots a client trusts for `wss://`.
#[derive(Debug, Clone)]
pub(crate) struct TlsRoots {
    /// Trust Mozilla's roots (`webpki-roots`).
    pub(crate) builtin: bool,
    /// Extra trust anchors, DER-encoded X.509 certificates.
    pub(crate) added: Vec<Vec<u8>>,
}

impl Default for TlsRoots {
    fn default() -> Self {
        Self {
            builtin: true,
            added: Vec::new(),
        }
    }
}

impl TlsRoots {
    /// The rustls configuration for one connection attempt.
    pub(crate) fn client_config(&self) -> Result<Arc<ClientConfig>, ConnectError> {
        let mut store = RootCertStore::empty();
        if self.builtin {
            store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        for der in &self.added {
            store
                .add(CertificateDer::from(der.as_slice()).into_owned())
                .map_err(|error| ConnectError::Tls(format!("invalid root certificate: {error}")))?;
        }
        if store.is_empty() {
            return Err(ConnectError::Config(
                "no TLS root certificates: add one, or keep the built-in roots",
            ));
        }
        // The ring provider explicitly, so that no other rustls provider compiled into
        // the application (or its absence as process default) changes the choice.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| ConnectError::Tls(error.to_string()))?
            .with_root_certificates(store)
            .with_no_client_auth();
        // The WebSocket upgrade is HTTP/1.1 (RFC 6455); never let a proxy pick h2.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// Every `CERTIFICATE` block of `pem`, DER-encoded.
pub(crate) fn pem_certificates(pem: &[u8]) -> Result<Vec<Vec<u8>>, ConnectError> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .map(|certificate| certificate.map(|der| der.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| ConnectError::Tls(format!("invalid PEM: {error}")))?;
    if certificates.is_empty() {
        return Err(ConnectError::Tls(
            "no CERTIFICATE block in the PEM data".into(),
        ));
    }
    Ok(certificates)
}

/// Maps a failed connect + upgrade of a `wss://` (`tls`) or `ws://` URL: TLS
/// failures (an untrusted or misnamed certificate, a peer that does not speak TLS)
/// apart from other WebSocket failures.
pub(crate) fn connect_error(error: WsError, tls: bool) -> ConnectError {
    match &error {
        WsError::Tls(failure) => ConnectError::Tls(failure.to_string()),
        WsError::Io(io) if tls => {
            if let Some(failure) = io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            {
                ConnectError::Tls(failure.to_string())
            } else if io.kind() == std::io::ErrorKind::UnexpectedEof {
                // tungstenite reports an early end of the upgrade as a protocol
                // error; an EOF as an I/O error comes from the TLS handshake.
                ConnectError::Tls(format!(
                    "the server closed the connection during the TLS handshake ({io}); does it speak TLS?"
                ))
            } else {
                ConnectError::WebSocket(error.to_string())
            }
        }
        _ => ConnectError::WebSocket(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed() -> rcgen::CertifiedKey<rcgen::KeyPair> {
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate")
    }

    #[test]
    fn pem_certificates_are_parsed() {
        let first = self_signed();
        let second = self_signed();
        let pem = format!("{}{}", first.cert.pem(), second.cert.pem());
        let parsed = pem_certificates(pem.as_bytes()).expect("two certificates");
        assert_eq!(
            parsed,
            [first.cert.der().to_vec(), second.cert.der().to_vec()]
        );
        assert!(matches!(
            pem_certificates(b"not pem at all"),
            Err(ConnectError::Tls(_))
        ));
        let key_only = first.signing_key.serialize_pem();
        assert!(matches!(
            pem_certificates(key_only.as_bytes()),
            Err(ConnectError::Tls(_))
        ));
    }

    #[test]
    fn roots_build_a_config() {
        assert!(TlsRoots::default().client_config().is_ok());
        let only_private = TlsRoots {
            builtin: false,
            added: vec![self_signed().cert.der().to_vec()],
        };
        assert!(only_private.client_config().is_ok());
        let none = TlsRoots {
            builtin: false,
            added: Vec::new(),
        };
        assert!(matches!(none.client_config(), Err(ConnectError::Config(_))));
        let garbage = TlsRoots {
            builtin: true,
            added: vec![b"not DER".to_vec()],
        };
        assert!(matches!(garbage.client_config(), Err(ConnectError::Tls(_))));
    }
}
