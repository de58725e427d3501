//! (being written)

use crate::server::ServerCase;

/// The cases of this file, in run order.
pub(super) fn cases() -> Vec<ServerCase> {
    Vec::new()
}
