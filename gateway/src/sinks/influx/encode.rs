//! Readings -> InfluxDB line protocol. Pure: no I/O, no clock.
//!
//! One line per [`PointValue`](shouwang_wire::PointValue) of a [`ReadingBatch`]:
//!
//! ```text
//! shouwang_reading,building=B1,community=riverside,device=smoke-1,device_kind=smoke,entrance=3,floor=12,gateway=gw-b1,grid=G2,point=obscuration,room=1201 value=1.5,quality=0 1767225600000
//! shouwang_reading,building=B1,community=riverside,device=pressure-1,device_kind=pressure,gateway=gw-b1,point=current quality=4 1767225600000
//! ```
//!
//! The place's levels are tags by their ids (`community`, `grid`, `building`, `entrance`,
//! `floor`, `room`, `area`); the names operators read (`1号楼`) are not written: a tag is a
//! series' identity, and renaming a building must not split its history.
//!
//! Invariants of every encoded line (docs/line-protocol.md is the user-facing version):
//! - the measurement is [`MEASUREMENT`]; the fields are [`FIELD`], a float, only when the
//!   reading is good, and [`QUALITY_FIELD`] always, a float holding the quality's code:
//!   numbers are written in Rust's shortest round-trip decimal form without an exponent and
//!   never with the `i`/`u` integer suffixes, so `3.0` is written `3`, which line protocol
//!   reads as a float;
//! - tags come sorted by key (InfluxDB's preferred order, it saves the server a sort);
//! - a tag whose value is empty is left out, because InfluxDB rejects empty tag values;
//! - a value that is NaN or infinite is left out (line protocol has no spelling for it) and
//!   counted in [`EncodedBatch::skipped`];
//! - the timestamp is the batch's `ts_ms`: the writer asks for `precision=ms`;
//! - every line, the last one included, ends with `\n`.
//!
//! Escaping (measurement: `,` and space; tag keys, tag values, field keys: `,`, `=` and
//! space) puts a backslash before the character. A backslash in a name is written as `\\`
//! only where a lone one would be misread: before another backslash, before a character
//! that needs escaping, or at the end. Everywhere else it is written as is, which every
//! server reads as a literal backslash, including InfluxDB 1.x, which never unescapes `\\`.
//! Line breaks cannot appear inside a line at all, so `\n` and `\r` in a name become spaces.

use std::fmt::Write as _;

use shouwang_wire::ReadingBatch;

/// The measurement every reading is written to.
pub const MEASUREMENT: &str = "shouwang_reading";
/// The one field of every line. VictoriaMetrics names the series
/// `<measurement>_<field>`, i.e. `shouwang_reading_value`.
pub const FIELD: &str = "value";
/// The field on every line that says how far the reading can be trusted, as a number:
/// 0 good, 1 stale, 2 comm-lost, 3 out-of-range, 4 wire-break, 5 bad
/// ([`shouwang_wire::Quality::code`]). A line of any other quality than good has no
/// `value` field.
pub const QUALITY_FIELD: &str = "quality";

/// The lines of one [`ReadingBatch`], ready to be appended to a request body.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EncodedBatch {
    /// Whole lines, each ending in `\n`.
    pub text: String,
    /// How many lines `text` holds.
    pub lines: usize,
    /// Values left out because they were NaN or infinite.
    pub skipped: usize,
}

/// Encode every finite value of `batch` as one line each.
pub fn encode_batch(batch: &ReadingBatch) -> EncodedBatch {
    // Everything before `point` is the same for every line of the batch (tags sorted by
    // key: area, building, community, device, device_kind, entrance, floor, gateway, grid |
    // point | room).
    let place = &batch.place;
    let mut prefix = String::with_capacity(160);
    escape_measurement(MEASUREMENT, &mut prefix);
    push_tag(&mut prefix, "area", &place.area);
    push_tag(&mut prefix, "building", &place.building);
    push_tag(&mut prefix, "community", &place.community);
    push_tag(&mut prefix, "device", &batch.device);
    push_tag(&mut prefix, "device_kind", &batch.device_kind);
    push_tag(&mut prefix, "entrance", &place.entrance);
    push_tag(&mut prefix, "floor", &place.floor);
    push_tag(&mut prefix, "gateway", &batch.gateway);
    push_tag(&mut prefix, "grid", &place.grid);
    let mut suffix = String::with_capacity(32);
    push_tag(&mut suffix, "room", &place.room);

    let mut out = EncodedBatch {
        text: String::with_capacity(batch.points.len() * (prefix.len() + suffix.len() + 48)),
        ..EncodedBatch::default()
    };
    for p in &batch.points {
        // Only a good value is written as the value: a dashboard that plots `value` never
        // shows a stale or out-of-range number as if it were one.
        let value = p.good_value();
        if value.is_some_and(|v| !v.is_finite()) {
            out.skipped += 1;
            continue;
        }
        out.text.push_str(&prefix);
        push_tag(&mut out.text, "point", &p.point);
        out.text.push_str(&suffix);
        out.text.push(' ');
        // Writing into a String cannot fail.
        if let Some(value) = value {
            escape_key(FIELD, &mut out.text);
            let _ = write!(out.text, "={value},");
        }
        escape_key(QUALITY_FIELD, &mut out.text);
        let _ = writeln!(out.text, "={} {}", p.quality.code(), batch.ts_ms);
        out.lines += 1;
    }
    out
}

/// `,key=value`, or nothing when the value is empty.
fn push_tag(out: &mut String, key: &str, value: &str) {
    if value.is_empty() {
        return;
    }
    out.push(',');
    escape_key(key, out);
    out.push('=');
    escape_key(value, out);
}

/// Escape a measurement name: `,` and space.
pub fn escape_measurement(s: &str, out: &mut String) {
    escape(s, &[',', ' '], out);
}

/// Escape a tag key, tag value or field key: `,`, `=` and space.
pub fn escape_key(s: &str, out: &mut String) {
    escape(s, &[',', '=', ' '], out);
}

fn escape(s: &str, special: &[char], out: &mut String) {
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                // A backslash escapes the next character only if that one is special or
                // another backslash; at the very end it would escape the separator.
                let ambiguous = match chars.peek() {
                    None => true,
                    Some(&next) => next == '\\' || special.contains(&next) || is_line_break(next),
                };
                out.push_str(if ambiguous { "\\\\" } else { "\\" });
            }
            c if is_line_break(c) => out.push_str("\\ "),
            c if special.contains(&c) => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
}

fn is_line_break(c: char) -> bool {
    c == '\n' || c == '\r'
}

#[cfg(test)]
mod tests {
    use super::*;
    use shouwang_wire::{Place, PlaceNames};

    fn batch(points: &[(&str, f64)]) -> ReadingBatch {
        ReadingBatch {
            schema: ReadingBatch::SCHEMA,
            gateway: "gw-b1".into(),
            device: "smoke-1".into(),
            device_kind: "smoke".into(),
            place: Place {
                community: "riverside".into(),
                grid: "G2".into(),
                building: "B1".into(),
                entrance: "3".into(),
                floor: "12".into(),
                room: "1201".into(),
                area: String::new(),
                names: PlaceNames {
                    building: "1号楼".into(),
                    room: "1201室".into(),
                    ..PlaceNames::default()
                },
            },
            ts_ms: 1_767_225_600_123,
            points: points
                .iter()
                .map(|(p, v)| shouwang_wire::PointValue {
                    point: (*p).into(),
                    value: Some(*v),
                    engineering_unit: Some("%/m".into()),
                    quality: Default::default(),
                })
                .collect(),
        }
    }

    fn key(s: &str) -> String {
        let mut out = String::new();
        escape_key(s, &mut out);
        out
    }

    #[test]
    fn a_reading_becomes_one_line_with_sorted_tags_and_a_ms_timestamp() {
        let e = encode_batch(&batch(&[("obscuration", 1.5), ("alarm", 0.0)]));
        assert_eq!(
            e.text,
            "shouwang_reading,building=B1,community=riverside,device=smoke-1,device_kind=smoke,entrance=3,floor=12,gateway=gw-b1,grid=G2,point=obscuration,room=1201 value=1.5,quality=0 1767225600123\n\
             shouwang_reading,building=B1,community=riverside,device=smoke-1,device_kind=smoke,entrance=3,floor=12,gateway=gw-b1,grid=G2,point=alarm,room=1201 value=0,quality=0 1767225600123\n"
        );
        assert_eq!((e.lines, e.skipped), (2, 0));
    }

    #[test]
    fn whole_numbers_are_written_as_floats_without_an_integer_suffix() {
        let e = encode_batch(&batch(&[
            ("a", 3.0),
            ("b", -0.25),
            ("c", 1e20),
            ("d", 1e-7),
        ]));
        let values: Vec<&str> = e
            .text
            .lines()
            .map(|l| l.split(' ').nth(1).unwrap_or_default())
            .collect();
        assert_eq!(
            values,
            [
                "value=3,quality=0",
                "value=-0.25,quality=0",
                "value=100000000000000000000,quality=0",
                "value=0.0000001,quality=0"
            ]
        );
        for v in &values {
            let n = v
                .trim_start_matches("value=")
                .trim_end_matches(",quality=0");
            assert!(
                !n.ends_with('i') && !n.ends_with('u') && !n.contains('e'),
                "{v}"
            );
            assert!(n.parse::<f64>().is_ok(), "{v}");
        }
    }

    #[test]
    fn values_that_are_not_finite_are_skipped_and_counted() {
        let e = encode_batch(&batch(&[
            ("a", f64::NAN),
            ("b", 2.0),
            ("c", f64::INFINITY),
            ("d", f64::NEG_INFINITY),
        ]));
        assert_eq!((e.lines, e.skipped), (1, 3));
        assert!(e.text.contains("point=b,"), "{}", e.text);
    }

    #[test]
    fn empty_tag_values_are_left_out() {
        let mut b = batch(&[("", 1.0)]);
        b.place.grid.clear();
        b.place.entrance.clear();
        b.place.floor.clear();
        b.place.room.clear();
        let e = encode_batch(&b);
        assert_eq!(
            e.text,
            "shouwang_reading,building=B1,community=riverside,device=smoke-1,device_kind=smoke,gateway=gw-b1 value=1,quality=0 1767225600123\n"
        );
    }

    #[test]
    fn a_place_that_is_not_a_home_is_tagged_with_its_area_and_names_are_never_tags() {
        let mut b = batch(&[("pressure", 0.65)]);
        b.place.entrance.clear();
        b.place.room.clear();
        b.place.floor = "B2".into();
        b.place.area = "pump-room".into();
        b.place.names.area = "消防 水泵房".into();
        let e = encode_batch(&b);
        assert_eq!(
            e.text,
            "shouwang_reading,area=pump-room,building=B1,community=riverside,device=smoke-1,device_kind=smoke,floor=B2,gateway=gw-b1,grid=G2,point=pressure value=0.65,quality=0 1767225600123\n"
        );
    }

    #[test]
    fn tags_are_sorted_by_key_whichever_levels_a_place_has() {
        let e = encode_batch(&batch(&[("p", 1.0)]));
        let tags: Vec<&str> = e
            .text
            .split(' ')
            .next()
            .unwrap_or_default()
            .split(',')
            .skip(1)
            .map(|t| t.split('=').next().unwrap_or_default())
            .collect();
        let mut sorted = tags.clone();
        sorted.sort_unstable();
        assert_eq!(tags, sorted);
        assert_eq!(tags.len(), 10, "{tags:?}");
    }

    #[test]
    fn an_empty_batch_encodes_to_nothing() {
        assert_eq!(encode_batch(&batch(&[])), EncodedBatch::default());
    }

    #[test]
    fn commas_equals_signs_and_spaces_are_escaped_in_tags() {
        assert_eq!(
            key("Riverside Gardens, Phase 2"),
            r"Riverside\ Gardens\,\ Phase\ 2"
        );
        assert_eq!(key("a=b"), r"a\=b");
        assert_eq!(key("plain-id_1.2"), "plain-id_1.2");
        assert_eq!(key("楼 1"), r"楼\ 1");
    }

    #[test]
    fn measurements_escape_commas_and_spaces_but_not_equals_signs() {
        let mut out = String::new();
        escape_measurement("a b,c=d", &mut out);
        assert_eq!(out, r"a\ b\,c=d");
    }

    #[test]
    fn a_backslash_is_doubled_only_where_a_lone_one_would_be_misread() {
        // Before an ordinary character: literal for every server, InfluxDB 1.x included.
        assert_eq!(key(r"B1\F2"), r"B1\F2");
        // At the end it would escape the separator that follows.
        assert_eq!(key(r"end\"), r"end\\");
        // Before a special character it would escape it.
        assert_eq!(key(r"a\,b"), r"a\\\,b");
        assert_eq!(key(r"a\ b"), r"a\\\ b");
        // Two in a row would read as one, so the first is doubled; the second is literal.
        assert_eq!(key(r"a\\b"), r"a\\\b");
        assert_eq!(key(r"\"), r"\\");
    }

    #[test]
    fn line_breaks_in_names_become_escaped_spaces() {
        assert_eq!(key("a\nb\r\nc"), r"a\ b\ \ c");
        assert_eq!(key("a\\\nb"), r"a\\\ b");
    }

    #[test]
    fn every_line_has_exactly_one_unescaped_space_before_the_field_and_one_before_the_time() {
        let mut b = batch(&[("p o,i=n\\t", 1.0)]);
        b.place.community = "x, y=z\\".into();
        b.device_kind = "\\".into();
        let e = encode_batch(&b);
        let line = e.text.trim_end_matches('\n');
        // Split on spaces that are not escaped, the way a server does.
        let mut parts = Vec::new();
        let mut current = String::new();
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    current.push(c);
                    if let Some(n) = chars.next() {
                        current.push(n);
                    }
                }
                ' ' => parts.push(std::mem::take(&mut current)),
                c => current.push(c),
            }
        }
        parts.push(current);
        assert_eq!(parts.len(), 3, "{line}");
        assert_eq!(parts[1], "value=1,quality=0");
        assert_eq!(parts[2], "1767225600123");
    }

    #[test]
    fn a_reading_that_is_not_good_has_its_quality_and_no_value() {
        let mut b = batch(&[("current", 12.0), ("pressure", 0.6)]);
        b.points[0].value = None;
        b.points[0].quality = shouwang_wire::Quality::WireBreak;
        // An out-of-range value is not written as a value either.
        b.points[1].quality = shouwang_wire::Quality::OutOfRange;
        let text = encode_batch(&b).text;
        let fields: Vec<&str> = text
            .lines()
            .map(|l| l.split(' ').nth(1).unwrap_or_default())
            .collect();
        assert_eq!(fields, ["quality=4", "quality=3"], "{text}");
    }
}
