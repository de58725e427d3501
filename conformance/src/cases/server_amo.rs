//! Server-mode cases of section 14 that need more than one connection at a time, the
//! operator's declared bounds, or a restart: a REQUEST waiting for the same id running
//! for another connection (AMO-011), the at-most-once bounds (AMO-030, AMO-033,
//! AMO-034), the durable store across a crash (AMO-036..AMO-039) and the audit log
//! continued after a crash (AUD-008).
//!
//! The bound cases need [`ServerOptions::at_most_once`](crate::server::ServerOptions)
//! (the defaults, 64 MiB and 1024 lineages, are far too large to reach); the durable
//! and audit cases need a [`Restarter`](crate::server::Restarter). They SKIP without.

use super::server::{
    answer, call_of, describe, encode_args, established, established_resuming, first_call,
    precondition, rpc_name,
};
use super::server_misc::run_count;
use crate::peer::{Ending, Session};
use crate::server::{ServerCase, ServerTarget, ToolCall};
use crate::{Case, CaseResult, Verdict};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use toolwire_protocol::audit::{verify_log_from, ChainPosition};
use toolwire_protocol::message::{ErrorMessage, Request, Response};
use toolwire_protocol::{ErrorCode, Message};

/// The cases of this file, in run order.
pub(super) fn cases() -> Vec<ServerCase> {
    vec![
        Case {
            id: "amo.in-flight.other-connection",
            clauses: &["AMO-010", "AMO-011"],
            description: "A slow call runs for connection A (still open, as a connection whose loss the server has not noticed); the same id retried on connection B resuming the lineage waits for it: A and B each get a RESPONSE with the same result bytes, B's signed for B's session.",
            run: |target| Box::pin(in_flight_elsewhere(target, false)),
        },
        Case {
            id: "amo.in-flight.after-cut",
            clauses: &["AMO-011"],
            description: "A slow call starts on connection A, A is cut; the id retried on connection B resuming the lineage while the call runs is answered on B with the running call's outcome, and a later copy with the same bytes (one execution). INFO when the server abandoned the call at the cut (RESULT_UNAVAILABLE, AMO-026).",
            run: |target| Box::pin(in_flight_elsewhere(target, true)),
        },
        Case {
            id: "amo.bounds.total-bytes",
            clauses: &["AMO-030"],
            description: "With the declared total of cached outcome bytes T: echo outcomes of T/3.5 bytes, a1 in lineage A, b1 and b2 in lineage B, then a2 in A (over T): the oldest outcome of the least recently used lineage, b1, is dropped (RESULT_UNAVAILABLE, 101), while a1, the oldest in the table, and a2 are still answered from the cache.",
            run: |target| Box::pin(total_bytes(target)),
        },
        Case {
            id: "amo.bounds.busy-lineage-kept",
            clauses: &["AMO-033", "AMO-032"],
            description: "A slow call runs in lineage L0 while as many new lineages as the declared bound each execute a call: an idle lineage (the first new one) is dropped to make room, never L0; after the slow call ends, its id retried on L0 is answered from the cache.",
            run: |target| Box::pin(busy_lineage_kept(target)),
        },
        Case {
            id: "amo.bounds.no-room",
            clauses: &["AMO-034"],
            description: "Every lineage the declared bound allows has a slow call in flight: a REQUEST in a new lineage is refused UNAVAILABLE (14) and not recorded: the same id sent again once the calls ended executes (RESPONSE).",
            run: |target| Box::pin(no_room(target)),
        },
        Case {
            id: "amo.durable.result-after-crash",
            clauses: &["AMO-037", "AMO-038"],
            description: "A call's RESPONSE arrives, the server crashes at once and is started again: the id retried on the resumed lineage is answered with the same result bytes, signed for the new session, without running again.",
            run: |target| Box::pin(result_after_crash(target)),
        },
        Case {
            id: "amo.durable.running-at-crash",
            clauses: &["AMO-036", "AMO-038"],
            description: "The server crashes while a slow call runs and is started again: the id, recorded before the call started, is answered RESULT_UNAVAILABLE (101) and never executed, sent with retry false and with retry true.",
            run: |target| Box::pin(running_at_crash(target)),
        },
        Case {
            id: "amo.durable.unrecordable",
            clauses: &["AMO-036"],
            description: "While the durable store cannot be written (the operator's store fault is on), a REQUEST for a counting tool is refused UNAVAILABLE (14); with the fault off and the server restarted, the next call of the resumed lineage counts one run more than the call before the fault: the refused id never ran.",
            run: |target| Box::pin(unrecordable(target)),
        },
        Case {
            id: "amo.durable.damaged-store",
            clauses: &["AMO-039"],
            description: "While the server is stopped its durable store file is overwritten with garbage: the server refuses to start. With the file put back it starts and answers an earlier call from it.",
            run: |target| Box::pin(damaged_store(target)),
        },
        Case {
            id: "aud.restart.continues-chain",
            clauses: &["AUD-008"],
            description: "The server crashes, an incomplete line (no LF) is appended to its audit log as a crash mid-write leaves it, and the server is started again: after a call, the incomplete line is gone and the new entries continue the chain from the last complete line (next seq, prev its hash).",
            run: |target| Box::pin(audit_continues(target)),
        },
    ]
}

// =====================================================================================
// Helpers
// =====================================================================================

/// Waits up to `wait` for the answer (RESPONSE or ERROR) to `id`, skipping anything
/// else.
async fn await_answer(session: &mut Session, id: u64, wait: Duration) -> Result<Message, Ending> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match session.next_within(left).await? {
            message @ (Message::Response(Response { id: answered, .. })
            | Message::Error(ErrorMessage {
                id: Some(answered), ..
            })) if answered == id => return Ok(message),
            _ => {}
        }
    }
}

/// How long a slow call may take: the suite only knows it takes at least a second.
fn slow_wait(target: &ServerTarget) -> Duration {
    target.options.step * 2
}

/// Sends `request` and waits (PING barrier) until the server processed it: a server
/// handles the records of a connection in order, so once the PONG arrives the
/// REQUEST was admitted (and, with a durable store, its id recorded).
async fn start_call(session: &mut Session, request: &Request) -> Result<(), CaseResult> {
    session.send(&Message::Request(request.clone())).await;
    session
        .ping(0xa30)
        .await
        .map_err(|e| precondition(format!("PING after the slow REQUEST: {e}")))
}

fn is_error(outcome: &Result<Message, Ending>, code: u32) -> bool {
    matches!(outcome, Ok(Message::Error(error)) if error.code == code)
}

fn result_of(outcome: &Result<Message, Ending>) -> Option<&[u8]> {
    match outcome {
        Ok(Message::Response(response)) => Some(&response.result),
        _ => None,
    }
}

/// Whether `outcome` is a RESPONSE with `result` whose signature verifies for
/// `session` and `request` (ENV-005: a cached result is signed afresh).
fn same_response(
    session: &Session,
    request: &Request,
    outcome: &Result<Message, Ending>,
    result: &[u8],
) -> bool {
    match outcome {
        Ok(Message::Response(response)) => {
            response.result.as_ref() == result
                && response
                    .signature
                    .as_ref()
                    .is_some_and(|s| session.verify_response(request, &response.result, s))
        }
        _ => false,
    }
}

fn lineage_of(session: &Session) -> Vec<u8> {
    session.session_id[..16].to_vec()
}

fn retry_of(session: &Session, request: &Request, retry: bool) -> Request {
    let mut again = session.request(request.id, &request.tool, &request.args);
    again.retry = retry;
    again
}

/// The smaller of the declared lineage bounds, for a case that fills the table
/// with one client's lineages.
fn lineage_room(target: &ServerTarget) -> Result<usize, CaseResult> {
    let Some(bounds) = &target.options.at_most_once else {
        return Err(CaseResult::skip(
            "needs the server's at-most-once bounds, declared small enough to reach (--amo-max-lineages)",
        ));
    };
    let room = bounds
        .max_lineages
        .min(bounds.max_lineages_per_client)
        .max(1);
    if room > 32 {
        return Err(CaseResult::skip(format!(
            "declared {room} lineages per client: too many slow calls to hold at once"
        )));
    }
    Ok(room)
}

/// The durable-store cases apply to a server with a durable store (AMO-035 is a
/// MAY): they SKIP unless the operator declares one and can restart the server.
fn durable(target: &ServerTarget) -> Result<(), CaseResult> {
    if target.options.restart.is_none() || target.options.durable_store.is_none() {
        return Err(CaseResult::skip(
            "needs a server with a durable at-most-once store (--amo-store) and an operator hook that crashes and restarts it",
        ));
    }
    Ok(())
}

/// Restarts the server, or the case's result when it did not start again.
async fn restarted(target: &ServerTarget) -> Result<(), CaseResult> {
    let Some(restart) = &target.options.restart else {
        return Err(CaseResult::skip(
            "needs an operator hook that crashes and restarts the server",
        ));
    };
    restart
        .restart()
        .await
        .map_err(|e| precondition(format!("the server did not start again: {e}")))
}

/// Restarts the server, then opens a session of the suite's identity resuming the
/// lineage of `session` (closed once the server is down).
async fn resumed_after_restart(
    target: &ServerTarget,
    session: Session,
) -> Result<Session, CaseResult> {
    let lineage = lineage_of(&session);
    restarted(target).await?;
    drop(session);
    let (resumed, _) = established_resuming(target, target.identity.clone(), Some(lineage)).await?;
    Ok(resumed)
}

// =====================================================================================
// 14.2 A REQUEST waiting for the same id running elsewhere (AMO-011)
// =====================================================================================

async fn in_flight_elsewhere(target: Arc<ServerTarget>, cut: bool) -> CaseResult {
    let Some(call) = target.options.slow_call.clone() else {
        return CaseResult::skip("needs a slow call (--slow-tool)");
    };
    let (mut first, _) = match established(&target).await {
        Ok(established) => established,
        Err(result) => return result,
    };
    let request = first.request(1, &call.tool, &encode_args(&call.args));
    if let Err(result) = start_call(&mut first, &request).await {
        return result;
    }
    let lineage = lineage_of(&first);
    let first = if cut {
        drop(first);
        None
    } else {
        Some(first)
    };
    let (mut second, _) =
        match established_resuming(&target, target.identity.clone(), Some(lineage)).await {
            Ok(established) => established,
            Err(result) => return result,
        };
    let copy = retry_of(&second, &request, true);
    second.send(&Message::Request(copy.clone())).await;
    let waited = await_answer(&mut second, 1, slow_wait(&target)).await;
    match first {
        Some(mut first) => {
            let original = await_answer(&mut first, 1, slow_wait(&target)).await;
            let Some(result) = result_of(&original) else {
                return precondition(format!("connection A's call: {}", describe(&original)));
            };
            let a_signed = same_response(&first, &request, &original, result);
            let b_same = same_response(&second, &copy, &waited, result);
            CaseResult::check(
                a_signed && b_same,
                "B: RESPONSE with A's result bytes, signed for B's session",
                format!(
                    "A: {}; B: {}{}",
                    describe(&original),
                    describe(&waited),
                    if result_of(&waited) == Some(result) {
                        ", same bytes"
                    } else {
                        ""
                    }
                ),
            )
        }
        None => {
            if is_error(&waited, ErrorCode::RESULT_UNAVAILABLE.0) {
                return CaseResult::new(
                    Verdict::Info,
                    "the running call's outcome on B",
                    describe(&waited),
                    "the server abandoned the call when its connection was cut (AMO-026 allows it); amo.in-flight.other-connection checks AMO-011",
                );
            }
            let Some(result) = result_of(&waited).map(<[u8]>::to_vec) else {
                return CaseResult::check(
                    false,
                    "the running call's RESPONSE on B",
                    describe(&waited),
                );
            };
            let later = retry_of(&second, &request, true);
            let again = answer(&mut second, &later).await;
            let signed = same_response(&second, &copy, &waited, &result);
            let cached = result_of(&again) == Some(result.as_slice());
            CaseResult::check(
                signed && cached,
                "B: the running call's RESPONSE, signed for B; a later copy: the same result bytes from the cache",
                format!("B: {}; later copy: {}", describe(&waited), describe(&again)),
            )
        }
    }
}

// =====================================================================================
// 14.4 Bounds (AMO-030, AMO-033, AMO-034)
// =====================================================================================

async fn total_bytes(target: Arc<ServerTarget>) -> CaseResult {
    let Some(bounds) = target.options.at_most_once.clone() else {
        return CaseResult::skip(
            "needs the server's at-most-once bounds, declared small enough to reach (--amo-max-total-bytes)",
        );
    };
    let Some(echo) = target.options.echo_tool.clone() else {
        return CaseResult::skip("needs a tool that returns its arguments (--echo-tool)");
    };
    let total = bounds.max_total_result_bytes;
    let size = total / 7 * 2;
    if !(64..=60_000).contains(&size) || size > bounds.max_result_bytes {
        return CaseResult::skip(format!(
            "declared total {total} bytes: outcomes of {size} bytes must fit one record and the per-outcome bound"
        ));
    }
    let call = ToolCall {
        tool: echo,
        args: serde_json::json!({ "pad": "a".repeat(size.saturating_sub(16)) }),
    };
    let args = encode_args(&call.args);
    let (mut a, _) = match established(&target).await {
        Ok(established) => established,
        Err(result) => return result,
    };
    let (mut b, _) = match established(&target).await {
        Ok(established) => established,
        Err(result) => return result,
    };
    // a1, b1, b2, a2, in this order: b2 completes after a1, so lineage B is the more
    // recently used until a2 completes.
    let plan = [(0, 1u64), (1, 1), (1, 2), (0, 2)];
    let mut requests = Vec::new();
    let mut results = Vec::new();
    for (lineage, id) in plan {
        let session = if lineage == 0 { &mut a } else { &mut b };
        let request = session.request(id, &call.tool, &args);
        let outcome = answer(session, &request).await;
        let Some(result) = result_of(&outcome).map(<[u8]>::to_vec) else {
            return precondition(format!("echo call {id}: {}", describe(&outcome)));
        };
        requests.push(request);
        results.push(result);
    }
    let sizes: Vec<usize> = results.iter().map(Vec::len).collect();
    let all: usize = sizes.iter().sum();
    let kept = all - sizes[1];
    if sizes[0] + sizes[1] + sizes[2] > total || all <= total || kept > total {
        return precondition(format!(
            "echo outcomes of {sizes:?} bytes do not make the plan (three within {total}, four over it)"
        ));
    }
    // Observe with copies on the same connections: a duplicate does not drop outcomes.
    let mut observed = Vec::new();
    for (index, (lineage, id)) in plan.into_iter().enumerate() {
        let session = if lineage == 0 { &mut a } else { &mut b };
        let copy = session.request(id, &call.tool, &args);
        let outcome = answer(session, &copy).await;
        let verdict = if same_response(session, &copy, &outcome, &results[index]) {
            "cached"
        } else if is_error(&outcome, ErrorCode::RESULT_UNAVAILABLE.0) {
            "dropped (101)"
        } else {
            return CaseResult::check(
                false,
                "each outcome cached or dropped",
                format!("{}{id}: {}", ["a", "b"][lineage], describe(&outcome)),
            );
        };
        observed.push(format!("{}{id} {verdict}", ["a", "b"][lineage]));
    }
    let ok = observed[0] == "a1 cached"
        && observed[1] == "b1 dropped (101)"
        && observed[3] == "a2 cached";
    CaseResult::check(
        ok,
        "b1 dropped (RESULT_UNAVAILABLE, 101); a1 and a2 still cached (b2 may go too)",
        observed.join(", "),
    )
    .with_detail(format!(
        "outcomes of {sizes:?} bytes, declared total {total}"
    ))
}

async fn busy_lineage_kept(target: Arc<ServerTarget>) -> CaseResult {
    let room = match lineage_room(&target) {
        Ok(room) => room,
        Err(result) => return result,
    };
    let Some(slow) = target.options.slow_call.clone() else {
        return CaseResult::skip("needs a slow call (--slow-tool)");
    };
    let (mut busy, _) = match established(&target).await {
        Ok(established) => established,
        Err(result) => return result,
    };
    let request = busy.request(1, &slow.tool, &encode_args(&slow.args));
    if let Err(result) = start_call(&mut busy, &request).await {
        return result;
    }
    let started = Instant::now();
    let mut first_new: Option<(Vec<u8>, Request)> = None;
    for index in 0..room {
        let (mut session, grant) = match established(&target).await {
            Ok(established) => established,
            Err(result) => return result,
        };
        let (request, _) = match first_call(&target, &mut session, &grant, 1).await {
            Ok(call) => call,
            Err(result) => return result.with_detail(format!("new lineage {index}")),
        };
        first_new.get_or_insert((lineage_of(&session), request));
    }
    if started.elapsed() >= Duration::from_secs(1) {
        return CaseResult::harness_error(
            "the new lineages took over a second: the slow call may have ended before room was made",
        );
    }
    let original = await_answer(&mut busy, 1, slow_wait(&target)).await;
    let Some(result) = result_of(&original).map(<[u8]>::to_vec) else {
        return precondition(format!("the slow call: {}", describe(&original)));
    };
    let lineage = lineage_of(&busy);
    drop(busy);
    let (mut resumed, _) =
        match established_resuming(&target, target.identity.clone(), Some(lineage)).await {
            Ok(established) => established,
            Err(result) => return result,
        };
    let copy = retry_of(&resumed, &request, true);
    let kept = answer(&mut resumed, &copy).await;
    let kept_ok = same_response(&resumed, &copy, &kept, &result);
    let Some((lineage, request)) = first_new else {
        return CaseResult::harness_error("no new lineage");
    };
    drop(resumed);
    let (mut other, _) =
        match established_resuming(&target, target.identity.clone(), Some(lineage)).await {
            Ok(established) => established,
            Err(result) => return result,
        };
    let copy = retry_of(&other, &request, true);
    let dropped = answer(&mut other, &copy).await;
    if !is_error(&dropped, ErrorCode::RESULT_UNAVAILABLE.0) {
        return precondition(format!(
            "no lineage was dropped (the first new one still answers {}): the declared bound of {room} lineages was not reached",
            describe(&dropped)
        ));
    }
    CaseResult::check(
        kept_ok,
        "the slow call's id retried on its lineage: RESPONSE from the cache (the busy lineage was kept)",
        format!(
            "{}; the first new lineage was dropped instead ({})",
            describe(&kept),
            describe(&dropped)
        ),
    )
}

async fn no_room(target: Arc<ServerTarget>) -> CaseResult {
    let room = match lineage_room(&target) {
        Ok(room) => room,
        Err(result) => return result,
    };
    let Some(slow) = target.options.slow_call.clone() else {
        return CaseResult::skip("needs a slow call (--slow-tool)");
    };
    let args = encode_args(&slow.args);
    let mut busy = Vec::new();
    let mut started = None;
    for _ in 0..room {
        let (mut session, _) = match established(&target).await {
            Ok(established) => established,
            Err(result) => return result,
        };
        let request = session.request(1, &slow.tool, &args);
        if let Err(result) = start_call(&mut session, &request).await {
            return result;
        }
        started.get_or_insert_with(Instant::now);
        busy.push(session);
    }
    let (mut probe, grant) = match established(&target).await {
        Ok(established) => established,
        Err(result) => return result,
    };
    let Some((call, _)) = call_of(&target, &grant) else {
        return CaseResult::skip("no tool is granted to the identity");
    };
    let request = probe.request(1, &call.tool, &encode_args(&call.args));
    let refused = answer(&mut probe, &request).await;
    if started.is_some_and(|started| started.elapsed() >= Duration::from_secs(1)) {
        return CaseResult::harness_error(
            "filling the table took over a second: the slow calls may have ended before the probe",
        );
    }
    for (index, session) in busy.iter_mut().enumerate() {
        let ended = await_answer(session, 1, slow_wait(&target)).await;
        if result_of(&ended).is_none() {
            return precondition(format!("slow call {index}: {}", describe(&ended)));
        }
    }
    let later = answer(&mut probe, &request).await;
    let refused_ok = is_error(&refused, ErrorCode::UNAVAILABLE.0);
    CaseResult::check(
        refused_ok && result_of(&later).is_some(),
        format!(
            "with {room} lineages busy: ERROR {}; the same id once they ended: RESPONSE (not recorded)",
            rpc_name(ErrorCode::UNAVAILABLE.0)
        ),
        format!("{}; later: {}", describe(&refused), describe(&later)),
    )
}

// =====================================================================================
// 14.5 Durable store (AMO-036..AMO-039)
// =====================================================================================

async fn result_after_crash(target: Arc<ServerTarget>) -> CaseResult {
    if let Err(result) = durable(&target) {
        return result;
    }
    let (mut session, grant) = match established(&target).await {
        Ok(established) => established,
        Err(result) => return result,
    };
    let (request, response) = match first_call(&target, &mut session, &grant, 1).await {
        Ok(call) => call,
        Err(result) => return result,
    };
    let mut resumed = match resumed_after_restart(&target, session).await {
        Ok(resumed) => resumed,
        Err(result) => return result,
    };
    let copy = retry_of(&resumed, &request, true);
    let outcome = answer(&mut resumed, &copy).await;
    CaseResult::check(
        same_response(&resumed, &copy, &outcome, &response.result),
        "after the crash and restart, the retried id: RESPONSE with the first result bytes, signed for the new session",
        format!(
            "{}{}",
            describe(&outcome),
            if result_of(&outcome) == Some(response.result.as_ref()) {
                ", same bytes"
            } else {
                ""
            }
        ),
    )
}

async fn running_at_crash(target: Arc<ServerTarget>) -> CaseResult {
    if let Err(result) = durable(&target) {
        return result;
    }
    let Some(slow) = target.options.slow_call.clone() else {
        return CaseResult::skip("needs a slow call (--slow-tool)");
    };
    let (mut session, _) = match established(&target).await {
        Ok(established) => established,
        Err(result) => return result,
    };
    let request = session.request(1, &slow.tool, &encode_args(&slow.args));
    if let Err(result) = start_call(&mut session, &request).await {
        return result;
    }
    let mut resumed = match resumed_after_restart(&target, session).await {
        Ok(resumed) => resumed,
        Err(result) => return result,
    };
    // `retry` false first: a server that lost the record would execute it.
    let copy = retry_of(&resumed, &request, false);
    let unflagged = answer(&mut resumed, &copy).await;
    let copy = retry_of(&resumed, &request, true);
    let flagged = answer(&mut resumed, &copy).await;
    let code = ErrorCode::RESULT_UNAVAILABLE.0;
    CaseResult::check(
        is_error(&unflagged, code) && is_error(&flagged, code),
        format!(
            "the id running at the crash, retry false then true: ERROR {} twice, never executed",
            rpc_name(code)
        ),
        format!("{}; {}", describe(&unflagged), describe(&flagged)),
    )
    .with_detail(
        "AMO-036: checks that the id was durably recorded before its call started; amo.durable.unrecordable checks its other half (a store that cannot record answers UNAVAILABLE)",
    )
}

async fn unrecordable(target: Arc<ServerTarget>) -> CaseResult {
    if let Err(result) = durable(&target) {
        return result;
    }
    let Some(fault) = target.options.store_fault.clone() else {
        return CaseResult::skip(
            "needs an operator switch that makes the durable store's writes fail (in process: StoreWriteFault; no command-line form)",
        );
    };
    let (mut session, grant) = match established(&target).await {
        Ok(established) => established,
        Err(result) => return result,
    };
    let (request, first) = match first_call(&target, &mut session, &grant, 1).await {
        Ok(call) => call,
        Err(result) => return result,
    };
    let Some(before) = run_count(&first.result) else {
        return CaseResult::skip(
            "needs a call tool that counts its runs (a result that is a number, or an object with one number): the case tells a refused call that ran from one that did not by the count",
        );
    };
    (fault.0)(true);
    let refused_request = session.request(2, &request.tool, &request.args);
    let refused = answer(&mut session, &refused_request).await;
    (fault.0)(false);
    // A server may stay unavailable until it reopens its store (ours does): the
    // count is read after a restart.
    let mut resumed = match resumed_after_restart(&target, session).await {
        Ok(resumed) => resumed,
        Err(result) => return result,
    };
    let after_request = resumed.request(3, &request.tool, &request.args);
    let after = answer(&mut resumed, &after_request).await;
    let after_count = result_of(&after).and_then(run_count);
    let code = ErrorCode::UNAVAILABLE.0;
    CaseResult::check(
        is_error(&refused, code) && after_count == Some(before + 1),
        format!(
            "while the store cannot be written: ERROR {} (14); after the restart the next call counts run {}",
            rpc_name(code),
            before + 1
        ),
        format!(
            "store failing: {}; after the restart: {}{}",
            describe(&refused),
            describe(&after),
            after_count.map_or_else(String::new, |count| format!(", run {count}"))
        ),
    )
}

async fn damaged_store(target: Arc<ServerTarget>) -> CaseResult {
    let (Some(restart), Some(store)) = (
        target.options.restart.clone(),
        target.options.durable_store.clone(),
    ) else {
        return durable(&target)
            .err()
            .unwrap_or_else(|| precondition("no store"));
    };
    let (mut session, grant) = match established(&target).await {
        Ok(established) => established,
        Err(result) => return result,
    };
    let (request, response) = match first_call(&target, &mut session, &grant, 1).await {
        Ok(call) => call,
        Err(result) => return result,
    };
    let lineage = lineage_of(&session);
    restart.crash().await;
    drop(session);
    let backup = store.with_extension("conformance-backup");
    if let Err(error) = std::fs::copy(&store, &backup) {
        let _ = restart.start().await;
        return precondition(format!("cannot copy {}: {error}", store.display()));
    }
    let started_on_garbage = match std::fs::write(&store, vec![0x5a; 8192]) {
        Ok(()) => restart.start().await,
        Err(error) => Err(format!("(not damaged: {error})")),
    };
    if started_on_garbage.is_ok() {
        restart.crash().await;
    }
    let restored = std::fs::rename(&backup, &store);
    let started = restart.start().await;
    if let Err(error) = restored {
        return precondition(format!("cannot put {} back: {error}", store.display()));
    }
    if let Err(error) = started {
        return precondition(format!(
            "the server did not start on its store put back: {error}"
        ));
    }
    let (mut resumed, _) =
        match established_resuming(&target, target.identity.clone(), Some(lineage)).await {
            Ok(established) => established,
            Err(result) => return result,
        };
    let copy = retry_of(&resumed, &request, true);
    let outcome = answer(&mut resumed, &copy).await;
    let answered = same_response(&resumed, &copy, &outcome, &response.result);
    CaseResult::check(
        started_on_garbage.is_err() && answered,
        "on the damaged store: refused to start; on the store put back: started, the earlier call answered from it",
        format!(
            "on the damaged store: {}; put back: {}",
            match &started_on_garbage {
                Ok(()) => "STARTED".to_owned(),
                Err(why) => format!("refused ({why})"),
            },
            describe(&outcome)
        ),
    )
}

// =====================================================================================
// 19.3 The audit log after a crash (AUD-008)
// =====================================================================================

/// Appended to the log while the server is stopped: a line cut mid-write.
const TORN: &str = "{\"seq\":424242,\"time\":\"2026-01-";

fn read_log(path: &Path) -> Result<String, CaseResult> {
    std::fs::read_to_string(path)
        .map_err(|e| precondition(format!("cannot read {}: {e}", path.display())))
}

async fn audit_continues(target: Arc<ServerTarget>) -> CaseResult {
    let (Some(restart), Some(log)) = (
        target.options.restart.clone(),
        target.options.audit_log.clone(),
    ) else {
        return CaseResult::skip(
            "needs an operator hook that crashes and restarts the server, and its audit log",
        );
    };
    let (mut session, grant) = match established(&target).await {
        Ok(established) => established,
        Err(result) => return result,
    };
    if let Err(result) = first_call(&target, &mut session, &grant, 1).await {
        return result;
    }
    restart.crash().await;
    drop(session);
    let before = match read_log(&log) {
        Ok(text) => text,
        Err(result) => {
            let _ = restart.start().await;
            return result;
        }
    };
    // What a crash mid-write leaves; the server's own last line may be torn too.
    let complete = before.rfind('\n').map_or(0, |end| end + 1);
    let appended = std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .and_then(|mut file| std::io::Write::write_all(&mut file, TORN.as_bytes()));
    let started = restart.start().await;
    if let Err(error) = appended {
        return precondition(format!("cannot append to {}: {error}", log.display()));
    }
    if let Err(error) = started {
        return precondition(format!("the server did not start again: {error}"));
    }
    let Some(last) = before[..complete].lines().last().map(str::to_owned) else {
        return precondition("the audit log had no complete line before the crash");
    };
    let position = match ChainPosition::after(&last) {
        Ok(position) => position,
        Err(kind) => return precondition(format!("last line before the crash: {kind}")),
    };
    let (mut session, grant) = match established(&target).await {
        Ok(established) => established,
        Err(result) => return result,
    };
    if let Err(result) = first_call(&target, &mut session, &grant, 1).await {
        return result;
    }
    // The entry is written when the call ends, by the server at its pace: wait for
    // a complete line after the old ones (bounded).
    let deadline = Instant::now() + target.options.step;
    let after = loop {
        let text = match read_log(&log) {
            Ok(text) => text,
            Err(result) => return result,
        };
        let grown = text.len() > complete
            && text.ends_with('\n')
            && text
                .get(complete..)
                .is_some_and(|tail| tail.contains("\"kind\":\"call\""));
        if grown || Instant::now() >= deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let prefix_kept = after.get(..complete) == before.get(..complete);
    let new = after.get(complete..).unwrap_or("");
    let verified = verify_log_from(new, &target.server_key, position);
    let ok = prefix_kept && !new.contains(TORN) && verified.as_ref().is_ok_and(|s| s.calls > 0);
    CaseResult::check(
        ok,
        format!(
            "the incomplete line cut; new entries from seq {} chained to the last complete line, verifying",
            position.next_seq
        ),
        format!(
            "{}{}; new part: {}",
            if prefix_kept {
                "complete lines kept"
            } else {
                "COMPLETE LINES CHANGED"
            },
            if new.contains(TORN) {
                ", incomplete line STILL THERE"
            } else {
                ""
            },
            match &verified {
                Ok(summary) => format!("{} entries ({} calls) verify", summary.entries, summary.calls),
                Err(error) => error.to_string(),
            }
        ),
    )
    .with_detail("a change of identity key (a new chain in a new file) is not checked")
}
