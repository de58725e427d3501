//! The check functions of every vector file that needs no deterministic hook of the
//! protocol crate: the shared JSON helpers, `replay_window.json`, `envelope.json`,
//! `grant.json` and `messages.json`.
//!
//! Lifted from `protocol/tests/vectors_check.rs` (which stays as the protocol
//! crate's own check); each `check_<area>_test(group, test)` returns the reason a
//! test disagrees.

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use serde_json::Value;
use toolwire_protocol::envelope::{RequestFields, ResponseFields};
use toolwire_protocol::error::{Error, Incompatibility};
use toolwire_protocol::grant::{key_to_text, verify_grant, GrantError, VerifyContext};
use toolwire_protocol::identity::{Identity, IdentityKey};
use toolwire_protocol::message::Message;
use toolwire_protocol::paseto;
use toolwire_protocol::replay::{RecordWindow, ReplayWindow, RequestIdWindow, SEQUENCE_LIMIT};

pub(super) fn field<'a>(value: &'a Value, key: &str) -> Result<&'a Value, String> {
    value
        .get(key)
        .filter(|v| !v.is_null())
        .ok_or_else(|| format!("missing field {key}"))
}

pub(super) fn bytes(value: &Value, key: &str) -> Result<Vec<u8>, String> {
    let text = field(value, key)?
        .as_str()
        .ok_or_else(|| format!("{key} is not a string"))?;
    if text.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!("{key} is not lowercase hex"));
    }
    ::hex::decode(text).map_err(|e| format!("{key}: {e}"))
}

pub(super) fn opt_bytes(value: &Value, key: &str) -> Result<Option<Vec<u8>>, String> {
    match value.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => bytes(value, key).map(Some),
    }
}

pub(super) fn array32(value: &Value, key: &str) -> Result<[u8; 32], String> {
    bytes(value, key)?
        .try_into()
        .map_err(|_| format!("{key} is not 32 bytes"))
}

pub(super) fn opt_array32(value: &Value, key: &str) -> Result<Option<[u8; 32]>, String> {
    opt_bytes(value, key)?
        .map(|b| b.try_into().map_err(|_| format!("{key} is not 32 bytes")))
        .transpose()
}

pub(super) fn keys32(value: &Value, key: &str) -> Result<Vec<[u8; 32]>, String> {
    field(value, key)?
        .as_array()
        .ok_or_else(|| format!("{key} is not an array"))?
        .iter()
        .map(|v| {
            let b = ::hex::decode(v.as_str().unwrap_or("")).map_err(|e| format!("{key}: {e}"))?;
            b.try_into().map_err(|_| format!("{key}: not 32 bytes"))
        })
        .collect()
}

pub(super) fn uint(value: &Value, key: &str) -> Result<u64, String> {
    field(value, key)?
        .as_u64()
        .ok_or_else(|| format!("{key} is not an unsigned integer"))
}

pub(super) fn int(value: &Value, key: &str) -> Result<i64, String> {
    field(value, key)?
        .as_i64()
        .ok_or_else(|| format!("{key} is not an integer"))
}

pub(super) fn text<'a>(value: &'a Value, key: &str) -> Result<&'a str, String> {
    field(value, key)?
        .as_str()
        .ok_or_else(|| format!("{key} is not a string"))
}

pub(super) fn strings(value: &Value, key: &str) -> Result<Vec<String>, String> {
    field(value, key)?
        .as_array()
        .ok_or_else(|| format!("{key} is not an array"))?
        .iter()
        .map(|v| {
            v.as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("{key}: not a string"))
        })
        .collect()
}

pub(super) fn ensure(condition: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if condition {
        Ok(())
    } else {
        Err(what())
    }
}

pub(super) fn ensure_eq<T: PartialEq + std::fmt::Debug>(
    actual: T,
    expected: T,
    what: &str,
) -> Result<(), String> {
    ensure(actual == expected, || {
        format!("{what}: got {actual:?}, expected {expected:?}")
    })
}

pub(super) fn ensure_hex(actual: &[u8], test: &Value, key: &str) -> Result<(), String> {
    let expected = bytes(test, key)?;
    ensure(actual == expected.as_slice(), || {
        format!("{key}: got {}, expected {}", hex(actual), hex(&expected))
    })
}

pub(super) fn is_valid(test: &Value) -> bool {
    test["result"] == "valid"
}

/// An expected failure: compares the close code (normative) and the error name.
pub(super) fn ensure_error(error: &Error, test: &Value) -> Result<(), String> {
    ensure_eq(
        close_code_name(error).as_str(),
        text(test, "expectedCloseCode")?,
        "close code",
    )?;
    ensure_eq(
        error_name(error).as_str(),
        text(test, "expectedError")?,
        "error",
    )
}

/// The JSON form of messages.json (byte fields as hex) as a message.
pub(super) fn json_to_message(value: &Value) -> Result<Message, String> {
    const BYTE_FIELDS: &[&str] = &["digest", "manifest", "signature", "args", "result", "data"];
    fn convert(value: &mut Value) -> Result<(), String> {
        match value {
            Value::Object(map) => {
                for (key, item) in map.iter_mut() {
                    if let (true, Some(text)) = (BYTE_FIELDS.contains(&key.as_str()), item.as_str())
                    {
                        let raw = ::hex::decode(text).map_err(|e| format!("{key}: {e}"))?;
                        *item = Value::from(raw);
                    } else {
                        convert(item)?;
                    }
                }
            }
            Value::Array(items) => {
                for item in items {
                    convert(item)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
    let mut value = value.clone();
    convert(&mut value)?;
    serde_json::from_value(value).map_err(|e| format!("decoded form does not parse: {e}"))
}

/// The informative error name used in `expectedError` fields: `Category` or
/// `Category.Detail`, after the Rust variant names of `toolwire_protocol::Error`.
/// The normative expectation is the close code; this pins the reason as well.
pub(super) fn error_name(error: &Error) -> String {
    match error {
        Error::Malformed(detail) => format!("Malformed.{detail:?}"),
        Error::PeerMisbehaved(detail) => format!("PeerMisbehaved.{detail:?}"),
        Error::Incompatible(Incompatibility::Version(_)) => "Incompatible.Version".to_owned(),
        Error::DecryptFailed => "DecryptFailed".to_owned(),
        Error::HandshakeFailed => "HandshakeFailed".to_owned(),
        Error::AuthFailed(detail) => format!("AuthFailed.{detail:?}"),
        Error::LimitExceeded(detail) => format!("LimitExceeded.{detail:?}"),
        Error::Timeout(detail) => format!("Timeout.{detail:?}"),
        other => format!("{other:?}"),
    }
}

/// The close-code name an error closes the connection with.
pub(super) fn close_code_name(error: &Error) -> String {
    error
        .close_code()
        .and_then(|code| code.name())
        .unwrap_or("NONE")
        .to_owned()
}

/// The name of a grant error in `expectedError`: the variant name, with the
/// offending part after a dot for `Malformed` (`Malformed.footer`).
pub(super) fn grant_error_name(error: &GrantError) -> String {
    match error {
        GrantError::Malformed(part) => format!("Malformed.{part}"),
        other => format!("{other:?}"),
    }
}

/// Lower-case hex.
pub(super) fn hex(bytes: impl AsRef<[u8]>) -> String {
    ::hex::encode(bytes)
}

// ---------------------------------------------------------------------------------
// replay_window.json
// ---------------------------------------------------------------------------------

fn run_window<const BLOCKS: usize>(group: &Value, test: &Value) -> Result<(), String> {
    ensure_eq(
        uint(group, "windowSize")?,
        ReplayWindow::<BLOCKS>::WINDOW,
        "windowSize",
    )?;
    ensure_eq(uint(group, "ringBits")?, BLOCKS as u64 * 64, "ringBits")?;
    ensure_eq(
        uint(group, "sequenceLimit")?,
        SEQUENCE_LIMIT,
        "sequenceLimit",
    )?;
    let mut window = ReplayWindow::<BLOCKS>::new();
    for (index, step) in field(test, "steps")?
        .as_array()
        .ok_or("steps")?
        .iter()
        .enumerate()
    {
        let value = uint(step, "value")?;
        let checked = window.check(value);
        let updated = window.update(value);
        ensure_eq(checked, updated, "check vs update")?;
        let decision = match checked {
            Ok(()) => ("accept", None),
            Err(reason) => ("reject", Some(format!("{reason:?}"))),
        };
        let expected = (
            text(step, "result")?,
            step["reason"].as_str().map(str::to_owned),
        );
        ensure_eq(decision, expected, &format!("step {index} (value {value})"))?;
        ensure_eq(
            window.highest(),
            step["highestAfter"].as_u64(),
            &format!("step {index} highest"),
        )?;
    }
    Ok(())
}

pub(super) fn check_replay_window_test(group: &Value, test: &Value) -> Result<(), String> {
    match text(group, "window")? {
        "RecordWindow" => run_window::<32>(group, test).and_then(|()| {
            ensure_eq(
                RecordWindow::WINDOW,
                uint(group, "windowSize")?,
                "RecordWindow",
            )
        }),
        "RequestIdWindow" => run_window::<64>(group, test).and_then(|()| {
            ensure_eq(
                RequestIdWindow::WINDOW,
                uint(group, "windowSize")?,
                "RequestIdWindow",
            )
        }),
        other => Err(format!("unknown window {other}")),
    }
}

// ---------------------------------------------------------------------------------
// envelope.json
// ---------------------------------------------------------------------------------

pub(super) fn check_envelope_test(group: &Value, test: &Value) -> Result<(), String> {
    let public_key = array32(group, "publicKey")?;
    let signer = opt_array32(group, "privateKeySeed")?.map(|seed| Identity::from_seed(&seed));
    if let Some(signer) = &signer {
        ensure_eq(signer.public_key().to_bytes(), public_key, "privateKeySeed")?;
    }
    let session_id = array32(test, "sessionId")?;
    let request_id = uint(test, "requestId")?;
    let signature = bytes(test, "signature")?;
    let request_hash;
    let args;
    let result_bytes;
    let (signing_bytes, verdict, own_signature) = match text(group, "type")? {
        "RequestSignature" => {
            args = bytes(test, "args")?;
            let fields = RequestFields {
                session_id: &session_id,
                request_id,
                tool: text(test, "tool")?,
                args: &args,
                grant_id: text(test, "grantId")?,
            };
            ensure_hex(&fields.hash(), test, "requestHash")?;
            let verdict = IdentityKey::from_bytes(public_key)
                .map_err(|e| format!("{e:?}"))
                .and_then(|key| {
                    fields
                        .verify(&key, &signature)
                        .map_err(|e| format!("{e:?}"))
                });
            (
                fields.signing_bytes(),
                verdict,
                signer.as_ref().map(|s| fields.sign(s).to_vec()),
            )
        }
        "ResponseSignature" => {
            request_hash = array32(test, "requestHash")?;
            result_bytes = bytes(test, "resultBytes")?;
            let fields = ResponseFields {
                session_id: &session_id,
                request_id,
                request_hash: &request_hash,
                result: &result_bytes,
            };
            let verdict = IdentityKey::from_bytes(public_key)
                .map_err(|e| format!("{e:?}"))
                .and_then(|key| {
                    fields
                        .verify(&key, &signature)
                        .map_err(|e| format!("{e:?}"))
                });
            (
                fields.signing_bytes(),
                verdict,
                signer.as_ref().map(|s| fields.sign(s).to_vec()),
            )
        }
        other => return Err(format!("unknown group type {other}")),
    };
    ensure_hex(&signing_bytes, test, "signingBytes")?;
    match verdict {
        Ok(()) if is_valid(test) => {
            // Ed25519 is deterministic: the group's key reproduces the signature.
            ensure_eq(
                own_signature,
                Some(signature),
                "signature reproduced from privateKeySeed",
            )
        }
        Err(error) if !is_valid(test) => {
            ensure_eq(error.as_str(), text(test, "expectedError")?, "error")
        }
        Ok(()) => Err("signature verified".to_owned()),
        Err(error) => Err(format!("signature refused: {error}")),
    }
}

// ---------------------------------------------------------------------------------
// grant.json
// ---------------------------------------------------------------------------------

pub(super) fn check_grant_test(group: &Value, test: &Value) -> Result<(), String> {
    for (name, key) in field(group, "keys")?.as_object().ok_or("keys")? {
        let public = Identity::from_seed(&array32(key, "seed")?)
            .public_key()
            .to_bytes();
        ensure_hex(&public, key, "publicKey").map_err(|e| format!("key {name}: {e}"))?;
        ensure_eq(key_to_text(&public).as_str(), text(key, "text")?, name)?;
    }
    let token = text(test, "token")?;
    if let Some(claims) = test.get("leafClaims") {
        let (message, _) =
            paseto::decode_unverified_v4_public(token).map_err(|e| format!("{e:?}"))?;
        let decoded: Value = serde_json::from_slice(&message).map_err(|e| e.to_string())?;
        ensure_eq(&decoded, claims, "leafClaims")?;
    }
    let trusted = keys32(test, "trustedIssuers")?;
    let context = VerifyContext {
        trusted_issuers: &trusted,
        audience: array32(test, "audience")?,
        holder: array32(test, "holder")?,
        now_unix: int(test, "now")?,
        session_id: opt_array32(test, "sessionId")?,
        max_clock_skew_secs: int(test, "maxClockSkewSecs")?,
    };
    match verify_grant(token, &context) {
        Ok(grant) if is_valid(test) => {
            let expected = field(test, "expectedGrant")?;
            ensure_eq(grant.id.as_str(), text(expected, "id")?, "id")?;
            ensure_eq(
                grant.root_issuer,
                array32(expected, "rootIssuer")?,
                "rootIssuer",
            )?;
            ensure_eq(grant.holder, array32(expected, "holder")?, "holder")?;
            ensure_eq(grant.audience, array32(expected, "audience")?, "audience")?;
            ensure_eq(grant.tools, strings(expected, "tools")?, "tools")?;
            ensure_eq(grant.scope, strings(expected, "scope")?, "scope")?;
            ensure_eq(
                grant.expires_at_unix,
                int(expected, "expiresAtUnix")?,
                "expiresAtUnix",
            )?;
            ensure_eq(grant.session, opt_array32(expected, "session")?, "session")?;
            ensure_eq(grant.chain_ids, strings(expected, "chainIds")?, "chainIds")
        }
        Err(error) if !is_valid(test) => ensure_eq(
            grant_error_name(&error).as_str(),
            text(test, "expectedError")?,
            "error",
        ),
        Ok(grant) => Err(format!("accepted: {grant:?}")),
        Err(error) => Err(format!("rejected: {error:?}")),
    }
}

// ---------------------------------------------------------------------------------
// messages.json
// ---------------------------------------------------------------------------------

pub(super) fn check_message_test(_group: &Value, test: &Value) -> Result<(), String> {
    let encoded = bytes(test, "encoded")?;
    let decoded = Message::decode(&encoded);
    match text(test, "result")? {
        "valid" => {
            let message = decoded.map_err(|e| format!("rejected: {e:?}"))?;
            ensure_eq(
                &message,
                &json_to_message(field(test, "decoded")?)?,
                "decoded",
            )?;
            ensure_eq(message.kind(), text(test, "kind")?, "kind")?;
            ensure_hex(&message.encode(), test, "reencoded")?;
            let canonical = !test["flags"]
                .as_array()
                .is_some_and(|f| f.iter().any(|f| f == "NonCanonical"));
            ensure_eq(
                canonical,
                encoded == bytes(test, "reencoded")?,
                "canonical encoding",
            )
        }
        "invalid" => match decoded {
            Err(error) => ensure_error(&error, test),
            Ok(message) => Err(format!("accepted: {message:?}")),
        },
        _ => match (text(test, "referenceResult")?, decoded) {
            ("accepted", Ok(message)) => ensure_eq(
                message,
                json_to_message(field(test, "decoded")?)?,
                "decoded",
            ),
            ("rejected", Err(error)) => ensure_eq(
                close_code_name(&error).as_str(),
                text(test, "expectedCloseCode")?,
                "close code",
            ),
            (expected, outcome) => Err(format!("reference {expected}, now {outcome:?}")),
        },
    }
}

// ---------------------------------------------------------------------------------
// certificate.json
// ---------------------------------------------------------------------------------

/// The name of a certificate error in `expectedError`: the variant name, with the
/// offending part for `Malformed` (`Malformed.footer`).
fn certificate_error_name(error: &toolwire_protocol::certificate::CertificateError) -> String {
    use toolwire_protocol::certificate::CertificateError as E;
    match error {
        E::Malformed(part) => format!("Malformed.{part}"),
        E::UntrustedOperator => "UntrustedOperator".into(),
        E::BadSignature => "BadSignature".into(),
        E::WrongServer => "WrongServer".into(),
        E::NotYetValid => "NotYetValid".into(),
        E::Expired => "Expired".into(),
        E::WrongEndpoint => "WrongEndpoint".into(),
        other => format!("{other:?}"),
    }
}

pub(super) fn check_certificate_test(group: &Value, test: &Value) -> Result<(), String> {
    use toolwire_protocol::certificate::{verify_server_certificate, CertificateCheck};
    for (name, key) in field(group, "keys")?.as_object().ok_or("keys")? {
        let public = Identity::from_seed(&array32(key, "seed")?)
            .public_key()
            .to_bytes();
        ensure_hex(&public, key, "publicKey").map_err(|e| format!("key {name}: {e}"))?;
        ensure_eq(key_to_text(&public).as_str(), text(key, "text")?, name)?;
    }
    let to_key = |bytes: [u8; 32]| {
        toolwire_protocol::IdentityKey::from_bytes(bytes).map_err(|e| format!("{e:?}"))
    };
    let trusted = keys32(test, "trustedOperators")?
        .into_iter()
        .map(to_key)
        .collect::<Result<Vec<_>, _>>()?;
    let check = CertificateCheck {
        trusted_operators: &trusted,
        server: to_key(array32(test, "server")?)?,
        endpoint: text(test, "endpoint")?,
        now_unix: int(test, "now")?,
        max_clock_skew_secs: int(test, "maxClockSkewSecs")?,
    };
    match verify_server_certificate(text(test, "token")?, &check) {
        Ok(operator) if is_valid(test) => ensure_eq(
            hex(operator.to_bytes()),
            text(test, "expectedOperator")?.to_owned(),
            "expectedOperator",
        ),
        Err(error) if !is_valid(test) => ensure_eq(
            certificate_error_name(&error).as_str(),
            text(test, "expectedError")?,
            "error",
        ),
        Ok(operator) => Err(format!("accepted: {operator}")),
        Err(error) => Err(format!("rejected: {error:?}")),
    }
}

// ---------------------------------------------------------------------------------
// at_most_once.json
// ---------------------------------------------------------------------------------

/// An outcome as at_most_once.json writes it: `result` hex, `resultRepeated`
/// {byte, length}, or an error `code` and `message`.
fn amo_outcome(value: &Value) -> Result<toolwire_protocol::amo::CachedOutcome, String> {
    use toolwire_protocol::amo::CachedOutcome;
    if value.get("result").is_some() {
        return Ok(CachedOutcome::Response(bytes(value, "result")?));
    }
    if let Some(repeated) = value.get("resultRepeated") {
        let byte = bytes(repeated, "byte")?;
        let length = usize::try_from(uint(repeated, "length")?).map_err(|e| e.to_string())?;
        return Ok(CachedOutcome::Response(vec![
            *byte
                .first()
                .ok_or("empty byte")?;
            length
        ]));
    }
    let code = u32::try_from(uint(value, "code")?).map_err(|e| e.to_string())?;
    Ok(CachedOutcome::Error {
        code: toolwire_protocol::ErrorCode(code),
        message: text(value, "message")?.to_owned(),
    })
}

fn amo_admission_name(admission: &toolwire_protocol::amo::Admission) -> &'static str {
    use toolwire_protocol::amo::Admission;
    match admission {
        Admission::Execute => "execute",
        Admission::Duplicate(_) => "duplicate",
        Admission::InFlight => "in_flight",
        Admission::Stale => "stale",
        Admission::Unavailable => "unavailable",
        Admission::IdOutOfRange => "out_of_range",
        Admission::Overloaded => "overloaded",
        Admission::Mismatch => "mismatch",
        _ => "other",
    }
}

/// Replays a scenario's steps on a fresh table with the default bounds and compares
/// every verdict and answer.
pub(super) fn check_at_most_once_test(_group: &Value, test: &Value) -> Result<(), String> {
    use toolwire_protocol::amo::{
        Admission, AmoConfig, AtMostOnceStore as _, AtMostOnceTable, CallFingerprint, LineageKey,
        LineageOrigin,
    };
    let client = toolwire_protocol::IdentityKey::from_bytes(array32(test, "client")?)
        .map_err(|e| format!("client: {e:?}"))?;
    let lineage: [u8; 16] = bytes(test, "lineage")?
        .try_into()
        .map_err(|_| "lineage is not 16 bytes")?;
    let key = LineageKey::new(client, lineage);
    let mut table = AtMostOnceTable::new(AmoConfig::default());
    let steps = field(test, "steps")?.as_array().ok_or("steps")?;
    for (index, step) in steps.iter().enumerate() {
        let at = |error: String| format!("step {index}: {error}");
        match text(step, "op").map_err(at)? {
            "attach" => {
                let origin = match text(step, "origin").map_err(at)? {
                    "fresh" => LineageOrigin::Fresh,
                    _ => LineageOrigin::Resumed,
                };
                table.attach(&key, origin);
            }
            "admit" => {
                let fingerprint = CallFingerprint::of(
                    text(step, "tool").map_err(at)?,
                    &bytes(step, "args").map_err(at)?,
                    "",
                );
                let id = uint(step, "id").map_err(at)?;
                let retry = field(step, "retry")
                    .map_err(at)?
                    .as_bool()
                    .ok_or_else(|| at("retry".into()))?;
                let admission = table.admit_call(&key, id, retry, &fingerprint);
                ensure_eq(
                    amo_admission_name(&admission),
                    text(step, "expect").map_err(at)?,
                    &format!("step {index}: admission of id {id}"),
                )?;
                if let Admission::Duplicate(outcome) = admission {
                    let expected =
                        amo_outcome(field(step, "expectedOutcome").map_err(at)?).map_err(at)?;
                    ensure(outcome == expected, || at("cached outcome differs".into()))?;
                }
            }
            "complete" => {
                let outcome = amo_outcome(field(step, "outcome").map_err(at)?).map_err(at)?;
                let sent = table.complete(&key, uint(step, "id").map_err(at)?, outcome);
                ensure_eq(
                    Some(sent),
                    field(step, "expectSent").map_err(at)?.as_bool(),
                    &at("sent".into()),
                )?;
            }
            "abandon" => table.abandon(&key, uint(step, "id").map_err(at)?),
            "cancel" => {
                let sent = table.cancel(&key, uint(step, "id").map_err(at)?);
                ensure_eq(
                    Some(sent),
                    field(step, "expectSent").map_err(at)?.as_bool(),
                    &at("sent".into()),
                )?;
            }
            other => return Err(at(format!("unknown op {other}"))),
        }
    }
    Ok(())
}
