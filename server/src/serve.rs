//! Accepting TCP connections: pre-authentication caps, the HTTP upgrade checks, and
//! handing the WebSocket to the connection driver.

use crate::builder::{Inner, Server};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, ToSocketAddrs};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use toolwire_protocol::events::{DeadlineKind, EventContext, PeerText, SecurityEvent};
use toolwire_protocol::upgrade::{check_upgrade, max_frame_len, UpgradeRefusal, UpgradeRequest};
use toolwire_protocol::Role;

/// Counts a connection as unauthenticated until dropped (or until the handshake
/// completes and [`release`](Self::release) is called).
pub(crate) struct UnauthenticatedSlot {
    inner: Arc<Inner>,
    ip: IpAddr,
    held: bool,
}

impl UnauthenticatedSlot {
    pub(crate) fn release(&mut self) {
        if self.held {
            self.held = false;
            let mut counts = self
                .inner
                .unauthenticated
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(count) = counts.get_mut(&self.ip) {
                *count -= 1;
                if *count == 0 {
                    counts.remove(&self.ip);
                }
            }
        }
    }
}

impl Drop for UnauthenticatedSlot {
    fn drop(&mut self) {
        self.release();
    }
}

/// Why a connection is refused before the upgrade completes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Capacity {
    Available,
    PerIpExceeded,
    TotalExceeded,
}

pub(crate) fn take_slot(inner: &Arc<Inner>, ip: IpAddr) -> (UnauthenticatedSlot, Capacity) {
    let mut counts = inner
        .unauthenticated
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let total: usize = counts.values().sum();
    let per_ip = counts.entry(ip).or_insert(0);
    *per_ip += 1;
    let capacity = if *per_ip > inner.limits.max_unauthenticated_per_ip {
        Capacity::PerIpExceeded
    } else if total >= inner.limits.max_unauthenticated_total {
        Capacity::TotalExceeded
    } else {
        Capacity::Available
    };
    (
        UnauthenticatedSlot {
            inner: inner.clone(),
            ip,
            held: true,
        },
        capacity,
    )
}

fn refusal(status: StatusCode) -> ErrorResponse {
    let mut response = ErrorResponse::new(None);
    *response.status_mut() = status;
    response
}

impl Server {
    /// Binds `addr` and serves until the task is dropped or
    /// [`shutdown`](Self::shutdown) completes.
    ///
    /// # Errors
    /// The bind error.
    pub async fn serve(&self, addr: impl ToSocketAddrs) -> std::io::Result<()> {
        let listener = TcpListener::bind(addr).await?;
        self.serve_listener(listener).await
    }

    /// Serves connections from an already bound listener, until
    /// [`shutdown`](Self::shutdown) completes (then returns `Ok(())`).
    ///
    /// # Errors
    /// Only if accepting fails persistently; single failed connections are logged.
    pub async fn serve_listener(&self, listener: TcpListener) -> std::io::Result<()> {
        loop {
            let Some(accepted) = self.inner.shutdown.unless_stopping(listener.accept()).await
            else {
                drop(listener);
                self.inner.shutdown.finished().await;
                return Ok(());
            };
            match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let server = self.clone();
                    tokio::spawn(async move { server.accept(stream, peer).await });
                }
                Err(error) => {
                    tracing::warn!(%error, "toolwire accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Serves one accepted byte stream (TCP, TLS, or a stream handed over by an
    /// existing HTTP server): runs the upgrade checks, the handshake and the session
    /// until it closes. Use it to mount toolwire inside an existing tokio application.
    pub async fn accept<S>(&self, stream: S, peer: SocketAddr)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let admission = take_slot(&self.inner, peer.ip());
        let deadline = tokio::time::Instant::now() + self.inner.limits.upgrade_timeout;
        self.accept_admitted(stream, peer, admission, deadline)
            .await;
    }

    /// [`accept`](Self::accept) for a connection already counted as unauthenticated,
    /// whose upgrade must complete by `deadline` (a TLS handshake before it shares
    /// the deadline, see `tls.rs`).
    // The upgrade callback's error type is tungstenite's, fixed by its `Callback` trait.
    #[allow(clippy::result_large_err)]
    pub(crate) async fn accept_admitted<S>(
        &self,
        stream: S,
        peer: SocketAddr,
        (slot, capacity): (UnauthenticatedSlot, Capacity),
        deadline: tokio::time::Instant,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Some(_tracked) = crate::shutdown::ShutdownState::track(&self.inner) else {
            return;
        };
        let inner = self.inner.clone();
        let policy = inner.upgrade.clone();
        let skip_origin = crate::fault::injected(&inner, crate::fault::Fault::SkipOriginCheck);
        let admission = inner.admission.clone();
        let reporter = inner.clone();
        let callback = move |request: &Request,
                             mut response: Response|
              -> Result<Response, ErrorResponse> {
            let status = match capacity {
                Capacity::PerIpExceeded => Some(StatusCode::TOO_MANY_REQUESTS),
                Capacity::TotalExceeded => Some(StatusCode::SERVICE_UNAVAILABLE),
                Capacity::Available => None,
            };
            if let Some(status) = status {
                let event = SecurityEvent::PreauthLimited {
                    peer_addr: peer,
                    http_status: status.as_u16(),
                };
                crate::events::report(
                    &reporter,
                    EventContext::new(Role::Server),
                    Some(peer),
                    event,
                );
                return Err(refusal(status));
            }
            // Every `Origin` line counts (TRN-009): several are joined with ", ", which
            // is not a serialized origin and matches nothing. A value that is not
            // visible ASCII matches nothing either.
            let origins: Vec<&str> = request
                .headers()
                .get_all("Origin")
                .iter()
                .map(|value| value.to_str().unwrap_or("\u{0}"))
                .collect();
            let origins = origins.join(", ");
            let origin = request
                .headers()
                .contains_key("Origin")
                .then_some(origins.as_str())
                .filter(|_| !skip_origin);
            let offered: Vec<&str> = request
                .headers()
                .get_all("Sec-WebSocket-Protocol")
                .iter()
                .filter_map(|value| value.to_str().ok())
                .collect();
            let offered = offered.join(", ");
            let upgrade = UpgradeRequest {
                origin,
                subprotocols: (!offered.is_empty()).then_some(offered.as_str()),
            };
            match check_upgrade(&policy, &upgrade) {
                Ok(subprotocol) => {
                    // TRN-021: the operator's admission hook, after the checks above
                    // and before any handshake work; its acceptance grants nothing.
                    if let Some(hook) = &admission {
                        let admitted = (hook.0)(&crate::AdmissionRequest { request, peer });
                        if let Err(refused) = admitted {
                            tracing::warn!(event = "admission_refused", peer = %peer, status = refused.http_status(), "toolwire upgrade refused by the admission hook");
                            let status = StatusCode::from_u16(refused.http_status())
                                .unwrap_or(StatusCode::FORBIDDEN);
                            return Err(refusal(status));
                        }
                    }
                    response.headers_mut().insert(
                        "Sec-WebSocket-Protocol",
                        HeaderValue::from_static(subprotocol),
                    );
                    Ok(response)
                }
                Err(refused) => {
                    let http_status = refused.http_status();
                    let event = match refused {
                        UpgradeRefusal::SubprotocolMissing => {
                            SecurityEvent::SubprotocolRejected { http_status }
                        }
                        _ => SecurityEvent::OriginRejected {
                            origin: PeerText::new(origin.unwrap_or("")),
                            http_status,
                        },
                    };
                    crate::events::report(
                        &reporter,
                        EventContext::new(Role::Server),
                        Some(peer),
                        event,
                    );
                    let status = StatusCode::from_u16(refused.http_status())
                        .unwrap_or(StatusCode::FORBIDDEN);
                    Err(refusal(status))
                }
            }
        };
        let max_frame = max_frame_len(&inner.limits.connection);
        let config = WebSocketConfig::default()
            .read_buffer_size(inner.limits.socket_read_buffer.max(256))
            .write_buffer_size(0)
            .max_write_buffer_size(1024 * 1024)
            .max_message_size(Some(max_frame))
            .max_frame_size(Some(max_frame));
        let upgrading =
            tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config));
        let upgrading = tokio::time::timeout_at(deadline, upgrading);
        let Some(upgraded) = inner.shutdown.unless_stopping(upgrading).await else {
            return;
        };
        match upgraded {
            Ok(Ok(socket)) => crate::connection::run(inner, socket, peer, slot).await,
            Ok(Err(error)) => tracing::debug!(%peer, %error, "toolwire upgrade failed"),
            Err(_) => crate::events::report(
                &inner,
                EventContext::new(Role::Server),
                Some(peer),
                SecurityEvent::Timeout {
                    kind: DeadlineKind::Upgrade,
                },
            ),
        }
    }
}
