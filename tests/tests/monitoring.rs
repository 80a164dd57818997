//! The HTTP side against the ledger: a simulated fleet's database served
//! by the real HTTP server on loopback; `/metrics` read by a Prometheus
//! text-format parser, the JSON API and the dashboard compared with what
//! the store holds.

use convoy_server::http::{self, Live, Settings};
use convoy_store::{RoundStatus, Store};
use convoy_tests::api::simulate::{self, SimOptions, Transport};
use convoy_tests::http::get;
use prometheus_parse::{Scrape, Value};
use tokio_util::sync::CancellationToken;

fn options(out: &std::path::Path) -> SimOptions {
    SimOptions {
        clients: 5,
        rounds: 3,
        seed: 3,
        hidden: vec![16],
        transport: Transport::Memory,
        ..convoy_tests::digits_sim(out, "topk:0.2+q8", "q8")
    }
}

/// One sample's value, by metric name and label pairs.
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .and_then(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
            _ => None,
        })
}

/// `v` as the API's JSON reads back (text, then parsed: the same rounding).
fn parsed<T: serde::Serialize + ?Sized>(v: &T) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::from_str(&serde_json::to_string(v)?)?)
}

fn json(addr: &str, path: &str) -> anyhow::Result<serde_json::Value> {
    let r = get(addr, path)?;
    anyhow::ensure!(r.status == 200, "{path}: {} {}", r.status, r.body);
    Ok(serde_json::from_str(&r.body)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_api_and_dashboard_agree_with_the_ledger() -> anyhow::Result<()> {
    convoy_tests::init_tracing();
    let dir = tempfile::tempdir()?;
    simulate::run(options(dir.path()), CancellationToken::new()).await?;
    let db = dir.path().join("sim.db");
    let settings = Settings {
        db: db.clone(),
        fleet: "sim".into(),
        vehicle_series_cap: 2,
        budget: convoy_server::config::BudgetConfig {
            daily_mb: 1.0,
            monthly_mb: 0.0,
        },
    };
    let server = http::serve("127.0.0.1:0", settings, Live::default()).await?;
    let addr = server.addr.to_string();
    let store = Store::open_existing(&db)?;
    let rounds = store.rounds()?;
    assert_eq!(rounds.len(), 3);

    let addr2 = addr.clone();
    let (metrics, api) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let m = get(&addr2, "/metrics")?;
        anyhow::ensure!(m.status == 200, "{}", m.body);
        anyhow::ensure!(
            m.content_type
                .as_deref()
                .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")),
            "{:?}",
            m.content_type
        );
        let api = [
            "/api/v1/rounds",
            "/api/v1/rounds?offset=1&limit=1",
            "/api/v1/rounds/2",
            "/api/v1/vehicles",
            "/api/v1/vehicles/sim-001",
            "/api/v1/models?limit=2",
            "/api/v1/openapi.json",
        ]
        .iter()
        .map(|p| json(&addr2, p))
        .collect::<anyhow::Result<Vec<_>>>()?;
        Ok((m.body, api))
    })
    .await??;

    // /metrics, parsed as Prometheus parses it, adds up to the ledger
    let scrape = Scrape::parse(metrics.lines().map(|l| Ok(l.to_string())))?;
    let sum = |f: fn(&convoy_store::RoundRow) -> u64| rounds.iter().map(f).sum::<u64>() as f64;
    for (name, want) in [
        ("convoy_bytes_up_total", sum(|r| r.bytes_up)),
        ("convoy_bytes_down_total", sum(|r| r.bytes_down)),
        ("convoy_wire_bytes_up_total", sum(|r| r.wire_bytes_up)),
        ("convoy_wire_bytes_down_total", sum(|r| r.wire_bytes_down)),
        ("convoy_fp32_bytes_up_total", sum(|r| r.bytes_up_raw)),
        ("convoy_fp32_bytes_down_total", sum(|r| r.bytes_down_raw)),
    ] {
        assert_eq!(value(&scrape, name, &[]), Some(want), "{name}");
        assert!(want > 0.0, "{name} is counted");
    }
    let finished = rounds
        .iter()
        .filter(|r| r.status == RoundStatus::Finished)
        .count() as f64;
    assert_eq!(
        value(&scrape, "convoy_rounds_total", &[("status", "finished")]),
        Some(finished)
    );
    assert_eq!(
        value(&scrape, "convoy_vehicles_total", &[("outcome", "reported")]),
        Some(sum(|r| r.clients_reported))
    );
    let train: f64 = rounds.iter().map(|r| r.train_seconds_sum).sum();
    let got = value(&scrape, "convoy_training_seconds_total", &[]).unwrap_or(-1.0);
    assert!((got - train).abs() < 1e-9, "{got} vs {train}");
    let last = rounds.last().unwrap();
    assert_eq!(
        value(
            &scrape,
            "convoy_round_bytes",
            &[("direction", "up"), ("kind", "payload")]
        ),
        Some(last.bytes_up as f64)
    );
    let ratio = value(
        &scrape,
        "convoy_round_compression_ratio",
        &[("direction", "up")],
    )
    .unwrap();
    assert!((ratio - last.bytes_up_raw as f64 / last.bytes_up as f64).abs() < 1e-9);
    assert_eq!(
        value(
            &scrape,
            "convoy_model_info",
            &[("version", &store.current_version()?.unwrap())]
        ),
        Some(1.0)
    );
    // the cardinality cap: two vehicles by name, the other three summed
    let per_vehicle: Vec<_> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "convoy_vehicle_bytes_up_total")
        .collect();
    assert_eq!(per_vehicle.len(), 3, "cap 2 + _other");
    assert!(
        per_vehicle
            .iter()
            .any(|s| s.labels.get("vehicle") == Some("_other"))
    );
    let vehicle_sum: f64 = per_vehicle
        .iter()
        .map(|s| match s.value {
            Value::Counter(v) => v,
            _ => 0.0,
        })
        .sum();
    assert_eq!(
        vehicle_sum,
        sum(|r| r.bytes_up),
        "per-vehicle series add up to the total"
    );
    assert_eq!(
        value(&scrape, "convoy_vehicle_series_folded", &[]),
        Some(3.0)
    );
    let count = value(&scrape, "convoy_round_duration_seconds_count", &[]);
    assert_eq!(count, Some(3.0));
    // every metric the shipped Grafana dashboard queries is exported
    let grafana: serde_json::Value =
        serde_json::from_str(include_str!("../../monitoring/grafana-dashboard.json"))?;
    let mut queried = 0;
    for panel in grafana["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for (i, _) in expr.match_indices("convoy_") {
                let name: String = expr[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                queried += 1;
                assert!(
                    metrics.contains(&format!("# TYPE {} ", name.trim_end_matches("_bucket"))),
                    "Grafana queries {name}, which /metrics lacks"
                );
            }
        }
    }
    assert!(queried > 15);

    // the JSON API is the ledger
    let [all, page, round2, vehicles, one, models, openapi] =
        <[serde_json::Value; 7]>::try_from(api).map_err(|_| anyhow::anyhow!("seven answers"))?;
    assert_eq!(all["total"], 3);
    assert_eq!(all["items"], parsed(&rounds)?);
    assert_eq!(page["items"], parsed(&rounds[1..2])?);
    assert_eq!(
        (page["offset"].as_u64(), page["limit"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(round2["round"], parsed(&rounds[1])?);
    assert_eq!(round2["vehicles"], parsed(&store.clients(2)?)?);
    assert_eq!(vehicles["total"], 5);
    let up: u64 = vehicles["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["bytes_up"].as_u64().unwrap())
        .sum();
    assert_eq!(up as f64, sum(|r| r.bytes_up));
    assert_eq!(one["rounds"], parsed(&store.vehicle_rows("sim-001")?)?);
    assert_eq!(one["vehicle"]["daily_cap"], 1_000_000);
    assert!(one["vehicle"]["budget_used"].as_f64().unwrap() > 0.0);
    assert_eq!(models["current"], parsed(&store.current_version()?)?);
    assert_eq!(models["total"], 4, "the initial model and one per round");
    assert_eq!(models["items"], parsed(&store.versions()?[..2])?);
    assert!(openapi["paths"]["/api/v1/rounds/{n}"].is_object());

    // errors say what is wrong, as JSON
    let addr2 = addr.clone();
    let (missing, bad, stranger, ready) =
        tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            Ok((
                get(&addr2, "/api/v1/rounds/99")?,
                get(&addr2, "/api/v1/rounds?limit=5000")?,
                get(&addr2, "/api/v1/vehicles/nobody")?,
                get(&addr2, "/readyz")?,
            ))
        })
        .await??;
    assert_eq!(missing.status, 404);
    assert!(missing.body.contains("no round 99"), "{}", missing.body);
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("1 to 1000"), "{}", bad.body);
    assert_eq!(stranger.status, 404);
    assert_eq!(ready.status, 503, "no run coordinates rounds here");

    // the dashboard: one chart per metric, a point per closed round, a row per vehicle
    let addr2 = addr.clone();
    let page = tokio::task::spawn_blocking(move || get(&addr2, "/")).await??;
    assert_eq!(page.status, 200);
    let html = page.body;
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "nothing from elsewhere"
    );
    let charts: Vec<&str> = html.split("<figure class=\"chart\"").skip(1).collect();
    assert_eq!(charts.len(), 7);
    for chart in &charts {
        assert_eq!(chart.matches("class=\"pt\"").count(), 3, "{}", &chart[..60]);
    }
    let table = html.split("<tbody>").nth(1).unwrap_or_default();
    assert_eq!(table.matches("<tr>").count(), 5);
    server.stop().await;
    Ok(())
}

/// `convoy-server run` with `[http] listen`: ready while it coordinates
/// rounds over a connected broker, and gone once the run ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_server_serves_its_http_side_while_it_runs() -> anyhow::Result<()> {
    convoy_tests::init_tracing();
    let mut fleet = convoy_tests::Fleet::digits("http_side", 2, 7)?
        .rounds(3)
        .server(|c| c.http.listen = "127.0.0.1:0".into())
        .start()
        .await?;
    // port 0: the system picks one, and the run says which
    let addr = fleet.server().http_addr(30).await?.to_string();
    assert!(!addr.ends_with(":0"), "{addr}");
    fleet.next_round(60).await?;
    let a = addr.clone();
    let (ready, metrics, health) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        Ok((
            get(&a, "/readyz")?,
            get(&a, "/metrics")?,
            get(&a, "/healthz")?,
        ))
    })
    .await??;
    assert_eq!((ready.status, ready.body.trim()), (200, "ready"));
    assert_eq!(health.status, 200);
    let scrape = Scrape::parse(metrics.body.lines().map(|l| Ok(l.to_string())))?;
    assert_eq!(value(&scrape, "convoy_broker_connected", &[]), Some(1.0));
    assert_eq!(value(&scrape, "convoy_ready", &[]), Some(1.0));
    assert!(value(&scrape, "convoy_aggregation_seconds_total", &[]).unwrap() > 0.0);
    fleet.finish().await?;
    assert!(
        std::net::TcpStream::connect(&addr).is_err(),
        "the HTTP server stops with the run"
    );
    Ok(())
}
