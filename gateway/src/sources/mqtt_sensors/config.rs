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

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use shouwang_broker_auth::{BrokerAuth, Password};

use super::decode::JsonPath;
use crate::config::{Config, DeviceConfig, MqttTls};

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
            "required with transport = \"mqtt\": the exact topic the device publishes on".into(),
        ),
        Some(topic) => {
            if let Err(why) = check_topic(topic) {
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

/// One exact topic: no wildcards, no `$` topics (the broker's own), within MQTT's limits.
pub fn check_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        return Err("must not be empty".into());
    }
    if topic.len() > 65_535 {
        return Err("is longer than MQTT's 65535 bytes".into());
    }
    if topic.contains(['+', '#']) {
        return Err(format!(
            "{topic:?} has a wildcard (+ or #): give each device its one exact topic (patterns that tell devices apart are not supported yet)"
        ));
    }
    if topic.contains('\0') {
        return Err("must not hold a NUL character".into());
    }
    if topic.starts_with('$') {
        return Err(format!(
            "{topic:?} starts with '$': those topics are the broker's own"
        ));
    }
    Ok(())
}

/// Topics that more than one device names, with the devices' indices.
pub fn shared_topics(devices: &[Option<DeviceConfig>]) -> Vec<(usize, usize)> {
    let mut seen = std::collections::BTreeMap::new();
    let mut shared = Vec::new();
    for (i, d) in devices.iter().enumerate() {
        if let Some(d) = d
            && d.transport == crate::config::Transport::Mqtt
            && let Some(topic) = &d.topic
            && let Some(first) = seen.insert(topic.as_str(), i)
        {
            shared.push((i, first));
        }
    }
    shared
}
