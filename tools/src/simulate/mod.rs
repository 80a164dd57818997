//! `convoy-server simulate`: a fleet of tens to hundreds of agents on a
//! partitioned data set, through the real server code path and the real
//! embedded broker, writing per-round CSV/JSON and a summary.

use super::digits::DIGITS_CSV;
use super::partition::{Partition, partition};
use super::{fleet, idx};
use anyhow::Context;
use convoy_agent::LocalData;
use convoy_agent::config::{Attack, DataConfig};
use convoy_server::config::{
    AggregationConfig, RoundConfig, RoundMode, ServerConfig, StrategyConfig, Weights,
};
use convoy_server::run::{Prepared, TestSet};
use convoy_shared::codec::Pipeline;
use convoy_shared::dataset::{Dataset, Table};
use convoy_shared::spec::{Feature, Head, ModelSpec, Recipe, TaskKind};
use convoy_shared::strategy::robust::Rule;
use convoy_shared::strategy::server::{Schedule, ServerOpt};
use convoy_shared::units::human_bytes;
use convoy_store::{ClientStatus, RoundRow, RoundStatus};
use rand::seq::SliceRandom;
use rand::{SeedableRng, rngs::StdRng};
use serde::Serialize;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

mod clocked;
mod devices;
mod options;
mod output;
mod seeds;

pub use devices::DeviceModel;
pub use options::{SimDataset, SimMode, SimOptions, SimStrategy, SimWeights, Transport};

pub use output::{SimResult, SimRound};
use output::{progress_bar, show_waiting, write_outputs};

fn load(options: &SimOptions) -> anyhow::Result<(ModelSpec, Dataset, Dataset)> {
    match options.dataset {
        SimDataset::FashionMnist => {
            let open = |name: &str| -> anyhow::Result<std::io::BufReader<std::fs::File>> {
                let path = options.data_dir.join(name);
                let file = std::fs::File::open(&path).with_context(|| {
                    format!(
                        "opening {} (install it: apt-get install dataset-fashion-mnist)",
                        path.display()
                    )
                })?;
                Ok(std::io::BufReader::new(file))
            };
            let images = idx::read_images(open("train-images-idx3-ubyte.gz")?, 100_000)?;
            let labels = idx::read_labels(open("train-labels-idx1-ubyte.gz")?, 100_000)?;
            let test_images = idx::read_images(open("t10k-images-idx3-ubyte.gz")?, 100_000)?;
            let test_labels = idx::read_labels(open("t10k-labels-idx1-ubyte.gz")?, 100_000)?;
            let spec = ModelSpec {
                features: idx::feature_names(images.rows, images.cols)
                    .into_iter()
                    .map(|name| Feature::numeric(name, 0.0, 1.0))
                    .collect(),
                heads: vec![Head::classification(
                    "label",
                    (0..10).map(|c| c.to_string()),
                )],
                hidden: options.hidden.clone(),
                init_seed: options.seed,
            };
            Ok((
                spec,
                idx::to_dataset(&images, &labels, 10)?,
                idx::to_dataset(&test_images, &test_labels, 10)?,
            ))
        }
        SimDataset::Digits => {
            let table = Table::read(DIGITS_CSV.as_bytes())?;
            let spec = table.derive_spec(
                "digit",
                TaskKind::Classification,
                options.hidden.clone(),
                options.seed,
            )?;
            let all = Dataset::from_table(&table, &spec)?;
            let mut order: Vec<usize> = (0..all.len()).collect();
            order.shuffle(&mut StdRng::seed_from_u64(options.seed));
            let (test, train) = order.split_at(all.len() / 5);
            Ok((spec, all.subset(train), all.subset(test)))
        }
    }
}

/// Runs the simulation and writes `rounds.csv`, `rounds.json` and
/// `summary.txt` under `options.out`; with `--seeds`, once per seed under
/// `seed-<n>/` and the mean ± sd of every figure in `seeds.json` and
/// `summary.txt` (the last seed's result comes back).
pub async fn run(options: SimOptions, shutdown: CancellationToken) -> anyhow::Result<SimResult> {
    if options.seeds.is_empty() {
        return run_one(options, shutdown).await;
    }
    seeds::run(options, shutdown).await
}

/// A data set and its split.
struct Split {
    spec: ModelSpec,
    train: Dataset,
    test: Dataset,
    parts: Vec<Vec<usize>>,
}

/// Where the simulated vehicles' rows come from.
enum Source {
    /// A data set split by a partitioner or a split file: the spec is
    /// known, rows are handed to the agents already encoded.
    Split(Box<Split>),
    /// One CSV file per vehicle: the agents read them as real agents do,
    /// and the fleet aligns a spec (schema and statistics rounds).
    Files { files: Vec<PathBuf>, label: String },
}

impl Source {
    fn vehicles(&self) -> usize {
        match self {
            Source::Split(split) => split.parts.len(),
            Source::Files { files, .. } => files.len(),
        }
    }
}

/// The partitioned data set of `options`, clients without rows left out
/// (loudly); returns the clients asked for too.
fn split(options: &SimOptions) -> anyhow::Result<(Source, usize)> {
    let (spec, train, test) = load(options)?;
    let parts = match &options.partition_file {
        Some(file) => crate::split_file::read(file, train.len())?,
        None => partition(
            train.targets(),
            options.clients,
            options.partition,
            (options.alpha, options.shards),
            options.seed,
        ),
    };
    let asked = parts.len();
    // A vehicle without rows can never report: leave it out, loudly, rather
    // than make every round wait for it until its deadline.
    let (parts, empty): (Vec<_>, Vec<_>) = parts.into_iter().partition(|p| !p.is_empty());
    if !empty.is_empty() {
        eprintln!(
            "warning: {} of {asked} clients got no rows from the split and are left out",
            empty.len(),
        );
    }
    anyhow::ensure!(
        !parts.is_empty(),
        "no client got any rows; use fewer --clients or another --partition"
    );
    let source = Source::Split(Box::new(Split {
        spec,
        train,
        test,
        parts,
    }));
    Ok((source, asked))
}

/// `--csv` split over the vehicles by `--csv-split`, one file each under
/// `<out>/vehicles/`.
fn split_csv(csv: &Path, label: &str, options: &SimOptions) -> anyhow::Result<Vec<PathBuf>> {
    let file =
        std::fs::File::open(csv).with_context(|| format!("opening --csv {}", csv.display()))?;
    let table = Table::read(std::io::BufReader::new(file))
        .with_context(|| format!("reading --csv {}", csv.display()))?;
    let fleet = crate::csv_split::split(
        &table,
        label,
        options.clients,
        &options.csv_split,
        options.seed,
    )?;
    let dir = options.out.join("vehicles");
    let _ = std::fs::remove_dir_all(&dir);
    crate::csv_split::write(&table, &fleet, &dir)
}

/// Every `*.csv` in `dir` but `test_csv`, sorted by name.
fn csv_files(dir: &Path, test_csv: Option<&Path>) -> anyhow::Result<Vec<PathBuf>> {
    let test = test_csv.and_then(|t| t.canonicalize().ok());
    let mut files = Vec::new();
    for entry in
        std::fs::read_dir(dir).with_context(|| format!("reading --data-dir {}", dir.display()))?
    {
        let path = entry?.path();
        let is_csv = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
        if is_csv && path.is_file() && path.canonicalize().ok() != test {
            files.push(path);
        }
    }
    files.sort();
    anyhow::ensure!(
        !files.is_empty(),
        "{} holds no .csv file: --label makes --data-dir a folder of one CSV per vehicle",
        dir.display()
    );
    Ok(files)
}

async fn run_one(options: SimOptions, shutdown: CancellationToken) -> anyhow::Result<SimResult> {
    anyhow::ensure!(
        options.clients >= 1 && options.rounds >= 1,
        "--clients and --rounds must be at least 1"
    );
    let (source, asked) = match &options.label {
        Some(label) => {
            let files = match &options.csv {
                Some(csv) => split_csv(csv, label, &options)?,
                None => csv_files(&options.data_dir, options.test_csv.as_deref())?,
            };
            let n = files.len();
            let source = Source::Files {
                files,
                label: label.clone(),
            };
            (source, n)
        }
        None => split(&options)?,
    };
    let vehicles = source.vehicles();
    let left_out = asked - vehicles;
    std::fs::create_dir_all(&options.out)?;
    let db = options.out.join("sim.db");
    let db_path = db.clone();
    for stale in ["sim.db", "sim.db-wal", "sim.db-shm"] {
        let _ = std::fs::remove_file(options.out.join(stale));
    }
    let _ = std::fs::remove_dir_all(options.out.join("sim.db.models"));
    let state = options.out.join("agents");
    let _ = std::fs::remove_dir_all(&state);

    let broker = match options.transport {
        Transport::Mqtt => fleet::local_broker(&db, "sim").await?,
        // a fresh name per run: several simulations may share a process,
        // and start within the same millisecond
        Transport::Memory => {
            static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            fleet::LocalBroker::memory(format!("sim-{}-{run}", std::process::id()))
        }
    };
    let server = server_config(&options, db, &broker, vehicles)?;
    let (server_lr, strategy) = (server.round_lr(1), server.strategy_of(1));
    let agent = |i: usize, data| -> anyhow::Result<_> {
        let id = format!("sim-{i:03}");
        let mut config = fleet::agent_config("sim", &id, &broker, state.join(&id), data)?;
        if i < options.attackers {
            config.faults.attack = options.attack;
        }
        Ok(config)
    };
    let (agents, prepared) = match source {
        Source::Split(split) => {
            let Split {
                spec,
                train,
                test,
                parts,
            } = *split;
            let agents = parts
                .iter()
                .enumerate()
                .map(|(i, rows)| {
                    let data = fleet::prepared_data_config(&spec.primary().label);
                    let rows = LocalData::Prepared(Arc::new(train.subset(rows)));
                    Ok((agent(i, data)?, Some(rows)))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let prepared = Prepared {
                spec: Some(spec),
                test: TestSet::Ready(Arc::new(test)),
            };
            (agents, Some(prepared))
        }
        Source::Files { files, label } => {
            let agents = files
                .into_iter()
                .enumerate()
                .map(|(i, file)| {
                    let data = DataConfig::new(file, &label, options.task);
                    Ok((agent(i, data)?, None))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            (agents, None)
        }
    };
    let started = Instant::now();
    let (mut up, mut down) = (0u64, 0u64);
    let (progress, total) = (options.progress, options.rounds);
    let (rows, sim_times) = if options.devices.clocked() {
        let (rows, times) = clocked::rows(&options, server, prepared, agents, &shutdown, |row| {
            up += row.bytes_up;
            down += row.bytes_down;
            if progress {
                progress_bar(row.round.min(total), total, row, up, down);
            }
        })?;
        if progress {
            eprintln!();
        }
        (rows, Some(times))
    } else {
        let dashboard = fleet::Dashboard::start(&options.serve, &server).await?;
        if let Some(d) = &dashboard {
            eprintln!("dashboard: {}", d.url());
        }
        let ticker = progress.then(|| tokio::spawn(show_waiting(db_path.clone(), total)));
        let live = dashboard.as_ref().map(|d| d.live.clone());
        let (rows, _) = fleet::run(server, prepared, agents, shutdown.clone(), live, |row| {
            up += row.bytes_up;
            down += row.bytes_down;
            if progress {
                progress_bar(row.round.min(total), total, row, up, down);
            }
        })
        .await?;
        if let Some(ticker) = ticker {
            ticker.abort();
        }
        if progress {
            eprintln!();
        }
        if let Some(d) = dashboard {
            d.finish(&shutdown).await;
        }
        (rows, None)
    };
    let suspected = convoy_store::Store::open(&db_path)?
        .suspicions()?
        .values()
        .map(|s| s.count)
        .sum();
    // a CSV fleet without a test set is scored by its vehicles' held-out rows
    let federated = options.label.is_some() && options.test_csv.is_none();
    let rounds: Vec<SimRound> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut round = SimRound::from(r);
            round.sim_seconds = sim_times.as_ref().and_then(|t| t.get(i).copied());
            if federated {
                (round.accuracy, round.rmse) = (r.holdout_accuracy, r.holdout_rmse);
            }
            round
        })
        .collect();
    let partition = match (&options.label, &options.partition_file) {
        (Some(_), _) if options.csv.is_some() => format!("csv:{}", options.csv_split),
        (Some(_), _) => format!("files:{}", options.data_dir.display()),
        (None, Some(file)) => format!(
            "file:{}",
            file.file_name().unwrap_or_default().to_string_lossy()
        ),
        (None, None) => format!("{:?}", options.partition).to_lowercase(),
    };
    let split_by_alpha = options.label.is_none()
        && options.partition_file.is_none()
        && options.partition != Partition::Iid;
    let accuracies: Vec<f64> = rounds.iter().filter_map(|r| r.accuracy).collect();
    let result = SimResult {
        label: options
            .name
            .clone()
            .unwrap_or_else(|| options.codec.to_string()),
        alpha: split_by_alpha.then_some(options.alpha),
        partition,
        metric: if federated { "holdout" } else { "test" }.into(),
        transport: format!("{:?}", options.transport).to_lowercase(),
        codec: options.codec.to_string(),
        downlink_codec: options.downlink_codec.to_string(),
        server_lr,
        strategy: options.strategy.to_string(),
        strategy_detail: strategy,
        rule: options.rule.to_string(),
        attack: options.attack.map(|a| a.to_string()),
        attackers: if options.attack.is_some() {
            options.attackers.min(vehicles)
        } else {
            0
        },
        suspected,
        warmup_rounds: options.warmup_rounds,
        keyframe_every: options.keyframe_every,
        clients: asked,
        clients_left_out: left_out,
        seed: options.seed,
        final_accuracy: accuracies.last().copied(),
        best_accuracy: accuracies.iter().copied().reduce(f64::max),
        last5_accuracy: (!accuracies.is_empty()).then(|| {
            let tail = &accuracies[accuracies.len().saturating_sub(5)..];
            tail.iter().sum::<f64>() / tail.len() as f64
        }),
        final_rmse: rounds.iter().filter_map(|r| r.rmse).next_back(),
        rounds_to_80: rounds
            .iter()
            .find(|r| r.accuracy.is_some_and(|a| a >= 0.8))
            .map(|r| r.round),
        bytes_up: rounds.iter().map(|r| r.bytes_up).sum(),
        bytes_down: rounds.iter().map(|r| r.bytes_down).sum(),
        wall_seconds: started.elapsed().as_secs_f64(),
        rounds,
    };
    write_outputs(&options.out, &result)?;
    Ok(result)
}

/// The server's config for a simulated fleet of `vehicles`.
fn server_config(
    options: &SimOptions,
    db: PathBuf,
    broker: &fleet::LocalBroker,
    vehicles: usize,
) -> anyhow::Result<ServerConfig> {
    let server = ServerConfig {
        fleet: "sim".parse().map_err(anyhow::Error::msg)?,
        db,
        broker: fleet::server_broker(broker),
        rounds: RoundConfig {
            total: options.rounds,
            min_clients: match options.min_clients {
                0 => vehicles,
                n => n.min(vehicles),
            },
            min_reports: 1,
            sample_fraction: 1.0,
            deadline_secs: options.deadline_secs,
            codec: options.codec,
            downlink_codec: options.downlink_codec,
            keyframe_every: options.keyframe_every,
            codec_warmup_rounds: options.warmup_rounds,
            seed: options.seed,
            norm_bound: options.norm_bound,
            mode: match options.mode {
                SimMode::Sync => RoundMode::Sync,
                SimMode::Async => RoundMode::Async,
            },
            async_buffer: options.async_buffer,
            max_staleness: options.max_staleness,
            ..Default::default()
        },
        strategy: StrategyConfig {
            server: options.strategy.server,
            server_lr: options.server_lr,
            lr_schedule: options.lr_schedule,
            proximal_mu: options.proximal_mu.unwrap_or(if options.strategy.prox {
                0.01
            } else {
                0.0
            }),
            scaffold: options.strategy.scaffold,
        },
        model: convoy_server::config::ModelConfig {
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
        aggregation: AggregationConfig {
            rule: options.rule,
            weights: match options.weights {
                SimWeights::Samples => Weights::Samples,
                SimWeights::Equal => Weights::Equal,
            },
            median_cap: options.median_cap,
            growth_cap: options.growth_cap,
            ..Default::default()
        },
        store: convoy_server::config::StorePolicy {
            keep_updates: options.keep_updates,
            max_chain_depth: options.max_chain_depth,
            max_rebuild_secs: options.max_rebuild_secs,
            ..Default::default()
        },
        eval: convoy_server::config::EvalConfig {
            test_csv: if options.label.is_some() {
                options.test_csv.clone()
            } else {
                None
            },
        },
        // served by the caller, so it can outlive the run
        ..Default::default()
    };
    server.validate()?;
    Ok(server)
}
