//! The gateway's account on the broker and TLS to it: `[mqtt]`'s `username`, `password`,
//! `password_file` and the `[mqtt.tls]` table.
//!
//! What the settings mean and how their files are read is `shouwang-broker-auth`, shared
//! with the console; this file only names them as the config file does, so every problem is
//! reported with its field (`mqtt.tls.ca_file: cannot read ...`). [`load`] runs while the
//! config is loaded; the broker link then applies the result ([`BrokerAuth::apply`]) and
//! never reads a file itself.
//!
//! ```toml
//! [mqtt]
//! host = "mqtt.riverside.example"
//! port = 8883
//! username = "gw-b1"                             # this gateway's id
//! password_file = "/etc/shouwang/mqtt-password"
//!
//! [mqtt.tls]
//! ca_file = "/etc/shouwang/ca.crt"
//! cert_file = "/etc/shouwang/gw-b1.crt"          # when the broker asks for client certificates
//! key_file = "/etc/shouwang/gw-b1.key"
//! ```
//!
//! `docs/mosquitto/README.md` sets up the broker side.

use std::path::PathBuf;

use serde::Deserialize;
use shouwang_broker_auth::{AuthSettings, BrokerAuth, Setting, TlsFiles};

use crate::config::MqttSection;

/// `[mqtt.tls]`: TLS to the broker, with rustls (ring). Paths are read as given; relative
/// ones from the working directory, so a service should use absolute paths.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttTls {
    /// PEM file with the CA certificate(s) that signed the broker's certificate. Only these
    /// are trusted, not the system's roots. Required.
    pub ca_file: PathBuf,
    /// PEM file with this gateway's certificate (then any intermediates), for a broker with
    /// `require_certificate true`. Give `key_file` with it, or neither.
    pub cert_file: Option<PathBuf>,
    /// PEM file with the private key of `cert_file` (PKCS#8, PKCS#1 or SEC1). Keep it
    /// readable only by the gateway's user.
    pub key_file: Option<PathBuf>,
    /// The name the broker's certificate must carry. Default: `[mqtt] host`. Set it when
    /// the gateway connects by an address the certificate does not name (e.g. `host =
    /// "10.0.0.5"`, certificate for `mqtt.riverside.example`); the certificate is still
    /// fully verified, against this name. (TLS SNI still carries `host`, and none is sent
    /// for an address: a broker that picks its certificate by SNI needs `host` to be its name.)
    pub server_name: Option<String>,
}

/// The config file's name for each setting, under `section` (`mqtt`, `mqtt_sensors`).
fn field(section: &str, setting: Setting) -> String {
    let name = match setting {
        Setting::Username => "username",
        Setting::Password => "password",
        Setting::PasswordFile => "password_file",
        Setting::CaFile => "tls.ca_file",
        Setting::CertFile => "tls.cert_file",
        Setting::KeyFile => "tls.key_file",
        Setting::ServerName => "tls.server_name",
    };
    format!("{section}.{name}")
}

/// Read and check `[mqtt]`'s credentials and `[mqtt.tls]`: the loaded result, or every
/// problem as (field, message).
pub fn load(mqtt: &MqttSection) -> Result<BrokerAuth, Vec<(String, String)>> {
    load_section(
        "mqtt",
        mqtt.username.clone(),
        mqtt.password.clone(),
        mqtt.password_file.clone(),
        mqtt.tls.as_ref(),
    )
}

/// The same for any section with these keys (`[mqtt_sensors]` when it names a broker of
/// its own): problems are named under `section`.
pub fn load_section(
    section: &str,
    username: Option<String>,
    password: Option<shouwang_broker_auth::Password>,
    password_file: Option<PathBuf>,
    tls: Option<&MqttTls>,
) -> Result<BrokerAuth, Vec<(String, String)>> {
    let settings = AuthSettings {
        username,
        password,
        password_file,
        tls: tls.map(|t| TlsFiles {
            ca_file: t.ca_file.clone(),
            cert_file: t.cert_file.clone(),
            key_file: t.key_file.clone(),
            server_name: t.server_name.clone(),
        }),
    };
    BrokerAuth::load(&settings).map_err(|problems| {
        problems
            .into_iter()
            .map(|p| (field(section, p.setting), p.message))
            .collect()
    })
}
