//! Identities and public keys, and identity files in the format of `toolwire keygen`:
//!
//! ```text
//! toolwire-identity-v1
//! <43 characters: unpadded base64url of the 32-byte Ed25519 seed>
//! ```
//!
//! Files are created with mode 0600 from the start and never overwritten unless
//! asked; an overwrite writes a sibling file and renames it over the old one.

use pyo3::exceptions::{PyFileExistsError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use toolwire_protocol::IdentityKey;
use zeroize::Zeroizing;

/// An Ed25519 public key: the identity of a client or a server.
#[pyclass(frozen, eq, hash, module = "toolwire._native")]
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct PublicKey {
    pub(crate) key: IdentityKey,
}

/// Parses the text form of a key (43 characters of unpadded base64url).
pub(crate) fn parse_key(text: &str) -> PyResult<IdentityKey> {
    text.trim()
        .parse()
        .map_err(|error| PyValueError::new_err(format!("`{text}` is not a public key: {error}")))
}

#[pymethods]
impl PublicKey {
    /// The key written as 43 characters of unpadded base64url.
    #[new]
    fn new(text: &str) -> PyResult<Self> {
        parse_key(text).map(|key| Self { key })
    }

    /// The key from its 32 raw bytes.
    #[staticmethod]
    fn from_bytes(raw: &[u8]) -> PyResult<Self> {
        IdentityKey::from_slice(raw)
            .map(|key| Self { key })
            .map_err(|error| PyValueError::new_err(error.to_string()))
    }

    /// The 32 raw bytes.
    fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.key.as_bytes())
    }

    /// A short fingerprint for people to compare (`tw:1a2b-3c4d-...`).
    #[getter]
    fn fingerprint(&self) -> String {
        self.key.fingerprint()
    }

    fn __str__(&self) -> String {
        self.key.to_string()
    }

    fn __repr__(&self) -> String {
        format!("PublicKey('{}')", self.key)
    }
}

/// A long-term identity: an Ed25519 signing key. The secret never leaves Rust
/// except into an identity file.
#[pyclass(frozen, module = "toolwire._native")]
pub(crate) struct Identity {
    pub(crate) inner: toolwire_protocol::Identity,
}

#[pymethods]
impl Identity {
    /// A fresh identity from the operating system's random generator.
    #[staticmethod]
    fn generate() -> Self {
        Self {
            inner: toolwire_protocol::Identity::generate(&mut rand_core::OsRng),
        }
    }

    /// The identity whose 32-byte Ed25519 seed is `seed`.
    #[staticmethod]
    fn from_seed(seed: &[u8]) -> PyResult<Self> {
        let seed: &[u8; 32] = seed
            .try_into()
            .map_err(|_| PyValueError::new_err("a seed is 32 bytes"))?;
        Ok(Self {
            inner: toolwire_protocol::Identity::from_seed(seed),
        })
    }

    /// Reads an identity file (as written by `save` or `toolwire keygen`).
    #[staticmethod]
    fn load(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let text = Zeroizing::new(std::fs::read_to_string(&path)?);
        if let Some(mode) = shared_mode(&path) {
            let logging = py.import("logging")?;
            logging.call_method1("getLogger", ("toolwire",))?.call_method1(
                "warning",
                (format!(
                    "identity file {} is accessible to other users (mode {mode:o}); run `chmod 600 {}`",
                    path.display(),
                    path.display()
                ),),
            )?;
        }
        decode(&text)
            .map(|inner| Self { inner })
            .map_err(|reason| PyValueError::new_err(format!("{}: {reason}", path.display())))
    }

    /// Writes the identity to `path`, readable by its owner only (mode 0600).
    /// Refuses an existing file unless `overwrite`.
    #[pyo3(signature = (path, *, overwrite = false))]
    fn save(&self, path: PathBuf, overwrite: bool) -> PyResult<()> {
        let text = encode(&self.inner);
        if !overwrite {
            return create_private(&path, text.as_bytes()).map_err(|error| {
                if error.kind() == std::io::ErrorKind::AlreadyExists {
                    PyFileExistsError::new_err(format!(
                        "{} already exists; refusing to overwrite an identity (pass overwrite=True)",
                        path.display()
                    ))
                } else {
                    error.into()
                }
            });
        }
        let temporary = sibling_temp_path(&path);
        create_private(&temporary, text.as_bytes())?;
        std::fs::rename(&temporary, &path).map_err(|error| {
            let _ = std::fs::remove_file(&temporary);
            PyErr::from(error)
        })
    }

    /// The public key.
    #[getter]
    fn public_key(&self) -> PublicKey {
        PublicKey {
            key: self.inner.public_key(),
        }
    }

    fn __repr__(&self) -> String {
        format!("Identity(public_key='{}')", self.inner.public_key())
    }
}

fn encode(identity: &toolwire_protocol::Identity) -> Zeroizing<String> {
    identity.to_file_text()
}

fn decode(text: &str) -> Result<toolwire_protocol::Identity, String> {
    toolwire_protocol::Identity::from_file_text(text).map_err(|error| error.to_string())
}

fn sibling_temp_path(path: &Path) -> PathBuf {
    let mut random = [0u8; 6];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut random);
    let suffix: String = random.iter().map(|byte| format!("{byte:02x}")).collect();
    let name = path
        .file_name()
        .map_or_else(|| "identity".into(), |name| name.to_string_lossy());
    path.with_file_name(format!(".{name}.{suffix}.tmp"))
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

/// The file's mode when other users may access it.
#[cfg(unix)]
fn shared_mode(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then_some(mode)
}

#[cfg(not(unix))]
fn shared_mode(_path: &Path) -> Option<u32> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_text_round_trips_in_the_cli_format() {
        let identity = toolwire_protocol::Identity::from_seed(&[9; 32]);
        let text = encode(&identity);
        assert!(text.starts_with("toolwire-identity-v1\n"));
        assert_eq!(text.lines().nth(1).map(str::len), Some(43));
        let decoded = decode(&text).expect("decodes");
        assert_eq!(decoded.public_key(), identity.public_key());
        assert!(decode("hello\n").is_err());
        assert!(decode("toolwire-identity-v1\nAAAA\n").is_err());
    }
}
