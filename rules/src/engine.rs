//! The alarm engine: readings, external conditions and the time go in, alarm transitions come out.
//!
//! Each [`RuleSpec`] becomes one alarm. The [`Engine`] judges a rule's [`Condition`] on
//! every reading of the rule's `(device, point)` (or on [`Engine::set_external`] for
//! [`Condition::External`]), runs its on-delay and off-delay against the `ts_ms` the caller
//! passes, and walks the ISA-18.2 state table below. Every call returns the [`Transition`]s it
//! caused; nothing else in the engine changes what an operator sees.
//!
//! # State table (ISA-18.2, non-latching)
//!
//! | state now                | condition raised (after on-delay)  | condition clears (after off-delay)   | operator acknowledges              |
//! |--------------------------|------------------------------------|--------------------------------------|------------------------------------|
//! | `Normal`                 | `Unacknowledged` (`Raised`)        | cannot happen (not active)           | [`AckError::NothingToAcknowledge`] |
//! | `Unacknowledged`         | nothing (already active)           | `ReturnedUnacknowledged` (`Cleared`) | `Acknowledged` (`Acknowledged`)    |
//! | `Acknowledged`           | nothing (already active)           | `Normal` (`Cleared`)                 | [`AckError::NothingToAcknowledge`] |
//! | `ReturnedUnacknowledged` | `Unacknowledged` (`Raised`)        | cannot happen (not active)           | `Normal` (`Acknowledged`)          |
//!
//! # Invariants
//!
//! - An alarm is *active* exactly when its state is `Unacknowledged` or `Acknowledged`;
//!   `Normal` and `ReturnedUnacknowledged` are inactive. `active` is derived from the state,
//!   never stored, so the two cannot disagree.
//! - Every [`Transition`] a call returns carries the state the alarm is in right after it, and
//!   when a call returns no transition for an alarm, that alarm's state did not change.
//!   One call makes at most one transition per alarm.
//! - A raise is pending (its on-delay running) only while the alarm is inactive, and only
//!   while every reading since the first one that met the raise condition met it too.
//! - A clear is pending (its off-delay running) only while the alarm is active, and only
//!   while every reading since the first one that met the clear condition met it too.
//!   Both are one field, so at most one of the two is ever pending.
//! - Transitions of one call come out in the order the specs were given to [`Engine::new`].
//!
//! # Conditions
//!
//! Each reading is judged to meet the *raise* condition, the *clear* condition, or neither
//! (inside a deadband). Only `Above` and `Below` have a deadband; every other condition
//! either raises or clears.
//!
//! | condition                         | raise                                     | clear                            |
//! |-----------------------------------|-------------------------------------------|----------------------------------|
//! | `Above { limit, deadband }`       | `value >= limit`                          | `value < limit - deadband`       |
//! | `Below { limit, deadband }`       | `value <= limit`                          | `value > limit + deadband`       |
//! | `Equals { value: v }`             | `value == v`                              | any other value                  |
//! | `AnyBit { mask }`                 | `value as u32 & mask != 0`                | no bit of `mask` set             |
//! | `RiseWithin { by, window_ms }`    | `value - (lowest in the window) >= by`    | that rise is below `by`          |
//! | `FallWithin { by, window_ms }`    | `(highest in the window) - value >= by`   | that fall is below `by`          |
//! | `Frozen { tolerance, window_ms }` | the current run has lasted `>= window_ms` | the run is younger than that     |
//! | `External`                        | `set_external(.., true, ..)`              | `set_external(.., false, ..)`    |
//!
//! Inside the deadband a reading keeps an active alarm active and does not start, nor keep
//! alive, a pending raise: it cancels one. Likewise it keeps an inactive alarm inactive and
//! cancels a pending clear. So values chattering around the limit within the deadband raise
//! once and never clear.
//!
//! `AnyBit` reads the value as a status word: a value that is negative, not an integer or
//! above `u32::MAX` is not one, and is ignored for that rule as a non-finite value is (below).
//!
//! The window of `RiseWithin` and `FallWithin` is every reading the alarm applied with
//! `ts_ms >= now - window_ms`, the current one included; a step that then stays flat leaves
//! the window after `window_ms` and the alarm clears. The window is a bounded monotonic deque
//! (amortised O(1) per reading, at most [`MAX_WINDOW_SAMPLES`] pairs): past that many readings
//! in one window a low (or high) value may be kept up to `window_ms / 510` longer than exact,
//! never shorter, so a rise or fall is never missed (see `window.rs`). `Frozen` keeps the run's
//! first value and time: a reading within `tolerance` of that value continues the run, any
//! other starts a new run with itself. Alarms of other conditions keep no window.
//!
//! # On-delay and off-delay
//!
//! The raise condition must hold from the first reading that met it (`since`) until a reading
//! or [`Engine::tick`] with `ts_ms - since >= on_delay_ms`; that call raises the alarm. With
//! `on_delay_ms = 0` the first reading raises it. The clear mirrors it with `off_delay_ms`:
//! the clear condition must hold from the first reading that met it while the alarm was active
//! until a reading or tick `off_delay_ms` later; a reading in the raise zone or the deadband
//! cancels the pending clear. With `off_delay_ms = 0` the first clearing reading clears it.
//! Both work the same for external conditions. [`Engine::next_deadline_ms`] is the earliest
//! pending raise or clear.
//!
//! # Time
//!
//! Time is only ever the `ts_ms` passed in (a monotonic ms count); the engine reads no clock.
//! Each alarm remembers the newest `ts_ms` of the readings (or external settings) it has
//! applied. A reading *older* than that is stale: it is ignored for that alarm entirely (no
//! transition, no change to the value, the state, a window or run, or the delays), because
//! applying it would let old news undo newer news. A reading with the *same* `ts_ms` is applied.
//! Ticks and acknowledgements do not move that mark: a tick from before `since` raises or
//! clears nothing, and a reading stamped slightly before a tick the gateway already ran is
//! still applied.
//!
//! Conditions are judged on readings only: a tick runs out on- and off-delays, it does not
//! slide a window or lengthen a `Frozen` run (a stuck sensor still reports; a silent one is a
//! communication fault). A `RiseWithin` whose step stays flat clears on the first reading
//! after the window has passed the step.
//!
//! Readings whose value is NaN or infinite are ignored the same way (no transition, state
//! unchanged, no window or run touched): a sensor reporting garbage is a fault for the driver
//! to report, not a value.

use std::collections::HashMap;
use std::sync::Arc;

pub use crate::window::MAX_WINDOW_SAMPLES;
use crate::window::MinWindow;
use crate::{AlarmState, Priority, SignalClass, TransitionKind};

/// One alarm rule, already bound to a device and point by the gateway's config compiler.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleSpec {
    /// Names the alarm; unique within an [`Engine`]. Shared (an `Arc`): the engine's index
    /// and every transition hold the same one, and the caller may keep it too.
    pub alarm_id: Arc<str>,
    /// The device whose readings this rule watches (shared by the rules of one device).
    pub device: Arc<str>,
    /// The point of `device` this rule watches. Ignored for [`Condition::External`].
    pub point: Arc<str>,
    pub class: SignalClass,
    pub priority: Priority,
    pub condition: Condition,
    /// How long the raise condition must hold before the alarm is raised.
    pub on_delay_ms: u64,
    /// How long the clear condition must hold before an active alarm clears (a reading back
    /// in the raise zone, or in the deadband, cancels the pending clear).
    pub off_delay_ms: u64,
}

/// When a rule's alarm is active (the module docs have them side by side).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Condition {
    /// Active when value >= limit; clears when value < limit - deadband.
    Above { limit: f64, deadband: f64 },
    /// Active when value <= limit; clears when value > limit + deadband.
    Below { limit: f64, deadband: f64 },
    /// Active while the value equals `value` exactly (a digital state: door state 2 = open; a
    /// service-mode code). Clears on any other value.
    Equals { value: f64 },
    /// Active while any bit of `mask` is set in the value read as an unsigned integer (a status
    /// word: bit 2 safety circuit open). A value that is negative, not an integer or above
    /// u32::MAX is not a status word: ignored like a non-finite value (no transition).
    AnyBit { mask: u32 },
    /// Rate of change: active while the value is at least `by` above the lowest value seen in
    /// the last `window_ms` (a heat detector's rate of rise; `by` > 0). Clears when that rise is
    /// below `by` again (the window slides: a step that then stays flat clears after the window).
    RiseWithin { by: f64, window_ms: u64 },
    /// Active while the value is at least `by` below the highest value in the last `window_ms`
    /// (a tank draining fast, a fire main losing pressure).
    FallWithin { by: f64, window_ms: u64 },
    /// A frozen (stuck) value: active once the value has stayed within `tolerance` of the value
    /// that started the run for at least `window_ms`; any move beyond `tolerance` clears it and
    /// starts a new run. Judged on readings (a stuck sensor still reports).
    Frozen { tolerance: f64, window_ms: u64 },
    /// Set from outside with [`Engine::set_external`] (e.g. communication lost).
    External,
}

/// Something that happened to one alarm.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub alarm_id: Arc<str>,
    pub kind: TransitionKind,
    /// The alarm's state right after the transition.
    pub state: AlarmState,
    /// Whether the alarm is active right after the transition.
    pub active: bool,
    /// The value that caused it: the reading for thresholds, the value given to
    /// [`Engine::set_external`] for external conditions; `None` for acknowledgements.
    /// A raise or clear made by [`Engine::tick`] carries the alarm's last value.
    pub value: Option<f64>,
    /// The `ts_ms` of the call that caused the transition.
    pub ts_ms: i64,
}

/// A rule that cannot be compiled, or an external setting the engine cannot apply.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RuleError {
    #[error("the alarm id of rule #{index} (counting from 0) is empty")]
    EmptyAlarmId { index: usize },
    #[error("alarm id `{0}` is used by more than one rule")]
    DuplicateAlarmId(String),
    #[error("alarm `{alarm_id}`: the limit must be a finite number")]
    BadLimit { alarm_id: String },
    #[error("alarm `{alarm_id}`: the deadband must be a finite number, and limit ± deadband too")]
    BadDeadband { alarm_id: String },
    #[error("alarm `{alarm_id}`: the deadband must not be negative (it is {deadband})")]
    NegativeDeadband { alarm_id: String, deadband: f64 },
    #[error("alarm `{alarm_id}`: the value to equal must be a finite number")]
    BadEqualsValue { alarm_id: String },
    #[error("alarm `{alarm_id}`: the bit mask is 0, so no bit could ever be set")]
    ZeroMask { alarm_id: String },
    #[error(
        "alarm `{alarm_id}`: the rise or fall `by` must be a finite number above 0 (it is {by})"
    )]
    BadBy { alarm_id: String, by: f64 },
    #[error(
        "alarm `{alarm_id}`: the tolerance must be a finite number, 0 or more (it is {tolerance})"
    )]
    BadTolerance { alarm_id: String, tolerance: f64 },
    #[error("alarm `{alarm_id}`: the window must be at least 1 ms")]
    ZeroWindow { alarm_id: String },
    #[error("no alarm has the id `{0}`")]
    UnknownAlarm(String),
    #[error("alarm `{0}` is a threshold rule: only external rules can be set from outside")]
    NotExternal(String),
}

/// Why an acknowledgement was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AckError {
    #[error("no alarm has the id `{0}`")]
    UnknownAlarm(String),
    #[error("alarm `{alarm_id}` has nothing to acknowledge (it is {state:?})")]
    NothingToAcknowledge { alarm_id: String, state: AlarmState },
}

/// What an operator or a screen sees of one alarm.
#[derive(Debug, Clone, Copy)]
pub struct AlarmView<'a> {
    pub spec: &'a RuleSpec,
    pub state: AlarmState,
    /// Whether the alarm is raised and not yet cleared (agrees with `state`, see the module docs).
    pub active: bool,
    /// The last value applied to this alarm (for external conditions: the last value given,
    /// which may be `None`).
    pub last_value: Option<f64>,
}

/// The alarms of one gateway, compiled from their specs.
#[derive(Debug, Clone)]
pub struct Engine {
    /// One per spec, in spec order: transitions of a call and [`Engine::alarms`] follow it.
    alarms: Vec<Alarm>,
    /// alarm id -> index in `alarms`, for acknowledgements and external settings.
    by_id: HashMap<Arc<str>, usize>,
    /// device -> (point, index of a threshold rule watching it), in spec order. External
    /// rules are not listed: readings never touch them. A device has few rules, so its list
    /// is scanned: one small vector per device instead of a map per device.
    watchers: HashMap<Arc<str>, Vec<(Arc<str>, usize)>>,
}

impl Engine {
    /// Compiles the specs into an engine with every alarm `Normal`, or reports every bad
    /// spec at once (in spec order).
    pub fn new(specs: Vec<RuleSpec>) -> Result<Self, Vec<RuleError>> {
        let mut errors = Vec::new();
        let mut by_id = HashMap::with_capacity(specs.len());
        for (index, spec) in specs.iter().enumerate() {
            if spec.alarm_id.is_empty() {
                errors.push(RuleError::EmptyAlarmId { index });
            } else if by_id.insert(spec.alarm_id.clone(), index).is_some() {
                errors.push(RuleError::DuplicateAlarmId(spec.alarm_id.to_string()));
            }
            validate_condition(spec, &mut errors);
        }
        if !errors.is_empty() {
            return Err(errors);
        }

        let mut watchers: HashMap<Arc<str>, Vec<(Arc<str>, usize)>> = HashMap::new();
        for (index, spec) in specs.iter().enumerate() {
            if spec.condition != Condition::External {
                watchers
                    .entry(spec.device.clone())
                    .or_default()
                    .push((spec.point.clone(), index));
            }
        }
        watchers.values_mut().for_each(|w| w.shrink_to_fit());
        by_id.shrink_to_fit();
        let alarms = specs.into_iter().map(Alarm::new).collect();
        Ok(Self {
            alarms,
            by_id,
            watchers,
        })
    }

    /// A new value of a point. Returns the transitions of every rule watching
    /// `(device, point)`. Non-finite values are ignored (no transition, rule state unchanged),
    /// and so are readings older than the last one an alarm applied, and values an `AnyBit`
    /// rule cannot read as a status word (see the module docs).
    pub fn on_reading(
        &mut self,
        device: &str,
        point: &str,
        value: f64,
        ts_ms: i64,
    ) -> Vec<Transition> {
        if !value.is_finite() {
            return Vec::new();
        }
        let Some(watching) = self.watchers.get(device) else {
            return Vec::new();
        };
        watching
            .iter()
            .filter(|(p, _)| **p == *point)
            .filter_map(|&(_, index)| self.alarms.get_mut(index)?.on_reading(value, ts_ms))
            .collect()
    }

    /// Sets an external condition. Honors `on_delay_ms` and `off_delay_ms` like the other
    /// conditions do, and ignores settings older than the last one applied (returning no
    /// transition).
    pub fn set_external(
        &mut self,
        alarm_id: &str,
        active: bool,
        value: Option<f64>,
        ts_ms: i64,
    ) -> Result<Vec<Transition>, RuleError> {
        let alarm = self
            .by_id
            .get(alarm_id)
            .and_then(|&index| self.alarms.get_mut(index))
            .ok_or_else(|| RuleError::UnknownAlarm(alarm_id.to_owned()))?;
        if alarm.spec.condition != Condition::External {
            return Err(RuleError::NotExternal(alarm_id.to_owned()));
        }
        if alarm.is_stale(ts_ms) {
            return Ok(Vec::new());
        }
        let level = if active { Level::Raise } else { Level::Clear };
        Ok(alarm.apply(level, value, ts_ms).into_iter().collect())
    }

    /// Time passes: raises the alarms whose on-delay has run out by `ts_ms` since the raise
    /// condition started holding, and clears those whose off-delay has run out since the clear
    /// condition started holding. Judges no condition (see the module docs on time).
    pub fn tick(&mut self, ts_ms: i64) -> Vec<Transition> {
        self.alarms
            .iter_mut()
            .filter_map(|alarm| alarm.settle_if_due(ts_ms))
            .collect()
    }

    /// An operator acknowledges an alarm that is `Unacknowledged` or `ReturnedUnacknowledged`.
    pub fn acknowledge(&mut self, alarm_id: &str, ts_ms: i64) -> Result<Transition, AckError> {
        let alarm = self
            .by_id
            .get(alarm_id)
            .and_then(|&index| self.alarms.get_mut(index))
            .ok_or_else(|| AckError::UnknownAlarm(alarm_id.to_owned()))?;
        alarm
            .step(AlarmInput::Acknowledge, None, ts_ms)
            .ok_or_else(|| AckError::NothingToAcknowledge {
                alarm_id: alarm_id.to_owned(),
                state: alarm.state,
            })
    }

    /// Put an alarm back in the state it had before the gateway restarted, with the last
    /// value it applied. Forgets any pending raise or clear, the window or run of its
    /// condition, and the time of the last input: time here is monotonic and starts again
    /// with the process, so the next reading or setting is applied whatever its `ts_ms`, and
    /// windows and runs start again with it. Makes no transition: the alarm was in this state
    /// already, and the next input moves it on by the table (a condition that cleared
    /// meanwhile clears it; one still active raises nothing new).
    pub fn restore(
        &mut self,
        alarm_id: &str,
        state: AlarmState,
        last_value: Option<f64>,
    ) -> Result<(), RuleError> {
        let alarm = self
            .by_id
            .get(alarm_id)
            .and_then(|&index| self.alarms.get_mut(index))
            .ok_or_else(|| RuleError::UnknownAlarm(alarm_id.to_owned()))?;
        alarm.state = state;
        alarm.last_value = last_value.filter(|v| v.is_finite());
        alarm.pending_since_ms = None;
        alarm.last_input_ms = None;
        alarm.memory.forget();
        Ok(())
    }

    /// Where the alarm with this id is in the spec order the engine was made with: its
    /// position in [`Engine::alarms`], so a caller can keep what it knows of each alarm in a
    /// vector in the same order.
    pub fn index_of(&self, alarm_id: &str) -> Option<usize> {
        self.by_id.get(alarm_id).copied()
    }

    /// The alarm with this id, if there is one.
    pub fn alarm(&self, alarm_id: &str) -> Option<AlarmView<'_>> {
        let &index = self.by_id.get(alarm_id)?;
        self.alarms.get(index).map(Alarm::view)
    }

    /// Every alarm, in the order their specs were given.
    pub fn alarms(&self) -> impl Iterator<Item = AlarmView<'_>> {
        self.alarms.iter().map(Alarm::view)
    }

    /// The earliest `ts_ms` at which a [`Engine::tick`] would raise or clear an alarm, if any
    /// raise or clear is pending. Lets the caller sleep until then instead of ticking on a
    /// fixed period.
    pub fn next_deadline_ms(&self) -> Option<i64> {
        self.alarms.iter().filter_map(Alarm::deadline_ms).min()
    }
}

fn validate_condition(spec: &RuleSpec, errors: &mut Vec<RuleError>) {
    let alarm_id = || spec.alarm_id.to_string();
    let (limit, deadband, clear_at) = match spec.condition {
        Condition::Above { limit, deadband } => (limit, deadband, limit - deadband),
        Condition::Below { limit, deadband } => (limit, deadband, limit + deadband),
        Condition::Equals { value } => {
            if !value.is_finite() {
                errors.push(RuleError::BadEqualsValue {
                    alarm_id: alarm_id(),
                });
            }
            return;
        }
        Condition::AnyBit { mask } => {
            if mask == 0 {
                errors.push(RuleError::ZeroMask {
                    alarm_id: alarm_id(),
                });
            }
            return;
        }
        Condition::RiseWithin { by, window_ms } | Condition::FallWithin { by, window_ms } => {
            if !(by.is_finite() && by > 0.0) {
                errors.push(RuleError::BadBy {
                    alarm_id: alarm_id(),
                    by,
                });
            }
            if window_ms == 0 {
                errors.push(RuleError::ZeroWindow {
                    alarm_id: alarm_id(),
                });
            }
            return;
        }
        Condition::Frozen {
            tolerance,
            window_ms,
        } => {
            if !(tolerance.is_finite() && tolerance >= 0.0) {
                errors.push(RuleError::BadTolerance {
                    alarm_id: alarm_id(),
                    tolerance,
                });
            }
            if window_ms == 0 {
                errors.push(RuleError::ZeroWindow {
                    alarm_id: alarm_id(),
                });
            }
            return;
        }
        Condition::External => return,
    };
    if !limit.is_finite() {
        errors.push(RuleError::BadLimit {
            alarm_id: alarm_id(),
        });
    }
    if !deadband.is_finite() || (limit.is_finite() && !clear_at.is_finite()) {
        errors.push(RuleError::BadDeadband {
            alarm_id: alarm_id(),
        });
    } else if deadband < 0.0 {
        errors.push(RuleError::NegativeDeadband {
            alarm_id: alarm_id(),
            deadband,
        });
    }
}

/// Where a value stands against a condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    /// Meets the raise condition.
    Raise,
    /// Inside the deadband: keeps an active alarm active, cancels a pending raise.
    Deadband,
    /// Meets the clear condition.
    Clear,
}

impl Level {
    /// `Raise` when the condition is met, `Clear` when not: conditions without a deadband.
    fn met(raise: bool) -> Self {
        if raise { Level::Raise } else { Level::Clear }
    }
}

impl Condition {
    /// Where a finite value stands, for the conditions that judge a value on its own.
    /// `None`: the value is not one this condition reads (`AnyBit` and a value that is not a
    /// status word), or the condition needs what came before (`RiseWithin`, `FallWithin` and
    /// `Frozen` are judged by [`Alarm::judge`] with their memory; `External` is set from outside).
    fn level(&self, value: f64) -> Option<Level> {
        Some(match *self {
            Condition::Above { limit, .. } if value >= limit => Level::Raise,
            Condition::Above { limit, deadband } if value < limit - deadband => Level::Clear,
            Condition::Below { limit, .. } if value <= limit => Level::Raise,
            Condition::Below { limit, deadband } if value > limit + deadband => Level::Clear,
            Condition::Above { .. } | Condition::Below { .. } => Level::Deadband,
            Condition::Equals { value: expected } => Level::met(value == expected),
            Condition::AnyBit { mask } => Level::met(status_word(value)? & mask != 0),
            Condition::RiseWithin { .. }
            | Condition::FallWithin { .. }
            | Condition::Frozen { .. }
            | Condition::External => return None,
        })
    }
}

/// A value read as a status word: a whole number from 0 to `u32::MAX` (-0.0 is 0).
fn status_word(value: f64) -> Option<u32> {
    let whole = value >= 0.0 && value <= f64::from(u32::MAX) && value.fract() == 0.0;
    // Exact: a whole number in range converts without rounding.
    whole.then_some(value as u32)
}

/// What a condition remembers of earlier readings. Only the windowed conditions allocate (a
/// box, so an alarm without a window stays small).
#[derive(Debug, Clone)]
enum ConditionMemory {
    /// `Above`, `Below`, `Equals`, `AnyBit`, `External`: each input is judged on its own.
    Nothing,
    /// `RiseWithin`: the window of values; `FallWithin`: the window of negated values (its
    /// lowest is minus the highest value, so a fall of `v` is a rise of `-v`).
    Window(Box<MinWindow>),
    /// `Frozen`: the value that started the current run and its `ts_ms`; `None` before the
    /// first reading.
    Run(Option<(f64, i64)>),
}

impl ConditionMemory {
    fn new(condition: &Condition) -> Self {
        match *condition {
            Condition::RiseWithin { window_ms, .. } | Condition::FallWithin { window_ms, .. } => {
                ConditionMemory::Window(Box::new(MinWindow::new(window_ms)))
            }
            Condition::Frozen { .. } => ConditionMemory::Run(None),
            Condition::Above { .. }
            | Condition::Below { .. }
            | Condition::Equals { .. }
            | Condition::AnyBit { .. }
            | Condition::External => ConditionMemory::Nothing,
        }
    }

    /// Forgets every reading (after a restart).
    fn forget(&mut self) {
        match self {
            ConditionMemory::Nothing => {}
            ConditionMemory::Window(window) => window.clear(),
            ConditionMemory::Run(run) => *run = None,
        }
    }
}

/// What can happen to an alarm (the columns of the state table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlarmInput {
    /// The condition became active (after any on-delay).
    Raise,
    /// The condition returned to normal.
    Clear,
    /// An operator acknowledged.
    Acknowledge,
}

/// The ISA-18.2 state table of the module docs. `None`: the input changes nothing in that
/// state. Public so that alarms kept outside an [`Engine`] (the console's own, such as a
/// gateway gone offline) follow the same table.
pub fn next_state(state: AlarmState, input: AlarmInput) -> Option<(AlarmState, TransitionKind)> {
    use AlarmState::*;
    match (state, input) {
        (Normal | ReturnedUnacknowledged, AlarmInput::Raise) => {
            Some((Unacknowledged, TransitionKind::Raised))
        }
        (Unacknowledged, AlarmInput::Clear) => {
            Some((ReturnedUnacknowledged, TransitionKind::Cleared))
        }
        (Acknowledged, AlarmInput::Clear) => Some((Normal, TransitionKind::Cleared)),
        (Unacknowledged, AlarmInput::Acknowledge) => {
            Some((Acknowledged, TransitionKind::Acknowledged))
        }
        (ReturnedUnacknowledged, AlarmInput::Acknowledge) => {
            Some((Normal, TransitionKind::Acknowledged))
        }
        (Unacknowledged | Acknowledged, AlarmInput::Raise)
        | (Normal | ReturnedUnacknowledged, AlarmInput::Clear)
        | (Normal | Acknowledged, AlarmInput::Acknowledge) => None,
    }
}

fn is_active(state: AlarmState) -> bool {
    matches!(state, AlarmState::Unacknowledged | AlarmState::Acknowledged)
}

/// One compiled rule and its alarm's state.
#[derive(Debug, Clone)]
struct Alarm {
    spec: RuleSpec,
    /// Where the alarm stands in the state table; `active` is derived from it.
    state: AlarmState,
    /// `ts_ms` of the first reading of the current unbroken run of readings meeting the
    /// condition that would change the alarm's activeness: the raise condition while the alarm
    /// is inactive (its on-delay runs), the clear condition while it is active (its off-delay
    /// runs). `None` when nothing is pending. One field for both, so that a raise and a clear
    /// can never be pending at once; every change of activeness resets it.
    pending_since_ms: Option<i64>,
    /// What the condition remembers of earlier readings (windows, runs).
    memory: ConditionMemory,
    /// The last value applied (reported in views, and in raises and clears made by a tick).
    last_value: Option<f64>,
    /// `ts_ms` of the newest reading or external setting applied; older ones are stale.
    last_input_ms: Option<i64>,
}

impl Alarm {
    fn new(spec: RuleSpec) -> Self {
        Self {
            memory: ConditionMemory::new(&spec.condition),
            spec,
            state: AlarmState::Normal,
            pending_since_ms: None,
            last_value: None,
            last_input_ms: None,
        }
    }

    fn view(&self) -> AlarmView<'_> {
        AlarmView {
            spec: &self.spec,
            state: self.state,
            active: is_active(self.state),
            last_value: self.last_value,
        }
    }

    /// Whether an input stamped `ts_ms` is older than the newest one applied.
    fn is_stale(&self, ts_ms: i64) -> bool {
        self.last_input_ms.is_some_and(|last| ts_ms < last)
    }

    /// Applies one finite reading of the rule's point, unless it is stale or not a value the
    /// condition reads.
    fn on_reading(&mut self, value: f64, ts_ms: i64) -> Option<Transition> {
        if self.is_stale(ts_ms) {
            return None;
        }
        let level = self.judge(value, ts_ms)?;
        self.apply(level, Some(value), ts_ms)
    }

    /// Judges a fresh finite reading, updating the condition's memory. `None`: the reading is
    /// not a value this condition reads, and nothing was changed.
    fn judge(&mut self, value: f64, ts_ms: i64) -> Option<Level> {
        match (self.spec.condition, &mut self.memory) {
            (Condition::RiseWithin { by, .. }, ConditionMemory::Window(window)) => {
                Some(Level::met(value - window.push(ts_ms, value) >= by))
            }
            (Condition::FallWithin { by, .. }, ConditionMemory::Window(window)) => {
                let negated = -value;
                Some(Level::met(negated - window.push(ts_ms, negated) >= by))
            }
            (
                Condition::Frozen {
                    tolerance,
                    window_ms,
                },
                ConditionMemory::Run(run),
            ) => match *run {
                Some((first, since)) if (value - first).abs() <= tolerance => {
                    // Never negative: stale readings do not get here.
                    let lasted = u64::try_from(ts_ms.saturating_sub(since)).unwrap_or(0);
                    Some(Level::met(lasted >= window_ms))
                }
                _ => {
                    *run = Some((value, ts_ms));
                    Some(Level::Clear)
                }
            },
            // Every other condition judges a value on its own. (A windowed condition always
            // has its memory: `Alarm::new` builds it from the condition, which never changes;
            // were it missing, `level` says `None` and the reading is ignored.)
            (condition, _) => condition.level(value),
        }
    }

    /// Applies one fresh input (a reading or external setting) already judged.
    fn apply(&mut self, level: Level, value: Option<f64>, ts_ms: i64) -> Option<Transition> {
        self.last_input_ms = Some(ts_ms);
        self.last_value = value;
        // The one level that moves the alarm: raise while inactive, clear while active. Any
        // other (the deadband included) cancels what was pending.
        let moves = if is_active(self.state) {
            Level::Clear
        } else {
            Level::Raise
        };
        if level != moves {
            self.pending_since_ms = None;
            return None;
        }
        self.pending_since_ms.get_or_insert(ts_ms);
        self.settle_if_due(ts_ms)
    }

    /// What is pending (see `pending_since_ms`): since when, its delay, and the input it makes.
    fn pending(&self) -> Option<(i64, u64, AlarmInput)> {
        let since = self.pending_since_ms?;
        Some(if is_active(self.state) {
            (since, self.spec.off_delay_ms, AlarmInput::Clear)
        } else {
            (since, self.spec.on_delay_ms, AlarmInput::Raise)
        })
    }

    /// When the pending raise or clear falls due.
    fn deadline_ms(&self) -> Option<i64> {
        let (since, delay, _) = self.pending()?;
        Some(since.saturating_add(i64::try_from(delay).unwrap_or(i64::MAX)))
    }

    /// Raises or clears the alarm if a raise or clear is pending and its delay has run out
    /// by `ts_ms`. The transition carries the last value applied.
    fn settle_if_due(&mut self, ts_ms: i64) -> Option<Transition> {
        let (since, delay, input) = self.pending()?;
        // Negative when `ts_ms` is before `since` (an old tick): not due.
        let elapsed = u64::try_from(ts_ms.saturating_sub(since)).ok()?;
        if elapsed < delay {
            return None;
        }
        self.pending_since_ms = None;
        self.step(input, self.last_value, ts_ms)
    }

    /// Walks the state table; returns the transition, or `None` if the event changes nothing.
    fn step(&mut self, event: AlarmInput, value: Option<f64>, ts_ms: i64) -> Option<Transition> {
        let (state, kind) = next_state(self.state, event)?;
        self.state = state;
        Some(Transition {
            alarm_id: self.spec.alarm_id.clone(),
            kind,
            state,
            active: is_active(state),
            value,
            ts_ms,
        })
    }
}
