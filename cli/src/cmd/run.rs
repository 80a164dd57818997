//! `convoy-server run`: the daemon, until SIGINT/SIGTERM.

use super::{DbArgs, until_signal};

/// `run`'s arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    store: DbArgs,
}

/// Runs the coordinator (embedded broker unless `broker.url` is set); an
/// error when every round failed, so a service manager sees the failure.
pub fn run(args: Args) -> anyhow::Result<()> {
    let mut config = args.store.require_config("run")?;
    if let Some(db) = args.store.db {
        config.db = db;
    }
    let summary = until_signal(|shutdown| convoy_server::run(config, shutdown))?;
    if summary.rounds_failed > 0 && summary.rounds_finished == 0 {
        anyhow::bail!(
            "every round failed ({} rounds, none published a model); rejections by reason: {:?}; `convoy-server report --clients --round N` shows each vehicle's reason",
            summary.rounds_failed,
            summary.rejections
        );
    }
    Ok(())
}
