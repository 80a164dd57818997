//! `models rollback`: an older version made the fleet's current model.

use super::*;

/// `models rollback`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Version id or prefix.
    pub id: String,
}

/// Runs `models rollback` against the database at `db`; the text to print.
pub fn run(db: &Path, args: Args) -> anyhow::Result<String> {
    Ok(rollback(db, &args.id)?)
}

/// Makes version `id` the fleet's current model: the server announces it
/// when it next starts, every vehicle fetches it, and later rounds build on
/// it (the rollback is recorded; no version is deleted).
pub fn rollback(db: &Path, id: &str) -> Result<String, StoreError> {
    let store = Store::open(db)?;
    let hex = store.resolve_version(id)?;
    let v = store.load_version(&hex)?;
    let now = convoy_runtime::clock::now_ms();
    let before = store.current_version()?;
    store.rollback_to(&hex, now)?;
    Ok(format!(
        "the fleet's current model is now {hex} (round {}; was {}); a running server switches when it next starts (systemctl restart convoy-server)\n",
        v.round,
        before.as_deref().map_or("none", short)
    ))
}
