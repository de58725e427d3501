//! The cases of the suite. Each names the clause ids of `spec/PROTOCOL.md` it checks;
//! `scripts/clause-trace.sh` counts the ids named in this directory as tested.

mod client;
mod server;

pub use client::client_cases;
pub use server::server_cases;
