//! The alignment rounds as a state machine without I/O: before the first
//! training round of a fleet whose database holds no model, the [`Aligner`]
//! asks every vehicle for its local schema, merges them, asks for column
//! statistics under the merged schema, and turns them into the model's
//! spec. No row of data reaches the server: only column names and types,
//! counts, exact sums, min/max and category counts.

use crate::config::ServerConfig;
use crate::error::ServerError;
use crate::inbound::{Inbound, Inbox};
use crate::rejection::{Rejection, RejectionCounts, Rejections};
use convoy_runtime::clock::SharedClock;
use convoy_runtime::link::{LinkEvent, Outgoing};
use convoy_shared::align::{self, LocalSchema, Schema, Statistics};
use convoy_shared::identity::SecretKey;
use convoy_shared::messages::{AlignRequest, AlignStage, SchemaReport, StatsReport};
use convoy_shared::spec::ModelSpec;
use convoy_shared::topics::{self, ClientTopic};
use convoy_shared::wire::{self, Kind};
use convoy_store::Store;
use std::collections::BTreeMap;

/// Where an alignment stands.
#[derive(Debug)]
enum Stage {
    /// Collecting local schemas.
    Schema,
    /// Collecting statistics under the merged schema.
    Statistics(Schema),
}

/// Runs the schema and statistics rounds. Owned by the server loop.
#[derive(Debug)]
pub struct Aligner {
    config: ServerConfig,
    key: SecretKey,
    inbox: Inbox,
    store: Store,
    clock: SharedClock,
    epoch: u64,
    stage: Stage,
    deadline_ms: u64,
    /// When the last answer of this stage came.
    last_answer_ms: u64,
    schemas: BTreeMap<String, LocalSchema>,
    stats: BTreeMap<String, Statistics>,
    /// Vehicles that reported they cannot align, with why.
    failed: BTreeMap<String, String>,
    rejections: Rejections,
    spec: Option<ModelSpec>,
    /// The newest status message of each vehicle, handed to the coordinator
    /// afterwards so it knows who is online without waiting for heartbeats.
    statuses: BTreeMap<String, LinkEvent>,
}

/// Most statuses kept for the coordinator (one per vehicle).
const MAX_STATUSES: usize = 100_000;

impl Aligner {
    /// An aligner for `config`'s fleet; [`Aligner::start`] sends the first request.
    pub fn new(
        config: ServerConfig,
        key: SecretKey,
        store: Store,
        clock: SharedClock,
    ) -> Result<Self, ServerError> {
        let inbox = Inbox::new(&config, &key, &store)?;
        Ok(Self {
            config,
            key,
            inbox,
            store,
            clock,
            epoch: 0,
            stage: Stage::Schema,
            deadline_ms: 0,
            last_answer_ms: 0,
            schemas: BTreeMap::new(),
            stats: BTreeMap::new(),
            failed: BTreeMap::new(),
            rejections: Rejections::default(),
            spec: None,
            statuses: BTreeMap::new(),
        })
    }

    /// The topic filters alignment needs (the server's link holds them
    /// from the start, so none of them is missed while the stages change).
    pub fn subscriptions(fleet: &str) -> Vec<String> {
        let mut filters: Vec<String> = [ClientTopic::Schema, ClientTopic::Stats]
            .into_iter()
            .map(|kind| topics::all_clients(fleet, kind).as_str().to_string())
            .collect();
        filters.push(topics::align(fleet).as_str().to_string());
        filters
    }

    /// Vehicles needed before a stage may finish.
    fn min_vehicles(&self) -> usize {
        match self.config.align.min_vehicles {
            0 => self.config.rounds.min_clients,
            n => n,
        }
    }

    /// Asks for schemas (again, under a new epoch).
    pub fn start(&mut self) -> Result<Vec<Outgoing>, ServerError> {
        let now = self.clock.now_ms();
        // Unix milliseconds: newer than any epoch of an earlier run
        self.epoch = now.max(self.epoch + 1);
        self.stage = Stage::Schema;
        self.schemas.clear();
        self.stats.clear();
        self.failed.clear();
        self.begin_stage(now);
        tracing::info!(
            epoch = self.epoch,
            min_vehicles = self.min_vehicles(),
            "schema round: asking vehicles for their columns"
        );
        Ok(vec![self.request()?])
    }

    fn begin_stage(&mut self, now: u64) {
        self.deadline_ms = now + self.config.align.deadline_secs * 1000;
        self.last_answer_ms = now;
    }

    /// The model spec, once both stages are done.
    pub fn spec(&self) -> Option<&ModelSpec> {
        self.spec.as_ref()
    }

    /// Hands back the store, the rejections counted and the newest status
    /// message of each vehicle (for the coordinator to read).
    pub fn into_parts(self) -> (Store, RejectionCounts, Vec<LinkEvent>) {
        (
            self.store,
            self.rejections.counts().clone(),
            self.statuses.into_values().collect(),
        )
    }

    /// The current request, signed and retained.
    fn request(&self) -> Result<Outgoing, ServerError> {
        let topic = topics::align(&self.config.fleet);
        let stage = match &self.stage {
            Stage::Schema => AlignStage::Schema,
            Stage::Statistics(schema) => AlignStage::Statistics(schema.clone()),
        };
        let request = AlignRequest {
            epoch: self.epoch,
            stage,
            deadline_ms: self.deadline_ms,
        };
        let payload = wire::encode(Kind::AlignRequest, &request, &topic, &self.key)?;
        Ok(Outgoing::retained(topic.as_str(), payload))
    }

    /// Reacts to a link event.
    pub fn on_event(&mut self, event: LinkEvent) -> Result<Vec<Outgoing>, ServerError> {
        match event {
            // the retained request may have been lost with the broker
            LinkEvent::Connected if self.spec.is_none() => Ok(vec![self.request()?]),
            LinkEvent::Connected => Ok(Vec::new()),
            LinkEvent::Message { topic, payload, .. } => self.on_message(&topic, &payload),
        }
    }

    fn on_message(&mut self, topic: &str, payload: &[u8]) -> Result<Vec<Outgoing>, ServerError> {
        if let Some((ClientTopic::Status, _)) = topics::parse_client(&self.config.fleet, topic) {
            // not read here: the coordinator checks it once alignment is done
            if self.statuses.len() < MAX_STATUSES || self.statuses.contains_key(topic) {
                let event = LinkEvent::Message {
                    topic: topic.to_string(),
                    payload: bytes::Bytes::copy_from_slice(payload),
                    retain: false,
                };
                self.statuses.insert(topic.to_string(), event);
            }
            return Ok(Vec::new());
        }
        if self.spec.is_some() {
            return Ok(Vec::new());
        }
        let inbound = match self.inbox.decode(&self.store, topic, payload) {
            Ok(Some(inbound)) => inbound,
            Ok(None) => return Ok(Vec::new()),
            Err(refused) => {
                self.reject(Some(&refused.client), &refused.why);
                return Ok(Vec::new());
            }
        };
        match inbound {
            // anything there that the server did not sign is replaced
            Inbound::ForeignOnAlign => {
                self.reject(None, &Rejection::ForgedAnnouncement);
                return Ok(vec![self.request()?]);
            }
            Inbound::Schema { client, report } if self.answers(&client, report.epoch) => {
                self.on_schema(&client, report)
            }
            Inbound::Stats { client, report } if self.answers(&client, report.epoch) => {
                self.on_stats(&client, report)
            }
            Inbound::Failure { client, report } if report.round == 0 => {
                tracing::warn!(client, reason = %report.reason, detail = %report.detail, "vehicle cannot align");
                self.failed.insert(client, report.detail.to_string());
                self.last_answer_ms = self.clock.now_ms();
            }
            _ => {}
        }
        Ok(Vec::new())
    }

    /// Does a schema or statistics message answer this alignment? One that
    /// answers another is a counted rejection.
    fn answers(&mut self, client: &str, epoch: u64) -> bool {
        if epoch == self.epoch {
            return true;
        }
        let why = Rejection::invalid("wrong_epoch", "answers another alignment request");
        self.reject(Some(client), &why);
        false
    }

    fn on_schema(&mut self, client: &str, report: SchemaReport) {
        if !matches!(self.stage, Stage::Schema) {
            return; // late: the schema is fixed for this alignment
        }
        if let Err(e) = report.schema.check() {
            self.reject(Some(client), &Rejection::invalid("bad_schema", e));
            return;
        }
        self.failed.remove(client);
        self.schemas.insert(client.to_string(), report.schema);
        self.last_answer_ms = self.clock.now_ms();
        tracing::info!(client, declared = self.schemas.len(), "schema received");
    }

    fn on_stats(&mut self, client: &str, report: StatsReport) {
        let Stage::Statistics(schema) = &self.stage else {
            return;
        };
        if !self.schemas.contains_key(client) {
            let why = Rejection::invalid(
                "not_aligned",
                "statistics from a vehicle that declared no schema in this alignment",
            );
            self.reject(Some(client), &why);
            return;
        }
        if let Err(e) = report.stats.check(schema) {
            self.reject(Some(client), &Rejection::invalid("bad_statistics", e));
            return;
        }
        self.stats.insert(client.to_string(), report.stats);
        self.last_answer_ms = self.clock.now_ms();
        tracing::info!(client, reported = self.stats.len(), "statistics received");
    }

    /// Every provisioned vehicle has answered this stage, or said it cannot.
    fn everyone_answered(&self, answered: usize) -> bool {
        answered + self.failed.len() >= self.inbox.vehicles().max(1)
    }

    /// Finishes a stage once enough vehicles answered and the rest are
    /// silent, or starts over when a deadline passes with too few.
    pub fn tick(&mut self) -> Result<Vec<Outgoing>, ServerError> {
        if self.spec.is_some() || self.epoch == 0 {
            return Ok(Vec::new());
        }
        let now = self.clock.now_ms();
        let settled =
            now.saturating_sub(self.last_answer_ms) >= self.config.align.settle_secs * 1000;
        let late = now >= self.deadline_ms;
        let min = self.min_vehicles();
        match &self.stage {
            Stage::Schema => {
                let n = self.schemas.len();
                if n >= min && (self.everyone_answered(n) || settled || late) {
                    return self.fix_schema();
                }
            }
            Stage::Statistics(schema) => {
                let n = self.stats.len();
                let waiting = self
                    .schemas
                    .keys()
                    .any(|c| !self.stats.contains_key(c) && !self.failed.contains_key(c));
                if n >= min && (!waiting || late) {
                    let schema = schema.clone();
                    return self.finish(&schema);
                }
            }
        }
        if late {
            let awaited = self.awaited();
            tracing::warn!(
                stage = self.stage_name(),
                answered = self.schemas.len().max(self.stats.len()),
                min,
                deadline_secs = self.config.align.deadline_secs,
                awaited = %names(&awaited),
                "alignment deadline passed with too few vehicles; asking again"
            );
            return self.start();
        }
        Ok(Vec::new())
    }

    /// `schema` or `statistics`.
    fn stage_name(&self) -> &'static str {
        match self.stage {
            Stage::Schema => "schema",
            Stage::Statistics(_) => "statistics",
        }
    }

    /// The vehicles the current stage still waits for: every trusted
    /// vehicle without an answer (the statistics stage: every vehicle that
    /// declared a schema), less those that said they cannot.
    pub fn awaited(&self) -> Vec<String> {
        let open = |c: &String| !self.failed.contains_key(c);
        match &self.stage {
            Stage::Schema => self
                .inbox
                .vehicle_ids()
                .into_iter()
                .filter(|c| !self.schemas.contains_key(c) && open(c))
                .collect(),
            Stage::Statistics(_) => self
                .schemas
                .keys()
                .filter(|c| !self.stats.contains_key(*c) && open(c))
                .cloned()
                .collect(),
        }
    }

    fn fix_schema(&mut self) -> Result<Vec<Outgoing>, ServerError> {
        let declarations: Vec<(&str, &LocalSchema)> =
            self.schemas.iter().map(|(c, s)| (c.as_str(), s)).collect();
        let schema = align::merge(&declarations, &self.config.align.settings())
            .map_err(|e| ServerError::Align(e.to_string()))?;
        tracing::info!(
            vehicles = declarations.len(),
            heads = ?schema.heads.iter().map(|h| format!("{} ({:?})", h.label, h.task)).collect::<Vec<_>>(),
            columns = ?schema.columns.iter().map(|c| format!("{} ({:?})", c.name, c.kind)).collect::<Vec<_>>(),
            "schema round done; asking for statistics"
        );
        self.stage = Stage::Statistics(schema);
        self.begin_stage(self.clock.now_ms());
        Ok(vec![self.request()?])
    }

    fn finish(&mut self, schema: &Schema) -> Result<Vec<Outgoing>, ServerError> {
        let m = &self.config.model;
        let spec = align::finish(
            schema,
            self.stats.values(),
            &self.config.align.settings(),
            m.hidden.clone(),
            m.init_seed,
        )
        .map_err(|e| ServerError::Align(e.to_string()))?;
        let rows: u64 = self.stats.values().map(|s| s.rows).sum();
        tracing::info!(
            vehicles = self.stats.len(),
            rows,
            inputs = spec.inputs(),
            "statistics round done; the fleet's model pipeline is fixed"
        );
        self.spec = Some(spec);
        // the request is answered: clear it so no vehicle acts on it again
        Ok(vec![Outgoing::retained(
            topics::align(&self.config.fleet).as_str(),
            Vec::new(),
        )])
    }

    fn reject(&mut self, client: Option<&str>, why: &Rejection) {
        let now_ms = self.clock.now_ms();
        self.rejections
            .reject(&self.store, now_ms, None, client, why);
    }
}

/// What every alignment answer carries.
#[cfg(test)]
mod tests;

/// Up to ten ids, then how many more.
fn names(ids: &[String]) -> String {
    const SHOWN: usize = 10;
    let mut out = ids
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if ids.len() > SHOWN {
        out.push_str(&format!(" and {} more", ids.len() - SHOWN));
    }
    if out.is_empty() {
        out.push_str("none");
    }
    out
}
