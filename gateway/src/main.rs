//! `shouwang-gateway check CONFIG`, `shouwang-gateway plan CONFIG`,
//! `shouwang-gateway expand CONFIG`, `shouwang-gateway rules check DIR` and
//! `shouwang-gateway run CONFIG`.

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
    /// Rule files (`[gateway] rules_dir`, and the shipped packs).
    Rules {
        #[command(subcommand)]
        command: RulesCmd,
    },
}

#[derive(Subcommand)]
enum RulesCmd {
    /// Check every rule file (`*.toml`) in DIR and every shipped pack, without a site's
    /// devices: each rule as written, and each entry that refines a rule laid over the rule
    /// it refines. Prints every problem with its file and line.
    Check { dir: PathBuf },
    /// Run rule fixtures (`rules/fixtures/*.toml` is the shipped packs'): a device, its
    /// rules, a timeline of readings and the transitions expected at each step. Prints each
    /// fixture's result; fails when any fixture fails.
    Test {
        #[arg(required = true)]
        fixtures: Vec<PathBuf>,
    },
    /// Run recorded readings (line protocol as the gateway writes it, or CSV with the
    /// header `ts_ms,device,point,value`) through CONFIG's rules and print what would have
    /// fired and when: try a change to the rules on past data before deploying it.
    Replay { config: PathBuf, readings: PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Cmd::Run { .. }) {
        one_malloc_arena();
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let path = match &cli.command {
        Cmd::Check { config } | Cmd::Plan { config } | Cmd::Run { config } => config,
        Cmd::Rules {
            command: RulesCmd::Test { fixtures },
        } => return rules_test(fixtures),
        Cmd::Rules {
            command: RulesCmd::Replay { config, readings },
        } => return rules_replay(config, readings),
        Cmd::Rules {
            command: RulesCmd::Check { dir },
        } => {
            return match shouwang_gateway::config::rule_files::check_dir(dir) {
                Ok(n) => {
                    println!(
                        "{}: ok ({n} rules, the shipped packs included)",
                        dir.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(report) => {
                    eprint!("{report}");
                    ExitCode::from(2)
                }
            };
        }
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
        Cmd::Expand { .. } | Cmd::Rules { .. } => ExitCode::SUCCESS, // answered above
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

/// `rules replay`: the rules' events over a record, one per line, and a summary.
fn rules_replay(config: &std::path::Path, readings: &std::path::Path) -> ExitCode {
    use shouwang_gateway::rule_tools::replay;
    let config = match Config::load(config) {
        Ok(c) => c,
        Err(report) => {
            eprint!("{report}");
            return ExitCode::from(2);
        }
    };
    let text = match std::fs::read_to_string(readings) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}: cannot read: {e}", readings.display());
            return ExitCode::from(2);
        }
    };
    let mut result = replay::Replay::default();
    let record = replay::read(&text, &mut result);
    if let Err(why) = replay::run(&config, record, &mut result) {
        eprintln!("the rules do not compile: {why}");
        return ExitCode::from(2);
    }
    let mut out = String::new();
    let mut counts: std::collections::BTreeMap<(&str, bool), usize> = Default::default();
    for e in &result.events {
        let when = replay::utc(e.ts_ms);
        let value = e.value.map(|v| format!(" value={v}")).unwrap_or_default();
        out.push_str(&format!(
            "{when}  {:<24} {:<20} {:<8}{value}\n",
            e.device,
            e.rule,
            if e.active { "raised" } else { "cleared" },
        ));
        *counts.entry((e.rule.as_str(), e.active)).or_default() += 1;
    }
    out.push_str(&format!(
        "{} readings, {} events; {} lines unreadable, {} readings of devices or points not in the config\n",
        result.readings,
        result.events.len(),
        result.unreadable,
        result.unknown
    ));
    for ((rule, active), n) in counts {
        if active {
            out.push_str(&format!("  {rule}: raised {n} times\n"));
        }
    }
    for note in &result.notes {
        out.push_str(&format!("  note: {note}\n"));
    }
    use std::io::Write as _;
    let _ = std::io::stdout().write_all(out.as_bytes());
    ExitCode::SUCCESS
}

/// `rules test`: every fixture, its result on a line of its own.
fn rules_test(fixtures: &[PathBuf]) -> ExitCode {
    use shouwang_gateway::rule_tools::fixture;
    let mut failed = 0;
    for path in fixtures {
        match fixture::run_file(path) {
            Ok(outcome) if outcome.failures.is_empty() => {
                println!("ok    {} ({})", path.display(), outcome.description);
            }
            Ok(outcome) => {
                failed += 1;
                println!("FAIL  {} ({})", path.display(), outcome.description);
                for failure in outcome.failures {
                    println!("      {failure}");
                }
            }
            Err(why) => {
                failed += 1;
                println!("BROKEN {}: {why}", path.display());
            }
        }
    }
    println!(
        "{} fixtures, {} passed, {failed} failed",
        fixtures.len(),
        fixtures.len() - failed
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// glibc's malloc gives threads that allocate arenas of their own (up to 8 per core), and
/// what one arena frees only that arena reuses: with the runtime loop and the links on two
/// tokio workers, 1,000 devices cost 15.6-16.4 MiB of RSS, against 12.8 MiB with one arena
/// (`device-load`), and one arena costs no CPU at the gateway's allocation rate (sensor-load
/// at 20,000 msg/s: 4.0 against 4.7 µs per message). glibc reads `MALLOC_ARENA_MAX` before
/// `main` runs, so `run` sets it and executes itself again, once, in the same process (same
/// pid, so systemd and supervisors see nothing); unless the environment already gives it (a
/// site's own choice is kept). If the exec fails, the gateway runs on as it is.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn one_malloc_arena() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    // argv[0], not /proc/self/exe: under an emulator (qemu-user) that is the emulator.
    let mut args = std::env::args_os();
    let Some(program) = args.next() else {
        return;
    };
    let error = std::process::Command::new(program)
        .args(args)
        .env("MALLOC_ARENA_MAX", "1")
        .exec();
    eprintln!(
        "shouwang-gateway: could not restart itself with one malloc arena ({error}); running on"
    );
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn one_malloc_arena() {}

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
