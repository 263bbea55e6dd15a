//! From what an engineer writes to one [`DeviceConfig`] per device: `[[devices]]` tables,
//! each one device or a template for many (`for`), and `[[device_files]]`, CSV point
//! schedules with one device a row. Each device may name a profile (`profiles.rs`).
//!
//! Everything happens on TOML values before any device is deserialized: templates are
//! expanded (`template.rs`), CSV rows become tables, profiles are merged in, a device on a
//! link takes the link's transport. So every check after this one (ids, one device per unit
//! id on a link, a bus's time budget, rules) sees the expanded devices as if each had been
//! written out, and a key another module adds to devices is templated and read from CSV like
//! every other.
//!
//! # Where a device came from
//! Messages name a device by its origin ([`Origins`]): `devices[2] (smoke-B1-12-03)` for a
//! device written out, `devices[3] (smoke-B1-{floor:02}-{room} floor=12 room=03)` for an
//! instance of a template (the template's position and id, then the instance's variables),
//! `b1.csv:7 (smoke-B1-12-03)` for line 7 of a device file. [`fold`] keeps a template's
//! mistake from filling the report: one problem that every instance shares is reported once,
//! with how many instances have it.
//!
//! # Bounds
//! At most [`MAX_DEVICES`] devices from all templates and files together; a template that
//! would make more is refused before it is expanded.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use super::profiles::{self, Profiles};
use super::template::{DeviceTemplate, Instance, Variables};
use serde::Deserialize;

use super::{DeviceConfig, PointConfig, Problem, Problems, Transport, label, list, section};

/// The most devices one config may declare (templates and device files included): a
/// gateway polls tens to a few thousand; this only stops a typo (`1..=32000`) from eating the
/// gateway's memory.
pub const MAX_DEVICES: usize = 100_000;

/// After folding, the most problems reported for one template or device file; the rest are
/// counted in one line.
const MAX_PROBLEMS_PER_GROUP: usize = 20;

/// Where each device came from, for messages.
#[derive(Debug, Default)]
pub struct Origins {
    /// One per device, in device order: how messages name it.
    pub labels: Vec<String>,
    /// Labels of devices from a template or a file -> the index of that template or file in
    /// `groups`.
    group_of: HashMap<String, usize>,
    /// `devices[3] (smoke-{floor:02}-{room})`, `device_files[0] (b1.csv)`.
    groups: Vec<String>,
}

/// One device's table before it is deserialized (None: it could not be made; its problem is
/// recorded), and its label.
struct Raw {
    table: Option<toml::Table>,
    label: String,
}

/// The devices' tables found so far, where they came from, and how many there may be.
struct Found {
    raws: Vec<Raw>,
    origins: Origins,
    limit: usize,
}

impl Found {
    fn new(limit: usize) -> Found {
        Found {
            raws: Vec::new(),
            origins: Origins::default(),
            limit,
        }
    }
}

/// Read every device of the config. `links`: link id -> transport, for devices that take
/// their link's. `base_dir`: what relative `device_files` paths are relative to.
pub(super) fn load(
    devices: Option<toml::Value>,
    files: Option<toml::Value>,
    base_dir: Option<&Path>,
    profiles: &Profiles,
    links: &BTreeMap<String, Transport>,
    p: &mut Problems,
) -> (Vec<Option<DeviceConfig>>, Origins) {
    load_at_most(MAX_DEVICES, devices, files, base_dir, profiles, links, p)
}

/// [`load`] with another bound than [`MAX_DEVICES`] (for tests of the bound).
fn load_at_most(
    limit: usize,
    devices: Option<toml::Value>,
    files: Option<toml::Value>,
    base_dir: Option<&Path>,
    profiles: &Profiles,
    links: &BTreeMap<String, Transport>,
    p: &mut Problems,
) -> (Vec<Option<DeviceConfig>>, Origins) {
    let mut found = Found::new(limit);
    expand_tables(devices, &mut found, p);
    read_files(files, base_dir, &mut found, p);
    let Found {
        raws, mut origins, ..
    } = found;
    let devices = raws
        .into_iter()
        .map(|raw| {
            origins.labels.push(raw.label.clone());
            let mut table = raw.table?;
            device(&mut table, &raw.label, profiles, links, p)
        })
        .collect();
    (devices, origins)
}

/// Every device as a table, written out as the gateway reads it (templates expanded, rows
/// read, profiles merged, transports from links), for `shouwang-gateway expand`. Problems
/// go to `p`; a device with one is left out.
pub(super) fn written_out(
    devices: Option<toml::Value>,
    files: Option<toml::Value>,
    base_dir: Option<&Path>,
    profiles: &Profiles,
    links: &BTreeMap<String, Transport>,
    p: &mut Problems,
) -> Vec<toml::Table> {
    let mut found = Found::new(MAX_DEVICES);
    expand_tables(devices, &mut found, p);
    read_files(files, base_dir, &mut found, p);
    found
        .raws
        .into_iter()
        .filter_map(|raw| {
            let mut table = raw.table?;
            prepare(&mut table, &raw.label, profiles, links, p)?;
            Some(table)
        })
        .collect()
}

/// `[[devices]]`: each table one device, or a template expanded into its instances.
fn expand_tables(value: Option<toml::Value>, found: &mut Found, p: &mut Problems) {
    let Found {
        raws,
        origins,
        limit,
    } = found;
    let limit = *limit;
    let items = match value {
        None => return,
        Some(toml::Value::Array(items)) => items,
        Some(_) => {
            p.add("devices", "must be an array of tables: [[devices]]");
            return;
        }
    };
    for (i, item) in items.into_iter().enumerate() {
        let toml::Value::Table(mut table) = item else {
            // Deserializing it names what it is instead.
            let label = label("devices", i, &item);
            raws.push(Raw {
                table: None,
                label: label.clone(),
            });
            section::<DeviceConfig>(item, &label, p);
            continue;
        };
        let Some(each) = table.remove("for") else {
            let label = match table.get("id").and_then(|v| v.as_str()) {
                Some(id) => format!("devices[{i}] ({id})"),
                None => format!("devices[{i}]"),
            };
            raws.push(Raw {
                label,
                table: Some(table),
            });
            continue;
        };
        let id = table.get("id").and_then(|v| v.as_str()).map(str::to_string);
        let group = match &id {
            Some(id) => format!("devices[{i}] ({id})"),
            None => format!("devices[{i}]"),
        };
        let failed = |raws: &mut Vec<Raw>| {
            raws.push(Raw {
                table: None,
                label: group.clone(),
            })
        };
        let vars = match Variables::parse(&each) {
            Ok(v) => v,
            Err(why) => {
                p.add(format!("{group}.for"), why);
                failed(raws);
                continue;
            }
        };
        let room = limit.saturating_sub(raws.len());
        match vars.count() {
            Some(n) if n <= room => {}
            n => {
                let n = n.map_or_else(|| "more than 2^64".to_string(), |n| n.to_string());
                p.add(
                    format!("{group}.for"),
                    format!(
                        "makes {n} devices, and {} come before it: a config holds at most {limit} devices \
                         (templates and device files together)",
                        raws.len()
                    ),
                );
                failed(raws);
                continue;
            }
        }
        let template = match DeviceTemplate::new(table, vars.names(), true) {
            Ok(t) => t,
            Err(problems) => {
                for (key, message) in problems {
                    p.add(format!("{group}.{key}"), message);
                }
                failed(raws);
                continue;
            }
        };
        let g = origins.groups.len();
        origins.groups.push(group);
        for instance in vars.instances() {
            let label = match &id {
                Some(id) => format!("devices[{i}] ({id} {instance})"),
                None => format!("devices[{i}] ({instance})"),
            };
            origins.group_of.insert(label.clone(), g);
            let table = template
                .render(&instance)
                .map_err(|(key, message)| p.add(format!("{label}.{key}"), message))
                .ok();
            raws.push(Raw { table, label });
        }
    }
}

/// `[[device_files]]`: CSV files whose header names device keys; each row one device. The
/// table's other keys apply to every row (a cell that is not empty overrides its key for its
/// row) and may name the columns as template variables (`id = "smoke-{floor}-{room}"`).
fn read_files(
    value: Option<toml::Value>,
    base_dir: Option<&Path>,
    found: &mut Found,
    p: &mut Problems,
) {
    let items = match value {
        None => return,
        Some(toml::Value::Array(items)) => items,
        Some(_) => {
            p.add(
                "device_files",
                "must be an array of tables: [[device_files]] with path = \"b1.csv\"",
            );
            return;
        }
    };
    for (k, item) in items.into_iter().enumerate() {
        let at = format!("device_files[{k}]");
        let toml::Value::Table(mut table) = item else {
            p.add(
                at,
                "must be a table: [[device_files]] with path = \"b1.csv\"",
            );
            continue;
        };
        let path = match table.remove("path") {
            Some(toml::Value::String(path)) if !path.trim().is_empty() => path,
            _ => {
                p.add(
                    format!("{at}.path"),
                    "required: the CSV file, relative to the config file",
                );
                found.raws.push(Raw {
                    table: None,
                    label: at,
                });
                continue;
            }
        };
        let group = format!("{at} ({path})");
        let start = found.raws.len();
        let problems_before = p.0.len();
        if table.remove("for").is_some() {
            p.add(
                format!("{group}.for"),
                "not in [[device_files]]: each row is one device",
            );
        }
        let file = base_dir.map_or_else(|| PathBuf::from(&path), |d| d.join(&path));
        if let Err((field, message)) = read_file(&file, &path, table, &group, found, p) {
            p.add(field, message);
        }
        if found.raws.len() == start {
            // Nothing came of the file: the config is incomplete, not silently smaller.
            if problems_before == p.0.len() {
                p.add(group.clone(), "has no devices: no row under its header");
            }
            found.raws.push(Raw {
                table: None,
                label: group,
            });
        }
    }
}

/// One CSV file's rows, each a `Raw`. Problems of single rows are recorded on their rows
/// (`b1.csv:7 ...`) and the other rows still read; an Err stops the file.
fn read_file(
    file: &Path,
    path: &str,
    defaults: toml::Table,
    group: &str,
    found: &mut Found,
    p: &mut Problems,
) -> Result<(), (String, String)> {
    let Found {
        raws,
        origins,
        limit,
    } = found;
    let limit = *limit;
    let bytes = std::fs::read(file).map_err(|e| {
        (
            group.to_string(),
            format!("cannot read {}: {e}", file.display()),
        )
    })?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let line = 1 + e.as_bytes()[..e.utf8_error().valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        (
            format!("{path}:{line}"),
            "is not UTF-8: save the sheet as \"CSV UTF-8\" (Excel: 另存为 CSV UTF-8), not as CSV in the system's encoding"
                .to_string(),
        )
    })?;
    // Excel writes a byte order mark before "CSV UTF-8".
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let headers: Vec<String> = reader
        .headers()
        .map_err(|e| (format!("{path}:1"), format!("cannot read the header: {e}")))?
        .iter()
        .map(str::to_string)
        .collect();
    for (i, h) in headers.iter().enumerate() {
        let why = if h.is_empty() {
            Some("is empty: every column names a device key".to_string())
        } else if headers[..i].contains(h) {
            Some(format!("{h:?} is given twice"))
        } else if ["for", "points", "path"].contains(&h.as_str()) {
            Some(format!(
                "{h:?} cannot be a column: a row is one device, its points come from its profile"
            ))
        } else {
            None
        };
        if let Some(why) = why {
            return Err((format!("{path}:1"), format!("column {}: {why}", i + 1)));
        }
    }
    let template = DeviceTemplate::new(defaults, headers.iter().map(String::as_str), false)
        .map_err(|problems| {
            let (key, message) = problems.into_iter().next().unwrap_or_default();
            (format!("{group}.{key}"), message)
        })?;
    let g = origins.groups.len();
    origins.groups.push(group.to_string());
    for record in reader.records() {
        let record = record.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line());
            (format!("{path}:{line}"), e.to_string())
        })?;
        let line = record.position().map_or(0, |p| p.line());
        if record.iter().all(str::is_empty) {
            continue;
        }
        if raws.len() >= limit {
            return Err((
                group.to_string(),
                format!(
                    "line {line} would make device {}: a config holds at most {limit} devices \
                     (templates and device files together)",
                    raws.len() + 1
                ),
            ));
        }
        let id_cell = headers
            .iter()
            .position(|h| h == "id")
            .and_then(|i| record.get(i))
            .filter(|c| !c.is_empty());
        let mut label = match id_cell {
            Some(id) => format!("{path}:{line} ({id})"),
            None => format!("{path}:{line}"),
        };
        if record.len() != headers.len() {
            origins.group_of.insert(label.clone(), g);
            p.add(
                label.clone(),
                format!(
                    "has {} cells; the header has {} ({})",
                    record.len(),
                    headers.len(),
                    headers.join(",")
                ),
            );
            raws.push(Raw { table: None, label });
            continue;
        }
        let cells: Vec<(String, String)> = headers
            .iter()
            .cloned()
            .zip(record.iter().map(str::to_string))
            .collect();
        let table = match template.render(&Instance::of(cells.clone())) {
            Ok(mut table) => {
                for (key, cell) in cells {
                    if !cell.is_empty() {
                        table.insert(key, toml::Value::String(cell));
                    }
                }
                if id_cell.is_none()
                    && let Some(id) = table.get("id").and_then(|v| v.as_str())
                {
                    label = format!("{path}:{line} ({id})");
                }
                Some(table)
            }
            Err((key, message)) => {
                p.add(format!("{label}.{key}"), message);
                None
            }
        };
        origins.group_of.insert(label.clone(), g);
        raws.push(Raw { table, label });
    }
    Ok(())
}

/// One device's table -> the device: [`prepare`]d, then deserialized with its points one by
/// one (so a bad point does not hide the problems of its device).
fn device(
    table: &mut toml::Table,
    at: &str,
    profiles: &Profiles,
    links: &BTreeMap<String, Transport>,
    p: &mut Problems,
) -> Option<DeviceConfig> {
    let transport_from_link = prepare(table, at, profiles, links, p)?;
    let points = table.insert("points".into(), toml::Value::Array(Vec::new()));
    let device = match DeviceConfig::deserialize(toml::Value::Table(std::mem::take(table))) {
        Ok(d) => Some(d),
        // Its transport would have come from the link: saying it is missing says nothing
        // more than the unknown link does.
        Err(e) if transport_from_link && e.message().contains("missing field `transport`") => None,
        Err(e) => {
            p.add(at, e.message().trim().to_string());
            None
        }
    };
    let points = list::<PointConfig>(points, &format!("{at}.points"), p);
    if points.is_empty() {
        p.add(
            format!("{at}.points"),
            "no points: add [[devices.points]], or name a profile",
        );
    }
    let device = device.map(|mut d| {
        // A device whose points did not all parse is still checked, with the good ones;
        // the config is refused anyway because the bad ones were reported.
        d.points = points.into_iter().flatten().collect();
        d
    })?;
    if let (Some(profile), false) = (&device.profile, device.transport.is_modbus()) {
        p.add(
            format!("{at}.transport"),
            format!(
                "profile {profile:?} is a Modbus register map: the device must be tcp, rtu or rtu-over-tcp"
            ),
        );
    }
    Some(device)
}

/// Give a device's table its profile (kind, defaults, points) and its link's transport.
/// None when it cannot be read further (its problem is recorded); else whether its
/// transport was to come from a link that does not exist.
fn prepare(
    table: &mut toml::Table,
    at: &str,
    profiles: &Profiles,
    links: &BTreeMap<String, Transport>,
    p: &mut Problems,
) -> Option<bool> {
    let profile = match table.get("profile") {
        None => None,
        Some(toml::Value::String(name)) => match profiles.get(name) {
            None => {
                p.add(
                    format!("{at}.profile"),
                    format!("no profile {name:?}; known profiles: {}", profiles.ids()),
                );
                return None;
            }
            // Its problems are reported where it is written.
            Some(_) if profiles.is_broken(name) => return None,
            Some(profile) => Some(profile),
        },
        Some(other) => {
            p.add(
                format!("{at}.profile"),
                format!("must be a profile id (a string), not {}", other.type_str()),
            );
            return None;
        }
    };
    if let Some(profile) = profile
        && let Err((key, message)) = profiles::apply(profile, table)
    {
        p.add(format!("{at}.{key}"), message);
        return None;
    }
    let link = table.get("link").and_then(|v| v.as_str());
    let unknown_link = matches!((link, link.and_then(|l| links.get(l))), (Some(_), None));
    if let (true, Some(name)) = (unknown_link, link) {
        p.add(
            format!("{at}.link"),
            format!("no link {name:?} in [[links]]"),
        );
    }
    let transport_from_link = unknown_link && !table.contains_key("transport");
    if let (false, Some(transport)) = (
        table.contains_key("transport"),
        link.and_then(|l| links.get(l)),
    ) {
        let name = match transport {
            Transport::Tcp => "tcp",
            Transport::Rtu => "rtu",
            Transport::RtuOverTcp => "rtu-over-tcp",
            Transport::Mqtt => "mqtt",
            Transport::Gpio => "gpio",
        };
        table.insert("transport".into(), toml::Value::String(name.into()));
    }
    Some(transport_from_link)
}

/// Fold the problems of a template's or a file's devices: a problem (the field past the
/// device's label, and the message) that several of its devices share is reported once, on
/// the first, with how many more have it; past [`MAX_PROBLEMS_PER_GROUP`] per template or
/// file, the rest are counted in one line. Other problems are left as they are, in order.
pub(super) fn fold(problems: Vec<Problem>, origins: &Origins) -> Vec<Problem> {
    // (group, field past the label, message) -> index in `out` of its first problem.
    let mut first: HashMap<(usize, String, String), usize> = HashMap::new();
    let mut more: Vec<usize> = Vec::new();
    let mut shown: Vec<usize> = vec![0; origins.groups.len()];
    let mut hidden: Vec<usize> = vec![0; origins.groups.len()];
    let mut out: Vec<Problem> = Vec::new();
    for problem in problems {
        let Some((g, rest)) = origins.group_in(&problem.field) else {
            out.push(problem);
            more.push(0);
            continue;
        };
        let key = (g, rest.to_string(), problem.message.clone());
        if let Some(&i) = first.get(&key) {
            more[i] += 1;
            continue;
        }
        if shown[g] >= MAX_PROBLEMS_PER_GROUP {
            hidden[g] += 1;
            continue;
        }
        shown[g] += 1;
        first.insert(key, out.len());
        out.push(problem);
        more.push(0);
    }
    for (problem, n) in out.iter_mut().zip(more) {
        if n > 0 {
            problem.message.push_str(&format!(
                " (and the same in {n} more device{} of this {})",
                if n == 1 { "" } else { "s" },
                if problem.field.starts_with("devices[") {
                    "template"
                } else {
                    "file"
                }
            ));
        }
    }
    for (g, n) in hidden.into_iter().enumerate() {
        if n > 0 {
            out.push(Problem {
                field: origins.groups[g].clone(),
                message: format!(
                    "and {n} more problems in its devices, not shown: fix the ones above first"
                ),
            });
        }
    }
    out
}

impl Origins {
    /// The template or file of the device a field belongs to, and the rest of the field.
    fn group_in<'f>(&self, field: &'f str) -> Option<(usize, &'f str)> {
        if self.group_of.is_empty() {
            return None;
        }
        if let Some(&g) = self.group_of.get(field) {
            return Some((g, ""));
        }
        // Labels may hold dots themselves (ids may): try every dot.
        field
            .match_indices('.')
            .find_map(|(i, _)| self.group_of.get(&field[..i]).map(|&g| (g, &field[i..])))
    }
}

#[cfg(test)]
mod tests;
