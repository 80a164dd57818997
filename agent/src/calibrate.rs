//! This device's training speed for the cost model: a fraction of a second
//! of synthetic training at start-up, timed as every round is.

use crate::config::TrainingConfig;
use crate::trainer::{Job, Progress, train};
use convoy_shared::cost::Throughput;
use convoy_shared::dataset::Dataset;
use convoy_shared::spec::{ModelSpec, Recipe};
use rand::{SeedableRng, rngs::StdRng};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// Rows of each synthetic calibration model's data set (one epoch).
const CALIBRATION_ROWS: usize = 1024;

/// This device's training [`Throughput`], measured once per process and
/// backend: one epoch each of two synthetic models (a tiny one, whose time
/// is almost all per-step cost, and a 256-256-10 one, mostly FLOPs), fitted
/// to a per-step cost plus a FLOP rate, timed as every round is (CPU time
/// of the training threads on a CPU, see [`crate::cpu_time`]). Takes a
/// fraction of a second; agents sharing a process (a simulated fleet)
/// share the measurement.
pub fn calibrate(limits: &TrainingConfig) -> Throughput {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static DONE: OnceLock<Mutex<HashMap<String, Throughput>>> = OnceLock::new();
    let key = format!("{:?}/{}", limits.backend, limits.threads);
    let cache = DONE.get_or_init(Default::default);
    // holding the lock while measuring: concurrent callers wait for it
    // rather than measure a machine their siblings are loading
    let mut known = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(t) = known.get(&key) {
        return *t;
    }
    let measured = measure(limits).unwrap_or_default();
    known.insert(key, measured);
    measured
}

fn measure(limits: &TrainingConfig) -> Option<Throughput> {
    let run = |inputs: usize, hidden: u32, classes: usize| -> Option<(u64, u64, f64)> {
        let features = (0..inputs)
            .map(|i| convoy_shared::spec::Feature::numeric(format!("x{i}"), 0.0, 1.0))
            .collect();
        let names: Vec<String> = (0..classes).map(|c| c.to_string()).collect();
        let spec = ModelSpec {
            features,
            heads: vec![convoy_shared::spec::Head::classification("y", names)],
            hidden: vec![hidden],
            init_seed: 1,
        };
        let mut csv = (0..inputs).map(|i| format!("x{i},")).collect::<String>() + "y\n";
        let mut rng = StdRng::seed_from_u64(7);
        for r in 0..CALIBRATION_ROWS {
            for _ in 0..inputs {
                csv.push_str(&format!("{:.3},", rand::Rng::random::<f32>(&mut rng)));
            }
            csv.push_str(&format!("{}\n", r % classes));
        }
        let table = convoy_shared::dataset::Table::read(csv.as_bytes()).ok()?;
        let data = Dataset::from_table(&table, &spec).ok()?;
        let job = Job {
            base: spec.init_params(),
            spec,
            task: Recipe {
                epochs: 1,
                lr: 0.01,
                batch_size: 32,
                clip_norm: 0.0,
            },
            data: Arc::new(data),
            seed: 1,
            objective: Default::default(),
            correction: None,
        };
        let never = AtomicBool::new(false);
        let unbounded = TrainingConfig {
            max_epochs: 0,
            max_batch: 0,
            ..limits.clone()
        };
        match train(&job, &unbounded, &never, &|_| false, None).ok()? {
            Progress::Done(t) => Some((t.stats.steps, t.stats.flops, t.stats.train_seconds)),
            Progress::Paused(_) => None,
        }
    };
    // a first pass warms caches and the allocator; it is not counted
    run(8, 8, 2)?;
    let small = run(8, 8, 2)?;
    let large = run(256, 256, 10)?;
    let fit = Throughput::fit(small, large);
    tracing::info!(
        flops_per_sec = fit.map(|t| t.flops_per_sec),
        step_secs = fit.map(|t| t.step_secs),
        "training throughput calibrated"
    );
    fit
}
