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
        /// Update codec pipeline (e.g. fp32, q8+zstd, topk:0.1+q8+zstd).
        #[arg(long, default_value = convoy_server::demo::DEFAULT_CODEC)]
        codec: String,
        /// Codec of the model deltas sent to the vehicles (fp32: full models).
        #[arg(long, default_value = convoy_server::demo::DEFAULT_DOWNLINK)]
        downlink_codec: String,
        /// Server learning rate on the averaged update.
        #[arg(long, default_value_t = convoy_server::demo::DEFAULT_SERVER_LR)]
        server_lr: f64,
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
    /// Simulate a fleet on a partitioned data set through the real server and broker.
    Simulate {
        /// Data set.
        #[arg(long, value_enum, default_value_t = convoy_server::simulate::SimDataset::FashionMnist)]
        dataset: convoy_server::simulate::SimDataset,
        /// Folder with the Fashion-MNIST idx.gz files.
        #[arg(long, default_value = "/usr/share/datasets/fashion-mnist")]
        data_dir: PathBuf,
        /// Number of clients (all take part every round).
        #[arg(long, default_value_t = 20)]
        clients: usize,
        /// Number of rounds.
        #[arg(long, default_value_t = 30)]
        rounds: u64,
        /// How rows are spread over clients.
        #[arg(long, value_enum, default_value_t = convoy_server::simulate::Partition::Dirichlet)]
        partition: convoy_server::simulate::Partition,
        /// Dirichlet concentration for dirichlet/quantity partitions.
        #[arg(long, default_value_t = 0.5)]
        alpha: f64,
        /// Seed.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Uplink codec pipeline, e.g. topk:0.01+q8+zstd.
        #[arg(long, default_value = "fp32")]
        codec: String,
        /// Downlink (model delta) codec pipeline.
        #[arg(long, default_value = "fp32")]
        downlink_codec: String,
        /// Exact keyframe every N rounds (0: never; late joiners still get full models).
        #[arg(long, default_value_t = 0)]
        keyframe_every: u64,
        /// Sparsity warm-up rounds for topk/randk codecs.
        #[arg(long, default_value_t = 0)]
        warmup_rounds: u64,
        /// Server learning rate on the averaged update.
        #[arg(long, default_value_t = 1.0)]
        server_lr: f64,
        /// Local epochs.
        #[arg(long, default_value_t = 1)]
        epochs: u32,
        /// SGD learning rate.
        #[arg(long, default_value_t = 0.05)]
        lr: f32,
        /// Batch size.
        #[arg(long, default_value_t = 32)]
        batch_size: u32,
        /// Hidden layer width.
        #[arg(long, default_value_t = 128)]
        hidden: u32,
        /// Output folder (rounds.csv, rounds.json, summary.txt, sim.db).
        #[arg(long, default_value = "sim-out")]
        out: PathBuf,
        /// Label of this run in the results.
        #[arg(long)]
        label: Option<String>,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
        /// The real embedded MQTT broker, or in-process channels (faster; same bytes).
        #[arg(long, value_enum, default_value_t = convoy_server::simulate::Transport::Mqtt)]
        transport: convoy_server::simulate::Transport,
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
    // Demo and simulator print their own progress; keep their logs to warnings.
    let default = if matches!(cli.command, Command::Demo { .. } | Command::Simulate { .. }) {
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
            downlink_codec,
            server_lr,
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
                downlink_codec,
                server_lr,
                epochs,
                lr,
                batch_size,
                ..Default::default()
            };
            until_signal(|shutdown| convoy_server::demo::run(options, shutdown))?;
            Ok(())
        }
        Command::Simulate {
            dataset,
            data_dir,
            clients,
            rounds,
            partition,
            alpha,
            seed,
            codec,
            downlink_codec,
            keyframe_every,
            warmup_rounds,
            server_lr,
            epochs,
            lr,
            batch_size,
            hidden,
            out,
            label,
            quiet,
            transport,
        } => {
            let options = convoy_server::simulate::SimOptions {
                dataset,
                data_dir,
                clients,
                rounds,
                partition,
                alpha,
                seed,
                codec,
                downlink_codec,
                keyframe_every,
                warmup_rounds,
                server_lr,
                epochs,
                lr,
                batch_size,
                hidden: vec![hidden],
                out,
                label,
                progress: !quiet,
                transport,
            };
            until_signal(|shutdown| convoy_server::simulate::run(options, shutdown))?;
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
