//! The delivery path on a bad day, with real parts: the `shouwang-gateway` and
//! `shouwang-console` binaries, a real mosquitto, simulated Modbus TCP devices.
//!
//! Each test breaks something (the broker dies and forgets, the gateway is killed with
//! SIGKILL, a hostile client publishes garbage on every topic) and asserts what an operator
//! would see: every alarm transition on the board, once, and the path still working.
//! Recovery times are printed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::Value;
use shouwang_hil_tests::rig::{self, eventually};
use shouwang_hil_tests::servers;
use shouwang_hil_tests::sim::SimDevice;
use shouwang_wire::Message;

async fn smoke_sim() -> SimDevice {
    let smoke = SimDevice::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    smoke.set_u16(0, 20); // 0.20 %/m: clean air
    smoke
}

/// The console's history of one alarm (oldest first), or `None` on any failure.
async fn history(http: &reqwest::Client, console: &str, alarm_id: &str) -> Option<Vec<Value>> {
    let detail: Value = http
        .get(format!("{console}/api/alarms/{alarm_id}"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    detail["history"].as_array().cloned()
}

/// Wait until the console's history of `alarm_id` holds at least `n` events.
async fn wait_history(
    http: &reqwest::Client,
    console: &rig::ConsoleProc,
    gateway: &rig::Proc,
    alarm_id: &str,
    n: usize,
    limit: Duration,
) -> Vec<Value> {
    eventually(
        &format!("{n} events of {alarm_id} at the console"),
        limit,
        || async {
            history(http, &console.url, alarm_id)
                .await
                .filter(|h| h.len() >= n)
        },
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n--- gateway\n{}\n--- console\n{}",
            gateway.log(),
            console.proc.log()
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transition_raised_while_the_broker_was_down_reaches_the_console_once_after_the_gateway_is_killed_and_the_broker_forgot_everything()
 {
    let mut broker = servers::mosquitto().unwrap();
    let port = broker.port();
    let console = rig::start_console(port).unwrap();
    let smoke = smoke_sim().await;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let config = rig::gateway_config("gw-d", port, smoke.local_addr(), None, "");
    let mut gateway = rig::start_gateway_in(dir.clone(), &config).unwrap();
    let alarm = "riverside:gw-d:smoke-B1-12-03:smoke-high";
    let http = servers::http_client();

    // The path works: one raise and clear reach the board.
    smoke.set_u16(0, 400);
    wait_history(&http, &console, &gateway, alarm, 1, Duration::from_secs(20)).await;
    smoke.set_u16(0, 20);
    wait_history(&http, &console, &gateway, alarm, 2, Duration::from_secs(10)).await;

    // The broker dies hard and comes back with nothing: no session, no queue.
    broker.kill();
    let _ = std::fs::remove_file(broker.dir().join("mosquitto.db"));
    // Three fires and three clears while it is gone: six transitions.
    for _ in 0..3 {
        smoke.set_u16(0, 400);
        tokio::time::sleep(Duration::from_millis(500)).await;
        smoke.set_u16(0, 20);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The power goes: nothing the gateway held in memory survives.
    gateway.kill();
    let _fresh = servers::mosquitto_on(port).unwrap();
    let restarted = Instant::now();
    let gateway = rig::start_gateway_in(dir.clone(), &config).unwrap();

    let events = wait_history(&http, &console, &gateway, alarm, 8, Duration::from_secs(30)).await;
    println!(
        "all 8 transitions on the board {:?} after the gateway and the broker came back",
        restarted.elapsed()
    );
    // Exactly once (the store keeps one row per event_id, so count the occurrences), in
    // the order they happened, alternating as the smoke came and went.
    tokio::time::sleep(Duration::from_secs(1)).await; // room for a duplicate to show up
    let events = history(&http, &console.url, alarm).await.unwrap_or(events);
    rig::assert_each_transition_once(&events, &["raised", "cleared"].repeat(4), &gateway.log());
}

/// A console, a smoke detector and a gateway on the broker at `port`, once the console
/// shows the gateway online.
async fn online(port: u16, gateway_id: &str) -> (rig::ConsoleProc, SimDevice, rig::Proc) {
    let console = rig::start_console(port).unwrap();
    let smoke = smoke_sim().await;
    let config = rig::gateway_config(gateway_id, port, smoke.local_addr(), None, "");
    let gateway = rig::start_gateway(&config).unwrap();
    let http = servers::http_client();
    eventually(
        "the gateway online at the console",
        Duration::from_secs(20),
        || async {
            let list: Value = http
                .get(format!("{}/api/gateways", console.url))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            list.as_array()?
                .iter()
                .any(|g| g["gateway"] == gateway_id && g["state"] == "online")
                .then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", gateway.log()));
    (console, smoke, gateway)
}

/// A client of the broker's that owes nothing to anyone: clean session, no limits.
async fn hostile(port: u16) -> AsyncClient {
    let mut options =
        MqttOptions::new(format!("hostile-{}", std::process::id()), "127.0.0.1", port);
    options.set_max_packet_size(1 << 24, 1 << 24);
    let (client, mut events) = AsyncClient::new(options, 4096);
    tokio::spawn(async move {
        loop {
            if events.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    client
}

/// Garbage of every kind a peer can send: oversized, binary, wrong schema, valid JSON of
/// the wrong shape, a command with a huge field.
fn garbage(gateway: &str) -> Vec<Vec<u8>> {
    let mut binary = vec![0u8; 200 * 1024];
    for (i, b) in binary.iter_mut().enumerate() {
        *b = (i * 7919 % 251) as u8;
    }
    vec![
        vec![b'{'; 64 * 1024],
        binary,
        br#"{"schema":2,"anything":true}"#.to_vec(),
        br#"{"schema":1}"#.to_vec(),
        br#"[1,2,3]"#.to_vec(),
        Vec::new(),
        format!(
            r#"{{"schema":1,"command_id":"x","operator":"{}","ts_ms":1,"action":"acknowledge","alarm_id":"riverside:{gateway}:smoke-B1-12-03:smoke-high"}}"#,
            "o".repeat(100 * 1024)
        )
        .into_bytes(),
        format!(r#"{{"schema":1,"gateway":"{gateway}","events":[{{"boot":1,"seq":"x"}}],"ts_ms":1}}"#).into_bytes(),
    ]
}

/// After the abuse: the gateway and the console are running, a new fire reaches the board,
/// and an acknowledgement goes all the way to the gateway and back.
async fn still_works(
    smoke: &SimDevice,
    gateway: &mut rig::Proc,
    console: &mut rig::ConsoleProc,
    alarm: &str,
) {
    assert!(gateway.running(), "the gateway died:\n{}", gateway.log());
    assert!(
        console.proc.running(),
        "the console died:\n{}",
        console.proc.log()
    );
    let http = servers::http_client();
    let fire = Instant::now();
    smoke.set_u16(0, 400);
    wait_history(&http, console, gateway, alarm, 1, Duration::from_secs(10)).await;
    println!(
        "a fire after the abuse reached the board in {:?}",
        fire.elapsed()
    );
    let resp = http
        .post(format!("{}/api/alarms/{alarm}/ack", console.url))
        .json(&serde_json::json!({"operator": "Wang Li"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let events = wait_history(&http, console, gateway, alarm, 2, Duration::from_secs(10)).await;
    assert_eq!(events[1]["transition"], "acknowledged", "{events:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_client_publishing_garbage_on_every_topic_silences_neither_the_gateway_nor_the_console()
 {
    // The broker as docs/mosquitto/ sets it up: packets past 256 KiB are refused.
    let broker = servers::mosquitto_limited().unwrap();
    let (mut console, smoke, mut gateway) = online(broker.port(), "gw-h").await;

    let abuser = hostile(broker.port()).await;
    let started = Instant::now();
    // Every channel there is (the snapshot one included), so a new one is not forgotten.
    for channel in shouwang_wire::Channel::ALL {
        let topic = format!("shouwang/v1/riverside/gw-h/{}", channel.as_str());
        for payload in garbage("gw-h") {
            abuser
                .publish(&topic, QoS::AtLeastOnce, false, payload)
                .await
                .unwrap();
        }
    }
    // A flood of bad commands, as fast as the broker takes them.
    let flood = br#"{"schema":1,"command_id":"f","operator":"x","ts_ms":1,"action":"launch"}"#;
    for _ in 0..2000 {
        abuser
            .publish(
                "shouwang/v1/riverside/gw-h/commands",
                QoS::AtMostOnce,
                false,
                flood.to_vec(),
            )
            .await
            .unwrap();
    }
    println!(
        "published the garbage and the flood in {:?}",
        started.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    still_works(
        &smoke,
        &mut gateway,
        &mut console,
        "riverside:gw-h:smoke-B1-12-03:smoke-high",
    )
    .await;
    assert!(
        gateway.log().contains("ignored a bad command"),
        "{}",
        gateway.log()
    );

    // A command that spent two minutes in transit (30 s is all it holds) is refused with a
    // reply saying so, judged on the console's clock the gateway learned from receipts.
    let replies = rig::Listener::start(broker.port(), "shouwang/v1/riverside/gw-h/replies")
        .await
        .unwrap();
    let stale = format!(
        r#"{{"schema":1,"command_id":"stale-1","operator":"li","ts_ms":{},"ttl_ms":30000,"action":"acknowledge","alarm_id":"riverside:gw-h:smoke-B1-12-03:smoke-high"}}"#,
        rig::wall_ms() - 120_000
    );
    abuser
        .publish(
            "shouwang/v1/riverside/gw-h/commands",
            QoS::AtLeastOnce,
            false,
            stale.into_bytes(),
        )
        .await
        .unwrap();
    let reply = replies
        .wait_for("the stale command's reply", Duration::from_secs(5), |h| {
            shouwang_wire::CommandReply::decode(&h.payload)
                .ok()
                .filter(|r| r.command_id == "stale-1")
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", gateway.log()));
    assert!(!reply.ok);
    assert!(
        reply
            .error
            .as_deref()
            .is_some_and(|e| e.contains("expired")),
        "{reply:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_megabyte_message_on_a_broker_without_limits_costs_the_gateway_one_reconnect_and_the_console_nothing()
 {
    // A broker left at mosquitto's defaults (no packet limit) lets anything through.
    let broker = servers::mosquitto().unwrap();
    let (mut console, smoke, mut gateway) = online(broker.port(), "gw-b").await;
    let abuser = hostile(broker.port()).await;
    let big = vec![b'x'; 2 * 1024 * 1024];
    for channel in ["commands", "events", "status"] {
        abuser
            .publish(
                format!("shouwang/v1/riverside/gw-b/{channel}"),
                QoS::AtLeastOnce,
                false,
                big.clone(),
            )
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    still_works(
        &smoke,
        &mut gateway,
        &mut console,
        "riverside:gw-b:smoke-B1-12-03:smoke-high",
    )
    .await;
}

/// The board's current view of one alarm, or `None`.
async fn alarm_view(http: &reqwest::Client, console: &str, alarm_id: &str) -> Option<Value> {
    http.get(format!("{console}/api/alarms/{alarm_id}"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
}

/// Wait until the board shows `alarm_id` in `state`.
async fn wait_state(
    http: &reqwest::Client,
    console: &rig::ConsoleProc,
    gateway: &rig::Proc,
    alarm_id: &str,
    state: &str,
    limit: Duration,
) {
    eventually(
        &format!("{alarm_id} {state} on the board"),
        limit,
        || async {
            alarm_view(http, &console.url, alarm_id)
                .await
                .filter(|a| a["state"] == state)
        },
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n--- gateway\n{}\n--- console\n{}",
            gateway.log(),
            console.proc.log()
        )
    });
}

/// A small tmpfs, unmounted on drop: a disk that fills up.
struct SmallDisk {
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(bytes: usize) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::create_dir(&path).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}")])
            .arg("tmpfs")
            .arg(&path)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "mounting a tmpfs needs root (CI and scripts/test run as root)"
        );
        SmallDisk { path, _dir: dir }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_keeps_alarms_flowing_from_memory_and_shows_as_a_fault_until_space_returns() {
    let disk = SmallDisk::mount(256 * 1024);
    let broker = servers::mosquitto().unwrap();
    let console = rig::start_console(broker.port()).unwrap();
    let smoke = smoke_sim().await;
    let config = rig::gateway_config("gw-f", broker.port(), smoke.local_addr(), None, "").replace(
        "data_dir = \"data\"",
        &format!("data_dir = \"{}\"", disk.path.display()),
    );
    let gateway = rig::start_gateway(&config).unwrap();
    let http = servers::http_client();
    let smoke_alarm = "riverside:gw-f:smoke-B1-12-03:smoke-high";
    let disk_fault = "riverside:gw-f:gw-f:queue_disk";
    smoke.set_u16(0, 400);
    wait_state(
        &http,
        &console,
        &gateway,
        smoke_alarm,
        "unacknowledged",
        Duration::from_secs(20),
    )
    .await;

    // The disk fills up (another program's log, say).
    let filler = disk.path.join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 512 * 1024]);
    // tmpfs hands out whole pages: the first events may still fit in the queue file's last
    // page. Fire and clear until one does not; every transition must reach the board
    // whether it was written or not, and the fault must show.
    let mut fault_shown = false;
    for round in 0..20 {
        let (value, state) = if round % 2 == 0 {
            (20, "returned_unacknowledged")
        } else {
            (400, "unacknowledged")
        };
        let cut = Instant::now();
        smoke.set_u16(0, value);
        wait_state(
            &http,
            &console,
            &gateway,
            smoke_alarm,
            state,
            Duration::from_secs(10),
        )
        .await;
        if round == 0 {
            println!(
                "an alarm clear on a full disk reached the board in {:?}",
                cut.elapsed()
            );
        }
        let fault = alarm_view(&http, &console.url, disk_fault).await;
        if fault.is_some_and(|a| a["state"] == "unacknowledged") {
            fault_shown = true;
            // End with the smoke alarm raised, as the rest of the test expects.
            if state != "unacknowledged" {
                smoke.set_u16(0, 400);
                wait_state(
                    &http,
                    &console,
                    &gateway,
                    smoke_alarm,
                    "unacknowledged",
                    Duration::from_secs(10),
                )
                .await;
            }
            break;
        }
    }
    assert!(
        fault_shown,
        "no queue_disk fault on a full disk:\n{}",
        gateway.log()
    );

    // Space comes back: with no new event at all, what was kept in memory is written to
    // the disk again (so a restart would not lose it) and the fault clears.
    std::fs::remove_file(&filler).unwrap();
    wait_state(
        &http,
        &console,
        &gateway,
        disk_fault,
        "returned_unacknowledged",
        Duration::from_secs(15),
    )
    .await;
    smoke.set_u16(0, 20);
    wait_state(
        &http,
        &console,
        &gateway,
        smoke_alarm,
        "returned_unacknowledged",
        Duration::from_secs(10),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_queue_tail_is_skipped_and_counted_and_the_alarms_before_it_still_arrive() {
    let broker = servers::mosquitto().unwrap();
    let port = broker.port();
    let smoke = smoke_sim().await;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let config = rig::gateway_config("gw-c", port, smoke.local_addr(), None, "");
    // No console yet: nothing is confirmed, so the events stay in the queue.
    let mut gateway = rig::start_gateway_in(dir.clone(), &config).unwrap();
    let listener = rig::Listener::start(port, "shouwang/v1/+/gw-c/events")
        .await
        .unwrap();
    smoke.set_u16(0, 400);
    listener
        .wait_for("the raise on the broker", Duration::from_secs(20), |h| {
            Some(h.at)
        })
        .await
        .unwrap();
    gateway.kill();

    // A power cut tore the last write: garbage after the last record.
    let queue = dir.path().join("data").join("alarms");
    let segment = std::fs::read_dir(&queue)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "q"))
        .max()
        .expect("a segment file");
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes.extend_from_slice(&[0xA5; 37]);
    std::fs::write(&segment, bytes).unwrap();

    let console = rig::start_console(port).unwrap();
    let gateway = rig::start_gateway_in(dir.clone(), &config).unwrap();
    let http = servers::http_client();
    let alarm = "riverside:gw-c:smoke-B1-12-03:smoke-high";
    wait_state(
        &http,
        &console,
        &gateway,
        alarm,
        "unacknowledged",
        Duration::from_secs(30),
    )
    .await;
    assert!(
        gateway.log().contains("damaged records"),
        "{}",
        gateway.log()
    );
    // And the path goes on.
    smoke.set_u16(0, 20);
    wait_state(
        &http,
        &console,
        &gateway,
        alarm,
        "returned_unacknowledged",
        Duration::from_secs(10),
    )
    .await;
}

/// libfaketime, from Debian's `faketime` package.
fn libfaketime() -> String {
    let candidates = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    ];
    candidates
        .iter()
        .find(|p| std::path::Path::new(p).is_file())
        .map(|p| p.to_string())
        .expect("libfaketime missing: apt-get install -y faketime (scripts/test does)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wall_clock_steps_back_and_forward_neither_delay_nor_hide_nor_freeze_an_alarm() {
    let broker = servers::mosquitto().unwrap();
    let console = rig::start_console(broker.port()).unwrap();
    let smoke = smoke_sim().await;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    // The gateway's wall clock comes from this file, read on every call; the monotonic
    // clock stays real, as on a Pi whose NTP steps the time.
    let offset = dir.path().join("faketime");
    std::fs::write(&offset, "+0\n").unwrap();
    let env = [
        ("LD_PRELOAD", libfaketime()),
        ("FAKETIME_TIMESTAMP_FILE", offset.display().to_string()),
        ("FAKETIME_NO_CACHE", "1".to_string()),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_string()),
    ];
    let config = rig::gateway_config("gw-t", broker.port(), smoke.local_addr(), None, "");
    let gateway = rig::start_gateway_with(dir.clone(), &config, &env).unwrap();
    let http = servers::http_client();
    let alarm = "riverside:gw-t:smoke-B1-12-03:smoke-high";
    smoke.set_u16(0, 400);
    wait_state(
        &http,
        &console,
        &gateway,
        alarm,
        "unacknowledged",
        Duration::from_secs(20),
    )
    .await;
    smoke.set_u16(0, 20);
    wait_state(
        &http,
        &console,
        &gateway,
        alarm,
        "returned_unacknowledged",
        Duration::from_secs(5),
    )
    .await;

    // NTP steps the clock back ten minutes: the next fire is neither ignored nor delayed,
    // and the board does not keep the older state because of its later timestamp.
    std::fs::write(&offset, "-10m\n").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fire = Instant::now();
    smoke.set_u16(0, 400);
    wait_state(
        &http,
        &console,
        &gateway,
        alarm,
        "unacknowledged",
        Duration::from_secs(2),
    )
    .await;
    println!(
        "a fire after the clock stepped back 10 min: on the board in {:?}",
        fire.elapsed()
    );
    let shown = alarm_view(&http, &console.url, alarm).await.unwrap();
    let stepped = shown["ts_ms"].as_i64().unwrap();
    let real = shouwang_hil_tests::rig::wall_ms();
    assert!(
        (real - 600_000 - stepped).abs() < 60_000,
        "the event carries the gateway's (stepped) wall time: {stepped} vs {real}"
    );

    // The console's receipts tell the gateway how far off its clock is: reported as a fault.
    wait_state(
        &http,
        &console,
        &gateway,
        "riverside:gw-t:gw-t:clock_off",
        "unacknowledged",
        Duration::from_secs(5),
    )
    .await;

    // And forward two days: the clear is not taken for anything else either.
    std::fs::write(&offset, "+2d\n").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    smoke.set_u16(0, 20);
    wait_state(
        &http,
        &console,
        &gateway,
        alarm,
        "returned_unacknowledged",
        Duration::from_secs(2),
    )
    .await;
    // A Pi that boots in 1970 and is corrected later.
    std::fs::write(&offset, "@1970-01-02 00:00:00\n").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    smoke.set_u16(0, 400);
    wait_state(
        &http,
        &console,
        &gateway,
        alarm,
        "unacknowledged",
        Duration::from_secs(2),
    )
    .await;
}

/// The value of one metric on the gateway's `/metrics`, when it answers.
async fn metric(http: &reqwest::Client, url: &str, name: &str) -> Option<u64> {
    let text = http.get(url).send().await.ok()?.text().await.ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_broker_confirmation_the_brokers_puback_empties_the_queue_without_any_console() {
    let broker = servers::mosquitto().unwrap();
    let port = broker.port();
    // Another receiver than the console: a persistent session, as the docs ask for.
    let receiver =
        rig::Listener::start_persistent(port, "shouwang/v1/+/gw-b/events", "other-receiver")
            .await
            .unwrap();
    let smoke = smoke_sim().await;
    let metrics_port = servers::free_port();
    let config = rig::gateway_config(
        "gw-b",
        port,
        smoke.local_addr(),
        None,
        &format!("[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n"),
    )
    .replace(
        "data_dir = \"data\"",
        "data_dir = \"data\"\nalarm_confirmation = \"broker\"",
    );
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut gateway = rig::start_gateway_in(dir.clone(), &config).unwrap();
    let http = servers::http_client();
    let url = format!("http://127.0.0.1:{metrics_port}/metrics");

    // Raised, cleared, raised: three transitions, no console anywhere.
    for value in [400, 20, 400] {
        let before = receiver.heard().len();
        smoke.set_u16(0, value);
        eventually(
            "the transition at the receiver",
            Duration::from_secs(20),
            || async { (receiver.heard().len() > before).then_some(()) },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", gateway.log()));
    }
    let confirmed = eventually(
        "the queue emptied by PUBACKs",
        Duration::from_secs(10),
        || async {
            let pending = metric(&http, &url, "shouwang_gateway_alarm_queue_pending").await?;
            let confirmed =
                metric(&http, &url, "shouwang_gateway_alarm_events_confirmed_total").await?;
            (pending == 0 && confirmed >= 3).then_some(confirmed)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", gateway.log()));
    println!("{confirmed} alarm events confirmed by the broker's PUBACK");

    // Confirmed means gone once the alarm state file holds them (written at most once a
    // second; until then a confirmed event stays queued and a restart sends it again, same
    // event_id): a restart then sends none of them again.
    tokio::time::sleep(Duration::from_millis(1500)).await; // journal::STATE_SAVE_EVERY + room
    let heard = receiver.heard().len();
    gateway.kill();
    let gateway = rig::start_gateway_in(dir.clone(), &config).unwrap();
    eventually(
        "the restarted gateway connected",
        Duration::from_secs(10),
        || async {
            metric(&http, &url, "shouwang_gateway_mqtt_connected")
                .await
                .filter(|c| *c == 1)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", gateway.log()));
    tokio::time::sleep(Duration::from_secs(3)).await; // past the first resend
    let ids: std::collections::HashSet<String> = receiver
        .heard()
        .iter()
        .filter_map(|h| shouwang_wire::AlarmEvent::decode(&h.payload).ok())
        .map(|e| e.event_id)
        .collect();
    assert_eq!(
        receiver.heard().len(),
        heard,
        "a confirmed event was sent again after the restart\n{}",
        gateway.log()
    );
    assert_eq!(ids.len(), 3, "{ids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_whose_disk_is_full_confirms_nothing_it_could_not_store_and_has_every_transition_once_space_returns()
 {
    let disk = SmallDisk::mount(4 * 1024 * 1024);
    let broker = servers::mosquitto().unwrap();
    let console =
        rig::start_console_with_db(broker.port(), Some(&disk.path.join("console.db"))).unwrap();
    let smoke = smoke_sim().await;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let config = rig::gateway_config("gw-s", broker.port(), smoke.local_addr(), None, "");
    let gateway = rig::start_gateway_in(dir.clone(), &config).unwrap();
    let http = servers::http_client();
    let alarm = "riverside:gw-s:smoke-B1-12-03:smoke-high";
    smoke.set_u16(0, 400);
    wait_history(&http, &console, &gateway, alarm, 1, Duration::from_secs(20)).await;

    // The console's disk fills up: the next writes fail.
    let filler = disk.path.join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 8 * 1024 * 1024]);
    for _ in 0..3 {
        smoke.set_u16(0, 20);
        tokio::time::sleep(Duration::from_millis(400)).await;
        smoke.set_u16(0, 400);
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    // It says so: /healthz is 503 and names the failures.
    let health = eventually(
        "the console reporting its store failing",
        Duration::from_secs(15),
        || async {
            let r = http
                .get(format!("{}/healthz", console.url))
                .send()
                .await
                .ok()?;
            let code = r.status().as_u16();
            let body: Value = r.json().await.ok()?;
            (code == 503 && body["store_failures_in_a_row"].as_u64() > Some(0)).then_some(body)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n--- console\n{}", console.proc.log()));
    println!("console on a full disk: {health}");

    // Space returns: every transition arrives, once, in order.
    std::fs::remove_file(&filler).unwrap();
    let returned = Instant::now();
    let events = wait_history(&http, &console, &gateway, alarm, 7, Duration::from_secs(40)).await;
    println!(
        "all 7 transitions on the board {:?} after the console's disk had room again",
        returned.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let events = history(&http, &console.url, alarm).await.unwrap_or(events);
    let mut want = vec!["raised"];
    want.extend(["cleared", "raised"].repeat(3));
    rig::assert_each_transition_once(&events, &want, &console.proc.log());
    eventually(
        "the console healthy again",
        Duration::from_secs(15),
        || async {
            let r = http
                .get(format!("{}/healthz", console.url))
                .send()
                .await
                .ok()?;
            (r.status().as_u16() == 200).then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n--- console\n{}", console.proc.log()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_broker_confirmation_transitions_made_while_the_broker_was_dead_reach_the_receiver_once_it_is_back()
 {
    // The receiver's persistent session must outlive the broker's crash (docs/mosquitto:
    // persistence on): the broker then keeps what the gateway publishes for it even before
    // it reconnects. Without that, a PUBACK can confirm an event nobody received, which is
    // the limit broker_confirm.rs documents.
    let mut broker = servers::mosquitto_saving_every(1).unwrap();
    let port = broker.port();
    let receiver = rig::Listener::start_persistent(port, "shouwang/v1/+/gw-k/events", "receiver-k")
        .await
        .unwrap();
    let smoke = smoke_sim().await;
    let metrics_port = servers::free_port();
    let config = rig::gateway_config(
        "gw-k",
        port,
        smoke.local_addr(),
        None,
        &format!("[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n"),
    )
    .replace(
        "data_dir = \"data\"",
        "data_dir = \"data\"\nalarm_confirmation = \"broker\"",
    );
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let gateway = rig::start_gateway_in(dir.clone(), &config).unwrap();
    let http = servers::http_client();
    let url = format!("http://127.0.0.1:{metrics_port}/metrics");
    eventually("the gateway connected", Duration::from_secs(10), || async {
        metric(&http, &url, "shouwang_gateway_mqtt_connected")
            .await
            .filter(|c| *c == 1)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", gateway.log()));

    // The broker saves the receiver's session, then dies: no PUBACK can come, so nothing
    // made meanwhile may leave the queue.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    broker.kill();
    for value in [400, 20, 400] {
        smoke.set_u16(0, value);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let pending = metric(&http, &url, "shouwang_gateway_alarm_queue_pending").await;
    assert_eq!(pending, Some(3), "{}", gateway.log());

    // It comes back with the receiver's session; the three transitions reach the
    // receiver, and leave the queue on their PUBACKs.
    broker.start_again().unwrap();
    let back = Instant::now();
    eventually(
        "the queue emptied by PUBACKs",
        Duration::from_secs(30),
        || async {
            metric(&http, &url, "shouwang_gateway_alarm_queue_pending")
                .await
                .filter(|n| *n == 0)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", gateway.log()));
    let heard = eventually(
        "three transitions at the receiver",
        Duration::from_secs(10),
        || async {
            let ids: std::collections::BTreeSet<String> = receiver
                .heard()
                .iter()
                .filter_map(|h| shouwang_wire::AlarmEvent::decode(&h.payload).ok())
                .map(|e| e.event_id)
                .collect();
            (ids.len() >= 3).then_some(ids)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", gateway.log()));
    assert_eq!(heard.len(), 3, "{heard:?}");
    println!(
        "broker mode: 3 transitions made while the broker was dead confirmed {:?} after it was back",
        back.elapsed()
    );
}
