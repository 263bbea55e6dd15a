//! Sources: where readings come from. Each source turns its field bus into the one shape
//! the watch takes, a [`PollOutcome`] per device per poll (values, refused points, or a
//! link that failed), stamped on both clocks, and decides nothing about alarms.
//!
//! - [`modbus`]: Modbus devices (TCP, RTU, RTU over TCP), one task per link (a serial
//!   port or a TCP endpoint) serving every device behind it.
//! - [`gpio`]: dry contacts on GPIO inputs, debounced, reported on change.
//! - [`mqtt_sensors`]: devices that publish JSON to an MQTT broker, one task and one
//!   connection for all of them; each accepted message is one `PollOutcome`.
//!
//! A new source is a module here that sends `PollOutcome`s
//! on the runtime loop's channel; nothing else changes.

use crate::clock::Stamp;

pub mod gpio;
pub mod modbus;
pub mod mqtt_sensors;

/// Why one poll of a device failed as a whole.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LinkError {
    #[error("cannot resolve {0}")]
    Resolve(String),
    #[error("connect to {addr} failed: {reason}")]
    Connect { addr: String, reason: String },
    #[error("no answer within {0} ms")]
    Timeout(u64),
    #[error("transport error: {0}")]
    Transport(String),
    /// An answer that was no answer: from another unit, of another function, with a bad
    /// CRC or length, or a line that never fell silent.
    #[error("garbled answer: {0}")]
    Garbled(String),
}

/// One point that the device refused or sent nonsense for, while the link was fine.
#[derive(Debug, Clone, PartialEq)]
pub struct PointFault {
    pub point: String,
    pub reason: String,
    /// What the fault makes of the reading: `bad` (refused, undecodable), `wire-break`,
    /// `out-of-range`, `stale`. It reaches the broker and the store with no value.
    pub quality: Quality,
}

pub use shouwang_wire::Quality;

/// The result of one poll of one device.
#[derive(Debug, Clone, PartialEq)]
pub struct PollOutcome {
    /// Index into `Config::devices`.
    pub device: usize,
    /// When the poll finished.
    pub at: Stamp,
    pub result: Result<PolledValues, LinkError>,
}

/// The values one good poll produced.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PolledValues {
    /// (point name, scaled value), in config order.
    pub values: Vec<(String, f64)>,
    /// Points the device answered for with an exception or a value that would not decode.
    pub faults: Vec<PointFault>,
}

impl PolledValues {
    /// Every point of this poll, values and faults alike, as a `stale` point fault saying
    /// `reason`: the device answered with what it holds, not with what it reads now.
    pub fn into_stale(self, reason: &str) -> PolledValues {
        let faults = self
            .values
            .into_iter()
            .map(|(point, _)| point)
            .chain(self.faults.into_iter().map(|f| f.point))
            .map(|point| PointFault {
                point,
                reason: reason.to_string(),
                quality: Quality::Stale,
            })
            .collect();
        PolledValues {
            values: Vec::new(),
            faults,
        }
    }

    /// Whether the poll brought anything fresh: a value, or a point fault that is not
    /// `stale` (a refused register is an answer; a held value is not).
    pub fn is_fresh(&self) -> bool {
        !(self.values.is_empty()
            && !self.faults.is_empty()
            && self.faults.iter().all(|f| f.quality == Quality::Stale))
    }
}
