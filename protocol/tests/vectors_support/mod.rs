//! Shared by the vector generator (`vectors_generate.rs`) and the vector checker
//! (`vectors_check.rs`): where the files live, their names, and the naming convention
//! for expected errors. Nothing here produces an expected value.

#![allow(dead_code)] // each test crate uses a different subset

use serde_json::Value;
use toolwire_protocol::error::{Error, Incompatibility};
use toolwire_protocol::grant::GrantError;

/// Directory of the committed vector files.
pub(crate) const VECTORS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../spec/vectors/");

/// Every vector file, by name.
pub(crate) const FILES: &[&str] = &[
    "handshake.json",
    "record.json",
    "replay_window.json",
    "rekey.json",
    "envelope.json",
    "grant.json",
    "messages.json",
    "certificate.json",
    "at_most_once.json",
];

/// Reads and parses one committed vector file.
///
/// # Panics
/// If the file is missing or not JSON.
pub(crate) fn load(name: &str) -> Value {
    let path = format!("{VECTORS_DIR}{name}");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {path}: {e} (run scripts/regen-vectors.sh)"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} is not JSON: {e}"))
}

/// The informative error name used in `expectedError` fields: `Category` or
/// `Category.Detail`, after the Rust variant names of `toolwire_protocol::Error`.
/// The normative expectation is the close code; this pins the reason as well.
pub(crate) fn error_name(error: &Error) -> String {
    match error {
        Error::Malformed(detail) => format!("Malformed.{detail:?}"),
        Error::PeerMisbehaved(detail) => format!("PeerMisbehaved.{detail:?}"),
        Error::Incompatible(Incompatibility::Version(_)) => "Incompatible.Version".to_owned(),
        Error::DecryptFailed => "DecryptFailed".to_owned(),
        Error::HandshakeFailed => "HandshakeFailed".to_owned(),
        Error::AuthFailed(detail) => format!("AuthFailed.{detail:?}"),
        Error::LimitExceeded(detail) => format!("LimitExceeded.{detail:?}"),
        Error::Timeout(detail) => format!("Timeout.{detail:?}"),
        other => format!("{other:?}"),
    }
}

/// The close-code name an error closes the connection with.
pub(crate) fn close_code_name(error: &Error) -> String {
    error
        .close_code()
        .and_then(|code| code.name())
        .unwrap_or("NONE")
        .to_owned()
}

/// The name of a grant error in `expectedError`: the variant name, with the
/// offending part after a dot for `Malformed` (`Malformed.footer`).
pub(crate) fn grant_error_name(error: &GrantError) -> String {
    match error {
        GrantError::Malformed(part) => format!("Malformed.{part}"),
        other => format!("{other:?}"),
    }
}

/// The name of a certificate error as certificate.json spells it.
pub(crate) fn certificate_error_name(
    error: &toolwire_protocol::certificate::CertificateError,
) -> String {
    match error {
        toolwire_protocol::certificate::CertificateError::Malformed(part) => {
            format!("Malformed.{part}")
        }
        other => format!("{other:?}"),
    }
}

/// Lower-case hex.
pub(crate) fn hex(bytes: impl AsRef<[u8]>) -> String {
    ::hex::encode(bytes)
}

/// A record receiver's state as record.json describes it.
pub(crate) struct ReceiverState {
    /// Current receive epoch.
    pub(crate) epoch: u32,
    /// Inclusive ranges of accepted sequence numbers, increasing.
    pub(crate) accepted: Vec<(u64, u64)>,
    /// Whether only the next expected sequence number is accepted.
    pub(crate) strict_order: bool,
    /// Largest record body accepted.
    pub(crate) max_record_body: usize,
}

/// Reaches `state` the way record.json's header describes: a fresh receiver on
/// `initial_key` is fed genuine records for every accepted sequence number in
/// increasing order, the first `state.epoch` of them KEY_UPDATEs, the rest PINGs.
///
/// # Panics
/// If the state is unreachable that way or a setup record is refused.
pub(crate) fn receiver_from_state(
    initial_key: [u8; 32],
    state: &ReceiverState,
) -> toolwire_protocol::transport::Transport {
    use toolwire_protocol::message::{KeyUpdate, Message, Ping};
    use toolwire_protocol::noise;
    use toolwire_protocol::record::{RecordHeader, RecordType};

    let mut limits = toolwire_protocol::ConnectionLimits::default();
    limits.strict_order = state.strict_order;
    limits.max_record_body = state.max_record_body;
    let mut receiver = toolwire_protocol::testing::transport_from_keys_for_testing_only(
        [0xee; 32],
        initial_key,
        [0x5e; 32],
        &limits,
    );
    let mut epoch = 0u32;
    let mut key = initial_key;
    for &(first, last) in &state.accepted {
        for seq in first..=last {
            let rekeying = epoch < state.epoch;
            let message = if rekeying {
                Message::KeyUpdate(KeyUpdate { epoch: epoch + 1 })
            } else {
                Message::Ping(Ping { nonce: seq })
            };
            let header = RecordHeader {
                version: 1,
                record_type: RecordType::SEALED,
                reserved: 0,
                epoch,
                seq,
            }
            .encode();
            let mut record = header.to_vec();
            noise::seal(&key, seq, &header, &message.encode(), &mut record);
            if let Err(error) = receiver.open(&record) {
                panic!("setup record {seq} refused: {error:?}");
            }
            if rekeying {
                epoch += 1;
                key = *noise::rekey(&key);
            }
        }
    }
    assert_eq!(
        epoch, state.epoch,
        "not enough accepted records to reach the epoch"
    );
    assert_eq!(receiver.receive_epoch(), state.epoch);
    receiver
}
