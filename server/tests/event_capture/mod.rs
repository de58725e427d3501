//! Captures what the server and the client log, on the test's thread, at every
//! level: each event's target, level and fields (for exact field assertions), and the
//! formatted text (to search for secrets).
//!
//! Tests using it run on tokio's current-thread runtime (`#[tokio::test]`), so the
//! server's and the client's tasks log on the capturing thread.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::Write;
use std::sync::{Arc, Mutex};
use tracing::field::{Field, Visit};
use tracing::subscriber::DefaultGuard;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::Layer;

/// One logged event.
#[derive(Debug, Clone)]
pub(crate) struct Line {
    pub(crate) target: String,
    pub(crate) level: Level,
    pub(crate) fields: BTreeMap<String, String>,
}

impl Line {
    /// A field's value (strings without quotes), failing the test when absent.
    pub(crate) fn field(&self, name: &str) -> &str {
        match self.fields.get(name) {
            Some(value) => value,
            None => panic!("no field `{name}` in {self:?}"),
        }
    }

    /// The names of the fields present.
    pub(crate) fn field_names(&self) -> Vec<&str> {
        self.fields.keys().map(String::as_str).collect()
    }
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

/// The capture: structured lines and formatted text.
#[derive(Clone, Default)]
pub(crate) struct Capture {
    lines: Arc<Mutex<Vec<Line>>>,
    text: Arc<Mutex<Vec<u8>>>,
}

impl<S: Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &Event<'_>, _context: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        self.lines.lock().expect("lock").push(Line {
            target: event.metadata().target().to_owned(),
            level: *event.metadata().level(),
            fields,
        });
    }
}

impl Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.text.lock().expect("lock").extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    /// Captures everything logged on this thread until the guard is dropped.
    pub(crate) fn start() -> (Self, DefaultGuard) {
        let capture = Self::default();
        let writer = capture.clone();
        let subscriber = tracing_subscriber::registry().with(capture.clone()).with(
            tracing_subscriber::fmt::layer()
                .with_writer(move || writer.clone())
                .with_ansi(false)
                .with_filter(tracing_subscriber::filter::LevelFilter::TRACE),
        );
        let guard = tracing::subscriber::set_default(subscriber);
        (capture, guard)
    }

    /// The formatted log so far.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.text.lock().expect("lock")).into_owned()
    }

    /// Every structured line so far.
    pub(crate) fn lines(&self) -> Vec<Line> {
        self.lines.lock().expect("lock").clone()
    }

    /// The security events named `name` so far (target `toolwire::event`, and
    /// `toolwire::decision` for `authz_decision`).
    pub(crate) fn events(&self, name: &str) -> Vec<Line> {
        self.lines()
            .into_iter()
            .filter(|line| {
                (line.target == "toolwire::event" || line.target == "toolwire::decision")
                    && line.fields.get("event").map(String::as_str) == Some(name)
            })
            .collect()
    }

    /// The security events named `name` logged by `role` so far.
    pub(crate) fn events_of(&self, role: &str, name: &str) -> Vec<Line> {
        self.events(name)
            .into_iter()
            .filter(|line| line.fields.get("role").map(String::as_str) == Some(role))
            .collect()
    }

    /// Waits (bounded) until `role` logged `count` events named `name`; returns them.
    pub(crate) async fn wait_events(&self, role: &str, name: &str, count: usize) -> Vec<Line> {
        for _ in 0..500 {
            let events = self.events_of(role, name);
            if events.len() >= count {
                return events;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!(
            "{role} logged {} `{name}` events, expected {count}:\n{}",
            self.events_of(role, name).len(),
            self.text()
        );
    }
}

/// Lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
