//! Spec section 1, "Conventions" (CNV): how structures are encoded on the wire and
//! what a receiver makes of every msgpack spelling. Inner messages are decoded with
//! `Message::decode` (a malformed one closes with PROTOCOL_VIOLATION, 4010, REC-032);
//! handshake payloads are put into real handshakes by a hand-driven Noise peer (a
//! malformed one closes with HANDSHAKE_FAILED, 4000).

mod common;
mod spec_support;

use common::*;
use serde_bytes::ByteBuf;
use spec_support::{mp, read_exactly_one, tap, ManualInitiator, ManualResponder, Mp};
use toolwire_protocol::error::Malformed;
use toolwire_protocol::handshake::{
    static_binding_message, CLIENT_STATIC_DOMAIN, SERVER_STATIC_DOMAIN,
};
use toolwire_protocol::message::{
    CallLimits, Cancel, CapGrant, CapRequest, CapUpdate, Close, ErrorMessage, GrantedTool,
    KeyUpdate, Ping, Request, Response, SignedManifest, StreamItem,
};
use toolwire_protocol::testing;
use toolwire_protocol::{CloseCode, Error, Message};

const MALFORMED: Error = Error::Malformed(Malformed::Message);

/// Named msgpack map entries.
type Fields = Vec<(&'static str, Vec<u8>)>;

/// One message of every kind with every optional field present.
fn every_kind() -> Vec<Message> {
    let granted = vec![GrantedTool {
        name: "search".into(),
        digest: ByteBuf::from(vec![0xd1; 32]),
    }];
    let manifest = SignedManifest {
        manifest: ByteBuf::from(vec![0x80]),
        signature: ByteBuf::from(vec![0x5a; 64]),
    };
    vec![
        Message::CapGrant(CapGrant {
            granted: granted.clone(),
            limits: CallLimits {
                rate_per_sec: 100,
                burst: 200,
                max_in_flight: 64,
            },
            expires_at_ms: Some(1_767_225_600_000),
            policy_version: 3,
            manifest: manifest.clone(),
        }),
        Message::CapUpdate(CapUpdate {
            granted,
            revoked: vec!["delete".into()],
            policy_version: 4,
            manifest: Some(manifest),
        }),
        Message::CapRequest(CapRequest {
            tools: vec!["search".into()],
            grants: vec!["v4.public.x".into()],
        }),
        Message::Request(Request {
            id: 7,
            tool: "search".into(),
            args: ByteBuf::from(vec![0x91, 0x01]),
            grant_id: Some("grant-1".into()),
            deadline_ms: Some(500),
            signature: Some(ByteBuf::from(vec![0x51; 64])),
            retry: true,
        }),
        Message::Response(Response {
            id: 7,
            result: ByteBuf::from(vec![0xc3]),
            signature: Some(ByteBuf::from(vec![0x52; 64])),
        }),
        Message::StreamItem(StreamItem {
            id: 7,
            index: 2,
            data: ByteBuf::from(vec![0x05]),
        }),
        Message::Error(ErrorMessage {
            id: Some(7),
            code: 8,
            message: "slow down".into(),
            retry_after_ms: Some(100),
        }),
        Message::Cancel(Cancel { id: 7 }),
        Message::KeyUpdate(KeyUpdate { epoch: 1 }),
        Message::Ping(Ping { nonce: 1 }),
        Message::Pong(Ping { nonce: 1 }),
        Message::Close(Close {
            code: 1000,
            reason: "bye".into(),
        }),
    ]
}

/// The field names of each kind's body, as the spec's tables write them.
fn body_fields(kind: &str) -> &'static [&'static str] {
    match kind {
        "CAP_GRANT" => &[
            "granted",
            "limits",
            "expires_at_ms",
            "policy_version",
            "manifest",
        ],
        "CAP_UPDATE" => &["granted", "revoked", "policy_version", "manifest"],
        "CAP_REQUEST" => &["tools", "grants"],
        "REQUEST" => &[
            "id",
            "tool",
            "args",
            "grant_id",
            "deadline_ms",
            "signature",
            "retry",
        ],
        "RESPONSE" => &["id", "result", "signature"],
        "STREAM_ITEM" => &["id", "index", "data"],
        "ERROR" => &["id", "code", "message", "retry_after_ms"],
        "CANCEL" => &["id"],
        "KEY_UPDATE" => &["epoch"],
        "PING" | "PONG" => &["nonce"],
        "CLOSE" => &["code", "reason"],
        other => panic!("unknown kind {other}"),
    }
}

/// The `bin` fields of each kind's body (top level of the body).
fn bin_fields(kind: &str) -> &'static [&'static str] {
    match kind {
        "REQUEST" => &["args", "signature"],
        "RESPONSE" => &["result", "signature"],
        "STREAM_ITEM" => &["data"],
        _ => &[],
    }
}

fn assert_bin(value: &Mp, what: &str) {
    assert!(
        matches!(value, Mp::Bin(_)),
        "{what} is not msgpack bin: {value:?}"
    );
}

fn assert_str_keys(value: &Mp, expected: &[&str], what: &str) {
    let mut keys = value.str_keys();
    keys.sort();
    let mut expected: Vec<String> = expected.iter().map(|key| (*key).to_owned()).collect();
    expected.sort();
    assert_eq!(keys, expected, "{what}");
}

/// Clauses: CNV-001, CNV-002, MSG-001 — every message kind is a map of exactly
/// `type` (a str naming the kind) and `body`, whose keys are the field names of its
/// table as str, and every `bin` field (arguments, results, data, signatures,
/// digests, manifest bytes) is msgpack bin.
#[test]
fn every_message_kind_is_a_named_map_with_str_keys_and_bin_byte_fields() {
    for message in every_kind() {
        let kind = message.kind();
        let value = read_exactly_one(&message.encode()).expect("one msgpack value");
        assert_str_keys(&value, &["type", "body"], kind);
        assert_eq!(value.get("type"), Some(&Mp::Str(kind.as_bytes().to_vec())));
        let body = value.get("body").expect("body");
        assert_str_keys(body, body_fields(kind), kind);
        for field in bin_fields(kind) {
            assert_bin(
                body.get(field).expect("present"),
                &format!("{kind}.{field}"),
            );
        }
        if matches!(kind, "CAP_GRANT" | "CAP_UPDATE") {
            let Some(Mp::Array(granted)) = body.get("granted") else {
                panic!("{kind}.granted is not an array");
            };
            for tool in granted {
                assert_str_keys(tool, &["name", "digest"], "GrantedTool");
                assert_bin(tool.get("digest").expect("digest"), "GrantedTool.digest");
            }
            let manifest = body.get("manifest").expect("manifest");
            assert_str_keys(manifest, &["manifest", "signature"], "SignedManifest");
            assert_bin(manifest.get("manifest").expect("bytes"), "manifest");
            assert_bin(
                manifest.get("signature").expect("sig"),
                "manifest signature",
            );
        }
        if kind == "CAP_GRANT" {
            let limits = body.get("limits").expect("limits");
            assert_str_keys(
                limits,
                &["rate_per_sec", "burst", "max_in_flight"],
                "CallLimits",
            );
        }
    }
}

/// The handshake records of the fixed pair (a lineage resumed, so that `resume` is
/// on the wire) and what a wiretap reads from them.
fn tapped_handshake() -> spec_support::Tap {
    let peers = testing::fixed_peers_for_testing_only();
    let client_config = std::sync::Arc::new(
        testing::client_config_with_static_secret_for_testing_only(
            peers.client_identity.clone(),
            vec![peers.server_identity.public_key()],
            testing::FIXED_ENDPOINT,
            testing::client_static_secret_for_testing_only(&peers.client_config),
        )
        .with_lineage([0x1d; 16])
        .with_cap_request(CapRequest {
            tools: vec!["search".into()],
            grants: Vec::new(),
        }),
    );
    let mut client = testing::client_with_fixed_ephemeral_for_testing_only(
        client_config,
        testing::FIXED_CLIENT_EPHEMERAL,
        base_instant(),
    );
    let mut server = testing::server_with_fixed_ephemeral_for_testing_only(
        peers.server_config.clone(),
        testing::FIXED_SERVER_EPHEMERAL,
        base_instant(),
        UNIX_TIME,
    );
    let now = base_instant();
    let record_1 = client.poll_transmit().expect("record 1");
    server.handle_record(now, &record_1).expect("record 1");
    let record_2 = server.poll_transmit().expect("record 2");
    client.handle_record(now, &record_2).expect("record 2");
    let record_3 = client.poll_transmit().expect("record 3");
    server.handle_record(now, &record_3).expect("record 3");
    tap(
        &peers,
        testing::FIXED_ENDPOINT,
        &[record_1, record_2, record_3],
    )
}

/// Clauses: CNV-001, CNV-002 — the handshake payloads a real pair exchanges are
/// named maps with str keys (ServerHello, SessionParams, ClientHello, CapRequest,
/// Resume) and their keys, signatures and lineage id are msgpack bin.
#[test]
fn handshake_payloads_are_named_maps_with_bin_keys_and_signatures() {
    let tap = tapped_handshake();
    let server_hello = read_exactly_one(&tap.payload_2).expect("one value");
    assert_str_keys(
        &server_hello,
        &["identity", "signature", "params"],
        "ServerHello",
    );
    assert_bin(
        server_hello.get("identity").expect("identity"),
        "ServerHello.identity",
    );
    assert_bin(
        server_hello.get("signature").expect("signature"),
        "ServerHello.signature",
    );
    assert_str_keys(
        server_hello.get("params").expect("params"),
        &["max_record_body", "session_lifetime_ms", "idle_timeout_ms"],
        "SessionParams",
    );
    let client_hello = read_exactly_one(&tap.payload_3).expect("one value");
    assert_str_keys(
        &client_hello,
        &["identity", "signature", "cap_request", "resume"],
        "ClientHello",
    );
    assert_bin(
        client_hello.get("identity").expect("identity"),
        "ClientHello.identity",
    );
    assert_bin(
        client_hello.get("signature").expect("signature"),
        "ClientHello.signature",
    );
    assert_str_keys(
        client_hello.get("cap_request").expect("cap_request"),
        &["tools", "grants"],
        "CapRequest",
    );
    let resume = client_hello.get("resume").expect("resume");
    assert_str_keys(resume, &["lineage"], "Resume");
    assert_bin(resume.get("lineage").expect("lineage"), "Resume.lineage");
}

fn decode(bytes: &[u8]) -> Result<Message, Error> {
    Message::decode(bytes)
}

fn ping(nonce: Vec<u8>) -> Vec<u8> {
    mp::message("PING", mp::map(&[("nonce", nonce)]))
}

fn request_body(extra: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut entries = vec![
        ("id", mp::uint(7)),
        ("tool", mp::str("search")),
        ("args", mp::bin(&[0x90])),
    ];
    entries.extend(extra.iter().cloned());
    mp::map(&entries)
}

/// Clauses: CNV-005 — an optional field encoded as nil reads exactly as if it were
/// absent, in every structure that has one.
#[test]
fn nil_optional_fields_read_as_absent() {
    let cases: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (
            mp::message(
                "REQUEST",
                request_body(&[
                    ("grant_id", mp::nil()),
                    ("deadline_ms", mp::nil()),
                    ("signature", mp::nil()),
                ]),
            ),
            mp::message("REQUEST", request_body(&[])),
        ),
        (
            mp::message(
                "RESPONSE",
                mp::map(&[
                    ("id", mp::uint(1)),
                    ("result", mp::bin(&[0xc0])),
                    ("signature", mp::nil()),
                ]),
            ),
            mp::message(
                "RESPONSE",
                mp::map(&[("id", mp::uint(1)), ("result", mp::bin(&[0xc0]))]),
            ),
        ),
        (
            mp::message(
                "ERROR",
                mp::map(&[
                    ("id", mp::nil()),
                    ("code", mp::uint(14)),
                    ("retry_after_ms", mp::nil()),
                ]),
            ),
            mp::message("ERROR", mp::map(&[("code", mp::uint(14))])),
        ),
        (
            mp::message("CAP_GRANT", cap_grant_body(&[("expires_at_ms", mp::nil())])),
            mp::message("CAP_GRANT", cap_grant_body(&[])),
        ),
        (
            mp::message(
                "CAP_UPDATE",
                mp::map(&[
                    ("granted", mp::array(&[])),
                    ("policy_version", mp::uint(2)),
                    ("manifest", mp::nil()),
                ]),
            ),
            mp::message(
                "CAP_UPDATE",
                mp::map(&[("granted", mp::array(&[])), ("policy_version", mp::uint(2))]),
            ),
        ),
    ];
    for (with_nil, without) in cases {
        let expected = decode(&without).expect("the form without the field decodes");
        assert_eq!(decode(&with_nil), Ok(expected));
    }
}

fn cap_grant_body(extra: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut entries = vec![
        (
            "granted",
            mp::array(&[mp::map(&[
                ("name", mp::str("search")),
                ("digest", mp::bin(&[0xd1; 32])),
            ])]),
        ),
        (
            "limits",
            mp::map(&[
                ("rate_per_sec", mp::uint(100)),
                ("burst", mp::uint(200)),
                ("max_in_flight", mp::uint(64)),
            ]),
        ),
        ("policy_version", mp::uint(1)),
        (
            "manifest",
            mp::map(&[
                ("manifest", mp::bin(&[0x80])),
                ("signature", mp::bin(&[0; 64])),
            ]),
        ),
    ];
    entries.extend(extra.iter().cloned());
    mp::map(&entries)
}

/// Values of every msgpack type, for unknown fields.
fn values_of_every_type() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("nil", mp::nil()),
        ("true", mp::boolean(true)),
        ("fixint", mp::uint(3)),
        ("uint64", mp::u64_form(u64::MAX)),
        ("negative fixint", mp::negative_fixint(-5)),
        ("int64", mp::i64_form(i64::MIN)),
        ("float64", mp::f64_form(1.5)),
        ("float32", vec![0xca, 0x3f, 0xc0, 0x00, 0x00]),
        ("str", mp::str("future")),
        ("invalid UTF-8 str", mp::str_bytes(&[0xff, 0xfe, 0x80])),
        ("str 8", mp::str_bytes(&[b'x'; 40])),
        ("bin", mp::bin(&[1, 2, 3])),
        ("bin 32", mp::bin32(&[4; 5])),
        ("empty array", mp::array(&[])),
        (
            "array",
            mp::array(&[mp::uint(1), mp::str("two"), mp::nil()]),
        ),
        ("map", mp::map(&[("a", mp::uint(1)), ("b", mp::array(&[]))])),
        (
            "map with int keys",
            mp::map_raw(&[(mp::uint(1), mp::uint(2))]),
        ),
        ("fixext 1", mp::ext(1, &[0xaa])),
        ("fixext 16", mp::ext(-1, &[0xbb; 16])),
        ("ext 8", mp::ext(42, &[0xcc; 3])),
        ("timestamp ext", mp::ext(-1, &[0, 0, 0, 1])),
        ("nested arrays", mp::nested_arrays(20)),
    ]
}

/// Clauses: CNV-006 — an unknown key is ignored whatever the msgpack type of its
/// value (ext and invalid UTF-8 included), in a message body, in nested structures
/// (CallLimits, GrantedTool, SignedManifest) and next to `type` and `body`.
#[test]
fn unknown_keys_are_ignored_whatever_their_value() {
    let expected_ping = Message::Ping(Ping { nonce: 5 });
    let expected_grant = decode(&mp::message("CAP_GRANT", cap_grant_body(&[]))).expect("valid");
    for (name, value) in values_of_every_type() {
        let body = mp::map(&[("nonce", mp::uint(5)), ("future_field", value.clone())]);
        assert_eq!(
            decode(&mp::message("PING", body)),
            Ok(expected_ping.clone()),
            "body field holding {name}"
        );
        // Before the known field too.
        let body = mp::map(&[("future_field", value.clone()), ("nonce", mp::uint(5))]);
        assert_eq!(
            decode(&mp::message("PING", body)),
            Ok(expected_ping.clone()),
            "leading body field holding {name}"
        );
        // Next to type and body.
        let top = mp::map(&[
            ("type", mp::str("PING")),
            ("future_field", value.clone()),
            ("body", mp::map(&[("nonce", mp::uint(5))])),
        ]);
        assert_eq!(
            decode(&top),
            Ok(expected_ping.clone()),
            "top-level field holding {name}"
        );
        // Inside nested structures of CAP_GRANT.
        let granted = mp::array(&[mp::map(&[
            ("name", mp::str("search")),
            ("x", value.clone()),
            ("digest", mp::bin(&[0xd1; 32])),
        ])]);
        let limits = mp::map(&[
            ("rate_per_sec", mp::uint(100)),
            ("burst", mp::uint(200)),
            ("x", value.clone()),
            ("max_in_flight", mp::uint(64)),
        ]);
        let manifest = mp::map(&[
            ("manifest", mp::bin(&[0x80])),
            ("x", value.clone()),
            ("signature", mp::bin(&[0; 64])),
        ]);
        let body = mp::map(&[
            ("granted", granted),
            ("limits", limits),
            ("policy_version", mp::uint(1)),
            ("manifest", manifest),
        ]);
        assert_eq!(
            decode(&mp::message("CAP_GRANT", body)),
            Ok(expected_grant.clone()),
            "nested field holding {name}"
        );
    }
    // The unknown key itself may be any str, even one that is not UTF-8, or not a
    // str at all.
    for key in [
        mp::str_bytes(&[0xc3, 0x28]),
        mp::str(""),
        mp::str("NONCE"),
        mp::uint(9),
        mp::bin(b"nonce2"),
    ] {
        let body = mp::map_raw(&[(mp::str("nonce"), mp::uint(5)), (key.clone(), mp::uint(1))]);
        assert_eq!(
            decode(&mp::message("PING", body)),
            Ok(expected_ping.clone()),
            "unknown key {key:02x?}"
        );
    }
}

/// Clauses: CNV-007 — every msgpack integer format is accepted for an integer
/// field when the value is non-negative and fits: u64, u32 and u16 fields alike.
#[test]
fn every_integer_format_is_accepted_for_a_value_that_fits() {
    let five: Vec<(&str, Vec<u8>)> = vec![
        ("positive fixint", mp::uint(5)),
        ("uint 8", mp::u8_form(5)),
        ("uint 16", mp::u16_form(5)),
        ("uint 32", mp::u32_form(5)),
        ("uint 64", mp::u64_form(5)),
        ("int 8", mp::i8_form(5)),
        ("int 16", mp::i16_form(5)),
        ("int 32", mp::i32_form(5)),
        ("int 64", mp::i64_form(5)),
    ];
    for (name, value) in &five {
        assert_eq!(
            decode(&ping(value.clone())),
            Ok(Message::Ping(Ping { nonce: 5 })),
            "PING.nonce (u64) as {name}"
        );
        assert_eq!(
            decode(&mp::message(
                "KEY_UPDATE",
                mp::map(&[("epoch", value.clone())])
            )),
            Ok(Message::KeyUpdate(KeyUpdate { epoch: 5 })),
            "KEY_UPDATE.epoch (u32) as {name}"
        );
        assert_eq!(
            decode(&mp::message("CLOSE", mp::map(&[("code", value.clone())]))),
            Ok(Message::Close(Close {
                code: 5,
                reason: String::new()
            })),
            "CLOSE.code (u16) as {name}"
        );
    }
    // The largest values of each width, in wider formats.
    assert_eq!(
        decode(&ping(mp::u64_form(u64::MAX))),
        Ok(Message::Ping(Ping { nonce: u64::MAX }))
    );
    assert_eq!(
        decode(&ping(mp::i64_form(i64::MAX))),
        Ok(Message::Ping(Ping {
            nonce: i64::MAX as u64
        }))
    );
    assert_eq!(
        decode(&mp::message(
            "KEY_UPDATE",
            mp::map(&[("epoch", mp::u64_form(u64::from(u32::MAX)))])
        )),
        Ok(Message::KeyUpdate(KeyUpdate { epoch: u32::MAX }))
    );
    assert_eq!(
        decode(&mp::message(
            "CLOSE",
            mp::map(&[("code", mp::i32_form(65_535))])
        )),
        Ok(Message::Close(Close {
            code: 65_535,
            reason: String::new()
        }))
    );
}

/// Clauses: CNV-008, MSG-003 — a structure without one of its required fields is
/// malformed, for every required field of every kind (a missing `body` included).
#[test]
fn a_missing_required_field_is_malformed() {
    let required: Vec<(&str, Fields)> = vec![
        (
            "REQUEST",
            vec![
                ("id", mp::uint(1)),
                ("tool", mp::str("t")),
                ("args", mp::bin(&[0x90])),
            ],
        ),
        (
            "RESPONSE",
            vec![("id", mp::uint(1)), ("result", mp::bin(&[0xc0]))],
        ),
        (
            "STREAM_ITEM",
            vec![
                ("id", mp::uint(1)),
                ("index", mp::uint(0)),
                ("data", mp::bin(&[0xc0])),
            ],
        ),
        ("ERROR", vec![("code", mp::uint(2))]),
        ("CANCEL", vec![("id", mp::uint(1))]),
        ("KEY_UPDATE", vec![("epoch", mp::uint(1))]),
        ("PING", vec![("nonce", mp::uint(1))]),
        ("PONG", vec![("nonce", mp::uint(1))]),
        ("CLOSE", vec![("code", mp::uint(1000))]),
        (
            "CAP_UPDATE",
            vec![("granted", mp::array(&[])), ("policy_version", mp::uint(1))],
        ),
    ];
    for (kind, fields) in required {
        let complete = mp::message(kind, mp::map(&fields));
        assert!(
            decode(&complete).is_ok(),
            "{kind} with every required field"
        );
        for missing in 0..fields.len() {
            let mut partial = fields.clone();
            let (name, _) = partial.remove(missing);
            assert_eq!(
                decode(&mp::message(kind, mp::map(&partial))),
                Err(MALFORMED),
                "{kind} without {name}"
            );
        }
        assert_eq!(
            decode(&mp::map(&[("type", mp::str(kind))])),
            Err(MALFORMED),
            "{kind} without body"
        );
        assert_eq!(
            decode(&mp::map(&[("body", mp::map(&fields))])),
            Err(MALFORMED),
            "{kind} body without type"
        );
    }
    let cap_grant_fields = ["granted", "limits", "policy_version", "manifest"];
    for missing in cap_grant_fields {
        let body = match read_exactly_one(&cap_grant_body(&[])).expect("map") {
            Mp::Map(entries) => entries,
            _ => unreachable!(),
        };
        let kept: Vec<(Vec<u8>, Vec<u8>)> = body
            .into_iter()
            .filter(|(key, _)| *key != Mp::Str(missing.as_bytes().to_vec()))
            .map(|(key, value)| (reencode(&key), reencode(&value)))
            .collect();
        assert_eq!(
            decode(&mp::message("CAP_GRANT", mp::map_raw(&kept))),
            Err(MALFORMED),
            "CAP_GRANT without {missing}"
        );
    }
    // Inside nested structures.
    let limits_without_burst = mp::map(&[
        ("granted", mp::array(&[])),
        (
            "limits",
            mp::map(&[
                ("rate_per_sec", mp::uint(1)),
                ("max_in_flight", mp::uint(1)),
            ]),
        ),
        ("policy_version", mp::uint(1)),
        (
            "manifest",
            mp::map(&[("manifest", mp::bin(&[])), ("signature", mp::bin(&[]))]),
        ),
    ]);
    assert_eq!(
        decode(&mp::message("CAP_GRANT", limits_without_burst)),
        Err(MALFORMED)
    );
}

/// Re-encodes a value read by `read_exactly_one` (maps, arrays, ints, str, bin).
fn reencode(value: &Mp) -> Vec<u8> {
    match value {
        Mp::Nil => mp::nil(),
        Mp::Bool(b) => mp::boolean(*b),
        Mp::UInt(n) => mp::uint(*n),
        Mp::Int(n) => mp::i64_form(*n),
        Mp::Float(f) => mp::f64_form(*f),
        Mp::Str(bytes) => mp::str_bytes(bytes),
        Mp::Bin(bytes) => mp::bin(bytes),
        Mp::Array(items) => mp::array(&items.iter().map(reencode).collect::<Vec<_>>()),
        Mp::Map(entries) => mp::map_raw(
            &entries
                .iter()
                .map(|(key, value)| (reencode(key), reencode(value)))
                .collect::<Vec<_>>(),
        ),
        Mp::Ext(kind, data) => mp::ext(*kind, data),
    }
}

/// Clauses: CNV-009 — a known field whose value does not have its type is
/// malformed: negative integers, integers too wide for the field (a u16 of 70000, a
/// u32 of 2^32), floats for integers, and values of other msgpack types.
#[test]
fn a_value_of_the_wrong_type_is_malformed() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("negative nonce", ping(mp::negative_fixint(-1))),
        ("negative nonce (int 64)", ping(mp::i64_form(-1))),
        ("float nonce", ping(mp::f64_form(5.0))),
        ("float32 nonce", ping(vec![0xca, 0x40, 0xa0, 0x00, 0x00])),
        ("str nonce", ping(mp::str("5"))),
        ("bool nonce", ping(mp::boolean(true))),
        ("nil nonce", ping(mp::nil())),
        ("array nonce", ping(mp::array(&[mp::uint(5)]))),
        (
            "close code 70000 (u16)",
            mp::message("CLOSE", mp::map(&[("code", mp::uint(70_000))])),
        ),
        (
            "close code -1",
            mp::message("CLOSE", mp::map(&[("code", mp::negative_fixint(-1))])),
        ),
        (
            "epoch 2^32 (u32)",
            mp::message("KEY_UPDATE", mp::map(&[("epoch", mp::uint(1 << 32))])),
        ),
        (
            "error code 2^32 (u32)",
            mp::message("ERROR", mp::map(&[("code", mp::uint(1 << 32))])),
        ),
        (
            "tool as an integer",
            mp::message(
                "REQUEST",
                mp::map(&[
                    ("id", mp::uint(1)),
                    ("tool", mp::uint(1)),
                    ("args", mp::bin(&[0x90])),
                ]),
            ),
        ),
        (
            "retry as an integer",
            mp::message("REQUEST", request_body(&[("retry", mp::uint(1))])),
        ),
        (
            "args as a map",
            mp::message(
                "REQUEST",
                mp::map(&[
                    ("id", mp::uint(1)),
                    ("tool", mp::str("t")),
                    ("args", mp::map(&[])),
                ]),
            ),
        ),
        (
            "body as an array of maps",
            mp::message("PING", mp::array(&[mp::map(&[("nonce", mp::uint(1))])])),
        ),
        ("body as a str", mp::message("PING", mp::str("nonce"))),
        (
            "type as an integer",
            mp::map(&[("type", mp::uint(1)), ("body", mp::map(&[]))]),
        ),
        (
            "granted as a map",
            mp::message(
                "CAP_UPDATE",
                mp::map(&[("granted", mp::map(&[])), ("policy_version", mp::uint(1))]),
            ),
        ),
    ];
    for (name, bytes) in cases {
        assert_eq!(decode(&bytes), Err(MALFORMED), "{name}");
    }
}

/// Clauses: CNV-010 — a known `str` field that is not valid UTF-8 is malformed
/// (the tool name, the error message, the close reason, the type itself).
#[test]
fn a_str_field_that_is_not_utf8_is_malformed() {
    let invalid = mp::str_bytes(&[b'e', 0xff, b'o']);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "REQUEST.tool",
            mp::message(
                "REQUEST",
                mp::map(&[
                    ("id", mp::uint(1)),
                    ("tool", invalid.clone()),
                    ("args", mp::bin(&[0x90])),
                ]),
            ),
        ),
        (
            "REQUEST.grant_id",
            mp::message("REQUEST", request_body(&[("grant_id", invalid.clone())])),
        ),
        (
            "ERROR.message",
            mp::message(
                "ERROR",
                mp::map(&[("code", mp::uint(2)), ("message", invalid.clone())]),
            ),
        ),
        (
            "CLOSE.reason",
            mp::message(
                "CLOSE",
                mp::map(&[("code", mp::uint(1000)), ("reason", invalid.clone())]),
            ),
        ),
        (
            "CAP_REQUEST.tools[0]",
            mp::message(
                "CAP_REQUEST",
                mp::map(&[("tools", mp::array(std::slice::from_ref(&invalid)))]),
            ),
        ),
        (
            "type",
            mp::map(&[
                ("type", mp::str_bytes(b"PIN\xc7")),
                ("body", mp::map(&[("nonce", mp::uint(1))])),
            ]),
        ),
    ];
    for (name, bytes) in cases {
        assert_eq!(decode(&bytes), Err(MALFORMED), "{name}");
    }
}

/// Clauses: CNV-011 — a map that holds the same known key twice is malformed, with
/// equal or different values, in a body, at the top level and in nested structures.
#[test]
fn a_known_key_given_twice_is_malformed() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "body field, same value",
            mp::message(
                "PING",
                mp::map(&[("nonce", mp::uint(1)), ("nonce", mp::uint(1))]),
            ),
        ),
        (
            "body field, other value",
            mp::message(
                "PING",
                mp::map(&[("nonce", mp::uint(1)), ("nonce", mp::uint(2))]),
            ),
        ),
        (
            "optional field",
            mp::message(
                "REQUEST",
                request_body(&[("grant_id", mp::str("a")), ("grant_id", mp::str("b"))]),
            ),
        ),
        (
            "type",
            mp::map(&[
                ("type", mp::str("PING")),
                ("type", mp::str("PING")),
                ("body", mp::map(&[("nonce", mp::uint(1))])),
            ]),
        ),
        (
            "body",
            mp::map(&[
                ("type", mp::str("PING")),
                ("body", mp::map(&[("nonce", mp::uint(1))])),
                ("body", mp::map(&[("nonce", mp::uint(1))])),
            ]),
        ),
        (
            "nested structure",
            mp::message(
                "CAP_GRANT",
                mp::map(&[
                    ("granted", mp::array(&[])),
                    (
                        "limits",
                        mp::map(&[
                            ("rate_per_sec", mp::uint(1)),
                            ("burst", mp::uint(1)),
                            ("burst", mp::uint(1)),
                            ("max_in_flight", mp::uint(1)),
                        ]),
                    ),
                    ("policy_version", mp::uint(1)),
                    (
                        "manifest",
                        mp::map(&[("manifest", mp::bin(&[])), ("signature", mp::bin(&[]))]),
                    ),
                ]),
            ),
        ),
    ];
    for (name, bytes) in cases {
        assert_eq!(decode(&bytes), Err(MALFORMED), "{name}");
    }
}

/// Clauses: CNV-012 — any byte after the one top-level value is malformed.
#[test]
fn bytes_after_the_top_level_value_are_malformed() {
    let valid = ping(mp::uint(1));
    assert!(decode(&valid).is_ok());
    for trailer in [
        vec![0xc0],
        vec![0x00],
        vec![0x90],
        valid.clone(),
        vec![0xc1],
    ] {
        let mut bytes = valid.clone();
        bytes.extend_from_slice(&trailer);
        assert_eq!(decode(&bytes), Err(MALFORMED), "trailer {trailer:02x?}");
    }
}

/// A PING whose body holds, under an unknown key, a value that takes the message to
/// exactly `depth` levels of maps and arrays (message map = 1, body = 2).
fn ping_of_depth(depth: usize) -> Vec<u8> {
    assert!(depth >= 3);
    ping_with_extra(mp::nested_arrays(depth - 2))
}

fn ping_with_extra(extra: Vec<u8>) -> Vec<u8> {
    mp::message("PING", mp::map(&[("nonce", mp::uint(1)), ("x", extra)]))
}

/// Clauses: CNV-013 — a value nesting maps and arrays 32 or more levels deep
/// (the message map being level 1) is malformed, also inside an ignored unknown
/// field; 31 levels are not.
#[test]
fn nesting_of_32_levels_is_malformed_and_31_is_not() {
    assert_eq!(
        decode(&ping_of_depth(31)),
        Ok(Message::Ping(Ping { nonce: 1 }))
    );
    for depth in [32, 33, 100, 10_000] {
        assert_eq!(
            decode(&ping_of_depth(depth)),
            Err(MALFORMED),
            "depth {depth}"
        );
    }
    // Maps count as levels too.
    let mut nested_maps = mp::nil();
    for _ in 0..29 {
        nested_maps = mp::map(&[("m", nested_maps)]);
    }
    assert_eq!(
        decode(&ping_with_extra(nested_maps.clone())),
        Ok(Message::Ping(Ping { nonce: 1 })),
        "31 levels of maps"
    );
    let deeper = mp::map(&[("m", nested_maps)]);
    assert_eq!(
        decode(&ping_with_extra(deeper)),
        Err(MALFORMED),
        "32 levels of maps"
    );
}

// ---------------------------------------------------------------------------------
// Handshake payloads
// ---------------------------------------------------------------------------------

/// A ClientHello map for a hand-driven client whose Noise static key is
/// `static_public`, signed by the fixed (allowlisted) client identity, with `extra`
/// entries appended (which may repeat or replace fields when `replace` is true).
fn client_hello_map(static_public: &[u8; 32], extra: &[(&str, Vec<u8>)], drop: &[&str]) -> Vec<u8> {
    let peers = testing::fixed_peers_for_testing_only();
    let identity = peers.client_identity.public_key().to_bytes();
    let signature = peers
        .client_identity
        .sign(&static_binding_message(CLIENT_STATIC_DOMAIN, static_public));
    let mut entries: Vec<(&str, Vec<u8>)> = vec![
        ("identity", mp::bin(&identity)),
        ("signature", mp::bin(&signature)),
    ];
    entries.retain(|(name, _)| !drop.contains(name));
    entries.extend(extra.iter().cloned());
    mp::map(&entries)
}

/// Runs a hand-driven client against the fixed server with the ClientHello built by
/// `hello`; returns the server's verdict on record 3.
fn server_verdict(hello: impl FnOnce([u8; 32]) -> Vec<u8>) -> (Pair, Result<(), Error>) {
    let peers = Peers::default_configs();
    let mut pair = Pair::start(&peers);
    pair.take_one_from_client();
    let (mut manual, record_1) = ManualInitiator::start(ENDPOINT);
    pair.deliver_to_server(&record_1).expect("record 1");
    let record_2 = pair.take_one_from_server();
    manual.read_record_2(&record_2);
    let record_3 = manual.record_3(&hello(manual.static_public()));
    let result = pair.deliver_to_server(&record_3);
    (pair, result)
}

const BAD_PAYLOAD: Error = Error::Malformed(Malformed::HandshakePayload);

/// Clauses: CNV-005, CNV-006, CNV-007 — the ClientHello is read like every other
/// structure: nil for the optional `resume`, unknown keys of any type (also inside
/// `cap_request` and `resume`) and non-minimal integers are all accepted.
#[test]
fn a_client_hello_with_nil_unknown_and_unusual_fields_is_accepted() {
    let variants: Vec<(&str, Fields)> = vec![
        ("nil resume", vec![("resume", mp::nil())]),
        (
            "unknown fields",
            vec![
                ("future", mp::ext(7, &[1, 2, 3, 4])),
                ("other", mp::str_bytes(&[0xff])),
                (
                    "cap_request",
                    mp::map(&[
                        ("tools", mp::array(&[mp::str("search")])),
                        ("x", mp::f64_form(0.5)),
                    ]),
                ),
                (
                    "resume",
                    mp::map(&[("lineage", mp::bin(&[7; 16])), ("y", mp::nested_arrays(5))]),
                ),
            ],
        ),
    ];
    for (name, extra) in variants {
        let (pair, result) =
            server_verdict(|static_public| client_hello_map(&static_public, &extra, &[]));
        assert_eq!(result, Ok(()), "{name}");
        assert!(pair.server.is_established(), "{name}");
    }
}

/// Clauses: CNV-008, CNV-009, CNV-010, CNV-011, CNV-012, CNV-013, HS-021 — a
/// ClientHello that is malformed in any of the ways of section 1 fails the
/// handshake with HANDSHAKE_FAILED (4000).
#[test]
fn a_malformed_client_hello_closes_with_handshake_failed() {
    type Build = Box<dyn Fn([u8; 32]) -> Vec<u8>>;
    let cases: Vec<(&str, Build)> = vec![
        (
            "missing identity",
            Box::new(|s| client_hello_map(&s, &[], &["identity"])),
        ),
        (
            "missing signature",
            Box::new(|s| client_hello_map(&s, &[], &["signature"])),
        ),
        (
            "identity as an integer",
            Box::new(|s| client_hello_map(&s, &[("identity", mp::uint(1))], &["identity"])),
        ),
        (
            "tools not UTF-8",
            Box::new(|s| {
                client_hello_map(
                    &s,
                    &[(
                        "cap_request",
                        mp::map(&[("tools", mp::array(&[mp::str_bytes(&[0xff])]))]),
                    )],
                    &[],
                )
            }),
        ),
        (
            "identity twice",
            Box::new(|s| {
                let identity = testing::fixed_peers_for_testing_only()
                    .client_identity
                    .public_key()
                    .to_bytes();
                client_hello_map(&s, &[("identity", mp::bin(&identity))], &[])
            }),
        ),
        (
            "trailing byte",
            Box::new(|s| {
                let mut bytes = client_hello_map(&s, &[], &[]);
                bytes.push(0xc0);
                bytes
            }),
        ),
        (
            "32 levels deep",
            Box::new(|s| client_hello_map(&s, &[("deep", mp::nested_arrays(31))], &[])),
        ),
        ("nil", Box::new(|_| mp::nil())),
    ];
    for (name, build) in cases {
        let (mut pair, result) = server_verdict(build);
        assert_eq!(result, Err(BAD_PAYLOAD), "{name}");
        assert_eq!(
            pair.server.close_code().map(|(code, _)| code),
            Some(CloseCode::HANDSHAKE_FAILED),
            "{name}"
        );
        assert!(pair.take_from_server().is_empty(), "{name}");
    }
    // 31 levels (the ClientHello map is level 1) are fine.
    let (_, result) =
        server_verdict(|s| client_hello_map(&s, &[("deep", mp::nested_arrays(30))], &[]));
    assert_eq!(result, Ok(()));
}

/// A hand-driven server answering the real client's record 1 with `payload`; the
/// client's verdict on record 2.
fn client_verdict(payload: impl FnOnce([u8; 32]) -> Vec<u8>) -> (Pair, Result<(), Error>) {
    let peers = Peers::default_configs();
    let mut pair = Pair::start(&peers);
    let record_1 = pair.take_one_from_client();
    let mut manual = ManualResponder::after_record_1(ENDPOINT, &record_1);
    let record_2 = manual.record_2(&payload(manual.static_public()));
    let result = pair.deliver_to_client(&record_2);
    (pair, result)
}

/// A ServerHello map with the given `params` map, for a hand-driven server whose
/// static key is `static_public`; it claims the fixed (pinned) server identity
/// only when `genuine` (else another identity, with a valid binding).
fn server_hello_map(
    static_public: &[u8; 32],
    params: Vec<u8>,
    extra: &[(&str, Vec<u8>)],
) -> Vec<u8> {
    let identity = testing::fixed_peers_for_testing_only().server_identity;
    let signature = identity.sign(&static_binding_message(SERVER_STATIC_DOMAIN, static_public));
    let mut entries = vec![
        ("identity", mp::bin(&identity.public_key().to_bytes())),
        ("signature", mp::bin(&signature)),
        ("params", params),
    ];
    entries.extend(extra.iter().cloned());
    mp::map(&entries)
}

fn params(extra: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut entries = vec![
        ("max_record_body", mp::u32_form(65_536)),
        ("session_lifetime_ms", mp::u64_form(3_720_000)),
        ("idle_timeout_ms", mp::i32_form(90_000)),
    ];
    entries.extend(extra.iter().cloned());
    mp::map(&entries)
}

/// Clauses: CNV-006, CNV-007, CNV-009, CNV-011, HS-012 — the client reads the
/// ServerHello by the same rules: unknown keys (in the hello and in its params) and
/// wide integer formats are accepted; a negative or too-wide parameter, a duplicate
/// key or trailing bytes close with HANDSHAKE_FAILED (4000).
#[test]
fn the_server_hello_is_read_by_the_rules_of_section_1() {
    let (pair, result) = client_verdict(|s| {
        server_hello_map(
            &s,
            params(&[("future", mp::ext(3, &[0; 8]))]),
            &[("extra", mp::array(&[mp::str_bytes(&[0xfe])]))],
        )
    });
    assert_eq!(result, Ok(()));
    assert_eq!(
        pair.client
            .session()
            .expect("established")
            .params
            .max_record_body,
        65_536
    );
    let cases: Vec<(&str, Fields, bool)> = vec![
        (
            "max_record_body 2^32",
            vec![("max_record_body", mp::uint(1 << 32))],
            false,
        ),
        (
            "negative idle timeout",
            vec![("idle_timeout_ms", mp::i8_form(-1))],
            false,
        ),
        (
            "float lifetime",
            vec![("session_lifetime_ms", mp::f64_form(1.0))],
            false,
        ),
        (
            "duplicate parameter",
            vec![("idle_timeout_ms", mp::uint(1))],
            true,
        ),
    ];
    for (name, replaced, duplicate) in cases {
        let (mut pair, result) = client_verdict(|s| {
            let mut entries: Vec<(&str, Vec<u8>)> = vec![
                ("max_record_body", mp::u32_form(65_536)),
                ("session_lifetime_ms", mp::u64_form(3_720_000)),
                ("idle_timeout_ms", mp::i32_form(90_000)),
            ];
            if !duplicate {
                entries.retain(|(key, _)| !replaced.iter().any(|(r, _)| r == key));
            }
            entries.extend(replaced.iter().cloned());
            server_hello_map(&s, mp::map(&entries), &[])
        });
        assert_eq!(result, Err(BAD_PAYLOAD), "{name}");
        assert_eq!(
            pair.client.close_code().map(|(code, _)| code),
            Some(CloseCode::HANDSHAKE_FAILED),
            "{name}"
        );
        assert!(pair.take_from_client().is_empty(), "{name}: no record 3");
    }
    let (_, result) = client_verdict(|s| {
        let mut bytes = server_hello_map(&s, params(&[]), &[]);
        bytes.push(0x00);
        bytes
    });
    assert_eq!(result, Err(BAD_PAYLOAD), "trailing byte");
}
