//! What `tenement fleet status` shows: read straight from etcd (no daemon needed), so it
//! works from any machine with the configuration file and a route to etcd.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::Serialize;

use super::{etcd::Etcd, keys, keys::NodeRecord};

#[derive(Debug, Serialize)]
pub struct FleetStatus {
    /// Live nodes (a node's record lives as long as its lease), by name.
    pub nodes: Vec<NodeRecord>,
    /// Instance -> owner node.
    pub placements: BTreeMap<String, String>,
}

impl FleetStatus {
    pub async fn read(config: &crate::config::Fleet) -> Result<FleetStatus> {
        let etcd = Etcd::new(&config.etcd);
        let (nodes, _) = etcd.list(keys::NODES).await.context("reading the nodes")?;
        let (placements, _) = etcd
            .list(keys::PLACEMENTS)
            .await
            .context("reading the placements")?;
        let mut nodes: Vec<NodeRecord> = nodes
            .iter()
            .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
            .collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        let placements = placements
            .into_iter()
            .filter_map(|kv| {
                let name = kv.key.strip_prefix(keys::PLACEMENTS)?.to_string();
                Some((name, String::from_utf8(kv.value).ok()?))
            })
            .collect();
        Ok(FleetStatus { nodes, placements })
    }

    /// Instances placed on `node`, in name order.
    pub fn placed_on(&self, node: &str) -> Vec<&str> {
        self.placements
            .iter()
            .filter(|(_, owner)| owner.as_str() == node)
            .map(|(name, _)| name.as_str())
            .collect()
    }
}
