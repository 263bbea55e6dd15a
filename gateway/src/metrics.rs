//! The gateway's own health, as Prometheus metrics on `GET /metrics` (and `GET /healthz`),
//! served only when the config has `[metrics] listen = "..."`.
//!
//! Every bounded queue that sheds something counts it here, so an operator can see it:
//! readings dropped on the MQTT lane, batches dropped by the line-protocol writer, bad
//! commands. [`render`] is pure; [`serve`] is the only I/O.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::influx::{InfluxSink, InfluxStats};
use crate::mqtt::LinkState;

/// Counters the runtime loop keeps.
#[derive(Debug, Default)]
pub struct Counters {
    pub polls_ok: AtomicU64,
    pub polls_failed: AtomicU64,
    pub alarm_events: AtomicU64,
    pub commands: AtomicU64,
}

impl Counters {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The Prometheus text exposition of everything the gateway counts.
pub fn render(counters: &Counters, link: &LinkState, influx: Option<&InfluxStats>) -> String {
    const COUNTER: &str = "counter";
    const GAUGE: &str = "gauge";
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    // (name, type, help, value)
    let mut rows: Vec<(&str, &str, &str, u64)> = vec![
        (
            "shouwang_gateway_polls_total",
            COUNTER,
            "Device polls that got an answer.",
            get(&counters.polls_ok),
        ),
        (
            "shouwang_gateway_poll_failures_total",
            COUNTER,
            "Device polls that got no answer (timeout, refused, broken link).",
            get(&counters.polls_failed),
        ),
        (
            "shouwang_gateway_alarm_events_total",
            COUNTER,
            "Alarm events handed to the outbox: transitions and resync answers, not the re-sends on reconnect.",
            get(&counters.alarm_events),
        ),
        (
            "shouwang_gateway_commands_total",
            COUNTER,
            "Commands from the console handled.",
            get(&counters.commands),
        ),
        (
            "shouwang_gateway_bad_commands_total",
            COUNTER,
            "Command payloads that did not decode.",
            get(&link.bad_commands),
        ),
        (
            "shouwang_gateway_readings_dropped_total",
            COUNTER,
            "Reading batches not sent over MQTT: lane full or link down.",
            get(&link.readings_dropped),
        ),
        (
            "shouwang_gateway_mqtt_connected",
            GAUGE,
            "1 while connected to the broker.",
            u64::from(link.connected.load(Ordering::Relaxed)),
        ),
    ];
    if let Some(s) = influx {
        rows.extend([
            (
                "shouwang_influx_lines_written_total",
                COUNTER,
                "Line-protocol lines the server accepted.",
                s.lines_written,
            ),
            (
                "shouwang_influx_batches_dropped_total",
                COUNTER,
                "Reading batches dropped, oldest first, because the writer's queue was full.",
                s.batches_dropped,
            ),
            (
                "shouwang_influx_lines_rejected_total",
                COUNTER,
                "Lines the server refused (4xx other than 429).",
                s.lines_rejected,
            ),
            (
                "shouwang_influx_write_errors_total",
                COUNTER,
                "Failed write requests.",
                s.write_errors,
            ),
            (
                "shouwang_influx_queued_batches",
                GAUGE,
                "Reading batches waiting to be written.",
                s.queued as u64,
            ),
        ]);
    }
    let mut out = String::new();
    for (name, kind, help, value) in rows {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
    out
}

/// Serve `/metrics` and `/healthz` on `listen` until the task is dropped.
pub async fn serve(
    listen: SocketAddr,
    counters: Arc<Counters>,
    link: Arc<LinkState>,
    influx: Option<InfluxSink>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let stats = influx.as_ref().map(InfluxSink::stats);
                let body = render(&counters, &link, stats.as_ref());
                async move { ([("content-type", "text/plain; version=0.0.4")], body) }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }));
    tracing::info!(%listen, "metrics on /metrics");
    Ok(tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "metrics server stopped");
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_shows_with_its_type_and_the_writer_only_when_there_is_one() {
        let counters = Counters::default();
        Counters::inc(&counters.polls_ok);
        Counters::inc(&counters.polls_ok);
        let link = LinkState::default();
        link.readings_dropped.fetch_add(3, Ordering::Relaxed);
        let text = render(&counters, &link, None);
        assert!(text.contains(
            "# TYPE shouwang_gateway_polls_total counter\nshouwang_gateway_polls_total 2\n"
        ));
        assert!(text.contains("shouwang_gateway_readings_dropped_total 3\n"));
        assert!(text.contains("shouwang_gateway_mqtt_connected 0\n"));
        assert!(!text.contains("shouwang_influx"));
        let stats = InfluxStats {
            batches_dropped: 7,
            ..InfluxStats::default()
        };
        let text = render(&counters, &link, Some(&stats));
        assert!(text.contains("shouwang_influx_batches_dropped_total 7\n"));
    }
}
