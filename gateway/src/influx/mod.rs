//! Readings to a time-series store, as InfluxDB line protocol over HTTP.
//!
//! The wire format is documented in `docs/line-protocol.md`; change both together.
//!
//! Layers, pure first:
//! - [`encode`]: a [`ReadingBatch`](shouwang_wire::ReadingBatch) -> lines, one per point
//!   (measurement `shouwang_reading`, sorted place/device tags, float field `value`, ms
//!   timestamp). No I/O.
//! - `queue`: the bounded queue of encoded batches, when a body is due, which answers are
//!   retried and how long to back off, and the counters ([`InfluxStats`]). No I/O, time is
//!   an argument.
//! - `writer`: [`InfluxSink`] and its task, the only place with HTTP, `select!` and
//!   timeouts.
//! - [`config`]: the `[influx]` section ([`InfluxConfig`]) and its checks.
//!
//! Guarantees, as the operator sees them:
//! - pushing never blocks the gateway and never fails;
//! - readings are held while the server is away, up to `queue_max_batches` batches; beyond
//!   that the oldest are dropped and counted (`batches_dropped`). Nothing else is lost
//!   silently: refused requests count in `lines_rejected`, values that are not numbers in
//!   `values_skipped`, and what is left at shutdown in `lines_abandoned`;
//! - delivery is at-least-once, in order of arrival: a request that timed out may have
//!   been stored and is sent again. A line's series and timestamp are its stable identity:
//!   InfluxDB overwrites the point with the same value, VictoriaMetrics drops the repeat
//!   when it runs with `-dedup.minScrapeInterval`;
//! - the password and the token are never logged or printed.

pub mod config;
pub mod encode;
mod queue;
mod writer;

pub use config::{InfluxApi, InfluxConfig};
pub use encode::{EncodedBatch, FIELD, MEASUREMENT, encode_batch};
pub use queue::InfluxStats;
pub use writer::{InfluxError, InfluxSink};
