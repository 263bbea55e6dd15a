//! Each alarm's latest event, kept on disk so that a restarted gateway resumes every alarm
//! where it was: a raised alarm is not raised again, an acknowledged one whose condition
//! cleared meanwhile returns to normal on the first poll, and an alarm awaiting its
//! acknowledgement can still be acknowledged.
//!
//! The file `<data_dir>/alarm-state` is one header line, then one [`AlarmEvent`] as JSON
//! per line, the latest of each alarm (by `(boot, seq)`). It is replaced whole
//! ([`crate::clock::write_atomically`]: a temporary file, fsync, rename, fsync of the
//! directory), so a power cut leaves the old file or the new one, never a mix.
//!
//! The [`crate::sinks::journal`] owns it: it sees every event, writes the file at most once per
//! [`crate::sinks::journal::STATE_SAVE_EVERY`] while something changed, and lets the console's
//! receipts delete events from the alarm queue only once the file holds them. So after a
//! crash the state is the file plus the events still in the queue ([`merge`]), and nothing
//! the console confirmed is missing from both.

use std::collections::HashMap;
use std::path::Path;

use shouwang_wire::{AlarmEvent, Message};

/// The file's name under the data directory.
pub const FILE: &str = "alarm-state";
/// The first line of the file: its format and version.
const HEADER: &str = r#"{"shouwang_alarm_state":1}"#;

/// What [`load`] found.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The latest event of each alarm, as saved.
    pub events: Vec<AlarmEvent>,
    /// Lines that did not decode (skipped): a damaged file loses those alarms' state only.
    pub bad_lines: usize,
}

/// Why the file could not be used at all.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} does not start with {HEADER} (another program's file, or a newer format)")]
    Header { path: String },
}

/// Read the saved state. A missing file is an empty state (a new gateway).
pub fn load(data_dir: &Path) -> Result<Loaded, StateError> {
    let path = data_dir.join(FILE);
    let text = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Loaded::default()),
        Err(source) => {
            return Err(StateError::Io {
                path: path.display().to_string(),
                source,
            });
        }
    };
    let mut lines = text.split(|&b| b == b'\n');
    if lines.next() != Some(HEADER.as_bytes()) {
        return Err(StateError::Header {
            path: path.display().to_string(),
        });
    }
    let mut loaded = Loaded::default();
    for line in lines.filter(|l| !l.is_empty()) {
        match AlarmEvent::decode(line) {
            Ok(event) => loaded.events.push(event),
            Err(_) => loaded.bad_lines += 1,
        }
    }
    Ok(loaded)
}

/// Replace the saved state with these events (one per alarm).
pub fn save<'a>(
    data_dir: &Path,
    events: impl Iterator<Item = &'a AlarmEvent>,
) -> std::io::Result<()> {
    let mut text = Vec::with_capacity(4096);
    text.extend_from_slice(HEADER.as_bytes());
    text.push(b'\n');
    for event in events {
        text.extend_from_slice(&event.encode());
        text.push(b'\n');
    }
    crate::clock::write_atomically(&data_dir.join(FILE), &text)
}

/// Keep `event` as its alarm's latest if it is newer (by `(boot, seq)`) than the one held.
/// Returns whether it was kept.
pub fn merge(latest: &mut HashMap<String, AlarmEvent>, event: AlarmEvent) -> bool {
    match latest.get(&event.alarm_id) {
        Some(held) if held.key() >= event.key() => false,
        _ => {
            latest.insert(event.alarm_id.clone(), event);
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shouwang_wire::AlarmState;

    fn event(alarm: &str, boot: u64, seq: u64, state: AlarmState) -> AlarmEvent {
        let mut e = AlarmEvent::example(alarm, boot, seq);
        e.state = state;
        e
    }

    #[test]
    fn saved_state_loads_back_and_a_missing_file_is_an_empty_state() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().events.is_empty());
        let events = [
            event("c:g:a:r", 1, 4, AlarmState::Acknowledged),
            event("c:g:b:r", 2, 1, AlarmState::ReturnedUnacknowledged),
        ];
        save(dir.path(), events.iter()).unwrap();
        let loaded = load(dir.path()).unwrap();
        assert_eq!(loaded.events, events);
        assert_eq!(loaded.bad_lines, 0);
    }

    #[test]
    fn a_damaged_line_loses_only_its_alarm_and_a_foreign_file_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let good = event("c:g:a:r", 1, 4, AlarmState::Acknowledged);
        let mut text = format!("{HEADER}\n").into_bytes();
        text.extend_from_slice(b"{\"schema\":1,\"event_id\":\x00garbage\n");
        text.extend_from_slice(&good.encode());
        text.push(b'\n');
        std::fs::write(dir.path().join(FILE), &text).unwrap();
        let loaded = load(dir.path()).unwrap();
        assert_eq!(loaded.events, [good]);
        assert_eq!(loaded.bad_lines, 1);

        std::fs::write(dir.path().join(FILE), b"hello\n").unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("alarm-state"), "{err}");
    }

    #[test]
    fn a_state_saved_before_places_had_entrances_loads_with_its_unit_as_the_room() {
        // A line as a gateway writing version 1 alarm events saved it: an upgraded gateway
        // resumes the alarm where it was.
        let dir = tempfile::tempdir().unwrap();
        let line = r#"{"schema":1,"event_id":"b-4","boot":1,"seq":4,"alarm_id":"c:g:a:r","gateway":"g","device":"a","device_kind":"smoke","point":null,"rule":"r","class":"alarm","priority":"high","transition":"acknowledged","state":"acknowledged","active":true,"value":3.0,"engineering_unit":null,"place":{"community":"c","building":"B1","floor":"12","unit":"03"},"message":"Smoke","ts_ms":0,"operator":"li"}"#;
        std::fs::write(dir.path().join(FILE), format!("{HEADER}\n{line}\n")).unwrap();
        let loaded = load(dir.path()).unwrap();
        assert_eq!(loaded.bad_lines, 0);
        let [event] = loaded.events.as_slice() else {
            panic!("{loaded:?}")
        };
        assert_eq!(
            (event.state, event.place.room.as_str()),
            (AlarmState::Acknowledged, "03")
        );
        assert_eq!(event.schema, AlarmEvent::SCHEMA);
    }

    #[test]
    fn merging_keeps_the_latest_event_by_boot_then_sequence() {
        let mut latest = HashMap::new();
        assert!(merge(
            &mut latest,
            event("a", 1, 9, AlarmState::Unacknowledged)
        ));
        assert!(merge(
            &mut latest,
            event("a", 2, 1, AlarmState::Acknowledged)
        ));
        assert!(!merge(&mut latest, event("a", 1, 10, AlarmState::Normal)));
        assert!(!merge(&mut latest, event("a", 2, 1, AlarmState::Normal)));
        assert_eq!(latest["a"].state, AlarmState::Acknowledged);
    }
}
