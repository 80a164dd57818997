//! Downloading a round's base model: only the content-addressed chunks the
//! vehicle lacks, or the chain of published deltas from the version it
//! holds (whichever the server finds fewer bytes); either way the result
//! must hash to the announced version before it is used. A SCAFFOLD
//! round's server control is fetched beside it, by its id, and verified
//! the same way.

use super::{Action, Agent, Round};
use crate::error::AgentError;
use crate::state::StoredModel;
use convoy_shared::chunk::{self, Reassembler};
use convoy_shared::codec::Pipeline;
use convoy_shared::messages::{Announce, Delta, FetchRequest, ModelChunk, ModelPart, Objective};
use convoy_shared::params::ParamSet;
use convoy_shared::strategy::{publish, scaffold};
use convoy_shared::version::{self, MODEL_CHUNK_SIZE, VersionId};
use convoy_shared::wire::Kind;
use std::sync::Arc;
use tokio::time::Instant;

/// A model download in progress.
#[derive(Debug)]
pub struct Fetch {
    /// The round it is for.
    pub announce: Announce,
    /// The round's update codec.
    pub codec: Pipeline,
    /// Full-model chunks by manifest index.
    chunks: Vec<Option<Vec<u8>>>,
    /// The model held, offered to the server as a delta base.
    held: Option<(VersionId, ParamSet)>,
    /// A compressed delta from `held`, being reassembled.
    delta: Option<Reassembler>,
    /// The model, once it is in and verified (a SCAFFOLD round may still
    /// wait for its control).
    params: Option<ParamSet>,
    /// The round's SCAFFOLD control.
    control: Control,
    /// When a chunk last arrived or was asked for.
    pub last_progress: Instant,
}

/// A SCAFFOLD round's server control, as far as it has come.
#[derive(Debug)]
enum Control {
    /// The round has none.
    NotNeeded,
    /// Still to come: its id, and the pieces so far.
    Missing([u8; 32], Option<Reassembler>),
    /// In and verified.
    Have(Arc<ParamSet>),
}

impl Fetch {
    /// Starts a download, reusing the chunks of `held` whose hashes the
    /// manifest lists.
    pub fn new(
        announce: Announce,
        codec: Pipeline,
        held: Option<StoredModel>,
        now: Instant,
    ) -> Self {
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
        let held = held
            .filter(|h| h.spec == announce.spec)
            .map(|h| (h.manifest.version, h.params));
        let control = match announce.objective {
            Objective::Scaffold { control } => Control::Missing(control, None),
            _ => Control::NotNeeded,
        };
        Self {
            announce,
            codec,
            chunks,
            held,
            delta: None,
            params: None,
            control,
            last_progress: now,
        }
    }

    /// Indices of the chunks still missing.
    pub fn missing(&self) -> Vec<u32> {
        if self.params.is_some() {
            return Vec::new();
        }
        (0..self.chunks.len() as u32)
            .filter(|i| self.chunks[*i as usize].is_none())
            .collect()
    }

    /// The id of the SCAFFOLD control still to come, if any.
    fn control_missing(&self) -> Option<[u8; 32]> {
        match self.control {
            Control::Missing(id, _) => Some(id),
            _ => None,
        }
    }
}

impl Agent {
    /// Asks the server for what the fetch still lacks.
    pub(super) fn request_missing(&mut self, out: &mut Vec<Action>) {
        let now = self.clock.instant();
        let Round::Fetching(fetch) = &mut self.round else {
            return;
        };
        let missing = fetch.missing();
        let mut requests = Vec::new();
        if !missing.is_empty() {
            // A partial delta is restarted whole: deltas are small.
            fetch.delta = None;
            requests.push(FetchRequest {
                version: fetch.announce.base_version(),
                chunks: missing,
                have: fetch.held.as_ref().map(|(v, _)| *v),
            });
        }
        if let Control::Missing(id, pieces) = &mut fetch.control {
            // the control is asked for by its id, like a version, whole
            *pieces = None;
            requests.push(FetchRequest {
                version: *id,
                chunks: Vec::new(),
                have: None,
            });
        }
        if requests.is_empty() {
            return;
        }
        fetch.last_progress = now;
        for request in requests {
            if let Some(message) =
                self.seal(Kind::FetchRequest, self.topics.fetch.as_str(), &request)
            {
                out.push(Action::Publish(message));
            }
        }
    }

    pub(super) fn on_model_chunk(
        &mut self,
        chunk: ModelChunk,
        out: &mut Vec<Action>,
    ) -> Result<(), AgentError> {
        let now = self.clock.instant();
        let Round::Fetching(fetch) = &mut self.round else {
            return Ok(());
        };
        if let ModelPart::Control { pos } = chunk.part {
            if fetch.control_missing() == Some(chunk.version) {
                self.on_control_piece(pos, &chunk.data, out);
            }
            return Ok(());
        }
        if chunk.version != fetch.announce.manifest.version || fetch.params.is_some() {
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
                fetch.last_progress = now;
                self.try_finish_fetch(out)
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
                        self.request_missing(out);
                        return Ok(());
                    }
                };
                fetch.last_progress = now;
                if complete {
                    self.apply_delta(out)?;
                }
                Ok(())
            }
            ModelPart::Control { .. } => Ok(()),
        }
    }

    /// One piece of the round's SCAFFOLD control: reassembled, and once
    /// whole, verified against its id (a bad one is asked for again).
    fn on_control_piece(
        &mut self,
        pos: convoy_shared::chunk::ChunkPos,
        data: &[u8],
        out: &mut Vec<Action>,
    ) {
        let now = self.clock.instant();
        let Round::Fetching(fetch) = &mut self.round else {
            return;
        };
        let spec = &fetch.announce.spec;
        let Control::Missing(id, pieces) = &mut fetch.control else {
            return;
        };
        let limit = 8 * spec.layout().numel() + 4096;
        if pieces.is_none() {
            *pieces = Reassembler::new(pos, data.len(), limit).ok();
        }
        let payload = match pieces.as_mut().map(|r| r.insert(pos, data)) {
            Some(Ok(chunk::Progress::Complete)) => pieces.take().and_then(Reassembler::finish),
            Some(Ok(_)) => {
                fetch.last_progress = now;
                return;
            }
            _ => None,
        };
        match payload.and_then(|p| scaffold::receive(&p, id, spec)) {
            Some(values) => {
                fetch.control = Control::Have(Arc::new(values));
                fetch.last_progress = now;
                if let Err(e) = self.try_finish_fetch(out) {
                    tracing::error!(error = %e, "model not installed");
                }
            }
            None => {
                tracing::warn!("the round's control does not verify; asking again");
                self.request_missing(out);
            }
        }
    }

    /// Applies a complete delta chain to the held model; falls back to a
    /// full download if the result is not exactly the announced version.
    fn apply_delta(&mut self, out: &mut Vec<Action>) -> Result<(), AgentError> {
        let Round::Fetching(fetch) = &mut self.round else {
            return Ok(());
        };
        let bytes = fetch.delta.take().and_then(Reassembler::finish);
        let (Some(bytes), Some((_, held))) = (bytes, fetch.held.take()) else {
            self.request_missing(out);
            return Ok(());
        };
        let announce = &fetch.announce;
        let params = apply_chain(held, &bytes);
        match params {
            Some(params)
                if announce
                    .manifest
                    .verifies(&params, &announce.spec, &announce.task) =>
            {
                tracing::debug!(
                    round = announce.round,
                    bytes = bytes.len(),
                    "model delta applied and verified"
                );
                fetch.params = Some(params);
                self.try_finish_fetch(out)
            }
            _ => {
                tracing::warn!(
                    "model delta does not give the announced version; fetching the full model"
                );
                self.request_missing(out);
                Ok(())
            }
        }
    }

    /// Installs the model once every chunk is in and it verifies, and the
    /// round's SCAFFOLD control (if any) is in too.
    pub(super) fn try_finish_fetch(&mut self, out: &mut Vec<Action>) -> Result<(), AgentError> {
        let Round::Fetching(fetch) = &mut self.round else {
            return Ok(());
        };
        if fetch.params.is_none() {
            if fetch.chunks.iter().any(Option::is_none) {
                return Ok(());
            }
            let bytes: Vec<u8> = fetch.chunks.iter().flatten().flatten().copied().collect();
            let announce = &fetch.announce;
            let params = ParamSet::from_canonical_bytes(&announce.spec.layout(), &bytes)
                .ok()
                .filter(|p| {
                    announce
                        .manifest
                        .verifies(p, &announce.spec, &announce.task)
                });
            let Some(params) = params else {
                tracing::warn!("fetched model does not hash to the announced version; refetching");
                fetch.chunks.iter_mut().for_each(|c| *c = None);
                fetch.held = None;
                self.request_missing(out);
                return Ok(());
            };
            tracing::debug!(
                round = announce.round,
                bytes = bytes.len(),
                "model fetched and verified"
            );
            fetch.params = Some(params);
        }
        if fetch.control_missing().is_some() {
            return Ok(());
        }
        let Round::Fetching(fetch) = std::mem::take(&mut self.round) else {
            return Ok(());
        };
        let Fetch {
            announce,
            codec,
            params,
            control,
            ..
        } = *fetch;
        let control = match control {
            Control::Have(c) => Some(c),
            _ => None,
        };
        match params {
            Some(params) => self.install_model(announce, codec, params, control, out),
            None => Ok(()),
        }
    }
}

/// Applies each published delta of the chain `bytes` in turn to `params`:
/// the server published exactly `parent + decoded` at every step, in f32,
/// so the result is bit-identical to the announced version or the chain is
/// bad (`None`, or a manifest mismatch the caller catches).
fn apply_chain(mut params: ParamSet, bytes: &[u8]) -> Option<ParamSet> {
    let links: Vec<Delta> = postcard::from_bytes(bytes).ok()?;
    if links.is_empty() {
        return None;
    }
    for link in links {
        params = publish::apply(&params, &link).ok()?;
    }
    Some(params)
}
