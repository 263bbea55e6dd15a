//! `[mqtt_sensors]`: the broker that sensors reporting by themselves publish to, and the
//! checks of `transport = "mqtt"` devices and their points.
//!
//! The doc comments on [`MqttSensorsSection`]'s fields are the user documentation of the
//! section; the device and point keys (`topic`, `timestamp_field`, `quality_field`,
//! `quality_good`, `json`) are documented on `DeviceConfig` and `PointConfig` in
//! `config.rs`.
//!
//! ```toml
//! # Absent: the sensors' broker is the gateway's own [mqtt] broker and account.
//! [mqtt_sensors]
//! host = "iot-platform.riverside.example"
//! port = 8883
//! username = "gw-b1-sensors"
//! password_file = "/etc/shouwang/sensors-password"
//! [mqtt_sensors.tls]
//! ca_file = "/etc/shouwang/platform-ca.crt"
//!
//! [[devices]]
//! id = "smoke-B1-12-03"
//! kind = "smoke"
//! building = "B1"
//! floor = "12"
//! unit = "03"
//! transport = "mqtt"
//! topic = "nbiot/riverside/smoke/861234567890123"
//! timestamp_field = "ts"
//! quality_field = "status"
//! quality_good = ["normal"]
//! [[devices.points]]
//! name = "obscuration"
//! json = "data.obscuration"
//! scale = 0.01
//! engineering_unit = "%/m"
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use shouwang_broker_auth::{BrokerAuth, Password};

use super::decode::JsonPath;
use super::topic::{self, FilterTrie};
use crate::config::{Config, DeviceConfig, MqttTls, Transport};

/// `[mqtt_sensors]`: where `transport = "mqtt"` devices publish.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSensorsSection {
    /// The broker's host name or address. Absent: the gateway's own `[mqtt]` broker, with
    /// its port, account and TLS (then `port`, `username`, `password`, `password_file` and
    /// `tls` must be absent too). With `docs/mosquitto/acl`, the gateway's account then
    /// needs read access to the sensor topics (see the commented example there).
    pub host: Option<String>,
    /// The broker's TCP port, with `host`. Default 1883.
    pub port: Option<u16>,
    /// MQTT keep-alive in seconds. Default: `[mqtt] keep_alive_s`.
    pub keep_alive_s: Option<u64>,
    /// The sensor link's client id. Default: the gateway's `[mqtt]` client id with
    /// `-sensors` after it (`shouwang-gateway-gw-b1-sensors`).
    pub client_id: Option<String>,
    /// The account on `host`'s broker (as `[mqtt] username`). Absent: none.
    pub username: Option<String>,
    /// Its password. Never logged. Prefer `password_file`.
    pub password: Option<Password>,
    /// A file that holds the password (as `[mqtt] password_file`).
    pub password_file: Option<PathBuf>,
    /// `[mqtt_sensors.tls]`: TLS to `host`'s broker (as `[mqtt.tls]`).
    pub tls: Option<MqttTls>,
    /// The account and TLS above, loaded with the config (only with `host`).
    #[serde(skip)]
    pub auth: BrokerAuth,
}

impl MqttSensorsSection {
    /// Every problem of the section as (field, message), with `auth` loaded when `host` is
    /// given. `has_devices`: whether any device has `transport = "mqtt"`.
    pub fn load(&mut self, has_devices: bool) -> Vec<(String, String)> {
        let mut p = Vec::new();
        if !has_devices {
            p.push((
                "mqtt_sensors".to_string(),
                "no device has transport = \"mqtt\": remove this section, or add one".to_string(),
            ));
        }
        match &self.host {
            None => {
                let own = [
                    ("port", self.port.is_some()),
                    ("username", self.username.is_some()),
                    ("password", self.password.is_some()),
                    ("password_file", self.password_file.is_some()),
                    ("tls", self.tls.is_some()),
                ];
                for (key, given) in own {
                    if given {
                        p.push((
                            format!("mqtt_sensors.{key}"),
                            "only with `host` (another broker); without it the sensors' broker is [mqtt]'s, with its account and TLS".to_string(),
                        ));
                    }
                }
            }
            Some(host) => {
                if host.trim().is_empty() {
                    p.push(("mqtt_sensors.host".into(), "must not be empty".into()));
                }
                if self.port == Some(0) {
                    p.push(("mqtt_sensors.port".into(), "must not be 0".into()));
                }
                match crate::sinks::mqtt::auth::load_section(
                    "mqtt_sensors",
                    self.username.clone(),
                    self.password.clone(),
                    self.password_file.clone(),
                    self.tls.as_ref(),
                ) {
                    Ok(auth) => self.auth = auth,
                    Err(found) => p.extend(found),
                }
            }
        }
        if let Some(k) = self.keep_alive_s
            && (k == 0 || k > 65_535)
        {
            p.push((
                "mqtt_sensors.keep_alive_s".into(),
                "must be between 1 and 65535 seconds".into(),
            ));
        }
        if let Some(id) = &self.client_id
            && id.is_empty()
        {
            p.push((
                "mqtt_sensors.client_id".into(),
                "must not be empty (leave it out instead)".into(),
            ));
        }
        p
    }
}

/// The broker the sensor link connects to, resolved from `[mqtt_sensors]` and `[mqtt]`.
#[derive(Debug, Clone, PartialEq)]
pub struct SensorBroker {
    pub host: String,
    pub port: u16,
    pub auth: BrokerAuth,
    pub keep_alive: Duration,
    pub client_id: String,
}

impl SensorBroker {
    pub fn of(config: &Config) -> SensorBroker {
        let section = config.mqtt_sensors.clone().unwrap_or_default();
        let main_id = config
            .mqtt
            .client_id
            .clone()
            .unwrap_or_else(|| format!("shouwang-gateway-{}", config.gateway.id));
        let (host, port, auth) = match &section.host {
            Some(host) => (host.clone(), section.port.unwrap_or(1883), section.auth),
            None => (
                config.mqtt.host.clone(),
                config.mqtt.port,
                config.mqtt.auth.clone(),
            ),
        };
        SensorBroker {
            host,
            port,
            auth,
            keep_alive: Duration::from_secs(
                section.keep_alive_s.unwrap_or(config.mqtt.keep_alive_s),
            ),
            client_id: section
                .client_id
                .unwrap_or_else(|| format!("{main_id}-sensors")),
        }
    }
}

/// Every problem of one `transport = "mqtt"` device, as (field relative to the device,
/// message): keys it must have, keys that belong to Modbus, paths that do not parse.
pub fn device_problems(d: &DeviceConfig) -> Vec<(String, String)> {
    let mut p: Vec<(String, String)> = Vec::new();
    let mut add = |field: &str, message: String| p.push((field.to_string(), message));
    const MODBUS_ONLY: &str =
        "a Modbus key: an mqtt device has none (its values come from `json` paths)";
    if d.address.is_some() {
        add("address", format!("{MODBUS_ONLY}; give `topic` instead"));
    }
    if d.unit_id.is_some() {
        add("unit_id", MODBUS_ONLY.to_string());
    }
    match &d.topic {
        None => add(
            "topic",
            "required with transport = \"mqtt\": the topic the device publishes on, or a filter with + or # that matches only its topics".into(),
        ),
        Some(t) => {
            if let Err(why) = topic::check(t) {
                add("topic", why);
            }
        }
    }
    path("timestamp_field", &d.timestamp_field, &mut add);
    path("quality_field", &d.quality_field, &mut add);
    check_good("quality_good", &d.quality_good, &mut add);
    let any_quality =
        d.quality_field.is_some() || d.points.iter().any(|pt| pt.quality_field.is_some());
    if d.quality_good.is_some() && !any_quality {
        add(
            "quality_good",
            "only means something with quality_field (on the device or a point)".into(),
        );
    }
    if d.quality_field.is_some() && d.quality_good.is_none() {
        add(
            "quality_good",
            "required with quality_field: the values that mean good, e.g. [\"ok\", 0]".into(),
        );
    }
    for (j, pt) in d.points.iter().enumerate() {
        let at = format!("points[{j}] ({})", pt.name);
        for (key, given) in [
            ("register", pt.register.is_some()),
            ("type", pt.data_type.is_some()),
            ("table", pt.table.is_some()),
            ("bit", pt.bit.is_some()),
            ("byte_order", pt.byte_order.is_some()),
        ] {
            if given {
                add(&format!("{at}.{key}"), MODBUS_ONLY.to_string());
            }
        }
        match &pt.json {
            None => add(
                &format!("{at}.json"),
                "required with transport = \"mqtt\": the dotted path of the value, e.g. \"data.smoke\"".into(),
            ),
            Some(_) => path(&format!("{at}.json"), &pt.json, &mut add),
        }
        path(&format!("{at}.quality_field"), &pt.quality_field, &mut add);
        check_good(&format!("{at}.quality_good"), &pt.quality_good, &mut add);
        if pt.quality_field.is_some() && pt.quality_good.is_none() && d.quality_good.is_none() {
            add(
                &format!("{at}.quality_good"),
                "required with quality_field (here or on the device)".into(),
            );
        }
        if pt.quality_good.is_some() && pt.quality_field.is_none() {
            add(
                &format!("{at}.quality_good"),
                "only means something with this point's quality_field".into(),
            );
        }
    }
    p
}

/// A dotted path, if given, must parse.
fn path(field: &str, value: &Option<String>, add: &mut dyn FnMut(&str, String)) {
    if let Some(text) = value
        && let Err(why) = JsonPath::parse(text)
    {
        add(field, why);
    }
}

fn check_good(
    field: &str,
    good: &Option<Vec<crate::config::QualityValue>>,
    add: &mut dyn FnMut(&str, String),
) {
    if let Some(values) = good {
        if values.is_empty() {
            add(field, "must name at least one value".into());
        }
        if values
            .iter()
            .any(|v| matches!(v, crate::config::QualityValue::Number(n) if !n.is_finite()))
        {
            add(field, "numbers must be finite".into());
        }
    }
}

/// Two `mqtt` devices whose topics can both match one topic: a message on it would be
/// both devices'. Reported on the later device.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicClash {
    /// The later device (an index into the devices).
    pub device: usize,
    /// The first device before it whose topic clashes with its topic.
    pub first: usize,
    /// A topic both match.
    pub example: String,
    /// How many other devices' topics clash with the device's too.
    pub others: usize,
}

/// Every pair of `mqtt` devices whose topics (exact or patterns, as [`topic::check`]
/// accepts them; others are left to that check) can both match one topic, one
/// [`TopicClash`] per later device, by device. Equal topics meet in a hash map and patterns
/// are found in a [`FilterTrie`], so a config with thousands of exact topics costs a trie
/// walk each, not a comparison with every other device.
pub fn topic_clashes<'a>(
    devices: impl IntoIterator<Item = (usize, &'a DeviceConfig)>,
) -> Vec<TopicClash> {
    let topics: BTreeMap<usize, &str> = devices
        .into_iter()
        .filter(|(_, d)| d.transport == Transport::Mqtt)
        .filter_map(|(i, d)| Some((i, d.topic.as_deref()?)))
        .filter(|(_, t)| topic::check(t).is_ok())
        .collect();
    // Every device of each topic, in order (two devices may give the same one).
    let mut by_topic: HashMap<&str, Vec<usize>> = HashMap::new();
    for (&i, &t) in &topics {
        by_topic.entry(t).or_default().push(i);
    }
    let mut patterns: FilterTrie<&str> = FilterTrie::new();
    for &t in by_topic.keys().filter(|t| topic::is_pattern(t)) {
        let _ = patterns.insert(t, t);
    }
    // The other topics each topic can meet: patterns meet patterns and exact topics, and
    // exact topics meet only patterns (two different exact topics never meet).
    let mut meets: HashMap<&str, Vec<&str>> = HashMap::new();
    for &t in by_topic.keys() {
        for &other in patterns.overlapping(t) {
            if other != t {
                meets.entry(t).or_default().push(other);
                if !topic::is_pattern(t) {
                    meets.entry(other).or_default().push(t);
                }
            }
        }
    }
    // Later device -> the earlier devices it clashes with.
    let mut clashes: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (&i, &t) in &topics {
        let others = meets.get(t).into_iter().flatten();
        let earlier: Vec<usize> = std::iter::once(&t)
            .chain(others)
            .flat_map(|s| by_topic.get(s).into_iter().flatten())
            .copied()
            .filter(|&j| j < i)
            .collect();
        if !earlier.is_empty() {
            clashes.insert(i, earlier);
        }
    }
    clashes
        .into_iter()
        .filter_map(|(device, earlier)| {
            let first = earlier.iter().copied().min()?;
            let example = topic::common_topic(topics.get(&device)?, topics.get(&first)?)?;
            Some(TopicClash {
                device,
                first,
                example,
                others: earlier.len() - 1,
            })
        })
        .collect()
}
