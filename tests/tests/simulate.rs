//! The fleet simulator and the compressed paths both ways, end to end.

use convoy_tests::api::partition::{self, Partition};
use convoy_tests::api::simulate::{SimOptions, Transport, run};
use tokio_util::sync::CancellationToken;

fn options(out: &std::path::Path, codec: &str, downlink: &str) -> SimOptions {
    convoy_tests::digits_sim(out, codec, downlink)
}

/// Recoverability: every version of a run with a lossy, error-fed downlink
/// and a keyframe round rebuilds to its own id by every route: its stored
/// weights (keyframes), the nearest keyframe plus deltas, and the seeded
/// initial model plus every round's client updates re-aggregated, under
/// each aggregation rule (FedAvg streams from round 2; the others hold a
/// round's updates and combine them at close).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_version_rebuilds_to_its_id_by_each_route() -> anyhow::Result<()> {
    convoy_tests::init_tracing();
    for rule in ["cosine", "trimmed_mean:0.25", "fedavg", "median", "krum:1"] {
        let dir = tempfile::tempdir()?;
        let mut o = options(dir.path(), "topk:0.2+q8", "q8");
        (o.rounds, o.transport, o.keep_updates) = (5, Transport::Memory, true);
        (o.keyframe_every, o.max_chain_depth) = (3, 2);
        o.rule = rule.parse().map_err(anyhow::Error::msg)?;
        run(o, CancellationToken::new()).await?;
        check_routes(dir.path(), rule, 4)?;
    }
    Ok(())
}

/// The same with a stateful server optimiser and FedProx on the
/// vehicles: a replayed round starts from its parent's stored optimiser
/// state, so every route still reaches each version's id; each round's
/// strategy is in the ledger and in the version's provenance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_optimisers_versions_rebuild_by_each_route() -> anyhow::Result<()> {
    convoy_tests::init_tracing();
    for (strategy, rule) in [("fedadam", "fedavg"), ("fedavgm", "cosine")] {
        let dir = tempfile::tempdir()?;
        let mut o = options(dir.path(), "topk:0.2+q8", "q8");
        (o.rounds, o.transport, o.keep_updates) = (5, Transport::Memory, true);
        (o.keyframe_every, o.max_chain_depth) = (3, 2);
        o.rule = rule.parse().map_err(anyhow::Error::msg)?;
        let shown = o.rule;
        o.strategy = strategy.parse().map_err(anyhow::Error::msg)?;
        (o.proximal_mu, o.lr_schedule) = (
            Some(0.01),
            "step:2:0.5".parse().map_err(anyhow::Error::msg)?,
        );
        let result = run(o, CancellationToken::new()).await?;
        check_routes(dir.path(), rule, 4)?;
        let store = convoy_tests::api::Store::open_existing(&dir.path().join("sim.db"))?;
        let rounds = store.rounds()?;
        assert_eq!(rounds.len(), 5);
        for r in &rounds {
            let s = r.strategy.as_deref().unwrap_or_default();
            // η halves every two rounds: 1st and 2nd at the base rate
            let base = if strategy == "fedadam" { 0.01 } else { 1.0 };
            let lr = base * 0.5f64.powi(((r.round - 1) / 2) as i32);
            assert_eq!(
                s,
                format!(
                    "{}+fedprox:mu=0.01+{shown}:lr={lr}",
                    strategy
                        .parse::<convoy_shared::strategy::server::ServerOpt>()
                        .map_err(anyhow::Error::msg)?
                ),
                "round {}",
                r.round
            );
            let v = store.load_version(r.model_version.as_deref().unwrap_or_default())?;
            assert_eq!(v.manifest.provenance.strategy, s);
        }
        let (first, last) = (
            result.rounds[0].accuracy.unwrap_or(0.0),
            result.final_accuracy.unwrap_or(0.0),
        );
        assert!(last > first, "{strategy}: {first} -> {last}");
    }
    Ok(())
}

/// SCAFFOLD through the real broker with lossy codecs both ways and a
/// robust rule: it learns, every version still rebuilds by each route (the
/// control moves the vehicles, not the server's aggregation), the
/// strategy is recorded, and the control's bytes are in the ledger's
/// downlink: about one quantised control per vehicle per round more than
/// the same run under FedAvg, and not one uplink byte more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaffold_learns_through_the_broker_and_its_bytes_are_counted() -> anyhow::Result<()> {
    convoy_tests::init_tracing();
    let mut results = Vec::new();
    for strategy in ["fedavg", "scaffold"] {
        let dir = tempfile::tempdir()?;
        let mut o = options(dir.path(), "topk:0.2+q8", "q8");
        (o.rounds, o.transport, o.keep_updates) = (5, Transport::Mqtt, true);
        (o.keyframe_every, o.max_chain_depth) = (3, 2);
        o.rule = "trimmed_mean:0.2".parse().map_err(anyhow::Error::msg)?;
        o.strategy = strategy.parse().map_err(anyhow::Error::msg)?;
        let result = run(o, CancellationToken::new()).await?;
        check_routes(dir.path(), "trimmed_mean:0.2", 4)?;
        let store = convoy_tests::api::Store::open_existing(&dir.path().join("sim.db"))?;
        let rounds = store.rounds()?;
        let s = rounds[0].strategy.clone().unwrap_or_default();
        assert_eq!(s.starts_with("scaffold+"), strategy == "scaffold", "{s}");
        let (first, last) = (
            result.rounds[0].accuracy.unwrap_or(0.0),
            result.final_accuracy.unwrap_or(0.0),
        );
        assert!(last > first, "{strategy}: {first} -> {last}");
        results.push(result);
    }
    let (plain, scaffold) = (&results[0], &results[1]);
    let numel = 64 * 32 + 32 + 32 * 10 + 10; // digits, hidden 32: q8 is a byte each
    let extra = scaffold.bytes_down as f64 - plain.bytes_down as f64;
    let controls = (scaffold.rounds.len() * 4) as f64; // 4 vehicles a round
    assert!(
        extra > 0.8 * controls * numel as f64 && extra < 1.5 * controls * numel as f64,
        "{extra} bytes more down for {controls} controls of {numel} values"
    );
    let up = scaffold.bytes_up as f64 / plain.bytes_up as f64;
    assert!((0.9..1.1).contains(&up), "uplink ratio {up}");
    Ok(())
}

/// FedBuff through the real broker: a new model after every 3 of 6
/// vehicles' updates, so the others' updates arrive trained on an older
/// model and count down-weighted; it learns, the ledger records each
/// update's staleness (some above 0, none above the bound), and every
/// version still rebuilds by each route, the replay of its stale updates
/// included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asynchronous_rounds_learn_through_the_broker_and_rebuild() -> anyhow::Result<()> {
    convoy_tests::init_tracing();
    let dir = tempfile::tempdir()?;
    let mut o = options(dir.path(), "topk:0.2+q8", "q8");
    (o.rounds, o.transport, o.keep_updates) = (5, Transport::Mqtt, true);
    (o.keyframe_every, o.max_chain_depth) = (3, 2);
    (o.clients, o.partition) = (6, Partition::Iid);
    (o.mode, o.async_buffer, o.max_staleness) = (convoy_tests::api::simulate::SimMode::Async, 3, 2);
    let result = run(o, CancellationToken::new()).await?;
    check_routes(dir.path(), "cosine", 3)?;
    let store = convoy_tests::api::Store::open_existing(&dir.path().join("sim.db"))?;
    let mut stale = 0;
    for r in store.rounds()? {
        let accepted: Vec<_> = store
            .clients(r.round)?
            .into_iter()
            .filter(|c| c.status == convoy_store::ClientStatus::Accepted)
            .collect();
        assert_eq!(accepted.len(), 3, "round {}: a buffer of 3", r.round);
        for c in &accepted {
            let s = c
                .staleness
                .expect("asynchronous rows carry their staleness");
            assert!(s <= 2, "{} in round {}: staleness {s}", c.client, r.round);
            stale += usize::from(s > 0);
        }
    }
    assert!(stale > 0, "some updates came from an older model");
    let (first, last) = (
        result.rounds[0].accuracy.unwrap_or(0.0),
        result.final_accuracy.unwrap_or(0.0),
    );
    assert!(last > first, "{first} -> {last}");
    Ok(())
}

/// The availability model on the simulated clock: with two of four
/// vehicles online only from 5,000 s (a trace) and every vehicle needed,
/// nothing happens before then; each round then takes the simulated time
/// of its slowest vehicle's steps, in seconds of simulation, not of wall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulated_clock_follows_the_availability_trace() -> anyhow::Result<()> {
    convoy_tests::init_tracing();
    let dir = tempfile::tempdir()?;
    let trace = dir.path().join("online.csv");
    std::fs::write(
        &trace,
        "client,start_s,end_s\n0,0,90000\nsim-001,0,90000\n2,5000,90000\n3,5000,90000\n",
    )?;
    let mut o = options(&dir.path().join("run"), "fp32", "fp32");
    (o.clients, o.partition, o.rounds) = (4, Partition::Iid, 3);
    o.devices.online_trace = Some(trace);
    o.devices.step_secs = 2.0;
    let started = std::time::Instant::now();
    let result = run(o, CancellationToken::new()).await?;
    let times: Vec<f64> = result.rounds.iter().filter_map(|r| r.sim_seconds).collect();
    assert_eq!(times.len(), 3, "{:?}", result.rounds);
    // about 22 steps of 2 s each: some 45 s a round, from 5,000 s on
    assert!(times[0] > 5000.0 && times[0] < 5100.0, "{times:?}");
    for pair in times.windows(2) {
        let took = pair[1] - pair[0];
        assert!((30.0..100.0).contains(&took), "{times:?}");
    }
    assert!(
        started.elapsed().as_secs() < 60,
        "simulated, not waited for"
    );
    assert!(result.final_accuracy > result.rounds[0].accuracy);
    Ok(())
}

/// One CSV split into a fleet: feature skew (each vehicle leaves out a
/// different half of the pixels) goes through the schema and statistics
/// rounds and still learns; condition skew gives each vehicle mostly one
/// range of a column.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_csv_splits_into_skewed_fleets_that_learn() -> anyhow::Result<()> {
    convoy_tests::init_tracing();
    let dir = tempfile::tempdir()?;
    let csv = dir.path().join("digits.csv");
    std::fs::write(&csv, convoy_tools::digits::DIGITS_CSV)?;
    for (split, name) in [
        ("features:2", "features"),
        ("condition:px27:0.9", "condition"),
    ] {
        let mut o = options(&dir.path().join(name), "fp32", "fp32");
        (o.csv, o.label) = (Some(csv.clone()), Some("digit".into()));
        o.csv_split = split.parse().map_err(anyhow::Error::msg)?;
        (o.clients, o.transport, o.rounds) = (4, Transport::Memory, 4);
        let result = run(o, CancellationToken::new()).await?;
        assert_eq!(result.partition, format!("csv:{split}"));
        assert!(
            result.rounds.iter().all(|r| r.clients_reported == 4),
            "{name}"
        );
        let (first, last) = (
            result.rounds[0].accuracy.unwrap_or(0.0),
            result.final_accuracy.unwrap_or(0.0),
        );
        assert!(last > first + 0.2, "{name}: {first} -> {last}");
        let files = dir.path().join(name).join("vehicles");
        let header = |v: usize| -> anyhow::Result<String> {
            let text = std::fs::read_to_string(files.join(format!("vehicle-{v:03}.csv")))?;
            Ok(text.lines().next().unwrap_or_default().to_string())
        };
        let differ = header(0)? != header(1)?;
        assert_eq!(
            differ,
            name == "features",
            "{name}: {} / {}",
            header(0)?,
            header(1)?
        );
    }
    Ok(())
}

/// Every version of a 5-round run rebuilds to its id by every route; each
/// published version's lineage holds `members` updates.
fn check_routes(dir: &std::path::Path, rule: &str, members: usize) -> anyhow::Result<()> {
    use convoy_store::{Route, StorageKind};
    let store = convoy_tests::api::Store::open_existing(&dir.join("sim.db"))?;
    let rows = store.versions()?;
    assert_eq!(rows.len(), 6, "the initial model and one per round");
    let kinds: Vec<StorageKind> = rows.iter().map(|r| r.kind).collect();
    assert!(
        kinds.contains(&StorageKind::Delta) && kinds[3] == StorageKind::Keyframe,
        "{kinds:?}"
    );
    for row in &rows {
        let stored = store.rebuild(&row.version, Route::Stored)?;
        let mut routes = vec![Route::Deltas, Route::Replay];
        if row.kind == StorageKind::Keyframe {
            routes.push(Route::Weights);
        } else {
            assert!(
                store.rebuild(&row.version, Route::Weights).is_err(),
                "not stored whole"
            );
        }
        for route in routes {
            let v = store.rebuild(&row.version, route)?;
            assert_eq!(
                convoy_tests::api::version::hex(&v.manifest.version),
                row.version,
                "{route:?}"
            );
            assert_eq!(
                v.params, stored.params,
                "{rule}: round {} by {route:?}",
                row.round
            );
        }
        if row.round > 0 {
            let lineage = store.lineage(&row.version)?;
            assert_eq!(lineage.len(), members, "every update is in its lineage");
            assert!(
                lineage
                    .iter()
                    .all(|l| l.samples > 0 && l.update_hash.len() == 64)
            );
        }
    }
    // a vehicle two versions behind gets the chain (two q8 deltas), not the model
    let cost =
        convoy_tests::api::models::transfer_cost(&store, &rows[3].version, &rows[5].version)?;
    assert_eq!(cost.behind, Some(2));
    assert_eq!(Some(cost.cheapest), cost.delta_chain, "{cost:?}");
    assert!(cost.cheapest < cost.full, "{cost:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_both_ways_learns_with_far_fewer_bytes() -> anyhow::Result<()> {
    convoy_tests::init_tracing();
    let dir = tempfile::tempdir()?;
    let dense = run(
        options(&dir.path().join("dense"), "fp32", "fp32"),
        CancellationToken::new(),
    )
    .await?;
    let small = run(
        options(
            &dir.path().join("small"),
            "topk:0.1+q8+zstd",
            "topk:0.25+q8+zstd",
        ),
        CancellationToken::new(),
    )
    .await?;

    for result in [&dense, &small] {
        assert_eq!(result.rounds.len(), 4);
        assert!(result.rounds.iter().all(|r| r.clients_reported == 4));
        let (first, last) = (
            result.rounds[0].accuracy.unwrap_or(0.0),
            result.final_accuracy.unwrap_or(0.0),
        );
        assert!(last > first + 0.1, "{}: {first} -> {last}", result.label);
    }
    // Uplink: top 10 % at 8 bits plus indices is many times smaller.
    assert!(
        dense.bytes_up > 5 * small.bytes_up,
        "{} vs {}",
        dense.bytes_up,
        small.bytes_up
    );
    // Downlink after round 1 travels as compressed deltas agents apply and verify
    // (a failed verification would fall back to full models and fail this).
    let (dense_down, small_down): (u64, u64) = (
        dense.rounds[2..].iter().map(|r| r.bytes_down).sum(),
        small.rounds[2..].iter().map(|r| r.bytes_down).sum(),
    );
    assert!(dense_down > 2 * small_down, "{dense_down} vs {small_down}");
    // The ledger's raw sizes say what dense fp32 would have cost.
    assert!(
        small
            .rounds
            .iter()
            .all(|r| r.bytes_up_raw == dense.rounds[0].bytes_up_raw)
    );
    assert!(
        small
            .rounds
            .iter()
            .all(|r| r.encode_mb_s.is_some() && r.decode_mb_s.is_some())
    );
    // Outputs for the benchmark tooling.
    for file in ["rounds.json", "rounds.csv", "summary.txt", "sim.db"] {
        assert!(dir.path().join("small").join(file).exists(), "{file}");
    }
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        dir.path().join("small/rounds.json"),
    )?)?;
    assert_eq!(json["codec"], "topk:0.1+q8+zstd");
    assert_eq!(json["rounds"].as_array().map(Vec::len), Some(4));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_transport_counts_the_same_bytes_as_the_broker() -> anyhow::Result<()> {
    convoy_tests::init_tracing();
    let dir = tempfile::tempdir()?;
    let codec = "topk:0.2+q8+zstd";
    let mqtt = run(
        options(&dir.path().join("mqtt"), codec, codec),
        CancellationToken::new(),
    )
    .await?;
    let mut memory_options = options(&dir.path().join("memory"), codec, codec);
    memory_options.transport = Transport::Memory;
    let memory = run(memory_options, CancellationToken::new()).await?;
    // Same seeds, same code path: the same models, bytes and accuracy.
    assert_eq!(memory.transport, "memory");
    assert!(!mqtt.rounds.is_empty());
    assert_eq!(mqtt.rounds.len(), memory.rounds.len());
    for (a, b) in mqtt.rounds.iter().zip(&memory.rounds) {
        assert_eq!(
            (a.bytes_up, a.bytes_down),
            (b.bytes_up, b.bytes_down),
            "round {}",
            a.round
        );
        // the broker link runs TLS, whose record framing the ledger counts
        assert!(
            a.wire_bytes_up > b.wire_bytes_up && a.wire_bytes_up < b.wire_bytes_up * 21 / 20,
            "round {}: TLS {} against {} in memory",
            a.round,
            a.wire_bytes_up,
            b.wire_bytes_up
        );
        assert_eq!(a.accuracy, b.accuracy);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sparsity_warm_up_ramps_down_to_the_configured_share() -> anyhow::Result<()> {
    convoy_tests::init_tracing();
    let dir = tempfile::tempdir()?;
    let mut warm = options(dir.path(), "topk:0.02+q8", "fp32");
    warm.warmup_rounds = 2;
    let result = run(warm, CancellationToken::new()).await?;
    let up: Vec<u64> = result.rounds.iter().map(|r| r.bytes_up).collect();
    // 25 % kept, then 6.25 %, then the codec's own 2 % from round 3 on
    assert!(up[0] > 2 * up[1] && 2 * up[1] > 3 * up[2], "{up:?}");
    assert!(up[2].abs_diff(up[3]) * 10 < up[3], "{up:?}");
    Ok(())
}

#[test]
fn partitions_cover_every_row_once() {
    use convoy_tests::api::Targets;
    let targets = Targets::Classes((0..1000).map(|i| (i % 10) as u32).collect());
    for scheme in [
        Partition::Iid,
        Partition::Dirichlet,
        Partition::Quantity,
        Partition::Shards,
    ] {
        let parts = partition::partition(&targets, 7, scheme, (0.3, 2), 1);
        assert_eq!(parts.len(), 7);
        let mut all: Vec<usize> = parts.concat();
        all.sort_unstable();
        assert_eq!(all, (0..1000).collect::<Vec<_>>(), "{scheme:?}");
        assert!(parts.iter().all(|p| !p.is_empty()), "{scheme:?}");
    }
    // two shards a client: each sees at most four classes (a shard may
    // straddle two), where the IID split gives every client all ten
    let classes = |scheme| {
        partition::partition(&targets, 7, scheme, (0.3, 2), 1)
            .iter()
            .map(|rows| {
                let mut seen: Vec<usize> = rows.iter().map(|r| r % 10).collect();
                seen.sort_unstable();
                seen.dedup();
                seen.len()
            })
            .collect::<Vec<_>>()
    };
    assert!(
        classes(Partition::Shards)
            .iter()
            .all(|c| (2..=4).contains(c)),
        "{:?}",
        classes(Partition::Shards)
    );
    assert!(classes(Partition::Iid).iter().all(|c| *c == 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_rows_are_left_out_and_the_round_does_not_wait_for_them()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut o = options(dir.path(), "fp32", "fp32");
    (o.clients, o.rounds, o.transport) = (200, 1, Transport::Memory);
    let result = tokio::time::timeout(
        std::time::Duration::from_secs(300),
        run(o, CancellationToken::new()),
    )
    .await??;
    assert!(result.clients_left_out > 0, "the split leaves some empty");
    assert_eq!(result.rounds.len(), 1);
    let round = &result.rounds[0];
    assert_eq!(
        round.clients_reported as usize,
        200 - result.clients_left_out,
        "{round:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_fleet_whose_vehicles_all_stop_says_why() -> anyhow::Result<()> {
    use convoy_tests::api::{DataConfig, ServerConfig, TaskKind};
    use convoy_tools::fleet;
    let dir = tempfile::tempdir()?;
    let broker = fleet::LocalBroker::memory(convoy_tests::fleet_name("all_stop"));
    let mut server: ServerConfig = toml::from_str("")?;
    server.fleet = "stop".parse().map_err(anyhow::Error::msg)?;
    server.db = dir.path().join("fleet.db");
    server.broker = fleet::server_broker(&broker);
    server.rounds.min_clients = 1;
    server.rounds.total = 1;
    let data = DataConfig::new(
        dir.path().join("missing.csv"),
        "y",
        TaskKind::Classification,
    );
    let agent = fleet::agent_config("stop", "car-1", &broker, dir.path().join("car-1"), data)?;
    let result = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        fleet::run(
            server,
            None,
            vec![(agent, None)],
            CancellationToken::new(),
            None,
            |_| {},
        ),
    )
    .await?;
    let err = result.expect_err("no vehicle can train").to_string();
    assert!(
        err.contains("every vehicle") && err.contains("missing.csv"),
        "{err}"
    );
    Ok(())
}

/// `--data-dir DIR --label L`: one vehicle per CSV file through the real
/// agents' path. The heterogeneous taxi fleet (three column sets) aligns a
/// schema and trains a classification head scored on the vehicles' own
/// held-out rows; the same files train a regression head (`distance`)
/// with one file held out as the server's test set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_of_csv_files_trains_through_the_agents_path() -> anyhow::Result<()> {
    convoy_tests::init_tracing();
    let dir = tempfile::tempdir()?;
    let mut o = options(&dir.path().join("tip"), "fp32", "fp32");
    o.data_dir = convoy_tests::shared_data("taxi/heterogeneous")?;
    (o.label, o.transport, o.rounds) = (Some("tip".into()), Transport::Memory, 4);
    let tip = run(o, CancellationToken::new()).await?;
    assert_eq!((tip.clients, tip.metric.as_str()), (7, "holdout"));
    assert_eq!(tip.rounds.len(), 4);
    assert!(tip.rounds.iter().all(|r| r.clients_reported == 7));
    let accuracy = tip.final_accuracy.expect("scored on the vehicles' rows");
    assert!((0.5..=1.0).contains(&accuracy), "{accuracy}");

    let mut o = options(&dir.path().join("distance"), "fp32", "fp32");
    o.data_dir = convoy_tests::shared_data("taxi")?;
    o.test_csv = Some(o.data_dir.join("flash_cab.csv"));
    (o.label, o.task) = (
        Some("distance".into()),
        "regression".parse().map_err(anyhow::Error::msg)?,
    );
    (o.transport, o.rounds) = (Transport::Memory, 4);
    let distance = run(o, CancellationToken::new()).await?;
    assert_eq!((distance.clients, distance.metric.as_str()), (6, "test"));
    assert!(distance.final_accuracy.is_none());
    let rmse: Vec<f64> = distance.rounds.iter().filter_map(|r| r.rmse).collect();
    assert_eq!(rmse.len(), 4, "every round scored on the test file");
    // better than the best constant guess, the test file's own mean
    let text = std::fs::read_to_string(convoy_tests::shared_data("taxi/flash_cab.csv")?)?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let column = header
        .iter()
        .position(|h| *h == "distance")
        .expect("a distance column");
    let values: Vec<f64> = lines
        .filter_map(|l| l.split(',').nth(column)?.parse().ok())
        .collect();
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let sd = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64).sqrt();
    assert!(rmse[3] < sd, "RMSE {rmse:?} against the test set's sd {sd}");
    Ok(())
}
