//! Model test: random sequences of readings, ticks, long waits, acknowledgements, resets,
//! shelves, changes of service and suppression, and external settings, some out of order or
//! non-finite, run against the engine and against a small reference model written from the
//! spec's wording, with the ISA-18.2 state table as plain data.
//!
//! The model judges every condition from scratch: it keeps every reading an alarm applied and
//! scans them for the lowest or highest of a window, and replays them from the first to find
//! a `Frozen` rule's current run. The engine keeps a monotonic deque and a run instead. The
//! model's windows stay under 511 ms, where the engine's window is exact (see `window.rs`);
//! the last test checks what the engine's cap does to longer windows. The model keeps every
//! raise it counted for chatter and the hiding reasons as separate flags, where the engine
//! keeps a ring of the last raises and derives one state.
//!
//! After every step: the outcome (the transitions, or the refusal) matches the model's; every
//! alarm's state, value, condition, shelf and chatter match; `active` agrees with the state
//! (only Unacknowledged and Acknowledged are active); every returned transition's state is
//! the alarm's state afterwards; and the next deadline is the model's earliest pending raise or
//! clear, shelf end or chatter end. And from the transitions alone, over the whole sequence:
//! a latching alarm, once raised, goes to `Normal` only by a `Reset`; a shelved, out-of-service
//! or suppressed alarm makes no `Raised`, `Cleared` or chatter transition until it comes back;
//! a chattering alarm makes no `Raised`, `Cleared` or second `ChatterStarted` until its chatter
//! ends, and no alarm makes three `Raised` within the chatter window.
//!
//! A second test saves the engine after a random prefix, through JSON, restores it into a new
//! engine of the same specs on a shifted clock, and checks that both make the same transitions
//! for a random suffix.

use proptest::prelude::*;
use shouwang_rules::{
    AckError, AlarmState, CHATTER_RAISES, CHATTER_WINDOW_MS, CommandError, Condition, Engine,
    Priority, RuleSpec, SavedAlarm, Shelf, SignalClass, Transition, TransitionKind,
};

use AlarmState::{
    Acknowledged, Latched, Normal, OutOfService, ReturnedUnacknowledged, Shelved, Suppressed,
    Unacknowledged,
};
use TransitionKind as Kind;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    Raise,
    Clear,
    Ack,
}

/// The state table, one row per bullet of the spec: the state, the event, whether the rule
/// latches (`None`: either way), the next state and the transition. Anything not listed
/// changes nothing. Acknowledging a `Latched` alarm and resetting one are in
/// `ModelAlarm::acknowledge` and `ModelAlarm::reset`: they depend on whether it was
/// acknowledged, which the state does not say.
const TABLE: [(AlarmState, Event, Option<bool>, AlarmState, TransitionKind); 9] = [
    (Normal, Event::Raise, None, Unacknowledged, Kind::Raised),
    (
        Unacknowledged,
        Event::Clear,
        Some(false),
        ReturnedUnacknowledged,
        Kind::Cleared,
    ),
    (
        Unacknowledged,
        Event::Clear,
        Some(true),
        Latched,
        Kind::Cleared,
    ),
    (
        Unacknowledged,
        Event::Ack,
        None,
        Acknowledged,
        Kind::Acknowledged,
    ),
    (
        Acknowledged,
        Event::Clear,
        Some(false),
        Normal,
        Kind::Cleared,
    ),
    (
        Acknowledged,
        Event::Clear,
        Some(true),
        Latched,
        Kind::Cleared,
    ),
    (
        ReturnedUnacknowledged,
        Event::Ack,
        None,
        Normal,
        Kind::Acknowledged,
    ),
    (
        ReturnedUnacknowledged,
        Event::Raise,
        None,
        Unacknowledged,
        Kind::Raised,
    ),
    (Latched, Event::Raise, None, Unacknowledged, Kind::Raised),
];

fn table(state: AlarmState, event: Event, latch: bool) -> Option<(AlarmState, TransitionKind)> {
    TABLE
        .iter()
        .find(|row| row.0 == state && row.1 == event && row.2.is_none_or(|l| l == latch))
        .map(|row| (row.3, row.4))
}

fn active(state: AlarmState) -> bool {
    state == Unacknowledged || state == Acknowledged
}

/// The states that hide an alarm, the one shown first when several apply.
const HIDING: [AlarmState; 3] = [OutOfService, Shelved, Suppressed];

fn hidden(state: AlarmState) -> bool {
    HIDING.contains(&state)
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

/// What varies between cases beside the operations: every alarm's delays and latch, and the
/// windowed conditions' parameters.
#[derive(Debug, Clone)]
struct Params {
    on_delays: [u64; ALARMS],
    off_delays: [u64; ALARMS],
    latches: [bool; ALARMS],
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
        latch: false,
        collapse_chatter: true,
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
        spec.latch = params.latches[i];
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
    /// Whether the condition is active (after its delays), shown or not.
    condition: bool,
    /// Since when the raise condition has held while the condition was not active.
    holding_since: Option<i64>,
    /// Since when the clear condition has held while the condition was active.
    clearing_since: Option<i64>,
    newest_input_ms: Option<i64>,
    last_value: Option<f64>,
    /// Every reading applied, oldest first.
    history: Vec<(i64, f64)>,
    /// What the operator sees when nothing hides the alarm.
    shown: AlarmState,
    /// Whether a `Latched` alarm's occurrence was acknowledged.
    latch_acknowledged: bool,
    shelf: Option<Shelf>,
    out_of_service: bool,
    suppressed: bool,
    /// Every raise counted for chatter since chatter was last forgotten, in the order counted.
    raises: Vec<i64>,
    chattering: bool,
}

impl ModelAlarm {
    fn new(spec: RuleSpec) -> Self {
        Self {
            spec,
            condition: false,
            holding_since: None,
            clearing_since: None,
            newest_input_ms: None,
            last_value: None,
            history: Vec::new(),
            shown: Normal,
            latch_acknowledged: false,
            shelf: None,
            out_of_service: false,
            suppressed: false,
            raises: Vec::new(),
            chattering: false,
        }
    }

    fn state(&self) -> AlarmState {
        let reasons = [self.out_of_service, self.shelf.is_some(), self.suppressed];
        HIDING
            .iter()
            .zip(reasons)
            .find(|(_, applies)| *applies)
            .map_or(self.shown, |(state, _)| *state)
    }

    fn emit(&self, kind: TransitionKind, value: Option<f64>, ts_ms: i64) -> Transition {
        let state = self.state();
        Transition {
            alarm_id: self.spec.alarm_id.clone(),
            kind,
            state,
            active: active(state),
            value,
            ts_ms,
        }
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
        let shelf = self.shelf.map(|shelf| shelf.until_ms);
        let chatter = self
            .raises
            .last()
            .filter(|_| self.chattering)
            .map(|last| last + CHATTER_WINDOW_MS);
        [raise, clear, shelf, chatter].into_iter().flatten().min()
    }

    /// A finite reading of the alarm's point.
    fn reading(&mut self, value: f64, ts_ms: i64) -> Vec<Transition> {
        if self.newest_input_ms.is_some_and(|newest| ts_ms < newest) {
            return Vec::new();
        }
        let Some((meets_raise, meets_clear)) =
            judge(self.spec.condition, &self.history, value, ts_ms)
        else {
            return Vec::new();
        };
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
    ) -> Vec<Transition> {
        if self.newest_input_ms.is_some_and(|newest| ts_ms < newest) {
            return Vec::new();
        }
        // "A raise or clear whose delay ran out before this input settles first, at the time
        // it ran out."
        let mut out = Vec::new();
        if let Some(due) = self.pending_due().filter(|due| *due < ts_ms) {
            out = self.settle(due);
        }
        out.extend(self.input_now(meets_raise, meets_clear, value, ts_ms));
        out
    }

    /// When the pending raise or clear (if any) is due.
    fn pending_due(&self) -> Option<i64> {
        let raise = self
            .holding_since
            .map(|since| since + self.spec.on_delay_ms as i64);
        let clear = self
            .clearing_since
            .map(|since| since + self.spec.off_delay_ms as i64);
        raise.or(clear)
    }

    fn input_now(
        &mut self,
        meets_raise: bool,
        meets_clear: bool,
        value: Option<f64>,
        ts_ms: i64,
    ) -> Vec<Transition> {
        self.newest_input_ms = Some(ts_ms);
        self.last_value = value;
        if self.condition {
            if !meets_clear {
                self.clearing_since = None;
                return Vec::new();
            }
            self.clearing_since = self.clearing_since.or(Some(ts_ms));
        } else {
            if !meets_raise {
                self.holding_since = None;
                return Vec::new();
            }
            self.holding_since = self.holding_since.or(Some(ts_ms));
        }
        self.settle(ts_ms)
    }

    /// The pending raise or clear, if its delay has run out.
    fn settle(&mut self, ts_ms: i64) -> Vec<Transition> {
        if Self::due(self.holding_since, self.spec.on_delay_ms, ts_ms) {
            self.holding_since = None;
            return self.condition_becomes(true, ts_ms);
        }
        if Self::due(self.clearing_since, self.spec.off_delay_ms, ts_ms) {
            self.clearing_since = None;
            return self.condition_becomes(false, ts_ms);
        }
        Vec::new()
    }

    fn condition_becomes(&mut self, active: bool, ts_ms: i64) -> Vec<Transition> {
        self.condition = active;
        if hidden(self.state()) {
            // "A one-shot shelf ends when the condition clears."
            if !active && self.shelf.is_some_and(|shelf| shelf.one_shot) {
                self.shelf = None;
                return self.come_back(Kind::Unshelved, ts_ms);
            }
            return Vec::new();
        }
        if active {
            return self.counted_raise(ts_ms);
        }
        if self.chattering {
            return Vec::new();
        }
        self.step(Event::Clear, ts_ms)
    }

    /// One row of the table, if there is one.
    fn step(&mut self, event: Event, ts_ms: i64) -> Vec<Transition> {
        let Some((next, kind)) = table(self.shown, event, self.spec.latch) else {
            return Vec::new();
        };
        if next == Latched {
            self.latch_acknowledged = self.shown == Acknowledged;
        }
        self.shown = next;
        vec![self.emit(kind, self.last_value, ts_ms)]
    }

    /// "3 or more raises within 60 s": the raise that makes them starts chatter, one
    /// `ChatterStarted` instead of its `Raised`; raises while chattering make nothing.
    fn counted_raise(&mut self, ts_ms: i64) -> Vec<Transition> {
        self.raises.push(ts_ms);
        if self.chattering {
            return Vec::new();
        }
        let n = self.raises.len();
        let starts =
            n >= CHATTER_RAISES && ts_ms - self.raises[n - CHATTER_RAISES] < CHATTER_WINDOW_MS;
        let mut out = self.step(Event::Raise, ts_ms);
        if starts {
            self.chattering = true;
            out.iter_mut().for_each(|t| t.kind = Kind::ChatterStarted);
        }
        out
    }

    /// Something starts hiding the alarm: the first one forgets chatter.
    fn hide(&mut self) {
        if !hidden(self.state()) {
            self.raises.clear();
            self.chattering = false;
        }
    }

    /// "The alarm comes back in the state its condition says": the latch if it held one, then
    /// a raise if the condition is active.
    fn come_back(&mut self, kind: TransitionKind, ts_ms: i64) -> Vec<Transition> {
        let value = if kind == Kind::ChatterEnded {
            self.last_value
        } else {
            None
        };
        if hidden(self.state()) {
            return vec![self.emit(kind, value, ts_ms)];
        }
        let raised = [Unacknowledged, Acknowledged, Latched].contains(&self.shown);
        if self.spec.latch && raised {
            self.latch_acknowledged =
                self.shown == Acknowledged || (self.shown == Latched && self.latch_acknowledged);
            self.shown = Latched;
        } else {
            self.shown = Normal;
        }
        let mut out = vec![self.emit(kind, value, ts_ms)];
        if self.condition {
            out.extend(self.counted_raise(ts_ms));
        }
        out
    }

    fn tick(&mut self, ts_ms: i64) -> Vec<Transition> {
        let mut out = self.settle(ts_ms);
        if self.shelf.is_some_and(|shelf| ts_ms >= shelf.until_ms) {
            self.shelf = None;
            out.extend(self.come_back(Kind::Unshelved, ts_ms));
        }
        let quiet = self
            .raises
            .last()
            .is_some_and(|last| ts_ms - last >= CHATTER_WINDOW_MS);
        if self.chattering && quiet {
            self.chattering = false;
            self.raises.clear();
            out.extend(self.come_back(Kind::ChatterEnded, ts_ms));
        }
        out
    }

    fn acknowledge(&mut self, ts_ms: i64) -> Result<Transition, AckError> {
        let refused = AckError::NothingToAcknowledge {
            alarm_id: self.spec.alarm_id.to_string(),
            state: self.state(),
        };
        if hidden(self.state()) {
            return Err(refused);
        }
        if self.shown == Latched {
            if self.latch_acknowledged {
                return Err(refused);
            }
            self.latch_acknowledged = true;
            return Ok(self.emit(Kind::Acknowledged, None, ts_ms));
        }
        let (next, kind) = table(self.shown, Event::Ack, self.spec.latch).ok_or(refused)?;
        self.shown = next;
        Ok(self.emit(kind, None, ts_ms))
    }

    fn reset(&mut self, ts_ms: i64) -> Result<Transition, CommandError> {
        let alarm_id = self.spec.alarm_id.to_string();
        if !self.spec.latch {
            return Err(CommandError::NotLatching { alarm_id });
        }
        if self.condition {
            return Err(CommandError::ConditionActive { alarm_id });
        }
        if self.state() != Latched {
            let state = self.state();
            return Err(CommandError::NotLatched { alarm_id, state });
        }
        self.shown = Normal;
        Ok(self.emit(Kind::Reset, None, ts_ms))
    }

    fn shelve(&mut self, shelf: Shelf, ts_ms: i64) -> Result<Transition, CommandError> {
        if shelf.until_ms <= ts_ms {
            return Err(CommandError::ShelfEndsTooSoon {
                alarm_id: self.spec.alarm_id.to_string(),
                until_ms: shelf.until_ms,
                ts_ms,
            });
        }
        self.hide();
        self.shelf = Some(shelf);
        Ok(self.emit(Kind::Shelved, None, ts_ms))
    }

    fn unshelve(&mut self, ts_ms: i64) -> Result<Vec<Transition>, CommandError> {
        if self.shelf.is_none() {
            return Err(CommandError::NotShelved {
                alarm_id: self.spec.alarm_id.to_string(),
                state: self.state(),
            });
        }
        self.shelf = None;
        Ok(self.come_back(Kind::Unshelved, ts_ms))
    }

    fn remove_from_service(&mut self, ts_ms: i64) -> Result<Transition, CommandError> {
        if self.out_of_service {
            return Err(CommandError::AlreadyOutOfService {
                alarm_id: self.spec.alarm_id.to_string(),
            });
        }
        self.hide();
        self.out_of_service = true;
        Ok(self.emit(Kind::RemovedFromService, None, ts_ms))
    }

    fn return_to_service(&mut self, ts_ms: i64) -> Result<Vec<Transition>, CommandError> {
        if !self.out_of_service {
            return Err(CommandError::NotOutOfService {
                alarm_id: self.spec.alarm_id.to_string(),
                state: self.state(),
            });
        }
        self.out_of_service = false;
        Ok(self.come_back(Kind::ReturnedToService, ts_ms))
    }

    fn set_suppressed(&mut self, suppressed: bool, ts_ms: i64) -> Vec<Transition> {
        if self.suppressed == suppressed {
            return Vec::new();
        }
        if suppressed {
            self.hide();
            self.suppressed = true;
            return vec![self.emit(Kind::Suppressed, None, ts_ms)];
        }
        self.suppressed = false;
        self.come_back(Kind::Unsuppressed, ts_ms)
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
    Reset {
        alarm: usize,
        dt_ms: i64,
    },
    /// A shelf until `for_ms` after the command (refused unless that is after it).
    Shelve {
        alarm: usize,
        for_ms: i64,
        one_shot: bool,
        dt_ms: i64,
    },
    Unshelve {
        alarm: usize,
        dt_ms: i64,
    },
    RemoveFromService {
        alarm: usize,
        dt_ms: i64,
    },
    ReturnToService {
        alarm: usize,
        dt_ms: i64,
    },
    Suppress {
        alarm: usize,
        suppressed: bool,
        dt_ms: i64,
    },
}

impl Op {
    /// The step's `ts_ms`: `dt_ms` after the previous step, or for a late one `dt_ms` before
    /// it (the clock not moving).
    fn ts_ms(&self, now_ms: &mut i64) -> i64 {
        let (dt_ms, late) = match *self {
            Op::Reading { dt_ms, late, .. } | Op::External { dt_ms, late, .. } => (dt_ms, late),
            Op::Tick { dt_ms }
            | Op::Ack { dt_ms, .. }
            | Op::Reset { dt_ms, .. }
            | Op::Shelve { dt_ms, .. }
            | Op::Unshelve { dt_ms, .. }
            | Op::RemoveFromService { dt_ms, .. }
            | Op::ReturnToService { dt_ms, .. }
            | Op::Suppress { dt_ms, .. } => (dt_ms, false),
        };
        if late {
            *now_ms - dt_ms - 1
        } else {
            *now_ms += dt_ms;
            *now_ms
        }
    }

    /// The same operation with values that JSON carries exactly whatever the parser (quarters
    /// instead of arbitrary fractions), for the save and restore test.
    fn exact(self) -> Self {
        let quarter = |value: f64| (value * 4.0).round() / 4.0;
        match self {
            Op::Reading {
                point,
                value,
                dt_ms,
                late,
            } if point != STATUS && value.is_finite() => Op::Reading {
                point,
                value: quarter(value),
                dt_ms,
                late,
            },
            Op::External {
                active,
                value,
                dt_ms,
                late,
            } => Op::External {
                active,
                value: value.map(quarter),
                dt_ms,
                late,
            },
            op => op,
        }
    }
}

/// What one operation came to: transitions, or a refusal.
#[derive(Debug, PartialEq)]
enum Outcome {
    Transitions(Vec<Transition>),
    AckRefused(AckError),
    Refused(CommandError),
}

impl Outcome {
    fn one<E>(result: Result<Transition, E>, refused: fn(E) -> Outcome) -> Self {
        result.map_or_else(refused, |t| Outcome::Transitions(vec![t]))
    }

    fn many(result: Result<Vec<Transition>, CommandError>) -> Self {
        result.map_or_else(Outcome::Refused, Outcome::Transitions)
    }

    fn transitions(&self) -> &[Transition] {
        match self {
            Outcome::Transitions(transitions) => transitions,
            Outcome::AckRefused(_) | Outcome::Refused(_) => &[],
        }
    }

    /// The outcome on a clock `by_ms` earlier.
    fn shifted_back(self, by_ms: i64) -> Self {
        match self {
            Outcome::Transitions(transitions) => Outcome::Transitions(
                transitions
                    .into_iter()
                    .map(|t| Transition {
                        ts_ms: t.ts_ms - by_ms,
                        ..t
                    })
                    .collect(),
            ),
            Outcome::Refused(CommandError::ShelfEndsTooSoon {
                alarm_id,
                until_ms,
                ts_ms,
            }) => Outcome::Refused(CommandError::ShelfEndsTooSoon {
                alarm_id,
                until_ms: until_ms - by_ms,
                ts_ms: ts_ms - by_ms,
            }),
            outcome => outcome,
        }
    }
}

const UNKNOWN: &str = "no-such-alarm";

/// Runs one operation on the engine at `ts_ms`.
fn run_engine(engine: &mut Engine, op: &Op, ts_ms: i64) -> Outcome {
    let id = |alarm: usize| {
        engine
            .alarms()
            .nth(alarm)
            .map_or_else(|| UNKNOWN.to_owned(), |view| view.spec.alarm_id.to_string())
    };
    match *op {
        Op::Reading { point, value, .. } => {
            let (device, name) = POINTS[point];
            Outcome::Transitions(engine.on_reading(device, name, value, ts_ms))
        }
        Op::Tick { .. } => Outcome::Transitions(engine.tick(ts_ms)),
        Op::Ack { alarm, .. } => {
            let alarm_id = id(alarm);
            Outcome::one(engine.acknowledge(&alarm_id, ts_ms), Outcome::AckRefused)
        }
        Op::External { active, value, .. } => {
            let result = engine.set_external("comm-lost", active, value, ts_ms);
            Outcome::Transitions(result.expect("comm-lost is an external rule"))
        }
        Op::Reset { alarm, .. } => {
            let alarm_id = id(alarm);
            Outcome::one(engine.reset(&alarm_id, ts_ms), Outcome::Refused)
        }
        Op::Shelve {
            alarm,
            for_ms,
            one_shot,
            ..
        } => {
            let alarm_id = id(alarm);
            let shelf = Shelf {
                until_ms: ts_ms + for_ms,
                one_shot,
            };
            Outcome::one(engine.shelve(&alarm_id, shelf, ts_ms), Outcome::Refused)
        }
        Op::Unshelve { alarm, .. } => {
            let alarm_id = id(alarm);
            Outcome::many(engine.unshelve(&alarm_id, ts_ms))
        }
        Op::RemoveFromService { alarm, .. } => {
            let alarm_id = id(alarm);
            Outcome::one(
                engine.remove_from_service(&alarm_id, ts_ms),
                Outcome::Refused,
            )
        }
        Op::ReturnToService { alarm, .. } => {
            let alarm_id = id(alarm);
            Outcome::many(engine.return_to_service(&alarm_id, ts_ms))
        }
        Op::Suppress {
            alarm, suppressed, ..
        } => {
            let alarm_id = id(alarm);
            Outcome::many(engine.set_suppressed(&alarm_id, suppressed, ts_ms))
        }
    }
}

/// Runs one operation on the model at `ts_ms`.
fn run_model(model: &mut [ModelAlarm], op: &Op, ts_ms: i64) -> Outcome {
    let unknown = || CommandError::UnknownAlarm(UNKNOWN.to_owned());
    match *op {
        Op::Reading { point, value, .. } => {
            let (device, name) = POINTS[point];
            Outcome::Transitions(
                model
                    .iter_mut()
                    .filter(|alarm| {
                        value.is_finite()
                            && *alarm.spec.device == *device
                            && *alarm.spec.point == *name
                    })
                    .flat_map(|alarm| alarm.reading(value, ts_ms))
                    .collect(),
            )
        }
        Op::Tick { .. } => Outcome::Transitions(
            model
                .iter_mut()
                .flat_map(|alarm| alarm.tick(ts_ms))
                .collect(),
        ),
        Op::External { active, value, .. } => Outcome::Transitions(
            model
                .iter_mut()
                .filter(|alarm| alarm.spec.condition == Condition::External)
                .flat_map(|alarm| alarm.input(active, !active, value, ts_ms))
                .collect(),
        ),
        Op::Ack { alarm, .. } => match model.get_mut(alarm) {
            Some(alarm) => Outcome::one(alarm.acknowledge(ts_ms), Outcome::AckRefused),
            None => Outcome::AckRefused(AckError::UnknownAlarm(UNKNOWN.to_owned())),
        },
        Op::Reset { alarm, .. } => match model.get_mut(alarm) {
            Some(alarm) => Outcome::one(alarm.reset(ts_ms), Outcome::Refused),
            None => Outcome::Refused(unknown()),
        },
        Op::Shelve {
            alarm,
            for_ms,
            one_shot,
            ..
        } => match model.get_mut(alarm) {
            Some(alarm) => {
                let shelf = Shelf {
                    until_ms: ts_ms + for_ms,
                    one_shot,
                };
                Outcome::one(alarm.shelve(shelf, ts_ms), Outcome::Refused)
            }
            None => Outcome::Refused(unknown()),
        },
        Op::Unshelve { alarm, .. } => match model.get_mut(alarm) {
            Some(alarm) => Outcome::many(alarm.unshelve(ts_ms)),
            None => Outcome::Refused(unknown()),
        },
        Op::RemoveFromService { alarm, .. } => match model.get_mut(alarm) {
            Some(alarm) => Outcome::one(alarm.remove_from_service(ts_ms), Outcome::Refused),
            None => Outcome::Refused(unknown()),
        },
        Op::ReturnToService { alarm, .. } => match model.get_mut(alarm) {
            Some(alarm) => Outcome::many(alarm.return_to_service(ts_ms)),
            None => Outcome::Refused(unknown()),
        },
        Op::Suppress {
            alarm, suppressed, ..
        } => match model.get_mut(alarm) {
            Some(alarm) => Outcome::Transitions(alarm.set_suppressed(suppressed, ts_ms)),
            None => Outcome::Refused(unknown()),
        },
    }
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

/// A burst of readings of one point swinging between a value that raises its alarms and one
/// that clears them, `dt_ms` apart: what makes alarms chatter.
fn burst() -> impl Strategy<Value = Vec<Op>> {
    (0..STATUS + 1, 4usize..14, 0i64..40).prop_map(|(point, count, dt_ms)| {
        let (high, low) = if point == STATUS {
            (2.0, 4.0)
        } else {
            (16.0, -1.0)
        };
        (0..count)
            .map(|i| Op::Reading {
                point,
                value: if i % 2 == 0 { high } else { low },
                dt_ms,
                late: false,
            })
            .collect()
    })
}

/// Operations, single ones and bursts.
fn ops(most: usize) -> impl Strategy<Value = Vec<Op>> {
    let group = prop_oneof![12 => op().prop_map(|op| vec![op]), 1 => burst()];
    proptest::collection::vec(group, 0..most)
        .prop_map(|groups| groups.into_iter().flatten().collect())
}

/// An alarm of the specs, or (the last) one the engine does not have.
fn alarm() -> impl Strategy<Value = usize> {
    0..ALARMS + 1
}

fn op() -> impl Strategy<Value = Op> {
    let dt_ms = || 0i64..40;
    prop_oneof![
        16 => (reading(), dt_ms(), proptest::bool::weighted(0.1)).prop_map(
            |((point, value), dt_ms, late)| Op::Reading { point, value, dt_ms, late }
        ),
        4 => dt_ms().prop_map(|dt_ms| Op::Tick { dt_ms }),
        // A long wait: chatter ends, long shelves run out.
        1 => (CHATTER_WINDOW_MS / 3..CHATTER_WINDOW_MS + 10_000)
            .prop_map(|dt_ms| Op::Tick { dt_ms }),
        3 => (alarm(), dt_ms()).prop_map(|(alarm, dt_ms)| Op::Ack { alarm, dt_ms }),
        3 => (
            any::<bool>(),
            proptest::option::of(0.0..5.0f64),
            dt_ms(),
            proptest::bool::weighted(0.1)
        )
            .prop_map(|(active, value, dt_ms, late)| Op::External { active, value, dt_ms, late }),
        2 => (alarm(), dt_ms()).prop_map(|(alarm, dt_ms)| Op::Reset { alarm, dt_ms }),
        1 => (
            alarm(),
            prop_oneof![1 => -10i64..=0, 6 => 1i64..300, 1 => 20_000i64..120_000],
            any::<bool>(),
            dt_ms()
        )
            .prop_map(|(alarm, for_ms, one_shot, dt_ms)| Op::Shelve { alarm, for_ms, one_shot, dt_ms }),
        1 => (alarm(), dt_ms()).prop_map(|(alarm, dt_ms)| Op::Unshelve { alarm, dt_ms }),
        1 => (alarm(), dt_ms()).prop_map(|(alarm, dt_ms)| Op::RemoveFromService { alarm, dt_ms }),
        3 => (alarm(), dt_ms()).prop_map(|(alarm, dt_ms)| Op::ReturnToService { alarm, dt_ms }),
        2 => (alarm(), proptest::bool::weighted(0.3), dt_ms())
            .prop_map(|(alarm, suppressed, dt_ms)| Op::Suppress { alarm, suppressed, dt_ms }),
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
        proptest::array::uniform9(any::<bool>()),
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
                latches,
                (rise_by, rise_window_ms),
                (fall_by, fall_window_ms),
                (frozen_tolerance, frozen_window_ms),
            )| Params {
                on_delays,
                off_delays,
                latches,
                rise_by,
                rise_window_ms,
                fall_by,
                fall_window_ms,
                frozen_tolerance,
                frozen_window_ms,
            },
        )
}

fn check_views(
    engine: &Engine,
    model: &[ModelAlarm],
    outcome: &Outcome,
) -> Result<(), TestCaseError> {
    for (view, expected) in engine.alarms().zip(model) {
        let id = &expected.spec.alarm_id;
        prop_assert_eq!(&view.spec.alarm_id, id);
        prop_assert_eq!(view.state, expected.state(), "{}", id);
        prop_assert_eq!(view.last_value, expected.last_value, "{}", id);
        prop_assert_eq!(view.condition_active, expected.condition, "{}", id);
        prop_assert_eq!(view.shelf, expected.shelf, "{}", id);
        prop_assert_eq!(view.chattering, expected.chattering, "{}", id);
        prop_assert_eq!(
            view.active,
            active(view.state),
            "active disagrees with state"
        );
    }
    // The last transition of each alarm carries its state after the call.
    for transition in outcome.transitions() {
        prop_assert_eq!(transition.active, active(transition.state));
    }
    for (i, transition) in outcome.transitions().iter().enumerate() {
        let later = outcome.transitions()[i + 1..]
            .iter()
            .any(|t| t.alarm_id == transition.alarm_id);
        if !later {
            let view = engine.alarm(&transition.alarm_id);
            prop_assert_eq!(view.map(|view| view.state), Some(transition.state));
        }
    }
    let expected_deadline = model.iter().filter_map(ModelAlarm::deadline).min();
    prop_assert_eq!(engine.next_deadline_ms(), expected_deadline);
    Ok(())
}

/// What the transitions alone have said of one alarm so far.
#[derive(Debug)]
struct Seen {
    state: AlarmState,
    latches: bool,
    /// A latching alarm raised and not reset since.
    latch_held: bool,
    chattering: bool,
    /// `ts_ms` of its `Raised` since it was last hidden or its chatter ended.
    raised_ms: Vec<i64>,
}

/// The lifecycle's promises, judged on the transitions alone (see the module docs).
fn check_lifecycle(seen: &mut [Seen], transitions: &[Transition]) -> Result<(), TestCaseError> {
    for t in transitions {
        let index = ALARM_IDS.iter().position(|id| **id == *t.alarm_id);
        prop_assert!(
            index.is_some(),
            "a transition of an unknown alarm {}",
            t.alarm_id
        );
        let Some(seen) = index.and_then(|i| seen.get_mut(i)) else {
            continue;
        };
        let id = &t.alarm_id;
        let announces = matches!(
            t.kind,
            Kind::Raised | Kind::Cleared | Kind::ChatterStarted | Kind::ChatterEnded
        );
        prop_assert!(
            !(announces && hidden(seen.state)),
            "{} made {:?} while {:?}",
            id,
            t.kind,
            seen.state
        );
        prop_assert!(
            !(seen.chattering
                && matches!(t.kind, Kind::Raised | Kind::Cleared | Kind::ChatterStarted)),
            "{} made {:?} while chattering",
            id,
            t.kind
        );
        if seen.latch_held && t.state == Normal {
            prop_assert_eq!(t.kind, Kind::Reset, "{} left its latch without a reset", id);
        }
        if seen.latches && t.kind == Kind::Cleared {
            prop_assert_eq!(t.state, Latched, "{} cleared without latching", id);
        }
        match t.kind {
            Kind::Raised | Kind::ChatterStarted => seen.latch_held = seen.latches,
            Kind::Reset => seen.latch_held = false,
            _ => {}
        }
        match t.kind {
            Kind::ChatterStarted => seen.chattering = true,
            Kind::ChatterEnded | Kind::Shelved | Kind::RemovedFromService | Kind::Suppressed => {
                seen.chattering = false;
                seen.raised_ms.clear();
            }
            _ => {}
        }
        if t.kind == Kind::Raised {
            seen.raised_ms.push(t.ts_ms);
            let n = seen.raised_ms.len();
            if n >= CHATTER_RAISES {
                let span = t.ts_ms - seen.raised_ms[n - CHATTER_RAISES];
                prop_assert!(
                    span >= CHATTER_WINDOW_MS,
                    "{} raised {} times within {} ms without chattering",
                    id,
                    CHATTER_RAISES,
                    span
                );
            }
        }
        seen.state = t.state;
    }
    Ok(())
}

/// The alarm ids of `specs`, in order.
const ALARM_IDS: [&str; ALARMS] = [
    "smoke-high",
    "smoke-high-high",
    "pressure-low",
    "comm-lost",
    "heat-rise",
    "pressure-fall",
    "pressure-frozen",
    "lift-inspection",
    "lift-safety-circuit",
];

const START_MS: i64 = 1_700_000_000_000;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_sequences_follow_the_state_table_and_the_lifecycle(
        params in params(),
        ops in ops(150),
    ) {
        let specs = specs(&params);
        prop_assert!(specs.iter().map(|s| &*s.alarm_id).eq(ALARM_IDS));
        let mut engine = Engine::new(specs.clone()).expect("valid specs");
        let mut seen: Vec<Seen> = specs
            .iter()
            .map(|spec| Seen {
                state: Normal,
                latches: spec.latch,
                latch_held: false,
                chattering: false,
                raised_ms: Vec::new(),
            })
            .collect();
        let mut model: Vec<ModelAlarm> = specs.into_iter().map(ModelAlarm::new).collect();
        let mut now_ms = START_MS;

        for op in ops {
            let ts_ms = op.ts_ms(&mut now_ms);
            let actual = run_engine(&mut engine, &op, ts_ms);
            let expected = run_model(&mut model, &op, ts_ms);
            prop_assert_eq!(&actual, &expected, "{:?} at {}", op, ts_ms);
            check_views(&engine, &model, &actual)?;
            check_lifecycle(&mut seen, actual.transitions())?;
        }
    }

    #[test]
    fn an_engine_saved_through_json_and_restored_on_another_clock_goes_on_the_same(
        params in params(),
        prefix in ops(100),
        suffix in ops(100),
        shift_ms in prop_oneof![Just(0i64), -START_MS..START_MS],
    ) {
        let specs = specs(&params);
        let mut original = Engine::new(specs.clone()).expect("valid specs");
        let mut now_ms = START_MS;
        for op in prefix.into_iter().map(Op::exact) {
            let ts_ms = op.ts_ms(&mut now_ms);
            run_engine(&mut original, &op, ts_ms);
        }

        let json = serde_json::to_string(&original.save(now_ms)).expect("serialises");
        let saved: Vec<SavedAlarm> = serde_json::from_str(&json).expect("deserialises");
        let mut restored = Engine::new(specs).expect("valid specs");
        prop_assert_eq!(restored.restore_saved(saved, now_ms + shift_ms), Vec::new());

        for op in suffix.into_iter().map(Op::exact) {
            let ts_ms = op.ts_ms(&mut now_ms);
            let expected = run_engine(&mut original, &op, ts_ms);
            let actual = run_engine(&mut restored, &op, ts_ms + shift_ms).shifted_back(shift_ms);
            prop_assert_eq!(&actual, &expected, "{:?} at {}", op, ts_ms);
            for (after, before) in restored.alarms().zip(original.alarms()) {
                prop_assert_eq!(after.state, before.state);
                prop_assert_eq!(after.last_value, before.last_value);
                prop_assert_eq!(after.condition_active, before.condition_active);
                prop_assert_eq!(after.chattering, before.chattering);
                prop_assert_eq!(
                    after.shelf.map(|shelf| shelf.until_ms - shift_ms),
                    before.shelf.map(|shelf| shelf.until_ms)
                );
            }
            prop_assert_eq!(
                restored.next_deadline_ms().map(|ts| ts - shift_ms),
                original.next_deadline_ms()
            );
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
        latch: false,
        collapse_chatter: true,
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
