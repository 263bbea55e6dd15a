//! Report by exception: which of a poll's values go to the sinks (the broker's live
//! readings and the time-series store). The rules see every value of every poll regardless;
//! this only spares the network and the store values that say nothing new.
//!
//! A device reports a point when its value moved more than the point's `report_deadband`
//! (default 0: any change) from the value last reported, and reports every point at least
//! every `report_every_s` (default 60; the heartbeat: a flat line in the store still has
//! samples, and a reader can tell "unchanged" from "gone"). A device with
//! `report_every_s = 0` reports every poll. A change of a point's quality (good to
//! wire-break, comm-lost to good) is always reported at once. Pure: time is an argument
//! (monotonic ms).

use shouwang_wire::{PointValue, Quality};

/// One device's filter.
#[derive(Debug, Clone)]
pub struct ExceptionFilter {
    every_ms: i64,
    /// Per point: its deadband and what was last reported. A device has a few points, so
    /// a short vector scanned by name costs less than a map, in memory and in time.
    points: Vec<PointState>,
    /// When every point was last reported (monotonic ms).
    last_full_ms: Option<i64>,
}

#[derive(Debug, Clone)]
struct PointState {
    name: String,
    deadband: f64,
    /// The value and quality last reported.
    last: Option<(Option<f64>, Quality)>,
}

impl ExceptionFilter {
    /// `deadbands`: the device's points and their deadbands (a point not named has 0).
    pub fn new(every_ms: i64, deadbands: Vec<(String, f64)>) -> ExceptionFilter {
        ExceptionFilter {
            every_ms,
            points: deadbands
                .into_iter()
                .map(|(name, deadband)| PointState {
                    name,
                    deadband,
                    last: None,
                })
                .collect(),
            last_full_ms: None,
        }
    }

    /// The values of one poll at `now_ms` that are to be reported.
    pub fn filter(&mut self, points: Vec<PointValue>, now_ms: i64) -> Vec<PointValue> {
        let heartbeat = self.heartbeat(now_ms);
        points
            .into_iter()
            .filter(|p| self.report(&p.point, p.value, p.quality, heartbeat))
            .collect()
    }

    /// A poll at `now_ms`: whether it is the heartbeat, which reports every point (and
    /// starts the next period). [`ExceptionFilter::filter`] in two steps, for a caller
    /// that decides before it builds the points: this once per poll, then
    /// [`ExceptionFilter::report`] for each of its points.
    pub fn heartbeat(&mut self, now_ms: i64) -> bool {
        let heartbeat = self
            .last_full_ms
            .is_none_or(|at| now_ms.saturating_sub(at) >= self.every_ms);
        if heartbeat {
            self.last_full_ms = Some(now_ms);
        }
        heartbeat
    }

    /// Whether one point of a poll is reported, given whether the poll is the heartbeat;
    /// if so, it is the point's last reported value from now on.
    pub fn report(
        &mut self,
        point: &str,
        value: Option<f64>,
        quality: Quality,
        heartbeat: bool,
    ) -> bool {
        let i = match self.points.iter().position(|s| s.name == point) {
            Some(i) => i,
            None => {
                self.points.push(PointState {
                    name: point.to_string(),
                    deadband: 0.0,
                    last: None,
                });
                self.points.len() - 1
            }
        };
        let state = &mut self.points[i];
        let moved = state.last.is_none_or(|(last, last_quality)| {
            // A change of quality is always news (a wire break, and its repair).
            if last_quality != quality {
                return true;
            }
            match (last, value) {
                (Some(last), Some(value)) => {
                    let moved = (value - last).abs();
                    // NaN (a value appearing or vanishing) counts as a move.
                    moved > state.deadband || moved.is_nan()
                }
                (None, None) => false,
                _ => true,
            }
        });
        let report = heartbeat || moved;
        if report {
            state.last = Some((value, quality));
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(v: &[(&str, f64)]) -> Vec<PointValue> {
        v.iter()
            .map(|&(point, value)| PointValue::good(point, value, None))
            .collect()
    }

    fn names(v: &[PointValue]) -> Vec<&str> {
        v.iter().map(|p| p.point.as_str()).collect()
    }

    #[test]
    fn only_moves_beyond_the_deadband_are_reported_between_heartbeats() {
        let mut f = ExceptionFilter::new(60_000, [("pressure".to_string(), 0.02)].into());
        // The first poll reports everything.
        let first = f.filter(values(&[("pressure", 0.50), ("door", 0.0)]), 0);
        assert_eq!(names(&first), ["pressure", "door"]);
        // Within the deadband, unchanged: nothing.
        assert!(
            f.filter(values(&[("pressure", 0.51), ("door", 0.0)]), 1_000)
                .is_empty()
        );
        // The door opens (deadband 0: any change); the pressure drifts 0.03 from the last
        // reported 0.50.
        let moved = f.filter(values(&[("pressure", 0.53), ("door", 1.0)]), 2_000);
        assert_eq!(names(&moved), ["pressure", "door"]);
        // Measured from the last reported value (0.53), not the last polled one.
        assert!(
            f.filter(values(&[("pressure", 0.545), ("door", 1.0)]), 3_000)
                .is_empty()
        );
    }

    #[test]
    fn every_point_is_reported_at_each_heartbeat_even_when_flat() {
        let mut f = ExceptionFilter::new(10_000, Vec::new());
        assert_eq!(f.filter(values(&[("level", 3.0)]), 0).len(), 1);
        assert!(f.filter(values(&[("level", 3.0)]), 9_999).is_empty());
        assert_eq!(f.filter(values(&[("level", 3.0)]), 10_000).len(), 1);
        assert!(f.filter(values(&[("level", 3.0)]), 10_001).is_empty());
    }

    #[test]
    fn a_change_of_quality_is_reported_at_once_and_a_steady_bad_point_is_not() {
        let mut f = ExceptionFilter::new(60_000, Vec::new());
        f.filter(values(&[("current", 12.0)]), 0);
        let broken = PointValue {
            point: "current".into(),
            value: None,
            engineering_unit: None,
            quality: Quality::WireBreak,
        };
        assert_eq!(names(&f.filter(vec![broken.clone()], 1_000)), ["current"]);
        assert!(f.filter(vec![broken], 2_000).is_empty());
        assert_eq!(
            names(&f.filter(values(&[("current", 12.0)]), 3_000)),
            ["current"]
        );
    }
}
