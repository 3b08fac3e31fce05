//! `tenement top`: every instance's CPU, memory, traffic, connections and TCP health, live
//! from the daemon's stats (the sampler's `InstanceStats`, one per instance per second).
//! `--once` prints one plain table (or with `--json` the snapshot) for scripts.

mod draw;
mod live;
mod rows;
mod view;

use std::{io::IsTerminal, path::Path};

use anyhow::{bail, Result};

use super::{client::Client, remote::ServerOptions};
use crate::api::types::StatsSnapshot;

/// Snapshots every second, as the sampler takes them.
const STATS_STREAM: &str = "/v1/stats?follow=true&interval_ms=1000";

#[derive(clap::Args, Clone, Debug)]
pub struct TopArgs {
    /// Only instances whose service contains this (in the live view: `/` changes it)
    pub service: Option<String>,
    /// Print one table (with --json: the stats snapshot) and exit
    #[arg(long)]
    pub once: bool,
}

pub fn run(args: &TopArgs, options: &ServerOptions, config: Option<&Path>) -> Result<()> {
    let address =
        Client::resolve_address(options.server.as_deref(), config, options.token.is_some())?;
    let daemon = address.to_string();
    let client = Client::new(address, options.token.clone());
    let filter = args.service.clone().unwrap_or_default();
    if args.once {
        return once(&client, &filter, options.json);
    }
    if options.json {
        bail!("--json needs --once: the live view is for a terminal");
    }
    if !std::io::stdout().is_terminal() {
        bail!("stdout is not a terminal: use `tenement top --once` in scripts");
    }
    live::run(client, view::TopView::new(daemon, filter))
}

fn once(client: &Client, filter: &str, json: bool) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut snapshot: StatsSnapshot = runtime.block_on(client.get("/v1/stats"))?;
    if json {
        snapshot
            .instances
            .retain(|view| view.service.contains(filter));
        println!("{}", serde_json::to_string_pretty(&snapshot)?);
        return Ok(());
    }
    let counters = &snapshot.kernel_counters;
    if !counters.active {
        // On stderr: the table stays machine-readable.
        eprintln!(
            "kernel counters off: {} (CPU, traffic and connections show -)",
            counters.reason.as_deref().unwrap_or("no reason given")
        );
    }
    let rows = rows::rows(&snapshot.instances, rows::Sort::default(), filter);
    println!("{}", rows::plain_table(&rows));
    Ok(())
}
