//! Heterogeneous fleets on the taxi data: what federated alignment buys.
//!
//!   cargo bench -p convoy-tests --bench heterogeneous -- [--seeds 42,1,2] [--rounds 20] [--server-lr 1] [--only columns|missing|mixed|regression]
//!
//! Every model here is trained by the real server and real agents (the
//! in-process broker, same topics and payloads as MQTT), the server given
//! no data: each fleet aligns its own schema and statistics first.
//!
//! 1. **Different columns** (`taxi/heterogeneous/`, 7 companies in 3 groups
//!    that each lack different columns). Each company's rows are split
//!    80/20 with the seed; the 20 % of all companies, each in its own
//!    columns, are the common test set. Compared: (a) each company alone,
//!    (b) a fleet on the columns every company logs, (c) the fleet aligned
//!    over the union of columns, (d) one vehicle holding every training row
//!    (the centralised model, same encoding). Accuracy, balanced accuracy
//!    and ROC AUC (positive class `yes`, ~92 % of rows), pooled and per company.
//!    Model lines: (e) one fleet per group, sharing nothing, and (f) one
//!    fleet whose groups are model lines (`data.line`), sharing the trunk
//!    with a head per group.
//! 2. **Missing cells**: the same after blanking 20 % of the feature cells of
//!    every file at random.
//! 3. **Mixed tasks** (`taxi/`, 7 companies with every column): four
//!    companies classify `tip`, three regress `distance` (miles), each on
//!    `local`, `dow`, `month` and `hour` only (no vehicle logs the other
//!    task's label). Compared: each task federated alone (its own
//!    companies, a one-head model) against one fleet of all seven that
//!    trains one trunk with a head per task. Scored on the 20 % test rows of
//!    every company: tip by accuracy, balanced accuracy and ROC AUC,
//!    distance by RMSE in miles.
//! 4. **Raw regression**: `distance` in hundredths of a mile (values in the
//!    hundreds) from the other columns of `taxi/`, 7 companies, the default
//!    recipe; RMSE against a centralised ridge regression on the same split
//!    and encoding.
//!
//! Every row also gives the bytes a round moved, from the ledger.

use anyhow::Context;
use burn::prelude::*;
use convoy_server::config::{RoundConfig, ServerConfig};
use convoy_shared::codec::Pipeline;
use convoy_shared::dataset::{Dataset, Table, Targets};
use convoy_shared::model::Mlp;
use convoy_shared::spec::TaskKind;
use convoy_store::{RoundRow, Store, StoredVersion};
use convoy_tests::api::DataConfig;
use convoy_tests::shared_data;
use convoy_tools::fleet;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng, rngs::StdRng};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tokio_util::sync::CancellationToken;

const COMPANIES: [&str; 7] = [
    "group_a_taxi_affiliation_services",
    "group_a_flash_cab",
    "group_a_other",
    "group_b_sun_taxi",
    "group_b_chicago_independents",
    "group_c_city_service",
    "group_c_taxicab_insurance_agency_llc",
];
const HIDDEN: u32 = 32;
/// `--server-lr`: the server's step on the averaged update, for every fleet.
static SERVER_LR: std::sync::OnceLock<f64> = std::sync::OnceLock::new();

/// One company's rows, split.
#[derive(Clone)]
struct Client {
    name: String,
    header: Vec<String>,
    train: Vec<Vec<String>>,
    test: Vec<Vec<String>>,
}

fn read_rows(path: &Path) -> anyhow::Result<(Vec<String>, Vec<Vec<String>>)> {
    let table =
        Table::read(std::fs::File::open(path).with_context(|| path.display().to_string())?)?;
    let rows = (0..table.len()).map(|r| table.row(r)).collect();
    Ok((table.headers.clone(), rows))
}

fn split(name: &str, header: Vec<String>, mut rows: Vec<Vec<String>>, seed: u64) -> Client {
    let salt = blake3::hash(name.as_bytes()).as_bytes()[0] as u64;
    rows.shuffle(&mut StdRng::seed_from_u64(seed.wrapping_mul(1000) + salt));
    let test = rows.split_off(rows.len() * 4 / 5);
    Client {
        name: name.to_string(),
        header,
        train: rows,
        test,
    }
}

/// Blanks each feature cell (the label, last, is kept) with probability `share`.
fn blank(rows: &mut [Vec<String>], share: f64, rng: &mut StdRng) {
    for row in rows {
        let label = row.len() - 1;
        for cell in &mut row[..label] {
            if rng.random_bool(share) {
                cell.clear();
            }
        }
    }
}

fn csv_text(header: &[String], rows: &[Vec<String>]) -> String {
    let mut s = header.join(",");
    s.push('\n');
    for r in rows {
        s.push_str(&r.join(","));
        s.push('\n');
    }
    s
}

/// `rows` (in `header`'s columns) as a table in `columns`, missing ones empty.
fn project(header: &[String], rows: &[Vec<String>], columns: &[String]) -> Vec<Vec<String>> {
    let index: Vec<Option<usize>> = columns
        .iter()
        .map(|c| header.iter().position(|h| h == c))
        .collect();
    rows.iter()
        .map(|r| {
            index
                .iter()
                .map(|i| i.map(|i| r[i].clone()).unwrap_or_default())
                .collect()
        })
        .collect()
}

/// Trains a fleet of `vehicles` (id, CSV) that all label `label` through
/// the real server and agents; returns the final model and the ledger's
/// rounds.
async fn train(
    work: &Path,
    tag: &str,
    vehicles: &[(String, PathBuf)],
    label: &str,
    task: TaskKind,
    rounds: u64,
    seed: u64,
) -> anyhow::Result<(StoredVersion, Vec<RoundRow>)> {
    let labelled: Vec<Vehicle> = vehicles
        .iter()
        .map(|(id, path)| Vehicle::new(id, path.clone(), label, task))
        .collect();
    train_tasks(work, tag, &labelled, rounds, seed).await
}

/// One vehicle of a benchmark fleet.
#[derive(Clone)]
struct Vehicle {
    id: String,
    path: PathBuf,
    label: String,
    task: TaskKind,
    /// Its model line (a head of its group's own), if any.
    line: Option<String>,
}

impl Vehicle {
    fn new(id: &str, path: PathBuf, label: &str, task: TaskKind) -> Self {
        Self {
            id: id.to_string(),
            path,
            label: label.to_string(),
            task,
            line: None,
        }
    }
}

/// [`train`] for vehicles that may label different tasks or belong to
/// model lines: one trunk, a head per label and line.
async fn train_tasks(
    work: &Path,
    tag: &str,
    vehicles: &[Vehicle],
    rounds: u64,
    seed: u64,
) -> anyhow::Result<(StoredVersion, Vec<RoundRow>)> {
    let dir = work.join(tag);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let db = dir.join("fleet.db");
    let broker = fleet::LocalBroker::memory(format!("bench-{tag}-{}-{seed}", std::process::id()));
    let server = ServerConfig {
        fleet: "bench".parse().map_err(anyhow::Error::msg)?,
        db: db.clone(),
        broker: fleet::server_broker(&broker),
        rounds: RoundConfig {
            total: rounds,
            min_clients: vehicles.len(),
            min_reports: vehicles.len(),
            sample_fraction: 1.0,
            deadline_secs: 600,
            codec: Pipeline::FP32,
            seed,
            server_lr: SERVER_LR.get().copied().unwrap_or(1.0),
            ..Default::default()
        },
        model: convoy_server::config::ModelConfig {
            hidden: vec![HIDDEN],
            init_seed: seed,
            ..Default::default()
        },
        ..Default::default()
    };
    let agents = vehicles
        .iter()
        .map(|v| {
            // every method trains on all of its rows and is scored on the
            // common test set, so no rows are held out on the vehicles
            let data = DataConfig {
                holdout: 0.0,
                line: v.line.clone(),
                ..DataConfig::new(v.path.clone(), &v.label, v.task)
            };
            Ok((
                fleet::agent_config("bench", &v.id, &broker, dir.join(&v.id), data)?,
                None,
            ))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (rows, summary) =
        fleet::run(server, None, agents, CancellationToken::new(), None, |_| {}).await?;
    anyhow::ensure!(
        rows.iter().all(|r| r.status == "finished") && rows.len() as u64 == rounds,
        "{tag}: not every round finished: {:?}",
        rows.iter()
            .map(|r| (&r.status, r.clients_failed))
            .collect::<Vec<_>>()
    );
    let version = Store::open_existing(&db)?.load_version(&summary.final_version)?;
    Ok((version, rows))
}

fn write(
    dir: &Path,
    name: &str,
    header: &[String],
    rows: &[Vec<String>],
) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{name}.csv"));
    std::fs::write(&path, csv_text(header, rows))?;
    Ok(path)
}

#[derive(Clone, Copy, Default)]
struct Scores {
    accuracy: f64,
    balanced: f64,
    auc: f64,
}

/// One scored test row: p(yes), whether it is `yes`, whether the most
/// probable class is right, and the balanced-accuracy decision.
#[derive(Clone, Copy)]
struct Prediction {
    prob: f64,
    positive: bool,
    correct: bool,
    says_yes: bool,
}

/// `model`'s predictions for `rows`, class `yes` positive. With ~92 % `yes`
/// the most probable class is nearly always `yes`, so the balanced-accuracy
/// decision is `yes` when p(yes) is above `prior`, the share of `yes` in the
/// rows the model trained on (the decision that maximises balanced accuracy
/// for a calibrated model; a fleet knows it from its statistics round).
fn predict(
    model: &StoredVersion,
    header: &[String],
    rows: &[Vec<String>],
    prior: f64,
) -> anyhow::Result<Vec<Prediction>> {
    predict_with(model, None, header, rows, prior)
}

/// [`predict`] through head `head` (`None`: the first whose label the rows have).
fn predict_with(
    model: &StoredVersion,
    head: Option<usize>,
    header: &[String],
    rows: &[Vec<String>],
    prior: f64,
) -> anyhow::Result<Vec<Prediction>> {
    let table = Table::read(csv_text(header, rows).as_bytes())?;
    let data = Dataset::from_table_for(&table, &model.spec, head)?;
    let device = Device::flex();
    let mlp = Mlp::from_params(&model.spec, &model.params, &device)?;
    let head = &model.spec.heads[data.head()];
    let positive = head
        .classes
        .iter()
        .position(|c| c == "yes")
        .context("no class yes")?;
    let indices: Vec<usize> = (0..data.len()).collect();
    let batch = data.batch(&indices);
    let (x, y) = convoy_shared::model::to_tensors(batch, &device);
    let logits = mlp.forward(x, data.head()).into_data().convert::<f32>();
    let logits = logits
        .as_slice::<f32>()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let k = head.classes.len();
    let Targets::Classes(labels) = y else {
        anyhow::bail!("classification expected")
    };
    Ok(logits
        .chunks(k)
        .zip(&labels)
        .map(|(row, label)| {
            let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let exp: Vec<f64> = row.iter().map(|v| ((v - max) as f64).exp()).collect();
            let prob = exp[positive] / exp.iter().sum::<f64>();
            let predicted = row
                .iter()
                .enumerate()
                .fold(0, |best, (i, v)| if *v > row[best] { i } else { best });
            Prediction {
                prob,
                positive: *label as usize == positive,
                correct: predicted == *label as usize,
                says_yes: prob >= prior,
            }
        })
        .collect())
}

/// Accuracy, balanced accuracy and ROC AUC of a set of predictions.
fn metrics(predictions: &[Prediction]) -> Scores {
    let (mut tp, mut tn, mut p, mut n) = (0f64, 0f64, 0f64, 0f64);
    for x in predictions {
        if x.positive {
            p += 1.0;
            tp += f64::from(u8::from(x.says_yes));
        } else {
            n += 1.0;
            tn += f64::from(u8::from(!x.says_yes));
        }
    }
    // AUC: probability a random positive outranks a random negative (ties half)
    let mut scored: Vec<(f64, bool)> = predictions.iter().map(|x| (x.prob, x.positive)).collect();
    scored.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut rank_sum, mut i) = (0f64, 0);
    while i < scored.len() {
        let mut j = i;
        while j < scored.len() && scored[j].0 == scored[i].0 {
            j += 1;
        }
        let mid = (i + j + 1) as f64 / 2.0;
        rank_sum += scored[i..j].iter().filter(|s| s.1).count() as f64 * mid;
        i = j;
    }
    let auc = if p > 0.0 && n > 0.0 {
        (rank_sum - p * (p + 1.0) / 2.0) / (p * n)
    } else {
        f64::NAN
    };
    let correct = predictions.iter().filter(|x| x.correct).count();
    Scores {
        accuracy: correct as f64 / predictions.len().max(1) as f64,
        balanced: (tp / p.max(1.0) + tn / n.max(1.0)) / 2.0,
        auc,
    }
}

/// Share of rows labelled `yes` (label last).
fn yes_share(rows: &[Vec<String>]) -> f64 {
    let yes = rows
        .iter()
        .filter(|r| r.last().is_some_and(|l| l == "yes"))
        .count();
    yes as f64 / rows.len().max(1) as f64
}

fn mean_sd(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = if values.len() > 1 {
        values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

fn pm(values: &[f64], scale: f64) -> String {
    let (m, s) = mean_sd(values);
    format!("{:.2} ± {:.2}", m * scale, s * scale)
}

/// Per method: pooled scores per seed, per-company scores per seed, bytes per round.
#[derive(Default)]
struct Tally {
    pooled: Vec<Scores>,
    per_client: Vec<Vec<Scores>>,
    bytes_per_round: Vec<f64>,
}

fn bytes_per_round(rows: &[RoundRow]) -> f64 {
    rows.iter()
        .map(|r| (r.bytes_up + r.bytes_down) as f64)
        .sum::<f64>()
        / rows.len().max(1) as f64
}

async fn classification(
    work: &Path,
    seeds: &[u64],
    rounds: u64,
    gaps: Option<f64>,
) -> anyhow::Result<()> {
    let methods = [
        "(a) each company alone",
        "(b) shared columns only",
        "(c) convoy, aligned",
        "(d) centralised",
        "(e) one fleet per group",
        "(f) shared trunk, a head per group",
    ];
    let mut tallies: Vec<Tally> = (0..methods.len()).map(|_| Tally::default()).collect();
    let started = Instant::now();
    for &seed in seeds {
        let mut rng = StdRng::seed_from_u64(seed ^ 0xb1a4);
        let mut clients = Vec::new();
        for name in COMPANIES {
            let (header, rows) =
                read_rows(&shared_data(&format!("taxi/heterogeneous/{name}.csv"))?)?;
            let mut c = split(name, header, rows, seed);
            if let Some(share) = gaps {
                blank(&mut c.train, share, &mut rng);
                blank(&mut c.test, share, &mut rng);
            }
            clients.push(c);
        }
        let dir = work.join(format!("seed-{seed}"));
        let union: Vec<String> = ["distance", "local", "dow", "month", "hour", "tip"]
            .map(String::from)
            .to_vec();
        let shared_cols: Vec<String> = ["local", "tip"].map(String::from).to_vec();
        let pooled_test: Vec<Vec<String>> = clients
            .iter()
            .flat_map(|c| project(&c.header, &c.test, &union))
            .collect();
        let vehicles =
            |cols: Option<&[String]>, sub: &str| -> anyhow::Result<Vec<(String, PathBuf)>> {
                clients
                    .iter()
                    .map(|c| {
                        let (h, rows) = match cols {
                            Some(cols) => (cols.to_vec(), project(&c.header, &c.train, cols)),
                            None => (c.header.clone(), c.train.clone()),
                        };
                        Ok((
                            c.name.replace('_', "-"),
                            write(&dir.join(format!("data-{sub}")), &c.name, &h, &rows)?,
                        ))
                    })
                    .collect()
            };
        let all_train: Vec<Vec<String>> = clients.iter().flat_map(|c| c.train.clone()).collect();
        let pooled_prior = yes_share(&all_train);
        // `owner(i)`: the model that serves company i. Pooled scores are
        // each company's test rows scored by its model, except for (a),
        // where every company's model is scored on all test rows and the
        // scores averaged.
        let mut evaluate_heads = |method: usize,
                                  models: &[StoredVersion],
                                  priors: &[f64],
                                  owner: &dyn Fn(usize) -> usize,
                                  head: &dyn Fn(usize) -> Option<usize>,
                                  rows: &[RoundRow]|
         -> anyhow::Result<()> {
            let t = &mut tallies[method];
            let mut per = Vec::new();
            let mut served = Vec::new();
            for (i, c) in clients.iter().enumerate() {
                let m = owner(i);
                let p = predict_with(&models[m], head(i), &c.header, &c.test, priors[m])?;
                per.push(metrics(&p));
                served.extend(p);
            }
            t.pooled.push(if method == 0 {
                let each: Vec<Scores> = models
                    .iter()
                    .zip(priors)
                    .map(|(m, prior)| Ok(metrics(&predict(m, &union, &pooled_test, *prior)?)))
                    .collect::<anyhow::Result<_>>()?;
                let mean =
                    |f: fn(&Scores) -> f64| each.iter().map(f).sum::<f64>() / each.len() as f64;
                Scores {
                    accuracy: mean(|s| s.accuracy),
                    balanced: mean(|s| s.balanced),
                    auc: mean(|s| s.auc),
                }
            } else {
                metrics(&served)
            });
            t.per_client.push(per);
            t.bytes_per_round.push(bytes_per_round(rows));
            Ok(())
        };
        let mut evaluate = |method: usize,
                            models: &[StoredVersion],
                            priors: &[f64],
                            owner: &dyn Fn(usize) -> usize,
                            rows: &[RoundRow]|
         -> anyhow::Result<()> {
            evaluate_heads(method, models, priors, owner, &|_| None, rows)
        };
        // (a) alone
        let alone = vehicles(None, "alone")?;
        let mut models = Vec::new();
        let mut ledger = Vec::new();
        for v in &alone {
            let (m, rows) = train(
                &dir,
                &format!("alone-{}", v.0),
                std::slice::from_ref(v),
                "tip",
                TaskKind::Classification,
                rounds,
                seed,
            )
            .await?;
            models.push(m);
            ledger.extend(rows);
        }
        let own_priors: Vec<f64> = clients.iter().map(|c| yes_share(&c.train)).collect();
        evaluate(0, &models, &own_priors, &|i| i, &ledger)?;
        // (b) naive federation on the shared columns
        let naive = vehicles(Some(&shared_cols), "shared")?;
        let (m, rows) = train(
            &dir,
            "shared",
            &naive,
            "tip",
            TaskKind::Classification,
            rounds,
            seed,
        )
        .await?;
        evaluate(1, std::slice::from_ref(&m), &[pooled_prior], &|_| 0, &rows)?;
        // (c) convoy with alignment
        let fleet = vehicles(None, "fleet")?;
        let (m, rows) = train(
            &dir,
            "fleet",
            &fleet,
            "tip",
            TaskKind::Classification,
            rounds,
            seed,
        )
        .await?;
        evaluate(2, std::slice::from_ref(&m), &[pooled_prior], &|_| 0, &rows)?;
        // (d) one vehicle with every training row
        let all: Vec<Vec<String>> = clients
            .iter()
            .flat_map(|c| project(&c.header, &c.train, &union))
            .collect();
        let central = vec![(
            "central".to_string(),
            write(&dir.join("data-central"), "all", &union, &all)?,
        )];
        let (m, rows) = train(
            &dir,
            "central",
            &central,
            "tip",
            TaskKind::Classification,
            rounds,
            seed,
        )
        .await?;
        evaluate(3, std::slice::from_ref(&m), &[pooled_prior], &|_| 0, &rows)?;
        // (e) one fleet per group of companies that log the same columns
        // (a model line per car model), sharing nothing
        let group_of = |name: &str| name.split('_').nth(1).unwrap_or("").to_string();
        let mut groups: Vec<String> = clients.iter().map(|c| group_of(&c.name)).collect();
        groups.dedup();
        let (mut line_models, mut line_priors, mut line_rows) =
            (Vec::new(), Vec::new(), Vec::new());
        for g in &groups {
            let members: Vec<(String, PathBuf)> = fleet
                .iter()
                .zip(&clients)
                .filter(|(_, c)| group_of(&c.name) == *g)
                .map(|(v, _)| v.clone())
                .collect();
            let tag = format!("line-{g}");
            let (m, rows) = train(
                &dir,
                &tag,
                &members,
                "tip",
                TaskKind::Classification,
                rounds,
                seed,
            )
            .await?;
            let train_rows: Vec<Vec<String>> = clients
                .iter()
                .filter(|c| group_of(&c.name) == *g)
                .flat_map(|c| c.train.clone())
                .collect();
            line_models.push(m);
            line_priors.push(yes_share(&train_rows));
            line_rows.extend(rows);
        }
        let owner = |i: usize| {
            let g = group_of(&clients[i].name);
            groups.iter().position(|x| *x == g).unwrap_or(0)
        };
        evaluate(4, &line_models, &line_priors, &owner, &line_rows)?;
        // (f) one fleet whose groups are model lines: the trunk is shared,
        // each group trains an output head of its own
        let lined: Vec<Vehicle> = fleet
            .iter()
            .zip(&clients)
            .map(|((id, path), c)| Vehicle {
                line: Some(group_of(&c.name)),
                ..Vehicle::new(id, path.clone(), "tip", TaskKind::Classification)
            })
            .collect();
        let (m, rows) = train_tasks(&dir, "lines", &lined, rounds, seed).await?;
        anyhow::ensure!(m.spec.heads.len() == groups.len(), "a head per group");
        let head_of = |i: usize| m.spec.head_of("tip", Some(&group_of(&clients[i].name)));
        let priors: Vec<f64> = (0..clients.len()).map(|i| line_priors[owner(i)]).collect();
        // one "model" per company so each is scored with its group's prior
        let models: Vec<StoredVersion> = (0..clients.len()).map(|_| m.clone()).collect();
        evaluate_heads(5, &models, &priors, &|i| i, &head_of, &rows)?;
        eprintln!(
            "seed {seed} done ({:.0} s)",
            started.elapsed().as_secs_f64()
        );
    }
    let title = match gaps {
        None => "Different columns".to_string(),
        Some(s) => format!("Missing cells ({:.0} % of feature cells blank)", s * 100.0),
    };
    println!("\n### {title}: pooled test set, mean ± sd over seeds {seeds:?}\n");
    println!("| method | accuracy % | balanced accuracy % | ROC AUC | bytes per round |");
    println!("|---|---:|---:|---:|---:|");
    for (name, t) in methods.iter().zip(&tallies) {
        let col = |f: fn(&Scores) -> f64| t.pooled.iter().map(f).collect::<Vec<_>>();
        println!(
            "| {name} | {} | {} | {} | {:.0} |",
            pm(&col(|s| s.accuracy), 100.0),
            pm(&col(|s| s.balanced), 100.0),
            pm(&col(|s| s.auc), 1.0),
            mean_sd(&t.bytes_per_round).0
        );
    }
    println!(
        "\nPer company, balanced accuracy % (ROC AUC), mean over seeds; (a) is the company's own model, (e) and (f) its group's\n"
    );
    println!("| company | test rows | {} |", methods.join(" | "));
    println!("|---|---:|{}", "---:|".repeat(methods.len()));
    for (i, name) in COMPANIES.iter().enumerate() {
        let cells: Vec<String> = tallies
            .iter()
            .map(|t| {
                let b: Vec<f64> = t.per_client.iter().map(|p| p[i].balanced).collect();
                let a: Vec<f64> = t.per_client.iter().map(|p| p[i].auc).collect();
                format!("{:.1} ({:.3})", mean_sd(&b).0 * 100.0, mean_sd(&a).0)
            })
            .collect();
        let (_, rows) = read_rows(&shared_data(&format!("taxi/heterogeneous/{name}.csv"))?)?;
        println!(
            "| {name} | {} | {} |",
            rows.len() - rows.len() * 4 / 5,
            cells.join(" | ")
        );
    }
    Ok(())
}

/// Ridge regression in closed form on encoded features (bias unpenalised).
fn ridge(train: &Dataset, targets: &[f64], lambda: f64) -> Vec<f64> {
    let d = train.dims() + 1;
    let mut a = vec![0f64; d * d];
    let mut b = vec![0f64; d];
    let all: Vec<usize> = (0..train.len()).collect();
    let batch = train.batch(&all);
    for (row, y) in batch.features.chunks(train.dims()).zip(targets) {
        let x: Vec<f64> = row.iter().map(|v| *v as f64).chain([1.0]).collect();
        for i in 0..d {
            b[i] += x[i] * y;
            for j in 0..d {
                a[i * d + j] += x[i] * x[j];
            }
        }
    }
    for i in 0..d - 1 {
        a[i * d + i] += lambda;
    }
    // Gaussian elimination with partial pivoting
    for col in 0..d {
        let pivot = (col..d)
            .max_by(|x, y| a[x * d + col].abs().total_cmp(&a[y * d + col].abs()))
            .unwrap_or(col);
        for k in 0..d {
            a.swap(col * d + k, pivot * d + k);
        }
        b.swap(col, pivot);
        let p = a[col * d + col];
        if p.abs() < 1e-12 {
            continue;
        }
        for r in 0..d {
            if r != col {
                let f = a[r * d + col] / p;
                for k in 0..d {
                    a[r * d + k] -= f * a[col * d + k];
                }
                b[r] -= f * b[col];
            }
        }
    }
    (0..d)
        .map(|i| {
            if a[i * d + i].abs() < 1e-12 {
                0.0
            } else {
                b[i] / a[i * d + i]
            }
        })
        .collect()
}

async fn regression(work: &Path, seeds: &[u64], rounds: u64) -> anyhow::Result<()> {
    let names = [
        "taxi_affiliation_services",
        "flash_cab",
        "other",
        "sun_taxi",
        "chicago_independents",
        "city_service",
        "taxicab_insurance_agency_llc",
    ];
    let header: Vec<String> = ["local", "dow", "month", "hour", "distance_cmi"]
        .map(String::from)
        .to_vec();
    let (mut fleet_rmse, mut ridge_rmse, mut target_sd, mut bytes, mut failed) =
        (vec![], vec![], vec![], vec![], 0u64);
    for &seed in seeds {
        let dir = work.join(format!("regression-{seed}"));
        let mut vehicles = Vec::new();
        let (mut train_rows, mut test_rows) = (Vec::new(), Vec::new());
        for name in names {
            let (h, rows) = read_rows(&shared_data(&format!("taxi/{name}.csv"))?)?;
            // distance (miles) becomes the target, in hundredths of a mile
            let rows: Vec<Vec<String>> = rows
                .into_iter()
                .map(|r| {
                    let miles: f64 = r[0].parse().unwrap_or(0.0);
                    vec![
                        r[1].clone(),
                        r[2].clone(),
                        r[3].clone(),
                        r[4].clone(),
                        format!("{}", (miles * 100.0).round()),
                    ]
                })
                .collect();
            anyhow::ensure!(h[0] == "distance", "taxi/{name}.csv: distance first");
            let c = split(name, header.clone(), rows, seed);
            vehicles.push((
                name.replace('_', "-"),
                write(&dir.join("data-fleet"), name, &header, &c.train)?,
            ));
            train_rows.extend(c.train);
            test_rows.extend(c.test);
        }
        let (model, rows) = train(
            &dir,
            "fleet",
            &vehicles,
            "distance_cmi",
            TaskKind::Regression,
            rounds,
            seed,
        )
        .await?;
        failed += rows.iter().map(|r| r.clients_failed).sum::<u64>();
        bytes.push(bytes_per_round(&rows));
        let test = Dataset::from_table(
            &Table::read(csv_text(&header, &test_rows).as_bytes())?,
            &model.spec,
        )?;
        let eval =
            convoy_shared::eval::evaluate(&model.spec, &model.params, &test, &Device::flex())?;
        fleet_rmse.push(eval.rmse.context("rmse")?);
        // the centralised ridge sees the same rows, encoded by the same pipeline
        let train_table = Table::read(csv_text(&header, &train_rows).as_bytes())?;
        let central =
            train_table.derive_spec("distance_cmi", TaskKind::Regression, vec![], seed)?;
        let train_data = Dataset::from_table(&train_table, &central)?;
        let test_data = Dataset::from_table(
            &Table::read(csv_text(&header, &test_rows).as_bytes())?,
            &central,
        )?;
        let unscale = |d: &Dataset| -> Vec<f64> {
            let Targets::Values(v) = d.targets() else {
                return vec![];
            };
            v.iter()
                .map(|t| {
                    let target = central.primary().target;
                    (*t * target.std + target.mean) as f64
                })
                .collect()
        };
        let (y_train, y_test) = (unscale(&train_data), unscale(&test_data));
        let w = ridge(&train_data, &y_train, 1.0);
        let all: Vec<usize> = (0..test_data.len()).collect();
        let batch = test_data.batch(&all);
        let sq: f64 = batch
            .features
            .chunks(test_data.dims())
            .zip(&y_test)
            .map(|(x, y)| {
                let p: f64 =
                    x.iter().zip(&w).map(|(a, b)| *a as f64 * b).sum::<f64>() + w[w.len() - 1];
                (p - y).powi(2)
            })
            .sum();
        ridge_rmse.push((sq / y_test.len() as f64).sqrt());
        target_sd.push(mean_sd(&y_test).1);
        eprintln!("regression seed {seed} done");
    }
    println!(
        "\n### Raw regression: distance in hundredths of a mile, mean ± sd over seeds {seeds:?}\n"
    );
    println!("| model | test RMSE | vs ridge | failed vehicle-rounds | bytes per round |");
    println!("|---|---:|---:|---:|---:|");
    let ratio: Vec<f64> = fleet_rmse
        .iter()
        .zip(&ridge_rmse)
        .map(|(f, r)| f / r - 1.0)
        .collect();
    println!(
        "| convoy fleet, default recipe ({HIDDEN} hidden) | {} | {} % | {failed} | {:.0} |",
        pm(&fleet_rmse, 1.0),
        pm(&ratio, 100.0),
        mean_sd(&bytes).0
    );
    println!(
        "| centralised ridge (λ = 1) | {} | | | |",
        pm(&ridge_rmse, 1.0)
    );
    println!("| (test target sd) | {} | | | |", pm(&target_sd, 1.0));
    Ok(())
}

/// RMSE of `model` on `rows` (the head whose label `header` holds), in the
/// target's units.
fn rmse_on(model: &StoredVersion, header: &[String], rows: &[Vec<String>]) -> anyhow::Result<f64> {
    let test = Dataset::from_table(
        &Table::read(csv_text(header, rows).as_bytes())?,
        &model.spec,
    )?;
    let eval = convoy_shared::eval::evaluate(&model.spec, &model.params, &test, &Device::flex())?;
    eval.rmse.context("a regression head")
}

async fn mixed(work: &Path, seeds: &[u64], rounds: u64) -> anyhow::Result<()> {
    const TIP: [&str; 4] = [
        "taxi_affiliation_services",
        "flash_cab",
        "other",
        "sun_taxi",
    ];
    const DISTANCE: [&str; 3] = [
        "chicago_independents",
        "city_service",
        "taxicab_insurance_agency_llc",
    ];
    let inputs = ["local", "dow", "month", "hour"];
    let with = |label: &str| -> Vec<String> {
        inputs
            .iter()
            .chain([&label])
            .map(|c| c.to_string())
            .collect()
    };
    let (tip_header, distance_header) = (with("tip"), with("distance"));
    #[derive(Default)]
    struct Method {
        tip: Vec<Scores>,
        rmse: Vec<f64>,
        /// Bytes per round of the fleet that trains tip (the whole mixed
        /// fleet for the shared method).
        tip_bytes: Vec<f64>,
        /// Bytes per round of the distance fleet (none when shared).
        distance_bytes: Vec<f64>,
    }
    let (mut alone, mut shared) = (Method::default(), Method::default());
    let mut distance_sd = Vec::new();
    for &seed in seeds {
        let dir = work.join(format!("mixed-{seed}"));
        let mut tip_vehicles = Vec::new();
        let mut distance_vehicles = Vec::new();
        let (mut tip_test, mut distance_test, mut tip_train) = (vec![], vec![], vec![]);
        for name in TIP.iter().chain(&DISTANCE) {
            let (header, rows) = read_rows(&shared_data(&format!("taxi/{name}.csv"))?)?;
            let c = split(name, header.clone(), rows, seed);
            // every company's test rows score both tasks
            tip_test.extend(project(&header, &c.test, &tip_header));
            distance_test.extend(project(&header, &c.test, &distance_header));
            let id = name.replace('_', "-");
            if TIP.contains(name) {
                let train = project(&header, &c.train, &tip_header);
                tip_train.extend(train.clone());
                let path = write(&dir.join("data"), name, &tip_header, &train)?;
                tip_vehicles.push(Vehicle::new(&id, path, "tip", TaskKind::Classification));
            } else {
                let train = project(&header, &c.train, &distance_header);
                let path = write(&dir.join("data"), name, &distance_header, &train)?;
                distance_vehicles.push(Vehicle::new(&id, path, "distance", TaskKind::Regression));
            }
        }
        let prior = yes_share(&tip_train);
        let score_tip = |model: &StoredVersion| -> anyhow::Result<Scores> {
            Ok(metrics(&predict(model, &tip_header, &tip_test, prior)?))
        };
        let (tip_model, tip_rows) =
            train_tasks(&dir, "tip-alone", &tip_vehicles, rounds, seed).await?;
        alone.tip.push(score_tip(&tip_model)?);
        alone.tip_bytes.push(bytes_per_round(&tip_rows));
        let (distance_model, distance_rows) =
            train_tasks(&dir, "distance-alone", &distance_vehicles, rounds, seed).await?;
        alone
            .rmse
            .push(rmse_on(&distance_model, &distance_header, &distance_test)?);
        alone.distance_bytes.push(bytes_per_round(&distance_rows));
        let everyone: Vec<_> = tip_vehicles
            .iter()
            .chain(&distance_vehicles)
            .cloned()
            .collect();
        let (model, rows) = train_tasks(&dir, "mixed", &everyone, rounds, seed).await?;
        anyhow::ensure!(model.spec.heads.len() == 2, "one head per task");
        shared.tip.push(score_tip(&model)?);
        shared
            .rmse
            .push(rmse_on(&model, &distance_header, &distance_test)?);
        // one fleet trains both tasks: its bytes are all of them
        shared.tip_bytes.push(bytes_per_round(&rows));
        let targets: Vec<f64> = distance_test
            .iter()
            .filter_map(|r| r.last().and_then(|v| v.parse().ok()))
            .collect();
        distance_sd.push(mean_sd(&targets).1);
        eprintln!("mixed seed {seed} done");
    }
    println!(
        "\n### Mixed tasks: tip (4 companies) and distance (3 companies), mean ± sd over seeds {seeds:?}\n"
    );
    println!(
        "| method | tip accuracy % | tip balanced accuracy % | tip ROC AUC | distance RMSE (miles) | bytes per round |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    let tip = |m: &Method, f: fn(&Scores) -> f64, scale: f64| {
        pm(&m.tip.iter().map(f).collect::<Vec<_>>(), scale)
    };
    let sum: Vec<f64> = alone
        .tip_bytes
        .iter()
        .zip(&alone.distance_bytes)
        .map(|(a, b)| a + b)
        .collect();
    println!(
        "| each task federated alone (two fleets, one head each) | {} | {} | {} | {} | {:.0} + {:.0} |",
        tip(&alone, |s| s.accuracy, 100.0),
        tip(&alone, |s| s.balanced, 100.0),
        tip(&alone, |s| s.auc, 1.0),
        pm(&alone.rmse, 1.0),
        mean_sd(&alone.tip_bytes).0,
        mean_sd(&alone.distance_bytes).0,
    );
    println!(
        "| one fleet, shared trunk, a head per task | {} | {} | {} | {} | {:.0} (two fleets: {:.0}) |",
        tip(&shared, |s| s.accuracy, 100.0),
        tip(&shared, |s| s.balanced, 100.0),
        tip(&shared, |s| s.auc, 1.0),
        pm(&shared.rmse, 1.0),
        mean_sd(&shared.tip_bytes).0,
        mean_sd(&sum).0,
    );
    println!("| (test distance sd) | | | | {} | |", pm(&distance_sd, 1.0));
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    if std::env::var_os("RUST_LOG").is_some() {
        convoy_tests::init_tracing();
    }
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let seeds: Vec<u64> = value("--seeds")
        .unwrap_or_else(|| "42,1,2".into())
        .split(',')
        .map(|s| s.parse())
        .collect::<Result<_, _>>()?;
    let rounds: u64 = value("--rounds")
        .map(|r| r.parse())
        .transpose()?
        .unwrap_or(20);
    let only = value("--only");
    if let Some(lr) = value("--server-lr") {
        let _ = SERVER_LR.set(lr.parse()?);
    }
    let work = tempfile::tempdir()?;
    println!(
        "convoy heterogeneous-fleet benchmark: taxi data, {rounds} rounds of 1 epoch, MLP hidden {HIDDEN}, SGD lr 0.05, batch 32, fp32 codec, server lr {}, seeds {seeds:?}",
        SERVER_LR.get().copied().unwrap_or(1.0)
    );
    let wants = |name: &str| only.as_deref().is_none_or(|o| o == name);
    if wants("columns") {
        classification(work.path(), &seeds, rounds, None).await?;
    }
    if wants("missing") {
        classification(work.path(), &seeds, rounds, Some(0.2)).await?;
    }
    if wants("mixed") {
        mixed(work.path(), &seeds, rounds).await?;
    }
    if wants("regression") {
        regression(work.path(), &seeds, rounds).await?;
    }
    Ok(())
}
