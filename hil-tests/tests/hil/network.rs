//! The delivery path when the network or the broker fails (issue 5), with real parts: the
//! `shouwang-gateway` and `shouwang-console` binaries, a real mosquitto, simulated Modbus
//! TCP devices, and a [`LinkProxy`] between the gateway and the broker.
//!
//! Each test changes alarms while something is broken and asserts what an operator sees once
//! it is mended: every transition on the board exactly once (the console keeps one row per
//! `event_id`, so a copy the gateway sent again is dropped there, while a transition sent
//! under two ids would show twice), in the order it happened, and the board in the state the
//! devices are in. Each prints how long recovery took.
//!
//! `SHOUWANG_LONG_FAULTS=1` ([`rig::long_faults`]) makes the cuts last an hour and the storms
//! two minutes. The drain harness (`#[ignore]`d) prints the backlog drain rate against the
//! live rate:
//! `cargo test -p shouwang-hil-tests --test hil -- network::drain --ignored --nocapture`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use shouwang_hil_tests::proxy::{LinkMode, LinkProxy};
use shouwang_hil_tests::rig::{self, eventually, long_faults};
use shouwang_hil_tests::servers;
use shouwang_hil_tests::sim::SimDevice;
use shouwang_wire::{AlarmEvent, Message};

/// Simulated smoke detectors with several points each, every point watched by its own rule:
/// `devices * points` alarms, which the test flips all together, one round at a time.
struct Building {
    gateway: String,
    sims: Vec<SimDevice>,
    points: u16,
    /// Rounds flipped so far. Each is one transition of every alarm: odd rounds raise,
    /// even ones clear, so after `n` rounds every alarm is active if `n` is odd.
    rounds: AtomicU64,
}

impl Building {
    async fn start(gateway: &str, devices: usize, points: u16) -> Arc<Building> {
        let mut sims = Vec::new();
        for _ in 0..devices {
            sims.push(
                SimDevice::start("127.0.0.1:0".parse().unwrap())
                    .await
                    .unwrap(),
            );
        }
        Arc::new(Building {
            gateway: gateway.to_string(),
            sims,
            points,
            rounds: AtomicU64::new(0),
        })
    }

    fn device_id(d: usize) -> String {
        format!("smoke-S{d}")
    }

    /// The gateway's config: the broker at `mqtt_port`, keep-alive `keep_alive_s` (the
    /// config's default when `None`), metrics on `metrics_port`.
    fn config(&self, mqtt_port: u16, keep_alive_s: Option<u64>, metrics_port: u16) -> String {
        let keep_alive = keep_alive_s
            .map(|s| format!("keep_alive_s = {s}\n"))
            .unwrap_or_default();
        let mut text = format!(
            r#"
[gateway]
id = "{gateway}"
community = "riverside"
data_dir = "data"

[mqtt]
port = {mqtt_port}
{keep_alive}
[metrics]
listen = "127.0.0.1:{metrics_port}"
"#,
            gateway = self.gateway,
        );
        for (d, sim) in self.sims.iter().enumerate() {
            text.push_str(&format!(
                r#"
[[devices]]
id = "{id}"
kind = "smoke"
building = "B{d}"
floor = "1"
unit = "01"
transport = "tcp"
address = "{addr}"
poll_interval_ms = 100
timeout_ms = 300
"#,
                id = Building::device_id(d),
                addr = sim.local_addr(),
            ));
            for p in 0..self.points {
                text.push_str(&format!(
                    "\n[[devices.points]]\nname = \"p{p}\"\nregister = {p}\ntype = \"u16\"\n"
                ));
            }
        }
        for p in 0..self.points {
            text.push_str(&format!(
                r#"
[[rules]]
id = "r{p}"
device_kind = "smoke"
point = "p{p}"
class = "alarm"
priority = "high"
above = 0.5
message = "Smoke detected"
"#
            ));
        }
        text
    }

    fn alarm_ids(&self) -> Vec<String> {
        (0..self.sims.len())
            .flat_map(|d| {
                (0..self.points).map(move |p| {
                    format!("riverside:{}:{}:r{p}", self.gateway, Building::device_id(d))
                })
            })
            .collect()
    }

    fn alarms(&self) -> u64 {
        self.sims.len() as u64 * u64::from(self.points)
    }

    fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::SeqCst)
    }

    /// Flip every alarm once, and return once every device has been polled whole since:
    /// the gateway saw each change, so each is exactly one transition (none merged away).
    async fn flip(&self) {
        let round = self.rounds() + 1;
        let value = u16::from(round % 2 == 1);
        let before: Vec<u64> = self.sims.iter().map(SimDevice::requests_served).collect();
        for sim in &self.sims {
            for p in 0..self.points {
                sim.set_u16(p, value);
            }
        }
        // The read planner reads a device's contiguous points in one request: 2 requests
        // after the change hold a whole poll that started after it (3 for margin).
        let need = 3;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self
            .sims
            .iter()
            .zip(&before)
            .all(|(sim, b)| sim.requests_served() >= b + need)
        {
            assert!(
                Instant::now() < deadline,
                "the gateway stopped polling the devices"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.rounds.store(round, Ordering::SeqCst);
    }

    /// Flip round after round for `length` (at least one round); the transitions made.
    async fn storm(self: Arc<Self>, length: Duration) -> u64 {
        let start = Instant::now();
        let rounds = self.rounds();
        loop {
            self.flip().await;
            if start.elapsed() >= length {
                return (self.rounds() - rounds) * self.alarms();
            }
        }
    }
}

/// The console's HTTP API, as the tests read it.
struct Board {
    http: reqwest::Client,
    url: String,
}

impl Board {
    fn of(console: &rig::ConsoleProc) -> Board {
        Board {
            http: servers::http_client(),
            url: console.url.clone(),
        }
    }

    async fn alarm(&self, alarm_id: &str) -> Option<Value> {
        self.http
            .get(format!("{}/api/alarms/{alarm_id}", self.url))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()
    }

    /// One counter of the console's `/metrics`.
    async fn metric(&self, name: &str) -> Option<u64> {
        metric(&self.http, &format!("{}/metrics", self.url), name).await
    }
}

/// One unlabelled value from a Prometheus text page.
async fn metric(http: &reqwest::Client, url: &str, name: &str) -> Option<u64> {
    let text = http.get(url).send().await.ok()?.text().await.ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

/// The gateway's `/metrics`.
struct GatewayMetrics {
    http: reqwest::Client,
    port: u16,
    url: String,
}

impl GatewayMetrics {
    fn on(port: u16) -> GatewayMetrics {
        GatewayMetrics {
            http: servers::http_client(),
            port,
            url: format!("http://127.0.0.1:{port}/metrics"),
        }
    }

    async fn get(&self, name: &str) -> Option<u64> {
        metric(&self.http, &self.url, name).await
    }
}

/// Everything one test runs: the broker, the console on it, the building and the gateway
/// (whose broker port may be a proxy's).
struct Site {
    console: rig::ConsoleProc,
    board: Board,
    building: Arc<Building>,
    gateway: rig::Proc,
    gateway_metrics: GatewayMetrics,
}

impl Site {
    async fn start(
        broker_port: u16,
        gateway_port: u16,
        keep_alive_s: Option<u64>,
        building: Arc<Building>,
    ) -> Site {
        let console = rig::start_console(broker_port).unwrap();
        let metrics_port = servers::free_port();
        let config = building.config(gateway_port, keep_alive_s, metrics_port);
        let gateway = rig::start_gateway(&config).unwrap();
        Site {
            board: Board::of(&console),
            console,
            building,
            gateway,
            gateway_metrics: GatewayMetrics::on(metrics_port),
        }
    }

    fn logs(&self) -> String {
        format!(
            "--- gateway\n{}\n--- console\n{}",
            self.gateway.log(),
            self.console.proc.log()
        )
    }

    /// Wait until the board holds every transition flipped so far: the console counts at
    /// least that many events (cheap to ask), then every alarm's history is that long.
    /// Returns the histories, in [`Building::alarm_ids`] order.
    async fn wait_all_on_board(&self, limit: Duration) -> Vec<Vec<Value>> {
        let rounds = self.building.rounds();
        let expected = rounds * self.building.alarms();
        let ids = self.building.alarm_ids();
        let what = format!("{expected} transitions ({rounds} per alarm) on the board");
        eventually(&what, limit, || async {
            let stored = self
                .board
                .metric("shouwang_console_alarm_events_stored_total")
                .await?;
            if stored < expected {
                return None;
            }
            let mut all = Vec::new();
            for id in &ids {
                let history = self.board.alarm(id).await?["history"].as_array()?.clone();
                if (history.len() as u64) < rounds {
                    return None;
                }
                all.push(history);
            }
            Some(all)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()))
    }

    /// Wait until the gateway holds nothing unconfirmed: it will send nothing more.
    async fn wait_gateway_drained(&self, limit: Duration) {
        eventually("the gateway's alarm queue empty", limit, || async {
            self.gateway_metrics
                .get("shouwang_gateway_alarm_queue_pending")
                .await
                .filter(|n| *n == 0)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()));
    }

    /// Every transition flipped so far is on the board once, in order, and the board shows
    /// each alarm as the devices are now. Call once the gateway is drained.
    async fn assert_exactly_once_in_order(&self) {
        let rounds = self.building.rounds();
        let active = rounds % 2 == 1;
        let mut expected: Vec<&str> = ["raised", "cleared"]
            .repeat(usize::try_from(rounds.div_ceil(2)).unwrap())
            .into_iter()
            .collect();
        expected.truncate(usize::try_from(rounds).unwrap());
        for id in self.building.alarm_ids() {
            let alarm = self
                .board
                .alarm(&id)
                .await
                .unwrap_or_else(|| panic!("{id} is not on the board\n{}", self.logs()));
            let history = alarm["history"].as_array().cloned().unwrap_or_default();
            rig::assert_each_transition_once(
                &history,
                &expected,
                &format!("{id}\n{}", self.logs()),
            );
            let state = if active {
                "unacknowledged"
            } else {
                "returned_unacknowledged"
            };
            assert_eq!(
                (alarm["active"].as_bool(), alarm["state"].as_str()),
                (Some(active), Some(state)),
                "{id}: the board shows what the device says"
            );
        }
    }

    async fn duplicates_dropped(&self) -> u64 {
        self.board
            .metric("shouwang_console_alarm_events_duplicate_total")
            .await
            .unwrap_or(0)
    }

    /// Wait until the gateway's metrics say the broker link is `up`; how long that took.
    async fn wait_link(&self, up: bool, limit: Duration) -> Duration {
        let start = Instant::now();
        let want = u64::from(up);
        eventually(
            &format!(
                "the gateway's broker link {}",
                if up { "up" } else { "down" }
            ),
            limit,
            || async {
                self.gateway_metrics
                    .get("shouwang_gateway_mqtt_connected")
                    .await
                    .filter(|v| *v == want)
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()));
        start.elapsed()
    }
}

/// How long after `since` the gateway's metrics first say its broker link is down, looked
/// at every 20 ms (two minutes at most: past that, the cut went unnoticed).
async fn link_down_after(metrics: GatewayMetrics, since: Instant) -> Duration {
    loop {
        if metrics.get("shouwang_gateway_mqtt_connected").await == Some(0) {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < Duration::from_secs(120),
            "the gateway did not notice the cut in two minutes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// First arrival of each event on the broker, per alarm, in (boot, seq) order: what the
/// console hears first is never older than what it heard before.
fn assert_first_arrivals_in_order(listener: &rig::Listener, alarm_ids: &[String]) {
    let heard: Vec<AlarmEvent> = listener
        .heard()
        .iter()
        .filter_map(|h| AlarmEvent::decode(&h.payload).ok())
        .collect();
    for id in alarm_ids {
        let mut seen = std::collections::HashSet::new();
        let firsts: Vec<(u64, u64)> = heard
            .iter()
            .filter(|e| &e.alarm_id == id && seen.insert(e.event_id.clone()))
            .map(|e| (e.boot, e.seq))
            .collect();
        assert!(
            firsts.windows(2).all(|w| w[0] < w[1]),
            "{id}: first arrivals out of order: {firsts:?}"
        );
    }
}

/// How long a cut lasts: a second or two, or an hour with `SHOUWANG_LONG_FAULTS=1`.
fn cut_length() -> Duration {
    if long_faults() {
        Duration::from_secs(3600)
    } else {
        Duration::ZERO
    }
}

/// How long a storm lasts.
fn storm_length() -> Duration {
    if long_faults() {
        Duration::from_secs(120)
    } else {
        Duration::from_secs(3)
    }
}

/// Cut the link between the gateway and the broker in `mode`, flip alarms during the cut,
/// mend it, and check that every transition reached the board once, in order.
async fn cut_and_mend(mode: LinkMode, gateway_id: &str, keep_alive_s: Option<u64>) {
    let broker = servers::mosquitto().unwrap();
    let link = LinkProxy::start(broker.addr()).await.unwrap();
    let listener = rig::Listener::start(
        broker.port(),
        &format!("shouwang/v1/riverside/{gateway_id}/events"),
    )
    .await
    .unwrap();
    let building = Building::start(gateway_id, 1, 2).await;
    let site = Site::start(broker.port(), link.port(), keep_alive_s, building.clone()).await;

    // The path works: a first raise of every alarm reaches the board.
    building.flip().await;
    site.wait_all_on_board(Duration::from_secs(30)).await;
    site.wait_gateway_drained(Duration::from_secs(10)).await;

    let accepted = link.accepted();
    link.set(mode);
    let cut = Instant::now();
    let link_down = tokio::spawn(link_down_after(
        GatewayMetrics::on(site.gateway_metrics.port),
        cut,
    ));
    // Two transitions of each alarm right away: in a black hole they are sent into it.
    building.flip().await;
    building.flip().await;
    // The gateway notices (it connects again).
    let noticed = eventually(
        "the gateway to notice the cut and connect again",
        Duration::from_secs(120),
        || async { (link.accepted() > accepted).then(|| cut.elapsed()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", site.logs()));
    let down = link_down.await.unwrap();
    println!(
        "{mode:?}: the gateway saw its broker link down {down:?} after the cut (keep-alive {}), and connected again after {noticed:?}",
        keep_alive_s.map_or("5 s, the default".to_string(), |s| format!("{s} s"))
    );
    // Three more while it is cut off, then the rest of the cut.
    for _ in 0..3 {
        building.flip().await;
    }
    let until = cut + cut_length();
    tokio::time::sleep_until(until.into()).await;
    link.set(LinkMode::Pass);
    let mended = Instant::now();
    let cut_for = cut.elapsed();

    site.wait_all_on_board(Duration::from_secs(60)).await;
    let on_board = mended.elapsed();
    site.wait_gateway_drained(Duration::from_secs(30)).await;
    println!(
        "{mode:?}: cut for {cut_for:?}, {} transitions during it; all {} on the board {on_board:?} after the link was mended, confirmed at the gateway after {:?}; {} duplicate copies dropped by the console",
        5 * building.alarms(),
        building.rounds() * building.alarms(),
        mended.elapsed(),
        site.duplicates_dropped().await,
    );
    site.assert_exactly_once_in_order().await;
    assert_first_arrivals_in_order(&listener, &building.alarm_ids());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transition_made_while_the_network_dropped_the_link_reaches_the_console_once_and_in_order()
 {
    cut_and_mend(LinkMode::Drop, "gw-nd", Some(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transition_made_while_the_link_was_a_black_hole_reaches_the_console_once_and_in_order()
 {
    // The default keep-alive (5 s): what an installed gateway does.
    cut_and_mend(LinkMode::BlackHole, "gw-nb", None).await;
}

/// A storm on 20 alarms with the broker killed (SIGKILL) in its middle and started again on
/// the same port: every transition on the board once.
async fn storm_through_a_broker_crash(mut broker: servers::Server, gateway_id: &str) {
    let port = broker.port();
    let building = Building::start(gateway_id, 4, 5).await;
    let site = Site::start(port, port, Some(2), building.clone()).await;
    building.flip().await;
    site.wait_all_on_board(Duration::from_secs(30)).await;
    site.wait_gateway_drained(Duration::from_secs(10)).await;

    let length = storm_length();
    let started = Instant::now();
    let storm = tokio::spawn(building.clone().storm(length));
    // A third into the storm the broker dies; a third later it is back.
    tokio::time::sleep(length / 3).await;
    broker.kill();
    let killed = Instant::now();
    let rounds_at_kill = building.rounds();
    tokio::time::sleep(length / 3).await;
    tokio::task::block_in_place(|| broker.start_again()).unwrap();
    let back = Instant::now();
    let transitions = storm.await.unwrap();
    let storm_took = started.elapsed();
    let storm_ended = Instant::now();

    site.wait_all_on_board(Duration::from_secs(60)).await;
    let on_board = Instant::now();
    site.wait_gateway_drained(Duration::from_secs(30)).await;
    println!(
        "storm of {transitions} transitions on {} alarms in {storm_took:?} ({:.0}/s); broker killed at round {rounds_at_kill}, down for {:?}; all on the board {:?} after the broker was back ({:?} after the storm ended); {} duplicate copies dropped by the console",
        building.alarms(),
        transitions as f64 / storm_took.as_secs_f64(),
        back - killed,
        on_board - back,
        on_board.saturating_duration_since(storm_ended),
        site.duplicates_dropped().await,
    );
    site.assert_exactly_once_in_order().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_storm_through_a_broker_killed_without_persistence_reaches_the_console_once() {
    let broker = servers::mosquitto_in_memory().unwrap();
    storm_through_a_broker_crash(broker, "gw-sm").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_storm_through_a_broker_killed_with_persistence_reaches_the_console_once() {
    // Saving every second: the broker comes back with the console's session and part of
    // what it had queued for it, so the console hears some events twice.
    let broker = servers::mosquitto_saving_every(1).unwrap();
    storm_through_a_broker_crash(broker, "gw-sp").await;
}

/// Samples of (time since the link came back, console events stored, gateway first sends
/// and resends, gateway events confirmed), every 10 ms until the console holds `n` more.
async fn drain_samples(
    site: &Site,
    base_stored: u64,
    base_sends: u64,
    base_confirmed: u64,
    n: u64,
    since: Instant,
) -> Vec<(Duration, u64, u64, u64)> {
    let mut samples = Vec::new();
    let deadline = since + Duration::from_secs(600);
    loop {
        let stored = site
            .board
            .metric("shouwang_console_alarm_events_stored_total")
            .await
            .unwrap_or(base_stored);
        let sends = site
            .gateway_metrics
            .get("shouwang_gateway_alarm_sends_total")
            .await
            .unwrap_or(base_sends);
        let confirmed = site
            .gateway_metrics
            .get("shouwang_gateway_alarm_events_confirmed_total")
            .await
            .unwrap_or(base_confirmed);
        samples.push((
            since.elapsed(),
            stored.saturating_sub(base_stored),
            sends.saturating_sub(base_sends),
            confirmed.saturating_sub(base_confirmed),
        ));
        if stored >= base_stored + n && confirmed >= base_confirmed + n {
            return samples;
        }
        assert!(
            Instant::now() < deadline,
            "the backlog did not drain in 10 min: {:?}\n{}",
            samples.last(),
            site.logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// When a column of the samples first reached `n`.
fn reached(samples: &[(Duration, u64, u64, u64)], n: u64, column: usize) -> Option<Duration> {
    samples
        .iter()
        .find(|s| [s.1, s.2, s.3][column] >= n)
        .map(|s| s.0)
}

/// An alarm event of a made-up gateway `gw-direct`, one of 50 alarms, alternately raised
/// and cleared: what a gateway sends, without a gateway's pacing.
fn direct_event(i: u64) -> Vec<u8> {
    let raised = (i / 50).is_multiple_of(2);
    let alarm = i % 50;
    let event = serde_json::json!({
        "schema": 1, "event_id": format!("direct-{}-{i}", std::process::id()), "boot": 1,
        "seq": i + 1, "alarm_id": format!("riverside:gw-direct:smoke-D{alarm}:r0"),
        "gateway": "gw-direct", "device": format!("smoke-D{alarm}"), "device_kind": "smoke",
        "point": "p0", "rule": "r0", "class": "alarm", "priority": "high",
        "transition": if raised { "raised" } else { "cleared" },
        "state": if raised { "unacknowledged" } else { "returned_unacknowledged" },
        "active": raised, "value": if raised { 1.0 } else { 0.0 }, "engineering_unit": null,
        "place": {"community": "riverside", "building": "B1", "floor": "1", "unit": "01"},
        "message": "Smoke detected", "ts_ms": rig::wall_ms(), "operator": null,
    });
    let bytes = serde_json::to_vec(&event).unwrap();
    AlarmEvent::decode(&bytes).expect("a valid alarm event");
    bytes
}

/// The console's own ingest rate: `n` events published straight to the broker as fast as
/// a QoS 1 client can, and how long until the console stored them all: (published, stored).
/// `Err` says how far it got if it stalls (no new event stored for 20 s). Keep `n` under
/// mosquitto's `max_queued_messages` (1000 per client by default): past it the broker drops
/// what the console has not taken yet, and this publisher, unlike a gateway, never resends.
async fn console_capacity(
    broker_port: u16,
    console: &rig::ConsoleProc,
    n: u64,
) -> Result<(Duration, Duration), String> {
    let board = Board::of(console);
    let publisher = rig::Listener::start(broker_port, "shouwang/v1/riverside/gw-direct/receipts")
        .await
        .unwrap();
    let stored = "shouwang_console_alarm_events_stored_total";
    let base = board.metric(stored).await.unwrap();
    let start = Instant::now();
    for i in 0..n {
        publisher
            .client
            .publish(
                "shouwang/v1/riverside/gw-direct/events",
                rumqttc::QoS::AtLeastOnce,
                false,
                direct_event(i),
            )
            .await
            .unwrap();
    }
    let published = start.elapsed();
    let (mut last, mut moved) = (0, Instant::now());
    loop {
        let now = board.metric(stored).await.unwrap_or(base) - base;
        if now >= n {
            return Ok((published, start.elapsed()));
        }
        if now > last {
            (last, moved) = (now, Instant::now());
        } else if moved.elapsed() > Duration::from_secs(20) {
            let log = console.proc.log();
            // Is it deaf, or were the rest lost on the way? One more event tells.
            publisher
                .client
                .publish(
                    "shouwang/v1/riverside/gw-direct/events",
                    rumqttc::QoS::AtLeastOnce,
                    false,
                    direct_event(n),
                )
                .await
                .unwrap();
            let heard = eventually("one more event", Duration::from_secs(10), || async {
                (board.metric(stored).await? > base + now).then_some(())
            })
            .await
            .is_ok();
            return Err(format!(
                "the console stalled: {now} of {n} events stored {:?} after the burst began, none for 20 s; one more event published then was {}; \"cannot queue the ack\" {} times in its log's tail:\n{log}",
                start.elapsed(),
                if heard {
                    "stored"
                } else {
                    "not stored within 10 s"
                },
                log.matches("cannot queue the ack").count(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check: prints the backlog drain rate against the live rate"]
async fn drain_rate_of_a_backlog_against_the_live_rate() {
    let backlog: u64 = std::env::var("SHOUWANG_DRAIN_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let broker = servers::mosquitto().unwrap();
    let link = LinkProxy::start(broker.addr()).await.unwrap();
    // 50 alarms: 5 detectors of 10 points.
    let building = Building::start("gw-dr", 5, 10).await;
    let site = Site::start(broker.port(), link.port(), Some(2), building.clone()).await;
    building.flip().await;
    site.wait_all_on_board(Duration::from_secs(30)).await;
    site.wait_gateway_drained(Duration::from_secs(10)).await;

    // Live: a storm with the link up. Its rate at the devices, and how far the console
    // lags behind it.
    let live_rounds = 20;
    let start = Instant::now();
    for _ in 0..live_rounds {
        building.flip().await;
    }
    let storm_took = start.elapsed();
    site.wait_all_on_board(Duration::from_secs(120)).await;
    let live_on_board = start.elapsed();
    site.wait_gateway_drained(Duration::from_secs(60)).await;
    let live_events = live_rounds * building.alarms();
    let live_rate = live_events as f64 / storm_took.as_secs_f64();
    let live_console_rate = live_events as f64 / live_on_board.as_secs_f64();

    // Backlog: the same storm with the link dropped, until `backlog` events wait.
    link.set(LinkMode::Drop);
    site.wait_link(false, Duration::from_secs(10)).await;
    let rounds = backlog.div_ceil(building.alarms());
    let start = Instant::now();
    for _ in 0..rounds {
        building.flip().await;
    }
    let backlog_took = start.elapsed();
    let n = rounds * building.alarms();
    let base_stored = site
        .board
        .metric("shouwang_console_alarm_events_stored_total")
        .await
        .unwrap();
    let base_sends = site
        .gateway_metrics
        .get("shouwang_gateway_alarm_sends_total")
        .await
        .unwrap();
    let base_confirmed = site
        .gateway_metrics
        .get("shouwang_gateway_alarm_events_confirmed_total")
        .await
        .unwrap();
    let pending = site
        .gateway_metrics
        .get("shouwang_gateway_alarm_queue_pending")
        .await
        .unwrap();

    link.set(LinkMode::Pass);
    let mended = Instant::now();
    let samples = drain_samples(&site, base_stored, base_sends, base_confirmed, n, mended).await;
    site.wait_all_on_board(Duration::from_secs(60)).await;
    site.wait_gateway_drained(Duration::from_secs(60)).await;
    site.assert_exactly_once_in_order().await;

    let drained = samples.last().map(|s| s.0).unwrap_or_default();
    let first = reached(&samples, 1, 0).unwrap_or_default();
    let sent = reached(&samples, n, 1).unwrap_or_default();
    let stored = reached(&samples, n, 0).unwrap_or_default();
    let drain_rate = n as f64 / stored.as_secs_f64().max(0.001);
    let steady_rate = n as f64 / (stored - first).as_secs_f64().max(0.001);
    println!(
        "drain harness: {} alarms, backlog of {n} events",
        building.alarms()
    );
    println!(
        "  live storm: {live_events} transitions in {storm_took:?} = {live_rate:.0}/s at the devices; all on the board after {live_on_board:?} = {live_console_rate:.0}/s at the console"
    );
    println!(
        "  backlog built in {backlog_took:?} with the link dropped; gateway pending: {pending}"
    );
    println!(
        "  link mended: first backlog event stored after {first:?}; gateway sent {n} (first sends and resends) by {sent:?}; console stored all {n} by {stored:?}; gateway confirmed all by {drained:?}"
    );
    println!(
        "  drain rate at the console: {drain_rate:.0} events/s from the mend ({steady_rate:.0}/s from the first stored) = {:.1}x the live storm rate ({:.1}x the console's live rate); goal >= 20x",
        drain_rate / live_rate,
        drain_rate / live_console_rate
    );
    println!(
        "  gateway sends per backlog event: {:.2}; console duplicates dropped: {}",
        samples.last().map(|s| s.2).unwrap_or(0) as f64 / n as f64,
        site.duplicates_dropped().await
    );
    let burst = n.min(900);
    match console_capacity(broker.port(), &site.console, burst).await {
        Ok((published, stored_all)) => println!(
            "  the console alone: {burst} events published straight to the broker in {published:?}, all stored after {stored_all:?} = {:.0} events/s; \"cannot queue the ack\" {} times in its log's tail",
            burst as f64 / stored_all.as_secs_f64(),
            site.console
                .proc
                .log()
                .matches("cannot queue the ack")
                .count()
        ),
        Err(e) => println!("  the console alone: {}", e.lines().next().unwrap_or("")),
    }
    // A coarse time line, one line per 250 ms: where the events are.
    let mut next = Duration::ZERO;
    for (t, stored, sends, confirmed) in &samples {
        if *t >= next {
            println!(
                "  t={:>6.2}s console stored {stored:>5}  gateway sends {sends:>5}  confirmed {confirmed:>5}",
                t.as_secs_f64()
            );
            next += Duration::from_millis(250);
        }
    }
}
