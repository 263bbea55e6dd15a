//! `shouwang demo`: a whole Shouwang site in one process, with nothing to install.
//!
//! [`RunningDemo::start`] brings up, in this order: the embedded MQTT broker ([`broker`]),
//! the console with its alarm board, one simulated Modbus TCP gateway per link of
//! `demo/building.toml` with every device of the link behind it at its unit id (and a
//! simulated Modbus TCP device for a device with an address of its own) ([`building`]), and
//! the gateway polling them. The launcher binary
//! (`src/main.rs`) adds the scripted scenario ([`scenario`]) and Ctrl-C.
//!
//! `shouwang demo trigger|clear KIND PLACE` talks to a running demo only over Modbus TCP,
//! exactly as any other master would ([`building::write_value`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use shouwang_gateway::config::{Config, DeviceConfig};
use shouwang_hil_tests::sim::SimDevice;
use shouwang_hil_tests::sim_bus::SimBus;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub mod broker;
pub mod building;
pub mod echo;
pub mod scenario;

use building::{UnknownDevice, find_device, trigger_point};

/// How long the gateway gets to say `offline` when the demo stops.
const GATEWAY_STOP_DEADLINE: Duration = Duration::from_secs(3);

/// What to start.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// The console's HTTP port on 127.0.0.1 (0: any free port).
    pub console_port: u16,
    /// The embedded broker's port on 127.0.0.1; replaces `[mqtt] port` of the building.
    pub mqtt_port: u16,
    /// Serve each simulated gateway and device on a port the OS picks instead of its
    /// configured `address` (for tests running next to a demo). `trigger` from another
    /// process cannot find devices started this way.
    pub devices_on_any_port: bool,
    /// Where the console keeps its database and the gateway its data directory. None: a
    /// temporary directory removed at exit.
    pub db_dir: Option<PathBuf>,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            console_port: 8750,
            mqtt_port: 18830,
            devices_on_any_port: false,
            db_dir: None,
        }
    }
}

/// One simulated device of the building.
#[derive(Debug, Clone)]
pub struct DemoDevice {
    /// Its entry in the gateway config.
    pub config: DeviceConfig,
    /// Its registers.
    pub sim: SimDevice,
    /// Where it answers Modbus TCP (at its unit id): its link's gateway, or its own port.
    pub addr: SocketAddr,
}

impl DemoDevice {
    /// Make the device read `value` (engineering units) at its kind's trigger point, directly
    /// in its registers.
    pub fn set(&self, value: f64) -> anyhow::Result<()> {
        let (point, _) = trigger_point(&self.config)?;
        let words = building::encode(point, value)?;
        let register = point
            .register
            .with_context(|| format!("point {} has no register", point.name))?;
        for (i, word) in (register..).zip(words) {
            self.sim.set_u16(i, word);
        }
        Ok(())
    }

    pub fn trigger(&self) -> anyhow::Result<()> {
        let (_, values) = trigger_point(&self.config)?;
        self.set(values.alarm)
    }

    pub fn clear(&self) -> anyhow::Result<()> {
        let (_, values) = trigger_point(&self.config)?;
        self.set(values.normal)
    }
}

/// Everything the demo started. Dropping it stops the devices; [`RunningDemo::stop`] also
/// lets the gateway say goodbye. The broker lives until the process exits.
pub struct RunningDemo {
    /// The gateway config as running: broker port and device addresses filled in.
    pub config: Config,
    pub devices: Vec<DemoDevice>,
    pub mqtt_addr: SocketAddr,
    pub console_addr: SocketAddr,
    /// Ends when the gateway stops (an error, or after `stop`).
    gateway: JoinHandle<anyhow::Result<()>>,
    stop_gateway: Option<oneshot::Sender<()>>,
    /// Shut down gracefully at [`RunningDemo::stop`]. (Not watched for failure: its `wait`
    /// and `shutdown` both take it, and a graceful stop matters more in a demo.)
    console: Option<shouwang_console::RunningConsole>,
    /// Holds the console's temporary database directory until the demo ends.
    _db_dir: Option<tempfile::TempDir>,
}

impl RunningDemo {
    pub async fn start(options: DemoOptions) -> anyhow::Result<RunningDemo> {
        let mut config = building::building_config()
            .map_err(|report| anyhow::anyhow!("the built-in demo building is broken:\n{report}"))?;

        let mqtt_addr = SocketAddr::from(([127, 0, 0, 1], options.mqtt_port));
        broker::start(mqtt_addr).await?;
        config.mqtt.host = "127.0.0.1".into();
        config.mqtt.port = options.mqtt_port;

        // The console before the devices and the gateway: its port is the one most likely
        // taken, so fail before starting anything else.
        let (db_path, db_dir) = match &options.db_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                config.gateway.data_dir = dir.join("gateway");
                (dir.join("console.db"), None)
            }
            None => {
                let dir = tempfile::Builder::new()
                    .prefix("shouwang-demo-")
                    .tempdir()
                    .context("creating a temporary directory for the console database")?;
                config.gateway.data_dir = dir.path().join("gateway");
                (dir.path().join("console.db"), Some(dir))
            }
        };
        let console = shouwang_console::start(shouwang_console::ConsoleConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], options.console_port)),
            mqtt_host: "127.0.0.1".into(),
            mqtt_port: options.mqtt_port,
            mqtt_client_id: "shouwang-demo-console".into(),
            mqtt_auth: Default::default(), // the embedded broker has no accounts
            db_path,
            operator_default: "demo".into(),
        })
        .await
        .context("starting the console")?;
        let console_addr = console.local_addr();

        // One simulated Modbus TCP gateway per link, its bus's devices behind it.
        let mut buses = std::collections::BTreeMap::new();
        for link in &mut config.links {
            let Some(address) = &link.address else {
                continue;
            };
            let mut addr: SocketAddr = address
                .parse()
                .with_context(|| format!("link {}: address {address:?} is not ip:port", link.id))?;
            if options.devices_on_any_port {
                addr.set_port(0);
            }
            let (bus, bound) = SimBus::serve_modbus_tcp(addr).await.with_context(|| {
                format!(
                    "starting the simulated gateway of link {} on {addr}",
                    link.id
                )
            })?;
            link.address = Some(bound.to_string());
            buses.insert(link.id.clone(), (bus, bound));
        }
        let mut devices = Vec::with_capacity(config.devices.len());
        for device in &mut config.devices {
            let (sim, addr) = match device.link.as_ref().and_then(|l| buses.get(l)) {
                Some((bus, addr)) => (bus.device(device.modbus_unit()), *addr),
                None => {
                    let address = device.address.clone().unwrap_or_default();
                    let mut addr: SocketAddr = address.parse().with_context(|| {
                        format!("device {}: address {address:?} is not ip:port", device.id)
                    })?;
                    if options.devices_on_any_port {
                        addr.set_port(0);
                    }
                    let sim = SimDevice::start(addr).await.with_context(|| {
                        format!("starting simulated device {} on {addr}", device.id)
                    })?;
                    device.address = Some(sim.local_addr().to_string());
                    let addr = sim.local_addr();
                    (sim, addr)
                }
            };
            let demo_device = DemoDevice {
                config: device.clone(),
                sim,
                addr,
            };
            demo_device.clear()?;
            devices.push(demo_device);
        }

        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let gateway = tokio::spawn(shouwang_gateway::run_until(config.clone(), async move {
            let _ = stop_rx.await;
        }));

        Ok(RunningDemo {
            config,
            devices,
            mqtt_addr,
            console_addr,
            gateway,
            stop_gateway: Some(stop_tx),
            console: Some(console),
            _db_dir: db_dir,
        })
    }

    /// `http://127.0.0.1:PORT/`
    pub fn console_url(&self) -> String {
        format!("http://{}/", self.console_addr)
    }

    /// The simulated device of `kind` at `place` (`B1-2-12-1203`).
    pub fn device(&self, kind: &str, place: &str) -> Result<&DemoDevice, UnknownDevice> {
        // `devices` holds one entry per `config.devices`, in the same order.
        let found = find_device(&self.config, kind, place)?;
        let index = self.config.devices.iter().position(|d| d.id == found.id);
        Ok(&self.devices[index.unwrap_or_default()])
    }

    /// Resolves when the gateway stops by itself, with why.
    pub async fn failed(&mut self) -> anyhow::Error {
        match (&mut self.gateway).await {
            Ok(Ok(())) => anyhow::anyhow!("the gateway stopped"),
            Ok(Err(err)) => err.context("the gateway failed"),
            Err(join) => anyhow::anyhow!("the gateway crashed: {join}"),
        }
    }

    /// Let the gateway announce `offline` and disconnect, then stop the console; the devices
    /// stop when this drops.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop_gateway.take() {
            let _ = stop.send(());
        }
        // A finished handle may have been polled to completion by `failed` already.
        if !self.gateway.is_finished() {
            match tokio::time::timeout(GATEWAY_STOP_DEADLINE, &mut self.gateway).await {
                Ok(Ok(Err(err))) => {
                    tracing::warn!(error = %err, "the gateway stopped with an error")
                }
                Ok(_) => {}
                Err(_) => self.gateway.abort(),
            }
        }
        if let Some(console) = self.console.take()
            && let Err(err) = console.shutdown().await
        {
            tracing::warn!(error = %err, "the console did not stop cleanly");
        }
    }
}
