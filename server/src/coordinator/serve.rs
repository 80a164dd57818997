//! Serving models to fetching vehicles: the compressed delta to a vehicle one
//! version behind, the missing chunks of the full model to anyone else; and
//! what the fleet will hold after a round (the downlink codec's rendering).

use super::{Coordinator, Output, Rejection};
use crate::store::ClientRow;
use convoy_runtime::link::Outgoing;
use convoy_shared::chunk;
use convoy_shared::messages::{FetchRequest, ModelChunk, ModelPart};
use convoy_shared::params::ParamSet;
use convoy_shared::topics::{self, ClientTopic};
use convoy_shared::version::MODEL_CHUNK_SIZE;
use convoy_shared::wire::{Kind, mqtt_publish_wire_len};
use std::collections::BTreeSet;

/// Largest fetch request decoded.
const MAX_FETCH: usize = 64 * 1024;

impl Coordinator {
    pub(super) fn on_fetch(
        &mut self,
        client: &str,
        topic: &str,
        payload: &[u8],
        out: &mut Vec<Output>,
    ) {
        let current = self.round.as_ref().map(|r| r.announce.round);
        let request = match self.signed_by_vehicle::<FetchRequest>(
            client,
            topic,
            payload,
            Kind::FetchRequest,
            MAX_FETCH,
        ) {
            Ok(r) => r,
            Err(why) => {
                self.reject(current, Some(client), &why);
                return;
            }
        };
        let version = self.current.manifest.version;
        if request.version != version {
            self.reject(current, Some(client), &Rejection::UnknownVersion);
            return;
        }
        let messages = self.model_chunks(&request);
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
            wire_bytes += mqtt_publish_wire_len(topic.len(), payload.len(), 1);
            chunks += 1;
            out.push(Output::Publish(Outgoing::new(topic.as_str(), payload)));
        }
        let raw = self.model_bytes.len() as u64;
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
        if r.served.insert(client.to_string()) {
            r.bytes_down_raw += raw;
        }
    }

    fn model_chunks(&self, request: &FetchRequest) -> Vec<ModelChunk> {
        let version = self.current.manifest.version;
        match &self.last_delta {
            // An agent one version behind gets the compressed delta.
            Some((from, delta)) if request.have == Some(*from) => {
                chunk::split(delta, MODEL_CHUNK_SIZE)
                    .map(|(pos, data)| ModelChunk {
                        version,
                        part: ModelPart::Delta { from: *from, pos },
                        data: data.to_vec(),
                    })
                    .collect()
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
                wanted
                    .into_iter()
                    .map(|index| {
                        let start = index as usize * MODEL_CHUNK_SIZE;
                        let end = (start + MODEL_CHUNK_SIZE).min(self.model_bytes.len());
                        ModelChunk {
                            version,
                            part: ModelPart::Full { index },
                            data: self.model_bytes[start..end].to_vec(),
                        }
                    })
                    .collect()
            }
        }
    }

    /// What the fleet will hold after this round: `target` itself on a
    /// keyframe, otherwise the previous model plus the downlink codec's
    /// rendering of the delta (with the server's own error feedback), so
    /// server and agents hold bit-identical models.
    pub(super) fn publishable(
        &mut self,
        round: u64,
        target: ParamSet,
    ) -> (ParamSet, Option<Vec<u8>>) {
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
}

fn add_down(row: &mut ClientRow, bytes: u64, wire_bytes: u64, chunks: u64) {
    row.bytes_down += bytes;
    row.wire_bytes_down += wire_bytes;
    row.chunks_down += chunks;
}
