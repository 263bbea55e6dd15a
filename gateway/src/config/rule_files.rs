//! Where rules come from and which devices each one watches.
//!
//! # Sources
//! - the shipped packs a site names in `[gateway] rule_packs` (`rules/packs/*.toml`, compiled
//!   into the gateway by the rules crate: `shouwang_rules::packs`);
//! - the site's own rule files, every `*.toml` in `[gateway] rules_dir`;
//! - the config's own `[[rules]]`.
//!
//! A rule file is `[[rules]]` tables, like the config's, with an optional `pack` (its name)
//! and `description` at the top. Every entry is named in messages by its file and line:
//! `rules/packs/smoke.toml:12 (smoke-alarm)`.
//!
//! # Templates and the cascade
//! An entry says which devices it is for with **selectors**: `device` (one device),
//! `device_kind`, `profile`, and the place keys `grid`, `building`, `entrance`, `floor`,
//! `room`, `area` (each one given must be the device's). An entry with `device`,
//! `device_kind` or `profile` is a **template**: it makes an alarm on every device it
//! selects. One without them **refines** the templates of the same id where they meet:
//! `{ id = "tank-low", building = "B7", below = 1.5 }` moves the limit for building B7's
//! tanks only, and `enabled = false` turns the rule off there.
//!
//! For each device and rule id, the entries of that id that select the device are laid one
//! over the other from the least specific to the most (keys of the more specific win), as
//! CSS does. Specificity: `device` first, then how many place keys the entry gives, then
//! `profile`, then `device_kind`. Two entries of one id that are equally specific and both
//! select a device are refused: nobody could tell which one is meant. A device no template
//! of the id selects gets no alarm of it, whatever refines it.
//!
//! A pack's template skips a device that lacks its point (a pack is written for many
//! products); the site's own templates must find their point on every device they select.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use super::{Config, DeviceConfig, Problems, RuleConfig};
use shouwang_wire::Level;

/// The keys that select devices rather than say what the rule is.
pub const SELECTORS: [&str; 10] = [
    "device",
    "device_kind",
    "profile",
    "grid",
    "building",
    "entrance",
    "floor",
    "room",
    "area",
    "enabled",
];

/// One `[[rules]]` table as written, and where.
#[derive(Debug, Clone)]
pub struct RuleEntry {
    /// The table without its selectors.
    pub keys: toml::Table,
    pub id: String,
    pub select: Selector,
    /// `file:line`, for messages.
    pub origin: String,
    /// From a shipped pack.
    pub from_pack: bool,
}

/// An entry's selectors.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    pub device: Option<String>,
    pub device_kind: Option<String>,
    pub profile: Option<String>,
    pub grid: Option<String>,
    pub building: Option<String>,
    pub entrance: Option<String>,
    pub floor: Option<String>,
    pub room: Option<String>,
    pub area: Option<String>,
    /// `false`: no alarm of this id on the devices selected.
    pub enabled: Option<bool>,
}

impl Selector {
    fn places(&self) -> [(Level, Option<&String>); 6] {
        [
            (Level::Grid, self.grid.as_ref()),
            (Level::Building, self.building.as_ref()),
            (Level::Entrance, self.entrance.as_ref()),
            (Level::Floor, self.floor.as_ref()),
            (Level::Room, self.room.as_ref()),
            (Level::Area, self.area.as_ref()),
        ]
    }

    /// A template makes alarms; anything else only refines templates.
    pub fn is_template(&self) -> bool {
        self.device.is_some() || self.device_kind.is_some() || self.profile.is_some()
    }

    /// How specific: compared as a tuple, larger wins.
    fn specificity(&self) -> (bool, usize, bool, bool) {
        (
            self.device.is_some(),
            self.places().iter().filter(|(_, v)| v.is_some()).count(),
            self.profile.is_some(),
            self.device_kind.is_some(),
        )
    }

    /// Whether the entry selects `device` of `config` (its grid may come from
    /// `[places.grid_buildings]`). Allocates nothing: it runs for every entry and device.
    fn selects(&self, device: &DeviceConfig, config: &Config) -> bool {
        let is = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        is(&self.device, &device.id)
            && is(&self.device_kind, &device.kind)
            && self
                .profile
                .as_deref()
                .is_none_or(|p| device.profile.as_deref() == Some(p))
            && self.places().iter().all(|(level, want)| {
                want.is_none_or(|w| {
                    let have = match level {
                        Level::Grid => device.grid.as_deref().or_else(|| {
                            device
                                .building
                                .as_deref()
                                .and_then(|b| config.places.grid_of(b))
                        }),
                        other => device.place_id(*other),
                    };
                    have == Some(w.as_str())
                })
            })
    }
}

/// A rule as it applies to some devices: the entries laid over each other, and the devices
/// (indices into `Config::devices`) it applies to.
#[derive(Debug, Clone, PartialEq)]
pub struct BoundRule {
    pub rule: Arc<RuleConfig>,
    /// Where the most specific entry is (and the others under it).
    pub origin: String,
    pub devices: Vec<usize>,
}

/// `file:line` of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    1 + text
        .as_bytes()
        .iter()
        .take(offset)
        .filter(|b| **b == b'\n')
        .count()
}

/// A rule file. `pack` and `description` are for people; they are read to check their
/// type only.
#[derive(Deserialize)]
#[allow(dead_code)]
struct FileShape {
    pack: Option<String>,
    description: Option<String>,
    #[serde(default)]
    rules: Vec<toml::Spanned<toml::Table>>,
}

/// Every `[[rules]]` entry of one rule file, with `file:line`.
pub(super) fn parse_entries(
    text: &str,
    file: &str,
    from_pack: bool,
    problems: &mut Problems,
) -> Vec<RuleEntry> {
    let table: toml::Table = match text.parse() {
        Ok(t) => t,
        Err(e) => {
            problems.add(format!("{file} (syntax)"), e.to_string().trim().to_string());
            return Vec::new();
        }
    };
    for key in table.keys() {
        if !["pack", "description", "rules"].contains(&key.as_str()) {
            problems.add(
                format!("{file}: {key}"),
                "unknown key in a rule file; expected pack, description and [[rules]]",
            );
        }
    }
    let shape: FileShape = match toml::from_str(text) {
        Ok(s) => s,
        Err(e) => {
            problems.add(file, e.message().trim().to_string());
            return Vec::new();
        }
    };
    let tables = shape
        .rules
        .into_iter()
        .map(|spanned| {
            (
                Some(line_of(text, spanned.span().start)),
                spanned.into_inner(),
            )
        })
        .collect();
    entries_of(tables, file, from_pack, problems)
}

/// The config's own `[[rules]]` (`value`, already parsed with the rest of the config), with
/// the line of each `[[rules]]` header of `text`. Not parsed again with spans: a config of
/// thousands of devices would be held twice in memory for the line numbers of a few rules.
/// Rules written as an inline array (`rules = [{...}]`) are named without lines.
pub(super) fn config_entries(
    value: Option<toml::Value>,
    text: &str,
    file: &str,
    problems: &mut Problems,
) -> Vec<RuleEntry> {
    let items = match value {
        None => return Vec::new(),
        Some(toml::Value::Array(items)) => items,
        Some(_) => {
            problems.add("rules", "must be an array of tables: [[rules]]");
            return Vec::new();
        }
    };
    let headers: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| {
            let l = l.trim_start();
            l.starts_with("[[")
                && l[2..].trim_start().starts_with("rules")
                && l[2..].trim_start()[5..].trim_start().starts_with("]]")
        })
        .map(|(i, _)| i + 1)
        .collect();
    let lines_known = headers.len() == items.len();
    let mut tables = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        match item {
            toml::Value::Table(t) => tables.push((lines_known.then(|| headers[i]), t)),
            other => {
                super::section::<RuleConfig>(other, &format!("rules[{i}]"), problems);
            }
        }
    }
    entries_of(tables, file, false, problems)
}

/// Entries from tables and their lines.
fn entries_of(
    tables: Vec<(Option<usize>, toml::Table)>,
    file: &str,
    from_pack: bool,
    problems: &mut Problems,
) -> Vec<RuleEntry> {
    let mut entries = Vec::new();
    for (i, (line, mut keys)) in tables.into_iter().enumerate() {
        let at = match line {
            Some(line) => format!("{file}:{line}"),
            None => format!("{file} rules[{i}]"),
        };
        let id = keys
            .get("id")
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .unwrap_or_default();
        let origin = if id.is_empty() {
            format!("{at} rules[{i}]")
        } else {
            format!("{at} ({id})")
        };
        if id.is_empty() {
            problems.add(format!("{origin}.id"), "missing: every rule has an id");
            continue;
        }
        problems.id(&format!("{origin}.id"), "rule id", &id);
        let mut select = toml::Table::new();
        for key in SELECTORS {
            if let Some(v) = keys.remove(key) {
                select.insert(key.into(), v);
            }
        }
        let Some(select) =
            super::section::<Selector>(toml::Value::Table(select), &origin, problems)
        else {
            continue;
        };
        entries.push(RuleEntry {
            keys,
            id,
            select,
            origin,
            from_pack,
        });
    }
    entries
}

/// The entries of the packs named and of the site's rule directory.
pub(super) fn load_files(
    packs: &[String],
    rules_dir: Option<&Path>,
    problems: &mut Problems,
) -> Vec<RuleEntry> {
    let mut entries = Vec::new();
    for (i, name) in packs.iter().enumerate() {
        match shouwang_rules::packs::get(name) {
            Some(text) => entries.extend(parse_entries(
                text,
                &format!("rules/packs/{name}.toml"),
                true,
                problems,
            )),
            None => problems.add(
                format!("gateway.rule_packs[{i}]"),
                format!(
                    "no shipped pack {name:?}; the packs: {}",
                    shouwang_rules::packs::names().join(", ")
                ),
            ),
        }
    }
    if let Some(dir) = rules_dir {
        for path in files_in(dir, "gateway.rules_dir", problems) {
            let shown = path.display().to_string();
            match std::fs::read_to_string(&path) {
                Ok(text) => entries.extend(parse_entries(&text, &shown, false, problems)),
                Err(e) => problems.add(shown, format!("cannot read: {e}")),
            }
        }
    }
    entries
}

/// The `*.toml` files of `dir`, sorted.
fn files_in(dir: &Path, field: &str, problems: &mut Problems) -> Vec<PathBuf> {
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            let mut files: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
                .collect();
            files.sort();
            files
        }
        Err(e) => {
            problems.add(field, format!("cannot read {}: {e}", dir.display()));
            Vec::new()
        }
    }
}

/// Bind every entry to the devices of `config`: the cascade of the module docs. Problems
/// are named by the entries' origins.
/// `complete`: every device of the config parsed (when not, a template that selects no
/// device is not reported: its devices may be among those that did not parse).
pub(super) fn bind(
    entries: &[RuleEntry],
    config: &Config,
    complete: bool,
    problems: &mut Problems,
) -> Vec<BoundRule> {
    let mut by_id: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, e) in entries.iter().enumerate() {
        by_id.entry(e.id.as_str()).or_default().push(i);
    }
    let mut bound = Vec::new();
    for (id, group) in by_id {
        if !group.iter().any(|&i| entries[i].select.is_template()) {
            for &i in &group {
                refines_nothing(&entries[i].origin, id, problems);
            }
            continue;
        }
        // The chain of entries per device; devices by chain.
        let mut chains: BTreeMap<Vec<usize>, Vec<usize>> = BTreeMap::new();
        let mut template_devices: HashMap<usize, usize> = HashMap::new();
        for (d, device) in config.devices.iter().enumerate() {
            let mut chain: Vec<usize> = group
                .iter()
                .copied()
                .filter(|&i| entries[i].select.selects(device, config))
                .collect();
            if !chain.iter().any(|&i| entries[i].select.is_template()) {
                continue;
            }
            for &i in &chain {
                if entries[i].select.is_template() {
                    *template_devices.entry(i).or_default() += 1;
                }
            }
            chain.sort_by_key(|&i| entries[i].select.specificity());
            if let Some(w) = chain
                .windows(2)
                .find(|w| entries[w[0]].select.specificity() == entries[w[1]].select.specificity())
            {
                problems.add(
                    entries[w[1]].origin.clone(),
                    format!(
                        "selects device {:?} as specifically as {}: nobody could tell which one is \
                         meant; make one of them more specific (a place key, or device)",
                        device.id, entries[w[0]].origin
                    ),
                );
                continue;
            }
            chains.entry(chain).or_default().push(d);
        }
        for &i in &group {
            let e = &entries[i];
            if complete
                && e.select.is_template()
                && !e.from_pack
                && !template_devices.contains_key(&i)
            {
                let what = match (&e.select.device, &e.select.profile, &e.select.device_kind) {
                    (Some(d), _, _) => format!("no device {d:?} in [[devices]]"),
                    (_, Some(p), _) => format!("no device of profile {p:?} in [[devices]]"),
                    (_, _, Some(k)) => format!("no device of kind {k:?} in [[devices]]"),
                    _ => String::new(),
                };
                let place = if e.select.places().iter().any(|(_, v)| v.is_some()) {
                    " at the place it names"
                } else {
                    ""
                };
                problems.add(e.origin.clone(), format!("{what}{place}"));
            }
            // A template that binds nothing is still checked, so its other mistakes are
            // reported with this one.
            if e.select.is_template() && !template_devices.contains_key(&i) {
                checked_rule(e.keys.clone(), id, &e.origin, problems);
            }
        }
        for (chain, devices) in chains {
            let keys = lay_over(chain.iter().map(|&i| &entries[i].keys));
            let top = &entries[chain[chain.len() - 1]];
            let origin = if chain.len() == 1 {
                top.origin.clone()
            } else {
                let under: Vec<&str> = chain[..chain.len() - 1]
                    .iter()
                    .rev()
                    .map(|&i| entries[i].origin.as_str())
                    .collect();
                format!("{} over {}", top.origin, under.join(" over "))
            };
            if chain.iter().rev().find_map(|&i| entries[i].select.enabled) == Some(false) {
                continue;
            }
            let Some(rule) = checked_rule(keys, id, &origin, problems) else {
                continue;
            };
            let from_pack = chain.iter().all(|&i| entries[i].from_pack);
            let mut kept = Vec::with_capacity(devices.len());
            for d in devices {
                let device = &config.devices[d];
                if device.points.iter().any(|p| p.name == rule.point) {
                    kept.push(d);
                } else if !from_pack {
                    problems.add(
                        format!("{origin}.point"),
                        format!("device {:?} has no point {:?}", device.id, rule.point),
                    );
                }
            }
            if !kept.is_empty() {
                bound.push(BoundRule {
                    rule: Arc::new(rule),
                    origin,
                    devices: kept,
                });
            }
        }
    }
    bound
}

/// Entries' keys laid over each other, least specific first: a later key wins, and a later
/// entry that gives a condition (`below` over `above`) replaces the earlier condition and
/// the keys that went with it only (`deadband` stays under `above` refined to a new limit).
fn lay_over<'a>(layers: impl IntoIterator<Item = &'a toml::Table>) -> toml::Table {
    let mut keys = toml::Table::new();
    for layer in layers {
        if let Some((given, own)) = super::CONDITION_KEYS
            .iter()
            .find(|(k, _)| layer.contains_key(*k))
        {
            for (other, companions) in super::CONDITION_KEYS {
                if other != *given {
                    keys.remove(other);
                    for c in companions {
                        if !own.contains(c) {
                            keys.remove(*c);
                        }
                    }
                }
            }
        }
        keys.extend(layer.clone());
    }
    keys
}

/// The problem of entries of rule `id` that refine a rule no template of that id makes.
fn refines_nothing(origin: &str, id: &str, problems: &mut Problems) {
    problems.add(
        origin,
        format!(
            "selects no devices: give device, device_kind or profile (an entry without them \
             only refines a rule of the same id, and there is no such rule {id:?})"
        ),
    );
}

/// The rule `id` that `keys` (selectors taken out, entries laid over each other) say, if it
/// deserializes and passes [`super::check_rule`]; else its problems under `origin`.
fn checked_rule(
    mut keys: toml::Table,
    id: &str,
    origin: &str,
    problems: &mut Problems,
) -> Option<RuleConfig> {
    keys.insert("id".into(), toml::Value::String(id.to_string()));
    let rule = rule_of(keys, origin, problems)?;
    let before = problems.0.len();
    super::check_rule(&rule, origin, problems);
    (problems.0.len() == before).then_some(rule)
}

/// The rule the merged keys say, or its problem under `origin`.
fn rule_of(keys: toml::Table, origin: &str, problems: &mut Problems) -> Option<RuleConfig> {
    match RuleConfig::deserialize(toml::Value::Table(keys)) {
        Ok(rule) => Some(rule),
        Err(e) => {
            let mut message = e.message().trim().to_string();
            if message.starts_with("unknown field") {
                message.push_str(&format!(" (or a selector: {})", SELECTORS.join(", ")));
            }
            problems.add(origin, message);
            None
        }
    }
}

/// `shouwang-gateway rules check DIR`: every rule file in `dir` and every shipped pack, each
/// entry checked without a site's devices: a template as it stands, an entry that refines
/// one laid over each template of its id. Returns how many entries were read, or every
/// problem, each with its file and line.
pub fn check_dir(dir: &Path) -> Result<usize, super::ConfigReport> {
    let mut problems = Problems::default();
    let names: Vec<String> = shouwang_rules::packs::names()
        .into_iter()
        .map(str::to_string)
        .collect();
    let entries = load_files(&names, Some(dir), &mut problems);
    let mut by_id: BTreeMap<&str, Vec<&RuleEntry>> = BTreeMap::new();
    for e in &entries {
        by_id.entry(e.id.as_str()).or_default().push(e);
    }
    for (id, group) in by_id {
        let templates: Vec<&&RuleEntry> = group.iter().filter(|e| e.select.is_template()).collect();
        for e in &group {
            let bases: Vec<&RuleEntry> = if e.select.is_template() {
                vec![e]
            } else {
                templates.iter().map(|t| **t).collect()
            };
            if bases.is_empty() {
                refines_nothing(&e.origin, id, &mut problems);
            }
            for base in bases {
                let (keys, origin) = if std::ptr::eq(base, *e) {
                    (base.keys.clone(), e.origin.clone())
                } else {
                    (
                        lay_over([&base.keys, &e.keys]),
                        format!("{} over {}", e.origin, base.origin),
                    )
                };
                checked_rule(keys, id, &origin, &mut problems);
            }
        }
    }
    if problems.0.is_empty() {
        Ok(entries.len())
    } else {
        Err(super::ConfigReport {
            source: dir.display().to_string(),
            problems: problems.0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three smoke detectors (the shipped profile) in two buildings, and one without the
    /// profile's points.
    fn site(extra: &str) -> String {
        format!(
            r#"
[gateway]
id = "gw"
community = "c"
data_dir = "data"
rule_packs = ["smoke"]
{extra}

[[devices]]
id = "s-b1"
profile = "smoke-detector"
building = "B1"
floor = "1"
room = "101"
transport = "tcp"
address = "127.0.0.1:1502"
unit_id = 1

[[devices]]
id = "s-b7-a"
profile = "smoke-detector"
building = "B7"
floor = "1"
room = "101"
transport = "tcp"
address = "127.0.0.1:1502"
unit_id = 2

[[devices]]
id = "s-b7-b"
profile = "smoke-detector"
building = "B7"
floor = "2"
room = "201"
transport = "tcp"
address = "127.0.0.1:1502"
unit_id = 3

[[devices]]
id = "other-smoke"
kind = "smoke"
building = "B1"
floor = "3"
room = "301"
transport = "tcp"
address = "127.0.0.1:1502"
unit_id = 4

[[devices.points]]
name = "density"
register = 0
type = "u16"
"#
        )
    }

    fn bound<'a>(config: &'a Config, id: &str) -> Vec<(&'a RuleConfig, Vec<&'a str>)> {
        config
            .rules
            .iter()
            .filter(|b| b.rule.id == id)
            .map(|b| {
                (
                    &*b.rule,
                    b.devices
                        .iter()
                        .map(|&d| config.devices[d].id.as_str())
                        .collect(),
                )
            })
            .collect()
    }

    #[test]
    fn a_pack_applies_to_every_device_of_its_kind_that_has_its_point() {
        let config =
            Config::from_toml_str(&site(""), "site.toml").unwrap_or_else(|e| panic!("{e}"));
        let high = bound(&config, "smoke-high");
        assert_eq!(high.len(), 1, "{high:?}");
        assert_eq!(high[0].1, ["s-b1", "s-b7-a", "s-b7-b"]);
        assert_eq!(high[0].0.above, Some(2.5));
        // Every rule the profile expects is there: no note.
        assert!(config.notes().is_empty(), "{:?}", config.notes());
        let alarms = config.alarm_specs();
        assert!(
            alarms
                .iter()
                .any(|(s, _)| &*s.alarm_id == "c:gw:s-b7-b:smoke-removed")
        );
    }

    #[test]
    fn a_site_refines_a_pack_rule_for_one_building_and_turns_another_off_there() {
        let text = site("")
            + r#"
[[rules]]
id = "smoke-high"
building = "B7"
above = 1.8
on_delay_ms = 0

[[rules]]
id = "smoke-dirty"
building = "B7"
floor = "2"
enabled = false
"#;
        let config = Config::from_toml_str(&text, "site.toml").unwrap_or_else(|e| panic!("{e}"));
        let mut high = bound(&config, "smoke-high");
        high.sort_by_key(|(_, d)| d.len());
        assert_eq!(high.len(), 2, "{high:?}");
        assert_eq!(high[0].1, ["s-b1"]);
        assert_eq!((high[0].0.above, high[0].0.on_delay_ms), (Some(2.5), 2000));
        assert_eq!(high[1].1, ["s-b7-a", "s-b7-b"]);
        // The limit and the delay are the site's; the rest is the pack's.
        assert_eq!((high[1].0.above, high[1].0.on_delay_ms), (Some(1.8), 0));
        assert_eq!(high[1].0.class, shouwang_rules::SignalClass::Alarm);
        assert_eq!(high[1].0.deadband, Some(0.5));
        let origin = &config
            .rules
            .iter()
            .find(|b| b.rule.id == "smoke-high" && b.devices.len() == 2)
            .unwrap()
            .origin;
        assert!(
            origin.starts_with("site.toml:") && origin.contains(" over rules/packs/smoke.toml:"),
            "{origin}"
        );
        let dirty = bound(&config, "smoke-dirty");
        assert_eq!(dirty[0].1, ["s-b1", "s-b7-a"], "off on B7's second floor");
    }

    #[test]
    fn two_entries_equally_specific_for_one_device_are_refused_with_both_places() {
        let text = site("")
            + r#"
[[rules]]
id = "smoke-high"
building = "B7"
above = 1.8

[[rules]]
id = "smoke-high"
floor = "2"
above = 1.5
"#;
        let report = Config::from_toml_str(&text, "site.toml").unwrap_err();
        let text = report.to_string();
        assert!(
            text.contains("selects device \"s-b7-b\" as specifically as site.toml:"),
            "{text}"
        );
    }

    #[test]
    fn mistakes_in_rules_are_named_by_file_and_line() {
        let text = site("")
            + r#"
[[rules]]
id = "smoke-high"
building = "B7"
abov = 1.8

[[rules]]
id = "door-open"
building = "B1"
above = 1.0
"#;
        let report = Config::from_toml_str(&text, "site.toml").unwrap_err();
        let lines: Vec<&str> = text.lines().collect();
        let line = |needle: &str| 1 + lines.iter().rposition(|l| l.contains(needle)).unwrap();
        let problems = report.to_string();
        // The table's line is where its `[[rules]]` header is.
        let first = line("abov = 1.8") - 3;
        assert!(
            problems.contains(&format!(
                "site.toml:{first} (smoke-high) over rules/packs/smoke.toml:"
            )),
            "{problems}"
        );
        assert!(problems.contains("unknown field `abov`"), "{problems}");
        assert!(
            problems.contains("(or a selector: device, device_kind"),
            "{problems}"
        );
        let second = line("id = \"door-open\"") - 1;
        assert!(
            problems.contains(&format!(
                "site.toml:{second} (door-open): selects no devices"
            )),
            "{problems}"
        );
    }

    #[test]
    fn rules_written_as_an_inline_array_are_named_by_position() {
        let text = "rules = [{ id = \"door-open\", building = \"B1\", above = 1.0 }]\n".to_string()
            + &site("");
        let report = Config::from_toml_str(&text, "site.toml")
            .unwrap_err()
            .to_string();
        assert!(
            report.contains("site.toml rules[0] (door-open): selects no devices"),
            "{report}"
        );
    }

    #[test]
    fn an_unknown_pack_is_refused_with_the_list_of_packs() {
        let text = site("").replace("rule_packs = [\"smoke\"]", "rule_packs = [\"smok\"]");
        let report = Config::from_toml_str(&text, "site.toml").unwrap_err();
        assert!(
            report
                .to_string()
                .contains("gateway.rule_packs[0]: no shipped pack \"smok\"; the packs: access, call-point, elevator, fire-panel, heat, smoke, water"),
            "{report}"
        );
    }

    #[test]
    fn a_sites_own_template_must_find_its_point_on_every_device_it_selects() {
        let text = site("")
            + r#"
[[rules]]
id = "smoke-hot"
device_kind = "smoke"
point = "temperature"
class = "supervisory"
priority = "low"
above = 60.0
message = "Hot"
"#;
        let report = Config::from_toml_str(&text, "site.toml").unwrap_err();
        assert!(
            report
                .to_string()
                .contains("device \"other-smoke\" has no point \"temperature\""),
            "{report}"
        );
    }

    #[test]
    fn the_shipped_packs_pass_their_own_check() {
        let dir = tempfile::tempdir().unwrap();
        let n = check_dir(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        assert!(n >= 5, "{n}");
    }

    #[test]
    fn rule_files_in_a_directory_are_checked_with_file_and_line_and_refinements_over_their_rule() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("b7.toml"),
            "description = \"B7\"\n\n[[rules]]\nid = \"smoke-high\"\nbuilding = \"B7\"\nabove = \"x\"\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("pumps.toml"),
            "[[rules]]\nid = \"pump-low\"\ndevice_kind = \"pressure\"\npoint = \"p\"\nclass = \"alarm\"\n\
             priority = \"high\"\nbelow = 0.6\nmessage = \"\"\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a rule file").unwrap();
        let report = check_dir(dir.path()).unwrap_err().to_string();
        let b7 = dir.path().join("b7.toml").display().to_string();
        let pumps = dir.path().join("pumps.toml").display().to_string();
        assert!(
            report.contains(&format!("{b7}:3 (smoke-high) over rules/packs/smoke.toml:")),
            "{report}"
        );
        assert!(
            report.contains(&format!("{pumps}:1 (pump-low).message: must not be empty")),
            "{report}"
        );
    }

    fn rule(keys: &str) -> Result<shouwang_rules::Condition, String> {
        let text = format!(
            "id = \"r\"\npoint = \"p\"\nclass = \"alarm\"\npriority = \"high\"\nmessage = \"m\"\n{keys}"
        );
        let rule: RuleConfig = toml::from_str(&text).map_err(|e| e.to_string())?;
        rule.condition()
    }

    #[test]
    fn every_condition_is_written_with_its_own_keys() {
        use shouwang_rules::Condition;
        assert_eq!(
            rule("above = 2.5\ndeadband = 0.5"),
            Ok(Condition::Above {
                limit: 2.5,
                deadband: 0.5
            })
        );
        assert_eq!(
            rule("below = 0.6"),
            Ok(Condition::Below {
                limit: 0.6,
                deadband: 0.0
            })
        );
        assert_eq!(rule("equals = 4"), Ok(Condition::Equals { value: 4.0 }));
        assert_eq!(rule("any_bit = 0x04"), Ok(Condition::AnyBit { mask: 4 }));
        assert_eq!(
            rule("rise_by = 8.0\nwithin_s = 60"),
            Ok(Condition::RiseWithin {
                by: 8.0,
                window_ms: 60_000
            })
        );
        assert_eq!(
            rule("fall_by = 0.1\nwithin_s = 600"),
            Ok(Condition::FallWithin {
                by: 0.1,
                window_ms: 600_000
            })
        );
        assert_eq!(
            rule("frozen_for_s = 3600\ntolerance = 0.01"),
            Ok(Condition::Frozen {
                tolerance: 0.01,
                window_ms: 3_600_000
            })
        );
        for (keys, says) in [
            ("above = 1\nequals = 2", "given: above, equals"),
            ("", "none given"),
            (
                "equals = 1\ndeadband = 0.5",
                "`deadband` means nothing with `equals`",
            ),
            ("rise_by = 1", "`rise_by` needs `within_s`"),
            (
                "fall_by = -1\nwithin_s = 5",
                "`fall_by` must be more than 0",
            ),
            ("any_bit = 0", "at least one bit"),
            (
                "frozen_for_s = 0",
                "`frozen_for_s` must be at least 1 second",
            ),
            ("above = 1\ndeadband = -1", "`deadband` must be at least 0"),
        ] {
            let got = rule(keys).unwrap_err();
            assert!(got.contains(says), "{keys:?}: {got}");
        }
    }

    #[test]
    fn a_refinement_that_gives_another_condition_replaces_the_templates() {
        let text = site("")
            + r#"
[[rules]]
id = "smoke-high"
building = "B7"
rise_by = 1.0
within_s = 60
off_delay_ms = 5000
"#;
        let config = Config::from_toml_str(&text, "site.toml").unwrap_or_else(|e| panic!("{e}"));
        let high = bound(&config, "smoke-high");
        let b7 = high.iter().find(|(_, d)| d.contains(&"s-b7-a")).unwrap().0;
        assert_eq!(
            b7.condition(),
            Ok(shouwang_rules::Condition::RiseWithin {
                by: 1.0,
                window_ms: 60_000
            })
        );
        assert_eq!((b7.above, b7.deadband, b7.off_delay_ms), (None, None, 5000));
        let spec = config
            .alarm_specs()
            .into_iter()
            .find(|(s, _)| &*s.alarm_id == "c:gw:s-b7-a:smoke-high")
            .unwrap()
            .0;
        assert_eq!(spec.off_delay_ms, 5000);
    }

    proptest::proptest! {
        /// Outside input: a rule file or a config's `[[rules]]` headers, whatever they hold
        /// (a `[[` at the end of a line, multibyte text after it, tables of any keys), are
        /// reported, never a panic.
        #[test]
        fn no_rule_file_text_makes_the_loader_panic(
            text in "(\\[\\[ ?(rules|rul|r|规则)? ?\\]?\\]?\\n|[a-z_]{1,12} = (\"[^\"]{0,8}\"|-?[0-9]{1,6}|true|\\[\\])\\n|[\\PC]{0,12}\\n){0,24}"
        ) {
            let mut problems = Problems::default();
            let _ = parse_entries(&text, "fuzz.toml", false, &mut problems);
            let value = text.parse::<toml::Table>().ok().and_then(|mut t| t.remove("rules"));
            let _ = config_entries(value, &text, "fuzz.toml", &mut problems);
            let _ = Config::from_toml_str(&(site("") + &text), "fuzz.toml");
        }

        /// Rule entries with any selectors and values over a real site: bound or refused,
        /// never a panic.
        #[test]
        fn any_rule_entries_over_a_site_are_bound_or_refused(
            entries in proptest::collection::vec(
                (
                    "(smoke-high|smoke-dirty|x)",
                    proptest::option::of("(B1|B7|B9)"),
                    proptest::option::of("(1|2)"),
                    proptest::option::of("(smoke|leak)"),
                    proptest::option::of(-1.0e3f64..1.0e3),
                    proptest::option::of(proptest::bool::ANY),
                ),
                0..6,
            )
        ) {
            let mut text = site("");
            for (id, building, floor, kind, above, enabled) in entries {
                text.push_str(&format!("\n[[rules]]\nid = \"{id}\"\n"));
                if let Some(b) = building { text.push_str(&format!("building = \"{b}\"\n")); }
                if let Some(f) = floor { text.push_str(&format!("floor = \"{f}\"\n")); }
                if let Some(k) = kind {
                    text.push_str(&format!(
                        "device_kind = \"{k}\"\npoint = \"obscuration\"\nclass = \"alarm\"\npriority = \"low\"\nmessage = \"m\"\n"
                    ));
                }
                if let Some(a) = above { text.push_str(&format!("above = {a:?}\n")); }
                if let Some(e) = enabled { text.push_str(&format!("enabled = {e}\n")); }
            }
            match Config::from_toml_str(&text, "fuzz.toml") {
                // Every bound rule selects at least one device and has a condition.
                Ok(config) => {
                    for b in &config.rules {
                        proptest::prop_assert!(!b.devices.is_empty());
                        proptest::prop_assert!(b.rule.condition().is_ok());
                    }
                }
                Err(report) => proptest::prop_assert!(!report.problems.is_empty()),
            }
        }
    }
}
