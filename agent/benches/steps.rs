//! Training throughput through the agent's own training path, per backend:
//! steps/s for the reference MLP (784-128-10) at batch 32 and 256 and for a
//! larger MLP (784-512-512-10), one CPU thread.
//!
//!   cargo bench -p convoy-agent --bench steps                   # CPU
//!   cargo bench -p convoy-agent --bench steps --features gpu    # CPU and GPU
//!
//! `STEPS=<n>` sets the timed steps per row (default 300). The GPU row
//! appears when the wgpu probe finds an adapter (Mesa's lavapipe counts).

use convoy_agent::backend;
use convoy_agent::config::{Backend, TrainingConfig};
use convoy_agent::trainer::{Job, Progress, train};
use convoy_shared::dataset::{Dataset, Targets};
use convoy_shared::spec::{ModelSpec, Recipe};
use rand::{Rng, SeedableRng, rngs::StdRng};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

const INPUTS: usize = 784;
const CLASSES: usize = 10;
const ROWS: usize = 4096;

fn spec(hidden: &[u32]) -> ModelSpec {
    ModelSpec::classifier(
        (0..INPUTS).map(|i| format!("px{i}")),
        "label",
        (0..CLASSES).map(|c| c.to_string()),
        hidden.to_vec(),
        1,
    )
}

/// Random inputs with labels a linear teacher assigns (learnable, so the
/// loss stays finite and the work is what real data costs).
fn data() -> Arc<Dataset> {
    let mut rng = StdRng::seed_from_u64(7);
    let teacher: Vec<f32> = (0..INPUTS * CLASSES)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let mut features = Vec::with_capacity(ROWS * INPUTS);
    let mut labels = Vec::with_capacity(ROWS);
    for _ in 0..ROWS {
        let x: Vec<f32> = (0..INPUTS).map(|_| rng.random_range(0.0..1.0)).collect();
        let label = (0..CLASSES)
            .map(|c| {
                (0..INPUTS)
                    .map(|i| x[i] * teacher[c * INPUTS + i])
                    .sum::<f32>()
            })
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map_or(0, |(c, _)| c as u32);
        features.extend(x);
        labels.push(label);
    }
    Arc::new(
        Dataset::from_arrays(features, INPUTS, Targets::Classes(labels))
            .expect("consistent arrays"),
    )
}

/// Trains `steps` (rounded up to whole epochs) and returns (steps, seconds).
fn run(
    spec: &ModelSpec,
    data: &Arc<Dataset>,
    backend: Backend,
    batch: u32,
    steps: usize,
) -> (u64, f64) {
    let per_epoch = ROWS.div_ceil(batch as usize);
    let job = Job {
        spec: spec.clone(),
        base: spec.init_params(),
        task: Recipe {
            epochs: steps.div_ceil(per_epoch) as u32,
            lr: 0.05,
            batch_size: batch,
            ..Default::default()
        },
        data: data.clone(),
        seed: 3,
        objective: Default::default(),
        correction: None,
    };
    let limits = TrainingConfig {
        threads: 1,
        backend,
        ..Default::default()
    };
    match train(&job, &limits, &AtomicBool::new(false), &|_| false, None) {
        Ok(Progress::Done(t)) => (t.stats.steps, t.stats.train_seconds),
        Ok(Progress::Paused(_)) => unreachable!("never asked to pause"),
        Err(e) => panic!("training failed: {e}"),
    }
}

fn main() {
    let steps: usize = std::env::var("STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let data = data();
    let mut backends = vec![Backend::Cpu];
    match &backend::probe().gpu {
        Ok(gpu) => {
            println!("GPU adapter: {}", gpu.name);
            backends.push(Backend::Gpu);
        }
        Err(why) => println!("no GPU row: {why}"),
    }
    println!(
        "\n{:<52} {:<18} {:>5} {:>6} {:>8} {:>9} {:>10}",
        "backend", "model", "batch", "steps", "seconds", "steps/s", "samples/s"
    );
    for (name, hidden) in [
        ("784-128-10", vec![128]),
        ("784-512-512-10", vec![512, 512]),
    ] {
        let spec = spec(&hidden);
        for batch in [32u32, 256] {
            for &b in &backends {
                // Warm-up (allocator, kernel compilation and autotuning on a GPU).
                run(&spec, &data, b, batch, 20);
                let (done, secs) = run(&spec, &data, b, batch, steps);
                println!(
                    "{:<52} {:<18} {:>5} {:>6} {:>8.2} {:>9.0} {:>10.0}",
                    backend::select(b).name,
                    name,
                    batch,
                    done,
                    secs,
                    done as f64 / secs,
                    done as f64 * batch as f64 / secs
                );
            }
        }
    }
}
