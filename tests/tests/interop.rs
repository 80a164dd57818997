//! Interop: the same end-to-end run against a real Mosquitto broker.
//!
//! Opt-in (`cargo test -p convoy-tests --test interop -- --ignored`): it
//! needs the `mosquitto` binary, which `.ci/run` installs.

use convoy_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the mosquitto binary; run with --ignored (CI does)"]
async fn fleet_learns_over_mosquitto() -> anyhow::Result<()> {
    init_tracing();
    let mut fleet = Fleet::digits_on(Broker::mosquitto()?, "mosquitto", 3, 21)?
        .rounds(3)
        .start()
        .await?;
    let rounds = fleet.next_rounds(3, 60).await?;
    fleet.finish().await?;
    let tally = fleet.tap.settled_tally().await;
    for r in &rounds {
        assert_eq!(r.status, "finished");
        assert_eq!(r.clients_reported, 3);
        assert_eq!(
            Some(&r.bytes_up),
            tally.update_bytes_by_round.get(&r.round),
            "round {}",
            r.round
        );
    }
    let (first, last) = (
        rounds[0].accuracy.unwrap_or(0.0),
        rounds[2].accuracy.unwrap_or(0.0),
    );
    assert!(
        last > first + 0.05,
        "accuracy should rise over Mosquitto too: {first} -> {last}"
    );
    Ok(())
}
