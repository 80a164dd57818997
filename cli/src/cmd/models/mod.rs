//! `convoy-server models`: what the store holds and what can be proven
//! about it. `list` and `show` say what each version is and where it came
//! from; `verify` recomputes every stored version's Merkle root and names
//! the chunk that no longer matches; `diff` compares two versions tensor by
//! tensor, chunk by chunk and in their pipeline specs; `export` writes a
//! self-contained bundle (weights + spec + recipe, checksummed) that
//! `import` takes back under the same id.

use crate::table::{Format, aligned_lines, table};
use convoy_shared::spec::{Encoding, ModelSpec};
use convoy_shared::units::human_bytes;
use convoy_shared::version::{self, MODEL_CHUNK_SIZE};
use convoy_store::{Publication, Route, Store, StoreError, StoredVersion, VersionRow};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// `convoy-server models`' arguments: where the store is, and what to do.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    store: super::DbArgs,
    #[command(subcommand)]
    action: Action,
}

/// The `models` subcommands, one file each.
#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// Every stored version, oldest first.
    List(list::Args),
    /// One version: spec, recipe, lineage, metrics, storage, contributors.
    Show(show::Args),
    /// Rebuild every stored version and recompute its Merkle root; exits 1
    /// on a mismatch, naming the chunk.
    Verify(verify::Args),
    /// Spec differences, changed chunks and per-tensor change between two versions.
    Diff(diff::Args),
    /// Write a version as a self-contained bundle (weights + spec + recipe).
    Export(export::Args),
    /// Add a bundle's version to the database under its own id.
    Import(import::Args),
    /// Score a version on a CSV through its own pipeline, per head the CSV labels.
    Eval(eval::Args),
    /// Drop what no retained version needs: unreferenced chunks, deltas
    /// and kept updates, and with --keep the versions older than the newest
    /// N (never the current model, one a vehicle holds, or one a kept
    /// version is rebuilt from).
    Gc(gc::Args),
    /// Rebuild a version by a recoverability route, timed, and check its id.
    Rebuild(rebuild::Args),
    /// Bytes of each way to move a vehicle between two versions.
    Transfer(transfer::Args),
    /// What the store holds, and what keeping every version by each
    /// recoverability route would take.
    Storage(storage::Args),
    /// Which model every vehicle holds, and how far behind the fleet it is.
    Fleet(fleet::Args),
    /// Make an older version the fleet's current model (from the server's next start).
    Rollback(rollback::Args),
}

/// Runs one `models` subcommand and prints what it says.
pub fn run(args: Args) -> anyhow::Result<()> {
    let db = args.store.db()?;
    let db = db.as_path();
    let text = match args.action {
        Action::List(a) => list::run(db, a)?,
        Action::Show(a) => show::run(db, a)?,
        Action::Verify(a) => verify::run(db, a)?,
        Action::Diff(a) => diff::run(db, a)?,
        Action::Export(a) => export::run(db, a)?,
        Action::Import(a) => import::run(db, a)?,
        Action::Eval(a) => eval::run(db, a)?,
        Action::Gc(a) => gc::run(db, a)?,
        Action::Rebuild(a) => rebuild::run(db, a)?,
        Action::Transfer(a) => transfer::run(db, a)?,
        Action::Storage(a) => storage::run(db, a)?,
        Action::Fleet(a) => {
            // the config's rule unless the command names one
            let rule = match a.deploy {
                Some(rule) => rule,
                None => args
                    .store
                    .server_config()?
                    .map_or_else(Default::default, |c| c.rounds.deploy),
            };
            fleet::run(db, a, rule)?
        }
        Action::Rollback(a) => rollback::run(db, a)?,
    };
    print!("{text}");
    Ok(())
}

mod bundle;
mod diff;
mod eval;
mod export;
mod fleet;
mod gc;
mod import;
mod list;
mod rebuild;
mod rollback;
mod show;
mod storage;
mod transfer;
mod verify;

pub use bundle::{BUNDLE_MAGIC, bundle, read_bundle};
pub use diff::diff;
pub use eval::eval;
pub use export::export;
pub use fleet::{Holding, fleet};
pub use gc::{GC_GRACE, gc};
pub use import::import;
pub use list::list;
pub use rebuild::rebuild;
pub use rollback::rollback;
pub use show::show;
pub use storage::{RouteStorage, route_storage, storage};
pub use transfer::{TransferCost, transfer, transfer_cost};
pub use verify::{Verification, verify};

fn blob_error(path: &Path, message: impl Into<String>) -> StoreError {
    StoreError::Blob {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// The first 12 hex digits of an id, as tables show it.
fn short(hex: &str) -> &str {
    &hex[..12.min(hex.len())]
}

fn metric(row: &VersionRow) -> String {
    match (row.accuracy, row.rmse) {
        (Some(a), _) => format!("{:.2}%", a * 100.0),
        (None, Some(r)) => format!("rmse {r:.4}"),
        _ => "-".into(),
    }
}

#[cfg(test)]
mod tests;
