//! The broker as `docs/mosquitto/` sets it up (its `shouwang.conf` and its `acl` file, run by
//! the real mosquitto): accounts, topic permissions and TLS, against the `shouwang-gateway`
//! binary and MQTT clients of the test's own.
//!
//! mosquitto drops a denied publish silently: a MQTT 3.1.1 publisher still gets its PUBACK.
//! So each "never receives" check is made sound by a permitted message sent after the
//! forbidden one: the publisher waits for the PUBACK of the forbidden message (by then the
//! broker has decided about it) before the permitted one goes out, and the broker delivers
//! to each subscriber in order, so once the permitted message has arrived, a forbidden one
//! that had been let through would have arrived before it. No fixed waits.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::bail;
use rumqttc::{AsyncClient, ConnectReturnCode, ConnectionError, Event, MqttOptions, Packet, QoS};
use shouwang_broker_auth::{AuthSettings, BrokerAuth, Password, TlsFiles};
use shouwang_hil_tests::rig::{self, eventually};
use shouwang_hil_tests::servers::{self, BrokerSecrets, Server};
use shouwang_hil_tests::sim::SimDevice;
use shouwang_wire::{AlarmEvent, Channel, GatewayState, GatewayStatus, Message, TransitionKind};

/// The accounts the broker has: (name, password).
const ACCOUNTS: [(&str, &str); 3] = [
    ("console", "console-password"),
    ("gw-a", "gw-a-password"),
    ("gw-b", "gw-b-password"),
];
/// The only name on the broker's certificate: the gateway connects to 127.0.0.1 and must be
/// told to expect this name.
const BROKER_NAME: &str = "mqtt.riverside.test";

fn password(account: &str) -> &'static str {
    ACCOUNTS
        .iter()
        .find(|(name, _)| *name == account)
        .map(|(_, pw)| *pw)
        .unwrap_or_else(|| panic!("no account {account}"))
}

fn topic(gateway: &str, channel: Channel) -> String {
    shouwang_wire::topic("riverside", gateway, channel)
}

/// The receipts topic (the console's "events stored" to a gateway), spelt out: the wire
/// crate gets the channel with the receipts work, and the ACL already covers it.
fn receipts(gateway: &str) -> String {
    format!("shouwang/v1/riverside/{gateway}/receipts")
}

/// A site CA, the broker's certificate and gw-a's client certificate, made for the test;
/// gw-a's files (CA, certificate, key, password) are in `dir` for the gateway to read.
struct Pki {
    ca_pem: String,
    broker_cert_pem: String,
    broker_key_pem: String,
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "Shouwang test CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();

        let broker_key = rcgen::KeyPair::generate().unwrap();
        let broker_cert = rcgen::CertificateParams::new(vec![BROKER_NAME.to_string()])
            .unwrap()
            .signed_by(&broker_key, &ca_cert, &ca_key)
            .unwrap();

        let client_key = rcgen::KeyPair::generate().unwrap();
        let mut client = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        client
            .distinguished_name
            .push(rcgen::DnType::CommonName, "gw-a");
        let client_cert = client.signed_by(&client_key, &ca_cert, &ca_key).unwrap();

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.crt"), ca_cert.pem()).unwrap();
        std::fs::write(dir.path().join("gw-a.crt"), client_cert.pem()).unwrap();
        std::fs::write(dir.path().join("gw-a.key"), client_key.serialize_pem()).unwrap();
        std::fs::write(
            dir.path().join("gw-a.password"),
            format!("{}\n", password("gw-a")),
        )
        .unwrap();
        Pki {
            ca_pem: ca_cert.pem(),
            broker_cert_pem: broker_cert.pem(),
            broker_key_pem: broker_key.serialize_pem(),
            dir,
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// gw-a's TLS files, for a client of the test.
    fn tls(&self, with_client_certificate: bool) -> TlsFiles {
        TlsFiles {
            ca_file: self.path("ca.crt").into(),
            cert_file: with_client_certificate.then(|| self.path("gw-a.crt").into()),
            key_file: with_client_certificate.then(|| self.path("gw-a.key").into()),
            server_name: Some(BROKER_NAME.into()),
        }
    }
}

/// mosquitto with the documented config, the accounts above and the test's certificates.
fn broker(pki: &Pki) -> Server {
    servers::mosquitto_secured(&BrokerSecrets {
        accounts: &ACCOUNTS,
        ca_pem: &pki.ca_pem,
        cert_pem: &pki.broker_cert_pem,
        key_pem: &pki.broker_key_pem,
    })
    .unwrap()
}

/// Options for a client of the test on the broker's loopback listener, logged in as
/// `account` (with `password`), or anonymous.
fn options(port: u16, login: Option<(&str, &str)>) -> MqttOptions {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let id = format!("auth-test-{}-{n}", std::process::id());
    let mut options = MqttOptions::new(id, "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(5));
    if let Some((user, pw)) = login {
        options.set_credentials(user, pw);
    }
    options
}

/// (topic, payload) of each message a peer heard, in order.
type Heard = Vec<(String, Vec<u8>)>;

/// A MQTT client of the test: publishes and waits for the PUBACK, subscribes and waits for
/// the SUBACK, and keeps everything it hears.
struct Peer {
    client: AsyncClient,
    heard: Arc<Mutex<Heard>>,
    acks: tokio::sync::mpsc::UnboundedReceiver<Result<Packet, String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Peer {
    /// Connect and wait for the broker's answer: the peer, or the error that refused it.
    async fn connect(options: MqttOptions) -> Result<Peer, ConnectionError> {
        let (client, mut events) = AsyncClient::new(options, 16);
        let first = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match events.poll().await? {
                    Event::Incoming(Packet::ConnAck(_)) => return Ok::<(), ConnectionError>(()),
                    _ => continue,
                }
            }
        })
        .await
        .expect("no answer to CONNECT within 10 s");
        first?;
        let heard = Arc::new(Mutex::new(Vec::new()));
        let (acks_tx, acks) = tokio::sync::mpsc::unbounded_channel();
        let sink = heard.clone();
        let task = tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        sink.lock()
                            .unwrap()
                            .push((p.topic.clone(), p.payload.to_vec()));
                    }
                    Ok(Event::Incoming(p @ (Packet::PubAck(_) | Packet::SubAck(_)))) => {
                        let _ = acks_tx.send(Ok(p));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        // Report and stop: a test peer does not reconnect.
                        let _ = acks_tx.send(Err(e.to_string()));
                        return;
                    }
                }
            }
        });
        Ok(Peer {
            client,
            heard,
            acks,
            task,
        })
    }

    /// Log in on the loopback listener as `account`.
    async fn login(broker: &Server, account: &str) -> Peer {
        Peer::connect(options(broker.port(), Some((account, password(account)))))
            .await
            .unwrap_or_else(|e| panic!("{account} could not log in: {e}"))
    }

    async fn next_ack(&mut self, what: &str) -> anyhow::Result<Packet> {
        match tokio::time::timeout(Duration::from_secs(5), self.acks.recv()).await {
            Ok(Some(Ok(packet))) => Ok(packet),
            Ok(Some(Err(e))) => bail!("the connection failed waiting for {what}: {e}"),
            Ok(None) => bail!("the connection ended waiting for {what}"),
            Err(_) => bail!("no {what} within 5 s"),
        }
    }

    /// Subscribe (QoS 1) and wait for the SUBACK.
    async fn subscribe(&mut self, filter: &str) {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .unwrap();
        let ack = self
            .next_ack(&format!("SUBACK for {filter}"))
            .await
            .unwrap();
        assert!(matches!(ack, Packet::SubAck(_)), "{ack:?}");
    }

    /// Publish at QoS 1 and wait for the broker's PUBACK, which comes whether or not the
    /// ACL let the message through.
    async fn publish_acked(&mut self, topic: &str, payload: &str) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.as_bytes().to_vec())
            .await
            .unwrap();
        let ack = self.next_ack(&format!("PUBACK for {topic}")).await.unwrap();
        assert!(matches!(ack, Packet::PubAck(_)), "{ack:?}");
    }

    fn heard(&self) -> Heard {
        self.heard.lock().unwrap().clone()
    }

    /// What was heard, as (topic, payload text), once `topic` has brought `payload`.
    async fn heard_once(&self, topic: &str, payload: &str) -> Vec<(String, String)> {
        let text = |heard: Heard| -> Vec<(String, String)> {
            heard
                .into_iter()
                .map(|(t, p)| (t, String::from_utf8_lossy(&p).into_owned()))
                .collect()
        };
        eventually(
            &format!("{payload:?} on {topic}"),
            Duration::from_secs(5),
            || {
                let heard = text(self.heard());
                let found = heard.iter().any(|(t, p)| t == topic && p == payload);
                std::future::ready(found.then_some(heard))
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}; heard {:?}", text(self.heard())))
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The gateway's `[mqtt]` lines (pasted after `port`) for gw-a over TLS.
fn gateway_tls_settings(pki: &Pki, server_name: Option<&str>) -> String {
    let mut text = format!(
        "username = \"gw-a\"\npassword_file = {:?}\n\n[mqtt.tls]\nca_file = {:?}\ncert_file = {:?}\nkey_file = {:?}\n",
        pki.path("gw-a.password"),
        pki.path("ca.crt"),
        pki.path("gw-a.crt"),
        pki.path("gw-a.key"),
    );
    if let Some(name) = server_name {
        text.push_str(&format!("server_name = {name:?}\n"));
    }
    text
}

async fn smoke_detector() -> SimDevice {
    let smoke = SimDevice::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    smoke.set_u16(0, 20); // 0.20 %/m: clean air
    smoke
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_with_its_account_and_client_certificate_gets_its_alarm_over_tls_to_the_console_account()
 {
    let pki = Pki::new();
    let broker = broker(&pki);
    let mut console = Peer::login(&broker, "console").await;
    console.subscribe("shouwang/v1/+/+/status").await;
    console.subscribe("shouwang/v1/+/+/events").await;
    let smoke = smoke_detector().await;
    let config = rig::gateway_config(
        "gw-a",
        broker.tls_port().unwrap(),
        smoke.local_addr(),
        None,
        &gateway_tls_settings(&pki, Some(BROKER_NAME)),
    );
    let gateway = rig::start_gateway(&config).unwrap();

    let status_topic = topic("gw-a", Channel::Status);
    eventually("gw-a online", Duration::from_secs(20), || {
        let online = console.heard().iter().any(|(t, p)| {
            *t == status_topic
                && GatewayStatus::decode(p).is_ok_and(|s| s.state == GatewayState::Online)
        });
        std::future::ready(online.then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", gateway.log()));

    smoke.set_u16(0, 310); // 3.10 %/m: over the 2.5 limit
    let events_topic = topic("gw-a", Channel::Events);
    let event = eventually("the smoke alarm", Duration::from_secs(10), || {
        let event = console.heard().into_iter().find_map(|(t, p)| {
            let e = AlarmEvent::decode(&p).ok()?;
            (t == events_topic && e.transition == TransitionKind::Raised).then_some(e)
        });
        std::future::ready(event)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", gateway.log()));
    assert_eq!(event.alarm_id, "riverside:gw-a:smoke-B1-12-03:smoke-high");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_does_not_connect_to_a_broker_whose_certificate_names_another_host() {
    let pki = Pki::new();
    let broker = broker(&pki);
    let smoke = smoke_detector().await;
    // No server_name: the gateway checks the certificate against 127.0.0.1, which it does
    // not name.
    let config = rig::gateway_config(
        "gw-a",
        broker.tls_port().unwrap(),
        smoke.local_addr(),
        None,
        &gateway_tls_settings(&pki, None),
    );
    let gateway = rig::start_gateway(&config).unwrap();
    eventually(
        "the gateway to refuse the certificate",
        Duration::from_secs(10),
        || {
            std::future::ready(
                gateway
                    .log()
                    .contains("invalid peer certificate")
                    .then_some(()),
            )
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", gateway.log()));
    assert!(
        !gateway.log().contains("connected to the broker"),
        "{}",
        gateway.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tls_listener_refuses_a_client_without_a_certificate_from_the_site_ca() {
    let pki = Pki::new();
    let broker = broker(&pki);
    let tls_options = |with_certificate: bool| {
        let auth = BrokerAuth::load(&AuthSettings {
            username: Some("gw-a".into()),
            password: Some(Password::new(password("gw-a"))),
            password_file: None,
            tls: Some(pki.tls(with_certificate)),
        })
        .unwrap();
        let mut options = options(broker.tls_port().unwrap(), None);
        auth.apply(&mut options);
        options
    };

    // The same account with its certificate gets in, so TLS itself works...
    Peer::connect(tls_options(true))
        .await
        .unwrap_or_else(|e| panic!("gw-a with its certificate: {e}"));
    // ...and without one, the handshake fails before MQTT starts.
    match Peer::connect(tls_options(false)).await {
        Ok(_) => panic!("a client without a certificate got in"),
        Err(ConnectionError::ConnectionRefused(code)) => {
            panic!("refused by MQTT ({code:?}), not by TLS")
        }
        Err(_) => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_an_account_or_with_a_wrong_password_is_refused_at_connect() {
    let pki = Pki::new();
    let broker = broker(&pki);
    for (who, login) in [
        ("anonymous", None),
        (
            "gw-a with a wrong password",
            Some(("gw-a", "not-the-password")),
        ),
        ("an unknown account", Some(("gw-z", "gw-z-password"))),
        (
            "gw-a with the console's password",
            Some(("gw-a", password("console"))),
        ),
    ] {
        match Peer::connect(options(broker.port(), login)).await {
            // mosquitto answers MQTT 3.1.1 clients with "not authorised" for all of these.
            Err(ConnectionError::ConnectionRefused(code)) => {
                assert_eq!(code, ConnectReturnCode::NotAuthorized, "{who}")
            }
            Err(e) => panic!("{who}: failed, but not refused by the broker: {e}"),
            Ok(_) => panic!("{who} was let in"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_account_cannot_publish_as_another_gateway() {
    let pki = Pki::new();
    let broker = broker(&pki);
    let mut console = Peer::login(&broker, "console").await;
    for channel in ["status", "readings", "events", "replies"] {
        console
            .subscribe(&format!("shouwang/v1/+/+/{channel}"))
            .await;
    }
    let mut gw_a = Peer::login(&broker, "gw-a").await;

    // Forged: gw-a speaking for gw-b on each channel a gateway writes.
    for channel in [
        Channel::Status,
        Channel::Readings,
        Channel::Events,
        Channel::Replies,
    ] {
        gw_a.publish_acked(&topic("gw-b", channel), "forged by gw-a")
            .await;
    }
    // Permitted, after the forged ones: gw-a's own event.
    let own = topic("gw-a", Channel::Events);
    gw_a.publish_acked(&own, "gw-a's own event").await;

    let heard = console.heard_once(&own, "gw-a's own event").await;
    assert_eq!(heard, [(own, "gw-a's own event".to_string())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_console_account_can_send_a_gateway_commands_and_receipts() {
    let pki = Pki::new();
    let broker = broker(&pki);
    let mut gw_b = Peer::login(&broker, "gw-b").await;
    gw_b.subscribe(&topic("gw-b", Channel::Commands)).await;
    gw_b.subscribe(&receipts("gw-b")).await;
    // gw-a also tries to listen to gw-b's commands (mosquitto grants the subscription and
    // then delivers nothing), next to its own.
    let mut gw_a = Peer::login(&broker, "gw-a").await;
    gw_a.subscribe(&topic("gw-b", Channel::Commands)).await;
    gw_a.subscribe(&topic("gw-a", Channel::Commands)).await;
    let mut console = Peer::login(&broker, "console").await;

    // Forged: gw-a commanding gw-b and itself, gw-b commanding itself, gw-a confirming
    // gw-b's events for the console.
    gw_a.publish_acked(&topic("gw-b", Channel::Commands), "from gw-a")
        .await;
    gw_a.publish_acked(&topic("gw-a", Channel::Commands), "from gw-a to itself")
        .await;
    gw_b.publish_acked(&topic("gw-b", Channel::Commands), "from gw-b to itself")
        .await;
    gw_a.publish_acked(&receipts("gw-b"), "from gw-a").await;
    // The console's, after them: gw-b's command and receipt, then gw-a's command.
    console
        .publish_acked(&topic("gw-b", Channel::Commands), "from the console")
        .await;
    console
        .publish_acked(&receipts("gw-b"), "from the console")
        .await;
    console
        .publish_acked(&topic("gw-a", Channel::Commands), "from the console")
        .await;

    let heard = gw_b.heard_once(&receipts("gw-b"), "from the console").await;
    assert_eq!(
        heard,
        [
            (topic("gw-b", Channel::Commands), "from the console".into()),
            (receipts("gw-b"), "from the console".into()),
        ]
    );
    // gw-a hears the console's command to itself and not the one to gw-b, sent before it.
    let heard = gw_a
        .heard_once(&topic("gw-a", Channel::Commands), "from the console")
        .await;
    assert_eq!(
        heard,
        [(topic("gw-a", Channel::Commands), "from the console".into())]
    );
}

#[test]
fn check_reports_each_broker_tls_problem_with_its_field() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("gw-a.crt");
    std::fs::write(&cert, "not a certificate").unwrap();
    let missing_ca = dir.path().join("missing-ca.crt");
    let tls = format!(
        "username = \"gw-a\"\npassword = \"inline-secret\"\npassword_file = \"/etc/shouwang/pw\"\n\n[mqtt.tls]\nca_file = {:?}\ncert_file = {:?}\n",
        missing_ca.display().to_string(),
        cert.display().to_string(),
    );
    let config = rig::gateway_config("gw-a", 8883, "127.0.0.1:1502".parse().unwrap(), None, &tls);
    let (code, _, stderr) = rig::check_config(&config).unwrap();
    assert_eq!(code, 2, "{stderr}");
    for line in [
        format!("mqtt.tls.ca_file: cannot read {}", missing_ca.display()),
        "mqtt.tls.key_file: missing: a client certificate needs its private key".into(),
        "mqtt.password_file: give the password or a password file, not both".into(),
    ] {
        assert!(stderr.contains(&line), "no {line:?} in:\n{stderr}");
    }
    assert!(!stderr.contains("inline-secret"), "{stderr}");
}
