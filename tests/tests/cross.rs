//! The cross-built agent (cross/build.sh) running under qemu-user takes part
//! in a round against the native server and broker, and is counted in the
//! ledger like any other vehicle.
//!
//!   CONVOY_CROSS_AGENT=$PWD/dist/aarch64-musl/convoy-agent \
//!   CONVOY_CROSS_RUNNER=qemu-aarch64 \
//!   cargo test -p convoy-tests --test cross -- --ignored

use anyhow::Context;
use convoy_tests::*;
use std::process::Stdio;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cross-built agent (CONVOY_CROSS_AGENT) and qemu-user; CI runs it"]
async fn cross_built_agent_under_qemu_is_counted_in_the_ledger() -> anyhow::Result<()> {
    init_tracing();
    let binary = std::env::var("CONVOY_CROSS_AGENT")
        .context("set CONVOY_CROSS_AGENT to a binary built by cross/build.sh")?;
    let binary = std::fs::canonicalize(&binary).with_context(|| format!("{binary} is missing"))?;
    let runner = std::env::var("CONVOY_CROSS_RUNNER").unwrap_or_else(|_| "qemu-aarch64".into());

    let mut fleet = Fleet::digits("cross", 2, 5)?
        // The emulated vehicle trains many times slower than a native one.
        .server(|c| c.rounds.deadline_secs = 300)
        .hold_agent(1)
        .start()
        .await?;
    let emulated_config = fleet.dir().join("car-1.toml");
    std::fs::write(&emulated_config, toml::to_string(&fleet.agents[1].config)?)?;
    let mut emulated = tokio::process::Command::new(&runner)
        .arg(&binary)
        .args(["run", "--config"])
        .arg(&emulated_config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {runner} (install qemu-user)"))?;

    let round = fleet.next_round(300).await?;
    fleet.finish().await?;
    emulated.start_kill()?;
    let _ = emulated.wait().await;

    assert_eq!(round.status, "finished", "{round:?}");
    assert_eq!(round.clients_reported, 2, "{round:?}");
    let rows = fleet.store()?.clients(round.round)?;
    let car = rows
        .iter()
        .find(|r| r.client == "car-1")
        .context("emulated vehicle missing from the ledger")?;
    println!("{car:#?}");
    assert_eq!(car.status, "accepted", "{car:?}");
    assert!(
        car.bytes_up > 0 && car.wire_bytes_up >= car.bytes_up,
        "{car:?}"
    );
    assert!(car.samples > 0);
    Ok(())
}
