//! The one error type of the command: a message for the user and an exit status.

use std::fmt;

/// Exit status for a failed operation (refused call, I/O error, failed demo).
pub(crate) const EXIT_FAILURE: u8 = 1;
/// Exit status when the tool server could not be reached or the handshake failed.
pub(crate) const EXIT_CONNECT: u8 = 3;

/// A failure reported to the user as `error: <message>` with an exit status.
#[derive(Debug)]
pub(crate) struct CliError {
    pub(crate) message: String,
    pub(crate) exit: u8,
}

impl CliError {
    /// A failure with the default exit status (1).
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            exit: EXIT_FAILURE,
        }
    }

    /// A failure to connect (exit status 3).
    pub(crate) fn connect(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            exit: EXIT_CONNECT,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Result alias of the command.
pub(crate) type CliResult<T = ()> = Result<T, CliError>;
