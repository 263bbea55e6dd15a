//! Supervision of the gateway's long-running tasks.
//!
//! Every long-running task of the gateway runs under a keeper task ([`Supervisor::spawn`])
//! that restarts it when it ends or panics, and watches its [`Heartbeat`] for stalls. What
//! the keepers see is kept in [`Tasks`], which the runtime loop reads for the gateway's
//! [`TASK_FAILED_RULE`](crate::config::TASK_FAILED_RULE) fault, and `/healthz` and
//! `/metrics` read for their answers.
//!
//! # Which tasks, and what happens to them
//!
//! | task | name | when it ends or panics | when it stalls |
//! |---|---|---|---|
//! | a Modbus link's task ([`crate::sources::modbus::run_link`]) | `modbus/<link id>` | restarted | aborted and restarted |
//! | the MQTT sensors' link ([`crate::sources::mqtt_sensors::run`]) | `mqtt-sensors` | restarted | aborted and restarted |
//! | the broker link ([`crate::sinks::mqtt`]'s driver) | `mqtt` | restarted | aborted and restarted |
//! | the outbox ([`crate::sinks::mqtt::Outbox`]: replies, snapshots, readings to the broker) | `mqtt-outbox` | restarted | not watched |
//! | the line-protocol writer ([`crate::sinks::influx::InfluxSink`]) | `influx` | restarted | reported |
//! | the `/metrics` and `/healthz` server ([`crate::metrics::serve`]) | `metrics` | restarted | not watched |
//! | the alarm journal (a std thread) | `alarm-journal` | reported, not restarted | reported |
//!
//! The runtime loop itself ([`crate::run_until`], `runtime-loop`) cannot be kept: it starts
//! the keepers and cannot restart itself. It beats a heartbeat every turn and is watched
//! twice: like the journal's thread (stalled on `/healthz`, `/metrics` and in the fault,
//! which answer as long as the runtime's other threads do), and by a plain thread
//! ([`watchdog_thread`]) that writes the error log and switches the local warning output
//! on ([`crate::sinks::local_output::StallSwitch`]) even when the whole runtime is wedged
//! and nothing else can. A stalled loop is reported only (there is no one to restart it
//! but systemd).
//!
//! - **Restart**: after 1 s, then twice as long after every further failure up to 30 s
//!   ([`Policy`]); a run that lasted [`Policy::healthy_after`] (60 s) starts the count
//!   again, so one failure a day always gets the 1 s restart. Every restart is counted per
//!   task (`shouwang_gateway_task_restarts_total{task=...}`) and logged at error level with
//!   how the task ended (panic message, "returned", "stalled").
//! - **Stall**: each task beats its [`Heartbeat`] once per turn of its loop. The keeper looks
//!   every second ([`Policy::check_every`]); a heartbeat older than the task's `stall_after`
//!   makes the task stalled. Allowed silences: a Modbus link's task its slowest device's
//!   `3 x poll_interval_ms + (requests + 1) x timeout_ms + 1 s` plus the link's recovery
//!   silence (one turn is a connect and the requests of one device's poll, each bounded by
//!   the timeout; it beats at least once a second while it waits); the broker link `3 x keep_alive_s + 10 s` (rumqttc wakes the loop at
//!   least once per keep-alive with a ping, and a connect attempt is bounded by its 5 s
//!   timeout plus our 1 s pause), and the MQTT sensors' link the same with its own
//!   keep-alive (it holds nothing but its connection: a restart opens a new one and
//!   subscribes again); the journal 30 s (one fsync on a slow SD card can take seconds).
//!   A link's task beats before each poll, so one that waits that long on a full poll queue
//!   (the runtime loop not keeping up) counts as stalled too: restarting it does no harm,
//!   and the runtime loop falling that far behind is worth a fault.
//! - **Why aborting a stalled link task is safe**: it holds nothing but its connection, its
//!   schedule and its devices' read plans. Alarm state lives in the watch; an outcome it was
//!   sending is either in the channel or not sent at all (`mpsc::Sender::send` is
//!   cancel-safe). A restarted task opens a fresh connection, which is what a wedged one
//!   needs, and forgets its quarantines and splits (it finds them again).
//! - **Why aborting a stalled broker link is safe**: the rumqttc `EventLoop` outlives the
//!   driver (it is kept behind a mutex by [`crate::sinks::mqtt::spawn_drive`]) and is cleaned on
//!   every restart, so the next run opens a new connection on the same request channel (the
//!   journal's and outbox's clients stay valid). Nothing is lost that is not retried: the
//!   journal sends every unconfirmed alarm again on a new connection, readings are
//!   best-effort, and a command caught in the middle goes unanswered and expires at the
//!   console.
//! - **What a restarted outbox keeps**: its lanes and the answer it had in hand live
//!   outside the task ([`crate::sinks::mqtt::Outbox::spawn`]), so the runtime loop's handle
//!   stays valid and the next run sends the rest of that answer first; a publish leaves
//!   the hand only once rumqttc took it (no `.await` between), so nothing is sent twice.
//!   An answer two runs in a row died with is dropped and logged: a command reply is then
//!   never sent (the command expires at the console), and the runtime loop owes the
//!   console a new snapshot. A reading batch in hand is lost: readings to the broker are
//!   best effort.
//! - **Why the outbox and the metrics server are not watched for stalls**: their silence
//!   says nothing. The outbox waits on its lanes when nothing comes, and on rumqttc's
//!   request channel, full for as long as the broker is away (the driver drains it only
//!   while connected), where a restarted run would wait again; the broker link has its own
//!   watch. The server has no turns: it waits for connections, and each connection (and a
//!   handler that hangs) is a task of its own. Its socket is bound once and each run
//!   serves on a duplicate, so a restart keeps the port.
//! - **What a restarted line-protocol writer keeps**: its queue and the readings lane on
//!   disk live outside the task, so handles stay valid and the next run puts the body the
//!   dead one was sending back to wait, from disk (see `sinks/influx/writer.rs`); only
//!   lines held in memory because the disk was failing are lost, counted as abandoned.
//! - **Why a stalled writer is reported, not aborted**: it beats every turn (idle waits
//!   wake every 10 s) and may go `2 x 30 s + timeout_ms + 10 s` without one (two disk
//!   operations on a slow SD card, a request, an idle wait). What can stall it is the disk,
//!   whose work runs on blocking threads that an abort cannot stop: a new run would share
//!   the lane with the wedged operation, and an abort between storing arrived batches and
//!   hearing back would leave them on disk unknown to this process until its next start.
//!   A restart cannot unwedge a disk; the fault and `/healthz` say it is wedged.
//! - **Why the journal is not restarted**: its channel's receiver and its in-memory events
//!   (those the disk refused) die with its thread, so a new thread could not see what was
//!   handed to the old one; and a panic there is a bug that would likely repeat on the same
//!   record read back from disk. It is the one way out for alarms, so its death is made
//!   loud instead: the fault (which the console may never see, since the journal carries
//!   it), `/healthz` 503 naming it, the error log and the local warning output
//!   ([`crate::sinks::local_output`]). Restarting the whole process (systemd `Restart=`) reopens
//!   its queue from disk.
//!
//! # The `task_failed` fault
//! Active while any task is down (waiting for its restart, or ended for good), stalled, or
//! failed within the last [`FAULT_HOLD`] (10 minutes). Holding it after a restart keeps a
//! task that dies every few minutes from making the fault chatter, and lets a single
//! restart be seen on the board for long enough to be looked at. `/healthz` is stricter in
//! time and names only what is wrong now: tasks down or stalled.
//!
//! # Time
//! Heartbeats and failures are on tokio's monotonic clock ([`tokio::time::Instant`]), so
//! the tests run with paused time; the judgments ([`Policy::backoff`],
//! [`TaskSnapshot::problem`], [`fault_active`]) are pure, with the time as an argument.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

/// How long the `task_failed` fault stays active after a task failed.
pub const FAULT_HOLD: Duration = Duration::from_secs(10 * 60);
/// The name of the alarm journal's thread among the tasks.
pub const JOURNAL_TASK: &str = "alarm-journal";
/// The name of the broker link's driver among the tasks.
pub const MQTT_TASK: &str = "mqtt";
/// The name of the outbox (replies, snapshots and readings to the broker) among the tasks.
pub const OUTBOX_TASK: &str = "mqtt-outbox";
/// The name of the line-protocol writer among the tasks.
pub const INFLUX_TASK: &str = "influx";
/// The name of the `/metrics` and `/healthz` server among the tasks.
pub const METRICS_TASK: &str = "metrics";
/// The `stall_after` of a task whose silence says nothing (it waits on others by design;
/// see the module docs): never counted as stalled.
pub const NEVER_STALLS: Duration = Duration::MAX;
/// How long the journal's thread may go without a turn.
pub const JOURNAL_STALL_AFTER: Duration = Duration::from_secs(30);
/// The name of the runtime loop ([`crate::run_until`]) among the tasks.
pub const RUNTIME_TASK: &str = "runtime-loop";
/// How long the runtime loop may go without a turn: it ticks every 100 ms, and its only
/// waits are on the outbox's reply lane (full when 256 answers wait for a broker that is
/// away: worth saying).
pub const RUNTIME_STALL_AFTER: Duration = Duration::from_secs(10);

/// "No failure yet" in [`TaskStatus::last_failure_ms`].
const NEVER: i64 = i64::MIN;

/// A task's proof of life: the monotonic time of its last turn. Cheap to clone; every clone
/// beats the same heart. [`Default`] makes one whose clock starts now.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    origin: Instant,
    inner: Arc<Beat>,
}

#[derive(Debug)]
struct Beat {
    /// Milliseconds since `origin` of the last beat.
    last_ms: AtomicI64,
    /// Set when a watched thread ended (see [`Heartbeat::end_on_drop`]).
    ended: AtomicBool,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat {
            origin: Instant::now(),
            inner: Arc::new(Beat {
                last_ms: AtomicI64::new(0),
                ended: AtomicBool::new(false),
            }),
        }
    }
}

impl Heartbeat {
    /// Say "I am alive": call once per turn of the task's loop.
    pub fn beat(&self) {
        self.inner.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// How long since the last beat.
    pub fn age(&self) -> Duration {
        let last = self.inner.last_ms.load(Ordering::Relaxed);
        Duration::from_millis(u64::try_from(self.now_ms().saturating_sub(last)).unwrap_or(0))
    }

    /// For a thread the supervisor only watches: a guard that marks this heartbeat ended
    /// when it is dropped, which also happens when the thread unwinds from a panic.
    pub fn end_on_drop(&self) -> EndOnDrop {
        EndOnDrop(self.clone())
    }

    /// Whether the watched thread has ended.
    pub fn ended(&self) -> bool {
        self.inner.ended.load(Ordering::Relaxed)
    }

    fn now_ms(&self) -> i64 {
        i64::try_from(self.origin.elapsed().as_millis()).unwrap_or(i64::MAX)
    }
}

/// Start a plain thread that logs an error when `heartbeat` has been silent for longer than
/// `stall_after`, and again when it beats again; checks every `check_every`, and ends once
/// the heartbeat ended (its [`Heartbeat::end_on_drop`] guard dropped). For the runtime
/// loop: a thread of its own still writes the log when no task of the runtime can run, and
/// calls `on_stall` (which switches the local warning on) once per stall.
pub fn watchdog_thread(
    name: &'static str,
    heartbeat: Heartbeat,
    stall_after: Duration,
    check_every: Duration,
    on_stall: impl Fn() + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("watchdog-{name}"))
        .spawn(move || {
            let mut stalled = false;
            while !heartbeat.ended() {
                std::thread::sleep(check_every);
                let age = heartbeat.age();
                if age > stall_after && !stalled {
                    stalled = true;
                    tracing::error!(task = name, silent_ms = age.as_millis() as u64, "the gateway's runtime loop has stalled: polls, alarms and commands are not handled");
                    on_stall();
                } else if age <= stall_after && stalled {
                    stalled = false;
                    tracing::info!(task = name, "the gateway's runtime loop turns again");
                }
            }
        })
}

/// Marks its [`Heartbeat`] ended when dropped (see [`Heartbeat::end_on_drop`]).
#[derive(Debug)]
pub struct EndOnDrop(Heartbeat);

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        self.0.inner.ended.store(true, Ordering::Relaxed);
    }
}

/// Restart and watch timings.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// The wait before the first restart; doubled after each further failure.
    pub first_backoff: Duration,
    /// The longest wait before a restart.
    pub max_backoff: Duration,
    /// A run that lasted this long resets the backoff to `first_backoff`.
    pub healthy_after: Duration,
    /// How often keepers look at heartbeats.
    pub check_every: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            first_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            healthy_after: Duration::from_secs(60),
            check_every: Duration::from_secs(1),
        }
    }
}

impl Policy {
    /// The wait before restarting a task that failed `failures_in_row` times in a row
    /// before this failure (0 for the first). Pure.
    pub fn backoff(&self, failures_in_row: u32) -> Duration {
        self.first_backoff
            .saturating_mul(1u32 << failures_in_row.min(16))
            .min(self.max_backoff)
    }
}

/// What happens to a task whose heartbeat is older than its `stall_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStall {
    /// Abort it and restart it like a task that failed (see the module docs for which tasks).
    Restart,
    /// Report it only.
    Report,
}

/// What the supervisor knows about one task, shared with metrics and the runtime loop.
#[derive(Debug)]
pub struct TaskStatus {
    pub name: String,
    /// How long its heartbeat may be silent before it counts as stalled.
    pub stall_after: Duration,
    heartbeat: Heartbeat,
    /// Times it was restarted (or, for a watched thread, found ended).
    restarts: AtomicU64,
    /// Times it was found stalled.
    stalls: AtomicU64,
    /// Running: not waiting for a restart, not ended for good.
    up: AtomicBool,
    stalled: AtomicBool,
    /// When it last failed, in ms of [`Tasks`]' clock; [`NEVER`] if it never did.
    last_failure_ms: AtomicI64,
}

/// One task's state at one moment; what `/healthz`, `/metrics` and the fault are made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskSnapshot {
    pub name: String,
    pub restarts: u64,
    pub stalls: u64,
    pub up: bool,
    pub stalled: bool,
    /// When it last failed, in ms of [`Tasks`]' clock.
    pub last_failure_ms: Option<i64>,
}

impl TaskSnapshot {
    /// What is wrong with the task now, in words for `/healthz`; `None` when it runs. Pure.
    pub fn problem(&self) -> Option<String> {
        if !self.up {
            Some(format!(
                "task {}: down (restarted {} times)",
                self.name, self.restarts
            ))
        } else if self.stalled {
            Some(format!(
                "task {}: stalled (no turn within its allowed time)",
                self.name
            ))
        } else {
            None
        }
    }
}

/// Whether the `task_failed` fault is active at `now_ms` (see the module docs). Pure.
pub fn fault_active(tasks: &[TaskSnapshot], now_ms: i64) -> bool {
    let hold = i64::try_from(FAULT_HOLD.as_millis()).unwrap_or(i64::MAX);
    tasks.iter().any(|t| {
        !t.up
            || t.stalled
            || t.last_failure_ms
                .is_some_and(|at| now_ms.saturating_sub(at) < hold)
    })
}

/// Every supervised task's status. Shared (`Arc`) between the keepers, the runtime loop
/// and the metrics server.
#[derive(Debug)]
pub struct Tasks {
    origin: Instant,
    list: Mutex<Vec<Arc<TaskStatus>>>,
}

impl Tasks {
    fn new() -> Tasks {
        Tasks {
            origin: Instant::now(),
            list: Mutex::new(Vec::new()),
        }
    }

    /// Milliseconds on the clock of [`TaskSnapshot::last_failure_ms`].
    pub fn now_ms(&self) -> i64 {
        i64::try_from(self.origin.elapsed().as_millis()).unwrap_or(i64::MAX)
    }

    /// Every task's state, in the order they were started.
    pub fn snapshot(&self) -> Vec<TaskSnapshot> {
        let list = match self.list.lock() {
            Ok(list) => list,
            // Nothing holding this lock panics; a poisoned list is still a valid list.
            Err(poisoned) => poisoned.into_inner(),
        };
        list.iter()
            .map(|t| {
                let failed = t.last_failure_ms.load(Ordering::Relaxed);
                TaskSnapshot {
                    name: t.name.clone(),
                    restarts: t.restarts.load(Ordering::Relaxed),
                    stalls: t.stalls.load(Ordering::Relaxed),
                    up: t.up.load(Ordering::Relaxed),
                    stalled: t.stalled.load(Ordering::Relaxed),
                    last_failure_ms: (failed != NEVER).then_some(failed),
                }
            })
            .collect()
    }

    /// Whether the `task_failed` fault is active now.
    pub fn fault_active(&self) -> bool {
        fault_active(&self.snapshot(), self.now_ms())
    }

    /// Whether the named task runs and is not stalled (false for an unknown name).
    pub fn running(&self, name: &str) -> bool {
        self.snapshot()
            .iter()
            .any(|t| t.name == name && t.up && !t.stalled)
    }

    fn add(&self, name: String, stall_after: Duration, heartbeat: Heartbeat) -> Arc<TaskStatus> {
        let status = Arc::new(TaskStatus {
            name,
            stall_after,
            heartbeat,
            restarts: AtomicU64::new(0),
            stalls: AtomicU64::new(0),
            up: AtomicBool::new(true),
            stalled: AtomicBool::new(false),
            last_failure_ms: AtomicI64::new(NEVER),
        });
        match self.list.lock() {
            Ok(mut list) => list.push(status.clone()),
            Err(poisoned) => poisoned.into_inner().push(status.clone()),
        }
        status
    }

    fn failed(&self, status: &TaskStatus) {
        status
            .last_failure_ms
            .store(self.now_ms(), Ordering::Relaxed);
    }
}

/// Starts and keeps the gateway's tasks (see the module docs).
#[derive(Debug)]
pub struct Supervisor {
    tasks: Arc<Tasks>,
    policy: Policy,
    /// Set by [`Supervisor::stop`]: a task that ends now is not restarted.
    stopping: Arc<AtomicBool>,
}

impl Default for Supervisor {
    fn default() -> Self {
        Supervisor::new(Policy::default())
    }
}

impl Supervisor {
    pub fn new(policy: Policy) -> Supervisor {
        Supervisor {
            tasks: Arc::new(Tasks::new()),
            policy,
            stopping: Arc::new(AtomicBool::new(false)),
        }
    }

    /// What the keepers see, for the runtime loop and the metrics server.
    pub fn tasks(&self) -> Arc<Tasks> {
        self.tasks.clone()
    }

    /// Run `start(heartbeat)` as a task and keep it running: restarted when it ends or
    /// panics, and when it stalls if `on_stall` says so. The returned handle is the
    /// keeper's: aborting it aborts the task too; after [`Supervisor::stop`] it completes
    /// once the task ends.
    pub fn spawn<F, Fut>(
        &self,
        name: impl Into<String>,
        stall_after: Duration,
        on_stall: OnStall,
        start: F,
    ) -> JoinHandle<()>
    where
        F: FnMut(Heartbeat) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let status = self
            .tasks
            .add(name.into(), stall_after, Heartbeat::default());
        tokio::spawn(keep(
            self.tasks.clone(),
            status,
            self.policy,
            self.stopping.clone(),
            on_stall,
            start,
        ))
    }

    /// Watch a thread that beats `heartbeat` and holds its [`Heartbeat::end_on_drop`]
    /// guard: reported stalled when silent for `stall_after`, and down once it ended. It
    /// is never restarted (see the module docs for the journal).
    pub fn watch_thread(
        &self,
        name: impl Into<String>,
        heartbeat: Heartbeat,
        stall_after: Duration,
    ) -> JoinHandle<()> {
        let status = self.tasks.add(name.into(), stall_after, heartbeat);
        let tasks = self.tasks.clone();
        let policy = self.policy;
        let stopping = self.stopping.clone();
        tokio::spawn(async move {
            let mut check = tokio::time::interval(policy.check_every);
            check.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                check.tick().await;
                if status.heartbeat.ended() {
                    status.up.store(false, Ordering::Relaxed);
                    status.stalled.store(false, Ordering::Relaxed);
                    if stopping.load(Ordering::Relaxed) {
                        return;
                    }
                    tasks.failed(&status);
                    status.restarts.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(task = %status.name, "a gateway thread has stopped and cannot be restarted in this process; alarms are not delivered");
                    return;
                }
                note_stall(&status);
            }
        })
    }

    /// From now on, a task that ends stays ended (for a clean shutdown).
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }
}

/// Aborts a task when dropped, so aborting a keeper aborts what it keeps.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How one run of a task ended.
enum Ending {
    Returned,
    Panicked(String),
    Stalled,
}

/// Mark the task stalled or not from its heartbeat, logging changes; true when stalled.
fn note_stall(status: &TaskStatus) -> bool {
    let stalled = status.heartbeat.age() > status.stall_after;
    if status.stalled.swap(stalled, Ordering::Relaxed) != stalled {
        if stalled {
            status.stalls.fetch_add(1, Ordering::Relaxed);
            tracing::error!(task = %status.name, silent_ms = status.heartbeat.age().as_millis() as u64, "a gateway task has stalled");
        } else {
            tracing::info!(task = %status.name, "a stalled gateway task turns again");
        }
    }
    stalled
}

/// The keeper: runs the task, restarts it, watches its heartbeat.
async fn keep<F, Fut>(
    tasks: Arc<Tasks>,
    status: Arc<TaskStatus>,
    policy: Policy,
    stopping: Arc<AtomicBool>,
    on_stall: OnStall,
    mut start: F,
) where
    F: FnMut(Heartbeat) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut failures_in_row = 0u32;
    loop {
        if stopping.load(Ordering::Relaxed) {
            // Stopped while waiting for a restart.
            status.up.store(false, Ordering::Relaxed);
            return;
        }
        status.heartbeat.beat();
        status.up.store(true, Ordering::Relaxed);
        let started = Instant::now();
        let mut run = AbortOnDrop(tokio::spawn(start(status.heartbeat.clone())));
        let mut check = tokio::time::interval(policy.check_every);
        check.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let ending = loop {
            tokio::select! {
                joined = &mut run.0 => break match joined {
                    Ok(()) => Ending::Returned,
                    Err(e) if e.is_panic() => Ending::Panicked(panic_text(e.into_panic())),
                    // Only this keeper aborts it, and then it does not wait here.
                    Err(_) => Ending::Returned,
                },
                _ = check.tick() => {
                    if note_stall(&status) && on_stall == OnStall::Restart {
                        run.0.abort();
                        let _ = (&mut run.0).await;
                        break Ending::Stalled;
                    }
                }
            }
        };
        status.up.store(false, Ordering::Relaxed);
        status.stalled.store(false, Ordering::Relaxed);
        if stopping.load(Ordering::Relaxed) {
            return;
        }
        tasks.failed(&status);
        let restarts = status.restarts.fetch_add(1, Ordering::Relaxed) + 1;
        if started.elapsed() >= policy.healthy_after {
            failures_in_row = 0;
        }
        let wait = policy.backoff(failures_in_row);
        failures_in_row = failures_in_row.saturating_add(1);
        let how = match &ending {
            Ending::Returned => "returned".to_string(),
            Ending::Panicked(why) => format!("panicked: {why}"),
            Ending::Stalled => "stalled and was aborted".to_string(),
        };
        tracing::error!(task = %status.name, how, restarts, restart_in_ms = wait.as_millis() as u64, "a gateway task failed; restarting it");
        tokio::time::sleep(wait).await;
    }
}

fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    fn snapshot_of(tasks: &Tasks, name: &str) -> TaskSnapshot {
        tasks
            .snapshot()
            .into_iter()
            .find(|t| t.name == name)
            .unwrap()
    }

    #[test]
    fn restarts_wait_1_2_4_8_16_then_30_seconds() {
        let policy = Policy::default();
        let waits: Vec<u64> = (0..7).map(|n| policy.backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(policy.backoff(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn the_fault_holds_ten_minutes_after_a_failure_and_while_a_task_is_down_or_stalled() {
        let running = TaskSnapshot {
            name: "modbus/a".into(),
            restarts: 0,
            stalls: 0,
            up: true,
            stalled: false,
            last_failure_ms: None,
        };
        assert!(!fault_active(std::slice::from_ref(&running), 0));
        let failed = TaskSnapshot {
            restarts: 1,
            last_failure_ms: Some(1_000),
            ..running.clone()
        };
        assert!(fault_active(std::slice::from_ref(&failed), 1_000 + 599_999));
        assert!(!fault_active(
            std::slice::from_ref(&failed),
            1_000 + 600_000
        ));
        let down = TaskSnapshot {
            up: false,
            ..running.clone()
        };
        assert!(fault_active(&[running.clone(), down.clone()], 0));
        assert_eq!(
            down.problem().as_deref(),
            Some("task modbus/a: down (restarted 0 times)")
        );
        let stalled = TaskSnapshot {
            stalled: true,
            ..running.clone()
        };
        assert!(fault_active(std::slice::from_ref(&stalled), 0));
        assert!(stalled.problem().unwrap().contains("modbus/a: stalled"));
        assert_eq!(running.problem(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_panics_is_restarted_after_1_then_2_seconds_and_counted() {
        let supervisor = Supervisor::default();
        let tasks = supervisor.tasks();
        let starts = Arc::new(Mutex::new(Vec::new()));
        let seen = starts.clone();
        let t0 = Instant::now();
        let _keeper = supervisor.spawn(
            "flaky",
            Duration::from_secs(60),
            OnStall::Restart,
            move |heartbeat| {
                let seen = seen.clone();
                async move {
                    let run = {
                        let mut starts = seen.lock().unwrap();
                        starts.push(t0.elapsed().as_millis() as u64);
                        starts.len()
                    };
                    if run <= 2 {
                        panic!("run {run} fails");
                    }
                    loop {
                        heartbeat.beat();
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            },
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let t = snapshot_of(&tasks, "flaky");
        assert!(!t.up, "waiting for its first restart: {t:?}");
        assert_eq!(t.restarts, 1);
        assert_eq!(t.problem().unwrap(), "task flaky: down (restarted 1 times)");
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(*starts.lock().unwrap(), [0, 1000, 3000]);
        let t = snapshot_of(&tasks, "flaky");
        assert!(t.up && !t.stalled);
        assert_eq!(t.restarts, 2);
        assert_eq!(t.problem(), None);
        assert!(tasks.fault_active(), "a failure within 10 minutes holds it");
        tokio::time::sleep(FAULT_HOLD).await;
        assert!(!tasks.fault_active(), "ten quiet minutes clear it");
        assert_eq!(
            starts.lock().unwrap().len(),
            3,
            "a running task is left alone"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_task_is_reported_aborted_and_restarted_with_a_fresh_start() {
        let supervisor = Supervisor::default();
        let tasks = supervisor.tasks();
        let runs = Arc::new(AtomicU32::new(0));
        let counted = runs.clone();
        let _keeper = supervisor.spawn(
            "modbus/smoke-1",
            Duration::from_secs(5),
            OnStall::Restart,
            move |heartbeat| {
                let run = counted.fetch_add(1, Ordering::Relaxed) + 1;
                async move {
                    heartbeat.beat();
                    if run == 1 {
                        // Wedged: never turns again, never ends.
                        std::future::pending::<()>().await;
                    }
                    loop {
                        heartbeat.beat();
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            },
        );
        // 5 s of silence, seen at the next 1 s check: aborted, restarted 1 s later.
        tokio::time::sleep(Duration::from_millis(6_500)).await;
        let t = snapshot_of(&tasks, "modbus/smoke-1");
        assert_eq!((t.stalls, t.restarts, t.up), (1, 1, false), "{t:?}");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(runs.load(Ordering::Relaxed), 2);
        let t = snapshot_of(&tasks, "modbus/smoke-1");
        assert!(t.up && !t.stalled, "{t:?}");
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(
            runs.load(Ordering::Relaxed),
            2,
            "a task that beats is not stalled"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_task_that_is_only_reported_turns_healthy_when_it_beats_again() {
        let supervisor = Supervisor::default();
        let tasks = supervisor.tasks();
        let wake = Arc::new(tokio::sync::Notify::new());
        let woken = wake.clone();
        let _keeper = supervisor.spawn(
            "slow",
            Duration::from_secs(3),
            OnStall::Report,
            move |heartbeat| {
                let woken = woken.clone();
                async move {
                    heartbeat.beat();
                    woken.notified().await;
                    loop {
                        heartbeat.beat();
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            },
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
        let t = snapshot_of(&tasks, "slow");
        assert!(t.stalled && t.up, "{t:?}");
        assert!(tasks.fault_active());
        assert!(!tasks.running("slow"));
        wake.notify_one();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let t = snapshot_of(&tasks, "slow");
        assert!(!t.stalled, "{t:?}");
        assert_eq!((t.stalls, t.restarts), (1, 0));
        assert!(tasks.running("slow"));
        assert!(!tasks.fault_active(), "a stall that passed is no failure");
    }

    #[tokio::test(start_paused = true)]
    async fn a_watched_thread_that_dies_is_reported_down_and_not_restarted() {
        let supervisor = Supervisor::default();
        let tasks = supervisor.tasks();
        let heartbeat = Heartbeat::default();
        let _watcher =
            supervisor.watch_thread(JOURNAL_TASK, heartbeat.clone(), JOURNAL_STALL_AFTER);
        let beating = heartbeat.clone();
        let thread = std::thread::spawn(move || {
            let _ended = beating.end_on_drop();
            beating.beat();
            panic!("the journal hit a bug");
        });
        assert!(thread.join().is_err());
        tokio::time::sleep(Duration::from_secs(2)).await;
        let t = snapshot_of(&tasks, JOURNAL_TASK);
        assert!(!t.up, "{t:?}");
        assert_eq!(t.restarts, 1);
        assert!(!tasks.running(JOURNAL_TASK));
        assert!(tasks.fault_active());
        tokio::time::sleep(FAULT_HOLD * 2).await;
        assert!(tasks.fault_active(), "a dead journal stays a fault");
    }

    #[test]
    fn the_watchdog_thread_reports_a_stall_once_and_ends_with_the_loop_it_watches() {
        let heartbeat = Heartbeat::default();
        let alive = heartbeat.end_on_drop();
        let stalls = Arc::new(AtomicU64::new(0));
        let counted = stalls.clone();
        let thread = watchdog_thread(
            RUNTIME_TASK,
            heartbeat.clone(),
            Duration::from_millis(200),
            Duration::from_millis(5),
            move || {
                counted.fetch_add(1, Ordering::Relaxed);
            },
        )
        .unwrap();
        let wait_for = |n: u64| {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while stalls.load(Ordering::Relaxed) < n && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            stalls.load(Ordering::Relaxed)
        };
        // Silent past its allowance: reported once, and the thread keeps watching.
        assert_eq!(wait_for(1), 1);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(stalls.load(Ordering::Relaxed), 1, "one report per stall");
        assert!(!thread.is_finished());
        // It turns again for a while, then stalls again: a second report.
        for _ in 0..50 {
            heartbeat.beat();
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(wait_for(2), 2);
        drop(alive);
        thread.join().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn after_stop_a_task_that_ends_stays_ended_and_its_keeper_completes() {
        let supervisor = Supervisor::default();
        let tasks = supervisor.tasks();
        let (end_tx, end_rx) = tokio::sync::oneshot::channel::<()>();
        let mut end_rx = Some(end_rx);
        let keeper = supervisor.spawn(
            MQTT_TASK,
            Duration::from_secs(60),
            OnStall::Restart,
            move |_| {
                let end = end_rx.take();
                async move {
                    if let Some(end) = end {
                        let _ = end.await;
                    }
                }
            },
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        supervisor.stop();
        end_tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(1), keeper)
            .await
            .expect("the keeper ends with its task")
            .unwrap();
        assert_eq!(snapshot_of(&tasks, MQTT_TASK).restarts, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_waiting_for_its_restart_is_not_restarted_after_stop() {
        let supervisor = Supervisor::default();
        let runs = Arc::new(AtomicU32::new(0));
        let counted = runs.clone();
        let keeper = supervisor.spawn(
            "modbus/a",
            Duration::from_secs(60),
            OnStall::Restart,
            move |_| {
                counted.fetch_add(1, Ordering::Relaxed);
                async { panic!("fails at once") }
            },
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        supervisor.stop();
        tokio::time::timeout(Duration::from_secs(2), keeper)
            .await
            .expect("the keeper ends after its backoff")
            .unwrap();
        assert_eq!(runs.load(Ordering::Relaxed), 1);
    }
}
