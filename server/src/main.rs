//! `convoy-server`: parses flags and runs the server library.

use anyhow::Context;
use clap::{Parser, Subcommand};
use convoy_server::report::Format;
use convoy_server::store::Route;
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
    /// Create each vehicle's broker password and ed25519 key pair, record its
    /// public key with the server, and write <out>/<vehicle>/ with
    /// vehicle.key, vehicle.pub, server.pub and broker-password to install
    /// on the vehicle (`deploy` can carry them).
    Provision {
        /// The server's TOML config (its database and key file are used).
        #[arg(long, short, env = "CONVOY_SERVER_CONFIG")]
        config: PathBuf,
        /// Folder to write one sub-folder per vehicle into.
        #[arg(long, default_value = "provisioned")]
        out: PathBuf,
        /// Re-key vehicles already provisioned (their old key and password stop working).
        #[arg(long)]
        replace: bool,
        /// Client ids to provision.
        #[arg(required = true, value_name = "VEHICLE")]
        vehicles: Vec<convoy_shared::topics::TopicId>,
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
        /// Each task's (head's) vehicles and on-vehicle metric per round,
        /// for fleets that train several labels.
        #[arg(long, conflicts_with = "clients")]
        tasks: bool,
        /// The cost model's predictions beside what each round measured
        /// (bytes up and down, training time), their errors, and money at
        /// the given prices.
        #[arg(long, conflicts_with_all = ["clients", "tasks"])]
        costs: bool,
        /// With --costs: price per MB of cellular data.
        #[arg(long, default_value_t = 0.0)]
        price_mb: f64,
        /// With --costs: price per device-hour of training.
        #[arg(long, default_value_t = 0.0)]
        price_device_hour: f64,
        /// Only rounds started since then: a UTC date (2026-12-01), time
        /// (2026-12-01T08:30:00Z) or age (90m, 6h, 7d).
        #[arg(long)]
        since: Option<String>,
        /// Only the newest N rounds.
        #[arg(long, value_name = "N")]
        last: Option<u64>,
        /// One row per vehicle: totals, data used today and this month
        /// against the [budget] caps of --config, the model it holds.
        #[arg(long, conflicts_with_all = ["clients", "tasks", "costs"])]
        vehicles: bool,
        /// The server's config, for its [budget] caps (with --vehicles).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// What the next rounds will cost before they run: training time,
    /// bytes up and down, store growth and money, from the cost model and
    /// what the fleet's database measured.
    Plan(convoy_server::plan::PlanOptions),
    /// The stored model versions: list, show, verify, diff, export, import.
    Models {
        /// Database written by `run` or `demo`.
        #[arg(long, env = "CONVOY_DB")]
        db: PathBuf,
        #[command(subcommand)]
        action: ModelsAction,
    },
}

#[derive(Debug, Subcommand)]
enum ModelsAction {
    /// Every stored version, oldest first.
    List {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// One version: spec, recipe, lineage, metrics, storage, contributors.
    Show {
        /// Version id or a unique prefix of 4+ hex digits.
        id: String,
    },
    /// Rebuild every stored version and recompute its Merkle root; exits 1
    /// on a mismatch, naming the chunk.
    Verify,
    /// Spec differences, changed chunks and per-tensor change between two versions.
    Diff {
        /// From this version.
        a: String,
        /// To this one.
        b: String,
    },
    /// Write a version as a self-contained bundle (weights + spec + recipe).
    Export {
        /// Version id or prefix.
        id: String,
        /// Bundle file to write.
        file: PathBuf,
    },
    /// Add a bundle's version to the database under its own id.
    Import {
        /// Bundle written by `models export`.
        file: PathBuf,
    },
    /// Score a version on a CSV through its own pipeline, per head the CSV labels.
    Eval {
        /// Version id or prefix.
        id: String,
        /// CSV with a header row.
        #[arg(long)]
        csv: PathBuf,
    },
    /// Drop what no retained version needs: unreferenced chunks, deltas
    /// and kept updates, and with --keep the versions older than the newest
    /// N (never the current model, one a vehicle holds, or one a kept
    /// version is rebuilt from).
    Gc {
        /// Keep only the newest N versions (and what they need).
        #[arg(long)]
        keep: Option<usize>,
        /// Only say what would be dropped.
        #[arg(long)]
        dry_run: bool,
    },
    /// Rebuild a version by a recoverability route, timed, and check its id.
    Rebuild {
        /// Version id or prefix.
        id: String,
        /// stored (however it is kept), weights (a), deltas (b) or replay (c).
        #[arg(long, value_enum, default_value_t = Route::Stored)]
        route: Route,
    },
    /// Bytes of each way to move a vehicle between two versions.
    Transfer {
        /// The version the vehicle holds.
        from: String,
        /// The version it should get (default: the fleet's current model).
        to: Option<String>,
    },
    /// What the store holds, and what keeping every version by each
    /// recoverability route would take.
    Storage,
    /// Which model every vehicle holds, and how far behind the fleet it is.
    Fleet {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Make an older version the fleet's current model (from the server's next start).
    Rollback {
        /// Version id or prefix.
        id: String,
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
            let summary = until_signal(|shutdown| convoy_server::run(config, shutdown))?;
            if summary.rounds_failed > 0 && summary.rounds_finished == 0 {
                anyhow::bail!(
                    "every round failed ({} rounds, none published a model); rejections by reason: {:?}; `convoy-server report --clients --round N` shows each vehicle's reason",
                    summary.rounds_failed,
                    summary.rejections
                );
            }
            Ok(())
        }
        Command::Provision {
            config,
            out,
            replace,
            vehicles,
        } => {
            let config = convoy_server::config::ServerConfig::load(&config)?;
            let key = convoy_server::identity::server_key(&config.key_file())?;
            let store = convoy_server::store::Store::open(&config.db)?;
            let made = convoy_server::identity::provision(
                &store,
                &key.public(),
                &vehicles,
                &out,
                replace,
            )?;
            println!("server public key {}", key.public());
            for v in &made {
                println!("{:<24} {}  {}", v.client, v.public_key, v.dir.display());
            }
            println!(
                "install each folder's vehicle.key, server.pub and broker-password on its vehicle (see [identity] and broker.password_file in agent.toml)"
            );
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
            tasks,
            costs,
            price_mb,
            price_device_hour,
            since,
            last,
            vehicles,
            config,
        } => {
            use convoy_server::report;
            let prices = convoy_shared::cost::Prices {
                per_mb: price_mb,
                per_device_hour: price_device_hour,
            };
            let now = convoy_runtime::clock::now_ms();
            let window = report::Window {
                since_ms: since
                    .map(|s| report::parse_since(&s, now))
                    .transpose()
                    .map_err(anyhow::Error::msg)?,
                last,
            };
            let caps = match config {
                Some(path) => {
                    let budget = convoy_server::config::ServerConfig::load(&path)?.budget;
                    (budget.daily_bytes(), budget.monthly_bytes())
                }
                None => (None, None),
            };
            let text = match (clients, round) {
                _ if tasks => report::tasks(&db, format)?,
                _ if costs => report::costs(&db, format, &prices)?,
                _ if vehicles => report::vehicles(&db, format, caps)?,
                (true, Some(round)) => report::clients(&db, round, format)?,
                _ => report::rounds(&db, format, &window)?,
            };
            print!("{text}");
            Ok(())
        }
        Command::Plan(options) => {
            print!("{}", convoy_server::plan::plan(&options)?);
            Ok(())
        }
        Command::Models { db, action } => {
            use convoy_server::models;
            let text = match action {
                ModelsAction::List { format } => models::list(&db, format)?,
                ModelsAction::Show { id } => models::show(&db, &id)?,
                ModelsAction::Diff { a, b } => models::diff(&db, &a, &b)?,
                ModelsAction::Export { id, file } => models::export(&db, &id, &file)?,
                ModelsAction::Import { file } => models::import(&db, &file)?,
                ModelsAction::Rollback { id } => models::rollback(&db, &id)?,
                ModelsAction::Fleet { format } => models::fleet(&db, format)?,
                ModelsAction::Gc { keep, dry_run } => models::gc(&db, keep, dry_run)?,
                ModelsAction::Rebuild { id, route } => models::rebuild(&db, &id, route)?,
                ModelsAction::Transfer { from, to } => models::transfer(&db, &from, to.as_deref())?,
                ModelsAction::Storage => models::storage(&db)?,
                ModelsAction::Eval { id, csv } => models::eval(&db, &id, &csv)?,
                ModelsAction::Verify => {
                    let found = models::verify(&db)?;
                    for p in &found.problems {
                        eprintln!("MISMATCH {p}");
                    }
                    if !found.problems.is_empty() {
                        anyhow::bail!(
                            "{} of {} stored versions do not verify",
                            found.problems.len(),
                            found.checked
                        );
                    }
                    format!("{} stored versions verify\n", found.checked)
                }
            };
            print!("{text}");
            Ok(())
        }
    }
}
