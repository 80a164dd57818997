//! `convoy-server vehicles`: the provisioned vehicles, the updates the
//! server suspected, and blocking a vehicle whose key is in the wrong hands.

use super::DbArgs;
use convoy_store::Store;

/// `vehicles`' arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    store: DbArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Every provisioned vehicle: blocked or not, and how many of its
    /// updates were suspected (clipped, capped, far from the round, a copy).
    List,
    /// Block a vehicle at once: its key verifies nothing more and its broker
    /// login is refused (a running server picks it up within seconds).
    /// `provision --replace` gives it new credentials and lifts the block.
    Block {
        /// The vehicle's client id.
        vehicle: String,
        /// Why, for the record.
        #[arg(long, default_value = "blocked by the operator")]
        reason: String,
    },
    /// Lift a block.
    Unblock {
        /// The vehicle's client id.
        vehicle: String,
    },
}

/// Runs one `vehicles` subcommand.
pub fn run(args: Args) -> anyhow::Result<()> {
    let db = args.store.db()?;
    anyhow::ensure!(
        db.exists(),
        "no database at {} (start the server once, or pass --db)",
        db.display()
    );
    let store = Store::open(&db)?;
    match args.command {
        Command::List => list(&store),
        Command::Block { vehicle, reason } => {
            let now = convoy_runtime::clock::now_ms();
            anyhow::ensure!(
                store.block_vehicle(&vehicle, &reason, now)?,
                "no vehicle {vehicle:?} is provisioned in {}",
                db.display()
            );
            println!("{vehicle} blocked: its key and broker login no longer work");
            Ok(())
        }
        Command::Unblock { vehicle } => {
            anyhow::ensure!(
                store.unblock_vehicle(&vehicle)?,
                "no vehicle {vehicle:?} is provisioned in {}",
                db.display()
            );
            println!("{vehicle} unblocked");
            Ok(())
        }
    }
}

fn list(store: &Store) -> anyhow::Result<()> {
    let blocked: std::collections::HashMap<String, (u64, String)> = store
        .blocked_vehicles()?
        .into_iter()
        .map(|(c, ms, why)| (c, (ms, why)))
        .collect();
    let suspects = store.suspicions()?;
    println!(
        "{:<24} {:<8} {:>9}  last suspicion",
        "vehicle", "state", "suspected"
    );
    for v in store.vehicles()? {
        let state = match blocked.get(&v.client) {
            Some((ms, _)) => format!("blocked {}", convoy_store::iso8601(*ms)),
            None => "active".into(),
        };
        let (count, last) = match suspects.get(&v.client) {
            Some(s) => (s.count, format!("round {}: {}", s.round, s.reason)),
            None => (0, String::new()),
        };
        println!("{:<24} {:<8} {:>9}  {last}", v.client, state, count);
    }
    Ok(())
}
