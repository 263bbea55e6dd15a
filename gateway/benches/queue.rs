//! The durable queue on a real disk: appending with two sync policies, acknowledging
//! (with segment deletion) and draining a backlog; then, printed before the timings, what a
//! record costs on disk and how many fsyncs the demo's load implies.
//!
//! `cargo bench -p shouwang-gateway --bench queue -- --warm-up-time 1 --measurement-time 3`
//!
//! Queue directories go under Cargo's target tmp dir (a real file system, so an fsync
//! costs what it costs there). Reads in the drain come from the page cache: the backlog was
//! just written.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group};
use shouwang_gateway::sinks::queue::{DiskQueue, QueueLimits};
use shouwang_wire::{
    AlarmEvent, AlarmState, Message, Place, PointValue, Priority, ReadingBatch, SignalClass,
    TransitionKind,
};
use tempfile::TempDir;

fn place() -> Place {
    Place {
        community: "huayuan".into(),
        building: "B3".into(),
        floor: "12".into(),
        room: "1203".into(),
        ..Place::default()
    }
}

/// One alarm transition as the gateway publishes it, about 600 bytes of JSON.
fn alarm_event() -> Vec<u8> {
    AlarmEvent {
        schema: AlarmEvent::SCHEMA,
        event_id: "0197a3c2e5b07c4d9f1e2a3b4c5d6e7f-000000000412".into(),
        boot: 1_795_776_000,
        seq: 412,
        alarm_id: "huayuan:gw-b3-east:smoke-b3-12-03:smoke-detected".into(),
        gateway: "gw-b3-east".into(),
        device: "smoke-b3-12-03".into(),
        device_kind: "smoke".into(),
        point: Some("obscuration".into()),
        rule: "smoke-detected".into(),
        class: SignalClass::Alarm,
        priority: Priority::High,
        transition: TransitionKind::Raised,
        state: AlarmState::Unacknowledged,
        active: true,
        value: Some(4.75),
        engineering_unit: Some("%/m".into()),
        place: place(),
        message:
            "Smoke detected in the corridor outside flat 1203, third detector from the lift lobby"
                .into(),
        ts_ms: 1_760_000_123_456,
        operator: None,
    }
    .encode()
}

/// One poll of one device as the gateway publishes it, about 250 bytes of JSON.
fn reading_batch() -> Vec<u8> {
    let point = |name: &str, value, unit: &str| PointValue::good(name, value, Some(unit.into()));
    ReadingBatch {
        schema: ReadingBatch::SCHEMA,
        gateway: "gw-b3-east".into(),
        device: "pump-b3-1".into(),
        device_kind: "pressure".into(),
        place: place(),
        ts_ms: 1_760_000_123_456,
        // One point, like most of the demo's devices.
        points: vec![point("pressure", 0.42, "MPa")],
    }
    .encode()
}

fn queue_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("queue-bench-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
}

fn open(dir: &Path, limits: QueueLimits) -> DiskQueue {
    DiskQueue::open(dir, limits).unwrap().0
}

/// A queue holding `records` copies of `payload`, all synced.
fn backlog(dir: &Path, limits: QueueLimits, payload: &[u8], records: u64) -> DiskQueue {
    let mut q = open(dir, limits);
    for _ in 0..records {
        q.append(payload).unwrap();
    }
    q.sync().unwrap();
    q
}

fn append(c: &mut Criterion) {
    let mut group = c.benchmark_group("queue append");
    group.throughput(Throughput::Elements(1));
    for (what, payload) in [
        ("alarm event", alarm_event()),
        ("reading batch", reading_batch()),
    ] {
        for sync_every in [64u64, 1] {
            let name = format!("{what} ({} B), sync every {sync_every}", payload.len());
            group.bench_function(name, |b| {
                b.iter_custom(|iters| {
                    let dir = queue_dir();
                    let mut q = open(dir.path(), QueueLimits::default());
                    let start = Instant::now();
                    for i in 1..=iters {
                        black_box(q.append(&payload).unwrap());
                        if i % sync_every == 0 {
                            q.sync().unwrap();
                        }
                    }
                    q.sync().unwrap();
                    start.elapsed()
                })
            });
        }
    }
    group.finish();
}

const BACKLOG: u64 = 10_000;

fn ack_and_drain(c: &mut Criterion) {
    let mut group = c.benchmark_group("queue backlog of 10000");
    group.throughput(Throughput::Elements(BACKLOG));
    group.sample_size(10);
    let reading = reading_batch();
    let alarm = alarm_event();

    // 256 KiB segments: the 10,000 readings fill ten, so acknowledging them deletes nine.
    let small_segments = QueueLimits {
        segment_max_bytes: 256 << 10,
        max_bytes: None,
    };
    group.bench_function("ack all + sync (deletes 9 segments of 256 KiB)", |b| {
        b.iter_batched(
            || {
                let dir = queue_dir();
                let q = backlog(dir.path(), small_segments, &reading, BACKLOG);
                (dir, q)
            },
            |(dir, mut q)| {
                for seq in 0..BACKLOG {
                    q.ack(seq);
                }
                q.sync().unwrap();
                assert_eq!(q.stats().segments, 1);
                (dir, q)
            },
            BatchSize::PerIteration,
        )
    });

    for (what, payload) in [("reading batches", &reading), ("alarm events", &alarm)] {
        group.bench_function(format!("drain {what}: read + ack each, sync"), |b| {
            b.iter_batched(
                || {
                    let dir = queue_dir();
                    let q = backlog(dir.path(), QueueLimits::default(), payload, BACKLOG);
                    (dir, q)
                },
                |(dir, mut q)| {
                    let seqs: Vec<u64> = q.pending().collect();
                    for seq in seqs {
                        black_box(q.read(seq).unwrap());
                        q.ack(seq);
                    }
                    q.sync().unwrap();
                    (dir, q)
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

/// Bytes on disk per record, against the payload.
fn footprint() {
    for (what, payload) in [
        ("reading batch", reading_batch()),
        ("alarm event", alarm_event()),
    ] {
        let dir = queue_dir();
        let q = backlog(dir.path(), QueueLimits::default(), &payload, 1000);
        let per_record = q.stats().bytes_on_disk as f64 / 1000.0;
        println!(
            "footprint: {what}: payload {} B, {per_record:.1} B on disk per record ({:.1}% framing)",
            payload.len(),
            100.0 * (per_record - payload.len() as f64) / payload.len() as f64
        );
    }
}

/// The demo's readings lane for 10 simulated seconds: 45 reading batches a second, a group
/// commit every 200 ms, counting the syncs that really fsynced. The clock is simulated; the
/// disk is real. With `acks`, the receiver confirms every record sent at one commit before
/// the next (the floor then moves at every commit and is written too).
fn fsync_rate(acks: bool) {
    const SECONDS: u64 = 10;
    const BATCHES_PER_S: u64 = 45;
    const COMMIT_MS: u64 = 200;
    let dir = queue_dir();
    let mut q = open(dir.path(), QueueLimits::default());
    let payload = reading_batch();
    let fsyncs_at_open = q.stats().fsyncs;
    let (mut syncs, mut syncs_that_fsynced, mut appended) = (0u64, 0u64, 0u64);
    let mut wall = Duration::ZERO;
    for ms in 1..=SECONDS * 1000 {
        // The n-th batch is due at n * 1000 / 45 ms.
        while (appended + 1) * 1000 <= ms * BATCHES_PER_S {
            q.append(&payload).unwrap();
            appended += 1;
        }
        if ms % COMMIT_MS == 0 {
            if acks {
                let sent: Vec<u64> = q
                    .pending()
                    .take_while(|&s| q.durable_seq().is_some_and(|d| s <= d))
                    .collect();
                for seq in sent {
                    q.ack(seq);
                }
            }
            let before = q.stats().fsyncs;
            let start = Instant::now();
            q.sync().unwrap();
            wall += start.elapsed();
            syncs += 1;
            if q.stats().fsyncs > before {
                syncs_that_fsynced += 1;
            }
        }
    }
    let fsyncs = q.stats().fsyncs - fsyncs_at_open;
    println!(
        "fsync rate, {} s simulated at {BATCHES_PER_S} batches/s, commit every {COMMIT_MS} ms, {}: \
         {appended} appends, {syncs} sync calls, {syncs_that_fsynced} of them fsynced \
         ({:.1}/s); {fsyncs} fsync calls in all ({:.1}/s); {:.2} ms per sync on this disk",
        SECONDS,
        if acks {
            "receiver acking"
        } else {
            "receiver away"
        },
        syncs_that_fsynced as f64 / SECONDS as f64,
        fsyncs as f64 / SECONDS as f64,
        wall.as_secs_f64() * 1000.0 / syncs as f64,
    );
}

criterion_group!(benches, append, ack_and_drain);

fn main() {
    footprint();
    fsync_rate(false);
    fsync_rate(true);
    benches();
    Criterion::default().configure_from_args().final_summary();
}
