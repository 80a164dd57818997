//! `convoy-server report`: the ledger as a table, CSV or JSON.

use crate::store::{ClientRow, RoundRow, Store, StoreError};
use convoy_shared::cost::median;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Format {
    /// Aligned text for people.
    #[default]
    Table,
    /// CSV with a header row.
    Csv,
    /// A JSON array of objects.
    Json,
}

/// Appends one `label  value` line per pair, indented two spaces, the
/// values in one column (the answers of `plan` and `models transfer`).
pub fn aligned_lines(out: &mut String, lines: &[(&str, String)]) {
    let width = lines
        .iter()
        .map(|(l, _)| l.chars().count())
        .max()
        .unwrap_or(0);
    for (label, value) in lines {
        let _ = writeln!(out, "  {label:<width$}  {value}");
    }
}

/// Human-readable byte count.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// The base model's score on the vehicles' held-out rows, or `-`.
fn on_vehicles(accuracy: Option<f64>, rmse: Option<f64>) -> String {
    match (accuracy, rmse) {
        (Some(a), _) => format!("{:.2}%", a * 100.0),
        (None, Some(e)) => format!("{e:.4}"),
        _ => "-".into(),
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "-".into())
}

/// One line per round, as the demo prints them.
pub fn round_line(r: &RoundRow) -> String {
    let quality = match (r.accuracy, r.rmse) {
        (Some(a), _) => format!("acc {:>6.2}%", a * 100.0),
        (None, Some(e)) => format!("rmse {e:>8.4}"),
        _ => "        -  ".into(),
    };
    let ratio = r
        .compression_up
        .map(|x| format!("({x:.0}x)"))
        .unwrap_or_default();
    format!(
        "round {:>3}  {:<8}  clients {:>2}/{:<2}  up {:>10} {:<7} down {:>10}  train {:>6.2}s  {}",
        r.round,
        r.status,
        r.clients_reported,
        r.clients_selected,
        human_bytes(r.bytes_up),
        ratio,
        human_bytes(r.bytes_down),
        r.train_seconds_sum,
        quality
    )
}

fn report_error(e: impl std::fmt::Display) -> StoreError {
    StoreError::Blob {
        path: "report".into(),
        message: e.to_string(),
    }
}

pub(crate) fn to_csv<T: Serialize>(rows: &[T]) -> Result<String, StoreError> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for row in rows {
        w.serialize(row).map_err(report_error)?;
    }
    let bytes = w.into_inner().map_err(report_error)?;
    String::from_utf8(bytes).map_err(report_error)
}

pub(crate) fn to_json<T: Serialize>(rows: &[T]) -> Result<String, StoreError> {
    serde_json::to_string_pretty(rows).map_err(report_error)
}

/// Aligned columns: every header sits over its values because both are
/// laid out from the same widths. Text columns (`left`) are left-aligned;
/// the last column is free text and not padded.
pub(crate) fn table(headers: &[&str], left: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, (cell, name)) in cells.zip(headers).enumerate() {
            if i > 0 {
                out.push(' ');
            }
            let w = widths[i];
            if i + 1 == headers.len() {
                out.push_str(cell);
            } else if left.contains(name) {
                let _ = write!(out, "{cell:<w$}");
            } else {
                let _ = write!(out, "{cell:>w$}");
            }
        }
        out.trim_end().to_string()
    };
    let mut out = line(&mut headers.iter().copied());
    out.push('\n');
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
        out.push('\n');
    }
    out
}

/// The per-round report of the database at `db`.
pub fn rounds(db: &Path, format: Format, window: &Window) -> Result<String, StoreError> {
    let store = Store::open_existing(db)?;
    let rows = store.rounds_window(window.since_ms, window.last)?;
    Ok(match format {
        Format::Json => to_json(&rows)?,
        Format::Csv => to_csv(&rows)?,
        Format::Table => {
            let headers = [
                "round",
                "status",
                "version",
                "clients",
                "late",
                "bytes_up",
                "ratio",
                "bytes_down",
                "wire_up",
                "wire_down",
                "train_s",
                "samples",
                "loss",
                "accuracy",
                "rmse",
                "on_vehicles",
                "codec",
                "down_codec",
            ];
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    vec![
                        r.round.to_string(),
                        r.status.to_string(),
                        r.model_version
                            .as_deref()
                            .map(|v| v[..12.min(v.len())].to_string())
                            .unwrap_or_else(|| "-".into()),
                        format!("{}/{}", r.clients_reported, r.clients_selected),
                        r.clients_late.to_string(),
                        r.bytes_up.to_string(),
                        r.compression_up
                            .map(|x| format!("{x:.1}x"))
                            .unwrap_or_else(|| "-".into()),
                        r.bytes_down.to_string(),
                        r.wire_bytes_up.to_string(),
                        r.wire_bytes_down.to_string(),
                        format!("{:.2}", r.train_seconds_sum),
                        r.samples.to_string(),
                        opt(r.loss, 4),
                        r.accuracy
                            .map(|a| format!("{:.2}%", a * 100.0))
                            .unwrap_or_else(|| "-".into()),
                        opt(r.rmse, 4),
                        on_vehicles(r.holdout_accuracy, r.holdout_rmse),
                        r.codec.clone(),
                        r.downlink_codec.clone(),
                    ]
                })
                .collect();
            let mut out = table(
                &headers,
                &["status", "version", "codec", "down_codec"],
                &cells,
            );
            let (up, down): (u64, u64) = rows
                .iter()
                .fold((0, 0), |(u, d), r| (u + r.bytes_up, d + r.bytes_down));
            let _ = writeln!(
                out,
                "{} rounds, {} up, {} down in total",
                rows.len(),
                human_bytes(up),
                human_bytes(down)
            );
            let heads: std::collections::BTreeSet<String> =
                store.task_metrics()?.into_iter().map(|t| t.head).collect();
            if heads.len() > 1 {
                let _ = writeln!(
                    out,
                    "{} tasks ({}); each task's metric per round: report --tasks",
                    heads.len(),
                    heads.into_iter().collect::<Vec<_>>().join(", ")
                );
            }
            out
        }
    })
}

/// Which rounds a report covers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    /// Only rounds that started at or after this (Unix ms).
    pub since_ms: Option<u64>,
    /// Only the newest this many of them.
    pub last: Option<u64>,
}

/// Unix ms of a `--since` value: a UTC date (`2026-12-01`), a UTC time
/// (`2026-12-01T08:30:00Z`), or an age before `now_ms` (`90s`, `45m`,
/// `6h`, `7d`).
pub fn parse_since(text: &str, now_ms: u64) -> Result<u64, String> {
    let t = text.trim();
    let units = [
        ('s', 1_000u64),
        ('m', 60_000),
        ('h', 3_600_000),
        ('d', 86_400_000),
    ];
    if let Some((_, ms)) = units.iter().find(|(u, _)| t.ends_with(*u))
        && let Ok(n) = t[..t.len() - 1].parse::<u64>()
    {
        return Ok(now_ms.saturating_sub(n.saturating_mul(*ms)));
    }
    let full = match t.len() {
        10 => format!("{t}T00:00:00.000Z"),
        20 if t.ends_with('Z') => format!("{}.000Z", &t[..19]),
        _ => t.to_string(),
    };
    crate::store::parse_iso_ms(&full).ok_or_else(|| {
        format!("--since {text:?}: give a UTC date (2026-12-01), a time (2026-12-01T08:30:00Z) or an age (90m, 6h, 7d)")
    })
}

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
                        v.client.clone(),
                        v.accepted.to_string(),
                        v.rounds.to_string(),
                        v.skipped.to_string(),
                        v.bytes_up.to_string(),
                        v.bytes_down.to_string(),
                        (v.wire_bytes_up + v.wire_bytes_down).to_string(),
                        format!("{:.2}", v.train_seconds),
                        v.rejections.to_string(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RoundStatus;

    #[test]
    fn aligned_lines_share_one_value_column() {
        let mut out = String::new();
        aligned_lines(
            &mut out,
            &[("sent", "1 B".into()), ("full model", "2 B".into())],
        );
        assert_eq!(out, "  sent        1 B\n  full model  2 B\n");
    }

    /// The cell of `line` under header `name`: columns are found by where
    /// each header starts and ends in the header line.
    fn cell<'a>(header: &str, line: &'a str, name: &str) -> &'a str {
        let names: Vec<&str> = header.split_whitespace().collect();
        let k = names.iter().position(|n| *n == name).unwrap();
        line.split_whitespace().nth(k).unwrap()
    }

    #[test]
    fn since_takes_dates_times_and_ages() {
        let now = 1_796_224_854_000; // 2026-12-02T15:20:54Z
        assert_eq!(parse_since("90m", now), Ok(now - 90 * 60_000));
        assert_eq!(parse_since("7d", now), Ok(now - 7 * 86_400_000));
        let day = parse_since("2026-12-01", now).unwrap();
        assert_eq!(crate::store::iso8601(day), "2026-12-01T00:00:00.000Z");
        let time = parse_since("2026-12-01T08:30:00Z", now).unwrap();
        assert_eq!(crate::store::iso8601(time), "2026-12-01T08:30:00.000Z");
        let err = parse_since("last tuesday", now).unwrap_err();
        assert!(err.contains("90m"), "{err}");
    }

    #[test]
    fn every_round_column_has_its_header() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("r.db");
        let mut store = Store::open(&db).unwrap();
        let classified = RoundRow {
            round: 1,
            status: RoundStatus::Finished,
            codec: "topk:0.1+q8+zstd".into(),
            downlink_codec: "fp32".into(),
            clients_selected: 3,
            clients_reported: 2,
            bytes_up: 1000,
            bytes_up_raw: 15_400,
            accuracy: Some(0.6741),
            ..Default::default()
        };
        let regressed = RoundRow {
            round: 2,
            accuracy: None,
            rmse: Some(3.25),
            ..classified.clone()
        };
        for r in [&classified, &regressed] {
            store.open_round(r.round, "00", &r.codec, 3, 0).unwrap();
            store.finish_round(r, &[], 1).unwrap();
        }
        let text = rounds(&db, Format::Table, &Window::default()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let header = lines[0];
        for line in &lines[1..3] {
            assert_eq!(
                line.split_whitespace().count(),
                header.split_whitespace().count(),
                "{text}"
            );
        }
        assert_eq!(cell(header, lines[1], "ratio"), "15.4x");
        assert_eq!(cell(header, lines[1], "codec"), "topk:0.1+q8+zstd");
        assert_eq!(cell(header, lines[1], "down_codec"), "fp32");
        assert_eq!(cell(header, lines[1], "accuracy"), "67.41%");
        assert_eq!(cell(header, lines[2], "accuracy"), "-");
        assert_eq!(cell(header, lines[2], "rmse"), "3.2500");
        // and the header words stand over their values
        let at = |s: &str, name: &str| s.find(name).unwrap();
        let end = at(header, "bytes_up") + "bytes_up".len();
        assert_eq!(&lines[1][end - 4..end], "1000");
    }
}
