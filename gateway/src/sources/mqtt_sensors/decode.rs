//! From one MQTT message of a sensor to its values: pure, no I/O, no clock.
//!
//! A message is judged in two steps:
//! 1. The payload as a whole: at most [`MAX_PAYLOAD_BYTES`], UTF-8, JSON, and a JSON
//!    object at the top. A payload that fails is a [`Rejection`]: the caller counts it,
//!    logs it (rate-limited) and otherwise ignores it; it says nothing about the device's
//!    link or its points.
//! 2. Each point on its own ([`SensorMap::read`]): a value, or that point's [`PointFault`]
//!    for this message (missing, null, text that is not a number, an object or array, a
//!    bad quality, a value that is not finite after scaling).
//!
//! What counts as a number (the user docs of `json` in `config.rs` say the same):
//! - a JSON number; serde_json reads integers beyond 64 bits as the nearest `f64`, and
//!   refuses the whole document for a number beyond `f64`'s range (`1e400`): that payload
//!   is then "not JSON" (rejected);
//! - `true` and `false`, as 1 and 0 (door contacts, fire relays);
//! - a string that holds a decimal number after trimming spaces (`" 3.10 "`, `"1e3"`):
//!   platforms that relay NB-IoT sensors often send numbers as strings. `"NaN"`, `"inf"`
//!   and anything that scales to a non-finite value are faults, never readings.
//!
//! No input makes it panic (a property test feeds it arbitrary bytes); nesting is bounded
//! by serde_json's recursion limit (128), so no payload can exhaust the stack.

use super::json::Json;

use crate::config::{DeviceConfig, QualityValue};
use crate::sources::{PointFault, PolledValues};

/// The largest payload read as a sensor message. Sensor messages are a few hundred bytes;
/// anything bigger is a mistake or an attack and is rejected without parsing it. (The
/// connection itself reads packets up to [`super::MAX_INCOMING_BYTES`], so a bigger
/// message is rejected here rather than tearing the link down.)
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;

/// Most segments in a path: a guard against a config that would walk absurdly deep.
const MAX_PATH_SEGMENTS: usize = 32;

/// Why a whole message was ignored.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Rejection {
    #[error("payload of {bytes} bytes is larger than {max} bytes")]
    TooLarge { bytes: usize, max: usize },
    #[error("binary payload (not UTF-8 text)")]
    Binary,
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("JSON {0} where an object was expected")]
    NotObject(&'static str),
    #[error("retained message (a stored value of unknown age, not a report)")]
    Retained,
    #[error("no device has this topic")]
    UnknownTopic,
}

impl Rejection {
    /// A short, stable name for the metric label and the log.
    pub fn kind(&self) -> &'static str {
        match self {
            Rejection::TooLarge { .. } => "too_large",
            Rejection::Binary => "binary",
            Rejection::NotJson(_) => "not_json",
            Rejection::NotObject(_) => "not_object",
            Rejection::Retained => "retained",
            Rejection::UnknownTopic => "unknown_topic",
        }
    }
}

/// A dotted path into a JSON object: `a.b.c`; a segment that is a number also indexes an
/// array (`channels.0.value`), and is an ordinary key in an object. Keys that hold a `.`
/// cannot be named.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonPath {
    text: String,
    segments: Vec<(String, Option<usize>)>,
}

impl JsonPath {
    /// Parse a path as the config gives it.
    pub fn parse(text: &str) -> Result<JsonPath, String> {
        if text.is_empty() {
            return Err("must not be empty".into());
        }
        let mut segments = Vec::new();
        for part in text.split('.') {
            if part.is_empty() {
                return Err(format!(
                    "{text:?} has an empty segment (two dots, or a dot at an end)"
                ));
            }
            segments.push((part.to_string(), part.parse::<usize>().ok()));
        }
        if segments.len() > MAX_PATH_SEGMENTS {
            return Err(format!(
                "{text:?} has {} segments; at most {MAX_PATH_SEGMENTS}",
                segments.len()
            ));
        }
        Ok(JsonPath {
            text: text.to_string(),
            segments,
        })
    }

    /// The value at this path, if there is one.
    pub fn find<'j, 'a>(&self, root: &'j Json<'a>) -> Option<&'j Json<'a>> {
        let mut at = root;
        for (key, index) in &self.segments {
            at = match at {
                Json::Object(_) => at.get(key)?,
                Json::Array(items) => items.get((*index)?)?,
                _ => return None,
            };
        }
        Some(at)
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// A quality field and the values of it that mean good.
#[derive(Debug, Clone, PartialEq)]
pub struct Quality {
    pub path: JsonPath,
    pub good: Vec<QualityValue>,
}

impl Quality {
    /// `Ok` when good; else why not, for the point's fault.
    fn judge(&self, root: &Json) -> Result<(), String> {
        let Some(value) = self.path.find(root) else {
            return Err(format!("quality field `{}` is missing", self.path.as_str()));
        };
        let good = self.good.iter().any(|g| match (g, value) {
            (QualityValue::Bool(g), Json::Bool(v)) => g == v,
            (QualityValue::Number(g), Json::Number(v)) => v.as_f64() == Some(*g),
            (QualityValue::Text(g), Json::String(v)) => g == v,
            _ => false,
        });
        if good {
            Ok(())
        } else {
            Err(format!(
                "quality field `{}` is {}, not a good value",
                self.path.as_str(),
                short(value)
            ))
        }
    }
}

/// One point of a sensor: where its value is, how to scale it, what says it is good.
#[derive(Debug, Clone, PartialEq)]
pub struct PointMap {
    pub name: String,
    pub path: JsonPath,
    pub scale: f64,
    pub offset: f64,
    /// The point's own quality field, or the device's.
    pub quality: Option<Quality>,
}

/// How to read one device's messages.
#[derive(Debug, Clone, PartialEq)]
pub struct SensorMap {
    pub points: Vec<PointMap>,
    pub timestamp: Option<JsonPath>,
}

/// What one accepted message says.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub values: PolledValues,
    /// The sensor's own time of the reading (ms since the Unix epoch), for display only.
    pub sensor_wall_ms: Option<i64>,
}

impl SensorMap {
    /// The map of an `mqtt` device. Fails only for a config that `check` would refuse.
    pub fn from_device(device: &DeviceConfig) -> Result<SensorMap, String> {
        let quality = |field: &Option<String>, good: &Option<Vec<QualityValue>>| {
            field
                .as_deref()
                .map(|f| -> Result<Quality, String> {
                    Ok(Quality {
                        path: JsonPath::parse(f)?,
                        good: good.clone().unwrap_or_default(),
                    })
                })
                .transpose()
        };
        let device_quality = quality(&device.quality_field, &device.quality_good)?;
        let mut points = Vec::new();
        for p in &device.points {
            let Some(json) = &p.json else {
                return Err(format!("point {:?} has no `json` path", p.name));
            };
            let own = quality(
                &p.quality_field,
                &p.quality_good.clone().or(device.quality_good.clone()),
            )?;
            points.push(PointMap {
                name: p.name.clone(),
                path: JsonPath::parse(json)?,
                scale: p.scale,
                offset: p.offset,
                quality: own.or(device_quality.clone()),
            });
        }
        let timestamp = device
            .timestamp_field
            .as_deref()
            .map(JsonPath::parse)
            .transpose()?;
        Ok(SensorMap { points, timestamp })
    }

    /// Judge one payload: the values of the mapped points, or why the whole message is
    /// ignored.
    pub fn read(&self, payload: &[u8]) -> Result<Reading, Rejection> {
        let root = parse_object(payload)?;
        let mut values = PolledValues::default();
        for point in &self.points {
            match point_value(point, &root) {
                Ok(v) => values.values.push((point.name.clone(), v)),
                Err(reason) => values.faults.push(PointFault {
                    point: point.name.clone(),
                    reason,
                    quality: crate::sources::Quality::Bad,
                }),
            }
        }
        let sensor_wall_ms = self
            .timestamp
            .as_ref()
            .and_then(|path| path.find(&root))
            .and_then(timestamp_ms);
        Ok(Reading {
            values,
            sensor_wall_ms,
        })
    }
}

/// Step 1: the payload must be a JSON object of bounded size. Read as [`Json`], which
/// borrows its text from the payload and refuses what `serde_json::Value` refuses.
pub fn parse_object(payload: &[u8]) -> Result<Json<'_>, Rejection> {
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(Rejection::TooLarge {
            bytes: payload.len(),
            max: MAX_PAYLOAD_BYTES,
        });
    }
    let text = std::str::from_utf8(payload).map_err(|_| Rejection::Binary)?;
    let value = Json::parse(text).map_err(|e| Rejection::NotJson(e.to_string()))?;
    match value {
        Json::Object(_) => Ok(value),
        other => Err(Rejection::NotObject(kind(&other))),
    }
}

fn point_value(point: &PointMap, root: &Json) -> Result<f64, String> {
    if let Some(quality) = &point.quality {
        quality.judge(root)?;
    }
    let path = point.path.as_str();
    let raw = match point.path.find(root) {
        None => return Err(format!("field `{path}` is missing")),
        Some(Json::Number(n)) => n
            .as_f64()
            .ok_or_else(|| format!("field `{path}` is a number beyond f64"))?,
        Some(Json::Bool(b)) => f64::from(u8::from(*b)),
        Some(Json::String(s)) => match s.trim().parse::<f64>() {
            Ok(v) if v.is_finite() => v,
            _ => return Err(format!("field `{path}` is text that is not a number")),
        },
        Some(other) => return Err(format!("field `{path}` is {}", kind(other))),
    };
    let value = raw * point.scale + point.offset;
    if value.is_finite() {
        Ok(value)
    } else {
        Err(format!("field `{path}` is not finite after scaling"))
    }
}

fn kind(value: &Json) -> &'static str {
    match value {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "text",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

/// A value for a fault message: scalars as they are (text cut to 32 characters), the rest
/// by kind. Quality fields hold codes, not personal data.
fn short(value: &Json) -> String {
    match value {
        Json::String(s) => format!("{:?}", s.chars().take(32).collect::<String>()),
        Json::Number(n) => n.to_string(),
        Json::Bool(b) => b.to_string(),
        other => kind(other).to_string(),
    }
}

/// The latest time accepted from a sensor: the end of year 9999, in ms.
const MAX_WALL_MS: i64 = 253_402_300_799_999;

/// A sensor's timestamp: ms since the Unix epoch (a number) or RFC 3339 (a string).
pub fn timestamp_ms(value: &Json) -> Option<i64> {
    let ms = match value {
        Json::Number(n) => match n.as_i64() {
            Some(ms) => ms,
            None => {
                let f = n.as_f64()?;
                if !f.is_finite() || f < 0.0 || f > MAX_WALL_MS as f64 {
                    return None;
                }
                f.floor() as i64
            }
        },
        Json::String(s) => rfc3339_ms(s.trim())?,
        _ => return None,
    };
    (0..=MAX_WALL_MS).contains(&ms).then_some(ms)
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` to ms since the Unix epoch.
pub fn rfc3339_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |from: usize, to: usize| -> Option<i64> {
        let t = s.get(from..to)?;
        if t.is_empty() || !t.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        t.parse().ok()
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut i = 19;
    let mut ms = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
        let digits = &s[start..i.min(start + 3)];
        ms = digits.parse::<i64>().ok()? * 10_i64.pow(3 - digits.len() as u32);
    }
    let offset_min = match *b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if b.len() == i + 6 && b[i + 3] == b':' => {
            let (h, m) = (num(i + 1, i + 3)?, num(i + 4, i + 6)?);
            if h > 23 || m > 59 {
                return None;
            }
            if sign == b'+' {
                h * 60 + m
            } else {
                -(h * 60 + m)
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_min * 60;
    Some(seconds * 1000 + ms)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn point(name: &str, path: &str) -> PointMap {
        PointMap {
            name: name.into(),
            path: JsonPath::parse(path).unwrap(),
            scale: 1.0,
            offset: 0.0,
            quality: None,
        }
    }

    fn map(points: Vec<PointMap>) -> SensorMap {
        SensorMap {
            points,
            timestamp: None,
        }
    }

    fn read(map: &SensorMap, payload: &str) -> Reading {
        map.read(payload.as_bytes()).unwrap()
    }

    #[test]
    fn nested_paths_and_array_indices_find_their_values_and_are_scaled() {
        let mut smoke = point("obscuration", "data.smoke.obscuration");
        smoke.scale = 0.01;
        smoke.offset = 0.5;
        let m = map(vec![smoke, point("ch1", "channels.1.v")]);
        let r = read(
            &m,
            r#"{"data":{"smoke":{"obscuration":250}},"channels":[{"v":1},{"v":7}]}"#,
        );
        assert_eq!(
            r.values.values,
            [("obscuration".to_string(), 3.0), ("ch1".to_string(), 7.0)]
        );
        assert!(r.values.faults.is_empty());
    }

    #[test]
    fn a_number_segment_is_an_ordinary_key_in_an_object() {
        let m = map(vec![point("p", "a.0")]);
        assert_eq!(read(&m, r#"{"a":{"0":4}}"#).values.values[0].1, 4.0);
    }

    #[test]
    fn a_missing_or_null_field_is_that_points_fault_and_the_others_still_read() {
        let m = map(vec![point("a", "a"), point("b", "x.b"), point("c", "c")]);
        let r = read(&m, r#"{"a":1,"c":null}"#);
        assert_eq!(r.values.values, [("a".to_string(), 1.0)]);
        let faults: Vec<_> = r
            .values
            .faults
            .iter()
            .map(|f| (f.point.as_str(), f.reason.as_str()))
            .collect();
        assert_eq!(
            faults,
            [("b", "field `x.b` is missing"), ("c", "field `c` is null")]
        );
    }

    #[test]
    fn strings_that_hold_numbers_are_read_and_other_text_is_a_fault() {
        let m = map(vec![
            point("a", "a"),
            point("b", "b"),
            point("c", "c"),
            point("d", "d"),
        ]);
        let r = read(&m, r#"{"a":" 3.10 ","b":"1e3","c":"high","d":""}"#);
        assert_eq!(
            r.values.values,
            [("a".to_string(), 3.1), ("b".to_string(), 1000.0)]
        );
        assert_eq!(r.values.faults.len(), 2);
        assert!(r.values.faults[0].reason.contains("not a number"));
    }

    #[test]
    fn booleans_are_one_and_zero() {
        let m = map(vec![point("open", "door.open"), point("alarm", "alarm")]);
        let r = read(&m, r#"{"door":{"open":true},"alarm":false}"#);
        assert_eq!(
            r.values.values,
            [("open".to_string(), 1.0), ("alarm".to_string(), 0.0)]
        );
    }

    #[test]
    fn nan_and_infinity_are_never_readings() {
        let m = map(vec![point("a", "a"), point("b", "b"), point("c", "c")]);
        let r = read(&m, r#"{"a":"NaN","b":"inf","c":"-infinity"}"#);
        assert!(r.values.values.is_empty());
        assert_eq!(r.values.faults.len(), 3);
        // JSON itself has no NaN: the payload is not JSON.
        assert_eq!(m.read(br#"{"a":NaN}"#).unwrap_err().kind(), "not_json");
    }

    #[test]
    fn huge_numbers_are_read_when_finite_and_refused_when_not() {
        let mut big = point("big", "big");
        big.scale = 10.0;
        let m = map(vec![point("a", "a"), point("u", "u"), big]);
        let r = read(
            &m,
            r#"{"a":1e308,"u":123456789012345678901234567890,"big":1e308}"#,
        );
        assert_eq!(r.values.values[0].1, 1e308);
        assert_eq!(r.values.values[1].1, 1.2345678901234568e29);
        // 1e309 after scaling: infinity, a fault.
        assert_eq!(r.values.faults[0].point, "big");
        assert!(r.values.faults[0].reason.contains("not finite"));
        // Beyond f64 in the JSON itself: serde_json refuses the document.
        assert_eq!(m.read(br#"{"a":1e400}"#).unwrap_err().kind(), "not_json");
    }

    #[test]
    fn objects_and_arrays_where_a_value_should_be_are_faults() {
        let m = map(vec![point("a", "a"), point("b", "b")]);
        let r = read(&m, r#"{"a":{"v":1},"b":[1]}"#);
        assert_eq!(r.values.faults[0].reason, "field `a` is an object");
        assert_eq!(r.values.faults[1].reason, "field `b` is an array");
    }

    #[test]
    fn payloads_that_are_not_a_json_object_are_rejected_whole() {
        let m = map(vec![point("a", "a")]);
        let kind = |p: &[u8]| m.read(p).unwrap_err().kind();
        assert_eq!(kind(b"smoke!"), "not_json");
        assert_eq!(kind(b""), "not_json");
        assert_eq!(kind(&[0xff, 0xfe, 0x00, 0x81]), "binary");
        assert_eq!(kind(b"[1,2]"), "not_object");
        assert_eq!(kind(b"42"), "not_object");
        assert_eq!(kind(b"\"a\""), "not_object");
        let huge = format!("{{\"a\":\"{}\"}}", "x".repeat(MAX_PAYLOAD_BYTES));
        assert_eq!(kind(huge.as_bytes()), "too_large");
        let deep = "[".repeat(10_000);
        assert_eq!(kind(deep.as_bytes()), "not_json");
    }

    #[test]
    fn a_bad_quality_makes_its_points_faults_and_a_good_one_lets_them_through() {
        let quality = Quality {
            path: JsonPath::parse("status").unwrap(),
            good: vec![
                QualityValue::Text("ok".into()),
                QualityValue::Number(0.0),
                QualityValue::Bool(true),
            ],
        };
        let mut a = point("a", "a");
        a.quality = Some(quality);
        let m = map(vec![a, point("b", "b")]);
        for good in [r#""ok""#, "0", "0.0", "true"] {
            let r = read(&m, &format!(r#"{{"a":1,"b":2,"status":{good}}}"#));
            assert_eq!(r.values.values.len(), 2, "{good}");
        }
        for bad in [r#""OK""#, "1", "false", r#""0""#, "null"] {
            let r = read(&m, &format!(r#"{{"a":1,"b":2,"status":{bad}}}"#));
            assert_eq!(r.values.values, [("b".to_string(), 2.0)], "{bad}");
            assert!(
                r.values.faults[0]
                    .reason
                    .contains("quality field `status` is")
            );
        }
        let r = read(&m, r#"{"a":1,"b":2}"#);
        assert_eq!(
            r.values.faults[0].reason,
            "quality field `status` is missing"
        );
    }

    #[test]
    fn the_sensor_timestamp_is_read_as_ms_or_rfc3339_and_ignored_when_unreadable() {
        let m = SensorMap {
            points: vec![point("a", "a")],
            timestamp: Some(JsonPath::parse("ts").unwrap()),
        };
        let ts = |v: &str| read(&m, &format!(r#"{{"a":1,"ts":{v}}}"#)).sensor_wall_ms;
        assert_eq!(ts("1740787200123"), Some(1_740_787_200_123));
        assert_eq!(ts(r#""2025-03-01T00:00:00Z""#), Some(1_740_787_200_000));
        assert_eq!(
            ts(r#""2025-03-01T08:00:00.123+08:00""#),
            Some(1_740_787_200_123)
        );
        assert_eq!(ts(r#""2025-03-01 00:00:00.5Z""#), Some(1_740_787_200_500));
        assert_eq!(ts(r#""1970-01-01T00:00:00Z""#), Some(0));
        assert_eq!(
            ts(r#""2024-02-29T12:00:00-05:30""#),
            Some(1_709_227_800_000)
        );
        for bad in [
            r#""2025-02-29T00:00:00Z""#,
            r#""2025-03-01T00:00:00""#,
            r#""yesterday""#,
            r#""２０２５-03-01T00:00:00Z""#,
            "-1",
            "1e300",
            "true",
            "null",
        ] {
            assert_eq!(ts(bad), None, "{bad}");
        }
    }

    #[test]
    fn bad_paths_are_refused_with_a_reason() {
        assert!(JsonPath::parse("").is_err());
        assert!(
            JsonPath::parse("a..b")
                .unwrap_err()
                .contains("empty segment")
        );
        assert!(JsonPath::parse(".a").is_err());
        assert!(JsonPath::parse(&vec!["a"; 33].join(".")).is_err());
    }

    proptest::proptest! {
        /// Outside input: whatever bytes arrive on a sensor topic, the decoder answers.
        #[test]
        fn no_payload_makes_the_decoder_panic(payload in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let m = SensorMap {
                points: vec![point("a", "a"), point("b", "b.0.c")],
                timestamp: Some(JsonPath::parse("ts").unwrap()),
            };
            let _ = m.read(&payload);
        }

        /// JSON-shaped input reaches the per-point code too, and never panics there.
        #[test]
        fn no_json_object_makes_the_decoder_panic(
            text in "\\{(\"(a|b|ts|c|0)\":(-?[0-9]{1,30}(\\.[0-9]{1,5})?(e-?[0-9]{1,3})?|\"[^\"\\\\]{0,40}\"|true|false|null|\\[[0-9,]{0,8}\\]|\\{\"c\":[0-9]{1,3}\\}|\\[\\{\"c\":\"[0-9.eE+-]{0,8}\"\\}\\]),?){0,6}\\}"
        ) {
            let m = SensorMap {
                points: vec![point("a", "a"), point("b", "b.0.c")],
                timestamp: Some(JsonPath::parse("ts").unwrap()),
            };
            let _ = m.read(text.as_bytes());
        }

        #[test]
        fn no_timestamp_text_makes_the_parser_panic(s in "\\PC{0,40}") {
            let _ = rfc3339_ms(&s);
        }
    }
}
