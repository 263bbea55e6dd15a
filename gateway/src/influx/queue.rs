//! What waits to be written, when to write it, and what the writer has done so far.
//! Pure: time comes in as an argument, nothing here sleeps or touches the network.
//!
//! Invariants of [`WriteQueue`]:
//! - at most `queue_max_batches` encoded batches wait; pushing one more drops the oldest
//!   waiting batch and counts it in `batches_dropped` (readings are telemetry: the newest
//!   values matter most, and alarms never come this way);
//! - at most one [`Body`] is in flight; while it is, batches keep queueing (bounded as
//!   above) and no other body is cut, so bodies reach the server in the order they were cut
//!   and a body that is retried is the same bytes every time;
//! - a body holds whole batches, oldest first, and at most `batch_max_lines` lines, except
//!   that a single batch with more lines than that goes alone in one body (one poll of one
//!   device is never split);
//! - a body is cut as soon as `batch_max_lines` lines wait, or once the oldest waiting
//!   batch has waited `flush_interval`, or at once when the writer is closing;
//! - every batch that enters ends exactly one way: written (`lines_written`), dropped
//!   when full (`batches_dropped`), refused by the server (`lines_rejected`), or abandoned
//!   at shutdown (`lines_abandoned`).
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
    /// Reading batches dropped, oldest first, because the queue was full.
    pub batches_dropped: u64,
    /// Lines dropped because the server refused their request with a 4xx other than 429.
    /// InfluxDB writes the good lines of a partially bad request, so some may be stored.
    pub lines_rejected: u64,
    /// Lines still queued when the writer stopped and the server could not take them.
    pub lines_abandoned: u64,
    /// Failed write requests: transport errors, timeouts, 5xx, 429 (all retried) and
    /// refused ones (not retried).
    pub write_errors: u64,
    /// The most recent failure, e.g. `HTTP 404 Not Found: database not found: "x"`.
    pub last_error: Option<String>,
    /// Reading batches accepted and not yet written or given up: waiting, plus those in the
    /// request being sent or retried.
    pub queued: usize,
}

/// One request body: whole lines, not yet compressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Body {
    pub text: String,
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
    pub queue_max_batches: usize,
    pub flush_interval: Duration,
}

#[derive(Debug)]
struct Waiting {
    text: String,
    lines: usize,
    since: Instant,
}

/// The bounded queue of encoded batches, the body in flight, and the counters.
#[derive(Debug)]
pub struct WriteQueue {
    limits: Limits,
    /// Oldest first; never longer than `limits.queue_max_batches`.
    waiting: VecDeque<Waiting>,
    /// Sum of `lines` over `waiting`, so the size trigger costs nothing to check.
    waiting_lines: usize,
    /// (lines, batches) of the body being sent or retried.
    in_flight: Option<(usize, usize)>,
    stats: InfluxStats,
}

impl WriteQueue {
    pub fn new(limits: Limits) -> Self {
        WriteQueue {
            limits: Limits {
                batch_max_lines: limits.batch_max_lines.max(1),
                queue_max_batches: limits.queue_max_batches.max(1),
                ..limits
            },
            waiting: VecDeque::new(),
            waiting_lines: 0,
            in_flight: None,
            stats: InfluxStats::default(),
        }
    }

    /// Queue one encoded batch that arrived at `now`. Drops the oldest waiting batch when
    /// the queue is full. A batch without lines only counts its skipped values.
    pub fn push(&mut self, batch: EncodedBatch, now: Instant) {
        self.stats.values_skipped += batch.skipped as u64;
        if batch.lines == 0 {
            return;
        }
        while self.waiting.len() >= self.limits.queue_max_batches {
            if let Some(old) = self.waiting.pop_front() {
                self.waiting_lines -= old.lines;
                self.stats.batches_dropped += 1;
            }
        }
        self.waiting_lines += batch.lines;
        self.waiting.push_back(Waiting {
            text: batch.text,
            lines: batch.lines,
            since: now,
        });
    }

    /// What to do at `now`. `closing`: the writer is shutting down, so whatever waits is
    /// due at once.
    pub fn next_step(&self, now: Instant, closing: bool) -> Step {
        if self.in_flight.is_some() {
            return Step::Busy;
        }
        let Some(oldest) = self.waiting.front() else {
            return if closing { Step::Done } else { Step::Idle };
        };
        let due = oldest.since + self.limits.flush_interval;
        if closing || self.waiting_lines >= self.limits.batch_max_lines || now >= due {
            Step::Flush
        } else {
            Step::WaitUntil(due)
        }
    }

    /// Move the oldest waiting batches into a body and mark it in flight. `None` when a
    /// body is already in flight or nothing waits.
    pub fn cut_body(&mut self) -> Option<Body> {
        if self.in_flight.is_some() || self.waiting.is_empty() {
            return None;
        }
        let mut body = Body {
            text: String::new(),
            lines: 0,
            batches: 0,
        };
        while let Some(next) = self.waiting.front() {
            if body.batches > 0 && body.lines + next.lines > self.limits.batch_max_lines {
                break;
            }
            let Some(next) = self.waiting.pop_front() else {
                break;
            };
            self.waiting_lines -= next.lines;
            body.text.push_str(&next.text);
            body.lines += next.lines;
            body.batches += 1;
        }
        self.in_flight = Some((body.lines, body.batches));
        Some(body)
    }

    /// The server took the body in flight.
    pub fn written(&mut self) {
        if let Some((lines, _)) = self.in_flight.take() {
            self.stats.lines_written += lines as u64;
        }
    }

    /// Sending the body in flight failed in a way worth retrying; it stays in flight.
    pub fn failed(&mut self, error: String) {
        self.stats.write_errors += 1;
        self.stats.last_error = Some(error);
    }

    /// The server refused the body in flight for good; it is dropped.
    pub fn rejected(&mut self, error: String) {
        self.stats.write_errors += 1;
        self.stats.last_error = Some(error);
        if let Some((lines, _)) = self.in_flight.take() {
            self.stats.lines_rejected += lines as u64;
        }
    }

    /// The writer is stopping and cannot deliver: drop the body in flight and everything
    /// waiting. Returns how many lines were lost.
    pub fn abandon(&mut self) -> usize {
        let lines = self.in_flight.take().map_or(0, |(l, _)| l) + self.waiting_lines;
        self.waiting.clear();
        self.waiting_lines = 0;
        self.stats.lines_abandoned += lines as u64;
        lines
    }

    pub fn stats(&self) -> InfluxStats {
        InfluxStats {
            queued: self.waiting.len() + self.in_flight.map_or(0, |(_, b)| b),
            ..self.stats.clone()
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
/// 30 s, each delay shortened by up to half at random so that many gateways that lost the
/// same server do not come back in step.
#[derive(Debug, Clone, Default)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_millis(250);
    pub const CAP: Duration = Duration::from_secs(30);

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

    fn queue(max_lines: usize, max_batches: usize) -> WriteQueue {
        WriteQueue::new(Limits {
            batch_max_lines: max_lines,
            queue_max_batches: max_batches,
            flush_interval: INTERVAL,
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

    #[test]
    fn nothing_is_sent_before_the_oldest_line_has_waited_the_flush_interval() {
        let t0 = Instant::now();
        let mut q = queue(100, 10);
        assert_eq!(q.next_step(t0, false), Step::Idle);
        q.push(batch("a", 1), t0);
        q.push(batch("b", 1), t0 + Duration::from_millis(600));
        assert_eq!(
            q.next_step(t0 + Duration::from_millis(999), false),
            Step::WaitUntil(t0 + INTERVAL)
        );
        assert_eq!(q.next_step(t0 + INTERVAL, false), Step::Flush);
        let body = q.cut_body().unwrap();
        assert_eq!(
            (body.text.as_str(), body.lines, body.batches),
            ("a\nb\n", 2, 2)
        );
    }

    #[test]
    fn a_full_batch_of_lines_is_sent_at_once() {
        let t0 = Instant::now();
        let mut q = queue(5, 10);
        q.push(batch("a", 3), t0);
        assert!(matches!(q.next_step(t0, false), Step::WaitUntil(_)));
        q.push(batch("b", 2), t0);
        assert_eq!(q.next_step(t0, false), Step::Flush);
    }

    #[test]
    fn bodies_hold_whole_batches_and_at_most_the_line_limit() {
        let t0 = Instant::now();
        let mut q = queue(5, 10);
        q.push(batch("a", 3), t0);
        q.push(batch("b", 3), t0);
        q.push(batch("c", 7), t0);
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
    fn when_the_queue_is_full_the_oldest_batch_is_dropped_and_counted() {
        let t0 = Instant::now();
        let mut q = queue(100, 3);
        for name in ["a", "b", "c", "d", "e"] {
            q.push(batch(name, 1), t0);
        }
        let stats = q.stats();
        assert_eq!((stats.batches_dropped, stats.queued), (2, 3));
        assert_eq!(q.cut_body().unwrap().text, "c\nd\ne\n");
    }

    #[test]
    fn while_a_body_is_retried_new_batches_queue_and_the_same_body_stays_in_flight() {
        let t0 = Instant::now();
        let mut q = queue(100, 2);
        q.push(batch("a", 1), t0);
        let body = q.cut_body().unwrap();
        q.failed("HTTP 503".into());
        for name in ["b", "c", "d"] {
            q.push(batch(name, 1), t0 + INTERVAL * 5);
        }
        // In flight: no second body, the queue sheds only waiting batches.
        assert_eq!(q.next_step(t0 + INTERVAL * 9, false), Step::Busy);
        assert_eq!(q.cut_body(), None);
        let stats = q.stats();
        assert_eq!(
            (stats.write_errors, stats.batches_dropped, stats.queued),
            (1, 1, 3)
        );
        assert_eq!(stats.last_error.as_deref(), Some("HTTP 503"));
        q.written();
        assert_eq!(body.text, "a\n");
        assert_eq!(q.next_step(t0 + INTERVAL * 9, false), Step::Flush);
        assert_eq!(q.cut_body().unwrap().text, "c\nd\n");
    }

    #[test]
    fn a_refused_body_is_dropped_and_counted() {
        let t0 = Instant::now();
        let mut q = queue(100, 10);
        q.push(batch("a", 4), t0);
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
        q.push(batch("a", 1), t0);
        assert_eq!(q.next_step(t0, true), Step::Flush);
        q.cut_body().unwrap();
        q.written();
        assert_eq!(q.next_step(t0, true), Step::Done);
    }

    #[test]
    fn abandoning_counts_every_line_left() {
        let t0 = Instant::now();
        let mut q = queue(2, 10);
        q.push(batch("a", 2), t0);
        q.push(batch("b", 3), t0);
        q.cut_body().unwrap();
        assert_eq!(q.abandon(), 5);
        let stats = q.stats();
        assert_eq!((stats.lines_abandoned, stats.queued), (5, 0));
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
            t0,
        );
        let stats = q.stats();
        assert_eq!((stats.values_skipped, stats.queued), (2, 0));
        assert_eq!(q.next_step(t0, false), Step::Idle);
    }

    /// Model check: random pushes, cuts and outcomes; every line is accounted for exactly
    /// once and the bounds hold throughout.
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
            let (mut pushed, mut dropped_lines) = (0u64, 0u64);
            for step in 0..300u64 {
                let now = t0 + Duration::from_millis(step * 100);
                match next() % 5 {
                    0 | 1 => {
                        let lines = (next() % 4) as usize;
                        // Lines the push will shed, to check the count by lines too.
                        if lines > 0 && q.waiting.len() >= max_batches {
                            dropped_lines += q.waiting.front().map_or(0, |w| w.lines) as u64;
                        }
                        pushed += lines as u64;
                        q.push(batch("x", lines), now);
                    }
                    2 if q.next_step(now, false) == Step::Flush => {
                        let body = q.cut_body().unwrap();
                        assert!(body.batches == 1 || body.lines <= max_lines);
                        assert_eq!(body.text.lines().count(), body.lines);
                    }
                    3 => match next() % 3 {
                        0 => q.written(),
                        1 => q.failed("e".into()),
                        _ => q.rejected("e".into()),
                    },
                    _ => {}
                }
                assert!(q.waiting.len() <= max_batches);
                assert_eq!(
                    q.waiting_lines,
                    q.waiting.iter().map(|w| w.lines).sum::<usize>()
                );
            }
            let left = q.abandon() as u64;
            let s = q.stats();
            assert_eq!(s.lines_abandoned, left);
            assert_eq!(
                s.lines_written + s.lines_rejected + left + dropped_lines,
                pushed
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
    fn backoff_doubles_up_to_thirty_seconds_and_resets() {
        let mut b = Backoff::default();
        let delays: Vec<u128> = (0..10).map(|_| b.next_delay(0.0).as_millis()).collect();
        assert_eq!(
            delays,
            [250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
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
