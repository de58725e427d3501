//! Server-mode cases that each need a particular tool or server configuration: a
//! result larger than one record (REC-014, REC-034), records pipelined after a failed
//! handshake (HS-035), a policy that denies a granted call (AUTHZ-016), a server whose
//! audit log cannot be written (CLS-009), an operator probe of the budget state
//! (AUTHZ-006).
//!
//! Execution is observed through the configured call ([`ServerOptions::call`]): a
//! counter whose result is its run count (an integer, or an object with one integer
//! field). A case that needs to see whether something ran compares the run counts of
//! calls made before and after on good connections.
//!
//! [`ServerOptions::call`]: crate::server::ServerOptions::call

use crate::peer::{self, Ending, Handshake, HandshakeParams, Header, Session};
use crate::server::{ServerCase, ServerTarget, ToolCall};
use crate::{Case, CaseResult};
use futures_util::{SinkExt as _, StreamExt as _};
use std::sync::Arc;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use toolwire_protocol::handshake::ServerHello;
use toolwire_protocol::message::{CapGrant, ErrorMessage, Request, Response};
use toolwire_protocol::{CloseCode, ErrorCode, Message};

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

/// The cases of this file, in run order.
pub(super) fn cases() -> Vec<ServerCase> {
    vec![
        case!("rec.big-result", ["REC-014", "REC-034"],
            "A call whose result does not fit in one record is answered at once with ERROR INTERNAL (13); no record body exceeds the announced max_record_body; the connection stays usable.", big_result),
        case!("hs.no-record-after-failure", ["HS-035", "HS-025"],
            "A record 3 whose ClientHello signature is bad, pipelined in one write with a REQUEST sealed under the derived transport keys: the server closes with AUTH_FAILED (4001) and does not execute the REQUEST (the counter moves only by the good connection's own calls).", no_record_after_failure),
        case!("authz.policy-denied", ["AUTHZ-016"],
            "A granted tool called with arguments the server's policy denies is refused with PERMISSION_DENIED (7) and not executed; the same tool with other arguments runs (a policy denial, not a missing grant).", policy_denied),
        case!("authz.budget-state-bounded", ["AUTHZ-006"],
            "100 pipelined REQUESTs, each for a different made-up tool name, are refused, and the server's count of per-tool budget entries (read by the operator probe) grows by no more than the manifest has tools.", budget_state_bounded),
        case!("cls.internal-error", ["CLS-009"],
            "A server whose audit log cannot be written closes the connection of a call with INTERNAL_ERROR (1011), CLOSE record then close frame; a new connection is closed with 1011 and serves no call.", internal_error),
    ]
}

fn precondition(what: impl std::fmt::Display) -> CaseResult {
    CaseResult::harness_error(format!("precondition failed: {what}"))
}

fn rpc_name(code: u32) -> String {
    match ErrorCode(code).name() {
        Some(name) => format!("{name} ({code})"),
        None => code.to_string(),
    }
}

fn encode_args(args: &serde_json::Value) -> Vec<u8> {
    rmp_serde::to_vec_named(args).unwrap_or_default()
}

fn params(target: &ServerTarget) -> HandshakeParams {
    HandshakeParams::new(
        target.identity.clone(),
        target.url.clone(),
        target.server_key,
    )
}

/// A complete handshake by hand, keeping the ServerHello; then the CAP_GRANT.
async fn established(
    target: &ServerTarget,
) -> Result<(Session, ServerHello, CapGrant), CaseResult> {
    let step = target.options.step;
    let mut socket = peer::connect(&target.url, step)
        .await
        .map_err(precondition)?;
    let mut handshake = Handshake::new(params(target)).map_err(precondition)?;
    let record1 = handshake.record1().map_err(precondition)?;
    if !peer::send_binary(&mut socket, record1, step).await {
        return Err(precondition("could not send record 1"));
    }
    let record2 = peer::next_binary(&mut socket, step)
        .await
        .ok_or_else(|| precondition("no record 2"))?;
    let hello = handshake.read_record2(&record2).map_err(precondition)?;
    let client_hello = rmp_serde::to_vec_named(&handshake.client_hello()).map_err(precondition)?;
    let record3 = handshake.record3(&client_hello).map_err(precondition)?;
    if !peer::send_binary(&mut socket, record3, step).await {
        return Err(precondition("could not send record 3"));
    }
    let keys = handshake.finish().map_err(precondition)?;
    let mut session = Session::from_keys(
        socket,
        target.identity.clone(),
        target.server_key,
        &keys,
        step,
    );
    match session.next().await {
        Ok(Message::CapGrant(grant)) => Ok((session, hello, grant)),
        Ok(other) => Err(precondition(format!(
            "first message {} instead of CAP_GRANT",
            other.kind()
        ))),
        Err(ending) => Err(precondition(format!(
            "session ended before CAP_GRANT: {ending}"
        ))),
    }
}

/// Sends `request` and returns the answer to its id (skipping other messages), with
/// the largest inner message seen meanwhile (re-encoded: its length plus the 16-byte
/// tag is the record body the server sent, for a canonical encoding).
async fn answer(session: &mut Session, request: &Request) -> (Result<Message, Ending>, usize) {
    session.send(&Message::Request(request.clone())).await;
    let mut largest = 0;
    loop {
        match session.next().await {
            Err(ending) => return (Err(ending), largest),
            Ok(message) => {
                largest = largest.max(message.encode().len());
                match message {
                    message @ (Message::Response(Response { id, .. })
                    | Message::Error(ErrorMessage { id: Some(id), .. }))
                        if id == request.id =>
                    {
                        return (Ok(message), largest)
                    }
                    _ => {}
                }
            }
        }
    }
}

fn describe(answer: &Result<Message, Ending>) -> String {
    match answer {
        Ok(Message::Response(response)) => {
            format!("RESPONSE ({} result bytes)", response.result.len())
        }
        Ok(Message::Error(error)) => format!("ERROR {} {:?}", rpc_name(error.code), error.message),
        Ok(other) => other.kind().to_owned(),
        Err(ending) => ending.to_string(),
    }
}

/// The run count a counter returned: an integer, or an object with one integer field.
pub(super) fn run_count(result: &[u8]) -> Option<u64> {
    let value: serde_json::Value = rmp_serde::from_slice(result).ok()?;
    match &value {
        serde_json::Value::Number(number) => number.as_u64(),
        serde_json::Value::Object(fields) if fields.len() == 1 => {
            fields.values().next().and_then(serde_json::Value::as_u64)
        }
        _ => None,
    }
}

/// Calls `call` with request id `id` and returns its run count: `Err` is the case's
/// result when the call is not answered with a counter's RESPONSE.
async fn count(session: &mut Session, call: &ToolCall, id: u64) -> Result<u64, CaseResult> {
    let request = session.request(id, &call.tool, &encode_args(&call.args));
    let (outcome, _) = answer(session, &request).await;
    match &outcome {
        Ok(Message::Response(response)) => run_count(&response.result).ok_or_else(|| {
            CaseResult::skip(format!(
                "needs a counter call (--call-tool): {} does not return a run count",
                call.tool
            ))
        }),
        _ => Err(precondition(format!(
            "the call {} was answered {}",
            call.tool,
            describe(&outcome)
        ))),
    }
}

/// The run count through a fresh good connection.
async fn count_fresh(target: &ServerTarget, call: &ToolCall) -> Result<u64, CaseResult> {
    let (mut session, _, _) = established(target).await?;
    count(&mut session, call, 1).await
}

// =====================================================================================
// REC-014, REC-034: a result larger than one record
// =====================================================================================

async fn big_result(target: Arc<ServerTarget>) -> CaseResult {
    let Some(call) = target.options.big_result_call.clone() else {
        return CaseResult::skip(
            "needs a call whose result exceeds one record (--big-result-tool)",
        );
    };
    let (mut session, hello, _) = match established(&target).await {
        Ok(established) => established,
        Err(result) => return result,
    };
    let limit = (hello.params.max_record_body as usize).saturating_sub(16);
    let request = session.request(1, &call.tool, &encode_args(&call.args));
    let (outcome, largest) = answer(&mut session, &request).await;
    let expected = format!(
        "ERROR INTERNAL (13) at once, no inner message over {limit} bytes (max_record_body {} − 16), the connection still answers a PING",
        hello.params.max_record_body
    );
    if let Ok(Message::Response(response)) = &outcome {
        if response.result.len() <= limit.saturating_sub(128) {
            return precondition(format!(
                "the big-result call returned only {} bytes: it fits in one record",
                response.result.len()
            ));
        }
    }
    let internal = matches!(&outcome, Ok(Message::Error(e)) if e.code == ErrorCode::INTERNAL.0);
    let alive = session.ping(0x0b16).await;
    let observed = format!(
        "{}; largest inner message {largest} bytes; {}",
        describe(&outcome),
        match &alive {
            Ok(()) => "PING answered".to_owned(),
            Err(error) => format!("PING not answered: {error}"),
        }
    );
    CaseResult::check(
        internal && largest <= limit && alive.is_ok(),
        expected,
        observed,
    )
    .with_detail(session.violations.join("; "))
}

// =====================================================================================
// HS-035: nothing processed after a failed handshake
// =====================================================================================

async fn no_record_after_failure(target: Arc<ServerTarget>) -> CaseResult {
    let Some(call) = target.options.call.clone() else {
        return CaseResult::skip("needs a counter call (--call-tool)");
    };
    let step = target.options.step;
    let before = match count_fresh(&target, &call).await {
        Ok(count) => count,
        Err(result) => return result,
    };

    // A handshake that fails at message 3 (the ClientHello signs another static key,
    // HS-025), and right behind it, in the same write, a REQUEST sealed with the
    // transport keys the Noise handshake derived.
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
    if let Err(error) = handshake.read_record2(&record2) {
        return precondition(error);
    }
    let mut hello = handshake.client_hello();
    hello.signature = target
        .identity
        .sign(&peer::pae(&[b"toolwire/1 client static", &[0x5a; 32]]))
        .to_vec()
        .into();
    let record3 = match rmp_serde::to_vec_named(&hello)
        .map_err(|e| peer::PeerError(e.to_string()))
        .and_then(|payload| handshake.record3(&payload))
    {
        Ok(record3) => record3,
        Err(error) => return CaseResult::harness_error(error.to_string()),
    };
    let keys = match handshake.finish() {
        Ok(keys) => keys,
        Err(error) => return CaseResult::harness_error(error.to_string()),
    };
    let args = encode_args(&call.args);
    let signature = target.identity.sign(&peer::request_signing_bytes(
        &keys.session_id,
        1,
        &call.tool,
        &args,
        "",
    ));
    let request = Message::Request(Request {
        id: 1,
        tool: call.tool.clone(),
        args: args.into(),
        grant_id: None,
        deadline_ms: None,
        signature: Some(signature.to_vec().into()),
        retry: false,
    });
    let header = Header {
        version: 1,
        record_type: 0x10,
        reserved: 0,
        epoch: 0,
        seq: 0,
    };
    let body = peer::seal_body(&keys.send, 0, &header.encode(), &request.encode());
    let sealed = peer::record(header, &body);
    let pipelined = tokio::time::timeout(step, async {
        socket.feed(WsMessage::binary(record3)).await?;
        socket.feed(WsMessage::binary(sealed)).await?;
        socket.flush().await
    })
    .await;
    if !matches!(pipelined, Ok(Ok(()))) {
        return precondition("could not send record 3 and the REQUEST");
    }
    let ending = peer::await_raw_close(&mut socket, step).await;

    let after = match count_fresh(&target, &call).await {
        Ok(count) => count,
        Err(result) => return result,
    };
    let closed =
        ending.frame_code() == Some(CloseCode::AUTH_FAILED.0) && ending.binary_messages == 0;
    // The good connections ran the counter twice (before and after): only the second
    // one's run may lie between the two counts.
    let not_run = after == before + 1;
    CaseResult::check(
        closed && not_run,
        "close frame 4001 AUTH_FAILED, no record; the pipelined REQUEST not executed (run count moves by 1: the good connection's own call)",
        format!(
            "{ending}; run count {before} before, {after} after ({})",
            if not_run {
                "the pipelined REQUEST did not run".to_owned()
            } else {
                format!("{} runs unaccounted for", after.saturating_sub(before + 1))
            }
        ),
    )
}

// =====================================================================================
// AUTHZ-016: policy denial
// =====================================================================================

async fn policy_denied(target: Arc<ServerTarget>) -> CaseResult {
    let Some(denied) = target.options.denied_call.clone() else {
        return CaseResult::skip(
            "needs a granted call the server's policy denies (--denied-tool/--denied-args)",
        );
    };
    let (mut session, _, grant) = match established(&target).await {
        Ok(established) => established,
        Err(result) => return result,
    };
    if !grant.granted.iter().any(|tool| tool.name == denied.tool) {
        return precondition(format!(
            "{} is not in the CAP_GRANT: a policy denial needs a granted tool",
            denied.tool
        ));
    }
    // The same tool with the configured call's arguments (or `{}`) must run.
    let allowed = match &target.options.call {
        Some(call) if call.tool == denied.tool => call.clone(),
        _ => ToolCall {
            tool: denied.tool.clone(),
            args: serde_json::json!({}),
        },
    };
    let allowed_request = session.request(1, &allowed.tool, &encode_args(&allowed.args));
    let (first, _) = answer(&mut session, &allowed_request).await;
    let Ok(Message::Response(first)) = first else {
        return precondition(format!(
            "{} with {} (allowed arguments) was answered {}",
            allowed.tool,
            allowed.args,
            describe(&first)
        ));
    };
    let denied_request = session.request(2, &denied.tool, &encode_args(&denied.args));
    let (refusal, _) = answer(&mut session, &denied_request).await;
    let refused =
        matches!(&refusal, Ok(Message::Error(e)) if e.code == ErrorCode::PERMISSION_DENIED.0);
    let again_request = session.request(3, &allowed.tool, &encode_args(&allowed.args));
    let (again, _) = answer(&mut session, &again_request).await;
    let runs = match (&again, run_count(&first.result)) {
        (Ok(Message::Response(second)), Some(before)) => {
            run_count(&second.result).map(|after| (before, after))
        }
        _ => None,
    };
    let not_run = runs.is_none_or(|(before, after)| after == before + 1);
    let observed = format!(
        "denied call: {}; allowed call after it: {}{}",
        describe(&refusal),
        describe(&again),
        match runs {
            Some((before, after)) => format!("; run count {before} then {after}"),
            None => "; execution not observable (not a counter)".to_owned(),
        }
    );
    CaseResult::check(
        refused && not_run && matches!(again, Ok(Message::Response(_))),
        "denied call: ERROR PERMISSION_DENIED (7), not executed; the same tool with allowed arguments: RESPONSE",
        observed,
    )
}

// =====================================================================================
// AUTHZ-006: budget state bounded independently of the names clients send
// =====================================================================================

/// Made-up tool names per run: half the default burst of 200 calls per identity.
const MADE_UP_NAMES: u64 = 100;

/// How long the case waits at its end for the identity's call budget to refill (100
/// calls at the default 100 calls/s, with a margin): the flood cases after it expect
/// a full bucket.
const BUDGET_REFILL: Duration = Duration::from_millis(1500);

async fn budget_state_bounded(target: Arc<ServerTarget>) -> CaseResult {
    let Some(probe) = target.options.budget_entries.clone() else {
        return CaseResult::skip(
            "needs an operator probe of the server's per-tool budget entries (in process: Server::rate_budget_entries)",
        );
    };
    let (mut session, _, grant) = match established(&target).await {
        Ok(established) => established,
        Err(result) => return result,
    };
    let before = (probe.0)();
    let salt = rand_core::RngCore::next_u64(&mut rand_core::OsRng);
    for id in 1..=MADE_UP_NAMES {
        let request = session.request(id, &format!("made-up-{salt:016x}-{id}"), &[0x80]);
        if !session.send(&Message::Request(request)).await {
            return precondition(format!("the connection ended after {id} REQUESTs"));
        }
    }
    // Every REQUEST is answered (refused) before the count is read again.
    let mut refused = 0u64;
    let mut codes = std::collections::BTreeSet::new();
    while refused < MADE_UP_NAMES {
        match session.next().await {
            Ok(Message::Error(ErrorMessage {
                id: Some(_), code, ..
            })) => {
                refused += 1;
                codes.insert(rpc_name(code));
            }
            Ok(_) => {}
            Err(ending) => {
                return precondition(format!(
                    "the session ended after {refused} answers: {ending}"
                ))
            }
        }
    }
    let after = (probe.0)();
    tokio::time::sleep(BUDGET_REFILL).await;
    let growth = after.saturating_sub(before);
    let bound = grant.granted.len();
    CaseResult::check(
        growth <= bound,
        format!("per-tool budget entries grow by at most {bound} (the granted tools)"),
        format!(
            "{MADE_UP_NAMES} made-up names refused with {}; entries {before} then {after}",
            codes.into_iter().collect::<Vec<_>>().join(", ")
        ),
    )
}

// =====================================================================================
// CLS-009: INTERNAL_ERROR
// =====================================================================================

/// The first thing a fresh connection receives after record 1: record 2, or the
/// close frame's code (`None` without one).
enum First {
    Record2(Vec<u8>),
    Closed(Option<u16>),
}

async fn first_after_record1(socket: &mut peer::Socket, step: Duration) -> First {
    let deadline = tokio::time::Instant::now() + step;
    loop {
        match tokio::time::timeout_at(deadline, socket.next()).await {
            Ok(Some(Ok(WsMessage::Binary(bytes)))) => return First::Record2(bytes.to_vec()),
            Ok(Some(Ok(WsMessage::Close(frame)))) => {
                return First::Closed(frame.map(|frame| u16::from(frame.code)))
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_)) | None) | Err(_) => return First::Closed(None),
        }
    }
}

async fn internal_error(target: Arc<ServerTarget>) -> CaseResult {
    if !target.options.audit_failing {
        return CaseResult::skip(
            "needs a server whose audit log cannot be written (--audit-failing)",
        );
    }
    let Some(call) = target.options.call.clone() else {
        return CaseResult::skip("needs a call (--call-tool)");
    };
    let step = target.options.step;
    let code = CloseCode::INTERNAL_ERROR.0;
    // 1. A call: the server may answer it (the failure can come after), then closes.
    let (mut session, _, _) = match established(&target).await {
        Ok(established) => established,
        Err(result) => return result,
    };
    session
        .send(&Message::Request(session.request(
            1,
            &call.tool,
            &encode_args(&call.args),
        )))
        .await;
    let ending = session.await_close(step).await;
    let first_ok = ending.record_code() == Some(code)
        && ending.frame_code() == Some(code)
        && ending.records_after_close == 0;

    // 2. A new connection: closed with 1011 before its handshake completes, or after
    // it without answering a call.
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
    let (second_ok, second) = match first_after_record1(&mut socket, step).await {
        First::Closed(frame) => (
            frame == Some(code),
            format!(
                "closed before the handshake completed, close frame {}",
                frame.map_or("none".to_owned(), |c| c.to_string())
            ),
        ),
        First::Record2(record2) => {
            let keys = handshake
                .read_record2(&record2)
                .and_then(|_| {
                    rmp_serde::to_vec_named(&handshake.client_hello())
                        .map_err(|e| peer::PeerError(e.to_string()))
                })
                .and_then(|hello| handshake.record3(&hello))
                .map(|record3| (record3, ()));
            let Ok((record3, ())) = keys else {
                return precondition("the second handshake's record 2 did not verify");
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
            session
                .send(&Message::Request(session.request(
                    1,
                    &call.tool,
                    &encode_args(&call.args),
                )))
                .await;
            let ending = session.await_close(step).await;
            let answered = ending.messages.iter().any(|kind| kind == "RESPONSE");
            (
                !answered && ending.frame_code() == Some(code),
                format!("handshake completed, then {ending}"),
            )
        }
    };
    CaseResult::check(
        first_ok && second_ok,
        "CLOSE record 1011, then close frame 1011 (at most the call's answer before); a new connection closed with 1011 without a RESPONSE",
        format!("first connection: {ending}; new connection: {second}"),
    )
    .with_detail(session.violations.join("; "))
}
