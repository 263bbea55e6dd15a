//! Readings to a time-series store, as InfluxDB line protocol over HTTP.
//!
//! The wire format is documented in `docs/line-protocol.md`; change both together.
//!
//! Layers, pure first:
//! - [`encode`]: a [`ReadingBatch`](shouwang_wire::ReadingBatch) -> lines, one per point
//!   (measurement `shouwang_reading`, sorted place/device tags, float field `value`, ms
//!   timestamp). No I/O.
//! - `queue`: the queue of encoded batches (arrived, stored, in flight), when a body is
//!   due, when the disk is synced, what is shed, which answers are retried and how long to
//!   back off, and the counters ([`InfluxStats`]). No I/O, time is an argument.
//! - `spool`: the readings lane on disk, `<data_dir>/readings`: one record per batch in a
//!   [`DiskQueue`](crate::sinks::queue::DiskQueue), bounded by bytes. Synchronous file I/O.
//! - `writer`: [`InfluxSink`] and its task, the only place with HTTP, `select!` and
//!   timeouts; it runs the spool on blocking threads.
//! - [`config`]: the `[influx]` section ([`InfluxConfig`]) and its checks.
//!
//! Guarantees, as the operator sees them:
//! - pushing never blocks the gateway and never fails; the disk is written by the writer
//!   task, never by the runtime loop;
//! - a reading batch leaves the gateway's keeping only when the server answered 2xx for
//!   the request holding it (or refused it for good with a 4xx other than 429: counted in
//!   `lines_rejected`). Until then it is a record on disk, fsynced at most
//!   `sync_interval_ms` (1 s) after it arrived, so a server outage, a restart or SIGKILL
//!   loses nothing and a power cut at most the last second; after a start, what was on
//!   disk is sent first, oldest first. Damaged records and torn tails found on disk are
//!   skipped, counted and logged;
//! - the disk queue is bounded by `queue_max_bytes` (64 MiB) and `queue_max_age_s` (7
//!   days). Beyond either, the **oldest** readings are shed, counted (`batches_shed`,
//!   `lines_shed`) and reported as the gateway's `readings_shed` fault, raised while
//!   readings were shed in the last 10 minutes. The newest are kept;
//! - if the disk cannot take readings (cannot be opened, full, failing), they are held in
//!   memory, at most `queue_max_batches` (oldest dropped and counted in
//!   `batches_dropped`), logged and shown as `disk.failing`; alarms are unaffected (their own
//!   queue, thread and fault). Readings held only in memory when the gateway stops and the
//!   server is away are counted in `lines_abandoned`. Nothing else is lost silently: values
//!   that are not numbers count in `values_skipped`;
//! - delivery is at-least-once, in order of arrival: a request that timed out may have
//!   been stored and is sent again, and so are readings written but not yet marked
//!   delivered on disk when the gateway stopped. A line's series and timestamp are its
//!   stable identity: InfluxDB overwrites the point with the same value, VictoriaMetrics
//!   drops the repeat when it runs with `-dedup.minScrapeInterval`;
//! - the password and the token are never logged or printed.

pub mod config;
pub mod encode;
mod queue;
mod spool;
mod writer;

pub use config::{InfluxApi, InfluxConfig};
pub use encode::{EncodedBatch, FIELD, MEASUREMENT, encode_batch};
pub use queue::{DiskFigures, InfluxStats, SHED_FAULT_HOLD};
pub use spool::{RECORD_HEADER_BYTES, decode_record, encode_record, limits as lane_limits};
pub use writer::{InfluxError, InfluxSink};
