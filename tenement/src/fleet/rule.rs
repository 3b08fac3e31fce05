//! The placement rule (docs/fleet.md): the node that receives the first request takes the
//! instance when it has room; otherwise the least loaded live node with room (fewest
//! running instances, then most available memory, then name); none with room: refused.

use super::keys::NodeRecord;

pub fn choose<'a>(receiving: &'a NodeRecord, live: &'a [NodeRecord]) -> Option<&'a NodeRecord> {
    if receiving.has_room() {
        return Some(receiving);
    }
    live.iter().filter(|node| node.has_room()).min_by(|a, b| {
        a.running
            .cmp(&b.running)
            .then(b.memory_available.cmp(&a.memory_available))
            .then(a.name.cmp(&b.name))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, running: usize, max: u32) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            advertise: "127.0.0.1:1".parse().unwrap(),
            lease: 1,
            running,
            max_instances: max,
            memory_available: 1 << 30,
            challenges_seen: 0,
        }
    }

    #[test]
    fn the_receiving_node_takes_it_while_it_has_room() {
        let me = node("a", 5, 0);
        let live = [me.clone(), node("b", 0, 0)];
        assert_eq!(choose(&me, &live).unwrap().name, "a");
    }

    #[test]
    fn a_full_node_hands_it_to_the_least_loaded_one() {
        let me = node("a", 2, 2);
        let live = [me.clone(), node("b", 3, 0), node("c", 1, 0)];
        assert_eq!(choose(&me, &live).unwrap().name, "c");
    }

    #[test]
    fn nobody_with_room_is_a_refusal() {
        let me = node("a", 2, 2);
        let live = [me.clone(), node("b", 1, 1)];
        assert!(choose(&me, &live).is_none());
    }
}
