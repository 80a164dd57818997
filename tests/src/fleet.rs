//! One fleet per test: a broker, the server, N agents and a tap on the
//! update topics, each test saying only how its fleet differs.

use crate::api::{
    AgentConfig, AgentError, ClientTopic, PendingUpdate, RoundRow, RunSummary, ServerConfig,
    StateDir, Store, topics,
};
use crate::broker::Broker;
use crate::scenario::Scenario;
use crate::wire::Wire;
use anyhow::Context;
use convoy_server::identity;
use convoy_shared::identity::{PublicKey, SecretKey};
use convoy_shared::topics::TopicId;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a server or agent may take to end once it should.
const EXIT_TIMEOUT: Duration = Duration::from_secs(120);

static NEXT_FLEET: AtomicU64 = AtomicU64::new(0);

/// A fleet id no other fleet of this or a concurrent test process uses:
/// `<test>-<pid>-<n>`, with `test` cut and cleaned to stay a valid id.
pub fn fleet_name(test: &str) -> String {
    let suffix = format!(
        "-{}-{}",
        std::process::id(),
        NEXT_FLEET.fetch_add(1, Ordering::Relaxed)
    );
    let mut name: String = test
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(topics::MAX_ID - suffix.len())
        .collect();
    name.push_str(&suffix);
    name
}

/// A fleet configured but not yet running: tweak its configs, then
/// [`FleetBuilder::start`].
#[derive(Debug)]
pub struct FleetBuilder {
    name: String,
    broker: Broker,
    scenario: Scenario,
    /// The server's config.
    pub server: ServerConfig,
    /// One config per vehicle, `car-<i>` at index `i`.
    pub agents: Vec<AgentConfig>,
    hold_server: bool,
    held: Vec<bool>,
}

impl FleetBuilder {
    /// Rounds the server runs before it exits (0: until stopped).
    pub fn rounds(mut self, total: u64) -> Self {
        self.server.rounds.total = total;
        self
    }

    /// Online vehicles the server waits for before a round opens.
    pub fn min_clients(mut self, n: usize) -> Self {
        self.server.rounds.min_clients = n;
        self
    }

    /// Changes the server's config.
    pub fn server(mut self, tweak: impl FnOnce(&mut ServerConfig)) -> Self {
        tweak(&mut self.server);
        self
    }

    /// Changes agent `i`'s config.
    pub fn agent(mut self, i: usize, tweak: impl FnOnce(&mut AgentConfig)) -> Self {
        tweak(&mut self.agents[i]);
        self
    }

    /// Configures the server but leaves starting it to the test.
    pub fn hold_server(mut self) -> Self {
        self.hold_server = true;
        self
    }

    /// Configures agent `i` but leaves starting it (in-process or as a
    /// binary) to the test.
    pub fn hold_agent(mut self, i: usize) -> Self {
        self.held[i] = true;
        self
    }

    /// [`FleetBuilder::hold_agent`] for every agent.
    pub fn hold_agents(mut self) -> Self {
        self.held.iter_mut().for_each(|h| *h = true);
        self
    }

    /// The scenario's work folder, deleted with the fleet.
    pub fn dir(&self) -> &Path {
        self.scenario.dir.path()
    }

    /// Provisions the vehicles (as `convoy-server provision` does), subscribes
    /// the tap, then starts the server and the agents not held.
    pub async fn start(mut self) -> anyhow::Result<Fleet> {
        convoy_tools::fleet::provision(&self.server, &mut self.agents)?;
        let url = self.broker.url();
        let mut tap = Wire::connect(&url, &self.name, &format!("{}-tap", self.name)).await?;
        tap.subscribe(&topics::all_clients(&self.name, ClientTopic::Update))
            .await?;
        let mut fleet = Fleet {
            server: None,
            agents: self.agents.into_iter().map(AgentHandle::new).collect(),
            server_config: self.server,
            tap,
            scenario: self.scenario,
            name: self.name,
            broker: self.broker,
        };
        if !self.hold_server {
            fleet.start_server();
        }
        for (agent, held) in fleet.agents.iter_mut().zip(self.held) {
            if !held {
                agent.start();
            }
        }
        Ok(fleet)
    }
}

/// A running fleet. Dropping it cancels whatever still runs.
#[derive(Debug)]
pub struct Fleet {
    name: String,
    server: Option<ServerRun>,
    /// The vehicles, `car-<i>` at index `i`.
    pub agents: Vec<AgentHandle>,
    /// Config the next [`Fleet::start_server`] uses.
    pub server_config: ServerConfig,
    /// Subscribed to every update topic of the fleet since before the
    /// server started.
    pub tap: Wire,
    /// Data and work folder.
    pub scenario: Scenario,
    broker: Broker,
}

impl Fleet {
    /// `clients` vehicles on the digits data split with `seed`, on an
    /// embedded broker; one round once all are online.
    pub fn digits(test: &str, clients: usize, seed: u64) -> anyhow::Result<FleetBuilder> {
        Self::digits_on(Broker::embedded()?, test, clients, seed)
    }

    /// [`Fleet::digits`] on `broker`.
    pub fn digits_on(
        broker: Broker,
        test: &str,
        clients: usize,
        seed: u64,
    ) -> anyhow::Result<FleetBuilder> {
        let name = fleet_name(test);
        let scenario = Scenario::digits(clients, seed)?;
        let url = broker.url();
        Ok(FleetBuilder {
            server: scenario.server_config(&url, &name, 1, clients),
            agents: (0..clients)
                .map(|i| scenario.agent_config(&url, &name, i))
                .collect(),
            hold_server: false,
            held: vec![false; clients],
            name,
            broker,
            scenario,
        })
    }

    /// The fleet id.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The broker's `mqtt://` URL.
    pub fn url(&self) -> String {
        self.broker.url()
    }

    /// The scenario's work folder.
    pub fn dir(&self) -> &Path {
        self.scenario.dir.path()
    }

    /// The server's database.
    pub fn db(&self) -> &Path {
        &self.server_config.db
    }

    /// Opens the server's ledger.
    pub fn store(&self) -> anyhow::Result<Store> {
        Ok(Store::open_existing(self.db())?)
    }

    /// `convoy/v1/<fleet>/round`.
    pub fn round_topic(&self) -> String {
        topics::round(&self.name).to_string()
    }

    /// `convoy/v1/<fleet>/<kind>/<client>`.
    pub fn topic(&self, kind: ClientTopic, client: &str) -> String {
        topics::client(&self.name, kind, client).to_string()
    }

    /// Provisions (or re-keys) vehicle `id` with the server and returns its
    /// signing key.
    pub fn provision(&self, id: &str) -> anyhow::Result<SecretKey> {
        let store = Store::open(self.db())?;
        let id: TopicId = id.parse().map_err(anyhow::Error::msg)?;
        let out = self.dir().join("identity");
        let made = identity::provision(&store, &self.server_public()?.into(), &[id], &out, true)?;
        let dir = &made.first().context("one vehicle provisioned")?.dir;
        Ok(SecretKey::read(&dir.join(identity::VEHICLE_KEY))?)
    }

    /// The server's public key.
    pub fn server_public(&self) -> anyhow::Result<PublicKey> {
        Ok(identity::server_key(&self.server_config.key_file())?.public())
    }

    /// A fresh raw connection to this fleet's broker as `id`.
    pub async fn wire(&self, id: &str) -> anyhow::Result<Wire> {
        Wire::connect(&self.url(), &self.name, id).await
    }

    /// Starts the server with [`Fleet::server_config`].
    pub fn start_server(&mut self) {
        assert!(self.server.is_none(), "the server is already running");
        self.server = Some(ServerRun::spawn(self.server_config.clone()));
    }

    /// The running server.
    pub fn server(&mut self) -> &mut ServerRun {
        self.server.as_mut().expect("the server was started")
    }

    /// Waits for the next closed round, failing after `secs`.
    pub async fn next_round(&mut self, secs: u64) -> anyhow::Result<RoundRow> {
        self.server().next_round(secs).await
    }

    /// The next `n` closed rounds, each within `secs`.
    pub async fn next_rounds(&mut self, n: usize, secs: u64) -> anyhow::Result<Vec<RoundRow>> {
        let mut rounds = Vec::with_capacity(n);
        for _ in 0..n {
            rounds.push(self.next_round(secs).await?);
        }
        Ok(rounds)
    }

    /// Drops the server mid-run, with no graceful shutdown, as a crash would.
    pub async fn kill_server(&mut self) {
        if let Some(server) = self.server.take() {
            server.kill().await;
        }
    }

    /// Waits for the server to end on its own (its rounds are done).
    pub async fn server_finished(&mut self) -> anyhow::Result<RunSummary> {
        self.server
            .take()
            .context("the server was not started")?
            .finished()
            .await
    }

    /// Starts every agent not running.
    pub fn start_agents(&mut self) {
        self.agents
            .iter_mut()
            .filter(|a| !a.is_running())
            .for_each(AgentHandle::start);
    }

    /// Stops every agent; fails if any of them failed.
    pub async fn stop_agents(&mut self) -> anyhow::Result<()> {
        self.agents.iter().for_each(|a| a.stop.cancel());
        for agent in &mut self.agents {
            agent.stop().await?;
        }
        Ok(())
    }

    /// Waits for the server to finish its rounds, then stops the agents.
    pub async fn finish(&mut self) -> anyhow::Result<RunSummary> {
        let summary = self.server_finished().await?;
        self.stop_agents().await?;
        Ok(summary)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if let Some(server) = &self.server {
            server.stop.cancel();
        }
        self.agents.iter().for_each(|a| a.stop.cancel());
    }
}

/// A running server task and the rounds it reports.
#[derive(Debug)]
pub struct ServerRun {
    /// Stops it gracefully.
    pub stop: CancellationToken,
    /// Closed rounds, as they close.
    pub rounds: mpsc::UnboundedReceiver<RoundRow>,
    /// The task.
    pub task: JoinHandle<Result<RunSummary, crate::api::ServerError>>,
    /// Where its own `[http]` listens, once bound.
    http_bound: mpsc::UnboundedReceiver<std::net::SocketAddr>,
}

impl ServerRun {
    /// Spawns the server.
    pub fn spawn(config: ServerConfig) -> Self {
        let stop = CancellationToken::new();
        let (tx, rounds) = mpsc::unbounded_channel();
        let (bound, http_bound) = mpsc::unbounded_channel();
        let hooks = convoy_server::Hooks {
            rounds: Some(tx),
            http_bound: Some(bound),
            ..Default::default()
        };
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let prepared = convoy_server::run::prepare(&config)?;
            convoy_server::run_prepared(config, prepared, token, hooks).await
        });
        Self {
            stop,
            rounds,
            task,
            http_bound,
        }
    }

    /// The address its own `[http]` bound (`listen` may ask for port 0),
    /// failing after `secs`.
    pub async fn http_addr(&mut self, secs: u64) -> anyhow::Result<std::net::SocketAddr> {
        tokio::time::timeout(Duration::from_secs(secs), self.http_bound.recv())
            .await
            .context("timed out waiting for the HTTP server to bind")?
            .context("server stopped before its HTTP server bound")
    }

    /// Waits for the next closed round, failing after `secs`.
    pub async fn next_round(&mut self, secs: u64) -> anyhow::Result<RoundRow> {
        tokio::time::timeout(Duration::from_secs(secs), self.rounds.recv())
            .await
            .context("timed out waiting for a round to close")?
            .context("server stopped before the round closed")
    }

    /// Waits for the server to end on its own; its error, if any.
    pub async fn finished(self) -> anyhow::Result<RunSummary> {
        Ok(tokio::time::timeout(EXIT_TIMEOUT, self.task)
            .await
            .context("server did not finish")???)
    }

    /// Aborts the task and waits until it is gone.
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// One vehicle's agent, run in-process, which the test can stop and start
/// again on the same state folder.
#[derive(Debug)]
pub struct AgentHandle {
    /// Config the next [`AgentHandle::start`] uses.
    pub config: AgentConfig,
    stop: CancellationToken,
    task: Option<JoinHandle<Result<(), AgentError>>>,
}

impl AgentHandle {
    fn new(config: AgentConfig) -> Self {
        Self {
            config,
            stop: CancellationToken::new(),
            task: None,
        }
    }

    /// The vehicle's client id.
    pub fn id(&self) -> &str {
        &self.config.client_id
    }

    /// Whether it was started and has not been waited for.
    pub fn is_running(&self) -> bool {
        self.task.is_some()
    }

    /// Spawns the agent with [`AgentHandle::config`].
    pub fn start(&mut self) {
        assert!(self.task.is_none(), "{} is already running", self.id());
        self.stop = CancellationToken::new();
        let run = convoy_agent::run(self.config.clone(), self.stop.clone());
        self.task = Some(tokio::spawn(run));
    }

    /// Waits for the agent to end by itself (an injected fault) and returns
    /// how it ended.
    pub async fn exited(&mut self) -> anyhow::Result<Result<(), AgentError>> {
        let task = self.task.take().context("the agent was not started")?;
        Ok(tokio::time::timeout(EXIT_TIMEOUT, task)
            .await
            .with_context(|| format!("{} did not exit", self.config.client_id))??)
    }

    /// Stops the agent gracefully; fails if it had failed.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        self.stop.cancel();
        if self.task.is_none() {
            return Ok(());
        }
        Ok(self.exited().await??)
    }

    /// Stops the agent and starts it again on the same state folder.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await?;
        self.start();
        Ok(())
    }

    /// Opens the agent's state folder.
    pub fn state(&self) -> anyhow::Result<StateDir> {
        Ok(StateDir::open(&self.config.state_dir)?)
    }

    /// The update the agent stored but has not had acknowledged.
    pub fn pending(&self) -> anyhow::Result<Option<PendingUpdate>> {
        Ok(self.state()?.pending()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleet_names_are_unique_valid_ids() {
        let long = "a test name far longer than any fleet id may be, with spaces/slashes";
        let names = [fleet_name("e2e"), fleet_name("e2e"), fleet_name(long)];
        assert!(names.iter().all(|n| topics::valid_id(n)), "{names:?}");
        assert_ne!(names[0], names[1]);
        assert!(names[2].starts_with("a_test_name"), "{}", names[2]);
    }
}
