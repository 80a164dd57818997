//! Runs a whole fleet in one process: server and agents over a real broker.
//! Shared by `demo` and `simulate`.

use crate::config::{ServerBroker, ServerConfig};
use crate::run::{Prepared, RunSummary};
use crate::store::RoundRow;
use convoy_agent::LocalData;
use convoy_agent::config::{AgentConfig, DataConfig, Faults, TrainingConfig};
use convoy_runtime::link::{BrokerConfig, BrokerUrl};
use convoy_shared::spec::TaskKind;
use std::path::{Path, PathBuf};
use tokio_util::sync::CancellationToken;

/// Largest MQTT packet used inside a local fleet.
pub const LOCAL_MAX_PACKET: usize = 1024 * 1024;

/// Starts the embedded broker on a free loopback port; returns its URL.
pub async fn local_broker() -> anyhow::Result<BrokerUrl> {
    let addr = tokio::task::spawn_blocking(|| -> anyhow::Result<_> {
        let addr = crate::broker::free_local_addr()?;
        Ok(crate::broker::start_embedded(
            &addr.to_string(),
            LOCAL_MAX_PACKET,
        )?)
    })
    .await??;
    Ok(BrokerUrl::tcp(addr))
}

/// Server broker settings for a local fleet on `url`.
pub fn server_broker(url: &BrokerUrl) -> ServerBroker {
    ServerBroker {
        link: local_link(url),
        ..Default::default()
    }
}

/// Client settings for a member of a local fleet on `url`.
pub fn local_link(url: &BrokerUrl) -> BrokerConfig {
    BrokerConfig {
        max_packet_size: LOCAL_MAX_PACKET,
        ..BrokerConfig::at(url.clone())
    }
}

/// An agent config for a local fleet member; fails on an invalid id.
pub fn agent_config(
    fleet: &str,
    id: &str,
    url: &BrokerUrl,
    state_dir: PathBuf,
    data: DataConfig,
) -> anyhow::Result<AgentConfig> {
    Ok(AgentConfig {
        fleet: fleet.parse().map_err(anyhow::Error::msg)?,
        client_id: id.parse().map_err(anyhow::Error::msg)?,
        state_dir,
        broker: local_link(url),
        data,
        training: TrainingConfig::default(),
        policy: Default::default(),
        limits: Default::default(),
        faults: Faults::default(),
        deployment: None,
    })
}

/// Data settings for agents fed in-memory rows.
pub fn prepared_data_config(label: &str) -> DataConfig {
    DataConfig {
        path: Path::new("(in memory)").to_path_buf(),
        label: label.into(),
        task: TaskKind::Classification,
    }
}

/// Runs `server` (with `prepared`, or from its own config) and the agents
/// until the server has run its configured rounds; `on_round` sees each
/// closed round as it closes.
pub async fn run(
    server: ServerConfig,
    prepared: Option<Prepared>,
    agents: Vec<(AgentConfig, Option<LocalData>)>,
    shutdown: CancellationToken,
    mut on_round: impl FnMut(&RoundRow),
) -> anyhow::Result<(Vec<RoundRow>, RunSummary)> {
    let stop = shutdown.child_token();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let server = match prepared {
        Some(p) => tokio::spawn(crate::run_prepared(server, p, stop.clone(), Some(tx))),
        None => tokio::spawn(crate::run_observed(server, stop.clone(), Some(tx))),
    };
    let agent_stop = stop.child_token();
    let agent_tasks: Vec<_> = agents
        .into_iter()
        .map(|(config, data)| match data {
            Some(data) => tokio::spawn(convoy_agent::run_with_data(
                config,
                data,
                agent_stop.clone(),
            )),
            None => tokio::spawn(convoy_agent::run(config, agent_stop.clone())),
        })
        .collect();
    let mut rounds = Vec::new();
    while let Some(row) = rx.recv().await {
        on_round(&row);
        rounds.push(row);
    }
    let summary = server.await??;
    agent_stop.cancel();
    for task in agent_tasks {
        if let Ok(Err(e)) = task.await {
            tracing::warn!(error = %e, "fleet agent stopped with an error");
        }
    }
    Ok((rounds, summary))
}
