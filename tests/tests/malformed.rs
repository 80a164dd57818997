//! Bad input on the update topic: each kind is rejected with a counted
//! reason, the server keeps running and the round still completes.

use convoy_tests::api::{self, ChunkPos, ParamSet, Pipeline};
use convoy_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_updates_are_counted_and_the_round_completes() -> anyhow::Result<()> {
    init_tracing();
    let mut fleet = Fleet::digits("malformed", 2, 14)?
        .min_clients(3)
        .start()
        .await?;

    // A third "vehicle" that speaks the protocol badly.
    let mut intruder = FakeVehicle::join(&fleet, "intruder", &["fp32"]).await?;
    let announce = intruder.next_announce().await?;
    assert!(announce.selected.iter().any(|c| c.as_str() == "intruder"));

    let numel = announce.spec.layout().numel();
    let zeros = ParamSet::zeros(&announce.spec.layout());
    let good = intruder.whole_update(&announce, Pipeline::FP32.encode(&zeros, 0));
    let mut truncated = good.clone();
    truncated.truncate(good.len() - 7);
    let mut bad_crc = good.clone();
    bad_crc[api::wire::HEADER_LEN] ^= 0x55;
    let mut bad_signature = good.clone();
    *bad_signature.last_mut().expect("non-empty") ^= 0x55;
    let body = &good[api::wire::HEADER_LEN..good.len() - 64];
    let unsigned = api::wire::encode_raw(api::Kind::UpdateChunk, body);
    let wrong_round = intruder.chunk(
        &announce,
        announce.round + 7,
        ChunkPos {
            index: 0,
            count: 1,
            total_len: 3,
        },
        vec![1, 2, 3],
    );
    let oversized_total = intruder.chunk(
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
    let nan_update = intruder.whole_update(
        &announce,
        nan.iter().flat_map(|v| v.to_le_bytes()).collect(),
    );
    let wrong_shape = intruder.whole_update(&announce, vec![0; (numel - 3) * 4]);

    intruder
        .send_updates(&[
            truncated,
            bad_crc,
            bad_signature,
            unsigned,
            wrong_round,
            oversized_total,
            oversized_header,
            nan_update,
            wrong_shape,
            good,
        ])
        .await?;

    let round = fleet.next_round(60).await?;
    let summary = fleet.finish().await?;
    assert_eq!(round.status, "finished");
    assert_eq!(
        round.clients_reported, 3,
        "the good update after the bad ones still counts"
    );
    for reason in [
        "truncated",
        "bad_crc",
        "bad_signature",
        "unsigned",
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
    let stored: std::collections::BTreeMap<String, u64> =
        fleet.store()?.rejection_counts()?.into_iter().collect();
    assert_eq!(
        stored, summary.rejections,
        "rejections are persisted with their reasons"
    );
    let intruder_row = fleet
        .store()?
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
    let mut fleet = Fleet::digits("codec_stages", 2, 16)?
        .server(|c| c.rounds.codec = "topk:0.2+q8+zstd".parse().unwrap())
        .hold_agents()
        .start()
        .await?;
    // An old vehicle that only speaks fp32, online before anyone else.
    let mut old = FakeVehicle::join(&fleet, "old-car", &["fp32"]).await?;
    fleet.start_agents();
    let announce = old.next_announce().await?;
    let round = fleet.next_round(60).await?;
    fleet.finish().await?;
    let selected: Vec<&str> = announce.selected.iter().map(|c| c.as_str()).collect();
    assert_eq!(
        selected,
        vec!["car-0", "car-1"],
        "the fp32-only vehicle is left out"
    );
    assert_eq!(announce.codec.name(), "topk:0.2+q8+zstd");
    assert_eq!((round.clients_selected, round.clients_reported), (2, 2));
    Ok(())
}
