//! Sensors that report by themselves over MQTT (NB-IoT smoke alarms relayed by a platform,
//! elevator monitoring terminals): every `transport = "mqtt"` device's JSON messages, turned
//! into [`PollOutcome`]s for the watch like any poll.
//!
//! [`decode`] is pure (a payload in, values and point faults or a [`Rejection`] out; the
//! payload read as [`json::Json`], borrowed from it), as is
//! [`topic`] (checks of topics and filters, whether two can meet, the trie that finds a
//! message's device); [`run`] is the one task with the sensor link's socket. It decides
//! nothing about alarms.
//!
//! # The link
//! - Its own rumqttc connection ([`SensorBroker`]: `[mqtt_sensors]`, by default the
//!   `[mqtt]` broker and account), client id `<gateway client id>-sensors`, a **clean
//!   session**: a message that the gateway cannot take is not handed back on every
//!   reconnect, and what sensors publish while the link is down is lost (their silence
//!   then counts towards `comm_lost`, which is the truth: the gateway did not hear them).
//! - QoS 1 subscriptions to every device's topic or filter, sent again on **every ConnAck**
//!   (a clean session, or a broker that restarted, has forgotten them), in SUBSCRIBE
//!   packets of at most [`SUBSCRIBE_BATCH`] topics and [`SUBSCRIBE_BATCH_BYTES`] of topics
//!   ([`subscribe_batches`]), so a SUBSCRIBE stays below the broker's packet limit even with
//!   topics as long as MQTT allows.
//! - Reconnects forever, [`RECONNECT_PAUSE`] apart; connection problems are logged when
//!   the link goes down, not on every failed attempt.
//! - Packets up to [`MAX_INCOMING_BYTES`] (1 MiB, like the broker link) are read; rumqttc
//!   drops the connection on a bigger one, so this is well above what is accepted as a
//!   sensor message ([`decode::MAX_PAYLOAD_BYTES`], 64 KiB): a large payload is rejected
//!   and counted, and the link stays up. Only one above 1 MiB, which a broker set up as
//!   `docs/mosquitto/` (`max_packet_size` 256 KiB) never delivers, costs a reconnect.
//!
//! - **Latency** depends on the broker too: one with Nagle's algorithm on (mosquitto's
//!   default, `set_tcp_nodelay false`) delivers the messages in bursts every ~18 ms once
//!   this link has sent its first keep-alive ping (Linux then acknowledges the stream late,
//!   and the broker holds each small message until the last one is acknowledged): up to
//!   19 ms on an alarm. `docs/mosquitto/shouwang.conf` turns it off; a platform's broker
//!   named in `[mqtt_sensors]` should too.
//!
//! # Messages
//! - A message is the device's whose topic or filter matches its topic ([`Routes::find`]):
//!   an exact topic is one hash lookup; only when that misses is the trie of filters walked
//!   (no allocation). The config check refuses two devices whose topics can both match one
//!   topic, so there is at most one such device.
//! - Accepted (a JSON object of at most 64 KiB on a device's topic): a `PollOutcome` for
//!   that device, stamped at receipt on the gateway's clocks. Each mapped point has its
//!   value or its [`PointFault`](super::PointFault) for this message (three in a row raise `point_fault`).
//!   The sensor's own timestamp (`timestamp_field`) replaces only the wall time written on
//!   readings and events; the monotonic time every rule and comm-loss runs on is always
//!   the receipt. Counted in `shouwang_gateway_sensor_messages_total`.
//! - With a `timestamp_field`, a report the sensor already made (the same timestamp and
//!   values again, or one overtaken by a newer report) has every point `stale`, and is no
//!   answer for comm loss ([`repeat`]); a sensor clock set back is followed after
//!   [`repeat::SET_BACK_AFTER`] such reports.
//! - Rejected (too large, binary, not JSON, not an object, retained, a topic no device's
//!   matches, which a broker can deliver when another subscription of the same client id
//!   overlaps, e.g. a bridge or a session taken over):
//!   counted in `shouwang_gateway_sensor_messages_rejected_total`, logged at most once per
//!   [`REJECT_LOG_EVERY`] with its topic, reason and how many were not logged since, and
//!   otherwise ignored. It is no answer from the device: a device that sends only garbage
//!   loses communication. Retained messages are skipped because they are stored values of
//!   unknown age (a broker hands them to every new subscription): taking one as a report
//!   would hide a dead sensor for `comm_loss_after_s` after every reconnect.
//! - **Communication loss** comes from the watch: a device silent for `comm_loss_after_s`
//!   (measured from the gateway's start for a device that never reported) raises
//!   `comm_lost` on the next tick; its next accepted message clears it.
//!
//! # Back-pressure
//! Outcomes go to the runtime loop's bounded poll channel with `send().await`: when the
//! loop falls behind, this task waits, rumqttc stops reading the socket and the broker
//! holds (or, for QoS 1 beyond its queue limits, drops) messages. Nothing is dropped here.
//! Waiting longer than [`stall_after`] makes the supervisor restart the task (a new
//! connection; the clean session loses what the broker held), and reports `task_failed`.
//!
//! # Left for later
//! One filter for many devices with a rule to tell them apart (a topic level or a JSON
//! field naming the device); per-reason rejection counters.

pub mod config;
pub mod decode;
pub mod json;
pub mod repeat;
pub mod topic;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, SubscribeFilter, SubscribeReasonCode,
};
use tokio::sync::mpsc;

use super::PollOutcome;
use crate::clock::Clock;
use crate::config::{Config, Transport};
use crate::metrics::Counters;
use crate::supervise::{Heartbeat, OnStall, Supervisor};
pub use config::SensorBroker;
use decode::{Rejection, SensorMap};
use topic::FilterTrie;

/// The supervised task's name.
pub const TASK: &str = "mqtt-sensors";
/// The largest packet the sensor link reads (see the module docs).
pub const MAX_INCOMING_BYTES: usize = crate::sinks::mqtt::MAX_INCOMING_BYTES;
/// Topics per SUBSCRIBE packet: 100 topics of up to a few hundred bytes stay far below the
/// broker's packet limit.
pub const SUBSCRIBE_BATCH: usize = 100;
/// Bytes of topics per SUBSCRIBE packet, for long topics: a packet of one topic of MQTT's
/// largest (64 KiB) still fits `docs/mosquitto/`'s `max_packet_size` of 256 KiB.
pub const SUBSCRIBE_BATCH_BYTES: usize = 64 * 1024;
/// The pause between connection attempts.
pub const RECONNECT_PAUSE: Duration = Duration::from_secs(1);
/// At most one log line about rejected messages per this long.
pub const REJECT_LOG_EVERY: Duration = Duration::from_secs(10);

/// One device's messages: where they go and how they are read.
#[derive(Debug, Clone)]
pub struct Route {
    /// Index into `Config::devices`.
    pub device: usize,
    pub map: SensorMap,
}

/// Every `mqtt` device's [`Route`] by its topic. Exact topics are one hash lookup per
/// message; patterns (`+`, `#`) are in a [`FilterTrie`] walked only when that lookup misses.
/// No topic matches two devices (the config check refuses it, and [`Routes::of`] leaves out
/// a device whose topic clashes with an earlier one's, for a config that was not checked).
#[derive(Debug, Default)]
pub struct Routes {
    exact: HashMap<String, Route>,
    patterns: FilterTrie<Route>,
    /// What to subscribe to: every device's topic or filter, sorted.
    filters: Vec<String>,
}

impl Routes {
    pub fn of(config: &Config) -> Routes {
        let mqtt = config
            .devices
            .iter()
            .enumerate()
            .filter(|(_, d)| d.transport == Transport::Mqtt);
        let clashing: HashSet<usize> = config::topic_clashes(mqtt.clone())
            .into_iter()
            .map(|c| c.device)
            .collect();
        let mut routes = Routes::default();
        for (i, d) in mqtt {
            let Some(filter) = &d.topic else { continue };
            // Refused by the config check: only an unchecked config gets here.
            let map = match SensorMap::from_device(d) {
                Ok(map) if !clashing.contains(&i) && topic::check(filter).is_ok() => map,
                Ok(_) => {
                    tracing::error!(device = %d.id, topic = %filter, "mqtt device skipped: its topic is refused by the config check");
                    continue;
                }
                Err(why) => {
                    tracing::error!(device = %d.id, error = %why, "mqtt device skipped");
                    continue;
                }
            };
            let route = Route { device: i, map };
            if topic::is_pattern(filter) {
                let _ = routes.patterns.insert(filter, route);
            } else {
                routes.exact.insert(filter.clone(), route);
            }
            routes.filters.push(filter.clone());
        }
        routes.filters.sort();
        routes
    }

    /// The route of a message's topic.
    pub fn find(&self, topic: &str) -> Option<&Route> {
        self.exact.get(topic).or_else(|| self.patterns.find(topic))
    }

    /// Every topic and filter to subscribe to, sorted.
    pub fn filters(&self) -> &[String] {
        &self.filters
    }
}

/// Whether the config has any `mqtt` device (then [`spawn`] starts the task).
pub fn wanted(config: &Config) -> bool {
    config
        .devices
        .iter()
        .any(|d| d.transport == Transport::Mqtt)
}

/// How long [`run`] may go without a beat before its supervisor restarts it: rumqttc wakes
/// it at least once per keep-alive (a ping), a connect attempt takes at most its 5 s
/// timeout plus our 1 s pause (as the broker link's).
pub fn stall_after(config: &Config) -> Duration {
    SensorBroker::of(config)
        .keep_alive
        .saturating_mul(3)
        .saturating_add(Duration::from_secs(10))
}

/// Start [`run`] under `supervisor` when the config has `mqtt` devices.
pub fn spawn(
    config: &Arc<Config>,
    clock: Clock,
    out: &mpsc::Sender<PollOutcome>,
    counters: &Arc<Counters>,
    supervisor: &Supervisor,
) -> Option<tokio::task::JoinHandle<()>> {
    if !wanted(config) {
        return None;
    }
    let (config, out, counters) = (config.clone(), out.clone(), counters.clone());
    Some(supervisor.spawn(
        TASK,
        stall_after(&config),
        OnStall::Restart,
        move |heartbeat| {
            run(
                config.clone(),
                clock,
                out.clone(),
                counters.clone(),
                heartbeat,
            )
        },
    ))
}

/// The sensor link's client and event loop, for `subscribes` SUBSCRIBE packets per ConnAck.
pub fn connection(broker: &SensorBroker, subscribes: usize) -> (AsyncClient, EventLoop) {
    let mut options = MqttOptions::new(broker.client_id.clone(), broker.host.clone(), broker.port);
    broker.auth.apply(&mut options);
    options.set_keep_alive(broker.keep_alive);
    // We only subscribe: the outgoing limit just has to fit a SUBSCRIBE of a full batch.
    options.set_max_packet_size(MAX_INCOMING_BYTES, MAX_INCOMING_BYTES);
    options.set_clean_session(true);
    // Room for every SUBSCRIBE of one ConnAck: they are queued with `try_subscribe_many`
    // from the loop that drains the channel, so they must never wait.
    let capacity = subscribes + 8;
    // Nagle off, like the broker link: its PINGREQs and the PUBACKs of QoS 1 sensor
    // messages go out at once. (The delay that matters here is the broker's own: see
    // "Latency" in the module docs.)
    shouwang_broker_auth::connect_without_delay(options, capacity)
}

/// `topics` in runs for one SUBSCRIBE each: at most [`SUBSCRIBE_BATCH`] topics and, unless
/// a run is a single topic, at most [`SUBSCRIBE_BATCH_BYTES`] of them.
pub fn subscribe_batches(topics: &[String]) -> Vec<&[String]> {
    let mut batches = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, topic) in topics.iter().enumerate() {
        let full = i - start == SUBSCRIBE_BATCH || bytes + topic.len() > SUBSCRIBE_BATCH_BYTES;
        if i > start && full {
            batches.push(&topics[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += topic.len();
    }
    if start < topics.len() {
        batches.push(&topics[start..]);
    }
    batches
}

/// The sensor link: connect, subscribe, turn each message into a [`PollOutcome`] on `out`.
/// Returns when `out` closes. Every call opens a new connection, so a restart gets one.
pub async fn run(
    config: Arc<Config>,
    clock: Clock,
    out: mpsc::Sender<PollOutcome>,
    counters: Arc<Counters>,
    heartbeat: Heartbeat,
) {
    let routes = Routes::of(&config);
    let broker = SensorBroker::of(&config);
    let topics = routes.filters();
    let batches = subscribe_batches(topics);
    let (client, mut events) = connection(&broker, batches.len());
    let mut reports = repeat::Reports::default();
    let mut rejects = RejectLog::default();
    let mut up = false;
    loop {
        heartbeat.beat();
        let event = events.poll().await;
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                up = true;
                tracing::info!(host = %broker.host, port = broker.port, topics = topics.len(), "sensor link connected; subscribing");
                for batch in &batches {
                    let filters = batch
                        .iter()
                        .map(|t| SubscribeFilter::new(t.clone(), QoS::AtLeastOnce));
                    if let Err(error) = client.try_subscribe_many(filters) {
                        tracing::error!(%error, "sensor link: cannot queue a subscription");
                    }
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let refused = ack
                    .return_codes
                    .iter()
                    .filter(|c| matches!(c, SubscribeReasonCode::Failure))
                    .count();
                if refused > 0 {
                    tracing::error!(
                        refused,
                        "the sensors' broker refused subscriptions: check the account's ACL (docs/mosquitto/acl)"
                    );
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let verdict = judge(&routes, &publish.topic, publish.retain, &publish.payload);
                match verdict {
                    Ok((device, reading)) => {
                        Counters::inc(&counters.sensor_messages);
                        let mut at = clock.now();
                        if let Some(ms) = reading.sensor_wall_ms {
                            at.wall_ms = ms;
                        }
                        let values = reports.judge(device, reading.sensor_wall_ms, reading.values);
                        let outcome = PollOutcome {
                            device,
                            at,
                            result: Ok(values),
                        };
                        if out.send(outcome).await.is_err() {
                            return;
                        }
                    }
                    Err(why) => {
                        Counters::inc(&counters.sensor_messages_rejected);
                        if let Some(unlogged) = rejects.note(Instant::now()) {
                            tracing::warn!(
                                topic = %publish.topic,
                                reason = %why,
                                kind = why.kind(),
                                not_logged_since = unlogged,
                                "sensor message ignored"
                            );
                        }
                    }
                }
            }
            Ok(_) => {}
            Err(error) => {
                if up {
                    tracing::warn!(%error, host = %broker.host, port = broker.port, "sensor link down; reconnecting every second");
                } else {
                    tracing::debug!(%error, "sensor link: connection attempt failed");
                }
                up = false;
                tokio::time::sleep(RECONNECT_PAUSE).await;
            }
        }
    }
}

/// One message: which device it is for and what it says, or why it is ignored.
pub fn judge(
    routes: &Routes,
    topic: &str,
    retain: bool,
    payload: &[u8],
) -> Result<(usize, decode::Reading), Rejection> {
    if retain {
        return Err(Rejection::Retained);
    }
    let route = routes.find(topic).ok_or(Rejection::UnknownTopic)?;
    Ok((route.device, route.map.read(payload)?))
}

/// Logs rejected messages at most once per [`REJECT_LOG_EVERY`].
#[derive(Debug, Default)]
pub struct RejectLog {
    last: Option<Instant>,
    /// Rejections not logged since the last line.
    unlogged: u64,
}

impl RejectLog {
    /// A rejection at `now`: `Some(rejections not logged since the last line)` when this
    /// one is to be logged.
    pub fn note(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < REJECT_LOG_EVERY => {
                self.unlogged += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.unlogged))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const CONFIG: &str = r#"
[gateway]
id = "gw-b1"
community = "riverside"
data_dir = "data"

[[devices]]
id = "smoke-1"
kind = "smoke"
building = "B1"
floor = "12"
unit = "03"
transport = "mqtt"
topic = "nbiot/smoke/1"
comm_loss_after_s = 5

[[devices.points]]
name = "obscuration"
json = "data.obscuration"
scale = 0.01

[[rules]]
id = "smoke-high"
device_kind = "smoke"
point = "obscuration"
class = "alarm"
priority = "high"
above = 2.5
deadband = 0.5
message = "Smoke detected"
"#;

    #[test]
    fn a_message_on_a_devices_topic_becomes_its_values() {
        let config = Config::from_toml_str(CONFIG, "c.toml").unwrap();
        let routes = Routes::of(&config);
        let (device, reading) = judge(
            &routes,
            "nbiot/smoke/1",
            false,
            br#"{"data":{"obscuration":310}}"#,
        )
        .unwrap();
        assert_eq!(device, 0);
        assert_eq!(reading.values.values, [("obscuration".to_string(), 3.1)]);
    }

    #[test]
    fn retained_messages_and_strangers_topics_are_rejected() {
        let config = Config::from_toml_str(CONFIG, "c.toml").unwrap();
        let routes = Routes::of(&config);
        let ok = br#"{"data":{"obscuration":310}}"#;
        assert_eq!(
            judge(&routes, "nbiot/smoke/1", true, ok).unwrap_err(),
            Rejection::Retained
        );
        assert_eq!(
            judge(&routes, "nbiot/smoke/2", false, ok).unwrap_err(),
            Rejection::UnknownTopic
        );
    }

    /// Three devices: an exact topic, a `+` filter and a `#` filter.
    fn patterns() -> Config {
        let lift = CONFIG
            .split("[[rules]]")
            .next()
            .unwrap()
            .split("[[devices]]")
            .nth(1)
            .unwrap();
        let device = |id: &str, topic: &str| {
            format!("[[devices]]{lift}")
                .replace("smoke-1", id)
                .replace("nbiot/smoke/1", topic)
        };
        let text = CONFIG.replace(
            "[[rules]]",
            &format!(
                "{}{}[[rules]]",
                device("lift-E12", "lift/E12/+/status"),
                device("smoke-2", "nbiot/smoke/2/#")
            ),
        );
        Config::from_toml_str(&text, "c.toml").unwrap()
    }

    #[test]
    fn a_message_goes_to_the_device_whose_filter_matches_its_topic() {
        let routes = Routes::of(&patterns());
        assert_eq!(
            routes.filters(),
            ["lift/E12/+/status", "nbiot/smoke/1", "nbiot/smoke/2/#"]
        );
        let ok = br#"{"data":{"obscuration":310}}"#;
        let device = |topic: &str| judge(&routes, topic, false, ok).map(|(d, _)| d);
        assert_eq!(device("nbiot/smoke/1"), Ok(0));
        assert_eq!(device("lift/E12/car/status"), Ok(1));
        assert_eq!(device("lift/E12/door/status"), Ok(1));
        assert_eq!(device("nbiot/smoke/2"), Ok(2));
        assert_eq!(device("nbiot/smoke/2/up/7"), Ok(2));
    }

    #[test]
    fn a_message_that_matches_no_device_is_rejected_as_an_unknown_topic() {
        let routes = Routes::of(&patterns());
        let ok = br#"{"data":{"obscuration":310}}"#;
        for stranger in [
            "lift/E12/car/alarm",
            "lift/E12/car/status/x",
            "lift/E13/car/status",
            "nbiot/smoke/1/x",
            "nbiot/smoke/3",
            "$SYS/broker/uptime",
        ] {
            assert_eq!(
                judge(&routes, stranger, false, ok).unwrap_err(),
                Rejection::UnknownTopic,
                "{stranger}"
            );
        }
    }

    #[test]
    fn an_unchecked_config_with_clashing_topics_routes_each_message_to_one_device_only() {
        let mut config = patterns();
        // What the check refuses: a fourth device whose filter meets the first's topic.
        let mut clash = config.devices[1].clone();
        clash.id = "clash".into();
        clash.topic = Some("nbiot/+/1".into());
        config.devices.push(clash);
        let routes = Routes::of(&config);
        assert!(!routes.filters().contains(&"nbiot/+/1".to_string()));
        let ok = br#"{"data":{"obscuration":310}}"#;
        assert_eq!(judge(&routes, "nbiot/smoke/1", false, ok).unwrap().0, 0);
        assert_eq!(
            judge(&routes, "nbiot/other/1", false, ok).unwrap_err(),
            Rejection::UnknownTopic
        );
    }

    #[test]
    fn subscriptions_go_in_packets_of_at_most_100_topics_or_64_kib() {
        let short: Vec<String> = (0..250).map(|i| format!("load/{i}")).collect();
        let sizes: Vec<usize> = subscribe_batches(&short).iter().map(|b| b.len()).collect();
        assert_eq!(sizes, [100, 100, 50]);
        let long: Vec<String> = ["a", "b", "c", "d"]
            .iter()
            .map(|c| c.repeat(40_000))
            .chain(["e".repeat(65_535), "f".into()])
            .collect();
        let sizes: Vec<usize> = subscribe_batches(&long).iter().map(|b| b.len()).collect();
        assert_eq!(sizes, [1, 1, 1, 1, 2]);
        assert!(subscribe_batches(&[]).is_empty());
    }

    #[test]
    fn rejections_are_logged_at_most_once_per_ten_seconds_with_how_many_were_not() {
        let mut log = RejectLog::default();
        let t0 = Instant::now();
        assert_eq!(log.note(t0), Some(0));
        assert_eq!(log.note(t0 + Duration::from_secs(1)), None);
        assert_eq!(log.note(t0 + Duration::from_secs(9)), None);
        assert_eq!(log.note(t0 + Duration::from_secs(10)), Some(2));
        assert_eq!(log.note(t0 + Duration::from_secs(11)), None);
    }

    #[test]
    fn the_sensor_link_uses_the_gateways_broker_and_account_unless_told_otherwise() {
        let config = Config::from_toml_str(CONFIG, "c.toml").unwrap();
        let broker = SensorBroker::of(&config);
        assert_eq!((broker.host.as_str(), broker.port), ("127.0.0.1", 1883));
        assert_eq!(broker.client_id, "shouwang-gateway-gw-b1-sensors");
        let other = CONFIG.replace(
            "[[devices]]",
            "[mqtt_sensors]\nhost = \"platform.example\"\nusername = \"sensors\"\npassword = \"s3cret\"\n\n[[devices]]",
        );
        let config = Config::from_toml_str(&other, "c.toml").unwrap();
        let broker = SensorBroker::of(&config);
        assert_eq!(
            (broker.host.as_str(), broker.port),
            ("platform.example", 1883)
        );
        assert_eq!(broker.auth.username.as_deref(), Some("sensors"));
        assert!(!format!("{config:?}").contains("s3cret"));
    }

    /// A device that never reports loses communication like one that stopped: the watch
    /// counts its silence from the gateway's start.
    #[test]
    fn a_sensor_that_never_reports_raises_comm_lost() {
        use crate::clock::Stamp;
        use crate::watch::Watch;
        let config = Config::from_toml_str(CONFIG, "c.toml").unwrap();
        let mut watch = Watch::new(&config, "boot".into(), 1).unwrap();
        assert!(watch.on_tick(Stamp::at(4_900)).is_empty());
        let events = watch.on_tick(Stamp::at(5_000));
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].alarm_id, "riverside:gw-b1:smoke-1:comm_lost");
        // Its first message clears it, and is read.
        let routes = Routes::of(&config);
        let (device, reading) = judge(
            &routes,
            "nbiot/smoke/1",
            false,
            br#"{"data":{"obscuration":20}}"#,
        )
        .unwrap();
        let report = watch.on_poll(&PollOutcome {
            device,
            at: Stamp::at(6_000),
            result: Ok(reading.values),
        });
        assert_eq!(report.events.len(), 1);
        assert_eq!(
            report.events[0].state,
            shouwang_rules::AlarmState::ReturnedUnacknowledged
        );
        assert!(report.readings.is_some());
    }
}
