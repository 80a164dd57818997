//! `convoy-server report`: the ledger as a table, CSV or JSON.

use crate::table::{Format, table, to_csv, to_json};
use convoy_shared::cost::median;
use convoy_shared::units::human_bytes;
use convoy_store::{ClientRow, Store, StoreError};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;

mod costs;
mod vehicles;

pub use costs::{CostErrors, CostRow, cost_errors, costs};
pub use vehicles::{clients, tasks, vehicles};

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

/// `report`'s arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    store: super::DbArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Per-client rows of one round instead (needs --round).
    #[arg(long, requires = "round")]
    clients: bool,
    /// Round for --clients.
    #[arg(long)]
    round: Option<u64>,
    /// Each task's (head's) vehicles and on-vehicle metric per round,
    /// for fleets that train several labels.
    #[arg(long, conflicts_with = "clients")]
    tasks: bool,
    /// The cost model's predictions beside what each round measured
    /// (bytes up and down, training time), their errors, and money at
    /// the given prices.
    #[arg(long, conflicts_with_all = ["clients", "tasks"])]
    costs: bool,
    /// With --costs: price per MB of cellular data.
    #[arg(long, default_value_t = 0.0)]
    price_mb: f64,
    /// With --costs: price per device-hour of training.
    #[arg(long, default_value_t = 0.0)]
    price_device_hour: f64,
    /// Only rounds started since then: a UTC date (2026-12-01), time
    /// (2026-12-01T08:30:00Z) or age (90m, 6h, 7d).
    #[arg(long)]
    since: Option<String>,
    /// Only the newest N rounds.
    #[arg(long, value_name = "N")]
    last: Option<u64>,
    /// One row per vehicle: totals, data used today and this month
    /// against the [budget] caps of --config, the model it holds.
    #[arg(long, conflicts_with_all = ["clients", "tasks", "costs"])]
    vehicles: bool,
}

/// Prints the report `args` ask for.
pub fn run(args: Args) -> anyhow::Result<()> {
    let config = args.store.server_config()?;
    let db = args.store.db_of(config.as_ref())?;
    let prices = convoy_shared::cost::Prices {
        per_mb: args.price_mb,
        per_device_hour: args.price_device_hour,
    };
    let now = convoy_runtime::clock::now_ms();
    let window = Window {
        since_ms: args
            .since
            .map(|s| parse_since(&s, now))
            .transpose()
            .map_err(anyhow::Error::msg)?,
        last: args.last,
    };
    let caps = match config {
        Some(config) => (config.budget.daily_bytes(), config.budget.monthly_bytes()),
        None => (None, None),
    };
    let format = args.format;
    let text = match (args.clients, args.round) {
        _ if args.tasks => tasks(&db, format)?,
        _ if args.costs => costs(&db, format, &prices)?,
        _ if args.vehicles => vehicles(&db, format, caps)?,
        (true, Some(round)) => clients(&db, round, format)?,
        _ => rounds(&db, format, &window)?,
    };
    print!("{text}");
    Ok(())
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
    convoy_store::parse_iso_ms(&full).ok_or_else(|| {
        format!("--since {text:?}: give a UTC date (2026-12-01), a time (2026-12-01T08:30:00Z) or an age (90m, 6h, 7d)")
    })
}

#[cfg(test)]
mod tests;
