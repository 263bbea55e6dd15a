//! Modbus RTU links against real peers on a real serial line: a pseudo-terminal pair joined
//! by socat (`shouwang_hil_tests::sim_bus::PtyLine`), with tokio-modbus's RTU server
//! (serving the repository's simulated devices, `SimBus`) or the third-party pymodbus
//! (Debian's `python3-pymodbus`, run with `/usr/bin/python3`) on the device end; and mbpoll,
//! a third-party master, reading the simulated bus; and a hand-written serial device server
//! that breaks off mid-frame. The gateway's side is the link task
//! itself (`run_link`), as the gateway runs it, with its schedule and its RTU master.
//!
//! A pty does not pace bytes at the baud rate: wire time is simulated by the bus benchmark
//! (`cargo bench -p shouwang-gateway --bench bus`), not here.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shouwang_gateway::clock::Clock;
use shouwang_gateway::config::Config;
use shouwang_gateway::sinks::local_output::{LocalOutput, ModbusRelay};
use shouwang_gateway::sources::PollOutcome;
use shouwang_gateway::sources::modbus::{Writers, links, run_link};
use shouwang_gateway::supervise::Heartbeat;
use shouwang_hil_tests::sim_bus::{PtyLine, SimBus};
use tokio::sync::mpsc;

/// A site with one RTU link on `port` and a u16 device at each of `units`, polled every
/// `interval_ms` with `timeout_ms`; `link_extra` is more TOML for the link.
fn site(port: &Path, units: &[u8], interval_ms: u64, timeout_ms: u64, link_extra: &str) -> Config {
    let mut text = format!(
        "[gateway]\nid = \"gw\"\ncommunity = \"c\"\ndata_dir = \"/nonexistent\"\n\n[[links]]\nid = \"bus\"\n\
         transport = \"rtu\"\nport = \"{}\"\nbaud = 19200\nparity = \"none\"\n{link_extra}\n",
        port.display()
    );
    for unit in units {
        text.push_str(&format!(
            "\n[[devices]]\nid = \"d{unit}\"\nkind = \"level\"\nbuilding = \"B1\"\nfloor = \"01\"\n\
             unit = \"{unit:02}\"\nlink = \"bus\"\nunit_id = {unit}\npoll_interval_ms = {interval_ms}\n\
             timeout_ms = {timeout_ms}\n\n[[devices.points]]\nname = \"v\"\nregister = 1\ntype = \"u16\"\n\
             \n[[devices.points]]\nname = \"w\"\nregister = 2\ntype = \"u16\"\n"
        ));
    }
    Config::from_toml_str(&text, "test").unwrap_or_else(|e| panic!("{e}"))
}

/// Start the site's one link: its writers, its outcomes, its task.
fn start_link(
    config: &Config,
) -> (
    Writers,
    mpsc::Receiver<PollOutcome>,
    tokio::task::JoinHandle<()>,
) {
    let specs = links(config);
    assert_eq!(specs.len(), 1, "{specs:?}");
    let (writers, mut queues) = Writers::for_links(&specs, &config.devices);
    let spec = specs.into_iter().next().unwrap();
    let (tx, rx) = mpsc::channel(1024);
    let task = tokio::spawn(run_link(
        spec,
        std::sync::Arc::new(config.clone()),
        queues.remove(0),
        Clock::new(),
        tx,
        Heartbeat::default(),
    ));
    (writers, rx, task)
}

/// Run the site's one link for `run`, returning every outcome with the time it came.
async fn poll_for(config: &Config, run: Duration) -> Vec<(Duration, PollOutcome)> {
    let (_writers, mut rx, task) = start_link(config);
    let started = Instant::now();
    let mut got = Vec::new();
    while let Ok(Some(outcome)) =
        tokio::time::timeout(run.saturating_sub(started.elapsed()), rx.recv()).await
    {
        got.push((started.elapsed(), outcome));
    }
    task.abort();
    got
}

/// Good polls per device name, counting only those after `from`.
fn good_polls(
    config: &Config,
    got: &[(Duration, PollOutcome)],
    from: Duration,
) -> BTreeMap<String, usize> {
    let mut n = BTreeMap::new();
    for (at, o) in got {
        if *at >= from && o.result.is_ok() {
            *n.entry(config.devices[o.device].id.clone()).or_insert(0) += 1;
        }
    }
    n
}

/// Every value each device reported, by device name.
fn values(config: &Config, got: &[(Duration, PollOutcome)]) -> BTreeMap<String, Vec<f64>> {
    let mut v: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for (_, o) in got {
        if let Ok(polled) = &o.result {
            for (_, value) in &polled.values {
                v.entry(config.devices[o.device].id.clone())
                    .or_default()
                    .push(*value);
            }
        }
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_device_on_a_bus_is_read_at_its_own_unit_id_from_tokio_modbus_rtu_server() {
    let line = PtyLine::open().unwrap();
    let bus = SimBus::serve(&line.device_end, 19200).await.unwrap();
    for unit in [1u8, 2, 3] {
        let d = bus.device(unit);
        d.set_u16(1, u16::from(unit) * 100);
        d.set_u16(2, u16::from(unit) * 100 + 1);
    }
    let config = site(&line.master_end, &[1, 2, 3], 100, 500, "");
    let got = poll_for(&config, Duration::from_secs(2)).await;
    let values = values(&config, &got);
    for unit in [1u16, 2, 3] {
        let v = &values[&format!("d{unit}")];
        assert!(v.len() >= 10, "d{unit}: {v:?}");
        assert!(
            v.chunks(2)
                .all(|pair| pair == [f64::from(unit * 100), f64::from(unit * 100 + 1)]),
            "d{unit} read another device's value: {v:?}"
        );
    }
    // Both points of a device in one request: ~10 polls/s x 3 devices, one request each.
    let served: u64 = [1, 2, 3]
        .iter()
        .map(|&u| bus.device(u).requests_served())
        .sum();
    let good = got.iter().filter(|(_, o)| o.result.is_ok()).count() as u64;
    assert_eq!(served, good, "one request per poll");
}

/// pymodbus's RTU server for `units` (unit -> registers from 0), on `port`.
fn pymodbus(port: &Path, units: &[(u8, [u16; 3])]) -> Child {
    let script = r#"
import sys
from pymodbus.server import StartSerialServer
from pymodbus.datastore import ModbusSlaveContext, ModbusServerContext, ModbusSequentialDataBlock
from pymodbus.transaction import ModbusRtuFramer
units = {}
for spec in sys.argv[2:]:
    unit, values = spec.split("=")
    words = [int(v) for v in values.split(",")] + [0] * 10
    block = lambda: ModbusSequentialDataBlock(0, list(words))
    units[int(unit)] = ModbusSlaveContext(hr=block(), ir=block(), zero_mode=True)
StartSerialServer(context=ModbusServerContext(slaves=units, single=False),
                  framer=ModbusRtuFramer, port=sys.argv[1], baudrate=19200, timeout=0.005)
"#;
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg("-c").arg(script).arg(port);
    for (unit, words) in units {
        cmd.arg(format!("{unit}={},{},{}", words[0], words[1], words[2]));
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("/usr/bin/python3 with python3-pymodbus (apt-get install python3-pymodbus)")
}

struct KillOnDrop(Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pymodbus_devices_are_read_at_their_unit_ids_and_an_absent_one_is_comm_lost() {
    let line = PtyLine::open().unwrap();
    let _server = KillOnDrop(pymodbus(
        &line.device_end,
        &[(1, [0, 11, 12]), (2, [0, 21, 22])],
    ));
    // Unit 7 is on nobody's list: pymodbus stays silent for it, as an absent slave does.
    let config = site(&line.master_end, &[1, 2, 7], 200, 300, "");
    // pymodbus takes a moment to start: count from when it answers.
    let got = poll_for(&config, Duration::from_secs(5)).await;
    let values = values(&config, &got);
    assert!(values["d1"].len() >= 6, "{values:?}");
    assert!(
        values["d1"].chunks(2).all(|p| p == [11.0, 12.0]),
        "{values:?}"
    );
    assert!(
        values["d2"].chunks(2).all(|p| p == [21.0, 22.0]),
        "{values:?}"
    );
    assert!(!values.contains_key("d7"), "{values:?}");
    let d7_failed = got
        .iter()
        .filter(|(_, o)| config.devices[o.device].id == "d7" && o.result.is_err())
        .count();
    assert!(d7_failed >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mbpoll_reads_the_simulated_bus_over_rtu() {
    let line = PtyLine::open().unwrap();
    let bus = SimBus::serve(&line.device_end, 19200).await.unwrap();
    bus.device(4).set_u16(0, 4321);
    bus.device(4).set_u16(1, 1234);
    let port = line.master_end.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("mbpoll")
            .args([
                "-m", "rtu", "-a", "4", "-b", "19200", "-P", "none", "-0", "-r", "0", "-c", "2",
                "-1", "-o", "1",
            ])
            .arg(&port)
            .output()
            .expect("mbpoll (apt-get install mbpoll)")
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("[0]: \t4321"), "{text}");
    assert!(text.contains("[1]: \t1234"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_slave_on_the_bus_does_not_lower_the_other_devices_poll_rate() {
    let run = Duration::from_secs(12);
    // After the dead slave's backoff reached its cap (200 ms interval: 0.2, 0.4, 0.8, 1.6,
    // 3.2 s, then every 5 s), so the window holds its steady cost.
    let from = Duration::from_secs(6);
    let measure = |dead: bool| async move {
        let line = PtyLine::open().unwrap();
        let bus = SimBus::serve(&line.device_end, 19200).await.unwrap();
        for unit in [1u8, 2, 3] {
            bus.device(unit).set_u16(1, 7);
        }
        let units: &[u8] = if dead { &[1, 2, 3, 9] } else { &[1, 2, 3] };
        let config = site(&line.master_end, units, 200, 300, "quarantine_max_s = 5");
        let got = poll_for(&config, run).await;
        let polls = good_polls(&config, &got, from);
        let secs = (run - from).as_secs_f64();
        let rates: Vec<f64> = ["d1", "d2", "d3"]
            .iter()
            .map(|d| polls.get(*d).copied().unwrap_or(0) as f64 / secs)
            .collect();
        let dead_tries = got
            .iter()
            .filter(|(at, o)| *at >= from && config.devices[o.device].id == "d9")
            .count();
        (rates, dead_tries)
    };
    let (alone, _) = measure(false).await;
    let (with_dead, dead_tries) = measure(true).await;
    println!(
        "polls/s of d1..d3 (200 ms interval): bus alone {alone:.2?}, with a dead slave {with_dead:.2?} \
         (the dead slave was tried {dead_tries} times in {:.0} s, 300 ms timeout each)",
        (run - from).as_secs_f64()
    );
    for (a, d) in alone.iter().zip(&with_dead) {
        assert!(*a >= 4.5, "the bus alone is too slow to compare: {alone:?}");
        // One 300 ms timeout (+ the 100 ms recovery silence) every 5 s costs each device
        // at most two of its 25 polls in those 5 s: 8 %.
        assert!(
            d >= &(a * 0.9),
            "alone {alone:?}, with a dead slave {with_dead:?}"
        );
    }
    assert!(
        (1..=3).contains(&dead_tries),
        "the dead slave was tried {dead_tries} times"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_reply_on_the_bus_is_never_another_devices_value() {
    let line = PtyLine::open().unwrap();
    let bus = SimBus::serve(&line.device_end, 19200).await.unwrap();
    bus.device(1).set_u16(1, 111);
    bus.device(1).set_u16(2, 111);
    bus.device(2).set_u16(1, 222);
    bus.device(2).set_u16(2, 222);
    // Unit 1 answers 250 ms late, past its 150 ms timeout and the 50 ms recovery silence:
    // its reply comes while unit 2's request waits for its answer, with the same function
    // and the same length. tokio-modbus's own client would take it as unit 2's.
    bus.delay_unit(1, Duration::from_millis(250));
    let config = site(
        &line.master_end,
        &[1, 2],
        100,
        150,
        "recovery_silence_ms = 50",
    );
    let got = poll_for(&config, Duration::from_secs(4)).await;
    let values = values(&config, &got);
    let d2 = &values["d2"];
    assert!(d2.len() >= 10, "{values:?}");
    assert!(
        d2.iter().all(|&v| v == 222.0),
        "unit 1's value read as unit 2's: {d2:?}"
    );
    assert!(
        values
            .get("d1")
            .is_none_or(|v| v.iter().all(|&x| x == 111.0))
    );
    // Unit 2 keeps its rate (~10/s over 4 s): the late reply is stepped over, not a
    // failure of unit 2's.
    println!(
        "unit 2's good polls in 4 s beside a unit answering late: {}",
        d2.len() / 2
    );
    assert!(d2.len() / 2 >= 30, "{}", d2.len() / 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_goes_through_the_links_task_between_polls_and_the_next_poll_reads_it() {
    let line = PtyLine::open().unwrap();
    let bus = SimBus::serve(&line.device_end, 19200).await.unwrap();
    for unit in [1, 2] {
        bus.device(unit).set_u16(1, 1);
    }
    let config = site(&line.master_end, &[1, 2], 50, 300, "");
    let (writers, mut rx, task) = start_link(&config);
    // Polls run; then a write of 7 to d2's point w (register 2) while they do.
    for _ in 0..5 {
        rx.recv().await.unwrap();
    }
    writers.write(1, "w", 7.0).await.unwrap();
    assert_eq!(bus.device(2).get_u16(2), 7);
    // The next poll of d2 reads it; polls went on, none failed.
    loop {
        let o = rx.recv().await.unwrap();
        let polled = o.result.as_ref().expect("no poll fails around a write");
        if config.devices[o.device].id == "d2" {
            assert_eq!(polled.values[1], ("w".to_string(), 7.0));
            break;
        }
    }
    // An input or an unknown point is refused before anything is sent, with its reason.
    let err = writers.write(1, "nope", 1.0).await.unwrap_err();
    assert!(err.to_string().contains("no such point"), "{err}");
    let err = writers.write(1, "w", 70_000.0).await.unwrap_err();
    assert!(
        err.to_string().contains("out of the register's range"),
        "{err}"
    );
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_warning_relay_on_a_modbus_module_follows_the_warning_and_retries_until_it_answers()
 {
    let line = PtyLine::open().unwrap();
    let bus = SimBus::serve(&line.device_end, 19200).await.unwrap();
    let config = site(&line.master_end, &[1], 100, 200, "");
    let (writers, _rx, task) = start_link(&config);
    let relay_module = bus.device(1);
    relay_module.set_responding(false);
    let mut relay = ModbusRelay::spawn(writers, 0, "d1", "v", false);
    relay.set(true).unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        relay_module.get_u16(1),
        0,
        "a silent module is not switched"
    );
    relay_module.set_responding(true);
    let deadline = Instant::now() + Duration::from_secs(5);
    while relay_module.get_u16(1) != 1 {
        assert!(
            Instant::now() < deadline,
            "the relay was not switched once the module answered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    relay.set(false).unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while relay_module.get_u16(1) != 0 {
        assert!(Instant::now() < deadline, "the relay was not switched off");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_behind_a_serial_device_server_are_read_over_rtu_over_tcp_and_it_reconnects() {
    let (bus, addr) = SimBus::serve_tcp().await.unwrap();
    for unit in [5u8, 6] {
        bus.device(unit).set_u16(1, u16::from(unit) * 10);
        bus.device(unit).set_u16(2, u16::from(unit) * 10 + 1);
    }
    let mut text = format!(
        "[gateway]\nid = \"gw\"\ncommunity = \"c\"\ndata_dir = \"/nonexistent\"\n\n\
         [[links]]\nid = \"b1-server\"\ntransport = \"rtu-over-tcp\"\naddress = \"{addr}\"\nbaud = 9600\n"
    );
    for unit in [5u8, 6] {
        text.push_str(&format!(
            "\n[[devices]]\nid = \"d{unit}\"\nkind = \"level\"\nbuilding = \"B1\"\nfloor = \"01\"\n\
             room = \"{unit:02}\"\nlink = \"b1-server\"\nunit_id = {unit}\npoll_interval_ms = 100\n\
             timeout_ms = 300\n\n[[devices.points]]\nname = \"v\"\nregister = 1\ntype = \"u16\"\n\
             \n[[devices.points]]\nname = \"w\"\nregister = 2\ntype = \"u16\"\n"
        ));
    }
    let config = Config::from_toml_str(&text, "test").unwrap_or_else(|e| panic!("{e}"));
    let (_writers, mut rx, task) = start_link(&config);
    let mut seen = BTreeMap::new();
    while seen.len() < 2 {
        let o = rx.recv().await.unwrap();
        if let Ok(p) = &o.result {
            seen.insert(config.devices[o.device].id.clone(), p.values.clone());
        }
    }
    assert_eq!(
        seen["d5"],
        vec![("v".to_string(), 50.0), ("w".to_string(), 51.0)]
    );
    assert_eq!(
        seen["d6"],
        vec![("v".to_string(), 60.0), ("w".to_string(), 61.0)]
    );
    // The server goes away and comes back on the same port: the link reconnects by itself.
    drop(bus);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let bus = loop {
        match SimBus::serve_tcp_on(addr).await {
            Ok((bus, new_addr)) => break (bus, new_addr),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let (bus, new_addr) = bus;
    assert_eq!(new_addr, addr);
    bus.device(5).set_u16(1, 500);
    bus.device(6).set_u16(1, 600);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut back = BTreeMap::new();
    while back.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the link did not reconnect: {back:?}"
        );
        let Ok(Some(o)) = tokio::time::timeout(Duration::from_secs(1), rx.recv()).await else {
            continue;
        };
        if let Ok(p) = &o.result
            && (p.values[0].1 == 500.0 || p.values[0].1 == 600.0)
        {
            back.insert(config.devices[o.device].id.clone(), p.values[0].1);
        }
    }
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serial_link_reopens_its_port_when_the_adapter_comes_back() {
    let mut line = PtyLine::open().unwrap();
    let bus = SimBus::serve(&line.device_end, 19200).await.unwrap();
    bus.device(1).set_u16(1, 11);
    let config = site(&line.master_end, &[1], 100, 200, "quarantine_max_s = 1");
    let (_writers, mut rx, task) = start_link(&config);
    loop {
        if rx.recv().await.unwrap().result.is_ok() {
            break;
        }
    }
    // Unplugged for a second: polls fail (the port is gone), then it is back with the
    // devices on it.
    drop(bus);
    let line = tokio::task::spawn_blocking(move || {
        line.replug(Duration::from_secs(1)).unwrap();
        line
    })
    .await
    .unwrap();
    let bus = SimBus::serve(&line.device_end, 19200).await.unwrap();
    bus.device(1).set_u16(1, 12);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut failed = 0;
    loop {
        assert!(Instant::now() < deadline, "the port was not reopened");
        let Ok(Some(o)) = tokio::time::timeout(Duration::from_secs(1), rx.recv()).await else {
            continue;
        };
        match o.result {
            Err(_) => failed += 1,
            Ok(p) if p.values[0].1 == 12.0 => break,
            Ok(_) => {}
        }
    }
    assert!(
        failed >= 1,
        "the unplugged port must have failed some polls"
    );
    task.abort();
    drop(line);
}

/// A serial device server whose unit 6 is hostile: each request for it is answered with
/// half a frame, garbage or nothing, and the server then closes the connection (a device
/// server restarting, a peer breaking off mid-frame). Unit 5 answers honestly: register `r`
/// holds `50 + r - 1`. Written by hand (tokio-modbus's server cannot misbehave).
async fn hostile_device_server() -> std::net::SocketAddr {
    use shouwang_gateway::sources::modbus::rtu::frame::crc16;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut misdeeds = 0usize;
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            loop {
                let mut request = [0u8; 8];
                if stream.read_exact(&mut request).await.is_err() {
                    break;
                }
                let (unit, function) = (request[0], request[1]);
                let start = u16::from_be_bytes([request[2], request[3]]);
                let count = u16::from_be_bytes([request[4], request[5]]);
                let mut answer = vec![unit, function, (count * 2) as u8];
                for r in start..start + count {
                    answer.extend_from_slice(&(50 + r - 1).to_be_bytes());
                }
                let crc = crc16(&answer);
                answer.extend_from_slice(&crc.to_le_bytes());
                if unit != 6 {
                    if stream.write_all(&answer).await.is_err() {
                        break;
                    }
                    continue;
                }
                misdeeds += 1;
                let _ = match misdeeds % 3 {
                    // Half of a right frame, then the connection closes.
                    0 => stream.write_all(&answer[..answer.len() / 2]).await,
                    // Bytes that are no frame at all.
                    1 => stream.write_all(&[0xff, 0x00, 0x13, 0x37, 0xff]).await,
                    // Nothing.
                    _ => Ok(()),
                };
                break;
            }
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_server_closing_mid_frame_for_one_unit_costs_only_that_unit() {
    let addr = hostile_device_server().await;
    let mut text = format!(
        "[gateway]\nid = \"gw\"\ncommunity = \"c\"\ndata_dir = \"/nonexistent\"\n\n\
         [[links]]\nid = \"b1-server\"\ntransport = \"rtu-over-tcp\"\naddress = \"{addr}\"\nbaud = 9600\n"
    );
    for unit in [5u8, 6] {
        text.push_str(&format!(
            "\n[[devices]]\nid = \"d{unit}\"\nkind = \"level\"\nbuilding = \"B1\"\nfloor = \"01\"\n\
             room = \"{unit:02}\"\nlink = \"b1-server\"\nunit_id = {unit}\npoll_interval_ms = 100\n\
             timeout_ms = 300\n\n[[devices.points]]\nname = \"v\"\nregister = 1\ntype = \"u16\"\n\
             \n[[devices.points]]\nname = \"w\"\nregister = 2\ntype = \"u16\"\n"
        ));
    }
    let config = Config::from_toml_str(&text, "test").unwrap_or_else(|e| panic!("{e}"));
    let run = Duration::from_secs(4);
    let got = poll_for(&config, run).await;
    let good = good_polls(&config, &got, Duration::from_secs(1));
    let failed_d6 = got
        .iter()
        .filter(|(_, o)| config.devices[o.device].id == "d6" && o.result.is_err())
        .count();
    println!("good polls after the first second: {good:?}; d6 failed {failed_d6} times");
    // d5 is due every 100 ms: 30 polls in the 3 s measured. d6's failures (each one a
    // reconnect) and its quarantine may cost a few; a stalled link would cost all.
    let d5 = good.get("d5").copied().unwrap_or(0);
    assert!(d5 >= 24, "d5 kept only {d5} of 30 polls: {good:?}");
    assert_eq!(good.get("d6"), None, "nothing d6 sent is a reading");
    assert!(failed_d6 >= 2, "d6 was polled and failed: {failed_d6}");
    let values = values(&config, &got);
    assert!(
        values["d5"].iter().all(|v| *v == 50.0 || *v == 51.0),
        "only d5's own values on d5: {:?}",
        values["d5"]
    );
}
