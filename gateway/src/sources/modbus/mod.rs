//! Polling Modbus devices: TCP, RTU on serial lines, RTU over TCP.
//!
//! [`decode()`] is pure: registers in, a scaled value out. [`plan`] is pure too: a device's
//! points in, the fewest read requests ([`ReadPlan`]) out, split further when the device
//! refuses a block. [`schedule`] is pure: which device of a link to poll next, priorities,
//! spread and quarantine. [`rtu`] frames RTU and keeps its silences. [`link`] is the one
//! task per link that owns its connection, its timeouts and reconnects, and every device's
//! plan; it reports every poll, good or failed, as a [`PollOutcome`](super::PollOutcome) and decides nothing
//! about alarms.
//!
//! "The device answered with a Modbus exception" (it is there, but refuses that register)
//! is kept apart from "the link failed" (no answer, connection refused, timeout): only the
//! latter counts towards communication lost.

use std::time::Duration;

pub mod budget;
pub mod decode;
pub mod link;
pub mod plan;
pub mod rtu;
pub mod schedule;

pub use decode::{DecodeError, decode, read_request, words_of};
pub use link::{
    Connection, LinkKind, LinkSpec, WriteError, WriteQueue, Writers, links, read_device, run_link,
    serve_link,
};
pub use plan::{Block, PlanLimits, ProfilePlans, ReadPlan, SitePlan};

use super::{LinkError, PolledValues};
use crate::config::DeviceConfig;

/// The longest a device's turn on its link may take, for its link's stall watch:
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

/// Reads one Modbus TCP device at its own `address`, one poll at a time: its connection
/// (opened on the first poll, dropped after a failed one) and its [`ReadPlan`] (refined by
/// the device's refusals). For tests and tools; the gateway polls through [`run_link`].
pub struct DeviceReader {
    device: DeviceConfig,
    /// None until connected, and after a poll that failed as a whole.
    link: Option<Connection>,
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

    /// Read every point once (see [`read_device`]).
    pub async fn poll(&mut self) -> Result<PolledValues, LinkError> {
        let result = self.poll_once().await;
        if result.is_err() {
            // Start from a fresh connection next time: a half-dead socket can keep failing.
            self.link = None;
        }
        result
    }
}

impl DeviceReader {
    async fn poll_once(&mut self) -> Result<PolledValues, LinkError> {
        let conn = match &mut self.link {
            Some(c) => c,
            None => {
                let kind = LinkKind::Tcp {
                    address: self.device.address.clone().unwrap_or_default(),
                };
                let limit = Duration::from_millis(self.device.timeout_ms);
                let c = Connection::open(&kind, limit, Duration::ZERO, false).await?;
                self.link.insert(c)
            }
        };
        read_device(conn, &self.device, &mut self.plan).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

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
