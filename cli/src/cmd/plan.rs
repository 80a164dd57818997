//! `convoy-server plan`: what the next rounds will cost, before they run,
//! from the cost model in `convoy_shared::cost` and what the fleet's own
//! database measured (device speed, byte ratios, rows per vehicle).

use crate::table::aligned_lines;
use convoy_shared::codec::Pipeline;
use convoy_shared::cost::{self, Plan, PlanCost, Prices, Throughput};
use convoy_shared::spec::{Feature, Head, ModelSpec, Recipe};
use convoy_shared::units::human_bytes;
use convoy_store::{ClientRow, Store};
use std::fmt::Write as _;

/// Aggregation strategies a plan may name (only their cost matters here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Strategy {
    /// Federated averaging (any server learning rate): one update up and
    /// one delta down per participant per round.
    Fedavg,
}

/// `plan`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Rounds to cost.
    #[arg(long)]
    pub rounds: u64,
    /// Update codec, e.g. `fp32`, `q8+zstd`, `topk:0.01+q8+zstd`.
    #[arg(long)]
    pub codec: Pipeline,
    /// Vehicles in the fleet.
    #[arg(long)]
    pub vehicles: u64,
    /// Aggregation strategy.
    #[arg(long, value_enum, default_value_t = Strategy::Fedavg)]
    pub strategy: Strategy,
    /// The fleet's database (--db, or the one of --config): its current
    /// model, and what its rounds measured (device speed, byte ratios,
    /// rows per vehicle).
    #[command(flatten)]
    pub store: super::DbArgs,
    /// Without --db: the model's input width.
    #[arg(long, default_value_t = 16)]
    pub inputs: u32,
    /// Without --db: hidden layer widths, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "64")]
    pub hidden: Vec<u32>,
    /// Without --db: output width (classes).
    #[arg(long, default_value_t = 2)]
    pub outputs: u32,
    /// Downlink codec of the published delta.
    #[arg(long, default_value = "fp32")]
    pub downlink_codec: Pipeline,
    /// Share of vehicles asked to train each round, (0, 1].
    #[arg(long, default_value_t = 1.0)]
    pub participation: f64,
    /// Training rows per vehicle (default: the last round's median, from --db).
    #[arg(long)]
    pub samples: Option<u64>,
    /// Local epochs per round.
    #[arg(long, default_value_t = 1)]
    pub epochs: u32,
    /// Batch size.
    #[arg(long, default_value_t = 32)]
    pub batch_size: u32,
    /// Keyframe period in rounds (0: never).
    #[arg(long, default_value_t = 10)]
    pub keyframe_every: u64,
    /// Vehicles' training FLOP rate (default: measured by --db's rounds,
    /// else calibrated on this machine now).
    #[arg(long)]
    pub flops_per_sec: Option<f64>,
    /// Seconds per optimiser step that do not scale with the model.
    #[arg(long)]
    pub step_secs: Option<f64>,
    /// Price per MB of cellular data.
    #[arg(long, default_value_t = 0.0)]
    pub price_mb: f64,
    /// Price per device-hour of training.
    #[arg(long, default_value_t = 0.0)]
    pub price_device_hour: f64,
}

/// Where each input of a plan came from, for the answer's footnotes.
#[derive(Debug, Default)]
struct Sources(Vec<String>);

/// What the database measured (rows per vehicle and the head mix from the
/// last round that had accepted updates; FLOP rate and the update byte
/// ratio under the plan's codec from every round).
#[derive(Debug, Default)]
struct Measured {
    samples: Option<u64>,
    rate: Option<f64>,
    ratio: Option<f64>,
    heads: Vec<(usize, f64)>,
}

fn measured(rows: &[ClientRow], spec: &ModelSpec, codec: &Pipeline) -> Measured {
    let Some(last) = rows.iter().map(|r| r.round).max() else {
        return Measured::default();
    };
    let last_round: Vec<&ClientRow> = rows.iter().filter(|r| r.round == last).collect();
    let mut heads = std::collections::BTreeMap::new();
    for r in &last_round {
        // rows from before heads were recorded trained the first head
        let head = r
            .head
            .as_deref()
            .and_then(|name| spec.heads.iter().position(|h| h.name() == name))
            .unwrap_or(0);
        *heads.entry(head).or_insert(0.0) += 1.0;
    }
    let samples = cost::median(
        &last_round
            .iter()
            .map(|r| r.samples as f64)
            .collect::<Vec<_>>(),
    )
    .map(|s| s as u64);
    let rate = cost::median(
        &rows
            .iter()
            .filter(|r| r.train_seconds > 0.0 && r.flops > 0)
            .map(|r| r.flops as f64 / r.train_seconds)
            .collect::<Vec<_>>(),
    );
    let modelled = cost::update_bytes(spec, codec) as f64;
    let ratio = cost::median(
        &rows
            .iter()
            .filter(|r| r.codec == codec.name() && r.bytes_up > 0)
            .map(|r| r.bytes_up as f64 / modelled)
            .collect::<Vec<_>>(),
    );
    Measured {
        samples,
        rate,
        ratio,
        heads: heads.into_iter().collect(),
    }
}

/// Prints `plan`'s answer.
pub fn run(args: Args) -> anyhow::Result<()> {
    print!("{}", plan(&args)?);
    Ok(())
}

/// Answers `plan`.
pub fn plan(o: &Args) -> anyhow::Result<String> {
    let bad = anyhow::Error::msg;
    if o.vehicles == 0 || o.rounds == 0 {
        return Err(bad("--vehicles and --rounds must be at least 1".into()));
    }
    if !(o.participation > 0.0 && o.participation <= 1.0) {
        return Err(bad("--participation must be in (0, 1]".into()));
    }
    let mut sources = Sources::default();
    let db = o.store.db_if_any()?;
    let (spec, from_db) = match &db {
        Some(db) => {
            let store = Store::open_existing(db)?;
            let current = store
                .current_version()?
                .ok_or_else(|| bad(format!("{} holds no model yet", db.display())))?;
            let v = store.load_version(&current)?;
            sources.0.push(format!(
                "model: the fleet's current version {}",
                &current[..12]
            ));
            let rows = store.accepted_rows()?;
            let m = measured(&rows, &v.spec, &o.codec);
            (v.spec, Some(m))
        }
        None => {
            let spec = ModelSpec {
                features: (0..o.inputs)
                    .map(|i| Feature::numeric(format!("x{i}"), 0.0, 1.0))
                    .collect(),
                heads: vec![Head::classification(
                    "y",
                    (0..o.outputs).map(|c| c.to_string()),
                )],
                hidden: o.hidden.clone(),
                init_seed: 1,
            };
            sources.0.push(format!(
                "model: {}-{}-{} MLP (--inputs, --hidden, --outputs)",
                o.inputs,
                o.hidden
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join("-"),
                o.outputs
            ));
            (spec, None)
        }
    };
    let Measured {
        samples: db_samples,
        rate: db_rate,
        ratio: db_ratio,
        heads,
    } = from_db.unwrap_or_default();
    if heads.len() > 1 {
        let mix: Vec<String> = heads
            .iter()
            .map(|(h, n)| format!("{} {n}", spec.heads[*h].name()))
            .collect();
        sources.0.push(format!(
            "heads: vehicles per head in the last round ({})",
            mix.join(", ")
        ));
    }
    let samples = match (o.samples, db_samples) {
        (Some(s), _) => s,
        (None, Some(s)) => {
            sources
                .0
                .push(format!("rows per vehicle: {s}, the last round's median"));
            s
        }
        (None, None) => {
            return Err(bad(
                "give --samples (rows per vehicle) or a --db whose rounds measured it".into(),
            ));
        }
    };
    let device = match (o.flops_per_sec, db_rate) {
        (Some(rate), _) => Throughput {
            flops_per_sec: rate,
            step_secs: o.step_secs.unwrap_or(0.0),
        },
        (None, Some(rate)) => {
            sources.0.push(format!(
                "device: {:.3e} FLOP/s, the median its rounds measured",
                rate
            ));
            Throughput {
                flops_per_sec: rate,
                step_secs: o.step_secs.unwrap_or(0.0),
            }
        }
        (None, None) => calibrate_here(&mut sources).ok_or_else(|| {
            bad("give --flops-per-sec (this build cannot calibrate) or a --db whose rounds measured it".into())
        })?,
    };
    let ratio_up = match db_ratio {
        Some(r) => {
            sources.0.push(format!(
                "uplink: {:.3}x the modelled size, as the database measured under {}",
                r,
                o.codec.name()
            ));
            r
        }
        None => {
            sources
                .0
                .push("uplink: the modelled size (no measurement under this codec)".into());
            1.0
        }
    };
    let p = Plan {
        rounds: o.rounds,
        vehicles: o.vehicles,
        participation: o.participation,
        samples,
        heads,
        recipe: Recipe {
            epochs: o.epochs,
            batch_size: o.batch_size,
            ..Recipe::default()
        },
        codec: o.codec,
        downlink: o.downlink_codec,
        keyframe_every: o.keyframe_every,
        device,
        ratio_up,
        ratio_down: 1.0,
    };
    let prices = Prices {
        per_mb: o.price_mb,
        per_device_hour: o.price_device_hour,
    };
    let c = cost::plan(&spec, &p, &prices);
    Ok(describe(&spec, &p, &c, &prices, &sources))
}

fn describe(
    spec: &ModelSpec,
    p: &Plan,
    c: &PlanCost,
    prices: &Prices,
    sources: &Sources,
) -> String {
    let mut out = format!(
        "{} round(s), {} of {} vehicles each, {} rows each, {} parameters, codec {} up / {} down\n",
        p.rounds,
        c.participants,
        p.vehicles,
        p.samples,
        spec.layout().numel(),
        p.codec.name(),
        p.downlink.name()
    );
    let secs = |s: Option<f64>| s.map_or("-".into(), |s| format!("{s:.3} s"));
    let _ = writeln!(out, "per round");
    aligned_lines(
        &mut out,
        &[
            ("training per vehicle", secs(c.train_seconds)),
            ("uplink", human_bytes(c.bytes_up_round)),
            ("downlink", human_bytes(c.bytes_down_round)),
        ],
    );
    let _ = writeln!(out, "whole run");
    let mut run = vec![
        (
            "device time",
            c.device_seconds
                .map_or("-".into(), |s| format!("{:.4} device-hours", s / 3600.0)),
        ),
        ("uplink", human_bytes(c.bytes_up)),
        ("downlink", human_bytes(c.bytes_down)),
        ("model store grows by", human_bytes(c.storage)),
    ];
    if prices.per_mb > 0.0 || prices.per_device_hour > 0.0 {
        run.push((
            "cost",
            format!(
                "{:.4} ({} per MB, {} per device-hour)",
                c.cost, prices.per_mb, prices.per_device_hour
            ),
        ));
    }
    aligned_lines(&mut out, &run);
    let _ = writeln!(out, "from");
    for s in &sources.0 {
        let _ = writeln!(out, "  {s}");
    }
    out
}

/// This machine's training speed, when the build has the trainer.
#[cfg(feature = "tools")]
fn calibrate_here(sources: &mut Sources) -> Option<Throughput> {
    let t = convoy_tools::calibrate_here();
    sources.0.push(format!(
        "device: calibrated on this machine now ({:.3e} FLOP/s + {:.2e} s/step)",
        t.flops_per_sec, t.step_secs
    ));
    t.is_known().then_some(t)
}

#[cfg(not(feature = "tools"))]
fn calibrate_here(_: &mut Sources) -> Option<Throughput> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_mix_and_rows_come_from_the_last_round() {
        let mut spec = ModelSpec {
            features: vec![Feature::numeric("x", 0.0, 1.0)],
            heads: vec![Head::classification("tip", ["0".into(), "1".into()])],
            hidden: vec![4],
            init_seed: 1,
        };
        spec.heads
            .push(Head::classification("fare", (0..5).map(|c| c.to_string())));
        let row = |round: u64, head: Option<&str>, samples: u64| ClientRow {
            round,
            head: head.map(str::to_string),
            samples,
            codec: "fp32".into(),
            bytes_up: 100,
            flops: 1000,
            train_seconds: 0.5,
            ..Default::default()
        };
        let rows = vec![
            row(1, Some("fare"), 10),
            row(2, Some("tip"), 30),
            row(2, Some("fare"), 50),
            row(2, Some("fare"), 70),
            // an older row without a head trained the first one
            row(2, None, 90),
        ];
        let m = measured(&rows, &spec, &Pipeline::FP32);
        assert_eq!(m.heads, vec![(0, 2.0), (1, 2.0)]);
        assert_eq!(m.samples, Some(60), "median of the last round's rows");
        assert_eq!(m.rate, Some(2000.0));
        let modelled = cost::update_bytes(&spec, &Pipeline::FP32) as f64;
        assert_eq!(m.ratio, Some(100.0 / modelled));
        assert!(measured(&[], &spec, &Pipeline::FP32).heads.is_empty());
    }
}
