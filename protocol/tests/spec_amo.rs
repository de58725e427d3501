//! At-most-once admission (spec section 14.2): the rules apply in the order of
//! AMO-017, so that when several could apply the first one decides.

use toolwire_protocol::amo::{
    Admission, AmoConfig, AtMostOnceStore, AtMostOnceTable, CachedOutcome, LineageKey,
    LineageOrigin,
};
use toolwire_protocol::replay::{RequestIdWindow, SEQUENCE_LIMIT};
use toolwire_protocol::Identity;

const WINDOW: u64 = RequestIdWindow::WINDOW;

fn lineage(seed: u8, id: u8) -> LineageKey {
    LineageKey::new(Identity::from_seed(&[seed; 32]).public_key(), [id; 16])
}

fn one_lineage_table() -> AtMostOnceTable {
    let mut config = AmoConfig::default();
    config.max_lineages = 1;
    AtMostOnceTable::new(config)
}

/// Clauses: AMO-017, AMO-007, AMO-034, AMO-010 — an out-of-range id is refused
/// INVALID_ARGUMENT even when the table has no room for its lineage; a lineage that
/// needs room that cannot be made is refused UNAVAILABLE whatever the id and the
/// retry flag; a held lineage is never refused for room, so its in-flight ids are
/// still recognised.
#[test]
fn range_comes_before_room_and_room_before_the_lineage_state() {
    let mut table = one_lineage_table();
    let busy = lineage(1, 1);
    let newcomer = lineage(2, 2);
    table.attach(&busy, LineageOrigin::Fresh);
    assert_eq!(table.admit(&busy, 1, false), Admission::Execute);

    for id in [SEQUENCE_LIMIT, u64::MAX] {
        assert_eq!(table.admit(&newcomer, id, true), Admission::IdOutOfRange);
        assert_eq!(table.admit(&busy, id, false), Admission::IdOutOfRange);
    }
    for (id, retry) in [(0, false), (1, true), (SEQUENCE_LIMIT - 1, false)] {
        assert_eq!(table.admit(&newcomer, id, retry), Admission::Overloaded);
    }
    assert!(
        !table.contains(&newcomer),
        "nothing recorded for the refused"
    );
    assert_eq!(table.admit(&busy, 1, true), Admission::InFlight);
    assert_eq!(table.admit(&busy, 2, false), Admission::Execute);
}

/// Clauses: AMO-017, AMO-013, AMO-014, AMO-015, AMO-016 — on a recovered lineage a
/// retried id older than the window is STALE (rule 3 before rule 5), a recorded id is
/// RESULT_UNAVAILABLE whatever `retry` says (rule 4), an unrecorded retried id is
/// RESULT_UNAVAILABLE and recorded (rule 5), and only an unrecorded id sent without
/// `retry` executes (rule 6).
#[test]
fn window_before_recorded_before_recovered_before_execute() {
    let key = lineage(1, 1);
    let mut table = AtMostOnceTable::default();
    table.attach(&key, LineageOrigin::Resumed); // recovered: its past is unknown
    let top = 2 * WINDOW;
    assert_eq!(table.admit(&key, top, false), Admission::Execute);
    assert!(table.complete(&key, top, CachedOutcome::Response(vec![0xc0])));

    // Rule 3 before rule 5: too old, although retried on a recovered lineage.
    assert_eq!(table.admit(&key, top - WINDOW, true), Admission::Stale);
    assert_eq!(table.admit(&key, 0, true), Admission::Stale);
    // Rule 5 just inside the window: unavailable, and now recorded.
    let inside = top - WINDOW + 1;
    assert_eq!(table.admit(&key, inside, true), Admission::Unavailable);
    // Rule 4 for it from now on, even without `retry`.
    assert_eq!(table.admit(&key, inside, false), Admission::Unavailable);
    // Rule 6: unrecorded and not a retry.
    assert_eq!(table.admit(&key, inside + 1, false), Admission::Execute);
    // Rule 1 before rule 5: in flight, although retried on a recovered lineage.
    assert_eq!(table.admit(&key, inside + 1, true), Admission::InFlight);
    // Rule 2 before rule 3 and 5: a cached outcome answers even a stale retry once
    // the window moves past it.
    assert!(table.complete(&key, inside + 1, CachedOutcome::Response(vec![1])));
    assert_eq!(table.admit(&key, 10 * WINDOW, false), Admission::Execute);
    assert_eq!(
        table.admit(&key, inside + 1, true),
        Admission::Duplicate(CachedOutcome::Response(vec![1]))
    );
}
