//! Declarative rule fixtures: a device, the rules it gets, a timeline of its readings and the
//! alarm transitions expected at each step (`shouwang-gateway rules test FIXTURE...`).
//!
//! ```toml
//! description = "smoke pack: the pre-alarm waits for its on-delay"
//! rule_packs = ["smoke"]          # shipped packs, as in [gateway]
//! rules_dir = "site-rules"        # optional: the site's rule files, relative to the fixture
//!
//! [device]                        # a [[devices]] table; id, transport and address default
//! profile = "smoke-detector"
//! building = "B1"
//!
//! [[at]]
//! s = 0                           # seconds from the start
//! values = { obscuration = 0.2, alarm = 0 }
//!
//! [[at]]
//! s = 1
//! values = { obscuration = 3.1 }  # the points that change; the others keep their value
//!
//! [[at]]
//! s = 3
//! expect = ["smoke-high raised"]
//! ```
//!
//! Each step happens at `s`: its `values` are one poll of the device (every point with its
//! latest value; a point never given is left out), or with `fail = true` a poll that failed;
//! `ack` acknowledges alarms by rule id; then time passes to `s` (on- and off-delays run
//! out). `expect` lists every transition of the step, `<rule> raised|cleared|acknowledged`,
//! in any order: a transition not listed fails the fixture as much as a listed one that does
//! not happen. A step without `expect` expects nothing. Steps run through the gateway's own
//! [`Watch`] and rule engine, with the config checks of a real gateway.
//!
//! Between two steps the clock runs on as the gateway's does: a tick every 100 ms (as the
//! gateway ticks, on multiples of it from 0), with no poll. A transition such
//! a tick makes (an on-delay running out while the last values stand, a device silent for its
//! `comm_loss_after_s`) fails the fixture with its time, as one not expected: give it a step
//! at that time. Otherwise a later step's poll could cancel what the gateway would already
//! have raised, and the fixture would pass on a timeline the gateway does not have.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use shouwang_wire::{Action, Command, TransitionKind};

use crate::clock::Stamp;
use crate::config::Config;
use crate::sources::{LinkError, PollOutcome, PolledValues};
use crate::watch::Watch;

/// A fixture file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fixture {
    pub description: String,
    #[serde(default)]
    pub rule_packs: Vec<String>,
    pub rules_dir: Option<String>,
    pub device: toml::Table,
    #[serde(default)]
    pub at: Vec<Step>,
}

/// One step of the timeline.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub s: f64,
    #[serde(default)]
    pub values: BTreeMap<String, f64>,
    #[serde(default)]
    pub fail: bool,
    #[serde(default)]
    pub ack: Vec<String>,
    #[serde(default)]
    pub expect: Vec<String>,
}

/// What running one fixture found: nothing when it passed.
#[derive(Debug, Default)]
pub struct Outcome {
    pub description: String,
    /// `(step time, what was wrong)`.
    pub failures: Vec<String>,
    /// Every `<rule> <transition>` seen, for coverage.
    pub seen: Vec<String>,
}

/// Read and run the fixture at `path`. `Err`: the fixture itself is broken (unreadable, a
/// key it does not know, a config the gateway refuses).
pub fn run_file(path: &Path) -> Result<Outcome, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    run(&text, path.parent())
}

/// Run a fixture's text; `dir` is where its `rules_dir` is relative to.
pub fn run(text: &str, dir: Option<&Path>) -> Result<Outcome, String> {
    let fixture: Fixture = toml::from_str(text).map_err(|e| e.message().trim().to_string())?;
    let config = config_of(&fixture, dir)?;
    let mut watch = Watch::new(&config, "fixture".into(), 1).map_err(|errors| {
        errors
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("; ")
    })?;
    let known: Vec<&str> = config.devices[0]
        .points
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    let mut outcome = Outcome {
        description: fixture.description.clone(),
        ..Outcome::default()
    };
    let mut current: BTreeMap<&str, f64> = BTreeMap::new();
    let mut last_s = f64::NEG_INFINITY;
    let tick_ms = i64::try_from(crate::TICK.as_millis()).unwrap_or(100);
    // The time of the last step (ms); the gateway starts at 0.
    let mut last_ms: i64 = 0;
    for step in &fixture.at {
        if !step.s.is_finite() || step.s < last_s {
            return Err(format!(
                "step at {} s: steps go forward in time, each at a finite s",
                step.s
            ));
        }
        last_s = step.s;
        let at = Stamp::at((step.s * 1000.0).round() as i64);
        // The gateway's ticks strictly between the last step and this one.
        let mut tick = (last_ms.div_euclid(tick_ms) + 1) * tick_ms;
        while tick < at.mono_ms {
            let between: Vec<String> = watch
                .on_tick(Stamp::at(tick))
                .iter()
                .map(|e| format!("{} {}", e.rule, word(e.transition)))
                .collect();
            if !between.is_empty() {
                let s = tick as f64 / 1000.0;
                outcome.failures.push(format!(
                    "at {s} s, between two steps: {between:?} happened, not expected \
                     (the gateway ticks every {tick_ms} ms: give it a step at {s} s)"
                ));
                outcome.seen.extend(between);
            }
            tick += tick_ms;
        }
        last_ms = last_ms.max(at.mono_ms);
        let mut events = Vec::new();
        for (point, value) in &step.values {
            let Some(name) = known.iter().find(|k| **k == point) else {
                return Err(format!(
                    "step at {} s: the device has no point {point:?} (its points: {})",
                    step.s,
                    known.join(", ")
                ));
            };
            current.insert(name, *value);
        }
        if step.fail {
            events.extend(
                watch
                    .on_poll(&PollOutcome {
                        device: 0,
                        at,
                        result: Err(LinkError::Timeout(0)),
                    })
                    .events,
            );
        } else if !step.values.is_empty() {
            let values = current.iter().map(|(p, v)| (p.to_string(), *v)).collect();
            events.extend(
                watch
                    .on_poll(&PollOutcome {
                        device: 0,
                        at,
                        result: Ok(PolledValues {
                            values,
                            faults: Vec::new(),
                        }),
                    })
                    .events,
            );
        }
        for rule in &step.ack {
            let alarm = shouwang_wire::alarm_id("fixture", "fixture", "dut", rule);
            let (acked, reply) = watch.on_command(
                &Command {
                    schema: Command::SCHEMA,
                    command_id: format!("ack-{rule}"),
                    operator: "fixture".into(),
                    action: Action::Acknowledge {
                        alarm_id: alarm,
                        event_id: None,
                    },
                    ts_ms: at.wall_ms,
                    ttl_ms: None,
                },
                at,
            );
            if !reply.ok {
                outcome.failures.push(format!(
                    "at {} s: acknowledging {rule} was refused: {}",
                    step.s,
                    reply.error.unwrap_or_default()
                ));
            }
            events.extend(acked);
        }
        events.extend(watch.on_tick(at));
        let mut got: Vec<String> = events
            .iter()
            .map(|e| format!("{} {}", e.rule, word(e.transition)))
            .collect();
        got.sort();
        let mut want: Vec<String> = step
            .expect
            .iter()
            .map(|e| e.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        want.sort();
        if got != want {
            let missing: Vec<&String> = want.iter().filter(|w| !got.contains(w)).collect();
            let extra: Vec<&String> = got.iter().filter(|g| !want.contains(g)).collect();
            let mut why = Vec::new();
            if !missing.is_empty() {
                why.push(format!("expected {missing:?}, which did not happen"));
            }
            if !extra.is_empty() {
                why.push(format!("{extra:?} happened, not expected"));
            }
            if why.is_empty() {
                why.push(format!("expected {want:?}, got {got:?}"));
            }
            outcome
                .failures
                .push(format!("at {} s: {}", step.s, why.join("; ")));
        }
        outcome.seen.extend(got);
    }
    Ok(outcome)
}

fn word(kind: TransitionKind) -> &'static str {
    match kind {
        TransitionKind::Raised => "raised",
        TransitionKind::Cleared => "cleared",
        TransitionKind::Acknowledged => "acknowledged",
        TransitionKind::Reset => "reset",
        TransitionKind::Shelved => "shelved",
        TransitionKind::Unshelved => "unshelved",
        TransitionKind::RemovedFromService => "removed_from_service",
        TransitionKind::ReturnedToService => "returned_to_service",
        TransitionKind::Suppressed => "suppressed",
        TransitionKind::Unsuppressed => "unsuppressed",
        TransitionKind::ChatterStarted => "chatter_started",
        TransitionKind::ChatterEnded => "chatter_ended",
    }
}

/// The gateway config the fixture stands for: one device `dut` with the fixture's rules.
fn config_of(fixture: &Fixture, dir: Option<&Path>) -> Result<Config, String> {
    let mut device = fixture.device.clone();
    device
        .entry("id")
        .or_insert_with(|| toml::Value::String("dut".into()));
    if !device.contains_key("transport") && !device.contains_key("link") {
        device.insert("transport".into(), toml::Value::String("tcp".into()));
    }
    if device.get("transport").and_then(|t| t.as_str()) == Some("tcp")
        && !device.contains_key("address")
        && !device.contains_key("link")
    {
        device.insert("address".into(), toml::Value::String("127.0.0.1:1".into()));
    }
    if !["building", "area"].iter().any(|k| device.contains_key(*k)) {
        device.insert("building".into(), toml::Value::String("B1".into()));
    }
    let mut gateway = toml::Table::new();
    for (k, v) in [
        ("id", "fixture"),
        ("community", "fixture"),
        ("data_dir", "/nonexistent"),
    ] {
        gateway.insert(k.into(), toml::Value::String(v.into()));
    }
    gateway.insert(
        "rule_packs".into(),
        toml::Value::Array(
            fixture
                .rule_packs
                .iter()
                .map(|p| toml::Value::String(p.clone()))
                .collect(),
        ),
    );
    if let Some(rules_dir) = &fixture.rules_dir {
        gateway.insert("rules_dir".into(), toml::Value::String(rules_dir.clone()));
    }
    let mut table = toml::Table::new();
    table.insert("gateway".into(), toml::Value::Table(gateway));
    table.insert(
        "devices".into(),
        toml::Value::Array(vec![toml::Value::Table(device)]),
    );
    let text = toml::to_string(&table).map_err(|e| e.to_string())?;
    let config = Config::from_toml_in(&text, "fixture", dir).map_err(|r| r.to_string())?;
    if config.devices[0].id != "dut" {
        return Err("the fixture's device must keep the id \"dut\"".into());
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEVICE: &str = r#"
description = "t"
rule_packs = ["smoke"]

[device]
profile = "smoke-detector"
"#;

    #[test]
    fn a_transition_that_does_not_happen_and_one_not_expected_are_both_named_with_their_time() {
        let text = format!(
            "{DEVICE}\n[[at]]\ns = 0\nvalues = {{ alarm = 0 }}\nexpect = [\"smoke-alarm raised\"]\n\n\
             [[at]]\ns = 1.5\nvalues = {{ alarm = 1 }}\n"
        );
        let outcome = run(&text, None).unwrap();
        assert_eq!(outcome.failures.len(), 2, "{:?}", outcome.failures);
        assert!(
            outcome.failures[0]
                .starts_with("at 0 s: expected [\"smoke-alarm raised\"], which did not happen"),
            "{:?}",
            outcome.failures
        );
        assert!(
            outcome.failures[1]
                .starts_with("at 1.5 s: [\"smoke-alarm raised\"] happened, not expected"),
            "{:?}",
            outcome.failures
        );
    }

    #[test]
    fn what_the_gateway_would_raise_between_two_steps_fails_the_fixture_with_its_time() {
        // Smoke for 9 s (smoke-high's on-delay is 2 s), then 50 s of silence: a gateway
        // raises smoke-high at 3 s and comm_lost at 40 s, before the next poll clears them.
        let text = format!(
            "{DEVICE}\n[[at]]\ns = 0\nvalues = {{ obscuration = 0.2 }}\n\n\
             [[at]]\ns = 1\nvalues = {{ obscuration = 4.0 }}\n\n\
             [[at]]\ns = 10\nvalues = {{ obscuration = 0.2 }}\n\n\
             [[at]]\ns = 60\nvalues = {{ obscuration = 0.2 }}\n"
        );
        let outcome = run(&text, None).unwrap();
        assert_eq!(
            outcome.failures,
            [
                "at 3 s, between two steps: [\"smoke-high raised\"] happened, not expected \
                 (the gateway ticks every 100 ms: give it a step at 3 s)",
                "at 10 s: [\"smoke-high cleared\"] happened, not expected",
                "at 40 s, between two steps: [\"comm_lost raised\"] happened, not expected \
                 (the gateway ticks every 100 ms: give it a step at 40 s)",
                "at 60 s: [\"comm_lost cleared\"] happened, not expected",
            ]
        );
        // With those steps, it passes.
        let steps = format!(
            "{DEVICE}\n[[at]]\ns = 0\nvalues = {{ obscuration = 0.2 }}\n\n\
             [[at]]\ns = 1\nvalues = {{ obscuration = 4.0 }}\n\n\
             [[at]]\ns = 3\nexpect = [\"smoke-high raised\"]\n\n\
             [[at]]\ns = 10\nvalues = {{ obscuration = 0.2 }}\nexpect = [\"smoke-high cleared\"]\n\n\
             [[at]]\ns = 40\nexpect = [\"comm_lost raised\"]\n\n\
             [[at]]\ns = 60\nvalues = {{ obscuration = 0.2 }}\nexpect = [\"comm_lost cleared\"]\n"
        );
        let outcome = run(&steps, None).unwrap();
        assert!(outcome.failures.is_empty(), "{:?}", outcome.failures);
    }

    #[test]
    fn a_broken_fixture_says_what_is_wrong_with_it() {
        let unknown = format!("{DEVICE}\n[[at]]\ns = 0\nvalues = {{ smoke = 1 }}\n");
        let why = run(&unknown, None).unwrap_err();
        assert!(
            why.contains("no point \"smoke\" (its points: alarm, fault"),
            "{why}"
        );
        let backwards = format!("{DEVICE}\n[[at]]\ns = 2\n\n[[at]]\ns = 1\n");
        assert!(
            run(&backwards, None)
                .unwrap_err()
                .contains("go forward in time")
        );
        let typo = format!("{DEVICE}\n[[at]]\ns = 0\nexpects = []\n");
        assert!(
            run(&typo, None)
                .unwrap_err()
                .contains("unknown field `expects`")
        );
        let bad_pack = DEVICE.replace("[\"smoke\"]", "[\"smok\"]");
        assert!(
            run(&bad_pack, None)
                .unwrap_err()
                .contains("no shipped pack \"smok\"")
        );
    }

    #[test]
    fn a_sites_rule_files_refine_the_pack_in_a_fixture() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("site")).unwrap();
        std::fs::write(
            dir.path().join("site/b1.toml"),
            "[[rules]]\nid = \"smoke-high\"\nbuilding = \"B1\"\nabove = 1.0\non_delay_ms = 0\n",
        )
        .unwrap();
        let text = DEVICE.replace(
            "rule_packs = [\"smoke\"]\n",
            "rule_packs = [\"smoke\"]\nrules_dir = \"site\"\n",
        ) + "\n[[at]]\ns = 0\nvalues = { obscuration = 1.2 }\nexpect = [\"smoke-high raised\"]\n";
        let outcome = run(&text, Some(dir.path())).unwrap();
        assert!(outcome.failures.is_empty(), "{:?}", outcome.failures);
    }

    proptest::proptest! {
        /// Outside input: a fixture of any steps (times out of order, unknown points,
        /// values of any size) runs or says what is wrong with it, never a panic.
        #[test]
        fn no_fixture_makes_the_runner_panic(
            steps in proptest::collection::vec(
                (-10.0f64..200.0, "(alarm|obscuration|nope)", -1.0e9f64..1.0e9, proptest::bool::ANY),
                0..8,
            )
        ) {
            let mut text = DEVICE.to_string();
            for (s, point, value, fail) in steps {
                text.push_str(&format!(
                    "\n[[at]]\ns = {s:?}\nvalues = {{ {point} = {value:?} }}\nfail = {fail}\n"
                ));
            }
            let _ = run(&text, None);
        }
    }
}
