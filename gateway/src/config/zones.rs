//! `[[coincidences]]`: an alarm of a zone that is active while at least `at_least` distinct
//! devices in it have an active alarm of one of the rules `of`. The two-detector dependency
//! of GB 50116-2013 §4.1.6: linkage (door release, sounders beyond the zone) starts on the AND
//! of two independent alarm devices, never on one.
//!
//! ```toml
//! [[coincidences]]
//! id = "fire-confirmed"
//! zone = "building"             # building, entrance, floor or grid
//! of = ["smoke-alarm", "heat-alarm", "call-point-activated"]
//! at_least = 2
//! class = "alarm"
//! priority = "high"
//! message = "Fire confirmed by two detectors (GB 50116 §4.1.6)"
//! ```
//!
//! A zone is every place of that level where a device has a rule of `of`: one alarm each,
//! `<community>:<gateway>:zone-<place>:<id>` (`zone-B1`, `zone-B1-3` for an entrance,
//! `zone-grid-G2`), of device kind `zone`, with the zone's place. An alarm counts while it is
//! active (raised and not cleared, acknowledged or not); a device counts once however many
//! of its alarms do. The zone alarm is judged by the watch after each batch of transitions,
//! on the same monotonic time, so it is raised in the same poll as the second detector.

use serde::Deserialize;
use shouwang_rules::{Priority, SignalClass};
use shouwang_wire::{Level, Place};

use super::{Config, Problems};

/// The most devices a coincidence may ask for.
pub const MAX_AT_LEAST: u32 = 64;

/// The level of the place that makes a zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ZoneLevel {
    Grid,
    Building,
    Entrance,
    Floor,
}

/// One `[[coincidences]]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoincidenceConfig {
    /// Part of every zone alarm's id. Not a rule's id.
    pub id: String,
    pub zone: ZoneLevel,
    /// The rule ids whose active alarms count.
    pub of: Vec<String>,
    /// How many distinct devices must have one: 2 to 64.
    pub at_least: u32,
    pub class: SignalClass,
    pub priority: Priority,
    pub message: String,
}

/// One zone of one coincidence.
#[derive(Debug, Clone, PartialEq)]
pub struct Zone {
    /// Index into `Config::coincidences`.
    pub coincidence: usize,
    /// `zone-B1`: the alarm id's device part.
    pub id: String,
    /// The zone's place: the devices' places down to the zone's level.
    pub place: Place,
    /// Indices into `Config::devices`: the devices with a rule of `of` in the zone.
    pub devices: Vec<usize>,
}

/// A place cut at `level`, and its zone id; `None` when the place has no id at that level.
fn zone_of(mut place: Place, level: ZoneLevel) -> Option<(String, Place)> {
    let keep: &[Level] = match level {
        ZoneLevel::Grid => &[Level::Grid],
        ZoneLevel::Building => &[Level::Grid, Level::Building],
        ZoneLevel::Entrance => &[Level::Grid, Level::Building, Level::Entrance],
        ZoneLevel::Floor => &[Level::Grid, Level::Building, Level::Entrance, Level::Floor],
    };
    for l in [
        Level::Grid,
        Level::Building,
        Level::Entrance,
        Level::Floor,
        Level::Room,
        Level::Area,
    ] {
        if !keep.contains(&l) {
            place.id_mut(l).clear();
            place.names.get_mut(l).clear();
        }
    }
    let own = match level {
        ZoneLevel::Grid => Level::Grid,
        ZoneLevel::Building => Level::Building,
        ZoneLevel::Entrance => Level::Entrance,
        ZoneLevel::Floor => Level::Floor,
    };
    if place.id(own).is_empty() {
        return None;
    }
    let id = match level {
        ZoneLevel::Grid => format!("zone-grid-{}", place.grid),
        _ => format!("zone-{}", place.short()),
    };
    Some((id, place))
}

impl Config {
    /// Every zone of every coincidence, in coincidence order, zones by id.
    pub fn zones(&self) -> Vec<Zone> {
        let mut out = Vec::new();
        for (c, coincidence) in self.coincidences.iter().enumerate() {
            let mut zones: std::collections::BTreeMap<String, Zone> = Default::default();
            let mut members = vec![false; self.devices.len()];
            for bound in &self.rules {
                if coincidence.of.contains(&bound.rule.id) {
                    for &d in &bound.devices {
                        members[d] = true;
                    }
                }
            }
            for (d, device) in self.devices.iter().enumerate() {
                if !members[d] {
                    continue;
                }
                let Some((id, place)) = zone_of(self.place(device), coincidence.zone) else {
                    continue;
                };
                zones
                    .entry(id.clone())
                    .or_insert_with(|| Zone {
                        coincidence: c,
                        id,
                        place,
                        devices: Vec::new(),
                    })
                    .devices
                    .push(d);
            }
            out.extend(zones.into_values());
        }
        out
    }
}

/// What can be wrong with the coincidences of a config whose rules are bound.
pub(super) fn check(config: &Config, p: &mut Problems) {
    let mut seen = std::collections::BTreeSet::new();
    for (i, c) in config.coincidences.iter().enumerate() {
        let at = format!("coincidences[{i}] ({})", c.id);
        p.id(&format!("{at}.id"), "coincidence id", &c.id);
        if !seen.insert(c.id.as_str()) {
            p.add(
                format!("{at}.id"),
                format!("duplicate coincidence id {:?}", c.id),
            );
        }
        if config.rules.iter().any(|r| r.rule.id == c.id) {
            p.add(
                format!("{at}.id"),
                format!("{:?} is a rule's id: give the coincidence its own", c.id),
            );
        }
        p.non_empty(&format!("{at}.message"), &c.message);
        p.text(&format!("{at}.message"), &c.message);
        if c.of.is_empty() {
            p.add(
                format!("{at}.of"),
                "names no rule: list the rules whose alarms count",
            );
        }
        for (j, rule) in c.of.iter().enumerate() {
            if !config.rules.iter().any(|r| &r.rule.id == rule) {
                p.add(
                    format!("{at}.of[{j}]"),
                    format!("no rule {rule:?} applies to any device"),
                );
            }
        }
        if !(2..=MAX_AT_LEAST).contains(&c.at_least) {
            p.add(
                format!("{at}.at_least"),
                format!(
                    "is {}; must be 2 to {MAX_AT_LEAST} (one device is a rule of its own)",
                    c.at_least
                ),
            );
        }
    }
}
