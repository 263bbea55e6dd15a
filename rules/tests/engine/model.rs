//! Model test: random sequences of readings, ticks, acknowledgements and external settings,
//! some out of order or non-finite, run against the engine and against a small reference model
//! written from the spec's wording, with the ISA-18.2 state table as plain data.
//!
//! The model judges every condition from scratch: it keeps every reading an alarm applied and
//! scans them for the lowest or highest of a window, and replays them from the first to find
//! a `Frozen` rule's current run. The engine keeps a monotonic deque and a run instead. The
//! model's windows stay under 511 ms, where the engine's window is exact (see `window.rs`);
//! the second test checks what the engine's cap does to longer windows.
//!
//! After every step: the transitions match the model's, every alarm's state and value match,
//! `active` agrees with the state (Normal and ReturnedUnacknowledged inactive, Unacknowledged and
//! Acknowledged active), every returned transition's state is the alarm's state afterwards,
//! and the next deadline is the model's earliest pending raise or clear.

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

/// The points readings can go to; the third is watched by no rule, the last is a lift's
/// status word.
const POINTS: [(&str, &str); 4] = [
    ("smoke-12", "density"),
    ("pump-1", "pressure"),
    ("smoke-12", "battery"),
    ("lift-3", "status"),
];
const STATUS: usize = 3;

/// Values that sit on the limits and deadband edges of the rules below (and repeat, so that
/// `Frozen` runs last).
const EDGES: [f64; 10] = [-1.0, 0.0, 0.5, 1.0, 1.5, 8.0, 9.0, 10.0, 15.0, 16.0];

/// Status words and values that are not one: fractions, negatives, past u32::MAX.
const WORDS: [f64; 16] = [
    0.0,
    -0.0,
    1.0,
    2.0,
    2.000_000_1,
    1.999_999_9,
    3.0,
    4.0,
    6.0,
    2.5,
    0.5,
    -1.0,
    2_147_483_648.0,
    4_294_967_295.0,
    4_294_967_296.0,
    1e12,
];

/// The alarms of the model test, in spec order.
const ALARMS: usize = 9;

/// What varies between cases beside the operations: every alarm's delays, and the windowed
/// conditions' parameters.
#[derive(Debug, Clone)]
struct Params {
    on_delays: [u64; ALARMS],
    off_delays: [u64; ALARMS],
    rise_by: f64,
    rise_window_ms: u64,
    fall_by: f64,
    fall_window_ms: u64,
    frozen_tolerance: f64,
    frozen_window_ms: u64,
}

fn specs(params: &Params) -> Vec<RuleSpec> {
    let spec = |alarm_id: &str, (device, point): (&str, &str), condition| RuleSpec {
        alarm_id: alarm_id.into(),
        device: device.into(),
        point: point.into(),
        class: SignalClass::Alarm,
        priority: Priority::High,
        condition,
        on_delay_ms: 0,
        off_delay_ms: 0,
    };
    let mut specs = vec![
        spec(
            "smoke-high",
            POINTS[0],
            Condition::Above {
                limit: 10.0,
                deadband: 2.0,
            },
        ),
        spec(
            "smoke-high-high",
            POINTS[0],
            Condition::Above {
                limit: 15.0,
                deadband: 0.0,
            },
        ),
        spec(
            "pressure-low",
            POINTS[1],
            Condition::Below {
                limit: 0.0,
                deadband: 1.0,
            },
        ),
        // Watches a point by name, but readings must never reach it.
        spec("comm-lost", POINTS[0], Condition::External),
        spec(
            "heat-rise",
            POINTS[0],
            Condition::RiseWithin {
                by: params.rise_by,
                window_ms: params.rise_window_ms,
            },
        ),
        spec(
            "pressure-fall",
            POINTS[1],
            Condition::FallWithin {
                by: params.fall_by,
                window_ms: params.fall_window_ms,
            },
        ),
        spec(
            "pressure-frozen",
            POINTS[1],
            Condition::Frozen {
                tolerance: params.frozen_tolerance,
                window_ms: params.frozen_window_ms,
            },
        ),
        spec(
            "lift-inspection",
            POINTS[STATUS],
            Condition::Equals { value: 2.0 },
        ),
        spec(
            "lift-safety-circuit",
            POINTS[STATUS],
            Condition::AnyBit {
                mask: 0b100 | 1 << 31,
            },
        ),
    ];
    for (i, spec) in specs.iter_mut().enumerate() {
        spec.on_delay_ms = params.on_delays[i];
        spec.off_delay_ms = params.off_delays[i];
    }
    specs
}

/// Whether a reading meets the raise and the clear condition, judged from scratch on every
/// reading the alarm applied before it (`history`, oldest first). `None`: a value the rule
/// does not read.
fn judge(
    condition: Condition,
    history: &[(i64, f64)],
    value: f64,
    ts_ms: i64,
) -> Option<(bool, bool)> {
    let either = |met: bool| Some((met, !met));
    // Every reading of the last `window_ms`, this one included.
    let current = [(ts_ms, value)];
    let window = |window_ms: u64| {
        history
            .iter()
            .chain(&current)
            .filter(move |(ts, _)| (ts_ms - ts) as u64 <= window_ms)
            .map(|&(_, value)| value)
    };
    match condition {
        Condition::Above { limit, deadband } => Some((value >= limit, value < limit - deadband)),
        Condition::Below { limit, deadband } => Some((value <= limit, value > limit + deadband)),
        Condition::Equals { value: expected } => either(value == expected),
        Condition::AnyBit { mask } => {
            let word = value >= 0.0 && value.floor() == value && value <= 4_294_967_295.0;
            if !word {
                return None;
            }
            either((value as u64) & u64::from(mask) != 0)
        }
        Condition::RiseWithin { by, window_ms } => {
            let lowest = window(window_ms).fold(f64::INFINITY, f64::min);
            either(value - lowest >= by)
        }
        Condition::FallWithin { by, window_ms } => {
            let highest = window(window_ms).fold(f64::NEG_INFINITY, f64::max);
            either(highest - value >= by)
        }
        Condition::Frozen {
            tolerance,
            window_ms,
        } => {
            // Replay every reading: a run goes on while readings stay within `tolerance` of
            // its first, any other reading starts a new one.
            let mut run: Option<(f64, i64)> = None;
            for &(ts, value) in history.iter().chain(&current) {
                match run {
                    Some((first, _)) if (value - first).abs() <= tolerance => {}
                    _ => run = Some((value, ts)),
                }
            }
            let (_, since) = run?;
            either((ts_ms - since) as u64 >= window_ms)
        }
        Condition::External => None,
    }
}

/// One alarm as the spec describes it.
#[derive(Debug)]
struct ModelAlarm {
    spec: RuleSpec,
    state: AlarmState,
    /// Since when the raise condition has held while the alarm was not active.
    holding_since: Option<i64>,
    /// Since when the clear condition has held while the alarm was active.
    clearing_since: Option<i64>,
    newest_input_ms: Option<i64>,
    last_value: Option<f64>,
    /// Every reading applied, oldest first.
    history: Vec<(i64, f64)>,
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

    fn due(since: Option<i64>, delay_ms: u64, ts_ms: i64) -> bool {
        since.is_some_and(|since| ts_ms >= since && (ts_ms - since) as u64 >= delay_ms)
    }

    fn deadline(&self) -> Option<i64> {
        let raise = self
            .holding_since
            .map(|since| since + self.spec.on_delay_ms as i64);
        let clear = self
            .clearing_since
            .map(|since| since + self.spec.off_delay_ms as i64);
        raise.into_iter().chain(clear).min()
    }

    /// A finite reading of the alarm's point.
    fn reading(&mut self, value: f64, ts_ms: i64) -> Option<Transition> {
        if self.newest_input_ms.is_some_and(|newest| ts_ms < newest) {
            return None;
        }
        let (meets_raise, meets_clear) = judge(self.spec.condition, &self.history, value, ts_ms)?;
        self.history.push((ts_ms, value));
        self.input(meets_raise, meets_clear, Some(value), ts_ms)
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
            if !meets_clear {
                self.clearing_since = None;
                return None;
            }
            self.clearing_since = self.clearing_since.or(Some(ts_ms));
            return self.tick(ts_ms);
        }
        if !meets_raise {
            self.holding_since = None;
            return None;
        }
        self.holding_since = self.holding_since.or(Some(ts_ms));
        self.tick(ts_ms)
    }

    fn tick(&mut self, ts_ms: i64) -> Option<Transition> {
        if Self::due(self.holding_since, self.spec.on_delay_ms, ts_ms) {
            self.holding_since = None;
            return self.transition(Event::Raise, self.last_value, ts_ms);
        }
        if Self::due(self.clearing_since, self.spec.off_delay_ms, ts_ms) {
            self.clearing_since = None;
            return self.transition(Event::Clear, self.last_value, ts_ms);
        }
        None
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

fn status_word() -> impl Strategy<Value = f64> {
    prop_oneof![
        8 => proptest::sample::select(WORDS.to_vec()),
        2 => (0u32..16).prop_map(f64::from),
        1 => Just(f64::NAN),
    ]
}

/// A point and a value that suits it.
fn reading() -> impl Strategy<Value = (usize, f64)> {
    prop_oneof![
        3 => (0..STATUS, value()),
        1 => status_word().prop_map(|value| (STATUS, value)),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let dt_ms = 0i64..40;
    prop_oneof![
        8 => (reading(), dt_ms.clone(), proptest::bool::weighted(0.1)).prop_map(
            |((point, value), dt_ms, late)| Op::Reading { point, value, dt_ms, late }
        ),
        3 => dt_ms.clone().prop_map(|dt_ms| Op::Tick { dt_ms }),
        3 => (0..ALARMS + 1, dt_ms.clone()).prop_map(|(alarm, dt_ms)| Op::Ack { alarm, dt_ms }),
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

/// Windows up to 400 ms: under 511 ms the engine's window is exact. Short ones often, so
/// that runs and windows end within a case, on the millisecond as well.
fn window_ms() -> impl Strategy<Value = u64> {
    prop_oneof![Just(1u64), 1u64..=60, 1u64..=400]
}

fn params() -> impl Strategy<Value = Params> {
    (
        [
            delay(),
            delay(),
            delay(),
            delay(),
            delay(),
            delay(),
            delay(),
            delay(),
            delay(),
        ],
        [
            delay(),
            delay(),
            delay(),
            delay(),
            delay(),
            delay(),
            delay(),
            delay(),
            delay(),
        ],
        (
            proptest::sample::select(vec![0.5, 1.0, 5.0, 9.0]),
            window_ms(),
        ),
        (
            proptest::sample::select(vec![0.5, 1.0, 5.0, 9.0]),
            window_ms(),
        ),
        (proptest::sample::select(vec![0.0, 0.5, 2.0]), window_ms()),
    )
        .prop_map(
            |(
                on_delays,
                off_delays,
                (rise_by, rise_window_ms),
                (fall_by, fall_window_ms),
                (frozen_tolerance, frozen_window_ms),
            )| Params {
                on_delays,
                off_delays,
                rise_by,
                rise_window_ms,
                fall_by,
                fall_window_ms,
                frozen_tolerance,
                frozen_window_ms,
            },
        )
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
    let expected_deadline = model.iter().filter_map(ModelAlarm::deadline).min();
    prop_assert_eq!(engine.next_deadline_ms(), expected_deadline);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_sequences_of_readings_ticks_and_acks_follow_the_state_table(
        params in params(),
        ops in proptest::collection::vec(op(), 1..120),
    ) {
        let specs = specs(&params);
        let mut engine = Engine::new(specs.clone()).expect("valid specs");
        let mut model: Vec<ModelAlarm> = specs
            .into_iter()
            .map(|spec| ModelAlarm {
                spec,
                state: Normal,
                holding_since: None,
                clearing_since: None,
                newest_input_ms: None,
                last_value: None,
                history: Vec::new(),
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
                        .filter_map(|alarm| alarm.reading(value, ts_ms))
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

/// The window's cap, from outside: a RiseWithin and a FallWithin rule over windows of seconds,
/// read up to every millisecond (thousands of readings per window), without delays, so each
/// alarm is active exactly while its condition is met. Whenever the exact rise (fall) over the
/// last `window_ms` reaches `by`, the alarm is active; whenever it is active, the exact rise
/// (fall) over the last `window_ms + ceil(window_ms / 510) - 1` reaches `by`.
fn long_window_specs(by: f64, window_ms: u64) -> Vec<RuleSpec> {
    let spec = |alarm_id: &str, condition| RuleSpec {
        alarm_id: alarm_id.into(),
        device: "tank-1".into(),
        point: "level".into(),
        class: SignalClass::Supervisory,
        priority: Priority::Medium,
        condition,
        on_delay_ms: 0,
        off_delay_ms: 0,
    };
    vec![
        spec("rise", Condition::RiseWithin { by, window_ms }),
        spec("fall", Condition::FallWithin { by, window_ms }),
    ]
}

/// The largest rise and the largest fall of `value` from the readings of the last `span_ms`.
fn exact_change(readings: &[(i64, f64)], value: f64, ts_ms: i64, span_ms: i64) -> (f64, f64) {
    let recent = readings
        .iter()
        .rev()
        .take_while(|&&(ts, _)| ts_ms - ts <= span_ms)
        .map(|&(_, value)| value);
    let (lowest, highest) = recent.fold((value, value), |(low, high), v| (low.min(v), high.max(v)));
    (value - lowest, highest - value)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn a_window_past_its_capacity_keeps_a_change_a_little_longer_and_never_misses_one(
        window_ms in 1_000u64..20_000,
        by in 0.5..10.0f64,
        // A level in ramps: each so many readings, `dt_ms` apart, moving `step` each (long
        // steady ramps fill the window's deque; a flat or turning one then empties it).
        ramps in proptest::collection::vec(
            (1usize..2_000, 1i64..=20, prop_oneof![Just(0.0), -0.02..0.02f64]),
            1..6,
        ),
    ) {
        let mut engine = Engine::new(long_window_specs(by, window_ms)).expect("valid specs");
        let slack_ms = window_ms.div_ceil(510) as i64 - 1;
        let window = window_ms as i64;
        let mut readings: Vec<(i64, f64)> = Vec::new();
        let (mut ts_ms, mut value) = (0i64, 0.0f64);
        for (count, dt_ms, step) in ramps {
            for _ in 0..count {
                ts_ms += dt_ms;
                value += step;
                engine.on_reading("tank-1", "level", value, ts_ms);
                let (rise, fall) = exact_change(&readings, value, ts_ms, window);
                let (widest_rise, widest_fall) =
                    exact_change(&readings, value, ts_ms, window + slack_ms);
                readings.push((ts_ms, value));
                let rising = engine.alarm("rise").map(|view| view.active);
                let falling = engine.alarm("fall").map(|view| view.active);
                if rise >= by {
                    prop_assert_eq!(rising, Some(true), "rise {} missed at {}", rise, ts_ms);
                }
                if widest_rise < by {
                    prop_assert_eq!(rising, Some(false), "no rise {} at {}", widest_rise, ts_ms);
                }
                if fall >= by {
                    prop_assert_eq!(falling, Some(true), "fall {} missed at {}", fall, ts_ms);
                }
                if widest_fall < by {
                    prop_assert_eq!(falling, Some(false), "no fall {} at {}", widest_fall, ts_ms);
                }
            }
        }
    }
}
