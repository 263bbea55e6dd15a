//! Device profiles: a product's Modbus register map and its sensible defaults, written once
//! and named by devices (`profile = "smoke-detector"`) instead of repeated on each.
//!
//! The gateway ships profiles in `gateway/profiles/*.toml`, compiled into the binary
//! ([`SHIPPED`]), so a gateway needs no file but its config. A site adds its own in
//! `[gateway] profiles_dir`: every `*.toml` there is one profile. A site profile may not take
//! a shipped profile's id unless it says `replaces_shipped = true`: a typo'd copy of
//! `smoke-detector` must not silently change every smoke detector of the site.
//!
//! # What a device gets from its profile
//! Applied to the device's TOML table before it is deserialized, so every later check sees
//! the device as if it had been written out in full:
//! - `kind`: the profile's. A device may repeat it, not change it (the rules the profile
//!   expects select devices by kind).
//! - the defaults (`poll_interval_ms`, `timeout_ms`, `comm_loss_after_s`, `report_every_s`,
//!   `max_gap_registers`, `max_read_registers`, `max_gap_bits`, `max_read_bits`,
//!   `poll_priority`, `alive_counter`): each one the device does not give.
//! - the points, merged by name: a device point named like a profile point changes only the
//!   keys it gives (`{ name = "pressure", register = 2 }` moves the transmitter to the
//!   module's third channel); a device point with a new name is added after the profile's.
//!   With `report_every_s = 0` (report every poll) the profile's `report_deadband`s are
//!   dropped, since they would mean nothing.
//!
//! # Invariants
//! - Each profile is checked once, where it is written (`profile smoke-detector
//!   (shipped).points[2] ...`), not on each device that names it; a device naming a profile
//!   with problems is left out of the config, which is refused anyway.
//! - Profile ids are unique among shipped and site profiles, but for an explicit
//!   `replaces_shipped`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{
    AliveCounter, DataType, PointConfig, PollPriority, Problems, check_alive_counter,
    check_modbus_points, check_point_values, check_poll_keys, section,
};

/// The profiles shipped in the binary: (file name, text).
pub const SHIPPED: [(&str, &str); 9] = [
    (
        "smoke-detector.toml",
        include_str!("../../profiles/smoke-detector.toml"),
    ),
    (
        "heat-detector.toml",
        include_str!("../../profiles/heat-detector.toml"),
    ),
    (
        "manual-call-point.toml",
        include_str!("../../profiles/manual-call-point.toml"),
    ),
    (
        "fire-panel-interface.toml",
        include_str!("../../profiles/fire-panel-interface.toml"),
    ),
    (
        "water-leak-probe.toml",
        include_str!("../../profiles/water-leak-probe.toml"),
    ),
    (
        "pressure-transmitter.toml",
        include_str!("../../profiles/pressure-transmitter.toml"),
    ),
    (
        "tank-level.toml",
        include_str!("../../profiles/tank-level.toml"),
    ),
    (
        "elevator-terminal.toml",
        include_str!("../../profiles/elevator-terminal.toml"),
    ),
    (
        "access-controller.toml",
        include_str!("../../profiles/access-controller.toml"),
    ),
];

/// The device keys a profile may give defaults for.
pub const DEFAULT_KEYS: [&str; 10] = [
    "poll_interval_ms",
    "timeout_ms",
    "comm_loss_after_s",
    "report_every_s",
    "max_gap_registers",
    "max_read_registers",
    "max_gap_bits",
    "max_read_bits",
    "poll_priority",
    "alive_counter",
];

/// A profile file: what a kind of product is and how it is read.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// The id devices name it by, e.g. `smoke-detector`. ASCII letters, digits, `-`, `_`,
    /// `.`. Name the file after it.
    pub id: String,
    /// The `kind` of every device with this profile (`smoke`, `pressure`, ...): rules select
    /// devices by it.
    pub kind: String,
    /// What product the map is of, in a line, for `plan` and the reader.
    pub description: String,
    /// The ids of the rules that make sense for devices of this profile (`smoke-high`, ...).
    /// `check` notes the ones the config lacks; it does not require them.
    #[serde(default)]
    pub expects_rules: Vec<String>,
    /// A site profile only: use this profile in place of the shipped one of the same id.
    /// Without it, a site profile with a shipped id is refused.
    #[serde(default)]
    pub replaces_shipped: bool,
    /// Defaults of the device keys of the same names.
    pub poll_interval_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub comm_loss_after_s: Option<u64>,
    pub report_every_s: Option<u64>,
    pub max_gap_registers: Option<u16>,
    pub max_read_registers: Option<u16>,
    pub max_gap_bits: Option<u16>,
    pub max_read_bits: Option<u16>,
    pub poll_priority: Option<PollPriority>,
    pub alive_counter: Option<AliveCounter>,
    /// The register map: `[[points]]` with the keys of a device's points.
    #[serde(default)]
    pub points: Vec<PointConfig>,
    /// `shipped` or the file it came from.
    #[serde(skip)]
    pub source: String,
    /// The profile as written, for merging into devices' tables.
    #[serde(skip)]
    raw: toml::Table,
}

impl Profile {
    /// `profile smoke-detector (shipped)`: how messages name it.
    pub fn label(&self) -> String {
        format!("profile {} ({})", self.id, self.source)
    }

    /// Whether it came with the gateway.
    pub fn is_shipped(&self) -> bool {
        self.source == SHIPPED_SOURCE
    }
}

const SHIPPED_SOURCE: &str = "shipped";

/// Every profile a config can name, by id.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Profiles {
    by_id: BTreeMap<String, Profile>,
    /// Ids of profiles that have problems: devices naming them are left out quietly.
    broken: Vec<String>,
}

impl Profiles {
    pub fn get(&self, id: &str) -> Option<&Profile> {
        self.by_id.get(id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Profile> {
        self.by_id.values()
    }

    /// The ids, comma-separated, for "known profiles: ..." messages.
    pub fn ids(&self) -> String {
        let ids: Vec<&str> = self.by_id.keys().map(String::as_str).collect();
        ids.join(", ")
    }

    pub(super) fn is_broken(&self, id: &str) -> bool {
        self.broken.iter().any(|b| b == id)
    }

    /// The shipped profiles alone (for tools and the benchmarks).
    pub fn shipped() -> Profiles {
        let mut problems = Problems::default();
        load(None, None, &mut problems)
    }
}

/// Read the shipped profiles and the site's (`profiles_dir`, already made absolute or
/// relative to the working directory), checking each once. `field` names `profiles_dir` in
/// messages about the directory itself.
pub(super) fn load(
    profiles_dir: Option<&Path>,
    field: Option<&str>,
    problems: &mut Problems,
) -> Profiles {
    let mut profiles = Profiles::default();
    for (file, text) in SHIPPED {
        if let Some(p) = parse(text, &format!("profiles/{file}"), SHIPPED_SOURCE, problems) {
            add(&mut profiles, p, problems);
        }
    }
    let Some(dir) = profiles_dir else {
        return profiles;
    };
    let field = field.unwrap_or("gateway.profiles_dir");
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            problems.add(field, format!("cannot read {}: {e}", dir.display()));
            return profiles;
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    files.sort();
    for path in files {
        let shown = path.display().to_string();
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                if let Some(p) = parse(&text, &shown, &shown, problems) {
                    add(&mut profiles, p, problems);
                }
            }
            Err(e) => problems.add(format!("{field} ({shown})"), format!("cannot read: {e}")),
        }
    }
    profiles
}

/// One profile file, checked. None when it does not parse (its problems are recorded).
fn parse(text: &str, file: &str, source: &str, problems: &mut Problems) -> Option<Profile> {
    let at = format!("profile ({file})");
    let raw: toml::Table = match text.parse() {
        Ok(t) => t,
        Err(e) => {
            problems.add(format!("{at} (syntax)"), e.to_string().trim().to_string());
            return None;
        }
    };
    let mut profile: Profile = section(toml::Value::Table(raw.clone()), &at, problems)?;
    profile.source = source.to_string();
    profile.raw = raw;
    Some(profile)
}

/// Check `profile` and add it, unless its id is taken.
fn add(profiles: &mut Profiles, profile: Profile, problems: &mut Problems) {
    let at = profile.label();
    let before = problems.0.len();
    check(&profile, &at, problems);
    let broken = problems.0.len() > before;
    match profiles.by_id.get(&profile.id) {
        // The site's replaces the shipped one.
        Some(first) if first.is_shipped() && !profile.is_shipped() && profile.replaces_shipped => {}
        Some(first) if first.is_shipped() && !profile.is_shipped() => {
            problems.add(
                format!("{at}.id"),
                format!(
                    "{:?} is a profile shipped with the gateway: give the site's own another id \
                     (e.g. \"{}-site\"), or set replaces_shipped = true to use this one instead",
                    profile.id, profile.id
                ),
            );
            return;
        }
        Some(first) => {
            problems.add(
                format!("{at}.id"),
                format!(
                    "duplicate profile id {:?} (also {})",
                    profile.id,
                    first.label()
                ),
            );
            return;
        }
        None if profile.replaces_shipped => {
            problems.add(
                format!("{at}.replaces_shipped"),
                format!(
                    "no shipped profile {:?} to replace (shipped: {})",
                    profile.id,
                    SHIPPED
                        .iter()
                        .map(|(f, _)| f.trim_end_matches(".toml"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
        None => {}
    }
    if broken {
        profiles.broken.push(profile.id.clone());
    }
    profiles.by_id.insert(profile.id.clone(), profile);
}

/// Everything that can be wrong with a profile on its own.
fn check(profile: &Profile, at: &str, p: &mut Problems) {
    p.id(&format!("{at}.id"), "profile id", &profile.id);
    p.id(&format!("{at}.kind"), "device kind", &profile.kind);
    p.non_empty(&format!("{at}.description"), &profile.description);
    for (i, rule) in profile.expects_rules.iter().enumerate() {
        p.id(&format!("{at}.expects_rules[{i}]"), "rule id", rule);
    }
    if profile.points.is_empty() {
        p.add(format!("{at}.points"), "no points: add [[points]]");
    }
    check_poll_keys(
        &super::PollKeys {
            poll_interval_ms: profile.poll_interval_ms,
            timeout_ms: profile.timeout_ms,
            comm_loss_after_s: profile.comm_loss_after_s,
            report_every_s: profile.report_every_s,
            max_gap_registers: profile.max_gap_registers,
            max_read_registers: profile.max_read_registers,
            max_gap_bits: profile.max_gap_bits,
            max_read_bits: profile.max_read_bits,
        },
        &profile.points,
        at,
        p,
    );
    check_modbus_points(&profile.points, at, p);
    check_point_values(&profile.points, at, p);
    if let Some(alive) = &profile.alive_counter {
        check_alive_counter(alive, &profile.points, at, p);
    }
    for (j, pt) in profile.points.iter().enumerate() {
        let pat = format!("{at}.points[{j}] ({})", pt.name);
        for (key, given) in [
            ("gpio", pt.gpio.is_some()),
            ("active_low", pt.active_low.is_some()),
        ] {
            if given {
                p.add(
                    format!("{pat}.{key}"),
                    "a profile is a Modbus register map: not for GPIO contacts",
                );
            }
        }
        if let Some(d) = pt.report_deadband {
            if profile.report_every_s == Some(0) {
                p.add(
                    format!("{pat}.report_deadband"),
                    "means nothing with report_every_s = 0 (every poll is reported); remove one of them",
                );
            } else if !d.is_finite() || d < 0.0 {
                p.add(
                    format!("{pat}.report_deadband"),
                    "must be a number of at least 0",
                );
            }
        }
        if pt.data_type == Some(DataType::Bit) && pt.engineering_unit.is_some() {
            // Harmless, but a sign of a copied analog point.
            p.add(
                format!("{pat}.engineering_unit"),
                "a bit is 0 or 1: it has no engineering unit",
            );
        }
    }
}

/// Give a device's table (before it is deserialized) its profile: kind, defaults, points
/// (see the module docs). Errors: (key, message), e.g. for a `kind` the profile contradicts.
pub(super) fn apply(profile: &Profile, device: &mut toml::Table) -> Result<(), (String, String)> {
    match device.get("kind") {
        Some(toml::Value::String(k)) if *k == profile.kind => {}
        Some(other) => {
            return Err((
                "kind".into(),
                format!(
                    "is {}, but profile {:?} is of kind {:?}: leave kind out (the profile gives it), \
                     or use a profile of that kind",
                    other, profile.id, profile.kind
                ),
            ));
        }
        None => {
            device.insert("kind".into(), toml::Value::String(profile.kind.clone()));
        }
    }
    for key in DEFAULT_KEYS {
        if let (false, Some(v)) = (device.contains_key(key), profile.raw.get(key)) {
            device.insert(key.into(), v.clone());
        }
    }
    let every_poll = device.get("report_every_s").is_some_and(|v| match v {
        toml::Value::Integer(0) => true,
        toml::Value::String(s) => s.trim() == "0",
        _ => false,
    });
    let mut points: Vec<toml::Value> = match profile.raw.get("points") {
        Some(toml::Value::Array(points)) => points.clone(),
        _ => Vec::new(),
    };
    if every_poll {
        for pt in &mut points {
            if let Some(t) = pt.as_table_mut() {
                t.remove("report_deadband");
            }
        }
    }
    match device.remove("points") {
        None => {}
        Some(toml::Value::Array(own)) => {
            for pt in own {
                let name = pt.get("name").and_then(|n| n.as_str()).map(str::to_string);
                let inherited = name.as_deref().and_then(|name| {
                    points
                        .iter_mut()
                        .find(|p| p.get("name").and_then(|n| n.as_str()) == Some(name))
                });
                match (inherited, pt) {
                    (Some(toml::Value::Table(base)), toml::Value::Table(keys)) => {
                        base.extend(keys);
                    }
                    (_, pt) => points.push(pt),
                }
            }
        }
        Some(_) => {
            return Err((
                "points".into(),
                "must be an array of tables: [[devices.points]]".into(),
            ));
        }
    }
    device.insert("points".into(), toml::Value::Array(points));
    Ok(())
}

/// The expected rules a config lacks for the devices of each profile it uses, one note per
/// profile: `128 devices of profile smoke-detector (kind smoke) have no rule smoke-fault,
/// which the profile expects`. A rule counts when its id is expected and it selects the
/// profile's kind or one of its devices.
pub fn missing_rules(config: &super::Config) -> Vec<String> {
    let mut notes = Vec::new();
    for profile in config.profiles.iter() {
        let devices: std::collections::BTreeSet<usize> = config
            .devices
            .iter()
            .enumerate()
            .filter(|(_, d)| d.profile.as_deref() == Some(profile.id.as_str()))
            .map(|(i, _)| i)
            .collect();
        if devices.is_empty() {
            continue;
        }
        let missing: Vec<&str> = profile
            .expects_rules
            .iter()
            .filter(|rule| {
                !config
                    .rules
                    .iter()
                    .any(|r| &r.rule.id == *rule && r.devices.iter().any(|d| devices.contains(d)))
            })
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            let n = devices.len();
            notes.push(format!(
                "{n} device{} of profile {} (kind {}) {} no rule {}, which the profile expects",
                if n == 1 { "" } else { "s" },
                profile.id,
                profile.kind,
                if n == 1 { "has" } else { "have" },
                missing.join(", "),
            ));
        }
    }
    notes
}
