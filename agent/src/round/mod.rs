//! The agent's round as a state machine without I/O (rumqtt's `MqttState`
//! style): [`Agent::handle`] takes an [`Input`] (a link event, a tick, a
//! condition answer, a finished training job), changes state and returns the
//! [`Action`]s for the I/O loop in `run.rs` to carry out. It reads and
//! writes the state directory itself (local, atomic, and ordered with what
//! it sends: an update is persisted before the first chunk leaves).
//!
//! A round moves Idle → Fetching → Waiting (for the training policy) →
//! Training → back to Idle with an update in the [`Outbox`]. The outbox sits
//! beside the round rather than being one of its states: the update of
//! round r may still await its receipt while round r + 1 is fetched or
//! trained.

mod align;
mod announce;
mod fetch;
mod outgoing;
mod train;
mod upload;

#[cfg(test)]
mod tests;

use crate::config::AgentConfig;
use crate::data::LocalData;
use crate::error::AgentError;
use crate::inbound::{Inbound, Inbox};
use crate::keys::Keys;
use crate::policy::Policy;
use crate::rejection::Rejections;
use crate::state::{StateDir, StoredModel};
use convoy_runtime::clock::SharedClock;
use convoy_runtime::link::{LinkEvent, Outgoing};
use convoy_shared::codec::Pipeline;
use convoy_shared::messages::{AgentState, Announce};
use convoy_shared::topics::{self, ClientTopic, Topic};
use std::cell::Cell;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::time::Instant;

pub use fetch::Fetch;
pub use outgoing::HEARTBEAT;
pub use train::{Finished, Measured, TrainOrder, TrainingDone};

/// What the machine reacts to.
#[derive(Debug)]
pub enum Input {
    /// The link (re)connected, or a message arrived.
    Link(LinkEvent),
    /// Periodic: policy, receipts and stalled fetches are checked.
    Tick,
    /// The vehicle's training condition was checked.
    Condition(bool),
    /// A training job ended.
    Trained(Box<TrainingDone>),
}

impl From<LinkEvent> for Input {
    fn from(event: LinkEvent) -> Self {
        Input::Link(event)
    }
}

/// What the I/O loop must do, in order.
pub enum Action {
    /// Publish a message.
    Publish(Outgoing),
    /// Run a training job on a thread of its own and feed its result back
    /// as [`Input::Trained`]; replaces any job still running.
    Train(TrainOrder),
    /// Wait this long before the next action (fault injection: a slow link).
    Delay(Duration),
}

impl fmt::Debug for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Publish(m) => write!(f, "Publish({}, {} bytes)", m.topic, m.payload.len()),
            Action::Train(order) => write!(f, "Train(round {})", order.round),
            Action::Delay(d) => write!(f, "Delay({d:?})"),
        }
    }
}

/// A round the agent can train: its announcement with the codec parsed,
/// and the base model it trains from.
#[derive(Debug, Clone)]
pub struct Ready {
    /// The announcement.
    pub announce: Announce,
    /// Its update codec, parsed once.
    pub codec: Pipeline,
    /// The verified base model.
    pub model: StoredModel,
    /// A SCAFFOLD round's server control, verified against its id.
    pub control: Option<Arc<convoy_shared::params::ParamSet>>,
}

/// Where the round in hand stands.
#[derive(Debug, Default)]
pub enum Round {
    /// Nothing to do but wait for a round.
    #[default]
    Idle,
    /// Downloading the base model.
    Fetching(Box<Fetch>),
    /// Base model in hand; the training policy does not allow training now.
    Waiting(Box<Ready>),
    /// A training job runs (it pauses itself at the next batch if the policy
    /// stops allowing it, and comes back as a checkpoint).
    Training {
        /// What is trained.
        ready: Box<Ready>,
        /// Set to abandon the job.
        cancel: Arc<AtomicBool>,
    },
}

impl Round {
    /// The round number in hand, if any.
    pub fn number(&self) -> Option<u64> {
        match self {
            Round::Idle => None,
            Round::Fetching(f) => Some(f.announce.round),
            Round::Waiting(r) | Round::Training { ready: r, .. } => Some(r.announce.round),
        }
    }

    /// Name of the state, for logs and tests.
    pub fn name(&self) -> &'static str {
        match self {
            Round::Idle => "idle",
            Round::Fetching(_) => "fetching",
            Round::Waiting(_) => "waiting",
            Round::Training { .. } => "training",
        }
    }
}

/// An update sent and awaiting the server's receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outbox {
    /// Round of the update.
    pub round: u64,
    /// When its chunks last went out.
    pub sent: Instant,
}

/// The topics one vehicle uses.
#[derive(Debug, Clone)]
struct Topics {
    update: Topic,
    fetch: Topic,
    status: Topic,
    failure: Topic,
    schema: Topic,
    stats: Topic,
}

/// One vehicle's agent, without its I/O.
#[derive(Debug)]
pub struct Agent {
    config: AgentConfig,
    keys: Keys,
    /// Random per process: see [`convoy_shared::messages::Status::session`].
    session: u64,
    /// The last status sequence number used.
    seq: Cell<u64>,
    /// The model version held in the state directory (zeros: none), as
    /// reported in every status.
    held: Cell<convoy_shared::version::VersionId>,
    /// This device's measured training speed, reported in every status.
    throughput: Cell<convoy_shared::cost::Throughput>,
    /// The last status sent and when: repeated as a heartbeat, since the
    /// server counts a vehicle silent for `offline_after_secs` as offline.
    last_status: std::cell::RefCell<Option<(AgentState, u64, String)>>,
    status_at: Cell<Option<Instant>>,
    clock: SharedClock,
    state: StateDir,
    data: LocalData,
    topics: Topics,
    /// Decodes every message from the server once.
    inbox: Inbox,
    rejections: Rejections,
    /// The newest announcement seen.
    announce: Option<Announce>,
    /// The newest alignment request answered (older ones are replays).
    align_epoch: u64,
    round: Round,
    outbox: Option<Outbox>,
    /// The training set of the last spec (kept while a paused round waits).
    dataset: Option<([u8; 32], crate::data::TrainingSet)>,
    policy: Policy,
    /// Set while the policy forbids training; the training thread pauses at
    /// its next batch.
    pause: Arc<AtomicBool>,
}

impl Agent {
    /// An agent over an opened state directory, signing with `keys`.
    pub fn new(
        config: AgentConfig,
        keys: Keys,
        state: StateDir,
        data: LocalData,
        clock: SharedClock,
    ) -> Self {
        let fleet = &config.fleet;
        let me = &config.client_id;
        let topics = Topics {
            update: topics::client(fleet, ClientTopic::Update, me),
            fetch: topics::client(fleet, ClientTopic::Fetch, me),
            status: topics::client(fleet, ClientTopic::Status, me),
            failure: topics::client(fleet, ClientTopic::Failure, me),
            schema: topics::client(fleet, ClientTopic::Schema, me),
            stats: topics::client(fleet, ClientTopic::Stats, me),
        };
        let inbox = Inbox::new(fleet, me, keys.server, config.broker.max_packet_size);
        let policy = Policy::new(config.policy.clone(), clock.instant());
        // an unreadable model is handled when a round needs it
        let held = state
            .model()
            .ok()
            .flatten()
            .map_or([0; 32], |m| m.manifest.version);
        Self {
            config,
            keys,
            session: rand::random(),
            seq: Cell::new(0),
            held: Cell::new(held),
            throughput: Cell::new(Default::default()),
            last_status: std::cell::RefCell::new(None),
            status_at: Cell::new(None),
            clock,
            state,
            data,
            topics,
            inbox,
            rejections: Rejections::default(),
            announce: None,
            align_epoch: 0,
            round: Round::Idle,
            outbox: None,
            dataset: None,
            policy,
            pause: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The topic filters the link must hold.
    pub fn subscriptions(&self) -> Vec<String> {
        self.inbox.subscriptions()
    }

    /// Messages refused so far (forged, replayed across topics, oversized).
    pub fn rejections(&self) -> &Rejections {
        &self.rejections
    }

    /// Sets this device's measured training speed (from
    /// [`crate::calibrate::calibrate`]); rounds refine it.
    pub fn set_throughput(&self, throughput: convoy_shared::cost::Throughput) {
        self.throughput.set(throughput);
    }

    /// Where the round in hand stands.
    pub fn round(&self) -> &Round {
        &self.round
    }

    /// The update awaiting its receipt, if any.
    pub fn outbox(&self) -> Option<Outbox> {
        self.outbox
    }

    /// Abandons a running training job (shutdown).
    pub fn cancel_training(&self) {
        if let Round::Training { cancel, .. } = &self.round {
            cancel.store(true, Ordering::Relaxed);
        }
    }

    /// Reacts to one input. A state directory that cannot be written (full,
    /// read-only, gone) or a corrupt file in it costs the round in hand,
    /// reported to the server, never the agent: it keeps running and tries
    /// again with the next round.
    pub fn handle(&mut self, input: Input) -> Result<Vec<Action>, AgentError> {
        let mut out = Vec::new();
        let result = match input {
            Input::Link(LinkEvent::Connected) => self.on_connected(&mut out),
            Input::Link(LinkEvent::Message { topic, payload, .. }) => {
                self.on_message(&topic, &payload, &mut out)
            }
            Input::Tick => self.on_tick(&mut out),
            Input::Condition(ok) => {
                self.policy.observe(ok, self.clock.instant());
                self.apply_policy(&mut out)
            }
            Input::Trained(done) => self.on_trained(*done, &mut out),
        };
        match result {
            Ok(()) => Ok(out),
            Err(AgentError::State(e)) => {
                self.on_state_error(&e, &mut out);
                Ok(out)
            }
            Err(e) => Err(e),
        }
    }

    fn on_state_error(&mut self, e: &crate::state::StateError, out: &mut Vec<Action>) {
        let round = self
            .round
            .number()
            .or(self.announce.as_ref().map(|a| a.round))
            .unwrap_or(0);
        self.cancel_training();
        self.round = Round::Idle;
        tracing::error!(round, error = %e, "state directory failed: round skipped, agent keeps running");
        self.fail(out, round, "state_dir", &e.to_string());
    }

    fn on_connected(&mut self, out: &mut Vec<Action>) -> Result<(), AgentError> {
        let round = self.announce.as_ref().map_or(0, |a| a.round);
        self.status(out, AgentState::Idle, round, "connected");
        // Anything trained but unacknowledged goes out again.
        if let Some(pending) = self.state.pending()? {
            self.upload(&pending, out);
        }
        Ok(())
    }

    fn on_message(
        &mut self,
        topic: &str,
        payload: &[u8],
        out: &mut Vec<Action>,
    ) -> Result<(), AgentError> {
        match self.inbox.decode(topic, payload) {
            Ok(Some(Inbound::Announce(announce))) => self.on_announce(*announce, out),
            Ok(Some(Inbound::Align(request))) => self.on_align(request, out),
            Ok(Some(Inbound::ModelChunk(chunk))) => self.on_model_chunk(chunk, out),
            Ok(Some(Inbound::Ack(ack))) => self.on_ack(ack, out),
            Ok(None) => Ok(()),
            Err(refused) => {
                // a forged receipt must never make the vehicle drop its update
                let now_ms = self.clock.now_ms();
                self.rejections.refuse(&refused, now_ms);
                Ok(())
            }
        }
    }

    fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    fn patience(&self) -> Duration {
        Duration::from_secs(self.config.training.ack_timeout_secs.max(1))
    }

    /// Follows the training policy: pauses running training, resumes or
    /// starts waiting training, and skips rounds whose deadline passed.
    fn apply_policy(&mut self, out: &mut Vec<Action>) -> Result<(), AgentError> {
        let allowed = self
            .policy
            .allowed(self.now_ms() / 1000, self.clock.instant());
        self.pause.store(!allowed, Ordering::Relaxed);
        let Round::Waiting(ready) = &self.round else {
            return Ok(());
        };
        if ready.announce.deadline_ms <= self.now_ms() {
            let round = ready.announce.round;
            self.round = Round::Idle;
            self.state.clear_checkpoint()?;
            tracing::warn!(
                round,
                "round deadline passed while training was not allowed; skipped"
            );
            self.fail(
                out,
                round,
                "policy",
                "deadline passed while training was not allowed",
            );
        } else if allowed && let Round::Waiting(ready) = std::mem::take(&mut self.round) {
            self.start_training(*ready, out)?;
        }
        Ok(())
    }

    fn on_tick(&mut self, out: &mut Vec<Action>) -> Result<(), AgentError> {
        self.apply_policy(out)?;
        self.heartbeat(out);
        let patience = self.patience();
        let now = self.clock.instant();
        if let Some(outbox) = self.outbox
            && now.saturating_duration_since(outbox.sent) > patience
        {
            match self.state.pending()?.filter(|p| p.round == outbox.round) {
                Some(pending) => {
                    tracing::warn!(round = outbox.round, "no receipt yet; re-sending update");
                    self.upload(&pending, out);
                }
                None => self.outbox = None,
            }
        }
        if let Round::Fetching(fetch) = &self.round
            && now.saturating_duration_since(fetch.last_progress) > patience
        {
            tracing::warn!("model fetch stalled; re-requesting missing chunks");
            self.request_missing(out);
        }
        Ok(())
    }
}
