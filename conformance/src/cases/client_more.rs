//! Client-mode cases for the client clauses that need more of the shim contract than
//! a call: the key text parser (ID-007), operator certificates (`--trust-operator`,
//! ID-011, ID-014), keepalive and session lifetime (`--hold-ms`, LIFE-003, LIFE-006,
//! LIM-007), and what the client library states about itself in its report: the
//! retryable classification (`retryable`, ERR-003) and the manifest hash
//! (`manifest_hash`, MAN-008).
//!
//! Each case compares what the client did on the wire, or what it reported, with the
//! clause: a client that accepts a malformed key text, trusts a certificate it must
//! refuse, never PINGs, keeps a session past its lifetime, misclassifies a code or
//! hashes a re-encoded manifest FAILs.

use crate::client::{ClientCase, ClientRun, ShimOutcome};
use crate::peer::{
    self, await_raw_close, record, Header, Keys, Responder, ServerHelloOut, Session, Socket,
    HEADER_LEN, SEALED, SUBPROTOCOL,
};
use crate::{Case, CaseResult, Verdict};
use sha2::{Digest as _, Sha256};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use toolwire_protocol::manifest::{Manifest, ToolDescriptor};
use toolwire_protocol::message::{
    CallLimits, CapGrant, ErrorMessage, GrantedTool, Request, SignedManifest,
};
use toolwire_protocol::{ErrorCode, Identity, IdentityKey, Message};

macro_rules! case {
    ($id:literal, [$($clause:literal),* $(,)?], $description:literal, $run:expr) => {
        Case {
            id: $id,
            clauses: &[$($clause),*],
            description: $description,
            run: $run,
        }
    };
}

/// The cases of this file, in run order.
pub(super) fn cases() -> Vec<ClientCase> {
    vec![
        // ---- 3. Key text (ID-007) ----------------------------------------------
        case!("cli.key-text.canonical", ["ID-007"],
            "--server-key in its canonical text form (43 base64url characters, no padding): the client accepts it, connects and calls.",
            |run| Box::pin(key_text_canonical(run))),
        case!("cli.key-text.44-chars", ["ID-007"],
            "--server-key with one base64url character too many (44): the client refuses it and makes no connection.",
            |run| Box::pin(key_text_refused(run, KeyText::TooLong))),
        case!("cli.key-text.42-chars", ["ID-007"],
            "--server-key missing its last character (42): the client refuses it and makes no connection.",
            |run| Box::pin(key_text_refused(run, KeyText::TooShort))),
        case!("cli.key-text.padding", ["ID-007"],
            "--server-key with `=` padding (the padded base64url form of the same key): the client refuses it and makes no connection.",
            |run| Box::pin(key_text_refused(run, KeyText::Padded))),
        case!("cli.key-text.unused-bits", ["ID-007"],
            "--server-key whose last character has a non-zero unused low bit (it decodes, leniently, to the very key the server proves): the client refuses it and makes no connection.",
            |run| Box::pin(key_text_refused(run, KeyText::UnusedBits))),
        case!("cli.key-text.bad-char", ["ID-007"],
            "--server-key with a character outside base64url (`*`): the client refuses it and makes no connection.",
            |run| Box::pin(key_text_refused(run, KeyText::BadChar))),
        // ---- 3.1 Server certificates ------------------------------------------
        case!("cli.cert.valid", ["ID-011", "ID-012", "ID-013", "ID-003"],
            "A client trusting an operator key (--trust-operator), a server presenting a certificate of that operator for its key: the client accepts the server, calls and delivers the result.",
            |run| Box::pin(cert_accepted(run, true))),
        case!("cli.cert.pinned-ignores", ["ID-011"],
            "A client pinning the server key, a server presenting an expired certificate of an unknown operator: the certificate is ignored, the call completes.",
            |run| Box::pin(cert_accepted(run, false))),
        case!("cli.cert.absent", ["ID-011", "ID-014", "HS-015"],
            "A client trusting an operator key, a server presenting no certificate: close frame 4001 AUTH_FAILED, no record 3, no REQUEST.",
            |run| Box::pin(cert_refused(run, CertFault::Absent))),
        case!("cli.cert.other-operator", ["ID-011", "ID-013", "ID-014", "HS-015"],
            "A certificate issued and signed by an operator the client does not trust: close frame 4001, no record 3.",
            |run| Box::pin(cert_refused(run, CertFault::OtherOperator))),
        case!("cli.cert.forged", ["ID-011", "ID-013", "ID-014", "ID-004"],
            "A certificate naming the trusted operator as `iss` but signed by another key: close frame 4001, no record 3.",
            |run| Box::pin(cert_refused(run, CertFault::Forged))),
        case!("cli.cert.other-server", ["ID-011", "ID-013", "ID-014"],
            "A certificate of the trusted operator for another server key (`sub`): close frame 4001, no record 3.",
            |run| Box::pin(cert_refused(run, CertFault::OtherServer))),
        case!("cli.cert.expired", ["ID-011", "ID-013", "ID-014"],
            "A certificate of the trusted operator for this server that expired in 2001: close frame 4001, no record 3.",
            |run| Box::pin(cert_refused(run, CertFault::Expired))),
        case!("cli.cert.grant-assertion", ["ID-012", "ID-014"],
            "A certificate signed with the grant implicit assertion (`toolwire/1 grant`) instead of `toolwire/1 server certificate`: close frame 4001, no record 3.",
            |run| Box::pin(cert_refused(run, CertFault::GrantAssertion))),
        // ---- 8.2 Lifetimes and keepalive --------------------------------------
        case!("cli.session-lifetime", ["LIFE-003"],
            "The server announces session_lifetime_ms 2000 and serves no renewal; the client, asked to stay connected (--hold-ms), closes the session with CLOSE 4006 SESSION_EXPIRED and close frame 4006 within 1.5 s of its lifetime.",
            |run| Box::pin(session_lifetime(run))),
        case!("cli.keepalive", ["LIFE-006", "LIM-007", "LIFE-007"],
            "A client that stays connected without calling (--calls=0 --hold-ms): its first record after the handshake is a PING, sent between 28 and 35 s after record 3 (keepalive 30 s by default); its nonce SHOULD be 0 (LIFE-007, NON_STRICT otherwise). Slow: about 30 s.",
            |run| Box::pin(keepalive(run))),
        // ---- 11. Manifest hash ------------------------------------------------
        case!("cli.manifest-hash", ["MAN-008", "MAN-004"],
            "A CAP_GRANT whose manifest bytes are valid but not the shortest encoding (a map16 header), correctly signed: the client accepts it and reports as manifest hash SHA-256 of those bytes exactly, not of a re-encoding.",
            |run| Box::pin(manifest_hash(run))),
        // ---- 15. Error codes --------------------------------------------------
        case!("cli.retryable", ["ERR-003"],
            "A call answered with each ERROR code of section 15 in turn (one connection each): the client library classifies exactly RESOURCE_EXHAUSTED (8), UNAVAILABLE (14) and DEADLINE_EXCEEDED (4) as retryable.",
            |run| Box::pin(retryable(run))),
    ]
}

// =====================================================================================
// Helpers
// =====================================================================================

fn echo_tool() -> ToolDescriptor {
    ToolDescriptor {
        name: crate::client::TOOL.to_owned(),
        description: "Returns its arguments.".to_owned(),
        input_schema: "{\"type\":\"object\"}".to_owned(),
        output_schema: String::new(),
    }
}

fn grant_with(manifest: SignedManifest) -> CapGrant {
    let tool = echo_tool();
    CapGrant {
        granted: vec![GrantedTool {
            name: tool.name.clone(),
            digest: tool.digest().to_vec().into(),
        }],
        limits: CallLimits {
            rate_per_sec: 100,
            burst: 200,
            max_in_flight: 64,
        },
        expires_at_ms: None,
        policy_version: 1,
        manifest,
    }
}

fn cap_grant(server: &Identity) -> CapGrant {
    grant_with(
        Manifest {
            server: server.public_key().to_bytes().to_vec().into(),
            tools: vec![echo_tool()],
        }
        .sign(server),
    )
}

/// `{"n": 5}` with 5 as a uint32: what the suite answers.
fn result_bytes() -> Vec<u8> {
    vec![0x81, 0xa1, b'n', 0xce, 0, 0, 0, 5]
}

async fn join(client: JoinHandle<ShimOutcome>) -> ShimOutcome {
    client.await.unwrap_or_else(|error| ShimOutcome {
        detail: format!("shim task failed: {error}"),
        ..ShimOutcome::default()
    })
}

fn unimplemented(outcome: &ShimOutcome) -> Option<CaseResult> {
    outcome.unimplemented().then(|| {
        CaseResult::new(
            Verdict::Unimplemented,
            "",
            outcome.describe(),
            "the shim exited 89 (unimplemented)",
        )
    })
}

async fn precondition_failed(client: JoinHandle<ShimOutcome>, error: String) -> CaseResult {
    let outcome = join(client).await;
    if let Some(result) = unimplemented(&outcome) {
        return result;
    }
    CaseResult::check(
        false,
        "a well-formed handshake and first REQUEST",
        format!("{error}; client: {}", outcome.describe()),
    )
}

/// A handshake the suite served as the server, before any sealed record.
struct Served {
    socket: Socket,
    keys: Keys,
    client_key: IdentityKey,
    /// When record 3 arrived: the client's last record so far.
    record3_at: Instant,
}

/// Serves the handshake with the ServerHello `hello` made of the conforming one.
async fn serve_handshake(
    run: &ClientRun,
    hello: impl FnOnce(&mut ServerHelloOut),
) -> Result<Served, String> {
    let step = run.options.step;
    let (mut socket, _) = peer::accept(&run.listener, Some(SUBPROTOCOL), step)
        .await
        .map_err(|e| e.to_string())?;
    let record1 = peer::next_binary(&mut socket, step)
        .await
        .ok_or("no record 1")?;
    let mut responder = Responder::new(run.server.clone(), &run.url).map_err(|e| e.to_string())?;
    responder
        .read_record1(&record1)
        .map_err(|e| e.to_string())?;
    let mut server_hello = responder.server_hello();
    hello(&mut server_hello);
    let payload = rmp_serde::to_vec_named(&server_hello).map_err(|e| e.to_string())?;
    let record2 = responder.record2(&payload).map_err(|e| e.to_string())?;
    if !peer::send_binary(&mut socket, record2, step).await {
        return Err("could not send record 2".into());
    }
    let record3 = peer::next_binary(&mut socket, step)
        .await
        .ok_or("no record 3")?;
    let record3_at = Instant::now();
    let client_hello = responder
        .read_record3(&record3)
        .map_err(|e| e.to_string())?;
    let client_key = IdentityKey::from_slice(&client_hello.identity)
        .map_err(|e| format!("ClientHello.identity: {e:?}"))?;
    let keys = responder.finish().map_err(|e| e.to_string())?;
    Ok(Served {
        socket,
        keys,
        client_key,
        record3_at,
    })
}

fn session_of(run: &ClientRun, served: Served) -> Session {
    Session::from_server_keys(
        served.socket,
        run.server.clone(),
        served.client_key,
        &served.keys,
        run.options.step,
    )
}

async fn next_request(session: &mut Session) -> Result<Request, String> {
    loop {
        match session.next().await {
            Ok(Message::Request(request)) => return Ok(request),
            Ok(_) => {}
            Err(ending) => return Err(format!("no REQUEST: {ending}")),
        }
    }
}

/// Handshake with `hello`, CAP_GRANT `grant`, the first REQUEST answered with the
/// suite's result, then the client's close; judges that the result was delivered.
async fn serve_call(
    run: &ClientRun,
    client: JoinHandle<ShimOutcome>,
    hello: impl FnOnce(&mut ServerHelloOut),
    grant: CapGrant,
    expected: &str,
) -> Result<ShimOutcome, CaseResult> {
    let served = match serve_handshake(run, hello).await {
        Ok(served) => served,
        Err(error) => return Err(precondition_failed(client, error).await),
    };
    let mut session = session_of(run, served);
    session.send(&Message::CapGrant(grant)).await;
    let request = match next_request(&mut session).await {
        Ok(request) => request,
        Err(error) => return Err(precondition_failed(client, error).await),
    };
    let response = session.response(&request, &result_bytes());
    session.send(&Message::Response(response)).await;
    let ending = session.await_close(run.options.step).await;
    let outcome = join(client).await;
    if let Some(result) = unimplemented(&outcome) {
        return Err(result);
    }
    let delivered = outcome
        .report
        .as_ref()
        .and_then(|r| r.result_hex.clone())
        .is_some_and(|hex| hex == hex::encode(result_bytes()));
    if outcome.exit != Some(0) || !delivered {
        return Err(CaseResult::check(
            false,
            expected,
            format!(
                "the result was not delivered; wire: {ending}; client: {}",
                outcome.describe()
            ),
        ));
    }
    Ok(outcome)
}

// =====================================================================================
// ID-007: key text
// =====================================================================================

#[derive(Clone, Copy)]
enum KeyText {
    TooLong,
    TooShort,
    Padded,
    UnusedBits,
    BadChar,
}

const BASE64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// The malformed text of `key` for `variant`.
fn malformed(key: &IdentityKey, variant: KeyText) -> String {
    let text = key.to_string();
    match variant {
        KeyText::TooLong => format!("{text}A"),
        KeyText::TooShort => text[..42].to_owned(),
        KeyText::Padded => format!("{text}="),
        KeyText::UnusedBits => {
            // 32 bytes are 256 bits; 43 characters carry 258: the last character's
            // two low bits are unused and zero in the canonical text.
            let last = text.as_bytes()[42];
            let index = BASE64URL.iter().position(|c| *c == last).unwrap_or(0);
            let flipped = BASE64URL[(index | 1) % 64] as char;
            format!("{}{flipped}", &text[..42])
        }
        KeyText::BadChar => format!("{}*{}", &text[..21], &text[22..]),
    }
}

async fn key_text_refused(run: Arc<ClientRun>, variant: KeyText) -> CaseResult {
    let key = run.server.public_key();
    let text = malformed(&key, variant);
    if text.parse::<IdentityKey>().is_ok() {
        return CaseResult::harness_error(format!("the malformed text {text} parses"));
    }
    let mut invocation = run.invocation(key, 1);
    invocation.server_key_text = Some(text.clone());
    let mut client = run.start_with(invocation);
    let expected = format!("`{text}` refused: no connection, exit non-zero, no result");
    let connected = tokio::select! {
        joined = &mut client => {
            let outcome = joined.unwrap_or_else(|error| ShimOutcome {
                detail: format!("shim task failed: {error}"),
                ..ShimOutcome::default()
            });
            // A connection made before the shim exited waits in the listener's queue.
            let late = tokio::time::timeout(run.options.quiet, run.listener.accept()).await;
            if late.is_err() {
                if let Some(result) = unimplemented(&outcome) {
                    return result;
                }
                let report_ok = outcome.report.as_ref().is_none_or(|r| {
                    r.outcome == "error" && r.error.as_deref().is_none_or(|e| e == "bad_key")
                });
                let ok = !outcome.delivered() && outcome.exit.is_some() && report_ok;
                return CaseResult::check(
                    ok,
                    expected,
                    format!("no connection; client: {}", outcome.describe()),
                );
            }
            Some(outcome)
        }
        _ = run.listener.accept() => None,
    };
    client.abort();
    CaseResult::check(
        false,
        expected,
        format!(
            "the client ACCEPTED the key text and connected{}",
            connected.map_or_else(String::new, |o| format!("; client: {}", o.describe()))
        ),
    )
}

async fn key_text_canonical(run: Arc<ClientRun>) -> CaseResult {
    let key = run.server.public_key();
    let mut invocation = run.invocation(key, 1);
    invocation.server_key_text = Some(key.to_string());
    let client = run.start_with(invocation);
    let expected = "the canonical text accepted: the call completes";
    match serve_call(&run, client, |_| {}, cap_grant(&run.server), expected).await {
        Ok(outcome) => CaseResult::check(true, expected, outcome.describe()),
        Err(result) => result,
    }
}

// =====================================================================================
// 3.1 Server certificates
// =====================================================================================

const CERTIFICATE_ASSERTION: &[u8] = b"toolwire/1 server certificate";

fn certificate(
    signer: &Identity,
    iss: &IdentityKey,
    sub: &IdentityKey,
    exp: &str,
    assertion: &[u8],
) -> String {
    let claims = serde_json::json!({
        "iss": iss.to_string(),
        "sub": sub.to_string(),
        "iat": "2001-01-01T00:00:00Z",
        "exp": exp,
    });
    toolwire_protocol::paseto::sign_v4_public(
        signer.signing_key(),
        claims.to_string().as_bytes(),
        b"",
        assertion,
    )
}

const FAR_FUTURE: &str = "2099-01-01T00:00:00Z";

async fn cert_accepted(run: Arc<ClientRun>, trusting: bool) -> CaseResult {
    let operator = Identity::generate(&mut rand_core::OsRng);
    let server = run.server.public_key();
    let mut invocation = run.invocation(server, 1);
    let token = if trusting {
        invocation.trust_operator = Some(operator.public_key());
        certificate(
            &operator,
            &operator.public_key(),
            &server,
            FAR_FUTURE,
            CERTIFICATE_ASSERTION,
        )
    } else {
        // Pinned: an expired certificate of an operator the client never heard of.
        certificate(
            &operator,
            &operator.public_key(),
            &server,
            "2001-02-01T00:00:00Z",
            CERTIFICATE_ASSERTION,
        )
    };
    let client = run.start_with(invocation);
    let expected = if trusting {
        "the certified server accepted: the call completes"
    } else {
        "the pinned server accepted whatever its certificate: the call completes"
    };
    let hello = move |hello: &mut ServerHelloOut| hello.certificate = Some(token);
    match serve_call(&run, client, hello, cap_grant(&run.server), expected).await {
        Ok(outcome) => CaseResult::check(true, expected, outcome.describe()),
        Err(result) => result,
    }
}

#[derive(Clone, Copy)]
enum CertFault {
    Absent,
    OtherOperator,
    Forged,
    OtherServer,
    Expired,
    GrantAssertion,
}

async fn cert_refused(run: Arc<ClientRun>, fault: CertFault) -> CaseResult {
    let operator = Identity::generate(&mut rand_core::OsRng);
    let stranger = Identity::generate(&mut rand_core::OsRng);
    let server = run.server.public_key();
    let trusted = operator.public_key();
    let token = match fault {
        CertFault::Absent => None,
        CertFault::OtherOperator => Some(certificate(
            &stranger,
            &stranger.public_key(),
            &server,
            FAR_FUTURE,
            CERTIFICATE_ASSERTION,
        )),
        CertFault::Forged => Some(certificate(
            &stranger,
            &trusted,
            &server,
            FAR_FUTURE,
            CERTIFICATE_ASSERTION,
        )),
        CertFault::OtherServer => Some(certificate(
            &operator,
            &trusted,
            &stranger.public_key(),
            FAR_FUTURE,
            CERTIFICATE_ASSERTION,
        )),
        CertFault::Expired => Some(certificate(
            &operator,
            &trusted,
            &server,
            "2001-02-01T00:00:00Z",
            CERTIFICATE_ASSERTION,
        )),
        CertFault::GrantAssertion => Some(certificate(
            &operator,
            &trusted,
            &server,
            FAR_FUTURE,
            b"toolwire/1 grant",
        )),
    };
    let mut invocation = run.invocation(server, 1);
    invocation.trust_operator = Some(trusted);
    let client = run.start_with(invocation);
    let step = run.options.step;
    let (mut socket, _) = match peer::accept(&run.listener, Some(SUBPROTOCOL), step).await {
        Ok(accepted) => accepted,
        Err(error) => return precondition_failed(client, error.to_string()).await,
    };
    let Some(record1) = peer::next_binary(&mut socket, step).await else {
        return precondition_failed(client, "no record 1".into()).await;
    };
    let record2 = Responder::new(run.server.clone(), &run.url).and_then(|mut responder| {
        responder.read_record1(&record1)?;
        let mut hello = responder.server_hello();
        hello.certificate = token;
        let payload = rmp_serde::to_vec_named(&hello)
            .map_err(|e| peer::PeerError(format!("ServerHello: {e}")))?;
        responder.record2(&payload)
    });
    let record2 = match record2 {
        Ok(record2) => record2,
        Err(error) => {
            client.abort();
            return CaseResult::harness_error(error.to_string());
        }
    };
    peer::send_binary(&mut socket, record2, step).await;
    let ending = await_raw_close(&mut socket, step).await;
    // A client that went on waits for a CAP_GRANT that never comes: end it now.
    drop(socket);
    let outcome = join(client).await;
    if let Some(result) = unimplemented(&outcome) {
        return result;
    }
    let wire_ok = ending.frame_code() == Some(4001)
        && ending.frame.as_ref().is_some_and(|(_, r)| r.is_empty())
        && ending.binary_messages == 0;
    let reported = outcome.report.as_ref().and_then(|r| r.close_code);
    let shim_ok = !outcome.delivered()
        && outcome
            .report
            .as_ref()
            .is_some_and(|r| r.outcome == "error")
        && reported.is_none_or(|code| code == 4001);
    CaseResult::check(
        wire_ok && shim_ok,
        "close frame 4001 AUTH_FAILED with empty reason, no record 3; the connect fails",
        format!("wire: {ending}; client: {}", outcome.describe()),
    )
}

// =====================================================================================
// 8.2 Lifetimes and keepalive
// =====================================================================================

/// The lifetime the session-lifetime case announces.
const SHORT_LIFETIME: Duration = Duration::from_millis(2000);
/// How late after its lifetime a client may close.
const LIFETIME_TOLERANCE: Duration = Duration::from_millis(1500);

async fn session_lifetime(run: Arc<ClientRun>) -> CaseResult {
    let mut invocation = run.invocation(run.server.public_key(), 1);
    let hold = SHORT_LIFETIME + LIFETIME_TOLERANCE + Duration::from_millis(1000);
    invocation.hold_ms = u64::try_from(hold.as_millis()).unwrap_or(u64::MAX);
    let client = run.start_with(invocation);
    let lifetime_ms = u64::try_from(SHORT_LIFETIME.as_millis()).unwrap_or(u64::MAX);
    let served = match serve_handshake(&run, |hello| {
        hello.params.session_lifetime_ms = lifetime_ms;
    })
    .await
    {
        Ok(served) => served,
        Err(error) => return precondition_failed(client, error).await,
    };
    let established = served.record3_at;
    let mut session = session_of(&run, served);
    session
        .send(&Message::CapGrant(cap_grant(&run.server)))
        .await;
    let request = match next_request(&mut session).await {
        Ok(request) => request,
        Err(error) => return precondition_failed(client, error).await,
    };
    let response = session.response(&request, &result_bytes());
    session.send(&Message::Response(response)).await;
    // No renewal is served: the listener accepts nothing more during the case, so
    // this session must end by the client's own lifetime check.
    let deadline = SHORT_LIFETIME + LIFETIME_TOLERANCE + Duration::from_millis(500);
    let left = deadline.saturating_sub(established.elapsed());
    let ending = session.await_close(left).await;
    let closed_after = established.elapsed();
    let outcome = join(client).await;
    if let Some(result) = unimplemented(&outcome) {
        return result;
    }
    let in_time = !ending.timed_out && closed_after <= SHORT_LIFETIME + LIFETIME_TOLERANCE;
    let ok = ending.record_code() == Some(4006) && ending.frame_code() == Some(4006) && in_time;
    CaseResult::check(
        ok,
        format!(
            "CLOSE 4006 SESSION_EXPIRED then close frame 4006, at most {} ms after the handshake",
            (SHORT_LIFETIME + LIFETIME_TOLERANCE).as_millis()
        ),
        format!(
            "wire: {ending} {} ms after the handshake; client: {}",
            closed_after.as_millis(),
            outcome.describe()
        ),
    )
}

/// How much sooner than the expected interval a PING may come (the suite may read
/// record 3 a little after the client started its timer).
const KEEPALIVE_EARLY: Duration = Duration::from_secs(2);
/// How much later than the expected interval a PING may come.
const KEEPALIVE_LATE: Duration = Duration::from_secs(5);

/// One sealed record from the server with `message`, as [`Session`] seals it.
fn seal_record(key: &[u8; 32], seq: u64, message: &Message) -> Vec<u8> {
    let header = Header {
        version: 1,
        record_type: SEALED,
        reserved: 0,
        epoch: 0,
        seq,
    };
    let encoded = header.encode();
    record(
        header,
        &peer::seal_body(key, seq, &encoded, &message.encode()),
    )
}

/// Opens the client's record number `seq` (epoch 0).
fn open_record(key: &[u8; 32], seq: u64, bytes: &[u8]) -> Result<Message, String> {
    use chacha20poly1305::aead::{Aead as _, Payload};
    use chacha20poly1305::{ChaCha20Poly1305, KeyInit as _};
    let header = Header::parse(bytes).ok_or("a record shorter than 16 bytes")?;
    if header.record_type != SEALED || header.epoch != 0 || header.seq != seq {
        return Err(format!("record header {header:?}, expected seq {seq}"));
    }
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&seq.to_le_bytes());
    let plaintext = ChaCha20Poly1305::new(key.into())
        .decrypt(
            (&nonce).into(),
            Payload {
                msg: &bytes[HEADER_LEN..],
                aad: &bytes[..HEADER_LEN],
            },
        )
        .map_err(|_| format!("record seq {seq} does not decrypt"))?;
    Message::decode(&plaintext).map_err(|e| format!("record seq {seq}: {e}"))
}

async fn keepalive(run: Arc<ClientRun>) -> CaseResult {
    let Some(interval) = run.options.keepalive else {
        return CaseResult::skip("the keepalive case is disabled (slow: about 30 s)");
    };
    let mut invocation = run.invocation(run.server.public_key(), 0);
    let hold = interval + KEEPALIVE_LATE + Duration::from_secs(5);
    invocation.hold_ms = u64::try_from(hold.as_millis()).unwrap_or(u64::MAX);
    let client = run.start_with(invocation);
    let served = match serve_handshake(&run, |_| {}).await {
        Ok(served) => served,
        Err(error) => return precondition_failed(client, error).await,
    };
    let Served {
        mut socket,
        keys,
        record3_at,
        ..
    } = served;
    let grant = Message::CapGrant(cap_grant(&run.server));
    if !peer::send_binary(
        &mut socket,
        seal_record(&keys.send, 0, &grant),
        run.options.step,
    )
    .await
    {
        return precondition_failed(client, "could not send CAP_GRANT".into()).await;
    }
    let expected = format!(
        "the first record after the handshake is a PING, {} to {} s after record 3",
        (interval - KEEPALIVE_EARLY).as_secs(),
        (interval + KEEPALIVE_LATE).as_secs()
    );
    // The client's records until its first PING (bounded by the late limit).
    let wait = (interval + KEEPALIVE_LATE).saturating_sub(record3_at.elapsed());
    let first = peer::next_binary(&mut socket, wait).await;
    let elapsed = record3_at.elapsed();
    let observed = match first {
        None => Err(format!(
            "no record within {} s of record 3",
            elapsed.as_secs()
        )),
        Some(bytes) => match open_record(&keys.receive, 0, &bytes) {
            Ok(Message::Ping(ping)) => Ok(ping.nonce),
            Ok(other) => Err(format!(
                "{} after {} ms instead of a PING",
                other.kind(),
                elapsed.as_millis()
            )),
            Err(error) => Err(error),
        },
    };
    // End the session: PONG, CLOSE 1000 (the shim stops holding when it closes).
    if let Ok(nonce) = &observed {
        let pong = Message::Pong(toolwire_protocol::message::Ping { nonce: *nonce });
        peer::send_binary(
            &mut socket,
            seal_record(&keys.send, 1, &pong),
            run.options.step,
        )
        .await;
    }
    let close = Message::Close(toolwire_protocol::message::Close {
        code: 1000,
        reason: String::new(),
    });
    peer::send_binary(
        &mut socket,
        seal_record(&keys.send, 2, &close),
        run.options.step,
    )
    .await;
    let _ = await_raw_close(&mut socket, run.options.step).await;
    let outcome = join(client).await;
    if let Some(result) = unimplemented(&outcome) {
        return result;
    }
    let in_window = elapsed >= interval - KEEPALIVE_EARLY && elapsed <= interval + KEEPALIVE_LATE;
    match observed {
        Ok(nonce) => {
            let observed = format!(
                "PING (nonce {nonce}) {} ms after record 3; client: {}",
                elapsed.as_millis(),
                outcome.describe()
            );
            if in_window && nonce != 0 {
                return CaseResult::new(
                    Verdict::NonStrict,
                    expected,
                    observed,
                    "the first PING's nonce is not 0 (LIFE-007, a SHOULD)",
                );
            }
            CaseResult::check(in_window, expected, observed)
        }
        Err(problem) => CaseResult::check(
            false,
            expected,
            format!("{problem}; client: {}", outcome.describe()),
        ),
    }
}

// =====================================================================================
// MAN-008: manifest hash
// =====================================================================================

/// The canonical manifest bytes with the fixmap header widened to a map16: still a
/// valid msgpack map of the same fields, not the shortest encoding.
fn widened_manifest(server: &Identity) -> Result<Vec<u8>, String> {
    let canonical = rmp_serde::to_vec_named(&Manifest {
        server: server.public_key().to_bytes().to_vec().into(),
        tools: vec![echo_tool()],
    })
    .map_err(|e| e.to_string())?;
    let (first, rest) = canonical.split_first().ok_or("empty manifest")?;
    if *first & 0xf0 != 0x80 {
        return Err(format!("manifest starts with {first:#04x}, not a fixmap"));
    }
    let mut widened = vec![0xde, 0x00, *first & 0x0f];
    widened.extend_from_slice(rest);
    Ok(widened)
}

async fn manifest_hash(run: Arc<ClientRun>) -> CaseResult {
    let bytes = match widened_manifest(&run.server) {
        Ok(bytes) => bytes,
        Err(error) => return CaseResult::harness_error(error),
    };
    let signature = run
        .server
        .sign(&peer::pae(&[b"toolwire/1 manifest", &bytes]));
    let signed = SignedManifest {
        manifest: bytes.clone().into(),
        signature: signature.to_vec().into(),
    };
    let exact = hex::encode(Sha256::digest(&bytes));
    let reencoded = rmp_serde::from_slice::<Manifest>(&bytes)
        .ok()
        .and_then(|m| rmp_serde::to_vec_named(&m).ok())
        .map(|b| hex::encode(Sha256::digest(b)))
        .unwrap_or_default();
    if reencoded == exact {
        return CaseResult::harness_error("the widened manifest re-encodes to itself");
    }
    let client = run.start(1);
    let expected = format!("manifest_hash {exact} (SHA-256 of the bytes as signed)");
    let outcome = match serve_call(&run, client, |_| {}, grant_with(signed), &expected).await {
        Ok(outcome) => outcome,
        Err(result) => return result,
    };
    let Some(reported) = outcome
        .report
        .as_ref()
        .and_then(|r| r.manifest_hash.clone())
    else {
        return CaseResult::new(
            Verdict::Unimplemented,
            expected,
            outcome.describe(),
            "the shim reports no manifest_hash: the client does not expose one",
        );
    };
    let note = if reported == reencoded {
        " (the hash of a RE-ENCODING)"
    } else {
        ""
    };
    CaseResult::check(
        reported.eq_ignore_ascii_case(&exact),
        expected,
        format!("manifest_hash {reported}{note}"),
    )
}

// =====================================================================================
// ERR-003: retryable classification
// =====================================================================================

/// The codes of section 15's table.
const CODES: [ErrorCode; 15] = [
    ErrorCode::CANCELLED,
    ErrorCode::UNKNOWN,
    ErrorCode::INVALID_ARGUMENT,
    ErrorCode::DEADLINE_EXCEEDED,
    ErrorCode::NOT_FOUND,
    ErrorCode::PERMISSION_DENIED,
    ErrorCode::RESOURCE_EXHAUSTED,
    ErrorCode::FAILED_PRECONDITION,
    ErrorCode::INTERNAL,
    ErrorCode::UNAVAILABLE,
    ErrorCode::UNAUTHENTICATED,
    ErrorCode::STALE_REQUEST_ID,
    ErrorCode::RESULT_UNAVAILABLE,
    ErrorCode::GRANT_EXPIRED,
    ErrorCode::CAPABILITY_REVOKED,
];

/// The retryable codes of ERR-003, stated here from the spec (not from the
/// implementation's own table).
const RETRYABLE: [u32; 3] = [4, 8, 14];

/// One call answered with ERROR `code`; every REQUEST (a client may retry by itself)
/// gets the same answer, a bounded number of times.
async fn answer_with_error(run: &ClientRun, code: u32) -> Result<ShimOutcome, CaseResult> {
    let client = run.start(1);
    let served = match serve_handshake(run, |_| {}).await {
        Ok(served) => served,
        Err(error) => return Err(precondition_failed(client, error).await),
    };
    let mut session = session_of(run, served);
    session
        .send(&Message::CapGrant(cap_grant(&run.server)))
        .await;
    let mut answered = 0;
    while answered < 4 {
        match session.next().await {
            Ok(Message::Request(request)) => {
                answered += 1;
                session
                    .send(&Message::Error(ErrorMessage {
                        id: Some(request.id),
                        code,
                        message: "conformance".into(),
                        retry_after_ms: (code == 8).then_some(100),
                    }))
                    .await;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    if answered == 0 {
        return Err(precondition_failed(client, "no REQUEST".into()).await);
    }
    let _ = session.await_close(run.options.step).await;
    let outcome = join(client).await;
    match unimplemented(&outcome) {
        Some(result) => Err(result),
        None => Ok(outcome),
    }
}

async fn retryable(run: Arc<ClientRun>) -> CaseResult {
    let expected = "retryable exactly for codes 4, 8 and 14".to_owned();
    let mut classified = Vec::new();
    let mut problems = Vec::new();
    for code in CODES {
        let outcome = match answer_with_error(&run, code.0).await {
            Ok(outcome) => outcome,
            Err(result) => return result,
        };
        let report = outcome.report.clone().unwrap_or_default();
        if report.rpc_code != Some(code.0) || outcome.delivered() {
            problems.push(format!("code {}: client {}", code.0, outcome.describe()));
            continue;
        }
        let Some(retryable) = report.retryable else {
            return CaseResult::new(
                Verdict::Unimplemented,
                expected,
                outcome.describe(),
                "the shim reports no `retryable`: the client does not classify codes",
            );
        };
        if retryable != RETRYABLE.contains(&code.0) {
            problems.push(format!(
                "code {} classified {}",
                code.0,
                if retryable {
                    "RETRYABLE"
                } else {
                    "NOT retryable"
                }
            ));
        }
        if retryable {
            classified.push(code.0);
        }
    }
    CaseResult::check(
        problems.is_empty(),
        expected,
        format!(
            "retryable: {classified:?}{}",
            if problems.is_empty() {
                String::new()
            } else {
                format!(" — {}", problems.join("; "))
            }
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every malformed variant is refused by the strict parser, and the lenient
    /// reading of the unused-bits variant is the very key (a lenient client would
    /// connect to the real server).
    #[test]
    fn malformed_key_texts_are_malformed() {
        let key = Identity::generate(&mut rand_core::OsRng).public_key();
        for variant in [
            KeyText::TooLong,
            KeyText::TooShort,
            KeyText::Padded,
            KeyText::UnusedBits,
            KeyText::BadChar,
        ] {
            let text = malformed(&key, variant);
            assert!(text.parse::<IdentityKey>().is_err(), "{text}");
        }
        let unused = malformed(&key, KeyText::UnusedBits);
        assert_eq!(unused.len(), 43);
        assert_ne!(unused, key.to_string());
    }

    #[test]
    fn the_widened_manifest_decodes_to_the_same_manifest() {
        let server = Identity::generate(&mut rand_core::OsRng);
        let widened = widened_manifest(&server).unwrap_or_default();
        let decoded: Manifest = rmp_serde::from_slice(&widened).expect("decodes");
        assert_eq!(decoded.tools, vec![echo_tool()]);
        let canonical = rmp_serde::to_vec_named(&decoded).expect("encodes");
        assert_ne!(canonical, widened);
    }
}
