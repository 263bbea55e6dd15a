//! The broker's PUBACK as an alarm event's confirmation (`[gateway] alarm_confirmation =
//! "broker"`), for sites whose alarms go to another receiver than the Shouwang console.
//!
//! # What a PUBACK does not promise
//! The default, the console's receipt, says the event is stored in a control room. A
//! PUBACK says much less, and a site that chooses it accepts that:
//! - mosquitto answers an MQTT 3.1.1 client with a plain PUBACK even for a message it then
//!   drops: larger than its `max_packet_size`, or denied by its ACL. A misconfigured account
//!   loses every alarm with nothing in the gateway's log;
//! - a broker without persistence (or between its autosaves, every 30 minutes by default)
//!   forgets on a crash every message it acknowledged and had not yet delivered;
//! - a subscriber that is away when the message arrives gets it only if it holds a
//!   persistent session with that broker.
//!
//! So: give the gateway's account the ACL of `docs/mosquitto/acl`, run the broker with
//! `persistence true` and `autosave_interval` of a few seconds, and make the receiver's
//! session persistent (QoS 1, `clean_session = false`).
//!
//! # How PUBACKs are matched to events
//! rumqttc does not say which publish a PUBACK answers, only its packet id. So alarm events
//! go over a connection of their own (client id `<client id>-alarms`, the same account),
//! on which the journal is the only publisher: its publishes reach the wire in the order
//! it made them, each announced by an `Outgoing::Publish(pkid)` event, so a FIFO of event
//! keys ([`Book`]) tells which event has which packet id, and the PUBACK of that packet id
//! confirms it ([`crate::sinks::journal::Journal::receipt`]).
//!
//! The FIFO must never fall out of step with the wire. rumqttc drops what it had not sent
//! when a connection fails (the broker answers a clean session with `session_present =
//! false`, and rumqttc then clears its pending requests), so on every failure the link,
//! holding the book's lock (which every publish takes too), drains rumqttc's request
//! channel into its pending list, clears that list and the book, and marks the link down;
//! nothing is published again until the next ConnAck. What was dropped is not confirmed,
//! so the journal sends it again.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use shouwang_wire::EventKey;

use crate::config::Config;
use crate::sinks::journal::Journal;
use crate::sinks::mqtt::LinkState;

/// Which event each publish on the alarm connection carries, in wire order.
#[derive(Debug, Default)]
pub struct Book {
    /// True from a ConnAck until the connection fails: publishes are allowed.
    connected: bool,
    /// Events handed to rumqttc, not yet given a packet id.
    unsent: VecDeque<EventKey>,
    /// Events sent, awaiting their PUBACK, by packet id.
    inflight: HashMap<u16, EventKey>,
}

impl Book {
    /// A publish of `key` was handed to rumqttc.
    fn handed(&mut self, key: EventKey) {
        self.unsent.push_back(key);
    }

    /// rumqttc sent the oldest handed publish with this packet id.
    fn sent(&mut self, pkid: u16) {
        if let Some(key) = self.unsent.pop_front() {
            self.inflight.insert(pkid, key);
        }
    }

    /// The broker acknowledged this packet id: the event it carried.
    fn acked(&mut self, pkid: u16) -> Option<EventKey> {
        self.inflight.remove(&pkid)
    }

    fn reset(&mut self, connected: bool) {
        self.connected = connected;
        self.unsent.clear();
        self.inflight.clear();
    }
}

/// The journal's way to publish on the alarm connection.
#[derive(Clone)]
pub struct BrokerLink {
    client: AsyncClient,
    book: Arc<Mutex<Book>>,
    /// The alarm connection's state (the journal's `connected` and `connections`).
    pub state: Arc<LinkState>,
}

fn lock(book: &Mutex<Book>) -> MutexGuard<'_, Book> {
    book.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl BrokerLink {
    /// Publish one event. `false` when the link is down or rumqttc's channel is full (the
    /// journal tries again later).
    pub fn try_publish(&self, topic: &str, key: EventKey, payload: Vec<u8>) -> bool {
        let mut book = lock(&self.book);
        if !book.connected {
            return false;
        }
        if self
            .client
            .try_publish(topic, QoS::AtLeastOnce, false, payload)
            .is_err()
        {
            return false;
        }
        book.handed(key);
        true
    }
}

/// The alarm connection's client and event loop: the main link's options, another client
/// id, no last will (the main link's says the gateway is offline).
pub fn connection(config: &Config) -> (AsyncClient, EventLoop) {
    let id = config
        .mqtt
        .client_id
        .clone()
        .unwrap_or_else(|| format!("shouwang-gateway-{}", config.gateway.id));
    let mut options = MqttOptions::new(
        format!("{id}-alarms"),
        config.mqtt.host.clone(),
        config.mqtt.port,
    );
    config.mqtt.auth.apply(&mut options);
    options.set_keep_alive(Duration::from_secs(config.mqtt.keep_alive_s));
    options.set_max_packet_size(
        crate::sinks::mqtt::MAX_INCOMING_BYTES,
        shouwang_wire::MAX_PUBLISH_BYTES,
    );
    options.set_clean_session(true);
    shouwang_broker_auth::connect_without_delay(options, 256)
}

/// Start the alarm connection. The journal publishes through the returned link; `confirm`
/// is called with each event the broker acknowledged. The task runs until the runtime
/// ends.
pub fn spawn(
    client: AsyncClient,
    events: EventLoop,
) -> (BrokerLink, BrokerAcks, tokio::task::JoinHandle<()>) {
    let link = BrokerLink {
        client,
        book: Arc::new(Mutex::new(Book::default())),
        state: Arc::new(LinkState::default()),
    };
    let (acks_tx, acks) = std::sync::mpsc::channel();
    let task = tokio::spawn(drive(events, link.clone(), acks_tx));
    (link, BrokerAcks(acks), task)
}

/// The events the broker acknowledged, for [`confirm_into`].
pub struct BrokerAcks(std::sync::mpsc::Receiver<EventKey>);

/// Forward the broker's acknowledgements to the journal as confirmations, on a thread of
/// their own (the journal starts after the link, since it publishes through it).
pub fn confirm_into(acks: BrokerAcks, journal: Journal) {
    let spawned = std::thread::Builder::new()
        .name("alarm-pubacks".into())
        .spawn(move || {
            while let Ok(first) = acks.0.recv() {
                let mut keys = vec![first];
                keys.extend(acks.0.try_iter());
                journal.receipt(keys);
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the PUBACK thread; alarms stay unconfirmed");
    }
}

async fn drive(mut events: EventLoop, link: BrokerLink, acks: std::sync::mpsc::Sender<EventKey>) {
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                let mut book = lock(&link.book);
                // Whatever a resumed session would replay is not in the book.
                events.pending.clear();
                book.reset(true);
                link.state.connected.store(true, Ordering::Relaxed);
                link.state.connections.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    session_present = ack.session_present,
                    "alarm connection up (confirmed by the broker's PUBACK)"
                );
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => lock(&link.book).sent(pkid),
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                if let Some(key) = lock(&link.book).acked(ack.pkid)
                    && acks.send(key).is_err()
                {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                {
                    let mut book = lock(&link.book);
                    // Publishes that entered rumqttc's channel after it failed: into its
                    // pending list, which is dropped, like the rest, before the next
                    // ConnAck.
                    events.clean();
                    events.pending.clear();
                    book.reset(false);
                }
                if link.state.connected.swap(false, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "alarm connection lost; reconnecting every second");
                }
                if matches!(e, rumqttc::ConnectionError::RequestsDone) {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seq: u64) -> EventKey {
        EventKey { boot: 1, seq }
    }

    #[test]
    fn pubacks_confirm_the_event_sent_with_their_packet_id_in_any_order() {
        let mut book = Book::default();
        book.reset(true);
        for seq in 1..=3 {
            book.handed(key(seq));
        }
        book.sent(7);
        book.sent(8);
        book.sent(9);
        assert_eq!(book.acked(9), Some(key(3)));
        assert_eq!(book.acked(7), Some(key(1)));
        assert_eq!(book.acked(7), None, "a second PUBACK confirms nothing");
        assert_eq!(book.acked(8), Some(key(2)));
    }

    #[test]
    fn a_lost_connection_forgets_every_unconfirmed_publish() {
        let mut book = Book::default();
        book.reset(true);
        book.handed(key(1));
        book.sent(1);
        book.handed(key(2));
        book.reset(false);
        assert!(!book.connected);
        // The next connection's first publish gets the first packet id again: it must not
        // confirm the event that was lost.
        book.reset(true);
        book.handed(key(3));
        book.sent(1);
        assert_eq!(book.acked(1), Some(key(3)));
    }
}
