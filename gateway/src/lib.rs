//! The Shouwang edge gateway.
//!
//! One process per site controller: it polls field devices ([`modbus`]), feeds every
//! outcome to the [`watch`] (the rule engine plus what the gateway knows about its devices),
//! and sends what comes out over MQTT ([`mqtt`]) and, optionally, to a time-series store as
//! InfluxDB line protocol ([`influx`]). [`run_until`] is the runtime loop that wires them:
//! the only place here with `select!` over all of them.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;

pub mod config;
pub mod influx;
pub mod metrics;
pub mod modbus;
pub mod mqtt;
pub mod mqtt_auth;
pub mod watch;

use config::Config;
use mqtt::{LinkState, Outbox, Topics, Urgent};
use watch::Watch;

/// How often on-delays are checked between polls.
const TICK: Duration = Duration::from_millis(100);
/// Poll outcomes waiting for the watch. Pollers wait when it is full.
const POLL_QUEUE: usize = 256;

/// Milliseconds since the Unix epoch, from the system clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Run the gateway until a fatal error.
pub async fn run(config: Config) -> anyhow::Result<()> {
    run_until(config, std::future::pending()).await
}

/// Run the gateway until `shutdown` completes, then announce `offline` and disconnect.
pub async fn run_until(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let boot_id = uuid::Uuid::now_v7().simple().to_string();
    let mut watch = Watch::new(&config, boot_id).map_err(|errors| {
        let list: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        anyhow::anyhow!("the rules do not compile: {}", list.join("; "))
    })?;

    let (influx, influx_task) = match &config.influx {
        Some(cfg) => {
            let (sink, task) = influx::InfluxSink::spawn(cfg.clone())
                .context("starting the line-protocol writer")?;
            (Some(sink), Some(task))
        }
        None => (None, None),
    };

    let (client, events) = mqtt::client(&config);
    let link = Arc::new(LinkState::default());
    let (mut news, driver) =
        mqtt::spawn_drive(events, client.clone(), config.clone(), link.clone());
    let outbox = Outbox::spawn(client.clone(), Topics::new(&config), link.clone());
    let counters = Arc::new(metrics::Counters::default());
    let metrics_task = match &config.metrics {
        Some(m) => {
            // Checked by the config: it parses.
            let listen = m.listen.parse().context("metrics.listen")?;
            Some(
                metrics::serve(listen, counters.clone(), link.clone(), influx.clone())
                    .await
                    .with_context(|| format!("serving metrics on {listen}"))?,
            )
        }
        None => None,
    };

    let (poll_tx, mut poll_rx) = mpsc::channel(POLL_QUEUE);
    let mut pollers = Vec::new();
    for (i, device) in config.devices.iter().enumerate() {
        pollers.push(tokio::spawn(modbus::poll_device(
            i,
            device.clone(),
            poll_tx.clone(),
        )));
    }
    drop(poll_tx);
    tracing::info!(
        gateway = %config.gateway.id,
        community = %config.gateway.community,
        devices = config.devices.len(),
        "gateway running"
    );

    let mut ticker = tokio::time::interval(TICK);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            Ok(()) = news.connections.changed() => {
                for event in watch.latest_events() {
                    outbox.send(Urgent::Event(Box::new(event))).await;
                }
            }
            Some(cmd) = news.commands.recv() => {
                metrics::Counters::inc(&counters.commands);
                let (events, reply) = watch.on_command(&cmd, now_ms());
                tracing::info!(command_id = %cmd.command_id, action = ?cmd.action, ok = reply.ok, error = ?reply.error, "command");
                for event in events {
                    metrics::Counters::inc(&counters.alarm_events);
                    outbox.send(Urgent::Event(Box::new(event))).await;
                }
                outbox.send(Urgent::Reply(reply)).await;
            }
            Some(outcome) = poll_rx.recv() => {
                let device = &config.devices[outcome.device].id;
                match &outcome.result {
                    Err(e) => {
                        metrics::Counters::inc(&counters.polls_failed);
                        tracing::debug!(device = %device, error = %e, "poll failed");
                    }
                    Ok(polled) => {
                        metrics::Counters::inc(&counters.polls_ok);
                        // Debug only: a fault that persists becomes the device's
                        // point_fault alarm, which is logged and reported.
                        for fault in &polled.faults {
                            tracing::debug!(device = %device, point = %fault.point, reason = %fault.reason, "point not read");
                        }
                    }
                }
                let report = watch.on_poll(&outcome);
                for event in report.events {
                    metrics::Counters::inc(&counters.alarm_events);
                    tracing::info!(alarm_id = %event.alarm_id, state = ?event.state, value = ?event.value, "alarm transition");
                    outbox.send(Urgent::Event(Box::new(event))).await;
                }
                if let Some(batch) = report.readings {
                    if let Some(sink) = &influx {
                        sink.push(batch.clone());
                    }
                    outbox.send_readings(batch);
                }
            }
            _ = ticker.tick() => {
                for event in watch.on_tick(now_ms()) {
                    metrics::Counters::inc(&counters.alarm_events);
                    outbox.send(Urgent::Event(Box::new(event))).await;
                }
            }
        }
    }
    for p in pollers {
        p.abort();
    }
    if let Some(task) = metrics_task {
        task.abort();
    }
    mqtt::announce_offline(&client, &config, &link).await;
    // The writer flushes what it holds once its last handle is gone.
    drop(influx);
    if let Some(task) = influx_task {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    // The event loop ends when the broker closes the link after our DISCONNECT.
    let _ = tokio::time::timeout(Duration::from_secs(2), driver).await;
    Ok(())
}
