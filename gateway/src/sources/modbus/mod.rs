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
use tokio_modbus::client::{Context, Reader};
use tokio_modbus::{ExceptionCode, Slave};

pub mod plan;

pub use plan::{Block, PlanLimits, ReadPlan, SitePlan};

use super::{LinkError, PointFault, PollOutcome, PolledValues};
use crate::clock::Clock;
use crate::config::{DataType, DeviceConfig, PointConfig, RegisterTable};
use crate::supervise::Heartbeat;

/// Turn a point's raw registers into its scaled value. 32-bit values are high word first.
pub fn decode(point: &PointConfig, registers: &[u16]) -> Result<f64, DecodeError> {
    // The config refuses a `tcp` point without a type; this keeps a broken invariant a
    // point fault rather than a panic.
    let data_type = point.data_type.ok_or(DecodeError::NotModbus)?;
    let need = usize::from(data_type.registers());
    if registers.len() != need {
        return Err(DecodeError::WrongLength {
            expected: need,
            got: registers.len(),
        });
    }
    let word = |i: usize| u32::from(registers[i]);
    let raw = match data_type {
        DataType::U16 => f64::from(registers[0]),
        DataType::I16 => f64::from(registers[0] as i16),
        DataType::U32 => f64::from((word(0) << 16) | word(1)),
        DataType::I32 => f64::from(((word(0) << 16) | word(1)) as i32),
        DataType::F32 => f64::from(f32::from_bits((word(0) << 16) | word(1))),
    };
    if !raw.is_finite() {
        return Err(DecodeError::NotFinite);
    }
    Ok(raw * point.scale + point.offset)
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("expected {expected} registers, the device sent {got}")]
    WrongLength { expected: usize, got: usize },
    #[error("the registers hold NaN or infinity (a sensor fault)")]
    NotFinite,
    #[error("the point has no Modbus register or type")]
    NotModbus,
}

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
/// exception is a fault of every point in the block. A timeout or transport error ends the
/// poll as a [`LinkError`].
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
        let request = async {
            match table {
                RegisterTable::Holding => ctx.read_holding_registers(start, count).await,
                RegisterTable::Input => ctx.read_input_registers(start, count).await,
            }
        };
        let answer = timeout(limit, request)
            .await
            .map_err(|_| LinkError::Timeout(device.timeout_ms))?
            .map_err(|e| LinkError::Transport(e.to_string()))?;
        if let Err(code @ (ExceptionCode::IllegalDataAddress | ExceptionCode::IllegalDataValue)) =
            answer
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
                    // A short answer gives the point what there is: decode names the length.
                    let words = registers
                        .get(r.start.min(registers.len())..r.end.min(registers.len()))
                        .unwrap_or(&[]);
                    decode(point, words).map_err(|e| e.to_string())
                }
                Err(code) => Err(exception_text(*code)),
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

    fn point(data_type: DataType, scale: f64, offset: f64) -> PointConfig {
        PointConfig {
            name: "p".into(),
            register: Some(0),
            table: None,
            data_type: Some(data_type),
            json: None,
            quality_field: None,
            quality_good: None,
            gpio: None,
            active_low: None,
            scale,
            offset,
            engineering_unit: None,
        }
    }

    #[test]
    fn sixteen_bit_values_are_scaled_and_offset() {
        assert_eq!(
            decode(&point(DataType::U16, 0.01, 0.0), &[250]).unwrap(),
            2.5
        );
        assert_eq!(
            decode(&point(DataType::I16, 1.0, 10.0), &[0xFFFF]).unwrap(),
            9.0
        );
    }

    #[test]
    fn thirty_two_bit_values_take_the_high_word_first() {
        let bits = 0.65f32.to_bits();
        let regs = [(bits >> 16) as u16, bits as u16];
        let v = decode(&point(DataType::F32, 1.0, 0.0), &regs).unwrap();
        assert!((v - 0.65).abs() < 1e-6);
        assert_eq!(
            decode(&point(DataType::U32, 1.0, 0.0), &[1, 2]).unwrap(),
            65538.0
        );
        assert_eq!(
            decode(&point(DataType::I32, 1.0, 0.0), &[0xFFFF, 0xFFFE]).unwrap(),
            -2.0
        );
    }

    #[test]
    fn a_nan_float_is_a_fault_not_a_reading() {
        let bits = f32::NAN.to_bits();
        let err = decode(
            &point(DataType::F32, 1.0, 0.0),
            &[(bits >> 16) as u16, bits as u16],
        );
        assert_eq!(err, Err(DecodeError::NotFinite));
    }

    #[test]
    fn a_short_answer_is_refused() {
        let err = decode(&point(DataType::F32, 1.0, 0.0), &[1]);
        assert_eq!(
            err,
            Err(DecodeError::WrongLength {
                expected: 2,
                got: 1
            })
        );
    }
}
