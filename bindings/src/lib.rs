//! Python bindings of toolwire: the private extension module `toolwire._native`.
//!
//! The public API is the Python package `toolwire` (`bindings/python/toolwire`),
//! which wraps these few native types: `keys` (identities and public keys),
//! `client` (connect, sessions, streamed calls), `server` (a Rust tool server whose
//! handlers are Python callables), the asyncio bridge in `runtime`, the one
//! conversion of Rust errors to Python exceptions in `errors`, and the `logging`
//! bridge in `logging`.

mod client;
mod errors;
mod keys;
mod logging;
mod runtime;
mod server;

use pyo3::prelude::*;

/// The extension module.
#[pymodule]
mod _native {
    use super::*;

    #[pymodule_export]
    use crate::keys::{Identity, PublicKey};

    #[pymodule_export]
    use crate::client::{connect, CallStream, Session};

    #[pymodule_export]
    use crate::server::{start_server, CallContext, ServerHandle};

    #[pymodule_export]
    use crate::errors::{close_codes, error_codes};

    #[pymodule_export]
    use crate::logging::reset_log_cache;

    #[pymodule_export]
    use crate::runtime::_interpreter_exiting;

    #[pymodule_init]
    fn init(module: &Bound<'_, PyModule>) -> PyResult<()> {
        let py = module.py();
        module.add("__version__", env!("CARGO_PKG_VERSION"))?;
        crate::logging::install(py)?;
        py.import("atexit")?
            .call_method1("register", (module.getattr("_interpreter_exiting")?,))?;
        Ok(())
    }
}
