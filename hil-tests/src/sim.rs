//! A simulated Modbus TCP field device: one register bank and two bit banks (coils,
//! discrete inputs) served on its own TCP port.
//!
//! Tests and the demo use [`SimDevice`] in place of a smoke detector, leak probe, pressure
//! transmitter or door contact. The test (or the demo scenario) sets registers through the
//! handle; the gateway polls them over real Modbus TCP; mbpoll or any other master can read
//! and write them too.
//!
//! What the device answers:
//! - FC03 (read holding registers) and FC04 (read input registers) both read the one bank;
//!   a register nobody set reads 0.
//! - FC01 (read coils) and FC02 (read discrete inputs) read two bit banks of their own
//!   ([`SimDevice::set_coil`], [`SimDevice::set_discrete_input`]); a bit nobody set reads
//!   off. The answer packs the bits asked for into whole bytes, padded with zeros.
//! - FC06 (write single register) and FC16 (write multiple registers) write into the bank.
//! - Any unit id is answered, and the answer echoes it.
//! - Every other function code (coil writes included) gets the exception IllegalFunction; a
//!   quantity outside 1..=125 (register reads), 1..=2000 (bit reads) or 1..=123 (FC16) gets
//!   IllegalDataValue; an address at or beyond [`SimDevice::set_register_count`] gets
//!   IllegalDataAddress (the count and [`SimDevice::refuse_registers`] apply to every
//!   table: the map's holes are at the same addresses in each). Bad requests never panic and
//!   never drop the connection (a frame that cannot even be decoded does close it, as a real
//!   device would reset the link).
//!
//! Failure modes a test can switch on: [`SimDevice::set_responding`] (the device hangs: it
//! keeps accepting connections and reading requests but never answers),
//! [`SimDevice::fail_with`] (every request gets a given exception, e.g. a device in
//! ServerDeviceFailure), [`SimDevice::refuse_registers`] (registers that do not exist in the
//! middle of the map: a read or write touching one gets IllegalDataAddress, as a device whose
//! register map has holes) and [`SimDevice::stop`] (the port closes: connection refused).
//!
//! 32-bit values use big-endian word order (high word at the lower register), the order most
//! field devices and the gateway's `u32`/`i32`/`f32` points use.

use std::future::{Ready, ready};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_modbus::server::tcp::{Server, accept_tcp_connection};
use tokio_modbus::{ExceptionCode, Request, Response};

/// Every register address a Modbus request can name.
const ADDRESS_SPACE: usize = 1 << 16;
/// Largest quantity of one read (FC03/FC04), from the Modbus application protocol spec.
const MAX_READ_QUANTITY: u16 = 125;
/// Largest quantity of one read of bits (FC01/FC02), from the same spec.
const MAX_READ_BITS: u16 = 2000;
/// Largest quantity of one FC16 write.
const MAX_WRITE_QUANTITY: usize = 123;

/// One simulated Modbus TCP device: a register bank served on its own TCP port (any unit id).
///
/// Cheap to clone; all clones control the same device. The server stops when the last clone
/// is dropped, or at [`SimDevice::stop`].
#[derive(Clone)]
pub struct SimDevice {
    /// The registers and switches, shared with every connection's service.
    bank: Arc<RegisterBank>,
    /// Aborts the accept loop (and with it every connection) when the last handle drops.
    server: Arc<ServerTask>,
    /// Where the device listens (the port the OS picked when started on port 0).
    local_addr: SocketAddr,
}

impl std::fmt::Debug for SimDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SimDevice on {}", self.local_addr)
    }
}

impl SimDevice {
    /// Listen on `addr` (port 0: the OS picks one, see [`SimDevice::local_addr`]) and serve
    /// until the last handle drops. Must be called inside a tokio runtime.
    pub async fn start(addr: SocketAddr) -> anyhow::Result<SimDevice> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("simulated device: binding {addr}"))?;
        let local_addr = listener.local_addr()?;
        let bank = Arc::new(RegisterBank::new());
        let service = Arc::clone(&bank);
        let task = tokio::spawn(async move {
            let server = Server::new(listener);
            let new_service =
                move |_peer: SocketAddr| Ok(Some(ModbusService(Arc::clone(&service))));
            let on_connected = move |stream, peer| {
                let accepted = accept_tcp_connection(stream, peer, &new_service);
                async move { accepted }
            };
            let on_process_error = move |err: std::io::Error| {
                tracing::debug!(device = %local_addr, error = %err, "simulated device: connection ended");
            };
            if let Err(err) = server.serve(&on_connected, on_process_error).await {
                tracing::warn!(device = %local_addr, error = %err, "simulated device: accept loop stopped");
            }
        });
        tracing::debug!(device = %local_addr, "simulated device listening");
        Ok(SimDevice {
            bank,
            server: Arc::new(ServerTask(task.abort_handle())),
            local_addr,
        })
    }

    /// A device whose bank `server` serves (a [`crate::sim_bus::SimBus`]); it has no
    /// address of its own.
    pub(crate) fn on_bus(bank: Arc<RegisterBank>, server: Arc<ServerTask>) -> SimDevice {
        SimDevice {
            bank,
            server,
            local_addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn set_u16(&self, register: u16, value: u16) {
        self.bank.words()[usize::from(register)] = value;
    }

    pub fn set_i16(&self, register: u16, value: i16) {
        self.set_u16(register, u16::from_be_bytes(value.to_be_bytes()));
    }

    /// Two registers, high word at `register`. `register` 65535 has no room for the low word:
    /// that is a bug in the test, and panics.
    pub fn set_u32(&self, register: u16, value: u32) {
        let hi = (value >> 16) as u16;
        let lo = (value & 0xFFFF) as u16;
        let mut words = self.bank.words();
        let at = usize::from(register);
        assert!(
            at + 1 < ADDRESS_SPACE,
            "set_u32 at register {register}: no room for the low word"
        );
        words[at] = hi;
        words[at + 1] = lo;
    }

    /// Same word order as [`SimDevice::set_u32`]: high word of the IEEE 754 bits first.
    pub fn set_f32(&self, register: u16, value: f32) {
        self.set_u32(register, value.to_bits());
    }

    pub fn get_u16(&self, register: u16) -> u16 {
        self.bank.words()[usize::from(register)]
    }

    /// The two registers at `register` read as [`SimDevice::set_u32`] wrote them.
    pub fn get_u32(&self, register: u16) -> u32 {
        let words = self.bank.words();
        let at = usize::from(register);
        let lo = words.get(at + 1).copied().unwrap_or(0);
        (u32::from(words[at]) << 16) | u32::from(lo)
    }

    pub fn get_f32(&self, register: u16) -> f32 {
        f32::from_bits(self.get_u32(register))
    }

    /// Coil `address` (read with FC01) on or off.
    pub fn set_coil(&self, address: u16, on: bool) {
        lock(&self.bank.coils)[usize::from(address)] = on;
    }

    /// Discrete input `address` (read with FC02) on or off.
    pub fn set_discrete_input(&self, address: u16, on: bool) {
        lock(&self.bank.discrete_inputs)[usize::from(address)] = on;
    }

    pub fn get_coil(&self, address: u16) -> bool {
        lock(&self.bank.coils)[usize::from(address)]
    }

    pub fn get_discrete_input(&self, address: u16) -> bool {
        lock(&self.bank.discrete_inputs)[usize::from(address)]
    }

    /// false: keeps accepting TCP connections and reading requests but never answers (a
    /// device that hangs); true: answers again. Requests that came in while it hung are
    /// never answered, even later.
    pub fn set_responding(&self, on: bool) {
        self.bank.responding.store(on, Ordering::SeqCst);
    }

    /// Some(code): every request from now on is answered with this exception (e.g.
    /// `ExceptionCode::ServerDeviceFailure`, or `ServerDeviceBusy`); None: normal again.
    pub fn fail_with(&self, exception: Option<ExceptionCode>) {
        *self
            .bank
            .forced_exception
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = exception;
    }

    /// Registers `count` and above do not exist: a read or write touching them gets
    /// IllegalDataAddress. The default, 65536, is the whole address space.
    pub fn set_register_count(&self, count: u32) {
        self.bank
            .register_count
            .store(count.min(ADDRESS_SPACE as u32), Ordering::SeqCst);
    }

    /// Registers that do not exist although lower and higher ones do: a read or write that
    /// touches any of them gets IllegalDataAddress, as from a device whose map has holes.
    /// Replaces the previous set; empty: every register below the register count exists.
    pub fn refuse_registers(&self, registers: &[u16]) {
        *self.bank.refused.lock().unwrap_or_else(|p| p.into_inner()) =
            registers.iter().copied().collect();
    }

    /// Make holding register `register` count the requests: before each request is
    /// answered it is set to that request's number (1 for the first, wrapping at 65536),
    /// so every poll reads a value of its own and a test can tell which polls reached a
    /// store. `None` stops counting.
    pub fn count_requests_in(&self, register: Option<u16>) {
        self.bank
            .counter
            .store(register.map_or(NO_COUNTER, u32::from), Ordering::SeqCst);
    }

    /// Requests answered so far, with data or with an exception. A request that was not
    /// answered because the device was not responding does not count.
    pub fn requests_served(&self) -> u64 {
        self.bank.served.load(Ordering::SeqCst)
    }

    /// Close the port and every open connection, as a device that lost power: masters now
    /// get "connection refused". The registers stay readable through this handle. The
    /// listener closes on the runtime's next turn, not synchronously.
    pub fn stop(&self) {
        self.server.0.abort();
    }
}

/// The accept loop's task; aborted when the last [`SimDevice`] handle drops.
pub(crate) struct ServerTask(pub(crate) tokio::task::AbortHandle);

impl Drop for ServerTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The device's state, shared by the handles and the connection services.
pub(crate) struct RegisterBank {
    /// All 65536 registers; FC03 and FC04 read the same words.
    words: Mutex<Vec<u16>>,
    /// All 65536 coils (FC01).
    coils: Mutex<Vec<bool>>,
    /// All 65536 discrete inputs (FC02).
    discrete_inputs: Mutex<Vec<bool>>,
    /// Registers at this address and above do not exist.
    register_count: AtomicU32,
    /// Registers below `register_count` that do not exist either.
    refused: Mutex<std::collections::BTreeSet<u16>>,
    /// false: the device swallows requests without answering.
    responding: AtomicBool,
    /// Some: every request gets this exception.
    forced_exception: Mutex<Option<ExceptionCode>>,
    /// Requests answered, for tests that check the gateway really polled.
    served: AtomicU64,
    /// The register that counts requests ([`SimDevice::count_requests_in`]), or
    /// [`NO_COUNTER`].
    counter: AtomicU32,
}

/// No register counts requests.
const NO_COUNTER: u32 = u32::MAX;

impl RegisterBank {
    pub(crate) fn new() -> Self {
        RegisterBank {
            words: Mutex::new(vec![0; ADDRESS_SPACE]),
            coils: Mutex::new(vec![false; ADDRESS_SPACE]),
            discrete_inputs: Mutex::new(vec![false; ADDRESS_SPACE]),
            register_count: AtomicU32::new(ADDRESS_SPACE as u32),
            refused: Mutex::new(std::collections::BTreeSet::new()),
            responding: AtomicBool::new(true),
            forced_exception: Mutex::new(None),
            served: AtomicU64::new(0),
            counter: AtomicU32::new(NO_COUNTER),
        }
    }

    /// The registers. A poisoned lock still holds valid words (a panic mid-write leaves at
    /// worst a torn 32-bit value), so it is used anyway.
    fn words(&self) -> MutexGuard<'_, Vec<u16>> {
        self.words.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Check that `quantity` registers from `address` exist; the end as an index.
    fn range(
        &self,
        address: u16,
        quantity: usize,
    ) -> Result<std::ops::Range<usize>, ExceptionCode> {
        let start = usize::from(address);
        let end = start + quantity;
        let count = self.register_count.load(Ordering::SeqCst) as usize;
        if end > count {
            return Err(ExceptionCode::IllegalDataAddress);
        }
        let refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        if refused
            .range(address..)
            .next()
            .is_some_and(|&r| usize::from(r) < end)
        {
            return Err(ExceptionCode::IllegalDataAddress);
        }
        Ok(start..end)
    }

    fn read(&self, address: u16, quantity: u16) -> Result<Vec<u16>, ExceptionCode> {
        if quantity == 0 || quantity > MAX_READ_QUANTITY {
            return Err(ExceptionCode::IllegalDataValue);
        }
        let range = self.range(address, usize::from(quantity))?;
        Ok(self.words()[range].to_vec())
    }

    /// `quantity` bits of `bank` from `address`. tokio-modbus's server packs them into bytes
    /// (padding the last with zeros).
    fn read_bits(
        &self,
        bank: &Mutex<Vec<bool>>,
        address: u16,
        quantity: u16,
    ) -> Result<Vec<bool>, ExceptionCode> {
        if quantity == 0 || quantity > MAX_READ_BITS {
            return Err(ExceptionCode::IllegalDataValue);
        }
        let range = self.range(address, usize::from(quantity))?;
        Ok(lock(bank)[range].to_vec())
    }

    fn write(&self, address: u16, values: &[u16]) -> Result<(), ExceptionCode> {
        if values.is_empty() || values.len() > MAX_WRITE_QUANTITY {
            return Err(ExceptionCode::IllegalDataValue);
        }
        let range = self.range(address, values.len())?;
        self.words()[range].copy_from_slice(values);
        Ok(())
    }

    /// One request in, the answer out (None: stay silent).
    pub(crate) fn answer(&self, request: Request<'_>) -> Option<Result<Response, ExceptionCode>> {
        if !self.responding.load(Ordering::SeqCst) {
            return None;
        }
        if let Ok(register) = usize::try_from(self.counter.load(Ordering::SeqCst))
            && register < ADDRESS_SPACE
        {
            let number = self.served.load(Ordering::SeqCst).wrapping_add(1);
            self.words()[register] = number as u16;
        }
        let forced = *self
            .forced_exception
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let answer = match (forced, request) {
            (Some(exception), _) => Err(exception),
            (None, Request::ReadHoldingRegisters(address, quantity)) => self
                .read(address, quantity)
                .map(Response::ReadHoldingRegisters),
            (None, Request::ReadInputRegisters(address, quantity)) => self
                .read(address, quantity)
                .map(Response::ReadInputRegisters),
            (None, Request::ReadCoils(address, quantity)) => self
                .read_bits(&self.coils, address, quantity)
                .map(Response::ReadCoils),
            (None, Request::ReadDiscreteInputs(address, quantity)) => self
                .read_bits(&self.discrete_inputs, address, quantity)
                .map(Response::ReadDiscreteInputs),
            (None, Request::WriteSingleRegister(address, value)) => self
                .write(address, &[value])
                .map(|()| Response::WriteSingleRegister(address, value)),
            (None, Request::WriteMultipleRegisters(address, values)) => {
                // The codec checked that the byte count matches, so the length fits a u16.
                let quantity = u16::try_from(values.len()).unwrap_or(u16::MAX);
                self.write(address, &values)
                    .map(|()| Response::WriteMultipleRegisters(address, quantity))
            }
            (None, _) => Err(ExceptionCode::IllegalFunction),
        };
        self.served.fetch_add(1, Ordering::SeqCst);
        Some(answer)
    }
}

/// A bit bank. A poisoned lock still holds valid bits (a single bool write cannot tear).
fn lock(bank: &Mutex<Vec<bool>>) -> MutexGuard<'_, Vec<bool>> {
    bank.lock().unwrap_or_else(|p| p.into_inner())
}

/// The tokio-modbus service of one connection: a view of the shared bank.
struct ModbusService(Arc<RegisterBank>);

impl tokio_modbus::server::Service for ModbusService {
    type Request = Request<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Ready<Result<Option<Response>, ExceptionCode>>;

    fn call(&self, request: Self::Request) -> Self::Future {
        ready(match self.0.answer(request) {
            None => Ok(None),
            Some(Ok(response)) => Ok(Some(response)),
            Some(Err(exception)) => Err(exception),
        })
    }
}
