//! Load harness: alarm latency from a register change to the broker, and the gateway's
//! resident memory while it polls the demo building. Prints its figures; asserts nothing
//! about them (this is a measurement, not a test).
//!
//! ```sh
//! cargo build --release --workspace --bins
//! target/release/alarm-latency [--trials 30] [--idle-s 10] [--config demo/building.toml]
//! ```
//!
//! It starts a real mosquitto, the config's devices simulated (as `shouwang-gateway expand`
//! writes them out: templates expanded, profiles merged), one simulated Modbus TCP gateway
//! per address with each device at its unit id, registers at values that keep every rule
//! quiet, and the `shouwang-gateway` binary from the same target directory as itself. Then, for each trial,
//! it pushes one smoke detector's register over its rule's limit and times how long until a
//! test subscriber on the broker receives the `raised` event, then puts it back and waits for
//! the `cleared` event. Trials start at staggered offsets so they sample the whole poll
//! period. The gateway's VmRSS is sampled from /proc throughout and for `--idle-s` after.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use shouwang_hil_tests::rig::{self, Listener};
use shouwang_hil_tests::servers;
use shouwang_hil_tests::sim::SimDevice;
use shouwang_hil_tests::sim_bus::SimBus;
use shouwang_wire::{AlarmEvent, Message, TransitionKind};
use toml::Value;

struct Args {
    trials: usize,
    idle_s: u64,
    config: PathBuf,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        trials: 30,
        idle_s: 10,
        config: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../demo/building.toml"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--trials" => a.trials = value()?.parse()?,
            "--idle-s" => a.idle_s = value()?.parse()?,
            "--config" => a.config = PathBuf::from(value()?),
            other => bail!("unknown flag {other}; flags: --trials N --idle-s S --config PATH"),
        }
    }
    if a.trials < 1 {
        bail!("--trials must be at least 1");
    }
    Ok(a)
}

/// One point of the config, and the value that keeps its rules quiet / sets them off.
struct Point {
    register: u16,
    data_type: String,
    /// `ABCD` unless the point says otherwise (32-bit types).
    byte_order: String,
    /// Holding and input registers are one bank in the simulator; bits are left at 0.
    is_register: bool,
    scale: f64,
    offset: f64,
    quiet: f64,
    /// For points with an `above` rule: a value over the limit.
    alarm: Option<f64>,
}

fn write(sim: &SimDevice, p: &Point, value: f64) {
    if !p.is_register {
        return;
    }
    let raw = (value - p.offset) / p.scale;
    let double = |bits: u32| {
        let (high, low) = ((bits >> 16) as u16, bits as u16);
        let [a, b] = match p.byte_order.as_str() {
            "CDAB" => [low, high],
            "BADC" => [high.swap_bytes(), low.swap_bytes()],
            "DCBA" => [low.swap_bytes(), high.swap_bytes()],
            _ => [high, low],
        };
        sim.set_u16(p.register, a);
        sim.set_u16(p.register.wrapping_add(1), b);
    };
    match p.data_type.as_str() {
        "f32" => double((raw as f32).to_bits()),
        "u32" | "i32" => double(raw.round() as i64 as u32),
        "i16" => sim.set_i16(p.register, raw.round() as i16),
        "u16" => sim.set_u16(p.register, raw.round() as u16),
        _ => {} // a bit field: its register stays 0
    }
}

/// One device of the config, to simulate.
struct Device {
    id: String,
    /// Its own `address`, or its link's.
    address: String,
    unit: u8,
    poll_interval_ms: i64,
    points: Vec<Point>,
}

/// An integer key as `expand` writes it: an integer, or a string holding one (a template's).
fn int(v: Option<&Value>) -> Option<i64> {
    v.and_then(|v| v.as_integer().or_else(|| v.as_str()?.trim().parse().ok()))
}

/// The devices of `config` (the file at `path`) written out by `shouwang-gateway expand`,
/// with quiet and alarm values derived from its rules.
fn building(config: &Value, path: &std::path::Path) -> anyhow::Result<Vec<Device>> {
    let out = std::process::Command::new(rig::binary("shouwang-gateway")?)
        .arg("expand")
        .arg(path)
        .output()
        .context("running shouwang-gateway expand")?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr));
    }
    let expanded: toml::Table = String::from_utf8(out.stdout)?
        .parse()
        .context("parsing what `shouwang-gateway expand` wrote")?;
    let links: BTreeMap<String, String> = config
        .get("links")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|l| {
            Some((
                l.get("id")?.as_str()?.to_string(),
                l.get("address")?.as_str()?.to_string(),
            ))
        })
        .collect();
    let rules = config
        .get("rules")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut out = Vec::new();
    for d in expanded
        .get("devices")
        .and_then(Value::as_array)
        .context("no [[devices]]")?
    {
        let s = |k: &str| {
            d.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let (id, kind) = (s("id"), s("kind"));
        let address = match d.get("link").and_then(Value::as_str) {
            Some(link) => links.get(link).cloned().unwrap_or_default(),
            None => s("address"),
        };
        let unit = u8::try_from(int(d.get("unit_id")).unwrap_or(1)).unwrap_or(1);
        let poll_interval_ms = int(d.get("poll_interval_ms")).unwrap_or(1000);
        let mut points = Vec::new();
        for p in d
            .get("points")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
        {
            let name = p
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let f = |k: &str, default: f64| {
                p.get(k)
                    .and_then(|v| v.as_float().or_else(|| v.as_integer().map(|i| i as f64)))
                    .unwrap_or(default)
            };
            let mut quiet: f64 = 0.0;
            let mut alarm = None;
            for r in &rules {
                let applies = r.get("point").and_then(Value::as_str) == Some(name.as_str())
                    && (r.get("device").and_then(Value::as_str) == Some(id.as_str())
                        || r.get("device_kind").and_then(Value::as_str) == Some(kind.as_str()));
                if !applies {
                    continue;
                }
                let num = |k: &str| {
                    r.get(k)
                        .and_then(|v| v.as_float().or_else(|| v.as_integer().map(|i| i as f64)))
                };
                let deadband = num("deadband").unwrap_or(0.0);
                if let Some(limit) = num("above") {
                    // Under the clear point, and not below zero unless the limit is.
                    quiet = quiet.min((limit - deadband - 1.0).min(0.0));
                    alarm = Some(limit + 1.0);
                }
                if let Some(limit) = num("below") {
                    quiet = quiet.max(limit + deadband + 0.1);
                }
            }
            let table = p.get("table").and_then(Value::as_str).unwrap_or("holding");
            points.push(Point {
                register: p.get("register").and_then(Value::as_integer).unwrap_or(0) as u16,
                data_type: p
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or("u16")
                    .to_string(),
                byte_order: p
                    .get("byte_order")
                    .and_then(Value::as_str)
                    .unwrap_or("ABCD")
                    .to_string(),
                is_register: matches!(table, "holding" | "input"),
                scale: f("scale", 1.0),
                offset: f("offset", 0.0),
                quiet,
                alarm,
            });
        }
        out.push(Device {
            id,
            address,
            unit,
            poll_interval_ms,
            points,
        });
    }
    Ok(out)
}

fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse::<u64>()
            .ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("reading {}", args.config.display()))?;
    let mut config = Value::Table(text.parse::<toml::Table>().context("parsing the config")?);
    let broker = servers::mosquitto()?;
    // Point the gateway at our broker.
    if let Some(t) = config.as_table_mut() {
        let mqtt = t.entry("mqtt").or_insert(Value::Table(Default::default()));
        if let Some(m) = mqtt.as_table_mut() {
            m.insert("port".into(), Value::Integer(i64::from(broker.port())));
        }
    }
    let gateway_id = config["gateway"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();

    let mut sims = BTreeMap::new();
    let mut buses: BTreeMap<String, SimBus> = BTreeMap::new();
    let devices = building(&config, &args.config)?;
    for d in &devices {
        if !buses.contains_key(&d.address) {
            let addr = d
                .address
                .parse()
                .with_context(|| format!("address of {}: {:?}", d.id, d.address))?;
            let (bus, _) = SimBus::serve_modbus_tcp(addr)
                .await
                .with_context(|| format!("simulating {} at {}", d.id, d.address))?;
            buses.insert(d.address.clone(), bus);
        }
        let sim = buses[&d.address].device(d.unit);
        for p in &d.points {
            write(&sim, p, p.quiet);
        }
        sims.insert(d.id.clone(), sim);
    }
    let (target_id, target) = devices
        .iter()
        .find_map(|d| {
            d.points
                .iter()
                .find(|p| p.alarm.is_some())
                .map(|p| (&d.id, p))
        })
        .context("no device with an `above` rule to trigger")?;
    let sim = &sims[target_id];
    let poll_ms = devices
        .iter()
        .find(|d| &d.id == target_id)
        .map_or(1000, |d| d.poll_interval_ms);

    let listener = Listener::start(broker.port(), "shouwang/v1/+/+/events").await?;
    let gateway = rig::start_gateway(&toml::to_string(&config)?)?;
    let pid = gateway.id();
    println!(
        "alarm-latency: {} devices from {}, trigger {target_id} (polled every {poll_ms} ms), {} trials",
        devices.len(),
        args.config.display(),
        args.trials
    );

    let community = config["gateway"]["community"].as_str().unwrap_or_default();
    let alarm_prefix = format!("{community}:{gateway_id}:{target_id}:");
    let is = |h: &rig::Heard, kind: TransitionKind| {
        AlarmEvent::decode(&h.payload)
            .ok()
            .filter(|e| {
                e.alarm_id.starts_with(&alarm_prefix) && e.transition == kind && e.point.is_some()
            })
            .map(|_| h.at)
    };
    // The first trial waits longer: the gateway is still connecting.
    let mut rss = Vec::new();
    let mut latencies = Vec::new();
    for trial in 0..args.trials {
        // Stagger the start across the poll period: 37 is coprime with most periods.
        tokio::time::sleep(Duration::from_millis(
            200 + (trial as u64 * 37) % poll_ms.max(1) as u64,
        ))
        .await;
        let changed = Instant::now();
        write(sim, target, target.alarm.unwrap_or(target.quiet));
        let limit = if trial == 0 {
            Duration::from_secs(30)
        } else {
            Duration::from_secs(10)
        };
        let at = listener
            .wait_for("raised", limit, |h| {
                (h.at >= changed)
                    .then(|| is(h, TransitionKind::Raised))
                    .flatten()
            })
            .await
            .map_err(|e| anyhow::anyhow!("{e}\n{}", gateway.log()))?;
        latencies.push(at.duration_since(changed));
        let quieted = Instant::now();
        write(sim, target, target.quiet);
        listener
            .wait_for("cleared", Duration::from_secs(10), |h| {
                (h.at >= quieted)
                    .then(|| is(h, TransitionKind::Cleared))
                    .flatten()
            })
            .await?;
        if let Some(r) = rss_kib(pid) {
            rss.push(r);
        }
    }
    let idle_until = Instant::now() + Duration::from_secs(args.idle_s);
    while Instant::now() < idle_until {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Some(r) = rss_kib(pid) {
            rss.push(r);
        }
    }

    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "alarm latency, register change -> event at a broker subscriber ({} trials): median {:.1} ms, p90 {:.1} ms, max {:.1} ms, min {:.1} ms",
        latencies.len(),
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.9)),
        ms(latencies[latencies.len() - 1]),
        ms(latencies[0]),
    );
    if let (Some(last), Some(peak)) = (rss.last(), rss.iter().map(|r| r.1).max()) {
        let steady = rss.iter().map(|r| r.0).max().unwrap_or(0);
        println!(
            "gateway resident memory polling {} devices: now {} KiB, max sampled {} KiB, peak (VmHWM) {} KiB",
            devices.len(),
            last.0,
            steady,
            peak
        );
    }
    drop(gateway);
    Ok(())
}
