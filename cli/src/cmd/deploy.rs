//! `convoy-server deploy`: the agent installed on boards over SSH.

use convoy_tools::deploy::{self, Outcome};

pub use deploy::DeployOptions as Args;

/// Deploys to every board of the inventory and prints a result table; an
/// error when any board did not deploy.
pub fn run(args: Args) -> anyhow::Result<()> {
    let results = super::until_signal(|_| deploy::run(&args))?;
    print!("\n{}", deploy::table(&results));
    let failed = results
        .iter()
        .filter(|r| !matches!(r.outcome, Outcome::Ok | Outcome::DryRun))
        .count();
    if failed > 0 {
        anyhow::bail!("{failed} of {} boards did not deploy", results.len());
    }
    Ok(())
}
