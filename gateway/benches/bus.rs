//! How much of an RTU line's capacity the link task uses when saturated, with the wire time
//! simulated: `cargo bench -p shouwang-gateway --bench bus`.
//!
//! The line is simulated, not the gateway: the gateway's own link task (`serve_link`, its
//! schedule and its RTU master, with its real tokio timers) polls simulated slaves over a
//! simulated half-duplex RS-485 line that delivers each frame after its characters' time
//! at the baud rate (11-bit characters), and slaves that wait the 3.5-character silence
//! after a request before they answer (the fastest a real slave can be). The line and the
//! slaves run on a thread of their own and keep their times by spinning, so their timing
//! is exact and every shortfall measured is the master's.
//!
//! Capacity: one exchange needs at least `t3.5 + request + t3.5 + answer` of line time
//! (budget.rs); the share used is exchanges done x that / time elapsed. Goal: at least 90 %
//! at 9600 and 19200 baud.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shouwang_gateway::clock::Clock;
use shouwang_gateway::config::{DeviceConfig, PollPriority};
use shouwang_gateway::sources::modbus::budget::exchange_time;
use shouwang_gateway::sources::modbus::rtu::frame::crc16;
use shouwang_gateway::sources::modbus::rtu::{RtuMaster, Timing};
use shouwang_gateway::sources::modbus::{Connection, LinkKind, LinkSpec, ReadPlan, serve_link};
use shouwang_gateway::supervise::Heartbeat;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

const DEVICES: u8 = 8;
const REGISTERS: u16 = 10;
const RUN: Duration = Duration::from_secs(6);
const WARMUP: Duration = Duration::from_secs(1);

fn device(unit: u8) -> DeviceConfig {
    let mut text = format!(
        "id = \"d{unit}\"\nkind = \"level\"\nbuilding = \"B1\"\nfloor = \"1\"\nunit = \"1\"\n\
         transport = \"rtu\"\nlink = \"bus\"\nunit_id = {unit}\npoll_interval_ms = 10\ntimeout_ms = 1000\n"
    );
    for r in 0..REGISTERS {
        text.push_str(&format!(
            "[[points]]\nname = \"p{r}\"\nregister = {r}\ntype = \"u16\"\n"
        ));
    }
    toml::from_str(&text).unwrap()
}

/// Wait until `deadline` exactly: sleep most of the way, spin the rest.
fn wait_until(deadline: Instant) {
    loop {
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        if deadline - now > Duration::from_micros(1500) {
            std::thread::sleep(deadline - now - Duration::from_micros(1000));
        } else {
            std::hint::spin_loop();
        }
    }
}

/// The simulated line and slaves, on their own thread and runtime. `line_end` is the
/// master's side of the line.
fn simulate(line_end: DuplexStream, timing: Timing) {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async move {
            let (slaves_end, mut slaves) = tokio::io::duplex(4096);
            let (mut m_read, mut m_write) = tokio::io::split(line_end);
            let (mut s_read, mut s_write) = tokio::io::split(slaves_end);
            // Half-duplex: one line, free again at this time.
            let free_at = Arc::new(Mutex::new(Instant::now()));
            let carry = |n: usize, free_at: &Mutex<Instant>| {
                let mut free = free_at.lock().unwrap();
                let start = (*free).max(Instant::now());
                *free = start + timing.char_time * n as u32;
                *free
            };
            let f1 = free_at.clone();
            let down = async move {
                let mut buf = [0u8; 256];
                loop {
                    let n = m_read.read(&mut buf).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    wait_until(carry(n, &f1));
                    s_write.write_all(&buf[..n]).await.unwrap();
                }
            };
            let f2 = free_at.clone();
            let up = async move {
                let mut buf = [0u8; 256];
                loop {
                    let n = s_read.read(&mut buf).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    wait_until(carry(n, &f2));
                    m_write.write_all(&buf[..n]).await.unwrap();
                }
            };
            let serve = async move {
                let mut req = [0u8; 8];
                loop {
                    if slaves.read_exact(&mut req).await.is_err() {
                        return;
                    }
                    // The request ends with 3.5 characters of silence.
                    wait_until(Instant::now() + timing.t3_5);
                    let count = u16::from_be_bytes([req[4], req[5]]);
                    let mut answer = vec![req[0], req[1], (2 * count) as u8];
                    for i in 0..count {
                        answer.extend_from_slice(&(i + u16::from(req[0])).to_be_bytes());
                    }
                    let crc = crc16(&answer);
                    answer.extend_from_slice(&crc.to_le_bytes());
                    slaves.write_all(&answer).await.unwrap();
                }
            };
            tokio::join!(down, up, serve);
        });
    });
}

fn measure(baud: u32) {
    let timing = Timing::serial(baud, 11);
    let devices: Vec<DeviceConfig> = (1..=DEVICES).map(device).collect();
    // A config holding the devices (the link borrows them from it). Not through the config
    // check: a saturated line is exactly what it refuses.
    let mut config = shouwang_gateway::config::Config::from_toml_str(
        "[gateway]\nid = \"gw\"\ncommunity = \"c\"\ndata_dir = \"d\"\n\
         [[devices]]\nid = \"x\"\nkind = \"x\"\nbuilding = \"B\"\nfloor = \"1\"\nunit = \"1\"\n\
         transport = \"tcp\"\naddress = \"127.0.0.1:1\"\n\
         [[devices.points]]\nname = \"p\"\nregister = 0\ntype = \"u16\"\n",
        "bench",
    )
    .unwrap();
    config.devices = devices.clone();
    let spec = LinkSpec {
        id: "bus".into(),
        kind: LinkKind::Rtu {
            port: "simulated".into(),
            baud,
            parity: shouwang_gateway::config::Parity::Even,
            stop_bits: 1,
            timing,
        },
        devices: (0..usize::from(DEVICES))
            .map(|i| (i, PollPriority::Routine))
            .collect(),
        recovery_silence: Duration::from_millis(100),
        quarantine_max: Duration::from_secs(30),
    };
    let exchange = exchange_time(&timing, &ReadPlan::for_device(&devices[0]).blocks()[0]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (good, failed, elapsed) = rt.block_on(async move {
        let (master_end, line_end) = tokio::io::duplex(4096);
        simulate(line_end, timing);
        let mut line = Some(master_end);
        let open = move |_limit: Duration, recovering: bool| {
            let conn = line.take().map(|l| {
                Connection::Rtu(RtuMaster::new(
                    Box::new(l),
                    timing,
                    Duration::from_millis(100),
                    recovering,
                ))
            });
            async move {
                conn.ok_or_else(|| {
                    shouwang_gateway::sources::LinkError::Transport("opened twice".into())
                })
            }
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
        let (_writers, mut queues) = shouwang_gateway::sources::modbus::Writers::for_links(
            std::slice::from_ref(&spec),
            &devices,
        );
        let task = tokio::spawn(serve_link(
            spec,
            std::sync::Arc::new(config),
            queues.remove(0),
            Clock::new(),
            tx,
            Heartbeat::default(),
            open,
        ));
        let start = Instant::now();
        let (mut good, mut failed) = (0u64, 0u64);
        let mut counting_since = None;
        while start.elapsed() < RUN {
            let Some(o) = rx.recv().await else { break };
            if start.elapsed() < WARMUP {
                continue;
            }
            counting_since.get_or_insert_with(Instant::now);
            if o.result.is_ok() {
                good += 1;
            } else {
                failed += 1;
            }
        }
        task.abort();
        let elapsed = counting_since.map_or(Duration::ZERO, |s| s.elapsed());
        (good, failed, elapsed)
    });
    let used = exchange.as_secs_f64() * good as f64 / elapsed.as_secs_f64();
    println!(
        "{baud:>6} baud: {:>6.2} ms per exchange at best ({} registers); {good} exchanges in {:.2} s ({:.1}/s, {failed} failed): {:.1} % of the line's capacity",
        exchange.as_secs_f64() * 1000.0,
        REGISTERS,
        elapsed.as_secs_f64(),
        good as f64 / elapsed.as_secs_f64(),
        used * 100.0
    );
}

fn main() {
    println!(
        "RTU line saturated by {DEVICES} devices of {REGISTERS} registers each (poll interval 10 ms), wire time simulated:"
    );
    for baud in [9600, 19_200] {
        measure(baud);
    }
}
