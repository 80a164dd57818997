//! Published models: a content-named blob file per version, and its row.

use super::{Store, StoreError};
use convoy_runtime::fs::write_atomic;
use convoy_shared::eval::Evaluation;
use convoy_shared::params::ParamSet;
use convoy_shared::spec::{ModelSpec, Recipe};
use convoy_shared::version::{self, Manifest, VersionId};
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

/// One row of the versions table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionRow {
    /// Hex version id.
    pub version: String,
    /// Round that produced it (0: the initial model).
    pub round: u64,
    /// Hex id of the version it was aggregated from.
    pub parent: Option<String>,
    /// ISO-8601 UTC.
    pub created_at: String,
    /// Canonical parameter bytes.
    pub bytes: u64,
    /// Blob file name in the model folder.
    pub blob: String,
    /// Server-side test loss, when evaluated.
    pub eval_loss: Option<f64>,
    /// Server-side test accuracy.
    pub accuracy: Option<f64>,
    /// Server-side test RMSE.
    pub rmse: Option<f64>,
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

impl Store {
    /// Stores a version's blob (atomically) and its row.
    pub fn save_version(
        &self,
        v: &StoredVersion,
        eval: Option<&Evaluation>,
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

    /// Every stored version's row, oldest first.
    pub fn versions(&self) -> Result<Vec<VersionRow>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT version, round, parent, created_ms, bytes, blob, eval_loss, accuracy, rmse
             FROM versions ORDER BY round, created_ms",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(VersionRow {
                version: r.get(0)?,
                round: r.get::<_, i64>(1)? as u64,
                parent: r.get(2)?,
                created_at: super::iso8601(r.get::<_, i64>(3)? as u64),
                bytes: r.get::<_, i64>(4)? as u64,
                blob: r.get(5)?,
                eval_loss: r.get(6)?,
                accuracy: r.get(7)?,
                rmse: r.get(8)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The one stored version whose hex id starts with `prefix` (at least
    /// 4 characters), or an error saying why not.
    pub fn resolve_version(&self, prefix: &str) -> Result<String, StoreError> {
        let prefix = prefix.to_ascii_lowercase();
        let bad = |message: String| StoreError::Blob {
            path: self.blobs.clone(),
            message,
        };
        if prefix.len() < 4 || !prefix.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad(format!(
                "{prefix:?} is not a version id: give 4 or more of its hex digits (models list shows them)"
            )));
        }
        let matches: Vec<String> = self
            .versions()?
            .into_iter()
            .map(|v| v.version)
            .filter(|v| v.starts_with(&prefix))
            .collect();
        match matches.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(bad(format!("no stored version starts with {prefix}"))),
            many => Err(bad(format!(
                "{prefix} names {} versions; give more digits",
                many.len()
            ))),
        }
    }

    /// The folder the version blobs live in.
    pub fn blob_dir(&self) -> &std::path::Path {
        &self.blobs
    }

    /// Where a version row's blob lives.
    pub fn blob_path(&self, row: &VersionRow) -> std::path::PathBuf {
        self.blobs.join(&row.blob)
    }

    /// Makes stored version `hex` the fleet's current model from now on: a
    /// server starting after this announces it as the base of its next
    /// round (and the rounds after build on it).
    pub fn rollback_to(&self, hex: &str, now_ms: u64) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO rollbacks (at_ms, version) VALUES (?1, ?2)",
            params![now_ms as i64, hex],
        )?;
        Ok(())
    }

    /// The fleet's current model: the version of the newest rollback when
    /// no version was stored after it, else the newest version.
    pub fn current_version(&self) -> Result<Option<String>, StoreError> {
        let newest: Option<(String, i64)> = self
            .conn
            .query_row(
                "SELECT version, created_ms FROM versions ORDER BY round DESC, created_ms DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        // a database from before rollbacks existed, opened read-only, has none
        if !self.has_table("rollbacks")? {
            return Ok(newest.map(|(v, _)| v));
        }
        let rollback: Option<(String, i64)> = self
            .conn
            .query_row(
                "SELECT version, at_ms FROM rollbacks ORDER BY at_ms DESC, id DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        Ok(match (newest, rollback) {
            (Some((_, created)), Some((back, at))) if at >= created => Some(back),
            (newest, _) => newest.map(|(v, _)| v),
        })
    }

    /// Records that `client` holds model `version` (from its status).
    pub fn record_holding(
        &self,
        client: &str,
        version: &str,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO inventory (client, version, since_ms, seen_ms) VALUES (?1, ?2, ?3, ?3)
             ON CONFLICT (client) DO UPDATE SET
                since_ms = CASE WHEN version = excluded.version THEN since_ms ELSE excluded.since_ms END,
                version = excluded.version, seen_ms = excluded.seen_ms",
            params![client, version, now_ms as i64],
        )?;
        Ok(())
    }

    /// The fleet inventory: (client, version held, since ms, last seen ms).
    pub fn inventory(&self) -> Result<Vec<(String, String, u64, u64)>, StoreError> {
        if !self.has_table("inventory")? {
            return Ok(Vec::new());
        }
        let mut stmt = self
            .conn
            .prepare("SELECT client, version, since_ms, seen_ms FROM inventory ORDER BY client")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get::<_, i64>(2)? as u64,
                r.get::<_, i64>(3)? as u64,
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Whether the database has `table` (one opened read-only may predate it).
    fn has_table(&self, table: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
                [table],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
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
}
