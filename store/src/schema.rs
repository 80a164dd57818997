//! The database's tables and their numbered migrations. `PRAGMA
//! user_version` holds the number of the last migration applied; opening a
//! database applies the ones after it in order, each in its own transaction
//! with the number it brings the database to. Migrations 2 to 8 add columns
//! that databases from before numbering may lack, so they check first; any
//! migration added from now on runs exactly once and need not.

use super::StoreError;
use rusqlite::{Connection, OptionalExtension};
use std::path::Path;

/// The tables as they are now; migration 1 creates whichever are missing.
/// Never edit a table here: add a numbered migration to [`MIGRATIONS`].
const BASE: &str = "
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

/// One step of the schema.
struct Migration {
    /// What it brings.
    what: &'static str,
    apply: fn(&Connection) -> rusqlite::Result<()>,
}

/// Every migration in order: the database's `user_version` is how many of
/// them it has had.
const MIGRATIONS: &[Migration] = &[
    Migration {
        what: "the tables",
        apply: |c| c.execute_batch(BASE),
    },
    Migration {
        what: "ledger: FLOPs predicted",
        apply: |c| {
            add_columns(
                c,
                "ledger",
                "flops_predicted",
                &["flops_predicted INTEGER NOT NULL DEFAULT 0"],
            )
        },
    },
    Migration {
        what: "rounds: vehicles that failed",
        apply: |c| {
            add_columns(
                c,
                "rounds",
                "clients_failed",
                &["clients_failed INTEGER NOT NULL DEFAULT 0"],
            )
        },
    },
    Migration {
        what: "ledger: personalised models' scores",
        apply: |c| {
            add_columns(
                c,
                "ledger",
                "personal_accuracy",
                &["personal_accuracy REAL", "personal_rmse REAL"],
            )
        },
    },
    Migration {
        // versions from before the shared specs keep a whole description in meta
        what: "versions: the spec by hash",
        apply: |c| add_columns(c, "versions", "spec", &["spec BLOB"]),
    },
    Migration {
        what: "ledger: the head a vehicle trained",
        apply: |c| add_columns(c, "ledger", "head", &["head TEXT"]),
    },
    Migration {
        what: "ledger: transfers and the cost model's predictions",
        apply: |c| {
            add_columns(
                c,
                "ledger",
                "transfer",
                &[
                    "transfer TEXT",
                    "train_seconds_predicted REAL",
                    "bytes_down_predicted INTEGER NOT NULL DEFAULT 0",
                ],
            )
        },
    },
    Migration {
        what: "ledger and rounds: the base model's scores on the vehicles",
        apply: |c| {
            for table in ["ledger", "rounds"] {
                add_columns(
                    c,
                    table,
                    "holdout_samples",
                    &[
                        "holdout_samples INTEGER NOT NULL DEFAULT 0",
                        "holdout_accuracy REAL",
                        "holdout_rmse REAL",
                    ],
                )?;
            }
            Ok(())
        },
    },
    Migration {
        what: "robust aggregation: each update's weight, suspected vehicles, blocked vehicles",
        apply: |c| {
            c.execute_batch(
                "ALTER TABLE ledger ADD COLUMN weight REAL;
                 ALTER TABLE ledger ADD COLUMN suspect TEXT;
                 ALTER TABLE round_updates ADD COLUMN weight REAL;
                 ALTER TABLE kept_updates ADD COLUMN weight REAL;
                 ALTER TABLE lineage ADD COLUMN weight REAL;
                 ALTER TABLE vehicles ADD COLUMN blocked_ms INTEGER;
                 ALTER TABLE vehicles ADD COLUMN blocked_reason TEXT;",
            )
        },
    },
    Migration {
        what: "key rotation: a vehicle's previous key and until when it counts",
        apply: |c| {
            c.execute_batch(
                "ALTER TABLE vehicles ADD COLUMN previous_key TEXT;
                 ALTER TABLE vehicles ADD COLUMN previous_until_ms INTEGER;",
            )
        },
    },
    Migration {
        what: "strategies: the server optimiser's state per version, each round's strategy",
        apply: |c| {
            c.execute_batch(
                "CREATE TABLE IF NOT EXISTS optimizer_states (
                    version TEXT PRIMARY KEY, state BLOB NOT NULL);
                 ALTER TABLE rounds ADD COLUMN strategy TEXT;",
            )
        },
    },
    Migration {
        what: "asynchronous rounds: each update's staleness",
        apply: |c| c.execute_batch("ALTER TABLE ledger ADD COLUMN staleness INTEGER;"),
    },
];

/// The schema version a database is at once opened by this release.
pub const SCHEMA_VERSION: usize = MIGRATIONS.len();

/// Adds `columns` to `table` unless it has `marker` already (a database
/// created after the columns joined the base schema).
fn add_columns(
    conn: &Connection,
    table: &str,
    marker: &str,
    columns: &[&str],
) -> rusqlite::Result<()> {
    let present: bool = conn.query_row(
        &format!("SELECT COUNT(*) > 0 FROM pragma_table_info('{table}') WHERE name = ?1"),
        [marker],
        |r| r.get(0),
    )?;
    if !present {
        for column in columns {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column}"))?;
        }
    }
    Ok(())
}

/// Applies the migrations `conn` has not had, each with its number in one
/// transaction; a database newer than this release is refused.
pub(crate) fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let at: usize = conn.pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))? as usize;
    if at > SCHEMA_VERSION {
        return Err(StoreError::Blob {
            path: "database".into(),
            message: format!(
                "schema version {at} was written by a newer convoy release (this one knows {SCHEMA_VERSION}); run that release or restore a backup"
            ),
        });
    }
    for (done, step) in MIGRATIONS.iter().enumerate().skip(at) {
        let tx = conn.unchecked_transaction()?;
        (step.apply)(&tx)?;
        tx.pragma_update(None, "user_version", (done + 1) as i64)?;
        tx.commit()?;
        if at > 0 {
            tracing::info!(version = done + 1, what = step.what, "database migrated");
        }
    }
    Ok(())
}

/// A database whose versions were one file each, under ids that did not
/// cover their provenance, cannot be carried over: say so rather than
/// serve ids no agent can verify.
pub(crate) fn refuse_old_versions(conn: &Connection, path: &Path) -> Result<(), StoreError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn version(conn: &Connection) -> usize {
        conn.pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))
            .unwrap() as usize
    }

    #[test]
    fn a_new_database_gets_every_migration_and_reopening_changes_nothing() {
        let conn = Connection::open_in_memory().unwrap();
        migrate(&conn).unwrap();
        assert_eq!(version(&conn), SCHEMA_VERSION);
        migrate(&conn).unwrap();
        assert_eq!(version(&conn), SCHEMA_VERSION);
    }

    #[test]
    fn a_database_from_before_numbering_gains_the_columns_it_lacks() {
        let conn = Connection::open_in_memory().unwrap();
        // the ledger and rounds as the first release made them (abridged)
        conn.execute_batch(
            "CREATE TABLE ledger (round INTEGER NOT NULL, client TEXT NOT NULL);
             CREATE TABLE rounds (round INTEGER PRIMARY KEY);",
        )
        .unwrap();
        migrate(&conn).unwrap();
        assert_eq!(version(&conn), SCHEMA_VERSION);
        for (table, column) in [
            ("ledger", "flops_predicted"),
            ("ledger", "holdout_rmse"),
            ("ledger", "bytes_down_predicted"),
            ("rounds", "clients_failed"),
            ("rounds", "holdout_samples"),
        ] {
            let n: i64 = conn
                .query_row(
                    &format!("SELECT COUNT(*) FROM pragma_table_info('{table}') WHERE name = ?1"),
                    [column],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(n, 1, "{table}.{column}");
        }
    }

    #[test]
    fn a_database_from_a_newer_release_is_refused() {
        let conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "user_version", (SCHEMA_VERSION + 1) as i64)
            .unwrap();
        let e = migrate(&conn).unwrap_err().to_string();
        assert!(e.contains("newer convoy release"), "{e}");
    }
}
