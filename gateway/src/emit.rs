//! One emit: the only place that knows the sinks. The runtime loop hands every alarm event
//! and every reading batch the watch made to [`Emit`], which sends each where it goes:
//! alarm events to the journal (durable, confirmed end to end), readings to the
//! line-protocol writer (durable) and to the broker (live, best effort), replies and
//! snapshots to the broker. A new sink is a field here and a line in each method it takes;
//! the sources, the watch and the runtime loop do not change.

use std::sync::Arc;

use shouwang_wire::{AlarmEvent, CommandReply, ReadingBatch, Snapshot};

use crate::metrics::Counters;
use crate::sinks::influx::InfluxSink;
use crate::sinks::journal::Journal;
use crate::sinks::mqtt::Outbox;

/// The sinks, as the runtime loop sees them. Cheap to clone.
#[derive(Clone)]
pub struct Emit {
    pub journal: Journal,
    pub influx: Option<InfluxSink>,
    pub outbox: Outbox,
    pub counters: Arc<Counters>,
}

impl Emit {
    /// An alarm transition. Never waits (detection never waits on delivery).
    pub fn alarm(&self, event: AlarmEvent) {
        Counters::inc(&self.counters.alarm_events);
        tracing::info!(alarm_id = %event.alarm_id, state = ?event.state, value = ?event.value, "alarm transition");
        self.journal.record(event);
    }

    /// Several alarm transitions, in the order they happened.
    pub fn alarms(&self, events: impl IntoIterator<Item = AlarmEvent>) {
        for event in events {
            self.alarm(event);
        }
    }

    /// One poll's readings. Never waits: each sink bounds and counts what it cannot take.
    pub fn readings(&self, batch: ReadingBatch) {
        if let Some(sink) = &self.influx {
            sink.push(batch.clone());
        }
        self.outbox.send_readings(batch);
    }

    /// The answer to a command. Waits while the reply lane is full; never drops.
    pub async fn reply(&self, reply: CommandReply) {
        self.outbox.send_reply(reply).await;
    }

    /// A snapshot of every alarm, in parts. Waits like a reply; never drops.
    pub async fn snapshot(&self, parts: Vec<Snapshot>) {
        self.outbox.send_snapshot(parts).await;
    }
}
