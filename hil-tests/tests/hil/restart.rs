//! Alarm state across a gateway restart, with real parts: the `shouwang-gateway` and
//! `shouwang-console` binaries, a real mosquitto, a simulated Modbus TCP smoke detector.
//!
//! The gateway is killed with SIGKILL (a power cut) and started again on the same data
//! directory, sometimes with a changed config. What the board shows afterwards must be the
//! truth: no alarm raised twice, an acknowledged alarm that cleared meanwhile gone, an alarm
//! of a removed device gone, each exactly once in the history.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use shouwang_hil_tests::rig::{self, eventually};
use shouwang_hil_tests::servers;
use shouwang_hil_tests::sim::SimDevice;

const ALARM: &str = "riverside:gw-r:smoke-B1-12-03:smoke-high";

async fn smoke_sim() -> SimDevice {
    let smoke = SimDevice::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    smoke.set_u16(0, 20); // 0.20 %/m: clean air
    smoke
}

/// A broker, a console, a smoke detector and gateway `gw-r` on its own data directory.
struct Site {
    _broker: servers::Server,
    console: rig::ConsoleProc,
    smoke: SimDevice,
    dir: Arc<tempfile::TempDir>,
    config: String,
    gateway: rig::Proc,
    http: reqwest::Client,
}

impl Site {
    async fn start() -> Site {
        let broker = servers::mosquitto().unwrap();
        let port = broker.port();
        let console = rig::start_console(port).unwrap();
        let smoke = smoke_sim().await;
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let config = rig::gateway_config("gw-r", port, smoke.local_addr(), None, "");
        let gateway = rig::start_gateway_in(dir.clone(), &config).unwrap();
        Site {
            _broker: broker,
            console,
            smoke,
            dir,
            config,
            gateway,
            http: servers::http_client(),
        }
    }
}

async fn get(http: &reqwest::Client, url: &str) -> Option<Value> {
    http.get(url).send().await.ok()?.json().await.ok()
}

/// The alarm's history at the console, oldest first, as `(transition, state)`.
async fn history(http: &reqwest::Client, console: &str) -> Option<Vec<(String, String)>> {
    let detail = get(http, &format!("{console}/api/alarms/{ALARM}")).await?;
    Some(
        detail["history"]
            .as_array()?
            .iter()
            .map(|e| {
                (
                    e["transition"].as_str().unwrap_or("?").to_string(),
                    e["state"].as_str().unwrap_or("?").to_string(),
                )
            })
            .collect(),
    )
}

/// Whether the board (alarms not normal) lists the alarm.
async fn on_board(http: &reqwest::Client, console: &str) -> Option<bool> {
    let alarms = get(http, &format!("{console}/api/alarms")).await?;
    Some(alarms.as_array()?.iter().any(|a| a["alarm_id"] == ALARM))
}

async fn wait_history(
    http: &reqwest::Client,
    console: &rig::ConsoleProc,
    gateway: &rig::Proc,
    what: &str,
    want: &[(&str, &str)],
) {
    let got = eventually(what, Duration::from_secs(20), || async {
        history(http, &console.url).await.filter(|h| {
            h.len() == want.len()
                && h.iter()
                    .zip(want)
                    .all(|((t, s), (wt, ws))| t == wt && s == ws)
        })
    })
    .await;
    if let Err(e) = got {
        panic!(
            "{e}: have {:?}\n--- gateway\n{}\n--- console\n{}",
            history(http, &console.url).await,
            gateway.log(),
            console.proc.log()
        );
    }
}

/// Wait until the console has reconciled a snapshot of the restarted gateway.
/// The snapshot ids in the lines of `log` that contain `marker`.
fn snapshot_ids(log: &str, marker: &str) -> std::collections::BTreeSet<String> {
    log.lines()
        .filter(|l| l.contains(marker))
        .filter_map(|l| l.split("snapshot_id=").nth(1)?.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Wait until the console has reconciled a snapshot the gateway made after `old` (the ids
/// of the snapshots its earlier runs made: [`snapshots_made`]), so a snapshot of the run
/// before a restart is never taken for one of the run after it.
async fn wait_snapshot(
    console: &rig::ConsoleProc,
    gateway: &rig::Proc,
    old: &std::collections::BTreeSet<String>,
) -> Duration {
    let since = Instant::now();
    eventually(
        "the console reconciled a snapshot of the gateway's current run",
        Duration::from_secs(20),
        || async {
            snapshot_ids(&console.proc.log(), "gateway snapshot reconciled")
                .iter()
                .any(|id| !old.contains(id))
                .then_some(())
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
    since.elapsed()
}

/// The ids of every snapshot the gateway (all its runs so far: their logs share a file)
/// has made.
fn snapshots_made(gateway: &rig::Proc) -> std::collections::BTreeSet<String> {
    snapshot_ids(&gateway.log(), "alarm snapshot")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_gateway_raises_no_alarm_twice_and_one_acknowledged_that_cleared_while_it_was_dead_leaves_the_board()
 {
    let Site {
        _broker,
        console,
        smoke,
        dir,
        config,
        mut gateway,
        http,
    } = Site::start().await;

    // Smoke; the operator acknowledges it.
    smoke.set_u16(0, 400);
    wait_history(
        &http,
        &console,
        &gateway,
        "raised",
        &[("raised", "unacknowledged")],
    )
    .await;
    let resp = http
        .post(format!("{}/api/alarms/{ALARM}/ack", console.url))
        .json(&serde_json::json!({"operator": "Wang Li"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let acked = [
        ("raised", "unacknowledged"),
        ("acknowledged", "acknowledged"),
    ];
    wait_history(&http, &console, &gateway, "acknowledged", &acked).await;
    wait_snapshot(&console, &gateway, &Default::default()).await;

    // Power cut while it still burns; back on the same disk.
    gateway.kill();
    let old = snapshots_made(&gateway);
    let mut gateway = rig::start_gateway_in(dir.clone(), &config).unwrap();
    let took = wait_snapshot(&console, &gateway, &old).await;
    println!("restart with the smoke still there: snapshot reconciled {took:?} after the start");
    // Room for a wrong second raise to show up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        history(&http, &console.url).await.unwrap(),
        acked.map(|(t, s)| (t.to_string(), s.to_string())),
        "the restart raised it again\n{}",
        gateway.log()
    );
    assert_eq!(on_board(&http, &console.url).await, Some(true));

    // Power cut; the smoke clears while the gateway is dead.
    gateway.kill();
    smoke.set_u16(0, 20);
    let started = Instant::now();
    let gateway = rig::start_gateway_in(dir.clone(), &config).unwrap();
    let mut all = acked.to_vec();
    all.push(("cleared", "normal"));
    wait_history(&http, &console, &gateway, "cleared after the restart", &all).await;
    println!(
        "acknowledged alarm cleared during a power cut: off the board {:?} after the start",
        started.elapsed()
    );
    assert_eq!(on_board(&http, &console.url).await, Some(false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_awaiting_acknowledgement_before_a_restart_is_acknowledged_after_it() {
    let Site {
        _broker,
        console,
        smoke,
        dir,
        config,
        mut gateway,
        http,
    } = Site::start().await;

    // Raised and cleared: it waits on the board for an acknowledgement.
    smoke.set_u16(0, 400);
    wait_history(
        &http,
        &console,
        &gateway,
        "raised",
        &[("raised", "unacknowledged")],
    )
    .await;
    smoke.set_u16(0, 20);
    let returned = [
        ("raised", "unacknowledged"),
        ("cleared", "returned_unacknowledged"),
    ];
    wait_history(&http, &console, &gateway, "returned", &returned).await;

    gateway.kill();
    let old = snapshots_made(&gateway);
    let gateway = rig::start_gateway_in(dir.clone(), &config).unwrap();
    wait_snapshot(&console, &gateway, &old).await;
    assert_eq!(
        on_board(&http, &console.url).await,
        Some(true),
        "it must wait for the operator"
    );
    let resp = http
        .post(format!("{}/api/alarms/{ALARM}/ack", console.url))
        .json(&serde_json::json!({"operator": "Wang Li"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let mut all = returned.to_vec();
    all.push(("acknowledged", "normal"));
    wait_history(
        &http,
        &console,
        &gateway,
        "acknowledged after the restart",
        &all,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alarm_of_a_device_removed_from_the_config_leaves_the_board_after_the_restart() {
    let Site {
        _broker,
        console,
        smoke,
        dir,
        config,
        mut gateway,
        http,
    } = Site::start().await;

    smoke.set_u16(0, 400);
    wait_history(
        &http,
        &console,
        &gateway,
        "raised",
        &[("raised", "unacknowledged")],
    )
    .await;

    // The detector is replaced by one with another id: the old one's alarm has no source.
    gateway.kill();
    let moved = config.replace("smoke-B1-12-03", "smoke-B1-12-04");
    let gateway = rig::start_gateway_in(dir.clone(), &moved).unwrap();
    let removed = [("raised", "unacknowledged"), ("cleared", "normal")];
    wait_history(&http, &console, &gateway, "removed", &removed).await;
    assert_eq!(on_board(&http, &console.url).await, Some(false));
    let detail = get(&http, &format!("{}/api/alarms/{ALARM}", console.url))
        .await
        .unwrap();
    let message = detail["history"][1]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.contains("removed from the gateway's configuration"),
        "{message}"
    );
    // The new detector's alarm is raised as its own.
    let new_alarm = "riverside:gw-r:smoke-B1-12-04:smoke-high";
    eventually(
        "the new detector's alarm",
        Duration::from_secs(10),
        || async {
            get(&http, &format!("{}/api/alarms/{new_alarm}", console.url))
                .await
                .filter(|d| d["history"].as_array().is_some_and(|h| !h.is_empty()))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", gateway.log()));
}
