//! Reconciling the board with a gateway's [`Snapshot`]: its statement of every alarm it has,
//! sent after its first poll cycle since it started and whenever the console asks for a
//! resync.
//!
//! Each part's events are stored like any event as they arrive (duplicates dropped by
//! `event_id`, order by `(boot, seq)`). Once every part of one snapshot is in
//! ([`Assemblies`]), the console looks at the alarms of that gateway it still holds as not
//! normal, from before the snapshot's position:
//! - an alarm the snapshot names with an event is already right (that event was applied);
//! - an alarm it names as quiet (the gateway holds no event for it: its saved state was
//!   lost, and its first poll found the condition clear) is restated normal;
//! - an alarm it does not name at all is no longer in the gateway's config (its device or
//!   rule was removed) and leaves the board.
//!
//! Both write an event of the console's (see [`reconciled_event`]) so the history says why
//! the alarm left the board. An alarm with an event newer than the snapshot is never
//! touched.

use std::collections::{BTreeSet, HashMap, HashSet};

use shouwang_wire::{AlarmEvent, AlarmState, EventKey, Snapshot, TransitionKind};

/// Snapshots being assembled are kept for at most this many gateways; a flood of forged
/// gateway names cannot grow the console without bound.
pub const MAX_ASSEMBLING: usize = 10_000;
/// The most alarm ids one snapshot may name.
pub const MAX_NAMED: usize = 200_000;

/// One gateway's snapshot, once all its parts are in.
#[derive(Debug, Clone, PartialEq)]
pub struct Complete {
    pub position: EventKey,
    /// Alarms named with an event.
    pub with_event: HashSet<String>,
    /// Alarms named as quiet.
    pub quiet: HashSet<String>,
}

impl Complete {
    /// What to do with an alarm of this gateway the console holds in `state` as of `key`:
    /// `Some(reason)` when it must be restated normal.
    pub fn verdict(&self, alarm_id: &str, state: AlarmState, key: EventKey) -> Option<Reason> {
        if state == AlarmState::Normal || key >= self.position || self.with_event.contains(alarm_id)
        {
            return None;
        }
        if self.quiet.contains(alarm_id) {
            Some(Reason::Quiet)
        } else {
            Some(Reason::Removed)
        }
    }
}

/// Why the console restates an alarm normal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Quiet,
    Removed,
}

impl Reason {
    fn note(self) -> &'static str {
        match self {
            Reason::Quiet => {
                "restated normal by the gateway: it restarted without its saved alarm state and found the condition clear"
            }
            Reason::Removed => "removed from the gateway's configuration",
        }
    }
}

struct Assembly {
    snapshot_id: String,
    parts: u32,
    seen: BTreeSet<u32>,
    position: EventKey,
    with_event: HashSet<String>,
    quiet: HashSet<String>,
}

/// Snapshots being assembled, one per `(community, gateway)`: a new `snapshot_id` replaces
/// the one in progress.
#[derive(Default)]
pub struct Assemblies {
    by_gateway: HashMap<(String, String), Assembly>,
}

/// Why a part was not taken.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PartError {
    #[error("snapshot part {part} of {parts} is not a valid part number (1..={max})", max = Snapshot::MAX_PARTS)]
    PartNumber { part: u32, parts: u32 },
    #[error("snapshot names more than {MAX_NAMED} alarms")]
    TooMany,
    #[error("snapshots of more than {MAX_ASSEMBLING} gateways are being assembled")]
    TooManyGateways,
}

impl Assemblies {
    /// Take one part. Returns the whole snapshot when this part completed it.
    pub fn add(
        &mut self,
        community: &str,
        gateway: &str,
        part: &Snapshot,
    ) -> Result<Option<Complete>, PartError> {
        if !part.part_ok() {
            return Err(PartError::PartNumber {
                part: part.part,
                parts: part.parts,
            });
        }
        let key = (community.to_string(), gateway.to_string());
        if !self.by_gateway.contains_key(&key) && self.by_gateway.len() >= MAX_ASSEMBLING {
            return Err(PartError::TooManyGateways);
        }
        let assembly = self
            .by_gateway
            .entry(key.clone())
            .or_insert_with(|| Assembly {
                snapshot_id: String::new(),
                parts: 0,
                seen: BTreeSet::new(),
                position: EventKey { boot: 0, seq: 0 },
                with_event: HashSet::new(),
                quiet: HashSet::new(),
            });
        if assembly.snapshot_id != part.snapshot_id || assembly.parts != part.parts {
            *assembly = Assembly {
                snapshot_id: part.snapshot_id.clone(),
                parts: part.parts,
                seen: BTreeSet::new(),
                position: EventKey {
                    boot: part.boot,
                    seq: part.seq,
                },
                with_event: HashSet::new(),
                quiet: HashSet::new(),
            };
        }
        let named = assembly.with_event.len() + assembly.quiet.len();
        if named + part.events.len() + part.quiet.len() > MAX_NAMED {
            self.by_gateway.remove(&key);
            return Err(PartError::TooMany);
        }
        assembly.seen.insert(part.part);
        assembly
            .with_event
            .extend(part.events.iter().map(|e| e.alarm_id.clone()));
        assembly.quiet.extend(part.quiet.iter().cloned());
        if assembly.seen.len() < assembly.parts as usize {
            return Ok(None);
        }
        let done = self.by_gateway.remove(&key).map(|a| Complete {
            position: a.position,
            with_event: a.with_event,
            quiet: a.quiet,
        });
        Ok(done)
    }
}

/// The console's event restating `current` normal at the snapshot's `position`.
pub fn reconciled_event(
    current: &AlarmEvent,
    reason: Reason,
    position: EventKey,
    now_ms: i64,
) -> AlarmEvent {
    let mut event = current.clone();
    event.event_id = uuid::Uuid::now_v7().to_string();
    event.boot = position.boot;
    event.seq = position.seq;
    event.transition = TransitionKind::Cleared;
    event.state = AlarmState::Normal;
    event.active = false;
    event.value = None;
    event.operator = None;
    event.ts_ms = now_ms;
    event.message = format!("{} ({})", current.message, reason.note());
    event
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn event(alarm: &str, seq: u64) -> AlarmEvent {
        AlarmEvent::example(alarm, 1, seq)
    }

    fn parts(id: &str, events: Vec<AlarmEvent>, quiet: Vec<String>) -> Vec<Snapshot> {
        Snapshot::split("g", id, EventKey { boot: 2, seq: 5 }, events, quiet, 0, 700)
    }

    #[test]
    fn a_snapshot_is_complete_only_when_every_part_is_in_whatever_their_order() {
        let mut all = parts(
            "s1",
            vec![event("c:g:a:r", 1), event("c:g:b:r", 2)],
            vec!["c:g:q:r".into()],
        );
        assert!(all.len() >= 2, "{} parts", all.len());
        all.reverse();
        let mut a = Assemblies::default();
        let last = all.pop().unwrap();
        for p in &all {
            assert_eq!(a.add("c", "g", p).unwrap(), None);
        }
        // A repeated part does not complete it early.
        assert_eq!(a.add("c", "g", &all[0]).unwrap(), None);
        let done = a.add("c", "g", &last).unwrap().unwrap();
        assert_eq!(done.position, EventKey { boot: 2, seq: 5 });
        assert!(done.with_event.contains("c:g:a:r"));
        assert!(done.quiet.contains("c:g:q:r"));
    }

    #[test]
    fn a_new_snapshot_replaces_one_left_half_assembled() {
        let mut a = Assemblies::default();
        let old = parts(
            "old",
            vec![event("c:g:a:r", 1), event("c:g:b:r", 2)],
            vec![],
        );
        assert_eq!(a.add("c", "g", &old[0]).unwrap(), None);
        let new = parts("new", vec![], vec!["c:g:a:r".into()]);
        assert_eq!(new.len(), 1);
        let done = a.add("c", "g", &new[0]).unwrap().unwrap();
        assert!(done.with_event.is_empty());
        assert!(done.quiet.contains("c:g:a:r"));
    }

    #[test]
    fn a_forged_part_number_is_refused_by_name() {
        let mut a = Assemblies::default();
        let mut p = parts("s", vec![], vec![]).remove(0);
        p.parts = 100_000;
        let err = a.add("c", "g", &p).unwrap_err();
        assert!(err.to_string().contains("100000"), "{err}");
    }

    #[test]
    fn only_older_alarms_not_named_with_an_event_are_restated_and_why_is_said() {
        let done = Complete {
            position: EventKey { boot: 2, seq: 5 },
            with_event: ["c:g:a:r".to_string()].into(),
            quiet: ["c:g:q:r".to_string()].into(),
        };
        let old = EventKey { boot: 1, seq: 9 };
        let raised = AlarmState::Unacknowledged;
        assert_eq!(done.verdict("c:g:a:r", raised, old), None);
        assert_eq!(done.verdict("c:g:q:r", raised, old), Some(Reason::Quiet));
        assert_eq!(
            done.verdict("c:g:gone:r", raised, old),
            Some(Reason::Removed)
        );
        assert_eq!(done.verdict("c:g:gone:r", AlarmState::Normal, old), None);
        // Newer than the snapshot: not touched.
        assert_eq!(
            done.verdict("c:g:gone:r", raised, EventKey { boot: 2, seq: 6 }),
            None
        );

        let current = event("c:g:gone:r", 3);
        let restated = reconciled_event(&current, Reason::Removed, done.position, 77);
        assert_eq!(restated.state, AlarmState::Normal);
        assert!(!restated.active);
        assert_eq!(restated.key(), done.position);
        assert_ne!(restated.event_id, current.event_id);
        assert!(
            restated.message.contains("removed from the gateway"),
            "{}",
            restated.message
        );
    }
}
