//! What the simulator shows and leaves behind: a progress line per round
//! and the per-round CSV/JSON and summary files.

use super::*;

/// One round in the simulator's output.
#[derive(Debug, Clone, Serialize)]
pub struct SimRound {
    /// Round.
    pub round: u64,
    /// Test accuracy (a CSV fleet without --test-csv: the vehicles'
    /// held-out accuracy of the round's base model).
    pub accuracy: Option<f64>,
    /// Test RMSE of a regression head (as `accuracy`).
    pub rmse: Option<f64>,
    /// Test loss.
    pub eval_loss: Option<f64>,
    /// Update payload bytes.
    pub bytes_up: u64,
    /// Model payload bytes.
    pub bytes_down: u64,
    /// MQTT bytes up.
    pub wire_bytes_up: u64,
    /// MQTT bytes down.
    pub wire_bytes_down: u64,
    /// Dense fp32 equivalent up.
    pub bytes_up_raw: u64,
    /// Dense fp32 equivalent down.
    pub bytes_down_raw: u64,
    /// Clients reported.
    pub clients_reported: u64,
    /// Agent encode throughput, MB/s of dense fp32 input.
    pub encode_mb_s: Option<f64>,
    /// Server decode throughput, MB/s of dense fp32 output.
    pub decode_mb_s: Option<f64>,
    /// Slowest client's training seconds.
    pub train_seconds_max: f64,
    /// Simulated seconds from the start when the round closed (the
    /// availability and device model only).
    pub sim_seconds: Option<f64>,
}

impl From<&RoundRow> for SimRound {
    fn from(r: &RoundRow) -> Self {
        let rate = |secs: f64| (secs > 0.0).then(|| r.bytes_up_raw as f64 / secs / 1e6);
        Self {
            round: r.round,
            accuracy: r.accuracy,
            rmse: r.rmse,
            eval_loss: r.eval_loss,
            bytes_up: r.bytes_up,
            bytes_down: r.bytes_down,
            wire_bytes_up: r.wire_bytes_up,
            wire_bytes_down: r.wire_bytes_down,
            bytes_up_raw: r.bytes_up_raw,
            bytes_down_raw: r.bytes_down_raw,
            clients_reported: r.clients_reported,
            encode_mb_s: rate(r.encode_seconds),
            decode_mb_s: rate(r.decode_seconds),
            train_seconds_max: r.train_seconds_max,
            sim_seconds: None,
        }
    }
}

/// What a run wrote to `rounds.json`.
#[derive(Debug, Clone, Serialize)]
pub struct SimResult {
    /// Label.
    pub label: String,
    /// Dirichlet alpha (null for IID).
    pub alpha: Option<f64>,
    /// Partition.
    pub partition: String,
    /// What the accuracy figures score: `test` (the server's test set) or
    /// `holdout` (the vehicles' held-out rows, federated).
    pub metric: String,
    /// mqtt or memory.
    pub transport: String,
    /// Uplink codec.
    pub codec: String,
    /// Downlink codec.
    pub downlink_codec: String,
    /// Server learning rate of the first round.
    pub server_lr: f64,
    /// The strategy's name (`--strategy`).
    pub strategy: String,
    /// The whole strategy as the first round's version records it.
    pub strategy_detail: String,
    /// The aggregation rule.
    pub rule: String,
    /// The dishonest vehicles' attack, if any, and how many ran it.
    pub attack: Option<String>,
    /// Dishonest vehicles.
    pub attackers: usize,
    /// Updates the server flagged as suspected, over all rounds.
    pub suspected: u64,
    /// Sparsity warm-up rounds.
    pub warmup_rounds: u64,
    /// Keyframe period (0: never).
    pub keyframe_every: u64,
    /// Clients asked for.
    pub clients: usize,
    /// Clients left out because their share of the data held no rows.
    pub clients_left_out: usize,
    /// Seed.
    pub seed: u64,
    /// Final accuracy.
    pub final_accuracy: Option<f64>,
    /// Best accuracy.
    pub best_accuracy: Option<f64>,
    /// Mean accuracy of the last five rounds.
    pub last5_accuracy: Option<f64>,
    /// Final RMSE (regression).
    pub final_rmse: Option<f64>,
    /// First round at or above 80 %.
    pub rounds_to_80: Option<u64>,
    /// Total payload bytes up.
    pub bytes_up: u64,
    /// Total payload bytes down.
    pub bytes_down: u64,
    /// Wall seconds of the rounds.
    pub wall_seconds: f64,
    /// Per round.
    pub rounds: Vec<SimRound>,
}

pub(super) fn progress_bar(done: u64, total: u64, row: &RoundRow, up: u64, down: u64) {
    let width = 30;
    let filled = (done as usize * width / total.max(1) as usize).min(width);
    eprint!(
        "\r[{}{}] round {done}/{total}  acc {}  up {}  down {}   ",
        "#".repeat(filled),
        "-".repeat(width - filled),
        row.accuracy
            .map(|a| format!("{:.2}%", a * 100.0))
            .unwrap_or_else(|| "-".into()),
        human_bytes(up),
        human_bytes(down)
    );
    let _ = std::io::stderr().flush();
}

/// Every second, while a round is open, shows on the progress line how many
/// of its vehicles are in (the ledger holds each accepted update's row as
/// soon as it is acknowledged), so a round that waits is seen waiting.
pub(super) async fn show_waiting(db: PathBuf, total: u64) {
    let mut store = None;
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
        if store.is_none() {
            store = convoy_store::Store::open_existing(&db).ok();
        }
        let Some(s) = &store else { continue };
        let Ok(rounds) = s.rounds() else { continue };
        let Some(open) = rounds.last().filter(|r| r.status == RoundStatus::Open) else {
            continue;
        };
        let clients = s.clients(open.round).unwrap_or_default();
        let accepted = clients
            .iter()
            .filter(|c| c.status == ClientStatus::Accepted)
            .count();
        eprint!(
            "\rround {}/{total} open: {accepted}/{} updates in, waiting          ",
            open.round, open.clients_selected
        );
        let _ = std::io::stderr().flush();
    }
}

pub(super) fn write_outputs(out: &Path, result: &SimResult) -> anyhow::Result<()> {
    std::fs::write(
        out.join("rounds.json"),
        serde_json::to_string_pretty(result)?,
    )?;
    let mut w = csv::Writer::from_path(out.join("rounds.csv"))?;
    for r in &result.rounds {
        w.serialize(r)?;
    }
    w.flush()?;
    let pct = |a: Option<f64>| {
        a.map(|a| format!("{:.2}%", a * 100.0))
            .unwrap_or_else(|| "-".into())
    };
    let summary = format!(
        "{}: {} clients, {} partition{}, {} rounds in {:.1}s; final accuracy {}, best {}, rounds to 80% {}; {} up, {} down\n",
        result.label,
        result.clients,
        result.partition,
        result
            .alpha
            .map(|a| format!(" (alpha {a})"))
            .unwrap_or_default(),
        result.rounds.len(),
        result.wall_seconds,
        pct(result.final_accuracy),
        pct(result.best_accuracy),
        result
            .rounds_to_80
            .map(|r| r.to_string())
            .unwrap_or_else(|| "never".into()),
        human_bytes(result.bytes_up),
        human_bytes(result.bytes_down),
    );
    let simulated = result
        .rounds
        .iter()
        .filter_map(|r| r.sim_seconds)
        .next_back();
    let summary = match simulated {
        Some(secs) => format!(
            "{}; {:.2} simulated hours\n",
            summary.trim_end(),
            secs / 3600.0
        ),
        None => summary,
    };
    std::fs::write(out.join("summary.txt"), &summary)?;
    print!("{summary}");
    Ok(())
}
