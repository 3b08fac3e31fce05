//! `cargo xtask bench`: measured side by side against a named reference, as ratios.

use anyhow::{bail, Result};

pub fn bench(args: &[String]) -> Result<()> {
    match args.first().map(String::as_str) {
        Some("spawn") => crate::bench_spawn::run(),
        other => bail!("no benchmark named {other:?} (known: spawn)"),
    }
}
