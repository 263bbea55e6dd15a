//! The demo's embedded MQTT broker: rumqttd with one MQTT 3.1.1 listener, no TLS, no auth.
//!
//! rumqttd keeps retained messages and publishes last wills (the gateway's `status` topic
//! depends on both; `demo/tests/demo.rs` checks them). It runs on threads of its own with
//! their own runtimes and cannot be stopped: it lives until the process exits.
//!
//! rumqttd only logs a listener that failed to bind, so [`start`] checks the port first and
//! then waits until the broker accepts connections.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

/// How long the broker may take to listen.
const START_DEADLINE: Duration = Duration::from_secs(10);

/// The broker's config: one v4 listener on `listen`.
pub fn config(listen: SocketAddr) -> Config {
    let connections = ConnectionSettings {
        // Time a new connection has to send CONNECT.
        connection_timeout_ms: 10_000,
        // Reading batches and events are small; this leaves room for a big site.
        max_payload_size: 256 * 1024,
        max_inflight_count: 100,
        auth: None,
        external_auth: None,
        // Without this, a publish to a topic nobody subscribed to yet is an error that
        // disconnects the publisher (rumqttd keeps one log per filter).
        dynamic_filters: true,
    };
    let server = ServerSettings {
        name: "v4-demo".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    Config {
        id: 0,
        router: RouterConfig {
            max_connections: 64,
            max_outgoing_packet_count: 200,
            // Per-topic commit log: 10 segments of 1 MiB each, oldest dropped first.
            max_segment_size: 1024 * 1024,
            max_segment_count: 10,
            ..RouterConfig::default()
        },
        v4: Some(HashMap::from([("1".to_string(), server)])),
        ..Config::default()
    }
}

/// Start the broker on `listen` and wait until it accepts connections.
pub async fn start(listen: SocketAddr) -> anyhow::Result<()> {
    // rumqttd binds on its own thread and only logs a failure: find out here instead.
    drop(
        std::net::TcpListener::bind(listen)
            .with_context(|| format!("MQTT port {listen} is taken (another broker or demo?)"))?,
    );
    let mut broker = Broker::new(config(listen));
    let thread = std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            if let Err(err) = broker.start() {
                tracing::error!(error = %err, "embedded MQTT broker stopped");
            }
        })
        .context("starting the embedded MQTT broker")?;
    let deadline = tokio::time::Instant::now() + START_DEADLINE;
    loop {
        if tokio::net::TcpStream::connect(listen).await.is_ok() {
            return Ok(());
        }
        if thread.is_finished() {
            bail!("the embedded MQTT broker stopped before it listened on {listen}");
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the embedded MQTT broker did not listen on {listen} within {START_DEADLINE:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
