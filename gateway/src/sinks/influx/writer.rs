//! The writer task: the one place in this module with a clock, sockets, `select!` and
//! timeouts. Everything it decides comes from [`WriteQueue`], [`Verdict`] and [`Backoff`].
//!
//! [`InfluxSink::push`] encodes a batch on the caller's thread, puts it in the shared
//! [`WriteQueue`] under a mutex held for a few instructions (never across an `.await`) and
//! wakes the task; it never touches the disk. The task first reads back what the readings
//! lane on disk (`<data_dir>/readings`, [`Spool`]) held from before the start, then loops:
//! store what arrived on disk (one `write` per batch, on a blocking thread), shed what is
//! too old, fsync when the sync interval is up, then ask the queue what is due, cut a body,
//! read it back, gzip it, POST it, and record the outcome. Records leave the disk only when
//! their body was answered 2xx (or refused for good). A body that fails with no answer, a
//! 5xx or a 429 is sent again, byte for byte, after a backoff, while new batches keep
//! being stored (bounded by bytes, oldest shed first). A body refused with any other status
//! is dropped, counted and its error logged once per distinct message: see
//! [`Verdict::Reject`] for why it is not retried.
//!
//! When the last [`InfluxSink`] handle is dropped the task writes what is queued at once
//! and ends. If the server cannot take it then, what is on disk stays there for the next
//! start, and what was only in memory is abandoned and counted, instead of holding the
//! gateway's shutdown for minutes.
//!
//! # Restarts
//! In the gateway the task runs under the [`Supervisor`] (task
//! [`INFLUX_TASK`](crate::supervise::INFLUX_TASK), [`InfluxSink::spawn_supervised`]), which
//! starts a new run when one panics. What a run works from lives outside it, so a new run
//! takes up where the dead one stopped and the handles stay valid: the queue and the wake
//! are in `Shared` (the handles' too), and the readings lane on disk is opened once, by the
//! first run, and kept for the next ones. A run's own state is its backoff and the errors
//! it has logged (both start afresh) and the text of the body in flight: a new run puts
//! that body's records back to wait, from disk, at the front and in order
//! ([`WriteQueue::requeue_in_flight`]), so nothing on disk is lost; lines of it held only
//! in memory (the disk was failing) are counted as abandoned. The one gap: a panic between
//! storing arrived batches on disk and telling the queue (a few lines of code with no
//! `.await`) leaves those records on disk unknown to this process, sent after its next
//! start. A stall is reported, never aborted (see [`stall_after`]).

use std::error::Error as _;
use std::hash::BuildHasher;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use flate2::Compression;
use flate2::write::GzEncoder;
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE};
use shouwang_wire::ReadingBatch;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::config::{Auth, InfluxConfig, WriteTarget};
use super::encode::encode_batch;
use super::queue::{
    Backoff, Body, InfluxStats, Limits, SeenErrors, Step, Stored, Verdict, WriteQueue,
};
use super::spool::Spool;
use crate::supervise::{Heartbeat, INFLUX_TASK, JOURNAL_STALL_AFTER, OnStall, Supervisor};

/// How much of a refusal's body is kept for the error message.
const ERROR_BODY_MAX_BYTES: usize = 4096;
/// How many characters of the server's error text go into `last_error` and the log.
const ERROR_TEXT_MAX_CHARS: usize = 300;
/// Distinct error messages remembered so each is logged loudly only once.
const SEEN_ERRORS: usize = 64;
/// The longest the task waits without a turn (and a heartbeat) when nothing is due.
const IDLE_TURN: Duration = Duration::from_secs(10);

/// How long the writer may go without a turn before it counts as stalled: one turn is at
/// most a store and a sync of the lane on disk (allowed 30 s each, like the journal's, for
/// a slow SD card), a read back, one request (bounded by `timeout_ms`, answer included)
/// and an idle wait of at most [`IDLE_TURN`].
///
/// A stalled writer is reported (`task_failed`, `/healthz`), not aborted: what can stall
/// it is the disk, whose work runs on blocking threads that an abort cannot stop (a new
/// run would share the lane with the wedged operation), and an abort between handing
/// arrived batches to the disk and hearing back would leave them on disk unknown to the
/// queue until the next start. Restarting would not unwedge a disk; saying so does.
pub fn stall_after(cfg: &InfluxConfig) -> Duration {
    JOURNAL_STALL_AFTER
        .saturating_mul(2)
        .saturating_add(Duration::from_millis(cfg.timeout_ms))
        .saturating_add(IDLE_TURN)
}

/// Why the writer could not start.
#[derive(Debug, thiserror::Error)]
pub enum InfluxError {
    #[error("invalid [influx] config: {}", list(.0))]
    Config(Vec<(String, String)>),
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("the line-protocol writer must be started inside a tokio runtime")]
    NoRuntime,
}

fn list(problems: &[(String, String)]) -> String {
    let items: Vec<String> = problems.iter().map(|(f, m)| format!("{f}: {m}")).collect();
    items.join("; ")
}

/// A cheap handle to the writer task. Clone it freely; when the last clone is dropped the
/// task flushes what is queued and ends.
#[derive(Clone)]
pub struct InfluxSink {
    shared: Arc<Shared>,
    /// Only handles hold this; its drop tells the task that no more readings will come.
    _open: Arc<OpenHandles>,
}

/// State shared by the handles and the task.
struct Shared {
    /// The pure core. Locked briefly by `push`, `stats` and the task; never across `.await`.
    queue: Mutex<WriteQueue>,
    /// Wakes the task: a batch was pushed, or the last handle went away.
    wake: Notify,
    /// Set once, when the last handle is dropped.
    closing: AtomicBool,
    /// Tests: runs left to kill, each just before it sends a body.
    #[cfg(test)]
    panics_left: std::sync::atomic::AtomicU32,
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, WriteQueue> {
        // Every WriteQueue method leaves it consistent before it could panic (counters and
        // queues are updated together, with no calls out), so a poisoned lock still holds
        // a usable queue; refusing it would only lose readings.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct OpenHandles(Arc<Shared>);

impl Drop for OpenHandles {
    fn drop(&mut self) {
        self.0.closing.store(true, Ordering::Release);
        self.0.wake.notify_one();
    }
}

impl std::fmt::Debug for InfluxSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InfluxSink")
            .field("stats", &self.stats())
            .finish()
    }
}

impl InfluxSink {
    /// Check the config, build the HTTP client and start the writer task on the current
    /// tokio runtime, unsupervised (for tests and benches; the gateway uses
    /// [`InfluxSink::spawn_supervised`]). Readings wait in `<data_dir>/readings` until the
    /// server takes them; the task opens it (and reads back what it holds) before its first
    /// write. The handle returned completes when the task ends.
    pub fn spawn(
        cfg: InfluxConfig,
        data_dir: &Path,
    ) -> Result<(InfluxSink, JoinHandle<()>), InfluxError> {
        let (sink, runs) = InfluxSink::prepare(cfg, data_dir)?;
        let task = tokio::spawn(async move { runs.run(Heartbeat::default()).await });
        Ok((sink, task))
    }

    /// Like [`InfluxSink::spawn`], with the task kept by `supervisor` (task
    /// [`INFLUX_TASK`]): a new run starts when one panics or ends before shutdown (see the
    /// module docs for what it takes up), and a stall is reported. The handle returned is
    /// the keeper's: after [`Supervisor::stop`], it completes when the task ends.
    pub fn spawn_supervised(
        cfg: InfluxConfig,
        data_dir: &Path,
        supervisor: &Supervisor,
    ) -> Result<(InfluxSink, JoinHandle<()>), InfluxError> {
        let stall_after = stall_after(&cfg);
        let (sink, runs) = InfluxSink::prepare(cfg, data_dir)?;
        let runs = Arc::new(runs);
        let task = supervisor.spawn(INFLUX_TASK, stall_after, OnStall::Report, move |beat| {
            let runs = runs.clone();
            async move { runs.run(beat).await }
        });
        Ok((sink, task))
    }

    /// Check the config and build what every run of the task works from.
    fn prepare(cfg: InfluxConfig, data_dir: &Path) -> Result<(InfluxSink, Runs), InfluxError> {
        let target = WriteTarget::new(&cfg).map_err(InfluxError::Config)?;
        // `spawn` and the supervisor need a runtime; refused here rather than by a panic.
        tokio::runtime::Handle::try_current().map_err(|_| InfluxError::NoRuntime)?;
        // The workspace builds reqwest without a built-in crypto provider (ring only).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let timeout = Duration::from_millis(cfg.timeout_ms);
        let client = reqwest::Client::builder()
            .connect_timeout(timeout)
            // A write endpoint that redirects is a wrong `url`; following it would turn the
            // POST into a GET and hide that.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(InfluxError::Client)?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(WriteQueue::new(Limits {
                batch_max_lines: cfg.batch_max_lines,
                memory_max_batches: cfg.queue_max_batches,
                flush_interval: Duration::from_millis(cfg.flush_interval_ms),
                sync_interval: Duration::from_millis(cfg.sync_interval_ms),
                max_age: Duration::from_secs(cfg.queue_max_age_s),
            })),
            wake: Notify::new(),
            closing: AtomicBool::new(false),
            #[cfg(test)]
            panics_left: std::sync::atomic::AtomicU32::new(0),
        });
        let writer = Writer {
            client,
            target,
            timeout,
        };
        let runs = Runs {
            shared: shared.clone(),
            writer,
            lane: tokio::sync::OnceCell::new(),
            dir: data_dir.join("readings"),
            max_bytes: cfg.queue_max_bytes,
        };
        let sink = InfluxSink {
            _open: Arc::new(OpenHandles(shared.clone())),
            shared,
        };
        Ok((sink, runs))
    }

    /// Queue one batch for writing. Never blocks, never fails, never touches the disk
    /// (the task stores it): when `queue_max_batches` are held in memory the oldest is
    /// dropped and counted (readings are telemetry; alarms never come here). NaN and
    /// infinite values are skipped and counted.
    pub fn push(&self, batch: ReadingBatch) {
        let encoded = encode_batch(&batch);
        self.shared.queue().push(encoded, batch.ts_ms, now());
        self.shared.wake.notify_one();
    }

    /// What the writer has done so far.
    pub fn stats(&self) -> InfluxStats {
        self.shared.queue().stats()
    }

    /// Whether readings were shed (too old, or the disk queue full) in the last
    /// [`SHED_FAULT_HOLD`](super::queue::SHED_FAULT_HOLD): the gateway's `readings_shed`
    /// fault.
    pub fn shed_recently(&self) -> bool {
        self.shared.queue().shed_recently(now())
    }
}

/// The task's handle on the readings lane on disk. Only the task uses it, one operation
/// at a time, each on a blocking thread; the mutex is never contended, it only lets the
/// blocking closure borrow the lane.
struct Lane {
    spool: Arc<Mutex<Spool>>,
}

fn lock(spool: &Mutex<Spool>) -> MutexGuard<'_, Spool> {
    // Spool methods leave it consistent at every point a panic could come from (the
    // queue's own invariant), so a poisoned lock still holds a usable lane.
    spool.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Lane {
    /// Open the lane and put what it holds back in the queue, oldest first.
    async fn open(shared: &Shared, dir: PathBuf, max_bytes: u64) -> Lane {
        let fallback = dir.clone();
        let opened = tokio::task::spawn_blocking(move || Spool::open(&dir, max_bytes)).await;
        let spool = match opened {
            Ok((spool, restored)) => {
                let now = now();
                let mut q = shared.queue();
                for r in restored {
                    q.restored(r.seq, r.lines, r.ts_ms, now);
                }
                q.set_disk(spool.figures());
                spool
            }
            Err(e) => {
                tracing::error!(error = %e, "bug: opening the readings queue panicked; readings are held in memory only");
                Spool::in_memory(&fallback)
            }
        };
        Lane {
            spool: Arc::new(Mutex::new(spool)),
        }
    }

    /// Run `f` on the lane on a blocking thread.
    async fn on_disk<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Spool) -> T + Send + 'static,
    ) -> Option<T> {
        let spool = self.spool.clone();
        match tokio::task::spawn_blocking(move || f(&mut lock(&spool))).await {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::error!(error = %e, "bug: a readings queue operation panicked");
                None
            }
        }
    }

    /// Store what arrived, shed what is too old, and sync if it is time (or `closing`).
    async fn tend(&self, shared: &Shared, closing: bool) {
        let arrived = shared.queue().take_arrived();
        if !arrived.is_empty() {
            let batches = arrived.len();
            let stored = self
                .on_disk(move |spool| {
                    let shed_before = spool.records_shed();
                    let seqs: Vec<Option<u64>> = arrived.iter().map(|a| spool.append(a)).collect();
                    (arrived, seqs, spool.records_shed() > shed_before)
                })
                .await;
            let now = now();
            match stored {
                Some((arrived, seqs, shed)) => {
                    let spool = lock(&self.spool);
                    let mut q = shared.queue();
                    for (a, seq) in arrived.into_iter().zip(seqs) {
                        q.stored(a, seq, now);
                    }
                    if shed {
                        q.forget_shed(|seq| spool.is_pending(seq), now);
                    }
                    q.set_disk(spool.figures());
                }
                None => tracing::error!(batches, "readings lost to the bug above"),
            }
        }
        let now = now();
        let expired = shared.queue().expire(crate::clock::wall_ms(), now);
        if !expired.is_empty() {
            lock(&self.spool).ack(&expired);
            shared.queue().acked(now);
        }
        let due = {
            let q = shared.queue();
            q.sync_due(now) || (closing && q.unsynced())
        };
        if due
            && let Some(figures) = self
                .on_disk(|spool| {
                    spool.sync();
                    spool.figures()
                })
                .await
        {
            let mut q = shared.queue();
            q.synced();
            q.set_disk(figures);
        }
    }

    /// The text of a body: its memory parts as they are, its disk parts read back. Parts
    /// that cannot be read (damaged) leave the body, counted.
    async fn read_body(&self, shared: &Shared, body: Body) -> String {
        let read = self
            .on_disk(move |spool| {
                let mut text = String::new();
                let mut lost = Vec::new();
                for part in body.parts {
                    match part {
                        Stored::Memory(t) => text.push_str(&t),
                        Stored::Disk(seq) => match spool.read(seq) {
                            Some(t) => text.push_str(&t),
                            None => lost.push(seq),
                        },
                    }
                }
                (text, lost, spool.figures())
            })
            .await;
        let mut q = shared.queue();
        match read {
            Some((text, lost, figures)) => {
                for seq in lost {
                    q.lost_from_body(seq);
                }
                q.set_disk(figures);
                text
            }
            None => {
                // Settle the body as refused rather than leave it in flight.
                let seqs = q.rejected("reading the body back from disk failed".into());
                drop(q);
                lock(&self.spool).ack(&seqs);
                String::new()
            }
        }
    }

    /// The body in flight is settled: its records leave the disk queue.
    fn settled(&self, shared: &Shared, seqs: &[u64]) {
        if !seqs.is_empty() {
            lock(&self.spool).ack(seqs);
            shared.queue().acked(now());
        }
    }
}

/// The clock. Tokio's, so tests may pause it.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// A random number in `[0, 1)` for backoff jitter, from the standard library's per-process
/// random hash keys (no extra dependency for a number that only needs to differ between
/// gateways).
fn jitter() -> f64 {
    let bits = std::collections::hash_map::RandomState::new().hash_one(Instant::now());
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// What every run of the writer task works from, kept across runs (see the module docs).
struct Runs {
    shared: Arc<Shared>,
    writer: Writer,
    /// The readings lane on disk, opened by the first run.
    lane: tokio::sync::OnceCell<Lane>,
    dir: PathBuf,
    max_bytes: u64,
}

impl Runs {
    /// One run of the task, beating `heartbeat` every turn.
    async fn run(&self, heartbeat: Heartbeat) {
        heartbeat.beat();
        let shared = &self.shared;
        let lane = self
            .lane
            .get_or_init(|| Lane::open(shared, self.dir.clone(), self.max_bytes))
            .await;
        if shared.queue().in_flight() {
            let lost = shared.queue().requeue_in_flight(now());
            tracing::warn!(
                lines_lost = lost,
                "the line-protocol writer restarted; the body it was sending waits again on disk (lines held only in memory are lost)"
            );
        }
        run(shared, &self.writer, lane, &heartbeat).await;
    }
}

async fn run(shared: &Shared, writer: &Writer, lane: &Lane, heartbeat: &Heartbeat) {
    let mut backoff = Backoff::default();
    let mut seen = SeenErrors::new(SEEN_ERRORS);
    loop {
        heartbeat.beat();
        let closing = shared.closing.load(Ordering::Acquire);
        lane.tend(shared, closing).await;
        let step = shared.queue().next_step(now(), closing);
        match step {
            Step::Flush => {
                let Some(body) = shared.queue().cut_body() else {
                    continue;
                };
                let text = lane.read_body(shared, body).await;
                let delivered = deliver(
                    shared,
                    writer,
                    lane,
                    text,
                    &mut backoff,
                    &mut seen,
                    heartbeat,
                )
                .await;
                if !delivered {
                    let lost = shared.queue().abandon();
                    lane.tend(shared, true).await;
                    tracing::warn!(
                        url = %writer.target.url,
                        lines_lost = lost,
                        bytes_on_disk = shared.queue().stats().disk.bytes,
                        "stopping with readings the server could not take; those on disk are sent after the next start"
                    );
                    return;
                }
            }
            Step::WaitUntil(at) => {
                let at =
                    tokio::time::Instant::from_std(at).min(tokio::time::Instant::now() + IDLE_TURN);
                tokio::select! {
                    () = tokio::time::sleep_until(at) => {}
                    () = shared.wake.notified() => {}
                }
            }
            Step::Idle => {
                // Woken at least every IDLE_TURN, to beat the heartbeat.
                let _ = tokio::time::timeout(IDLE_TURN, shared.wake.notified()).await;
            }
            Step::Done => {
                tracing::debug!(url = %writer.target.url, "line-protocol writer stopped");
                return;
            }
            Step::Busy => {
                // `deliver` always settles its body before it returns, so nothing can be in
                // flight here. If that invariant ever breaks, stop rather than spin.
                let lost = shared.queue().abandon();
                tracing::error!(
                    lines = lost,
                    "bug: a body was left in flight; writer stopped"
                );
                return;
            }
        }
    }
}

/// Send one body until the server takes it or refuses it for good; either way the body is
/// settled in the queue (and its records acknowledged on disk) and this returns true.
/// Returns false, with the body still in flight, when the writer is closing and the server
/// could not take it. While it waits to retry, arriving batches are stored and the lane
/// synced.
async fn deliver(
    shared: &Shared,
    writer: &Writer,
    lane: &Lane,
    text: String,
    backoff: &mut Backoff,
    seen: &mut SeenErrors,
    heartbeat: &Heartbeat,
) -> bool {
    let lines = text.bytes().filter(|b| *b == b'\n').count();
    if text.is_empty() {
        // Everything in it was lost on disk (counted): nothing to send.
        let seqs = shared.queue().written();
        lane.settled(shared, &seqs);
        return true;
    }
    let gz = match gzip(&text) {
        Ok(gz) => gz,
        Err(e) => {
            // Compressing into memory cannot fail short of a bug in flate2; keep going.
            let seqs = shared
                .queue()
                .rejected(format!("compressing the request body: {e}"));
            lane.settled(shared, &seqs);
            return true;
        }
    };
    drop(text);
    loop {
        heartbeat.beat();
        #[cfg(test)]
        if shared
            .panics_left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
        {
            panic!("injected: the writer dies with a body in flight");
        }
        match writer.send(gz.clone()).await {
            Ok(()) => {
                let seqs = shared.queue().written();
                lane.settled(shared, &seqs);
                if backoff.failures() > 0 {
                    tracing::info!(
                        url = %writer.target.url,
                        failed_attempts = backoff.failures(),
                        "line-protocol writes work again"
                    );
                }
                backoff.reset();
                return true;
            }
            Err(Failure {
                verdict: Verdict::Reject,
                message,
            }) => {
                let seqs = shared.queue().rejected(message.clone());
                lane.settled(shared, &seqs);
                if seen.first_time(&message) {
                    tracing::warn!(
                        url = %writer.target.url,
                        lines,
                        error = %message,
                        "server refused readings; dropping them (sending them again would fail the same way)"
                    );
                } else {
                    tracing::debug!(lines, error = %message, "server refused readings");
                }
                return true;
            }
            Err(Failure { message, .. }) => {
                shared.queue().failed(message.clone());
                let delay = backoff.next_delay(jitter());
                if backoff.failures() == 1 || seen.first_time(&message) {
                    tracing::warn!(
                        url = %writer.target.url,
                        error = %message,
                        retry_in_ms = delay.as_millis() as u64,
                        "line-protocol write failed; will retry"
                    );
                } else {
                    tracing::debug!(error = %message, retry_in_ms = delay.as_millis() as u64, "write failed again");
                }
                if shared.closing.load(Ordering::Acquire) {
                    return false;
                }
                let deadline = tokio::time::Instant::now() + delay;
                loop {
                    // Wake for the retry, for pushes (to store them) and for the sync.
                    let wake_at = shared
                        .queue()
                        .sync_at()
                        .map_or(deadline, |at| deadline.min(at.into()));
                    tokio::select! {
                        () = tokio::time::sleep_until(wake_at) => {}
                        () = shared.wake.notified() => {}
                    }
                    heartbeat.beat();
                    let closing = shared.closing.load(Ordering::Acquire);
                    lane.tend(shared, closing).await;
                    if !shared.queue().in_flight() {
                        // Its records were shed (the disk queue filled up): counted, done.
                        return true;
                    }
                    // Only closing cuts the wait short (for one last try).
                    if closing || tokio::time::Instant::now() >= deadline {
                        break;
                    }
                }
            }
        }
    }
}

/// A failed write: what to do about it and what to tell the operator.
#[derive(Debug)]
struct Failure {
    verdict: Verdict,
    message: String,
}

/// The HTTP side of the writer.
struct Writer {
    client: reqwest::Client,
    target: WriteTarget,
    /// Per request, connecting and reading the answer included.
    timeout: Duration,
}

impl Writer {
    /// POST one gzipped body; both InfluxDB and VictoriaMetrics accept
    /// `Content-Encoding: gzip` with `text/plain` line protocol.
    async fn send(&self, gz: Vec<u8>) -> Result<(), Failure> {
        let mut request = self
            .client
            .post(self.target.url.clone())
            .timeout(self.timeout)
            .header(CONTENT_TYPE, "text/plain; charset=utf-8")
            .header(CONTENT_ENCODING, "gzip")
            .body(gz);
        request = match &self.target.auth {
            Auth::None => request,
            Auth::Basic { username, password } => request.basic_auth(username, Some(password)),
            Auth::Header(value) => request.header(AUTHORIZATION, value.clone()),
        };
        let mut response = request.send().await.map_err(|e| Failure {
            verdict: Verdict::Retry,
            message: error_chain(&e),
        })?;
        let status = response.status();
        let verdict = Verdict::of_status(status.as_u16());
        if verdict == Verdict::Written {
            return Ok(());
        }
        // Read at most a few KiB of the explanation, within the request's timeout.
        let mut text = Vec::new();
        while text.len() < ERROR_BODY_MAX_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => text.extend_from_slice(&chunk),
                Ok(None) | Err(_) => break,
            }
        }
        Err(Failure {
            verdict,
            message: describe_refusal(status, &text),
        })
    }
}

/// `HTTP 404 Not Found: database not found: "x"`: the status and the server's own words,
/// taken from InfluxDB's `{"error": "..."}` when it is JSON, shortened.
fn describe_refusal(status: StatusCode, body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct InfluxErrorBody {
        error: String,
    }
    let text = match serde_json::from_slice::<InfluxErrorBody>(body) {
        Ok(e) => e.error,
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    };
    let text = text.trim();
    let mut short: String = text.chars().take(ERROR_TEXT_MAX_CHARS).collect();
    if short.len() < text.len() {
        short.push('…');
    }
    if short.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {short}")
    }
}

/// An error and its causes on one line: reqwest's own message only says "error sending
/// request"; the cause says "Connection refused".
fn error_chain(e: &reqwest::Error) -> String {
    let mut message = if e.is_timeout() {
        format!("timed out: {e}")
    } else {
        e.to_string()
    };
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

/// Gzip a body. Fast compression: line protocol repeats itself so much that the fastest
/// level already shrinks it several times over, and gateways have small CPUs.
fn gzip(text: &str) -> std::io::Result<Vec<u8>> {
    let mut encoder = GzEncoder::new(Vec::with_capacity(text.len() / 4), Compression::fast());
    encoder.write_all(text.as_bytes())?;
    encoder.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    #[test]
    fn influxdb_json_errors_are_reduced_to_their_text() {
        let m = describe_refusal(
            StatusCode::NOT_FOUND,
            br#"{"error":"database not found: \"nodb\""}"#,
        );
        assert_eq!(m, r#"HTTP 404 Not Found: database not found: "nodb""#);
    }

    #[test]
    fn plain_text_errors_are_kept_and_long_ones_shortened() {
        assert_eq!(
            describe_refusal(StatusCode::BAD_REQUEST, b"cannot parse line\n"),
            "HTTP 400 Bad Request: cannot parse line"
        );
        assert_eq!(
            describe_refusal(StatusCode::UNAUTHORIZED, b""),
            "HTTP 401 Unauthorized"
        );
        let long = describe_refusal(StatusCode::BAD_REQUEST, "x".repeat(5000).as_bytes());
        assert!(long.ends_with('…') && long.len() < 400, "{long}");
    }

    #[test]
    fn gzipped_bodies_inflate_to_the_lines() {
        let text = "shouwang_reading,device=d value=1 1\n".repeat(100);
        let gz = gzip(&text).unwrap();
        assert!(gz.len() < text.len() / 10, "{} bytes", gz.len());
        let mut back = String::new();
        flate2::read::GzDecoder::new(gz.as_slice())
            .read_to_string(&mut back)
            .unwrap();
        assert_eq!(back, text);
    }

    #[test]
    fn jitter_stays_in_range() {
        for _ in 0..1000 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j), "{j}");
        }
    }

    /// A store on a free port that takes every write (204) and keeps the lines.
    async fn store() -> (String, Arc<Mutex<Vec<String>>>) {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let kept = lines.clone();
        let app = axum::Router::new().route(
            "/write",
            axum::routing::post(move |body: axum::body::Bytes| {
                let mut text = String::new();
                flate2::read::GzDecoder::new(&body[..])
                    .read_to_string(&mut text)
                    .unwrap();
                kept.lock()
                    .unwrap()
                    .extend(text.lines().map(str::to_string));
                async { StatusCode::NO_CONTENT }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (url, lines)
    }

    fn readings(device: &str) -> ReadingBatch {
        ReadingBatch {
            schema: ReadingBatch::SCHEMA,
            gateway: "gw".into(),
            device: device.into(),
            device_kind: "smoke".into(),
            place: shouwang_wire::Place {
                community: "c".into(),
                building: "b".into(),
                floor: "f".into(),
                room: "u".into(),
                ..shouwang_wire::Place::default()
            },
            ts_ms: crate::clock::wall_ms(),
            points: vec![shouwang_wire::PointValue {
                point: "obscuration".into(),
                value: Some(1.5),
                engineering_unit: None,
                quality: Default::default(),
            }],
        }
    }

    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_writer_that_dies_sending_is_restarted_resends_from_disk_and_the_same_handle_keeps_working()
     {
        let (url, stored) = store().await;
        let dir = tempfile::tempdir().unwrap();
        let cfg = InfluxConfig {
            db: Some("shouwang".into()),
            flush_interval_ms: 20,
            ..InfluxConfig::new(url, crate::sinks::influx::InfluxApi::V1)
        };
        let supervisor = Supervisor::new(crate::supervise::Policy {
            first_backoff: Duration::from_millis(50),
            check_every: Duration::from_millis(20),
            ..Default::default()
        });
        let (sink, _keeper) = InfluxSink::spawn_supervised(cfg, dir.path(), &supervisor).unwrap();
        let task = || {
            supervisor
                .tasks()
                .snapshot()
                .into_iter()
                .find(|t| t.name == INFLUX_TASK)
                .unwrap()
        };
        sink.shared.panics_left.store(1, Ordering::Relaxed);
        sink.push(readings("d1"));
        until("the first run dies", || task().restarts == 1).await;
        until("d1 is written by the next run", || {
            stored
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains("device=d1"))
        })
        .await;
        sink.push(readings("d2"));
        until("d2 is written through the same handle", || {
            stored
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains("device=d2"))
        })
        .await;
        let stats = sink.stats();
        assert_eq!(
            (stats.lines_written, stats.lines_abandoned),
            (2, 0),
            "{stats:?}"
        );
        assert_eq!(stored.lock().unwrap().len(), 2, "nothing sent twice");
        let t = task();
        assert!(t.up && !t.stalled && t.restarts == 1, "{t:?}");
        assert!(supervisor.tasks().fault_active());
    }

    #[test]
    fn a_stall_is_allowed_two_disk_waits_a_request_and_an_idle_turn() {
        let mut cfg = InfluxConfig::new("http://127.0.0.1:1", crate::sinks::influx::InfluxApi::V1);
        cfg.timeout_ms = 5_000;
        assert_eq!(stall_after(&cfg), Duration::from_secs(75));
    }

    #[test]
    fn spawning_outside_a_runtime_is_an_error_not_a_panic() {
        let mut cfg = InfluxConfig::new("http://127.0.0.1:1", crate::sinks::influx::InfluxApi::V1);
        cfg.db = Some("x".into());
        assert!(matches!(
            InfluxSink::spawn(cfg, Path::new("/nonexistent")),
            Err(InfluxError::NoRuntime)
        ));
    }

    #[test]
    fn spawning_with_a_bad_config_lists_every_problem() {
        let cfg = InfluxConfig {
            batch_max_lines: 0,
            ..InfluxConfig::new("http://127.0.0.1:1", crate::sinks::influx::InfluxApi::V1)
        };
        let err = InfluxSink::spawn(cfg, Path::new("/nonexistent"))
            .err()
            .unwrap();
        let text = err.to_string();
        assert!(
            text.contains("db: required") && text.contains("batch_max_lines"),
            "{text}"
        );
    }
}
