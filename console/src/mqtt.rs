//! The console's MQTT side: one task that owns the rumqttc event loop.
//!
//! - Subscribes (QoS 1) to every gateway's status, readings, events, replies and snapshots
//!   ([`crate::snapshot`]), again on
//!   every ConnAck (the broker may have lost the session).
//! - Persistent session (`clean_session = false`) with **manual acks**: a QoS 1 message is
//!   acknowledged to the broker only after it is stored, so an event is never lost between
//!   the broker and the database. A message that cannot be decoded is acknowledged (it
//!   never will decode) after it is logged with its topic and the reason, and counted.
//! - Reconnects forever: after an error it sleeps [`RECONNECT_DELAY`] and polls again.
//!
//! [`decode`] is the pure part: topic and payload in, a typed [`Inbound`] out.

use std::sync::atomic::Ordering;
use std::time::Duration;

use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS, SubscribeFilter,
    SubscribeReasonCode,
};
use shouwang_rules::AlarmInput;
use shouwang_wire::{
    Action, AlarmEvent, Channel, Command, CommandReply, GatewayState, GatewayStatus, Message,
    ReadingBatch, Snapshot, TopicName, WireError,
};
use tokio::sync::mpsc;

use crate::state::{AppState, Metrics, ReadingUpdate, StreamKind};
use crate::store::{EventOutcome, StoreError};

/// Logs about what peers send, which a peer can make us repeat at any rate, at most once
/// per [`QuietLog::PERIOD_MS`].
static BAD_INPUT_LOG: QuietLog = QuietLog::new();

/// A log line at most once per period, for messages a peer can make us repeat at any rate.
pub struct QuietLog {
    last_ms: std::sync::atomic::AtomicI64,
}

impl QuietLog {
    pub const PERIOD_MS: i64 = 10_000;

    pub const fn new() -> QuietLog {
        QuietLog {
            last_ms: std::sync::atomic::AtomicI64::new(i64::MIN),
        }
    }

    /// Whether a line may be logged now (and, if so, the period starts again).
    pub fn due(&self, now_ms: i64) -> bool {
        let last = self.last_ms.load(Ordering::Relaxed);
        let due =
            last == i64::MIN || now_ms.saturating_sub(last) >= Self::PERIOD_MS || now_ms < last;
        due && self
            .last_ms
            .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}

impl Default for QuietLog {
    fn default() -> Self {
        QuietLog::new()
    }
}

/// Pause between reconnection attempts.
pub const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// After this many messages in a row that could not be stored, reconnect to the broker.
const STORE_FAILURES_BEFORE_RECONNECT: u64 = 3;

/// Requests (publishes, acks, subscribes) that may wait for the event loop.
const REQUEST_CAPACITY: usize = 256;

/// The largest packet the console reads: MQTT's own maximum (268,435,455 bytes of remaining
/// length). The console's session is persistent, so a message it refused to read would be
/// handed back by the broker on every reconnect and silence every gateway behind it (a
/// poison message). Reading anything means such a message is read once, refused as not
/// decoding, acknowledged and gone. What bounds memory is the broker's `max_packet_size`
/// (docs/mosquitto/: [`shouwang_wire::MAX_PUBLISH_BYTES`]), which stops big messages at the
/// door.
const MAX_INCOMING_BYTES: usize = 268_435_455;

/// The channels the console listens to.
pub const SUBSCRIBED: [Channel; 5] = [
    Channel::Status,
    Channel::Readings,
    Channel::Events,
    Channel::Replies,
    Channel::Snapshot,
];

/// The client and event loop for the console, not yet connected.
pub fn client(
    host: &str,
    port: u16,
    client_id: &str,
    auth: &shouwang_broker_auth::BrokerAuth,
) -> (AsyncClient, EventLoop) {
    let mut opts = MqttOptions::new(client_id, host, port);
    auth.apply(&mut opts); // account and TLS, loaded by main from the --mqtt-* flags
    opts.set_clean_session(false)
        .set_manual_acks(true)
        .set_keep_alive(Duration::from_secs(15))
        .set_max_packet_size(MAX_INCOMING_BYTES, shouwang_wire::MAX_PUBLISH_BYTES);
    shouwang_broker_auth::connect_without_delay(opts, REQUEST_CAPACITY)
}

/// A decoded message from a gateway.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    Event(AlarmEvent),
    Readings(ReadingBatch),
    Status(GatewayStatus),
    Reply(CommandReply),
    Snapshot(Snapshot),
}

/// Why a message was dropped.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("the console does not listen on the {0} channel")]
    Channel(&'static str),
    #[error("a snapshot on the topic of gateway {topic:?} says it is from gateway {inside:?}")]
    SnapshotGateway { topic: String, inside: String },
}

/// Understand one message by its topic and payload.
pub fn decode(topic: &str, payload: &[u8]) -> Result<(TopicName, Inbound), DecodeError> {
    let name = shouwang_wire::parse_topic(topic)?;
    let inbound = match name.channel {
        Channel::Events => Inbound::Event(AlarmEvent::decode(payload)?),
        Channel::Readings => Inbound::Readings(ReadingBatch::decode(payload)?),
        Channel::Status => Inbound::Status(GatewayStatus::decode(payload)?),
        Channel::Replies => Inbound::Reply(CommandReply::decode(payload)?),
        Channel::Snapshot => {
            let snapshot = Snapshot::decode(payload)?;
            // A snapshot can take alarms off the board: it must come from the gateway whose
            // topic it is on (the broker's ACL lets a gateway write only its own topics).
            if snapshot.gateway != name.gateway {
                return Err(DecodeError::SnapshotGateway {
                    topic: name.gateway,
                    inside: snapshot.gateway,
                });
            }
            Inbound::Snapshot(snapshot)
        }
        channel @ (Channel::Commands | Channel::Receipts) => {
            return Err(DecodeError::Channel(channel.as_str()));
        }
    };
    Ok((name, inbound))
}

/// Alarm events being stored, at most this many at once (the broker's in-flight window
/// for the console, 20 by default in mosquitto, is normally the smaller bound).
const MAX_IN_FLIGHT: usize = 256;
/// Polled MQTT events waiting for the handler.
const PUMP_CAPACITY: usize = 64;

/// The one task that polls rumqttc's event loop, and only that: each poll runs to its end
/// (rumqttc does not promise that an interrupted poll loses nothing), and what it yields
/// goes to [`run`] over a channel, which `run` can wait on beside the store. After a failed
/// connection it waits [`RECONNECT_DELAY`]; when `run` asks (`reconnect`), it drops the
/// connection first so the broker delivers the unstored messages again.
async fn pump(
    mut eventloop: EventLoop,
    out: mpsc::Sender<Result<Event, rumqttc::ConnectionError>>,
    reconnect: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    loop {
        if reconnect.swap(false, Ordering::Relaxed) {
            eventloop.clean();
            tokio::time::sleep(RECONNECT_DELAY).await;
        }
        let polled = eventloop.poll().await;
        let failed = polled.is_err();
        let done = matches!(polled, Err(rumqttc::ConnectionError::RequestsDone));
        if out.send(polled).await.is_err() || done {
            return;
        }
        if failed {
            tokio::time::sleep(RECONNECT_DELAY).await;
        }
    }
}

/// One alarm event handed to the store, not yet committed.
struct InFlight {
    publish: Publish,
    community: String,
    gateway: String,
    event_id: String,
    key: shouwang_wire::EventKey,
    /// The connection it came on: its ack means nothing on another.
    connection: u64,
    stored: tokio::sync::oneshot::Receiver<Result<EventOutcome, StoreError>>,
}

/// What [`run`] keeps between messages.
struct Inbox {
    client: AsyncClient,
    state: AppState,
    reconnect: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Connections made so far.
    connection: u64,
    /// Messages not stored since the last reconnection we forced.
    unstored_since_reconnect: u64,
    /// Stored messages whose ack rumqttc could not take yet, oldest first.
    owed_acks: std::collections::VecDeque<Publish>,
    /// Alarm events being stored, oldest first.
    in_flight: std::collections::VecDeque<InFlight>,
}

impl Inbox {
    /// A message is stored (or needs no storing): ack it to the broker. rumqttc's request
    /// channel may be full in a burst: the ack waits in `owed_acks`, tried again before
    /// every wait. Dropping it would hold one of the broker's in-flight slots for us until
    /// the next reconnect; enough of them and the broker sends us nothing more.
    fn stored(&mut self, publish: Publish, connection: u64) {
        self.state.metrics.store_failing.store(0, Ordering::Relaxed);
        if connection == self.connection {
            self.owed_acks.push_back(publish);
        }
        pay_acks(&self.client, &mut self.owed_acks);
    }

    /// A message could not be stored: no ack and no receipt, so the broker delivers it
    /// again after a reconnect and the gateway sends it again when no receipt comes.
    fn unstored(&mut self, topic: &str, error: &StoreError) {
        Metrics::inc(&self.state.metrics.store_failures);
        let in_a_row = self
            .state
            .metrics
            .store_failing
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        tracing::error!(%error, topic, in_a_row, "CONSOLE ALARM: cannot store a message");
        self.unstored_since_reconnect += 1;
        if self.unstored_since_reconnect >= STORE_FAILURES_BEFORE_RECONNECT {
            self.unstored_since_reconnect = 0;
            // Unacknowledged messages hold the broker's in-flight slots for us; a new
            // connection makes it deliver them again.
            tracing::warn!("reconnecting so the broker delivers the unstored messages again");
            self.state.mqtt_connected.store(false, Ordering::Relaxed);
            self.reconnect.store(true, Ordering::Relaxed);
        }
    }

    /// The oldest event in flight was committed (or not).
    fn settle(&mut self, f: InFlight, result: Result<EventOutcome, StoreError>) {
        match result {
            Ok(outcome) => {
                report_outcome(&self.state, &f.event_id, outcome);
                // Stored (or already held): the gateway may let go of it.
                self.state.receipts.note(&f.community, &f.gateway, f.key);
                self.stored(f.publish, f.connection);
            }
            Err(error) => self.unstored(&f.publish.topic, &error),
        }
    }

    /// Wait for every event in flight, in order.
    async fn settle_all(&mut self) {
        while let Some(mut f) = self.in_flight.pop_front() {
            let result = (&mut f.stored)
                .await
                .map_err(|_| StoreError::Closed)
                .and_then(|r| r);
            self.settle(f, result);
        }
    }

    /// One message from the broker. Alarm events go to the store without waiting for the
    /// commit, so a burst is stored in few transactions; anything else waits for the
    /// events before it and is handled in place.
    async fn publish(&mut self, publish: Publish) {
        Metrics::inc(&self.state.metrics.mqtt_messages_received);
        let (topic, inbound) = match decode(&publish.topic, &publish.payload) {
            Ok(decoded) => decoded,
            Err(error) => {
                Metrics::inc(&self.state.metrics.mqtt_messages_rejected);
                let total = self
                    .state
                    .metrics
                    .mqtt_messages_rejected
                    .load(Ordering::Relaxed);
                // A hostile client can send thousands a second: one line per period, with
                // the count (shouwang_console_mqtt_messages_rejected_total has them all).
                if BAD_INPUT_LOG.due(now_ms()) {
                    tracing::warn!(
                        topic = %publish.topic,
                        reason = %error,
                        bytes = publish.payload.len(),
                        total,
                        "dropping a message that does not decode"
                    );
                }
                // Acked: it never will decode.
                let connection = self.connection;
                self.stored(publish, connection);
                return;
            }
        };
        if let Inbound::Event(event) = inbound {
            let now = now_ms();
            if event.gateway != topic.gateway && BAD_INPUT_LOG.due(now) {
                // Kept anyway: an alarm must get through even from a misconfigured gateway.
                tracing::warn!(
                    topic = %publish.topic,
                    gateway = %event.gateway,
                    alarm_id = %event.alarm_id,
                    "alarm event names another gateway than its topic"
                );
            }
            let (key, event_id) = (event.key(), event.event_id.clone());
            match self
                .state
                .store
                .submit_event(event, topic.community.clone(), now)
                .await
            {
                Ok(stored) => self.in_flight.push_back(InFlight {
                    publish,
                    community: topic.community,
                    gateway: topic.gateway,
                    event_id,
                    key,
                    connection: self.connection,
                    stored,
                }),
                Err(error) => self.unstored(&publish.topic, &error),
            }
            return;
        }
        self.settle_all().await;
        match handle(&self.state, &publish.topic, topic, inbound).await {
            Ok(()) => {
                let connection = self.connection;
                self.stored(publish, connection);
            }
            Err(error) => self.unstored(&publish.topic, &error),
        }
    }
}

/// Handle what the broker sends, forever: alarm events stored in groups (one transaction
/// for the events that arrive together), each acked to the broker and receipted to its
/// gateway only once committed. Returns only if the client side is gone, which cannot
/// happen while `state` holds the client.
pub async fn run(eventloop: EventLoop, client: AsyncClient, state: AppState) {
    let filters: Vec<SubscribeFilter> = SUBSCRIBED
        .iter()
        .map(|c| SubscribeFilter::new(shouwang_wire::topic_filter_all(*c), QoS::AtLeastOnce))
        .collect();
    let reconnect = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (tx, mut polled) = mpsc::channel(PUMP_CAPACITY);
    tokio::spawn(pump(eventloop, tx, reconnect.clone()));
    let mut inbox = Inbox {
        client: client.clone(),
        state: state.clone(),
        reconnect,
        connection: 0,
        unstored_since_reconnect: 0,
        owed_acks: std::collections::VecDeque::new(),
        in_flight: std::collections::VecDeque::new(),
    };
    let mut failures: u64 = 0;
    let mut last_loud: Option<std::time::Instant> = None;
    enum Next {
        Stored(Result<EventOutcome, StoreError>),
        Polled(Result<Event, rumqttc::ConnectionError>),
    }
    loop {
        pay_acks(&client, &mut inbox.owed_acks);
        let room = inbox.in_flight.len() < MAX_IN_FLIGHT;
        let next = tokio::select! {
            biased;
            stored = async {
                match inbox.in_flight.front_mut() {
                    Some(f) => (&mut f.stored).await.map_err(|_| StoreError::Closed).and_then(|r| r),
                    None => std::future::pending().await,
                }
            } => Next::Stored(stored),
            event = polled.recv(), if room => match event {
                Some(event) => Next::Polled(event),
                None => return,
            },
        };
        match next {
            Next::Stored(result) => {
                if let Some(f) = inbox.in_flight.pop_front() {
                    inbox.settle(f, result);
                }
            }
            Next::Polled(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
                // Packet ids of the last connection mean nothing on this one: the broker
                // sends those messages again, and they are acked then.
                inbox.connection += 1;
                inbox.owed_acks.clear();
                failures = 0;
                last_loud = None;
                Metrics::inc(&state.metrics.mqtt_connections);
                tracing::info!(
                    session_present = ack.session_present,
                    "connected to the broker"
                );
                if let Err(error) = client.try_subscribe_many(filters.clone()) {
                    tracing::error!(%error, "cannot queue the subscription");
                }
            }
            Next::Polled(Ok(Event::Incoming(Packet::SubAck(ack)))) => {
                let refused = ack
                    .return_codes
                    .iter()
                    .filter(|c| matches!(c, SubscribeReasonCode::Failure))
                    .count();
                if refused > 0 {
                    tracing::error!(refused, "the broker refused some subscriptions");
                } else {
                    tracing::info!("subscribed to every gateway");
                }
                state.mqtt_connected.store(true, Ordering::Relaxed);
            }
            Next::Polled(Ok(Event::Incoming(Packet::Publish(publish)))) => {
                inbox.publish(publish).await;
            }
            Next::Polled(Ok(_)) => {}
            Next::Polled(Err(error)) => {
                state.mqtt_connected.store(false, Ordering::Relaxed);
                failures += 1;
                // Loud on the first failure, then once a minute, so a broker outage does
                // not flood the log.
                let loud = last_loud.is_none_or(|t| t.elapsed() >= Duration::from_secs(60));
                if loud {
                    last_loud = Some(std::time::Instant::now());
                    tracing::warn!(%error, failures, "MQTT connection failed; retrying");
                } else {
                    tracing::debug!(%error, failures, "MQTT connection failed; retrying");
                }
                if let rumqttc::ConnectionError::RequestsDone = error {
                    return;
                }
            }
        }
    }
}

/// Hand rumqttc the acks it has room for, oldest first.
fn pay_acks(client: &AsyncClient, owed: &mut std::collections::VecDeque<Publish>) {
    while let Some(publish) = owed.front() {
        if client.try_ack(publish).is_err() {
            return;
        }
        owed.pop_front();
    }
}

/// Decode, store and fan out one message. `Err` only when it could not be stored; a message
/// that does not decode is logged, counted and dropped (`Ok`).
async fn handle(
    state: &AppState,
    raw_topic: &str,
    topic: TopicName,
    inbound: Inbound,
) -> Result<(), StoreError> {
    let now = now_ms();
    match inbound {
        // Alarm events are stored in groups by [`Inbox::publish`], never here.
        Inbound::Event(_) => {}
        Inbound::Readings(batch) => match state.readings.update(&topic.community, &batch) {
            ReadingUpdate::Latest => state.publish(StreamKind::Reading, &batch),
            ReadingUpdate::Stale => {}
            ReadingUpdate::Full => {
                Metrics::inc(&state.metrics.readings_dropped);
                tracing::warn!(topic = %raw_topic, device = %batch.device, "live readings table full");
            }
        },
        Inbound::Status(status) => {
            let stored = status.clone();
            state
                .store
                .call(move |s| s.put_gateway(&stored, now))
                .await?;
            tracing::info!(gateway = %status.gateway, state = ?status.state, "gateway status");
            if status.state == GatewayState::Online {
                ask_for_resync(state, &topic.community, &status.gateway);
            }
            let input = match status.state {
                GatewayState::Offline => AlarmInput::Raise,
                GatewayState::Online => AlarmInput::Clear,
            };
            crate::own_alarms::apply(state, &topic.community, &status.gateway, input, None).await?;
            state.publish(StreamKind::Gateway, &status);
        }
        Inbound::Snapshot(snapshot) => {
            reconcile(state, &topic.community, &topic.gateway, snapshot, now).await?;
        }
        Inbound::Reply(reply) => {
            let stored = reply.clone();
            let settled = state
                .store
                .call(move |s| s.record_reply(&stored, now))
                .await?;
            match settled {
                Some(cmd) => tracing::info!(
                    command_id = %cmd.command_id,
                    alarm_id = %cmd.alarm_id,
                    ok = reply.ok,
                    "command reply"
                ),
                None => {
                    Metrics::inc(&state.metrics.command_replies_unknown);
                    tracing::debug!(command_id = %reply.command_id, "reply to a command of another console");
                }
            }
            state.publish(StreamKind::Reply, &reply);
        }
    }
    Ok(())
}

/// Store a snapshot part's events, and once the snapshot is whole, restate normal the
/// alarms it shows the gateway no longer has (see [`crate::snapshot`]).
async fn reconcile(
    state: &AppState,
    community: &str,
    gateway: &str,
    snapshot: Snapshot,
    now: i64,
) -> Result<(), StoreError> {
    let added = match state.snapshots.lock() {
        Ok(mut assemblies) => assemblies.add(community, gateway, &snapshot),
        Err(poisoned) => poisoned.into_inner().add(community, gateway, &snapshot),
    };
    let complete = match added {
        Ok(complete) => complete,
        Err(error) => {
            Metrics::inc(&state.metrics.mqtt_messages_rejected);
            if BAD_INPUT_LOG.due(now) {
                tracing::warn!(%gateway, %error, "snapshot part refused");
            }
            return Ok(());
        }
    };
    for event in snapshot.events {
        let key = event.key();
        store_event(state, event, community, now).await?;
        state.receipts.note(community, gateway, key);
    }
    let Some(complete) = complete else {
        return Ok(());
    };
    let (c, g) = (community.to_string(), gateway.to_string());
    let open = state.store.call(move |s| s.open_alarms_of(&c, &g)).await?;
    let mut restated = 0;
    for current in open {
        if let Some(reason) = complete.verdict(&current.alarm_id, current.state, current.key()) {
            let event = crate::snapshot::reconciled_event(&current, reason, complete.position, now);
            tracing::info!(alarm_id = %event.alarm_id, ?reason, "alarm restated normal by the gateway's snapshot");
            store_event(state, event, community, now).await?;
            restated += 1;
        }
    }
    tracing::info!(%gateway, snapshot_id = %snapshot.snapshot_id, restated, "gateway snapshot reconciled");
    Ok(())
}

/// Ask a gateway that came online (or that we just heard of) to send every alarm's latest
/// event again, so the board holds every alarm even if this console's store is new or
/// missed events. Duplicates are dropped by `event_id`. `try_publish`: this runs inside the
/// MQTT loop, which must never wait on its own request channel.
fn ask_for_resync(state: &AppState, community: &str, gateway: &str) {
    let command = Command {
        schema: Command::SCHEMA,
        command_id: uuid::Uuid::now_v7().to_string(),
        operator: "console".into(),
        ts_ms: now_ms(),
        ttl_ms: Some(shouwang_wire::COMMAND_TTL_MS),
        action: Action::Resync,
    };
    let topic = shouwang_wire::topic(community, gateway, Channel::Commands);
    if let Err(error) = state
        .mqtt
        .try_publish(&topic, QoS::AtLeastOnce, false, command.encode())
    {
        tracing::warn!(%gateway, %error, "could not ask the gateway to resync");
    }
}

/// Store one alarm event (from a gateway, or one the console raised itself) and, if it is
/// now the alarm's state, push it to every open page.
pub async fn store_event(
    state: &AppState,
    event: AlarmEvent,
    topic_community: &str,
    now: i64,
) -> Result<(), StoreError> {
    let event_id = event.event_id.clone();
    let outcome = state
        .store
        .apply_event(event, topic_community.to_string(), now)
        .await?;
    report_outcome(state, &event_id, outcome);
    Ok(())
}

/// Count and log what storing an event did, and push a new current state to every page.
fn report_outcome(state: &AppState, event_id: &str, outcome: EventOutcome) {
    match outcome {
        EventOutcome::Duplicate => {
            Metrics::inc(&state.metrics.alarm_events_duplicate);
            tracing::debug!(%event_id, "duplicate alarm event dropped");
        }
        EventOutcome::Late => {
            Metrics::inc(&state.metrics.alarm_events_stored);
            Metrics::inc(&state.metrics.alarm_events_late);
            tracing::info!(%event_id, "late alarm event kept in history only");
        }
        EventOutcome::Current(view) => {
            Metrics::inc(&state.metrics.alarm_events_stored);
            tracing::info!(
                %event_id,
                alarm_id = %view.event.alarm_id,
                state = %crate::store::state_name(view.event.state),
                "alarm event"
            );
            state.publish(StreamKind::Alarm, &view);
        }
    }
}

/// The console clock, ms since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn garbage_on_an_events_topic_is_refused_with_the_message_kind() {
        let err = decode("shouwang/v1/riverside/gw-1/events", b"\xffnot json").unwrap_err();
        assert!(err.to_string().contains("alarm event"), "{err}");
    }

    #[test]
    fn a_foreign_topic_is_refused_by_name() {
        let err = decode("shouwang/v1/riverside/gw-1/bogus", b"{}").unwrap_err();
        assert!(
            err.to_string().contains("shouwang/v1/riverside/gw-1/bogus"),
            "{err}"
        );
    }

    #[test]
    fn commands_are_not_for_the_console() {
        let err = decode("shouwang/v1/riverside/gw-1/commands", b"{}").unwrap_err();
        assert!(matches!(err, DecodeError::Channel("commands")), "{err}");
    }

    #[test]
    fn a_reply_decodes_with_its_topic() {
        let reply = CommandReply {
            schema: 1,
            command_id: "c1".into(),
            gateway: "gw-1".into(),
            ok: true,
            error: None,
            ts_ms: 1,
        };
        let (topic, inbound) =
            decode("shouwang/v1/riverside/gw-1/replies", &reply.encode()).unwrap();
        assert_eq!(topic.community, "riverside");
        assert_eq!(inbound, Inbound::Reply(reply));
    }

    #[test]
    fn a_quiet_log_lets_one_line_through_per_period_and_survives_a_clock_step_back() {
        let log = QuietLog::new();
        assert!(log.due(1_000));
        assert!(!log.due(1_001));
        assert!(!log.due(10_999));
        assert!(log.due(11_000));
        // The wall clock stepped back: not silenced for the length of the step.
        assert!(log.due(5_000));
    }

    #[test]
    fn a_snapshot_naming_another_gateway_than_its_topic_is_refused_and_a_matching_one_decodes() {
        let part = Snapshot::split(
            "gw-2",
            "s1",
            shouwang_wire::EventKey { boot: 1, seq: 1 },
            vec![],
            vec!["riverside:gw-2:d:r".into()],
            0,
            shouwang_wire::MAX_PUBLISH_BYTES,
        )
        .remove(0);
        let err = decode("shouwang/v1/riverside/gw-1/snapshot", &part.encode()).unwrap_err();
        assert!(matches!(err, DecodeError::SnapshotGateway { .. }), "{err}");
        assert!(err.to_string().contains("gw-2"), "{err}");
        let (_, inbound) = decode("shouwang/v1/riverside/gw-2/snapshot", &part.encode()).unwrap();
        assert_eq!(inbound, Inbound::Snapshot(part));
        // Garbage on the snapshot topic names its kind.
        let err = decode("shouwang/v1/riverside/gw-2/snapshot", b"\xff{").unwrap_err();
        assert!(err.to_string().contains("snapshot"), "{err}");
    }
}
