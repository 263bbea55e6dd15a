//! Where devices are: each device's place keys, and `[places]`, the names operators read for
//! the ids of the site's places, given once per site rather than on each device.
//!
//! A device gives ids (`building = "B1"`, `entrance = "3"`, `floor = "12"`, `room = "1201"`);
//! `[places]` says what they are called (`B1` is `1号楼`; every floor `N` is `N层`). The
//! gateway puts both in every alarm event and reading batch ([`shouwang_wire::Place`]), so
//! the console shows `1号楼 3单元 12层 1201室` and the time-series store gets safe tags.
//!
//! ```toml
//! [places]
//! community = "江畔花园"           # the name of [gateway] community
//!
//! [places.grid]
//! G2 = "第二网格"
//!
//! [places.grid_buildings]         # which buildings each grid holds: devices need no grid key
//! G2 = ["B1", "B2"]
//!
//! [places.building]
//! B1 = "1号楼"
//! "*" = "{id}号楼"                 # every other building: B7 is B7号楼
//!
//! [places.entrance]
//! "*" = "{id}单元"
//!
//! [places.floor]
//! "*" = "{id}层"
//! B2 = "地下二层"                  # a name of its own wins over the pattern
//!
//! [places.room]
//! "*" = "{id}室"
//!
//! [places.area]
//! pump-room = "水泵房"
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;
use shouwang_wire::{Level, MAX_NAME_CHARS, Place, PlaceNames, forbidden_name_char};

use super::{Config, DeviceConfig, Problems};

/// The key of a level's table that names every id the table does not list.
pub const PATTERN_KEY: &str = "*";
/// Where a pattern puts the id.
pub const ID_IN_PATTERN: &str = "{id}";

/// The places that are not homes a device's `area` may be, with what Chinese sites call
/// them. A word outside this list is refused by the config check, so the console and the
/// time-series store only ever see these; receivers still show an unknown word as it is.
pub const AREAS: [(&str, &str); 14] = [
    ("pump-room", "水泵房: fire or domestic water pumps"),
    ("roof-tank", "屋顶水箱: the roof water tank"),
    ("lift-machine-room", "电梯机房"),
    ("lift", "电梯: a lift car and its shaft"),
    ("car-park", "车库 / 停车场"),
    ("control-room", "消防控制室 / 监控中心"),
    ("distribution-room", "配电室: power distribution"),
    ("generator-room", "发电机房"),
    ("stairwell", "楼梯间"),
    ("corridor", "走道: a public corridor or lift lobby"),
    ("lobby", "大堂"),
    ("roof", "屋面"),
    ("gate", "出入口: a gate of the community"),
    ("other", "anything else; give its area_name"),
];

/// `[places]`: what operators read for the ids of the site's places, once per site. Every
/// table maps an id (as devices give it) to a name: any text of at most 64 characters
/// without control characters, e.g. `B1 = "1号楼"`. In the grid, building, entrance, floor
/// and room tables the key `"*"` names every id the table does not list, with `{id}` where
/// the id goes: `"*" = "{id}层"` makes floor `12` read `12层`. An id with no name is shown as
/// it is. Names for ids no device of this gateway uses are fine: gateways of one site may
/// share one `[places]` table.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacesSection {
    /// The name of this gateway's community (`[gateway] community`), e.g. `江畔花园`.
    pub community: Option<String>,
    /// `[places.grid]`: grid (网格) id -> name, e.g. `G2 = "第二网格"`.
    #[serde(default)]
    pub grid: BTreeMap<String, String>,
    /// `[places.grid_buildings]`: grid id -> the building ids it holds, e.g.
    /// `G2 = ["B1", "B2"]`. A device in one of these buildings is in that grid without a
    /// `grid` key of its own (one that names another grid is refused). A building is in one
    /// grid at most.
    #[serde(default)]
    pub grid_buildings: BTreeMap<String, Vec<String>>,
    /// `[places.building]`: building (楼栋) id -> name, e.g. `B1 = "1号楼"`.
    #[serde(default)]
    pub building: BTreeMap<String, String>,
    /// `[places.entrance]`: entrance (单元) id -> name, e.g. `"*" = "{id}单元"`.
    #[serde(default)]
    pub entrance: BTreeMap<String, String>,
    /// `[places.floor]`: floor (层) id -> name, e.g. `"*" = "{id}层"`, `B2 = "地下二层"`.
    #[serde(default)]
    pub floor: BTreeMap<String, String>,
    /// `[places.room]`: room (室) id -> name, e.g. `"*" = "{id}室"`.
    #[serde(default)]
    pub room: BTreeMap<String, String>,
    /// `[places.area]`: an area word (see a device's `area`) -> what this site calls it,
    /// e.g. `pump-room = "水泵房"`. A device's `area_name` wins over it. No `"*"`.
    #[serde(default)]
    pub area: BTreeMap<String, String>,
}

impl PlacesSection {
    fn table(&self, level: Level) -> Option<&BTreeMap<String, String>> {
        match level {
            Level::Community => None,
            Level::Grid => Some(&self.grid),
            Level::Building => Some(&self.building),
            Level::Entrance => Some(&self.entrance),
            Level::Floor => Some(&self.floor),
            Level::Room => Some(&self.room),
            Level::Area => Some(&self.area),
        }
    }

    /// The name of `id` at `level`: its own, else the level's pattern filled in, else none.
    pub fn name(&self, level: Level, id: &str) -> Option<String> {
        if level == Level::Community {
            return self.community.clone();
        }
        let table = self.table(level)?;
        if let Some(name) = table.get(id) {
            return Some(name.clone());
        }
        let pattern = table.get(PATTERN_KEY).filter(|_| level != Level::Area)?;
        Some(pattern.replace(ID_IN_PATTERN, id))
    }

    /// The grid `[places.grid_buildings]` puts `building` in.
    pub fn grid_of(&self, building: &str) -> Option<&str> {
        self.grid_buildings
            .iter()
            .find(|(_, buildings)| buildings.iter().any(|b| b == building))
            .map(|(grid, _)| grid.as_str())
    }
}

impl DeviceConfig {
    /// The device's id at one level, as its config gives it (`unit` is the room's old key).
    pub fn place_id(&self, level: Level) -> Option<&str> {
        match level {
            Level::Community => None,
            Level::Grid => self.grid.as_deref(),
            Level::Building => self.building.as_deref(),
            Level::Entrance => self.entrance.as_deref(),
            Level::Floor => self.floor.as_deref(),
            Level::Room => self.room.as_deref().or(self.unit.as_deref()),
            Level::Area => self.area.as_deref(),
        }
    }
}

impl Config {
    /// Where `device` is, with the names of `[places]`: what its alarm events and readings
    /// carry.
    pub fn place(&self, device: &DeviceConfig) -> Place {
        let places = &self.places;
        let mut place = Place {
            community: self.gateway.community.clone(),
            ..Place::default()
        };
        for level in Level::ALL {
            if let Some(id) = device.place_id(level) {
                *place.id_mut(level) = id.to_string();
            }
        }
        if place.grid.is_empty()
            && let Some(grid) = places.grid_of(&place.building)
        {
            place.grid = grid.to_string();
        }
        let mut names = PlaceNames::default();
        for level in Level::ALL {
            let id = place.id(level);
            if level != Level::Community && id.is_empty() {
                continue;
            }
            if let Some(name) = places.name(level, id) {
                *names.get_mut(level) = name;
            }
        }
        if let Some(name) = &device.area_name {
            names.area = name.clone();
        }
        place.names = names;
        place
    }

    /// The community's place: where the gateway's own faults are.
    pub fn community_place(&self) -> Place {
        let mut place = Place {
            community: self.gateway.community.clone(),
            ..Place::default()
        };
        place.names.community = self.places.community.clone().unwrap_or_default();
        place
    }
}

impl Problems {
    /// A name operators read: not blank, at most [`MAX_NAME_CHARS`], no control characters.
    fn name(&mut self, field: &str, name: &str) {
        let len = name.chars().count();
        if name.trim().is_empty() {
            self.add(field, "a name must not be empty");
        } else if len > MAX_NAME_CHARS {
            self.add(
                field,
                format!(
                    "name {name:?} is {len} characters long; at most {MAX_NAME_CHARS} (it travels in every alarm event)"
                ),
            );
        } else if let Some(c) = forbidden_name_char(name) {
            self.add(
                field,
                format!(
                    "name {name:?} has {c:?}; names may not hold control characters, line separators or direction overrides"
                ),
            );
        }
    }
}

/// `[places]` on its own: its keys are ids (or `"*"`), its names readable, its patterns
/// hold `{id}`, its areas known, each building in one grid.
pub(super) fn check_section(places: &PlacesSection, p: &mut Problems) {
    if let Some(name) = &places.community {
        p.name("places.community", name);
    }
    for level in Level::ALL {
        let Some(table) = places.table(level) else {
            continue;
        };
        for (id, name) in table {
            let field = format!("places.{}.{}", level.as_str(), toml_key(id));
            if id == PATTERN_KEY && level != Level::Area {
                if !name.contains(ID_IN_PATTERN) {
                    p.add(
                        &field,
                        format!(
                            "a pattern names every {} the table does not list: put {ID_IN_PATTERN} where the id goes, e.g. \"{ID_IN_PATTERN}{}\"",
                            level.as_str(),
                            example_suffix(level)
                        ),
                    );
                }
                // The pattern's own characters; its length is judged once filled in.
                if let Some(c) = forbidden_name_char(name) {
                    p.add(&field, format!("name {name:?} has {c:?}; names may not hold control characters, line separators or direction overrides"));
                }
                continue;
            }
            if level == Level::Area {
                check_area_word(&field, id, p);
            } else {
                p.id(&field, level.as_str(), id);
            }
            p.name(&field, name);
        }
    }
    let mut grid_of: BTreeMap<&str, &str> = BTreeMap::new();
    for (grid, buildings) in &places.grid_buildings {
        let field = format!("places.grid_buildings.{}", toml_key(grid));
        p.id(&field, "grid", grid);
        for building in buildings {
            p.id(&field, "building", building);
            if let Some(first) = grid_of.insert(building, grid) {
                p.add(
                    &field,
                    format!("building {building:?} is in grid {first:?} already: a building is in one grid"),
                );
            }
        }
    }
}

/// One device's place keys: ids where given, `room` or its old name `unit`, a room or an
/// area, and something that says where it is.
pub(super) fn check_device(d: &DeviceConfig, at: &str, p: &mut Problems) {
    for level in Level::ALL {
        let key = match level {
            Level::Community | Level::Area => continue,
            Level::Room if d.room.is_none() => "unit",
            l => l.as_str(),
        };
        if let Some(id) = d.place_id(level) {
            p.id(&format!("{at}.{key}"), level.as_str(), id);
        }
    }
    if d.room.is_some() && d.unit.is_some() {
        p.add(
            format!("{at}.unit"),
            "`unit` is the old name of `room` (the home, 室): give one of them, not both",
        );
    }
    if let Some(area) = &d.area {
        check_area_word(&format!("{at}.area"), area, p);
        if d.place_id(Level::Room).is_some() {
            p.add(
                format!("{at}.area"),
                "a device is in a room (a home) or in an area (a place that is not one), not both",
            );
        }
        if area == "other" && d.area_name.is_none() {
            p.add(
                format!("{at}.area_name"),
                "required with area = \"other\": what operators should read, e.g. \"2号垃圾房\"",
            );
        }
    } else if d.building.is_none() {
        p.add(
            at,
            "say where the device is: give its `building` (with `entrance`, `floor`, `room` as it has them) or its `area` (e.g. \"car-park\")",
        );
    }
    match (&d.area_name, &d.area) {
        (Some(name), Some(_)) => p.name(&format!("{at}.area_name"), name),
        (Some(_), None) => p.add(
            format!("{at}.area_name"),
            "only means something with `area`; set that too, or remove this",
        ),
        _ => {}
    }
}

/// Across `[places]` and the devices: every name a device's place gets from a pattern fits
/// [`MAX_NAME_CHARS`] (names listed in a table are judged there), and a device's `grid`
/// agrees with `[places.grid_buildings]`. `labels`: how messages name each device (where
/// it came from: see `config/devices.rs`).
pub(super) fn check_names_and_grids(config: &Config, labels: &[String], p: &mut Problems) {
    for (i, d) in config.devices.iter().enumerate() {
        let at = labels
            .get(i)
            .cloned()
            .unwrap_or_else(|| format!("devices[{i}] ({})", d.id));
        if let (Some(grid), Some(building)) = (&d.grid, &d.building)
            && let Some(listed) = config.places.grid_of(building)
            && listed != grid
        {
            p.add(
                format!("{at}.grid"),
                format!(
                    "building {building:?} is in grid {listed:?} by [places.grid_buildings], not {grid:?}"
                ),
            );
        }
        let place = config.place(d);
        for level in Level::ALL {
            let listed = config
                .places
                .table(level)
                .is_some_and(|t| t.contains_key(place.id(level)));
            let name = place.names.get(level);
            let len = name.chars().count();
            if len > MAX_NAME_CHARS && !listed && level != Level::Community {
                p.add(
                    format!("{at}.{}", level.as_str()),
                    format!(
                        "its name {name:?} (from [places.{}]) is {len} characters long; at most {MAX_NAME_CHARS}",
                        level.as_str()
                    ),
                );
            }
        }
    }
}

fn check_area_word(field: &str, word: &str, p: &mut Problems) {
    if !AREAS.iter().any(|(known, _)| *known == word) {
        let known: Vec<&str> = AREAS.iter().map(|(w, _)| *w).collect();
        p.add(
            field,
            format!(
                "{word:?} is not an area this gateway knows; one of {}",
                known.join(", ")
            ),
        );
    }
}

/// A table key as a TOML reader would write it in a dotted path.
fn toml_key(key: &str) -> String {
    if !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        key.to_string()
    } else {
        format!("{key:?}")
    }
}

fn example_suffix(level: Level) -> &'static str {
    match level {
        Level::Building => "号楼",
        Level::Entrance => "单元",
        Level::Floor => "层",
        Level::Room => "室",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    const SITE: &str = r#"
[gateway]
id = "gw-b1"
community = "riverside"
data_dir = "data"

[places]
community = "江畔花园"

[places.grid]
G2 = "第二网格"

[places.grid_buildings]
G2 = ["B1", "B2"]

[places.building]
B1 = "1号楼"
"*" = "{id}号楼"

[places.entrance]
"*" = "{id}单元"

[places.floor]
"*" = "{id}层"
B2 = "地下二层"

[places.room]
"*" = "{id}室"

[places.area]
pump-room = "水泵房"

[[devices]]
id = "smoke-B1-3-1201"
kind = "smoke"
building = "B1"
entrance = "3"
floor = "12"
room = "1201"
transport = "tcp"
address = "127.0.0.1:15021"

[[devices.points]]
name = "obscuration"
register = 0
type = "u16"

[[devices]]
id = "pressure-B1-pump"
kind = "pressure"
building = "B1"
floor = "B2"
area = "pump-room"
area_name = "消防水泵房"
transport = "tcp"
address = "127.0.0.1:15022"

[[devices.points]]
name = "pressure"
register = 0
type = "f32"

[[devices]]
id = "door-car-park"
kind = "door"
area = "car-park"
floor = "B2"
transport = "tcp"
address = "127.0.0.1:15023"

[[devices.points]]
name = "open"
register = 0
type = "u16"
"#;

    fn site() -> Config {
        Config::from_toml_str(SITE, "site.toml").unwrap_or_else(|r| panic!("{r}"))
    }

    #[test]
    fn a_home_is_named_level_by_level_from_the_places_table() {
        let c = site();
        let place = c.place(&c.devices[0]);
        assert_eq!(place.label(), "1号楼 3单元 12层 1201室");
        assert_eq!(place.short(), "B1-3-12-1201");
        assert_eq!(
            (place.grid.as_str(), place.names.grid.as_str()),
            ("G2", "第二网格"),
            "the grid comes from [places.grid_buildings]"
        );
        assert_eq!(place.names.community, "江畔花园");
        // The same place is on the device's alarms.
        let specs = c.alarm_specs();
        let (_, meta) = specs
            .iter()
            .find(|(s, _)| &*s.alarm_id == "riverside:gw-b1:smoke-B1-3-1201:comm_lost")
            .unwrap();
        assert_eq!(*meta.place, place);
    }

    #[test]
    fn a_place_that_is_not_a_home_reads_with_its_own_name_or_the_sites_word() {
        let c = site();
        let pump = c.place(&c.devices[1]);
        assert_eq!(pump.label(), "1号楼 地下二层 消防水泵房");
        assert_eq!(pump.area, "pump-room");
        let car_park = c.place(&c.devices[2]);
        // No building, so no grid; the site gave no word for a car park: its id shows.
        assert_eq!(car_park.label(), "地下二层 car-park");
        assert_eq!(car_park.grid, "");
    }

    #[test]
    fn the_gateways_own_faults_are_at_the_community_with_its_name() {
        let c = site();
        let specs = c.alarm_specs();
        let (_, meta) = specs
            .iter()
            .find(|(s, _)| &*s.alarm_id == "riverside:gw-b1:gw-b1:queue_disk")
            .unwrap();
        assert_eq!(meta.place.community, "riverside");
        assert_eq!(meta.place.names.community, "江畔花园");
        assert_eq!(meta.place.building, "");
    }

    #[test]
    fn a_config_of_before_schema_2_loads_with_its_unit_as_the_room() {
        let text = SITE.replace("room = \"1201\"", "unit = \"1201\"");
        let c = Config::from_toml_str(&text, "old.toml").unwrap_or_else(|r| panic!("{r}"));
        assert_eq!(c.place(&c.devices[0]).room, "1201");
    }

    fn with_device_keys(keys: &str) -> Vec<(String, String)> {
        problems_of(&SITE.replace("room = \"1201\"\n", keys))
    }

    #[test]
    fn a_device_with_both_unit_and_room_or_a_room_and_an_area_is_refused_by_field() {
        let problems = with_device_keys("room = \"1201\"\nunit = \"1201\"\n");
        assert_eq!(
            problems,
            [(
                "devices[0] (smoke-B1-3-1201).unit".to_string(),
                "`unit` is the old name of `room` (the home, 室): give one of them, not both"
                    .to_string()
            )]
        );
        let problems = with_device_keys("room = \"1201\"\narea = \"corridor\"\n");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "devices[0] (smoke-B1-3-1201).area");
    }

    #[test]
    fn place_ids_follow_the_id_rules_and_areas_the_vocabulary() {
        let problems = with_device_keys("room = \"12/01\"\n");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "devices[0] (smoke-B1-3-1201).room");
        assert!(problems[0].1.contains("'/'"), "{problems:?}");
        let problems =
            problems_of(&SITE.replace("\"1号楼\"\n\"*\"", "\"1号楼\"\n\"B 9\" = \"9号楼\"\n\"*\""));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "places.building.\"B 9\"");
        let problems = problems_of(&SITE.replace("area = \"car-park\"", "area = \"carpark\""));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "devices[2] (door-car-park).area");
        assert!(problems[0].1.contains("car-park"), "{problems:?}");
        // Chinese in an id: refused, with the rule.
        let problems = with_device_keys("room = \"1201室\"\n");
        assert!(problems[0].1.contains("ASCII letters"), "{problems:?}");
    }

    #[test]
    fn a_device_must_say_where_it_is() {
        let problems = problems_of(&SITE.replace("area = \"car-park\"\n", ""));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "devices[2] (door-car-park)");
        assert!(problems[0].1.contains("building"), "{problems:?}");
        let problems = problems_of(&SITE.replace("area = \"car-park\"", "area = \"other\""));
        assert_eq!(problems[0].0, "devices[2] (door-car-park).area_name");
    }

    #[test]
    fn names_are_bounded_and_free_of_control_characters_and_patterns_hold_the_id() {
        let long = "楼".repeat(MAX_NAME_CHARS + 1);
        let text = SITE
            .replace("G2 = \"第二网格\"", &format!("G2 = \"{long}\""))
            .replace("\"*\" = \"{id}单元\"", "\"*\" = \"单元\"")
            .replace("B2 = \"地下二层\"", "B2 = \"地下\\n二层\"")
            .replace(
                "\"*\" = \"{id}室\"",
                &format!("\"*\" = \"{}{{id}}\"", "室".repeat(62)),
            );
        let problems = problems_of(&text);
        let fields: Vec<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "places.grid.G2",
                "places.entrance.\"*\"",
                "places.floor.B2",
                // 62 characters and a 4-character room id: 66 once filled in.
                "devices[0] (smoke-B1-3-1201).room",
            ],
            "{problems:#?}"
        );
        assert!(problems[0].1.contains("at most 64"), "{problems:?}");
        assert!(problems[1].1.contains("{id}"), "{problems:?}");
        assert!(problems[2].1.contains("'\\n'"), "{problems:?}");
    }

    #[test]
    fn every_area_word_is_in_the_user_docs() {
        // The doc comment of `area` (the config's reference), the README and docs/wire.md
        // list the vocabulary by hand.
        let docs = [
            ("gateway/src/config.rs", include_str!("../config.rs")),
            ("README.md", include_str!("../../../README.md")),
            ("docs/wire.md", include_str!("../../../docs/wire.md")),
        ];
        for (word, _) in AREAS {
            for (file, text) in docs {
                assert!(
                    text.contains(&format!("`{word}`")),
                    "{file} does not list `{word}`"
                );
            }
        }
    }

    #[test]
    fn a_bad_name_is_reported_even_beside_a_missing_gateway_section() {
        let text = SITE
            .replace(
                "[gateway]\nid = \"gw-b1\"\ncommunity = \"riverside\"\ndata_dir = \"data\"\n",
                "",
            )
            .replace("G2 = \"第二网格\"", "G2 = \"\"");
        let fields: Vec<String> = problems_of(&text).into_iter().map(|(f, _)| f).collect();
        assert_eq!(fields, ["gateway", "places.grid.G2"]);
    }

    #[test]
    fn a_building_is_in_one_grid_and_a_device_may_not_say_otherwise() {
        let text = SITE
            .replace(
                "G2 = [\"B1\", \"B2\"]",
                "G2 = [\"B1\", \"B2\"]\nG3 = [\"B2\"]",
            )
            .replace("entrance = \"3\"", "entrance = \"3\"\ngrid = \"G3\"");
        let problems = problems_of(&text);
        let fields: Vec<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "places.grid_buildings.G3",
                "devices[0] (smoke-B1-3-1201).grid"
            ],
            "{problems:#?}"
        );
    }
}
