//! The parts of an alarm's ISA-18.2 lifecycle beyond its condition: the annunciated state with
//! its latch, shelves, and chatter. Pure data and small steps; [`crate::Engine`] combines them
//! (its module docs have the whole table and what combines how).

use serde::{Deserialize, Serialize};

use crate::AlarmState;

/// Raises within [`CHATTER_WINDOW_MS`] that make an alarm chatter (EEMUA 191 and ISA-18.2's
/// "3 or more transitions in 1 minute", counted on raises).
pub const CHATTER_RAISES: usize = 3;

/// How close together [`CHATTER_RAISES`] raises must come to start chatter (the newest less
/// than this after the oldest), and how long without a raise ends it.
pub const CHATTER_WINDOW_MS: i64 = 60_000;

const _: () = assert!(CHATTER_RAISES >= 2, "one raise alone is not chatter");

/// An operator's shelf on one alarm. The caller (the gateway) checks who shelves, why, and that
/// `until_ms` is within the site's maximum; the engine only refuses a shelf that ends before it
/// starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Shelf {
    /// When the shelf ends at the latest, on the same monotonic clock as every `ts_ms`
    /// ([`crate::Engine::tick`] ends it then). Also the end of a one-shot shelf whose condition
    /// has not cleared by then: every shelf has a maximum.
    pub until_ms: i64,
    /// One-shot: the shelf also ends when the condition clears (the first clear after it
    /// began: on an alarm whose condition is inactive it covers the next occurrence).
    pub one_shot: bool,
}

/// What an operator sees of an alarm when nothing hides it: the ISA-18.2 state table, with the
/// latch. Whether a latched alarm was acknowledged is kept here, the wire's [`AlarmState`]
/// says only `latched` (a reset acknowledges as well).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Annunciation {
    Normal,
    Unacknowledged,
    Acknowledged,
    ReturnedUnacknowledged,
    Latched { acknowledged: bool },
}

impl Annunciation {
    pub(crate) fn state(self) -> AlarmState {
        match self {
            Annunciation::Normal => AlarmState::Normal,
            Annunciation::Unacknowledged => AlarmState::Unacknowledged,
            Annunciation::Acknowledged => AlarmState::Acknowledged,
            Annunciation::ReturnedUnacknowledged => AlarmState::ReturnedUnacknowledged,
            Annunciation::Latched { .. } => AlarmState::Latched,
        }
    }

    /// The annunciated state a wire state stands for; `None` for the states that hide one
    /// (shelved, out of service, suppressed). A latched alarm counts as acknowledged: the
    /// wire state does not say, and a second acknowledgement is the harmless mistake.
    pub(crate) fn of_state(state: AlarmState) -> Option<Self> {
        Some(match state {
            AlarmState::Normal => Annunciation::Normal,
            AlarmState::Unacknowledged => Annunciation::Unacknowledged,
            AlarmState::Acknowledged => Annunciation::Acknowledged,
            AlarmState::ReturnedUnacknowledged => Annunciation::ReturnedUnacknowledged,
            AlarmState::Latched => Annunciation::Latched { acknowledged: true },
            AlarmState::Shelved | AlarmState::OutOfService | AlarmState::Suppressed => {
                return None;
            }
        })
    }

    /// Raised and not yet cleared (`Unacknowledged`, `Acknowledged`).
    pub(crate) fn is_active(self) -> bool {
        matches!(
            self,
            Annunciation::Unacknowledged | Annunciation::Acknowledged
        )
    }

    /// Whether a latching alarm in this state holds its latch: it was raised and has not been
    /// reset since.
    pub(crate) fn holds_latch(self) -> bool {
        matches!(
            self,
            Annunciation::Unacknowledged
                | Annunciation::Acknowledged
                | Annunciation::Latched { .. }
        )
    }

    /// Whether an operator has acknowledged the current occurrence.
    pub(crate) fn is_acknowledged(self) -> bool {
        matches!(
            self,
            Annunciation::Acknowledged | Annunciation::Latched { acknowledged: true }
        )
    }

    /// The condition became active. `None`: it already was.
    pub(crate) fn raise(self) -> Option<Self> {
        match self {
            Annunciation::Normal
            | Annunciation::ReturnedUnacknowledged
            | Annunciation::Latched { .. } => Some(Annunciation::Unacknowledged),
            Annunciation::Unacknowledged | Annunciation::Acknowledged => None,
        }
    }

    /// The condition cleared. A latching alarm latches, keeping whether it was acknowledged.
    /// `None`: it was not active.
    pub(crate) fn clear(self, latch: bool) -> Option<Self> {
        match (self, latch) {
            (Annunciation::Unacknowledged, false) => Some(Annunciation::ReturnedUnacknowledged),
            (Annunciation::Acknowledged, false) => Some(Annunciation::Normal),
            (Annunciation::Unacknowledged | Annunciation::Acknowledged, true) => {
                Some(Annunciation::Latched {
                    acknowledged: self.is_acknowledged(),
                })
            }
            (
                Annunciation::Normal
                | Annunciation::ReturnedUnacknowledged
                | Annunciation::Latched { .. },
                _,
            ) => None,
        }
    }

    /// An operator acknowledges. `None`: nothing to acknowledge.
    pub(crate) fn acknowledge(self) -> Option<Self> {
        match self {
            Annunciation::Unacknowledged => Some(Annunciation::Acknowledged),
            Annunciation::ReturnedUnacknowledged => Some(Annunciation::Normal),
            Annunciation::Latched {
                acknowledged: false,
            } => Some(Annunciation::Latched { acknowledged: true }),
            Annunciation::Normal
            | Annunciation::Acknowledged
            | Annunciation::Latched { acknowledged: true } => None,
        }
    }

    /// What an alarm whose condition is inactive shows when it comes back into view (after a
    /// shelf, out of service, suppression or chatter): `Latched` if it latches and held its
    /// latch (keeping whether it was acknowledged), else `Normal`.
    pub(crate) fn at_rest(self, latch: bool) -> Self {
        if latch && self.holds_latch() {
            Annunciation::Latched {
                acknowledged: self.is_acknowledged(),
            }
        } else {
            Annunciation::Normal
        }
    }
}

/// The raises an alarm counts for chatter, and whether it is chattering.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Chatter {
    /// `ts_ms` of the latest raises counted, oldest first, newest last.
    pub(crate) raises_ms: [Option<i64>; CHATTER_RAISES],
    pub(crate) chattering: bool,
}

impl Chatter {
    /// Counts a raise at `ts_ms`. True when it starts chatter: it is the
    /// [`CHATTER_RAISES`]-th within [`CHATTER_WINDOW_MS`] and the alarm was not chattering.
    pub(crate) fn count_raise(&mut self, ts_ms: i64) -> bool {
        self.raises_ms.rotate_left(1);
        self.raises_ms[CHATTER_RAISES - 1] = Some(ts_ms);
        if self.chattering {
            return false;
        }
        // A raise stamped before the oldest (a command's time) is within the window too.
        self.chattering = self.raises_ms[0]
            .is_some_and(|oldest| ts_ms.saturating_sub(oldest) < CHATTER_WINDOW_MS);
        self.chattering
    }

    /// When chatter ends if no raise comes first; `None` when not chattering.
    pub(crate) fn ends_at_ms(&self) -> Option<i64> {
        let last = self.raises_ms[CHATTER_RAISES - 1]?;
        self.chattering
            .then(|| last.saturating_add(CHATTER_WINDOW_MS))
    }

    /// Every time moved by `by_ms` (for saving and restoring relative to a `now_ms`).
    pub(crate) fn shifted(mut self, by_ms: i64) -> Self {
        for raise in self.raises_ms.iter_mut().flatten() {
            *raise = raise.saturating_add(by_ms);
        }
        self
    }
}
