//! What waits to be written, when to write it, and what the writer has done so far.
//! Pure: time comes in as an argument, nothing here sleeps or touches the network or the
//! disk. The writer (`writer.rs`) does the I/O this queue asks for: it stores arrived
//! batches on the readings lane on disk (`spool.rs`), syncs it, reads bodies back and
//! tells this queue how each step went.
//!
//! A reading batch goes through these states:
//! 1. *arrived*: pushed by the runtime loop, text in memory, not yet on disk;
//! 2. *waiting*: stored, as a record on disk ([`Stored::Disk`]) or, when the disk could
//!    not take it, in memory ([`Stored::Memory`]);
//! 3. *in flight*: in the one body being sent or retried;
//! 4. ended: written (2xx), rejected (4xx other than 429), shed (too old, or the disk
//!    queue was full), dropped (memory full) or abandoned (in memory at shutdown).
//!
//! Invariants of [`WriteQueue`]:
//! - batches held in memory (arrived, or waiting in memory) are at most
//!   `memory_max_batches`; one more drops the oldest such batch and counts it in
//!   `batches_dropped`. Batches on disk are bounded by the disk queue's bytes instead;
//! - waiting batches keep the order they arrived in, and bodies are cut from the front,
//!   so readings reach the server in the order they were taken;
//! - at most one [`Body`] is in flight; while it is, batches keep arriving and being
//!   stored, and no other body is cut; a body that is retried is the same bytes every
//!   time;
//! - a body holds whole batches, oldest first, and at most `batch_max_lines` lines, except
//!   that a single batch with more lines than that goes alone in one body (one poll of one
//!   device is never split);
//! - a body is cut as soon as `batch_max_lines` lines wait, or once the oldest waiting
//!   batch has waited `flush_interval`, or at once when the writer is closing;
//! - a record on disk leaves the disk queue only when its body was written or rejected
//!   ([`WriteQueue::written`] and [`WriteQueue::rejected`] return the seqs to acknowledge),
//!   or when it is shed;
//! - a sync is due once the oldest record appended since the last sync has waited
//!   `sync_interval`;
//! - every batch that enters ends exactly one way (see the states above), or stays on disk
//!   for the next start.
//!
//! [`Backoff`] and [`Verdict`] are the retry policy: which answers are worth retrying and
//! how long to wait before the next try.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::encode::EncodedBatch;

/// What the writer has done, for metrics and health checks.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InfluxStats {
    /// Lines the server accepted (2xx).
    pub lines_written: u64,
    /// Values not written because they were NaN or infinite.
    pub values_skipped: u64,
    /// Reading batches dropped from memory, oldest first, because `queue_max_batches` were
    /// held there (the disk queue could not take them, or not fast enough).
    pub batches_dropped: u64,
    /// Reading batches shed, oldest first, because the disk queue was full
    /// (`queue_max_bytes`) or they were older than `queue_max_age_s`; never sent.
    pub batches_shed: u64,
    /// Lines of the shed batches.
    pub lines_shed: u64,
    /// Lines dropped because the server refused their request with a 4xx other than 429.
    /// InfluxDB writes the good lines of a partially bad request, so some may be stored.
    pub lines_rejected: u64,
    /// Lines held only in memory when the writer stopped and the server could not take
    /// them. Lines on disk are not abandoned: the next start sends them.
    pub lines_abandoned: u64,
    /// Failed write requests: transport errors, timeouts, 5xx, 429 (all retried) and
    /// refused ones (not retried).
    pub write_errors: u64,
    /// The most recent failure, e.g. `HTTP 404 Not Found: database not found: "x"`.
    pub last_error: Option<String>,
    /// Reading batches accepted and not yet written or given up: arrived, waiting (on
    /// disk or in memory), plus those in the request being sent or retried.
    pub queued: usize,
    /// The readings lane on disk, as the writer last saw it.
    pub disk: DiskFigures,
}

/// The readings lane on disk (`<data_dir>/readings`), for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DiskFigures {
    /// Bytes of segment files.
    pub bytes: u64,
    /// fsyncs since start (segments, the delivered mark, the directory).
    pub fsyncs: u64,
    /// Records skipped because their bytes failed their checks (at start, or read back),
    /// and bytes of torn tails cut off at start.
    pub corrupt_records: u64,
    pub torn_bytes: u64,
    /// True while the disk cannot take readings (it could not be opened, or the last
    /// write or sync failed): new readings are held in memory only.
    pub failing: bool,
}

/// Where a waiting batch's lines are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// A record of the readings lane on disk, by seq.
    Disk(u64),
    /// In memory only: the disk could not take it.
    Memory(String),
}

/// A batch pushed and not yet stored: the writer takes these with
/// [`WriteQueue::take_arrived`] and hands each back to [`WriteQueue::stored`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arrived {
    pub text: String,
    pub lines: usize,
    /// The batch's own timestamp (wall clock, ms), by which it ages.
    pub ts_ms: i64,
    /// When it was pushed (monotonic), for the flush interval.
    pub since: Instant,
}

/// One request body, before its disk parts are read back: whole batches, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Body {
    pub parts: Vec<Stored>,
    pub lines: usize,
    pub batches: usize,
}

/// What the writer should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Cut a body with [`WriteQueue::cut_body`] and send it.
    Flush,
    /// Nothing is due before this instant (unless more is pushed).
    WaitUntil(Instant),
    /// Nothing waits; wait for a push.
    Idle,
    /// A body is in flight; finish it first.
    Busy,
    /// Closing and nothing is left: the writer is done.
    Done,
}

/// Limits, from the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub batch_max_lines: usize,
    /// `queue_max_batches`: batches held in memory at most.
    pub memory_max_batches: usize,
    pub flush_interval: Duration,
    /// Longest an appended record waits for its fsync.
    pub sync_interval: Duration,
    /// Batches whose own timestamp is older than this are shed.
    pub max_age: Duration,
}

/// After the last shed, how long the gateway's `readings_shed` fault stays raised.
pub const SHED_FAULT_HOLD: Duration = Duration::from_secs(10 * 60);

#[derive(Debug)]
struct Waiting {
    stored: Stored,
    lines: usize,
    ts_ms: i64,
    since: Instant,
}

/// The body being sent or retried.
#[derive(Debug, Clone, PartialEq, Eq)]
struct InFlight {
    lines: usize,
    batches: usize,
    /// Its records on disk, their lines and timestamps (wall clock, ms); acknowledged once
    /// the body is settled, or put back to wait by [`WriteQueue::requeue_in_flight`].
    disk: Vec<(u64, usize, i64)>,
    /// Its lines held only in memory.
    memory_lines: usize,
}

/// The batches that arrived, wait and fly, and the counters.
#[derive(Debug)]
pub struct WriteQueue {
    limits: Limits,
    /// Pushed, not yet stored; oldest first.
    arrived: VecDeque<Arrived>,
    /// Stored, oldest first.
    waiting: VecDeque<Waiting>,
    /// Sum of `lines` over `waiting`, so the size trigger costs nothing to check.
    waiting_lines: usize,
    /// `Stored::Memory` entries in `waiting`, for the memory bound.
    waiting_in_memory: usize,
    in_flight: Option<InFlight>,
    /// When the oldest record appended since the last sync was appended.
    unsynced_since: Option<Instant>,
    /// When readings were last shed, for the `readings_shed` fault.
    last_shed: Option<Instant>,
    /// Lines of the batches counted in `batches_dropped` (for the accounting test).
    lines_dropped: u64,
    stats: InfluxStats,
}

impl WriteQueue {
    pub fn new(limits: Limits) -> Self {
        WriteQueue {
            limits: Limits {
                batch_max_lines: limits.batch_max_lines.max(1),
                memory_max_batches: limits.memory_max_batches.max(1),
                ..limits
            },
            arrived: VecDeque::new(),
            waiting: VecDeque::new(),
            waiting_lines: 0,
            waiting_in_memory: 0,
            in_flight: None,
            unsynced_since: None,
            last_shed: None,
            lines_dropped: 0,
            stats: InfluxStats::default(),
        }
    }

    /// Take one encoded batch, timestamped `ts_ms` (wall clock), that arrived at `now`.
    /// Drops the oldest batch held in memory when `memory_max_batches` are. A batch
    /// without lines only counts its skipped values.
    pub fn push(&mut self, batch: EncodedBatch, ts_ms: i64, now: Instant) {
        self.stats.values_skipped += batch.skipped as u64;
        if batch.lines == 0 {
            return;
        }
        self.make_memory_room();
        self.arrived.push_back(Arrived {
            text: batch.text,
            lines: batch.lines,
            ts_ms,
            since: now,
        });
    }

    /// Everything pushed since the last call, oldest first, to be stored in this order.
    pub fn take_arrived(&mut self) -> Vec<Arrived> {
        self.arrived.drain(..).collect()
    }

    /// An arrived batch is stored: on disk as record `seq`, or in memory. Call in the
    /// order [`take_arrived`](Self::take_arrived) returned them. `now` is when it was
    /// stored, for the sync deadline.
    pub fn stored(&mut self, arrived: Arrived, on_disk: Option<u64>, now: Instant) {
        let stored = match on_disk {
            Some(seq) => {
                self.unsynced_since.get_or_insert(now);
                Stored::Disk(seq)
            }
            None => {
                self.make_memory_room();
                self.waiting_in_memory += 1;
                Stored::Memory(arrived.text)
            }
        };
        self.waiting_lines += arrived.lines;
        self.waiting.push_back(Waiting {
            stored,
            lines: arrived.lines,
            ts_ms: arrived.ts_ms,
            since: arrived.since,
        });
    }

    /// A record found on disk at start: it waits like one stored at `now`.
    pub fn restored(&mut self, seq: u64, lines: usize, ts_ms: i64, now: Instant) {
        self.waiting_lines += lines;
        self.waiting.push_back(Waiting {
            stored: Stored::Disk(seq),
            lines,
            ts_ms,
            since: now,
        });
    }

    /// Whether the disk queue should be synced at `now`.
    pub fn sync_due(&self, now: Instant) -> bool {
        self.unsynced_since
            .is_some_and(|t| now >= t + self.limits.sync_interval)
    }

    /// Whether anything appended is not yet synced.
    pub fn unsynced(&self) -> bool {
        self.unsynced_since.is_some()
    }

    /// The disk queue was synced (or the sync failed and will not be retried for these).
    pub fn synced(&mut self) {
        self.unsynced_since = None;
    }

    /// The disk queue shed records to stay under its bytes: forget every waiting record
    /// `still_pending` says it no longer holds, and count them. The body in flight (the
    /// oldest readings) is shed too when every record in it was and it holds nothing from
    /// memory: the writer stops retrying it ([`in_flight`](Self::in_flight) turns false).
    /// A body only partly shed is still sent.
    pub fn forget_shed(&mut self, still_pending: impl Fn(u64) -> bool, now: Instant) {
        let (mut flight_batches, mut flight_lines) = (0u64, 0usize);
        if let Some(f) = &self.in_flight
            && f.memory_lines == 0
            && f.disk.iter().all(|(seq, _, _)| !still_pending(*seq))
        {
            flight_batches = f.batches as u64;
            flight_lines = f.lines;
            self.in_flight = None;
        }
        let (mut batches, mut lines) = (0u64, 0usize);
        self.waiting.retain(|w| match w.stored {
            Stored::Disk(seq) if !still_pending(seq) => {
                batches += 1;
                lines += w.lines;
                false
            }
            _ => true,
        });
        self.waiting_lines -= lines;
        self.count_shed(batches + flight_batches, lines + flight_lines, now);
    }

    /// Shed the waiting batches, from the oldest, whose own timestamp is more than
    /// `max_age` before `wall_ms`. Returns the disk seqs to acknowledge. Looks only at the
    /// front: batches are in arrival order, so a younger batch ahead (a clock stepped
    /// back) keeps older ones behind it until it goes.
    pub fn expire(&mut self, wall_ms: i64, now: Instant) -> Vec<u64> {
        let max_age_ms = i64::try_from(self.limits.max_age.as_millis()).unwrap_or(i64::MAX);
        let oldest_kept = wall_ms.saturating_sub(max_age_ms);
        let mut seqs = Vec::new();
        let (mut batches, mut lines) = (0u64, 0usize);
        while let Some(front) = self.waiting.front() {
            if front.ts_ms >= oldest_kept {
                break;
            }
            let Some(old) = self.waiting.pop_front() else {
                break;
            };
            batches += 1;
            lines += old.lines;
            self.waiting_lines -= old.lines;
            match old.stored {
                Stored::Disk(seq) => seqs.push(seq),
                Stored::Memory(_) => self.waiting_in_memory -= 1,
            }
        }
        self.count_shed(batches, lines, now);
        seqs
    }

    /// Whether readings were shed within [`SHED_FAULT_HOLD`] before `now`.
    pub fn shed_recently(&self, now: Instant) -> bool {
        self.last_shed
            .is_some_and(|t| now.saturating_duration_since(t) < SHED_FAULT_HOLD)
    }

    /// What to do at `now`. `closing`: the writer is shutting down, so whatever waits is
    /// due at once.
    pub fn next_step(&self, now: Instant, closing: bool) -> Step {
        if self.in_flight.is_some() {
            return Step::Busy;
        }
        let sync_at = self.unsynced_since.map(|t| t + self.limits.sync_interval);
        let Some(oldest) = self.waiting.front() else {
            return match (closing, sync_at) {
                (true, _) => Step::Done,
                (false, Some(at)) => Step::WaitUntil(at),
                (false, None) => Step::Idle,
            };
        };
        let due = oldest.since + self.limits.flush_interval;
        if closing || self.waiting_lines >= self.limits.batch_max_lines || now >= due {
            Step::Flush
        } else {
            Step::WaitUntil(sync_at.map_or(due, |at| at.min(due)))
        }
    }

    /// Move the oldest waiting batches into a body and mark it in flight. `None` when a
    /// body is already in flight or nothing waits.
    pub fn cut_body(&mut self) -> Option<Body> {
        if self.in_flight.is_some() || self.waiting.is_empty() {
            return None;
        }
        let mut body = Body {
            parts: Vec::new(),
            lines: 0,
            batches: 0,
        };
        let mut flight = InFlight {
            lines: 0,
            batches: 0,
            disk: Vec::new(),
            memory_lines: 0,
        };
        while let Some(next) = self.waiting.front() {
            if body.batches > 0 && body.lines + next.lines > self.limits.batch_max_lines {
                break;
            }
            let Some(next) = self.waiting.pop_front() else {
                break;
            };
            self.waiting_lines -= next.lines;
            match &next.stored {
                Stored::Disk(seq) => flight.disk.push((*seq, next.lines, next.ts_ms)),
                Stored::Memory(_) => {
                    self.waiting_in_memory -= 1;
                    flight.memory_lines += next.lines;
                }
            }
            body.parts.push(next.stored);
            body.lines += next.lines;
            body.batches += 1;
        }
        flight.lines = body.lines;
        flight.batches = body.batches;
        self.in_flight = Some(flight);
        Some(body)
    }

    /// Whether a body is being sent or retried.
    pub fn in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Part of the body in flight could not be read back from disk (damaged): it is not
    /// sent, and no longer counts as in flight.
    pub fn lost_from_body(&mut self, seq: u64) {
        if let Some(f) = &mut self.in_flight
            && let Some(i) = f.disk.iter().position(|(s, _, _)| *s == seq)
        {
            let (_, lines, _) = f.disk.remove(i);
            f.lines -= lines;
            f.batches -= 1;
        }
    }

    /// Records were acknowledged on disk at `now`: the delivered mark is written (and
    /// delivered segments deleted) by a sync, due like one for new records.
    pub fn acked(&mut self, now: Instant) {
        self.unsynced_since.get_or_insert(now);
    }

    /// When the next sync is due, if one is.
    pub fn sync_at(&self) -> Option<Instant> {
        self.unsynced_since.map(|t| t + self.limits.sync_interval)
    }

    /// The server took the body in flight. Returns its disk records, to acknowledge.
    pub fn written(&mut self) -> Vec<u64> {
        match self.in_flight.take() {
            Some(f) => {
                self.stats.lines_written += f.lines as u64;
                f.disk.into_iter().map(|(seq, _, _)| seq).collect()
            }
            None => Vec::new(),
        }
    }

    /// Sending the body in flight failed in a way worth retrying; it stays in flight.
    pub fn failed(&mut self, error: String) {
        self.stats.write_errors += 1;
        self.stats.last_error = Some(error);
    }

    /// The server refused the body in flight for good; it is dropped. Returns its disk
    /// records, to acknowledge (they are ended, not to be sent again).
    pub fn rejected(&mut self, error: String) -> Vec<u64> {
        self.stats.write_errors += 1;
        self.stats.last_error = Some(error);
        match self.in_flight.take() {
            Some(f) => {
                self.stats.lines_rejected += f.lines as u64;
                f.disk.into_iter().map(|(seq, _, _)| seq).collect()
            }
            None => Vec::new(),
        }
    }

    /// The writer is stopping and cannot deliver: drop what is held only in memory (the
    /// body in flight's memory part, waiting and arrived batches) and forget the rest,
    /// which stays on disk for the next start. Returns how many lines were lost.
    pub fn abandon(&mut self) -> usize {
        let mut lines = self.in_flight.take().map_or(0, |f| f.memory_lines);
        lines += self.arrived.drain(..).map(|a| a.lines).sum::<usize>();
        lines += self
            .waiting
            .drain(..)
            .filter(|w| matches!(w.stored, Stored::Memory(_)))
            .map(|w| w.lines)
            .sum::<usize>();
        self.waiting_lines = 0;
        self.waiting_in_memory = 0;
        self.stats.lines_abandoned += lines as u64;
        lines
    }

    /// The writer task died (a panic) with a body in flight, and a new one starts: the
    /// body's records on disk wait again, at the front and in their order, as if restored
    /// at `now`; its lines held only in memory went with the task (the body's text was
    /// its) and are counted in `lines_abandoned`. Returns those lines. Nothing happens when
    /// no body is in flight.
    pub fn requeue_in_flight(&mut self, now: Instant) -> usize {
        let Some(f) = self.in_flight.take() else {
            return 0;
        };
        for (seq, lines, ts_ms) in f.disk.into_iter().rev() {
            self.waiting_lines += lines;
            self.waiting.push_front(Waiting {
                stored: Stored::Disk(seq),
                lines,
                ts_ms,
                since: now,
            });
        }
        self.stats.lines_abandoned += f.memory_lines as u64;
        f.memory_lines
    }

    /// The readings lane on disk as the writer last saw it.
    pub fn set_disk(&mut self, disk: DiskFigures) {
        self.stats.disk = disk;
    }

    pub fn stats(&self) -> InfluxStats {
        InfluxStats {
            queued: self.arrived.len()
                + self.waiting.len()
                + self.in_flight.as_ref().map_or(0, |f| f.batches),
            ..self.stats.clone()
        }
    }

    /// Make room for one more batch in memory: drop the oldest waiting in memory, else the
    /// oldest arrived.
    fn make_memory_room(&mut self) {
        while self.arrived.len() + self.waiting_in_memory >= self.limits.memory_max_batches {
            let oldest_waiting = self
                .waiting
                .iter()
                .position(|w| matches!(w.stored, Stored::Memory(_)));
            let lines = match oldest_waiting.and_then(|i| self.waiting.remove(i)) {
                Some(w) => {
                    self.waiting_in_memory -= 1;
                    self.waiting_lines -= w.lines;
                    w.lines
                }
                None => match self.arrived.pop_front() {
                    Some(a) => a.lines,
                    None => return,
                },
            };
            self.lines_dropped += lines as u64;
            self.stats.batches_dropped += 1;
        }
    }

    fn count_shed(&mut self, batches: u64, lines: usize, now: Instant) {
        if batches > 0 {
            self.stats.batches_shed += batches;
            self.stats.lines_shed += lines as u64;
            self.last_shed = Some(now);
        }
    }
}

/// How the answer to a write request is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx: the lines are stored.
    Written,
    /// No answer, 5xx or 429: the server is away or busy; send the same body again later.
    Retry,
    /// Any other status (4xx: bad data, bad credentials, missing database; 3xx: the URL
    /// points somewhere else). Sending the same bytes again would get the same answer, and
    /// retrying would only hold up every reading behind it until the queue sheds them, so
    /// the body is dropped, counted and the error logged.
    Reject,
}

impl Verdict {
    pub fn of_status(status: u16) -> Verdict {
        match status {
            200..=299 => Verdict::Written,
            429 | 500..=599 => Verdict::Retry,
            _ => Verdict::Reject,
        }
    }
}

/// Exponential backoff between retries of one body: 250 ms, 500 ms, 1 s, ... capped at
/// 10 s (a store that comes back after an outage gets its backlog within 10 s; one small
/// request per 10 s to a store that is away costs nothing), each delay shortened by up to half at random so that many gateways that lost the
/// same server do not come back in step.
#[derive(Debug, Clone, Default)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_millis(250);
    pub const CAP: Duration = Duration::from_secs(10);

    /// The delay before the next try, after one more failure. `jitter` in `[0, 1)`.
    pub fn next_delay(&mut self, jitter: f64) -> Duration {
        let full = Self::FIRST
            .saturating_mul(2u32.saturating_pow(self.failures.min(16)))
            .min(Self::CAP);
        self.failures = self.failures.saturating_add(1);
        full.mul_f64(1.0 - 0.5 * jitter.clamp(0.0, 1.0))
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Remembers which error messages were already logged, so each distinct one is logged
/// loudly once. Bounded: past `cap` messages the oldest is forgotten (and would be logged
/// again).
#[derive(Debug)]
pub struct SeenErrors {
    seen: VecDeque<String>,
    cap: usize,
}

impl SeenErrors {
    pub fn new(cap: usize) -> Self {
        SeenErrors {
            seen: VecDeque::new(),
            cap: cap.max(1),
        }
    }

    /// True the first time a message is seen.
    pub fn first_time(&mut self, message: &str) -> bool {
        if self.seen.iter().any(|m| m == message) {
            return false;
        }
        if self.seen.len() >= self.cap {
            self.seen.pop_front();
        }
        self.seen.push_back(message.to_string());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_millis(1000);
    const SYNC: Duration = Duration::from_millis(300);
    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn queue(max_lines: usize, max_batches: usize) -> WriteQueue {
        WriteQueue::new(Limits {
            batch_max_lines: max_lines,
            memory_max_batches: max_batches,
            flush_interval: INTERVAL,
            sync_interval: SYNC,
            max_age: DAY,
        })
    }

    /// A batch of `lines` lines, each `name\n`.
    fn batch(name: &str, lines: usize) -> EncodedBatch {
        EncodedBatch {
            text: format!("{name}\n").repeat(lines),
            lines,
            skipped: 0,
        }
    }

    /// Push a batch and store it in memory, as when the disk cannot take it.
    fn put(q: &mut WriteQueue, b: EncodedBatch, now: Instant) {
        q.push(b, 0, now);
        for a in q.take_arrived() {
            q.stored(a, None, now);
        }
    }

    /// Push a batch and store it on disk as record `seq`.
    fn put_disk(q: &mut WriteQueue, b: EncodedBatch, ts_ms: i64, seq: u64, now: Instant) {
        q.push(b, ts_ms, now);
        for a in q.take_arrived() {
            q.stored(a, Some(seq), now);
        }
    }

    /// The text of a body held in memory.
    fn text(body: &Body) -> String {
        body.parts
            .iter()
            .map(|p| match p {
                Stored::Memory(t) => t.clone(),
                Stored::Disk(seq) => format!("<disk {seq}>"),
            })
            .collect()
    }

    #[test]
    fn nothing_is_sent_before_the_oldest_line_has_waited_the_flush_interval() {
        let t0 = Instant::now();
        let mut q = queue(100, 10);
        assert_eq!(q.next_step(t0, false), Step::Idle);
        put(&mut q, batch("a", 1), t0);
        put(&mut q, batch("b", 1), t0 + Duration::from_millis(600));
        assert_eq!(
            q.next_step(t0 + Duration::from_millis(999), false),
            Step::WaitUntil(t0 + INTERVAL)
        );
        assert_eq!(q.next_step(t0 + INTERVAL, false), Step::Flush);
        let body = q.cut_body().unwrap();
        assert_eq!(
            (text(&body).as_str(), body.lines, body.batches),
            ("a\nb\n", 2, 2)
        );
    }

    #[test]
    fn a_full_batch_of_lines_is_sent_at_once() {
        let t0 = Instant::now();
        let mut q = queue(5, 10);
        put(&mut q, batch("a", 3), t0);
        assert!(matches!(q.next_step(t0, false), Step::WaitUntil(_)));
        put(&mut q, batch("b", 2), t0);
        assert_eq!(q.next_step(t0, false), Step::Flush);
    }

    #[test]
    fn bodies_hold_whole_batches_and_at_most_the_line_limit() {
        let t0 = Instant::now();
        let mut q = queue(5, 10);
        put(&mut q, batch("a", 3), t0);
        put(&mut q, batch("b", 3), t0);
        put(&mut q, batch("c", 7), t0);
        let first = q.cut_body().unwrap();
        assert_eq!((first.lines, first.batches), (3, 1));
        q.written();
        let second = q.cut_body().unwrap();
        assert_eq!((second.lines, second.batches), (3, 1));
        q.written();
        // Bigger than the limit on its own: sent alone, not split.
        let third = q.cut_body().unwrap();
        assert_eq!((third.lines, third.batches), (7, 1));
        q.written();
        assert_eq!(q.stats().lines_written, 13);
        assert_eq!(q.next_step(t0, false), Step::Idle);
    }

    #[test]
    fn when_memory_is_full_the_oldest_batch_held_there_is_dropped_and_counted() {
        let t0 = Instant::now();
        let mut q = queue(100, 3);
        put_disk(&mut q, batch("disk", 1), 0, 7, t0);
        for name in ["a", "b", "c", "d", "e"] {
            put(&mut q, batch(name, 1), t0);
        }
        let stats = q.stats();
        // The record on disk does not count against the memory bound.
        assert_eq!((stats.batches_dropped, stats.queued), (2, 4));
        assert_eq!(text(&q.cut_body().unwrap()), "<disk 7>c\nd\ne\n");
        // Arrived batches count too: the disk may be slow to take them.
        let mut q = queue(100, 2);
        for name in ["a", "b", "c"] {
            q.push(batch(name, 1), 0, t0);
        }
        let left: Vec<String> = q.take_arrived().into_iter().map(|a| a.text).collect();
        assert_eq!(left, ["b\n", "c\n"]);
        assert_eq!(q.stats().batches_dropped, 1);
    }

    #[test]
    fn while_a_body_is_retried_new_batches_queue_and_the_same_body_stays_in_flight() {
        let t0 = Instant::now();
        let mut q = queue(100, 2);
        put(&mut q, batch("a", 1), t0);
        let body = q.cut_body().unwrap();
        q.failed("HTTP 503".into());
        for name in ["b", "c", "d"] {
            put(&mut q, batch(name, 1), t0 + INTERVAL * 5);
        }
        // In flight: no second body, the memory bound sheds only waiting batches.
        assert_eq!(q.next_step(t0 + INTERVAL * 9, false), Step::Busy);
        assert_eq!(q.cut_body(), None);
        let stats = q.stats();
        assert_eq!(
            (stats.write_errors, stats.batches_dropped, stats.queued),
            (1, 1, 3)
        );
        assert_eq!(stats.last_error.as_deref(), Some("HTTP 503"));
        q.written();
        assert_eq!(text(&body), "a\n");
        assert_eq!(q.next_step(t0 + INTERVAL * 9, false), Step::Flush);
        assert_eq!(text(&q.cut_body().unwrap()), "c\nd\n");
    }

    #[test]
    fn records_on_disk_are_acknowledged_only_when_their_body_is_written_or_refused() {
        let t0 = Instant::now();
        let mut q = queue(2, 10);
        put_disk(&mut q, batch("a", 1), 0, 10, t0);
        put(&mut q, batch("m", 1), t0);
        put_disk(&mut q, batch("b", 2), 0, 11, t0);
        let first = q.cut_body().unwrap();
        assert_eq!(
            first.parts,
            [Stored::Disk(10), Stored::Memory("m\n".into())]
        );
        q.failed("timed out".into());
        assert_eq!(q.next_step(t0 + INTERVAL, false), Step::Busy);
        assert_eq!(q.written(), [10]);
        q.cut_body().unwrap();
        assert_eq!(q.rejected("HTTP 400".into()), [11]);
        let stats = q.stats();
        assert_eq!(
            (stats.lines_written, stats.lines_rejected, stats.queued),
            (2, 2, 0)
        );
    }

    #[test]
    fn a_sync_is_due_once_the_oldest_unsynced_record_has_waited_the_sync_interval() {
        let t0 = Instant::now();
        let mut q = queue(100, 10);
        assert!(!q.sync_due(t0 + DAY));
        put_disk(&mut q, batch("a", 1), 0, 1, t0);
        put_disk(&mut q, batch("b", 1), 0, 2, t0 + SYNC / 2);
        assert!(q.unsynced());
        assert!(!q.sync_due(t0 + SYNC - Duration::from_millis(1)));
        // The writer is woken for the sync before the flush.
        assert_eq!(q.next_step(t0, false), Step::WaitUntil(t0 + SYNC));
        assert!(q.sync_due(t0 + SYNC));
        q.synced();
        assert!(!q.sync_due(t0 + DAY) && !q.unsynced());
        // Batches held in memory need no sync.
        put(&mut q, batch("m", 1), t0);
        assert!(!q.unsynced());
        // Nothing waiting but a sync pending: wait for the sync, not idle.
        let mut q = queue(100, 10);
        put_disk(&mut q, batch("a", 1), 0, 1, t0);
        q.cut_body().unwrap();
        q.written();
        assert_eq!(q.next_step(t0, false), Step::WaitUntil(t0 + SYNC));
    }

    #[test]
    fn records_the_disk_shed_are_forgotten_counted_and_raise_the_fault_for_ten_minutes() {
        let t0 = Instant::now();
        let mut q = queue(1, 10);
        for seq in 0..5 {
            put_disk(&mut q, batch("x", 2), 0, seq, t0);
        }
        let in_flight = q.cut_body().unwrap();
        assert_eq!(in_flight.parts, [Stored::Disk(0)]);
        assert!(!q.shed_recently(t0));
        // The disk dropped its oldest segment: seqs 0 to 2, the body in flight with them.
        q.forget_shed(|seq| seq >= 3, t0);
        let stats = q.stats();
        assert_eq!(
            (stats.batches_shed, stats.lines_shed, stats.queued),
            (3, 6, 2)
        );
        assert!(!q.in_flight());
        assert_eq!(q.written(), Vec::<u64>::new());
        assert_eq!(
            q.cut_body().unwrap().parts,
            [Stored::Disk(3)],
            "the newest are kept"
        );
        assert!(q.shed_recently(t0 + SHED_FAULT_HOLD - Duration::from_secs(1)));
        assert!(!q.shed_recently(t0 + SHED_FAULT_HOLD));
        // A body holding a batch from memory is sent whatever the disk shed.
        let mut q = queue(10, 10);
        put_disk(&mut q, batch("d", 1), 0, 1, t0);
        put(&mut q, batch("m", 1), t0);
        q.cut_body().unwrap();
        q.forget_shed(|_| false, t0);
        assert!(q.in_flight());
    }

    #[test]
    fn batches_older_than_the_age_limit_are_shed_oldest_first() {
        let t0 = Instant::now();
        let mut q = queue(100, 10);
        let day_ms = 24 * 3600 * 1000;
        put_disk(&mut q, batch("old", 1), 1_000, 1, t0);
        put(&mut q, batch("old-mem", 2), t0);
        put_disk(&mut q, batch("new", 1), 1_000 + day_ms, 2, t0);
        // Exactly a day old is kept.
        assert_eq!(q.expire(1_000 + day_ms, t0), Vec::<u64>::new());
        // "old-mem" carries timestamp 0 from `put`.
        assert_eq!(q.expire(1_001 + day_ms, t0), [1]);
        let stats = q.stats();
        assert_eq!(
            (stats.batches_shed, stats.lines_shed, stats.queued),
            (2, 3, 1)
        );
        assert!(q.shed_recently(t0));
        // A clock far in the past sheds nothing.
        assert_eq!(q.expire(i64::MIN, t0), Vec::<u64>::new());
    }

    #[test]
    fn a_refused_body_is_dropped_and_counted() {
        let t0 = Instant::now();
        let mut q = queue(100, 10);
        put(&mut q, batch("a", 4), t0);
        q.cut_body().unwrap();
        q.rejected("HTTP 404 Not Found: database not found".into());
        let stats = q.stats();
        assert_eq!(
            (
                stats.lines_rejected,
                stats.write_errors,
                stats.queued,
                stats.lines_written
            ),
            (4, 1, 0, 0)
        );
        assert_eq!(q.next_step(t0, false), Step::Idle);
    }

    #[test]
    fn closing_flushes_at_once_and_then_is_done() {
        let t0 = Instant::now();
        let mut q = queue(100, 10);
        put(&mut q, batch("a", 1), t0);
        assert_eq!(q.next_step(t0, true), Step::Flush);
        q.cut_body().unwrap();
        q.written();
        assert_eq!(q.next_step(t0, true), Step::Done);
    }

    #[test]
    fn abandoning_counts_the_lines_held_in_memory_and_leaves_those_on_disk() {
        let t0 = Instant::now();
        let mut q = queue(2, 10);
        put(&mut q, batch("a", 2), t0);
        put_disk(&mut q, batch("d", 4), 0, 9, t0);
        put(&mut q, batch("b", 3), t0);
        q.push(batch("c", 1), 0, t0);
        q.cut_body().unwrap();
        assert_eq!(q.abandon(), 6);
        let stats = q.stats();
        assert_eq!((stats.lines_abandoned, stats.queued), (6, 0));
    }

    #[test]
    fn a_body_in_flight_when_the_writer_died_waits_again_from_disk_in_its_order() {
        let t0 = Instant::now();
        let mut q = queue(6, 10);
        put_disk(&mut q, batch("a", 2), 10, 1, t0);
        put(&mut q, batch("m", 1), t0);
        put_disk(&mut q, batch("b", 3), 20, 2, t0);
        put_disk(&mut q, batch("c", 4), 30, 3, t0);
        let body = q.cut_body().unwrap();
        assert_eq!(body.lines, 6);
        // The task dies with it; a new one starts.
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(
            q.requeue_in_flight(t1),
            1,
            "the line held in memory went with it"
        );
        assert!(!q.in_flight());
        assert_eq!(q.stats().queued, 3);
        assert_eq!(q.stats().lines_abandoned, 1);
        assert_eq!(
            q.next_step(t1, false),
            Step::Flush,
            "6 lines wait: a full body"
        );
        let again = q.cut_body().unwrap();
        assert_eq!(again.parts, [Stored::Disk(1), Stored::Disk(2)]);
        assert_eq!(q.written(), [1, 2]);
        let last = q.cut_body().unwrap();
        assert_eq!(last.parts, [Stored::Disk(3)]);
        assert_eq!(q.written(), [3]);
        assert_eq!(q.stats().lines_written, 9);
        assert_eq!(
            q.requeue_in_flight(t1),
            0,
            "nothing in flight: nothing to do"
        );
    }

    #[test]
    fn a_record_that_cannot_be_read_back_leaves_the_body_and_the_queue() {
        let t0 = Instant::now();
        let mut q = queue(100, 10);
        put_disk(&mut q, batch("a", 2), 0, 1, t0);
        put_disk(&mut q, batch("b", 3), 0, 2, t0);
        let body = q.cut_body().unwrap();
        assert_eq!(body.parts, [Stored::Disk(1), Stored::Disk(2)]);
        q.lost_from_body(1);
        assert_eq!(q.stats().queued, 1);
        assert_eq!(q.written(), [2]);
        assert_eq!(q.stats().lines_written, 3);
    }

    #[test]
    fn batches_without_lines_only_count_their_skipped_values() {
        let t0 = Instant::now();
        let mut q = queue(100, 10);
        q.push(
            EncodedBatch {
                text: String::new(),
                lines: 0,
                skipped: 2,
            },
            0,
            t0,
        );
        let stats = q.stats();
        assert_eq!((stats.values_skipped, stats.queued), (2, 0));
        assert!(q.take_arrived().is_empty());
        assert_eq!(q.next_step(t0, false), Step::Idle);
    }

    /// Model check: random pushes, stores (disk or memory), sheds, cuts, outcomes and
    /// deaths of the writer task;
    /// every line is accounted for exactly once and the bounds hold throughout.
    #[test]
    fn every_line_ends_exactly_one_way_under_random_operations() {
        let t0 = Instant::now();
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..50 {
            let max_lines = 1 + (next() % 8) as usize;
            let max_batches = 1 + (next() % 5) as usize;
            let mut q = queue(max_lines, max_batches);
            let mut pushed = 0u64;
            let mut requeued_abandoned = 0u64;
            let mut next_seq = 0u64;
            // Lines on disk that a settled body acknowledged, to check the acks.
            let mut disk_lines: std::collections::BTreeMap<u64, usize> = Default::default();
            for step in 0..300u64 {
                let now = t0 + Duration::from_millis(step * 100);
                match next() % 7 {
                    0 | 1 => {
                        let lines = (next() % 4) as usize;
                        pushed += lines as u64;
                        q.push(batch("x", lines), 0, now);
                    }
                    2 => {
                        let to_disk = next() % 3 != 0;
                        for a in q.take_arrived() {
                            if to_disk {
                                disk_lines.insert(next_seq, a.lines);
                                q.stored(a, Some(next_seq), now);
                                next_seq += 1;
                            } else {
                                q.stored(a, None, now);
                            }
                        }
                    }
                    3 if q.next_step(now, false) == Step::Flush => {
                        let body = q.cut_body().unwrap();
                        assert!(body.batches == 1 || body.lines <= max_lines);
                    }
                    4 => {
                        let acked = match next() % 3 {
                            0 => q.written(),
                            1 => {
                                q.failed("e".into());
                                Vec::new()
                            }
                            _ => q.rejected("e".into()),
                        };
                        for seq in acked {
                            assert!(disk_lines.remove(&seq).is_some(), "{seq} acked twice");
                        }
                    }
                    5 => {
                        // The disk sheds its oldest third.
                        let cut = next_seq / 3;
                        q.forget_shed(|seq| seq >= cut, now);
                    }
                    6 if next() % 4 == 0 => {
                        // The writer task dies and a new one starts.
                        requeued_abandoned += q.requeue_in_flight(now) as u64;
                    }
                    _ => {}
                }
                let in_memory = q
                    .waiting
                    .iter()
                    .filter(|w| matches!(w.stored, Stored::Memory(_)))
                    .count();
                assert_eq!(in_memory, q.waiting_in_memory);
                assert!(q.arrived.len() + in_memory <= max_batches);
                assert_eq!(
                    q.waiting_lines,
                    q.waiting.iter().map(|w| w.lines).sum::<usize>()
                );
            }
            let on_disk: u64 = q
                .waiting
                .iter()
                .filter(|w| matches!(w.stored, Stored::Disk(_)))
                .map(|w| w.lines as u64)
                .sum::<u64>()
                + q.in_flight
                    .as_ref()
                    .map_or(0, |f| (f.lines - f.memory_lines) as u64);
            let left = q.abandon() as u64;
            let s = q.stats();
            assert_eq!(s.lines_abandoned, left + requeued_abandoned);
            assert_eq!(
                s.lines_written
                    + s.lines_rejected
                    + s.lines_shed
                    + q.lines_dropped
                    + s.lines_abandoned
                    + on_disk,
                pushed,
                "{s:?}"
            );
        }
    }

    #[test]
    fn answers_are_sorted_into_written_retry_and_reject() {
        for (status, verdict) in [
            (204, Verdict::Written),
            (200, Verdict::Written),
            (429, Verdict::Retry),
            (500, Verdict::Retry),
            (503, Verdict::Retry),
            (400, Verdict::Reject),
            (401, Verdict::Reject),
            (404, Verdict::Reject),
            (413, Verdict::Reject),
            (301, Verdict::Reject),
        ] {
            assert_eq!(Verdict::of_status(status), verdict, "{status}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_ten_seconds_and_resets() {
        let mut b = Backoff::default();
        let delays: Vec<u128> = (0..10).map(|_| b.next_delay(0.0).as_millis()).collect();
        assert_eq!(
            delays,
            [250, 500, 1000, 2000, 4000, 8000, 10000, 10000, 10000, 10000]
        );
        assert_eq!(b.failures(), 10);
        for _ in 0..100 {
            assert_eq!(b.next_delay(0.0), Backoff::CAP);
        }
        b.reset();
        assert_eq!(b.next_delay(0.999_999).as_millis(), 125);
    }

    #[test]
    fn each_distinct_error_is_first_seen_once() {
        let mut seen = SeenErrors::new(2);
        assert!(seen.first_time("a"));
        assert!(!seen.first_time("a"));
        assert!(seen.first_time("b"));
        assert!(seen.first_time("c"));
        // "a" was forgotten to keep the memory bounded.
        assert!(seen.first_time("a"));
    }
}
