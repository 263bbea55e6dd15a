//! End to end, with real parts: simulated Modbus TCP devices -> the `shouwang-gateway`
//! binary -> a real mosquitto -> a test subscriber and the `shouwang-console` binary; and
//! readings into a real VictoriaMetrics and a real InfluxDB 1.x.
//!
//! The simulated devices are our own Modbus TCP servers (`shouwang_hil_tests::sim`); they are
//! checked against the third-party mbpoll in the `sim` tests.

use std::time::{Duration, Instant};

use serde_json::Value;
use shouwang_hil_tests::rig::{self, ChaosProxy, Listener, eventually};
use shouwang_hil_tests::servers;
use shouwang_hil_tests::sim::SimDevice;
use shouwang_wire::{
    AlarmEvent, AlarmState, GatewayState, GatewayStatus, Message, ReadingBatch, SignalClass,
    TransitionKind,
};

/// The shared two-device config: the smoke detector and the leak probe.
fn config(
    gateway: &str,
    mqtt_port: u16,
    smoke: &SimDevice,
    leak: &SimDevice,
    extra: &str,
) -> String {
    rig::gateway_config(
        gateway,
        mqtt_port,
        smoke.local_addr(),
        Some(leak.local_addr()),
        extra,
    )
}

async fn sims() -> (SimDevice, SimDevice) {
    let smoke = SimDevice::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let leak = SimDevice::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    smoke.set_u16(0, 20); // 0.20 %/m: clean air
    leak.set_u16(0, 0);
    (smoke, leak)
}

fn event_on(h: &rig::Heard, alarm_id: &str, transition: TransitionKind) -> Option<AlarmEvent> {
    if !h.topic.ends_with("/events") {
        return None;
    }
    let e = AlarmEvent::decode(&h.payload).ok()?;
    (e.alarm_id == alarm_id && e.transition == transition).then_some(e)
}

/// Wait for a gateway status in `state` on the broker; fail with the gateway's log. Returns
/// the status and when the listener heard it.
async fn expect_status(
    listener: &Listener,
    gateway: &rig::Proc,
    state: GatewayState,
    limit: Duration,
) -> (GatewayStatus, Instant) {
    listener
        .wait_for(&format!("gateway {state:?}"), limit, |h| {
            GatewayStatus::decode(&h.payload)
                .ok()
                .filter(|s| s.state == state)
                .map(|s| (s, h.at))
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", gateway.log()))
}

/// GET a JSON document; `None` on any failure (for polling with [`eventually`]).
async fn get_json(http: &reqwest::Client, url: &str) -> Option<Value> {
    http.get(url).send().await.ok()?.json().await.ok()
}

/// Wait for an alarm's transition on the broker; fail with the gateway's log. Returns the
/// event and when the listener heard it.
async fn expect_event(
    listener: &Listener,
    gateway: &rig::Proc,
    alarm_id: &str,
    transition: TransitionKind,
    limit: Duration,
) -> (AlarmEvent, Instant) {
    listener
        .wait_for(&format!("{alarm_id} {transition:?}"), limit, |h| {
            event_on(h, alarm_id, transition).map(|e| (e, h.at))
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", gateway.log()))
}

fn reading_from(h: &rig::Heard, device: &str) -> Option<ReadingBatch> {
    if !h.topic.ends_with("/readings") {
        return None;
    }
    ReadingBatch::decode(&h.payload)
        .ok()
        .filter(|r| r.device == device)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_smoke_alarm_reaches_the_broker_within_2_s_and_an_acknowledgement_through_the_console_comes_back_from_the_gateway()
 {
    let broker = servers::mosquitto().unwrap();
    let listener = Listener::start(broker.port(), "shouwang/v1/#")
        .await
        .unwrap();
    let (smoke, leak) = sims().await;
    let console = rig::start_console(broker.port()).unwrap();
    let gateway = rig::start_gateway(&config("gw-b1", broker.port(), &smoke, &leak, "")).unwrap();

    // The gateway says it is online (retained) and polls.
    let status = expect_status(
        &listener,
        &gateway,
        GatewayState::Online,
        Duration::from_secs(20),
    )
    .await
    .0;
    assert_eq!(status.gateway, "gw-b1");
    listener
        .wait_for("a smoke reading", Duration::from_secs(10), |h| {
            reading_from(h, "smoke-B1-12-03")
        })
        .await
        .unwrap();
    // `run` executed itself again with one malloc arena, in the same process (main.rs).
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        let environ = std::fs::read(format!("/proc/{}/environ", gateway.id())).unwrap();
        assert!(
            environ
                .split(|b| *b == 0)
                .any(|v| v == b"MALLOC_ARENA_MAX=1"),
            "the running gateway has no MALLOC_ARENA_MAX=1"
        );
    }

    // Smoke: the register goes over the limit.
    let changed = Instant::now();
    smoke.set_u16(0, 310);
    let alarm_id = "riverside:gw-b1:smoke-B1-12-03:smoke-high";
    let (event, at) = expect_event(
        &listener,
        &gateway,
        alarm_id,
        TransitionKind::Raised,
        Duration::from_secs(5),
    )
    .await;
    let latency = at.duration_since(changed);
    assert!(latency < Duration::from_secs(2), "alarm took {latency:?}");
    assert_eq!(event.state, AlarmState::Unacknowledged);
    assert_eq!(event.class, SignalClass::Alarm);
    assert_eq!(event.place.short(), "B1-12-03");
    assert_eq!(event.place.community, "riverside");
    assert_eq!(event.value, Some(3.1));
    assert_eq!(event.engineering_unit.as_deref(), Some("%/m"));

    // The console lists it.
    let http = servers::http_client();
    let alarms_url = format!("{}/api/alarms", console.url);
    let listed: Value = eventually(
        "the console to list the alarm",
        Duration::from_secs(10),
        || async {
            let list = get_json(&http, &alarms_url).await?;
            list.as_array()?
                .iter()
                .find(|a| a["alarm_id"] == alarm_id)
                .cloned()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", console.proc.log()));
    assert_eq!(listed["state"], "unacknowledged");
    assert_eq!(listed["priority"], "high");
    assert_eq!(listed["class"], "alarm");
    assert_eq!(listed["place"]["building"], "B1");
    assert_eq!(listed["place"]["floor"], "12");
    assert_eq!(listed["place"]["room"], "03");

    // The operator acknowledges through the console; the gateway reports it back.
    let resp = http
        .post(format!("{}/api/alarms/{alarm_id}/ack", console.url))
        .json(&serde_json::json!({"operator": "Wang Li"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status().as_u16(),
        202,
        "{}",
        resp.text().await.unwrap()
    );
    let acked = listener
        .wait_for("the acknowledged event", Duration::from_secs(5), |h| {
            event_on(h, alarm_id, TransitionKind::Acknowledged)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", gateway.log(), console.proc.log()));
    assert_eq!(acked.state, AlarmState::Acknowledged);
    assert_eq!(acked.operator.as_deref(), Some("Wang Li"));
    eventually(
        "the console to show it acknowledged",
        Duration::from_secs(5),
        || async {
            let a = get_json(&http, &format!("{}/api/alarms/{alarm_id}", console.url)).await?;
            (a["state"] == "acknowledged").then_some(())
        },
    )
    .await
    .unwrap();

    // Clean air again: acknowledged + cleared = normal.
    smoke.set_u16(0, 10);
    let (cleared, _) = expect_event(
        &listener,
        &gateway,
        alarm_id,
        TransitionKind::Cleared,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(cleared.state, AlarmState::Normal);
    drop(leak);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_stops_answering_is_a_communication_fault_while_the_others_keep_being_polled()
{
    let broker = servers::mosquitto().unwrap();
    let listener = Listener::start(broker.port(), "shouwang/v1/#")
        .await
        .unwrap();
    let (smoke, leak) = sims().await;
    let gateway = rig::start_gateway(&config("gw-c", broker.port(), &smoke, &leak, "")).unwrap();
    listener
        .wait_for("a leak reading", Duration::from_secs(20), |h| {
            reading_from(h, "leak-B1-01-01")
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", gateway.log()));

    smoke.set_responding(false);
    let (fault, at) = expect_event(
        &listener,
        &gateway,
        "riverside:gw-c:smoke-B1-12-03:comm_lost",
        TransitionKind::Raised,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(fault.class, SignalClass::Fault, "a fault, not an alarm");
    assert_eq!(fault.point, None);
    assert_eq!(fault.place.short(), "B1-12-03");

    // The leak probe is still polled, and a leak still becomes an alarm.
    listener
        .wait_for(
            "leak readings after the fault",
            Duration::from_secs(5),
            |h| reading_from(h, "leak-B1-01-01").filter(|_| h.at > at),
        )
        .await
        .unwrap();
    leak.set_u16(0, 1);
    expect_event(
        &listener,
        &gateway,
        "riverside:gw-c:leak-B1-01-01:leak",
        TransitionKind::Raised,
        Duration::from_secs(5),
    )
    .await;

    // The smoke detector answers again: the fault returns (unacknowledged).
    smoke.set_responding(true);
    let back = expect_event(
        &listener,
        &gateway,
        "riverside:gw-c:smoke-B1-12-03:comm_lost",
        TransitionKind::Cleared,
        Duration::from_secs(10),
    )
    .await
    .0;
    assert_eq!(back.state, AlarmState::ReturnedUnacknowledged);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_dies_shows_offline_through_its_last_will_and_as_a_fault_on_the_board() {
    let broker = servers::mosquitto().unwrap();
    let listener = Listener::start(broker.port(), "shouwang/v1/+/+/status")
        .await
        .unwrap();
    let console = rig::start_console(broker.port()).unwrap();
    let (smoke, leak) = sims().await;
    let mut gateway =
        rig::start_gateway(&config("gw-d", broker.port(), &smoke, &leak, "")).unwrap();
    expect_status(
        &listener,
        &gateway,
        GatewayState::Online,
        Duration::from_secs(20),
    )
    .await;
    let killed = Instant::now();
    gateway.kill();
    let offline_at = expect_status(
        &listener,
        &gateway,
        GatewayState::Offline,
        Duration::from_secs(10),
    )
    .await
    .1;
    // keep_alive_s = 2: the broker gives up after 1.5 x 2 s.
    assert!(offline_at.duration_since(killed) < Duration::from_secs(6));

    // A late subscriber sees the retained offline status.
    let late = Listener::start(broker.port(), "shouwang/v1/+/gw-d/status")
        .await
        .unwrap();
    let retained = late
        .wait_for("retained status", Duration::from_secs(5), |h| {
            GatewayStatus::decode(&h.payload)
                .ok()
                .map(|s| (s.state, h.retain))
        })
        .await
        .unwrap();
    assert_eq!(retained, (GatewayState::Offline, true));

    // The control room sees it as a fault to acknowledge, not only as a grey badge.
    let http = servers::http_client();
    let url = format!("{}/api/alarms/riverside:console:gw-d:offline", console.url);
    let fault: Value = eventually(
        "the offline fault on the board",
        Duration::from_secs(10),
        || async {
            let a = get_json(&http, &url).await?;
            (a["state"] == "unacknowledged").then_some(a)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", console.proc.log()));
    assert_eq!(fault["class"], "fault");
}

#[test]
fn a_config_with_several_mistakes_gets_one_report_naming_each_and_run_refuses_it() {
    let bad = r#"
[gateway]
id = "gw b1"
community = "riverside"
data_dir = "data"

[mqtt]
port = 0

[[devices]]
id = "smoke-1"
kind = "smoke"
building = "B1"
floor = "12"
unit = "03"
transport = "tcp"
address = "127.0.0.1"
poll_interval_ms = 5

[[devices.points]]
name = "obscuration"
register = 0
type = "float"

[[devices]]
id = "leak-1"
kind = "leak"
building = "B1"
floor = "1"
unit = "1"
transport = "tcp"
address = "127.0.0.1:502"

[[devices.points]]
name = "leak"
register = 0
type = "u16"

[[rules]]
id = "leak"
device = "leak-2"
point = "leak"
class = "alarm"
priority = "urgent"
above = 0.5
message = "Leak"
"#;
    let (code, _, stderr) = rig::check_config(bad).unwrap();
    assert_ne!(code, 0);
    for needle in [
        "gateway.id",
        "mqtt.port",
        "devices[0] (smoke-1).points[0] (obscuration)",
        "float",
        "devices[0] (smoke-1).address",
        "devices[0] (smoke-1).poll_interval_ms",
        // Rules are named by file and line: the `[[rules]]` header is line 39.
        "gateway.toml:39 (leak)",
        "no device \"leak-2\"",
        "urgent",
    ] {
        assert!(stderr.contains(needle), "missing {needle:?} in:\n{stderr}");
    }
    let (run_code, _, run_stderr) = rig::gateway_once("run", bad).unwrap();
    assert_ne!(run_code, 0, "run must refuse a bad config");
    // Each run has its own temporary config file, and rules are named by its path.
    let problems = |text: &str| {
        let source = text.split(": ").next().unwrap_or_default().to_string();
        text.lines()
            .skip(1)
            .map(|l| l.replace(&source, "CONFIG"))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        problems(&run_stderr),
        problems(&stderr),
        "run reports the same problems as check"
    );
}

/// Poll VictoriaMetrics' export API until a series with these labels shows up.
async fn vm_export(vm: &servers::Server, selector: &str) -> Vec<Value> {
    eventually(
        "the series in VictoriaMetrics",
        Duration::from_secs(20),
        || async {
            let lines = servers::vm_export(&vm.url(), selector).await.ok()?;
            (!lines.is_empty()).then_some(lines)
        },
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_arrive_in_victoria_metrics_and_influxdb_1_under_the_documented_names() {
    let broker = servers::mosquitto().unwrap();
    let vm = servers::victoria_metrics().unwrap();
    let influx = servers::influxdb1().unwrap();
    servers::influx1_create_database(&influx, "shouwang")
        .await
        .unwrap();
    let (smoke, leak) = sims().await;
    smoke.set_u16(0, 42);

    let metrics_port = servers::free_port();
    let to_vm = format!(
        "[influx]\nurl = \"{}\"\napi = \"v1\"\ndb = \"shouwang\"\nflush_interval_ms = 200\n\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n",
        vm.url()
    );
    let to_influx = format!(
        "[influx]\nurl = \"{}\"\napi = \"v1\"\ndb = \"shouwang\"\nflush_interval_ms = 200\n",
        influx.url()
    );
    let g1 = rig::start_gateway(&config("gw-vm", broker.port(), &smoke, &leak, &to_vm)).unwrap();
    let g2 = rig::start_gateway(&config(
        "gw-influx",
        broker.port(),
        &smoke,
        &leak,
        &to_influx,
    ))
    .unwrap();

    let series = vm_export(
        &vm,
        r#"shouwang_reading_value{gateway="gw-vm",point="obscuration"}"#,
    )
    .await;
    let metric = &series[0]["metric"];
    assert_eq!(metric["__name__"], "shouwang_reading_value", "{}", g1.log());
    for (tag, want) in [
        ("community", "riverside"),
        ("gateway", "gw-vm"),
        ("building", "B1"),
        ("floor", "12"),
        ("room", "03"),
        ("device", "smoke-B1-12-03"),
        ("device_kind", "smoke"),
        ("point", "obscuration"),
    ] {
        assert_eq!(metric[tag], want, "tag {tag} in {metric}");
    }
    let values = series[0]["values"].as_array().unwrap();
    assert!(
        values
            .iter()
            .all(|v| (v.as_f64().unwrap() - 0.42).abs() < 1e-9),
        "{values:?}"
    );

    let http = servers::http_client();
    // The gateway counts what it wrote, on its own metrics endpoint.
    let metrics_url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let metrics = eventually(
        "lines counted in the gateway's metrics",
        Duration::from_secs(10),
        || async {
            let text = http
                .get(&metrics_url)
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            let written = text
                .lines()
                .find_map(|l| l.strip_prefix("shouwang_influx_lines_written_total "))?
                .parse::<u64>()
                .ok()?;
            (written > 0).then_some(text)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", g1.log()));
    assert!(
        metrics.contains("shouwang_gateway_mqtt_connected 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("# TYPE shouwang_gateway_polls_total counter"),
        "{metrics}"
    );
    let rows: Value = eventually(
        "the readings in InfluxDB",
        Duration::from_secs(20),
        || async {
            let v: Value = http
                .get(format!("{}/query", influx.url()))
                .query(&[
                    ("db", "shouwang"),
                    (
                        "q",
                        "SELECT * FROM shouwang_reading WHERE point = 'obscuration'",
                    ),
                ])
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let series = v["results"][0]["series"][0].clone();
            series.is_object().then_some(series)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", g2.log()));
    let columns: Vec<&str> = rows["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    for col in [
        "time",
        "building",
        "community",
        "device",
        "device_kind",
        "floor",
        "gateway",
        "point",
        "room",
        "value",
    ] {
        assert!(
            columns.contains(&col),
            "column {col} missing from {columns:?}"
        );
    }
    let first = rows["values"][0].as_array().unwrap();
    let at = |name: &str| &first[columns.iter().position(|c| *c == name).unwrap()];
    assert_eq!(at("gateway"), "gw-influx");
    assert_eq!(at("device"), "smoke-B1-12-03");
    assert!((at("value").as_f64().unwrap() - 0.42).abs() < 1e-9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_raised_while_the_broker_restarts_arrives_once_it_is_back() {
    let mut broker = servers::mosquitto().unwrap();
    let port = broker.port();
    // A receiver with a persistent session, like the console.
    let listener = Listener::start_persistent(port, "shouwang/v1/+/+/events", "restart-receiver")
        .await
        .unwrap();
    let (smoke, leak) = sims().await;
    let gateway = rig::start_gateway(&config("gw-r", port, &smoke, &leak, "")).unwrap();
    // A first alarm proves the path works before the restart.
    leak.set_u16(0, 1);
    expect_event(
        &listener,
        &gateway,
        "riverside:gw-r:leak-B1-01-01:leak",
        TransitionKind::Raised,
        Duration::from_secs(20),
    )
    .await;

    // The broker restarts; smoke rises while it is down.
    let stop = std::thread::spawn(move || {
        broker.restart().unwrap();
        broker
    });
    smoke.set_u16(0, 400);
    let _broker = stop.join().unwrap();

    let event = expect_event(
        &listener,
        &gateway,
        "riverside:gw-r:smoke-B1-12-03:smoke-high",
        TransitionKind::Raised,
        Duration::from_secs(20),
    )
    .await
    .0;
    assert_eq!(event.state, AlarmState::Unacknowledged);
    assert_eq!(event.value, Some(4.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_crashes_and_forgets_everything_still_gets_the_alarm_state_on_reconnect() {
    let mut broker = servers::mosquitto().unwrap();
    let port = broker.port();
    // The gateway reaches the broker through a link the test can cut.
    let link = ChaosProxy::start(broker.addr()).await.unwrap();
    let (smoke, leak) = sims().await;
    let gateway = rig::start_gateway(&config("gw-k", link.port(), &smoke, &leak, "")).unwrap();
    let listener = Listener::start(port, "shouwang/v1/+/+/status")
        .await
        .unwrap();
    expect_status(
        &listener,
        &gateway,
        GatewayState::Online,
        Duration::from_secs(20),
    )
    .await;

    // The link is cut, the broker dies hard and comes back empty (its files deleted: no
    // session, no queue), and smoke rises meanwhile.
    link.set_open(false);
    broker.kill();
    smoke.set_u16(0, 400);
    let _ = std::fs::remove_file(broker.dir().join("mosquitto.db"));
    let _fresh = servers::mosquitto_on(port).unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await; // several polls while cut off
    // A receiver that subscribes now, before the gateway can reconnect, hears the alarm:
    // the gateway re-sends every alarm's latest event on each new connection.
    let events = Listener::start(port, "shouwang/v1/+/+/events")
        .await
        .unwrap();
    link.set_open(true);
    let event = expect_event(
        &events,
        &gateway,
        "riverside:gw-k:smoke-B1-12-03:smoke-high",
        TransitionKind::Raised,
        Duration::from_secs(20),
    )
    .await
    .0;
    assert_eq!(event.state, AlarmState::Unacknowledged);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarms_raised_during_a_network_cut_arrive_in_order_when_the_link_is_mended() {
    let broker = servers::mosquitto().unwrap();
    let link = ChaosProxy::start(broker.addr()).await.unwrap();
    let listener = Listener::start(broker.port(), "shouwang/v1/+/+/events")
        .await
        .unwrap();
    let (smoke, leak) = sims().await;
    let gateway = rig::start_gateway(&config("gw-n", link.port(), &smoke, &leak, "")).unwrap();
    leak.set_u16(0, 1);
    expect_event(
        &listener,
        &gateway,
        "riverside:gw-n:leak-B1-01-01:leak",
        TransitionKind::Raised,
        Duration::from_secs(20),
    )
    .await;

    link.set_open(false);
    smoke.set_u16(0, 400);
    tokio::time::sleep(Duration::from_millis(500)).await;
    leak.set_u16(0, 0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    link.set_open(true);

    // Both arrive, and the first copy of each (re-sends may follow) in the order they
    // happened: the smoke alarm was raised before the leak cleared.
    let (smoke_event, smoke_heard) = expect_event(
        &listener,
        &gateway,
        "riverside:gw-n:smoke-B1-12-03:smoke-high",
        TransitionKind::Raised,
        Duration::from_secs(20),
    )
    .await;
    let (leak_event, leak_heard) = expect_event(
        &listener,
        &gateway,
        "riverside:gw-n:leak-B1-01-01:leak",
        TransitionKind::Cleared,
        Duration::from_secs(20),
    )
    .await;
    assert!(smoke_event.ts_ms < leak_event.ts_ms);
    assert!(
        smoke_heard <= leak_heard,
        "delivered out of order: {smoke_heard:?} > {leak_heard:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_started_after_an_alarm_was_raised_still_shows_it() {
    let broker = servers::mosquitto().unwrap();
    let listener = Listener::start(broker.port(), "shouwang/v1/+/+/events")
        .await
        .unwrap();
    let (smoke, leak) = sims().await;
    let gateway = rig::start_gateway(&config("gw-s", broker.port(), &smoke, &leak, "")).unwrap();
    smoke.set_u16(0, 350);
    expect_event(
        &listener,
        &gateway,
        "riverside:gw-s:smoke-B1-12-03:smoke-high",
        TransitionKind::Raised,
        Duration::from_secs(20),
    )
    .await;

    // A new console, empty store, new session: it hears the retained `online`, asks the
    // gateway to resync, and the alarm shows.
    let console = rig::start_console(broker.port()).unwrap();
    let http = servers::http_client();
    let url = format!("{}/api/alarms", console.url);
    let alarm: Value = eventually(
        "the late console to show the alarm",
        Duration::from_secs(10),
        || async {
            let list = get_json(&http, &url).await?;
            list.as_array()?
                .iter()
                .find(|a| a["alarm_id"] == "riverside:gw-s:smoke-B1-12-03:smoke-high")
                .cloned()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", gateway.log(), console.proc.log()));
    assert_eq!(alarm["state"], "unacknowledged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_answers_with_exceptions_is_a_device_fault_not_silence() {
    let broker = servers::mosquitto().unwrap();
    let listener = Listener::start(broker.port(), "shouwang/v1/+/+/events")
        .await
        .unwrap();
    let (smoke, leak) = sims().await;
    let gateway = rig::start_gateway(&config("gw-x", broker.port(), &smoke, &leak, "")).unwrap();
    smoke.fail_with(Some(tokio_modbus::ExceptionCode::ServerDeviceFailure));
    let fault = expect_event(
        &listener,
        &gateway,
        "riverside:gw-x:smoke-B1-12-03:point_fault",
        TransitionKind::Raised,
        Duration::from_secs(20),
    )
    .await
    .0;
    assert_eq!(fault.class, SignalClass::Fault);
    smoke.fail_with(None);
    listener
        .wait_for("the point fault to clear", Duration::from_secs(10), |h| {
            event_on(
                h,
                "riverside:gw-x:smoke-B1-12-03:point_fault",
                TransitionKind::Cleared,
            )
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_asked_to_stop_says_offline_itself_and_exits_cleanly() {
    let broker = servers::mosquitto().unwrap();
    let listener = Listener::start(broker.port(), "shouwang/v1/+/+/status")
        .await
        .unwrap();
    let (smoke, leak) = sims().await;
    let mut gateway =
        rig::start_gateway(&config("gw-t", broker.port(), &smoke, &leak, "")).unwrap();
    let online_at = expect_status(
        &listener,
        &gateway,
        GatewayState::Online,
        Duration::from_secs(20),
    )
    .await
    .0
    .ts_ms;
    let status = gateway.terminate(Duration::from_secs(10)).unwrap();
    assert!(status.success(), "{status}\n{}", gateway.log());
    assert!(!gateway.running());
    // Its own goodbye, stamped now (the last will carries the connect time instead).
    let offline_ts = expect_status(
        &listener,
        &gateway,
        GatewayState::Offline,
        Duration::from_secs(5),
    )
    .await
    .0
    .ts_ms;
    assert!(offline_ts > online_at, "a clean goodbye, not the last will");
}
