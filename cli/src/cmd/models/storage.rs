//! `models storage`: what the store holds and what each route would take.

use super::*;

/// `models storage` takes no arguments of its own.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {}

/// Runs `models storage` against the database at `db`; the text to print.
pub fn run(db: &Path, _args: Args) -> anyhow::Result<String> {
    Ok(storage(db)?)
}

/// What keeping every version by each recoverability route costs, bytes.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct RouteStorage {
    /// Versions.
    pub versions: usize,
    /// (a) Every version's weights (unique chunks) and description.
    pub weights: u64,
    /// (b) Each line's first keyframe, every delta, every description
    /// (`None` when a version lacks a delta).
    pub deltas: Option<u64>,
    /// (c) Every description and every round's kept updates (`None` when
    /// a round's updates were not kept).
    pub replay: Option<u64>,
    /// What the store actually holds for versions under its policy.
    pub stored: u64,
    /// Kept updates (audit; route c).
    pub kept_updates: u64,
}

/// Storage of each recoverability route for the versions in `store`.
pub fn route_storage(store: &Store) -> Result<RouteStorage, StoreError> {
    let rows = store.versions()?;
    let totals = store.storage()?;
    let mut unique = std::collections::HashMap::new();
    let (mut deltas, mut missing_delta, mut missing_updates) = (0u64, false, false);
    let mut roots = 0u64;
    for row in &rows {
        let v = store.load_version(&row.version)?;
        for (i, h) in v.manifest.chunks.iter().enumerate() {
            let start = i * MODEL_CHUNK_SIZE;
            let len = (start + MODEL_CHUNK_SIZE).min(v.manifest.total_len as usize) - start;
            unique.insert(*h, len as u64);
        }
        match (&row.parent, store.delta(&row.version)?) {
            (None, _) => roots += row.bytes,
            (Some(_), Some(d)) => deltas += d.bytes.len() as u64,
            (Some(_), None) => missing_delta = true,
        }
        if row.parent.is_some() && store.lineage(&row.version)?.is_empty() {
            missing_updates = true;
        }
    }
    let meta = totals.meta_bytes;
    let replay_ok = !missing_updates && totals.update_bytes > 0;
    Ok(RouteStorage {
        versions: rows.len(),
        weights: unique.values().sum::<u64>() + meta,
        deltas: (!missing_delta).then_some(roots + deltas + meta),
        replay: replay_ok.then_some(totals.update_bytes + meta),
        stored: totals.versions(),
        kept_updates: totals.update_bytes,
    })
}

/// `models storage`: what the store holds and what each route would take.
pub fn storage(db: &Path) -> Result<String, StoreError> {
    let store = Store::open_existing(db)?;
    let r = route_storage(&store)?;
    let t = store.storage()?;
    let kinds = store
        .versions()?
        .into_iter()
        .fold([0usize; 3], |mut k, row| {
            k[row.kind as usize] += 1;
            k
        });
    let opt = |v: Option<u64>, why: &str| v.map_or(format!("- ({why})"), human_bytes);
    let mut out = format!(
        "{} version(s): {} keyframe(s), {} delta(s), {} replay(s)\n",
        r.versions, kinds[0], kinds[1], kinds[2]
    );
    let _ = writeln!(
        out,
        "stored     {} (chunks {}, deltas {}, descriptions {}) + kept updates {}",
        human_bytes(r.stored),
        human_bytes(t.chunk_bytes),
        human_bytes(t.delta_bytes),
        human_bytes(t.meta_bytes),
        human_bytes(r.kept_updates)
    );
    let _ = writeln!(
        out,
        "route (a)  weights + spec of every version:     {}",
        human_bytes(r.weights)
    );
    let _ = writeln!(
        out,
        "route (b)  first keyframe + every delta:        {}",
        opt(r.deltas, "a version has no stored delta")
    );
    let _ = writeln!(
        out,
        "route (c)  recipe + every round's updates:      {}",
        opt(r.replay, "updates not kept: store.keep_updates")
    );
    Ok(out)
}
