//! Simulated devices on one Modbus RTU line, and the line itself.
//!
//! [`PtyLine`] is a pair of pseudo-terminals joined by `socat` (Debian's `socat`): a serial
//! line without the hardware, each end a real tty that `tokio-serial`, tokio-modbus and
//! `mbpoll` open like `/dev/ttyUSB0`. [`SimBus`] serves [`SimDevice`]s on one end with
//! tokio-modbus's RTU server, each at its own unit id; a unit nobody serves stays silent, as
//! a dead or absent slave on a real RS-485 bus does. [`SimBus::delay_unit`] makes one unit
//! answer late (the server is half-duplex like a real bus: nothing else is answered
//! meanwhile).
//!
//! What a pty does not do: it does not pace bytes at the baud rate, so wire time is not
//! simulated here (the bus benchmark simulates it).
//!
//! [`SimBus::serve_modbus_tcp`] puts the same devices behind a simulated Modbus TCP gateway
//! instead: one TCP port, each request to the unit its unit id names (the demo's building).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_modbus::{ExceptionCode, Response, SlaveRequest};

use crate::sim::{RegisterBank, ServerTask, SimDevice};

/// Two pseudo-terminals joined by socat: bytes written to one end are read at the other.
/// socat is killed when this drops.
pub struct PtyLine {
    child: Child,
    /// The end the master (the gateway, mbpoll) opens.
    pub master_end: PathBuf,
    /// The end the devices are served on.
    pub device_end: PathBuf,
    _dir: tempfile::TempDir,
}

impl PtyLine {
    /// Start socat and wait (up to 5 s) until both ends exist.
    pub fn open() -> anyhow::Result<PtyLine> {
        let dir = tempfile::tempdir()?;
        let master_end = dir.path().join("master");
        let device_end = dir.path().join("devices");
        let child = socat(&master_end, &device_end)?;
        Ok(PtyLine {
            child,
            master_end,
            device_end,
            _dir: dir,
        })
    }

    /// The line goes away (a USB adapter unplugged: both ends vanish, open ports fail) and
    /// comes back at the same paths after `away`.
    pub fn replug(&mut self, away: Duration) -> anyhow::Result<()> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(away);
        self.child = socat(&self.master_end, &self.device_end)?;
        Ok(())
    }
}

/// socat joining two ptys linked at `a` and `b`, once both links exist (up to 5 s).
fn socat(a: &Path, b: &Path) -> anyhow::Result<Child> {
    let end = |p: &Path| format!("pty,raw,echo=0,link={}", p.display());
    let child = Command::new("socat")
        .arg(end(a))
        .arg(end(b))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting socat (apt-get install socat)")?;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !(a.exists() && b.exists()) {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "socat did not make its ptys"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(child)
}

impl Drop for PtyLine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Devices on one RTU line, each at its unit id. Cheap to clone; the server stops when the
/// last handle (of the bus or of one of its devices) drops.
#[derive(Clone)]
pub struct SimBus {
    units: Arc<Units>,
    server: Arc<ServerTask>,
}

#[derive(Default)]
struct Units {
    banks: Mutex<BTreeMap<u8, Arc<RegisterBank>>>,
    delays: Mutex<BTreeMap<u8, Duration>>,
}

impl SimBus {
    /// Serve on the serial port at `path` (a [`PtyLine`]'s `device_end`).
    pub async fn serve(path: &Path, baud: u32) -> anyhow::Result<SimBus> {
        let serial =
            tokio_serial::SerialStream::open(&tokio_serial::new(path.to_string_lossy(), baud))
                .with_context(|| format!("opening {}", path.display()))?;
        let units = Arc::new(Units::default());
        let service = BusService(units.clone());
        let task = tokio::spawn(async move {
            let server = tokio_modbus::server::rtu::Server::new(serial);
            if let Err(e) = server.serve_forever(service).await {
                tracing::debug!(error = %e, "simulated RTU bus stopped");
            }
        });
        Ok(SimBus {
            units,
            server: Arc::new(ServerTask(task.abort_handle())),
        })
    }

    /// Serve on a TCP socket instead, RTU frames and all: a serial device server in
    /// transparent mode with the bus behind it (tokio-modbus's RTU-over-TCP server).
    /// Returns the bus and the address to connect to.
    pub async fn serve_tcp() -> anyhow::Result<(SimBus, std::net::SocketAddr)> {
        SimBus::serve_tcp_on(std::net::SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// [`SimBus::serve_tcp`] on a given address (a server that comes back on its port).
    pub async fn serve_tcp_on(
        addr: std::net::SocketAddr,
    ) -> anyhow::Result<(SimBus, std::net::SocketAddr)> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let units = Arc::new(Units::default());
        let for_connections = units.clone();
        let task = tokio::spawn(async move {
            let server = tokio_modbus::server::rtu_over_tcp::Server::new(listener);
            let new_service = move |_peer| Ok(Some(BusService(for_connections.clone())));
            let on_connected = |stream, peer| {
                let accepted = tokio_modbus::server::rtu_over_tcp::accept_tcp_connection(
                    stream,
                    peer,
                    &new_service,
                );
                async move { accepted }
            };
            let on_process_error = |e: std::io::Error| {
                tracing::debug!(error = %e, "simulated RTU-over-TCP connection ended");
            };
            if let Err(e) = server.serve(&on_connected, on_process_error).await {
                tracing::debug!(error = %e, "simulated RTU-over-TCP bus stopped");
            }
        });
        Ok((
            SimBus {
                units,
                server: Arc::new(ServerTask(task.abort_handle())),
            },
            addr,
        ))
    }

    /// Serve on a TCP port at `addr` (port 0: the OS picks), as a Modbus TCP gateway in
    /// front of an RS-485 bus: each request goes to the unit its unit id names, and a unit
    /// nobody serves stays silent (the master times out), as behind a real gateway. Returns
    /// the address it listens on. Must be called inside a tokio runtime.
    pub async fn serve_modbus_tcp(addr: SocketAddr) -> anyhow::Result<(SimBus, SocketAddr)> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("simulated Modbus TCP gateway: binding {addr}"))?;
        let local_addr = listener.local_addr()?;
        let units = Arc::new(Units::default());
        let served = units.clone();
        let task = tokio::spawn(async move {
            let server = tokio_modbus::server::tcp::Server::new(listener);
            let new_service = move |_peer: SocketAddr| Ok(Some(BusService(served.clone())));
            let on_connected = move |stream, peer| {
                let accepted =
                    tokio_modbus::server::tcp::accept_tcp_connection(stream, peer, &new_service);
                async move { accepted }
            };
            let on_process_error = move |err: std::io::Error| {
                tracing::debug!(gateway = %local_addr, error = %err, "simulated gateway: connection ended");
            };
            if let Err(err) = server.serve(&on_connected, on_process_error).await {
                tracing::warn!(gateway = %local_addr, error = %err, "simulated gateway: accept loop stopped");
            }
        });
        Ok((
            SimBus {
                units,
                server: Arc::new(ServerTask(task.abort_handle())),
            },
            local_addr,
        ))
    }

    /// The device at `unit`, created on first use.
    pub fn device(&self, unit: u8) -> SimDevice {
        let bank = self
            .units
            .banks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(unit)
            .or_insert_with(|| Arc::new(RegisterBank::new()))
            .clone();
        SimDevice::on_bus(bank, self.server.clone())
    }

    /// Make `unit` answer `delay` after each request (and the bus serve nothing meanwhile).
    pub fn delay_unit(&self, unit: u8, delay: Duration) {
        self.units
            .delays
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(unit, delay);
    }
}

struct BusService(Arc<Units>);

type Answer = Result<Option<Response>, ExceptionCode>;

impl tokio_modbus::server::Service for BusService {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Pin<Box<dyn Future<Output = Answer> + Send>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        let bank = self
            .0
            .banks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&req.slave)
            .cloned();
        let delay = self
            .0
            .delays
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&req.slave)
            .copied();
        Box::pin(async move {
            // A unit nobody serves is absent: silence, as on a real bus.
            let Some(bank) = bank else { return Ok(None) };
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            match bank.answer(req.request) {
                None => Ok(None),
                Some(Ok(r)) => Ok(Some(r)),
                Some(Err(e)) => Err(e),
            }
        })
    }
}
