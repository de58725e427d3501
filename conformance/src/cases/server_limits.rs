//! Server-mode cases of the server's own timers and counters: session lifetime
//! (LIFE-001), idle timeout (LIFE-005), rekey by time (KEY-002) and by records
//! (KEY-001, LIM-008), the write stall (LIM-004), and the ends of the sequence space
//! (REC-011..REC-013) and of the epochs (KEY-006).
//!
//! None of these can be reached at the defaults in a CI run (62 minutes, 2^20
//! records, 2^62 records), so each case checks the behaviour at the limits the
//! operator declares in [`DeclaredLimits`](crate::server::DeclaredLimits) (spec
//! LIM-017), with a tolerance both ways where the clause allows one, and SKIPs,
//! naming the limit to lower, when its wait would exceed
//! [`max_wait`](crate::server::ServerOptions::max_wait). The exhaustion cases need a
//! server whose sending direction starts near the end (LIM-018) and SKIP otherwise.

use crate::peer::{self, Ending, HandshakeParams, Session};
use crate::server::{ServerCase, ServerTarget};
use crate::{Case, CaseResult};
use std::sync::Arc;
use std::time::{Duration, Instant};
use toolwire_protocol::message::{KeyUpdate, Ping};
use toolwire_protocol::record::LAST_SEQUENCE;
use toolwire_protocol::{CloseCode, Message};

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
        case!("life.lifetime", ["LIFE-001"],
            "A kept-alive session is closed with SESSION_EXPIRED (4006) at the declared session lifetime, not before it (minus a small tolerance) and not later than one step after.", lifetime),
        case!("life.idle", ["LIFE-005"],
            "A silent client is closed with TIMEOUT (4009) at the declared idle timeout; one that sent a PING halfway is closed an idle timeout after that PING, not before.", idle),
        case!("key.interval", ["KEY-002"],
            "An idle, kept-alive session receives an unsolicited KEY_UPDATE {epoch: +1} at the declared rekey interval, later records open under the next key, and the next KEY_UPDATE follows one interval later.", rekey_interval),
        case!("key.records", ["KEY-001"],
            "Pipelined PINGs make the server seal PONGs: after exactly the declared number of records in an epoch, the next record is a KEY_UPDATE {epoch: +1}, twice in a row.", rekey_records),
        case!("key.last-epoch", ["KEY-006"],
            "A server in epoch 2^32-1 (declared start) closes with SEQUENCE_EXHAUSTED (4005) where it would rekey, never sending a KEY_UPDATE.", last_epoch),
        case!("rec.sequence-exhausted", ["REC-011", "REC-012", "REC-013"],
            "A server whose sending direction starts near 2^62-1 (declared start) answers PINGs up to 2^62-2, then closes with SEQUENCE_EXHAUSTED (4005) sealed with 2^62-1 and sends nothing after it.", sequence_exhausted),
        case!("lim.write-stall", ["LIM-004"],
            "A client that stops reading during a 64 MiB stream is disconnected (1013, or EOF) within the declared write stall plus a step; a fresh connection is still served.", write_stall),
        case!("lim.rekey-defaults", ["LIM-008"],
            "At the default limits the server rekeys after exactly 2^20 records in an epoch (and, when max_wait allows, after 5 minutes). Slow: runs only with the `slow` option.", rekey_defaults),
    ]
}

/// Declared record counts above this make a case slow (minutes in a debug build).
const QUICK_RECORDS: u64 = 4096;
/// PINGs in flight at once while counting records.
const PIPELINE: u64 = 32;
/// How far below `2^62 − 1` a declared start may be for the exhaustion case.
const EXHAUSTION_ROOM: u64 = 1024;
/// Largest declared record count of the last-epoch case.
const LAST_EPOCH_RECORDS: u64 = 1024;

fn name(code: u16) -> String {
    match CloseCode(code).name() {
        Some(name) => format!("{code} {name}"),
        None => code.to_string(),
    }
}

fn precondition(what: impl std::fmt::Display) -> CaseResult {
    CaseResult::harness_error(format!("precondition failed: {what}"))
}

/// How early a deadline may fire: timers of the two ends start a little apart.
fn tolerance(limit: Duration) -> Duration {
    (limit / 20).max(Duration::from_millis(100))
}

/// SKIP when a case would wait longer than `max_wait`.
fn too_long(target: &ServerTarget, wait: Duration, limit: &str) -> Option<CaseResult> {
    (wait > target.options.max_wait).then(|| {
        CaseResult::skip(format!(
            "would wait {wait:?}, more than max_wait ({:?}): configure the server under test with a shorter {limit} and declare it, or raise max_wait (--max-wait-ms)",
            target.options.max_wait
        ))
    })
}

/// How often a kept-alive session PINGs: well inside the declared idle timeout.
fn keepalive(target: &ServerTarget) -> Duration {
    (target.options.limits.idle_timeout / 3)
        .min(Duration::from_secs(1))
        .max(Duration::from_millis(20))
}

/// A fresh session that has received its CAP_GRANT, expecting the server's records
/// from the declared start (LIM-018), and an instant just before its handshake
/// began: the server's timers start later, so a deadline measured from it is never
/// judged early because of this side's scheduling.
async fn session(target: &ServerTarget) -> Result<(Session, Instant), CaseResult> {
    let step = target.options.step;
    let socket = peer::connect(&target.url, step)
        .await
        .map_err(precondition)?;
    let params = HandshakeParams::new(
        target.identity.clone(),
        target.url.clone(),
        target.server_key,
    );
    let established = Instant::now();
    let mut session = Session::establish(socket, params, step)
        .await
        .map_err(precondition)?;
    let limits = &target.options.limits;
    session.expect_receive_from(limits.first_send_sequence, limits.first_send_epoch);
    match session.next().await {
        Ok(Message::CapGrant(_)) => Ok((session, established)),
        Ok(other) => Err(precondition(format!(
            "first message {} instead of CAP_GRANT",
            other.kind()
        ))),
        Err(ending) => Err(precondition(format!(
            "session ended before CAP_GRANT: {ending}{}",
            violations(&session)
        ))),
    }
}

fn violations(session: &Session) -> String {
    if session.violations.is_empty() {
        String::new()
    } else {
        format!(" ({})", session.violations.join("; "))
    }
}

/// What [`watch`] saw.
enum Seen {
    /// A message, and when it arrived.
    Message(Message, Instant),
    /// The end of the connection, and when.
    Ended(Ending, Instant),
    /// Nothing until the deadline.
    Quiet,
}

/// The next message before `deadline`, sending a PING every `keepalive` (if any)
/// so that the idle timeout never fires.
async fn watch(
    session: &mut Session,
    deadline: Instant,
    keepalive: Option<Duration>,
    last_ping: &mut Instant,
    nonce: &mut u64,
) -> Seen {
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Seen::Quiet;
        }
        let mut until = deadline;
        if let Some(interval) = keepalive {
            let due = *last_ping + interval;
            if now >= due {
                *nonce += 1;
                session.send(&Message::Ping(Ping { nonce: *nonce })).await;
                *last_ping = Instant::now();
                continue;
            }
            until = until.min(due);
        }
        match session.next_within(until - now).await {
            Ok(message) => return Seen::Message(message, Instant::now()),
            Err(ending) if ending.timed_out => {}
            Err(ending) => return Seen::Ended(ending, Instant::now()),
        }
    }
}

/// Reads (keeping the session alive when asked) until the connection ends.
async fn until_closed(
    session: &mut Session,
    deadline: Instant,
    keepalive: Option<Duration>,
) -> Option<(Ending, Instant)> {
    let mut last_ping = Instant::now();
    let mut nonce = 0;
    loop {
        match watch(session, deadline, keepalive, &mut last_ping, &mut nonce).await {
            Seen::Message(..) => {}
            Seen::Ended(ending, at) => return Some((ending, at)),
            Seen::Quiet => return None,
        }
    }
}

/// A sealed close with `code` (CLOSE record, then close frame, nothing after) that
/// came between `earliest` and `latest` after `since`.
fn timed_close(
    ended: Option<(Ending, Instant)>,
    since: Instant,
    code: u16,
    earliest: Duration,
    latest: Duration,
    what: &str,
    session: &Session,
) -> CaseResult {
    let expected = format!(
        "CLOSE record {0}, then close frame {0}, between {earliest:?} and {latest:?} after {what}",
        name(code)
    );
    let Some((ending, at)) = ended else {
        return CaseResult::check(
            false,
            expected,
            format!("connection still open {latest:?} after {what}"),
        );
    };
    let elapsed = at.saturating_duration_since(since);
    let ok = ending.record_code() == Some(code)
        && ending.frame_code() == Some(code)
        && ending.records_after_close == 0
        && elapsed >= earliest
        && elapsed <= latest;
    CaseResult::check(ok, expected, format!("{ending}, {elapsed:?} after {what}"))
        .with_detail(session.violations.join("; "))
}

// =====================================================================================
// 8.2 Lifetimes
// =====================================================================================

async fn lifetime(target: Arc<ServerTarget>) -> CaseResult {
    let limits = &target.options.limits;
    let lifetime = limits.session_lifetime;
    let latest = lifetime + target.options.step;
    if let Some(skip) = too_long(&target, latest, "session lifetime") {
        return skip;
    }
    let (mut session, established) = match session(&target).await {
        Ok(session) => session,
        Err(result) => return result,
    };
    // LIFE-001: kept alive, so that only the lifetime can end the session.
    let ended = until_closed(&mut session, established + latest, Some(keepalive(&target))).await;
    timed_close(
        ended,
        established,
        CloseCode::SESSION_EXPIRED.0,
        lifetime.saturating_sub(tolerance(lifetime)),
        latest,
        "the handshake",
        &session,
    )
    .with_detail(format!("declared session lifetime {lifetime:?}"))
}

async fn idle(target: Arc<ServerTarget>) -> CaseResult {
    let limits = &target.options.limits;
    let idle = limits.idle_timeout;
    let step = target.options.step;
    let longest = idle + idle / 2 + step;
    if let Some(skip) = too_long(&target, longest, "idle timeout") {
        return skip;
    }
    let needed = idle + idle / 2 + tolerance(idle);
    if limits.session_lifetime <= needed {
        return CaseResult::skip(format!(
            "the declared session lifetime ({:?}) ends the session before this case's wait ({needed:?}): declare a longer one",
            limits.session_lifetime
        ));
    }
    let earliest = idle.saturating_sub(tolerance(idle));
    // Both halves at once: a silent session, and one with a PING halfway.
    let silent = async {
        let (mut session, established) = session(&target).await?;
        let ended = until_closed(&mut session, established + idle + step, None).await;
        Ok::<_, CaseResult>(timed_close(
            ended,
            established,
            CloseCode::TIMEOUT.0,
            earliest,
            idle + step,
            "the handshake (silent client)",
            &session,
        ))
    };
    let pinged = async {
        let (mut session, established) = session(&target).await?;
        let halfway = established + idle / 2;
        if let Some((ending, _)) = until_closed(&mut session, halfway, None).await {
            return Ok(CaseResult::check(
                false,
                "connection open until the PING halfway through the idle timeout",
                ending.to_string(),
            ));
        }
        let pinged_at = Instant::now();
        if !session.send(&Message::Ping(Ping { nonce: 1 })).await {
            return Err(precondition("could not send the PING"));
        }
        let ended = until_closed(&mut session, pinged_at + idle + step, None).await;
        Ok(timed_close(
            ended,
            pinged_at,
            CloseCode::TIMEOUT.0,
            earliest,
            idle + step,
            "the PING sent halfway",
            &session,
        ))
    };
    let (silent, pinged) = tokio::join!(silent, pinged);
    let (silent, pinged) = match (silent, pinged) {
        (Ok(silent), Ok(pinged)) => (silent, pinged),
        (Err(result), _) | (_, Err(result)) => return result,
    };
    let ok = silent.verdict == crate::Verdict::Pass && pinged.verdict == crate::Verdict::Pass;
    CaseResult::check(
        ok,
        format!("{}; {}", silent.expected, pinged.expected),
        format!("{}; {}", silent.observed, pinged.observed),
    )
    .with_detail(format!("declared idle timeout {idle:?}"))
    .with_detail(silent.detail)
    .with_detail(pinged.detail)
}

// =====================================================================================
// 8.1 Rekey
// =====================================================================================

async fn rekey_interval(target: Arc<ServerTarget>) -> CaseResult {
    let limits = &target.options.limits;
    let interval = limits.rekey_after;
    let step = target.options.step;
    let longest = interval * 2 + step;
    if let Some(skip) = too_long(&target, longest, "rekey interval") {
        return skip;
    }
    let needed = interval * 2 + tolerance(interval);
    if limits.session_lifetime <= needed {
        return CaseResult::skip(format!(
            "the declared session lifetime ({:?}) ends the session before this case's wait ({needed:?}): declare a longer one",
            limits.session_lifetime
        ));
    }
    let (mut session, established) = match session(&target).await {
        Ok(session) => session,
        Err(result) => return result,
    };
    let earliest = interval.saturating_sub(tolerance(interval));
    let expected = format!(
        "KEY_UPDATE {{epoch: {}}} between {earliest:?} and {:?} after the handshake, PONG under the next key, KEY_UPDATE {{epoch: {}}} one interval later (not before two after the handshake)",
        u64::from(limits.first_send_epoch) + 1,
        interval + step,
        u64::from(limits.first_send_epoch) + 2,
    );
    let keepalive = Some(keepalive(&target));
    let mut last_ping = Instant::now();
    let mut nonce = 0;
    let mut epoch = limits.first_send_epoch;
    let mut epoch_began = established;
    let mut observed = Vec::new();
    for update in 1..=2u32 {
        // KEY-002: nothing but our keepalive PINGs; the update comes by time alone.
        let deadline = epoch_began + interval + step;
        let (key_update, at) = loop {
            match watch(
                &mut session,
                deadline,
                keepalive,
                &mut last_ping,
                &mut nonce,
            )
            .await
            {
                Seen::Message(Message::KeyUpdate(key_update), at) => break (key_update, at),
                Seen::Message(..) => {}
                Seen::Ended(ending, _) => {
                    observed.push(ending.to_string());
                    return CaseResult::check(false, expected, observed.join(", "))
                        .with_detail(session.violations.join("; "));
                }
                Seen::Quiet => {
                    observed.push(format!(
                        "no KEY_UPDATE {:?} into epoch {epoch}",
                        interval + step
                    ));
                    return CaseResult::check(false, expected, observed.join(", "));
                }
            }
        };
        let elapsed = at.saturating_duration_since(epoch_began);
        observed.push(format!(
            "KEY_UPDATE {{epoch: {}}} {elapsed:?} into epoch {epoch}",
            key_update.epoch
        ));
        // Not early: the server's epoch `update` cannot begin before `update`
        // intervals after the handshake began, whatever delayed this side's reads.
        let since_handshake = at.saturating_duration_since(established);
        if Some(key_update.epoch) != epoch.checked_add(1)
            || since_handshake + tolerance(interval) < interval * update
        {
            return CaseResult::check(false, expected, observed.join(", "));
        }
        epoch = key_update.epoch;
        epoch_began = at;
        if update == 1 {
            // KEY-002 with KEY-003: the next record opens under the next key.
            match ping_through_updates(&mut session, 0x4b45_5932).await {
                Ok(()) => observed.push(format!("PONG at epoch {epoch}")),
                Err(what) => {
                    observed.push(what);
                    return CaseResult::check(false, expected, observed.join(", "))
                        .with_detail(session.violations.join("; "));
                }
            }
            last_ping = Instant::now();
        }
    }
    CaseResult::check(session.violations.is_empty(), expected, observed.join(", "))
        .with_detail(session.violations.join("; "))
        .with_detail(format!("declared rekey interval {interval:?}"))
}

/// Sends a PING and waits for its PONG, letting KEY_UPDATEs pass.
async fn ping_through_updates(session: &mut Session, nonce: u64) -> Result<(), String> {
    if !session.send(&Message::Ping(Ping { nonce })).await {
        return Err("could not send PING".to_owned());
    }
    loop {
        match session.next().await {
            Ok(Message::Pong(pong)) if pong.nonce == nonce => return Ok(()),
            Ok(Message::Pong(_) | Message::KeyUpdate(_) | Message::CapUpdate(_)) => {}
            Ok(other) => return Err(format!("{} instead of PONG", other.kind())),
            Err(ending) => return Err(format!("{ending}{}", violations(session))),
        }
    }
}

async fn rekey_records(target: Arc<ServerTarget>) -> CaseResult {
    let records = target.options.limits.rekey_after_records;
    if records == 0 {
        return CaseResult::skip("the declared rekey_after_records is 0: declare the server's");
    }
    if records > QUICK_RECORDS && !target.options.slow {
        return CaseResult::skip(format!(
            "the declared rekey_after_records ({records}) takes minutes to reach: configure the server under test with at most {QUICK_RECORDS} records per epoch and declare it, or enable the slow cases (--slow-defaults)"
        ));
    }
    let epochs = if records > QUICK_RECORDS { 1 } else { 2 };
    count_rekeys(&target, records, epochs).await
}

async fn rekey_defaults(target: Arc<ServerTarget>) -> CaseResult {
    let limits = &target.options.limits;
    if !target.options.default_limits || !limits_are_default_rekey(limits) {
        return CaseResult::skip(
            "the server under test is not declared at the default rekey limits (2^20 records, 5 minutes)",
        );
    }
    if !target.options.slow {
        return CaseResult::skip(
            "2^20 records per epoch take minutes: enable the slow cases (--slow-defaults; KEY-001 and KEY-002 check the same behaviour at shorter declared limits)",
        );
    }
    let records = count_rekeys(&target, limits.rekey_after_records, 1).await;
    if records.verdict != crate::Verdict::Pass {
        return records;
    }
    match too_long(&target, limits.rekey_after * 2 + target.options.step, "rekey interval") {
        Some(_) => records.with_detail(
            "the 5-minute bound was not waited for (max_wait is shorter); key.interval checks it at a declared interval",
        ),
        None => {
            let timed = rekey_interval(target.clone()).await;
            CaseResult::check(
                timed.verdict == crate::Verdict::Pass,
                format!("{}; {}", records.expected, timed.expected),
                format!("{}; {}", records.observed, timed.observed),
            )
            .with_detail(timed.detail)
        }
    }
}

fn limits_are_default_rekey(limits: &crate::server::DeclaredLimits) -> bool {
    let defaults = crate::server::DeclaredLimits::default();
    limits.rekey_after_records == defaults.rekey_after_records
        && limits.rekey_after == defaults.rekey_after
}

/// KEY-001: makes the server seal PONGs (PINGs pipelined) and checks that exactly
/// `records` records of each epoch precede its KEY_UPDATE, for `epochs` epochs. A
/// KEY_UPDATE that comes earlier passes only if the declared rekey interval
/// (KEY-002) explains it.
async fn count_rekeys(target: &ServerTarget, records: u64, epochs: u32) -> CaseResult {
    let limits = &target.options.limits;
    let (mut session, established) = match session(target).await {
        Ok(session) => session,
        Err(result) => return result,
    };
    let started = Instant::now();
    let expected = format!(
        "a KEY_UPDATE {{epoch: +1}} as record {} of each epoch, after exactly {records} records, {epochs} epoch(s) in a row; no other record beyond {records} in an epoch",
        records + 1
    );
    let mut epoch = limits.first_send_epoch;
    let mut epoch_start = limits.first_send_sequence;
    let mut epoch_began = established;
    let mut updates = 0;
    let mut timed_updates = 0;
    let mut sent = 0u64;
    let mut outstanding = 0u64;
    // Every epoch takes `records` PONGs at most; the slack covers the pipeline.
    let budget = (records + 1) * u64::from(epochs) + PIPELINE + 16;
    let fail = |observed: String, session: &Session| {
        CaseResult::check(false, expected.clone(), observed)
            .with_detail(session.violations.join("; "))
    };
    loop {
        while outstanding < PIPELINE && sent < budget {
            if !session.send(&Message::Ping(Ping { nonce: sent })).await {
                return precondition("could not send a PING");
            }
            sent += 1;
            outstanding += 1;
        }
        let message = match session.next().await {
            Ok(message) => message,
            Err(ending) => {
                return fail(
                    format!("connection ended after {updates} KEY_UPDATEs: {ending}"),
                    &session,
                )
            }
        };
        let now = Instant::now();
        let seq = session.receive_next_seq().saturating_sub(1);
        let in_epoch = seq.saturating_sub(epoch_start);
        match message {
            Message::KeyUpdate(KeyUpdate { epoch: next }) => {
                if Some(next) != epoch.checked_add(1) {
                    return fail(
                        format!("KEY_UPDATE {{epoch: {next}}} ending epoch {epoch} (seq {seq})"),
                        &session,
                    );
                }
                if in_epoch != records {
                    let into = now.saturating_duration_since(epoch_began);
                    let by_time = in_epoch < records
                        && into
                            >= limits
                                .rekey_after
                                .saturating_sub(tolerance(limits.rekey_after));
                    if !by_time {
                        return fail(
                            format!(
                                "KEY_UPDATE {{epoch: {next}}} after {in_epoch} records of epoch {epoch} (seq {seq}), {into:?} into it"
                            ),
                            &session,
                        );
                    }
                    timed_updates += 1;
                } else {
                    updates += 1;
                }
                epoch = next;
                epoch_start = seq + 1;
                epoch_began = now;
            }
            other => {
                if in_epoch >= records {
                    return fail(
                        format!(
                            "{} as record {} of epoch {epoch} (seq {seq}), with no KEY_UPDATE after {records}",
                            other.kind(),
                            in_epoch + 1
                        ),
                        &session,
                    );
                }
                if matches!(other, Message::Pong(_)) {
                    outstanding = outstanding.saturating_sub(1);
                }
                // The record after the last KEY_UPDATE opened under the next key.
                if updates >= epochs {
                    break;
                }
                if sent >= budget && outstanding == 0 {
                    return fail(
                        format!("{sent} PONGs, {updates} KEY_UPDATEs by record count"),
                        &session,
                    );
                }
            }
        }
    }
    CaseResult::check(
        session.violations.is_empty(),
        expected,
        format!(
            "{updates} KEY_UPDATEs each after exactly {records} records, the next record opened under the next key ({sent} PINGs)"
        ),
    )
    .with_detail(session.violations.join("; "))
    .with_detail(if timed_updates > 0 {
        format!("{timed_updates} more KEY_UPDATEs came earlier, by the declared rekey interval")
    } else {
        String::new()
    })
    .with_detail(format!("took {:?}", started.elapsed()))
}

async fn last_epoch(target: Arc<ServerTarget>) -> CaseResult {
    let limits = &target.options.limits;
    if limits.first_send_epoch != u32::MAX {
        return CaseResult::skip(
            "needs a server whose sending direction starts in epoch 2^32-1 (conformance-testing start, LIM-018), declared as first_send_epoch (--first-send-epoch)",
        );
    }
    let records = limits.rekey_after_records;
    if records == 0 || records > LAST_EPOCH_RECORDS {
        return CaseResult::skip(format!(
            "the declared rekey_after_records ({records}) is not between 1 and {LAST_EPOCH_RECORDS}: configure that many records per epoch and declare them"
        ));
    }
    let (mut session, established) = match session(&target).await {
        Ok(session) => session,
        Err(result) => return result,
    };
    let expected = format!(
        "{} PONGs in epoch 4294967295 (CAP_GRANT is its first record), then, instead of a KEY_UPDATE, CLOSE record {1} and close frame {1}",
        records - 1,
        name(CloseCode::SEQUENCE_EXHAUSTED.0)
    );
    let mut pongs = 0;
    let mut ended = None;
    for nonce in 0..records {
        if !session.send(&Message::Ping(Ping { nonce })).await {
            return precondition("could not send a PING");
        }
        match session.next().await {
            Ok(Message::Pong(_)) => pongs += 1,
            Ok(Message::KeyUpdate(update)) => {
                return CaseResult::check(
                    false,
                    expected,
                    format!(
                        "KEY_UPDATE {{epoch: {}}} after epoch 4294967295 ({pongs} PONGs)",
                        update.epoch
                    ),
                )
            }
            Ok(other) => {
                return CaseResult::check(
                    false,
                    expected,
                    format!("{} instead of PONG", other.kind()),
                )
            }
            Err(mut ending) => {
                if !ending.timed_out {
                    ending.messages = vec![format!("{pongs} PONGs")];
                }
                ended = Some(ending);
                break;
            }
        }
    }
    let Some(ending) = ended else {
        return CaseResult::check(
            false,
            expected,
            format!("{pongs} PONGs and the connection still open"),
        );
    };
    let exhausted = CloseCode::SEQUENCE_EXHAUSTED.0;
    let by_time = Instant::now().saturating_duration_since(established)
        >= limits
            .rekey_after
            .saturating_sub(tolerance(limits.rekey_after));
    let ok = (pongs + 1 == records || by_time)
        && ending.record_code() == Some(exhausted)
        && ending.frame_code() == Some(exhausted)
        && ending.records_after_close == 0
        && session.receive_epoch() == u32::MAX
        && session.violations.is_empty();
    CaseResult::check(ok, expected, ending.to_string())
        .with_detail(session.violations.join("; "))
        .with_detail(format!("declared rekey_after_records {records}"))
}

// =====================================================================================
// 6.2 Sequence numbers
// =====================================================================================

async fn sequence_exhausted(target: Arc<ServerTarget>) -> CaseResult {
    let first = target.options.limits.first_send_sequence;
    if first > LAST_SEQUENCE - 2 || LAST_SEQUENCE - first > EXHAUSTION_ROOM {
        return CaseResult::skip(format!(
            "needs a server whose sending direction starts between 2^62-{EXHAUSTION_ROOM}-1 and 2^62-3 (conformance-testing start, LIM-018), declared as first_send_sequence (--first-send-sequence)"
        ));
    }
    let (mut session, _) = match session(&target).await {
        Ok(session) => session,
        Err(result) => return result,
    };
    let expected = format!(
        "PONGs up to seq 2^62-2, then for the next PING CLOSE record {0} sealed with seq 2^62-1, close frame {0}, nothing after",
        name(CloseCode::SEQUENCE_EXHAUSTED.0)
    );
    let mut pongs = 0;
    // REC-011: answered while numbers below the reserved one are left.
    while session.receive_next_seq() < LAST_SEQUENCE {
        if let Err(what) = ping_through_updates(&mut session, pongs).await {
            return CaseResult::check(
                false,
                expected,
                format!(
                    "after {pongs} PONGs (next seq 2^62-{}): {what}",
                    LAST_SEQUENCE + 1 - session.receive_next_seq()
                ),
            );
        }
        pongs += 1;
    }
    // REC-012, REC-013: the last number is the CLOSE's.
    if !session.send(&Message::Ping(Ping { nonce: pongs })).await {
        return precondition("could not send the last PING");
    }
    let ending = session.await_close(target.options.step).await;
    let exhausted = CloseCode::SEQUENCE_EXHAUSTED.0;
    let ok = ending.messages.is_empty()
        && ending.record_code() == Some(exhausted)
        && ending.frame_code() == Some(exhausted)
        && ending.records_after_close == 0
        && session.receive_next_seq() == LAST_SEQUENCE + 1
        && session.violations.is_empty();
    let sealed = if ending.record.is_some() {
        format!(
            " (the CLOSE opened as seq 2^62-{})",
            (LAST_SEQUENCE + 2).saturating_sub(session.receive_next_seq())
        )
    } else {
        String::new()
    };
    CaseResult::check(
        ok,
        expected,
        format!("{pongs} PONGs, then {ending}{sealed}"),
    )
    .with_detail(session.violations.join("; "))
}

// =====================================================================================
// 17. Limits: the write stall
// =====================================================================================

async fn write_stall(target: Arc<ServerTarget>) -> CaseResult {
    let Some(call) = target.options.bulk_call.clone() else {
        return CaseResult::skip(
            "needs a granted tool that streams at least 64 MiB (bulk_call, --bulk-tool)",
        );
    };
    let limits = &target.options.limits;
    let step = target.options.step;
    let stall = limits.write_stall;
    let pause = stall + step;
    if let Some(skip) = too_long(&target, pause + step, "write stall") {
        return skip;
    }
    if limits.idle_timeout <= pause + step || limits.session_lifetime <= pause + step {
        return CaseResult::skip(format!(
            "the declared idle timeout or session lifetime would end the session during the {pause:?} pause: declare longer ones"
        ));
    }
    let (mut session, _) = match session(&target).await {
        Ok(session) => session,
        Err(result) => return result,
    };
    let args = rmp_serde::to_vec_named(&call.args).unwrap_or_default();
    let request = session.request(1, &call.tool, &args);
    if !session.send(&Message::Request(request)).await {
        return precondition("could not send the bulk call");
    }
    match session.next().await {
        Ok(Message::StreamItem(_)) => {}
        other => {
            return precondition(format!(
                "the bulk call {} did not start streaming: {}",
                call.tool,
                match other {
                    Ok(message) => message.kind().to_owned(),
                    Err(ending) => ending.to_string(),
                }
            ))
        }
    }
    // LIM-004: this client stops reading; the server must not wait on it forever.
    tokio::time::sleep(pause).await;
    let drain_started = Instant::now();
    let mut items = 1u64;
    let mut answered = false;
    let ending = loop {
        let left = (drain_started + step).saturating_duration_since(Instant::now());
        match session.next_within(left).await {
            Ok(Message::StreamItem(_)) => items += 1,
            Ok(Message::Response(_) | Message::Error(_)) => answered = true,
            Ok(_) => {}
            Err(ending) => break ending,
        }
    };
    let code_ok = match (ending.record_code(), ending.frame_code()) {
        (Some(record), frame) => {
            record == CloseCode::TRY_AGAIN_LATER.0 && frame.is_none_or(|f| f == record)
        }
        (None, Some(frame)) => frame == CloseCode::TRY_AGAIN_LATER.0,
        (None, None) => ending.dropped,
    };
    let ended_ok = !ending.timed_out && !answered && code_ok;
    let expected = format!(
        "the connection ended (close {} or EOF) within {pause:?} of the client's last read, the stream cut short; a fresh connection served",
        name(CloseCode::TRY_AGAIN_LATER.0)
    );
    let observed = format!(
        "{} after a {pause:?} pause and {items} stream items{}",
        if ending.timed_out {
            "connection still open".to_owned()
        } else {
            ending.to_string()
        },
        if answered { ", the call answered" } else { "" }
    );
    if !ended_ok {
        return CaseResult::check(false, expected, observed)
            .with_detail(format!("declared write stall {stall:?}"));
    }
    let fresh = match session_and_ping(&target).await {
        Ok(()) => "a fresh connection served".to_owned(),
        Err(what) => {
            return CaseResult::check(
                false,
                expected,
                format!("{observed}; fresh connection: {what}"),
            )
        }
    };
    CaseResult::check(true, expected, format!("{observed}; {fresh}"))
        .with_detail(format!("declared write stall {stall:?}"))
}

async fn session_and_ping(target: &ServerTarget) -> Result<(), String> {
    let (mut session, _) = session(target).await.map_err(|result| result.detail)?;
    ping_through_updates(&mut session, 7).await
}
