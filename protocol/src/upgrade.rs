//! Checks on the HTTP upgrade request and on WebSocket data frames: the decisions a
//! server makes before any cryptographic work, so that the driver only moves headers
//! and frames in and applies the answer.
//!
//! Implements spec section "Transport binding" (TRN-005..TRN-016, TRN-018, TRN-020,
//! TRN-023..TRN-028). The threat is cross-site WebSocket hijacking: a web page in the
//! victim's browser opens a socket to a tool server and rides whatever the browser
//! attaches automatically. Browsers always send `Origin` on a WebSocket upgrade and
//! scripts cannot forge it, so an allowlist of origins stops such pages; non-browser
//! clients send no `Origin`, and must still prove an Ed25519 identity in the
//! handshake.
//!
//! # Rules (spec sections 2.2 and 2.3)
//!
//! 1. **TRN-005** A server evaluates [`check_upgrade`] on every upgrade request before
//!    it creates any handshake state or does any cryptographic work. A refused
//!    upgrade is answered with [`UpgradeRefusal::http_status`] and no WebSocket is
//!    opened.
//! 2. **TRN-006, TRN-007** When the request carries an `Origin` header, its value must equal
//!    one of [`UpgradePolicy::allowed_origins`], compared as serialized origins
//!    (RFC 6454 §6.2, `scheme "://" host [ ":" port ]`): scheme and host
//!    ASCII-case-insensitively, port as an exact string. There are no wildcards and no
//!    prefix or suffix matching, and default ports are not normalized
//!    (`https://a.example` and `https://a.example:443` are different entries; list
//!    origins the way browsers serialize them, without the default port). Otherwise
//!    the upgrade is refused with [`UpgradeRefusal::OriginNotAllowed`] (403).
//! 3. **TRN-008, TRN-009, TRN-010** A value that is not a serialized origin never matches: an empty
//!    value, several values joined by commas, a trailing `/`, a path, a query,
//!    userinfo, whitespace, or a host with characters outside
//!    `A-Z a-z 0-9 - . _ ~` (IPv6 literals in brackets excepted). The opaque origin
//!    `null` (sent by sandboxed frames, `file:` pages and some redirects) is allowed
//!    only when the literal string `null` is listed; listing it admits every such
//!    page, so it should not be.
//! 4. **TRN-012, TRN-013** A request without an `Origin` header is allowed when
//!    [`UpgradePolicy::allow_missing_origin`] is true (the default: non-browser
//!    clients send none) and refused with [`UpgradeRefusal::OriginMissing`] (403)
//!    otherwise.
//! 5. **TRN-014, TRN-018** The `Sec-WebSocket-Protocol` header (all its values, as a
//!    comma-separated list) must contain the token `toolwire.v1`
//!    ([`SUBPROTOCOL`]), compared exactly and case-sensitively after trimming spaces
//!    and tabs around each element. Otherwise the upgrade is refused with
//!    [`UpgradeRefusal::SubprotocolMissing`] (400). On success the server echoes
//!    exactly `toolwire.v1`, whatever else the client offered.
//! 6. **TRN-015** The origin is checked before the subprotocol, so a request that
//!    fails both is refused as an origin failure (403).
//! 7. **TRN-020** Cookies, `Authorization` and every other header are never consulted
//!    and never grant authority: [`check_upgrade`] does not receive them. Authority
//!    comes only from the identity proven in the handshake and the grants presented
//!    there.
//! 8. **TRN-023..TRN-028** After the upgrade, every WebSocket data message must be binary and
//!    at most [`max_frame_len`] bytes (record header + largest record body).
//!    [`check_frame`] checks the size first, then the kind: an oversize message
//!    closes the connection with MESSAGE_TOO_BIG (1009), a text message with
//!    UNSUPPORTED_DATA (1003) ([`FrameViolation::close_code`]). WebSocket control
//!    frames (ping, pong, close) are the WebSocket library's business and carry no
//!    authority.
//!
//! # Example
//!
//! ```
//! use toolwire_protocol::upgrade::{check_upgrade, UpgradePolicy, UpgradeRefusal, UpgradeRequest};
//!
//! let policy = UpgradePolicy::default().allow_origin("https://agents.example");
//! let browser = UpgradeRequest {
//!     origin: Some("https://agents.example"),
//!     subprotocols: Some("toolwire.v1"),
//! };
//! assert_eq!(check_upgrade(&policy, &browser), Ok("toolwire.v1"));
//!
//! let hostile_page = UpgradeRequest {
//!     origin: Some("https://evil.example"),
//!     subprotocols: Some("toolwire.v1"),
//! };
//! let refusal = check_upgrade(&policy, &hostile_page).unwrap_err();
//! assert_eq!(refusal, UpgradeRefusal::OriginNotAllowed);
//! assert_eq!(refusal.http_status(), 403);
//! ```

use crate::codes::CloseCode;
use crate::config::{ConnectionLimits, SUBPROTOCOL};
use crate::record::HEADER_LEN;

/// Which upgrade requests a server accepts. Each field's doc gives its default and
/// the attack it bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct UpgradePolicy {
    /// Serialized origins (`scheme://host[:port]`) whose pages may open a socket.
    /// Default empty: no browser page may connect. Bounds cross-site WebSocket
    /// hijacking: a page from any other origin is refused with 403 before the
    /// handshake (TRN-006). Entries that are not serialized origins never match (see
    /// [`validate`](Self::validate)).
    pub allowed_origins: Vec<String>,
    /// Whether a request without an `Origin` header is accepted. Default true:
    /// non-browser clients (agents, CLIs) send none, and browsers always send one, so
    /// accepting its absence does not open the hijacking hole; set it to false when
    /// only browser clients are expected, to refuse everything else at the door
    /// (TRN-012, TRN-013).
    pub allow_missing_origin: bool,
}

impl Default for UpgradePolicy {
    fn default() -> Self {
        Self {
            allowed_origins: Vec::new(),
            allow_missing_origin: true,
        }
    }
}

impl UpgradePolicy {
    /// The default policy: no browser origin allowed, non-browser clients allowed.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an allowed origin, written as a browser serializes it
    /// (`https://agents.example`, `http://localhost:5173`).
    #[must_use]
    pub fn allow_origin(mut self, origin: impl Into<String>) -> Self {
        self.allowed_origins.push(origin.into());
        self
    }

    /// Refuses requests without an `Origin` header (sets
    /// [`allow_missing_origin`](Self::allow_missing_origin) to false).
    #[must_use]
    pub fn require_origin(mut self) -> Self {
        self.allow_missing_origin = false;
        self
    }

    /// Checks that every allowed origin is a serialized origin or the literal `null`,
    /// so that a typo (`https://agents.example/`) is caught at startup instead of
    /// silently never matching.
    ///
    /// # Errors
    /// [`InvalidOrigin`] naming the first entry that can never match.
    pub fn validate(&self) -> Result<(), InvalidOrigin> {
        match self
            .allowed_origins
            .iter()
            .enumerate()
            .find(|(_, entry)| *entry != NULL_ORIGIN && SerializedOrigin::parse(entry).is_none())
        {
            Some((index, entry)) => Err(InvalidOrigin {
                index,
                origin: entry.clone(),
            }),
            None => Ok(()),
        }
    }

    fn allows(&self, origin: &str) -> bool {
        if origin == NULL_ORIGIN {
            return self
                .allowed_origins
                .iter()
                .any(|entry| entry == NULL_ORIGIN);
        }
        let Some(origin) = SerializedOrigin::parse(origin) else {
            return false;
        };
        self.allowed_origins
            .iter()
            .filter_map(|entry| SerializedOrigin::parse(entry))
            .any(|entry| entry.matches(&origin))
    }
}

/// An allowed origin that can never match anything.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("allowed origin #{index} ({origin:?}) is not a serialized origin (scheme://host[:port]) or \"null\"")]
#[non_exhaustive]
pub struct InvalidOrigin {
    /// Position in [`UpgradePolicy::allowed_origins`].
    pub index: usize,
    /// The entry as configured.
    pub origin: String,
}

/// The headers of an HTTP upgrade request that the checks look at. Nothing else is
/// consulted (TRN-020): in particular cookies and `Authorization` are not inputs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpgradeRequest<'a> {
    /// The `Origin` header's value, `None` when the header is absent. A driver that
    /// sees the header more than once passes the values joined by `", "`, which is
    /// not a serialized origin and is refused.
    pub origin: Option<&'a str>,
    /// The `Sec-WebSocket-Protocol` header's values joined by `", "`, `None` when the
    /// header is absent.
    pub subprotocols: Option<&'a str>,
}

/// Why an upgrade request was refused. Answer with [`http_status`](Self::http_status)
/// and no detail beyond the status line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum UpgradeRefusal {
    /// The `Origin` is not on the allowlist (TRN-006, TRN-008): a page of another
    /// site, or a malformed value. 403. Worth an `origin_rejected` alert: a browser
    /// is being used against the server.
    #[error("origin not allowed")]
    OriginNotAllowed,
    /// No `Origin` header, and the policy requires one (TRN-013). 403.
    #[error("origin required")]
    OriginMissing,
    /// The client did not offer the `toolwire.v1` subprotocol (TRN-014). 400: the
    /// client is not a toolwire client, or speaks another version.
    #[error("subprotocol toolwire.v1 not offered")]
    SubprotocolMissing,
}

impl UpgradeRefusal {
    /// The HTTP status to answer with: 403 for origin failures, 400 for a missing
    /// subprotocol.
    pub fn http_status(self) -> u16 {
        match self {
            Self::OriginNotAllowed | Self::OriginMissing => 403,
            Self::SubprotocolMissing => 400,
        }
    }
}

/// Decides whether to accept an HTTP upgrade request (TRN-005..TRN-020) and returns
/// the subprotocol to echo in `Sec-WebSocket-Protocol`, always [`SUBPROTOCOL`].
///
/// Pure and cheap: call it before any handshake work. It does not look at cookies,
/// `Authorization` or any other header, and never grants authority; it only keeps
/// browsers on foreign pages and non-toolwire clients out.
///
/// # Errors
/// The first failed check, origin before subprotocol (TRN-015):
/// [`UpgradeRefusal::OriginNotAllowed`], [`UpgradeRefusal::OriginMissing`] or
/// [`UpgradeRefusal::SubprotocolMissing`].
pub fn check_upgrade(
    policy: &UpgradePolicy,
    request: &UpgradeRequest<'_>,
) -> Result<&'static str, UpgradeRefusal> {
    match request.origin {
        Some(origin) if !policy.allows(origin) => return Err(UpgradeRefusal::OriginNotAllowed),
        None if !policy.allow_missing_origin => return Err(UpgradeRefusal::OriginMissing),
        _ => {}
    }
    let offered = request.subprotocols.is_some_and(|list| {
        list.split(',')
            .any(|token| token.trim_matches([' ', '\t']) == SUBPROTOCOL)
    });
    if offered {
        Ok(SUBPROTOCOL)
    } else {
        Err(UpgradeRefusal::SubprotocolMissing)
    }
}

/// The kind of a WebSocket data message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FrameKind {
    /// A binary message: the only kind toolwire uses (one message = one record).
    Binary,
    /// A text message: never valid in toolwire.
    Text,
}

/// A WebSocket data message that ends the connection (TRN-024, TRN-025). The driver asks
/// [`close_code`](Self::close_code) which code to close with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum FrameViolation {
    /// A text message arrived.
    #[error("text frame")]
    TextFrame,
    /// A message larger than [`max_frame_len`] arrived. Worth an `oversize_frame`
    /// alert.
    #[error("oversize frame")]
    Oversize,
}

impl FrameViolation {
    /// The close code: UNSUPPORTED_DATA (1003) for a text message, MESSAGE_TOO_BIG
    /// (1009) for an oversize one.
    pub fn close_code(self) -> CloseCode {
        match self {
            Self::TextFrame => CloseCode::UNSUPPORTED_DATA,
            Self::Oversize => CloseCode::MESSAGE_TOO_BIG,
        }
    }
}

/// The largest WebSocket message a connection with `limits` accepts: one record,
/// [`HEADER_LEN`] + [`ConnectionLimits::max_record_body`] bytes. Configure the
/// WebSocket library's maximum message and frame size to this value, so that an
/// oversize message is refused before it is buffered.
pub fn max_frame_len(limits: &ConnectionLimits) -> usize {
    limits.max_record_body.saturating_add(HEADER_LEN)
}

/// Checks one WebSocket data message (after reassembly of fragments) of `len` bytes
/// (TRN-025, TRN-026). The size is checked first, since a WebSocket library enforces it before
/// it hands over the message.
///
/// # Errors
/// [`FrameViolation::Oversize`] when `len > max_frame_len(limits)`, else
/// [`FrameViolation::TextFrame`] for a text message. Either ends the connection with
/// [`FrameViolation::close_code`].
pub fn check_frame(
    kind: FrameKind,
    len: usize,
    limits: &ConnectionLimits,
) -> Result<(), FrameViolation> {
    if len > max_frame_len(limits) {
        return Err(FrameViolation::Oversize);
    }
    match kind {
        FrameKind::Binary => Ok(()),
        FrameKind::Text => Err(FrameViolation::TextFrame),
    }
}

/// The serialization of an opaque origin.
const NULL_ORIGIN: &str = "null";

/// A tuple origin as serialized in an `Origin` header: `scheme://host[:port]`.
#[derive(Debug, Clone, Copy)]
struct SerializedOrigin<'a> {
    scheme: &'a str,
    host: &'a str,
    port: Option<&'a str>,
}

impl<'a> SerializedOrigin<'a> {
    fn parse(text: &'a str) -> Option<Self> {
        let (scheme, authority) = text.split_once("://")?;
        let mut scheme_chars = scheme.bytes();
        let scheme_ok = scheme_chars.next().is_some_and(|b| b.is_ascii_alphabetic())
            && scheme_chars.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
        if !scheme_ok {
            return None;
        }
        let (host, port) = if authority.starts_with('[') {
            let end = authority.find(']')?;
            let (host, rest) = authority.split_at(end + 1);
            let literal = host.strip_prefix('[')?.strip_suffix(']')?;
            let literal_ok = !literal.is_empty()
                && literal
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'));
            if !literal_ok {
                return None;
            }
            match rest {
                "" => (host, None),
                _ => (host, Some(rest.strip_prefix(':')?)),
            }
        } else {
            let (host, port) = match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            };
            let host_ok = !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
            if !host_ok {
                return None;
            }
            (host, port)
        };
        if let Some(port) = port {
            if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
        }
        Some(Self { scheme, host, port })
    }

    fn matches(&self, other: &Self) -> bool {
        self.scheme.eq_ignore_ascii_case(other.scheme)
            && self.host.eq_ignore_ascii_case(other.host)
            && self.port == other.port
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialized_origins_parse_into_their_parts() {
        let origin = SerializedOrigin::parse("https://a.example:8443").expect("valid");
        assert_eq!(
            (origin.scheme, origin.host, origin.port),
            ("https", "a.example", Some("8443"))
        );
        let origin = SerializedOrigin::parse("http://[::1]:80").expect("valid");
        assert_eq!((origin.host, origin.port), ("[::1]", Some("80")));
        let origin = SerializedOrigin::parse("http://[fe80::1]").expect("valid");
        assert_eq!((origin.host, origin.port), ("[fe80::1]", None));
    }

    #[test]
    fn non_origins_do_not_parse() {
        for text in [
            "",
            "a.example",
            "://a.example",
            "1http://a.example",
            "https://",
            "https://a.example/",
            "https://a.example/path",
            "https://a.example?q",
            "https://user@a.example",
            "https://a.example:",
            "https://a.example:123456",
            "https://a.example:8o",
            "https://a.example:1:2",
            "https://a .example",
            "https://a.example, https://b.example",
            "https://[]",
            "https://[::1",
            "https://[::1]x",
            "https://[::1]:",
            "https://[zz::1]",
            "https://a%2eexample",
        ] {
            assert!(SerializedOrigin::parse(text).is_none(), "{text:?}");
        }
    }
}
