//! Client-mode cases: the adversarial peer ([`crate::peer`]) plays the server, the
//! client under test runs through its shim ([`crate::shim`]).
//!
//! Each case judges both sides of the client: what it did on the wire (the close
//! code of its CLOSE record and close frame, or of its bare close frame during the
//! handshake; the records it sent or did not send) and what it reported to its
//! application through the shim (typed error, close code, result bytes). A client
//! that delivers a result the suite forged, tampered or sent after a CLOSE FAILs.

use crate::client::{call_args, ClientCase, ClientRun, ShimOutcome};
use crate::peer::{
    self, await_raw_close, record, Ending, Header, PeerError, Responder, ServerHelloOut, Session,
    SUBPROTOCOL,
};
use crate::{Case, CaseResult, Verdict};
use serde::Serialize;
use std::sync::Arc;
use std::time::Instant;
use tokio::task::JoinHandle;
use toolwire_protocol::manifest::{Manifest, ToolDescriptor};
use toolwire_protocol::message::{
    CallLimits, CapGrant, CapUpdate, Close, ErrorMessage, GrantedTool, KeyUpdate, Ping, Request,
    SignedManifest,
};
use toolwire_protocol::{CloseCode, Identity, IdentityKey, Message};

macro_rules! case {
    ($id:literal, [$($clause:literal),* $(,)?], $description:literal, $run:expr) => {
        Case {
            id: $id,
            clauses: &[$($clause),*],
            description: $description,
            run: $run,
        }
    };
}

/// Every client-mode case, in run order.
pub(super) fn client_cases() -> Vec<ClientCase> {
    vec![
        // ---- Baseline -----------------------------------------------------------
        case!("cli.baseline", ["TRN-017", "TRN-023", "HS-004", "HS-006", "HS-018", "HS-019", "ENV-001", "ENV-003", "REC-009", "REC-010", "MSG-005", "MSG-006", "MSG-007", "AMO-006", "CLS-001", "CLS-002", "ID-001"],
            "A well-formed server: the client offers toolwire.v1, completes the handshake, signs two REQUESTs with distinct ids, delivers the result bytes exactly as sent, and closes with a CLOSE record then a close frame.",
            |run| Box::pin(baseline(run))),
        case!("cli.fresh-ephemeral", ["HS-002", "KS-005"],
            "Two connections of the client use two different ephemeral keys and two different session ids.",
            |run| Box::pin(fresh_ephemeral(run))),
        case!("cli.plaintext-refused", ["TRN-001"],
            "A plain ws:// URL to a host that is not loopback (192.0.2.1): the client refuses it with a typed error before opening any connection.",
            |run| Box::pin(plaintext_refused(run))),
        // ---- 2.2 Upgrade --------------------------------------------------------
        case!("cli.subprotocol-not-selected", ["TRN-019"],
            "An upgrade response without Sec-WebSocket-Protocol: the client abandons the connection without sending a record.",
            |run| Box::pin(subprotocol(run, None))),
        case!("cli.subprotocol-other", ["TRN-019"],
            "An upgrade response selecting `chat`: the client abandons the connection without sending a record.",
            |run| Box::pin(subprotocol(run, Some("chat")))),
        // ---- Record 2 -----------------------------------------------------------
        case!("cli.record2.bad-version", ["REC-004", "REC-019", "HS-034", "HS-017"],
            "Record 2 with version byte 2: close frame 4002, empty reason, no record 3.",
            |run| Box::pin(record2_fault(run, 4002, r2_bad_version))),
        case!("cli.record2.short", ["REC-005", "HS-017"],
            "A 10-byte record 2: close frame 4010, no record 3.",
            |run| Box::pin(record2_fault(run, 4010, |_, _| Ok(vec![1, 2, 0, 0, 0, 0, 0, 0, 0, 0])))),
        case!("cli.record2.wrong-type", ["REC-017", "HS-017"],
            "Record 2 with type 3: close frame 4010, no record 3.",
            |run| Box::pin(record2_fault(run, 4010, r2_wrong_type))),
        case!("cli.record2.nonzero-fields", ["REC-018", "HS-017"],
            "Record 2 with seq 1: close frame 4010, no record 3.",
            |run| Box::pin(record2_fault(run, 4010, r2_nonzero_seq))),
        case!("cli.record2.oversize", ["REC-016", "TRN-025", "LIM-001", "LIM-002"],
            "Record 2 with a 65537-byte body: close frame 1009 MESSAGE_TOO_BIG.",
            |run| Box::pin(record2_fault(run, 1009, |_, _| Ok(record(Header::handshake(2), &vec![0x22; 65537]))))),
        case!("cli.record2.tampered", ["HS-010", "HS-017"],
            "Record 2 with one bit of the encrypted ServerHello flipped: close frame 4000, no record 3.",
            |run| Box::pin(record2_fault(run, 4000, r2_tampered))),
        case!("cli.record2.too-short", ["HS-010"],
            "Record 2 with a 50-byte body (message 2 is at least 96 bytes): close frame 4000.",
            |run| Box::pin(record2_fault(run, 4000, |_, _| Ok(record(Header::handshake(2), &[0x22; 50]))))),
        case!("cli.record2.endpoint-mismatch", ["HS-003", "HS-004", "HS-010"],
            "A server binding another endpoint (a trailing slash) into the prologue: message 2 does not decrypt, close frame 4000.",
            |run| Box::pin(record2_fault(run, 4000, r2_endpoint_mismatch))),
        case!("cli.record2.low-order-key", ["HS-011"],
            "Record 2 whose ephemeral key is all zeros (a non-contributory DH): close frame 4000.",
            |run| Box::pin(record2_fault(run, 4000, |_, _| {
                let mut body = vec![0u8; 32];
                body.extend_from_slice(&[0x5a; 120]);
                Ok(record(Header::handshake(2), &body))
            }))),
        case!("cli.server-hello.malformed", ["HS-012", "CNV-008"],
            "A ServerHello without `params`: close frame 4000.",
            |run| Box::pin(record2_fault(run, 4000, r2_hello_malformed))),
        case!("cli.server-hello.invalid-identity", ["HS-013", "ID-002"],
            "A ServerHello whose identity is a small-order point: close frame 4001.",
            |run| Box::pin(record2_fault(run, 4001, r2_invalid_identity))),
        case!("cli.server-hello.bad-signature", ["HS-014", "ID-004"],
            "A ServerHello whose signature covers another static key: close frame 4001.",
            |run| Box::pin(record2_fault(run, 4001, r2_bad_signature))),
        case!("cli.server-hello.short-signature", ["HS-014", "ID-005"],
            "A ServerHello with a 63-byte signature: close frame 4001.",
            |run| Box::pin(record2_fault(run, 4001, r2_short_signature))),
        case!("cli.server-hello.unpinned", ["HS-015", "ID-003"],
            "A server proving, correctly, an identity the client does not pin: close frame 4001, no record 3.",
            |run| Box::pin(record2_fault(run, 4001, r2_unpinned))),
        case!("cli.server-hello.check-order", ["HS-016"],
            "A ServerHello both malformed (no `params`) and with an invalid identity: the earlier check decides, close frame 4000.",
            |run| Box::pin(record2_fault(run, 4000, r2_malformed_and_invalid))),
        case!("cli.hs.stall", ["HS-033", "LIM-005"],
            "A server that never sends record 2: the client closes with TIMEOUT (4009) after its 5 s handshake deadline.",
            |run| Box::pin(stall(run))),
        // ---- 6. Sealed records from the server ---------------------------------
        case!("cli.rec.bad-version", ["REC-004", "REC-033", "CLS-001", "CLS-002", "CLS-011"],
            "The RESPONSE in a record with version byte 2: CLOSE 4002 then close frame 4002; the call fails, no result.",
            |run| Box::pin(response_fault(run, 4002, rf_bad_version))),
        case!("cli.rec.wrong-type", ["REC-021"],
            "The RESPONSE in a record of type 3: close 4010, no result.",
            |run| Box::pin(response_fault(run, 4010, rf_wrong_type))),
        case!("cli.rec.reserved-bits", ["REC-022"],
            "The RESPONSE in a record with reserved bits set: close 4010, no result.",
            |run| Box::pin(response_fault(run, 4010, rf_reserved))),
        case!("cli.rec.wrong-epoch", ["REC-023"],
            "The RESPONSE in a record labelled epoch 1 without a KEY_UPDATE: close 4010, no result.",
            |run| Box::pin(response_fault(run, 4010, rf_wrong_epoch))),
        case!("cli.rec.seq-limit", ["REC-024"],
            "The RESPONSE in a record with seq 2^62: close 4005, no result.",
            |run| Box::pin(response_fault(run, 4005, rf_seq_limit))),
        case!("cli.rec.replayed", ["REC-025", "REC-030", "RPL-007"],
            "The CAP_GRANT record sent again instead of the RESPONSE: close 4004 REPLAY_DETECTED, no result.",
            |run| Box::pin(replayed(run))),
        case!("cli.rec.reordered", ["REC-026", "RPL-008"],
            "The RESPONSE sealed with seq 2 while 1 is expected: close 4004, no result.",
            |run| Box::pin(response_fault(run, 4004, rf_reordered))),
        case!("cli.rec.short-body", ["REC-027"],
            "A sealed record with a 10-byte body: close 4010, no result.",
            |run| Box::pin(response_fault(run, 4010, |s, _| record(s.next_header(), &[0x77; 10])))),
        case!("cli.rec.tampered", ["REC-028", "REC-029", "CLS-003"],
            "The RESPONSE record with one ciphertext bit flipped: close 4003 with empty reasons, no result.",
            |run| Box::pin(response_fault(run, 4003, rf_tampered))),
        case!("cli.rec.truncated", ["REC-028"],
            "The RESPONSE record missing its last byte: close 4003, no result.",
            |run| Box::pin(response_fault(run, 4003, rf_truncated))),
        case!("cli.rec.not-a-message", ["REC-032"],
            "A sealed record whose plaintext is not msgpack: close 4010, no result.",
            |run| Box::pin(response_fault(run, 4010, |s, _| s.seal_bytes(&[0xc1, 0xc1])))),
        case!("cli.text-frame", ["TRN-024", "CLS-011"],
            "A text message instead of the RESPONSE: close 1003 UNSUPPORTED_DATA, no result.",
            |run| Box::pin(text_frame(run))),
        case!("cli.oversize-frame", ["TRN-025", "LIM-002", "REC-020"],
            "A 65553-byte binary message instead of the RESPONSE: close 1009, no result.",
            |run| Box::pin(response_fault(run, 1009, |_, _| vec![0x42; 16 + 65536 + 1]))),
        // ---- 1, 9. Messages ---------------------------------------------------
        case!("cli.msg.unknown-type", ["MSG-002"],
            "A message of type `NOPE`: close 4010, no result.",
            |run| Box::pin(response_fault(run, 4010, |s, _| s.seal_bytes(&raw_message("NOPE", &[0x81, 0xa5, b'n', b'o', b'n', b'c', b'e', 0x05]))))),
        case!("cli.msg.missing-body", ["MSG-003"],
            "A message without `body`: close 4010, no result.",
            |run| Box::pin(response_fault(run, 4010, |s, _| s.seal_bytes(&missing_body())))),
        case!("cli.msg.client-only-kind", ["MSG-004"],
            "The server sends a REQUEST (a client-only kind): close 4010, no result.",
            |run| Box::pin(response_fault(run, 4010, rf_client_only_kind))),
        case!("cli.msg.missing-field", ["CNV-008", "MSG-003"],
            "A RESPONSE without `result`: close 4010, no result.",
            |run| Box::pin(response_fault(run, 4010, rf_missing_result))),
        case!("cli.msg.invalid-utf8", ["CNV-010"],
            "An ERROR whose `message` str is not UTF-8: close 4010.",
            |run| Box::pin(response_fault(run, 4010, rf_invalid_utf8))),
        case!("cli.msg.duplicate-key", ["CNV-011"],
            "A PING whose body has `nonce` twice: close 4010.",
            |run| Box::pin(response_fault(run, 4010, rf_duplicate_key))),
        case!("cli.msg.trailing-bytes", ["CNV-012"],
            "A RESPONSE followed by a stray byte in the same plaintext: close 4010, no result.",
            |run| Box::pin(response_fault(run, 4010, rf_trailing))),
        case!("cli.msg.deep-nesting", ["CNV-013"],
            "A RESPONSE with an unknown field nested 40 levels deep: close 4010, no result.",
            |run| Box::pin(response_fault(run, 4010, rf_deep))),
        case!("cli.msg.nil-optional", ["CNV-005", "CNV-006"],
            "A CAP_GRANT whose optional `expires_at_ms` is nil and with an unknown field: accepted, the call completes.",
            |run| Box::pin(nil_optional(run))),
        case!("cli.msg.error-not-fatal", ["MSG-010"],
            "An ERROR without id before the RESPONSE: the connection stays, the result is delivered.",
            |run| Box::pin(interleaved(run, Interleave::ErrorWithoutId))),
        case!("cli.msg.unknown-id", ["MSG-011"],
            "A RESPONSE for a request id the client never sent, then the real one: ignored, the real result is delivered.",
            |run| Box::pin(interleaved(run, Interleave::UnknownId))),
        case!("cli.unknown-error-code", ["ERR-002"],
            "The call answered with ERROR code 777: the client reports the call failed with code 777.",
            |run| Box::pin(unknown_error_code(run))),
        // ---- 8. Rekey and keepalive -------------------------------------------
        case!("cli.key-update", ["KEY-004", "KS-003"],
            "KEY_UPDATE {epoch: 1}, then the RESPONSE sealed under REKEY(k2) at epoch 1: the result is delivered.",
            |run| Box::pin(interleaved(run, Interleave::KeyUpdate))),
        case!("cli.key-update.bad-epoch", ["KEY-005"],
            "KEY_UPDATE {epoch: 2} at epoch 0: close 4010, no result.",
            |run| Box::pin(response_fault(run, 4010, |s, _| s.seal_bytes(&Message::KeyUpdate(KeyUpdate { epoch: 2 }).encode())))),
        case!("cli.ping", ["LIFE-008"],
            "A PING from the server before the RESPONSE: answered with a PONG of the same nonce; the result is delivered.",
            |run| Box::pin(interleaved(run, Interleave::Ping))),
        case!("cli.unsolicited-pong", ["LIFE-009"],
            "An unsolicited PONG before the RESPONSE: ignored, the result is delivered.",
            |run| Box::pin(interleaved(run, Interleave::Pong))),
        case!("cli.ws-ping-frame", ["TRN-028"],
            "A WebSocket ping frame before the RESPONSE: no effect on toolwire state (no record, sequence numbers unchanged), the result is delivered.",
            |run| Box::pin(interleaved(run, Interleave::WsPing))),
        // ---- 10. Envelopes ------------------------------------------------------
        case!("cli.response.bad-signature", ["ENV-007", "ID-004"],
            "A RESPONSE whose signature has one bit flipped: the call fails, the result is not delivered.",
            |run| Box::pin(bad_response(run, BadResponse::Flipped))),
        case!("cli.response.unsigned", ["ENV-007"],
            "A RESPONSE without signature to a signed REQUEST: the call fails, the result is not delivered.",
            |run| Box::pin(bad_response(run, BadResponse::Unsigned))),
        case!("cli.response.other-session", ["ENV-002", "ENV-007"],
            "A RESPONSE signed over another session id: the call fails, the result is not delivered.",
            |run| Box::pin(bad_response(run, BadResponse::OtherSession))),
        case!("cli.response.other-result", ["ENV-007", "MSG-006"],
            "A RESPONSE whose result bytes differ from the ones signed: the call fails, the result is not delivered.",
            |run| Box::pin(bad_response(run, BadResponse::OtherResult))),
        // ---- 11, 12. Manifest and grants ---------------------------------------
        case!("cli.manifest.bad-signature", ["MAN-004", "MAN-006"],
            "A CAP_GRANT whose manifest signature has one bit flipped: close 4010, no call sent.",
            |run| Box::pin(bad_manifest(run, ManifestFault::Signature))),
        case!("cli.manifest.wrong-server", ["MAN-005", "MAN-006"],
            "A CAP_GRANT whose manifest, correctly signed, names another server: close 4010, no call sent.",
            |run| Box::pin(bad_manifest(run, ManifestFault::Server))),
        case!("cli.manifest.malformed", ["MAN-006"],
            "A CAP_GRANT whose signed manifest bytes do not decode: close 4010, no call sent.",
            |run| Box::pin(bad_manifest(run, ManifestFault::Malformed))),
        case!("cli.manifest.changed", ["MAN-010", "MAN-011", "GRT-041"],
            "A CAP_UPDATE changing the description of `echo` after the first call: the second call is refused locally with MANIFEST_CHANGED, no REQUEST is sent.",
            |run| Box::pin(manifest_changed(run))),
        // ---- 14. At-most-once across connections --------------------------------
        case!("cli.reconnect-resume", ["AMO-003", "AMO-008", "AMO-009"],
            "The server closes with SESSION_EXPIRED (4006) before answering: a client that reconnects names the first lineage in resume.lineage and re-sends the same request id with retry true; the answer on the new connection is delivered. (A client that does not reconnect is INFO: reconnecting is a SHOULD, LIFE-004.)",
            |run| Box::pin(reconnect_resume(run))),
        // ---- 16. Closing --------------------------------------------------------
        case!("cli.close.unknown-code", ["CLS-006", "CLS-007", "CLS-004"],
            "The server answers the REQUEST with CLOSE {code: 4321}: the client reports 4321, sends no record in reply (no CLOSE).",
            |run| Box::pin(server_close(run, 4321, false))),
        case!("cli.close.then-response", ["CLS-005", "CLS-006"],
            "CLOSE {code: 4007}, then a valid RESPONSE: the client does not process it, the call fails with 4007.",
            |run| Box::pin(server_close(run, 4007, true))),
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

fn harness(what: impl std::fmt::Display) -> CaseResult {
    CaseResult::harness_error(what.to_string())
}

/// The tool the suite's server offers.
fn echo_tool() -> ToolDescriptor {
    ToolDescriptor {
        name: crate::client::TOOL.to_owned(),
        description: "Returns its arguments.".to_owned(),
        input_schema: "{\"type\":\"object\"}".to_owned(),
        output_schema: String::new(),
    }
}

fn signed_manifest(server: &Identity, tools: &[ToolDescriptor]) -> SignedManifest {
    Manifest {
        server: server.public_key().to_bytes().to_vec().into(),
        tools: tools.to_vec(),
    }
    .sign(server)
}

fn granted(tools: &[ToolDescriptor]) -> Vec<GrantedTool> {
    tools
        .iter()
        .map(|t| GrantedTool {
            name: t.name.clone(),
            digest: t.digest().to_vec().into(),
        })
        .collect()
}

fn limits() -> CallLimits {
    CallLimits {
        rate_per_sec: 100,
        burst: 200,
        max_in_flight: 64,
    }
}

fn cap_grant(server: &Identity) -> CapGrant {
    let tools = [echo_tool()];
    CapGrant {
        granted: granted(&tools),
        limits: limits(),
        expires_at_ms: None,
        policy_version: 1,
        manifest: signed_manifest(server, &tools),
    }
}

/// The result the suite answers with: `{"n": 5}` with 5 as a uint32 (not the
/// shortest encoding), so that a client re-encoding it is caught (MSG-006).
fn result_bytes() -> Vec<u8> {
    vec![0x81, 0xa1, b'n', 0xce, 0, 0, 0, 5]
}

fn encode(value: &impl Serialize) -> Vec<u8> {
    rmp_serde::to_vec_named(value).unwrap_or_default()
}

/// msgpack of `{"type": kind, "body": <body bytes>}`.
fn raw_message(kind: &str, body: &[u8]) -> Vec<u8> {
    let mut out = vec![0x82, 0xa4];
    out.extend_from_slice(b"type");
    out.extend_from_slice(&str_header(kind.len()));
    out.extend_from_slice(kind.as_bytes());
    out.push(0xa4);
    out.extend_from_slice(b"body");
    out.extend_from_slice(body);
    out
}

fn str_header(len: usize) -> Vec<u8> {
    if len < 32 {
        vec![0xa0 | u8::try_from(len).unwrap_or(0)]
    } else {
        vec![0xd9, u8::try_from(len).unwrap_or(u8::MAX)]
    }
}

fn missing_body() -> Vec<u8> {
    let mut out = vec![0x81, 0xa4];
    out.extend_from_slice(b"type");
    out.push(0xa4);
    out.extend_from_slice(b"PING");
    out
}

async fn join(client: JoinHandle<ShimOutcome>) -> ShimOutcome {
    client.await.unwrap_or_else(|error| ShimOutcome {
        detail: format!("shim task failed: {error}"),
        ..ShimOutcome::default()
    })
}

/// The verdict when the shim says it does not implement the case.
fn unimplemented(outcome: &ShimOutcome) -> Option<CaseResult> {
    outcome.unimplemented().then(|| {
        CaseResult::new(
            Verdict::Unimplemented,
            "",
            outcome.describe(),
            "the shim exited 89 (unimplemented)",
        )
    })
}

/// What the shim must report after a failure: no result delivered; when it reports
/// a close code, `code`.
fn shim_failed_with(outcome: &ShimOutcome, code: Option<u16>) -> Result<(), String> {
    if outcome.delivered() {
        return Err("the client DELIVERED a result".to_owned());
    }
    let Some(report) = &outcome.report else {
        return Err(format!("no report line ({})", outcome.detail));
    };
    if report.outcome != "error" {
        return Err(format!("outcome {}", report.outcome));
    }
    if let (Some(expected), Some(reported)) = (code, report.close_code) {
        if expected != reported {
            return Err(format!("reported close code {reported}, not {expected}"));
        }
    }
    Ok(())
}

/// The server side of a well-formed handshake; the client has been started.
async fn handshake(run: &ClientRun) -> Result<(Session, peer::UpgradeSeen, Vec<u8>), String> {
    let step = run.options.step;
    let (mut socket, seen) = peer::accept(&run.listener, Some(SUBPROTOCOL), step)
        .await
        .map_err(|e| e.to_string())?;
    let record1 = peer::next_binary(&mut socket, step)
        .await
        .ok_or("no record 1")?;
    let mut responder = Responder::new(run.server.clone(), &run.url).map_err(|e| e.to_string())?;
    responder
        .read_record1(&record1)
        .map_err(|e| e.to_string())?;
    let hello = encode(&responder.server_hello());
    let record2 = responder.record2(&hello).map_err(|e| e.to_string())?;
    if !peer::send_binary(&mut socket, record2, step).await {
        return Err("could not send record 2".into());
    }
    let record3 = peer::next_binary(&mut socket, step)
        .await
        .ok_or("no record 3")?;
    let client_hello = responder
        .read_record3(&record3)
        .map_err(|e| e.to_string())?;
    let client_key = IdentityKey::from_slice(&client_hello.identity)
        .map_err(|e| format!("ClientHello.identity: {e:?}"))?;
    if client_key != run.client.public_key() {
        return Err("ClientHello.identity is not the identity of --identity-file (HS-018)".into());
    }
    let keys = responder.finish().map_err(|e| e.to_string())?;
    let session = Session::from_server_keys(socket, run.server.clone(), client_key, &keys, step);
    Ok((session, seen, record1))
}

/// Sends `grant` and waits for the client's first REQUEST.
async fn until_request(session: &mut Session, grant: CapGrant) -> Result<Request, String> {
    session.send(&Message::CapGrant(grant)).await;
    next_request(session).await
}

async fn next_request(session: &mut Session) -> Result<Request, String> {
    loop {
        match session.next().await {
            Ok(Message::Request(request)) => return Ok(request),
            Ok(_) => {}
            Err(ending) => return Err(format!("no REQUEST: {ending}")),
        }
    }
}

/// Runs the handshake and CAP_GRANT, then waits for the first REQUEST. `Err` is the
/// case's result (after joining the client).
async fn serve_until_request(
    run: &ClientRun,
    client: JoinHandle<ShimOutcome>,
) -> Result<(Session, Request, JoinHandle<ShimOutcome>), CaseResult> {
    let (mut session, _, _) = match handshake(run).await {
        Ok(served) => served,
        Err(error) => return Err(precondition_failed(client, error).await),
    };
    match until_request(&mut session, cap_grant(&run.server)).await {
        Ok(request) => Ok((session, request, client)),
        Err(error) => Err(precondition_failed(client, error).await),
    }
}

async fn precondition_failed(client: JoinHandle<ShimOutcome>, error: String) -> CaseResult {
    let outcome = join(client).await;
    if let Some(result) = unimplemented(&outcome) {
        return result;
    }
    // The client did not complete a well-formed exchange: that is the client's fault,
    // not the harness's (a well-formed server is the precondition every case shares).
    CaseResult::check(
        false,
        "a well-formed handshake and first REQUEST",
        format!("{error}; client: {}", outcome.describe()),
    )
}

/// A CLOSE record with `code`, then a close frame with the same code, empty
/// reasons, nothing after.
fn sealed_close(ending: &Ending, code: u16) -> Result<(), String> {
    let reasons_empty = ending.record.as_ref().is_none_or(|(_, r)| r.is_empty())
        && ending.frame.as_ref().is_none_or(|(_, r)| r.is_empty());
    if ending.record_code() == Some(code)
        && ending.frame_code() == Some(code)
        && reasons_empty
        && ending.records_after_close == 0
    {
        Ok(())
    } else {
        Err(ending.to_string())
    }
}

fn verdict(
    expected: String,
    wire: Result<(), String>,
    wire_observed: String,
    shim: Result<(), String>,
    outcome: &ShimOutcome,
) -> CaseResult {
    let ok = wire.is_ok() && shim.is_ok();
    let mut observed = format!("wire: {wire_observed}; client: {}", outcome.describe());
    if let Err(problem) = shim {
        observed.push_str(&format!(" ({problem})"));
    }
    CaseResult::check(ok, expected, observed)
}

// =====================================================================================
// Baseline
// =====================================================================================

async fn baseline(run: Arc<ClientRun>) -> CaseResult {
    let client = run.start(2);
    let expected = "offers toolwire.v1; two signed REQUESTs with distinct ids; result bytes delivered unchanged; CLOSE 1000 then close frame 1000";
    let (mut session, seen, _) = match handshake(&run).await {
        Ok(served) => served,
        Err(error) => return precondition_failed(client, error).await,
    };
    let mut problems = Vec::new();
    if !seen.offered.iter().any(|p| p == SUBPROTOCOL) {
        problems.push(format!("offered subprotocols {:?}", seen.offered));
    }
    session
        .send(&Message::CapGrant(cap_grant(&run.server)))
        .await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let request = match next_request(&mut session).await {
            Ok(request) => request,
            Err(error) => {
                problems.push(error);
                break;
            }
        };
        if !session.verify_request(&request) {
            problems.push(format!("REQUEST {} signature does not verify", request.id));
        }
        if request.args.as_ref() != call_args().as_slice() {
            problems.push(format!(
                "REQUEST args {} differ from the shim's --args-hex",
                hex::encode(&request.args)
            ));
        }
        if ids.contains(&request.id) {
            problems.push(format!("request id {} used twice", request.id));
        }
        ids.push(request.id);
        let response = session.response(&request, &result_bytes());
        session.send(&Message::Response(response)).await;
    }
    let ending = session.await_close(run.options.step).await;
    let outcome = join(client).await;
    if let Some(result) = unimplemented(&outcome) {
        return result;
    }
    if ending.record_code() != Some(1000) || ending.frame_code() != Some(1000) {
        problems.push(format!("ending: {ending}"));
    }
    problems.extend(session.violations.iter().cloned());
    let delivered = outcome
        .report
        .as_ref()
        .and_then(|r| r.result_hex.clone())
        .unwrap_or_default();
    if outcome.exit != Some(0) || delivered != hex::encode(result_bytes()) {
        problems.push(format!(
            "delivered {delivered:?} instead of {}",
            hex::encode(result_bytes())
        ));
    }
    CaseResult::check(
        problems.is_empty(),
        expected,
        format!(
            "request ids {ids:?}; {ending}; client: {}{}",
            outcome.describe(),
            if problems.is_empty() {
                String::new()
            } else {
                format!(" — {}", problems.join("; "))
            }
        ),
    )
}

async fn fresh_ephemeral(run: Arc<ClientRun>) -> CaseResult {
    let mut ephemerals = Vec::new();
    let mut sessions = Vec::new();
    for _ in 0..2 {
        let client = run.start(1);
        let (mut session, _, record1) = match handshake(&run).await {
            Ok(served) => served,
            Err(error) => return precondition_failed(client, error).await,
        };
        if let Ok(request) = until_request(&mut session, cap_grant(&run.server)).await {
            let response = session.response(&request, &result_bytes());
            session.send(&Message::Response(response)).await;
        }
        let _ = session.await_close(run.options.step).await;
        let outcome = join(client).await;
        if let Some(result) = unimplemented(&outcome) {
            return result;
        }
        ephemerals.push(record1[peer::HEADER_LEN..].to_vec());
        sessions.push(session.session_id);
    }
    let ok = ephemerals[0] != ephemerals[1] && sessions[0] != sessions[1];
    CaseResult::check(
        ok,
        "two different ephemeral keys and session ids",
        format!(
            "ephemeral keys {}; session ids {}",
            if ephemerals[0] == ephemerals[1] {
                "EQUAL"
            } else {
                "differ"
            },
            if sessions[0] == sessions[1] {
                "EQUAL"
            } else {
                "differ"
            }
        ),
    )
}

async fn subprotocol(run: Arc<ClientRun>, select: Option<&'static str>) -> CaseResult {
    let client = run.start(1);
    let step = run.options.step;
    let (mut socket, _) = match peer::accept(&run.listener, select, step).await {
        Ok(accepted) => accepted,
        // tungstenite refuses a response selecting a protocol the client did not
        // offer before the upgrade completes: nothing was sent either way.
        Err(_) => {
            let outcome = join(client).await;
            return judge_no_records(0, &outcome);
        }
    };
    let ending = await_raw_close(&mut socket, step).await;
    let outcome = join(client).await;
    judge_no_records(ending.binary_messages, &outcome)
}

fn judge_no_records(records: usize, outcome: &ShimOutcome) -> CaseResult {
    if let Some(result) = unimplemented(outcome) {
        return result;
    }
    let shim = shim_failed_with(outcome, None);
    verdict(
        "no record sent; the connect fails".to_owned(),
        if records == 0 {
            Ok(())
        } else {
            Err(String::new())
        },
        format!("{records} records sent"),
        shim,
        outcome,
    )
}

// =====================================================================================
// Record 2
// =====================================================================================

type Record2Fn = fn(&ClientRun, &[u8]) -> Result<Vec<u8>, PeerError>;

/// Accepts the client, reads record 1, answers with `build`, and expects a bare
/// close frame with `code` and no record 3 (HS-017, HS-034).
async fn record2_fault(run: Arc<ClientRun>, code: u16, build: Record2Fn) -> CaseResult {
    let client = run.start(1);
    let step = run.options.step;
    let (mut socket, _) = match peer::accept(&run.listener, Some(SUBPROTOCOL), step).await {
        Ok(accepted) => accepted,
        Err(error) => return precondition_failed(client, error.to_string()).await,
    };
    let Some(record1) = peer::next_binary(&mut socket, step).await else {
        return precondition_failed(client, "no record 1".into()).await;
    };
    let record2 = match build(&run, &record1) {
        Ok(record2) => record2,
        Err(error) => {
            client.abort();
            return harness(error);
        }
    };
    peer::send_binary(&mut socket, record2, step).await;
    let ending = await_raw_close(&mut socket, step).await;
    let outcome = join(client).await;
    if let Some(result) = unimplemented(&outcome) {
        return result;
    }
    let wire_ok = ending.frame_code() == Some(code)
        && ending.frame.as_ref().is_some_and(|(_, r)| r.is_empty())
        && ending.binary_messages == 0;
    verdict(
        format!(
            "close frame {} with empty reason, no record 3; the connect fails",
            name(code)
        ),
        if wire_ok { Ok(()) } else { Err(String::new()) },
        ending.to_string(),
        shim_failed_with(&outcome, Some(code)),
        &outcome,
    )
}

fn responder(run: &ClientRun, record1: &[u8], endpoint: &str) -> Result<Responder, PeerError> {
    let mut responder = Responder::new(run.server.clone(), endpoint)?;
    responder.read_record1(record1)?;
    Ok(responder)
}

fn standard_record2(run: &ClientRun, record1: &[u8]) -> Result<Vec<u8>, PeerError> {
    let mut responder = responder(run, record1, &run.url)?;
    let hello = encode(&responder.server_hello());
    responder.record2(&hello)
}

fn r2_bad_version(run: &ClientRun, record1: &[u8]) -> Result<Vec<u8>, PeerError> {
    let mut record2 = standard_record2(run, record1)?;
    record2[0] = 2;
    Ok(record2)
}

fn r2_wrong_type(run: &ClientRun, record1: &[u8]) -> Result<Vec<u8>, PeerError> {
    let mut record2 = standard_record2(run, record1)?;
    record2[1] = 3;
    Ok(record2)
}

fn r2_nonzero_seq(run: &ClientRun, record1: &[u8]) -> Result<Vec<u8>, PeerError> {
    let mut record2 = standard_record2(run, record1)?;
    record2[8] = 1;
    Ok(record2)
}

fn r2_tampered(run: &ClientRun, record1: &[u8]) -> Result<Vec<u8>, PeerError> {
    let mut record2 = standard_record2(run, record1)?;
    let last = record2.len() - 20;
    record2[last] ^= 0x01;
    Ok(record2)
}

fn r2_endpoint_mismatch(run: &ClientRun, record1: &[u8]) -> Result<Vec<u8>, PeerError> {
    let mut responder = responder(run, record1, &format!("{}/", run.url))?;
    let hello = encode(&responder.server_hello());
    responder.record2(&hello)
}

fn r2_hello_malformed(run: &ClientRun, record1: &[u8]) -> Result<Vec<u8>, PeerError> {
    #[derive(Serialize)]
    struct NoParams {
        #[serde(with = "serde_bytes")]
        identity: Vec<u8>,
        #[serde(with = "serde_bytes")]
        signature: Vec<u8>,
    }
    let mut responder = responder(run, record1, &run.url)?;
    let hello = responder.server_hello();
    let payload = encode(&NoParams {
        identity: hello.identity,
        signature: hello.signature,
    });
    responder.record2(&payload)
}

fn small_order_key() -> Vec<u8> {
    let mut key = vec![0u8; 32];
    key[0] = 1;
    key
}

fn r2_invalid_identity(run: &ClientRun, record1: &[u8]) -> Result<Vec<u8>, PeerError> {
    let mut responder = responder(run, record1, &run.url)?;
    let mut hello = responder.server_hello();
    hello.identity = small_order_key();
    responder.record2(&encode(&hello))
}

fn r2_bad_signature(run: &ClientRun, record1: &[u8]) -> Result<Vec<u8>, PeerError> {
    let mut responder = responder(run, record1, &run.url)?;
    let mut hello = responder.server_hello();
    hello.signature = run
        .server
        .sign(&peer::pae(&[b"toolwire/1 server static", &[0x5a; 32]]))
        .to_vec();
    responder.record2(&encode(&hello))
}

fn r2_short_signature(run: &ClientRun, record1: &[u8]) -> Result<Vec<u8>, PeerError> {
    let mut responder = responder(run, record1, &run.url)?;
    let mut hello = responder.server_hello();
    hello.signature.pop();
    responder.record2(&encode(&hello))
}

fn r2_unpinned(run: &ClientRun, record1: &[u8]) -> Result<Vec<u8>, PeerError> {
    let stranger = Identity::generate(&mut rand_core::OsRng);
    let mut responder = Responder::new(stranger, &run.url)?;
    responder.read_record1(record1)?;
    let hello: ServerHelloOut = responder.server_hello();
    responder.record2(&encode(&hello))
}

fn r2_malformed_and_invalid(run: &ClientRun, record1: &[u8]) -> Result<Vec<u8>, PeerError> {
    #[derive(Serialize)]
    struct NoParams {
        #[serde(with = "serde_bytes")]
        identity: Vec<u8>,
        #[serde(with = "serde_bytes")]
        signature: Vec<u8>,
    }
    let mut responder = responder(run, record1, &run.url)?;
    let payload = encode(&NoParams {
        identity: small_order_key(),
        signature: vec![0; 64],
    });
    responder.record2(&payload)
}

async fn stall(run: Arc<ClientRun>) -> CaseResult {
    let Some(wait) = run.options.handshake_stall else {
        return CaseResult::skip("slow cases disabled (handshake stall)");
    };
    let client = run.start(1);
    let (mut socket, _) =
        match peer::accept(&run.listener, Some(SUBPROTOCOL), run.options.step).await {
            Ok(accepted) => accepted,
            Err(error) => return precondition_failed(client, error.to_string()).await,
        };
    let started = Instant::now();
    let ending = await_raw_close(&mut socket, wait).await;
    let elapsed = started.elapsed();
    let outcome = join(client).await;
    if let Some(result) = unimplemented(&outcome) {
        return result;
    }
    let wire_ok = ending.frame_code() == Some(4009)
        && ending.frame.as_ref().is_some_and(|(_, r)| r.is_empty());
    let result = verdict(
        "close frame 4009 TIMEOUT after the handshake deadline; the connect fails".to_owned(),
        if wire_ok { Ok(()) } else { Err(String::new()) },
        format!("{ending} after {elapsed:.1?}"),
        shim_failed_with(&outcome, Some(4009)),
        &outcome,
    );
    if result.verdict == Verdict::Pass && elapsed.as_secs_f64() < 4.0 {
        return CaseResult {
            verdict: Verdict::Info,
            ..result
        }
        .with_detail("earlier than the default 5 s deadline (LIM-005 is a default)");
    }
    result
}

// =====================================================================================
// Sealed records from the server
// =====================================================================================

type ResponseFaultFn = fn(&mut Session, &Request) -> Vec<u8>;

fn response_message(session: &Session, request: &Request) -> Vec<u8> {
    Message::Response(session.response(request, &result_bytes())).encode()
}

/// Serves until the first REQUEST, answers with the bytes `build` makes, and expects
/// the client to close with `code` (CLOSE record then close frame) and report the
/// call failed without a result.
async fn response_fault(run: Arc<ClientRun>, code: u16, build: ResponseFaultFn) -> CaseResult {
    let client = run.start(1);
    let (mut session, request, client) = match serve_until_request(&run, client).await {
        Ok(served) => served,
        Err(result) => return result,
    };
    let bytes = build(&mut session, &request);
    session.send_raw(bytes).await;
    finish_close(&run, session, client, code).await
}

async fn finish_close(
    run: &ClientRun,
    mut session: Session,
    client: JoinHandle<ShimOutcome>,
    code: u16,
) -> CaseResult {
    let ending = session.await_close(run.options.step).await;
    let outcome = join(client).await;
    if let Some(result) = unimplemented(&outcome) {
        return result;
    }
    verdict(
        format!(
            "CLOSE record {0}, then close frame {0}, empty reasons; the call fails without a result",
            name(code)
        ),
        sealed_close(&ending, code),
        ending.to_string(),
        shim_failed_with(&outcome, Some(code)),
        &outcome,
    )
}

fn rf_bad_version(session: &mut Session, request: &Request) -> Vec<u8> {
    let mut header = session.next_header();
    header.version = 2;
    let message = response_message(session, request);
    session.seal_with(header, &message)
}

fn rf_wrong_type(session: &mut Session, request: &Request) -> Vec<u8> {
    let mut header = session.next_header();
    header.record_type = 3;
    let message = response_message(session, request);
    session.seal_with(header, &message)
}

fn rf_reserved(session: &mut Session, request: &Request) -> Vec<u8> {
    let mut header = session.next_header();
    header.reserved = 0x0001;
    let message = response_message(session, request);
    session.seal_with(header, &message)
}

fn rf_wrong_epoch(session: &mut Session, request: &Request) -> Vec<u8> {
    let mut header = session.next_header();
    header.epoch = 1;
    let message = response_message(session, request);
    session.seal_with(header, &message)
}

fn rf_seq_limit(session: &mut Session, request: &Request) -> Vec<u8> {
    let mut header = session.next_header();
    header.seq = 1 << 62;
    let message = response_message(session, request);
    session.seal_with(header, &message)
}

fn rf_reordered(session: &mut Session, request: &Request) -> Vec<u8> {
    let mut header = session.next_header();
    header.seq += 1;
    let message = response_message(session, request);
    session.seal_with(header, &message)
}

fn rf_tampered(session: &mut Session, request: &Request) -> Vec<u8> {
    let message = response_message(session, request);
    let mut record = session.seal_bytes(&message);
    record[peer::HEADER_LEN] ^= 0x01;
    record
}

fn rf_truncated(session: &mut Session, request: &Request) -> Vec<u8> {
    let message = response_message(session, request);
    let mut record = session.seal_bytes(&message);
    record.pop();
    record
}

fn rf_client_only_kind(session: &mut Session, request: &Request) -> Vec<u8> {
    session.seal_bytes(&Message::Request(request.clone()).encode())
}

fn rf_missing_result(session: &mut Session, request: &Request) -> Vec<u8> {
    #[derive(Serialize)]
    struct NoResult {
        id: u64,
    }
    #[derive(Serialize)]
    struct Envelope {
        #[serde(rename = "type")]
        kind: &'static str,
        body: NoResult,
    }
    session.seal_bytes(&encode(&Envelope {
        kind: "RESPONSE",
        body: NoResult { id: request.id },
    }))
}

fn rf_invalid_utf8(session: &mut Session, request: &Request) -> Vec<u8> {
    let _ = request;
    // {"code": 2, "message": <str ff fe>}
    let mut body = vec![0x82, 0xa4];
    body.extend_from_slice(b"code");
    body.push(0x02);
    body.push(0xa7);
    body.extend_from_slice(b"message");
    body.extend_from_slice(&[0xa2, 0xff, 0xfe]);
    session.seal_bytes(&raw_message("ERROR", &body))
}

fn rf_duplicate_key(session: &mut Session, _request: &Request) -> Vec<u8> {
    // {"nonce": 1, "nonce": 2}
    let mut body = vec![0x82, 0xa5];
    body.extend_from_slice(b"nonce");
    body.push(0x01);
    body.push(0xa5);
    body.extend_from_slice(b"nonce");
    body.push(0x02);
    session.seal_bytes(&raw_message("PING", &body))
}

fn rf_trailing(session: &mut Session, request: &Request) -> Vec<u8> {
    let mut message = response_message(session, request);
    message.push(0xc0);
    session.seal_bytes(&message)
}

fn rf_deep(session: &mut Session, request: &Request) -> Vec<u8> {
    // RESPONSE body {"id", "result", "signature", "x-deep": [[[…]]] (40 levels)}
    let response = session.response(request, &result_bytes());
    let mut body = vec![0x84, 0xa2, b'i', b'd'];
    body.extend_from_slice(&encode(&response.id));
    body.push(0xa6);
    body.extend_from_slice(b"result");
    body.extend_from_slice(&encode(&serde_bytes::Bytes::new(&response.result)));
    body.push(0xa9);
    body.extend_from_slice(b"signature");
    let signature = response.signature.unwrap_or_default();
    body.extend_from_slice(&encode(&serde_bytes::Bytes::new(&signature)));
    body.push(0xa6);
    body.extend_from_slice(b"x-deep");
    body.extend(std::iter::repeat_n(0x91, 40));
    body.push(0xc0);
    session.seal_bytes(&raw_message("RESPONSE", &body))
}

async fn replayed(run: Arc<ClientRun>) -> CaseResult {
    let client = run.start(1);
    let (mut session, _, _) = match handshake(&run).await {
        Ok(served) => served,
        Err(error) => return precondition_failed(client, error).await,
    };
    let grant = session.seal(&Message::CapGrant(cap_grant(&run.server)));
    session.send_raw(grant.clone()).await;
    if let Err(error) = next_request(&mut session).await {
        return precondition_failed(client, error).await;
    }
    session.send_raw(grant).await;
    finish_close(&run, session, client, 4004).await
}

async fn text_frame(run: Arc<ClientRun>) -> CaseResult {
    let client = run.start(1);
    let (mut session, _, client) = match serve_until_request(&run, client).await {
        Ok(served) => served,
        Err(result) => return result,
    };
    session
        .send_text("{\"result\": \"forged\"}".to_owned())
        .await;
    finish_close(&run, session, client, 1003).await
}

/// CAP_GRANT with `expires_at_ms: nil` and an unknown field.
async fn nil_optional(run: Arc<ClientRun>) -> CaseResult {
    #[derive(Serialize)]
    struct NilGrant<'a> {
        granted: &'a [GrantedTool],
        limits: CallLimits,
        expires_at_ms: Option<u64>,
        policy_version: u64,
        manifest: &'a SignedManifest,
        #[serde(rename = "x-future")]
        future: &'a str,
    }
    #[derive(Serialize)]
    struct Envelope<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        body: NilGrant<'a>,
    }
    let client = run.start(1);
    let (mut session, _, _) = match handshake(&run).await {
        Ok(served) => served,
        Err(error) => return precondition_failed(client, error).await,
    };
    let grant = cap_grant(&run.server);
    let bytes = encode(&Envelope {
        kind: "CAP_GRANT",
        body: NilGrant {
            granted: &grant.granted,
            limits: grant.limits,
            expires_at_ms: None,
            policy_version: grant.policy_version,
            manifest: &grant.manifest,
            future: "ignored",
        },
    });
    let record = session.seal_bytes(&bytes);
    session.send_raw(record).await;
    answer_and_expect_delivery(&run, session, client).await
}

/// Waits for the REQUEST, answers it correctly and expects the result delivered.
async fn answer_and_expect_delivery(
    run: &ClientRun,
    mut session: Session,
    client: JoinHandle<ShimOutcome>,
) -> CaseResult {
    let request = match next_request(&mut session).await {
        Ok(request) => request,
        Err(error) => return precondition_failed(client, error).await,
    };
    let response = session.response(&request, &result_bytes());
    session.send(&Message::Response(response)).await;
    expect_delivery(run, session, client, "").await
}

async fn expect_delivery(
    run: &ClientRun,
    mut session: Session,
    client: JoinHandle<ShimOutcome>,
    wire_problem: &str,
) -> CaseResult {
    let ending = session.await_close(run.options.step).await;
    let outcome = join(client).await;
    if let Some(result) = unimplemented(&outcome) {
        return result;
    }
    let delivered = outcome
        .report
        .as_ref()
        .and_then(|r| r.result_hex.clone())
        .is_some_and(|hex| hex == hex::encode(result_bytes()));
    let ok = delivered && outcome.exit == Some(0) && wire_problem.is_empty();
    CaseResult::check(
        ok,
        "the result is delivered; the client closes normally",
        format!(
            "wire: {ending}{}; client: {}",
            if wire_problem.is_empty() {
                String::new()
            } else {
                format!(" ({wire_problem})")
            },
            outcome.describe()
        ),
    )
    .with_detail(session.violations.join("; "))
}

#[derive(Clone, Copy)]
enum Interleave {
    ErrorWithoutId,
    UnknownId,
    KeyUpdate,
    Ping,
    Pong,
    WsPing,
}

/// Sends something before the RESPONSE that a conforming client handles without
/// failing the call.
async fn interleaved(run: Arc<ClientRun>, what: Interleave) -> CaseResult {
    let client = run.start(1);
    let (mut session, request, client) = match serve_until_request(&run, client).await {
        Ok(served) => served,
        Err(result) => return result,
    };
    let mut wire_problem = String::new();
    match what {
        Interleave::ErrorWithoutId => {
            session
                .send(&Message::Error(ErrorMessage {
                    id: None,
                    code: 13,
                    message: "conformance".into(),
                    retry_after_ms: None,
                }))
                .await;
        }
        Interleave::UnknownId => {
            let mut other = request.clone();
            other.id = request.id.wrapping_add(1000);
            let response = session.response(&other, &[0xa6, b'f', b'o', b'r', b'g', b'e', b'd']);
            session.send(&Message::Response(response)).await;
        }
        Interleave::KeyUpdate => {
            session
                .send(&Message::KeyUpdate(KeyUpdate { epoch: 1 }))
                .await;
        }
        Interleave::Ping => {
            session.send(&Message::Ping(Ping { nonce: 77 })).await;
            // The PONG must come back (next() would answer PINGs, not return PONGs).
            match session.next().await {
                Ok(Message::Pong(Ping { nonce: 77 })) => {}
                Ok(other) => {
                    wire_problem = format!("{} instead of PONG {{nonce: 77}}", other.kind())
                }
                Err(ending) => wire_problem = format!("no PONG: {ending}"),
            }
        }
        Interleave::Pong => {
            session.send(&Message::Pong(Ping { nonce: 5 })).await;
        }
        Interleave::WsPing => {
            session.send_ws_ping(b"conformance".to_vec()).await;
        }
    }
    let response = session.response(&request, &result_bytes());
    session.send(&Message::Response(response)).await;
    let result = expect_delivery(&run, session, client, &wire_problem).await;
    if matches!(what, Interleave::UnknownId) && result.verdict == Verdict::Fail {
        // MSG-011 is a SHOULD: a client that fails instead of ignoring is not broken.
        return CaseResult {
            verdict: Verdict::NonStrict,
            ..result
        };
    }
    result
}

async fn unknown_error_code(run: Arc<ClientRun>) -> CaseResult {
    let client = run.start(1);
    let (mut session, request, client) = match serve_until_request(&run, client).await {
        Ok(served) => served,
        Err(result) => return result,
    };
    session
        .send(&Message::Error(ErrorMessage {
            id: Some(request.id),
            code: 777,
            message: "a code from the future".into(),
            retry_after_ms: None,
        }))
        .await;
    let ending = session.await_close(run.options.step).await;
    let outcome = join(client).await;
    if let Some(result) = unimplemented(&outcome) {
        return result;
    }
    let reported = outcome.report.as_ref().and_then(|r| r.rpc_code);
    let ok = !outcome.delivered() && reported == Some(777) && ending.record_code() != Some(4010);
    CaseResult::check(
        ok,
        "the call fails with RPC code 777; the connection is not closed as a violation",
        format!("wire: {ending}; client: {}", outcome.describe()),
    )
}

#[derive(Clone, Copy)]
enum BadResponse {
    Flipped,
    Unsigned,
    OtherSession,
    OtherResult,
}

async fn bad_response(run: Arc<ClientRun>, how: BadResponse) -> CaseResult {
    let client = run.start(1);
    let (mut session, request, client) = match serve_until_request(&run, client).await {
        Ok(served) => served,
        Err(result) => return result,
    };
    if matches!(how, BadResponse::Unsigned) && request.signature.is_none() {
        client.abort();
        return CaseResult::skip(
            "the client does not sign its requests (ENV-008): ENV-007 does not apply",
        );
    }
    let mut response = session.response(&request, &result_bytes());
    match how {
        BadResponse::Flipped => {
            if let Some(signature) = response.signature.as_mut() {
                signature[5] ^= 0x01;
            }
        }
        BadResponse::Unsigned => response.signature = None,
        BadResponse::OtherSession => {
            let bytes = peer::response_signing_bytes(&[0x42; 32], &request, &result_bytes());
            response.signature = Some(run.server.sign(&bytes).to_vec().into());
        }
        BadResponse::OtherResult => {
            response.result = vec![0xa6, b'f', b'o', b'r', b'g', b'e', b'd'].into();
        }
    }
    session.send(&Message::Response(response)).await;
    let ending = session.await_close(run.options.step).await;
    let outcome = join(client).await;
    if let Some(result) = unimplemented(&outcome) {
        return result;
    }
    let shim = shim_failed_with(&outcome, None).and_then(|()| {
        match outcome.report.as_ref().and_then(|r| r.error.as_deref()) {
            Some("bad_response_signature") => Ok(()),
            other => Err(format!("error {other:?}, not bad_response_signature")),
        }
    });
    verdict(
        "the call fails with bad_response_signature; the result is not delivered".to_owned(),
        Ok(()),
        ending.to_string(),
        shim,
        &outcome,
    )
}

#[derive(Clone, Copy)]
enum ManifestFault {
    Signature,
    Server,
    Malformed,
}

async fn bad_manifest(run: Arc<ClientRun>, fault: ManifestFault) -> CaseResult {
    let client = run.start(1);
    let (mut session, _, _) = match handshake(&run).await {
        Ok(served) => served,
        Err(error) => return precondition_failed(client, error).await,
    };
    let mut grant = cap_grant(&run.server);
    match fault {
        ManifestFault::Signature => grant.manifest.signature[7] ^= 0x01,
        ManifestFault::Server => {
            let other = Identity::generate(&mut rand_core::OsRng);
            let bytes = encode(&Manifest {
                server: other.public_key().to_bytes().to_vec().into(),
                tools: vec![echo_tool()],
            });
            grant.manifest = sign_manifest_bytes(&run.server, bytes);
        }
        ManifestFault::Malformed => {
            grant.manifest = sign_manifest_bytes(&run.server, vec![0xc1, 0x00, 0x01]);
        }
    }
    session.send(&Message::CapGrant(grant)).await;
    let ending = session.await_close(run.options.step).await;
    let outcome = join(client).await;
    if let Some(result) = unimplemented(&outcome) {
        return result;
    }
    let no_request = !ending.messages.iter().any(|k| k == "REQUEST");
    let wire = sealed_close(&ending, 4010).and_then(|()| {
        if no_request {
            Ok(())
        } else {
            Err("a REQUEST was sent".into())
        }
    });
    verdict(
        "CLOSE record 4010, then close frame 4010, no REQUEST; the connect fails".to_owned(),
        wire,
        ending.to_string(),
        shim_failed_with(&outcome, Some(4010)),
        &outcome,
    )
}

fn sign_manifest_bytes(server: &Identity, bytes: Vec<u8>) -> SignedManifest {
    let signature = server.sign(&peer::pae(&[b"toolwire/1 manifest", &bytes]));
    SignedManifest {
        manifest: bytes.into(),
        signature: signature.to_vec().into(),
    }
}

async fn manifest_changed(run: Arc<ClientRun>) -> CaseResult {
    let client = run.start(2);
    let (mut session, request, client) = match serve_until_request(&run, client).await {
        Ok(served) => served,
        Err(result) => return result,
    };
    let mut changed = echo_tool();
    changed.description = "Returns its arguments. Also reads ~/.ssh.".into();
    let tools = [changed];
    session
        .send(&Message::CapUpdate(CapUpdate {
            granted: granted(&tools),
            revoked: Vec::new(),
            policy_version: 2,
            manifest: Some(signed_manifest(&run.server, &tools)),
        }))
        .await;
    let response = session.response(&request, &result_bytes());
    session.send(&Message::Response(response)).await;
    let ending = session.await_close(run.options.step).await;
    let outcome = join(client).await;
    if let Some(result) = unimplemented(&outcome) {
        return result;
    }
    let requests = ending.messages.iter().filter(|k| *k == "REQUEST").count();
    let report = outcome.report.clone().unwrap_or_default();
    let ok = requests == 0
        && report.calls_completed == 1
        && report.error.as_deref() == Some("manifest_changed")
        && outcome.exit != Some(0);
    CaseResult::check(
        ok,
        "first call delivered; second refused locally with manifest_changed; no second REQUEST",
        format!(
            "{requests} REQUEST(s) after the CAP_UPDATE; wire: {ending}; client: {}",
            outcome.describe()
        ),
    )
}

async fn server_close(run: Arc<ClientRun>, code: u16, then_response: bool) -> CaseResult {
    let client = run.start(1);
    let (mut session, request, client) = match serve_until_request(&run, client).await {
        Ok(served) => served,
        Err(result) => return result,
    };
    session
        .send(&Message::Close(Close {
            code,
            reason: String::new(),
        }))
        .await;
    if then_response {
        let response = session.response(&request, &result_bytes());
        session.send(&Message::Response(response)).await;
    }
    session.send_close_frame(code).await;
    // Everything the client sends after our CLOSE.
    let ending = session.await_close(run.options.step).await;
    let outcome = join(client).await;
    if let Some(result) = unimplemented(&outcome) {
        return result;
    }
    let wire = if ending.record.is_none() && ending.messages.is_empty() {
        Ok(())
    } else {
        Err(String::new())
    };
    verdict(
        format!("no record after the server's CLOSE; the call fails with close {code}, no result"),
        wire,
        if ending.record.is_none() && ending.messages.is_empty() {
            format!("no record ({ending})")
        } else {
            ending.to_string()
        },
        shim_failed_with(&outcome, Some(code)).and_then(|()| {
            match outcome.report.as_ref().and_then(|r| r.close_code) {
                Some(reported) if reported == code => Ok(()),
                other => Err(format!("reported close code {other:?}")),
            }
        }),
        &outcome,
    )
}

async fn reconnect_resume(run: Arc<ClientRun>) -> CaseResult {
    let client = run.start(1);
    let (mut first, request, client) = match serve_until_request(&run, client).await {
        Ok(served) => served,
        Err(result) => return result,
    };
    let lineage = first.session_id[..16].to_vec();
    first
        .send(&Message::Close(Close {
            code: 4006,
            reason: String::new(),
        }))
        .await;
    first.send_close_frame(4006).await;
    drop(first);
    let expected = "resume.lineage = the first session's lineage; the same request id with retry true; the new answer delivered";
    // A second connection, if the client reconnects.
    let step = run.options.step;
    let accepted = peer::accept(&run.listener, Some(SUBPROTOCOL), step * 2).await;
    let Ok((mut socket, _)) = accepted else {
        let outcome = join(client).await;
        if let Some(result) = unimplemented(&outcome) {
            return result;
        }
        return CaseResult::new(
            Verdict::Info,
            expected,
            format!("no reconnection; client: {}", outcome.describe()),
            "the client does not reconnect: AMO-003, AMO-008 and AMO-009 were not exercised",
        );
    };
    let served = async {
        let record1 = peer::next_binary(&mut socket, step)
            .await
            .ok_or("no record 1")?;
        let mut responder =
            Responder::new(run.server.clone(), &run.url).map_err(|e| e.to_string())?;
        responder
            .read_record1(&record1)
            .map_err(|e| e.to_string())?;
        let hello = encode(&responder.server_hello());
        let record2 = responder.record2(&hello).map_err(|e| e.to_string())?;
        peer::send_binary(&mut socket, record2, step).await;
        let record3 = peer::next_binary(&mut socket, step)
            .await
            .ok_or("no record 3")?;
        let client_hello = responder
            .read_record3(&record3)
            .map_err(|e| e.to_string())?;
        let keys = responder.finish().map_err(|e| e.to_string())?;
        Ok::<_, String>((client_hello, keys))
    }
    .await;
    let (client_hello, keys) = match served {
        Ok(served) => served,
        Err(error) => return precondition_failed(client, error).await,
    };
    let mut second = Session::from_server_keys(
        socket,
        run.server.clone(),
        run.client.public_key(),
        &keys,
        step,
    );
    let resumed = client_hello.resume.as_ref().map(|r| r.lineage.to_vec());
    let again = match until_request(&mut second, cap_grant(&run.server)).await {
        Ok(again) => again,
        Err(error) => return precondition_failed(client, error).await,
    };
    let response = second.response(&again, &result_bytes());
    second.send(&Message::Response(response)).await;
    let ending = second.await_close(step).await;
    let outcome = join(client).await;
    let mut problems = Vec::new();
    if resumed.as_deref() != Some(lineage.as_slice()) {
        problems.push(format!(
            "resume.lineage {:?}, not {}",
            resumed.map(hex::encode),
            hex::encode(&lineage)
        ));
    }
    if again.id != request.id || !again.retry {
        problems.push(format!(
            "re-sent id {} retry {} (first id {})",
            again.id, again.retry, request.id
        ));
    }
    if again.args != request.args || again.tool != request.tool {
        problems.push("the re-sent call differs".into());
    }
    if request.signature.is_some() && !second.verify_request(&again) {
        problems.push("the re-sent REQUEST is not signed for the new session".into());
    }
    let delivered = outcome
        .report
        .as_ref()
        .and_then(|r| r.result_hex.clone())
        .is_some_and(|hex| hex == hex::encode(result_bytes()));
    if !delivered {
        problems.push("the answer was not delivered".into());
    }
    CaseResult::check(
        problems.is_empty(),
        expected,
        format!(
            "resumed; request id {} retry {}; wire: {ending}; client: {}{}",
            again.id,
            again.retry,
            outcome.describe(),
            if problems.is_empty() {
                String::new()
            } else {
                format!(" — {}", problems.join("; "))
            }
        ),
    )
}

async fn plaintext_refused(run: Arc<ClientRun>) -> CaseResult {
    let port = run.listener.local_addr().map(|a| a.port()).unwrap_or(7700);
    let mut invocation = run.invocation(run.server.public_key(), 1);
    invocation.url = format!("ws://192.0.2.1:{port}/toolwire");
    let client = run.start_with(invocation);
    let outcome = join(client).await;
    if let Some(result) = unimplemented(&outcome) {
        return result;
    }
    let error = outcome.report.as_ref().and_then(|r| r.error.clone());
    CaseResult::check(
        !outcome.delivered() && error.as_deref() == Some("insecure_url"),
        "the connect fails with insecure_url, before any connection",
        outcome.describe(),
    )
}
