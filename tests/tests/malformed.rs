//! Bad input on the update topic: each kind is rejected with a counted
//! reason, the server keeps running and the round still completes.

use convoy_server::store::Store;
use convoy_shared::chunk::ChunkPos;
use convoy_shared::codec::Pipeline;
use convoy_shared::messages::{
    self, AgentState, Announce, Status, TrainStats, UpdateBody, UpdateChunk,
};
use convoy_shared::params::ParamSet;
use convoy_shared::topics::{self, ClientTopic};
use convoy_shared::wire::{self, Kind};
use convoy_tests::*;
use rumqttc::QoS;
use tokio_util::sync::CancellationToken;

fn chunk(announce: &Announce, round: u64, pos: ChunkPos, data: Vec<u8>) -> Vec<u8> {
    let message = UpdateChunk {
        client: messages::id("intruder").expect("valid id"),
        round,
        base_version: announce.base_version(),
        pos,
        data,
    };
    wire::encode(Kind::UpdateChunk, &message)
}

fn whole_update(announce: &Announce, encoded: Vec<u8>) -> Vec<u8> {
    let body = UpdateBody {
        samples: 1,
        stats: TrainStats {
            device: "test".into(),
            ..Default::default()
        },
        codec: "fp32".into(),
        encoded,
    };
    let body = postcard::to_allocvec(&body).expect("serialisable");
    let pos = ChunkPos {
        index: 0,
        count: 1,
        total_len: body.len() as u32,
    };
    chunk(announce, announce.round, pos, body)
}

/// Plays a vehicle by hand: connects as `id`, listens for rounds and
/// announces itself online with the given codec stages.
async fn fake_vehicle(url: &str, id: &str, codecs: &[&str]) -> anyhow::Result<RawClient> {
    let vehicle = RawClient::connect(url, id).await?;
    vehicle
        .client
        .subscribe(topics::round(FLEET).as_str(), QoS::AtLeastOnce)
        .await?;
    let status = Status {
        client: messages::id(id).expect("valid id"),
        state: AgentState::Idle,
        round: 0,
        codecs: codecs
            .iter()
            .map(|c| heapless::String::try_from(*c).expect("fits"))
            .collect(),
        samples: 1,
        detail: messages::detail("played by the test"),
        version: heapless::String::new(),
        deployment: heapless::String::new(),
    };
    let topic = topics::client(FLEET, ClientTopic::Status, id);
    vehicle
        .client
        .publish(
            topic.as_str(),
            QoS::AtLeastOnce,
            true,
            wire::encode(Kind::Status, &status),
        )
        .await?;
    Ok(vehicle)
}

/// The next round announcement `vehicle` receives.
async fn next_announce(vehicle: &mut RawClient) -> anyhow::Result<Announce> {
    loop {
        let p = vehicle.next(30).await?;
        if let Ok(a) = wire::decode::<Announce>(&p.payload, Kind::Announce, 1 << 20) {
            return Ok(a);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_updates_are_counted_and_the_round_completes() -> anyhow::Result<()> {
    init_tracing();
    let url = start_broker()?;
    let scenario = Scenario::digits(2, 14)?;
    let config = scenario.server_config(&url, 1, 3);
    let db = config.db.clone();
    let mut server = spawn_server(config);
    let stop = CancellationToken::new();
    let agents: Vec<_> = (0..2)
        .map(|i| spawn_agent(scenario.agent_config(&url, i), &stop))
        .collect();

    // A third "vehicle" that speaks the protocol badly.
    let mut intruder = fake_vehicle(&url, "intruder", &["fp32"]).await?;
    let announce = next_announce(&mut intruder).await?;
    assert!(announce.selected.iter().any(|c| c.as_str() == "intruder"));

    let numel = announce.spec.layout().numel();
    let zeros = ParamSet::zeros(&announce.spec.layout());
    let good = whole_update(&announce, Pipeline::FP32.encode(&zeros, 0));
    let mut truncated = good.clone();
    truncated.truncate(good.len() - 7);
    let mut bad_crc = good.clone();
    *bad_crc.last_mut().expect("non-empty") ^= 0x55;
    let wrong_round = chunk(
        &announce,
        announce.round + 7,
        ChunkPos {
            index: 0,
            count: 1,
            total_len: 3,
        },
        vec![1, 2, 3],
    );
    let oversized_total = chunk(
        &announce,
        announce.round,
        ChunkPos {
            index: 0,
            count: 2,
            total_len: u32::MAX,
        },
        vec![0; 64],
    );
    let mut oversized_header = good.clone();
    oversized_header[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    let mut nan = vec![0f32; numel];
    nan[numel / 2] = f32::NAN;
    let nan_update = whole_update(
        &announce,
        nan.iter().flat_map(|v| v.to_le_bytes()).collect(),
    );
    let wrong_shape = whole_update(&announce, vec![0; (numel - 3) * 4]);

    let topic = topics::client(FLEET, ClientTopic::Update, "intruder");
    for payload in [
        truncated,
        bad_crc,
        wrong_round,
        oversized_total,
        oversized_header,
        nan_update,
        wrong_shape,
        good,
    ] {
        intruder
            .client
            .publish(topic.as_str(), QoS::AtLeastOnce, false, payload)
            .await?;
    }

    let round = next_round(&mut server, 60).await?;
    let summary = server.task.await??;
    stop.cancel();
    for a in agents {
        a.await??;
    }
    assert_eq!(round.status, "finished");
    assert_eq!(
        round.clients_reported, 3,
        "the good update after the bad ones still counts"
    );
    for reason in [
        "truncated",
        "bad_crc",
        "wrong_round",
        "oversized",
        "non_finite",
        "wrong_shape",
    ] {
        assert!(
            summary.rejections.get(reason).copied().unwrap_or(0) >= 1,
            "{reason} not counted: {:?}",
            summary.rejections
        );
    }
    assert_eq!(summary.rejections.get("oversized"), Some(&2));
    let stored: std::collections::BTreeMap<String, u64> = Store::open_existing(&db)?
        .rejection_counts()?
        .into_iter()
        .collect();
    assert_eq!(
        stored, summary.rejections,
        "rejections are persisted with their reasons"
    );
    let intruder_row = Store::open_existing(&db)?
        .clients(round.round)?
        .into_iter()
        .find(|c| c.client == "intruder")
        .expect("ledger row");
    assert_eq!(intruder_row.status, "accepted");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vehicles_lacking_a_codec_stage_are_never_selected() -> anyhow::Result<()> {
    init_tracing();
    let url = start_broker()?;
    let scenario = Scenario::digits(2, 16)?;
    let mut config = scenario.server_config(&url, 1, 2);
    config.rounds.codec = "topk:0.2+q8+zstd".into();
    let mut server = spawn_server(config);
    // An old vehicle that only speaks fp32, online before anyone else.
    let mut old = fake_vehicle(&url, "old-car", &["fp32"]).await?;
    let stop = CancellationToken::new();
    let agents: Vec<_> = (0..2)
        .map(|i| spawn_agent(scenario.agent_config(&url, i), &stop))
        .collect();
    let announce = next_announce(&mut old).await?;
    let round = next_round(&mut server, 60).await?;
    server.task.await??;
    stop.cancel();
    for a in agents {
        a.await??;
    }
    let selected: Vec<&str> = announce.selected.iter().map(|c| c.as_str()).collect();
    assert_eq!(
        selected,
        vec!["car-0", "car-1"],
        "the fp32-only vehicle is left out"
    );
    assert_eq!(announce.codec, "topk:0.2+q8+zstd");
    assert_eq!((round.clients_selected, round.clients_reported), (2, 2));
    Ok(())
}
