//! An in-memory tour of the protocol core: a client and a server state machine
//! complete a handshake, make one signed call, then face four attacks. No sockets:
//! records are moved by hand, exactly as a driver would move WebSocket messages.
//!
//! Run: `cargo run --release -p toolwire-protocol --example in_memory_call`
//! Exit status is 0 only if the call succeeded and every attack was refused with its
//! specified close code.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use toolwire_protocol::envelope::{RequestFields, ResponseFields};
use toolwire_protocol::message::{Request, Response};
use toolwire_protocol::{
    ClientConfig, CloseCode, Connection, Event, Identity, Message, ServerConfig,
};

const ENDPOINT: &str = "wss://tools.example/toolwire";

struct World {
    server_identity: Identity,
    client_identity: Identity,
    server_config: Arc<ServerConfig>,
    client_config: Arc<ClientConfig>,
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX)
        })
}

/// Moves every queued record from `from` to `to`; stops at the first refusal.
fn deliver(
    from: &mut Connection,
    to: &mut Connection,
    now: Instant,
) -> Result<(), toolwire_protocol::Error> {
    while let Some(record) = from.poll_transmit() {
        to.handle_record(now, &record)?;
    }
    Ok(())
}

fn handshake(
    client: &mut Connection,
    server: &mut Connection,
    now: Instant,
) -> Result<(), toolwire_protocol::Error> {
    deliver(client, server, now)?;
    deliver(server, client, now)?;
    deliver(client, server, now)
}

fn connect(
    world: &World,
    client_config: Arc<ClientConfig>,
    now: Instant,
) -> (Connection, Connection) {
    let mut rng = rand_core::OsRng;
    let client = Connection::client(client_config, now, &mut rng);
    let server = Connection::server(world.server_config.clone(), now, unix_now(), &mut rng);
    (client, server)
}

fn signed_call(world: &World) -> Result<String, String> {
    let now = Instant::now();
    let (mut client, mut server) = connect(world, world.client_config.clone(), now);
    handshake(&mut client, &mut server, now)
        .map_err(|error| format!("handshake failed: {error}"))?;
    let session_id = client.session().ok_or("no session")?.session_id;
    println!("  session id {}", hex_prefix(&session_id));

    let args = rmp_serde::to_vec_named(&serde_json::json!({ "text": "hello, tools" }))
        .map_err(|e| e.to_string())?;
    let request_fields = RequestFields {
        session_id: &session_id,
        request_id: 1,
        tool: "echo",
        args: &args,
        grant_id: "",
    };
    let signature = request_fields.sign(&world.client_identity);
    client
        .send(
            now,
            Message::Request(Request {
                id: 1,
                tool: "echo".into(),
                args: args.clone().into(),
                grant_id: None,
                deadline_ms: None,
                signature: Some(signature.to_vec().into()),
                retry: false,
            }),
        )
        .map_err(|error| error.to_string())?;
    deliver(&mut client, &mut server, now).map_err(|error| error.to_string())?;

    // The server side: verify the envelope, run the tool, sign the response.
    let mut answered = false;
    while let Some(event) = server.poll_event() {
        let Event::Message(Message::Request(request)) = event else {
            continue;
        };
        let peer = server.session().ok_or("no session")?.peer;
        let fields = RequestFields {
            session_id: &session_id,
            request_id: request.id,
            tool: &request.tool,
            args: &request.args,
            grant_id: "",
        };
        fields
            .verify(
                &peer,
                request.signature.as_ref().map_or(&[][..], |s| s.as_slice()),
            )
            .map_err(|error| error.to_string())?;
        let result = request.args.to_vec();
        let request_hash = fields.hash();
        let response_signature = ResponseFields {
            session_id: &session_id,
            request_id: request.id,
            request_hash: &request_hash,
            result: &result,
        }
        .sign(&world.server_identity);
        server
            .send(
                now,
                Message::Response(Response {
                    id: request.id,
                    result: result.into(),
                    signature: Some(response_signature.to_vec().into()),
                }),
            )
            .map_err(|error| error.to_string())?;
        answered = true;
    }
    if !answered {
        return Err("the server saw no request".into());
    }
    deliver(&mut server, &mut client, now).map_err(|error| error.to_string())?;
    while let Some(event) = client.poll_event() {
        let Event::Message(Message::Response(response)) = event else {
            continue;
        };
        let request_hash = request_fields.hash();
        ResponseFields {
            session_id: &session_id,
            request_id: response.id,
            request_hash: &request_hash,
            result: &response.result,
        }
        .verify(
            &world.server_identity.public_key(),
            response
                .signature
                .as_ref()
                .map_or(&[][..], |s| s.as_slice()),
        )
        .map_err(|error| error.to_string())?;
        let value: serde_json::Value =
            rmp_serde::from_slice(&response.result).map_err(|e| e.to_string())?;
        return Ok(value.to_string());
    }
    Err("no response".into())
}

fn hex_prefix(bytes: &[u8]) -> String {
    bytes
        .iter()
        .take(8)
        .map(|byte| format!("{byte:02x}"))
        .collect::<String>()
        + "…"
}

/// One attack: returns the close code the defending side closed with.
type Attack = fn(&World) -> Option<CloseCode>;

fn attack_tampered_record(world: &World) -> Option<CloseCode> {
    let now = Instant::now();
    let (mut client, mut server) = connect(world, world.client_config.clone(), now);
    handshake(&mut client, &mut server, now).ok()?;
    client
        .send(
            now,
            Message::Ping(toolwire_protocol::message::Ping { nonce: 1 }),
        )
        .ok()?;
    let mut record = client.poll_transmit()?;
    let last = record.len() - 1;
    record[last] ^= 0x01;
    let _ = server.handle_record(now, &record);
    server.close_code().map(|(code, _)| code)
}

fn attack_replayed_record(world: &World) -> Option<CloseCode> {
    let now = Instant::now();
    let (mut client, mut server) = connect(world, world.client_config.clone(), now);
    handshake(&mut client, &mut server, now).ok()?;
    client
        .send(
            now,
            Message::Ping(toolwire_protocol::message::Ping { nonce: 1 }),
        )
        .ok()?;
    let record = client.poll_transmit()?;
    server.handle_record(now, &record).ok()?;
    let _ = server.handle_record(now, &record);
    server.close_code().map(|(code, _)| code)
}

fn attack_unknown_client(world: &World) -> Option<CloseCode> {
    let now = Instant::now();
    let mut rng = rand_core::OsRng;
    let stranger = Arc::new(ClientConfig::new(
        Identity::generate(&mut rng),
        vec![world.server_identity.public_key()],
        ENDPOINT,
        &mut rng,
    ));
    let (mut client, mut server) = connect(world, stranger, now);
    let _ = handshake(&mut client, &mut server, now);
    server.close_code().map(|(code, _)| code)
}

fn attack_forwarded_socket(world: &World) -> Option<CloseCode> {
    let now = Instant::now();
    let mut rng = rand_core::OsRng;
    // The client dialed another endpoint; a proxy forwarded its socket to this server.
    let misdirected = Arc::new(ClientConfig::new(
        world.client_identity.clone(),
        vec![world.server_identity.public_key()],
        "wss://other.example/toolwire",
        &mut rng,
    ));
    let (mut client, mut server) = connect(world, misdirected, now);
    let _ = handshake(&mut client, &mut server, now);
    client.close_code().map(|(code, _)| code)
}

fn main() -> ExitCode {
    let mut rng = rand_core::OsRng;
    let server_identity = Identity::generate(&mut rng);
    let client_identity = Identity::generate(&mut rng);
    let server_config = Arc::new(
        ServerConfig::new(server_identity.clone(), ENDPOINT, &mut rng)
            .allow_clients([client_identity.public_key()]),
    );
    let client_config = Arc::new(ClientConfig::new(
        client_identity.clone(),
        vec![server_identity.public_key()],
        ENDPOINT,
        &mut rng,
    ));
    let world = World {
        server_identity,
        client_identity,
        server_config,
        client_config,
    };

    println!("toolwire protocol core, in memory (no sockets)");
    println!(
        "  server identity {}",
        world.server_identity.public_key().fingerprint()
    );
    println!(
        "  client identity {}",
        world.client_identity.public_key().fingerprint()
    );
    println!();
    println!("1. handshake (Noise XX + Ed25519 identities) and one signed call");
    let mut ok = match signed_call(&world) {
        Ok(result) => {
            println!("  echo → {result}  (request and response signatures verified)");
            true
        }
        Err(error) => {
            println!("  FAILED: {error}");
            false
        }
    };
    println!();
    println!("2. attacks");
    let attacks: [(&str, Attack, CloseCode); 4] = [
        (
            "flip one bit of a sealed record",
            attack_tampered_record,
            CloseCode::DECRYPT_FAILED,
        ),
        (
            "replay a captured record",
            attack_replayed_record,
            CloseCode::REPLAY_DETECTED,
        ),
        (
            "connect with an identity the server does not know",
            attack_unknown_client,
            CloseCode::AUTH_FAILED,
        ),
        (
            "forward the socket to another endpoint",
            attack_forwarded_socket,
            CloseCode::HANDSHAKE_FAILED,
        ),
    ];
    for (what, attack, expected) in attacks {
        let observed = attack(&world);
        let refused = observed == Some(expected);
        ok &= refused;
        let verdict = match observed {
            Some(code) if refused => format!("refused: {code}"),
            Some(code) => format!("UNEXPECTED close {code}, expected {expected}"),
            None => format!("NOT REFUSED, expected {expected}"),
        };
        println!("  {what:<52} {verdict}");
    }
    println!();
    if ok {
        println!("all calls succeeded and every attack was refused");
        ExitCode::SUCCESS
    } else {
        println!("FAILURE: see above");
        ExitCode::FAILURE
    }
}
