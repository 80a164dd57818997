//! After a restart or a rollback: the open round taken up again with every
//! update it acknowledged, and the fleet's current model picked up.

use super::Coordinator;
use super::aggregate::Held;
use super::rounds::OpenRound;
use super::totals::ledger_rows;
use crate::error::ServerError;
use convoy_shared::messages::Announce;
use convoy_shared::strategy::fold::{decode_kept, fold_update};
use convoy_shared::strategy::sum::PartialSum;
use convoy_store::{ClientRow, OpenRoundState};

use convoy_shared::version::{self};
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

impl Coordinator {
    /// Switches to the fleet's current model when `models rollback` made
    /// another version current while the server was running; the next
    /// round is announced on it.
    pub(super) fn pick_up_rollback(&mut self) -> Result<(), ServerError> {
        // only another connection's commit (`models rollback`) can change it
        let seen = self.store.data_version()?;
        if self.data_version.replace(seen) == Some(seen) {
            return Ok(());
        }
        let Some(current) = self.store.current_version()? else {
            return Ok(());
        };
        if current == version::hex(&self.current.manifest.version) {
            return Ok(());
        }
        let v = match self.store.load_version(&current) {
            Ok(v) if v.spec == self.spec => v,
            Ok(_) => {
                tracing::error!(version = %current, "the rolled-back version has another model spec; staying on the current model");
                return Ok(());
            }
            Err(e) => {
                tracing::error!(version = %current, error = %e, "cannot load the rolled-back version; staying on the current model");
                return Ok(());
            }
        };
        tracing::info!(from = %version::short(&self.current.manifest.version), to = %version::short(&v.manifest.version), "rollback: the fleet's current model changed");
        self.model_bytes = v.params.canonical_bytes();
        self.transfers.clear();
        self.current = v;
        let state = Self::load_opt_state(&self.config, &self.store, &self.current)?;
        self.adopt_state(state);
        Ok(())
    }

    /// After a restart: takes up the newest open round again with every
    /// update it acknowledged (each folded in exactly once, as before), and
    /// marks any other round left open as abandoned.
    pub(super) fn resume(&mut self) -> Result<(), ServerError> {
        let kept = match self.store.open_round_state()? {
            Some(state) => self.resume_round(state)?,
            None => None,
        };
        let abandoned = self.store.abandon_open_rounds(self.now_ms(), kept)?;
        if abandoned > 0 {
            tracing::warn!(
                abandoned,
                "rounds left open by an earlier run marked abandoned"
            );
        }
        Ok(())
    }

    fn resume_round(&mut self, state: OpenRoundState) -> Result<Option<u64>, ServerError> {
        let round = state.round;
        let Ok(announce) = Announce::from_kept(&state.announce) else {
            tracing::warn!(
                round,
                "stored announcement unreadable; the round cannot resume"
            );
            return Ok(None);
        };
        if announce.base_version() != self.current.manifest.version {
            tracing::warn!(round, "open round is not on the current model; not resumed");
            return Ok(None);
        }
        let codec = announce.codec;
        let selected: BTreeSet<String> = announce.selected.iter().map(|c| c.to_string()).collect();
        let mut rows = ledger_rows(round, &selected, &announce.codec.name());
        let mut sum = PartialSum::for_spec(&self.spec);
        // the same mode the round opened in: the references it used are
        // the store's, as they were then
        let streaming = self.streams();
        let mut members = Vec::new();
        let (mut held_bytes, mut digests) = (0, HashMap::new());
        let mut loss_weighted = 0.0;
        for (row, body, scale) in state.updates {
            let heads = self.spec.heads.len();
            let decoded = decode_kept(&body, &codec, heads, &mut self.scratch);
            // an asynchronous round also takes vehicles it did not select
            let known = rows.contains_key(&row.client)
                || announce.selected.is_empty()
                || announce.staleness > 0;
            let (Ok(update), true) = (decoded, known) else {
                tracing::error!(round, client = %row.client, "stored update unreadable; left out");
                continue;
            };
            let weight = row.weight.unwrap_or(row.samples as f64);
            if streaming {
                fold_update(
                    &mut sum,
                    &mut self.scratch,
                    update.head as usize,
                    weight,
                    scale,
                );
            }
            digests.insert(
                *blake3::hash(&update.encoded).as_bytes(),
                row.client.clone(),
            );
            let keep =
                !streaming && held_bytes + body.len() <= self.config.aggregation.memory_bytes();
            if keep {
                held_bytes += body.len();
            }
            members.push(Held {
                client: row.client.clone(),
                head: update.head as usize,
                claimed: row.samples,
                norm: row.update_norm.unwrap_or(0.0),
                // a held round stored only its recipe's bound so far
                recipe_scale: scale,
                body: keep.then_some(body),
                weight,
                scale,
                kept: true,
                staleness: row.staleness.unwrap_or(0),
            });
            loss_weighted += row.loss.unwrap_or(0.0) * row.samples as f64;
            rows.insert(row.client.clone(), row);
        }
        let now_ms = self.now_ms();
        let left = Duration::from_millis(announce.deadline_ms.saturating_sub(now_ms));
        tracing::info!(
            round,
            acknowledged = members.len(),
            left_secs = left.as_secs(),
            "resuming the open round with the updates it acknowledged"
        );
        self.round = Some(OpenRound {
            streaming,
            members,
            held_bytes,
            digests,
            codec,
            sum,
            selected,
            deadline: self.clock.instant() + left,
            inbox: HashMap::new(),
            rows,
            unselected_down: ClientRow::default(),
            loss_weighted,
            started_ms: now_ms,
            served: BTreeSet::new(),
            bytes_down_raw: 0,
            throughput: HashMap::new(),
            announce,
        });
        Ok(Some(round))
    }
}
