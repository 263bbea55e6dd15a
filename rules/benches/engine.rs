//! How fast the rule engine takes readings, on a site-sized rule set.
//!
//! `cargo bench -p shouwang-rules`. One gateway of a large building: 1,000 smoke detectors,
//! each with a threshold rule and a communication-lost fault (2,000 alarms).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use shouwang_rules::{Condition, Engine, Priority, RuleSpec, SignalClass};

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
        });
    }
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

    // The busy case: every reading raises or clears an alarm.
    let mut busy = engine();
    let mut ts = 0i64;
    group.bench_function("1000 readings that each raise or clear", |b| {
        b.iter(|| {
            ts += 1;
            let value = if ts % 2 == 0 { 3.5 } else { 0.3 };
            for d in &devices {
                black_box(busy.on_reading(d, "obscuration", value, ts));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, readings);
criterion_main!(benches);
