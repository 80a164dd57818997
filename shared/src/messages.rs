//! The message bodies carried inside [`crate::wire`] envelopes.

use crate::align::{LocalSchema, Schema, Statistics};
use crate::chunk::ChunkPos;
use crate::codec::Pipeline;
use crate::spec::{ModelSpec, Recipe};
use crate::version::{Manifest, VersionId};
use heapless::String as HString;
use serde::{Deserialize, Serialize};

/// A fleet or client id on the wire: bounded, so decoding cannot be made to
/// allocate an arbitrarily long string.
pub type Id = HString<{ crate::topics::MAX_ID }>;

/// Builds an [`Id`], failing when `s` is not a valid id.
pub fn id(s: &str) -> Option<Id> {
    crate::topics::valid_id(s)
        .then(|| Id::try_from(s).ok())
        .flatten()
}

/// Round announcement, retained on `convoy/v1/<fleet>/round`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Announce {
    /// Round number, strictly increasing.
    pub round: u64,
    /// The model every update must be relative to.
    pub manifest: Manifest,
    /// Model architecture, features and normalisation.
    pub spec: ModelSpec,
    /// Local training recipe.
    pub task: Recipe,
    /// Codec for updates this round.
    pub codec: Pipeline,
    /// Codec of the model delta agents holding the previous version can fetch.
    pub downlink_codec: Pipeline,
    /// Unix milliseconds after which updates are late.
    pub deadline_ms: u64,
    /// Clients asked to train; the rest sit this round out.
    pub selected: Vec<Id>,
    /// Chunk size for updates, bytes.
    pub chunk_size: u32,
    /// What the vehicles minimise this round besides their own loss.
    pub objective: Objective,
    /// Asynchronous rounds (FedBuff): an update trained on a model up to
    /// this many versions older than the current one still counts, so a
    /// vehicle keeps training when a newer round is announced. 0:
    /// synchronous rounds (a newer round abandons the older one).
    pub staleness: u32,
}

/// The client side of a round's strategy: what a vehicle adds to its own
/// loss while it trains.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub enum Objective {
    /// Its own loss only (FedAvg and the server-side optimisers).
    #[default]
    Plain,
    /// FedProx (Li et al., MLSys 2020): `μ/2 ‖w − w₀‖²` added, `w₀` the
    /// round's base model, so a vehicle with skewed data drifts less far.
    Prox {
        /// The proximal weight μ (> 0).
        mu: f32,
    },
    /// SCAFFOLD (Karimireddy et al., ICML 2020): the server control `c`
    /// minus the vehicle's own `cᵢ` is added to every gradient, so a
    /// vehicle with skewed data drifts less (`crate::strategy::scaffold`).
    Scaffold {
        /// The id of the round's server control, fetched like a model
        /// version ([`FetchRequest::version`]) and verified by it.
        control: [u8; 32],
    },
}

/// An announcement as releases before [`Announce::objective`] encoded it.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct AnnounceWithoutObjective {
    round: u64,
    manifest: Manifest,
    spec: ModelSpec,
    task: Recipe,
    codec: Pipeline,
    downlink_codec: Pipeline,
    deadline_ms: u64,
    selected: Vec<Id>,
    chunk_size: u32,
}

/// An announcement as releases before [`Announce::staleness`] encoded it.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct AnnounceWithoutStaleness {
    round: u64,
    manifest: Manifest,
    spec: ModelSpec,
    task: Recipe,
    codec: Pipeline,
    downlink_codec: Pipeline,
    deadline_ms: u64,
    selected: Vec<Id>,
    chunk_size: u32,
    objective: Objective,
}

impl Announce {
    /// An announcement the server kept for its open round (postcard),
    /// also in the layouts of releases before the round's objective and
    /// staleness bound were announced (read as [`Objective::Plain`] and
    /// synchronous), so a round left open across an upgrade resumes with
    /// the updates it acknowledged.
    pub fn from_kept(bytes: &[u8]) -> Result<Announce, postcard::Error> {
        if let Ok(now) = postcard::from_bytes(bytes) {
            return Ok(now);
        }
        let old = match postcard::from_bytes::<AnnounceWithoutStaleness>(bytes) {
            Ok(old) => old,
            Err(e) => {
                let old: AnnounceWithoutObjective = postcard::from_bytes(bytes).map_err(|_| e)?;
                AnnounceWithoutStaleness {
                    round: old.round,
                    manifest: old.manifest,
                    spec: old.spec,
                    task: old.task,
                    codec: old.codec,
                    downlink_codec: old.downlink_codec,
                    deadline_ms: old.deadline_ms,
                    selected: old.selected,
                    chunk_size: old.chunk_size,
                    objective: Objective::Plain,
                }
            }
        };
        Ok(Announce {
            round: old.round,
            manifest: old.manifest,
            spec: old.spec,
            task: old.task,
            codec: old.codec,
            downlink_codec: old.downlink_codec,
            deadline_ms: old.deadline_ms,
            selected: old.selected,
            chunk_size: old.chunk_size,
            objective: old.objective,
            staleness: 0,
        })
    }

    /// The base version id.
    pub fn base_version(&self) -> VersionId {
        self.manifest.version
    }
}

/// Request for model chunks, on `fetch/<client>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FetchRequest {
    /// Version wanted.
    pub version: VersionId,
    /// Chunk indices wanted; empty means all.
    pub chunks: Vec<u32>,
    /// The version the agent holds: the server answers with a compressed
    /// delta from it when it has one, else with the full chunks.
    pub have: Option<VersionId>,
}

/// Which part of a model a [`ModelChunk`] carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ModelPart {
    /// Chunk `index` of the canonical parameter bytes (a keyframe).
    Full {
        /// Index into the manifest's chunk list.
        index: u32,
    },
    /// A piece of the delta chain from version `from`: the postcard
    /// encoding of `Vec<Delta>`, one published delta per version after
    /// `from`, oldest first.
    Delta {
        /// Version the delta applies to.
        from: VersionId,
        /// Position of this piece in the delta.
        pos: ChunkPos,
    },
    /// A piece of a SCAFFOLD server control (its
    /// `crate::strategy::scaffold::Control::payload`), asked for by its id.
    Control {
        /// Position of this piece in the payload.
        pos: ChunkPos,
    },
}

/// One model chunk, on `model/<client>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelChunk {
    /// Version this chunk belongs to.
    pub version: VersionId,
    /// Full chunk or delta piece.
    pub part: ModelPart,
    /// Bytes; a full chunk's BLAKE3 must match the manifest.
    pub data: Vec<u8>,
}

/// One published delta: what turns a version's parent into it, in the
/// codec it was published with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    /// Codec of `bytes` (its canonical spec on the wire).
    pub codec: Pipeline,
    /// The encoded delta.
    pub bytes: Vec<u8>,
}

/// One chunk of an update, on `update/<client>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateChunk {
    /// Sender; must match the topic.
    pub client: Id,
    /// Round the update answers.
    pub round: u64,
    /// Base version the update is relative to.
    pub base_version: VersionId,
    /// Where this piece goes.
    pub pos: ChunkPos,
    /// Bytes of the serialised [`UpdateBody`].
    pub data: Vec<u8>,
}

/// What an agent measured while training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct TrainStats {
    /// Seconds training took: the CPU time of the training threads on a
    /// CPU, wall time on a GPU (see `convoy_agent::cpu_time`).
    pub train_seconds: f64,
    /// Optimiser steps taken.
    pub steps: u64,
    /// Epochs completed.
    pub epochs: u32,
    /// Mean training loss of the last epoch.
    pub loss: f32,
    /// Estimated floating-point operations of the training work.
    pub flops: u64,
    /// Backend that trained, e.g. `cpu-flex`.
    pub device: String,
    /// Seconds spent encoding the update (error feedback included).
    pub encode_seconds: f64,
    /// L2 norm of the error-feedback residual left after encoding.
    pub residual_norm: f64,
    /// The round's base model (the fleet's newest) on the vehicle's own
    /// held-out rows, measured before training: how the global model does
    /// where the data is, with no test set on the server.
    pub holdout: Option<crate::eval::Evaluation>,
    /// The same rows scored by the vehicle's personalised model: the base
    /// model with its output head fine-tuned locally
    /// (`training.personal_steps`); none when the vehicle keeps no head.
    pub personal: Option<crate::eval::Evaluation>,
}

/// The reassembled update payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateBody {
    /// Training samples behind the update (FedAvg weight).
    pub samples: u64,
    /// The spec's head the vehicle trained (with the shared trunk); the
    /// other heads' weights are left as they are.
    pub head: u32,
    /// Training measurements.
    pub stats: TrainStats,
    /// Codec of `encoded`.
    pub codec: Pipeline,
    /// Codec output for `local - base`.
    pub encoded: Vec<u8>,
}

/// Server's receipt for an update, on `ack/<client>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateAck {
    /// Round acknowledged.
    pub round: u64,
    /// Accepted (or already accepted) and counted.
    pub accepted: bool,
    /// Why not, when refused.
    pub reason: String,
}

/// What an agent is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentState {
    /// Connected, waiting for a round.
    Idle,
    /// Downloading a model.
    Fetching,
    /// Training.
    Training,
    /// Uploading an update.
    Uploading,
    /// Skipped a round it could not serve.
    Skipped,
    /// Gone (the last will).
    Offline,
}

/// Agent status, retained on `status/<client>`; also the last will.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Client id.
    pub client: Id,
    /// Current state.
    pub state: AgentState,
    /// Round in hand, or the last one seen.
    pub round: u64,
    /// Codec stages this agent can encode (see `codec::STAGES`).
    pub codecs: Vec<HString<32>>,
    /// Local training samples.
    pub samples: u64,
    /// Short free-text detail.
    pub detail: HString<96>,
    /// Agent release (crate version).
    pub version: HString<16>,
    /// Model version the vehicle holds (all zeros: none yet): the fleet's
    /// inventory (`convoy-server models fleet`).
    pub model: VersionId,
    /// How fast it trains: calibrated at start-up, refined by every round
    /// (zeros: not measured). The server's cost model predicts from it.
    pub throughput: crate::cost::Throughput,
    /// Deployment label from the agent's config (set by `convoy-server
    /// deploy` so it can tell the new process from the old one); empty if unset.
    pub deployment: Id,
    /// Random per agent process: two processes sharing one vehicle's
    /// identity show as two sessions, and a last will counts only for the
    /// session that set it.
    pub session: u64,
    /// Strictly increasing within a session (Unix milliseconds at send, made
    /// unique): a replayed status is older than the last one seen.
    pub seq: u64,
}

impl Status {
    /// A status of `client` in `state`, number `seq` of `session`: every
    /// codec stage this build can encode, this build's version, no model
    /// held, no rows, no speed measured, no detail. Set the rest by name.
    pub fn new(client: Id, state: AgentState, (session, seq): (u64, u64)) -> Self {
        Self {
            client,
            state,
            round: 0,
            codecs: crate::codec::STAGES
                .iter()
                .filter_map(|c| HString::try_from(*c).ok())
                .collect(),
            samples: 0,
            detail: HString::new(),
            version: HString::try_from(env!("CARGO_PKG_VERSION")).unwrap_or_default(),
            model: [0; 32],
            throughput: Default::default(),
            deployment: HString::new(),
            session,
            seq,
        }
    }
}

/// A vehicle cannot serve a round, on `failure/<client>`: the server counts
/// it in the ledger and stops waiting for this vehicle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailureReport {
    /// Sender; must match the topic.
    pub client: Id,
    /// The round it cannot serve.
    pub round: u64,
    /// Stable reason, e.g. `data`, `diverged`, `model_refused`, `state_dir`.
    pub reason: HString<32>,
    /// What went wrong, for the operator.
    pub detail: HString<160>,
}

/// What the server asks of the fleet before the first round, retained on
/// `convoy/v1/<fleet>/align`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlignRequest {
    /// Alignment number: answers to an older request are ignored.
    pub epoch: u64,
    /// Schema or statistics.
    pub stage: AlignStage,
    /// Unix milliseconds after which the server goes ahead with the vehicles
    /// that answered.
    pub deadline_ms: u64,
}

/// The stage of an alignment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AlignStage {
    /// Declare your local schema.
    Schema,
    /// Send your column statistics under this merged schema.
    Statistics(Schema),
}

/// A vehicle's local schema, on `schema/<client>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchemaReport {
    /// Sender; must match the topic.
    pub client: Id,
    /// The request answered.
    pub epoch: u64,
    /// Its columns, types, label and task.
    pub schema: LocalSchema,
}

/// A vehicle's column statistics, on `stats/<client>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsReport {
    /// Sender; must match the topic.
    pub client: Id,
    /// The request answered.
    pub epoch: u64,
    /// Counts, exact sums, min/max, missing cells, category counts.
    pub stats: Statistics,
}

/// Bounded copy of `s` for a status detail (truncated on a char boundary).
pub fn detail<const N: usize>(s: &str) -> HString<N> {
    let mut out = HString::new();
    for c in s.chars() {
        if out.push(c).is_err() {
            break;
        }
    }
    out
}

#[cfg(test)]
mod kept_tests {
    use super::*;

    #[test]
    fn a_kept_announcement_of_either_layout_reads_back() {
        let spec = crate::spec::tests::spec();
        let task = Recipe::default();
        let manifest =
            crate::version::manifest_of(&spec.init_params(), &spec, &task, &Default::default());
        let now = Announce {
            round: 7,
            manifest,
            spec,
            task,
            codec: Pipeline::FP32,
            downlink_codec: Pipeline::FP32,
            deadline_ms: 1_000,
            selected: vec![id("car-1").unwrap()],
            chunk_size: 4096,
            objective: Objective::Prox { mu: 0.5 },
            staleness: 3,
        };
        let bytes = postcard::to_allocvec(&now).unwrap();
        assert_eq!(Announce::from_kept(&bytes).unwrap(), now);
        let before = AnnounceWithoutStaleness {
            round: now.round,
            manifest: now.manifest.clone(),
            spec: now.spec.clone(),
            task: now.task.clone(),
            codec: now.codec,
            downlink_codec: now.downlink_codec,
            deadline_ms: now.deadline_ms,
            selected: now.selected.clone(),
            chunk_size: now.chunk_size,
            objective: now.objective,
        };
        let back = Announce::from_kept(&postcard::to_allocvec(&before).unwrap()).unwrap();
        assert_eq!(
            back,
            Announce {
                staleness: 0,
                ..now.clone()
            }
        );
        let old = AnnounceWithoutObjective {
            round: now.round,
            manifest: now.manifest.clone(),
            spec: now.spec.clone(),
            task: now.task.clone(),
            codec: now.codec,
            downlink_codec: now.downlink_codec,
            deadline_ms: now.deadline_ms,
            selected: now.selected.clone(),
            chunk_size: now.chunk_size,
        };
        let bytes = postcard::to_allocvec(&old).unwrap();
        let back = Announce::from_kept(&bytes).unwrap();
        assert_eq!(back.objective, Objective::Plain);
        assert_eq!((back.round, back.chunk_size), (7, 4096));
        assert!(Announce::from_kept(&bytes[..bytes.len() / 2]).is_err());
    }
}
