//! The readings lane on a bad day, with real parts: the `shouwang-gateway` binary polling a
//! simulated Modbus device whose register counts the polls (so every reading has a value
//! of its own), writing to a real VictoriaMetrics that goes away.
//!
//! - The store is down for a while (90 s; an hour with `SHOUWANG_LONG_FAULTS=1`, see
//!   README), and the gateway is SIGKILLed and restarted in the middle of it: once the
//!   store is back, every reading the gateway took is stored, once per timestamp, without a
//!   gap. The recovery time (store up -> all readings stored) is printed.
//! - The readings queue is small: the store away fills it, the oldest readings are shed,
//!   counted in the metrics and raised as the gateway's `readings_shed` fault, and the
//!   newest are the ones stored.
//!
//! The store is stopped with SIGTERM, not SIGKILL: VictoriaMetrics keeps the last second or
//! so of what it acknowledged in memory, and a kill would lose that on its side (its docs
//! say so), which would make the count a test of VictoriaMetrics rather than of the gateway.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use shouwang_hil_tests::rig::{self, eventually, long_faults};
use shouwang_hil_tests::servers;
use shouwang_hil_tests::sim::SimDevice;
use shouwang_wire::Channel;

/// A device whose register 0 counts the requests it answers.
async fn counting_meter() -> SimDevice {
    let sim = SimDevice::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    sim.count_requests_in(Some(0));
    sim
}

/// A gateway polling one meter every 100 ms with `points` points on registers 0, 1, ...
/// (`c00`, `c01`, ...; one request each, in that order, so `c00` holds the number of the
/// poll's first request), writing to `store_url`, with metrics on `metrics_port`. `extra`
/// goes in `[influx]`.
fn config(
    gateway: &str,
    mqtt_port: u16,
    meter: std::net::SocketAddr,
    store_url: &str,
    metrics_port: u16,
    points: usize,
    extra: &str,
) -> String {
    let mut text = format!(
        r#"
[gateway]
id = "{gateway}"
community = "riverside"
data_dir = "data"

[mqtt]
port = {mqtt_port}
keep_alive_s = 2

[influx]
url = "{store_url}"
api = "v1"
db = "shouwang"
flush_interval_ms = 200
timeout_ms = 2000
{extra}

[metrics]
listen = "127.0.0.1:{metrics_port}"

[[devices]]
id = "meter-1"
kind = "meter"
building = "B1"
floor = "01"
unit = "01"
transport = "tcp"
address = "{meter}"
poll_interval_ms = 100
timeout_ms = 300
# Every poll reported: these tests count readings to see polls.
report_every_s = 0
"#
    );
    for i in 0..points {
        text.push_str(&format!(
            "\n[[devices.points]]\nname = \"c{i:02}\"\nregister = {i}\ntype = \"u16\"\n"
        ));
    }
    text
}

/// One metric of the gateway's `/metrics`, or `None` while it does not answer.
async fn metric(http: &reqwest::Client, port: u16, name: &str) -> Option<u64> {
    let text = http
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))?
        .parse()
        .ok()
}

/// The stored samples of point `c00`: timestamp -> every distinct value stored at it.
/// `None` when the store does not answer.
async fn stored(store_url: &str) -> Option<BTreeMap<i64, BTreeSet<u64>>> {
    let lines = servers::vm_export(
        store_url,
        r#"shouwang_reading_value{device="meter-1",point="c00"}"#,
    )
    .await
    .ok()?;
    let mut out: BTreeMap<i64, BTreeSet<u64>> = BTreeMap::new();
    for series in lines {
        let values = series["values"].as_array()?;
        let stamps = series["timestamps"].as_array()?;
        for (v, t) in values.iter().zip(stamps) {
            out.entry(t.as_i64()?)
                .or_default()
                .insert(v.as_f64()? as u64);
        }
    }
    Some(out)
}

/// The poll numbers in the store (1 for the first poll), from `c00` of a device read with
/// `points` requests per poll (the read planner coalesces contiguous points into one),
/// after checking that each timestamp holds one value and each value one
/// timestamp (a resend may store a sample twice, never a different one).
fn poll_numbers(samples: &BTreeMap<i64, BTreeSet<u64>>, points: u64) -> BTreeSet<u64> {
    let mut seen: BTreeMap<u64, i64> = BTreeMap::new();
    for (ts, values) in samples {
        assert_eq!(values.len(), 1, "timestamp {ts} holds {values:?}");
        for v in values {
            assert_eq!(
                (v - 1) % points,
                0,
                "c00 = {v} is not a poll's first request"
            );
            if let Some(other) = seen.insert(*v, *ts) {
                panic!("request {v} stored at {other} and at {ts}");
            }
        }
    }
    seen.into_keys().map(|v| (v - 1) / points + 1).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reading_taken_while_the_store_was_down_and_the_gateway_was_killed_is_stored_once_it_is_back()
 {
    let outage = if long_faults() {
        Duration::from_secs(3600)
    } else {
        Duration::from_secs(90)
    };
    let mut vm = servers::victoria_metrics().unwrap();
    let broker = servers::mosquitto().unwrap();
    let meter = counting_meter().await;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let metrics_port = servers::free_port();
    let cfg = config(
        "gw-r",
        broker.port(),
        meter.local_addr(),
        &vm.url(),
        metrics_port,
        1,
        "",
    );
    let mut gateway = rig::start_gateway_in(dir.clone(), &cfg).unwrap();
    let http = servers::http_client();

    // The path works.
    eventually("readings in the store", Duration::from_secs(30), || async {
        stored(&vm.url()).await.filter(|s| s.len() >= 5)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", gateway.log()));

    // The store goes away; the gateway is killed halfway through the outage and restarted.
    vm.stop().unwrap();
    let down = Instant::now();
    tokio::time::sleep(outage / 2).await;
    let before_kill = meter.requests_served();
    gateway.kill();
    let after_kill = meter.requests_served();
    let gateway = rig::start_gateway_in(dir.clone(), &cfg).unwrap();
    tokio::time::sleep(outage.saturating_sub(down.elapsed())).await;

    vm.start_again().unwrap();
    let up = Instant::now();
    let served_at_up = meter.requests_served();
    // Every poll served before the store came back is stored, except those the kill cut
    // off between the device's answer and the disk.
    let limit = if long_faults() {
        Duration::from_secs(600)
    } else {
        Duration::from_secs(60)
    };
    let polls = eventually(
        "every reading of the outage in the store",
        limit,
        || async {
            let polls = poll_numbers(&stored(&vm.url()).await?, 1);
            (polls.last().copied()? >= served_at_up).then_some(polls)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", gateway.log()));
    let recovery = up.elapsed();
    let first = *polls.first().unwrap();
    let last = *polls.last().unwrap();
    let missing: Vec<u64> = (first..=last).filter(|n| !polls.contains(n)).collect();
    println!(
        "store down {:?}, gateway SIGKILLed once: {} readings stored (polls {first} to {last}), \
         {} missing ({missing:?}, polls {before_kill}..={after_kill} were at the kill); \
         all stored {recovery:?} after the store came back",
        outage,
        polls.len(),
        missing.len(),
    );
    // At most the poll in flight and one pushed but not yet written when the kill came.
    assert!(
        missing
            .iter()
            .all(|n| (before_kill.saturating_sub(2)..=after_kill + 1).contains(n)),
        "readings missing outside the kill: {missing:?} (kill at polls {before_kill}..={after_kill})\n{}",
        gateway.log()
    );
    assert!(missing.len() <= 2, "{missing:?}");
    assert!(
        polls.len() as u64 > outage.as_secs() * 10 / 2,
        "too few polls stored: {}",
        polls.len()
    );
    let shed = metric(&http, metrics_port, "shouwang_influx_batches_shed_total").await;
    assert_eq!(shed, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_readings_queue_sheds_the_oldest_readings_counts_them_raises_readings_shed_and_keeps_the_newest()
 {
    let store_port = servers::free_port();
    let store_url = format!("http://127.0.0.1:{store_port}");
    let broker = servers::mosquitto().unwrap();
    let events = rig::Listener::start(
        broker.port(),
        &shouwang_wire::topic("riverside", "gw-s", Channel::Events),
    )
    .await
    .unwrap();
    let meter = counting_meter().await;
    let metrics_port = servers::free_port();
    // 20 lines a poll, about 3 KiB a batch: the smallest queue (64 KiB) fills in about 2 s.
    let cfg = config(
        "gw-s",
        broker.port(),
        meter.local_addr(),
        &store_url,
        metrics_port,
        20,
        "queue_max_bytes = 65536",
    );
    let gateway = rig::start_gateway(&cfg).unwrap();
    let http = servers::http_client();

    // No store yet: the queue fills, then sheds.
    eventually("readings shed", Duration::from_secs(30), || async {
        metric(&http, metrics_port, "shouwang_influx_batches_shed_total")
            .await
            .filter(|n| *n >= 10)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", gateway.log()));
    let raised = events
        .wait_for("the readings_shed fault", Duration::from_secs(10), |h| {
            let v: Value = serde_json::from_slice(&h.payload).ok()?;
            (v["rule"] == "readings_shed" && v["active"] == true).then_some(v)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", gateway.log()));
    assert_eq!(raised["class"], "fault", "{raised}");
    let bytes = metric(&http, metrics_port, "shouwang_influx_queue_bytes")
        .await
        .unwrap();
    assert!(bytes <= 65536, "{bytes} bytes on disk");

    // The store comes up: what the queue kept drains, oldest kept first.
    let _vm = tokio::task::spawn_blocking(move || servers::victoria_metrics_on(store_port))
        .await
        .unwrap()
        .unwrap();
    // The read planner reads the 20 contiguous registers in one request: the counter
    // grows by one per poll.
    let served_at_up = meter.requests_served();
    let polls = eventually("the queue drained", Duration::from_secs(60), || async {
        let polls = poll_numbers(&stored(&store_url).await?, 1);
        (polls.last().copied()? >= served_at_up).then_some(polls)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", gateway.log()));
    let first = *polls.first().unwrap();
    let last = *polls.last().unwrap();
    let shed = metric(&http, metrics_port, "shouwang_influx_batches_shed_total")
        .await
        .unwrap();
    let lines_shed = metric(&http, metrics_port, "shouwang_influx_lines_shed_total")
        .await
        .unwrap();
    println!(
        "queue of 64 KiB: {shed} batches ({lines_shed} lines) shed; polls {first} to {last} stored"
    );
    // The newest were kept, without a gap; everything before them was shed, and counted.
    assert_eq!(polls.len() as u64, last - first + 1, "a gap in {polls:?}");
    assert_eq!(lines_shed, shed * 20);
    // Poll 1 was the first; polls 1 to first-1 are the shed batches (all shed before the
    // store came up; the meter answered every poll).
    assert_eq!(first - 1, shed, "stored from poll {first}, {shed} shed");
}
