//! Interop: the same end-to-end run against a real Mosquitto broker.
//!
//! Opt-in (`cargo test -p convoy-tests --test interop -- --ignored`): it
//! needs the `mosquitto` binary, which `.ci/run` installs.

use convoy_tests::*;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

struct Mosquitto(Child);

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_mosquitto(dir: &std::path::Path) -> anyhow::Result<(Mosquitto, String)> {
    let addr = convoy_server::broker::free_local_addr()?;
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {} 127.0.0.1\nallow_anonymous true\npersistence false\n",
            addr.port()
        ),
    )?;
    let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("mosquitto");
    let child = Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            anyhow::anyhow!("cannot start mosquitto ({e}); install it: apt-get install mosquitto")
        })?;
    let guard = Mosquitto(child);
    let started = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(10),
            "mosquitto did not start listening on {addr}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((guard, format!("mqtt://{addr}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the mosquitto binary; run with --ignored (CI does)"]
async fn fleet_learns_over_mosquitto() -> anyhow::Result<()> {
    init_tracing();
    let scenario = Scenario::digits(3, 21)?;
    let (_mosquitto, url) = start_mosquitto(scenario.dir.path())?;
    let watcher = Watcher::start(&url).await?;
    let mut server = spawn_server(scenario.server_config(&url, 3, 3));
    let stop = CancellationToken::new();
    let agents: Vec<_> = (0..3)
        .map(|i| spawn_agent(scenario.agent_config(&url, i), &stop))
        .collect();
    let mut rounds = Vec::new();
    for _ in 0..3 {
        rounds.push(next_round(&mut server, 60).await?);
    }
    server.task.await??;
    stop.cancel();
    for a in agents {
        a.await??;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let tally = watcher.snapshot();
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
