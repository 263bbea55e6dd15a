//! The rule engine's behaviour, as the gateway and an operator see it. One test binary:
//! `scenarios` walks every transition, condition and delay by hand, `lifecycle` the latch,
//! shelves, service, suppression, chatter and saving, `model` checks random sequences against
//! a reference model of the state table, the lifecycle and every condition.

// clippy.toml allows these in `#[test]` fns only; the helpers here are test code too, where a
// panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod conditions;
mod lifecycle;
mod model;
mod scenarios;

use shouwang_rules::{Condition, Priority, RuleSpec, SignalClass};

/// A smoke-density rule on `building-3/smoke-12:density`: alarm at 10 %/m, clears under 8.
pub fn smoke(alarm_id: &str, on_delay_ms: u64) -> RuleSpec {
    RuleSpec {
        alarm_id: alarm_id.into(),
        device: "smoke-12".into(),
        point: "density".into(),
        class: SignalClass::Alarm,
        priority: Priority::High,
        condition: Condition::Above {
            limit: 10.0,
            deadband: 2.0,
        },
        on_delay_ms,
        off_delay_ms: 0,
        latch: false,
        collapse_chatter: true,
    }
}

/// A fire-water pressure rule on `pump-1:pressure`: supervisory at 0.3 MPa and below,
/// clears over 0.35.
pub fn low_pressure(alarm_id: &str, on_delay_ms: u64) -> RuleSpec {
    RuleSpec {
        alarm_id: alarm_id.into(),
        device: "pump-1".into(),
        point: "pressure".into(),
        class: SignalClass::Supervisory,
        priority: Priority::Medium,
        condition: Condition::Below {
            limit: 0.3,
            deadband: 0.05,
        },
        on_delay_ms,
        off_delay_ms: 0,
        latch: false,
        collapse_chatter: true,
    }
}

/// A fire alarm on `smoke-12:density` that latches: like [`smoke`], until an operator resets it.
pub fn fire(alarm_id: &str) -> RuleSpec {
    RuleSpec {
        latch: true,
        collapse_chatter: true,
        ..smoke(alarm_id, 0)
    }
}

/// A communication-lost fault on `elevator-2`, set from outside.
pub fn comm_lost(alarm_id: &str, on_delay_ms: u64) -> RuleSpec {
    RuleSpec {
        alarm_id: alarm_id.into(),
        device: "elevator-2".into(),
        point: "".into(),
        class: SignalClass::Fault,
        priority: Priority::Low,
        condition: Condition::External,
        on_delay_ms,
        off_delay_ms: 0,
        latch: false,
        collapse_chatter: true,
    }
}

/// A rule of `condition` on `device:point`, supervisory, without delays.
pub fn rule(alarm_id: &str, device: &str, point: &str, condition: Condition) -> RuleSpec {
    RuleSpec {
        alarm_id: alarm_id.into(),
        device: device.into(),
        point: point.into(),
        class: SignalClass::Supervisory,
        priority: Priority::Medium,
        condition,
        on_delay_ms: 0,
        off_delay_ms: 0,
        latch: false,
        collapse_chatter: true,
    }
}
