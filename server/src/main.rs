//! `convoy-server`: parses flags and runs the server library.

use anyhow::Context;
use clap::{Parser, Subcommand};
use convoy_server::report::Format;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

/// convoy aggregation server: runs federated rounds for a vehicle fleet
/// over MQTT and keeps a per-round bandwidth and retraining-cost ledger.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Log as JSON lines instead of text (RUST_LOG sets the level).
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the coordinator (embedded broker unless broker.url is set) until SIGINT/SIGTERM.
    Run {
        /// TOML config file (see systemd/server.example.toml).
        #[arg(long, short, env = "CONVOY_SERVER_CONFIG")]
        config: PathBuf,
    },
    /// Run a demo fleet (server, embedded broker, agents) on the bundled digits data.
    #[cfg(feature = "tools")]
    Demo(convoy_server::tools::demo::DemoOptions),
    /// Simulate a fleet on a partitioned data set through the real server and broker.
    #[cfg(feature = "tools")]
    Simulate(convoy_server::tools::simulate::SimOptions),
    /// Install the agent on boards over SSH from an inventory, verify it came
    /// up and roll back when it did not; prints a per-board result table.
    #[cfg(feature = "tools")]
    Deploy(convoy_server::deploy::DeployOptions),
    /// Print the per-round ledger of a database.
    Report {
        /// Database written by `run` or `demo`.
        #[arg(long, env = "CONVOY_DB")]
        db: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Per-client rows of one round instead (needs --round).
        #[arg(long, requires = "round")]
        clients: bool,
        /// Round for --clients.
        #[arg(long)]
        round: Option<u64>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Demo and simulator print their own progress; keep their logs to warnings.
    #[cfg(feature = "tools")]
    let quiet = matches!(cli.command, Command::Demo(_) | Command::Simulate(_));
    #[cfg(not(feature = "tools"))]
    let quiet = false;
    let default = if quiet { "warn" } else { "info" };
    convoy_runtime::process::init_logging(cli.log_json, default);
    match real_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("convoy-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `job` on a fresh runtime with a shutdown token that SIGINT/SIGTERM cancel.
fn until_signal<T, E, F>(job: impl FnOnce(CancellationToken) -> F) -> anyhow::Result<T>
where
    F: std::future::Future<Output = Result<T, E>>,
    anyhow::Error: From<E>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(convoy_runtime::process::cancel_on_signal(shutdown.clone()));
        Ok(job(shutdown).await?)
    })
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run { config } => {
            let config = convoy_server::config::ServerConfig::load(&config)?;
            until_signal(|shutdown| convoy_server::run(config, shutdown))?;
            Ok(())
        }
        #[cfg(feature = "tools")]
        Command::Demo(options) => {
            until_signal(|shutdown| convoy_server::tools::demo::run(options, shutdown))?;
            Ok(())
        }
        #[cfg(feature = "tools")]
        Command::Simulate(options) => {
            until_signal(|shutdown| convoy_server::tools::simulate::run(options, shutdown))?;
            Ok(())
        }
        #[cfg(feature = "tools")]
        Command::Deploy(options) => {
            let results = until_signal(|_| convoy_server::deploy::run(&options))?;
            print!("\n{}", convoy_server::deploy::table(&results));
            let failed = results
                .iter()
                .filter(|r| {
                    !matches!(
                        r.outcome,
                        convoy_server::deploy::Outcome::Ok | convoy_server::deploy::Outcome::DryRun
                    )
                })
                .count();
            if failed > 0 {
                anyhow::bail!("{failed} of {} boards did not deploy", results.len());
            }
            Ok(())
        }
        Command::Report {
            db,
            format,
            clients,
            round,
        } => {
            let text = match (clients, round) {
                (true, Some(round)) => convoy_server::report::clients(&db, round, format)?,
                _ => convoy_server::report::rounds(&db, format)?,
            };
            print!("{text}");
            Ok(())
        }
    }
}
