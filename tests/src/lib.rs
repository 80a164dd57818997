//! Harness for convoy's end-to-end tests: a real broker on a loopback port,
//! the real server and real agents, all in-process, plus an independent MQTT
//! client that plays vehicles and counts what crosses the wire.
//!
//! A test builds a [`Fleet`], changes what it tests, and starts it:
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use convoy_tests::Fleet;
//! let mut fleet = Fleet::digits("learns", 3, 11)?.rounds(4).start().await?;
//! let rounds = fleet.next_rounds(4, 60).await?;
//! fleet.finish().await?;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

pub mod api;
mod broker;
mod fleet;
pub mod http;
mod scenario;
mod vehicle;
mod wire;

pub use broker::{Broker, free_port, test_tls};
pub use fleet::{AgentHandle, Fleet, FleetBuilder, ServerRun, fleet_name};
pub use scenario::{MAX_PACKET, Scenario, link};
pub use vehicle::FakeVehicle;
pub use wire::{Wire, WireTally, login_accepted};

/// A file of the shared developer datasets (`shared/data/` beside the
/// repository), or an error saying where it was looked for.
pub fn shared_data(relative: &str) -> anyhow::Result<std::path::PathBuf> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data")
        .join(relative);
    anyhow::ensure!(
        path.exists(),
        "{} not found: the shared datasets must sit beside the repository (../shared/data)",
        path.display()
    );
    Ok(path)
}

/// Log to the test's captured output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,mqtt5=error")),
        )
        .with_test_writer()
        .try_init();
}

/// Simulator settings for a small digits fleet writing to `out`: 4
/// vehicles, 4 rounds, Dirichlet(0.5), the MQTT broker, no HTTP side.
pub fn digits_sim(out: &std::path::Path, codec: &str, downlink: &str) -> api::simulate::SimOptions {
    api::simulate::SimOptions {
        dataset: api::simulate::SimDataset::Digits,
        data_dir: out.to_path_buf(),
        clients: 4,
        rounds: 4,
        partition: api::partition::Partition::Dirichlet,
        alpha: 0.5,
        shards: 2,
        seed: 5,
        seeds: Vec::new(),
        codec: codec.parse().expect("a valid codec"),
        downlink_codec: downlink.parse().expect("a valid codec"),
        keyframe_every: 0,
        warmup_rounds: 0,
        server_lr: None,
        strategy: "fedavg".parse().expect("a valid strategy"),
        proximal_mu: None,
        lr_schedule: convoy_shared::strategy::server::Schedule::Constant,
        min_clients: 0,
        deadline_secs: 600,
        devices: api::simulate::DeviceModel {
            online: None,
            online_trace: None,
            slot_secs: 600.0,
            speed_spread: 1.0,
            step_secs: 0.05,
            max_hours: 72.0,
        },
        mode: api::simulate::SimMode::Sync,
        async_buffer: 10,
        max_staleness: 4,
        partition_file: None,
        rule: convoy_server::config::AggregationConfig::default().rule,
        weights: api::simulate::SimWeights::Samples,
        median_cap: 3.0,
        growth_cap: 4.0,
        norm_bound: 5.0,
        attack: None,
        attackers: 0,
        epochs: 1,
        lr: 0.05,
        batch_size: 16,
        hidden: vec![32],
        out: out.to_path_buf(),
        name: None,
        label: None,
        csv: None,
        csv_split: convoy_tools::csv_split::CsvSplit::Iid,
        task: convoy_shared::spec::TaskKind::Classification,
        test_csv: None,
        progress: false,
        transport: api::simulate::Transport::Mqtt,
        keep_updates: false,
        max_chain_depth: 20,
        max_rebuild_secs: 5.0,
        serve: api::fleet::ServeOptions::off(),
    }
}
