//! Garbage collection: what no retained version needs.

use super::read::storage_totals;
use super::*;

impl Store {
    /// Drops what no retained version needs. With `keep_newest`, versions
    /// older than the newest that many are dropped too, except the fleet's
    /// current model, any version a vehicle holds, and whatever a retained
    /// version is rebuilt from (its parents back to a keyframe). Chunks no
    /// remaining keyframe refers to go, as do deltas and kept updates of
    /// versions that are gone (kept updates stay while a retained version
    /// descends from their round, for route (c)). `dry_run` reports
    /// without changing anything.
    pub fn collect_garbage(
        &self,
        keep_newest: Option<usize>,
        dry_run: bool,
    ) -> Result<GcReport, StoreError> {
        let rows = self.versions()?;
        let by_id: HashMap<&str, &VersionRow> =
            rows.iter().map(|r| (r.version.as_str(), r)).collect();
        let mut retained: std::collections::BTreeSet<String> = match keep_newest {
            None => rows.iter().map(|r| r.version.clone()).collect(),
            Some(n) => {
                let mut keep: std::collections::BTreeSet<String> = rows
                    .iter()
                    .rev()
                    .take(n)
                    .map(|r| r.version.clone())
                    .collect();
                keep.extend(self.current_version()?);
                keep.extend(self.inventory()?.into_iter().map(|(_, v, _, _)| v));
                keep
            }
        };
        let mut stack: Vec<String> = retained.iter().cloned().collect();
        while let Some(v) = stack.pop() {
            let Some(row) = by_id.get(v.as_str()) else {
                continue;
            };
            if row.kind == StorageKind::Keyframe {
                continue;
            }
            if let Some(p) = &row.parent
                && retained.insert(p.clone())
            {
                stack.push(p.clone());
            }
        }
        // rounds whose kept updates a retained version's line replays
        let mut replayed = std::collections::BTreeSet::new();
        for v in &retained {
            let mut at = by_id.get(v.as_str()).copied();
            while let Some(row) = at {
                if !replayed.insert(row.round) {
                    break;
                }
                at = row.parent.as_deref().and_then(|p| by_id.get(p).copied());
            }
        }
        let before = self.storage()?;
        let tx = self.conn.unchecked_transaction()?;
        let mut dropped = Vec::new();
        for row in rows.iter().filter(|r| !retained.contains(&r.version)) {
            for table in [
                "versions",
                "version_chunks",
                "deltas",
                "lineage",
                "optimizer_states",
            ] {
                tx.execute(
                    &format!("DELETE FROM {table} WHERE version = ?1"),
                    [&row.version],
                )?;
            }
            dropped.push(row.version.clone());
        }
        tx.execute(
            "DELETE FROM deltas WHERE parent NOT IN (SELECT version FROM versions)",
            [],
        )?;
        let chunks = tx.execute(
            "DELETE FROM chunks WHERE hash NOT IN (SELECT hash FROM version_chunks)",
            [],
        )?;
        tx.execute(
            "DELETE FROM specs WHERE hash NOT IN (SELECT spec FROM versions WHERE spec IS NOT NULL)",
            [],
        )?;
        let mut stmt = tx.prepare("SELECT DISTINCT round FROM kept_updates")?;
        let kept_rounds = stmt
            .query_map([], |r| r.get::<_, i64>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        drop(stmt);
        let mut update_rounds = 0;
        for round in kept_rounds {
            if !replayed.contains(&(round as u64)) {
                tx.execute("DELETE FROM kept_updates WHERE round = ?1", [round])?;
                update_rounds += 1;
            }
        }
        let after = storage_totals(&tx)?;
        if dry_run {
            tx.rollback()?;
        } else {
            tx.commit()?;
        }
        Ok(GcReport {
            versions_dropped: dropped,
            versions_kept: retained.len(),
            chunks_dropped: chunks,
            update_rounds_dropped: update_rounds,
            before,
            after,
        })
    }
}
