//! Toolwire capability grants: holder-bound, delegable PASETO v4.public tokens.
//!
//! Implements spec section "Capability grants" (GRT-001..GRT-033).
//!
//! A grant says "the holder of identity key `sub` may call these `tools`, with
//! these `scope`s, on the tool server `aud`, until `exp`". It is signed by an
//! issuer the tool server trusts, or — through a delegation chain — by a
//! holder of such a grant who passes on a subset of its rights.
//!
//! # Identity keys
//!
//! Identity keys are Ed25519 public keys. Their text form, used in every key
//! claim, is the unpadded base64url encoding (RFC 4648 §5) of the 32 key
//! bytes: exactly 43 characters, with zero trailing bits (see
//! [`key_to_text`], [`key_from_text`]).
//!
//! # Token format
//!
//! A grant is a PASETO v4.public token (see [`crate::paseto`]) whose
//!
//! * implicit assertion is the ASCII bytes `toolwire/1 grant`
//!   ([`GRANT_IMPLICIT_ASSERTION`]). This is domain separation: a PASETO that
//!   a trusted key signed for some other system verifies with a different
//!   implicit assertion and therefore can never be replayed as a grant;
//! * footer is empty (a token with a footer is not a grant);
//! * message is a JSON object of claims. Unknown claims are ignored; a claim
//!   given twice, or a message that is not a JSON object, is malformed.
//!
//! | claim    | type             | required | meaning |
//! |----------|------------------|----------|---------|
//! | `iss`    | string (key)     | yes | text key of the signer of this token |
//! | `sub`    | string (key)     | yes | text key of the holder: the client identity allowed to use it |
//! | `aud`    | string (key)     | yes | text key of the tool server the grant is for |
//! | `jti`    | string           | yes | grant id, 1 to 128 characters |
//! | `iat`    | RFC 3339 string  | no  | issued-at; informational, format-checked only |
//! | `nbf`    | RFC 3339 string  | no  | not valid before this instant |
//! | `exp`    | RFC 3339 string  | yes | not valid at or after this instant |
//! | `tools`  | array of strings | yes | non-empty; tool names, `"*"` meaning every tool |
//! | `scope`  | array of strings | no  | scopes granted; absent means none |
//! | `sid`    | string           | no  | lowercase hex (64 digits) of a 32-byte session id; the grant is valid only in that session |
//! | `parent` | string           | no  | the parent grant token; its presence makes this token a delegation link |
//!
//! Timestamps are RFC 3339 (PASETO's registered-claim format) and compared
//! with their full (sub-second) precision. A token whose `parent` is absent is
//! a *root*; a token with a `parent` is a *link*. Because the parent token is
//! embedded in the link's signed claims, each link commits to the exact chain
//! above it. The [`MAX_TOKEN_LEN`] cap applies to
//! every token, including a leaf that embeds its whole chain, which bounds the
//! total size of what a verifier parses.
//!
//! # Holder binding
//!
//! A grant is useless to anyone but its holder: the verifier is given the
//! identity the peer *authenticated as* (in toolwire, the static key proven in
//! the Noise handshake) and rejects a grant whose `sub` names anyone else. A
//! stolen grant therefore cannot be presented over another identity's session.
//!
//! # Verification rules
//!
//! [`verify_grant`] applies these rules in this order; the first violated rule
//! determines the error.
//!
//! 1. **Parse (GRT-006 to GRT-019).** The presented token is the *leaf*. Decode it
//!    and follow `parent` links towards the root. Every token must be a v4.public
//!    token of at most 8192 bytes with an empty footer and claims matching the
//!    table above: well-formed key texts (`iss` must also be a valid Ed25519
//!    point), timestamps, `sid`, a `jti` of 1..=128 characters and a non-empty
//!    `tools` (otherwise `Malformed`). A chain may have at most
//!    [`MAX_DELEGATION_DEPTH`] (3) links below the root, i.e. at most 4 tokens;
//!    a 4th link is `ChainTooDeep`, detected before the token above it is even
//!    decoded. No signature is checked in this step; nothing parsed here is
//!    trusted until rules 2 and 3 pass.
//! 2. **Root (GRT-020, GRT-022).** The root's `iss` must be one of the verifier's
//!    trusted issuers (`UntrustedIssuer`), and the root's signature must verify
//!    under that key with the grant implicit assertion (`BadSignature`).
//! 3. **Links (GRT-021, GRT-022, GRT-023)**, root to leaf. Each link's `iss` must
//!    equal its parent's `sub` (`BrokenChain`) — only the holder of a grant may
//!    delegate it — and the link's signature must verify under that key
//!    (`BadSignature`).
//! 4. **Every token (GRT-024 to GRT-030)**, root to leaf:
//!    1. `aud` equals the verifier's own identity (`WrongAudience`);
//!    2. `exp` > now − skew (`Expired`);
//!    3. `nbf`, if present, ≤ now + skew (`NotYetValid`);
//!    4. for a link, relative to its parent (`WidenedDelegation`): `exp` ≤ the
//!       parent's `exp`; every tool is covered by the parent's tools (a parent
//!       `"*"` covers any tool; a child `"*"` is covered only by a parent
//!       `"*"`); every scope is among the parent's scopes; and if the parent
//!       has a `sid`, the link has the same `sid` (a link may add a `sid` its
//!       parent lacks, since that only narrows it).
//! 5. **Presentation (GRT-031, GRT-032).** The leaf's `sub` equals the
//!    authenticated peer identity (`WrongHolder`). If any token in the chain has a
//!    `sid`, it must equal the current session id; a session-bound grant presented
//!    where the verifier has no session id is rejected (`WrongSession`).
//! 6. **Result (GRT-033).** The effective rights are the leaf's `tools`, `scope`,
//!    `exp` and `sid` — by rule 4 already the narrowest in the chain — together
//!    with the root issuer and the chain's `jti`s, root first.
//!
//! "skew" is [`VerifyContext::max_clock_skew_secs`]; a negative value counts
//! as zero.

use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

use base64::Engine as _;

use crate::paseto::{self, PasetoError, B64, MAX_TOKEN_LEN};

/// Implicit assertion of every grant token (domain separation from other
/// PASETO uses of the same keys).
pub const GRANT_IMPLICIT_ASSERTION: &[u8] = b"toolwire/1 grant";

/// Maximum number of delegation links below the root (a chain holds at most
/// `MAX_DELEGATION_DEPTH + 1` tokens).
pub const MAX_DELEGATION_DEPTH: usize = 3;

/// Maximum length of a grant id (`jti`), in characters.
pub const MAX_GRANT_ID_CHARS: usize = 128;

/// The tool name that stands for every tool.
pub const ANY_TOOL: &str = "*";

/// Length of an identity key's text form (base64url of 32 bytes, unpadded).
const KEY_TEXT_LEN: usize = 43;

/// Nanoseconds per second, for sub-second timestamp comparisons.
const NANOS_PER_SEC: i128 = 1_000_000_000;

/// Why a grant was rejected (or could not be issued).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GrantError {
    /// The token or one of its claims is not well-formed; the payload names
    /// the offending part (`"token"`, `"footer"`, `"claims"`, or a claim name).
    #[error("malformed grant: {0}")]
    Malformed(&'static str),
    /// A signature in the chain does not verify.
    #[error("grant signature verification failed")]
    BadSignature,
    /// The root of the chain was not issued by a trusted issuer.
    #[error("grant root issuer is not trusted")]
    UntrustedIssuer,
    /// A token in the chain has expired.
    #[error("grant expired")]
    Expired,
    /// A token in the chain is not yet valid (`nbf` in the future).
    #[error("grant not yet valid")]
    NotYetValid,
    /// A token in the chain is for another tool server.
    #[error("grant is for another audience")]
    WrongAudience,
    /// The grant is held by another identity than the presenting peer.
    #[error("grant is held by another identity")]
    WrongHolder,
    /// The grant is bound to another session (or to a session where there is none).
    #[error("grant is bound to another session")]
    WrongSession,
    /// A delegation link claims more than its parent grants.
    #[error("delegated grant widens its parent's rights")]
    WidenedDelegation,
    /// The chain has more than [`MAX_DELEGATION_DEPTH`] links.
    #[error("delegation chain too deep")]
    ChainTooDeep,
    /// A link was not signed by the holder of its parent.
    #[error("delegation link not issued by the parent's holder")]
    BrokenChain,
}

/// The claims of a grant token, exactly as serialized.
///
/// This is the wire representation; values are validated by [`verify_grant`],
/// not by deserialization alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantClaims {
    /// Text key of the signer of this token.
    pub iss: String,
    /// Text key of the holder (the identity allowed to use the grant).
    pub sub: String,
    /// Text key of the tool server the grant is for.
    pub aud: String,
    /// Grant id, 1..=128 characters.
    pub jti: String,
    /// Issued-at, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<String>,
    /// Not-before, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<String>,
    /// Expiry, RFC 3339.
    pub exp: String,
    /// Granted tools; `"*"` means every tool. Must be non-empty.
    pub tools: Vec<String>,
    /// Granted scopes; absent means none. Omitted from the wire when empty to
    /// keep delegation chains (which nest whole tokens) small.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scope: Vec<String>,
    /// Lowercase hex of the 32-byte session id the grant is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// The parent grant token, when this token is a delegation link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

/// The outcome of a successful verification: the effective (narrowest) rights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// `jti` of the leaf (the presented token).
    pub id: String,
    /// The trusted issuer that signed the root of the chain.
    pub root_issuer: [u8; 32],
    /// The holder (leaf `sub`), equal to the verifier's peer identity.
    pub holder: [u8; 32],
    /// The tool server the grant is for, equal to the verifier's identity.
    pub audience: [u8; 32],
    /// Tools the holder may call (`"*"` = every tool).
    pub tools: Vec<String>,
    /// Scopes the holder has.
    pub scope: Vec<String>,
    /// Leaf expiry as a Unix timestamp in seconds, rounded down.
    pub expires_at_unix: i64,
    /// Session the grant is bound to, if any.
    pub session: Option<[u8; 32]>,
    /// `jti` of every token in the chain, root first (the last is `id`).
    pub chain_ids: Vec<String>,
}

impl Grant {
    /// Whether the grant lets its holder call the tool `name`.
    pub fn allows_tool(&self, name: &str) -> bool {
        self.tools.iter().any(|t| t == ANY_TOOL || t == name)
    }

    /// Whether the grant includes the scope `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scope.iter().any(|s| s == scope)
    }
}

/// What the verifier knows about the presentation of a grant.
#[derive(Debug, Clone, Copy)]
pub struct VerifyContext<'a> {
    /// Issuers whose root grants are accepted.
    pub trusted_issuers: &'a [[u8; 32]],
    /// The verifier's own identity key; every token's `aud` must equal it.
    pub audience: [u8; 32],
    /// The identity the peer authenticated as (e.g. its Noise static key);
    /// the leaf's `sub` must equal it.
    pub holder: [u8; 32],
    /// Current time, Unix seconds.
    pub now_unix: i64,
    /// Current session id, if the grant is presented inside a session.
    pub session_id: Option<[u8; 32]>,
    /// Tolerance, in seconds, for clock differences between issuer and
    /// verifier, applied to `exp` (accepted until `exp + skew`) and `nbf`
    /// (accepted from `nbf - skew`). A few tens of seconds is typical in
    /// deployment; tests use 0. Negative values are treated as 0.
    pub max_clock_skew_secs: i64,
}

/// Text form of an identity key: unpadded base64url of the 32 bytes (43 chars).
pub fn key_to_text(key: &[u8; 32]) -> String {
    B64.encode(key)
}

/// Parses the text form of an identity key.
///
/// Only the canonical spelling is accepted (43 characters, no padding, zero
/// trailing bits). The bytes are not checked to be a valid Ed25519 point.
///
/// # Errors
///
/// [`GrantError::Malformed`]`("key")` for anything else.
pub fn key_from_text(text: &str) -> Result<[u8; 32], GrantError> {
    parse_key(text, "key")
}

/// Ergonomic issuance of grant tokens.
///
/// ```
/// # use toolwire_protocol::grant::GrantBuilder;
/// # use ed25519_dalek::SigningKey;
/// # use time::macros::datetime;
/// let issuer = SigningKey::from_bytes(&[1; 32]);
/// let holder = SigningKey::from_bytes(&[2; 32]).verifying_key().to_bytes();
/// let server = SigningKey::from_bytes(&[3; 32]).verifying_key().to_bytes();
/// let token = GrantBuilder::new(holder, server, "g-1", datetime!(2030-01-01 0:00 UTC))
///     .tools(["search", "fetch"])
///     .scope(["read"])
///     .sign(&issuer)?;
/// # Ok::<(), toolwire_protocol::grant::GrantError>(())
/// ```
///
/// `iss` is always the signing key's public key. Building a delegation link
/// ([`GrantBuilder::delegate_from`]) does not check the parent: a link that
/// widens its parent or is signed by someone other than the parent's holder
/// is still produced, and [`verify_grant`] rejects it.
#[derive(Debug, Clone)]
pub struct GrantBuilder {
    holder: [u8; 32],
    audience: [u8; 32],
    id: String,
    expires_at: OffsetDateTime,
    not_before: Option<OffsetDateTime>,
    issued_at: Option<OffsetDateTime>,
    tools: Vec<String>,
    scope: Vec<String>,
    session: Option<[u8; 32]>,
    parent: Option<String>,
}

impl GrantBuilder {
    /// Starts a grant for `holder` on tool server `audience`, with id `id`,
    /// expiring at `expires_at`. At least one tool must be added before
    /// signing.
    #[must_use]
    pub fn new(holder: [u8; 32], audience: [u8; 32], id: &str, expires_at: OffsetDateTime) -> Self {
        Self {
            holder,
            audience,
            id: id.to_owned(),
            expires_at,
            not_before: None,
            issued_at: None,
            tools: Vec::new(),
            scope: Vec::new(),
            session: None,
            parent: None,
        }
    }

    /// Sets the granted tools (replacing any set before); `"*"` means every tool.
    #[must_use]
    pub fn tools<I, S>(mut self, tools: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.tools = tools.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the granted scopes (replacing any set before).
    #[must_use]
    pub fn scope<I, S>(mut self, scope: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.scope = scope.into_iter().map(Into::into).collect();
        self
    }

    /// Sets `nbf`: the grant is not valid before this instant.
    #[must_use]
    pub fn not_before(mut self, at: OffsetDateTime) -> Self {
        self.not_before = Some(at);
        self
    }

    /// Sets `iat`, the issue time (informational).
    #[must_use]
    pub fn issued_at(mut self, at: OffsetDateTime) -> Self {
        self.issued_at = Some(at);
        self
    }

    /// Binds the grant to one session id.
    #[must_use]
    pub fn session(mut self, sid: [u8; 32]) -> Self {
        self.session = Some(sid);
        self
    }

    /// Makes the grant a delegation link below `parent_token`. The signer
    /// must be the parent's holder, and the rights must not exceed the
    /// parent's, or verification will fail.
    #[must_use]
    pub fn delegate_from(mut self, parent_token: &str) -> Self {
        self.parent = Some(parent_token.to_owned());
        self
    }

    /// Signs the grant with `key` (which becomes `iss`).
    ///
    /// Fails with [`GrantError::Malformed`] when the grant could never verify
    /// for structural reasons: no tools, an id outside 1..=128 characters, a
    /// timestamp that RFC 3339 cannot express (year outside 0000..=9999), or
    /// a token larger than [`MAX_TOKEN_LEN`].
    ///
    /// # Errors
    ///
    /// [`GrantError::Malformed`] naming the offending part, as above.
    pub fn sign(&self, key: &SigningKey) -> Result<String, GrantError> {
        if self.tools.is_empty() {
            return Err(GrantError::Malformed("tools"));
        }
        if !valid_grant_id(&self.id) {
            return Err(GrantError::Malformed("jti"));
        }
        let claims = GrantClaims {
            iss: key_to_text(key.verifying_key().as_bytes()),
            sub: key_to_text(&self.holder),
            aud: key_to_text(&self.audience),
            jti: self.id.clone(),
            iat: self.issued_at.map(|t| format_time(t, "iat")).transpose()?,
            nbf: self.not_before.map(|t| format_time(t, "nbf")).transpose()?,
            exp: format_time(self.expires_at, "exp")?,
            tools: self.tools.clone(),
            scope: self.scope.clone(),
            sid: self.session.map(hex::encode),
            parent: self.parent.clone(),
        };
        let message = serde_json::to_vec(&claims).map_err(|_| GrantError::Malformed("claims"))?;
        let token = paseto::sign_v4_public(key, &message, b"", GRANT_IMPLICIT_ASSERTION);
        if token.len() > MAX_TOKEN_LEN {
            return Err(GrantError::Malformed("token"));
        }
        Ok(token)
    }
}

/// Verifies a grant (and its delegation chain) presented in `ctx`.
///
/// Applies the numbered rules of the [module documentation](self) in order
/// and returns the effective rights. Never panics on any input.
///
/// # Errors
///
/// The [`GrantError`] of the first rule that the chain violates.
pub fn verify_grant(token: &str, ctx: &VerifyContext<'_>) -> Result<Grant, GrantError> {
    // Rule 1: parse leaf to root, bounded.
    let mut chain: Vec<Parsed> = Vec::with_capacity(MAX_DELEGATION_DEPTH + 1);
    let mut next = Some(token.to_owned());
    while let Some(text) = next.take() {
        // Every token parsed so far has a parent (or the loop would have
        // ended), so the chain already has `chain.len()` links. Past the
        // limit, refuse before decoding (let alone verifying) the next token.
        if chain.len() > MAX_DELEGATION_DEPTH {
            return Err(GrantError::ChainTooDeep);
        }
        let (parsed, parent) = parse_token(text)?;
        chain.push(parsed);
        next = parent;
    }
    chain.reverse(); // root first from here on

    // Rules 2 and 3: signatures, root first, before any claim is acted upon.
    let mut parent: Option<&Parsed> = None;
    for t in &chain {
        match parent {
            None => {
                if !ctx.trusted_issuers.contains(&t.iss) {
                    return Err(GrantError::UntrustedIssuer);
                }
            }
            Some(p) => {
                if t.iss != p.sub {
                    return Err(GrantError::BrokenChain);
                }
            }
        }
        t.verify_signature()?;
        parent = Some(t);
    }

    // Rule 4: per-token validity and narrowing, root first.
    // In i128 nanoseconds, |i64| * 10^9 ± the same stays below 2^95: no overflow
    // is possible for any context values.
    let skew = i128::from(ctx.max_clock_skew_secs.max(0)) * NANOS_PER_SEC;
    let now = i128::from(ctx.now_unix) * NANOS_PER_SEC;
    let exp_must_exceed = now - skew;
    let nbf_must_not_exceed = now + skew;
    let mut parent: Option<&Parsed> = None;
    for t in &chain {
        if t.aud != ctx.audience {
            return Err(GrantError::WrongAudience);
        }
        if t.exp_nanos <= exp_must_exceed {
            return Err(GrantError::Expired);
        }
        if let Some(nbf) = t.nbf_nanos {
            if nbf > nbf_must_not_exceed {
                return Err(GrantError::NotYetValid);
            }
        }
        if let Some(p) = parent {
            if !t.is_narrowing_of(p) {
                return Err(GrantError::WidenedDelegation);
            }
        }
        parent = Some(t);
    }

    // Rule 5: presentation (holder and session).
    // Never empty (the loop above parsed at least the leaf); no panic path anyway.
    let leaf = chain.pop().ok_or(GrantError::Malformed("token"))?;
    if leaf.sub != ctx.holder {
        return Err(GrantError::WrongHolder);
    }
    for t in chain.iter().chain(std::iter::once(&leaf)) {
        if let Some(sid) = t.sid {
            if ctx.session_id != Some(sid) {
                return Err(GrantError::WrongSession);
            }
        }
    }

    // Rule 6: the leaf carries the effective rights.
    let root_issuer = chain.first().map_or(leaf.iss, |root| root.iss);
    let mut chain_ids: Vec<String> = chain.into_iter().map(|t| t.jti).collect();
    chain_ids.push(leaf.jti.clone());
    Ok(Grant {
        id: leaf.jti,
        root_issuer,
        holder: leaf.sub,
        audience: leaf.aud,
        tools: leaf.tools,
        scope: leaf.scope,
        expires_at_unix: leaf.exp_unix,
        session: leaf.sid,
        chain_ids,
    })
}

/// One token of a chain with its claims decoded and validated for form
/// (rule 1). Nothing in it is trusted until its signature has been checked.
struct Parsed {
    token: String,
    iss: [u8; 32],
    iss_key: VerifyingKey,
    sub: [u8; 32],
    aud: [u8; 32],
    jti: String,
    exp_nanos: i128,
    exp_unix: i64,
    nbf_nanos: Option<i128>,
    tools: Vec<String>,
    scope: Vec<String>,
    sid: Option<[u8; 32]>,
}

impl Parsed {
    /// Rules 2/3 signature check: under this token's own `iss`, with the
    /// grant implicit assertion and an empty footer.
    fn verify_signature(&self) -> Result<(), GrantError> {
        paseto::verify_v4_public(
            &self.iss_key,
            &self.token,
            Some(b""),
            GRANT_IMPLICIT_ASSERTION,
        )
        .map(|_| ())
        .map_err(|e| match e {
            PasetoError::BadSignature => GrantError::BadSignature,
            PasetoError::FooterMismatch => GrantError::Malformed("footer"),
            _ => GrantError::Malformed("token"),
        })
    }

    /// Rule 4.4: whether this link grants no more than `parent`.
    fn is_narrowing_of(&self, parent: &Parsed) -> bool {
        let parent_any = parent.tools.iter().any(|t| t == ANY_TOOL);
        let tools_ok = parent_any || self.tools.iter().all(|t| parent.tools.contains(t));
        let scope_ok = self.scope.iter().all(|s| parent.scope.contains(s));
        let sid_ok = parent.sid.is_none() || parent.sid == self.sid;
        self.exp_nanos <= parent.exp_nanos && tools_ok && scope_ok && sid_ok
    }
}

/// Rule 1 for one token: returns it parsed, plus its `parent` token if any.
fn parse_token(token: String) -> Result<(Parsed, Option<String>), GrantError> {
    let (message, footer) = paseto::decode_unverified_v4_public(&token).map_err(|e| match e {
        PasetoError::WrongPurpose => GrantError::Malformed("purpose"),
        _ => GrantError::Malformed("token"),
    })?;
    if !footer.is_empty() {
        return Err(GrantError::Malformed("footer"));
    }
    // serde's derived struct visitor would also accept a JSON array of the
    // fields in order; insist on an object so there is one claims syntax.
    if message.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(GrantError::Malformed("claims"));
    }
    let claims: GrantClaims =
        serde_json::from_slice(&message).map_err(|_| GrantError::Malformed("claims"))?;

    let iss = parse_key(&claims.iss, "iss")?;
    let iss_key = VerifyingKey::from_bytes(&iss).map_err(|_| GrantError::Malformed("iss"))?;
    let sub = parse_key(&claims.sub, "sub")?;
    let aud = parse_key(&claims.aud, "aud")?;
    if !valid_grant_id(&claims.jti) {
        return Err(GrantError::Malformed("jti"));
    }
    if let Some(iat) = &claims.iat {
        parse_time(iat, "iat")?;
    }
    let nbf_nanos = claims
        .nbf
        .as_deref()
        .map(|s| parse_time(s, "nbf").map(OffsetDateTime::unix_timestamp_nanos))
        .transpose()?;
    let exp = parse_time(&claims.exp, "exp")?;
    if claims.tools.is_empty() {
        return Err(GrantError::Malformed("tools"));
    }
    let sid = claims.sid.as_deref().map(parse_sid).transpose()?;

    let parsed = Parsed {
        token,
        iss,
        iss_key,
        sub,
        aud,
        jti: claims.jti,
        exp_nanos: exp.unix_timestamp_nanos(),
        exp_unix: exp.unix_timestamp(),
        nbf_nanos,
        tools: claims.tools,
        scope: claims.scope,
        sid,
    };
    Ok((parsed, claims.parent))
}

/// Canonical identity-key text to bytes; `field` names the claim in errors.
pub(crate) fn parse_key(text: &str, field: &'static str) -> Result<[u8; 32], GrantError> {
    // Length check first so oversized input is never decoded.
    if text.len() != KEY_TEXT_LEN {
        return Err(GrantError::Malformed(field));
    }
    let bytes = B64.decode(text).map_err(|_| GrantError::Malformed(field))?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| GrantError::Malformed(field))
}

/// `sid`: exactly 64 lowercase hex digits.
fn parse_sid(text: &str) -> Result<[u8; 32], GrantError> {
    // `hex` accepts uppercase too; the wire format is lowercase only, so that
    // a session id has one spelling.
    if text.len() != 64 || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(GrantError::Malformed("sid"));
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).map_err(|_| GrantError::Malformed("sid"))?;
    Ok(out)
}

/// `jti` length rule: 1..=128 Unicode scalar values.
fn valid_grant_id(id: &str) -> bool {
    (1..=MAX_GRANT_ID_CHARS).contains(&id.chars().count())
}

/// RFC 3339 timestamp; `field` names the claim in errors.
pub(crate) fn parse_time(text: &str, field: &'static str) -> Result<OffsetDateTime, GrantError> {
    OffsetDateTime::parse(text, &Rfc3339).map_err(|_| GrantError::Malformed(field))
}

/// RFC 3339 in UTC (`...Z`), so issued tokens have one spelling per instant.
pub(crate) fn format_time(t: OffsetDateTime, field: &'static str) -> Result<String, GrantError> {
    t.checked_to_offset(UtcOffset::UTC)
        .ok_or(GrantError::Malformed(field))?
        .format(&Rfc3339)
        .map_err(|_| GrantError::Malformed(field))
}
