//! Saving a published version: its weights kept as a keyframe, a delta or
//! lineage only, as the policy picks, with its lineage rows.

use super::*;

impl Store {
    /// Stores a version: its lineage (from the round's acknowledged
    /// updates, kept whole when `store.keep_updates`), its description, and
    /// its weights as the policy decides. Storing an id already stored
    /// changes nothing. Returns how it is kept.
    pub fn save_version(
        &self,
        p: &Publication<'_>,
        eval: Option<&Evaluation>,
        now_ms: u64,
    ) -> Result<StorageKind, StoreError> {
        let v = p.version;
        let hex = version::hex(&v.manifest.version);
        if let Some(row) = self.version_row(&hex)? {
            return Ok(row.kind);
        }
        let parent = match &v.parent {
            Some(id) => self.version_row(&version::hex(id))?,
            None => None,
        };
        let row_meta = RowMeta {
            round: v.round,
            manifest: v.manifest.clone(),
            task: v.task.clone(),
            server_lr: p.server_lr,
            exact: p.exact,
            clean: p.clean,
        };
        let encode =
            |e: postcard::Error| self.corrupt(&hex, format!("cannot serialise the version: {e}"));
        let meta = postcard::to_allocvec(&row_meta).map_err(encode)?;
        let spec = postcard::to_allocvec(&v.spec).map_err(encode)?;
        let spec_hash = blake3::hash(&spec);
        // What applying the delta costs, measured (on the child: same work).
        let link_secs = match p.delta {
            Some(d) => {
                let t = Instant::now();
                publish::apply(&v.params, d).map_err(|e| self.corrupt(&hex, e.to_string()))?;
                t.elapsed().as_secs_f64()
            }
            None => 0.0,
        };
        let tx = self.conn.unchecked_transaction()?;
        let lineage = lineage_of(&tx, v.round, p.delta.is_some())?;
        for (seq, (row, body)) in lineage.iter().enumerate() {
            tx.execute(
                "INSERT OR REPLACE INTO lineage (version, client, samples, head, update_hash, scale, weight)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![hex, row.client, row.samples as i64, row.head, row.update_hash, row.scale, row.weight],
            )?;
            if self.policy.keep_updates {
                tx.execute(
                    "INSERT OR REPLACE INTO kept_updates (round, seq, client, body, scale, weight)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![
                        v.round as i64,
                        seq as i64,
                        row.client,
                        body,
                        row.scale,
                        row.weight
                    ],
                )?;
            }
        }
        let kept = self.policy.keep_updates && !lineage.is_empty();
        let budget = (self.policy.budget_mb * 1e6) as u64;
        let over_budget = |extra: u64| -> Result<bool, StoreError> {
            Ok(budget > 0 && self.storage()?.versions() + extra > budget)
        };
        let kind = match (&parent, p.delta) {
            (Some(parent), Some(delta)) => {
                let depth = parent.depth + 1;
                let chain_secs = parent.rebuild_secs + link_secs;
                let replay_secs = parent.rebuild_secs + p.replay_secs;
                if depth > self.policy.max_chain_depth
                    || chain_secs.min(replay_secs) > self.policy.max_rebuild_secs
                {
                    StorageKind::Keyframe
                } else if kept
                    && p.clean
                    && replay_secs <= self.policy.max_rebuild_secs
                    && over_budget(delta.bytes.len() as u64)?
                {
                    StorageKind::Replay
                } else if chain_secs <= self.policy.max_rebuild_secs {
                    StorageKind::Delta
                } else {
                    StorageKind::Keyframe
                }
            }
            _ => StorageKind::Keyframe,
        };
        if over_budget(0)? {
            tracing::warn!(
                budget_mb = self.policy.budget_mb,
                "the model store is over its storage budget; raise store.budget_mb, lower store.max_chain_depth or turn on store.keep_updates"
            );
        }
        let (depth, rebuild_secs) = match (kind, &parent) {
            (StorageKind::Keyframe, _) | (_, None) => (0, 0.0),
            (StorageKind::Delta, Some(parent)) => {
                (parent.depth + 1, parent.rebuild_secs + link_secs)
            }
            (StorageKind::Replay, Some(parent)) => {
                (parent.depth + 1, parent.rebuild_secs + p.replay_secs)
            }
        };
        let spec_added = tx.execute(
            "INSERT OR IGNORE INTO specs (hash, spec) VALUES (?1, ?2)",
            params![spec_hash.as_bytes(), spec],
        )?;
        let mut stored = (meta.len() + spec_added * spec.len()) as u64;
        if kind == StorageKind::Keyframe {
            let bytes = v.params.canonical_bytes();
            for (i, piece) in bytes.chunks(MODEL_CHUNK_SIZE).enumerate() {
                let hash = version::chunk_hash(piece);
                let added = tx.execute(
                    "INSERT OR IGNORE INTO chunks (hash, bytes) VALUES (?1, ?2)",
                    params![&hash[..], piece],
                )?;
                stored += (added * piece.len()) as u64;
                tx.execute(
                    "INSERT OR REPLACE INTO version_chunks (version, idx, hash) VALUES (?1, ?2, ?3)",
                    params![hex, i as i64, &hash[..]],
                )?;
            }
        }
        // A delta is kept for every delta version, and for a keyframe when
        // it is small (a vehicle behind can still take the chain through it).
        if let (Some(delta), Some(parent)) = (p.delta, &v.parent) {
            let small = (delta.bytes.len() as u64) * 2 <= v.manifest.total_len as u64;
            if kind == StorageKind::Delta || (kind == StorageKind::Keyframe && small) {
                tx.execute(
                    "INSERT OR REPLACE INTO deltas (version, parent, codec, bytes) VALUES (?1, ?2, ?3, ?4)",
                    params![hex, version::hex(parent), delta.codec.name(), delta.bytes],
                )?;
                stored += delta.bytes.len() as u64;
            }
        }
        tx.execute(
            &format!(
                "INSERT INTO versions ({ROW_COLUMNS}, meta, spec) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"
            ),
            params![
                hex,
                v.round as i64,
                v.parent.as_ref().map(version::hex),
                now_ms as i64,
                v.manifest.total_len as i64,
                kind.as_str(),
                stored as i64,
                depth as i64,
                rebuild_secs,
                eval.map(|e| e.loss),
                eval.and_then(|e| e.accuracy),
                eval.and_then(|e| e.rmse),
                meta,
                spec_hash.as_bytes(),
            ],
        )?;
        if let Some(state) = p.optimizer_state {
            // a restart needs the newest; replaying a kept round needs its
            // parent's, so with kept updates every version's stays
            if !self.policy.keep_updates {
                tx.execute("DELETE FROM optimizer_states", [])?;
            }
            tx.execute(
                "INSERT OR REPLACE INTO optimizer_states (version, state) VALUES (?1, ?2)",
                params![hex, state],
            )?;
        }
        tx.commit()?;
        Ok(kind)
    }
}

/// Lineage rows of `round`'s acknowledged updates (with their bodies), in
/// the order they were folded; none for a version with no parent.
pub(super) fn lineage_of(
    conn: &rusqlite::Connection,
    round: u64,
    has_parent: bool,
) -> Result<Vec<(LineageRow, Vec<u8>)>, StoreError> {
    if !has_parent {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare(
        "SELECT u.client, u.body, u.scale, l.head, u.weight FROM round_updates u
         LEFT JOIN ledger l ON l.round = u.round AND l.client = u.client
         WHERE u.round = ?1 ORDER BY u.rowid",
    )?;
    let rows = stmt.query_map([round as i64], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, Vec<u8>>(1)?,
            r.get::<_, f64>(2)?,
            r.get::<_, Option<String>>(3)?,
            r.get::<_, Option<f64>>(4)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (client, body, scale, head, weight) = row?;
        let samples = postcard::from_bytes::<UpdateBody>(&body).map_or(0, |u| u.samples);
        let weight = weight.unwrap_or(samples as f64);
        out.push((
            LineageRow {
                client,
                samples,
                head,
                update_hash: blake3::hash(&body).to_hex().to_string(),
                scale,
                weight,
            },
            body,
        ));
    }
    Ok(out)
}
