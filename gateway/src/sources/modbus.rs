//! Polling Modbus TCP devices.
//!
//! [`decode`] is pure: registers in, a scaled value out. [`poll_device`] is the one loop
//! per device that owns its connection, its timeouts and its reconnects; it reports every
//! poll, good or failed, as a [`PollOutcome`] and decides nothing about alarms.
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
/// connection, so a supervisor restarting it gets one.
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
    let mut link: Option<Context> = None;
    loop {
        ticker.tick().await;
        heartbeat.beat();
        let result = poll_once(&device, &mut link).await;
        if result.is_err() {
            // Start from a fresh connection next time: a half-dead socket can keep failing.
            link = None;
        }
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
/// three poll intervals plus the longest turn (a connect and one request per point, each
/// bounded by `timeout_ms`) plus a second of slack.
pub fn stall_after(device: &DeviceConfig) -> Duration {
    let requests = u32::try_from(device.points.len().saturating_add(1)).unwrap_or(u32::MAX);
    Duration::from_millis(device.poll_interval_ms)
        .saturating_mul(3)
        .saturating_add(Duration::from_millis(device.timeout_ms).saturating_mul(requests))
        .saturating_add(Duration::from_secs(1))
}

async fn poll_once(
    device: &DeviceConfig,
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
    let mut polled = PolledValues::default();
    for point in &device.points {
        let (Some(register), Some(data_type)) = (point.register, point.data_type) else {
            polled.faults.push(PointFault {
                point: point.name.clone(),
                reason: DecodeError::NotModbus.to_string(),
            });
            continue;
        };
        let count = data_type.registers();
        let request = async {
            match point.table.unwrap_or_default() {
                RegisterTable::Holding => ctx.read_holding_registers(register, count).await,
                RegisterTable::Input => ctx.read_input_registers(register, count).await,
            }
        };
        let answer = timeout(limit, request)
            .await
            .map_err(|_| LinkError::Timeout(device.timeout_ms))?
            .map_err(|e| LinkError::Transport(e.to_string()))?;
        match answer {
            Ok(registers) => match decode(point, &registers) {
                Ok(v) => polled.values.push((point.name.clone(), v)),
                Err(e) => polled.faults.push(PointFault {
                    point: point.name.clone(),
                    reason: e.to_string(),
                }),
            },
            Err(code) => polled.faults.push(PointFault {
                point: point.name.clone(),
                reason: exception_text(code),
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
