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

/// The config file's name for each setting.
fn field(setting: Setting) -> &'static str {
    match setting {
        Setting::Username => "mqtt.username",
        Setting::Password => "mqtt.password",
        Setting::PasswordFile => "mqtt.password_file",
        Setting::CaFile => "mqtt.tls.ca_file",
        Setting::CertFile => "mqtt.tls.cert_file",
        Setting::KeyFile => "mqtt.tls.key_file",
        Setting::ServerName => "mqtt.tls.server_name",
    }
}

/// Read and check `[mqtt]`'s credentials and `[mqtt.tls]`: the loaded result, or every
/// problem as (field, message).
pub fn load(mqtt: &MqttSection) -> Result<BrokerAuth, Vec<(String, String)>> {
    let settings = AuthSettings {
        username: mqtt.username.clone(),
        password: mqtt.password.clone(),
        password_file: mqtt.password_file.clone(),
        tls: mqtt.tls.as_ref().map(|t| TlsFiles {
            ca_file: t.ca_file.clone(),
            cert_file: t.cert_file.clone(),
            key_file: t.key_file.clone(),
            server_name: t.server_name.clone(),
        }),
    };
    BrokerAuth::load(&settings).map_err(|problems| {
        problems
            .into_iter()
            .map(|p| (field(p.setting).to_string(), p.message))
            .collect()
    })
}
