//! The console's HTTP API and page: thin axum handlers over [`AppState`].
//!
//! Every error becomes `{"error": "..."}` with its status through [`ApiError`]. An
//! acknowledgement only *sends* a command: the board changes when the gateway's
//! `acknowledged` event comes back over MQTT, never on the console's own say-so.

use std::convert::Infallible;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::{Stream, StreamExt};
use rumqttc::QoS;
use serde::Deserialize;
use serde_json::json;
use shouwang_wire::{Action, AlarmState, Channel, Command, CommandReply, Message};
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use crate::mqtt::now_ms;
use crate::state::{AppState, Metrics, StreamKind};
use crate::store::{
    AckTarget, AlarmDetail, AlarmView, CommandRecord, CommandStatus, StoreError, state_name,
};

/// The longest operator name accepted on an acknowledgement.
pub const MAX_OPERATOR_CHARS: usize = 64;

/// The board: one HTML file, no build step, no external resources.
const PAGE: &str = include_str!("page.html");

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/alarms", get(list_alarms))
        .route("/api/alarms/{id}", get(get_alarm))
        .route("/api/alarms/{id}/ack", post(acknowledge))
        .route("/api/commands/{id}", get(get_command))
        .route("/api/readings", get(readings))
        .route("/api/gateways", get(gateways))
        .route("/api/stream", get(stream))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .with_state(state)
}

/// An API failure, shown to the client as `{"error": message}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(message) = &self {
            tracing::error!(%message, "request failed");
        }
        (self.status(), Json(json!({ "error": self.to_string() }))).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Closed => ApiError::Unavailable("the store has stopped".into()),
            other => ApiError::Internal(format!("store: {other}")),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        ApiError::BadRequest(e.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(e: PathRejection) -> Self {
        ApiError::BadRequest(e.body_text())
    }
}

async fn page() -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-cache")], Html(PAGE))
}

async fn healthz(State(app): State<AppState>) -> (StatusCode, Json<serde_json::Value>) {
    let failing = app
        .metrics
        .store_failing
        .load(std::sync::atomic::Ordering::Relaxed);
    let healthy = app.mqtt_connected() && failing == 0;
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(json!({
            "status": if healthy { "ok" } else { "failing" },
            "mqtt_connected": app.mqtt_connected(),
            "store_failures_in_a_row": failing,
        })),
    )
}

async fn metrics(State(app): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(app.mqtt_connected()),
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListAlarms {
    /// Include alarms in state `normal`.
    #[serde(default)]
    all: bool,
}

async fn list_alarms(
    State(app): State<AppState>,
    query: Result<Query<ListAlarms>, QueryRejection>,
) -> Result<Json<Vec<AlarmView>>, ApiError> {
    let Query(q) = query?;
    Ok(Json(app.store.call(move |s| s.alarms(q.all)).await?))
}

async fn get_alarm(
    State(app): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<AlarmDetail>, ApiError> {
    let Path(id) = id?;
    let lookup = id.clone();
    app.store
        .call(move |s| s.alarm(&lookup))
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no alarm {id:?}")))
}

/// The optional body of `POST /api/alarms/{id}/ack`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AckRequest {
    operator: Option<String>,
    /// The event the operator saw; the gateway refuses the acknowledgement if the alarm
    /// has changed since.
    event_id: Option<String>,
}

/// The `event_id` an acknowledge body names, if any (see [`ack_operator`] for the checks).
pub fn ack_seen_event(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<AckRequest>(body)
        .ok()
        .and_then(|r| r.event_id)
}

/// Who acknowledges: the body's `operator`, or `default` for an empty body or a missing
/// or null `operator`.
pub fn ack_operator(body: &[u8], default: &str) -> Result<String, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(default.to_string());
    }
    let req: AckRequest = serde_json::from_slice(body).map_err(|e| {
        ApiError::BadRequest(format!(
            "acknowledge body must be empty or {{\"operator\": \"name\", \"event_id\": \"the event seen\"}}: {e}"
        ))
    })?;
    let Some(operator) = req.operator else {
        return Ok(default.to_string());
    };
    let operator = operator.trim();
    if operator.is_empty() {
        return Err(ApiError::BadRequest("operator must not be empty".into()));
    }
    if operator.chars().count() > MAX_OPERATOR_CHARS {
        return Err(ApiError::BadRequest(format!(
            "operator is longer than {MAX_OPERATOR_CHARS} characters"
        )));
    }
    if operator.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(
            "operator must not contain control characters".into(),
        ));
    }
    Ok(operator.to_string())
}

/// Acknowledge one of the console's own alarms (a gateway offline): there is no gateway to
/// ask, so the console applies it and answers like a gateway would, with an event and a
/// reply on the stream.
async fn acknowledge_own(
    app: &AppState,
    target: &AckTarget,
    operator: String,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let event = &target.alarm.event;
    let applied = crate::own_alarms::apply(
        app,
        &target.community,
        &event.device,
        shouwang_rules::AlarmInput::Acknowledge,
        Some(operator),
    )
    .await?;
    let command_id = uuid::Uuid::now_v7().to_string();
    app.publish(
        StreamKind::Reply,
        &CommandReply {
            schema: CommandReply::SCHEMA,
            command_id: command_id.clone(),
            gateway: crate::own_alarms::SOURCE.into(),
            ok: applied.is_some(),
            error: applied
                .is_none()
                .then(|| format!("alarm {:?} has nothing to acknowledge", event.alarm_id)),
            ts_ms: now_ms(),
        },
    );
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "command_id": command_id })),
    ))
}

async fn acknowledge(
    State(app): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let Path(alarm_id) = id?;
    let operator = ack_operator(&body, &app.operator_default)?;
    let lookup = alarm_id.clone();
    let target = app
        .store
        .call(move |s| s.ack_target(&lookup))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no alarm {alarm_id:?}")))?;
    let state = target.alarm.event.state;
    if !needs_ack(state) {
        return Err(ApiError::Conflict(format!(
            "alarm {alarm_id:?} is {}: nothing to acknowledge",
            state_name(state)
        )));
    }
    if crate::own_alarms::is_own(&alarm_id) {
        return acknowledge_own(&app, &target, operator).await;
    }
    let (community, gateway) = shouwang_wire::alarm_owner(&alarm_id)
        .map(|(c, g)| (c.to_string(), g.to_string()))
        .ok_or_else(|| {
            ApiError::Internal(format!("alarm id {alarm_id:?} names no gateway to ask"))
        })?;
    if !app.mqtt_connected() {
        return Err(ApiError::Unavailable(
            "not connected to the MQTT broker: the acknowledgement was not sent".into(),
        ));
    }
    let command = Command {
        schema: Command::SCHEMA,
        command_id: uuid::Uuid::now_v7().to_string(),
        operator: operator.clone(),
        ts_ms: now_ms(),
        ttl_ms: Some(shouwang_wire::COMMAND_TTL_MS),
        action: Action::Acknowledge {
            alarm_id: alarm_id.clone(),
            // What the operator saw, or else what this console shows now.
            event_id: Some(
                ack_seen_event(&body).unwrap_or_else(|| target.alarm.event.event_id.clone()),
            ),
        },
    };
    let record = CommandRecord {
        command_id: command.command_id.clone(),
        alarm_id: alarm_id.clone(),
        gateway: gateway.clone(),
        community: community.clone(),
        operator,
        issued_ms: command.ts_ms,
        status: CommandStatus::Pending,
        error: None,
        replied_ms: None,
    };
    // Stored before it is published, so the reply always finds it.
    app.store.call(move |s| s.insert_command(&record)).await?;
    let topic = shouwang_wire::topic(&community, &gateway, Channel::Commands);
    let command_id = command.command_id.clone();
    if let Err(error) = app
        .mqtt
        .try_publish(&topic, QoS::AtLeastOnce, false, command.encode())
    {
        let reason = format!("not sent: {error}");
        let failed = command_id.clone();
        app.store
            .call(move |s| s.fail_command(&failed, &reason))
            .await?;
        return Err(ApiError::Unavailable(format!(
            "the acknowledgement could not be queued for the broker: {error}"
        )));
    }
    Metrics::inc(&app.metrics.commands_sent);
    tracing::info!(%command_id, %alarm_id, %topic, "acknowledge command sent");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "command_id": command_id })),
    ))
}

async fn get_command(
    State(app): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<CommandRecord>, ApiError> {
    let Path(id) = id?;
    let lookup = id.clone();
    app.store
        .call(move |s| s.command(&lookup))
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no command {id:?}")))
}

async fn readings(State(app): State<AppState>) -> Json<Vec<shouwang_wire::ReadingBatch>> {
    Json(app.readings.all())
}

async fn gateways(
    State(app): State<AppState>,
) -> Result<Json<Vec<shouwang_wire::GatewayStatus>>, ApiError> {
    Ok(Json(app.store.call(|s| s.gateways()).await?))
}

/// Server-sent events. The first event is `ready` (subscribed: fetch the API now and nothing
/// is missed); then `alarm`, `reading`, `gateway`, `reply`; `resync` when this client fell
/// behind and skipped events (refetch everything).
async fn stream(State(app): State<AppState>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = app.stream.subscribe();
    let metrics = app.metrics.clone();
    let mut shutdown = app.shutdown.clone();
    let ready = futures_util::stream::once(async { Event::default().event("ready").data("{}") });
    let events = BroadcastStream::new(rx).map(move |item| match item {
        Ok(ev) => Event::default().event(ev.kind.as_str()).data(&*ev.data),
        Err(BroadcastStreamRecvError::Lagged(missed)) => {
            Metrics::inc(&metrics.stream_lagged);
            Event::default()
                .event("resync")
                .data(json!({ "missed": missed }).to_string())
        }
    });
    let until_shutdown = async move { crate::state::shutdown_signalled(&mut shutdown).await };
    let body = ready
        .chain(events)
        .take_until(until_shutdown)
        .map(Ok::<_, Infallible>);
    Sse::new(body).keep_alive(KeepAlive::default())
}

/// Whether the state is one an operator can acknowledge (the page shows a button for the
/// same states). Any other state answers an acknowledgement with 409.
pub fn needs_ack(state: AlarmState) -> bool {
    matches!(
        state,
        AlarmState::Unacknowledged | AlarmState::ReturnedUnacknowledged
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn an_empty_ack_body_names_the_default_operator() {
        assert_eq!(ack_operator(b"", "duty").unwrap(), "duty");
        assert_eq!(ack_operator(b"  \n", "duty").unwrap(), "duty");
        assert_eq!(ack_operator(b"{}", "duty").unwrap(), "duty");
        assert_eq!(
            ack_operator(br#"{"operator":null}"#, "duty").unwrap(),
            "duty"
        );
    }

    #[test]
    fn an_ack_body_names_its_operator() {
        assert_eq!(
            ack_operator(br#"{"operator":" li "}"#, "duty").unwrap(),
            "li"
        );
    }

    #[test]
    fn a_malformed_ack_body_is_a_bad_request_naming_the_problem() {
        for (body, expect) in [
            (&b"not json"[..], "expected"),
            (br#"{"operator": 5}"#, "invalid type"),
            (br#"{"who": "li"}"#, "unknown field `who`"),
            (br#"{"operator": ""}"#, "must not be empty"),
        ] {
            let err = ack_operator(body, "duty").unwrap_err();
            assert!(matches!(err, ApiError::BadRequest(_)), "{err:?}");
            assert!(err.to_string().contains(expect), "{err}");
        }
    }

    #[test]
    fn only_unacknowledged_states_need_an_ack() {
        assert!(needs_ack(AlarmState::Unacknowledged));
        assert!(needs_ack(AlarmState::ReturnedUnacknowledged));
        assert!(!needs_ack(AlarmState::Acknowledged));
        assert!(!needs_ack(AlarmState::Normal));
    }
}
