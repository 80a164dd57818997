//! `convoy-server keys rotate-server`: a new signing key for the server,
//! with the old one still trusted by the vehicles for an overlap.

use super::DbArgs;

/// `keys`'s arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Replace the server's key pair (identity.key_file; the old one is
    /// kept as <key>.previous) and write server.pub beside it naming the new
    /// key and trusting the old one for --overlap-hours. Then install the
    /// new server.pub on every vehicle (`deploy` carries it) and restart the
    /// server, which signs with the new key from then on. (Vehicle keys:
    /// `provision --rotate`.)
    RotateServer {
        #[command(flatten)]
        store: DbArgs,
        /// Hours the vehicles still accept what the old key signed (a
        /// retained announcement, model chunks in flight); default:
        /// identity.rotation_overlap_hours (168).
        #[arg(long)]
        overlap_hours: Option<u64>,
    },
}

/// Rotates and says what to do next.
pub fn run(args: Args) -> anyhow::Result<()> {
    let Command::RotateServer {
        store,
        overlap_hours,
    } = args.command;
    let config = store.require_config("keys rotate-server")?;
    let path = config.key_file();
    anyhow::ensure!(
        path.exists(),
        "no server key at {} yet: it is made on the server's first start",
        path.display()
    );
    let hours = overlap_hours.unwrap_or(config.identity.rotation_overlap_hours);
    let until = convoy_runtime::clock::now_ms() + hours * 3_600_000;
    let trusted = convoy_server::identity::rotate_server_key(&path, until)?;
    let public = path.with_file_name(convoy_server::identity::SERVER_PUB);
    println!("new server key {} in {}", trusted.current, path.display());
    println!(
        "install {} on every vehicle (it trusts the new key and, for {hours} h, the old one), then restart the server",
        public.display()
    );
    Ok(())
}
