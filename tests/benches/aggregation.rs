//! Time and memory of each aggregation rule on one round of updates of the
//! benchmark's MLP (784-128-10, 101,770 parameters): n updates, each rule
//! given a memory limit for the update values it holds at once (beyond it,
//! the rules work block by block, loading every update again per block).
//!
//!   cargo bench --workspace --bench aggregation
//!
//! Prints a table: rule, updates, memory limit, bytes of update values held
//! at most, and seconds per aggregation (median of 3). Updates are loaded
//! from memory here; in the server each block decodes them again.

use convoy_shared::params::ParamSet;
use convoy_shared::spec::{Feature, Head, ModelSpec};
use convoy_shared::strategy::robust::{Member, Rule, aggregate};
use convoy_shared::units::human_bytes;
use rand::{Rng, SeedableRng, rngs::StdRng};
use std::time::Instant;

fn main() {
    let spec = ModelSpec {
        features: (0..784)
            .map(|i| Feature::numeric(format!("p{i}"), 0.0, 1.0))
            .collect(),
        heads: vec![Head::classification(
            "label",
            (0..10).map(|c| c.to_string()),
        )],
        hidden: vec![128],
        init_seed: 1,
    };
    let layout = spec.layout();
    let base = ParamSet::zeros(&layout);
    let mut rng = StdRng::seed_from_u64(42);
    let pool: Vec<ParamSet> = (0..20)
        .map(|_| {
            let mut p = ParamSet::zeros(&layout);
            p.values_mut()
                .for_each(|v| *v = rng.random_range(-0.01..0.01));
            p
        })
        .collect();
    println!(
        "{} parameters ({} as f32 per update)\n",
        layout.numel(),
        human_bytes(layout.numel() as u64 * 4)
    );
    println!(
        "{:<18} {:>7} {:>10} {:>10} {:>9}",
        "rule", "updates", "limit", "held", "seconds"
    );
    let rules = [
        Rule::FedAvg,
        Rule::Cosine { floor: 0.0 },
        Rule::TrimmedMean { trim: 0.25 },
        Rule::Median,
        Rule::Krum { byzantine: 0 },
    ];
    for n in [4usize, 20, 100] {
        for rule in rules {
            for limit in [256usize << 20, 2 << 20] {
                let members = vec![
                    Member {
                        head: 0,
                        weight: 1.0,
                        scale: 1.0,
                    };
                    n
                ];
                let mut times = Vec::new();
                let mut held = 0;
                for _ in 0..3 {
                    let started = Instant::now();
                    let out =
                        aggregate::<()>(&rule, &spec, &base, 1.0, &members, limit, |i, into| {
                            into.clone_from(&pool[i % pool.len()]);
                            Ok(())
                        })
                        .expect("aggregates")
                        .expect("has weight");
                    times.push(started.elapsed().as_secs_f64());
                    held = if rule == Rule::FedAvg {
                        0
                    } else {
                        out.peak_bytes
                    };
                }
                times.sort_by(f64::total_cmp);
                let held = if rule == Rule::FedAvg {
                    "O(model)".to_string()
                } else {
                    human_bytes(held as u64)
                };
                println!(
                    "{:<18} {:>7} {:>10} {:>10} {:>9.3}",
                    rule.to_string(),
                    n,
                    human_bytes(limit as u64),
                    held,
                    times[1]
                );
            }
        }
    }
}
