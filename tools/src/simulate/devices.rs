//! The availability and device model's settings (`simulate --online`,
//! `--speed-spread`, ...) and its trace files of online intervals.

use anyhow::Context;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The availability and device model (`simulate --online ...`).
#[derive(Debug, Clone, clap::Args)]
pub struct DeviceModel {
    /// Run on a simulated clock with each vehicle online with this
    /// probability in each `--slot-secs` slot (drawn per vehicle and
    /// slot from the seed); 1: always online.
    #[arg(long)]
    pub online: Option<f64>,
    /// Run on a simulated clock with the vehicles online in the intervals
    /// of this CSV file, `client,start_s,end_s` (client: its index from 0,
    /// or its id `sim-NNN`); vehicles it does not name are always online.
    #[arg(long)]
    pub online_trace: Option<PathBuf>,
    /// Length of an availability slot, simulated seconds.
    #[arg(long, default_value_t = 600.0)]
    pub slot_secs: f64,
    /// Device speeds: each vehicle trains slower than the fastest by a
    /// factor drawn log-uniformly from [1, SPREAD] (1: all alike; above 1
    /// also runs on the simulated clock).
    #[arg(long, default_value_t = 1.0)]
    pub speed_spread: f64,
    /// Simulated seconds one local training step takes on the fastest
    /// vehicle.
    #[arg(long, default_value_t = 0.05)]
    pub step_secs: f64,
    /// Stop after this many simulated hours, whatever the rounds.
    #[arg(long, default_value_t = 72.0)]
    pub max_hours: f64,
}

impl DeviceModel {
    /// True when the run is on the simulated clock.
    pub fn clocked(&self) -> bool {
        self.online.is_some() || self.online_trace.is_some() || self.speed_spread > 1.0
    }

    /// Checks the values.
    pub fn validate(&self) -> anyhow::Result<()> {
        if let Some(p) = self.online {
            anyhow::ensure!(
                (0.0..=1.0).contains(&p) && p > 0.0,
                "--online {p} must be in (0, 1]"
            );
        }
        anyhow::ensure!(
            self.slot_secs >= 1.0 && self.slot_secs.is_finite(),
            "--slot-secs must be at least 1"
        );
        anyhow::ensure!(
            self.speed_spread >= 1.0 && self.speed_spread.is_finite(),
            "--speed-spread must be at least 1"
        );
        anyhow::ensure!(
            self.step_secs > 0.0 && self.step_secs.is_finite(),
            "--step-secs must be above 0"
        );
        anyhow::ensure!(self.max_hours > 0.0, "--max-hours must be above 0");
        Ok(())
    }
}

/// Reads a trace of online intervals: `client,start_s,end_s` rows (a
/// header row is skipped), by vehicle index.
pub(super) fn read_trace(
    path: &Path,
    configs: &[convoy_agent::config::AgentConfig],
) -> anyhow::Result<HashMap<usize, Vec<(f64, f64)>>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading --online-trace {}", path.display()))?;
    let mut out: HashMap<usize, Vec<(f64, f64)>> = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if line.trim().is_empty() || (n == 0 && fields[0].eq_ignore_ascii_case("client")) {
            continue;
        }
        let bad = || {
            anyhow::anyhow!(
                "{} line {}: want `client,start_s,end_s` with start_s < end_s, got {line:?}",
                path.display(),
                n + 1
            )
        };
        let [client, from, to] = fields[..] else {
            return Err(bad());
        };
        let index = client
            .parse::<usize>()
            .ok()
            .or_else(|| configs.iter().position(|c| c.client_id.as_str() == client))
            .filter(|i| *i < configs.len())
            .ok_or_else(bad)?;
        let (from, to): (f64, f64) = (
            from.parse().map_err(|_| bad())?,
            to.parse().map_err(|_| bad())?,
        );
        if !(from.is_finite() && to.is_finite() && 0.0 <= from && from < to) {
            return Err(bad());
        }
        out.entry(index).or_default().push((from, to));
    }
    Ok(out)
}
