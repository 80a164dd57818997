//! `report --costs`: the cost model's predictions beside what each round
//! measured, their errors, and money at given prices.

use super::*;
use crate::table::report_error;

/// One round of the cost model's predictions beside what was measured,
/// over its accepted updates.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CostRow {
    /// Round.
    pub round: u64,
    /// Accepted updates.
    pub clients: u64,
    /// Update bytes measured.
    pub bytes_up: u64,
    /// Update bytes predicted.
    pub bytes_up_predicted: u64,
    /// Download bytes measured.
    pub bytes_down: u64,
    /// Download bytes predicted.
    pub bytes_down_predicted: u64,
    /// Training seconds measured (sum over vehicles).
    pub train_seconds: f64,
    /// Training seconds predicted, over the vehicles with a prediction.
    pub train_seconds_predicted: Option<f64>,
    /// Money at the given prices.
    pub cost: f64,
}

/// Median absolute relative errors of the cost model over every accepted
/// (vehicle, round), as fractions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct CostErrors {
    /// Update bytes.
    pub bytes_up: Option<f64>,
    /// Download bytes (rounds where the vehicle downloaded).
    pub bytes_down: Option<f64>,
    /// Training seconds.
    pub train_seconds: Option<f64>,
    /// (vehicle, round) pairs compared.
    pub samples: usize,
}

/// The cost model's median absolute errors over `rows` (accepted ledger rows).
pub fn cost_errors(rows: &[ClientRow]) -> CostErrors {
    let rel = |p: f64, m: f64| (m > 0.0).then(|| (p - m).abs() / m);
    CostErrors {
        bytes_up: median(
            &rows
                .iter()
                .filter_map(|c| rel(c.bytes_up_predicted as f64, c.bytes_up as f64))
                .collect::<Vec<_>>(),
        ),
        bytes_down: median(
            &rows
                .iter()
                .filter_map(|c| rel(c.bytes_down_predicted as f64, c.bytes_down as f64))
                .collect::<Vec<_>>(),
        ),
        train_seconds: median(
            &rows
                .iter()
                .filter_map(|c| rel(c.train_seconds_predicted?, c.train_seconds))
                .collect::<Vec<_>>(),
        ),
        samples: rows.len(),
    }
}

/// Predictions beside measurements, per round, with money at `prices`.
pub fn costs(
    db: &Path,
    format: Format,
    prices: &convoy_shared::cost::Prices,
) -> Result<String, StoreError> {
    let store = Store::open_existing(db)?;
    let accepted = store.accepted_rows()?;
    let mut rows: Vec<CostRow> = Vec::new();
    for c in &accepted {
        if rows.last().is_none_or(|r| r.round != c.round) {
            rows.push(CostRow {
                round: c.round,
                clients: 0,
                bytes_up: 0,
                bytes_up_predicted: 0,
                bytes_down: 0,
                bytes_down_predicted: 0,
                train_seconds: 0.0,
                train_seconds_predicted: None,
                cost: 0.0,
            });
        }
        let r = rows.last_mut().expect("pushed above");
        r.clients += 1;
        r.bytes_up += c.bytes_up;
        r.bytes_up_predicted += c.bytes_up_predicted;
        r.bytes_down += c.bytes_down;
        r.bytes_down_predicted += c.bytes_down_predicted;
        r.train_seconds += c.train_seconds;
        if let Some(p) = c.train_seconds_predicted {
            r.train_seconds_predicted = Some(r.train_seconds_predicted.unwrap_or(0.0) + p);
        }
    }
    for r in &mut rows {
        r.cost = (r.bytes_up + r.bytes_down) as f64 / 1e6 * prices.per_mb
            + r.train_seconds / 3600.0 * prices.per_device_hour;
    }
    let errors = cost_errors(&accepted);
    Ok(match format {
        Format::Json => serde_json::to_string_pretty(
            &serde_json::json!({ "rounds": rows, "median_abs_error": errors }),
        )
        .map_err(report_error)?,
        Format::Csv => to_csv(&rows)?,
        Format::Table => {
            let err = |p: f64, m: f64| {
                if m > 0.0 {
                    format!("{:+.1}%", (p - m) / m * 100.0)
                } else {
                    "-".into()
                }
            };
            let headers = [
                "round",
                "clients",
                "up",
                "up_pred",
                "up_err",
                "down",
                "down_pred",
                "down_err",
                "train_s",
                "train_pred",
                "train_err",
                "cost",
            ];
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    vec![
                        r.round.to_string(),
                        r.clients.to_string(),
                        r.bytes_up.to_string(),
                        r.bytes_up_predicted.to_string(),
                        err(r.bytes_up_predicted as f64, r.bytes_up as f64),
                        r.bytes_down.to_string(),
                        r.bytes_down_predicted.to_string(),
                        err(r.bytes_down_predicted as f64, r.bytes_down as f64),
                        format!("{:.3}", r.train_seconds),
                        opt(r.train_seconds_predicted, 3),
                        r.train_seconds_predicted
                            .map_or("-".into(), |p| err(p, r.train_seconds)),
                        format!("{:.4}", r.cost),
                    ]
                })
                .collect();
            let mut out = table(&headers, &[], &cells);
            let pct = |e: Option<f64>| e.map_or("-".into(), |e| format!("{:.2}%", e * 100.0));
            let _ = writeln!(
                out,
                "median absolute error over {} vehicle-rounds: uplink bytes {}, downlink bytes {}, training time {}",
                errors.samples,
                pct(errors.bytes_up),
                pct(errors.bytes_down),
                pct(errors.train_seconds)
            );
            let total: f64 = rows.iter().map(|r| r.cost).sum();
            if prices.per_mb > 0.0 || prices.per_device_hour > 0.0 {
                let _ = writeln!(
                    out,
                    "cost {total:.4} at {} per MB and {} per device-hour",
                    prices.per_mb, prices.per_device_hour
                );
            }
            out
        }
    })
}
