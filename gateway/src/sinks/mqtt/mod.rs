//! The gateway's link to the MQTT broker.
//!
//! `drive` is the one loop that polls rumqttc's event loop: it reconnects forever (1 s
//! apart), subscribes to the gateway's command topic and announces the gateway `online`
//! (retained) on every connection, and hands decoded commands and connection news to the
//! runtime loop. The broker publishes the retained `offline` last will when the gateway
//! disappears without a clean disconnect.
//!
//! Alarm events do not pass here: the [`Journal`] keeps them on disk and publishes them
//! until the console confirms them (receipts come in here and go straight to it).
//! [`Outbox`] sends the rest: command replies (never dropped: a full lane makes the caller
//! wait) and readings (dropped when full, and counted). Replies go first.

pub mod auth;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet, QoS, SubscribeFilter};
use shouwang_wire::{
    Channel, Command, CommandReply, GatewayState, GatewayStatus, Message, ReadingBatch, Receipt,
    Snapshot, topic,
};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::now_ms;
use crate::sinks::journal::Journal;
use crate::supervise::{Heartbeat, OnStall, Supervisor};

/// How many requests rumqttc buffers between us and its event loop.
const CLIENT_CAPACITY: usize = 256;
/// The largest packet the gateway reads. rumqttc drops the connection on a bigger one, so
/// this is set explicitly, well above anything the console sends (commands are a few
/// hundred bytes) and above the broker's documented `max_packet_size`
/// ([`shouwang_wire::MAX_PUBLISH_BYTES`], docs/mosquitto/), which is what keeps a bigger
/// one from reaching us at all. Whatever gets through and does not decode is counted and
/// ignored.
pub const MAX_INCOMING_BYTES: usize = 4 * shouwang_wire::MAX_PUBLISH_BYTES;
/// Command replies waiting to be handed to rumqttc. When full, the runtime loop waits.
const REPLY_LANE: usize = 256;
/// Reading batches waiting to be handed to rumqttc. When full, new batches are dropped.
const READING_LANE: usize = 256;
/// The largest payload the gateway publishes: the packet limit less room for the fixed
/// header and the topic.
pub const PAYLOAD_MAX: usize = shouwang_wire::MAX_PUBLISH_BYTES - 1024;

/// What the broker link tells the runtime loop. `drive` never waits on this channel (it
/// is the loop that drains rumqttc's request channel, and the runtime loop may be waiting
/// on that): commands go on a bounded channel with `try_send`, and a full one gets a "busy"
/// reply. Receipts go straight to the [`Journal`], whose channel never waits; connections
/// are counted in [`LinkState::connections`].
pub struct LinkNews {
    /// Decoded commands from the console.
    pub commands: mpsc::Receiver<Command>,
}

/// Commands waiting for the runtime loop.
const COMMAND_QUEUE: usize = 64;

/// Topic names of this gateway.
#[derive(Debug, Clone)]
pub struct Topics {
    pub status: String,
    pub readings: String,
    pub events: String,
    pub commands: String,
    pub replies: String,
    pub receipts: String,
    pub snapshot: String,
}

impl Topics {
    pub fn new(config: &Config) -> Topics {
        let t = |c| topic(&config.gateway.community, &config.gateway.id, c);
        Topics {
            status: t(Channel::Status),
            readings: t(Channel::Readings),
            events: t(Channel::Events),
            commands: t(Channel::Commands),
            replies: t(Channel::Replies),
            receipts: t(Channel::Receipts),
            snapshot: t(Channel::Snapshot),
        }
    }
}

fn status(config: &Config, state: GatewayState, ts_ms: i64) -> Vec<u8> {
    GatewayStatus {
        schema: GatewayStatus::SCHEMA,
        gateway: config.gateway.id.clone(),
        community: config.gateway.community.clone(),
        state,
        ts_ms,
        version: env!("CARGO_PKG_VERSION").to_string(),
    }
    .encode()
}

/// The rumqttc client and event loop for a config, with the `offline` last will set.
pub fn client(config: &Config) -> (AsyncClient, EventLoop) {
    let topics = Topics::new(config);
    let id = config
        .mqtt
        .client_id
        .clone()
        .unwrap_or_else(|| format!("shouwang-gateway-{}", config.gateway.id));
    let mut options = MqttOptions::new(id, config.mqtt.host.clone(), config.mqtt.port);
    config.mqtt.auth.apply(&mut options); // account and TLS, loaded with the config (mqtt_auth.rs)
    options.set_keep_alive(Duration::from_secs(config.mqtt.keep_alive_s));
    // Outgoing: every message is built to fit (events by the config's limits, readings by
    // splitting), and rumqttc refuses a bigger one instead of sending it.
    options.set_max_packet_size(MAX_INCOMING_BYTES, shouwang_wire::MAX_PUBLISH_BYTES);
    // A clean session. The durable journal, not the broker's session, keeps every alarm
    // until the console confirms it, and resends on every connection; a persistent session
    // would only make the broker hand back, on every reconnect, a message that broke the
    // link (a poison message), and rumqttc drops its own resend queue anyway when the
    // broker forgot the session. Commands sent while the gateway is away are lost: they
    // expire, and the console shows a command without an answer.
    options.set_clean_session(true);
    options.set_last_will(LastWill::new(
        topics.status,
        status(config, GatewayState::Offline, now_ms()),
        QoS::AtLeastOnce,
        true,
    ));
    shouwang_broker_auth::connect_without_delay(options, CLIENT_CAPACITY)
}

/// Whether the broker link is up, for logs and tests.
#[derive(Debug)]
pub struct LinkState {
    pub connected: AtomicBool,
    /// Connections made so far; each new one makes the journal send its pending events
    /// again.
    pub connections: AtomicU64,
    /// Set once the gateway said goodbye: the link closing is then expected.
    pub stopping: AtomicBool,
    pub bad_commands: AtomicU64,
    /// Receipts that did not decode, named another gateway, or named too many events.
    pub bad_receipts: AtomicU64,
    /// The console's clock minus ours, in ms, from the last receipt (within the network's
    /// latency); [`CLOCK_UNKNOWN`] until one came.
    pub clock_offset_ms: std::sync::atomic::AtomicI64,
    pub readings_dropped: AtomicU64,
}

/// [`LinkState::clock_offset_ms`] before any receipt told us the console's time.
pub const CLOCK_UNKNOWN: i64 = i64::MIN;

impl Default for LinkState {
    fn default() -> Self {
        LinkState {
            connected: AtomicBool::new(false),
            connections: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            bad_commands: AtomicU64::new(0),
            bad_receipts: AtomicU64::new(0),
            clock_offset_ms: std::sync::atomic::AtomicI64::new(CLOCK_UNKNOWN),
            readings_dropped: AtomicU64::new(0),
        }
    }
}

impl LinkState {
    /// The console's clock minus ours, once known.
    pub fn clock_offset(&self) -> Option<i64> {
        let offset = self.clock_offset_ms.load(Ordering::Relaxed);
        (offset != CLOCK_UNKNOWN).then_some(offset)
    }
}

/// How long `drive` may go without a turn before its supervisor aborts and restarts it:
/// rumqttc wakes it at least once per keep-alive (a ping), and a connect attempt takes at
/// most its 5 s timeout plus our 1 s pause.
pub fn stall_after(config: &Config) -> Duration {
    Duration::from_secs(config.mqtt.keep_alive_s)
        .saturating_mul(3)
        .saturating_add(Duration::from_secs(10))
}

/// Start `drive` under `supervisor` (task [`crate::supervise::MQTT_TASK`]); returns
/// what it will report, and the keeper's handle. The event loop outlives each run of the
/// driver, so the clients handed out stay valid; a restarted driver cleans it first, which
/// drops the connection and starts a new one.
pub fn spawn_drive(
    events: EventLoop,
    client: AsyncClient,
    config: Arc<Config>,
    state: Arc<LinkState>,
    journal: Journal,
    supervisor: &Supervisor,
) -> (LinkNews, tokio::task::JoinHandle<()>) {
    let (commands_tx, commands) = mpsc::channel(COMMAND_QUEUE);
    let events = Arc::new(tokio::sync::Mutex::new(events));
    let mut first_run = true;
    let task = supervisor.spawn(
        crate::supervise::MQTT_TASK,
        stall_after(&config),
        OnStall::Restart,
        move |heartbeat| {
            let restarted = !std::mem::replace(&mut first_run, false);
            let (events, client, config) = (events.clone(), client.clone(), config.clone());
            let (commands, journal, state) = (commands_tx.clone(), journal.clone(), state.clone());
            async move {
                // The previous run is gone (the supervisor waits for it), so is its lock.
                let mut events = events.lock_owned().await;
                if restarted {
                    events.clean();
                    state.connected.store(false, Ordering::Relaxed);
                }
                drive(
                    &mut events,
                    client,
                    config,
                    commands,
                    journal,
                    state,
                    heartbeat,
                )
                .await;
            }
        },
    );
    (LinkNews { commands }, task)
}

/// Poll the event loop forever, beating `heartbeat` every turn.
async fn drive(
    events: &mut EventLoop,
    client: AsyncClient,
    config: Arc<Config>,
    commands: mpsc::Sender<Command>,
    journal: Journal,
    state: Arc<LinkState>,
    heartbeat: Heartbeat,
) {
    let topics = Topics::new(&config);
    // Owed to the broker after a connection: retried on every turn of the loop until
    // rumqttc's request channel has room (try_*: this loop must never wait on the channel
    // it drains).
    let mut owe_subscribe = false;
    let mut owe_online = false;
    let mut bad_log = QuietLog::default();
    loop {
        heartbeat.beat();
        if owe_subscribe {
            owe_subscribe = client
                .try_subscribe_many([
                    SubscribeFilter::new(topics.commands.clone(), QoS::AtLeastOnce),
                    SubscribeFilter::new(topics.receipts.clone(), QoS::AtLeastOnce),
                ])
                .is_err();
        }
        if owe_online {
            let online = status(&config, GatewayState::Online, now_ms());
            owe_online = client
                .try_publish(topics.status.clone(), QoS::AtLeastOnce, true, online)
                .is_err();
        }
        match events.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                tracing::info!(
                    host = %config.mqtt.host,
                    port = config.mqtt.port,
                    session_present = ack.session_present,
                    "connected to the broker"
                );
                state.connected.store(true, Ordering::Relaxed);
                owe_subscribe = true;
                owe_online = true;
                state.connections.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Event::Incoming(Packet::Publish(p))) if p.topic == topics.receipts => {
                match Receipt::decode(&p.payload) {
                    Ok(r)
                        if r.gateway == config.gateway.id
                            && r.events.len() <= Receipt::MAX_EVENTS =>
                    {
                        state
                            .clock_offset_ms
                            .store(r.ts_ms.saturating_sub(now_ms()), Ordering::Relaxed);
                        journal.receipt(r.events);
                    }
                    Ok(_) | Err(_) => {
                        let total = state.bad_receipts.fetch_add(1, Ordering::Relaxed) + 1;
                        if bad_log.due() {
                            tracing::warn!(bytes = p.payload.len(), total, "ignored a bad receipt");
                        }
                    }
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if p.topic != topics.commands {
                    continue;
                }
                // Refuse a command with a reply, without waiting (this loop drains the
                // channel that a waiting publish would need).
                let refuse = |command_id: String, why: String| {
                    let reply = CommandReply {
                        schema: CommandReply::SCHEMA,
                        command_id,
                        gateway: config.gateway.id.clone(),
                        ok: false,
                        error: Some(why),
                        ts_ms: now_ms(),
                    };
                    let _ = client.try_publish(
                        topics.replies.clone(),
                        QoS::AtLeastOnce,
                        false,
                        reply.encode(),
                    );
                };
                let decoded = Command::decode(&p.payload).map_err(|e| e.to_string());
                let decoded = decoded.and_then(|cmd| match cmd.oversized_field() {
                    // Too long to echo back: nobody to answer.
                    Some(("command_id", len)) => {
                        Err(format!("its command_id is {len} characters long"))
                    }
                    Some((field, len)) => {
                        refuse(
                            cmd.command_id,
                            format!("refused: {field} is {len} characters long, more than a command may carry"),
                        );
                        Err(format!("its {field} is {len} characters long"))
                    }
                    None => match cmd.expired_by_ms(now_ms(), state.clock_offset()) {
                        Some(late) => {
                            refuse(
                                cmd.command_id,
                                format!("refused: the command expired {late} ms before it arrived; look at the alarm again"),
                            );
                            Err(format!("it expired {late} ms before it arrived"))
                        }
                        None => Ok(cmd),
                    },
                });
                match decoded {
                    Ok(cmd) => match commands.try_send(cmd) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(cmd)) => {
                            tracing::warn!(command_id = %cmd.command_id, "too many commands waiting; refused one");
                            refuse(cmd.command_id, "the gateway is busy; try again".into());
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => return,
                    },
                    Err(e) => {
                        let total = state.bad_commands.fetch_add(1, Ordering::Relaxed) + 1;
                        // A hostile client can send thousands a second: one line per
                        // 10 s, with the count, so the log does not drown.
                        if bad_log.due() {
                            tracing::warn!(topic = %p.topic, bytes = p.payload.len(), error = %e, total, "ignored a bad command");
                        }
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                if state.stopping.load(Ordering::Relaxed) {
                    return;
                }
                if state.connected.swap(false, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "lost the broker; reconnecting every second");
                } else {
                    tracing::debug!(error = %e, "broker still unreachable");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Logs at most once per period, for messages a peer can make us repeat at any rate.
#[derive(Default)]
struct QuietLog {
    last: Option<std::time::Instant>,
}

impl QuietLog {
    const PERIOD: Duration = Duration::from_secs(10);

    fn due(&mut self) -> bool {
        let due = self.last.is_none_or(|t| t.elapsed() >= Self::PERIOD);
        if due {
            self.last = Some(std::time::Instant::now());
        }
        due
    }
}

/// What the replies lane carries: answers to the console.
enum Answer {
    Reply(CommandReply),
    Snapshot(Vec<Snapshot>),
}

/// One publish: topic, QoS, payload.
type Publish = (String, QoS, Vec<u8>);

/// The sending side of the two lanes that are not the alarm journal: answers to the
/// console, command replies and snapshots (never dropped: a full lane makes the caller
/// wait; they are few, one per command or resync) and readings (dropped when full, and
/// counted). Answers go first.
///
/// The task that drains the lanes runs under the [`Supervisor`] (task
/// [`crate::supervise::OUTBOX_TASK`]) and may die and be restarted; the lanes and what it
/// had in hand live outside it (`Lanes`), so these handles stay valid across restarts.
#[derive(Clone)]
pub struct Outbox {
    replies: mpsc::Sender<Answer>,
    readings: mpsc::Sender<ReadingBatch>,
    state: Arc<LinkState>,
    /// Set when an answer was given up (see [`Lanes::carried`]); the runtime loop then owes
    /// the console a new snapshot.
    answer_lost: Arc<AtomicBool>,
    #[cfg(test)]
    panics_left: Arc<std::sync::atomic::AtomicU32>,
}

/// What the outbox task works from, kept outside it so a restarted run takes up where the
/// dead one stopped. Each run holds the lock for as long as it lives (the supervisor
/// starts the next run only after the last one is gone).
struct Lanes {
    replies: mpsc::Receiver<Answer>,
    readings: mpsc::Receiver<ReadingBatch>,
    /// The publishes of the answer being sent that rumqttc has not taken yet, oldest
    /// first. One leaves only once `AsyncClient::publish` took it, with no `.await` in
    /// between, so a run that dies (panic, abort) leaves exactly the untaken ones here,
    /// and the next run sends them first: nothing lost, nothing sent twice.
    in_hand: std::collections::VecDeque<Publish>,
    /// The run that started had answers in hand left by the run before. If it dies too
    /// before sending them, they are dropped (the one thing both runs had in common may be
    /// what kills them): logged, the command expires at the console, and
    /// `Outbox::answer_lost` makes the runtime loop send a new snapshot.
    carried: bool,
    /// Tests: runs left to kill, each just before it hands an answer to rumqttc.
    #[cfg(test)]
    panics_left: Arc<std::sync::atomic::AtomicU32>,
}

impl Outbox {
    /// Start the outbox task under `supervisor` (task
    /// [`crate::supervise::OUTBOX_TASK`]); returns the handle to send through and the
    /// keeper's handle.
    ///
    /// Not watched for stalls: it waits on its lanes when there is nothing to send, and on
    /// rumqttc's request channel, which is full for as long as the broker is away (the
    /// driver drains it only while connected); neither says it is wedged, and a restart
    /// would wait in the same place. The broker link has its own stall watch and
    /// `/healthz` line.
    pub fn spawn(
        client: AsyncClient,
        topics: Topics,
        state: Arc<LinkState>,
        supervisor: &Supervisor,
    ) -> (Outbox, tokio::task::JoinHandle<()>) {
        let (replies_tx, replies) = mpsc::channel::<Answer>(REPLY_LANE);
        let (readings_tx, readings) = mpsc::channel::<ReadingBatch>(READING_LANE);
        #[cfg(test)]
        let panics_left = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let lanes = Arc::new(tokio::sync::Mutex::new(Lanes {
            replies,
            readings,
            in_hand: std::collections::VecDeque::new(),
            carried: false,
            #[cfg(test)]
            panics_left: panics_left.clone(),
        }));
        let answer_lost = Arc::new(AtomicBool::new(false));
        let (link, lost) = (state.clone(), answer_lost.clone());
        let task = supervisor.spawn(
            crate::supervise::OUTBOX_TASK,
            crate::supervise::NEVER_STALLS,
            OnStall::Report,
            move |_heartbeat| {
                let lanes = lanes.clone().lock_owned();
                let (client, topics, state, lost) =
                    (client.clone(), topics.clone(), link.clone(), lost.clone());
                async move {
                    let mut lanes = lanes.await;
                    send_out(&mut lanes, &client, &topics, &state, &lost).await;
                }
            },
        );
        let outbox = Outbox {
            replies: replies_tx,
            readings: readings_tx,
            state,
            answer_lost,
            #[cfg(test)]
            panics_left,
        };
        (outbox, task)
    }

    /// Queue a command reply. Waits while the lane is full; never drops.
    pub async fn send_reply(&self, reply: CommandReply) {
        if self.replies.send(Answer::Reply(reply)).await.is_err() {
            tracing::error!("outbox closed; the gateway is shutting down");
        }
    }

    /// Queue the parts of a snapshot. Waits while the lane is full; never drops.
    pub async fn send_snapshot(&self, parts: Vec<Snapshot>) {
        if self.replies.send(Answer::Snapshot(parts)).await.is_err() {
            tracing::error!("outbox closed; the gateway is shutting down");
        }
    }

    /// Queue readings; dropped (and counted) when the lane is full.
    pub fn send_readings(&self, batch: ReadingBatch) {
        if self.readings.try_send(batch).is_err() {
            self.state.readings_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether an answer was given up since the last call (see `Lanes::carried`): the
    /// console is then owed a new snapshot.
    pub fn take_answer_lost(&self) -> bool {
        self.answer_lost.swap(false, Ordering::Relaxed)
    }
}

/// One run of the outbox task: answers in hand first, then the lanes, answers before
/// readings. Returns when both lanes are closed or rumqttc's event loop is gone (the
/// gateway is shutting down).
async fn send_out(
    lanes: &mut Lanes,
    client: &AsyncClient,
    topics: &Topics,
    state: &LinkState,
    answer_lost: &AtomicBool,
) {
    if !lanes.in_hand.is_empty() {
        if lanes.carried {
            tracing::error!(
                publishes = lanes.in_hand.len(),
                "dropped an answer to the console that two runs of the outbox died sending; a command goes unanswered and expires, and a new snapshot is sent"
            );
            lanes.in_hand.clear();
            answer_lost.store(true, Ordering::Relaxed);
        } else {
            tracing::warn!(
                publishes = lanes.in_hand.len(),
                "sending what the outbox had in hand when it died"
            );
            lanes.carried = true;
        }
    }
    loop {
        while let Some((topic, qos, payload)) = lanes.in_hand.front() {
            #[cfg(test)]
            if lanes
                .panics_left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
            {
                panic!("injected: the outbox dies with an answer in hand");
            }
            if client
                .publish(topic.clone(), *qos, false, payload.clone())
                .await
                .is_err()
            {
                // The event loop is gone: the gateway is shutting down.
                return;
            }
            lanes.in_hand.pop_front();
        }
        lanes.carried = false;
        tokio::select! {
            biased;
            Some(answer) = lanes.replies.recv() => {
                let sends: Vec<Publish> = match answer {
                    Answer::Reply(r) => vec![(topics.replies.clone(), QoS::AtLeastOnce, r.encode())],
                    Answer::Snapshot(parts) => parts
                        .iter()
                        .map(|p| (topics.snapshot.clone(), QoS::AtLeastOnce, p.encode()))
                        .collect(),
                };
                lanes.in_hand.extend(sends.into_iter().filter(|p| fits(p, topics, state)));
            }
            Some(r) = lanes.readings.recv() => {
                // While the link is down, readings would only fill rumqttc's
                // request channel ahead of alarms, and QoS 0 is lost anyway.
                if !state.connected.load(Ordering::Relaxed) {
                    state.readings_dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                // One poll of a device with very many points is split so no publish
                // passes the packet limit. Best effort: a batch in hand when the task
                // dies is lost (not counted), like one the broker never gets.
                let sends = r
                    .split_to_fit(PAYLOAD_MAX)
                    .into_iter()
                    .map(|part| (topics.readings.clone(), QoS::AtMostOnce, part.encode()));
                for publish in sends {
                    if !fits(&publish, topics, state) {
                        continue;
                    }
                    let (topic, qos, payload) = publish;
                    if client.publish(topic, qos, false, payload).await.is_err() {
                        return;
                    }
                }
            }
            else => return,
        }
    }
}

/// Whether a publish is within the packet limit. One that is not cannot happen within the
/// config's limits (shouwang_wire's MAX_ID_CHARS and MAX_TEXT_CHARS): it is refused here
/// rather than by rumqttc, which would drop the connection, logged and, for readings,
/// counted.
fn fits((topic, _, payload): &Publish, topics: &Topics, state: &LinkState) -> bool {
    if payload.len() <= PAYLOAD_MAX {
        return true;
    }
    if *topic == topics.readings {
        state.readings_dropped.fetch_add(1, Ordering::Relaxed);
    }
    tracing::error!(
        topic,
        bytes = payload.len(),
        "a message too large to publish was dropped"
    );
    false
}

/// Say goodbye: `offline` retained, then a clean disconnect.
pub async fn announce_offline(client: &AsyncClient, config: &Config, state: &LinkState) {
    state.stopping.store(true, Ordering::Relaxed);
    let topics = Topics::new(config);
    let offline = status(config, GatewayState::Offline, now_ms());
    let _ = client
        .publish(topics.status, QoS::AtLeastOnce, true, offline)
        .await;
    let _ = client.disconnect().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervise::{OUTBOX_TASK, TaskSnapshot};
    use rumqttc::Request;

    fn topics() -> Topics {
        let t = |c: &str| format!("shouwang/test/gw/{c}");
        Topics {
            status: t("status"),
            readings: t("readings"),
            events: t("events"),
            commands: t("commands"),
            replies: t("replies"),
            receipts: t("receipts"),
            snapshot: t("snapshot"),
        }
    }

    fn reply(command_id: &str) -> CommandReply {
        CommandReply {
            schema: CommandReply::SCHEMA,
            command_id: command_id.into(),
            gateway: "gw".into(),
            ok: true,
            error: None,
            ts_ms: 0,
        }
    }

    /// The command ids of the replies rumqttc was handed, waiting up to 10 s (paused time)
    /// for `n` of them.
    async fn replies_sent(requests: &flume::Receiver<Request>, n: usize) -> Vec<String> {
        let mut ids = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while ids.len() < n && tokio::time::Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_millis(100), requests.recv_async()).await {
                Ok(Ok(Request::Publish(p))) => {
                    ids.push(CommandReply::decode(&p.payload).unwrap().command_id)
                }
                Ok(other) => panic!("unexpected request {other:?}"),
                Err(_) => {}
            }
        }
        ids
    }

    fn outbox_task(supervisor: &Supervisor) -> TaskSnapshot {
        supervisor
            .tasks()
            .snapshot()
            .into_iter()
            .find(|t| t.name == OUTBOX_TASK)
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn an_outbox_that_dies_with_a_reply_in_hand_is_restarted_sends_it_and_the_same_handle_keeps_working()
     {
        let supervisor = Supervisor::default();
        let (requests_tx, requests) = flume::bounded(16);
        let client = AsyncClient::from_senders(requests_tx);
        let (outbox, _keeper) = Outbox::spawn(
            client,
            topics(),
            Arc::new(LinkState::default()),
            &supervisor,
        );
        outbox.panics_left.store(1, Ordering::Relaxed);
        outbox.send_reply(reply("c1")).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let t = outbox_task(&supervisor);
        assert!(!t.up && t.restarts == 1, "{t:?}");
        assert!(supervisor.tasks().fault_active());
        // Restarted after 1 s: the reply it had in hand goes first, then the next one.
        outbox.send_reply(reply("c2")).await;
        assert_eq!(replies_sent(&requests, 2).await, ["c1", "c2"]);
        assert!(outbox_task(&supervisor).up);
        assert!(!outbox.take_answer_lost());
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_two_runs_die_with_is_dropped_and_a_new_snapshot_is_owed() {
        let supervisor = Supervisor::default();
        let (requests_tx, requests) = flume::bounded(16);
        let client = AsyncClient::from_senders(requests_tx);
        let (outbox, _keeper) = Outbox::spawn(
            client,
            topics(),
            Arc::new(LinkState::default()),
            &supervisor,
        );
        outbox.panics_left.store(2, Ordering::Relaxed);
        outbox.send_reply(reply("poison")).await;
        // Run 1 dies with it, run 2 (1 s later) dies sending it again, run 3 (2 s later)
        // drops it.
        tokio::time::sleep(Duration::from_millis(3_500)).await;
        assert_eq!(outbox_task(&supervisor).restarts, 2);
        assert!(
            outbox.take_answer_lost(),
            "the runtime loop owes a snapshot"
        );
        assert!(!outbox.take_answer_lost(), "once");
        outbox.send_reply(reply("c2")).await;
        assert_eq!(replies_sent(&requests, 1).await, ["c2"]);
    }
}
