//! Sensors that publish JSON to MQTT (NB-IoT smoke alarms relayed by a platform), with real
//! parts: a real mosquitto, the `shouwang-gateway` and `shouwang-console` binaries, and a
//! test client in the sensor's place.
//!
//! What an operator would see: smoke on the sensor's topic raises the alarm on the board
//! and clears it; garbage on the topic (text, binary, 200 KiB, JSON that is no object,
//! a retained message) is counted and changes nothing, not even the link; a sensor that
//! goes silent, one that never spoke, and one whose platform only repeats its last report
//! (stale readings) lose communication. An elevator terminal whose
//! device has a `+` filter raises its alarm from any topic the filter matches and never
//! from a sibling topic; two devices whose topics can meet are refused by `check`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::Value;
use shouwang_hil_tests::rig::{self, eventually};
use shouwang_hil_tests::servers;

const TOPIC: &str = "nbiot/riverside/smoke/861234567890123";
const SMOKE: &str = "riverside:gw-m:smoke-nb-1:smoke-high";
const SILENT: &str = "riverside:gw-m:smoke-nb-1:comm_lost";
const NEVER: &str = "riverside:gw-m:smoke-nb-2:comm_lost";
const POINT_FAULT: &str = "riverside:gw-m:smoke-nb-1:point_fault";
const NEVER_TOPIC: &str = "nbiot/riverside/smoke/861234567890124";
const NEVER_SMOKE: &str = "riverside:gw-m:smoke-nb-2:smoke-high";

fn config(mqtt_port: u16, metrics_port: u16) -> String {
    format!(
        r#"
[gateway]
id = "gw-m"
community = "riverside"
data_dir = "data"

[mqtt]
port = {mqtt_port}
keep_alive_s = 2

[metrics]
listen = "127.0.0.1:{metrics_port}"

[[devices]]
id = "smoke-nb-1"
kind = "smoke"
building = "B2"
floor = "7"
unit = "02"
transport = "mqtt"
topic = "{TOPIC}"
timestamp_field = "ts"
comm_loss_after_s = 3

[[devices.points]]
name = "obscuration"
json = "data.obscuration"
scale = 0.01
engineering_unit = "%/m"

[[devices]]
id = "smoke-nb-2"
kind = "smoke"
building = "B2"
floor = "8"
unit = "02"
transport = "mqtt"
topic = "{NEVER_TOPIC}"
comm_loss_after_s = 3

[[devices.points]]
name = "obscuration"
json = "data.obscuration"
scale = 0.01

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
    )
}

/// The sensor: publishes its current reading every 200 ms while `on`.
struct Sensor {
    client: AsyncClient,
    counts: Arc<AtomicU64>,
    on: Arc<AtomicBool>,
    /// Non-zero: the timestamp every report carries (a platform that resends the sensor's
    /// last report instead of new ones).
    frozen_ts: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Sensor {
    async fn start(port: u16) -> Sensor {
        let mut options = MqttOptions::new("nbiot-platform", "127.0.0.1", port);
        options.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut events) = AsyncClient::new(options, 64);
        let driver = tokio::spawn(async move {
            loop {
                if events.poll().await.is_err() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
        let counts = Arc::new(AtomicU64::new(20)); // 0.20 %/m: clean air
        let on = Arc::new(AtomicBool::new(true));
        let frozen_ts = Arc::new(AtomicU64::new(0));
        let publisher = {
            let (client, counts, on) = (client.clone(), counts.clone(), on.clone());
            let frozen = frozen_ts.clone();
            tokio::spawn(async move {
                loop {
                    if on.load(Ordering::Relaxed) {
                        let ts = match frozen.load(Ordering::Relaxed) {
                            0 => rig::wall_ms(),
                            ts => ts as i64,
                        };
                        let payload = serde_json::json!({
                            "imei": "861234567890123",
                            "ts": ts,
                            "data": {"obscuration": counts.load(Ordering::Relaxed)},
                        });
                        let _ = client
                            .publish(TOPIC, QoS::AtLeastOnce, false, payload.to_string())
                            .await;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
        };
        Sensor {
            client,
            counts,
            on,
            frozen_ts,
            tasks: vec![driver, publisher],
        }
    }
}

impl Drop for Sensor {
    fn drop(&mut self) {
        self.tasks.iter().for_each(|t| t.abort());
    }
}

async fn get(http: &reqwest::Client, url: &str) -> Option<Value> {
    http.get(url).send().await.ok()?.json().await.ok()
}

/// An alarm's state at the console, `None` while it has none.
async fn state(http: &reqwest::Client, console: &str, alarm: &str) -> Option<String> {
    let detail = get(http, &format!("{console}/api/alarms/{alarm}")).await?;
    let history = detail["history"].as_array()?;
    Some(history.last()?["state"].as_str()?.to_string())
}

async fn history_len(http: &reqwest::Client, console: &str, alarm: &str) -> usize {
    get(http, &format!("{console}/api/alarms/{alarm}"))
        .await
        .and_then(|d| d["history"].as_array().map(Vec::len))
        .unwrap_or(0)
}

/// One counter of the gateway's `/metrics`.
async fn metric(http: &reqwest::Client, url: &str, name: &str) -> Option<u64> {
    let text = http.get(url).send().await.ok()?.text().await.ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_on_a_sensors_topic_raises_the_alarm_garbage_changes_nothing_and_silence_is_comm_lost()
 {
    let broker = servers::mosquitto().unwrap();
    let port = broker.port();
    let console = rig::start_console(port).unwrap();
    let sensor = Sensor::start(port).await;
    // A stored smoke reading of unknown age waits on the other sensor's topic: handed to
    // the gateway's new subscription as retained, it must not count as a report.
    sensor
        .client
        .publish(
            NEVER_TOPIC,
            QoS::AtLeastOnce,
            true,
            r#"{"data":{"obscuration":999}}"#,
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let metrics_port = servers::free_port();
    let metrics = format!("http://127.0.0.1:{metrics_port}/metrics");
    let gateway = rig::start_gateway(&config(port, metrics_port)).unwrap();
    let started = Instant::now();
    let http = servers::http_client();
    let fail = |e: anyhow::Error, gateway: &rig::Proc| -> ! {
        panic!(
            "{e}\n--- gateway\n{}\n--- console\n{}",
            gateway.log(),
            console.proc.log()
        )
    };
    let wait_state = |alarm: &'static str, want: &'static str, limit: Duration| {
        let (http, url) = (http.clone(), console.url.clone());
        async move {
            eventually(&format!("{alarm} {want}"), limit, || async {
                (state(&http, &url, alarm).await.as_deref() == Some(want)).then_some(())
            })
            .await
        }
    };

    // The sensor is heard.
    eventually("the sensor's readings", Duration::from_secs(20), || async {
        metric(&http, &metrics, "shouwang_gateway_sensor_messages_total")
            .await
            .filter(|n| *n >= 3)
    })
    .await
    .unwrap_or_else(|e| fail(e, &gateway));

    // The device that never reported loses communication too; its retained message was
    // skipped (counted), not taken for smoke.
    wait_state(NEVER, "unacknowledged", Duration::from_secs(15))
        .await
        .unwrap_or_else(|e| fail(e, &gateway));
    assert_eq!(state(&http, &console.url, SILENT).await, None);
    assert_eq!(state(&http, &console.url, NEVER_SMOKE).await, None);
    assert_eq!(
        metric(
            &http,
            &metrics,
            "shouwang_gateway_sensor_messages_rejected_total"
        )
        .await,
        Some(1)
    );

    // Smoke: raised within a second of the reading; clean air: cleared.
    sensor.counts.store(310, Ordering::Relaxed);
    let since = Instant::now();
    wait_state(SMOKE, "unacknowledged", Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| fail(e, &gateway));
    println!(
        "smoke on the board {:?} after the reading changed",
        since.elapsed()
    );
    sensor.counts.store(20, Ordering::Relaxed);
    wait_state(SMOKE, "returned_unacknowledged", Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| fail(e, &gateway));

    // Garbage on the sensor's topic: counted, and nothing changes.
    let rejected_before = metric(
        &http,
        &metrics,
        "shouwang_gateway_sensor_messages_rejected_total",
    )
    .await
    .unwrap();
    let history_before = history_len(&http, &console.url, SMOKE).await;
    // Smoke-sized numbers inside every one: none of them may raise the alarm.
    let garbage: Vec<Vec<u8>> = vec![
        b"smoke 310!!".to_vec(),
        vec![0xff, 0xfe, 0x00, 0x81, 0x13],
        format!(
            "{{\"data\":{{\"obscuration\":310}},\"pad\":\"{}\"}}",
            "9".repeat(200 * 1024)
        )
        .into_bytes(),
        b"[310, 310]".to_vec(),
        b"310".to_vec(),
        b"\"310\"".to_vec(),
        br#"{"data":{"obscuration":310"#.to_vec(),
    ];
    let sent = garbage.len() as u64;
    for payload in garbage {
        sensor
            .client
            .publish(TOPIC, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }
    eventually("the garbage counted", Duration::from_secs(10), || async {
        metric(
            &http,
            &metrics,
            "shouwang_gateway_sensor_messages_rejected_total",
        )
        .await
        .filter(|n| *n == rejected_before + sent)
    })
    .await
    .unwrap_or_else(|e| fail(e, &gateway));
    let accepted = metric(&http, &metrics, "shouwang_gateway_sensor_messages_total")
        .await
        .unwrap();
    eventually(
        "readings still accepted",
        Duration::from_secs(5),
        || async {
            metric(&http, &metrics, "shouwang_gateway_sensor_messages_total")
                .await
                .filter(|n| *n > accepted + 3)
        },
    )
    .await
    .unwrap_or_else(|e| fail(e, &gateway));
    // Logged with topic and reason, at most once per 10 s: the retained message's line,
    // and the garbage only once 10 s have passed since.
    let log = gateway.log();
    let lines = log.matches("sensor message ignored").count();
    let allowed = 1 + started.elapsed().as_secs() / 10;
    assert!(
        (1..=allowed as usize).contains(&lines),
        "{lines} lines in {:?}: {log}",
        started.elapsed()
    );
    assert!(
        log.contains(&format!(
            "sensor message ignored topic={NEVER_TOPIC} reason=retained"
        )),
        "the log names the topic and reason: {log}"
    );
    assert!(!log.contains("sensor link down"), "the link dropped: {log}");
    assert!(!log.contains("panicked"), "{log}");
    assert_eq!(state(&http, &console.url, SILENT).await, None);
    assert_eq!(state(&http, &console.url, POINT_FAULT).await, None);
    assert_eq!(
        history_len(&http, &console.url, SMOKE).await,
        history_before
    );
    assert_eq!(
        state(&http, &console.url, SMOKE).await.as_deref(),
        Some("returned_unacknowledged")
    );

    // The sensor goes silent: communication lost after comm_loss_after_s (3 s).
    sensor.on.store(false, Ordering::Relaxed);
    let since = Instant::now();
    wait_state(SILENT, "unacknowledged", Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| fail(e, &gateway));
    let silent_for = since.elapsed();
    println!("comm_lost on the board {silent_for:?} after the sensor went silent");
    assert!(silent_for >= Duration::from_millis(2500), "{silent_for:?}");
    // It speaks again: communication back.
    sensor.on.store(true, Ordering::Relaxed);
    wait_state(SILENT, "returned_unacknowledged", Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| fail(e, &gateway));

    // The platform only resends the sensor's last report (same timestamp, same values),
    // now smoky: the repeats are stale, raise nothing, and the sensor loses communication
    // as if silent; the board's readings say stale.
    sensor
        .frozen_ts
        .store(rig::wall_ms() as u64, Ordering::Relaxed);
    sensor.counts.store(310, Ordering::Relaxed);
    let smoke_history = history_len(&http, &console.url, SMOKE).await;
    eventually("a stale reading", Duration::from_secs(10), || async {
        let all = get(&http, &format!("{}/api/readings", console.url)).await?;
        let point = all
            .as_array()?
            .iter()
            .find(|b| b["device"] == "smoke-nb-1")?["points"]
            .as_array()?
            .iter()
            .find(|p| p["point"] == "obscuration")?
            .clone();
        (point["quality"] == "stale" && point["value"].is_null()).then_some(())
    })
    .await
    .unwrap_or_else(|e| fail(e, &gateway));
    let since = Instant::now();
    wait_state(SILENT, "unacknowledged", Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| fail(e, &gateway));
    println!(
        "comm_lost on the board {:?} after the platform began to repeat",
        since.elapsed()
    );
    // The first repeated report (the first with the frozen time) was new and smoky: the
    // smoke alarm may have been raised by it, once; the repeats raised nothing more.
    let after = history_len(&http, &console.url, SMOKE).await;
    assert!(after <= smoke_history + 1, "{smoke_history} -> {after}");
    // Fresh reports again: back.
    sensor.frozen_ts.store(0, Ordering::Relaxed);
    sensor.counts.store(20, Ordering::Relaxed);
    wait_state(SILENT, "returned_unacknowledged", Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| fail(e, &gateway));
}

const TRAPPED: &str = "riverside:gw-m:lift-E12:lift-trapped";

fn lift_config(mqtt_port: u16, metrics_port: u16, extra_device: &str) -> String {
    format!(
        r#"
[gateway]
id = "gw-m"
community = "riverside"
data_dir = "data"

[mqtt]
port = {mqtt_port}

[metrics]
listen = "127.0.0.1:{metrics_port}"

[[devices]]
id = "lift-E12"
kind = "elevator"
building = "B3"
floor = "0"
unit = "E12"
transport = "mqtt"
topic = "lift/E12/+/status"
comm_loss_after_s = 100

[[devices.points]]
name = "trapped"
json = "trapped"
{extra_device}
[[rules]]
id = "lift-trapped"
device_kind = "elevator"
point = "trapped"
class = "alarm"
priority = "high"
above = 0.5
deadband = 0.1
message = "Passenger trapped"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lift_with_a_plus_filter_raises_its_alarm_from_a_matching_topic_and_never_from_a_sibling()
{
    let broker = servers::mosquitto().unwrap();
    let port = broker.port();
    let console = rig::start_console(port).unwrap();
    let metrics_port = servers::free_port();
    let metrics = format!("http://127.0.0.1:{metrics_port}/metrics");
    let gateway = rig::start_gateway(&lift_config(port, metrics_port, "")).unwrap();
    let http = servers::http_client();
    let fail = |e: anyhow::Error| -> ! {
        panic!(
            "{e}\n--- gateway\n{}\n--- console\n{}",
            gateway.log(),
            console.proc.log()
        )
    };
    let mut options = MqttOptions::new("lift-platform", "127.0.0.1", port);
    options.set_max_packet_size(1 << 20, 1 << 20);
    let (terminal, mut events) = AsyncClient::new(options, 64);
    let _driver = tokio::spawn(async move {
        loop {
            if events.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    let publish = |topic: &'static str, trapped: u8| {
        let terminal = terminal.clone();
        async move {
            terminal
                .publish(
                    topic,
                    QoS::AtLeastOnce,
                    false,
                    format!(r#"{{"trapped":{trapped}}}"#),
                )
                .await
                .unwrap();
        }
    };
    let read = || {
        let (http, metrics) = (http.clone(), metrics.clone());
        async move {
            metric(&http, &metrics, "shouwang_gateway_sensor_messages_total")
                .await
                .unwrap_or(0)
        }
    };

    // The gateway hears the car's status once it has subscribed.
    eventually(
        "the lift's first status",
        Duration::from_secs(20),
        || async {
            publish("lift/E12/car/status", 0).await;
            (read().await > 0).then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| fail(e));

    // "Trapped" on topics the filter does not match: a sibling of the status topic, one
    // level deeper, another lift. Then a quiet status on the door's topic, which the filter
    // matches: once it is read, everything published before it has been through the broker.
    let before = read().await;
    for sibling in [
        "lift/E12/car/alarm",
        "lift/E12/car/status/extra",
        "lift/E13/car/status",
    ] {
        publish(sibling, 1).await;
    }
    publish("lift/E12/door/status", 0).await;
    eventually(
        "the door's status read",
        Duration::from_secs(10),
        || async { (read().await > before).then_some(()) },
    )
    .await
    .unwrap_or_else(|e| fail(e));
    assert_eq!(read().await, before + 1, "only the matching topic was read");
    assert_eq!(state(&http, &console.url, TRAPPED).await, None);

    // "Trapped" on a matching topic: the alarm is on the board.
    publish("lift/E12/door/status", 1).await;
    eventually(
        "lift-trapped on the board",
        Duration::from_secs(10),
        || async {
            (state(&http, &console.url, TRAPPED).await.as_deref() == Some("unacknowledged"))
                .then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| fail(e));
    assert_eq!(
        metric(
            &http,
            &metrics,
            "shouwang_gateway_sensor_messages_rejected_total"
        )
        .await,
        Some(0)
    );
    let log = gateway.log();
    assert!(!log.contains("panicked"), "{log}");

    // A second device whose filter meets the first's: `check` refuses the config, naming
    // both devices and a topic they share.
    let clash = r#"
[[devices]]
id = "lift-E12-car"
kind = "elevator"
building = "B3"
floor = "0"
unit = "E12c"
transport = "mqtt"
topic = "lift/+/car/#"

[[devices.points]]
name = "trapped"
json = "trapped"
"#;
    let (code, out, err) = rig::check_config(&lift_config(port, metrics_port, clash)).unwrap();
    assert_ne!(code, 0, "{out}{err}");
    let said = format!("{out}{err}");
    assert!(
        said.contains("devices[1] (lift-E12-car).topic")
            && said.contains("devices[0] (lift-E12)'s \"lift/E12/+/status\"")
            && said.contains("both match \"lift/E12/car/status\""),
        "{said}"
    );
}
