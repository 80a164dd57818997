//! Server memory over a long run and under a flood, with the embedded broker:
//! the server is a process of its own (this binary run again with `--serve`),
//! three in-process agents train the digits MLP round after round, and the
//! server's RSS is read from /proc every 50 rounds. Then an authenticated
//! client floods the broker with junk (on its own update topic and on a topic
//! nobody reads) and the RSS is read before, during and after.
//!
//!   cargo bench -p convoy-tests --bench soak
//!   SOAK_ROUNDS=1000 SOAK_FLOOD_MB=1750 cargo bench -p convoy-tests --bench soak
//!
//! Prints one line per sample and a summary table.

use anyhow::Context;
use convoy_server::config::ServerConfig;
use convoy_store::Store;
use convoy_tests::{Scenario, free_port};
use std::time::{Duration, Instant};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

fn serve(config: &str) -> anyhow::Result<()> {
    let config = ServerConfig::load(std::path::Path::new(config))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let stop = tokio_util::sync::CancellationToken::new();
        convoy_server::run(config, stop).await
    })?;
    Ok(())
}

fn rounds_done(db: &std::path::Path) -> u64 {
    Store::open_existing(db)
        .and_then(|s| s.rounds())
        .map(|r| r.iter().filter(|r| r.status != "open").count() as u64)
        .unwrap_or(0)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--serve") {
        return serve(args.get(i + 1).context("--serve CONFIG")?);
    }
    if let Some(i) = args.iter().position(|a| a == "--broker") {
        let listen = args.get(i + 1).context("--broker LISTEN")?;
        let access = convoy_server::broker::Access::Anonymous;
        convoy_server::broker::start_embedded(listen, convoy_tests::MAX_PACKET, access)?;
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    if args.iter().any(|a| a == "--list") {
        return Ok(()); // `cargo test --benches` asks what is inside
    }
    let rounds = env_or("SOAK_ROUNDS", 1000);
    let flood_mb = env_or("SOAK_FLOOD_MB", 1750);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(soak(rounds, flood_mb))
}

async fn soak(rounds: u64, flood_mb: u64) -> anyhow::Result<()> {
    let scenario = Scenario::digits(3, 5)?;
    let listen = format!("127.0.0.1:{}", free_port()?);
    let url = format!("mqtt://{listen}");
    let fleet = "soak";
    let mut server = scenario.server_config(&url, fleet, 0, 3);
    // SOAK_BROKER=process: the broker in a process of its own, to tell the
    // server's memory from the broker's.
    let separate = std::env::var("SOAK_BROKER").is_ok_and(|v| v == "process");
    let mut broker = None;
    if separate {
        broker = Some(
            std::process::Command::new(std::env::current_exe()?)
                .arg("--broker")
                .arg(&listen)
                .env("RUST_LOG", "error")
                .spawn()?,
        );
    } else {
        server.broker.link.url = None;
    }
    server.broker.listen = listen;
    server.rounds.deadline_secs = 60;
    let mut agents: Vec<_> = (0..3)
        .map(|i| scenario.agent_config(&url, fleet, i))
        .collect();
    convoy_tools::fleet::provision(&server, &mut agents)?;
    let flooder = {
        let key = convoy_server::identity::server_key(&server.key_file())?;
        let store = Store::open(&server.db)?;
        let id = "flooder".parse().map_err(anyhow::Error::msg)?;
        let out = scenario.dir.path().join("identity");
        convoy_server::identity::provision(&store, &key.public().into(), &[id], &out, true)?
            .remove(0)
    };
    let config_path = scenario.dir.path().join("server.toml");
    std::fs::write(&config_path, toml::to_string(&server)?)?;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .arg("--serve")
        .arg(&config_path)
        .env("RUST_LOG", "error")
        .spawn()?;
    let pid = child.id();
    let broker_pid = broker.as_ref().map(|b| b.id());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let tasks: Vec<_> = agents
        .into_iter()
        .map(|a| tokio::spawn(convoy_agent::run(a, stop.clone())))
        .collect();

    println!("server pid {pid}: {rounds} rounds, 3 agents, digits MLP, embedded broker");
    println!(
        "{:>6} {:>9} {:>9} {:>8}",
        "round", "rss_MB", "broker_MB", "secs"
    );
    let started = Instant::now();
    let mut samples: Vec<(u64, f64)> = Vec::new();
    let mut next = 0;
    loop {
        let done = rounds_done(&server.db);
        if done >= next {
            let rss = rss_mb(pid).context("server process gone")?;
            let b = broker_pid.and_then(rss_mb).unwrap_or(f64::NAN);
            println!(
                "{done:>6} {rss:>9.1} {b:>9.1} {:>8.0}",
                started.elapsed().as_secs_f64()
            );
            samples.push((done, rss));
            next = done - done % 50 + 50;
        }
        if done >= rounds {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(rounds * 5 + 120),
            "rounds stalled at {done}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }

    let before = rss_mb(pid).context("server gone")?;
    let peak = flood(&url, fleet, &flooder, flood_mb, pid).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = rss_mb(pid).context("server gone")?;
    let _ = child.kill();
    let _ = child.wait();
    if let Some(mut b) = broker {
        let _ = b.kill();
        let _ = b.wait();
    }

    let at = |r: u64| {
        samples
            .iter()
            .find(|(d, _)| *d >= r)
            .map_or(f64::NAN, |(_, m)| *m)
    };
    let (first, last) = (samples[0].1, samples[samples.len() - 1].1);
    let warm = at(100);
    println!();
    println!("| measure | server RSS |");
    println!("|---|---|");
    println!("| start (round {}) | {first:.1} MB |", samples[0].0);
    println!("| round 100 | {warm:.1} MB |");
    println!("| round {} | {last:.1} MB |", samples[samples.len() - 1].0);
    println!(
        "| growth rounds 100 to {} | {:+.1} % ({:+.1} KB/round) |",
        samples[samples.len() - 1].0,
        (last / warm - 1.0) * 100.0,
        (last - warm) * 1024.0 / (samples[samples.len() - 1].0 as f64 - 100.0).max(1.0)
    );
    let half = at(rounds / 2);
    println!(
        "| growth rounds {} to {} | {:+.1} % |",
        rounds / 2,
        samples[samples.len() - 1].0,
        (last / half - 1.0) * 100.0
    );
    println!("| before a {flood_mb} MB junk flood | {before:.1} MB |");
    println!("| peak during the flood | {peak:.1} MB |");
    println!("| 5 s after the flood | {after:.1} MB |");
    Ok(())
}

/// Publishes `total_mb` of junk as the provisioned `flooder`, half on its own
/// update topic and half on a topic no one subscribes to; returns the
/// server's peak RSS meanwhile.
async fn flood(
    url: &str,
    fleet: &str,
    who: &convoy_server::identity::Provisioned,
    total_mb: u64,
    pid: u32,
) -> anyhow::Result<f64> {
    use rumqttc::{AsyncClient, MqttOptions, QoS};
    let rest = url.trim_start_matches("mqtt://");
    let (host, port) = rest.rsplit_once(':').context("url")?;
    let mut options = MqttOptions::new(who.client.as_str(), host, port.parse::<u16>()?);
    options.set_credentials(who.client.as_str(), who.password.as_str());
    options.set_max_packet_size(1 << 20, 1 << 20);
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let poller = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let update = convoy_shared::topics::client(
        fleet,
        convoy_shared::topics::ClientTopic::Update,
        who.client.as_str(),
    )
    .to_string();
    let junk = vec![0xA5u8; 64 * 1024];
    let count = total_mb * 16;
    let mut peak = 0f64;
    for i in 0..count {
        let topic = if i % 2 == 0 {
            update.clone()
        } else {
            "junk/nobody".to_string()
        };
        client
            .publish(topic, QoS::AtLeastOnce, false, junk.clone())
            .await?;
        if i % 256 == 0 {
            peak = peak.max(rss_mb(pid).unwrap_or(0.0));
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    peak = peak.max(rss_mb(pid).unwrap_or(0.0));
    poller.abort();
    Ok(peak)
}
