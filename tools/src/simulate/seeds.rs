//! `simulate --seeds 42,1,2`: one run per seed, and the mean ± standard
//! deviation of each figure over them.

use super::*;

/// Mean and sample standard deviation of a figure over seeds (`None` when
/// no seed had it).
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Spread {
    /// Mean.
    pub mean: f64,
    /// Sample standard deviation (0 for one seed).
    pub sd: f64,
    /// Seeds that had the figure.
    pub n: usize,
}

impl Spread {
    /// Over `values`, the seeds that have the figure.
    pub fn of(values: impl IntoIterator<Item = Option<f64>>) -> Option<Spread> {
        let v: Vec<f64> = values.into_iter().flatten().collect();
        if v.is_empty() {
            return None;
        }
        let n = v.len();
        let mean = v.iter().sum::<f64>() / n as f64;
        let var = if n > 1 {
            v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64
        } else {
            0.0
        };
        Some(Spread {
            mean,
            sd: var.sqrt(),
            n,
        })
    }
}

/// What `seeds.json` holds.
#[derive(Debug, Clone, Serialize)]
pub struct SeedSummary {
    /// Label.
    pub label: String,
    /// The seeds run.
    pub seeds: Vec<u64>,
    /// Final accuracy.
    pub final_accuracy: Option<Spread>,
    /// Best accuracy.
    pub best_accuracy: Option<Spread>,
    /// Mean accuracy of the last five rounds.
    pub last5_accuracy: Option<Spread>,
    /// First round at or above 80 % (seeds that reached it).
    pub rounds_to_80: Option<Spread>,
    /// Seeds that never reached 80 %.
    pub never_80: usize,
    /// Payload bytes up.
    pub bytes_up: Option<Spread>,
    /// Payload bytes down.
    pub bytes_down: Option<Spread>,
    /// Wall seconds.
    pub wall_seconds: Option<Spread>,
    /// Each seed's run.
    pub runs: Vec<SimResult>,
}

pub(super) async fn run(
    options: SimOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<SimResult> {
    let mut runs = Vec::new();
    for &seed in &options.seeds {
        if shutdown.is_cancelled() {
            break;
        }
        let partition_file = options
            .partition_file
            .as_ref()
            .map(|f| PathBuf::from(f.to_string_lossy().replace("{seed}", &seed.to_string())));
        let one = SimOptions {
            seed,
            seeds: Vec::new(),
            partition_file,
            out: options.out.join(format!("seed-{seed}")),
            ..options.clone()
        };
        if options.progress {
            eprintln!("seed {seed}:");
        }
        runs.push(run_one(one, shutdown.clone()).await?);
    }
    let Some(last) = runs.last().cloned() else {
        anyhow::bail!("stopped before the first seed finished");
    };
    let figure = |f: &dyn Fn(&SimResult) -> Option<f64>| Spread::of(runs.iter().map(f));
    let summary = SeedSummary {
        label: last.label.clone(),
        seeds: runs.iter().map(|r| r.seed).collect(),
        final_accuracy: figure(&|r| r.final_accuracy),
        best_accuracy: figure(&|r| r.best_accuracy),
        last5_accuracy: figure(&|r| r.last5_accuracy),
        rounds_to_80: figure(&|r| r.rounds_to_80.map(|n| n as f64)),
        never_80: runs.iter().filter(|r| r.rounds_to_80.is_none()).count(),
        bytes_up: figure(&|r| Some(r.bytes_up as f64)),
        bytes_down: figure(&|r| Some(r.bytes_down as f64)),
        wall_seconds: figure(&|r| Some(r.wall_seconds)),
        runs,
    };
    std::fs::write(
        options.out.join("seeds.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    let text = describe(&summary);
    std::fs::write(options.out.join("summary.txt"), &text)?;
    if options.progress {
        eprint!("{text}");
    }
    Ok(last)
}

fn describe(s: &SeedSummary) -> String {
    let pct = |x: Option<Spread>| {
        x.map(|x| format!("{:.2} % ± {:.2}", x.mean * 100.0, x.sd * 100.0))
            .unwrap_or_else(|| "-".into())
    };
    let bytes = |x: Option<Spread>| {
        x.map(|x| human_bytes(x.mean as u64))
            .unwrap_or_else(|| "-".into())
    };
    let seeds: Vec<String> = s.seeds.iter().map(u64::to_string).collect();
    format!(
        "{} over seeds {}: final accuracy {}, best {}, last 5 rounds {}, rounds to 80% {}{}; {} up, {} down per run\n",
        s.label,
        seeds.join(", "),
        pct(s.final_accuracy),
        pct(s.best_accuracy),
        pct(s.last5_accuracy),
        s.rounds_to_80
            .map(|x| format!("{:.1} ± {:.1}", x.mean, x.sd))
            .unwrap_or_else(|| "never".into()),
        if s.never_80 > 0 && s.never_80 < s.seeds.len() {
            format!(" ({} never)", s.never_80)
        } else {
            String::new()
        },
        bytes(s.bytes_up),
        bytes(s.bytes_down),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_the_mean_and_sample_sd() {
        let s = Spread::of([Some(1.0), None, Some(3.0)]).unwrap();
        assert_eq!((s.mean, s.n), (2.0, 2));
        assert!((s.sd - 2f64.sqrt()).abs() < 1e-12);
        assert_eq!(Spread::of([Some(5.0)]).unwrap().sd, 0.0);
        assert!(Spread::of([None]).is_none());
    }
}
