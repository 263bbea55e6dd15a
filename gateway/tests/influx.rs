//! The line-protocol writer against real servers: VictoriaMetrics (v1 and v2 write APIs)
//! and InfluxDB 1.x. Every wait is for a condition, with a deadline.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use shouwang_gateway::sinks::influx::{InfluxApi, InfluxConfig, InfluxSink, InfluxStats};
use shouwang_hil_tests::servers::{self, Server};
use shouwang_wire::{Place, PointValue, ReadingBatch};

const DEADLINE: Duration = Duration::from_secs(30);

/// Labels of one series, values, timestamps.
type Series = (BTreeMap<String, String>, Vec<f64>, Vec<i64>);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn place(community: &str, building: &str, floor: &str, room: &str) -> Place {
    Place {
        community: community.into(),
        building: building.into(),
        floor: floor.into(),
        room: room.into(),
        ..Place::default()
    }
}

fn batch(
    device: &str,
    kind: &str,
    place: Place,
    ts_ms: i64,
    points: &[(&str, f64)],
) -> ReadingBatch {
    ReadingBatch {
        schema: ReadingBatch::SCHEMA,
        gateway: "gw-b1".into(),
        device: device.into(),
        device_kind: kind.into(),
        place,
        ts_ms,
        points: points
            .iter()
            .map(|(p, v)| PointValue {
                point: (*p).into(),
                value: Some(*v),
                engineering_unit: None,
                quality: Default::default(),
            })
            .collect(),
    }
}

fn v1(url: String, db: &str) -> InfluxConfig {
    InfluxConfig {
        db: Some(db.into()),
        flush_interval_ms: 50,
        ..InfluxConfig::new(url, InfluxApi::V1)
    }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect()
}

/// Await `probe` returning `Some`, polling until the deadline.
async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn stats_until(
    sink: &InfluxSink,
    what: &str,
    cond: impl Fn(&InfluxStats) -> bool,
) -> InfluxStats {
    eventually(what, || {
        let s = sink.stats();
        let hit = cond(&s).then_some(s);
        async move { hit }
    })
    .await
}

/// Every value series VictoriaMetrics has (`shouwang_reading_value`; each line's quality is
/// `shouwang_reading_quality`, checked on its own), sorted by labels.
async fn vm_export(vm_url: &str) -> Vec<Series> {
    let lines = servers::vm_export(vm_url, r#"{__name__="shouwang_reading_value"}"#)
        .await
        .unwrap_or_default();
    let mut series: Vec<Series> = lines
        .iter()
        .map(|v| {
            let labels = v["metric"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect();
            let values = v["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            let ts = v["timestamps"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_i64().unwrap())
                .collect();
            (labels, values, ts)
        })
        .collect();
    series.sort_by(|a, b| a.0.cmp(&b.0));
    series
}

/// Wait until VictoriaMetrics has `n` series with `n_points` points in all.
async fn vm_series(vm_url: &str, n: usize, n_points: usize) -> Vec<Series> {
    eventually(
        &format!("{n} series with {n_points} points in VictoriaMetrics"),
        || async {
            let s = vm_export(vm_url).await;
            let points: usize = s.iter().map(|(_, v, _)| v.len()).sum();
            (s.len() == n && points == n_points).then_some(s)
        },
    )
    .await
}

async fn influx_query(server: &Server, db: &str, q: &str) -> Value {
    let mut url = reqwest::Url::parse(&format!("{}/query", server.url())).unwrap();
    url.query_pairs_mut()
        .append_pair("db", db)
        .append_pair("epoch", "ms")
        .append_pair("q", q);
    let resp = servers::http_client().get(url).send().await.unwrap();
    resp.json().await.unwrap()
}

/// The tags every documented reading carries, as VictoriaMetrics labels.
fn expected(b: &ReadingBatch, point: &str, extra: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut l = labels(&[
        ("__name__", "shouwang_reading_value"),
        ("area", &b.place.area),
        ("building", &b.place.building),
        ("community", &b.place.community),
        ("device", &b.device),
        ("device_kind", &b.device_kind),
        ("entrance", &b.place.entrance),
        ("floor", &b.place.floor),
        ("gateway", &b.gateway),
        ("grid", &b.place.grid),
        ("point", point),
        ("room", &b.place.room),
    ]);
    l.retain(|_, v| !v.is_empty());
    l.extend(labels(extra));
    l
}

#[tokio::test]
async fn readings_reach_victoria_metrics_over_the_v1_api_with_every_tag() {
    let vm = servers::victoria_metrics().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (sink, _task) = InfluxSink::spawn(v1(vm.url(), "shouwang"), dir.path()).unwrap();
    let t0 = now_ms() - 10_000;
    let mut smoke = batch(
        "smoke-1",
        "smoke",
        place("Riverside Gardens, Phase 2", "B=1", "12", "03"),
        t0,
        &[("obscuration", 1.5), ("alarm", 3.0), ("broken", f64::NAN)],
    );
    smoke.place.grid = "G2".into();
    smoke.place.entrance = "3".into();
    // Names are for people: never labels.
    smoke.place.names.building = "1号楼".into();
    smoke.place.names.entrance = "3单元".into();
    // No floor and no room: those tags are left out rather than sent empty.
    let mut door = batch(
        "door-7",
        "door",
        place("riverside", "B1", "", ""),
        t0 + 1000,
        &[("open", 0.0)],
    );
    door.place.area = "lobby".into();
    sink.push(smoke.clone());
    sink.push(door.clone());

    let series = vm_series(&vm.url(), 3, 3).await;
    let db = [("db", "shouwang")];
    let mut want: Vec<Series> = vec![
        (expected(&smoke, "obscuration", &db), vec![1.5], vec![t0]),
        (expected(&smoke, "alarm", &db), vec![3.0], vec![t0]),
        (expected(&door, "open", &db), vec![0.0], vec![t0 + 1000]),
    ];
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(series, want);
    assert!(
        !series
            .iter()
            .any(|(l, _, _)| l.contains_key("floor") && l["device"] == "door-7")
    );

    let stats = stats_until(&sink, "3 lines written", |s| s.lines_written == 3).await;
    assert_eq!(
        (
            stats.values_skipped,
            stats.write_errors,
            stats.batches_dropped,
            stats.queued
        ),
        (1, 0, 0, 0)
    );
}

#[tokio::test]
async fn backslashes_and_separators_in_names_arrive_unchanged_in_victoria_metrics() {
    let vm = servers::victoria_metrics().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (sink, _task) = InfluxSink::spawn(v1(vm.url(), "shouwang"), dir.path()).unwrap();
    let t0 = now_ms() - 10_000;
    let names = [
        r"c:\temp",
        r"end\",
        r"two\\slashes",
        r"x\,y",
        "a b=c,d",
        "楼 1",
    ];
    let points: Vec<(&str, f64)> = names.iter().map(|n| (*n, 1.0)).collect();
    let b = batch(
        "odd",
        "test",
        place(r"comm\", "B 1", r"F\2", "u=1"),
        t0,
        &points,
    );
    sink.push(b.clone());

    let series = vm_series(&vm.url(), names.len(), names.len()).await;
    let got: Vec<&BTreeMap<String, String>> = series.iter().map(|(l, _, _)| l).collect();
    for name in names {
        let want = expected(&b, name, &[("db", "shouwang")]);
        assert!(
            got.contains(&&want),
            "{name:?} missing or changed; got {got:#?}"
        );
    }
}

#[tokio::test]
async fn readings_reach_victoria_metrics_over_the_v2_api() {
    let vm = servers::victoria_metrics().unwrap();
    let cfg = InfluxConfig {
        org: Some("estate".into()),
        bucket: Some("readings".into()),
        token: Some("vm-does-not-check-this".into()),
        flush_interval_ms: 50,
        ..InfluxConfig::new(vm.url(), InfluxApi::V2)
    };
    let dir = tempfile::tempdir().unwrap();
    let (sink, _task) = InfluxSink::spawn(cfg, dir.path()).unwrap();
    let t0 = now_ms() - 5_000;
    let leak = batch(
        "leak-3",
        "leak",
        place("riverside", "B2", "1", "01"),
        t0,
        &[("wet", 1.0)],
    );
    sink.push(leak.clone());

    let series = vm_series(&vm.url(), 1, 1).await;
    let (mut got, values, ts) = series.into_iter().next().unwrap();
    // VictoriaMetrics ignores org and bucket on /api/v2/write (1.79 adds no label for
    // them); should a later version map the bucket to its `db` label, it must be ours.
    if let Some(db) = got.remove("db") {
        assert_eq!(db, "readings");
    }
    assert_eq!(got, expected(&leak, "wet", &[]));
    assert_eq!((values, ts), (vec![1.0], vec![t0]));
}

#[tokio::test]
async fn readings_reach_influxdb_1_as_float_fields_with_every_tag() {
    let influx = servers::influxdb1().unwrap();
    servers::influx1_create_database(&influx, "shouwang")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (sink, _task) = InfluxSink::spawn(v1(influx.url(), "shouwang"), dir.path()).unwrap();
    let t0 = now_ms() - 10_000;
    let mut b = batch(
        "smoke-1",
        "smoke",
        place("Riverside Gardens, Phase 2", r"B1\F2", "12", "u=3"),
        t0,
        &[("alarm", 3.0), ("obscuration", 0.25)],
    );
    b.place.grid = "G2".into();
    b.place.entrance = "3".into();
    sink.push(b.clone());

    let result = eventually("2 rows in InfluxDB", || async {
        let r = influx_query(&influx, "shouwang", "SELECT * FROM shouwang_reading").await;
        let rows = r["results"][0]["series"][0]["values"].as_array()?.len();
        (rows == 2).then_some(r)
    })
    .await;
    let series = &result["results"][0]["series"][0];
    let columns: Vec<&str> = series["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(
        columns,
        [
            "time",
            "building",
            "community",
            "device",
            "device_kind",
            "entrance",
            "floor",
            "gateway",
            "grid",
            "point",
            "quality",
            "room",
            "value"
        ]
    );
    let mut rows: Vec<Vec<Value>> = serde_json::from_value(series["values"].clone()).unwrap();
    rows.sort_by_key(|r| r[9].as_str().unwrap().to_string());
    // The tags, `quality` (a field, between `point` and `room`) left out.
    let tags = |r: &[Value]| -> Vec<String> {
        r[1..10]
            .iter()
            .chain(&r[11..12])
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    let want_tags = |point: &str| -> Vec<String> {
        [
            r"B1\F2",
            "Riverside Gardens, Phase 2",
            "smoke-1",
            "smoke",
            "3",
            "12",
            "gw-b1",
            "G2",
            point,
            "u=3",
        ]
        .map(String::from)
        .to_vec()
    };
    assert_eq!(rows.len(), 2);
    for (row, (point, value)) in rows.iter().zip([("alarm", 3.0), ("obscuration", 0.25)]) {
        assert_eq!(row[0].as_i64(), Some(t0), "{row:?}");
        assert_eq!(tags(row), want_tags(point), "{row:?}");
        // InfluxDB's JSON prints the float 3 as `3`; the field type is checked below.
        assert_eq!(row[12].as_f64(), Some(value), "{row:?}");
        assert_eq!(row[10].as_f64(), Some(0.0), "quality good: {row:?}");
    }

    // `3` without an integer suffix was stored as a float, so later 3.5s fit the same field.
    let fields = influx_query(&influx, "shouwang", "SHOW FIELD KEYS FROM shouwang_reading").await;
    assert_eq!(
        fields["results"][0]["series"][0]["values"],
        serde_json::json!([["quality", "float"], ["value", "float"]])
    );
}

#[tokio::test]
async fn readings_written_while_the_server_is_down_arrive_once_it_comes_up() {
    let port = servers::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let (sink, _task) = InfluxSink::spawn(v1(url.clone(), "shouwang"), dir.path()).unwrap();
    let t0 = now_ms() - 60_000;
    let b = |i: i64| {
        batch(
            "smoke-1",
            "smoke",
            place("riverside", "B1", "12", "03"),
            t0 + i * 1000,
            &[("obscuration", i as f64)],
        )
    };
    for i in 0..3 {
        sink.push(b(i));
    }
    let down = stats_until(&sink, "a failed write", |s| s.write_errors >= 1).await;
    assert_eq!((down.lines_written, down.queued), (0, 3));
    assert!(down.last_error.is_some());
    // More readings while it is still down queue behind the one being retried.
    for i in 3..5 {
        sink.push(b(i));
    }

    let _vm = tokio::task::spawn_blocking(move || servers::victoria_metrics_on(port))
        .await
        .unwrap()
        .unwrap();
    let series = vm_series(&url, 1, 5).await;
    let (_, values, ts) = &series[0];
    assert_eq!(values, &[0.0, 1.0, 2.0, 3.0, 4.0]);
    assert_eq!(ts, &(0..5).map(|i| t0 + i * 1000).collect::<Vec<_>>());

    let up = stats_until(&sink, "5 lines written", |s| s.lines_written == 5).await;
    assert_eq!(
        (up.batches_dropped, up.lines_rejected, up.queued),
        (0, 0, 0)
    );
}

#[tokio::test]
async fn a_missing_database_is_counted_and_named_and_its_readings_are_dropped() {
    let influx = servers::influxdb1().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (sink, _task) = InfluxSink::spawn(v1(influx.url(), "nodb"), dir.path()).unwrap();
    sink.push(batch(
        "smoke-1",
        "smoke",
        place("riverside", "B1", "12", "03"),
        now_ms(),
        &[("a", 1.0), ("b", 2.0)],
    ));

    let stats = stats_until(&sink, "a refused write", |s| s.write_errors >= 1).await;
    let error = stats.last_error.clone().unwrap();
    assert!(
        error.contains("database not found") && error.contains("nodb"),
        "{error}"
    );
    assert!(error.starts_with("HTTP 404"), "{error}");
    // Dropped, not retried: nothing is queued and nothing was written.
    assert_eq!(
        (
            stats.write_errors,
            stats.lines_rejected,
            stats.lines_written,
            stats.queued
        ),
        (1, 2, 0, 0)
    );
}

#[tokio::test]
async fn dropping_the_last_handle_writes_what_is_queued_before_the_task_ends() {
    let vm = servers::victoria_metrics().unwrap();
    let cfg = InfluxConfig {
        // Long enough that only the shutdown can be what sends it.
        flush_interval_ms: 600_000,
        ..v1(vm.url(), "shouwang")
    };
    let dir = tempfile::tempdir().unwrap();
    let (sink, task) = InfluxSink::spawn(cfg, dir.path()).unwrap();
    let t0 = now_ms() - 5_000;
    let other = sink.clone();
    sink.push(batch(
        "door-1",
        "door",
        place("riverside", "B1", "1", "01"),
        t0,
        &[("open", 1.0)],
    ));
    drop(sink);
    // One handle is still open: the task keeps waiting.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!task.is_finished());
    assert_eq!(other.stats().queued, 1);
    drop(other);
    tokio::time::timeout(DEADLINE, task).await.unwrap().unwrap();
    let series = vm_series(&vm.url(), 1, 1).await;
    assert_eq!(series[0].2, vec![t0]);
}

#[tokio::test]
async fn readings_left_on_disk_when_the_writer_stopped_are_sent_by_the_next_one() {
    let port = servers::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let t0 = now_ms() - 60_000;
    let b = |i: i64| {
        batch(
            "smoke-1",
            "smoke",
            place("riverside", "B1", "12", "03"),
            t0 + i * 1000,
            &[("obscuration", i as f64)],
        )
    };
    // The server is away; the writer stops with four batches it could not deliver.
    let (sink, task) = InfluxSink::spawn(v1(url.clone(), "shouwang"), dir.path()).unwrap();
    for i in 0..4 {
        sink.push(b(i));
    }
    stats_until(&sink, "a failed write", |s| s.write_errors >= 1).await;
    let before = sink.stats();
    assert!(before.disk.bytes > 0, "{before:?}");
    drop(sink);
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .unwrap()
        .unwrap();

    // The next writer on the same data directory sends them, with the new ones after.
    let _vm = tokio::task::spawn_blocking(move || servers::victoria_metrics_on(port))
        .await
        .unwrap()
        .unwrap();
    let (sink, _task) = InfluxSink::spawn(v1(url.clone(), "shouwang"), dir.path()).unwrap();
    sink.push(b(4));
    let series = vm_series(&url, 1, 5).await;
    let (_, values, ts) = &series[0];
    assert_eq!(values, &[0.0, 1.0, 2.0, 3.0, 4.0]);
    assert_eq!(ts, &(0..5).map(|i| t0 + i * 1000).collect::<Vec<_>>());
    let after = stats_until(&sink, "5 lines written", |s| s.lines_written == 5).await;
    assert_eq!((after.lines_abandoned, after.batches_shed), (0, 0));
}

#[tokio::test]
async fn a_reading_without_a_good_value_is_stored_as_its_quality_alone() {
    let vm = servers::victoria_metrics().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (sink, _task) = InfluxSink::spawn(v1(vm.url(), "shouwang"), dir.path()).unwrap();
    let t0 = now_ms() - 10_000;
    let mut b = batch(
        "pressure-1",
        "pressure",
        place("riverside", "B1", "B2", ""),
        t0,
        &[("pressure", 0.61), ("current", 0.0)],
    );
    b.points[1].value = None;
    b.points[1].quality = shouwang_wire::Quality::WireBreak;
    sink.push(b);
    let quality = eventually("two quality series", || async {
        let lines = servers::vm_export(&vm.url(), r#"{__name__="shouwang_reading_quality"}"#)
            .await
            .ok()?;
        let mut by_point: Vec<(String, f64)> = lines
            .iter()
            .map(|v| {
                (
                    v["metric"]["point"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    v["values"][0].as_f64().unwrap_or(-1.0),
                )
            })
            .collect();
        by_point.sort_by(|a, b| a.0.cmp(&b.0));
        (by_point.len() == 2).then_some(by_point)
    })
    .await;
    assert_eq!(
        quality,
        [("current".to_string(), 4.0), ("pressure".to_string(), 0.0)]
    );
    // Only the good reading has a value.
    let values = vm_export(&vm.url()).await;
    let points: Vec<&str> = values.iter().map(|s| s.0["point"].as_str()).collect();
    assert_eq!(points, ["pressure"]);
}
