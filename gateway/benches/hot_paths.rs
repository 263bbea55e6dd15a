//! The gateway's per-poll work: decoding registers, the watch (rules + events, a coincidence
//! over 1,000 detectors, 20,000 points under a pack), and encoding line protocol.
//! `cargo bench -p shouwang-gateway --bench hot_paths`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use shouwang_gateway::config::Config;
use shouwang_gateway::sinks::influx::encode_batch;
use shouwang_gateway::sources::modbus::decode;
use shouwang_gateway::sources::mqtt_sensors::{Routes, judge};
use shouwang_gateway::sources::{PollOutcome, PolledValues};
use shouwang_gateway::watch::Watch;

fn demo_config() -> Config {
    let text = include_str!("../../demo/building.toml");
    Config::from_toml_str(text, "demo/building.toml").unwrap()
}

fn hot_paths(c: &mut Criterion) {
    let config = demo_config();
    let smoke = config
        .devices
        .iter()
        .position(|d| d.kind == "smoke")
        .unwrap();
    let point = &config.devices[smoke].points[0];

    let mut group = c.benchmark_group("gateway");
    group.throughput(Throughput::Elements(1));

    group.bench_function("decode one u16 point", |b| {
        b.iter(|| black_box(decode(point, black_box(&[31]))))
    });

    let mut watch = Watch::new(&config, "bench".into(), 1).unwrap();
    let mut ts = 0i64;
    group.bench_function("watch: one quiet smoke poll", |b| {
        b.iter(|| {
            ts += 250;
            let outcome = PollOutcome {
                device: smoke,
                at: shouwang_gateway::clock::Stamp::at(ts),
                result: Ok(PolledValues {
                    values: vec![("obscuration".into(), 0.3)],
                    faults: vec![],
                }),
            };
            black_box(watch.on_poll(&outcome))
        })
    });

    let outcome = PollOutcome {
        device: smoke,
        at: shouwang_gateway::clock::Stamp::at(1),
        result: Ok(PolledValues {
            values: vec![("obscuration".into(), 0.3)],
            faults: vec![],
        }),
    };
    let batch = watch.on_poll(&outcome).readings.unwrap();
    group.bench_function("line protocol: encode one reading batch", |b| {
        b.iter(|| black_box(encode_batch(black_box(&batch))))
    });

    // What the sensor link and the runtime loop do for one MQTT message of sensor-load's
    // (200 smoke sensors, report by exception): find the device, read the JSON, watch it.
    let config = sensor_config(200);
    let routes = Routes::of(&config);
    let mut watch = Watch::new(&config, "bench".into(), 1).unwrap();
    let topics: Vec<String> = (0..200).map(|i| format!("load/{i}")).collect();
    let (mut n, mut ts) = (0usize, 0i64);
    group.bench_function("mqtt sensor: one quiet message, judged and watched", |b| {
        b.iter(|| {
            n += 1;
            ts += 1;
            let payload = format!(r#"{{"o":20,"n":{n}}}"#);
            let (device, reading) =
                judge(&routes, &topics[n % 200], false, payload.as_bytes()).unwrap();
            let outcome = PollOutcome {
                device,
                at: shouwang_gateway::clock::Stamp::at(ts),
                result: Ok(reading.values),
            };
            black_box(watch.on_poll(&outcome))
        })
    });
    group.finish();
}

/// `devices` MQTT smoke sensors on `load/<i>`, as the sensor-load harness configures them.
fn sensor_config(devices: usize) -> Config {
    let mut text = String::from(
        r#"
[gateway]
id = "gw-load"
community = "riverside"
data_dir = "data"

[[rules]]
id = "smoke-high"
device_kind = "smoke"
point = "obscuration"
class = "alarm"
priority = "high"
above = 2.5
deadband = 0.5
message = "Smoke detected"
"#,
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

[[devices.points]]
name = "obscuration"
json = "o"
scale = 0.01
"#,
            floor = i / 10,
            unit = i % 10
        ));
    }
    Config::from_toml_str(&text, "sensors.toml").unwrap()
}

/// 1,000 smoke detectors over MQTT, 100 in each of 10 buildings, with a coincidence of two
/// per building (the two-detector dependency).
fn zoned_config() -> Config {
    let mut text = sensor_config(1000)
        .devices
        .iter()
        .enumerate()
        .fold(String::new(), |mut t, (i, _)| {
            t.push_str(&format!(
                "\n[[devices]]\nid = \"d-{i}\"\nkind = \"smoke\"\nbuilding = \"B{}\"\nfloor = \"{}\"\n\
                 room = \"{}\"\ntransport = \"mqtt\"\ntopic = \"zoned/{i}\"\ncomm_loss_after_s = 100\n\n\
                 [[devices.points]]\nname = \"obscuration\"\njson = \"o\"\n",
                i / 100,
                i % 100 / 10,
                i % 10
            ));
            t
        });
    text.insert_str(
        0,
        "[gateway]\nid = \"gw-zoned\"\ncommunity = \"riverside\"\ndata_dir = \"data\"\n\n\
         [[rules]]\nid = \"smoke-high\"\ndevice_kind = \"smoke\"\npoint = \"obscuration\"\nclass = \"alarm\"\n\
         priority = \"high\"\nabove = 2.5\ndeadband = 0.5\nmessage = \"Smoke\"\n\n\
         [[coincidences]]\nid = \"fire-confirmed\"\nzone = \"building\"\nof = [\"smoke-high\"]\nat_least = 2\n\
         class = \"alarm\"\npriority = \"high\"\nmessage = \"Fire confirmed\"\n",
    );
    Config::from_toml_str(&text, "zoned.toml").unwrap()
}

/// A detector's alarm raised and cleared, each move confirming or ending its building's
/// fire (another detector there is in alarm throughout): the coincidence's worst case.
fn coincidence(c: &mut Criterion) {
    let config = zoned_config();
    let mut watch = Watch::new(&config, "bench".into(), 1).unwrap();
    let poll = |device: usize, value: f64, ts: i64| PollOutcome {
        device,
        at: shouwang_gateway::clock::Stamp::at(ts),
        result: Ok(PolledValues {
            values: vec![("obscuration".into(), value)],
            faults: vec![],
        }),
    };
    // One detector of each building in alarm.
    for b in 0..10 {
        watch.on_poll(&poll(b * 100, 3.0, 1));
    }
    // What is measured moves the zone each time: a raise of detector 1 of B0 confirms B0's
    // fire, its clear ends it (two events each), checked once before the clock runs.
    for (n, value) in [(1, 3.0), (2, 0.1)] {
        let report = watch.on_poll(&poll(1, value, 1_000 + n));
        assert_eq!(report.events.len(), 2, "{:?}", report.events);
    }
    let mut group = c.benchmark_group("gateway");
    group.throughput(Throughput::Elements(1));
    let (mut ts, mut n) = (10_000i64, 0usize);
    group.bench_function(
        "watch: 1,000 detectors, two per building confirm: a poll that moves the zone",
        |b| {
            b.iter(|| {
                ts += 1_000;
                n += 1;
                // Detector 1 of building (n / 2 % 10): raised on odd n, cleared on even.
                let device = (n / 2 % 10) * 100 + 1;
                let value = if n % 2 == 1 { 3.0 } else { 0.1 };
                black_box(watch.on_poll(&poll(device, value, ts)))
            })
        },
    );
}

/// 20,000 points under the shipped packs: 1,820 smoke detectors of the shipped profile (11
/// points each, 8 rules of the smoke pack on them), declared by one template, polled with
/// clean air (every rule judged, none moves).
fn packs_at_scale(c: &mut Criterion) {
    let text = "[gateway]\nid = \"gw-packs\"\ncommunity = \"riverside\"\ndata_dir = \"data\"\n\
                rule_packs = [\"smoke\"]\n\n[[devices]]\nfor = { b = \"1..=20\", u = \"1..=91\" }\n\
                id = \"s-{b}-{u}\"\nprofile = \"smoke-detector\"\nbuilding = \"B{b}\"\nfloor = \"{(u - 1) / 4 + 1}\"\n\
                room = \"{u}\"\ntransport = \"tcp\"\naddress = \"127.0.0.1:{1500 + b}\"\nunit_id = \"{u}\"\n";
    let config = Config::from_toml_str(text, "packs.toml").unwrap();
    let points: usize = config.devices.iter().map(|d| d.points.len()).sum();
    assert!(points >= 20_000, "{points} points");
    let mut watch = Watch::new(&config, "bench".into(), 1).unwrap();
    let values: Vec<(String, f64)> = config.devices[0]
        .points
        .iter()
        .map(|p| {
            let clean = match p.name.as_str() {
                "obscuration" => 0.2,
                "chamber" => 1200.0,
                "temperature" => 22.0,
                "battery" => 3.0,
                _ => 0.0,
            };
            (p.name.clone(), clean)
        })
        .collect();
    let per_poll = values.len() as u64;
    let devices = config.devices.len();
    let mut group = c.benchmark_group("gateway");
    group.throughput(Throughput::Elements(per_poll));
    let (mut ts, mut d) = (0i64, 0usize);
    group.bench_function(
        "watch: 20,000 points under the smoke pack, one poll of a detector (per point)",
        |b| {
            b.iter(|| {
                ts += 1;
                d = (d + 1) % devices;
                let outcome = PollOutcome {
                    device: d,
                    at: shouwang_gateway::clock::Stamp::at(ts),
                    result: Ok(PolledValues {
                        values: values.clone(),
                        faults: vec![],
                    }),
                };
                black_box(watch.on_poll(&outcome))
            })
        },
    );
}

criterion_group!(benches, hot_paths, coincidence, packs_at_scale);
criterion_main!(benches);
