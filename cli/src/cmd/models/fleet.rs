//! `models fleet`: which model each vehicle holds.

use super::*;
use convoy_store::{Deploy, Deployment, Scored};

/// `models fleet`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// How the deployed model is chosen: `last`, `best` or `best_within:N`
    /// (default: `rounds.deploy` of --config, else `last`).
    #[arg(long)]
    pub deploy: Option<Deploy>,
}

/// Runs `models fleet` against the database at `db`; the text to print.
pub fn run(db: &Path, args: Args, rule: Deploy) -> anyhow::Result<String> {
    let mut text = fleet(db, args.format)?;
    if args.format == Format::Table {
        let d = Store::open_existing(db)?.deployment(rule)?;
        text.push_str(&deployment_lines(&d));
    }
    Ok(text)
}

/// "latest" and "deployed" with their rounds and on-vehicle scores.
pub fn deployment_lines(d: &Deployment) -> String {
    let line = |what: &str, m: Option<&Scored>| match m {
        None => format!("{what}: none\n"),
        Some(m) => format!(
            "{what}: {} (round {}, on-vehicle {})\n",
            short(&m.version),
            m.round,
            match (m.accuracy, m.rmse) {
                (Some(a), _) => format!("accuracy {:.2}%", a * 100.0),
                (None, Some(r)) => format!("RMSE {r:.4}"),
                (None, None) => "not scored yet".into(),
            }
        ),
    };
    let mut out = line("latest", d.latest.as_ref());
    out.push_str(&line(
        &format!("deployed ({})", d.rule),
        d.deployed.as_ref(),
    ));
    out
}

/// One vehicle in the fleet inventory.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Holding {
    /// Vehicle id.
    pub client: String,
    /// Model version it holds (hex).
    pub version: String,
    /// Round that produced that version, if the store has it.
    pub round: Option<u64>,
    /// How many versions behind the fleet's current model it is, along
    /// the current model's lineage; none when its version is not an
    /// ancestor of the current one (after a rollback, say).
    pub behind: Option<u64>,
    /// Since when it holds it (ISO-8601 UTC).
    pub since: String,
    /// When it last said so.
    pub last_seen: String,
}

/// Which model every vehicle runs, from their statuses.
pub fn fleet(db: &Path, format: Format) -> Result<String, StoreError> {
    let store = Store::open_existing(db)?;
    let rows = store.versions()?;
    // the current model's lineage, newest first
    let mut chain = Vec::new();
    let mut at = store.current_version()?;
    while let Some(v) = at.take() {
        if chain.contains(&v) {
            break;
        }
        at = rows
            .iter()
            .find(|r| r.version == v)
            .and_then(|r| r.parent.clone());
        chain.push(v);
    }
    let holdings: Vec<Holding> = store
        .inventory()?
        .into_iter()
        .map(|(client, version, since, seen)| Holding {
            round: rows.iter().find(|r| r.version == version).map(|r| r.round),
            behind: chain.iter().position(|v| *v == version).map(|p| p as u64),
            client,
            version,
            since: convoy_store::iso8601(since),
            last_seen: convoy_store::iso8601(seen),
        })
        .collect();
    Ok(match format {
        Format::Json => crate::table::to_json(&holdings)?,
        Format::Csv => crate::table::to_csv(&holdings)?,
        Format::Table => {
            let cells: Vec<Vec<String>> = holdings
                .iter()
                .map(|h| {
                    vec![
                        h.client.clone(),
                        short(&h.version).to_string(),
                        h.round.map_or("?".into(), |r| r.to_string()),
                        h.behind.map_or("-".into(), |b| b.to_string()),
                        h.since.clone(),
                        h.last_seen.clone(),
                    ]
                })
                .collect();
            let mut out = table(
                &[
                    "vehicle",
                    "version",
                    "round",
                    "behind",
                    "since",
                    "last_seen",
                ],
                &["vehicle", "version", "since", "last_seen"],
                &cells,
            );
            let _ = writeln!(
                out,
                "{} vehicles; current model {}",
                holdings.len(),
                chain.first().map_or("none", |c| short(c))
            );
            out
        }
    })
}

#[cfg(test)]
mod deployment_tests {
    use super::*;

    #[test]
    fn latest_and_deployed_are_both_shown() {
        let model = |round, accuracy| Scored {
            version: format!("{round:064x}"),
            round,
            accuracy,
            rmse: None,
        };
        let d = Deployment {
            rule: "best".into(),
            latest: Some(model(30, None)),
            deployed: Some(model(12, Some(0.861))),
            since_best: 17,
        };
        let text = deployment_lines(&d);
        assert!(text.contains("latest: 00000000"), "{text}");
        assert!(
            text.contains("(round 30, on-vehicle not scored yet)"),
            "{text}"
        );
        assert!(text.contains("deployed (best): 00000000"), "{text}");
        assert!(
            text.contains("(round 12, on-vehicle accuracy 86.10%)"),
            "{text}"
        );
    }
}
