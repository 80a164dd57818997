//! Local training, on a thread of its own so the MQTT loop stays responsive.

use crate::config::TrainingConfig;
use burn::optim::{GradientsParams, SgdConfig, grad_clipping::GradientClippingConfig};
use convoy_shared::dataset::Dataset;
use convoy_shared::messages::{Objective, TrainStats};
use convoy_shared::model::{Mlp, to_tensors};
use convoy_shared::params::ParamSet;
use convoy_shared::spec::{ModelSpec, Recipe};
use rand::seq::SliceRandom;
use rand::{SeedableRng, rngs::StdRng};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use thiserror::Error;

/// Why training produced nothing.
#[derive(Debug, Error)]
pub enum TrainError {
    /// Parameters do not fit the spec.
    #[error("model does not fit its spec: {0}")]
    Params(#[from] convoy_shared::params::ParamError),
    /// Stopped before finishing (shutdown).
    #[error("training cancelled")]
    Cancelled,
    /// The run diverged.
    #[error("training diverged: loss became {0}")]
    Diverged(f32),
    /// The thread pool could not start.
    #[error("cannot start training threads: {0}")]
    Threads(String),
    /// The training thread died.
    #[error("training thread failed: {0}")]
    Thread(String),
    /// The local data cannot be used with this model.
    #[error("{0}")]
    Data(String),
    /// The update could not be serialised.
    #[error("cannot serialise the update: {0}")]
    Encode(String),
}

impl TrainError {
    /// The stable reason a failure report carries.
    pub fn reason(&self) -> &'static str {
        match self {
            TrainError::Params(_) => "params",
            TrainError::Cancelled => "cancelled",
            TrainError::Diverged(_) => "diverged",
            TrainError::Threads(_) | TrainError::Thread(_) => "thread",
            TrainError::Data(_) => "data",
            TrainError::Encode(_) => "encode",
        }
    }
}

/// One local training job.
#[derive(Debug, Clone)]
pub struct Job {
    /// Model architecture.
    pub spec: ModelSpec,
    /// Starting parameters (the round's base).
    pub base: ParamSet,
    /// Recipe from the round.
    pub task: Recipe,
    /// Local data.
    pub data: Arc<Dataset>,
    /// Shuffling seed.
    pub seed: u64,
    /// What is added to the loss (FedProx's proximal term).
    pub objective: Objective,
    /// SCAFFOLD's correction `c − cᵢ` (zero on tensors the vehicle does
    /// not train), added to every gradient; none outside SCAFFOLD rounds.
    pub correction: Option<Arc<ParamSet>>,
}

/// Where an interrupted training run stands: enough to continue it with
/// exactly the batches it had left (plain SGD keeps no optimiser state).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    /// Epoch in progress.
    pub epoch: u32,
    /// Next batch of that epoch.
    pub batch: u32,
    /// Parameters so far.
    pub params: ParamSet,
    /// Steps taken so far.
    pub steps: u64,
    /// Loss sum of the epoch in progress.
    pub loss_sum: f64,
    /// Batches of the epoch in progress so far.
    pub batches: u32,
    /// Mean loss of the last finished epoch.
    pub last_epoch_loss: f32,
    /// Seconds trained so far.
    pub train_seconds: f64,
}

/// How a training call ended.
#[derive(Debug, Clone)]
pub enum Progress {
    /// All epochs done.
    Done(Trained),
    /// Paused at a batch boundary; resume from the checkpoint.
    Paused(Checkpoint),
}

/// Trained parameters and what it took.
#[derive(Debug, Clone)]
pub struct Trained {
    /// Parameters after training.
    pub params: ParamSet,
    /// Measurements.
    pub stats: TrainStats,
}

/// What a training thread hands back when it ends.
pub type Outcome<T> = tokio::sync::oneshot::Receiver<Result<T, TrainError>>;

/// Runs `work` (training, then encoding) on a new OS thread, never on the
/// async runtime; the receiver resolves when it finishes (and errors if the
/// thread died).
pub fn spawn<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, TrainError> + Send + 'static,
) -> Result<Outcome<T>, TrainError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("convoy-train".into())
        .spawn(move || {
            let _ = tx.send(work());
        })
        .map_err(|e| TrainError::Thread(e.to_string()))?;
    Ok(rx)
}

/// Trains synchronously within `limits` (threads, epoch and batch caps),
/// from `resume` when given. Before each batch it checks `cancel` (stop,
/// nothing kept) and `should_pause(steps)` (stop, return a checkpoint).
pub fn train(
    job: &Job,
    limits: &TrainingConfig,
    cancel: &AtomicBool,
    should_pause: &(dyn Fn(u64) -> bool + Sync),
    resume: Option<&Checkpoint>,
) -> Result<Progress, TrainError> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(limits.threads.max(1))
        .thread_name(|i| format!("convoy-train-{i}"))
        .build()
        .map_err(|e| TrainError::Threads(e.to_string()))?;
    let compute = crate::backend::select(limits.backend);
    let on_cpu = compute.name == crate::backend::CPU_NAME;
    let watch = crate::cpu_time::Stopwatch::start(&pool, on_cpu);
    let mut progress =
        pool.install(|| train_in_pool(job, &compute, limits, cancel, should_pause, resume))?;
    let seconds = resume.map_or(0.0, |c| c.train_seconds) + watch.seconds(&pool);
    match &mut progress {
        Progress::Done(trained) => trained.stats.train_seconds = seconds,
        Progress::Paused(checkpoint) => checkpoint.train_seconds = seconds,
    }
    Ok(progress)
}

fn cap(asked: u32, limit: u32) -> u32 {
    if limit == 0 { asked } else { asked.min(limit) }
}

/// The visiting order of an epoch: a pure function of seed and epoch, so a
/// resumed run sees exactly the batches an uninterrupted one would.
fn epoch_order(len: usize, seed: u64, epoch: u32) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    order.shuffle(&mut StdRng::seed_from_u64(
        seed ^ u64::from(epoch).wrapping_mul(0x9e37_79b9_7f4a_7c15),
    ));
    order
}

/// The training loop; [`train`] times it.
fn train_in_pool(
    job: &Job,
    compute: &crate::backend::Compute,
    limits: &TrainingConfig,
    cancel: &AtomicBool,
    should_pause: &(dyn Fn(u64) -> bool + Sync),
    resume: Option<&Checkpoint>,
) -> Result<Progress, TrainError> {
    let device = compute.device.clone().autodiff();
    let start_params = resume.map_or(&job.base, |c| &c.params);
    let mut model = Mlp::from_params(&job.spec, start_params, &device)?;
    // Clipping each gradient's norm keeps one bad batch (an outlier row, an
    // unscaled column) from throwing the weights to infinity.
    let clipping =
        (job.task.clip_norm > 0.0).then_some(GradientClippingConfig::Norm(job.task.clip_norm));
    let mut optim = SgdConfig::new().with_gradient_clipping(clipping).init();
    // FedProx: μ/2 ‖w − w₀‖² pulls the weights toward the round's base
    let prox = match job.objective {
        Objective::Prox { mu } if mu > 0.0 => Some((
            Mlp::from_params(&job.spec, &job.base, &device)?,
            mu as f64 / 2.0,
        )),
        _ => None,
    };
    // SCAFFOLD: ⟨w, c − cᵢ⟩ adds the correction to every gradient
    let correction = match &job.correction {
        Some(c) => Some(Mlp::from_params(&job.spec, c, &device)?),
        None => None,
    };
    let epochs = cap(job.task.epochs.max(1), limits.max_epochs);
    let batch = cap(job.task.batch_size.max(1), limits.max_batch) as usize;
    let lr = job.task.lr as f64;
    let (mut steps, mut last_epoch_loss) =
        resume.map_or((0, 0.0), |c| (c.steps, c.last_epoch_loss));
    let first_epoch = resume.map_or(0, |c| c.epoch);
    for epoch in first_epoch..epochs {
        let order = epoch_order(job.data.len(), job.seed, epoch);
        let resuming = resume.filter(|c| c.epoch == epoch);
        let (mut loss_sum, mut batches) = resuming.map_or((0.0, 0), |c| (c.loss_sum, c.batches));
        let skip = resuming.map_or(0, |c| c.batch as usize);
        for (index, indices) in order.chunks(batch).enumerate().skip(skip) {
            if cancel.load(Ordering::Relaxed) {
                return Err(TrainError::Cancelled);
            }
            if should_pause(steps) {
                return Ok(Progress::Paused(Checkpoint {
                    epoch,
                    batch: index as u32,
                    params: model.to_params(),
                    steps,
                    loss_sum,
                    batches,
                    last_epoch_loss,
                    // set by `train`, which times the loop
                    train_seconds: 0.0,
                }));
            }
            let (x, y) = to_tensors(job.data.batch(indices), &device);
            let loss = model.loss(x, job.data.head(), &y, &device);
            let value = loss.clone().into_scalar::<f32>();
            if !value.is_finite() {
                return Err(TrainError::Diverged(value));
            }
            loss_sum += value as f64;
            batches += 1;
            let loss = match &prox {
                Some((anchor, half_mu)) => {
                    loss + model.distance_squared(anchor).mul_scalar(*half_mu)
                }
                None => loss,
            };
            let loss = match &correction {
                Some(c) => loss + model.dot(c),
                None => loss,
            };
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(lr, model, grads);
            steps += 1;
        }
        last_epoch_loss = (loss_sum / batches.max(1) as f64) as f32;
    }
    let samples = job.data.len() as u64;
    Ok(Progress::Done(Trained {
        params: model.to_params(),
        stats: TrainStats {
            // set by `train`, which times the loop
            train_seconds: 0.0,
            steps,
            epochs,
            loss: last_epoch_loss,
            flops: convoy_shared::cost::training_flops(&job.spec, job.data.head(), samples, epochs),
            device: compute.name.clone(),
            ..Default::default()
        },
    }))
}

/// Fine-tunes only the output head of `base` for `steps` SGD steps on
/// `data` (batches of the recipe's size, its learning rate, in a seeded
/// order): the vehicle's personalised model.
pub fn fine_tune_head(
    spec: &ModelSpec,
    base: &ParamSet,
    data: &Dataset,
    recipe: &Recipe,
    steps: u32,
    seed: u64,
    limits: &TrainingConfig,
) -> Result<ParamSet, TrainError> {
    let device = crate::backend::select(limits.backend).device.autodiff();
    let mut model = Mlp::from_params(spec, base, &device)?.freeze_trunk();
    let clipping =
        (recipe.clip_norm > 0.0).then_some(GradientClippingConfig::Norm(recipe.clip_norm));
    let mut optim = SgdConfig::new().with_gradient_clipping(clipping).init();
    let batch = cap(recipe.batch_size.max(1), limits.max_batch) as usize;
    let mut done = 0;
    let mut epoch = 0;
    while done < steps && !data.is_empty() {
        for indices in epoch_order(data.len(), seed, epoch).chunks(batch) {
            if done == steps {
                break;
            }
            let (x, y) = to_tensors(data.batch(indices), &device);
            let loss = model.loss(x, data.head(), &y, &device);
            let value = loss.clone().into_scalar::<f32>();
            if !value.is_finite() {
                return Err(TrainError::Diverged(value));
            }
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(recipe.lr as f64, model, grads);
            done += 1;
        }
        epoch += 1;
    }
    Ok(model.to_params())
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::prelude::Device;
    use convoy_shared::dataset::Table;
    use convoy_shared::eval::{Evaluation, evaluate};
    use convoy_shared::spec::TaskKind;

    /// Trains on `rows` of (a, b, y) for `epochs`; returns the evaluations
    /// before and after, and the training result.
    fn fit(
        rows: impl Fn(f32, f32) -> f32,
        task: TaskKind,
        epochs: u32,
        lr: f32,
    ) -> (Evaluation, Evaluation, Trained) {
        let mut csv = String::from("a,b,y\n");
        let mut rng = StdRng::seed_from_u64(2);
        for _ in 0..400 {
            let a: f32 = rand::Rng::random_range(&mut rng, -1.0..1.0);
            let b: f32 = rand::Rng::random_range(&mut rng, -1.0..1.0);
            csv.push_str(&format!("{a},{b},{}\n", rows(a, b)));
        }
        let table = Table::read(csv.as_bytes()).unwrap();
        let spec = table.derive_spec("y", task, vec![8], 3).unwrap();
        let data = Arc::new(Dataset::from_table(&table, &spec).unwrap());
        let base = spec.init_params();
        let before = evaluate(&spec, &base, &data, &Device::flex()).unwrap();
        let job = Job {
            spec: spec.clone(),
            base,
            task: Recipe {
                epochs,
                lr,
                batch_size: 16,
                ..Default::default()
            },
            data: data.clone(),
            seed: 9,
            objective: Default::default(),
            correction: None,
        };
        let trained = done(train(
            &job,
            &TrainingConfig::default(),
            &AtomicBool::new(false),
            &|_| false,
            None,
        ));
        let after = evaluate(&spec, &trained.params, &data, &Device::flex()).unwrap();
        (before, after, trained)
    }

    #[test]
    fn training_lowers_loss_on_a_learnable_task() {
        // y = 1 when a + b > 0: linearly separable
        let (before, after, trained) = fit(
            |a, b| f32::from(a + b > 0.0),
            TaskKind::Classification,
            5,
            0.1,
        );
        assert!(after.loss < before.loss * 0.8, "{before:?} -> {after:?}");
        assert!(after.accuracy.unwrap() > 0.9, "{after:?}");
        assert_eq!(trained.stats.steps, 5 * 25);
    }

    #[test]
    fn regression_lowers_rmse() {
        // y = 2a - b + 0.5, noise-free
        let (before, after, _) = fit(|a, b| 2.0 * a - b + 0.5, TaskKind::Regression, 20, 0.05);
        assert!(before.accuracy.is_none() && after.rmse.is_some());
        assert!(
            after.rmse.unwrap() < before.rmse.unwrap() * 0.3,
            "{before:?} -> {after:?}"
        );
    }

    fn done(result: Result<Progress, TrainError>) -> Trained {
        match result.unwrap() {
            Progress::Done(t) => t,
            Progress::Paused(c) => panic!("paused at {c:?}"),
        }
    }

    /// 200 rows of (a, b, a parity label) and a spec with 6 hidden units.
    fn parity_table() -> (Table, ModelSpec) {
        let table = Table::read(
            (0..200)
                .map(|i| format!("{},{},{}\n", i % 7, i % 5, i % 2))
                .fold(String::from("a,b,y\n"), |acc, line| acc + &line)
                .as_bytes(),
        )
        .unwrap();
        let spec = table
            .derive_spec("y", TaskKind::Classification, vec![6], 5)
            .unwrap();
        (table, spec)
    }

    #[test]
    fn paused_and_resumed_training_equals_uninterrupted_training() {
        let (table, spec) = parity_table();
        let job = Job {
            base: spec.init_params(),
            spec: spec.clone(),
            task: Recipe {
                epochs: 3,
                lr: 0.1,
                batch_size: 16,
                ..Default::default()
            },
            data: Arc::new(Dataset::from_table(&table, &spec).unwrap()),
            seed: 11,
            objective: Default::default(),
            correction: None,
        };
        let limits = TrainingConfig::default();
        let never = AtomicBool::new(false);
        let whole = done(train(&job, &limits, &never, &|_| false, None));
        // pause mid-epoch (13 batches an epoch: step 20 is inside epoch 2),
        // then again, then finish
        let Progress::Paused(first) =
            train(&job, &limits, &never, &|steps| steps == 20, None).unwrap()
        else {
            panic!("should pause")
        };
        assert_eq!((first.epoch, first.batch, first.steps), (1, 7, 20));
        let Progress::Paused(second) =
            train(&job, &limits, &never, &|steps| steps == 30, Some(&first)).unwrap()
        else {
            panic!("should pause again")
        };
        let resumed = done(train(&job, &limits, &never, &|_| false, Some(&second)));
        assert_eq!(resumed.params, whole.params, "no batch lost or repeated");
        assert_eq!(resumed.stats.steps, whole.stats.steps);
        assert_eq!(resumed.stats.loss, whole.stats.loss);
    }

    /// One epoch of full-batch plain SGD at `lr` on the parity table, from
    /// the spec's initial weights, no clipping.
    fn plain_parity_job(lr: f32) -> Job {
        let (table, spec) = parity_table();
        Job {
            base: spec.init_params(),
            spec: spec.clone(),
            task: Recipe {
                epochs: 1,
                lr,
                batch_size: 100,
                clip_norm: 0.0,
            },
            data: Arc::new(Dataset::from_table(&table, &spec).unwrap()),
            seed: 11,
            objective: Objective::Plain,
            correction: None,
        }
    }

    /// FedProx on a known answer: the proximal gradient is zero at the
    /// base, so the first step is plain SGD's; the second differs from
    /// plain SGD's by exactly `lr μ (w₁ − w₀)`.
    #[test]
    fn the_proximal_term_adds_exactly_its_gradient() {
        let (lr, mu) = (0.1f32, 2.0f32);
        let plain = plain_parity_job(lr);
        let prox = Job {
            objective: Objective::Prox { mu },
            ..plain.clone()
        };
        let (limits, never) = (TrainingConfig::default(), AtomicBool::new(false));
        let Progress::Paused(w1) =
            train(&prox, &limits, &never, &|steps| steps == 1, None).unwrap()
        else {
            panic!("should pause after one step")
        };
        let w2_plain = done(train(&plain, &limits, &never, &|_| false, None)).params;
        let w2_prox = done(train(&prox, &limits, &never, &|_| false, None)).params;
        let w0 = &plain.base;
        let mut moved = 0.0f32;
        for (((p, x), a), b) in w2_plain
            .values()
            .zip(w2_prox.values())
            .zip(w1.params.values())
            .zip(w0.values())
        {
            let want = p - lr * mu * (a - b);
            assert!((x - want).abs() < 1e-5, "{x} vs {want}");
            moved += (a - b).abs();
        }
        assert!(
            moved > 0.0,
            "the first step moved nothing: the check is empty"
        );
    }

    /// SCAFFOLD on a known answer: from the same base, the first step with
    /// a correction `g` lands exactly `lr · g` from plain SGD's.
    #[test]
    fn the_scaffold_correction_adds_exactly_its_gradient() {
        let lr = 0.1f32;
        let plain = plain_parity_job(lr);
        let spec = plain.spec.clone();
        let mut g = ParamSet::zeros(&spec.layout());
        g.values_mut()
            .enumerate()
            .for_each(|(i, v)| *v = (i % 7) as f32 * 0.01 - 0.03);
        let corrected = Job {
            correction: Some(Arc::new(g.clone())),
            ..plain.clone()
        };
        let (limits, never) = (TrainingConfig::default(), AtomicBool::new(false));
        let first = |job: &Job| match train(job, &limits, &never, &|steps| steps == 1, None) {
            Ok(Progress::Paused(c)) => c.params,
            _ => panic!("should pause after one step"),
        };
        let (p, c) = (first(&plain), first(&corrected));
        for ((p, c), g) in p.values().zip(c.values()).zip(g.values()) {
            let want = p - lr * g;
            assert!((c - want).abs() < 1e-6, "{c} vs {want}");
        }
    }

    #[test]
    fn cancel_stops_training() {
        let table = Table::read("a,y\n1,0\n2,1\n".as_bytes()).unwrap();
        let spec = table
            .derive_spec("y", TaskKind::Classification, vec![], 3)
            .unwrap();
        let job = Job {
            base: spec.init_params(),
            spec: spec.clone(),
            task: Recipe {
                epochs: 1,
                lr: 0.1,
                batch_size: 1,
                ..Default::default()
            },
            data: Arc::new(Dataset::from_table(&table, &spec).unwrap()),
            seed: 1,
            objective: Default::default(),
            correction: None,
        };
        let r = train(
            &job,
            &TrainingConfig::default(),
            &AtomicBool::new(true),
            &|_| false,
            None,
        );
        assert!(matches!(r, Err(TrainError::Cancelled)));
    }
}
