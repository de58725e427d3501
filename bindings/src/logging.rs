//! `tracing` events of the Rust crates, as records of Python's `logging` under the
//! `toolwire` logger.
//!
//! With `tracing`'s `log` feature and no tracing subscriber installed (there never
//! is one inside Python), events become `log` records; `pyo3-log` hands them to
//! `logging.getLogger(name)`. Targets are renamed into the `toolwire` hierarchy first:
//! `toolwire_server::connection` → `toolwire.server.connection`,
//! `toolwire::decision` stays `toolwire.decision`. Records of other crates (tokio,
//! tungstenite) are dropped below WARN.
//!
//! Loggers and their levels are cached; `toolwire.reset_log_cache()` clears the cache
//! after logging is reconfigured. Debug and trace records of hot paths never attach
//! to Python once the cache knows the logger's level.

use crate::runtime::enter_python;
use log::{LevelFilter, Log, Metadata, Record};
use pyo3::prelude::*;
use pyo3_log::{Caching, Logger, ResetHandle};
use std::sync::OnceLock;

static RESET: OnceLock<ResetHandle> = OnceLock::new();

/// The `toolwire` name of a Rust target, or `None` for another crate's.
fn rename(target: &str) -> Option<String> {
    let (head, rest) = target.split_once("::").unwrap_or((target, ""));
    let head = match head {
        "toolwire" => "toolwire",
        "toolwire_server" => "toolwire::server",
        "toolwire_client" => "toolwire::client",
        "toolwire_protocol" => "toolwire::protocol",
        "_native" => "toolwire::python",
        _ => return None,
    };
    Some(if rest.is_empty() {
        head.to_owned()
    } else {
        format!("{head}::{rest}")
    })
}

struct Renaming(Logger);

impl Renaming {
    fn forward(&self, record: &Record<'_>, target: &str) {
        // pyo3-log attaches to Python: through the gate that interpreter exit closes.
        enter_python(|| {
            self.0.log(
                &Record::builder()
                    .args(*record.args())
                    .level(record.level())
                    .target(target)
                    .module_path(record.module_path())
                    .file(record.file())
                    .line(record.line())
                    .build(),
            );
        });
    }
}

impl Log for Renaming {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        match rename(metadata.target()) {
            Some(target) => self.0.enabled(
                &Metadata::builder()
                    .level(metadata.level())
                    .target(&target)
                    .build(),
            ),
            None => metadata.level() <= log::Level::Warn,
        }
    }

    fn log(&self, record: &Record<'_>) {
        match rename(record.target()) {
            Some(target) => {
                let metadata = Metadata::builder()
                    .level(record.level())
                    .target(&target)
                    .build();
                if self.0.enabled(&metadata) {
                    self.forward(record, &target);
                }
            }
            None if record.level() <= log::Level::Warn => self.forward(record, record.target()),
            None => {}
        }
    }

    fn flush(&self) {}
}

/// Installs the bridge (once per process; a second module init keeps the first).
pub(crate) fn install(py: Python<'_>) -> PyResult<()> {
    if RESET.get().is_some() {
        return Ok(());
    }
    let logger = Logger::new(py, Caching::LoggersAndLevels)?.filter(LevelFilter::Debug);
    let reset = logger.reset_handle();
    if log::set_boxed_logger(Box::new(Renaming(logger))).is_ok() {
        log::set_max_level(LevelFilter::Debug);
        let _ = RESET.set(reset);
    }
    Ok(())
}

/// Forgets the cached Python loggers and levels: call after changing the
/// configuration of `logging` so that Rust records follow it.
#[pyfunction]
pub(crate) fn reset_log_cache() {
    if let Some(reset) = RESET.get() {
        reset.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::rename;

    #[test]
    fn targets_are_renamed_into_the_toolwire_hierarchy() {
        assert_eq!(
            rename("toolwire_server::connection").as_deref(),
            Some("toolwire::server::connection")
        );
        assert_eq!(
            rename("toolwire::decision").as_deref(),
            Some("toolwire::decision")
        );
        assert_eq!(
            rename("toolwire_client").as_deref(),
            Some("toolwire::client")
        );
        assert_eq!(rename("tungstenite::protocol"), None);
    }
}
