//! `shouwang-gateway check CONFIG`, `shouwang-gateway plan CONFIG`,
//! `shouwang-gateway expand CONFIG` and `shouwang-gateway run CONFIG`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use shouwang_gateway::config::Config;

#[derive(Parser)]
#[command(name = "shouwang-gateway", version, about = "Shouwang edge gateway")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Check a config file and print every problem in it; and notes, e.g. rules that the
    /// devices' profiles expect and the config lacks.
    Check { config: PathBuf },
    /// Print how each device is read: its read requests (table, start, count, points) and
    /// the requests per poll and per second, with and without coalescing; the same per
    /// profile (requests saved by coalescing); and each link's load: requests per second
    /// and, for serial lines, the share of the line's time.
    Plan { config: PathBuf },
    /// Run the gateway. Refuses a config with problems, printing them all.
    Run { config: PathBuf },
    /// Print every device as the gateway reads it, as `[[devices]]` tables: templates
    /// (`for`) expanded, device files read, profiles merged in.
    Expand { config: PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let path = match &cli.command {
        Cmd::Check { config } | Cmd::Plan { config } | Cmd::Run { config } => config,
        Cmd::Expand { config } => {
            let text = match std::fs::read_to_string(config) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("{}: cannot read: {e}", config.display());
                    return ExitCode::from(2);
                }
            };
            let source = config.display().to_string();
            return match Config::expand_devices(&text, &source, config.parent()) {
                Ok(devices) => {
                    use std::io::Write as _;
                    // A closed pipe (`| head`) is the reader's choice, not an error.
                    let _ = std::io::stdout().write_all(devices.as_bytes());
                    ExitCode::SUCCESS
                }
                Err(report) => {
                    eprint!("{report}");
                    ExitCode::from(2)
                }
            };
        }
    };
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(report) => {
            eprint!("{report}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Cmd::Expand { .. } => ExitCode::SUCCESS, // answered above
        Cmd::Check { .. } => {
            println!(
                "{}: ok ({} devices, {} rules, {} alarms)",
                path.display(),
                config.devices.len(),
                config.rules.len(),
                config.alarm_specs().len()
            );
            for note in config.notes() {
                println!("  note: {note}");
            }
            ExitCode::SUCCESS
        }
        Cmd::Plan { .. } => {
            use shouwang_gateway::sources::modbus::{ProfilePlans, SitePlan, budget};
            let mut out = format!(
                "{}{}",
                SitePlan::of(&config),
                ProfilePlans::of(&config.profiles, Some(&config))
            );
            for load in budget::loads(&config) {
                out.push_str(&format!("{load}\n"));
            }
            use std::io::Write as _;
            // A closed pipe (`| head`) is the reader's choice, not an error.
            let _ = std::io::stdout().write_all(out.as_bytes());
            ExitCode::SUCCESS
        }
        Cmd::Run { .. } => {
            for note in config.notes() {
                tracing::info!(%note, "config note");
            }
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            // The runtime loop is a task on the workers, like the sources that feed it, not
            // the future this thread blocks on: a poll outcome wakes it on the worker that
            // sent it, where it was a wake-up of this thread from another one for nearly
            // every message (sensor-load at 20,000 msg/s: 10,700 context switches a second
            // then, 1,800 now).
            //
            // The signals are awaited by a task of their own that fires a oneshot: the
            // runtime loop polls its shutdown first on every turn, and a oneshot is one
            // atomic load where the signal futures were ~2 % of the gateway's CPU at 20,000
            // msg/s (perf).
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            runtime.spawn(async move {
                shutdown_signal().await;
                let _ = stop.send(());
            });
            let shutdown = async move {
                // Sent, or dropped with the runtime: either way it is time to stop.
                let _ = stopped.await;
            };
            let run = runtime.spawn(shouwang_gateway::run_until(config, shutdown));
            match runtime.block_on(run) {
                Ok(Ok(())) => ExitCode::SUCCESS,
                Ok(Err(e)) => {
                    eprintln!("shouwang-gateway: {e:#}");
                    ExitCode::FAILURE
                }
                // A panic of the loop ends the process as it did when this thread ran it.
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => {
                    eprintln!("shouwang-gateway: the runtime loop was cancelled: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
