//! Published models: a content-named blob file per version, and its row.

use super::{Store, StoreError};
use convoy_runtime::fs::write_atomic;
use convoy_shared::eval::Evaluation;
use convoy_shared::params::ParamSet;
use convoy_shared::spec::{ModelSpec, Recipe};
use convoy_shared::version::{self, Manifest, VersionId};
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

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
