//! Shouwang's hardware-in-the-loop kit: a Modbus device simulator, the real servers that
//! tests run against (mosquitto, VictoriaMetrics, InfluxDB 1.x), and the end-to-end tests
//! under `tests/`.

pub mod rig;
pub mod servers;
pub mod sim;
