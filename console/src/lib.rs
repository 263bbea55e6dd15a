//! The Shouwang control-room console: a live alarm board that operators acknowledge from.
//!
//! ```text
//!  gateways ──MQTT──▶ mqtt::run ──▶ store (SQLite, own thread) ──▶ HTTP API / page
//!                        │                                          ▲
//!                        └──────────▶ broadcast ──▶ /api/stream ────┘
//!  operator ──POST /api/alarms/{id}/ack──▶ Command ──MQTT──▶ owning gateway
//!                                          gateway's `acknowledged` event comes back ──▶ board
//! ```
//!
//! Invariants (details in [`store`]): alarm events are deduplicated by `event_id`; an alarm's
//! state is that of its newest event by `(ts_ms, arrival)`, so a late older event never rolls
//! it back; the board changes only on events from gateways, never when the console sends an
//! acknowledgement.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, bail};
use shouwang_broker_auth::BrokerAuth;
use tokio::sync::{broadcast, oneshot, watch};
use tokio::task::JoinHandle;

pub mod http;
pub mod mqtt;
pub mod own_alarms;
pub mod receipts;
pub mod snapshot;
pub mod state;
pub mod store;

use state::{AppState, LiveReadings, Metrics, STREAM_CAPACITY};
use store::{Store, StoreHandle};

#[derive(Debug, Clone)]
pub struct ConsoleConfig {
    /// Where the HTTP API and page listen; port 0 picks a free port.
    pub listen: SocketAddr,
    pub mqtt_host: String,
    pub mqtt_port: u16,
    /// The MQTT client id. The session is persistent (clean_session=false), so QoS 1 events
    /// published while the console is away are delivered when it comes back with this id.
    pub mqtt_client_id: String,
    /// The console's account on the broker (`console` with `docs/mosquitto/`) and TLS,
    /// already loaded. `BrokerAuth::default()`: no account, plain TCP.
    pub mqtt_auth: BrokerAuth,
    /// The SQLite file; created if missing.
    pub db_path: PathBuf,
    /// Operator named on an acknowledgement whose request names none.
    pub operator_default: String,
}

/// A console that is serving. Its tasks keep running if this is dropped.
pub struct RunningConsole {
    local_addr: SocketAddr,
    http: JoinHandle<std::io::Result<()>>,
    mqtt: JoinHandle<()>,
    store_stopped: oneshot::Receiver<()>,
    shutdown: watch::Sender<bool>,
}

impl RunningConsole {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Wait until one of the console's tasks ends, which only happens when it failed (or
    /// after [`RunningConsole::shutdown`]).
    pub async fn wait(self) -> anyhow::Result<()> {
        let RunningConsole {
            http,
            mqtt,
            store_stopped,
            ..
        } = self;
        tokio::select! {
            r = http => match r.context("HTTP server task")? {
                Ok(()) => bail!("the HTTP server stopped"),
                Err(e) => Err(e).context("HTTP server"),
            },
            r = mqtt => {
                r.context("MQTT task")?;
                bail!("the MQTT task stopped")
            }
            _ = store_stopped => bail!("the store thread stopped"),
        }
    }

    /// Stop serving: end event streams, let the HTTP server finish open requests, stop the
    /// MQTT task (the broker keeps the persistent session and queues events for our return).
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        self.mqtt.abort();
        let _ = self.mqtt.await;
        match tokio::time::timeout(std::time::Duration::from_secs(5), self.http).await {
            Ok(joined) => joined.context("HTTP server task")?.context("HTTP server")?,
            Err(_) => bail!("the HTTP server did not stop within 5 s"),
        }
        Ok(())
    }
}

/// Open the store, bind the HTTP listener and start the MQTT task (which connects in the
/// background and retries forever). Returns once the listener is bound.
pub async fn start(cfg: ConsoleConfig) -> anyhow::Result<RunningConsole> {
    if cfg.mqtt_client_id.trim().is_empty() {
        bail!("the MQTT client id must not be empty (a persistent session needs one)");
    }
    if cfg.operator_default.trim().is_empty() {
        bail!("the default operator name must not be empty");
    }
    let db_path = cfg.db_path.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(&db_path))
        .await
        .context("opening the store")?
        .with_context(|| format!("opening {}", cfg.db_path.display()))?;
    let (store, store_stopped) = StoreHandle::spawn(store).context("starting the store thread")?;

    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("binding {}", cfg.listen))?;
    let local_addr = listener.local_addr()?;

    let (client, eventloop) = mqtt::client(
        &cfg.mqtt_host,
        cfg.mqtt_port,
        &cfg.mqtt_client_id,
        &cfg.mqtt_auth,
    );
    let (shutdown, shutdown_rx) = watch::channel(false);
    let metrics = Arc::new(Metrics::default());
    let state = AppState {
        store,
        readings: Arc::new(LiveReadings::default()),
        stream: broadcast::channel(STREAM_CAPACITY).0,
        mqtt: client.clone(),
        receipts: receipts::Receipts::spawn(client.clone(), metrics.clone()),
        snapshots: Arc::default(),
        mqtt_connected: Arc::new(AtomicBool::new(false)),
        metrics,
        operator_default: cfg.operator_default.as_str().into(),
        shutdown: shutdown_rx.clone(),
    };

    let mqtt = tokio::spawn(mqtt::run(eventloop, client, state.clone()));
    let app = http::router(state);
    let mut stop = shutdown_rx;
    let http = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { state::shutdown_signalled(&mut stop).await })
            .await
    });
    tracing::info!(
        %local_addr,
        broker = %format!("{}:{}", cfg.mqtt_host, cfg.mqtt_port),
        client_id = %cfg.mqtt_client_id,
        db = %cfg.db_path.display(),
        "console started"
    );
    Ok(RunningConsole {
        local_addr,
        http,
        mqtt,
        store_stopped,
        shutdown,
    })
}
