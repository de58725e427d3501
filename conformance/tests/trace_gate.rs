//! The trace gate: every MUST clause of `spec/PROTOCOL.md` is checked by at least one
//! case (server mode, client mode, artifact or vectors), unless Appendix C lists it
//! as not yet implemented, or `conformance/uncovered.txt` lists it as known to have
//! no case yet. The allowlist only shrinks: a clause that gains a case must leave
//! it (the test names the stale entries), and a clause that loses its case fails.

use std::path::Path;
use toolwire_conformance::spec::{self, Allowlist};

#[test]
fn every_must_clause_has_a_case_or_a_shrinking_allowlist_entry() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("uncovered.txt");
    let allowlist = Allowlist::read(&path).unwrap_or_default();
    let gate = spec::gate(&spec::suite_coverage(), &allowlist);
    println!("{}", gate.summary());
    assert!(
        gate.coverage.unknown.is_empty(),
        "cases name clause ids the specification does not define: {:?}",
        gate.coverage.unknown
    );
    assert!(
        gate.uncovered.is_empty(),
        "MUST clauses without a case (add a case, or Appendix C if unimplemented): {:?}",
        gate.uncovered
    );
    assert!(
        gate.stale.is_empty(),
        "covered now, remove from conformance/uncovered.txt: {:?}",
        gate.stale
    );
    for (id, reason) in &allowlist.entries {
        assert!(!reason.is_empty(), "{id} in uncovered.txt needs a reason");
    }
}
