//! `convoy-server report`: the ledger as a table, CSV or JSON.

use crate::store::{ClientRow, RoundRow, Store, StoreError};
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

fn to_csv<T: Serialize>(rows: &[T]) -> Result<String, StoreError> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for row in rows {
        w.serialize(row).map_err(|e| StoreError::Blob {
            path: "report".into(),
            message: e.to_string(),
        })?;
    }
    Ok(String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default())
}

fn to_json<T: Serialize>(rows: &[T]) -> String {
    serde_json::to_string_pretty(rows).unwrap_or_else(|_| "[]".into())
}

/// The per-round report of the database at `db`.
pub fn rounds(db: &Path, format: Format) -> Result<String, StoreError> {
    let store = Store::open_existing(db)?;
    let rows = store.rounds()?;
    Ok(match format {
        Format::Json => to_json(&rows),
        Format::Csv => to_csv(&rows)?,
        Format::Table => {
            let mut out = String::new();
            let _ = writeln!(
                out,
                "{:>5} {:<9} {:>12} {:>7} {:>4} {:>11} {:>11} {:>11} {:>11} {:>9} {:>8} {:>8} {:>8}",
                "round",
                "status",
                "version",
                "clients",
                "late",
                "bytes_up",
                "bytes_down",
                "wire_up",
                "wire_down",
                "train_s",
                "samples",
                "loss",
                "accuracy"
            );
            for r in &rows {
                let quality = match (r.accuracy, r.rmse) {
                    (Some(a), _) => format!("{:.2}%", a * 100.0),
                    (None, Some(e)) => format!("rmse {e:.3}"),
                    _ => "-".into(),
                };
                let _ = writeln!(
                    out,
                    "{:>5} {:<9} {:>12} {:>7} {:>4} {:>11} {:>7} {:>11} {:>11} {:>11} {:>9.2} {:>8} {:>8} {:>8}  {}",
                    r.round,
                    r.status,
                    r.model_version
                        .as_deref()
                        .map(|v| &v[..12.min(v.len())])
                        .unwrap_or("-"),
                    format!("{}/{}", r.clients_reported, r.clients_selected),
                    r.clients_late,
                    r.bytes_up,
                    r.compression_up
                        .map(|x| format!("{x:.1}x"))
                        .unwrap_or_else(|| "-".into()),
                    r.bytes_down,
                    r.wire_bytes_up,
                    r.wire_bytes_down,
                    r.train_seconds_sum,
                    r.samples,
                    opt(r.loss, 4),
                    quality,
                    if r.downlink_codec == r.codec {
                        r.codec.clone()
                    } else {
                        format!("{} / down {}", r.codec, r.downlink_codec)
                    }
                );
            }
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
            out
        }
    })
}

/// The per-client ledger rows of `round`.
pub fn clients(db: &Path, round: u64, format: Format) -> Result<String, StoreError> {
    let store = Store::open_existing(db)?;
    let rows: Vec<ClientRow> = store.clients(round)?;
    Ok(match format {
        Format::Json => to_json(&rows),
        Format::Csv => to_csv(&rows)?,
        Format::Table => {
            let mut out = String::new();
            let _ = writeln!(
                out,
                "{:<16} {:<9} {:>8} {:>10} {:>10} {:>10} {:>10} {:>6} {:>8} {:>8} {:>14} {:<9} reason",
                "client",
                "status",
                "samples",
                "bytes_up",
                "wire_up",
                "bytes_down",
                "wire_down",
                "retry",
                "train_s",
                "loss",
                "flops",
                "device"
            );
            for c in &rows {
                let _ = writeln!(
                    out,
                    "{:<16} {:<9} {:>8} {:>10} {:>10} {:>10} {:>10} {:>6} {:>8.3} {:>8} {:>14} {:<9} {}",
                    c.client,
                    c.status,
                    c.samples,
                    c.bytes_up,
                    c.wire_bytes_up,
                    c.bytes_down,
                    c.wire_bytes_down,
                    c.retries,
                    c.train_seconds,
                    opt(c.loss, 4),
                    c.flops,
                    c.device,
                    c.reason.as_deref().unwrap_or("")
                );
            }
            if rows.is_empty() {
                let _ = writeln!(out, "(no ledger rows for round {round})");
            }
            out
        }
    })
}
