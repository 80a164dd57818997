//! How much each accepted update counts: its weight (the rows its vehicle
//! claims, capped by the round and by the vehicle's history), its norm
//! bound (its own recipe's reach, then a multiple of the fleet's median
//! norm), and the round's rule. FedAvg with references from an earlier
//! round folds each update as it arrives; otherwise the updates are held
//! (in memory up to `aggregation.memory_mb`, then read back from the
//! database) and the rule runs when the round closes.

use super::Coordinator;
use super::rounds::OpenRound;
use crate::config::RoundConfig;
use convoy_shared::cost;
use convoy_shared::messages::UpdateBody;
use convoy_shared::params::ParamSet;
use convoy_shared::strategy::fold::decode_kept;
use convoy_shared::strategy::robust::{self, Member, Rule, weigh};
use convoy_store::ClientStatus;

/// Slack on an update's recipe bound for what error feedback carries over
/// from earlier rounds.
const RECIPE_SLACK: f64 = 2.0;

/// One accepted update as the round's rule will see it.
#[derive(Debug, Clone)]
pub(super) struct Held {
    pub(super) client: String,
    pub(super) head: usize,
    /// Rows its vehicle claimed.
    pub(super) claimed: u64,
    /// Its L2 norm as decoded.
    pub(super) norm: f64,
    /// The factor its own recipe's bound scales it by (at most 1).
    pub(super) recipe_scale: f64,
    /// Its body, while the round's memory allows; else read back from the store.
    pub(super) body: Option<Vec<u8>>,
    /// Its weight and scale: final when the round streams, else set at close.
    pub(super) weight: f64,
    pub(super) scale: f64,
    /// Whether the round's rule kept it (set at close; multi-Krum leaves
    /// some out).
    pub(super) kept: bool,
    /// Rounds between the one it was trained for and this one
    /// (asynchronous rounds; it is scaled by 1/√(1 + s)).
    pub(super) staleness: u64,
}

/// What the coordinator settled for one update as it arrived.
#[derive(Debug)]
pub(super) struct Admission {
    pub(super) weight: f64,
    pub(super) scale: f64,
    pub(super) recipe_scale: f64,
    /// Why it is suspected, so far.
    pub(super) notes: Vec<String>,
}

/// References for weights and norm bounds: an earlier round's, or the
/// closing round's own.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct References {
    /// Median L2 norm of the accepted updates.
    pub(super) norm: Option<f64>,
    /// Median claimed rows.
    pub(super) claim: Option<f64>,
}

impl References {
    /// The references of a round's `members` (norms within their recipes' bounds).
    pub(super) fn of(members: &[Held]) -> Self {
        let norms: Vec<f64> = members.iter().map(|m| m.norm * m.recipe_scale).collect();
        let claims: Vec<f64> = members.iter().map(|m| m.claimed as f64).collect();
        Self {
            norm: cost::median(&norms),
            claim: cost::median(&claims),
        }
    }

    /// The references of a finished round's accepted ledger rows.
    pub(super) fn of_rows(rows: &[convoy_store::ClientRow]) -> Self {
        let norms: Vec<f64> = rows.iter().filter_map(|r| r.update_norm).collect();
        let claims: Vec<f64> = rows.iter().map(|r| r.samples as f64).collect();
        Self {
            norm: cost::median(&norms),
            claim: cost::median(&claims),
        }
    }
}

impl Coordinator {
    /// True when a round opened now folds updates as they arrive: FedAvg,
    /// with the references its bounds need already known.
    pub(super) fn streams(&self) -> bool {
        let a = &self.config.aggregation;
        let needs_norm = self.config.rounds.norm_bound > 0.0;
        let needs_claim = a.median_cap > 0.0 && !a.weighting().equal;
        a.rule == Rule::FedAvg
            && (!needs_norm || self.references.norm.is_some())
            && (!needs_claim || self.references.claim.is_some())
    }

    /// Weight and scale of an update of `norm` claiming `update.samples`
    /// rows from `client`, as far as can be settled on arrival.
    pub(super) fn admit(
        &self,
        round: &OpenRound,
        client: &str,
        update: &UpdateBody,
        norm: f64,
    ) -> Admission {
        let mut notes = Vec::new();
        let task = &round.announce.task;
        // one SGD step moves each tensor at most lr x clip_norm
        let tensors = (self.scratch.tensors.len() as f64).sqrt();
        let steps = cost::training_steps(update.samples, task.epochs, task.batch_size);
        let recipe_bound = (task.clip_norm > 0.0).then_some(
            task.lr as f64 * task.clip_norm as f64 * tensors * steps as f64 * RECIPE_SLACK,
        );
        let recipe_scale = match recipe_bound {
            Some(bound) if norm > bound => {
                notes.push(format!(
                    "norm {norm:.3e} beyond what its recipe can reach ({bound:.3e}); clipped"
                ));
                bound / norm
            }
            _ => 1.0,
        };
        if !round.streaming {
            return Admission {
                weight: update.samples as f64,
                scale: recipe_scale,
                recipe_scale,
                notes,
            };
        }
        let (weight, capped) = weigh(
            &self.config.aggregation.weighting(),
            update.samples,
            self.references.claim,
            self.history.get(client).copied(),
        );
        notes.extend(capped);
        let (scale, clipped) = self.norm_scale(norm, recipe_scale, self.references.norm);
        notes.extend(clipped);
        Admission {
            weight,
            scale,
            recipe_scale,
            notes,
        }
    }

    /// The final scale of an update of `norm` already scaled by
    /// `recipe_scale`: clipped to `rounds.norm_bound` times `median`.
    fn norm_scale(
        &self,
        norm: f64,
        recipe_scale: f64,
        median: Option<f64>,
    ) -> (f64, Option<String>) {
        let k = self.config.rounds.norm_bound;
        let bound = median.filter(|m| k > 0.0 && *m > 0.0).map(|m| k * m);
        let scaled = norm * recipe_scale;
        match bound {
            Some(bound) if scaled > bound => (
                bound / norm,
                Some(format!(
                    "norm {norm:.3e} over {k}x the fleet's median; clipped to {bound:.3e}"
                )),
            ),
            _ => (recipe_scale, None),
        }
    }

    /// Runs the round's rule over its held updates: settles each one's
    /// weight and scale against the previous round's references (the
    /// round's own where none exists yet), records them
    /// (the lineage and a replay use them), marks suspects in the ledger
    /// rows, and returns the new model (`None`: nothing to publish).
    pub(super) fn settle(&mut self, r: &mut OpenRound) -> Option<ParamSet> {
        let round = r.announce.round;
        let own = References::of(&r.members);
        let refs = References {
            norm: self.references.norm.or(own.norm),
            claim: self.references.claim.or(own.claim),
        };
        let weighting = self.config.aggregation.weighting();
        let mut notes: Vec<Vec<String>> = Vec::with_capacity(r.members.len());
        let mut settled = Vec::with_capacity(r.members.len());
        for i in 0..r.members.len() {
            let m = &r.members[i];
            let (weight, capped) = weigh(
                &weighting,
                m.claimed,
                refs.claim,
                self.history.get(&m.client).copied(),
            );
            let (scale, clipped) = self.norm_scale(m.norm, m.recipe_scale, refs.norm);
            // FedBuff: a stale update moves the model less
            let scale = scale * RoundConfig::staleness_weight(m.staleness);
            notes.push(capped.into_iter().chain(clipped).collect());
            settled.push((m.client.clone(), weight, scale));
            let m = &mut r.members[i];
            (m.weight, m.scale) = (weight, scale);
        }
        if let Err(e) = self.store.settle_updates(round, &settled) {
            tracing::error!(round, error = %e, "the round's weights were not recorded; the round fails");
            return None;
        }
        let members: Vec<Member> = r
            .members
            .iter()
            .map(|m| Member {
                head: m.head,
                weight: m.weight,
                scale: m.scale,
            })
            .collect();
        let (codec, heads) = (r.codec, self.spec.heads.len());
        let store = &self.store;
        let held = &r.members;
        let memory = self.config.aggregation.memory_bytes();
        let outcome = robust::aggregate(
            &self.config.aggregation.rule,
            &self.spec,
            &self.current.params,
            self.aggregate_lr(round),
            &members,
            memory,
            |i, scratch| {
                let m = &held[i];
                let body = match &m.body {
                    Some(body) => std::borrow::Cow::Borrowed(body),
                    None => std::borrow::Cow::Owned(
                        store
                            .round_update_body(round, &m.client)
                            .map_err(|e| e.to_string())?
                            .ok_or_else(|| format!("{}'s update is not in the store", m.client))?,
                    ),
                };
                decode_kept(&body, &codec, heads, scratch)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            },
        );
        let outcome = match outcome {
            Ok(Some(o)) => o,
            Ok(None) => return None,
            Err(e) => {
                tracing::error!(round, error = %e, "the round's updates could not be read back; the round fails");
                return None;
            }
        };
        for (m, verdict) in r.members.iter_mut().zip(&outcome.verdicts) {
            m.kept = verdict.kept;
        }
        let floor = self.config.aggregation.suspect_cosine;
        for ((m, verdict), mut why) in r.members.iter().zip(&outcome.verdicts).zip(notes) {
            if verdict.cosine < floor {
                why.push(format!(
                    "points away from the round's aggregate (cosine {:.2})",
                    verdict.cosine
                ));
            }
            let Some(row) = r.rows.get_mut(&m.client) else {
                continue;
            };
            row.weight = Some(m.weight);
            if !verdict.kept {
                // multi-Krum leaves F out every round, honest or not: said,
                // and a suspicion only with another reason
                let left_out = format!("left out by {}", self.config.aggregation.rule);
                match why.is_empty() {
                    true => row.reason = Some(left_out),
                    false => why.push(left_out),
                }
            }
            note(row, why);
        }
        tracing::debug!(
            round,
            rule = %self.config.aggregation.rule,
            peak_bytes = outcome.peak_bytes,
            "round aggregated"
        );
        Some(outcome.target)
    }

    /// After a round closed: its references become the next round's, and
    /// each vehicle's largest weight is remembered.
    pub(super) fn remember(&mut self, members: &[Held]) {
        let refs = References::of(members);
        if refs.norm.is_some() {
            self.references = refs;
        }
        for m in members {
            let past = self.history.entry(m.client.clone()).or_default();
            *past = past.max(m.weight);
        }
    }
}

/// Adds `why` to a ledger row's suspicions, logging each once.
pub(super) fn note(row: &mut convoy_store::ClientRow, why: Vec<String>) {
    if why.is_empty() || row.status != ClientStatus::Accepted {
        return;
    }
    let joined = why.join("; ");
    tracing::warn!(client = %row.client, round = row.round, suspect = %joined, "suspected update");
    row.suspect = Some(match row.suspect.take() {
        Some(earlier) if !earlier.is_empty() => format!("{earlier}; {joined}"),
        _ => joined,
    });
}
