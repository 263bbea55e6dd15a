//! The rest of the ISA-18.2 lifecycle, one behaviour per test: latching and reset, shelving
//! (timed and one-shot), out of service, suppression by design, chatter, their combinations,
//! and saving an engine's state across a restart. Time is the `ts_ms` argument.

use shouwang_rules::{
    AckError, AlarmState, CHATTER_WINDOW_MS, CommandError, Engine, RuleError, RuleSpec, SavedAlarm,
    Shelf, Transition, TransitionKind,
};

use AlarmState::{Latched, Normal, OutOfService, ReturnedUnacknowledged, Shelved, Unacknowledged};
use TransitionKind as Kind;

use crate::{fire, smoke};

fn engine(specs: Vec<RuleSpec>) -> Engine {
    Engine::new(specs).expect("valid specs")
}

fn read(engine: &mut Engine, value: f64, ts_ms: i64) -> Vec<Transition> {
    engine.on_reading("smoke-12", "density", value, ts_ms)
}

fn state(engine: &Engine, alarm_id: &str) -> AlarmState {
    engine.alarm(alarm_id).expect("alarm exists").state
}

/// A transition of `alarm_id`; `active` follows from the state.
fn t(alarm_id: &str, kind: Kind, state: AlarmState, value: Option<f64>, ts_ms: i64) -> Transition {
    Transition {
        alarm_id: alarm_id.into(),
        kind,
        state,
        active: matches!(state, Unacknowledged | AlarmState::Acknowledged),
        value,
        ts_ms,
    }
}

/// `(kind, state)` of each transition.
fn kinds(transitions: &[Transition]) -> Vec<(Kind, AlarmState)> {
    transitions.iter().map(|t| (t.kind, t.state)).collect()
}

fn until(until_ms: i64) -> Shelf {
    Shelf {
        until_ms,
        one_shot: false,
    }
}

fn one_shot(until_ms: i64) -> Shelf {
    Shelf {
        until_ms,
        one_shot: true,
    }
}

/// A latching fire alarm raised at t=1000 with 12.0 and cleared at t=2000 with 1.0: `Latched`,
/// not acknowledged.
fn latched_fire() -> Engine {
    let mut engine = engine(vec![fire("fire")]);
    assert_eq!(
        kinds(&read(&mut engine, 12.0, 1_000)),
        [(Kind::Raised, Unacknowledged)]
    );
    assert_eq!(
        kinds(&read(&mut engine, 1.0, 2_000)),
        [(Kind::Cleared, Latched)]
    );
    engine
}

// ---- latching and reset ----------------------------------------------------------------

#[test]
fn a_latching_alarm_whose_condition_clears_stays_latched_until_reset() {
    let mut engine = engine(vec![fire("fire")]);
    read(&mut engine, 12.0, 1_000);

    let cleared = read(&mut engine, 1.0, 2_000);

    assert_eq!(
        cleared,
        [t("fire", Kind::Cleared, Latched, Some(1.0), 2_000)]
    );
    assert!(read(&mut engine, 1.0, 3_000).is_empty());
    assert!(engine.tick(10_000_000).is_empty());
    let view = engine.alarm("fire").unwrap();
    assert_eq!(view.state, Latched);
    assert!(!view.active);
    assert!(!view.condition_active);
}

#[test]
fn a_reset_returns_a_latched_alarm_to_normal_and_acknowledges_it() {
    let mut engine = latched_fire();

    let reset = engine.reset("fire", 3_000).unwrap();

    assert_eq!(reset, t("fire", Kind::Reset, Normal, None, 3_000));
    assert_eq!(state(&engine, "fire"), Normal);
    assert!(matches!(
        engine.acknowledge("fire", 4_000),
        Err(AckError::NothingToAcknowledge { state: Normal, .. })
    ));
}

#[test]
fn an_unacknowledged_latched_alarm_takes_one_acknowledgement_and_stays_latched() {
    let mut engine = latched_fire();

    let ack = engine.acknowledge("fire", 3_000).unwrap();

    assert_eq!(ack, t("fire", Kind::Acknowledged, Latched, None, 3_000));
    assert_eq!(
        engine.acknowledge("fire", 4_000),
        Err(AckError::NothingToAcknowledge {
            alarm_id: "fire".into(),
            state: Latched
        })
    );
    assert_eq!(engine.reset("fire", 5_000).unwrap().state, Normal);
}

#[test]
fn an_alarm_acknowledged_while_active_latches_acknowledged() {
    let mut engine = engine(vec![fire("fire")]);
    read(&mut engine, 12.0, 1_000);
    engine.acknowledge("fire", 1_500).unwrap();

    assert_eq!(
        kinds(&read(&mut engine, 1.0, 2_000)),
        [(Kind::Cleared, Latched)]
    );

    assert!(engine.acknowledge("fire", 3_000).is_err());
    assert_eq!(engine.reset("fire", 4_000).unwrap().kind, Kind::Reset);
}

#[test]
fn a_reset_is_refused_while_the_condition_is_still_active() {
    let mut engine = engine(vec![fire("fire")]);
    read(&mut engine, 12.0, 1_000);

    let error = engine.reset("fire", 2_000).unwrap_err();

    assert_eq!(
        error,
        CommandError::ConditionActive {
            alarm_id: "fire".into()
        }
    );
    assert_eq!(
        error.to_string(),
        "alarm `fire` cannot be reset while its condition is still active"
    );
    assert_eq!(state(&engine, "fire"), Unacknowledged);
}

#[test]
fn a_reset_is_refused_while_a_clear_waits_for_its_off_delay() {
    let mut spec = fire("fire");
    spec.off_delay_ms = 5_000;
    let mut engine = engine(vec![spec]);
    read(&mut engine, 12.0, 1_000);
    assert!(read(&mut engine, 1.0, 2_000).is_empty());

    assert!(matches!(
        engine.reset("fire", 3_000),
        Err(CommandError::ConditionActive { .. })
    ));
    assert_eq!(kinds(&engine.tick(7_000)), [(Kind::Cleared, Latched)]);
    assert!(engine.reset("fire", 8_000).is_ok());
}

#[test]
fn a_reset_is_refused_for_an_alarm_that_does_not_latch() {
    let mut engine = engine(vec![smoke("smoke", 0)]);
    read(&mut engine, 12.0, 1_000);
    read(&mut engine, 1.0, 2_000);

    let error = engine.reset("smoke", 3_000).unwrap_err();

    assert_eq!(
        error.to_string(),
        "alarm `smoke` does not latch: it returns to normal by itself, there is nothing to reset"
    );
    assert_eq!(state(&engine, "smoke"), ReturnedUnacknowledged);
}

#[test]
fn a_reset_is_refused_for_a_latching_alarm_that_is_not_latched_or_unknown() {
    let mut engine = engine(vec![fire("fire")]);

    assert_eq!(
        engine.reset("fire", 1_000),
        Err(CommandError::NotLatched {
            alarm_id: "fire".into(),
            state: Normal
        })
    );
    assert_eq!(
        engine.reset("fire-9", 1_000),
        Err(CommandError::UnknownAlarm("fire-9".into()))
    );
}

#[test]
fn a_latched_alarm_whose_condition_comes_back_is_raised_unacknowledged_and_latches_again() {
    let mut engine = latched_fire();
    engine.acknowledge("fire", 2_500).unwrap();

    assert_eq!(
        read(&mut engine, 13.0, 3_000),
        [t("fire", Kind::Raised, Unacknowledged, Some(13.0), 3_000)]
    );
    assert_eq!(
        kinds(&read(&mut engine, 1.0, 4_000)),
        [(Kind::Cleared, Latched)]
    );
    // The new occurrence was not acknowledged: it takes an acknowledgement again.
    assert!(engine.acknowledge("fire", 5_000).is_ok());
}

// ---- shelving --------------------------------------------------------------------------

#[test]
fn a_shelved_alarm_follows_its_condition_without_announcing_it() {
    let mut engine = engine(vec![smoke("smoke", 0)]);

    let shelved = engine.shelve("smoke", until(60_000), 1_000).unwrap();

    assert_eq!(shelved, t("smoke", Kind::Shelved, Shelved, None, 1_000));
    assert!(read(&mut engine, 12.0, 2_000).is_empty());
    let view = engine.alarm("smoke").unwrap();
    assert_eq!(view.state, Shelved);
    assert!(!view.active);
    assert!(view.condition_active);
    assert_eq!(view.shelf, Some(until(60_000)));
    assert!(read(&mut engine, 1.0, 3_000).is_empty());
    assert!(!engine.alarm("smoke").unwrap().condition_active);

    assert_eq!(
        engine.unshelve("smoke", 4_000).unwrap(),
        [t("smoke", Kind::Unshelved, Normal, None, 4_000)]
    );
}

#[test]
fn a_timed_shelf_ends_at_its_until_ms_by_tick_and_an_active_condition_is_raised_again() {
    let mut engine = engine(vec![smoke("smoke", 0)]);
    engine.shelve("smoke", until(10_000), 1_000).unwrap();
    read(&mut engine, 12.0, 2_000);

    assert_eq!(engine.next_deadline_ms(), Some(10_000));
    assert!(engine.tick(9_999).is_empty());
    let back = engine.tick(10_000);

    assert_eq!(
        back,
        [
            t("smoke", Kind::Unshelved, Normal, None, 10_000),
            t("smoke", Kind::Raised, Unacknowledged, Some(12.0), 10_000),
        ]
    );
    assert_eq!(engine.next_deadline_ms(), None);
}

#[test]
fn a_timed_shelf_ending_with_the_condition_inactive_brings_the_alarm_back_normal() {
    let mut engine = engine(vec![smoke("smoke", 0)]);
    read(&mut engine, 12.0, 500);
    read(&mut engine, 1.0, 600);
    engine.shelve("smoke", until(10_000), 1_000).unwrap();

    assert_eq!(kinds(&engine.tick(10_000)), [(Kind::Unshelved, Normal)]);
    // The unacknowledged return before the shelf is not brought back.
    assert!(engine.acknowledge("smoke", 11_000).is_err());
}

#[test]
fn a_one_shot_shelf_ends_when_the_condition_clears() {
    let mut engine = engine(vec![smoke("smoke", 0)]);
    read(&mut engine, 12.0, 1_000);
    engine.shelve("smoke", one_shot(600_000), 2_000).unwrap();

    assert!(read(&mut engine, 9.0, 3_000).is_empty());
    assert_eq!(
        read(&mut engine, 1.0, 4_000),
        [t("smoke", Kind::Unshelved, Normal, None, 4_000)]
    );
    // Shown again: the next raise is announced.
    assert_eq!(
        kinds(&read(&mut engine, 12.0, 5_000)),
        [(Kind::Raised, Unacknowledged)]
    );
    assert_eq!(engine.next_deadline_ms(), None);
}

#[test]
fn a_one_shot_shelf_ends_at_its_until_ms_if_the_condition_has_not_cleared() {
    let mut engine = engine(vec![smoke("smoke", 0)]);
    read(&mut engine, 12.0, 1_000);
    engine.shelve("smoke", one_shot(10_000), 2_000).unwrap();

    assert_eq!(
        kinds(&engine.tick(10_000)),
        [(Kind::Unshelved, Normal), (Kind::Raised, Unacknowledged)]
    );
}

#[test]
fn a_one_shot_shelf_on_an_inactive_alarm_covers_its_next_occurrence() {
    let mut engine = engine(vec![smoke("smoke", 0)]);
    engine.shelve("smoke", one_shot(600_000), 1_000).unwrap();

    assert!(read(&mut engine, 12.0, 2_000).is_empty());
    assert_eq!(
        kinds(&read(&mut engine, 1.0, 3_000)),
        [(Kind::Unshelved, Normal)]
    );
}

#[test]
fn unshelving_an_acknowledged_alarm_whose_condition_holds_announces_it_again() {
    let mut engine = engine(vec![smoke("smoke", 0)]);
    read(&mut engine, 12.0, 1_000);
    engine.acknowledge("smoke", 1_500).unwrap();
    engine.shelve("smoke", until(60_000), 2_000).unwrap();

    let back = engine.unshelve("smoke", 3_000).unwrap();

    assert_eq!(
        back,
        [
            t("smoke", Kind::Unshelved, Normal, None, 3_000),
            t("smoke", Kind::Raised, Unacknowledged, Some(12.0), 3_000),
        ]
    );
}

#[test]
fn a_shelf_that_does_not_end_after_it_starts_is_refused() {
    let mut engine = engine(vec![smoke("smoke", 0)]);

    let error = engine.shelve("smoke", until(1_000), 1_000).unwrap_err();

    assert_eq!(
        error.to_string(),
        "alarm `smoke`: a shelf must end after it starts (it would end at 1000 ms, it starts at 1000 ms)"
    );
    assert_eq!(state(&engine, "smoke"), Normal);
    assert!(engine.shelve("smoke", until(1_001), 1_000).is_ok());
}

#[test]
fn unshelving_an_alarm_that_is_not_shelved_is_refused() {
    let mut engine = engine(vec![smoke("smoke", 0)]);

    let error = engine.unshelve("smoke", 1_000).unwrap_err();

    assert_eq!(
        error,
        CommandError::NotShelved {
            alarm_id: "smoke".into(),
            state: Normal
        }
    );
    assert_eq!(
        error.to_string(),
        "alarm `smoke` is not shelved (it is Normal)"
    );
}

#[test]
fn shelving_a_shelved_alarm_replaces_its_shelf() {
    let mut engine = engine(vec![smoke("smoke", 0)]);
    engine.shelve("smoke", until(10_000), 1_000).unwrap();

    let again = engine.shelve("smoke", until(20_000), 2_000).unwrap();

    assert_eq!(again, t("smoke", Kind::Shelved, Shelved, None, 2_000));
    assert!(engine.tick(10_000).is_empty());
    assert_eq!(kinds(&engine.tick(20_000)), [(Kind::Unshelved, Normal)]);
}

#[test]
fn acknowledging_a_shelved_alarm_is_refused_naming_its_state() {
    let mut engine = engine(vec![smoke("smoke", 0)]);
    read(&mut engine, 12.0, 1_000);
    engine.shelve("smoke", until(10_000), 2_000).unwrap();

    assert_eq!(
        engine.acknowledge("smoke", 3_000),
        Err(AckError::NothingToAcknowledge {
            alarm_id: "smoke".into(),
            state: Shelved
        })
    );
}

#[test]
fn a_latched_alarm_that_is_shelved_comes_back_latched_and_cannot_be_reset_meanwhile() {
    let mut engine = latched_fire();
    engine.shelve("fire", until(10_000), 3_000).unwrap();

    assert_eq!(
        engine.reset("fire", 4_000),
        Err(CommandError::NotLatched {
            alarm_id: "fire".into(),
            state: Shelved
        })
    );
    assert_eq!(
        engine.tick(10_000),
        [t("fire", Kind::Unshelved, Latched, None, 10_000)]
    );
    // Still unacknowledged, as it was shelved.
    assert_eq!(engine.acknowledge("fire", 11_000).unwrap().state, Latched);
    assert_eq!(engine.reset("fire", 12_000).unwrap().state, Normal);
}

#[test]
fn a_one_shot_shelf_on_a_latched_alarm_ends_with_the_next_clear_and_the_latch_held() {
    let mut engine = latched_fire();
    engine.shelve("fire", one_shot(600_000), 3_000).unwrap();

    assert!(read(&mut engine, 12.0, 4_000).is_empty());
    assert_eq!(
        read(&mut engine, 1.0, 5_000),
        [t("fire", Kind::Unshelved, Latched, None, 5_000)]
    );
    assert_eq!(engine.reset("fire", 6_000).unwrap().state, Normal);
}

#[test]
fn a_latching_alarm_that_clears_while_shelved_comes_back_latched() {
    let mut engine = engine(vec![fire("fire")]);
    read(&mut engine, 12.0, 1_000);
    engine.shelve("fire", until(60_000), 2_000).unwrap();
    assert!(read(&mut engine, 1.0, 3_000).is_empty());

    assert_eq!(
        kinds(&engine.unshelve("fire", 4_000).unwrap()),
        [(Kind::Unshelved, Latched)]
    );
}

#[test]
fn a_latching_alarm_whose_condition_comes_and_goes_only_while_shelved_does_not_latch() {
    let mut engine = engine(vec![fire("fire")]);
    engine.shelve("fire", until(60_000), 1_000).unwrap();
    read(&mut engine, 12.0, 2_000);
    read(&mut engine, 1.0, 3_000);

    assert_eq!(
        kinds(&engine.unshelve("fire", 4_000).unwrap()),
        [(Kind::Unshelved, Normal)]
    );
}

// ---- out of service --------------------------------------------------------------------

#[test]
fn an_alarm_out_of_service_announces_nothing_until_it_is_returned() {
    let mut engine = engine(vec![smoke("smoke", 0)]);

    let removed = engine.remove_from_service("smoke", 1_000).unwrap();

    assert_eq!(
        removed,
        t("smoke", Kind::RemovedFromService, OutOfService, None, 1_000)
    );
    for (value, ts_ms) in [(12.0, 2_000), (1.0, 3_000), (12.0, 4_000)] {
        assert!(read(&mut engine, value, ts_ms).is_empty());
    }
    assert!(engine.tick(100_000_000).is_empty());
    assert_eq!(engine.next_deadline_ms(), None);
    assert_eq!(
        engine.return_to_service("smoke", 5_000).unwrap(),
        [
            t("smoke", Kind::ReturnedToService, Normal, None, 5_000),
            t("smoke", Kind::Raised, Unacknowledged, Some(12.0), 5_000),
        ]
    );
}

#[test]
fn removing_an_alarm_twice_or_returning_one_in_service_is_refused() {
    let mut engine = engine(vec![smoke("smoke", 0)]);

    assert_eq!(
        engine.return_to_service("smoke", 1_000),
        Err(CommandError::NotOutOfService {
            alarm_id: "smoke".into(),
            state: Normal
        })
    );
    engine.remove_from_service("smoke", 2_000).unwrap();
    let error = engine.remove_from_service("smoke", 3_000).unwrap_err();
    assert_eq!(error.to_string(), "alarm `smoke` is already out of service");
}

#[test]
fn an_alarm_taken_out_of_service_while_chattering_stops_chattering_and_counts_afresh() {
    let mut engine = engine(vec![smoke("smoke", 0)]);
    for (value, ts_ms) in [(12.0, 1_000), (1.0, 2_000), (12.0, 3_000), (1.0, 4_000)] {
        read(&mut engine, value, ts_ms);
    }
    assert_eq!(
        kinds(&read(&mut engine, 12.0, 5_000)),
        [(Kind::ChatterStarted, Unacknowledged)]
    );

    let removed = engine.remove_from_service("smoke", 6_000).unwrap();

    assert_eq!(removed.state, OutOfService);
    assert!(!engine.alarm("smoke").unwrap().chattering);
    assert_eq!(engine.next_deadline_ms(), None);
    assert!(read(&mut engine, 1.0, 7_000).is_empty());
    assert!(read(&mut engine, 12.0, 8_000).is_empty());
    assert_eq!(
        kinds(&engine.return_to_service("smoke", 9_000).unwrap()),
        [
            (Kind::ReturnedToService, Normal),
            (Kind::Raised, Unacknowledged)
        ]
    );
    // That raise counts as the first: two more within a minute start chatter again.
    let more: Vec<_> = [(1.0, 10_000), (12.0, 11_000), (1.0, 12_000), (12.0, 13_000)]
        .into_iter()
        .flat_map(|(value, ts_ms)| read(&mut engine, value, ts_ms))
        .collect();
    assert_eq!(
        kinds(&more),
        [
            (Kind::Cleared, ReturnedUnacknowledged),
            (Kind::Raised, Unacknowledged),
            (Kind::Cleared, ReturnedUnacknowledged),
            (Kind::ChatterStarted, Unacknowledged),
        ]
    );
}

#[test]
fn a_shelved_alarm_taken_out_of_service_stays_out_when_its_shelf_ends() {
    let mut engine = engine(vec![smoke("smoke", 0)]);
    engine.shelve("smoke", until(10_000), 1_000).unwrap();

    let removed = engine.remove_from_service("smoke", 2_000).unwrap();

    assert_eq!(removed.state, OutOfService);
    read(&mut engine, 12.0, 3_000);
    assert_eq!(
        engine.tick(10_000),
        [t("smoke", Kind::Unshelved, OutOfService, None, 10_000)]
    );
    assert_eq!(
        kinds(&engine.return_to_service("smoke", 11_000).unwrap()),
        [
            (Kind::ReturnedToService, Normal),
            (Kind::Raised, Unacknowledged)
        ]
    );
}

// ---- suppression by design ---------------------------------------------------------------

#[test]
fn a_suppressed_alarm_announces_nothing_and_comes_back_when_unsuppressed() {
    let mut engine = engine(vec![smoke("smoke", 0)]);
    read(&mut engine, 12.0, 1_000);

    let suppressed = engine.set_suppressed("smoke", true, 2_000).unwrap();

    assert_eq!(
        suppressed,
        [t(
            "smoke",
            Kind::Suppressed,
            AlarmState::Suppressed,
            None,
            2_000
        )]
    );
    assert!(read(&mut engine, 1.0, 3_000).is_empty());
    assert!(read(&mut engine, 12.0, 4_000).is_empty());
    assert_eq!(
        engine.set_suppressed("smoke", false, 5_000).unwrap(),
        [
            t("smoke", Kind::Unsuppressed, Normal, None, 5_000),
            t("smoke", Kind::Raised, Unacknowledged, Some(12.0), 5_000),
        ]
    );
}

#[test]
fn setting_suppression_to_what_it_already_is_returns_nothing() {
    let mut engine = engine(vec![smoke("smoke", 0)]);

    assert_eq!(engine.set_suppressed("smoke", false, 1_000), Ok(Vec::new()));
    assert_eq!(
        engine.set_suppressed("smoke", true, 2_000).unwrap().len(),
        1
    );
    assert_eq!(engine.set_suppressed("smoke", true, 3_000), Ok(Vec::new()));
    assert_eq!(
        engine.set_suppressed("smoke-9", true, 4_000),
        Err(CommandError::UnknownAlarm("smoke-9".into()))
    );
}

#[test]
fn a_latched_alarm_suppressed_keeps_its_latch_and_is_reset_once_it_comes_back() {
    let mut engine = latched_fire();
    engine.set_suppressed("fire", true, 3_000).unwrap();

    assert_eq!(
        engine.reset("fire", 4_000),
        Err(CommandError::NotLatched {
            alarm_id: "fire".into(),
            state: AlarmState::Suppressed
        })
    );
    assert_eq!(
        engine.set_suppressed("fire", false, 5_000).unwrap(),
        [t("fire", Kind::Unsuppressed, Latched, None, 5_000)]
    );
    assert_eq!(engine.reset("fire", 6_000).unwrap().state, Normal);
}

#[test]
fn a_suppressed_and_shelved_alarm_comes_back_only_when_both_end() {
    let mut engine = engine(vec![smoke("smoke", 0)]);
    engine.set_suppressed("smoke", true, 1_000).unwrap();
    assert_eq!(
        engine.shelve("smoke", until(10_000), 2_000).unwrap().state,
        Shelved
    );
    read(&mut engine, 12.0, 3_000);

    assert_eq!(
        kinds(&engine.tick(10_000)),
        [(Kind::Unshelved, AlarmState::Suppressed)]
    );
    assert_eq!(
        kinds(&engine.set_suppressed("smoke", false, 11_000).unwrap()),
        [(Kind::Unsuppressed, Normal), (Kind::Raised, Unacknowledged)]
    );
}

// ---- chatter -----------------------------------------------------------------------------

/// Readings alternating 12 and 1 every `step_ms` from `from_ms`, `count` of them.
fn flapping(engine: &mut Engine, from_ms: i64, step_ms: i64, count: i64) -> Vec<Transition> {
    (0..count)
        .flat_map(|i| {
            let value = if i % 2 == 0 { 12.0 } else { 1.0 };
            read(engine, value, from_ms + i * step_ms)
        })
        .collect()
}

#[test]
fn a_third_raise_within_a_minute_starts_chatter_with_one_transition() {
    let mut engine = engine(vec![smoke("smoke", 0)]);

    let transitions = flapping(&mut engine, 1_000, 1_000, 5);

    assert_eq!(
        kinds(&transitions),
        [
            (Kind::Raised, Unacknowledged),
            (Kind::Cleared, ReturnedUnacknowledged),
            (Kind::Raised, Unacknowledged),
            (Kind::Cleared, ReturnedUnacknowledged),
            (Kind::ChatterStarted, Unacknowledged),
        ]
    );
    assert_eq!(transitions[4].value, Some(12.0));
    assert!(engine.alarm("smoke").unwrap().chattering);
}

#[test]
fn a_chattering_alarm_makes_one_transition_for_dozens_of_raises() {
    let mut engine = engine(vec![smoke("smoke", 0)]);

    let transitions = flapping(&mut engine, 1_000, 500, 100);

    let kinds: Vec<Kind> = transitions.iter().map(|t| t.kind).collect();
    assert_eq!(
        kinds,
        [
            Kind::Raised,
            Kind::Cleared,
            Kind::Raised,
            Kind::Cleared,
            Kind::ChatterStarted
        ]
    );
    let view = engine.alarm("smoke").unwrap();
    assert_eq!(view.state, Unacknowledged);
    assert!(view.active);
}

#[test]
fn chatter_ends_a_minute_after_the_last_raise_and_an_active_condition_is_raised_again() {
    let mut engine = engine(vec![smoke("smoke", 0)]);
    flapping(&mut engine, 1_000, 1_000, 8);
    // The last raise was at 7,000; the condition comes back active at 9,000 (another raise).
    read(&mut engine, 12.0, 9_000);

    let end = 9_000 + CHATTER_WINDOW_MS;
    assert_eq!(engine.next_deadline_ms(), Some(end));
    assert!(engine.tick(end - 1).is_empty());
    assert_eq!(
        engine.tick(end),
        [
            t("smoke", Kind::ChatterEnded, Normal, Some(12.0), end),
            t("smoke", Kind::Raised, Unacknowledged, Some(12.0), end),
        ]
    );
    assert!(!engine.alarm("smoke").unwrap().chattering);
}

#[test]
fn chatter_ending_with_the_condition_inactive_returns_the_alarm_to_normal() {
    let mut engine = engine(vec![smoke("smoke", 0)]);
    flapping(&mut engine, 1_000, 1_000, 6);
    // Acknowledged while chattering: the chatter summary is an alarm like any other.
    assert_eq!(
        engine.acknowledge("smoke", 6_500).unwrap().state,
        AlarmState::Acknowledged
    );

    assert_eq!(
        kinds(&engine.tick(5_000 + CHATTER_WINDOW_MS)),
        [(Kind::ChatterEnded, Normal)]
    );
}

#[test]
fn three_raises_spanning_a_full_minute_never_chatter() {
    let mut engine = engine(vec![smoke("smoke", 0)]);

    // Raises 30 s apart: every three span exactly 60 s.
    let transitions = flapping(&mut engine, 0, CHATTER_WINDOW_MS / 4, 12);

    assert!(transitions.iter().all(|t| t.kind != Kind::ChatterStarted));
    assert_eq!(transitions.len(), 12);
}

#[test]
fn three_raises_just_within_a_minute_chatter() {
    let mut engine = engine(vec![smoke("smoke", 0)]);
    let step = (CHATTER_WINDOW_MS - 1) / 4;

    let transitions = flapping(&mut engine, 0, step, 5);

    assert_eq!(transitions.last().unwrap().kind, Kind::ChatterStarted);
}

#[test]
fn a_chattering_latching_alarm_comes_back_latched() {
    let mut engine = engine(vec![fire("fire")]);
    let transitions = flapping(&mut engine, 1_000, 1_000, 6);
    assert_eq!(
        kinds(&transitions),
        [
            (Kind::Raised, Unacknowledged),
            (Kind::Cleared, Latched),
            (Kind::Raised, Unacknowledged),
            (Kind::Cleared, Latched),
            (Kind::ChatterStarted, Unacknowledged),
        ]
    );

    assert_eq!(
        kinds(&engine.tick(5_000 + CHATTER_WINDOW_MS)),
        [(Kind::ChatterEnded, Latched)]
    );
    assert_eq!(engine.reset("fire", 70_000).unwrap().state, Normal);
}

// ---- saving and restoring ----------------------------------------------------------------

/// Saves `engine` at `saved_at_ms`, through JSON, into a new engine of `specs` whose clock
/// reads `now_ms`.
fn through_json(engine: &Engine, saved_at_ms: i64, specs: Vec<RuleSpec>, now_ms: i64) -> Engine {
    let json = serde_json::to_string(&engine.save(saved_at_ms)).unwrap();
    let saved: Vec<SavedAlarm> = serde_json::from_str(&json).unwrap();
    let mut restored = Engine::new(specs).unwrap();
    assert_eq!(restored.restore_saved(saved, now_ms), Vec::new());
    restored
}

#[test]
fn a_restored_shelf_has_as_long_left_on_the_new_clock() {
    let mut before = engine(vec![smoke("smoke", 0)]);
    read(&mut before, 12.0, 5_000_000);
    before.shelve("smoke", until(5_600_000), 5_000_000).unwrap();

    // Saved 100 s into the shelf; the restarted gateway's clock reads 2,000.
    let mut after = through_json(&before, 5_100_000, vec![smoke("smoke", 0)], 2_000);

    assert_eq!(state(&after, "smoke"), Shelved);
    assert_eq!(after.next_deadline_ms(), Some(502_000));
    assert!(after.tick(501_999).is_empty());
    assert_eq!(
        kinds(&after.tick(502_000)),
        [(Kind::Unshelved, Normal), (Kind::Raised, Unacknowledged)]
    );
}

#[test]
fn a_restored_chattering_latched_alarm_goes_on_as_it_would_have() {
    let mut before = engine(vec![fire("fire")]);
    flapping(&mut before, 1_000, 1_000, 6);
    let mut after = through_json(&before, 10_000, vec![fire("fire")], 0);

    // Chatter ends 60 s after the last raise (5,000): 55 s after the save.
    assert_eq!(after.next_deadline_ms(), Some(55_000));
    assert!(read(&mut after, 12.0, 1_000).is_empty());
    assert!(read(&mut after, 1.0, 2_000).is_empty());
    assert!(after.tick(1_000 + CHATTER_WINDOW_MS - 1).is_empty());
    assert_eq!(
        kinds(&after.tick(1_000 + CHATTER_WINDOW_MS)),
        [(Kind::ChatterEnded, Latched)]
    );
    assert!(after.reset("fire", 70_000).is_ok());
}

#[test]
fn restoring_saved_alarms_this_engine_does_not_have_skips_them_by_name() {
    let mut before = engine(vec![smoke("smoke", 0), fire("fire")]);
    read(&mut before, 12.0, 1_000);
    let saved = before.save(2_000);
    assert_eq!(saved[1].alarm_id(), "fire");

    let mut after = engine(vec![smoke("smoke", 0)]);
    let skipped = after.restore_saved(saved, 0);

    assert_eq!(skipped, [RuleError::UnknownAlarm("fire".into())]);
    assert_eq!(state(&after, "smoke"), Unacknowledged);
}

#[test]
fn a_saved_latch_of_a_rule_that_no_longer_latches_returns_unacknowledged() {
    let before = latched_fire();

    let mut after = engine(vec![smoke("fire", 0)]);
    after.restore_saved(before.save(3_000), 0);

    assert_eq!(state(&after, "fire"), ReturnedUnacknowledged);
}

#[test]
fn restoring_from_a_state_alone_keeps_a_latch_and_out_of_service_and_refuses_a_shelf() {
    let mut engine = engine(vec![fire("fire"), smoke("smoke", 0)]);

    engine.restore("fire", Latched, Some(1.0)).unwrap();
    engine.restore("smoke", OutOfService, None).unwrap();

    assert_eq!(state(&engine, "fire"), Latched);
    assert_eq!(engine.reset("fire", 1).unwrap().state, Normal);
    assert_eq!(
        kinds(&engine.return_to_service("smoke", 2).unwrap()),
        [(Kind::ReturnedToService, Normal)]
    );
    assert_eq!(
        engine.restore("smoke", Shelved, None),
        Err(RuleError::ShelfNotRestorable("smoke".into()))
    );
}

// ---- on the wire -------------------------------------------------------------------------

#[test]
fn every_state_and_transition_kind_travels_in_snake_case() {
    let states = [
        (Latched, "latched"),
        (Shelved, "shelved"),
        (OutOfService, "out_of_service"),
        (AlarmState::Suppressed, "suppressed"),
        (ReturnedUnacknowledged, "returned_unacknowledged"),
    ];
    for (state, name) in states {
        assert_eq!(serde_json::to_value(state).unwrap(), name);
        assert_eq!(
            serde_json::from_value::<AlarmState>(name.into()).unwrap(),
            state
        );
    }
    let kinds = [
        (Kind::Reset, "reset"),
        (Kind::Shelved, "shelved"),
        (Kind::Unshelved, "unshelved"),
        (Kind::RemovedFromService, "removed_from_service"),
        (Kind::ReturnedToService, "returned_to_service"),
        (Kind::Suppressed, "suppressed"),
        (Kind::Unsuppressed, "unsuppressed"),
        (Kind::ChatterStarted, "chatter_started"),
        (Kind::ChatterEnded, "chatter_ended"),
    ];
    for (kind, name) in kinds {
        assert_eq!(serde_json::to_value(kind).unwrap(), name);
        assert_eq!(serde_json::from_value::<Kind>(name.into()).unwrap(), kind);
    }
}
