//! `convoy-server demo`: a whole fleet in one process, on real data.
//!
//! The digits data set ([`super::digits`]) is split into a held-out test set
//! for the server and a non-IID partition across the vehicles (Dirichlet
//! label skew, fixed seed). An embedded broker, the server and the agents
//! then run the configured rounds over real MQTT on 127.0.0.1, and each
//! round prints a line as it closes.

use super::csv_file::write_rows;
use super::digits::DIGITS_CSV;
use super::fleet;
use super::partition::dirichlet_split;
use convoy_agent::config::DataConfig;
use convoy_server::config::{EvalConfig, ModelConfig, RoundConfig, ServerConfig, StrategyConfig};
use convoy_shared::codec::Pipeline;
use convoy_shared::dataset::{Dataset, Table};
use convoy_shared::eval::evaluate;
use convoy_shared::spec::{Recipe, TaskKind};
use convoy_shared::strategy::server::ServerOpt;
use convoy_shared::units::human_bytes;
use convoy_store::RoundRow;
use rand::seq::SliceRandom;
use rand::{SeedableRng, rngs::StdRng};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The demo's uplink codec: top 2 % of each tensor at 4 bits, zstd, with
/// error feedback on the vehicles (about 69x fewer bytes than dense fp32;
/// docs/strategies.md#the-demo).
pub const DEFAULT_CODEC: &str = "topk:0.02+q4+zstd";
/// The demo's downlink codec for model deltas.
pub const DEFAULT_DOWNLINK: &str = "topk:0.25+q8+zstd";
/// The demo's server learning rate (compensates sparse averaging).
pub const DEFAULT_SERVER_LR: f64 = 4.0;

/// Demo settings (also the `demo` command's flags).
#[derive(Debug, Clone, clap::Args)]
pub struct DemoOptions {
    /// Number of vehicles.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Number of rounds.
    #[arg(long, default_value_t = 10)]
    pub rounds: u64,
    /// Seed for the data split, client sampling and initial weights.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Dirichlet concentration of the label skew (smaller is more non-IID).
    #[arg(long, default_value_t = 0.5)]
    pub alpha: f64,
    /// Database to write (replaced if it exists); `report --db` reads it afterwards.
    #[arg(long, default_value = "convoy-demo/convoy.db")]
    pub db: PathBuf,
    /// Update codec pipeline (e.g. fp32, q8+zstd, topk:0.1+q8+zstd).
    #[arg(long, default_value = DEFAULT_CODEC)]
    pub codec: Pipeline,
    /// Codec of the model deltas sent to the vehicles (fp32: full models).
    #[arg(long, default_value = DEFAULT_DOWNLINK)]
    pub downlink_codec: Pipeline,
    /// Server learning rate on the averaged update.
    #[arg(long, default_value_t = DEFAULT_SERVER_LR)]
    pub server_lr: f64,
    /// Server optimiser: fedavg, fedavgm[:momentum=B], fedadagrad,
    /// fedadam or fedyogi (`[strategy] server`; --server-lr is its η).
    #[arg(long, default_value = "fedavg")]
    pub strategy: ServerOpt,
    /// FedProx's μ on the vehicles (0: off).
    #[arg(long, default_value_t = 0.0)]
    pub proximal_mu: f64,
    /// Local epochs per round.
    #[arg(long, default_value_t = 1)]
    pub epochs: u32,
    /// SGD learning rate.
    #[arg(long, default_value_t = 0.05)]
    pub lr: f32,
    /// Mini-batch size.
    #[arg(long, default_value_t = 16)]
    pub batch_size: u32,
    /// Hidden layer widths, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "128")]
    pub hidden: Vec<u32>,
    /// The dashboard and metrics while the demo runs.
    #[command(flatten)]
    pub serve: fleet::ServeOptions,
    /// Print per-round lines.
    #[arg(skip = true)]
    pub verbose: bool,
}

/// What the demo measured.
#[derive(Debug, Clone)]
pub struct DemoReport {
    /// Each closed round.
    pub rounds: Vec<RoundRow>,
    /// Accuracy of the initial model on the test set.
    pub initial_accuracy: Option<f64>,
    /// Wall time of the rounds.
    pub elapsed: Duration,
    /// Rows in each vehicle's partition.
    pub client_rows: Vec<usize>,
}

/// Runs the demo fleet; prints one line per round when `verbose`.
pub async fn run(options: DemoOptions, shutdown: CancellationToken) -> anyhow::Result<DemoReport> {
    anyhow::ensure!(options.clients >= 1, "--clients must be at least 1");
    anyhow::ensure!(options.rounds >= 1, "--rounds must be at least 1");
    let dir = options
        .db
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let work = dir.join(format!(
        "{}.fleet",
        options
            .db
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("convoy.db")
    ));
    // A demo starts from scratch: drop an earlier demo's database and state.
    for stale in [
        options.db.clone(),
        PathBuf::from(format!("{}-wal", options.db.display())),
        PathBuf::from(format!("{}-shm", options.db.display())),
    ] {
        let _ = std::fs::remove_file(stale);
    }
    let _ = std::fs::remove_dir_all(format!("{}.models", options.db.display()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;

    // Split: 20 % held out for the server, the rest across vehicles.
    let table = Table::read(DIGITS_CSV.as_bytes())?;
    let label = "digit";
    let label_col = table
        .column(label)
        .ok_or_else(|| anyhow::anyhow!("digits data lacks its label"))?;
    let mut order: Vec<usize> = (0..table.len()).collect();
    order.shuffle(&mut StdRng::seed_from_u64(options.seed));
    let test_len = table.len() / 5;
    let (test_rows, train_rows) = order.split_at(test_len);
    let test_path = work.join("test.csv");
    write_rows(&test_path, &table, test_rows)?;
    let train_labels: Vec<String> = train_rows
        .iter()
        .map(|i| table.text(*i, label_col))
        .collect();
    let parts = dirichlet_split(
        &train_labels,
        options.clients,
        options.alpha,
        options.seed,
        20,
    );

    let broker = fleet::local_broker(&options.db, "demo").await?;

    let server_config = ServerConfig {
        fleet: "demo".parse().map_err(anyhow::Error::msg)?,
        db: options.db.clone(),
        broker: fleet::server_broker(&broker),
        rounds: RoundConfig {
            total: options.rounds,
            min_clients: options.clients,
            min_reports: 1,
            sample_fraction: 1.0,
            deadline_secs: 60,
            codec: options.codec,
            downlink_codec: options.downlink_codec,
            server_lr: options.server_lr,
            keyframe_every: 0,
            seed: options.seed,
            ..Default::default()
        },
        // No schema: the vehicles align one (schema and statistics rounds)
        // before the first training round; the server sees no row of theirs.
        model: ModelConfig {
            hidden: options.hidden.clone(),
            init_seed: options.seed,
            ..Default::default()
        },
        training: Recipe {
            epochs: options.epochs,
            lr: options.lr,
            batch_size: options.batch_size,
            ..Default::default()
        },
        eval: EvalConfig {
            test_csv: Some(test_path.clone()),
        },
        strategy: StrategyConfig {
            server: options.strategy,
            server_lr: Some(options.server_lr),
            proximal_mu: options.proximal_mu,
            ..Default::default()
        },
        ..Default::default()
    };
    server_config.validate()?;

    let mut agents = Vec::new();
    let mut client_rows = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let id = format!("car-{:02}", i + 1);
        let data = work.join(format!("{id}.csv"));
        let rows: Vec<usize> = part.iter().map(|r| train_rows[*r]).collect();
        write_rows(&data, &table, &rows)?;
        client_rows.push(rows.len());
        let data = DataConfig::new(data, label, TaskKind::Classification);
        let state = work.join(format!("{id}.state"));
        agents.push((
            fleet::agent_config("demo", &id, &broker, state, data)?,
            None,
        ));
    }
    if options.verbose {
        println!(
            "convoy demo: {} vehicles, {} rounds, digits data ({} train rows split Dirichlet(alpha={}), {} test rows), codec {}, seed {}",
            options.clients,
            options.rounds,
            train_rows.len(),
            options.alpha,
            test_len,
            options.codec,
            options.seed
        );
        println!("vehicle rows: {client_rows:?}");
    }

    let dashboard = fleet::Dashboard::start(&options.serve, &server_config).await?;
    if let Some(d) = &dashboard {
        // flushed at once: scripts read the URL while the demo runs
        println!("dashboard: {}", d.url());
        let _ = std::io::Write::flush(&mut std::io::stdout());
    }
    let started = Instant::now();
    let verbose = options.verbose;
    let live = dashboard.as_ref().map(|d| d.live.clone());
    let (rounds, summary) =
        fleet::run(server_config, None, agents, shutdown.clone(), live, |row| {
            if verbose {
                println!("{}", round_line(row));
                let _ = std::io::Write::flush(&mut std::io::stdout());
            }
        })
        .await?;
    let elapsed = started.elapsed();
    // the aligned initial model, scored on the held-out rows
    let initial_accuracy = match rounds.first() {
        Some(first) => {
            let v = convoy_store::Store::open_existing(&options.db)?
                .load_version(&first.base_version)?;
            let test = Dataset::from_csv(std::fs::File::open(&test_path)?, &v.spec)?;
            evaluate(&v.spec, &v.params, &test, &burn::prelude::Device::flex())
                .ok()
                .and_then(|e| e.accuracy)
        }
        None => None,
    };
    if options.verbose {
        if let Some(a) = initial_accuracy {
            println!("initial model: test accuracy {:.2}%", a * 100.0);
        }
        let up: u64 = rounds.iter().map(|r| r.bytes_up).sum();
        let down: u64 = rounds.iter().map(|r| r.bytes_down).sum();
        let raw_up: u64 = rounds.iter().map(|r| r.bytes_up_raw).sum();
        let raw_down: u64 = rounds.iter().map(|r| r.bytes_down_raw).sum();
        let last = rounds.last().and_then(|r| r.accuracy);
        let first = rounds.first().and_then(|r| r.accuracy);
        let pct = |a: Option<f64>| {
            a.map(|a| format!("{:.2}%", a * 100.0))
                .unwrap_or_else(|| "-".into())
        };
        let ratio = |raw: u64, sent: u64| {
            if sent > 0 {
                raw as f64 / sent as f64
            } else {
                0.0
            }
        };
        println!(
            "summary: {} rounds in {:.1}s; test accuracy {} after round 1 -> {} after round {}; \
             uplink {} ({}, {:.1}x less than dense fp32 {}), downlink {} ({:.1}x less than {}); \
             rejected messages: {}; final model {}",
            rounds.len(),
            elapsed.as_secs_f64(),
            pct(first),
            pct(last),
            rounds.len(),
            human_bytes(up),
            options.codec,
            ratio(raw_up, up),
            human_bytes(raw_up),
            human_bytes(down),
            ratio(raw_down, down),
            human_bytes(raw_down),
            summary.rejections.values().sum::<u64>(),
            &summary.final_version[..12]
        );
        println!("ledger: convoy-server report --db {}", options.db.display());
        let _ = std::io::Write::flush(&mut std::io::stdout());
    }
    if let Some(d) = dashboard {
        d.finish(&shutdown).await;
    }
    Ok(DemoReport {
        rounds,
        initial_accuracy,
        elapsed,
        client_rows,
    })
}

/// One line per round, as the demo prints them.
fn round_line(r: &RoundRow) -> String {
    let quality = match (r.accuracy, r.rmse) {
        (Some(a), _) => format!("acc {:>6.2}%", a * 100.0),
        (None, Some(e)) => format!("rmse {e:>8.4}"),
        _ => "        -  ".into(),
    };
    let ratio = r
        .compression_up
        .map(|x| format!("({x:.0}x)"))
        .unwrap_or_default();
    format!(
        "round {:>3}  {:<8}  clients {:>2}/{:<2}  up {:>10} {:<7} down {:>10}  train {:>6.2}s  {}",
        r.round,
        r.status,
        r.clients_reported,
        r.clients_selected,
        human_bytes(r.bytes_up),
        ratio,
        human_bytes(r.bytes_down),
        r.train_seconds_sum,
        quality
    )
}
