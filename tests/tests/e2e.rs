//! End-to-end: real embedded broker, real server, real agents, loopback.

use convoy_tests::api::{AgentError, ClientTopic, Format, UpdateBody, models, report};
use convoy_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_learns_and_ledger_matches_the_wire() -> anyhow::Result<()> {
    init_tracing();
    let mut fleet = Fleet::digits("fleet_learns", 3, 11)?
        .rounds(4)
        .start()
        .await?;
    let rounds = fleet.next_rounds(4, 60).await?;
    let summary = fleet.finish().await?;

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
    let tally = fleet.tap.settled_tally().await;
    let store = fleet.store()?;
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
    let json: serde_json::Value = serde_json::from_str(&report::rounds(
        fleet.db(),
        Format::Json,
        &Default::default(),
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
    let mut fleet = Fleet::digits("killed_server", 2, 12)?
        .rounds(0)
        .start()
        .await?;
    let r1 = fleet.next_round(60).await?;
    let r2 = fleet.next_round(60).await?;
    // killed with round 3 open and its announcement stored: the restarted
    // server must take that round up again, not open another
    let opened = std::time::Instant::now();
    while fleet
        .store()?
        .open_round_state()?
        .is_none_or(|s| s.round != 3)
    {
        anyhow::ensure!(
            opened.elapsed() < std::time::Duration::from_secs(60),
            "round 3 never opened"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    fleet.kill_server().await;

    fleet.server_config.rounds.total = 2;
    fleet.start_server();
    let r3 = fleet.next_round(60).await?;
    let r4 = fleet.next_round(60).await?;
    fleet.finish().await?;

    assert_eq!((r1.round, r2.round), (1, 2));
    assert_eq!(
        r3.round, 3,
        "the open round is resumed, not reused or skipped"
    );
    assert_eq!(
        r3.base_version,
        r2.model_version.clone().expect("published"),
        "resumes from the last finished model"
    );
    assert_eq!(r4.round, 4);
    let rounds = fleet.store()?.rounds()?;
    let stored: Vec<(u64, String)> = rounds
        .iter()
        .map(|r| (r.round, r.status.to_string()))
        .collect();
    let finished = |n: u64| (n, "finished".to_string());
    assert_eq!(stored, (1..=4).map(finished).collect::<Vec<_>>());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_republishes_an_older_model_and_the_fleet_trains_on_it() -> anyhow::Result<()> {
    init_tracing();
    let mut fleet = Fleet::digits("rollback", 2, 14)?.rounds(2).start().await?;
    let r1 = fleet.next_round(60).await?;
    let r2 = fleet.next_round(60).await?;
    fleet.server_finished().await?;
    let v1 = r1.model_version.clone().expect("published");
    let v2 = r2.model_version.clone().expect("published");
    let said = models::rollback(fleet.db(), &v1[..10])?;
    assert!(said.contains(&v1) && said.contains(&v2[..12]), "{said}");
    assert_eq!(fleet.store()?.current_version()?, Some(v1.clone()));

    // the agents kept running: they fetch the older model and train on it
    fleet.server_config.rounds.total = 1;
    fleet.start_server();
    let r3 = fleet.next_round(60).await?;
    fleet.finish().await?;
    assert_eq!(
        r3.base_version, v1,
        "the next round builds on the rolled-back model"
    );
    assert_eq!(
        (r3.status.as_str(), r3.clients_reported),
        ("finished", 2),
        "both vehicles switched to it (their updates are relative to it): {r3:#?}"
    );
    let store = fleet.store()?;
    let v3 = store.load_version(r3.model_version.as_deref().expect("published"))?;
    assert_eq!(
        v3.parent.map(|p| convoy_tests::api::version::hex(&p)),
        Some(v1.clone())
    );
    assert_eq!(
        store.current_version()?,
        r3.model_version,
        "a version trained after the rollback is current again"
    );
    // the inventory: each vehicle reported the rolled-back model it trained on
    let inventory: serde_json::Value =
        serde_json::from_str(&models::fleet(fleet.db(), Format::Json)?)?;
    let held: Vec<(String, Option<u64>)> = inventory
        .as_array()
        .expect("an array")
        .iter()
        .map(|h| {
            (
                h["version"].as_str().unwrap_or("").to_string(),
                h["behind"].as_u64(),
            )
        })
        .collect();
    assert_eq!(held.len(), 2, "{inventory}");
    let v3 = r3.model_version.clone().unwrap_or_default();
    for (version, behind) in held {
        assert!(
            (version == v1 && behind == Some(1)) || (version == v3 && behind == Some(0)),
            "{inventory}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_before_upload_sends_its_stored_update_once() -> anyhow::Result<()> {
    init_tracing();
    let mut fleet = Fleet::digits("agent_killed", 2, 13)?
        .rounds(2)
        .agent(1, |c| c.faults.stop_after_persist = true)
        .start()
        .await?;

    // First life: trains, persists the update, "loses power" before sending.
    let first_life = fleet.agents[1].exited().await?;
    assert!(
        matches!(first_life, Err(AgentError::FaultInjected(_))),
        "{first_life:?}"
    );
    let pending = fleet.agents[1]
        .pending()?
        .expect("update persisted before the crash");
    assert!(
        !fleet.tap.tally().update_payloads.contains_key("car-1"),
        "nothing was sent before the crash"
    );

    // Second life: same state dir, no fault. It must send the stored update.
    fleet.agents[1].config.faults.stop_after_persist = false;
    fleet.agents[1].start();
    let round = fleet.next_round(60).await?;
    assert_eq!(round.clients_reported, 2, "{round:#?}");

    // Replay what car-1 sent while round 2 runs: recognised, never counted twice.
    let sent = fleet
        .tap
        .settled_tally()
        .await
        .update_payloads
        .get("car-1")
        .cloned()
        .unwrap_or_default();
    assert!(!sent.is_empty());
    let mut replay = fleet.wire("car-1-raw").await?;
    replay
        .publish_all(&fleet.topic(ClientTopic::Update, "car-1"), &sent)
        .await?;
    let _ = fleet.next_round(60).await?;
    fleet.finish().await?;

    let store = fleet.store()?;
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
    let body: UpdateBody = postcard::from_bytes(&pending.body)?;
    assert_eq!(car1[0].samples, body.samples);
    // The round-1 update, acknowledged, is gone. (Round 2's may still wait
    // for a receipt that the server's exit cut off: it is kept, as it must
    // be, for the next start.)
    let left = fleet.agents[1].pending()?;
    assert!(
        left.as_ref().is_none_or(|p| p.round > 1),
        "acknowledged update is gone: {:?}",
        left.map(|p| p.round)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stragglers_do_not_block_and_late_updates_are_counted() -> anyhow::Result<()> {
    init_tracing();
    let mut fleet = Fleet::digits("stragglers", 3, 15)?
        .rounds(2)
        .server(|c| c.rounds.deadline_secs = 2)
        .agent(2, |c| c.faults.delay_upload_ms = 3_000)
        .start()
        .await?;

    let r1 = fleet.next_round(60).await?;
    assert_eq!(
        (r1.status.as_str(), r1.clients_selected, r1.clients_reported),
        ("finished", 3, 2),
        "{r1:#?}"
    );
    // The fleet moved on without the straggler; its update, when it comes,
    // is counted late against round 1 and ignored.
    let r2 = fleet.next_round(60).await?;
    fleet.finish().await?;
    assert_eq!(r2.round, 2);
    let store = fleet.store()?;
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
    let builder = Fleet::digits("policy", 2, 17)?;
    let parked = builder.dir().join("parked");
    let mut fleet = builder
        .agent(1, |c| {
            c.policy.condition_file = Some(parked.clone());
            c.policy.check_secs = 1;
        })
        .start()
        .await?;

    // Not parked: the round cannot complete.
    assert!(
        fleet.next_round(3).await.is_err(),
        "the round closed although car-1 may not train"
    );
    // The vehicle reports being parked: car-1 trains and the round completes.
    std::fs::write(&parked, "")?;
    let round = fleet.next_round(60).await?;
    fleet.finish().await?;
    assert_eq!(
        (round.status.as_str(), round.clients_reported),
        ("finished", 2)
    );
    Ok(())
}

/// FedBuff through the real broker, the server killed with an
/// asynchronous round open and updates acknowledged in it (some trained on
/// an older model): the restarted server finishes that round with every
/// one of them, at the staleness it recorded, and nothing is folded twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_server_keeps_every_acknowledged_asynchronous_update() -> anyhow::Result<()> {
    init_tracing();
    let mut fleet = Fleet::digits("async_killed", 4, 19)?
        .rounds(0)
        .server(|c| {
            c.rounds.mode = convoy_server::config::RoundMode::Async;
            (c.rounds.async_buffer, c.rounds.max_staleness) = (3, 3);
        })
        .start()
        .await?;
    let before = fleet.next_rounds(2, 60).await?;
    // killed once the open round holds an acknowledged update
    let started = std::time::Instant::now();
    let held = loop {
        let state = fleet.store()?.open_round_state()?;
        if let Some(s) = state.filter(|s| !s.updates.is_empty()) {
            break s;
        }
        anyhow::ensure!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "no open round took an update"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    };
    fleet.kill_server().await;
    let acknowledged: Vec<(String, Option<u64>)> = fleet
        .store()?
        .clients(held.round)?
        .into_iter()
        .filter(|c| c.status == "accepted")
        .map(|c| (c.client, c.staleness))
        .collect();
    anyhow::ensure!(!acknowledged.is_empty());

    fleet.server_config.rounds.total = 2;
    fleet.start_server();
    let after = fleet.next_rounds(2, 60).await?;
    fleet.finish().await?;
    let resumed = &after[0];
    assert_eq!(resumed.round, held.round, "the open round is resumed");
    assert!(
        resumed.clients_reported as usize >= acknowledged.len(),
        "{resumed:#?}"
    );
    let rows = fleet.store()?.clients(held.round)?;
    for (client, staleness) in &acknowledged {
        assert!(
            rows.iter().any(|r| &r.client == client
                && r.status == "accepted"
                && &r.staleness == staleness),
            "{client}'s acknowledged update is in round {}",
            held.round
        );
    }
    // every accepted update of the run counted once, each at most 3 behind
    let store = fleet.store()?;
    let mut seen = std::collections::BTreeSet::new();
    let mut stale = 0;
    for r in before.iter().chain(&after) {
        for c in store
            .clients(r.round)?
            .iter()
            .filter(|c| c.status == "accepted")
        {
            let s = c
                .staleness
                .expect("asynchronous rows carry their staleness");
            assert!(s <= 3);
            stale += usize::from(s > 0);
            assert!(
                seen.insert((c.client.clone(), r.round - s)),
                "{} twice",
                c.client
            );
        }
    }
    assert!(stale > 0, "with a buffer of 3 of 4, some updates are stale");
    Ok(())
}
