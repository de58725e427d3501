//! The cases of the suite. Each names the clause ids of `spec/PROTOCOL.md` it checks;
//! `scripts/clause-trace.sh` counts the ids named in this directory as tested.

mod client;
mod client_more;
mod server;
mod server_amo;
mod server_limits;
mod server_misc;

use crate::client::ClientCase;
use crate::server::ServerCase;

/// Every server-mode case, in run order: the flood cases last, because they drain the
/// identity's budgets.
pub fn server_cases() -> Vec<ServerCase> {
    let mut cases = server::core_cases();
    cases.extend(server_misc::cases());
    cases.extend(server_limits::cases());
    cases.extend(server_amo::cases());
    cases.extend(server::flood_cases());
    cases
}

/// Every client-mode case, in run order.
pub fn client_cases() -> Vec<ClientCase> {
    let mut cases = client::client_cases();
    cases.extend(client_more::cases());
    cases
}
