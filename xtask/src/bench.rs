//! `cargo xtask bench`: measured side by side against a named reference, as ratios.

use anyhow::{bail, Result};

pub fn bench(args: &[String]) -> Result<()> {
    bail!("no benchmark named {:?} yet", args.first())
}
