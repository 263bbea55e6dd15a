//! Load harness: one gateway polling many Modbus devices. Prints its figures; asserts
//! nothing about them (a measurement, not a test).
//!
//! ```sh
//! cargo build --release --workspace --bins
//! target/release/device-load [--devices 1000] [--per-address 100] [--interval-ms 1000] [--seconds 30]
//! ```
//!
//! It starts a real mosquitto, the `shouwang-console` and the release `shouwang-gateway`
//! with `--devices` smoke detectors (one u16 register each, rule `smoke-high`), served by
//! simulated Modbus TCP devices in this process: `--per-address` unit ids behind each
//! address, as behind a Modbus TCP gateway or serial device server (1: a device per
//! address, each its own link). Every `--interval-ms` each detector is polled; during the
//! run 1 % of them see smoke and clear again, so alarm events flow too. It prints, over
//! `--seconds` after the first poll (`--template` declares the devices as a site would, with
//! one `for` table, and then leaves out the smoke):
//! - polls per second (`shouwang_gateway_polls_total`) against the configured rate, and
//!   failed polls;
//! - the gateway's CPU (utime + stime from `/proc/<pid>/stat`) as a share of one core and
//!   per poll;
//! - its VmRSS and VmHWM at the end.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use shouwang_hil_tests::measure::{clock_ticks_per_s, cpu_ticks, metric, rss_kib};
use shouwang_hil_tests::sim::SimDevice;
use shouwang_hil_tests::{rig, servers};

struct Args {
    devices: usize,
    per_address: usize,
    interval_ms: u64,
    seconds: u64,
    /// Declare the devices with one template (`for`) instead of one table each.
    template: bool,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        devices: 1000,
        per_address: 100,
        interval_ms: 1000,
        seconds: 30,
        template: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--devices" => a.devices = value()?.parse()?,
            "--per-address" => a.per_address = value()?.parse()?,
            "--interval-ms" => a.interval_ms = value()?.parse()?,
            "--seconds" => a.seconds = value()?.parse()?,
            "--template" => a.template = true,
            other => bail!(
                "unknown flag {other}; flags: --devices N --per-address K --interval-ms MS --seconds S --template"
            ),
        }
    }
    if a.devices == 0 || !(1..=247).contains(&a.per_address) || a.interval_ms < 10 {
        bail!("--devices > 0, --per-address 1-247, --interval-ms >= 10");
    }
    Ok(a)
}

fn config(args: &Args, mqtt_port: u16, metrics_port: u16, sims: &[SimDevice]) -> String {
    let mut text = format!(
        r#"
[gateway]
id = "gw-fleet"
community = "riverside"
data_dir = "data"

[mqtt]
port = {mqtt_port}

[metrics]
listen = "127.0.0.1:{metrics_port}"

[[rules]]
id = "smoke-high"
device_kind = "smoke"
point = "obscuration"
class = "alarm"
priority = "high"
above = 2.5
deadband = 0.5
message = "Smoke detected"
"#
    );
    if args.template {
        // One table for all of them, as a site writes it: every address times every unit
        // id (so --devices is rounded up to whole addresses). Every unit reads register 0.
        let addresses: Vec<String> = sims
            .iter()
            .map(|s| format!("\"{}\"", s.local_addr()))
            .collect();
        text.push_str(&format!(
            r#"
[[devices]]
for = {{ sim = [{list}], unit = "1..={per}" }}
id = "smoke-{{sim_index}}-{{unit}}"
kind = "smoke"
building = "B{{sim_index}}"
floor = "{{(unit - 1) / 10}}"
room = "{{unit}}"
transport = "tcp"
address = "{{sim}}"
unit_id = "{{unit}}"
poll_interval_ms = {interval}
timeout_ms = 1000

[[devices.points]]
name = "obscuration"
register = 0
type = "u16"
scale = 0.01
"#,
            list = addresses.join(", "),
            per = args.per_address,
            interval = args.interval_ms,
        ));
        return text;
    }
    for i in 0..args.devices {
        let sim = &sims[i / args.per_address];
        text.push_str(&format!(
            r#"
[[devices]]
id = "smoke-{i}"
kind = "smoke"
building = "B{b}"
floor = "{floor}"
unit = "{unit}"
transport = "tcp"
address = "{addr}"
unit_id = {unit_id}
poll_interval_ms = {interval}
timeout_ms = 1000

[[devices.points]]
name = "obscuration"
register = {register}
type = "u16"
scale = 0.01
"#,
            b = i / 1000,
            floor = (i / 10) % 100,
            unit = i % 10,
            addr = sim.local_addr(),
            unit_id = 1 + i % args.per_address,
            interval = args.interval_ms,
            // Each unit id behind one simulated address reads a register of its own.
            register = i % args.per_address,
        ));
    }
    text
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    let addresses = args.devices.div_ceil(args.per_address);
    let mut sims = Vec::with_capacity(addresses);
    for _ in 0..addresses {
        sims.push(SimDevice::start("127.0.0.1:0".parse()?).await?);
    }
    for sim in &sims {
        for r in 0..args.per_address {
            sim.set_u16(r as u16, 20);
        }
    }
    let broker = servers::mosquitto()?;
    let port = broker.port();
    let _console = rig::start_console(port)?;
    let metrics_port = servers::free_port();
    let metrics = format!("http://127.0.0.1:{metrics_port}/metrics");
    let mut gateway = rig::start_gateway(&config(&args, port, metrics_port, &sims))?;
    let pid = gateway.id();
    let http = servers::http_client();
    let tck = clock_ticks_per_s() as f64;

    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(&http, &metrics, "shouwang_gateway_polls_total")
        .await
        .is_none_or(|n| n == 0)
    {
        if Instant::now() > deadline {
            bail!("the gateway never polled:\n{}", gateway.log());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // One full interval for every device to start.
    tokio::time::sleep(Duration::from_millis(args.interval_ms + 500)).await;
    let polls_at_start = metric(&http, &metrics, "shouwang_gateway_polls_total")
        .await
        .unwrap_or(0);
    let failed_at_start = metric(&http, &metrics, "shouwang_gateway_poll_failures_total")
        .await
        .unwrap_or(0);
    let cpu_at_start = cpu_ticks(pid).unwrap_or(0);
    let started = Instant::now();

    // 1 % of the detectors see smoke for a while, one after another (not with --template,
    // where every unit behind an address reads one register).
    let smoky = if args.template {
        0
    } else {
        (args.devices / 100).max(1)
    };
    let each = Duration::from_secs(args.seconds) / (smoky as u32 + 1);
    for k in 0..smoky {
        let i = k * 100 % args.devices;
        let (sim, register) = (&sims[i / args.per_address], (i % args.per_address) as u16);
        sim.set_u16(register, 310);
        tokio::time::sleep(each / 2).await;
        sim.set_u16(register, 20);
        tokio::time::sleep(each / 2).await;
    }
    let rest = Duration::from_secs(args.seconds).saturating_sub(started.elapsed());
    tokio::time::sleep(rest).await;

    let elapsed = started.elapsed().as_secs_f64();
    let polls = metric(&http, &metrics, "shouwang_gateway_polls_total")
        .await
        .unwrap_or(0)
        .saturating_sub(polls_at_start);
    let failed = metric(&http, &metrics, "shouwang_gateway_poll_failures_total")
        .await
        .unwrap_or(0)
        .saturating_sub(failed_at_start);
    let cpu_s = cpu_ticks(pid).unwrap_or(0).saturating_sub(cpu_at_start) as f64 / tck;
    let (rss, hwm) = rss_kib(pid).unwrap_or((0, 0));
    let wanted = args.devices as f64 * 1000.0 / args.interval_ms as f64;
    println!(
        "device-load: {} Modbus TCP devices, {} per address ({} links), every {} ms, {:.0} s; gateway pid {pid}",
        args.devices, args.per_address, addresses, args.interval_ms, elapsed
    );
    println!(
        "polls/s {:.0} of {:.0} configured ({:.1} %), {} failed; CPU {:.1} % of a core, {:.1} µs per poll; VmRSS {:.1} MiB, VmHWM {:.1} MiB",
        polls as f64 / elapsed,
        wanted,
        polls as f64 / elapsed / wanted * 100.0,
        failed,
        cpu_s / elapsed * 100.0,
        cpu_s * 1e6 / polls.max(1) as f64,
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    gateway.kill();
    Ok(())
}
