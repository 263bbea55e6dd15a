//! Profiles, templates and device files, as a user of `check` meets them.

use super::super::{Config, ConfigReport, RegisterTable, Transport};
use super::MAX_DEVICES;

const SITE: &str = "[gateway]\nid = \"gw\"\ncommunity = \"c\"\ndata_dir = \"d\"\n";

const BUS: &str = "\n[[links]]\nid = \"bus\"\ntransport = \"rtu-over-tcp\"\naddress = \"10.0.0.1:4001\"\nbaud = 115200\n";

fn load(text: &str) -> Result<Config, ConfigReport> {
    Config::from_toml_str(text, "c.toml")
}

fn problems_of(text: &str) -> Vec<(String, String)> {
    match load(text) {
        Ok(_) => Vec::new(),
        Err(report) => report
            .problems
            .into_iter()
            .map(|p| (p.field, p.message))
            .collect(),
    }
}

/// A device on `bus` at `unit` with the given profile and extra keys.
fn device(id: &str, profile: &str, unit: u8, extra: &str) -> String {
    format!(
        "\n[[devices]]\nid = \"{id}\"\nprofile = \"{profile}\"\nbuilding = \"B1\"\nfloor = \"01\"\nunit = \"01\"\n\
         link = \"bus\"\nunit_id = {unit}\n{extra}\n"
    )
}

// --- profiles ------------------------------------------------------------------------------

#[test]
fn every_shipped_profile_loads_without_a_problem_and_is_named_after_its_file() {
    let mut problems = super::Problems::default();
    let profiles = super::profiles::load(None, None, &mut problems);
    assert!(problems.0.is_empty(), "{:#?}", problems.0);
    assert_eq!(profiles.iter().count(), super::profiles::SHIPPED.len());
    for (file, _) in super::profiles::SHIPPED {
        let id = file.trim_end_matches(".toml");
        let p = profiles
            .get(id)
            .unwrap_or_else(|| panic!("{file}: no profile {id}"));
        assert!(p.is_shipped());
        assert!(!p.points.is_empty() && !p.expects_rules.is_empty(), "{id}");
        assert!(p.description.len() > 20, "{id}");
    }
}

#[test]
fn a_device_naming_a_profile_gets_its_kind_points_and_defaults_and_its_own_keys_win() {
    let text = format!(
        "{SITE}{BUS}{}{}",
        device("smoke-1", "smoke-detector", 1, ""),
        device(
            "smoke-2",
            "smoke-detector",
            2,
            "poll_interval_ms = 5000\nreport_every_s = 300"
        )
    );
    let c = load(&text).unwrap_or_else(|e| panic!("{e}"));
    let (a, b) = (&c.devices[0], &c.devices[1]);
    assert_eq!(a.kind, "smoke");
    assert_eq!(a.profile.as_deref(), Some("smoke-detector"));
    assert_eq!(a.transport, Transport::RtuOverTcp, "the link's transport");
    assert_eq!((a.poll_interval_ms, a.timeout_ms), (1000, 300));
    assert_eq!(
        a.poll_priority,
        Some(super::super::PollPriority::LifeSafety)
    );
    assert_eq!((b.poll_interval_ms, b.report_every_s), (5000, Some(300)));
    assert_eq!(a.points.len(), 11);
    let obscuration = a.points.iter().find(|p| p.name == "obscuration").unwrap();
    assert_eq!((obscuration.register, obscuration.scale), (Some(1), 0.01));
    assert_eq!(a.points, b.points);
}

#[test]
fn points_given_with_a_profile_are_merged_by_name() {
    let text = format!(
        "{SITE}{BUS}{}",
        device(
            "p-1",
            "pressure-transmitter",
            1,
            "points = [\
               { name = \"pressure\", register = 2, scale = 0.00015625, offset = -0.625 },\
               { name = \"pump_outlet\", register = 3, table = \"input\", type = \"u16\", wire_break_below = 3600 },\
             ]"
        )
    );
    let c = load(&text).unwrap_or_else(|e| panic!("{e}"));
    let points = &c.devices[0].points;
    assert_eq!(points.len(), 2);
    let p = &points[0];
    // Moved to channel 3 with a 0-2.5 MPa range; the rest is the profile's.
    assert_eq!(p.register, Some(2));
    assert_eq!((p.scale, p.offset), (0.00015625, -0.625));
    assert_eq!(p.table, Some(RegisterTable::Input));
    assert_eq!(
        (p.wire_break_below, p.fault_above),
        (Some(3600.0), Some(21000.0))
    );
    assert_eq!(p.engineering_unit.as_deref(), Some("MPa"));
    assert_eq!(points[1].name, "pump_outlet");
}

#[test]
fn reporting_every_poll_drops_the_profiles_deadbands_instead_of_refusing_them() {
    let text = format!(
        "{SITE}{BUS}{}",
        device("smoke-1", "smoke-detector", 1, "report_every_s = \"0\"")
    );
    let c = load(&text).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        c.devices[0]
            .points
            .iter()
            .all(|p| p.report_deadband.is_none())
    );
    assert_eq!(c.devices[0].report_every(), None);
}

#[test]
fn an_unknown_profile_is_refused_listing_the_known_ones() {
    let text = format!("{SITE}{BUS}{}", device("x", "smoke-detecter", 1, ""));
    let problems = problems_of(&text);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert_eq!(problems[0].0, "devices[0] (x).profile");
    assert!(
        problems[0].1.starts_with(
            "no profile \"smoke-detecter\"; known profiles: access-controller, elevator-terminal,"
        ),
        "{problems:#?}"
    );
    assert!(problems[0].1.contains("smoke-detector"), "{problems:#?}");
}

#[test]
fn a_kind_that_contradicts_the_profile_is_refused_and_the_same_kind_is_fine() {
    let text = format!(
        "{SITE}{BUS}{}{}",
        device("a", "smoke-detector", 1, "kind = \"heat\""),
        device("b", "smoke-detector", 2, "kind = \"smoke\"")
    );
    let problems = problems_of(&text);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert_eq!(problems[0].0, "devices[0] (a).kind");
    assert!(
        problems[0]
            .1
            .contains("profile \"smoke-detector\" is of kind \"smoke\""),
        "{problems:#?}"
    );
}

#[test]
fn a_profile_on_a_device_that_is_not_modbus_is_refused() {
    let text = format!(
        "{SITE}\n[[devices]]\nid = \"s\"\nprofile = \"smoke-detector\"\nbuilding = \"B1\"\nfloor = \"1\"\nunit = \"1\"\n\
         transport = \"mqtt\"\ntopic = \"nb/s\"\n"
    );
    let problems = problems_of(&text);
    let fields: Vec<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
    assert!(
        fields.contains(&"devices[0] (s).transport"),
        "{problems:#?}"
    );
    assert!(
        problems
            .iter()
            .any(|(_, m)| m.contains("is a Modbus register map")),
        "{problems:#?}"
    );
}

/// A site with `profiles_dir` holding `files` (name, text).
fn site_with_profiles(files: &[(&str, &str)], devices: &str) -> Result<Config, ConfigReport> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("profiles")).unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join("profiles").join(name), text).unwrap();
    }
    let text = format!(
        "[gateway]\nid = \"gw\"\ncommunity = \"c\"\ndata_dir = \"d\"\nprofiles_dir = \"profiles\"\n{BUS}{devices}"
    );
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(&path)
}

const SITE_PROFILE: &str = "id = \"relay-8\"\nkind = \"relay\"\ndescription = \"An 8-relay module of the site\"\n\
    expects_rules = []\n[[points]]\nname = \"sounder\"\nregister = 0\ntable = \"coil\"\ntype = \"bit\"\n";

fn fields(report: &ConfigReport) -> Vec<String> {
    report.problems.iter().map(|p| p.field.clone()).collect()
}

#[test]
fn a_site_profile_is_read_from_profiles_dir_relative_to_the_config() {
    let c = site_with_profiles(
        &[
            ("relay-8.toml", SITE_PROFILE),
            ("notes.txt", "not a profile"),
        ],
        &device("relay-1", "relay-8", 5, ""),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.devices[0].kind, "relay");
    assert!(!c.profiles.get("relay-8").unwrap().is_shipped());
    assert!(c.gateway.profiles_dir.as_ref().unwrap().is_absolute());
}

#[test]
fn a_site_profile_with_a_shipped_id_is_refused_unless_it_says_it_replaces_it() {
    let copy = SITE_PROFILE.replace("relay-8", "smoke-detector");
    let report = site_with_profiles(
        &[("smoke.toml", &copy)],
        &device("s", "smoke-detector", 1, ""),
    )
    .unwrap_err();
    assert_eq!(report.problems.len(), 1, "{report}");
    assert!(
        report.problems[0]
            .field
            .ends_with("profiles/smoke.toml).id"),
        "{report}"
    );
    assert!(
        report.problems[0]
            .message
            .contains("is a profile shipped with the gateway: give the site's own another id"),
        "{report}"
    );
    let replacing = format!("replaces_shipped = true\n{copy}");
    let c = site_with_profiles(
        &[("smoke.toml", &replacing)],
        &device("s", "smoke-detector", 1, ""),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.devices[0].kind, "relay", "the site's profile is used");
    let nothing_to_replace = format!("replaces_shipped = true\n{SITE_PROFILE}");
    let report = site_with_profiles(
        &[("r.toml", &nothing_to_replace)],
        &device("r", "relay-8", 1, ""),
    )
    .unwrap_err();
    assert!(
        fields(&report)[0].ends_with(".replaces_shipped"),
        "{report}"
    );
    let report = site_with_profiles(
        &[("a.toml", SITE_PROFILE), ("b.toml", SITE_PROFILE)],
        &device("r", "relay-8", 1, ""),
    )
    .unwrap_err();
    assert!(
        report
            .to_string()
            .contains("duplicate profile id \"relay-8\""),
        "{report}"
    );
}

#[test]
fn a_broken_profile_is_reported_once_where_it_is_written_not_on_each_device() {
    let broken = SITE_PROFILE.replace("type = \"bit\"", "type = \"u16\"");
    let devices: String = (1..=20)
        .map(|u| device(&format!("r{u}"), "relay-8", u, ""))
        .collect();
    let report = site_with_profiles(&[("relay-8.toml", &broken)], &devices).unwrap_err();
    assert_eq!(report.problems.len(), 1, "{report}");
    assert!(
        report.problems[0].field.starts_with("profile relay-8 ("),
        "{report}"
    );
    assert!(
        report.problems[0]
            .field
            .ends_with(".points[0] (sounder).type"),
        "{report}"
    );
    let garbled = site_with_profiles(&[("x.toml", "id = ")], "").unwrap_err();
    assert!(
        fields(&garbled)[0].ends_with("x.toml) (syntax)"),
        "{garbled}"
    );
    let unknown_key =
        site_with_profiles(&[("x.toml", &format!("colour = 1\n{SITE_PROFILE}"))], "").unwrap_err();
    assert!(unknown_key.to_string().contains("colour"), "{unknown_key}");
}

#[test]
fn a_profiles_dir_that_cannot_be_read_is_named() {
    let text = format!(
        "[gateway]\nid = \"gw\"\ncommunity = \"c\"\ndata_dir = \"d\"\nprofiles_dir = \"/nonexistent/profiles\"\n{BUS}{}",
        device("s", "smoke-detector", 1, "")
    );
    let problems = problems_of(&text);
    assert_eq!(problems[0].0, "gateway.profiles_dir", "{problems:#?}");
    assert!(
        problems[0]
            .1
            .starts_with("cannot read /nonexistent/profiles"),
        "{problems:#?}"
    );
}

#[test]
fn check_notes_the_rules_a_profile_expects_and_the_config_lacks() {
    let rules = "\n[[rules]]\nid = \"leak\"\ndevice_kind = \"leak\"\npoint = \"leak\"\nclass = \"alarm\"\npriority = \"high\"\nabove = 0.5\nmessage = \"Leak\"\n";
    let text = format!(
        "{SITE}{BUS}{}{}{}{rules}",
        device("leak-1", "water-leak-probe", 1, ""),
        device("leak-2", "water-leak-probe", 2, ""),
        device("p-1", "pressure-transmitter", 3, ""),
    );
    let c = load(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        c.notes(),
        [
            "1 device of profile pressure-transmitter (kind pressure) has no rule fire-main-low, fire-main-high, fire-main-falling, which the profile expects",
            "2 devices of profile water-leak-probe (kind leak) have no rule leak-probe-fault, which the profile expects",
        ]
    );
}

// --- templates -----------------------------------------------------------------------------

const TOWER: &str = r#"
[[devices]]
for = { floor = "1..=32", room = ["01", "02", "03", "04"] }
id = "smoke-B1-{floor:02}-{room}"
profile = "smoke-detector"
building = "B1"
floor = "{floor:02}"
unit = "{room}"
link = "riser-{(floor - 1) / 8 + 1}"
unit_id = "{(floor - 1) % 8 * 4 + room_index + 1}"
"#;

fn risers() -> String {
    (1..=4)
        .map(|r| {
            format!(
                "\n[[links]]\nid = \"riser-{r}\"\ntransport = \"rtu-over-tcp\"\naddress = \"10.0.0.1:400{r}\"\nbaud = 38400\n"
            )
        })
        .collect()
}

#[test]
fn a_template_makes_one_device_per_combination_with_computed_ids_links_and_unit_ids() {
    let c = load(&format!("{SITE}{}{TOWER}", risers())).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.devices.len(), 128);
    let d = &c.devices[45]; // floor 12, room 02
    assert_eq!(d.id, "smoke-B1-12-02");
    assert_eq!(
        (d.floor.as_deref(), d.unit.as_deref()),
        (Some("12"), Some("02"))
    );
    assert_eq!(d.link.as_deref(), Some("riser-2"));
    assert_eq!(d.unit_id, Some(14));
    assert_eq!(d.transport, Transport::RtuOverTcp);
    let first_and_last: Vec<(&str, Option<u8>)> = [0, 31, 32, 127]
        .iter()
        .map(|&i| (c.devices[i].id.as_str(), c.devices[i].unit_id))
        .collect();
    assert_eq!(
        first_and_last,
        [
            ("smoke-B1-01-01", Some(1)),
            ("smoke-B1-08-04", Some(32)),
            ("smoke-B1-09-01", Some(1)),
            ("smoke-B1-32-04", Some(32))
        ]
    );
}

#[test]
fn a_problem_in_an_instance_names_the_template_and_the_instance() {
    // Floor 13 has no riser: only its four instances are wrong.
    let text = format!(
        "{SITE}{}{}",
        risers(),
        TOWER.replace(
            "link = \"riser-{(floor - 1) / 8 + 1}\"",
            "link = \"riser-{(floor - 1) / 8 + 1 + 10 * (floor / 13) * (13 / floor)}\""
        )
    );
    let problems = problems_of(&text);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert_eq!(
        problems[0].0,
        "devices[0] (smoke-B1-{floor:02}-{room} floor=13 room=01).link"
    );
    assert_eq!(
        problems[0].1,
        "no link \"riser-12\" in [[links]] (and the same in 3 more devices of this template)"
    );
}

#[test]
fn two_instances_at_one_unit_id_on_a_link_are_refused_naming_both() {
    let text = format!(
        "{SITE}{}{}",
        risers(),
        TOWER.replace("room_index + 1}", "room_index % 2 + 1}")
    );
    let problems = problems_of(&text);
    let first = &problems[0];
    assert_eq!(
        first.0,
        "devices[0] (smoke-B1-{floor:02}-{room} floor=1 room=03).unit_id"
    );
    assert_eq!(
        first.1,
        "unit 1 on link \"riser-1\" is also devices[0] (smoke-B1-{floor:02}-{room} floor=1 room=01): one device per unit id on a link"
    );
    // 64 clashes, each with its own message: the first 20, then a count.
    assert_eq!(problems.len(), 21, "{problems:#?}");
    assert_eq!(problems[20].0, "devices[0] (smoke-B1-{floor:02}-{room})");
    assert!(
        problems[20].1.starts_with("and 44 more problems"),
        "{problems:#?}"
    );
}

#[test]
fn a_template_mistake_is_reported_once_not_once_per_instance() {
    let typo = TOWER.replace("unit = \"{room}\"", "unit = \"{rom}\"");
    let problems = problems_of(&format!("{SITE}{}{typo}", risers()));
    assert_eq!(
        problems,
        [(
            "devices[0] (smoke-B1-{floor:02}-{room}).unit".to_string(),
            "\"{rom}\" names rom, which is not one of the variables (floor, room)".to_string()
        )]
    );
    let bad_for = TOWER.replace("\"1..=32\"", "\"1..32\"");
    let problems = problems_of(&format!("{SITE}{}{bad_for}", risers()));
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert_eq!(problems[0].0, "devices[0] (smoke-B1-{floor:02}-{room}).for");
    assert!(problems[0].1.contains("\"1..=32\""), "{problems:#?}");
    // A key every instance gets wrong: once, with the count.
    let misspelt = TOWER.replace("building = \"B1\"", "bulding = \"B1\"");
    let problems = problems_of(&format!("{SITE}{}{misspelt}", risers()));
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert_eq!(
        problems[0].0,
        "devices[0] (smoke-B1-{floor:02}-{room} floor=1 room=01)"
    );
    assert!(problems[0].1.contains("bulding"), "{problems:#?}");
    assert!(
        problems[0]
            .1
            .ends_with("(and the same in 127 more devices of this template)"),
        "{problems:#?}"
    );
}

#[test]
fn an_instance_whose_text_is_not_a_number_says_which_instance() {
    let text = format!(
        "{SITE}{BUS}\n[[devices]]\nfor = {{ room = [\"01\", \"2A\"] }}\nid = \"s-{{room}}\"\nprofile = \"smoke-detector\"\n\
         building = \"B1\"\nfloor = \"1\"\nunit = \"{{room}}\"\nlink = \"bus\"\nunit_id = \"{{room + 0}}\"\n"
    );
    let problems = problems_of(&text);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert_eq!(problems[0].0, "devices[0] (s-{room} room=2A).unit_id");
    assert!(
        problems[0].1.contains("room is \"2A\", not a number"),
        "{problems:#?}"
    );
}

#[test]
fn chinese_values_may_fill_texts_but_never_ids() {
    let text = format!(
        "{SITE}{BUS}\n[[devices]]\nfor = {{ b = [\"1号楼\"] }}\nid = \"s-{{b}}\"\nprofile = \"smoke-detector\"\n\
         building = \"B1\"\nfloor = \"1\"\nunit = \"1\"\nlink = \"bus\"\nunit_id = 1\n\
         points = [{{ name = \"obscuration\", engineering_unit = \"%/m ({{b}})\" }}]\n"
    );
    let problems = problems_of(&text);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert_eq!(problems[0].0, "devices[0] (s-{b} b=1号楼).id");
    assert!(problems[0].1.contains("has '号'"), "{problems:#?}");
    let fine = text.replace("id = \"s-{b}\"", "id = \"s-{b_index}\"");
    let c = load(&fine).unwrap_or_else(|e| panic!("{e}"));
    let unit = c.devices[0]
        .points
        .iter()
        .find(|p| p.name == "obscuration")
        .unwrap();
    assert_eq!(unit.engineering_unit.as_deref(), Some("%/m (1号楼)"));
}

#[test]
fn a_template_that_would_make_too_many_devices_is_refused_before_it_is_expanded() {
    let huge = TOWER.replace("\"1..=32\"", "\"1..=1000000\"");
    let problems = problems_of(&format!("{SITE}{}{huge}", risers()));
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert_eq!(problems[0].0, "devices[0] (smoke-B1-{floor:02}-{room}).for");
    assert_eq!(
        problems[0].1,
        format!(
            "makes 4000000 devices, and 0 come before it: a config holds at most {MAX_DEVICES} devices (templates and device files together)"
        )
    );
}

#[test]
fn positions_in_messages_are_those_of_the_file_not_of_the_expanded_list() {
    let after = "\n[[devices]]\nid = \"smoke-B1-01-01\"\nprofile = \"smoke-detector\"\nbuilding = \"B1\"\nfloor = \"1\"\nunit = \"1\"\nlink = \"riser-1\"\nunit_id = 99\npoll_interval_ms = 5\n";
    let problems = problems_of(&format!("{SITE}{}{TOWER}{after}", risers()));
    let fields: Vec<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(
        fields,
        [
            "devices[1] (smoke-B1-01-01).id",
            "devices[1] (smoke-B1-01-01).poll_interval_ms"
        ],
        "{problems:#?}"
    );
    assert!(
        problems[0]
            .1
            .contains("also devices[0] (smoke-B1-{floor:02}-{room} floor=1 room=01)"),
        "{problems:#?}"
    );
}

#[test]
fn the_32_storey_example_declares_168_devices_in_under_100_lines() {
    let text = include_str!("../../../../docs/examples/building-32-floors.toml");
    assert!(text.lines().count() < 100, "{} lines", text.lines().count());
    let c = load(text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.devices.len(), 168);
    let count = |kind: &str| c.devices.iter().filter(|d| d.kind == kind).count();
    assert_eq!(
        [
            count("smoke"),
            count("call-point"),
            count("elevator"),
            count("access")
        ],
        [128, 32, 2, 2]
    );
    let ids: std::collections::BTreeSet<&str> = c.devices.iter().map(|d| d.id.as_str()).collect();
    assert!(ids.contains("smoke-B1-32-04") && ids.contains("tank-level-B1"));
}

// --- device files ----------------------------------------------------------------------------

/// A config beside `csv` (as b1.csv) whose `[[device_files]]` table holds `keys`.
fn with_csv(csv: &[u8], keys: &str) -> Result<Config, ConfigReport> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("b1.csv"), csv).unwrap();
    let text = format!("{SITE}{BUS}\n[[device_files]]\npath = \"b1.csv\"\n{keys}\n");
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(&path)
}

const SCHEDULE: &str = "floor,unit,unit_id\n01,01,1\n01,02,2\n\n02,01,3\n";
const SCHEDULE_KEYS: &str = "id = \"smoke-B1-{floor}-{unit}\"\nprofile = \"smoke-detector\"\nbuilding = \"B1\"\nlink = \"bus\"";

#[test]
fn each_row_of_a_point_schedule_is_a_device_with_the_tables_keys() {
    let c = with_csv(SCHEDULE.as_bytes(), SCHEDULE_KEYS).unwrap_or_else(|e| panic!("{e}"));
    let shape: Vec<(&str, &str, Option<u8>)> = c
        .devices
        .iter()
        .map(|d| {
            (
                d.id.as_str(),
                d.floor.as_deref().unwrap_or_default(),
                d.unit_id,
            )
        })
        .collect();
    assert_eq!(
        shape,
        [
            ("smoke-B1-01-01", "01", Some(1)),
            ("smoke-B1-01-02", "01", Some(2)),
            ("smoke-B1-02-01", "02", Some(3))
        ]
    );
    assert!(
        c.devices
            .iter()
            .all(|d| d.kind == "smoke" && d.points.len() == 11)
    );
}

#[test]
fn a_cell_overrides_the_tables_key_and_an_empty_cell_leaves_it() {
    let csv = "id,floor,unit,unit_id,poll_interval_ms\nx,01,01,1,\ny,01,02,2,5000\n";
    let c = with_csv(
        csv.as_bytes(),
        &format!("{SCHEDULE_KEYS}\npoll_interval_ms = 2000"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let got: Vec<(&str, u64)> = c
        .devices
        .iter()
        .map(|d| (d.id.as_str(), d.poll_interval_ms))
        .collect();
    assert_eq!(got, [("x", 2000), ("y", 5000)]);
}

#[test]
fn a_schedule_saved_by_excel_with_a_byte_order_mark_reads() {
    let mut bytes = "\u{feff}".as_bytes().to_vec();
    bytes.extend_from_slice(SCHEDULE.as_bytes());
    let c = with_csv(&bytes, SCHEDULE_KEYS).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.devices.len(), 3);
}

#[test]
fn problems_in_a_schedule_name_the_file_and_the_line() {
    let csv = "floor,unit,unit_id\n01,01,1\n01,02,300\n01,03\n01,01,4\n";
    let report = with_csv(csv.as_bytes(), SCHEDULE_KEYS).unwrap_err();
    let has = |field: &str, words: &str| {
        report
            .problems
            .iter()
            .any(|p| p.field == field && p.message.contains(words))
    };
    assert!(
        has(
            "b1.csv:3 (smoke-B1-01-02)",
            "invalid value: integer `300`, expected an integer from 0 to 255"
        ),
        "{report}"
    );
    assert!(
        has(
            "b1.csv:4",
            "has 2 cells; the header has 3 (floor,unit,unit_id)"
        ),
        "{report}"
    );
    assert!(
        has(
            "b1.csv:5 (smoke-B1-01-01).id",
            "duplicate device id \"smoke-B1-01-01\" (also b1.csv:2 (smoke-B1-01-01))"
        ),
        "{report}"
    );
    assert_eq!(report.problems.len(), 3, "{report}");
    let dup = "floor,unit,unit_id\n01,01,1\n01,02,1\n";
    let report = with_csv(dup.as_bytes(), SCHEDULE_KEYS).unwrap_err();
    assert_eq!(
        report.problems[0].field, "b1.csv:3 (smoke-B1-01-02).unit_id",
        "{report}"
    );
    assert!(
        report.problems[0]
            .message
            .contains("also b1.csv:2 (smoke-B1-01-01)"),
        "{report}"
    );
}

#[test]
fn a_schedule_that_cannot_be_read_says_why() {
    let report = with_csv(b"floor,unit\n01,\xb2\xe3\n", SCHEDULE_KEYS).unwrap_err();
    assert_eq!(report.problems[0].field, "b1.csv:2", "{report}");
    assert!(report.problems[0].message.contains("CSV UTF-8"), "{report}");
    let report = with_csv(b"floor,,unit\n", SCHEDULE_KEYS).unwrap_err();
    assert_eq!(report.problems[0].field, "b1.csv:1", "{report}");
    assert!(
        report.problems[0].message.contains("column 2: is empty"),
        "{report}"
    );
    let report = with_csv(b"floor,points\n", SCHEDULE_KEYS).unwrap_err();
    assert!(
        report.problems[0].message.contains("cannot be a column"),
        "{report}"
    );
    let report = with_csv(
        SCHEDULE.as_bytes(),
        &SCHEDULE_KEYS.replace("{unit}", "{room}"),
    )
    .unwrap_err();
    assert_eq!(
        report.problems[0].field, "device_files[0] (b1.csv).id",
        "{report}"
    );
    let missing = format!("{SITE}{BUS}\n[[device_files]]\npath = \"/nonexistent/b9.csv\"\n");
    let problems = problems_of(&missing);
    assert_eq!(
        problems[0].0, "device_files[0] (/nonexistent/b9.csv)",
        "{problems:#?}"
    );
    assert!(
        problems[0].1.starts_with("cannot read /nonexistent/b9.csv"),
        "{problems:#?}"
    );
    let no_path = format!("{SITE}{BUS}\n[[device_files]]\nprofile = \"smoke-detector\"\n");
    assert_eq!(problems_of(&no_path)[0].0, "device_files[0].path");
}

#[test]
fn an_empty_schedule_is_a_problem_not_a_site_without_devices() {
    let report = with_csv(b"floor,unit,unit_id\n", SCHEDULE_KEYS).unwrap_err();
    assert_eq!(report.problems.len(), 1, "{report}");
    assert_eq!(
        report.problems[0].field, "device_files[0] (b1.csv)",
        "{report}"
    );
    assert_eq!(
        report.problems[0].message,
        "has no devices: no row under its header"
    );
}

#[test]
fn a_for_in_a_device_file_is_refused() {
    let report = with_csv(
        SCHEDULE.as_bytes(),
        &format!("{SCHEDULE_KEYS}\nfor = {{ x = [1] }}"),
    )
    .unwrap_err();
    assert_eq!(
        report.problems[0].field, "device_files[0] (b1.csv).for",
        "{report}"
    );
}

#[test]
fn integer_keys_take_a_string_holding_an_integer_and_nothing_else() {
    let text = format!(
        "{SITE}{BUS}{}",
        device("s", "smoke-detector", 1, "timeout_ms = \" 500 \"")
    );
    let text = text.replace("unit_id = 1", "unit_id = \"7\"");
    let c = load(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (c.devices[0].unit_id, c.devices[0].timeout_ms),
        (Some(7), 500)
    );
    let bad = text.replace("unit_id = \"7\"", "unit_id = \"seven\"");
    let problems = problems_of(&bad);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert_eq!(problems[0].0, "devices[0] (s)");
    assert!(
        problems[0]
            .1
            .contains("invalid value: string \"seven\", expected an integer from 0 to 255"),
        "{problems:#?}"
    );
    let float = text.replace("unit_id = \"7\"", "unit_id = 7.5");
    assert!(
        problems_of(&float)[0].1.contains("floating point"),
        "{:?}",
        problems_of(&float)
    );
}

#[test]
fn the_devices_written_out_read_back_as_the_same_devices() {
    let text = format!("{SITE}{}{TOWER}", risers());
    let expanded = Config::expand_devices(&text, "c.toml", None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(expanded.matches("[[devices]]").count(), 128);
    assert!(!expanded.contains("{floor"), "no template left");
    let original = load(&text).unwrap();
    let again = load(&format!("{SITE}{}\n{expanded}", risers())).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again.devices, original.devices);
    // A config with problems is not written out.
    let bad = text.replace("\"1..=32\"", "\"1..32\"");
    assert!(Config::expand_devices(&bad, "c.toml", None).is_err());
}

#[test]
fn devices_and_device_files_that_are_not_lists_of_tables_are_named() {
    let problems = problems_of(&format!("devices = 3\ndevice_files = \"b1.csv\"\n{SITE}"));
    let fields: Vec<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
    assert!(fields.contains(&"devices"), "{problems:#?}");
    assert!(fields.contains(&"device_files"), "{problems:#?}");
    let problems = problems_of(&format!("devices = [3]\ndevice_files = [3]\n{SITE}"));
    let fields: Vec<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
    assert!(fields.contains(&"devices[0]"), "{problems:#?}");
    assert!(fields.contains(&"device_files[0]"), "{problems:#?}");
}

#[test]
fn a_profile_that_is_not_a_string_and_points_that_are_not_tables_are_refused() {
    let problems = problems_of(&format!(
        "{SITE}{BUS}{}",
        device("a", "x", 1, "").replace("profile = \"x\"", "profile = 3")
    ));
    assert_eq!(problems[0].0, "devices[0] (a).profile", "{problems:#?}");
    assert!(problems[0].1.contains("not integer"), "{problems:#?}");
    let problems = problems_of(&format!(
        "{SITE}{BUS}{}",
        device("a", "smoke-detector", 1, "points = \"obscuration\"")
    ));
    assert_eq!(problems[0].0, "devices[0] (a).points", "{problems:#?}");
}

#[test]
fn every_mistake_in_a_site_profile_is_named_by_its_key() {
    let bad = "id = \"relay 8\"\nkind = \"\"\ndescription = \" \"\nexpects_rules = [\"a/b\"]\n\
        poll_interval_ms = 5\ncomm_loss_after_s = 101\nreport_every_s = 0\nmax_read_registers = 1\n\
        [[points]]\nname = \"level\"\nregister = 0\ntype = \"f32\"\nreport_deadband = 0.1\ngpio = 4\n\
        [[points]]\nname = \"on\"\nregister = 1\ntable = \"coil\"\ntype = \"bit\"\nengineering_unit = \"V\"\n";
    let report = site_with_profiles(&[("r.toml", bad)], "").unwrap_err();
    let at = "profile relay 8 (";
    for key in [
        ".id",
        ".kind",
        ".description",
        ".expects_rules[0]",
        ".poll_interval_ms",
        ".comm_loss_after_s",
        ".max_read_registers",
        ".points[0] (level).report_deadband",
        ".points[0] (level).gpio",
        ".points[1] (on).engineering_unit",
    ] {
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.field.starts_with(at) && p.field.ends_with(key)),
            "{key}: {report}"
        );
    }
    let empty = site_with_profiles(
        &[(
            "e.toml",
            "id = \"e\"\nkind = \"e\"\ndescription = \"nothing\"\n",
        )],
        "",
    )
    .unwrap_err();
    assert!(
        fields(&empty)
            .iter()
            .any(|f| f.ends_with("(e.toml)") || f.ends_with(".points")),
        "{empty}"
    );
}

#[test]
fn a_schedule_with_a_column_twice_is_refused() {
    let report = with_csv(b"floor,unit,floor\n1,1,1\n", SCHEDULE_KEYS).unwrap_err();
    assert_eq!(report.problems[0].field, "b1.csv:1", "{report}");
    assert!(
        report.problems[0]
            .message
            .contains("column 3: \"floor\" is given twice"),
        "{report}"
    );
}

#[test]
fn the_device_bound_counts_templates_and_files_together() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("b1.csv"), SCHEDULE).unwrap();
    let text = format!("{TOWER}\n[[device_files]]\npath = \"b1.csv\"\n{SCHEDULE_KEYS}\n")
        .replace("\"1..=32\"", "\"1..=1\"");
    let mut table: toml::Table = text.parse().unwrap();
    let mut p = super::Problems::default();
    let profiles = super::profiles::load(None, None, &mut p);
    let (devices, _) = super::load_at_most(
        5,
        table.remove("devices"),
        table.remove("device_files"),
        Some(dir.path()),
        &profiles,
        &Default::default(),
        &mut p,
    );
    // The template's 4, then one row of the file; its second row would be the sixth.
    assert_eq!(devices.len(), 5);
    let problem =
        p.0.iter()
            .find(|p| p.field == "device_files[0] (b1.csv)")
            .unwrap();
    assert_eq!(
        problem.message,
        "line 3 would make device 6: a config holds at most 5 devices (templates and device files together)"
    );
}

#[test]
fn a_place_problem_of_a_templates_devices_names_the_template_and_is_reported_once() {
    let places = "\n[places]\ngrid_buildings = { G1 = [\"B1\"] }\n";
    let tower = TOWER.replace("building = \"B1\"", "building = \"B1\"\ngrid = \"G2\"");
    let problems = problems_of(&format!("{SITE}{places}{}{tower}", risers()));
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert_eq!(
        problems[0].0,
        "devices[0] (smoke-B1-{floor:02}-{room} floor=1 room=01).grid"
    );
    assert!(
        problems[0]
            .1
            .ends_with("(and the same in 127 more devices of this template)"),
        "{problems:#?}"
    );
}
