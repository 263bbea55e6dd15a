//! Links own connections: one task per serial port or TCP endpoint ([`run_link`]) holds the
//! one connection, serves every device behind it by unit id, one request at a time, in the
//! order its [`Schedule`] gives, and reconnects by itself.
//!
//! # Where links come from ([`links`])
//! - Each `[[links]]` entry is a link. A `tcp` link with `connections = n` is n lanes, each
//!   a link of its own with a share of the devices (in config order, dealt round-robin).
//! - `tcp` devices that give their own `address` share one implicit link per address
//!   (`tcp:<address>`), so two unit ids behind one Modbus TCP gateway use one socket.
//!
//! # After a failure
//! A poll that fails as a whole (no answer in time, a garbled or mismatched answer, a broken
//! connection) resets the link before its next request:
//! - Modbus TCP and RTU over TCP: the socket is dropped and a new one opened, so nothing
//!   the peer sends late on the old one is ever read (tokio-modbus#324). RTU over TCP also
//!   waits for the recovery silence on the new socket, since a device server may still
//!   forward the late reply from its serial side.
//! - RTU on a serial port: the master reads and throws away everything until the line has
//!   been quiet for the recovery silence (`rtu/mod.rs`); the port is reopened only when it
//!   failed itself (unplugged, closed).
//!
//! Then the device is quarantined by the schedule (backoff up to the cap) and the other
//! devices keep their rates.
//!
//! # Writes
//! A write to a device's point (a relay output, a command) goes to its link's task through
//! [`Writers`] and is sent between two polls, before the next one: never around the task,
//! so a write never meets a poll on the line. The queue ([`WriteQueue`], 16 writes per link)
//! lives outside the task, so a restarted task serves the writes waiting for the dead one;
//! a caller whose write could not be queued (the queue full) is told so at once. Writable:
//! a coil (FC 5), and a 16-bit holding register (`u16` or `i16`, not a bit field: FC 6),
//! the value unscaled with the point's `scale` and `offset`. A write that fails is not
//! retried by the link: the caller decides.

use std::collections::BTreeMap;
use std::time::Duration;

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, timeout};
use tokio_modbus::client::{Client, Context};
use tokio_modbus::slave::SlaveContext;
use tokio_modbus::{ExceptionCode, Request, Response, Slave};

use super::decode::{decode, read_request, words_of};
use super::plan::ReadPlan;
use super::rtu::{Line, RtuMaster, Timing};
use super::schedule::{Next, Schedule, Slot};
use crate::clock::Clock;
use crate::config::{
    Config, DataType, DeviceConfig, LinkConfig, LinkTransport, Parity, PollPriority, RegisterTable,
    Transport,
};
use crate::sources::{LinkError, PointFault, PollOutcome, PolledValues, Quality};
use crate::supervise::Heartbeat;
use shouwang_rules::SignalClass;

/// How a link reaches its devices.
#[derive(Debug, Clone, PartialEq)]
pub enum LinkKind {
    Tcp {
        address: String,
    },
    RtuOverTcp {
        address: String,
        /// The device server's serial side.
        baud: u32,
        timing: Timing,
    },
    Rtu {
        port: String,
        baud: u32,
        parity: Parity,
        stop_bits: u8,
        timing: Timing,
    },
}

impl LinkKind {
    /// The serial timing of an RTU line (for RTU over TCP, of the server's serial side).
    pub fn timing(&self) -> Option<Timing> {
        match self {
            LinkKind::Tcp { .. } => None,
            LinkKind::RtuOverTcp { timing, .. } | LinkKind::Rtu { timing, .. } => Some(*timing),
        }
    }
}

/// One link (or one lane of a multi-connection TCP link) and the devices it serves.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkSpec {
    /// The `[[links]]` id (with `#k` for the k-th lane of a link with several connections),
    /// or `tcp:<address>` for devices that gave their own address.
    pub id: String,
    pub kind: LinkKind,
    /// (index into `Config::devices`, poll priority), in config order.
    pub devices: Vec<(usize, PollPriority)>,
    pub recovery_silence: Duration,
    pub quarantine_max: Duration,
}

/// The priority each device (by index into `Config::devices`) is polled with: its
/// `poll_priority`, or from the classes of the rules on it. One pass over the rules and
/// their devices, not one per device: a start-up with 10,000 devices stays quick.
pub fn poll_priorities(config: &Config) -> Vec<PollPriority> {
    let mut from_rules = vec![PollPriority::Routine; config.devices.len()];
    for bound in &config.rules {
        let priority = match bound.rule.class {
            SignalClass::Alarm => PollPriority::LifeSafety,
            SignalClass::Supervisory => PollPriority::Supervisory,
            _ => continue,
        };
        for &d in &bound.devices {
            if let Some(slot) = from_rules.get_mut(d) {
                *slot = (*slot).min(priority);
            }
        }
    }
    config
        .devices
        .iter()
        .zip(from_rules)
        .map(|(d, derived)| d.poll_priority.unwrap_or(derived))
        .collect()
}

/// Every Modbus link of `config`, each with its devices.
pub fn links(config: &Config) -> Vec<LinkSpec> {
    let priorities = poll_priorities(config);
    let priority = |i: usize| priorities.get(i).copied().unwrap_or(PollPriority::Routine);
    let mut specs = Vec::new();
    for link in &config.links {
        let devices: Vec<(usize, PollPriority)> = config
            .devices
            .iter()
            .enumerate()
            .filter(|(_, d)| d.link.as_deref() == Some(link.id.as_str()))
            .map(|(i, _)| (i, priority(i)))
            .collect();
        if devices.is_empty() {
            continue;
        }
        let lanes = usize::from(link.connections.unwrap_or(1).max(1)).min(devices.len());
        for lane in 0..lanes {
            let id = if lanes == 1 {
                link.id.clone()
            } else {
                format!("{}#{}", link.id, lane + 1)
            };
            specs.push(LinkSpec {
                id,
                kind: kind_of(link),
                devices: devices.iter().skip(lane).step_by(lanes).copied().collect(),
                recovery_silence: Duration::from_millis(link.recovery_silence_ms),
                quarantine_max: Duration::from_secs(link.quarantine_max_s),
            });
        }
    }
    let mut by_address: BTreeMap<String, Vec<(usize, PollPriority)>> = BTreeMap::new();
    for (i, d) in config.devices.iter().enumerate() {
        if let (Transport::Tcp, None, Some(address)) = (d.transport, &d.link, &d.address) {
            by_address
                .entry(address.trim().to_string())
                .or_default()
                .push((i, priority(i)));
        }
    }
    for (address, devices) in by_address {
        specs.push(LinkSpec {
            id: format!("tcp:{address}"),
            kind: LinkKind::Tcp { address },
            devices,
            // A device with its own address has no [[links]] entry: the keys' defaults.
            recovery_silence: Duration::from_millis(crate::config::default_recovery_silence_ms()),
            quarantine_max: Duration::from_secs(crate::config::default_quarantine_max_s()),
        });
    }
    specs
}

fn kind_of(link: &LinkConfig) -> LinkKind {
    let timing = Timing::serial(link.baud_or_default(), link.bits_per_char());
    let address = link.address.clone().unwrap_or_default();
    match link.transport {
        LinkTransport::Tcp => LinkKind::Tcp { address },
        LinkTransport::RtuOverTcp => LinkKind::RtuOverTcp {
            address,
            baud: link.baud_or_default(),
            timing,
        },
        LinkTransport::Rtu => LinkKind::Rtu {
            port: link.port.clone().unwrap_or_default(),
            baud: link.baud_or_default(),
            parity: link.parity.unwrap_or_default(),
            stop_bits: link.stop_bits_or_default(),
            timing,
        },
    }
}

/// An open connection on a link.
pub enum Connection {
    /// Modbus TCP (tokio-modbus's client; every request carries its unit id).
    Tcp(Context),
    /// Modbus RTU, on a serial port or a socket (our master, `rtu/mod.rs`).
    Rtu(RtuMaster<Box<dyn Line>>),
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Connection::Tcp(_) => f.write_str("Connection::Tcp"),
            Connection::Rtu(m) => write!(f, "Connection::Rtu({m:?})"),
        }
    }
}

impl Connection {
    /// Open the link. `recovering`: the last connection failed (an RTU master then waits for
    /// the recovery silence before its first request).
    pub async fn open(
        kind: &LinkKind,
        limit: Duration,
        recovery_silence: Duration,
        recovering: bool,
    ) -> Result<Connection, LinkError> {
        let limit_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
        match kind {
            LinkKind::Tcp { address } => {
                let addr = resolve(address).await?;
                let ctx = timeout(
                    limit,
                    tokio_modbus::client::tcp::connect_slave(addr, Slave(1)),
                )
                .await
                .map_err(|_| LinkError::Timeout(limit_ms))?
                .map_err(|e| LinkError::Connect {
                    addr: address.clone(),
                    reason: e.to_string(),
                })?;
                Ok(Connection::Tcp(ctx))
            }
            LinkKind::RtuOverTcp {
                address, timing, ..
            } => {
                let addr = resolve(address).await?;
                let stream = timeout(limit, tokio::net::TcpStream::connect(addr))
                    .await
                    .map_err(|_| LinkError::Timeout(limit_ms))?
                    .map_err(|e| LinkError::Connect {
                        addr: address.clone(),
                        reason: e.to_string(),
                    })?;
                let _ = stream.set_nodelay(true);
                Ok(Connection::Rtu(RtuMaster::new(
                    Box::new(stream),
                    *timing,
                    recovery_silence,
                    recovering,
                )))
            }
            LinkKind::Rtu {
                port,
                baud,
                parity,
                stop_bits,
                timing,
            } => {
                use tokio_serial::{ClearBuffer, SerialPort, SerialPortBuilderExt};
                let builder = tokio_serial::new(port, *baud)
                    .data_bits(tokio_serial::DataBits::Eight)
                    .parity(match parity {
                        Parity::None => tokio_serial::Parity::None,
                        Parity::Even => tokio_serial::Parity::Even,
                        Parity::Odd => tokio_serial::Parity::Odd,
                    })
                    .stop_bits(if *stop_bits == 2 {
                        tokio_serial::StopBits::Two
                    } else {
                        tokio_serial::StopBits::One
                    })
                    .flow_control(tokio_serial::FlowControl::None);
                let stream = builder
                    .open_native_async()
                    .map_err(|e| LinkError::Connect {
                        addr: port.clone(),
                        reason: e.to_string(),
                    })?;
                // What waited in the driver's buffer is from before: not an answer.
                let _ = stream.clear(ClearBuffer::All);
                Ok(Connection::Rtu(RtuMaster::new(
                    Box::new(stream),
                    *timing,
                    recovery_silence,
                    recovering,
                )))
            }
        }
    }

    /// One request to `unit`: the device's answer, or why the exchange failed.
    pub async fn call(
        &mut self,
        unit: u8,
        request: Request<'static>,
        limit: Duration,
    ) -> Result<Result<Response, ExceptionCode>, LinkError> {
        let limit_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
        match self {
            Connection::Tcp(ctx) => {
                ctx.set_slave(Slave(unit));
                timeout(limit, ctx.call(request))
                    .await
                    .map_err(|_| LinkError::Timeout(limit_ms))?
                    .map_err(|e| LinkError::Transport(e.to_string()))
            }
            Connection::Rtu(master) => master.call(unit, &request, limit).await,
        }
    }

    /// Whether the connection must be dropped after `error` (see the module docs).
    fn reset_by(&self, kind: &LinkKind, error: &LinkError) -> bool {
        match (self, kind) {
            (Connection::Rtu(_), LinkKind::Rtu { .. }) => {
                !matches!(error, LinkError::Timeout(_) | LinkError::Garbled(_))
            }
            _ => true,
        }
    }
}

/// Read every point of `device` once over `conn` (see the module docs of `mod.rs`).
///
/// A block refused with exception 02 or 03 is split in `plan` (remembered for the next
/// polls) and its halves are read in this same poll; a single point still refused is that
/// point's fault. Any other exception, and an answer holding another number of registers
/// than asked, is a fault of every point in the block. A failed exchange ends the poll as a
/// [`LinkError`], and the caller resets the connection.
pub async fn read_device(
    conn: &mut Connection,
    device: &DeviceConfig,
    plan: &mut ReadPlan,
) -> Result<PolledValues, LinkError> {
    let limit = Duration::from_millis(device.timeout_ms);
    let unit = device.modbus_unit();
    let mut read: Vec<Option<Result<f64, (String, Quality)>>> = vec![None; device.points.len()];
    let mut i = 0;
    while let Some(block) = plan.blocks().get(i) {
        let (table, start, count) = (block.table, block.start, block.count);
        // `Client::call`, not tokio-modbus's `Reader` helpers: those `debug_assert` that the
        // answer holds as many registers as asked, so a device answering with another count
        // panicked the poller in debug builds (and went unchecked in release ones).
        let answer = conn
            .call(unit, read_request(table, start, count), limit)
            .await?
            .map(|response| words_of(response, count));
        let answer = match answer {
            Ok(Ok(registers)) => Ok(registers),
            Ok(Err(reason)) => Err(BlockFault::Answer(reason)),
            Err(code) => Err(BlockFault::Exception(code)),
        };
        if let Err(BlockFault::Exception(
            code @ (ExceptionCode::IllegalDataAddress | ExceptionCode::IllegalDataValue),
        )) = answer
            && plan.split(i, &device.points)
        {
            tracing::info!(
                device = %device.id,
                ?table,
                start,
                count,
                exception = %code,
                "the device refused a block of registers: read it in halves from now on"
            );
            // Block i is now the first half: read it next.
            continue;
        }
        let Some(block) = plan.blocks().get(i) else {
            break;
        };
        for &p in &block.points {
            let (Some(point), Some(slot)) = (device.points.get(p), read.get_mut(p)) else {
                continue;
            };
            *slot = Some(match &answer {
                Ok(registers) => {
                    let r = block.slice_of(point);
                    let words = registers.get(r).unwrap_or(&[]);
                    decode(point, words).map_err(|e| (e.to_string(), e.quality()))
                }
                Err(BlockFault::Exception(code)) => Err((exception_text(*code), Quality::Bad)),
                Err(BlockFault::Answer(reason)) => Err((reason.clone(), Quality::Bad)),
            });
        }
        i += 1;
    }
    let mut polled = PolledValues::default();
    for (point, result) in device.points.iter().zip(read) {
        match result {
            Some(Ok(v)) => polled.values.push((point.name.clone(), v)),
            Some(Err((reason, quality))) => polled.faults.push(PointFault {
                point: point.name.clone(),
                reason,
                quality,
            }),
            // Broken invariant: the plan puts every point in a block.
            None => polled.faults.push(PointFault {
                point: point.name.clone(),
                reason: "not in the read plan (a bug in the planner)".into(),
                quality: Quality::Bad,
            }),
        }
    }
    Ok(polled)
}

/// Why a block that got an answer gave no registers: the device refused it, or its answer
/// was a well-formed frame that does not answer the read.
enum BlockFault {
    Exception(ExceptionCode),
    Answer(String),
}

fn exception_text(code: ExceptionCode) -> String {
    format!("the device answered with Modbus exception {code}")
}

pub(super) async fn resolve(address: &str) -> Result<std::net::SocketAddr, LinkError> {
    if let Ok(addr) = address.parse() {
        return Ok(addr);
    }
    tokio::net::lookup_host(address)
        .await
        .ok()
        .and_then(|mut it| it.next())
        .ok_or_else(|| LinkError::Resolve(address.to_string()))
}

/// A write to one point of a device, waiting for its link's task.
#[derive(Debug)]
pub struct WriteRequest {
    /// Index into `Config::devices`.
    pub device: usize,
    pub point: String,
    /// In the point's unit (after scale and offset): the link's task unscales it.
    pub value: f64,
    pub done: oneshot::Sender<Result<(), WriteError>>,
}

/// Why a write was not done.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WriteError {
    #[error("device {0} is not a Modbus device of this gateway")]
    NoDevice(String),
    #[error("point {point} of {device}: {reason}")]
    NotWritable {
        device: String,
        point: String,
        reason: String,
    },
    #[error("{0}'s link has 16 writes waiting already")]
    Busy(String),
    #[error("the device refused the write: Modbus exception {0}")]
    Refused(String),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("the link's task ended before answering")]
    Gone,
}

/// The writes waiting for one link's task; kept outside the task so a restart keeps them.
pub type WriteQueue = Arc<tokio::sync::Mutex<mpsc::Receiver<WriteRequest>>>;

/// Writes waiting per link.
const WRITES_PER_LINK: usize = 16;

/// Where a write to each Modbus device goes: its link's queue. Cheap to clone.
#[derive(Clone, Default)]
pub struct Writers {
    by_device: Arc<HashMap<usize, (String, mpsc::Sender<WriteRequest>)>>,
}

impl Writers {
    /// A queue per link of `specs` (whose device indices are into `devices`, the config's):
    /// the writers, and each link's queue in `specs`' order.
    pub fn for_links(specs: &[LinkSpec], devices: &[DeviceConfig]) -> (Writers, Vec<WriteQueue>) {
        let mut by_device = HashMap::new();
        let mut queues = Vec::with_capacity(specs.len());
        for spec in specs {
            let (tx, rx) = mpsc::channel(WRITES_PER_LINK);
            for &(i, _) in &spec.devices {
                let id = devices.get(i).map_or_else(String::new, |d| d.id.clone());
                by_device.insert(i, (id, tx.clone()));
            }
            queues.push(Arc::new(tokio::sync::Mutex::new(rx)));
        }
        (
            Writers {
                by_device: Arc::new(by_device),
            },
            queues,
        )
    }

    /// Write `value` to `point` of device `device` (an index into `Config::devices`), and
    /// wait for the device's answer.
    pub async fn write(&self, device: usize, point: &str, value: f64) -> Result<(), WriteError> {
        let Some((id, tx)) = self.by_device.get(&device) else {
            return Err(WriteError::NoDevice(device.to_string()));
        };
        let (done, answer) = oneshot::channel();
        let request = WriteRequest {
            device,
            point: point.to_string(),
            value,
            done,
        };
        tx.try_send(request).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => WriteError::Busy(id.clone()),
            mpsc::error::TrySendError::Closed(_) => WriteError::Gone,
        })?;
        answer.await.unwrap_or(Err(WriteError::Gone))
    }
}

/// The Modbus request that writes `value` to `point`, or why it cannot be written.
pub fn write_request(
    device: &DeviceConfig,
    point: &str,
    value: f64,
) -> Result<Request<'static>, WriteError> {
    let not = |reason: &str| WriteError::NotWritable {
        device: device.id.clone(),
        point: point.to_string(),
        reason: reason.to_string(),
    };
    let p = device
        .points
        .iter()
        .find(|p| p.name == point)
        .ok_or_else(|| not("no such point"))?;
    let register = p.modbus_register();
    if !value.is_finite() {
        return Err(not("the value is not a finite number"));
    }
    match (p.modbus_table(), p.data_type) {
        (RegisterTable::Coil, _) => Ok(Request::WriteSingleCoil(register, value != 0.0)),
        (RegisterTable::Holding, Some(t @ (DataType::U16 | DataType::I16))) => {
            let raw = ((value - p.offset) / p.scale).round();
            let word = match t {
                DataType::U16 if (0.0..=65535.0).contains(&raw) => raw as u16,
                DataType::I16 if (-32768.0..=32767.0).contains(&raw) => (raw as i16) as u16,
                _ => return Err(not(&format!("{value} is out of the register's range"))),
            };
            Ok(Request::WriteSingleRegister(register, word))
        }
        (RegisterTable::Holding, Some(DataType::Bit)) => Err(not(
            "a bit of a register is not written (it would need a read-modify-write of its neighbours)",
        )),
        (RegisterTable::Holding, _) => Err(not("only 16-bit registers and coils are written")),
        (RegisterTable::Input | RegisterTable::DiscreteInput, _) => {
            Err(not("an input is read-only"))
        }
    }
}

/// How long [`run_link`] may go without a beat: its slowest device's turn (see
/// [`super::stall_after`]) plus the recovery silence.
pub fn stall_after(spec: &LinkSpec, config: &Config) -> Duration {
    spec.devices
        .iter()
        .filter_map(|&(i, _)| config.devices.get(i))
        .map(super::stall_after)
        .max()
        .unwrap_or(Duration::from_secs(10))
        .saturating_add(spec.recovery_silence)
}

/// Serve one link forever: poll its devices in the schedule's order over one connection,
/// sending each outcome on `out`. Returns when `out` closes. Beats `heartbeat` before every
/// poll and at least once a second while waiting. Every call starts with a fresh connection,
/// plans and schedule, so a supervisor restarting it gets all three.
pub async fn run_link(
    spec: LinkSpec,
    config: Arc<Config>,
    writes: WriteQueue,
    clock: Clock,
    out: mpsc::Sender<PollOutcome>,
    heartbeat: Heartbeat,
) {
    let (kind, silence) = (spec.kind.clone(), spec.recovery_silence);
    let open = move |limit: Duration, recovering: bool| {
        let kind = kind.clone();
        async move { Connection::open(&kind, limit, silence, recovering).await }
    };
    serve_link(spec, config, writes, clock, out, heartbeat, open).await;
}

/// The link's connection, opened when needed and dropped after a failure that calls for it.
struct Held<F> {
    conn: Option<Connection>,
    /// The last exchange failed: a new connection starts with the recovery silence.
    recovering: bool,
    open: F,
}

impl<F, Fut> Held<F>
where
    F: FnMut(Duration, bool) -> Fut,
    Fut: std::future::Future<Output = Result<Connection, LinkError>>,
{
    async fn connection(&mut self, limit: Duration) -> Result<&mut Connection, LinkError> {
        if self.conn.is_none() {
            let c = (self.open)(limit, self.recovering).await;
            if c.is_err() {
                self.recovering = true;
            }
            self.conn = Some(c?);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| LinkError::Transport("no connection".into()))
    }

    /// Note how an exchange went: reset the connection after a failure that calls for it.
    fn after<T>(&mut self, kind: &LinkKind, result: &Result<T, LinkError>) {
        match result {
            Ok(_) => self.recovering = false,
            Err(error) => {
                self.recovering = true;
                if self.conn.as_ref().is_none_or(|c| c.reset_by(kind, error)) {
                    self.conn = None;
                }
            }
        }
    }
}

/// [`run_link`] with the way connections are opened given: `open(timeout, recovering)`
/// opens one (the bus benchmark gives a simulated line this way).
pub async fn serve_link<F, Fut>(
    spec: LinkSpec,
    config: Arc<Config>,
    writes: WriteQueue,
    clock: Clock,
    out: mpsc::Sender<PollOutcome>,
    heartbeat: Heartbeat,
    open: F,
) where
    F: FnMut(Duration, bool) -> Fut,
    Fut: std::future::Future<Output = Result<Connection, LinkError>>,
{
    let started = Instant::now();
    let ms = || u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    // The link's devices, borrowed from the one config (1,000 devices: no copies).
    let devices: Vec<&DeviceConfig> = spec
        .devices
        .iter()
        .filter_map(|&(i, _)| config.devices.get(i))
        .collect();
    let slots: Vec<Slot> = devices
        .iter()
        .zip(&spec.devices)
        .map(|(d, &(_, priority))| Slot {
            interval_ms: d.poll_interval_ms,
            priority,
        })
        .collect();
    let quarantine_max_ms = u64::try_from(spec.quarantine_max.as_millis()).unwrap_or(u64::MAX);
    let mut schedule = Schedule::new(&slots, ms(), quarantine_max_ms);
    let mut plans: Vec<ReadPlan> = devices.iter().map(|d| ReadPlan::for_device(d)).collect();
    let mut line = Held {
        conn: None,
        recovering: false,
        open,
    };
    // A restarted task waits here until the aborted one has let go of the queue.
    let mut writes = writes.lock().await;
    loop {
        heartbeat.beat();
        // Writes first, between two exchanges.
        while let Ok(w) = writes.try_recv() {
            write_one(&spec, &devices, &mut line, w).await;
            heartbeat.beat();
        }
        let k = match schedule.next(ms()) {
            Next::Poll(k) => k,
            Next::WaitUntil(t) => {
                let wait = Duration::from_millis(t.saturating_sub(ms()).min(1000));
                tokio::select! {
                    Some(w) = writes.recv() => write_one(&spec, &devices, &mut line, w).await,
                    _ = tokio::time::sleep(wait) => {}
                }
                continue;
            }
        };
        let (Some(&device), Some(plan), Some(&(index, _))) =
            (devices.get(k), plans.get_mut(k), spec.devices.get(k))
        else {
            return;
        };
        let limit = Duration::from_millis(device.timeout_ms);
        let result = match line.connection(limit).await {
            Ok(c) => read_device(c, device, plan).await,
            Err(e) => Err(e),
        };
        line.after(&spec.kind, &result);
        if let Err(error) = &result {
            tracing::debug!(link = %spec.id, device = %device.id, %error, "poll failed");
        }
        schedule.done(k, result.is_ok(), ms());
        let outcome = PollOutcome {
            device: index,
            at: clock.now(),
            result,
        };
        if out.send(outcome).await.is_err() {
            return;
        }
    }
}

/// Do one write on the link and answer its caller.
async fn write_one<F, Fut>(
    spec: &LinkSpec,
    devices: &[&DeviceConfig],
    line: &mut Held<F>,
    w: WriteRequest,
) where
    F: FnMut(Duration, bool) -> Fut,
    Fut: std::future::Future<Output = Result<Connection, LinkError>>,
{
    let Some(device) = spec
        .devices
        .iter()
        .position(|&(i, _)| i == w.device)
        .and_then(|k| devices.get(k).copied())
    else {
        let _ = w.done.send(Err(WriteError::NoDevice(w.device.to_string())));
        return;
    };
    let request = match write_request(device, &w.point, w.value) {
        Ok(r) => r,
        Err(e) => {
            let _ = w.done.send(Err(e));
            return;
        }
    };
    let limit = Duration::from_millis(device.timeout_ms);
    let result = match line.connection(limit).await {
        Ok(c) => c.call(device.modbus_unit(), request, limit).await,
        Err(e) => Err(e),
    };
    line.after(&spec.kind, &result);
    let answer = match result {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(code)) => Err(WriteError::Refused(code.to_string())),
        Err(e) => Err(WriteError::Link(e)),
    };
    tracing::info!(link = %spec.id, device = %device.id, point = %w.point, value = w.value, ok = answer.is_ok(), "write");
    let _ = w.done.send(answer);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_flood_of_writes_is_told_busy_at_once_beyond_the_queue_and_none_is_lost_silently() {
        let config = Config::from_toml_str(
            "[gateway]\nid = \"gw\"\ncommunity = \"c\"\ndata_dir = \"d\"\n\
             [[devices]]\nid = \"relay\"\nkind = \"relay\"\nbuilding = \"B1\"\nfloor = \"1\"\nunit = \"1\"\n\
             transport = \"tcp\"\naddress = \"127.0.0.1:1\"\n\
             [[devices.points]]\nname = \"sounder\"\nregister = 0\ntable = \"coil\"\ntype = \"bit\"\n",
            "t",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let specs = links(&config);
        // No link task runs: every write waits in the queue.
        let (writers, queues) = Writers::for_links(&specs, &config.devices);
        let waiting: Vec<_> = (0..WRITES_PER_LINK)
            .map(|_| {
                let w = writers.clone();
                tokio::spawn(async move { w.write(0, "sounder", 1.0).await })
            })
            .collect();
        // Let the spawned writes take their places in the queue.
        while queues[0].lock().await.len() < WRITES_PER_LINK {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            writers.write(0, "sounder", 1.0).await,
            Err(WriteError::Busy("relay".into()))
        );
        assert_eq!(
            writers.write(7, "sounder", 1.0).await,
            Err(WriteError::NoDevice("7".into()))
        );
        // The queue goes away (no link will serve it): every waiting caller hears so.
        drop(queues);
        for w in waiting {
            assert_eq!(w.await.ok(), Some(Err(WriteError::Gone)));
        }
    }
}
