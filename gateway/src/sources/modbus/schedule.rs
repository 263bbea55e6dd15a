//! The poll schedule of one link: which device to read next, and when. Pure: the time is an
//! argument (milliseconds on the link's monotonic clock), so every timing is tested without
//! sleeping.
//!
//! A link carries one request at a time. Its owner (`link.rs`) asks [`Schedule::next`]
//! what to do, polls the device it names, and tells [`Schedule::done`] how that went.
//!
//! # Rules
//! - **Spread.** Devices with the same poll interval start spread evenly over it (the k-th
//!   of n at `k * interval / n`), so a bus of 30 detectors at 1 s is a request every 33 ms,
//!   not 30 requests at the top of each second.
//! - **Due.** A device is due at its due time; after a poll its next due time is one
//!   interval later than the last (so it keeps its phase), or now if the link fell behind.
//! - **Priority.** Of the devices due, the one of the most urgent [`PollPriority`] goes
//!   first, then the one due longest, then the first in config order. Life-safety devices
//!   are never made to wait behind routine ones; routine ones wait only while more urgent
//!   ones are due (the config check refuses a plan whose polls do not fit the bus, so that
//!   is a burst, not starvation).
//! - **Quarantine.** A device whose poll failed as a whole (no answer, a garbled one) is
//!   tried again at once after its first failure (one lost answer may be a glitch, and a
//!   device that answers every other request must not drift into communication loss), then
//!   `2^(k-2)` intervals later after the k-th failure in a row (k >= 2), never more than the
//!   cap (`quarantine_max_s`, or its interval if that is longer). One good poll ends it. A
//!   dead device then costs the bus one timeout per cap, and every other device keeps its
//!   rate.
//!
//! # Invariants (the property test checks them against a reference model)
//! - [`Schedule::next`] names only a device that is due, and among the due ones the one the
//!   rules above pick.
//! - A device that keeps answering is never quarantined; one that keeps failing is polled
//!   at least once per cap.

use crate::config::PollPriority;

/// One device on the link, as the schedule sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub interval_ms: u64,
    pub priority: PollPriority,
}

/// What the link's owner should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Poll this device (an index into the slots given to [`Schedule::new`]).
    Poll(usize),
    /// Nothing is due before this time.
    WaitUntil(u64),
}

#[derive(Debug, Clone)]
struct Entry {
    slot: Slot,
    due_ms: u64,
    /// Failed polls in a row.
    failures: u32,
}

/// The schedule of one link's devices.
#[derive(Debug, Clone)]
pub struct Schedule {
    entries: Vec<Entry>,
    quarantine_max_ms: u64,
}

impl Schedule {
    /// A schedule starting at `now_ms`, each device's first poll spread over its interval.
    pub fn new(slots: &[Slot], now_ms: u64, quarantine_max_ms: u64) -> Schedule {
        let mut entries = Vec::with_capacity(slots.len());
        for (i, slot) in slots.iter().enumerate() {
            let same: Vec<usize> = (0..slots.len())
                .filter(|&j| slots[j].interval_ms == slot.interval_ms)
                .collect();
            let rank = same.iter().position(|&j| j == i).unwrap_or(0) as u64;
            let offset = slot.interval_ms.saturating_mul(rank) / same.len().max(1) as u64;
            entries.push(Entry {
                slot: *slot,
                due_ms: now_ms.saturating_add(offset),
                failures: 0,
            });
        }
        Schedule {
            entries,
            quarantine_max_ms,
        }
    }

    /// What to do at `now_ms`.
    pub fn next(&self, now_ms: u64) -> Next {
        let best = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.due_ms <= now_ms)
            .min_by_key(|(i, e)| (e.slot.priority, e.due_ms, *i));
        match best {
            Some((i, _)) => Next::Poll(i),
            None => Next::WaitUntil(
                self.entries
                    .iter()
                    .map(|e| e.due_ms)
                    .min()
                    .unwrap_or(now_ms.saturating_add(1000)),
            ),
        }
    }

    /// Device `i` was polled, finishing at `now_ms`; `answered` is whether the link worked
    /// (a Modbus exception is an answer).
    pub fn done(&mut self, i: usize, answered: bool, now_ms: u64) {
        let max = self.quarantine_max_ms;
        let Some(e) = self.entries.get_mut(i) else {
            return;
        };
        let interval = e.slot.interval_ms;
        if answered {
            e.failures = 0;
            e.due_ms = e.due_ms.saturating_add(interval).max(now_ms);
        } else {
            e.failures = e.failures.saturating_add(1);
            e.due_ms = now_ms.saturating_add(backoff(interval, e.failures, max));
        }
    }

    /// Whether device `i` is quarantined (its last poll failed).
    pub fn quarantined(&self, i: usize) -> bool {
        self.entries.get(i).is_some_and(|e| e.failures > 0)
    }

    /// Device `i`'s next due time.
    pub fn due_ms(&self, i: usize) -> Option<u64> {
        self.entries.get(i).map(|e| e.due_ms)
    }
}

/// How long after its `failures`-th failure in a row a device is polled again.
pub fn backoff(interval_ms: u64, failures: u32, max_ms: u64) -> u64 {
    if failures <= 1 {
        return 0;
    }
    let doublings = failures.saturating_sub(2).min(32);
    interval_ms
        .saturating_mul(1u64 << doublings)
        .min(max_ms.max(interval_ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIFE: PollPriority = PollPriority::LifeSafety;
    const ROUTINE: PollPriority = PollPriority::Routine;

    fn slot(interval_ms: u64, priority: PollPriority) -> Slot {
        Slot {
            interval_ms,
            priority,
        }
    }

    #[test]
    fn devices_of_one_interval_start_spread_over_it() {
        let s = Schedule::new(&[slot(1000, ROUTINE); 4], 0, 30_000);
        let dues: Vec<u64> = (0..4).map(|i| s.due_ms(i).unwrap()).collect();
        assert_eq!(dues, vec![0, 250, 500, 750]);
        let mut s = s;
        assert_eq!(s.next(0), Next::Poll(0));
        s.done(0, true, 1);
        assert_eq!(s.next(1), Next::WaitUntil(250));
    }

    #[test]
    fn a_life_safety_device_goes_before_a_routine_one_due_longer() {
        let mut s = Schedule::new(&[slot(100, ROUTINE), slot(1000, LIFE)], 0, 30_000);
        // Both due at 0: the detector first.
        assert_eq!(s.next(0), Next::Poll(1));
        s.done(1, true, 5);
        assert_eq!(s.next(5), Next::Poll(0));
    }

    #[test]
    fn a_device_keeps_its_phase_and_catches_up_only_to_now() {
        let mut s = Schedule::new(&[slot(100, ROUTINE)], 0, 30_000);
        s.done(0, true, 30);
        assert_eq!(s.due_ms(0), Some(100));
        // A poll that ended late: due again now, not in a burst of missed polls.
        s.done(0, true, 450);
        assert_eq!(s.due_ms(0), Some(450));
    }

    #[test]
    fn a_dead_device_backs_off_to_the_cap_and_one_answer_ends_it() {
        let mut s = Schedule::new(&[slot(1000, ROUTINE)], 0, 30_000);
        let mut now = 0;
        let mut gaps = Vec::new();
        for _ in 0..8 {
            s.done(0, false, now);
            let due = s.due_ms(0).unwrap();
            gaps.push(due - now);
            now = due;
        }
        assert_eq!(
            gaps,
            vec![0, 1000, 2000, 4000, 8000, 16_000, 30_000, 30_000]
        );
        assert!(s.quarantined(0));
        s.done(0, true, now);
        assert!(!s.quarantined(0));
        assert_eq!(s.due_ms(0), Some(now + 1000));
    }

    #[test]
    fn the_cap_never_makes_a_slow_device_poll_faster_than_its_interval() {
        assert_eq!(backoff(60_000, 5, 30_000), 60_000);
        assert_eq!(backoff(1000, u32::MAX, 30_000), 30_000);
    }

    /// The reference model: what `next` must pick, by brute force.
    fn model_pick(entries: &[(Slot, u64)], now: u64) -> Option<usize> {
        let mut due: Vec<usize> = (0..entries.len())
            .filter(|&i| entries[i].1 <= now)
            .collect();
        due.sort_by(|&a, &b| {
            let (sa, da) = entries[a];
            let (sb, db) = entries[b];
            sa.priority
                .cmp(&sb.priority)
                .then(da.cmp(&db))
                .then(a.cmp(&b))
        });
        due.first().copied()
    }

    fn any_priority() -> impl Strategy<Value = PollPriority> {
        prop_oneof![
            Just(PollPriority::LifeSafety),
            Just(PollPriority::Supervisory),
            Just(PollPriority::Routine)
        ]
    }

    proptest! {
        /// Run a link for a while with devices that answer or not at random: every pick
        /// is the model's, and no device that keeps failing waits longer than the cap.
        #[test]
        fn the_schedule_picks_what_the_model_picks(
            slots in proptest::collection::vec(
                (prop_oneof![Just(100u64), Just(250), Just(1000), Just(5000)], any_priority()),
                1..12,
            ),
            answers in proptest::collection::vec(any::<bool>(), 1..300),
            poll_ms in 1u64..60,
        ) {
            let slots: Vec<Slot> = slots.into_iter().map(|(i, p)| slot(i, p)).collect();
            let cap = 3000;
            let mut s = Schedule::new(&slots, 0, cap);
            let mut now = 0u64;
            let mut last_poll = vec![0u64; slots.len()];
            for answered in answers {
                let entries: Vec<(Slot, u64)> =
                    (0..slots.len()).map(|i| (slots[i], s.due_ms(i).unwrap())).collect();
                match s.next(now) {
                    Next::Poll(i) => {
                        prop_assert_eq!(Some(i), model_pick(&entries, now));
                        now += poll_ms;
                        s.done(i, answered, now);
                        let due = s.due_ms(i).unwrap();
                        prop_assert!(due >= now);
                        prop_assert!(due - now <= cap.max(slots[i].interval_ms));
                        last_poll[i] = now;
                    }
                    Next::WaitUntil(t) => {
                        prop_assert_eq!(model_pick(&entries, now), None);
                        prop_assert!(t > now);
                        now = t;
                    }
                }
            }
        }
    }
}
