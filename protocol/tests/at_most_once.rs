//! The at-most-once table (spec section 14): which request ids execute, which are
//! answered from the cache, and which are refused, across retries, reconnects,
//! evictions and server restarts.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng as _;
use toolwire_protocol::amo::{
    session_lineage, Admission, AmoConfig, AtMostOnceStore, AtMostOnceTable, CachedOutcome,
    LineageKey, LineageOrigin,
};
use toolwire_protocol::replay::{RequestIdWindow, SEQUENCE_LIMIT};
use toolwire_protocol::{ClientConfig, Connection, ErrorCode, Identity, ServerConfig};

const WINDOW: u64 = RequestIdWindow::WINDOW;

fn client(seed: u8) -> toolwire_protocol::IdentityKey {
    Identity::from_seed(&[seed; 32]).public_key()
}

fn lineage(seed: u8, id: u8) -> LineageKey {
    LineageKey::new(client(seed), [id; 16])
}

fn result(bytes: &[u8]) -> CachedOutcome {
    CachedOutcome::Response(bytes.to_vec())
}

/// The default configuration, edited.
fn config(edit: impl FnOnce(&mut AmoConfig)) -> AmoConfig {
    let mut config = AmoConfig::default();
    edit(&mut config);
    config
}

/// A table with one fresh lineage attached.
fn fresh(config: AmoConfig) -> (AtMostOnceTable, LineageKey) {
    let key = lineage(1, 1);
    let mut table = AtMostOnceTable::new(config);
    table.attach(&key, LineageOrigin::Fresh);
    (table, key)
}

/// Executes and completes `id` with `outcome`.
fn run(table: &mut AtMostOnceTable, key: &LineageKey, id: u64, outcome: CachedOutcome) {
    assert_eq!(table.admit(key, id, false), Admission::Execute, "id {id}");
    assert!(table.complete(key, id, outcome), "id {id}");
}

/// Clauses: AMO-016, AMO-010, AMO-012 — an id executes once, is in flight meanwhile,
/// then is answered from the cache.
#[test]
fn an_id_executes_once_then_is_in_flight_then_answered_from_the_cache() {
    let (mut table, key) = fresh(AmoConfig::default());
    assert_eq!(table.admit(&key, 7, false), Admission::Execute);
    // While it runs, every copy (retry or not) is told it is in flight.
    assert_eq!(table.admit(&key, 7, false), Admission::InFlight);
    assert_eq!(table.admit(&key, 7, true), Admission::InFlight);
    let outcome = result(&[0x91, 0x2a]);
    assert!(table.complete(&key, 7, outcome.clone()));
    // Then it is answered with the same bytes, as often as it is asked.
    for retry in [true, false, true] {
        assert_eq!(
            table.admit(&key, 7, retry),
            Admission::Duplicate(outcome.clone())
        );
    }
}

/// Clauses: AMO-012 — a cached error is answered with the same code and message.
#[test]
fn error_outcomes_are_cached_like_results() {
    let (mut table, key) = fresh(AmoConfig::default());
    let failure = CachedOutcome::Error {
        code: ErrorCode::INTERNAL,
        message: "disk full".into(),
    };
    run(&mut table, &key, 1, failure.clone());
    let answer = table.admit(&key, 1, true);
    assert_eq!(answer, Admission::Duplicate(failure.clone()));
    assert_eq!(answer.error_code(), None);
    let body = failure
        .error_message(1)
        .expect("an error outcome has a body");
    assert_eq!(
        (body.id, body.error_code(), body.message.as_str()),
        (Some(1), ErrorCode::INTERNAL, "disk full")
    );
    assert_eq!(result(b"x").error_message(1), None);
}

/// Clauses: AMO-016 — unrecorded ids execute in any order.
#[test]
fn distinct_ids_execute_independently_in_any_order() {
    let (mut table, key) = fresh(AmoConfig::default());
    for id in [5, 1, 9, 0, 3] {
        assert_eq!(table.admit(&key, id, false), Admission::Execute, "id {id}");
    }
    for id in [0, 1, 3, 5, 9] {
        assert!(table.complete(&key, id, result(&[id as u8])));
    }
    for id in [0, 1, 3, 5, 9] {
        assert_eq!(
            table.admit(&key, id, true),
            Admission::Duplicate(result(&[id as u8]))
        );
    }
}

/// Clauses: AMO-021, AMO-022 — the first completion counts; later ones are not sent.
#[test]
fn the_first_completion_wins_and_later_ones_are_not_sent() {
    let (mut table, key) = fresh(AmoConfig::default());
    assert_eq!(table.admit(&key, 1, false), Admission::Execute);
    assert!(table.complete(&key, 1, result(b"first")));
    assert!(!table.complete(&key, 1, result(b"second")));
    assert_eq!(
        table.admit(&key, 1, true),
        Admission::Duplicate(result(b"first"))
    );
    // Completing an id that never executed does nothing.
    assert!(!table.complete(&key, 2, result(b"ghost")));
    assert_eq!(table.admit(&key, 2, false), Admission::Execute);
    assert!(!table.complete(&lineage(9, 9), 2, result(b"ghost")));
}

/// Clauses: AMO-022, AMO-024, AMO-025 — a cancelled call keeps CANCELLED, its late
/// result is dropped, and a CANCEL of an id not in flight does nothing.
#[test]
fn a_cancelled_call_is_answered_cancelled_once_and_never_with_its_late_result() {
    let (mut table, key) = fresh(AmoConfig::default());
    assert_eq!(table.admit(&key, 4, false), Admission::Execute);
    // CANCEL arrives: the call is answered CANCELLED now.
    assert!(table.cancel(&key, 4));
    // The handler finishes anyway: its result must not be sent.
    assert!(!table.complete(&key, 4, result(b"late")));
    // A second CANCEL has nothing to cancel.
    assert!(!table.cancel(&key, 4));
    // A retry gets CANCELLED from the cache; the call never runs again.
    let answer = table.admit(&key, 4, true);
    assert_eq!(answer, Admission::Duplicate(CachedOutcome::cancelled()));
    let Admission::Duplicate(CachedOutcome::Error { code, .. }) = answer else {
        panic!("expected a cached error, got {answer:?}");
    };
    assert_eq!(code, ErrorCode::CANCELLED);
    // Cancelling an id that is not in flight does nothing.
    assert!(!table.cancel(&key, 99));
    assert_eq!(table.admit(&key, 99, false), Admission::Execute);
}

/// Clauses: AMO-026, AMO-014 — an abandoned id caches nothing and answers
/// RESULT_UNAVAILABLE.
#[test]
fn an_abandoned_call_is_never_run_again_and_answers_result_unavailable() {
    let (mut table, key) = fresh(AmoConfig::default());
    assert_eq!(table.admit(&key, 3, false), Admission::Execute);
    table.abandon(&key, 3);
    assert!(!table.complete(&key, 3, result(b"late")));
    for retry in [true, false] {
        let answer = table.admit(&key, 3, retry);
        assert_eq!(answer, Admission::Unavailable);
        assert_eq!(answer.error_code(), Some(ErrorCode::RESULT_UNAVAILABLE));
    }
}

/// Clauses: AMO-029, AMO-014 — past the per-lineage count the oldest outcomes go; their
/// ids answer RESULT_UNAVAILABLE.
#[test]
fn evicted_results_answer_result_unavailable_and_recent_ones_stay() {
    let config = config(|c| {
        c.results_per_lineage = 3;
    });
    let (mut table, key) = fresh(config);
    for id in 1..=5 {
        run(&mut table, &key, id, result(&[id as u8]));
    }
    // The two oldest outcomes were dropped (FIFO by completion).
    for id in [1, 2] {
        assert_eq!(
            table.admit(&key, id, true),
            Admission::Unavailable,
            "id {id}"
        );
    }
    for id in [3, 4, 5] {
        assert_eq!(
            table.admit(&key, id, true),
            Admission::Duplicate(result(&[id as u8])),
            "id {id}"
        );
    }
}

/// Clauses: AMO-029 — the oldest completed outcome is dropped first.
#[test]
fn eviction_follows_completion_order_not_id_order() {
    let config = config(|c| {
        c.results_per_lineage = 2;
    });
    let (mut table, key) = fresh(config);
    for id in [10, 11, 12] {
        assert_eq!(table.admit(&key, id, false), Admission::Execute);
    }
    assert!(table.complete(&key, 12, result(b"c")));
    assert!(table.complete(&key, 10, result(b"a")));
    assert!(table.complete(&key, 11, result(b"b")));
    assert_eq!(table.admit(&key, 12, true), Admission::Unavailable);
    assert_eq!(
        table.admit(&key, 10, true),
        Admission::Duplicate(result(b"a"))
    );
    assert_eq!(
        table.admit(&key, 11, true),
        Admission::Duplicate(result(b"b"))
    );
}

/// Clauses: AMO-013, AMO-014 — older than the window is STALE_REQUEST_ID; recorded
/// inside it is RESULT_UNAVAILABLE.
#[test]
fn ids_older_than_the_window_are_stale_and_inside_it_unavailable() {
    let config = config(|c| {
        c.results_per_lineage = 0;
    });
    let (mut table, key) = fresh(config);
    run(&mut table, &key, 0, result(b"zero"));
    run(&mut table, &key, 1, result(b"one"));
    let top = WINDOW;
    run(&mut table, &key, top, result(b"top"));
    // top - 0 == WINDOW: beyond the window.
    let stale = table.admit(&key, 0, true);
    assert_eq!(stale, Admission::Stale);
    assert_eq!(stale.error_code(), Some(ErrorCode::STALE_REQUEST_ID));
    // top - 1 == WINDOW - 1: inside the window, seen, result not held.
    assert_eq!(table.admit(&key, 1, true), Admission::Unavailable);
    // Never-seen ids: beyond the window stale (it may have run), inside it new.
    let mut table2 = AtMostOnceTable::new(AmoConfig::default());
    table2.attach(&key, LineageOrigin::Fresh);
    run(&mut table2, &key, 5000, result(b"x"));
    assert_eq!(table2.admit(&key, 5000 - WINDOW, false), Admission::Stale);
    assert_eq!(
        table2.admit(&key, 5000 - WINDOW + 1, false),
        Admission::Execute
    );
}

/// Clauses: AMO-012, AMO-017 — the cache is consulted before the window.
#[test]
fn a_result_still_cached_is_answered_even_below_the_window() {
    let (mut table, key) = fresh(AmoConfig::default());
    run(&mut table, &key, 0, result(b"zero"));
    run(&mut table, &key, 10 * WINDOW, result(b"far"));
    assert_eq!(
        table.admit(&key, 0, true),
        Admission::Duplicate(result(b"zero"))
    );
}

/// Clauses: AMO-010, AMO-017 — in flight is decided before the window.
#[test]
fn an_in_flight_call_stays_in_flight_when_the_window_moves_past_it() {
    let (mut table, key) = fresh(AmoConfig::default());
    assert_eq!(table.admit(&key, 1, false), Admission::Execute);
    run(&mut table, &key, 2 * WINDOW, result(b"far"));
    assert_eq!(table.admit(&key, 1, true), Admission::InFlight);
    assert!(table.complete(&key, 1, result(b"one")));
    assert_eq!(
        table.admit(&key, 1, true),
        Admission::Duplicate(result(b"one"))
    );
}

/// Clauses: AMO-007 — ids at or above 2^62 are INVALID_ARGUMENT and not recorded.
#[test]
fn ids_at_or_above_2_pow_62_are_refused_without_being_recorded() {
    let (mut table, key) = fresh(AmoConfig::default());
    for id in [SEQUENCE_LIMIT, SEQUENCE_LIMIT + 1, u64::MAX] {
        let answer = table.admit(&key, id, false);
        assert_eq!(answer, Admission::IdOutOfRange);
        assert_eq!(answer.error_code(), Some(ErrorCode::INVALID_ARGUMENT));
    }
    // The window was not moved: small ids still execute.
    assert_eq!(table.admit(&key, 0, false), Admission::Execute);
    assert_eq!(
        table.admit(&key, SEQUENCE_LIMIT - 1, false),
        Admission::Execute
    );
}

/// Clauses: AMO-028 — an outcome over the maximum is not cached.
#[test]
fn results_too_large_to_cache_are_sent_once_and_then_unavailable() {
    let config = config(|c| {
        c.max_result_bytes = 4;
    });
    let (mut table, key) = fresh(config);
    run(&mut table, &key, 1, result(&[0; 4]));
    run(&mut table, &key, 2, result(&[0; 5]));
    assert_eq!(
        table.admit(&key, 1, true),
        Admission::Duplicate(result(&[0; 4]))
    );
    assert_eq!(table.admit(&key, 2, true), Admission::Unavailable);
    assert_eq!(table.cached_bytes(), 4);
}

/// Clauses: AMO-030 — the total cached bytes stay within the budget, least recently
/// used lineages losing outcomes first.
#[test]
fn the_total_byte_budget_drops_results_of_the_least_recently_used_lineage_first() {
    let config = config(|c| {
        c.max_total_result_bytes = 30;
    });
    let mut table = AtMostOnceTable::new(config);
    let old = lineage(1, 1);
    let busy = lineage(2, 2);
    run(&mut table, &old, 1, result(&[1; 10]));
    run(&mut table, &old, 2, result(&[2; 10]));
    run(&mut table, &busy, 1, result(&[3; 10]));
    assert_eq!(table.cached_bytes(), 30);
    run(&mut table, &busy, 2, result(&[4; 10]));
    assert!(table.cached_bytes() <= 30);
    // The least recently used lineage lost its oldest result; everything else stays.
    assert_eq!(table.admit(&old, 1, true), Admission::Unavailable);
    assert_eq!(
        table.admit(&old, 2, true),
        Admission::Duplicate(result(&[2; 10]))
    );
    assert_eq!(
        table.admit(&busy, 1, true),
        Admission::Duplicate(result(&[3; 10]))
    );
    assert_eq!(
        table.admit(&busy, 2, true),
        Admission::Duplicate(result(&[4; 10]))
    );
}

/// Clauses: AMO-001 — a lineage is keyed by client key and lineage id.
#[test]
fn lineages_are_per_client_so_a_client_cannot_see_or_block_another() {
    let mut table = AtMostOnceTable::default();
    let alice = lineage(1, 7);
    let mallory = lineage(2, 7); // same lineage id, other client
    table.attach(&alice, LineageOrigin::Fresh);
    table.attach(&mallory, LineageOrigin::Fresh);
    run(&mut table, &alice, 1, result(b"alice's secret"));
    // Mallory's id 1 is her own call, not a duplicate of Alice's.
    assert_eq!(table.admit(&mallory, 1, true), Admission::Execute);
    assert!(table.complete(&mallory, 1, result(b"mallory")));
    assert_eq!(
        table.admit(&alice, 1, true),
        Admission::Duplicate(result(b"alice's secret"))
    );
}

/// Clauses: AMO-016, AMO-004 — an unrecorded id of a fresh lineage executes whatever
/// retry says; resuming a held lineage keeps its state.
#[test]
fn a_retry_on_a_fresh_lineage_of_an_id_never_received_executes() {
    // The request was lost with the first connection before reaching the server; the
    // lineage is fresh, so the server knows it never ran.
    let (mut table, key) = fresh(AmoConfig::default());
    run(&mut table, &key, 1, result(b"one"));
    assert_eq!(table.admit(&key, 2, true), Admission::Execute);
    // Resuming a lineage the server holds keeps its knowledge.
    table.attach(&key, LineageOrigin::Resumed);
    assert_eq!(table.admit(&key, 3, true), Admission::Execute);
    assert_eq!(
        table.admit(&key, 1, true),
        Admission::Duplicate(result(b"one"))
    );
}

/// Clauses: AMO-005, AMO-015, AMO-016 — a resumed lineage the server lost is recovered:
/// retries are RESULT_UNAVAILABLE (and recorded), new ids execute.
#[test]
fn after_a_restart_retries_are_unavailable_and_new_calls_execute() {
    let key = lineage(1, 1);
    let mut before = AtMostOnceTable::default();
    before.attach(&key, LineageOrigin::Fresh);
    run(&mut before, &key, 5, result(b"five"));
    assert_eq!(before.admit(&key, 6, false), Admission::Execute);
    drop(before); // the server restarts without a durable store

    let mut after = AtMostOnceTable::default();
    after.attach(&key, LineageOrigin::Resumed);
    // Both the completed and the interrupted call may have run: never again.
    assert_eq!(after.admit(&key, 5, true), Admission::Unavailable);
    assert_eq!(after.admit(&key, 6, true), Admission::Unavailable);
    // Even a retried id above anything seen since the restart: it may predate it.
    assert_eq!(after.admit(&key, 1000, true), Admission::Unavailable);
    // The answer is stable for every later copy.
    assert_eq!(after.admit(&key, 5, true), Admission::Unavailable);
    // New calls execute, and their retries follow the normal rules.
    assert_eq!(after.admit(&key, 7, false), Admission::Execute);
    assert_eq!(after.admit(&key, 7, true), Admission::InFlight);
    assert!(after.complete(&key, 7, result(b"seven")));
    assert_eq!(
        after.admit(&key, 7, true),
        Admission::Duplicate(result(b"seven"))
    );
}

/// Clauses: AMO-005, AMO-015, AMO-004 — a recovered lineage stays recovered when
/// resumed again.
#[test]
fn a_call_that_ran_before_a_restart_is_not_run_again_after_later_calls() {
    // Without the recovered state, id 5 would look like a gap below id 6 and run
    // twice.
    let key = lineage(1, 1);
    let mut before = AtMostOnceTable::default();
    before.attach(&key, LineageOrigin::Fresh);
    run(&mut before, &key, 5, result(b"five"));
    drop(before);

    let mut after = AtMostOnceTable::default();
    after.attach(&key, LineageOrigin::Resumed);
    run(&mut after, &key, 6, result(b"six"));
    // Another reconnect: the lineage is now held, but its past is still unknown.
    after.attach(&key, LineageOrigin::Resumed);
    assert_eq!(after.admit(&key, 5, true), Admission::Unavailable);
    assert_eq!(
        after.admit(&key, 6, true),
        Admission::Duplicate(result(b"six"))
    );
}

/// Clauses: AMO-005 — an unknown lineage is recovered.
#[test]
fn a_lineage_never_attached_is_treated_as_recovered() {
    let key = lineage(1, 1);
    let mut table = AtMostOnceTable::default();
    assert_eq!(table.admit(&key, 1, true), Admission::Unavailable);
    assert_eq!(table.admit(&key, 2, false), Admission::Execute);
}

/// Clauses: AMO-031, AMO-032 — past the maximum the least recently used idle lineage is
/// dropped.
#[test]
fn least_recently_used_lineages_are_dropped_and_then_behave_as_unknown() {
    let config = config(|c| {
        c.max_lineages = 2;
    });
    let mut table = AtMostOnceTable::new(config);
    let (a, b, c) = (lineage(1, 1), lineage(2, 2), lineage(3, 3));
    for key in [&a, &b] {
        table.attach(key, LineageOrigin::Fresh);
        run(&mut table, key, 1, result(b"r"));
    }
    // Using `a` makes `b` the least recently used.
    assert_eq!(table.admit(&a, 1, true), Admission::Duplicate(result(b"r")));
    table.attach(&c, LineageOrigin::Fresh);
    assert_eq!(table.len(), 2);
    assert!(!table.contains(&b));
    // `b` lost its state: its retries are unavailable, never executed.
    assert_eq!(table.admit(&b, 1, true), Admission::Unavailable);
    assert_eq!(table.admit(&b, 2, true), Admission::Unavailable);
}

/// Clauses: AMO-032, AMO-033 — a lineage with a call in flight is never dropped.
#[test]
fn a_lineage_with_a_call_in_flight_is_never_dropped() {
    let config = config(|c| {
        c.max_lineages = 2;
    });
    let mut table = AtMostOnceTable::new(config);
    let (a, b, c) = (lineage(1, 1), lineage(2, 2), lineage(3, 3));
    table.attach(&a, LineageOrigin::Fresh);
    assert_eq!(table.admit(&a, 1, false), Admission::Execute); // a is busy
    table.attach(&b, LineageOrigin::Fresh);
    run(&mut table, &b, 1, result(b"b"));
    // `a` is the least recently used, but busy: `b` goes.
    table.attach(&c, LineageOrigin::Fresh);
    assert!(table.contains(&a) && table.contains(&c) && !table.contains(&b));
    assert_eq!(table.admit(&a, 1, true), Admission::InFlight);
}

/// Clauses: AMO-034 — no room: UNAVAILABLE, nothing recorded.
#[test]
fn when_every_lineage_is_busy_new_lineages_are_refused_unavailable() {
    let config = config(|c| {
        c.max_lineages = 2;
    });
    let mut table = AtMostOnceTable::new(config);
    let (a, b, c) = (lineage(1, 1), lineage(2, 2), lineage(3, 3));
    for key in [&a, &b] {
        table.attach(key, LineageOrigin::Fresh);
        assert_eq!(table.admit(key, 1, false), Admission::Execute);
    }
    table.attach(&c, LineageOrigin::Fresh);
    assert!(!table.contains(&c));
    let answer = table.admit(&c, 1, false);
    assert_eq!(answer, Admission::Overloaded);
    assert_eq!(answer.error_code(), Some(ErrorCode::UNAVAILABLE));
    // Nothing was recorded: once a slot frees, the same id executes.
    assert!(table.complete(&a, 1, result(b"a")));
    assert_eq!(table.admit(&c, 1, false), Admission::Execute);
    // `c` was created by admission, as recovered: conservative for retries.
    assert_eq!(table.admit(&c, 2, true), Admission::Unavailable);
}

/// Clauses: AMO-031, AMO-032 — the per-client quota drops the same client's lineages.
#[test]
fn one_client_cannot_push_other_clients_lineages_out() {
    let config = config(|c| {
        c.max_lineages = 4;
        c.max_lineages_per_client = 2;
    });
    let mut table = AtMostOnceTable::new(config);
    let victim = lineage(1, 1);
    table.attach(&victim, LineageOrigin::Fresh);
    run(&mut table, &victim, 1, result(b"kept"));
    // A client reconnecting in a loop, each time with a new lineage.
    for id in 0..50 {
        let key = lineage(2, id);
        table.attach(&key, LineageOrigin::Fresh);
        run(&mut table, &key, 1, result(b"spam"));
    }
    assert_eq!(table.len(), 3);
    assert_eq!(
        table.admit(&victim, 1, true),
        Admission::Duplicate(result(b"kept"))
    );
    // The flooding client keeps only its most recent lineages.
    assert!(table.contains(&lineage(2, 49)) && table.contains(&lineage(2, 48)));
    assert!(!table.contains(&lineage(2, 47)));
}

#[test]
fn the_defaults_are_the_documented_ones() {
    let config = AmoConfig::default();
    assert_eq!(config.max_lineages, 1024);
    assert_eq!(config.max_lineages_per_client, 16);
    assert_eq!(config.results_per_lineage, 256);
    assert_eq!(config.max_result_bytes, 64 * 1024);
    assert_eq!(config.max_total_result_bytes, 64 * 1024 * 1024);
    let table = AtMostOnceTable::default();
    assert_eq!(table.config(), &config);
    assert!(table.is_empty());
    assert_eq!(WINDOW, 4032);
}

/// Clauses: AMO-007, AMO-013, AMO-014, AMO-034 — each refusing admission has its code.
#[test]
fn every_admission_maps_to_its_error_code() {
    let cases = [
        (Admission::Execute, None),
        (Admission::Duplicate(result(b"")), None),
        (Admission::InFlight, None),
        (Admission::Stale, Some(ErrorCode::STALE_REQUEST_ID)),
        (Admission::Unavailable, Some(ErrorCode::RESULT_UNAVAILABLE)),
        (Admission::IdOutOfRange, Some(ErrorCode::INVALID_ARGUMENT)),
        (Admission::Overloaded, Some(ErrorCode::UNAVAILABLE)),
    ];
    for (admission, code) in cases {
        assert_eq!(admission.error_code(), code, "{admission:?}");
    }
    assert_eq!(ErrorCode::STALE_REQUEST_ID.0, 100);
    assert_eq!(ErrorCode::RESULT_UNAVAILABLE.0, 101);
}

/// Runs a real handshake and returns (client, server) session infos.
fn handshake(
    lineage: Option<[u8; 16]>,
) -> (
    toolwire_protocol::SessionInfo,
    toolwire_protocol::SessionInfo,
) {
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let server_identity = Identity::from_seed(&[0x53; 32]);
    let client_identity = Identity::from_seed(&[0x43; 32]);
    let endpoint = "wss://tools.example/toolwire";
    let server_config = Arc::new(
        ServerConfig::new(server_identity.clone(), endpoint, &mut rng)
            .allow_clients([client_identity.public_key()]),
    );
    let mut client_config = ClientConfig::new(
        client_identity,
        vec![server_identity.public_key()],
        endpoint,
        &mut rng,
    );
    if let Some(lineage) = lineage {
        client_config = client_config.with_lineage(lineage);
    }
    let now = Instant::now();
    let mut client = Connection::client(Arc::new(client_config), now, &mut rng);
    let mut server = Connection::server(server_config, now, 1_767_225_600, &mut rng);
    for _ in 0..2 {
        while let Some(record) = client.poll_transmit() {
            server.handle_record(now, &record).expect("server accepts");
        }
        while let Some(record) = server.poll_transmit() {
            client.handle_record(now, &record).expect("client accepts");
        }
    }
    (
        client.session().expect("established").clone(),
        server.session().expect("established").clone(),
    )
}

/// Clauses: AMO-001, AMO-002, AMO-003 — a session without resume starts the lineage
/// named by the first 16 bytes of its session id, on both sides, keyed by the client.
#[test]
fn a_session_without_resume_starts_a_fresh_lineage_both_sides_agree_on() {
    let (client, server) = handshake(None);
    let (lineage, origin) = session_lineage(&server);
    assert_eq!(origin, LineageOrigin::Fresh);
    assert_eq!(lineage[..], server.session_id[..16]);
    assert_eq!(session_lineage(&client), (lineage, LineageOrigin::Fresh));
    // The server keys it by the client's identity.
    let (key, _) = LineageKey::for_session(&server);
    assert_eq!(key, LineageKey::new(server.peer, lineage));
    assert_eq!(server.peer, Identity::from_seed(&[0x43; 32]).public_key());
}

/// Clauses: AMO-003 — a client continuing a lineage names it in ClientHello.resume.
#[test]
fn a_resumed_session_continues_the_named_lineage() {
    let named = [0xab; 16];
    let (client, server) = handshake(Some(named));
    assert_eq!(session_lineage(&server), (named, LineageOrigin::Resumed));
    assert_eq!(session_lineage(&client), (named, LineageOrigin::Resumed));
    let (key, origin) = LineageKey::for_session(&server);
    assert_eq!(key.lineage, named);
    assert_eq!(key.client, server.peer);
    assert_eq!(origin, LineageOrigin::Resumed);
}

// ---- Model-based check: no id of a lineage ever executes twice. ----

#[derive(Debug, Clone)]
enum Op {
    /// The client (marking every re-send as a retry, as section 14.1 asks) sends
    /// `id` on lineage `lineage`.
    Send { lineage: usize, id: u64 },
    /// The server finishes the n-th call in flight, with a result of `len` bytes.
    Complete { pick: usize, len: usize },
    /// The client cancels the n-th call in flight.
    Cancel { pick: usize },
    /// The n-th call in flight crashes.
    Abandon { pick: usize },
    /// The client reconnects, resuming `lineage`.
    Reconnect { lineage: usize },
    /// The server restarts, losing the table.
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    let id = prop_oneof![
        8 => 0u64..12,
        1 => 4000u64..4100,
        1 => 8000u64..8100,
    ];
    prop_oneof![
        6 => (0usize..4, id).prop_map(|(lineage, id)| Op::Send { lineage, id }),
        3 => (any::<usize>(), 0usize..12).prop_map(|(pick, len)| Op::Complete { pick, len }),
        1 => any::<usize>().prop_map(|pick| Op::Cancel { pick }),
        1 => any::<usize>().prop_map(|pick| Op::Abandon { pick }),
        1 => (0usize..4).prop_map(|lineage| Op::Reconnect { lineage }),
        1 => Just(Op::Restart),
    ]
}

fn model_keys() -> [LineageKey; 4] {
    // Two clients, two lineages each.
    [lineage(1, 1), lineage(1, 2), lineage(2, 1), lineage(2, 2)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Clauses: AMO-020, AMO-021, AMO-012 — model check: no id of a held lineage ever
    /// executes twice, every call gets one answer, duplicates repeat it.
    #[test]
    fn no_id_ever_executes_twice_and_duplicates_repeat_the_first_answer(
        ops in proptest::collection::vec(op(), 1..200)
    ) {
        let config = config(|c| { c.max_lineages = 3; c.max_lineages_per_client = 2; c.results_per_lineage = 3; c.max_result_bytes = 8; c.max_total_result_bytes = 20; });
        let keys = model_keys();
        let mut table = AtMostOnceTable::new(config.clone());
        for key in &keys {
            table.attach(key, LineageOrigin::Fresh);
        }
        // What the world saw: executions and the answer first sent for each id.
        let mut executed: BTreeSet<(usize, u64)> = BTreeSet::new();
        let mut answered: BTreeMap<(usize, u64), CachedOutcome> = BTreeMap::new();
        // What the client sent (it marks every re-send as a retry).
        let mut sent: BTreeSet<(usize, u64)> = BTreeSet::new();
        let mut in_flight: Vec<(usize, u64)> = Vec::new();

        for op in ops {
            match op {
                Op::Send { lineage, id } => {
                    let retry = !sent.insert((lineage, id));
                    match table.admit(&keys[lineage], id, retry) {
                        Admission::Execute => {
                            prop_assert!(
                                executed.insert((lineage, id)),
                                "lineage {} id {} executed twice", lineage, id
                            );
                            in_flight.push((lineage, id));
                        }
                        Admission::Duplicate(outcome) => {
                            prop_assert_eq!(answered.get(&(lineage, id)), Some(&outcome));
                        }
                        Admission::InFlight => {
                            prop_assert!(in_flight.contains(&(lineage, id)));
                        }
                        Admission::Stale | Admission::Unavailable | Admission::Overloaded => {}
                        Admission::IdOutOfRange => prop_assert!(false, "ids are in range"),
                        other => prop_assert!(false, "unexpected {:?}", other),
                    }
                }
                Op::Complete { pick, len } => {
                    if !in_flight.is_empty() {
                        let (lineage, id) = in_flight.remove(pick % in_flight.len());
                        let outcome = result(&vec![id as u8; len]);
                        // Every call still running gets its one answer sent.
                        prop_assert!(
                            table.complete(&keys[lineage], id, outcome.clone()),
                            "lineage {} id {} lost its answer", lineage, id
                        );
                        prop_assert!(!answered.contains_key(&(lineage, id)));
                        answered.insert((lineage, id), outcome);
                        // A second completion is never sent.
                        prop_assert!(!table.complete(&keys[lineage], id, result(b"again")));
                    }
                }
                Op::Cancel { pick } => {
                    if !in_flight.is_empty() {
                        let (lineage, id) = in_flight.remove(pick % in_flight.len());
                        prop_assert!(table.cancel(&keys[lineage], id));
                        answered.insert((lineage, id), CachedOutcome::cancelled());
                        // The handler's late result is dropped.
                        prop_assert!(!table.complete(&keys[lineage], id, result(b"late")));
                    }
                }
                Op::Abandon { pick } => {
                    if !in_flight.is_empty() {
                        let (lineage, id) = in_flight.remove(pick % in_flight.len());
                        table.abandon(&keys[lineage], id);
                    }
                }
                Op::Reconnect { lineage } => table.attach(&keys[lineage], LineageOrigin::Resumed),
                Op::Restart => {
                    table = AtMostOnceTable::new(config.clone());
                    in_flight.clear();
                }
            }
            prop_assert!(table.len() <= 3);
            prop_assert!(table.cached_bytes() <= 20);
        }
    }
}

/// Clauses: AMO-019 — a duplicate whose tool, arguments or grant id differ from the
/// call that produced the cached outcome (or that is still running) is refused with
/// FAILED_PRECONDITION instead of being answered with another call's outcome; the
/// same call is answered from the cache.
#[test]
fn a_reused_id_with_another_call_is_a_mismatch() {
    use toolwire_protocol::amo::CallFingerprint;
    let (mut table, key) = fresh(AmoConfig::default());
    let call = CallFingerprint::of("echo", b"\x81\xa1a\x01", "");
    let other_args = CallFingerprint::of("echo", b"\x81\xa1a\x02", "");
    let other_tool = CallFingerprint::of("delete", b"\x81\xa1a\x01", "");
    let other_grant = CallFingerprint::of("echo", b"\x81\xa1a\x01", "g-2");
    assert_eq!(table.admit_call(&key, 1, false, &call), Admission::Execute);
    assert_eq!(
        table.admit_call(&key, 1, true, &other_args),
        Admission::Mismatch
    );
    assert_eq!(table.admit_call(&key, 1, true, &call), Admission::InFlight);
    assert!(table.complete(&key, 1, result(b"one")));
    for different in [other_args, other_tool, other_grant] {
        let answer = table.admit_call(&key, 1, true, &different);
        assert_eq!(answer, Admission::Mismatch);
        assert_eq!(answer.error_code(), Some(ErrorCode::FAILED_PRECONDITION));
    }
    assert_eq!(
        table.admit_call(&key, 1, true, &call),
        Admission::Duplicate(result(b"one"))
    );
}

/// Rebuilds a table from a journal, the way a durable store does: the changes are
/// applied to a copy of the state, which is then restored.
fn replay_journal(
    config: AmoConfig,
    changes: &[toolwire_protocol::amo::AmoChange],
) -> AtMostOnceTable {
    use toolwire_protocol::amo::{AmoChange, RestoredLineage};
    let mut lineages: BTreeMap<LineageKey, RestoredLineage> = BTreeMap::new();
    let mut order: Vec<LineageKey> = Vec::new();
    let touch = |order: &mut Vec<LineageKey>, key: LineageKey| {
        order.retain(|held| *held != key);
        order.push(key);
    };
    for change in changes {
        match change.clone() {
            AmoChange::LineageAdded { key, recovered } => {
                lineages.insert(key, RestoredLineage::new(key, recovered));
                touch(&mut order, key);
            }
            AmoChange::LineageDropped { key } => {
                lineages.remove(&key);
                order.retain(|held| *held != key);
            }
            AmoChange::IdRecorded { key, id, .. } => {
                if let Some(lineage) = lineages.get_mut(&key) {
                    lineage.recorded.push(id);
                }
                touch(&mut order, key);
            }
            AmoChange::OutcomeCached {
                key,
                id,
                outcome,
                fingerprint,
            } => {
                if let Some(lineage) = lineages.get_mut(&key) {
                    lineage.outcomes.push((id, outcome, fingerprint));
                }
                touch(&mut order, key);
            }
            AmoChange::OutcomeDropped { key, id } => {
                if let Some(lineage) = lineages.get_mut(&key) {
                    lineage.outcomes.retain(|(held, _, _)| *held != id);
                }
            }
            other => panic!("unexpected change {other:?}"),
        }
    }
    let restored: Vec<_> = order
        .iter()
        .filter_map(|key| lineages.remove(key))
        .collect();
    AtMostOnceTable::restore(config, restored)
}

/// Clauses: AMO-035 — the journal of a table, applied to a store and restored after
/// a restart, gives the same answers: completed calls are answered with their
/// outcome, ids in flight at the restart are RESULT_UNAVAILABLE (recorded, outcome
/// unknown) and never executed, evicted outcomes stay evicted, and new ids execute.
#[test]
fn a_table_restored_from_its_journal_answers_as_before() {
    let config = config(|config| config.results_per_lineage = 2);
    let mut table = AtMostOnceTable::new(config.clone()).with_journal();
    let key = lineage(1, 1);
    table.attach(&key, LineageOrigin::Fresh);
    for id in 1..=3 {
        assert_eq!(table.admit(&key, id, false), Admission::Execute);
        assert!(table.complete(&key, id, result(&[id as u8])));
    }
    assert_eq!(table.admit(&key, 4, false), Admission::Execute);
    let changes = table.take_changes();
    assert!(table.take_changes().is_empty());

    let mut restored = replay_journal(config, &changes);
    assert!(restored.take_changes().is_empty());
    assert_eq!(restored.admit(&key, 1, true), Admission::Unavailable);
    assert_eq!(
        restored.admit(&key, 2, true),
        Admission::Duplicate(result(&[2]))
    );
    assert_eq!(
        restored.admit(&key, 3, true),
        Admission::Duplicate(result(&[3]))
    );
    assert_eq!(restored.admit(&key, 4, true), Admission::Unavailable);
    assert_eq!(restored.admit(&key, 5, false), Admission::Execute);
    // A lineage the store never held is recovered after the restart.
    let other = lineage(2, 2);
    restored.attach(&other, LineageOrigin::Resumed);
    assert_eq!(restored.admit(&other, 1, true), Admission::Unavailable);
}

/// Clauses: AMO-031, AMO-029 — a store holding more than the bounds of the restarted
/// server (its limits were lowered) is restored within them, and the journal names
/// what was dropped so that the store drops it too.
#[test]
fn a_restore_applies_the_bounds_and_journals_the_drops() {
    use toolwire_protocol::amo::{AmoChange, RestoredLineage};
    let mut lineages = Vec::new();
    for n in 1..=3u8 {
        let mut restored = RestoredLineage::new(lineage(1, n), false);
        restored.recorded = vec![1, 2, 3];
        restored.outcomes = (1..=3)
            .map(|id| (id, result(&[n, id as u8]), None))
            .collect();
        lineages.push(restored);
    }
    let bounds = config(|config| {
        config.max_lineages = 2;
        config.results_per_lineage = 1;
    });
    let mut table = AtMostOnceTable::restore(bounds, lineages);
    assert_eq!(table.len(), 2);
    let changes = table.take_changes();
    assert!(changes.contains(&AmoChange::LineageDropped { key: lineage(1, 1) }));
    assert!(changes.contains(&AmoChange::OutcomeDropped {
        key: lineage(1, 3),
        id: 2
    }));
    assert_eq!(
        table.admit(&lineage(1, 3), 3, true),
        Admission::Duplicate(result(&[3, 3]))
    );
    assert_eq!(table.admit(&lineage(1, 3), 2, true), Admission::Unavailable);
}
