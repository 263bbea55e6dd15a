//! How fast the rule engine takes readings, on a site-sized rule set.
//!
//! `cargo bench -p shouwang-rules`. One gateway of a large building: 1,000 smoke detectors,
//! each with a threshold rule and a communication-lost fault (2,000 alarms); 1,000 heat
//! detectors with a rate-of-rise rule (`RiseWithin`, a window of a minute read every second);
//! 1,000 pressure transmitters with a stuck-value rule (`Frozen`). Each benchmark's elements
//! are readings, each evaluated by one rule: elements per second are evaluations per second.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use shouwang_rules::{CHATTER_WINDOW_MS, Condition, Engine, Priority, RuleSpec, SignalClass};

const DEVICES: usize = 1_000;

fn engine() -> Engine {
    let mut specs = Vec::new();
    for d in 0..DEVICES {
        let device: std::sync::Arc<str> = format!("smoke-{d}").into();
        specs.push(RuleSpec {
            alarm_id: format!("gw:{device}:smoke-high").into(),
            device: device.clone(),
            point: "obscuration".into(),
            class: SignalClass::Alarm,
            priority: Priority::High,
            condition: Condition::Above {
                limit: 2.5,
                deadband: 0.5,
            },
            on_delay_ms: 0,
            off_delay_ms: 0,
            latch: false,
            collapse_chatter: true,
        });
        specs.push(RuleSpec {
            alarm_id: format!("gw:{device}:comm_lost").into(),
            device,
            point: "".into(),
            class: SignalClass::Fault,
            priority: Priority::Medium,
            condition: Condition::External,
            on_delay_ms: 0,
            off_delay_ms: 0,
            latch: false,
            collapse_chatter: true,
        });
    }
    Engine::new(specs).unwrap()
}

/// 1,000 devices with one rule of `condition` on `point` each.
fn engine_of(kind: &str, point: &str, condition: Condition) -> Engine {
    let specs = (0..DEVICES)
        .map(|d| {
            let device: std::sync::Arc<str> = format!("{kind}-{d}").into();
            RuleSpec {
                alarm_id: format!("gw:{device}:{point}").into(),
                device,
                point: point.into(),
                class: SignalClass::Alarm,
                priority: Priority::High,
                condition,
                on_delay_ms: 0,
                off_delay_ms: 30_000,
                latch: false,
                collapse_chatter: true,
            }
        })
        .collect();
    Engine::new(specs).unwrap()
}

fn readings(c: &mut Criterion) {
    let devices: Vec<String> = (0..DEVICES).map(|d| format!("smoke-{d}")).collect();
    let mut group = c.benchmark_group("engine");
    group.throughput(Throughput::Elements(DEVICES as u64));

    // The common case: every detector reads clean air, nothing changes.
    let mut quiet = engine();
    let mut ts = 0i64;
    group.bench_function("1000 quiet readings", |b| {
        b.iter(|| {
            ts += 1;
            for d in &devices {
                black_box(quiet.on_reading(d, "obscuration", 0.3, ts));
            }
        })
    });

    // The busy case: every reading raises or clears an alarm. Raises a minute apart, so that
    // no alarm chatters (see the next case).
    let mut busy = engine();
    let mut ts = 0i64;
    let mut step = 0i64;
    group.bench_function("1000 readings that each raise or clear", |b| {
        b.iter(|| {
            step += 1;
            ts += CHATTER_WINDOW_MS / 2 + 1;
            let value = if step % 2 == 0 { 3.5 } else { 0.3 };
            for d in &devices {
                black_box(busy.on_reading(d, "obscuration", value, ts));
            }
        })
    });

    // Every detector chattering: readings a millisecond apart raise and clear, but after the
    // third raise each alarm has made its one ChatterStarted and stays quiet.
    let mut chattering = engine();
    let mut ts = 0i64;
    group.bench_function("1000 readings of chattering alarms", |b| {
        b.iter(|| {
            ts += 1;
            let value = if ts % 2 == 0 { 3.5 } else { 0.3 };
            for d in &devices {
                black_box(chattering.on_reading(d, "obscuration", value, ts));
            }
        })
    });

    // Heat detectors read every second, noise of +/-0.25 degrees around 22: each reading
    // goes through its minute-long window (tens of pairs in the deque), none raises.
    let heat: Vec<String> = (0..DEVICES).map(|d| format!("heat-{d}")).collect();
    let mut rise = engine_of(
        "heat",
        "temperature",
        Condition::RiseWithin {
            by: 8.3,
            window_ms: 60_000,
        },
    );
    let mut ts = 0i64;
    group.bench_function("1000 readings through a RiseWithin rule", |b| {
        b.iter(|| {
            ts += 1_000;
            for (d, device) in heat.iter().enumerate() {
                let noise = ((d as i64 * 7 + ts / 1_000 * 13) % 11) as f64 * 0.05;
                black_box(rise.on_reading(device, "temperature", 21.75 + noise, ts));
            }
        })
    });

    // Pressure transmitters: every other one stuck at 0.42 MPa (its run goes on, raised once),
    // the others live, moving past the tolerance now and then (new runs).
    let pressure: Vec<String> = (0..DEVICES).map(|d| format!("pt-{d}")).collect();
    let mut frozen = engine_of(
        "pt",
        "pressure",
        Condition::Frozen {
            tolerance: 0.001,
            window_ms: 600_000,
        },
    );
    let mut ts = 0i64;
    group.bench_function("1000 readings through a Frozen rule", |b| {
        b.iter(|| {
            ts += 1_000;
            for (d, device) in pressure.iter().enumerate() {
                let value = if d % 2 == 0 {
                    0.42
                } else {
                    0.42 + ((d as i64 + ts / 1_000) % 7) as f64 * 0.0007
                };
                black_box(frozen.on_reading(device, "pressure", value, ts));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, readings);
criterion_main!(benches);
