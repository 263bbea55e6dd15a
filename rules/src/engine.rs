//! The alarm engine: readings, external conditions and the time go in, alarm transitions come out.
//!
//! Each [`RuleSpec`] becomes one alarm. The [`Engine`] evaluates a rule's [`Condition`] on
//! every reading of the rule's `(device, point)` (or on [`Engine::set_external`] for
//! [`Condition::External`]), runs its on-delay against the `ts_ms` the caller passes, and walks
//! the ISA-18.2 state table below. Every call returns the [`Transition`]s it caused; nothing
//! else in the engine changes what an operator sees.
//!
//! # State table (ISA-18.2, non-latching)
//!
//! | state now                | condition raised (after on-delay)  | condition clears                     | operator acknowledges              |
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
//! - Transitions of one call come out in the order the specs were given to [`Engine::new`].
//!
//! # Conditions, deadband and on-delay
//!
//! A reading meets the *raise* condition of `Above { limit, .. }` when `value >= limit`, and
//! the *clear* condition when `value < limit - deadband`; `Below` mirrors this. Between the two
//! (inside the deadband) a reading keeps an active alarm active and does not start, nor keep
//! alive, a pending raise: it cancels one. So values chattering around the limit within the
//! deadband raise once and never clear.
//!
//! The raise condition must hold from the first reading that met it (`since`) until a reading
//! or [`Engine::tick`] with `ts_ms - since >= on_delay_ms`; that call raises the alarm. With
//! `on_delay_ms = 0` the first reading raises it. Clearing has no delay.
//!
//! # Time
//!
//! Time is only ever the `ts_ms` passed in (ms since the epoch); the engine reads no clock.
//! Each alarm remembers the newest `ts_ms` of the readings (or external settings) it has
//! applied. A reading *older* than that is stale: it is ignored for that alarm entirely (no
//! transition, no change to the value, the state or the on-delay), because applying it would
//! let old news undo newer news. A reading with the *same* `ts_ms` is applied. Ticks and
//! acknowledgements do not move that mark: a tick from before `since` raises nothing, and a
//! reading stamped slightly before a tick the gateway already ran is still applied.
//!
//! Readings whose value is NaN or infinite are ignored the same way (no transition, state
//! unchanged): a sensor reporting garbage is a fault for the driver to report, not a value.

use std::collections::HashMap;
use std::sync::Arc;

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
}

/// When a rule's alarm is active.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Condition {
    /// Active when value >= limit; clears when value < limit - deadband.
    Above { limit: f64, deadband: f64 },
    /// Active when value <= limit; clears when value > limit + deadband.
    Below { limit: f64, deadband: f64 },
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
    /// A raise made by [`Engine::tick`] carries the alarm's last value.
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
    /// and so are readings older than the last one an alarm applied (see the module docs).
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
            .filter_map(|&(_, index)| {
                let alarm = self.alarms.get_mut(index)?;
                let level = alarm.spec.condition.level(value);
                alarm.apply(level, Some(value), ts_ms)
            })
            .collect()
    }

    /// Sets an external condition. Honors `on_delay_ms` like the thresholds do, and ignores
    /// settings older than the last one applied (returning no transition).
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
        let level = if active { Level::Raise } else { Level::Clear };
        Ok(alarm.apply(level, value, ts_ms).into_iter().collect())
    }

    /// Time passes: raises the alarms whose on-delay has run out by `ts_ms` since the raise
    /// condition started holding.
    pub fn tick(&mut self, ts_ms: i64) -> Vec<Transition> {
        self.alarms
            .iter_mut()
            .filter_map(|alarm| alarm.raise_if_due(ts_ms))
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
    /// value it applied. Forgets any pending raise and the time of the last input: time
    /// here is monotonic and starts again with the process, so the next reading or setting
    /// is applied whatever its `ts_ms`. Makes no transition: the alarm was in this state
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
        alarm.raise_pending_since_ms = None;
        alarm.last_input_ms = None;
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

    /// The earliest `ts_ms` at which a [`Engine::tick`] would raise a pending alarm, if any
    /// raise is pending. Lets the caller sleep until then instead of ticking on a fixed period.
    pub fn next_deadline_ms(&self) -> Option<i64> {
        self.alarms
            .iter()
            .filter_map(|alarm| {
                let since = alarm.raise_pending_since_ms?;
                let delay = i64::try_from(alarm.spec.on_delay_ms).unwrap_or(i64::MAX);
                Some(since.saturating_add(delay))
            })
            .min()
    }
}

fn validate_condition(spec: &RuleSpec, errors: &mut Vec<RuleError>) {
    let (limit, deadband, clear_at) = match spec.condition {
        Condition::Above { limit, deadband } => (limit, deadband, limit - deadband),
        Condition::Below { limit, deadband } => (limit, deadband, limit + deadband),
        Condition::External => return,
    };
    let alarm_id = || spec.alarm_id.to_string();
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

impl Condition {
    /// Where a finite value stands. `External` has no value to judge: it is set from outside.
    fn level(&self, value: f64) -> Level {
        match *self {
            Condition::Above { limit, .. } if value >= limit => Level::Raise,
            Condition::Above { limit, deadband } if value < limit - deadband => Level::Clear,
            Condition::Below { limit, .. } if value <= limit => Level::Raise,
            Condition::Below { limit, deadband } if value > limit + deadband => Level::Clear,
            // `External` never gets here: readings do not reach external rules, and
            // `set_external` says Raise or Clear itself. `Deadband` is the harmless answer.
            Condition::Above { .. } | Condition::Below { .. } | Condition::External => {
                Level::Deadband
            }
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
    /// `ts_ms` of the first reading of the current unbroken run meeting the raise condition,
    /// while the alarm is inactive and its on-delay runs. `None` otherwise.
    raise_pending_since_ms: Option<i64>,
    /// The last value applied (reported in views, and in raises made by a tick).
    last_value: Option<f64>,
    /// `ts_ms` of the newest reading or external setting applied; older ones are stale.
    last_input_ms: Option<i64>,
}

impl Alarm {
    fn new(spec: RuleSpec) -> Self {
        Self {
            spec,
            state: AlarmState::Normal,
            raise_pending_since_ms: None,
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

    /// Applies one reading (or external setting) already judged against the condition.
    fn apply(&mut self, level: Level, value: Option<f64>, ts_ms: i64) -> Option<Transition> {
        if self.last_input_ms.is_some_and(|last| ts_ms < last) {
            return None;
        }
        self.last_input_ms = Some(ts_ms);
        self.last_value = value;
        if is_active(self.state) {
            // Nothing is pending while active; only a clear matters.
            return match level {
                Level::Clear => self.step(AlarmInput::Clear, value, ts_ms),
                Level::Raise | Level::Deadband => None,
            };
        }
        match level {
            Level::Raise => {
                self.raise_pending_since_ms.get_or_insert(ts_ms);
                self.raise_if_due(ts_ms)
            }
            Level::Deadband | Level::Clear => {
                self.raise_pending_since_ms = None;
                None
            }
        }
    }

    /// Raises the alarm if a raise is pending and its on-delay has run out by `ts_ms`.
    fn raise_if_due(&mut self, ts_ms: i64) -> Option<Transition> {
        let since = self.raise_pending_since_ms?;
        // Negative when `ts_ms` is before `since` (an old tick): not due.
        let elapsed = u64::try_from(ts_ms.saturating_sub(since)).ok()?;
        if elapsed < self.spec.on_delay_ms {
            return None;
        }
        self.raise_pending_since_ms = None;
        self.step(AlarmInput::Raise, self.last_value, ts_ms)
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
