//! A serial link's time budget: how much of each second its polls keep the line busy. Pure.
//!
//! One exchange on an RTU line takes the request's characters, the answer's characters and
//! two silences of 3.5 characters (before the request, and the device's wait before it
//! answers; Modbus over Serial Line V1.02 §2.5.1.1):
//!
//! `exchange = t3.5 + request + t3.5 + answer`, with an 8-byte read request and a
//! `5 + 2 x count`-byte answer for registers (`5 + ceil(count / 8)` for bits).
//!
//! A device's poll is one exchange per block of its [`ReadPlan`]; a link's load is the sum
//! over its devices of (poll time / poll interval). What the estimate leaves out: the
//! devices' own processing time before they answer (often a few ms, more on slow
//! devices), retries and the timeouts of dead devices. So `check` refuses a link above
//! 100 % (it cannot fit, whatever the devices do), and `plan` warns above
//! [`WARN_ABOVE`], where that slack is gone.
//!
//! Modbus TCP links have no wire time to count (a Modbus TCP gateway in front of a serial
//! bus has, but we do not know its baud rate: describe the bus as `rtu-over-tcp` if the
//! device server is transparent).

use std::fmt;
use std::time::Duration;

use super::link::{LinkKind, LinkSpec, links};
use super::plan::{Block, ReadPlan};
use super::rtu::Timing;
use crate::config::{Config, RegisterTable};

/// Above this share of the line's time, `plan` warns: no slack for slow devices, retries
/// or a dead device's timeouts.
pub const WARN_ABOVE: f64 = 0.8;

/// The bytes of one read's answer on RTU.
pub fn answer_bytes(block: &Block) -> usize {
    match block.table {
        RegisterTable::Holding | RegisterTable::Input => 5 + 2 * usize::from(block.count),
        RegisterTable::Coil | RegisterTable::DiscreteInput => {
            5 + usize::from(block.count.div_ceil(8))
        }
    }
}

/// The line time of one read exchange of `block`.
pub fn exchange_time(timing: &Timing, block: &Block) -> Duration {
    timing.t3_5 * 2 + timing.wire_time(8 + answer_bytes(block))
}

/// The line time of one poll of a device read with `plan`.
pub fn poll_time(timing: &Timing, plan: &ReadPlan) -> Duration {
    plan.blocks().iter().map(|b| exchange_time(timing, b)).sum()
}

/// One link's load.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkLoad {
    pub link: String,
    /// `rtu /dev/ttyUSB0 9600 baud`, `tcp 10.0.0.5:502`, ...
    pub describe: String,
    pub devices: usize,
    pub requests_per_s: f64,
    /// Seconds of line time per second (the share of the line busy); None for TCP.
    pub utilisation: Option<f64>,
}

/// The load of every link of `config`.
pub fn loads(config: &Config) -> Vec<LinkLoad> {
    links(config).iter().map(|s| load(config, s)).collect()
}

fn load(config: &Config, spec: &LinkSpec) -> LinkLoad {
    let mut requests_per_s = 0.0;
    let mut busy = 0.0;
    for &(i, _) in &spec.devices {
        let Some(device) = config.devices.get(i) else {
            continue;
        };
        let plan = ReadPlan::for_device(device);
        let per_s = 1000.0 / device.poll_interval_ms.max(1) as f64;
        requests_per_s += plan.blocks().len() as f64 * per_s;
        if let Some(t) = spec.kind.timing() {
            busy += poll_time(&t, &plan).as_secs_f64() * per_s;
        }
    }
    let describe = match &spec.kind {
        LinkKind::Tcp { address } => format!("tcp {address}"),
        LinkKind::RtuOverTcp { address, baud, .. } => {
            format!("rtu-over-tcp {address} ({baud} baud behind it)")
        }
        LinkKind::Rtu { port, baud, .. } => format!("rtu {port} {baud} baud"),
    };
    LinkLoad {
        link: spec.id.clone(),
        describe,
        devices: spec.devices.len(),
        requests_per_s,
        utilisation: spec.kind.timing().map(|_| busy),
    }
}

impl fmt::Display for LinkLoad {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "link {} ({}): {} devices, {:.1} requests/s",
            self.link, self.describe, self.devices, self.requests_per_s
        )?;
        match self.utilisation {
            None => write!(f, ", bus time not counted (Modbus TCP)"),
            Some(u) if u > 1.0 => write!(
                f,
                ", needs {:.0} % of the line's time: DOES NOT FIT",
                u * 100.0
            ),
            Some(u) if u > WARN_ABOVE => write!(
                f,
                ", {:.0} % of the line's time: above {:.0} %, no room for slow devices, retries or a dead device's timeouts",
                u * 100.0,
                WARN_ABOVE * 100.0
            ),
            Some(u) => write!(f, ", {:.0} % of the line's time", u * 100.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(count: u16) -> Block {
        Block {
            table: RegisterTable::Holding,
            start: 0,
            count,
            points: vec![0],
        }
    }

    #[test]
    fn one_exchange_at_9600_baud_takes_its_characters_and_two_silences() {
        let t = Timing::serial(9600, 11);
        // 8 + 5 + 2 x 10 = 33 characters and 7 character times of silence: 40 x 1.146 ms.
        let e = exchange_time(&t, &block(10));
        assert_eq!(e, t.char_time * 33 + t.t3_5 * 2);
        assert!((e.as_secs_f64() - 0.0458).abs() < 0.0001, "{e:?}");
    }
}
