//! The admission hook of TRN-021: an operator's check of the HTTP upgrade request
//! (say, an upgrade token), run after the Origin and subprotocol checks and before any
//! handshake work.

use std::net::SocketAddr;
use std::sync::Arc;
use tokio_tungstenite::tungstenite::handshake::server::Request;

/// The upgrade request as the admission hook of
/// [`ServerBuilder::admission_hook`](crate::ServerBuilder::admission_hook) sees it
/// (TRN-021).
#[derive(Debug, Clone, Copy)]
pub struct AdmissionRequest<'a> {
    pub(crate) request: &'a Request,
    pub(crate) peer: SocketAddr,
}

impl<'a> AdmissionRequest<'a> {
    /// The request path (`/toolwire`), without the query.
    pub fn path(&self) -> &'a str {
        self.request.uri().path()
    }

    /// The value of the first header line named `name` (case-insensitive); `None`
    /// when there is none or its value is not visible ASCII.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.request.headers().get(name)?.to_str().ok()
    }

    /// The address of the TCP peer (with a reverse proxy in front, the proxy's).
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }
}

/// Why an admission hook refused an upgrade (TRN-021): the HTTP status the upgrade
/// is answered with, with no further explanation (TRN-016).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdmissionRefusal {
    /// HTTP 401: the request lacks valid admission credentials (say, an upgrade
    /// token).
    Unauthorized,
    /// HTTP 403: the request is not admitted.
    Forbidden,
}

impl AdmissionRefusal {
    /// The HTTP status code of the refusal.
    pub fn http_status(self) -> u16 {
        match self {
            Self::Unauthorized => 401,
            Self::Forbidden => 403,
        }
    }
}

/// The hook function of [`crate::ServerBuilder::admission_hook`].
type HookFn = dyn Fn(&AdmissionRequest<'_>) -> Result<(), AdmissionRefusal> + Send + Sync;

/// The admission hook, shared by every connection.
#[derive(Clone)]
pub(crate) struct AdmissionHook(pub(crate) Arc<HookFn>);

impl std::fmt::Debug for AdmissionHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdmissionHook")
    }
}
