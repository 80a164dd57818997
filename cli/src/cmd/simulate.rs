//! `convoy-server simulate`: a fleet on a partitioned data set through the
//! real server and broker.

pub use convoy_tools::simulate::SimOptions as Args;

/// Runs the simulation until its last round or SIGINT/SIGTERM.
pub fn run(args: Args) -> anyhow::Result<()> {
    super::until_signal(|shutdown| convoy_tools::simulate::run(args, shutdown))?;
    Ok(())
}
