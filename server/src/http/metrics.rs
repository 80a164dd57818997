//! `/metrics`: the ledger's totals and the live state in the Prometheus
//! text exposition format (version 0.0.4).
//!
//! Counters (`_total`) sum every round in the database, so they survive a
//! restart; gauges named `convoy_round_*` describe the newest closed round.
//! Bytes are payload bytes unless the name says `wire` (MQTT bytes, framing
//! and re-sends included) or `fp32` (what the same updates and models would
//! cost as dense fp32). Per-vehicle series carry a `vehicle` label for at
//! most `http.vehicle_series_cap` vehicles, those with the most MQTT bytes;
//! the rest are summed under `vehicle="_other"`, so a fleet of any size
//! adds at most cap + 1 series per metric.

use super::{LiveState, Settings};
use convoy_store::{RoundRow, RoundStatus, Store, StoreError};
use std::fmt::Write as _;

/// Upper bounds of the round-duration histogram, seconds.
pub const DURATION_BUCKETS: [f64; 11] = [
    1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// The exposition text, built family by family.
#[derive(Debug, Default)]
struct Exposition(String);

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {}", number(value));
    }

    /// A family of one unlabelled sample.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// The whole exposition for the database behind `store`.
pub fn render(
    store: &Store,
    settings: &Settings,
    live: &LiveState,
    now_ms: u64,
) -> Result<String, StoreError> {
    let totals = store.ledger_totals(&DURATION_BUCKETS)?;
    let sums = &totals.sums;
    let mut out = Exposition::default();

    out.family(
        "convoy_rounds_total",
        "counter",
        "Rounds by status (open: announced, collecting updates).",
    );
    for status in [
        RoundStatus::Open,
        RoundStatus::Finished,
        RoundStatus::Failed,
        RoundStatus::Abandoned,
    ] {
        let n = totals.count(status);
        out.sample(
            "convoy_rounds_total",
            &[("status", status.as_str())],
            n as f64,
        );
    }
    out.single(
        "convoy_round",
        "gauge",
        "Number of the newest round (0: none yet).",
        totals.newest_round.map_or(0.0, |r| r as f64),
    );

    let sum = |f: fn(&RoundRow) -> u64| f(sums) as f64;
    out.family(
        "convoy_vehicles_total",
        "counter",
        "Vehicle-rounds by outcome: selected, reported (update accepted), late, failed (could not serve).",
    );
    for (outcome, v) in [
        ("selected", sum(|r| r.clients_selected)),
        ("reported", sum(|r| r.clients_reported)),
        ("late", sum(|r| r.clients_late)),
        ("failed", sum(|r| r.clients_failed)),
    ] {
        out.sample("convoy_vehicles_total", &[("outcome", outcome)], v);
    }
    out.family(
        "convoy_rejections_total",
        "counter",
        "Messages rejected, by reason.",
    );
    for (reason, n) in store.rejection_counts()? {
        out.sample("convoy_rejections_total", &[("reason", &reason)], n as f64);
    }

    for (name, help, f) in [
        (
            "convoy_bytes_up_total",
            "Update payload bytes accepted.",
            (|r: &RoundRow| r.bytes_up) as fn(&RoundRow) -> u64,
        ),
        (
            "convoy_bytes_down_total",
            "Model payload bytes sent.",
            |r| r.bytes_down,
        ),
        (
            "convoy_wire_bytes_up_total",
            "MQTT bytes received on update topics, framing and re-sends included.",
            |r| r.wire_bytes_up,
        ),
        (
            "convoy_wire_bytes_down_total",
            "MQTT bytes sent on model topics, framing included.",
            |r| r.wire_bytes_down,
        ),
        (
            "convoy_fp32_bytes_up_total",
            "What the accepted updates would have cost as dense fp32.",
            |r| r.bytes_up_raw,
        ),
        (
            "convoy_fp32_bytes_down_total",
            "What the models sent would have cost as dense fp32.",
            |r| r.bytes_down_raw,
        ),
    ] {
        out.single(name, "counter", help, sum(f));
    }
    out.single(
        "convoy_training_seconds_total",
        "counter",
        "Training seconds the vehicles reported, summed.",
        sums.train_seconds_sum,
    );
    out.single(
        "convoy_decode_seconds_total",
        "counter",
        "Server seconds decoding accepted updates.",
        sums.decode_seconds,
    );
    out.single(
        "convoy_aggregation_seconds_total",
        "counter",
        "Server seconds handling updates and closing rounds (decode, fold, store) since this process started.",
        live.aggregation_seconds,
    );
    out.single(
        "convoy_evaluation_seconds_total",
        "counter",
        "Server seconds evaluating published models on the test set since this process started.",
        live.evaluation_seconds,
    );
    out.single(
        "convoy_evaluations_total",
        "counter",
        "Evaluations run since this process started.",
        live.evaluations as f64,
    );

    // the newest closed round
    let last = totals.last_closed.as_ref();
    out.family(
        "convoy_round_vehicles",
        "gauge",
        "Vehicles of the newest closed round, by outcome.",
    );
    if let Some(r) = last {
        for (outcome, v) in [
            ("selected", r.clients_selected),
            ("reported", r.clients_reported),
            ("late", r.clients_late),
            ("failed", r.clients_failed),
        ] {
            out.sample("convoy_round_vehicles", &[("outcome", outcome)], v as f64);
        }
    }
    out.family(
        "convoy_round_bytes",
        "gauge",
        "Bytes of the newest closed round by direction and kind (payload, wire, fp32).",
    );
    if let Some(r) = last {
        for (dir, kind, v) in [
            ("up", "payload", r.bytes_up),
            ("up", "wire", r.wire_bytes_up),
            ("up", "fp32", r.bytes_up_raw),
            ("down", "payload", r.bytes_down),
            ("down", "wire", r.wire_bytes_down),
            ("down", "fp32", r.bytes_down_raw),
        ] {
            out.sample(
                "convoy_round_bytes",
                &[("direction", dir), ("kind", kind)],
                v as f64,
            );
        }
    }
    out.family(
        "convoy_round_compression_ratio",
        "gauge",
        "fp32 bytes over payload bytes of the newest closed round.",
    );
    if let Some(r) = last {
        for (dir, raw, sent) in [
            ("up", r.bytes_up_raw, r.bytes_up),
            ("down", r.bytes_down_raw, r.bytes_down),
        ] {
            if sent > 0 {
                out.sample(
                    "convoy_round_compression_ratio",
                    &[("direction", dir)],
                    raw as f64 / sent as f64,
                );
            }
        }
    }
    out.family(
        "convoy_round_training_seconds",
        "gauge",
        "Training seconds of the newest closed round: sum over vehicles and slowest vehicle.",
    );
    if let Some(r) = last {
        out.sample(
            "convoy_round_training_seconds",
            &[("stat", "sum")],
            r.train_seconds_sum,
        );
        out.sample(
            "convoy_round_training_seconds",
            &[("stat", "max")],
            r.train_seconds_max,
        );
    }

    out.family(
        "convoy_round_duration_seconds",
        "histogram",
        "Seconds from a round's announcement to its close.",
    );
    for (bound, n) in DURATION_BUCKETS.iter().zip(&totals.duration_buckets) {
        out.sample(
            "convoy_round_duration_seconds_bucket",
            &[("le", &number(*bound))],
            *n as f64,
        );
    }
    let count = totals.duration_count as f64;
    out.sample(
        "convoy_round_duration_seconds_bucket",
        &[("le", "+Inf")],
        count,
    );
    out.sample(
        "convoy_round_duration_seconds_sum",
        &[],
        totals.duration_sum,
    );
    out.sample("convoy_round_duration_seconds_count", &[], count);

    let current = store.current_version()?;
    out.single(
        "convoy_model_versions",
        "gauge",
        "Model versions stored.",
        totals.versions as f64,
    );
    out.family(
        "convoy_model_info",
        "gauge",
        "The fleet's current model (value 1).",
    );
    if let Some(hex) = &current {
        out.sample("convoy_model_info", &[("version", hex)], 1.0);
    }
    let current_row = match &current {
        Some(hex) => store.version_row(hex)?,
        None => None,
    };
    out.single(
        "convoy_model_round",
        "gauge",
        "Round that produced the fleet's current model.",
        current_row.map_or(0.0, |v| v.round as f64),
    );
    out.family(
        "convoy_model_accuracy",
        "gauge",
        "Server-side test accuracy of the newest evaluated round (0 to 1).",
    );
    if let Some(a) = totals.accuracy {
        out.sample("convoy_model_accuracy", &[], a);
    }
    out.family(
        "convoy_model_rmse",
        "gauge",
        "Server-side test RMSE of the newest evaluated round.",
    );
    if let Some(e) = totals.rmse {
        out.sample("convoy_model_rmse", &[], e);
    }
    out.single(
        "convoy_broker_connected",
        "gauge",
        "1 while the server's broker link is connected.",
        f64::from(u8::from(live.broker_connected())),
    );
    out.single(
        "convoy_ready",
        "gauge",
        "1 while the server coordinates rounds over a connected broker (/readyz).",
        f64::from(u8::from(
            live.phase == super::Phase::Coordinating && live.broker_connected(),
        )),
    );

    vehicle_series(&mut out, store, settings, now_ms)?;
    Ok(out.0)
}

/// Per-vehicle families, capped.
fn vehicle_series(
    out: &mut Exposition,
    store: &Store,
    settings: &Settings,
    now_ms: u64,
) -> Result<(), StoreError> {
    let mut vehicles = store.vehicle_summaries(now_ms, settings.caps())?;
    out.single(
        "convoy_vehicles_known",
        "gauge",
        "Vehicles the ledger, inventory or provisioning knows.",
        vehicles.len() as f64,
    );
    out.single(
        "convoy_budget_skips_total",
        "counter",
        "Vehicle-rounds sat out because the vehicle was at its data budget.",
        vehicles.iter().map(|v| v.skipped).sum::<u64>() as f64,
    );
    vehicles.sort_by_key(|v| std::cmp::Reverse(v.wire_bytes_up + v.wire_bytes_down));
    let cap = settings.vehicle_series_cap;
    let (named, rest) = vehicles.split_at(cap.min(vehicles.len()));
    out.single(
        "convoy_vehicle_series_folded",
        "gauge",
        "Vehicles summed under vehicle=\"_other\" (past http.vehicle_series_cap).",
        rest.len() as f64,
    );
    type Pick = fn(&convoy_store::VehicleSummary) -> f64;
    let families: [(&str, &str, &str, Pick); 6] = [
        (
            "convoy_vehicle_bytes_up_total",
            "counter",
            "Update payload bytes accepted from each vehicle.",
            |v| v.bytes_up as f64,
        ),
        (
            "convoy_vehicle_bytes_down_total",
            "counter",
            "Model payload bytes sent to each vehicle.",
            |v| v.bytes_down as f64,
        ),
        (
            "convoy_vehicle_wire_bytes_total",
            "counter",
            "MQTT bytes up plus down of each vehicle.",
            |v| (v.wire_bytes_up + v.wire_bytes_down) as f64,
        ),
        (
            "convoy_vehicle_training_seconds_total",
            "counter",
            "Training seconds each vehicle reported.",
            |v| v.train_seconds,
        ),
        (
            "convoy_vehicle_rejections_total",
            "counter",
            "Messages of each vehicle rejected.",
            |v| v.rejections as f64,
        ),
        (
            "convoy_vehicle_accepted_total",
            "counter",
            "Each vehicle's accepted updates.",
            |v| v.accepted as f64,
        ),
    ];
    for (name, kind, help, pick) in families {
        out.family(name, kind, help);
        for v in named {
            out.sample(name, &[("vehicle", &v.client)], pick(v));
        }
        if !rest.is_empty() {
            out.sample(name, &[("vehicle", "_other")], rest.iter().map(pick).sum());
        }
    }
    out.family(
        "convoy_vehicle_budget_used_ratio",
        "gauge",
        "Each vehicle's data use over its cap, the tighter of day and month (only with [budget] caps).",
    );
    for v in named {
        if let Some(used) = v.budget_used {
            out.sample(
                "convoy_vehicle_budget_used_ratio",
                &[("vehicle", &v.client)],
                used,
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_labels_are_in_exposition_form() {
        assert_eq!(number(3.0), "3");
        assert_eq!(number(0.25), "0.25");
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        let mut e = Exposition::default();
        e.sample("x_total", &[("reason", "bad \"sig\"")], 2.0);
        assert_eq!(e.0, "x_total{reason=\"bad \\\"sig\\\"\"} 2\n");
    }
}
