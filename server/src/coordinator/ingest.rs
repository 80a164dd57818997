//! Update chunks arriving: reassembly, validation, the fold into the round's
//! running sum, receipts, and a typed reason for everything refused.

use super::aggregate::Held;
use super::{Coordinator, Output};
use crate::config::{RoundConfig, RoundMode};
use crate::error::ServerError;
use crate::rejection::Rejection;
use convoy_runtime::link::Outgoing;
use convoy_shared::chunk::{Progress, Reassembler};
use convoy_shared::cost;
use convoy_shared::messages::{FailureReport, UpdateAck, UpdateBody, UpdateChunk};
use convoy_shared::strategy::fold::fold_update;
use convoy_shared::topics::{self, ClientTopic};
use convoy_shared::wire::Kind;
use convoy_store::{ClientRow, ClientStatus};

/// An update chunk that came while no asynchronous round was open.
#[derive(Debug)]
pub(super) struct Parked {
    pub(super) client: String,
    pub(super) chunk: UpdateChunk,
    pub(super) payload_len: u64,
    pub(super) wire_len: u64,
}

/// (vehicle, codec) byte calibrations kept before the table starts afresh.
const MAX_BYTE_RATIOS: usize = 100_000;

impl Coordinator {
    fn ack(&self, client: &str, round: u64, accepted: bool, reason: &str, out: &mut Vec<Output>) {
        let ack = UpdateAck {
            round,
            accepted,
            reason: reason.to_string(),
        };
        let topic = topics::client(&self.config.fleet, ClientTopic::Ack, client);
        match self.seal(Kind::UpdateAck, &topic, &ack) {
            Ok(payload) => out.push(Output::Publish(Outgoing::new(topic.as_str(), payload))),
            Err(e) => tracing::error!(client, error = %e, "receipt not sent"),
        }
    }

    /// Wire bytes count whatever arrives from a participant, valid or not.
    pub(super) fn count_wire_up(&mut self, client: &str, wire_len: u64) {
        if let Some(row) = self.round.as_mut().and_then(|r| r.rows.get_mut(client)) {
            row.wire_bytes_up += wire_len;
            row.chunks_up += 1;
        }
    }

    pub(super) fn on_update(
        &mut self,
        client: &str,
        chunk: UpdateChunk,
        payload_len: u64,
        wire_len: u64,
        out: &mut Vec<Output>,
    ) -> Result<(), ServerError> {
        let current = self.round.as_ref().map(|r| r.announce.round);
        if current.is_none() && self.config.rounds.mode == RoundMode::Async && !self.done() {
            // Between a full buffer and the next round: the chunk waits in
            // memory for the next round (within the aggregation memory);
            // beyond that it is dropped unacknowledged and the vehicle
            // sends it again after its receipt timeout.
            let size = chunk.data.len();
            if self.parked_bytes + size <= self.config.aggregation.memory_bytes() {
                self.parked_bytes += size;
                self.parked.push(Parked {
                    client: client.to_string(),
                    chunk,
                    payload_len,
                    wire_len,
                });
            }
            return Ok(());
        }
        // asynchronous rounds take updates trained for earlier rounds
        let staleness = match current {
            Some(c) if self.config.rounds.mode == RoundMode::Async && chunk.round <= c => {
                c - chunk.round
            }
            Some(c) if c == chunk.round => 0,
            _ => return self.on_other_round(client, &chunk, current, wire_len, out),
        };
        let on_base = match staleness {
            0 => self
                .round
                .as_ref()
                .is_some_and(|r| r.announce.base_version() == chunk.base_version),
            _ => match self.stale_base(client, &chunk, staleness, out)? {
                Some(on_base) => on_base,
                None => return Ok(()),
            },
        };
        let Some(r) = self.round.as_mut() else {
            return Ok(());
        };
        if !on_base {
            self.reject(current, Some(client), &Rejection::WrongBase);
            // It can never count: say so, so the vehicle drops it.
            if chunk.pos.index == 0 {
                let reason = format!("wrong_base: {}", Rejection::WrongBase);
                self.ack(client, chunk.round, false, &reason, out);
            }
            return Ok(());
        }
        let open_to_all = self.config.rounds.mode == RoundMode::Async;
        if !open_to_all && !r.selected.contains(client) {
            self.reject(current, Some(client), &Rejection::NotSelected);
            return Ok(());
        }
        if open_to_all && !r.rows.contains_key(client) {
            // its first chunk's wire bytes came before its row: counted now
            let mut row = super::totals::ledger_row(r.announce.round, client, &r.codec.name());
            (row.wire_bytes_up, row.chunks_up) = (wire_len, 1);
            r.rows.insert(client.to_string(), row);
        }
        let Some(row) = r.rows.get_mut(client) else {
            return Ok(());
        };
        if row.status == ClientStatus::Accepted {
            if row.staleness.unwrap_or(0) != staleness {
                // Its other update (trained for another round) is in this
                // one already: this one waits for the next, unacknowledged,
                // and the vehicle sends it again after its receipt timeout.
                tracing::debug!(
                    client,
                    round = chunk.round,
                    "a second update this round; it counts in the next"
                );
                return Ok(());
            }
            // A re-send of an update already counted: recognised, not counted.
            row.retries += 1;
            if chunk.pos.index == 0 {
                self.ack(client, chunk.round, true, "", out);
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
                self.reject(current, Some(client), &Rejection::decode(e.reason(), e));
                return Ok(());
            }
        };
        match reassembler.insert(chunk.pos, &chunk.data) {
            Err(e) => {
                // keep what was good so far; the bad chunk is dropped
                r.inbox.insert(client.to_string(), (reassembler, bytes));
                self.reject(current, Some(client), &Rejection::decode(e.reason(), e));
            }
            Ok(Progress::Duplicate) => {
                row.retries += 1;
                r.inbox.insert(client.to_string(), (reassembler, bytes));
            }
            Ok(Progress::Partial) => {
                bytes += payload_len;
                r.inbox.insert(client.to_string(), (reassembler, bytes));
            }
            Ok(Progress::Complete) => {
                bytes += payload_len;
                match reassembler.finish() {
                    Some(body) => {
                        self.accept_update(client, (chunk.round, staleness), &body, bytes, out);
                        // FedBuff: a full buffer publishes at once, so the
                        // next update already counts toward the next model
                        let full = self.round.as_ref().is_some_and(|r| self.buffer_full(r));
                        if full {
                            self.close_round(out)?;
                        }
                    }
                    None => {
                        let why = Rejection::decode("malformed", "update did not reassemble");
                        self.reject(current, Some(client), &why);
                    }
                }
            }
        }
        Ok(())
    }

    fn on_other_round(
        &mut self,
        client: &str,
        chunk: &UpdateChunk,
        current: Option<u64>,
        wire_len: u64,
        out: &mut Vec<Output>,
    ) -> Result<(), ServerError> {
        if chunk.round >= self.next_round {
            let why = Rejection::WrongRound(chunk.round);
            self.reject(current, Some(client), &why);
            // A negative receipt: the vehicle drops an update that can never
            // count (a forged announcement's round) and takes the next real one.
            if chunk.pos.index == 0 {
                let reason = format!("{}: {why}", why.reason());
                self.ack(client, chunk.round, false, &reason, out);
            }
            return Ok(());
        }
        match self.store.client_status(chunk.round, client)? {
            // The receipt was lost: confirm again, count nothing.
            Some(ClientStatus::Accepted) => {
                if chunk.pos.index == 0 {
                    self.ack(client, chunk.round, true, "", out);
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
                    self.ack(
                        client,
                        chunk.round,
                        false,
                        "late: the round has closed",
                        out,
                    );
                }
            }
        }
        Ok(())
    }

    /// Whether an asynchronous update, trained for the round `staleness`
    /// rounds back, is on that round's base version; `None` when it cannot
    /// count (too stale, or counted already: the vehicle is told).
    fn stale_base(
        &mut self,
        client: &str,
        chunk: &UpdateChunk,
        staleness: u64,
        out: &mut Vec<Output>,
    ) -> Result<Option<bool>, ServerError> {
        let current = self.round.as_ref().map(|r| r.announce.round);
        if self.store.update_accepted(chunk.round, client)? {
            // counted in an earlier round; its receipt was lost
            if chunk.pos.index == 0 {
                self.ack(client, chunk.round, true, "", out);
            }
            return Ok(None);
        }
        let bound = self.config.rounds.max_staleness;
        if staleness > bound {
            let why = Rejection::Stale { staleness, bound };
            self.reject(current, Some(client), &why);
            if chunk.pos.index == 0 {
                let reason = format!("{}: {why}", why.reason());
                self.ack(client, chunk.round, false, &reason, out);
            }
            return Ok(None);
        }
        let base = self.store.round_base(chunk.round)?;
        Ok(Some(
            base == Some(convoy_shared::version::hex(&chunk.base_version)),
        ))
    }

    fn accept_update(
        &mut self,
        client: &str,
        (round, staleness): (u64, u64),
        body: &[u8],
        bytes: u64,
        out: &mut Vec<Output>,
    ) {
        let declared = self.registry.get(client).map_or(0, |c| c.samples);
        let verdict = self.validate_update(body).and_then(|(update, secs)| {
            let bound = declared.min(self.config.rounds.max_samples);
            if update.samples > bound {
                return Err(Rejection::TooManySamples {
                    claimed: update.samples,
                    bound,
                });
            }
            let digest = *blake3::hash(&update.encoded).as_bytes();
            let copied = self.round.as_ref().and_then(|r| r.digests.get(&digest));
            if let Some(of) = copied {
                return Err(Rejection::Copied(of.clone()));
            }
            Ok((update, secs, digest))
        });
        let norm = self.scratch.l2_norm();
        let admission = match (&verdict, &self.round) {
            (Ok((update, ..)), Some(r)) => {
                // FedBuff: a stale update moves the model less
                let mut admission = self.admit(r, client, update, norm);
                admission.scale *= RoundConfig::staleness_weight(staleness);
                Some(admission)
            }
            _ => None,
        };
        let Some(r) = self.round.as_mut() else {
            return;
        };
        let Some(row) = r.rows.get_mut(client) else {
            return;
        };
        match (verdict, admission) {
            (Ok((update, decode_seconds, digest)), Some(admission)) => {
                let mut accepted = row.clone();
                fill_accepted(&mut accepted, &update, bytes, decode_seconds);
                accepted.weight = Some(admission.weight);
                accepted.staleness =
                    (self.config.rounds.mode == RoundMode::Async).then_some(staleness);
                super::aggregate::note(&mut accepted, admission.notes);
                accepted.head = self.spec.heads.get(update.head as usize).map(|h| h.name());
                accepted.flops_predicted = cost::training_flops(
                    &self.spec,
                    update.head as usize,
                    update.samples,
                    update.stats.epochs,
                );
                // predicted from what was known before this update came:
                // the vehicle's speed when the round opened, the byte ratio
                // its last update under this codec showed
                let modelled = cost::predict(
                    &self.spec,
                    update.head as usize,
                    &update.codec,
                    update.samples,
                    update.stats.epochs,
                )
                .bytes_up;
                let steps = cost::training_steps(
                    update.samples,
                    update.stats.epochs,
                    r.announce.task.batch_size,
                );
                accepted.train_seconds_predicted = r
                    .throughput
                    .get(client)
                    .and_then(|t| t.seconds(steps, accepted.flops_predicted));
                if self.byte_ratios.len() >= MAX_BYTE_RATIOS {
                    self.byte_ratios.clear();
                }
                let ratio = self
                    .byte_ratios
                    .entry((client.to_string(), update.codec.name()))
                    .or_default();
                accepted.bytes_up_predicted = ratio.predict(modelled);
                ratio.observe(modelled, bytes);
                accepted.update_norm = Some(norm);
                accepted.bytes_up_raw = self.scratch.numel() as u64 * 4;
                // Durable before acknowledged: a server killed after the
                // receipt resumes the round with this update in it.
                if let Err(e) = self.store.accept_update(&accepted, body, admission.scale) {
                    tracing::error!(client, round, error = %e, "update not stored; no receipt, the vehicle will re-send");
                    return;
                }
                *row = accepted;
                r.digests.insert(digest, client.to_string());
                let held = r.held_bytes + body.len() <= self.config.aggregation.memory_bytes();
                let keep = !r.streaming && held;
                if keep {
                    r.held_bytes += body.len();
                }
                r.members.push(Held {
                    client: client.to_string(),
                    head: update.head as usize,
                    claimed: update.samples,
                    norm,
                    recipe_scale: admission.recipe_scale,
                    body: keep.then(|| body.to_vec()),
                    weight: admission.weight,
                    scale: admission.scale,
                    kept: true,
                    staleness,
                });
                if r.streaming {
                    fold_update(
                        &mut r.sum,
                        &mut self.scratch,
                        update.head as usize,
                        admission.weight,
                        admission.scale,
                    );
                }
                r.loss_weighted += update.stats.loss as f64 * update.samples as f64;
                tracing::debug!(
                    client,
                    round,
                    samples = update.samples,
                    bytes,
                    "update accepted"
                );
                self.ack(client, round, true, "", out);
            }
            (Err(why), _) => {
                row.status = ClientStatus::Rejected;
                row.reason = Some(why.reason().to_string());
                if let Rejection::Copied(of) = &why {
                    row.suspect = Some(format!("sent a copy of {of}'s update"));
                }
                self.reject(Some(round), Some(client), &why);
                self.ack(client, round, false, &why.to_string(), out);
            }
            (Ok(_), None) => {}
        }
    }

    /// Decodes a whole update into the scratch buffer and checks it.
    fn validate_update(&mut self, body: &[u8]) -> Result<(UpdateBody, f64), Rejection> {
        let update: UpdateBody =
            postcard::from_bytes(body).map_err(|e| Rejection::decode("malformed", e))?;
        let Some(codec) = self.round.as_ref().map(|r| r.codec) else {
            return Err(Rejection::WrongRound(0));
        };
        if update.codec != codec {
            return Err(Rejection::WrongCodec {
                got: update.codec.name(),
                want: codec.name(),
            });
        }
        let started = std::time::Instant::now();
        codec
            .decode_into(&update.encoded, &mut self.scratch)
            .map_err(|e| Rejection::decode(e.reason(), e))?;
        let decode_seconds = started.elapsed().as_secs_f64();
        self.scratch
            .check_finite()
            .map_err(|e| Rejection::decode(e.reason(), e))?;
        if update.samples == 0 {
            return Err(Rejection::BadSamples(update.samples));
        }
        if update.head as usize >= self.spec.heads.len() {
            return Err(Rejection::UnknownHead(update.head));
        }
        let stats = &update.stats;
        let times = [
            stats.train_seconds,
            stats.encode_seconds,
            stats.residual_norm,
        ];
        if !(stats.loss.is_finite() && times.iter().all(|t| t.is_finite() && *t >= 0.0)) {
            return Err(Rejection::NonFiniteStats);
        }
        for h in stats.holdout.iter().chain(&stats.personal) {
            let fine = |v: Option<f64>, max: f64| {
                v.is_none_or(|v| v.is_finite() && (0.0..=max).contains(&v))
            };
            let in_bounds = h.samples <= self.config.rounds.max_samples
                && h.loss.is_finite()
                && fine(h.accuracy, 1.0)
                && fine(h.rmse, f64::MAX)
                && fine(h.mae, f64::MAX);
            if !in_bounds {
                return Err(Rejection::NonFiniteStats);
            }
        }
        Ok((update, decode_seconds))
    }
}

impl Coordinator {
    /// A vehicle says it cannot serve a round: recorded, and the round
    /// stops waiting for it.
    pub(super) fn on_failure(&mut self, client: &str, report: FailureReport) {
        let current = self.round.as_ref().map(|r| r.announce.round);
        if current != Some(report.round) {
            tracing::info!(client, round = report.round, reason = %report.reason, "failure report for a round not open; ignored");
            return;
        }
        let Some(row) = self.round.as_mut().and_then(|r| r.rows.get_mut(client)) else {
            return; // not selected: nothing waits for it
        };
        if row.status == ClientStatus::Accepted {
            return; // its update already counted
        }
        row.status = ClientStatus::Failed;
        row.reason = Some(format!("{}: {}", report.reason, report.detail));
        tracing::warn!(client, round = report.round, reason = %report.reason, detail = %report.detail, "vehicle cannot serve the round");
    }
}

/// Copies what an accepted update reports into its ledger row.
fn fill_accepted(row: &mut ClientRow, update: &UpdateBody, bytes: u64, decode_seconds: f64) {
    row.status = ClientStatus::Accepted;
    row.samples = update.samples;
    row.bytes_up = bytes;
    row.train_seconds = update.stats.train_seconds;
    row.steps = update.stats.steps;
    row.epochs = update.stats.epochs as u64;
    row.loss = Some(update.stats.loss as f64);
    // What the vehicle measured; the cost model's figure sits beside it.
    row.flops = update.stats.flops;
    row.device = update.stats.device.clone();
    row.codec = update.codec.name();
    row.residual_norm = Some(update.stats.residual_norm);
    if let Some(h) = &update.stats.holdout {
        row.holdout_samples = h.samples;
        row.holdout_accuracy = h.accuracy;
        row.holdout_rmse = h.rmse;
    }
    if let Some(p) = &update.stats.personal {
        row.personal_accuracy = p.accuracy;
        row.personal_rmse = p.rmse;
    }
    row.encode_seconds = update.stats.encode_seconds;
    row.decode_seconds = decode_seconds;
}
