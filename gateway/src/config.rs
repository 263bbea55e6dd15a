//! The gateway's TOML config: the site, the broker, the devices with their points, and the
//! rules.
//!
//! Loading goes: TOML text -> a table -> each section deserialized on its own (so a typo in
//! one device does not hide a typo in another) -> every semantic check -> a [`Config`] that
//! the rest of the gateway can trust. Every problem found is reported at once in a
//! [`ConfigReport`], each with the field that holds it (`devices[2] (smoke-B1-12-03).address`).
//!
//! The doc comments on the fields below are the user documentation of the config file.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use serde::Deserialize;
use shouwang_rules::{Condition, Priority, RuleSpec, SignalClass};
use shouwang_wire::{MAX_ID_CHARS, MAX_TEXT_CHARS, Place, alarm_id, forbidden_id_char};

use crate::sinks::influx::InfluxConfig;

mod devices;
mod links;
mod places;
mod profiles;
pub mod rule_files;
mod template;
pub mod zones;
pub use crate::sinks::mqtt::auth::MqttTls;
pub use crate::sources::mqtt_sensors::config::MqttSensorsSection;
pub use devices::MAX_DEVICES;
pub use links::{
    LinkConfig, LinkTransport, Parity, default_quarantine_max_s, default_recovery_silence_ms,
};
pub use places::{AREAS, PlacesSection};
pub use profiles::{Profile, Profiles, SHIPPED as SHIPPED_PROFILES};
use shouwang_broker_auth::{BrokerAuth, Password};

/// The rule id the gateway uses for each device's communication-lost fault.
pub const COMM_LOST_RULE: &str = "comm_lost";
/// The rule id of each device's fault for "it answers, but a point cannot be read" (a Modbus
/// exception, or registers that do not decode, e.g. a NaN from a failed sensor).
pub const POINT_FAULT_RULE: &str = "point_fault";

/// The faults the gateway raises for every device by itself: (rule id, message).
pub const DEVICE_FAULTS: [(&str, &str); 2] = [
    (COMM_LOST_RULE, "Communication lost"),
    (POINT_FAULT_RULE, "Device fault: a point cannot be read"),
];

/// The gateway's fault for alarm events the console has not confirmed for longer than
/// `[gateway] undelivered_fault_after_s`: the local warning of GB 26875.1.
pub const UNDELIVERED_RULE: &str = "undelivered";
/// The gateway's fault for an alarm queue that cannot write to disk (full, failing).
pub const QUEUE_DISK_RULE: &str = "queue_disk";

/// The gateway's fault for readings shed from the line-protocol writer's disk queue (full,
/// or older than `queue_max_age_s`): raised at the first shed, cleared once none was shed
/// for 10 minutes ([`crate::sinks::influx::SHED_FAULT_HOLD`]). Alarms are never shed.
pub const READINGS_SHED_RULE: &str = "readings_shed";

/// The gateway's fault for a wall clock far from the console's (learned from receipts):
/// the times it writes on events and readings are wrong, though nothing it decides is.
pub const CLOCK_OFF_RULE: &str = "clock_off";
/// How far the gateway's wall clock may be from the console's before [`CLOCK_OFF_RULE`].
pub const CLOCK_OFF_AFTER_MS: i64 = 5 * 60 * 1000;

/// The gateway's fault for one of its own tasks (a device's poller, the broker link, the
/// alarm journal) that failed or stalled: active while one is down or stalled, or failed
/// within the last 10 minutes (see `supervise.rs`).
pub const TASK_FAILED_RULE: &str = "task_failed";

/// The faults the gateway raises about itself; their device is the gateway: (rule id,
/// message).
pub const GATEWAY_FAULTS: [(&str, &str); 5] = [
    (
        CLOCK_OFF_RULE,
        "Gateway clock is more than 5 minutes off the console's: times shown from it are wrong",
    ),
    (
        UNDELIVERED_RULE,
        "Alarms not delivered: the console has not confirmed them",
    ),
    (
        QUEUE_DISK_RULE,
        "Alarm queue cannot write to disk: alarms are kept in memory only",
    ),
    (
        READINGS_SHED_RULE,
        "Readings shed: the time-series store was away longer than the readings queue holds",
    ),
    (
        TASK_FAILED_RULE,
        "A gateway task failed or stalled and was restarted: see the gateway's /healthz and log",
    ),
];

/// A whole, validated gateway config.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub gateway: GatewaySection,
    pub mqtt: MqttSection,
    /// Where readings go as InfluxDB line protocol. Absent: readings go only to MQTT.
    pub influx: Option<InfluxConfig>,
    /// Where the gateway serves its own Prometheus metrics. Absent: not served.
    pub metrics: Option<MetricsSection>,
    /// Where `transport = "mqtt"` devices publish. Absent: the `[mqtt]` broker.
    pub mqtt_sensors: Option<MqttSensorsSection>,
    /// `[[links]]`: serial ports and TCP endpoints shared by Modbus devices.
    pub links: Vec<LinkConfig>,
    /// `[places]`: the names of the site's places. Absent: every place shows its ids.
    pub places: PlacesSection,
    /// Every profile devices may name: the shipped ones and `[gateway] profiles_dir`'s.
    pub profiles: Profiles,
    /// Every device, templates expanded and device files read (see `config/devices.rs`).
    pub devices: Vec<DeviceConfig>,
    /// Every rule as it applies, with its devices: the packs named, the site's rule files
    /// and `[[rules]]`, laid over each other (see `config/rule_files.rs`).
    pub rules: Vec<rule_files::BoundRule>,
    /// `[[coincidences]]`: zone alarms over the alarms of several devices (`config/zones.rs`).
    pub coincidences: Vec<zones::CoincidenceConfig>,
}

/// `[gateway]`: who this gateway is.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySection {
    /// This gateway's id, unique in the community. ASCII letters, digits, `-`, `_`, `.`.
    pub id: String,
    /// The community (site) this gateway belongs to. Same characters as `id`.
    pub community: String,
    /// Where the gateway keeps what must survive a restart or a power cut: the durable
    /// queue of alarm events, the boot counter, alarm states. A path relative to the config
    /// file's directory is taken from there. Use local storage (an SD card or SSD), not a
    /// network mount; e.g. `/var/lib/shouwang`.
    pub data_dir: std::path::PathBuf,
    /// A directory of the site's own device profiles, one `*.toml` each (the format of the
    /// shipped ones in `gateway/profiles/`); relative to the config file's directory, like
    /// `data_dir`. Devices name them by their `id` like the shipped ones. A site profile may
    /// not take a shipped profile's id unless it sets `replaces_shipped = true`, which then
    /// replaces the shipped one for every device of the site. Absent: the shipped profiles
    /// only.
    pub profiles_dir: Option<std::path::PathBuf>,
    /// The shipped rule packs (`rules/packs/`) the site uses, e.g. `["smoke", "water"]`:
    /// their rules apply to every device they select that has their point. Default: none.
    #[serde(default)]
    pub rule_packs: Vec<String>,
    /// A directory of the site's own rule files, every `*.toml` in it (the format of the
    /// packs: `[[rules]]` tables); relative to the config file's directory. Their rules,
    /// and the config's own `[[rules]]`, may refine the packs' for a place (see
    /// `config/rule_files.rs`).
    pub rules_dir: Option<std::path::PathBuf>,
    /// Raise the gateway's `undelivered` fault, and the local warning, when an alarm event
    /// has waited this long for the console's confirmation. Default 60.
    #[serde(default = "default_undelivered_fault_after_s")]
    pub undelivered_fault_after_s: u64,
    /// The local warning of GB 26875.1 on a relay: the BCM GPIO number (2 to 27; e.g. 17 is
    /// pin 11 of the 40-pin header) the gateway drives while alarms cannot be delivered
    /// (see `undelivered_fault_after_s`), the broker link has been down as long, or the
    /// alarm journal has stopped. Needs a gateway built with `--features rpi`. Absent: the
    /// local warning is a log line and the metric `shouwang_gateway_local_warning`.
    pub local_warning_gpio: Option<u8>,
    /// The local warning on a relay of a Modbus device instead: `{ device = "relay-b1",
    /// point = "sounder" }`, a coil or a 16-bit holding register point of a Modbus device in
    /// `[[devices]]`, written 1 while warning and 0 otherwise through the device's link
    /// (between its polls), and written again every 10 s while unchanged, so a relay module
    /// that lost power comes back in the right state. Unlike a GPIO relay it is not switched
    /// when the gateway's runtime itself is wedged (the watchdog thread can switch a GPIO pin
    /// only). Not together with `local_warning_gpio`.
    pub local_warning_modbus: Option<PointRef>,
    /// Drive the local warning output low (write 0) while warning: relay boards with an
    /// active-low input. Default false: high (1) while warning.
    #[serde(default)]
    pub local_warning_active_low: bool,
    /// What lets an alarm event leave the durable queue. Default `console`.
    #[serde(default)]
    pub alarm_confirmation: AlarmConfirmation,
}

/// One point of one device: `{ device = "relay-b1", point = "sounder" }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointRef {
    pub device: String,
    pub point: String,
}

/// `[gateway] alarm_confirmation`: whose word takes an alarm event out of the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlarmConfirmation {
    /// The Shouwang console's receipt, sent once it has stored the event. The only proof
    /// that the event reached a control room.
    #[default]
    Console,
    /// The broker's PUBACK, for sites whose alarms go to another receiver. Weaker: see
    /// [`crate::sinks::broker_confirm`] for what a PUBACK does not promise.
    Broker,
}

/// The BCM GPIO numbers of the 40-pin header that `local_warning_gpio` may name. 0 and 1
/// are left to the HAT ID EEPROM.
pub const LOCAL_WARNING_GPIOS: std::ops::RangeInclusive<u8> = 2..=27;

fn default_undelivered_fault_after_s() -> u64 {
    60
}

/// `[mqtt]`: the broker alarms and readings go to.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSection {
    /// Broker host name or address. Default `127.0.0.1`.
    #[serde(default = "default_mqtt_host")]
    pub host: String,
    /// Broker TCP port. Default 1883.
    #[serde(default = "default_mqtt_port")]
    pub port: u16,
    /// MQTT keep-alive in seconds; the broker declares the gateway dead (and publishes its
    /// offline last will) after 1.5 times this without traffic. Default 5.
    #[serde(default = "default_keep_alive_s")]
    pub keep_alive_s: u64,
    /// MQTT client id. Default `shouwang-gateway-<gateway id>`.
    pub client_id: Option<String>,
    /// The gateway's account on the broker. With the broker set up as in
    /// `docs/mosquitto/`, this must be the gateway's id (`[gateway] id`): the broker lets an
    /// account write only the topics of the gateway with its name, and drops anything else
    /// without telling the gateway. Absent: no account (only a broker that allows anonymous
    /// clients accepts that).
    pub username: Option<String>,
    /// The account's password. Never logged. Prefer `password_file`, which keeps the secret
    /// out of this file; give one or the other, not both.
    pub password: Option<Password>,
    /// A file that holds the password, e.g. `/etc/shouwang/mqtt-password` readable only by
    /// the gateway's user. One trailing line ending is ignored. Read when the config is
    /// loaded, so `shouwang-gateway check` reports a file it cannot read.
    pub password_file: Option<std::path::PathBuf>,
    /// `[mqtt.tls]`: connect to the broker with TLS (then set `port`, usually 8883). Absent:
    /// plain TCP, for a broker on the same machine or network only.
    pub tls: Option<MqttTls>,
    /// The credentials and TLS above, loaded and checked with the rest of the config: the
    /// broker link uses these and never reads a file itself.
    #[serde(skip)]
    pub auth: BrokerAuth,
}

impl Default for MqttSection {
    fn default() -> Self {
        MqttSection {
            host: default_mqtt_host(),
            port: default_mqtt_port(),
            keep_alive_s: default_keep_alive_s(),
            client_id: None,
            username: None,
            password: None,
            password_file: None,
            tls: None,
            auth: BrokerAuth::default(),
        }
    }
}

fn default_mqtt_host() -> String {
    "127.0.0.1".into()
}
fn default_mqtt_port() -> u16 {
    1883
}
fn default_keep_alive_s() -> u64 {
    5
}

/// `[metrics]`: the gateway's own health on `GET /metrics` (Prometheus text).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// `address:port` to listen on, e.g. `127.0.0.1:9851`.
    pub listen: String,
}

/// How the gateway reaches a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// Modbus TCP: the gateway polls `address`, or the device's `link`.
    Tcp,
    /// Modbus RTU on a serial line: the device's `link` names the port.
    Rtu,
    /// Modbus RTU through a serial device server: the device's `link` names its socket.
    RtuOverTcp,
    /// The device reports by itself: JSON messages on `topic` at the broker of
    /// `[mqtt_sensors]` (see `sources/mqtt_sensors.rs`).
    Mqtt,
    /// Dry contacts on the Raspberry Pi's own GPIO inputs (each point names its `gpio`;
    /// see `sources/gpio.rs`). Needs a gateway built with `--features rpi`.
    Gpio,
}

/// `[[devices]]`: one field device, or with `for` a template for many (see
/// `config/template.rs`); `[[device_files]]` rows are devices too (see `config/devices.rs`).
///
/// Keys that take an integer also take a string that holds one (`unit_id = "12"`): what a
/// template's `{...}` and a CSV cell give.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// Unique device id, e.g. `smoke-B1-12-03`. ASCII letters, digits, `-`, `_`, `.`.
    pub id: String,
    /// The device profile (`gateway/profiles/`, or the site's `profiles_dir`) the device is
    /// an instance of, e.g. `smoke-detector`: it gives the device its `kind`, its points and
    /// defaults for its polling keys; keys the device gives override the defaults, and
    /// points it gives are merged by name (see `config/profiles.rs`). Modbus devices only.
    pub profile: Option<String>,
    /// What the device is: `smoke`, `leak`, `pressure`, `door`, `level`, ... Rules can
    /// select devices by kind. With a `profile`, the profile's (leave it out).
    pub kind: String,
    /// Where the device is: its ids in the site's hierarchy, each ASCII letters, digits,
    /// `-`, `_`, `.` (what operators read comes from `[places]`, e.g. `B1` is `1号楼`). Give
    /// the levels the place has, and at least a `building` or an `area`: a smoke detector in
    /// a home is `building = "B1"`, `entrance = "3"`, `floor = "12"`, `room = "1201"`.
    /// `grid` (网格) may be left to `[places.grid_buildings]`.
    pub grid: Option<String>,
    /// The building (楼栋), e.g. `B1`.
    pub building: Option<String>,
    /// The stairwell entrance (单元) of the building, e.g. `3`.
    pub entrance: Option<String>,
    /// The floor (层), e.g. `12`, `B2` (a basement), `R` (the roof).
    pub floor: Option<String>,
    /// The room (室): the home, e.g. `1201`. Not with `area`.
    pub room: Option<String>,
    /// The old name of `room`, from configs written before places had entrances: read as
    /// `room`. Give one or the other.
    pub unit: Option<String>,
    /// A place that is not a home, one of `pump-room`, `roof-tank`, `lift-machine-room`,
    /// `lift`, `car-park`, `control-room`, `distribution-room`, `generator-room`,
    /// `stairwell`, `corridor`, `lobby`, `roof`, `gate` or `other` (with `area_name`), within
    /// the levels given: `building = "B1"`, `floor = "B2"`, `area = "pump-room"`.
    pub area: Option<String>,
    /// What operators read for the area, e.g. `消防水泵房`. Default: `[places.area]`'s
    /// name for the word, else the word.
    pub area_name: Option<String>,
    /// `tcp` (Modbus TCP), `rtu` (Modbus RTU on a serial line), `rtu-over-tcp` (RTU
    /// through a serial device server), `mqtt` (a sensor that publishes JSON) or `gpio`
    /// (dry contacts on the gateway's own inputs). A device with a `link` may leave it out:
    /// it takes the link's.
    pub transport: Transport,
    /// The `[[links]]` entry the device is reached through (a serial port, a serial device
    /// server, a Modbus TCP gateway). Required for `rtu` and `rtu-over-tcp`; a `tcp` device
    /// gives either this or its own `address`.
    pub link: Option<String>,
    /// `host:port` of a Modbus TCP device that has no `link`. Devices at one address share
    /// one connection.
    pub address: Option<String>,
    /// Modbus unit (slave) id: 1-247, required on a link; 0-247 with `address` (default 1).
    /// Modbus devices only.
    #[serde(default, deserialize_with = "number::some")]
    pub unit_id: Option<u8>,
    /// Modbus devices only: which devices a busy link serves first. `life-safety` (fire,
    /// smoke, leak, trapped passenger), `supervisory` or `routine`. Default: from the
    /// rules on the device: `life-safety` when any is an `alarm`-class rule,
    /// `supervisory` when any is `supervisory`, else `routine`.
    pub poll_priority: Option<PollPriority>,
    /// How often to read all points, in ms. Default 1000. `tcp` only (an `mqtt` device
    /// reports when it wants; its silence is judged by `comm_loss_after_s`).
    #[serde(
        default = "default_poll_interval_ms",
        deserialize_with = "number::exactly"
    )]
    pub poll_interval_ms: u64,
    /// How long one request may take before it counts as failed, in ms. Default 1000.
    /// `tcp` only.
    #[serde(default = "default_timeout_ms", deserialize_with = "number::exactly")]
    pub timeout_ms: u64,
    /// `mqtt` only, and required there: the topic the device's JSON messages come on, e.g.
    /// `nbiot/riverside/smoke/861234567890123`, or an MQTT filter that matches the device's
    /// topics and no other device's: `+` stands for one whole level and `#`, the whole
    /// last level, for any number of levels, none included (`lift/E12/+/status` takes
    /// `lift/E12/car/status` and `lift/E12/door/status`, not `lift/E12/car/alarm`;
    /// `nbiot/riverside/smoke/861234567890123/#` takes that topic and every one below it).
    /// The gateway subscribes with it, and a message whose topic it matches is this device's.
    /// Refused: two devices whose topics can both match one topic (`a/+` and `a/b` can,
    /// `a/+/c` and `a/b/d` cannot; the check names both and a topic they share), so a message
    /// is never two devices'; `+` or `#` that is not a whole level, `#` that is not last;
    /// a topic that is empty, longer than 65535 bytes or 32 levels, holds NUL, starts with
    /// `$` (the broker's own) or matches Shouwang's own `shouwang/v1/<community>/<gateway>/
    /// <channel>` (so `#` alone is refused). A message on a topic no device's matches (a
    /// broker can deliver one) is counted as rejected and logged, and changes nothing.
    pub topic: Option<String>,
    /// `mqtt` only: a dotted path (like a point's `json`) to the sensor's own time of the
    /// reading, in ms since the Unix epoch (a number) or RFC 3339 (a string, e.g.
    /// `2025-03-01T08:00:00+08:00`). It is the time written on readings and alarm events,
    /// and it tells a new report from one already taken: the same timestamp with the same
    /// values again, or a timestamp older than the newest taken, makes every point of the
    /// message `stale` (not seen by the rules, no answer for comm loss; see
    /// `sources/mqtt_sensors/repeat.rs`). Every rule, on-delay and comm-loss runs on the
    /// gateway's own monotonic clock at receipt, never on the sensor's clock. Absent,
    /// missing or unreadable: the gateway's time of receipt, and every message is new.
    pub timestamp_field: Option<String>,
    /// `mqtt` only: a dotted path to a quality or status field that covers every point of
    /// the message (a point's own `quality_field` takes precedence). When the field is
    /// missing or holds none of `quality_good`, every point is that message's point fault
    /// (three messages in a row raise the device's `point_fault`) and no value is used.
    pub quality_field: Option<String>,
    /// The values of `quality_field` that mean good, compared with the JSON value's type:
    /// strings exactly (`"ok"`), numbers by value (`0`), booleans (`true`). Required with
    /// `quality_field`.
    pub quality_good: Option<Vec<QualityValue>>,
    /// Raise the device's communication-lost fault when it has not answered for this many
    /// seconds (measured on the monotonic clock, so a poller that stalls is caught too, not
    /// only polls that fail). Default 30; at most 100 (GB 50166).
    #[serde(
        default = "default_comm_loss_after_s",
        deserialize_with = "number::exactly"
    )]
    pub comm_loss_after_s: u64,
    /// Report by exception: publish and store a point's value only when it moved more than
    /// its `report_deadband` since it was last reported, and every point at least every
    /// this many seconds (the heartbeat: 1 to 86400; default 60). The rules still see every
    /// poll and every message. `0`: report every poll's values (a store that wants every
    /// sample, at the cost of the network and the store).
    #[serde(default, deserialize_with = "number::some")]
    pub report_every_s: Option<u64>,
    /// `gpio` only: how long, in ms, a contact's new state must hold before it counts
    /// (relay contacts bounce for a few ms). Default 50, at most 10000. A `gpio` device
    /// reports at once on a change and every `poll_interval_ms` otherwise.
    #[serde(default, deserialize_with = "number::some")]
    pub debounce_ms: Option<u64>,
    /// The read planner may read this many registers that no point uses between two points,
    /// to fetch both in one request (see `sources/modbus/plan.rs`). 0: only contiguous or
    /// overlapping points share a request. Default 8: on Modbus RTU one more request costs
    /// about 20 characters of wire time (its 8-byte request, a 5-byte answer header and two
    /// 3.5-character silences) while one more register costs 2, so a gap of up to 10 is never
    /// slower even with a device that answers instantly; 8 stays under that and seldom
    /// reaches into registers a device does not have. A block the device refuses is split by
    /// itself. At most 123. Holding and input registers only: coils and discrete inputs have
    /// `max_gap_bits`.
    #[serde(
        default = "default_max_gap_registers",
        deserialize_with = "number::exactly"
    )]
    pub max_gap_registers: u16,
    /// The most registers one read request may ask for: 125 (the Modbus limit for function
    /// codes 3 and 4) unless the device's manual gives less. 1 reads every point on its own.
    /// Default 125.
    #[serde(
        default = "default_max_read_registers",
        deserialize_with = "number::exactly"
    )]
    pub max_read_registers: u16,
    /// Like `max_gap_registers`, for coils and discrete inputs, counted in bits: the read
    /// planner may read this many bits that no point uses between two bit points. Default
    /// 128, the 16 bytes of 8 registers: on Modbus RTU one more request costs about 20
    /// characters of wire time and one more bit an eighth of one, so a gap of up to 160 bits
    /// is never slower. At most 1998.
    #[serde(default = "default_max_gap_bits", deserialize_with = "number::exactly")]
    pub max_gap_bits: u16,
    /// The most coils or discrete inputs one read request may ask for: 2000 (the Modbus
    /// limit for function codes 1 and 2) unless the device's manual gives less. Default 2000.
    #[serde(
        default = "default_max_read_bits",
        deserialize_with = "number::exactly"
    )]
    pub max_read_bits: u16,
    /// A point the device (or the protocol converter in front of it) moves while what it
    /// reports is fresh, such as a heartbeat register that counts up every second. When it
    /// has not changed for `stale_after_s`, the device is serving held values: every point
    /// of it reads `stale` (no value reaches the rules, so a held value neither raises nor
    /// clears an alarm) and such a poll is no answer, so `comm_lost` follows
    /// `comm_loss_after_s` after the last fresh one. Not for `gpio` devices.
    /// `alive_counter = { point = "heartbeat", stale_after_s = 5 }`.
    pub alive_counter: Option<AliveCounter>,
    /// The values read from the device. With a `profile`: the profile's, and these merged
    /// in by name.
    #[serde(default)]
    pub points: Vec<PointConfig>,
}

/// A device's `alive_counter`: see [`DeviceConfig::alive_counter`].
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AliveCounter {
    /// The point's name.
    pub point: String,
    /// How long, in seconds, the point may stay unchanged before the device's values count
    /// as stale: 1 to 100, and more than the device's own period of change (a counter of
    /// seconds polled every second: at least 3).
    #[serde(deserialize_with = "number::exactly")]
    pub stale_after_s: u64,
}

/// Integer keys that also take a string holding the integer, as templates and CSV cells
/// give them (`unit_id = "{room_index + 1}"`, a cell `12`), whatever the key: nothing in
/// the templating needs to know which keys are numbers.
mod number {
    use std::fmt;
    use std::marker::PhantomData;

    use serde::de::{self, Deserializer, Unexpected, Visitor};

    pub trait Int: TryFrom<i64> + TryFrom<u64> + Sized {
        const RANGE: &'static str;
    }
    impl Int for u8 {
        const RANGE: &'static str = "from 0 to 255";
    }
    impl Int for u16 {
        const RANGE: &'static str = "from 0 to 65535";
    }
    impl Int for u64 {
        const RANGE: &'static str = "of at least 0";
    }

    struct IntVisitor<T>(PhantomData<T>);

    impl<T: Int> Visitor<'_> for IntVisitor<T> {
        type Value = T;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "an integer {}", T::RANGE)
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
            T::try_from(v).map_err(|_| E::invalid_value(Unexpected::Signed(v), &self))
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
            T::try_from(v).map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &self))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            match v.trim().parse::<i64>() {
                Ok(n) => self.visit_i64(n),
                Err(_) => Err(E::invalid_value(Unexpected::Str(v), &self)),
            }
        }
    }

    pub fn exactly<'de, D: Deserializer<'de>, T: Int>(d: D) -> Result<T, D::Error> {
        d.deserialize_any(IntVisitor(PhantomData))
    }

    pub fn some<'de, D: Deserializer<'de>, T: Int>(d: D) -> Result<Option<T>, D::Error> {
        exactly(d).map(Some)
    }
}

impl Transport {
    /// Whether the gateway polls the device over Modbus.
    pub fn is_modbus(self) -> bool {
        matches!(
            self,
            Transport::Tcp | Transport::Rtu | Transport::RtuOverTcp
        )
    }
}

/// The heartbeat of report by exception when a device does not give `report_every_s`.
pub const DEFAULT_REPORT_EVERY_S: u64 = 60;

impl DeviceConfig {
    /// Report by exception's heartbeat in seconds, or None to report every poll
    /// (`report_every_s = 0`).
    pub fn report_every(&self) -> Option<u64> {
        match self.report_every_s {
            Some(0) => None,
            Some(s) => Some(s),
            None => Some(DEFAULT_REPORT_EVERY_S),
        }
    }

    /// The Modbus unit id (`unit_id`, default 1).
    pub fn modbus_unit(&self) -> u8 {
        self.unit_id.unwrap_or(1)
    }
}

/// How urgently a link serves a device (see `poll_priority`), most urgent first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PollPriority {
    LifeSafety,
    Supervisory,
    Routine,
}

/// One value of `quality_good`: a JSON string, number or boolean.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum QualityValue {
    Bool(bool),
    Number(f64),
    Text(String),
}
fn default_poll_interval_ms() -> u64 {
    1000
}
fn default_timeout_ms() -> u64 {
    1000
}
fn default_comm_loss_after_s() -> u64 {
    30
}
fn default_max_gap_registers() -> u16 {
    DEFAULT_MAX_GAP_REGISTERS
}
fn default_max_read_registers() -> u16 {
    MAX_READ_REGISTERS
}
fn default_max_gap_bits() -> u16 {
    DEFAULT_MAX_GAP_BITS
}
fn default_max_read_bits() -> u16 {
    MAX_READ_BITS
}

/// The most registers one read (function code 3 or 4) may ask for (Modbus application
/// protocol V1.1b3 §6.3, §6.4).
pub const MAX_READ_REGISTERS: u16 = 125;
/// `max_gap_registers` when the config says nothing: see its doc comment for why 8.
pub const DEFAULT_MAX_GAP_REGISTERS: u16 = 8;
/// The most coils or discrete inputs one read (function code 1 or 2) may ask for (Modbus
/// application protocol V1.1b3 §6.1, §6.2).
pub const MAX_READ_BITS: u16 = 2000;
/// `max_gap_bits` when the config says nothing: see its doc comment for why 128.
pub const DEFAULT_MAX_GAP_BITS: u16 = 128;

/// The longest a device may be silent before its communication-lost fault, in seconds: the
/// fault-report limit of GB 50166.
pub const COMM_LOSS_MAX_S: u64 = 100;

/// Which Modbus table a point lives in: two of 16-bit registers, two of single bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RegisterTable {
    /// Holding registers, function code 3.
    #[default]
    Holding,
    /// Input registers, function code 4.
    Input,
    /// Coils, function code 1: one bit each (`type = "bit"`).
    Coil,
    /// Discrete inputs, function code 2: one bit each (`type = "bit"`).
    DiscreteInput,
}

impl RegisterTable {
    /// Coils and discrete inputs: an address is one bit, a read asks for up to 2000 of them.
    pub fn holds_bits(self) -> bool {
        matches!(self, RegisterTable::Coil | RegisterTable::DiscreteInput)
    }
}

impl fmt::Display for RegisterTable {
    /// As the config spells it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RegisterTable::Holding => "holding",
            RegisterTable::Input => "input",
            RegisterTable::Coil => "coil",
            RegisterTable::DiscreteInput => "discrete_input",
        })
    }
}

/// How a point's registers encode its raw value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataType {
    U16,
    I16,
    U32,
    I32,
    F32,
    /// One bit: a coil, a discrete input, or bit `bit` of a holding or input register.
    Bit,
}

impl DataType {
    /// How many addresses one value takes: 16-bit registers, or 1 for a bit (in a bit
    /// table one address is one bit; a bit field takes the one register it is in).
    pub fn registers(self) -> u16 {
        match self {
            DataType::U16 | DataType::I16 | DataType::Bit => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
        }
    }

    /// `u32`, `i32` and `f32`: the types a 4-byte `byte_order` applies to.
    pub fn is_32_bit(self) -> bool {
        self.registers() == 2
    }
}

impl fmt::Display for DataType {
    /// As the config spells it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DataType::U16 => "u16",
            DataType::I16 => "i16",
            DataType::U32 => "u32",
            DataType::I32 => "i32",
            DataType::F32 => "f32",
            DataType::Bit => "bit",
        })
    }
}

/// The order of a value's bytes in its registers, named by where the value's bytes land on
/// the wire, most significant byte `A` first: `ABCD` is big-endian, the high word at the
/// lower register (the Modbus convention, and the default); `CDAB` swaps the words (the low
/// word first, as many PLCs and meters send floats); `BADC` swaps the bytes in each word;
/// `DCBA` is little-endian. For 16-bit types, `AB` (the default) and `BA` (bytes swapped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ByteOrder {
    Ab,
    Ba,
    Abcd,
    Cdab,
    Badc,
    Dcba,
}

impl ByteOrder {
    /// How many bytes the order lays out: 2 (`AB`, `BA`) or 4.
    pub fn bytes(self) -> u8 {
        match self {
            ByteOrder::Ab | ByteOrder::Ba => 2,
            ByteOrder::Abcd | ByteOrder::Cdab | ByteOrder::Badc | ByteOrder::Dcba => 4,
        }
    }
}

impl fmt::Display for ByteOrder {
    /// As the config spells it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ByteOrder::Ab => "AB",
            ByteOrder::Ba => "BA",
            ByteOrder::Abcd => "ABCD",
            ByteOrder::Cdab => "CDAB",
            ByteOrder::Badc => "BADC",
            ByteOrder::Dcba => "DCBA",
        })
    }
}

/// `[[devices.points]]`: one value of a device.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointConfig {
    /// Point name, unique in its device, e.g. `obscuration`.
    pub name: String,
    /// The first register's address (0-based, as on the wire); for a coil or discrete
    /// input, the bit's address. `tcp` devices only, and required there.
    pub register: Option<u16>,
    /// The table the point is in: `holding` (holding registers, function code 3; the
    /// default), `input` (input registers, FC 4), `coil` (FC 1) or `discrete_input` (FC 2).
    /// Coils and discrete inputs hold single bits: their points are `type = "bit"`.
    /// `tcp` devices only.
    pub table: Option<RegisterTable>,
    /// `u16`, `i16`, `u32`, `i32`, `f32` or `bit`. `tcp` devices only, and required there.
    /// 32-bit types take two registers, in `byte_order`. `bit` is a point's only type in a
    /// `coil` or `discrete_input` table, and in a `holding` or `input` register it reads bit
    /// `bit` of the register; its value is 0 or 1 (before scale and offset).
    #[serde(rename = "type")]
    pub data_type: Option<DataType>,
    /// `type = "bit"` in a `holding` or `input` register only, and required there: which bit
    /// of the register, 0 (the least significant) to 15. Several bit points may name one
    /// register; it is read once for all of them.
    pub bit: Option<u8>,
    /// How the value's bytes lie in its registers. For `u32`, `i32` and `f32`: `ABCD`
    /// (default: big-endian, high word first), `CDAB` (words swapped: low word first), `BADC`
    /// (bytes swapped in each word) or `DCBA` (little-endian); a 0x41200000 (10.0 as f32)
    /// arrives as registers `4120 0000`, `0000 4120`, `2041 0000` and `0000 2041`. For `u16`
    /// and `i16`: `AB` (default) or `BA` (bytes swapped). Not for `bit`. `tcp` devices only.
    pub byte_order: Option<ByteOrder>,
    /// `mqtt` devices only, and required there: where the value is in the device's JSON
    /// object, as a dotted path (`smoke.obscuration`; a number segment also indexes an
    /// array: `channels.0.value`). A JSON number is the raw value; `true`/`false` are 1/0
    /// (door contacts); a string that holds a decimal number (`"3.1"`) is read as that
    /// number (platforms that relay NB-IoT sensors often send numbers as strings). Anything
    /// else (missing, null, other text, an object, NaN or infinity after scaling) is this
    /// point's fault for that message.
    pub json: Option<String>,
    /// `mqtt` devices only: this point's own quality field (a dotted path), instead of the
    /// device's `quality_field`; the device's `quality_good` applies unless this point
    /// gives its own.
    pub quality_field: Option<String>,
    /// The values of this point's `quality_field` that mean good (see the device's).
    pub quality_good: Option<Vec<QualityValue>>,
    /// With the device's `report_every_s`: how far (in the point's unit, after scale and
    /// offset) its value must move from the value last reported to be reported again before
    /// the heartbeat. Default 0: any change.
    pub report_deadband: Option<f64>,
    /// Raw validity, for a transmitter on a 4-20 mA loop: a raw value (as read, before
    /// `scale` and `offset`) below this is not a reading but this point's fault for that poll,
    /// with the reason `wire break` (a broken loop's current falls towards 0 mA). For an
    /// input that reports µA, 3600 (3.6 mA, NAMUR NE 43); for 0-20 mA as 0-4095 counts, 737.
    /// Modbus points only; not for `type = "bit"`.
    pub wire_break_below: Option<f64>,
    /// Raw validity, like `wire_break_below`: a raw value above this is this point's fault
    /// for that poll, with the reason `sensor fault or short circuit` (above 21 mA, NAMUR NE
    /// 43: 21000 for µA). Greater than `wire_break_below` when both are given.
    pub fault_above: Option<f64>,
    /// The unit of the raw value, for the fault's reason only (`wire break: 3100 µA, below
    /// 3600 µA`), e.g. `µA`. Absent: the reason says `raw 3100`. Only with
    /// `wire_break_below` or `fault_above`.
    pub raw_unit: Option<String>,
    /// `gpio` devices only, and required there: the BCM GPIO number of the contact's input
    /// (2 to 27; e.g. 17 is pin 11 of the 40-pin header). The value is 1 while the contact
    /// is closed, 0 while open.
    pub gpio: Option<u8>,
    /// `gpio` devices only: the contact pulls the input low when closed (a dry contact
    /// wired to ground, with the pin's pull-up on, which the gateway sets). Default true.
    pub active_low: Option<bool>,
    /// value = raw * scale + offset. Default 1.
    #[serde(default = "default_scale")]
    pub scale: f64,
    /// Default 0.
    #[serde(default)]
    pub offset: f64,
    /// The unit of the scaled value, e.g. `MPa`, `%/m`.
    pub engineering_unit: Option<String>,
}

impl PointConfig {
    /// A Modbus point as the config would hold it with only these keys given: unscaled,
    /// the default byte order, no other keys. For tests, benchmarks and tools.
    pub fn modbus(
        name: impl Into<String>,
        table: RegisterTable,
        register: u16,
        data_type: DataType,
    ) -> PointConfig {
        PointConfig {
            name: name.into(),
            register: Some(register),
            table: Some(table),
            data_type: Some(data_type),
            bit: None,
            byte_order: None,
            json: None,
            quality_field: None,
            quality_good: None,
            gpio: None,
            active_low: None,
            report_deadband: None,
            wire_break_below: None,
            fault_above: None,
            raw_unit: None,
            scale: 1.0,
            offset: 0.0,
            engineering_unit: None,
        }
    }

    /// The first register: for `tcp` devices, whose points the config check requires to
    /// have one (0 otherwise).
    pub fn modbus_register(&self) -> u16 {
        self.register.unwrap_or(0)
    }

    /// The register table (holding unless the point says input).
    pub fn modbus_table(&self) -> RegisterTable {
        self.table.unwrap_or_default()
    }

    /// How many registers the point's value takes (its `type` is required for `tcp`
    /// devices; 1 otherwise). A bit takes 1: one address of a coil or discrete input, or the
    /// one register its bit is in.
    pub fn modbus_registers(&self) -> u16 {
        self.data_type.map_or(1, |t| t.registers())
    }
}

fn default_scale() -> f64 {
    1.0
}

/// `[[rules]]` (in the config, a rule file or a pack): a condition on a point. Which devices
/// it watches is said by its selectors (`device`, `device_kind`, `profile` and place keys:
/// `config/rule_files.rs`), which are not part of this: this is the rule as it applies,
/// the entries that select a device laid over each other.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Rule id. Part of every alarm id (`<community>:<gateway>:<device>:<rule>`); entries
    /// with the same id are one rule, refined by place.
    pub id: String,
    /// The point the rule watches.
    pub point: String,
    /// `alarm`, `supervisory` or `fault`.
    pub class: SignalClass,
    /// `high`, `medium` or `low`.
    pub priority: Priority,
    /// The condition: exactly one of `above`, `below`, `equals`, `any_bit`, `rise_by`,
    /// `fall_by`, `frozen_for_s` (see [`RuleConfig::condition`]).
    /// Active at or above this value (with `deadband`).
    pub above: Option<f64>,
    /// Active at or below this value (with `deadband`).
    pub below: Option<f64>,
    /// How far back past an `above` or `below` limit the value must go to clear. Default 0.
    pub deadband: Option<f64>,
    /// Active while the value is exactly this: a digital state (a door state 2 = open, a
    /// service mode 4 = out of service).
    pub equals: Option<f64>,
    /// Active while any of these bits is set in the value read as a whole number: a status
    /// word (`any_bit = 0x04`: bit 2). Values that are no status word (negative, fractional)
    /// are ignored.
    pub any_bit: Option<u32>,
    /// Rate of change: active while the value is at least this much above its lowest in the
    /// last `within_s` seconds (a heat detector's rate of rise).
    pub rise_by: Option<f64>,
    /// Active while the value is at least this much below its highest in the last
    /// `within_s` seconds (a tank draining, a fire main losing pressure).
    pub fall_by: Option<f64>,
    /// The window of `rise_by` or `fall_by`, in seconds.
    pub within_s: Option<u64>,
    /// A frozen (stuck) value: active once the value has stayed within `tolerance` (default
    /// 0) of one value for this many seconds; any larger move clears it.
    pub frozen_for_s: Option<u64>,
    pub tolerance: Option<f64>,
    /// How long the condition must hold before the alarm is raised, in ms. Default 0.
    #[serde(default)]
    pub on_delay_ms: u64,
    /// How long the condition must have ended before the alarm clears, in ms. Default 0.
    #[serde(default)]
    pub off_delay_ms: u64,
    /// What the board shows, e.g. "Smoke detected".
    pub message: String,
}

/// The keys that say a rule's condition, each with the keys that go with it only. A rule
/// entry that gives one of them replaces the condition of the entries it refines.
pub const CONDITION_KEYS: [(&str, &[&str]); 7] = [
    ("above", &["deadband"]),
    ("below", &["deadband"]),
    ("equals", &[]),
    ("any_bit", &[]),
    ("rise_by", &["within_s"]),
    ("fall_by", &["within_s"]),
    ("frozen_for_s", &["tolerance"]),
];

impl RuleConfig {
    /// The engine's condition, or what is wrong with the keys that say it.
    pub fn condition(&self) -> Result<Condition, String> {
        let given: Vec<&str> = [
            ("above", self.above.is_some()),
            ("below", self.below.is_some()),
            ("equals", self.equals.is_some()),
            ("any_bit", self.any_bit.is_some()),
            ("rise_by", self.rise_by.is_some()),
            ("fall_by", self.fall_by.is_some()),
            ("frozen_for_s", self.frozen_for_s.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, g)| g.then_some(k))
        .collect();
        let [key] = given.as_slice() else {
            return Err(format!(
                "give exactly one condition: above, below, equals, any_bit, rise_by, fall_by or frozen_for_s ({})",
                if given.is_empty() {
                    "none given".to_string()
                } else {
                    format!("given: {}", given.join(", "))
                }
            ));
        };
        // Keys that belong to another condition.
        let companions = [
            ("deadband", self.deadband.is_some()),
            ("within_s", self.within_s.is_some()),
            ("tolerance", self.tolerance.is_some()),
        ];
        let own = CONDITION_KEYS
            .iter()
            .find(|(k, _)| k == key)
            .map_or(&[][..], |(_, c)| *c);
        if let Some((stray, _)) = companions.iter().find(|(c, g)| *g && !own.contains(c)) {
            return Err(format!("`{stray}` means nothing with `{key}`"));
        }
        let finite = |name: &str, v: f64| {
            if v.is_finite() {
                Ok(v)
            } else {
                Err(format!("`{name}` must be a finite number"))
            }
        };
        let window = |s: Option<u64>, name: &str| -> Result<u64, String> {
            match s {
                None => Err(format!("`{key}` needs `{name}`, the window in seconds")),
                Some(0) => Err(format!("`{name}` must be at least 1 second")),
                Some(s) if s > 86_400 => Err(format!("`{name}` must be at most 86400 seconds")),
                Some(s) => Ok(s * 1000),
            }
        };
        let deadband = finite("deadband", self.deadband.unwrap_or(0.0))?;
        if deadband < 0.0 {
            return Err("`deadband` must be at least 0".into());
        }
        let positive = |name: &str, v: f64| {
            finite(name, v).and_then(|v| {
                if v > 0.0 {
                    Ok(v)
                } else {
                    Err(format!("`{name}` must be more than 0"))
                }
            })
        };
        Ok(match *key {
            "above" => Condition::Above {
                limit: finite("above", self.above.unwrap_or_default())?,
                deadband,
            },
            "below" => Condition::Below {
                limit: finite("below", self.below.unwrap_or_default())?,
                deadband,
            },
            "equals" => Condition::Equals {
                value: finite("equals", self.equals.unwrap_or_default())?,
            },
            "any_bit" => match self.any_bit {
                Some(0) | None => return Err("`any_bit` must name at least one bit".into()),
                Some(mask) => Condition::AnyBit { mask },
            },
            "rise_by" => Condition::RiseWithin {
                by: positive("rise_by", self.rise_by.unwrap_or_default())?,
                window_ms: window(self.within_s, "within_s")?,
            },
            "fall_by" => Condition::FallWithin {
                by: positive("fall_by", self.fall_by.unwrap_or_default())?,
                window_ms: window(self.within_s, "within_s")?,
            },
            _ => {
                let tolerance = finite("tolerance", self.tolerance.unwrap_or(0.0))?;
                if tolerance < 0.0 {
                    return Err("`tolerance` must be at least 0".into());
                }
                Condition::Frozen {
                    tolerance,
                    window_ms: window(self.frozen_for_s, "frozen_for_s")?,
                }
            }
        })
    }
}

/// What can be wrong with one rule as it applies (after the cascade), named by `at`.
fn check_rule(rule: &RuleConfig, at: &str, p: &mut Problems) {
    p.id(&format!("{at}.id"), "rule id", &rule.id);
    if DEVICE_FAULTS
        .iter()
        .chain(GATEWAY_FAULTS.iter())
        .any(|(id, _)| *id == rule.id)
    {
        p.add(
            format!("{at}.id"),
            format!("{:?} is reserved for the gateway's own fault", rule.id),
        );
    }
    p.non_empty(&format!("{at}.message"), &rule.message);
    p.text(&format!("{at}.message"), &rule.message);
    if let Err(why) = rule.condition() {
        p.add(at, why);
    }
}

/// One thing wrong with a config, and the field that holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub field: String,
    pub message: String,
}

/// Every problem found in one config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigReport {
    /// Where the config came from (its path), for the report.
    pub source: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        writeln!(
            f,
            "{}: {n} problem{}:",
            self.source,
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            writeln!(f, "  {}: {}", p.field, p.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigReport {}

/// Collects problems while checking.
#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            field: field.into(),
            message: message.into(),
        });
    }

    fn id(&mut self, field: &str, what: &str, id: &str) {
        if id.is_empty() {
            self.add(field, format!("{what} must not be empty"));
        } else if id.chars().count() > MAX_ID_CHARS {
            // Ids travel in every alarm event: bounded so an event always fits one publish.
            self.add(
                field,
                format!(
                    "{what} is {} characters long; at most {MAX_ID_CHARS}",
                    id.chars().count()
                ),
            );
        } else if let Some(c) = forbidden_id_char(id) {
            self.add(
                field,
                format!("{what} {id:?} has {c:?}; use ASCII letters, digits, '-', '_', '.'"),
            );
        }
    }

    fn non_empty(&mut self, field: &str, value: &str) {
        if value.trim().is_empty() {
            self.add(field, "must not be empty");
        }
    }

    /// A free text that travels in alarm events (a rule's message, a unit).
    fn text(&mut self, field: &str, value: &str) {
        let len = value.chars().count();
        if len > MAX_TEXT_CHARS {
            self.add(
                field,
                format!("is {len} characters long; at most {MAX_TEXT_CHARS} (it travels in every alarm event)"),
            );
        }
    }
}

/// Deserialize one section on its own; on failure record the error under `field`.
fn section<T: for<'de> Deserialize<'de>>(
    value: toml::Value,
    field: &str,
    problems: &mut Problems,
) -> Option<T> {
    match T::deserialize(value) {
        Ok(v) => Some(v),
        Err(e) => {
            problems.add(field, e.message().trim().to_string());
            None
        }
    }
}

/// A `[[devices]]` or `[[rules]]` entry's label for messages: `devices[2] (smoke-B1-12-03)`.
fn label(list: &str, i: usize, value: &toml::Value) -> String {
    let name = value.get("id").or_else(|| value.get("name"));
    match name.and_then(|v| v.as_str()) {
        Some(id) => format!("{list}[{i}] ({id})"),
        None => format!("{list}[{i}]"),
    }
}

impl Config {
    /// Read and check a config file. Relative paths in it (`data_dir`, `profiles_dir`,
    /// `device_files`) are taken from the file's directory.
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigReport> {
        let source = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let dir = path.parent();
                let mut config = Config::from_toml_in(&text, &source, dir)?;
                if let Some(dir) = dir {
                    if config.gateway.data_dir.is_relative() {
                        config.gateway.data_dir = dir.join(&config.gateway.data_dir);
                    }
                    if let Some(profiles) = &mut config.gateway.profiles_dir
                        && profiles.is_relative()
                    {
                        *profiles = dir.join(&*profiles);
                    }
                }
                Ok(config)
            }
            Err(e) => Err(ConfigReport {
                source,
                problems: vec![Problem {
                    field: "(file)".into(),
                    message: format!("cannot read: {e}"),
                }],
            }),
        }
    }

    /// Parse and check config text. `source` names it in the report. Relative paths in it
    /// (`profiles_dir`, `device_files`) are taken from the working directory.
    pub fn from_toml_str(text: &str, source: &str) -> Result<Config, ConfigReport> {
        Config::from_toml_in(text, source, None)
    }

    /// Parse and check config text whose relative paths are taken from `dir`.
    pub fn from_toml_in(
        text: &str,
        source: &str,
        dir: Option<&std::path::Path>,
    ) -> Result<Config, ConfigReport> {
        let mut origins = devices::Origins::default();
        let report = |problems: Problems, origins: &devices::Origins| ConfigReport {
            source: source.to_string(),
            problems: devices::fold(problems.0, origins),
        };
        let mut problems = Problems::default();
        let mut table: toml::Table = match text.parse() {
            Ok(t) => t,
            Err(e) => {
                problems.add("(syntax)", e.to_string().trim().to_string());
                return Err(report(problems, &origins));
            }
        };
        // Read before `[gateway]` is deserialized, so that devices naming the site's
        // profiles are not reported as naming unknown ones when `[gateway]` has a typo.
        let profiles_dir = table
            .get("gateway")
            .and_then(|g| g.get("profiles_dir"))
            .and_then(|d| d.as_str())
            .map(|d| dir.map_or_else(|| d.into(), |base| base.join(d)));
        let profiles = profiles::load(profiles_dir.as_deref(), None, &mut problems);

        let gateway = match table.remove("gateway") {
            Some(v) => section::<GatewaySection>(v, "gateway", &mut problems),
            None => {
                problems.add(
                    "gateway",
                    "missing: add a [gateway] table with id and community",
                );
                None
            }
        };
        let mqtt = match table.remove("mqtt") {
            Some(v) => section::<MqttSection>(v, "mqtt", &mut problems),
            None => Some(MqttSection::default()),
        };
        let influx = match table.remove("influx") {
            Some(v) => section::<InfluxConfig>(v, "influx", &mut problems).map(Some),
            None => Some(None),
        };
        let metrics = match table.remove("metrics") {
            Some(v) => section::<MetricsSection>(v, "metrics", &mut problems).map(Some),
            None => Some(None),
        };
        let mqtt_sensors = match table.remove("mqtt_sensors") {
            Some(v) => section::<MqttSensorsSection>(v, "mqtt_sensors", &mut problems).map(Some),
            None => Some(None),
        };
        let places = match table.remove("places") {
            Some(v) => section::<PlacesSection>(v, "places", &mut problems),
            None => Some(PlacesSection::default()),
        };
        if let Some(places) = &places {
            places::check_section(places, &mut problems);
        }
        let links = links::expand(table.remove("links"), &mut problems);
        let links = list::<LinkConfig>(links, "links", &mut problems);
        let link_transports: BTreeMap<String, Transport> = links
            .iter()
            .flatten()
            .map(|l| (l.id.clone(), l.transport.device_transport()))
            .collect();
        let (devices, found) = devices::load(
            table.remove("devices"),
            table.remove("device_files"),
            dir,
            &profiles,
            &link_transports,
            &mut problems,
        );
        origins = found;
        let labels = &origins.labels;
        let mut rule_entries =
            rule_files::config_entries(table.remove("rules"), text, source, &mut problems);
        let coincidences = list::<zones::CoincidenceConfig>(
            table.remove("coincidences"),
            "coincidences",
            &mut problems,
        );
        for key in table.keys() {
            problems.add(
                key.as_str(),
                "unknown section; expected gateway, mqtt, mqtt_sensors, influx, metrics, places, links, devices, device_files, rules or coincidences",
            );
        }
        let has_mqtt_devices = devices
            .iter()
            .flatten()
            .any(|d| d.transport == Transport::Mqtt);
        let mqtt_sensors = mqtt_sensors.map(|section| {
            section.map(|mut s| {
                for (f, msg) in s.load(has_mqtt_devices) {
                    problems.add(f, msg);
                }
                s
            })
        });

        // Reads the password file, the CA, the client certificate and key; reports what is
        // wrong with them with the rest.
        let mqtt = mqtt.map(|mut m| {
            match crate::sinks::mqtt::auth::load(&m) {
                Ok(auth) => m.auth = auth,
                Err(found) => found.into_iter().for_each(|(f, msg)| problems.add(f, msg)),
            }
            m
        });
        let (
            Some(gateway),
            Some(mqtt),
            Some(influx),
            Some(metrics),
            Some(mqtt_sensors),
            Some(places),
        ) = (gateway, mqtt, influx, metrics, mqtt_sensors, places)
        else {
            // Still check what parsed, so the report is complete.
            check_devices(&devices, labels, &mut problems);
            return Err(report(problems, &origins));
        };
        let all_parsed = devices.iter().all(Option::is_some);
        let rules_dir = gateway
            .rules_dir
            .as_ref()
            .map(|d| dir.map_or_else(|| d.clone(), |base| base.join(d)));
        let mut file_entries =
            rule_files::load_files(&gateway.rule_packs, rules_dir.as_deref(), &mut problems);
        // Packs first, then the site's files, then the config's own: an order for messages
        // only (the cascade goes by specificity).
        file_entries.append(&mut rule_entries);
        let mut config = Config {
            gateway,
            mqtt,
            influx,
            metrics,
            mqtt_sensors,
            links: links.into_iter().flatten().collect(),
            places,
            profiles,
            devices: devices.iter().flatten().cloned().collect(),
            rules: Vec::new(),
            coincidences: coincidences.into_iter().flatten().collect(),
        };
        config.rules = rule_files::bind(&file_entries, &config, all_parsed, &mut problems);
        zones::check(&config, &mut problems);
        if all_parsed {
            config.check(labels, &mut problems);
        } else {
            // Devices are named by their origins: check the list with its holes, and
            // leave the checks across devices (GPIO pins, links) until every device parses.
            config.check_site(&mut problems);
            check_devices(&devices, labels, &mut problems);
        }
        if problems.0.is_empty() {
            Ok(config)
        } else {
            Err(report(problems, &origins))
        }
    }

    /// Every device of a valid config written out as the gateway reads it: templates
    /// expanded, device files read, profiles merged in, transports taken from links. TOML,
    /// `[[devices]]` tables with their points, in device order (`shouwang-gateway expand`).
    pub fn expand_devices(
        text: &str,
        source: &str,
        dir: Option<&std::path::Path>,
    ) -> Result<String, ConfigReport> {
        let config = Config::from_toml_in(text, source, dir)?;
        let report = |problems: Problems| ConfigReport {
            source: source.to_string(),
            problems: problems.0,
        };
        let mut problems = Problems::default();
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let mut p = Problems::default();
            p.add("(syntax)", e.to_string().trim().to_string());
            report(p)
        })?;
        let links: BTreeMap<String, Transport> = config
            .links
            .iter()
            .map(|l| (l.id.clone(), l.transport.device_transport()))
            .collect();
        let devices = devices::written_out(
            table.remove("devices"),
            table.remove("device_files"),
            dir,
            &config.profiles,
            &links,
            &mut problems,
        );
        if !problems.0.is_empty() {
            return Err(report(problems));
        }
        let mut out = toml::Table::new();
        out.insert(
            "devices".into(),
            toml::Value::Array(devices.into_iter().map(toml::Value::Table).collect()),
        );
        toml::to_string(&out).map_err(|e| {
            let mut p = Problems::default();
            p.add("devices", format!("cannot write them out: {e}"));
            report(p)
        })
    }

    /// What `check` says besides problems: things that are allowed but may be a mistake,
    /// e.g. devices whose profile expects rules the config does not have.
    pub fn notes(&self) -> Vec<String> {
        profiles::missing_rules(self)
    }

    /// `labels`: how messages name each device (one per device, in order).
    fn check(&self, labels: &[String], p: &mut Problems) {
        self.check_site(p);
        let devices: Vec<Option<DeviceConfig>> = self.devices.iter().cloned().map(Some).collect();
        check_devices(&devices, labels, p);
        check_gpio_pins(self, labels, p);
        links::check_links(self, labels, p);
        places::check_names_and_grids(self, labels, p);
        if self.devices.is_empty() {
            p.add("devices", "no devices: add at least one [[devices]] table");
        }
    }

    /// The sections about the site: gateway, broker, metrics, time-series store.
    fn check_site(&self, p: &mut Problems) {
        p.id("gateway.id", "gateway id", &self.gateway.id);
        if self.gateway.id == "console" {
            p.add(
                "gateway.id",
                "\"console\" is reserved for the console's own alarms",
            );
        }
        p.id("gateway.community", "community", &self.gateway.community);
        if self.gateway.data_dir.as_os_str().is_empty() {
            p.add("gateway.data_dir", "must not be empty");
        }
        if self.gateway.undelivered_fault_after_s == 0 {
            p.add(
                "gateway.undelivered_fault_after_s",
                "must be at least 1 second",
            );
        }
        match self.gateway.local_warning_gpio {
            Some(_) if !cfg!(feature = "rpi") => p.add(
                "gateway.local_warning_gpio",
                "this gateway was built without GPIO support: build it with `--features rpi`, or remove the key to have the local warning in the log and metrics only",
            ),
            Some(pin) if !LOCAL_WARNING_GPIOS.contains(&pin) => p.add(
                "gateway.local_warning_gpio",
                format!(
                    "GPIO {pin} is not a free pin of the 40-pin header: give a BCM number from {} to {} (e.g. 17, header pin 11)",
                    LOCAL_WARNING_GPIOS.start(),
                    LOCAL_WARNING_GPIOS.end()
                ),
            ),
            None if self.gateway.local_warning_active_low
                && self.gateway.local_warning_modbus.is_none() =>
            {
                p.add(
                    "gateway.local_warning_active_low",
                    "only means something with local_warning_gpio or local_warning_modbus; set one, or remove this",
                )
            }
            Some(_) if self.gateway.local_warning_modbus.is_some() => p.add(
                "gateway.local_warning_modbus",
                "give one local warning output: local_warning_gpio or local_warning_modbus",
            ),
            _ => {}
        }

        p.non_empty("mqtt.host", &self.mqtt.host);
        if self.mqtt.port == 0 {
            p.add("mqtt.port", "must not be 0");
        }
        if self.mqtt.keep_alive_s == 0 || self.mqtt.keep_alive_s > 65_535 {
            p.add("mqtt.keep_alive_s", "must be between 1 and 65535 seconds");
        }

        if let Some(m) = &self.metrics
            && m.listen.parse::<std::net::SocketAddr>().is_err()
        {
            p.add(
                "metrics.listen",
                format!("{:?} is not address:port (e.g. 127.0.0.1:9851)", m.listen),
            );
        }
        if let Some(influx) = &self.influx {
            for (field, message) in influx.problems() {
                p.add(format!("influx.{field}"), message);
            }
        }
    }

    /// The devices a rule applies to.
    pub fn devices_of<'a>(
        &'a self,
        rule: &'a rule_files::BoundRule,
    ) -> impl Iterator<Item = &'a DeviceConfig> + 'a {
        rule.devices.iter().filter_map(|&d| self.devices.get(d))
    }

    /// Bind every rule to its devices for the rule engine, plus each device's own faults
    /// (communication lost, point fault). Each spec comes with what the gateway needs to describe its alarm.
    pub fn alarm_specs(&self) -> Vec<(RuleSpec, AlarmMeta)> {
        let mut out = Vec::new();
        let empty: Arc<str> = Arc::from("");
        for (rule, message) in GATEWAY_FAULTS {
            let id: Arc<str> = Arc::from(self.gateway.id.as_str());
            out.push((
                RuleSpec {
                    alarm_id: alarm_id(&self.gateway.community, &id, &id, rule).into(),
                    device: id.clone(),
                    point: empty.clone(),
                    class: SignalClass::Fault,
                    priority: Priority::High,
                    condition: Condition::External,
                    on_delay_ms: 0,
                    off_delay_ms: 0,
                    latch: false,
                    // Not before the console shows chatter summaries (wire v3, issue 7).
                    collapse_chatter: false,
                },
                AlarmMeta {
                    device: id,
                    device_kind: "gateway".into(),
                    point: None,
                    rule: (*rule).into(),
                    place: Arc::new(self.community_place()),
                    message: (*message).into(),
                    engineering_unit: None,
                },
            ));
        }
        // One copy of each device's id, kind and place for all its alarms, and of each
        // rule's id, point, message and unit for all its devices: 1,000 devices have 3,000
        // alarms.
        let shared: Vec<(Arc<str>, Arc<str>, Arc<Place>)> = self
            .devices
            .iter()
            .map(|d| {
                (
                    Arc::from(d.id.as_str()),
                    Arc::from(d.kind.as_str()),
                    Arc::new(self.place(d)),
                )
            })
            .collect();
        let fault_rules: Vec<(Arc<str>, Arc<str>)> = DEVICE_FAULTS
            .iter()
            .map(|(rule, message)| (Arc::from(*rule), Arc::from(*message)))
            .collect();
        for (device, (id, kind, place)) in self.devices.iter().zip(&shared) {
            for (rule, message) in &fault_rules {
                out.push((
                    RuleSpec {
                        alarm_id: alarm_id(
                            &self.gateway.community,
                            &self.gateway.id,
                            &device.id,
                            rule,
                        )
                        .into(),
                        device: id.clone(),
                        point: empty.clone(),
                        class: SignalClass::Fault,
                        priority: Priority::Medium,
                        condition: Condition::External,
                        on_delay_ms: 0,
                        off_delay_ms: 0,
                        latch: false,
                        // Not before the console shows chatter summaries (wire v3, issue 7).
                        collapse_chatter: false,
                    },
                    AlarmMeta {
                        device: id.clone(),
                        device_kind: kind.clone(),
                        point: None,
                        rule: rule.clone(),
                        place: place.clone(),
                        message: message.clone(),
                        engineering_unit: None,
                    },
                ));
            }
        }
        let mut units: std::collections::HashMap<&str, Arc<str>> = std::collections::HashMap::new();
        for bound in &self.rules {
            let rule = &*bound.rule;
            let Ok(condition) = rule.condition() else {
                continue; // refused by check()
            };
            let message: Arc<str> = Arc::from(rule.message.as_str());
            let rule_id: Arc<str> = Arc::from(rule.id.as_str());
            let point: Arc<str> = Arc::from(rule.point.as_str());
            for &d in &bound.devices {
                let (Some(device), Some((id, kind, place))) = (self.devices.get(d), shared.get(d))
                else {
                    continue;
                };
                let unit = device
                    .points
                    .iter()
                    .find(|p| p.name == rule.point)
                    .and_then(|p| p.engineering_unit.as_deref())
                    .map(|u| units.entry(u).or_insert_with(|| Arc::from(u)).clone());
                out.push((
                    RuleSpec {
                        alarm_id: alarm_id(
                            &self.gateway.community,
                            &self.gateway.id,
                            &device.id,
                            &rule.id,
                        )
                        .into(),
                        device: id.clone(),
                        point: point.clone(),
                        class: rule.class,
                        priority: rule.priority,
                        condition,
                        on_delay_ms: rule.on_delay_ms,
                        off_delay_ms: rule.off_delay_ms,
                        latch: false,
                        // Not before the console shows chatter summaries (wire v3, issue 7).
                        collapse_chatter: false,
                    },
                    AlarmMeta {
                        device: id.clone(),
                        device_kind: kind.clone(),
                        point: Some(point.clone()),
                        rule: rule_id.clone(),
                        place: place.clone(),
                        message: message.clone(),
                        engineering_unit: unit,
                    },
                ));
            }
        }
        // The zone alarms of the coincidences (config/zones.rs): set by the watch.
        let zone_kind: Arc<str> = Arc::from("zone");
        for zone in self.zones() {
            let Some(c) = self.coincidences.get(zone.coincidence) else {
                continue;
            };
            let id: Arc<str> = Arc::from(zone.id.as_str());
            out.push((
                RuleSpec {
                    alarm_id: alarm_id(&self.gateway.community, &self.gateway.id, &zone.id, &c.id)
                        .into(),
                    device: id.clone(),
                    point: empty.clone(),
                    class: c.class,
                    priority: c.priority,
                    condition: Condition::External,
                    on_delay_ms: 0,
                    off_delay_ms: 0,
                    latch: false,
                    collapse_chatter: false,
                },
                AlarmMeta {
                    device: id,
                    device_kind: zone_kind.clone(),
                    point: None,
                    rule: c.id.as_str().into(),
                    place: Arc::new(zone.place),
                    message: c.message.as_str().into(),
                    engineering_unit: None,
                },
            ));
        }
        out
    }
}

/// What the gateway says about an alarm besides its state: where, what, which rule. The
/// parts shared by a device's alarms (its id, kind and place; a rule's message) are shared,
/// not copied: 1,000 devices have 3,000 alarms.
#[derive(Debug, Clone, PartialEq)]
pub struct AlarmMeta {
    pub device: Arc<str>,
    pub device_kind: Arc<str>,
    pub point: Option<Arc<str>>,
    pub rule: Arc<str>,
    pub place: Arc<Place>,
    pub message: Arc<str>,
    pub engineering_unit: Option<Arc<str>>,
}

/// Deserialize an array of tables entry by entry. Entries that fail are `None` (their
/// problem is recorded), so later checks still run on the others.
fn list<T: for<'de> Deserialize<'de>>(
    value: Option<toml::Value>,
    name: &str,
    problems: &mut Problems,
) -> Vec<Option<T>> {
    match value {
        None => Vec::new(),
        Some(toml::Value::Array(items)) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| {
                let at = label(name, i, &item);
                section::<T>(item, &at, problems)
            })
            .collect(),
        Some(_) => {
            problems.add(name, format!("must be an array of tables: [[{name}]]"));
            Vec::new()
        }
    }
}

/// `labels`: how messages name each device (see `config/devices.rs`).
fn check_devices(devices: &[Option<DeviceConfig>], labels: &[String], p: &mut Problems) {
    let at_of = |i: usize, d: &DeviceConfig| {
        labels
            .get(i)
            .cloned()
            .unwrap_or_else(|| format!("devices[{i}] ({})", d.id))
    };
    // Two devices at one Modbus address and unit id would read each other's registers and
    // raise each other's alarms under the wrong place.
    let mut addresses: BTreeMap<(String, u8), (usize, &str)> = BTreeMap::new();
    for (i, device) in devices.iter().enumerate() {
        let Some(d) = device else { continue };
        let (Transport::Tcp, Some(address), None) = (d.transport, &d.address, &d.link) else {
            continue;
        };
        let at = (address.trim().to_ascii_lowercase(), d.modbus_unit());
        match addresses.get(&at) {
            Some(&(first, first_id)) => p.add(
                format!("{}.address", at_of(i, d)),
                format!(
                    "{address} unit {} is also {}: one device per address and unit id",
                    d.modbus_unit(),
                    labels.get(first).map_or(first_id, String::as_str),
                ),
            ),
            None => {
                addresses.insert(at, (i, d.id.as_str()));
            }
        }
    }
    // A message must be one device's: no two devices' topics may both match one topic.
    let mqtt = devices
        .iter()
        .enumerate()
        .filter_map(|(i, d)| Some((i, d.as_ref()?)));
    for clash in crate::sources::mqtt_sensors::config::topic_clashes(mqtt) {
        let (i, first) = (clash.device, clash.first);
        if let (Some(d), Some(f)) = (&devices[i], &devices[first]) {
            let more = match clash.others {
                0 => String::new(),
                n => format!(" (and {n} more devices' topics)"),
            };
            p.add(
                format!("{}.topic", at_of(i, d)),
                format!(
                    "{:?} and {}'s {:?}{more} both match {:?}: a message there would be both devices'; give each device a topic or filter no other device's matches",
                    d.topic.as_deref().unwrap_or_default(),
                    at_of(first, f),
                    f.topic.as_deref().unwrap_or_default(),
                    clash.example,
                ),
            );
        }
    }
    let mut ids = BTreeMap::new();
    for (i, device) in devices.iter().enumerate() {
        let Some(d) = device else { continue };
        let at = at_of(i, d);
        p.id(&format!("{at}.id"), "device id", &d.id);
        if let Some(first) = ids.insert(d.id.as_str(), i) {
            p.add(
                format!("{at}.id"),
                format!("duplicate device id {:?} (also {})", d.id, at_of(first, d)),
            );
        }
        p.id(&format!("{at}.kind"), "device kind", &d.kind);
        // Place ids become line-protocol tags and the `B1-3-12-1201` form.
        places::check_device(d, &at, p);
        match d.transport {
            Transport::Tcp | Transport::Rtu | Transport::RtuOverTcp => {
                check_modbus_device(d, &at, p)
            }
            Transport::Mqtt => {
                for (field, message) in crate::sources::mqtt_sensors::config::device_problems(d) {
                    p.add(format!("{at}.{field}"), message);
                }
            }
            Transport::Gpio => check_gpio_device(d, &at, p),
        }
        for (j, pt) in d.points.iter().enumerate() {
            let Some(deadband) = pt.report_deadband else {
                continue;
            };
            let key = format!("{at}.points[{j}] ({}).report_deadband", pt.name);
            if d.report_every().is_none() {
                p.add(key, "means nothing with report_every_s = 0 (every poll is reported); remove one of them");
            } else if !deadband.is_finite() || deadband < 0.0 {
                p.add(key, "must be a number of at least 0");
            }
        }
        if matches!(d.transport, Transport::Mqtt | Transport::Gpio) {
            for (key, given) in [
                ("link", d.link.is_some()),
                ("poll_priority", d.poll_priority.is_some()),
            ] {
                if given {
                    p.add(
                        format!("{at}.{key}"),
                        "only for Modbus devices (tcp, rtu, rtu-over-tcp)",
                    );
                }
            }
        }
        if !d.transport.is_modbus() {
            for (j, pt) in d.points.iter().enumerate() {
                for (key, given) in [
                    ("wire_break_below", pt.wire_break_below.is_some()),
                    ("fault_above", pt.fault_above.is_some()),
                    ("raw_unit", pt.raw_unit.is_some()),
                ] {
                    if given {
                        p.add(
                            format!("{at}.points[{j}] ({}).{key}", pt.name),
                            "only for Modbus points (tcp, rtu, rtu-over-tcp)",
                        );
                    }
                }
            }
        }
        if d.transport != Transport::Gpio {
            const GPIO_ONLY: &str = "only for transport = \"gpio\"";
            if d.debounce_ms.is_some() {
                p.add(format!("{at}.debounce_ms"), GPIO_ONLY);
            }
            for (j, pt) in d.points.iter().enumerate() {
                for (key, given) in [
                    ("gpio", pt.gpio.is_some()),
                    ("active_low", pt.active_low.is_some()),
                ] {
                    if given {
                        p.add(format!("{at}.points[{j}] ({}).{key}", pt.name), GPIO_ONLY);
                    }
                }
            }
        }
        check_poll_keys(&PollKeys::of(d), &d.points, &at, p);
        check_point_values(&d.points, &at, p);
        if let Some(alive) = &d.alive_counter {
            if d.transport == Transport::Gpio {
                p.add(
                    format!("{at}.alive_counter"),
                    "not for gpio devices: a contact has no counter",
                );
            }
            check_alive_counter(alive, &d.points, &at, p);
        }
    }
}

/// A device's or profile's `alive_counter`: its point exists, its time is in range.
fn check_alive_counter(alive: &AliveCounter, points: &[PointConfig], at: &str, p: &mut Problems) {
    if !points.iter().any(|pt| pt.name == alive.point) {
        p.add(
            format!("{at}.alive_counter.point"),
            format!(
                "names {:?}, which is no point of the device{}",
                alive.point,
                if points.is_empty() {
                    String::new()
                } else {
                    format!(
                        " (its points: {})",
                        points
                            .iter()
                            .map(|pt| pt.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            ),
        );
    }
    if alive.stale_after_s == 0 || alive.stale_after_s > COMM_LOSS_MAX_S {
        p.add(
            format!("{at}.alive_counter.stale_after_s"),
            format!("must be between 1 and {COMM_LOSS_MAX_S} seconds"),
        );
    }
}

/// The device keys that say how a device is polled and reported, as a device has them
/// (every one given) or a profile (those it gives defaults for).
struct PollKeys {
    pub poll_interval_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub comm_loss_after_s: Option<u64>,
    pub report_every_s: Option<u64>,
    pub max_gap_registers: Option<u16>,
    pub max_read_registers: Option<u16>,
    pub max_gap_bits: Option<u16>,
    pub max_read_bits: Option<u16>,
}

impl PollKeys {
    fn of(d: &DeviceConfig) -> PollKeys {
        PollKeys {
            poll_interval_ms: Some(d.poll_interval_ms),
            timeout_ms: Some(d.timeout_ms),
            comm_loss_after_s: Some(d.comm_loss_after_s),
            report_every_s: d.report_every_s,
            max_gap_registers: Some(d.max_gap_registers),
            max_read_registers: Some(d.max_read_registers),
            max_gap_bits: Some(d.max_gap_bits),
            max_read_bits: Some(d.max_read_bits),
        }
    }
}

/// The ranges of the polling keys, and that one read holds each of `points`.
fn check_poll_keys(k: &PollKeys, points: &[PointConfig], at: &str, p: &mut Problems) {
    if k.report_every_s.is_some_and(|s| s > 86_400) {
        p.add(
            format!("{at}.report_every_s"),
            "must be at most 86400 seconds (0: every poll)",
        );
    }
    if k.poll_interval_ms.is_some_and(|ms| ms < 10) {
        p.add(format!("{at}.poll_interval_ms"), "must be at least 10 ms");
    }
    if k.timeout_ms == Some(0) {
        p.add(format!("{at}.timeout_ms"), "must be at least 1 ms");
    }
    if k.comm_loss_after_s
        .is_some_and(|s| s == 0 || s > COMM_LOSS_MAX_S)
    {
        p.add(
            format!("{at}.comm_loss_after_s"),
            format!("must be between 1 and {COMM_LOSS_MAX_S} seconds (GB 50166)"),
        );
    }
    if let Some(n) = k
        .max_read_registers
        .filter(|&n| n == 0 || n > MAX_READ_REGISTERS)
    {
        p.add(
            format!("{at}.max_read_registers"),
            format!(
                "is {n}; must be between 1 and {MAX_READ_REGISTERS} (the Modbus limit for one read)"
            ),
        );
    }
    // A gap lies between two points of at least one register each, inside one read.
    let gap_limit = MAX_READ_REGISTERS - 2;
    if let Some(n) = k.max_gap_registers.filter(|&n| n > gap_limit) {
        p.add(
            format!("{at}.max_gap_registers"),
            format!(
                "is {n}; must be at most {gap_limit} (a read holds at most {MAX_READ_REGISTERS} registers, \
                 and a gap lies between two points)"
            ),
        );
    }
    if let Some(n) = k.max_read_bits.filter(|&n| n == 0 || n > MAX_READ_BITS) {
        p.add(
            format!("{at}.max_read_bits"),
            format!(
                "is {n}; must be between 1 and {MAX_READ_BITS} (the Modbus limit for one read of coils or discrete inputs)"
            ),
        );
    }
    let gap_limit = MAX_READ_BITS - 2;
    if let Some(n) = k.max_gap_bits.filter(|&n| n > gap_limit) {
        p.add(
            format!("{at}.max_gap_bits"),
            format!(
                "is {n}; must be at most {gap_limit} (a read holds at most {MAX_READ_BITS} bits, \
                 and a gap lies between two points)"
            ),
        );
    }
    let max_read = k.max_read_registers.unwrap_or(MAX_READ_REGISTERS);
    if let Some(big) = points
        .iter()
        .filter(|pt| !pt.modbus_table().holds_bits())
        .find(|pt| pt.modbus_registers() > max_read)
        && max_read > 0
    {
        p.add(
            format!("{at}.max_read_registers"),
            format!(
                "is {max_read}, but point {:?} takes {} registers: one read must hold a whole point",
                big.name,
                big.modbus_registers()
            ),
        );
    }
}

/// What every point must be, whatever its transport: a unique name, a usable scale and
/// offset, a unit that fits an alarm event.
fn check_point_values(points: &[PointConfig], at: &str, p: &mut Problems) {
    let mut names = BTreeSet::new();
    for (j, pt) in points.iter().enumerate() {
        let pat = format!("{at}.points[{j}] ({})", pt.name);
        p.id(&format!("{pat}.name"), "point name", &pt.name);
        if !names.insert(pt.name.as_str()) {
            p.add(
                format!("{pat}.name"),
                format!("duplicate point {:?}", pt.name),
            );
        }
        if !pt.scale.is_finite() || pt.scale == 0.0 {
            p.add(format!("{pat}.scale"), "must be a finite, non-zero number");
        }
        if !pt.offset.is_finite() {
            p.add(format!("{pat}.offset"), "must be a finite number");
        }
        if let Some(unit) = &pt.engineering_unit {
            p.text(&format!("{pat}.engineering_unit"), unit);
        }
    }
}

/// The Modbus keys of a `tcp` device and its points: present where required, absent where
/// they belong to MQTT sensors.
fn check_gpio_device(d: &DeviceConfig, at: &str, p: &mut Problems) {
    if !cfg!(feature = "rpi") {
        p.add(
            format!("{at}.transport"),
            "this gateway was built without GPIO support: build it with `--features rpi` to read contacts on its inputs",
        );
    }
    const NOT_GPIO: &str = "not for transport = \"gpio\"";
    for (key, given) in [
        ("address", d.address.is_some()),
        ("unit_id", d.unit_id.is_some()),
        ("topic", d.topic.is_some()),
        ("timestamp_field", d.timestamp_field.is_some()),
        ("quality_field", d.quality_field.is_some()),
        ("quality_good", d.quality_good.is_some()),
    ] {
        if given {
            p.add(format!("{at}.{key}"), NOT_GPIO);
        }
    }
    if d.debounce_ms.is_some_and(|ms| ms > 10_000) {
        p.add(format!("{at}.debounce_ms"), "must be at most 10000 ms");
    }
    for (j, pt) in d.points.iter().enumerate() {
        let pat = format!("{at}.points[{j}] ({})", pt.name);
        for (key, given) in [
            ("register", pt.register.is_some()),
            ("table", pt.table.is_some()),
            ("type", pt.data_type.is_some()),
            ("bit", pt.bit.is_some()),
            ("byte_order", pt.byte_order.is_some()),
            ("json", pt.json.is_some()),
            ("quality_field", pt.quality_field.is_some()),
            ("quality_good", pt.quality_good.is_some()),
        ] {
            if given {
                p.add(format!("{pat}.{key}"), NOT_GPIO);
            }
        }
        match pt.gpio {
            None => p.add(
                format!("{pat}.gpio"),
                "required with transport = \"gpio\": the BCM number of the contact's input",
            ),
            Some(pin) if !LOCAL_WARNING_GPIOS.contains(&pin) => p.add(
                format!("{pat}.gpio"),
                format!(
                    "GPIO {pin} is not a free pin of the 40-pin header: give a BCM number from {} to {}",
                    LOCAL_WARNING_GPIOS.start(),
                    LOCAL_WARNING_GPIOS.end()
                ),
            ),
            Some(_) => {}
        }
    }
}

/// Every GPIO the config uses, input or output, once: two uses of one pin are refused.
fn check_gpio_pins(config: &Config, labels: &[String], p: &mut Problems) {
    let mut used: BTreeMap<u8, String> = BTreeMap::new();
    if let Some(pin) = config.gateway.local_warning_gpio {
        used.insert(pin, "gateway.local_warning_gpio".into());
    }
    for (i, d) in config.devices.iter().enumerate() {
        for (j, pt) in d.points.iter().enumerate() {
            let (Transport::Gpio, Some(pin)) = (d.transport, pt.gpio) else {
                continue;
            };
            let device = labels
                .get(i)
                .cloned()
                .unwrap_or_else(|| format!("devices[{i}] ({})", d.id));
            let here = format!("{device}.points[{j}] ({}).gpio", pt.name);
            if let Some(first) = used.get(&pin) {
                p.add(here, format!("GPIO {pin} is already used by {first}"));
            } else {
                used.insert(pin, here);
            }
        }
    }
}

fn check_modbus_device(d: &DeviceConfig, at: &str, p: &mut Problems) {
    match &d.address {
        // On a link, the link has the address (and `check_links` checks the device).
        _ if d.link.is_some() => {}
        None if d.transport != Transport::Tcp => p.add(
            format!("{at}.link"),
            "required with transport = \"rtu\" or \"rtu-over-tcp\": the [[links]] entry of the serial line",
        ),
        None => p.add(
            format!("{at}.address"),
            "required with transport = \"tcp\": host:port of the Modbus TCP device",
        ),
        Some(address) => {
            if let Err(why) = check_address(address) {
                p.add(format!("{at}.address"), why);
            }
        }
    }
    if d.modbus_unit() > 247 {
        p.add(format!("{at}.unit_id"), "Modbus unit ids go from 0 to 247");
    }
    const MQTT_ONLY: &str = "only for transport = \"mqtt\"";
    for (key, given) in [
        ("topic", d.topic.is_some()),
        ("timestamp_field", d.timestamp_field.is_some()),
        ("quality_field", d.quality_field.is_some()),
        ("quality_good", d.quality_good.is_some()),
    ] {
        if given {
            p.add(format!("{at}.{key}"), MQTT_ONLY);
        }
    }
    check_modbus_points(&d.points, at, p);
}

/// The points of a Modbus register map (a device's or a profile's): a register and a type
/// each, which fit together and the register space, and no key of another transport.
fn check_modbus_points(points: &[PointConfig], at: &str, p: &mut Problems) {
    const MQTT_ONLY: &str = "only for transport = \"mqtt\"";
    for (j, pt) in points.iter().enumerate() {
        let pat = format!("{at}.points[{j}] ({})", pt.name);
        for (key, given) in [
            ("json", pt.json.is_some()),
            ("quality_field", pt.quality_field.is_some()),
            ("quality_good", pt.quality_good.is_some()),
        ] {
            if given {
                p.add(format!("{pat}.{key}"), MQTT_ONLY);
            }
        }
        let Some(register) = pt.register else {
            p.add(
                format!("{pat}.register"),
                "required for a Modbus point (tcp, rtu, rtu-over-tcp, or a profile's): the first register, 0-based",
            );
            continue;
        };
        let Some(data_type) = pt.data_type else {
            p.add(
                format!("{pat}.type"),
                "required for a Modbus point (tcp, rtu, rtu-over-tcp, or a profile's): u16, i16, u32, i32, f32 or bit",
            );
            continue;
        };
        let last = u32::from(register) + u32::from(data_type.registers()) - 1;
        if last > u32::from(u16::MAX) {
            p.add(
                format!("{pat}.register"),
                format!("a {data_type} at {register} runs past register 65535"),
            );
        }
        check_modbus_point_type(pt, data_type, &pat, p);
        check_raw_validity(pt, data_type, &pat, p);
    }
}

/// A Modbus point's `wire_break_below`, `fault_above` and `raw_unit`.
fn check_raw_validity(pt: &PointConfig, data_type: DataType, pat: &str, p: &mut Problems) {
    let limits = [
        ("wire_break_below", pt.wire_break_below),
        ("fault_above", pt.fault_above),
    ];
    for (key, limit) in limits {
        match limit {
            Some(_) if data_type == DataType::Bit => p.add(
                format!("{pat}.{key}"),
                "not for type = \"bit\": a bit is 0 or 1",
            ),
            Some(v) if !v.is_finite() => p.add(format!("{pat}.{key}"), "must be a finite number"),
            _ => {}
        }
    }
    if let (Some(low), Some(high)) = (pt.wire_break_below, pt.fault_above)
        && low >= high
    {
        p.add(
            format!("{pat}.fault_above"),
            format!(
                "is {high}, not above wire_break_below ({low}): every raw value would be a fault"
            ),
        );
    }
    if let Some(unit) = &pt.raw_unit {
        if pt.wire_break_below.is_none() && pt.fault_above.is_none() {
            p.add(
                format!("{pat}.raw_unit"),
                "only means something with wire_break_below or fault_above; set one, or remove this",
            );
        }
        p.text(&format!("{pat}.raw_unit"), unit);
    }
}

/// A Modbus point's `table`, `type`, `bit` and `byte_order` fit together.
fn check_modbus_point_type(pt: &PointConfig, data_type: DataType, pat: &str, p: &mut Problems) {
    let table = pt.modbus_table();
    let bit_problem = match (table.holds_bits(), data_type, pt.bit) {
        (true, _, Some(_)) => Some(format!(
            "a {table} is one bit already: remove bit (it picks a bit of a holding or input register)"
        )),
        (false, DataType::Bit, None) => Some(format!(
            "required with type = \"bit\" in a {table} register: which bit, 0 (the least significant) to 15"
        )),
        (false, DataType::Bit, Some(bit)) if bit > 15 => Some(format!(
            "is {bit}; a register has bits 0 (the least significant) to 15"
        )),
        (false, DataType::Bit, Some(_)) | (_, _, None) => None,
        (false, _, Some(_)) => Some(format!(
            "only with type = \"bit\" (this point's type is {data_type}); use type = \"bit\" to read one bit of the register"
        )),
    };
    if table.holds_bits() && data_type != DataType::Bit {
        p.add(
            format!("{pat}.type"),
            format!("a {table} holds one bit: type must be \"bit\", not {data_type}"),
        );
    }
    if let Some(message) = bit_problem {
        p.add(format!("{pat}.bit"), message);
    }
    let Some(order) = pt.byte_order else {
        return;
    };
    let order_problem = match data_type {
        DataType::Bit => Some("not for type = \"bit\": a bit has no byte order".to_string()),
        t if t.is_32_bit() && order.bytes() != 4 => Some(format!(
            "{t} takes 4 bytes: ABCD, CDAB, BADC or DCBA, not {order}"
        )),
        t if !t.is_32_bit() && order.bytes() != 2 => {
            Some(format!("{t} takes 2 bytes: AB or BA, not {order}"))
        }
        _ => None,
    };
    if let Some(message) = order_problem {
        p.add(format!("{pat}.byte_order"), message);
    }
}

/// `host:port` with a numeric port; the host may be a name.
fn check_address(address: &str) -> Result<(), String> {
    if address.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(());
    }
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err(format!("{address:?} is not host:port"));
    };
    if host.is_empty() {
        return Err(format!("{address:?} has no host"));
    }
    // A host name, an IPv4 address or a bracketed IPv6 one; anything else would also need
    // escaping where the address is shown (metric labels, task names).
    if let Some(c) = host
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '[' | ']')))
    {
        return Err(format!("{address:?} has {c:?} in its host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("{address:?} has no valid port (1-65535)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[gateway]
id = "gw-b1"
community = "riverside"
data_dir = "data"

[[devices]]
id = "smoke-B1-12-03"
kind = "smoke"
building = "B1"
floor = "12"
unit = "03"
transport = "tcp"
address = "127.0.0.1:15021"

[[devices.points]]
name = "obscuration"
register = 0
type = "u16"
scale = 0.01
engineering_unit = "%/m"

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
    fn a_good_config_loads_with_defaults_filled_in() {
        let c = Config::from_toml_str(GOOD, "good.toml").unwrap();
        assert_eq!(c.mqtt.port, 1883);
        assert_eq!(c.devices[0].poll_interval_ms, 1000);
        assert_eq!(c.devices[0].modbus_unit(), 1);
        assert!(c.mqtt_sensors.is_none());
        let specs = c.alarm_specs();
        let ids: Vec<_> = specs.iter().map(|(s, _)| &*s.alarm_id).collect();
        assert_eq!(
            ids,
            [
                "riverside:gw-b1:gw-b1:clock_off",
                "riverside:gw-b1:gw-b1:undelivered",
                "riverside:gw-b1:gw-b1:queue_disk",
                "riverside:gw-b1:gw-b1:readings_shed",
                "riverside:gw-b1:gw-b1:task_failed",
                "riverside:gw-b1:smoke-B1-12-03:comm_lost",
                "riverside:gw-b1:smoke-B1-12-03:point_fault",
                "riverside:gw-b1:smoke-B1-12-03:smoke-high"
            ]
        );
        assert_eq!(specs[7].1.engineering_unit.as_deref(), Some("%/m"));
    }

    fn local_warning_problems(keys: &str) -> Vec<(String, String)> {
        let text = GOOD.replace(
            "data_dir = \"data\"",
            &format!("data_dir = \"data\"\n{keys}"),
        );
        match Config::from_toml_str(&text, "c.toml") {
            Ok(_) => Vec::new(),
            Err(report) => report
                .problems
                .into_iter()
                .map(|p| (p.field, p.message))
                .collect(),
        }
    }

    #[test]
    fn a_local_warning_relay_needs_the_rpi_build_and_a_header_pin() {
        let problems = local_warning_problems("local_warning_gpio = 17");
        if cfg!(feature = "rpi") {
            assert!(problems.is_empty(), "{problems:?}");
        } else {
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert_eq!(problems[0].0, "gateway.local_warning_gpio");
            assert!(problems[0].1.contains("--features rpi"), "{problems:?}");
        }
        if cfg!(feature = "rpi") {
            for pin in [0, 1, 28, 255] {
                let problems = local_warning_problems(&format!("local_warning_gpio = {pin}"));
                assert_eq!(problems.len(), 1, "{pin}: {problems:?}");
                assert_eq!(problems[0].0, "gateway.local_warning_gpio");
                assert!(
                    problems[0].1.contains(&format!("GPIO {pin} ")),
                    "{problems:?}"
                );
                assert!(problems[0].1.contains("from 2 to 27"), "{problems:?}");
            }
        }
        let problems = local_warning_problems("local_warning_active_low = true");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "gateway.local_warning_active_low");
        assert!(local_warning_problems("local_warning_active_low = false").is_empty());
        let problems = local_warning_problems("local_warning_gpio = -1");
        assert_eq!(problems[0].0, "gateway", "{problems:?}");
    }

    #[test]
    fn several_mistakes_are_reported_together_each_with_its_field() {
        let bad = GOOD
            .replace("address = \"127.0.0.1:15021\"", "address = \"nowhere\"")
            .replace("point = \"obscuration\"", "point = \"smoke\"")
            .replace("id = \"gw-b1\"", "id = \"gw/b1\"")
            + r#"
[[devices]]
id = "leak-1"
kind = "leak"
bulding = "B1"
"#;
        let report = Config::from_toml_str(&bad, "bad.toml").unwrap_err();
        let text = report.to_string();
        assert!(text.starts_with("bad.toml: "), "{text}");
        let fields: Vec<&str> = report.problems.iter().map(|p| p.field.as_str()).collect();
        assert!(fields.contains(&"gateway.id"), "{text}");
        assert!(
            fields.contains(&"devices[0] (smoke-B1-12-03).address"),
            "{text}"
        );
        assert!(
            fields
                .iter()
                .any(|f| f.starts_with("bad.toml:") && f.ends_with(" (smoke-high).point")),
            "{text}"
        );
        assert!(fields.contains(&"devices[1] (leak-1)"), "{text}");
        assert!(text.contains("bulding"), "{text}");
    }

    #[test]
    fn broken_toml_names_the_line() {
        let report = Config::from_toml_str("[gateway\nid=1", "x.toml").unwrap_err();
        assert_eq!(report.problems[0].field, "(syntax)");
        assert!(report.problems[0].message.contains("line 1"), "{report}");
    }

    #[test]
    fn an_unknown_section_and_a_missing_gateway_are_both_reported() {
        let report = Config::from_toml_str("[gatway]\nid = \"x\"\n", "x.toml").unwrap_err();
        let fields: Vec<&str> = report.problems.iter().map(|p| p.field.as_str()).collect();
        assert!(fields.contains(&"gateway"), "{report}");
        assert!(fields.contains(&"gatway"), "{report}");
    }

    #[test]
    fn a_rule_needs_exactly_one_limit_and_a_device_that_exists() {
        let bad = GOOD.replace("above = 2.5", "above = 2.5\nbelow = 1.0\ndevice = \"x\"");
        let report = Config::from_toml_str(&bad, "x.toml").unwrap_err();
        let text = report.to_string();
        assert!(text.contains("give exactly one condition: above, below, equals, any_bit, rise_by, fall_by or frozen_for_s (given: above, below)"), "{text}");
        assert!(text.contains("no device \"x\" in [[devices]]"), "{text}");
    }

    #[test]
    fn ids_and_messages_that_could_push_an_alarm_event_past_one_publish_are_refused() {
        let bad = GOOD
            .replace(
                "id = \"smoke-B1-12-03\"",
                &format!("id = \"{}\"", "d".repeat(65)),
            )
            .replace(
                "message = \"Smoke detected\"",
                &format!("message = \"{}\"", "m".repeat(70_000)),
            );
        let report = Config::from_toml_str(&bad, "x.toml").unwrap_err();
        let text = report.to_string();
        assert!(text.contains("65 characters long; at most 64"), "{text}");
        assert!(
            text.contains(" (smoke-high).message: is 70000 characters"),
            "{text}"
        );
    }

    #[test]
    fn broker_credentials_and_tls_problems_are_reported_with_their_fields() {
        let bad = GOOD.replace(
            "[[devices]]",
            r#"[mqtt]
port = 8883
username = "gw-b1"
password = "inline"
password_file = "/nonexistent/password"

[mqtt.tls]
ca_file = "/nonexistent/ca.crt"
cert_file = "/nonexistent/gw-b1.crt"

[[devices]]"#,
        );
        let report = Config::from_toml_str(&bad, "x.toml").unwrap_err();
        let text = report.to_string();
        let fields: Vec<&str> = report.problems.iter().map(|p| p.field.as_str()).collect();
        assert!(fields.contains(&"mqtt.password_file"), "{text}");
        assert!(fields.contains(&"mqtt.tls.key_file"), "{text}");
        assert!(
            text.contains("mqtt.tls.ca_file: cannot read /nonexistent/ca.crt"),
            "{text}"
        );
        assert!(!text.contains("inline"), "the password leaked: {text}");
    }

    #[test]
    fn a_password_from_a_file_is_loaded_and_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        std::fs::write(&file, "hunter2\n").unwrap();
        let good = GOOD.replace(
            "[[devices]]",
            &format!(
                "[mqtt]\nusername = \"gw-b1\"\npassword_file = {:?}\n\n[[devices]]",
                file.display().to_string()
            ),
        );
        let c = Config::from_toml_str(&good, "x.toml").unwrap();
        assert_eq!(c.mqtt.auth.username.as_deref(), Some("gw-b1"));
        assert_eq!(c.mqtt.auth.password.as_ref().unwrap().expose(), "hunter2");
        assert!(c.mqtt.auth.tls.is_none());
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    const SENSOR: &str = r#"
[[devices]]
id = "smoke-nb-1"
kind = "smoke"
building = "B2"
floor = "3"
unit = "01"
transport = "mqtt"
topic = "nbiot/riverside/smoke/1"
timestamp_field = "ts"
quality_field = "status"
quality_good = ["normal", 0, true]

[[devices.points]]
name = "obscuration"
json = "data.obscuration"
scale = 0.01
"#;

    fn problems_of(text: &str) -> Vec<(String, String)> {
        match Config::from_toml_str(text, "c.toml") {
            Ok(_) => Vec::new(),
            Err(report) => report
                .problems
                .into_iter()
                .map(|p| (p.field, p.message))
                .collect(),
        }
    }

    #[test]
    fn an_mqtt_sensor_loads_next_to_a_modbus_device() {
        let c = Config::from_toml_str(&format!("{GOOD}{SENSOR}"), "c.toml").unwrap();
        let d = &c.devices[1];
        assert_eq!(d.transport, Transport::Mqtt);
        assert_eq!(d.topic.as_deref(), Some("nbiot/riverside/smoke/1"));
        assert_eq!(
            d.quality_good.as_deref(),
            Some(
                &[
                    QualityValue::Text("normal".into()),
                    QualityValue::Number(0.0),
                    QualityValue::Bool(true)
                ][..]
            )
        );
        // The kind's rule binds to it like to any device.
        assert!(
            c.alarm_specs()
                .iter()
                .any(|(s, _)| &*s.alarm_id == "riverside:gw-b1:smoke-nb-1:smoke-high")
        );
    }

    #[test]
    fn an_mqtt_sensor_with_modbus_keys_or_without_its_own_is_refused_field_by_field() {
        let bad = SENSOR
            .replace(
                "topic = \"nbiot/riverside/smoke/1\"",
                "address = \"127.0.0.1:502\"\nunit_id = 3",
            )
            .replace(
                "json = \"data.obscuration\"",
                "register = 0\ntype = \"u16\"",
            )
            .replace("timestamp_field = \"ts\"", "timestamp_field = \"a..b\"");
        let problems = problems_of(&format!("{GOOD}{bad}"));
        let fields: Vec<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
        let at = "devices[1] (smoke-nb-1)";
        for want in [
            format!("{at}.address"),
            format!("{at}.unit_id"),
            format!("{at}.topic"),
            format!("{at}.timestamp_field"),
            format!("{at}.points[0] (obscuration).register"),
            format!("{at}.points[0] (obscuration).type"),
            format!("{at}.points[0] (obscuration).json"),
        ] {
            assert!(fields.contains(&want.as_str()), "{want}: {problems:?}");
        }
        assert_eq!(problems.len(), 7, "{problems:?}");
    }

    #[test]
    fn a_modbus_device_needs_its_address_and_registers_and_refuses_mqtt_keys() {
        let bad = GOOD
            .replace("address = \"127.0.0.1:15021\"", "topic = \"x\"")
            .replace("register = 0\n", "json = \"a\"\n");
        let problems = problems_of(&bad);
        let fields: Vec<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "devices[0] (smoke-B1-12-03).address",
                "devices[0] (smoke-B1-12-03).topic",
                "devices[0] (smoke-B1-12-03).points[0] (obscuration).json",
                "devices[0] (smoke-B1-12-03).points[0] (obscuration).register",
            ],
            "{problems:?}"
        );
    }

    #[test]
    fn sensor_topics_that_can_match_one_topic_are_refused_naming_both_devices() {
        let sensor = |id: &str, topic: &str| {
            SENSOR
                .replace("smoke-nb-1", id)
                .replace("nbiot/riverside/smoke/1", topic)
        };
        let text = [
            GOOD.to_string(),
            SENSOR.to_string(), // 1: nbiot/riverside/smoke/1
            sensor("smoke-nb-2", "nbiot/riverside/smoke/1"), // 2: the same topic
            sensor("smoke-nb-3", "nbiot/riverside/+/1"), // 3: matches 1's
            sensor("lift-1", "lift/E12/+/status"), // 4
            sensor("lift-2", "lift/E12/car/alarm"), // 5: a sibling, fine
            sensor("lift-3", "lift/E12/#"), // 6: everything under E12
            sensor("lift-4", "lift/E13/+/status"), // 7: another lift, fine
        ]
        .concat();
        let problems = problems_of(&text);
        let fields: Vec<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "devices[2] (smoke-nb-2).topic",
                "devices[3] (smoke-nb-3).topic",
                "devices[6] (lift-3).topic",
            ],
            "{problems:?}"
        );
        assert_eq!(
            problems[1].1,
            "\"nbiot/riverside/+/1\" and devices[1] (smoke-nb-1)'s \"nbiot/riverside/smoke/1\" (and 1 more devices' topics) both match \"nbiot/riverside/smoke/1\": a message there would be both devices'; give each device a topic or filter no other device's matches"
        );
        assert!(
            problems[2]
                .1
                .contains("devices[4] (lift-1)'s \"lift/E12/+/status\" (and 1 more"),
            "{problems:?}"
        );
    }

    #[test]
    fn a_sensor_topic_with_a_wildcard_inside_a_level_is_refused() {
        let bad = SENSOR.replace("smoke/1", "smoke+/1");
        let problems = problems_of(&format!("{GOOD}{bad}"));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "devices[1] (smoke-nb-1).topic");
        assert!(
            problems[0].1.contains("`+` must be a whole level"),
            "{problems:?}"
        );
    }

    #[test]
    fn a_quality_field_needs_its_good_values() {
        let bad = SENSOR.replace("quality_good = [\"normal\", 0, true]\n", "");
        let problems = problems_of(&format!("{GOOD}{bad}"));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "devices[1] (smoke-nb-1).quality_good");
        let bad = SENSOR.replace("quality_field = \"status\"\n", "");
        let problems = problems_of(&format!("{GOOD}{bad}"));
        assert_eq!(problems[0].0, "devices[1] (smoke-nb-1).quality_good");
        assert!(problems[0].1.contains("only means something"));
    }

    #[test]
    fn another_sensor_broker_is_checked_and_its_keys_need_a_host() {
        let with = |section: &str| {
            problems_of(&format!(
                "{}{SENSOR}",
                GOOD.replace("[[devices]]", &format!("{section}\n\n[[devices]]"))
            ))
        };
        assert!(with("[mqtt_sensors]\nhost = \"platform.example\"\nport = 8883").is_empty());
        let problems = with("[mqtt_sensors]\nport = 8883\nusername = \"s\"");
        let fields: Vec<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["mqtt_sensors.port", "mqtt_sensors.username"]);
        let problems = with(
            "[mqtt_sensors]\nhost = \"p\"\npassword_file = \"/nonexistent/pw\"\nusername = \"s\"",
        );
        assert_eq!(problems[0].0, "mqtt_sensors.password_file", "{problems:?}");
        let problems = problems_of(
            &GOOD.replace("[[devices]]", "[mqtt_sensors]\nhost = \"p\"\n\n[[devices]]"),
        );
        assert_eq!(problems[0].0, "mqtt_sensors", "{problems:?}");
        assert!(problems[0].1.contains("no device has transport"));
    }

    #[test]
    fn read_planner_limits_default_and_bad_ones_are_named_by_their_keys() {
        let c = Config::from_toml_str(GOOD, "good.toml").unwrap();
        assert_eq!(c.devices[0].max_gap_registers, 8);
        assert_eq!(c.devices[0].max_read_registers, 125);
        let with = |keys: &str| {
            let text = GOOD.replace(
                "address = \"127.0.0.1:15021\"",
                &format!("address = \"127.0.0.1:15021\"\n{keys}"),
            );
            Config::from_toml_str(&text, "x.toml")
        };
        let c = with("max_gap_registers = 0\nmax_read_registers = 1").unwrap();
        assert_eq!(c.devices[0].max_gap_registers, 0);
        let report = with("max_gap_registers = 200\nmax_read_registers = 126").unwrap_err();
        let text = report.to_string();
        assert!(
            text.contains(
                "devices[0] (smoke-B1-12-03).max_gap_registers: is 200; must be at most 123"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "devices[0] (smoke-B1-12-03).max_read_registers: is 126; must be between 1 and 125"
            ),
            "{text}"
        );
        let f32_point = GOOD.replace("type = \"u16\"", "type = \"f32\"").replace(
            "address = \"127.0.0.1:15021\"",
            "address = \"127.0.0.1:15021\"\nmax_read_registers = 1",
        );
        let text = Config::from_toml_str(&f32_point, "x.toml")
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("point \"obscuration\" takes 2 registers"),
            "{text}"
        );
        let negative = with("max_gap_registers = -1").unwrap_err().to_string();
        assert!(
            negative.contains("max_gap_registers") || negative.contains("devices[0]"),
            "{negative}"
        );
    }

    #[test]
    fn a_32_bit_point_may_not_run_past_the_last_register() {
        let bad = GOOD.replace(
            "register = 0\ntype = \"u16\"",
            "register = 65535\ntype = \"f32\"",
        );
        let report = Config::from_toml_str(&bad, "x.toml").unwrap_err();
        assert!(
            report.to_string().contains("runs past register 65535"),
            "{report}"
        );
    }

    /// The problems of GOOD with its point's `register = 0` and `type = "u16"` replaced by
    /// `keys`, as (field after the point's name, message).
    fn point_problems(keys: &str) -> Vec<(String, String)> {
        let text = GOOD.replace("register = 0\ntype = \"u16\"", keys);
        let at = "devices[0] (smoke-B1-12-03).points[0] (obscuration).";
        problems_of(&text)
            .into_iter()
            .map(|(f, m)| (f.strip_prefix(at).unwrap_or(&f).to_string(), m))
            .collect()
    }

    #[test]
    fn coils_discrete_inputs_bit_fields_and_byte_orders_load() {
        let points = r#"
[[devices.points]]
name = "fire"
register = 7
table = "discrete_input"
type = "bit"

[[devices.points]]
name = "sounder"
register = 0
table = "coil"
type = "bit"

[[devices.points]]
name = "fault"
register = 3
table = "input"
type = "bit"
bit = 15

[[devices.points]]
name = "flow"
register = 4
type = "f32"
byte_order = "CDAB"

[[devices.points]]
name = "level"
register = 6
type = "i16"
byte_order = "BA"

"#;
        let text = GOOD.replace("[[rules]]", &format!("{points}[[rules]]"));
        let c = Config::from_toml_str(&text, "c.toml").unwrap();
        let d = &c.devices[0];
        assert_eq!(d.points[1].table, Some(RegisterTable::DiscreteInput));
        assert_eq!(d.points[2].modbus_table(), RegisterTable::Coil);
        assert_eq!(d.points[3].bit, Some(15));
        assert_eq!(d.points[4].byte_order, Some(ByteOrder::Cdab));
        assert_eq!(d.points[5].byte_order, Some(ByteOrder::Ba));
        assert_eq!((d.max_read_bits, d.max_gap_bits), (2000, 128));
        for order in ["ABCD", "CDAB", "BADC", "DCBA"] {
            for ty in ["u32", "i32", "f32"] {
                let keys = format!("register = 0\ntype = \"{ty}\"\nbyte_order = \"{order}\"");
                assert_eq!(point_problems(&keys), [], "{ty} {order}");
            }
        }
    }

    #[test]
    fn a_coil_or_discrete_input_is_a_bit_without_a_bit_number() {
        // The order fits a u16: only the type is the mistake.
        let problems =
            point_problems("register = 0\ntable = \"coil\"\ntype = \"u16\"\nbyte_order = \"AB\"");
        assert_eq!(
            problems,
            [(
                "type".to_string(),
                "a coil holds one bit: type must be \"bit\", not u16".to_string()
            )]
        );
        let problems =
            point_problems("register = 0\ntable = \"discrete_input\"\ntype = \"bit\"\nbit = 3");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "bit");
        assert!(
            problems[0]
                .1
                .starts_with("a discrete_input is one bit already: remove bit"),
            "{problems:?}"
        );
        // serde names the point, not the key, for an unknown value (then the rule on the
        // point that did not load is reported too).
        let problems = point_problems("register = 0\ntable = \"coils\"\ntype = \"bit\"");
        assert!(
            problems[0].1.contains("coil") && problems[0].1.contains("discrete_input"),
            "the message lists the tables: {problems:?}"
        );
    }

    #[test]
    fn a_bit_field_names_a_bit_from_0_to_15_and_only_a_bit_field_does() {
        let problems = point_problems("register = 0\ntype = \"bit\"");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "bit");
        assert!(
            problems[0]
                .1
                .starts_with("required with type = \"bit\" in a holding register"),
            "{problems:?}"
        );
        let problems = point_problems("register = 0\ntype = \"bit\"\nbit = 16");
        assert_eq!(
            problems,
            [(
                "bit".to_string(),
                "is 16; a register has bits 0 (the least significant) to 15".to_string()
            )]
        );
        let problems = point_problems("register = 0\ntype = \"u16\"\nbit = 3");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "bit");
        assert!(
            problems[0]
                .1
                .starts_with("only with type = \"bit\" (this point's type is u16)"),
            "{problems:?}"
        );
        assert_eq!(point_problems("register = 0\ntype = \"bit\"\nbit = 0"), []);
    }

    #[test]
    fn a_byte_order_must_fit_the_width_of_the_type() {
        let problems = point_problems("register = 0\ntype = \"u16\"\nbyte_order = \"CDAB\"");
        assert_eq!(
            problems,
            [(
                "byte_order".to_string(),
                "u16 takes 2 bytes: AB or BA, not CDAB".to_string()
            )]
        );
        let problems = point_problems("register = 0\ntype = \"f32\"\nbyte_order = \"BA\"");
        assert_eq!(
            problems,
            [(
                "byte_order".to_string(),
                "f32 takes 4 bytes: ABCD, CDAB, BADC or DCBA, not BA".to_string()
            )]
        );
        let problems = point_problems("register = 0\ntype = \"bit\"\nbit = 1\nbyte_order = \"AB\"");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "byte_order");
        let problems = point_problems("register = 0\ntype = \"f32\"\nbyte_order = \"cdab\"");
        assert!(
            problems[0].1.contains("unknown variant `cdab`") && problems[0].1.contains("`CDAB`"),
            "{problems:?}"
        );
    }

    #[test]
    fn raw_validity_is_checked_by_its_keys() {
        let good = "register = 0\ntype = \"u16\"\nwire_break_below = 3600\nfault_above = 21000\nraw_unit = \"µA\"";
        assert_eq!(point_problems(good), []);
        let problems = point_problems(
            "register = 0\ntype = \"u16\"\nwire_break_below = 21000\nfault_above = 3600",
        );
        assert_eq!(
            problems,
            [(
                "fault_above".to_string(),
                "is 3600, not above wire_break_below (21000): every raw value would be a fault"
                    .to_string()
            )]
        );
        let problems = point_problems(
            "register = 0\ntype = \"bit\"\nbit = 2\nwire_break_below = 1\nraw_unit = \"mA\"",
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "wire_break_below");
        assert!(problems[0].1.contains("a bit is 0 or 1"), "{problems:?}");
        let problems =
            point_problems("register = 0\ntype = \"u16\"\nfault_above = nan\nraw_unit = \"mA\"");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "fault_above");
        let problems = point_problems("register = 0\ntype = \"u16\"\nraw_unit = \"mA\"");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "raw_unit");
        assert!(
            problems[0].1.contains("only means something"),
            "{problems:?}"
        );
        // An MQTT sensor's values are not loop currents read by the gateway.
        let sensor = SENSOR.replace(
            "json = \"data.obscuration\"",
            "json = \"data.obscuration\"\nwire_break_below = 3600",
        );
        let problems = problems_of(&format!("{GOOD}{sensor}"));
        assert_eq!(
            problems,
            [(
                "devices[1] (smoke-nb-1).points[0] (obscuration).wire_break_below".to_string(),
                "only for Modbus points (tcp, rtu, rtu-over-tcp)".to_string()
            )]
        );
    }

    #[test]
    fn modbus_point_keys_are_refused_on_other_transports() {
        let sensor = SENSOR.replace(
            "[[devices.points]]\nname = \"obscuration\"",
            "[[devices.points]]\nname = \"obscuration\"\nbit = 1\nbyte_order = \"AB\"",
        );
        let problems = problems_of(&format!("{GOOD}{sensor}"));
        let fields: Vec<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "devices[1] (smoke-nb-1).points[0] (obscuration).bit",
                "devices[1] (smoke-nb-1).points[0] (obscuration).byte_order"
            ]
        );
    }

    #[test]
    fn the_bit_read_limits_are_named_by_their_keys() {
        let with = |keys: &str| {
            let text = GOOD.replace(
                "address = \"127.0.0.1:15021\"",
                &format!("address = \"127.0.0.1:15021\"\n{keys}"),
            );
            problems_of(&text)
        };
        assert_eq!(with("max_read_bits = 1\nmax_gap_bits = 1998"), []);
        let problems = with("max_read_bits = 2001\nmax_gap_bits = 1999");
        assert_eq!(
            problems,
            [
                (
                    "devices[0] (smoke-B1-12-03).max_read_bits".to_string(),
                    "is 2001; must be between 1 and 2000 (the Modbus limit for one read of coils or discrete inputs)".to_string()
                ),
                (
                    "devices[0] (smoke-B1-12-03).max_gap_bits".to_string(),
                    "is 1999; must be at most 1998 (a read holds at most 2000 bits, and a gap lies between two points)".to_string()
                ),
            ]
        );
        assert_eq!(with("max_read_bits = 0").len(), 1);
    }

    const FIRE_PANEL: &str = r#"
[[devices]]
id = "panel-1"
kind = "fire_panel"
building = "B1"
floor = "1"
unit = "control"
transport = "gpio"
debounce_ms = 40

[[devices.points]]
name = "fire"
gpio = 17

[[devices.points]]
name = "fault"
gpio = 27
active_low = false
"#;

    #[test]
    fn a_gpio_device_needs_the_rpi_build_and_is_otherwise_checked_by_name() {
        let text = format!("{GOOD}{FIRE_PANEL}");
        let problems = problems_of(&text);
        if cfg!(feature = "rpi") {
            assert!(problems.is_empty(), "{problems:?}");
        } else {
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert_eq!(problems[0].0, "devices[1] (panel-1).transport");
            assert!(problems[0].1.contains("--features rpi"), "{problems:?}");
        }
        // Keys of other transports, a pin twice, a pin off the header, a missing pin.
        let bad = format!(
            "{GOOD}{}",
            FIRE_PANEL
                .replace(
                    "debounce_ms = 40",
                    "debounce_ms = 40\naddress = \"127.0.0.1:502\""
                )
                .replace("gpio = 27", "gpio = 17\nregister = 3")
        ) + "\n[[devices.points]]\nname = \"door\"\ngpio = 40\n\n[[devices.points]]\nname = \"x\"\n";
        let problems = problems_of(&bad);
        let fields: Vec<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
        for want in [
            "devices[1] (panel-1).address",
            "devices[1] (panel-1).points[1] (fault).register",
            "devices[1] (panel-1).points[1] (fault).gpio",
            "devices[1] (panel-1).points[2] (door).gpio",
            "devices[1] (panel-1).points[3] (x).gpio",
        ] {
            assert!(fields.contains(&want), "{want} not in {problems:#?}");
        }
        assert!(
            problems
                .iter()
                .any(|(_, m)| m.contains("GPIO 17 is already used")),
            "{problems:#?}"
        );
    }

    #[test]
    fn report_by_exception_keys_are_checked_by_name() {
        let text = GOOD.replacen(
            "[[devices.points]]",
            "report_every_s = 86401\n\n[[devices.points]]\nreport_deadband = -1.0",
            1,
        );
        let problems = problems_of(&text);
        let fields: Vec<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
        assert!(
            fields.iter().any(|f| f.ends_with(".report_every_s")),
            "{problems:#?}"
        );
        assert!(
            fields.iter().any(|f| f.ends_with(".report_deadband")),
            "{problems:#?}"
        );
        let every_poll = GOOD.replacen(
            "[[devices.points]]",
            "report_every_s = 0\n\n[[devices.points]]\nreport_deadband = 0.1",
            1,
        );
        let problems = problems_of(&every_poll);
        assert!(
            problems
                .iter()
                .any(|(f, m)| f.ends_with(".report_deadband") && m.contains("report_every_s = 0")),
            "{problems:#?}"
        );
        // The default heartbeat takes a deadband.
        let alone = GOOD.replacen(
            "[[devices.points]]",
            "[[devices.points]]\nreport_deadband = 0.1",
            1,
        );
        assert!(problems_of(&alone).is_empty());
        let good = GOOD.replacen(
            "[[devices.points]]",
            "report_every_s = 60\n\n[[devices.points]]\nreport_deadband = 0.1",
            1,
        );
        assert!(problems_of(&good).is_empty());
    }

    #[test]
    fn two_devices_at_one_address_and_unit_id_are_refused_and_other_unit_ids_are_not() {
        let device = |id: &str, unit: u8| {
            format!(
                "\n[[devices]]\nid = \"{id}\"\nkind = \"leak\"\nbuilding = \"B1\"\nfloor = \"1\"\nunit = \"1\"\ntransport = \"tcp\"\naddress = \"10.0.0.9:502\"\nunit_id = {unit}\n\n[[devices.points]]\nname = \"wet\"\nregister = 0\ntype = \"u16\"\n"
            )
        };
        let fine = format!("{GOOD}{}{}", device("leak-1", 1), device("leak-2", 2));
        assert!(problems_of(&fine).is_empty(), "{:#?}", problems_of(&fine));
        let clash = format!("{GOOD}{}{}", device("leak-1", 1), device("leak-2", 1));
        let problems = problems_of(&clash);
        assert_eq!(problems.len(), 1, "{problems:#?}");
        assert_eq!(problems[0].0, "devices[2] (leak-2).address");
        assert!(
            problems[0].1.contains("devices[1] (leak-1)"),
            "{problems:#?}"
        );
    }

    #[test]
    fn gpio_keys_on_a_modbus_device_are_refused() {
        let text = GOOD.replacen("[[devices.points]]", "[[devices.points]]\ngpio = 5", 1);
        let problems = problems_of(&text);
        assert!(
            problems
                .iter()
                .any(|(f, m)| f.ends_with(".gpio") && m.contains("only for transport = \"gpio\"")),
            "{problems:#?}"
        );
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;

    proptest::proptest! {
        /// Outside input: whatever the file holds, loading reports problems, never panics.
        #[test]
        fn no_config_text_makes_the_loader_panic(text in "(\\[\\[?[a-z.]{0,10}\\]\\]?\\n|[a-z_]{1,12} = (\"[^\"]{0,8}\"|-?[0-9]{1,6}(\\.[0-9])?|true|\\[\\])\\n){0,30}") {
            let _ = Config::from_toml_str(&text, "fuzz.toml");
        }
    }
}
