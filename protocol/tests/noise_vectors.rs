//! Proof that `toolwire_protocol::noise` is `Noise_XX_25519_ChaChaPoly_SHA256`:
//! published vectors byte for byte, differential tests against `snow` 0.9,
//! and negative tests for every failure mode the module promises.

// In tests a panic is a test failure, which is exactly what unwrap is for.
#![allow(clippy::unwrap_used)]

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde_json::Value;
use toolwire_protocol::noise::{
    open, rekey, seal, HandshakeState, Key, KeyPair, NoiseError, Role, DH_LEN, MAX_MESSAGE_LEN,
    PROTOCOL_NAME, TAG_LEN,
};

const VECTORS: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/vectors/noise-xx-25519-chachapoly-sha256.json"
));

const SNOW_PARAMS: &str = "Noise_XX_25519_ChaChaPoly_SHA256";

/// Everything that determines one handshake.
#[derive(Clone)]
struct Inputs {
    init_prologue: Vec<u8>,
    resp_prologue: Vec<u8>,
    init_static: [u8; 32],
    init_ephemeral: [u8; 32],
    resp_static: [u8; 32],
    resp_ephemeral: [u8; 32],
}

impl Inputs {
    fn initiator(&self) -> HandshakeState {
        HandshakeState::new(
            Role::Initiator,
            &self.init_prologue,
            KeyPair::from_secret_bytes(self.init_static),
            KeyPair::from_secret_bytes(self.init_ephemeral),
        )
    }

    fn responder(&self) -> HandshakeState {
        HandshakeState::new(
            Role::Responder,
            &self.resp_prologue,
            KeyPair::from_secret_bytes(self.resp_static),
            KeyPair::from_secret_bytes(self.resp_ephemeral),
        )
    }

    fn snow_initiator(&self) -> snow::HandshakeState {
        snow::Builder::new(SNOW_PARAMS.parse().unwrap())
            .local_private_key(&self.init_static)
            .fixed_ephemeral_key_for_testing_only(&self.init_ephemeral)
            .prologue(&self.init_prologue)
            .build_initiator()
            .unwrap()
    }

    fn snow_responder(&self) -> snow::HandshakeState {
        snow::Builder::new(SNOW_PARAMS.parse().unwrap())
            .local_private_key(&self.resp_static)
            .fixed_ephemeral_key_for_testing_only(&self.resp_ephemeral)
            .prologue(&self.resp_prologue)
            .build_responder()
            .unwrap()
    }

    fn random(rng: &mut ChaCha20Rng) -> Self {
        let mut key = || {
            let mut k = [0u8; 32];
            rng.fill_bytes(&mut k);
            k
        };
        let (a, b, c, d) = (key(), key(), key(), key());
        let prologue_len = (rng.next_u32() % 80) as usize;
        let prologue = random_bytes(rng, prologue_len);
        Self {
            init_prologue: prologue.clone(),
            resp_prologue: prologue,
            init_static: a,
            init_ephemeral: b,
            resp_static: c,
            resp_ephemeral: d,
        }
    }

    /// Fixed inputs for the negative tests.
    fn fixed() -> Self {
        Self {
            init_prologue: b"toolwire test".to_vec(),
            resp_prologue: b"toolwire test".to_vec(),
            init_static: [0x11; 32],
            init_ephemeral: [0x22; 32],
            resp_static: [0x33; 32],
            resp_ephemeral: [0x44; 32],
        }
    }
}

fn random_bytes(rng: &mut ChaCha20Rng, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    v
}

fn unhex(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("hex string")).expect("valid hex")
}

fn unhex32(v: &Value) -> [u8; 32] {
    unhex(v).try_into().expect("32 bytes")
}

fn public_of(secret: [u8; 32]) -> [u8; 32] {
    KeyPair::from_secret_bytes(secret).public_key()
}

fn write(hs: &mut HandshakeState, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    hs.write_message(payload, &mut out).unwrap();
    out
}

fn read(hs: &mut HandshakeState, message: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    hs.read_message(message, &mut out).unwrap();
    out
}

fn snow_write(hs: &mut snow::HandshakeState, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; MAX_MESSAGE_LEN];
    let n = hs.write_message(payload, &mut buf).unwrap();
    buf.truncate(n);
    buf
}

fn snow_read(hs: &mut snow::HandshakeState, message: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; MAX_MESSAGE_LEN];
    let n = hs.read_message(message, &mut buf).unwrap();
    buf.truncate(n);
    buf
}

fn snow_seal(ts: &mut snow::TransportState, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; MAX_MESSAGE_LEN];
    let n = ts.write_message(payload, &mut buf).unwrap();
    buf.truncate(n);
    buf
}

fn snow_open(ts: &mut snow::TransportState, message: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; MAX_MESSAGE_LEN];
    let n = ts.read_message(message, &mut buf).unwrap();
    buf.truncate(n);
    buf
}

fn our_open(key: &Key, nonce: u64, ciphertext: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    open(key, nonce, &[], ciphertext, &mut out).unwrap();
    out
}

fn our_seal(key: &Key, nonce: u64, plaintext: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    seal(key, nonce, &[], plaintext, &mut out);
    out
}

/// Runs a full handshake of our initiator against our responder.
fn our_handshake(inputs: &Inputs) -> (HandshakeState, HandshakeState) {
    let mut i = inputs.initiator();
    let mut r = inputs.responder();
    let m1 = write(&mut i, b"");
    read(&mut r, &m1);
    let m2 = write(&mut r, b"");
    read(&mut i, &m2);
    let m3 = write(&mut i, b"");
    read(&mut r, &m3);
    (i, r)
}

/// The snow reference transcript for `inputs` and `payloads`.
struct Reference {
    messages: [Vec<u8>; 3],
    handshake_hash: Vec<u8>,
}

fn snow_reference(inputs: &Inputs, payloads: &[Vec<u8>; 3]) -> Reference {
    let mut i = inputs.snow_initiator();
    let mut r = inputs.snow_responder();
    let m1 = snow_write(&mut i, &payloads[0]);
    assert_eq!(snow_read(&mut r, &m1), payloads[0]);
    let m2 = snow_write(&mut r, &payloads[1]);
    assert_eq!(snow_read(&mut i, &m2), payloads[1]);
    let m3 = snow_write(&mut i, &payloads[2]);
    assert_eq!(snow_read(&mut r, &m3), payloads[2]);
    assert!(i.is_handshake_finished() && r.is_handshake_finished());
    assert_eq!(i.get_handshake_hash(), r.get_handshake_hash());
    Reference {
        messages: [m1, m2, m3],
        handshake_hash: i.get_handshake_hash().to_vec(),
    }
}

#[test]
fn constants() {
    assert_eq!(PROTOCOL_NAME, SNOW_PARAMS.as_bytes());
    assert_eq!(PROTOCOL_NAME.len(), 32);
    assert_eq!((DH_LEN, TAG_LEN, MAX_MESSAGE_LEN), (32, 16, 65535));
}

/// Clauses: HS-001 — the Noise layer reproduces the published Noise_XX_25519_ChaChaPoly_SHA256
/// vectors byte for byte.
#[test]
fn published_vectors() {
    let doc: Value = serde_json::from_str(VECTORS).unwrap();
    let vectors = doc["vectors"].as_array().unwrap();
    assert!(vectors.len() >= 2, "expected both published vectors");
    let mut saw_handshake_hash = false;

    for (idx, v) in vectors.iter().enumerate() {
        assert_eq!(v["protocol_name"], SNOW_PARAMS, "vector {idx}");
        let inputs = Inputs {
            init_prologue: unhex(&v["init_prologue"]),
            resp_prologue: unhex(&v["resp_prologue"]),
            init_static: unhex32(&v["init_static"]),
            init_ephemeral: unhex32(&v["init_ephemeral"]),
            resp_static: unhex32(&v["resp_static"]),
            resp_ephemeral: unhex32(&v["resp_ephemeral"]),
        };
        let messages: Vec<(Vec<u8>, Vec<u8>)> = v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (unhex(&m["payload"]), unhex(&m["ciphertext"])))
            .collect();
        assert!(messages.len() > 3, "vector {idx} has transport messages");

        let mut init = inputs.initiator();
        let mut resp = inputs.responder();
        for (n, (payload, ciphertext)) in messages.iter().take(3).enumerate() {
            let (writer, reader) = if n % 2 == 0 {
                (&mut init, &mut resp)
            } else {
                (&mut resp, &mut init)
            };
            assert_eq!(&write(writer, payload), ciphertext, "vector {idx} msg {n}");
            assert_eq!(&read(reader, ciphertext), payload, "vector {idx} msg {n}");
        }
        assert!(init.is_finished() && resp.is_finished());
        assert_eq!(init.handshake_hash(), resp.handshake_hash());
        if let Some(h) = v.get("handshake_hash") {
            assert_eq!(init.handshake_hash().to_vec(), unhex(h), "vector {idx}");
            saw_handshake_hash = true;
        }
        assert_eq!(init.remote_static(), Some(public_of(inputs.resp_static)));
        assert_eq!(resp.remote_static(), Some(public_of(inputs.init_static)));
        assert_eq!(
            init.remote_ephemeral(),
            Some(public_of(inputs.resp_ephemeral))
        );
        assert_eq!(
            resp.remote_ephemeral(),
            Some(public_of(inputs.init_ephemeral))
        );
        assert_eq!(init.local_static_public(), public_of(inputs.init_static));

        let (i_c1, i_c2) = init.split().unwrap();
        let (r_c1, r_c2) = resp.split().unwrap();
        assert_eq!(*i_c1, *r_c1);
        assert_eq!(*i_c2, *r_c2);
        assert_ne!(*i_c1, *i_c2);

        // Transport messages continue the handshake's alternation: overall
        // message k is sent by the initiator iff k is even, so the first
        // transport message (k = 3) goes responder -> initiator. Nonces
        // count from 0 in each direction.
        let mut next_nonce = [0u64; 2]; // [i->r, r->i]
        for (k, (payload, ciphertext)) in messages.iter().enumerate().skip(3) {
            let dir = k % 2;
            let key = if dir == 0 { &i_c1 } else { &i_c2 };
            let nonce = next_nonce[dir];
            next_nonce[dir] += 1;
            let j = k - 3;
            assert_eq!(
                &our_seal(key, nonce, payload),
                ciphertext,
                "vector {idx} transport {j}"
            );
            assert_eq!(
                &our_open(key, nonce, ciphertext),
                payload,
                "vector {idx} transport {j}"
            );
        }
    }
    assert!(
        saw_handshake_hash,
        "at least one vector pins the handshake hash"
    );
}

/// Our initiator vs snow's responder and snow's initiator vs our responder,
/// for 50 seeded key sets, every byte compared with snow's own transcript.
/// Clauses: HS-001, KS-001 — handshakes and Split() keys agree byte for byte with snow, in both
/// roles.
#[test]
fn differential_against_snow() {
    const PAYLOAD_LENS: [usize; 4] = [0, 1, 100, 1000];
    let mut rng = ChaCha20Rng::seed_from_u64(0x7001_5717_e000_0001);

    for case in 0..50 {
        let inputs = Inputs::random(&mut rng);
        let payloads: [Vec<u8>; 3] = core::array::from_fn(|k| {
            random_bytes(&mut rng, PAYLOAD_LENS[(case + k) % PAYLOAD_LENS.len()])
        });
        let reference = snow_reference(&inputs, &payloads);

        // --- our initiator vs snow responder ---
        let mut ours = inputs.initiator();
        let mut theirs = inputs.snow_responder();
        let m1 = write(&mut ours, &payloads[0]);
        assert_eq!(m1, reference.messages[0], "case {case} msg1");
        assert_eq!(snow_read(&mut theirs, &m1), payloads[0]);
        let m2 = snow_write(&mut theirs, &payloads[1]);
        assert_eq!(m2, reference.messages[1], "case {case} msg2");
        assert_eq!(read(&mut ours, &m2), payloads[1]);
        let m3 = write(&mut ours, &payloads[2]);
        assert_eq!(m3, reference.messages[2], "case {case} msg3");
        assert_eq!(snow_read(&mut theirs, &m3), payloads[2]);
        assert_eq!(&ours.handshake_hash()[..], &reference.handshake_hash[..]);
        assert_eq!(ours.remote_static(), Some(public_of(inputs.resp_static)));
        assert_eq!(
            theirs.get_remote_static(),
            Some(&ours.local_static_public()[..])
        );
        let (c1, c2) = ours.split().unwrap();
        let mut ts = theirs.into_transport_mode().unwrap();
        for nonce in 0..3u64 {
            let p = random_bytes(&mut rng, PAYLOAD_LENS[nonce as usize]);
            // initiator -> responder
            let ct = our_seal(&c1, nonce, &p);
            assert_eq!(snow_open(&mut ts, &ct), p, "case {case} i->r {nonce}");
            // responder -> initiator
            let ct = snow_seal(&mut ts, &p);
            assert_eq!(our_open(&c2, nonce, &ct), p, "case {case} r->i {nonce}");
            assert_eq!(our_seal(&c2, nonce, &p), ct, "case {case} r->i bytes");
        }

        // --- snow initiator vs our responder ---
        let mut theirs = inputs.snow_initiator();
        let mut ours = inputs.responder();
        let m1 = snow_write(&mut theirs, &payloads[0]);
        assert_eq!(m1, reference.messages[0]);
        assert_eq!(read(&mut ours, &m1), payloads[0]);
        let m2 = write(&mut ours, &payloads[1]);
        assert_eq!(m2, reference.messages[1], "case {case} our msg2");
        assert_eq!(snow_read(&mut theirs, &m2), payloads[1]);
        let m3 = snow_write(&mut theirs, &payloads[2]);
        assert_eq!(m3, reference.messages[2]);
        assert_eq!(read(&mut ours, &m3), payloads[2]);
        assert!(ours.is_finished());
        assert_eq!(ours.remote_static(), Some(public_of(inputs.init_static)));
        assert_eq!(&ours.handshake_hash()[..], &reference.handshake_hash[..]);
        assert_eq!(
            theirs.get_remote_static(),
            Some(&ours.local_static_public()[..])
        );
        let (c1, c2) = ours.split().unwrap();
        let mut ts = theirs.into_transport_mode().unwrap();
        for nonce in 0..3u64 {
            let p = random_bytes(&mut rng, PAYLOAD_LENS[3 - nonce as usize]);
            let ct = snow_seal(&mut ts, &p);
            assert_eq!(our_seal(&c1, nonce, &p), ct, "case {case} i->r bytes");
            assert_eq!(our_open(&c1, nonce, &ct), p);
            let ct = our_seal(&c2, nonce, &p);
            assert_eq!(snow_open(&mut ts, &ct), p, "case {case} r->i {nonce}");
        }
    }
}

/// Nonce = 4 zero bytes || LE64(n): snow's transport output at nonces
/// 0, 1, 2 and at a large nonce whose bytes are all distinct.
/// Clauses: REC-007, KS-004 — the AEAD nonce is four zero bytes then u64le(n), as snow builds it.
#[test]
fn nonce_encoding_matches_snow() {
    let inputs = Inputs::fixed();
    let (i, _r) = our_handshake(&inputs);
    let (c1, _c2) = i.split().unwrap();

    let mut si = inputs.snow_initiator();
    let mut sr = inputs.snow_responder();
    let m1 = snow_write(&mut si, b"");
    snow_read(&mut sr, &m1);
    let m2 = snow_write(&mut sr, b"");
    snow_read(&mut si, &m2);
    let m3 = snow_write(&mut si, b"");
    snow_read(&mut sr, &m3);
    let mut si = si.into_transport_mode().unwrap();
    let mut sr = sr.into_transport_mode().unwrap();

    let payload = b"nonce layout";
    for nonce in 0..3u64 {
        assert_eq!(our_seal(&c1, nonce, payload), snow_seal(&mut si, payload));
    }
    let big = 0x0102_0304_0506_0708u64;
    sr.set_receiving_nonce(big);
    assert_eq!(snow_open(&mut sr, &our_seal(&c1, big, payload)), payload);
}

/// Clauses: KS-003 — REKEY(k) agrees with snow's rekey.
#[test]
fn rekey_matches_snow() {
    let inputs = Inputs::fixed();
    let (i, _r) = our_handshake(&inputs);
    let (c1, c2) = i.split().unwrap();
    let new_c1 = rekey(&c1);
    let new_c2 = rekey(&c2);
    assert_ne!(*new_c1, *c1);
    assert_ne!(*new_c1, *new_c2);
    assert_eq!(*rekey(&c1), *new_c1, "rekey is deterministic");

    let mut si = inputs.snow_initiator();
    let mut sr = inputs.snow_responder();
    let m1 = snow_write(&mut si, b"");
    snow_read(&mut sr, &m1);
    let m2 = snow_write(&mut sr, b"");
    snow_read(&mut si, &m2);
    let m3 = snow_write(&mut si, b"");
    snow_read(&mut sr, &m3);
    let mut si = si.into_transport_mode().unwrap();
    let mut sr = sr.into_transport_mode().unwrap();

    // One message before the rekey, then rekey; snow keeps the nonce running.
    let before = snow_seal(&mut si, b"before");
    assert_eq!(before, our_seal(&c1, 0, b"before"));
    assert_eq!(snow_open(&mut sr, &before), b"before");
    si.rekey_outgoing();
    let after = snow_seal(&mut si, b"after");
    assert_eq!(after, our_seal(&new_c1, 1, b"after"));
    assert_ne!(after, our_seal(&c1, 1, b"after"));
    sr.rekey_incoming();
    assert_eq!(
        snow_open(&mut sr, &our_seal(&new_c1, 1, b"after")),
        b"after"
    );

    // The other direction.
    sr.rekey_outgoing();
    let ct = snow_seal(&mut sr, b"resp after rekey");
    assert_eq!(our_open(&new_c2, 0, &ct), b"resp after rekey");
}

#[test]
fn seal_open_round_trip_and_failures() {
    let key = [0x42u8; 32];
    for len in [0usize, 1, 15, 16, 17, 100, 1000, MAX_MESSAGE_LEN - TAG_LEN] {
        let pt: Vec<u8> = (0..len).map(|b| b as u8).collect();
        let mut ct = b"prefix".to_vec();
        seal(&key, 7, b"ad", &pt, &mut ct);
        assert_eq!(ct.len(), 6 + len + TAG_LEN);
        assert_eq!(&ct[..6], b"prefix", "seal appends");
        let ct = &ct[6..];

        let mut out = b"keep".to_vec();
        open(&key, 7, b"ad", ct, &mut out).unwrap();
        assert_eq!(&out[..4], b"keep", "open appends");
        assert_eq!(&out[4..], &pt[..]);

        // Every failure leaves `out` exactly as it was.
        let mut out = b"keep".to_vec();
        let mut wrong_key = key;
        wrong_key[0] ^= 1;
        assert_eq!(
            open(&wrong_key, 7, b"ad", ct, &mut out),
            Err(NoiseError::Decrypt)
        );
        assert_eq!(open(&key, 8, b"ad", ct, &mut out), Err(NoiseError::Decrypt));
        assert_eq!(open(&key, 7, b"aD", ct, &mut out), Err(NoiseError::Decrypt));
        assert_eq!(open(&key, 7, b"", ct, &mut out), Err(NoiseError::Decrypt));
        let mut tampered = ct.to_vec();
        let last = tampered.len() - 1;
        tampered[last] ^= 0x80;
        assert_eq!(
            open(&key, 7, b"ad", &tampered, &mut out),
            Err(NoiseError::Decrypt)
        );
        assert_eq!(
            open(&key, 7, b"ad", &ct[..ct.len() - 1], &mut out),
            Err(NoiseError::Decrypt)
        );
        assert_eq!(out, b"keep");
    }
    // Shorter than a tag.
    let mut out = Vec::new();
    for len in 0..TAG_LEN {
        assert_eq!(
            open(&key, 0, b"", &[0u8; TAG_LEN][..len], &mut out),
            Err(NoiseError::Decrypt)
        );
    }
    assert!(out.is_empty());
}

/// Flipping any single bit of message 2 or 3 must never be accepted.
#[test]
fn bit_flips_in_messages_2_and_3_are_rejected() {
    let inputs = Inputs::fixed();
    for payload in [&b""[..], &b"payload"[..]] {
        // Message 2, read by the initiator.
        let mut i = inputs.initiator();
        let mut r = inputs.responder();
        let m1 = write(&mut i, payload);
        read(&mut r, &m1);
        let m2 = write(&mut r, payload);
        for bit in 0..m2.len() * 8 {
            let mut bad = m2.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            let mut i = inputs.initiator();
            write(&mut i, payload);
            let mut out = Vec::new();
            let err = i.read_message(&bad, &mut out).unwrap_err();
            if bit / 8 < DH_LEN {
                // A flipped ephemeral changes h (so the static fails to
                // decrypt) unless it happens to become low-order.
                assert!(
                    matches!(err, NoiseError::Decrypt | NoiseError::NonContributory),
                    "msg2 bit {bit}: {err:?}"
                );
            } else {
                assert_eq!(err, NoiseError::Decrypt, "msg2 bit {bit}");
            }
            assert!(out.is_empty());
            // Fatal: the same state refuses even the genuine message.
            assert_eq!(i.read_message(&m2, &mut out), Err(NoiseError::OutOfOrder));
            assert!(!i.is_finished());
        }

        // Message 3, read by the responder.
        let mut i = inputs.initiator();
        let mut r = inputs.responder();
        let m1 = write(&mut i, payload);
        read(&mut r, &m1);
        let m2 = write(&mut r, payload);
        read(&mut i, &m2);
        let m3 = write(&mut i, payload);
        for bit in 0..m3.len() * 8 {
            let mut bad = m3.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            let mut r = inputs.responder();
            read(&mut r, &m1);
            write(&mut r, payload);
            let mut out = Vec::new();
            assert_eq!(
                r.read_message(&bad, &mut out),
                Err(NoiseError::Decrypt),
                "msg3 bit {bit}"
            );
            assert!(out.is_empty());
            assert_eq!(r.read_message(&m3, &mut out), Err(NoiseError::OutOfOrder));
            assert!(matches!(r.split(), Err(NoiseError::OutOfOrder)));
        }
    }
}

/// Clauses: HS-010, HS-020 — messages 2 and 3 shorter than their tokens or longer than 65535 bytes
/// are refused.
#[test]
fn truncated_and_oversized_messages_are_malformed() {
    let inputs = Inputs::fixed();
    let mut i = inputs.initiator();
    let mut r = inputs.responder();
    let m1 = write(&mut i, b"");
    assert_eq!(m1.len(), DH_LEN);
    read(&mut r, &m1);
    let m2 = write(&mut r, b"");
    assert_eq!(m2.len(), DH_LEN + DH_LEN + TAG_LEN + TAG_LEN);
    read(&mut i, &m2);
    let m3 = write(&mut i, b"");
    assert_eq!(m3.len(), DH_LEN + TAG_LEN + TAG_LEN);

    for len in 0..m1.len() {
        let mut r = inputs.responder();
        assert_eq!(
            r.read_message(&m1[..len], &mut Vec::new()),
            Err(NoiseError::Malformed)
        );
    }
    for len in 0..m2.len() {
        let mut i = inputs.initiator();
        write(&mut i, b"");
        assert_eq!(
            i.read_message(&m2[..len], &mut Vec::new()),
            Err(NoiseError::Malformed),
            "msg2 len {len}"
        );
    }
    for len in 0..m3.len() {
        let mut r = inputs.responder();
        read(&mut r, &m1);
        write(&mut r, b"");
        assert_eq!(
            r.read_message(&m3[..len], &mut Vec::new()),
            Err(NoiseError::Malformed),
            "msg3 len {len}"
        );
    }

    // Oversized on read.
    let mut r = inputs.responder();
    let huge = vec![0x55u8; MAX_MESSAGE_LEN + 1];
    assert_eq!(
        r.read_message(&huge, &mut Vec::new()),
        Err(NoiseError::Malformed)
    );
    // Exactly the limit is fine (message 1 payload is plaintext).
    let mut r = inputs.responder();
    let mut at_limit = m1.clone();
    at_limit.resize(MAX_MESSAGE_LEN, 0xaa);
    let mut payload = Vec::new();
    r.read_message(&at_limit, &mut payload).unwrap();
    assert_eq!(payload.len(), MAX_MESSAGE_LEN - DH_LEN);

    // Oversized on write, for each message; the limit itself is accepted.
    let max1 = MAX_MESSAGE_LEN - DH_LEN;
    let mut i = inputs.initiator();
    let mut out = b"x".to_vec();
    assert_eq!(
        i.write_message(&vec![0; max1 + 1], &mut out),
        Err(NoiseError::Malformed)
    );
    assert_eq!(out, b"x", "nothing appended on error");
    let mut i = inputs.initiator();
    assert_eq!(write(&mut i, &vec![0; max1]).len(), MAX_MESSAGE_LEN);

    let max2 = MAX_MESSAGE_LEN - (DH_LEN + DH_LEN + TAG_LEN + TAG_LEN);
    let mut r = inputs.responder();
    read(&mut r, &m1);
    assert_eq!(
        r.write_message(&vec![0; max2 + 1], &mut Vec::new()),
        Err(NoiseError::Malformed)
    );
    let mut r = inputs.responder();
    read(&mut r, &m1);
    assert_eq!(write(&mut r, &vec![0; max2]).len(), MAX_MESSAGE_LEN);

    let max3 = MAX_MESSAGE_LEN - (DH_LEN + TAG_LEN + TAG_LEN);
    let mut i = inputs.initiator();
    write(&mut i, b"");
    read(&mut i, &m2);
    assert_eq!(
        i.write_message(&vec![0; max3 + 1], &mut Vec::new()),
        Err(NoiseError::Malformed)
    );
    let mut i = inputs.initiator();
    write(&mut i, b"");
    read(&mut i, &m2);
    assert_eq!(write(&mut i, &vec![0; max3]).len(), MAX_MESSAGE_LEN);
}

/// Clauses: HS-003 — a different prologue makes message 2 fail to decrypt.
#[test]
fn prologue_mismatch_fails_at_message_2() {
    let mut inputs = Inputs::fixed();
    inputs.resp_prologue = b"toolwire tesT".to_vec();
    let mut i = inputs.initiator();
    let mut r = inputs.responder();
    let m1 = write(&mut i, b"hello");
    // Message 1 carries no authenticated data, so the responder cannot tell.
    assert_eq!(read(&mut r, &m1), b"hello");
    let m2 = write(&mut r, b"");
    assert_eq!(
        i.read_message(&m2, &mut Vec::new()),
        Err(NoiseError::Decrypt)
    );
}

/// Low-order points of Curve25519 (u-coordinates, little-endian), as in the
/// well-known X25519 blocklists: 0, 1, the two points of order 8, and
/// p-1, p, p+1 (which reduce to low-order points).
fn low_order_points() -> Vec<[u8; 32]> {
    let mut points = Vec::new();
    let mut zero = [0u8; 32];
    points.push(zero);
    zero[0] = 1;
    points.push(zero);
    for h in [
        "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
        "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    ] {
        points.push(hex::decode(h).unwrap().try_into().unwrap());
    }
    points
}

/// Clauses: HS-011 — a low-order ephemeral key in message 1 fails at the DH that computes zero.
#[test]
fn low_order_ephemeral_in_message_1_is_rejected_by_responder_write() {
    let inputs = Inputs::fixed();
    for point in low_order_points() {
        let mut r = inputs.responder();
        let mut m1 = point.to_vec();
        m1.extend_from_slice(b"payload");
        // Reading `e` involves no DH, so it succeeds...
        assert_eq!(read(&mut r, &m1), b"payload");
        assert_eq!(r.remote_ephemeral(), Some(point));
        // ...and the responder's `ee` while writing message 2 catches it.
        let mut out = b"x".to_vec();
        assert_eq!(
            r.write_message(b"", &mut out),
            Err(NoiseError::NonContributory),
            "point {}",
            hex::encode(point)
        );
        assert_eq!(out, b"x", "nothing appended on error");
        assert_eq!(r.write_message(b"", &mut out), Err(NoiseError::OutOfOrder));
    }
}

/// Clauses: HS-011 — a low-order ephemeral key in message 2 fails at the initiator's DH.
#[test]
fn low_order_ephemeral_in_message_2_is_rejected_by_initiator_read() {
    let inputs = Inputs::fixed();
    for point in low_order_points() {
        let mut i = inputs.initiator();
        write(&mut i, b"");
        let mut m2 = point.to_vec();
        m2.extend_from_slice(&[0u8; DH_LEN + TAG_LEN + TAG_LEN]);
        assert_eq!(
            i.read_message(&m2, &mut Vec::new()),
            Err(NoiseError::NonContributory)
        );
        assert_eq!(
            i.read_message(&m2, &mut Vec::new()),
            Err(NoiseError::OutOfOrder)
        );
    }
}

#[test]
fn out_of_turn_calls_are_rejected() {
    let inputs = Inputs::fixed();

    // Responder cannot write first; initiator cannot read first.
    let mut r = inputs.responder();
    assert_eq!(
        r.write_message(b"", &mut Vec::new()),
        Err(NoiseError::OutOfOrder)
    );
    let mut i = inputs.initiator();
    assert_eq!(
        i.read_message(&[0u8; 64], &mut Vec::new()),
        Err(NoiseError::OutOfOrder)
    );

    // Initiator cannot write twice in a row.
    let mut i = inputs.initiator();
    write(&mut i, b"");
    assert_eq!(
        i.write_message(b"", &mut Vec::new()),
        Err(NoiseError::OutOfOrder)
    );
    // ...and that error was fatal.
    let mut r = inputs.responder();
    let m1 = write(&mut inputs.initiator(), b"");
    read(&mut r, &m1);
    let m2 = write(&mut r, b"");
    assert_eq!(
        i.read_message(&m2, &mut Vec::new()),
        Err(NoiseError::OutOfOrder)
    );

    // Responder cannot read twice in a row.
    let mut r = inputs.responder();
    read(&mut r, &m1);
    assert_eq!(
        r.read_message(&m1, &mut Vec::new()),
        Err(NoiseError::OutOfOrder)
    );

    // Nothing is accepted after the handshake finishes.
    let (mut i, mut r) = our_handshake(&inputs);
    assert!(i.is_finished() && r.is_finished());
    assert_eq!(
        i.write_message(b"", &mut Vec::new()),
        Err(NoiseError::OutOfOrder)
    );
    assert_eq!(
        i.read_message(&[0u8; 64], &mut Vec::new()),
        Err(NoiseError::OutOfOrder)
    );
    assert_eq!(
        r.write_message(b"", &mut Vec::new()),
        Err(NoiseError::OutOfOrder)
    );
    assert_eq!(
        r.read_message(&[0u8; 64], &mut Vec::new()),
        Err(NoiseError::OutOfOrder)
    );
}

#[test]
fn split_requires_a_finished_handshake() {
    let inputs = Inputs::fixed();
    assert!(matches!(
        inputs.initiator().split(),
        Err(NoiseError::OutOfOrder)
    ));
    assert!(matches!(
        inputs.responder().split(),
        Err(NoiseError::OutOfOrder)
    ));

    let mut i = inputs.initiator();
    let mut r = inputs.responder();
    let m1 = write(&mut i, b"");
    read(&mut r, &m1);
    let m2 = write(&mut r, b"");
    read(&mut i, &m2);
    assert!(!i.is_finished());
    // Initiator has everything but has not written message 3 yet.
    assert!(matches!(i.split(), Err(NoiseError::OutOfOrder)));
    // Responder has written message 2 but not read message 3.
    assert!(matches!(r.split(), Err(NoiseError::OutOfOrder)));

    let (i, r) = our_handshake(&inputs);
    let (i1, i2) = i.split().unwrap();
    let (r1, r2) = r.split().unwrap();
    assert_eq!((*i1, *i2), (*r1, *r2));
}

#[test]
fn handshake_state_progress_and_accessors() {
    let inputs = Inputs::fixed();
    let mut i = inputs.initiator();
    let mut r = inputs.responder();
    assert_eq!(i.remote_static(), None);
    assert_eq!(i.remote_ephemeral(), None);
    assert_eq!(r.local_static_public(), public_of(inputs.resp_static));
    let h0 = i.handshake_hash();
    assert_eq!(h0, r.handshake_hash(), "same prologue, same initial h");

    let m1 = write(&mut i, b"");
    assert_eq!(&m1[..], &public_of(inputs.init_ephemeral)[..], "e in clear");
    assert_ne!(i.handshake_hash(), h0);
    read(&mut r, &m1);
    assert_eq!(i.handshake_hash(), r.handshake_hash());
    let m2 = write(&mut r, b"");
    read(&mut i, &m2);
    // The static key travels encrypted in message 2.
    let resp_pub = public_of(inputs.resp_static);
    assert!(!m2.windows(32).any(|w| w == resp_pub));
    assert_eq!(i.remote_static(), Some(resp_pub));
    assert_eq!(r.remote_static(), None, "responder learns s only in msg3");
    assert!(!i.is_finished());
    let m3 = write(&mut i, b"");
    assert!(i.is_finished());
    assert!(!r.is_finished());
    read(&mut r, &m3);
    assert!(r.is_finished());
    assert_eq!(r.remote_static(), Some(public_of(inputs.init_static)));
    assert_eq!(i.handshake_hash(), r.handshake_hash());
}

#[test]
fn debug_output_does_not_leak_secrets() {
    let secret = [0xabu8; 32];
    let kp = KeyPair::from_secret_bytes(secret);
    let dbg = format!("{kp:?}");
    assert!(!dbg.contains(&hex::encode(secret)));
    assert!(dbg.contains(&hex::encode(kp.public_key())));

    let mut hs = HandshakeState::new(
        Role::Initiator,
        b"",
        KeyPair::from_secret_bytes(secret),
        KeyPair::from_secret_bytes([0xcd; 32]),
    );
    write(&mut hs, b"");
    let dbg = format!("{hs:?}");
    assert!(!dbg.contains(&hex::encode(secret)));
    assert!(!dbg.contains(&hex::encode([0xcdu8; 32])));
}

#[test]
fn generated_keypairs_work() {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let a = KeyPair::generate(&mut rng);
    let b = KeyPair::generate(&mut rng);
    assert_ne!(a.public_key(), b.public_key());
    let mut i = HandshakeState::new(Role::Initiator, b"p", a, KeyPair::generate(&mut rng));
    let mut r = HandshakeState::new(Role::Responder, b"p", b, KeyPair::generate(&mut rng));
    let m1 = write(&mut i, b"1");
    assert_eq!(read(&mut r, &m1), b"1");
    let m2 = write(&mut r, b"2");
    assert_eq!(read(&mut i, &m2), b"2");
    let m3 = write(&mut i, b"3");
    assert_eq!(read(&mut r, &m3), b"3");
    let (i1, i2) = i.split().unwrap();
    let (r1, r2) = r.split().unwrap();
    assert_eq!(our_open(&r1, 0, &our_seal(&i1, 0, b"x")), b"x");
    assert_eq!(our_open(&i2, 0, &our_seal(&r2, 0, b"y")), b"y");
}
