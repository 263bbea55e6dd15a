//! The shipped rule packs: `rules/packs/*.toml`, compiled in. Each is a rule file (see the
//! gateway's `config/rule_files.rs` for the format and how a site selects and refines
//! them); every rule in it says which figure of `DOMAIN.md` (or which standard) it
//! implements. This crate only holds their text: the gateway reads and checks them.

/// (name, text) of every pack, by name.
pub const SHIPPED: &[(&str, &str)] = &[
    ("access", include_str!("../packs/access.toml")),
    ("call-point", include_str!("../packs/call-point.toml")),
    ("elevator", include_str!("../packs/elevator.toml")),
    ("fire-panel", include_str!("../packs/fire-panel.toml")),
    ("heat", include_str!("../packs/heat.toml")),
    ("smoke", include_str!("../packs/smoke.toml")),
    ("water", include_str!("../packs/water.toml")),
];

/// The text of the pack `name`.
pub fn get(name: &str) -> Option<&'static str> {
    SHIPPED.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// The packs' names.
pub fn names() -> Vec<&'static str> {
    SHIPPED.iter().map(|(n, _)| *n).collect()
}
