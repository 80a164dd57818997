//! The cross-built agent (cross/build.sh) running under qemu-user takes part
//! in a round against the native server and broker, and is counted in the
//! ledger like any other vehicle.
//!
//!   CONVOY_CROSS_AGENT=$PWD/dist/aarch64-musl/convoy-agent \
//!   CONVOY_CROSS_RUNNER=qemu-aarch64 \
//!   cargo test -p convoy-tests --test cross -- --ignored

use anyhow::Context;
use convoy_server::store::Store;
use convoy_tests::*;
use std::process::Stdio;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cross-built agent (CONVOY_CROSS_AGENT) and qemu-user; CI runs it"]
async fn cross_built_agent_under_qemu_is_counted_in_the_ledger() -> anyhow::Result<()> {
    init_tracing();
    let binary = std::env::var("CONVOY_CROSS_AGENT")
        .context("set CONVOY_CROSS_AGENT to a binary built by cross/build.sh")?;
    let binary = std::fs::canonicalize(&binary).with_context(|| format!("{binary} is missing"))?;
    let runner = std::env::var("CONVOY_CROSS_RUNNER").unwrap_or_else(|_| "qemu-aarch64".into());

    let url = start_broker()?;
    let scenario = Scenario::digits(2, 5)?;
    let mut config = scenario.server_config(&url, 1, 2);
    // The emulated vehicle trains many times slower than a native one.
    config.rounds.deadline_secs = 300;
    let db = config.db.clone();
    let mut server = spawn_server(config);
    let stop = CancellationToken::new();
    let native = spawn_agent(scenario.agent_config(&url, 0), &stop);

    let emulated_config = scenario.dir.path().join("car-1.toml");
    std::fs::write(
        &emulated_config,
        toml::to_string(&scenario.agent_config(&url, 1))?,
    )?;
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

    let round = next_round(&mut server, 300).await?;
    server.task.await??;
    stop.cancel();
    native.await??;
    emulated.start_kill()?;
    let _ = emulated.wait().await;

    assert_eq!(round.status, "finished", "{round:?}");
    assert_eq!(round.clients_reported, 2, "{round:?}");
    let rows = Store::open_existing(&db)?.clients(round.round)?;
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
