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

/// One row of `tenement ps --fleet`.
#[derive(serde::Serialize)]
struct Placed {
    name: String,
    /// The node it is placed on; `None`: not placed (it starts on the first request).
    node: Option<String>,
    /// That node's advertised address, when the node is live.
    advertise: Option<String>,
    /// Whether that node holds its lease (a placement outlives its node by at most
    /// `lease_ttl`).
    node_live: bool,
}

/// `tenement ps --fleet`: every placed instance with its node, and every instance of
/// `[instances]` not placed yet; read from etcd like `fleet status`.
pub fn ps(config: &Config, service: Option<&str>, json: bool) -> Result<()> {
    let fleet = config.fleet.as_ref().context(
        "--fleet needs a [fleet] table in the configuration: tenement runs as a single server",
    )?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let status = runtime.block_on(FleetStatus::read(fleet))?;
    let mut names: std::collections::BTreeSet<String> = status.placements.keys().cloned().collect();
    for (svc, ids) in &config.instances {
        names.extend(ids.iter().map(|id| format!("{svc}:{id}")));
    }
    let rows: Vec<Placed> = names
        .into_iter()
        .filter(|name| service.is_none_or(|s| name.split(':').next() == Some(s)))
        .map(|name| {
            let node = status.placements.get(&name).cloned();
            let record = node
                .as_ref()
                .and_then(|node| status.nodes.iter().find(|n| &n.name == node));
            Placed {
                name,
                advertise: record.map(|r| r.advertise.to_string()),
                node_live: record.is_some(),
                node,
            }
        })
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let mut table = Table::new(&["INSTANCE", "NODE", "ADVERTISE", "NODE LIVE"]);
    for row in rows {
        let live = match (&row.node, row.node_live) {
            (None, _) => "-",
            (Some(_), true) => "yes",
            (Some(_), false) => "no",
        };
        table.row(vec![
            row.name,
            row.node.unwrap_or_else(|| "-".into()),
            row.advertise.unwrap_or_else(|| "-".into()),
            live.into(),
        ]);
    }
    print!("{}", table.render());
    Ok(())
}
