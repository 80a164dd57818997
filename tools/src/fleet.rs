//! Runs a whole fleet in one process: server and agents over a real broker.
//! Shared by `demo` and `simulate`.

use convoy_agent::LocalData;
use convoy_agent::config::{AgentConfig, DataConfig, Faults, TrainingConfig};
use convoy_runtime::link::{BrokerConfig, BrokerUrl};
use convoy_server::broker::{Access, Credentials, Listen};
use convoy_server::config::{ServerBroker, ServerConfig};
use convoy_server::http::Live;
use convoy_server::identity;
use convoy_server::run::{Prepared, RunSummary};
use convoy_shared::spec::TaskKind;
use convoy_store::{RoundRow, Store};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tokio_util::sync::CancellationToken;

/// Largest MQTT packet used inside a local fleet.
pub const LOCAL_MAX_PACKET: usize = 1024 * 1024;

/// An embedded broker on a loopback port that lets in the server and the
/// vehicles provisioned in one database, as a deployed server's does, over
/// TLS with a throwaway CA.
#[derive(Debug, Clone)]
pub struct LocalBroker {
    /// Where it listens.
    pub url: BrokerUrl,
    /// The CA its certificate chains to (TLS brokers only).
    pub ca_file: Option<PathBuf>,
    server_password: String,
}

impl LocalBroker {
    /// The in-process `memory://` broker named `name` (no logins).
    pub fn memory(name: String) -> Self {
        Self {
            url: BrokerUrl::Memory(name),
            ca_file: None,
            server_password: String::new(),
        }
    }
}

/// Starts the embedded broker on a free loopback port, serving TLS with a
/// throwaway CA made in `<db's folder>/tls/`, checking logins against the
/// vehicles provisioned in `db` and keeping each to its own topics.
pub async fn local_broker(db: &Path, fleet: &str) -> anyhow::Result<LocalBroker> {
    let server_password = identity::new_password();
    let access = Access::Credentials(Credentials {
        db: db.to_path_buf(),
        fleet: fleet.to_string(),
        server_id: ServerBroker::default().client_id,
        server_password: server_password.clone(),
        status_readers: Vec::new(),
    });
    let dir = db.parent().unwrap_or(Path::new(".")).join("tls");
    let files = convoy_server::tls::throwaway(&dir)?;
    let ca_file = Some(files.ca.clone());
    let addr = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let addr = convoy_server::broker::free_local_addr()?;
        let listen = Listen {
            tls: Some(files.listen(addr)),
            ..Listen::default()
        };
        let started = convoy_server::broker::start(&listen, LOCAL_MAX_PACKET, access)?;
        started
            .tls
            .ok_or_else(|| anyhow::anyhow!("the embedded broker's TLS listener did not start"))
    })
    .await??;
    Ok(LocalBroker {
        url: BrokerUrl::tls(addr),
        ca_file,
        server_password,
    })
}

/// Server broker settings for a local fleet on `broker`.
pub fn server_broker(broker: &LocalBroker) -> ServerBroker {
    let defaults = ServerBroker::default();
    let mut link = local_link(broker);
    link.username = Some(defaults.client_id.clone());
    link.password = Some(broker.server_password.clone());
    ServerBroker { link, ..defaults }
}

/// Provisions every agent as `convoy-server provision` would: the server's
/// key pair, and for each vehicle a key pair and broker password under
/// `<its state folder's parent>/identity/<id>/`, recorded in the server's
/// database; each agent config is pointed at its files.
pub fn provision(server: &ServerConfig, agents: &mut [AgentConfig]) -> anyhow::Result<()> {
    let key = identity::server_key(&server.key_file())?;
    let store = Store::open(&server.db)?;
    let mut by_folder: BTreeMap<PathBuf, Vec<usize>> = BTreeMap::new();
    for (i, agent) in agents.iter().enumerate() {
        let parent = agent.state_dir.parent().unwrap_or(Path::new("."));
        by_folder
            .entry(parent.join("identity"))
            .or_default()
            .push(i);
    }
    for (folder, members) in by_folder {
        let ids: Vec<_> = members
            .iter()
            .map(|i| agents[*i].client_id.clone())
            .collect();
        let made = identity::provision(
            &store,
            &identity::server_trusted(&key, &server.key_file()),
            &ids,
            &folder,
            true,
        )?;
        for (i, vehicle) in members.into_iter().zip(made) {
            let agent = &mut agents[i];
            agent.identity.key_file = vehicle.dir.join(identity::VEHICLE_KEY);
            agent.identity.server_key_file = vehicle.dir.join(identity::SERVER_PUB);
            agent.broker.username = Some(agent.client_id.to_string());
            agent.broker.password = Some(vehicle.password);
        }
    }
    Ok(())
}

/// Client settings for a member of a local fleet on `broker`.
pub fn local_link(broker: &LocalBroker) -> BrokerConfig {
    BrokerConfig {
        max_packet_size: LOCAL_MAX_PACKET,
        ca_file: broker.ca_file.clone(),
        ..BrokerConfig::at(broker.url.clone())
    }
}

/// An agent config for a local fleet member; fails on an invalid id.
pub fn agent_config(
    fleet: &str,
    id: &str,
    broker: &LocalBroker,
    state_dir: PathBuf,
    data: DataConfig,
) -> anyhow::Result<AgentConfig> {
    Ok(AgentConfig {
        fleet: fleet.parse().map_err(anyhow::Error::msg)?,
        client_id: id.parse().map_err(anyhow::Error::msg)?,
        state_dir,
        broker: local_link(broker),
        identity: Default::default(),
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
    DataConfig::new(
        Path::new("(in memory)").to_path_buf(),
        label,
        TaskKind::Classification,
    )
}

/// Provisions the agents ([`provision`]), then runs `server` (with
/// `prepared`, or from its own config) and the agents until the server has
/// run its configured rounds; `on_round` sees each closed round as it closes.
/// `live` is the state of an HTTP server the caller runs (else the server
/// serves its own `[http]`).
pub async fn run(
    server: ServerConfig,
    prepared: Option<Prepared>,
    agents: Vec<(AgentConfig, Option<LocalData>)>,
    shutdown: CancellationToken,
    live: Option<Live>,
    mut on_round: impl FnMut(&RoundRow),
) -> anyhow::Result<(Vec<RoundRow>, RunSummary)> {
    let (mut configs, data): (Vec<AgentConfig>, Vec<Option<LocalData>>) =
        agents.into_iter().unzip();
    provision(&server, &mut configs)?;
    let agents: Vec<_> = configs.into_iter().zip(data).collect();
    let stop = shutdown.child_token();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let hooks = convoy_server::Hooks {
        rounds: Some(tx),
        live,
        ..Default::default()
    };
    let prepared = match prepared {
        Some(p) => p,
        None => convoy_server::run::prepare(&server)?,
    };
    let server = tokio::spawn(convoy_server::run_prepared(
        server,
        prepared,
        stop.clone(),
        hooks,
    ));
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
    let mut check = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            row = rx.recv() => match row {
                Some(row) => {
                    on_round(&row);
                    rounds.push(row);
                }
                None => break,
            },
            _ = check.tick() => {
                // every vehicle gone: no round can ever finish, so say why
                // rather than wait for ever
                if !agent_tasks.is_empty() && agent_tasks.iter().all(|t| t.is_finished()) {
                    stop.cancel();
                    let mut why = Vec::new();
                    for task in agent_tasks {
                        match task.await {
                            Ok(Err(e)) => why.push(e.to_string()),
                            Ok(Ok(())) => why.push("stopped".into()),
                            Err(e) => why.push(e.to_string()),
                        }
                    }
                    let _ = server.await;
                    anyhow::bail!("every vehicle of the fleet stopped: {}", why.join("; "));
                }
            }
        }
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

/// The HTTP side of a local fleet (`demo`, `simulate`).
#[derive(Debug, Clone, clap::Args)]
pub struct ServeOptions {
    /// Serve the dashboard, /metrics and /api/v1 on this address (port 0:
    /// any free port; "off": no HTTP server).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub http: String,
    /// Keep serving this many seconds after the last round (Ctrl-C stops sooner).
    #[arg(long, default_value_t = 0)]
    pub serve_secs: u64,
}

impl ServeOptions {
    /// No HTTP server.
    pub fn off() -> Self {
        Self {
            http: "off".into(),
            serve_secs: 0,
        }
    }
}

/// The HTTP server of a local fleet, started before its run so that it
/// can outlive it.
#[derive(Debug)]
pub struct Dashboard {
    /// The state the run updates.
    pub live: Live,
    server: convoy_server::http::HttpServer,
    linger: std::time::Duration,
}

impl Dashboard {
    /// Starts serving `config`'s database as `options` say (`None`: off).
    pub async fn start(
        options: &ServeOptions,
        config: &ServerConfig,
    ) -> anyhow::Result<Option<Self>> {
        if options.http == "off" || options.http.is_empty() {
            return Ok(None);
        }
        let live = Live::default();
        let settings = convoy_server::http::Settings::of(config);
        let server = convoy_server::http::serve(&options.http, settings, live.clone()).await?;
        Ok(Some(Self {
            live,
            server,
            linger: std::time::Duration::from_secs(options.serve_secs),
        }))
    }

    /// The dashboard's URL.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Serves on for the configured time after the run (or until
    /// `shutdown`), then stops.
    pub async fn finish(self, shutdown: &CancellationToken) {
        if !self.linger.is_zero() {
            eprintln!(
                "dashboard: {} (serving {} s more; Ctrl-C stops)",
                self.server.url(),
                self.linger.as_secs()
            );
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(self.linger) => {}
            }
        }
        self.server.stop().await;
    }
}
