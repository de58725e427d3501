//! `toolwire grant issue`: capability grants issued offline, and delegation.

use crate::error::{CliError, CliResult};
use crate::identity_file;
use std::path::PathBuf;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use toolwire_protocol::grant::{GrantBuilder, GrantClaims, ANY_TOOL};
use toolwire_protocol::paseto::decode_unverified_v4_public;
use toolwire_protocol::IdentityKey;

/// Subcommands of `toolwire grant`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum GrantCommand {
    /// Issues a grant and prints the token on stdout.
    Issue(IssueArgs),
}

/// Arguments of `toolwire grant issue`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "A root grant is signed by an issuer the tool server trusts (serve --grant-issuer).\nA delegation (--parent) is signed by the holder of the parent grant and may only narrow it: fewer tools, fewer scopes, an earlier expiry.\n\nExample:\n  toolwire grant issue --issuer operator.key --holder <agent key> --audience <server key> --tools echo,count --ttl 1h"
)]
pub(crate) struct IssueArgs {
    /// The signer's identity file: a trusted issuer, or for --parent the parent's holder.
    #[arg(long, value_name = "FILE")]
    issuer: PathBuf,
    /// The identity key of the agent that may use the grant.
    #[arg(long, value_name = "KEY", allow_hyphen_values = true, value_parser = identity_file::parse_key)]
    holder: IdentityKey,
    /// The identity key of the tool server the grant is for (default with --parent:
    /// the parent's).
    #[arg(long, value_name = "KEY", allow_hyphen_values = true, value_parser = identity_file::parse_key, required_unless_present = "parent")]
    audience: Option<IdentityKey>,
    /// Tools granted, comma-separated; `*` means every tool.
    #[arg(long, value_name = "TOOLS", value_delimiter = ',', required = true)]
    tools: Vec<String>,
    /// Lifetime: a number with a unit, s, m, h or d (90s, 15m, 1h, 7d).
    #[arg(long, value_name = "DURATION", value_parser = parse_ttl)]
    ttl: time::Duration,
    /// Scopes granted, comma-separated (repeatable).
    #[arg(long, value_name = "SCOPE", value_delimiter = ',')]
    scope: Vec<String>,
    /// Delegate: the parent grant token this grant narrows.
    #[arg(long, value_name = "TOKEN")]
    parent: Option<String>,
    /// The grant id (default: random). Revoking it revokes every delegation below it.
    #[arg(long, value_name = "ID")]
    id: Option<String>,
}

/// Parses `90s`, `15m`, `1h`, `7d`.
pub(crate) fn parse_ttl(text: &str) -> Result<time::Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{text}` has no unit: write e.g. 90s, 15m, 1h or 7d"))?;
    let (number, unit) = text.split_at(split);
    let number: i64 = number
        .parse()
        .map_err(|_| format!("`{text}` does not start with a number"))?;
    let seconds_per_unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("unknown unit `{unit}`: use s, m, h or d")),
    };
    let seconds = number
        .checked_mul(seconds_per_unit)
        .filter(|seconds| *seconds > 0 && *seconds <= 3660 * 86_400)
        .ok_or_else(|| format!("`{text}` is out of range (1s to 3660d)"))?;
    Ok(time::Duration::seconds(seconds))
}

pub(crate) fn run(command: GrantCommand) -> CliResult {
    match command {
        GrantCommand::Issue(args) => issue(&args),
    }
}

/// The claims of a parent token, read without verifying its signature: only to give
/// early, readable errors. The tool server verifies the whole chain.
fn parent_claims(token: &str) -> CliResult<GrantClaims> {
    let (message, _footer) = decode_unverified_v4_public(token.trim())
        .map_err(|error| CliError::new(format!("--parent is not a grant token: {error}")))?;
    serde_json::from_slice(&message)
        .map_err(|_| CliError::new("--parent is a PASETO token but not a toolwire grant"))
}

fn issue(args: &IssueArgs) -> CliResult {
    let issuer = identity_file::read(&args.issuer)?;
    let now = OffsetDateTime::now_utc();
    let mut expires_at = now + args.ttl;
    let mut audience = args.audience;
    let parent = args.parent.as_deref().map(parent_claims).transpose()?;
    if let Some(parent) = &parent {
        let issuer_text = issuer.public_key().to_string();
        if parent.sub != issuer_text {
            return Err(CliError::new(format!(
                "only the holder of the parent grant ({}) can delegate it; --issuer is {issuer_text}",
                parent.sub
            )));
        }
        let parent_audience = identity_file::parse_key(&parent.aud).map_err(CliError::new)?;
        match audience {
            Some(key) if key != parent_audience => {
                return Err(CliError::new(format!(
                    "--audience {key} differs from the parent grant's audience {parent_audience}"
                )))
            }
            _ => audience = Some(parent_audience),
        }
        let parent_all = parent.tools.iter().any(|tool| tool == ANY_TOOL);
        // A parent `*` covers any tool; otherwise each tool must be listed (a child
        // `*` is then never covered).
        if let Some(tool) = args
            .tools
            .iter()
            .find(|tool| !parent_all && !parent.tools.contains(tool))
        {
            return Err(CliError::new(format!(
                "tool `{tool}` is not covered by the parent grant (tools: {})",
                parent.tools.join(",")
            )));
        }
        if let Some(scope) = args
            .scope
            .iter()
            .find(|scope| !parent.scope.contains(scope))
        {
            return Err(CliError::new(format!(
                "scope `{scope}` is not in the parent grant (scopes: {})",
                parent.scope.join(",")
            )));
        }
        let parent_expiry = OffsetDateTime::parse(&parent.exp, &Rfc3339)
            .map_err(|_| CliError::new("the parent grant's expiry is not RFC 3339"))?;
        if parent_expiry <= now {
            return Err(CliError::new(format!(
                "the parent grant expired at {}",
                parent.exp
            )));
        }
        if expires_at > parent_expiry {
            errln!(
                "note: expiry shortened to the parent grant's ({})",
                parent.exp
            );
            expires_at = parent_expiry;
        }
    }
    let audience = audience.ok_or_else(|| CliError::new("--audience is required"))?;
    let id = args.id.clone().unwrap_or_else(random_id);
    let mut builder =
        GrantBuilder::new(args.holder.to_bytes(), audience.to_bytes(), &id, expires_at)
            .tools(args.tools.iter().map(|tool| tool.trim().to_owned()))
            .scope(args.scope.iter().map(|scope| scope.trim().to_owned()))
            .issued_at(now);
    if let (Some(token), Some(parent)) = (&args.parent, &parent) {
        builder = builder.delegate_from(token.trim());
        if let Some(sid) = parent
            .sid
            .as_deref()
            .and_then(|sid| hex::decode(sid).ok())
            .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        {
            builder = builder.session(sid);
        }
    }
    let token = builder
        .sign(issuer.signing_key())
        .map_err(|error| CliError::new(format!("cannot issue the grant: {error}")))?;
    let expiry = expires_at
        .format(&Rfc3339)
        .unwrap_or_else(|_| expires_at.to_string());
    errln!(
        "{} {id}: holder {}, server {}, tools {}, expires {expiry}",
        if parent.is_some() {
            "delegated grant"
        } else {
            "grant"
        },
        args.holder.fingerprint(),
        audience.fingerprint(),
        args.tools.join(","),
    );
    outln!("{token}");
    Ok(())
}

fn random_id() -> String {
    let mut bytes = [0u8; 12];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
    format!("g-{}", hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_units() {
        assert_eq!(parse_ttl("90s"), Ok(time::Duration::seconds(90)));
        assert_eq!(parse_ttl("15m"), Ok(time::Duration::minutes(15)));
        assert_eq!(parse_ttl("1h"), Ok(time::Duration::hours(1)));
        assert_eq!(parse_ttl("7d"), Ok(time::Duration::days(7)));
        assert!(parse_ttl("10").is_err());
        assert!(parse_ttl("h").is_err());
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("3w").is_err());
        assert!(parse_ttl("99999999999999d").is_err());
    }
}
