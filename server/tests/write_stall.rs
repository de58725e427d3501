//! Threat: a peer that never reads (THREATS.md §11). An authenticated client starts
//! a call that streams a lot of data and then stops reading: once the TCP windows
//! are full, every send of the server blocks. Without a bound the connection task
//! would wait forever, holding the socket, the running handler and whatever it keeps
//! producing. With LIM-004 a send that makes no progress for
//! `Limits::write_stall_timeout` closes the connection with TRY_AGAIN_LATER (1013)
//! (best effort: the close frame may not get through the stalled socket), stops the
//! handler, and drops the socket; other clients are served meanwhile.
//!
//! The close is reported as a `timeout` event of kind `write_stall` (section 18).
//!
//! Clauses: LIM-004, LIM-016, EVT-001.

mod common;
mod event_capture;

use common::{within, TestServer};
use futures_util::StreamExt as _;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use toolwire_server::protocol::Message;
use toolwire_server::{Limits, Tool};

/// Items the `flood` tool would stream: 20,000 of 4 KiB, 80 MiB in all.
const ITEMS: usize = 20_000;
const ITEM_LEN: usize = 4096;

/// What the `flood` handler did.
#[derive(Default)]
struct Flood {
    emitted: AtomicUsize,
    stopped: AtomicBool,
    completed: AtomicBool,
}

/// Sets `stopped` when the handler's future is dropped (or ends).
struct Stopped(Arc<Flood>);

impl Drop for Stopped {
    fn drop(&mut self) {
        self.0.stopped.store(true, Ordering::SeqCst);
    }
}

/// Streams [`ITEMS`] items of [`ITEM_LEN`] bytes, one per 100 µs (fills the socket
/// buffers within a second or so even on a loaded machine).
fn flood_tool(flood: &Arc<Flood>) -> Tool {
    paced_flood_tool("flood", flood, Some(Duration::from_micros(100)))
}

/// Streams [`ITEMS`] items of [`ITEM_LEN`] bytes, pausing `pause` after each (none:
/// as fast as `send_item` lets it).
fn paced_flood_tool(name: &str, flood: &Arc<Flood>, pause: Option<Duration>) -> Tool {
    let flood = flood.clone();
    Tool::new(
        name,
        "Streams a lot of data.",
        serde_json::json!({"type": "object"}),
        move |_, context| {
            let flood = flood.clone();
            async move {
                let _stopped = Stopped(flood.clone());
                let item = serde_json::json!("x".repeat(ITEM_LEN));
                for _ in 0..ITEMS {
                    if context.send_item(item.clone()).await.is_err() {
                        break;
                    }
                    flood.emitted.fetch_add(1, Ordering::SeqCst);
                    if let Some(pause) = pause {
                        tokio::time::sleep(pause).await;
                    }
                }
                flood.completed.store(true, Ordering::SeqCst);
                Ok(serde_json::json!(ITEMS))
            }
        },
    )
}

#[tokio::test]
async fn a_peer_that_stops_reading_is_closed_and_its_call_stopped() {
    let (capture, _guard) = event_capture::Capture::start();
    let flood = Arc::new(Flood::default());
    let mut limits = Limits::default();
    limits.write_stall_timeout = Duration::from_millis(500);
    let server =
        TestServer::start_with(|builder| builder.limits(limits).tool(flood_tool(&flood))).await;

    // The attacker: authenticates, starts the stream, then never reads again.
    let (mut raw, _) = server.raw_session(&server.agent, Vec::new()).await;
    let call = raw.request(1, "flood", &serde_json::json!({}));
    raw.send(Message::Request(call)).await;
    let started = Instant::now();

    // The TCP windows fill within a few MiB; 500 ms later the server gives up: the
    // handler is stopped long before it could emit everything.
    within("the stalled connection is closed", async {
        while !flood.stopped.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(!flood.completed.load(Ordering::SeqCst));
    let emitted = flood.emitted.load(Ordering::SeqCst);
    assert!(emitted < ITEMS / 2, "the handler emitted {emitted} items");
    assert!(started.elapsed() < Duration::from_secs(5));

    // Another client is served meanwhile and afterwards.
    let session = server.agent_session().await;
    let echoed = within(
        "echo",
        session.call("echo", &serde_json::json!({"text": "still here"})),
    )
    .await
    .expect("echo");
    assert_eq!(echoed, serde_json::json!({"text": "still here"}));

    // The server dropped the stalled socket: reading now yields what the kernel
    // buffers still held, then the end of the connection (with the 1013 close frame
    // when it got through).
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match raw.socket.next().await {
                Some(Ok(WsMessage::Close(frame))) => {
                    return frame.map(|frame| u16::from(frame.code))
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return None,
            }
        }
    })
    .await;
    match ended {
        Ok(Some(code)) => assert_eq!(code, 1013),
        Ok(None) => {}
        Err(_) => panic!("the stalled connection was not closed"),
    }
    let stalled = capture.wait_events("server", "timeout", 1).await;
    assert_eq!(stalled[0].field("kind"), "write_stall");
}

/// A handler that streams as fast as it can to a peer that never reads is held back
/// by `send_item` (a bounded queue per call and per connection, then the socket):
/// it has produced a small fraction of its 80 MiB when the stalled connection is
/// closed, instead of queueing all of it in the server's memory.
#[tokio::test]
async fn a_fast_stream_to_a_peer_that_does_not_read_is_held_back() {
    let flood = Arc::new(Flood::default());
    let mut limits = Limits::default();
    limits.write_stall_timeout = Duration::from_millis(500);
    let server = TestServer::start_with(|builder| {
        builder
            .limits(limits)
            .tool(paced_flood_tool("fast_flood", &flood, None))
    })
    .await;
    let (mut raw, _) = server.raw_session(&server.agent, Vec::new()).await;
    let call = raw.request(1, "fast_flood", &serde_json::json!({}));
    raw.send(Message::Request(call)).await;
    within("the stalled connection is closed", async {
        while !flood.stopped.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let emitted = flood.emitted.load(Ordering::SeqCst);
    eprintln!(
        "fast flood: {emitted} of {ITEMS} items produced before the stall closed the connection"
    );
    assert!(!flood.completed.load(Ordering::SeqCst));
    // Kernel socket buffers hold a few MiB (under a thousand 4 KiB items); the
    // queues in the server a few dozen more.
    assert!(emitted < ITEMS / 4, "the handler produced {emitted} items");
}
