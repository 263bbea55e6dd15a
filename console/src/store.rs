//! The console's durable store: alarm events, current alarm states, gateway status and the
//! acknowledgement commands the console sent. One SQLite file in WAL mode.
//!
//! # Invariants
//!
//! - **Dedup by `event_id`.** `events.event_id` is the primary key: an event that arrives again
//!   (a QoS 1 redelivery, a gateway resending after a reconnect) is dropped and reported as
//!   [`EventOutcome::Duplicate`]; it never adds a second history entry or changes a state.
//! - **Newest wins, by the gateway's `(boot, seq)`.** An alarm's current state is the state of
//!   its event with the greatest `(boot, seq)`: the order the gateway produced them in, which
//!   survives gateway restarts. Wall-clock `ts_ms` is never compared (a gateway's clock may be
//!   off by days or step back); it is only shown. Equal keys go to the event that arrived last
//!   (`arrival` is a counter the store assigns inside the insert transaction). An older event
//!   that arrives late is kept in the history but does not roll the state back
//!   ([`EventOutcome::Late`]).
//! - **Gateway status: last arrival wins.** The broker's last will carries the time the gateway
//!   *connected*, so timestamps cannot order `online` against `offline`; MQTT's per-topic
//!   ordering does.
//! - Every write is one transaction, so a crash leaves either the whole event (history and
//!   state) or none of it. `synchronous = FULL`: a committed event survives a power cut,
//!   which the receipt sent to the gateway after the commit relies on.
//!
//! # On disk (schema version 2, `PRAGMA user_version`; version 1 is migrated on open)
//!
//! - `events(event_id PK, arrival UNIQUE, alarm_id, ts_ms, received_ms, json, boot, seq)`:
//!   every distinct event, `json` being the event re-encoded by `shouwang-wire`. Rows
//!   written before the wire's alarm events reached schema version 2 hold version 1 events
//!   (a place with `unit`, no grid, entrance or names); every `json` is read through
//!   [`Message::decode`], which reads those in today's shape, so no row is ever rewritten
//!   (a migration that rewrote a long history would hold the console's start for minutes).
//! - `alarms(alarm_id PK, state, ts_ms, arrival, community, updated_ms, json, boot, seq)`: the current
//!   event per alarm; `community` is where acknowledgements are routed; `updated_ms` is when
//!   the console recorded that event (console clock).
//! - `gateways(community, gateway, received_ms, json)`, primary key `(community, gateway)`.
//! - `commands(command_id PK, alarm_id, gateway, community, operator, issued_ms, status,
//!   error, replied_ms)`: `status` is `pending`, `ok` or `error`.
//!
//! [`Store`] is synchronous and owns its connection; [`StoreHandle`] runs it on a dedicated
//! thread behind a bounded queue so async code never blocks on SQLite.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::Serialize;
use shouwang_wire::{AlarmEvent, AlarmState, CommandReply, GatewayStatus, Message, TransitionKind};
use tokio::sync::{mpsc, oneshot};

/// The schema this build writes; stored in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 2;

/// The most history entries [`Store::alarm`] returns (the newest ones). A chattering point can
/// produce thousands of events; the board needs the recent ones.
pub const HISTORY_LIMIT: usize = 1000;

/// How many store calls may wait for the store thread. When full, callers wait: the MQTT
/// reader then stops reading, and the broker holds QoS 1 events for us (no event is shed).
const QUEUE_CAPACITY: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("a stored message does not decode: {0}")]
    Stored(#[from] shouwang_wire::WireError),
    #[error("database {path} has schema version {found}, this build understands {SCHEMA_VERSION}")]
    Schema { path: String, found: i64 },
    #[error("the store thread has stopped")]
    Closed,
}

/// An alarm as the board shows it: every field of its current event, plus when the console
/// recorded that event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlarmView {
    #[serde(flatten)]
    pub event: AlarmEvent,
    /// When the console stored the current event, ms since the Unix epoch (console clock).
    pub updated_ms: i64,
    /// When the alarm was last raised (its newest `raised` event's `ts_ms`), if ever: the
    /// time the board shows, since an acknowledgement or a clear moves `ts_ms`.
    pub raised_ms: Option<i64>,
}

/// One alarm with its history, oldest first (at most [`HISTORY_LIMIT`] newest events).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlarmDetail {
    #[serde(flatten)]
    pub alarm: AlarmView,
    pub history: Vec<AlarmEvent>,
}

/// Where an acknowledgement for an alarm goes, with the alarm's current view.
#[derive(Debug, Clone, PartialEq)]
pub struct AckTarget {
    pub alarm: AlarmView,
    /// The community of the gateway that owns the alarm (the event's `place.community`, or
    /// the topic's community when the event left it empty).
    pub community: String,
}

/// What storing one event did.
#[derive(Debug, Clone, PartialEq)]
pub enum EventOutcome {
    /// The `event_id` was already stored; nothing changed.
    Duplicate,
    /// Stored in the history, but an event with a later `ts_ms` is already current.
    Late,
    /// Stored, and it is now the alarm's current state.
    Current(Box<AlarmView>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandStatus {
    /// Sent (or being sent); no reply from the gateway yet.
    Pending,
    /// The gateway carried it out.
    Ok,
    /// The gateway refused it, or it could not be sent.
    Error,
}

impl CommandStatus {
    fn as_str(self) -> &'static str {
        match self {
            CommandStatus::Pending => "pending",
            CommandStatus::Ok => "ok",
            CommandStatus::Error => "error",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "ok" => CommandStatus::Ok,
            "error" => CommandStatus::Error,
            _ => CommandStatus::Pending,
        }
    }
}

/// An acknowledgement command the console sent, and what became of it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CommandRecord {
    pub command_id: String,
    pub alarm_id: String,
    pub gateway: String,
    pub community: String,
    pub operator: String,
    pub issued_ms: i64,
    pub status: CommandStatus,
    /// Why it failed, when `status` is `error`.
    pub error: Option<String>,
    /// When the reply arrived (console clock).
    pub replied_ms: Option<i64>,
}

/// The alarm state as its wire name (`normal`, `unacknowledged`, ...), the form stored in
/// `alarms.state`. Goes through serde so a state added to the rules crate needs no change here.
pub fn state_name(state: AlarmState) -> String {
    match serde_json::to_value(state) {
        Ok(serde_json::Value::String(s)) => s,
        _ => format!("{state:?}"),
    }
}

/// The synchronous store. Owns one SQLite connection.
pub struct Store {
    conn: Connection,
}

impl Store {
    /// Open (creating if missing) the database at `path`, switch it to WAL and create the
    /// schema.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL, not NORMAL: in WAL mode NORMAL may lose the last commits on a power cut
        // (not corrupt them). The console tells the gateway it stored an event (a receipt)
        // right after the commit, and the gateway then deletes its copy, so a commit must
        // be on disk before that: one fsync per transaction.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::Schema {
                path: path.display().to_string(),
                found,
            });
        }
        conn.execute_batch(
            "BEGIN;
            CREATE TABLE IF NOT EXISTS events (
                event_id    TEXT PRIMARY KEY,
                arrival     INTEGER NOT NULL UNIQUE,
                alarm_id    TEXT NOT NULL,
                ts_ms       INTEGER NOT NULL,
                received_ms INTEGER NOT NULL,
                json        TEXT NOT NULL
            );
            CREATE INDEX IF NOT EXISTS events_by_alarm ON events (alarm_id, ts_ms, arrival);
            CREATE TABLE IF NOT EXISTS alarms (
                alarm_id   TEXT PRIMARY KEY,
                state      TEXT NOT NULL,
                ts_ms      INTEGER NOT NULL,
                arrival    INTEGER NOT NULL,
                community  TEXT NOT NULL,
                updated_ms INTEGER NOT NULL,
                raised_ms  INTEGER,
                json       TEXT NOT NULL
            );
            CREATE INDEX IF NOT EXISTS alarms_by_time ON alarms (ts_ms, arrival);
            CREATE TABLE IF NOT EXISTS gateways (
                community   TEXT NOT NULL,
                gateway     TEXT NOT NULL,
                received_ms INTEGER NOT NULL,
                json        TEXT NOT NULL,
                PRIMARY KEY (community, gateway)
            );
            CREATE TABLE IF NOT EXISTS commands (
                command_id TEXT PRIMARY KEY,
                alarm_id   TEXT NOT NULL,
                gateway    TEXT NOT NULL,
                community  TEXT NOT NULL,
                operator   TEXT NOT NULL,
                issued_ms  INTEGER NOT NULL,
                status     TEXT NOT NULL,
                error      TEXT,
                replied_ms INTEGER
            );
            COMMIT;",
        )?;
        if found < 2 {
            // Version 1 ordered by wall-clock time; events from before have no sequence and
            // sort before every new one.
            conn.execute_batch(
                "BEGIN;
                ALTER TABLE events ADD COLUMN boot INTEGER NOT NULL DEFAULT 0;
                ALTER TABLE events ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
                ALTER TABLE alarms ADD COLUMN boot INTEGER NOT NULL DEFAULT 0;
                ALTER TABLE alarms ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
                CREATE INDEX IF NOT EXISTS events_by_alarm_seq ON events (alarm_id, boot, seq);
                PRAGMA user_version = 2;
                COMMIT;",
            )?;
        }
        Ok(Store { conn })
    }

    /// Store one event: drop it if its `event_id` is known, else add it to the history and
    /// make it current unless a newer event is (see the module invariants).
    /// `topic_community` is the community of the topic it came on, used to route
    /// acknowledgements when the event's `place.community` is empty.
    pub fn apply_event(
        &mut self,
        event: &AlarmEvent,
        topic_community: &str,
        received_ms: i64,
    ) -> Result<EventOutcome, StoreError> {
        let mut outcomes = self.apply_events(&[(event, topic_community, received_ms)])?;
        outcomes.pop().ok_or(StoreError::Closed)
    }

    /// Store several events in one transaction: one commit, so one fsync, for a burst
    /// (group commit). Each is judged as [`Store::apply_event`] would, in the order given;
    /// either all are stored or none is.
    pub fn apply_events(
        &mut self,
        events: &[(&AlarmEvent, &str, i64)],
    ) -> Result<Vec<EventOutcome>, StoreError> {
        // IMMEDIATE: take the write lock first, so `arrival` is computed and used atomically.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut outcomes = Vec::with_capacity(events.len());
        for (event, topic_community, received_ms) in events {
            outcomes.push(apply_in(&tx, event, topic_community, *received_ms)?);
        }
        tx.commit()?;
        Ok(outcomes)
    }

    /// Current alarms, newest first by `(ts_ms, arrival)`; those in state `normal` only when
    /// `all` is true.
    pub fn alarms(&self, all: bool) -> Result<Vec<AlarmView>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT json, updated_ms, raised_ms FROM alarms
             WHERE ?1 OR state <> 'normal'
             ORDER BY ts_ms DESC, arrival DESC",
        )?;
        let rows = stmt.query_map(params![all], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Option<i64>>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (json, updated_ms, raised_ms) = row?;
            out.push(AlarmView {
                event: stored(&json)?,
                updated_ms,
                raised_ms,
            });
        }
        Ok(out)
    }

    /// The current event of every alarm of one gateway (`<community>:<gateway>:...`) that
    /// is not normal: what a snapshot reconciles.
    pub fn open_alarms_of(
        &self,
        community: &str,
        gateway: &str,
    ) -> Result<Vec<AlarmEvent>, StoreError> {
        let prefix = format!("{community}:{gateway}:");
        let mut stmt = self.conn.prepare_cached(
            "SELECT json FROM alarms
             WHERE substr(alarm_id, 1, length(?1)) = ?1 AND state <> 'normal'",
        )?;
        let rows = stmt.query_map(params![prefix], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for json in rows {
            out.push(stored(&json?)?);
        }
        Ok(out)
    }

    /// One alarm and where acknowledgements for it go.
    pub fn ack_target(&self, alarm_id: &str) -> Result<Option<AckTarget>, StoreError> {
        let row = self
            .conn
            .query_row(
                "SELECT json, updated_ms, community, raised_ms FROM alarms WHERE alarm_id = ?1",
                params![alarm_id],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, Option<i64>>(3)?,
                    ))
                },
            )
            .optional()?;
        let Some((json, updated_ms, community, raised_ms)) = row else {
            return Ok(None);
        };
        Ok(Some(AckTarget {
            alarm: AlarmView {
                event: stored(&json)?,
                updated_ms,
                raised_ms,
            },
            community,
        }))
    }

    /// One alarm with its newest [`HISTORY_LIMIT`] events, oldest first.
    pub fn alarm(&self, alarm_id: &str) -> Result<Option<AlarmDetail>, StoreError> {
        let Some(target) = self.ack_target(alarm_id)? else {
            return Ok(None);
        };
        let mut stmt = self.conn.prepare_cached(
            "SELECT json FROM events WHERE alarm_id = ?1
             ORDER BY boot DESC, seq DESC, arrival DESC LIMIT ?2",
        )?;
        let limit = i64::try_from(HISTORY_LIMIT).unwrap_or(i64::MAX);
        let rows = stmt.query_map(params![alarm_id, limit], |r| r.get::<_, String>(0))?;
        let mut history = Vec::new();
        for json in rows {
            history.push(stored(&json?)?);
        }
        history.reverse();
        Ok(Some(AlarmDetail {
            alarm: target.alarm,
            history,
        }))
    }

    /// Record a gateway's status; the last one to arrive wins.
    pub fn put_gateway(
        &mut self,
        status: &GatewayStatus,
        received_ms: i64,
    ) -> Result<(), StoreError> {
        let json = String::from_utf8_lossy(&status.encode()).into_owned();
        self.conn.execute(
            "INSERT INTO gateways (community, gateway, received_ms, json)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (community, gateway) DO UPDATE SET
                received_ms = excluded.received_ms, json = excluded.json",
            params![status.community, status.gateway, received_ms, json],
        )?;
        Ok(())
    }

    /// The latest status of every gateway, by community then gateway.
    pub fn gateways(&self) -> Result<Vec<GatewayStatus>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT json FROM gateways ORDER BY community, gateway")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for json in rows {
            out.push(stored(&json?)?);
        }
        Ok(out)
    }

    /// Remember a command before it is published, so its reply always finds it.
    pub fn insert_command(&mut self, cmd: &CommandRecord) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO commands
                (command_id, alarm_id, gateway, community, operator, issued_ms, status, error,
                 replied_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                cmd.command_id,
                cmd.alarm_id,
                cmd.gateway,
                cmd.community,
                cmd.operator,
                cmd.issued_ms,
                cmd.status.as_str(),
                cmd.error,
                cmd.replied_ms
            ],
        )?;
        Ok(())
    }

    /// Mark a command failed without a reply (e.g. it could not be published).
    pub fn fail_command(&mut self, command_id: &str, error: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE commands SET status = 'error', error = ?2 WHERE command_id = ?1",
            params![command_id, error],
        )?;
        Ok(())
    }

    /// Record a gateway's reply. `None` when no command of this console has that id (another
    /// console on the same broker sent it).
    pub fn record_reply(
        &mut self,
        reply: &CommandReply,
        received_ms: i64,
    ) -> Result<Option<CommandRecord>, StoreError> {
        let (status, error) = if reply.ok {
            (CommandStatus::Ok, None)
        } else {
            (
                CommandStatus::Error,
                Some(
                    reply
                        .error
                        .clone()
                        .unwrap_or_else(|| "refused by the gateway without a reason".into()),
                ),
            )
        };
        let changed = self.conn.execute(
            "UPDATE commands SET status = ?2, error = ?3, replied_ms = ?4 WHERE command_id = ?1",
            params![reply.command_id, status.as_str(), error, received_ms],
        )?;
        if changed == 0 {
            return Ok(None);
        }
        self.command(&reply.command_id)
    }

    pub fn command(&self, command_id: &str) -> Result<Option<CommandRecord>, StoreError> {
        let rec = self
            .conn
            .query_row(
                "SELECT command_id, alarm_id, gateway, community, operator, issued_ms, status,
                        error, replied_ms
                 FROM commands WHERE command_id = ?1",
                params![command_id],
                |r| {
                    Ok(CommandRecord {
                        command_id: r.get(0)?,
                        alarm_id: r.get(1)?,
                        gateway: r.get(2)?,
                        community: r.get(3)?,
                        operator: r.get(4)?,
                        issued_ms: r.get(5)?,
                        status: CommandStatus::parse(&r.get::<_, String>(6)?),
                        error: r.get(7)?,
                        replied_ms: r.get(8)?,
                    })
                },
            )
            .optional()?;
        Ok(rec)
    }
}

/// A message as the store keeps it, in today's shape whichever schema version it was
/// written in (see the module's "On disk").
fn stored<M: Message>(json: &str) -> Result<M, StoreError> {
    Ok(M::decode(json.as_bytes())?)
}

/// One event, inside the caller's transaction (see [`Store::apply_event`]).
fn apply_in(
    tx: &rusqlite::Transaction<'_>,
    event: &AlarmEvent,
    topic_community: &str,
    received_ms: i64,
) -> Result<EventOutcome, StoreError> {
    let json = String::from_utf8_lossy(&event.encode()).into_owned();
    let community = if event.place.community.is_empty() {
        topic_community
    } else {
        event.place.community.as_str()
    };
    let arrival: i64 = tx.query_row(
        "SELECT COALESCE(MAX(arrival), 0) + 1 FROM events",
        [],
        |r| r.get(0),
    )?;
    let inserted = tx.execute(
        "INSERT INTO events (event_id, arrival, alarm_id, ts_ms, received_ms, json, boot, seq)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (event_id) DO NOTHING",
        params![
            event.event_id,
            arrival,
            event.alarm_id,
            event.ts_ms,
            received_ms,
            json,
            sql_u64(event.boot),
            sql_u64(event.seq)
        ],
    )?;
    if inserted == 0 {
        return Ok(EventOutcome::Duplicate);
    }
    // `arrival` only grows, so "(boot, seq, arrival) is newer" reduces to "(boot, seq)
    // is not older".
    let current = tx.execute(
        "INSERT INTO alarms
            (alarm_id, state, ts_ms, arrival, community, updated_ms, json, raised_ms,
             boot, seq)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
         ON CONFLICT (alarm_id) DO UPDATE SET
            state = excluded.state, ts_ms = excluded.ts_ms, arrival = excluded.arrival,
            community = excluded.community, updated_ms = excluded.updated_ms,
            json = excluded.json,
            raised_ms = COALESCE(excluded.raised_ms, alarms.raised_ms),
            boot = excluded.boot, seq = excluded.seq
         WHERE (excluded.boot, excluded.seq) >= (alarms.boot, alarms.seq)",
        params![
            event.alarm_id,
            state_name(event.state),
            event.ts_ms,
            arrival,
            community,
            received_ms,
            json,
            (event.transition == TransitionKind::Raised).then_some(event.ts_ms),
            sql_u64(event.boot),
            sql_u64(event.seq)
        ],
    )?;
    let raised_ms: Option<i64> = if current == 0 {
        None
    } else {
        tx.query_row(
            "SELECT raised_ms FROM alarms WHERE alarm_id = ?1",
            params![event.alarm_id],
            |r| r.get(0),
        )?
    };
    if current == 0 {
        return Ok(EventOutcome::Late);
    }
    Ok(EventOutcome::Current(Box::new(AlarmView {
        event: event.clone(),
        updated_ms: received_ms,
        raised_ms,
    })))
}

/// SQLite integers are signed: sequences past `i64::MAX` (never reached in practice)
/// are stored as the largest value rather than wrapping to negative.
fn sql_u64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Work for the store thread.
enum Job {
    Call(Box<dyn FnOnce(&mut Store) + Send>),
    /// One event to store; events queued together are stored in one transaction.
    Event(Box<EventJob>),
}

struct EventJob {
    event: AlarmEvent,
    community: String,
    received_ms: i64,
    reply: oneshot::Sender<Result<EventOutcome, StoreError>>,
}

/// The most events one transaction stores.
const MAX_EVENT_BATCH: usize = 256;

/// Store `first` and the events queued right behind it in one transaction (one fsync).
/// Returns the job found behind them that is not an event, if any.
fn store_events(
    store: &mut Store,
    first: Box<EventJob>,
    rx: &mut mpsc::Receiver<Job>,
) -> Option<Job> {
    let mut batch = vec![first];
    let mut after = None;
    while batch.len() < MAX_EVENT_BATCH {
        match rx.try_recv() {
            Ok(Job::Event(e)) => batch.push(e),
            Ok(other) => {
                after = Some(other);
                break;
            }
            Err(_) => break,
        }
    }
    let items: Vec<(&AlarmEvent, &str, i64)> = batch
        .iter()
        .map(|e| (&e.event, e.community.as_str(), e.received_ms))
        .collect();
    match store.apply_events(&items) {
        Ok(outcomes) => {
            for (job, outcome) in batch.into_iter().zip(outcomes) {
                let _ = job.reply.send(Ok(outcome));
            }
        }
        // Nothing of the batch was stored: one by one, so one bad event fails alone.
        Err(_) => {
            for job in batch {
                let result = store.apply_event(&job.event, &job.community, job.received_ms);
                let _ = job.reply.send(result);
            }
        }
    }
    after
}

/// An async handle to a [`Store`] running on its own thread. Cheap to clone.
#[derive(Clone)]
pub struct StoreHandle {
    jobs: mpsc::Sender<Job>,
}

impl StoreHandle {
    /// Move `store` to a new thread. The returned receiver completes when that thread ends
    /// (every handle dropped, or a job panicked).
    pub fn spawn(mut store: Store) -> std::io::Result<(StoreHandle, oneshot::Receiver<()>)> {
        let (jobs, mut rx) = mpsc::channel::<Job>(QUEUE_CAPACITY);
        let (stopped_tx, stopped_rx) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("console-store".into())
            .spawn(move || {
                // Dropped when this thread ends, even by a panic: that wakes `stopped_rx`.
                let _stopped = stopped_tx;
                let mut next = None;
                loop {
                    let Some(job) = next.take().or_else(|| rx.blocking_recv()) else {
                        break;
                    };
                    match job {
                        Job::Call(f) => f(&mut store),
                        Job::Event(first) => next = store_events(&mut store, first, &mut rx),
                    }
                }
            })?;
        Ok((StoreHandle { jobs }, stopped_rx))
    }

    /// Run `f` on the store thread and wait for its result.
    pub async fn call<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Store) -> Result<R, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job = Job::Call(Box::new(move |store| {
            // The caller may have gone away (HTTP client hung up); nothing to do then.
            let _ = tx.send(f(store));
        }));
        self.jobs.send(job).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Queue one alarm event for the store thread, which stores the events queued together
    /// in one transaction (group commit: one fsync for a burst). Waits only for room in the
    /// queue; the receiver yields the outcome once it is committed.
    pub async fn submit_event(
        &self,
        event: AlarmEvent,
        community: String,
        received_ms: i64,
    ) -> Result<oneshot::Receiver<Result<EventOutcome, StoreError>>, StoreError> {
        let (reply, rx) = oneshot::channel();
        let job = Job::Event(Box::new(EventJob {
            event,
            community,
            received_ms,
            reply,
        }));
        self.jobs.send(job).await.map_err(|_| StoreError::Closed)?;
        Ok(rx)
    }

    /// Store one alarm event (with whatever else is queued) and wait until it is committed.
    pub async fn apply_event(
        &self,
        event: AlarmEvent,
        community: String,
        received_ms: i64,
    ) -> Result<EventOutcome, StoreError> {
        let rx = self.submit_event(event, community, received_ms).await?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use shouwang_wire::{GatewayState, Place, Priority, SignalClass, TransitionKind};

    fn event(event_id: &str, ts_ms: i64, state: AlarmState) -> AlarmEvent {
        let transition = match state {
            AlarmState::Normal | AlarmState::ReturnedUnacknowledged | AlarmState::Latched => {
                TransitionKind::Cleared
            }
            AlarmState::Acknowledged => TransitionKind::Acknowledged,
            AlarmState::Unacknowledged => TransitionKind::Raised,
            AlarmState::Shelved => TransitionKind::Shelved,
            AlarmState::OutOfService => TransitionKind::RemovedFromService,
            AlarmState::Suppressed => TransitionKind::Suppressed,
        };
        AlarmEvent {
            schema: AlarmEvent::SCHEMA,
            event_id: event_id.into(),
            // Tests give events in gateway order by `ts_ms`; the sequence follows it unless
            // a test sets it apart.
            boot: 1,
            seq: u64::try_from(ts_ms).unwrap(),
            alarm_id: "gw-1:smoke-1:smoke".into(),
            gateway: "gw-1".into(),
            device: "smoke-1".into(),
            device_kind: "smoke".into(),
            point: Some("obscuration".into()),
            rule: "smoke".into(),
            class: SignalClass::Alarm,
            priority: Priority::High,
            transition,
            state,
            active: matches!(state, AlarmState::Unacknowledged | AlarmState::Acknowledged),
            value: Some(3.5),
            engineering_unit: Some("%/m".into()),
            place: Place {
                community: "riverside".into(),
                building: "B1".into(),
                floor: "12".into(),
                room: "03".into(),
                ..Place::default()
            },
            message: "Smoke detected".into(),
            ts_ms,
            operator: None,
        }
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("console.db")).unwrap();
        (dir, store)
    }

    #[test]
    fn the_raised_time_stays_through_an_acknowledgement_and_moves_on_a_new_raise() {
        let (_dir, mut s) = store();
        s.apply_event(
            &event("e1", 1000, AlarmState::Unacknowledged),
            "riverside",
            1,
        )
        .unwrap();
        s.apply_event(&event("e2", 2000, AlarmState::Acknowledged), "riverside", 2)
            .unwrap();
        let view = s.ack_target("gw-1:smoke-1:smoke").unwrap().unwrap().alarm;
        assert_eq!(view.event.ts_ms, 2000);
        assert_eq!(view.raised_ms, Some(1000));
        s.apply_event(&event("e3", 3000, AlarmState::Normal), "riverside", 3)
            .unwrap();
        let EventOutcome::Current(again) = s
            .apply_event(
                &event("e4", 4000, AlarmState::Unacknowledged),
                "riverside",
                4,
            )
            .unwrap()
        else {
            panic!("a newer event must be current");
        };
        assert_eq!(again.raised_ms, Some(4000));
        assert_eq!(s.alarms(true).unwrap()[0].raised_ms, Some(4000));
    }

    #[test]
    fn an_event_sent_twice_is_stored_once() {
        let (_dir, mut s) = store();
        let e = event("e1", 1000, AlarmState::Unacknowledged);
        assert!(matches!(
            s.apply_event(&e, "riverside", 1).unwrap(),
            EventOutcome::Current(_)
        ));
        assert_eq!(
            s.apply_event(&e, "riverside", 2).unwrap(),
            EventOutcome::Duplicate
        );
        let detail = s.alarm(&e.alarm_id).unwrap().unwrap();
        assert_eq!(detail.history, vec![e]);
        assert_eq!(detail.alarm.updated_ms, 1, "a duplicate changes nothing");
    }

    #[test]
    fn an_older_event_arriving_late_goes_to_history_but_not_to_the_state() {
        let (_dir, mut s) = store();
        let newer = event("e2", 2000, AlarmState::Acknowledged);
        let older = event("e1", 1000, AlarmState::Unacknowledged);
        s.apply_event(&newer, "riverside", 10).unwrap();
        assert_eq!(
            s.apply_event(&older, "riverside", 11).unwrap(),
            EventOutcome::Late
        );
        let detail = s.alarm(&newer.alarm_id).unwrap().unwrap();
        assert_eq!(detail.alarm.event, newer);
        assert_eq!(
            detail.history,
            vec![older, newer],
            "history is oldest first"
        );
    }

    #[test]
    fn equal_sequences_go_to_the_event_that_arrived_last() {
        let (_dir, mut s) = store();
        s.apply_event(&event("e1", 1000, AlarmState::Unacknowledged), "c", 1)
            .unwrap();
        let second = event("e2", 1000, AlarmState::Acknowledged);
        assert!(matches!(
            s.apply_event(&second, "c", 2).unwrap(),
            EventOutcome::Current(_)
        ));
        let detail = s.alarm(&second.alarm_id).unwrap().unwrap();
        assert_eq!(detail.alarm.event.state, AlarmState::Acknowledged);
        assert_eq!(detail.history.last(), Some(&second));
    }

    #[test]
    fn the_gateway_sequence_orders_events_even_when_its_clock_stepped_back() {
        let (_dir, mut s) = store();
        let raised = event("e1", 1_800_000_000_000, AlarmState::Unacknowledged);
        // The gateway's wall clock was stepped back ten minutes before the next event.
        let mut cleared = event(
            "e2",
            1_800_000_000_000 - 600_000,
            AlarmState::ReturnedUnacknowledged,
        );
        cleared.seq = raised.seq + 1;
        s.apply_event(&raised, "c", 1).unwrap();
        assert!(matches!(
            s.apply_event(&cleared, "c", 2).unwrap(),
            EventOutcome::Current(_)
        ));
        // A new boot starts its sequence at 1 and is still newer.
        let mut again = event("e3", 5, AlarmState::Unacknowledged);
        again.boot = 2;
        again.seq = 1;
        assert!(matches!(
            s.apply_event(&again, "c", 3).unwrap(),
            EventOutcome::Current(_)
        ));
        // And the old boot's events that arrive late do not roll it back.
        let mut late = event("e0", 1_900_000_000_000, AlarmState::Acknowledged);
        late.seq = raised.seq - 1;
        assert_eq!(s.apply_event(&late, "c", 4).unwrap(), EventOutcome::Late);
        let detail = s.alarm(&again.alarm_id).unwrap().unwrap();
        assert_eq!(detail.alarm.event, again);
        let order: Vec<&str> = detail.history.iter().map(|e| e.event_id.as_str()).collect();
        assert_eq!(
            order,
            ["e0", "e1", "e2", "e3"],
            "history follows the sequence"
        );
    }

    #[test]
    fn a_version_1_database_is_migrated_and_keeps_its_alarms() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE events (event_id TEXT PRIMARY KEY, arrival INTEGER NOT NULL UNIQUE,
                    alarm_id TEXT NOT NULL, ts_ms INTEGER NOT NULL, received_ms INTEGER NOT NULL,
                    json TEXT NOT NULL);
                 CREATE TABLE alarms (alarm_id TEXT PRIMARY KEY, state TEXT NOT NULL,
                    ts_ms INTEGER NOT NULL, arrival INTEGER NOT NULL, community TEXT NOT NULL,
                    updated_ms INTEGER NOT NULL, raised_ms INTEGER, json TEXT NOT NULL);
                 PRAGMA user_version = 1;",
            )
            .unwrap();
        }
        let mut s = Store::open(&path).unwrap();
        let e = event("e1", 1000, AlarmState::Unacknowledged);
        assert!(matches!(
            s.apply_event(&e, "c", 1).unwrap(),
            EventOutcome::Current(_)
        ));
        drop(s);
        let s = Store::open(&path).unwrap();
        assert_eq!(s.alarms(false).unwrap().len(), 1);
    }

    /// What the build before places had entrances wrote: store schema 2 with version 1
    /// alarm events (`unit` for the room, no names) in `json`.
    const EVENT_V1: &str = r#"{"schema":1,"event_id":"old-1","boot":3,"seq":7,"alarm_id":"riverside:gw-b1:smoke-B1-12-03:smoke-high","gateway":"gw-b1","device":"smoke-B1-12-03","device_kind":"smoke","point":"obscuration","rule":"smoke-high","class":"alarm","priority":"high","transition":"raised","state":"unacknowledged","active":true,"value":3.1,"engineering_unit":"%/m","place":{"community":"riverside","building":"B1","floor":"12","unit":"03"},"message":"Smoke detected","ts_ms":1795776000123,"operator":null}"#;

    #[test]
    fn a_database_of_the_build_before_places_opens_and_shows_its_alarms_in_todays_shape() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.db");
        {
            // The previous build's schema, as its Store::open left it, with one alarm.
            drop(Store::open(&path).unwrap());
            let conn = Connection::open(&path).unwrap();
            conn.execute(
                "INSERT INTO events (event_id, arrival, alarm_id, ts_ms, received_ms, json, boot, seq)
                 VALUES ('old-1', 1, 'riverside:gw-b1:smoke-B1-12-03:smoke-high', 1795776000123, 5, ?1, 3, 7)",
                params![EVENT_V1],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO alarms (alarm_id, state, ts_ms, arrival, community, updated_ms, raised_ms, json, boot, seq)
                 VALUES ('riverside:gw-b1:smoke-B1-12-03:smoke-high', 'unacknowledged', 1795776000123, 1,
                         'riverside', 5, 1795776000123, ?1, 3, 7)",
                params![EVENT_V1],
            )
            .unwrap();
            let version: i64 = conn
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .unwrap();
            assert_eq!(version, 2, "the store's own schema did not change");
        }
        let mut s = Store::open(&path).unwrap();
        let alarms = s.alarms(false).unwrap();
        assert_eq!(alarms.len(), 1);
        let place = &alarms[0].event.place;
        assert_eq!(
            (
                place.building.as_str(),
                place.floor.as_str(),
                place.room.as_str()
            ),
            ("B1", "12", "03"),
            "the old unit is the room"
        );
        assert_eq!(alarms[0].event.schema, AlarmEvent::SCHEMA);
        let alarm_id = "riverside:gw-b1:smoke-B1-12-03:smoke-high";
        assert_eq!(s.alarm(alarm_id).unwrap().unwrap().history.len(), 1);
        assert_eq!(s.open_alarms_of("riverside", "gw-b1").unwrap().len(), 1);
        // The gateway, upgraded, acknowledges it with a version 2 event: history holds both.
        let mut acked = AlarmEvent::decode(EVENT_V1.as_bytes()).unwrap();
        acked.event_id = "new-1".into();
        acked.seq = 8;
        acked.transition = TransitionKind::Acknowledged;
        acked.state = AlarmState::Acknowledged;
        acked.place.entrance = "2".into();
        acked.place.names.building = "1号楼".into();
        assert!(matches!(
            s.apply_event(&acked, "riverside", 6).unwrap(),
            EventOutcome::Current(_)
        ));
        let detail = s.alarm(alarm_id).unwrap().unwrap();
        assert_eq!(detail.history.len(), 2);
        assert_eq!(detail.alarm.event.place.names.building, "1号楼");
        assert_eq!(detail.history[0].place.room, "03");
    }

    #[test]
    fn normal_alarms_are_listed_only_when_all_are_asked_for_and_newest_come_first() {
        let (_dir, mut s) = store();
        let mut a = event("a1", 1000, AlarmState::Normal);
        a.alarm_id = "gw-1:a:r".into();
        let mut b = event("b1", 3000, AlarmState::Unacknowledged);
        b.alarm_id = "gw-1:b:r".into();
        let mut c = event("c1", 2000, AlarmState::ReturnedUnacknowledged);
        c.alarm_id = "gw-1:c:r".into();
        for e in [&a, &b, &c] {
            s.apply_event(e, "riverside", 5).unwrap();
        }
        let ids = |v: Vec<AlarmView>| v.into_iter().map(|a| a.event.alarm_id).collect::<Vec<_>>();
        assert_eq!(ids(s.alarms(false).unwrap()), ["gw-1:b:r", "gw-1:c:r"]);
        assert_eq!(
            ids(s.alarms(true).unwrap()),
            ["gw-1:b:r", "gw-1:c:r", "gw-1:a:r"]
        );
    }

    #[test]
    fn alarms_and_commands_survive_reopening_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.db");
        let e = event("e1", 1000, AlarmState::Unacknowledged);
        {
            let mut s = Store::open(&path).unwrap();
            s.apply_event(&e, "riverside", 1).unwrap();
        }
        let mut s = Store::open(&path).unwrap();
        assert_eq!(s.alarms(false).unwrap().len(), 1);
        assert_eq!(
            s.apply_event(&e, "riverside", 2).unwrap(),
            EventOutcome::Duplicate,
            "dedup survives a restart"
        );
    }

    #[test]
    fn acknowledgements_go_to_the_event_community_or_else_the_topic_community() {
        let (_dir, mut s) = store();
        let mut e = event("e1", 1000, AlarmState::Unacknowledged);
        s.apply_event(&e, "from-topic", 1).unwrap();
        assert_eq!(
            s.ack_target(&e.alarm_id).unwrap().unwrap().community,
            "riverside"
        );
        e.event_id = "e2".into();
        e.ts_ms = 2000;
        e.place.community = String::new();
        s.apply_event(&e, "from-topic", 2).unwrap();
        assert_eq!(
            s.ack_target(&e.alarm_id).unwrap().unwrap().community,
            "from-topic"
        );
        assert_eq!(s.ack_target("gw-1:nope:nope").unwrap(), None);
    }

    #[test]
    fn a_reply_settles_its_command_and_unknown_replies_are_reported() {
        let (_dir, mut s) = store();
        let cmd = CommandRecord {
            command_id: "c1".into(),
            alarm_id: "gw-1:smoke-1:smoke".into(),
            gateway: "gw-1".into(),
            community: "riverside".into(),
            operator: "li".into(),
            issued_ms: 5,
            status: CommandStatus::Pending,
            error: None,
            replied_ms: None,
        };
        s.insert_command(&cmd).unwrap();
        assert_eq!(s.command("c1").unwrap(), Some(cmd.clone()));
        let reply = CommandReply {
            schema: 1,
            command_id: "c1".into(),
            gateway: "gw-1".into(),
            ok: false,
            error: Some("alarm is normal".into()),
            ts_ms: 6,
        };
        let settled = s.record_reply(&reply, 7).unwrap().unwrap();
        assert_eq!(settled.status, CommandStatus::Error);
        assert_eq!(settled.error.as_deref(), Some("alarm is normal"));
        assert_eq!(settled.replied_ms, Some(7));
        let other = CommandReply {
            command_id: "someone-else".into(),
            ..reply
        };
        assert_eq!(s.record_reply(&other, 8).unwrap(), None);
    }

    #[test]
    fn the_last_gateway_status_to_arrive_wins() {
        let (_dir, mut s) = store();
        let online = GatewayStatus {
            schema: 1,
            gateway: "gw-1".into(),
            community: "riverside".into(),
            state: GatewayState::Online,
            ts_ms: 100,
            version: "0.1.0".into(),
        };
        // The last will carries the connect time: same ts as the online message.
        let offline = GatewayStatus {
            state: GatewayState::Offline,
            ..online.clone()
        };
        s.put_gateway(&online, 1).unwrap();
        s.put_gateway(&offline, 2).unwrap();
        assert_eq!(s.gateways().unwrap(), vec![offline]);
    }

    #[test]
    fn a_database_from_a_newer_build_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch("PRAGMA user_version = 7;")
            .unwrap();
        let err = Store::open(&path).err().unwrap();
        assert!(err.to_string().contains("schema version 7"), "{err}");
    }

    #[tokio::test]
    async fn the_handle_runs_calls_on_the_store_thread() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("console.db")).unwrap();
        let (handle, stopped) = StoreHandle::spawn(store).unwrap();
        let e = event("e1", 1000, AlarmState::Unacknowledged);
        let outcome = handle
            .call(move |s| s.apply_event(&e, "riverside", 1))
            .await
            .unwrap();
        assert!(matches!(outcome, EventOutcome::Current(_)));
        drop(handle);
        stopped.await.ok();
    }

    #[test]
    fn the_open_alarms_of_one_gateway_are_found_by_id_prefix_only() {
        let (_dir, mut s) = store();
        let mut a = event("a", 1, AlarmState::Unacknowledged);
        a.alarm_id = "c:g_1:d:r".into();
        let mut b = event("b", 2, AlarmState::Unacknowledged);
        b.alarm_id = "c:gx1:d:r".into(); // `_` must not match as a wildcard
        let mut n = event("n", 3, AlarmState::Normal);
        n.alarm_id = "c:g_1:d:n".into();
        for e in [&a, &b, &n] {
            s.apply_event(e, "c", 1).unwrap();
        }
        let open = s.open_alarms_of("c", "g_1").unwrap();
        let ids: Vec<&str> = open.iter().map(|e| e.alarm_id.as_str()).collect();
        assert_eq!(ids, ["c:g_1:d:r"]);
    }

    #[tokio::test]
    async fn events_queued_together_are_stored_in_one_transaction_each_judged_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("console.db")).unwrap();
        let (handle, _stopped) = StoreHandle::spawn(store).unwrap();
        // Hold the store thread so the events queue up behind this call.
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let held = handle.clone();
        let blocker = tokio::spawn(async move {
            held.call(move |_| {
                let _ = go_rx.recv();
                Ok(())
            })
            .await
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let raised = event("e1", 1000, AlarmState::Unacknowledged);
        let cleared = event("e2", 2000, AlarmState::ReturnedUnacknowledged);
        let mut receivers = Vec::new();
        for e in [raised.clone(), cleared, raised] {
            receivers.push(handle.submit_event(e, "riverside".into(), 1).await.unwrap());
        }
        go_tx.send(()).unwrap();
        blocker.await.unwrap().unwrap();
        let mut outcomes = Vec::new();
        for rx in receivers {
            outcomes.push(rx.await.unwrap().unwrap());
        }
        assert!(
            matches!(outcomes[0], EventOutcome::Current(_)),
            "{outcomes:?}"
        );
        assert!(
            matches!(outcomes[1], EventOutcome::Current(_)),
            "{outcomes:?}"
        );
        assert!(
            matches!(outcomes[2], EventOutcome::Duplicate),
            "{outcomes:?}"
        );
        let state = handle.call(|s| s.alarms(true)).await.unwrap();
        assert_eq!(state[0].event.event_id, "e2");
    }
}
