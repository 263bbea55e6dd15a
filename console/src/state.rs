//! What the HTTP handlers and the MQTT reader share: the store, the live readings, the
//! broadcast channel behind `/api/stream`, the MQTT client and the counters.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use shouwang_wire::ReadingBatch;
use tokio::sync::{broadcast, watch};

use crate::store::StoreHandle;

/// How many stream events a slow `/api/stream` client may fall behind before it is told to
/// resync (it then skips to what the channel still holds and refetches the rest).
pub const STREAM_CAPACITY: usize = 1024;

/// The most devices whose latest readings are kept. Readings from further devices are dropped
/// and counted: a misbehaving publisher must not grow the console without bound.
pub const MAX_LIVE_DEVICES: usize = 20_000;

#[derive(Clone)]
pub struct AppState {
    pub store: StoreHandle,
    /// Latest reading batch per device, in memory only: readings are telemetry, refreshed
    /// every poll, and not worth a disk write each.
    pub readings: Arc<LiveReadings>,
    /// Fan-out to `/api/stream` clients. Bounded: see [`STREAM_CAPACITY`].
    pub stream: broadcast::Sender<StreamEvent>,
    /// Publishes acknowledgement commands; the MQTT task polls its event loop.
    pub mqtt: rumqttc::AsyncClient,
    /// Tells gateways which of their events are stored.
    pub receipts: crate::receipts::Receipts,
    /// Gateways' snapshots being assembled, part by part.
    pub snapshots: Arc<Mutex<crate::snapshot::Assemblies>>,
    /// True while connected to the broker and subscribed.
    pub mqtt_connected: Arc<AtomicBool>,
    pub metrics: Arc<Metrics>,
    /// Operator named on an acknowledgement whose request names none.
    pub operator_default: Arc<str>,
    /// Becomes true when the console shuts down; ends the event streams.
    pub shutdown: watch::Receiver<bool>,
}

impl AppState {
    pub fn mqtt_connected(&self) -> bool {
        self.mqtt_connected.load(Ordering::Relaxed)
    }

    /// Send to every stream client. No client listening is normal, not an error.
    pub fn publish<T: Serialize>(&self, kind: StreamKind, data: &T) {
        match serde_json::to_string(data) {
            Ok(json) => {
                let _ = self.stream.send(StreamEvent {
                    kind,
                    data: json.into(),
                });
            }
            Err(error) => {
                tracing::error!(%error, kind = kind.as_str(), "cannot encode a stream event")
            }
        }
    }
}

/// Completes when [`crate::RunningConsole::shutdown`] is called. Never completes if the
/// console handle was dropped instead: dropping it leaves the console running.
pub async fn shutdown_signalled(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The SSE event names of `/api/stream`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// An alarm's new current state, as one element of `/api/alarms`.
    Alarm,
    /// A `ReadingBatch`.
    Reading,
    /// A `GatewayStatus`.
    Gateway,
    /// A `CommandReply`.
    Reply,
}

impl StreamKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamKind::Alarm => "alarm",
            StreamKind::Reading => "reading",
            StreamKind::Gateway => "gateway",
            StreamKind::Reply => "reply",
        }
    }
}

/// One event for the stream, its JSON encoded once for all clients.
#[derive(Debug, Clone)]
pub struct StreamEvent {
    pub kind: StreamKind,
    pub data: Arc<str>,
}

/// `(community, gateway, device)`.
type DeviceKey = (String, String, String);

/// The latest [`ReadingBatch`] per device.
#[derive(Default)]
pub struct LiveReadings {
    latest: Mutex<HashMap<DeviceKey, ReadingBatch>>,
}

/// What [`LiveReadings::update`] did with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadingUpdate {
    /// It is now the device's latest.
    Latest,
    /// The device already has a batch with a later `ts_ms`.
    Stale,
    /// The device is new and [`MAX_LIVE_DEVICES`] are already kept.
    Full,
}

impl LiveReadings {
    pub fn update(&self, community: &str, batch: &ReadingBatch) -> ReadingUpdate {
        let key = (
            community.to_string(),
            batch.gateway.clone(),
            batch.device.clone(),
        );
        // A panic while holding this lock cannot leave the map half-updated (inserts are
        // atomic), so a poisoned lock is safe to use.
        let mut latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        let mut merged = batch.clone();
        match latest.get(&key) {
            Some(old) if old.ts_ms > batch.ts_ms => return ReadingUpdate::Stale,
            None if latest.len() >= MAX_LIVE_DEVICES => return ReadingUpdate::Full,
            // Gateways report by exception: a batch holds the points that changed, so the
            // others keep their last reported value.
            Some(old) => {
                let kept = old
                    .points
                    .iter()
                    .filter(|p| !batch.points.iter().any(|n| n.point == p.point))
                    .cloned();
                merged.points = kept.chain(batch.points.iter().cloned()).collect();
                merged.points.sort_by(|a, b| a.point.cmp(&b.point));
            }
            None => {}
        }
        latest.insert(key, merged);
        ReadingUpdate::Latest
    }

    /// Every device's latest batch, by community, gateway, device.
    pub fn all(&self) -> Vec<ReadingBatch> {
        let latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<(&DeviceKey, &ReadingBatch)> = latest.iter().collect();
        out.sort_by(|a, b| a.0.cmp(b.0));
        out.into_iter().map(|(_, b)| b.clone()).collect()
    }
}

/// Counters, exposed at `/metrics` in the Prometheus text format.
#[derive(Default)]
pub struct Metrics {
    pub mqtt_messages_received: AtomicU64,
    pub mqtt_messages_rejected: AtomicU64,
    pub mqtt_connections: AtomicU64,
    pub alarm_events_stored: AtomicU64,
    pub alarm_events_duplicate: AtomicU64,
    pub alarm_events_late: AtomicU64,
    pub readings_dropped: AtomicU64,
    pub command_replies_unknown: AtomicU64,
    pub commands_sent: AtomicU64,
    pub stream_lagged: AtomicU64,
    /// Messages that could not be stored (not acknowledged to the broker, no receipt).
    pub store_failures: AtomicU64,
    /// Store failures in a row, now; 0 once a message is stored again.
    pub store_failing: AtomicU64,
    /// Receipt keys dropped because the receipt queue was full (the events come again).
    pub receipts_dropped: AtomicU64,
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self, mqtt_connected: bool) -> String {
        let counters: [(&str, &str, &AtomicU64); 12] = [
            (
                "shouwang_console_receipts_dropped_total",
                "Receipt keys dropped because the receipt queue was full (the gateway resends those events).",
                &self.receipts_dropped,
            ),
            (
                "shouwang_console_store_failures_total",
                "Messages that could not be stored: not acknowledged, no receipt, delivered again.",
                &self.store_failures,
            ),
            (
                "shouwang_console_mqtt_messages_received_total",
                "MQTT messages received on the subscribed channels.",
                &self.mqtt_messages_received,
            ),
            (
                "shouwang_console_mqtt_messages_rejected_total",
                "MQTT messages dropped because their topic or payload did not decode.",
                &self.mqtt_messages_rejected,
            ),
            (
                "shouwang_console_mqtt_connections_total",
                "Connections to the broker (ConnAcks received).",
                &self.mqtt_connections,
            ),
            (
                "shouwang_console_alarm_events_stored_total",
                "Alarm events stored (not counting duplicates).",
                &self.alarm_events_stored,
            ),
            (
                "shouwang_console_alarm_events_duplicate_total",
                "Alarm events dropped because their event_id was already stored.",
                &self.alarm_events_duplicate,
            ),
            (
                "shouwang_console_alarm_events_late_total",
                "Alarm events older than their alarm's current state (history only).",
                &self.alarm_events_late,
            ),
            (
                "shouwang_console_readings_dropped_total",
                "Reading batches dropped because the live table was full.",
                &self.readings_dropped,
            ),
            (
                "shouwang_console_command_replies_unknown_total",
                "Command replies for commands this console did not send.",
                &self.command_replies_unknown,
            ),
            (
                "shouwang_console_commands_sent_total",
                "Acknowledge commands published.",
                &self.commands_sent,
            ),
            (
                "shouwang_console_stream_lagged_total",
                "Times a /api/stream client fell behind and was told to resync.",
                &self.stream_lagged,
            ),
        ];
        let mut out = String::new();
        for (name, help, value) in counters {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n",
                value.load(Ordering::Relaxed)
            ));
        }
        out.push_str(&format!(
            "# HELP shouwang_console_mqtt_connected Whether the console is connected and subscribed.\n\
             # TYPE shouwang_console_mqtt_connected gauge\nshouwang_console_mqtt_connected {}\n",
            u8::from(mqtt_connected)
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use shouwang_wire::{Place, PointValue};

    fn batch(device: &str, ts_ms: i64) -> ReadingBatch {
        ReadingBatch {
            schema: ReadingBatch::SCHEMA,
            gateway: "gw-1".into(),
            device: device.into(),
            device_kind: "pressure".into(),
            place: Place::default(),
            ts_ms,
            points: vec![PointValue {
                point: "pressure".into(),
                value: Some(0.3),
                engineering_unit: Some("MPa".into()),
                quality: Default::default(),
            }],
        }
    }

    #[test]
    fn a_batch_of_changed_points_keeps_the_others_last_values() {
        let live = LiveReadings::default();
        let mut first = batch("p1", 10);
        first
            .points
            .push(PointValue::good("temperature", 21.0, None));
        live.update("c", &first);
        let mut second = batch("p1", 20);
        second.points[0].value = Some(0.4);
        live.update("c", &second);
        let now = &live.all()[0];
        assert_eq!(now.ts_ms, 20);
        let values: Vec<(&str, Option<f64>)> = now
            .points
            .iter()
            .map(|p| (p.point.as_str(), p.value))
            .collect();
        assert_eq!(
            values,
            [("pressure", Some(0.4)), ("temperature", Some(21.0))]
        );
    }

    #[test]
    fn an_older_reading_batch_does_not_replace_a_newer_one() {
        let live = LiveReadings::default();
        assert_eq!(live.update("c", &batch("p1", 20)), ReadingUpdate::Latest);
        assert_eq!(live.update("c", &batch("p1", 10)), ReadingUpdate::Stale);
        assert_eq!(live.all(), vec![batch("p1", 20)]);
    }

    #[test]
    fn metrics_render_every_counter() {
        let m = Metrics::default();
        Metrics::inc(&m.mqtt_messages_rejected);
        let text = m.render(true);
        assert!(text.contains("shouwang_console_mqtt_messages_rejected_total 1\n"));
        assert!(text.contains("shouwang_console_mqtt_connected 1\n"));
    }
}
