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
use toolwire_protocol::{CloseCode, ErrorCode, Identity, IdentityKey, Message};

macro_rules! case {
    ($id:literal, [$($clause:literal),* $(,)?], $description:literal, $run:path) => {
        Case {
            id: $id,
            clauses: &[$($clause),*],
            description: $description,
            run: |target| Box::pin($run(target)),
        }
    };
    ($id:literal, [$($clause:literal),* $(,)?], $description:literal, closure $run:expr) => {
        Case {
            id: $id,
            clauses: &[$($clause),*],
            description: $description,
            run: $run,
        }
    };
}

/// The server-mode cases of this file that run before the floods, in run order.
pub(super) fn core_cases() -> Vec<ServerCase> {
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
        case!("hs.baseline", ["TRN-023", "HS-001", "HS-003", "HS-005", "HS-008", "HS-009", "HS-031", "KS-001", "KS-002", "LIFE-002", "ID-001", "REC-003"],
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
        // ---- More: upgrade, keys, messages -------------------------------------
        case!("trn.origin.allowed-case-insensitive", ["TRN-006", "TRN-007"],
            "The allowed Origin with its host in upper case is accepted (scheme and host compare case-insensitively); with an explicit default port it is refused with 403 (no normalization).", origin_allowed_variants),
        case!("trn.origin.repeated", ["TRN-009", "TRN-008"],
            "The allowed Origin sent on two header lines is refused with 403 (joined by \", \" it matches nothing).", origin_repeated),
        case!("id.certificate", ["ID-010"],
            "ServerHello carries the server's configured certificate unchanged, or no `certificate` field when it has none.", certificate_sent),
        case!("trn.origin.required", ["TRN-013"],
            "A server configured to require Origin refuses an upgrade without one with 403.", origin_required),
        case!("trn.no-authority-from-headers", ["TRN-020"],
            "An unknown identity whose upgrade carries `Authorization: Bearer` and `Cookie` headers is still refused with AUTH_FAILED (4001).", no_authority_from_headers),
        case!("trn.ws-ping-frame", ["TRN-028"],
            "WebSocket ping and pong frames in a session change no toolwire state: the next PING is answered under the expected sequence numbers.", ws_ping_frame),
        case!("ks.cross-connection", ["KS-005"],
            "A record sealed with another connection's keys closes with DECRYPT_FAILED (4003).", cross_connection),
        case!("cnv.nil-optional", ["CNV-005", "CNV-006"],
            "A REQUEST whose optional `grant_id` and `deadline_ms` are nil, with an unknown field, is executed like one without them.", nil_optional),
        case!("lim.announced-defaults", ["LIM-001", "LIM-006", "LIM-009", "LIM-010", "LIM-011", "HS-008", "GRT-036"],
            "A server with default limits announces max_record_body 65536, session_lifetime_ms 3720000, idle_timeout_ms 90000 in ServerHello and rate 100/s, burst 200, 64 in flight in CAP_GRANT.", announced_defaults),
        // ---- More: authorization -----------------------------------------------
        case!("authz.invalid-arguments", ["AUTHZ-020", "AUTHZ-021"],
            "A REQUEST whose args (the integer 42) fail the tool's input schema is refused with INVALID_ARGUMENT (3) and `invalid arguments: ` plus a reason of at most 256 bytes.", invalid_arguments),
        case!("authz.refusal-messages", ["AUTHZ-021", "AUTHZ-022", "ERR-007"],
            "Refusals carry the fixed text of their step (`tool not granted`, `envelope signature did not verify`) and no argument bytes or signatures.", refusal_messages),
        case!("authz.grant-id-not-held", ["AUTHZ-010"],
            "A REQUEST naming a grant_id the session does not hold is refused with PERMISSION_DENIED (7).", grant_id_not_held),
        case!("authz.key-authority", ["AUTHZ-011"],
            "A client on the key allowlist calls a granted tool without grant_id: executed.", key_authority),
        // ---- More: at-most-once ------------------------------------------------
        case!("amo.refused-not-recorded", ["AMO-018"],
            "A REQUEST refused for its signature does not use up its id: the same id, signed, then executes.", refused_not_recorded),
        case!("amo.stale-id", ["AMO-013"],
            "After id 5000 executed, id 1 (never sent, 4999 below the top) is refused with STALE_REQUEST_ID (100).", stale_id),
        case!("amo.resume-lineage", ["AMO-002", "AMO-004", "AMO-012", "AMO-020", "ENV-005"],
            "A second connection resuming the first one's lineage (the first 16 bytes of its session id) re-sends an executed id with retry: answered from the cache with the same result bytes, signed for the new session.", resume_lineage),
        case!("amo.recovered-lineage", ["AMO-005", "AMO-014", "AMO-015", "AMO-016"],
            "Resuming a lineage the server never held: a retried id is refused with RESULT_UNAVAILABLE (101), again 101 the second time (recorded, no outcome), and a new id without retry executes.", recovered_lineage),
        case!("amo.admission-order", ["AMO-017"],
            "On a recovered lineage, a retried id of 2^62 is INVALID_ARGUMENT (3) (range before recovery), and after id 5000 executed a retried never-seen id 1 is STALE_REQUEST_ID (100) (staleness before recovery), not RESULT_UNAVAILABLE.", admission_order),
        case!("amo.other-client-lineage", ["AMO-001"],
            "Another client resuming the first client's lineage id gets its own (recovered) lineage: a retried id is RESULT_UNAVAILABLE (101), never the first client's cached result.", other_client_lineage),
        case!("amo.cancel-in-flight", ["AMO-021", "AMO-022", "AMO-023", "AMO-024"],
            "A CANCEL for a slow call in flight is answered at once with CANCELLED (1) `cancelled`; no RESPONSE follows; the id retried gets CANCELLED again.", cancel_in_flight),
        case!("authz.in-flight-cap", ["AUTHZ-003", "LIM-010", "ERR-005"],
            "With 64 slow calls in flight, a 65th REQUEST is refused with RESOURCE_EXHAUSTED (8), `too many calls in flight`, retry_after_ms 100.", in_flight_cap),
        case!("msg.stream-items", ["MSG-008", "MSG-009"],
            "A streamed call: STREAM_ITEMs indexed 0, 1, 2, … then the RESPONSE, and no STREAM_ITEM for the id after it.", stream_items),
        // ---- Grants (12) ----------------------------------------------------------
        case!("grt.holder", ["HS-028", "GRT-035", "GRT-013", "AUTHZ-012"],
            "An identity the server does not know presents a valid grant (with an unknown claim) for one tool: the handshake completes, CAP_GRANT grants nothing the grant does not cover, and a call relying on it executes.", grant_holder),
        case!("grt.too-long", ["GRT-006"],
            "A validly signed grant longer than 8192 bytes, the only one presented: disregarded, AUTH_FAILED (4001).", closure |t| Box::pin(bad_grant(t, BadGrant::TooLong))),
        case!("grt.empty-footer", ["GRT-008"],
            "A valid grant with an empty fourth (footer) segment: disregarded, 4001.", closure |t| Box::pin(bad_grant(t, BadGrant::EmptyFooter))),
        case!("grt.padded-base64", ["GRT-009"],
            "A valid grant whose payload carries `=` padding: disregarded, 4001.", closure |t| Box::pin(bad_grant(t, BadGrant::Padded))),
        case!("grt.short-payload", ["GRT-010"],
            "A grant whose payload is shorter than a signature: disregarded, 4001.", closure |t| Box::pin(bad_grant(t, BadGrant::Short))),
        case!("grt.duplicate-claim", ["GRT-012"],
            "A validly signed grant repeating the `tools` claim: disregarded, 4001.", closure |t| Box::pin(bad_grant(t, BadGrant::DuplicateClaim))),
        case!("grt.mistyped-claim", ["GRT-012"],
            "A validly signed grant whose `tools` is a string: disregarded, 4001.", closure |t| Box::pin(bad_grant(t, BadGrant::MistypedClaim))),
        case!("grt.non-canonical-key", ["GRT-014"],
            "A validly signed grant whose `sub` is the holder's key with non-zero unused bits in its last character: disregarded, 4001.", closure |t| Box::pin(bad_grant(t, BadGrant::NonCanonicalKey))),
        case!("grt.long-jti", ["GRT-015"],
            "A validly signed grant with a 129-character `jti`: disregarded, 4001.", closure |t| Box::pin(bad_grant(t, BadGrant::LongJti))),
        case!("grt.bad-time", ["GRT-016"],
            "A validly signed grant whose `exp` is not RFC 3339: disregarded, 4001.", closure |t| Box::pin(bad_grant(t, BadGrant::BadTime))),
        case!("grt.expired", ["GRT-025", "HS-027"],
            "A grant that expired an hour ago: disregarded, 4001.", closure |t| Box::pin(bad_grant(t, BadGrant::Expired))),
        case!("grt.clock-skew", ["LIM-014", "AUTHZ-013"],
            "A grant that expired 27 s ago is accepted in the handshake (30 s skew), and a call relying on it once now − 30 s has passed its exp is refused with GRANT_EXPIRED (102); one that expired 40 s ago is disregarded (4001).", clock_skew),
        case!("grt.revocation", ["AUTHZ-014", "AUTHZ-015", "GRT-042"],
            "Three grants of one holder: a call relying on a revoked one is refused with CAPABILITY_REVOKED (103); on one both revoked and expired, GRANT_EXPIRED (102) (expiry first); once the last one is revoked, the next call brings a CAP_UPDATE and CLOSE 4007.", grant_revocation),
        case!("grt.wrong-holder", ["GRT-031", "HS-027"],
            "A valid grant held by another identity: disregarded, 4001.", closure |t| Box::pin(bad_grant(t, BadGrant::OtherHolder))),
        case!("grt.foreign-issuer", ["GRT-020"],
            "A grant signed by an issuer the server does not trust: disregarded, 4001.", closure |t| Box::pin(bad_grant(t, BadGrant::ForeignIssuer))),
        case!("grt.cap-request-ninth", ["GRT-037", "GRT-038", "LIM-013"],
            "CAP_REQUEST with 8 junk tokens then a valid grant for a second tool: the ninth is not verified (the tool stays ungranted); the same grant first in a CAP_REQUEST is added.", cap_request_ninth),
    ]
}

/// The flood cases: they run last because they drain the identity's budgets.
pub(super) fn flood_cases() -> Vec<ServerCase> {
    vec![
        case!("amo.lineage-quota", ["AMO-031", "AMO-032", "LIM-015"],
            "After 17 fresh lineages of one client each executed a call, the oldest was dropped: resuming it, its id retried is RESULT_UNAVAILABLE (101).", lineage_quota),
        case!("amo.cache-per-lineage", ["AMO-029"],
            "257 calls executed in one lineage: the outcome of the first was dropped (RESULT_UNAVAILABLE, 101), the last is still answered from the cache.", cache_per_lineage),
        case!("trn.preauth-limit", ["TRN-022", "LIM-012"],
            "With 64 connections of this address not past the handshake, the 65th upgrade is refused with 429.", preauth_limit),
        case!("authz.rate-limit", ["AUTHZ-004", "AUTHZ-005", "AUTHZ-002", "LIM-011", "ERR-005"],
            "260 pipelined REQUESTs for an unknown tool: refused with PERMISSION_DENIED while the budget lasts (refusals are charged too), then RESOURCE_EXHAUSTED (8) `rate limit exceeded` with retry_after_ms.", rate_limit),
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

pub(super) fn rpc_name(code: u32) -> String {
    match ErrorCode(code).name() {
        Some(name) => format!("{name} ({code})"),
        None => code.to_string(),
    }
}

pub(super) fn precondition(what: impl std::fmt::Display) -> CaseResult {
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

pub(super) async fn established(target: &ServerTarget) -> Result<(Session, CapGrant), CaseResult> {
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

pub(super) fn encode_args(args: &serde_json::Value) -> Vec<u8> {
    rmp_serde::to_vec_named(args).unwrap_or_default()
}

/// The call the suite makes: the configured one, or the first granted tool with `{}`.
pub(super) fn call_of(target: &ServerTarget, grant: &CapGrant) -> Option<(ToolCall, bool)> {
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
pub(super) async fn answer(session: &mut Session, request: &Request) -> Result<Message, Ending> {
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

pub(super) fn describe(answer: &Result<Message, Ending>) -> String {
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
pub(super) async fn first_call(
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

// =====================================================================================
// More cases: upgrade, keys, messages
// =====================================================================================

async fn origin_allowed_variants(target: Arc<ServerTarget>) -> CaseResult {
    let Some(origin) = target.options.allowed_origin.clone() else {
        return CaseResult::skip("needs an origin the server allows (--allowed-origin)");
    };
    let Some((scheme, host)) = origin.split_once("://") else {
        return precondition(format!("{origin} is not a serialized origin"));
    };
    if host.contains(':') {
        return CaseResult::skip(
            "the allowed origin has a port: the default-port variant does not apply",
        );
    }
    let step = target.options.step;
    let upper = format!(
        "{}://{}",
        scheme.to_ascii_uppercase(),
        host.to_ascii_uppercase()
    );
    let exact = peer::upgrade(&target.url, Some(&origin), Some(SUBPROTOCOL), step).await;
    let cased = peer::upgrade(&target.url, Some(&upper), Some(SUBPROTOCOL), step).await;
    let port = if scheme.eq_ignore_ascii_case("https") {
        443
    } else {
        80
    };
    let with_port = format!("{origin}:{port}");
    let ported = peer::upgrade(&target.url, Some(&with_port), Some(SUBPROTOCOL), step).await;
    let ok = matches!(exact, Upgrade::Accepted { .. })
        && matches!(cased, Upgrade::Accepted { .. })
        && matches!(ported, Upgrade::Refused(403));
    CaseResult::check(
        ok,
        format!("{origin}: 101; {upper}: 101; {with_port}: 403"),
        format!(
            "{}; {}; {}",
            exact.describe(),
            cased.describe(),
            ported.describe()
        ),
    )
}

async fn origin_repeated(target: Arc<ServerTarget>) -> CaseResult {
    let Some(origin) = target.options.allowed_origin.clone() else {
        return CaseResult::skip("needs an origin the server allows (--allowed-origin)");
    };
    let outcome = peer::upgrade_with_headers(
        &target.url,
        &[
            ("Origin", &origin),
            ("Origin", &origin),
            ("Sec-WebSocket-Protocol", SUBPROTOCOL),
        ],
        target.options.step,
    )
    .await;
    CaseResult::check(
        matches!(outcome, Upgrade::Refused(403)),
        "HTTP 403",
        outcome.describe(),
    )
}

async fn no_authority_from_headers(target: Arc<ServerTarget>) -> CaseResult {
    let step = target.options.step;
    let outcome = peer::upgrade_with_headers(
        &target.url,
        &[
            ("Sec-WebSocket-Protocol", SUBPROTOCOL),
            ("Authorization", "Bearer admin"),
            ("Cookie", "session=admin; role=admin"),
        ],
        step,
    )
    .await;
    let mut socket = match outcome {
        Upgrade::Accepted { socket, .. } => *socket,
        other => {
            return CaseResult::check(
                matches!(other, Upgrade::Refused(_)),
                "HTTP 101 then AUTH_FAILED, or a refused upgrade",
                other.describe(),
            )
        }
    };
    let stranger = Identity::generate(&mut rand_core::OsRng);
    let params = HandshakeParams::new(stranger, target.url.clone(), target.server_key);
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
    let hello = handshake.client_hello();
    let Ok(record3) = hello_record(&mut handshake, &hello) else {
        return CaseResult::harness_error("record 3");
    };
    peer::send_binary(&mut socket, record3, step).await;
    let ending = await_raw_close(&mut socket, step).await;
    expect_handshake_close(&ending, 4001)
}

async fn ws_ping_frame(target: Arc<ServerTarget>) -> CaseResult {
    let (mut session, _) = match established(&target).await {
        Ok(established) => established,
        Err(result) => return result,
    };
    session.send_ws_ping(b"conformance".to_vec()).await;
    session.send_ws_ping(Vec::new()).await;
    let result = still_open(
        &mut session,
        "PING answered with the expected record numbers",
    )
    .await;
    result.with_detail(session.violations.join("; "))
}

async fn cross_connection(target: Arc<ServerTarget>) -> CaseResult {
    let (mut first, _) = match established(&target).await {
        Ok(established) => established,
        Err(result) => return result,
    };
    let (mut second, _) = match established(&target).await {
        Ok(established) => established,
        Err(result) => return result,
    };
    // seq 0 of the first connection, which is also the next seq of the second.
    let record = first.seal(&Message::Ping(Ping { nonce: 1 }));
    second.send_raw(record).await;
    let ending = second.await_close(target.options.step).await;
    expect_sealed_close(&ending, 4003, &second)
}

async fn nil_optional(target: Arc<ServerTarget>) -> CaseResult {
    #[derive(serde::Serialize)]
    struct NilRequest<'a> {
        id: u64,
        tool: &'a str,
        #[serde(with = "serde_bytes")]
        args: &'a [u8],
        grant_id: Option<String>,
        deadline_ms: Option<u64>,
        #[serde(with = "serde_bytes")]
        signature: &'a [u8],
        #[serde(rename = "x-future")]
        future: u8,
    }
    #[derive(serde::Serialize)]
    struct Envelope<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        body: NilRequest<'a>,
    }
    let (mut session, grant) = match established(&target).await {
        Ok(established) => established,
        Err(result) => return result,
    };
    let Some((call, _)) = call_of(&target, &grant) else {
        return CaseResult::skip("no tool is granted to the identity");
    };
    let request = session.request(3, &call.tool, &encode_args(&call.args));
    let signature = request.signature.clone().unwrap_or_default();
    let bytes = rmp_serde::to_vec_named(&Envelope {
        kind: "REQUEST",
        body: NilRequest {
            id: request.id,
            tool: &request.tool,
            args: &request.args,
            grant_id: None,
            deadline_ms: None,
            signature: &signature,
            future: 1,
        },
    })
    .unwrap_or_default();
    let record = session.seal_bytes(&bytes);
    session.send_raw(record).await;
    let outcome = loop {
        match session.next().await {
            Ok(Message::Response(response)) if response.id == 3 => {
                break Ok(Message::Response(response))
            }
            Ok(Message::Error(error)) if error.id == Some(3) => break Ok(Message::Error(error)),
            Ok(_) => {}
            Err(ending) => break Err(ending),
        }
    };
    CaseResult::check(
        matches!(outcome, Ok(Message::Response(_))),
        "RESPONSE",
        describe(&outcome),
    )
}

async fn announced_defaults(target: Arc<ServerTarget>) -> CaseResult {
    if !target.options.default_limits {
        return CaseResult::skip("the server is configured with other limits");
    }
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
    let Some(record2) = peer::next_binary(&mut socket, step).await else {
        return precondition("no record 2");
    };
    let hello = match handshake.read_record2(&record2) {
        Ok(hello) => hello,
        Err(error) => return precondition(error),
    };
    let client_hello = handshake.client_hello();
    let Ok(record3) = hello_record(&mut handshake, &client_hello) else {
        return CaseResult::harness_error("record 3");
    };
    peer::send_binary(&mut socket, record3, step).await;
    let Ok(keys) = handshake.finish() else {
        return CaseResult::harness_error("keys");
    };
    let mut session = Session::from_keys(
        socket,
        target.identity.clone(),
        target.server_key,
        &keys,
        step,
    );
    let grant = match session.next().await {
        Ok(Message::CapGrant(grant)) => grant,
        other => return precondition(format!("first message: {}", describe(&other))),
    };
    let p = hello.params;
    let l = grant.limits;
    let ok = p.max_record_body == 65536
        && p.session_lifetime_ms == 3_720_000
        && p.idle_timeout_ms == 90_000
        && l.rate_per_sec == 100
        && l.burst == 200
        && l.max_in_flight == 64;
    CaseResult::check(
        ok,
        "max_record_body 65536, session_lifetime_ms 3720000, idle_timeout_ms 90000; rate 100/s, burst 200, 64 in flight",
        format!(
            "max_record_body {}, session_lifetime_ms {}, idle_timeout_ms {}; rate {}/s, burst {}, {} in flight",
            p.max_record_body, p.session_lifetime_ms, p.idle_timeout_ms, l.rate_per_sec, l.burst, l.max_in_flight
        ),
    )
}

// =====================================================================================
// More cases: authorization
// =====================================================================================

async fn invalid_arguments(target: Arc<ServerTarget>) -> CaseResult {
    let (mut session, grant) = match established(&target).await {
        Ok(established) => established,
        Err(result) => return result,
    };
    let Some((call, _)) = call_of(&target, &grant) else {
        return CaseResult::skip("no tool is granted to the identity");
    };
    let request = session.request(1, &call.tool, &encode_args(&serde_json::json!(42)));
    let outcome = answer(&mut session, &request).await;
    match &outcome {
        Ok(Message::Response(_)) => CaseResult::skip(format!(
            "the input schema of {} accepts an integer",
            call.tool
        )),
        Ok(Message::Error(error)) => {
            let reason = error.message.strip_prefix("invalid arguments: ");
            let ok = error.code == ErrorCode::INVALID_ARGUMENT.0
                && reason.is_some_and(|r| !r.is_empty() && r.len() <= 256);
            CaseResult::check(
                ok,
                "ERROR INVALID_ARGUMENT (3) \"invalid arguments: <reason of at most 256 bytes>\"",
                describe(&outcome),
            )
        }
        _ => CaseResult::check(false, "ERROR INVALID_ARGUMENT (3)", describe(&outcome)),
    }
}

async fn refusal_messages(target: Arc<ServerTarget>) -> CaseResult {
    let (mut session, grant) = match established(&target).await {
        Ok(established) => established,
        Err(result) => return result,
    };
    let Some((call, _)) = call_of(&target, &grant) else {
        return CaseResult::skip("no tool is granted to the identity");
    };
    let secret_args =
        encode_args(&serde_json::json!({ "secret": crate::artifact::SECRET_ARGUMENT }));
    let ungranted = session.request(1, "conformance-no-such-tool", &secret_args);
    let (_, denied) =
        expect_rpc_error(&mut session, &ungranted, ErrorCode::PERMISSION_DENIED).await;
    let mut forged = session.request(2, &call.tool, &encode_args(&call.args));
    if let Some(signature) = forged.signature.as_mut() {
        signature[0] ^= 0x01;
    }
    let (_, unauthenticated) =
        expect_rpc_error(&mut session, &forged, ErrorCode::UNAUTHENTICATED).await;
    let denied = denied.map(|e| e.message).unwrap_or_default();
    let unauthenticated = unauthenticated.map(|e| e.message).unwrap_or_default();
    let signature_hex = forged
        .signature
        .as_deref()
        .map(hex::encode)
        .unwrap_or_default();
    let leaks = [&denied, &unauthenticated].iter().any(|m| {
        m.contains("hunter2")
            || m.contains(&hex::encode(&secret_args))
            || (!signature_hex.is_empty() && m.contains(&signature_hex[..16]))
    });
    let ok = denied == "tool not granted"
        && unauthenticated == "envelope signature did not verify"
        && !leaks;
    CaseResult::check(
        ok,
        "\"tool not granted\"; \"envelope signature did not verify\"; no argument or signature bytes",
        format!("{denied:?}; {unauthenticated:?}{}", if leaks { "; LEAKS request bytes" } else { "" }),
    )
}

async fn grant_id_not_held(target: Arc<ServerTarget>) -> CaseResult {
    let (mut session, grant) = match established(&target).await {
        Ok(established) => established,
        Err(result) => return result,
    };
    let Some((call, _)) = call_of(&target, &grant) else {
        return CaseResult::skip("no tool is granted to the identity");
    };
    let args = encode_args(&call.args);
    let mut request = session.request(1, &call.tool, &args);
    request.grant_id = Some("conformance-grant-not-held".to_owned());
    let signature = target.identity.sign(&peer::request_signing_bytes(
        &session.session_id,
        1,
        &call.tool,
        &args,
        "conformance-grant-not-held",
    ));
    request.signature = Some(signature.to_vec().into());
    expect_rpc_error(&mut session, &request, ErrorCode::PERMISSION_DENIED)
        .await
        .0
}

async fn key_authority(target: Arc<ServerTarget>) -> CaseResult {
    let (mut session, grant) = match established(&target).await {
        Ok(established) => established,
        Err(result) => return result,
    };
    match first_call(&target, &mut session, &grant, 1).await {
        Ok((request, response)) => CaseResult::check(
            request.grant_id.is_none(),
            "RESPONSE without grant_id",
            format!("RESPONSE ({} result bytes)", response.result.len()),
        ),
        Err(result) => result,
    }
}

// =====================================================================================
// More cases: at-most-once
// =====================================================================================

pub(super) async fn established_resuming(
    target: &ServerTarget,
    identity: Identity,
    lineage: Option<Vec<u8>>,
) -> Result<(Session, CapGrant), CaseResult> {
    let step = target.options.step;
    let socket = peer::connect(&target.url, step)
        .await
        .map_err(precondition)?;
    let mut params = HandshakeParams::new(identity, target.url.clone(), target.server_key);
    params.lineage = lineage;
    let mut session = Session::establish(socket, params, step)
        .await
        .map_err(precondition)?;
    match session.next().await {
        Ok(Message::CapGrant(grant)) => Ok((session, grant)),
        other => Err(precondition(format!("first message {}", describe(&other)))),
    }
}

async fn refused_not_recorded(target: Arc<ServerTarget>) -> CaseResult {
    let (mut session, grant) = match established(&target).await {
        Ok(established) => established,
        Err(result) => return result,
    };
    let Some((call, _)) = call_of(&target, &grant) else {
        return CaseResult::skip("no tool is granted to the identity");
    };
    let good = session.request(9, &call.tool, &encode_args(&call.args));
    let mut forged = good.clone();
    if let Some(signature) = forged.signature.as_mut() {
        signature[0] ^= 0x01;
    }
    let (refused, _) = expect_rpc_error(&mut session, &forged, ErrorCode::UNAUTHENTICATED).await;
    if refused.verdict != Verdict::Pass {
        return precondition(format!(
            "the forged REQUEST was answered {}",
            refused.observed
        ));
    }
    let outcome = answer(&mut session, &good).await;
    CaseResult::check(
        matches!(outcome, Ok(Message::Response(_))),
        "the signed REQUEST with the same id: RESPONSE",
        describe(&outcome),
    )
}

async fn stale_id(target: Arc<ServerTarget>) -> CaseResult {
    let (mut session, grant) = match established(&target).await {
        Ok(established) => established,
        Err(result) => return result,
    };
    let (request, _) = match first_call(&target, &mut session, &grant, 5000).await {
        Ok(call) => call,
        Err(result) => return result,
    };
    let old = session.request(1, &request.tool, &request.args);
    expect_rpc_error(&mut session, &old, ErrorCode(100)).await.0
}

async fn resume_lineage(target: Arc<ServerTarget>) -> CaseResult {
    let (mut first, grant) = match established(&target).await {
        Ok(established) => established,
        Err(result) => return result,
    };
    let (request, response) = match first_call(&target, &mut first, &grant, 11).await {
        Ok(call) => call,
        Err(result) => return result,
    };
    let lineage = first.session_id[..16].to_vec();
    drop(first);
    let (mut second, _) =
        match established_resuming(&target, target.identity.clone(), Some(lineage)).await {
            Ok(established) => established,
            Err(result) => return result,
        };
    let mut again = second.request(11, &request.tool, &request.args);
    again.retry = true;
    let outcome = answer(&mut second, &again).await;
    let expected = "RESPONSE with the first result bytes, signed for the new session";
    let Ok(Message::Response(cached)) = &outcome else {
        return CaseResult::check(false, expected, describe(&outcome));
    };
    let same = cached.result == response.result;
    let verifies = cached
        .signature
        .as_ref()
        .is_some_and(|s| second.verify_response(&again, &cached.result, s));
    CaseResult::check(
        same && verifies,
        expected,
        format!(
            "RESPONSE with {} result bytes; signature {}",
            if same { "the same" } else { "DIFFERENT" },
            if verifies {
                "verifies"
            } else {
                "DOES NOT verify"
            }
        ),
    )
}

async fn recovered_lineage(target: Arc<ServerTarget>) -> CaseResult {
    let mut lineage = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut lineage);
    let (mut session, grant) = match established_resuming(
        &target,
        target.identity.clone(),
        Some(lineage.to_vec()),
    )
    .await
    {
        Ok(established) => established,
        Err(result) => return result,
    };
    let Some((call, _)) = call_of(&target, &grant) else {
        return CaseResult::skip("no tool is granted to the identity");
    };
    let args = encode_args(&call.args);
    let mut retried = session.request(3, &call.tool, &args);
    retried.retry = true;
    let first = answer(&mut session, &retried).await;
    let second = answer(&mut session, &retried).await;
    let fresh = session.request(4, &call.tool, &args);
    let third = answer(&mut session, &fresh).await;
    let is_101 = |outcome: &Result<Message, Ending>| matches!(outcome, Ok(Message::Error(error)) if error.code == 101);
    CaseResult::check(
        is_101(&first) && is_101(&second) && matches!(third, Ok(Message::Response(_))),
        "id 3 retried: RESULT_UNAVAILABLE (101) twice; id 4: RESPONSE",
        format!(
            "{}; {}; {}",
            describe(&first),
            describe(&second),
            describe(&third)
        ),
    )
}

async fn other_client_lineage(target: Arc<ServerTarget>) -> CaseResult {
    let Some(other) = target.options.other_identity.clone() else {
        return CaseResult::skip("needs a second client identity the server allows");
    };
    let (mut first, grant) = match established(&target).await {
        Ok(established) => established,
        Err(result) => return result,
    };
    let (request, _) = match first_call(&target, &mut first, &grant, 21).await {
        Ok(call) => call,
        Err(result) => return result,
    };
    let lineage = first.session_id[..16].to_vec();
    drop(first);
    let (mut second, _) = match established_resuming(&target, other, Some(lineage)).await {
        Ok(established) => established,
        Err(result) => return result,
    };
    let mut again = second.request(21, &request.tool, &request.args);
    again.retry = true;
    let outcome = answer(&mut second, &again).await;
    CaseResult::check(
        matches!(&outcome, Ok(Message::Error(error)) if error.code == 101),
        "ERROR RESULT_UNAVAILABLE (101), not the first client's result",
        describe(&outcome),
    )
}

async fn cancel_in_flight(target: Arc<ServerTarget>) -> CaseResult {
    let Some(call) = target.options.slow_call.clone() else {
        return CaseResult::skip("needs a slow call (--slow-tool)");
    };
    let (mut session, _) = match established(&target).await {
        Ok(established) => established,
        Err(result) => return result,
    };
    let request = session.request(31, &call.tool, &encode_args(&call.args));
    session.send(&Message::Request(request.clone())).await;
    // Let the server admit it, then cancel.
    let _ = session.collect_for(Duration::from_millis(100)).await;
    session.send(&Message::Cancel(Cancel { id: 31 })).await;
    let mut answers = Vec::new();
    let wait = target.options.step.max(Duration::from_secs(3));
    match session.collect_for(wait).await {
        Ok(messages) => {
            for message in messages {
                match message {
                    Message::Response(r) if r.id == 31 => answers.push("RESPONSE".to_owned()),
                    Message::StreamItem(i) if i.id == 31 => answers.push("STREAM_ITEM".to_owned()),
                    Message::Error(e) if e.id == Some(31) => {
                        answers.push(format!("ERROR {} {:?}", e.code, e.message));
                    }
                    _ => {}
                }
            }
        }
        Err(ending) => return CaseResult::check(false, "ERROR CANCELLED (1)", ending.to_string()),
    }
    let retry = answer(&mut session, &request).await;
    let ok = answers == ["ERROR 1 \"cancelled\""]
        && matches!(&retry, Ok(Message::Error(e)) if e.code == 1);
    CaseResult::check(
        ok,
        "exactly one answer, ERROR 1 \"cancelled\"; the retried id: ERROR CANCELLED (1)",
        format!("answers {answers:?}; retried: {}", describe(&retry)),
    )
}

async fn in_flight_cap(target: Arc<ServerTarget>) -> CaseResult {
    let Some(call) = target.options.slow_call.clone() else {
        return CaseResult::skip("needs a slow call (--slow-tool)");
    };
    let (mut session, grant) = match established(&target).await {
        Ok(established) => established,
        Err(result) => return result,
    };
    let cap = u64::from(grant.limits.max_in_flight);
    if cap == 0 || cap > 256 {
        return CaseResult::skip(format!("max_in_flight {cap}"));
    }
    let args = encode_args(&call.args);
    for id in 0..cap {
        let request = session.request(100 + id, &call.tool, &args);
        session.send(&Message::Request(request)).await;
    }
    let extra = session.request(100 + cap, &call.tool, &args);
    session.send(&Message::Request(extra)).await;
    let mut refusal = None;
    let deadline = Instant::now() + target.options.step;
    while refusal.is_none() && Instant::now() < deadline {
        match session.next().await {
            Ok(Message::Error(error)) if error.id == Some(100 + cap) => refusal = Some(error),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    for id in 0..=cap {
        session
            .send(&Message::Cancel(Cancel { id: 100 + id }))
            .await;
    }
    let ok = refusal.as_ref().is_some_and(|e| {
        e.code == ErrorCode::RESOURCE_EXHAUSTED.0
            && e.message == "too many calls in flight"
            && e.retry_after_ms.is_some()
            && (!target.options.default_limits || e.retry_after_ms == Some(100))
    });
    CaseResult::check(
        ok,
        format!(
            "REQUEST {}: RESOURCE_EXHAUSTED (8) \"too many calls in flight\", retry_after_ms 100",
            cap + 1
        ),
        refusal.map_or_else(
            || "no refusal".to_owned(),
            |e| {
                format!(
                    "ERROR {} {:?} retry_after_ms {:?}",
                    rpc_name(e.code),
                    e.message,
                    e.retry_after_ms
                )
            },
        ),
    )
}

// =====================================================================================
// Floods
// =====================================================================================

async fn lineage_quota(target: Arc<ServerTarget>) -> CaseResult {
    if !target.options.floods {
        return CaseResult::skip("flood cases disabled");
    }
    let mut oldest: Option<(Vec<u8>, Request)> = None;
    for index in 0..17 {
        let (mut session, grant) = match established(&target).await {
            Ok(established) => established,
            Err(result) => return result,
        };
        let (request, _) = match first_call(&target, &mut session, &grant, 1).await {
            Ok(call) => call,
            Err(result) => return result.with_detail(format!("lineage {index}")),
        };
        if oldest.is_none() {
            oldest = Some((session.session_id[..16].to_vec(), request));
        }
    }
    let Some((lineage, request)) = oldest else {
        return CaseResult::harness_error("no lineage");
    };
    let (mut session, _) =
        match established_resuming(&target, target.identity.clone(), Some(lineage)).await {
            Ok(established) => established,
            Err(result) => return result,
        };
    let mut again = session.request(1, &request.tool, &request.args);
    again.retry = true;
    let outcome = answer(&mut session, &again).await;
    CaseResult::check(
        matches!(&outcome, Ok(Message::Error(error)) if error.code == 101),
        "ERROR RESULT_UNAVAILABLE (101): the oldest of 17 lineages was dropped",
        describe(&outcome),
    )
}

async fn preauth_limit(target: Arc<ServerTarget>) -> CaseResult {
    if !target.options.floods {
        return CaseResult::skip("flood cases disabled");
    }
    if !target.options.default_limits {
        return CaseResult::skip("the server is configured with other limits");
    }
    let step = target.options.step;
    let mut held = Vec::new();
    for index in 0..64 {
        match peer::upgrade(&target.url, None, Some(SUBPROTOCOL), step).await {
            Upgrade::Accepted { socket, .. } => held.push(socket),
            other => {
                return precondition(format!("upgrade {} of 64: {}", index + 1, other.describe()))
            }
        }
    }
    let extra = peer::upgrade(&target.url, None, Some(SUBPROTOCOL), step).await;
    drop(held);
    // Give the server a moment to release the slots before the next case.
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        match peer::upgrade(&target.url, None, Some(SUBPROTOCOL), step).await {
            Upgrade::Refused(429) => tokio::time::sleep(Duration::from_millis(50)).await,
            _ => break,
        }
    }
    CaseResult::check(
        matches!(extra, Upgrade::Refused(429)),
        "the 65th upgrade: HTTP 429",
        extra.describe(),
    )
}

async fn rate_limit(target: Arc<ServerTarget>) -> CaseResult {
    if !target.options.floods {
        return CaseResult::skip("flood cases disabled");
    }
    // The flood cases before this one spend the identity's budget; at the default
    // 100 calls/s its burst of 200 is whole again after 2 s. Without the pause the
    // case would judge a bucket the previous cases emptied, not the server.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (mut session, _) = match established(&target).await {
        Ok(established) => established,
        Err(result) => return result,
    };
    const FLOOD: u64 = 260;
    let started = Instant::now();
    let args = encode_args(&serde_json::json!({}));
    for id in 0..FLOOD {
        let request = session.request(id, "conformance-no-such-tool", &args);
        session.send(&Message::Request(request)).await;
    }
    let (mut denied, mut exhausted, mut other) = (0u64, Vec::new(), Vec::new());
    while denied + (exhausted.len() as u64) + (other.len() as u64) < FLOOD {
        match session.next().await {
            Ok(Message::Error(error)) if error.id.is_some() => {
                if error.code == ErrorCode::PERMISSION_DENIED.0 {
                    denied += 1;
                } else if error.code == ErrorCode::RESOURCE_EXHAUSTED.0 {
                    exhausted.push(error);
                } else {
                    other.push(format!("ERROR {}", error.code));
                }
            }
            Ok(_) => {}
            Err(ending) => {
                other.push(ending.to_string());
                break;
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let hinted = exhausted
        .iter()
        .all(|e| e.retry_after_ms.is_some_and(|ms| ms > 0) && e.message == "rate limit exceeded");
    let observed = format!(
        "{denied} PERMISSION_DENIED, {} RESOURCE_EXHAUSTED{}, {} other, in {elapsed:.2} s",
        exhausted.len(),
        if hinted {
            " (all with retry_after_ms)"
        } else {
            " (SOME WITHOUT retry_after_ms or with another message)"
        },
        other.len()
    );
    let expected = "PERMISSION_DENIED while the budget lasts, then RESOURCE_EXHAUSTED \"rate limit exceeded\" with retry_after_ms";
    // With a burst of 200 and 100/s, at most 200 + 100 * elapsed (+1) are admitted.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let bound = 201 + (100.0 * elapsed).ceil() as u64;
    if exhausted.is_empty() && denied <= bound {
        return CaseResult::new(
            Verdict::Info,
            expected,
            observed,
            "the flood was slower than the budget: nothing to judge",
        );
    }
    CaseResult::check(
        !exhausted.is_empty() && hinted && other.is_empty() && denied <= bound,
        expected,
        observed,
    )
}

// =====================================================================================
// Grants
// =====================================================================================

/// RFC 3339 (UTC, `Z`) of a Unix time in seconds.
fn rfc3339(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A PASETO v4.public token over exactly `claims` (JSON text), signed by `issuer`
/// with the implicit assertion of GRT-002.
fn sign_claims(issuer: &Identity, claims: &str) -> String {
    toolwire_protocol::paseto::sign_v4_public(
        issuer.signing_key(),
        claims.as_bytes(),
        b"",
        b"toolwire/1 grant",
    )
}

/// Valid claims for `holder`, for `tools`, expiring in an hour.
fn grant_claims(
    target: &ServerTarget,
    issuer: &Identity,
    holder: &IdentityKey,
    tools: &[&str],
) -> serde_json::Map<String, serde_json::Value> {
    let mut claims = serde_json::Map::new();
    claims.insert("iss".into(), issuer.public_key().to_string().into());
    claims.insert("sub".into(), holder.to_string().into());
    claims.insert("aud".into(), target.server_key.to_string().into());
    claims.insert(
        "jti".into(),
        format!("conformance-{}", hex::encode(&holder.as_bytes()[..6])).into(),
    );
    claims.insert("exp".into(), rfc3339(now_unix() + 3600).into());
    claims.insert("tools".into(), serde_json::json!(tools));
    claims
}

fn json_text(claims: &serde_json::Map<String, serde_json::Value>) -> String {
    serde_json::Value::Object(claims.clone()).to_string()
}

/// Handshake as `identity` presenting `grants`; the first sealed message, or how
/// the handshake ended.
async fn present_grants(
    target: &ServerTarget,
    identity: Identity,
    grants: Vec<String>,
) -> Result<Result<(Session, CapGrant), Ending>, CaseResult> {
    let step = target.options.step;
    let mut socket = peer::connect(&target.url, step)
        .await
        .map_err(precondition)?;
    let mut params = HandshakeParams::new(identity.clone(), target.url.clone(), target.server_key);
    params.cap_request = CapRequest {
        tools: vec!["*".to_owned()],
        grants,
    };
    let mut handshake =
        Handshake::new(params).map_err(|e| CaseResult::harness_error(e.to_string()))?;
    let record1 = handshake
        .record1()
        .map_err(|e| CaseResult::harness_error(e.to_string()))?;
    peer::send_binary(&mut socket, record1, step).await;
    let record2 = peer::next_binary(&mut socket, step)
        .await
        .ok_or_else(|| precondition("no record 2"))?;
    handshake.read_record2(&record2).map_err(precondition)?;
    let hello = handshake.client_hello();
    let record3 = hello_record(&mut handshake, &hello)
        .map_err(|e| CaseResult::harness_error(e.to_string()))?;
    peer::send_binary(&mut socket, record3, step).await;
    let keys = handshake
        .finish()
        .map_err(|e| CaseResult::harness_error(e.to_string()))?;
    // Peek: a bare close frame ends the handshake; otherwise a session.
    let mut session = Session::from_keys(socket, identity, target.server_key, &keys, step);
    match session.next().await {
        Ok(Message::CapGrant(grant)) => Ok(Ok((session, grant))),
        Ok(other) => Err(precondition(format!("first message {}", other.kind()))),
        Err(ending) => Ok(Err(ending)),
    }
}

async fn grant_holder(target: Arc<ServerTarget>) -> CaseResult {
    let Some(issuer) = target.options.issuer.clone() else {
        return CaseResult::skip("needs a grant issuer the server trusts (--issuer)");
    };
    let Some(call) = target.options.call.clone() else {
        return CaseResult::skip("needs a callable tool (--call-tool)");
    };
    let stranger = Identity::generate(&mut rand_core::OsRng);
    let mut claims = grant_claims(&target, &issuer, &stranger.public_key(), &[&call.tool]);
    claims.insert(
        "x-future-claim".into(),
        serde_json::json!({"ignored": true}),
    );
    let jti = claims["jti"].as_str().unwrap_or_default().to_owned();
    let token = sign_claims(&issuer, &json_text(&claims));
    let expected = format!(
        "handshake completes; CAP_GRANT grants only {}; a call relying on the grant executes",
        call.tool
    );
    let (mut session, grant) = match present_grants(&target, stranger.clone(), vec![token]).await {
        Err(result) => return result,
        Ok(Err(ending)) => return CaseResult::check(false, expected, ending.to_string()),
        Ok(Ok(established)) => established,
    };
    let names: Vec<&str> = grant.granted.iter().map(|t| t.name.as_str()).collect();
    if names.iter().any(|name| *name != call.tool) {
        return CaseResult::check(false, expected, format!("CAP_GRANT grants {names:?}"));
    }
    if names.is_empty() {
        return CaseResult::new(
            Verdict::Info,
            expected,
            "CAP_GRANT grants nothing: the server's policy does not admit grant holders",
            "AUTHZ-012 not exercised",
        );
    }
    let args = encode_args(&call.args);
    let mut request = session.request(1, &call.tool, &args);
    request.grant_id = Some(jti.clone());
    let signature = stranger.sign(&peer::request_signing_bytes(
        &session.session_id,
        1,
        &call.tool,
        &args,
        &jti,
    ));
    request.signature = Some(signature.to_vec().into());
    let outcome = answer(&mut session, &request).await;
    CaseResult::check(
        matches!(outcome, Ok(Message::Response(_))),
        expected,
        format!("CAP_GRANT grants {names:?}; call: {}", describe(&outcome)),
    )
}

#[derive(Clone, Copy)]
enum BadGrant {
    TooLong,
    EmptyFooter,
    Padded,
    Short,
    DuplicateClaim,
    MistypedClaim,
    NonCanonicalKey,
    LongJti,
    BadTime,
    Expired,
    OtherHolder,
    ForeignIssuer,
}

/// The key text of `key` with non-zero unused bits in its last character: decodes
/// to the same 32 bytes under a lenient decoder.
fn non_canonical_key_text(key: &IdentityKey) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut text = key.to_string().into_bytes();
    if let Some(last) = text.last_mut() {
        if let Some(index) = ALPHABET.iter().position(|c| c == last) {
            *last = ALPHABET[(index & !0b11) | 0b01];
        }
    }
    String::from_utf8(text).unwrap_or_default()
}

async fn bad_grant(target: Arc<ServerTarget>, how: BadGrant) -> CaseResult {
    let Some(issuer) = target.options.issuer.clone() else {
        return CaseResult::skip("needs a grant issuer the server trusts (--issuer)");
    };
    let tool = target
        .options
        .call
        .as_ref()
        .map_or_else(|| "*".to_owned(), |call| call.tool.clone());
    let stranger = Identity::generate(&mut rand_core::OsRng);
    let holder = stranger.public_key();
    let mut claims = grant_claims(&target, &issuer, &holder, &[&tool]);
    let token = match how {
        BadGrant::TooLong => {
            claims.insert("x-pad".into(), "p".repeat(8200).into());
            sign_claims(&issuer, &json_text(&claims))
        }
        BadGrant::EmptyFooter => format!("{}.", sign_claims(&issuer, &json_text(&claims))),
        BadGrant::Padded => format!("{}=", sign_claims(&issuer, &json_text(&claims))),
        BadGrant::Short => format!("v4.public.{}", "A".repeat(40)),
        BadGrant::DuplicateClaim => {
            let text = json_text(&claims);
            let doubled = format!("{},\"tools\":[\"*\"]}}", &text[..text.len() - 1]);
            sign_claims(&issuer, &doubled)
        }
        BadGrant::MistypedClaim => {
            claims.insert("tools".into(), serde_json::json!(tool));
            sign_claims(&issuer, &json_text(&claims))
        }
        BadGrant::NonCanonicalKey => {
            claims.insert("sub".into(), non_canonical_key_text(&holder).into());
            sign_claims(&issuer, &json_text(&claims))
        }
        BadGrant::LongJti => {
            claims.insert("jti".into(), "j".repeat(129).into());
            sign_claims(&issuer, &json_text(&claims))
        }
        BadGrant::BadTime => {
            claims.insert("exp".into(), "next tuesday".into());
            sign_claims(&issuer, &json_text(&claims))
        }
        BadGrant::Expired => {
            claims.insert("exp".into(), rfc3339(now_unix() - 3600).into());
            sign_claims(&issuer, &json_text(&claims))
        }
        BadGrant::OtherHolder => {
            let other = Identity::generate(&mut rand_core::OsRng);
            claims.insert("sub".into(), other.public_key().to_string().into());
            sign_claims(&issuer, &json_text(&claims))
        }
        BadGrant::ForeignIssuer => {
            let foreign = Identity::generate(&mut rand_core::OsRng);
            claims.insert("iss".into(), foreign.public_key().to_string().into());
            sign_claims(&foreign, &json_text(&claims))
        }
    };
    match present_grants(&target, stranger, vec![token]).await {
        Err(result) => result,
        Ok(Ok((_, grant))) => CaseResult::check(
            false,
            "close frame 4001 AUTH_FAILED (the grant is disregarded)",
            format!(
                "handshake ACCEPTED on the strength of the grant ({} tools granted)",
                grant.granted.len()
            ),
        ),
        Ok(Err(ending)) => expect_handshake_close(&ending, 4001),
    }
}

async fn cap_request_ninth(target: Arc<ServerTarget>) -> CaseResult {
    let Some(issuer) = target.options.issuer.clone() else {
        return CaseResult::skip("needs a grant issuer the server trusts (--issuer)");
    };
    let (Some(call), Some(slow)) = (
        target.options.call.clone(),
        target.options.slow_call.clone(),
    ) else {
        return CaseResult::skip("needs two callable tools (--call-tool, --slow-tool)");
    };
    if call.tool == slow.tool {
        return CaseResult::skip("needs two different tools");
    }
    let stranger = Identity::generate(&mut rand_core::OsRng);
    let holder = stranger.public_key();
    let first = sign_claims(
        &issuer,
        &json_text(&grant_claims(&target, &issuer, &holder, &[&call.tool])),
    );
    let mut second_claims = grant_claims(&target, &issuer, &holder, &[&slow.tool]);
    second_claims.insert("jti".into(), "conformance-second".into());
    let second = sign_claims(&issuer, &json_text(&second_claims));
    let (mut session, grant) = match present_grants(&target, stranger, vec![first]).await {
        Err(result) => return result,
        Ok(Err(ending)) => return precondition(format!("a valid grant was refused: {ending}")),
        Ok(Ok(established)) => established,
    };
    if grant.granted.is_empty() {
        return CaseResult::new(
            Verdict::Info,
            "",
            "CAP_GRANT grants nothing",
            "the server's policy does not admit grant holders",
        );
    }
    let granted = |update: &Result<Message, Ending>| match update {
        Ok(Message::CapUpdate(update)) => Some(update.granted.iter().any(|t| t.name == slow.tool)),
        _ => None,
    };
    let mut ninth = (0..8)
        .map(|i| format!("v4.public.junk-{i}"))
        .collect::<Vec<_>>();
    ninth.push(second.clone());
    session
        .send(&Message::CapRequest(CapRequest {
            tools: vec!["*".to_owned()],
            grants: ninth,
        }))
        .await;
    let after_ninth = session.next().await;
    session
        .send(&Message::CapRequest(CapRequest {
            tools: vec!["*".to_owned()],
            grants: vec![second],
        }))
        .await;
    let after_first = session.next().await;
    let (ninth_added, first_added) = (granted(&after_ninth), granted(&after_first));
    CaseResult::check(
        ninth_added == Some(false) && first_added == Some(true),
        format!(
            "as the ninth token: {} not granted; as the first: granted",
            slow.tool
        ),
        format!(
            "ninth: {}; first: {}",
            ninth_added.map_or_else(
                || describe(&after_ninth),
                |g| if g {
                    "GRANTED".into()
                } else {
                    "not granted".into()
                }
            ),
            first_added.map_or_else(
                || describe(&after_first),
                |g| if g {
                    "granted".into()
                } else {
                    "NOT granted".into()
                }
            ),
        ),
    )
}

async fn stream_items(target: Arc<ServerTarget>) -> CaseResult {
    let Some(call) = target.options.stream_call.clone() else {
        return CaseResult::skip("needs a streaming call (--stream-tool)");
    };
    let (mut session, _) = match established(&target).await {
        Ok(established) => established,
        Err(result) => return result,
    };
    let request = session.request(41, &call.tool, &encode_args(&call.args));
    session.send(&Message::Request(request)).await;
    let mut indices = Vec::new();
    let expected = "STREAM_ITEM indices 0, 1, 2, … then RESPONSE; nothing for the id afterwards";
    loop {
        match session.next().await {
            Ok(Message::StreamItem(item)) if item.id == 41 => indices.push(item.index),
            Ok(Message::Response(response)) if response.id == 41 => break,
            Ok(Message::Error(error)) if error.id == Some(41) => {
                return precondition(format!(
                    "the streaming call was refused: ERROR {}",
                    error.code
                ))
            }
            Ok(_) => {}
            Err(ending) => return CaseResult::check(false, expected, ending.to_string()),
        }
    }
    let late = match session.collect_for(target.options.quiet).await {
        Ok(messages) => messages
            .iter()
            .filter(|m| matches!(m, Message::StreamItem(item) if item.id == 41))
            .count(),
        Err(ending) => return CaseResult::check(false, expected, ending.to_string()),
    };
    let in_order = !indices.is_empty()
        && indices
            .iter()
            .enumerate()
            .all(|(position, index)| u64::try_from(position).ok() == Some(*index));
    CaseResult::check(
        in_order && late == 0,
        expected,
        format!("indices {indices:?}, RESPONSE, then {late} STREAM_ITEM(s)"),
    )
}

async fn origin_required(target: Arc<ServerTarget>) -> CaseResult {
    if !target.options.origin_required {
        return CaseResult::skip("the server does not require Origin (--origin-required)");
    }
    expect_status(&target, None, Some(SUBPROTOCOL), 403).await
}

async fn admission_order(target: Arc<ServerTarget>) -> CaseResult {
    let mut lineage = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut lineage);
    let (mut session, grant) = match established_resuming(
        &target,
        target.identity.clone(),
        Some(lineage.to_vec()),
    )
    .await
    {
        Ok(established) => established,
        Err(result) => return result,
    };
    let Some((call, _)) = call_of(&target, &grant) else {
        return CaseResult::skip("no tool is granted to the identity");
    };
    let args = encode_args(&call.args);
    let mut huge = session.request(1 << 62, &call.tool, &args);
    huge.retry = true;
    let first = answer(&mut session, &huge).await;
    let top = session.request(5000, &call.tool, &args);
    let executed = answer(&mut session, &top).await;
    let mut old = session.request(1, &call.tool, &args);
    old.retry = true;
    let stale = answer(&mut session, &old).await;
    let code = |outcome: &Result<Message, Ending>| match outcome {
        Ok(Message::Error(error)) => Some(error.code),
        _ => None,
    };
    CaseResult::check(
        code(&first) == Some(3)
            && matches!(executed, Ok(Message::Response(_)))
            && code(&stale) == Some(100),
        "2^62 with retry: INVALID_ARGUMENT (3); id 5000: RESPONSE; id 1 with retry: STALE_REQUEST_ID (100)",
        format!(
            "{}; {}; {}",
            describe(&first),
            describe(&executed),
            describe(&stale)
        ),
    )
}

async fn clock_skew(target: Arc<ServerTarget>) -> CaseResult {
    let Some(issuer) = target.options.issuer.clone() else {
        return CaseResult::skip("needs a grant issuer the server trusts (--issuer)");
    };
    let Some(call) = target.options.call.clone() else {
        return CaseResult::skip("needs a callable tool (--call-tool)");
    };
    if !target.options.default_limits {
        return CaseResult::skip("the server is configured with other limits");
    }
    let expected =
        "exp 27 s ago: accepted, then GRANT_EXPIRED (102) once past the skew; exp 40 s ago: 4001";
    // Past the skew: refused in the handshake.
    let stranger = Identity::generate(&mut rand_core::OsRng);
    let mut claims = grant_claims(&target, &issuer, &stranger.public_key(), &[&call.tool]);
    claims.insert("exp".into(), rfc3339(now_unix() - 40).into());
    let too_old = sign_claims(&issuer, &json_text(&claims));
    let refused = match present_grants(&target, stranger, vec![too_old]).await {
        Err(result) => return result,
        Ok(Ok(_)) => {
            return CaseResult::check(false, expected, "a grant 40 s past exp was ACCEPTED")
        }
        Ok(Err(ending)) => ending,
    };
    if expect_handshake_close(&refused, 4001).verdict != Verdict::Pass {
        return CaseResult::check(false, expected, format!("exp 40 s ago: {refused}"));
    }
    // Within the skew: accepted, until now − 30 s reaches exp.
    let stranger = Identity::generate(&mut rand_core::OsRng);
    let exp = now_unix() - 27;
    let mut claims = grant_claims(&target, &issuer, &stranger.public_key(), &[&call.tool]);
    claims.insert("exp".into(), rfc3339(exp).into());
    let jti = claims["jti"].as_str().unwrap_or_default().to_owned();
    let token = sign_claims(&issuer, &json_text(&claims));
    let (mut session, grant) = match present_grants(&target, stranger.clone(), vec![token]).await {
        Err(result) => return result,
        Ok(Err(ending)) => {
            return CaseResult::check(false, expected, format!("exp 27 s ago: {ending}"))
        }
        Ok(Ok(established)) => established,
    };
    if grant.granted.is_empty() {
        return CaseResult::new(
            Verdict::Info,
            expected,
            "accepted, but CAP_GRANT grants nothing",
            "the server's policy does not admit grant holders: AUTHZ-013 not exercised",
        );
    }
    // Wait until now − 30 s ≥ exp, with a margin of a second and a half.
    let wait = u64::try_from(exp + 30 - now_unix()).unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(wait * 1000 + 1500)).await;
    let args = encode_args(&call.args);
    let mut request = session.request(1, &call.tool, &args);
    request.grant_id = Some(jti.clone());
    let signature = stranger.sign(&peer::request_signing_bytes(
        &session.session_id,
        1,
        &call.tool,
        &args,
        &jti,
    ));
    request.signature = Some(signature.to_vec().into());
    let outcome = answer(&mut session, &request).await;
    CaseResult::check(
        matches!(&outcome, Ok(Message::Error(error)) if error.code == 102),
        expected,
        format!(
            "exp 40 s ago: 4001; exp 27 s ago: accepted; after the skew: {}",
            describe(&outcome)
        ),
    )
}

async fn cache_per_lineage(target: Arc<ServerTarget>) -> CaseResult {
    if !target.options.floods {
        return CaseResult::skip("flood cases disabled");
    }
    if !target.options.default_limits {
        return CaseResult::skip("the server is configured with other limits");
    }
    let (mut session, grant) = match established(&target).await {
        Ok(established) => established,
        Err(result) => return result,
    };
    let Some((call, _)) = call_of(&target, &grant) else {
        return CaseResult::skip("no tool is granted to the identity");
    };
    let args = encode_args(&call.args);
    for id in 1..=257u64 {
        let request = session.request(id, &call.tool, &args);
        match answer_paced(&mut session, &request).await {
            Ok(Message::Response(_)) => {}
            other => return precondition(format!("call {id}: {}", describe(&other))),
        }
    }
    let oldest = session.request(1, &call.tool, &args);
    let first = answer_paced(&mut session, &oldest).await;
    let newest = session.request(257, &call.tool, &args);
    let last = answer_paced(&mut session, &newest).await;
    CaseResult::check(
        matches!(&first, Ok(Message::Error(error)) if error.code == 101)
            && matches!(last, Ok(Message::Response(_))),
        "id 1: RESULT_UNAVAILABLE (101); id 257: RESPONSE from the cache",
        format!("id 1: {}; id 257: {}", describe(&first), describe(&last)),
    )
}

/// [`answer`], sending the REQUEST again after `retry_after_ms` while the server
/// refuses it with RESOURCE_EXHAUSTED (a refused id is not recorded, AMO-018).
pub(super) async fn answer_paced(
    session: &mut Session,
    request: &Request,
) -> Result<Message, Ending> {
    for _ in 0..50 {
        match answer(session, request).await {
            Ok(Message::Error(error)) if error.code == ErrorCode::RESOURCE_EXHAUSTED.0 => {
                let wait = error.retry_after_ms.unwrap_or(100).clamp(10, 2000);
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
            other => return other,
        }
    }
    answer(session, request).await
}

async fn grant_revocation(target: Arc<ServerTarget>) -> CaseResult {
    let (Some(issuer), Some(revoke)) =
        (target.options.issuer.clone(), target.options.revoke.clone())
    else {
        return CaseResult::skip("needs a trusted issuer and a way to revoke grants on the server");
    };
    let Some(call) = target.options.call.clone() else {
        return CaseResult::skip("needs a callable tool (--call-tool)");
    };
    let stranger = Identity::generate(&mut rand_core::OsRng);
    let holder = stranger.public_key();
    let suffix = hex::encode(&holder.as_bytes()[..4]);
    let exp = now_unix() - 27;
    let mut tokens = Vec::new();
    let mut jtis = Vec::new();
    for (name, expires) in [("expired", Some(exp)), ("revoked", None), ("kept", None)] {
        let mut claims = grant_claims(&target, &issuer, &holder, &[&call.tool]);
        let jti = format!("conformance-{name}-{suffix}");
        claims.insert("jti".into(), jti.clone().into());
        if let Some(expires) = expires {
            claims.insert("exp".into(), rfc3339(expires).into());
        }
        tokens.push(sign_claims(&issuer, &json_text(&claims)));
        jtis.push(jti);
    }
    let expected = "revoked: CAPABILITY_REVOKED (103); revoked and expired: GRANT_EXPIRED (102); last revoked: CAP_UPDATE, then CLOSE 4007";
    let (mut session, grant) = match present_grants(&target, stranger.clone(), tokens).await {
        Err(result) => return result,
        Ok(Err(ending)) => return precondition(format!("valid grants refused: {ending}")),
        Ok(Ok(established)) => established,
    };
    if grant.granted.is_empty() {
        return CaseResult::new(
            Verdict::Info,
            expected,
            "CAP_GRANT grants nothing",
            "the server's policy does not admit grant holders",
        );
    }
    let args = encode_args(&call.args);
    let request_with = |session: &Session, id: u64, jti: &str| {
        let mut request = session.request(id, &call.tool, &args);
        request.grant_id = Some(jti.to_owned());
        let signature = stranger.sign(&peer::request_signing_bytes(
            &session.session_id,
            id,
            &call.tool,
            &args,
            jti,
        ));
        request.signature = Some(signature.to_vec().into());
        request
    };
    (revoke.0)(&jtis[0]);
    (revoke.0)(&jtis[1]);
    let first = request_with(&session, 1, &jtis[1]);
    let revoked = answer(&mut session, &first).await;
    let wait = u64::try_from(exp + 30 - now_unix()).unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(wait * 1000 + 1500)).await;
    let second = request_with(&session, 2, &jtis[0]);
    let expired = answer(&mut session, &second).await;
    (revoke.0)(&jtis[2]);
    // The revocation takes effect at the next REQUEST (AUTHZ-001).
    let third = request_with(&session, 3, &jtis[2]);
    session.send(&Message::Request(third)).await;
    let ending = session.await_close(target.options.step).await;
    let code = |outcome: &Result<Message, Ending>| match outcome {
        Ok(Message::Error(error)) => Some(error.code),
        _ => None,
    };
    let ok = code(&revoked) == Some(103)
        && code(&expired) == Some(102)
        && ending.messages.iter().any(|k| k == "CAP_UPDATE")
        && ending.record_code() == Some(4007);
    CaseResult::check(
        ok,
        expected,
        format!(
            "revoked: {}; revoked and expired: {}; last revoked: {ending}",
            describe(&revoked),
            describe(&expired)
        ),
    )
}

async fn certificate_sent(target: Arc<ServerTarget>) -> CaseResult {
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
    let Some(record2) = peer::next_binary(&mut socket, step).await else {
        return precondition("no record 2");
    };
    let hello = match handshake.read_record2(&record2) {
        Ok(hello) => hello,
        Err(error) => return precondition(error),
    };
    let expected = target.options.certificate.clone().map_or_else(
        || "no certificate field".to_owned(),
        |c| format!("the configured certificate ({} bytes)", c.len()),
    );
    let observed = hello.certificate.clone().map_or_else(
        || "no certificate field".to_owned(),
        |c| format!("a certificate of {} bytes", c.len()),
    );
    CaseResult::check(
        hello.certificate == target.options.certificate,
        expected,
        observed,
    )
}
