//! `tenement fleet status`: the fleet as etcd holds it.

use anyhow::{Context, Result};

use super::table::Table;
use crate::{config::Config, fleet::status::FleetStatus};

#[derive(clap::Subcommand)]
pub enum FleetCommand {
    /// Live nodes (address, running instances, free memory) and the instances placed on
    /// each, read from etcd
    Status {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
}

pub fn run(command: &FleetCommand, config: &Config) -> Result<()> {
    let fleet = config
        .fleet
        .as_ref()
        .context("this configuration has no [fleet] table: tenement runs as a single server")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let status = runtime.block_on(FleetStatus::read(fleet))?;
    match command {
        FleetCommand::Status { json: true } => {
            println!("{}", serde_json::to_string_pretty(&status)?);
        }
        FleetCommand::Status { json: false } => {
            let mut table = Table::new(&[
                "NODE",
                "ADVERTISE",
                "LIVE",
                "RUNNING",
                "MEM AVAILABLE",
                "PLACED",
            ]);
            for node in &status.nodes {
                let placed = status.placed_on(&node.name);
                table.row(vec![
                    node.name.clone(),
                    node.advertise.to_string(),
                    "yes".into(),
                    node.running.to_string(),
                    format!("{} MiB", node.memory_available >> 20),
                    if placed.is_empty() {
                        "-".into()
                    } else {
                        placed.join(",")
                    },
                ]);
            }
            print!("{}", table.render());
            let orphans: Vec<_> = status
                .placements
                .iter()
                .filter(|(_, owner)| !status.nodes.iter().any(|n| &&n.name == owner))
                .collect();
            for (instance, owner) in orphans {
                println!("{instance} is placed on node {owner}, which is not live");
            }
        }
    }
    Ok(())
}
