//! `/metrics` families of the fleet: this node, the live nodes and the placements as this
//! node sees them (its view of etcd, re-listed about four times per `lease_ttl`).

use super::metrics::{Exposition, Kind, Metrics};
use crate::fleet::Fleet;

/// Adds the fleet's families to `/metrics`.
pub fn register(metrics: &Metrics, fleet: Fleet) {
    metrics.register(move |out| write(&fleet, out));
}

fn write(fleet: &Fleet, out: &mut Exposition) {
    let view = fleet.snapshot();
    out.family(
        "tenement_fleet_node_info",
        Kind::Gauge,
        "This node's name in the fleet (always 1).",
    );
    out.sample("tenement_fleet_node_info", &[("node", fleet.node())], 1.0);
    out.family(
        "tenement_fleet_lease_held",
        Kind::Gauge,
        "1 while this node's etcd lease is certainly alive; 0 while it cannot renew it.",
    );
    out.sample(
        "tenement_fleet_lease_held",
        &[],
        if view.fresh { 1.0 } else { 0.0 },
    );
    out.family(
        "tenement_fleet_nodes",
        Kind::Gauge,
        "Live nodes of the fleet (their leases held), as last listed.",
    );
    out.sample("tenement_fleet_nodes", &[], view.nodes.len() as f64);
    out.family(
        "tenement_fleet_placement",
        Kind::Gauge,
        "Instances placed in the fleet, with the node that owns each (always 1).",
    );
    for (instance, node) in &view.placements {
        out.sample(
            "tenement_fleet_placement",
            &[("instance", instance), ("node", node)],
            1.0,
        );
    }
}
