//! `shouwang-console`: the control-room console.
//!
//! Prints exactly one line to stdout, `shouwang-console listening on http://ADDR`, once the
//! HTTP listener is bound (scripts and tests parse it); logs go to stderr (`RUST_LOG`).

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
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
    let console = start(ConsoleConfig {
        listen: args.listen,
        mqtt_host,
        mqtt_port,
        mqtt_client_id: args.client_id,
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
