//! The console against a real mosquitto: a test client publishes the way a gateway does and
//! the HTTP API is checked. Every wait is a condition with a deadline.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use serde_json::{Value, json};
use shouwang_console::{ConsoleConfig, RunningConsole, start};
use shouwang_hil_tests::servers::{self, Server};
use shouwang_wire::{
    AlarmEvent, AlarmState, Channel, Command, CommandReply, GatewayState, GatewayStatus, Message,
    Place, PlaceNames, PointValue, Priority, ReadingBatch, SignalClass, TransitionKind,
};
use tokio::sync::mpsc;

const DEADLINE: Duration = Duration::from_secs(15);
const COMMUNITY: &str = "riverside";
const GATEWAY: &str = "gw-b1";
const ALARM_ID: &str = "riverside:gw-b1:smoke-12-03:smoke";
const DEFAULT_OPERATOR: &str = "duty-officer";

/// Poll `f` until it returns `Some`, or panic after [`DEADLINE`] naming `what`.
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

struct TestConsole {
    console: Option<RunningConsole>,
    base: String,
    http: reqwest::Client,
    db: tempfile::TempDir,
    client_id: String,
}

impl TestConsole {
    /// A console on 127.0.0.1:0 against `broker`, connected and subscribed.
    async fn start(broker: &Server) -> TestConsole {
        let db = tempfile::tempdir().unwrap();
        let client_id = format!("console-{}", uuid::Uuid::now_v7());
        let t = Self::start_with(broker.port(), db, client_id).await;
        t.wait_connected(true).await;
        t
    }

    async fn start_with(port: u16, db: tempfile::TempDir, client_id: String) -> TestConsole {
        let console = start(ConsoleConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            mqtt_host: "127.0.0.1".into(),
            mqtt_port: port,
            mqtt_client_id: client_id.clone(),
            mqtt_auth: Default::default(),
            db_path: db.path().join("console.db"),
            operator_default: DEFAULT_OPERATOR.into(),
        })
        .await
        .unwrap();
        TestConsole {
            base: format!("http://{}", console.local_addr()),
            console: Some(console),
            http: servers::http_client(),
            db,
            client_id,
        }
    }

    async fn wait_connected(&self, connected: bool) {
        eventually("the console's MQTT state", || async {
            let h = self.get("/healthz").await.1;
            (h["mqtt_connected"] == connected).then_some(())
        })
        .await;
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn ack(&self, alarm_id: &str, body: &str) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}/api/alarms/{alarm_id}/ack", self.base))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Wait until `/api/alarms/{id}` satisfies `ok`, and return it.
    async fn alarm_where(&self, id: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        eventually(what, || async {
            let (status, body) = self.get(&format!("/api/alarms/{id}")).await;
            (status == 200 && ok(&body)).then_some(body)
        })
        .await
    }
}

/// An MQTT client that plays a gateway: publishes events, hears commands.
struct TestGateway {
    client: AsyncClient,
    incoming: mpsc::UnboundedReceiver<Incoming>,
}

#[derive(Debug)]
enum Incoming {
    Publish(Publish),
    SubAck,
}

impl TestGateway {
    async fn connect(broker: &Server) -> TestGateway {
        let id = format!("test-gw-{}", uuid::Uuid::now_v7());
        let opts = MqttOptions::new(id, "127.0.0.1", broker.port());
        let (client, mut eventloop) = AsyncClient::new(opts, 64);
        let (tx, incoming) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send(Incoming::Publish(p));
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = tx.send(Incoming::SubAck);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        TestGateway { client, incoming }
    }

    async fn subscribe(&mut self, topic: &str) {
        self.client
            .subscribe(topic, QoS::AtLeastOnce)
            .await
            .unwrap();
        tokio::time::timeout(DEADLINE, async {
            while !matches!(self.incoming.recv().await, Some(Incoming::SubAck)) {}
        })
        .await
        .expect("SubAck");
    }

    async fn next_publish(&mut self) -> Publish {
        tokio::time::timeout(DEADLINE, async {
            loop {
                if let Some(Incoming::Publish(p)) = self.incoming.recv().await {
                    return p;
                }
            }
        })
        .await
        .expect("a publish")
    }

    async fn publish_raw(&self, channel: Channel, payload: Vec<u8>) {
        self.client
            .publish(
                shouwang_wire::topic(COMMUNITY, GATEWAY, channel),
                QoS::AtLeastOnce,
                false,
                payload,
            )
            .await
            .unwrap();
    }

    async fn event(&self, e: &AlarmEvent) {
        self.publish_raw(Channel::Events, e.encode()).await;
    }
}

fn smoke(event_id: &str, ts_ms: i64, state: AlarmState) -> AlarmEvent {
    let transition = match state {
        AlarmState::Unacknowledged => TransitionKind::Raised,
        AlarmState::Acknowledged => TransitionKind::Acknowledged,
        _ => TransitionKind::Cleared,
    };
    AlarmEvent {
        schema: AlarmEvent::SCHEMA,
        event_id: event_id.into(),
        // The tests give one alarm's events in gateway order by `ts_ms`.
        boot: 1,
        seq: u64::try_from(ts_ms).unwrap(),
        alarm_id: ALARM_ID.into(),
        gateway: GATEWAY.into(),
        device: "smoke-12-03".into(),
        device_kind: "smoke".into(),
        point: Some("obscuration".into()),
        rule: "smoke".into(),
        class: SignalClass::Alarm,
        priority: Priority::High,
        transition,
        state,
        active: matches!(state, AlarmState::Unacknowledged | AlarmState::Acknowledged),
        value: Some(4.2),
        engineering_unit: Some("%/m".into()),
        place: Place {
            community: COMMUNITY.into(),
            building: "B1".into(),
            floor: "12".into(),
            room: "03".into(),
            ..Place::default()
        },
        message: "Smoke detected".into(),
        ts_ms,
        operator: (state == AlarmState::Acknowledged).then(|| "li".into()),
    }
}

fn history_len(alarm: &Value) -> usize {
    alarm["history"].as_array().map_or(0, Vec::len)
}

#[tokio::test]
async fn a_raised_alarm_appears_on_the_board_with_its_place_class_and_priority() {
    let broker = servers::mosquitto().unwrap();
    let console = TestConsole::start(&broker).await;
    let gw = TestGateway::connect(&broker).await;
    gw.event(&smoke("e1", 1_000, AlarmState::Unacknowledged))
        .await;

    let board = eventually("the alarm on the board", || async {
        let (_, list) = console.get("/api/alarms").await;
        (list.as_array()?.len() == 1).then_some(list)
    })
    .await;
    let alarm = &board[0];
    assert_eq!(alarm["alarm_id"], ALARM_ID);
    assert_eq!(alarm["place"]["building"], "B1");
    assert_eq!(alarm["place"]["floor"], "12");
    assert_eq!(alarm["place"]["room"], "03");
    assert_eq!(alarm["class"], "alarm");
    assert_eq!(alarm["priority"], "high");
    assert_eq!(alarm["state"], "unacknowledged");
    assert_eq!(alarm["message"], "Smoke detected");
    assert_eq!(alarm["value"], 4.2);
    assert_eq!(alarm["ts_ms"], 1_000);
    assert!(alarm["updated_ms"].as_i64().unwrap() > 0);
}

#[tokio::test]
async fn alarms_from_gateways_of_either_schema_show_their_place_and_its_names() {
    let broker = servers::mosquitto().unwrap();
    let console = TestConsole::start(&broker).await;
    let gw = TestGateway::connect(&broker).await;
    // A gateway not yet upgraded: schema 1, its `unit` the room.
    let v1 = format!(
        r#"{{"schema":1,"event_id":"v1-1","boot":1,"seq":1,"alarm_id":"{COMMUNITY}:{GATEWAY}:smoke-old:smoke","gateway":"{GATEWAY}","device":"smoke-old","device_kind":"smoke","point":"obscuration","rule":"smoke","class":"alarm","priority":"high","transition":"raised","state":"unacknowledged","active":true,"value":3.1,"engineering_unit":"%/m","place":{{"community":"{COMMUNITY}","building":"B1","floor":"12","unit":"03"}},"message":"Smoke detected","ts_ms":1000,"operator":null}}"#
    );
    gw.publish_raw(Channel::Events, v1.into_bytes()).await;
    // An upgraded one: every level, with the names operators read.
    let mut v2 = smoke("v2-1", 2_000, AlarmState::Unacknowledged);
    v2.place = Place {
        community: COMMUNITY.into(),
        grid: "G2".into(),
        building: "B1".into(),
        entrance: "3".into(),
        floor: "12".into(),
        room: "1201".into(),
        area: String::new(),
        names: PlaceNames {
            building: "1号楼".into(),
            entrance: "3单元".into(),
            floor: "12层".into(),
            room: "1201室".into(),
            ..PlaceNames::default()
        },
    };
    gw.event(&v2).await;

    let board = eventually("both alarms on the board", || async {
        let (_, list) = console.get("/api/alarms").await;
        (list.as_array()?.len() == 2).then_some(list)
    })
    .await;
    let by_id = |id: &str| {
        board
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["alarm_id"] == id)
            .unwrap()
            .clone()
    };
    let old = by_id(&format!("{COMMUNITY}:{GATEWAY}:smoke-old:smoke"));
    assert_eq!(old["schema"], 2, "served in today's shape");
    assert_eq!(old["place"]["room"], "03");
    assert_eq!(old["place"]["entrance"], "");
    assert!(old["place"].get("unit").is_none(), "{old}");
    let new = by_id(ALARM_ID);
    assert_eq!(new["place"]["names"]["building"], "1号楼");
    assert_eq!(new["place"]["grid"], "G2");
    let detail = console
        .alarm_where(ALARM_ID, "the alarm's history", |a| history_len(a) == 1)
        .await;
    assert_eq!(detail["history"][0]["place"]["names"]["room"], "1201室");
}

#[tokio::test]
async fn the_same_event_sent_twice_is_one_history_entry() {
    let broker = servers::mosquitto().unwrap();
    let console = TestConsole::start(&broker).await;
    let gw = TestGateway::connect(&broker).await;
    let raised = smoke("e1", 1_000, AlarmState::Unacknowledged);
    gw.event(&raised).await;
    gw.event(&raised).await;
    // A later event on the same topic: once it is stored, both copies before it were handled.
    gw.event(&smoke("e2", 2_000, AlarmState::Acknowledged))
        .await;

    let alarm = console
        .alarm_where(ALARM_ID, "the acknowledged event", |a| {
            a["state"] == "acknowledged"
        })
        .await;
    let ids: Vec<&str> = alarm["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["e1", "e2"]);
}

#[tokio::test]
async fn an_older_event_arriving_late_does_not_roll_the_state_back() {
    let broker = servers::mosquitto().unwrap();
    let console = TestConsole::start(&broker).await;
    let gw = TestGateway::connect(&broker).await;
    gw.event(&smoke("e-ack", 2_000, AlarmState::Acknowledged))
        .await;
    gw.event(&smoke("e-raise", 1_000, AlarmState::Unacknowledged))
        .await;

    let alarm = console
        .alarm_where(ALARM_ID, "both events in the history", |a| {
            history_len(a) == 2
        })
        .await;
    assert_eq!(alarm["state"], "acknowledged");
    assert_eq!(alarm["event_id"], "e-ack");
    assert_eq!(alarm["history"][0]["event_id"], "e-raise", "oldest first");
    assert_eq!(alarm["history"][1]["event_id"], "e-ack");
}

#[tokio::test]
async fn acknowledging_sends_a_command_to_the_owning_gateway_and_the_board_waits_for_its_event() {
    let broker = servers::mosquitto().unwrap();
    let console = TestConsole::start(&broker).await;
    let mut gw = TestGateway::connect(&broker).await;
    gw.subscribe(&shouwang_wire::topic(COMMUNITY, GATEWAY, Channel::Commands))
        .await;
    gw.event(&smoke("e1", 1_000, AlarmState::Unacknowledged))
        .await;
    console
        .alarm_where(ALARM_ID, "the raised alarm", |a| {
            a["state"] == "unacknowledged"
        })
        .await;

    let (status, body) = console.ack(ALARM_ID, r#"{"operator": "li"}"#).await;
    assert_eq!(status, 202, "{body}");
    let command_id = body["command_id"].as_str().unwrap().to_string();

    let publish = gw.next_publish().await;
    assert_eq!(
        publish.topic,
        shouwang_wire::topic(COMMUNITY, GATEWAY, Channel::Commands)
    );
    assert_eq!(publish.qos, QoS::AtLeastOnce);
    let command = Command::decode(&publish.payload).unwrap();
    assert_eq!(command.command_id, command_id);
    assert_eq!(command.operator, "li");
    assert_eq!(
        command.action,
        shouwang_wire::Action::Acknowledge {
            alarm_id: ALARM_ID.into(),
            // No event named in the request: the one this console shows.
            event_id: Some("e1".into()),
        }
    );

    // Nothing changes until the gateway says so.
    let (_, alarm) = console.get(&format!("/api/alarms/{ALARM_ID}")).await;
    assert_eq!(alarm["state"], "unacknowledged");
    let (_, cmd) = console.get(&format!("/api/commands/{command_id}")).await;
    assert_eq!(cmd["status"], "pending");

    let reply = CommandReply {
        schema: CommandReply::SCHEMA,
        command_id: command_id.clone(),
        gateway: GATEWAY.into(),
        ok: true,
        error: None,
        ts_ms: 1_500,
    };
    gw.publish_raw(Channel::Replies, reply.encode()).await;
    gw.event(&smoke("e2", 2_000, AlarmState::Acknowledged))
        .await;

    let alarm = console
        .alarm_where(ALARM_ID, "the acknowledged state", |a| {
            a["state"] == "acknowledged"
        })
        .await;
    assert_eq!(alarm["operator"], "li");
    let cmd = eventually("the command's reply", || async {
        let (_, cmd) = console.get(&format!("/api/commands/{command_id}")).await;
        (cmd["status"] != "pending").then_some(cmd)
    })
    .await;
    assert_eq!(cmd["status"], "ok");
    assert_eq!(cmd["alarm_id"], ALARM_ID);
}

#[tokio::test]
async fn an_empty_acknowledge_body_names_the_default_operator() {
    let broker = servers::mosquitto().unwrap();
    let console = TestConsole::start(&broker).await;
    let mut gw = TestGateway::connect(&broker).await;
    gw.subscribe(&shouwang_wire::topic(COMMUNITY, GATEWAY, Channel::Commands))
        .await;
    gw.event(&smoke("e1", 1_000, AlarmState::ReturnedUnacknowledged))
        .await;
    console.alarm_where(ALARM_ID, "the alarm", |_| true).await;

    let (status, body) = console.ack(ALARM_ID, "").await;
    assert_eq!(status, 202, "{body}");
    let command = Command::decode(&gw.next_publish().await.payload).unwrap();
    assert_eq!(command.operator, DEFAULT_OPERATOR);
}

#[tokio::test]
async fn acknowledging_an_unknown_alarm_is_404_naming_it() {
    let broker = servers::mosquitto().unwrap();
    let console = TestConsole::start(&broker).await;
    let (status, body) = console.ack("gw-x:nope:rule", "").await;
    assert_eq!(status, 404);
    assert!(
        body["error"].as_str().unwrap().contains("gw-x:nope:rule"),
        "{body}"
    );
    let (status, body) = console.get("/api/alarms/gw-x:nope:rule").await;
    assert_eq!(status, 404);
    assert!(body["error"].as_str().unwrap().contains("gw-x:nope:rule"));
}

#[tokio::test]
async fn a_malformed_acknowledge_body_is_400_naming_the_problem() {
    let broker = servers::mosquitto().unwrap();
    let console = TestConsole::start(&broker).await;
    let gw = TestGateway::connect(&broker).await;
    gw.event(&smoke("e1", 1_000, AlarmState::Unacknowledged))
        .await;
    console.alarm_where(ALARM_ID, "the alarm", |_| true).await;

    let (status, body) = console.ack(ALARM_ID, "{not json").await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("acknowledge body"),
        "{body}"
    );
    let (status, body) = console.ack(ALARM_ID, r#"{"operator": 7}"#).await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("invalid type"),
        "{body}"
    );
}

#[tokio::test]
async fn acknowledging_a_normal_or_acknowledged_alarm_is_409() {
    let broker = servers::mosquitto().unwrap();
    let console = TestConsole::start(&broker).await;
    let gw = TestGateway::connect(&broker).await;
    gw.event(&smoke("e1", 1_000, AlarmState::Acknowledged))
        .await;
    console.alarm_where(ALARM_ID, "the alarm", |_| true).await;
    let (status, body) = console.ack(ALARM_ID, "").await;
    assert_eq!(status, 409);
    assert!(
        body["error"].as_str().unwrap().contains("acknowledged"),
        "{body}"
    );

    gw.event(&smoke("e2", 2_000, AlarmState::Normal)).await;
    console
        .alarm_where(ALARM_ID, "the normal state", |a| a["state"] == "normal")
        .await;
    let (status, _) = console.ack(ALARM_ID, "").await;
    assert_eq!(status, 409);
    // A normal alarm leaves the default board but is listed with ?all=true.
    let (_, list) = console.get("/api/alarms").await;
    assert_eq!(list, json!([]));
    let (_, list) = console.get("/api/alarms?all=true").await;
    assert_eq!(list[0]["alarm_id"], ALARM_ID);
}

#[tokio::test]
async fn garbage_on_an_events_topic_does_not_stop_the_console() {
    let broker = servers::mosquitto().unwrap();
    let console = TestConsole::start(&broker).await;
    let gw = TestGateway::connect(&broker).await;
    gw.publish_raw(Channel::Events, b"\xff\x00 not json".to_vec())
        .await;
    gw.publish_raw(
        Channel::Events,
        br#"{"schema": 2, "event_id": "x"}"#.to_vec(),
    )
    .await;
    gw.publish_raw(Channel::Status, b"{}".to_vec()).await;
    gw.event(&smoke("e1", 1_000, AlarmState::Unacknowledged))
        .await;

    console
        .alarm_where(ALARM_ID, "the good event after the garbage", |a| {
            a["state"] == "unacknowledged"
        })
        .await;
    eventually("three rejected messages in the metrics", || async {
        let metrics = console
            .http
            .get(format!("{}/metrics", console.base))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        metrics
            .contains("shouwang_console_mqtt_messages_rejected_total 3\n")
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn gateway_status_and_readings_show_up_in_the_api() {
    let broker = servers::mosquitto().unwrap();
    let console = TestConsole::start(&broker).await;
    let gw = TestGateway::connect(&broker).await;
    let status = GatewayStatus {
        schema: 1,
        gateway: GATEWAY.into(),
        community: COMMUNITY.into(),
        state: GatewayState::Online,
        ts_ms: 1_000,
        version: "0.1.0".into(),
    };
    gw.publish_raw(Channel::Status, status.encode()).await;
    let batch = ReadingBatch {
        schema: ReadingBatch::SCHEMA,
        gateway: GATEWAY.into(),
        device: "pressure-roof".into(),
        device_kind: "pressure".into(),
        place: Place {
            community: COMMUNITY.into(),
            building: "B1".into(),
            floor: "R".into(),
            room: "00".into(),
            ..Place::default()
        },
        ts_ms: 1_100,
        points: vec![PointValue {
            point: "pressure".into(),
            value: Some(0.31),
            engineering_unit: Some("MPa".into()),
            quality: Default::default(),
        }],
    };
    gw.publish_raw(Channel::Readings, batch.encode()).await;

    let gateways = eventually("the gateway status", || async {
        let (_, g) = console.get("/api/gateways").await;
        (g.as_array()?.len() == 1).then_some(g)
    })
    .await;
    assert_eq!(gateways[0]["state"], "online");
    let readings = eventually("the readings", || async {
        let (_, r) = console.get("/api/readings").await;
        (r.as_array()?.len() == 1).then_some(r)
    })
    .await;
    assert_eq!(readings[0]["device"], "pressure-roof");
    assert_eq!(readings[0]["points"][0]["value"], 0.31);
}

#[tokio::test]
async fn the_page_is_served_at_the_root() {
    let broker = servers::mosquitto().unwrap();
    let console = TestConsole::start(&broker).await;
    let r = console
        .http
        .get(format!("{}/", console.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let page = r.text().await.unwrap();
    for needle in [
        "id=\"alarm-board\"",
        "data-alarm-id",
        "/api/stream",
        "id=\"gateways\"",
    ] {
        assert!(page.contains(needle), "page lacks {needle}");
    }
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "no external resources"
    );
}

#[tokio::test]
async fn the_stream_delivers_an_alarm_event_when_one_arrives() {
    let broker = servers::mosquitto().unwrap();
    let console = TestConsole::start(&broker).await;
    let mut stream = console
        .http
        .get(format!("{}/api/stream", console.base))
        .send()
        .await
        .unwrap();
    assert!(
        stream.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let gw = TestGateway::connect(&broker).await;
    gw.event(&smoke("e1", 1_000, AlarmState::Unacknowledged))
        .await;

    let mut text = String::new();
    let data = tokio::time::timeout(DEADLINE, async {
        loop {
            let chunk = stream.chunk().await.unwrap().expect("stream open");
            text.push_str(&String::from_utf8_lossy(&chunk));
            // Events are separated by a blank line; find a complete `alarm` one.
            if let Some(start) = text.find("event: alarm\n")
                && let Some(len) = text[start..].find("\n\n")
            {
                let ev = &text[start..start + len];
                let data = ev.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
                return serde_json::from_str::<Value>(data).unwrap();
            }
        }
    })
    .await
    .expect("an alarm event on the stream");
    assert!(text.starts_with("event: ready\n"), "{text}");
    assert_eq!(data["alarm_id"], ALARM_ID);
    assert_eq!(data["state"], "unacknowledged");
    assert!(data["updated_ms"].is_i64());
}

#[tokio::test]
async fn events_published_while_the_console_is_away_arrive_when_it_returns() {
    let broker = servers::mosquitto().unwrap();
    let mut console = TestConsole::start(&broker).await;
    let gw = TestGateway::connect(&broker).await;
    gw.event(&smoke("e1", 1_000, AlarmState::Unacknowledged))
        .await;
    console
        .alarm_where(ALARM_ID, "the first event", |_| true)
        .await;
    console.console.take().unwrap().shutdown().await.unwrap();

    // The console is away; its persistent session queues this at the broker.
    gw.event(&smoke("e2", 2_000, AlarmState::ReturnedUnacknowledged))
        .await;
    // Make sure the broker has it before the console returns: a second subscriber hears it.
    let mut witness = TestGateway::connect(&broker).await;
    witness
        .subscribe(&shouwang_wire::topic_filter_all(Channel::Events))
        .await;
    gw.event(&smoke("e3", 3_000, AlarmState::ReturnedUnacknowledged))
        .await;
    // e2 and e3 come from one connection in order: hearing e3 means e2 reached the broker.
    while AlarmEvent::decode(&witness.next_publish().await.payload)
        .unwrap()
        .event_id
        != "e3"
    {}

    let TestConsole { db, client_id, .. } = console;
    let back = TestConsole::start_with(broker.port(), db, client_id).await;
    let alarm = back
        .alarm_where(ALARM_ID, "the events sent while away", |a| {
            history_len(a) == 3
        })
        .await;
    assert_eq!(alarm["event_id"], "e3");
    assert_eq!(alarm["state"], "returned_unacknowledged");
}

#[tokio::test]
async fn acknowledging_while_the_broker_is_down_is_503() {
    let mut broker = servers::mosquitto().unwrap();
    let console = TestConsole::start(&broker).await;
    let gw = TestGateway::connect(&broker).await;
    gw.event(&smoke("e1", 1_000, AlarmState::Unacknowledged))
        .await;
    console.alarm_where(ALARM_ID, "the alarm", |_| true).await;

    broker.kill();
    console.wait_connected(false).await;
    let (status, body) = console.ack(ALARM_ID, "").await;
    assert_eq!(status, 503, "{body}");
    assert!(body["error"].as_str().unwrap().contains("MQTT"), "{body}");
    // The board still answers from the store.
    let (status, _) = console.get("/api/alarms").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn the_console_reconnects_when_the_broker_comes_back() {
    let mut broker = servers::mosquitto().unwrap();
    let port = broker.port();
    let console = TestConsole::start(&broker).await;
    broker.kill();
    console.wait_connected(false).await;
    let broker = servers::mosquitto_on(port).unwrap();
    console.wait_connected(true).await;
    let gw = TestGateway::connect(&broker).await;
    gw.event(&smoke("e1", 1_000, AlarmState::Unacknowledged))
        .await;
    console
        .alarm_where(ALARM_ID, "an event after the reconnect", |_| true)
        .await;
}

#[tokio::test]
async fn the_binary_prints_its_address_on_one_line_and_serves_there() {
    use tokio::io::AsyncBufReadExt;

    let broker = servers::mosquitto().unwrap();
    let db = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_shouwang-console"))
        .args(["--listen", "127.0.0.1:0", "--mqtt"])
        .arg(format!("127.0.0.1:{}", broker.port()))
        .arg("--db")
        .arg(db.path().join("console.db"))
        .args(["--client-id", "binary-test"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(DEADLINE, lines.next_line())
        .await
        .expect("the address line")
        .unwrap()
        .expect("a line before stdout closed");
    let url = line
        .strip_prefix("shouwang-console listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    assert!(url.starts_with("http://127.0.0.1:"), "{line}");
    let http = servers::http_client();
    let health: Value = eventually("the binary to connect to the broker", || async {
        let h: Value = http
            .get(format!("{url}/healthz"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (h["mqtt_connected"] == true).then_some(h)
    })
    .await;
    assert_eq!(health["status"], "ok");
    child.kill().await.unwrap();
}

#[tokio::test]
async fn a_gateway_going_offline_is_a_fault_on_the_board_acknowledged_in_the_console() {
    let broker = servers::mosquitto().unwrap();
    let console = TestConsole::start(&broker).await;
    let gw = TestGateway::connect(&broker).await;
    let status = |state, ts_ms| GatewayStatus {
        schema: 1,
        gateway: GATEWAY.into(),
        community: COMMUNITY.into(),
        state,
        ts_ms,
        version: "0.1.0".into(),
    };
    let offline_id = format!("{COMMUNITY}:console:{GATEWAY}:offline");
    gw.publish_raw(Channel::Status, status(GatewayState::Online, 1).encode())
        .await;
    gw.publish_raw(Channel::Status, status(GatewayState::Offline, 1).encode())
        .await;
    let alarm = console
        .alarm_where(&offline_id, "the offline fault", |a| {
            a["state"] == "unacknowledged"
        })
        .await;
    assert_eq!(alarm["class"], "fault");
    assert_eq!(alarm["priority"], "high");
    assert_eq!(alarm["device"], GATEWAY);

    // Acknowledged here: there is no gateway to ask.
    let (code, body) = console.ack(&offline_id, r#"{"operator": "li"}"#).await;
    assert_eq!(code, 202, "{body}");
    let alarm = console
        .alarm_where(&offline_id, "acknowledged", |a| {
            a["state"] == "acknowledged"
        })
        .await;
    assert_eq!(alarm["operator"], "li");

    // Back online: acknowledged + cleared = normal.
    gw.publish_raw(Channel::Status, status(GatewayState::Online, 2).encode())
        .await;
    console
        .alarm_where(&offline_id, "normal again", |a| a["state"] == "normal")
        .await;
}
