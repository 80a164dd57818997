//! `models transfer`: the bytes of each way between two versions.

use super::*;

/// `models transfer`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The version the vehicle holds.
    pub from: String,
    /// The version it should get (default: the fleet's current model).
    pub to: Option<String>,
}

/// Runs `models transfer` against the database at `db`; the text to print.
pub fn run(db: &Path, args: Args) -> anyhow::Result<String> {
    Ok(transfer(db, &args.from, args.to.as_deref())?)
}

/// Bytes of each way to bring a vehicle from version `from` to `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct TransferCost {
    /// Versions between them along the lineage (`None`: not an ancestor).
    pub behind: Option<usize>,
    /// The whole model.
    pub full: u64,
    /// The chunks of `to` whose content `from` lacks.
    pub missing_chunks: u64,
    /// The chain of stored deltas, when every step has one.
    pub delta_chain: Option<u64>,
    /// What the server sends: the fewest of the above.
    pub cheapest: u64,
    /// What it sent before chains: a one-step delta, else the missing chunks.
    pub one_step_or_chunks: u64,
}

/// What moving a vehicle from `from` to `to` costs by each route, as the
/// server's planner counts it (model payload bytes).
pub fn transfer_cost(store: &Store, from: &str, to: &str) -> Result<TransferCost, StoreError> {
    let a = store.load_version(from)?;
    let b = store.load_version(to)?;
    let held: std::collections::HashSet<[u8; 32]> = a.manifest.chunks.iter().copied().collect();
    let missing_chunks: u64 = b
        .manifest
        .chunks
        .iter()
        .enumerate()
        .filter(|(_, h)| !held.contains(*h))
        .map(|(i, _)| {
            let start = i * MODEL_CHUNK_SIZE;
            ((start + MODEL_CHUNK_SIZE).min(b.manifest.total_len as usize) - start) as u64
        })
        .sum();
    let chain = store.delta_chain(from, to, 10_000)?;
    let behind = match &chain {
        Some(c) => Some(c.len()),
        None => lineage_distance(store, from, to)?,
    };
    let delta_chain = chain
        .as_ref()
        .and_then(|c| postcard::to_allocvec(c).ok())
        .map(|b| b.len() as u64);
    let cheapest = delta_chain.map_or(missing_chunks, |d| d.min(missing_chunks));
    let one_step_or_chunks = match (behind, delta_chain) {
        (Some(1), Some(d)) => d,
        _ => missing_chunks,
    };
    Ok(TransferCost {
        behind,
        full: b.manifest.total_len as u64,
        missing_chunks,
        delta_chain,
        cheapest,
        one_step_or_chunks,
    })
}

fn lineage_distance(store: &Store, from: &str, to: &str) -> Result<Option<usize>, StoreError> {
    let mut at = Some(to.to_string());
    let mut steps = 0;
    while let Some(v) = at {
        if v == from {
            return Ok(Some(steps));
        }
        at = store.version_row(&v)?.and_then(|r| r.parent);
        steps += 1;
    }
    Ok(None)
}

/// `models transfer FROM [TO]`: the bytes of each route from one version
/// to another (default: the fleet's current model).
pub fn transfer(db: &Path, from: &str, to: Option<&str>) -> Result<String, StoreError> {
    let store = Store::open_existing(db)?;
    let from = store.resolve_version(from)?;
    let to = match to {
        Some(t) => store.resolve_version(t)?,
        None => store
            .current_version()?
            .ok_or_else(|| blob_error(db, "the database holds no version"))?,
    };
    let c = transfer_cost(&store, &from, &to)?;
    let mut out = format!(
        "{} -> {} ({})\n",
        short(&from),
        short(&to),
        c.behind
            .map_or("not on its lineage".to_string(), |n| format!(
                "{n} version(s) behind"
            ))
    );
    aligned_lines(
        &mut out,
        &[
            ("full model", human_bytes(c.full)),
            ("missing chunks", human_bytes(c.missing_chunks)),
            (
                "delta chain",
                c.delta_chain
                    .map_or("- (a step has no stored delta)".into(), human_bytes),
            ),
            ("sent", format!("{} (the fewest)", human_bytes(c.cheapest))),
            (
                "without chains",
                format!(
                    "{} (a one-step delta, else the missing chunks)",
                    human_bytes(c.one_step_or_chunks)
                ),
            ),
        ],
    );
    Ok(out)
}
