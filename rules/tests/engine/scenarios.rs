//! Every transition of the state table, the deadband, the on-delay and off-delay, external
//! conditions and the errors, one behaviour per test (the conditions other than thresholds
//! are in `conditions`). Time is the `ts_ms` argument; nothing sleeps.

use shouwang_rules::{
    AckError, AlarmState, Condition, Engine, RuleError, RuleSpec, Transition, TransitionKind,
};

use crate::{comm_lost, low_pressure, smoke};

fn engine(specs: Vec<RuleSpec>) -> Engine {
    Engine::new(specs).expect("valid specs")
}

fn smoke_reading(engine: &mut Engine, value: f64, ts_ms: i64) -> Vec<Transition> {
    engine.on_reading("smoke-12", "density", value, ts_ms)
}

fn state(engine: &Engine, alarm_id: &str) -> AlarmState {
    engine.alarm(alarm_id).expect("alarm exists").state
}

fn transition(
    alarm_id: &str,
    kind: TransitionKind,
    state: AlarmState,
    active: bool,
    value: Option<f64>,
    ts_ms: i64,
) -> Transition {
    Transition {
        alarm_id: alarm_id.into(),
        kind,
        state,
        active,
        value,
        ts_ms,
    }
}

/// An engine whose smoke alarm was raised at t=1000 with 12.0.
fn raised_smoke() -> Engine {
    let mut engine = engine(vec![smoke("smoke", 0)]);
    assert_eq!(smoke_reading(&mut engine, 12.0, 1_000).len(), 1);
    engine
}

// ---- the state table -------------------------------------------------------------------

#[test]
fn a_smoke_reading_over_the_limit_raises_an_unacknowledged_alarm() {
    let mut engine = engine(vec![smoke("smoke", 0)]);

    let transitions = smoke_reading(&mut engine, 12.5, 1_000);

    assert_eq!(
        transitions,
        vec![transition(
            "smoke",
            TransitionKind::Raised,
            AlarmState::Unacknowledged,
            true,
            Some(12.5),
            1_000
        )]
    );
    let view = engine.alarm("smoke").unwrap();
    assert_eq!(view.state, AlarmState::Unacknowledged);
    assert!(view.active);
    assert_eq!(view.last_value, Some(12.5));
}

#[test]
fn a_reading_exactly_at_the_limit_raises_the_alarm() {
    let mut engine = engine(vec![smoke("smoke", 0)]);

    let transitions = smoke_reading(&mut engine, 10.0, 1_000);

    assert_eq!(transitions.len(), 1);
    assert_eq!(state(&engine, "smoke"), AlarmState::Unacknowledged);
}

#[test]
fn a_reading_under_the_limit_raises_nothing() {
    let mut engine = engine(vec![smoke("smoke", 0)]);

    assert!(smoke_reading(&mut engine, 9.99, 1_000).is_empty());
    assert!(smoke_reading(&mut engine, 1.0, 2_000).is_empty());

    let view = engine.alarm("smoke").unwrap();
    assert_eq!(view.state, AlarmState::Normal);
    assert!(!view.active);
    assert_eq!(view.last_value, Some(1.0));
}

#[test]
fn a_low_pressure_reading_at_or_under_the_limit_raises_a_below_alarm() {
    let mut engine = engine(vec![low_pressure("pressure", 0)]);

    assert!(
        engine
            .on_reading("pump-1", "pressure", 0.31, 1_000)
            .is_empty()
    );
    let transitions = engine.on_reading("pump-1", "pressure", 0.3, 2_000);

    assert_eq!(
        transitions,
        vec![transition(
            "pressure",
            TransitionKind::Raised,
            AlarmState::Unacknowledged,
            true,
            Some(0.3),
            2_000
        )]
    );
}

#[test]
fn an_unacknowledged_alarm_that_clears_returns_unacknowledged() {
    let mut engine = raised_smoke();

    let transitions = smoke_reading(&mut engine, 5.0, 2_000);

    assert_eq!(
        transitions,
        vec![transition(
            "smoke",
            TransitionKind::Cleared,
            AlarmState::ReturnedUnacknowledged,
            false,
            Some(5.0),
            2_000
        )]
    );
    assert!(!engine.alarm("smoke").unwrap().active);
}

#[test]
fn acknowledging_an_unacknowledged_alarm_keeps_it_active() {
    let mut engine = raised_smoke();

    let ack = engine.acknowledge("smoke", 3_000).unwrap();

    assert_eq!(
        ack,
        transition(
            "smoke",
            TransitionKind::Acknowledged,
            AlarmState::Acknowledged,
            true,
            None,
            3_000
        )
    );
    let view = engine.alarm("smoke").unwrap();
    assert_eq!(view.state, AlarmState::Acknowledged);
    assert!(view.active);
}

#[test]
fn an_acknowledged_alarm_that_clears_returns_to_normal() {
    let mut engine = raised_smoke();
    engine.acknowledge("smoke", 2_000).unwrap();

    let transitions = smoke_reading(&mut engine, 7.9, 3_000);

    assert_eq!(
        transitions,
        vec![transition(
            "smoke",
            TransitionKind::Cleared,
            AlarmState::Normal,
            false,
            Some(7.9),
            3_000
        )]
    );
}

#[test]
fn acknowledging_a_returned_alarm_returns_it_to_normal() {
    let mut engine = raised_smoke();
    smoke_reading(&mut engine, 0.0, 2_000);

    let ack = engine.acknowledge("smoke", 3_000).unwrap();

    assert_eq!(
        ack,
        transition(
            "smoke",
            TransitionKind::Acknowledged,
            AlarmState::Normal,
            false,
            None,
            3_000
        )
    );
    assert_eq!(state(&engine, "smoke"), AlarmState::Normal);
}

#[test]
fn a_returned_alarm_that_becomes_active_again_is_raised_unacknowledged() {
    let mut engine = raised_smoke();
    smoke_reading(&mut engine, 0.0, 2_000);

    let transitions = smoke_reading(&mut engine, 11.0, 3_000);

    assert_eq!(
        transitions,
        vec![transition(
            "smoke",
            TransitionKind::Raised,
            AlarmState::Unacknowledged,
            true,
            Some(11.0),
            3_000
        )]
    );
}

#[test]
fn a_returned_alarm_becoming_active_again_waits_for_its_on_delay() {
    let mut engine = engine(vec![smoke("smoke", 500)]);
    smoke_reading(&mut engine, 12.0, 1_000);
    assert_eq!(engine.tick(1_500).len(), 1);
    smoke_reading(&mut engine, 0.0, 2_000);

    assert!(smoke_reading(&mut engine, 12.0, 3_000).is_empty());
    assert_eq!(state(&engine, "smoke"), AlarmState::ReturnedUnacknowledged);
    let transitions = engine.tick(3_500);

    assert_eq!(transitions.len(), 1);
    assert_eq!(transitions[0].kind, TransitionKind::Raised);
    assert_eq!(state(&engine, "smoke"), AlarmState::Unacknowledged);
}

// ---- acknowledgement errors ------------------------------------------------------------

#[test]
fn acknowledging_a_normal_alarm_is_refused_naming_its_state() {
    let mut engine = engine(vec![smoke("smoke", 0)]);

    let error = engine.acknowledge("smoke", 1_000).unwrap_err();

    assert_eq!(
        error,
        AckError::NothingToAcknowledge {
            alarm_id: "smoke".into(),
            state: AlarmState::Normal
        }
    );
    assert_eq!(
        error.to_string(),
        "alarm `smoke` has nothing to acknowledge (it is Normal)"
    );
}

#[test]
fn acknowledging_an_acknowledged_alarm_twice_is_refused_and_changes_nothing() {
    let mut engine = raised_smoke();
    engine.acknowledge("smoke", 2_000).unwrap();

    let error = engine.acknowledge("smoke", 3_000).unwrap_err();

    assert_eq!(
        error,
        AckError::NothingToAcknowledge {
            alarm_id: "smoke".into(),
            state: AlarmState::Acknowledged
        }
    );
    assert_eq!(state(&engine, "smoke"), AlarmState::Acknowledged);
}

#[test]
fn acknowledging_an_unknown_alarm_is_refused() {
    let mut engine = engine(vec![smoke("smoke", 0)]);

    let error = engine.acknowledge("smoke-99", 1_000).unwrap_err();

    assert_eq!(error, AckError::UnknownAlarm("smoke-99".to_owned()));
    assert_eq!(error.to_string(), "no alarm has the id `smoke-99`");
}

// ---- repeats, deadband ------------------------------------------------------------------

#[test]
fn repeated_readings_that_change_nothing_produce_no_transitions() {
    let mut engine = raised_smoke();

    for ts_ms in [2_000, 3_000, 3_000, 4_000] {
        assert!(smoke_reading(&mut engine, 12.0, ts_ms).is_empty());
    }
    engine.acknowledge("smoke", 5_000).unwrap();
    assert!(smoke_reading(&mut engine, 15.0, 6_000).is_empty());
    smoke_reading(&mut engine, 1.0, 7_000);
    for ts_ms in [8_000, 9_000] {
        assert!(smoke_reading(&mut engine, 1.0, ts_ms).is_empty());
    }
    assert!(engine.tick(10_000).is_empty());
    assert_eq!(state(&engine, "smoke"), AlarmState::Normal);
}

#[test]
fn values_chattering_around_the_limit_within_the_deadband_raise_once_and_never_clear() {
    let mut engine = engine(vec![smoke("smoke", 0)]);

    let transitions: Vec<Transition> = [9.0, 10.2, 9.1, 10.0, 8.5, 11.0, 8.0, 9.9, 10.1]
        .into_iter()
        .zip((1..).map(|second| second * 1_000))
        .flat_map(|(value, ts_ms)| smoke_reading(&mut engine, value, ts_ms))
        .collect();

    assert_eq!(transitions.len(), 1);
    assert_eq!(transitions[0].kind, TransitionKind::Raised);
    assert_eq!(transitions[0].value, Some(10.2));
    assert_eq!(state(&engine, "smoke"), AlarmState::Unacknowledged);
}

#[test]
fn a_value_past_the_deadband_clears_the_alarm() {
    let mut engine = raised_smoke();

    assert!(smoke_reading(&mut engine, 8.0, 2_000).is_empty());
    let transitions = smoke_reading(&mut engine, 7.99, 3_000);

    assert_eq!(transitions.len(), 1);
    assert_eq!(transitions[0].kind, TransitionKind::Cleared);
}

#[test]
fn a_below_alarm_clears_only_past_limit_plus_deadband() {
    let mut engine = engine(vec![low_pressure("pressure", 0)]);
    engine.on_reading("pump-1", "pressure", 0.2, 1_000);

    assert!(
        engine
            .on_reading("pump-1", "pressure", 0.34, 2_000)
            .is_empty()
    );
    assert!(
        engine
            .on_reading("pump-1", "pressure", 0.35, 3_000)
            .is_empty()
    );
    let transitions = engine.on_reading("pump-1", "pressure", 0.36, 4_000);

    assert_eq!(transitions.len(), 1);
    assert_eq!(transitions[0].state, AlarmState::ReturnedUnacknowledged);
}

#[test]
fn a_zero_deadband_clears_as_soon_as_the_value_is_under_the_limit() {
    let mut spec = smoke("smoke", 0);
    spec.condition = Condition::Above {
        limit: 10.0,
        deadband: 0.0,
    };
    let mut engine = engine(vec![spec]);
    smoke_reading(&mut engine, 10.0, 1_000);

    let transitions = smoke_reading(&mut engine, 9.999, 2_000);

    assert_eq!(transitions.len(), 1);
    assert_eq!(transitions[0].kind, TransitionKind::Cleared);
}

// ---- on-delay ---------------------------------------------------------------------------

#[test]
fn an_on_delayed_alarm_is_not_raised_before_its_delay_runs_out() {
    let mut engine = engine(vec![smoke("smoke", 5_000)]);

    assert!(smoke_reading(&mut engine, 12.0, 1_000).is_empty());
    assert!(smoke_reading(&mut engine, 13.0, 3_000).is_empty());
    assert!(engine.tick(5_999).is_empty());

    let view = engine.alarm("smoke").unwrap();
    assert_eq!(view.state, AlarmState::Normal);
    assert!(!view.active);
    assert_eq!(engine.next_deadline_ms(), Some(6_000));
}

#[test]
fn an_on_delayed_alarm_is_raised_by_a_tick_once_its_delay_runs_out() {
    let mut engine = engine(vec![smoke("smoke", 5_000)]);
    smoke_reading(&mut engine, 12.0, 1_000);
    smoke_reading(&mut engine, 13.0, 3_000);

    let transitions = engine.tick(6_000);

    assert_eq!(
        transitions,
        vec![transition(
            "smoke",
            TransitionKind::Raised,
            AlarmState::Unacknowledged,
            true,
            Some(13.0),
            6_000
        )]
    );
    assert!(engine.tick(7_000).is_empty());
    assert_eq!(engine.next_deadline_ms(), None);
}

#[test]
fn an_on_delayed_alarm_whose_delay_ran_out_before_a_reading_is_raised_at_the_time_it_ran_out() {
    let mut engine = engine(vec![smoke("smoke", 5_000)]);
    smoke_reading(&mut engine, 12.0, 1_000);

    let transitions = smoke_reading(&mut engine, 11.0, 6_500);

    assert_eq!(transitions.len(), 1);
    // The value that held while the delay ran, at the time it ran out (no tick came).
    assert_eq!(transitions[0].value, Some(12.0));
    assert_eq!(transitions[0].ts_ms, 6_000);
    assert_eq!(state(&engine, "smoke"), AlarmState::Unacknowledged);
}

#[test]
fn a_clearing_reading_after_the_delay_ran_out_does_not_cancel_the_raise_it_comes_too_late_for() {
    let mut engine = engine(vec![smoke("smoke", 5_000)]);
    smoke_reading(&mut engine, 12.0, 1_000);

    // The smoke held from 1 s to past 6 s; the gateway's tick would have raised it at 6 s.
    let transitions = smoke_reading(&mut engine, 0.5, 6_050);

    let kinds: Vec<(TransitionKind, i64)> = transitions.iter().map(|t| (t.kind, t.ts_ms)).collect();
    assert_eq!(
        kinds,
        [
            (TransitionKind::Raised, 6_000),
            (TransitionKind::Cleared, 6_050)
        ]
    );
    assert_eq!(state(&engine, "smoke"), AlarmState::ReturnedUnacknowledged);
}

#[test]
fn a_reading_under_the_limit_cancels_a_pending_raise_and_the_delay_starts_over() {
    let mut engine = engine(vec![smoke("smoke", 5_000)]);
    smoke_reading(&mut engine, 12.0, 1_000);

    assert!(smoke_reading(&mut engine, 2.0, 4_000).is_empty());
    assert!(engine.tick(6_000).is_empty());
    assert_eq!(engine.next_deadline_ms(), None);

    smoke_reading(&mut engine, 12.0, 7_000);
    assert!(engine.tick(11_999).is_empty());
    assert_eq!(engine.tick(12_000).len(), 1);
}

#[test]
fn a_value_inside_the_deadband_does_not_start_or_keep_a_pending_raise() {
    let mut engine = engine(vec![smoke("smoke", 5_000)]);

    assert!(smoke_reading(&mut engine, 9.0, 1_000).is_empty());
    assert_eq!(engine.next_deadline_ms(), None);
    smoke_reading(&mut engine, 12.0, 2_000);
    smoke_reading(&mut engine, 9.0, 3_000);

    assert!(engine.tick(8_000).is_empty());
    assert_eq!(state(&engine, "smoke"), AlarmState::Normal);
}

#[test]
fn a_clear_has_no_delay() {
    let mut engine = engine(vec![smoke("smoke", 60_000)]);
    smoke_reading(&mut engine, 12.0, 0);
    assert_eq!(engine.tick(60_000).len(), 1);

    let transitions = smoke_reading(&mut engine, 1.0, 60_001);

    assert_eq!(transitions.len(), 1);
    assert_eq!(transitions[0].kind, TransitionKind::Cleared);
}

#[test]
fn a_tick_from_before_the_condition_started_holding_raises_nothing() {
    let mut engine = engine(vec![smoke("smoke", 0)]);
    let mut delayed = self::engine(vec![smoke("smoke", 1_000)]);
    smoke_reading(&mut engine, 1.0, 1_000);
    smoke_reading(&mut delayed, 12.0, 10_000);

    assert!(engine.tick(500).is_empty());
    assert!(delayed.tick(9_000).is_empty());
    assert!(delayed.tick(i64::MIN).is_empty());
    assert_eq!(delayed.tick(11_000).len(), 1);
}

#[test]
fn a_huge_on_delay_never_overflows() {
    let mut engine = engine(vec![smoke("smoke", u64::MAX)]);
    smoke_reading(&mut engine, 12.0, 1_000);

    assert!(engine.tick(i64::MAX).is_empty());
    assert_eq!(engine.next_deadline_ms(), Some(i64::MAX));
}

#[test]
fn the_next_deadline_is_the_earliest_pending_raise() {
    let mut engine = engine(vec![
        smoke("smoke", 5_000),
        low_pressure("pressure", 1_000),
        comm_lost("comm", 30_000),
    ]);
    assert_eq!(engine.next_deadline_ms(), None);

    smoke_reading(&mut engine, 12.0, 1_000);
    engine.on_reading("pump-1", "pressure", 0.1, 2_000);
    engine.set_external("comm", true, None, 0).unwrap();

    assert_eq!(engine.next_deadline_ms(), Some(3_000));
    engine.tick(3_000);
    assert_eq!(engine.next_deadline_ms(), Some(6_000));
}

// ---- off-delay --------------------------------------------------------------------------

/// A smoke rule with an off-delay, raised at t=1000 with 12.0.
fn raised_smoke_with_off_delay(off_delay_ms: u64) -> Engine {
    let mut spec = smoke("smoke", 0);
    spec.off_delay_ms = off_delay_ms;
    let mut engine = engine(vec![spec]);
    assert_eq!(smoke_reading(&mut engine, 12.0, 1_000).len(), 1);
    engine
}

#[test]
fn an_off_delayed_alarm_stays_active_until_its_delay_runs_out() {
    let mut engine = raised_smoke_with_off_delay(30_000);

    assert!(smoke_reading(&mut engine, 1.0, 2_000).is_empty());
    assert!(smoke_reading(&mut engine, 0.5, 20_000).is_empty());
    assert!(engine.tick(31_999).is_empty());

    let view = engine.alarm("smoke").unwrap();
    assert_eq!(view.state, AlarmState::Unacknowledged);
    assert!(view.active);
    assert_eq!(view.last_value, Some(0.5));
    assert_eq!(engine.next_deadline_ms(), Some(32_000));
}

#[test]
fn a_tick_clears_an_off_delayed_alarm_once_its_delay_runs_out() {
    let mut engine = raised_smoke_with_off_delay(30_000);
    smoke_reading(&mut engine, 1.0, 2_000);
    smoke_reading(&mut engine, 0.5, 20_000);

    let transitions = engine.tick(32_000);

    assert_eq!(
        transitions,
        vec![transition(
            "smoke",
            TransitionKind::Cleared,
            AlarmState::ReturnedUnacknowledged,
            false,
            Some(0.5),
            32_000
        )]
    );
    assert!(engine.tick(40_000).is_empty());
    assert_eq!(engine.next_deadline_ms(), None);
}

#[test]
fn an_off_delay_that_ran_out_before_a_reading_clears_at_the_time_it_ran_out() {
    let mut engine = raised_smoke_with_off_delay(30_000);
    smoke_reading(&mut engine, 1.0, 2_000);

    let transitions = smoke_reading(&mut engine, 2.0, 32_500);

    // Cleared when the off-delay ran out (32 s), with the value that held then.
    assert_eq!(
        transitions,
        vec![transition(
            "smoke",
            TransitionKind::Cleared,
            AlarmState::ReturnedUnacknowledged,
            false,
            Some(1.0),
            32_000
        )]
    );
}

#[test]
fn a_reading_back_in_the_raise_zone_cancels_a_pending_clear_and_the_delay_starts_over() {
    let mut engine = raised_smoke_with_off_delay(30_000);
    smoke_reading(&mut engine, 1.0, 2_000);

    assert!(smoke_reading(&mut engine, 11.0, 10_000).is_empty());
    assert_eq!(engine.next_deadline_ms(), None);
    assert!(engine.tick(40_000).is_empty());
    assert_eq!(state(&engine, "smoke"), AlarmState::Unacknowledged);

    smoke_reading(&mut engine, 1.0, 41_000);
    assert!(engine.tick(70_999).is_empty());
    assert_eq!(engine.tick(71_000).len(), 1);
    assert_eq!(state(&engine, "smoke"), AlarmState::ReturnedUnacknowledged);
}

#[test]
fn a_reading_in_the_deadband_cancels_a_pending_clear() {
    let mut engine = raised_smoke_with_off_delay(30_000);
    smoke_reading(&mut engine, 1.0, 2_000);

    assert!(smoke_reading(&mut engine, 9.0, 3_000).is_empty());

    assert_eq!(engine.next_deadline_ms(), None);
    assert!(engine.tick(60_000).is_empty());
    assert_eq!(state(&engine, "smoke"), AlarmState::Unacknowledged);
}

#[test]
fn an_acknowledged_off_delayed_alarm_returns_to_normal_when_its_delay_runs_out() {
    let mut engine = raised_smoke_with_off_delay(5_000);
    smoke_reading(&mut engine, 1.0, 2_000);

    engine.acknowledge("smoke", 3_000).unwrap();
    let transitions = engine.tick(7_000);

    assert_eq!(
        transitions,
        vec![transition(
            "smoke",
            TransitionKind::Cleared,
            AlarmState::Normal,
            false,
            Some(1.0),
            7_000
        )]
    );
}

#[test]
fn an_inactive_alarm_has_no_pending_clear() {
    let mut spec = smoke("smoke", 0);
    spec.off_delay_ms = 5_000;
    let mut engine = engine(vec![spec]);

    assert!(smoke_reading(&mut engine, 1.0, 1_000).is_empty());

    assert_eq!(engine.next_deadline_ms(), None);
    assert!(engine.tick(10_000).is_empty());
    assert_eq!(state(&engine, "smoke"), AlarmState::Normal);
}

#[test]
fn on_delay_and_off_delay_work_together() {
    let mut spec = smoke("smoke", 2_000);
    spec.off_delay_ms = 5_000;
    let mut engine = engine(vec![spec]);

    smoke_reading(&mut engine, 12.0, 1_000);
    assert_eq!(engine.next_deadline_ms(), Some(3_000));
    assert_eq!(engine.tick(3_000)[0].kind, TransitionKind::Raised);
    smoke_reading(&mut engine, 1.0, 4_000);
    assert_eq!(engine.next_deadline_ms(), Some(9_000));
    assert_eq!(engine.tick(9_000)[0].kind, TransitionKind::Cleared);
    assert_eq!(engine.next_deadline_ms(), None);
}

#[test]
fn an_old_reading_does_not_cancel_an_off_delay_and_an_old_tick_clears_nothing() {
    let mut engine = raised_smoke_with_off_delay(5_000);
    smoke_reading(&mut engine, 1.0, 10_000);

    assert!(smoke_reading(&mut engine, 12.0, 9_000).is_empty());
    assert!(engine.tick(2_000).is_empty());
    assert!(engine.tick(i64::MIN).is_empty());
    assert_eq!(engine.next_deadline_ms(), Some(15_000));
    assert_eq!(engine.tick(15_000).len(), 1);
}

#[test]
fn a_huge_off_delay_never_overflows() {
    let mut engine = raised_smoke_with_off_delay(u64::MAX);
    smoke_reading(&mut engine, 1.0, 2_000);

    assert!(engine.tick(i64::MAX).is_empty());
    assert_eq!(engine.next_deadline_ms(), Some(i64::MAX));
    assert_eq!(state(&engine, "smoke"), AlarmState::Unacknowledged);
}

#[test]
fn an_external_condition_honors_its_off_delay() {
    let mut spec = comm_lost("comm", 0);
    spec.off_delay_ms = 60_000;
    let mut engine = engine(vec![spec]);
    engine.set_external("comm", true, None, 1_000).unwrap();

    assert!(
        engine
            .set_external("comm", false, Some(1.0), 2_000)
            .unwrap()
            .is_empty()
    );
    assert_eq!(engine.next_deadline_ms(), Some(62_000));
    // The link flaps back: the pending clear is cancelled.
    assert!(
        engine
            .set_external("comm", true, None, 30_000)
            .unwrap()
            .is_empty()
    );
    assert!(engine.tick(62_000).is_empty());
    engine
        .set_external("comm", false, Some(2.0), 40_000)
        .unwrap();
    let transitions = engine.tick(100_000);

    assert_eq!(
        transitions,
        vec![transition(
            "comm",
            TransitionKind::Cleared,
            AlarmState::ReturnedUnacknowledged,
            false,
            Some(2.0),
            100_000
        )]
    );
}

#[test]
fn the_next_deadline_is_the_earliest_pending_raise_or_clear() {
    let mut pressure = low_pressure("pressure", 0);
    pressure.off_delay_ms = 10_000;
    let mut engine = engine(vec![smoke("smoke", 20_000), pressure]);
    engine.on_reading("pump-1", "pressure", 0.1, 1_000);
    smoke_reading(&mut engine, 12.0, 1_000);
    assert_eq!(engine.next_deadline_ms(), Some(21_000));

    engine.on_reading("pump-1", "pressure", 0.5, 2_000);

    assert_eq!(engine.next_deadline_ms(), Some(12_000));
    let first = engine.tick(12_000);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].kind, TransitionKind::Cleared);
    assert_eq!(engine.next_deadline_ms(), Some(21_000));
}

#[test]
fn a_restore_forgets_a_pending_clear() {
    let mut engine = raised_smoke_with_off_delay(5_000);
    smoke_reading(&mut engine, 1.0, 2_000);

    engine
        .restore("smoke", AlarmState::Acknowledged, Some(1.0))
        .unwrap();

    assert_eq!(engine.next_deadline_ms(), None);
    assert!(engine.tick(10_000).is_empty());
    // The new process's clock starts near zero: the off-delay starts again with it.
    assert!(smoke_reading(&mut engine, 1.0, 5).is_empty());
    assert_eq!(engine.next_deadline_ms(), Some(5_005));
}

// ---- time and bad values ----------------------------------------------------------------

#[test]
fn a_reading_older_than_the_last_one_is_ignored() {
    let mut engine = raised_smoke();
    smoke_reading(&mut engine, 12.0, 5_000);

    assert!(smoke_reading(&mut engine, 0.0, 4_999).is_empty());

    let view = engine.alarm("smoke").unwrap();
    assert_eq!(view.state, AlarmState::Unacknowledged);
    assert_eq!(view.last_value, Some(12.0));
    assert_eq!(smoke_reading(&mut engine, 0.0, 5_000).len(), 1);
}

#[test]
fn an_old_reading_does_not_start_or_cancel_an_on_delay() {
    let mut engine = engine(vec![smoke("smoke", 5_000)]);
    smoke_reading(&mut engine, 12.0, 10_000);

    assert!(smoke_reading(&mut engine, 1.0, 9_000).is_empty());
    assert_eq!(engine.next_deadline_ms(), Some(15_000));
    assert_eq!(engine.tick(15_000).len(), 1);

    let mut idle = self::engine(vec![smoke("smoke", 5_000)]);
    smoke_reading(&mut idle, 1.0, 10_000);
    assert!(smoke_reading(&mut idle, 12.0, 2_000).is_empty());
    assert_eq!(idle.next_deadline_ms(), None);
}

#[test]
fn a_reading_stamped_before_a_tick_already_run_is_still_applied() {
    let mut engine = raised_smoke();
    engine.tick(9_000);

    let transitions = smoke_reading(&mut engine, 1.0, 8_000);

    assert_eq!(transitions.len(), 1);
    assert_eq!(transitions[0].kind, TransitionKind::Cleared);
}

#[test]
fn a_non_finite_reading_is_ignored() {
    let mut engine = engine(vec![smoke("smoke", 1_000)]);
    smoke_reading(&mut engine, 12.0, 1_000);

    for value in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        assert!(smoke_reading(&mut engine, value, 1_500).is_empty());
    }

    let view = engine.alarm("smoke").unwrap();
    assert_eq!(view.last_value, Some(12.0));
    assert_eq!(engine.next_deadline_ms(), Some(2_000));
    // Ignored entirely: the NaN at 1_500 did not move the stale-reading mark either.
    assert!(smoke_reading(&mut engine, 12.0, 1_200).is_empty());
    assert_eq!(engine.tick(2_000).len(), 1);
}

// ---- routing readings -------------------------------------------------------------------

#[test]
fn every_rule_watching_a_point_reports_its_transition_in_spec_order() {
    let mut high_high = smoke("smoke-high-high", 0);
    high_high.condition = Condition::Above {
        limit: 20.0,
        deadband: 2.0,
    };
    let mut engine = engine(vec![smoke("smoke-high", 0), high_high]);

    let first = smoke_reading(&mut engine, 25.0, 1_000);
    let second = smoke_reading(&mut engine, 15.0, 2_000);

    let ids = |transitions: &[Transition]| {
        transitions
            .iter()
            .map(|transition| (transition.alarm_id.clone(), transition.kind))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(&first),
        vec![
            ("smoke-high".into(), TransitionKind::Raised),
            ("smoke-high-high".into(), TransitionKind::Raised)
        ]
    );
    assert_eq!(
        ids(&second),
        vec![("smoke-high-high".into(), TransitionKind::Cleared)]
    );
}

#[test]
fn a_reading_of_another_point_or_device_leaves_the_alarm_alone() {
    let mut engine = engine(vec![smoke("smoke", 0)]);

    assert!(
        engine
            .on_reading("smoke-12", "battery", 99.0, 1_000)
            .is_empty()
    );
    assert!(
        engine
            .on_reading("smoke-13", "density", 99.0, 1_000)
            .is_empty()
    );

    let view = engine.alarm("smoke").unwrap();
    assert_eq!(view.state, AlarmState::Normal);
    assert_eq!(view.last_value, None);
}

// ---- external conditions ----------------------------------------------------------------

#[test]
fn an_external_condition_raises_and_clears_its_alarm() {
    let mut engine = engine(vec![comm_lost("comm", 0)]);

    let raised = engine.set_external("comm", true, None, 1_000).unwrap();
    let again = engine.set_external("comm", true, None, 1_500).unwrap();
    let cleared = engine
        .set_external("comm", false, Some(1.0), 2_000)
        .unwrap();

    assert_eq!(
        raised,
        vec![transition(
            "comm",
            TransitionKind::Raised,
            AlarmState::Unacknowledged,
            true,
            None,
            1_000
        )]
    );
    assert!(again.is_empty());
    assert_eq!(
        cleared,
        vec![transition(
            "comm",
            TransitionKind::Cleared,
            AlarmState::ReturnedUnacknowledged,
            false,
            Some(1.0),
            2_000
        )]
    );
    assert_eq!(engine.alarm("comm").unwrap().last_value, Some(1.0));
}

#[test]
fn an_external_condition_honors_its_on_delay() {
    let mut engine = engine(vec![comm_lost("comm", 10_000)]);

    assert!(
        engine
            .set_external("comm", true, Some(3.0), 1_000)
            .unwrap()
            .is_empty()
    );
    assert!(engine.tick(10_999).is_empty());
    let transitions = engine.tick(11_000);

    assert_eq!(
        transitions,
        vec![transition(
            "comm",
            TransitionKind::Raised,
            AlarmState::Unacknowledged,
            true,
            Some(3.0),
            11_000
        )]
    );
}

#[test]
fn an_external_condition_that_ends_before_its_on_delay_raises_nothing() {
    let mut engine = engine(vec![comm_lost("comm", 10_000)]);
    engine.set_external("comm", true, None, 1_000).unwrap();

    assert!(
        engine
            .set_external("comm", false, None, 5_000)
            .unwrap()
            .is_empty()
    );
    assert!(engine.tick(20_000).is_empty());
    assert_eq!(state(&engine, "comm"), AlarmState::Normal);
}

#[test]
fn an_old_external_setting_is_ignored() {
    let mut engine = engine(vec![comm_lost("comm", 0)]);
    engine.set_external("comm", true, None, 5_000).unwrap();

    assert!(
        engine
            .set_external("comm", false, None, 4_000)
            .unwrap()
            .is_empty()
    );
    assert_eq!(state(&engine, "comm"), AlarmState::Unacknowledged);
}

#[test]
fn setting_an_external_condition_on_a_threshold_rule_is_refused() {
    let mut engine = engine(vec![smoke("smoke", 0)]);

    let error = engine.set_external("smoke", true, None, 1_000).unwrap_err();

    assert_eq!(error, RuleError::NotExternal("smoke".to_owned()));
    assert!(error.to_string().contains("`smoke`"));
    assert_eq!(state(&engine, "smoke"), AlarmState::Normal);
}

#[test]
fn setting_an_external_condition_on_an_unknown_alarm_is_refused() {
    let mut engine = engine(vec![comm_lost("comm", 0)]);

    let error = engine.set_external("nope", true, None, 1_000).unwrap_err();

    assert_eq!(error, RuleError::UnknownAlarm("nope".to_owned()));
}

#[test]
fn readings_never_reach_external_rules() {
    let mut spec = comm_lost("comm", 0);
    spec.device = "smoke-12".into();
    spec.point = "density".into();
    let mut engine = engine(vec![spec]);

    assert!(smoke_reading(&mut engine, 99.0, 1_000).is_empty());
    assert_eq!(engine.alarm("comm").unwrap().last_value, None);
}

// ---- compiling the specs ----------------------------------------------------------------

#[test]
fn a_new_engine_lists_every_alarm_normal_in_spec_order() {
    let engine = engine(vec![
        low_pressure("pressure", 0),
        smoke("smoke", 0),
        comm_lost("comm", 0),
    ]);

    let views: Vec<_> = engine
        .alarms()
        .map(|view| (&*view.spec.alarm_id, view.state, view.active))
        .collect();

    assert_eq!(
        views,
        vec![
            ("pressure", AlarmState::Normal, false),
            ("smoke", AlarmState::Normal, false),
            ("comm", AlarmState::Normal, false)
        ]
    );
    assert_eq!(
        engine.alarm("pressure").unwrap().spec,
        &low_pressure("pressure", 0)
    );
    assert!(engine.alarm("nope").is_none());
}

#[test]
fn an_engine_without_rules_is_valid_and_quiet() {
    let mut engine = engine(Vec::new());

    assert!(engine.on_reading("smoke-12", "density", 99.0, 0).is_empty());
    assert!(engine.tick(0).is_empty());
    assert_eq!(engine.alarms().count(), 0);
}

#[test]
fn engine_new_reports_every_bad_spec_at_once() {
    let with = |alarm_id: &str, condition: Condition| {
        let mut spec = smoke(alarm_id, 0);
        spec.condition = condition;
        spec
    };
    let specs = vec![
        smoke("smoke", 0),
        with(
            "nan-limit",
            Condition::Above {
                limit: f64::NAN,
                deadband: 1.0,
            },
        ),
        with(
            "negative-deadband",
            Condition::Below {
                limit: 0.3,
                deadband: -0.1,
            },
        ),
        smoke("smoke", 0),
        with(
            "both-bad",
            Condition::Below {
                limit: f64::INFINITY,
                deadband: f64::NAN,
            },
        ),
        with(
            "overflowing-deadband",
            Condition::Above {
                limit: -1e308,
                deadband: 1e308,
            },
        ),
        smoke("", 0),
        comm_lost("comm", 0),
    ];

    let errors = Engine::new(specs).unwrap_err();

    assert_eq!(
        errors,
        vec![
            RuleError::BadLimit {
                alarm_id: "nan-limit".to_owned()
            },
            RuleError::NegativeDeadband {
                alarm_id: "negative-deadband".to_owned(),
                deadband: -0.1
            },
            RuleError::DuplicateAlarmId("smoke".to_owned()),
            RuleError::BadLimit {
                alarm_id: "both-bad".to_owned()
            },
            RuleError::BadDeadband {
                alarm_id: "both-bad".to_owned()
            },
            RuleError::BadDeadband {
                alarm_id: "overflowing-deadband".to_owned()
            },
            RuleError::EmptyAlarmId { index: 6 },
        ]
    );
}

#[test]
fn spec_errors_name_the_alarm_in_their_message() {
    let messages = [
        RuleError::DuplicateAlarmId("smoke".to_owned()),
        RuleError::BadLimit {
            alarm_id: "smoke".to_owned(),
        },
        RuleError::BadDeadband {
            alarm_id: "smoke".to_owned(),
        },
        RuleError::NegativeDeadband {
            alarm_id: "smoke".to_owned(),
            deadband: -1.0,
        },
        RuleError::UnknownAlarm("smoke".to_owned()),
        RuleError::NotExternal("smoke".to_owned()),
    ]
    .map(|error| error.to_string());

    for message in messages {
        assert!(message.contains("`smoke`"), "{message}");
    }
    assert_eq!(
        RuleError::NegativeDeadband {
            alarm_id: "smoke".to_owned(),
            deadband: -1.0
        }
        .to_string(),
        "alarm `smoke`: the deadband must not be negative (it is -1)"
    );
}

// ---- restoring after a restart ---------------------------------------------------------

#[test]
fn a_restored_raised_alarm_whose_condition_still_holds_raises_nothing_new() {
    let mut engine = engine(vec![smoke("smoke", 0)]);
    engine
        .restore("smoke", AlarmState::Acknowledged, Some(12.0))
        .unwrap();
    // The new process's monotonic clock starts near zero, far before the old one's times.
    assert!(smoke_reading(&mut engine, 13.0, 5).is_empty());
    assert_eq!(state(&engine, "smoke"), AlarmState::Acknowledged);
    assert_eq!(engine.alarm("smoke").unwrap().last_value, Some(13.0));
}

#[test]
fn a_restored_acknowledged_alarm_whose_condition_cleared_returns_to_normal() {
    let mut engine = engine(vec![smoke("smoke", 0)]);
    engine
        .restore("smoke", AlarmState::Acknowledged, Some(12.0))
        .unwrap();
    assert_eq!(
        smoke_reading(&mut engine, 1.0, 5),
        vec![transition(
            "smoke",
            TransitionKind::Cleared,
            AlarmState::Normal,
            false,
            Some(1.0),
            5
        )]
    );
}

#[test]
fn a_restored_returned_alarm_can_be_acknowledged_and_restoring_an_unknown_alarm_fails() {
    let mut engine = engine(vec![smoke("smoke", 0)]);
    engine
        .restore("smoke", AlarmState::ReturnedUnacknowledged, None)
        .unwrap();
    let ack = engine.acknowledge("smoke", 1).unwrap();
    assert_eq!(ack.state, AlarmState::Normal);
    assert!(matches!(
        engine.restore("nope", AlarmState::Normal, None),
        Err(RuleError::UnknownAlarm(_))
    ));
}
