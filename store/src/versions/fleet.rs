//! The fleet's view of versions: the current model, rollbacks and which
//! version each vehicle holds.

use super::*;

impl Store {
    /// The folder beside the database that older releases kept model
    /// files in (`models gc` clears what is left there).
    pub fn blob_dir(&self) -> &std::path::Path {
        &self.blobs
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
}
