//! Alarms the console raises itself: a gateway that goes offline.
//!
//! A gateway that stops talking (its last will, or a clean `offline`) means a building is
//! no longer watched: a fault that an operator must see on the board and acknowledge, not
//! only a grey badge. These alarms have the id `<community>:console:<gateway>:offline` (the
//! gateway id `console` is reserved), follow the same ISA-18.2 table as every other alarm
//! ([`shouwang_rules::next_state`]), are stored and streamed like gateway events, and are
//! acknowledged here in the console, since there is no gateway to ask.

use shouwang_rules::{AlarmInput, AlarmState, next_state};
use shouwang_wire::{AlarmEvent, Place, Priority, SignalClass, alarm_id};

use crate::state::AppState;
use crate::store::StoreError;

/// The source name of console alarms: the first part of their ids.
pub const SOURCE: &str = "console";

/// The id of a gateway's offline alarm.
pub fn offline_alarm_id(community: &str, gateway: &str) -> String {
    alarm_id(community, SOURCE, gateway, "offline")
}

/// Whether an alarm is the console's own (acknowledged here, not by a gateway).
pub fn is_own(alarm_id: &str) -> bool {
    shouwang_wire::alarm_owner(alarm_id).is_some_and(|(_, source)| source == SOURCE)
}

/// The event that follows `current` (the alarm's latest event, if any) on `input`, or
/// `None` when the input changes nothing. Pure.
pub fn next_event(
    current: Option<&AlarmEvent>,
    community: &str,
    gateway: &str,
    input: AlarmInput,
    operator: Option<String>,
    now_ms: i64,
) -> Option<AlarmEvent> {
    let state = current.map_or(AlarmState::Normal, |e| e.state);
    let (state, transition) = next_state(state, input)?;
    Some(AlarmEvent {
        schema: AlarmEvent::SCHEMA,
        event_id: uuid::Uuid::now_v7().to_string(),
        // The console's own alarm is ordered by its own history: one more than the event
        // it follows.
        boot: current.map_or(0, |e| e.boot),
        seq: current.map_or(1, |e| e.seq.saturating_add(1)),
        alarm_id: offline_alarm_id(community, gateway),
        gateway: SOURCE.into(),
        device: gateway.into(),
        device_kind: "gateway".into(),
        point: None,
        rule: "offline".into(),
        class: SignalClass::Fault,
        priority: Priority::High,
        transition,
        state,
        active: matches!(state, AlarmState::Unacknowledged | AlarmState::Acknowledged),
        value: None,
        engineering_unit: None,
        place: current.map_or_else(
            || Place {
                community: community.into(),
                ..Place::default()
            },
            |e| e.place.clone(),
        ),
        message: format!("Gateway {gateway} offline: its devices are not watched"),
        ts_ms: now_ms,
        operator,
    })
}

/// Feed a gateway's online/offline news, or an operator's acknowledgement, to its offline
/// alarm. Returns the new event, if the input changed anything.
pub async fn apply(
    state: &AppState,
    community: &str,
    gateway: &str,
    input: AlarmInput,
    operator: Option<String>,
) -> Result<Option<AlarmEvent>, StoreError> {
    let id = offline_alarm_id(community, gateway);
    let current = state
        .store
        .call(move |s| s.ack_target(&id))
        .await?
        .map(|t| t.alarm.event);
    let now = crate::mqtt::now_ms();
    let Some(event) = next_event(current.as_ref(), community, gateway, input, operator, now) else {
        return Ok(None);
    };
    crate::mqtt::store_event(state, event.clone(), community, now).await?;
    Ok(Some(event))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shouwang_wire::TransitionKind;

    #[test]
    fn a_gateway_going_offline_raises_a_high_fault_that_needs_acknowledging() {
        let raised = next_event(None, "riverside", "gw-b1", AlarmInput::Raise, None, 10).unwrap();
        assert_eq!(raised.alarm_id, "riverside:console:gw-b1:offline");
        assert!(is_own(&raised.alarm_id));
        assert_eq!(raised.class, SignalClass::Fault);
        assert_eq!(raised.state, AlarmState::Unacknowledged);
        assert_eq!(raised.place.community, "riverside");

        let back = next_event(
            Some(&raised),
            "riverside",
            "gw-b1",
            AlarmInput::Clear,
            None,
            20,
        )
        .unwrap();
        assert_eq!(back.state, AlarmState::ReturnedUnacknowledged);
        let acked = next_event(
            Some(&back),
            "riverside",
            "gw-b1",
            AlarmInput::Acknowledge,
            Some("li".into()),
            30,
        )
        .unwrap();
        assert_eq!(acked.state, AlarmState::Normal);
        assert_eq!(acked.transition, TransitionKind::Acknowledged);
        assert_eq!(acked.operator.as_deref(), Some("li"));
    }

    #[test]
    fn a_gateway_online_with_no_offline_alarm_changes_nothing() {
        assert!(next_event(None, "c", "gw", AlarmInput::Clear, None, 1).is_none());
        assert!(!is_own("riverside:gw-b1:smoke-1:smoke-high"));
    }
}
