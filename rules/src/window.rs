//! The lowest value of a sliding time window of readings, kept in a bounded monotonic deque:
//! what [`Condition::RiseWithin`](crate::Condition::RiseWithin) measures a rise from, and,
//! fed the negated values, what [`Condition::FallWithin`](crate::Condition::FallWithin)
//! measures a fall from (the highest value of `v` is minus the lowest of `-v`, exactly).
//!
//! # How
//!
//! The deque holds `(ts_ms, value)` pairs. A new reading first drops every pair at the back
//! whose value is not below its own (none of them can be the lowest again: the new reading is
//! as low and stays in the window longer), then goes to the back; pairs older than the window
//! leave at the front. Each reading enters once and leaves at most once: amortised O(1) per
//! reading, and the lowest value of the window is always the front.
//!
//! # Invariants (after every [`MinWindow::push`])
//!
//! - From front to back, timestamps strictly increase and values strictly increase.
//! - Every pair's `ts_ms` is within the window: `ts_ms >= now - window_ms` (a reading exactly
//!   `window_ms` old is still in it).
//! - At most one pair per *bucket*: time cut into slices of `bucket_ms = ceil(window_ms / 510)`
//!   (1 ms for windows up to 510 ms). Hence at most [`MAX_WINDOW_SAMPLES`] pairs, whatever the
//!   reading rate: a window of `window_ms` touches at most 512 buckets.
//!
//! # What the cap means
//!
//! When a reading arrives in the bucket of the pair at the back and is higher than it, the
//! reading is not stored: the back pair keeps its (lower) value and takes the reading's time.
//! So a low value may stay in the window up to `bucket_ms - 1` ms longer than `window_ms`,
//! never shorter: the lowest value is between the exact lowest of the last `window_ms` and
//! the exact lowest of the last `window_ms + bucket_ms - 1`. A rise (or fall) is therefore
//! never missed, and is seen at most `window_ms / 510` longer than exact (0.2 %: 117 ms for a
//! 60 s window). Windows up to 510 ms, and readings further apart than `bucket_ms`, are exact.

use std::collections::VecDeque;

/// The most `(ts_ms, value)` pairs a window keeps (16 bytes each: 8 KiB at most per windowed
/// alarm, allocated only as readings need it).
pub const MAX_WINDOW_SAMPLES: usize = 512;

/// Buckets a window is cut into; two more than that may be touched at its ends.
const BUCKETS: u64 = MAX_WINDOW_SAMPLES as u64 - 2;

/// The lowest value of the readings of the last `window_ms` (see the module docs).
#[derive(Debug, Clone)]
pub(crate) struct MinWindow {
    /// How far back the window reaches, in ms (saturated to `i64::MAX`).
    window_ms: i64,
    /// The width of a bucket in ms, at least 1.
    bucket_ms: i64,
    /// The candidates for the lowest value, oldest first (invariants in the module docs).
    samples: VecDeque<(i64, f64)>,
}

impl MinWindow {
    /// An empty window reaching `window_ms` back (0 is treated as 1).
    pub(crate) fn new(window_ms: u64) -> Self {
        let bucket_ms = window_ms.max(1).div_ceil(BUCKETS);
        Self {
            window_ms: i64::try_from(window_ms).unwrap_or(i64::MAX),
            // At most u64::MAX / 510 + 1: always fits.
            bucket_ms: i64::try_from(bucket_ms).unwrap_or(i64::MAX),
            samples: VecDeque::new(),
        }
    }

    /// Takes a reading and returns the lowest value of the window ending at `ts_ms`, this
    /// reading included. `ts_ms` must not be older than the previous reading's (the engine
    /// drops stale readings before they get here, and empties the window on a restore).
    pub(crate) fn push(&mut self, ts_ms: i64, value: f64) -> f64 {
        debug_assert!(self.samples.back().is_none_or(|&(last, _)| last <= ts_ms));
        while self.samples.back().is_some_and(|&(_, v)| v >= value) {
            self.samples.pop_back();
        }
        let bucket = ts_ms.div_euclid(self.bucket_ms);
        match self.samples.back_mut() {
            // Same bucket, lower value: the back pair stands for this reading too.
            Some(back) if back.0.div_euclid(self.bucket_ms) == bucket => back.0 = ts_ms,
            _ => self.samples.push_back((ts_ms, value)),
        }
        let oldest_kept = ts_ms.saturating_sub(self.window_ms);
        while self
            .samples
            .front()
            .is_some_and(|&(ts, _)| ts < oldest_kept)
        {
            self.samples.pop_front();
        }
        // Never expected (the bucket bound above keeps it at 512), but memory must stay
        // bounded even if that reasoning were wrong: dropping the oldest only shortens the window.
        if self.samples.len() > MAX_WINDOW_SAMPLES {
            self.samples.pop_front();
        }
        // The back pair is never older than `ts_ms`'s bucket, so it survives the eviction
        // and the deque is not empty; `value` is the honest answer if it ever were.
        self.samples.front().map_or(value, |&(_, v)| v)
    }

    /// Forgets every reading (after a restart the old times mean nothing).
    pub(crate) fn clear(&mut self) {
        self.samples.clear();
    }

    /// The candidates, oldest first (for saving the window).
    pub(crate) fn samples(&self) -> impl Iterator<Item = (i64, f64)> + '_ {
        self.samples.iter().copied()
    }

    /// Takes saved candidates back, if they keep the invariants that do not depend on where
    /// the buckets fall: timestamps and values strictly increasing, values finite, none newer
    /// than `newest_ms` (the newest reading applied), at most [`MAX_WINDOW_SAMPLES`]. Otherwise
    /// (a damaged or foreign save) the window stays empty and starts again with the next
    /// reading. Returns whether they were taken.
    pub(crate) fn refill(
        &mut self,
        samples: impl IntoIterator<Item = (i64, f64)>,
        newest_ms: Option<i64>,
    ) -> bool {
        self.samples.clear();
        let mut previous: Option<(i64, f64)> = None;
        for (ts_ms, value) in samples {
            let in_order = previous.is_none_or(|(ts, v)| ts < ts_ms && v < value);
            let fits = value.is_finite()
                && newest_ms.is_some_and(|newest| ts_ms <= newest)
                && self.samples.len() < MAX_WINDOW_SAMPLES;
            if !(in_order && fits) {
                self.samples.clear();
                return false;
            }
            self.samples.push_back((ts_ms, value));
            previous = Some((ts_ms, value));
        }
        true
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.samples.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lowest value of the readings with `ts >= now - window_ms`, by scanning them all.
    fn exact_min(readings: &[(i64, f64)], now: i64, window_ms: i64) -> f64 {
        readings
            .iter()
            .filter(|&&(ts, _)| ts >= now - window_ms && ts <= now)
            .map(|&(_, v)| v)
            .fold(f64::INFINITY, f64::min)
    }

    #[test]
    fn a_short_window_gives_the_exact_lowest_value() {
        let mut window = MinWindow::new(100);
        let mut readings = Vec::new();
        for (i, value) in [5.0, 3.0, 4.0, 4.0, 9.0, 1.0, 2.0, 8.0, 8.0, 7.0]
            .into_iter()
            .cycle()
            .take(200)
            .enumerate()
        {
            let ts = i as i64 * 7;
            readings.push((ts, value));
            assert_eq!(
                window.push(ts, value),
                exact_min(&readings, ts, 100),
                "at {ts}"
            );
        }
    }

    #[test]
    fn values_rising_at_every_reading_stay_within_the_cap() {
        // A 60 s window read every ms, the value rising each time: 60,000 candidates.
        let mut window = MinWindow::new(60_000);
        let mut longest = 0;
        for ts in 0..200_000i64 {
            let lowest = window.push(ts, ts as f64);
            longest = longest.max(window.len());
            // Between the exact lowest of 60,000 ms and that of 60,000 + bucket - 1 ms.
            let exact = (ts - 60_000).max(0) as f64;
            let widest = (ts - 60_000 - 117).max(0) as f64;
            assert!(lowest <= exact && lowest >= widest, "{lowest} at {ts}");
        }
        assert!(longest <= MAX_WINDOW_SAMPLES, "{longest}");
        assert!(
            longest > MAX_WINDOW_SAMPLES - 10,
            "the cap was not reached: {longest}"
        );
    }

    #[test]
    fn a_huge_window_and_negative_times_neither_overflow_nor_grow_without_bound() {
        let mut window = MinWindow::new(u64::MAX);
        // From i64::MIN to nearly i64::MAX: the whole range of times, twice the window.
        let step = i128::from(i64::MAX / 5_000);
        for i in 0..10_000i64 {
            let ts = i64::try_from(i128::from(i64::MIN) + i128::from(i) * step).unwrap();
            window.push(ts, i as f64);
            assert!(window.len() <= MAX_WINDOW_SAMPLES);
        }
        let lowest = window.push(i64::MAX, 1e9);
        assert!((0.0..1e4).contains(&lowest), "{lowest}");
    }

    #[test]
    fn a_saved_window_refills_only_when_it_keeps_the_invariants() {
        let mut window = MinWindow::new(100);
        window.push(10, 1.0);
        window.push(20, 2.0);
        let saved: Vec<(i64, f64)> = window.samples().collect();

        let mut restored = MinWindow::new(100);
        assert!(restored.refill(saved.clone(), Some(20)));
        assert_eq!(restored.push(30, 5.0), 1.0);

        let out_of_order = vec![(20, 2.0), (10, 1.0)];
        let newer_than_the_last_reading = saved.clone();
        for (bad, newest) in [
            (out_of_order, Some(20)),
            (newer_than_the_last_reading, Some(15)),
            (vec![(10, f64::NAN)], Some(20)),
            (saved, None),
        ] {
            assert!(!restored.refill(bad, newest));
            assert_eq!(restored.len(), 0);
        }
    }

    #[test]
    fn readings_with_the_same_time_are_one_candidate() {
        let mut window = MinWindow::new(10);
        assert_eq!(window.push(0, 5.0), 5.0);
        assert_eq!(window.push(0, 6.0), 5.0);
        assert_eq!(window.push(0, 4.0), 4.0);
        assert_eq!(window.len(), 1);
        assert_eq!(window.push(10, 6.0), 4.0);
        assert_eq!(window.push(11, 6.0), 6.0);
    }
}
