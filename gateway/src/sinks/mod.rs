//! Sinks: where what the watch decides goes. The runtime loop hands every alarm event and
//! reading batch to [`crate::emit::Emit`], the one place that knows them:
//!
//! - [`journal`]: alarm events, durable on disk ([`queue`]) until the console (or, by
//!   choice, the broker: [`broker_confirm`]) confirms them; [`alarm_state`] keeps each
//!   alarm's latest event for restarts;
//! - [`mqtt`]: the broker link: readings (live, best effort), command replies and
//!   snapshots out; commands and receipts in;
//! - [`influx`]: readings as line protocol to a time-series store, durable on disk;
//! - [`local_output`]: the local warning on site (a relay, or a log line and a metric).

pub mod alarm_state;
pub mod broker_confirm;
pub mod influx;
pub mod journal;
pub mod local_output;
pub mod mqtt;
pub mod queue;
