//! End-to-end: real embedded broker, real server, real agents, loopback.

use convoy_server::config::{RoundConfig, ServerConfig};
use convoy_server::store::Store;
use convoy_tests::*;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_learns_and_ledger_matches_the_wire() -> anyhow::Result<()> {
    init_tracing();
    let url = start_broker()?;
    let scenario = Scenario::digits(3, 11)?;
    let watcher = Watcher::start(&url).await?;
    let config = scenario.server_config(&url, 4, 3);
    let db = config.db.clone();
    let mut server = spawn_server(config);
    let agents_stop = CancellationToken::new();
    let agents: Vec<_> = (0..3)
        .map(|i| spawn_agent(scenario.agent_config(&url, i), &agents_stop))
        .collect();

    let mut rounds = Vec::new();
    for _ in 0..4 {
        rounds.push(next_round(&mut server, 60).await?);
    }
    let summary = server.task.await??;
    agents_stop.cancel();
    for a in agents {
        a.await??;
    }
    // Let the watcher drain anything still in flight.
    tokio::time::sleep(Duration::from_millis(200)).await;
    watcher.stop.cancel();

    let first = rounds[0].accuracy.expect("evaluated");
    let last = rounds[3].accuracy.expect("evaluated");
    assert!(
        last > first + 0.10,
        "accuracy should rise clearly: {first} -> {last}"
    );
    assert!(
        rounds
            .iter()
            .all(|r| r.status == "finished" && r.clients_reported == 3),
        "{rounds:#?}"
    );
    assert!(summary.rejections.is_empty(), "{:?}", summary.rejections);

    // The ledger's bytes_up is what an independent subscriber saw.
    let tally = watcher.snapshot();
    let store = Store::open_existing(&db)?;
    let stored = store.rounds()?;
    assert_eq!(stored.len(), 4);
    for r in &stored {
        let seen = tally
            .update_bytes_by_round
            .get(&r.round)
            .copied()
            .unwrap_or(0);
        assert_eq!(r.bytes_up, seen, "round {}: ledger vs wire", r.round);
        assert!(
            r.wire_bytes_up > r.bytes_up,
            "wire bytes include MQTT framing"
        );
        if r.round == 1 {
            // the initial model is rebuilt from its spec, never downloaded
            assert_eq!(r.bytes_down, 0);
        } else {
            assert!(r.bytes_down > 0 && r.wire_bytes_down > r.bytes_down);
        }
        let clients = store.clients(r.round)?;
        assert_eq!(clients.len(), 3);
        assert_eq!(clients.iter().map(|c| c.bytes_up).sum::<u64>(), r.bytes_up);
        assert!(
            clients
                .iter()
                .all(|c| c.samples > 0 && c.flops > 0 && c.steps > 0)
        );
    }

    // The machine-readable report carries the documented fields.
    let json: serde_json::Value = serde_json::from_str(&convoy_server::report::rounds(
        &db,
        convoy_server::report::Format::Json,
    )?)?;
    let first_row = &json[0];
    for key in [
        "round",
        "model_version",
        "clients_selected",
        "clients_reported",
        "clients_late",
        "bytes_up",
        "bytes_down",
        "wire_bytes_up",
        "wire_bytes_down",
        "train_seconds_sum",
        "train_seconds_max",
        "samples",
        "loss",
        "accuracy",
        "started_at",
        "finished_at",
    ] {
        assert!(
            first_row.get(key).is_some(),
            "report JSON lacks {key}: {first_row}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_server_resumes_without_reusing_rounds() -> anyhow::Result<()> {
    init_tracing();
    let url = start_broker()?;
    let scenario = Scenario::digits(2, 12)?;
    let config = scenario.server_config(&url, 0, 2);
    let db = config.db.clone();
    let agents_stop = CancellationToken::new();
    let agents: Vec<_> = (0..2)
        .map(|i| spawn_agent(scenario.agent_config(&url, i), &agents_stop))
        .collect();

    let mut server = spawn_server(config.clone());
    let r1 = next_round(&mut server, 60).await?;
    let r2 = next_round(&mut server, 60).await?;
    // Kill it: drop the task mid-run, no graceful shutdown.
    server.task.abort();
    let _ = server.task.await;

    let mut restarted = spawn_server(ServerConfig {
        rounds: RoundConfig {
            total: 2,
            ..config.rounds.clone()
        },
        ..config
    });
    let r3 = next_round(&mut restarted, 60).await?;
    let r4 = next_round(&mut restarted, 60).await?;
    restarted.task.await??;
    agents_stop.cancel();
    for a in agents {
        a.await??;
    }

    assert_eq!((r1.round, r2.round), (1, 2));
    assert!(r3.round > r2.round, "restart reused round {}", r3.round);
    assert_eq!(
        r3.base_version,
        r2.model_version.clone().expect("published"),
        "resumes from the last finished model"
    );
    assert!(r4.round > r3.round && r3.status == "finished" && r4.status == "finished");
    let store = Store::open_existing(&db)?;
    let rounds = store.rounds()?;
    let numbers: Vec<u64> = rounds.iter().map(|r| r.round).collect();
    let mut unique = numbers.clone();
    unique.dedup();
    assert_eq!(numbers, unique, "round numbers are unique");
    // anything opened but not finished by the killed server is marked so
    assert!(
        rounds
            .iter()
            .filter(|r| r.round > 2 && r.round < r3.round)
            .all(|r| r.status == "abandoned")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_before_upload_sends_its_stored_update_once() -> anyhow::Result<()> {
    init_tracing();
    let url = start_broker()?;
    let scenario = Scenario::digits(2, 13)?;
    let watcher = Watcher::start(&url).await?;
    let config = scenario.server_config(&url, 2, 2);
    let db = config.db.clone();
    let mut server = spawn_server(config);
    let stop = CancellationToken::new();
    let steady = spawn_agent(scenario.agent_config(&url, 0), &stop);
    let mut crashing = scenario.agent_config(&url, 1);
    crashing.faults.stop_after_persist = true;
    let state_dir = crashing.state_dir.clone();

    // First life: trains, persists the update, "loses power" before sending.
    let first_life = spawn_agent(crashing.clone(), &stop).await?;
    assert!(
        matches!(first_life, Err(convoy_agent::AgentError::FaultInjected(_))),
        "{first_life:?}"
    );
    let pending = convoy_agent::state::StateDir::open(&state_dir)?
        .pending()?
        .expect("update persisted before the crash");
    assert!(
        !watcher.snapshot().update_payloads.contains_key("car-1"),
        "nothing was sent before the crash"
    );

    // Second life: same state dir, no fault. It must send the stored update.
    crashing.faults.stop_after_persist = false;
    let second_life = spawn_agent(crashing, &stop);
    let round = next_round(&mut server, 60).await?;
    assert_eq!(round.clients_reported, 2, "{round:#?}");

    // Replay what car-1 sent while round 2 runs: recognised, never counted twice.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sent = watcher
        .snapshot()
        .update_payloads
        .get("car-1")
        .cloned()
        .unwrap_or_default();
    assert!(!sent.is_empty());
    publish_raw(&url, "car-1", &sent).await?;
    let _ = next_round(&mut server, 60).await?;
    server.task.await??;
    stop.cancel();
    steady.await??;
    second_life.await??;

    let store = Store::open_existing(&db)?;
    let rounds = store.rounds()?;
    assert_eq!(
        rounds[0].clients_reported, 2,
        "round 1 still counts car-1 once"
    );
    let rows = store.clients(1)?;
    let car1: Vec<_> = rows.iter().filter(|c| c.client == "car-1").collect();
    assert_eq!(car1.len(), 1);
    assert_eq!(car1[0].status, "accepted");
    // the stored update body is exactly what was accepted (not retrained)
    let body: convoy_shared::messages::UpdateBody = postcard_body(&pending.body)?;
    assert_eq!(car1[0].samples, body.samples);
    assert!(
        convoy_agent::state::StateDir::open(&state_dir)?
            .pending()?
            .is_none(),
        "acknowledged update is gone"
    );
    Ok(())
}

fn postcard_body(bytes: &[u8]) -> anyhow::Result<convoy_shared::messages::UpdateBody> {
    Ok(postcard::from_bytes(bytes)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stragglers_do_not_block_and_late_updates_are_counted() -> anyhow::Result<()> {
    init_tracing();
    let url = start_broker()?;
    let scenario = Scenario::digits(3, 15)?;
    let mut config = scenario.server_config(&url, 2, 3);
    config.rounds.deadline_secs = 2;
    let db = config.db.clone();
    let mut server = spawn_server(config);
    let stop = CancellationToken::new();
    let mut agents: Vec<_> = (0..2)
        .map(|i| spawn_agent(scenario.agent_config(&url, i), &stop))
        .collect();
    let mut slow = scenario.agent_config(&url, 2);
    slow.faults.delay_upload_ms = 3_000;
    agents.push(spawn_agent(slow, &stop));

    let r1 = next_round(&mut server, 60).await?;
    assert_eq!(
        (r1.status.as_str(), r1.clients_selected, r1.clients_reported),
        ("finished", 3, 2),
        "{r1:#?}"
    );
    // The fleet moved on without the straggler; its update, when it comes,
    // is counted late against round 1 and ignored.
    let r2 = next_round(&mut server, 60).await?;
    server.task.await??;
    stop.cancel();
    for a in agents {
        a.await??;
    }
    assert_eq!(r2.round, 2);
    let store = Store::open_existing(&db)?;
    let r1_stored = &store.rounds()?[0];
    assert_eq!(r1_stored.clients_late, 1, "{r1_stored:#?}");
    assert_eq!(r1_stored.clients_reported, 2, "late update not folded in");
    let late_row = store
        .clients(1)?
        .into_iter()
        .find(|c| c.client == "car-2")
        .expect("ledger row");
    assert_eq!(late_row.status, "late");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_trains_only_when_its_policy_allows() -> anyhow::Result<()> {
    init_tracing();
    let url = start_broker()?;
    let scenario = Scenario::digits(2, 17)?;
    let mut server = spawn_server(scenario.server_config(&url, 1, 2));
    let stop = CancellationToken::new();
    let steady = spawn_agent(scenario.agent_config(&url, 0), &stop);
    let parked = scenario.dir.path().join("parked");
    let mut careful = scenario.agent_config(&url, 1);
    careful.policy.condition_file = Some(parked.clone());
    careful.policy.check_secs = 1;
    let careful = spawn_agent(careful, &stop);

    // Not parked: the round cannot complete.
    assert!(
        next_round(&mut server, 3).await.is_err(),
        "the round closed although car-1 may not train"
    );
    // The vehicle reports being parked: car-1 trains and the round completes.
    std::fs::write(&parked, "")?;
    let round = next_round(&mut server, 60).await?;
    server.task.await??;
    stop.cancel();
    steady.await??;
    careful.await??;
    assert_eq!(
        (round.status.as_str(), round.clients_reported),
        ("finished", 2)
    );
    Ok(())
}
