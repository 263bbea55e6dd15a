//! Credentials and TLS for the MQTT link to the broker, shared by `shouwang-gateway` and
//! `shouwang-console`.
//!
//! The two binaries declare the same things in different places (the gateway in its TOML
//! `[mqtt]` section, the console on its command line), so each names the settings its own
//! way; what a setting means, how its files are read and what is wrong with it is decided
//! here once. [`BrokerAuth::load`] reads every file and reports every problem at once, each
//! tagged with the [`Setting`] that holds it; the caller turns the tag into its own field or
//! flag name. What comes out is ready: [`BrokerAuth::apply`] cannot fail, so a link that
//! passed its checks never falls back to plain text or to no credentials.
//!
//! TLS is rustls with the **ring** provider only (never aws-lc, never OpenSSL), so the gateway
//! cross-compiles to arm with Debian's cross gcc. The `ClientConfig` is built here and handed
//! to rumqttc whole; rumqttc's own PEM handling is not used.
//!
//! Secrets: the password is a [`Password`], whose `Debug` prints `<redacted>`; nothing here
//! logs.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rumqttc::{MqttOptions, TlsConfiguration, Transport};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// A broker password. Shown as `<redacted>` by `Debug`, so a config that holds one can be
/// printed.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct Password(String);

impl Password {
    pub fn new(password: impl Into<String>) -> Password {
        Password(password.into())
    }

    /// The password itself, for the CONNECT packet. Do not log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Read a password file: the whole file, less one trailing line ending, so that
    /// `echo secret > file` works.
    fn from_file(path: &Path) -> Result<Password, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let password = text
            .strip_suffix("\r\n")
            .or_else(|| text.strip_suffix('\n'))
            .unwrap_or(&text);
        Ok(Password(password.to_string()))
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// What a binary declared about the broker link, before any file is read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthSettings {
    /// The account on the broker. With `docs/mosquitto/acl`, a gateway's account is its id
    /// and the console's is `console`.
    pub username: Option<String>,
    /// The password, given inline.
    pub password: Option<Password>,
    /// A file that holds the password (kept out of the config and of the process list).
    pub password_file: Option<PathBuf>,
    /// TLS to the broker. Absent: plain TCP.
    pub tls: Option<TlsFiles>,
}

/// Where the TLS material is. Paths are read as given (relative ones from the working
/// directory).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM file of the CA certificate(s) the broker's certificate must chain to. Only these
    /// are trusted: the system's roots are not.
    pub ca_file: PathBuf,
    /// PEM file of this client's certificate (and any intermediates after it), for brokers
    /// that ask for one (`require_certificate true`). Needs `key_file`.
    pub cert_file: Option<PathBuf>,
    /// PEM file of the private key of `cert_file` (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// The name the broker's certificate must carry, when it is not the host connected to
    /// (e.g. the gateway connects to `10.0.0.5` and the certificate names
    /// `mqtt.riverside.example`).
    pub server_name: Option<String>,
}

/// Which setting a [`Problem`] is in. Each binary has its own name for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    Username,
    Password,
    PasswordFile,
    CaFile,
    CertFile,
    KeyFile,
    ServerName,
}

/// One thing wrong with the broker link's settings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Problem {
    pub setting: Setting,
    pub message: String,
}

/// Collects problems while loading.
#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, setting: Setting, message: impl Into<String>) {
        self.0.push(Problem {
            setting,
            message: message.into(),
        });
    }
}

/// TLS to the broker, loaded and ready: a rustls client config on the ring provider.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
    /// What it was loaded from: for `Debug` and equality (two loads of the same files are
    /// the same settings).
    from: TlsFiles,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("from", &self.from)
            .finish()
    }
}

impl PartialEq for ClientTls {
    fn eq(&self, other: &Self) -> bool {
        self.from == other.from
    }
}

impl ClientTls {
    /// Read the CA, the client certificate and key, and build the rustls config. Every
    /// problem is reported, not only the first.
    pub fn load(files: &TlsFiles) -> Result<ClientTls, Vec<Problem>> {
        let mut p = Problems::default();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = ca_roots(&files.ca_file, &mut p);
        let identity = client_identity(files, &mut p);
        let server_name = match &files.server_name {
            None => None,
            Some(name) => match ServerName::try_from(name.clone()) {
                Ok(n) => Some(n),
                Err(e) => {
                    p.add(
                        Setting::ServerName,
                        format!("{name:?} is not a DNS name or an IP address: {e}"),
                    );
                    None
                }
            },
        };
        let (Some(roots), Some(identity)) = (roots, identity) else {
            return Err(p.0);
        };
        if !p.0.is_empty() {
            return Err(p.0);
        }
        match build(provider, roots, identity, server_name) {
            Ok(config) => Ok(ClientTls {
                config: Arc::new(config),
                from: files.clone(),
            }),
            Err((setting, message)) => {
                p.add(setting, message);
                Err(p.0)
            }
        }
    }

    /// The rustls config rumqttc will use.
    pub fn config(&self) -> Arc<ClientConfig> {
        self.config.clone()
    }
}

/// The CA file as a root store; `None` after recording why not.
fn ca_roots(path: &Path, p: &mut Problems) -> Option<RootCertStore> {
    let certs = certificates(path, Setting::CaFile, p)?;
    let mut roots = RootCertStore::empty();
    for (i, cert) in certs.into_iter().enumerate() {
        if let Err(e) = roots.add(cert) {
            p.add(
                Setting::CaFile,
                format!(
                    "certificate {} in {} is not a usable CA certificate: {e}",
                    i + 1,
                    path.display()
                ),
            );
            return None;
        }
    }
    Some(roots)
}

/// A client certificate chain and its private key.
type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// The client certificate chain and key, if any: `Some(None)` for none, `None` after
/// recording a problem.
fn client_identity(files: &TlsFiles, p: &mut Problems) -> Option<Option<Identity>> {
    match (&files.cert_file, &files.key_file) {
        (None, None) => Some(None),
        (Some(_), None) => {
            p.add(
                Setting::KeyFile,
                "missing: a client certificate needs its private key",
            );
            None
        }
        (None, Some(_)) => {
            p.add(
                Setting::CertFile,
                "missing: a private key needs its client certificate",
            );
            None
        }
        (Some(cert), Some(key)) => {
            let chain = certificates(cert, Setting::CertFile, p);
            let key = private_key(key, p);
            Some(Some((chain?, key?)))
        }
    }
}

/// Every certificate in a PEM file; at least one.
fn certificates(
    path: &Path,
    setting: Setting,
    p: &mut Problems,
) -> Option<Vec<CertificateDer<'static>>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            p.add(setting, format!("cannot read {}: {e}", path.display()));
            return None;
        }
    };
    match CertificateDer::pem_slice_iter(&bytes).collect::<Result<Vec<_>, _>>() {
        Ok(certs) if certs.is_empty() => {
            p.add(
                setting,
                format!(
                    "no certificate in {} (expected PEM: -----BEGIN CERTIFICATE-----)",
                    path.display()
                ),
            );
            None
        }
        Ok(certs) => Some(certs),
        Err(e) => {
            p.add(setting, format!("{} is not valid PEM: {e}", path.display()));
            None
        }
    }
}

/// The private key in a PEM file.
fn private_key(path: &Path, p: &mut Problems) -> Option<PrivateKeyDer<'static>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            p.add(
                Setting::KeyFile,
                format!("cannot read {}: {e}", path.display()),
            );
            return None;
        }
    };
    match PrivateKeyDer::from_pem_slice(&bytes) {
        Ok(key) => Some(key),
        Err(e) => {
            p.add(
                Setting::KeyFile,
                format!(
                    "no private key in {} (expected PEM: PKCS#8, PKCS#1 or SEC1): {e}",
                    path.display()
                ),
            );
            None
        }
    }
}

fn build(
    provider: Arc<CryptoProvider>,
    roots: RootCertStore,
    identity: Option<Identity>,
    server_name: Option<ServerName<'static>>,
) -> Result<ClientConfig, (Setting, String)> {
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        // Cannot happen with ring's default provider, which has TLS 1.2 and 1.3 suites.
        .map_err(|e| (Setting::CaFile, format!("no usable TLS version: {e}")))?;
    let builder = match server_name {
        None => builder.with_root_certificates(roots),
        Some(name) => {
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| (Setting::CaFile, format!("cannot verify with it: {e}")))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NamedServer { name, webpki }))
        }
    };
    match identity {
        None => Ok(builder.with_no_client_auth()),
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).map_err(|e| {
            (
                Setting::KeyFile,
                format!("cannot be used with the client certificate: {e}"),
            )
        }),
    }
}

/// Full WebPKI verification of the broker's certificate, against `name` instead of the host
/// rumqttc connected to (rumqttc always verifies against the host it dialled). Nothing is
/// skipped: only the name checked is a different one.
#[derive(Debug)]
struct NamedServer {
    name: ServerName<'static>,
    webpki: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for NamedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _dialled: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.webpki
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// The broker link's credentials and TLS, loaded and checked. `Default` is what the link had
/// before this existed: no account, plain TCP.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BrokerAuth {
    pub username: Option<String>,
    pub password: Option<Password>,
    pub tls: Option<ClientTls>,
}

impl BrokerAuth {
    /// Check the settings and read every file they name; every problem at once.
    pub fn load(settings: &AuthSettings) -> Result<BrokerAuth, Vec<Problem>> {
        let mut p = Problems::default();
        if let Some(user) = &settings.username
            && user.is_empty()
        {
            p.add(
                Setting::Username,
                "must not be empty (leave it out instead)",
            );
        }
        let password = match (&settings.password, &settings.password_file) {
            (Some(_), Some(_)) => {
                p.add(
                    Setting::PasswordFile,
                    "give the password or a password file, not both",
                );
                None
            }
            (Some(pw), None) => Some(pw.clone()),
            (None, Some(path)) => match Password::from_file(path) {
                Ok(pw) => Some(pw),
                Err(message) => {
                    p.add(Setting::PasswordFile, message);
                    None
                }
            },
            (None, None) => None,
        };
        if let Some(pw) = &password {
            let setting = if settings.password.is_some() {
                Setting::Password
            } else {
                Setting::PasswordFile
            };
            if pw.expose().is_empty() {
                p.add(setting, "the password is empty");
            }
            if settings.username.is_none() {
                // MQTT 3.1.1 (3.1.2.9): no password without a user name.
                p.add(setting, "a password needs a user name");
            }
        }
        let tls = match &settings.tls {
            None => None,
            Some(files) => match ClientTls::load(files) {
                Ok(tls) => Some(tls),
                Err(problems) => {
                    p.0.extend(problems);
                    None
                }
            },
        };
        if p.0.is_empty() {
            Ok(BrokerAuth {
                username: settings.username.clone(),
                password,
                tls,
            })
        } else {
            Err(p.0)
        }
    }

    /// Put the credentials and the TLS transport on rumqttc's options. Host, port and every
    /// session setting are left as they are.
    pub fn apply(&self, options: &mut MqttOptions) {
        if let Some(user) = &self.username {
            let password = self.password.as_ref().map(Password::expose).unwrap_or("");
            // An empty password is left out of CONNECT by rumqttc.
            options.set_credentials(user.clone(), password);
        }
        if let Some(tls) = &self.tls {
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                tls.config(),
            )));
        }
    }
}

/// A client and event loop on `options`, with Nagle's algorithm off. rumqttc leaves it on,
/// which holds a small publish (an alarm event, a receipt, a PUBACK) back until the previous
/// one is acknowledged: 20-30 ms more at the p99 in the sensor-load harness at 20,000
/// msg/s, ~40 ms (the delayed-ACK timer) when traffic is sparse.
pub fn connect_without_delay(
    options: rumqttc::MqttOptions,
    capacity: usize,
) -> (rumqttc::AsyncClient, rumqttc::EventLoop) {
    let (client, mut events) = rumqttc::AsyncClient::new(options, capacity);
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    events.set_network_options(network);
    (client, events)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// A CA and a client certificate it signed, as PEM files in a temp dir.
    struct Pki {
        dir: tempfile::TempDir,
    }

    impl Pki {
        fn new() -> Pki {
            let dir = tempfile::tempdir().unwrap();
            let ca_key = rcgen::KeyPair::generate().unwrap();
            let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let ca_cert = ca.self_signed(&ca_key).unwrap();
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(vec!["gw-a".to_string()])
                .unwrap()
                .signed_by(&key, &ca_cert, &ca_key)
                .unwrap();
            let other_key = rcgen::KeyPair::generate().unwrap();
            std::fs::write(dir.path().join("ca.crt"), ca_cert.pem()).unwrap();
            std::fs::write(dir.path().join("gw-a.crt"), cert.pem()).unwrap();
            std::fs::write(dir.path().join("gw-a.key"), key.serialize_pem()).unwrap();
            std::fs::write(dir.path().join("other.key"), other_key.serialize_pem()).unwrap();
            std::fs::write(dir.path().join("password"), "s3cret\n").unwrap();
            Pki { dir }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        fn files(&self) -> TlsFiles {
            TlsFiles {
                ca_file: self.path("ca.crt"),
                cert_file: Some(self.path("gw-a.crt")),
                key_file: Some(self.path("gw-a.key")),
                server_name: None,
            }
        }
    }

    fn settings_of(problems: &[Problem]) -> Vec<Setting> {
        problems.iter().map(|p| p.setting).collect()
    }

    #[test]
    fn a_ca_and_a_client_certificate_load_and_become_the_tls_transport() {
        let pki = Pki::new();
        let auth = BrokerAuth::load(&AuthSettings {
            username: Some("gw-a".into()),
            password_file: Some(pki.path("password")),
            tls: Some(pki.files()),
            ..AuthSettings::default()
        })
        .unwrap();
        assert_eq!(auth.password.as_ref().unwrap().expose(), "s3cret");
        let mut options = MqttOptions::new("gw-a", "127.0.0.1", 8883);
        auth.apply(&mut options);
        let login = options.credentials().unwrap();
        assert_eq!(
            (login.username.as_str(), login.password.as_str()),
            ("gw-a", "s3cret")
        );
        assert!(matches!(
            options.transport(),
            Transport::Tls(TlsConfiguration::Rustls(_))
        ));
    }

    #[test]
    fn the_password_never_shows_in_debug_output() {
        let pki = Pki::new();
        let auth = BrokerAuth::load(&AuthSettings {
            username: Some("gw-a".into()),
            password: Some(Password::new("hunter2")),
            tls: Some(pki.files()),
            ..AuthSettings::default()
        })
        .unwrap();
        let text = format!("{auth:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
    }

    #[test]
    fn every_problem_is_reported_at_once_with_its_setting() {
        let pki = Pki::new();
        std::fs::write(pki.path("empty.pem"), "not a certificate\n").unwrap();
        let problems = BrokerAuth::load(&AuthSettings {
            username: None,
            password: Some(Password::new("x")),
            password_file: Some(pki.path("password")),
            tls: Some(TlsFiles {
                ca_file: pki.path("missing-ca.crt"),
                cert_file: Some(pki.path("empty.pem")),
                key_file: None,
                server_name: Some("not a name!".into()),
            }),
        })
        .unwrap_err();
        let settings = settings_of(&problems);
        assert!(settings.contains(&Setting::PasswordFile), "{problems:?}");
        assert!(settings.contains(&Setting::CaFile), "{problems:?}");
        assert!(settings.contains(&Setting::KeyFile), "{problems:?}");
        assert!(settings.contains(&Setting::ServerName), "{problems:?}");
        let ca = problems
            .iter()
            .find(|p| p.setting == Setting::CaFile)
            .unwrap();
        assert!(ca.message.starts_with("cannot read "), "{ca:?}");
    }

    #[test]
    fn a_file_without_a_certificate_is_not_a_ca() {
        let pki = Pki::new();
        let problems = ClientTls::load(&TlsFiles {
            ca_file: pki.path("gw-a.key"),
            ..TlsFiles::default()
        })
        .unwrap_err();
        assert_eq!(settings_of(&problems), [Setting::CaFile]);
        assert!(
            problems[0].message.contains("no certificate"),
            "{problems:?}"
        );
    }

    #[test]
    fn a_key_that_does_not_go_with_the_certificate_is_refused() {
        let pki = Pki::new();
        let problems = ClientTls::load(&TlsFiles {
            key_file: Some(pki.path("other.key")),
            ..pki.files()
        })
        .unwrap_err();
        assert_eq!(settings_of(&problems), [Setting::KeyFile], "{problems:?}");
    }

    #[test]
    fn a_key_without_a_certificate_names_the_missing_certificate() {
        let pki = Pki::new();
        let problems = ClientTls::load(&TlsFiles {
            cert_file: None,
            ..pki.files()
        })
        .unwrap_err();
        assert_eq!(settings_of(&problems), [Setting::CertFile]);
    }

    #[test]
    fn a_password_file_loses_only_its_last_line_ending() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, " two words \r\n").unwrap();
        assert_eq!(Password::from_file(&path).unwrap().expose(), " two words ");
    }
}
