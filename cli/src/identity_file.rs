//! Identity files: the 32-byte Ed25519 seed of a long-term identity, as text.
//!
//! ```text
//! toolwire-identity-v1
//! <43 characters: unpadded base64url of the seed>
//! ```
//!
//! Files are created with mode 0600 from the start (never widened then narrowed), and
//! never overwritten unless asked: an overwritten identity cannot be recovered.

use crate::error::{CliError, CliResult};
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use toolwire_protocol::{Identity, IdentityKey};
use zeroize::Zeroizing;

/// The text of an identity file for `identity` (format: [`Identity::to_file_text`]).
fn encode(identity: &Identity) -> Zeroizing<String> {
    identity.to_file_text()
}

/// Parses the text of an identity file.
fn decode(text: &str) -> Result<Identity, String> {
    Identity::from_file_text(text).map_err(|error| error.to_string())
}

/// Writes a new identity to `path` with mode 0600. Refuses an existing file unless
/// `force`; with `force` the new file is written beside it and renamed over it, so a
/// failure never leaves a half-written identity behind.
pub(crate) fn write_new(path: &Path, identity: &Identity, force: bool) -> CliResult {
    let text = encode(identity);
    if !force {
        return create_private(path, text.as_bytes()).map_err(|error| {
            if error.kind() == std::io::ErrorKind::AlreadyExists {
                CliError::new(format!(
                    "{} already exists; refusing to overwrite an identity (pass --force to replace it)",
                    path.display()
                ))
            } else {
                CliError::new(format!("cannot create {}: {error}", path.display()))
            }
        });
    }
    let temporary = sibling_temp_path(path);
    create_private(&temporary, text.as_bytes()).map_err(|error| {
        CliError::new(format!("cannot create {}: {error}", temporary.display()))
    })?;
    std::fs::rename(&temporary, path).map_err(|error| {
        let _ = std::fs::remove_file(&temporary);
        CliError::new(format!("cannot replace {}: {error}", path.display()))
    })
}

fn sibling_temp_path(path: &Path) -> PathBuf {
    let mut random = [0u8; 6];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut random);
    let name = path
        .file_name()
        .map_or_else(|| "identity".into(), |name| name.to_string_lossy());
    path.with_file_name(format!(".{name}.{}.tmp", hex::encode(random)))
}

/// Creates `path` (which must not exist) readable and writable by its owner only.
fn create_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// Reads the identity in `path`. Warns (does not refuse) when other users may read it.
pub(crate) fn read(path: &Path) -> CliResult<Identity> {
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|error| {
        CliError::new(format!(
            "cannot read identity file {}: {error}",
            path.display()
        ))
    })?);
    warn_if_shared(path);
    decode(&text).map_err(|reason| CliError::new(format!("{}: {reason}", path.display())))
}

#[cfg(unix)]
fn warn_if_shared(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(metadata) = std::fs::metadata(path) {
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            errln!(
                "warning: identity file {} is accessible to other users (mode {mode:o}); run `chmod 600 {}`",
                path.display(),
                path.display()
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_shared(_path: &Path) {}

/// Parses an identity key given on the command line (clap value parser).
pub(crate) fn parse_key(text: &str) -> Result<IdentityKey, String> {
    text.trim()
        .parse()
        .map_err(|error| format!("`{text}` is not an identity key: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_text_round_trips() {
        let identity = Identity::from_seed(&[9; 32]);
        let text = encode(&identity);
        assert!(text.starts_with("toolwire-identity-v1\n"));
        let decoded = decode(&text).unwrap();
        assert_eq!(decoded.public_key(), identity.public_key());
    }

    #[test]
    fn bad_identity_text_is_refused_with_a_reason() {
        assert!(decode("hello\n").unwrap_err().contains("first line"));
        assert!(decode("toolwire-identity-v1\n!!!\n")
            .unwrap_err()
            .contains("base64url"));
        assert!(decode("toolwire-identity-v1\nAAAA\n")
            .unwrap_err()
            .contains("expected 32"));
    }
}
