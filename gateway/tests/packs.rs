//! The shipped rule packs (`rules/packs/*.toml`) against the shipped device profiles
//! (`gateway/profiles/*.toml`), as a site that names every pack sees them: every pack passes
//! `rules check`; every rule a profile expects comes from a pack, for that profile's kind and
//! points, but the ones left out on purpose ([`LEFT_OUT`], each with why); every pack rule
//! finds its point on a shipped profile (a pack skips devices without its point silently, so
//! a misspelt point would be a rule that never fires); and the rules with delays and windows
//! behave, through the engine, as their comments say.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};

use shouwang_gateway::config::{Config, Profiles, rule_files};
use shouwang_rules::{Engine, Priority, SignalClass, packs};

/// Rules a shipped profile expects that no pack provides, on purpose: (profile, rule, why).
const LEFT_OUT: &[(&str, &str, &str)] = &[(
    "elevator-terminal",
    "lift-trapped",
    "a trapped passenger is a condition over several points (someone in the car, the car \
     stopped, outside the levelling zone or the doors shut, for a while); the engine judges \
     one point per rule, and one point alone would fake it",
)];

/// A pack's rule as written.
#[derive(Debug)]
struct PackRule {
    pack: &'static str,
    id: String,
    device_kind: Option<String>,
    profile: Option<String>,
    point: String,
    class: String,
    priority: String,
}

fn pack_rules() -> Vec<PackRule> {
    let mut out = Vec::new();
    for (pack, text) in packs::SHIPPED {
        let table: toml::Table = text.parse().unwrap_or_else(|e| panic!("{pack}: {e}"));
        for rule in table["rules"].as_array().unwrap() {
            let key = |k: &str| rule.get(k).and_then(|v| v.as_str()).map(str::to_string);
            out.push(PackRule {
                pack,
                id: key("id").unwrap(),
                device_kind: key("device_kind"),
                profile: key("profile"),
                point: key("point").unwrap(),
                class: key("class").unwrap(),
                priority: key("priority").unwrap(),
            });
        }
    }
    out
}

/// The device the site has of `profile`.
fn device_of(profile: &str) -> String {
    format!("{profile}-1")
}

/// The alarm id of `rule` on the device of `profile`.
fn alarm_of(profile: &str, rule: &str) -> String {
    format!("c:gw:{}:{rule}", device_of(profile))
}

/// A site with every shipped pack and one device of each shipped profile.
fn site() -> Config {
    let packs: Vec<String> = packs::names().iter().map(|n| format!("{n:?}")).collect();
    let mut text = format!(
        "[gateway]\nid = \"gw\"\ncommunity = \"c\"\ndata_dir = \"data\"\nrule_packs = [{}]\n",
        packs.join(", ")
    );
    for (i, profile) in Profiles::shipped().iter().enumerate() {
        text.push_str(&format!(
            "\n[[devices]]\nid = \"{}\"\nprofile = \"{}\"\nbuilding = \"B1\"\nfloor = \"1\"\n\
             transport = \"tcp\"\naddress = \"127.0.0.1:1502\"\nunit_id = {}\n",
            device_of(&profile.id),
            profile.id,
            i + 1
        ));
    }
    Config::from_toml_str(&text, "site.toml").unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn alarm_ids(config: &Config) -> BTreeSet<String> {
    config
        .alarm_specs()
        .into_iter()
        .map(|(spec, _)| spec.alarm_id.to_string())
        .collect()
}

#[test]
fn every_shipped_pack_passes_the_rules_check_on_an_empty_directory() {
    let dir = tempfile::tempdir().unwrap();
    let entries = rule_files::check_dir(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(entries, pack_rules().len());
    assert_eq!(
        packs::names(),
        [
            "access",
            "call-point",
            "elevator",
            "fire-panel",
            "heat",
            "smoke",
            "water"
        ]
    );
    // Each pack says its own name, and what it is.
    for (name, text) in packs::SHIPPED {
        let table: toml::Table = text.parse().unwrap();
        assert_eq!(table["pack"].as_str(), Some(*name));
        assert!(!table["description"].as_str().unwrap().is_empty(), "{name}");
    }
}

#[test]
fn no_rule_id_is_in_two_packs() {
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    for rule in pack_rules() {
        if let Some(other) = seen.insert(rule.id.clone(), rule.pack) {
            panic!("{} is in the packs {other} and {}", rule.id, rule.pack);
        }
    }
}

#[test]
fn every_rule_a_shipped_profile_expects_comes_from_a_pack_for_its_kind_and_points() {
    let config = site();
    let alarms = alarm_ids(&config);
    let rules = pack_rules();
    let profiles = Profiles::shipped();
    for (profile, rule, _why) in LEFT_OUT {
        let expects = profiles.get(profile).map(|p| &p.expects_rules);
        assert!(
            expects.is_some_and(|e| e.iter().any(|r| r == rule)),
            "{profile} does not expect {rule}: drop it from LEFT_OUT"
        );
    }
    for profile in profiles.iter() {
        let points: Vec<&str> = profile.points.iter().map(|p| p.name.as_str()).collect();
        for id in &profile.expects_rules {
            let provider = rules.iter().find(|r| {
                &r.id == id
                    && (r.device_kind.as_deref() == Some(profile.kind.as_str())
                        || r.profile.as_deref() == Some(profile.id.as_str()))
                    && points.contains(&r.point.as_str())
            });
            let alarm = alarm_of(&profile.id, id);
            if LEFT_OUT.iter().any(|(p, r, _)| *p == profile.id && r == id) {
                assert!(
                    provider.is_none(),
                    "{id} is provided by {provider:?}: drop it from LEFT_OUT"
                );
                assert!(!alarms.contains(&alarm), "{alarm}");
            } else {
                assert!(
                    provider.is_some(),
                    "profile {} expects {id}: no pack rule selects kind {} or the profile \
                     and watches one of its points {points:?}",
                    profile.id,
                    profile.kind
                );
                assert!(alarms.contains(&alarm), "no alarm {alarm}");
            }
        }
    }
    // `check` notes what is missing: the rules left out, and nothing else.
    let mut left_out: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (profile, rule, _) in LEFT_OUT {
        left_out.entry(profile).or_default().push(rule);
    }
    let expected: Vec<String> = left_out
        .iter()
        .map(|(profile, rules)| {
            format!(
                "1 device of profile {profile} (kind {}) has no rule {}, which the profile expects",
                profiles.get(profile).unwrap().kind,
                rules.join(", ")
            )
        })
        .collect();
    assert_eq!(config.notes(), expected);
}

#[test]
fn every_pack_rule_raises_an_alarm_on_a_shipped_profile() {
    let config = site();
    let alarms = alarm_ids(&config);
    let profiles = Profiles::shipped();
    for rule in pack_rules() {
        let on: Vec<String> = profiles
            .iter()
            .filter(|p| {
                rule.device_kind.as_deref() == Some(p.kind.as_str())
                    || rule.profile.as_deref() == Some(p.id.as_str())
            })
            .map(|p| alarm_of(&p.id, &rule.id))
            .filter(|a| alarms.contains(a))
            .collect();
        assert!(
            !on.is_empty(),
            "{} ({}): no shipped profile of its selector has point {:?}",
            rule.id,
            rule.pack,
            rule.point
        );
    }
}

#[test]
fn fire_comes_as_a_high_priority_alarm_from_every_fire_source() {
    let rules = pack_rules();
    for id in [
        "smoke-alarm",
        "heat-alarm",
        "heat-high",
        "call-point-activated",
        "panel-fire",
    ] {
        let rule = rules.iter().find(|r| r.id == id).unwrap();
        assert_eq!(
            (rule.class.as_str(), rule.priority.as_str()),
            ("alarm", "high"),
            "{id}"
        );
    }
    // And the engine gets what the pack says.
    let config = site();
    let (spec, meta) = config
        .alarm_specs()
        .into_iter()
        .find(|(s, _)| *s.alarm_id == alarm_of("manual-call-point", "call-point-activated"))
        .unwrap();
    assert_eq!(
        (spec.class, spec.priority),
        (SignalClass::Alarm, Priority::High)
    );
    assert!(meta.message.contains("(手报火警)"), "{}", meta.message);
}

/// The engine with every alarm of [`site`], fed one profile's device at a time.
struct Watch {
    engine: Engine,
}

impl Watch {
    fn new() -> Self {
        let specs = site().alarm_specs().into_iter().map(|(s, _)| s).collect();
        Watch {
            engine: Engine::new(specs).unwrap(),
        }
    }

    /// A reading of `point` on the device of `profile` at `t_s` seconds.
    fn read(&mut self, profile: &str, point: &str, value: f64, t_s: f64) {
        self.engine
            .on_reading(&device_of(profile), point, value, (t_s * 1000.0) as i64);
    }

    fn active(&self, profile: &str, rule: &str) -> bool {
        let id = alarm_of(profile, rule);
        self.engine
            .alarm(&id)
            .unwrap_or_else(|| panic!("no alarm {id}"))
            .active
    }
}

const PRESSURE: &str = "pressure-transmitter";

#[test]
fn a_fire_main_falling_0_15_mpa_in_a_minute_raises_fire_main_falling_before_it_is_low() {
    let mut watch = Watch::new();
    for t in 0..120 {
        watch.read(PRESSURE, "pressure", 0.80, f64::from(t));
    }
    let mut raised_at = None;
    for i in 0..=60 {
        let t = 120 + i;
        watch.read(
            PRESSURE,
            "pressure",
            0.80 - 0.15 * f64::from(i) / 60.0,
            f64::from(t),
        );
        if raised_at.is_none() && watch.active(PRESSURE, "fire-main-falling") {
            raised_at = Some(i);
        }
    }
    // 0.10 MPa down after 40 s, then the 2 s on-delay.
    let raised_at = raised_at.expect("fire-main-falling was not raised");
    assert!((40..=44).contains(&raised_at), "raised after {raised_at} s");
    // At 0.65 MPa the main is not low yet.
    assert!(!watch.active(PRESSURE, "fire-main-low"));
    // Once the pressure stays put, the fall leaves the minute's window and the alarm clears.
    for t in 181..=250 {
        watch.read(PRESSURE, "pressure", 0.65, f64::from(t));
    }
    assert!(!watch.active(PRESSURE, "fire-main-falling"));
}

#[test]
fn a_fire_main_falling_slowly_is_low_after_5_s_under_0_6_mpa_and_never_falling_fast() {
    let mut watch = Watch::new();
    // 0.80 to 0.55 MPa over 20 minutes: 0.0125 MPa a minute.
    let mut low_at = None;
    for t in 0..=1200 {
        let p = 0.80 - 0.25 * f64::from(t) / 1200.0;
        watch.read(PRESSURE, "pressure", p, f64::from(t));
        assert!(!watch.active(PRESSURE, "fire-main-falling"), "at {t} s");
        if low_at.is_none() && watch.active(PRESSURE, "fire-main-low") {
            low_at = Some(t);
        }
    }
    // 0.60 MPa is reached at 960 s; the on-delay is 5 s.
    let low_at = low_at.expect("fire-main-low was not raised");
    assert!((965..=967).contains(&low_at), "raised at {low_at} s");
    // Back to 0.62: inside the deadband, still low; 0.66 clears it.
    watch.read(PRESSURE, "pressure", 0.62, 1201.0);
    assert!(watch.active(PRESSURE, "fire-main-low"));
    watch.read(PRESSURE, "pressure", 0.66, 1202.0);
    assert!(!watch.active(PRESSURE, "fire-main-low"));
}

#[test]
fn four_bad_credentials_in_a_row_are_no_alarm_the_fifth_is_and_a_granted_one_clears_it() {
    const ACCESS: &str = "access-controller";
    let mut watch = Watch::new();
    for n in 0..=4 {
        watch.read(ACCESS, "bad_credentials", f64::from(n), f64::from(n));
        assert!(!watch.active(ACCESS, "access-bad-credentials"), "after {n}");
    }
    watch.read(ACCESS, "bad_credentials", 5.0, 5.0);
    assert!(watch.active(ACCESS, "access-bad-credentials"));
    watch.read(ACCESS, "bad_credentials", 6.0, 6.0);
    assert!(watch.active(ACCESS, "access-bad-credentials"));
    // A granted credential resets the count.
    watch.read(ACCESS, "bad_credentials", 0.0, 7.0);
    assert!(!watch.active(ACCESS, "access-bad-credentials"));
}

#[test]
fn a_heat_detector_rising_10_degrees_a_minute_pre_alarms_long_before_54_degrees() {
    const HEAT: &str = "heat-detector";
    let mut watch = Watch::new();
    for t in 0..60 {
        watch.read(HEAT, "temperature", 25.0, f64::from(t));
    }
    let mut pre_alarm_at = None;
    let mut high_at = None;
    for i in 0..=240 {
        let t = 60 + i;
        watch.read(HEAT, "temperature", 25.0 + f64::from(i) / 6.0, f64::from(t));
        if pre_alarm_at.is_none() && watch.active(HEAT, "heat-rate-of-rise") {
            pre_alarm_at = Some(i);
        }
        if high_at.is_none() && watch.active(HEAT, "heat-high") {
            high_at = Some(i);
        }
    }
    // 8 degrees up after 48 s; 54 degrees after 174 s, then the 2 s on-delay.
    assert!(matches!(pre_alarm_at, Some(48..=49)), "{pre_alarm_at:?}");
    assert!(matches!(high_at, Some(176..=177)), "{high_at:?}");
}

#[test]
fn a_heat_detector_warming_slowly_is_no_pre_alarm_and_fixed_temperature_holds_until_50_degrees() {
    const HEAT: &str = "heat-detector";
    let mut watch = Watch::new();
    // 1 degree a minute, from 25 to 56.
    for t in 0..=1860 {
        watch.read(
            HEAT,
            "temperature",
            25.0 + f64::from(t) / 60.0,
            f64::from(t),
        );
        assert!(!watch.active(HEAT, "heat-rate-of-rise"), "at {t} s");
    }
    assert!(watch.active(HEAT, "heat-high"));
    watch.read(HEAT, "temperature", 50.5, 1861.0);
    assert!(watch.active(HEAT, "heat-high"), "inside the deadband");
    watch.read(HEAT, "temperature", 49.5, 1862.0);
    assert!(!watch.active(HEAT, "heat-high"));
}

#[test]
fn a_tank_losing_10_cm_in_five_minutes_is_draining_and_a_lift_is_out_of_service_in_mode_4_only() {
    const TANK: &str = "tank-level";
    let mut watch = Watch::new();
    for t in (0..600).step_by(2) {
        watch.read(TANK, "level", 2.0, f64::from(t));
    }
    let mut draining_at = None;
    for i in (0..=300).step_by(2) {
        let t = 600 + i;
        watch.read(
            TANK,
            "level",
            2.0 - 0.12 * f64::from(i) / 300.0,
            f64::from(t),
        );
        if draining_at.is_none() && watch.active(TANK, "tank-draining") {
            draining_at = Some(i);
        }
    }
    // 0.10 m down after 250 s, then the 10 s on-delay (readings every 2 s).
    assert!(matches!(draining_at, Some(258..=264)), "{draining_at:?}");
    assert!(!watch.active(TANK, "tank-low"), "1.88 m is not low");

    const LIFT: &str = "elevator-terminal";
    for (t, mode, out) in [(0, 0, false), (1, 1, false), (2, 4, true), (3, 0, false)] {
        watch.read(LIFT, "service_mode", f64::from(mode), f64::from(t));
        assert_eq!(
            watch.active(LIFT, "lift-out-of-service"),
            out,
            "mode {mode}"
        );
    }
}

#[test]
fn a_smoke_chamber_reading_nothing_for_a_minute_is_a_hardware_fault() {
    const SMOKE: &str = "smoke-detector";
    let mut watch = Watch::new();
    watch.read(SMOKE, "chamber", 320.0, 0.0);
    for t in 1..60 {
        watch.read(SMOKE, "chamber", 0.0, f64::from(t));
        assert!(!watch.active(SMOKE, "smoke-chamber-low"), "at {t} s");
    }
    watch.read(SMOKE, "chamber", 0.0, 61.0);
    assert!(watch.active(SMOKE, "smoke-chamber-low"));
}
