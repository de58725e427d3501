//! A real agent calls real tools over a loopback WebSocket: signed request, signed
//! response, streaming, and the tools listed in the signed manifest.

use futures_util::StreamExt as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;
use toolwire_client::{Client, StreamEvent};
use toolwire_server::protocol::Identity;
use toolwire_server::{Server, Tool};

#[tokio::test]
async fn agent_calls_echo_and_streams_over_loopback() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("debug")
        .with_test_writer()
        .try_init();
    let server_identity = Identity::generate(&mut rand_core::OsRng);
    let agent = Identity::generate(&mut rand_core::OsRng);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/toolwire", listener.local_addr().unwrap());
    let executions = Arc::new(AtomicUsize::new(0));
    let counter = executions.clone();
    let server = Server::builder(server_identity.clone(), url.clone())
        .allow_client(agent.public_key())
        .tool(Tool::new(
            "echo",
            "Returns its arguments.",
            serde_json::json!({"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}),
            move |args, _| {
                counter.fetch_add(1, Ordering::SeqCst);
                async move { Ok(args) }
            },
        ))
        .tool(Tool::new("count", "Streams 0, 1, 2 then returns 3.", serde_json::json!({"type": "object"}), |_, context| async move {
            for index in 0..3 {
                context.send_item(serde_json::json!(index)).await.expect("call open");
            }
            Ok(serde_json::json!(3))
        }))
        .build()
        .unwrap();
    tokio::spawn(async move { server.serve_listener(listener).await });

    let session = Client::builder()
        .identity(agent)
        .pin_server(server_identity.public_key())
        .connect(&url)
        .await
        .unwrap();
    let result = session
        .call("echo", &serde_json::json!({"text": "hello"}))
        .await
        .unwrap();
    assert_eq!(result, serde_json::json!({"text": "hello"}));
    assert_eq!(executions.load(Ordering::SeqCst), 1);
    let mut names: Vec<String> = session.tools().into_iter().map(|tool| tool.name).collect();
    names.sort();
    assert_eq!(names, ["count", "echo"]);

    let events: Vec<StreamEvent> = session
        .stream("count", &serde_json::json!({}))
        .unwrap()
        .map(|event| event.unwrap())
        .collect()
        .await;
    assert_eq!(
        events,
        [
            StreamEvent::Item(serde_json::json!(0)),
            StreamEvent::Item(serde_json::json!(1)),
            StreamEvent::Item(serde_json::json!(2)),
            StreamEvent::Done(serde_json::json!(3)),
        ]
    );
}
