//! `convoy-server`: parses the command line and runs one command.

use clap::{Parser, Subcommand};
use convoy_cli::cmd;
use std::process::ExitCode;

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
    Run(cmd::run::Args),
    /// Run a demo fleet (server, embedded broker, agents) on the bundled digits data.
    #[cfg(feature = "tools")]
    Demo(cmd::demo::Args),
    /// Simulate a fleet on a partitioned data set through the real server and broker.
    #[cfg(feature = "tools")]
    Simulate(Box<cmd::simulate::Args>),
    /// Install the agent on boards over SSH from an inventory, verify it came
    /// up and roll back when it did not; prints a per-board result table.
    #[cfg(feature = "tools")]
    Deploy(cmd::deploy::Args),
    /// Create each vehicle's broker password and ed25519 key pair, record its
    /// public key with the server, and write <out>/<vehicle>/ with
    /// vehicle.key, vehicle.pub, server.pub and broker-password to install
    /// on the vehicle (`deploy` can carry them).
    Provision(cmd::provision::Args),
    /// Print the per-round ledger of a database.
    Report(cmd::report::Args),
    /// What the next rounds will cost before they run: training time,
    /// bytes up and down, store growth and money, from the cost model and
    /// what the fleet's database measured.
    Plan(cmd::plan::Args),
    /// The stored model versions: list, show, verify, diff, export, import.
    Models(cmd::models::Args),
    /// The provisioned vehicles and their suspected updates; block a vehicle.
    Vehicles(cmd::vehicles::Args),
    /// TLS for the embedded broker: `tls init` makes an operator CA and the
    /// broker's certificate (`provision --tls-ca` issues vehicle ones).
    Tls(cmd::tls::Args),
    /// Key rotation: `keys rotate-server` gives the server a new signing
    /// key with an overlap (`provision --rotate` does the vehicles').
    Keys(cmd::keys::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Demo and simulator print their own progress; keep their logs to warnings.
    #[cfg(feature = "tools")]
    let quiet = matches!(cli.command, Command::Demo(_) | Command::Simulate(_));
    #[cfg(not(feature = "tools"))]
    let quiet = false;
    convoy_runtime::process::init_logging(cli.log_json, if quiet { "warn" } else { "info" });
    let done = match cli.command {
        Command::Run(args) => cmd::run::run(args),
        #[cfg(feature = "tools")]
        Command::Demo(args) => cmd::demo::run(args),
        #[cfg(feature = "tools")]
        Command::Simulate(args) => cmd::simulate::run(*args),
        #[cfg(feature = "tools")]
        Command::Deploy(args) => cmd::deploy::run(args),
        Command::Provision(args) => cmd::provision::run(args),
        Command::Report(args) => cmd::report::run(args),
        Command::Plan(args) => cmd::plan::run(args),
        Command::Models(args) => cmd::models::run(args),
        Command::Vehicles(args) => cmd::vehicles::run(args),
        Command::Tls(args) => cmd::tls::run(args),
        Command::Keys(args) => cmd::keys::run(args),
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("convoy-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}
