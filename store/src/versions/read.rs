//! Reading versions back: rows, descriptions, lineage, deltas and the
//! storage totals.

use super::*;

impl Store {
    /// The server optimiser's state stored with a version (postcard), if any.
    pub fn optimizer_state(&self, hex: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT state FROM optimizer_states WHERE version = ?1",
                [hex],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// One version's row.
    pub fn version_row(&self, hex: &str) -> Result<Option<VersionRow>, StoreError> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {ROW_COLUMNS} FROM versions WHERE version = ?1"),
                [hex],
                version_row,
            )
            .optional()?)
    }

    pub(super) fn meta(&self, hex: &str) -> Result<VersionMeta, StoreError> {
        // a database opened read-only may predate the shared specs
        let sql = if self.has_table("specs")? {
            "SELECT v.meta, v.spec, s.spec FROM versions v LEFT JOIN specs s ON s.hash = v.spec
             WHERE v.version = ?1"
        } else {
            "SELECT meta, NULL, NULL FROM versions WHERE version = ?1"
        };
        let (bytes, spec_hash, spec): (Vec<u8>, Option<Vec<u8>>, Option<Vec<u8>>) = self
            .conn
            .query_row(sql, [hex], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?
            .ok_or_else(|| self.corrupt(hex, "no such version"))?;
        let undecodable = |e: postcard::Error| {
            self.corrupt(hex, format!("version description does not decode: {e}"))
        };
        let Some(spec_hash) = spec_hash else {
            return postcard::from_bytes::<LegacyMeta>(&bytes)
                .map(VersionMeta::from)
                .map_err(undecodable);
        };
        let spec =
            spec.ok_or_else(|| self.corrupt(hex, "its model spec is missing from the store"))?;
        if blake3::hash(&spec).as_bytes()[..] != spec_hash[..] {
            return Err(self.corrupt(hex, "its stored model spec does not match its hash"));
        }
        Ok(VersionMeta {
            row: postcard::from_bytes(&bytes).map_err(undecodable)?,
            spec: postcard::from_bytes(&spec).map_err(undecodable)?,
        })
    }

    /// The contributors to a version, in the order they were folded.
    pub fn lineage(&self, hex: &str) -> Result<Vec<LineageRow>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT client, samples, head, update_hash, scale, COALESCE(weight, samples) FROM lineage WHERE version = ?1 ORDER BY rowid",
        )?;
        let rows = stmt.query_map([hex], |r| {
            Ok(LineageRow {
                client: r.get(0)?,
                samples: r.get::<_, i64>(1)? as u64,
                head: r.get(2)?,
                update_hash: r.get(3)?,
                scale: r.get(4)?,
                weight: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The stored delta that turns `hex`'s parent into `hex`.
    pub fn delta(&self, hex: &str) -> Result<Option<Delta>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT codec, bytes FROM deltas WHERE version = ?1",
                [hex],
                |r| {
                    let codec: String = r.get(0)?;
                    let codec = codec.parse().map_err(|e| {
                        rusqlite::Error::FromSqlConversionFailure(
                            0,
                            rusqlite::types::Type::Text,
                            Box::new(e),
                        )
                    })?;
                    Ok(Delta {
                        codec,
                        bytes: r.get(1)?,
                    })
                },
            )
            .optional()?)
    }

    /// The stored deltas from `from` to `to`, oldest first, when `to`
    /// descends from `from` within `max_steps` steps and every step has
    /// one.
    pub fn delta_chain(
        &self,
        from: &str,
        to: &str,
        max_steps: usize,
    ) -> Result<Option<Vec<Delta>>, StoreError> {
        let mut chain = Vec::new();
        let mut at = to.to_string();
        while at != from {
            if chain.len() >= max_steps {
                return Ok(None);
            }
            let Some(row) = self.version_row(&at)? else {
                return Ok(None);
            };
            let (Some(parent), Some(delta)) = (row.parent, self.delta(&at)?) else {
                return Ok(None);
            };
            chain.push(delta);
            at = parent;
        }
        chain.reverse();
        Ok(Some(chain))
    }

    /// Bytes held, by purpose.
    pub fn storage(&self) -> Result<StorageTotals, StoreError> {
        storage_totals(&self.conn)
    }

    /// Loads a version by hex id, however it is stored, checking it
    /// hashes to its id.
    pub fn load_version(&self, hex: &str) -> Result<StoredVersion, StoreError> {
        self.rebuild(hex, Route::Stored)
    }

    /// Every stored version's row, oldest first.
    pub fn versions(&self) -> Result<Vec<VersionRow>, StoreError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {ROW_COLUMNS} FROM versions ORDER BY round, created_ms"
        ))?;
        let rows = stmt.query_map([], version_row)?;
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

    /// Whether the database has `table` (one opened read-only may predate it).
    pub(super) fn has_table(&self, table: &str) -> Result<bool, StoreError> {
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
}

/// Bytes held, by purpose, as `conn` (or a transaction on it) sees them.
pub(super) fn storage_totals(conn: &rusqlite::Connection) -> Result<StorageTotals, StoreError> {
    let sum = |sql: &str| -> Result<u64, StoreError> {
        Ok(conn.query_row(sql, [], |r| r.get::<_, i64>(0))? as u64)
    };
    // a database opened read-only may predate the shared specs
    let has_specs =
        sum("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'specs'")? > 0;
    Ok(StorageTotals {
        chunk_bytes: sum("SELECT COALESCE(SUM(LENGTH(bytes)), 0) FROM chunks")?,
        delta_bytes: sum("SELECT COALESCE(SUM(LENGTH(bytes)), 0) FROM deltas")?,
        meta_bytes: sum("SELECT COALESCE(SUM(LENGTH(meta)), 0) FROM versions")?
            + if has_specs {
                sum("SELECT COALESCE(SUM(LENGTH(spec)), 0) FROM specs")?
            } else {
                0
            },
        update_bytes: sum("SELECT COALESCE(SUM(LENGTH(body)), 0) FROM kept_updates")?,
    })
}
