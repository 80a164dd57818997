//! The server's state, all in one SQLite database: rounds, the per-client
//! ledger, versions with their chunks, deltas and lineage, and rejections.

//!
//! | file | holds |
//! |---|---|
//! | `versions/` | published models: chunks, deltas, lineage, rebuild routes |
//! | `ledger.rs` | rounds, the per-vehicle ledger, rejections |
//! | `deploy.rs` | which model the fleet runs: the latest, or the best by the on-vehicle metric |
//! | `rows.rs` | the row types and the one place each meets its columns |
//! | `status.rs` | round and ledger statuses |
//! | `usage.rs` | per-vehicle figures, data used per day and month |
//! | `vehicles.rs` | provisioned vehicles: public keys and broker credentials |
//! | `schema.rs` | the tables and their numbered migrations |

mod deploy;
mod ledger;
mod rows;
mod schema;
mod status;
mod usage;
mod vehicles;
mod versions;

#[cfg(test)]
mod tests;

pub use deploy::{Deploy, Deployment, Scored};
pub use ledger::{OpenRoundState, Suspicion, TaskMetrics};
pub use rows::{ClientRow, RoundRow};
pub use schema::SCHEMA_VERSION;
pub use status::{ClientStatus, RoundStatus};
pub use usage::{LedgerTotals, Usage, VehicleSummary, budget_share, day_start_ms, month_start_ms};
pub use vehicles::VehicleRow;
pub use versions::{
    GcReport, LineageRow, Publication, Route, StorageKind, StorageTotals, StorePolicy,
    StoredVersion, VersionRow,
};

use rusqlite::Connection;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Storage failures.
#[derive(Debug, Error)]
pub enum StoreError {
    /// SQLite.
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    /// Blob files.
    #[error("model store {path}: {message}")]
    Blob {
        /// file
        path: PathBuf,
        /// what went wrong
        message: String,
    },
}

/// Handle on the database and blob folder.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    blobs: PathBuf,
    policy: StorePolicy,
}

/// ISO-8601 UTC text for Unix milliseconds.
pub fn iso8601(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let (year, month, day) = usage::civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// Unix ms of the ledger's `YYYY-MM-DDTHH:MM:SS.mmmZ` text.
pub fn parse_iso_ms(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' {
        return None;
    }
    let n = |from: usize, to: usize| text.get(from..to)?.parse::<u32>().ok();
    let days = usage::days_from_civil(i64::from(n(0, 4)?), n(5, 7)?, n(8, 10)?);
    let secs = n(11, 13)? * 3600 + n(14, 16)? * 60 + n(17, 19)?;
    let ms = if b.get(19) == Some(&b'.') {
        n(20, 23).unwrap_or(0)
    } else {
        0
    };
    let total = days * 86_400_000 + i64::from(secs) * 1000 + i64::from(ms);
    u64::try_from(total).ok()
}

impl Store {
    /// Opens or creates the database at `path` and its blob folder.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Blob {
                path: dir.to_path_buf(),
                message: e.to_string(),
            })?;
        }
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        schema::refuse_old_versions(&conn, path)?;
        schema::migrate(&conn)?;
        let blobs = PathBuf::from(format!("{}.models", path.display()));
        std::fs::create_dir_all(&blobs).map_err(|e| StoreError::Blob {
            path: blobs.clone(),
            message: e.to_string(),
        })?;
        Ok(Self {
            conn,
            blobs,
            policy: StorePolicy::default(),
        })
    }

    /// Opens an existing database read-only (for `report`).
    pub fn open_existing(path: &Path) -> Result<Self, StoreError> {
        if !path.exists() {
            return Err(StoreError::Blob {
                path: path.to_path_buf(),
                message: "no such database; pass the --db a server or demo wrote".into(),
            });
        }
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        let blobs = PathBuf::from(format!("{}.models", path.display()));
        Ok(Self {
            conn,
            blobs,
            policy: StorePolicy::default(),
        })
    }

    /// SQLite's `data_version`: it changes when another connection has
    /// committed since this one last asked, and costs no table read.
    pub fn data_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .pragma_query_value(None, "data_version", |r| r.get(0))?)
    }
}
