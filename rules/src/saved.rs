//! An alarm's whole state for a restart: what [`crate::Engine::save`] gives and
//! [`crate::Engine::restore_saved`] takes.
//!
//! # Time
//!
//! Every `ts_ms` in the engine is on the caller's monotonic clock, which starts again with the
//! process: a saved `until_ms` of 5,000,000 would mean nothing to a gateway whose clock now
//! reads 2,000. So each time is saved relative to the `now_ms` given to `save` (negative:
//! before it) and restored relative to the `now_ms` given to `restore_saved`: a shelf with ten
//! minutes left has ten minutes left after the restart, chatter that had 20 s to go has 20 s to
//! go, a pending on-delay has as much left, and a rate-of-change window keeps its readings as
//! old as they were. The time the gateway was down does not pass for the alarms (it has no
//! monotonic measure of it); whoever restores may pass a `now_ms` earlier than its clock to let
//! a known gap pass.
//!
//! With the same specs, and a restore's `now_ms` standing for the save's, the restored engine
//! makes exactly the transitions the saved one would have. One approximation: a window longer
//! than 510 ms stores its readings in buckets of time (see `window.rs`) whose edges fall on
//! other readings after a shift of the clock, so a low (or high) value may leave such a window
//! at a slightly different time, within the slack the window documents.
//!
//! # Format
//!
//! serde, meant for JSON: one object per alarm, fields in snake_case. Values that are not
//! finite are saved as none (JSON has no NaN): only an external setting given a non-finite
//! value has one.

use serde::{Deserialize, Serialize};

use crate::lifecycle::{Annunciation, Chatter, Shelf};

/// One alarm's state, everything but its spec (the restored engine is built from the config
/// again). The fields are the engine's business; the caller keeps the whole and gives it back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedAlarm {
    /// Which alarm.
    pub(crate) alarm_id: String,
    /// The annunciated state with its latch: `"normal"`, `"unacknowledged"`,
    /// `"acknowledged"`, `"returned_unacknowledged"`, or `{"latched": {"acknowledged": b}}`.
    /// While hidden, the one it had when hidden.
    pub(crate) annunciation: Annunciation,
    /// Whether the condition is active, after its delays.
    pub(crate) condition_active: bool,
    /// Since when a raise or clear is pending (relative).
    pub(crate) pending_since_ms: Option<i64>,
    /// The newest input applied (relative): older inputs after the restore are stale.
    pub(crate) last_input_ms: Option<i64>,
    pub(crate) last_value: Option<f64>,
    /// What the condition remembers of earlier readings.
    pub(crate) memory: SavedMemory,
    /// The shelf, its `until_ms` relative.
    pub(crate) shelf: Option<Shelf>,
    pub(crate) out_of_service: bool,
    pub(crate) suppressed: bool,
    /// The raises counted for chatter (relative), and whether it chatters.
    pub(crate) chatter: Chatter,
}

impl SavedAlarm {
    /// The alarm this is the state of.
    pub fn alarm_id(&self) -> &str {
        &self.alarm_id
    }
}

/// What a condition remembers, times relative.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum SavedMemory {
    /// A condition that judges each value on its own.
    Nothing,
    /// A `RiseWithin` or `FallWithin` window's `(ts_ms, value)` pairs, oldest first (the
    /// values of a `FallWithin` negated, as the window keeps them).
    Window(Vec<(i64, f64)>),
    /// A `Frozen` run: the value that started it and since when.
    Run(Option<(f64, i64)>),
}
