//! The cases of the suite. Each names the clause ids of `spec/PROTOCOL.md` it checks;
//! `scripts/clause-trace.sh` counts the ids named in this directory as tested.

mod server;

pub use server::server_cases;
