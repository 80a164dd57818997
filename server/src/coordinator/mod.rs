//! The round coordinator as a state machine without I/O: [`Coordinator::handle`]
//! takes an [`Input`] (a link event, a tick, an evaluation result), changes
//! state and returns the [`Output`]s for the server's loop to carry out
//! (publish, evaluate a model off the async runtime, report a closed round).
//! It writes the SQLite ledger itself: a receipt is only sent once the row
//! it confirms is stored.
//!
//! | file | idea |
//! |---|---|
//! | `registry.rs` | which vehicles are online and what codecs they run |
//! | `ingest.rs` | update chunks: reassembly, validation, the fold, receipts |
//! | `aggregate.rs` | each update's weight and norm bound, the round's rule, suspects |
//! | `serve.rs` | model chunks and downlink deltas for fetching vehicles |
//! | `rounds.rs` | opening rounds (selection, warm-up) and closing them |
//! | `resume.rs` | taking up an open round after a restart; rollbacks |
//! | `totals.rs` | a round's ledger rows as it opens and its totals as it closes |

mod aggregate;
mod control;
mod ingest;
mod registry;
mod resume;
mod rounds;
mod serve;
mod totals;

#[cfg(test)]
mod tests;

pub use crate::rejection::{Rejection, RejectionCounts};

use crate::config::ServerConfig;
use crate::error::ServerError;
use crate::inbound::{Inbound, Inbox};
use crate::rejection::Rejections;
use convoy_runtime::clock::SharedClock;
use convoy_runtime::link::{LinkEvent, Outgoing};
use convoy_shared::codec::Pipeline;
use convoy_shared::cost::Calibrated;
use convoy_shared::dataset::Dataset;
use convoy_shared::eval::Evaluation;
use convoy_shared::identity::SecretKey;
use convoy_shared::messages::Announce;
use convoy_shared::params::ParamSet;
use convoy_shared::spec::ModelSpec;
use convoy_shared::strategy::server::OptState;
use convoy_shared::topics::{self, ClientTopic};
use convoy_shared::version::VersionId;
use convoy_shared::wire::{self, Kind, WireError, publish_wire_len};
use convoy_store::{RoundRow, Store, StoredVersion};
use registry::Registry;
use rounds::{Closing, OpenRound};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;

/// What the coordinator reacts to.
#[derive(Debug)]
pub enum Input {
    /// The link (re)connected, or a message arrived.
    Link(LinkEvent),
    /// Periodic: rounds open and close.
    Tick,
    /// The evaluation asked for by [`Output::Evaluate`] finished (`None`: it
    /// failed, the round closes without a server-side metric).
    Evaluated(Option<Evaluation>),
}

impl From<LinkEvent> for Input {
    fn from(event: LinkEvent) -> Self {
        Input::Link(event)
    }
}

/// What the loop must do, in order.
#[derive(Debug)]
pub enum Output {
    /// Publish a message.
    Publish(Outgoing),
    /// Evaluate `params` on the test set off the async runtime, then feed
    /// [`Input::Evaluated`] back before any other input: the round is
    /// closing and nothing else is handled meanwhile.
    Evaluate(Box<EvalRequest>),
    /// A round closed with this ledger row.
    RoundClosed(Box<RoundRow>),
}

/// A model to evaluate on the server's test set.
#[derive(Debug, Clone)]
pub struct EvalRequest {
    /// Its spec.
    pub spec: ModelSpec,
    /// Its parameters.
    pub params: ParamSet,
    /// The test set.
    pub test: Arc<Dataset>,
}

impl EvalRequest {
    /// Runs the evaluation (CPU-bound: call it off the async runtime).
    pub fn run(&self) -> Option<Evaluation> {
        convoy_shared::eval::evaluate(
            &self.spec,
            &self.params,
            &self.test,
            &burn::prelude::Device::flex(),
        )
        .ok()
    }
}

/// Drives rounds. Owned by the server loop; never shared.
#[derive(Debug)]
pub struct Coordinator {
    config: ServerConfig,
    /// Signs everything the server publishes.
    key: SecretKey,
    /// Decodes and checks every inbound message once.
    inbox: Inbox,
    store: Store,
    clock: SharedClock,
    spec: ModelSpec,
    test: Option<Arc<Dataset>>,
    current: StoredVersion,
    /// Canonical bytes of `current`, served as chunks.
    model_bytes: Vec<u8>,
    /// The configured update codec (a round may differ during warm-up).
    base_codec: Pipeline,
    downlink: Pipeline,
    /// What the downlink codec has not yet delivered of the fleet's
    /// updates (error feedback), and the version it was made on.
    residual: ParamSet,
    residual_base: Option<VersionId>,
    /// Delta chains to the current model, by the version a fetcher holds.
    transfers: HashMap<VersionId, Option<serve::Chain>>,
    /// The store's `data_version` when a rollback was last looked for.
    data_version: Option<i64>,
    /// The cost model's byte calibration: per (vehicle, codec) for updates,
    /// fleet-wide for one-step deltas and for whole models.
    byte_ratios: HashMap<(String, String), Calibrated>,
    delta_ratio: Calibrated,
    full_ratio: Calibrated,
    /// Decode buffer for one update, reused.
    scratch: ParamSet,
    registry: Registry,
    round: Option<OpenRound>,
    closing: Option<Closing>,
    next_round: u64,
    rounds_run: u64,
    rounds_failed: u64,
    rejections: Rejections,
    /// Median update norm and claim of the last round that had updates.
    references: aggregate::References,
    /// Each vehicle's largest weight in a finished round.
    history: HashMap<String, f64>,
    /// The server optimiser's state as of `current` (empty for FedAvg).
    opt_state: OptState,
    /// SCAFFOLD's server control as of `current`.
    control: Option<control::ServerControl>,
    /// Update chunks that came between asynchronous rounds, and their size.
    parked: Vec<ingest::Parked>,
    parked_bytes: usize,
    /// No better model for `rounds.early_stop_rounds` scored models.
    stopped_early: bool,
    /// The round topic needs its genuine message back.
    restore_due: bool,
    /// When the server last put it back.
    last_restore: Option<tokio::time::Instant>,
}

/// Most often the server re-publishes the round topic's retained message
/// after someone else replaced or cleared it.
const RESTORE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl Coordinator {
    /// A coordinator resuming from `current`, the store's latest version,
    /// signing with `key` and trusting the vehicles provisioned in `store`.
    pub fn new(
        config: ServerConfig,
        key: SecretKey,
        store: Store,
        clock: SharedClock,
        spec: ModelSpec,
        test: Option<Arc<Dataset>>,
        current: StoredVersion,
    ) -> Result<Self, ServerError> {
        let next_round = store.next_round()?;
        let inbox = Inbox::new(&config, &key, &store)?;
        if inbox.vehicles() == 0 {
            tracing::warn!(
                "no vehicle is provisioned: run `convoy-server provision <client_id>...` for each vehicle"
            );
        }
        let base_codec = config.rounds.codec;
        let downlink = config.rounds.downlink_codec;
        // after a restart the bounds come back from the store
        let references = aggregate::References::of_rows(&store.reference_rows()?);
        let history = store.weight_history()?;
        let opt_state = Self::load_opt_state(&config, &store, &current)?;
        let mut coordinator = Self {
            opt_state: OptState::default(),
            control: None,
            parked: Vec::new(),
            parked_bytes: 0,
            base_codec,
            downlink,
            residual: ParamSet::zeros(&spec.layout()),
            residual_base: None,
            transfers: HashMap::new(),
            data_version: None,
            byte_ratios: HashMap::new(),
            delta_ratio: Calibrated::default(),
            full_ratio: Calibrated::default(),
            model_bytes: current.params.canonical_bytes(),
            scratch: ParamSet::zeros(&spec.layout()),
            config,
            key,
            inbox,
            store,
            clock,
            spec,
            test,
            current,
            registry: Registry::default(),
            round: None,
            closing: None,
            next_round,
            rounds_run: 0,
            rounds_failed: 0,
            rejections: Rejections::default(),
            references,
            history,
            restore_due: false,
            last_restore: None,
            stopped_early: false,
        };
        coordinator.adopt_state(opt_state);
        coordinator.resume()?;
        // a fleet that stopped early stays stopped across a restart
        coordinator.check_early_stop()?;
        Ok(coordinator)
    }

    /// The server optimiser's state stored with `current` (with SCAFFOLD's
    /// control), or a fresh one (said, when the optimiser keeps state: the
    /// momentum starts again).
    fn load_opt_state(
        config: &ServerConfig,
        store: &Store,
        current: &StoredVersion,
    ) -> Result<OptState, ServerError> {
        let opt = config.strategy.server;
        let fresh = opt.init(&current.params);
        if !opt.is_stateful() && !config.strategy.scaffold {
            return Ok(fresh);
        }
        let hex = convoy_shared::version::hex(&current.manifest.version);
        let stored = store
            .optimizer_state(&hex)?
            .and_then(|bytes| OptState::from_bytes(&bytes).ok());
        // SCAFFOLD's control outlives a change of optimiser
        let control = stored.as_ref().and_then(|s| s.control.clone());
        let stored = stored.filter(|s| s.fits(&opt, &current.params));
        Ok(stored.unwrap_or_else(|| {
            if current.parent.is_some() && opt.is_stateful() {
                tracing::warn!(
                    version = %convoy_shared::version::short(&current.manifest.version),
                    optimiser = %opt,
                    "no optimiser state is stored for the current model; the server optimiser starts afresh"
                );
            }
            OptState { control, ..fresh }
        }))
    }

    /// The topic filters the link must hold: the vehicles' topics, and the
    /// round topic, so a retained announcement someone else put there is
    /// replaced at once.
    pub fn subscriptions(&self) -> Vec<String> {
        Self::subscriptions_for(&self.config.fleet)
    }

    /// [`Coordinator::subscriptions`] of `fleet`'s coordinator.
    pub fn subscriptions_for(fleet: &str) -> Vec<String> {
        let round = topics::round(fleet).as_str().to_string();
        let mut filters: Vec<String> = [
            ClientTopic::Update,
            ClientTopic::Fetch,
            ClientTopic::Status,
            ClientTopic::Failure,
        ]
        .into_iter()
        .map(|kind| topics::all_clients(fleet, kind).as_str().to_string())
        .collect();
        filters.push(round);
        filters
    }

    /// True once the configured number of rounds has run, or training
    /// stopped early (`rounds.early_stop_rounds`).
    pub fn done(&self) -> bool {
        self.stopped_early
            || (self.config.rounds.total > 0 && self.rounds_run >= self.config.rounds.total)
    }

    /// Rounds closed since start: (published a model, failed).
    pub fn outcomes(&self) -> (u64, u64) {
        (self.rounds_run - self.rounds_failed, self.rounds_failed)
    }

    /// Rejection counts by reason since start.
    pub fn rejections(&self) -> &RejectionCounts {
        self.rejections.counts()
    }

    /// The fleet's current model.
    pub fn current(&self) -> &StoredVersion {
        &self.current
    }

    /// The open round's announcement, if a round is open.
    pub fn open_round(&self) -> Option<&Announce> {
        self.round.as_ref().map(|r| &r.announce)
    }

    /// Reacts to one input.
    pub fn handle(&mut self, input: Input) -> Result<Vec<Output>, ServerError> {
        let mut out = Vec::new();
        match input {
            Input::Link(LinkEvent::Connected) => {
                // The retained announcement may have been lost with the broker.
                if let Some(r) = &self.round {
                    let topic = topics::round(&self.config.fleet);
                    let payload = self.seal(Kind::Announce, &topic, &r.announce)?;
                    out.push(Output::Publish(Outgoing::retained(topic.as_str(), payload)));
                }
            }
            Input::Link(LinkEvent::Message { topic, payload, .. }) => {
                self.on_message(&topic, &payload, &mut out)?
            }
            Input::Tick => self.tick(&mut out)?,
            Input::Evaluated(eval) => self.on_evaluated(eval, &mut out)?,
        }
        Ok(out)
    }

    /// Decodes a message once (the [`Inbox`] gate) and hands it to its
    /// handler; what the gate refuses is counted here.
    fn on_message(
        &mut self,
        topic: &str,
        payload: &[u8],
        out: &mut Vec<Output>,
    ) -> Result<(), ServerError> {
        let wire_len =
            publish_wire_len(topic.len(), payload.len(), 1, self.config.vehicles_on_tls());
        let current = self.round.as_ref().map(|r| r.announce.round);
        let inbound = match self.inbox.decode(&self.store, topic, payload) {
            Ok(Some(inbound)) => inbound,
            Ok(None) => return Ok(()),
            Err(refused) => {
                let round = match refused.kind {
                    ClientTopic::Status => None,
                    ClientTopic::Update => {
                        self.count_wire_up(&refused.client, wire_len);
                        current
                    }
                    _ => current,
                };
                self.reject(round, Some(&refused.client), &refused.why);
                return Ok(());
            }
        };
        // a status counts as news only once the registry has found it newer
        // (`Registry::take`): a replayed one must not keep a vehicle alive
        if let Some(client) = inbound.client()
            && !matches!(inbound, Inbound::Status { .. })
        {
            let now = self.clock.instant();
            self.registry.heard(client, now);
        }
        match inbound {
            Inbound::ForeignOnRound => self.on_foreign_announcement(out)?,
            Inbound::RoundCleared if self.round.is_some() => {
                // whoever cleared it, the open round's announcement goes back
                self.restore_due = true;
                self.restore_round_topic(out)?
            }
            Inbound::RoundCleared => {}
            Inbound::Update { client, chunk } => {
                self.count_wire_up(&client, wire_len);
                self.on_update(&client, chunk, payload.len() as u64, wire_len, out)?
            }
            Inbound::Fetch { client, request } => self.on_fetch(&client, request, out),
            Inbound::Status { client, status } => self.on_status(&client, status),
            Inbound::Failure { client, report } => self.on_failure(&client, report),
            // alignment's messages, after alignment
            Inbound::ForeignOnAlign | Inbound::Schema { .. } | Inbound::Stats { .. } => {}
        }
        Ok(())
    }

    /// Whatever is on the round topic must be the server's own. Its own
    /// announcements coming back are left alone (an older one may arrive
    /// after a newer was sent; the broker keeps the newer). Anything else is
    /// counted and replaced with the open round's announcement, or cleared
    /// with an empty retained message when no round is open.
    fn on_foreign_announcement(&mut self, out: &mut Vec<Output>) -> Result<(), ServerError> {
        let why = Rejection::ForgedAnnouncement;
        self.reject(self.round.as_ref().map(|r| r.announce.round), None, &why);
        self.restore_due = true;
        self.restore_round_topic(out)
    }

    /// Puts the genuine message back on the round topic when something
    /// replaced or cleared it, at most once per [`RESTORE_EVERY`]: a flood
    /// of junk costs the fleet one re-announcement a second, not one per
    /// junk message; what comes during the pause is fixed on the next tick.
    pub(super) fn restore_round_topic(&mut self, out: &mut Vec<Output>) -> Result<(), ServerError> {
        if !self.restore_due {
            return Ok(());
        }
        let now = self.clock.instant();
        if self
            .last_restore
            .is_some_and(|t| now.saturating_duration_since(t) < RESTORE_EVERY)
        {
            return Ok(());
        }
        (self.restore_due, self.last_restore) = (false, Some(now));
        let topic = topics::round(&self.config.fleet);
        let genuine = match &self.round {
            Some(r) => self.seal(Kind::Announce, &topic, &r.announce)?,
            None => Vec::new(),
        };
        out.push(Output::Publish(Outgoing::retained(topic.as_str(), genuine)));
        Ok(())
    }

    /// `message` signed by the server for `topic`.
    fn seal<T: Serialize>(
        &self,
        kind: Kind,
        topic: &str,
        message: &T,
    ) -> Result<Vec<u8>, WireError> {
        wire::encode(kind, message, topic, &self.key)
    }

    fn reject(&mut self, round: Option<u64>, client: Option<&str>, why: &Rejection) {
        let now_ms = self.clock.now_ms();
        self.rejections
            .reject(&self.store, now_ms, round, client, why);
    }

    fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }
}
