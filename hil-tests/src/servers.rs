//! Real servers for tests: mosquitto, VictoriaMetrics and InfluxDB 1.x, from Debian's
//! packages (`.ci/run` installs them).
//!
//! Each one runs as a child process on a port the OS picked, with its data in a temporary
//! directory, and is killed when its [`Server`] handle drops. Starting waits until the port
//! accepts connections, with a deadline; if the process dies first, the error carries what it
//! printed.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A running server process. Killed on drop.
pub struct Server {
    name: &'static str,
    child: Child,
    port: u16,
    /// A second listener with TLS, for brokers that have one.
    tls_port: Option<u16>,
    dir: tempfile::TempDir,
    /// How it was started, for [`Server::restart`].
    program: PathBuf,
    args: Vec<String>,
}

impl Server {
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The TLS listener's port, for a broker started with one ([`mosquitto_secured`]).
    pub fn tls_port(&self) -> Option<u16> {
        self.tls_port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `http://127.0.0.1:PORT`, for the HTTP servers.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The server's scratch directory (config, data, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kill the server (to test what happens when it goes away).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stop it the polite way (SIGTERM, as a service restart does) and start it again on the
    /// same port with the same data directory.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop()?;
        self.start_again()
    }

    /// Stop it the polite way (SIGTERM, as a service stop does; killed after 10 s), keeping
    /// its data directory for [`Server::start_again`].
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                self.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Start it again after [`Server::stop`] or [`Server::kill`], on the same port with the
    /// same directory: a broker back from a crash finds whatever it had saved there, and
    /// nothing else.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        if self.child.try_wait()?.is_none() {
            bail!("{} is still running; kill it first", self.name);
        }
        self.child = launch(&self.program, &self.args, self.dir.path())?;
        self.wait_listening()
    }

    fn wait_listening(&mut self) -> anyhow::Result<()> {
        let name = self.name;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{name} exited with {status} before it listened:\n{}",
                    self.log()
                );
            }
            let listening = |port: u16| {
                let addr = SocketAddr::from(([127, 0, 0, 1], port));
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            };
            if listening(self.port) && self.tls_port.is_none_or(listening) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{name} did not listen on {} within 30 s:\n{}",
                    self.addr(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} on port {}", self.name, self.port)
    }
}

/// A port that was free a moment ago. There is a small race between this and the server
/// binding it; the servers here cannot be told to bind port 0 and report it.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// Find a server binary on PATH or in the sbin directories Debian puts daemons in.
pub fn find_binary(name: &str, package: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/usr/local/sbin"].map(PathBuf::from));
    for dir in dirs {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("{name} not found: run .ci/run once, or `apt-get install -y {package}`")
}

fn launch(program: &Path, args: &[String], dir: &Path) -> anyhow::Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("server.log"))?;
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", program.display()))
}

fn spawn(
    name: &'static str,
    program: &Path,
    args: &[String],
    port: u16,
    dir: tempfile::TempDir,
) -> anyhow::Result<Server> {
    let child = launch(program, args, dir.path())?;
    let mut server = Server {
        name,
        child,
        port,
        tls_port: None,
        dir,
        program: program.to_path_buf(),
        args: args.to_vec(),
    };
    server.wait_listening()?;
    Ok(server)
}

/// A mosquitto broker on loopback, anonymous. It persists sessions and queued messages in
/// its directory, as a production broker is set up to, so [`Server::restart`] keeps them.
pub fn mosquitto() -> anyhow::Result<Server> {
    mosquitto_on(free_port())
}

/// A mosquitto broker with the packet limit docs/mosquitto/ asks for
/// (`max_packet_size` = [`shouwang_wire::MAX_PUBLISH_BYTES`]): a client that sends a bigger
/// packet is disconnected by the broker and its message reaches nobody.
pub fn mosquitto_limited() -> anyhow::Result<Server> {
    mosquitto_conf(
        free_port(),
        &format!("max_packet_size {}\n", shouwang_wire::MAX_PUBLISH_BYTES),
    )
}

/// A mosquitto broker on a given port (to restart one where clients expect it).
pub fn mosquitto_on(port: u16) -> anyhow::Result<Server> {
    mosquitto_conf(port, "")
}

/// What every test broker shares with `docs/mosquitto/shouwang.conf`: Nagle's algorithm
/// off on the broker's side (with it on, a client's messages arrive in bursts every ~18 ms
/// once it has sent a keep-alive ping; see the note there).
const NODELAY: &str = "set_tcp_nodelay true\n";

/// A mosquitto broker that keeps everything in memory only (mosquitto's default,
/// `persistence false`): killed, it comes back knowing no session and no queued message.
pub fn mosquitto_in_memory() -> anyhow::Result<Server> {
    let bin = find_binary("mosquitto", "mosquitto")?;
    let dir = tempfile::tempdir()?;
    let port = free_port();
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n{NODELAY}"),
    )?;
    spawn(
        "mosquitto (in memory)",
        &bin,
        &["-c".into(), conf.display().to_string()],
        port,
        dir,
    )
}

/// A mosquitto broker that persists (as [`mosquitto`]) and saves its state to disk every
/// `autosave_interval_s` seconds as well as on shutdown (docs/mosquitto/ says 10 s): killed
/// with SIGKILL, it comes back with its last save.
pub fn mosquitto_saving_every(autosave_interval_s: u32) -> anyhow::Result<Server> {
    mosquitto_conf(
        free_port(),
        &format!("autosave_interval {autosave_interval_s}\n"),
    )
}

fn mosquitto_conf(port: u16, extra: &str) -> anyhow::Result<Server> {
    let bin = find_binary("mosquitto", "mosquitto")?;
    let dir = tempfile::tempdir()?;
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\n{NODELAY}{extra}",
            dir.path().display()
        ),
    )?;
    spawn(
        "mosquitto",
        &bin,
        &["-c".into(), conf.display().to_string()],
        port,
        dir,
    )
}

/// What a secured broker is given: its accounts and its TLS identity.
pub struct BrokerSecrets<'a> {
    /// (account, password) pairs, put in a password file with `mosquitto_passwd`.
    pub accounts: &'a [(&'a str, &'a str)],
    /// PEM of the CA that signed the clients' certificates (and the broker's).
    pub ca_pem: &'a str,
    /// PEM of the broker's certificate and its private key.
    pub cert_pem: &'a str,
    pub key_pem: &'a str,
}

/// mosquitto set up as the docs say a production broker is: `docs/mosquitto/shouwang.conf`
/// with only its two ports (a free one each, on loopback) and its two directories (this
/// server's temporary one) replaced, and `docs/mosquitto/acl` word for word. So a test
/// against it tests the documented setup, and the docs cannot drift from what is tested.
///
/// [`Server::port`] is the plain loopback listener (1883 in the docs), [`Server::tls_port`]
/// the TLS one (8883, with `require_certificate true`).
pub fn mosquitto_secured(secrets: &BrokerSecrets<'_>) -> anyhow::Result<Server> {
    let bin = find_binary("mosquitto", "mosquitto")?;
    let passwd_bin = find_binary("mosquitto_passwd", "mosquitto")?;
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/mosquitto");
    let dir = tempfile::tempdir()?;
    let at = |name: &str| dir.path().join(name);

    std::fs::copy(docs.join("acl"), at("acl")).context("copying docs/mosquitto/acl")?;
    std::fs::write(at("ca.crt"), secrets.ca_pem)?;
    std::fs::write(at("broker.crt"), secrets.cert_pem)?;
    std::fs::write(at("broker.key"), secrets.key_pem)?;
    for (i, (user, password)) in secrets.accounts.iter().enumerate() {
        let mut cmd = Command::new(&passwd_bin);
        cmd.arg("-b");
        if i == 0 {
            cmd.arg("-c");
        }
        let out = cmd
            .arg(at("passwd"))
            .arg(user)
            .arg(password)
            .stdin(Stdio::null())
            .output()
            .context("running mosquitto_passwd")?;
        if !out.status.success() {
            bail!(
                "mosquitto_passwd {user}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    let port = free_port();
    let tls_port = free_port();
    let documented = std::fs::read_to_string(docs.join("shouwang.conf"))
        .context("reading docs/mosquitto/shouwang.conf")?;
    let here = format!("{}/", dir.path().display());
    let mut conf = documented;
    for (from, to) in [
        ("/etc/mosquitto/shouwang/", here.clone()),
        ("/var/lib/mosquitto/", here.clone()),
        (
            "\nlistener 8883\n",
            format!("\nlistener {tls_port} 127.0.0.1\n"),
        ),
        (
            "\nlistener 1883 127.0.0.1\n",
            format!("\nlistener {port} 127.0.0.1\n"),
        ),
    ] {
        if !conf.contains(from) {
            bail!("docs/mosquitto/shouwang.conf no longer has {from:?}, which the tests replace");
        }
        conf = conf.replace(from, &to);
    }
    // As root, mosquitto would switch to the `mosquitto` user, which cannot read this
    // root-owned temporary directory. Without root this line does nothing.
    conf.push_str("\n# Test only: stay the user that started it.\nuser root\n");
    let conf_path = at("mosquitto.conf");
    std::fs::write(&conf_path, conf)?;

    let args = vec!["-c".to_string(), conf_path.display().to_string()];
    let child = launch(&bin, &args, dir.path())?;
    let mut server = Server {
        name: "mosquitto (secured)",
        child,
        port,
        tls_port: Some(tls_port),
        dir,
        program: bin,
        args,
    };
    server.wait_listening()?;
    Ok(server)
}

/// A single-node VictoriaMetrics that accepts InfluxDB line protocol on `/write` and
/// `/api/v2/write` and answers `/api/v1/export`.
pub fn victoria_metrics() -> anyhow::Result<Server> {
    victoria_metrics_on(free_port())
}

/// InfluxDB 1.x with the HTTP API on loopback, no auth, data in a temp dir.
/// Create a database with [`influx1_create_database`] before writing.
pub fn influxdb1() -> anyhow::Result<Server> {
    let bin = find_binary("influxd", "influxdb")?;
    let dir = tempfile::tempdir()?;
    let port = free_port();
    let rpc_port = free_port();
    let d = dir.path().display().to_string();
    let conf = dir.path().join("influxdb.conf");
    std::fs::write(
        &conf,
        format!(
            r#"reporting-disabled = true
bind-address = "127.0.0.1:{rpc_port}"
[meta]
  dir = "{d}/meta"
[data]
  dir = "{d}/data"
  wal-dir = "{d}/wal"
  query-log-enabled = false
[http]
  bind-address = "127.0.0.1:{port}"
  auth-enabled = false
  log-enabled = false
"#
        ),
    )?;
    spawn(
        "influxd",
        &bin,
        &["-config".into(), conf.display().to_string()],
        port,
        dir,
    )
}

/// `CREATE DATABASE name` on an InfluxDB 1.x server.
pub async fn influx1_create_database(server: &Server, name: &str) -> anyhow::Result<()> {
    let resp = http_client()
        .post(format!("{}/query", server.url()))
        .form(&[("q", format!("CREATE DATABASE \"{name}\""))])
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!("CREATE DATABASE {name}: {}", resp.text().await?);
    }
    Ok(())
}

/// An HTTP client for tests. Installs rustls' ring provider first: the workspace builds
/// reqwest without a built-in crypto provider (no aws-lc, no OpenSSL).
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_else(|e| panic!("building the test HTTP client: {e}"))
}

/// A single-node VictoriaMetrics on a given port, with fresh data (to start one where a
/// client already expects it, e.g. a server that comes up after its writer).
pub fn victoria_metrics_on(port: u16) -> anyhow::Result<Server> {
    let bin = find_binary("victoria-metrics", "victoria-metrics")?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    spawn(
        "victoria-metrics",
        &bin,
        &[
            format!("-httpListenAddr=127.0.0.1:{port}"),
            format!("-storageDataPath={}", data.display()),
            "-retentionPeriod=100y".into(),
            "-search.latencyOffset=0s".into(),
        ],
        port,
        dir,
    )
}

/// One look at VictoriaMetrics' `/api/v1/export` for a series selector: one JSON object per
/// series (`metric`, `values`, `timestamps`). Flushes first: without that, VictoriaMetrics
/// shows new series about a second after the write, and an export asked before then caches
/// "no such series" for up to ten more.
pub async fn vm_export(vm_url: &str, selector: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    let http = http_client();
    let _ = http
        .get(format!("{vm_url}/internal/force_flush"))
        .send()
        .await;
    let text = http
        .get(format!("{vm_url}/api/v1/export"))
        .query(&[("match[]", selector)])
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("export line {l:?}")))
        .collect()
}
