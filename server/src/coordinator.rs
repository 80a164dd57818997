//! The round coordinator: announces rounds, serves model chunks, validates
//! and folds updates as they arrive, closes rounds at quorum or deadline,
//! and writes the ledger.

use crate::ServerError;
use crate::aggregator::PartialSum;
use crate::config::ServerConfig;
use crate::store::{ClientRow, RoundRow, Store, StoredVersion};
use convoy_agent::mqtt::LinkEvent;
use convoy_agent::now_ms;
use convoy_shared::chunk::{self, Progress, Reassembler};
use convoy_shared::codec::{self, Pipeline, Sparsify};
use convoy_shared::dataset::Dataset;
use convoy_shared::messages::{
    self, AgentState, Announce, FetchRequest, ModelChunk, ModelPart, Status, UpdateAck, UpdateBody,
    UpdateChunk,
};
use convoy_shared::params::ParamSet;
use convoy_shared::topics::{self, ClientTopic};
use convoy_shared::version::{self, MODEL_CHUNK_SIZE, VersionId};
use convoy_shared::wire::{self, Kind, mqtt_publish_wire_len};
use convoy_shared::{cost, spec::ModelSpec};
use rand::seq::IndexedRandom;
use rand::{SeedableRng, rngs::StdRng};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// What the coordinator knows of a client from its status messages.
#[derive(Debug, Clone, Default)]
struct ClientInfo {
    online: bool,
    codecs: Vec<String>,
}

/// Bookkeeping of the round in progress.
struct OpenRound {
    announce: Announce,
    selected: BTreeSet<String>,
    deadline: Instant,
    sum: PartialSum,
    inbox: HashMap<String, (Reassembler, u64)>,
    rows: BTreeMap<String, ClientRow>,
    loss_weighted: f64,
    started: Instant,
    served: BTreeSet<String>,
    bytes_down_raw: u64,
}

/// Counts of rejected messages by reason, since start.
pub type RejectionCounts = BTreeMap<String, u64>;

/// Drives rounds. Owned by the server task; never shared.
pub(crate) struct Coordinator {
    pub(crate) config: ServerConfig,
    pub(crate) store: Store,
    pub(crate) client: convoy_agent::mqtt::LinkClient,
    pub(crate) spec: ModelSpec,
    pub(crate) test: Option<Arc<Dataset>>,
    pub(crate) current: StoredVersion,
    pub(crate) observer: Option<mpsc::UnboundedSender<RoundRow>>,
    model_bytes: Vec<u8>,
    /// The configured update codec.
    base_codec: Pipeline,
    /// The codec of the current round (differs during warm-up).
    codec: Pipeline,
    downlink: Pipeline,
    downlink_residual: ParamSet,
    last_delta: Option<(VersionId, Vec<u8>)>,
    scratch: ParamSet,
    clients: HashMap<String, ClientInfo>,
    round: Option<OpenRound>,
    next_round: u64,
    rounds_run: u64,
    rejections: RejectionCounts,
}

impl Coordinator {
    pub(crate) fn new(
        config: ServerConfig,
        store: Store,
        client: convoy_agent::mqtt::LinkClient,
        spec: ModelSpec,
        test: Option<Arc<Dataset>>,
        current: StoredVersion,
        observer: Option<mpsc::UnboundedSender<RoundRow>>,
    ) -> Result<Self, ServerError> {
        let next_round = store.next_round()?;
        let codec =
            codec::by_name(&config.rounds.codec).map_err(|e| ServerError::Config(e.to_string()))?;
        let downlink = codec::by_name(&config.rounds.downlink_codec)
            .map_err(|e| ServerError::Config(e.to_string()))?;
        Ok(Self {
            base_codec: codec,
            downlink,
            downlink_residual: ParamSet::zeros(&spec.layout()),
            last_delta: None,
            model_bytes: current.params.canonical_bytes(),
            scratch: ParamSet::zeros(&spec.layout()),
            codec,
            config,
            store,
            client,
            spec,
            test,
            current,
            observer,
            clients: HashMap::new(),
            round: None,
            next_round,
            rounds_run: 0,
            rejections: RejectionCounts::new(),
        })
    }

    /// True once the configured number of rounds has run.
    pub(crate) fn done(&self) -> bool {
        self.config.rounds.total > 0 && self.rounds_run >= self.config.rounds.total
    }

    fn max_body(&self) -> usize {
        self.config.broker.max_packet_size
    }

    async fn publish(&mut self, topic: &str, retain: bool, payload: Vec<u8>) {
        if let Err(e) = self.client.publish(topic, retain, payload).await {
            tracing::warn!(topic, error = %e, "publish failed");
        }
    }

    fn reject(&mut self, round: Option<u64>, client: Option<&str>, reason: &str, detail: &str) {
        *self.rejections.entry(reason.to_string()).or_default() += 1;
        tracing::warn!(?round, client, reason, detail, "message rejected");
        if let Err(e) = self
            .store
            .record_rejection(round, client, reason, detail, now_ms())
        {
            tracing::error!(error = %e, "cannot record rejection");
        }
    }

    pub(crate) async fn on_event(&mut self, event: LinkEvent) -> Result<(), ServerError> {
        match event {
            LinkEvent::Connected => {
                let fleet = &self.config.fleet;
                for kind in [ClientTopic::Update, ClientTopic::Fetch, ClientTopic::Status] {
                    let filter = topics::all_clients(fleet, kind);
                    if let Err(e) = self.client.subscribe(filter.as_str()).await {
                        tracing::warn!(filter = filter.as_str(), error = %e, "subscribe failed");
                    }
                }
                if let Some(payload) = self
                    .round
                    .as_ref()
                    .map(|r| wire::encode(Kind::Announce, &r.announce))
                {
                    self.publish(topics::round(&self.config.fleet).as_str(), true, payload)
                        .await;
                }
                Ok(())
            }
            LinkEvent::Message { topic, payload, .. } => {
                let Some((kind, client)) = topics::parse_client(&self.config.fleet, &topic) else {
                    return Ok(());
                };
                let client = client.to_string();
                let wire_len = mqtt_publish_wire_len(topic.len(), payload.len(), 1);
                match kind {
                    ClientTopic::Update => self.on_update(&client, &payload, wire_len).await,
                    ClientTopic::Fetch => self.on_fetch(&client, &payload).await,
                    ClientTopic::Status => {
                        self.on_status(&client, &payload);
                        Ok(())
                    }
                    _ => Ok(()),
                }
            }
        }
    }

    fn on_status(&mut self, client: &str, payload: &[u8]) {
        if payload.is_empty() {
            self.clients.remove(client); // retained status cleared
            return;
        }
        match wire::decode::<Status>(payload, Kind::Status, 4096) {
            Ok(status) if status.client.as_str() == client => {
                let info = self.clients.entry(client.to_string()).or_default();
                let was_online = info.online;
                info.online = status.state != AgentState::Offline;
                info.codecs = status.codecs.iter().map(|c| c.to_string()).collect();
                if info.online != was_online {
                    tracing::info!(client, online = info.online, state = ?status.state, "client status");
                }
            }
            Ok(_) => self.reject(
                None,
                Some(client),
                "client_mismatch",
                "status names another client",
            ),
            Err(e) => self.reject(None, Some(client), e.reason(), &e.to_string()),
        }
    }

    async fn ack(&mut self, client: &str, round: u64, accepted: bool, reason: &str) {
        let ack = UpdateAck {
            round,
            accepted,
            reason: reason.to_string(),
        };
        let topic = topics::client(&self.config.fleet, ClientTopic::Ack, client);
        self.publish(topic.as_str(), false, wire::encode(Kind::UpdateAck, &ack))
            .await;
    }

    async fn on_update(
        &mut self,
        client: &str,
        payload: &[u8],
        wire_len: u64,
    ) -> Result<(), ServerError> {
        let current = self.round.as_ref().map(|r| r.announce.round);
        // Wire bytes count whatever arrives from a participant, valid or not.
        if let Some(row) = self.round.as_mut().and_then(|r| r.rows.get_mut(client)) {
            row.wire_bytes_up += wire_len;
            row.chunks_up += 1;
        }
        let chunk = match wire::decode::<UpdateChunk>(payload, Kind::UpdateChunk, self.max_body()) {
            Ok(c) => c,
            Err(e) => {
                self.reject(current, Some(client), e.reason(), &e.to_string());
                return Ok(());
            }
        };
        if chunk.client.as_str() != client {
            self.reject(
                current,
                Some(client),
                "client_mismatch",
                "chunk names another client than its topic",
            );
            return Ok(());
        }
        if current != Some(chunk.round) {
            return self.on_other_round(client, &chunk, current, wire_len).await;
        }
        let Some(r) = self.round.as_mut() else {
            return Ok(());
        };
        if chunk.base_version != r.announce.base_version() {
            self.reject(
                current,
                Some(client),
                "wrong_base",
                "update is relative to another model version",
            );
            return Ok(());
        }
        if !r.selected.contains(client) {
            self.reject(
                current,
                Some(client),
                "not_selected",
                "client was not selected this round",
            );
            return Ok(());
        }
        let Some(row) = r.rows.get_mut(client) else {
            return Ok(());
        };
        if row.status == "accepted" {
            // A re-send of an update already counted: recognised, not counted.
            row.retries += 1;
            if chunk.pos.index == 0 {
                self.ack(client, chunk.round, true, "").await;
            }
            return Ok(());
        }
        let limit = self.config.rounds.max_update_bytes;
        let entry = match r.inbox.remove(client) {
            Some(entry) => Ok(entry),
            None => Reassembler::new(chunk.pos, chunk.data.len(), limit).map(|re| (re, 0)),
        };
        let (mut reassembler, mut bytes) = match entry {
            Ok(e) => e,
            Err(e) => {
                self.reject(current, Some(client), e.reason(), &e.to_string());
                return Ok(());
            }
        };
        match reassembler.insert(chunk.pos, &chunk.data) {
            Err(e) => {
                // keep what was good so far; the bad chunk is dropped
                r.inbox.insert(client.to_string(), (reassembler, bytes));
                self.reject(current, Some(client), e.reason(), &e.to_string());
                Ok(())
            }
            Ok(Progress::Duplicate) => {
                row.retries += 1;
                r.inbox.insert(client.to_string(), (reassembler, bytes));
                Ok(())
            }
            Ok(Progress::Partial) => {
                bytes += payload.len() as u64;
                r.inbox.insert(client.to_string(), (reassembler, bytes));
                Ok(())
            }
            Ok(Progress::Complete) => {
                bytes += payload.len() as u64;
                let body = reassembler.finish().unwrap_or_default();
                self.accept_update(client, chunk.round, &body, bytes).await
            }
        }
    }

    async fn on_other_round(
        &mut self,
        client: &str,
        chunk: &UpdateChunk,
        current: Option<u64>,
        wire_len: u64,
    ) -> Result<(), ServerError> {
        if chunk.round >= self.next_round {
            self.reject(
                current,
                Some(client),
                "wrong_round",
                &format!("round {} has not started", chunk.round),
            );
            return Ok(());
        }
        match self.store.client_status(chunk.round, client)?.as_deref() {
            // The receipt was lost: confirm again, count nothing.
            Some("accepted") => {
                if chunk.pos.index == 0 {
                    self.ack(client, chunk.round, true, "").await;
                }
            }
            _ => {
                if self.store.record_late(chunk.round, client, wire_len)? {
                    tracing::info!(
                        client,
                        round = chunk.round,
                        "late update counted and ignored"
                    );
                }
                if chunk.pos.index == 0 {
                    self.ack(client, chunk.round, false, "late: the round has closed")
                        .await;
                }
            }
        }
        Ok(())
    }

    async fn accept_update(
        &mut self,
        client: &str,
        round: u64,
        body: &[u8],
        bytes: u64,
    ) -> Result<(), ServerError> {
        let verdict = self.validate_update(body);
        let Some(r) = self.round.as_mut() else {
            return Ok(());
        };
        let Some(row) = r.rows.get_mut(client) else {
            return Ok(());
        };
        match verdict {
            Ok((update, decode_seconds)) => {
                r.sum.fold(&self.scratch, update.samples as f64);
                r.loss_weighted += update.stats.loss as f64 * update.samples as f64;
                row.status = "accepted".into();
                row.samples = update.samples;
                row.bytes_up = bytes;
                row.train_seconds = update.stats.train_seconds;
                row.steps = update.stats.steps;
                row.epochs = update.stats.epochs as u64;
                row.loss = Some(update.stats.loss as f64);
                row.flops = cost::training_flops(&self.spec, update.samples, update.stats.epochs);
                row.bytes_up_predicted = cost::predict(
                    &self.spec,
                    &update.codec,
                    update.samples,
                    update.stats.epochs,
                )
                .bytes_up;
                row.device = update.stats.device.clone();
                row.codec = update.codec.clone();
                row.update_norm = Some(self.scratch.l2_norm());
                row.bytes_up_raw = self.scratch.numel() as u64 * 4;
                row.residual_norm = Some(update.stats.residual_norm);
                row.encode_seconds = update.stats.encode_seconds;
                row.decode_seconds = decode_seconds;
                tracing::info!(
                    client,
                    round,
                    samples = update.samples,
                    bytes,
                    "update accepted"
                );
                self.ack(client, round, true, "").await;
            }
            Err((reason, detail)) => {
                row.status = "rejected".into();
                row.reason = Some(reason.to_string());
                self.reject(Some(round), Some(client), reason, &detail);
                self.ack(client, round, false, &detail).await;
            }
        }
        Ok(())
    }

    /// Decodes a whole update into the scratch buffer and checks it.
    fn validate_update(
        &mut self,
        body: &[u8],
    ) -> Result<(UpdateBody, f64), (&'static str, String)> {
        let update: UpdateBody =
            postcard::from_bytes(body).map_err(|e| ("malformed", e.to_string()))?;
        if update.codec != self.codec.name() {
            return Err((
                "wrong_codec",
                format!(
                    "update uses {}, the round asked for {}",
                    update.codec,
                    self.codec.name()
                ),
            ));
        }
        let started = std::time::Instant::now();
        self.codec
            .decode_into(&update.encoded, &mut self.scratch)
            .map_err(|e| (e.reason(), e.to_string()))?;
        let decode_seconds = started.elapsed().as_secs_f64();
        self.scratch
            .check_finite()
            .map_err(|e| (e.reason(), e.to_string()))?;
        if update.samples == 0 || update.samples > 1_000_000_000 {
            return Err((
                "bad_samples",
                format!("sample count {} out of range", update.samples),
            ));
        }
        let stats = &update.stats;
        let times = [
            stats.train_seconds,
            stats.encode_seconds,
            stats.residual_norm,
        ];
        if !(stats.loss.is_finite() && times.iter().all(|t| t.is_finite() && *t >= 0.0)) {
            return Err(("non_finite", "training stats are not finite".into()));
        }
        Ok((update, decode_seconds))
    }

    async fn on_fetch(&mut self, client: &str, payload: &[u8]) -> Result<(), ServerError> {
        let current = self.round.as_ref().map(|r| r.announce.round);
        let request = match wire::decode::<FetchRequest>(payload, Kind::FetchRequest, 64 * 1024) {
            Ok(r) => r,
            Err(e) => {
                self.reject(current, Some(client), e.reason(), &e.to_string());
                return Ok(());
            }
        };
        let version = self.current.manifest.version;
        if request.version != version {
            self.reject(
                current,
                Some(client),
                "unknown_version",
                "fetch for a version that is not current",
            );
            return Ok(());
        }
        let mut messages = Vec::new();
        match &self.last_delta {
            // An agent one version behind gets the compressed delta.
            Some((from, delta)) if request.have == Some(*from) => {
                for (pos, data) in chunk::split(delta, MODEL_CHUNK_SIZE) {
                    let part = ModelPart::Delta { from: *from, pos };
                    messages.push(ModelChunk {
                        version,
                        part,
                        data: data.to_vec(),
                    });
                }
            }
            // Anyone else gets the chunks it lacks of the full model (a keyframe).
            _ => {
                let count = self.current.manifest.chunks.len() as u32;
                let wanted: BTreeSet<u32> = if request.chunks.is_empty() {
                    (0..count).collect()
                } else {
                    request
                        .chunks
                        .iter()
                        .copied()
                        .filter(|i| *i < count)
                        .collect()
                };
                for index in wanted {
                    let start = index as usize * MODEL_CHUNK_SIZE;
                    let end = (start + MODEL_CHUNK_SIZE).min(self.model_bytes.len());
                    let data = self.model_bytes[start..end].to_vec();
                    messages.push(ModelChunk {
                        version,
                        part: ModelPart::Full { index },
                        data,
                    });
                }
            }
        }
        let topic = topics::client(&self.config.fleet, ClientTopic::Model, client);
        let (mut bytes, mut wire_bytes, mut chunks) = (0u64, 0u64, 0u64);
        for message in messages {
            let payload = wire::encode(Kind::ModelChunk, &message);
            bytes += payload.len() as u64;
            wire_bytes += mqtt_publish_wire_len(topic.len(), payload.len(), 1);
            chunks += 1;
            self.publish(topic.as_str(), false, payload).await;
        }
        let raw = self.model_bytes.len() as u64;
        if let Some(r) = self.round.as_mut() {
            let row = r
                .rows
                .entry(client.to_string())
                .or_insert_with(|| ClientRow {
                    round: r.announce.round,
                    client: client.to_string(),
                    status: "dropped".into(),
                    ..Default::default()
                });
            row.bytes_down += bytes;
            row.wire_bytes_down += wire_bytes;
            row.chunks_down += chunks;
            if r.served.insert(client.to_string()) {
                r.bytes_down_raw += raw;
            }
        }
        Ok(())
    }

    /// What the fleet will hold after this round: `target` itself on a
    /// keyframe, otherwise the previous model plus the downlink codec's
    /// rendering of the delta (with the server's own error feedback), so
    /// server and agents hold bit-identical models.
    fn publishable(&mut self, round: u64, target: ParamSet) -> (ParamSet, Option<Vec<u8>>) {
        let every = self.config.rounds.keyframe_every;
        if self.downlink.is_lossless() || (every > 0 && round.is_multiple_of(every)) {
            self.downlink_residual = ParamSet::zeros(&self.spec.layout());
            return (target, None);
        }
        let Ok(mut delta) = target.sub(&self.current.params) else {
            return (target, None);
        };
        if delta.add_scaled(&self.downlink_residual, 1.0).is_err() {
            return (target, None);
        }
        let (bytes, decoded) = self
            .downlink
            .round_trip(&delta, round.wrapping_mul(0x5851_f42d_4c95_7f2d));
        let mut published = self.current.params.clone();
        match (published.add_scaled(&decoded, 1.0), delta.sub(&decoded)) {
            (Ok(()), Ok(residual)) => {
                self.downlink_residual = residual;
                (published, Some(bytes))
            }
            _ => (target, None),
        }
    }

    /// Opens or closes rounds as their conditions are met; call periodically.
    pub(crate) async fn tick(&mut self) -> Result<(), ServerError> {
        match &self.round {
            Some(r) => {
                // A rejected client may still send a good update, so only
                // acceptance from everyone closes a round before its deadline.
                let all_in = r
                    .selected
                    .iter()
                    .all(|c| r.rows.get(c).is_some_and(|row| row.status == "accepted"));
                if all_in || Instant::now() >= r.deadline {
                    self.finish_round().await?;
                }
            }
            None if !self.done() => self.maybe_open_round().await?,
            None => {}
        }
        Ok(())
    }

    async fn maybe_open_round(&mut self) -> Result<(), ServerError> {
        // Sparsity warm-up (Deep Gradient Compression): the kept share starts
        // at 25 % and shrinks 4x a round until it reaches the configured one.
        self.codec = self.base_codec;
        let warmup = self.config.rounds.codec_warmup_rounds;
        if warmup > 0 && self.rounds_run < warmup {
            let ramp = 0.25f32.powi(self.rounds_run as i32 + 1);
            self.codec.sparsify = match self.base_codec.sparsify {
                Sparsify::TopK(f) => Sparsify::TopK(f.max(ramp)),
                Sparsify::RandK(f) => Sparsify::RandK(f.max(ramp)),
                Sparsify::Dense => Sparsify::Dense,
            };
        }
        let codec = self.codec.name();
        let stages = self.codec.stages();
        // Never ask a vehicle for a codec stage it does not have.
        let mut eligible: Vec<&String> = self
            .clients
            .iter()
            .filter(|(_, info)| {
                info.online && stages.iter().all(|s| info.codecs.iter().any(|c| c == s))
            })
            .map(|(id, _)| id)
            .collect();
        let rules = &self.config.rounds;
        if eligible.len() < rules.min_clients {
            return Ok(());
        }
        eligible.sort();
        let round = self.next_round;
        let wanted = ((eligible.len() as f64 * rules.sample_fraction).ceil() as usize)
            .max(rules.min_clients)
            .min(eligible.len());
        let mut rng = StdRng::seed_from_u64(rules.seed ^ round.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let selected: BTreeSet<String> = eligible
            .choose_multiple(&mut rng, wanted)
            .map(|c| (*c).clone())
            .collect();
        let deadline_ms = now_ms() + rules.deadline_secs * 1000;
        let announce = Announce {
            round,
            manifest: self.current.manifest.clone(),
            spec: self.spec.clone(),
            task: self.config.training.clone(),
            codec: codec.clone(),
            downlink_codec: self.downlink.name(),
            deadline_ms,
            selected: selected.iter().filter_map(|c| messages::id(c)).collect(),
            chunk_size: rules.chunk_size as u32,
        };
        let base = version::hex(&announce.base_version());
        self.store
            .open_round(round, &base, &codec, selected.len() as u64, now_ms())?;
        let rows = selected
            .iter()
            .map(|c| {
                (
                    c.clone(),
                    ClientRow {
                        round,
                        client: c.clone(),
                        status: "dropped".into(),
                        codec: codec.clone(),
                        ..Default::default()
                    },
                )
            })
            .collect();
        tracing::info!(round, selected = selected.len(), eligible = eligible.len(), base = %version::short(&announce.base_version()), "round opened");
        let payload = wire::encode(Kind::Announce, &announce);
        self.round = Some(OpenRound {
            sum: PartialSum::new(self.spec.layout()),
            selected,
            deadline: Instant::now() + Duration::from_secs(rules.deadline_secs),
            inbox: HashMap::new(),
            rows,
            loss_weighted: 0.0,
            started: Instant::now(),
            served: BTreeSet::new(),
            bytes_down_raw: 0,
            announce,
        });
        self.next_round = round + 1;
        self.publish(topics::round(&self.config.fleet).as_str(), true, payload)
            .await;
        Ok(())
    }

    async fn finish_round(&mut self) -> Result<(), ServerError> {
        let Some(r) = self.round.take() else {
            return Ok(());
        };
        let round = r.announce.round;
        let accepted: Vec<&ClientRow> =
            r.rows.values().filter(|c| c.status == "accepted").collect();
        let samples: u64 = accepted.iter().map(|c| c.samples).sum();
        let mut row = RoundRow {
            round,
            status: "failed".into(),
            base_version: version::hex(&r.announce.base_version()),
            codec: r.announce.codec.clone(),
            clients_selected: r.selected.len() as u64,
            clients_reported: accepted.len() as u64,
            bytes_up: accepted.iter().map(|c| c.bytes_up).sum(),
            bytes_down: r.rows.values().map(|c| c.bytes_down).sum(),
            wire_bytes_up: r.rows.values().map(|c| c.wire_bytes_up).sum(),
            wire_bytes_down: r.rows.values().map(|c| c.wire_bytes_down).sum(),
            bytes_up_predicted: accepted.iter().map(|c| c.bytes_up_predicted).sum(),
            train_seconds_sum: accepted.iter().map(|c| c.train_seconds).sum(),
            train_seconds_max: accepted.iter().map(|c| c.train_seconds).fold(0.0, f64::max),
            samples,
            steps: accepted.iter().map(|c| c.steps).sum(),
            flops: accepted.iter().map(|c| c.flops).sum(),
            loss: (samples > 0).then(|| r.loss_weighted / samples as f64),
            bytes_down_raw: r.bytes_down_raw,
            downlink_codec: self.downlink.name(),
            encode_seconds: accepted.iter().map(|c| c.encode_seconds).sum(),
            decode_seconds: accepted.iter().map(|c| c.decode_seconds).sum(),
            bytes_up_raw: accepted.iter().map(|c| c.bytes_up_raw).sum(),
            ..Default::default()
        };
        let enough = accepted.len() >= self.config.rounds.min_reports;
        if let (true, Some(target)) = (
            enough,
            r.sum
                .apply(&self.current.params, self.config.rounds.server_lr),
        ) {
            let (params, delta) = self.publishable(round, target);
            let eval = match &self.test {
                Some(test) => {
                    let (spec, test, p) = (self.spec.clone(), test.clone(), params.clone());
                    let device = burn::prelude::Device::flex();
                    tokio::task::spawn_blocking(move || {
                        convoy_shared::eval::evaluate(&spec, &p, &test, &device)
                    })
                    .await
                    .ok()
                    .and_then(Result::ok)
                }
                None => None,
            };
            let next = StoredVersion {
                round,
                parent: Some(self.current.manifest.version),
                manifest: version::manifest_of(&params, &self.spec, &self.current.task),
                spec: self.spec.clone(),
                task: self.current.task.clone(),
                params,
            };
            self.store.save_version(&next, eval.as_ref(), now_ms())?;
            row.status = "finished".into();
            row.model_version = Some(version::hex(&next.manifest.version));
            row.eval_loss = eval.map(|e| e.loss);
            row.accuracy = eval.and_then(|e| e.accuracy);
            row.rmse = eval.and_then(|e| e.rmse);
            self.last_delta = delta.map(|d| (self.current.manifest.version, d));
            self.model_bytes = next.params.canonical_bytes();
            self.current = next;
        } else {
            tracing::warn!(
                round,
                accepted = accepted.len(),
                needed = self.config.rounds.min_reports,
                "round failed: too few updates; model unchanged"
            );
        }
        let clients: Vec<ClientRow> = r.rows.into_values().collect();
        let finished = now_ms();
        row.started_at =
            crate::store::iso8601(finished.saturating_sub(r.started.elapsed().as_millis() as u64));
        row.finished_at = Some(crate::store::iso8601(finished));
        row.compression_up =
            (row.bytes_up > 0).then(|| row.bytes_up_raw as f64 / row.bytes_up as f64);
        self.store.finish_round(&row, &clients, finished)?;
        tracing::info!(
            round,
            status = %row.status,
            reported = row.clients_reported,
            bytes_up = row.bytes_up,
            bytes_down = row.bytes_down,
            accuracy = ?row.accuracy,
            "round closed"
        );
        self.rounds_run += 1;
        if let Some(observer) = &self.observer {
            let _ = observer.send(row);
        }
        Ok(())
    }

    /// Rejection counts by reason since start.
    pub(crate) fn rejections(&self) -> &RejectionCounts {
        &self.rejections
    }
}
