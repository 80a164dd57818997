//! The server's state, all in one SQLite database: rounds, the per-client
//! ledger, versions with their chunks, deltas and lineage, and rejections.

//!
//! | file | holds |
//! |---|---|
//! | `versions.rs` | published models: chunks, deltas, lineage, rebuild routes |
//! | `ledger.rs` | rounds, the per-vehicle ledger, rejections |
//! | `rows.rs` | the row types and the one place each meets its columns |
//! | `status.rs` | round and ledger statuses |
//! | `usage.rs` | per-vehicle figures, data used per day and month |
//! | `vehicles.rs` | provisioned vehicles: public keys and broker credentials |

mod ledger;
mod rows;
mod status;
mod usage;
mod vehicles;
mod versions;

#[cfg(test)]
mod tests;

pub use ledger::{OpenRoundState, TaskMetrics};
pub use rows::{ClientRow, RoundRow};
pub use status::{ClientStatus, RoundStatus};
pub use usage::{LedgerTotals, Usage, VehicleSummary, budget_share, day_start_ms, month_start_ms};
pub use vehicles::VehicleRow;
pub use versions::{
    GcReport, LineageRow, Publication, Route, StorageKind, StorageTotals, StorePolicy,
    StoredVersion, VersionRow,
};

use rusqlite::{Connection, OptionalExtension};
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

const SCHEMA: &str = "
-- every published version: how it is kept (keyframe, delta, replay), what
-- it added to the store, its depth from a keyframe and estimated rebuild
-- time, and its description (manifest, recipe; the spec by hash) as postcard
CREATE TABLE IF NOT EXISTS versions (
    version TEXT PRIMARY KEY, round INTEGER NOT NULL, parent TEXT,
    created_ms INTEGER NOT NULL, bytes INTEGER NOT NULL, kind TEXT NOT NULL,
    stored_bytes INTEGER NOT NULL, depth INTEGER NOT NULL, rebuild_secs REAL NOT NULL,
    eval_loss REAL, accuracy REAL, rmse REAL, meta BLOB NOT NULL, spec BLOB);
-- model specs (features, statistics, heads), each stored once under the
-- BLAKE3 hash of its postcard encoding; versions.spec names one
CREATE TABLE IF NOT EXISTS specs (hash BLOB PRIMARY KEY, spec BLOB NOT NULL);
-- content-addressed parameter chunks, shared by every keyframe holding one
CREATE TABLE IF NOT EXISTS chunks (hash BLOB PRIMARY KEY, bytes BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS version_chunks (
    version TEXT NOT NULL, idx INTEGER NOT NULL, hash BLOB NOT NULL,
    PRIMARY KEY (version, idx));
CREATE INDEX IF NOT EXISTS version_chunks_hash ON version_chunks (hash);
-- the published delta from a version's parent
CREATE TABLE IF NOT EXISTS deltas (
    version TEXT PRIMARY KEY, parent TEXT NOT NULL, codec TEXT NOT NULL, bytes BLOB NOT NULL);
-- who contributed to each version: samples, task, hash of the update sent
CREATE TABLE IF NOT EXISTS lineage (
    version TEXT NOT NULL, client TEXT NOT NULL, samples INTEGER NOT NULL, head TEXT,
    update_hash TEXT NOT NULL, scale REAL NOT NULL, PRIMARY KEY (version, client));
-- every accepted update of finished rounds, in fold order (store.keep_updates)
CREATE TABLE IF NOT EXISTS kept_updates (
    round INTEGER NOT NULL, seq INTEGER NOT NULL, client TEXT NOT NULL, body BLOB NOT NULL,
    scale REAL NOT NULL, PRIMARY KEY (round, seq));
CREATE TABLE IF NOT EXISTS rounds (
    round INTEGER PRIMARY KEY, status TEXT NOT NULL, base_version TEXT NOT NULL,
    model_version TEXT, codec TEXT NOT NULL,
    clients_selected INTEGER NOT NULL DEFAULT 0, clients_reported INTEGER NOT NULL DEFAULT 0,
    clients_late INTEGER NOT NULL DEFAULT 0, clients_failed INTEGER NOT NULL DEFAULT 0,
    bytes_up INTEGER NOT NULL DEFAULT 0, bytes_down INTEGER NOT NULL DEFAULT 0,
    wire_bytes_up INTEGER NOT NULL DEFAULT 0, wire_bytes_down INTEGER NOT NULL DEFAULT 0,
    bytes_up_raw INTEGER NOT NULL DEFAULT 0, bytes_up_predicted INTEGER NOT NULL DEFAULT 0,
    bytes_down_raw INTEGER NOT NULL DEFAULT 0, downlink_codec TEXT NOT NULL DEFAULT 'fp32',
    encode_seconds REAL NOT NULL DEFAULT 0, decode_seconds REAL NOT NULL DEFAULT 0,
    train_seconds_sum REAL NOT NULL DEFAULT 0, train_seconds_max REAL NOT NULL DEFAULT 0,
    samples INTEGER NOT NULL DEFAULT 0, steps INTEGER NOT NULL DEFAULT 0,
    flops INTEGER NOT NULL DEFAULT 0, loss REAL, eval_loss REAL, accuracy REAL, rmse REAL,
    started_ms INTEGER NOT NULL, finished_ms INTEGER,
    holdout_samples INTEGER NOT NULL DEFAULT 0, holdout_accuracy REAL, holdout_rmse REAL);
CREATE TABLE IF NOT EXISTS ledger (
    round INTEGER NOT NULL, client TEXT NOT NULL, status TEXT NOT NULL,
    samples INTEGER NOT NULL, bytes_up INTEGER NOT NULL, wire_bytes_up INTEGER NOT NULL,
    chunks_up INTEGER NOT NULL, retries INTEGER NOT NULL, bytes_down INTEGER NOT NULL,
    wire_bytes_down INTEGER NOT NULL, chunks_down INTEGER NOT NULL, train_seconds REAL NOT NULL,
    steps INTEGER NOT NULL, epochs INTEGER NOT NULL, loss REAL, flops INTEGER NOT NULL,
    bytes_up_predicted INTEGER NOT NULL, device TEXT NOT NULL, codec TEXT NOT NULL,
    update_norm REAL, reason TEXT, bytes_up_raw INTEGER NOT NULL DEFAULT 0, residual_norm REAL,
    encode_seconds REAL NOT NULL DEFAULT 0, decode_seconds REAL NOT NULL DEFAULT 0,
    flops_predicted INTEGER NOT NULL DEFAULT 0,
    holdout_samples INTEGER NOT NULL DEFAULT 0, holdout_accuracy REAL, holdout_rmse REAL,
    personal_accuracy REAL, personal_rmse REAL, head TEXT,
    transfer TEXT, train_seconds_predicted REAL, bytes_down_predicted INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (round, client));
CREATE INDEX IF NOT EXISTS ledger_client ON ledger (client);
CREATE TABLE IF NOT EXISTS rejections (
    id INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL, round INTEGER, client TEXT,
    reason TEXT NOT NULL, detail TEXT NOT NULL);
-- rejections aggregated per (client, reason, minute): a flood adds a count,
-- not a row per message
-- the open round, so a restarted server resumes it: its signed-over
-- announcement, and every acknowledged update's body (written with its
-- ledger row before the receipt goes out)
CREATE TABLE IF NOT EXISTS open_rounds (round INTEGER PRIMARY KEY, announce BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS round_updates (
    round INTEGER NOT NULL, client TEXT NOT NULL, body BLOB NOT NULL,
    scale REAL NOT NULL DEFAULT 1, PRIMARY KEY (round, client));
-- provisioned vehicles: their public key (verifies what they sign) and
-- the BLAKE3 hash of their broker password (a random 256-bit token)
-- `models rollback`: each time an operator made an older version the
-- fleet's current model, kept as an audit trail
CREATE TABLE IF NOT EXISTS rollbacks (
    id INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL, version TEXT NOT NULL);
-- the fleet inventory: the model version each vehicle last said it holds,
-- since when, and when it last said so
CREATE TABLE IF NOT EXISTS inventory (
    client TEXT PRIMARY KEY, version TEXT NOT NULL, since_ms INTEGER NOT NULL,
    seen_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS vehicles (
    client TEXT PRIMARY KEY, public_key TEXT NOT NULL, password_hash TEXT NOT NULL,
    created_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS rejection_counts (
    minute INTEGER NOT NULL, client TEXT NOT NULL, reason TEXT NOT NULL,
    count INTEGER NOT NULL, round INTEGER, last_ms INTEGER NOT NULL, detail TEXT NOT NULL,
    PRIMARY KEY (minute, client, reason));
";

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
        refuse_old_versions(&conn, path)?;
        conn.execute_batch(SCHEMA)?;
        migrate(&conn)?;
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

/// A database whose versions were one file each, under ids that did not
/// cover their provenance, cannot be carried over: say so rather than
/// serve ids no agent can verify.
fn refuse_old_versions(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let old = conn
        .query_row(
            "SELECT 1 FROM pragma_table_info('versions') WHERE name = 'blob'",
            [],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    if old {
        return Err(StoreError::Blob {
            path: path.to_path_buf(),
            message: "this database was written by a convoy release whose version ids did not cover codec, strategy and parent; start a new database (export a model with that release's `models export` first)".into(),
        });
    }
    Ok(())
}

/// Columns added after the first release, for databases created before them.
fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let has = |table: &str, column: &str| -> Result<bool, rusqlite::Error> {
        let mut stmt = conn.prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))?;
        let names = stmt.query_map([], |r| r.get::<_, String>(0))?;
        for name in names {
            if name? == column {
                return Ok(true);
            }
        }
        Ok(false)
    };
    if !has("ledger", "flops_predicted")? {
        conn.execute_batch(
            "ALTER TABLE ledger ADD COLUMN flops_predicted INTEGER NOT NULL DEFAULT 0",
        )?;
    }
    if !has("rounds", "clients_failed")? {
        conn.execute_batch(
            "ALTER TABLE rounds ADD COLUMN clients_failed INTEGER NOT NULL DEFAULT 0",
        )?;
    }
    if !has("ledger", "personal_accuracy")? {
        conn.execute_batch(
            "ALTER TABLE ledger ADD COLUMN personal_accuracy REAL;
             ALTER TABLE ledger ADD COLUMN personal_rmse REAL;",
        )?;
    }
    // versions from before the shared specs keep a whole description in meta
    if !has("versions", "spec")? {
        conn.execute_batch("ALTER TABLE versions ADD COLUMN spec BLOB")?;
    }
    if !has("ledger", "head")? {
        conn.execute_batch("ALTER TABLE ledger ADD COLUMN head TEXT")?;
    }
    if !has("ledger", "transfer")? {
        conn.execute_batch(
            "ALTER TABLE ledger ADD COLUMN transfer TEXT;
             ALTER TABLE ledger ADD COLUMN train_seconds_predicted REAL;
             ALTER TABLE ledger ADD COLUMN bytes_down_predicted INTEGER NOT NULL DEFAULT 0;",
        )?;
    }
    // on-vehicle scores of each round's base model
    for table in ["ledger", "rounds"] {
        if !has(table, "holdout_samples")? {
            conn.execute_batch(&format!(
                "ALTER TABLE {table} ADD COLUMN holdout_samples INTEGER NOT NULL DEFAULT 0;
                 ALTER TABLE {table} ADD COLUMN holdout_accuracy REAL;
                 ALTER TABLE {table} ADD COLUMN holdout_rmse REAL;"
            ))?;
        }
    }
    Ok(())
}
