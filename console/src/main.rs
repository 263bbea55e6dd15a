//! `shouwang-console`: the control-room console.
//!
//! Prints exactly one line to stdout, `shouwang-console listening on http://ADDR`, once the
//! HTTP listener is bound (scripts and tests parse it); logs go to stderr (`RUST_LOG`).

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use shouwang_broker_auth::{AuthSettings, BrokerAuth, Setting, TlsFiles};
use shouwang_console::{ConsoleConfig, start};

#[derive(Debug, Parser)]
#[command(
    name = "shouwang-console",
    version,
    about = "Shouwang control-room console"
)]
struct Args {
    /// Address for the HTTP API and the board; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:8750")]
    listen: SocketAddr,
    /// MQTT broker as HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:1883")]
    mqtt: String,
    /// SQLite database file; created if missing.
    #[arg(long, default_value = "console.db")]
    db: PathBuf,
    /// MQTT client id of the persistent session. Two consoles must not share one.
    #[arg(long, default_value = "shouwang-console")]
    client_id: String,
    /// Operator named on acknowledgements that name none.
    #[arg(long, default_value = "operator")]
    operator: String,
    /// The console's account on the broker (`console` with docs/mosquitto/acl).
    #[arg(long, value_name = "NAME")]
    mqtt_username: Option<String>,
    /// File holding the account's password (one trailing line ending is ignored). A file,
    /// not a flag, so the password stays out of the process list.
    #[arg(long, value_name = "FILE", requires = "mqtt_username")]
    mqtt_password_file: Option<PathBuf>,
    /// Connect with TLS, trusting only the CA certificate(s) in this PEM file.
    #[arg(long, value_name = "FILE")]
    mqtt_ca: Option<PathBuf>,
    /// The console's client certificate (PEM), for a broker with `require_certificate true`.
    #[arg(long, value_name = "FILE", requires_all = ["mqtt_ca", "mqtt_key"])]
    mqtt_cert: Option<PathBuf>,
    /// The private key of --mqtt-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE", requires = "mqtt_cert")]
    mqtt_key: Option<PathBuf>,
    /// The name the broker's certificate must carry, if not the host in --mqtt.
    #[arg(long, value_name = "NAME", requires = "mqtt_ca")]
    mqtt_server_name: Option<String>,
}

/// Read the --mqtt-* credential and TLS files; every problem, each with its flag.
fn broker_auth(args: &Args) -> anyhow::Result<BrokerAuth> {
    let settings = AuthSettings {
        username: args.mqtt_username.clone(),
        password: None,
        password_file: args.mqtt_password_file.clone(),
        tls: args.mqtt_ca.as_ref().map(|ca| TlsFiles {
            ca_file: ca.clone(),
            cert_file: args.mqtt_cert.clone(),
            key_file: args.mqtt_key.clone(),
            server_name: args.mqtt_server_name.clone(),
        }),
    };
    BrokerAuth::load(&settings).map_err(|problems| {
        let flag = |s| match s {
            Setting::Username => "--mqtt-username",
            Setting::Password | Setting::PasswordFile => "--mqtt-password-file",
            Setting::CaFile => "--mqtt-ca",
            Setting::CertFile => "--mqtt-cert",
            Setting::KeyFile => "--mqtt-key",
            Setting::ServerName => "--mqtt-server-name",
        };
        let lines: Vec<String> = problems
            .iter()
            .map(|p| format!("  {}: {}", flag(p.setting), p.message))
            .collect();
        anyhow::anyhow!("the broker settings have problems:\n{}", lines.join("\n"))
    })
}

/// Split `HOST:PORT`; the host may be a bracketed IPv6 address.
fn broker(s: &str) -> anyhow::Result<(String, u16)> {
    let (host, port) = s
        .rsplit_once(':')
        .with_context(|| format!("--mqtt {s:?}: expected HOST:PORT"))?;
    let port: u16 = port
        .parse()
        .with_context(|| format!("--mqtt {s:?}: bad port {port:?}"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        anyhow::bail!("--mqtt {s:?}: empty host");
    }
    Ok((host.to_string(), port))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let (mqtt_host, mqtt_port) = broker(&args.mqtt)?;
    let mqtt_auth = broker_auth(&args)?;
    let console = start(ConsoleConfig {
        listen: args.listen,
        mqtt_host,
        mqtt_port,
        mqtt_client_id: args.client_id,
        mqtt_auth,
        db_path: args.db,
        operator_default: args.operator,
    })
    .await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "shouwang-console listening on http://{}",
            console.local_addr()
        )?;
        out.flush()?;
    }
    tokio::select! {
        r = console.wait() => r,
        r = tokio::signal::ctrl_c() => {
            r.context("waiting for Ctrl-C")?;
            tracing::info!("interrupted; stopping");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn the_broker_address_splits_into_host_and_port() {
        assert_eq!(
            broker("127.0.0.1:1883").unwrap(),
            ("127.0.0.1".into(), 1883)
        );
        assert_eq!(broker("[::1]:1884").unwrap(), ("::1".into(), 1884));
        assert!(broker("localhost").is_err());
        assert!(broker(":1883").is_err());
    }
}
