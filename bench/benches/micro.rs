//! Criterion micro-benchmarks of the per-call hot path of `toolwire-protocol`:
//! record seal/open (AEAD alone and the whole record path with msgpack), the replay
//! window, envelope sign/verify, and msgpack encode/decode of a REQUEST.
//!
//! `cargo bench -p toolwire-bench --bench micro`

#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use serde_bytes::ByteBuf;
use std::hint::black_box;
use toolwire_protocol::envelope::{RequestFields, ResponseFields};
use toolwire_protocol::message::{Request, Response};
use toolwire_protocol::replay::RecordWindow;
use toolwire_protocol::testing::transport_from_keys_for_testing_only;
use toolwire_protocol::{ConnectionLimits, Identity, Message};

const SIZES: [usize; 2] = [64, 4096];

fn request(size: usize) -> Message {
    Message::Request(Request {
        id: 42,
        tool: "echo".into(),
        args: ByteBuf::from(vec![0x5a; size]),
        grant_id: None,
        deadline_ms: None,
        signature: Some(ByteBuf::from(vec![7; 64])),
        retry: false,
    })
}

fn aead(c: &mut Criterion) {
    let mut group = c.benchmark_group("aead_chacha20poly1305");
    let key = [9u8; 32];
    let header = [1u8; 16];
    for size in SIZES {
        let plaintext = vec![0x33u8; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(
            BenchmarkId::new("seal", size),
            &plaintext,
            |b, plaintext| {
                let mut nonce = 0;
                b.iter(|| {
                    let mut out = Vec::with_capacity(size + 16);
                    toolwire_protocol::noise::seal(&key, nonce, &header, plaintext, &mut out);
                    nonce += 1;
                    black_box(out)
                })
            },
        );
        let mut sealed = Vec::new();
        toolwire_protocol::noise::seal(&key, 5, &header, &plaintext, &mut sealed);
        group.bench_with_input(BenchmarkId::new("open", size), &sealed, |b, sealed| {
            b.iter(|| {
                let mut out = Vec::with_capacity(size);
                let opened = toolwire_protocol::noise::open(&key, 5, &header, sealed, &mut out);
                black_box((opened, out))
            })
        });
    }
    group.finish();
}

fn record(c: &mut Criterion) {
    let mut group = c.benchmark_group("record");
    let limits = ConnectionLimits::default();
    for size in SIZES {
        let message = request(size);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("seal", size), &message, |b, message| {
            let mut sender =
                transport_from_keys_for_testing_only([1; 32], [2; 32], [3; 32], &limits);
            b.iter(|| black_box(sender.seal(black_box(message))))
        });
        group.bench_with_input(
            BenchmarkId::new("seal_then_open", size),
            &message,
            |b, message| {
                let mut sender =
                    transport_from_keys_for_testing_only([1; 32], [2; 32], [3; 32], &limits);
                let mut receiver =
                    transport_from_keys_for_testing_only([2; 32], [1; 32], [3; 32], &limits);
                b.iter(|| {
                    let record = sender.seal(message).unwrap_or_default();
                    black_box(receiver.open(&record))
                })
            },
        );
    }
    group.finish();
}

fn replay_window(c: &mut Criterion) {
    let mut group = c.benchmark_group("replay_window");
    group.bench_function("update_in_order", |b| {
        let mut window = RecordWindow::new();
        let mut seq = 0u64;
        b.iter(|| {
            let outcome = window.update(seq);
            seq += 1;
            black_box(outcome)
        })
    });
    group.bench_function("check_replayed", |b| {
        let mut window = RecordWindow::new();
        for seq in 0..1000 {
            let _ = window.update(seq);
        }
        b.iter(|| black_box(window.check(black_box(500))))
    });
    group.bench_function("update_out_of_order_within_window", |b| {
        let mut window = RecordWindow::new();
        let mut base = 0u64;
        b.iter(|| {
            // Pairs arriving swapped: base+1 then base.
            let first = window.update(base + 1);
            let second = window.update(base);
            base += 2;
            black_box((first, second))
        })
    });
    group.finish();
}

fn envelope(c: &mut Criterion) {
    let mut group = c.benchmark_group("envelope");
    let client = Identity::generate(&mut rand_core::OsRng);
    let server = Identity::generate(&mut rand_core::OsRng);
    let session_id = [4u8; 32];
    for size in SIZES {
        let args = vec![0x5au8; size];
        let fields = RequestFields {
            session_id: &session_id,
            request_id: 42,
            tool: "echo",
            args: &args,
            grant_id: "",
        };
        group.bench_with_input(BenchmarkId::new("request_sign", size), &fields, |b, f| {
            b.iter(|| black_box(f.sign(&client)))
        });
        let signature = fields.sign(&client);
        let key = client.public_key();
        group.bench_with_input(BenchmarkId::new("request_verify", size), &fields, |b, f| {
            b.iter(|| black_box(f.verify(&key, &signature)))
        });
        let request_hash = fields.hash();
        let response = ResponseFields {
            session_id: &session_id,
            request_id: 42,
            request_hash: &request_hash,
            result: &args,
        };
        group.bench_with_input(
            BenchmarkId::new("response_sign", size),
            &response,
            |b, r| b.iter(|| black_box(r.sign(&server))),
        );
    }
    group.finish();
}

fn msgpack(c: &mut Criterion) {
    let mut group = c.benchmark_group("msgpack");
    for size in SIZES {
        let message = request(size);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(
            BenchmarkId::new("request_encode", size),
            &message,
            |b, m| b.iter(|| black_box(m.encode())),
        );
        let bytes = message.encode();
        group.bench_with_input(
            BenchmarkId::new("request_decode", size),
            &bytes,
            |b, bytes| b.iter(|| black_box(Message::decode(bytes))),
        );
        let response = Message::Response(Response {
            id: 42,
            result: ByteBuf::from(vec![0x5a; size]),
            signature: None,
        });
        let bytes = response.encode();
        group.bench_with_input(
            BenchmarkId::new("response_decode", size),
            &bytes,
            |b, bytes| b.iter(|| black_box(Message::decode(bytes))),
        );
        // The arguments as the server's tools see them: msgpack → serde_json::Value
        // and back (what a trivial echo tool costs beyond the protocol).
        let args = rmp_serde::to_vec_named(&serde_json::json!({"d": "x".repeat(size)}))
            .unwrap_or_default();
        group.bench_with_input(
            BenchmarkId::new("args_to_json_value_and_back", size),
            &args,
            |b, args| {
                b.iter(|| {
                    let value: serde_json::Value = rmp_serde::from_slice(args).unwrap_or_default();
                    black_box(rmp_serde::to_vec_named(&value).unwrap_or_default())
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, aead, record, replay_window, envelope, msgpack);
criterion_main!(benches);
