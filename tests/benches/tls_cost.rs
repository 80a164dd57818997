//! What TLS adds to a round's bytes: the same fleet (digits, 4 vehicles,
//! the same seed) once over plain TCP and once over TLS, with the vehicles'
//! links through a counting TCP proxy. It prints, per round, the bytes the
//! proxy saw each way (everything: updates, models, statuses, receipts,
//! keep-alives; round 1 also the connections and TLS handshakes) beside the
//! ledger's wire figures, whose TLS run adds TLS's record framing
//! (`convoy_shared::wire::publish_wire_len`), so the ledger's estimate of
//! what TLS costs can be checked against what crossed the socket.
//!
//! `cargo bench -p convoy-tests --bench tls_cost` (`TLS_ROUNDS`, default 5;
//! `TLS_CODEC`, default `fp32`).

use convoy_tests::{Broker, Fleet, free_port};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bytes a proxy forwarded: vehicle to broker, broker to vehicle.
#[derive(Debug, Default)]
struct Counted {
    up: AtomicU64,
    down: AtomicU64,
}

/// A TCP proxy on a loopback port to `broker`, counting what it forwards.
async fn counting_proxy(broker: SocketAddr) -> anyhow::Result<(SocketAddr, Arc<Counted>)> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", free_port()?)).await?;
    let addr = listener.local_addr()?;
    let counted = Arc::new(Counted::default());
    let total = Arc::clone(&counted);
    tokio::spawn(async move {
        while let Ok((vehicle, _)) = listener.accept().await {
            let Ok(upstream) = tokio::net::TcpStream::connect(broker).await else {
                continue;
            };
            let (vr, vw) = vehicle.into_split();
            let (br, bw) = upstream.into_split();
            let (up, down) = (Arc::clone(&total), Arc::clone(&total));
            tokio::spawn(pipe(vr, bw, move |n| up.up.fetch_add(n, Ordering::Relaxed)));
            tokio::spawn(pipe(br, vw, move |n| {
                down.down.fetch_add(n, Ordering::Relaxed)
            }));
        }
    });
    Ok((addr, counted))
}

/// Copies `from` to `to`, telling `count` each piece's length.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    count: impl Fn(u64) -> u64,
) {
    let mut buf = vec![0u8; 64 << 10];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 || to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        count(n as u64);
    }
    let _ = to.shutdown().await;
}

/// One run's figures per round: (ledger wire up, ledger wire down, proxy
/// up, proxy down).
type PerRound = Vec<(u64, u64, u64, u64)>;

async fn run(tls: bool, rounds: usize, codec: &str) -> anyhow::Result<PerRound> {
    let broker = if tls {
        Broker::embedded()?
    } else {
        Broker::embedded_plain()?
    };
    let broker_addr: SocketAddr = broker
        .url()
        .split_once("://")
        .map(|(_, a)| a.to_string())
        .unwrap_or_default()
        .parse()?;
    let (proxy, counted) = counting_proxy(broker_addr).await?;
    let scheme = if tls { "mqtts" } else { "mqtt" };
    let proxied = format!("{scheme}://{proxy}");
    let vehicles = 4;
    let name = if tls {
        "tls-cost-tls"
    } else {
        "tls-cost-plain"
    };
    let codec = codec.to_string();
    let mut builder = Fleet::digits_on(broker, name, vehicles, 42)?
        .rounds(rounds as u64)
        .server(move |c| c.rounds.codec = codec.parse().expect("TLS_CODEC is a codec"));
    for i in 0..vehicles {
        let url = proxied.clone();
        builder = builder.agent(i, move |a| a.broker.url = Some(url.parse().expect("url")));
    }
    let mut fleet = builder.start().await?;
    let mut out = Vec::with_capacity(rounds);
    let (mut up0, mut down0) = (0, 0);
    for _ in 0..rounds {
        let row = fleet.next_round(300).await?;
        let (up, down) = (
            counted.up.load(Ordering::Relaxed),
            counted.down.load(Ordering::Relaxed),
        );
        out.push((
            row.wire_bytes_up,
            row.wire_bytes_down,
            up - up0,
            down - down0,
        ));
        (up0, down0) = (up, down);
    }
    fleet.finish().await?;
    Ok(out)
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let rounds: usize = std::env::var("TLS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(2);
    let codec = std::env::var("TLS_CODEC").unwrap_or_else(|_| "fp32".into());
    let plain = run(false, rounds, &codec).await?;
    let tls = run(true, rounds, &codec).await?;
    println!(
        "digits, 4 vehicles, seed 42, {rounds} rounds, updates {codec}; bytes per round, all vehicles\n"
    );
    println!(
        "{:>5}  {:>12} {:>12}  {:>12} {:>12}  {:>12} {:>12}  {:>12} {:>12}",
        "round",
        "ledger up",
        "ledger down",
        "TLS ledger up",
        "TLS ldg down",
        "socket up",
        "socket down",
        "TLS sock up",
        "TLS sock dn"
    );
    for (i, (p, t)) in plain.iter().zip(&tls).enumerate() {
        println!(
            "{:>5}  {:>12} {:>12}  {:>12} {:>12}  {:>12} {:>12}  {:>12} {:>12}",
            i + 1,
            p.0,
            p.1,
            t.0,
            t.1,
            p.2,
            p.3,
            t.2,
            t.3
        );
    }
    // rounds after the first: no connections or handshakes
    let later = |v: &PerRound, f: fn(&(u64, u64, u64, u64)) -> u64| {
        median(v.iter().skip(1).map(f).collect())
    };
    let diff =
        |f: fn(&(u64, u64, u64, u64)) -> u64| later(&tls, f) as i64 - later(&plain, f) as i64;
    println!(
        "\nwhat TLS adds per round (median of rounds 2..{rounds}), up / down:\n  \
         ledger (record framing estimate): {:>8} / {:>8} bytes\n  \
         socket (measured, TLS run minus plain run): {:>8} / {:>8} bytes\n  \
         round 1 on the socket, with 4 connections and TLS handshakes: +{} / +{} bytes",
        diff(|r| r.0),
        diff(|r| r.1),
        diff(|r| r.2),
        diff(|r| r.3),
        tls[0].2 as i64 - plain[0].2 as i64,
        tls[0].3 as i64 - plain[0].3 as i64,
    );
    Ok(())
}
