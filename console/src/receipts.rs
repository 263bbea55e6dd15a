//! Receipts: the console tells each gateway which of its events are stored, so the gateway
//! can take them out of its durable queue (a broker's PUBACK proves nothing of the kind).
//!
//! The MQTT loop hands every stored event's key (new or duplicate: a gateway that resends
//! an event we already hold must hear about it too) to [`Receipts::note`] right after the
//! store confirmed it. A task batches the keys per gateway and publishes one [`Receipt`]
//! per gateway at most every [`BATCH_WINDOW`], or sooner when [`Receipt::MAX_EVENTS`] wait.
//!
//! Bounded: at most `QUEUE` keys wait. When full, a key is dropped and counted; nothing
//! is lost by it: the gateway sends the event again after its receipt timeout, the store
//! drops the duplicate and the key comes through again.

use std::collections::BTreeMap;
use std::time::Duration;

use rumqttc::{AsyncClient, QoS};
use shouwang_wire::{Channel, EventKey, Message, Receipt, topic};
use tokio::sync::mpsc;

/// How long a key may wait to be batched.
pub const BATCH_WINDOW: Duration = Duration::from_millis(50);
/// Keys waiting for the task.
const QUEUE: usize = 8192;

/// The sending side, cheap to clone.
#[derive(Clone)]
pub struct Receipts {
    tx: mpsc::Sender<(String, String, EventKey)>,
    metrics: std::sync::Arc<crate::state::Metrics>,
}

impl Receipts {
    /// Start the batching task on `client`; drops are counted in `metrics`.
    pub fn spawn(client: AsyncClient, metrics: std::sync::Arc<crate::state::Metrics>) -> Receipts {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(rx, client));
        Receipts { tx, metrics }
    }

    /// The event `key` of `gateway` in `community` is stored. Never waits.
    pub fn note(&self, community: &str, gateway: &str, key: EventKey) {
        if self
            .tx
            .try_send((community.to_string(), gateway.to_string(), key))
            .is_err()
        {
            crate::state::Metrics::inc(&self.metrics.receipts_dropped);
        }
    }
}

/// Keys waiting, per (community, gateway). Pure.
#[derive(Default)]
pub struct Batches {
    waiting: BTreeMap<(String, String), Vec<EventKey>>,
}

impl Batches {
    pub fn add(&mut self, community: String, gateway: String, key: EventKey) {
        self.waiting
            .entry((community, gateway))
            .or_default()
            .push(key);
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Every waiting key as receipts, at most [`Receipt::MAX_EVENTS`] keys each, with their
    /// topics.
    pub fn take(&mut self, now_ms: i64) -> Vec<(String, Receipt)> {
        let mut out = Vec::new();
        for ((community, gateway), keys) in std::mem::take(&mut self.waiting) {
            for chunk in keys.chunks(Receipt::MAX_EVENTS) {
                out.push((
                    topic(&community, &gateway, Channel::Receipts),
                    Receipt {
                        schema: Receipt::SCHEMA,
                        gateway: gateway.clone(),
                        events: chunk.to_vec(),
                        ts_ms: now_ms,
                    },
                ));
            }
        }
        out
    }
}

async fn run(mut rx: mpsc::Receiver<(String, String, EventKey)>, client: AsyncClient) {
    let mut batches = Batches::default();
    while let Some((community, gateway, key)) = rx.recv().await {
        batches.add(community, gateway, key);
        // Gather what else arrives within the window.
        let deadline = tokio::time::Instant::now() + BATCH_WINDOW;
        while let Ok(Some((c, g, k))) = tokio::time::timeout_at(deadline, rx.recv()).await {
            batches.add(c, g, k);
        }
        for (topic, receipt) in batches.take(crate::mqtt::now_ms()) {
            // Waits while rumqttc's request channel is full: this task is not the event
            // loop, so that is safe, and it holds back no event.
            if client
                .publish(topic, QoS::AtLeastOnce, false, receipt.encode())
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_batched_per_gateway_and_split_at_the_receipt_limit() {
        let mut b = Batches::default();
        for seq in 1..=1500 {
            b.add("c".into(), "gw-1".into(), EventKey { boot: 1, seq });
        }
        b.add("c".into(), "gw-2".into(), EventKey { boot: 3, seq: 9 });
        let out = b.take(42);
        assert!(b.is_empty());
        let summary: Vec<(&str, usize)> = out
            .iter()
            .map(|(t, r)| (t.as_str(), r.events.len()))
            .collect();
        assert_eq!(
            summary,
            [
                ("shouwang/v1/c/gw-1/receipts", 1000),
                ("shouwang/v1/c/gw-1/receipts", 500),
                ("shouwang/v1/c/gw-2/receipts", 1)
            ]
        );
        assert_eq!(out[0].1.events[0], EventKey { boot: 1, seq: 1 });
        assert_eq!(out[2].1.ts_ms, 42);
        for (_, r) in &out {
            assert!(r.encode().len() < shouwang_wire::MAX_PUBLISH_BYTES);
        }
    }
}
