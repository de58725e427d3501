//! The record layer: a 16-byte header and an AEAD-sealed body per WebSocket message.
//!
//! Implements spec section "Records" (REC-001..REC-033):
//!
//! ```text
//! offset  size  field
//! 0       1     version   (1)
//! 1       1     type      (1, 2, 3 handshake messages; 0x10 sealed)
//! 2       2     reserved  (0, little-endian u16)
//! 4       4     epoch     (little-endian u32)
//! 8       8     seq       (little-endian u64)
//! 16      ..    body      (handshake message, or ChaCha20-Poly1305 ciphertext||tag)
//! ```
//!
//! A sealed body is `ChaCha20-Poly1305(key[epoch], nonce = 0^32 || u64le(seq),
//! ad = header, plaintext = inner message)`. The receive path runs, in order: length
//! and header checks → replay check (cheap, before AEAD) → open → window update (only
//! after success) → decode.

use crate::error::{Error, Incompatibility, Limit, Malformed, Misbehavior};
use crate::noise::{self, Key, TAG_LEN};
use crate::replay::{RecordWindow, ReplayError, SEQUENCE_LIMIT};
use std::fmt;

/// Length of the record header.
pub const HEADER_LEN: usize = 16;
/// The only protocol version this implementation speaks.
pub const PROTOCOL_VERSION: u8 = 1;
/// Largest record body (ciphertext including the tag) accepted by default.
pub const DEFAULT_MAX_BODY_LEN: usize = 64 * 1024;
/// The last sequence number a sender may use; it is reserved for the CLOSE record
/// that announces SEQUENCE_EXHAUSTED.
pub const LAST_SEQUENCE: u64 = SEQUENCE_LIMIT - 1;

/// The record type byte.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RecordType(pub u8);

impl RecordType {
    /// Handshake message 1 (client → server): `e`.
    pub const HANDSHAKE_1: Self = Self(1);
    /// Handshake message 2 (server → client): `e, ee, s, es` + server hello.
    pub const HANDSHAKE_2: Self = Self(2);
    /// Handshake message 3 (client → server): `s, se` + client hello.
    pub const HANDSHAKE_3: Self = Self(3);
    /// A sealed transport record carrying one inner message.
    pub const SEALED: Self = Self(0x10);
}

impl fmt::Debug for RecordType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RecordType({:#04x})", self.0)
    }
}

/// A parsed record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// Protocol version.
    pub version: u8,
    /// Record type.
    pub record_type: RecordType,
    /// Reserved, must be zero.
    pub reserved: u16,
    /// Key epoch of a sealed record; 0 for handshake records.
    pub epoch: u32,
    /// Sequence number of a sealed record; 0 for handshake records.
    pub seq: u64,
}

impl RecordHeader {
    /// The header of a handshake record: fixed fields (REC-003).
    pub fn handshake(record_type: RecordType) -> Self {
        Self {
            version: PROTOCOL_VERSION,
            record_type,
            reserved: 0,
            epoch: 0,
            seq: 0,
        }
    }

    /// Serializes the header.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0] = self.version;
        out[1] = self.record_type.0;
        out[2..4].copy_from_slice(&self.reserved.to_le_bytes());
        out[4..8].copy_from_slice(&self.epoch.to_le_bytes());
        out[8..16].copy_from_slice(&self.seq.to_le_bytes());
        out
    }

    /// Splits a record into its header and body. Checks only the length and the
    /// version byte (REC-004, REC-005); field rules depend on the state.
    ///
    /// # Errors
    /// [`Malformed::Record`] when shorter than the header;
    /// [`Incompatibility::Version`] for another version.
    pub fn parse(record: &[u8]) -> Result<(Self, &[u8]), Error> {
        let (header, body) = record
            .split_first_chunk::<HEADER_LEN>()
            .ok_or(Error::Malformed(Malformed::Record))?;
        let version = header[0];
        if version != PROTOCOL_VERSION {
            return Err(Error::Incompatible(Incompatibility::Version(version)));
        }
        let parsed = Self {
            version,
            record_type: RecordType(header[1]),
            reserved: u16::from_le_bytes([header[2], header[3]]),
            epoch: u32::from_le_bytes([header[4], header[5], header[6], header[7]]),
            seq: u64::from_le_bytes([
                header[8], header[9], header[10], header[11], header[12], header[13], header[14],
                header[15],
            ]),
        };
        Ok((parsed, body))
    }
}

/// Builds a handshake record from a Noise handshake message.
pub(crate) fn handshake_record(record_type: RecordType, message: &[u8]) -> Vec<u8> {
    let mut record = Vec::with_capacity(HEADER_LEN + message.len());
    record.extend_from_slice(&RecordHeader::handshake(record_type).encode());
    record.extend_from_slice(message);
    record
}

/// Parses a handshake record of the expected type and returns its Noise message.
pub(crate) fn open_handshake_record(
    record: &[u8],
    expected: RecordType,
    max_body_len: usize,
) -> Result<&[u8], Error> {
    let (header, body) = RecordHeader::parse(record)?;
    if body.len() > max_body_len {
        return Err(Error::LimitExceeded(Limit::RecordSize));
    }
    if header.record_type != expected {
        return Err(Error::PeerMisbehaved(Misbehavior::UnexpectedRecordType));
    }
    if header != RecordHeader::handshake(expected) {
        return Err(Error::PeerMisbehaved(Misbehavior::BadHandshakeHeader));
    }
    Ok(body)
}

/// The sending half of a direction: key, epoch and next sequence number.
#[cfg_attr(feature = "__testing", derive(Clone))]
pub(crate) struct Sender {
    key: Key,
    epoch: u32,
    next_seq: u64,
    records_in_epoch: u64,
}

impl Sender {
    pub(crate) fn new(key: Key) -> Self {
        Self {
            key,
            epoch: 0,
            next_seq: 0,
            records_in_epoch: 0,
        }
    }

    pub(crate) fn epoch(&self) -> u32 {
        self.epoch
    }

    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub(crate) fn records_in_epoch(&self) -> u64 {
        self.records_in_epoch
    }

    /// Whether only the reserved last sequence number is left (REC-013).
    pub(crate) fn is_exhausted(&self) -> bool {
        self.next_seq >= LAST_SEQUENCE
    }

    /// Seals one plaintext into a record. The caller checks exhaustion first; this
    /// refuses to go past the last sequence number in any case.
    pub(crate) fn seal(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, Error> {
        if self.next_seq > LAST_SEQUENCE {
            return Err(Error::LimitExceeded(Limit::SequenceSpace));
        }
        let header = RecordHeader {
            version: PROTOCOL_VERSION,
            record_type: RecordType::SEALED,
            reserved: 0,
            epoch: self.epoch,
            seq: self.next_seq,
        }
        .encode();
        // One allocation: the ciphertext and tag are appended after the header.
        let mut record = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
        record.extend_from_slice(&header);
        noise::seal(&self.key, self.next_seq, &header, plaintext, &mut record);
        self.next_seq += 1;
        self.records_in_epoch += 1;
        Ok(record)
    }

    /// Moves to the next epoch: key ← REKEY(key) (KS-003).
    pub(crate) fn rekey(&mut self) -> Result<(), Error> {
        self.epoch = self
            .epoch
            .checked_add(1)
            .ok_or(Error::LimitExceeded(Limit::SequenceSpace))?;
        self.key = noise::rekey(&self.key);
        self.records_in_epoch = 0;
        Ok(())
    }

    /// Starts a fresh direction at sequence number `seq` (at most the reserved last
    /// one) and epoch `epoch`, the key unchanged: the conformance-testing start of
    /// [`DangerousServerConfig`](crate::config::DangerousServerConfig). Nonces stay
    /// unique: the numbers still only grow from there.
    pub(crate) fn start_at(&mut self, seq: u64, epoch: u32) {
        self.next_seq = seq.min(LAST_SEQUENCE);
        self.epoch = epoch;
    }

    #[cfg(feature = "__testing")]
    pub(crate) fn set_next_seq(&mut self, seq: u64) {
        self.next_seq = seq;
    }

    /// Relabels the current epoch (the key is unchanged).
    #[cfg(feature = "__testing")]
    pub(crate) fn set_epoch(&mut self, epoch: u32) {
        self.epoch = epoch;
    }
}

/// The receiving half of a direction.
#[cfg_attr(feature = "__testing", derive(Clone))]
pub(crate) struct Receiver {
    key: Key,
    epoch: u32,
    window: RecordWindow,
    strict_order: bool,
    max_body_len: usize,
    /// FAULT INJECTION (conformance suite tests only): replay and order unchecked.
    #[cfg(feature = "__fault_injection")]
    skip_replay_check: bool,
}

impl Receiver {
    pub(crate) fn new(key: Key, strict_order: bool, max_body_len: usize) -> Self {
        Self {
            key,
            epoch: 0,
            window: RecordWindow::new(),
            strict_order,
            max_body_len,
            #[cfg(feature = "__fault_injection")]
            skip_replay_check: false,
        }
    }

    /// FAULT INJECTION: stops checking replay and order (conformance tests only).
    #[cfg(feature = "__fault_injection")]
    pub(crate) fn skip_replay_check_for_conformance_testing_only(&mut self) {
        self.skip_replay_check = true;
    }

    pub(crate) fn epoch(&self) -> u32 {
        self.epoch
    }

    /// The receive path for a sealed record (REC-020..REC-033). Returns the plaintext.
    pub(crate) fn open(&mut self, record: &[u8]) -> Result<Vec<u8>, Error> {
        let (header, body) = RecordHeader::parse(record)?;
        if body.len() > self.max_body_len {
            return Err(Error::LimitExceeded(Limit::RecordSize));
        }
        if header.record_type != RecordType::SEALED {
            return Err(Error::PeerMisbehaved(Misbehavior::UnexpectedRecordType));
        }
        if header.reserved != 0 {
            return Err(Error::PeerMisbehaved(Misbehavior::ReservedBitsSet));
        }
        if header.epoch != self.epoch {
            return Err(Error::PeerMisbehaved(Misbehavior::WrongEpoch));
        }
        self.check_sequence(header.seq)?;
        if body.len() < TAG_LEN {
            return Err(Error::Malformed(Malformed::Record));
        }
        let mut plaintext = Vec::with_capacity(body.len() - TAG_LEN);
        noise::open(
            &self.key,
            header.seq,
            &record[..HEADER_LEN],
            body,
            &mut plaintext,
        )
        .map_err(|_| Error::DecryptFailed)?;
        let recorded = self.window.update(header.seq);
        #[cfg(feature = "__fault_injection")]
        let recorded = if self.skip_replay_check {
            Ok(())
        } else {
            recorded
        };
        recorded.map_err(|_| Error::PeerMisbehaved(Misbehavior::Replayed))?;
        Ok(plaintext)
    }

    fn check_sequence(&self, seq: u64) -> Result<(), Error> {
        #[cfg(feature = "__fault_injection")]
        if self.skip_replay_check {
            return Ok(());
        }
        match self.window.check(seq) {
            Ok(()) => {}
            Err(ReplayError::LimitReached) => {
                return Err(Error::LimitExceeded(Limit::SequenceSpace))
            }
            Err(_) => return Err(Error::PeerMisbehaved(Misbehavior::Replayed)),
        }
        if self.strict_order {
            let expected = self.window.highest().map_or(0, |highest| highest + 1);
            if seq != expected {
                return Err(Error::PeerMisbehaved(Misbehavior::Reordered));
            }
        }
        Ok(())
    }

    /// Moves to the next epoch after a KEY_UPDATE announcing `announced` (KEY-005).
    pub(crate) fn rekey(&mut self, announced: u32) -> Result<(), Error> {
        if Some(announced) != self.epoch.checked_add(1) {
            return Err(Error::PeerMisbehaved(Misbehavior::BadKeyUpdate));
        }
        self.epoch = announced;
        self.key = noise::rekey(&self.key);
        Ok(())
    }

    /// Relabels the current epoch (the key is unchanged).
    #[cfg(feature = "__testing")]
    pub(crate) fn set_epoch(&mut self, epoch: u32) {
        self.epoch = epoch;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Sender, Receiver) {
        let key: Key = Key::new([3u8; 32]);
        (
            Sender::new(key.clone()),
            Receiver::new(key, true, DEFAULT_MAX_BODY_LEN),
        )
    }

    #[test]
    fn header_layout_is_little_endian() {
        let header = RecordHeader {
            version: 1,
            record_type: RecordType::SEALED,
            reserved: 0,
            epoch: 0x0102_0304,
            seq: 0x0506_0708_090a_0b0c,
        };
        assert_eq!(
            header.encode(),
            [1, 0x10, 0, 0, 4, 3, 2, 1, 0x0c, 0x0b, 0x0a, 9, 8, 7, 6, 5]
        );
        let encoded = header.encode();
        let (parsed, body) = RecordHeader::parse(&encoded).expect("parses");
        assert_eq!(parsed, header);
        assert!(body.is_empty());
    }

    #[test]
    fn seal_then_open_in_order_across_a_rekey() {
        let (mut sender, mut receiver) = pair();
        for round in 0..3u8 {
            let record = sender.seal(&[round; 10]).expect("seals");
            assert_eq!(receiver.open(&record).expect("opens"), vec![round; 10]);
        }
        sender.rekey().expect("rekeys");
        receiver.rekey(1).expect("rekeys");
        let record = sender.seal(b"after").expect("seals");
        assert_eq!(&record[4..8], &1u32.to_le_bytes());
        assert_eq!(&record[8..16], &3u64.to_le_bytes());
        assert_eq!(receiver.open(&record).expect("opens"), b"after");
    }

    #[test]
    fn failed_open_does_not_move_the_window() {
        let (mut sender, mut receiver) = pair();
        let record = sender.seal(b"x").expect("seals");
        let mut tampered = record.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(receiver.open(&tampered), Err(Error::DecryptFailed));
        assert_eq!(
            receiver
                .open(&record)
                .expect("the genuine record still opens"),
            b"x"
        );
    }

    #[test]
    fn key_update_must_announce_the_next_epoch() {
        let (_, mut receiver) = pair();
        assert_eq!(
            receiver.rekey(2),
            Err(Error::PeerMisbehaved(Misbehavior::BadKeyUpdate))
        );
        assert_eq!(
            receiver.rekey(0),
            Err(Error::PeerMisbehaved(Misbehavior::BadKeyUpdate))
        );
    }
}
