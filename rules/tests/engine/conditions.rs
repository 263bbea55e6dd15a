//! The conditions beyond thresholds: digital states (`Equals`), status words (`AnyBit`), rates
//! of change (`RiseWithin`, `FallWithin`) and stuck sensors (`Frozen`), with their validation.
//! One behaviour per test; time is the `ts_ms` argument.

use shouwang_rules::{AlarmState, Condition, Engine, RuleError, Transition, TransitionKind};

use crate::{rule, smoke};

const SECOND: i64 = 1_000;

fn engine(condition: Condition) -> Engine {
    Engine::new(vec![rule("alarm", "dev", "pt", condition)]).expect("valid spec")
}

fn read(engine: &mut Engine, value: f64, ts_ms: i64) -> Vec<Transition> {
    engine.on_reading("dev", "pt", value, ts_ms)
}

/// The kinds of the transitions of one reading.
fn kinds(transitions: Vec<Transition>) -> Vec<TransitionKind> {
    transitions.into_iter().map(|t| t.kind).collect()
}

fn active(engine: &Engine) -> bool {
    engine.alarm("alarm").expect("alarm exists").active
}

const RAISED: [TransitionKind; 1] = [TransitionKind::Raised];
const CLEARED: [TransitionKind; 1] = [TransitionKind::Cleared];

// ---- Equals: digital states --------------------------------------------------------------

#[test]
fn a_door_state_equal_to_the_value_raises_and_any_other_value_clears() {
    // Door state 2 = open.
    let mut engine = engine(Condition::Equals { value: 2.0 });

    assert!(read(&mut engine, 1.0, 1_000).is_empty());
    assert_eq!(kinds(read(&mut engine, 2.0, 2_000)), RAISED);
    assert!(read(&mut engine, 2.0, 3_000).is_empty());
    assert_eq!(kinds(read(&mut engine, 3.0, 4_000)), CLEARED);
    assert!(read(&mut engine, 2.000_001, 5_000).is_empty());
    assert!(read(&mut engine, 1.999_999, 6_000).is_empty());
    assert!(!active(&engine));
}

#[test]
fn a_door_held_open_raises_after_its_on_delay() {
    let mut spec = rule("alarm", "dev", "pt", Condition::Equals { value: 2.0 });
    spec.on_delay_ms = 60_000;
    let mut engine = Engine::new(vec![spec]).unwrap();

    read(&mut engine, 2.0, 0);
    assert!(read(&mut engine, 2.0, 59_999).is_empty());
    assert_eq!(kinds(engine.tick(60_000)), RAISED);
}

#[test]
fn equals_zero_matches_minus_zero() {
    let mut engine = engine(Condition::Equals { value: 0.0 });

    assert_eq!(kinds(read(&mut engine, -0.0, 1_000)), RAISED);
}

// ---- AnyBit: status words ---------------------------------------------------------------

#[test]
fn a_status_word_with_any_bit_of_the_mask_set_raises_and_clears_when_none_is() {
    // Bit 2: safety circuit open; bit 4: overspeed.
    let mut engine = engine(Condition::AnyBit { mask: 0b1_0100 });

    assert!(read(&mut engine, 0b0_0011 as f64, 1_000).is_empty());
    assert_eq!(kinds(read(&mut engine, 0b0_0111 as f64, 2_000)), RAISED);
    assert!(read(&mut engine, 0b1_0000 as f64, 3_000).is_empty());
    assert_eq!(kinds(read(&mut engine, 0b0_1011 as f64, 4_000)), CLEARED);
    assert_eq!(kinds(read(&mut engine, 0b1_0000 as f64, 5_000)), RAISED);
}

#[test]
fn the_highest_bit_of_a_32_bit_status_word_is_read() {
    let mut engine = engine(Condition::AnyBit { mask: 1 << 31 });

    assert!(read(&mut engine, f64::from(i32::MAX), 1_000).is_empty());
    assert_eq!(kinds(read(&mut engine, f64::from(u32::MAX), 2_000)), RAISED);
    assert_eq!(kinds(read(&mut engine, -0.0, 3_000)), CLEARED);
}

#[test]
fn any_bit_ignores_values_that_are_not_a_status_word() {
    let mut engine = engine(Condition::AnyBit { mask: 0b100 });
    assert_eq!(kinds(read(&mut engine, 4.0, 1_000)), RAISED);

    for value in [2.5, -1.0, 4_294_967_296.0, 1e20, 0.1, f64::NAN] {
        assert!(read(&mut engine, value, 5_000).is_empty(), "{value}");
    }

    let view = engine.alarm("alarm").unwrap();
    assert_eq!(view.state, AlarmState::Unacknowledged);
    assert_eq!(view.last_value, Some(4.0));
    // Ignored entirely: they did not move the stale-reading mark either.
    assert_eq!(kinds(read(&mut engine, 0.0, 2_000)), CLEARED);
}

#[test]
fn a_value_one_rule_cannot_read_as_a_status_word_still_reaches_the_others() {
    let mut threshold = smoke("threshold", 0);
    threshold.device = "dev".into();
    threshold.point = "pt".into();
    let mut engine = Engine::new(vec![
        rule("bits", "dev", "pt", Condition::AnyBit { mask: 0b10 }),
        threshold,
    ])
    .unwrap();

    let transitions = read(&mut engine, 12.5, 1_000);

    assert_eq!(transitions.len(), 1);
    assert_eq!(&*transitions[0].alarm_id, "threshold");
    assert_eq!(engine.alarm("bits").unwrap().last_value, None);
}

// ---- RiseWithin and FallWithin: rates of change -----------------------------------------

/// A heat detector's rate of rise: 8 degrees within a minute.
fn rate_of_rise() -> Engine {
    engine(Condition::RiseWithin {
        by: 8.0,
        window_ms: 60_000,
    })
}

#[test]
fn a_rise_of_by_within_the_window_raises_a_rate_of_rise_alarm() {
    let mut engine = rate_of_rise();
    for (i, value) in [21.0, 20.0, 22.0, 24.0, 27.0].into_iter().enumerate() {
        assert!(read(&mut engine, value, i as i64 * 10 * SECOND).is_empty());
    }

    let transitions = read(&mut engine, 28.0, 50 * SECOND);

    assert_eq!(kinds(transitions), RAISED);
    assert_eq!(engine.alarm("alarm").unwrap().last_value, Some(28.0));
}

#[test]
fn a_slow_rise_spread_over_more_than_the_window_raises_nothing() {
    let mut engine = rate_of_rise();

    // 1 degree every 10 s: 6 per minute, 30 degrees in all.
    for i in 0..=30 {
        assert!(read(&mut engine, 20.0 + i as f64, i * 10 * SECOND).is_empty());
    }
    assert!(!active(&engine));
}

#[test]
fn a_rate_of_rise_step_that_stays_flat_clears_after_the_window() {
    let mut engine = rate_of_rise();
    for i in 0..=9 {
        read(&mut engine, 20.0, i * 10 * SECOND);
    }

    assert_eq!(kinds(read(&mut engine, 30.0, 100 * SECOND)), RAISED);
    // The last 20 degrees, at 90 s, is in the window up to and including 150 s.
    for i in 11..=15 {
        assert!(read(&mut engine, 30.0, i * 10 * SECOND).is_empty(), "{i}");
    }
    assert!(active(&engine));
    assert_eq!(kinds(read(&mut engine, 30.0, 160 * SECOND)), CLEARED);
    assert!(read(&mut engine, 30.0, 170 * SECOND).is_empty());
}

#[test]
fn a_tick_does_not_slide_the_window_the_next_reading_does() {
    let mut engine = rate_of_rise();
    read(&mut engine, 20.0, 0);
    read(&mut engine, 30.0, SECOND);

    assert!(engine.tick(1_000 * SECOND).is_empty());
    assert!(active(&engine));
    assert_eq!(engine.next_deadline_ms(), None);
    assert_eq!(kinds(read(&mut engine, 30.0, 1_001 * SECOND)), CLEARED);
}

#[test]
fn a_rise_clears_as_soon_as_the_value_drops_back_within_by_of_the_lowest() {
    let mut engine = rate_of_rise();
    read(&mut engine, 20.0, 0);
    assert_eq!(kinds(read(&mut engine, 30.0, SECOND)), RAISED);

    assert!(read(&mut engine, 28.0, 2 * SECOND).is_empty());
    assert_eq!(kinds(read(&mut engine, 27.9, 3 * SECOND)), CLEARED);
}

#[test]
fn a_stale_reading_does_not_enter_the_window() {
    let mut engine = rate_of_rise();
    read(&mut engine, 25.0, 10 * SECOND);

    assert!(read(&mut engine, 10.0, 5 * SECOND).is_empty());
    // Had the 10 degrees at 5 s entered the window, 18 would be a rise of 8.
    assert!(read(&mut engine, 18.0, 11 * SECOND).is_empty());
    assert!(read(&mut engine, f64::NAN, 12 * SECOND).is_empty());
    assert_eq!(kinds(read(&mut engine, 26.0, 13 * SECOND)), RAISED);
}

#[test]
fn a_rise_read_every_millisecond_over_a_long_window_is_seen_and_clears_on_time() {
    // 600 times the window's capacity of readings: what the cap means, seen from outside.
    // The value rises 0.1 per second for 70 s, then stays flat at 7.
    let mut engine = engine(Condition::RiseWithin {
        by: 5.0,
        window_ms: 60_000,
    });
    let value = |ts: i64| ts.min(70_000) as f64 / 10_000.0;
    let mut raised_at = None;
    let mut cleared_at = None;
    for ts in 0..=150_000 {
        for transition in read(&mut engine, value(ts), ts) {
            match transition.kind {
                TransitionKind::Raised => raised_at = raised_at.or(Some(ts)),
                _ => cleared_at = cleared_at.or(Some(ts)),
            }
        }
    }

    // Exactly: a rise of 5 at 50 s. The flat 7 is a rise under 5 from just after 80 s; a
    // low value may stay up to window/510 (117 ms) longer in the window, never less.
    assert_eq!(raised_at, Some(50_000));
    let cleared_at = cleared_at.expect("cleared");
    assert!((80_001..=80_118).contains(&cleared_at), "{cleared_at}");
}

#[test]
fn a_fire_main_losing_pressure_fast_raises_a_fall_alarm() {
    // In kPa: 100 kPa within 30 s.
    let mut engine = engine(Condition::FallWithin {
        by: 100.0,
        window_ms: 30_000,
    });
    for (i, value) in [620.0, 650.0, 600.0, 580.0].into_iter().enumerate() {
        assert!(read(&mut engine, value, i as i64 * 5 * SECOND).is_empty());
    }

    // 650 at 5 s is the highest of the last 30 s.
    assert_eq!(kinds(read(&mut engine, 550.0, 20 * SECOND)), RAISED);
    assert!(read(&mut engine, 500.0, 30 * SECOND).is_empty());
    assert!(read(&mut engine, 500.0, 35 * SECOND).is_empty());
    // 650 has left the window; 600 (at 10 s) is now the highest, 100 above.
    assert!(read(&mut engine, 500.0, 40 * SECOND).is_empty());
    // At 41 s the highest is 580 (at 15 s): a fall of 80.
    assert_eq!(kinds(read(&mut engine, 500.0, 41 * SECOND)), CLEARED);
}

#[test]
fn a_fall_clears_when_the_value_comes_back_up() {
    let mut engine = engine(Condition::FallWithin {
        by: 1.0,
        window_ms: 60_000,
    });
    read(&mut engine, 5.0, 0);
    assert_eq!(kinds(read(&mut engine, 3.0, SECOND)), RAISED);

    assert_eq!(kinds(read(&mut engine, 4.5, 2 * SECOND)), CLEARED);
}

// ---- Frozen: stuck sensors --------------------------------------------------------------

/// A pressure transmitter that must move by more than 0.001 MPa within 10 minutes.
fn stuck_transmitter() -> Engine {
    engine(Condition::Frozen {
        tolerance: 0.001,
        window_ms: 600_000,
    })
}

#[test]
fn a_value_stuck_for_the_window_raises_a_frozen_alarm() {
    let mut engine = stuck_transmitter();
    for i in 0..10 {
        assert!(read(&mut engine, 0.420, i * 60 * SECOND).is_empty());
    }

    let transitions = read(&mut engine, 0.4205, 600 * SECOND);

    assert_eq!(kinds(transitions), RAISED);
    assert!(read(&mut engine, 0.4195, 660 * SECOND).is_empty());
    assert!(active(&engine));
}

#[test]
fn a_frozen_run_is_judged_against_the_value_that_started_it() {
    let mut engine = stuck_transmitter();

    // Steps of 0.0006 are each within tolerance of the last, but drift away from the first.
    for i in 0..=20 {
        let value = 0.420 + 0.0006 * i as f64;
        assert!(read(&mut engine, value, i * 60 * SECOND).is_empty(), "{i}");
    }
    assert!(!active(&engine));
}

#[test]
fn frozen_clears_on_a_move_and_raises_again_after_a_new_full_window() {
    let mut engine = stuck_transmitter();
    read(&mut engine, 0.420, 0);
    assert_eq!(kinds(read(&mut engine, 0.420, 600 * SECOND)), RAISED);

    // A move beyond the tolerance: cleared, and a new run starts at 0.43 at 700 s.
    assert_eq!(kinds(read(&mut engine, 0.430, 700 * SECOND)), CLEARED);
    assert!(read(&mut engine, 0.430, 1_000 * SECOND).is_empty());
    assert!(read(&mut engine, 0.4309, 1_299 * SECOND).is_empty());
    assert!(!active(&engine));
    assert_eq!(kinds(read(&mut engine, 0.430, 1_300 * SECOND)), RAISED);
}

#[test]
fn a_tick_does_not_lengthen_a_frozen_run_only_readings_do() {
    let mut engine = stuck_transmitter();
    read(&mut engine, 0.420, 0);

    assert!(engine.tick(10_000 * SECOND).is_empty());
    assert!(!active(&engine));
    assert_eq!(kinds(read(&mut engine, 0.420, 10_000 * SECOND)), RAISED);
}

#[test]
fn a_frozen_rule_with_no_tolerance_needs_the_very_same_value() {
    let mut engine = engine(Condition::Frozen {
        tolerance: 0.0,
        window_ms: 1_000,
    });
    read(&mut engine, 7.0, 0);
    assert!(read(&mut engine, 7.000_000_1, 1_000).is_empty());
    assert!(read(&mut engine, 7.000_000_1, 1_999).is_empty());

    assert_eq!(kinds(read(&mut engine, 7.000_000_1, 2_000)), RAISED);
}

#[test]
fn non_finite_and_stale_readings_neither_break_nor_start_a_frozen_run() {
    let mut engine = stuck_transmitter();
    read(&mut engine, 0.420, 100 * SECOND);

    assert!(read(&mut engine, f64::NAN, 200 * SECOND).is_empty());
    assert!(read(&mut engine, 9.0, 50 * SECOND).is_empty());

    assert_eq!(kinds(read(&mut engine, 0.420, 700 * SECOND)), RAISED);
}

#[test]
fn a_frozen_alarm_with_an_off_delay_survives_a_brief_move() {
    let mut spec = rule(
        "alarm",
        "dev",
        "pt",
        Condition::Frozen {
            tolerance: 0.001,
            window_ms: 600_000,
        },
    );
    spec.off_delay_ms = 120_000;
    let mut engine = Engine::new(vec![spec]).unwrap();
    read(&mut engine, 0.420, 0);
    assert_eq!(kinds(read(&mut engine, 0.420, 600 * SECOND)), RAISED);

    assert!(read(&mut engine, 0.500, 610 * SECOND).is_empty());
    assert_eq!(engine.next_deadline_ms(), Some(730 * SECOND));
    // Still moving two minutes on: it is not stuck, the clear goes out.
    assert_eq!(kinds(read(&mut engine, 0.510, 730 * SECOND)), CLEARED);
}

// ---- after a restart --------------------------------------------------------------------

#[test]
fn a_restore_forgets_windows_and_runs_whose_times_meant_the_old_clock() {
    let mut engine = Engine::new(vec![
        rule(
            "rise",
            "dev",
            "pt",
            Condition::RiseWithin {
                by: 5.0,
                window_ms: 60_000,
            },
        ),
        rule(
            "frozen",
            "dev",
            "pt",
            Condition::Frozen {
                tolerance: 0.0,
                window_ms: 60_000,
            },
        ),
    ])
    .unwrap();
    read(&mut engine, 10.0, 1_000_000);
    engine
        .restore("rise", AlarmState::Normal, Some(10.0))
        .unwrap();
    engine
        .restore("frozen", AlarmState::Normal, Some(10.0))
        .unwrap();

    // The new process's clock starts near zero.
    assert!(read(&mut engine, 16.0, 5).is_empty());
    assert!(read(&mut engine, 16.0, 60_004).is_empty());
    assert_eq!(
        read(&mut engine, 16.0, 60_005)
            .into_iter()
            .map(|t| (t.alarm_id, t.kind))
            .collect::<Vec<_>>(),
        vec![("frozen".into(), TransitionKind::Raised)]
    );
}

// ---- validation -------------------------------------------------------------------------

#[test]
fn engine_new_reports_every_bad_condition_parameter_at_once_naming_the_alarm() {
    let specs = vec![
        rule(
            "nan-equals",
            "d",
            "p",
            Condition::Equals { value: f64::NAN },
        ),
        rule("no-bits", "d", "p", Condition::AnyBit { mask: 0 }),
        rule(
            "flat-rise",
            "d",
            "p",
            Condition::RiseWithin {
                by: 0.0,
                window_ms: 0,
            },
        ),
        rule(
            "negative-fall",
            "d",
            "p",
            Condition::FallWithin {
                by: -1.0,
                window_ms: 1_000,
            },
        ),
        rule(
            "infinite-rise",
            "d",
            "p",
            Condition::RiseWithin {
                by: f64::INFINITY,
                window_ms: 1_000,
            },
        ),
        rule(
            "negative-tolerance",
            "d",
            "p",
            Condition::Frozen {
                tolerance: -0.1,
                window_ms: 0,
            },
        ),
        rule(
            "infinite-tolerance",
            "d",
            "p",
            Condition::Frozen {
                tolerance: f64::INFINITY,
                window_ms: 1,
            },
        ),
        // Valid: the smallest window, no tolerance, every bit, the tiniest rise.
        rule(
            "exact-frozen",
            "d",
            "p",
            Condition::Frozen {
                tolerance: 0.0,
                window_ms: 1,
            },
        ),
        rule("all-bits", "d", "p", Condition::AnyBit { mask: u32::MAX }),
        rule(
            "tiny-fall",
            "d",
            "p",
            Condition::FallWithin {
                by: f64::MIN_POSITIVE,
                window_ms: u64::MAX,
            },
        ),
    ];

    let errors = Engine::new(specs).unwrap_err();

    let id = |alarm_id: &str| alarm_id.to_owned();
    assert_eq!(
        errors,
        vec![
            RuleError::BadEqualsValue {
                alarm_id: id("nan-equals")
            },
            RuleError::ZeroMask {
                alarm_id: id("no-bits")
            },
            RuleError::BadBy {
                alarm_id: id("flat-rise"),
                by: 0.0
            },
            RuleError::ZeroWindow {
                alarm_id: id("flat-rise")
            },
            RuleError::BadBy {
                alarm_id: id("negative-fall"),
                by: -1.0
            },
            RuleError::BadBy {
                alarm_id: id("infinite-rise"),
                by: f64::INFINITY
            },
            RuleError::BadTolerance {
                alarm_id: id("negative-tolerance"),
                tolerance: -0.1
            },
            RuleError::ZeroWindow {
                alarm_id: id("negative-tolerance")
            },
            RuleError::BadTolerance {
                alarm_id: id("infinite-tolerance"),
                tolerance: f64::INFINITY
            },
        ]
    );
    for error in errors {
        let message = error.to_string();
        assert!(message.starts_with("alarm `"), "{message}");
    }
}

#[test]
fn a_nan_rise_is_refused() {
    let errors = Engine::new(vec![rule(
        "nan-rise",
        "d",
        "p",
        Condition::RiseWithin {
            by: f64::NAN,
            window_ms: 1_000,
        },
    )])
    .unwrap_err();

    assert!(
        matches!(&errors[..], [RuleError::BadBy { alarm_id, by }] if alarm_id == "nan-rise" && by.is_nan())
    );
}

#[test]
fn condition_errors_say_what_is_wrong() {
    let alarm_id = || "heat-3".to_owned();
    assert_eq!(
        RuleError::BadBy {
            alarm_id: alarm_id(),
            by: 0.0
        }
        .to_string(),
        "alarm `heat-3`: the rise or fall `by` must be a finite number above 0 (it is 0)"
    );
    assert_eq!(
        RuleError::BadTolerance {
            alarm_id: alarm_id(),
            tolerance: -0.5
        }
        .to_string(),
        "alarm `heat-3`: the tolerance must be a finite number, 0 or more (it is -0.5)"
    );
    assert_eq!(
        RuleError::ZeroWindow {
            alarm_id: alarm_id()
        }
        .to_string(),
        "alarm `heat-3`: the window must be at least 1 ms"
    );
    assert_eq!(
        RuleError::ZeroMask {
            alarm_id: alarm_id()
        }
        .to_string(),
        "alarm `heat-3`: the bit mask is 0, so no bit could ever be set"
    );
    assert_eq!(
        RuleError::BadEqualsValue {
            alarm_id: alarm_id()
        }
        .to_string(),
        "alarm `heat-3`: the value to equal must be a finite number"
    );
}
