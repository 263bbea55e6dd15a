//! The wire contract between Shouwang gateways and the console.
//!
//! Everything that crosses the MQTT broker is defined here and documented in
//! `docs/wire.md`; change both together. Each message has its own schema version
//! ([`Message::SCHEMA`], the version this build writes): alarm events, reading batches and
//! snapshots are at version 2 (the place of schema 2, see [`Place`]), the others at 1.
//! Receivers read every version from [`OLDEST_SCHEMA`] up to the one they write, a message
//! of an older version arriving in today's shape ([`Message::decode`]), and reject a newer
//! one with [`WireError::UnsupportedSchema`] instead of guessing.
//!
//! Identities: every [`AlarmEvent`] carries an `event_id` that is unique and stays the same
//! when the event is sent again, so receivers drop duplicates; every [`Command`] carries a
//! `command_id` that its [`CommandReply`] repeats.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use shouwang_rules::{AlarmState, Priority, SignalClass, TransitionKind};

mod place;
pub use place::{Level, MAX_NAME_CHARS, Place, PlaceNames, PlaceV1, forbidden_name_char};

/// The oldest schema version a receiver of this build reads, of every message.
pub const OLDEST_SCHEMA: u32 = 1;

/// The first two levels of every topic. The topic's `v1` is the topic layout's version, not
/// a message's schema: schema 2 changed no topic.
pub const TOPIC_ROOT: &str = "shouwang/v1";

/// The largest MQTT packet a Shouwang client publishes, whole (header, topic and payload).
/// The broker's `max_packet_size` must be at least this (docs/mosquitto/); a receiver must
/// accept at least this. Reading batches that would pass it are split
/// ([`ReadingBatch::split_to_fit`]); config checks keep every alarm event far below it
/// (see [`MAX_ID_CHARS`], [`MAX_NAME_CHARS`], [`MAX_TEXT_CHARS`]).
pub const MAX_PUBLISH_BYTES: usize = 256 * 1024;

/// The most characters of a community, gateway, device, rule or point id, or a place's id
/// at one level.
pub const MAX_ID_CHARS: usize = 64;

/// The most characters of a free text that travels in alarm events: a rule's message, an
/// engineering unit, an operator's name, a command id.
pub const MAX_TEXT_CHARS: usize = 1024;

/// Why a message or topic could not be understood.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("payload is not valid {kind} JSON: {source}")]
    Json {
        kind: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "{kind} has schema version {found}, this build reads versions {OLDEST_SCHEMA} to {newest}"
    )]
    UnsupportedSchema {
        kind: &'static str,
        found: u32,
        /// The newest version of this message this build reads.
        newest: u32,
    },
    #[error("topic {0:?} is not a Shouwang v1 topic (shouwang/v1/<community>/<gateway>/<channel>)")]
    Topic(String),
}

/// The channels under one gateway's topic prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// [`GatewayStatus`], retained; the last will sets it offline.
    Status,
    /// [`ReadingBatch`], QoS 0.
    Readings,
    /// [`AlarmEvent`], QoS 1.
    Events,
    /// [`Command`] to the gateway, QoS 1.
    Commands,
    /// [`CommandReply`] from the gateway, QoS 1.
    Replies,
    /// [`Receipt`] from the console to the gateway: which events it has stored. QoS 1.
    Receipts,
    /// [`Snapshot`] from the gateway: every alarm it has and its state. QoS 1.
    Snapshot,
}

impl Channel {
    pub const ALL: [Channel; 7] = [
        Channel::Status,
        Channel::Readings,
        Channel::Events,
        Channel::Commands,
        Channel::Replies,
        Channel::Receipts,
        Channel::Snapshot,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Status => "status",
            Channel::Readings => "readings",
            Channel::Events => "events",
            Channel::Commands => "commands",
            Channel::Replies => "replies",
            Channel::Receipts => "receipts",
            Channel::Snapshot => "snapshot",
        }
    }
}

/// `shouwang/v1/<community>/<gateway>/<channel>`.
pub fn topic(community: &str, gateway: &str, channel: Channel) -> String {
    format!("{TOPIC_ROOT}/{community}/{gateway}/{}", channel.as_str())
}

/// The filter a console uses to hear every gateway of every community on one channel.
pub fn topic_filter_all(channel: Channel) -> String {
    format!("{TOPIC_ROOT}/+/+/{}", channel.as_str())
}

/// A parsed topic: which community, which gateway, which channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicName {
    pub community: String,
    pub gateway: String,
    pub channel: Channel,
}

pub fn parse_topic(topic: &str) -> Result<TopicName, WireError> {
    let bad = || WireError::Topic(topic.to_string());
    let rest = topic
        .strip_prefix(TOPIC_ROOT)
        .and_then(|r| r.strip_prefix('/'))
        .ok_or_else(bad)?;
    let parts: Vec<&str> = rest.split('/').collect();
    let [community, gateway, channel] = parts.as_slice() else {
        return Err(bad());
    };
    if community.is_empty() || gateway.is_empty() {
        return Err(bad());
    }
    let channel = Channel::ALL
        .into_iter()
        .find(|c| c.as_str() == *channel)
        .ok_or_else(bad)?;
    Ok(TopicName {
        community: community.to_string(),
        gateway: gateway.to_string(),
        channel,
    })
}

/// A character that may not appear in a community, gateway, device or rule id, because ids
/// become MQTT topic levels and parts of alarm ids and URLs.
pub fn forbidden_id_char(id: &str) -> Option<char> {
    id.chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_' || *c == '.'))
}

/// `<community>:<gateway>:<device>:<rule>`: names one alarm for its whole life, unique
/// across every community a console watches.
pub fn alarm_id(community: &str, gateway: &str, device: &str, rule: &str) -> String {
    format!("{community}:{gateway}:{device}:{rule}")
}

/// The community and gateway that own an alarm id, i.e. where acknowledgements for it go.
pub fn alarm_owner(alarm_id: &str) -> Option<(&str, &str)> {
    let mut parts = alarm_id.split(':');
    let community = parts.next().filter(|c| !c.is_empty())?;
    let gateway = parts.next().filter(|g| !g.is_empty())?;
    Some((community, gateway))
}

/// One transition of one alarm, as the gateway reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlarmEvent {
    pub schema: u32,
    /// Unique per event and the same on every resend: receivers drop duplicates by it.
    pub event_id: String,
    /// The gateway's boot counter when the event happened: larger at every start of the
    /// gateway. With `seq`, orders every event of one gateway; never compare `ts_ms` for that.
    pub boot: u64,
    /// The event's number within its boot, from 1, one more for every event.
    pub seq: u64,
    /// `<community>:<gateway>:<device>:<rule>`, see [`alarm_id`].
    pub alarm_id: String,
    pub gateway: String,
    pub device: String,
    /// `smoke`, `leak`, `pressure`, `door`, ...
    pub device_kind: String,
    /// The point the rule watches; `None` for device-level faults such as comm loss.
    pub point: Option<String>,
    pub rule: String,
    pub class: SignalClass,
    pub priority: Priority,
    pub transition: TransitionKind,
    /// The alarm's state after this transition.
    pub state: AlarmState,
    /// Whether the condition is active after this transition.
    pub active: bool,
    /// The reading that caused the transition, in `engineering_unit`.
    pub value: Option<f64>,
    pub engineering_unit: Option<String>,
    pub place: Place,
    /// Human text for the board, e.g. "Smoke detected".
    pub message: String,
    /// When the transition happened at the gateway, ms since the Unix epoch (UTC), by the
    /// gateway's wall clock: for people to read. It may be wrong (a Pi without a battery
    /// clock) and is never used to order events: `(boot, seq)` is.
    pub ts_ms: i64,
    /// Who acknowledged, on `acknowledged` transitions.
    pub operator: Option<String>,
}

/// One poll of one device: the values of its points.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadingBatch {
    pub schema: u32,
    pub gateway: String,
    pub device: String,
    pub device_kind: String,
    pub place: Place,
    /// When the poll completed, ms since the Unix epoch (UTC).
    pub ts_ms: i64,
    pub points: Vec<PointValue>,
}

/// One point of a poll: its scaled value and how far to trust it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointValue {
    pub point: String,
    /// The value in `engineering_unit`; `null` when there is none to give (a wire break, a
    /// device that lost communication). A value of a quality other than `good` is not one
    /// to act on.
    pub value: Option<f64>,
    pub engineering_unit: Option<String>,
    /// `good` unless said otherwise (a schema 1 batch has only good values).
    #[serde(default, skip_serializing_if = "Quality::is_good")]
    pub quality: Quality,
}

impl PointValue {
    /// A good value.
    pub fn good(point: impl Into<String>, value: f64, engineering_unit: Option<String>) -> Self {
        PointValue {
            point: point.into(),
            value: Some(value),
            engineering_unit,
            quality: Quality::Good,
        }
    }

    /// The value, if it is good.
    pub fn good_value(&self) -> Option<f64> {
        self.value.filter(|_| self.quality.is_good())
    }
}

/// How far a reading can be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Quality {
    /// Read from the device, within its valid range.
    #[default]
    Good,
    /// Answered, but with a held value, not a fresh one: the device's alive counter has
    /// stopped, or a sensor's report repeats one already taken. No value.
    Stale,
    /// The device has not answered for its communication-loss window: no value.
    CommLost,
    /// The raw value is outside the range the device or its profile says is valid.
    OutOfRange,
    /// A 4-20 mA loop below its wire-break limit (3.6 mA): no value.
    WireBreak,
    /// The device refused the point or sent what does not decode (an exception, NaN, a
    /// quality flag the config does not call good).
    Bad,
}

impl Quality {
    pub fn is_good(&self) -> bool {
        *self == Quality::Good
    }

    /// The name on the wire (`comm-lost`).
    pub fn as_str(self) -> &'static str {
        match self {
            Quality::Good => "good",
            Quality::Stale => "stale",
            Quality::CommLost => "comm-lost",
            Quality::OutOfRange => "out-of-range",
            Quality::WireBreak => "wire-break",
            Quality::Bad => "bad",
        }
    }

    /// The number written to the time-series store (docs/line-protocol.md).
    pub fn code(self) -> u8 {
        match self {
            Quality::Good => 0,
            Quality::Stale => 1,
            Quality::CommLost => 2,
            Quality::OutOfRange => 3,
            Quality::WireBreak => 4,
            Quality::Bad => 5,
        }
    }
}

/// Whether a gateway is connected. Retained; the broker publishes the `offline` last will
/// when the gateway disappears without saying goodbye.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GatewayState {
    Online,
    Offline,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayStatus {
    pub schema: u32,
    pub gateway: String,
    pub community: String,
    pub state: GatewayState,
    /// ms since the Unix epoch; for the last will, when the gateway connected.
    pub ts_ms: i64,
    /// The gateway's software version.
    pub version: String,
}

/// What the console asks a gateway to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Acknowledge one alarm.
    Acknowledge {
        alarm_id: String,
        /// The alarm's event the operator saw. When given, the gateway refuses the
        /// acknowledgement if the alarm has had a newer event since (for example it cleared
        /// and was raised again), so nobody acknowledges an occurrence they have not seen.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event_id: Option<String>,
    },
    /// Send every alarm's latest event again (same `event_id`s). A console asks this when
    /// it hears a gateway come online, so a console that starts with an empty store still
    /// shows every alarm the gateway holds.
    Resync,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    pub schema: u32,
    /// Unique per command; the reply repeats it.
    pub command_id: String,
    /// Who asked, as shown in the alarm's history.
    pub operator: String,
    /// When the console sent it, by the console's clock.
    pub ts_ms: i64,
    /// How long the command holds, from `ts_ms`. A gateway refuses it once older than this
    /// (judged on the console's clock, as the gateway learns it from receipts), so an
    /// acknowledgement delayed in transit never acts on a screen the operator left long ago.
    /// Absent: no expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    #[serde(flatten)]
    pub action: Action,
}

/// How long the console's commands hold ([`Command::ttl_ms`]).
pub const COMMAND_TTL_MS: u64 = 30_000;

impl Command {
    /// How many ms past its expiry the command is, when the gateway's wall clock reads
    /// `gateway_wall_ms` and is `clock_offset_ms` behind the console's (console minus
    /// gateway), if known. `None`: not expired, or it cannot be judged (no expiry, or the
    /// offset is not known yet: the gateway's own clock may be years off).
    pub fn expired_by_ms(&self, gateway_wall_ms: i64, clock_offset_ms: Option<i64>) -> Option<i64> {
        let ttl = i64::try_from(self.ttl_ms?).unwrap_or(i64::MAX);
        let console_now = gateway_wall_ms.saturating_add(clock_offset_ms?);
        let late = console_now.saturating_sub(self.ts_ms).saturating_sub(ttl);
        (late > 0).then_some(late)
    }

    /// The first field of this command that is longer than the contract allows, with its
    /// length: such a command is refused, since its fields would be echoed into events and
    /// replies and could push them past [`MAX_PUBLISH_BYTES`].
    pub fn oversized_field(&self) -> Option<(&'static str, usize)> {
        let mut fields: Vec<(&'static str, &str, usize)> = vec![
            ("command_id", &self.command_id, MAX_TEXT_CHARS),
            ("operator", &self.operator, MAX_TEXT_CHARS),
        ];
        if let Action::Acknowledge { alarm_id, event_id } = &self.action {
            // An alarm id has four ids and three colons.
            fields.push(("alarm_id", alarm_id, 4 * MAX_ID_CHARS + 3));
            if let Some(seen) = event_id {
                fields.push(("event_id", seen, MAX_TEXT_CHARS));
            }
        }
        fields
            .into_iter()
            .map(|(name, value, max)| (name, value.chars().count(), max))
            .find(|(_, len, max)| len > max)
            .map(|(name, len, _)| (name, len))
    }
}

impl ReadingBatch {
    /// This batch as one or more batches whose encoding is at most `max_bytes` each: the
    /// points are split in order, and every part keeps the device, place and time. A single
    /// point too large on its own (impossible within the config's limits) stays alone in
    /// its part, for the caller to refuse and count.
    pub fn split_to_fit(self, max_bytes: usize) -> Vec<ReadingBatch> {
        if self.points.len() <= 1 || self.encode().len() <= max_bytes {
            return vec![self];
        }
        let mut right = self.clone();
        let mut left = self;
        right.points = left.points.split_off(left.points.len() / 2);
        let mut out = left.split_to_fit(max_bytes);
        out.extend(right.split_to_fit(max_bytes));
        out
    }
}

/// The gateway's answer to one [`Command`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandReply {
    pub schema: u32,
    pub command_id: String,
    pub gateway: String,
    pub ok: bool,
    /// Why the command was refused, when `ok` is false.
    pub error: Option<String>,
    pub ts_ms: i64,
}

/// One event, named by the order key the gateway gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventKey {
    pub boot: u64,
    pub seq: u64,
}

impl AlarmEvent {
    /// A well-formed event, for tests and examples: a high-priority smoke alarm raised on
    /// `alarm_id` (`community:gateway:device:rule`, whose parts fill the event's fields)
    /// at `(boot, seq)`, with event id `<boot>-<seq>`.
    pub fn example(alarm_id: &str, boot: u64, seq: u64) -> AlarmEvent {
        let mut parts = alarm_id.split(':');
        let mut part = || parts.next().unwrap_or_default().to_string();
        let (community, gateway, device, rule) = (part(), part(), part(), part());
        AlarmEvent {
            schema: AlarmEvent::SCHEMA,
            event_id: format!("{boot}-{seq}"),
            boot,
            seq,
            alarm_id: alarm_id.to_string(),
            gateway,
            device,
            device_kind: "smoke".into(),
            point: None,
            rule,
            class: SignalClass::Alarm,
            priority: Priority::High,
            transition: TransitionKind::Raised,
            state: AlarmState::Unacknowledged,
            active: true,
            value: Some(3.0),
            engineering_unit: None,
            place: Place {
                community,
                building: "B1".into(),
                floor: "1".into(),
                room: "1".into(),
                ..Place::default()
            },
            message: "Smoke".into(),
            ts_ms: 0,
            operator: None,
        }
    }

    pub fn key(&self) -> EventKey {
        EventKey {
            boot: self.boot,
            seq: self.seq,
        }
    }
}

/// The console's confirmation that it has stored events of one gateway (new ones and
/// duplicates alike). Only then does the gateway take them out of its durable queue: a
/// broker's PUBACK is not proof of delivery (it answers the same for a message it dropped).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    pub schema: u32,
    /// The gateway whose events these are (the topic names it too).
    pub gateway: String,
    /// The events stored, at most [`Receipt::MAX_EVENTS`].
    pub events: Vec<EventKey>,
    /// The console's wall clock when it sent this, ms since the Unix epoch: lets a gateway
    /// see how far off its own clock is.
    pub ts_ms: i64,
}

impl Receipt {
    /// The most events one receipt names (about 40 bytes each: well within one publish).
    pub const MAX_EVENTS: usize = 1000;
}

/// One part of a gateway's statement of every alarm it has, sent after its first full poll
/// cycle since it started and whenever the console asks for a resync. A receiver holds the
/// whole statement once it has parts `1..=parts` of one `snapshot_id`.
///
/// Every event up to `(boot, seq)` is reflected in it: an alarm with an event is listed with
/// its latest one in `events`; an alarm with none yet (normal since the gateway has known
/// it) is named in `quiet`. An alarm of this gateway that is in neither list of any part is
/// no longer in its config. A receiver reconciles only what it holds from before
/// `(boot, seq)`, so an event newer than the snapshot is never undone by it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    pub schema: u32,
    pub gateway: String,
    /// Unique per snapshot; its parts share it.
    pub snapshot_id: String,
    /// This part's number, from 1.
    pub part: u32,
    /// How many parts the snapshot has, at most [`Snapshot::MAX_PARTS`].
    pub parts: u32,
    /// The order key of the last event the gateway had made when it took the snapshot.
    pub boot: u64,
    pub seq: u64,
    /// The latest event of each alarm that has one.
    pub events: Vec<AlarmEvent>,
    /// Alarms with no event: normal.
    pub quiet: Vec<String>,
    /// The gateway's wall clock, for display.
    pub ts_ms: i64,
}

impl Snapshot {
    /// The most parts a snapshot may have: 256 parts of up to [`MAX_PUBLISH_BYTES`] hold
    /// far more alarms than one gateway watches.
    pub const MAX_PARTS: u32 = 256;

    /// Whether this part is well formed: `1 <= part <= parts <= MAX_PARTS`.
    pub fn part_ok(&self) -> bool {
        self.part >= 1 && self.part <= self.parts && self.parts <= Self::MAX_PARTS
    }

    /// The parts of one snapshot, each encoding to at most `max_bytes` (unless a single
    /// event is larger, which config checks prevent). `snapshot_id`, `boot`, `seq`,
    /// `ts_ms` and `gateway` go on every part.
    pub fn split(
        gateway: &str,
        snapshot_id: &str,
        position: EventKey,
        events: Vec<AlarmEvent>,
        quiet: Vec<String>,
        ts_ms: i64,
        max_bytes: usize,
    ) -> Vec<Snapshot> {
        let empty = Snapshot {
            schema: Snapshot::SCHEMA,
            gateway: gateway.to_string(),
            snapshot_id: snapshot_id.to_string(),
            part: u32::MAX,
            parts: u32::MAX,
            boot: position.boot,
            seq: position.seq,
            events: Vec::new(),
            quiet: Vec::new(),
            ts_ms,
        };
        enum Item {
            Event(Box<AlarmEvent>),
            Quiet(String),
        }
        // The envelope plus each item encoded and its separator.
        let base = empty.encode().len();
        let mut parts = vec![empty.clone()];
        let mut size = base;
        let items = events
            .into_iter()
            .map(|e| Item::Event(Box::new(e)))
            .chain(quiet.into_iter().map(Item::Quiet));
        for item in items {
            let bytes = match &item {
                Item::Event(event) => event.encode().len(),
                Item::Quiet(id) => serde_json::to_string(id).map_or(id.len() * 6 + 2, |s| s.len()),
            };
            let started = parts
                .last()
                .is_some_and(|p| !(p.events.is_empty() && p.quiet.is_empty()));
            if started && size + bytes + 1 > max_bytes {
                parts.push(empty.clone());
                size = base;
            }
            size += bytes + 1;
            if let Some(last) = parts.last_mut() {
                match item {
                    Item::Event(event) => last.events.push(*event),
                    Item::Quiet(id) => last.quiet.push(id),
                }
            }
        }
        let count = u32::try_from(parts.len()).unwrap_or(u32::MAX);
        for (i, part) in parts.iter_mut().enumerate() {
            part.part = u32::try_from(i + 1).unwrap_or(u32::MAX);
            part.parts = count;
        }
        parts
    }
}

/// A message of this contract: it knows its name and carries a schema version.
pub trait Message: Serialize + DeserializeOwned {
    const KIND: &'static str;
    /// The schema version this build writes for this message, and the newest it reads.
    const SCHEMA: u32;
    fn schema(&self) -> u32;

    /// A payload of an older schema version `found` (`OLDEST_SCHEMA <= found < SCHEMA`) in
    /// this version's shape, with `schema` set to [`Message::SCHEMA`]. Only messages whose
    /// shape changed override it.
    fn upgrade(found: u32, payload: &[u8]) -> Result<Self, serde_json::Error> {
        let _ = found;
        serde_json::from_slice(payload)
    }

    /// Parse a payload and check its schema version; an older version is read in today's
    /// shape (see [`Message::upgrade`]).
    fn decode(payload: &[u8]) -> Result<Self, WireError> {
        // Look at the schema first, so a v3 message gets "unsupported schema" rather
        // than a confusing field error.
        #[derive(Deserialize)]
        struct Probe {
            schema: Option<u32>,
        }
        let json = |source| WireError::Json {
            kind: Self::KIND,
            source,
        };
        if let Ok(Probe {
            schema: Some(found),
        }) = serde_json::from_slice::<Probe>(payload)
        {
            if !(OLDEST_SCHEMA..=Self::SCHEMA).contains(&found) {
                return Err(WireError::UnsupportedSchema {
                    kind: Self::KIND,
                    found,
                    newest: Self::SCHEMA,
                });
            }
            if found < Self::SCHEMA {
                return Self::upgrade(found, payload).map_err(json);
            }
        }
        serde_json::from_slice(payload).map_err(json)
    }

    fn encode(&self) -> Vec<u8> {
        // Serializing these plain structs cannot fail (no maps with non-string keys).
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// A version 1 alarm event or reading batch, as JSON, in its version 2 shape: its place's
/// `unit` becomes the room (see [`PlaceV1`]), and `schema` becomes `schema`. A place that is not a
/// version 1 place is refused; anything else is left for the version 2 parser to judge.
fn place_v1_to_v2(message: &mut serde_json::Value, schema: u32) -> Result<(), serde_json::Error> {
    if let Some(fields) = message.as_object_mut() {
        if let Some(place) = fields.get_mut("place") {
            let v1: PlaceV1 = serde_json::from_value(place.take())?;
            *place = serde_json::to_value(Place::from(v1))?;
        }
        fields.insert("schema".into(), schema.into());
    }
    Ok(())
}

/// Version 1 of [`AlarmEvent`] and [`ReadingBatch`]: the same fields, with a [`PlaceV1`].
fn upgrade_place_v1<T: Message>(payload: &[u8]) -> Result<T, serde_json::Error> {
    let mut message: serde_json::Value = serde_json::from_slice(payload)?;
    place_v1_to_v2(&mut message, T::SCHEMA)?;
    serde_json::from_value(message)
}

/// Version 1 of [`Snapshot`]: the same fields, its events version 1 alarm events.
fn upgrade_snapshot_v1(payload: &[u8]) -> Result<Snapshot, serde_json::Error> {
    let mut message: serde_json::Value = serde_json::from_slice(payload)?;
    if let Some(fields) = message.as_object_mut() {
        if let Some(serde_json::Value::Array(events)) = fields.get_mut("events") {
            for event in events {
                place_v1_to_v2(event, AlarmEvent::SCHEMA)?;
            }
        }
        fields.insert("schema".into(), Snapshot::SCHEMA.into());
    }
    serde_json::from_value(message)
}

macro_rules! message {
    ($t:ty, $kind:literal, $schema:literal $(, $upgrade:expr)?) => {
        impl $t {
            /// The schema version this build writes for this message.
            pub const SCHEMA: u32 = $schema;
        }
        impl Message for $t {
            const KIND: &'static str = $kind;
            const SCHEMA: u32 = $schema;
            fn schema(&self) -> u32 {
                self.schema
            }
            $(
                fn upgrade(_found: u32, payload: &[u8]) -> Result<Self, serde_json::Error> {
                    // Every older version of this message is version 1.
                    $upgrade(payload)
                }
            )?
        }
    };
}
message!(AlarmEvent, "alarm event", 2, upgrade_place_v1);
message!(ReadingBatch, "reading batch", 2, upgrade_place_v1);
message!(GatewayStatus, "gateway status", 1);
message!(Command, "command", 1);
message!(CommandReply, "command reply", 1);
message!(Receipt, "receipt", 1);
message!(Snapshot, "snapshot", 2, upgrade_snapshot_v1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_round_trip_through_the_parser() {
        let t = topic("riverside", "gw-b1", Channel::Events);
        assert_eq!(t, "shouwang/v1/riverside/gw-b1/events");
        let parsed = parse_topic(&t).unwrap();
        assert_eq!(parsed.community, "riverside");
        assert_eq!(parsed.gateway, "gw-b1");
        assert_eq!(parsed.channel, Channel::Events);
    }

    #[test]
    fn foreign_topics_are_refused_by_name() {
        for t in [
            "shouwang/v2/a/b/events",
            "shouwang/v1/a/events",
            "shouwang/v1/a/b/c/events",
            "shouwang/v1/a/b/nonsense",
        ] {
            let err = parse_topic(t).unwrap_err();
            assert!(err.to_string().contains(t), "{err}");
        }
    }

    #[test]
    fn a_command_carries_its_action_flat() {
        let cmd = Command {
            schema: Command::SCHEMA,
            command_id: "c1".into(),
            operator: "li".into(),
            ts_ms: 5,
            ttl_ms: None,
            action: Action::Acknowledge {
                alarm_id: "gw:dev:rule".into(),
                event_id: None,
            },
        };
        let json: serde_json::Value = serde_json::from_slice(&cmd.encode()).unwrap();
        assert_eq!(json["action"], "acknowledge");
        assert_eq!(json["alarm_id"], "gw:dev:rule");
        assert_eq!(Command::decode(&cmd.encode()).unwrap(), cmd);
    }

    #[test]
    fn a_resync_command_is_just_its_action() {
        let cmd = Command::decode(
            br#"{"schema":1,"command_id":"c","operator":"console","ts_ms":1,"action":"resync"}"#,
        )
        .unwrap();
        assert_eq!(cmd.action, Action::Resync);
    }

    #[test]
    fn a_newer_schema_is_refused_with_its_version() {
        // A status is still at version 1: a 2 is from the future.
        let err = GatewayStatus::decode(br#"{"schema":2,"gateway":"g"}"#).unwrap_err();
        assert!(
            matches!(err, WireError::UnsupportedSchema { found: 2, .. }),
            "{err}"
        );
        for payload in [
            &br#"{"schema":3,"event_id":"e"}"#[..],
            br#"{"schema":0,"event_id":"e"}"#,
        ] {
            let err = AlarmEvent::decode(payload).unwrap_err();
            assert!(
                err.to_string().contains("this build reads versions 1 to 2"),
                "{err}"
            );
        }
    }

    /// An alarm event exactly as a version 1 gateway sent it (docs/wire.md of schema 1).
    const EVENT_V1: &str = r#"{"schema":1,"event_id":"0193a7c4e2f07d5e9a1b3c4d5e6f7a8b-17","boot":1795776000,"seq":17,"alarm_id":"riverside:gw-b1:smoke-B1-12-03:smoke-high","gateway":"gw-b1","device":"smoke-B1-12-03","device_kind":"smoke","point":"obscuration","rule":"smoke-high","class":"alarm","priority":"high","transition":"raised","state":"unacknowledged","active":true,"value":3.1,"engineering_unit":"%/m","place":{"community":"riverside","building":"B1","floor":"12","unit":"03"},"message":"Smoke detected","ts_ms":1795776000123,"operator":null}"#;

    #[test]
    fn a_version_1_alarm_event_reads_with_its_unit_as_the_room() {
        let event = AlarmEvent::decode(EVENT_V1.as_bytes()).unwrap();
        assert_eq!(event.schema, 2, "read in today's shape");
        assert_eq!(
            event.place,
            Place {
                community: "riverside".into(),
                building: "B1".into(),
                floor: "12".into(),
                room: "03".into(),
                ..Place::default()
            }
        );
        assert_eq!(event.place.label(), "B1-12-03");
        assert_eq!(event.event_id, "0193a7c4e2f07d5e9a1b3c4d5e6f7a8b-17");
        assert_eq!(
            (event.boot, event.seq, event.value),
            (1_795_776_000, 17, Some(3.1))
        );
        // Written again, it is a version 2 event that reads back the same.
        assert_eq!(AlarmEvent::decode(&event.encode()).unwrap(), event);
    }

    #[test]
    fn a_point_without_a_good_value_says_why_and_a_good_one_says_nothing_extra() {
        let mut points = vec![PointValue::good("pressure", 0.65, Some("MPa".into()))];
        points.push(PointValue {
            point: "current".into(),
            value: None,
            engineering_unit: Some("mA".into()),
            quality: Quality::WireBreak,
        });
        let text = serde_json::to_string(&points).unwrap();
        assert_eq!(
            text,
            r#"[{"point":"pressure","value":0.65,"engineering_unit":"MPa"},{"point":"current","value":null,"engineering_unit":"mA","quality":"wire-break"}]"#
        );
        let back: Vec<PointValue> = serde_json::from_str(&text).unwrap();
        assert_eq!(back, points);
        assert_eq!(back[1].good_value(), None);
        let unknown = text.replace("wire-break", "melted");
        assert!(serde_json::from_str::<Vec<PointValue>>(&unknown).is_err());
    }

    #[test]
    fn a_version_1_reading_batch_and_snapshot_read_in_todays_shape() {
        let batch = ReadingBatch::decode(
            br#"{"schema": 1, "gateway": "gw-b1", "device": "pressure-B1-01-01", "device_kind": "pressure",
                "place": {"community": "riverside", "building": "B1", "floor": "01", "unit": "01"},
                "ts_ms": 1795776000123,
                "points": [{"point": "pressure", "value": 0.65, "engineering_unit": "MPa"}]}"#,
        )
        .unwrap();
        assert_eq!((batch.schema, batch.place.room.as_str()), (2, "01"));
        assert_eq!(batch.points[0].value, Some(0.65));
        assert!(
            batch.points[0].quality.is_good(),
            "a v1 value is a good one"
        );

        let snapshot = format!(
            r#"{{"schema": 1, "gateway": "gw-b1", "snapshot_id": "s1", "part": 1, "parts": 1,
                "boot": 1795776000, "seq": 17, "events": [{EVENT_V1}],
                "quiet": ["riverside:gw-b1:smoke-2:smoke-high"], "ts_ms": 1795776001010}}"#
        );
        let snapshot = Snapshot::decode(snapshot.as_bytes()).unwrap();
        assert_eq!(snapshot.schema, 2);
        assert_eq!(snapshot.events[0].schema, 2);
        assert_eq!(snapshot.events[0].place.room, "03");
        assert_eq!(snapshot.quiet, ["riverside:gw-b1:smoke-2:smoke-high"]);
    }

    #[test]
    fn each_version_holds_its_own_place_shape() {
        // A version 1 place with a room, or a version 2 place with a unit, is a mistake.
        let v1_with_room = EVENT_V1.replace(r#""unit":"03""#, r#""room":"03""#);
        let err = AlarmEvent::decode(v1_with_room.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("unit"), "{err}");
        let v2_with_unit = EVENT_V1.replace(r#""schema":1"#, r#""schema":2"#);
        let err = AlarmEvent::decode(v2_with_unit.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("unit"), "{err}");
    }

    #[test]
    fn a_version_2_event_round_trips_with_every_level_and_name() {
        let mut event = AlarmEvent::example("riverside:gw-b1:smoke-B1-3-1201:smoke-high", 4, 9);
        event.place = Place {
            community: "riverside".into(),
            grid: "G2".into(),
            building: "B1".into(),
            entrance: "3".into(),
            floor: "12".into(),
            room: "1201".into(),
            area: String::new(),
            names: PlaceNames {
                community: "江畔花园".into(),
                grid: "第二网格".into(),
                building: "1号楼".into(),
                entrance: "3单元".into(),
                floor: "12层".into(),
                room: "1201室".into(),
                area: String::new(),
            },
        };
        let bytes = event.encode();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["schema"], 2);
        assert_eq!(json["place"]["entrance"], "3");
        assert_eq!(json["place"]["names"]["building"], "1号楼");
        // Names travel as UTF-8, not as \u escapes.
        assert!(
            String::from_utf8_lossy(&bytes).contains("1201室"),
            "{}",
            String::from_utf8_lossy(&bytes)
        );
        assert_eq!(AlarmEvent::decode(&bytes).unwrap(), event);

        let snapshot = Snapshot::split(
            "gw-b1",
            "s",
            event.key(),
            vec![event.clone()],
            vec![],
            0,
            4096,
        );
        assert_eq!(
            Snapshot::decode(&snapshot[0].encode()).unwrap(),
            snapshot[0]
        );
    }

    #[test]
    fn messages_whose_shape_did_not_change_stay_at_version_1() {
        // An older gateway refuses a command or receipt of a version it does not know: they
        // keep version 1 so a console upgraded first still acknowledges and confirms.
        assert_eq!(
            [
                Command::SCHEMA,
                Receipt::SCHEMA,
                GatewayStatus::SCHEMA,
                CommandReply::SCHEMA
            ],
            [1, 1, 1, 1]
        );
        assert_eq!(
            [AlarmEvent::SCHEMA, ReadingBatch::SCHEMA, Snapshot::SCHEMA],
            [2, 2, 2]
        );
    }

    #[test]
    fn garbage_is_refused_with_the_message_kind() {
        let err = AlarmEvent::decode(b"\xff not json").unwrap_err();
        assert!(err.to_string().contains("alarm event"), "{err}");
    }

    fn decode_every_kind(bytes: &[u8]) {
        let _ = AlarmEvent::decode(bytes);
        let _ = ReadingBatch::decode(bytes);
        let _ = GatewayStatus::decode(bytes);
        let _ = Command::decode(bytes);
        let _ = CommandReply::decode(bytes);
        let _ = Receipt::decode(bytes);
        let _ = Snapshot::decode(bytes);
    }

    /// Any JSON value, a few levels deep.
    fn json_value() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(serde_json::Value::from),
            "[a-z0-9一-丐\"]{0,6}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("unit".to_string()),
                        Just("room".to_string()),
                        Just("place".to_string()),
                        Just("names".to_string()),
                        Just("events".to_string()),
                        "[a-z]{1,8}"
                    ],
                    inner,
                    0..5
                )
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn no_payload_makes_a_decoder_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            decode_every_kind(&bytes);
        }

        /// Well-formed JSON of every version, with anything in the place and the events: the
        /// paths that read version 1 in today's shape never panic either.
        #[test]
        fn no_json_of_any_version_makes_a_decoder_panic(
            schema in proptest::prop_oneof![proptest::strategy::Just(1u32), proptest::strategy::Just(2), 0u32..5],
            place in json_value(),
            events in proptest::collection::vec(json_value(), 0..3),
            extra in json_value(),
        ) {
            let message = serde_json::json!({
                "schema": schema,
                "place": place,
                "events": events,
                "extra": extra,
            });
            decode_every_kind(&serde_json::to_vec(&message).unwrap());
            // A real version 1 event with its place replaced.
            let mut event: serde_json::Value = serde_json::from_str(EVENT_V1).unwrap();
            event["place"] = place;
            event["schema"] = schema.into();
            decode_every_kind(&serde_json::to_vec(&event).unwrap());
        }

        #[test]
        fn no_topic_makes_the_parser_panic(topic in ".{0,80}") {
            let _ = parse_topic(&topic);
        }
    }

    #[test]
    fn a_reading_batch_too_large_for_one_publish_is_split_in_order_keeping_its_device() {
        let batch = ReadingBatch {
            schema: ReadingBatch::SCHEMA,
            gateway: "gw".into(),
            device: "meter".into(),
            device_kind: "energy".into(),
            place: Place::default(),
            ts_ms: 7,
            points: (0..5000)
                .map(|i| PointValue {
                    point: format!("p{i}"),
                    value: Some(f64::from(i) * 1.5),
                    engineering_unit: Some("kWh".into()),
                    quality: Default::default(),
                })
                .collect(),
        };
        let whole = batch.encode().len();
        assert!(whole > 64 * 1024, "{whole}");
        let parts = batch.clone().split_to_fit(64 * 1024);
        assert!(parts.len() >= 2);
        for part in &parts {
            assert!(part.encode().len() <= 64 * 1024);
            assert_eq!((part.device.as_str(), part.ts_ms), ("meter", 7));
        }
        let rejoined: Vec<PointValue> = parts.into_iter().flat_map(|p| p.points).collect();
        assert_eq!(rejoined, batch.points);
    }

    #[test]
    fn the_largest_alarm_event_the_config_limits_allow_fits_one_publish_with_room_to_spare() {
        // Every text at its limit, made of the character JSON escapes longest.
        let id = "x".repeat(MAX_ID_CHARS);
        let text = "\u{1}".repeat(MAX_TEXT_CHARS);
        // Names have no control characters; the longest character that may be in one is a
        // 4-byte one, which JSON does not escape.
        let name = "\u{20000}".repeat(MAX_NAME_CHARS);
        let mut place = Place::default();
        for level in Level::ALL {
            *place.id_mut(level) = id.clone();
            *place.names.get_mut(level) = name.clone();
        }
        let event = AlarmEvent {
            schema: AlarmEvent::SCHEMA,
            event_id: text.clone(),
            boot: u64::MAX,
            seq: u64::MAX,
            alarm_id: alarm_id(&id, &id, &id, &id),
            gateway: id.clone(),
            device: id.clone(),
            device_kind: id.clone(),
            point: Some(id.clone()),
            rule: id.clone(),
            class: SignalClass::Supervisory,
            priority: Priority::Medium,
            transition: TransitionKind::Acknowledged,
            state: AlarmState::ReturnedUnacknowledged,
            active: false,
            value: Some(-1.7976931348623157e308),
            engineering_unit: Some(text.clone()),
            place,
            message: text.clone(),
            ts_ms: i64::MIN,
            operator: Some(text),
        };
        let topic = topic(&id, &id, Channel::Events);
        let packet = event.encode().len() + topic.len() + 16;
        assert!(packet * 4 < MAX_PUBLISH_BYTES, "{packet} bytes");
    }

    #[test]
    fn a_command_expires_on_the_consoles_clock_whatever_the_gateways_reads() {
        let cmd = Command {
            schema: Command::SCHEMA,
            command_id: "c1".into(),
            operator: "li".into(),
            ts_ms: 1_800_000_000_000,
            ttl_ms: Some(30_000),
            action: Action::Resync,
        };
        // A gateway in 1970 that knows it is behind: judged right.
        let behind = 1_800_000_000_000 - 100;
        assert_eq!(cmd.expired_by_ms(100, Some(behind)), None);
        assert_eq!(cmd.expired_by_ms(100 + 40_000, Some(behind)), Some(10_000));
        // A gateway a day ahead: not mistaken for stale.
        let ahead = -86_400_000;
        assert_eq!(
            cmd.expired_by_ms(1_800_000_001_000 + 86_400_000, Some(ahead)),
            None
        );
        // No offset known yet, or no ttl: cannot be judged, so not refused.
        assert_eq!(cmd.expired_by_ms(i64::MAX, None), None);
        let forever = Command {
            ttl_ms: None,
            ..cmd
        };
        assert_eq!(forever.expired_by_ms(i64::MAX, Some(0)), None);
    }

    #[test]
    fn a_command_with_an_oversized_field_is_named() {
        let mut cmd = Command {
            schema: Command::SCHEMA,
            command_id: "c1".into(),
            operator: "li".into(),
            ts_ms: 5,
            ttl_ms: None,
            action: Action::Acknowledge {
                alarm_id: "a:b:c:d".into(),
                event_id: None,
            },
        };
        assert_eq!(cmd.oversized_field(), None);
        cmd.operator = "o".repeat(MAX_TEXT_CHARS + 1);
        assert_eq!(
            cmd.oversized_field(),
            Some(("operator", MAX_TEXT_CHARS + 1))
        );
        cmd.operator = "li".into();
        cmd.action = Action::Acknowledge {
            alarm_id: "a".repeat(64 * 1024),
            event_id: None,
        };
        assert_eq!(cmd.oversized_field(), Some(("alarm_id", 64 * 1024)));
    }

    #[test]
    fn an_alarm_id_names_its_community_and_gateway_first() {
        let id = alarm_id("riverside", "gw-1", "smoke-1", "high");
        assert_eq!(id, "riverside:gw-1:smoke-1:high");
        assert_eq!(alarm_owner(&id), Some(("riverside", "gw-1")));
        assert_eq!(alarm_owner(":gw:x:y"), None);
        assert_eq!(alarm_owner("riverside"), None);
    }

    fn snapshot_event(n: u64) -> AlarmEvent {
        AlarmEvent::example(&format!("c:g:d{n}:r"), 1, n)
    }

    #[test]
    fn a_snapshot_splits_into_numbered_parts_that_each_fit_and_lose_nothing() {
        let events: Vec<AlarmEvent> = (1..=500).map(snapshot_event).collect();
        let quiet: Vec<String> = (0..3000).map(|n| format!("c:g:q{n}:r")).collect();
        let max = 64 * 1024;
        let parts = Snapshot::split(
            "g",
            "s1",
            EventKey { boot: 1, seq: 500 },
            events.clone(),
            quiet.clone(),
            7,
            max,
        );
        assert!(parts.len() > 2, "{} parts", parts.len());
        let count = u32::try_from(parts.len()).unwrap();
        for (i, p) in parts.iter().enumerate() {
            assert!(
                p.encode().len() <= max,
                "part {} is {} bytes",
                i + 1,
                p.encode().len()
            );
            assert_eq!(p.part, u32::try_from(i + 1).unwrap());
            assert_eq!(p.parts, count);
            assert!(p.part_ok());
            assert_eq!((p.boot, p.seq, p.ts_ms), (1, 500, 7));
            assert_eq!(Snapshot::decode(&p.encode()).unwrap(), *p);
        }
        let all_events: Vec<AlarmEvent> = parts.iter().flat_map(|p| p.events.clone()).collect();
        let all_quiet: Vec<String> = parts.iter().flat_map(|p| p.quiet.clone()).collect();
        assert_eq!(all_events, events);
        assert_eq!(all_quiet, quiet);
    }

    #[test]
    fn an_empty_snapshot_is_one_part_and_bad_part_numbers_are_caught() {
        let parts = Snapshot::split(
            "g",
            "s",
            EventKey { boot: 2, seq: 0 },
            vec![],
            vec![],
            0,
            1024,
        );
        assert_eq!(parts.len(), 1);
        assert_eq!((parts[0].part, parts[0].parts), (1, 1));
        let mut bad = parts[0].clone();
        bad.part = 0;
        assert!(!bad.part_ok());
        bad.part = 2;
        assert!(!bad.part_ok());
        bad.parts = Snapshot::MAX_PARTS + 1;
        bad.part = 1;
        assert!(!bad.part_ok());
    }
}
