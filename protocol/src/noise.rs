//! The Noise Protocol Framework (revision 34), fixed to the single protocol
//! `Noise_XX_25519_ChaChaPoly_SHA256`, plus the record-layer AEAD helpers.
//!
//! Implements the Noise layer of spec sections "Handshake" and "Key schedule" (HS-001,
//! HS-011, KS-001..KS-004).
//!
//! The handshake is the XX pattern:
//!
//! ```text
//! XX:
//!   -> e
//!   <- e, ee, s, es
//!   -> s, se
//! ```
//!
//! This is a fixed-pattern implementation: only XX, only X25519,
//! ChaCha20-Poly1305 and SHA-256, no PSKs, no fallback. The objects follow
//! the specification's `CipherState`, `SymmetricState` and `HandshakeState`
//! (section 5) so each step can be checked against the text; every
//! primitive comes from an audited crate (`x25519-dalek`,
//! `chacha20poly1305`, `hkdf`/`sha2`).
//!
//! The module is sans-IO: callers hand in bytes and get bytes back. Ephemeral
//! keys are supplied by the caller (generated from the caller's RNG), which
//! keeps this module deterministic and lets tests pin ephemerals to
//! published vectors.
//!
//! Secrets (static/ephemeral secrets, the chaining key, cipher keys and DH
//! outputs) are zeroized on drop. One residue is outside our control: the
//! `hkdf` crate does not zeroize its internal HMAC state, which is derived
//! from the chaining key; it lives only for the duration of one HKDF call.

use core::fmt;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce, Tag};
use hkdf::Hkdf;
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// The Noise protocol name, hashed into the initial handshake state.
pub const PROTOCOL_NAME: &[u8] = b"Noise_XX_25519_ChaChaPoly_SHA256";

/// Length in bytes of an X25519 public key and of a DH output (Noise `DHLEN`).
pub const DH_LEN: usize = 32;

/// Length in bytes of a ChaCha20-Poly1305 authentication tag.
pub const TAG_LEN: usize = 16;

/// Maximum length in bytes of any Noise message (handshake or transport).
pub const MAX_MESSAGE_LEN: usize = 65535;

/// SHA-256 output length (Noise `HASHLEN`).
const HASH_LEN: usize = 32;

/// Length of an encrypted static public key inside a handshake message.
const ENCRYPTED_STATIC_LEN: usize = DH_LEN + TAG_LEN;

/// Minimum lengths of the three XX messages with an empty payload. Anything
/// shorter cannot contain the tokens the pattern requires.
const MIN_MSG1_LEN: usize = DH_LEN;
const MIN_MSG2_LEN: usize = DH_LEN + ENCRYPTED_STATIC_LEN + TAG_LEN;
const MIN_MSG3_LEN: usize = ENCRYPTED_STATIC_LEN + TAG_LEN;

// InitializeSymmetric pads names of at most HASHLEN bytes with zeros and
// hashes longer ones; we only implement the first branch, so pin it at
// compile time.
const _: () = assert!(PROTOCOL_NAME.len() <= HASH_LEN);

/// Errors from the Noise layer.
///
/// Every error from [`HandshakeState::write_message`] or
/// [`HandshakeState::read_message`] is fatal for that handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NoiseError {
    /// AEAD authentication failed (no detail, on purpose).
    #[error("decryption failed")]
    Decrypt,
    /// A DH result was all zeros (low-order / non-contributory peer key).
    #[error("non-contributory key")]
    NonContributory,
    /// The message is shorter than the pattern requires or longer than 65535.
    #[error("malformed handshake message")]
    Malformed,
    /// write/read called out of turn, or after the handshake finished.
    #[error("handshake message out of order")]
    OutOfOrder,
}

/// A 32-byte symmetric key, zeroized on drop.
pub type Key = Zeroizing<[u8; 32]>;

/// Builds the 96-bit ChaCha20-Poly1305 nonce Noise specifies:
/// 32 bits of zeros followed by the little-endian 64-bit counter.
fn chacha_nonce(nonce: u64) -> Nonce {
    let mut bytes = [0u8; 12];
    for (dst, src) in bytes.iter_mut().skip(4).zip(nonce.to_le_bytes()) {
        *dst = src;
    }
    Nonce::from(bytes)
}

/// Fallible core of [`seal`]: on error `out` is restored to its length on
/// entry.
fn try_seal(
    key: &[u8; 32],
    nonce: u64,
    ad: &[u8],
    plaintext: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), NoiseError> {
    let cipher = ChaCha20Poly1305::new(key.into());
    let start = out.len();
    out.extend_from_slice(plaintext);
    // `start` is the length before extending, so the range always exists;
    // `get_mut` just keeps this path free of panicking indexing.
    let body = out.get_mut(start..).unwrap_or_default();
    match cipher.encrypt_in_place_detached(&chacha_nonce(nonce), ad, body) {
        Ok(tag) => {
            out.extend_from_slice(&tag);
            Ok(())
        }
        Err(_) => {
            // Only reachable for plaintexts of ~256 GiB (the AEAD's
            // per-nonce limit); the bytes are still plaintext, so wipe them
            // before handing the buffer back.
            if let Some(body) = out.get_mut(start..) {
                body.zeroize();
            }
            out.truncate(start);
            Err(NoiseError::Malformed)
        }
    }
}

/// Seal `plaintext` with ChaCha20-Poly1305 under `key`, nonce = 4 zero bytes
/// || LE64(`nonce`), associated data `ad`; appends ciphertext||tag to `out`.
///
/// This is Noise's `ENCRYPT(k, n, ad, plaintext)`. Nonce management is the
/// caller's job: never reuse a `(key, nonce)` pair, and treat `u64::MAX` as
/// reserved (it is what [`rekey`] uses).
///
/// The AEAD rejects plaintexts of 256 GiB or more (far beyond
/// [`MAX_MESSAGE_LEN`], which callers enforce); for such input nothing is
/// appended, so the peer's [`open`] fails closed.
pub fn seal(key: &[u8; 32], nonce: u64, ad: &[u8], plaintext: &[u8], out: &mut Vec<u8>) {
    // The only failure is the size limit documented above; `try_seal` has
    // already restored `out`, which is the documented outcome.
    let _ = try_seal(key, nonce, ad, plaintext, out);
}

/// Open; on success appends plaintext to `out`. On failure `out` is left as
/// it was (truncate back) and returns [`NoiseError::Decrypt`].
///
/// This is Noise's `DECRYPT(k, n, ad, ciphertext)`; `ciphertext` includes
/// the trailing 16-byte tag. Inputs shorter than a tag fail with
/// [`NoiseError::Decrypt`] too, so callers learn nothing beyond "rejected".
pub fn open(
    key: &[u8; 32],
    nonce: u64,
    ad: &[u8],
    ciphertext: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), NoiseError> {
    let Some((body, tag)) = ciphertext.split_last_chunk::<TAG_LEN>() else {
        return Err(NoiseError::Decrypt);
    };
    let tag = Tag::from(*tag);
    let cipher = ChaCha20Poly1305::new(key.into());
    let start = out.len();
    out.extend_from_slice(body);
    // As in `try_seal`: the range always exists.
    let buf = out.get_mut(start..).unwrap_or_default();
    match cipher.decrypt_in_place_detached(&chacha_nonce(nonce), ad, buf, &tag) {
        Ok(()) => Ok(()),
        Err(_) => {
            // The crate verifies the tag before decrypting, so `buf` still
            // holds ciphertext; dropping it is enough.
            out.truncate(start);
            Err(NoiseError::Decrypt)
        }
    }
}

/// Noise REKEY(k): first 32 bytes of ENCRYPT(k, maxnonce = 2^64-1, ad =
/// empty, 32 zero bytes).
pub fn rekey(key: &[u8; 32]) -> Key {
    let cipher = ChaCha20Poly1305::new(key.into());
    let mut buf = Zeroizing::new([0u8; 32]);
    match cipher.encrypt_in_place_detached(&chacha_nonce(u64::MAX), &[], buf.as_mut_slice()) {
        // The tag is discarded: REKEY keeps only the first 32 bytes.
        Ok(_tag) => buf,
        // Unreachable: the AEAD only rejects inputs of ~256 GiB and this one
        // is 32 bytes. Keeping the old key is the fail-safe choice (the
        // caller's nonces keep advancing, so no (key, nonce) pair repeats);
        // it merely forgoes forward secrecy for this step.
        Err(_) => Zeroizing::new(*key),
    }
}

/// Noise `HKDF(chaining_key, input_key_material, 2)`.
///
/// Noise's HKDF is RFC 5869 extract (salt = chaining key) followed by
/// expand with empty info; its two outputs are T(1) and T(2).
fn hkdf2(chaining_key: &[u8; HASH_LEN], ikm: &[u8]) -> Result<(Key, Key), NoiseError> {
    let hk = Hkdf::<Sha256>::new(Some(chaining_key), ikm);
    let mut okm = Zeroizing::new([0u8; 2 * HASH_LEN]);
    // `expand` only fails above 255 * HASHLEN bytes of output; 64 is fine,
    // but fail closed rather than trust that silently.
    hk.expand(&[], okm.as_mut_slice())
        .map_err(|_| NoiseError::Malformed)?;
    let (first, second) = okm.split_at(HASH_LEN);
    let mut out1 = Key::default();
    let mut out2 = Key::default();
    out1.copy_from_slice(first);
    out2.copy_from_slice(second);
    Ok((out1, out2))
}

/// Noise `CipherState` (spec section 5.1), used only during the handshake.
struct CipherState {
    /// `k`; `None` is the spec's "empty" key.
    k: Option<Key>,
    /// `n`.
    n: u64,
}

impl CipherState {
    fn new() -> Self {
        Self { k: None, n: 0 }
    }

    /// `InitializeKey(key)`.
    fn initialize_key(&mut self, key: Key) {
        self.k = Some(key);
        self.n = 0;
    }

    fn has_key(&self) -> bool {
        self.k.is_some()
    }

    /// `EncryptWithAd(ad, plaintext)`, appending to `out`.
    ///
    /// Nonce 2^64-1 is reserved by Noise. In XX every handshake key is used
    /// at most twice before the next `MixKey` resets `n`, so exhaustion is
    /// unreachable; it is still refused rather than wrapped.
    fn encrypt_with_ad(
        &mut self,
        ad: &[u8],
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), NoiseError> {
        let Some(key) = self.k.as_deref() else {
            out.extend_from_slice(plaintext);
            return Ok(());
        };
        if self.n == u64::MAX {
            return Err(NoiseError::OutOfOrder);
        }
        try_seal(key, self.n, ad, plaintext, out)?;
        self.n += 1;
        Ok(())
    }

    /// `DecryptWithAd(ad, ciphertext)`, appending to `out`.
    ///
    /// Per the spec the nonce advances only on success; here a failure is
    /// fatal for the whole handshake anyway.
    fn decrypt_with_ad(
        &mut self,
        ad: &[u8],
        ciphertext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), NoiseError> {
        match self.k.as_deref() {
            None => {
                out.extend_from_slice(ciphertext);
                Ok(())
            }
            Some(key) => {
                if self.n == u64::MAX {
                    return Err(NoiseError::OutOfOrder);
                }
                open(key, self.n, ad, ciphertext, out)?;
                self.n += 1;
                Ok(())
            }
        }
    }
}

/// Noise `SymmetricState` (spec section 5.2).
struct SymmetricState {
    cipher: CipherState,
    /// Chaining key `ck`: secret, zeroized on drop.
    ck: Key,
    /// Handshake hash `h`: public transcript hash, used for channel binding.
    h: [u8; HASH_LEN],
}

impl SymmetricState {
    /// `InitializeSymmetric(protocol_name)`.
    fn new() -> Self {
        // The name is at most HASHLEN bytes (checked at compile time), so h
        // is the name zero-padded to HASHLEN; `zip` stops at the name's end.
        let mut h = [0u8; HASH_LEN];
        for (dst, src) in h.iter_mut().zip(PROTOCOL_NAME) {
            *dst = *src;
        }
        Self {
            cipher: CipherState::new(),
            ck: Zeroizing::new(h),
            h,
        }
    }

    /// `MixKey(input_key_material)`.
    fn mix_key(&mut self, ikm: &[u8]) -> Result<(), NoiseError> {
        let (ck, temp_k) = hkdf2(&self.ck, ikm)?;
        self.ck = ck;
        // HASHLEN == 32, so the spec's truncation of temp_k is a no-op.
        self.cipher.initialize_key(temp_k);
        Ok(())
    }

    /// `MixHash(data)`.
    fn mix_hash(&mut self, data: &[u8]) {
        let mut hasher = Sha256::new();
        hasher.update(self.h);
        hasher.update(data);
        self.h = hasher.finalize().into();
    }

    /// `EncryptAndHash(plaintext)`, appending the ciphertext to `out`.
    fn encrypt_and_hash(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), NoiseError> {
        let start = out.len();
        self.cipher.encrypt_with_ad(&self.h, plaintext, out)?;
        // Hash exactly what went on the wire (ciphertext, or plaintext
        // before a key exists).
        let written = out.get(start..).unwrap_or_default();
        let mut hasher = Sha256::new();
        hasher.update(self.h);
        hasher.update(written);
        self.h = hasher.finalize().into();
        Ok(())
    }

    /// `DecryptAndHash(ciphertext)`, appending the plaintext to `out`.
    fn decrypt_and_hash(&mut self, ciphertext: &[u8], out: &mut Vec<u8>) -> Result<(), NoiseError> {
        self.cipher.decrypt_with_ad(&self.h, ciphertext, out)?;
        self.mix_hash(ciphertext);
        Ok(())
    }

    /// `Split()`: (initiator→responder key, responder→initiator key).
    fn split(&self) -> Result<(Key, Key), NoiseError> {
        hkdf2(&self.ck, &[])
    }
}

/// Static or ephemeral X25519 key pair; the secret is zeroized on drop and
/// never printed by `Debug`.
pub struct KeyPair {
    /// `StaticSecret` (not `EphemeralSecret`) because the same type serves
    /// both roles and ephemerals must be injectable for test vectors; it
    /// zeroizes itself on drop.
    secret: StaticSecret,
    public: PublicKey,
}

impl KeyPair {
    /// Generates a fresh key pair from a cryptographically secure RNG.
    pub fn generate(rng: &mut impl rand_core::CryptoRngCore) -> Self {
        let secret = StaticSecret::random_from_rng(rng);
        let public = PublicKey::from(&secret);
        Self { secret, public }
    }

    /// Builds a key pair from 32 secret bytes (clamped by X25519 as usual).
    ///
    /// The function's own copy of `secret` is wiped; the caller is
    /// responsible for wiping theirs.
    pub fn from_secret_bytes(secret: [u8; 32]) -> Self {
        let mut bytes = secret;
        let secret = StaticSecret::from(bytes);
        bytes.zeroize();
        let public = PublicKey::from(&secret);
        Self { secret, public }
    }

    /// The X25519 public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.public.to_bytes()
    }

    /// X25519 with `their_public`, rejecting an all-zero result.
    ///
    /// An all-zero output means the peer sent a low-order point; mixing it
    /// would let the peer force a known key, so the handshake must stop.
    fn dh(&self, their_public: &[u8; DH_LEN]) -> Result<x25519_dalek::SharedSecret, NoiseError> {
        let shared = self.secret.diffie_hellman(&PublicKey::from(*their_public));
        if shared.was_contributory() {
            Ok(shared)
        } else {
            Err(NoiseError::NonContributory)
        }
    }
}

// `StaticSecret` zeroizes itself on drop and the public half is not secret.
impl ZeroizeOnDrop for KeyPair {}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &Hex(self.public.as_bytes()))
            .finish_non_exhaustive()
    }
}

/// Lower-case hex formatting for public values in `Debug` output.
struct Hex<'a>(&'a [u8]);

impl fmt::Debug for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// Which side of the handshake this state plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Sends messages 1 and 3.
    Initiator,
    /// Sends message 2.
    Responder,
}

/// Where the handshake stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Message 1 (`-> e`) is next.
    Msg1,
    /// Message 2 (`<- e, ee, s, es`) is next.
    Msg2,
    /// Message 3 (`-> s, se`) is next.
    Msg3,
    /// All three messages processed; `split` is allowed.
    Finished,
    /// A call failed; the state refuses everything from now on.
    Failed,
}

impl Stage {
    /// Who sends the message expected at this stage, if any.
    fn sender(self) -> Option<Role> {
        match self {
            Stage::Msg1 | Stage::Msg3 => Some(Role::Initiator),
            Stage::Msg2 => Some(Role::Responder),
            Stage::Finished | Stage::Failed => None,
        }
    }

    fn next(self) -> Self {
        match self {
            Stage::Msg1 => Stage::Msg2,
            Stage::Msg2 => Stage::Msg3,
            Stage::Msg3 => Stage::Finished,
            Stage::Finished => Stage::Finished,
            Stage::Failed => Stage::Failed,
        }
    }
}

/// Noise `HandshakeState` (spec section 5.3) for the XX pattern.
///
/// Any error from [`write_message`](Self::write_message) or
/// [`read_message`](Self::read_message) is fatal: the state then answers
/// every further call with [`NoiseError::OutOfOrder`], because a half-mixed
/// transcript must never be resumed.
pub struct HandshakeState {
    role: Role,
    stage: Stage,
    symmetric: SymmetricState,
    s: KeyPair,
    e: KeyPair,
    rs: Option<[u8; DH_LEN]>,
    re: Option<[u8; DH_LEN]>,
}

impl fmt::Debug for HandshakeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only public material: never ck, k or the secrets.
        f.debug_struct("HandshakeState")
            .field("role", &self.role)
            .field("stage", &self.stage)
            .field("local_static", &Hex(self.s.public.as_bytes()))
            .field(
                "remote_static",
                &self.rs.as_ref().map(|k| Hex(k.as_slice())),
            )
            .finish_non_exhaustive()
    }
}

impl HandshakeState {
    /// `Initialize(...)` for XX: no pre-messages, so only the prologue is
    /// mixed in.
    ///
    /// `ephemeral` is supplied by the caller (generated from the caller's
    /// RNG), which is how tests fix ephemerals. It must be fresh for every
    /// handshake.
    pub fn new(role: Role, prologue: &[u8], static_keypair: KeyPair, ephemeral: KeyPair) -> Self {
        let mut symmetric = SymmetricState::new();
        symmetric.mix_hash(prologue);
        Self {
            role,
            stage: Stage::Msg1,
            symmetric,
            s: static_keypair,
            e: ephemeral,
            rs: None,
            re: None,
        }
    }

    /// Writes the next handshake message (payload encrypted once a key
    /// exists; msg1 payload is plaintext per Noise) appending to `out`.
    ///
    /// # Errors
    ///
    /// [`NoiseError::OutOfOrder`] if it is not this side's turn to write (or
    /// the handshake is finished or failed); [`NoiseError::Malformed`] if the
    /// message would exceed [`MAX_MESSAGE_LEN`];
    /// [`NoiseError::NonContributory`] if the peer's ephemeral is a
    /// low-order point (surfaces here for the responder's `ee`). On error
    /// nothing is appended to `out` and the state is dead.
    pub fn write_message(&mut self, payload: &[u8], out: &mut Vec<u8>) -> Result<(), NoiseError> {
        let start = out.len();
        let result = self.write_inner(payload, out);
        self.finish_step(result, out, start)
    }

    /// Reads the next handshake message, appending the decrypted payload to
    /// `payload_out`. Any failure leaves the state unusable for further
    /// messages (return OutOfOrder afterwards) — a failed handshake is fatal.
    ///
    /// # Errors
    ///
    /// [`NoiseError::OutOfOrder`] if it is not this side's turn to read;
    /// [`NoiseError::Malformed`] if the message is too short for the
    /// pattern or longer than [`MAX_MESSAGE_LEN`];
    /// [`NoiseError::NonContributory`] for a low-order peer key;
    /// [`NoiseError::Decrypt`] if any authenticated part fails to verify. On
    /// error nothing is appended to `payload_out`.
    pub fn read_message(
        &mut self,
        message: &[u8],
        payload_out: &mut Vec<u8>,
    ) -> Result<(), NoiseError> {
        let start = payload_out.len();
        let result = self.read_inner(message, payload_out);
        self.finish_step(result, payload_out, start)
    }

    /// True once all three messages have been written or read.
    pub fn is_finished(&self) -> bool {
        self.stage == Stage::Finished
    }

    /// The handshake hash `h`; after the handshake it uniquely identifies
    /// the session (channel binding).
    pub fn handshake_hash(&self) -> [u8; 32] {
        self.symmetric.h
    }

    /// The peer's static public key, once received (message 2 for the
    /// initiator, message 3 for the responder). Authenticity is only
    /// established when the handshake finishes.
    pub fn remote_static(&self) -> Option<[u8; 32]> {
        self.rs
    }

    /// The peer's ephemeral public key, once received.
    pub fn remote_ephemeral(&self) -> Option<[u8; 32]> {
        self.re
    }

    /// This side's static public key.
    pub fn local_static_public(&self) -> [u8; 32] {
        self.s.public_key()
    }

    /// Split(): returns (initiator→responder key, responder→initiator key).
    /// Err(OutOfOrder) if not finished.
    ///
    /// Consumes the state so the handshake secrets are dropped (and wiped)
    /// as soon as the transport keys exist.
    pub fn split(self) -> Result<(Key, Key), NoiseError> {
        if self.stage != Stage::Finished {
            return Err(NoiseError::OutOfOrder);
        }
        self.symmetric.split()
    }

    /// Common bookkeeping for both directions: advance on success; on
    /// failure roll back the caller's buffer and poison the state.
    fn finish_step(
        &mut self,
        result: Result<(), NoiseError>,
        buf: &mut Vec<u8>,
        start: usize,
    ) -> Result<(), NoiseError> {
        match result {
            Ok(()) => {
                self.stage = self.stage.next();
                Ok(())
            }
            Err(err) => {
                // Anything appended may be partial plaintext; wipe before
                // truncating so it does not linger in spare capacity.
                if let Some(tail) = buf.get_mut(start..) {
                    tail.zeroize();
                }
                buf.truncate(start);
                self.stage = Stage::Failed;
                Err(err)
            }
        }
    }

    /// Performs the DH for a token and mixes it into the chaining key.
    fn mix_dh(&mut self, local: Local, remote: [u8; DH_LEN]) -> Result<(), NoiseError> {
        let keypair = match local {
            Local::Static => &self.s,
            Local::Ephemeral => &self.e,
        };
        // SharedSecret zeroizes itself when it goes out of scope.
        let shared = keypair.dh(&remote)?;
        self.symmetric.mix_key(shared.as_bytes())
    }

    fn write_inner(&mut self, payload: &[u8], out: &mut Vec<u8>) -> Result<(), NoiseError> {
        if self.stage.sender() != Some(self.role) {
            return Err(NoiseError::OutOfOrder);
        }
        // Check the size before touching the transcript. The payload is
        // encrypted (and so gains a tag) in messages 2 and 3 only.
        let overhead = match self.stage {
            Stage::Msg1 => MIN_MSG1_LEN,
            Stage::Msg2 => MIN_MSG2_LEN,
            _ => MIN_MSG3_LEN,
        };
        if payload.len() > MAX_MESSAGE_LEN.saturating_sub(overhead) {
            return Err(NoiseError::Malformed);
        }
        out.reserve(overhead + payload.len());

        match self.stage {
            Stage::Msg1 => {
                // -> e
                self.write_e(out);
            }
            Stage::Msg2 => {
                // <- e, ee, s, es
                let re = self.re.ok_or(NoiseError::OutOfOrder)?;
                self.write_e(out);
                self.mix_dh(Local::Ephemeral, re)?;
                self.write_s(out)?;
                self.mix_dh(Local::Static, re)?;
            }
            Stage::Msg3 => {
                // -> s, se
                let re = self.re.ok_or(NoiseError::OutOfOrder)?;
                self.write_s(out)?;
                self.mix_dh(Local::Static, re)?;
            }
            Stage::Finished | Stage::Failed => return Err(NoiseError::OutOfOrder),
        }
        self.symmetric.encrypt_and_hash(payload, out)
    }

    fn read_inner(&mut self, message: &[u8], payload_out: &mut Vec<u8>) -> Result<(), NoiseError> {
        let Some(sender) = self.stage.sender() else {
            return Err(NoiseError::OutOfOrder);
        };
        if sender == self.role {
            return Err(NoiseError::OutOfOrder);
        }
        if message.len() > MAX_MESSAGE_LEN {
            return Err(NoiseError::Malformed);
        }

        let rest = match self.stage {
            Stage::Msg1 => {
                // -> e
                if message.len() < MIN_MSG1_LEN {
                    return Err(NoiseError::Malformed);
                }
                self.read_e(message)?
            }
            Stage::Msg2 => {
                // <- e, ee, s, es
                if message.len() < MIN_MSG2_LEN {
                    return Err(NoiseError::Malformed);
                }
                let rest = self.read_e(message)?;
                let re = self.re.ok_or(NoiseError::OutOfOrder)?;
                self.mix_dh(Local::Ephemeral, re)?;
                let (rs, rest) = self.read_s(rest)?;
                self.mix_dh(Local::Ephemeral, rs)?;
                rest
            }
            Stage::Msg3 => {
                // -> s, se
                if message.len() < MIN_MSG3_LEN {
                    return Err(NoiseError::Malformed);
                }
                let (rs, rest) = self.read_s(message)?;
                self.mix_dh(Local::Ephemeral, rs)?;
                rest
            }
            Stage::Finished | Stage::Failed => return Err(NoiseError::OutOfOrder),
        };
        // The length checks above guarantee the payload part holds at least
        // a tag whenever a key exists.
        self.symmetric.decrypt_and_hash(rest, payload_out)
    }

    /// Token `e` (writer side): send our ephemeral public key in clear.
    fn write_e(&mut self, out: &mut Vec<u8>) {
        let e_pub = self.e.public_key();
        out.extend_from_slice(&e_pub);
        self.symmetric.mix_hash(&e_pub);
    }

    /// Token `s` (writer side): send our static public key, encrypted.
    fn write_s(&mut self, out: &mut Vec<u8>) -> Result<(), NoiseError> {
        // In XX a key always exists by the time `s` is sent, so the static
        // key is never exposed; refuse rather than send it in clear.
        if !self.symmetric.cipher.has_key() {
            return Err(NoiseError::OutOfOrder);
        }
        let s_pub = self.s.public_key();
        self.symmetric.encrypt_and_hash(&s_pub, out)
    }

    /// Token `e` (reader side): take the peer's ephemeral; returns the rest.
    fn read_e<'m>(&mut self, message: &'m [u8]) -> Result<&'m [u8], NoiseError> {
        let (re, rest) = message
            .split_first_chunk::<DH_LEN>()
            .ok_or(NoiseError::Malformed)?;
        self.re = Some(*re);
        self.symmetric.mix_hash(re);
        Ok(rest)
    }

    /// Token `s` (reader side): decrypt the peer's static key; returns it
    /// and the rest of the message.
    fn read_s<'m>(&mut self, message: &'m [u8]) -> Result<([u8; DH_LEN], &'m [u8]), NoiseError> {
        if !self.symmetric.cipher.has_key() {
            return Err(NoiseError::OutOfOrder);
        }
        let (encrypted, rest) = message
            .split_first_chunk::<ENCRYPTED_STATIC_LEN>()
            .ok_or(NoiseError::Malformed)?;
        let mut plain = Vec::with_capacity(DH_LEN);
        self.symmetric.decrypt_and_hash(encrypted, &mut plain)?;
        let rs: [u8; DH_LEN] = plain
            .as_slice()
            .try_into()
            .map_err(|_| NoiseError::Malformed)?;
        self.rs = Some(rs);
        Ok((rs, rest))
    }
}

/// Which local key a DH token uses.
#[derive(Clone, Copy)]
enum Local {
    Static,
    Ephemeral,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic in a test is a test failure
mod tests {
    use super::*;

    /// A malicious initiator that encrypts a low-order point as its static
    /// key gets `NonContributory` from the responder's `se`. This needs
    /// access to the internals, since an honest `KeyPair` never has a
    /// low-order public key.
    #[test]
    fn low_order_static_in_message_3_is_rejected() {
        let mut init = HandshakeState::new(
            Role::Initiator,
            b"",
            KeyPair::from_secret_bytes([1; 32]),
            KeyPair::from_secret_bytes([2; 32]),
        );
        let mut resp = HandshakeState::new(
            Role::Responder,
            b"",
            KeyPair::from_secret_bytes([3; 32]),
            KeyPair::from_secret_bytes([4; 32]),
        );
        let (mut m1, mut m2, mut p) = (Vec::new(), Vec::new(), Vec::new());
        init.write_message(b"", &mut m1).unwrap();
        resp.read_message(&m1, &mut p).unwrap();
        resp.write_message(b"", &mut m2).unwrap();
        init.read_message(&m2, &mut p).unwrap();

        // Hand-write message 3 with an all-zero static key.
        let mut m3 = Vec::new();
        init.symmetric
            .encrypt_and_hash(&[0u8; DH_LEN], &mut m3)
            .unwrap();
        assert_eq!(m3.len(), ENCRYPTED_STATIC_LEN);
        m3.extend_from_slice(&[0u8; TAG_LEN]);

        assert_eq!(
            resp.read_message(&m3, &mut p),
            Err(NoiseError::NonContributory)
        );
        assert_eq!(resp.read_message(&m3, &mut p), Err(NoiseError::OutOfOrder));
    }

    #[test]
    fn nonce_layout() {
        let n = chacha_nonce(0x0102_0304_0506_0708);
        assert_eq!(n.as_slice(), &[0, 0, 0, 0, 8, 7, 6, 5, 4, 3, 2, 1][..]);
    }
}
