//! The alarm engine: readings, external conditions and the time go in, alarm transitions come out.
//!
//! Each [`RuleSpec`] becomes one alarm. The [`Engine`] judges a rule's [`Condition`] on
//! every reading of the rule's `(device, point)` (or on [`Engine::set_external`] for
//! [`Condition::External`]), runs its on-delay and off-delay against the `ts_ms` the caller
//! passes, and walks the ISA-18.2 state table below. Every call returns the [`Transition`]s it
//! caused; nothing else in the engine changes what an operator sees.
//!
//! # State table (ISA-18.2)
//!
//! What an operator sees of an alarm that nothing hides (the *annunciated* states). A rule with
//! `latch: true` (fire alarms) latches: when its condition clears it goes to `Latched` instead
//! of `ReturnedUnacknowledged` or `Normal`, and stays there until an operator resets it.
//!
//! | state now                | condition raised (after on-delay) | condition clears (after off-delay)                        | operator acknowledges            | operator resets           |
//! |--------------------------|-----------------------------------|-----------------------------------------------------------|----------------------------------|---------------------------|
//! | `Normal`                 | `Unacknowledged` (`Raised`)       | cannot happen (not active)                                | refused: nothing to acknowledge  | refused: not latched      |
//! | `Unacknowledged`         | nothing (already active)          | `ReturnedUnacknowledged`; latching: `Latched` (`Cleared`) | `Acknowledged` (`Acknowledged`)  | refused: condition active |
//! | `Acknowledged`           | nothing (already active)          | `Normal`; latching: `Latched` (`Cleared`)                 | refused: nothing to acknowledge  | refused: condition active |
//! | `ReturnedUnacknowledged` | `Unacknowledged` (`Raised`)       | cannot happen (not active)                                | `Normal` (`Acknowledged`)        | refused: not latched      |
//! | `Latched`                | `Unacknowledged` (`Raised`)       | cannot happen (not active)                                | `Latched` (`Acknowledged`), once | `Normal` (`Reset`)        |
//!
//! Acknowledging and resetting a latched alarm: `Latched` is one state whether or not the
//! occurrence was acknowledged (an alarm acknowledged while active latches acknowledged). An
//! unacknowledged latched alarm takes one acknowledgement (it stays `Latched`; the transition
//! says `Acknowledged`), a second is refused. A reset acknowledges too: a latched alarm goes to
//! `Normal` by a reset whether or not anyone acknowledged it. A reset is refused for a rule that
//! does not latch ([`CommandError::NotLatching`]), while the condition is still active (a
//! pending clear counts as active: [`CommandError::ConditionActive`]), and in any state but
//! `Latched` ([`CommandError::NotLatched`]). A latched alarm whose condition comes back is a
//! new occurrence: `Unacknowledged` with a `Raised`, and it latches again when it clears.
//!
//! # Hidden alarms: shelved, out of service, suppressed by design
//!
//! Three things hide an alarm from the operator, each with its state and a pair of transitions:
//!
//! | what                                 | state          | started by                                             | ended by                                                                                                  |
//! |--------------------------------------|----------------|--------------------------------------------------------|-----------------------------------------------------------------------------------------------------------|
//! | shelved (by an operator)             | `Shelved`      | [`Engine::shelve`] (`Shelved`)                         | [`Engine::unshelve`], [`Engine::tick`] at `until_ms`, or the condition clearing if one-shot (`Unshelved`) |
//! | out of service (maintenance)         | `OutOfService` | [`Engine::remove_from_service`] (`RemovedFromService`) | [`Engine::return_to_service`] (`ReturnedToService`)                                                       |
//! | suppressed by design (by the caller) | `Suppressed`   | [`Engine::set_suppressed`] `true` (`Suppressed`)       | [`Engine::set_suppressed`] `false` (`Unsuppressed`)                                                       |
//!
//! While hidden, the condition is still judged (readings, windows, runs and delays as ever),
//! but its raises and clears make no transition, an acknowledgement or a reset is refused (the
//! state named), and no raise counts for chatter. They stack: the state is the first of
//! `OutOfService`, `Shelved`, `Suppressed` that applies, and ending one while another remains
//! makes its transition carrying the remaining state. Suppression is the caller's: setting it to
//! what it already is does nothing and returns no transition (so the caller can set it from a
//! link's state on every change); the operator commands refuse what does not apply
//! (unshelving an alarm that is not shelved, removing one already out of service). Shelving a
//! shelved alarm replaces its shelf (`Shelved` again, so the log has the new end).
//!
//! # Coming back
//!
//! When the last thing hiding an alarm ends, and when chatter ends, the alarm comes back in the
//! state its condition says now: the ending transition (`Unshelved`, `ReturnedToService`,
//! `Unsuppressed`, `ChatterEnded`) carries `Normal`, or `Latched` if the rule latches and held
//! its latch (raised before it was hidden and not reset; acknowledged or not as it was), and if
//! the condition is active a `Raised` (`Unacknowledged`) follows in the same call: an alarm
//! acknowledged before it was shelved is announced again. Whatever was unacknowledged and
//! cleared before (a `ReturnedUnacknowledged`) is not brought back. Only announced raises take
//! the latch: a condition that came and went while the alarm was hidden leaves no latch.
//!
//! # Chatter
//!
//! A raise of the condition while the alarm is not hidden (and the `Raised` of coming back) is
//! counted. The [`CHATTER_RAISES`]-th raise within [`CHATTER_WINDOW_MS`] of the oldest of them
//! (3 within 60 s) starts chatter: instead of its `Raised` the alarm makes one
//! `ChatterStarted` (`Unacknowledged`, active: the one alarm an operator sees for the whole
//! burst). While chattering, raises and clears make no transition and leave the state as it
//! is (it stays active; it can be acknowledged), but raises still count. Chatter ends at the
//! first [`Engine::tick`] [`CHATTER_WINDOW_MS`] or more after the last raise, with
//! `ChatterEnded` and the alarm coming back as above. An alarm that is hidden while chattering
//! stops chattering silently (the hiding transition says what happened) and counts afresh when
//! it comes back.
//!
//! # Invariants
//!
//! - An alarm is *active* exactly when its state is `Unacknowledged` or `Acknowledged`; every
//!   other state is inactive. `active` is derived from the state, never stored, so the two
//!   cannot disagree. Whether the *condition* is active is kept apart (the on- and off-delays
//!   run on it, and it goes on while the alarm is hidden): [`AlarmView::condition_active`].
//!   An annunciated alarm that is not chattering is active exactly when its condition is.
//! - Every [`Transition`] a call returns carries the state the alarm is in right after it, and
//!   when a call returns no transition for an alarm, that alarm's state did not change.
//!   One call makes at most one transition per alarm, except when an alarm comes back with its
//!   condition active: then the ending transition and its `Raised`, in that order.
//! - A rule that latches never goes from `Latched` (or from an announced raise) to `Normal`
//!   without a `Reset`.
//! - A hidden alarm makes no `Raised`, `Cleared`, `ChatterStarted` or `ChatterEnded`; a
//!   chattering one makes no `Raised` or `Cleared`.
//! - A raise is pending (its on-delay running) only while the condition is inactive, and only
//!   while every reading since the first one that met the raise condition met it too.
//! - A clear is pending (its off-delay running) only while the condition is active, and only
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
//! pending raise or clear (or shelf end, or end of chatter). A reading (or setting) that
//! comes after a pending raise or clear was due, with no tick between, first settles it at
//! the time it was due, with the value that held until then, and is then judged: so a poll
//! that lands between a delay's end and the caller's next tick never cancels an alarm the
//! tick would have raised. (That is the one other case of two transitions for one alarm in
//! one call.)
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
//! Shelf ends and the end of chatter are deadlines like the delays, made by [`Engine::tick`]
//! only ([`Engine::next_deadline_ms`] includes them): a reading stamped after a shelf's
//! `until_ms` but applied before the tick that ends it is judged as the shelved alarm's. The
//! `ts_ms` of a command is the transition's time and the start of a shelf; it does not move the
//! newest-input mark either.
//!
//! Conditions are judged on readings only: a tick runs out on- and off-delays, it does not
//! slide a window or lengthen a `Frozen` run (a stuck sensor still reports; a silent one is a
//! communication fault). A `RiseWithin` whose step stays flat clears on the first reading
//! after the window has passed the step.
//!
//! Readings whose value is NaN or infinite are ignored the same way (no transition, state
//! unchanged, no window or run touched): a sensor reporting garbage is a fault for the driver
//! to report, not a value.
//!
//! # Saving and restoring
//!
//! [`Engine::save`] gives every alarm's whole state ([`SavedAlarm`], serde) with its times
//! relative to a `now_ms`; [`Engine::restore_saved`] puts it back into an engine of the same
//! specs relative to the restarted process's `now_ms`, which then behaves as the saved one
//! would have (`saved.rs` has the details). [`Engine::restore`] is the older, partial way: a
//! state and a value per alarm, as the gateway's journal has them.

use std::collections::HashMap;
use std::sync::Arc;

use crate::lifecycle::{Annunciation, Chatter};
pub use crate::lifecycle::{CHATTER_RAISES, CHATTER_WINDOW_MS, Shelf};
pub use crate::saved::SavedAlarm;
use crate::saved::SavedMemory;
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
    /// Whether the alarm latches (fire alarms): once raised it does not return to normal by
    /// itself but stays `Latched` after its condition clears, until an operator resets it
    /// ([`Engine::reset`]). `false` for every rule that does not say.
    pub latch: bool,
    /// Whether chatter collapses (ISA-18.2): the [`CHATTER_RAISES`]-th raise within
    /// [`CHATTER_WINDOW_MS`] is announced as one `ChatterStarted` and the raises after it are
    /// not, until the alarm has been quiet for that long. `false`: every raise is announced.
    pub collapse_chatter: bool,
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
    /// For `Raised`, `Cleared`, `ChatterStarted` and `ChatterEnded`: the value that caused it,
    /// the reading for thresholds, the value given to [`Engine::set_external`] for external
    /// conditions; one made by [`Engine::tick`] or a command carries the alarm's last value.
    /// `None` for the operator's and the caller's own transitions (acknowledgement, reset,
    /// shelf, service, suppression), even when a shelf ends by itself.
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
    #[error(
        "alarm `{0}` was shelved: its state alone does not say until when, restore it from Engine::save"
    )]
    ShelfNotRestorable(String),
}

/// Why an acknowledgement was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AckError {
    #[error("no alarm has the id `{0}`")]
    UnknownAlarm(String),
    #[error("alarm `{alarm_id}` has nothing to acknowledge (it is {state:?})")]
    NothingToAcknowledge { alarm_id: String, state: AlarmState },
}

/// Why a reset, a shelf, or a change of service or suppression was refused. Each names the
/// alarm.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CommandError {
    #[error("no alarm has the id `{0}`")]
    UnknownAlarm(String),
    #[error(
        "alarm `{alarm_id}` does not latch: it returns to normal by itself, there is nothing to reset"
    )]
    NotLatching { alarm_id: String },
    #[error("alarm `{alarm_id}` cannot be reset while its condition is still active")]
    ConditionActive { alarm_id: String },
    #[error(
        "alarm `{alarm_id}` is not latched (it is {state:?}): only a latched alarm can be reset"
    )]
    NotLatched { alarm_id: String, state: AlarmState },
    #[error(
        "alarm `{alarm_id}`: a shelf must end after it starts (it would end at {until_ms} ms, it starts at {ts_ms} ms)"
    )]
    ShelfEndsTooSoon {
        alarm_id: String,
        until_ms: i64,
        ts_ms: i64,
    },
    #[error("alarm `{alarm_id}` is not shelved (it is {state:?})")]
    NotShelved { alarm_id: String, state: AlarmState },
    #[error("alarm `{alarm_id}` is already out of service")]
    AlreadyOutOfService { alarm_id: String },
    #[error("alarm `{alarm_id}` is not out of service (it is {state:?})")]
    NotOutOfService { alarm_id: String, state: AlarmState },
}

/// What an operator or a screen sees of one alarm.
#[derive(Debug, Clone, Copy)]
pub struct AlarmView<'a> {
    pub spec: &'a RuleSpec,
    pub state: AlarmState,
    /// Whether the alarm is raised and not yet cleared (agrees with `state`, see the module docs).
    pub active: bool,
    /// Whether the condition is active (after its delays), shown or not: a shelved alarm's
    /// condition goes on, and a chattering alarm stays active while its condition comes and goes.
    pub condition_active: bool,
    /// The alarm's shelf while it is shelved (also while out of service on top of it).
    pub shelf: Option<Shelf>,
    /// Whether the alarm is chattering (see the module docs).
    pub chattering: bool,
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
            .flat_map(|&(_, index)| match self.alarms.get_mut(index) {
                Some(alarm) => alarm.on_reading(value, ts_ms),
                None => Vec::new(),
            })
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
        Ok(alarm.apply(level, value, ts_ms))
    }

    /// Time passes: raises the alarms whose on-delay has run out by `ts_ms` since the raise
    /// condition started holding, and clears those whose off-delay has run out since the clear
    /// condition started holding; then ends the shelves whose `until_ms` is at or before `ts_ms`
    /// and the chatter of alarms with no raise for [`CHATTER_WINDOW_MS`], bringing those alarms
    /// back (see the module docs). Judges no condition (see the module docs on time).
    pub fn tick(&mut self, ts_ms: i64) -> Vec<Transition> {
        let mut transitions = Vec::new();
        for alarm in &mut self.alarms {
            alarm.tick(ts_ms, &mut transitions);
        }
        transitions
    }

    /// An operator acknowledges an alarm that is `Unacknowledged`, `ReturnedUnacknowledged`, or
    /// `Latched` and not yet acknowledged. Refused for a hidden alarm (its state named).
    pub fn acknowledge(&mut self, alarm_id: &str, ts_ms: i64) -> Result<Transition, AckError> {
        let alarm = self
            .by_id
            .get(alarm_id)
            .and_then(|&index| self.alarms.get_mut(index))
            .ok_or_else(|| AckError::UnknownAlarm(alarm_id.to_owned()))?;
        let next = (!alarm.is_hidden())
            .then(|| alarm.annunciation.acknowledge())
            .flatten();
        let Some(next) = next else {
            return Err(AckError::NothingToAcknowledge {
                alarm_id: alarm_id.to_owned(),
                state: alarm.state(),
            });
        };
        alarm.annunciation = next;
        Ok(alarm.transition(TransitionKind::Acknowledged, None, ts_ms))
    }

    /// An operator resets a `Latched` alarm: it goes to `Normal` with a `Reset`, acknowledged.
    /// Refused, naming the alarm, when its rule does not latch, while its condition is still
    /// active, and when it is not `Latched` (hidden ones included).
    pub fn reset(&mut self, alarm_id: &str, ts_ms: i64) -> Result<Transition, CommandError> {
        let alarm = self.alarm_mut(alarm_id)?;
        let alarm_id = || alarm_id.to_owned();
        if !alarm.spec.latch {
            return Err(CommandError::NotLatching {
                alarm_id: alarm_id(),
            });
        }
        if alarm.condition_active {
            return Err(CommandError::ConditionActive {
                alarm_id: alarm_id(),
            });
        }
        let state = alarm.state();
        if state != AlarmState::Latched {
            return Err(CommandError::NotLatched {
                alarm_id: alarm_id(),
                state,
            });
        }
        alarm.annunciation = Annunciation::Normal;
        Ok(alarm.transition(TransitionKind::Reset, None, ts_ms))
    }

    /// An operator shelves an alarm until `shelf.until_ms` at the latest (see [`Shelf`]);
    /// shelving a shelved alarm replaces its shelf. The caller has checked who, why, and the
    /// site's maximum; the engine refuses a shelf whose `until_ms` is not after `ts_ms`.
    pub fn shelve(
        &mut self,
        alarm_id: &str,
        shelf: Shelf,
        ts_ms: i64,
    ) -> Result<Transition, CommandError> {
        let alarm = self.alarm_mut(alarm_id)?;
        if shelf.until_ms <= ts_ms {
            return Err(CommandError::ShelfEndsTooSoon {
                alarm_id: alarm_id.to_owned(),
                until_ms: shelf.until_ms,
                ts_ms,
            });
        }
        alarm.hide();
        alarm.shelf = Some(shelf);
        Ok(alarm.transition(TransitionKind::Shelved, None, ts_ms))
    }

    /// An operator ends a shelf before its time: `Unshelved`, and the alarm comes back (a
    /// `Raised` follows if its condition is active). Refused if the alarm is not shelved.
    pub fn unshelve(
        &mut self,
        alarm_id: &str,
        ts_ms: i64,
    ) -> Result<Vec<Transition>, CommandError> {
        let alarm = self.alarm_mut(alarm_id)?;
        if alarm.shelf.take().is_none() {
            return Err(CommandError::NotShelved {
                alarm_id: alarm_id.to_owned(),
                state: alarm.state(),
            });
        }
        let mut transitions = Vec::new();
        alarm.come_back(TransitionKind::Unshelved, ts_ms, &mut transitions);
        Ok(transitions)
    }

    /// Takes an alarm out of service (`RemovedFromService`) until
    /// [`Engine::return_to_service`]. Refused if it already is.
    pub fn remove_from_service(
        &mut self,
        alarm_id: &str,
        ts_ms: i64,
    ) -> Result<Transition, CommandError> {
        let alarm = self.alarm_mut(alarm_id)?;
        if alarm.out_of_service {
            return Err(CommandError::AlreadyOutOfService {
                alarm_id: alarm_id.to_owned(),
            });
        }
        alarm.hide();
        alarm.out_of_service = true;
        Ok(alarm.transition(TransitionKind::RemovedFromService, None, ts_ms))
    }

    /// Returns an alarm to service: `ReturnedToService`, and the alarm comes back (a `Raised`
    /// follows if its condition is active). Refused if it is not out of service.
    pub fn return_to_service(
        &mut self,
        alarm_id: &str,
        ts_ms: i64,
    ) -> Result<Vec<Transition>, CommandError> {
        let alarm = self.alarm_mut(alarm_id)?;
        if !alarm.out_of_service {
            return Err(CommandError::NotOutOfService {
                alarm_id: alarm_id.to_owned(),
                state: alarm.state(),
            });
        }
        alarm.out_of_service = false;
        let mut transitions = Vec::new();
        alarm.come_back(TransitionKind::ReturnedToService, ts_ms, &mut transitions);
        Ok(transitions)
    }

    /// The caller suppresses an alarm by design (the sensors behind a lost link, a building
    /// under maintenance), or ends that: `Suppressed`, or `Unsuppressed` and the alarm coming
    /// back (a `Raised` follows if its condition is active). Setting what already is returns
    /// no transition: the caller may set it on every change of what drives it.
    pub fn set_suppressed(
        &mut self,
        alarm_id: &str,
        suppressed: bool,
        ts_ms: i64,
    ) -> Result<Vec<Transition>, CommandError> {
        let alarm = self.alarm_mut(alarm_id)?;
        let mut transitions = Vec::new();
        match (alarm.suppressed, suppressed) {
            (false, true) => {
                alarm.hide();
                alarm.suppressed = true;
                transitions.push(alarm.transition(TransitionKind::Suppressed, None, ts_ms));
            }
            (true, false) => {
                alarm.suppressed = false;
                alarm.come_back(TransitionKind::Unsuppressed, ts_ms, &mut transitions);
            }
            (false, false) | (true, true) => {}
        }
        Ok(transitions)
    }

    /// Put an alarm back in the state it had before the gateway restarted, with the last
    /// value it applied, knowing only its state (from the journal's last event; everything
    /// else is in [`Engine::save`], which [`Engine::restore_saved`] puts back whole).
    /// Forgets any pending raise or clear, the window or run of its condition, chatter, and the
    /// time of the last input: time here is monotonic and starts again with the process, so
    /// the next reading or setting is applied whatever its `ts_ms`, and windows and runs start
    /// again with it. Makes no transition: the alarm was in this state already, and the next
    /// input moves it on by the table (a condition that cleared meanwhile clears it; one still
    /// active raises nothing new).
    ///
    /// The condition counts as active in `Unacknowledged` and `Acknowledged`, inactive in every
    /// other state. `Latched` is restored as an acknowledged latch (the state does not say;
    /// a reset acknowledges anyway), or as `ReturnedUnacknowledged` if the rule no longer
    /// latches. `OutOfService` and `Suppressed` are restored as such (the caller ends them as
    /// ever); `Shelved` is refused ([`RuleError::ShelfNotRestorable`]): the state alone does not
    /// say when the shelf ends.
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
        let annunciation = match state {
            AlarmState::Shelved => {
                return Err(RuleError::ShelfNotRestorable(alarm_id.to_owned()));
            }
            AlarmState::Latched if !alarm.spec.latch => Annunciation::ReturnedUnacknowledged,
            state => Annunciation::of_state(state).unwrap_or(Annunciation::Normal),
        };
        alarm.annunciation = annunciation;
        alarm.condition_active = annunciation.is_active();
        alarm.shelf = None;
        alarm.out_of_service = state == AlarmState::OutOfService;
        alarm.suppressed = state == AlarmState::Suppressed;
        alarm.chatter = Chatter::default();
        alarm.last_value = last_value.filter(|v| v.is_finite());
        alarm.pending_since_ms = None;
        alarm.last_input_ms = None;
        alarm.memory.forget();
        Ok(())
    }

    /// Every alarm's whole state, in spec order, with its times relative to `now_ms` (see
    /// [`SavedAlarm`]): for the caller to keep (serde) and give to
    /// [`Engine::restore_saved`] after a restart.
    pub fn save(&self, now_ms: i64) -> Vec<SavedAlarm> {
        self.alarms.iter().map(|alarm| alarm.save(now_ms)).collect()
    }

    /// Puts back the alarms [`Engine::save`] saved, their times relative to `now_ms` (the
    /// restarted process's clock): an engine of the same specs then behaves as the saved one
    /// would have, `now_ms` standing for the save's `now_ms`. Makes no transition.
    ///
    /// Alarms this engine does not have are skipped and returned as
    /// [`RuleError::UnknownAlarm`]; alarms not in `saved` are left as they are. Where a rule
    /// changed in between, what no longer fits is dropped rather than refused: a window or run
    /// of another kind of condition (the condition starts again with the next reading), and
    /// the latch of a rule that no longer latches (`Latched` becomes `ReturnedUnacknowledged`,
    /// or `Normal` if acknowledged).
    pub fn restore_saved(&mut self, saved: Vec<SavedAlarm>, now_ms: i64) -> Vec<RuleError> {
        let mut skipped = Vec::new();
        for saved in saved {
            match self
                .by_id
                .get(saved.alarm_id())
                .and_then(|&index| self.alarms.get_mut(index))
            {
                Some(alarm) => alarm.restore_saved(saved, now_ms),
                None => skipped.push(RuleError::UnknownAlarm(saved.alarm_id().to_owned())),
            }
        }
        skipped
    }

    fn alarm_mut(&mut self, alarm_id: &str) -> Result<&mut Alarm, CommandError> {
        self.by_id
            .get(alarm_id)
            .and_then(|&index| self.alarms.get_mut(index))
            .ok_or_else(|| CommandError::UnknownAlarm(alarm_id.to_owned()))
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

    /// The earliest `ts_ms` at which a [`Engine::tick`] would change something: a pending
    /// raise or clear, the end of a shelf, or the end of chatter. Lets the caller sleep until
    /// then instead of ticking on a fixed period.
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

/// The ISA-18.2 state table of the module docs for a rule that does not latch. `None`: the
/// input changes nothing in that state. Public so that alarms kept outside an [`Engine`] (the
/// console's own, such as a gateway gone offline) follow the same table. A `Latched` alarm
/// counts as acknowledged here (whether it was is the engine's to know), and the hidden states
/// (`Shelved`, `OutOfService`, `Suppressed`) change only by the engine's commands: `None`.
pub fn next_state(state: AlarmState, input: AlarmInput) -> Option<(AlarmState, TransitionKind)> {
    let now = Annunciation::of_state(state)?;
    let (next, kind) = match input {
        AlarmInput::Raise => (now.raise()?, TransitionKind::Raised),
        AlarmInput::Clear => (now.clear(false)?, TransitionKind::Cleared),
        AlarmInput::Acknowledge => (now.acknowledge()?, TransitionKind::Acknowledged),
    };
    Some((next.state(), kind))
}

fn is_active(state: AlarmState) -> bool {
    matches!(state, AlarmState::Unacknowledged | AlarmState::Acknowledged)
}

/// One compiled rule and its alarm's state.
#[derive(Debug, Clone)]
struct Alarm {
    spec: RuleSpec,
    /// Where the alarm stands in the state table when nothing hides it. While it is hidden it
    /// keeps what it was when hidden (for the latch), and is set afresh when it comes back.
    annunciation: Annunciation,
    /// Whether the condition is active, after its delays; followed whether or not the alarm
    /// is shown (see the module docs' invariants).
    condition_active: bool,
    /// `ts_ms` of the first reading of the current unbroken run of readings meeting the
    /// condition that would change the condition's activeness: the raise condition while it
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
    /// The operator's shelf, while shelved.
    shelf: Option<Shelf>,
    /// Taken out of service by an operator.
    out_of_service: bool,
    /// Suppressed by design by the caller.
    suppressed: bool,
    /// The raises counted for chatter, and whether the alarm chatters. Empty while hidden.
    chatter: Chatter,
}

impl Alarm {
    fn new(spec: RuleSpec) -> Self {
        Self {
            memory: ConditionMemory::new(&spec.condition),
            spec,
            annunciation: Annunciation::Normal,
            condition_active: false,
            pending_since_ms: None,
            last_value: None,
            last_input_ms: None,
            shelf: None,
            out_of_service: false,
            suppressed: false,
            chatter: Chatter::default(),
        }
    }

    /// What an operator sees: the first of out of service, shelved and suppressed that
    /// applies, else the annunciated state.
    fn state(&self) -> AlarmState {
        if self.out_of_service {
            AlarmState::OutOfService
        } else if self.shelf.is_some() {
            AlarmState::Shelved
        } else if self.suppressed {
            AlarmState::Suppressed
        } else {
            self.annunciation.state()
        }
    }

    fn is_hidden(&self) -> bool {
        self.out_of_service || self.shelf.is_some() || self.suppressed
    }

    fn view(&self) -> AlarmView<'_> {
        let state = self.state();
        AlarmView {
            spec: &self.spec,
            state,
            active: is_active(state),
            condition_active: self.condition_active,
            shelf: self.shelf,
            chattering: self.chatter.chattering,
            last_value: self.last_value,
        }
    }

    /// A transition to the state the alarm is in now.
    fn transition(&self, kind: TransitionKind, value: Option<f64>, ts_ms: i64) -> Transition {
        let state = self.state();
        Transition {
            alarm_id: self.spec.alarm_id.clone(),
            kind,
            state,
            active: is_active(state),
            value,
            ts_ms,
        }
    }

    /// Whether an input stamped `ts_ms` is older than the newest one applied.
    fn is_stale(&self, ts_ms: i64) -> bool {
        self.last_input_ms.is_some_and(|last| ts_ms < last)
    }

    /// Applies one finite reading of the rule's point, unless it is stale or not a value the
    /// condition reads.
    fn on_reading(&mut self, value: f64, ts_ms: i64) -> Vec<Transition> {
        if self.is_stale(ts_ms) {
            return Vec::new();
        }
        match self.judge(value, ts_ms) {
            Some(level) => self.apply(level, Some(value), ts_ms),
            None => Vec::new(),
        }
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

    /// Applies one fresh input (a reading or external setting) already judged. A raise or
    /// clear whose delay ran out before this input, while the last input held, settles
    /// first, at the time it ran out, as a tick then would have settled it: an input that
    /// comes between the delay's end and the next tick does not cancel it. So at most two
    /// transitions.
    fn apply(&mut self, level: Level, value: Option<f64>, ts_ms: i64) -> Vec<Transition> {
        let mut out = Vec::new();
        if let Some((since, delay)) = self.pending() {
            let due = since.saturating_add(i64::try_from(delay).unwrap_or(i64::MAX));
            if due < ts_ms {
                out.extend(self.settle_if_due(due));
            }
        }
        out.extend(self.apply_now(level, value, ts_ms));
        out
    }

    fn apply_now(&mut self, level: Level, value: Option<f64>, ts_ms: i64) -> Option<Transition> {
        self.last_input_ms = Some(ts_ms);
        self.last_value = value;
        // The one level that moves the condition: raise while inactive, clear while active.
        // Any other (the deadband included) cancels what was pending.
        let moves = if self.condition_active {
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

    /// What is pending (see `pending_since_ms`): since when, and its delay.
    fn pending(&self) -> Option<(i64, u64)> {
        let since = self.pending_since_ms?;
        Some(if self.condition_active {
            (since, self.spec.off_delay_ms)
        } else {
            (since, self.spec.on_delay_ms)
        })
    }

    /// When a tick would next change something: the pending raise or clear, the shelf's end,
    /// the end of chatter.
    fn deadline_ms(&self) -> Option<i64> {
        let pending = self
            .pending()
            .map(|(since, delay)| since.saturating_add(i64::try_from(delay).unwrap_or(i64::MAX)));
        let shelf = self.shelf.map(|shelf| shelf.until_ms);
        [pending, shelf, self.chatter.ends_at_ms()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Time passes (see [`Engine::tick`]): at most two transitions.
    fn tick(&mut self, ts_ms: i64, transitions: &mut Vec<Transition>) {
        transitions.extend(self.settle_if_due(ts_ms));
        if self.shelf.is_some_and(|shelf| ts_ms >= shelf.until_ms) {
            self.shelf = None;
            self.come_back(TransitionKind::Unshelved, ts_ms, transitions);
        }
        if self.chatter.ends_at_ms().is_some_and(|end| ts_ms >= end) {
            self.chatter = Chatter::default();
            self.come_back(TransitionKind::ChatterEnded, ts_ms, transitions);
        }
    }

    /// Raises or clears the condition if a raise or clear is pending and its delay has run out
    /// by `ts_ms`. A transition carries the last value applied.
    fn settle_if_due(&mut self, ts_ms: i64) -> Option<Transition> {
        let (since, delay) = self.pending()?;
        // Negative when `ts_ms` is before `since` (an old tick): not due.
        let elapsed = u64::try_from(ts_ms.saturating_sub(since)).ok()?;
        if elapsed < delay {
            return None;
        }
        self.pending_since_ms = None;
        self.condition_active = !self.condition_active;
        if self.is_hidden() {
            // A one-shot shelf ends when the condition clears; the alarm comes back with it
            // inactive, so with one transition.
            if !self.condition_active && self.shelf.is_some_and(|shelf| shelf.one_shot) {
                self.shelf = None;
                if !self.is_hidden() {
                    self.annunciation = self.annunciation.at_rest(self.spec.latch);
                }
                return Some(self.transition(TransitionKind::Unshelved, None, ts_ms));
            }
            return None;
        }
        if self.condition_active {
            self.announce_raise(ts_ms)
        } else if self.chatter.chattering {
            None
        } else {
            let next = self.annunciation.clear(self.spec.latch)?;
            self.annunciation = next;
            Some(self.transition(TransitionKind::Cleared, self.last_value, ts_ms))
        }
    }

    /// The condition became active while the alarm is shown (or it came back active): counts
    /// the raise, and makes the `Raised`, the `ChatterStarted`, or nothing while chattering.
    fn announce_raise(&mut self, ts_ms: i64) -> Option<Transition> {
        let was_chattering = self.chatter.chattering;
        let starts_chatter = self.spec.collapse_chatter && self.chatter.count_raise(ts_ms);
        if was_chattering {
            return None;
        }
        let next = self.annunciation.raise()?;
        self.annunciation = next;
        let kind = if starts_chatter {
            TransitionKind::ChatterStarted
        } else {
            TransitionKind::Raised
        };
        Some(self.transition(kind, self.last_value, ts_ms))
    }

    /// Something starts hiding the alarm. The first one ends any chatter, silently (the
    /// caller's transition says what happened); the annunciated state is kept for the latch.
    fn hide(&mut self) {
        if !self.is_hidden() {
            self.chatter = Chatter::default();
        }
    }

    /// Something that hid the alarm, or its chatter, has ended (and is already cleared): the
    /// transition `kind`, and if nothing else hides the alarm it comes back in the state its
    /// condition says (see the module docs): `Normal` or `Latched`, then a `Raised` if the
    /// condition is active.
    fn come_back(&mut self, kind: TransitionKind, ts_ms: i64, transitions: &mut Vec<Transition>) {
        let value = (kind == TransitionKind::ChatterEnded)
            .then_some(self.last_value)
            .flatten();
        if self.is_hidden() {
            transitions.push(self.transition(kind, value, ts_ms));
            return;
        }
        self.annunciation = self.annunciation.at_rest(self.spec.latch);
        transitions.push(self.transition(kind, value, ts_ms));
        if self.condition_active {
            transitions.extend(self.announce_raise(ts_ms));
        }
    }

    /// Everything about the alarm but its spec, times relative to `now_ms`.
    fn save(&self, now_ms: i64) -> SavedAlarm {
        let relative = |ts_ms: i64| ts_ms.saturating_sub(now_ms);
        let memory = match &self.memory {
            ConditionMemory::Nothing => SavedMemory::Nothing,
            ConditionMemory::Window(window) => SavedMemory::Window(
                window
                    .samples()
                    .map(|(ts_ms, value)| (relative(ts_ms), value))
                    .collect(),
            ),
            ConditionMemory::Run(run) => {
                SavedMemory::Run(run.map(|(first, since)| (first, relative(since))))
            }
        };
        SavedAlarm {
            alarm_id: self.spec.alarm_id.to_string(),
            annunciation: self.annunciation,
            condition_active: self.condition_active,
            pending_since_ms: self.pending_since_ms.map(relative),
            last_input_ms: self.last_input_ms.map(relative),
            last_value: self.last_value.filter(|v| v.is_finite()),
            memory,
            shelf: self.shelf.map(|shelf| Shelf {
                until_ms: relative(shelf.until_ms),
                ..shelf
            }),
            out_of_service: self.out_of_service,
            suppressed: self.suppressed,
            chatter: self.chatter.shifted(now_ms.saturating_neg()),
        }
    }

    /// Puts back what [`Alarm::save`] took, its times relative to `now_ms` (see
    /// [`Engine::restore_saved`] for what is dropped when the rule changed).
    fn restore_saved(&mut self, saved: SavedAlarm, now_ms: i64) {
        let absolute = |ts_ms: i64| ts_ms.saturating_add(now_ms);
        self.annunciation = match saved.annunciation {
            Annunciation::Latched { acknowledged } if !self.spec.latch => {
                if acknowledged {
                    Annunciation::Normal
                } else {
                    Annunciation::ReturnedUnacknowledged
                }
            }
            annunciation => annunciation,
        };
        self.condition_active = saved.condition_active;
        self.pending_since_ms = saved.pending_since_ms.map(absolute);
        self.last_input_ms = saved.last_input_ms.map(absolute);
        self.last_value = saved.last_value.filter(|v| v.is_finite());
        self.shelf = saved.shelf.map(|shelf| Shelf {
            until_ms: absolute(shelf.until_ms),
            ..shelf
        });
        self.out_of_service = saved.out_of_service;
        self.suppressed = saved.suppressed;
        let chatter = saved.chatter.shifted(now_ms);
        // Chatter needs its last raise to end, and a hidden alarm counts none.
        self.chatter = if self.is_hidden() || (chatter.chattering && chatter.ends_at_ms().is_none())
        {
            Chatter::default()
        } else {
            chatter
        };
        self.memory.forget();
        let newest = self.last_input_ms;
        match (&mut self.memory, saved.memory) {
            (ConditionMemory::Window(window), SavedMemory::Window(samples)) => {
                window.refill(
                    samples
                        .into_iter()
                        .map(|(ts_ms, value)| (absolute(ts_ms), value)),
                    newest,
                );
            }
            (ConditionMemory::Run(run), SavedMemory::Run(Some((first, since))))
                if first.is_finite() && newest.is_some_and(|newest| absolute(since) <= newest) =>
            {
                *run = Some((first, absolute(since)));
            }
            // Nothing to remember, or a memory of another condition: forgotten.
            _ => {}
        }
    }
}
