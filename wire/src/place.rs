//! Where a device is: the site's hierarchy, as ids for machines and names for people.
//!
//! A Chinese residential site is addressed community (小区) → grid (网格) → building (楼栋)
//! → entrance (单元, a stairwell entrance) → floor (层) → room (室), and has places that are
//! not homes: a pump room, a lift machine room, a car park. A [`Place`] holds one id per level
//! (empty when the place has no such level) and, for a place that is not a home, an `area`
//! word from a fixed vocabulary (`pump-room`, `car-park`, ...) kept by the gateway's config.
//!
//! Invariants the gateway's config check holds (receivers do not re-check them):
//! - every id is ASCII letters, digits, `-`, `_`, `.` ([`crate::forbidden_id_char`]), at
//!   most [`crate::MAX_ID_CHARS`]: ids become line-protocol tags and may appear in URLs;
//! - a name is any Unicode text of at most [`MAX_NAME_CHARS`] characters without control
//!   characters, line separators or bidirectional overrides ([`forbidden_name_char`]), so an
//!   event that carries every name still fits one publish with room to spare;
//! - `room` and `area` are never both set: a room is a home, an area a place that is not.
//!
//! Names travel in every event and reading batch that carries the place (they are a few
//! dozen bytes): a console that has just started shows `1号楼 3单元 12层 1201室` for the first
//! alarm it hears, with nothing to learn first.

use serde::{Deserialize, Serialize};

/// The most characters of one level's name (`1号楼`, `江畔花园二期`).
pub const MAX_NAME_CHARS: usize = 64;

/// One level of the site's hierarchy, outermost first; `Area` is the kind of a place that is
/// not a home (it sits where the room would).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// 小区: the site, one console's or one gateway's `community`.
    Community,
    /// 网格: the governance unit a grid leader looks after.
    Grid,
    /// 楼栋.
    Building,
    /// 单元: a stairwell entrance of a building, with its own lifts and stairs.
    Entrance,
    /// 层.
    Floor,
    /// 室: a home.
    Room,
    /// A place that is not a home: `pump-room`, `car-park`, ...
    Area,
}

impl Level {
    pub const ALL: [Level; 7] = [
        Level::Community,
        Level::Grid,
        Level::Building,
        Level::Entrance,
        Level::Floor,
        Level::Room,
        Level::Area,
    ];

    /// The levels an operator reads as an address, in order: building to room or area.
    /// Community and grid are who looks after it, not where in the building it is.
    pub const ADDRESS: [Level; 5] = [
        Level::Building,
        Level::Entrance,
        Level::Floor,
        Level::Room,
        Level::Area,
    ];

    /// The level's key in JSON, configs and line-protocol tags.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Community => "community",
            Level::Grid => "grid",
            Level::Building => "building",
            Level::Entrance => "entrance",
            Level::Floor => "floor",
            Level::Room => "room",
            Level::Area => "area",
        }
    }
}

/// Where a device is, in the site hierarchy (schema version 2; see [`PlaceV1`] for 1).
/// Each level is an id, empty when the place has no such level; `names` says what operators
/// read for each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Place {
    pub community: String,
    #[serde(default)]
    pub grid: String,
    #[serde(default)]
    pub building: String,
    /// 单元: the stairwell entrance.
    #[serde(default)]
    pub entrance: String,
    #[serde(default)]
    pub floor: String,
    /// 室: the home. Schema version 1 called it `unit`.
    #[serde(default)]
    pub room: String,
    /// A place that is not a home, from the gateway's vocabulary (`pump-room`,
    /// `lift-machine-room`, `car-park`, `control-room`, `roof-tank`, ...). A receiver shows a
    /// word it does not know as it is: a new word must never cost an alarm.
    #[serde(default)]
    pub area: String,
    #[serde(default)]
    pub names: PlaceNames,
}

/// What operators read for each level of a [`Place`]; an empty name means "show the id".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PlaceNames {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub community: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub grid: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub building: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub entrance: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub floor: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub room: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub area: String,
}

impl PlaceNames {
    pub fn get(&self, level: Level) -> &str {
        match level {
            Level::Community => &self.community,
            Level::Grid => &self.grid,
            Level::Building => &self.building,
            Level::Entrance => &self.entrance,
            Level::Floor => &self.floor,
            Level::Room => &self.room,
            Level::Area => &self.area,
        }
    }

    pub fn get_mut(&mut self, level: Level) -> &mut String {
        match level {
            Level::Community => &mut self.community,
            Level::Grid => &mut self.grid,
            Level::Building => &mut self.building,
            Level::Entrance => &mut self.entrance,
            Level::Floor => &mut self.floor,
            Level::Room => &mut self.room,
            Level::Area => &mut self.area,
        }
    }

    pub fn is_empty(&self) -> bool {
        Level::ALL.iter().all(|l| self.get(*l).is_empty())
    }
}

impl Place {
    /// The id of one level; empty when the place has none.
    pub fn id(&self, level: Level) -> &str {
        match level {
            Level::Community => &self.community,
            Level::Grid => &self.grid,
            Level::Building => &self.building,
            Level::Entrance => &self.entrance,
            Level::Floor => &self.floor,
            Level::Room => &self.room,
            Level::Area => &self.area,
        }
    }

    pub fn id_mut(&mut self, level: Level) -> &mut String {
        match level {
            Level::Community => &mut self.community,
            Level::Grid => &mut self.grid,
            Level::Building => &mut self.building,
            Level::Entrance => &mut self.entrance,
            Level::Floor => &mut self.floor,
            Level::Room => &mut self.room,
            Level::Area => &mut self.area,
        }
    }

    /// What operators read for one level: its name, or its id without one; empty when the
    /// place has no such level.
    pub fn shown(&self, level: Level) -> &str {
        let id = self.id(level);
        let name = self.names.get(level);
        if id.is_empty() || name.is_empty() {
            id
        } else {
            name
        }
    }

    /// The ids of the address, joined by `-`: `B1-3-12-1201` (building, entrance, floor,
    /// room), `B1-B2-pump-room`; levels the place does not have are left out. Safe in a URL
    /// and a log line.
    pub fn short(&self) -> String {
        let parts: Vec<&str> = Level::ADDRESS
            .iter()
            .map(|l| self.id(*l))
            .filter(|id| !id.is_empty())
            .collect();
        parts.join("-")
    }

    /// The address as operators read it: each level's name (its id where it has none),
    /// joined by spaces: `1号楼 3单元 12层 1201室`. A place without any name reads as
    /// [`Place::short`] (`B1-12-03`), the form sites without names already know.
    pub fn label(&self) -> String {
        if Level::ADDRESS
            .iter()
            .all(|l| self.id(*l).is_empty() || self.names.get(*l).is_empty())
        {
            return self.short();
        }
        let parts: Vec<&str> = Level::ADDRESS
            .iter()
            .map(|l| self.shown(*l))
            .filter(|s| !s.is_empty())
            .collect();
        parts.join(" ")
    }
}

/// A place as schema version 1 wrote it: `unit` is the room (室); there was no grid,
/// entrance, area or name. Read as leniently as version 1 read it (unknown fields ignored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PlaceV1 {
    pub community: String,
    pub building: String,
    pub floor: String,
    pub unit: String,
}

impl From<PlaceV1> for Place {
    fn from(v1: PlaceV1) -> Place {
        Place {
            community: v1.community,
            building: v1.building,
            floor: v1.floor,
            room: v1.unit,
            ..Place::default()
        }
    }
}

/// A character a place name may not have: control characters (line breaks, tabs, NUL), the
/// Unicode line and paragraph separators, and the bidirectional embeddings, overrides and
/// isolates, which could make a name read as another on the board.
pub fn forbidden_name_char(name: &str) -> Option<char> {
    name.chars().find(|&c| {
        c.is_control()
            || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tower() -> Place {
        Place {
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
        }
    }

    #[test]
    fn operators_read_names_and_machines_read_ids() {
        let place = tower();
        assert_eq!(place.label(), "1号楼 3单元 12层 1201室");
        assert_eq!(place.short(), "B1-3-12-1201");
    }

    #[test]
    fn a_level_without_a_name_shows_its_id_and_a_place_without_names_its_short_form() {
        let mut place = tower();
        place.names.entrance.clear();
        assert_eq!(place.label(), "1号楼 3 12层 1201室");
        place.names = PlaceNames::default();
        assert_eq!(place.label(), "B1-3-12-1201");
        // Only the community and grid named: still the short form for the address.
        place.names.community = "江畔花园".into();
        assert_eq!(place.label(), "B1-3-12-1201");
    }

    #[test]
    fn a_place_that_is_not_a_home_ends_in_its_area() {
        let place = Place {
            community: "riverside".into(),
            building: "B1".into(),
            floor: "B2".into(),
            area: "pump-room".into(),
            names: PlaceNames {
                building: "1号楼".into(),
                floor: "地下二层".into(),
                area: "消防水泵房".into(),
                ..PlaceNames::default()
            },
            ..Place::default()
        };
        assert_eq!(place.label(), "1号楼 地下二层 消防水泵房");
        assert_eq!(place.short(), "B1-B2-pump-room");
    }

    #[test]
    fn a_name_without_its_id_is_not_shown() {
        let place = Place {
            community: "c".into(),
            names: PlaceNames {
                building: "1号楼".into(),
                ..PlaceNames::default()
            },
            ..Place::default()
        };
        assert_eq!(place.label(), "");
    }

    #[test]
    fn a_version_1_unit_is_the_room() {
        let v1 = PlaceV1 {
            community: "riverside".into(),
            building: "B1".into(),
            floor: "12".into(),
            unit: "03".into(),
        };
        let place = Place::from(v1);
        assert_eq!((place.room.as_str(), place.entrance.as_str()), ("03", ""));
        assert_eq!(place.short(), "B1-12-03");
    }

    #[test]
    fn names_with_line_breaks_or_direction_overrides_are_caught() {
        assert_eq!(forbidden_name_char("1号楼 (东)"), None);
        assert_eq!(forbidden_name_char("B1\n"), Some('\n'));
        assert_eq!(forbidden_name_char("a\u{202E}b"), Some('\u{202E}'));
        assert_eq!(forbidden_name_char("a\u{2028}"), Some('\u{2028}'));
    }

    #[test]
    fn empty_names_are_not_written() {
        let place = Place {
            community: "c".into(),
            building: "B1".into(),
            ..Place::default()
        };
        let json = serde_json::to_string(&place).unwrap();
        assert_eq!(
            json,
            r#"{"community":"c","grid":"","building":"B1","entrance":"","floor":"","room":"","area":"","names":{}}"#
        );
    }
}
