//! RPC error codes (spec section 15): the code table, unknown codes, and which codes
//! are retryable.

use toolwire_protocol::amo::{Admission, CachedOutcome};
use toolwire_protocol::message::ErrorMessage;
use toolwire_protocol::{ErrorCode, Message};

/// The `(code, name, retryable)` rows of the table of spec section 15.
fn spec_table() -> Vec<(u32, String, bool)> {
    let spec = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../spec/PROTOCOL.md"))
        .expect("the spec is readable");
    let section = spec
        .split("## 15. Error codes (ERR)")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("section 15");
    section
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            // | code | name | meaning | produced by | retryable |
            let code = cells.get(1)?.parse::<u32>().ok()?;
            let retryable = match *cells.get(5)? {
                "yes" => true,
                "no" => false,
                other => panic!("retryable column of code {code}: {other:?}"),
            };
            Some((code, cells.get(2)?.to_string(), retryable))
        })
        .collect()
}

/// Clauses: ERR-001 — the codes the implementation defines, and can therefore send,
/// are exactly the rows of the spec's table (same numbers, same names); every code
/// the pipeline and the at-most-once table refuse with is among them.
#[test]
fn the_defined_codes_are_exactly_the_spec_table() {
    let table = spec_table();
    assert_eq!(table.len(), 15, "{table:?}");
    let defined: Vec<(u32, String)> = ErrorCode::ALL
        .iter()
        .map(|code| (code.0, code.name().expect("named").to_owned()))
        .collect();
    let specified: Vec<(u32, String)> = table
        .iter()
        .map(|(code, name, _)| (*code, name.clone()))
        .collect();
    assert_eq!(defined, specified);
    for unassigned in [0, 6, 10, 11, 12, 15, 17, 99, 104] {
        assert_eq!(ErrorCode(unassigned).name(), None, "{unassigned}");
    }
    let produced = [
        Admission::Stale.error_code(),
        Admission::Unavailable.error_code(),
        Admission::IdOutOfRange.error_code(),
        Admission::Overloaded.error_code(),
        CachedOutcome::cancelled()
            .error_message(1)
            .map(|m| m.error_code()),
    ];
    for code in produced {
        let code = code.expect("a refusal code");
        assert!(ErrorCode::ALL.contains(&code), "{code}");
    }
}

/// Clauses: ERR-002 — an ERROR with a code this version does not know decodes, keeps
/// its numeric value through decoding and re-encoding, and is not retryable.
#[test]
fn unknown_codes_are_accepted_kept_and_not_retryable() {
    for unknown in [6u32, 42, 104, 4242, u32::MAX] {
        let message = Message::Error(ErrorMessage {
            id: Some(9),
            code: unknown,
            message: "from a later version".into(),
            retry_after_ms: None,
        });
        let decoded = Message::decode(&message.encode()).expect("an unknown code decodes");
        let Message::Error(error) = &decoded else {
            panic!("decoded {decoded:?}");
        };
        assert_eq!(error.code, unknown);
        assert_eq!(error.error_code(), ErrorCode(unknown));
        assert_eq!(error.error_code().name(), None);
        assert!(!error.error_code().is_retryable());
        assert_eq!(decoded.encode(), message.encode());
    }
}

/// Clauses: ERR-003 — exactly RESOURCE_EXHAUSTED, UNAVAILABLE and DEADLINE_EXCEEDED
/// are retryable, as the spec's table says.
#[test]
fn exactly_the_three_transient_codes_are_retryable() {
    for (code, name, retryable) in spec_table() {
        assert_eq!(ErrorCode(code).is_retryable(), retryable, "{name} ({code})");
    }
    let retryable: Vec<ErrorCode> = (0..=1000)
        .map(ErrorCode)
        .filter(|code| code.is_retryable())
        .collect();
    assert_eq!(
        retryable,
        [
            ErrorCode::DEADLINE_EXCEEDED,
            ErrorCode::RESOURCE_EXHAUSTED,
            ErrorCode::UNAVAILABLE
        ]
    );
}
