//! The alarm journal: every alarm event is written to disk before it is sent, and leaves
//! the gateway's keeping only when the console says it has stored it.
//!
//! One thread owns the alarm lane's [`DiskQueue`] (`<data_dir>/alarms`). The runtime loop
//! hands it events through [`Journal::record`], which never waits (detection never waits
//! on delivery); the broker link hands it receipts ([`Journal::receipt`]). In each turn the
//! thread:
//!
//! 1. appends every new event (one `write` each) and fsyncs them as one group: alarm
//!    records are durable before they are sent, and a burst costs one fsync, not one per
//!    event;
//! 2. removes the events named by receipts from the queue (a receipt is the console's word
//!    that it stored them; a broker's PUBACK is not, see `shared/notes/delivery-anchors.md`);
//! 3. publishes what is due while the broker link is up: events never sent on this
//!    connection, and events without a receipt sent 2, 4, 8 then every 10 s ago
//!    ([`FIRST_RESEND_AFTER`] doubling up to [`RESEND_AFTER`]). The most
//!    urgent first (class, then priority, then order); events that happened since the link
//!    came up ("live") before older ones, and the older ones ("backlog": from before the
//!    link came up, or from before a restart) at most [`BACKLOG_PER_TURN`] per turn and
//!    [`BACKLOG_WINDOW`] awaiting their receipt at once, so a long outage drains as fast as
//!    the console stores (the window clocks it by receipts) without holding back what
//!    happens now, and a slow console is not buried in resends.
//!
//! A turn costs O(window + live events), not O(pending): the lane keeps the live events,
//! the backlog window and the pending events by age as indexes beside `pending`
//! (`measure_a_turn_with_100k_pending`: 45 µs a turn with 100,000 pending on x86).
//!
//! # Invariants
//! - An event is in `pending` from [`Journal::record`] until a receipt names it. Nothing
//!   else removes it: not a PUBACK, not a reconnection, not a full disk.
//! - An event is published only once its record is durable, or when it could not be written
//!   at all (disk full or failing: it is then kept in memory, a fault is raised through
//!   [`JournalHealth::disk_failing`], and it is sent anyway; an alarm is never held back
//!   because the disk failed).
//! - One alarm's events keep their order: they share class and priority, and ties go by
//!   `(boot, seq)`. Receivers order by `(boot, seq)` too, so a resend never rolls back.
//! - After a restart every event found on disk is pending again (at-least-once; the console
//!   drops duplicates by `event_id` and sends a receipt for them too).
//! - Each alarm's latest event is kept in [`crate::sinks::alarm_state`]'s file. A receipt deletes
//!   an event from the queue only once that file holds the alarm's state as of that event
//!   (the deletes wait for the next save, at most [`STATE_SAVE_EVERY`]), so after a crash
//!   the file plus the queue hold every alarm's latest state.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, QoS};
use shouwang_wire::{AlarmEvent, EventKey, Message, Priority, SignalClass};

use crate::sinks::queue::{DiskQueue, QueueLimits};

/// An event sent without a receipt is sent again (same `event_id`) after this long, then
/// after twice as long each time, up to [`RESEND_AFTER`]: a console that was still
/// reconnecting to a broker that restarted hears it within seconds, and a console that is
/// away for long costs one resend per event every 10 s.
pub const FIRST_RESEND_AFTER: Duration = Duration::from_secs(2);
/// The longest wait between two sends of an unconfirmed event.
pub const RESEND_AFTER: Duration = Duration::from_secs(10);

/// How long to wait for a receipt after the `sends`-th send of an event on one connection.
fn resend_after(sends: u32) -> Duration {
    FIRST_RESEND_AFTER
        .saturating_mul(1 << sends.saturating_sub(1).min(8))
        .min(RESEND_AFTER)
}
/// The alarm state file is written at most this often while alarms change (an SD card is
/// not worn by one write per event); receipts wait for it.
pub const STATE_SAVE_EVERY: Duration = Duration::from_secs(1);

/// How often events kept in memory only are tried on the disk again.
const REWRITE_EVERY: Duration = Duration::from_secs(5);

/// How often the thread wakes when nothing happens (resend and health checks).
const TURN: Duration = Duration::from_millis(50);
/// At most this many backlog events are handed to the broker link per turn (up to 2000 a
/// second): a live event queued behind them in rumqttc waits for at most this many
/// publishes (about 60 KB, half a second on a 1 Mbit/s uplink).
pub const BACKLOG_PER_TURN: usize = 100;
/// At most this many backlog events are sent on one connection and not yet confirmed: the
/// backlog drains at the pace the console stores it, not faster.
pub const BACKLOG_WINDOW: usize = 500;

/// What the runtime loop and the metrics see of the journal.
#[derive(Debug, Default)]
pub struct JournalHealth {
    /// Events not yet confirmed by the console.
    pub pending: AtomicU64,
    /// Bytes of the alarm lane on disk.
    pub bytes_on_disk: AtomicU64,
    /// Age of the oldest event not yet confirmed, in ms (0 when none).
    pub oldest_pending_ms: AtomicU64,
    /// Events confirmed by the console since start.
    pub confirmed: AtomicU64,
    /// Publishes of alarm events, first sends and resends.
    pub sends: AtomicU64,
    /// Milliseconds from record to receipt of the last confirmed event.
    pub last_delivery_ms: AtomicU64,
    /// fsyncs of the alarm lane since start.
    pub fsyncs: AtomicU64,
    /// True while the disk refuses writes: events are kept in memory only.
    pub disk_failing: AtomicBool,
    /// Records found damaged at start (skipped) and bytes of torn tails cut off.
    pub corrupt_records: AtomicU64,
    pub torn_bytes: AtomicU64,
    /// Writes of the alarm state file, and whether the last one failed.
    pub state_saves: AtomicU64,
    pub state_failing: AtomicBool,
    /// Beaten every turn of the thread, and marked ended when the thread ends (or
    /// panics): the supervisor watches it (see `supervise.rs`).
    pub heartbeat: crate::supervise::Heartbeat,
}

enum Input {
    Event(Box<AlarmEvent>),
    Receipt(Vec<EventKey>),
}

/// Where the journal publishes alarm events.
pub enum Outlet {
    /// The gateway's broker link; the console's receipts confirm events (the default).
    Client(AsyncClient),
    /// A connection of their own, on which the broker's PUBACK confirms them
    /// (`alarm_confirmation = "broker"`, see [`crate::sinks::broker_confirm`]).
    Broker(crate::sinks::broker_confirm::BrokerLink),
}

impl Outlet {
    /// Hand one event to the link; `false` when it cannot take it now.
    fn try_publish(&self, topic: &str, key: EventKey, payload: Vec<u8>) -> bool {
        match self {
            Outlet::Client(client) => client
                .try_publish(topic, QoS::AtLeastOnce, false, payload)
                .is_ok(),
            Outlet::Broker(link) => link.try_publish(topic, key, payload),
        }
    }
}

/// The handle the gateway's tasks use. Cheap to clone; the thread ends when the last
/// handle is dropped.
#[derive(Clone)]
pub struct Journal {
    tx: mpsc::Sender<Input>,
    pub health: Arc<JournalHealth>,
}

impl Journal {
    /// Open `<data_dir>/alarms` and the alarm state file, and start the thread. `link`
    /// says whether the broker link is up and counts its connections (from
    /// [`crate::sinks::mqtt`]). `known` is the config's alarm ids: the state of any other alarm
    /// (its device or rule was removed) is forgotten.
    ///
    /// Returns the journal and each known alarm's latest event from before this start (the
    /// state file merged with the events still queued), for [`crate::watch::Watch::restore`].
    pub fn start(
        data_dir: &Path,
        client: Outlet,
        events_topic: String,
        link: Arc<crate::sinks::mqtt::LinkState>,
        known: &HashSet<Arc<str>>,
    ) -> anyhow::Result<(Journal, Vec<AlarmEvent>)> {
        let health = Arc::new(JournalHealth::default());
        let dir = data_dir.join("alarms");
        let queue = match DiskQueue::open(&dir, QueueLimits::default()) {
            Ok((queue, recovery)) => {
                if recovery.corrupt_records > 0 || recovery.torn_bytes > 0 {
                    tracing::warn!(
                        corrupt_records = recovery.corrupt_records,
                        torn_bytes = recovery.torn_bytes,
                        "the alarm queue had damaged records; they were skipped"
                    );
                }
                health
                    .corrupt_records
                    .store(recovery.corrupt_records, Ordering::Relaxed);
                health
                    .torn_bytes
                    .store(recovery.torn_bytes, Ordering::Relaxed);
                Some(queue)
            }
            Err(e) => {
                // Alarms still flow, from memory; the fault says why the disk is not used.
                tracing::error!(dir = %dir.display(), error = %e, "cannot open the alarm queue; alarms are kept in memory only");
                health.disk_failing.store(true, Ordering::Relaxed);
                None
            }
        };
        let (tx, rx) = mpsc::channel();
        let mut state = Lane::new(queue, health.clone(), data_dir, known);
        let mut restored: Vec<AlarmEvent> = state.latest.values().cloned().collect();
        restored.sort_by_key(AlarmEvent::key);
        let heartbeat = health.heartbeat.clone();
        std::thread::Builder::new()
            .name("alarm-journal".into())
            .spawn(move || {
                let _ended = heartbeat.end_on_drop();
                state.run(rx, client, events_topic, link)
            })?;
        Ok((Journal { tx, health }, restored))
    }

    /// Keep an alarm event until the console confirms it. Never waits: the channel is
    /// unbounded on purpose, since an alarm may be neither dropped nor hold detection back;
    /// its length shows in `pending`.
    pub fn record(&self, event: AlarmEvent) {
        if self.tx.send(Input::Event(Box::new(event))).is_err() {
            tracing::error!("the alarm journal has stopped");
        }
    }

    /// The console stored these events.
    pub fn receipt(&self, events: Vec<EventKey>) {
        let _ = self.tx.send(Input::Receipt(events));
    }
}

/// One pending event.
struct Pending {
    event: AlarmEvent,
    /// Its record in the disk queue; `None` when it could not be written.
    record: Option<u64>,
    /// When it was recorded (monotonic), for ages and delivery latency.
    recorded: Instant,
    /// The connection it was last sent on, when, and how many times on that connection.
    /// (Whether it is live, recorded on the current connection, is kept in `Lane::live`.)
    sent: Option<(u64, Instant, u32)>,
}

/// The thread's state.
struct Lane {
    queue: Option<DiskQueue>,
    health: Arc<JournalHealth>,
    pending: BTreeMap<(u8, EventKey), Pending>,
    /// Where each pending event is in `pending`.
    rank_of: HashMap<EventKey, u8>,
    /// Records appended since the last sync.
    unsynced: bool,
    /// The last record appended.
    last_appended: Option<u64>,
    /// Records up to here may be sent: the durable ones, or after a failed sync every one
    /// appended before it (they are sent from memory rather than held back).
    sendable_upto: Option<u64>,
    /// Where the alarm state file is.
    data_dir: PathBuf,
    /// Each alarm's latest event: what the state file holds once `state_dirty` is false.
    latest: HashMap<String, AlarmEvent>,
    state_dirty: bool,
    state_saved: Option<Instant>,
    /// When events kept in memory only were last tried on the disk again.
    rewrite_tried: Option<Instant>,
    /// Records the console confirmed, deleted from the queue after the next state save.
    confirmed_records: Vec<u64>,
    // Indexes into `pending`, so a turn costs O(window + live), not O(pending):
    /// Pending events that happened on connection `live_conn` (live: sent first).
    live: BTreeSet<(u8, EventKey)>,
    live_conn: u64,
    /// Backlog events sent on connection `live_conn` and not yet confirmed: the window.
    in_window: BTreeSet<(u8, EventKey)>,
    /// Pending events by when they were recorded: the first is the oldest.
    by_age: BTreeSet<(Instant, EventKey)>,
}

/// Most urgent first when iterating ascending: alarm, supervisory, fault; high priority
/// first.
fn rank(event: &AlarmEvent) -> u8 {
    let class = match event.class {
        SignalClass::Alarm => 0,
        SignalClass::Supervisory => 1,
        SignalClass::Fault => 2,
    };
    let priority = match event.priority {
        Priority::High => 0,
        Priority::Medium => 1,
        Priority::Low => 2,
    };
    class * 3 + priority
}

impl Lane {
    fn new(
        mut queue: Option<DiskQueue>,
        health: Arc<JournalHealth>,
        data_dir: &Path,
        known: &HashSet<Arc<str>>,
    ) -> Lane {
        let mut lane = Lane {
            queue: None,
            health,
            pending: BTreeMap::new(),
            rank_of: HashMap::new(),
            unsynced: false,
            last_appended: None,
            sendable_upto: queue.as_ref().and_then(DiskQueue::durable_seq),
            data_dir: data_dir.to_path_buf(),
            latest: HashMap::new(),
            state_dirty: false,
            state_saved: None,
            rewrite_tried: None,
            confirmed_records: Vec::new(),
            live: BTreeSet::new(),
            live_conn: 0,
            in_window: BTreeSet::new(),
            by_age: BTreeSet::new(),
        };
        match crate::sinks::alarm_state::load(data_dir) {
            Ok(loaded) => {
                if loaded.bad_lines > 0 {
                    tracing::warn!(
                        lines = loaded.bad_lines,
                        "the alarm state file had damaged lines; those alarms start normal"
                    );
                }
                for event in loaded.events {
                    crate::sinks::alarm_state::merge(&mut lane.latest, event);
                }
            }
            Err(e) => {
                // The console's reconciliation (the snapshot) puts the board right.
                tracing::error!(error = %e, "cannot read the alarm state; every alarm starts normal");
            }
        }
        // What a previous run left: pending again, as backlog.
        if let Some(q) = queue.as_mut() {
            let seqs: Vec<u64> = q.pending().collect();
            for seq in seqs {
                match q
                    .read(seq)
                    .map(|p| p.map(|bytes| AlarmEvent::decode(&bytes)))
                {
                    Ok(Some(Ok(event))) => {
                        // Newer than the file: the file must catch up before the
                        // record may leave the queue.
                        if crate::sinks::alarm_state::merge(&mut lane.latest, event.clone()) {
                            lane.state_dirty = true;
                        }
                        lane.insert(event, Some(seq), 0);
                    }
                    Ok(Some(Err(e))) => {
                        tracing::error!(seq, error = %e, "a queued alarm record does not decode; dropped");
                        q.ack(seq);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::error!(seq, error = %e, "cannot read a queued alarm record");
                    }
                }
            }
            if !lane.pending.is_empty() {
                tracing::info!(
                    events = lane.pending.len(),
                    "alarm events from before the restart are pending again"
                );
            }
        }
        lane.queue = queue;
        let before = lane.latest.len();
        lane.latest.retain(|id, _| known.contains(id.as_str()));
        if lane.latest.len() != before {
            tracing::info!(
                alarms = before - lane.latest.len(),
                "forgot the state of alarms no longer in the config"
            );
            lane.state_dirty = true;
        }
        lane
    }

    fn insert(&mut self, event: AlarmEvent, record: Option<u64>, live_since: u64) {
        let r = rank(&event);
        let key = event.key();
        let recorded = Instant::now();
        self.rank_of.insert(key, r);
        if live_since > 0 && live_since == self.live_conn {
            self.live.insert((r, key));
        }
        self.by_age.insert((recorded, key));
        self.pending.insert(
            (r, key),
            Pending {
                event,
                record,
                recorded,
                sent: None,
            },
        );
    }

    /// A new connection: what was live is backlog now, and nothing is in its window yet.
    fn on_connection(&mut self, connection: u64) {
        if connection != self.live_conn {
            self.live.clear();
            self.in_window.clear();
            self.live_conn = connection;
        }
    }

    fn run(
        &mut self,
        rx: mpsc::Receiver<Input>,
        client: Outlet,
        topic: String,
        link: Arc<crate::sinks::mqtt::LinkState>,
    ) {
        loop {
            self.health.heartbeat.beat();
            let first = match rx.recv_timeout(TURN) {
                Ok(input) => Some(input),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.save_state(true);
                    self.sync();
                    return;
                }
            };
            let connection = link.connections.load(Ordering::Relaxed);
            self.on_connection(connection);
            for input in first.into_iter().chain(rx.try_iter()) {
                match input {
                    Input::Event(event) => self.append(*event, connection),
                    Input::Receipt(keys) => self.confirm(&keys),
                }
            }
            self.rewrite_memory_only();
            self.sync();
            if link.connected.load(Ordering::Relaxed) {
                self.publish(&client, &topic, connection);
            }
            // After the publish: writing the state file (once a second while alarms change)
            // can take milliseconds on an SD card, and an alarm on disk need not wait for
            // it. The records it lets go of are synced on the next turn.
            self.save_state(false);
            self.report();
        }
    }

    fn append(&mut self, event: AlarmEvent, connection: u64) {
        let record = match self.queue.as_mut() {
            Some(q) => match q.append(&event.encode()) {
                Ok(seq) => {
                    self.unsynced = true;
                    self.last_appended = Some(seq);
                    Some(seq)
                }
                Err(e) => {
                    if !self.health.disk_failing.swap(true, Ordering::Relaxed) {
                        tracing::error!(error = %e, "cannot write an alarm event to disk; keeping alarms in memory");
                    }
                    None
                }
            },
            None => None,
        };
        if crate::sinks::alarm_state::merge(&mut self.latest, event.clone()) {
            self.state_dirty = true;
        }
        // Live if it happened on the current connection (or while the link is down, so it
        // goes first once the link comes back).
        self.insert(event, record, connection);
    }

    /// Events kept in memory only (the disk refused them) are written again once the disk
    /// may take them (tried every [`REWRITE_EVERY`]), so a restart after the disk came back
    /// does not lose them.
    fn rewrite_memory_only(&mut self) {
        if !self.health.disk_failing.load(Ordering::Relaxed)
            || self
                .rewrite_tried
                .is_some_and(|at| at.elapsed() < REWRITE_EVERY)
        {
            return;
        }
        self.rewrite_tried = Some(Instant::now());
        let Some(q) = self.queue.as_mut() else {
            return;
        };
        for p in self.pending.values_mut().filter(|p| p.record.is_none()) {
            match q.append(&p.event.encode()) {
                Ok(seq) => {
                    p.record = Some(seq);
                    self.unsynced = true;
                    self.last_appended = Some(seq);
                }
                Err(_) => return, // still full: try again later
            }
        }
        // Nothing was left in memory only: the next sync says whether the disk is back.
        self.unsynced = true;
    }

    fn sync(&mut self) {
        if !self.unsynced {
            return;
        }
        let Some(q) = self.queue.as_mut() else { return };
        match q.sync() {
            Ok(()) => {
                self.unsynced = false;
                self.sendable_upto = q.durable_seq();
                if self.health.disk_failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("the alarm queue writes to disk again");
                }
            }
            Err(e) => {
                if !self.health.disk_failing.swap(true, Ordering::Relaxed) {
                    tracing::error!(error = %e, "cannot sync the alarm queue; alarms are sent from memory");
                }
                // Not retried here: the records are sent anyway (see the module docs).
                self.unsynced = false;
                self.sendable_upto = self.last_appended;
            }
        }
    }

    fn confirm(&mut self, keys: &[EventKey]) {
        for key in keys {
            let Some(r) = self.rank_of.remove(key) else {
                continue; // already confirmed, or never ours
            };
            self.live.remove(&(r, *key));
            self.in_window.remove(&(r, *key));
            if let Some(p) = self.pending.remove(&(r, *key)) {
                self.by_age.remove(&(p.recorded, *key));
                if let Some(seq) = p.record {
                    self.confirmed_records.push(seq);
                }
                self.health.confirmed.fetch_add(1, Ordering::Relaxed);
                self.health.last_delivery_ms.store(
                    u64::try_from(p.recorded.elapsed().as_millis()).unwrap_or(u64::MAX),
                    Ordering::Relaxed,
                );
            }
        }
    }

    /// Write the alarm state file if alarms changed and the last write is at least
    /// [`STATE_SAVE_EVERY`] old (or `now`), then delete the confirmed records it covers.
    fn save_state(&mut self, now: bool) {
        if self.state_dirty {
            let due = now
                || self
                    .state_saved
                    .is_none_or(|at| at.elapsed() >= STATE_SAVE_EVERY);
            if !due {
                return;
            }
            self.state_saved = Some(Instant::now());
            match crate::sinks::alarm_state::save(&self.data_dir, self.latest.values()) {
                Ok(()) => {
                    self.state_dirty = false;
                    self.health.state_saves.fetch_add(1, Ordering::Relaxed);
                    if self.health.state_failing.swap(false, Ordering::Relaxed) {
                        tracing::info!("the alarm state is written to disk again");
                    }
                }
                Err(e) => {
                    // The queue keeps the confirmed records meanwhile: they are the state.
                    if !self.health.state_failing.swap(true, Ordering::Relaxed) {
                        tracing::error!(error = %e, "cannot write the alarm state; confirmed events stay queued");
                    }
                    return;
                }
            }
        }
        if self.confirmed_records.is_empty() {
            return;
        }
        if let Some(q) = self.queue.as_mut() {
            for seq in self.confirmed_records.drain(..) {
                q.ack(seq);
            }
            self.unsynced = true; // lets sync() move the floor and delete segments
        } else {
            self.confirmed_records.clear();
        }
    }

    fn publish(&mut self, client: &Outlet, topic: &str, connection: u64) {
        self.on_connection(connection);
        let sendable = self.sendable_upto;
        let now = Instant::now();
        let due = |p: &Pending| {
            let written = p
                .record
                .is_none_or(|seq| sendable.is_some_and(|d| seq <= d));
            let unsent = match p.sent {
                None => true,
                Some((conn, at, sends)) => {
                    conn != connection || now.duration_since(at) >= resend_after(sends)
                }
            };
            written && unsent
        };
        let health = &self.health;
        // Hand one event to the link; false when it cannot take more this turn.
        let send = |p: &mut Pending| -> bool {
            if !client.try_publish(topic, p.event.key(), p.event.encode()) {
                // rumqttc's request channel is full (or the link just went down).
                return false;
            }
            let sends = match p.sent {
                Some((conn, _, n)) if conn == connection => n.saturating_add(1),
                _ => 1,
            };
            p.sent = Some((connection, now, sends));
            health.sends.fetch_add(1, Ordering::Relaxed);
            true
        };
        let Lane {
            pending,
            live,
            in_window,
            ..
        } = self;
        // Live events first, all that are due.
        for key in live.iter() {
            if let Some(p) = pending.get_mut(key)
                && due(p)
                && !send(p)
            {
                return;
            }
        }
        // Then the backlog within the turn's budget: resends of events in the window, then
        // events not yet sent on this connection while the window has room.
        let mut budget = BACKLOG_PER_TURN;
        for key in in_window.iter() {
            if budget == 0 {
                return;
            }
            if let Some(p) = pending.get_mut(key)
                && due(p)
            {
                budget -= 1;
                if !send(p) {
                    return;
                }
            }
        }
        let mut room = BACKLOG_WINDOW.saturating_sub(in_window.len());
        for (key, p) in pending.iter_mut() {
            if budget == 0 || room == 0 {
                return;
            }
            if live.contains(key) || in_window.contains(key) || !due(p) {
                continue;
            }
            budget -= 1;
            room -= 1;
            if !send(p) {
                return;
            }
            in_window.insert(*key);
        }
    }

    fn report(&self) {
        let h = &self.health;
        h.pending
            .store(self.pending.len() as u64, Ordering::Relaxed);
        let oldest = self
            .by_age
            .first()
            .map(|(recorded, _)| recorded.elapsed())
            .unwrap_or_default();
        h.oldest_pending_ms.store(
            u64::try_from(oldest.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        if let Some(q) = &self.queue {
            let stats = q.stats();
            h.bytes_on_disk
                .store(stats.bytes_on_disk, Ordering::Relaxed);
            h.fsyncs.store(stats.fsyncs, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unconfirmed_event_is_sent_again_after_2_4_8_then_every_10_seconds() {
        let waits: Vec<u64> = (1..=6).map(|n| resend_after(n).as_secs()).collect();
        assert_eq!(waits, [2, 4, 8, 10, 10, 10]);
        assert_eq!(resend_after(u32::MAX), RESEND_AFTER);
    }

    #[test]
    fn fire_alarms_rank_before_supervisory_before_faults_and_high_before_low() {
        let mut event = AlarmEvent::example("c:g:d:r", 1, 1);
        event.class = SignalClass::Fault;
        event.priority = Priority::Low;
        let fault_low = rank(&event);
        event.class = SignalClass::Supervisory;
        event.priority = Priority::High;
        let supervisory_high = rank(&event);
        event.class = SignalClass::Alarm;
        event.priority = Priority::Low;
        let alarm_low = rank(&event);
        event.priority = Priority::High;
        let alarm_high = rank(&event);
        assert!(alarm_high < alarm_low);
        assert!(alarm_low < supervisory_high);
        assert!(supervisory_high < fault_low);
    }

    fn event(alarm: &str, seq: u64) -> AlarmEvent {
        AlarmEvent::example(alarm, 1, seq)
    }

    fn lane(dir: &Path, known: &[&str]) -> Lane {
        let (queue, _) = DiskQueue::open(&dir.join("alarms"), QueueLimits::default()).unwrap();
        let known = known.iter().map(|s| Arc::from(*s)).collect();
        Lane::new(Some(queue), Arc::default(), dir, &known)
    }

    #[test]
    fn confirmed_events_leave_the_queue_only_once_the_state_file_holds_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = lane(dir.path(), &["a", "b"]);
        l.append(event("a", 1), 1);
        l.append(event("b", 2), 1);
        l.sync();
        l.save_state(false); // the first save is due at once
        l.append(event("a", 3), 1);
        l.sync();
        l.confirm(&[
            EventKey { boot: 1, seq: 1 },
            EventKey { boot: 1, seq: 2 },
            EventKey { boot: 1, seq: 3 },
        ]);
        // Saved less than STATE_SAVE_EVERY ago: the deletes wait, the records stay queued.
        l.save_state(false);
        assert_eq!(l.confirmed_records.len(), 3);
        assert_eq!(l.queue.as_ref().unwrap().pending().count(), 3);
        drop(l); // a crash now: the file has a@1 and b@2, the queue a@3
        let l = lane(dir.path(), &["a", "b"]);
        assert_eq!(l.latest["a"].seq, 3);
        assert_eq!(l.latest["b"].seq, 2);

        // Saving at shutdown deletes them; the file alone then holds the state.
        let mut l = l;
        let keys: Vec<EventKey> = l.rank_of.keys().copied().collect();
        l.confirm(&keys);
        l.save_state(true);
        l.sync();
        assert_eq!(l.queue.as_ref().unwrap().pending().count(), 0);
        drop(l);
        let l = lane(dir.path(), &["a", "b"]);
        assert!(l.pending.is_empty());
        assert_eq!(l.latest["a"].seq, 3);
    }

    #[test]
    fn the_state_of_an_alarm_removed_from_the_config_is_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = lane(dir.path(), &["a", "gone"]);
        l.append(event("a", 1), 1);
        l.append(event("gone", 2), 1);
        l.save_state(true);
        drop(l);
        let mut l = lane(dir.path(), &["a"]);
        assert!(l.latest.contains_key("a"));
        assert!(!l.latest.contains_key("gone"));
        l.save_state(true);
        let saved = crate::sinks::alarm_state::load(dir.path()).unwrap();
        assert_eq!(saved.events.len(), 1);
    }

    #[test]
    fn a_backlog_drains_at_most_a_turns_budget_at_a_time_and_within_its_window() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = lane(dir.path(), &["a"]);
        for seq in 1..=1000 {
            l.append(event("a", seq), 0); // recorded before connection 1: backlog
        }
        l.sync();
        let options = rumqttc::MqttOptions::new("t", "127.0.0.1", 1);
        let (client, _eventloop) = AsyncClient::new(options, 10_000);
        let outlet = Outlet::Client(client);
        l.publish(&outlet, "t", 1);
        assert_eq!(
            l.health.sends.load(Ordering::Relaxed),
            BACKLOG_PER_TURN as u64
        );
        for _ in 0..20 {
            l.publish(&outlet, "t", 1);
        }
        // No receipt came: no more than the window is out.
        assert_eq!(
            l.health.sends.load(Ordering::Relaxed),
            BACKLOG_WINDOW as u64
        );
        // Receipts open the window again.
        let keys: Vec<EventKey> = (1..=200).map(|seq| EventKey { boot: 1, seq }).collect();
        l.confirm(&keys);
        for _ in 0..5 {
            l.publish(&outlet, "t", 1);
        }
        assert_eq!(
            l.health.sends.load(Ordering::Relaxed),
            BACKLOG_WINDOW as u64 + 200
        );
        // A live event goes at once, window or not.
        l.append(event("a", 1001), 1);
        l.sync();
        l.publish(&outlet, "t", 1);
        assert_eq!(
            l.health.sends.load(Ordering::Relaxed),
            BACKLOG_WINDOW as u64 + 201
        );
    }

    #[test]
    fn a_live_event_unconfirmed_on_one_connection_is_backlog_on_the_next_and_a_receipt_clears_every_index()
     {
        let dir = tempfile::tempdir().unwrap();
        let mut l = lane(dir.path(), &["a"]);
        let options = rumqttc::MqttOptions::new("t", "127.0.0.1", 1);
        let (client, _eventloop) = AsyncClient::new(options, 100);
        let outlet = Outlet::Client(client);
        l.on_connection(1);
        l.append(event("a", 1), 1);
        l.sync();
        assert_eq!(l.live.len(), 1);
        l.publish(&outlet, "t", 1);
        l.publish(&outlet, "t", 1); // not due again yet
        assert_eq!(l.health.sends.load(Ordering::Relaxed), 1);
        // The link drops and comes back: the event is backlog now, sent once more.
        l.publish(&outlet, "t", 2);
        assert!(l.live.is_empty());
        assert_eq!(l.in_window.len(), 1);
        assert_eq!(l.health.sends.load(Ordering::Relaxed), 2);
        l.report();
        assert_eq!(l.health.pending.load(Ordering::Relaxed), 1);
        l.confirm(&[EventKey { boot: 1, seq: 1 }]);
        assert!(l.in_window.is_empty() && l.by_age.is_empty() && l.pending.is_empty());
        l.report();
        assert_eq!(l.health.oldest_pending_ms.load(Ordering::Relaxed), 0);
    }

    #[test]
    #[ignore = "a measurement, not a check"]
    fn measure_a_turn_with_100k_pending() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = lane(dir.path(), &["a"]);
        for seq in 1..=100_000 {
            l.append(event("a", seq), 0);
        }
        l.sync();
        let options = rumqttc::MqttOptions::new("t", "127.0.0.1", 1);
        let (client, _eventloop) = AsyncClient::new(options, 1_000_000);
        let outlet = Outlet::Client(client);
        let turns = 50;
        let t = Instant::now();
        for _ in 0..turns {
            l.publish(&outlet, "t", 1);
            l.report();
        }
        eprintln!("turn with 100k pending: {:?}", t.elapsed() / turns);
    }
}
