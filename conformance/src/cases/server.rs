//! Server-mode cases: the adversarial peer ([`crate::peer`]) plays the client.
//!
//! Every case opens its own connections. Expected results are the normative ones of
//! `spec/PROTOCOL.md`: HTTP statuses of the upgrade (section 2.2), close codes
//! (section 16.2, by a CLOSE record then a close frame once keys exist, by a bare
//! close frame before), RPC error codes (section 15).

use crate::peer::{
    self, await_raw_close, record, Ending, Handshake, HandshakeParams, Header, Session, Upgrade,
    SUBPROTOCOL,
};
use crate::server::{ServerCase, ServerTarget, ToolCall};
use crate::{Case, CaseResult, Verdict};
use std::sync::Arc;
use std::time::{Duration, Instant};
use toolwire_protocol::handshake::ClientHello;
use toolwire_protocol::manifest::Manifest;
use toolwire_protocol::message::{
    Cancel, CapGrant, CapRequest, Close, ErrorMessage, KeyUpdate, Ping, Request, Response,
};
use toolwire_protocol::{CloseCode, ErrorCode, Identity, Message};

macro_rules! case {
    ($id:literal, [$($clause:literal),* $(,)?], $description:literal, $run:path) => {
        Case {
            id: $id,
            clauses: &[$($clause),*],
            description: $description,
            run: |target| Box::pin($run(target)),
        }
    };
}

/// Every server-mode case, in run order.
pub fn server_cases() -> Vec<ServerCase> {
    vec![
        // ---- 2.2 Upgrade checks -------------------------------------------------
        case!("trn.origin.foreign", ["TRN-005", "TRN-006", "TRN-007"],
            "An upgrade with an Origin outside the allowlist is refused with 403.", origin_foreign),
        case!("trn.origin.with-path", ["TRN-008"],
            "An Origin with a path is not a serialized origin and is refused with 403.", origin_with_path),
        case!("trn.origin.null", ["TRN-010"],
            "The opaque origin `null` is refused with 403 (unless the operator listed `null`, TRN-011).", origin_null),
        case!("trn.origin.absent", ["TRN-012", "TRN-018"],
            "An upgrade without Origin is accepted and selects exactly toolwire.v1.", origin_absent),
        case!("trn.subprotocol.missing", ["TRN-014"],
            "An upgrade without Sec-WebSocket-Protocol is refused with 400.", subprotocol_missing),
        case!("trn.subprotocol.wrong-case", ["TRN-014"],
            "`Toolwire.V1` is not the case-sensitive token: refused with 400.", subprotocol_wrong_case),
        case!("trn.subprotocol.among-others", ["TRN-014", "TRN-018"],
            "Offering `chat, toolwire.v1` is accepted and the response selects exactly toolwire.v1.", subprotocol_among_others),
        case!("trn.origin-before-subprotocol", ["TRN-015"],
            "A foreign Origin without subprotocol is refused with 403, not 400.", origin_before_subprotocol),
        // ---- 2.3 Framing -------------------------------------------------------
        case!("trn.text-frame", ["TRN-024", "CLS-001", "CLS-002", "CLS-003", "CLS-011"],
            "A text message in a session closes with UNSUPPORTED_DATA (1003).", text_frame),
        case!("trn.oversize-frame", ["TRN-025", "LIM-002"],
            "A 65553-byte binary message in a session closes with MESSAGE_TOO_BIG (1009).", oversize_frame),
        case!("trn.oversize-text-frame", ["TRN-026"],
            "An oversize text message closes with 1009, not 1003 (size before kind).", oversize_text_frame),
        // ---- 4. Handshake ------------------------------------------------------
        case!("hs.baseline", ["HS-001", "HS-003", "HS-005", "HS-008", "HS-009", "HS-031", "KS-001", "KS-002", "LIFE-002", "ID-001", "REC-003"],
            "A well-formed handshake by an independent Noise implementation completes; ServerHello carries the pinned identity, a valid static-key signature and the session parameters; the first sealed record opens under k2.", baseline),
        case!("hs.record1.bad-version", ["REC-004", "REC-019", "HS-034"],
            "Record 1 with version byte 2 closes with VERSION_UNSUPPORTED (4002) by a bare close frame.", record1_bad_version),
        case!("hs.record1.short", ["REC-005"],
            "A 10-byte record 1 closes with PROTOCOL_VIOLATION (4010).", record1_short),
        case!("hs.record1.wrong-type", ["REC-017"],
            "A first record of type 3 closes with PROTOCOL_VIOLATION (4010).", record1_wrong_type),
        case!("hs.record1.nonzero-fields", ["REC-018"],
            "Record 1 with epoch 1 closes with PROTOCOL_VIOLATION (4010).", record1_nonzero_fields),
        case!("hs.record1.wrong-length", ["HS-007"],
            "Record 1 with a 31-byte body closes with HANDSHAKE_FAILED (4000).", record1_wrong_length),
        case!("hs.record1.low-order-key", ["HS-011"],
            "An all-zero ephemeral key (a non-contributory DH) closes with HANDSHAKE_FAILED (4000).", record1_low_order),
        case!("hs.stall", ["HS-033", "LIM-005"],
            "A client that sends nothing after the upgrade is closed with TIMEOUT (4009) after the 5 s handshake deadline.", handshake_stall),
        case!("hs.endpoint-mismatch", ["HS-004", "HS-010", "HS-020"],
            "A client binding another endpoint (a trailing slash) into the prologue cannot decrypt message 2; the server closes with HANDSHAKE_FAILED (4000) on the record 3 that follows.", endpoint_mismatch),
        case!("hs.record3.undecryptable", ["HS-020"],
            "A record 3 of random bytes closes with HANDSHAKE_FAILED (4000).", record3_undecryptable),
        case!("hs.client-hello.malformed", ["HS-021", "CNV-008"],
            "A ClientHello without `signature` closes with HANDSHAKE_FAILED (4000).", client_hello_malformed),
        case!("hs.client-hello.too-many-grants", ["HS-022", "LIM-013"],
            "A ClientHello presenting 9 grants closes with HANDSHAKE_FAILED (4000).", too_many_grants),
        case!("hs.client-hello.bad-lineage", ["HS-023"],
            "`resume.lineage` of 15 bytes closes with HANDSHAKE_FAILED (4000).", bad_lineage),
        case!("hs.client-hello.invalid-identity", ["HS-024", "ID-002"],
            "A small-order identity key closes with AUTH_FAILED (4001).", invalid_identity),
        case!("hs.client-hello.bad-signature", ["HS-025", "ID-004"],
            "A ClientHello signature over another static key closes with AUTH_FAILED (4001).", bad_client_signature),
        case!("hs.unknown-client", ["HS-028", "HS-030", "HS-034", "CLS-011"],
            "An identity neither allowed nor holding a grant closes with AUTH_FAILED (4001) by a bare close frame.", unknown_client),
        // ---- 6. Records --------------------------------------------------------
        case!("rec.bad-version", ["REC-004", "REC-033", "CLS-001", "CLS-002"],
            "A sealed record with version byte 2 closes with VERSION_UNSUPPORTED (4002).", rec_bad_version),
        case!("rec.wrong-type", ["REC-021"],
            "A record of type 3 after the handshake closes with PROTOCOL_VIOLATION (4010).", rec_wrong_type),
        case!("rec.reserved-bits", ["REC-022"],
            "A sealed record with reserved bits set closes with PROTOCOL_VIOLATION (4010).", rec_reserved_bits),
        case!("rec.wrong-epoch", ["REC-023", "REC-009"],
            "A sealed record of epoch 1 without a KEY_UPDATE closes with PROTOCOL_VIOLATION (4010).", rec_wrong_epoch),
        case!("rec.seq-limit", ["REC-024"],
            "A sealed record with seq 2^62 closes with SEQUENCE_EXHAUSTED (4005).", rec_seq_limit),
        case!("rec.replayed", ["REC-025", "REC-030", "RPL-007", "REC-010"],
            "A sealed record sent a second time closes with REPLAY_DETECTED (4004).", rec_replayed),
        case!("rec.reordered", ["REC-026", "RPL-008"],
            "Sealed records sent out of order (seq 1 before seq 0) close with REPLAY_DETECTED (4004).", rec_reordered),
        case!("rec.short-body", ["REC-027"],
            "A sealed record with a 10-byte body closes with PROTOCOL_VIOLATION (4010).", rec_short_body),
        case!("rec.tampered", ["REC-006", "REC-007", "REC-028", "REC-029", "CLS-003"],
            "A sealed record with one ciphertext bit flipped closes with DECRYPT_FAILED (4003) and an empty reason.", rec_tampered),
        case!("rec.truncated", ["REC-028", "REC-031"],
            "A sealed record missing its last byte closes with DECRYPT_FAILED (4003).", rec_truncated),
        case!("rec.not-a-message", ["REC-032", "MSG-003"],
            "A sealed record whose plaintext is not msgpack closes with PROTOCOL_VIOLATION (4010).", rec_not_a_message),
        // ---- 1, 9. Messages ----------------------------------------------------
        case!("msg.unknown-type", ["MSG-002"],
            "A message of type `NOPE` closes with PROTOCOL_VIOLATION (4010).", msg_unknown_type),
        case!("msg.missing-body", ["MSG-003", "CNV-008"],
            "A message without `body` closes with PROTOCOL_VIOLATION (4010).", msg_missing_body),
        case!("msg.trailing-bytes", ["CNV-012"],
            "A message followed by a stray byte closes with PROTOCOL_VIOLATION (4010).", msg_trailing_bytes),
        case!("msg.server-only-kind", ["MSG-004"],
            "A client sending RESPONSE closes with PROTOCOL_VIOLATION (4010).", msg_server_only_kind),
        case!("msg.unknown-field-ignored", ["CNV-006", "CNV-007"],
            "A PING with an unknown field and a non-shortest nonce encoding is answered with its PONG.", msg_unknown_field),
        case!("msg.client-error-not-fatal", ["MSG-010"],
            "An ERROR from the client does not close the connection.", msg_client_error),
        // ---- 8. Rekey and keepalive --------------------------------------------
        case!("key.rekey", ["KEY-003", "KEY-004", "KS-003"],
            "After KEY_UPDATE {epoch: 1}, a PING sealed under REKEY(k1) at epoch 1 is answered.", key_rekey),
        case!("key.bad-key-update", ["KEY-005"],
            "KEY_UPDATE {epoch: 2} at epoch 0 closes with PROTOCOL_VIOLATION (4010).", key_bad_update),
        case!("life.ping", ["LIFE-008"],
            "A PING is answered with a PONG carrying the same nonce.", life_ping),
        case!("life.unsolicited-pong", ["LIFE-009"],
            "An unsolicited PONG does not close the connection.", life_unsolicited_pong),
        // ---- 16. Closing -------------------------------------------------------
        case!("cls.client-close", ["CLS-004", "CLS-006"],
            "After the client's CLOSE the server sends no record (no CLOSE in reply) and ends the WebSocket.", cls_client_close),
        // ---- 11, 12. Capabilities ----------------------------------------------
        case!("grt.cap-grant-first", ["GRT-034", "GRT-036", "MAN-001", "MAN-002", "MAN-003", "MAN-007", "MAN-009"],
            "The server's first message is CAP_GRANT with limits and a manifest signed by its identity whose tool digests match the granted ones.", cap_grant_first),
        case!("grt.cap-request-answered", ["GRT-039", "GRT-037"],
            "A CAP_REQUEST is answered with a CAP_UPDATE holding the complete granted set.", cap_request_answered),
        // ---- 13, 14, 10. Calls -------------------------------------------------
        case!("authz.ungranted-tool", ["AUTHZ-001", "AUTHZ-002", "AUTHZ-008", "ERR-001"],
            "A signed REQUEST for a tool the identity is not granted is refused with PERMISSION_DENIED (7) and not executed.", ungranted_tool),
        case!("authz.unknown-tool", ["AUTHZ-009"],
            "A REQUEST for a tool that does not exist is refused exactly like an ungranted one: PERMISSION_DENIED (7), same message.", unknown_tool),
        case!("authz.bad-envelope-signature", ["AUTHZ-018", "ENV-006", "ID-004"],
            "A REQUEST whose envelope signature does not verify is refused with UNAUTHENTICATED (16).", bad_envelope_signature),
        case!("authz.missing-signature", ["AUTHZ-019", "ENV-003"],
            "A REQUEST without signature is refused with UNAUTHENTICATED (16) by a server requiring signatures (the default).", missing_signature),
        case!("amo.request-id-reuse", ["AMO-012", "AMO-016", "AMO-020", "ENV-002", "ENV-004", "ENV-005", "MSG-006"],
            "The same REQUEST sent twice on one connection is executed once: the second RESPONSE carries the same result bytes, both signatures verify.", request_id_reuse),
        case!("amo.id-out-of-range", ["AMO-007"],
            "A REQUEST with id 2^62 is refused with INVALID_ARGUMENT (3).", id_out_of_range),
        case!("amo.cancel-unknown-id", ["AMO-025"],
            "A CANCEL for an id never sent gets no reply and the connection stays open.", cancel_unknown_id),
    ]
}

// =====================================================================================
// Helpers
// =====================================================================================

fn name(code: u16) -> String {
    match CloseCode(code).name() {
        Some(name) => format!("{code} {name}"),
        None => code.to_string(),
    }
}

fn rpc_name(code: u32) -> String {
    match ErrorCode(code).name() {
        Some(name) => format!("{name} ({code})"),
        None => code.to_string(),
    }
}

fn precondition(what: impl std::fmt::Display) -> CaseResult {
    CaseResult::harness_error(format!("precondition failed: {what}"))
}

async fn expect_status(
    target: &ServerTarget,
    origin: Option<&str>,
    subprotocol: Option<&str>,
    status: u16,
) -> CaseResult {
    let outcome = peer::upgrade(&target.url, origin, subprotocol, target.options.step).await;
    let ok = matches!(outcome, Upgrade::Refused(s) if s == status);
    let result = CaseResult::check(ok, format!("HTTP {status}"), outcome.describe());
    if let Upgrade::Failed(error) = &outcome {
        return CaseResult::harness_error(error.clone());
    }
    result
}

/// A bare close frame with `code` and an empty reason, nothing sent before it
/// (HS-034).
fn expect_handshake_close(ending: &Ending, code: u16) -> CaseResult {
    let ok = ending.frame_code() == Some(code)
        && ending
            .frame
            .as_ref()
            .is_some_and(|(_, reason)| reason.is_empty())
        && ending.binary_messages == 0;
    CaseResult::check(
        ok,
        format!("close frame {} with empty reason, no record", name(code)),
        ending.to_string(),
    )
}

/// A CLOSE record with `code`, then a close frame with the same code, both with
/// empty reasons, nothing after (CLS-001..CLS-004).
fn expect_sealed_close(ending: &Ending, code: u16, session: &Session) -> CaseResult {
    let reasons_empty = ending.record.as_ref().is_none_or(|(_, r)| r.is_empty())
        && ending.frame.as_ref().is_none_or(|(_, r)| r.is_empty());
    let ok = ending.record_code() == Some(code)
        && ending.frame_code() == Some(code)
        && reasons_empty
        && ending.records_after_close == 0;
    CaseResult::check(
        ok,
        format!(
            "CLOSE record {0}, then close frame {0}, empty reasons",
            name(code)
        ),
        ending.to_string(),
    )
    .with_detail(session.violations.join("; "))
}

async fn established(target: &ServerTarget) -> Result<(Session, CapGrant), CaseResult> {
    established_as(target, target.identity.clone()).await
}

async fn established_as(
    target: &ServerTarget,
    identity: Identity,
) -> Result<(Session, CapGrant), CaseResult> {
    let step = target.options.step;
    let socket = peer::connect(&target.url, step)
        .await
        .map_err(precondition)?;
    let params = HandshakeParams::new(identity, target.url.clone(), target.server_key);
    let mut session = Session::establish(socket, params, step)
        .await
        .map_err(precondition)?;
    match session.next().await {
        Ok(Message::CapGrant(grant)) => Ok((session, grant)),
        Ok(other) => Err(precondition(format!(
            "first message {} instead of CAP_GRANT",
            other.kind()
        ))),
        Err(ending) => Err(precondition(format!(
            "session ended before CAP_GRANT: {ending}"
        ))),
    }
}

/// Establishes a session, sends the record `build` makes, expects a sealed close
/// with `code`.
async fn sealed_violation(
    target: Arc<ServerTarget>,
    code: u16,
    build: impl FnOnce(&mut Session) -> Vec<u8>,
) -> CaseResult {
    let (mut session, _) = match established(&target).await {
        Ok(established) => established,
        Err(result) => return result,
    };
    let record = build(&mut session);
    session.send_raw(record).await;
    let ending = session.await_close(target.options.step).await;
    expect_sealed_close(&ending, code, &session)
}

/// Sends `record1` as the first record and expects a bare close frame with `code`.
async fn handshake_violation(target: Arc<ServerTarget>, code: u16, record1: Vec<u8>) -> CaseResult {
    let step = target.options.step;
    let mut socket = match peer::connect(&target.url, step).await {
        Ok(socket) => socket,
        Err(error) => return precondition(error),
    };
    peer::send_binary(&mut socket, record1, step).await;
    let ending = await_raw_close(&mut socket, step).await;
    expect_handshake_close(&ending, code)
}

/// Runs records 1 and 2 of a handshake with `params`, then sends the record 3 that
/// `record3` makes and expects a bare close frame with `code`.
async fn record3_violation(
    target: Arc<ServerTarget>,
    params: HandshakeParams,
    code: u16,
    record3: impl FnOnce(&mut Handshake) -> Result<Vec<u8>, peer::PeerError>,
) -> CaseResult {
    let step = target.options.step;
    let mut socket = match peer::connect(&target.url, step).await {
        Ok(socket) => socket,
        Err(error) => return precondition(error),
    };
    let mut handshake = match Handshake::new(params) {
        Ok(handshake) => handshake,
        Err(error) => return CaseResult::harness_error(error.to_string()),
    };
    let Ok(record1) = handshake.record1() else {
        return CaseResult::harness_error("record 1");
    };
    peer::send_binary(&mut socket, record1, step).await;
    let Some(record2) = peer::next_binary(&mut socket, step).await else {
        return precondition("no record 2");
    };
    if let Err(error) = handshake.read_record2(&record2) {
        return precondition(error);
    }
    let record3 = match record3(&mut handshake) {
        Ok(record3) => record3,
        Err(error) => return CaseResult::harness_error(error.to_string()),
    };
    peer::send_binary(&mut socket, record3, step).await;
    let ending = await_raw_close(&mut socket, step).await;
    expect_handshake_close(&ending, code)
}

fn params(target: &ServerTarget) -> HandshakeParams {
    HandshakeParams::new(
        target.identity.clone(),
        target.url.clone(),
        target.server_key,
    )
}

fn hello_record(
    handshake: &mut Handshake,
    hello: &ClientHello,
) -> Result<Vec<u8>, peer::PeerError> {
    let payload = rmp_serde::to_vec_named(hello).map_err(|e| peer::PeerError(e.to_string()))?;
    handshake.record3(&payload)
}

fn encode_args(args: &serde_json::Value) -> Vec<u8> {
    rmp_serde::to_vec_named(args).unwrap_or_default()
}

/// The call the suite makes: the configured one, or the first granted tool with `{}`.
fn call_of(target: &ServerTarget, grant: &CapGrant) -> Option<(ToolCall, bool)> {
    if let Some(call) = &target.options.call {
        return Some((call.clone(), true));
    }
    grant.granted.first().map(|tool| {
        (
            ToolCall {
                tool: tool.name.clone(),
                args: serde_json::json!({}),
            },
            false,
        )
    })
}

/// Sends `request` and returns the answer to its id (skipping stream items).
async fn answer(session: &mut Session, request: &Request) -> Result<Message, Ending> {
    session.send(&Message::Request(request.clone())).await;
    loop {
        match session.next().await? {
            Message::StreamItem(_) | Message::CapUpdate(_) | Message::KeyUpdate(_) => {}
            message @ (Message::Response(Response { id, .. })
            | Message::Error(ErrorMessage { id: Some(id), .. }))
                if id == request.id =>
            {
                return Ok(message)
            }
            _ => {}
        }
    }
}

fn describe(answer: &Result<Message, Ending>) -> String {
    match answer {
        Ok(Message::Response(response)) => {
            format!("RESPONSE ({} result bytes)", response.result.len())
        }
        Ok(Message::Error(error)) => format!("ERROR {} {:?}", rpc_name(error.code), error.message),
        Ok(Message::Pong(pong)) => format!("PONG {{nonce: {}}}", pong.nonce),
        Ok(other) => other.kind().to_owned(),
        Err(ending) => ending.to_string(),
    }
}

/// Sends `request` and expects an ERROR with `code`.
async fn expect_rpc_error(
    session: &mut Session,
    request: &Request,
    code: ErrorCode,
) -> (CaseResult, Option<ErrorMessage>) {
    let outcome = answer(session, request).await;
    let observed = describe(&outcome);
    let error = match outcome {
        Ok(Message::Error(error)) => Some(error),
        _ => None,
    };
    let ok = error.as_ref().is_some_and(|e| e.code == code.0);
    (
        CaseResult::check(ok, format!("ERROR {}", rpc_name(code.0)), observed),
        error,
    )
}

/// The connection is alive: a PING is answered.
async fn still_open(session: &mut Session, expected: &str) -> CaseResult {
    match session.ping(0x5eed).await {
        Ok(()) => CaseResult::check(true, expected, "connection open (PING answered)"),
        Err(observed) => CaseResult::check(false, expected, observed),
    }
}

// =====================================================================================
// 2.2 Upgrade checks
// =====================================================================================

async fn origin_foreign(target: Arc<ServerTarget>) -> CaseResult {
    let origin = target.options.foreign_origin.clone();
    expect_status(&target, Some(&origin), Some(SUBPROTOCOL), 403).await
}

async fn origin_with_path(target: Arc<ServerTarget>) -> CaseResult {
    let origin = format!("{}/", target.options.foreign_origin);
    expect_status(&target, Some(&origin), Some(SUBPROTOCOL), 403).await
}

async fn origin_null(target: Arc<ServerTarget>) -> CaseResult {
    expect_status(&target, Some("null"), Some(SUBPROTOCOL), 403).await
}

async fn origin_absent(target: Arc<ServerTarget>) -> CaseResult {
    let outcome = peer::upgrade(&target.url, None, Some(SUBPROTOCOL), target.options.step).await;
    let ok = matches!(&outcome, Upgrade::Accepted { selected, .. } if selected.as_deref() == Some(SUBPROTOCOL));
    CaseResult::check(ok, "HTTP 101 (subprotocol toolwire.v1)", outcome.describe())
}

async fn subprotocol_missing(target: Arc<ServerTarget>) -> CaseResult {
    expect_status(&target, None, None, 400).await
}

async fn subprotocol_wrong_case(target: Arc<ServerTarget>) -> CaseResult {
    expect_status(&target, None, Some("Toolwire.V1"), 400).await
}

async fn subprotocol_among_others(target: Arc<ServerTarget>) -> CaseResult {
    let outcome = peer::upgrade(
        &target.url,
        None,
        Some("chat, toolwire.v1"),
        target.options.step,
    )
    .await;
    let ok = matches!(&outcome, Upgrade::Accepted { selected, .. } if selected.as_deref() == Some(SUBPROTOCOL));
    CaseResult::check(ok, "HTTP 101 (subprotocol toolwire.v1)", outcome.describe())
}

async fn origin_before_subprotocol(target: Arc<ServerTarget>) -> CaseResult {
    let origin = target.options.foreign_origin.clone();
    expect_status(&target, Some(&origin), None, 403).await
}

// =====================================================================================
// 2.3 Framing
// =====================================================================================

async fn text_frame(target: Arc<ServerTarget>) -> CaseResult {
    let (mut session, _) = match established(&target).await {
        Ok(established) => established,
        Err(result) => return result,
    };
    session.send_text("hello".to_owned()).await;
    let ending = session.await_close(target.options.step).await;
    expect_sealed_close(&ending, 1003, &session)
}

/// 16 + 65536 + 1 bytes: one more than LIM-002.
const OVERSIZE: usize = 16 + 65536 + 1;

async fn oversize_frame(target: Arc<ServerTarget>) -> CaseResult {
    sealed_violation(target, 1009, |_| vec![0x42; OVERSIZE]).await
}

async fn oversize_text_frame(target: Arc<ServerTarget>) -> CaseResult {
    let step = target.options.step;
    let mut socket = match peer::connect(&target.url, step).await {
        Ok(socket) => socket,
        Err(error) => return precondition(error),
    };
    use futures_util::SinkExt as _;
    let text = "a".repeat(OVERSIZE);
    let _ = tokio::time::timeout(
        step,
        socket.send(tokio_tungstenite::tungstenite::Message::text(text)),
    )
    .await;
    let ending = await_raw_close(&mut socket, step).await;
    expect_handshake_close(&ending, 1009)
}

// =====================================================================================
// 4. Handshake
// =====================================================================================

async fn baseline(target: Arc<ServerTarget>) -> CaseResult {
    let step = target.options.step;
    let mut socket = match peer::connect(&target.url, step).await {
        Ok(socket) => socket,
        Err(error) => return precondition(error),
    };
    let mut handshake = match Handshake::new(params(&target)) {
        Ok(handshake) => handshake,
        Err(error) => return CaseResult::harness_error(error.to_string()),
    };
    let Ok(record1) = handshake.record1() else {
        return CaseResult::harness_error("record 1");
    };
    peer::send_binary(&mut socket, record1, step).await;
    let expected = "record 2 with the pinned identity, a verifying static-key signature and session parameters; CAP_GRANT opening under k2 at seq 0";
    let Some(record2) = peer::next_binary(&mut socket, step).await else {
        return CaseResult::check(false, expected, "no record 2");
    };
    let hello = match handshake.read_record2(&record2) {
        Ok(hello) => hello,
        Err(error) => return CaseResult::check(false, expected, error.to_string()),
    };
    let client_hello = handshake.client_hello();
    let record3 = match hello_record(&mut handshake, &client_hello) {
        Ok(record3) => record3,
        Err(error) => return CaseResult::harness_error(error.to_string()),
    };
    peer::send_binary(&mut socket, record3, step).await;
    let keys = match handshake.finish() {
        Ok(keys) => keys,
        Err(error) => return CaseResult::harness_error(error.to_string()),
    };
    let mut session = Session::from_keys(
        socket,
        target.identity.clone(),
        target.server_key,
        &keys,
        step,
    );
    let first = session.next().await;
    let params = hello.params;
    let observed = format!(
        "ServerHello ok (max_record_body {}, session_lifetime_ms {}, idle_timeout_ms {}); first sealed message: {}",
        params.max_record_body,
        params.session_lifetime_ms,
        params.idle_timeout_ms,
        describe(&first)
    );
    let ok = matches!(first, Ok(Message::CapGrant(_))) && session.violations.is_empty();
    CaseResult::check(ok, expected, observed).with_detail(session.violations.join("; "))
}

async fn record1_bad_version(target: Arc<ServerTarget>) -> CaseResult {
    let mut header = Header::handshake(1);
    header.version = 2;
    handshake_violation(target, 4002, record(header, &[0x11; 32])).await
}

async fn record1_short(target: Arc<ServerTarget>) -> CaseResult {
    handshake_violation(target, 4010, vec![1, 1, 0, 0, 0, 0, 0, 0, 0, 0]).await
}

async fn record1_wrong_type(target: Arc<ServerTarget>) -> CaseResult {
    handshake_violation(target, 4010, record(Header::handshake(3), &[0x11; 32])).await
}

async fn record1_nonzero_fields(target: Arc<ServerTarget>) -> CaseResult {
    let mut header = Header::handshake(1);
    header.epoch = 1;
    handshake_violation(target, 4010, record(header, &[0x11; 32])).await
}

async fn record1_wrong_length(target: Arc<ServerTarget>) -> CaseResult {
    handshake_violation(target, 4000, record(Header::handshake(1), &[0x11; 31])).await
}

async fn record1_low_order(target: Arc<ServerTarget>) -> CaseResult {
    handshake_violation(target, 4000, record(Header::handshake(1), &[0; 32])).await
}

async fn handshake_stall(target: Arc<ServerTarget>) -> CaseResult {
    let Some(wait) = target.options.handshake_stall else {
        return CaseResult::skip("slow cases disabled (handshake stall)");
    };
    let mut socket = match peer::connect(&target.url, target.options.step).await {
        Ok(socket) => socket,
        Err(error) => return precondition(error),
    };
    let started = Instant::now();
    let ending = await_raw_close(&mut socket, wait).await;
    let elapsed = started.elapsed();
    let result =
        expect_handshake_close(&ending, 4009).with_detail(format!("closed after {elapsed:.1?}"));
    if result.verdict == Verdict::Pass && elapsed < Duration::from_secs(4) {
        // A stricter deadline than the default is a configuration choice, not a fault.
        return CaseResult {
            verdict: Verdict::Info,
            ..result
        }
        .with_detail("earlier than the default 5 s deadline (LIM-005 is a default)");
    }
    result
}

async fn endpoint_mismatch(target: Arc<ServerTarget>) -> CaseResult {
    let step = target.options.step;
    let mut socket = match peer::connect(&target.url, step).await {
        Ok(socket) => socket,
        Err(error) => return precondition(error),
    };
    let mut params = params(&target);
    params.endpoint = format!("{}/", target.url);
    let mut handshake = match Handshake::new(params) {
        Ok(handshake) => handshake,
        Err(error) => return CaseResult::harness_error(error.to_string()),
    };
    let Ok(record1) = handshake.record1() else {
        return CaseResult::harness_error("record 1");
    };
    peer::send_binary(&mut socket, record1, step).await;
    let expected = "message 2 does not decrypt under the other endpoint; close frame 4000 HANDSHAKE_FAILED after record 3";
    let Some(record2) = peer::next_binary(&mut socket, step).await else {
        return CaseResult::check(false, expected, "no record 2");
    };
    let decrypted = handshake.read_record2(&record2).is_ok();
    // The client cannot build a valid message 3 now; it sends what a misconfigured
    // client would have: 96 bytes that do not decrypt.
    peer::send_binary(&mut socket, record(Header::handshake(3), &[0x33; 96]), step).await;
    let ending = await_raw_close(&mut socket, step).await;
    let close = expect_handshake_close(&ending, 4000);
    let observed = format!(
        "message 2 {}; {}",
        if decrypted {
            "DECRYPTED (endpoint not bound)"
        } else {
            "does not decrypt"
        },
        ending
    );
    CaseResult::check(
        !decrypted && close.verdict == Verdict::Pass,
        expected,
        observed,
    )
}

async fn record3_undecryptable(target: Arc<ServerTarget>) -> CaseResult {
    let params = params(&target);
    record3_violation(target, params, 4000, |_| {
        Ok(record(Header::handshake(3), &[0x33; 100]))
    })
    .await
}

async fn client_hello_malformed(target: Arc<ServerTarget>) -> CaseResult {
    #[derive(serde::Serialize)]
    struct NoSignature {
        #[serde(with = "serde_bytes")]
        identity: Vec<u8>,
    }
    let identity = target.identity.public_key().to_bytes().to_vec();
    let params = params(&target);
    record3_violation(target, params, 4000, move |handshake| {
        let payload = rmp_serde::to_vec_named(&NoSignature { identity })
            .map_err(|e| peer::PeerError(e.to_string()))?;
        handshake.record3(&payload)
    })
    .await
}

async fn too_many_grants(target: Arc<ServerTarget>) -> CaseResult {
    let mut params = params(&target);
    params.cap_request = CapRequest {
        tools: vec!["*".to_owned()],
        grants: (0..9)
            .map(|i| format!("v4.public.not-a-grant-{i}"))
            .collect(),
    };
    record3_violation(target, params, 4000, |handshake| {
        let hello = handshake.client_hello();
        hello_record(handshake, &hello)
    })
    .await
}

async fn bad_lineage(target: Arc<ServerTarget>) -> CaseResult {
    let mut params = params(&target);
    params.lineage = Some(vec![0x4c; 15]);
    record3_violation(target, params, 4000, |handshake| {
        let hello = handshake.client_hello();
        hello_record(handshake, &hello)
    })
    .await
}

async fn invalid_identity(target: Arc<ServerTarget>) -> CaseResult {
    let params = params(&target);
    record3_violation(target, params, 4001, |handshake| {
        let mut hello = handshake.client_hello();
        // The identity point of Ed25519 (order 1), encoded canonically.
        let mut small_order = vec![0u8; 32];
        small_order[0] = 1;
        hello.identity = small_order.into();
        hello_record(handshake, &hello)
    })
    .await
}

async fn bad_client_signature(target: Arc<ServerTarget>) -> CaseResult {
    let identity = target.identity.clone();
    let params = params(&target);
    record3_violation(target, params, 4001, move |handshake| {
        let mut hello = handshake.client_hello();
        let other_static = [0x5a; 32];
        hello.signature = identity
            .sign(&peer::pae(&[b"toolwire/1 client static", &other_static]))
            .to_vec()
            .into();
        hello_record(handshake, &hello)
    })
    .await
}

async fn unknown_client(target: Arc<ServerTarget>) -> CaseResult {
    let stranger = Identity::generate(&mut rand_core::OsRng);
    let params = HandshakeParams::new(stranger, target.url.clone(), target.server_key);
    record3_violation(target, params, 4001, |handshake| {
        let hello = handshake.client_hello();
        hello_record(handshake, &hello)
    })
    .await
}

// =====================================================================================
// 6. Records
// =====================================================================================

fn ping_bytes(nonce: u64) -> Vec<u8> {
    Message::Ping(Ping { nonce }).encode()
}

async fn rec_bad_version(target: Arc<ServerTarget>) -> CaseResult {
    sealed_violation(target, 4002, |session| {
        let mut header = session.next_header();
        header.version = 2;
        session.seal_with(header, &ping_bytes(1))
    })
    .await
}

async fn rec_wrong_type(target: Arc<ServerTarget>) -> CaseResult {
    sealed_violation(target, 4010, |session| {
        let mut header = session.next_header();
        header.record_type = 3;
        session.seal_with(header, &ping_bytes(1))
    })
    .await
}

async fn rec_reserved_bits(target: Arc<ServerTarget>) -> CaseResult {
    sealed_violation(target, 4010, |session| {
        let mut header = session.next_header();
        header.reserved = 0x0100;
        session.seal_with(header, &ping_bytes(1))
    })
    .await
}

async fn rec_wrong_epoch(target: Arc<ServerTarget>) -> CaseResult {
    sealed_violation(target, 4010, |session| {
        let mut header = session.next_header();
        header.epoch = 1;
        session.seal_with(header, &ping_bytes(1))
    })
    .await
}

async fn rec_seq_limit(target: Arc<ServerTarget>) -> CaseResult {
    sealed_violation(target, 4005, |session| {
        let mut header = session.next_header();
        header.seq = 1 << 62;
        session.seal_with(header, &ping_bytes(1))
    })
    .await
}

async fn rec_replayed(target: Arc<ServerTarget>) -> CaseResult {
    let (mut session, _) = match established(&target).await {
        Ok(established) => established,
        Err(result) => return result,
    };
    let record = session.seal(&Message::Ping(Ping { nonce: 1 }));
    session.send_raw(record.clone()).await;
    match session.next().await {
        Ok(Message::Pong(pong)) if pong.nonce == 1 => {}
        other => return precondition(format!("PING not answered: {}", describe(&other))),
    }
    session.send_raw(record).await;
    let ending = session.await_close(target.options.step).await;
    expect_sealed_close(&ending, 4004, &session)
}

async fn rec_reordered(target: Arc<ServerTarget>) -> CaseResult {
    let (mut session, _) = match established(&target).await {
        Ok(established) => established,
        Err(result) => return result,
    };
    let first = session.seal(&Message::Ping(Ping { nonce: 1 }));
    let second = session.seal(&Message::Ping(Ping { nonce: 2 }));
    session.send_raw(second).await;
    session.send_raw(first).await;
    let ending = session.await_close(target.options.step).await;
    expect_sealed_close(&ending, 4004, &session)
}

async fn rec_short_body(target: Arc<ServerTarget>) -> CaseResult {
    sealed_violation(target, 4010, |session| {
        let header = session.next_header();
        record(header, &[0x77; 10])
    })
    .await
}

async fn rec_tampered(target: Arc<ServerTarget>) -> CaseResult {
    sealed_violation(target, 4003, |session| {
        let mut record = session.seal(&Message::Ping(Ping { nonce: 1 }));
        record[peer::HEADER_LEN] ^= 0x01;
        record
    })
    .await
}

async fn rec_truncated(target: Arc<ServerTarget>) -> CaseResult {
    sealed_violation(target, 4003, |session| {
        let mut record = session.seal(&Message::Ping(Ping { nonce: 1 }));
        record.pop();
        record
    })
    .await
}

async fn rec_not_a_message(target: Arc<ServerTarget>) -> CaseResult {
    sealed_violation(target, 4010, |session| session.seal_bytes(&[0xc1, 0xc1])).await
}

// =====================================================================================
// 1, 9. Messages
// =====================================================================================

/// msgpack of `{"type": kind, "body": {"nonce": 5}}` with optional extras.
fn map_message(kind: &str, with_body: bool, extra: Option<(&str, &str)>) -> Vec<u8> {
    let mut map = serde_json::Map::new();
    map.insert("type".to_owned(), serde_json::json!(kind));
    if with_body {
        let mut body = serde_json::Map::new();
        body.insert("nonce".to_owned(), serde_json::json!(5));
        if let Some((key, value)) = extra {
            body.insert(key.to_owned(), serde_json::json!(value));
        }
        map.insert("body".to_owned(), serde_json::Value::Object(body));
    }
    rmp_serde::to_vec_named(&serde_json::Value::Object(map)).unwrap_or_default()
}

async fn msg_unknown_type(target: Arc<ServerTarget>) -> CaseResult {
    sealed_violation(target, 4010, |session| {
        session.seal_bytes(&map_message("NOPE", true, None))
    })
    .await
}

async fn msg_missing_body(target: Arc<ServerTarget>) -> CaseResult {
    sealed_violation(target, 4010, |session| {
        session.seal_bytes(&map_message("PING", false, None))
    })
    .await
}

async fn msg_trailing_bytes(target: Arc<ServerTarget>) -> CaseResult {
    sealed_violation(target, 4010, |session| {
        let mut bytes = ping_bytes(5);
        bytes.push(0x00);
        session.seal_bytes(&bytes)
    })
    .await
}

async fn msg_server_only_kind(target: Arc<ServerTarget>) -> CaseResult {
    sealed_violation(target, 4010, |session| {
        session.seal(&Message::Response(Response {
            id: 1,
            result: vec![0xc0].into(),
            signature: None,
        }))
    })
    .await
}

async fn msg_unknown_field(target: Arc<ServerTarget>) -> CaseResult {
    let (mut session, _) = match established(&target).await {
        Ok(established) => established,
        Err(result) => return result,
    };
    // {"type": "PING", "body": {"nonce": uint64(5), "x-future": "ignored"}}
    let mut bytes = vec![0x82, 0xa4];
    bytes.extend_from_slice(b"type");
    bytes.push(0xa4);
    bytes.extend_from_slice(b"PING");
    bytes.push(0xa4);
    bytes.extend_from_slice(b"body");
    bytes.push(0x82);
    bytes.push(0xa5);
    bytes.extend_from_slice(b"nonce");
    bytes.push(0xcf);
    bytes.extend_from_slice(&5u64.to_be_bytes());
    bytes.push(0xa8);
    bytes.extend_from_slice(b"x-future");
    bytes.push(0xa7);
    bytes.extend_from_slice(b"ignored");
    let record = session.seal_bytes(&bytes);
    session.send_raw(record).await;
    let outcome = session.next().await;
    let ok = matches!(&outcome, Ok(Message::Pong(Ping { nonce: 5 })));
    CaseResult::check(ok, "PONG {nonce: 5}", describe(&outcome))
}

async fn msg_client_error(target: Arc<ServerTarget>) -> CaseResult {
    let (mut session, _) = match established(&target).await {
        Ok(established) => established,
        Err(result) => return result,
    };
    session
        .send(&Message::Error(ErrorMessage {
            id: None,
            code: 2,
            message: "conformance".to_owned(),
            retry_after_ms: None,
        }))
        .await;
    still_open(&mut session, "connection open (PING answered)").await
}

// =====================================================================================
// 8. Rekey and keepalive
// =====================================================================================

async fn key_rekey(target: Arc<ServerTarget>) -> CaseResult {
    let (mut session, _) = match established(&target).await {
        Ok(established) => established,
        Err(result) => return result,
    };
    session
        .send(&Message::KeyUpdate(KeyUpdate { epoch: 1 }))
        .await;
    still_open(&mut session, "PING at epoch 1 answered").await
}

async fn key_bad_update(target: Arc<ServerTarget>) -> CaseResult {
    sealed_violation(target, 4010, |session| {
        session.seal_bytes(&Message::KeyUpdate(KeyUpdate { epoch: 2 }).encode())
    })
    .await
}

async fn life_ping(target: Arc<ServerTarget>) -> CaseResult {
    let (mut session, _) = match established(&target).await {
        Ok(established) => established,
        Err(result) => return result,
    };
    session
        .send(&Message::Ping(Ping { nonce: 0xdead_beef }))
        .await;
    let outcome = session.next().await;
    let ok = matches!(&outcome, Ok(Message::Pong(Ping { nonce: 0xdead_beef })));
    CaseResult::check(ok, "PONG {nonce: 3735928559}", describe(&outcome))
}

async fn life_unsolicited_pong(target: Arc<ServerTarget>) -> CaseResult {
    let (mut session, _) = match established(&target).await {
        Ok(established) => established,
        Err(result) => return result,
    };
    session.send(&Message::Pong(Ping { nonce: 99 })).await;
    still_open(&mut session, "connection open (PING answered)").await
}

// =====================================================================================
// 16. Closing
// =====================================================================================

async fn cls_client_close(target: Arc<ServerTarget>) -> CaseResult {
    let (mut session, _) = match established(&target).await {
        Ok(established) => established,
        Err(result) => return result,
    };
    session
        .send(&Message::Close(Close {
            code: 1000,
            reason: String::new(),
        }))
        .await;
    let ending = session.await_close(target.options.step).await;
    let ok = ending.record.is_none()
        && ending.records_after_close == 0
        && ending.messages.is_empty()
        && !ending.timed_out;
    CaseResult::check(
        ok,
        "no record after the client's CLOSE; the WebSocket ends",
        ending.to_string(),
    )
}

// =====================================================================================
// 11, 12. Capabilities
// =====================================================================================

async fn cap_grant_first(target: Arc<ServerTarget>) -> CaseResult {
    let (_session, grant) = match established(&target).await {
        Ok(established) => established,
        Err(result) => return result,
    };
    let expected = "CAP_GRANT first; manifest signed by the server identity, names unique, granted digests equal to the manifest's";
    let signed = peer::pae(&[b"toolwire/1 manifest", &grant.manifest.manifest]);
    if target
        .server_key
        .verify(&signed, &grant.manifest.signature)
        .is_err()
    {
        return CaseResult::check(false, expected, "manifest signature does not verify");
    }
    let manifest: Manifest = match rmp_serde::from_slice(&grant.manifest.manifest) {
        Ok(manifest) => manifest,
        Err(error) => {
            return CaseResult::check(
                false,
                expected,
                format!("manifest does not decode: {error}"),
            )
        }
    };
    if manifest.server.as_ref() != target.server_key.as_bytes() {
        return CaseResult::check(
            false,
            expected,
            "manifest.server is not the server identity",
        );
    }
    let mut names = std::collections::HashSet::new();
    if let Some(duplicate) = manifest
        .tools
        .iter()
        .find(|t| !names.insert(t.name.clone()))
    {
        return CaseResult::check(
            false,
            expected,
            format!("tool {} listed twice", duplicate.name),
        );
    }
    for granted in &grant.granted {
        let Some(tool) = manifest.tools.iter().find(|t| t.name == granted.name) else {
            return CaseResult::check(
                false,
                expected,
                format!("granted tool {} not in the manifest", granted.name),
            );
        };
        let digest = sha256(&peer::pae(&[
            b"toolwire/1 tool",
            tool.name.as_bytes(),
            tool.description.as_bytes(),
            tool.input_schema.as_bytes(),
            tool.output_schema.as_bytes(),
        ]));
        if granted.digest.as_ref() != digest.as_slice() {
            return CaseResult::check(
                false,
                expected,
                format!("digest of {} differs from its manifest entry", granted.name),
            );
        }
    }
    CaseResult::check(
        true,
        expected,
        format!(
            "CAP_GRANT: {} of {} tools granted, limits rate {}/s burst {} in-flight {}",
            grant.granted.len(),
            manifest.tools.len(),
            grant.limits.rate_per_sec,
            grant.limits.burst,
            grant.limits.max_in_flight
        ),
    )
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).into()
}

async fn cap_request_answered(target: Arc<ServerTarget>) -> CaseResult {
    let (mut session, grant) = match established(&target).await {
        Ok(established) => established,
        Err(result) => return result,
    };
    session
        .send(&Message::CapRequest(CapRequest {
            tools: vec!["*".to_owned()],
            grants: Vec::new(),
        }))
        .await;
    let outcome = session.next().await;
    let observed = match &outcome {
        Ok(Message::CapUpdate(update)) => format!("CAP_UPDATE with {} tools", update.granted.len()),
        other => describe(other),
    };
    let ok = matches!(&outcome, Ok(Message::CapUpdate(update)) if {
        let mut now: Vec<&str> = update.granted.iter().map(|t| t.name.as_str()).collect();
        let mut before: Vec<&str> = grant.granted.iter().map(|t| t.name.as_str()).collect();
        now.sort_unstable();
        before.sort_unstable();
        now == before
    });
    CaseResult::check(
        ok,
        format!("CAP_UPDATE with the same {} tools", grant.granted.len()),
        observed,
    )
}

// =====================================================================================
// 13, 14, 10. Calls
// =====================================================================================

async fn ungranted_tool(target: Arc<ServerTarget>) -> CaseResult {
    let Some(tool) = target.options.ungranted_tool.clone() else {
        return CaseResult::skip("needs a tool the identity is not granted (--ungranted-tool)");
    };
    let (mut session, grant) = match established(&target).await {
        Ok(established) => established,
        Err(result) => return result,
    };
    if grant.granted.iter().any(|t| t.name == tool) {
        return precondition(format!("{tool} is granted to the identity"));
    }
    let request = session.request(1, &tool, &encode_args(&serde_json::json!({})));
    expect_rpc_error(&mut session, &request, ErrorCode::PERMISSION_DENIED)
        .await
        .0
}

async fn unknown_tool(target: Arc<ServerTarget>) -> CaseResult {
    let (mut session, _) = match established(&target).await {
        Ok(established) => established,
        Err(result) => return result,
    };
    let args = encode_args(&serde_json::json!({}));
    let request = session.request(1, "conformance-no-such-tool", &args);
    let (result, unknown) =
        expect_rpc_error(&mut session, &request, ErrorCode::PERMISSION_DENIED).await;
    let Some(tool) = target.options.ungranted_tool.clone() else {
        return result.with_detail("message not compared: no --ungranted-tool");
    };
    if result.verdict != Verdict::Pass {
        return result;
    }
    let request = session.request(2, &tool, &args);
    let (_, ungranted) =
        expect_rpc_error(&mut session, &request, ErrorCode::PERMISSION_DENIED).await;
    let same = unknown.map(|e| e.message) == ungranted.as_ref().map(|e| e.message.clone());
    CaseResult::check(
        same,
        "PERMISSION_DENIED (7) with the message of an ungranted tool",
        format!(
            "{}; ungranted: {:?}",
            result.observed,
            ungranted.map(|e| e.message)
        ),
    )
}

async fn bad_envelope_signature(target: Arc<ServerTarget>) -> CaseResult {
    let (mut session, grant) = match established(&target).await {
        Ok(established) => established,
        Err(result) => return result,
    };
    let Some((call, _)) = call_of(&target, &grant) else {
        return CaseResult::skip("no tool is granted to the identity");
    };
    let mut request = session.request(1, &call.tool, &encode_args(&call.args));
    if let Some(signature) = request.signature.as_mut() {
        signature[0] ^= 0x01;
    }
    expect_rpc_error(&mut session, &request, ErrorCode::UNAUTHENTICATED)
        .await
        .0
}

async fn missing_signature(target: Arc<ServerTarget>) -> CaseResult {
    let (mut session, grant) = match established(&target).await {
        Ok(established) => established,
        Err(result) => return result,
    };
    let Some((call, _)) = call_of(&target, &grant) else {
        return CaseResult::skip("no tool is granted to the identity");
    };
    let mut request = session.request(1, &call.tool, &encode_args(&call.args));
    request.signature = None;
    expect_rpc_error(&mut session, &request, ErrorCode::UNAUTHENTICATED)
        .await
        .0
}

/// A first call that must execute; `Err` is the case's result when it does not.
async fn first_call(
    target: &ServerTarget,
    session: &mut Session,
    grant: &CapGrant,
    id: u64,
) -> Result<(Request, Response), CaseResult> {
    let Some((call, configured)) = call_of(target, grant) else {
        return Err(CaseResult::skip("no tool is granted to the identity"));
    };
    let request = session.request(id, &call.tool, &encode_args(&call.args));
    match answer(session, &request).await {
        Ok(Message::Response(response)) => Ok((request, response)),
        other if configured => Err(precondition(format!(
            "the configured call {} was answered {}",
            call.tool,
            describe(&other)
        ))),
        other => Err(CaseResult::skip(format!(
            "needs a callable tool (--call-tool/--call-args): {} {{}} was answered {}",
            call.tool,
            describe(&other)
        ))),
    }
}

async fn request_id_reuse(target: Arc<ServerTarget>) -> CaseResult {
    let (mut session, grant) = match established(&target).await {
        Ok(established) => established,
        Err(result) => return result,
    };
    let (request, first) = match first_call(&target, &mut session, &grant, 7).await {
        Ok(call) => call,
        Err(result) => return result,
    };
    let again = answer(&mut session, &request).await;
    let expected = "second RESPONSE with the same result bytes; both signatures verify under the server identity";
    let Ok(Message::Response(second)) = again else {
        return CaseResult::check(false, expected, describe(&again));
    };
    let verifies = |response: &Response| {
        response
            .signature
            .as_ref()
            .is_some_and(|s| session.verify_response(&request, &response.result, s))
    };
    let (first_ok, second_ok) = (verifies(&first), verifies(&second));
    let same = first.result == second.result;
    let observed = format!(
        "result bytes {}; signatures {} / {}",
        if same {
            "identical".to_owned()
        } else {
            format!(
                "differ ({} vs {})",
                hex::encode(&first.result),
                hex::encode(&second.result)
            )
        },
        if first_ok { "verify" } else { "DO NOT verify" },
        if second_ok { "verify" } else { "DO NOT verify" },
    );
    CaseResult::check(same && first_ok && second_ok, expected, observed)
}

async fn id_out_of_range(target: Arc<ServerTarget>) -> CaseResult {
    let (mut session, grant) = match established(&target).await {
        Ok(established) => established,
        Err(result) => return result,
    };
    let (request, _) = match first_call(&target, &mut session, &grant, 1).await {
        Ok(call) => call,
        Err(result) => return result,
    };
    let out_of_range = session.request(1 << 62, &request.tool, &request.args);
    expect_rpc_error(&mut session, &out_of_range, ErrorCode::INVALID_ARGUMENT)
        .await
        .0
}

async fn cancel_unknown_id(target: Arc<ServerTarget>) -> CaseResult {
    let (mut session, _) = match established(&target).await {
        Ok(established) => established,
        Err(result) => return result,
    };
    session.send(&Message::Cancel(Cancel { id: 424_242 })).await;
    let expected = "no reply within the quiet period; connection open";
    match session.collect_for(target.options.quiet).await {
        Ok(messages) if messages.is_empty() => still_open(&mut session, expected).await,
        Ok(messages) => CaseResult::check(
            false,
            expected,
            messages
                .iter()
                .map(|m| m.kind())
                .collect::<Vec<_>>()
                .join(", "),
        ),
        Err(ending) => CaseResult::check(false, expected, ending.to_string()),
    }
}
