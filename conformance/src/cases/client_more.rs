//! (being written)

use crate::client::ClientCase;

/// The cases of this file, in run order.
pub(super) fn cases() -> Vec<ClientCase> {
    Vec::new()
}
