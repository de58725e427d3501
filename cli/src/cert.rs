//! `toolwire cert issue` and `toolwire cert show`: operator certificates for tool
//! server identity keys (spec section 3.1).

use crate::error::{CliError, CliResult};
use crate::identity_file;
use std::path::PathBuf;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use toolwire_protocol::certificate::{decode_unverified, ServerCertificateBuilder};
use toolwire_protocol::IdentityKey;

/// Subcommands of `toolwire cert`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum CertCommand {
    /// Certifies a tool server's identity key with an operator key and prints the
    /// certificate on stdout.
    Issue(IssueArgs),
    /// Prints a certificate's claims (without verifying it).
    Show(ShowArgs),
}

/// Arguments of `toolwire cert issue`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "The tool server presents the certificate (serve --certificate FILE); agents that trust the operator key (call --trust-operator KEY) accept the server without pinning its key.\n\nExample:\n  toolwire cert issue --operator operator.key --server-key <server key> --ttl 30d --endpoint wss://tools.example.com/toolwire > server.cert"
)]
pub(crate) struct IssueArgs {
    /// The operator's identity file (the key agents trust).
    #[arg(long, value_name = "FILE")]
    operator: PathBuf,
    /// The identity key of the tool server to certify.
    #[arg(long, value_name = "KEY", allow_hyphen_values = true, value_parser = identity_file::parse_key)]
    server_key: IdentityKey,
    /// Lifetime: a number with a unit, s, m, h or d (90s, 15m, 1h, 30d).
    #[arg(long, value_name = "DURATION", value_parser = crate::grant::parse_ttl)]
    ttl: time::Duration,
    /// Restrict the certificate to this endpoint URL, exactly as agents dial it
    /// (repeatable; default: any endpoint).
    #[arg(long = "endpoint", value_name = "URL")]
    endpoints: Vec<String>,
}

/// Arguments of `toolwire cert show`.
#[derive(Debug, clap::Args)]
pub(crate) struct ShowArgs {
    /// A file holding the certificate token.
    #[arg(value_name = "FILE")]
    file: PathBuf,
}

pub(crate) fn run(command: CertCommand) -> CliResult {
    match command {
        CertCommand::Issue(args) => issue(&args),
        CertCommand::Show(args) => show(&args),
    }
}

fn issue(args: &IssueArgs) -> CliResult {
    let operator = identity_file::read(&args.operator)?;
    let now = OffsetDateTime::now_utc();
    let mut builder = ServerCertificateBuilder::new(args.server_key, now + args.ttl).issued_at(now);
    if !args.endpoints.is_empty() {
        builder = builder.endpoints(args.endpoints.iter().cloned());
    }
    let token = builder
        .sign(&operator)
        .map_err(|error| CliError::new(format!("cannot issue the certificate: {error}")))?;
    outln!("{token}");
    Ok(())
}

fn show(args: &ShowArgs) -> CliResult {
    let token = read_token(&args.file)?;
    let certificate = decode_unverified(&token).map_err(|error| {
        CliError::new(format!(
            "{} is not a server certificate: {error}",
            args.file.display()
        ))
    })?;
    let time = |unix: i64| {
        OffsetDateTime::from_unix_timestamp(unix)
            .ok()
            .and_then(|t| t.format(&Rfc3339).ok())
            .unwrap_or_else(|| unix.to_string())
    };
    outln!("server      {}", certificate.server);
    outln!("operator    {} (not verified here)", certificate.operator);
    if let Some(not_before) = certificate.not_before_unix {
        outln!("not before  {}", time(not_before));
    }
    outln!("expires     {}", time(certificate.expires_at_unix));
    match &certificate.endpoints {
        Some(endpoints) => outln!("endpoints   {}", endpoints.join(" ")),
        None => outln!("endpoints   any"),
    }
    Ok(())
}

/// Reads a certificate token from a file (surrounding whitespace ignored).
pub(crate) fn read_token(path: &std::path::Path) -> CliResult<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| CliError::new(format!("cannot read {}: {error}", path.display())))?;
    Ok(text.trim().to_owned())
}
