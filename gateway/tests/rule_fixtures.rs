//! Every fixture in `rules/fixtures/` passes, through the gateway's own watch and rule
//! engine (`shouwang-gateway rules test rules/fixtures/*.toml` runs the same), and every rule
//! of every shipped pack is raised by at least one of them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::PathBuf;

use shouwang_gateway::rule_tools::fixture;

fn fixtures() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../rules/fixtures");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_shipped_fixture_passes_and_every_pack_rule_is_raised_by_one() {
    let mut raised = BTreeSet::new();
    let mut failures = Vec::new();
    for path in fixtures() {
        match fixture::run_file(&path) {
            Ok(outcome) => {
                for f in &outcome.failures {
                    failures.push(format!("{}: {f}", path.display()));
                }
                raised.extend(
                    outcome
                        .seen
                        .iter()
                        .filter_map(|s| s.strip_suffix(" raised").map(str::to_string)),
                );
            }
            Err(why) => failures.push(format!("{}: broken: {why}", path.display())),
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    let mut untested = Vec::new();
    for name in shouwang_rules::packs::names() {
        let text = shouwang_rules::packs::get(name).unwrap();
        let table: toml::Table = text.parse().unwrap();
        for rule in table["rules"].as_array().unwrap() {
            let id = rule["id"].as_str().unwrap();
            if !raised.contains(id) {
                untested.push(format!("{name}: {id}"));
            }
        }
    }
    assert!(
        untested.is_empty(),
        "pack rules no fixture raises: {untested:?}"
    );
}
