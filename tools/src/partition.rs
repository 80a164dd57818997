//! Spreading a data set's rows over simulated vehicles: equal shares, label
//! skew, pathological label shards or quantity skew, each a pure function
//! of its seed so runs repeat.

use convoy_shared::dataset::Targets;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng, rngs::StdRng};
use rand_distr::{Distribution, Gamma};

/// How the training rows are spread over clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Partition {
    /// Shuffled, equal shares.
    Iid,
    /// Label skew: each class spread by Dirichlet(alpha).
    Dirichlet,
    /// Quantity skew: client sizes by Dirichlet(alpha), labels mixed.
    Quantity,
    /// Pathological label skew (McMahan et al. 2017): the rows sorted by
    /// label are cut into `clients × k` equal shards and each client gets
    /// k at random, so it sees about k classes.
    Shards,
}

/// Row indices per client.
///
/// `alpha` is the Dirichlet concentration of `Dirichlet` and `Quantity`;
/// `shards` the shards per client of `Shards`.
pub fn partition(
    targets: &Targets,
    clients: usize,
    scheme: Partition,
    (alpha, shards): (f64, usize),
    seed: u64,
) -> Vec<Vec<usize>> {
    let n = targets.len();
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    match scheme {
        Partition::Iid => {
            let mut order: Vec<usize> = (0..n).collect();
            order.shuffle(&mut rng);
            (0..clients)
                .map(|c| order.iter().skip(c).step_by(clients).copied().collect())
                .collect()
        }
        Partition::Dirichlet => {
            let labels: Vec<String> = match targets {
                Targets::Classes(c) => c.iter().map(|c| c.to_string()).collect(),
                Targets::Values(v) => v.iter().map(|_| String::new()).collect(),
            };
            dirichlet_split(&labels, clients, alpha, seed, 10)
        }
        Partition::Quantity => {
            let shares = dirichlet_shares(&mut rng, clients, alpha, 1e-9);
            let min = 10.min(n / clients.max(1));
            let spare = n - min * clients;
            let mut order: Vec<usize> = (0..n).collect();
            order.shuffle(&mut rng);
            let mut parts = Vec::new();
            let mut start = 0;
            for (c, share) in shares.iter().enumerate() {
                let len = if c + 1 == clients {
                    n - start
                } else {
                    min + (share * spare as f64) as usize
                };
                parts.push(order[start..(start + len).min(n)].to_vec());
                start = (start + len).min(n);
            }
            parts
        }
        Partition::Shards => {
            let mut order: Vec<usize> = (0..n).collect();
            // shuffled first, so the rows of one class are in random order
            order.shuffle(&mut rng);
            if let Targets::Classes(c) = targets {
                order.sort_by_key(|i| c[*i]);
            }
            let count = clients * shards.max(1);
            let mut ids: Vec<usize> = (0..count).collect();
            ids.shuffle(&mut rng);
            let mut parts = vec![Vec::new(); clients];
            for (k, shard) in ids.into_iter().enumerate() {
                let (from, to) = (shard * n / count, (shard + 1) * n / count);
                parts[k % clients].extend_from_slice(&order[from..to]);
            }
            parts
        }
    }
}

/// Splits row indices by label with a Dirichlet(alpha) share per client.
/// Every client gets at least `min_rows` (redrawn until so, then topped up).
pub fn dirichlet_split(
    labels: &[String],
    clients: usize,
    alpha: f64,
    seed: u64,
    min_rows: usize,
) -> Vec<Vec<usize>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut classes: Vec<&String> = labels.iter().collect();
    classes.sort();
    classes.dedup();
    let mut parts = vec![Vec::new(); clients];
    for attempt in 0..100 {
        parts = vec![Vec::new(); clients];
        for class in &classes {
            let mut rows: Vec<usize> = (0..labels.len())
                .filter(|i| &labels[*i] == *class)
                .collect();
            rows.shuffle(&mut rng);
            let shares = dirichlet_shares(&mut rng, clients, alpha, 1e-12);
            let mut start = 0;
            let mut acc = 0.0;
            for (c, share) in shares.iter().enumerate() {
                acc += share;
                let end = if c + 1 == clients {
                    rows.len()
                } else {
                    (acc * rows.len() as f64).round() as usize
                };
                parts[c].extend_from_slice(&rows[start..end.max(start)]);
                start = end.max(start);
            }
        }
        if parts.iter().all(|p| p.len() >= min_rows) || attempt == 99 {
            break;
        }
    }
    // top up starved clients from the largest ones so nobody has nothing
    for c in 0..clients {
        while parts[c].len() < min_rows {
            let donor = (0..clients).max_by_key(|i| parts[*i].len()).unwrap_or(0);
            if donor == c || parts[donor].len() <= min_rows {
                break;
            }
            let pick = rng.random_range(0..parts[donor].len());
            let row = parts[donor].remove(pick);
            parts[c].push(row);
        }
    }
    parts
}

/// One draw from a symmetric Dirichlet(alpha) over `clients`: Gamma(alpha, 1)
/// draws normalised to sum to one. `floor` is added to each draw first, as a
/// tiny alpha can make every draw underflow to zero.
fn dirichlet_shares(rng: &mut StdRng, clients: usize, alpha: f64, floor: f64) -> Vec<f64> {
    let gamma = Gamma::new(alpha.max(1e-3), 1.0).expect("alpha clamped positive");
    let weights: Vec<f64> = (0..clients).map(|_| gamma.sample(rng) + floor).collect();
    let total: f64 = weights.iter().sum();
    weights.iter().map(|w| w / total).collect()
}
