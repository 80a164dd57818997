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
    Demo {
        /// Number of vehicles.
        #[arg(long, default_value_t = 8)]
        clients: usize,
        /// Number of rounds.
        #[arg(long, default_value_t = 10)]
        rounds: u64,
        /// Seed for the data split, client sampling and initial weights.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Dirichlet concentration of the label skew (smaller is more non-IID).
        #[arg(long, default_value_t = 0.5)]
        alpha: f64,
        /// Database to write (replaced if it exists); `report --db` reads it afterwards.
        #[arg(long, default_value = "convoy-demo/convoy.db")]
        db: PathBuf,
        /// Update codec (fp32, fp16).
        #[arg(long, default_value = "fp32")]
        codec: String,
        /// Local epochs per round.
        #[arg(long, default_value_t = 1)]
        epochs: u32,
        /// SGD learning rate.
        #[arg(long, default_value_t = 0.05)]
        lr: f32,
        /// Mini-batch size.
        #[arg(long, default_value_t = 16)]
        batch_size: u32,
    },
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
    // The demo prints its own per-round lines; keep its logs to warnings.
    let default = if matches!(cli.command, Command::Demo { .. }) {
        "warn"
    } else {
        "info"
    };
    convoy_agent::process::init_logging(cli.log_json, default);
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
        tokio::spawn(convoy_agent::process::cancel_on_signal(shutdown.clone()));
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
        Command::Demo {
            clients,
            rounds,
            seed,
            alpha,
            db,
            codec,
            epochs,
            lr,
            batch_size,
        } => {
            let options = convoy_server::demo::DemoOptions {
                clients,
                rounds,
                seed,
                alpha,
                db,
                codec,
                epochs,
                lr,
                batch_size,
                ..Default::default()
            };
            until_signal(|shutdown| convoy_server::demo::run(options, shutdown))?;
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
