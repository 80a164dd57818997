//! A round announcement arrives: decide whether this vehicle takes part, and
//! with which model.

use super::{Action, Agent, Fetch, Ready, Round};
use crate::error::AgentError;
use crate::state::StoredModel;
use convoy_shared::codec;
use convoy_shared::messages::{AgentState, Announce, Objective};
use convoy_shared::version;

use std::sync::atomic::Ordering;

impl Agent {
    pub(super) fn on_announce(
        &mut self,
        announce: Announce,
        out: &mut Vec<Action>,
    ) -> Result<(), AgentError> {
        let round = announce.round;
        // Nothing of an announcement is used before its spec is in bounds.
        let in_hand = self.round.number() == Some(round);
        if in_hand || self.announce.as_ref().is_some_and(|a| a.round == round) {
            return Ok(()); // re-delivery of the retained message
        }
        if self.announce.as_ref().is_some_and(|a| a.round > round) {
            // A genuine but older announcement, replayed.
            tracing::warn!(
                round,
                "ignoring an announcement older than one already seen"
            );
            return Ok(());
        }
        if let Err(why) = self.config.limits.check(&announce.spec) {
            tracing::warn!(round, why, "announced model refused");
            let detail = format!("model refused: {why}");
            self.fail(out, round, "model_refused", &detail);
            return Ok(());
        }
        tracing::debug!(round, base = %version::short(&announce.base_version()), codec = %announce.codec, "round announced");
        self.announce = Some(announce.clone());
        // Asynchronous rounds: an update trained on a model up to
        // `staleness` versions old still counts, so training goes on and
        // the newest round is taken up after its receipt.
        let counts = |older: u64| older + announce.staleness as u64 >= round;
        if let Round::Training { ready, .. } = &self.round
            && counts(ready.announce.round)
        {
            tracing::debug!(
                training_round = ready.announce.round,
                round,
                "newer round announced; training goes on (asynchronous rounds)"
            );
            return Ok(());
        }
        match &self.round {
            Round::Training { cancel, .. } if self.round.number() < Some(round) => {
                tracing::warn!(
                    training_round = self.round.number(),
                    round,
                    "newer round announced; abandoning training"
                );
                cancel.store(true, Ordering::Relaxed);
                self.round = Round::Idle;
            }
            Round::Waiting(_) if self.round.number() < Some(round) => {
                self.round = Round::Idle;
                self.state.clear_checkpoint()?;
            }
            Round::Fetching(_) => self.round = Round::Idle,
            _ => {}
        }
        if let Some(pending) = self.state.pending()? {
            // Re-send unless already in flight; an older round's update is
            // late but still reported so the server's ledger counts it.
            if self.outbox.map(|o| o.round) != Some(pending.round) {
                self.upload(&pending, out);
            }
            // asynchronous rounds: the newest round waits for the receipt
            // of an update that may still count
            if pending.round >= round || (announce.staleness > 0 && counts(pending.round)) {
                return Ok(());
            }
        }
        if self.state.last_acked_round()?.is_some_and(|r| r >= round) {
            return Ok(());
        }
        let me = self.config.client_id.as_str();
        if !announce.selected.is_empty() && !announce.selected.iter().any(|c| c.as_str() == me) {
            self.status(out, AgentState::Idle, round, "not selected this round");
            return Ok(());
        }
        if announce.deadline_ms <= self.now_ms() {
            self.status(out, AgentState::Skipped, round, "deadline already passed");
            return Ok(());
        }
        let codec = announce.codec;
        // a SCAFFOLD round's control is fetched even when the model is held
        let scaffold = matches!(announce.objective, Objective::Scaffold { .. });
        let held = match self.state.model()? {
            Some(model) if model.manifest.version == announce.base_version() => {
                if !scaffold {
                    let ready = Ready {
                        announce,
                        codec,
                        model,
                        control: None,
                    };
                    return self.start_training(ready, out);
                }
                Some(model)
            }
            held => {
                // A fleet's first model is a pure function of its spec:
                // rebuild it locally instead of downloading it.
                let initial = announce.spec.init_params();
                if announce
                    .manifest
                    .verifies(&initial, &announce.spec, &announce.task)
                {
                    tracing::info!(
                        round,
                        "base model rebuilt from its spec, nothing to download"
                    );
                    if !scaffold {
                        return self.install_model(announce, codec, initial, None, out);
                    }
                    Some(StoredModel {
                        manifest: announce.manifest.clone(),
                        spec: announce.spec.clone(),
                        task: announce.task.clone(),
                        params: initial,
                    })
                } else {
                    held
                }
            }
        };
        let fetch = Fetch::new(announce, codec, held, self.clock.instant());
        self.round = Round::Fetching(Box::new(fetch));
        self.status(out, AgentState::Fetching, round, "fetching model");
        self.request_missing(out);
        self.try_finish_fetch(out)
    }

    /// Takes up the newest round announced while an update of round `done`
    /// was trained or awaited its receipt (asynchronous rounds).
    pub(super) fn take_up_newer(
        &mut self,
        done: u64,
        out: &mut Vec<Action>,
    ) -> Result<(), AgentError> {
        let newer = self
            .announce
            .as_ref()
            .is_some_and(|a| a.round > done && a.staleness > 0);
        if !newer || !matches!(self.round, Round::Idle) {
            return Ok(());
        }
        match self.announce.take() {
            Some(announce) => self.on_announce(announce, out),
            None => Ok(()),
        }
    }

    /// Stores a verified base model and trains on it.
    pub(super) fn install_model(
        &mut self,
        announce: Announce,
        codec: codec::Pipeline,
        params: convoy_shared::params::ParamSet,
        control: Option<std::sync::Arc<convoy_shared::params::ParamSet>>,
        out: &mut Vec<Action>,
    ) -> Result<(), AgentError> {
        let model = StoredModel {
            manifest: announce.manifest.clone(),
            spec: announce.spec.clone(),
            task: announce.task.clone(),
            params,
        };
        self.state.save_model(&model)?;
        self.held.set(model.manifest.version);
        let ready = Ready {
            announce,
            codec,
            model,
            control,
        };
        self.start_training(ready, out)
    }
}
