//! The gateway's link to the MQTT broker.
//!
//! [`drive`] is the one loop that polls rumqttc's event loop: it reconnects forever (1 s
//! apart), subscribes to the gateway's command topic and announces the gateway `online`
//! (retained) on every connection, and hands decoded commands and connection news to the
//! runtime loop. The broker publishes the retained `offline` last will when the gateway
//! disappears without a clean disconnect.
//!
//! [`Outbox`] is the only sender. It has two lanes: alarm events and command replies
//! (never dropped: a full lane makes the caller wait) and readings (dropped when full, and
//! counted). The alarm lane always goes first.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet, QoS};
use shouwang_wire::{
    AlarmEvent, Channel, Command, CommandReply, GatewayState, GatewayStatus, Message, ReadingBatch,
    SCHEMA_VERSION, topic,
};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::now_ms;

/// How many requests rumqttc buffers between us and its event loop.
const CLIENT_CAPACITY: usize = 256;
/// Alarm events and replies waiting to be handed to rumqttc. When full, the runtime loop
/// waits: an alarm is never dropped here.
const ALARM_LANE: usize = 4096;
/// Reading batches waiting to be handed to rumqttc. When full, new batches are dropped.
const READING_LANE: usize = 256;

/// What the broker link tells the runtime loop. [`drive`] never waits on these channels
/// (it is the loop that drains rumqttc's request channel, and the runtime loop may be
/// waiting on that): commands go on a bounded channel with `try_send`, and a full one gets
/// a "busy" reply; connections are counted on a watch channel, which never fills.
pub struct LinkNews {
    /// Decoded commands from the console.
    pub commands: mpsc::Receiver<Command>,
    /// How many times the link has connected. On every change the runtime loop re-publishes
    /// each alarm's latest event, so the console converges on the true state even if the
    /// broker lost its queue.
    pub connections: tokio::sync::watch::Receiver<u64>,
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
        }
    }
}

fn status(config: &Config, state: GatewayState, ts_ms: i64) -> Vec<u8> {
    GatewayStatus {
        schema: SCHEMA_VERSION,
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
    // Keep the session across reconnects, so QoS 1 messages in flight are resent.
    options.set_clean_session(false);
    options.set_last_will(LastWill::new(
        topics.status,
        status(config, GatewayState::Offline, now_ms()),
        QoS::AtLeastOnce,
        true,
    ));
    AsyncClient::new(options, CLIENT_CAPACITY)
}

/// Whether the broker link is up, for logs and tests.
#[derive(Debug, Default)]
pub struct LinkState {
    pub connected: AtomicBool,
    /// Set once the gateway said goodbye: the link closing is then expected.
    pub stopping: AtomicBool,
    pub bad_commands: AtomicU64,
    pub readings_dropped: AtomicU64,
}

/// Start [`drive`]; returns what it will report.
pub fn spawn_drive(
    events: EventLoop,
    client: AsyncClient,
    config: Arc<Config>,
    state: Arc<LinkState>,
) -> (LinkNews, tokio::task::JoinHandle<()>) {
    let (commands_tx, commands) = mpsc::channel(COMMAND_QUEUE);
    let (connections_tx, connections) = tokio::sync::watch::channel(0u64);
    let task = tokio::spawn(drive(
        events,
        client,
        config,
        commands_tx,
        connections_tx,
        state,
    ));
    (
        LinkNews {
            commands,
            connections,
        },
        task,
    )
}

/// Poll the event loop forever.
async fn drive(
    mut events: EventLoop,
    client: AsyncClient,
    config: Arc<Config>,
    commands: mpsc::Sender<Command>,
    connections: tokio::sync::watch::Sender<u64>,
    state: Arc<LinkState>,
) {
    let topics = Topics::new(&config);
    // Owed to the broker after a connection: retried on every turn of the loop until
    // rumqttc's request channel has room (try_*: this loop must never wait on the channel
    // it drains).
    let mut owe_subscribe = false;
    let mut owe_online = false;
    loop {
        if owe_subscribe {
            owe_subscribe = client
                .try_subscribe(topics.commands.clone(), QoS::AtLeastOnce)
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
                connections.send_modify(|n| *n += 1);
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if p.topic != topics.commands {
                    continue;
                }
                match Command::decode(&p.payload) {
                    Ok(cmd) => match commands.try_send(cmd) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(cmd)) => {
                            tracing::warn!(command_id = %cmd.command_id, "too many commands waiting; refused one");
                            let busy = CommandReply {
                                schema: SCHEMA_VERSION,
                                command_id: cmd.command_id,
                                gateway: config.gateway.id.clone(),
                                ok: false,
                                error: Some("the gateway is busy; try again".into()),
                                ts_ms: now_ms(),
                            };
                            let _ = client.try_publish(
                                topics.replies.clone(),
                                QoS::AtLeastOnce,
                                false,
                                busy.encode(),
                            );
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => return,
                    },
                    Err(e) => {
                        state.bad_commands.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(topic = %p.topic, error = %e, "ignored a bad command");
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

/// Something to publish on the alarm lane.
#[derive(Debug)]
pub enum Urgent {
    Event(Box<AlarmEvent>),
    Reply(CommandReply),
}

/// The alarm lane's waiting room: the most urgent first (GB 26875.1 §4.1.2.3: fire alarms
/// before every other traffic). Order: class (alarm, supervisory, fault), then priority,
/// then command replies; within one rank, the order they came in, so one alarm's events
/// never overtake each other (they share class and priority). Pure.
#[derive(Default)]
pub struct UrgentQueue {
    heap: std::collections::BinaryHeap<Ranked>,
    next_seq: u64,
}

struct Ranked {
    rank: u8,
    seq: u64,
    item: Urgent,
}

impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        (self.rank, self.seq) == (other.rank, other.seq)
    }
}
impl Eq for Ranked {}
impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Ranked {
    /// Higher rank first; then lower sequence (earlier) first.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.rank
            .cmp(&other.rank)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

impl UrgentQueue {
    fn rank(item: &Urgent) -> u8 {
        use shouwang_wire::{Priority, SignalClass};
        match item {
            Urgent::Reply(_) => 0,
            Urgent::Event(e) => {
                let class = match e.class {
                    SignalClass::Alarm => 3,
                    SignalClass::Supervisory => 2,
                    SignalClass::Fault => 1,
                };
                let priority = match e.priority {
                    Priority::High => 3,
                    Priority::Medium => 2,
                    Priority::Low => 1,
                };
                class * 4 + priority
            }
        }
    }

    pub fn push(&mut self, item: Urgent) {
        self.next_seq += 1;
        self.heap.push(Ranked {
            rank: Self::rank(&item),
            seq: self.next_seq,
            item,
        });
    }

    pub fn pop(&mut self) -> Option<Urgent> {
        self.heap.pop().map(|r| r.item)
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

/// The sending side of the two lanes.
#[derive(Clone)]
pub struct Outbox {
    urgent: mpsc::Sender<Urgent>,
    readings: mpsc::Sender<ReadingBatch>,
    state: Arc<LinkState>,
}

impl Outbox {
    pub fn spawn(client: AsyncClient, topics: Topics, state: Arc<LinkState>) -> Outbox {
        let (urgent_tx, mut urgent_rx) = mpsc::channel::<Urgent>(ALARM_LANE);
        let (readings_tx, mut readings_rx) = mpsc::channel::<ReadingBatch>(READING_LANE);
        let link = state.clone();
        tokio::spawn(async move {
            let state = link;
            let mut queue = UrgentQueue::default();
            let urgent = |u: Urgent| match u {
                Urgent::Event(e) => (topics.events.clone(), QoS::AtLeastOnce, e.encode()),
                Urgent::Reply(r) => (topics.replies.clone(), QoS::AtLeastOnce, r.encode()),
            };
            loop {
                // Whatever is already waiting joins the queue, so the most urgent goes
                // first (bounded: the queue holds at most one lane's worth).
                while queue.len() < ALARM_LANE {
                    match urgent_rx.try_recv() {
                        Ok(u) => queue.push(u),
                        Err(_) => break,
                    }
                }
                let (topic, qos, payload) = if let Some(u) = queue.pop() {
                    urgent(u)
                } else {
                    tokio::select! {
                        biased;
                        Some(u) = urgent_rx.recv() => urgent(u),
                        Some(r) = readings_rx.recv() => {
                            // While the link is down, readings would only fill rumqttc's
                            // request channel ahead of alarms, and QoS 0 is lost anyway.
                            if !state.connected.load(Ordering::Relaxed) {
                                state.readings_dropped.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                            (topics.readings.clone(), QoS::AtMostOnce, r.encode())
                        }
                        else => return,
                    }
                };
                if client.publish(topic, qos, false, payload).await.is_err() {
                    // The event loop is gone: the gateway is shutting down.
                    return;
                }
            }
        });
        Outbox {
            urgent: urgent_tx,
            readings: readings_tx,
            state,
        }
    }

    /// Queue an alarm event or reply. Waits while the lane is full; never drops.
    pub async fn send(&self, item: Urgent) {
        if self.urgent.send(item).await.is_err() {
            tracing::error!("outbox closed; the gateway is shutting down");
        }
    }

    /// Queue readings; dropped (and counted) when the lane is full.
    pub fn send_readings(&self, batch: ReadingBatch) {
        if self.readings.try_send(batch).is_err() {
            self.state.readings_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
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
    use shouwang_wire::{AlarmState, Place, Priority, SignalClass, TransitionKind};

    fn event(id: &str, class: SignalClass, priority: Priority) -> Urgent {
        Urgent::Event(Box::new(AlarmEvent {
            schema: SCHEMA_VERSION,
            event_id: id.into(),
            alarm_id: format!("c:gw:{id}:r"),
            gateway: "gw".into(),
            device: id.into(),
            device_kind: "smoke".into(),
            point: None,
            rule: "r".into(),
            class,
            priority,
            transition: TransitionKind::Raised,
            state: AlarmState::Unacknowledged,
            active: true,
            value: None,
            engineering_unit: None,
            place: Place::default(),
            message: String::new(),
            ts_ms: 0,
            operator: None,
        }))
    }

    fn id(u: Urgent) -> String {
        match u {
            Urgent::Event(e) => e.event_id,
            Urgent::Reply(r) => format!("reply {}", r.command_id),
        }
    }

    #[test]
    fn a_fire_alarm_overtakes_faults_and_supervisory_waiting_before_it() {
        let mut q = UrgentQueue::default();
        q.push(event("fault-1", SignalClass::Fault, Priority::Medium));
        q.push(Urgent::Reply(CommandReply {
            schema: SCHEMA_VERSION,
            command_id: "c1".into(),
            gateway: "gw".into(),
            ok: true,
            error: None,
            ts_ms: 0,
        }));
        q.push(event(
            "pressure-low",
            SignalClass::Supervisory,
            Priority::High,
        ));
        q.push(event("fault-2", SignalClass::Fault, Priority::Medium));
        q.push(event("leak", SignalClass::Alarm, Priority::Medium));
        q.push(event("fire", SignalClass::Alarm, Priority::High));
        let order: Vec<String> = std::iter::from_fn(|| q.pop()).map(id).collect();
        assert_eq!(
            order,
            [
                "fire",
                "leak",
                "pressure-low",
                "fault-1",
                "fault-2",
                "reply c1"
            ]
        );
        assert!(q.is_empty());
    }

    #[test]
    fn events_of_the_same_rank_keep_their_order() {
        let mut q = UrgentQueue::default();
        for i in 0..100 {
            q.push(event(&format!("e{i}"), SignalClass::Alarm, Priority::High));
        }
        let order: Vec<String> = std::iter::from_fn(|| q.pop()).map(id).collect();
        let expected: Vec<String> = (0..100).map(|i| format!("e{i}")).collect();
        assert_eq!(order, expected);
    }
}
