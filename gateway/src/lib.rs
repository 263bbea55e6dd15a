//! The Shouwang edge gateway.
//!
//! One process per site controller: it polls field devices ([`modbus`]), feeds every
//! outcome to the [`watch`] (the rule engine plus what the gateway knows about its devices),
//! and sends what comes out over MQTT ([`mqtt`]) and, optionally, to a time-series store as
//! InfluxDB line protocol ([`influx`]). [`run_until`] is the runtime loop that wires them:
//! the only place here with `select!` over all of them.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;

pub mod clock;
pub mod config;
pub mod emit;
pub mod metrics;
pub mod rule_tools;
pub mod sinks;
pub mod sources;
pub mod supervise;
pub mod watch;

use config::Config;
use sinks::mqtt::{LinkState, Outbox, Topics};
use sinks::{broker_confirm, influx, journal, local_output, mqtt};
use sources::modbus;
use watch::Watch;

/// How often on-delays are checked between polls (the rule fixtures tick the same way).
pub(crate) const TICK: Duration = Duration::from_millis(100);
/// Poll outcomes waiting for the watch. Pollers wait when it is full.
const POLL_QUEUE: usize = 256;

/// Milliseconds since the Unix epoch, from the wall clock: for what people read only
/// (see [`clock`]).
pub fn now_ms() -> i64 {
    clock::wall_ms()
}

/// Run the gateway until a fatal error.
pub async fn run(config: Config) -> anyhow::Result<()> {
    run_until(config, std::future::pending()).await
}

/// Run the gateway until `shutdown` completes, then announce `offline` and disconnect.
pub async fn run_until(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let clock = clock::Clock::new();
    std::fs::create_dir_all(&config.gateway.data_dir).with_context(|| {
        format!(
            "creating the data directory {}",
            config.gateway.data_dir.display()
        )
    })?;
    let boot = clock::BootCounter::next(&config.gateway.data_dir, clock.now().wall_ms);
    if let Err(why) = &boot.persisted {
        tracing::error!(boot = boot.boot, error = %why, "boot counter not stored; event order after the next restart may be wrong");
    }
    let boot_id = uuid::Uuid::now_v7().simple().to_string();
    let mut watch = Watch::new(&config, boot_id.clone(), boot.boot).map_err(|errors| {
        let list: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        anyhow::anyhow!("the rules do not compile: {}", list.join("; "))
    })?;

    // Restarts the gateway's tasks when they fail (and some when they stall); watches the
    // journal's thread (supervise.rs has the table).
    let supervisor = supervise::Supervisor::default();
    let tasks = supervisor.tasks();
    let (influx, influx_task) = match &config.influx {
        Some(cfg) => {
            let (sink, task) = influx::InfluxSink::spawn_supervised(
                cfg.clone(),
                &config.gateway.data_dir,
                &supervisor,
            )
            .context("starting the line-protocol writer")?;
            (Some(sink), Some(task))
        }
        None => (None, None),
    };
    let (client, events) = mqtt::client(&config);
    let link = Arc::new(LinkState::default());
    let topics = Topics::new(&config);
    // The one way out for alarm events: on disk first, then to the broker until the
    // console confirms them.
    let known = watch.alarm_ids();
    // Whose word takes an event out of the queue: the console's receipt, or (a site's
    // choice, with its limits) the broker's PUBACK on a connection of the journal's own.
    let (outlet, outlet_link, pubacks) = match config.gateway.alarm_confirmation {
        config::AlarmConfirmation::Console => {
            (journal::Outlet::Client(client.clone()), link.clone(), None)
        }
        config::AlarmConfirmation::Broker => {
            let (alarm_client, alarm_events) = broker_confirm::connection(&config);
            let (broker_link, acks, _task) = broker_confirm::spawn(alarm_client, alarm_events);
            let state = broker_link.state.clone();
            (journal::Outlet::Broker(broker_link), state, Some(acks))
        }
    };
    let (journal, restored) = journal::Journal::start(
        &config.gateway.data_dir,
        outlet,
        topics.events.clone(),
        outlet_link,
        &known,
    )
    .context("starting the alarm journal")?;
    drop(known);
    if let Some(acks) = pubacks {
        broker_confirm::confirm_into(acks, journal.clone());
    }
    // Every alarm resumes where it was: nothing raised twice, nothing forgotten.
    let restored = watch.restore(restored);
    if restored > 0 {
        tracing::info!(
            alarms = restored,
            "alarm states restored from before the restart"
        );
    }
    let journal_watch = supervisor.watch_thread(
        supervise::JOURNAL_TASK,
        journal.health.heartbeat.clone(),
        supervise::JOURNAL_STALL_AFTER,
    );
    let (mut news, driver) = mqtt::spawn_drive(
        events,
        client.clone(),
        config.clone(),
        link.clone(),
        journal.clone(),
        &supervisor,
    );
    let (outbox, outbox_task) = Outbox::spawn(client.clone(), topics, link.clone(), &supervisor);
    let counters = Arc::new(metrics::Counters::default());
    let emit = emit::Emit {
        journal: journal.clone(),
        influx: influx.clone(),
        outbox,
        counters: counters.clone(),
    };
    let metrics_task = match &config.metrics {
        Some(m) => {
            // Checked by the config: it parses.
            let listen = m.listen.parse().context("metrics.listen")?;
            let (_, task) = metrics::serve(
                listen,
                counters.clone(),
                link.clone(),
                journal.health.clone(),
                influx.clone(),
                tasks.clone(),
                &supervisor,
            )
            .await
            .with_context(|| format!("serving metrics on {listen}"))?;
            Some(task)
        }
        None => None,
    };

    let (poll_tx, mut poll_rx) = mpsc::channel(POLL_QUEUE);
    let mut pollers = Vec::new();
    // Devices that publish by themselves: one task for all of them (sources/mqtt_sensors.rs).
    pollers.extend(sources::mqtt_sensors::spawn(
        &config,
        clock,
        &poll_tx,
        &counters,
        &supervisor,
    ));
    // Contacts on the gateway's own GPIO inputs, one task per device (sources/gpio.rs).
    #[cfg(feature = "rpi")]
    pollers.extend(sources::gpio::spawn(&config, clock, &poll_tx, &supervisor));
    // Modbus devices: one task per link (a serial port or a TCP endpoint), which serves
    // every device behind it one request at a time, and every write to them
    // (sources/modbus/link.rs).
    let links = modbus::links(&config);
    let (writers, write_queues) = modbus::Writers::for_links(&links, &config.devices);
    for (spec, writes) in links.into_iter().zip(write_queues) {
        let (tx, config) = (poll_tx.clone(), config.clone());
        let stall_after = modbus::link::stall_after(&spec, &config);
        pollers.push(supervisor.spawn(
            format!("modbus/{}", spec.id),
            stall_after,
            supervise::OnStall::Restart,
            move |heartbeat| {
                modbus::run_link(
                    spec.clone(),
                    config.clone(),
                    writes.clone(),
                    clock,
                    tx.clone(),
                    heartbeat,
                )
            },
        ));
    }
    drop(poll_tx);
    tracing::info!(
        gateway = %config.gateway.id,
        community = %config.gateway.community,
        boot = boot.boot,
        devices = config.devices.len(),
        "gateway running"
    );

    // The snapshot is owed after the first full poll cycle (so it states what the field
    // says now, not only what was restored) and after every resync the console asks for;
    // at the latest once the slowest device's silence would have raised its comm loss.
    let mut snapshot_owed = true;
    let mut snapshots = 0u64;
    let snapshot_by_ms = config
        .devices
        .iter()
        .map(|d| d.comm_loss_after_s.saturating_mul(1000))
        .max()
        .map_or(0, |ms| i64::try_from(ms).unwrap_or(i64::MAX));
    let undelivered_limit_ms = config
        .gateway
        .undelivered_fault_after_s
        .saturating_mul(1000);
    let mut local_warning = local_output::LocalWarning::new(
        Duration::from_secs(config.gateway.undelivered_fault_after_s),
        local_output::from_config(&config, &writers)?,
    );
    // The runtime loop cannot be restarted, only watched (supervise.rs): by a task, for
    // /healthz and the fault, and by a thread of its own, for the log when the runtime is
    // wedged. The thread ends with `loop_alive`, dropped when the loop ends.
    let loop_beat = supervise::Heartbeat::default();
    let loop_alive = loop_beat.end_on_drop();
    let loop_watch = supervisor.watch_thread(
        supervise::RUNTIME_TASK,
        loop_beat.clone(),
        supervise::RUNTIME_STALL_AFTER,
    );
    let stall_switch = local_warning.stall_switch();
    if let Err(error) = supervise::watchdog_thread(
        supervise::RUNTIME_TASK,
        loop_beat.clone(),
        supervise::RUNTIME_STALL_AFTER,
        Duration::from_secs(1),
        move || stall_switch.force_on(),
    ) {
        tracing::error!(%error, "cannot start the runtime loop's watchdog thread");
    }
    let mut ticker = tokio::time::interval(TICK);
    tokio::pin!(shutdown);
    loop {
        loop_beat.beat();
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            // Polls and time first: a flood of commands must not starve detection
            // (commands are bounded upstream, and a full queue answers "busy").
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
                emit.alarms(report.events);
                if let Some(batch) = report.readings {
                    emit.readings(batch);
                }
            }
            _ = ticker.tick() => {
                let now = clock.now();
                let mut events = watch.on_tick(now);
                // Devices gone silent: their points as comm-lost, to the readings sinks.
                for batch in watch.take_readings() {
                    emit.readings(batch);
                }
                // The gateway's own faults, from the journal's health and its tasks.
                // A failing transmission path is also the local warning (GB 26875.1,
                // local_output.rs), where someone on site can see it, since the console
                // cannot.
                let health = &journal.health;
                let oldest_pending_ms = health.oldest_pending_ms.load(Ordering::Relaxed);
                let undelivered = oldest_pending_ms >= undelivered_limit_ms;
                let warning = local_warning.update(local_output::PathState {
                    mono_ms: now.mono_ms,
                    broker_connected: link.connected.load(Ordering::Relaxed),
                    oldest_pending_ms,
                    journal_running: tasks.running(supervise::JOURNAL_TASK),
                });
                counters.local_warning.store(warning, Ordering::Relaxed);
                events.extend(watch.set_gateway_fault(config::UNDELIVERED_RULE, undelivered, now));
                events.extend(watch.set_gateway_fault(config::TASK_FAILED_RULE, tasks.fault_active(), now));
                let clock_off = link
                    .clock_offset()
                    .is_some_and(|offset| offset.saturating_abs() > config::CLOCK_OFF_AFTER_MS);
                events.extend(watch.set_gateway_fault(config::CLOCK_OFF_RULE, clock_off, now));
                let disk = health.disk_failing.load(Ordering::Relaxed)
                    || health.state_failing.load(Ordering::Relaxed);
                events.extend(watch.set_gateway_fault(config::QUEUE_DISK_RULE, disk, now));
                let shed = influx.as_ref().is_some_and(influx::InfluxSink::shed_recently);
                events.extend(watch.set_gateway_fault(config::READINGS_SHED_RULE, shed, now));
                emit.alarms(events);
                // An answer the outbox gave up on may have been a snapshot (mqtt/mod.rs).
                if emit.outbox.take_answer_lost() {
                    snapshot_owed = true;
                }
                if snapshot_owed && (watch.first_cycle_done() || now.mono_ms >= snapshot_by_ms) {
                    snapshot_owed = false;
                    snapshots += 1;
                    let id = format!("{boot_id}-s{snapshots}");
                    let parts = watch.snapshot(&id, now.wall_ms, mqtt::PAYLOAD_MAX);
                    tracing::info!(snapshot_id = %id, parts = parts.len(), "alarm snapshot");
                    emit.snapshot(parts).await;
                }
            }
            Some(cmd) = news.commands.recv() => {
                metrics::Counters::inc(&counters.commands);
                let (events, reply) = watch.on_command(&cmd, clock.now());
                if matches!(cmd.action, shouwang_wire::Action::Resync) {
                    snapshot_owed = true;
                }
                tracing::info!(command_id = %cmd.command_id, action = ?cmd.action, ok = reply.ok, error = ?reply.error, "command");
                emit.alarms(events);
                emit.reply(reply).await;
            }
        }
    }
    // The loop's watchers go first, so its end is no stall and no death.
    loop_watch.abort();
    drop(loop_alive);
    for p in pollers {
        p.abort();
    }
    if let Some(task) = metrics_task {
        task.abort();
    }
    // Tasks that end from here on are done, not failed.
    supervisor.stop();
    journal_watch.abort();
    mqtt::announce_offline(&client, &config, &link).await;
    // The writer flushes what it holds once its last handle is gone.
    drop(emit);
    drop(influx);
    if let Some(task) = influx_task {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    // The event loop ends when the broker closes the link after our DISCONNECT.
    let _ = tokio::time::timeout(Duration::from_secs(2), driver).await;
    // The outbox ends with its lanes (emit was its last handle) or with the event loop.
    outbox_task.abort();
    Ok(())
}
