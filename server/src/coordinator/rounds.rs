//! Opening rounds (who is selected, which codec) and closing them (the
//! strategy's step, the new version, the ledger). Closing is two steps when
//! the server evaluates: the model is built, the loop evaluates it off the
//! async runtime, then the version and the ledger are written together.

use super::aggregate::Held;
use super::totals::{ledger_rows, round_totals};
use super::{Coordinator, EvalRequest, Output};
use crate::config::RoundMode;
use crate::error::ServerError;
use convoy_runtime::link::Outgoing;
use convoy_shared::chunk::Reassembler;
use convoy_shared::codec::{Pipeline, Sparsify};
use convoy_shared::cost::{self, Throughput};
use convoy_shared::eval::Evaluation;
use convoy_shared::messages::{self, Announce};
use convoy_shared::params::ParamSet;
use convoy_shared::strategy::publish::Delta;
use convoy_shared::strategy::server::OptState;
use convoy_shared::strategy::sum::PartialSum;
use convoy_store::{ClientRow, ClientStatus, Publication, RoundRow, RoundStatus, StoredVersion};

use convoy_shared::topics;
use convoy_shared::version::{self, Provenance};
use convoy_shared::wire::{Kind, WireError};
use rand::seq::IndexedRandom;
use rand::{SeedableRng, rngs::StdRng};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;
use tokio::time::Instant;

/// Bookkeeping of the round in progress.
#[derive(Debug)]
pub(super) struct OpenRound {
    pub(super) announce: Announce,
    /// The round's update codec (differs from the configured one during warm-up).
    pub(super) codec: Pipeline,
    pub(super) selected: BTreeSet<String>,
    pub(super) deadline: Instant,
    pub(super) sum: PartialSum,
    pub(super) inbox: HashMap<String, (Reassembler, u64)>,
    /// One ledger row per selected vehicle.
    pub(super) rows: BTreeMap<String, ClientRow>,
    /// Downloads by vehicles that were not selected (totals only).
    pub(super) unselected_down: ClientRow,
    pub(super) loss_weighted: f64,
    pub(super) started_ms: u64,
    pub(super) served: BTreeSet<String>,
    pub(super) bytes_down_raw: u64,
    /// True when updates are folded into `sum` as they arrive (FedAvg with
    /// known references); otherwise the rule runs over `members` at close.
    pub(super) streaming: bool,
    /// Every accepted update, in the order it was acknowledged.
    pub(super) members: Vec<Held>,
    /// Bytes of update bodies held in `members`.
    pub(super) held_bytes: usize,
    /// Hash of each accepted update's encoded weights, and whose it is.
    pub(super) digests: HashMap<[u8; 32], String>,
    /// Each selected vehicle's training speed as the round opened: what
    /// its training time is predicted from.
    pub(super) throughput: HashMap<String, Throughput>,
}

/// A round whose new model waits for its evaluation.
#[derive(Debug)]
pub(super) struct Closing {
    row: RoundRow,
    clients: Vec<ClientRow>,
    next: StoredVersion,
    delta: Delta,
    exact: bool,
    clean: bool,
    replay_secs: f64,
    /// The server optimiser's state after this round's step (stateful
    /// optimisers only), stored with the version.
    opt_state: Option<OptState>,
}

impl Coordinator {
    /// Opens or closes rounds as their conditions are met.
    pub(super) fn tick(&mut self, out: &mut Vec<Output>) -> Result<(), ServerError> {
        self.restore_round_topic(out)?;
        if self.closing.is_some() {
            return Ok(()); // waiting for the evaluation
        }
        match &self.round {
            Some(r) => {
                // An accepted update, a failure report or a refused update
                // (its vehicle was told and dropped it) from everyone
                // closes a round before its deadline.
                let done = |c: &String| {
                    r.rows.get(c).is_some_and(|row| {
                        matches!(
                            row.status,
                            ClientStatus::Accepted | ClientStatus::Failed | ClientStatus::Rejected
                        )
                    })
                };
                let all_in = match self.config.rounds.mode {
                    RoundMode::Sync => r.selected.iter().all(done),
                    // Asynchronous rounds (FedBuff) close on a full buffer,
                    // or once every vehicle online now is in: no one else
                    // could fill it soon.
                    RoundMode::Async => {
                        let offline_after =
                            Duration::from_secs(self.config.rounds.offline_after_secs);
                        let online = self.registry.eligible(
                            &r.codec.stages(),
                            self.clock.instant(),
                            offline_after,
                        );
                        // (a server that has just started knows no one
                        // online yet: it waits for them)
                        self.buffer_full(r)
                            || (!r.members.is_empty()
                                && !online.is_empty()
                                && online.iter().all(done))
                    }
                };
                if all_in || self.clock.instant() >= r.deadline {
                    self.close_round(out)?;
                }
            }
            None if !self.done() => self.maybe_open_round(out)?,
            None => {}
        }
        Ok(())
    }

    /// True when asynchronous round `r` holds `rounds.async_buffer`
    /// accepted updates: FedBuff publishes.
    pub(super) fn buffer_full(&self, r: &OpenRound) -> bool {
        self.config.rounds.mode == RoundMode::Async
            && r.members.len() >= self.config.rounds.async_buffer
    }

    /// The codec of round number `run` (0-based): sparsity warm-up (Deep
    /// Gradient Compression) starts at 25 % kept and shrinks 4x a round
    /// until it reaches the configured share.
    fn round_codec(&self, run: u64) -> Pipeline {
        let mut codec = self.base_codec;
        let warmup = self.config.rounds.codec_warmup_rounds;
        if warmup > 0 && run < warmup {
            let ramp = 0.25f32.powi(run as i32 + 1);
            codec.sparsify = match self.base_codec.sparsify {
                Sparsify::TopK(f) => Sparsify::TopK(f.max(ramp)),
                Sparsify::RandK(f) => Sparsify::RandK(f.max(ramp)),
                Sparsify::Dense => Sparsify::Dense,
            };
        }
        codec
    }

    fn maybe_open_round(&mut self, out: &mut Vec<Output>) -> Result<(), ServerError> {
        self.pick_up_rollback()?;
        let codec = self.round_codec(self.rounds_run);
        let codec_name = codec.name();
        // Never ask a vehicle for a codec stage it does not have.
        let offline_after = Duration::from_secs(self.config.rounds.offline_after_secs);
        let eligible = self
            .registry
            .eligible(&codec.stages(), self.clock.instant(), offline_after);
        // a vehicle blocked while it was online is never asked again
        let mut eligible = eligible;
        eligible.retain(|c| self.inbox.trusts(c, &self.store));
        // budgets only shrink the set: no ledger read while too few are online
        if eligible.len() < self.config.rounds.min_clients {
            return Ok(());
        }
        let round = self.next_round;
        let (eligible, skipped) = self.within_budget(eligible, round, &codec)?;
        let rules = &self.config.rounds;
        if eligible.len() < rules.min_clients {
            return Ok(());
        }
        let wanted = ((eligible.len() as f64 * rules.sample_fraction).ceil() as usize)
            .max(rules.min_clients)
            .min(eligible.len());
        let mut rng = StdRng::seed_from_u64(rules.seed ^ round.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let selected: BTreeSet<String> = eligible
            .choose_multiple(&mut rng, wanted)
            .cloned()
            .collect();
        let now_ms = self.now_ms();
        let deadline = Duration::from_secs(rules.deadline_secs);
        let announce = Announce {
            round,
            manifest: self.current.manifest.clone(),
            spec: self.spec.clone(),
            task: self.config.training.clone(),
            codec,
            downlink_codec: self.downlink,
            deadline_ms: now_ms.saturating_add(deadline.as_millis() as u64),
            // an asynchronous round takes an update from any vehicle
            selected: match rules.mode {
                RoundMode::Sync => selected.iter().filter_map(|c| messages::id(c)).collect(),
                RoundMode::Async => Vec::new(),
            },
            chunk_size: rules.chunk_size as u32,
            objective: self.objective(),
            staleness: rules.announced_staleness(),
        };
        let base = version::hex(&announce.base_version());
        self.store
            .open_round(round, &base, &codec_name, selected.len() as u64, now_ms)?;
        let kept =
            postcard::to_allocvec(&announce).map_err(|e| WireError::Encode(e.to_string()))?;
        self.store.save_open_round(round, &kept)?;
        if !skipped.is_empty() {
            tracing::info!(
                round,
                skipped = skipped.len(),
                "vehicles at their data budget sit the round out"
            );
            self.store.record_skipped(&skipped)?;
        }
        let mut rows = ledger_rows(round, &selected, &codec_name);
        let throughput = selected
            .iter()
            .filter_map(|c| Some((c.clone(), self.registry.get(c)?.throughput)))
            .filter(|(_, t)| t.is_known())
            .collect();
        for row in rows.values_mut() {
            row.bytes_down_predicted = self.predicted_download(&row.client);
        }
        tracing::debug!(round, selected = selected.len(), eligible = eligible.len(), base = %version::short(&announce.base_version()), "round opened");
        let topic = topics::round(&self.config.fleet);
        let payload = self.seal(Kind::Announce, &topic, &announce)?;
        let now = self.clock.instant();
        let streaming = self.streams();
        self.round = Some(OpenRound {
            streaming,
            members: Vec::new(),
            held_bytes: 0,
            digests: HashMap::new(),
            codec,
            sum: PartialSum::for_spec(&self.spec),
            selected,
            deadline: now
                .checked_add(deadline)
                .unwrap_or(now + Duration::from_secs(86_400 * 365)),
            inbox: HashMap::new(),
            rows,
            unselected_down: ClientRow::default(),
            loss_weighted: 0.0,
            started_ms: now_ms,
            served: BTreeSet::new(),
            bytes_down_raw: 0,
            throughput,
            announce,
        });
        self.next_round = round + 1;
        out.push(Output::Publish(Outgoing::retained(topic.as_str(), payload)));
        // update chunks that came while the last model was being published
        for p in std::mem::take(&mut self.parked) {
            self.count_wire_up(&p.client, p.wire_len);
            self.on_update(&p.client, p.chunk, p.payload_len, p.wire_len, out)?;
        }
        self.parked_bytes = 0;
        Ok(())
    }

    /// Splits `eligible` into the vehicles whose data use so far today and
    /// this month plus what the round is predicted to cost them (model
    /// download and update upload) stays within `[budget]`, and a
    /// `skipped` ledger row, saying which cap, for each of the rest.
    fn within_budget(
        &self,
        eligible: Vec<String>,
        round: u64,
        codec: &Pipeline,
    ) -> Result<(Vec<String>, Vec<ClientRow>), ServerError> {
        let budget = &self.config.budget;
        let (daily, monthly) = (budget.daily_bytes(), budget.monthly_bytes());
        if daily.is_none() && monthly.is_none() {
            return Ok((eligible, Vec::new()));
        }
        let usage = self.store.usage(self.now_ms())?;
        let modelled_up = cost::update_bytes(&self.spec, codec);
        let mut within = Vec::with_capacity(eligible.len());
        let mut skipped = Vec::new();
        for client in eligible {
            let used = usage.get(&client).copied().unwrap_or_default();
            let up = self
                .byte_ratios
                .get(&(client.clone(), codec.name()))
                .map_or(modelled_up, |r| r.predict(modelled_up));
            let round_cost = up + self.predicted_download(&client);
            let over = |used: u64, cap: Option<u64>, period: &str| {
                cap.filter(|cap| used + round_cost > *cap).map(|cap| {
                    let mb = |b: u64| b as f64 / 1e6;
                    format!(
                        "budget: {period} use {:.3} MB + this round's predicted {:.3} MB would pass the {period} cap of {:.3} MB",
                        mb(used),
                        mb(round_cost),
                        mb(cap)
                    )
                })
            };
            match over(used.today, daily, "daily").or_else(|| over(used.month, monthly, "monthly"))
            {
                Some(reason) => skipped.push(ClientRow {
                    round,
                    client,
                    status: ClientStatus::Skipped,
                    codec: codec.name(),
                    reason: Some(reason),
                    bytes_up_predicted: up,
                    ..Default::default()
                }),
                None => within.push(client),
            }
        }
        Ok((within, skipped))
    }

    /// Download bytes the cost model expects for `client` this round: none
    /// when it holds the model, a one-step delta when it holds the parent,
    /// else the whole model (each scaled by what the last such download
    /// measured).
    fn predicted_download(&self, client: &str) -> u64 {
        let held = self.registry.get(client).map(|c| c.model);
        let full = self.model_bytes.len() as u64;
        if held == Some(self.current.manifest.version) {
            0
        } else if held.is_some() && held == self.current.parent {
            self.delta_ratio.predict(self.modelled_delta().min(full))
        } else {
            self.full_ratio.predict(full)
        }
    }

    /// The cost model's size of a one-step delta under the downlink codec.
    pub(super) fn modelled_delta(&self) -> u64 {
        let codec = &self.current.manifest.provenance.downlink_codec;
        cost::update_bytes(&self.spec, codec)
    }

    pub(super) fn close_round(&mut self, out: &mut Vec<Output>) -> Result<(), ServerError> {
        let Some(mut r) = self.round.take() else {
            return Ok(());
        };
        let round = r.announce.round;
        let mut row = round_totals(&r, &self.downlink.name());
        let enough = row.clients_reported as usize >= self.config.rounds.min_reports;
        let target = match (enough, r.streaming) {
            (false, _) => None,
            (true, true) => r.sum.apply(&self.current.params, self.aggregate_lr(round)),
            (true, false) => self.settle(&mut r),
        };
        let (target, mut opt_state) = match target {
            Some(target) => self.server_step(round, target),
            None => (None, None),
        };
        if target.is_some()
            && let Some(control) = self.control_step(&r)
        {
            let mut state = opt_state.unwrap_or_else(|| self.opt_state.clone());
            state.control = Some(control);
            opt_state = Some(state);
        }
        self.remember(&r.members);
        let clients: Vec<ClientRow> = r.rows.into_values().collect();
        let (true, Some(target)) = (enough, target) else {
            tracing::warn!(
                round,
                accepted = row.clients_reported,
                needed = self.config.rounds.min_reports,
                "round failed: too few updates; model unchanged"
            );
            row.status = RoundStatus::Failed;
            return self.finish(row, clients, out);
        };
        let Some(publication) = self.publishable(round, &target) else {
            row.status = RoundStatus::Failed;
            return self.finish(row, clients, out);
        };
        let provenance = Provenance {
            parent: Some(self.current.manifest.version),
            strategy: self.config.strategy_of(round),
            codec: r.codec,
            downlink_codec: publication.delta.codec,
        };
        let params = publication.published;
        let next = StoredVersion {
            round,
            parent: Some(self.current.manifest.version),
            manifest: version::manifest_of(&params, &self.spec, &self.current.task, &provenance),
            spec: self.spec.clone(),
            task: self.current.task.clone(),
            params,
        };
        let replay_secs = clients.iter().map(|c| c.decode_seconds).sum::<f64>();
        let request = self.test.clone().map(|test| EvalRequest {
            spec: self.spec.clone(),
            params: next.params.clone(),
            test,
        });
        self.closing = Some(Closing {
            row,
            clients,
            next,
            delta: publication.delta,
            exact: publication.exact,
            clean: publication.clean,
            replay_secs,
            opt_state,
        });
        match request {
            Some(request) => {
                out.push(Output::Evaluate(Box::new(request)));
                Ok(())
            }
            None => self.on_evaluated(None, out),
        }
    }

    /// Stores the new version with its evaluation and closes the round.
    pub(super) fn on_evaluated(
        &mut self,
        eval: Option<Evaluation>,
        out: &mut Vec<Output>,
    ) -> Result<(), ServerError> {
        let Some(Closing {
            mut row,
            clients,
            next,
            delta,
            exact,
            clean,
            replay_secs,
            opt_state,
        }) = self.closing.take()
        else {
            return Ok(());
        };
        let state_bytes = opt_state.as_ref().map(OptState::to_bytes);
        let kind = self.store.save_version(
            &Publication {
                version: &next,
                delta: Some(&delta),
                server_lr: self.config.round_lr(next.round),
                exact,
                clean,
                replay_secs,
                optimizer_state: state_bytes.as_deref(),
            },
            eval.as_ref(),
            self.now_ms(),
        )?;
        tracing::debug!(round = next.round, kind = kind.as_str(), "version stored");
        row.status = RoundStatus::Finished;
        row.model_version = Some(version::hex(&next.manifest.version));
        row.strategy = Some(next.manifest.provenance.strategy.clone());
        row.eval_loss = eval.map(|e| e.loss);
        row.accuracy = eval.and_then(|e| e.accuracy);
        row.rmse = eval.and_then(|e| e.rmse);
        self.residual_base = Some(next.manifest.version);
        if let Some(state) = opt_state {
            self.adopt_state(state);
        }
        self.model_bytes = next.params.canonical_bytes();
        self.transfers.clear();
        self.current = next;
        self.finish(row, clients, out)
    }

    /// Stops training once `rounds.early_stop_rounds` models in a row were
    /// scored by the vehicles without beating the best so far.
    pub(super) fn check_early_stop(&mut self) -> Result<(), ServerError> {
        let patience = self.config.rounds.early_stop_rounds;
        if patience == 0 || self.stopped_early {
            return Ok(());
        }
        let d = self.store.deployment(convoy_store::Deploy::Best)?;
        if d.since_best >= patience {
            self.stopped_early = true;
            let best = d.deployed.as_ref();
            tracing::info!(
                rounds = self.rounds_run,
                best_round = best.map(|b| b.round),
                best_score = best.and_then(|b| b.score()),
                patience,
                "training stopped early: no better model for {patience} scored rounds"
            );
        }
        Ok(())
    }

    /// The learning rate the round's rule aggregates at: the round's own
    /// under FedAvg, 1 under a stateful optimiser, which then takes the
    /// step ([`Coordinator::server_step`]).
    pub(super) fn aggregate_lr(&self, round: u64) -> f64 {
        if self.config.strategy.server.is_stateful() {
            1.0
        } else {
            self.config.round_lr(round)
        }
    }

    /// The server optimiser's step from the rule's aggregate `target`, and
    /// its state after it (`None` for FedAvg, which has none). A step that
    /// fails leaves the round without a model.
    fn server_step(&self, round: u64, target: ParamSet) -> (Option<ParamSet>, Option<OptState>) {
        let opt = self.config.strategy.server;
        if !opt.is_stateful() {
            return (Some(target), None);
        }
        let mut state = self.opt_state.clone();
        match opt.step(
            &self.current.params,
            &target,
            &mut state,
            self.config.round_lr(round),
        ) {
            Ok(params) => (Some(params), Some(state)),
            Err(e) => {
                tracing::error!(round, error = %e, "the server optimiser's step failed; the round fails");
                (None, None)
            }
        }
    }

    fn finish(
        &mut self,
        mut row: RoundRow,
        clients: Vec<ClientRow>,
        out: &mut Vec<Output>,
    ) -> Result<(), ServerError> {
        let finished = self.now_ms();
        row.finished_at = Some(convoy_store::iso8601(finished));
        row.compression_up =
            (row.bytes_up > 0).then(|| row.bytes_up_raw as f64 / row.bytes_up as f64);
        self.store.finish_round(&row, &clients, finished)?;
        tracing::info!(
            round = row.round,
            status = %row.status,
            reported = row.clients_reported,
            bytes_up = row.bytes_up,
            bytes_down = row.bytes_down,
            accuracy = ?row.accuracy,
            "round closed"
        );
        self.rounds_run += 1;
        if row.status == RoundStatus::Failed {
            self.rounds_failed += 1;
        }
        self.check_early_stop()?;
        out.push(Output::RoundClosed(Box::new(row)));
        Ok(())
    }
}
