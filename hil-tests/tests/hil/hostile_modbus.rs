//! A hostile Modbus TCP peer costs only its own device: the `shouwang-gateway` binary polls
//! two devices every 100 ms, a good [`SimDevice`] and [`HostilePeer`], a hand-written Modbus
//! TCP server (MBAP framed by hand, FC03 only) whose behaviour the test switches after a
//! baseline: late replies (tokio-modbus#324), garbage, truncated frames, wrong transaction or
//! unit ids, an absurd length field, closing mid-frame, silence, and a well-formed answer
//! that is too short.
//!
//! For each behaviour the test checks, through a real mosquitto:
//! - the good device's readings per second with the peer hostile stay within
//!   [`RATE_MARGIN`] of the rate measured in the same run while the peer was honest;
//! - the gateway process is still running;
//! - the hostile device ends with `comm_lost` (a link that fails) or `point_fault` (a frame
//!   that is well formed but useless), and no reading of it ever carries a value the peer did
//!   not send as an in-time, correctly addressed answer to that point's register. The peer
//!   gives every answer a value of its own (a counter), so a reading that came from a late,
//!   stale, misaddressed or garbled frame is recognised.
//!
//! The table cases run concurrently in one test (one broker, a gateway each), so the module
//! costs about one case's wall time even on a two-core machine.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shouwang_hil_tests::rig::{self, Listener};
use shouwang_hil_tests::servers;
use shouwang_hil_tests::sim::SimDevice;
use shouwang_wire::{AlarmEvent, Message, ReadingBatch, TransitionKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Both devices are polled this often.
const POLL_INTERVAL_MS: u64 = 100;
/// The gateway's per-request timeout for both devices.
const TIMEOUT_MS: u64 = 300;
/// How long a late reply waits: well past [`TIMEOUT_MS`].
const LATE_MS: u64 = 500;
/// The hostile device's two points: far enough apart (over `max_gap_registers`, 8) to be
/// two blocks, so a poll sends two requests on one connection.
const REGISTERS: [(&str, u16); 2] = [("a", 0), ("b", 100)];
/// How long each rate is measured.
const WINDOW: Duration = Duration::from_secs(3);
/// The good device's rate with the peer hostile must be at least this share of its rate
/// with the peer honest.
const RATE_MARGIN: f64 = 0.8;
/// The first value the peer answers with; every answer gets the next one.
const FIRST_VALUE: u16 = 1000;

/// What the peer does with a request (FC03) once it is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    /// A correct answer at once.
    Honest,
    /// On odd connections the third request, on even ones the second (counted from the
    /// switch to this behaviour on a connection already open), is answered after
    /// [`LATE_MS`] (after the gateway gave up on it); every other request at once. So a late
    /// reply is due both between the two blocks of one poll and between two polls.
    Late,
    /// 32 bytes of noise instead of a frame.
    Garbage,
    /// The first 5 bytes of a correct answer, then nothing.
    TruncatedThenSilence,
    /// A correct answer under the next transaction id.
    WrongTransactionId,
    /// A correct answer from unit id + 1.
    WrongUnitId,
    /// A correct answer whose MBAP length field says 65535.
    AbsurdLength,
    /// The first 9 bytes of a correct answer, then the connection closes.
    CloseMidFrame,
    /// Reads requests, never answers.
    Silence,
    /// A well-formed answer carrying no registers (byte count 0).
    ShortAnswer,
}

/// The peer's shared state: its behaviour and what it sent.
struct PeerState {
    behaviour: Mutex<Behaviour>,
    /// Connections accepted so far.
    connections: AtomicU32,
    /// Answers given so far (each takes the next value).
    answers: AtomicU64,
    /// (register, value) of every answer sent in time, correctly framed and addressed: the
    /// only values the hostile device's readings may carry.
    honest: Mutex<BTreeSet<(u16, u16)>>,
    /// Values sent in a frame the gateway must not use (late, misaddressed, cut, bad length).
    tainted: Mutex<BTreeSet<u16>>,
}

/// A hand-written Modbus TCP server whose behaviour a test chooses.
struct HostilePeer {
    state: Arc<PeerState>,
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HostilePeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HostilePeer {
    async fn start() -> HostilePeer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(PeerState {
            behaviour: Mutex::new(Behaviour::Honest),
            connections: AtomicU32::new(0),
            answers: AtomicU64::new(0),
            honest: Mutex::new(BTreeSet::new()),
            tainted: Mutex::new(BTreeSet::new()),
        });
        let shared = state.clone();
        let task = tokio::spawn(async move {
            let mut connections = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                let n = shared.connections.fetch_add(1, Ordering::SeqCst) + 1;
                let state = shared.clone();
                connections.push(AbortOnDrop(tokio::spawn(async move {
                    let _ = serve(stream, n, state).await;
                })));
            }
        });
        HostilePeer { state, addr, task }
    }

    fn set(&self, behaviour: Behaviour) {
        *self.state.behaviour.lock().unwrap() = behaviour;
    }

    fn honest(&self) -> BTreeSet<(u16, u16)> {
        self.state.honest.lock().unwrap().clone()
    }

    fn tainted(&self) -> BTreeSet<u16> {
        self.state.tainted.lock().unwrap().clone()
    }
}

/// Aborts a connection's task when the accept loop ends (the peer is dropped).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One connection: read MBAP frames, answer each as the behaviour says.
async fn serve(
    mut stream: TcpStream,
    connection: u32,
    state: Arc<PeerState>,
) -> std::io::Result<()> {
    let mut request_on_connection = 0u32;
    let mut seen = Behaviour::Honest;
    let mut noise = 0x9E37_79B9_7F4A_7C15u64 ^ u64::from(connection);
    loop {
        let mut header = [0u8; 7];
        stream.read_exact(&mut header).await?;
        let tid = u16::from_be_bytes([header[0], header[1]]);
        let length = usize::from(u16::from_be_bytes([header[4], header[5]]));
        let unit = header[6];
        if !(2..=254).contains(&length) {
            return Ok(()); // not a request we can frame: reset the link
        }
        let mut pdu = vec![0u8; length - 1];
        stream.read_exact(&mut pdu).await?;
        request_on_connection += 1;
        if pdu.len() != 5 || pdu[0] != 3 {
            continue; // only FC03 is spoken here; anything else is not answered
        }
        let start = u16::from_be_bytes([pdu[1], pdu[2]]);
        let quantity = u16::from_be_bytes([pdu[3], pdu[4]]).clamp(1, 125);
        let behaviour = *state.behaviour.lock().unwrap();
        // Count requests on this connection from when it last saw the behaviour change, so
        // a connection opened while the peer was honest plays the script too.
        if behaviour != seen {
            seen = behaviour;
            request_on_connection = 1;
        }
        if behaviour == Behaviour::Silence {
            continue;
        }
        let n = state.answers.fetch_add(1, Ordering::SeqCst);
        let value = FIRST_VALUE.wrapping_add(n as u16);
        let frame = |tid: u16, unit: u8, length: Option<u16>, registers: u16| {
            let byte_count = 2 * registers;
            let mut out = Vec::new();
            out.extend_from_slice(&tid.to_be_bytes());
            out.extend_from_slice(&0u16.to_be_bytes());
            out.extend_from_slice(&length.unwrap_or(3 + byte_count).to_be_bytes());
            out.push(unit);
            out.push(3);
            out.push(byte_count as u8);
            for _ in 0..registers {
                out.extend_from_slice(&value.to_be_bytes());
            }
            out
        };
        let taint = || {
            state.tainted.lock().unwrap().insert(value);
        };
        match behaviour {
            Behaviour::Honest => {
                state.honest.lock().unwrap().insert((start, value));
                stream.write_all(&frame(tid, unit, None, quantity)).await?;
            }
            Behaviour::Late => {
                let late_at = if connection % 2 == 1 { 3 } else { 2 };
                if request_on_connection == late_at {
                    taint();
                    tokio::time::sleep(Duration::from_millis(LATE_MS)).await;
                } else {
                    state.honest.lock().unwrap().insert((start, value));
                }
                stream.write_all(&frame(tid, unit, None, quantity)).await?;
            }
            Behaviour::Garbage => {
                let mut bytes = [0u8; 32];
                for b in &mut bytes {
                    // xorshift64: the same noise on every run.
                    noise ^= noise << 13;
                    noise ^= noise >> 7;
                    noise ^= noise << 17;
                    *b = noise as u8;
                }
                stream.write_all(&bytes).await?;
            }
            Behaviour::TruncatedThenSilence => {
                taint();
                stream
                    .write_all(&frame(tid, unit, None, quantity)[..5])
                    .await?;
            }
            Behaviour::WrongTransactionId => {
                taint();
                let wrong = tid.wrapping_add(1);
                stream
                    .write_all(&frame(wrong, unit, None, quantity))
                    .await?;
            }
            Behaviour::WrongUnitId => {
                taint();
                let wrong = unit.wrapping_add(1);
                stream.write_all(&frame(tid, wrong, None, quantity)).await?;
            }
            Behaviour::AbsurdLength => {
                taint();
                stream
                    .write_all(&frame(tid, unit, Some(u16::MAX), quantity))
                    .await?;
            }
            Behaviour::CloseMidFrame => {
                taint();
                stream
                    .write_all(&frame(tid, unit, None, quantity)[..9])
                    .await?;
                return Ok(());
            }
            Behaviour::ShortAnswer => {
                taint();
                stream.write_all(&frame(tid, unit, None, 0)).await?;
            }
            Behaviour::Silence => {}
        }
    }
}

/// A gateway polling the good device and the hostile one, both every 100 ms.
fn config(gateway: &str, mqtt_port: u16, good: SocketAddr, hostile: SocketAddr) -> String {
    let mut text = format!(
        r#"
[gateway]
id = "{gateway}"
community = "riverside"
data_dir = "data"

[mqtt]
port = {mqtt_port}
keep_alive_s = 2

[[devices]]
id = "good-1"
kind = "smoke"
building = "B1"
floor = "01"
unit = "01"
transport = "tcp"
address = "{good}"
poll_interval_ms = {POLL_INTERVAL_MS}
timeout_ms = {TIMEOUT_MS}
# Every poll reported: these tests count readings to see polls.
report_every_s = 0
comm_loss_after_s = 1

[[devices.points]]
name = "a"
register = 0
type = "u16"

[[devices]]
id = "hostile-1"
kind = "smoke"
building = "B1"
floor = "01"
unit = "02"
transport = "tcp"
address = "{hostile}"
poll_interval_ms = {POLL_INTERVAL_MS}
timeout_ms = {TIMEOUT_MS}
# Every poll reported: these tests count readings to see polls.
report_every_s = 0
comm_loss_after_s = 1
"#
    );
    for (name, register) in REGISTERS {
        text.push_str(&format!(
            "\n[[devices.points]]\nname = \"{name}\"\nregister = {register}\ntype = \"u16\"\n"
        ));
    }
    text
}

fn reading(h: &rig::Heard, device: &str) -> Option<ReadingBatch> {
    if !h.topic.ends_with("/readings") {
        return None;
    }
    ReadingBatch::decode(&h.payload)
        .ok()
        .filter(|r| r.device == device)
}

fn raised(h: &rig::Heard) -> Option<AlarmEvent> {
    if !h.topic.ends_with("/events") {
        return None;
    }
    AlarmEvent::decode(&h.payload)
        .ok()
        .filter(|e| e.transition == TransitionKind::Raised)
}

/// Readings of `device` per second whose poll completed in `[from_ms, from_ms + WINDOW)`.
fn rate(listener: &Listener, device: &str, from_ms: i64) -> f64 {
    let to_ms = from_ms + WINDOW.as_millis() as i64;
    let n = listener
        .heard()
        .iter()
        .filter_map(|h| reading(h, device))
        .filter(|r| (from_ms..to_ms).contains(&r.ts_ms))
        .count();
    n as f64 / WINDOW.as_secs_f64()
}

/// What one case measured.
struct Outcome {
    behaviour: Behaviour,
    honest_rate: f64,
    hostile_rate: f64,
    served_honest: f64,
    served_hostile: f64,
    hostile_readings: usize,
    /// Answers the gateway must not use that the peer sent (late, cut, misaddressed).
    tainted_answers: usize,
    problems: Vec<String>,
}

/// Run one gateway against a good device and a peer that turns `behaviour` after a
/// baseline; wait for `alarm` (`comm_lost` or `point_fault`) of the hostile device, if any.
async fn run_case(broker_port: u16, behaviour: Behaviour, alarm: Option<&str>) -> Outcome {
    let gw = format!("gw-h{}", behaviour as u8);
    let listener = Listener::start(broker_port, &format!("shouwang/v1/+/{gw}/#"))
        .await
        .unwrap();
    let good = SimDevice::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    good.set_u16(0, 7);
    let peer = HostilePeer::start().await;
    let mut gateway =
        rig::start_gateway(&config(&gw, broker_port, good.local_addr(), peer.addr)).unwrap();
    let mut problems = Vec::new();

    // Warm up: both devices heard.
    for device in ["good-1", "hostile-1"] {
        if let Err(e) = listener
            .wait_for(device, Duration::from_secs(20), |h| reading(h, device))
            .await
        {
            panic!("{behaviour:?}: {e}\n{}", gateway.log());
        }
    }

    // Baseline with the peer honest, then the same with it hostile.
    let baseline_from = rig::wall_ms();
    let served_before = good.requests_served();
    tokio::time::sleep(WINDOW).await;
    let served_honest = (good.requests_served() - served_before) as f64 / WINDOW.as_secs_f64();
    peer.set(behaviour);
    let switched_at = std::time::Instant::now();
    // Let the hostile device fail its way into its end state first.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let hostile_from = rig::wall_ms();
    let served_before = good.requests_served();
    tokio::time::sleep(WINDOW).await;
    let served_hostile = (good.requests_served() - served_before) as f64 / WINDOW.as_secs_f64();
    // Readings are published after their poll: give the last ones time to arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let honest_rate = rate(&listener, "good-1", baseline_from);
    let hostile_rate = rate(&listener, "good-1", hostile_from);

    if !gateway.running() {
        problems.push(format!("the gateway exited:\n{}", gateway.log()));
    }
    if hostile_rate < RATE_MARGIN * honest_rate || honest_rate == 0.0 {
        problems.push(format!(
            "the good device's rate fell from {honest_rate:.1}/s to {hostile_rate:.1}/s"
        ));
    }

    // The hostile device's end state.
    let alarm_of = |rule: &str| format!("riverside:{gw}:hostile-1:{rule}");
    if let Some(rule) = alarm {
        let want = alarm_of(rule);
        let got = listener
            .wait_for(&want, Duration::from_secs(5), |h| {
                raised(h).filter(|e| e.alarm_id == want)
            })
            .await;
        if got.is_err() {
            problems.push(format!("{want} was not raised"));
        }
    }
    let heard = listener.heard();
    for other in ["comm_lost", "point_fault"] {
        if Some(other) == alarm {
            continue;
        }
        let id = alarm_of(other);
        if heard
            .iter()
            .filter(|h| h.at >= switched_at)
            .filter_map(raised)
            .any(|e| e.alarm_id == id)
        {
            problems.push(format!("{id} was raised too"));
        }
    }
    if heard
        .iter()
        .filter_map(raised)
        .any(|e| e.alarm_id == format!("riverside:{gw}:good-1:comm_lost"))
    {
        problems.push("the good device was reported comm_lost".into());
    }

    // Never a wrong value: every reading of the hostile device is an in-time answer to its
    // own register, and the values of each point only grow (an old answer would go back).
    let honest = peer.honest();
    let tainted = peer.tainted();
    let readings: Vec<ReadingBatch> = heard
        .iter()
        .filter_map(|h| reading(h, "hostile-1"))
        .collect();
    for (name, register) in REGISTERS {
        let mut last = None;
        for batch in &readings {
            // A point without a good value (its block refused) says nothing wrong.
            let Some(value) = batch
                .points
                .iter()
                .find(|p| p.point == name)
                .and_then(|p| p.good_value())
            else {
                continue;
            };
            let v = value as u16;
            if f64::from(v) != value || !honest.contains(&(register, v)) {
                let why = if tainted.contains(&v) {
                    "a frame it must not use (late, misaddressed or broken)"
                } else {
                    "no answer to this register"
                };
                problems.push(format!(
                    "hostile-1 point {name} (register {register}) read {value} from {why}"
                ));
            }
            if last.is_some_and(|l| l >= value) {
                problems.push(format!(
                    "hostile-1 point {name} went from {last:?} to {value} (an old answer)"
                ));
            }
            last = Some(value);
        }
    }
    // A link that fails publishes no value of its device once it has failed (its points may
    // be published as bad or comm-lost, with no value).
    let after_failure = readings
        .iter()
        .filter(|r| r.ts_ms >= hostile_from && r.points.iter().any(|p| p.good_value().is_some()))
        .count();
    if behaviour != Behaviour::Late && after_failure > 0 {
        problems.push(format!(
            "{after_failure} readings of hostile-1 while it was {behaviour:?}"
        ));
    }
    if behaviour == Behaviour::Late && after_failure == 0 {
        problems.push("hostile-1 was never read in time while it answered late".into());
    }
    if behaviour == Behaviour::Late && tainted.len() < 3 {
        problems.push(format!(
            "only {} late replies were sent: the hazard was not played",
            tainted.len()
        ));
    }
    if !problems.is_empty() {
        problems.push(format!("--- gateway log\n{}", gateway.log()));
    }
    if !gateway.running() {
        gateway.kill();
    }
    Outcome {
        behaviour,
        honest_rate,
        hostile_rate,
        served_honest,
        served_hostile,
        hostile_readings: after_failure,
        tainted_answers: tainted.len(),
        problems,
    }
}

fn report(outcome: &Outcome) {
    println!(
        "hostile peer {:?}: good device readings/s with the peer honest {:.1}, hostile {:.1} \
         (requests served/s {:.1} -> {:.1}); hostile device readings while hostile {}, \
         answers it sent that must not be used {}",
        outcome.behaviour,
        outcome.honest_rate,
        outcome.hostile_rate,
        outcome.served_honest,
        outcome.served_hostile,
        outcome.hostile_readings,
        outcome.tainted_answers
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_reply_never_becomes_the_answer_to_a_later_request() {
    let broker = servers::mosquitto().unwrap();
    let outcome = run_case(broker.port(), Behaviour::Late, None).await;
    report(&outcome);
    assert!(
        outcome.problems.is_empty(),
        "{}",
        outcome.problems.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_peer_costs_only_its_own_device_and_never_gives_a_wrong_value() {
    let broker = servers::mosquitto().unwrap();
    let port = broker.port();
    let cases = [
        (Behaviour::Garbage, "comm_lost"),
        (Behaviour::TruncatedThenSilence, "comm_lost"),
        (Behaviour::WrongTransactionId, "comm_lost"),
        (Behaviour::WrongUnitId, "comm_lost"),
        (Behaviour::AbsurdLength, "comm_lost"),
        (Behaviour::CloseMidFrame, "comm_lost"),
        (Behaviour::Silence, "comm_lost"),
        (Behaviour::ShortAnswer, "point_fault"),
    ];
    let runs = cases.map(|(behaviour, alarm)| {
        tokio::spawn(async move { run_case(port, behaviour, Some(alarm)).await })
    });
    let mut failures = Vec::new();
    for run in runs {
        let outcome = run.await.unwrap();
        report(&outcome);
        if !outcome.problems.is_empty() {
            failures.push(format!(
                "== {:?}\n{}",
                outcome.behaviour,
                outcome.problems.join("\n")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
