//! A round's ledger rows: one per selected vehicle as it opens, and the
//! round's totals from them as it closes.

use super::rounds::OpenRound;
use convoy_store::{ClientRow, ClientStatus, RoundRow, RoundStatus};

use convoy_shared::version::{self};
use std::collections::{BTreeMap, BTreeSet};

/// One `dropped` ledger row per selected vehicle: what stands until it reports.
pub(super) fn ledger_rows(
    round: u64,
    selected: &BTreeSet<String>,
    codec: &str,
) -> BTreeMap<String, ClientRow> {
    selected
        .iter()
        .map(|c| (c.clone(), ledger_row(round, c, codec)))
        .collect()
}

/// A vehicle's ledger row as a round starts it: nothing from it yet.
pub(super) fn ledger_row(round: u64, client: &str, codec: &str) -> ClientRow {
    ClientRow {
        round,
        client: client.to_string(),
        status: ClientStatus::Dropped,
        codec: codec.to_string(),
        ..Default::default()
    }
}

/// The round's ledger row from its vehicles' rows.
pub(super) fn round_totals(r: &OpenRound, downlink_codec: &str) -> RoundRow {
    let accepted: Vec<&ClientRow> = r
        .rows
        .values()
        .filter(|c| c.status == ClientStatus::Accepted)
        .collect();
    let samples: u64 = accepted.iter().map(|c| c.samples).sum();
    let all = || r.rows.values().chain(std::iter::once(&r.unselected_down));
    RoundRow {
        round: r.announce.round,
        status: RoundStatus::Failed,
        base_version: version::hex(&r.announce.base_version()),
        codec: r.announce.codec.name(),
        clients_selected: r.selected.len() as u64,
        clients_reported: accepted.len() as u64,
        clients_failed: r
            .rows
            .values()
            .filter(|c| c.status == ClientStatus::Failed)
            .count() as u64,
        bytes_up: accepted.iter().map(|c| c.bytes_up).sum(),
        bytes_down: all().map(|c| c.bytes_down).sum(),
        wire_bytes_up: r.rows.values().map(|c| c.wire_bytes_up).sum(),
        wire_bytes_down: all().map(|c| c.wire_bytes_down).sum(),
        bytes_up_predicted: accepted.iter().map(|c| c.bytes_up_predicted).sum(),
        train_seconds_sum: accepted.iter().map(|c| c.train_seconds).sum(),
        train_seconds_max: accepted.iter().map(|c| c.train_seconds).fold(0.0, f64::max),
        samples,
        steps: accepted.iter().map(|c| c.steps).sum(),
        flops: accepted.iter().map(|c| c.flops).sum(),
        loss: (samples > 0).then(|| r.loss_weighted / samples as f64),
        bytes_down_raw: r.bytes_down_raw,
        downlink_codec: downlink_codec.to_string(),
        encode_seconds: accepted.iter().map(|c| c.encode_seconds).sum(),
        decode_seconds: accepted.iter().map(|c| c.decode_seconds).sum(),
        bytes_up_raw: accepted.iter().map(|c| c.bytes_up_raw).sum(),
        started_at: convoy_store::iso8601(r.started_ms),
        ..holdout_totals(&accepted)
    }
}

/// The base model's scores on the vehicles' held-out rows, pooled:
/// accuracy weighted by rows, RMSE from the summed squared errors.
pub(super) fn holdout_totals(accepted: &[&ClientRow]) -> RoundRow {
    let scored = |f: fn(&ClientRow) -> Option<f64>| -> Option<f64> {
        let with: Vec<(f64, f64)> = accepted
            .iter()
            .filter_map(|c| f(c).map(|v| (c.holdout_samples as f64, v)))
            .filter(|(n, _)| *n > 0.0)
            .collect();
        let n: f64 = with.iter().map(|(n, _)| n).sum();
        (n > 0.0).then(|| with.iter().map(|(k, v)| k * v).sum::<f64>() / n)
    };
    RoundRow {
        holdout_samples: accepted.iter().map(|c| c.holdout_samples).sum(),
        holdout_accuracy: scored(|c| c.holdout_accuracy),
        holdout_rmse: scored(|c| c.holdout_rmse.map(|r| r * r)).map(f64::sqrt),
        ..Default::default()
    }
}
