//! `shouwang demo`: run a simulated building, the gateway, a broker and the console in one
//! process. `shouwang demo trigger|clear KIND PLACE`: make something happen in a running demo.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use shouwang_demo::building::{self, KINDS, short_place};
use shouwang_demo::{DemoOptions, RunningDemo, echo, scenario};

#[derive(Parser)]
#[command(
    name = "shouwang",
    version,
    about = "Shouwang: public-safety monitoring for large residential communities"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the demo: a simulated building, the gateway, an embedded MQTT broker and the
    /// console, all in this process, with nothing else to install.
    Demo(DemoArgs),
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
struct DemoArgs {
    #[command(subcommand)]
    action: Option<DemoAction>,
    /// The console's HTTP port on 127.0.0.1.
    #[arg(long, default_value_t = 8750)]
    console_port: u16,
    /// The embedded MQTT broker's port on 127.0.0.1.
    #[arg(long, default_value_t = 18830)]
    mqtt_port: u16,
    /// Do not play the scripted scenario; only `trigger`/`clear` change things.
    #[arg(long)]
    no_scenario: bool,
    /// Keep the console's database in this directory (default: a temporary directory,
    /// removed at exit, so every demo starts with an empty board).
    #[arg(long)]
    db_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum DemoAction {
    /// Put a device of a running demo into alarm, e.g. `trigger smoke B1-2-12-1203`.
    Trigger {
        /// smoke, leak, pressure or access (the fire exit's door).
        kind: String,
        /// The place's ids joined by `-`: building-entrance-floor-room, e.g. B1-2-12-1203, or
        /// building-floor-area, e.g. B1-1-pump-room.
        place: String,
        /// Write this value (in the point's engineering unit) instead of the alarm value.
        #[arg(long, allow_negative_numbers = true)]
        value: Option<f64>,
    },
    /// Put a device of a running demo back to its normal value.
    Clear { kind: String, place: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // rumqttd logs every disconnect as an error: quiet unless asked for.
                .unwrap_or_else(|_| "warn,rumqttd=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(err) => {
            eprintln!("shouwang: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let Command::Demo(args) = cli.command;
    runtime.block_on(async move {
        match args.action {
            None => run_demo(args).await,
            Some(DemoAction::Trigger { kind, place, value }) => {
                poke(&kind, &place, value, true).await
            }
            Some(DemoAction::Clear { kind, place }) => poke(&kind, &place, None, false).await,
        }
    })
}

async fn run_demo(args: DemoArgs) -> ExitCode {
    let options = DemoOptions {
        console_port: args.console_port,
        mqtt_port: args.mqtt_port,
        db_dir: args.db_dir.clone(),
        ..DemoOptions::default()
    };
    let start = tokio::time::Instant::now();
    let mut demo = match RunningDemo::start(options).await {
        Ok(d) => d,
        Err(err) => {
            eprintln!("shouwang demo: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    let echo = echo::spawn(demo.mqtt_addr, start);
    print_banner(&demo, !args.no_scenario);
    let scenario =
        (!args.no_scenario).then(|| tokio::spawn(scenario::play(demo.devices.clone(), start)));

    let code = tokio::select! {
        signal = tokio::signal::ctrl_c() => {
            if let Err(err) = signal {
                eprintln!("shouwang demo: cannot listen for Ctrl-C: {err}");
            }
            println!("\nstopping the demo (Ctrl-C again to quit at once)...");
            tokio::spawn(async {
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(130);
                }
            });
            ExitCode::SUCCESS
        }
        err = demo.failed() => {
            eprintln!("shouwang demo: {err:#}");
            ExitCode::FAILURE
        }
    };
    if let Some(scenario) = scenario {
        scenario.abort();
    }
    demo.stop().await;
    echo.abort();
    code
}

fn print_banner(demo: &RunningDemo, scenario: bool) {
    let cfg = &demo.config;
    let mut ports: Vec<u16> = demo.devices.iter().map(|d| d.addr.port()).collect();
    ports.sort_unstable();
    ports.dedup();
    let (first, last) = (
        ports.first().copied().unwrap_or(0),
        ports.last().copied().unwrap_or(0),
    );
    println!(
        "Shouwang demo: community {}, gateway {}",
        cfg.gateway.community, cfg.gateway.id
    );
    println!();
    println!("  console (alarm board)  {}", demo.console_url());
    println!("  MQTT broker (embedded) mqtt://{}", demo.mqtt_addr);
    println!(
        "  simulated devices      {} Modbus devices behind {} Modbus TCP gateways on 127.0.0.1:{first}-{last}",
        demo.devices.len(),
        ports.len()
    );
    println!();
    println!(
        "Make things happen, from another terminal (`cargo run --release --` or the `shouwang` binary):"
    );
    println!("  shouwang demo trigger smoke B1-2-12-1203   smoke alarm in 1号楼 2单元 12层 1203室");
    println!("  shouwang demo clear smoke B1-2-12-1203     back to normal");
    println!("  shouwang demo trigger pressure B1-1-pump-room --value 0.55");
    println!();
    println!("Devices (KIND PLACE: where, and what `trigger` does):");
    for kind in KINDS {
        let devices: Vec<&shouwang_demo::DemoDevice> = demo
            .devices
            .iter()
            .filter(|d| d.config.kind == kind.kind)
            .collect();
        match devices.as_slice() {
            [] => continue,
            [one] => println!(
                "  {:<9} {:<16} {}: {}",
                kind.kind,
                short_place(&one.config),
                cfg.place(&one.config).label(),
                kind.alarm_means
            ),
            [first, .., last] => println!(
                "  {:<9} {} .. {} ({} devices; {} is {}): {}",
                kind.kind,
                short_place(&first.config),
                short_place(&last.config),
                devices.len(),
                short_place(&last.config),
                cfg.place(&last.config).label(),
                kind.alarm_means
            ),
        }
    }
    println!();
    println!(
        "Watch the raw messages: mosquitto_sub -p {} -t 'shouwang/v1/#' -v",
        demo.mqtt_addr.port()
    );
    if scenario {
        println!("A scripted scenario starts in 10 s (--no-scenario to skip it).");
    }
    println!("Ctrl-C stops the demo.");
    println!();
}

/// `trigger` (alarm value, or `value`) or `clear` (normal value) over Modbus TCP.
async fn poke(kind: &str, place: &str, value: Option<f64>, trigger: bool) -> ExitCode {
    let config = match building::building_config() {
        Ok(c) => c,
        Err(report) => {
            eprintln!("the built-in demo building is broken:\n{report}");
            return ExitCode::FAILURE;
        }
    };
    let device = match building::find_device(&config, kind, place) {
        Ok(d) => d,
        Err(unknown) => {
            eprint!("{unknown}");
            return ExitCode::from(2);
        }
    };
    let result = async {
        let (point, values) = building::trigger_point(device)?;
        let value = value.unwrap_or(if trigger { values.alarm } else { values.normal });
        let addr = building::device_addr(&config, device)?;
        building::write_value(addr, device.modbus_unit(), point, value).await?;
        anyhow::Ok((point, value))
    }
    .await;
    match result {
        Ok((point, value)) => {
            let unit = point.engineering_unit.as_deref().unwrap_or("");
            println!(
                "{} {} ({}): {} = {value} {unit}",
                if trigger { "triggered" } else { "cleared" },
                device.id,
                short_place(device),
                point.name
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("shouwang demo: {err:#}");
            ExitCode::FAILURE
        }
    }
}
