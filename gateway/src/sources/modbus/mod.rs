//! Polling Modbus TCP devices.
//!
//! [`decode`] is pure: registers in, a scaled value out. [`plan`] is pure too: a device's
//! points in, the fewest read requests ([`ReadPlan`]) out, split further when the device
//! refuses a block. [`poll_device`] is the one loop per device that owns its connection,
//! its timeouts, its reconnects and its plan; it reports every poll, good or failed, as a
//! [`PollOutcome`] and decides nothing about alarms.
//!
//! "The device answered with a Modbus exception" (it is there, but refuses that register)
//! is kept apart from "the link failed" (no answer, connection refused, timeout): only the
//! latter counts towards communication lost.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{MissedTickBehavior, timeout};
use tokio_modbus::client::{Client, Context};
use tokio_modbus::{ExceptionCode, Slave};

pub mod decode;
pub mod plan;

pub use decode::{DecodeError, decode, read_request, words_of};

pub use plan::{Block, PlanLimits, ReadPlan, SitePlan};

use super::{LinkError, PointFault, PollOutcome, PolledValues};
use crate::clock::Clock;
use crate::config::DeviceConfig;
use crate::supervise::Heartbeat;

/// Poll one device forever, sending each outcome on `out`. Returns when `out` closes.
/// Beats `heartbeat` once per poll (see [`stall_after`]); every call starts with a fresh
/// connection and a fresh [`ReadPlan`], so a supervisor restarting it gets both (splits the
/// device forced on the old plan are made again at the first refusal).
pub async fn poll_device(
    index: usize,
    device: DeviceConfig,
    clock: Clock,
    out: mpsc::Sender<PollOutcome>,
    heartbeat: Heartbeat,
) {
    let period = Duration::from_millis(device.poll_interval_ms);
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut reader = DeviceReader::new(device);
    loop {
        ticker.tick().await;
        heartbeat.beat();
        let result = reader.poll().await;
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

/// How long [`poll_device`] may go without a beat before its supervisor deems it stalled:
/// three poll intervals plus the longest turn plus a second of slack. The longest turn is a
/// connect and one request per block of the device's [`ReadPlan`], each bounded by
/// `timeout_ms`, plus the requests of splitting every block down to single points should
/// the device refuse them all in one poll (2k - 1 requests for a block of k points).
pub fn stall_after(device: &DeviceConfig) -> Duration {
    let worst = ReadPlan::for_device(device)
        .worst_requests_per_poll()
        .saturating_add(1);
    let requests = u32::try_from(worst).unwrap_or(u32::MAX);
    Duration::from_millis(device.poll_interval_ms)
        .saturating_mul(3)
        .saturating_add(Duration::from_millis(device.timeout_ms).saturating_mul(requests))
        .saturating_add(Duration::from_secs(1))
}

/// One poll: every block of `plan`, each point decoded from its slice of its block.
///
/// A block refused with exception 02 or 03 is split in `plan` (remembered for the next
/// polls) and its halves are read in this same poll, so the points the device does have
/// are not lost for a poll; a single point still refused is that point's fault. Any other
/// exception, and an answer holding another number of registers than asked, is a fault of
/// every point in the block. A timeout or transport error (a mismatched transaction or unit
/// id included) ends the poll as a [`LinkError`], and [`DeviceReader::poll`] drops the
/// connection, so a late reply is never read as the answer to a later request.
/// Reads one device: its config, its connection (opened on the first poll, dropped after a
/// failed one) and its [`ReadPlan`] (refined by the device's refusals). [`poll_device`]
/// keeps one for as long as it runs; tests drive one poll at a time.
pub struct DeviceReader {
    device: DeviceConfig,
    /// None until connected, and after a poll that failed as a whole.
    link: Option<Context>,
    /// The blocks the next poll reads; only ever split further.
    plan: ReadPlan,
}

impl std::fmt::Debug for DeviceReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceReader")
            .field("device", &self.device.id)
            .field("connected", &self.link.is_some())
            .field("plan", &self.plan)
            .finish()
    }
}

impl DeviceReader {
    pub fn new(device: DeviceConfig) -> DeviceReader {
        let plan = ReadPlan::for_device(&device);
        DeviceReader {
            device,
            link: None,
            plan,
        }
    }

    /// The blocks the next poll will read.
    pub fn plan(&self) -> &ReadPlan {
        &self.plan
    }

    /// Read every point once (see `poll_once`).
    pub async fn poll(&mut self) -> Result<PolledValues, LinkError> {
        let result = poll_once(&self.device, &mut self.plan, &mut self.link).await;
        if result.is_err() {
            // Start from a fresh connection next time: a half-dead socket can keep failing.
            self.link = None;
        }
        result
    }
}

async fn poll_once(
    device: &DeviceConfig,
    plan: &mut ReadPlan,
    link: &mut Option<Context>,
) -> Result<PolledValues, LinkError> {
    let limit = Duration::from_millis(device.timeout_ms);
    if link.is_none() {
        let address = device.address.as_deref().unwrap_or_default();
        let addr = resolve(address).await?;
        let ctx = timeout(
            limit,
            tokio_modbus::client::tcp::connect_slave(addr, Slave(device.modbus_unit())),
        )
        .await
        .map_err(|_| LinkError::Timeout(device.timeout_ms))?
        .map_err(|e| LinkError::Connect {
            addr: address.to_string(),
            reason: e.to_string(),
        })?;
        *link = Some(ctx);
    }
    let Some(ctx) = link.as_mut() else {
        return Err(LinkError::Transport("no connection".into()));
    };
    // Each point's value or fault, by config index.
    let mut read: Vec<Option<Result<f64, String>>> = vec![None; device.points.len()];
    let mut i = 0;
    while let Some(block) = plan.blocks().get(i) {
        let (table, start, count) = (block.table, block.start, block.count);
        // `Client::call`, not tokio-modbus's `Reader` helpers: those `debug_assert` that the
        // answer holds as many registers as asked, so a device answering with another count
        // panicked the poller in debug builds (and went unchecked in release ones).
        let request = read_request(table, start, count);
        let answer = timeout(limit, ctx.call(request))
            .await
            .map_err(|_| LinkError::Timeout(device.timeout_ms))?
            .map_err(|e| LinkError::Transport(e.to_string()))?
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
                    decode(point, words).map_err(|e| e.to_string())
                }
                Err(BlockFault::Exception(code)) => Err(exception_text(*code)),
                Err(BlockFault::Answer(reason)) => Err(reason.clone()),
            });
        }
        i += 1;
    }
    let mut polled = PolledValues::default();
    for (point, result) in device.points.iter().zip(read) {
        match result {
            Some(Ok(v)) => polled.values.push((point.name.clone(), v)),
            Some(Err(reason)) => polled.faults.push(PointFault {
                point: point.name.clone(),
                reason,
            }),
            // Broken invariant: the plan puts every point in a block.
            None => polled.faults.push(PointFault {
                point: point.name.clone(),
                reason: "not in the read plan (a bug in the planner)".into(),
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

async fn resolve(address: &str) -> Result<SocketAddr, LinkError> {
    if let Ok(addr) = address.parse() {
        return Ok(addr);
    }
    tokio::net::lookup_host(address)
        .await
        .ok()
        .and_then(|mut it| it.next())
        .ok_or_else(|| LinkError::Resolve(address.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A device at `addr` with u16 holding points at registers 0 and 1 (one block).
    fn device_at(addr: SocketAddr, timeout_ms: u64) -> DeviceConfig {
        toml::from_str(&format!(
            r#"
id = "d"
kind = "smoke"
building = "B1"
floor = "01"
unit = "01"
transport = "tcp"
address = "{addr}"
poll_interval_ms = 100
timeout_ms = {timeout_ms}

[[points]]
name = "x"
register = 0
type = "u16"

[[points]]
name = "y"
register = 1
type = "u16"
"#
        ))
        .unwrap()
    }

    /// A Modbus TCP peer written by hand: for the n-th request over all connections (from
    /// 0) it waits `delay(n)`, then answers FC03 with `registers(n)` registers all holding
    /// `n`. Returns its address and the number of connections it accepted.
    async fn scripted_peer(
        delay: fn(u16) -> u64,
        registers: fn(u16) -> u16,
    ) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicU16>) {
        use std::sync::atomic::{AtomicU16, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = std::sync::Arc::new(AtomicU16::new(0));
        let requests = std::sync::Arc::new(AtomicU16::new(0));
        let accepted = connections.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                let requests = requests.clone();
                tokio::spawn(async move {
                    let mut request = [0u8; 12];
                    while stream.read_exact(&mut request).await.is_ok() {
                        let n = requests.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(delay(n))).await;
                        let count = registers(n);
                        let mut frame = request[..4].to_vec();
                        frame.extend_from_slice(&(3 + 2 * count).to_be_bytes());
                        frame.extend_from_slice(&[request[6], 3, (2 * count) as u8]);
                        for _ in 0..count {
                            frame.extend_from_slice(&n.to_be_bytes());
                        }
                        if stream.write_all(&frame).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, connections)
    }

    #[tokio::test]
    async fn an_answer_with_the_wrong_number_of_registers_is_a_point_fault_not_a_panic() {
        // Asked for 2 registers: answers 0, then 3, then 2.
        let (addr, connections) = scripted_peer(|_| 0, |n| [0, 3, 2][usize::from(n)]).await;
        let mut reader = DeviceReader::new(device_at(addr, 1000));
        for _ in 0..2 {
            let polled = reader.poll().await.unwrap();
            assert!(polled.values.is_empty(), "{polled:?}");
            assert_eq!(polled.faults.len(), 2, "{polled:?}");
            assert!(polled.faults[0].reason.contains("registers to a read of 2"));
        }
        let polled = reader.poll().await.unwrap();
        assert_eq!(polled.values, vec![("x".into(), 2.0), ("y".into(), 2.0)]);
        // A well-formed answer keeps the connection.
        assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_late_reply_is_never_read_as_the_answer_to_the_next_request() {
        // The first request is answered after the timeout, the rest at once.
        let (addr, connections) = scripted_peer(|n| if n == 0 { 400 } else { 0 }, |_| 2).await;
        let mut reader = DeviceReader::new(device_at(addr, 200));
        assert!(matches!(reader.poll().await, Err(LinkError::Timeout(200))));
        // Let the late reply reach the (old) socket before the next request is sent.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let polled = reader.poll().await.unwrap();
        // Request 1's value, from a new connection; never request 0's.
        assert_eq!(polled.values, vec![("x".into(), 1.0), ("y".into(), 1.0)]);
        assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 2);
    }
}
