//! The gateway's per-poll work: decoding registers, the watch (rules + events), and
//! encoding line protocol. `cargo bench -p shouwang-gateway`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use shouwang_gateway::config::Config;
use shouwang_gateway::sinks::influx::encode_batch;
use shouwang_gateway::sources::modbus::decode;
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
    group.finish();
}

criterion_group!(benches, hot_paths);
criterion_main!(benches);
