//! The JSON views served to coordinators and operators, derived from the chunk model
//! (`docs/allocation.md#chunks`).

use crate::migration::exposed;
use crate::store::{ClusterConfig, ClusterStore, MigrationMeta, MigrationMetaStore, SlotRange, SlotTag, Store};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReplPeer {
    pub node_address: String,
    pub proxy_address: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Repl {
    pub role: String,
    pub peers: Vec<ReplPeer>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Node {
    pub address: String,
    pub proxy_address: String,
    pub slots: Vec<SlotRange>,
    pub repl: Repl,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Cluster {
    pub name: String,
    pub epoch: u64,
    pub nodes: Vec<Node>,
    pub config: ClusterConfig,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Peer {
    pub proxy_address: String,
    pub slots: Vec<SlotRange>,
}

/// A replica node and the slots it may serve reads for: its master's slots that are not
/// being migrated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaRange {
    pub replica_proxy_address: String,
    pub replica_node_address: String,
    pub range_list: Vec<crate::slots::Range>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Proxy {
    pub cluster_name: Option<String>,
    pub address: String,
    pub epoch: u64,
    pub nodes: Vec<Node>,
    pub peers: Vec<Peer>,
    pub cluster_config: Option<ClusterConfig>,
    /// Every replica of the cluster and what it may serve reads for (replica reads). Not part
    /// of the HTTP view, whose shape is undermoon's; coordinators get it over gRPC.
    #[serde(skip)]
    pub replicas: Vec<ReplicaRange>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClusterInfo {
    pub name: String,
    pub node_number: usize,
    pub node_number_with_slots: usize,
    pub is_migrating: bool,
}

/// Resolves a stored migration meta to the proxies and nodes currently holding the parts.
fn resolve(cluster: &ClusterStore, m: &MigrationMetaStore) -> Option<MigrationMeta> {
    let end = |chunk: usize, part: usize| {
        let c = cluster.chunks.get(chunk)?;
        let node = c.role_position.master_of_part(part.min(1));
        Some((c.proxy_addresses[node / 2].clone(), c.node_addresses[node].clone()))
    };
    let (src_proxy_address, src_node_address) = end(m.src_chunk_index, m.src_chunk_part)?;
    let (dst_proxy_address, dst_node_address) = end(m.dst_chunk_index, m.dst_chunk_part)?;
    Some(MigrationMeta { epoch: m.epoch, src_proxy_address, src_node_address, dst_proxy_address, dst_node_address })
}

/// The nodes of a cluster, chunk by chunk, 4 per chunk (`docs/allocation.md#chunks`).
pub fn cluster_nodes(cluster: &ClusterStore) -> Vec<Node> {
    let mut nodes = Vec::with_capacity(cluster.chunks.len() * 4);
    for chunk in &cluster.chunks {
        let role = chunk.role_position;
        for i in 0..4 {
            let partner = 3 - i;
            let slots = match role.part_of_master(i) {
                None => Vec::new(),
                Some(part) => {
                    let mut s: Vec<SlotRange> = chunk.stable_slots[part].iter().cloned().collect();
                    for m in &chunk.migrating_slots[part] {
                        if let Some(meta) = resolve(cluster, &m.meta) {
                            let tag = if m.is_migrating { SlotTag::Migrating(meta) } else { SlotTag::Importing(meta) };
                            s.push(SlotRange { range_list: m.range_list.clone(), tag });
                        }
                    }
                    s
                }
            };
            nodes.push(Node {
                address: chunk.node_addresses[i].clone(),
                proxy_address: chunk.proxy_addresses[i / 2].clone(),
                slots,
                repl: Repl {
                    role: if role.part_of_master(i).is_some() { "master" } else { "replica" }.to_owned(),
                    peers: vec![ReplPeer {
                        node_address: chunk.node_addresses[partner].clone(),
                        proxy_address: chunk.proxy_addresses[partner / 2].clone(),
                    }],
                },
            });
        }
    }
    nodes
}

/// `GET /clusters/meta/{name}` on the exposed view (`migration_limit` tasks, 0 = all).
pub fn cluster(store: &Store, name: &str, migration_limit: usize) -> Option<Cluster> {
    let c = &exposed(store.clusters.get(name)?, migration_limit);
    Some(Cluster { name: c.name.clone(), epoch: c.epoch, nodes: cluster_nodes(c), config: c.config.clone() })
}

pub fn cluster_info(store: &Store, name: &str, migration_limit: usize) -> Option<ClusterInfo> {
    let c = &exposed(store.clusters.get(name)?, migration_limit);
    let with_slots = c
        .chunks
        .iter()
        .flat_map(|ch| ch.stable_slots.iter())
        .filter(|s| s.as_ref().is_some_and(|s| !s.range_list.is_empty()))
        .count();
    Some(ClusterInfo {
        name: c.name.clone(),
        node_number: c.node_number(),
        node_number_with_slots: 2 * with_slots,
        is_migrating: c.is_migrating(),
    })
}

/// `GET /proxies/meta/{address}`: what coordinators push to the proxy.
pub fn proxy(store: &Store, address: &str, migration_limit: usize) -> Option<Proxy> {
    let p = store.all_proxies.get(address)?;
    let in_cluster = p.cluster.as_ref().and_then(|name| store.clusters.get(name)).map(|c| exposed(c, migration_limit));
    let Some(c) = in_cluster.as_ref() else {
        let free_node = |n: &String| Node {
            address: n.clone(),
            proxy_address: address.to_owned(),
            slots: Vec::new(),
            repl: Repl { role: "master".into(), peers: Vec::new() },
        };
        return Some(Proxy {
            cluster_name: None,
            address: address.to_owned(),
            epoch: store.global_epoch,
            nodes: p.node_addresses.iter().map(free_node).collect(),
            peers: Vec::new(),
            cluster_config: None,
            replicas: Vec::new(),
        });
    };
    let nodes = cluster_nodes(c);
    let mine: Vec<Node> = nodes.iter().filter(|n| n.proxy_address == address).cloned().collect();
    let mut peers: Vec<Peer> = Vec::new();
    for n in nodes.iter().filter(|n| n.proxy_address != address && n.repl.role == "master") {
        match peers.iter_mut().find(|p| p.proxy_address == n.proxy_address) {
            Some(peer) => peer.slots.extend(n.slots.iter().cloned()),
            None => peers.push(Peer { proxy_address: n.proxy_address.clone(), slots: n.slots.clone() }),
        }
    }
    let replicas = replica_ranges(&nodes);
    Some(Proxy {
        cluster_name: Some(c.name.clone()),
        address: address.to_owned(),
        epoch: c.epoch,
        nodes: mine,
        peers,
        cluster_config: Some(c.config.clone()),
        replicas,
    })
}

/// For every master's replica: the master's slots outside any migration (a migrating slot's
/// keys are on the move, and a replica of either side may lack them), which the replica may
/// serve reads for.
fn replica_ranges(nodes: &[Node]) -> Vec<ReplicaRange> {
    let mut out = Vec::new();
    for master in nodes.iter().filter(|n| n.repl.role == "master") {
        let stable: Vec<crate::slots::Range> = master
            .slots
            .iter()
            .filter(|s| matches!(s.tag, SlotTag::None))
            .flat_map(|s| s.range_list.iter().cloned())
            .collect();
        if stable.is_empty() {
            continue;
        }
        for replica in &master.repl.peers {
            out.push(ReplicaRange {
                replica_proxy_address: replica.proxy_address.clone(),
                replica_node_address: replica.node_address.clone(),
                range_list: stable.clone(),
            });
        }
    }
    out
}
