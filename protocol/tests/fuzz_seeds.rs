//! Generator of the fuzz seed corpora in `fuzz/corpus/<target>/`.
//!
//! The seeds are real protocol bytes produced by this implementation with the fixed
//! test peers (`testing::fixed_peers_for_testing_only`, fixed ephemeral keys), so the
//! fuzzers start from inputs that get past the cryptographic checks, plus edge cases.
//! Everything here is deterministic.
//!
//! ```text
//! TOOLWIRE_REGENERATE_FUZZ_SEEDS=1 cargo test -p toolwire-protocol --test fuzz_seeds
//! ```
//!
//! writes (overwrites) the generated seeds; without the variable the test checks that
//! every generated seed is present and up to date. Other files in the corpus
//! directories (regression seeds `crash_*.bin` from fuzzing runs) are left alone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use serde_bytes::ByteBuf;
use time::macros::datetime;
use time::OffsetDateTime;
use toolwire_protocol::envelope::{RequestFields, ResponseFields};
use toolwire_protocol::grant::{GrantBuilder, GrantClaims, GRANT_IMPLICIT_ASSERTION};
use toolwire_protocol::handshake::{
    static_binding_message, ClientHello, Resume, CLIENT_STATIC_DOMAIN, MAX_PRESENTED_GRANTS,
};
use toolwire_protocol::manifest::{Manifest, ToolDescriptor};
use toolwire_protocol::message::{
    CallLimits, Cancel, CapGrant, CapRequest, CapUpdate, Close, ErrorMessage, GrantedTool,
    KeyUpdate, Ping, Request, Response, StreamItem,
};
use toolwire_protocol::noise::KeyPair;
use toolwire_protocol::paseto::{sign_v4_public, MAX_TOKEN_LEN};
use toolwire_protocol::record::{RecordHeader, RecordType, HEADER_LEN};
use toolwire_protocol::testing::{self, FixedPeers};
use toolwire_protocol::{ClientConfig, Connection, Identity, Message};

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus");
const REGENERATE: &str = "TOOLWIRE_REGENERATE_FUZZ_SEEDS";

/// Seeds by target, each a list of (file name, bytes).
type Seeds = BTreeMap<&'static str, Vec<(&'static str, Vec<u8>)>>;

/// Grant expiry, well after `testing::FIXED_UNIX_TIME` (2026-01-01).
const GRANT_EXP: OffsetDateTime = datetime!(2026-06-01 00:00 UTC);

fn peers() -> FixedPeers {
    testing::fixed_peers_for_testing_only()
}

// ---------------------------------------------------------------------------------
// Handshake and records

struct Handshake {
    record1: Vec<u8>,
    record2: Vec<u8>,
    record3: Vec<u8>,
}

/// The three handshake records between the fixed server and a client built from
/// `client_config` with the fixed client ephemeral (as in the fuzz targets).
fn handshake(peers: &FixedPeers, client_config: Arc<ClientConfig>) -> Handshake {
    let now = Instant::now();
    let mut client = testing::client_with_fixed_ephemeral_for_testing_only(
        client_config,
        testing::FIXED_CLIENT_EPHEMERAL,
        now,
    );
    let mut server = testing::server_with_fixed_ephemeral_for_testing_only(
        peers.server_config.clone(),
        testing::FIXED_SERVER_EPHEMERAL,
        now,
        testing::FIXED_UNIX_TIME,
    );
    let record1 = client.poll_transmit().expect("record 1");
    server.handle_record(now, &record1).expect("server reads 1");
    let record2 = server.poll_transmit().expect("record 2");
    client.handle_record(now, &record2).expect("client reads 2");
    let record3 = client.poll_transmit().expect("record 3");
    Handshake {
        record1,
        record2,
        record3,
    }
}

/// A client configuration with the fixed client identity and the given extras. Its
/// Noise static key differs from the fixed one, which message 3 carries anyway.
fn client_config_with(
    identity: Identity,
    peers: &FixedPeers,
    cap_request: CapRequest,
    lineage: Option<[u8; 16]>,
) -> Arc<ClientConfig> {
    use rand_core::SeedableRng as _;
    let mut rng = testing::SeededRng::seed_from_u64(0x7365_6564);
    let mut config = ClientConfig::new(
        identity,
        vec![peers.server_identity.public_key()],
        testing::FIXED_ENDPOINT,
        &mut rng,
    )
    .with_cap_request(cap_request);
    if let Some(lineage) = lineage {
        config = config.with_lineage(lineage);
    }
    Arc::new(config)
}

/// An established fixed pair; returns it with the session id.
fn established(peers: &FixedPeers) -> (Connection, Connection, [u8; 32]) {
    let (client, server) = testing::established_pair_for_testing_only(peers, Instant::now());
    let session_id = client.session().expect("established").session_id;
    (client, server, session_id)
}

/// The first sealed record the fixed client sends carrying `message` (sequence 0, as
/// the `sealed_record` target expects).
fn client_record(peers: &FixedPeers, message: Message) -> Vec<u8> {
    let (mut client, _, _) = established(peers);
    testing::send_any_kind_for_testing_only(&mut client, Instant::now(), message).expect("send");
    client.poll_transmit().expect("sealed record")
}

fn header(record_type: RecordType, reserved: u16, epoch: u32, seq: u64) -> Vec<u8> {
    RecordHeader {
        version: 1,
        record_type,
        reserved,
        epoch,
        seq,
    }
    .encode()
    .to_vec()
}

fn with_body(mut header: Vec<u8>, body: &[u8]) -> Vec<u8> {
    header.extend_from_slice(body);
    header
}

fn flip_last(mut bytes: Vec<u8>) -> Vec<u8> {
    if let Some(last) = bytes.last_mut() {
        *last ^= 0x01;
    }
    bytes
}

// ---------------------------------------------------------------------------------
// Messages

fn manifest(peers: &FixedPeers) -> Manifest {
    Manifest {
        server: ByteBuf::from(peers.server_identity.public_key().to_bytes().to_vec()),
        tools: vec![
            ToolDescriptor {
                name: "echo".into(),
                description: "Returns its argument.".into(),
                input_schema: r#"{"type":"object","properties":{"text":{"type":"string"}}}"#.into(),
                output_schema: r#"{"type":"string"}"#.into(),
            },
            ToolDescriptor {
                name: "search".into(),
                description: "Searches the web.".into(),
                input_schema: r#"{"type":"object"}"#.into(),
                output_schema: String::new(),
            },
        ],
    }
}

fn granted(manifest: &Manifest) -> Vec<GrantedTool> {
    manifest
        .tools
        .iter()
        .map(|tool| GrantedTool {
            name: tool.name.clone(),
            digest: ByteBuf::from(tool.digest().to_vec()),
        })
        .collect()
}

/// One message of every kind, named, with genuine signatures where they apply.
fn every_message(peers: &FixedPeers, session_id: &[u8; 32]) -> Vec<(&'static str, Message)> {
    let manifest = manifest(peers);
    let signed = manifest.sign(&peers.server_identity);
    let args = rmp_serde::to_vec(&("hello",)).expect("args");
    let request_fields = RequestFields {
        session_id,
        request_id: 1,
        tool: "echo",
        args: &args,
        grant_id: "g-root",
    };
    let request_signature = request_fields.sign(&peers.client_identity);
    let result = rmp_serde::to_vec(&"hello").expect("result");
    let response_signature = ResponseFields {
        session_id,
        request_id: 1,
        request_hash: &request_fields.hash(),
        result: &result,
    }
    .sign(&peers.server_identity);
    vec![
        (
            "cap_grant",
            Message::CapGrant(CapGrant {
                granted: granted(&manifest),
                limits: CallLimits {
                    rate_per_sec: 10,
                    burst: 20,
                    max_in_flight: 4,
                },
                expires_at_ms: Some(1_767_229_200_000),
                policy_version: 3,
                manifest: signed.clone(),
            }),
        ),
        (
            "cap_update",
            Message::CapUpdate(CapUpdate {
                granted: granted(&manifest)[..1].to_vec(),
                revoked: vec!["search".into()],
                policy_version: 4,
                manifest: Some(signed),
            }),
        ),
        (
            "cap_request",
            Message::CapRequest(CapRequest {
                tools: vec!["echo".into(), "*".into()],
                grants: vec![root_grant(peers)],
            }),
        ),
        (
            "request",
            Message::Request(Request {
                id: 1,
                tool: "echo".into(),
                args: ByteBuf::from(args.clone()),
                grant_id: Some("g-root".into()),
                deadline_ms: Some(5_000),
                signature: Some(ByteBuf::from(request_signature.to_vec())),
                retry: false,
            }),
        ),
        (
            // A retransmission after a reconnect (at-most-once path).
            "request_retry",
            Message::Request(Request {
                id: 1,
                tool: "echo".into(),
                args: ByteBuf::from(args.clone()),
                grant_id: Some("g-root".into()),
                deadline_ms: None,
                signature: Some(ByteBuf::from(request_signature.to_vec())),
                retry: true,
            }),
        ),
        (
            "response",
            Message::Response(Response {
                id: 1,
                result: ByteBuf::from(result),
                signature: Some(ByteBuf::from(response_signature.to_vec())),
            }),
        ),
        (
            "stream_item",
            Message::StreamItem(StreamItem {
                id: 1,
                index: 0,
                data: ByteBuf::from(vec![0xa3, b'a', b'b', b'c']),
            }),
        ),
        (
            "error",
            Message::Error(ErrorMessage {
                id: Some(1),
                code: 8,
                message: "slow down".into(),
                retry_after_ms: Some(250),
            }),
        ),
        ("cancel", Message::Cancel(Cancel { id: 1 })),
        ("key_update", Message::KeyUpdate(KeyUpdate { epoch: 1 })),
        ("ping", Message::Ping(Ping { nonce: 7 })),
        ("pong", Message::Pong(Ping { nonce: 7 })),
        (
            "close",
            Message::Close(Close {
                code: 1000,
                reason: "bye".into(),
            }),
        ),
    ]
}

/// `{"type": ty, "body": body}` with named fields, for messages the enum cannot make.
fn envelope<T: Serialize>(ty: &str, body: T) -> Vec<u8> {
    #[derive(Serialize)]
    struct Envelope<'a, T> {
        r#type: &'a str,
        body: T,
    }
    rmp_serde::to_vec_named(&Envelope { r#type: ty, body }).expect("encodes")
}

/// Message edge cases shared by `inner_message` and `sealed_message`.
fn message_edge_cases() -> Vec<(&'static str, Vec<u8>)> {
    #[derive(Serialize)]
    struct PingWithExtra {
        nonce: u64,
        future_field: &'static str,
    }
    let mut deep = vec![
        0x82, 0xa4, b't', b'y', b'p', b'e', 0xa4, b'P', b'I', b'N', b'G', 0xa4, b'b', b'o', b'd',
        b'y',
    ];
    deep.extend(std::iter::repeat_n(0x91, 40));
    deep.push(0xc0);
    let ping = Message::Ping(Ping { nonce: 7 }).encode();
    let mut trailing = ping.clone();
    trailing.push(0xc0);
    vec![
        ("empty.bin", Vec::new()),
        ("nil.bin", vec![0xc0]),
        ("unknown_type.bin", envelope("TELEPORT", Ping { nonce: 1 })),
        (
            "unknown_field.bin",
            envelope(
                "PING",
                PingWithExtra {
                    nonce: 5,
                    future_field: "x",
                },
            ),
        ),
        // Struct bodies as msgpack arrays (serde accepts both forms).
        ("cancel_as_array.bin", envelope("CANCEL", (9u64,))),
        ("deep_nesting.bin", deep),
        ("trailing_byte.bin", trailing),
        ("truncated.bin", ping[..ping.len() - 1].to_vec()),
        (
            "max_ints.bin",
            Message::Error(ErrorMessage {
                id: Some(u64::MAX),
                code: u32::MAX,
                message: String::new(),
                retry_after_ms: Some(u64::MAX),
            })
            .encode(),
        ),
    ]
}

// ---------------------------------------------------------------------------------
// Grants

fn client_key(peers: &FixedPeers) -> [u8; 32] {
    peers.client_identity.public_key().to_bytes()
}

fn server_key(peers: &FixedPeers) -> [u8; 32] {
    peers.server_identity.public_key().to_bytes()
}

fn agent(seed: u8) -> Identity {
    Identity::from_seed(&[seed; 32])
}

/// A root grant from the (trusted) server identity to the fixed client.
fn root_grant(peers: &FixedPeers) -> String {
    GrantBuilder::new(client_key(peers), server_key(peers), "g-root", GRANT_EXP)
        .tools(["echo", "search"])
        .scope(["read"])
        .sign(peers.server_identity.signing_key())
        .expect("sign")
}

/// A chain server → agents… → client with `links` delegation links.
fn chain(peers: &FixedPeers, links: usize) -> String {
    let holders: Vec<Identity> = (0..links).map(|i| agent(0xa0 + i as u8)).collect();
    let first_holder = holders
        .first()
        .map_or(client_key(peers), |h| h.public_key().to_bytes());
    let mut token = GrantBuilder::new(first_holder, server_key(peers), "g-0", GRANT_EXP)
        .tools(["*"])
        .scope(["read", "write"])
        .sign(peers.server_identity.signing_key())
        .expect("sign root");
    for (i, signer) in holders.iter().enumerate() {
        let holder = holders
            .get(i + 1)
            .map_or(client_key(peers), |h| h.public_key().to_bytes());
        let id = format!("g-{}", i + 1);
        token = GrantBuilder::new(holder, server_key(peers), &id, GRANT_EXP)
            .tools(["echo", "search"])
            .scope(["read"])
            .delegate_from(&token)
            .sign(signer.signing_key())
            .expect("sign link");
    }
    token
}

/// A genuine grant whose token is exactly `MAX_TOKEN_LEN` bytes long, padded with
/// tool names and then with `jti` characters.
fn max_len_grant(peers: &FixedPeers) -> Vec<u8> {
    let sign = |tools: &[String], id: &str| {
        GrantBuilder::new(client_key(peers), server_key(peers), id, GRANT_EXP)
            .tools(tools.iter().cloned())
            .sign(peers.server_identity.signing_key())
    };
    let mut tools: Vec<String> = Vec::new();
    loop {
        let mut more = tools.clone();
        more.push(format!("tool-{:04}", more.len()));
        match sign(&more, "g") {
            Ok(_) => tools = more,
            Err(_) => break,
        }
    }
    // Base64 grows in steps of 4 characters per 3 bytes: try jti lengths until the
    // token lands exactly on the limit (dropping a tool if it cannot).
    for _ in 0..4 {
        for id_len in 1..=128 {
            match sign(&tools, &"g".repeat(id_len)) {
                Ok(token) if token.len() == MAX_TOKEN_LEN => return token.into_bytes(),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        tools.pop();
    }
    panic!("no grant of exactly MAX_TOKEN_LEN bytes");
}

/// The token with one bit of its signature flipped (still canonical base64url).
fn corrupt_signature(token: &str) -> Vec<u8> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    let body = token.strip_prefix("v4.public.").expect("v4.public token");
    let mut payload = URL_SAFE_NO_PAD.decode(body).expect("base64url");
    let last = payload.len() - 1;
    payload[last - 8] ^= 0x01;
    format!("v4.public.{}", URL_SAFE_NO_PAD.encode(payload)).into_bytes()
}

fn grant_seeds(peers: &FixedPeers) -> Vec<(&'static str, Vec<u8>)> {
    let server = peers.server_identity.signing_key();
    let builder = || {
        GrantBuilder::new(client_key(peers), server_key(peers), "g-1", GRANT_EXP)
            .tools(["echo"])
            .scope(["read"])
    };
    let sign = |b: GrantBuilder| b.sign(server).expect("sign").into_bytes();
    let chain1 = chain(peers, 1);
    // The link widens its parent: scope "admin" the parent does not have.
    let widened = GrantBuilder::new(client_key(peers), server_key(peers), "g-w", GRANT_EXP)
        .tools(["echo"])
        .scope(["admin"])
        .delegate_from(
            &GrantBuilder::new(
                agent(0xa0).public_key().to_bytes(),
                server_key(peers),
                "g-p",
                GRANT_EXP,
            )
            .tools(["echo"])
            .sign(server)
            .expect("sign"),
        )
        .sign(agent(0xa0).signing_key())
        .expect("sign");
    let claims = GrantClaims {
        iss: toolwire_protocol::grant::key_to_text(&server_key(peers)),
        sub: toolwire_protocol::grant::key_to_text(&client_key(peers)),
        aud: toolwire_protocol::grant::key_to_text(&server_key(peers)),
        jti: "g-f".into(),
        iat: None,
        nbf: None,
        exp: "2026-06-01T00:00:00Z".into(),
        tools: vec!["echo".into()],
        scope: vec![],
        sid: None,
        parent: None,
    };
    let claims_json = serde_json::to_vec(&claims).expect("json");
    let sign_raw = |message: &[u8], footer: &[u8]| {
        sign_v4_public(server, message, footer, GRANT_IMPLICIT_ASSERTION).into_bytes()
    };
    let array_claims = serde_json::to_vec(&serde_json::json!([
        claims.iss,
        claims.sub,
        claims.aud,
        claims.jti,
        null,
        null,
        claims.exp,
        claims.tools
    ]))
    .expect("json");
    vec![
        ("root_valid.bin", root_grant(peers).into_bytes()),
        (
            "root_nbf_iat_any_tool.bin",
            sign(
                builder()
                    .tools(["*"])
                    .issued_at(datetime!(2025-12-31 23:00 UTC))
                    .not_before(datetime!(2025-12-31 23:30:00.5 UTC)),
            ),
        ),
        ("chain_depth1.bin", chain1.into_bytes()),
        ("chain_depth3_max.bin", chain(peers, 3).into_bytes()),
        ("chain_depth4_too_deep.bin", chain(peers, 4).into_bytes()),
        ("session_bound.bin", sign(builder().session([0x5e; 32]))),
        (
            "expired.bin",
            sign(
                GrantBuilder::new(
                    client_key(peers),
                    server_key(peers),
                    "g-x",
                    datetime!(2025-12-31 23:59:59 UTC),
                )
                .tools(["echo"]),
            ),
        ),
        (
            "not_yet_valid.bin",
            sign(builder().not_before(datetime!(2026-01-01 00:00:01 UTC))),
        ),
        (
            "wrong_audience.bin",
            GrantBuilder::new(client_key(peers), client_key(peers), "g-a", GRANT_EXP)
                .tools(["echo"])
                .sign(server)
                .expect("sign")
                .into_bytes(),
        ),
        (
            "wrong_holder.bin",
            GrantBuilder::new(
                agent(0xa0).public_key().to_bytes(),
                server_key(peers),
                "g-h",
                GRANT_EXP,
            )
            .tools(["echo"])
            .sign(server)
            .expect("sign")
            .into_bytes(),
        ),
        (
            "untrusted_issuer.bin",
            builder()
                .sign(agent(0xee).signing_key())
                .expect("sign")
                .into_bytes(),
        ),
        ("widened_delegation.bin", widened.into_bytes()),
        (
            "with_footer.bin",
            sign_raw(&claims_json, b"{\"kid\":\"k1\"}"),
        ),
        ("claims_as_array.bin", sign_raw(&array_claims, b"")),
        ("claims_not_json.bin", sign_raw(b"{not json", b"")),
        ("bad_signature.bin", corrupt_signature(&root_grant(peers))),
        (
            "v4_local.bin",
            root_grant(peers)
                .replacen("v4.public.", "v4.local.", 1)
                .into_bytes(),
        ),
        ("header_only.bin", b"v4.public.".to_vec()),
        ("empty.bin", Vec::new()),
        ("max_len.bin", max_len_grant(peers)),
    ]
}

// ---------------------------------------------------------------------------------
// Client hello payloads

fn client_static_public(peers: &FixedPeers) -> [u8; 32] {
    KeyPair::from_secret_bytes(testing::client_static_secret_for_testing_only(
        &peers.client_config,
    ))
    .public_key()
}

fn client_hello(
    identity: &Identity,
    static_public: &[u8; 32],
    cap_request: CapRequest,
    resume: Option<Resume>,
) -> ClientHello {
    ClientHello {
        identity: ByteBuf::from(identity.public_key().to_bytes().to_vec()),
        signature: ByteBuf::from(
            identity
                .sign(&static_binding_message(CLIENT_STATIC_DOMAIN, static_public))
                .to_vec(),
        ),
        cap_request,
        resume,
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    rmp_serde::to_vec_named(value).expect("encodes")
}

fn client_hello_seeds(peers: &FixedPeers) -> Vec<(&'static str, Vec<u8>)> {
    let static_public = client_static_public(peers);
    let hello = |cap_request, resume| {
        encode(&client_hello(
            &peers.client_identity,
            &static_public,
            cap_request,
            resume,
        ))
    };
    let lineage = |len: usize| {
        Some(Resume {
            lineage: ByteBuf::from(vec![0x11; len]),
        })
    };
    let with_grants = CapRequest {
        tools: vec!["echo".into(), "*".into()],
        grants: vec![root_grant(peers), chain(peers, 1)],
    };
    let too_many = CapRequest {
        tools: vec![],
        grants: vec!["v4.public.x".into(); MAX_PRESENTED_GRANTS + 1],
    };
    let mut bad_signature = client_hello(
        &peers.client_identity,
        &static_public,
        CapRequest::default(),
        None,
    );
    bad_signature.signature[0] ^= 0x01;
    let unknown = client_hello(&agent(0xee), &static_public, CapRequest::default(), None);
    let mut short_identity = client_hello(
        &peers.client_identity,
        &static_public,
        CapRequest::default(),
        None,
    );
    short_identity.identity.pop();
    vec![
        ("hello_genuine.bin", hello(CapRequest::default(), None)),
        ("hello_with_grants.bin", hello(with_grants, None)),
        (
            "hello_resume.bin",
            hello(CapRequest::default(), lineage(16)),
        ),
        (
            "hello_resume_bad_lineage.bin",
            hello(CapRequest::default(), lineage(15)),
        ),
        ("hello_too_many_grants.bin", hello(too_many, None)),
        ("hello_bad_signature.bin", encode(&bad_signature)),
        ("hello_unknown_client.bin", encode(&unknown)),
        ("hello_short_identity.bin", encode(&short_identity)),
        (
            "hello_as_array.bin",
            rmp_serde::to_vec(&client_hello(
                &peers.client_identity,
                &static_public,
                CapRequest::default(),
                None,
            ))
            .expect("encodes"),
        ),
        ("empty.bin", Vec::new()),
    ]
}

// ---------------------------------------------------------------------------------
// All seeds

fn seeds() -> Seeds {
    let peers = peers();
    let mut seeds = Seeds::new();
    let genuine = handshake(&peers, peers.client_config.clone());
    let (_, _, session_id) = established(&peers);
    let messages = every_message(&peers, &session_id);
    let sealed = |ty| {
        header(RecordType::SEALED, 0, 0, 0)
            .iter()
            .copied()
            .chain(ty)
            .collect()
    };

    // record_header
    seeds.insert(
        "record_header",
        vec![
            ("empty.bin", Vec::new()),
            (
                "short_15.bin",
                header(RecordType::SEALED, 0, 0, 0)[..15].to_vec(),
            ),
            (
                "header_only_hs1.bin",
                header(RecordType::HANDSHAKE_1, 0, 0, 0),
            ),
            (
                "header_only_sealed.bin",
                header(RecordType::SEALED, 0, 0, 0),
            ),
            (
                "header_max_fields.bin",
                header(RecordType(0xff), u16::MAX, u32::MAX, u64::MAX),
            ),
            (
                "wrong_version.bin",
                with_body(vec![2; HEADER_LEN], &[0xaa; 4]),
            ),
            ("record1_genuine.bin", genuine.record1.clone()),
            (
                "sealed_genuine.bin",
                client_record(&peers, Message::Ping(Ping { nonce: 7 })),
            ),
        ],
    );

    // sealed_record: genuine client records at sequence 0, then broken ones.
    let mut sealed_records: Vec<(&'static str, Vec<u8>)> = Vec::new();
    for (name, message) in &messages {
        let file = match *name {
            "request" => "sealed_request.bin",
            "request_retry" => "sealed_request_retry.bin",
            "cap_request" => "sealed_cap_request.bin",
            "cancel" => "sealed_cancel.bin",
            "error" => "sealed_error.bin",
            "key_update" => "sealed_key_update.bin",
            "ping" => "sealed_ping.bin",
            "close" => "sealed_close.bin",
            // Server → client messages: the server refuses them after decryption.
            "response" => "sealed_response_wrong_direction.bin",
            _ => continue,
        };
        sealed_records.push((file, client_record(&peers, message.clone())));
    }
    let ping = client_record(&peers, Message::Ping(Ping { nonce: 7 }));
    let second = {
        let (mut client, _, _) = established(&peers);
        let now = Instant::now();
        client
            .send(now, Message::Cancel(Cancel { id: 1 }))
            .expect("send");
        client
            .send(now, Message::Cancel(Cancel { id: 2 }))
            .expect("send");
        let _ = client.poll_transmit();
        client.poll_transmit().expect("second record")
    };
    let from_server = {
        let (_, mut server, _) = established(&peers);
        server
            .send(Instant::now(), Message::Ping(Ping { nonce: 1 }))
            .expect("send");
        server.poll_transmit().expect("record")
    };
    let mut wrong_epoch = ping.clone();
    wrong_epoch[4] = 1;
    let mut reserved = ping.clone();
    reserved[2] = 1;
    sealed_records.extend([
        ("sealed_seq1_reordered.bin", second),
        ("sealed_from_server.bin", from_server),
        ("sealed_bad_tag.bin", flip_last(ping.clone())),
        ("sealed_wrong_epoch.bin", wrong_epoch),
        ("sealed_reserved_set.bin", reserved),
        ("sealed_seq_max.bin", {
            let mut r = ping.clone();
            r[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
            r
        }),
        ("header_only.bin", header(RecordType::SEALED, 0, 0, 0)),
        ("header_and_tag.bin", sealed([0u8; 16])),
        ("handshake_type.bin", genuine.record3.clone()),
        ("empty.bin", Vec::new()),
    ]);
    seeds.insert("sealed_record", sealed_records);

    // sealed_message and inner_message: plaintexts of every kind, then edge cases.
    let plaintexts: Vec<(&'static str, Vec<u8>)> = messages
        .iter()
        .map(|(name, message)| (plaintext_name(name), message.encode()))
        .chain(message_edge_cases())
        .collect();
    seeds.insert("sealed_message", plaintexts.clone());
    seeds.insert("inner_message", plaintexts);

    // handshake_message_1
    let mut zero_key = header(RecordType::HANDSHAKE_1, 0, 0, 0);
    zero_key.extend_from_slice(&[0u8; 32]);
    let mut long = genuine.record1.clone();
    long.push(0);
    let mut type3 = genuine.record1.clone();
    type3[1] = 3;
    let mut seq_set = genuine.record1.clone();
    seq_set[8] = 1;
    seeds.insert(
        "handshake_message_1",
        vec![
            ("record1_genuine.bin", genuine.record1.clone()),
            ("record1_zero_key.bin", zero_key),
            ("record1_long.bin", long),
            (
                "record1_truncated.bin",
                genuine.record1[..HEADER_LEN + 31].to_vec(),
            ),
            ("record1_wrong_type.bin", type3),
            ("record1_seq_set.bin", seq_set),
            ("header_only.bin", header(RecordType::HANDSHAKE_1, 0, 0, 0)),
            ("empty.bin", Vec::new()),
        ],
    );

    // handshake_message_2
    let mut type1 = genuine.record2.clone();
    type1[1] = 1;
    let mut flipped_key = genuine.record2.clone();
    flipped_key[HEADER_LEN] ^= 0x80;
    seeds.insert(
        "handshake_message_2",
        vec![
            ("record2_genuine.bin", genuine.record2.clone()),
            ("record2_bad_tag.bin", flip_last(genuine.record2.clone())),
            ("record2_flipped_key.bin", flipped_key),
            ("record2_wrong_type.bin", type1),
            (
                "record2_truncated.bin",
                genuine.record2[..HEADER_LEN + 32 + 48].to_vec(),
            ),
            ("header_only.bin", header(RecordType::HANDSHAKE_2, 0, 0, 0)),
            ("empty.bin", Vec::new()),
        ],
    );

    // handshake_message_3: the genuine record, and genuine records carrying grants,
    // a resumption lineage, or an identity the server does not allow.
    let with_grants = handshake(
        &peers,
        client_config_with(
            peers.client_identity.clone(),
            &peers,
            CapRequest {
                tools: vec!["*".into()],
                grants: vec![root_grant(&peers)],
            },
            None,
        ),
    );
    let resume = handshake(
        &peers,
        client_config_with(
            peers.client_identity.clone(),
            &peers,
            CapRequest::default(),
            Some([0x11; 16]),
        ),
    );
    let unknown = handshake(
        &peers,
        client_config_with(agent(0xee), &peers, CapRequest::default(), None),
    );
    seeds.insert(
        "handshake_message_3",
        vec![
            ("record3_genuine.bin", genuine.record3.clone()),
            ("record3_with_grants.bin", with_grants.record3),
            ("record3_resume.bin", resume.record3),
            ("record3_unknown_client.bin", unknown.record3),
            ("record3_bad_tag.bin", flip_last(genuine.record3.clone())),
            (
                "record3_truncated.bin",
                genuine.record3[..HEADER_LEN + 48].to_vec(),
            ),
            ("header_only.bin", header(RecordType::HANDSHAKE_3, 0, 0, 0)),
            ("empty.bin", Vec::new()),
        ],
    );

    seeds.insert("client_hello_payload", client_hello_seeds(&peers));
    seeds.insert("grant", grant_seeds(&peers));

    // manifest
    let manifest = manifest(&peers);
    let unicode = Manifest {
        server: ByteBuf::from(vec![0u8; 31]),
        tools: vec![ToolDescriptor {
            name: "überwerkzeug/🔧".into(),
            description: "\u{0}\u{202e}".into(),
            input_schema: "{".into(),
            output_schema: String::new(),
        }],
    };
    seeds.insert(
        "manifest",
        vec![
            ("manifest_genuine.bin", encode(&manifest)),
            (
                "manifest_signed_bytes.bin",
                manifest.sign(&peers.server_identity).manifest.into_vec(),
            ),
            (
                "manifest_as_array.bin",
                rmp_serde::to_vec(&manifest).expect("encodes"),
            ),
            (
                "manifest_no_tools.bin",
                encode(&Manifest {
                    server: manifest.server.clone(),
                    tools: vec![],
                }),
            ),
            ("manifest_unicode.bin", encode(&unicode)),
            ("empty.bin", Vec::new()),
        ],
    );
    seeds.insert("server_session", server_session_seeds());
    seeds
}

/// Programs for the `server_session` target (see `fuzzing::server_session`: one op
/// byte `% 12`, then its fields; a u64 is a length byte `% 8 + 1` and that many
/// little-endian bytes; a text is a selector byte, 3 = a length-prefixed string).
fn server_session_seeds() -> Vec<(&'static str, Vec<u8>)> {
    // REQUEST id 1, tool "echo", args {} (msgpack 0x80), no grant, no deadline, no
    // signature, retry false.
    let request = |id: u8| vec![0, 0, id, 0, 1, 0x80, 0, 0, 0, 0];
    let mut calls = Vec::new();
    for id in 1..=4 {
        calls.extend(request(id));
    }
    let mut replay = request(1);
    replay.extend([6, 0]);
    let mut rekey = request(1);
    // Time passes 5 min 1 s (301,000 ms = 0x0497c8: 3 bytes), then another call.
    rekey.extend([9, 2, 0xc8, 0x97, 0x04]);
    rekey.extend(request(2));
    let mut swapped = vec![11, 0, 1];
    swapped.extend(request(3));
    swapped.push(11);
    let mut mixed = request(7);
    mixed.extend([1, 0, 7]); // CANCEL 7
    mixed.extend([2, 0, 2, 3, 4, b'x', b'y', b'z', b'w', 0]); // CAP_REQUEST
    mixed.extend([3, 0, 9]); // PING 9
    mixed.extend([4, 0, 0, 1, 0]); // RESPONSE (a server-only kind)
    vec![
        ("session_calls.bin", calls),
        ("session_replay.bin", replay),
        ("session_rekey.bin", rekey),
        ("session_swapped.bin", swapped),
        ("session_mixed.bin", mixed),
        ("session_bit_flip.bin", vec![7, 0, 1, 0, 77]),
        ("session_truncated.bin", vec![8, 0, 1, 0, 20]),
        ("session_raw.bin", vec![5, 4, 1, 2, 3, 4]),
        ("session_sealed_garbage.bin", vec![10, 3, 0xc1, 0xff, 0x00]),
        (
            "session_idle.bin",
            vec![9, 2, 0x00, 0x5f, 0x01, 9, 2, 0x00, 0x5f, 0x01],
        ),
    ]
}

fn plaintext_name(kind: &str) -> &'static str {
    match kind {
        "cap_grant" => "cap_grant.bin",
        "cap_update" => "cap_update.bin",
        "cap_request" => "cap_request.bin",
        "request" => "request.bin",
        "request_retry" => "request_retry.bin",
        "response" => "response.bin",
        "stream_item" => "stream_item.bin",
        "error" => "error.bin",
        "cancel" => "cancel.bin",
        "key_update" => "key_update.bin",
        "ping" => "ping.bin",
        "pong" => "pong.bin",
        "close" => "close.bin",
        other => panic!("no seed name for message kind {other}"),
    }
}

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(CORPUS).join(target)
}

#[test]
fn fuzz_seeds_are_present_and_current() {
    let seeds = seeds();
    for (name, _) in toolwire_protocol::fuzzing::TARGETS {
        assert!(
            seeds.get(name).is_some_and(|s| !s.is_empty()),
            "no seeds generated for fuzz target {name}"
        );
    }
    let regenerate = std::env::var_os(REGENERATE).is_some_and(|v| v == "1");
    let mut problems = Vec::new();
    for (target, files) in &seeds {
        let dir = corpus_dir(target);
        if regenerate {
            std::fs::create_dir_all(&dir).expect("create corpus directory");
        }
        for (file, bytes) in files {
            let path = dir.join(file);
            if regenerate {
                std::fs::write(&path, bytes).expect("write seed");
                continue;
            }
            match std::fs::read(&path) {
                Ok(found) if &found == bytes => {}
                Ok(_) => problems.push(format!("{target}/{file} is stale")),
                Err(_) => problems.push(format!("{target}/{file} is missing")),
            }
        }
    }
    assert!(
        problems.is_empty(),
        "fuzz seed corpus out of date ({}); regenerate with\n  \
         {REGENERATE}=1 cargo test -p toolwire-protocol --test fuzz_seeds\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn seed_names_are_unique() {
    for (target, files) in seeds() {
        let mut names: Vec<_> = files.iter().map(|(name, _)| *name).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "duplicate seed name for {target}");
    }
}

/// Feeds `payload` as the plaintext of handshake message 3, exactly as the
/// `client_hello_payload` target does, and returns the server's verdict.
fn server_verdict_on_client_hello(
    peers: &FixedPeers,
    payload: &[u8],
) -> Result<(), toolwire_protocol::Error> {
    use toolwire_protocol::handshake::prologue;
    use toolwire_protocol::noise::{HandshakeState, Role};
    let now = Instant::now();
    let mut initiator = HandshakeState::new(
        Role::Initiator,
        &prologue(testing::FIXED_ENDPOINT, toolwire_protocol::SUBPROTOCOL),
        KeyPair::from_secret_bytes(testing::client_static_secret_for_testing_only(
            &peers.client_config,
        )),
        KeyPair::from_secret_bytes(testing::FIXED_CLIENT_EPHEMERAL),
    );
    let mut server = testing::server_with_fixed_ephemeral_for_testing_only(
        peers.server_config.clone(),
        testing::FIXED_SERVER_EPHEMERAL,
        now,
        testing::FIXED_UNIX_TIME,
    );
    let mut message = Vec::new();
    initiator
        .write_message(&[], &mut message)
        .expect("message 1");
    server
        .handle_record(
            now,
            &with_body(header(RecordType::HANDSHAKE_1, 0, 0, 0), &message),
        )
        .expect("record 1");
    let reply = server.poll_transmit().expect("record 2");
    let mut ignored = Vec::new();
    initiator
        .read_message(&reply[HEADER_LEN..], &mut ignored)
        .expect("message 2");
    let mut message = Vec::new();
    initiator
        .write_message(payload, &mut message)
        .expect("message 3");
    server.handle_record(
        now,
        &with_body(header(RecordType::HANDSHAKE_3, 0, 0, 0), &message),
    )
}

/// The "genuine" seeds really get past the checks they are meant to get past, with
/// the fixtures the fuzz entry points use; some negative seeds fail where intended.
#[test]
fn genuine_seeds_are_accepted_by_the_fuzz_fixtures() {
    use toolwire_protocol::grant::{verify_grant, GrantError, VerifyContext};
    let peers = peers();
    let seeds = seeds();
    let seed = |target: &str, file: &str| -> Vec<u8> {
        seeds[target]
            .iter()
            .find(|(name, _)| *name == file)
            .map(|(_, bytes)| bytes.clone())
            .unwrap_or_else(|| panic!("no seed {target}/{file}"))
    };

    // grant: same context as `fuzzing::grant`.
    let issuers = [server_key(&peers)];
    let context = VerifyContext {
        trusted_issuers: &issuers,
        audience: server_key(&peers),
        holder: client_key(&peers),
        now_unix: testing::FIXED_UNIX_TIME,
        session_id: None,
        max_clock_skew_secs: 0,
    };
    let verify =
        |file: &str| verify_grant(&String::from_utf8_lossy(&seed("grant", file)), &context);
    for file in [
        "root_valid.bin",
        "root_nbf_iat_any_tool.bin",
        "chain_depth1.bin",
        "chain_depth3_max.bin",
        "max_len.bin",
    ] {
        assert!(verify(file).is_ok(), "grant/{file}: {:?}", verify(file));
    }
    for (file, error) in [
        ("chain_depth4_too_deep.bin", GrantError::ChainTooDeep),
        ("session_bound.bin", GrantError::WrongSession),
        ("expired.bin", GrantError::Expired),
        ("not_yet_valid.bin", GrantError::NotYetValid),
        ("wrong_audience.bin", GrantError::WrongAudience),
        ("wrong_holder.bin", GrantError::WrongHolder),
        ("untrusted_issuer.bin", GrantError::UntrustedIssuer),
        ("widened_delegation.bin", GrantError::WidenedDelegation),
        ("bad_signature.bin", GrantError::BadSignature),
        ("with_footer.bin", GrantError::Malformed("footer")),
    ] {
        assert_eq!(verify(file), Err(error), "grant/{file}");
    }

    // sealed_record: genuine records open at a fresh established server.
    for file in [
        "sealed_request.bin",
        "sealed_request_retry.bin",
        "sealed_cap_request.bin",
        "sealed_cancel.bin",
        "sealed_error.bin",
        "sealed_key_update.bin",
        "sealed_ping.bin",
        "sealed_close.bin",
    ] {
        let (_, mut server, _) = established(&peers);
        let result = server.handle_record(Instant::now(), &seed("sealed_record", file));
        assert!(result.is_ok(), "sealed_record/{file}: {result:?}");
    }

    // inner_message: every kind decodes.
    for (name, _) in every_message(&peers, &[0; 32]) {
        let file = plaintext_name(name);
        assert!(
            Message::decode(&seed("inner_message", file)).is_ok(),
            "inner_message/{file}"
        );
    }

    // handshake records: each genuine record is accepted at the target's state.
    let now = Instant::now();
    let new_server = || {
        testing::server_with_fixed_ephemeral_for_testing_only(
            peers.server_config.clone(),
            testing::FIXED_SERVER_EPHEMERAL,
            now,
            testing::FIXED_UNIX_TIME,
        )
    };
    let mut server = new_server();
    server
        .handle_record(now, &seed("handshake_message_1", "record1_genuine.bin"))
        .expect("record 1 accepted");
    let mut client = testing::client_with_fixed_ephemeral_for_testing_only(
        peers.client_config.clone(),
        testing::FIXED_CLIENT_EPHEMERAL,
        now,
    );
    let _ = client.poll_transmit();
    client
        .handle_record(now, &seed("handshake_message_2", "record2_genuine.bin"))
        .expect("record 2 accepted");
    for (file, accepted) in [
        ("record3_genuine.bin", true),
        ("record3_with_grants.bin", true),
        ("record3_resume.bin", true),
        ("record3_unknown_client.bin", false),
    ] {
        let mut server = new_server();
        server
            .handle_record(now, &seed("handshake_message_1", "record1_genuine.bin"))
            .expect("record 1 accepted");
        let result = server.handle_record(now, &seed("handshake_message_3", file));
        assert_eq!(
            result.is_ok(),
            accepted,
            "handshake_message_3/{file}: {result:?}"
        );
        if accepted {
            assert!(server.is_established());
        }
    }

    // client_hello_payload
    for (file, accepted) in [
        ("hello_genuine.bin", true),
        ("hello_with_grants.bin", true),
        ("hello_resume.bin", true),
        ("hello_as_array.bin", true),
        ("hello_resume_bad_lineage.bin", false),
        ("hello_too_many_grants.bin", false),
        ("hello_bad_signature.bin", false),
        ("hello_unknown_client.bin", false),
    ] {
        let result = server_verdict_on_client_hello(&peers, &seed("client_hello_payload", file));
        assert_eq!(
            result.is_ok(),
            accepted,
            "client_hello_payload/{file}: {result:?}"
        );
    }

    // manifest
    for file in [
        "manifest_genuine.bin",
        "manifest_signed_bytes.bin",
        "manifest_as_array.bin",
    ] {
        assert!(
            rmp_serde::from_slice::<Manifest>(&seed("manifest", file)).is_ok(),
            "manifest/{file}"
        );
    }
}
