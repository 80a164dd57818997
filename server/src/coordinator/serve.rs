//! Serving models to fetching vehicles: whichever is fewer bytes of the
//! chunks they lack and the chain of stored deltas from the version they
//! hold; and what the fleet will hold after a round (the downlink codec's
//! rendering).

use super::{Coordinator, Output, Rejection};
use convoy_runtime::link::Outgoing;
use convoy_shared::chunk;
use convoy_shared::messages::{FetchRequest, ModelChunk, ModelPart};
use convoy_shared::params::ParamSet;
use convoy_shared::strategy::publish::{self, Delta};
use convoy_shared::topics::{self, ClientTopic};
use convoy_shared::version::{self, MODEL_CHUNK_SIZE, VersionId};
use convoy_shared::wire::{Kind, publish_wire_len};
use convoy_store::ClientRow;
use std::collections::BTreeSet;
use std::sync::Arc;

impl Coordinator {
    pub(super) fn on_fetch(&mut self, client: &str, request: FetchRequest, out: &mut Vec<Output>) {
        if self.serve_control(client, &request.version, out) {
            return;
        }
        let current = self.round.as_ref().map(|r| r.announce.round);
        let version = self.current.manifest.version;
        if request.version != version {
            self.reject(current, Some(client), &Rejection::UnknownVersion);
            return;
        }
        let transfer = self.plan_transfer(&request);
        let messages = self.model_chunks(&transfer);
        let (bytes, wire_bytes, chunks) = self.send_chunks(client, messages, out);
        let raw = self.model_bytes.len() as u64;
        // the cost model learns what a one-step delta and a whole model
        // really take on the wire
        match &transfer {
            Transfer::Chain { steps: 1, .. } => {
                let modelled = self.modelled_delta().min(raw);
                self.delta_ratio.observe(modelled, bytes);
            }
            Transfer::Chunks(c) if c.len() == self.current.manifest.chunks.len() => {
                self.full_ratio.observe(raw, bytes);
            }
            _ => {}
        }
        let Some(r) = self.round.as_mut() else {
            return;
        };
        // Only selected vehicles get a ledger row; anyone else's download
        // still counts in the round's totals.
        let row = match r.rows.get_mut(client) {
            Some(row) => row,
            None => &mut r.unselected_down,
        };
        add_down(row, bytes, wire_bytes, chunks);
        row.transfer = Some(transfer.label());
        if r.served.insert(client.to_string()) {
            r.bytes_down_raw += raw;
        }
    }

    /// Seals and publishes `messages` on `client`'s model topic; returns
    /// the payload bytes, the bytes on the wire and the messages sent.
    pub(super) fn send_chunks(
        &self,
        client: &str,
        messages: Vec<ModelChunk>,
        out: &mut Vec<Output>,
    ) -> (u64, u64, u64) {
        let topic = topics::client(&self.config.fleet, ClientTopic::Model, client);
        let (mut bytes, mut wire_bytes, mut chunks) = (0u64, 0u64, 0u64);
        for message in messages {
            let payload = match self.seal(Kind::ModelChunk, &topic, &message) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(client, error = %e, "model chunk not sent");
                    continue;
                }
            };
            bytes += payload.len() as u64;
            wire_bytes +=
                publish_wire_len(topic.len(), payload.len(), 1, self.config.vehicles_on_tls());
            chunks += 1;
            out.push(Output::Publish(Outgoing::new(topic.as_str(), payload)));
        }
        (bytes, wire_bytes, chunks)
    }

    /// The cheapest way to bring `request`'s sender to the current model:
    /// the chunks it lacks, or the chain of stored deltas from the version
    /// it holds, whichever is fewer bytes.
    fn plan_transfer(&mut self, request: &FetchRequest) -> Transfer {
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
        let chunk_bytes: usize = wanted.iter().map(|i| self.chunk_range(*i).len()).sum();
        let target = self.current.manifest.version;
        if let Some(have) = request.have.filter(|h| *h != target) {
            if self.transfers.len() >= MAX_CACHED_CHAINS && !self.transfers.contains_key(&have) {
                self.transfers.clear();
            }
            let store = &self.store;
            let chain = self.transfers.entry(have).or_insert_with(|| {
                let links = store
                    .delta_chain(
                        &version::hex(&have),
                        &version::hex(&target),
                        MAX_CHAIN_STEPS,
                    )
                    .unwrap_or_else(|e| {
                        tracing::warn!(error = %e, "stored deltas unreadable; serving chunks");
                        None
                    })?;
                let steps = links.len();
                postcard::to_allocvec(&links)
                    .ok()
                    .map(|bytes| (Arc::new(bytes), steps))
            });
            if let Some((bytes, steps)) = chain
                && bytes.len() < chunk_bytes
            {
                return Transfer::Chain {
                    from: have,
                    bytes: bytes.clone(),
                    steps: *steps,
                };
            }
        }
        Transfer::Chunks(wanted)
    }

    fn chunk_range(&self, index: u32) -> std::ops::Range<usize> {
        let start = (index as usize * MODEL_CHUNK_SIZE).min(self.model_bytes.len());
        start..(start + MODEL_CHUNK_SIZE).min(self.model_bytes.len())
    }

    fn model_chunks(&self, transfer: &Transfer) -> Vec<ModelChunk> {
        let version = self.current.manifest.version;
        match transfer {
            Transfer::Chain { from, bytes, .. } => chunk::split(bytes, MODEL_CHUNK_SIZE)
                .map(|(pos, data)| ModelChunk {
                    version,
                    part: ModelPart::Delta { from: *from, pos },
                    data: data.to_vec(),
                })
                .collect(),
            Transfer::Chunks(wanted) => wanted
                .iter()
                .map(|index| ModelChunk {
                    version,
                    part: ModelPart::Full { index: *index },
                    data: self.model_bytes[self.chunk_range(*index)].to_vec(),
                })
                .collect(),
        }
    }

    /// Publishes `target` on the current model through the downlink codec
    /// (exactly on a keyframe round or with a lossless downlink), carrying
    /// the codec's error to the next round. The residual belongs to the
    /// version it was made on: after a restart or a rollback it starts at
    /// zero, and the version records that (`clean`), so a replay can too.
    pub(super) fn publishable(&mut self, round: u64, target: &ParamSet) -> Option<Publishing> {
        let every = self.config.rounds.keyframe_every;
        let exact = self.downlink.is_lossless() || (every > 0 && round.is_multiple_of(every));
        if self.residual_base != Some(self.current.manifest.version) {
            self.residual = ParamSet::zeros(&self.spec.layout());
        }
        let clean = self.residual.values().all(|v| v == 0.0);
        match publish::publish(
            &self.current.params,
            target,
            &mut self.residual,
            &self.downlink,
            exact,
            round,
        ) {
            Ok(p) => Some(Publishing {
                published: p.params,
                delta: p.delta,
                exact,
                clean,
            }),
            Err(e) => {
                tracing::error!(round, error = %e, "cannot publish the round's model");
                None
            }
        }
    }
}

/// An encoded delta chain to the current model and its step count.
pub(super) type Chain = (Arc<Vec<u8>>, usize);

/// Most delta steps a chain transfer may take.
const MAX_CHAIN_STEPS: usize = 1000;
/// Chains (per version held) cached for the current model.
const MAX_CACHED_CHAINS: usize = 64;

/// How one fetch is answered.
#[derive(Debug)]
enum Transfer {
    /// These chunks of the full model.
    Chunks(BTreeSet<u32>),
    /// The chain of stored deltas from `from`.
    Chain {
        from: VersionId,
        bytes: Arc<Vec<u8>>,
        steps: usize,
    },
}

impl Transfer {
    fn label(&self) -> String {
        match self {
            Self::Chunks(c) => format!("chunks:{}", c.len()),
            Self::Chain { steps, .. } => format!("delta:{steps}"),
        }
    }
}

/// A round's new model before it is stored.
#[derive(Debug)]
pub(super) struct Publishing {
    pub(super) published: ParamSet,
    pub(super) delta: Delta,
    pub(super) exact: bool,
    pub(super) clean: bool,
}

pub(super) fn add_down(row: &mut ClientRow, bytes: u64, wire_bytes: u64, chunks: u64) {
    row.bytes_down += bytes;
    row.wire_bytes_down += wire_bytes;
    row.chunks_down += chunks;
}
