//! Model test: random sequences of readings, ticks, acknowledgements and external settings,
//! some out of order or non-finite, run against the engine and against a small reference model
//! written from the spec's wording, with the ISA-18.2 state table as plain data.
//!
//! After every step: the transitions match the model's, every alarm's state and value match,
//! `active` agrees with the state (Normal and ReturnedUnacknowledged inactive, Unacknowledged and
//! Acknowledged active), and every returned transition's state is the alarm's state afterwards.

use proptest::prelude::*;
use shouwang_rules::{
    AckError, AlarmState, Condition, Engine, Priority, RuleSpec, SignalClass, Transition,
    TransitionKind,
};

use AlarmState::{Acknowledged, Normal, ReturnedUnacknowledged, Unacknowledged};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    Raise,
    Clear,
    Ack,
}

/// The state table, one row per bullet of the spec. Anything not listed changes nothing.
const TABLE: [(AlarmState, Event, AlarmState, TransitionKind); 6] = [
    (Normal, Event::Raise, Unacknowledged, TransitionKind::Raised),
    (
        Unacknowledged,
        Event::Clear,
        ReturnedUnacknowledged,
        TransitionKind::Cleared,
    ),
    (
        Unacknowledged,
        Event::Ack,
        Acknowledged,
        TransitionKind::Acknowledged,
    ),
    (Acknowledged, Event::Clear, Normal, TransitionKind::Cleared),
    (
        ReturnedUnacknowledged,
        Event::Ack,
        Normal,
        TransitionKind::Acknowledged,
    ),
    (
        ReturnedUnacknowledged,
        Event::Raise,
        Unacknowledged,
        TransitionKind::Raised,
    ),
];

fn table(state: AlarmState, event: Event) -> Option<(AlarmState, TransitionKind)> {
    TABLE
        .iter()
        .find(|row| row.0 == state && row.1 == event)
        .map(|row| (row.2, row.3))
}

fn active(state: AlarmState) -> bool {
    state == Unacknowledged || state == Acknowledged
}

/// The points readings can go to; the last one is watched by no rule.
const POINTS: [(&str, &str); 3] = [
    ("smoke-12", "density"),
    ("pump-1", "pressure"),
    ("smoke-12", "battery"),
];

/// Values that sit on the limits and deadband edges of the rules below.
const EDGES: [f64; 10] = [-1.0, 0.0, 0.5, 1.0, 1.5, 8.0, 9.0, 10.0, 15.0, 16.0];

fn specs(delays: [u64; 4]) -> Vec<RuleSpec> {
    let spec = |alarm_id: &str, (device, point): (&str, &str), condition, on_delay_ms| RuleSpec {
        alarm_id: alarm_id.into(),
        device: device.into(),
        point: point.into(),
        class: SignalClass::Alarm,
        priority: Priority::High,
        condition,
        on_delay_ms,
        off_delay_ms: 0,
    };
    vec![
        spec(
            "smoke-high",
            POINTS[0],
            Condition::Above {
                limit: 10.0,
                deadband: 2.0,
            },
            delays[0],
        ),
        spec(
            "smoke-high-high",
            POINTS[0],
            Condition::Above {
                limit: 15.0,
                deadband: 0.0,
            },
            delays[1],
        ),
        spec(
            "pressure-low",
            POINTS[1],
            Condition::Below {
                limit: 0.0,
                deadband: 1.0,
            },
            delays[2],
        ),
        // Watches a point by name, but readings must never reach it.
        spec("comm-lost", POINTS[0], Condition::External, delays[3]),
    ]
}

/// One alarm as the spec describes it.
#[derive(Debug)]
struct ModelAlarm {
    spec: RuleSpec,
    state: AlarmState,
    /// Since when the raise condition has held while the alarm was not active.
    holding_since: Option<i64>,
    newest_input_ms: Option<i64>,
    last_value: Option<f64>,
}

impl ModelAlarm {
    fn transition(&mut self, event: Event, value: Option<f64>, ts_ms: i64) -> Option<Transition> {
        let (state, kind) = table(self.state, event)?;
        self.state = state;
        Some(Transition {
            alarm_id: self.spec.alarm_id.clone(),
            kind,
            state,
            active: active(state),
            value,
            ts_ms,
        })
    }

    fn due(&self, ts_ms: i64) -> bool {
        self.holding_since
            .is_some_and(|since| ts_ms >= since && (ts_ms - since) as u64 >= self.spec.on_delay_ms)
    }

    /// `meets_raise` / `meets_clear`: where the input stands against the condition.
    fn input(
        &mut self,
        meets_raise: bool,
        meets_clear: bool,
        value: Option<f64>,
        ts_ms: i64,
    ) -> Option<Transition> {
        if self.newest_input_ms.is_some_and(|newest| ts_ms < newest) {
            return None;
        }
        self.newest_input_ms = Some(ts_ms);
        self.last_value = value;
        if active(self.state) {
            return if meets_clear {
                self.transition(Event::Clear, value, ts_ms)
            } else {
                None
            };
        }
        if !meets_raise {
            self.holding_since = None;
            return None;
        }
        self.holding_since = self.holding_since.or(Some(ts_ms));
        self.tick(ts_ms)
    }

    fn tick(&mut self, ts_ms: i64) -> Option<Transition> {
        if !self.due(ts_ms) {
            return None;
        }
        self.holding_since = None;
        self.transition(Event::Raise, self.last_value, ts_ms)
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// A reading `dt_ms` after the previous step (or `dt_ms` before it when `late`).
    Reading {
        point: usize,
        value: f64,
        dt_ms: i64,
        late: bool,
    },
    Tick {
        dt_ms: i64,
    },
    Ack {
        alarm: usize,
        dt_ms: i64,
    },
    External {
        active: bool,
        value: Option<f64>,
        dt_ms: i64,
        late: bool,
    },
}

fn value() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => proptest::sample::select(EDGES.to_vec()),
        4 => -3.0..20.0,
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let dt_ms = 0i64..40;
    prop_oneof![
        8 => (0..POINTS.len(), value(), dt_ms.clone(), proptest::bool::weighted(0.1)).prop_map(
            |(point, value, dt_ms, late)| Op::Reading { point, value, dt_ms, late }
        ),
        3 => dt_ms.clone().prop_map(|dt_ms| Op::Tick { dt_ms }),
        3 => (0..5usize, dt_ms.clone()).prop_map(|(alarm, dt_ms)| Op::Ack { alarm, dt_ms }),
        2 => (
            any::<bool>(),
            proptest::option::of(0.0..5.0f64),
            dt_ms,
            proptest::bool::weighted(0.1)
        )
            .prop_map(|(active, value, dt_ms, late)| Op::External { active, value, dt_ms, late }),
    ]
}

fn delay() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0u64), Just(1), 0u64..100]
}

fn check_invariants(
    engine: &Engine,
    model: &[ModelAlarm],
    transitions: &[Transition],
) -> Result<(), TestCaseError> {
    for (view, expected) in engine.alarms().zip(model) {
        prop_assert_eq!(&view.spec.alarm_id, &expected.spec.alarm_id);
        prop_assert_eq!(view.state, expected.state, "{}", expected.spec.alarm_id);
        prop_assert_eq!(view.last_value, expected.last_value);
        prop_assert_eq!(
            view.active,
            active(view.state),
            "active disagrees with state"
        );
    }
    for transition in transitions {
        let view = engine.alarm(&transition.alarm_id);
        prop_assert!(view.is_some());
        prop_assert_eq!(view.map(|view| view.state), Some(transition.state));
        prop_assert_eq!(transition.active, active(transition.state));
    }
    let expected_deadline = model
        .iter()
        .filter_map(|alarm| Some(alarm.holding_since? + alarm.spec.on_delay_ms as i64))
        .min();
    prop_assert_eq!(engine.next_deadline_ms(), expected_deadline);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_sequences_of_readings_ticks_and_acks_follow_the_state_table(
        delays in [delay(), delay(), delay(), delay()],
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        let specs = specs(delays);
        let mut engine = Engine::new(specs.clone()).expect("valid specs");
        let mut model: Vec<ModelAlarm> = specs
            .into_iter()
            .map(|spec| ModelAlarm {
                spec,
                state: Normal,
                holding_since: None,
                newest_input_ms: None,
                last_value: None,
            })
            .collect();
        let mut now_ms: i64 = 1_700_000_000_000;
        let step_ts = |now_ms: &mut i64, dt_ms: i64, late: bool| {
            if late {
                *now_ms - dt_ms - 1
            } else {
                *now_ms += dt_ms;
                *now_ms
            }
        };

        for op in ops {
            let (actual, expected) = match op {
                Op::Reading { point, value, dt_ms, late } => {
                    let ts_ms = step_ts(&mut now_ms, dt_ms, late);
                    let (device, name) = POINTS[point];
                    let actual = engine.on_reading(device, name, value, ts_ms);
                    let expected: Vec<Transition> = model
                        .iter_mut()
                        .filter(|alarm| {
                            value.is_finite()
                                && *alarm.spec.device == *device
                                && *alarm.spec.point == *name
                        })
                        .filter_map(|alarm| match alarm.spec.condition {
                            Condition::Above { limit, deadband } => alarm.input(
                                value >= limit,
                                value < limit - deadband,
                                Some(value),
                                ts_ms,
                            ),
                            Condition::Below { limit, deadband } => alarm.input(
                                value <= limit,
                                value > limit + deadband,
                                Some(value),
                                ts_ms,
                            ),
                            // The other conditions are not in this model.
                            _ => None,
                        })
                        .collect();
                    (actual, expected)
                }
                Op::Tick { dt_ms } => {
                    let ts_ms = step_ts(&mut now_ms, dt_ms, false);
                    let actual = engine.tick(ts_ms);
                    let expected = model.iter_mut().filter_map(|alarm| alarm.tick(ts_ms)).collect();
                    (actual, expected)
                }
                Op::Ack { alarm, dt_ms } => {
                    let ts_ms = step_ts(&mut now_ms, dt_ms, false);
                    let Some(expected_alarm) = model.get_mut(alarm) else {
                        let result = engine.acknowledge("no-such-alarm", ts_ms);
                        prop_assert_eq!(
                            result,
                            Err(AckError::UnknownAlarm("no-such-alarm".to_owned()))
                        );
                        continue;
                    };
                    let before = expected_alarm.state;
                    let expected = expected_alarm.transition(Event::Ack, None, ts_ms);
                    let result = engine.acknowledge(&expected_alarm.spec.alarm_id, ts_ms);
                    match (result, expected) {
                        (Ok(actual), Some(expected)) => (vec![actual], vec![expected]),
                        (Err(error), None) => {
                            prop_assert_eq!(
                                error,
                                AckError::NothingToAcknowledge {
                                    alarm_id: expected_alarm.spec.alarm_id.to_string(),
                                    state: before,
                                }
                            );
                            (Vec::new(), Vec::new())
                        }
                        (result, expected) => {
                            return Err(TestCaseError::fail(format!(
                                "ack of {before:?}: engine {result:?}, model {expected:?}"
                            )));
                        }
                    }
                }
                Op::External { active, value, dt_ms, late } => {
                    let ts_ms = step_ts(&mut now_ms, dt_ms, late);
                    let actual = engine.set_external("comm-lost", active, value, ts_ms);
                    prop_assert!(actual.is_ok());
                    let expected = model
                        .iter_mut()
                        .filter(|alarm| alarm.spec.condition == Condition::External)
                        .filter_map(|alarm| alarm.input(active, !active, value, ts_ms))
                        .collect();
                    (actual.unwrap_or_default(), expected)
                }
            };
            prop_assert_eq!(&actual, &expected);
            check_invariants(&engine, &model, &actual)?;
        }
    }
}
