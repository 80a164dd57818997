//! Starting a training job and taking its result: the job (building the
//! training set, training, encoding the update) runs on a thread of its
//! own; the machine only decides when, and what to do with the outcome.

use super::{Action, Agent, Ready, Round};
use crate::data::{self, Source, TrainingSet};
use crate::encode::{self, Encoding};
use crate::error::AgentError;
use crate::policy;
use crate::state::{PendingUpdate, StoredCheckpoint, StoredPersonal};
use crate::trainer::{self, Checkpoint, Job, TrainError};
use convoy_shared::messages::AgentState;
use convoy_shared::params::ParamSet;
use convoy_shared::strategy::scaffold;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// What a training job hands back: an encoded update (with its encode
/// seconds), or a checkpoint when the policy paused it.
#[derive(Debug)]
pub enum Finished {
    /// Trained and encoded.
    Update {
        /// The update, ready to persist and send.
        update: PendingUpdate,
        /// Seconds the encoding took.
        encode_seconds: f64,
        /// The SCAFFOLD control `cᵢ⁺` the update leaves (SCAFFOLD rounds).
        control: Option<ParamSet>,
    },
    /// Paused at a batch boundary.
    Paused(Checkpoint),
}

/// A job's outcome, as fed back into the machine.
#[derive(Debug)]
pub struct TrainingDone {
    /// Round it trained for.
    pub round: u64,
    /// What came of it.
    pub result: Result<Finished, TrainError>,
    /// The training set it used, keyed by spec hash (kept for a resume).
    pub dataset: Option<([u8; 32], TrainingSet)>,
    /// The personalised model tuned from this round's base, if any.
    pub personal: Option<ParamSet>,
    /// What a finished training run measured (refines the device's speed).
    pub measured: Option<Measured>,
}

impl TrainingDone {
    /// A job that failed before training: nothing trained, nothing kept.
    fn failed(round: u64, error: TrainError) -> Self {
        Self {
            round,
            result: Err(error),
            dataset: None,
            personal: None,
            measured: None,
        }
    }
}

/// What one finished training run measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measured {
    /// Optimiser steps taken.
    pub steps: u64,
    /// FLOPs they cost, by the cost model.
    pub flops: u64,
    /// Training seconds (CPU time of the training threads; wall on a GPU).
    pub seconds: f64,
}

/// A training job for the I/O loop to run on its own thread.
pub struct TrainOrder {
    /// Round it trains for.
    pub round: u64,
    work: Box<dyn FnOnce() -> TrainingDone + Send>,
}

impl fmt::Debug for TrainOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrainOrder")
            .field("round", &self.round)
            .finish_non_exhaustive()
    }
}

impl TrainOrder {
    /// Runs the job here and now (the caller is a dedicated thread, or a test).
    pub fn run(self) -> TrainingDone {
        (self.work)()
    }
}

impl Agent {
    /// Trains `ready` now if the policy allows, else waits for it.
    pub(super) fn start_training(
        &mut self,
        ready: Ready,
        out: &mut Vec<Action>,
    ) -> Result<(), AgentError> {
        let round = ready.announce.round;
        let spec = &ready.announce.spec;
        if let Some(cap) = self.policy.memory_cap() {
            let widest = spec.widest();
            let need = policy::training_memory(
                spec.layout().numel(),
                self.data.rows() * spec.inputs(),
                ready.announce.task.batch_size as usize,
                widest,
            );
            if need > cap {
                let why = format!(
                    "training needs ~{} MiB, over policy.max_memory_mb",
                    need >> 20
                );
                self.fail(out, round, "memory", &why);
                return Ok(());
            }
        }
        if !self
            .policy
            .allowed(self.now_ms() / 1000, self.clock.instant())
        {
            self.pause.store(true, Ordering::Relaxed);
            self.status(
                out,
                AgentState::Idle,
                round,
                "waiting for the training policy",
            );
            self.round = Round::Waiting(Box::new(ready));
            return Ok(());
        }
        self.pause.store(false, Ordering::Relaxed);
        // A run the policy paused (possibly before a reboot) continues exactly.
        let resume = self
            .state
            .checkpoint()?
            .filter(|c| c.round == round && c.base_version == ready.announce.base_version())
            .map(|c| c.checkpoint);
        let seed = training_seed(&self.config.client_id, round);
        // Error feedback: what earlier rounds' codecs dropped is added back.
        let layout = spec.layout();
        let residual = self
            .state
            .residual()?
            .filter(|r| r.check_layout(&layout).is_ok());
        let encoding = Encoding {
            round,
            base_version: ready.announce.base_version(),
            codec: ready.codec,
            seed,
            chunk_size: ready.announce.chunk_size,
            residual,
            head: 0,
            attack: self.config.faults.attack,
        };
        let key = ready.announce.manifest.spec_hash;
        let source = match &self.dataset {
            Some((k, set)) if *k == key => Source::Cached(set.clone()),
            _ => {
                // Drop the previous training set before building the next one.
                self.dataset = None;
                self.data.take_source(&self.config.data)
            }
        };
        let spec = spec.clone();
        let task = ready.announce.task.clone();
        let objective = ready.announce.objective;
        // SCAFFOLD: the server's control and the vehicle's own (zeros first)
        let scaffold = match &ready.control {
            Some(c) => {
                let own = self
                    .state
                    .control()?
                    .filter(|own| own.check_layout(&layout).is_ok())
                    .unwrap_or_else(|| ParamSet::zeros(&layout));
                Some((c.clone(), own))
            }
            None => None,
        };
        let base = ready.model.params.clone();
        let limits = self.config.training.clone();
        let holdout = (self.config.data.holdout, self.config.data.holdout_by);
        let personal_steps = self.config.training.personal_steps;
        let holdout_seed = training_seed(&self.config.client_id, 0);
        let (label, line) = (
            self.config.data.label.clone(),
            self.config.data.line.clone(),
        );
        let pause = self.pause.clone();
        let cancel = Arc::new(AtomicBool::new(false));
        let thread_cancel = cancel.clone();
        let work = move || {
            let set = match data::build(
                source,
                &spec,
                (&label, line.as_deref()),
                holdout,
                holdout_seed,
            ) {
                Ok(set) => set,
                Err(e) => {
                    return TrainingDone::failed(round, TrainError::Data(e.to_string()));
                }
            };
            // the fleet's newest model, scored where the data is
            let scored = set.holdout.as_ref().and_then(|rows| {
                convoy_shared::eval::evaluate(&spec, &base, rows, &burn::prelude::Device::flex())
                    .map_err(|e| tracing::warn!(error = %e, "held-out rows not scored"))
                    .ok()
            });
            let encoding = Encoding {
                head: set.train.head() as u32,
                ..encoding
            };
            // the vehicle trains the trunk and its own head: only they
            // take a correction and move its control
            let head = set.train.head();
            let trains = |i: usize| spec.tensor_head(i).is_none_or(|h| h == head);
            let correction = match &scaffold {
                Some((c, own)) => match scaffold::correction(c, own, trains) {
                    Ok(corr) => Some(Arc::new(corr)),
                    Err(e) => {
                        return TrainingDone::failed(round, TrainError::Params(e));
                    }
                },
                None => None,
            };
            let job = Job {
                spec: spec.clone(),
                base,
                task,
                data: set.train.clone(),
                seed,
                objective,
                correction,
            };
            let should_pause = |_: u64| pause.load(Ordering::Relaxed);
            let mut personal = None;
            let mut measured = None;
            let result = trainer::train(
                &job,
                &limits,
                &thread_cancel,
                &should_pause,
                resume.as_ref(),
            )
            .and_then(|progress| match progress {
                trainer::Progress::Done(mut trained) => {
                    let s = &trained.stats;
                    measured = Some(Measured {
                        steps: s.steps,
                        flops: s.flops,
                        seconds: s.train_seconds,
                    });
                    trained.stats.holdout = scored;
                    if personal_steps > 0 {
                        // the fleet's model with a head of this vehicle's own
                        let tuned = trainer::fine_tune_head(
                            &job.spec,
                            &job.base,
                            &job.data,
                            &job.task,
                            personal_steps,
                            seed,
                            &limits,
                        )?;
                        trained.stats.personal = set.holdout.as_ref().and_then(|rows| {
                            convoy_shared::eval::evaluate(
                                &job.spec,
                                &tuned,
                                rows,
                                &burn::prelude::Device::flex(),
                            )
                            .ok()
                        });
                        personal = Some(tuned);
                    }
                    let steps = trained.stats.steps;
                    let (update, encode_seconds, sent) =
                        encode::encode(trained, &job.base, job.data.len() as u64, &encoding)?;
                    let control = match &scaffold {
                        Some((c, own)) => Some(scaffold::client_step(
                            own,
                            c,
                            &sent,
                            steps,
                            job.task.lr,
                            trains,
                        )?),
                        None => None,
                    };
                    Ok(Finished::Update {
                        update,
                        encode_seconds,
                        control,
                    })
                }
                trainer::Progress::Paused(checkpoint) => Ok(Finished::Paused(checkpoint)),
            });
            TrainingDone {
                round,
                result,
                dataset: Some((key, set)),
                personal,
                measured,
            }
        };
        out.push(Action::Train(TrainOrder {
            round,
            work: Box::new(work),
        }));
        self.round = Round::Training {
            ready: Box::new(ready),
            cancel,
        };
        self.status(out, AgentState::Training, round, "training");
        Ok(())
    }

    pub(super) fn on_trained(
        &mut self,
        done: TrainingDone,
        out: &mut Vec<Action>,
    ) -> Result<(), AgentError> {
        let TrainingDone {
            round,
            result,
            dataset,
            personal,
            measured,
        } = done;
        if let Some(m) = measured {
            let t = self.throughput.get().refined(m.steps, m.flops, m.seconds);
            self.throughput.set(t);
        }
        let ready = match std::mem::take(&mut self.round) {
            Round::Training { ready, .. } if ready.announce.round == round => ready,
            other => {
                // A job abandoned for a newer round: its result is moot.
                self.round = other;
                return Ok(());
            }
        };
        if dataset.is_some() {
            self.dataset = dataset;
        }
        let (pending, encode_seconds) = match result {
            Ok(Finished::Update {
                update,
                encode_seconds,
                control,
            }) => {
                self.state.clear_checkpoint()?;
                if let Some(control) = &control {
                    // before the update: the receipt promotes it
                    self.state.save_pending_control(round, control)?;
                }
                (update, encode_seconds)
            }
            Ok(Finished::Paused(checkpoint)) => {
                let stored = StoredCheckpoint {
                    round,
                    base_version: ready.announce.base_version(),
                    checkpoint,
                };
                self.state.save_checkpoint(&stored)?;
                tracing::info!(
                    round,
                    steps = stored.checkpoint.steps,
                    "training paused by policy; checkpoint stored"
                );
                self.round = Round::Waiting(ready);
                self.status(
                    out,
                    AgentState::Idle,
                    round,
                    "paused by the training policy",
                );
                return Ok(());
            }
            Err(TrainError::Cancelled) => return Ok(()),
            Err(e) => {
                tracing::error!(round, error = %e, "training failed");
                self.fail(out, round, e.reason(), &e.to_string());
                return Ok(());
            }
        };
        // Persist before sending: after a power cut the update is re-sent,
        // never retrained and never lost.
        self.state.save_pending(&pending)?;
        if let Some(params) = personal {
            let base_version = ready.announce.base_version();
            self.state.save_personal(&StoredPersonal {
                base_version,
                params,
            })?;
        }
        tracing::debug!(
            round,
            bytes = pending.body.len(),
            encode_seconds,
            "update trained and stored"
        );
        // Between rounds the vehicle gets its memory back; the next round
        // reads the CSV again, with whatever the vehicle logged meanwhile.
        // (A paused round keeps its training set, so it resumes on the
        // same rows.)
        if matches!(self.data, crate::data::LocalData::Released { .. }) {
            self.dataset = None;
        }
        if self.config.faults.stop_after_persist {
            return Err(AgentError::FaultInjected("stop_after_persist"));
        }
        if self.config.faults.delay_upload_ms > 0 {
            out.push(Action::Delay(std::time::Duration::from_millis(
                self.config.faults.delay_upload_ms,
            )));
        }
        self.upload(&pending, out);
        Ok(())
    }
}

/// The seed of a vehicle's round: the same after a restart, so a resumed
/// or retrained round shuffles and sparsifies identically.
pub fn training_seed(client: &str, round: u64) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(client.as_bytes());
    h.update(&round.to_le_bytes());
    let bytes = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&bytes.as_bytes()[..8]);
    u64::from_le_bytes(first)
}
