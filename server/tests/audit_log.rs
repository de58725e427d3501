//! The server's audit log (ENV-009, AUTHZ-024, AUD-001..AUD-012), over real loopback
//! sockets: a served session leaves a log that `verify_log` accepts with only the
//! server's public key, holding one entry per decision with the client's request
//! signature and the server's response signature, both checkable independently; the
//! log ends with a signed head at shutdown; a restarted server continues the chain;
//! tampering is detected (one check per kind: the protocol crate's tests cover the
//! verifier in depth); a log that cannot be written stops the service (fail closed).

mod common;

use common::{echo_tool, within, Probe, TestServer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use toolwire_server::protocol::audit::{verify_log, AuditErrorKind, AuditSummary};
use toolwire_server::protocol::envelope::{RequestFields, ResponseFields};
use toolwire_server::protocol::message::Cancel;
use toolwire_server::protocol::{CloseCode, ErrorCode, Identity, IdentityKey, Message};
use toolwire_server::{AuditLogError, AuditOptions, BuildError, Server};

/// A log file in the temporary folder, removed when dropped.
struct LogFile(PathBuf);

impl LogFile {
    fn new(name: &str) -> Self {
        let mut random = [0u8; 8];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut random);
        Self(std::env::temp_dir().join(format!("toolwire-audit-{name}-{}.jsonl", hex(&random))))
    }

    fn text(&self) -> String {
        std::fs::read_to_string(&self.0).expect("the audit log exists")
    }
}

impl Drop for LogFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|index| u8::from_str_radix(&text[index..index + 2], 16).expect("hex"))
        .collect()
}

fn entries(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|line| serde_json::from_str(line).expect("JSON line"))
        .collect()
}

/// The call entry of `request_id` with this decision.
fn entry<'a>(
    entries: &'a [serde_json::Value],
    request_id: u64,
    decision: &str,
) -> &'a serde_json::Value {
    entries
        .iter()
        .find(|entry| entry["request_id"] == request_id && entry["decision"] == decision)
        .unwrap_or_else(|| panic!("no entry for {request_id} {decision}: {entries:#?}"))
}

/// A session that makes each kind of call, then shuts the server down. Returns the
/// log's text, the server and client keys and the session id.
async fn served_log(log: &LogFile) -> (String, IdentityKey, IdentityKey, [u8; 32]) {
    let server = TestServer::start_with(|builder| builder.audit_log(&log.0)).await;
    let (mut raw, _) = server.raw_session(&server.agent, Vec::new()).await;
    let hello = serde_json::json!({"text": "hi"});

    // 1: executed and answered.
    raw.send(Message::Request(raw.request(1, "echo", &hello)))
        .await;
    raw.expect_response(1).await;
    // 2: refused at step 2 (not granted): the signature was never checked.
    raw.send(Message::Request(raw.request(2, "nope", &hello)))
        .await;
    assert_eq!(
        raw.expect_error(2).await.error_code(),
        ErrorCode::PERMISSION_DENIED
    );
    // 3: refused at step 6 (arguments): the signature verified before.
    raw.send(Message::Request(raw.request(
        3,
        "echo",
        &serde_json::json!({}),
    )))
    .await;
    assert_eq!(
        raw.expect_error(3).await.error_code(),
        ErrorCode::INVALID_ARGUMENT
    );
    // 4: refused at step 5: a signature that does not verify is not kept.
    let mut forged = raw.request(4, "echo", &hello);
    let mut signature = forged.signature.take().expect("signed").into_vec();
    signature[0] ^= 1;
    forged.signature = Some(signature.into());
    raw.send(Message::Request(forged)).await;
    assert_eq!(
        raw.expect_error(4).await.error_code(),
        ErrorCode::UNAUTHENTICATED
    );
    // 5: executed, then cancelled.
    raw.send(Message::Request(raw.request(
        5,
        "slow",
        &serde_json::json!({}),
    )))
    .await;
    server.probes.slow.wait_runs(1).await;
    raw.send(Message::Cancel(Cancel { id: 5 })).await;
    assert_eq!(raw.expect_error(5).await.error_code(), ErrorCode::CANCELLED);
    // 1 again: answered from the at-most-once cache, signed afresh.
    raw.send(Message::Request(raw.request(1, "echo", &hello)))
        .await;
    raw.expect_response(1).await;
    // 6: streamed, then answered.
    raw.send(Message::Request(raw.request(
        6,
        "ticker",
        &serde_json::json!({"count": 2}),
    )))
    .await;
    for _ in 0..2 {
        assert!(matches!(raw.expect_message().await, Message::StreamItem(_)));
    }
    raw.expect_response(6).await;

    let report = within("shutdown", server.server.shutdown(Duration::from_secs(2)))
        .await
        .expect("the audit log completes");
    let stats = report.audit.expect("audit stats");
    assert_eq!((stats.calls, stats.heads, stats.lost), (7, 1, 0));
    assert_eq!(stats.first_seq, 0);
    let closed = raw.expect_close().await;
    assert_eq!(closed.record, Some(CloseCode::GOING_AWAY));
    (
        log.text(),
        server.server_key,
        server.agent.public_key(),
        raw.session_id(),
    )
}

/// AUD-001..AUD-007, AUD-009, ENV-009, AUTHZ-024: one entry per decision, in a log
/// that verifies with the server key alone and ends with the head of the shutdown;
/// request signatures appear only when the pipeline verified them (AUD-005); every
/// kept signature verifies on its own under the client's or the server's key.
#[tokio::test]
async fn a_served_session_leaves_a_log_that_verifies_with_the_server_key() {
    let log = LogFile::new("served");
    let (text, server_key, client_key, session_id) = served_log(&log).await;

    let summary: AuditSummary = verify_log(&text, &server_key).expect("the log verifies");
    assert_eq!((summary.entries, summary.calls, summary.heads), (8, 7, 1));
    assert_eq!(
        summary.unsigned_tail, 0,
        "the final head covers every entry"
    );
    // Requests 1, 3, 5, 1 (again) and 6; responses to 1, 1 (again) and 6.
    assert_eq!(summary.signatures_verified, 8);
    assert_eq!(summary.signatures_unchecked, 0);
    assert!(text.ends_with('\n'));

    let entries = entries(&text);
    assert_eq!(entries.last().expect("entries")["kind"], "head");
    assert_eq!(
        entries.last().expect("entries")["key"],
        server_key.to_string()
    );
    for call in entries.iter().filter(|entry| entry["kind"] == "call") {
        assert_eq!(call["session"], hex(&session_id));
        assert_eq!(call["client"], client_key.to_string());
    }

    let executed = entry(&entries, 1, "execute");
    assert!(executed["response"].is_object());
    assert!(executed["request"]["sig"].is_string());
    let denied = entry(&entries, 2, "refused:PERMISSION_DENIED");
    assert_eq!(denied["refused_at"], "granted");
    assert!(denied["request"]["sig"].is_null());
    let invalid = entry(&entries, 3, "refused:INVALID_ARGUMENT");
    assert_eq!(invalid["refused_at"], "arguments");
    assert!(invalid["request"]["sig"].is_string());
    let forged = entry(&entries, 4, "refused:UNAUTHENTICATED");
    assert_eq!(forged["refused_at"], "signature");
    assert!(forged["request"]["sig"].is_null());
    let cancelled = entry(&entries, 5, "execute");
    assert!(cancelled["response"].is_null());
    assert_eq!(cancelled["detail"], "outcome: CANCELLED by the client");
    let cached = entry(&entries, 1, "answered_from_cache");
    assert!(cached["response"].is_object());
    assert!(entry(&entries, 6, "execute")["response"].is_object());

    // Each kept signature verifies on its own: the client's over what it asked, the
    // server's over what it answered to exactly that request.
    let mut checked = 0;
    for call in entries.iter().filter(|entry| entry["kind"] == "call") {
        let request = &call["request"];
        let args = unhex(request["args"].as_str().expect("arguments inlined"));
        let fields = RequestFields {
            session_id: &session_id,
            request_id: call["request_id"].as_u64().expect("id"),
            tool: call["tool"].as_str().expect("tool"),
            args: &args,
            grant_id: request["grant_id"].as_str().expect("grant id"),
        };
        assert_eq!(hex(&fields.hash()), request["hash"]);
        if let Some(signature) = request["sig"].as_str() {
            fields
                .verify(&client_key, &unhex(signature))
                .expect("the client's signature verifies");
            checked += 1;
        }
        if let Some(response) = call["response"].as_object() {
            let result = unhex(response["result"].as_str().expect("result inlined"));
            let signature = unhex(response["sig"].as_str().expect("signed response"));
            assert_eq!(response["request_hash"], request["hash"]);
            ResponseFields {
                session_id: &session_id,
                request_id: fields.request_id,
                request_hash: &fields.hash(),
                result: &result,
            }
            .verify(&server_key, &signature)
            .expect("the server's signature verifies");
            checked += 1;
        }
    }
    assert_eq!(checked, 8);

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&log.0).expect("log").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "mode {mode:o}");
    }
}

/// AUD-003, AUD-007, AUD-009: an edit, a deletion, a reordering and a forged head
/// are each reported at the right line.
#[tokio::test]
async fn tampering_is_reported_at_the_first_bad_line() {
    let log = LogFile::new("tamper");
    let (text, server_key, _, _) = served_log(&log).await;
    let lines: Vec<&str> = text.lines().collect();
    let rejoin = |lines: &[String]| {
        lines
            .iter()
            .map(|line| format!("{line}\n"))
            .collect::<String>()
    };
    let owned: Vec<String> = lines.iter().map(|line| (*line).to_owned()).collect();
    let failure = |tampered: &[String]| {
        let error = verify_log(&rejoin(tampered), &server_key).expect_err("tampering detected");
        (error.line, error.kind)
    };

    // One byte of the arguments of the first call: its request hash no longer matches.
    let mut edited = owned.clone();
    let args = entries(&text)[0]["request"]["args"]
        .as_str()
        .expect("args")
        .to_owned();
    let mut changed = args.clone().into_bytes();
    changed[1] = if changed[1] == b'0' { b'1' } else { b'0' };
    edited[0] = edited[0].replacen(&args, std::str::from_utf8(&changed).expect("hex"), 1);
    assert_eq!(failure(&edited), (1, AuditErrorKind::BadRequestSignature));

    // One byte of a field no signature covers (the decision's time): the next line's
    // `prev` no longer matches.
    let mut edited = owned.clone();
    edited[1] = edited[1].replacen("\"time\":\"2", "\"time\":\"1", 1);
    assert_eq!(failure(&edited), (3, AuditErrorKind::BrokenChain));

    // A deleted line.
    let mut deleted = owned.clone();
    deleted.remove(2);
    assert_eq!(failure(&deleted), (3, AuditErrorKind::BrokenChain));

    // Two lines swapped.
    let mut swapped = owned.clone();
    swapped.swap(3, 4);
    assert_eq!(failure(&swapped), (4, AuditErrorKind::BrokenChain));

    // The head signed by someone else.
    let mut forged = owned.clone();
    let last = forged.len() - 1;
    let sig_at = forged[last].find("\"sig\":\"").expect("head sig") + 7;
    let flipped = if &forged[last][sig_at..=sig_at] == "0" {
        "1"
    } else {
        "0"
    };
    forged[last].replace_range(sig_at..=sig_at, flipped);
    assert_eq!(
        failure(&forged),
        (last + 1, AuditErrorKind::BadHeadSignature)
    );

    // A crash mid-write is not tampering.
    let torn = format!("{text}{{\"seq\":8,");
    let error = verify_log(&torn, &server_key).expect_err("torn");
    assert_eq!(
        (error.line, error.kind),
        (lines.len() + 1, AuditErrorKind::TornLastLine)
    );
}

/// A server whose only client is `agent`, not serving (building and shutting down
/// is enough to write heads).
fn offline_server(identity: &Identity, path: &Path) -> Result<Server, BuildError> {
    let agent = Identity::from_seed(&[0x41; 32]);
    Server::builder(identity.clone(), "ws://127.0.0.1:1/toolwire")
        .allow_client(agent.public_key())
        .tool(echo_tool(
            "Returns its arguments.",
            &Arc::new(Probe::default()),
        ))
        .audit_log(path)
        .build()
}

/// AUD-008: a restarted server cuts a torn last line and continues the chain; a
/// server with another identity refuses to append to the file.
#[tokio::test]
async fn a_restarted_server_continues_the_chain_after_cutting_a_torn_line() {
    let log = LogFile::new("restart");
    let identity = Identity::from_seed(&[0x53; 32]);

    let first = offline_server(&identity, &log.0).expect("a new log");
    let report = within("shutdown", first.shutdown(Duration::ZERO))
        .await
        .expect("final head");
    assert_eq!(report.audit.expect("stats").heads, 1);

    // A crash in the middle of the next write.
    let mut text = log.text();
    text.push_str("{\"seq\":1,\"time\":");
    std::fs::write(&log.0, &text).expect("write");
    assert_eq!(
        verify_log(&text, &identity.public_key())
            .expect_err("torn")
            .kind,
        AuditErrorKind::TornLastLine
    );

    let second = offline_server(&identity, &log.0).expect("the log continues");
    let stats = within("shutdown", second.shutdown(Duration::ZERO))
        .await
        .expect("final head")
        .audit
        .expect("stats");
    assert_eq!(stats.first_seq, 1);
    assert_eq!(stats.torn_bytes_cut, 16);
    let summary = verify_log(&log.text(), &identity.public_key()).expect("one chain");
    assert_eq!((summary.entries, summary.heads), (2, 2));

    // Another identity may not continue this chain (it must start a new file).
    let stranger = Identity::from_seed(&[0x54; 32]);
    match offline_server(&stranger, &log.0) {
        Err(BuildError::Audit(AuditLogError::Tail { kind, .. })) => {
            assert_eq!(kind, AuditErrorKind::BadHeadSignature)
        }
        other => panic!("expected a refused tail, got {other:?}"),
    }
    assert_eq!(
        verify_log(&log.text(), &identity.public_key())
            .expect("untouched")
            .entries,
        2
    );
}

/// Backpressure (AUD-004): with room for one entry in the writer's queue, 50
/// concurrent calls still leave 50 entries; none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_slows_reading_and_loses_no_entry() {
    let log = LogFile::new("queue");
    let mut options = AuditOptions::default();
    options.queue = 1;
    options.head_every = 7;
    let server = TestServer::start_with(|builder| builder.audit_log_with(&log.0, options)).await;
    let session = Arc::new(server.agent_session().await);
    let calls: Vec<_> = (0..50)
        .map(|index| {
            let session = session.clone();
            tokio::spawn(async move {
                session
                    .call(
                        "echo",
                        &serde_json::json!({ "text": format!("call {index}") }),
                    )
                    .await
            })
        })
        .collect();
    for call in calls {
        within("call", call)
            .await
            .expect("task")
            .expect("call answered");
    }
    let stats = within("shutdown", server.server.shutdown(Duration::from_secs(2)))
        .await
        .expect("audit log completes")
        .audit
        .expect("stats");
    assert_eq!((stats.calls, stats.lost), (50, 0));
    let summary = verify_log(&log.text(), &server.server_key).expect("verifies");
    assert_eq!(summary.calls, 50);
    // Heads every 7 entries (AUD-007, AUD-012), plus the final one.
    assert_eq!(summary.heads, 50 / 7 + 1);
    assert_eq!(summary.unsigned_tail, 0);
}

/// Fail closed: when the log cannot be written (here: a full device), the server
/// closes its connections with INTERNAL_ERROR (1011) and serves no further call;
/// shutdown reports the incomplete log.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_log_that_cannot_be_written_stops_the_service() {
    let server = TestServer::start_with(|builder| builder.audit_log("/dev/full")).await;
    let session = server.agent_session().await;
    // The first call is answered; writing its entry fails.
    within(
        "call",
        session.call("echo", &serde_json::json!({"text": "first"})),
    )
    .await
    .expect("answered before the write failed");
    within("connection closed", async {
        while session.close_code().is_none() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(session.close_code(), Some(CloseCode::INTERNAL_ERROR));
    let refused = within(
        "call",
        session.call("echo", &serde_json::json!({"text": "second"})),
    )
    .await;
    assert!(refused.is_err(), "{refused:?}");
    // New connections are closed before their handshake.
    let mut socket = common::raw_socket(&server.url).await;
    assert_eq!(common::close_frame_code(&mut socket).await, Some(1011));

    match within("shutdown", server.server.shutdown(Duration::ZERO)).await {
        Err(AuditLogError::Stopped { message, .. }) => {
            assert!(message.contains("cannot write"), "{message}")
        }
        other => panic!("expected an incomplete log, got {other:?}"),
    }
}
