//! `report --vehicles`, `--tasks` and `--clients`: the ledger by vehicle,
//! by task and by one round's vehicles.

use super::*;

/// Every vehicle's totals and its data use against the `caps` (daily,
/// monthly bytes) of the server's `[budget]`.
pub fn vehicles(
    db: &Path,
    format: Format,
    caps: (Option<u64>, Option<u64>),
) -> Result<String, StoreError> {
    let store = Store::open_existing(db)?;
    let rows = store.vehicle_summaries(convoy_runtime::clock::now_ms(), caps)?;
    Ok(match format {
        Format::Json => to_json(&rows)?,
        Format::Csv => to_csv(&rows)?,
        Format::Table => {
            if rows.is_empty() {
                return Ok("(no vehicles yet)\n".into());
            }
            let headers = [
                "vehicle",
                "accepted",
                "rounds",
                "skipped",
                "bytes_up",
                "bytes_down",
                "wire_total",
                "train_s",
                "rejections",
                "suspected",
                "today",
                "day_cap",
                "month",
                "month_cap",
                "budget",
                "model",
                "last_seen",
            ];
            let cap = |c: Option<u64>| c.map_or("-".to_string(), human_bytes);
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|v| {
                    vec![
                        if v.blocked {
                            format!("{} (blocked)", v.client)
                        } else {
                            v.client.clone()
                        },
                        v.accepted.to_string(),
                        v.rounds.to_string(),
                        v.skipped.to_string(),
                        v.bytes_up.to_string(),
                        v.bytes_down.to_string(),
                        (v.wire_bytes_up + v.wire_bytes_down).to_string(),
                        format!("{:.2}", v.train_seconds),
                        v.rejections.to_string(),
                        v.suspected.to_string(),
                        human_bytes(v.bytes_today),
                        cap(v.daily_cap),
                        human_bytes(v.bytes_this_month),
                        cap(v.monthly_cap),
                        v.budget_used
                            .map_or("-".into(), |b| format!("{:.0}%", b * 100.0)),
                        v.model_version
                            .as_deref()
                            .map_or("-".into(), |m| m[..12.min(m.len())].to_string()),
                        v.last_seen.clone().unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            table(&headers, &["vehicle", "model", "last_seen"], &cells)
        }
    })
}

/// Each task's figures per round: which head, how many vehicles trained
/// it, and the round's base model on their held-out rows.
pub fn tasks(db: &Path, format: Format) -> Result<String, StoreError> {
    let store = Store::open_existing(db)?;
    let rows = store.task_metrics()?;
    Ok(match format {
        Format::Json => to_json(&rows)?,
        Format::Csv => to_csv(&rows)?,
        Format::Table => {
            if rows.is_empty() {
                return Ok("(no accepted updates yet)\n".into());
            }
            let headers = [
                "round",
                "task",
                "clients",
                "samples",
                "holdout",
                "on_vehicles",
            ];
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|t| {
                    vec![
                        t.round.to_string(),
                        t.head.clone(),
                        t.clients.to_string(),
                        t.samples.to_string(),
                        t.holdout_samples.to_string(),
                        on_vehicles(t.holdout_accuracy, t.holdout_rmse),
                    ]
                })
                .collect();
            table(&headers, &["task"], &cells)
        }
    })
}

/// The per-client ledger rows of `round`.
pub fn clients(db: &Path, round: u64, format: Format) -> Result<String, StoreError> {
    let store = Store::open_existing(db)?;
    let rows: Vec<ClientRow> = store.clients(round)?;
    Ok(match format {
        Format::Json => to_json(&rows)?,
        Format::Csv => to_csv(&rows)?,
        Format::Table => {
            if rows.is_empty() {
                return Ok(format!("(no ledger rows for round {round})\n"));
            }
            let headers = [
                "client",
                "status",
                "task",
                "samples",
                "bytes_up",
                "wire_up",
                "bytes_down",
                "wire_down",
                "retry",
                "train_s",
                "loss",
                "flops",
                "flops_predicted",
                "on_vehicle",
                "personal",
                "device",
                "reason",
            ];
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|c| {
                    vec![
                        c.client.clone(),
                        c.status.to_string(),
                        c.head.clone().unwrap_or_else(|| "-".into()),
                        c.samples.to_string(),
                        c.bytes_up.to_string(),
                        c.wire_bytes_up.to_string(),
                        c.bytes_down.to_string(),
                        c.wire_bytes_down.to_string(),
                        c.retries.to_string(),
                        format!("{:.3}", c.train_seconds),
                        opt(c.loss, 4),
                        c.flops.to_string(),
                        c.flops_predicted.to_string(),
                        on_vehicles(c.holdout_accuracy, c.holdout_rmse),
                        on_vehicles(c.personal_accuracy, c.personal_rmse),
                        if c.device.is_empty() {
                            "-".into()
                        } else {
                            c.device.clone()
                        },
                        c.reason.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            table(&headers, &["client", "status", "task", "device"], &cells)
        }
    })
}
