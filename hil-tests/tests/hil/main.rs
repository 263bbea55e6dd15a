//! Shouwang's hardware-in-the-loop tests, in one test binary so the heavy dependencies are
//! linked once:
//! - `sim`: the simulated Modbus devices, checked against tokio-modbus and the third-party
//!   mbpoll;
//! - `e2e`: simulated devices -> the gateway binary -> real mosquitto -> the console binary,
//!   VictoriaMetrics and InfluxDB 1.x, with broker restarts, crashes and network cuts;
//! - `delivery`: the delivery path on a bad day (SIGKILL, a broker that forgot, hostile
//!   clients);
//! - `network`: the link to the broker cut or black-holed (through a proxy) and the broker
//!   killed in an alarm storm, with and without persistence; a harness that measures how
//!   fast a backlog drains;
//! - `browser`: the alarm board in headless Chromium;
//! - `auth`: the broker set up as `docs/mosquitto/` says (accounts, ACL, TLS) against the
//!   gateway binary and clients that try what the ACL forbids;
//! - `mqtt_sensors`: sensors that publish JSON to mosquitto: an alarm raised and cleared
//!   from their messages, garbage counted and ignored, silence raising comm_lost;
//! - `plan`: the read planner through the gateway binary: a device with a hole in its
//!   register map read in blocks, the hole one point's fault, requests counted per poll;
//! - `hostile_modbus`: a hand-written Modbus TCP peer that answers late, with garbage,
//!   truncated frames, wrong transaction or unit ids, an absurd length, closes mid-frame or
//!   stays silent: it costs only its own device, never a wrong value;
//! - `readings`: the readings queue on disk against a store that goes away, a gateway
//!   killed meanwhile, and a queue too small for the outage.
//!
//! Run one group with e.g. `cargo test -p shouwang-hil-tests --test hil -- e2e::`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod auth;
mod browser;
mod delivery;
mod e2e;
mod hostile_modbus;
mod mqtt_sensors;
mod network;
mod plan;
mod readings;
mod restart;
mod sim;
