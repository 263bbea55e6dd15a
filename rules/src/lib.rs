//! Shouwang's rule engine: a pure library.
//!
//! Readings and the time go in, alarm transitions come out. Nothing here does I/O, spawns
//! tasks or reads a clock: every timing behaviour (on- and off-delays, rate-of-change windows,
//! frozen-value runs) is driven by the `ts_ms` the caller passes, so it is tested without
//! sleeping.
//!
//! The domain words live here too ([`SignalClass`], [`Priority`], [`AlarmState`]) because
//! the engine is where they mean something; `shouwang-wire` re-exports them.

use serde::{Deserialize, Serialize};

pub mod engine;
pub mod packs;
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

/// ISA-18.2 alarm states (the subset this engine implements so far).
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
}

/// What happened to an alarm in one transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransitionKind {
    /// The condition became active.
    Raised,
    /// The condition returned to normal.
    Cleared,
    /// An operator acknowledged the alarm.
    Acknowledged,
}
