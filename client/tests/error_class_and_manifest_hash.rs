//! Two things the client library states about itself: which call errors are
//! retryable (ERR-003: exactly RESOURCE_EXHAUSTED, UNAVAILABLE and DEADLINE_EXCEEDED),
//! and the manifest hash of the server's signed manifest (MAN-008: SHA-256 of the
//! manifest bytes exactly as signed), over a real loopback connection.
//! The conformance suite checks both from the wire side too (`cli.retryable`,
//! `cli.manifest-hash`, through `Session::manifest_hash` and
//! `CallError::is_retryable`).

mod common;

use common::{limits, Harness};
use toolwire_client::CallError;
use toolwire_server::protocol::manifest::Manifest;
use toolwire_server::protocol::{CloseCode, ErrorCode};

#[test]
fn exactly_three_codes_are_retryable() {
    let rpc = |code: u32| CallError::Rpc {
        code: ErrorCode(code),
        message: String::new(),
        retry_after_ms: None,
    };
    let retryable: Vec<u32> = (0..=1000)
        .filter(|code| rpc(*code).is_retryable())
        .collect();
    assert_eq!(retryable, vec![4, 8, 14]);
    // The call's own deadline is DEADLINE_EXCEEDED; a lost connection is not a code.
    assert!(CallError::DeadlineExceeded.is_retryable());
    assert!(!CallError::ConnectionClosed {
        code: CloseCode::SESSION_EXPIRED
    }
    .is_retryable());
    assert!(!CallError::BadResponseSignature.is_retryable());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manifest_hash_is_sha256_of_the_signed_bytes() {
    let harness = Harness::new().await;
    let _server = harness.start_server(limits(), |builder| builder).await;
    let session = harness.connect(harness.client()).await;
    let hash = session.manifest_hash().expect("a hash after the CAP_GRANT");
    // Our server encodes its manifest canonically: signing the decoded manifest
    // again yields the very bytes it sent, so their hash is the one to expect.
    let signed = Manifest {
        server: harness.server_key.to_bytes().to_vec().into(),
        tools: session.tools(),
    }
    .sign(&harness.server_identity);
    assert_eq!(hash, Manifest::hash(&signed));
    assert_eq!(
        session.manifest_hash(),
        Some(hash),
        "stable while unchanged"
    );
}

/// A tool's own DEADLINE_EXCEEDED (a downstream timeout, say), answered long before
/// the call's deadline, stays the server's answer: only the call's deadline passing
/// is [`CallError::DeadlineExceeded`], whichever side noticed it first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tools_own_deadline_error_is_not_the_calls_deadline() {
    let harness = Harness::new().await;
    let _server = harness
        .start_server(limits(), |builder| {
            builder.tool(toolwire_server::Tool::new(
                "downstream",
                "Fails at once: its backend timed out.",
                serde_json::json!({"type": "object"}),
                |_, _| async {
                    Err(toolwire_server::ToolError::new(
                        ErrorCode::DEADLINE_EXCEEDED,
                        "the backend timed out",
                    ))
                },
            ))
        })
        .await;
    let session = harness.connect(harness.client()).await;
    let outcome = session
        .call_with(
            "downstream",
            &serde_json::json!({}),
            toolwire_client::CallOptions::with_timeout(std::time::Duration::from_secs(30)),
        )
        .await;
    match outcome {
        Err(CallError::Rpc { code, .. }) => assert_eq!(code, ErrorCode::DEADLINE_EXCEEDED),
        other => panic!("expected the tool's ERROR DEADLINE_EXCEEDED, got {other:?}"),
    }
}
