//! The tokio runtime shared by every session and server of the process, and the
//! bridge between its futures and asyncio.
//!
//! Threads: the Python thread runs the asyncio loop and user code; tokio workers own
//! sockets, the protocol state machines and timers. Rust futures become asyncio
//! futures through [`awaitable`]; Python coroutines run on the user's loop through
//! `asyncio.run_coroutine_threadsafe` (see `server.rs`). No tokio worker ever blocks
//! on Python except to attach briefly, and the Python thread never blocks on tokio
//! while attached, so the two cannot deadlock on the GIL.
//!
//! The bridge is ours rather than `pyo3-async-runtimes`' `future_into_py`, for two
//! behaviours the tests rely on: an outcome that arrives after the loop closed is
//! dropped silently (pyo3-async-runtimes #90 reports it as an unraisable exception,
//! which `filterwarnings = error` turns into a failure), and cancelling the asyncio
//! future aborts the tokio task at once, which drops the Rust future (a call then
//! sends CANCEL).

use crate::errors::{to_py_err, NativeError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyCFunction;
use pyo3::IntoPyObjectExt as _;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

/// Set when the interpreter starts to exit (an `atexit` hook): from then on no
/// thread of ours enters Python, because a thread that tries to take the GIL of a
/// finalizing interpreter is ended with `pthread_exit`, which aborts the process
/// when it unwinds through Rust frames.
static EXITING: AtomicBool = AtomicBool::new(false);

/// Threads of ours inside Python (or about to enter) through [`enter_python`].
static INSIDE: AtomicUsize = AtomicUsize::new(0);

/// How long the `atexit` hook waits for threads inside Python to leave.
const EXIT_WAIT: Duration = Duration::from_secs(2);

/// The shared runtime: multi-threaded, one worker per core unless
/// `TOOLWIRE_WORKER_THREADS` says otherwise.
pub(crate) fn runtime() -> &'static tokio::runtime::Runtime {
    RUNTIME.get_or_init(|| {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.enable_all().thread_name("toolwire-io");
        if let Some(threads) = std::env::var("TOOLWIRE_WORKER_THREADS")
            .ok()
            .and_then(|value| value.parse::<usize>().ok())
            .filter(|threads| *threads > 0)
        {
            builder.worker_threads(threads);
        }
        builder
            .build()
            .expect("toolwire: cannot start the tokio runtime")
    })
}

/// Closes the gate of [`enter_python`] and waits, with the GIL released, until the
/// threads inside Python have left (registered with `atexit`, which runs before
/// finalization).
#[pyfunction]
pub(crate) fn _interpreter_exiting(py: Python<'_>) {
    EXITING.store(true, Ordering::SeqCst);
    py.detach(|| {
        let deadline = Instant::now() + EXIT_WAIT;
        while INSIDE.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    });
}

/// Runs `f`, which may enter Python, unless the interpreter is exiting (then
/// `None`). Every entry into Python from a thread that is not Python's own goes
/// through here, so that the `atexit` hook can wait for them to leave.
pub(crate) fn enter_python<R>(f: impl FnOnce() -> R) -> Option<R> {
    struct Leave;
    impl Drop for Leave {
        fn drop(&mut self) {
            INSIDE.fetch_sub(1, Ordering::SeqCst);
        }
    }
    INSIDE.fetch_add(1, Ordering::SeqCst);
    let _leave = Leave;
    if EXITING.load(Ordering::SeqCst) {
        return None;
    }
    Some(f())
}

/// Attaches to Python and runs `f`, unless the interpreter is exiting (then `None`).
pub(crate) fn with_python<R>(f: impl for<'py> FnOnce(Python<'py>) -> R) -> Option<R> {
    enter_python(|| Python::try_attach(f)).flatten()
}

/// `asyncio.get_running_loop()`: fails outside a coroutine, which is where every
/// awaitable of this module must be created.
pub(crate) fn running_loop(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    static GET_RUNNING_LOOP: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    GET_RUNNING_LOOP
        .import(py, "asyncio", "get_running_loop")?
        .call0()
}

/// Runs `future` on the runtime and returns an asyncio future, of the running loop,
/// that completes with its output. Errors are converted to Python exceptions in one
/// place, [`to_py_err`]. Cancelling the asyncio future aborts the task, which drops
/// `future`.
pub(crate) fn awaitable<'py, F, T>(py: Python<'py>, future: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = Result<T, NativeError>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    let event_loop = running_loop(py)?;
    let py_future = event_loop.call_method0("create_future")?;
    let loop_ref = event_loop.unbind();
    let future_ref = py_future.clone().unbind();
    let task = runtime().spawn(async move {
        let output = future.await;
        with_python(move |py| resolve(py, &loop_ref, &future_ref, output));
    });
    let abort = task.abort_handle();
    let on_done = PyCFunction::new_closure(py, None, None, move |args, _kwargs| -> PyResult<()> {
        if args.get_item(0)?.call_method0("cancelled")?.is_truthy()? {
            abort.abort();
        }
        Ok(())
    })?;
    py_future.call_method1("add_done_callback", (on_done,))?;
    Ok(py_future)
}

/// Hands an outcome to the loop that awaits it.
fn resolve<T>(
    py: Python<'_>,
    event_loop: &Py<PyAny>,
    future: &Py<PyAny>,
    output: Result<T, NativeError>,
) where
    T: for<'a> IntoPyObject<'a>,
{
    let (ok, value) = match output.map(|value| value.into_py_any(py)) {
        Ok(Ok(value)) => (true, value),
        Ok(Err(error)) => (false, error.into_value(py).into_any()),
        Err(error) => (false, to_py_err(py, error).into_value(py).into_any()),
    };
    static SETTER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let Ok(setter) = SETTER.get_or_try_init(py, || {
        wrap_pyfunction!(set_outcome, py).map(|function| function.into_any().unbind())
    }) else {
        return;
    };
    // Raises when the loop is closed: then nothing awaits the outcome any more.
    let _ = event_loop
        .bind(py)
        .call_method1("call_soon_threadsafe", (setter, future, ok, value));
}

/// Completes `future` on its loop, unless it was cancelled meanwhile.
#[pyfunction]
fn set_outcome(future: &Bound<'_, PyAny>, ok: bool, value: &Bound<'_, PyAny>) -> PyResult<()> {
    if future.call_method0("done")?.is_truthy()? {
        return Ok(());
    }
    let method = if ok { "set_result" } else { "set_exception" };
    future.call_method1(method, (value,))?;
    Ok(())
}
