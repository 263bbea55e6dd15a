//! The readings lane of the line-protocol writer, measured end to end: what a reading
//! costs on disk, how fast batches are appended, how many fsyncs the demo's load costs
//! with the store away and with it up, and how fast a backlog drains into a real
//! VictoriaMetrics. Prints figures; asserts nothing about timings.
//!
//! `cargo bench -p shouwang-gateway --bench readings`
//!
//! Queue directories go under Cargo's target tmp dir (a real file system, so an fsync costs
//! what it costs there). The drain needs `victoria-metrics` (Debian's package); without it
//! that figure is skipped and says so.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use shouwang_gateway::sinks::influx::{
    InfluxApi, InfluxConfig, InfluxSink, RECORD_HEADER_BYTES, encode_batch, encode_record,
    lane_limits,
};
use shouwang_gateway::sinks::queue::{DiskQueue, HEADER_BYTES};
use shouwang_hil_tests::servers;
use shouwang_wire::{Place, PointValue, ReadingBatch};
use tempfile::TempDir;

/// The demo's load (`demo/building.toml`): 9 devices polled every 250 ms to 1 s, about 45
/// reading batches a second with one or two points each.
const DEMO_BATCHES_PER_S: u64 = 45;

fn batch(i: u64, ts_ms: i64) -> ReadingBatch {
    ReadingBatch {
        schema: ReadingBatch::SCHEMA,
        gateway: "gw-b3-east".into(),
        device: format!("pump-b3-{}", i % 9),
        device_kind: "pressure".into(),
        place: Place {
            community: "huayuan".into(),
            building: "B3".into(),
            floor: "12".into(),
            room: "1203".into(),
            ..Place::default()
        },
        ts_ms,
        points: vec![PointValue {
            point: "pressure".into(),
            value: Some(0.42 + (i % 100) as f64 / 1000.0),
            engineering_unit: Some("MPa".into()),
            quality: Default::default(),
        }],
    }
}

fn dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("readings-bench-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
}

fn config(url: String) -> InfluxConfig {
    InfluxConfig {
        db: Some("shouwang".into()),
        timeout_ms: 1000,
        ..InfluxConfig::new(url, InfluxApi::V1)
    }
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn footprint() {
    let b = batch(1, 1_760_000_123_456);
    let encoded = encode_batch(&b);
    let on_disk = HEADER_BYTES + RECORD_HEADER_BYTES + encoded.text.len();
    println!(
        "footprint: one reading (one line, {} B of line protocol) takes {on_disk} B on disk \
         ({HEADER_BYTES} B frame + {RECORD_HEADER_BYTES} B record header); 64 MiB hold {} readings, {:.1} hours of the demo",
        encoded.text.len(),
        (64u64 << 20) / on_disk as u64,
        (64u64 << 20) as f64 / on_disk as f64 / DEMO_BATCHES_PER_S as f64 / 3600.0
    );
}

/// Raw append rate of reading records into the lane's queue, synced every 1000.
fn append_rate() {
    const N: u64 = 100_000;
    let d = dir();
    let (mut q, _) = DiskQueue::open(d.path(), lane_limits(64 << 20)).unwrap();
    let records: Vec<Vec<u8>> = (0..1000)
        .map(|i| {
            let e = encode_batch(&batch(i, 1_760_000_000_000 + i as i64));
            encode_record(e.lines, 0, &e.text)
        })
        .collect();
    let start = Instant::now();
    for i in 0..N {
        q.append(&records[(i % 1000) as usize]).unwrap();
        if i % 1000 == 999 {
            q.sync().unwrap();
        }
    }
    q.sync().unwrap();
    let took = start.elapsed();
    println!(
        "append: {N} reading records in {took:?}: {:.0} records/s ({:.1} MB/s), sync every 1000; \
         {} shed to stay under 64 MiB",
        N as f64 / took.as_secs_f64(),
        q.stats().bytes_on_disk as f64 / took.as_secs_f64() / 1e6,
        q.stats().records_shed
    );
}

/// The real writer at the demo's rate for `seconds`, pushing to `url`; returns its stats.
async fn demo_load(
    url: String,
    data_dir: &Path,
    seconds: u64,
) -> shouwang_gateway::sinks::influx::InfluxStats {
    let (sink, _task) = InfluxSink::spawn(config(url), data_dir).unwrap();
    let every = Duration::from_micros(1_000_000 / DEMO_BATCHES_PER_S);
    let mut tick = tokio::time::interval(every);
    let fsyncs_at_start = {
        tokio::time::sleep(Duration::from_millis(200)).await;
        sink.stats().disk.fsyncs
    };
    let start = Instant::now();
    let mut i = 0;
    while start.elapsed() < Duration::from_secs(seconds) {
        tick.tick().await;
        sink.push(batch(i, wall_ms()));
        i += 1;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut stats = sink.stats();
    stats.disk.fsyncs -= fsyncs_at_start;
    println!(
        "  {i} batches pushed in {seconds} s; {} fsyncs ({:.2}/s), {} lines written, {} B on disk at the end",
        stats.disk.fsyncs,
        stats.disk.fsyncs as f64 / seconds as f64,
        stats.lines_written,
        stats.disk.bytes
    );
    stats
}

async fn fsync_rates() {
    const SECONDS: u64 = 10;
    println!("fsyncs at the demo's load ({DEMO_BATCHES_PER_S} batches/s, sync_interval_ms 1000):");
    println!(" store away:");
    let d = dir();
    demo_load(
        format!("http://127.0.0.1:{}", servers::free_port()),
        d.path(),
        SECONDS,
    )
    .await;
    match servers::victoria_metrics() {
        Ok(vm) => {
            println!(" store up (VictoriaMetrics):");
            let d = dir();
            demo_load(vm.url(), d.path(), SECONDS).await;
        }
        Err(e) => println!(" store up: skipped, no VictoriaMetrics: {e}"),
    }
}

/// Fill the lane with a backlog while the store is away, then start VictoriaMetrics and
/// time the drain.
async fn drain_rate() {
    const BACKLOG: u64 = 100_000;
    let port = servers::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let d = dir();
    let filling = InfluxConfig {
        // Room in memory for the whole backlog while the writer stores it.
        queue_max_batches: BACKLOG as usize,
        ..config(url.clone())
    };
    let (sink, task) = InfluxSink::spawn(filling, d.path()).unwrap();
    let t0 = wall_ms() - BACKLOG as i64;
    for i in 0..BACKLOG {
        sink.push(batch(i, t0 + i as i64));
    }
    // Stopping stores what arrived and syncs; the server is away, so it stays on disk.
    drop(sink);
    let _ = tokio::time::timeout(Duration::from_secs(60), task).await;
    let vm = match tokio::task::spawn_blocking(move || servers::victoria_metrics_on(port))
        .await
        .unwrap()
    {
        Ok(vm) => vm,
        Err(e) => {
            println!("drain: skipped, no VictoriaMetrics: {e}");
            return;
        }
    };
    let start = Instant::now();
    let (sink, _task) = InfluxSink::spawn(config(vm.url()), d.path()).unwrap();
    // Written before the first body is cut: `queued` shows the restored backlog.
    let mut restored = sink.stats();
    while restored.queued == 0 && start.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(1)).await;
        restored = sink.stats();
    }
    println!(
        "drain: restarted on a backlog: {} batches, {} B on disk",
        restored.queued, restored.disk.bytes
    );
    loop {
        let s = sink.stats();
        if s.lines_written >= BACKLOG || start.elapsed() > Duration::from_secs(300) {
            let took = start.elapsed();
            println!(
                "drain: {} of {BACKLOG} batches from disk written to VictoriaMetrics in {took:?}: \
                 {:.0} lines/s (batch_max_lines 5000, one request at a time), {} B left on disk",
                s.lines_written,
                s.lines_written as f64 / took.as_secs_f64(),
                s.disk.bytes
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn main() {
    // `cargo bench` passes `--bench`; other arguments (filters) are ignored here.
    footprint();
    append_rate();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        fsync_rates().await;
        drain_rate().await;
    });
}
