//! Rounds, the per-vehicle ledger and rejections.

use super::rows::{LEDGER_COLUMNS, client_from_sql, insert_client};
use super::status::ClientStatus;
use super::{ClientRow, RoundRow, Store, StoreError, iso8601};
use rusqlite::{OptionalExtension, params};

impl Store {
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
