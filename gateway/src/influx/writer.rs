//! The writer task: the one place in this module with a clock, sockets, `select!` and
//! timeouts. Everything it decides comes from [`WriteQueue`], [`Verdict`] and [`Backoff`].
//!
//! [`InfluxSink::push`] encodes a batch on the caller's thread, puts it in the shared
//! [`WriteQueue`] under a mutex held for a few instructions (never across an `.await`) and
//! wakes the task. The task loops: ask the queue what is due, cut a body, gzip it, POST
//! it, and record the outcome. A body that fails with no answer, a 5xx or a 429 is sent
//! again, byte for byte, after a backoff, while new batches keep queueing (bounded, oldest
//! shed first). A body refused with any other status is dropped, counted and its error
//! logged once per distinct message: see [`Verdict::Reject`] for why it is not retried.
//!
//! When the last [`InfluxSink`] handle is dropped the task writes what is queued at once
//! and ends. If the server cannot take it then, the rest is abandoned and counted instead of
//! holding the gateway's shutdown for minutes.

use std::error::Error as _;
use std::hash::BuildHasher;
use std::io::Write as _;
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
use super::queue::{Backoff, Body, InfluxStats, Limits, SeenErrors, Step, Verdict, WriteQueue};

/// How much of a refusal's body is kept for the error message.
const ERROR_BODY_MAX_BYTES: usize = 4096;
/// How many characters of the server's error text go into `last_error` and the log.
const ERROR_TEXT_MAX_CHARS: usize = 300;
/// Distinct error messages remembered so each is logged loudly only once.
const SEEN_ERRORS: usize = 64;

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
    /// tokio runtime.
    pub fn spawn(cfg: InfluxConfig) -> Result<(InfluxSink, JoinHandle<()>), InfluxError> {
        let target = WriteTarget::new(&cfg).map_err(InfluxError::Config)?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| InfluxError::NoRuntime)?;
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
                queue_max_batches: cfg.queue_max_batches,
                flush_interval: Duration::from_millis(cfg.flush_interval_ms),
            })),
            wake: Notify::new(),
            closing: AtomicBool::new(false),
        });
        let writer = Writer {
            client,
            target,
            timeout,
        };
        let task = runtime.spawn(run(shared.clone(), writer));
        let sink = InfluxSink {
            _open: Arc::new(OpenHandles(shared.clone())),
            shared,
        };
        Ok((sink, task))
    }

    /// Queue one batch for writing. Never blocks, never fails: when the queue is full the
    /// oldest waiting batch is dropped and counted (readings are telemetry; alarms never
    /// come here). NaN and infinite values are skipped and counted.
    pub fn push(&self, batch: ReadingBatch) {
        let encoded = encode_batch(&batch);
        self.shared.queue().push(encoded, now());
        self.shared.wake.notify_one();
    }

    /// What the writer has done so far.
    pub fn stats(&self) -> InfluxStats {
        self.shared.queue().stats()
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

async fn run(shared: Arc<Shared>, writer: Writer) {
    let mut backoff = Backoff::default();
    let mut seen = SeenErrors::new(SEEN_ERRORS);
    loop {
        let closing = shared.closing.load(Ordering::Acquire);
        let step = shared.queue().next_step(now(), closing);
        match step {
            Step::Flush => {
                let Some(body) = shared.queue().cut_body() else {
                    continue;
                };
                if !deliver(&shared, &writer, body, &mut backoff, &mut seen).await {
                    let lost = shared.queue().abandon();
                    tracing::warn!(
                        url = %writer.target.url,
                        lines = lost,
                        "stopping with readings the server could not take; they are lost"
                    );
                    return;
                }
            }
            Step::WaitUntil(at) => {
                tokio::select! {
                    () = tokio::time::sleep_until(at.into()) => {}
                    () = shared.wake.notified() => {}
                }
            }
            Step::Idle => shared.wake.notified().await,
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
/// settled in the queue and this returns true. Returns false, with the body still in
/// flight, when the writer is closing and the server could not take it.
async fn deliver(
    shared: &Shared,
    writer: &Writer,
    body: Body,
    backoff: &mut Backoff,
    seen: &mut SeenErrors,
) -> bool {
    let gz = match gzip(&body.text) {
        Ok(gz) => gz,
        Err(e) => {
            // Compressing into memory cannot fail short of a bug in flate2; keep going.
            shared
                .queue()
                .rejected(format!("compressing the request body: {e}"));
            return true;
        }
    };
    loop {
        match writer.send(gz.clone()).await {
            Ok(()) => {
                shared.queue().written();
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
                shared.queue().rejected(message.clone());
                if seen.first_time(&message) {
                    tracing::warn!(
                        url = %writer.target.url,
                        lines = body.lines,
                        error = %message,
                        "server refused readings; dropping them (sending them again would fail the same way)"
                    );
                } else {
                    tracing::debug!(lines = body.lines, error = %message, "server refused readings");
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
                    tokio::select! {
                        () = tokio::time::sleep_until(deadline) => break,
                        () = shared.wake.notified() => {
                            // Pushes wake us too; only closing cuts the wait short (for one
                            // last try).
                            if shared.closing.load(Ordering::Acquire) {
                                break;
                            }
                        }
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

    #[test]
    fn spawning_outside_a_runtime_is_an_error_not_a_panic() {
        let mut cfg = InfluxConfig::new("http://127.0.0.1:1", crate::influx::InfluxApi::V1);
        cfg.db = Some("x".into());
        assert!(matches!(
            InfluxSink::spawn(cfg),
            Err(InfluxError::NoRuntime)
        ));
    }

    #[test]
    fn spawning_with_a_bad_config_lists_every_problem() {
        let cfg = InfluxConfig {
            batch_max_lines: 0,
            ..InfluxConfig::new("http://127.0.0.1:1", crate::influx::InfluxApi::V1)
        };
        let err = InfluxSink::spawn(cfg).err().unwrap();
        let text = err.to_string();
        assert!(
            text.contains("db: required") && text.contains("batch_max_lines"),
            "{text}"
        );
    }
}
