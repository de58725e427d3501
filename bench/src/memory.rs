//! Scenario 3: server memory per idle authenticated connection, against raw
//! tokio-tungstenite idle connections. Each server runs alone in a child process
//! (this binary's hidden `idle-server` command) so that its RSS, read from `/proc`,
//! is its own; the clients live in this process.

use crate::calls::{echo_tool, raw_connect, unthrottled_limits, RawEchoServer};
use crate::util::{fail, rss_bytes, Result};
use futures_util::StreamExt as _;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncBufReadExt as _;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use toolwire_client::Client;
use toolwire_protocol::{Identity, IdentityKey};
use toolwire_server::Server;

/// The kind of idle server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleKind {
    /// A toolwire server; connections complete the handshake and get their grant.
    Toolwire,
    /// A raw tokio-tungstenite server with tungstenite's default configuration.
    RawDefault,
    /// A raw tokio-tungstenite server with the buffers toolwire's server uses
    /// (4 KiB read buffer, no write buffer).
    RawSmallBuffers,
}

impl IdleKind {
    /// Every kind, in table order.
    pub const ALL: [IdleKind; 3] = [
        IdleKind::Toolwire,
        IdleKind::RawSmallBuffers,
        IdleKind::RawDefault,
    ];

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            IdleKind::Toolwire => "toolwire",
            IdleKind::RawDefault => "raw-default",
            IdleKind::RawSmallBuffers => "raw-4k",
        }
    }

    /// The row label.
    pub fn label(self) -> &'static str {
        match self {
            IdleKind::Toolwire => "toolwire (authenticated, granted)",
            IdleKind::RawSmallBuffers => "raw tokio-tungstenite, 4 KiB read buffer",
            IdleKind::RawDefault => "raw tokio-tungstenite, default config",
        }
    }

    /// Parses a command-line name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.name() == name)
    }
}

/// The tungstenite configuration toolwire's server uses for its sockets (see
/// `server/src/serve.rs`), for the raw baseline with the same buffers.
pub fn small_buffers() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(1024 * 1024)
}

/// The child process: serves `kind` on loopback, prints `READY <url> <server key or
/// ->` and serves until its standard input closes.
///
/// # Errors
/// Bind or build errors.
pub async fn idle_server(kind: IdleKind, client: Option<IdentityKey>) -> Result<()> {
    let (url, key, stop): (String, String, Box<dyn FnOnce()>) = match kind {
        IdleKind::Toolwire => {
            let client = client.ok_or_else(|| fail("idle-server toolwire needs a client key"))?;
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let url = format!("ws://{}/toolwire", listener.local_addr()?);
            let identity = Identity::generate(&mut rand_core::OsRng);
            let key = identity.public_key().to_string();
            let mut limits = unthrottled_limits();
            limits.max_unauthenticated_per_ip = 1024;
            let server = Server::builder(identity, url.clone())
                .limits(limits)
                .allow_client(client)
                .tool(echo_tool())
                .build()?;
            let task = tokio::spawn(async move {
                let _ = server.serve_listener(listener).await;
            });
            (url, key, Box::new(move || task.abort()))
        }
        IdleKind::RawDefault | IdleKind::RawSmallBuffers => {
            let config = (kind == IdleKind::RawSmallBuffers).then(small_buffers);
            let server = RawEchoServer::start(config).await?;
            (
                server.url.clone(),
                "-".into(),
                Box::new(move || server.stop()),
            )
        }
    };
    println!("READY {url} {key}");
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(_)) = stdin.next_line().await {}
    stop();
    Ok(())
}

/// Sockets the process `pid` holds open.
///
/// # Errors
/// When `/proc/PID/fd` cannot be read.
pub fn open_sockets(pid: u32) -> Result<usize> {
    let mut sockets = 0;
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let Ok(entry) = entry else { continue };
        if std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
        {
            sockets += 1;
        }
    }
    Ok(sockets)
}

/// One measurement: the server's RSS growth per idle connection.
#[derive(Debug, Clone)]
pub struct IdleFigures {
    /// The server kind.
    pub kind: IdleKind,
    /// Connections held open.
    pub connections: usize,
    /// Sockets the server process held while they were open (listener included).
    pub server_sockets: usize,
    /// RSS before the connections opened, bytes.
    pub rss_before: u64,
    /// RSS with the connections open and idle, bytes.
    pub rss_after: u64,
}

impl IdleFigures {
    /// RSS growth per connection, bytes.
    pub fn per_connection(&self) -> f64 {
        (self.rss_after.saturating_sub(self.rss_before)) as f64 / self.connections.max(1) as f64
    }
}

enum Held {
    Toolwire(toolwire_client::Session),
    Raw { _socket: Box<dyn Send> },
}

/// Starts `exe idle-server KIND`, opens `connections` idle connections to it (all
/// authenticated for toolwire), and measures its RSS growth.
///
/// # Errors
/// When the child fails to start, a connection fails, or `/proc` is unreadable.
pub async fn measure(
    exe: &Path,
    kind: IdleKind,
    connections: usize,
    settle: Duration,
) -> Result<IdleFigures> {
    let client = Identity::generate(&mut rand_core::OsRng);
    let mut child = tokio::process::Command::new(exe)
        .arg("idle-server")
        .arg(kind.name())
        .arg(client.public_key().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child
        .id()
        .ok_or_else(|| fail("the idle server exited at once"))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| fail("no stdout from the idle server"))?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .map_err(|_| fail("the idle server did not start"))??
        .ok_or_else(|| fail("the idle server exited before READY"))?;
    let mut words = ready.split_whitespace();
    let (Some("READY"), Some(url), Some(key)) = (words.next(), words.next(), words.next()) else {
        return Err(fail(format!(
            "unexpected line from the idle server: {ready}"
        )));
    };
    let url = url.to_owned();
    let server_key: Option<IdentityKey> = key.parse().ok();

    let open = |_: usize| {
        let (url, client) = (url.clone(), client.clone());
        async move {
            match server_key {
                Some(key) => {
                    let session = Client::builder()
                        .identity(client)
                        .pin_server(key)
                        .connect(&url)
                        .await?;
                    if session.granted_tools() != ["echo"] {
                        return Err(fail("the grant does not name the echo tool"));
                    }
                    Ok(Held::Toolwire(session))
                }
                None => Ok(Held::Raw {
                    _socket: Box::new(raw_connect(&url).await?),
                }),
            }
        }
    };
    // Warm the server up (thread-local allocator arenas, lazily built state) with a
    // few connections that then close, so that the baseline is a running server.
    let warm: Vec<Result<Held>> = futures_util::stream::iter(0..8)
        .map(open)
        .buffer_unordered(8)
        .collect()
        .await;
    for held in warm {
        if let Held::Toolwire(session) = held? {
            session.close();
        }
    }
    tokio::time::sleep(settle).await;
    let rss_before = rss_bytes(pid)?;
    let mut held = Vec::with_capacity(connections);
    let mut opening = futures_util::stream::iter(0..connections)
        .map(open)
        .buffer_unordered(32);
    while let Some(connection) = opening.next().await {
        held.push(connection?);
    }
    tokio::time::sleep(settle).await;
    let rss_after = rss_bytes(pid)?;
    let server_sockets = open_sockets(pid)?;
    drop(held);
    drop(child.stdin.take());
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    let _ = child.kill().await;
    Ok(IdleFigures {
        kind,
        connections,
        server_sockets,
        rss_before,
        rss_after,
    })
}
