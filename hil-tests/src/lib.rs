//! Shouwang's hardware-in-the-loop kit: a Modbus device simulator, the real servers that
//! tests run against (mosquitto, VictoriaMetrics, InfluxDB 1.x), a headless Chromium to look
//! at the console with, a proxy that cuts and black-holes a link, and the end-to-end tests
//! under `tests/`.

pub mod browser;
pub mod measure;
pub mod proxy;
pub mod rig;
pub mod servers;
pub mod sim;
pub mod sim_bus;
