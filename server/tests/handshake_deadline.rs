//! Threat: unauthenticated use and slot exhaustion (THREATS.md §2, §11). An attacker
//! upgrades and then sends nothing, stops halfway through the Noise handshake, or
//! never even finishes the HTTP upgrade (slow loris, including one that trickles
//! bytes to look alive). Each holds a pre-authentication slot; the handshake deadline
//! closes the first two with TIMEOUT (4009) in a bare close frame, and the upgrade
//! deadline drops the TCP connection of the last — in both cases counted from the
//! start, not from the last byte received. (The deadlines are shortened to 300 ms
//! through `Limits`; the defaults are 5 s.)
//!
//! The dropped upgrade is reported as a `timeout` event of kind `upgrade`.
//!
//! Clauses: HS-033, HS-034, EVT-001.

mod common;
mod event_capture;

use common::{close_frame_code, raw_socket, within, TestServer};
use futures_util::{SinkExt as _, StreamExt as _};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use toolwire_server::protocol::{CloseCode, Connection};
use toolwire_server::Limits;

const DEADLINE: Duration = Duration::from_millis(300);
/// Scheduling slack allowed on top of a deadline.
const SLACK: Duration = Duration::from_secs(2);

fn short_deadlines() -> Limits {
    let mut limits = Limits::default();
    limits.connection.handshake_timeout = DEADLINE;
    limits.upgrade_timeout = DEADLINE;
    limits
}

fn assert_near_deadline(elapsed: Duration) {
    // The timer starts at the server's accept, a little before ours.
    assert!(
        elapsed + Duration::from_millis(50) >= DEADLINE,
        "closed after {elapsed:?}, before the {DEADLINE:?} deadline"
    );
    assert!(elapsed <= DEADLINE + SLACK, "closed only after {elapsed:?}");
}

#[tokio::test]
async fn silent_socket_is_closed_with_timeout_at_the_handshake_deadline() {
    let server = TestServer::start_with(|builder| builder.limits(short_deadlines())).await;
    let mut socket = raw_socket(&server.url).await;
    let upgraded = Instant::now();
    assert_eq!(
        close_frame_code(&mut socket).await,
        Some(CloseCode::TIMEOUT.0)
    );
    assert_near_deadline(upgraded.elapsed());
    assert_eq!(server.probes.total_runs(), 0);
}

#[tokio::test]
async fn handshake_stalled_after_the_first_message_is_closed_with_timeout() {
    let server = TestServer::start_with(|builder| builder.limits(short_deadlines())).await;
    let mut socket = raw_socket(&server.url).await;
    let upgraded = Instant::now();
    let config = Arc::new(server.client_config(&server.agent, Vec::new()));
    let mut client = Connection::client(config, Instant::now(), &mut rand_core::OsRng);
    let first = client.poll_transmit().expect("handshake record 1");
    within("send", socket.send(WsMessage::binary(first)))
        .await
        .expect("send record 1");
    // The server answers with record 2; the attacker never sends record 3.
    let second = within("record 2", socket.next()).await;
    assert!(
        matches!(second, Some(Ok(WsMessage::Binary(_)))),
        "{second:?}"
    );
    assert_eq!(
        close_frame_code(&mut socket).await,
        Some(CloseCode::TIMEOUT.0)
    );
    assert_near_deadline(upgraded.elapsed());
    assert_eq!(server.probes.total_runs(), 0);
}

/// Reads until the server drops the TCP connection; panics if it sends anything.
async fn until_dropped(stream: &mut TcpStream) {
    let mut buffer = [0u8; 256];
    match within("server drops the connection", stream.read(&mut buffer)).await {
        Ok(0) | Err(_) => {}
        Ok(read) => panic!(
            "server answered a half request: {:?}",
            String::from_utf8_lossy(&buffer[..read])
        ),
    }
}

#[tokio::test]
async fn half_sent_upgrade_request_is_dropped_at_the_upgrade_deadline() {
    let (capture, _guard) = event_capture::Capture::start();
    let server = TestServer::start_with(|builder| builder.limits(short_deadlines())).await;
    let mut stream = within("tcp connect", TcpStream::connect(server.addr))
        .await
        .expect("tcp connect");
    let started = Instant::now();
    let half = format!(
        "GET /toolwire HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n",
        server.addr
    );
    stream
        .write_all(half.as_bytes())
        .await
        .expect("half request written");
    until_dropped(&mut stream).await;
    assert_near_deadline(started.elapsed());
    // Reported as a `timeout` event of kind `upgrade` (section 18).
    let timeout = capture.wait_events("server", "timeout", 1).await;
    assert_eq!(timeout[0].field("kind"), "upgrade");
}

#[tokio::test]
async fn trickled_upgrade_request_is_dropped_at_the_upgrade_deadline() {
    let server = TestServer::start_with(|builder| builder.limits(short_deadlines())).await;
    let stream = within("tcp connect", TcpStream::connect(server.addr))
        .await
        .expect("tcp connect");
    let started = Instant::now();
    let (mut reader, mut writer) = stream.into_split();
    // One header byte every 20 ms: never idle, never finished.
    let trickle = tokio::spawn(async move {
        let header = b"GET /toolwire HTTP/1.1\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        for byte in header {
            if writer.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let mut buffer = [0u8; 256];
    match within("server drops the connection", reader.read(&mut buffer)).await {
        Ok(0) | Err(_) => {}
        Ok(read) => panic!(
            "server answered a trickled request: {:?}",
            String::from_utf8_lossy(&buffer[..read])
        ),
    }
    assert_near_deadline(started.elapsed());
    trickle.abort();
}
