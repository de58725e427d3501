//! Transport phase of a session: both directions' record state after a completed
//! handshake. Only a finished handshake can create one.
//!
//! Implements spec sections "Records" (REC-001..REC-033) and "Rekey" (KEY-003..KEY-006): a
//! KEY_UPDATE is sealed under the old epoch and every later record of that direction
//! uses the next epoch, whose key is `REKEY(previous key)`.

use crate::config::ConnectionLimits;
use crate::error::{Error, LocalError};
use crate::message::{KeyUpdate, Message};
use crate::noise::{Key, TAG_LEN};
use crate::record::{Receiver, Sender};

/// The keys and counters of an established session.
#[cfg_attr(feature = "__testing", derive(Clone))]
pub struct Transport {
    sender: Sender,
    receiver: Receiver,
    session_id: [u8; 32],
    max_body: usize,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("session_id", &hex::encode(self.session_id))
            .field("send_epoch", &self.sender.epoch())
            .field("send_seq", &self.sender.next_seq())
            .field("receive_epoch", &self.receiver.epoch())
            .finish_non_exhaustive()
    }
}

impl Transport {
    pub(crate) fn new(
        send_key: Key,
        receive_key: Key,
        session_id: [u8; 32],
        limits: &ConnectionLimits,
    ) -> Self {
        #[allow(unused_mut)] // mutated only with `__fault_injection`
        let mut receiver = Receiver::new(receive_key, limits.strict_order, limits.max_record_body);
        #[cfg(feature = "__fault_injection")]
        if limits.fault_skip_replay_check_for_conformance_testing_only {
            receiver.skip_replay_check_for_conformance_testing_only();
        }
        Self {
            sender: Sender::new(send_key),
            receiver,
            session_id,
            max_body: limits.max_record_body,
        }
    }

    /// The session id (final handshake hash).
    pub fn session_id(&self) -> [u8; 32] {
        self.session_id
    }

    /// Largest encoded message that fits in one record.
    pub fn max_message_len(&self) -> usize {
        self.max_body.saturating_sub(TAG_LEN)
    }

    /// Current sending epoch.
    pub fn send_epoch(&self) -> u32 {
        self.sender.epoch()
    }

    /// Current receiving epoch.
    pub fn receive_epoch(&self) -> u32 {
        self.receiver.epoch()
    }

    /// Next sequence number this side will send.
    pub fn next_send_seq(&self) -> u64 {
        self.sender.next_seq()
    }

    /// Records sent in the current epoch.
    pub fn records_in_send_epoch(&self) -> u64 {
        self.sender.records_in_epoch()
    }

    /// Whether the sender has only the sequence number reserved for CLOSE left.
    pub fn send_exhausted(&self) -> bool {
        self.sender.is_exhausted()
    }

    /// Starts the sending direction at sequence number `seq` and epoch `epoch`
    /// instead of 0 and 0 (before anything is sealed): the conformance-testing
    /// start of [`DangerousServerConfig`](crate::config::DangerousServerConfig).
    pub(crate) fn start_send_at(&mut self, seq: u64, epoch: u32) {
        self.sender.start_at(seq, epoch);
    }

    /// Seals one message into a record.
    ///
    /// # Errors
    /// [`LocalError::MessageTooLarge`] when the encoding exceeds the record limit (the
    /// session is unaffected); [`Error::LimitExceeded`] past the last sequence number.
    pub fn seal(&mut self, message: &Message) -> Result<Vec<u8>, Error> {
        let plaintext = message.encode();
        if plaintext.len() > self.max_message_len() {
            return Err(Error::Local(LocalError::MessageTooLarge {
                size: plaintext.len(),
                limit: self.max_message_len(),
            }));
        }
        self.sender.seal(&plaintext)
    }

    /// Seals a KEY_UPDATE announcing the next epoch, then switches the sending key.
    ///
    /// # Errors
    /// [`Error::LimitExceeded`] when sequence numbers or epochs are used up.
    pub fn seal_key_update(&mut self) -> Result<Vec<u8>, Error> {
        let next_epoch = self
            .sender
            .epoch()
            .checked_add(1)
            .ok_or(Error::LimitExceeded(crate::error::Limit::SequenceSpace))?;
        let record = self.seal(&Message::KeyUpdate(KeyUpdate { epoch: next_epoch }))?;
        self.sender.rekey()?;
        Ok(record)
    }

    /// Runs the receive path on one record and decodes its message. A KEY_UPDATE is
    /// applied here (the receiving key moves to the next epoch) and still returned.
    ///
    /// # Errors
    /// Header, replay, decryption and decoding errors, each mapping to its close code.
    pub fn open(&mut self, record: &[u8]) -> Result<Message, Error> {
        let plaintext = self.receiver.open(record)?;
        let message = Message::decode(&plaintext)?;
        if let Message::KeyUpdate(update) = &message {
            self.receiver.rekey(update.epoch)?;
        }
        Ok(message)
    }

    #[cfg(feature = "__testing")]
    pub(crate) fn seal_raw(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, Error> {
        self.sender.seal(plaintext)
    }

    #[cfg(feature = "__testing")]
    pub(crate) fn set_next_send_seq(&mut self, seq: u64) {
        self.sender.set_next_seq(seq);
    }

    #[cfg(feature = "__testing")]
    pub(crate) fn set_epochs(&mut self, send: u32, receive: u32) {
        self.sender.set_epoch(send);
        self.receiver.set_epoch(receive);
    }
}
