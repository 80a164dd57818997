//! `models verify`: every stored version rebuilt and hashed again.

use super::*;

/// `models verify` takes no arguments of its own.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {}

/// Runs `models verify` against the database at `db`; the text to print.
pub fn run(db: &Path, _args: Args) -> anyhow::Result<String> {
    let found = verify(db)?;
    for p in &found.problems {
        eprintln!("MISMATCH {p}");
    }
    if !found.problems.is_empty() {
        anyhow::bail!(
            "{} of {} stored versions do not verify",
            found.problems.len(),
            found.checked
        );
    }
    Ok(format!("{} stored versions verify\n", found.checked))
}

/// What `verify` found.
#[derive(Debug, Default)]
pub struct Verification {
    /// Versions checked.
    pub checked: usize,
    /// One line per version that does not hold up.
    pub problems: Vec<String>,
}

/// Rebuilds every stored version (oldest first, each from its stored
/// keyframe, deltas or replayed updates) and checks it hashes to its id;
/// a mismatch names the chunk.
pub fn verify(db: &Path) -> Result<Verification, StoreError> {
    let store = Store::open_existing(db)?;
    let mut found = Verification::default();
    let mut cache = std::collections::HashMap::new();
    for row in store.versions()? {
        found.checked += 1;
        if let Err(why) = store.rebuild_cached(&row.version, Route::Stored, &mut cache) {
            found
                .problems
                .push(format!("{} (round {}): {why}", row.version, row.round));
        }
    }
    Ok(found)
}
