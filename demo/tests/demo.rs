//! The demo launcher: its building config, `trigger`, the embedded broker, and the whole
//! demo in one process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, Publish, QoS};
use shouwang_demo::building::{self, KINDS, building_config, short_place, trigger_point};
use shouwang_demo::{DemoOptions, RunningDemo, broker};
use shouwang_gateway::sources::modbus::decode;
use shouwang_hil_tests::servers::{free_port, http_client};
use shouwang_hil_tests::sim::SimDevice;
use shouwang_wire::{AlarmEvent, Channel, Message as _, TransitionKind, topic_filter_all};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

// --- the building -------------------------------------------------------------------------

#[test]
fn the_demo_building_passes_the_gateway_config_check() {
    let config = building_config().unwrap_or_else(|report| panic!("{report}"));
    assert_eq!(config.gateway.id, "gw-b1");
    assert_eq!(config.gateway.community, "riverside");
    let kinds: Vec<&str> = config.devices.iter().map(|d| d.kind.as_str()).collect();
    assert!(
        kinds.iter().filter(|k| **k == "smoke").count() >= 5,
        "{kinds:?}"
    );
    for kind in ["leak", "pressure", "access"] {
        assert!(kinds.contains(&kind), "no {kind} device");
    }
    // A whole tower: a smoke detector in each of its 32 x 4 homes, declared in one table.
    assert_eq!(kinds.iter().filter(|k| **k == "smoke").count(), 128);
    assert!(
        config
            .devices
            .iter()
            .all(|d| d.profile.is_some() && d.link.is_some()),
        "every demo device names a profile and a link"
    );
    let mut places: Vec<(String, u8)> = config
        .devices
        .iter()
        .map(|d| {
            (
                building::device_addr(&config, d).unwrap().to_string(),
                d.modbus_unit(),
            )
        })
        .collect();
    places.sort_unstable();
    places.dedup();
    assert_eq!(
        places.len(),
        config.devices.len(),
        "two devices share an address and unit id"
    );
    assert!(config.influx.is_none(), "the demo has no time-series store");
    // Every place reads in the site's own words, and no two devices of a kind share one
    // (`trigger KIND PLACE` finds each).
    let mut places = Vec::new();
    for device in &config.devices {
        let label = config.place(device).label();
        assert!(
            label.starts_with("1号楼 ") && !label.chars().any(|c| c.is_ascii_alphabetic()),
            "{}: {label}",
            device.id
        );
        places.push((device.kind.clone(), short_place(device)));
    }
    let count = places.len();
    places.sort_unstable();
    places.dedup();
    assert_eq!(places.len(), count, "two devices of a kind at one place");
}

#[test]
fn every_device_has_a_trigger_point_whose_values_cross_its_rules() {
    let config = building_config().unwrap();
    for device in &config.devices {
        let (point, values) = trigger_point(device).unwrap();
        let rules: Vec<_> = config
            .rules
            .iter()
            .filter(|r| {
                r.rule.point == point.name && config.devices_of(r).any(|d| d.id == device.id)
            })
            .map(|r| &*r.rule)
            .collect();
        assert!(!rules.is_empty(), "no rule watches {}", device.id);
        for rule in rules {
            // Normal must be clear of the limit by more than the deadband, alarm past it.
            let (alarm_trips, normal_clears) = match (rule.above, rule.below) {
                (Some(limit), None) => (
                    values.alarm >= limit,
                    values.normal < limit - rule.deadband.unwrap_or(0.0),
                ),
                (None, Some(limit)) => (
                    values.alarm <= limit,
                    values.normal > limit + rule.deadband.unwrap_or(0.0),
                ),
                _ => unreachable!("the loader checked this"),
            };
            assert!(
                alarm_trips,
                "{}: alarm value {} does not trip {}",
                device.id, values.alarm, rule.id
            );
            assert!(
                normal_clears,
                "{}: normal value {} does not clear {}",
                device.id, values.normal, rule.id
            );
        }
    }
}

#[tokio::test]
async fn a_written_value_reads_back_through_the_gateways_decoder() {
    let config = building_config().unwrap();
    for kind in KINDS {
        let device = config.devices.iter().find(|d| d.kind == kind.kind).unwrap();
        let (point, _) = trigger_point(device).unwrap();
        let sim = SimDevice::start("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        for value in [kind.normal, kind.alarm] {
            building::write_value(sim.local_addr(), device.modbus_unit(), point, value)
                .await
                .unwrap();
            let n = point.data_type.unwrap().registers();
            let first = point.register.unwrap();
            let registers: Vec<u16> = (first..first + n).map(|r| sim.get_u16(r)).collect();
            let read = decode(point, &registers).unwrap();
            assert!(
                (read - value).abs() < 1e-6,
                "{}: wrote {value}, the gateway reads {read}",
                device.id
            );
        }
    }
}

#[test]
fn a_value_the_register_cannot_hold_is_refused() {
    let config = building_config().unwrap();
    let smoke = config.devices.iter().find(|d| d.kind == "smoke").unwrap();
    let (point, _) = trigger_point(smoke).unwrap();
    assert!(
        building::encode(point, 1000.0).is_err(),
        "100000 does not fit a u16"
    );
    assert!(building::encode(point, -1.0).is_err());
    assert!(building::encode(point, f64::NAN).is_err());
}

#[test]
fn trigger_for_an_unknown_place_fails_with_the_list_of_known_places() {
    let out = Command::new(env!("CARGO_BIN_EXE_shouwang"))
        .args(["demo", "trigger", "smoke", "B9-99-99"])
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no smoke device at B9-99-99"), "{stderr}");
    assert!(
        stderr.lines().count() < 40,
        "the list is compact:\n{stderr}"
    );
    for device in &building_config().unwrap().devices {
        let place = short_place(device);
        assert!(stderr.contains(&place), "{place} is not listed:\n{stderr}");
    }
}

#[test]
fn trigger_for_an_unknown_kind_also_lists_what_there_is() {
    let out = Command::new(env!("CARGO_BIN_EXE_shouwang"))
        .args(["demo", "clear", "elevator", "B1-2-12-1203"])
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("smoke     B1-1-1-101 B1-1-1-102"),
        "{stderr}"
    );
    assert!(stderr.contains("B1-2-12-1203"), "{stderr}");
    assert!(stderr.contains("access    B1-1-1-stairwell"), "{stderr}");
}

// --- the embedded broker ------------------------------------------------------------------

/// A client whose publishes arrive on the returned channel; its event loop runs in a task
/// that, when aborted, drops the TCP connection without an MQTT DISCONNECT.
fn mqtt_client(
    port: u16,
    id: &str,
    will: Option<LastWill>,
) -> (
    AsyncClient,
    tokio::task::JoinHandle<()>,
    mpsc::UnboundedReceiver<Publish>,
) {
    let mut options = MqttOptions::new(id, "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(5));
    if let Some(will) = will {
        options.set_last_will(will);
    }
    let (client, mut events) = AsyncClient::new(options, 16);
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send(p);
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    (client, task, rx)
}

async fn next_on(rx: &mut mpsc::UnboundedReceiver<Publish>, topic: &str) -> Publish {
    timeout(Duration::from_secs(5), async {
        loop {
            let p = rx.recv().await.unwrap();
            if p.topic == topic {
                return p;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("nothing on {topic} within 5 s"))
}

/// Fail if `payload` arrives on `topic` within `wait`.
async fn never_hear(
    rx: &mut mpsc::UnboundedReceiver<Publish>,
    topic: &str,
    payload: &[u8],
    wait: Duration,
) {
    let got = timeout(wait, async {
        loop {
            let p = rx.recv().await.unwrap();
            if p.topic == topic && &p.payload[..] == payload {
                return p;
            }
        }
    })
    .await;
    assert!(
        got.is_err(),
        "unexpected message on {topic}: {:?}",
        got.unwrap()
    );
}

#[tokio::test]
async fn the_embedded_broker_keeps_retained_messages_and_publishes_last_wills() {
    let port = free_port();
    broker::start(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .unwrap();
    let status = "shouwang/v1/riverside/gw-test/status";

    // A gateway: will "offline" (retained), then "online" retained.
    let will = LastWill::new(status, "offline", QoS::AtLeastOnce, true);
    let (gateway, gateway_loop, _) = mqtt_client(port, "gw-test", Some(will));
    gateway
        .publish(status, QoS::AtLeastOnce, true, "online")
        .await
        .unwrap();

    // A console that comes later still learns it is online.
    let (console, _console_loop, mut heard) = mqtt_client(port, "console", None);
    console.subscribe(status, QoS::AtLeastOnce).await.unwrap();
    let retained = next_on(&mut heard, status).await;
    assert_eq!(&retained.payload[..], b"online");
    assert!(
        retained.retain,
        "a retained message must arrive flagged as retained"
    );

    // The gateway vanishes without a DISCONNECT: the broker publishes its will.
    gateway_loop.abort();
    drop(gateway);
    let will = next_on(&mut heard, status).await;
    assert_eq!(&will.payload[..], b"offline");

    // ...and keeps it: a console that connects now reads "offline".
    let (late, _late_loop, mut late_heard) = mqtt_client(port, "late-console", None);
    late.subscribe(status, QoS::AtLeastOnce).await.unwrap();
    assert_eq!(
        &next_on(&mut late_heard, status).await.payload[..],
        b"offline"
    );
}

#[tokio::test]
async fn a_clean_disconnect_does_not_fire_the_last_will() {
    let port = free_port();
    broker::start(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .unwrap();
    let status = "shouwang/v1/riverside/gw-polite/status";
    let (console, _console_loop, mut heard) = mqtt_client(port, "console", None);
    console.subscribe(status, QoS::AtLeastOnce).await.unwrap();

    let will = LastWill::new(status, "offline", QoS::AtLeastOnce, true);
    let (gateway, _gateway_loop, _) = mqtt_client(port, "gw-polite", Some(will));
    gateway
        .publish(status, QoS::AtLeastOnce, true, "online")
        .await
        .unwrap();
    assert_eq!(&next_on(&mut heard, status).await.payload[..], b"online");
    gateway.disconnect().await.unwrap();
    // The will would say "offline". ("online" may come twice: live and, when the
    // subscription raced the publish, once more as the retained copy.)
    never_hear(&mut heard, status, b"offline", Duration::from_secs(2)).await;
}

#[tokio::test]
async fn the_broker_refuses_to_start_on_a_taken_port() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let err = broker::start(taken.local_addr().unwrap())
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("taken"), "{err:#}");
}

// --- the whole demo ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_triggered_device_reaches_the_alarm_board_and_clears_again() {
    let demo = RunningDemo::start(DemoOptions {
        console_port: 0,
        mqtt_port: free_port(),
        devices_on_any_port: true,
        db_dir: None,
    })
    .await
    .unwrap();
    let (listener, _loop, mut heard) = mqtt_client(demo.mqtt_addr.port(), "test-listener", None);
    listener
        .subscribe(topic_filter_all(Channel::Events), QoS::AtLeastOnce)
        .await
        .unwrap();
    let events_topic = "shouwang/v1/riverside/gw-b1/events";
    // Subscribed before the trigger? The subscription is queued first, give it a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let smoke = demo.device("smoke", "B1-2-12-1203").unwrap();
    // Over Modbus, as `shouwang demo trigger` does from another terminal.
    let (point, values) = trigger_point(&smoke.config).unwrap();
    let started = Instant::now();
    building::write_value(smoke.addr, smoke.config.modbus_unit(), point, values.alarm)
        .await
        .unwrap();

    let raised = loop {
        let event = AlarmEvent::decode(&next_on(&mut heard, events_topic).await.payload).unwrap();
        if event.device == "smoke-B1-12-03" && event.transition == TransitionKind::Raised {
            break event;
        }
    };
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(raised.rule, "smoke-high");
    assert_eq!(raised.place.short(), "B1-2-12-1203");
    // The names of the demo's [places] travel with the event.
    assert_eq!(raised.place.label(), "1号楼 2单元 12层 1203室");
    assert_eq!(
        (raised.place.grid.as_str(), raised.place.names.grid.as_str()),
        ("G1", "第一网格")
    );

    // The console got it too.
    let http = http_client();
    let alarms_url = format!("{}api/alarms", demo.console_url());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let body = http
            .get(&alarms_url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let alarms: serde_json::Value = serde_json::from_str(&body).unwrap();
        let listed = alarms.as_array().is_some_and(|a| {
            a.iter()
                .any(|x| x["alarm_id"] == "riverside:gw-b1:smoke-B1-12-03:smoke-high")
        });
        if listed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the console does not list the alarm: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // In-process clear, as the scenario does.
    smoke.clear().unwrap();
    loop {
        let event = AlarmEvent::decode(&next_on(&mut heard, events_topic).await.payload).unwrap();
        if event.device == "smoke-B1-12-03" && event.transition == TransitionKind::Cleared {
            break;
        }
    }
    demo.stop().await;
}
