//! Anti-replay sliding windows for record sequence numbers and request ids.
//!
//! Implements spec section "Replay window" (RPL-001..RPL-009).
//!
//! The window is the bitmap construction of RFC 6479 ("IPsec Anti-Replay
//! Algorithm without Bit Shifting"), in the same shape as wireguard-go's
//! `replay.go`: a ring of `BLOCKS` 64-bit words indexed by `value / 64`
//! (mod `BLOCKS`), with bit `value % 64` in that word recording whether the
//! value was accepted. Moving the window forward zeroes whole words instead of
//! shifting the bitmap, so [`ReplayWindow::check`] and
//! [`ReplayWindow::update`] run in time bounded by `BLOCKS` (a constant) and
//! never allocate. One word of the ring is always kept spare (RFC 6479 §3): the
//! word the top of the window is moving into is cleared as a whole, and the
//! spare word guarantees that this never erases a value still inside the
//! window. The usable window is therefore `(BLOCKS - 1) * 64` values.
//!
//! # Acceptance rule (normative)
//!
//! Let `WINDOW` be [`ReplayWindow::WINDOW`], and let `top` be the highest
//! value accepted so far by the window (initially there is none).
//! A value `seq` is **accepted** if and only if all of the following hold:
//!
//! 1. `seq < SEQUENCE_LIMIT` (that is, `seq < 2^62`);
//! 2. `top` is none, or `seq > top`, or `top - seq < WINDOW`;
//! 3. `seq` has not been accepted before.
//!
//! Otherwise it is **rejected**, with the first matching reason in this order:
//!
//! 1. `seq >= SEQUENCE_LIMIT` → [`ReplayError::LimitReached`];
//! 2. `top` is some and `seq <= top` and `top - seq >= WINDOW` →
//!    [`ReplayError::TooOld`] (such a value is treated as a replay whether or
//!    not it was ever seen, because the window no longer remembers it);
//! 3. `seq` was accepted before → [`ReplayError::Duplicate`].
//!
//! Consequences spelled out, since they are easy to get wrong:
//!
//! * `0` is a valid first value and is accepted exactly once; "nothing seen
//!   yet" is tracked separately from `top`, never encoded as `top == 0`.
//! * With `top` set, `top - seq == WINDOW - 1` is accepted if unseen, and
//!   `top - seq == WINDOW` is [`ReplayError::TooOld`].
//! * Every value inside the window that was never accepted is accepted,
//!   including values in words that a forward jump has just cleared and values
//!   that a jump skipped over: a jump only ever clears words above the old
//!   `top`, which by definition hold no accepted value.
//! * A forward jump of any size, including one larger than the whole ring,
//!   forgets nothing that is still inside the new window: values accepted
//!   before the jump with `new_top - seq < WINDOW` stay duplicates, and
//!   everything else inside the new window stays acceptable.
//! * A value at or beyond `SEQUENCE_LIMIT`, including `u64::MAX`, is refused
//!   without touching the window and without arithmetic overflow.
//!
//! # Use
//!
//! Call [`ReplayWindow::check`] *before* authenticating a record (it takes
//! `&self`, so forged input cannot move the window), and
//! [`ReplayWindow::update`] only *after* authentication succeeded. `update`
//! re-checks, so when two records carrying the same value both pass `check`
//! before either is authenticated, the second `update` still refuses it: the
//! caller must honour `update`'s result, not just `check`'s.
//!
//! ```
//! use toolwire_protocol::replay::{RecordWindow, ReplayError};
//!
//! let mut window = RecordWindow::new();
//! assert_eq!(window.check(0), Ok(()));
//! // ... authenticate the record carrying sequence number 0 ...
//! assert_eq!(window.update(0), Ok(()));
//! assert_eq!(window.check(0), Err(ReplayError::Duplicate));
//! assert_eq!(window.highest(), Some(0));
//! ```
//!
//! A ring size that is not a power of two (or smaller than 2) does not
//! compile:
//!
//! ```compile_fail
//! let window = toolwire_protocol::replay::ReplayWindow::<3>::new();
//! ```

/// Exclusive upper bound on the sequence numbers/request ids a window
/// accepts: values >= this are refused (the record layer closes at 2^62), so
/// the highest acceptable value is `SEQUENCE_LIMIT - 1`.
pub const SEQUENCE_LIMIT: u64 = 1 << 62;

/// Bits per ring word.
const BLOCK_BITS: u64 = u64::BITS as u64;
/// `log2(BLOCK_BITS)`: shift that turns a value into its block index.
const BLOCK_SHIFT: u32 = BLOCK_BITS.trailing_zeros();

/// Why a window refused a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// Seen before.
    #[error("duplicate")]
    Duplicate,
    /// Older than the window can remember: treated as a replay.
    #[error("too old")]
    TooOld,
    /// At or beyond [`SEQUENCE_LIMIT`].
    #[error("sequence limit reached")]
    LimitReached,
}

/// RFC 6479 anti-replay window over `BLOCKS` 64-bit words.
///
/// `BLOCKS` u64 words = `BLOCKS * 64` bits of ring; the usable window is
/// `(BLOCKS - 1) * 64` (RFC 6479 §3: one block is kept spare so a slide clears
/// whole blocks). `BLOCKS` must be a power of two and at least 2; other values
/// are rejected at compile time as soon as the window is constructed or
/// [`Self::WINDOW`] is used.
///
/// See the [module documentation](self) for the exact acceptance rule.
///
/// The type is deliberately not `Copy`: silently duplicating replay state and
/// updating the copy would reopen the window for the original.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayWindow<const BLOCKS: usize> {
    /// Highest value accepted so far; `None` until the first acceptance, so
    /// that `0` remains acceptable as a first value.
    top: Option<u64>,
    /// Ring of bitmap words; word `(v / 64) % BLOCKS`, bit `v % 64` is set iff
    /// `v` was accepted and `v / 64` lies within the `BLOCKS` blocks ending at
    /// `top / 64`.
    ring: [u64; BLOCKS],
}

/// 2048-bit ring for record sequence numbers (per direction).
pub type RecordWindow = ReplayWindow<32>;
/// 4096-bit ring for request ids (at-most-once table).
pub type RequestIdWindow = ReplayWindow<64>;

impl<const BLOCKS: usize> ReplayWindow<BLOCKS> {
    /// Usable window in values: `(BLOCKS - 1) * 64`.
    ///
    /// Evaluating this constant also enforces, at compile time, that `BLOCKS`
    /// is a power of two (so the ring index is a mask) and at least 2 (so
    /// there is a spare block and a non-empty window).
    pub const WINDOW: u64 = {
        assert!(
            BLOCKS >= 2 && BLOCKS.is_power_of_two(),
            "ReplayWindow BLOCKS must be a power of two >= 2"
        );
        // `BLOCKS` fits in u64 on every supported target (usize <= 64 bits).
        (BLOCKS as u64 - 1) * BLOCK_BITS
    };

    /// Mask turning a block index into a ring slot.
    const SLOT_MASK: u64 = BLOCKS as u64 - 1;

    /// Creates an empty window: nothing accepted yet, every value below
    /// [`SEQUENCE_LIMIT`] acceptable.
    #[inline]
    #[must_use]
    pub const fn new() -> Self {
        // Force evaluation of the compile-time `BLOCKS` check for every
        // instantiation that can actually be constructed.
        _ = Self::WINDOW;
        Self {
            top: None,
            ring: [0; BLOCKS],
        }
    }

    /// Ring slot holding the word for block index `block`.
    #[inline]
    #[allow(clippy::cast_possible_truncation)] // masked below BLOCKS: lossless
    const fn slot(block: u64) -> usize {
        // The mask keeps the result below `BLOCKS`, so the cast is lossless
        // and indexing `ring` with it cannot go out of bounds.
        (block & Self::SLOT_MASK) as usize
    }

    /// Single-bit mask for `seq` within its word.
    #[inline]
    const fn bit(seq: u64) -> u64 {
        1 << (seq & (BLOCK_BITS - 1))
    }

    /// Checks whether `seq` would be accepted, without changing the window.
    ///
    /// Call this *before* AEAD, so unauthenticated input cannot move the
    /// window.
    ///
    /// # Errors
    ///
    /// [`ReplayError::LimitReached`] if `seq >= SEQUENCE_LIMIT`,
    /// [`ReplayError::TooOld`] if `seq` fell out of the window, and
    /// [`ReplayError::Duplicate`] if `seq` was already accepted.
    #[inline]
    pub const fn check(&self, seq: u64) -> Result<(), ReplayError> {
        if seq >= SEQUENCE_LIMIT {
            return Err(ReplayError::LimitReached);
        }
        let Some(top) = self.top else {
            return Ok(());
        };
        if seq > top {
            return Ok(());
        }
        // `seq <= top` here, so the subtraction cannot underflow.
        if top - seq >= Self::WINDOW {
            return Err(ReplayError::TooOld);
        }
        // Within the window the ring word for `seq` is authoritative (see the
        // invariant on `ring`).
        if self.ring[Self::slot(seq >> BLOCK_SHIFT)] & Self::bit(seq) != 0 {
            Err(ReplayError::Duplicate)
        } else {
            Ok(())
        }
    }

    /// Marks `seq` as seen.
    ///
    /// Call this only *after* successful authentication. Returns the same
    /// result [`Self::check`] would have returned, and only mutates the window
    /// when that result is `Ok`.
    ///
    /// # Errors
    ///
    /// As for [`Self::check`]; on error the window is unchanged.
    #[inline]
    pub fn update(&mut self, seq: u64) -> Result<(), ReplayError> {
        self.check(seq)?;
        let block = seq >> BLOCK_SHIFT;
        match self.top {
            // Moving forward: clear the words for every block between the
            // old top's block (exclusive) and the new one (inclusive). Those
            // blocks lie entirely above the old top, so they hold no accepted
            // value; what the words contain is stale data from `BLOCKS`
            // blocks earlier, now outside the window.
            Some(top) if seq > top => {
                let current = top >> BLOCK_SHIFT;
                // Clearing more than `BLOCKS` words would only revisit slots,
                // so a jump past the whole ring is capped to one full sweep
                // (as wireguard-go does).
                let advance = block - current;
                if advance >= BLOCKS as u64 {
                    self.ring = [0; BLOCKS];
                } else {
                    for b in current + 1..=block {
                        self.ring[Self::slot(b)] = 0;
                    }
                }
                self.top = Some(seq);
            }
            Some(_) => {}
            // First acceptance: the ring is still all zeroes, nothing to
            // clear.
            None => self.top = Some(seq),
        }
        self.ring[Self::slot(block)] |= Self::bit(seq);
        Ok(())
    }

    /// Highest value accepted so far, `None` if none yet.
    #[inline]
    #[must_use]
    pub const fn highest(&self) -> Option<u64> {
        self.top
    }
}

impl<const BLOCKS: usize> Default for ReplayWindow<BLOCKS> {
    /// Same as [`ReplayWindow::new`]. Written by hand because `[u64; N]`
    /// implements `Default` only up to `N = 32`.
    #[inline]
    fn default() -> Self {
        Self::new()
    }
}
