//! Placeholder for `up`: replaced by its implementation (skeleton commit).

/// Command-line arguments of this role.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs this role.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("{} is not implemented yet", "up")
}
