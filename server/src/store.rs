//! The server's state: SQLite for rounds, the per-client ledger, versions
//! and rejections; model blobs as content-named files beside the database.

use convoy_runtime::fs::write_atomic;
use convoy_shared::params::ParamSet;
use convoy_shared::spec::ModelSpec;
use convoy_shared::spec::Recipe;
use convoy_shared::version::{self, Manifest, VersionId};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
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

/// A published model: weights plus everything needed to use them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredVersion {
    /// Round that produced it (0: initial model).
    pub round: u64,
    /// Version it was aggregated from.
    pub parent: Option<VersionId>,
    /// Manifest (id, chunk hashes).
    pub manifest: Manifest,
    /// Architecture, features, normalisation.
    pub spec: ModelSpec,
    /// Training recipe.
    pub task: Recipe,
    /// Weights.
    pub params: ParamSet,
}

/// One row of the per-round table (`report`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct RoundRow {
    /// Round number.
    pub round: u64,
    /// open, finished, failed or abandoned.
    pub status: String,
    /// Base version (hex).
    pub base_version: String,
    /// Version published by the round (hex), if any.
    pub model_version: Option<String>,
    /// Update codec.
    pub codec: String,
    /// Clients asked to train.
    pub clients_selected: u64,
    /// Accepted updates.
    pub clients_reported: u64,
    /// Updates that came after the round closed.
    pub clients_late: u64,
    /// Update payload bytes received (accepted chunks, counted once).
    pub bytes_up: u64,
    /// Model payload bytes sent.
    pub bytes_down: u64,
    /// MQTT bytes received on update topics, framing and re-sends included.
    pub wire_bytes_up: u64,
    /// MQTT bytes sent on model topics, framing included.
    pub wire_bytes_down: u64,
    /// What the accepted updates would cost as dense fp32.
    pub bytes_up_raw: u64,
    /// What the models sent would cost as dense fp32.
    pub bytes_down_raw: u64,
    /// bytes_up_raw / bytes_up.
    pub compression_up: Option<f64>,
    /// Codec of the published model delta.
    pub downlink_codec: String,
    /// Agents' encoding seconds, summed.
    pub encode_seconds: f64,
    /// Server decoding seconds, summed.
    pub decode_seconds: f64,
    /// Cost model's prediction of `bytes_up`.
    pub bytes_up_predicted: u64,
    /// Sum of client training seconds.
    pub train_seconds_sum: f64,
    /// Slowest client's training seconds.
    pub train_seconds_max: f64,
    /// Training samples behind the aggregate.
    pub samples: u64,
    /// Optimiser steps across clients.
    pub steps: u64,
    /// Estimated training FLOPs across clients.
    pub flops: u64,
    /// Sample-weighted mean training loss reported by clients.
    pub loss: Option<f64>,
    /// Test loss of the published model.
    pub eval_loss: Option<f64>,
    /// Test accuracy (classification).
    pub accuracy: Option<f64>,
    /// Test RMSE (regression).
    pub rmse: Option<f64>,
    /// ISO-8601 UTC.
    pub started_at: String,
    /// ISO-8601 UTC.
    pub finished_at: Option<String>,
}

/// One ledger row: a client in a round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ClientRow {
    /// Round.
    pub round: u64,
    /// Client id.
    pub client: String,
    /// accepted, late, rejected or dropped (selected, no update).
    pub status: String,
    /// Training samples.
    pub samples: u64,
    /// Accepted update payload bytes.
    pub bytes_up: u64,
    /// MQTT bytes on the update topic, re-sends included.
    pub wire_bytes_up: u64,
    /// Update chunks received (re-sends included).
    pub chunks_up: u64,
    /// Chunks that were re-sends of ones already held.
    pub retries: u64,
    /// Model payload bytes sent to it.
    pub bytes_down: u64,
    /// MQTT bytes sent to it.
    pub wire_bytes_down: u64,
    /// Model chunks sent to it.
    pub chunks_down: u64,
    /// Training seconds it reported.
    pub train_seconds: f64,
    /// Optimiser steps.
    pub steps: u64,
    /// Epochs.
    pub epochs: u64,
    /// Its training loss.
    pub loss: Option<f64>,
    /// Training FLOPs the vehicle reported.
    pub flops: u64,
    /// The cost model's FLOPs for its samples and epochs.
    pub flops_predicted: u64,
    /// Cost model's bytes_up prediction.
    pub bytes_up_predicted: u64,
    /// Training device.
    pub device: String,
    /// Codec.
    pub codec: String,
    /// L2 norm of its decoded update.
    pub update_norm: Option<f64>,
    /// What its update would cost as dense fp32.
    pub bytes_up_raw: u64,
    /// L2 norm of its error-feedback residual after encoding.
    pub residual_norm: Option<f64>,
    /// Its encoding seconds.
    pub encode_seconds: f64,
    /// Server decoding seconds of its update.
    pub decode_seconds: f64,
    /// Why refused, when refused.
    pub reason: Option<String>,
}

/// Handle on the database and blob folder.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    blobs: PathBuf,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS versions (
    version TEXT PRIMARY KEY, round INTEGER NOT NULL, parent TEXT,
    created_ms INTEGER NOT NULL, bytes INTEGER NOT NULL, blob TEXT NOT NULL,
    eval_loss REAL, accuracy REAL, rmse REAL);
CREATE TABLE IF NOT EXISTS rounds (
    round INTEGER PRIMARY KEY, status TEXT NOT NULL, base_version TEXT NOT NULL,
    model_version TEXT, codec TEXT NOT NULL,
    clients_selected INTEGER NOT NULL DEFAULT 0, clients_reported INTEGER NOT NULL DEFAULT 0,
    clients_late INTEGER NOT NULL DEFAULT 0,
    bytes_up INTEGER NOT NULL DEFAULT 0, bytes_down INTEGER NOT NULL DEFAULT 0,
    wire_bytes_up INTEGER NOT NULL DEFAULT 0, wire_bytes_down INTEGER NOT NULL DEFAULT 0,
    bytes_up_raw INTEGER NOT NULL DEFAULT 0, bytes_up_predicted INTEGER NOT NULL DEFAULT 0,
    bytes_down_raw INTEGER NOT NULL DEFAULT 0, downlink_codec TEXT NOT NULL DEFAULT 'fp32',
    encode_seconds REAL NOT NULL DEFAULT 0, decode_seconds REAL NOT NULL DEFAULT 0,
    train_seconds_sum REAL NOT NULL DEFAULT 0, train_seconds_max REAL NOT NULL DEFAULT 0,
    samples INTEGER NOT NULL DEFAULT 0, steps INTEGER NOT NULL DEFAULT 0,
    flops INTEGER NOT NULL DEFAULT 0, loss REAL, eval_loss REAL, accuracy REAL, rmse REAL,
    started_ms INTEGER NOT NULL, finished_ms INTEGER);
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
    PRIMARY KEY (round, client));
CREATE TABLE IF NOT EXISTS rejections (
    id INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL, round INTEGER, client TEXT,
    reason TEXT NOT NULL, detail TEXT NOT NULL);
";

/// ISO-8601 UTC text for Unix milliseconds.
pub fn iso8601(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // civil-from-days (H. Hinnant)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
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
        conn.execute_batch(SCHEMA)?;
        migrate(&conn)?;
        let blobs = PathBuf::from(format!("{}.models", path.display()));
        std::fs::create_dir_all(&blobs).map_err(|e| StoreError::Blob {
            path: blobs.clone(),
            message: e.to_string(),
        })?;
        Ok(Self { conn, blobs })
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
        Ok(Self { conn, blobs })
    }

    /// Stores a version's blob (atomically) and its row.
    pub fn save_version(
        &self,
        v: &StoredVersion,
        eval: Option<&convoy_shared::eval::Evaluation>,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let hex = version::hex(&v.manifest.version);
        let name = format!("{hex}.bin");
        let path = self.blobs.join(&name);
        let bytes = postcard::to_allocvec(v).map_err(|e| StoreError::Blob {
            path: path.clone(),
            message: format!("cannot serialise the model: {e}"),
        })?;
        write_atomic(&path, &bytes).map_err(|e| StoreError::Blob {
            path: path.clone(),
            message: e.to_string(),
        })?;
        self.conn.execute(
            "INSERT OR REPLACE INTO versions (version, round, parent, created_ms, bytes, blob, eval_loss, accuracy, rmse)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                hex,
                v.round as i64,
                v.parent.as_ref().map(version::hex),
                now_ms as i64,
                v.manifest.total_len as i64,
                name,
                eval.map(|e| e.loss),
                eval.and_then(|e| e.accuracy),
                eval.and_then(|e| e.rmse),
            ],
        )?;
        Ok(())
    }

    /// Loads a version by hex id, checking it hashes to its id.
    pub fn load_version(&self, hex: &str) -> Result<StoredVersion, StoreError> {
        let name: String =
            self.conn
                .query_row("SELECT blob FROM versions WHERE version = ?1", [hex], |r| {
                    r.get(0)
                })?;
        let path = self.blobs.join(name);
        let corrupt = |message: String| StoreError::Blob {
            path: path.clone(),
            message,
        };
        let bytes = std::fs::read(&path).map_err(|e| corrupt(e.to_string()))?;
        let v: StoredVersion = postcard::from_bytes(&bytes).map_err(|e| corrupt(e.to_string()))?;
        let check = version::manifest_of(&v.params, &v.spec, &v.task);
        if version::hex(&check.version) != hex {
            return Err(corrupt("blob does not hash to its version id".into()));
        }
        Ok(v)
    }

    /// Newest version (highest round), if any.
    pub fn latest_version(&self) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT version FROM versions ORDER BY round DESC, created_ms DESC LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Round number to use next: never reuses one, even of abandoned rounds.
    pub fn next_round(&self) -> Result<u64, StoreError> {
        let max: Option<i64> = self
            .conn
            .query_row("SELECT MAX(round) FROM rounds", [], |r| r.get(0))?;
        Ok(max.map(|m| m as u64 + 1).unwrap_or(1))
    }

    /// Marks rounds left open by a crash as abandoned; returns how many.
    pub fn abandon_open_rounds(&self, now_ms: u64) -> Result<usize, StoreError> {
        Ok(self.conn.execute(
            "UPDATE rounds SET status = 'abandoned', finished_ms = ?1 WHERE status = 'open'",
            [now_ms as i64],
        )?)
    }

    /// Records a round as open.
    pub fn open_round(
        &self,
        round: u64,
        base: &str,
        codec: &str,
        selected: u64,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO rounds (round, status, base_version, codec, clients_selected, started_ms) VALUES (?1, 'open', ?2, ?3, ?4, ?5)",
            params![round as i64, base, codec, selected as i64, now_ms as i64],
        )?;
        Ok(())
    }

    /// Closes a round: its totals and all its ledger rows, in one transaction.
    pub fn finish_round(
        &mut self,
        row: &RoundRow,
        clients: &[ClientRow],
        finished_ms: u64,
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "UPDATE rounds SET status = ?2, model_version = ?3, clients_selected = ?4, clients_reported = ?5,
             clients_late = clients_late + ?6, bytes_up = ?7, bytes_down = ?8, wire_bytes_up = ?9, wire_bytes_down = ?10,
             bytes_up_raw = ?11, bytes_up_predicted = ?12, train_seconds_sum = ?13, train_seconds_max = ?14,
             samples = ?15, steps = ?16, flops = ?17, loss = ?18, eval_loss = ?19, accuracy = ?20, rmse = ?21,
             finished_ms = ?22, bytes_down_raw = ?23, downlink_codec = ?24, encode_seconds = ?25,
             decode_seconds = ?26 WHERE round = ?1",
            params![
                row.round as i64, row.status, row.model_version, row.clients_selected as i64,
                row.clients_reported as i64, row.clients_late as i64, row.bytes_up as i64, row.bytes_down as i64,
                row.wire_bytes_up as i64, row.wire_bytes_down as i64, row.bytes_up_raw as i64,
                row.bytes_up_predicted as i64, row.train_seconds_sum, row.train_seconds_max, row.samples as i64,
                row.steps as i64, row.flops as i64, row.loss, row.eval_loss, row.accuracy, row.rmse,
                finished_ms as i64, row.bytes_down_raw as i64, row.downlink_codec, row.encode_seconds,
                row.decode_seconds,
            ],
        )?;
        for c in clients {
            insert_client(&tx, c)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Counts a late update against its (closed) round, once per client.
    pub fn record_late(
        &self,
        round: u64,
        client: &str,
        wire_bytes: u64,
    ) -> Result<bool, StoreError> {
        let exists: bool = self.conn.query_row(
            "SELECT EXISTS(SELECT 1 FROM ledger WHERE round = ?1 AND client = ?2)",
            params![round as i64, client],
            |r| r.get(0),
        )?;
        if exists {
            // a dropped straggler turns late; accepted rows stay accepted
            let changed = self.conn.execute(
                "UPDATE ledger SET status = 'late', wire_bytes_up = wire_bytes_up + ?3
                 WHERE round = ?1 AND client = ?2 AND status = 'dropped'",
                params![round as i64, client, wire_bytes as i64],
            )?;
            if changed > 0 {
                self.conn.execute(
                    "UPDATE rounds SET clients_late = clients_late + 1 WHERE round = ?1",
                    [round as i64],
                )?;
            }
            return Ok(changed > 0);
        }
        let row = ClientRow {
            round,
            client: client.to_string(),
            status: "late".into(),
            wire_bytes_up: wire_bytes,
            ..Default::default()
        };
        insert_client(&self.conn, &row)?;
        self.conn.execute(
            "UPDATE rounds SET clients_late = clients_late + 1 WHERE round = ?1",
            [round as i64],
        )?;
        Ok(true)
    }

    /// Status of a client's ledger row, if any.
    pub fn client_status(&self, round: u64, client: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT status FROM ledger WHERE round = ?1 AND client = ?2",
                params![round as i64, client],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Records one rejected message.
    pub fn record_rejection(
        &self,
        round: Option<u64>,
        client: Option<&str>,
        reason: &str,
        detail: &str,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO rejections (at_ms, round, client, reason, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![now_ms as i64, round.map(|r| r as i64), client, reason, detail],
        )?;
        Ok(())
    }

    /// Rejections per reason.
    pub fn rejection_counts(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT reason, COUNT(*) FROM rejections GROUP BY reason ORDER BY reason")?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// All rounds, oldest first.
    pub fn rounds(&self) -> Result<Vec<RoundRow>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT round, status, base_version, model_version, codec, clients_selected, clients_reported,
             clients_late, bytes_up, bytes_down, wire_bytes_up, wire_bytes_down, bytes_up_raw, bytes_up_predicted,
             train_seconds_sum, train_seconds_max, samples, steps, flops, loss, eval_loss, accuracy, rmse,
             started_ms, finished_ms, bytes_down_raw, downlink_codec, encode_seconds, decode_seconds
             FROM rounds ORDER BY round",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(RoundRow {
                round: r.get::<_, i64>(0)? as u64,
                status: r.get(1)?,
                base_version: r.get(2)?,
                model_version: r.get(3)?,
                codec: r.get(4)?,
                clients_selected: r.get::<_, i64>(5)? as u64,
                clients_reported: r.get::<_, i64>(6)? as u64,
                clients_late: r.get::<_, i64>(7)? as u64,
                bytes_up: r.get::<_, i64>(8)? as u64,
                bytes_down: r.get::<_, i64>(9)? as u64,
                wire_bytes_up: r.get::<_, i64>(10)? as u64,
                wire_bytes_down: r.get::<_, i64>(11)? as u64,
                bytes_up_raw: r.get::<_, i64>(12)? as u64,
                bytes_up_predicted: r.get::<_, i64>(13)? as u64,
                train_seconds_sum: r.get(14)?,
                train_seconds_max: r.get(15)?,
                samples: r.get::<_, i64>(16)? as u64,
                steps: r.get::<_, i64>(17)? as u64,
                flops: r.get::<_, i64>(18)? as u64,
                loss: r.get(19)?,
                eval_loss: r.get(20)?,
                accuracy: r.get(21)?,
                rmse: r.get(22)?,
                started_at: iso8601(r.get::<_, i64>(23)? as u64),
                finished_at: r.get::<_, Option<i64>>(24)?.map(|ms| iso8601(ms as u64)),
                bytes_down_raw: r.get::<_, i64>(25)? as u64,
                downlink_codec: r.get(26)?,
                encode_seconds: r.get(27)?,
                decode_seconds: r.get(28)?,
                compression_up: None,
            })
            .map(|mut row| {
                row.compression_up =
                    (row.bytes_up > 0).then(|| row.bytes_up_raw as f64 / row.bytes_up as f64);
                row
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Ledger rows of one round.
    pub fn clients(&self, round: u64) -> Result<Vec<ClientRow>, StoreError> {
        let sql = format!("SELECT {LEDGER_COLUMNS} FROM ledger WHERE round = ?1 ORDER BY client");
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map([round as i64], client_from_sql)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
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
    Ok(())
}

/// The ledger's columns, in the order [`client_from_sql`] and
/// [`insert_client`] use: the one place a ledger row meets its table.
const LEDGER_COLUMNS: &str = "round, client, status, samples, bytes_up, wire_bytes_up, chunks_up, retries, \
    bytes_down, wire_bytes_down, chunks_down, train_seconds, steps, epochs, loss, flops, bytes_up_predicted, \
    device, codec, update_norm, reason, bytes_up_raw, residual_norm, encode_seconds, decode_seconds, \
    flops_predicted";

fn client_from_sql(r: &rusqlite::Row<'_>) -> rusqlite::Result<ClientRow> {
    let count = |i: usize| r.get::<_, i64>(i).map(|v| v as u64);
    Ok(ClientRow {
        round: count(0)?,
        client: r.get(1)?,
        status: r.get(2)?,
        samples: count(3)?,
        bytes_up: count(4)?,
        wire_bytes_up: count(5)?,
        chunks_up: count(6)?,
        retries: count(7)?,
        bytes_down: count(8)?,
        wire_bytes_down: count(9)?,
        chunks_down: count(10)?,
        train_seconds: r.get(11)?,
        steps: count(12)?,
        epochs: count(13)?,
        loss: r.get(14)?,
        flops: count(15)?,
        bytes_up_predicted: count(16)?,
        device: r.get(17)?,
        codec: r.get(18)?,
        update_norm: r.get(19)?,
        reason: r.get(20)?,
        bytes_up_raw: count(21)?,
        residual_norm: r.get(22)?,
        encode_seconds: r.get(23)?,
        decode_seconds: r.get(24)?,
        flops_predicted: count(25)?,
    })
}

fn insert_client(conn: &Connection, c: &ClientRow) -> Result<(), StoreError> {
    let marks: Vec<String> = (1..=26).map(|i| format!("?{i}")).collect();
    let sql = format!(
        "INSERT OR REPLACE INTO ledger ({LEDGER_COLUMNS}) VALUES ({})",
        marks.join(", ")
    );
    conn.execute(
        &sql,
        params![
            c.round as i64,
            c.client,
            c.status,
            c.samples as i64,
            c.bytes_up as i64,
            c.wire_bytes_up as i64,
            c.chunks_up as i64,
            c.retries as i64,
            c.bytes_down as i64,
            c.wire_bytes_down as i64,
            c.chunks_down as i64,
            c.train_seconds,
            c.steps as i64,
            c.epochs as i64,
            c.loss,
            c.flops as i64,
            c.bytes_up_predicted as i64,
            c.device,
            c.codec,
            c.update_norm,
            c.reason,
            c.bytes_up_raw as i64,
            c.residual_norm,
            c.encode_seconds,
            c.decode_seconds,
            c.flops_predicted as i64,
        ],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_dates() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(1_795_000_000_123), "2026-11-18T11:06:40.123Z");
    }

    #[test]
    fn rounds_are_never_reused_and_late_counts_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db")).unwrap();
        assert_eq!(store.next_round().unwrap(), 1);
        store.open_round(1, "aa", "fp32", 2, 0).unwrap();
        assert_eq!(store.abandon_open_rounds(1).unwrap(), 1);
        assert_eq!(store.next_round().unwrap(), 2);
        store.open_round(2, "aa", "fp32", 2, 0).unwrap();
        let row = RoundRow {
            round: 2,
            status: "finished".into(),
            clients_reported: 1,
            ..Default::default()
        };
        let client = ClientRow {
            round: 2,
            client: "a".into(),
            status: "accepted".into(),
            ..Default::default()
        };
        store.finish_round(&row, &[client], 5).unwrap();
        assert!(store.record_late(2, "b", 10).unwrap());
        assert!(!store.record_late(2, "b", 10).unwrap());
        assert!(!store.record_late(2, "a", 10).unwrap());
        let rounds = store.rounds().unwrap();
        assert_eq!(rounds[1].clients_late, 1);
        assert_eq!(rounds[0].status, "abandoned");
        assert_eq!(store.clients(2).unwrap().len(), 2);
    }
}
