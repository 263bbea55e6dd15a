//! The test rig: start the real Shouwang binaries and listen on the broker like a receiver.
//!
//! The binaries come from the workspace's `target/<profile>/` (the README's test command
//! builds them before the tests run). Each child process is killed when its handle drops;
//! its stderr goes to a log file whose tail [`Proc::log`] returns, for failure messages.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

/// The directory the workspace's binaries are built into, found from this test's own path
/// (`target/<profile>/deps/<test>`), or `SHOUWANG_BIN_DIR`.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SHOUWANG_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// The path of a workspace binary, or an error that says how to build it.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let path = bin_dir().join(name);
    if !path.is_file() {
        bail!(
            "{} is missing: run `cargo build --workspace --bins` first (scripts/test does)",
            path.display()
        );
    }
    Ok(path)
}

/// A running child process, killed on drop.
pub struct Proc {
    child: Child,
    log_path: PathBuf,
    _dir: Arc<tempfile::TempDir>,
}

impl Proc {
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Kill without a goodbye (SIGKILL), like a power cut.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Ask it to stop (SIGTERM) and wait up to `limit`.
    pub fn terminate(&mut self, limit: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()?;
        if !status.success() {
            bail!("kill -TERM failed");
        }
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("did not stop within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// What it wrote to stderr so far (the last 4000 characters).
    pub fn log(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let start = text.len().saturating_sub(4000);
        let start = (start..text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(0);
        text[start..].to_string()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Start `shouwang-gateway run` on a config text, in a directory of its own (a relative
/// `data_dir` lands there).
pub fn start_gateway(config_toml: &str) -> anyhow::Result<Proc> {
    start_gateway_in(Arc::new(tempfile::tempdir()?), config_toml)
}

/// Start `shouwang-gateway run` in `dir`: a gateway started again in the same directory
/// finds the data (durable queue, boot counter) of the one before, as after a power cut.
/// Each start's log is appended to the same file.
pub fn start_gateway_in(dir: Arc<tempfile::TempDir>, config_toml: &str) -> anyhow::Result<Proc> {
    start_gateway_with(dir, config_toml, &[])
}

/// Like [`start_gateway_in`], with extra environment variables (e.g. libfaketime's).
pub fn start_gateway_with(
    dir: Arc<tempfile::TempDir>,
    config_toml: &str,
    env: &[(&str, String)],
) -> anyhow::Result<Proc> {
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, config_toml)?;
    let log_path = dir.path().join("gateway.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)?;
    let child = Command::new(binary("shouwang-gateway")?)
        .arg("run")
        .arg(&config)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("RUST_LOG", "info,shouwang_gateway=debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting shouwang-gateway")?;
    Ok(Proc {
        child,
        log_path,
        _dir: dir,
    })
}

/// Run `shouwang-gateway check` on a config text: (exit code, stdout, stderr).
pub fn check_config(config_toml: &str) -> anyhow::Result<(i32, String, String)> {
    gateway_once("check", config_toml)
}

/// Run `shouwang-gateway <verb> CONFIG` to its end: (exit code, stdout, stderr).
pub fn gateway_once(verb: &str, config_toml: &str) -> anyhow::Result<(i32, String, String)> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, config_toml)?;
    let out = Command::new(binary("shouwang-gateway")?)
        .arg(verb)
        .arg(&config)
        .stdin(Stdio::null())
        .output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// A running `shouwang-console` and its base URL.
pub struct ConsoleProc {
    pub proc: Proc,
    pub url: String,
}

/// Start `shouwang-console` against a broker on loopback, on a port the OS picks.
pub fn start_console(mqtt_port: u16) -> anyhow::Result<ConsoleProc> {
    start_console_with_db(mqtt_port, None)
}

/// Like [`start_console`], with its database at `db` (say, on a small disk) instead of in
/// its own temporary directory.
pub fn start_console_with_db(
    mqtt_port: u16,
    db: Option<&std::path::Path>,
) -> anyhow::Result<ConsoleProc> {
    let dir = Arc::new(tempfile::tempdir()?);
    let log_path = dir.path().join("console.log");
    let log = std::fs::File::create(&log_path)?;
    let db = db.map_or_else(
        || dir.path().join("console.db"),
        std::path::Path::to_path_buf,
    );
    let mut child = Command::new(binary("shouwang-console")?)
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--mqtt")
        .arg(format!("127.0.0.1:{mqtt_port}"))
        .arg("--db")
        .arg(db)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .context("starting shouwang-console")?;
    let stdout = child.stdout.take().context("console stdout")?;
    let proc = Proc {
        child,
        log_path,
        _dir: dir,
    };
    // The console prints `shouwang-console listening on http://ADDR` once bound.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("shouwang-console listening on ") {
                let _ = tx.send(url.trim().to_string());
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(url) => Ok(ConsoleProc { proc, url }),
        Err(_) => bail!(
            "shouwang-console did not report its address:\n{}",
            proc.log()
        ),
    }
}

/// One message heard on the broker.
#[derive(Debug, Clone)]
pub struct Heard {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
    pub at: Instant,
}

/// A test subscriber: hears everything under a filter and keeps it, time-stamped on arrival.
pub struct Listener {
    heard: Arc<Mutex<Vec<Heard>>>,
    pub client: AsyncClient,
    task: tokio::task::JoinHandle<()>,
}

impl Listener {
    /// Connect to a broker on loopback and subscribe; returns once the subscription is
    /// acknowledged. A clean session: what is published while it is away is lost to it.
    pub async fn start(port: u16, filter: &str) -> anyhow::Result<Listener> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("test-listener-{}-{n}", std::process::id());
        Listener::connect(port, filter, &id, true).await
    }

    /// Like [`Listener::start`] with a persistent session under `client_id`, as the console
    /// has: QoS 1 messages published while it is disconnected are delivered when it is back.
    pub async fn start_persistent(
        port: u16,
        filter: &str,
        client_id: &str,
    ) -> anyhow::Result<Listener> {
        Listener::connect(port, filter, client_id, false).await
    }

    async fn connect(port: u16, filter: &str, id: &str, clean: bool) -> anyhow::Result<Listener> {
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        options.set_clean_session(clean);
        options.set_keep_alive(Duration::from_secs(5));
        options.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut events) = AsyncClient::new(options, 64);
        let heard = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let sink = heard.clone();
        let resubscribe = client.clone();
        let filter = filter.to_string();
        let task = tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            loop {
                match events.poll().await {
                    // (Re)subscribe on every connection: a restarted broker forgets us.
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = resubscribe.try_subscribe(filter.clone(), QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = ready.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if let Ok(mut h) = sink.lock() {
                            h.push(Heard {
                                topic: p.topic.clone(),
                                payload: p.payload.to_vec(),
                                retain: p.retain,
                                at: Instant::now(),
                            });
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready_rx)
            .await
            .context("no SUBACK from the broker within 10 s")??;
        Ok(Listener {
            heard,
            client,
            task,
        })
    }

    /// Everything heard so far.
    pub fn heard(&self) -> Vec<Heard> {
        self.heard.lock().map(|h| h.clone()).unwrap_or_default()
    }

    /// Wait until a message matches `pick` (which returns what the test wants from it).
    pub async fn wait_for<T>(
        &self,
        what: &str,
        limit: Duration,
        mut pick: impl FnMut(&Heard) -> Option<T>,
    ) -> anyhow::Result<T> {
        let deadline = Instant::now() + limit;
        let mut seen = 0;
        loop {
            let heard = self.heard();
            for h in &heard[seen..] {
                if let Some(t) = pick(h) {
                    return Ok(t);
                }
            }
            seen = heard.len();
            if Instant::now() > deadline {
                let topics: Vec<&str> = heard
                    .iter()
                    .rev()
                    .take(10)
                    .map(|h| h.topic.as_str())
                    .collect();
                bail!(
                    "waited {limit:?} for {what}; heard {} messages, the last on {topics:?}",
                    heard.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// This machine's wall clock, ms since the Unix epoch.
pub fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Whether the long fault variants were asked for (`SHOUWANG_LONG_FAULTS=1`): cuts that
/// last an hour, storms that last minutes. Every long variant reads the flag here, so one
/// setting switches all of them; default runs stay short enough for CI.
pub fn long_faults() -> bool {
    std::env::var("SHOUWANG_LONG_FAULTS").is_ok_and(|v| v == "1")
}

/// Poll `probe` until it returns `Some`, or fail after `limit` naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(t) = probe().await {
            return Ok(t);
        }
        if Instant::now() > deadline {
            bail!("gave up after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A TCP proxy on loopback that a test can cut and mend, to play a network failure between
/// a client and a server (the way crates.io's chaos proxy does). While cut, it closes every
/// open connection and closes new ones as soon as they are accepted.
pub struct ChaosProxy {
    port: u16,
    open: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl ChaosProxy {
    pub async fn start(upstream: std::net::SocketAddr) -> anyhow::Result<ChaosProxy> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (open, watch) = tokio::sync::watch::channel(true);
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut watch = watch.clone();
                if !*watch.borrow() {
                    continue; // dropped: the connection closes at once
                }
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = watch.wait_for(|open| !*open) => {}
                    }
                });
            }
        });
        Ok(ChaosProxy { port, open, task })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Cut (`false`) or mend (`true`) the link.
    pub fn set_open(&self, open: bool) {
        let _ = self.open.send(open);
    }
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The gateway config the end-to-end tests share: a smoke detector at B1-12-03 (register 0,
/// 0.01 %/m per count, alarm `smoke-high` above 2.5 %/m with 0.5 deadband) and, if given, a
/// leak probe at B1-01-01 (input register 0, alarm `leak` above 0.5); both polled every
/// 100 ms, community `riverside`. `extra` is pasted after `[mqtt]` (e.g. an `[influx]` table).
pub fn gateway_config(
    gateway: &str,
    mqtt_port: u16,
    smoke: std::net::SocketAddr,
    leak: Option<std::net::SocketAddr>,
    extra: &str,
) -> String {
    let mut text = format!(
        r#"
[gateway]
id = "{gateway}"
community = "riverside"
data_dir = "data"

[mqtt]
port = {mqtt_port}
keep_alive_s = 2

{extra}

[[devices]]
id = "smoke-B1-12-03"
kind = "smoke"
building = "B1"
floor = "12"
unit = "03"
transport = "tcp"
address = "{smoke}"
poll_interval_ms = 100
timeout_ms = 300
# Every poll reported: these tests count readings to see polls.
report_every_s = 0
comm_loss_after_s = 1

[[devices.points]]
name = "obscuration"
register = 0
type = "u16"
scale = 0.01
engineering_unit = "%/m"

[[rules]]
id = "smoke-high"
device_kind = "smoke"
point = "obscuration"
class = "alarm"
priority = "high"
above = 2.5
deadband = 0.5
message = "Smoke detected"
"#
    );
    if let Some(leak) = leak {
        text.push_str(&format!(
            r#"
[[devices]]
id = "leak-B1-01-01"
kind = "leak"
building = "B1"
floor = "01"
unit = "01"
transport = "tcp"
address = "{leak}"
poll_interval_ms = 100
timeout_ms = 300
# Every poll reported: these tests count readings to see polls.
report_every_s = 0

[[devices.points]]
name = "leak"
register = 0
table = "input"
type = "u16"

[[rules]]
id = "leak"
device_kind = "leak"
point = "leak"
class = "alarm"
priority = "medium"
above = 0.5
message = "Water leak"
"#
        ));
    }
    text
}

/// Check one alarm's history from the console's API (oldest first): its transitions are
/// exactly `expected`, its `(boot, seq)` keys strictly increase (in the order they happened)
/// and no `event_id` appears twice (every transition stored once). `context` goes into the
/// failure message (logs, say).
pub fn assert_each_transition_once(
    history: &[serde_json::Value],
    expected: &[&str],
    context: &str,
) {
    let transitions: Vec<&str> = history
        .iter()
        .map(|e| e["transition"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(
        transitions, expected,
        "each transition once, in order\n{history:#?}\n{context}"
    );
    let keys: Vec<(u64, u64)> = history
        .iter()
        .map(|e| {
            (
                e["boot"].as_u64().unwrap_or(0),
                e["seq"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "{keys:?}\n{context}");
    let mut ids: Vec<&str> = history
        .iter()
        .map(|e| e["event_id"].as_str().unwrap_or(""))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(
        ids.len(),
        history.len(),
        "one event_id per transition\n{context}"
    );
}
