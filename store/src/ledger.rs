//! Rounds, the per-vehicle ledger and rejections.

use super::rows::{
    LEDGER_COLUMNS, ROUND_COLUMNS, client_from_sql, insert_client, round_from_sql, update_round,
};
use super::status::ClientStatus;
use super::{ClientRow, RoundRow, Store, StoreError};
use rusqlite::{OptionalExtension, params};
use std::collections::HashMap;

/// A vehicle's suspected updates.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Suspicion {
    /// How many of its ledger rows are suspected.
    pub count: u64,
    /// The latest such round.
    pub round: u64,
    /// Why it was suspected then.
    pub reason: String,
}

/// What a restarted server needs to resume a round.
#[derive(Debug, Clone)]
pub struct OpenRoundState {
    /// The round.
    pub round: u64,
    /// Its announcement, postcard-encoded.
    pub announce: Vec<u8>,
    /// Each acknowledged update: its ledger row, body and clipping scale.
    pub updates: Vec<(ClientRow, Vec<u8>, f64)>,
}

impl Store {
    /// Round number to use next: never reuses one, even of abandoned rounds.
    pub fn next_round(&self) -> Result<u64, StoreError> {
        let max: Option<i64> = self
            .conn
            .query_row("SELECT MAX(round) FROM rounds", [], |r| r.get(0))?;
        Ok(max.map(|m| m as u64 + 1).unwrap_or(1))
    }

    /// Marks rounds left open by a crash as abandoned, except `keep` (the
    /// one being resumed); returns how many.
    pub fn abandon_open_rounds(&self, now_ms: u64, keep: Option<u64>) -> Result<usize, StoreError> {
        let keep = keep.map_or(-1, |r| r as i64);
        let n = self.conn.execute(
            "UPDATE rounds SET status = 'abandoned', finished_ms = ?1 WHERE status = 'open' AND round != ?2",
            params![now_ms as i64, keep],
        )?;
        self.conn
            .execute("DELETE FROM open_rounds WHERE round != ?1", [keep])?;
        self.conn
            .execute("DELETE FROM round_updates WHERE round != ?1", [keep])?;
        Ok(n)
    }

    /// Keeps the open round's announcement for a restart.
    pub fn save_open_round(&self, round: u64, announce: &[u8]) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT OR REPLACE INTO open_rounds (round, announce) VALUES (?1, ?2)",
            params![round as i64, announce],
        )?;
        Ok(())
    }

    /// Makes an accepted update durable: its ledger row and its body, in one
    /// transaction, before the receipt is sent.
    /// `scale` is the norm clipping applied before the fold (1: none).
    pub fn accept_update(
        &mut self,
        row: &ClientRow,
        body: &[u8],
        scale: f64,
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        insert_client(&tx, row)?;
        tx.execute(
            "INSERT OR REPLACE INTO round_updates (round, client, body, scale, weight) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![row.round as i64, row.client, body, scale, row.weight],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Records what the closing round's rule settled for each acknowledged
    /// update, `(client, weight, scale)`: what the lineage and a replay use.
    pub fn settle_updates(
        &mut self,
        round: u64,
        settled: &[(String, f64, f64)],
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        for (client, weight, scale) in settled {
            tx.execute(
                "UPDATE round_updates SET weight = ?3, scale = ?4 WHERE round = ?1 AND client = ?2",
                params![round as i64, client, weight, scale],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// One acknowledged update's body in the open round `round`.
    pub fn round_update_body(
        &self,
        round: u64,
        client: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT body FROM round_updates WHERE round = ?1 AND client = ?2",
                params![round as i64, client],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// The accepted ledger rows of the newest finished round that had any:
    /// the fleet's reference for update norms and claims.
    pub fn reference_rows(&self) -> Result<Vec<ClientRow>, StoreError> {
        let round: Option<i64> = self
            .conn
            .query_row(
                "SELECT MAX(l.round) FROM ledger l JOIN rounds r ON r.round = l.round
                 WHERE r.status = 'finished' AND l.status = 'accepted'",
                [],
                |r| r.get(0),
            )
            .optional()?
            .flatten();
        match round {
            Some(round) => Ok(self
                .clients(round as u64)?
                .into_iter()
                .filter(|c| c.status == ClientStatus::Accepted)
                .collect()),
            None => Ok(Vec::new()),
        }
    }

    /// Each vehicle's suspected updates: how many, and the latest one's
    /// round and reason.
    pub fn suspicions(&self) -> Result<HashMap<String, Suspicion>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT client, COUNT(*), MAX(round),
                (SELECT s.suspect FROM ledger s WHERE s.client = l.client AND s.suspect IS NOT NULL
                 ORDER BY s.round DESC LIMIT 1)
             FROM ledger l WHERE suspect IS NOT NULL GROUP BY client",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                Suspicion {
                    count: r.get::<_, i64>(1)? as u64,
                    round: r.get::<_, i64>(2)? as u64,
                    reason: r.get::<_, Option<String>>(3)?.unwrap_or_default(),
                },
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Each vehicle's largest weight in a finished round (its claimed rows
    /// where no weight was recorded).
    pub fn weight_history(&self) -> Result<HashMap<String, f64>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT l.client, MAX(COALESCE(l.weight, l.samples)) FROM ledger l
             JOIN rounds r ON r.round = l.round
             WHERE r.status = 'finished' AND l.status = 'accepted' GROUP BY l.client",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, f64>(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The newest round still open with its stored announcement, and the
    /// ledger rows and bodies of the updates it acknowledged.
    pub fn open_round_state(&self) -> Result<Option<OpenRoundState>, StoreError> {
        let found: Option<(i64, Vec<u8>)> = self
            .conn
            .query_row(
                "SELECT o.round, o.announce FROM open_rounds o JOIN rounds r ON r.round = o.round \
                 WHERE r.status = 'open' ORDER BY o.round DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((round, announce)) = found else {
            return Ok(None);
        };
        let mut bodies = std::collections::HashMap::new();
        let mut stmt = self.conn.prepare(
            "SELECT client, body, scale FROM round_updates WHERE round = ?1 ORDER BY rowid",
        )?;
        let rows = stmt.query_map([round], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, f64>(2)?,
            ))
        })?;
        for item in rows {
            let (client, body, scale) = item?;
            bodies.insert(client, (body, scale));
        }
        let updates = self
            .clients(round as u64)?
            .into_iter()
            .filter_map(|row| {
                bodies
                    .remove(&row.client)
                    .map(|(body, scale)| (row, body, scale))
            })
            .collect();
        Ok(Some(OpenRoundState {
            round: round as u64,
            announce,
            updates,
        }))
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

    /// Ledger rows of vehicles that sit a round out (their budget), in one
    /// transaction.
    pub fn record_skipped(&mut self, rows: &[ClientRow]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        for row in rows {
            insert_client(&tx, row)?;
        }
        tx.commit()?;
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
        update_round(&tx, row, finished_ms)?;
        for c in clients {
            insert_client(&tx, c)?;
        }
        tx.execute(
            "DELETE FROM open_rounds WHERE round = ?1",
            [row.round as i64],
        )?;
        tx.execute(
            "DELETE FROM round_updates WHERE round = ?1",
            [row.round as i64],
        )?;
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
            status: ClientStatus::Late,
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

    /// The base version (hex) round `round` was announced on, if the
    /// ledger has the round.
    pub fn round_base(&self, round: u64) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT base_version FROM rounds WHERE round = ?1",
                [round as i64],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Whether `client`'s update trained for round `trained` was accepted
    /// in any round (an asynchronous round takes updates trained for
    /// earlier ones: its row says how many rounds earlier, `staleness`).
    pub fn update_accepted(&self, trained: u64, client: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM ledger WHERE client = ?2 AND status = 'accepted'
                 AND round - COALESCE(staleness, 0) = ?1 LIMIT 1",
                params![trained as i64, client],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Status of a client's ledger row, if any.
    pub fn client_status(
        &self,
        round: u64,
        client: &str,
    ) -> Result<Option<ClientStatus>, StoreError> {
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
        // One row per (client, reason, minute), keeping the latest detail.
        self.conn.execute(
            "INSERT INTO rejection_counts (minute, client, reason, count, round, last_ms, detail)
             VALUES (?1, ?2, ?3, 1, ?4, ?5, ?6)
             ON CONFLICT (minute, client, reason) DO UPDATE SET count = count + 1,
             round = excluded.round, last_ms = excluded.last_ms, detail = excluded.detail",
            params![
                (now_ms / 60_000) as i64,
                client.unwrap_or(""),
                reason,
                round.map(|r| r as i64),
                now_ms as i64,
                detail
            ],
        )?;
        Ok(())
    }

    /// Rows of the rejection record (one per client, reason and minute).
    pub fn rejection_rows(&self) -> Result<u64, StoreError> {
        let rows: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM rejection_counts", [], |r| r.get(0))?;
        Ok(rows as u64)
    }

    /// Rejections per reason.
    pub fn rejection_counts(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let mut stmt = self
            .conn
            // databases written before aggregation still hold one row per message
            .prepare(
                "SELECT reason, SUM(n) FROM (
                   SELECT reason, count AS n FROM rejection_counts
                   UNION ALL SELECT reason, 1 AS n FROM rejections)
                 GROUP BY reason ORDER BY reason",
            )?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// All rounds, oldest first.
    pub fn rounds(&self) -> Result<Vec<RoundRow>, StoreError> {
        let sql = format!("SELECT {ROUND_COLUMNS} FROM rounds ORDER BY round");
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map([], round_from_sql)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Ledger rows of one round.
    pub fn clients(&self, round: u64) -> Result<Vec<ClientRow>, StoreError> {
        let sql = format!("SELECT {LEDGER_COLUMNS} FROM ledger WHERE round = ?1 ORDER BY client");
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map([round as i64], client_from_sql)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every accepted ledger row, by round then client.
    pub fn accepted_rows(&self) -> Result<Vec<ClientRow>, StoreError> {
        let sql = format!(
            "SELECT {LEDGER_COLUMNS} FROM ledger WHERE status = 'accepted' ORDER BY round, client"
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map([], client_from_sql)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Each task's figures per round, from the ledger's accepted rows: the
    /// vehicles and samples behind each head, and the round's base model
    /// on their held-out rows (accuracy weighted by rows, RMSE pooled from
    /// squared errors). Ordered by round, then head.
    pub fn task_metrics(&self) -> Result<Vec<TaskMetrics>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT round, head, COUNT(*), SUM(samples), SUM(holdout_samples),
                SUM(holdout_samples * holdout_accuracy)
                    / NULLIF(SUM(CASE WHEN holdout_accuracy IS NULL THEN 0 ELSE holdout_samples END), 0),
                SUM(holdout_samples * holdout_rmse * holdout_rmse)
                    / NULLIF(SUM(CASE WHEN holdout_rmse IS NULL THEN 0 ELSE holdout_samples END), 0)
             FROM ledger WHERE status = 'accepted' AND head IS NOT NULL
             GROUP BY round, head ORDER BY round, head",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(TaskMetrics {
                round: r.get::<_, i64>(0)? as u64,
                head: r.get(1)?,
                clients: r.get::<_, i64>(2)? as u64,
                samples: r.get::<_, i64>(3)? as u64,
                holdout_samples: r.get::<_, i64>(4)? as u64,
                holdout_accuracy: r.get(5)?,
                holdout_rmse: r.get::<_, Option<f64>>(6)?.map(f64::sqrt),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// One task's figures in one round ([`Store::task_metrics`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TaskMetrics {
    /// Round.
    pub round: u64,
    /// The head's label.
    pub head: String,
    /// Vehicles whose accepted update trained it.
    pub clients: u64,
    /// Their training samples.
    pub samples: u64,
    /// Held-out rows they scored the round's base model on.
    pub holdout_samples: u64,
    /// Its accuracy there (classification heads).
    pub holdout_accuracy: Option<f64>,
    /// Its RMSE there, in the target's units (regression heads).
    pub holdout_rmse: Option<f64>,
}
