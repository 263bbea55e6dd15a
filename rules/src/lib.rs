//! Shouwang's rule engine: a pure library.
//!
//! Readings and the time go in, alarm transitions come out. Nothing here does I/O, spawns
//! tasks or reads a clock: every timing behaviour (on- and off-delays, rate-of-change windows,
//! frozen-value runs) is driven by the `ts_ms` the caller passes, so it is tested without
//! sleeping.
//!
//! Beyond the ISA-18.2 state table the engine keeps the rest of an alarm's lifecycle: latching
//! and reset, shelving, out of service, suppression by design, chatter, and a serialisable copy
//! of every alarm's state for a restart ([`Engine::save`]).
//!
//! The domain words live here too ([`SignalClass`], [`Priority`], [`AlarmState`]) because
//! the engine is where they mean something; `shouwang-wire` re-exports them.

use serde::{Deserialize, Serialize};

pub mod engine;
mod lifecycle;
pub mod packs;
mod saved;
mod window;

pub use engine::*;

/// What kind of signal an alarm is. Kept apart everywhere: in data, on screen and in routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalClass {
    /// Fire, leak, trapped passenger, forced door: needs immediate action.
    Alarm,
    /// A protection system is off-normal: valve closed, pressure low, door held open.
    Supervisory,
    /// The monitoring itself is impaired: communication lost, sensor out of range.
    Fault,
}

/// How urgently an operator must act.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    High,
    Medium,
    Low,
}

/// ISA-18.2 alarm states: what an operator sees of an alarm (the engine's module docs have the
/// table). Travels on the wire in snake_case (`out_of_service`): a console must know every
/// state a gateway may send, so consoles are upgraded before gateways.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlarmState {
    /// Condition inactive, nothing to acknowledge.
    Normal,
    /// Condition active, not yet acknowledged.
    Unacknowledged,
    /// Condition active, acknowledged by an operator.
    Acknowledged,
    /// Condition cleared before anyone acknowledged it.
    ReturnedUnacknowledged,
    /// A latching alarm whose condition has cleared: it stays until an operator resets it
    /// (acknowledged or not; a reset acknowledges too).
    Latched,
    /// Shelved by an operator (timed, or one-shot until its condition clears, always with an
    /// end): the condition is still followed but not announced.
    Shelved,
    /// Removed from service (maintenance, a broken detector): not announced until returned.
    OutOfService,
    /// Suppressed by design by the caller (the sensors behind a lost link, a building under
    /// maintenance): not announced while the reason lasts.
    Suppressed,
}

/// What happened to an alarm in one transition. Travels on the wire in snake_case, like
/// [`AlarmState`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransitionKind {
    /// The condition became active (or was active when the alarm came back into view).
    Raised,
    /// The condition returned to normal.
    Cleared,
    /// An operator acknowledged the alarm.
    Acknowledged,
    /// An operator reset a latched alarm (which acknowledges it too).
    Reset,
    /// An operator shelved the alarm (or changed its shelf).
    Shelved,
    /// The shelf ended: by command, at its end time, or (one-shot) when the condition cleared.
    Unshelved,
    /// The alarm was taken out of service.
    RemovedFromService,
    /// The alarm was returned to service.
    ReturnedToService,
    /// The caller suppressed the alarm by design.
    Suppressed,
    /// The suppression ended.
    Unsuppressed,
    /// The alarm was raised often enough to be chattering: this one transition stands for the
    /// raises and clears that follow until the chatter ends.
    ChatterStarted,
    /// No raise for a while: the alarm reports its raises and clears one by one again.
    ChatterEnded,
}
