//! The attacks the demo plays against its own tool server. Each one says what it
//! tries, which code the protocol specifies for its refusal, and reports what it
//! observed from the attacker's side.

use super::raw::{self, RawSession};
use super::report::{short_json, Outcome};
use super::World;
use crate::tools;
use futures_util::future::join_all;
use futures_util::SinkExt as _;
use serde_json::json;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};
use toolwire_client::{CallError, Session};
use toolwire_protocol::message::{Message, Request};
use toolwire_protocol::record::{RecordHeader, RecordType, PROTOCOL_VERSION};
use toolwire_protocol::{CloseCode, ErrorCode, Identity};

/// Calls the flood attack fires at once (the demo server's burst is
/// [`super::BURST`]).
pub(crate) const FLOOD_CALLS: usize = 30;

/// Longest any one attack may take before it counts as not refused. Generous: a
/// loaded machine running a debug build is slow; a normal run takes well under 1 s.
const ATTACK_TIMEOUT: Duration = Duration::from_secs(10);

/// Which attack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    ForeignOrigin,
    CallBeforeHandshake,
    NeverAuthenticates,
    UnknownIdentity,
    ForwardedSocket,
    TamperedRecord,
    ReplayedRecord,
    UngrantedTool,
    Flood,
    RemovedClient,
    RevokedGrant,
    PathEscape,
    SymlinkEscape,
    ChangedManifest,
}

/// One attack: what it is called, what it does, and the refusal the spec requires.
#[derive(Debug, Clone)]
pub(crate) struct Attack {
    pub(crate) kind: Kind,
    pub(crate) name: &'static str,
    pub(crate) attempt: &'static str,
    pub(crate) expected: Outcome,
}

/// Every attack, in the order they are played.
pub(crate) fn catalogue() -> Vec<Attack> {
    use Outcome::{Close, Http, Rpc};
    let attack = |kind, name, attempt, expected| Attack {
        kind,
        name,
        attempt,
        expected,
    };
    vec![
        attack(
            Kind::ForeignOrigin,
            "browser page from a foreign Origin",
            "a web page on https://evil.example opens a WebSocket to the tool server (cross-site WebSocket hijacking)",
            Http(403),
        ),
        attack(
            Kind::CallBeforeHandshake,
            "no credentials: call before handshake",
            "opens a socket and sends a REQUEST record without doing the handshake",
            Close(CloseCode::PROTOCOL_VIOLATION),
        ),
        attack(
            Kind::NeverAuthenticates,
            "no credentials: never authenticates",
            "opens a socket and sends nothing, holding a connection slot",
            Close(CloseCode::TIMEOUT),
        ),
        attack(
            Kind::UnknownIdentity,
            "unknown identity",
            "completes the handshake with a fresh key the server does not allow and no grant",
            Close(CloseCode::AUTH_FAILED),
        ),
        attack(
            Kind::ForwardedSocket,
            "socket forwarded to another endpoint",
            "the agent dials ws://…/elsewhere but lands on this server (the URL is bound into the handshake)",
            Close(CloseCode::HANDSHAKE_FAILED),
        ),
        attack(
            Kind::TamperedRecord,
            "flip one bit of a sealed request",
            "an on-path proxy flips one bit of a sealed echo REQUEST",
            Close(CloseCode::DECRYPT_FAILED),
        ),
        attack(
            Kind::ReplayedRecord,
            "replay a captured request record",
            "re-sends a sealed echo REQUEST record the server already answered",
            Close(CloseCode::REPLAY_DETECTED),
        ),
        attack(
            Kind::UngrantedTool,
            "call a tool outside the grant",
            "the sub-agent, whose delegated grant covers only echo, calls read_file",
            Rpc(ErrorCode::PERMISSION_DENIED),
        ),
        attack(
            Kind::Flood,
            "flood: 30 calls at once",
            "an allowed agent fires 30 calls at once against a budget of 1 call/s, burst 12; the server closes after 8 refusals in a row",
            Outcome::RpcThenClose(ErrorCode::RESOURCE_EXHAUSTED, CloseCode::RATE_LIMITED),
        ),
        attack(
            Kind::RemovedClient,
            "call after removal from allowlist",
            "an agent calls echo, is removed from the allowlist (Server::remove_client), and calls again on the same connection",
            Rpc(ErrorCode::PERMISSION_DENIED),
        ),
        attack(
            Kind::RevokedGrant,
            "call after the grant was revoked",
            "the operator revokes the agent's root grant (Server::revoke_grant); the sub-agent calls again with the delegation below it on the same connection",
            Rpc(ErrorCode::CAPABILITY_REVOKED),
        ),
        attack(
            Kind::PathEscape,
            "read_file ../ out of the sandbox",
            "read_file {\"path\": \"../outside-secret.txt\"}",
            Rpc(ErrorCode::PERMISSION_DENIED),
        ),
        attack(
            Kind::SymlinkEscape,
            "read_file via a symlink out of it",
            "read_file {\"path\": \"shortcut.txt\"}, a symlink inside the sandbox to ../outside-secret.txt",
            Rpc(ErrorCode::PERMISSION_DENIED),
        ),
        // Last: it changes `echo` on the demo server for everyone.
        attack(
            Kind::ChangedManifest,
            "tool definition changed after approval",
            "the server replaces echo's description and schema after the agent pinned the signed manifest (rug pull)",
            Outcome::ManifestChanged,
        ),
    ]
}

/// What playing an attack produced.
pub(crate) enum Played {
    /// The attack ran; this is what the attacker saw.
    Observed {
        outcome: Outcome,
        detail: Option<String>,
    },
    /// This build cannot play the attack.
    Unavailable(String),
}

fn observed(outcome: Outcome) -> Played {
    Played::Observed {
        outcome,
        detail: None,
    }
}

fn observed_with(outcome: Outcome, detail: String) -> Played {
    Played::Observed {
        outcome,
        detail: Some(detail),
    }
}

/// Plays one attack, bounded by [`ATTACK_TIMEOUT`].
pub(crate) async fn play(kind: Kind, world: &World) -> Played {
    let playing = async {
        match kind {
            Kind::ForeignOrigin => foreign_origin(world).await,
            Kind::CallBeforeHandshake => call_before_handshake(world).await,
            Kind::NeverAuthenticates => never_authenticates(world).await,
            Kind::UnknownIdentity => unknown_identity(world).await,
            Kind::ForwardedSocket => forwarded_socket(world).await,
            Kind::TamperedRecord => tampered_record(world).await,
            Kind::ReplayedRecord => replayed_record(world).await,
            Kind::UngrantedTool => ungranted_tool(world).await,
            Kind::Flood => flood(world).await,
            Kind::RemovedClient => removed_client(world).await,
            Kind::RevokedGrant => revoked_grant(world).await,
            Kind::PathEscape => read_file_as_agent(world, "../outside-secret.txt").await,
            Kind::SymlinkEscape => symlink_escape(world).await,
            Kind::ChangedManifest => changed_manifest(world).await,
        }
    };
    match tokio::time::timeout(ATTACK_TIMEOUT, playing).await {
        Ok(played) => played,
        Err(_) => observed(Outcome::Other(format!(
            "no verdict within {} s",
            ATTACK_TIMEOUT.as_secs()
        ))),
    }
}

/// How a call ended, from the caller's side.
fn call_outcome(result: &Result<serde_json::Value, CallError>) -> Outcome {
    match result {
        Ok(value) => Outcome::Accepted(format!("answered {}", short_json(value, 40))),
        Err(CallError::Rpc { code, .. }) => Outcome::Rpc(*code),
        Err(CallError::ManifestChanged { .. }) => Outcome::ManifestChanged,
        Err(CallError::ConnectionClosed { code }) => Outcome::Close(*code),
        Err(other) => Outcome::Other(other.to_string()),
    }
}

/// The server's message of an RPC refusal, for the detail column.
fn call_detail(result: &Result<serde_json::Value, CallError>) -> Option<String> {
    match result {
        Err(CallError::Rpc { message, .. }) if !message.is_empty() => Some(message.clone()),
        _ => None,
    }
}

/// Plays "connect, then do something": a failed connect is reported as what it was.
async fn connected(world: &World, identity: &Identity, grants: &[&str]) -> Result<Session, Played> {
    world.connect(identity, grants).await.map_err(|error| {
        observed(match crate::call::connect_close_code(&error) {
            Some(code) => Outcome::Other(format!("could not set up: connect closed with {code}")),
            None => Outcome::Other(format!("could not set up: {error}")),
        })
    })
}

async fn foreign_origin(world: &World) -> Played {
    match raw::upgrade(&world.url, Some("https://evil.example")).await {
        Err(WsError::Http(response)) => observed(Outcome::Http(response.status().as_u16())),
        Err(error) => observed(Outcome::Other(error.to_string())),
        Ok(_) => observed(Outcome::Accepted("the upgrade was accepted".into())),
    }
}

async fn call_before_handshake(world: &World) -> Played {
    let mut socket = match raw::upgrade(&world.url, None).await {
        Ok(socket) => socket,
        Err(error) => return observed(Outcome::Other(format!("upgrade failed: {error}"))),
    };
    // A REQUEST framed like a data record, but in clear: there are no keys yet.
    let request = Message::Request(Request {
        id: 1,
        tool: "echo".into(),
        args: rmp_serde::to_vec_named(&json!({"text": "let me in"}))
            .unwrap_or_default()
            .into(),
        grant_id: None,
        deadline_ms: None,
        signature: None,
        retry: false,
    });
    let header = RecordHeader {
        version: PROTOCOL_VERSION,
        record_type: RecordType::SEALED,
        reserved: 0,
        epoch: 0,
        seq: 0,
    };
    let mut record = header.encode().to_vec();
    record.extend_from_slice(&request.encode());
    if let Err(error) = socket.send(WsMessage::Binary(record.into())).await {
        return observed(Outcome::Other(format!("send failed: {error}")));
    }
    match raw::close_code(&mut socket, None, raw::READ_TIMEOUT).await {
        Some(code) => observed_with(
            Outcome::Close(code),
            "until the handshake completes only the next handshake record is accepted (REC-017)"
                .into(),
        ),
        None => observed(Outcome::Other(
            "the socket ended without a close code".into(),
        )),
    }
}

/// Opens a socket and never authenticates; resolves when the server closes it. The
/// demo starts it first, so the handshake deadline runs while the rest plays.
pub(crate) fn start_idle_probe(url: String) -> JoinHandle<Played> {
    tokio::spawn(async move {
        let started = std::time::Instant::now();
        let mut socket = match raw::upgrade(&url, None).await {
            Ok(socket) => socket,
            Err(error) => return observed(Outcome::Other(format!("upgrade failed: {error}"))),
        };
        match raw::close_code(&mut socket, None, super::HANDSHAKE_TIMEOUT * 3).await {
            Some(code) => observed_with(
                Outcome::Close(code),
                format!(
                    "closed after {} ms (the demo server's handshake deadline is {} ms)",
                    started.elapsed().as_millis(),
                    super::HANDSHAKE_TIMEOUT.as_millis()
                ),
            ),
            None => observed(Outcome::Other(
                "the socket ended without a close code".into(),
            )),
        }
    })
}

async fn never_authenticates(world: &World) -> Played {
    let Some(probe) = world.idle_probe.lock().await.take() else {
        return observed(Outcome::Other("the idle connection was not started".into()));
    };
    probe
        .await
        .unwrap_or_else(|_| observed(Outcome::Other("the idle connection task failed".into())))
}

async fn unknown_identity(world: &World) -> Played {
    let stranger = Identity::generate(&mut rand_core::OsRng);
    match world.connect(&stranger, &[]).await {
        Ok(_) => observed(Outcome::Accepted("the session was established".into())),
        Err(error) => match crate::call::connect_close_code(&error) {
            Some(code) => observed(Outcome::Close(code)),
            None => observed(Outcome::Other(error.to_string())),
        },
    }
}

async fn forwarded_socket(world: &World) -> Played {
    // The agent believes it talks to /elsewhere; the server is configured for /toolwire.
    let elsewhere = world.url.replace("/toolwire", "/elsewhere");
    match world.connect_to(&elsewhere, &world.agent, &[]).await {
        Ok(_) => observed(Outcome::Accepted("the session was established".into())),
        Err(error) => match crate::call::connect_close_code(&error) {
            Some(code) => observed_with(
                Outcome::Close(code),
                "refused by the agent itself: the server's handshake message did not authenticate under the URL it dialed".into(),
            ),
            None => observed(Outcome::Other(error.to_string())),
        },
    }
}

async fn tampered_record(world: &World) -> Played {
    let mut session =
        match RawSession::connect(&world.url, world.agent.clone(), world.server_key).await {
            Ok(session) => session,
            Err(error) => return observed(Outcome::Other(format!("could not set up: {error}"))),
        };
    let mut record = match session.seal_request(1, "echo", &json!({"text": "pay 10 EUR"})) {
        Ok(record) => record,
        Err(error) => return observed(Outcome::Other(error)),
    };
    // The last byte belongs to the AEAD tag.
    if let Some(last) = record.last_mut() {
        *last ^= 0x01;
    }
    if let Err(error) = session.send(record).await {
        return observed(Outcome::Other(error));
    }
    match session.close_code().await {
        Some(code) => observed(Outcome::Close(code)),
        None => observed(Outcome::Other("no close code".into())),
    }
}

async fn replayed_record(world: &World) -> Played {
    let mut session =
        match RawSession::connect(&world.url, world.agent.clone(), world.server_key).await {
            Ok(session) => session,
            Err(error) => return observed(Outcome::Other(format!("could not set up: {error}"))),
        };
    let record = match session.seal_request(1, "echo", &json!({"text": "pay 10 EUR"})) {
        Ok(record) => record,
        Err(error) => return observed(Outcome::Other(error)),
    };
    if let Err(error) = session.send(record.clone()).await {
        return observed(Outcome::Other(error));
    }
    match session.answer(1).await {
        Ok(Message::Response(_)) => {}
        Ok(other) => {
            return observed(Outcome::Other(format!(
                "the original was not answered normally: {}",
                other.kind()
            )))
        }
        Err(error) => return observed(Outcome::Other(error)),
    }
    if let Err(error) = session.send(record).await {
        return observed(Outcome::Other(error));
    }
    match session.close_code().await {
        Some(code) => observed_with(
            Outcome::Close(code),
            "the original was answered; the copy closed the connection".into(),
        ),
        None => observed(Outcome::Other("no close code".into())),
    }
}

async fn ungranted_tool(world: &World) -> Played {
    let session = match connected(world, &world.sub_agent, &[&world.delegated_grant]).await {
        Ok(session) => session,
        Err(played) => return played,
    };
    let result = session
        .call("read_file", &json!({"path": "notes.txt"}))
        .await;
    Played::Observed {
        outcome: call_outcome(&result),
        detail: Some(format!(
            "granted to the sub-agent: {}",
            session.granted_tools().join(", ")
        )),
    }
}

async fn flood(world: &World) -> Played {
    let session = match connected(world, &world.flooder, &[]).await {
        Ok(session) => session,
        Err(played) => return played,
    };
    let calls = (0..FLOOD_CALLS).map(|n| {
        let session = &session;
        async move {
            session
                .call("echo", &json!({"text": format!("flood {n}")}))
                .await
        }
    });
    let results = join_all(calls).await;
    let answered = results.iter().filter(|result| result.is_ok()).count();
    let exhausted = results
        .iter()
        .filter(|result| {
            matches!(result, Err(CallError::Rpc { code, .. }) if *code == ErrorCode::RESOURCE_EXHAUSTED)
        })
        .count();
    let cut_off = results
        .iter()
        .filter(|result| matches!(result, Err(CallError::ConnectionClosed { .. })))
        .count();
    let detail = format!(
        "{answered} answered, {exhausted} refused RESOURCE_EXHAUSTED, then the connection closed ({cut_off} calls cut off)"
    );
    let outcome = match (exhausted, session.close_code()) {
        (0, _) => Outcome::Accepted(format!("{answered} of {FLOOD_CALLS} calls answered")),
        (_, Some(code)) => Outcome::RpcThenClose(ErrorCode::RESOURCE_EXHAUSTED, code),
        (_, None) => Outcome::Rpc(ErrorCode::RESOURCE_EXHAUSTED),
    };
    observed_with(outcome, detail)
}

async fn removed_client(world: &World) -> Played {
    let session = match connected(world, &world.revokee, &[]).await {
        Ok(session) => session,
        Err(played) => return played,
    };
    if let Err(error) = session.call("echo", &json!({"text": "before"})).await {
        return observed(Outcome::Other(format!("the first call failed: {error}")));
    }
    world.server.remove_client(&world.revokee.public_key());
    let result = session.call("echo", &json!({"text": "after"})).await;
    Played::Observed {
        outcome: call_outcome(&result),
        detail: call_detail(&result).or(Some("the first call, before removal, succeeded".into())),
    }
}

async fn revoked_grant(world: &World) -> Played {
    let session = match connected(world, &world.sub_agent, &[&world.delegated_grant]).await {
        Ok(session) => session,
        Err(played) => return played,
    };
    if let Err(error) = session.call("echo", &json!({"text": "before"})).await {
        return observed(Outcome::Other(format!("the first call failed: {error}")));
    }
    world.server.revoke_grant(&world.root_grant_id);
    let result = session.call("echo", &json!({"text": "after"})).await;
    Played::Observed {
        outcome: call_outcome(&result),
        detail: Some(format!(
            "revoked grant {} (the agent's); the sub-agent's delegation below it died with it",
            world.root_grant_id
        )),
    }
}

async fn read_file_as_agent(world: &World, path: &str) -> Played {
    let session = match connected(world, &world.agent, &[]).await {
        Ok(session) => session,
        Err(played) => return played,
    };
    let result = session.call("read_file", &json!({ "path": path })).await;
    Played::Observed {
        outcome: call_outcome(&result),
        detail: call_detail(&result),
    }
}

async fn symlink_escape(world: &World) -> Played {
    if !world.scratch.has_symlink {
        return Played::Unavailable("symlinks are not available on this system".into());
    }
    read_file_as_agent(world, "shortcut.txt").await
}

async fn changed_manifest(world: &World) -> Played {
    let session = match connected(world, &world.agent, &[]).await {
        Ok(session) => session,
        Err(played) => return played,
    };
    if let Err(error) = session.call("echo", &json!({"text": "approved"})).await {
        return observed(Outcome::Other(format!("the first call failed: {error}")));
    }
    // The rug pull: same name, new description and schema, re-signed manifest.
    if let Err(error) = world.server.replace_tool(tools::poisoned_echo()) {
        return observed(Outcome::Other(format!("replace_tool failed: {error}")));
    }
    // Live sessions are sent CAP_UPDATE with the new signed manifest; wait for it.
    for _ in 0..300 {
        if !session.granted_tools().iter().any(|tool| tool == "echo") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let result = session.call("echo", &json!({"text": "after"})).await;
    Played::Observed {
        outcome: call_outcome(&result),
        detail: Some(
            "the agent pinned the signed manifest at connect; the new definition's digest differs, so the agent refuses to call it"
                .into(),
        ),
    }
}
