//! Reports a sensor has already made: pure, no clock but the sensors' own timestamps.
//!
//! A platform that relays NB-IoT sensors delivers at least once, so the same report can
//! come twice, and after a reconnect it may resend the last one it has; deliveries can
//! also overtake each other. Only the sensor's own timestamp (`timestamp_field`) tells
//! these from a new report, so with no timestamp every message is new. Per device:
//! - a timestamp newer than the newest taken: a new report;
//! - the same timestamp with the same values: the same report again, `stale`;
//! - the same timestamp with other values: a new report from a sensor whose clock does not
//!   move (taken: its values are new, whatever its clock says);
//! - an older timestamp: a report overtaken by a newer one, `stale` (its values are older
//!   than what the rules have); but [`SET_BACK_AFTER`] older ones in a row mean the sensor's
//!   clock was set back (a power cycle, a new time source), and the newest of them is taken
//!   as the new reference, so a sensor is never stale for as long as its clock was ahead.
//!
//! A stale report is no answer from the device (see [`PolledValues::is_fresh`]): a sensor
//! whose platform only repeats its last report loses communication after
//! `comm_loss_after_s`, as it should.

use std::collections::HashMap;

use crate::sources::PolledValues;

/// Older timestamps in a row that are taken as the sensor's clock set back.
pub const SET_BACK_AFTER: u8 = 3;

/// The newest report taken from each device.
#[derive(Debug, Default)]
pub struct Reports {
    last: HashMap<usize, Last>,
}

#[derive(Debug)]
struct Last {
    ts_ms: i64,
    /// Its values, bit for bit, in the device's point order.
    values: Vec<u64>,
    /// Older timestamps since.
    behind: u8,
}

impl Reports {
    /// Judge device `device`'s message with sensor time `ts_ms` (`None`: the message gave
    /// none): its values as they are, or as `stale` point faults.
    pub fn judge(
        &mut self,
        device: usize,
        ts_ms: Option<i64>,
        values: PolledValues,
    ) -> PolledValues {
        let Some(ts_ms) = ts_ms else {
            return values;
        };
        let bits: Vec<u64> = values.values.iter().map(|(_, v)| v.to_bits()).collect();
        let take = |last: &mut Last, bits: Vec<u64>| {
            *last = Last {
                ts_ms,
                values: bits,
                behind: 0,
            }
        };
        let Some(last) = self.last.get_mut(&device) else {
            self.last.insert(
                device,
                Last {
                    ts_ms,
                    values: bits,
                    behind: 0,
                },
            );
            return values;
        };
        if ts_ms > last.ts_ms || (ts_ms == last.ts_ms && bits != last.values) {
            take(last, bits);
            return values;
        }
        if ts_ms == last.ts_ms {
            return values.into_stale(&format!(
                "a repeat of the sensor's report of {ts_ms} (its timestamp and values)"
            ));
        }
        last.behind += 1;
        if last.behind >= SET_BACK_AFTER {
            take(last, bits);
            return values;
        }
        let newer = last.ts_ms;
        values.into_stale(&format!(
            "sensor time {ts_ms} is older than its report of {newer} already taken \
             (delivered out of order)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::Quality;

    fn values(v: f64) -> PolledValues {
        PolledValues {
            values: vec![("o".into(), v)],
            faults: Vec::new(),
        }
    }

    fn stale(p: &PolledValues) -> bool {
        !p.is_fresh() && p.faults.iter().all(|f| f.quality == Quality::Stale)
    }

    #[test]
    fn without_a_timestamp_every_message_is_new() {
        let mut r = Reports::default();
        for _ in 0..5 {
            assert_eq!(r.judge(0, None, values(1.0)), values(1.0));
        }
    }

    #[test]
    fn a_newer_timestamp_is_taken_and_the_same_report_again_is_stale() {
        let mut r = Reports::default();
        assert!(r.judge(0, Some(1000), values(1.0)).is_fresh());
        let again = r.judge(0, Some(1000), values(1.0));
        assert!(stale(&again), "{again:?}");
        assert!(again.faults[0].reason.contains("repeat"), "{again:?}");
        assert!(r.judge(0, Some(2000), values(1.0)).is_fresh());
    }

    #[test]
    fn a_clock_that_does_not_move_still_brings_new_values() {
        let mut r = Reports::default();
        assert!(r.judge(0, Some(0), values(1.0)).is_fresh());
        assert!(r.judge(0, Some(0), values(2.0)).is_fresh());
        assert!(stale(&r.judge(0, Some(0), values(2.0))));
    }

    #[test]
    fn an_overtaken_report_is_stale_until_the_clock_was_plainly_set_back() {
        let mut r = Reports::default();
        assert!(r.judge(0, Some(10_000), values(1.0)).is_fresh());
        let late = r.judge(0, Some(9_000), values(0.5));
        assert!(stale(&late), "{late:?}");
        assert!(late.faults[0].reason.contains("out of order"), "{late:?}");
        assert!(stale(&r.judge(0, Some(100), values(1.0))));
        // The third older one in a row: the sensor's clock went back; it is taken.
        assert!(r.judge(0, Some(200), values(1.0)).is_fresh());
        assert!(r.judge(0, Some(300), values(1.0)).is_fresh());
        assert!(stale(&r.judge(0, Some(250), values(1.0))));
    }

    #[test]
    fn devices_are_judged_apart() {
        let mut r = Reports::default();
        assert!(r.judge(0, Some(1000), values(1.0)).is_fresh());
        assert!(r.judge(1, Some(1000), values(1.0)).is_fresh());
        assert!(r.judge(1, Some(500), values(1.0)).faults[0].quality == Quality::Stale);
    }

    #[test]
    fn a_repeated_report_is_stale_faults_and_all() {
        let mut r = Reports::default();
        let with_fault = || PolledValues {
            values: vec![("o".into(), 1.0)],
            faults: vec![crate::sources::PointFault {
                point: "t".into(),
                reason: "missing".into(),
                quality: Quality::Bad,
            }],
        };
        assert!(r.judge(0, Some(1), with_fault()).is_fresh());
        let again = r.judge(0, Some(1), with_fault());
        assert!(stale(&again), "{again:?}");
        assert_eq!(again.faults.len(), 2);
    }
}
