//! `convoy-agent`: parses flags and runs the agent library.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// convoy vehicle agent: trains on this vehicle's data and syncs model
/// updates with the fleet server over MQTT.
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
    /// Run the agent until SIGINT/SIGTERM.
    Run {
        /// TOML config file (see systemd/agent.example.toml).
        #[arg(long, short, env = "CONVOY_AGENT_CONFIG")]
        config: PathBuf,
    },
    /// Check a config file and the data it points at, then exit.
    Check {
        /// TOML config file.
        #[arg(long, short, env = "CONVOY_AGENT_CONFIG")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    convoy_runtime::process::init_logging(cli.log_json, "info");
    match real_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("convoy-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Check { config } => {
            let config = convoy_agent::config::AgentConfig::load(&config)?;
            let table = convoy_agent::preflight(&config)?;
            println!(
                "config ok: client {} in fleet {}, {} rows, columns {:?}",
                config.client_id,
                config.fleet,
                table.len(),
                table.headers
            );
            let backend = config.training.backend;
            let probe = convoy_agent::backend::probe();
            println!(
                "training backend {:?}: {} (GPU probe: {})",
                backend,
                convoy_agent::backend::select(backend).name,
                match &probe.gpu {
                    Ok(gpu) if probe.software => format!("{} (software)", gpu.name),
                    Ok(gpu) => gpu.name.clone(),
                    Err(why) => why.clone(),
                }
            );
            Ok(())
        }
        Command::Run { config } => {
            let config = convoy_agent::config::AgentConfig::load(&config)?;
            // one worker: training has threads of its own
            convoy_runtime::process::block_until_signal(Some(1), |shutdown| {
                convoy_agent::run(config, shutdown)
            })
            .context("starting the async runtime")??;
            Ok(())
        }
    }
}
