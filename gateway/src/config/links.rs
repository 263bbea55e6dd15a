//! `[[links]]`: the Modbus links devices are reached through, one per serial port or TCP
//! endpoint (see `sources/modbus/link.rs`).
//!
//! A `tcp` device may still give its own `address` instead of a `link`: devices at the
//! same address then share one implicit link with one connection.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{Config, Problems, Transport, check_address};

/// How a link reaches its devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LinkTransport {
    /// Modbus TCP to a device or a Modbus TCP gateway at `address`.
    Tcp,
    /// Modbus RTU on a serial line (RS-485) at `port`.
    Rtu,
    /// Modbus RTU frames over a TCP socket to a serial device server at `address`
    /// (transparent mode: the server copies bytes between the socket and its RS-485 port).
    RtuOverTcp,
}

impl LinkTransport {
    /// The device transport that goes with this link.
    pub fn device_transport(self) -> Transport {
        match self {
            LinkTransport::Tcp => Transport::Tcp,
            LinkTransport::Rtu => Transport::Rtu,
            LinkTransport::RtuOverTcp => Transport::RtuOverTcp,
        }
    }
}

/// A serial line's parity bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    None,
    /// The Modbus default (Modbus over Serial Line V1.02 §2.5.1).
    #[default]
    Even,
    Odd,
}

/// `[[links]]`: one serial port or TCP endpoint, and how to talk on it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkConfig {
    /// Unique link id, e.g. `b1-rs485`. ASCII letters, digits, `-`, `_`, `.`. Devices name
    /// it in their `link`.
    pub id: String,
    /// `tcp`, `rtu` or `rtu-over-tcp`.
    pub transport: LinkTransport,
    /// `host:port`: the Modbus TCP device or gateway (`tcp`), or the serial device server's
    /// socket (`rtu-over-tcp`). Refused for `rtu`.
    pub address: Option<String>,
    /// `rtu` only, and required there: the serial port, e.g. `/dev/ttyUSB0` or
    /// `/dev/ttyAMA0`.
    pub port: Option<String>,
    /// The line's baud rate: required for `rtu`; for `rtu-over-tcp` the rate the device
    /// server's serial side runs at (default 9600), used for the bus-time estimate and the
    /// silences. 1200 to 115200.
    pub baud: Option<u32>,
    /// `even` (the Modbus default), `odd` or `none`. Serial lines only.
    pub parity: Option<Parity>,
    /// 1 or 2. Default 1 with a parity bit, 2 without (the Modbus rule: every character is
    /// 11 bits). Serial lines only.
    pub stop_bits: Option<u8>,
    /// `tcp` only: how many connections to keep (1 to 8; default 1). A Modbus TCP gateway
    /// in front of an RS-485 bus serves one request at a time anyway; some TCP gateways
    /// accept several sockets and serve them in parallel. Devices are shared out among the
    /// connections in config order.
    pub connections: Option<u8>,
    /// After a request failed (no answer, a garbled one), the line must be silent this
    /// long before the next request, so a late reply is thrown away rather than read as
    /// the next device's answer. RTU has no transaction ids: a reply later than the
    /// device's `timeout_ms` plus this cannot be told from an answer. Default 100 ms.
    #[serde(default = "default_recovery_silence_ms")]
    pub recovery_silence_ms: u64,
    /// A device that stops answering is polled less and less often: after its first failed
    /// poll at its interval, then twice as long after each further failure, up to this
    /// many seconds, while the other devices keep their rates. Default 30, 1 to 100.
    #[serde(default = "default_quarantine_max_s")]
    pub quarantine_max_s: u64,
}

/// The most links one `for` may make: a gateway serves a few dozen lines at most.
const MAX_LINKS_PER_TEMPLATE: usize = 256;

/// `[[links]]` with their templates expanded: a table with `for` (as in `[[devices]]`:
/// `for = { n = "0..=3" }`, `port = "/dev/ttyUSB{n}"`, `id = "b{n}-rs485"`) stands for one
/// link per combination of its variables. Problems are named `links[i] (id).key`.
pub(super) fn expand(value: Option<toml::Value>, p: &mut Problems) -> Option<toml::Value> {
    use super::template::{DeviceTemplate, Variables};
    let Some(toml::Value::Array(items)) = value else {
        return value;
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let toml::Value::Table(mut table) = item else {
            out.push(item);
            continue;
        };
        let Some(each) = table.remove("for") else {
            out.push(toml::Value::Table(table));
            continue;
        };
        let group = match table.get("id").and_then(|v| v.as_str()) {
            Some(id) => format!("links[{i}] ({id})"),
            None => format!("links[{i}]"),
        };
        let vars = match Variables::parse(&each) {
            Ok(v) => v,
            Err(why) => {
                p.add(format!("{group}.for"), why);
                continue;
            }
        };
        if vars.count().is_none_or(|n| n > MAX_LINKS_PER_TEMPLATE) {
            p.add(
                format!("{group}.for"),
                format!("makes more than {MAX_LINKS_PER_TEMPLATE} links"),
            );
            continue;
        }
        let template = match DeviceTemplate::new(table, vars.names(), true) {
            Ok(t) => t,
            Err(problems) => {
                for (key, message) in problems {
                    p.add(format!("{group}.{key}"), message);
                }
                continue;
            }
        };
        for instance in vars.instances() {
            match template.render(&instance) {
                Ok(t) => out.push(toml::Value::Table(t)),
                Err((key, message)) => {
                    p.add(format!("{group}.{key}"), message);
                    break;
                }
            }
        }
    }
    Some(toml::Value::Array(out))
}

pub fn default_recovery_silence_ms() -> u64 {
    100
}

pub fn default_quarantine_max_s() -> u64 {
    30
}

impl LinkConfig {
    /// Bits per character on the wire: start, 8 data, parity, stop.
    pub fn bits_per_char(&self) -> u32 {
        let parity = self.parity.unwrap_or_default();
        let parity_bits = u32::from(parity != Parity::None);
        1 + 8 + parity_bits + u32::from(self.stop_bits_or_default())
    }

    /// The stop bits (see `stop_bits`).
    pub fn stop_bits_or_default(&self) -> u8 {
        self.stop_bits
            .unwrap_or(if self.parity.unwrap_or_default() == Parity::None {
                2
            } else {
                1
            })
    }

    /// The serial side's baud rate (see `baud`).
    pub fn baud_or_default(&self) -> u32 {
        self.baud.unwrap_or(9600)
    }
}

const BAUD_RATES: std::ops::RangeInclusive<u32> = 1200..=115_200;

/// `labels`: how messages name each device, in device order.
pub(super) fn check_links(config: &Config, labels: &[String], p: &mut Problems) {
    check_local_warning_modbus(config, p);
    let mut ids: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, link) in config.links.iter().enumerate() {
        let at = format!("links[{i}] ({})", link.id);
        p.id(&format!("{at}.id"), "link id", &link.id);
        if let Some(first) = ids.insert(link.id.as_str(), i) {
            p.add(
                format!("{at}.id"),
                format!("duplicate link id {:?} (also links[{first}])", link.id),
            );
        }
        let serial = matches!(link.transport, LinkTransport::Rtu);
        let over_tcp = matches!(link.transport, LinkTransport::RtuOverTcp);
        match (&link.address, link.transport) {
            (None, LinkTransport::Tcp | LinkTransport::RtuOverTcp) => p.add(
                format!("{at}.address"),
                "required: host:port of the device, gateway or serial device server",
            ),
            (Some(a), LinkTransport::Tcp | LinkTransport::RtuOverTcp) => {
                if let Err(why) = check_address(a) {
                    p.add(format!("{at}.address"), why);
                }
            }
            (Some(_), LinkTransport::Rtu) => p.add(
                format!("{at}.address"),
                "not for transport = \"rtu\": give the serial `port`",
            ),
            (None, LinkTransport::Rtu) => {}
        }
        match (&link.port, serial) {
            (None, true) => p.add(
                format!("{at}.port"),
                "required with transport = \"rtu\": the serial port, e.g. /dev/ttyUSB0",
            ),
            (Some(port), true) if port.trim().is_empty() => {
                p.add(format!("{at}.port"), "must not be empty")
            }
            (Some(_), false) => p.add(format!("{at}.port"), "only for transport = \"rtu\""),
            _ => {}
        }
        match link.baud {
            None if serial => p.add(
                format!("{at}.baud"),
                "required with transport = \"rtu\": the line's baud rate, e.g. 9600",
            ),
            Some(_) if !serial && !over_tcp => p.add(
                format!("{at}.baud"),
                "only for serial lines (rtu, rtu-over-tcp)",
            ),
            Some(b) if !BAUD_RATES.contains(&b) => p.add(
                format!("{at}.baud"),
                format!(
                    "{b} is not a serial baud rate from {} to {}",
                    BAUD_RATES.start(),
                    BAUD_RATES.end()
                ),
            ),
            _ => {}
        }
        if !(serial || over_tcp) {
            for (key, given) in [
                ("parity", link.parity.is_some()),
                ("stop_bits", link.stop_bits.is_some()),
            ] {
                if given {
                    p.add(
                        format!("{at}.{key}"),
                        "only for serial lines (rtu, rtu-over-tcp)",
                    );
                }
            }
        }
        if link.stop_bits.is_some_and(|s| s != 1 && s != 2) {
            p.add(format!("{at}.stop_bits"), "must be 1 or 2");
        }
        match link.connections {
            Some(_) if link.transport != LinkTransport::Tcp => p.add(
                format!("{at}.connections"),
                "only for transport = \"tcp\": a serial line carries one request at a time",
            ),
            Some(n) if !(1..=8).contains(&n) => {
                p.add(format!("{at}.connections"), "must be between 1 and 8")
            }
            _ => {}
        }
        if link.recovery_silence_ms > 10_000 {
            p.add(
                format!("{at}.recovery_silence_ms"),
                "must be at most 10000 ms",
            );
        }
        if !(1..=100).contains(&link.quarantine_max_s) {
            p.add(
                format!("{at}.quarantine_max_s"),
                "must be between 1 and 100 seconds",
            );
        }
        if !config
            .devices
            .iter()
            .any(|d| d.link.as_deref() == Some(&link.id))
        {
            p.add(at.clone(), "no device names this link");
        }
    }

    // A serial line whose polls need more of its time than it has.
    if p.0.is_empty() {
        for load in crate::sources::modbus::budget::loads(config) {
            if let Some(u) = load.utilisation.filter(|u| *u > 1.0) {
                let at = config
                    .links
                    .iter()
                    .position(|l| load.link.split('#').next() == Some(l.id.as_str()))
                    .map_or_else(
                        || load.link.clone(),
                        |i| format!("links[{i}] ({})", load.link),
                    );
                p.add(
                    at,
                    format!(
                        "the polls of its {} devices ({:.1} requests/s) need {:.0} % of the line's time ({}): \
                         poll less often, read fewer registers, raise the baud rate or split the bus",
                        load.devices,
                        load.requests_per_s,
                        u * 100.0,
                        load.describe
                    ),
                );
            }
        }
    }

    // Every device's link: named and of its transport; one device per unit id on a link.
    let label = |i: usize| {
        labels.get(i).cloned().unwrap_or_else(|| {
            let id = config.devices.get(i).map_or("?", |d| d.id.as_str());
            format!("devices[{i}] ({id})")
        })
    };
    let mut units: BTreeMap<(&str, u8), usize> = BTreeMap::new();
    for (i, d) in config.devices.iter().enumerate() {
        let at = label(i);
        let Some(name) = &d.link else { continue };
        let Some(link) = config.links.iter().find(|l| &l.id == name) else {
            p.add(
                format!("{at}.link"),
                format!("no link {name:?} in [[links]]"),
            );
            continue;
        };
        if link.transport.device_transport() != d.transport {
            p.add(
                format!("{at}.transport"),
                format!(
                    "is {:?}, but link {name:?} is {:?}: leave `transport` out, a device on a link takes the link's",
                    d.transport, link.transport
                ),
            );
        }
        if d.address.is_some() {
            p.add(
                format!("{at}.address"),
                format!("the device is on link {name:?}, which has the address; remove this"),
            );
        }
        let Some(unit) = d.unit_id else {
            p.add(
                format!("{at}.unit_id"),
                format!("required: the device's unit id on link {name:?} (1 to 247)"),
            );
            continue;
        };
        if unit == 0 {
            p.add(
                format!("{at}.unit_id"),
                "0 is the broadcast address, which no device answers: give 1 to 247",
            );
        }
        match units.get(&(name.as_str(), unit)) {
            Some(&first) => p.add(
                format!("{at}.unit_id"),
                format!(
                    "unit {unit} on link {name:?} is also {}: one device per unit id on a link",
                    label(first)
                ),
            ),
            None => {
                units.insert((name.as_str(), unit), i);
            }
        }
    }
}

/// `[gateway] local_warning_modbus`: a writable point of a Modbus device.
pub(super) fn check_local_warning_modbus(config: &Config, p: &mut Problems) {
    let Some(at) = &config.gateway.local_warning_modbus else {
        return;
    };
    let field = "gateway.local_warning_modbus";
    let Some(device) = config.devices.iter().find(|d| d.id == at.device) else {
        p.add(field, format!("no device {:?} in [[devices]]", at.device));
        return;
    };
    if !device.transport.is_modbus() {
        p.add(
            field,
            format!("device {:?} is not a Modbus device", at.device),
        );
        return;
    }
    for value in [0.0, 1.0] {
        if let Err(e) = crate::sources::modbus::link::write_request(device, &at.point, value) {
            p.add(field, e.to_string());
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::modbus::links;

    const SITE: &str = "[gateway]\nid = \"gw\"\ncommunity = \"c\"\ndata_dir = \"d\"\n";

    /// A device at unit `unit` on link `link`, with `extra` keys, one u16 point.
    fn device(id: &str, link: &str, unit: u8, extra: &str) -> String {
        format!(
            "\n[[devices]]\nid = \"{id}\"\nkind = \"smoke\"\nbuilding = \"B1\"\nfloor = \"1\"\nunit = \"1\"\n\
             link = \"{link}\"\nunit_id = {unit}\n{extra}\n[[devices.points]]\nname = \"v\"\nregister = 0\ntype = \"u16\"\n"
        )
    }

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
    fn a_link_template_makes_one_link_per_value_and_devices_find_them() {
        let text = format!(
            "{SITE}[[links]]\nfor = {{ n = \"0..=3\" }}\nid = \"b{{n}}-rs485\"\ntransport = \"rtu\"\n\
             port = \"/dev/ttyUSB{{n}}\"\nbaud = 9600\n{}{}{}{}",
            device("a", "b0-rs485", 1, ""),
            device("b", "b1-rs485", 1, ""),
            device("c", "b2-rs485", 1, ""),
            device("d", "b3-rs485", 1, "")
        );
        let config = Config::from_toml_str(&text, "c.toml").unwrap_or_else(|e| panic!("{e}"));
        let ports: Vec<(&str, Option<&str>)> = config
            .links
            .iter()
            .map(|l| (l.id.as_str(), l.port.as_deref()))
            .collect();
        assert_eq!(
            ports,
            [
                ("b0-rs485", Some("/dev/ttyUSB0")),
                ("b1-rs485", Some("/dev/ttyUSB1")),
                ("b2-rs485", Some("/dev/ttyUSB2")),
                ("b3-rs485", Some("/dev/ttyUSB3"))
            ]
        );
        let broken = format!(
            "{SITE}[[links]]\nfor = {{ n = \"0..=1\" }}\nid = \"b{{m}}\"\ntransport = \"rtu\"\n\
             port = \"/dev/ttyUSB{{n}}\"\nbaud = 9600\n{}",
            device("a", "b0", 1, "")
        );
        let problems = problems_of(&broken);
        assert!(
            problems
                .iter()
                .any(|(f, m)| f == "links[0] (b{m}).id" && m.contains("m")),
            "{problems:?}"
        );
    }

    #[test]
    fn devices_on_a_serial_link_take_its_transport_and_share_it() {
        let text = format!(
            "{SITE}[[links]]\nid = \"b1-rs485\"\ntransport = \"rtu\"\nport = \"/dev/ttyUSB0\"\nbaud = 9600\n{}{}",
            device("a", "b1-rs485", 1, ""),
            device("b", "b1-rs485", 2, "")
        );
        let config = Config::from_toml_str(&text, "c.toml").unwrap_or_else(|e| panic!("{e}"));
        assert!(config.devices.iter().all(|d| d.transport == Transport::Rtu));
        let link = &config.links[0];
        // Even parity by default (the Modbus default), one stop bit: 11-bit characters.
        assert_eq!(link.bits_per_char(), 11);
        let specs = links(&config);
        assert_eq!(specs.len(), 1);
        assert_eq!(specs[0].devices.len(), 2);
    }

    #[test]
    fn tcp_devices_at_one_address_share_one_link_and_a_multi_connection_link_is_lanes() {
        let tcp = |id: &str, unit: u8| {
            format!(
                "\n[[devices]]\nid = \"{id}\"\nkind = \"smoke\"\nbuilding = \"B1\"\nfloor = \"1\"\nunit = \"1\"\n\
                 transport = \"tcp\"\naddress = \"10.0.0.5:502\"\nunit_id = {unit}\n\
                 [[devices.points]]\nname = \"v\"\nregister = 0\ntype = \"u16\"\n"
            )
        };
        let text = format!(
            "{SITE}[[links]]\nid = \"gw2\"\ntransport = \"tcp\"\naddress = \"10.0.0.6:502\"\nconnections = 2\n{}{}{}{}{}",
            tcp("a", 1),
            tcp("b", 2),
            device("c", "gw2", 1, ""),
            device("d", "gw2", 2, ""),
            device("e", "gw2", 3, ""),
        );
        let config = Config::from_toml_str(&text, "c.toml").unwrap_or_else(|e| panic!("{e}"));
        let specs = links(&config);
        let shape: Vec<(String, usize)> = specs
            .iter()
            .map(|s| (s.id.clone(), s.devices.len()))
            .collect();
        assert_eq!(
            shape,
            vec![
                ("gw2#1".to_string(), 2),
                ("gw2#2".to_string(), 1),
                ("tcp:10.0.0.5:502".to_string(), 2)
            ]
        );
    }

    #[test]
    fn link_mistakes_are_named_by_their_keys() {
        let text = format!(
            "{SITE}[[links]]\nid = \"bus\"\ntransport = \"rtu\"\naddress = \"1.2.3.4:5\"\nbaud = 7\nconnections = 2\nstop_bits = 3\n\
             [[links]]\nid = \"idle\"\ntransport = \"tcp\"\n{}{}{}",
            device("a", "bus", 1, ""),
            device("b", "bus", 1, ""),
            device(
                "d",
                "bus",
                0,
                "transport = \"tcp\"\naddress = \"1.2.3.4:502\""
            ),
        );
        let problems = problems_of(&text);
        let has = |field: &str, words: &str| {
            problems
                .iter()
                .any(|(f, m)| f == field && m.contains(words))
        };
        assert!(
            has("links[0] (bus).address", "serial `port`"),
            "{problems:?}"
        );
        assert!(has("links[0] (bus).port", "required"), "{problems:?}");
        assert!(
            has("links[0] (bus).baud", "not a serial baud rate"),
            "{problems:?}"
        );
        assert!(
            has("links[0] (bus).connections", "one request at a time"),
            "{problems:?}"
        );
        assert!(has("links[0] (bus).stop_bits", "1 or 2"), "{problems:?}");
        assert!(has("links[1] (idle).address", "required"), "{problems:?}");
        assert!(
            has("links[1] (idle)", "no device names this link"),
            "{problems:?}"
        );
        assert!(
            has("devices[1] (b).unit_id", "also devices[0] (a)"),
            "{problems:?}"
        );
        assert!(
            has("devices[2] (d).transport", "leave `transport` out"),
            "{problems:?}"
        );
        assert!(has("devices[2] (d).address", "remove this"), "{problems:?}");
        assert!(has("devices[2] (d).unit_id", "broadcast"), "{problems:?}");
        let unknown = format!(
            "{SITE}{}{}",
            device("a", "bus", 1, ""),
            device("c", "nowhere", 2, "")
        );
        let problems = problems_of(&unknown);
        assert!(
            problems
                .iter()
                .any(|(f, m)| f == "devices[1] (c).link" && m == "no link \"nowhere\" in [[links]]"),
            "{problems:?}"
        );
    }

    #[test]
    fn a_bus_whose_polls_need_more_than_its_time_is_refused_with_the_figures() {
        // 40 devices of two registers 19 apart (two reads: the gap is over 8) every 200 ms
        // at 9600 baud: one exchange is 8 + 7 characters and 7 of silence (25.2 ms), and
        // there are 400 a second: 1008 %.
        let mut text = format!(
            "{SITE}[[links]]\nid = \"slow\"\ntransport = \"rtu\"\nport = \"/dev/ttyS0\"\nbaud = 9600\n"
        );
        for unit in 1..=40u8 {
            text.push_str(&format!(
                "\n[[devices]]\nid = \"d{unit}\"\nkind = \"level\"\nbuilding = \"B1\"\nfloor = \"1\"\nunit = \"1\"\n\
                 link = \"slow\"\nunit_id = {unit}\npoll_interval_ms = 200\n\
                 [[devices.points]]\nname = \"a\"\nregister = 0\ntype = \"u16\"\n\
                 [[devices.points]]\nname = \"b\"\nregister = 19\ntype = \"u16\"\n"
            ));
        }
        let problems = problems_of(&text);
        assert_eq!(problems.len(), 1, "{problems:?}");
        let (field, message) = &problems[0];
        assert_eq!(field, "links[0] (slow)");
        assert!(
            message.contains("40 devices (400.0 requests/s) need 1008 %"),
            "{message}"
        );
        assert!(message.contains("rtu /dev/ttyS0 9600 baud"), "{message}");
    }

    #[test]
    fn the_local_warning_on_a_modbus_relay_must_be_a_writable_point() {
        let relay = "\n[[devices]]\nid = \"relay\"\nkind = \"relay\"\nbuilding = \"B1\"\nfloor = \"1\"\nunit = \"1\"\n\
                     link = \"bus\"\nunit_id = 9\n\
                     [[devices.points]]\nname = \"sounder\"\nregister = 0\ntable = \"coil\"\ntype = \"bit\"\n\
                     [[devices.points]]\nname = \"feedback\"\nregister = 0\ntable = \"discrete_input\"\ntype = \"bit\"\n";
        let with = |point: &str| {
            format!(
                "[gateway]\nid = \"gw\"\ncommunity = \"c\"\ndata_dir = \"d\"\nlocal_warning_modbus = {{ device = \"relay\", point = \"{point}\" }}\n\
                 [[links]]\nid = \"bus\"\ntransport = \"rtu\"\nport = \"/dev/ttyS0\"\nbaud = 9600\n{relay}"
            )
        };
        assert!(
            problems_of(&with("sounder")).is_empty(),
            "{:?}",
            problems_of(&with("sounder"))
        );
        let problems = problems_of(&with("feedback"));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "gateway.local_warning_modbus");
        assert!(problems[0].1.contains("read-only"), "{problems:?}");
        let problems = problems_of(&with("lamp"));
        assert!(problems[0].1.contains("no such point"), "{problems:?}");
    }

    #[test]
    fn a_device_is_polled_first_when_an_alarm_rule_watches_it_unless_it_says_otherwise() {
        let rule = |id: &str, kind: &str, class: &str| {
            format!(
                "\n[[rules]]\nid = \"{id}\"\ndevice_kind = \"{kind}\"\npoint = \"v\"\nclass = \"{class}\"\n\
                 priority = \"high\"\nabove = 1.0\nmessage = \"m\"\n"
            )
        };
        let kind = |k: &str| format!("kind = \"{k}\"\n");
        let text = format!(
            "{SITE}[[links]]\nid = \"bus\"\ntransport = \"rtu\"\nport = \"/dev/ttyS0\"\nbaud = 9600\n{}{}{}{}{}{}",
            device("smoke", "bus", 1, ""),
            device("valve", "bus", 2, "").replace("kind = \"smoke\"\n", &kind("valve")),
            device("meter", "bus", 3, "").replace("kind = \"smoke\"\n", &kind("meter")),
            device("told", "bus", 4, "poll_priority = \"routine\""),
            rule("smoke-high", "smoke", "alarm"),
            rule("valve-closed", "valve", "supervisory"),
        );
        let config = Config::from_toml_str(&text, "c.toml").unwrap_or_else(|e| panic!("{e}"));
        use crate::config::PollPriority::*;
        assert_eq!(
            crate::sources::modbus::link::poll_priorities(&config),
            [LifeSafety, Supervisory, Routine, Routine]
        );
    }
}
