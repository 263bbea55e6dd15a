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

use crate::sinks::influx::{InfluxSink, InfluxStats};
use crate::sinks::journal::JournalHealth;
use crate::sinks::mqtt::LinkState;
use crate::supervise::{METRICS_TASK, NEVER_STALLS, OnStall, Supervisor, TaskSnapshot, Tasks};

/// Counters the runtime loop keeps.
#[derive(Debug, Default)]
pub struct Counters {
    pub polls_ok: AtomicU64,
    pub polls_failed: AtomicU64,
    pub alarm_events: AtomicU64,
    pub commands: AtomicU64,
    /// Messages of `mqtt` sensors turned into readings (`sources/mqtt_sensors.rs`).
    pub sensor_messages: AtomicU64,
    /// Messages on the sensor link ignored as a whole: too large, binary, not a JSON
    /// object, retained, or on a topic no device has.
    pub sensor_messages_rejected: AtomicU64,
    /// True (1) while the local warning is on: alarms not delivered, or the broker link
    /// down, for too long, or the alarm journal stopped (see `local_output.rs`).
    pub local_warning: std::sync::atomic::AtomicBool,
}

impl Counters {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The Prometheus text exposition of everything the gateway counts.
pub fn render(
    counters: &Counters,
    link: &LinkState,
    journal: &JournalHealth,
    influx: Option<&InfluxStats>,
    tasks: &[TaskSnapshot],
) -> String {
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
            "shouwang_gateway_sensor_messages_total",
            COUNTER,
            "Messages of MQTT sensors read as readings.",
            get(&counters.sensor_messages),
        ),
        (
            "shouwang_gateway_sensor_messages_rejected_total",
            COUNTER,
            "Messages on MQTT sensor topics ignored: too large, binary, not a JSON object, retained or on an unknown topic (the log names topic and reason, at most every 10 s).",
            get(&counters.sensor_messages_rejected),
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
        (
            "shouwang_gateway_bad_receipts_total",
            COUNTER,
            "Receipts that did not decode, named another gateway or too many events.",
            get(&link.bad_receipts),
        ),
        (
            "shouwang_gateway_local_warning",
            GAUGE,
            "1 while the local warning is on: alarms unconfirmed or the broker link down for longer than undelivered_fault_after_s, or the alarm journal stopped.",
            u64::from(counters.local_warning.load(Ordering::Relaxed)),
        ),
        (
            "shouwang_gateway_alarm_queue_pending",
            GAUGE,
            "Alarm events kept until the console confirms them.",
            get(&journal.pending),
        ),
        (
            "shouwang_gateway_alarm_queue_bytes",
            GAUGE,
            "Bytes of the alarm queue on disk.",
            get(&journal.bytes_on_disk),
        ),
        (
            "shouwang_gateway_alarm_queue_oldest_age_milliseconds",
            GAUGE,
            "How long the oldest unconfirmed alarm event has waited.",
            get(&journal.oldest_pending_ms),
        ),
        (
            "shouwang_gateway_alarm_queue_fsyncs_total",
            COUNTER,
            "fsyncs of the alarm queue (one per burst of events, not per event).",
            get(&journal.fsyncs),
        ),
        (
            "shouwang_gateway_alarm_queue_disk_failing",
            GAUGE,
            "1 while the alarm queue cannot write to disk (alarms kept in memory).",
            u64::from(journal.disk_failing.load(Ordering::Relaxed)),
        ),
        (
            "shouwang_gateway_alarm_state_saves_total",
            COUNTER,
            "Writes of the alarm state file (each alarm's latest event, for restarts).",
            get(&journal.state_saves),
        ),
        (
            "shouwang_gateway_alarm_state_failing",
            GAUGE,
            "1 while the alarm state file cannot be written (confirmed events stay queued).",
            u64::from(journal.state_failing.load(Ordering::Relaxed)),
        ),
        (
            "shouwang_gateway_alarm_events_confirmed_total",
            COUNTER,
            "Alarm events the console confirmed it stored.",
            get(&journal.confirmed),
        ),
        (
            "shouwang_gateway_alarm_sends_total",
            COUNTER,
            "Publishes of alarm events, first sends and resends.",
            get(&journal.sends),
        ),
        (
            "shouwang_gateway_alarm_delivery_last_milliseconds",
            GAUGE,
            "From recording to the console's receipt, for the last confirmed event.",
            get(&journal.last_delivery_ms),
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
                "Reading batches waiting to be written (on disk or in memory).",
                s.queued as u64,
            ),
            (
                "shouwang_influx_batches_shed_total",
                COUNTER,
                "Reading batches shed, oldest first, from the readings queue on disk: over queue_max_bytes or older than queue_max_age_s.",
                s.batches_shed,
            ),
            (
                "shouwang_influx_lines_shed_total",
                COUNTER,
                "Lines of the shed reading batches.",
                s.lines_shed,
            ),
            (
                "shouwang_influx_lines_abandoned_total",
                COUNTER,
                "Lines held only in memory when the writer stopped with the server away.",
                s.lines_abandoned,
            ),
            (
                "shouwang_influx_queue_bytes",
                GAUGE,
                "Bytes of the readings queue on disk.",
                s.disk.bytes,
            ),
            (
                "shouwang_influx_queue_fsyncs_total",
                COUNTER,
                "fsyncs of the readings queue (at most about two per sync_interval_ms).",
                s.disk.fsyncs,
            ),
            (
                "shouwang_influx_queue_corrupt_records_total",
                COUNTER,
                "Records of the readings queue skipped because their bytes failed their checks.",
                s.disk.corrupt_records,
            ),
            (
                "shouwang_influx_queue_disk_failing",
                GAUGE,
                "1 while the readings queue cannot write to disk (readings held in memory, up to queue_max_batches).",
                u64::from(s.disk.failing),
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
    // One series per supervised task. Task names are `mqtt`, `mqtt-outbox`, `influx`,
    // `metrics`, `alarm-journal` and `modbus/<link id>` (a `[[links]]` id, with `#k` for a
    // lane, or `tcp:<host:port>`); link ids and addresses are checked by the config and hold
    // no `"`, `\` or newline, so they need no escaping.
    // (name, type, help, value of one task)
    type PerTask = (
        &'static str,
        &'static str,
        &'static str,
        fn(&TaskSnapshot) -> u64,
    );
    let per_task: [PerTask; 4] = [
        (
            "shouwang_gateway_task_restarts_total",
            COUNTER,
            "Times a supervised task failed (ended, panicked, or stalled and was aborted) and was restarted; for the alarm journal, found ended.",
            |t| t.restarts,
        ),
        (
            "shouwang_gateway_task_stalls_total",
            COUNTER,
            "Times a supervised task went without a turn for longer than it may.",
            |t| t.stalls,
        ),
        (
            "shouwang_gateway_task_stalled",
            GAUGE,
            "1 while a supervised task is stalled.",
            |t| u64::from(t.stalled),
        ),
        (
            "shouwang_gateway_task_up",
            GAUGE,
            "1 while a supervised task runs; 0 while it waits for a restart or has ended.",
            |t| u64::from(t.up),
        ),
    ];
    if !tasks.is_empty() {
        for (name, kind, help, value) in per_task {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for t in tasks {
                let _ = writeln!(out, "{name}{{task=\"{}\"}} {}", t.name, value(t));
            }
        }
    }
    out
}

/// Alarm events older than this without the console's receipt make `/healthz` fail.
const HEALTHY_OLDEST_PENDING_MS: u64 = 30_000;

/// What is wrong with the gateway's delivery and its tasks, in words; empty when healthy.
/// Pure.
pub fn health_problems(
    link: &LinkState,
    journal: &JournalHealth,
    tasks: &[TaskSnapshot],
) -> Vec<String> {
    let mut out = Vec::new();
    if !link.connected.load(Ordering::Relaxed) {
        out.push("broker: not connected".to_string());
    }
    let oldest = journal.oldest_pending_ms.load(Ordering::Relaxed);
    if oldest >= HEALTHY_OLDEST_PENDING_MS {
        out.push(format!(
            "alarms: the oldest unconfirmed event has waited {} s",
            oldest / 1000
        ));
    }
    if journal.disk_failing.load(Ordering::Relaxed) {
        out.push("alarm queue: cannot write to disk; alarms kept in memory".to_string());
    }
    if journal.state_failing.load(Ordering::Relaxed) {
        out.push("alarm state: cannot write to disk; a restart would not know it".to_string());
    }
    out.extend(tasks.iter().filter_map(TaskSnapshot::problem));
    out
}

/// Serve `/metrics` and `/healthz` on `listen`, under `supervisor` (task
/// [`METRICS_TASK`]); returns the address it listens on and the keeper's handle (aborting
/// it stops the server).
///
/// The socket is bound once, here, and outlives each run of the server: a run serves on a
/// duplicate of it, so a restarted run listens on the same port with no gap in which
/// another process could take it, and connections waiting in the backlog are kept. A run
/// ends only if its accept loop does (axum's retries every accept error) or panics;
/// handlers run in a task per connection, so a panic in one costs that connection only.
/// Not watched for stalls: a server has no turns of its own to beat (it waits for
/// connections), and a handler that hangs holds only its own connection.
pub async fn serve(
    listen: SocketAddr,
    counters: Arc<Counters>,
    link: Arc<LinkState>,
    journal: Arc<JournalHealth>,
    influx: Option<InfluxSink>,
    tasks: Arc<Tasks>,
    supervisor: &Supervisor,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let local = listener.local_addr()?;
    let journal_m = journal.clone();
    let link_h = link.clone();
    let tasks_h = tasks.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let stats = influx.as_ref().map(InfluxSink::stats);
                let body = render(
                    &counters,
                    &link,
                    &journal_m,
                    stats.as_ref(),
                    &tasks.snapshot(),
                );
                async move { ([("content-type", "text/plain; version=0.0.4")], body) }
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let problems = health_problems(&link_h, &journal, &tasks_h.snapshot());
                async move {
                    if problems.is_empty() {
                        (axum::http::StatusCode::OK, "ok\n".to_string())
                    } else {
                        (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            problems.join("\n") + "\n",
                        )
                    }
                }
            }),
        );
    tracing::info!(listen = %local, "metrics on /metrics");
    Ok((local, keep_serving(listener.into_std()?, app, supervisor)))
}

/// Tests: runs of the server left to kill before they serve.
#[cfg(test)]
static RUNS_TO_KILL: AtomicU64 = AtomicU64::new(0);

/// Serve `app` on duplicates of `listener` (non-blocking), restarted by `supervisor`.
fn keep_serving(
    listener: std::net::TcpListener,
    app: axum::Router,
    supervisor: &Supervisor,
) -> tokio::task::JoinHandle<()> {
    let listener = Arc::new(listener);
    supervisor.spawn(METRICS_TASK, NEVER_STALLS, OnStall::Report, move |_| {
        let (listener, app) = (listener.clone(), app.clone());
        async move {
            #[cfg(test)]
            if RUNS_TO_KILL
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
            {
                panic!("injected: the metrics server dies");
            }
            let listener = match listener
                .try_clone()
                .and_then(tokio::net::TcpListener::from_std)
            {
                Ok(listener) => listener,
                Err(error) => {
                    // Out of file descriptors, most likely: the supervisor tries again.
                    tracing::error!(%error, "the metrics server cannot take up its socket");
                    return;
                }
            };
            if let Err(error) = axum::serve(listener, app).await {
                tracing::error!(%error, "metrics server stopped");
            }
        }
    })
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
        let journal = JournalHealth::default();
        let text = render(&counters, &link, &journal, None, &[]);
        assert!(text.contains(
            "# TYPE shouwang_gateway_polls_total counter\nshouwang_gateway_polls_total 2\n"
        ));
        assert!(text.contains("shouwang_gateway_readings_dropped_total 3\n"));
        assert!(text.contains("shouwang_gateway_mqtt_connected 0\n"));
        assert!(!text.contains("shouwang_influx"));
        let stats = InfluxStats {
            batches_dropped: 7,
            batches_shed: 4,
            lines_shed: 9,
            disk: crate::sinks::influx::DiskFigures {
                bytes: 4096,
                failing: true,
                ..Default::default()
            },
            ..InfluxStats::default()
        };
        let text = render(&counters, &link, &journal, Some(&stats), &[]);
        for row in [
            "shouwang_influx_batches_dropped_total 7\n",
            "shouwang_influx_batches_shed_total 4\n",
            "shouwang_influx_lines_shed_total 9\n",
            "shouwang_influx_queue_bytes 4096\n",
            "shouwang_influx_queue_disk_failing 1\n",
        ] {
            assert!(text.contains(row), "{row}");
        }
    }

    #[test]
    fn health_names_each_problem_and_is_empty_when_all_is_well() {
        let link = LinkState::default();
        let journal = JournalHealth::default();
        assert_eq!(
            health_problems(&link, &journal, &[]),
            ["broker: not connected"]
        );
        link.connected.store(true, Ordering::Relaxed);
        assert!(health_problems(&link, &journal, &[]).is_empty());
        journal.oldest_pending_ms.store(45_000, Ordering::Relaxed);
        journal.disk_failing.store(true, Ordering::Relaxed);
        let problems = health_problems(&link, &journal, &[]);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("45 s"));
    }

    fn task(name: &str, up: bool, stalled: bool, restarts: u64) -> TaskSnapshot {
        TaskSnapshot {
            name: name.into(),
            restarts,
            stalls: u64::from(stalled),
            up,
            stalled,
            last_failure_ms: None,
        }
    }

    #[test]
    fn health_names_each_stalled_or_down_task_and_not_the_ones_that_run() {
        let link = LinkState::default();
        link.connected.store(true, Ordering::Relaxed);
        let journal = JournalHealth::default();
        let tasks = [
            task("mqtt", true, false, 3),
            task("modbus/smoke-B1-12-03", true, true, 0),
            task("alarm-journal", false, false, 1),
        ];
        let problems = health_problems(&link, &journal, &tasks);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("modbus/smoke-B1-12-03: stalled"));
        assert!(problems[1].contains("alarm-journal: down"));
    }

    #[test]
    fn each_task_has_its_restarts_and_stalled_state_as_labelled_series() {
        let tasks = [
            task("mqtt", true, false, 3),
            task("modbus/smoke-1", true, true, 0),
        ];
        let text = render(
            &Counters::default(),
            &LinkState::default(),
            &JournalHealth::default(),
            None,
            &tasks,
        );
        assert!(text.contains("# TYPE shouwang_gateway_task_restarts_total counter\n"));
        assert!(text.contains("shouwang_gateway_task_restarts_total{task=\"mqtt\"} 3\n"));
        assert!(text.contains("shouwang_gateway_task_stalled{task=\"modbus/smoke-1\"} 1\n"));
        assert!(text.contains("shouwang_gateway_task_stalled{task=\"mqtt\"} 0\n"));
        assert!(text.contains("shouwang_gateway_task_up{task=\"mqtt\"} 1\n"));
    }

    #[tokio::test]
    async fn a_metrics_server_that_dies_is_restarted_on_the_same_port_and_healthz_counts_it() {
        let supervisor = Supervisor::new(crate::supervise::Policy {
            first_backoff: std::time::Duration::from_millis(50),
            check_every: std::time::Duration::from_millis(20),
            ..Default::default()
        });
        let link = Arc::new(LinkState::default());
        link.connected.store(true, Ordering::Relaxed);
        // The workspace builds reqwest without a built-in crypto provider (ring only).
        let _ = rustls::crypto::ring::default_provider().install_default();
        RUNS_TO_KILL.store(1, Ordering::Relaxed);
        let (addr, _keeper) = serve(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(Counters::default()),
            link,
            Arc::new(JournalHealth::default()),
            None,
            supervisor.tasks(),
            &supervisor,
        )
        .await
        .unwrap();
        // The first run died before serving; the connection waits in the backlog for
        // the next one.
        let healthz = reqwest::get(format!("http://{addr}/healthz"))
            .await
            .unwrap();
        assert_eq!(healthz.status(), 200, "only what is wrong now fails it");
        let metrics = reqwest::get(format!("http://{addr}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains("shouwang_gateway_task_restarts_total{task=\"metrics\"} 1\n"),
            "{metrics}"
        );
        assert!(supervisor.tasks().fault_active());
    }
}
