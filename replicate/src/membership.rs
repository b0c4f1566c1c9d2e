//! Membership: who the cluster is, from discovery results and link states, in the
//! terms of MongooseIM's `cets systemInfo`.

use std::collections::BTreeSet;

/// A node as discovery reports it (a row of `discovery_nodes`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct DiscoveredNode {
    pub name: String,
    pub node_num: u16,
    /// Where its replication port listens.
    pub address: String,
}

/// How the links to one peer are doing, summed over our cores.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerLinks {
    pub name: String,
    /// Our cores whose out-link to the peer is established.
    pub out_up: usize,
    /// The peer's owners whose in-links to us are established.
    pub in_up: usize,
}

/// The `cets systemInfo` shape (field meanings from MongooseIM's cets.gql).
/// Lists of node names, sorted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SystemInfo {
    /// Nodes connected to us (a live link either way), and this node.
    pub available_nodes: Vec<String>,
    /// Discovered nodes that do not answer.
    pub unavailable_nodes: Vec<String>,
    /// Nodes that have our tables running: every one of our cores has an
    /// established link to them and they have one to us; and this node.
    pub joined_nodes: Vec<String>,
    /// Nodes from the discovery backend, and this node.
    pub discovered_nodes: Vec<String>,
    pub remote_nodes_without_disco: Vec<String>,
    pub remote_nodes_with_unknown_tables: Vec<String>,
    pub remote_unknown_tables: Vec<String>,
    pub remote_nodes_with_missing_tables: Vec<String>,
    pub remote_missing_tables: Vec<String>,
    pub conflict_nodes: Vec<String>,
    pub conflict_tables: Vec<String>,
    /// Whether the last discovery round succeeded.
    pub discovery_works: bool,
}

/// Computes `systemInfo` for `this` node with `cores` cores.
pub fn system_info(
    this: &str,
    cores: usize,
    discovered: &[DiscoveredNode],
    links: &[PeerLinks],
    discovery_works: bool,
) -> SystemInfo {
    let mut discovered_nodes: BTreeSet<String> = discovered.iter().map(|n| n.name.clone()).collect();
    discovered_nodes.insert(this.to_owned());
    let mut available: BTreeSet<String> =
        links.iter().filter(|l| l.out_up + l.in_up > 0).map(|l| l.name.clone()).collect();
    available.insert(this.to_owned());
    let mut joined: BTreeSet<String> =
        links.iter().filter(|l| l.out_up >= cores && l.in_up > 0).map(|l| l.name.clone()).collect();
    joined.insert(this.to_owned());
    let unavailable: BTreeSet<String> = discovered_nodes.iter().filter(|n| !available.contains(*n)).cloned().collect();
    SystemInfo {
        available_nodes: available.into_iter().collect(),
        unavailable_nodes: unavailable.into_iter().collect(),
        joined_nodes: joined.into_iter().collect(),
        discovered_nodes: discovered_nodes.into_iter().collect(),
        discovery_works,
        ..SystemInfo::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, num: u16) -> DiscoveredNode {
        DiscoveredNode { name: name.into(), node_num: num, address: format!("127.0.0.1:{num}") }
    }

    /// A healthy cluster of three: all joined, available and discovered.
    #[test]
    fn healthy_cluster() {
        let discovered = [node("a", 1), node("b", 2), node("c", 3)];
        let links =
            [PeerLinks { name: "b".into(), out_up: 2, in_up: 2 }, PeerLinks { name: "c".into(), out_up: 2, in_up: 1 }];
        let info = system_info("a", 2, &discovered, &links, true);
        assert_eq!(info.joined_nodes, vec!["a", "b", "c"]);
        assert_eq!(info.available_nodes, vec!["a", "b", "c"]);
        assert!(info.unavailable_nodes.is_empty());
        assert!(info.discovery_works);
    }

    /// A dead node stays discovered but becomes unavailable and leaves joined.
    #[test]
    fn dead_node_is_unavailable() {
        let discovered = [node("a", 1), node("b", 2)];
        let links = [PeerLinks { name: "b".into(), out_up: 0, in_up: 0 }];
        let info = system_info("a", 2, &discovered, &links, false);
        assert_eq!(info.unavailable_nodes, vec!["b"]);
        assert_eq!(info.joined_nodes, vec!["a"]);
        assert!(!info.discovery_works);
    }
}
