//! Prints what the gateway tells the broker (alarm events, gateway status) in the demo's
//! terminal, so the demo shows something without a browser too.

use std::net::SocketAddr;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use shouwang_wire::{
    AlarmEvent, Channel, GatewayStatus, Message as _, parse_topic, topic_filter_all,
};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Subscribe to every gateway's events and status on the broker at `mqtt`; print each one
/// with its time since `start`. Runs until aborted; reconnects by itself.
pub fn spawn(mqtt: SocketAddr, start: Instant) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut options =
            MqttOptions::new("shouwang-demo-echo", mqtt.ip().to_string(), mqtt.port());
        options.set_keep_alive(Duration::from_secs(5));
        let (client, mut events) = AsyncClient::new(options, 16);
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    for channel in [Channel::Events, Channel::Status] {
                        let _ = client.try_subscribe(topic_filter_all(channel), QoS::AtLeastOnce);
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    if let Some(line) = describe(&publish.topic, &publish.payload) {
                        println!("[+{:>5.1} s] {line}", start.elapsed().as_secs_f64());
                    }
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::debug!(error = %err, "demo echo: broker connection lost");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    })
}

/// One line for a message on a Shouwang topic; None for anything else.
pub fn describe(topic: &str, payload: &[u8]) -> Option<String> {
    let name = parse_topic(topic).ok()?;
    match name.channel {
        Channel::Events => AlarmEvent::decode(payload).ok().map(|e| describe_event(&e)),
        Channel::Status => GatewayStatus::decode(payload).ok().map(|s| {
            format!("gateway {}/{} is {:?}", s.community, s.gateway, s.state).to_lowercase()
        }),
        _ => None,
    }
}

/// `SUPERVISORY medium raised       1号楼 1层 消防水泵房 pressure-B1-01-01 Fire main pressure low (0.52 MPa)`
pub fn describe_event(event: &AlarmEvent) -> String {
    let value = match (event.value, &event.engineering_unit) {
        (Some(v), Some(unit)) => format!(" ({v:.2} {unit})"),
        (Some(v), None) => format!(" ({v})"),
        _ => String::new(),
    };
    let operator = match &event.operator {
        Some(who) => format!(" by {who}"),
        None => String::new(),
    };
    format!(
        "{:<11} {:<6} {:<12} {} {:<18} {}{value}{operator}",
        format!("{:?}", event.class).to_uppercase(),
        format!("{:?}", event.priority).to_lowercase(),
        format!("{:?}", event.transition).to_lowercase(),
        event.place.label(),
        event.device,
        event.message,
    )
}
