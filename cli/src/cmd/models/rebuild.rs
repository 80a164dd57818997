//! `models rebuild`: one version rebuilt by a chosen route, timed.

use super::*;

/// `models rebuild`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Version id or prefix.
    pub id: String,
    /// stored (however it is kept), weights (a), deltas (b) or replay (c).
    #[arg(
        long,
        default_value = "stored",
        value_parser = clap::builder::PossibleValuesParser::new(Route::ALL.map(|(name, _)| name))
    )]
    pub route: String,
}

/// Runs `models rebuild` against the database at `db`; the text to print.
pub fn run(db: &Path, args: Args) -> anyhow::Result<String> {
    Ok(rebuild(
        db,
        &args.id,
        args.route.parse().map_err(anyhow::Error::msg)?,
    )?)
}

/// Rebuilds version `id` by `route`, timed, and checks it hashes to its id.
pub fn rebuild(db: &Path, id: &str, route: Route) -> Result<String, StoreError> {
    let store = Store::open_existing(db)?;
    let hex = store.resolve_version(id)?;
    let row = store
        .version_row(&hex)?
        .ok_or_else(|| blob_error(db, format!("version {hex} has no row")))?;
    let started = std::time::Instant::now();
    let v = store.rebuild(&hex, route)?;
    let secs = started.elapsed().as_secs_f64();
    let steps = match route {
        Route::Weights => 0,
        Route::Replay => v.round,
        Route::Stored | Route::Deltas => row.depth as u64,
    };
    Ok(format!(
        "rebuilt {hex} (round {}) by route {} in {secs:.4} s ({steps} step(s)): it hashes to its id\n",
        v.round,
        route_name(route)
    ))
}

fn route_name(route: Route) -> &'static str {
    match route {
        Route::Stored => "stored",
        Route::Weights => "weights",
        Route::Deltas => "deltas",
        Route::Replay => "replay",
    }
}
