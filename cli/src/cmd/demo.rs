//! `convoy-server demo`: a whole fleet in one process on the bundled data.

pub use convoy_tools::demo::DemoOptions as Args;

/// Runs the demo until its last round or SIGINT/SIGTERM.
pub fn run(args: Args) -> anyhow::Result<()> {
    super::until_signal(|shutdown| convoy_tools::demo::run(args, shutdown))?;
    Ok(())
}
