//! The demo's scripted minute: smoke on the 12th floor, a leak in the pump room, the fire
//! main losing pressure and getting it back, the smoke clearing.

use std::time::Duration;

use tokio::time::Instant;

use crate::DemoDevice;
use crate::building::short_place;

/// What a step does to its device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Set the kind's alarm value.
    Trigger,
    /// Set the kind's normal value.
    Clear,
}

/// One scripted change.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    /// Time since the scenario started.
    pub at: Duration,
    pub kind: &'static str,
    pub place: &'static str,
    pub change: Change,
    /// What the audience should see happen.
    pub says: &'static str,
}

pub const STEPS: [Step; 5] = [
    Step {
        at: Duration::from_secs(10),
        kind: "smoke",
        place: "B1-2-12-1203",
        change: Change::Trigger,
        says: "smoke rises in 1号楼 2单元 12层 1203室 (4.0 %/m): a HIGH alarm on the board",
    },
    Step {
        at: Duration::from_secs(20),
        kind: "leak",
        place: "B1-1-pump-room",
        change: Change::Trigger,
        says: "water on the fire pump room's floor (1号楼 1层 消防水泵房): a MEDIUM alarm",
    },
    Step {
        at: Duration::from_secs(30),
        kind: "pressure",
        place: "B1-1-pump-room",
        change: Change::Trigger,
        says: "fire-main pressure drops to 0.52 MPa: SUPERVISORY after 2 s below 0.60",
    },
    Step {
        at: Duration::from_secs(45),
        kind: "pressure",
        place: "B1-1-pump-room",
        change: Change::Clear,
        says: "fire-main pressure restores to 0.72 MPa",
    },
    Step {
        at: Duration::from_secs(60),
        kind: "smoke",
        place: "B1-2-12-1203",
        change: Change::Clear,
        says: "the smoke in 1203室 clears (0.3 %/m): the alarm returns to normal, still to acknowledge",
    },
];

/// Play [`STEPS`] against the demo's devices, printing each one. Times count from `start`.
pub async fn play(devices: Vec<DemoDevice>, start: Instant) {
    for step in STEPS {
        tokio::time::sleep_until(start + step.at).await;
        let device = devices
            .iter()
            .find(|d| d.config.kind == step.kind && short_place(&d.config) == step.place);
        let done = match device {
            Some(device) => match step.change {
                Change::Trigger => device.trigger(),
                Change::Clear => device.clear(),
            },
            None => Err(anyhow::anyhow!("no {} device at {}", step.kind, step.place)),
        };
        match done {
            Ok(()) => println!(
                "[+{:>5.1} s] scenario: {}",
                start.elapsed().as_secs_f64(),
                step.says
            ),
            Err(err) => println!("scenario step failed: {err:#}"),
        }
    }
    println!(
        "[+{:>5.1} s] scenario over. The leak is still active: `shouwang demo clear leak B1-1-pump-room` ends it. \
         Acknowledge alarms on the board; trigger more from another terminal.",
        start.elapsed().as_secs_f64()
    );
}
