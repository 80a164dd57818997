//! Heterogeneous fleets end to end: vehicles with different columns, gaps
//! and text categories align one model through the schema and statistics
//! rounds, with a server that is given no data at all.

use convoy_tests::api::{DataConfig, RoundRow, ServerConfig, TaskKind};
use convoy_tests::*;
use std::path::{Path, PathBuf};

const HETEROGENEOUS: [&str; 3] = [
    "taxi/heterogeneous/group_a_flash_cab.csv", // no hour
    "taxi/heterogeneous/group_b_chicago_independents.csv", // no distance
    "taxi/heterogeneous/group_c_city_service.csv", // no dow, month
];

/// `source` with every `every`-th feature cell (label kept) blanked, as a
/// sensor dropping out would leave it.
fn with_gaps(source: &Path, out: &Path, every: usize) -> anyhow::Result<PathBuf> {
    let text = std::fs::read_to_string(source)?;
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let width = header.split(',').count();
    let mut written = format!("{header}\n");
    let mut n = 0;
    for line in lines {
        let cells: Vec<String> = line
            .split(',')
            .enumerate()
            .map(|(c, cell)| {
                n += 1;
                if c + 1 < width && n % every == 0 {
                    String::new()
                } else {
                    cell.to_string()
                }
            })
            .collect();
        written.push_str(&cells.join(","));
        written.push('\n');
    }
    std::fs::write(out, written)?;
    Ok(out.to_path_buf())
}

/// The share of `csv`'s rows whose `label` is its most frequent value.
fn majority_share(csv: &Path, label: &str) -> anyhow::Result<f64> {
    let text = std::fs::read_to_string(csv)?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let column = header
        .iter()
        .position(|h| *h == label)
        .ok_or_else(|| anyhow::anyhow!("{} has no column {label}", csv.display()))?;
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for line in lines {
        if let Some(value) = line.split(',').nth(column) {
            *counts.entry(value.to_string()).or_default() += 1;
        }
    }
    let total: usize = counts.values().sum();
    let most = counts.values().max().copied().unwrap_or(0);
    anyhow::ensure!(total > 0, "{} has no rows", csv.display());
    Ok(most as f64 / total as f64)
}

/// A server config with no schema and no data: only the model's shape.
fn aligning(server: &mut ServerConfig, test_csv: PathBuf) {
    server.model = Default::default();
    server.model.hidden = vec![16];
    server.eval.test_csv = Some(test_csv);
}

/// Runs `n` rounds of `fleet` to the end: every one finished with all of
/// `vehicles` reporting, none failing, and no message rejected.
async fn clean_rounds(fleet: &mut Fleet, n: usize, vehicles: u64) -> anyhow::Result<Vec<RoundRow>> {
    let rounds = fleet.next_rounds(n, 120).await?;
    let summary = fleet.finish().await?;
    assert!(summary.rejections.is_empty(), "{:?}", summary.rejections);
    for r in &rounds {
        assert_eq!(
            (r.status.as_str(), r.clients_reported, r.clients_failed),
            ("finished", vehicles, 0),
            "{r:#?}"
        );
    }
    Ok(rounds)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vehicles_with_different_columns_and_gaps_align_and_learn() -> anyhow::Result<()> {
    init_tracing();
    let builder = Fleet::digits("align_heterogeneous", 3, 5)?.rounds(3);
    let gappy = with_gaps(
        &shared_data(HETEROGENEOUS[2])?,
        &builder.dir().join("city_service_gaps.csv"),
        5,
    )?;
    let mut paths: Vec<PathBuf> = HETEROGENEOUS[..2]
        .iter()
        .map(|p| shared_data(p))
        .collect::<anyhow::Result<_>>()?;
    paths.push(gappy);
    let test_csv = shared_data("taxi/other.csv")?;
    let test_csv_path = test_csv.clone();
    let mut builder = builder.server(|s| aligning(s, test_csv));
    for (i, path) in paths.into_iter().enumerate() {
        builder = builder.agent(i, |a| {
            a.data = DataConfig::new(path, "tip", TaskKind::Classification);
            // car-0 keeps a personalised head as well
            a.training.personal_steps = if i == 0 { 20 } else { 0 };
        });
    }
    let mut fleet = builder.start().await?;
    let rounds = clean_rounds(&mut fleet, 3, 3).await?;
    // Most rides tip: a model that always says "yes" scores the majority
    // share. Learning shows in the loss and on the vehicles' own rows.
    let majority = majority_share(&test_csv_path, "tip")?;
    for r in &rounds {
        println!(
            "round {}: accuracy {:?} (majority {majority:.4}), eval loss {:?}, on the vehicles {:?}",
            r.round, r.accuracy, r.eval_loss, r.holdout_accuracy
        );
        assert!(
            r.accuracy.is_some_and(|a| a >= majority - 1e-9),
            "worse than always answering the majority: {r:#?}"
        );
        // every vehicle scored the round's base model on its own held-out
        // rows; round 1's base is the untrained initial model
        assert!(
            r.holdout_samples > 0 && r.holdout_accuracy.is_some(),
            "{r:#?}"
        );
    }
    let eval_loss = |i: usize| rounds[i].eval_loss.expect("evaluated");
    assert!(
        eval_loss(2) < eval_loss(0),
        "the test loss fell over the rounds: {:?}",
        rounds.iter().map(|r| r.eval_loss).collect::<Vec<_>>()
    );
    let untrained = rounds[0].holdout_accuracy.unwrap_or(1.0);
    for r in &rounds[1..] {
        assert!(
            r.holdout_accuracy.is_some_and(|a| a > untrained + 0.2),
            "a trained base scores better on the vehicles' rows than the initial model ({untrained}): {r:#?}"
        );
    }
    let car = &fleet.store()?.clients(1)?[0];
    assert!(
        car.holdout_samples > 0 && car.holdout_accuracy.is_some(),
        "{car:#?}"
    );

    // The stored model's pipeline is the union of the vehicles' columns.
    let store = fleet.store()?;
    let version = store.load_version(&rounds[0].base_version)?;
    let spec = &version.spec;
    assert_eq!(
        spec.feature_names(),
        ["distance", "dow", "hour", "local", "month"]
    );
    assert_eq!(spec.primary().classes, ["no", "yes"]);
    use convoy_tests::api::Encoding;
    for f in &spec.features {
        match (f.name.as_str(), &f.encoding) {
            // every numeric column is missing somewhere: a presence input
            ("distance" | "hour", Encoding::Numeric { mask, .. }) => assert!(mask, "{f:?}"),
            ("dow", Encoding::Categorical { vocabulary }) => assert_eq!(vocabulary.len(), 7),
            ("month", Encoding::Categorical { vocabulary }) => assert_eq!(vocabulary.len(), 4),
            ("local", Encoding::Categorical { vocabulary }) => {
                let mut v = vocabulary.clone();
                v.sort();
                assert_eq!(v, ["no", "yes"]);
            }
            other => panic!("unexpected encoding {other:?}"),
        }
    }
    // distance: 2 + 1 masked numbers; dow 7+1, hour 2, local 2+1, month 4+1
    assert_eq!(spec.inputs(), 2 + 8 + 2 + 3 + 5);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_column_types_stop_alignment_naming_the_vehicles() -> anyhow::Result<()> {
    init_tracing();
    let builder = Fleet::digits("align_conflict", 2, 5)?;
    let numeric = builder.dir().join("numeric.csv");
    let text = builder.dir().join("text.csv");
    std::fs::write(&numeric, "hour,tip\n7,yes\n8,no\n9,yes\n")?;
    std::fs::write(&text, "hour,tip\n7am,yes\n8am,no\n9am,yes\n")?;
    let test_csv = numeric.clone();
    let mut builder = builder.server(|s| aligning(s, test_csv));
    for (i, path) in [numeric, text].into_iter().enumerate() {
        builder = builder.agent(i, |a| {
            a.data = DataConfig::new(path, "tip", TaskKind::Classification)
        });
    }
    let mut fleet = builder.start().await?;
    let err = fleet
        .server_finished()
        .await
        .expect_err("alignment must fail");
    let err = format!("{err:#}");
    assert!(
        err.contains("\"hour\" is numeric on car-0 but text on car-1")
            && err.contains("align.categorical"),
        "{err}"
    );
    Ok(())
}

/// Trip distance in hundredths of a mile (values in the hundreds) from the
/// other columns: the unscaled target the old recipe diverged on.
fn hundredths(source: &Path, out: &Path) -> anyhow::Result<(PathBuf, Vec<f64>)> {
    let text = std::fs::read_to_string(source)?;
    let mut written = String::from("local,dow,month,hour,distance_cmi\n");
    let mut targets = Vec::new();
    for line in text.lines().skip(1) {
        let c: Vec<&str> = line.split(',').collect();
        let target = (c[0].parse::<f64>()? * 100.0).round();
        targets.push(target);
        written.push_str(&format!("{},{},{},{},{target}\n", c[1], c[2], c[3], c[4]));
    }
    std::fs::write(out, written)?;
    Ok((out.to_path_buf(), targets))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unscaled_regression_trains_with_the_default_recipe() -> anyhow::Result<()> {
    init_tracing();
    let builder = Fleet::digits("align_regression", 2, 5)?.rounds(4);
    let dir = builder.dir().to_path_buf();
    let (test_csv, test_targets) =
        hundredths(&shared_data("taxi/other.csv")?, &dir.join("test.csv"))?;
    let mut builder = builder.server(|s| aligning(s, test_csv));
    for (i, company) in ["flash_cab", "sun_taxi"].into_iter().enumerate() {
        let (path, _) = hundredths(
            &shared_data(&format!("taxi/{company}.csv"))?,
            &dir.join(format!("{company}.csv")),
        )?;
        builder = builder.agent(i, |a| {
            a.data = DataConfig::new(path, "distance_cmi", TaskKind::Regression)
        });
    }
    let mut fleet = builder.start().await?;
    let rounds = fleet.next_rounds(4, 120).await?;
    fleet.finish().await?;
    let mean = test_targets.iter().sum::<f64>() / test_targets.len() as f64;
    let std = (test_targets.iter().map(|t| (t - mean).powi(2)).sum::<f64>()
        / test_targets.len() as f64)
        .sqrt();
    assert!(std > 100.0, "the target is unscaled: std {std}");
    for r in &rounds {
        assert_eq!(
            (r.status.as_str(), r.clients_failed),
            ("finished", 0),
            "no divergence: {r:#?}"
        );
    }
    let rmse = rounds[3].rmse.expect("evaluated");
    let on_vehicles = rounds[3].holdout_rmse.expect("scored on the vehicles");
    assert!(
        on_vehicles.is_finite() && on_vehicles < 2.0 * std,
        "{on_vehicles}"
    );
    assert!(
        rmse.is_finite() && rmse < std,
        "RMSE {rmse} should beat predicting the mean ({std})"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classification_and_regression_vehicles_train_one_trunk() -> anyhow::Result<()> {
    init_tracing();
    let builder = Fleet::digits("align_mixed_tasks", 3, 5)?.rounds(3);
    let test_csv = shared_data("taxi/other.csv")?;
    let mut builder = builder.server(|s| aligning(s, test_csv));
    // two vehicles classify tip; the third regresses distance and logs tip
    // too, which must not become an input
    let tasks = [
        (HETEROGENEOUS[0], "tip", TaskKind::Classification),
        (HETEROGENEOUS[1], "tip", TaskKind::Classification),
        (HETEROGENEOUS[2], "distance", TaskKind::Regression),
    ];
    for (i, (path, label, task)) in tasks.into_iter().enumerate() {
        let path = shared_data(path)?;
        builder = builder.agent(i, |a| a.data = DataConfig::new(path, label, task));
    }
    let mut fleet = builder.start().await?;
    let rounds = clean_rounds(&mut fleet, 3, 3).await?;
    let store = fleet.store()?;
    let spec = store.load_version(&rounds[0].base_version)?.spec;
    let heads: Vec<(&str, TaskKind)> = spec
        .heads
        .iter()
        .map(|h| (h.label.as_str(), h.task))
        .collect();
    assert_eq!(
        heads,
        [
            ("distance", TaskKind::Regression),
            ("tip", TaskKind::Classification)
        ]
    );
    // no label is an input: distance is learnt, not read
    assert_eq!(spec.feature_names(), ["dow", "hour", "local", "month"]);
    // the regression target's scale comes from the one vehicle that has it
    assert!(spec.heads[0].target.std > 0.5, "{:?}", spec.heads[0].target);

    // each task's metric per round, from the ledger
    let tasks = store.task_metrics()?;
    assert_eq!(
        tasks.len(),
        6,
        "two tasks in each of three rounds: {tasks:#?}"
    );
    for t in &tasks {
        match t.head.as_str() {
            "tip" => {
                assert_eq!(t.clients, 2);
                assert!(t.holdout_accuracy.is_some() && t.holdout_rmse.is_none());
            }
            "distance" => {
                assert_eq!(t.clients, 1);
                assert!(t.holdout_rmse.is_some() && t.holdout_accuracy.is_none());
            }
            other => panic!("unexpected task {other}"),
        }
    }
    let metric = |round: u64, head: &str| {
        tasks
            .iter()
            .find(|t| t.round == round && t.head == head)
            .cloned()
            .expect("a row per task and round")
    };
    // round 1 scored the untrained initial model on the vehicles' rows,
    // round 3 the model two rounds of the shared trunk made
    let (untrained, trained) = (
        metric(1, "tip").holdout_accuracy.unwrap_or(1.0),
        metric(3, "tip").holdout_accuracy.unwrap_or(0.0),
    );
    println!("tip on the vehicles' rows: {untrained:.4} untrained, {trained:.4} after two rounds");
    assert!(
        trained > untrained,
        "the classification head learns: {untrained} -> {trained}"
    );
    let (first, last) = (
        metric(1, "distance").holdout_rmse.unwrap_or(f64::NAN),
        metric(3, "distance").holdout_rmse.unwrap_or(f64::NAN),
    );
    assert!(
        last < first,
        "the regression head learns on the shared trunk: RMSE {first} -> {last}"
    );
    let rows = store.clients(2)?;
    let trained: Vec<(&str, Option<&str>)> = rows
        .iter()
        .map(|c| (c.client.as_str(), c.head.as_deref()))
        .collect();
    assert_eq!(
        trained,
        [
            ("car-0", Some("tip")),
            ("car-1", Some("tip")),
            ("car-2", Some("distance"))
        ]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_lines_train_heads_of_their_own_on_the_shared_trunk() -> anyhow::Result<()> {
    init_tracing();
    let builder = Fleet::digits("align_lines", 3, 5)?.rounds(2);
    let test_csv = shared_data("taxi/other.csv")?;
    let mut builder = builder.server(|s| aligning(s, test_csv));
    let lines = [Some("cab"), Some("cab"), Some("van")];
    for (i, (path, line)) in HETEROGENEOUS.iter().zip(lines).enumerate() {
        let path = shared_data(path)?;
        builder = builder.agent(i, |a| {
            a.data = DataConfig {
                line: line.map(String::from),
                ..DataConfig::new(path, "tip", TaskKind::Classification)
            }
        });
    }
    let mut fleet = builder.start().await?;
    let rounds = clean_rounds(&mut fleet, 2, 3).await?;
    let store = fleet.store()?;
    let first = store.load_version(&rounds[0].base_version)?;
    let last = store.load_version(rounds[1].model_version.as_deref().unwrap_or_default())?;
    let names: Vec<String> = first.spec.heads.iter().map(|h| h.name()).collect();
    assert_eq!(names, ["tip@cab", "tip@van"]);
    // every group moved the trunk and its own head
    let moved = |i: usize| first.params.tensors[i] != last.params.tensors[i];
    assert!(moved(0), "the shared trunk is trained");
    assert!(moved(2) && moved(4), "each line's head is trained");
    let heads: Vec<Option<String>> = store.clients(1)?.into_iter().map(|c| c.head).collect();
    assert_eq!(
        heads,
        [
            Some("tip@cab".into()),
            Some("tip@cab".into()),
            Some("tip@van".into())
        ]
    );
    let per_line: Vec<(String, u64)> = store
        .task_metrics()?
        .into_iter()
        .filter(|t| t.round == 1)
        .map(|t| (t.head, t.clients))
        .collect();
    assert_eq!(per_line, [("tip@cab".into(), 2), ("tip@van".into(), 1)]);
    Ok(())
}
