//! convoy-agent: trains on a vehicle's own data and syncs model updates
//! with the fleet's server over MQTT.
//!
//! [`run`] is the whole agent; the binary only parses flags and calls it.
//! One round, from the agent's side: a retained announcement arrives; the
//! agent fetches the base model's missing chunks; trains on a thread of its
//! own; encodes `local - base`; persists the update; uploads it in chunks;
//! and forgets it only once the server's receipt arrives. A restart in
//! between re-sends the stored update, which the server counts once.

#![forbid(unsafe_code)]

pub mod backend;
pub mod config;
pub mod memory;
pub mod mqtt;
pub mod policy;
pub mod process;
pub mod state;
pub mod trainer;

use crate::config::AgentConfig;
use crate::mqtt::{LinkEvent, QOS};
use crate::state::{PendingUpdate, StateDir, StoredModel};
use crate::trainer::{Job, TrainError};
use convoy_shared::chunk;
use convoy_shared::chunk::Reassembler;
use convoy_shared::codec::{self, Pipeline};
use convoy_shared::dataset::{Dataset, Table};
use convoy_shared::messages::{
    self, AgentState, Announce, FetchRequest, ModelChunk, ModelPart, Status, UpdateAck, UpdateBody,
    UpdateChunk,
};
use convoy_shared::params::ParamSet;
use convoy_shared::topics::{self, ClientTopic, Topic};
use convoy_shared::version::{self, MODEL_CHUNK_SIZE, VersionId};
use convoy_shared::wire::{self, Kind};
use rumqttc::LastWill;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::ConfigError;

/// Why the agent stopped.
#[derive(Debug, Error)]
pub enum AgentError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// State directory trouble.
    #[error(transparent)]
    State(#[from] state::StateError),
    /// Local data unusable.
    #[error("data {path}: {message}")]
    Data {
        /// file
        path: String,
        /// what is wrong
        message: String,
    },
    /// Broker settings unusable.
    #[error(transparent)]
    Link(#[from] mqtt::LinkError),
    /// A configured fault fired (tests only).
    #[error("fault injected: {0}")]
    FaultInjected(&'static str),
}

/// Current Unix time in milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Largest announcement or model chunk the agent will decode.
fn max_body(config: &AgentConfig) -> usize {
    config.broker.max_packet_size
}

/// What the training thread hands back: an encoded update (with its encode
/// seconds), or a checkpoint when the policy paused it.
enum Finished {
    Update(PendingUpdate, f64),
    Paused(trainer::Checkpoint),
}

type Training = trainer::Outcome<Finished>;

struct Fetch {
    announce: Announce,
    /// Full-model chunks by manifest index.
    chunks: Vec<Option<Vec<u8>>>,
    /// The model held, offered to the server as a delta base.
    held: Option<(VersionId, ParamSet)>,
    /// A compressed delta from `held`, being reassembled.
    delta: Option<Reassembler>,
    last_progress: Instant,
}

struct Agent {
    config: AgentConfig,
    state: StateDir,
    data: LocalData,
    client: mqtt::LinkClient,
    topic_update: Topic,
    topic_fetch: Topic,
    topic_status: Topic,
    announce: Option<Announce>,
    fetch: Option<Fetch>,
    training: Option<(u64, Training, Arc<AtomicBool>)>,
    awaiting_ack: Option<(u64, Instant)>,
    dataset: Option<([u8; 32], Arc<Dataset>)>,
    policy: policy::Policy,
    /// Set while the policy forbids training; the training thread pauses at
    /// its next batch.
    pause: Arc<AtomicBool>,
    /// A round waiting for the policy to allow training.
    waiting: Option<(Announce, StoredModel)>,
}

/// Where an agent's training data comes from.
#[derive(Debug, Clone)]
pub enum LocalData {
    /// A CSV read at start-up; columns are matched to each round's spec by name.
    Csv(Arc<Table>),
    /// Rows already normalised to the spec's features (the fleet simulator).
    Prepared(Arc<Dataset>),
    /// The CSV at `data.path`, released once its rows became the training
    /// set (so a vehicle holds one copy of its data, not two); read again
    /// for the next round, or when the model spec changes.
    Released {
        /// Its data rows.
        rows: usize,
    },
}

impl LocalData {
    fn rows(&self) -> usize {
        match self {
            LocalData::Csv(t) => t.len(),
            LocalData::Prepared(d) => d.len(),
            LocalData::Released { rows } => *rows,
        }
    }
}

/// Runs the agent until `shutdown` is cancelled (or a fatal error).
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> Result<(), AgentError> {
    config.validate()?;
    let table = load_table(&config)?;
    run_with_data(config, LocalData::Csv(Arc::new(table)), shutdown).await
}

/// [`run`] with the data supplied by the caller instead of read from
/// `config.data.path`.
pub async fn run_with_data(
    config: AgentConfig,
    data: LocalData,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    config.validate()?;
    let state = StateDir::open(&config.state_dir)?;
    let policy = policy::Policy::new(config.policy.clone()).map_err(ConfigError::Invalid)?;
    tracing::info!(
        client = %config.client_id,
        fleet = %config.fleet,
        rows = data.rows(),
        broker = %config.broker.url,
        "agent starting"
    );
    // The GPU probe can take a moment (driver load); it runs beside start-up
    // and training waits for its answer.
    let backend = config.training.backend;
    tokio::task::spawn_blocking(move || backend::explain(backend));
    let topic_status = topics::client(&config.fleet, ClientTopic::Status, &config.client_id);
    let offline = status_payload(&config, AgentState::Offline, 0, data.rows(), "offline");
    let will = LastWill::new(topic_status.as_str(), offline.clone(), QOS, true);

    let tracker = TaskTracker::new();
    let link_stop = CancellationToken::new();
    let mut link = mqtt::open(
        &config.broker,
        &config.client_id,
        Some(will),
        &tracker,
        link_stop.clone(),
    )?;
    let mut agent = Agent {
        topic_update: topics::client(&config.fleet, ClientTopic::Update, &config.client_id),
        topic_fetch: topics::client(&config.fleet, ClientTopic::Fetch, &config.client_id),
        topic_status,
        config,
        state,
        data,
        client: link.client.clone(),
        announce: None,
        fetch: None,
        training: None,
        awaiting_ack: None,
        dataset: None,
        policy,
        pause: Arc::new(AtomicBool::new(false)),
        waiting: None,
    };
    let mut systemd = process::Systemd::new();
    // Ready once set up: an agent without a link is still doing its job
    // (offline is normal), so readiness does not wait for the broker.
    systemd.ready("running");
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let result = loop {
        let step = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            event = link.events.recv() => match event {
                Some(event) => agent.on_event(event).await,
                None => break Ok(()),
            },
            done = async { (&mut agent.training.as_mut().expect("guarded").1).await },
                if agent.training.is_some() => {
                let (round, _, _) = agent.training.take().expect("guarded");
                let done = done.unwrap_or_else(|_| Err(TrainError::Thread("training thread died".into())));
                agent.on_trained(round, done).await
            }
            _ = tick.tick() => {
                systemd.tick();
                agent.on_tick().await
            }
        };
        if let Err(e) = step {
            break Err(e);
        }
    };
    systemd.stopping();
    if let Some((_, _, cancel)) = &agent.training {
        cancel.store(true, Ordering::Relaxed);
    }
    // A clean goodbye replaces the retained status; the will covers crashes.
    let _ = agent
        .client
        .publish(agent.topic_status.as_str(), true, offline)
        .await;
    let _ = agent.client.disconnect().await;
    link_stop.cancel();
    tracker.close();
    tracker.wait().await;
    tracing::info!("agent stopped");
    result
}

fn load_table(config: &AgentConfig) -> Result<Table, AgentError> {
    let err = |message: String| AgentError::Data {
        path: config.data.path.display().to_string(),
        message,
    };
    let file = std::fs::File::open(&config.data.path).map_err(|e| err(e.to_string()))?;
    let table = Table::read(std::io::BufReader::new(file)).map_err(|e| err(e.to_string()))?;
    if table.column(&config.data.label).is_none() {
        return Err(err(format!(
            "label column {:?} not found; columns are {:?}",
            config.data.label, table.headers
        )));
    }
    Ok(table)
}

fn status_payload(
    config: &AgentConfig,
    state: AgentState,
    round: u64,
    samples: usize,
    detail: &str,
) -> Vec<u8> {
    let status = Status {
        client: messages::id(&config.client_id).unwrap_or_default(),
        state,
        round,
        codecs: codec::STAGES
            .iter()
            .filter_map(|c| heapless::String::try_from(*c).ok())
            .collect(),
        samples: samples as u64,
        detail: messages::detail(detail),
        version: heapless::String::try_from(env!("CARGO_PKG_VERSION")).unwrap_or_default(),
        deployment: messages::id(&config.deployment).unwrap_or_default(),
    };
    wire::encode(Kind::Status, &status)
}

impl Agent {
    async fn publish(&self, topic: &str, retain: bool, payload: Vec<u8>) {
        if let Err(e) = self.client.publish(topic, retain, payload).await {
            tracing::warn!(topic, error = %e, "publish failed");
        }
    }

    async fn status(&self, state: AgentState, round: u64, detail: &str) {
        let payload = status_payload(&self.config, state, round, self.data.rows(), detail);
        self.publish(self.topic_status.as_str(), true, payload)
            .await;
    }

    async fn on_event(&mut self, event: LinkEvent) -> Result<(), AgentError> {
        match event {
            LinkEvent::Connected => {
                let fleet = &self.config.fleet;
                let me = &self.config.client_id;
                for topic in [
                    topics::round(fleet),
                    topics::client(fleet, ClientTopic::Model, me),
                    topics::client(fleet, ClientTopic::Ack, me),
                ] {
                    if let Err(e) = self.client.subscribe(topic.as_str()).await {
                        tracing::warn!(topic = topic.as_str(), error = %e, "subscribe failed");
                    }
                }
                let round = self.announce.as_ref().map(|a| a.round).unwrap_or(0);
                self.status(AgentState::Idle, round, "connected").await;
                // Anything trained but unacknowledged goes out again.
                if let Some(pending) = self.state.pending()? {
                    self.upload(&pending).await;
                }
                Ok(())
            }
            LinkEvent::Message { topic, payload, .. } => {
                if topic == topics::round(&self.config.fleet).as_str() {
                    match wire::decode::<Announce>(&payload, Kind::Announce, max_body(&self.config))
                    {
                        Ok(announce) => self.on_announce(announce).await,
                        Err(e) => {
                            tracing::warn!(error = %e, "ignoring bad round announcement");
                            Ok(())
                        }
                    }
                } else {
                    match topics::parse_client(&self.config.fleet, &topic) {
                        Some((ClientTopic::Model, _)) => self.on_model_chunk(&payload).await,
                        Some((ClientTopic::Ack, _)) => self.on_ack(&payload).await,
                        _ => Ok(()),
                    }
                }
            }
        }
    }

    async fn on_announce(&mut self, announce: Announce) -> Result<(), AgentError> {
        let round = announce.round;
        let in_hand = self.training.as_ref().map(|t| t.0) == Some(round)
            || self.fetch.as_ref().map(|f| f.announce.round) == Some(round)
            || self.waiting.as_ref().map(|(a, _)| a.round) == Some(round);
        if in_hand || self.announce.as_ref().is_some_and(|a| a.round == round) {
            return Ok(()); // re-delivery of the retained message
        }
        tracing::info!(round, base = %version::short(&announce.base_version()), codec = %announce.codec, "round announced");
        self.announce = Some(announce.clone());
        self.fetch = None;
        if self.waiting.as_ref().is_some_and(|(a, _)| a.round < round) {
            self.waiting = None;
            self.state.clear_checkpoint()?;
        }
        if let Some((training_round, _, cancel)) = &self.training
            && *training_round < round
        {
            tracing::warn!(
                training_round,
                round,
                "newer round announced; abandoning training"
            );
            cancel.store(true, Ordering::Relaxed);
            self.training = None;
        }
        if let Some(pending) = self.state.pending()? {
            // Re-send unless already in flight; an older round's update is
            // late but still reported so the server's ledger counts it.
            if self.awaiting_ack.map(|(r, _)| r) != Some(pending.round) {
                self.upload(&pending).await;
            }
            if pending.round >= round {
                return Ok(());
            }
        }
        if self.state.last_acked_round()?.is_some_and(|r| r >= round) {
            return Ok(());
        }
        let me = self.config.client_id.as_str();
        if !announce.selected.is_empty() && !announce.selected.iter().any(|c| c.as_str() == me) {
            self.status(AgentState::Idle, round, "not selected this round")
                .await;
            return Ok(());
        }
        if announce.deadline_ms <= now_ms() {
            self.status(AgentState::Skipped, round, "deadline already passed")
                .await;
            return Ok(());
        }
        if let Err(e) = codec::by_name(&announce.codec) {
            self.status(AgentState::Skipped, round, &e.to_string())
                .await;
            return Ok(());
        }
        match self.state.model()? {
            Some(model) if model.manifest.version == announce.base_version() => {
                self.start_training(announce, model).await
            }
            held => {
                // A fleet's first model is a pure function of its spec:
                // rebuild it locally instead of downloading it.
                let initial = announce.spec.init_params();
                if version::manifest_of(&initial, &announce.spec, &announce.task)
                    == announce.manifest
                {
                    tracing::info!(
                        round,
                        "base model rebuilt from its spec, nothing to download"
                    );
                    return self.install_model(announce, initial).await;
                }
                self.start_fetch(announce, held).await
            }
        }
    }

    async fn start_fetch(
        &mut self,
        announce: Announce,
        held: Option<StoredModel>,
    ) -> Result<(), AgentError> {
        // Content addressing: chunks whose hash we already hold are reused.
        let mut chunks: Vec<Option<Vec<u8>>> = vec![None; announce.manifest.chunks.len()];
        if let Some(held) = &held {
            let bytes = held.params.canonical_bytes();
            for piece in bytes.chunks(MODEL_CHUNK_SIZE) {
                let hash = version::chunk_hash(piece);
                for (i, want) in announce.manifest.chunks.iter().enumerate() {
                    if *want == hash && chunks[i].is_none() {
                        chunks[i] = Some(piece.to_vec());
                    }
                }
            }
        }
        let round = announce.round;
        let held = held
            .filter(|h| h.spec == announce.spec)
            .map(|h| (h.manifest.version, h.params));
        self.fetch = Some(Fetch {
            announce,
            chunks,
            held,
            delta: None,
            last_progress: Instant::now(),
        });
        self.status(AgentState::Fetching, round, "fetching model")
            .await;
        self.request_missing().await;
        self.try_finish_fetch().await
    }

    async fn request_missing(&mut self) {
        let Some(fetch) = &mut self.fetch else { return };
        let missing: Vec<u32> = (0..fetch.chunks.len() as u32)
            .filter(|i| fetch.chunks[*i as usize].is_none())
            .collect();
        if missing.is_empty() {
            return;
        }
        fetch.last_progress = Instant::now();
        // A partial delta is restarted whole: deltas are small.
        fetch.delta = None;
        let request = FetchRequest {
            version: fetch.announce.base_version(),
            chunks: missing,
            have: fetch.held.as_ref().map(|(v, _)| *v),
        };
        let payload = wire::encode(Kind::FetchRequest, &request);
        self.publish(self.topic_fetch.as_str(), false, payload)
            .await;
    }

    async fn on_model_chunk(&mut self, payload: &[u8]) -> Result<(), AgentError> {
        let chunk =
            match wire::decode::<ModelChunk>(payload, Kind::ModelChunk, max_body(&self.config)) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "ignoring bad model chunk");
                    return Ok(());
                }
            };
        let Some(fetch) = &mut self.fetch else {
            return Ok(());
        };
        if chunk.version != fetch.announce.manifest.version {
            return Ok(());
        }
        match chunk.part {
            ModelPart::Full { index } => {
                let manifest = &fetch.announce.manifest;
                let index = index as usize;
                if index >= manifest.chunks.len()
                    || version::chunk_hash(&chunk.data) != manifest.chunks[index]
                {
                    tracing::warn!(index, "model chunk does not match the manifest; ignored");
                    return Ok(());
                }
                fetch.chunks[index] = Some(chunk.data);
                fetch.last_progress = Instant::now();
                self.try_finish_fetch().await
            }
            ModelPart::Delta { from, pos } => {
                if fetch.held.as_ref().map(|(v, _)| *v) != Some(from) {
                    return Ok(());
                }
                let limit = 8 * fetch.announce.spec.layout().numel() + 4096;
                if fetch.delta.is_none() {
                    fetch.delta = Reassembler::new(pos, chunk.data.len(), limit).ok();
                }
                let complete = match fetch.delta.as_mut().map(|r| r.insert(pos, &chunk.data)) {
                    Some(Ok(chunk::Progress::Complete)) => true,
                    Some(Ok(_)) => false,
                    _ => {
                        tracing::warn!("bad model delta chunk; asking for the full model");
                        fetch.held = None;
                        self.request_missing().await;
                        return Ok(());
                    }
                };
                fetch.last_progress = Instant::now();
                if complete {
                    self.apply_delta().await?;
                }
                Ok(())
            }
        }
    }

    /// Applies a complete model delta to the held model; falls back to a
    /// full download if the result is not exactly the announced version.
    async fn apply_delta(&mut self) -> Result<(), AgentError> {
        let Some(fetch) = &mut self.fetch else {
            return Ok(());
        };
        let bytes = fetch
            .delta
            .take()
            .and_then(Reassembler::finish)
            .unwrap_or_default();
        let Some((_, held)) = fetch.held.take() else {
            return Ok(());
        };
        let announce = &fetch.announce;
        let decoded = codec::by_name(&announce.downlink_codec)
            .and_then(|c| c.decode(&bytes, &announce.spec.layout()));
        let params = decoded.ok().and_then(|d| {
            let mut params = held;
            // the server published exactly `previous + decoded`, in f32
            params.add_scaled(&d, 1.0).ok()?;
            Some(params)
        });
        match params {
            Some(params)
                if version::manifest_of(&params, &announce.spec, &announce.task)
                    == announce.manifest =>
            {
                let bytes_len = bytes.len();
                let Some(fetch) = self.fetch.take() else {
                    return Ok(());
                };
                tracing::info!(
                    round = fetch.announce.round,
                    bytes = bytes_len,
                    "model delta applied and verified"
                );
                self.install_model(fetch.announce, params).await
            }
            _ => {
                tracing::warn!(
                    "model delta does not give the announced version; fetching the full model"
                );
                self.request_missing().await;
                Ok(())
            }
        }
    }

    async fn try_finish_fetch(&mut self) -> Result<(), AgentError> {
        let Some(fetch) = &self.fetch else {
            return Ok(());
        };
        if fetch.chunks.iter().any(Option::is_none) {
            return Ok(());
        }
        let Some(fetch) = self.fetch.take() else {
            return Ok(());
        };
        let bytes: Vec<u8> = fetch.chunks.into_iter().flatten().flatten().collect();
        let announce = fetch.announce;
        let layout = announce.spec.layout();
        let params = match Pipeline::FP32.decode(&bytes, &layout) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "fetched model does not fit its spec");
                return Ok(());
            }
        };
        if version::manifest_of(&params, &announce.spec, &announce.task) != announce.manifest {
            tracing::warn!("fetched model does not hash to the announced version; refetching");
            self.fetch = Some(Fetch {
                chunks: vec![None; announce.manifest.chunks.len()],
                announce,
                held: None,
                delta: None,
                last_progress: Instant::now(),
            });
            self.request_missing().await;
            return Ok(());
        }
        tracing::info!(
            round = announce.round,
            bytes = bytes.len(),
            "model fetched and verified"
        );
        self.install_model(announce, params).await
    }

    /// Stores a verified base model and trains on it.
    async fn install_model(
        &mut self,
        announce: Announce,
        params: ParamSet,
    ) -> Result<(), AgentError> {
        let model = StoredModel {
            manifest: announce.manifest.clone(),
            spec: announce.spec.clone(),
            task: announce.task.clone(),
            params,
        };
        self.state.save_model(&model)?;
        self.start_training(announce, model).await
    }

    fn dataset_for(&mut self, announce: &Announce) -> Result<Arc<Dataset>, AgentError> {
        let key = announce.manifest.spec_hash;
        if let Some((k, data)) = &self.dataset
            && *k == key
        {
            return Ok(data.clone());
        }
        // Drop the previous training set before building the next one.
        self.dataset = None;
        let data = match &self.data {
            LocalData::Csv(_) | LocalData::Released { .. } => {
                let rows = self.data.rows();
                let table = match std::mem::replace(&mut self.data, LocalData::Released { rows }) {
                    LocalData::Csv(table) => table,
                    _ => Arc::new(load_table(&self.config)?),
                };
                self.data = LocalData::Released { rows: table.len() };
                let built = match Arc::try_unwrap(table) {
                    Ok(table) => Dataset::from_owned_table(table, &announce.spec),
                    Err(shared) => Dataset::from_table(&shared, &announce.spec),
                };
                built.map_err(|e| AgentError::Data {
                    path: self.config.data.path.display().to_string(),
                    message: e.to_string(),
                })?
            }
            LocalData::Prepared(data) if data.dims() == announce.spec.inputs() => {
                return Ok(data.clone());
            }
            LocalData::Prepared(data) => {
                return Err(AgentError::Data {
                    path: "prepared data".into(),
                    message: format!(
                        "{} features per row, the model wants {}",
                        data.dims(),
                        announce.spec.inputs()
                    ),
                });
            }
        };
        if !data.missing_features.is_empty() {
            tracing::warn!(missing = ?data.missing_features, "data lacks model features; imputing their mean");
        }
        let data = Arc::new(data);
        self.dataset = Some((key, data.clone()));
        Ok(data)
    }

    async fn start_training(
        &mut self,
        announce: Announce,
        model: StoredModel,
    ) -> Result<(), AgentError> {
        let data = match self.dataset_for(&announce) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "cannot train this round");
                self.status(AgentState::Skipped, announce.round, &e.to_string())
                    .await;
                return Ok(());
            }
        };
        let round = announce.round;
        if let Some(cap) = self.policy.memory_cap() {
            let widest = announce.spec.widths().into_iter().max().unwrap_or(1);
            let need = policy::training_memory(
                announce.spec.layout().numel(),
                data.len() * data.dims(),
                announce.task.batch_size as usize,
                widest,
            );
            if need > cap {
                let why = format!(
                    "training needs ~{} MiB, over policy.max_memory_mb",
                    need >> 20
                );
                self.status(AgentState::Skipped, round, &why).await;
                return Ok(());
            }
        }
        if !self.policy.allowed(now_ms() / 1000) {
            self.pause.store(true, Ordering::Relaxed);
            self.status(AgentState::Idle, round, "waiting for the training policy")
                .await;
            self.waiting = Some((announce, model));
            return Ok(());
        }
        self.pause.store(false, Ordering::Relaxed);
        // A run the policy paused (possibly before a reboot) continues exactly.
        let resume = self
            .state
            .checkpoint()?
            .filter(|c| c.round == round && c.base_version == announce.base_version())
            .map(|c| c.checkpoint);
        let seed = u64::from_le_bytes(
            blake3_seed(&self.config.client_id, round)[..8]
                .try_into()
                .unwrap_or([0; 8]),
        );
        let job = Job {
            spec: announce.spec.clone(),
            base: model.params.clone(),
            task: announce.task.clone(),
            data,
            seed,
        };
        let pause = self.pause.clone();
        self.waiting = Some((announce.clone(), model));
        let limits = self.config.training.clone();
        let cancel = Arc::new(AtomicBool::new(false));
        let thread_cancel = cancel.clone();
        let codec_name = announce.codec.clone();
        let base_version = announce.base_version();
        let chunk_size = announce.chunk_size;
        // Error feedback: what earlier rounds' codecs dropped is added back.
        let layout = announce.spec.layout();
        let residual = self
            .state
            .residual()?
            .filter(|r| r.check_layout(&layout).is_ok());
        let work = move || {
            let should_pause = |_: u64| pause.load(Ordering::Relaxed);
            let trained = match trainer::train(
                &job,
                &limits,
                &thread_cancel,
                &should_pause,
                resume.as_ref(),
            )? {
                trainer::Progress::Done(t) => t,
                trainer::Progress::Paused(checkpoint) => return Ok(Finished::Paused(checkpoint)),
            };
            // Encoding stays on the training thread, off the MQTT loop.
            let started = Instant::now();
            let mut update = trained.params.sub(&job.base)?;
            if let Some(residual) = &residual {
                update.add_scaled(residual, 1.0)?;
            }
            let codec =
                codec::by_name(&codec_name).map_err(|e| TrainError::Thread(e.to_string()))?;
            let (encoded, decoded) = codec.round_trip(&update, seed);
            let residual = (!codec.is_lossless())
                .then(|| update.sub(&decoded))
                .transpose()?;
            let mut stats = trained.stats;
            stats.encode_seconds = started.elapsed().as_secs_f64();
            stats.residual_norm = residual.as_ref().map_or(0.0, ParamSet::l2_norm);
            let body = UpdateBody {
                samples: job.data.len() as u64,
                stats,
                codec: codec.name(),
                encoded,
            };
            let pending = PendingUpdate {
                round,
                base_version,
                body: postcard::to_allocvec(&body).unwrap_or_default(),
                chunk_size,
                residual,
            };
            Ok(Finished::Update(pending, started.elapsed().as_secs_f64()))
        };
        let outcome = match trainer::spawn(work) {
            Ok(rx) => rx,
            Err(e) => {
                self.status(AgentState::Skipped, round, &e.to_string())
                    .await;
                return Ok(());
            }
        };
        self.training = Some((round, outcome, cancel));
        self.status(AgentState::Training, round, "training").await;
        Ok(())
    }

    async fn on_trained(
        &mut self,
        round: u64,
        done: Result<Finished, TrainError>,
    ) -> Result<(), AgentError> {
        let (pending, encode_seconds) = match done {
            Ok(Finished::Update(pending, seconds)) => {
                self.waiting = None;
                self.state.clear_checkpoint()?;
                (pending, seconds)
            }
            Ok(Finished::Paused(checkpoint)) => {
                let Some((announce, _)) = &self.waiting else {
                    return Ok(());
                };
                let stored = state::StoredCheckpoint {
                    round,
                    base_version: announce.base_version(),
                    checkpoint,
                };
                self.state.save_checkpoint(&stored)?;
                tracing::info!(
                    round,
                    steps = stored.checkpoint.steps,
                    "training paused by policy; checkpoint stored"
                );
                self.status(AgentState::Idle, round, "paused by the training policy")
                    .await;
                return Ok(());
            }
            Err(TrainError::Cancelled) => {
                self.waiting = None;
                return Ok(());
            }
            Err(e) => {
                self.waiting = None;
                tracing::error!(round, error = %e, "training failed");
                self.status(AgentState::Skipped, round, &e.to_string())
                    .await;
                return Ok(());
            }
        };
        // Persist before sending: after a power cut the update is re-sent,
        // never retrained and never lost.
        self.state.save_pending(&pending)?;
        tracing::info!(
            round,
            bytes = pending.body.len(),
            encode_seconds,
            "update trained and stored"
        );
        // Between rounds the vehicle gets its memory back; the next round
        // reads the CSV again, with whatever the vehicle logged meanwhile.
        // (A paused round keeps its training set, so it resumes on the
        // same rows.)
        if matches!(self.data, LocalData::Released { .. }) {
            self.dataset = None;
        }
        if self.config.faults.stop_after_persist {
            return Err(AgentError::FaultInjected("stop_after_persist"));
        }
        if self.config.faults.delay_upload_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.config.faults.delay_upload_ms)).await;
        }
        self.upload(&pending).await;
        Ok(())
    }

    async fn upload(&mut self, pending: &PendingUpdate) {
        let client = messages::id(&self.config.client_id).unwrap_or_default();
        let pieces = chunk::split(&pending.body, pending.chunk_size as usize);
        let count = pending
            .body
            .len()
            .div_ceil(pending.chunk_size.max(1) as usize)
            .max(1);
        for (pos, data) in pieces {
            let message = UpdateChunk {
                client: client.clone(),
                round: pending.round,
                base_version: pending.base_version,
                pos,
                data: data.to_vec(),
            };
            self.publish(
                self.topic_update.as_str(),
                false,
                wire::encode(Kind::UpdateChunk, &message),
            )
            .await;
        }
        tracing::info!(round = pending.round, chunks = count, "update sent");
        self.awaiting_ack = Some((pending.round, Instant::now()));
        self.status(AgentState::Uploading, pending.round, "awaiting receipt")
            .await;
    }

    async fn on_ack(&mut self, payload: &[u8]) -> Result<(), AgentError> {
        let ack = match wire::decode::<UpdateAck>(payload, Kind::UpdateAck, 4096) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring bad receipt");
                return Ok(());
            }
        };
        let Some(pending) = self.state.pending()? else {
            return Ok(());
        };
        if pending.round != ack.round {
            return Ok(());
        }
        if ack.accepted {
            self.state.acknowledge(ack.round)?;
            tracing::info!(round = ack.round, "update acknowledged");
        } else {
            self.state.discard_pending()?;
            tracing::warn!(round = ack.round, reason = %ack.reason, "update refused by server; dropped");
        }
        self.awaiting_ack = None;
        self.status(
            AgentState::Idle,
            ack.round,
            if ack.accepted {
                "update counted"
            } else {
                "update refused"
            },
        )
        .await;
        Ok(())
    }

    /// Follows the training policy: pauses running training, resumes or
    /// starts waiting training, and skips rounds whose deadline passed.
    async fn apply_policy(&mut self) -> Result<(), AgentError> {
        let allowed = self.policy.allowed(now_ms() / 1000);
        self.pause.store(!allowed, Ordering::Relaxed);
        if self.training.is_some() {
            return Ok(());
        }
        let Some((announce, _)) = &self.waiting else {
            return Ok(());
        };
        if announce.deadline_ms <= now_ms() {
            let round = announce.round;
            self.waiting = None;
            self.state.clear_checkpoint()?;
            tracing::warn!(
                round,
                "round deadline passed while training was not allowed; skipped"
            );
            self.status(
                AgentState::Skipped,
                round,
                "deadline passed while training was not allowed",
            )
            .await;
        } else if allowed && let Some((announce, model)) = self.waiting.take() {
            self.start_training(announce, model).await?;
        }
        Ok(())
    }

    async fn on_tick(&mut self) -> Result<(), AgentError> {
        self.apply_policy().await?;
        let patience = Duration::from_secs(self.config.training.ack_timeout_secs.max(1));
        if let Some((round, sent)) = self.awaiting_ack
            && sent.elapsed() > patience
        {
            if let Some(pending) = self.state.pending()?.filter(|p| p.round == round) {
                tracing::warn!(round, "no receipt yet; re-sending update");
                self.upload(&pending).await;
            } else {
                self.awaiting_ack = None;
            }
        }
        if self
            .fetch
            .as_ref()
            .is_some_and(|f| f.last_progress.elapsed() > patience)
        {
            tracing::warn!("model fetch stalled; re-requesting missing chunks");
            self.request_missing().await;
        }
        Ok(())
    }
}

fn blake3_seed(client: &str, round: u64) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(client.as_bytes());
    h.update(&round.to_le_bytes());
    *h.finalize().as_bytes()
}
