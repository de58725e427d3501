//! FAULT INJECTION for the conformance suite's own tests: deliberately broken checks,
//! so that `conformance/tests/detects_injected_faults.rs` can show the suite notices
//! each of them. Faults can only be injected with the `__fault_injection` feature
//! (off by default, never enabled by a production build), through
//! [`DangerousServerBuilder::inject_fault_for_conformance_testing_only`].
//!
//! [`DangerousServerBuilder::inject_fault_for_conformance_testing_only`]: crate::DangerousServerBuilder

use crate::builder::Inner;

/// A deliberately broken check. Never use outside the conformance suite's tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[cfg_attr(not(feature = "__fault_injection"), allow(unreachable_pub, dead_code))]
pub enum Fault {
    /// The upgrade ignores the `Origin` header (breaks TRN-006).
    SkipOriginCheck,
    /// Text WebSocket messages are ignored instead of closing with 1003 (breaks
    /// TRN-024).
    AcceptTextFrames,
    /// The record receiver skips its replay and order checks (breaks REC-025,
    /// REC-026).
    SkipReplayCheck,
}

/// Whether `fault` was injected into this server (always `false` without the
/// `__fault_injection` feature).
pub(crate) fn injected(inner: &Inner, fault: Fault) -> bool {
    #[cfg(feature = "__fault_injection")]
    {
        inner.faults.contains(&fault)
    }
    #[cfg(not(feature = "__fault_injection"))]
    {
        let _ = (inner, fault);
        false
    }
}
