//! The row types of `rounds` and `ledger`, and the one place each row type
//! meets its columns.

use super::status::{ClientStatus, RoundStatus};
use super::{StoreError, iso8601};
use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};

/// One row of the per-round table (`report`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct RoundRow {
    /// Round number.
    pub round: u64,
    /// Where the round stands.
    pub status: RoundStatus,
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
    /// Selected vehicles that reported they cannot serve the round.
    pub clients_failed: u64,
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
    /// Held-out rows the reporting vehicles scored this round's base model on.
    pub holdout_samples: u64,
    /// The base model's accuracy over them, sample-weighted across vehicles.
    pub holdout_accuracy: Option<f64>,
    /// The base model's RMSE over them (pooled), in the target's units.
    pub holdout_rmse: Option<f64>,
    /// The strategy the round's model was made by (server optimiser,
    /// vehicles' objective, rule and learning rate), as its provenance
    /// records it; `None` for a round that published nothing.
    pub strategy: Option<String>,
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
    /// What came of the vehicle.
    pub status: ClientStatus,
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
    /// Held-out rows the vehicle scored the round's base model on.
    pub holdout_samples: u64,
    /// The base model's accuracy on them (classification).
    pub holdout_accuracy: Option<f64>,
    /// The base model's RMSE on them, in the target's units (regression).
    pub holdout_rmse: Option<f64>,
    /// The vehicle's personalised model (base with a locally tuned head) on
    /// the same rows: accuracy.
    pub personal_accuracy: Option<f64>,
    /// The personalised model's RMSE on them.
    pub personal_rmse: Option<f64>,
    /// Label of the head (task) it trained, when accepted.
    pub head: Option<String>,
    /// How its model download was served: `chunks:N` (N content chunks of
    /// the full model) or `delta:K` (a chain of K stored deltas).
    pub transfer: Option<String>,
    /// Training seconds the cost model predicted for it.
    pub train_seconds_predicted: Option<f64>,
    /// Download bytes the cost model predicted for it.
    pub bytes_down_predicted: u64,
    /// The weight its update counted with (its claimed rows, capped; 1
    /// under equal weights), once the round settled it.
    pub weight: Option<f64>,
    /// Why the server suspects this update (clipped, capped, far from the
    /// round's aggregate, left out by the rule, a copy), if it does.
    pub suspect: Option<String>,
    /// Asynchronous rounds: how many versions older than this round's base
    /// the model the update was trained on was (0: this round's own); none
    /// for synchronous rounds and rows without an update.
    pub staleness: Option<u64>,
}

/// The ledger's columns, in the order [`client_from_sql`] and
/// [`insert_client`] use: the one place a ledger row meets its table.
pub(super) const LEDGER_COLUMNS: &str = "round, client, status, samples, bytes_up, wire_bytes_up, chunks_up, retries, \
    bytes_down, wire_bytes_down, chunks_down, train_seconds, steps, epochs, loss, flops, bytes_up_predicted, \
    device, codec, update_norm, reason, bytes_up_raw, residual_norm, encode_seconds, decode_seconds, \
    flops_predicted, holdout_samples, holdout_accuracy, holdout_rmse, personal_accuracy, personal_rmse, head, \
    transfer, train_seconds_predicted, bytes_down_predicted, weight, suspect, staleness";

pub(super) fn client_from_sql(r: &rusqlite::Row<'_>) -> rusqlite::Result<ClientRow> {
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
        holdout_samples: count(26)?,
        holdout_accuracy: r.get(27)?,
        holdout_rmse: r.get(28)?,
        personal_accuracy: r.get(29)?,
        personal_rmse: r.get(30)?,
        head: r.get(31)?,
        transfer: r.get(32)?,
        train_seconds_predicted: r.get(33)?,
        bytes_down_predicted: count(34)?,
        weight: r.get(35)?,
        suspect: r.get(36)?,
        staleness: r.get::<_, Option<i64>>(37)?.map(|v| v as u64),
    })
}

pub(super) fn insert_client(conn: &Connection, c: &ClientRow) -> Result<(), StoreError> {
    let marks: Vec<String> = (1..=38).map(|i| format!("?{i}")).collect();
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
            c.holdout_samples as i64,
            c.holdout_accuracy,
            c.holdout_rmse,
            c.personal_accuracy,
            c.personal_rmse,
            c.head,
            c.transfer,
            c.train_seconds_predicted,
            c.bytes_down_predicted as i64,
            c.weight,
            c.suspect,
            c.staleness.map(|v| v as i64),
        ],
    )?;
    Ok(())
}

/// The rounds table's columns, in the order [`round_from_sql`] reads them.
pub(super) const ROUND_COLUMNS: &str = "round, status, base_version, model_version, codec, \
    clients_selected, clients_reported, clients_late, bytes_up, bytes_down, wire_bytes_up, \
    wire_bytes_down, bytes_up_raw, bytes_up_predicted, train_seconds_sum, train_seconds_max, samples, \
    steps, flops, loss, eval_loss, accuracy, rmse, started_ms, finished_ms, bytes_down_raw, \
    downlink_codec, encode_seconds, decode_seconds, clients_failed, holdout_samples, holdout_accuracy, \
    holdout_rmse, strategy";

pub(super) fn round_from_sql(r: &rusqlite::Row<'_>) -> rusqlite::Result<RoundRow> {
    let count = |i: usize| r.get::<_, i64>(i).map(|v| v as u64);
    let mut row = RoundRow {
        round: count(0)?,
        status: r.get(1)?,
        base_version: r.get(2)?,
        model_version: r.get(3)?,
        codec: r.get(4)?,
        clients_selected: count(5)?,
        clients_reported: count(6)?,
        clients_late: count(7)?,
        bytes_up: count(8)?,
        bytes_down: count(9)?,
        wire_bytes_up: count(10)?,
        wire_bytes_down: count(11)?,
        bytes_up_raw: count(12)?,
        bytes_up_predicted: count(13)?,
        train_seconds_sum: r.get(14)?,
        train_seconds_max: r.get(15)?,
        samples: count(16)?,
        steps: count(17)?,
        flops: count(18)?,
        loss: r.get(19)?,
        eval_loss: r.get(20)?,
        accuracy: r.get(21)?,
        rmse: r.get(22)?,
        started_at: iso8601(count(23)?),
        finished_at: r.get::<_, Option<i64>>(24)?.map(|ms| iso8601(ms as u64)),
        bytes_down_raw: count(25)?,
        downlink_codec: r.get(26)?,
        encode_seconds: r.get(27)?,
        decode_seconds: r.get(28)?,
        clients_failed: count(29)?,
        holdout_samples: count(30)?,
        holdout_accuracy: r.get(31)?,
        holdout_rmse: r.get(32)?,
        strategy: r.get(33)?,
        compression_up: None,
    };
    row.compression_up = (row.bytes_up > 0).then(|| row.bytes_up_raw as f64 / row.bytes_up as f64);
    Ok(row)
}

/// Writes a closing round's totals (late updates already counted add up).
pub(super) fn update_round(
    conn: &Connection,
    row: &RoundRow,
    finished_ms: u64,
) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE rounds SET status = ?2, model_version = ?3, clients_selected = ?4, clients_reported = ?5,
         clients_late = clients_late + ?6, bytes_up = ?7, bytes_down = ?8, wire_bytes_up = ?9, wire_bytes_down = ?10,
         bytes_up_raw = ?11, bytes_up_predicted = ?12, train_seconds_sum = ?13, train_seconds_max = ?14,
         samples = ?15, steps = ?16, flops = ?17, loss = ?18, eval_loss = ?19, accuracy = ?20, rmse = ?21,
         finished_ms = ?22, bytes_down_raw = ?23, downlink_codec = ?24, encode_seconds = ?25,
         decode_seconds = ?26, clients_failed = ?27, holdout_samples = ?28, holdout_accuracy = ?29,
         holdout_rmse = ?30, strategy = ?31 WHERE round = ?1",
        params![
            row.round as i64, row.status, row.model_version, row.clients_selected as i64,
            row.clients_reported as i64, row.clients_late as i64, row.bytes_up as i64, row.bytes_down as i64,
            row.wire_bytes_up as i64, row.wire_bytes_down as i64, row.bytes_up_raw as i64,
            row.bytes_up_predicted as i64, row.train_seconds_sum, row.train_seconds_max, row.samples as i64,
            row.steps as i64, row.flops as i64, row.loss, row.eval_loss, row.accuracy, row.rmse,
            finished_ms as i64, row.bytes_down_raw as i64, row.downlink_codec, row.encode_seconds,
            row.decode_seconds, row.clients_failed as i64, row.holdout_samples as i64,
            row.holdout_accuracy, row.holdout_rmse, row.strategy,
        ],
    )?;
    Ok(())
}
