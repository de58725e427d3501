//! Property and boundary tests for the RFC 6479 anti-replay windows.
//!
//! The reference is a deliberately naive model that implements the normative
//! acceptance rule from `toolwire_protocol::replay` literally: a set of every
//! value ever accepted plus the highest one. The bitmap window must agree with
//! it on every decision and every error kind.

use std::collections::BTreeSet;

use proptest::prelude::*;
use toolwire_protocol::replay::{
    RecordWindow, ReplayError, ReplayWindow, RequestIdWindow, SEQUENCE_LIMIT,
};

/// Literal implementation of the acceptance rule.
struct Model {
    window: u64,
    accepted: BTreeSet<u64>,
    top: Option<u64>,
}

impl Model {
    fn new(window: u64) -> Self {
        Self {
            window,
            accepted: BTreeSet::new(),
            top: None,
        }
    }

    fn decide(&self, seq: u64) -> Result<(), ReplayError> {
        self.decide_given(seq, self.accepted.contains(&seq))
    }

    /// The rule itself, with "was `seq` accepted before" supplied by the
    /// caller so that sweeps can answer it in bulk.
    fn decide_given(&self, seq: u64, previously_accepted: bool) -> Result<(), ReplayError> {
        if seq >= SEQUENCE_LIMIT {
            return Err(ReplayError::LimitReached);
        }
        if let Some(top) = self.top {
            if seq <= top && top - seq >= self.window {
                return Err(ReplayError::TooOld);
            }
        }
        if previously_accepted {
            return Err(ReplayError::Duplicate);
        }
        Ok(())
    }

    fn accept(&mut self, seq: u64) {
        self.accepted.insert(seq);
        self.top = Some(self.top.map_or(seq, |t| t.max(seq)));
    }
}

/// One step of a generated trace, relative to the current top (0 if none)
/// so that the interesting regions are hit regardless of where the trace is.
#[derive(Debug, Clone)]
enum Op {
    /// (a) `top + n`, small n.
    Inc(u64),
    /// (b) `top - n`, small n: repeats of recent values.
    Recent(u64),
    /// (c) `top - (WINDOW + d)`, d in -3..=3: just inside/outside the edge.
    Edge(i64),
    /// Anywhere from `top` back to two windows below it.
    Back(u64),
    /// (d) `top + n` for jumps around and far beyond the ring size.
    Jump(u64),
    /// (e) `SEQUENCE_LIMIT + d`, or `u64::MAX`.
    NearLimit(i64),
    /// An absolute value, mostly to land anywhere (including 0) mid-trace.
    Abs(u64),
}

impl Op {
    fn resolve(&self, top: Option<u64>, window: u64) -> u64 {
        let top = top.unwrap_or(0);
        let offset = |d: i128| -> u64 {
            let v = i128::from(top) + d;
            u64::try_from(v.clamp(0, i128::from(u64::MAX))).unwrap_or(u64::MAX)
        };
        match *self {
            Op::Inc(n) | Op::Jump(n) => top.saturating_add(n),
            Op::Recent(n) | Op::Back(n) => top.saturating_sub(n),
            Op::Edge(d) => offset(-(i128::from(window) + i128::from(d))),
            Op::NearLimit(d) if d == i64::MAX => u64::MAX,
            Op::NearLimit(d) => {
                u64::try_from(i128::from(SEQUENCE_LIMIT) + i128::from(d)).unwrap_or(u64::MAX)
            }
            Op::Abs(v) => v,
        }
    }
}

fn op_strategy(ring_bits: u64, window: u64) -> impl Strategy<Value = Op> {
    let jumps = vec![
        1,
        63,
        64,
        65,
        window - 1,
        window,
        window + 1,
        ring_bits - 1,
        ring_bits,
        ring_bits + 1,
        3000,
        10_000,
        1 << 40,
    ];
    prop_oneof![
        30 => (1u64..=8).prop_map(Op::Inc),
        20 => (0u64..=16).prop_map(Op::Recent),
        15 => (-3i64..=3).prop_map(Op::Edge),
        15 => (0..=2 * window).prop_map(Op::Back),
        10 => proptest::sample::select(jumps).prop_map(Op::Jump),
        3 => prop_oneof![(-3i64..=3), Just(i64::MAX)].prop_map(Op::NearLimit),
        3 => prop_oneof![Just(0u64), 0u64..1 << 20, any::<u64>()].prop_map(Op::Abs),
    ]
}

/// (f) Traces start at 0 half of the time, otherwise at an arbitrary value.
fn trace_strategy(ring_bits: u64, window: u64) -> impl Strategy<Value = Vec<Op>> {
    let start = prop_oneof![
        Just(0u64),
        0u64..1 << 20,
        (SEQUENCE_LIMIT - 8)..=SEQUENCE_LIMIT,
    ];
    (
        start,
        proptest::collection::vec(op_strategy(ring_bits, window), 0..64),
    )
        .prop_map(|(start, mut ops)| {
            ops.insert(0, Op::Abs(start));
            ops
        })
}

/// Replays `ops` against a fresh window and the model, asserting agreement on
/// every step, then sweeps the whole window around the final top.
fn run_trace<const B: usize>(ops: &[Op]) -> Result<(), TestCaseError> {
    let window = ReplayWindow::<B>::WINDOW;
    let mut w = ReplayWindow::<B>::new();
    let mut model = Model::new(window);

    for op in ops {
        let seq = op.resolve(model.top, window);
        let expected = model.decide(seq);

        let before = w.clone();
        prop_assert_eq!(w.check(seq), expected, "check({}) after {:?}", seq, op);
        prop_assert_eq!(&w, &before, "check({}) mutated the window", seq);

        prop_assert_eq!(w.update(seq), expected, "update({})", seq);
        if expected.is_ok() {
            model.accept(seq);
        } else {
            prop_assert_eq!(&w, &before, "failed update({}) mutated the window", seq);
        }
        prop_assert_eq!(w.highest(), model.top);
    }

    // Every bit of the final window (and a little beyond each edge) must
    // agree with the model, not just the values the trace happened to probe.
    let top = model.top.unwrap_or(0);
    let lo = top.saturating_sub(window + 2);
    let hi = top.saturating_add(2);
    let mut accepted_iter = model.accepted.range(lo..=hi).peekable();
    for seq in lo..=hi {
        let was_accepted = accepted_iter.next_if_eq(&&seq).is_some();
        let expected = model.decide_given(seq, was_accepted);
        let got = w.check(seq);
        // Plain comparison first: formatting a prop_assert message for every
        // one of ~4000 values per case would dominate the test's run time.
        if got != expected {
            prop_assert_eq!(got, expected, "sweep check({})", seq);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Clauses: RPL-001, RPL-002, RPL-003, RPL-004, RPL-005 — the record window decides every
    /// value, and reports the first reason, exactly as the literal rule.
    #[test]
    fn record_window_matches_model(ops in trace_strategy(32 * 64, RecordWindow::WINDOW)) {
        run_trace::<32>(&ops)?;
    }

    /// Clauses: RPL-001, RPL-002, RPL-003, RPL-004, RPL-005 — the same for the request-id window.
    #[test]
    fn request_id_window_matches_model(ops in trace_strategy(64 * 64, RequestIdWindow::WINDOW)) {
        run_trace::<64>(&ops)?;
    }

    /// The smallest legal ring wraps constantly, which stresses slot reuse and
    /// block clearing far more than the production sizes do.
    #[test]
    fn minimal_window_matches_model(ops in trace_strategy(2 * 64, ReplayWindow::<2>::WINDOW)) {
        run_trace::<2>(&ops)?;
    }
}

/// Clauses: RPL-006 — the usable windows are 1984 (records) and 4032 (request ids).
#[test]
fn window_sizes() {
    assert_eq!(RecordWindow::WINDOW, 31 * 64);
    assert_eq!(RequestIdWindow::WINDOW, 63 * 64);
    assert_eq!(ReplayWindow::<2>::WINDOW, 64);
}

#[test]
fn new_and_default_are_empty() {
    let w = RecordWindow::new();
    assert_eq!(w.highest(), None);
    assert_eq!(w, RecordWindow::default());
    assert_eq!(RequestIdWindow::default().highest(), None);
}

/// Clauses: RPL-003, RPL-004 — 0 is a valid first value, accepted once.
#[test]
fn first_value_zero_is_accepted_once() {
    let mut w = RecordWindow::new();
    assert_eq!(w.check(0), Ok(()));
    assert_eq!(w.update(0), Ok(()));
    assert_eq!(w.highest(), Some(0));
    assert_eq!(w.check(0), Err(ReplayError::Duplicate));
    assert_eq!(w.update(0), Err(ReplayError::Duplicate));
    assert_eq!(w.update(1), Ok(()));
    assert_eq!(w.update(0), Err(ReplayError::Duplicate));
}

#[test]
fn zero_after_larger_first_value() {
    let mut w = RecordWindow::new();
    assert_eq!(w.update(5), Ok(()));
    assert_eq!(w.update(0), Ok(()));
    assert_eq!(w.update(0), Err(ReplayError::Duplicate));
    assert_eq!(w.highest(), Some(5));
}

fn boundary<const B: usize>() {
    let window = ReplayWindow::<B>::WINDOW;
    for top in [window - 1, window, window + 1, 10_000, 10_000 + 63, 1 << 40] {
        let mut w = ReplayWindow::<B>::new();
        assert_eq!(w.update(top), Ok(()));
        if let Some(edge) = top.checked_sub(window - 1) {
            assert_eq!(w.check(edge), Ok(()), "top {top}: WINDOW-1 behind");
            assert_eq!(w.update(edge), Ok(()));
            assert_eq!(w.update(edge), Err(ReplayError::Duplicate));
        }
        if let Some(out) = top.checked_sub(window) {
            assert_eq!(
                w.check(out),
                Err(ReplayError::TooOld),
                "top {top}: WINDOW behind"
            );
            assert_eq!(w.update(out), Err(ReplayError::TooOld));
        }
    }
}

/// Clauses: RPL-002, RPL-004 — top − v = W − 1 is accepted if unseen, W is too old.
#[test]
fn boundary_window_minus_one_accepted_window_too_old() {
    boundary::<32>();
    boundary::<64>();
    boundary::<2>();
}

/// Clauses: RPL-002, RPL-005 — a value accepted before that fell out of the window is too old, not
/// a duplicate.
#[test]
fn previously_accepted_value_that_fell_out_is_too_old() {
    let mut w = RecordWindow::new();
    assert_eq!(w.update(100), Ok(()));
    assert_eq!(w.update(100 + RecordWindow::WINDOW), Ok(()));
    assert_eq!(w.check(100), Err(ReplayError::TooOld));
}

fn huge_jump_then_old<const B: usize>() {
    let window = ReplayWindow::<B>::WINDOW;
    let ring_bits = B as u64 * 64;
    for jump in [
        3000,
        10_000,
        1 << 40,
        window + 10,
        ring_bits,
        3 * ring_bits + 17,
    ] {
        let mut w = ReplayWindow::<B>::new();
        for seq in 0..10 {
            assert_eq!(w.update(seq), Ok(()));
        }
        let top = 9 + jump;
        assert_eq!(w.update(top), Ok(()));
        assert_eq!(w.highest(), Some(top));
        let expected_old = if jump >= window {
            Err(ReplayError::TooOld)
        } else {
            Err(ReplayError::Duplicate)
        };
        assert_eq!(w.check(0), expected_old, "jump {jump}");
        assert_eq!(w.check(9), expected_old, "jump {jump}");
        // Everything else in the new window below top is fresh: nothing stale
        // survived in the cleared (and, for big jumps, fully recycled) ring.
        for seq in top.saturating_sub(window - 1).max(10)..top {
            assert_eq!(w.check(seq), Ok(()), "jump {jump}: seq {seq}");
        }
        assert_eq!(w.check(top), Err(ReplayError::Duplicate));
    }
}

/// Clauses: RPL-002, RPL-004 — after any jump, values skipped inside the new window stay acceptable
/// and older ones are too old.
#[test]
fn huge_jump_then_old_value_is_too_old() {
    huge_jump_then_old::<32>();
    huge_jump_then_old::<64>();
    huge_jump_then_old::<2>();
}

#[test]
fn jump_within_ring_keeps_values_still_in_window() {
    let mut w = RecordWindow::new();
    assert_eq!(w.update(1000), Ok(()));
    assert_eq!(w.update(1001), Ok(()));
    assert_eq!(w.update(2500), Ok(()));
    assert_eq!(w.check(1000), Err(ReplayError::Duplicate));
    assert_eq!(w.check(1001), Err(ReplayError::Duplicate));
    assert_eq!(w.check(1002), Ok(()));
    assert_eq!(w.check(2499), Ok(()));
}

/// Clauses: RPL-001 — values of 2^62 and above (up to 2^64 − 1) are refused without changing the
/// window.
#[test]
fn sequence_limit() {
    let mut w = RecordWindow::new();
    assert_eq!(w.check(SEQUENCE_LIMIT), Err(ReplayError::LimitReached));
    assert_eq!(w.update(SEQUENCE_LIMIT), Err(ReplayError::LimitReached));
    assert_eq!(w.update(u64::MAX), Err(ReplayError::LimitReached));
    assert_eq!(w, RecordWindow::new(), "refused values must not mutate");

    assert_eq!(w.update(SEQUENCE_LIMIT - 1), Ok(()));
    assert_eq!(w.highest(), Some(SEQUENCE_LIMIT - 1));
    assert_eq!(w.update(SEQUENCE_LIMIT - 1), Err(ReplayError::Duplicate));
    assert_eq!(w.update(SEQUENCE_LIMIT - 2), Ok(()));
    assert_eq!(w.check(SEQUENCE_LIMIT), Err(ReplayError::LimitReached));
    assert_eq!(w.check(u64::MAX), Err(ReplayError::LimitReached));
    assert_eq!(w.update(u64::MAX), Err(ReplayError::LimitReached));
    assert_eq!(w.highest(), Some(SEQUENCE_LIMIT - 1));
}

#[test]
fn out_of_order_within_window_each_accepted_once() {
    let mut w = RecordWindow::new();
    let order = [10u64, 3, 7, 0, 9, 1, 2, 8, 4, 6, 5];
    for &seq in &order {
        assert_eq!(w.update(seq), Ok(()), "seq {seq}");
    }
    for &seq in &order {
        assert_eq!(w.check(seq), Err(ReplayError::Duplicate), "seq {seq}");
    }
    assert_eq!(w.highest(), Some(10));
}

#[test]
fn error_messages() {
    assert_eq!(ReplayError::Duplicate.to_string(), "duplicate");
    assert_eq!(ReplayError::TooOld.to_string(), "too old");
    assert_eq!(
        ReplayError::LimitReached.to_string(),
        "sequence limit reached"
    );
}
