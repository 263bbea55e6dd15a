//! Load harness: MQTT sensor ingest through the gateway. Prints its figures; asserts
//! nothing about them (a measurement, not a test).
//!
//! ```sh
//! cargo build --release -p shouwang-hil-tests -p shouwang-gateway -p shouwang-console --bins
//! target/release/sensor-load [--rates 1000,20000] [--seconds 10] [--devices 200] [--triggers-per-s 20] [--report-every-s S]
//! ```
//!
//! The gateway and console binaries are taken from the harness's own directory (so with
//! `CARGO_TARGET_DIR` set, run `$CARGO_TARGET_DIR/release/sensor-load`), or from
//! `SHOUWANG_BIN_DIR`. mosquitto comes from `PATH`. Everything shares the machine: on two
//! cores the harness's publisher and subscribers, mosquitto and the gateway compete, and the
//! floor shows how much of the latency that costs.
//!
//! It starts a real mosquitto, the `shouwang-console` (so the gateway's journal gets its
//! receipts) and the `shouwang-gateway` binary with `--devices` MQTT smoke sensors
//! (`load/<i>`, rule `smoke-high` above 2.5 %/m). For each rate it publishes JSON readings
//! (`{"o":20,"n":...}`, QoS 0, round robin over the devices) for `--seconds`; about
//! `--triggers-per-s` of them a second are smoke (310) on an idle device, which stays smoky
//! until its `raised` event is heard on the gateway's events topic, then clears. It prints:
//! - the share of published messages the gateway read (`sensor_messages_total`);
//! - p50/p99 latency from publishing a smoke message to hearing its `raised` event, and the
//!   floor: the same message heard by an echo subscriber on the same broker in the same run;
//! - `Δp99`: the alarm's p99 less the floor's, what the gateway adds at the tail;
//! - the gateway's CPU time per message read (utime + stime from `/proc/<pid>/stat`, from
//!   the start of the rate to the end of its drain, so idle work and `/metrics` scrapes
//!   count too);
//! - the gateway's VmRSS and VmHWM at the end of each rate.
//!
//! By default the devices have no `report_every_s`, so the gateway's default applies: report
//! by exception with a 60 s heartbeat and deadband 0 (the load's idle messages repeat one
//! value, so only the smoke messages, their clearing and the heartbeats are published).
//! `--report-every-s S` gives every device `report_every_s = S` and its point
//! `report_deadband = 0.5`; `--report-every-s 0` makes every message a published reading,
//! the cost of one outgoing publish per message.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use shouwang_hil_tests::measure::{clock_ticks_per_s, cpu_ticks, metric, rss_kib};
use shouwang_hil_tests::{rig, servers};
use shouwang_wire::{AlarmEvent, Message, TransitionKind};

struct Args {
    rates: Vec<u64>,
    seconds: u64,
    devices: usize,
    triggers_per_s: u64,
    report_every_s: Option<u64>,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        rates: vec![1_000, 20_000],
        seconds: 10,
        devices: 200,
        triggers_per_s: 20,
        report_every_s: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--rates" => {
                a.rates = value()?
                    .split(',')
                    .map(|r| r.trim().parse())
                    .collect::<Result<_, _>>()?
            }
            "--seconds" => a.seconds = value()?.parse()?,
            "--devices" => a.devices = value()?.parse()?,
            "--triggers-per-s" => a.triggers_per_s = value()?.parse()?,
            "--report-every-s" => a.report_every_s = Some(value()?.parse()?),
            other => bail!(
                "unknown flag {other}; flags: --rates R1,R2 --seconds S --devices N --triggers-per-s T --report-every-s S"
            ),
        }
    }
    if a.devices == 0 || a.rates.is_empty() || a.triggers_per_s == 0 {
        bail!("--devices, --rates and --triggers-per-s must be positive");
    }
    Ok(a)
}

fn config(
    mqtt_port: u16,
    metrics_port: u16,
    devices: usize,
    report_every_s: Option<u64>,
) -> String {
    let (every, deadband) = match report_every_s {
        Some(0) => ("report_every_s = 0\n".to_string(), ""),
        Some(s) => (format!("report_every_s = {s}\n"), "report_deadband = 0.5\n"),
        None => (String::new(), ""),
    };
    let mut text = format!(
        r#"
[gateway]
id = "gw-load"
community = "riverside"
data_dir = "data"

[mqtt]
port = {mqtt_port}

[metrics]
listen = "127.0.0.1:{metrics_port}"

[[rules]]
id = "smoke-high"
device_kind = "smoke"
point = "obscuration"
class = "alarm"
priority = "high"
above = 2.5
deadband = 0.5
message = "Smoke detected"
"#
    );
    for i in 0..devices {
        text.push_str(&format!(
            r#"
[[devices]]
id = "load-{i}"
kind = "smoke"
building = "L"
floor = "{floor}"
unit = "{unit}"
transport = "mqtt"
topic = "load/{i}"
comm_loss_after_s = 100
{every}
[[devices.points]]
name = "obscuration"
json = "o"
scale = 0.01
{deadband}"#,
            floor = i / 10,
            unit = i % 10
        ));
    }
    text
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// One smoke message and when it was heard.
#[derive(Debug, Clone)]
struct Trigger {
    sent: Instant,
    echo: Option<Duration>,
    alarm: Option<Duration>,
}

#[derive(Default)]
struct Book {
    /// The open trigger of each device.
    open: HashMap<usize, Trigger>,
    done: Vec<Trigger>,
}

/// A client of the harness, with Nagle's algorithm off like the gateway's and the console's
/// broker links: the publisher's messages and the subscribers' PUBACKs are not held back
/// behind an unacknowledged one, so the floor and the alarm are both measured without it.
fn client(options: MqttOptions, capacity: usize) -> (AsyncClient, rumqttc::EventLoop) {
    let (client, mut events) = AsyncClient::new(options, capacity);
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    events.set_network_options(network);
    (client, events)
}

/// A subscriber that runs `on` for every message on `filter`.
async fn subscriber(
    port: u16,
    id: &str,
    filter: &str,
    on: impl Fn(&str, &[u8]) + Send + 'static,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut options = MqttOptions::new(id, "127.0.0.1", port);
    options.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = client(options, 64);
    client.subscribe(filter, QoS::AtLeastOnce).await?;
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let _client = client;
        let mut ready = Some(ready_tx);
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => on(&p.topic, &p.payload),
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), ready_rx)
        .await
        .context("no SUBACK")??;
    Ok(task)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 3)]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    let broker = servers::mosquitto()?;
    let port = broker.port();
    let console = rig::start_console(port)?;
    let metrics_port = servers::free_port();
    let metrics = format!("http://127.0.0.1:{metrics_port}/metrics");
    let mut gateway = rig::start_gateway(&config(
        port,
        metrics_port,
        args.devices,
        args.report_every_s,
    ))?;
    let pid = gateway.id();
    let http = servers::http_client();
    let tck = clock_ticks_per_s();
    let devices = args.devices;

    let book = Arc::new(Mutex::new(Book::default()));
    let smoky: Arc<Vec<AtomicBool>> =
        Arc::new((0..devices).map(|_| AtomicBool::new(false)).collect());
    let device_of = |topic: &str| topic.strip_prefix("load/")?.parse::<usize>().ok();
    // The floor: the smoke message itself, heard back from the broker.
    let echo_book = book.clone();
    let _echo = subscriber(port, "load-echo", "load/+", move |topic, payload| {
        let Some(d) = device_of(topic) else { return };
        if !payload.starts_with(br#"{"o":310"#) {
            return;
        }
        if let Ok(mut b) = echo_book.lock()
            && let Some(t) = b.open.get_mut(&d)
            && t.echo.is_none()
        {
            t.echo = Some(t.sent.elapsed());
        }
    })
    .await?;
    let (alarm_book, alarm_smoky) = (book.clone(), smoky.clone());
    let _alarms = subscriber(
        port,
        "load-alarms",
        "shouwang/v1/riverside/gw-load/events",
        move |_, payload| {
            let Ok(event) = AlarmEvent::decode(payload) else {
                return;
            };
            if event.transition != TransitionKind::Raised || event.rule != "smoke-high" {
                return;
            }
            let Some(d) = event
                .device
                .strip_prefix("load-")
                .and_then(|d| d.parse::<usize>().ok())
            else {
                return;
            };
            if let Ok(mut b) = alarm_book.lock()
                && let Some(mut t) = b.open.remove(&d)
            {
                t.alarm = Some(t.sent.elapsed());
                b.done.push(t);
                alarm_smoky[d].store(false, Ordering::Relaxed);
            }
        },
    )
    .await?;

    let mut options = MqttOptions::new("load-platform", "127.0.0.1", port);
    options.set_max_packet_size(1 << 20, 1 << 20);
    let (publisher, mut publisher_events) = client(options, 10_000);
    let _driver = tokio::spawn(async move {
        loop {
            if publisher_events.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });

    // Wait until the gateway reads its sensors.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        publisher
            .publish("load/0", QoS::AtMostOnce, false, r#"{"o":20,"n":0}"#)
            .await?;
        if metric(&http, &metrics, "shouwang_gateway_sensor_messages_total")
            .await
            .is_some_and(|n| n > 0)
        {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the gateway never read a sensor message:\n{}",
                gateway.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let reporting = match args.report_every_s {
        Some(0) => "every message a published reading".to_string(),
        Some(s) => format!("readings by exception (every {s} s, deadband 0.5)"),
        None => "readings by exception, the default (every 60 s, deadband 0)".to_string(),
    };
    println!(
        "sensor-load: {devices} MQTT sensors, {} s per rate, ~{} smoke triggers/s, QoS 0 publishes, {reporting}; gateway pid {pid}",
        args.seconds, args.triggers_per_s
    );
    println!(
        "{:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>9} {:>9}",
        "rate/s",
        "sent/s",
        "read",
        "triggers",
        "floor p50",
        "floor p99",
        "alarm p50",
        "alarm p99",
        "Δp99",
        "cpu µs/msg",
        "RSS KiB",
        "HWM KiB"
    );
    for &rate in &args.rates {
        let read_before = metric(&http, &metrics, "shouwang_gateway_sensor_messages_total")
            .await
            .unwrap_or(0);
        let cpu_before = cpu_ticks(pid).unwrap_or(0);
        if let Ok(mut b) = book.lock() {
            b.done.clear();
            b.open.clear();
        }
        smoky.iter().for_each(|s| s.store(false, Ordering::Relaxed));
        let every = (rate / args.triggers_per_s).max(1);
        let start = Instant::now();
        let mut sent = 0u64;
        let mut triggers = 0u64;
        let run_for = Duration::from_secs(args.seconds);
        while start.elapsed() < run_for {
            let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
            while sent < due {
                // Every `every` messages, one of them is smoke on the next device in turn
                // (each device is triggered every `devices / triggers_per_s` seconds, long
                // after its last alarm cleared).
                let trigger = sent.is_multiple_of(every).then(|| {
                    triggers += 1;
                    (triggers % devices as u64) as usize
                });
                let d = trigger.unwrap_or((sent % devices as u64) as usize);
                let mut value = if smoky[d].load(Ordering::Relaxed) {
                    310
                } else {
                    20
                };
                if trigger.is_some()
                    && value == 20
                    && let Ok(mut b) = book.lock()
                    && !b.open.contains_key(&d)
                {
                    b.open.insert(
                        d,
                        Trigger {
                            sent: Instant::now(),
                            echo: None,
                            alarm: None,
                        },
                    );
                    smoky[d].store(true, Ordering::Relaxed);
                    value = 310;
                }
                publisher
                    .publish(
                        format!("load/{d}"),
                        QoS::AtMostOnce,
                        false,
                        format!(r#"{{"o":{value},"n":{sent}}}"#),
                    )
                    .await?;
                sent += 1;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let sent_secs = start.elapsed().as_secs_f64();
        // Drain: until the count stops moving (at most 10 s).
        let mut read = 0;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = metric(&http, &metrics, "shouwang_gateway_sensor_messages_total")
                .await
                .unwrap_or(0)
                .saturating_sub(read_before);
            if now == read && now > 0 {
                break;
            }
            read = now;
        }
        let cpu = cpu_ticks(pid).unwrap_or(0).saturating_sub(cpu_before);
        let (rss, hwm) = rss_kib(pid).unwrap_or((0, 0));
        let (mut echo, mut alarm, triggers, open) = match book.lock() {
            Ok(b) => (
                b.done.iter().filter_map(|t| t.echo).collect::<Vec<_>>(),
                b.done.iter().filter_map(|t| t.alarm).collect::<Vec<_>>(),
                b.done.len() + b.open.len(),
                b.open.len(),
            ),
            Err(_) => bail!("book poisoned"),
        };
        echo.sort();
        alarm.sort();
        let cpu_us = cpu as f64 * 1e6 / tck as f64 / read.max(1) as f64;
        let (floor99, alarm99) = (percentile(&echo, 0.99), percentile(&alarm, 0.99));
        let tail_ms = (alarm99.as_secs_f64() - floor99.as_secs_f64()) * 1e3;
        println!(
            "{rate:>8} {:>9.0} {:>8.1}% {:>9} {:>9.2?} {:>9.2?} {:>9.2?} {:>9.2?} {:>7.2}ms {:>10.1} {rss:>9} {hwm:>9}",
            sent as f64 / sent_secs,
            100.0 * read as f64 / sent.max(1) as f64,
            format!("{}/{triggers}", alarm.len()),
            percentile(&echo, 0.5),
            floor99,
            percentile(&alarm, 0.5),
            alarm99,
            tail_ms,
            cpu_us,
        );
        if open > 0 {
            println!("         {open} smoke triggers got no raised event");
        }
    }
    let rejected = metric(
        &http,
        &metrics,
        "shouwang_gateway_sensor_messages_rejected_total",
    )
    .await;
    println!("rejected by the gateway: {rejected:?}");
    let _ = gateway.terminate(Duration::from_secs(5));
    drop(console);
    Ok(())
}
