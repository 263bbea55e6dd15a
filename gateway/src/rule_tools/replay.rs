//! Replay recorded readings through a site's rules (`shouwang-gateway rules replay`): what
//! would have fired, so a site tries a change to its rules on last month's data before it
//! deploys it.
//!
//! Readings come as the gateway writes them to the time-series store, in line protocol
//! (`shouwang_reading,...,device=D,...,point=P value=V,quality=Q TS`; an export of InfluxDB
//! or VictoriaMetrics, timestamps in ms, s, µs or ns told apart by size), or as CSV with the
//! header `ts_ms,device,point,value` (an empty value: not a good reading). Readings of one
//! device at one time are one poll; they run in time order through the gateway's own
//! [`Watch`] and rule engine. Lines that cannot be read, and readings of devices or points
//! the config does not have, are counted and skipped with the first few named.
//!
//! Only the config's rules are reported: a store holds readings by exception (a point is
//! written when it moves, and at least every 60 s), so the gateway's own communication-loss
//! and point faults, which judge the link, would fire on the gaps of the record and say
//! nothing about the rules.

use std::collections::{BTreeMap, HashMap};

use shouwang_wire::AlarmEvent;

use crate::clock::Stamp;
use crate::config::{Config, DEVICE_FAULTS};
use crate::sources::{PollOutcome, PolledValues};
use crate::watch::Watch;

/// One reading of the record.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    pub ts_ms: i64,
    pub device: String,
    pub point: String,
    /// `None`: not a good reading (it reaches no rule).
    pub value: Option<f64>,
}

/// What a replay found.
#[derive(Debug, Default)]
pub struct Replay {
    /// The rules' events, in time order.
    pub events: Vec<AlarmEvent>,
    pub readings: usize,
    /// Lines that could not be read, with the first few.
    pub unreadable: usize,
    /// Readings of a device or point the config does not have.
    pub unknown: usize,
    /// The first few problems, `line N: why`.
    pub notes: Vec<String>,
}

const NOTES: usize = 10;

/// Read a record: line protocol or CSV (told by the first line that is not blank).
pub fn read(text: &str, replay: &mut Replay) -> Vec<Recorded> {
    let mut out = Vec::new();
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let csv = lines
        .clone()
        .next()
        .is_some_and(|(_, l)| l.trim() == "ts_ms,device,point,value");
    if csv {
        lines.next();
    }
    for (i, line) in lines {
        if line.starts_with('#') {
            continue;
        }
        let parsed = if csv {
            csv_line(line)
        } else {
            match line_protocol(line) {
                Ok(None) => continue,
                Ok(Some(r)) => Ok(r),
                Err(e) => Err(e),
            }
        };
        match parsed {
            Ok(r) => out.push(r),
            Err(why) => {
                replay.unreadable += 1;
                if replay.notes.len() < NOTES {
                    replay.notes.push(format!("line {}: {why}", i + 1));
                }
            }
        }
    }
    out
}

fn csv_line(line: &str) -> Result<Recorded, String> {
    let cells: Vec<&str> = line.split(',').map(str::trim).collect();
    let [ts, device, point, value] = cells.as_slice() else {
        return Err(format!(
            "{} cells; expected ts_ms,device,point,value",
            cells.len()
        ));
    };
    let ts_ms = ts
        .parse::<i64>()
        .map_err(|_| format!("ts_ms {ts:?} is not a whole number of ms"))?;
    let value = if value.is_empty() {
        None
    } else {
        Some(
            value
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| format!("value {value:?} is not a number"))?,
        )
    };
    if device.is_empty() || point.is_empty() {
        return Err("an empty device or point".into());
    }
    Ok(Recorded {
        ts_ms,
        device: device.to_string(),
        point: point.to_string(),
        value,
    })
}

/// Split at `sep` where it is not escaped by a backslash; the parts as written.
fn split_raw(text: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut escaped) = (0, false);
    for (i, c) in text.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            parts.push(&text[start..i]);
            start = i + c.len_utf8();
        }
    }
    parts.push(&text[start..]);
    parts
}

/// A name as line protocol escapes it, read back: `\,`, `\=`, `\ ` and `\\` are the
/// character; any other backslash is itself.
fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\'
            && let Some(&n) = chars.peek()
            && matches!(n, ',' | '=' | ' ' | '\\')
        {
            out.push(n);
            chars.next();
        } else {
            out.push(c);
        }
    }
    out
}

/// The three space-separated parts of a line (measurement and tags, fields, time), minding
/// escaped spaces.
fn sections(line: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut escaped) = (0, false);
    for (i, c) in line.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == ' ' {
            if i > start {
                out.push(&line[start..i]);
            }
            start = i + 1;
        }
    }
    if start < line.len() {
        out.push(&line[start..]);
    }
    out
}

/// One line of line protocol; `Ok(None)` for another measurement.
fn line_protocol(line: &str) -> Result<Option<Recorded>, String> {
    let parts = sections(line.trim());
    let [series, fields, ts] = parts.as_slice() else {
        return Err("not `measurement,tags fields timestamp`".into());
    };
    let mut series = split_raw(series, ',').into_iter();
    if series.next().map(unescape).as_deref() != Some("shouwang_reading") {
        return Ok(None);
    }
    let mut tags: HashMap<String, String> = HashMap::new();
    for tag in series {
        if let [k, v] = split_raw(tag, '=').as_slice() {
            tags.insert(unescape(k), unescape(v));
        }
    }
    let mut value = None;
    let mut quality = None;
    for field in split_raw(fields, ',') {
        let Some((k, v)) = field.split_once('=') else {
            return Err(format!("field {field:?} has no `=`"));
        };
        let v = v.trim_end_matches('i');
        let number = v.parse::<f64>().ok().filter(|n| n.is_finite());
        match k {
            "value" => value = Some(number.ok_or_else(|| format!("value {v:?} is not a number"))?),
            "quality" => quality = number,
            _ => {}
        }
    }
    let ts: i64 = ts
        .parse()
        .map_err(|_| format!("timestamp {ts:?} is not a whole number"))?;
    // ms since 2001 are 13 digits; s 10, µs 16, ns 19.
    let ts_ms = match ts.unsigned_abs() {
        t if t >= 100_000_000_000_000_000 => ts / 1_000_000,
        t if t >= 100_000_000_000_000 => ts / 1_000,
        t if t >= 100_000_000_000 => ts,
        _ => ts.saturating_mul(1000),
    };
    let (Some(device), Some(point)) = (tags.remove("device"), tags.remove("point")) else {
        return Err("no `device` or `point` tag".into());
    };
    // A reading of any quality but good (0) has no value for the rules.
    let value = value.filter(|_| quality.is_none_or(|q| q == 0.0));
    Ok(Some(Recorded {
        ts_ms,
        device,
        point,
        value,
    }))
}

/// Run `record` through `config`'s rules.
pub fn run(config: &Config, mut record: Vec<Recorded>, replay: &mut Replay) -> Result<(), String> {
    let mut watch = Watch::new(config, "replay".into(), 1).map_err(|errors| {
        errors
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("; ")
    })?;
    let index: HashMap<&str, usize> = config
        .devices
        .iter()
        .enumerate()
        .map(|(i, d)| (d.id.as_str(), i))
        .collect();
    record.sort_by_key(|r| r.ts_ms);
    let start = record.first().map_or(0, |r| r.ts_ms);
    // Readings of one device at one time are one poll.
    let mut polls: BTreeMap<(i64, usize), PolledValues> = BTreeMap::new();
    for r in record {
        replay.readings += 1;
        let Some(&d) = index.get(r.device.as_str()) else {
            replay.unknown += 1;
            if replay.notes.len() < NOTES {
                replay
                    .notes
                    .push(format!("device {:?} is not in the config", r.device));
            }
            continue;
        };
        if !config.devices[d].points.iter().any(|p| p.name == r.point) {
            replay.unknown += 1;
            if replay.notes.len() < NOTES {
                replay
                    .notes
                    .push(format!("device {:?} has no point {:?}", r.device, r.point));
            }
            continue;
        }
        if let Some(v) = r.value {
            polls
                .entry((r.ts_ms, d))
                .or_default()
                .values
                .push((r.point, v));
        }
    }
    let own = |e: &AlarmEvent| DEVICE_FAULTS.iter().any(|(rule, _)| *rule == e.rule);
    for ((ts_ms, device), values) in polls {
        let at = Stamp {
            mono_ms: ts_ms - start,
            wall_ms: ts_ms,
        };
        // Delays that run out between two readings do so at their own time, as the
        // gateway's ticks would have them, not at the next reading's.
        let mut events = Vec::new();
        let mut last = i64::MIN;
        while let Some(due) = watch
            .next_deadline_ms()
            .filter(|d| *d <= at.mono_ms && *d > last)
        {
            last = due;
            events.extend(watch.on_tick(Stamp {
                mono_ms: due,
                wall_ms: start + due,
            }));
        }
        events.extend(watch.on_tick(at));
        events.extend(
            watch
                .on_poll(&PollOutcome {
                    device,
                    at,
                    result: Ok(values),
                })
                .events,
        );
        replay.events.extend(events.into_iter().filter(|e| !own(e)));
    }
    Ok(())
}

/// `ms` since the Unix epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn utc(ms: i64) -> String {
    let (days, rem) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
[gateway]
id = "gw-b1"
community = "riverside"
data_dir = "/nonexistent"
rule_packs = ["smoke"]

[[devices]]
id = "smoke-B1-12-03"
profile = "smoke-detector"
building = "B1"
transport = "tcp"
address = "127.0.0.1:1"
"#;

    #[test]
    fn line_protocol_as_the_gateway_writes_it_is_read_back() {
        let mut replay = Replay::default();
        let text = "shouwang_reading,building=B1,community=riverside,device=smoke-B1-12-03,device_kind=smoke,gateway=gw-b1,point=obscuration value=3.1,quality=0 1767225600123\n\
                    shouwang_reading,device=pressure-1,point=current quality=4 1767225600\n\
                    cpu,host=a usage=3 1767225600123\n\
                    shouwang_reading,device=a\\ b,point=p\\,q value=1 1767225600123000000\n\
                    garbage\n";
        let got = read(text, &mut replay);
        assert_eq!(got.len(), 3, "{got:?} {:?}", replay.notes);
        assert_eq!(
            got[0],
            Recorded {
                ts_ms: 1_767_225_600_123,
                device: "smoke-B1-12-03".into(),
                point: "obscuration".into(),
                value: Some(3.1)
            }
        );
        assert_eq!((got[1].ts_ms, got[1].value), (1_767_225_600_000, None));
        assert_eq!(
            (got[2].device.as_str(), got[2].point.as_str()),
            ("a b", "p,q")
        );
        assert_eq!(got[2].ts_ms, 1_767_225_600_123);
        assert_eq!(replay.unreadable, 1);
        assert!(
            replay.notes[0].starts_with("line 5: "),
            "{:?}",
            replay.notes
        );
    }

    #[test]
    fn a_record_replayed_says_what_the_rules_would_have_raised_and_when() {
        let config = Config::from_toml_str(CONFIG, "t").unwrap();
        let mut replay = Replay::default();
        let text = "ts_ms,device,point,value\n\
                    1000,smoke-B1-12-03,obscuration,0.2\n\
                    61000,smoke-B1-12-03,obscuration,3.0\n\
                    62000,smoke-B1-12-03,obscuration,3.2\n\
                    63500,smoke-B1-12-03,obscuration,3.3\n\
                    63500,smoke-B1-12-03,alarm,1\n\
                    70000,smoke-B1-12-03,obscuration,\n\
                    70000,smoke-B1-99-01,obscuration,4\n\
                    200000,smoke-B1-12-03,obscuration,0.1\n";
        let record = read(text, &mut replay);
        run(&config, record, &mut replay).unwrap();
        let fired: Vec<(i64, &str, bool)> = replay
            .events
            .iter()
            .map(|e| (e.ts_ms, e.rule.as_str(), e.active))
            .collect();
        // The pre-alarm when its 2 s on-delay ran out (at 63 s, between two readings), the
        // fire bit at once; no comm_lost for the 137 s gap of the record.
        assert_eq!(
            fired,
            [
                (63_000, "smoke-high", true),
                (63_500, "smoke-alarm", true),
                (200_000, "smoke-high", false)
            ],
            "{:?}",
            replay.events
        );
        assert_eq!(replay.unknown, 1);
        assert_eq!(replay.readings, 8);
    }

    #[test]
    fn csv_mistakes_are_named_by_line() {
        let mut replay = Replay::default();
        let text = "ts_ms,device,point,value\n1,a,b\nx,a,b,1\n2,a,b,NaN\n3,a,b,1\n";
        let got = read(text, &mut replay);
        assert_eq!(got.len(), 1);
        assert_eq!(replay.unreadable, 3);
        assert!(
            replay.notes[0].starts_with("line 2: 3 cells"),
            "{:?}",
            replay.notes
        );
        assert!(
            replay.notes[1].starts_with("line 3: ts_ms \"x\""),
            "{:?}",
            replay.notes
        );
        assert!(
            replay.notes[2].starts_with("line 4: value \"NaN\""),
            "{:?}",
            replay.notes
        );
    }

    #[test]
    fn times_are_written_in_utc() {
        assert_eq!(utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc(1_767_225_600_123), "2026-01-01T00:00:00.123Z");
        assert_eq!(
            utc(951_782_400_000 + 86_399_999),
            "2000-02-29T23:59:59.999Z"
        );
        assert_eq!(utc(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn what_the_gateways_encoder_writes_replays_as_it_was_read() {
        use shouwang_wire::{Place, PointValue, Quality, ReadingBatch};
        let batch = ReadingBatch {
            schema: ReadingBatch::SCHEMA,
            gateway: "gw b1".into(),
            device: "smoke,B1=12".into(),
            device_kind: "smoke".into(),
            place: Place {
                community: "Riverside Gardens, Phase 2".into(),
                building: "B1\\F2".into(),
                ..Place::default()
            },
            ts_ms: 1_767_225_600_123,
            points: vec![
                PointValue::good("obscuration", 3.25, None),
                PointValue {
                    point: "chamber".into(),
                    value: None,
                    engineering_unit: None,
                    quality: Quality::WireBreak,
                },
            ],
        };
        let text = crate::sinks::influx::encode::encode_batch(&batch).text;
        let mut replay = Replay::default();
        let got = read(&text, &mut replay);
        assert_eq!(replay.unreadable, 0, "{:?}\n{text}", replay.notes);
        assert_eq!(
            got,
            [
                Recorded {
                    ts_ms: 1_767_225_600_123,
                    device: "smoke,B1=12".into(),
                    point: "obscuration".into(),
                    value: Some(3.25)
                },
                Recorded {
                    ts_ms: 1_767_225_600_123,
                    device: "smoke,B1=12".into(),
                    point: "chamber".into(),
                    value: None
                }
            ]
        );
    }

    proptest::proptest! {
        /// Outside input: any record, line protocol or CSV, escapes and multibyte text
        /// included, is read or its lines counted unreadable, never a panic; and what is
        /// read replays.
        #[test]
        fn no_record_makes_the_reader_or_the_replay_panic(
            csv in proptest::bool::ANY,
            lines in proptest::collection::vec("[\\PC\\\\,= ]{0,60}", 0..20)
        ) {
            let mut text = if csv { "ts_ms,device,point,value\n".to_string() } else { String::new() };
            for l in &lines {
                text.push_str(l);
                text.push('\n');
            }
            let mut replay = Replay::default();
            let record = read(&text, &mut replay);
            proptest::prop_assert_eq!(record.len() + replay.unreadable <= lines.len(), true);
            let config = Config::from_toml_str(CONFIG, "t").unwrap();
            proptest::prop_assert!(run(&config, record, &mut replay).is_ok());
        }
    }
}
