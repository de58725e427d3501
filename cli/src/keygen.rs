//! `toolwire keygen`: a new identity in a file only its owner can read.

use crate::error::CliResult;
use crate::identity_file;
use std::path::PathBuf;
use toolwire_protocol::Identity;

/// Arguments of `toolwire keygen`.
#[derive(Debug, clap::Args)]
pub(crate) struct KeygenArgs {
    /// Where to write the identity (created with mode 0600).
    #[arg(long, short, value_name = "FILE", default_value = "toolwire.key")]
    out: PathBuf,
    /// Replace an existing file. The identity it held is lost for good.
    #[arg(long)]
    force: bool,
}

pub(crate) fn run(args: &KeygenArgs) -> CliResult {
    let identity = Identity::generate(&mut rand_core::OsRng);
    identity_file::write_new(&args.out, &identity, args.force)?;
    let key = identity.public_key();
    outln!("wrote a new identity to {} (mode 0600)", args.out.display());
    outln!("  public key   {key}");
    outln!("  fingerprint  {}", key.fingerprint());
    outln!("Share the public key (never the file): servers allow it with --allow-client, agents pin it with --server-key.");
    Ok(())
}

/// Arguments of `toolwire pubkey`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "The key alone goes to stdout, so that scripts can write:\n  toolwire serve ... --allow-client \"$(toolwire pubkey agent.key)\""
)]
pub(crate) struct PubkeyArgs {
    /// The identity file.
    #[arg(value_name = "FILE")]
    identity: PathBuf,
}

pub(crate) fn run_pubkey(args: &PubkeyArgs) -> CliResult {
    let key = identity_file::read(&args.identity)?.public_key();
    outln!("{key}");
    errln!("fingerprint {}", key.fingerprint());
    Ok(())
}
